//! Auditing a window end to end, the verdict stored in `audits`: every raw record of the
//! window upstream has exactly one fate — a clean record or a dead letter — per raw
//! partition; and the clean topic's committed records whose timestamps fall in the window
//! match the ledger, the window's counts and the table's rows, column by column.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use weir_topology::config::KafkaSettings;

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio_postgres::Client;
use weir_topology::kafka::ReadToEnd;

use super::super::window::{window_start, Millis};
use super::super::writer::{json_field, Column, Table};

use super::seal::{ts, window, WindowSpec};

/// Where the audit reads the clean topic, and what is upstream of it.
#[derive(Debug, Clone)]
pub struct TopicSource {
    /// The cluster and every client's options.
    pub kafka: KafkaSettings,
    pub topic: String,
    /// How far before the window's start to begin reading each partition: records are in
    /// offset order, their timestamps only roughly so.
    pub slack: Duration,
    /// The raw topics and dead-letter topics of the application that writes `topic`: the
    /// window is then reconciled from the raw records on.
    pub upstream: Option<super::super::upstream::UpstreamSpec>,
}

/// The raw records of one raw partition in the window, and their fates.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RawPartition {
    pub topic: String,
    pub partition: i32,
    /// Committed raw records with a timestamp in the window.
    pub raw: i64,
    /// Of them, those with a clean record.
    pub clean: i64,
    /// Of them, those with a dead letter.
    pub dead_letters: i64,
    /// Raw offsets with no fate (the first few).
    pub without_fate: Vec<i64>,
    /// Raw offsets with more than one fate (the first few).
    pub more_than_one: Vec<i64>,
}

/// A committed record of the clean topic inside the window.
#[derive(Debug, Clone)]
struct Scanned {
    timestamp: Millis,
    record: Option<serde_json::Value>,
}

/// The verdict of an audit, as stored in `audits.report`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub id: Option<i64>,
    pub sink: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub status: String,
    /// Committed records of the clean topic with a timestamp in the window.
    pub topic_records: i64,
    /// Records the ledger says were applied.
    pub ledger_records: i64,
    /// The window's record count (sealed counts).
    pub window_records: i64,
    /// Rows of the table attributed to the window now.
    pub table_rows: i64,
    pub late_dead_letter: i64,
    pub late_dropped: i64,
    pub late_accepted: i64,
    pub rows_checked: usize,
    /// The end-to-end check per raw partition (empty when the topology names no upstream).
    pub raw_partitions: Vec<RawPartition>,
    pub passed: bool,
    /// Every mismatch found, one sentence each.
    pub problems: Vec<String>,
    pub run_id: Option<String>,
}

/// Why a topic could not be read for an audit.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("topic \"{0}\" has no partitions (does it exist?)")]
    NoPartitions(String),
    #[error("{0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

/// Why an audit could not run.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("reading the topics: {0}")]
    Scan(#[from] ScanError),
    #[error("the audit's reading thread: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("{start} is not the start of a window of {window_ms} ms")]
    NotAligned {
        start: DateTime<Utc>,
        window_ms: i64,
    },
}

fn scan(
    source: &TopicSource,
    start: Millis,
    end: Millis,
) -> Result<HashMap<(i32, i64), Scanned>, ScanError> {
    let mut found = HashMap::new();
    scan_topic(source, &source.topic, start, end, |m| {
        let t = m.timestamp().to_millis().unwrap_or(0);
        let record = m.payload().and_then(|p| serde_json::from_slice(p).ok());
        found.insert(
            (m.partition(), m.offset()),
            Scanned {
                timestamp: t,
                record,
            },
        );
    })?;
    Ok(found)
}

/// Calls `each` with every committed record of `topic` whose timestamp is in
/// `[start, end)`, reading every partition from `slack` before `start` to its end.
fn scan_topic(
    source: &TopicSource,
    topic: &str,
    start: Millis,
    end: Millis,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<(), ScanError> {
    let consumer: BaseConsumer<ReadToEnd> = source
        .kafka
        .reader(
            "audit",
            &format!("weir-audit-{}", std::process::id()),
            |c| {
                c.set("enable.partition.eof", "true");
            },
        )
        .create_with_context(ReadToEnd)?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(ScanError::NoPartitions(topic.to_owned()));
    }
    let from = start - source.slack.as_millis() as i64;
    let mut times = TopicPartitionList::new();
    for p in &partitions {
        times.add_partition_offset(topic, *p, Offset::Offset(from.max(0)))?;
    }
    let starts = consumer.offsets_for_times(times, timeout)?;
    let mut open = HashSet::new();
    let mut assign = TopicPartitionList::new();
    for e in starts.elements() {
        let (_, high) = consumer.fetch_watermarks(topic, e.partition(), timeout)?;
        let offset = match e.offset() {
            Offset::Offset(o) => o,
            _ => high,
        };
        if offset < high {
            open.insert(e.partition());
            assign.add_partition_offset(topic, e.partition(), Offset::Offset(offset))?;
        }
    }
    if assign.count() == 0 {
        return Ok(());
    }
    consumer.assign(&assign)?;
    let mut last_progress = std::time::Instant::now();
    // the end of each partition (past transaction markers) ends its read; an open
    // transaction holds the committed end back: what follows it is not committed, so after
    // a while without progress it is not counted
    while !open.is_empty() && last_progress.elapsed() < Duration::from_secs(5) {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last_progress = std::time::Instant::now();
                let t = m.timestamp().to_millis().unwrap_or(0);
                if t >= start && t < end {
                    each(&m);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
    }
    Ok(())
}

/// The end-to-end check: each raw record of the window has exactly one fate, a clean record
/// (`clean`, by its source coordinates) or a dead letter of the upstream application.
fn reconcile_raw(
    source: &TopicSource,
    up: &super::super::upstream::UpstreamSpec,
    clean: &HashMap<(i32, i64), Scanned>,
    start: Millis,
    end: Millis,
) -> Result<Vec<RawPartition>, ScanError> {
    // (raw topic, partition, offset) → fates
    let mut fates: HashMap<(String, i32, i64), (i64, i64)> = HashMap::new();
    for s in clean.values() {
        let Some(src) = s.record.as_ref().and_then(|r| r.get("source")) else {
            continue;
        };
        if let (Some(t), Some(p), Some(o)) = (
            src.get("topic").and_then(|v| v.as_str()),
            src.get("partition").and_then(|v| v.as_i64()),
            src.get("offset").and_then(|v| v.as_i64()),
        ) {
            fates.entry((t.to_owned(), p as i32, o)).or_default().0 += 1;
        }
    }
    for dlq in &up.dead_letter_topics {
        scan_topic(source, dlq, start, end, |m| {
            let d = crate::dead_letter::reader::DeadLetter::from_message(m);
            if let (Some(t), Some(p), Some(o)) =
                (d.source_topic, d.source_partition, d.source_offset)
            {
                if up.topics.contains(&t) {
                    fates.entry((t, p, o)).or_default().1 += 1;
                }
            }
        })?;
    }
    let mut by_partition: BTreeMap<(String, i32), RawPartition> = BTreeMap::new();
    for raw in &up.topics {
        scan_topic(source, raw, start, end, |m| {
            let key = (raw.clone(), m.partition(), m.offset());
            let part = by_partition
                .entry((raw.clone(), m.partition()))
                .or_insert_with(|| RawPartition {
                    topic: raw.clone(),
                    partition: m.partition(),
                    ..RawPartition::default()
                });
            part.raw += 1;
            let (c, d) = fates.get(&key).copied().unwrap_or((0, 0));
            part.clean += c.min(1);
            part.dead_letters += d.min(1);
            if c + d == 0 && part.without_fate.len() < 10 {
                part.without_fate.push(m.offset());
            }
            if c + d > 1 && part.more_than_one.len() < 10 {
                part.more_than_one.push(m.offset());
            }
        })?;
    }
    Ok(by_partition.into_values().collect())
}

fn select_expr(c: &Column) -> String {
    let q = format!("\"{}\"", c.name.replace('"', "\"\""));
    if c.pg_type.starts_with("timestamp") {
        format!("(extract(epoch FROM {q})*1000)::int8::text")
    } else {
        format!("{q}::text")
    }
}

fn expected_text(
    c: &Column,
    record: &serde_json::Value,
    topic: &str,
    p: i32,
    o: i64,
    t: Millis,
    w: Millis,
) -> Option<String> {
    if c.pg_type.starts_with("timestamp") {
        return match c.field.as_str() {
            "@timestamp" => Some(t.to_string()),
            "@window_start" => Some(w.to_string()),
            f => record
                .get(f)
                .and_then(|v| v.as_str())
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|d| d.timestamp_millis().to_string()),
        };
    }
    let raw = record.to_string();
    Table::value(
        &c.field,
        &|f| json_field(record, f),
        &raw,
        topic,
        p,
        o,
        t,
        w,
    )
}

fn same(c: &Column, actual: &Option<String>, expected: &Option<String>) -> bool {
    match (actual, expected) {
        (Some(a), Some(e)) if c.pg_type.starts_with("json") => {
            serde_json::from_str::<serde_json::Value>(a).ok()
                == serde_json::from_str::<serde_json::Value>(e).ok()
        }
        (a, e) => a == e,
    }
}

/// Audits one window and stores the verdict (with `run_id`, e.g. Airflow's) in `audits`.
pub async fn audit(
    client: &Client,
    spec: &WindowSpec,
    table: &Table,
    source: &TopicSource,
    start: DateTime<Utc>,
    run_id: Option<&str>,
) -> Result<AuditReport, AuditError> {
    let start_ms = start.timestamp_millis();
    if window_start(start_ms, spec.window_ms) != start_ms {
        return Err(AuditError::NotAligned {
            start,
            window_ms: spec.window_ms,
        });
    }
    let end_ms = start_ms + spec.window_ms;
    let (scanned, raw_partitions) = scan_window(source, start_ms, end_ms).await?;
    let mut problems = raw_problems(&raw_partitions);
    let info = window(client, spec, start).await?;
    let (status, window_records, late_dl, late_drop, late_acc) = match &info {
        Some(w) => (
            w.status.clone(),
            w.records,
            w.late_dead_letter,
            w.late_dropped,
            w.late_accepted,
        ),
        None => ("missing".to_owned(), 0, 0, 0, 0),
    };
    if status != "sealed" {
        problems.push(format!("the window is not sealed (status: {status})"));
    }
    let topic_records = scanned.len() as i64;

    // the ledger: totals, and each slice against the topic's records in its offset range
    let ledger_records =
        ledger(client, spec, &source.topic, start, &scanned, &mut problems).await?;
    if topic_records != ledger_records + late_dl + late_drop {
        problems.push(format!(
            "the topic has {topic_records} records in the window; the ledger applied {ledger_records} and {} were late and not applied",
            late_dl + late_drop
        ));
    }
    if window_records + late_acc != ledger_records {
        problems.push(format!(
            "the window counts {window_records} records (+{late_acc} accepted late), the ledger {ledger_records}"
        ));
    }

    // rows: each row of the window must be its source record, column by column
    let window_column = table
        .window_column
        .clone()
        .unwrap_or_else(|| "window_start".into());
    // the report, once the table's side is known
    let verdict = |table_rows: i64, rows_checked: usize, problems: Vec<String>| AuditReport {
        id: None,
        sink: spec.sink_id.clone(),
        window_start: start,
        window_end: ts(end_ms),
        status: status.clone(),
        topic_records,
        ledger_records,
        window_records,
        table_rows,
        late_dead_letter: late_dl,
        late_dropped: late_drop,
        late_accepted: late_acc,
        rows_checked,
        raw_partitions: raw_partitions.clone(),
        passed: problems.is_empty(),
        problems,
        run_id: run_id.map(str::to_owned),
    };
    let Some(rows) = window_rows(client, table, &window_column, start).await? else {
        problems.push(
            "the table maps no @partition/@offset column: rows cannot be traced to records".into(),
        );
        return store(client, verdict(0, 0, problems)).await;
    };
    let table_rows = rows.len() as i64;
    problems.extend(row_problems(
        table,
        &rows,
        &scanned,
        &source.topic,
        start_ms,
    ));

    // every key of the window has its row (here, or in a later window that overwrote it),
    // unless PostgreSQL rejected the record or it came late
    let window = (start, window_column.as_str());
    problems.extend(missing_rows(client, spec, table, &source.topic, window, &scanned).await?);
    store(client, verdict(table_rows, rows.len(), problems)).await
}

/// The clean topic's committed records in the window, and (when the topology names what is
/// upstream) the raw partitions' fates, read on threads of their own.
async fn scan_window(
    source: &TopicSource,
    start_ms: Millis,
    end_ms: Millis,
) -> Result<(HashMap<(i32, i64), Scanned>, Vec<RawPartition>), AuditError> {
    let source2 = source.clone();
    let scanned = tokio::task::spawn_blocking(move || scan(&source2, start_ms, end_ms)).await??;
    let raw_partitions = match &source.upstream {
        Some(up) => {
            let (source2, up) = (source.clone(), up.clone());
            let clean = scanned.clone();
            tokio::task::spawn_blocking(move || {
                reconcile_raw(&source2, &up, &clean, start_ms, end_ms)
            })
            .await??
        }
        None => Vec::new(),
    };
    Ok((scanned, raw_partitions))
}

/// The table's rows of the window, each with its source partition and offset first and
/// every mapped column as text; `None` when the table maps no `@partition`/`@offset`.
async fn window_rows(
    client: &Client,
    table: &Table,
    window_column: &str,
    start: DateTime<Utc>,
) -> Result<Option<Vec<tokio_postgres::Row>>, AuditError> {
    let find = |f: &str| {
        table
            .columns
            .iter()
            .find(|c| c.field == f)
            .map(|c| c.name.clone())
    };
    let (Some(pcol), Some(ocol)) = (find("@partition"), find("@offset")) else {
        return Ok(None);
    };
    let exprs: Vec<String> = table.columns.iter().map(select_expr).collect();
    let sql = format!(
        "SELECT \"{pcol}\"::int4, \"{ocol}\"::int8, {} FROM \"{}\" WHERE \"{window_column}\" = $1",
        exprs.join(", "),
        table.name
    );
    Ok(Some(client.query(&sql, &[&start]).await?))
}

/// What is wrong with the raw partitions' fates: a record without one or with more than one,
/// or counts that do not add up.
fn raw_problems(raw_partitions: &[RawPartition]) -> Vec<String> {
    let mut problems = Vec::new();
    for p in raw_partitions {
        if !p.without_fate.is_empty()
            || !p.more_than_one.is_empty()
            || p.raw != p.clean + p.dead_letters
        {
            problems.push(format!(
                "raw partition {}/{}: {} records in the window, {} clean and {} dead letters; without a fate: {:?}; with more than one: {:?}",
                p.topic, p.partition, p.raw, p.clean, p.dead_letters, p.without_fate, p.more_than_one
            ));
        }
    }
    problems
}

/// The records the window's ledger says were applied; each slice is checked against the
/// topic's records in its offset range, and slices of a partition must not overlap.
async fn ledger(
    client: &Client,
    spec: &WindowSpec,
    topic: &str,
    start: DateTime<Utc>,
    scanned: &HashMap<(i32, i64), Scanned>,
    problems: &mut Vec<String>,
) -> Result<i64, AuditError> {
    let slices = client
        .query(
            "SELECT partition, first_offset, last_offset, records FROM window_ledger \
             WHERE sink = $1 AND topic = $2 AND window_start = $3 ORDER BY partition, first_offset",
            &[&spec.sink_id, &topic, &start],
        )
        .await?;
    let mut ledger_records = 0i64;
    let mut previous: HashMap<i32, i64> = HashMap::new();
    for s in &slices {
        let (p, first, last, n): (i32, i64, i64, i64) = (s.get(0), s.get(1), s.get(2), s.get(3));
        ledger_records += n;
        if let Some(prev_last) = previous.get(&p) {
            if first <= *prev_last {
                problems.push(format!("ledger slices overlap on partition {p} at offset {first}: an offset was applied twice"));
            }
        }
        previous.insert(p, last);
        let in_topic = scanned
            .keys()
            .filter(|(sp, so)| *sp == p && *so >= first && *so <= last)
            .count() as i64;
        if in_topic != n {
            problems.push(format!(
                "ledger slice partition {p} offsets {first}..={last} says {n} records, the topic has {in_topic} in the window there"
            ));
        }
    }
    Ok(ledger_records)
}

/// Each row of the window against its source record, column by column.
fn row_problems(
    table: &Table,
    rows: &[tokio_postgres::Row],
    scanned: &HashMap<(i32, i64), Scanned>,
    topic: &str,
    start_ms: Millis,
) -> Vec<String> {
    let mut problems = Vec::new();
    let key_index = table.columns.iter().position(|c| c.name == table.key);
    for r in rows {
        let (p, o): (Option<i32>, Option<i64>) = (r.get(0), r.get(1));
        let key: Option<String> = key_index.and_then(|i| r.get(2 + i));
        let label = key.clone().unwrap_or_else(|| "(no key)".into());
        let Some(rec) = p.zip(o).and_then(|k| scanned.get(&k)) else {
            problems.push(format!(
                "row {label}: its source {:?}/{:?} is not a committed record of this window",
                p, o
            ));
            continue;
        };
        let Some(record) = &rec.record else {
            problems.push(format!("row {label}: its source record is not JSON"));
            continue;
        };
        for (i, c) in table.columns.iter().enumerate() {
            let actual: Option<String> = r.get(2 + i);
            let expected = expected_text(
                c,
                record,
                topic,
                p.unwrap_or(0),
                o.unwrap_or(0),
                rec.timestamp,
                start_ms,
            );
            if !same(c, &actual, &expected) {
                problems.push(format!(
                    "row {label}: column {} is {}, the record at partition {} offset {} says {}",
                    c.name,
                    actual
                        .as_deref()
                        .map(|a| format!("{a:?}"))
                        .unwrap_or_else(|| "NULL".into()),
                    p.unwrap_or(0),
                    o.unwrap_or(0),
                    expected
                        .as_deref()
                        .map(|a| format!("{a:?}"))
                        .unwrap_or_else(|| "NULL".into()),
                ));
            }
        }
    }
    problems
}

/// The keys of the window's records that have no row here or in a later window, unless
/// PostgreSQL rejected the record.
async fn missing_rows(
    client: &Client,
    spec: &WindowSpec,
    table: &Table,
    topic: &str,
    (start, window_column): (DateTime<Utc>, &str),
    scanned: &HashMap<(i32, i64), Scanned>,
) -> Result<Vec<String>, AuditError> {
    let start_ms = start.timestamp_millis();
    let mut problems = Vec::new();
    let rejected: HashSet<(i32, i64)> = client
        .query(
            "SELECT partition, \"offset\" FROM rejects WHERE sink = $1 AND topic = $2 AND window_start = $3",
            &[&spec.sink_id, &topic, &start],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some(key_col) = table.columns.iter().find(|c| c.name == table.key) {
        let mut newest: BTreeMap<String, ((i32, i64), Millis)> = BTreeMap::new();
        for ((p, o), s) in scanned {
            if rejected.contains(&(*p, *o)) {
                continue;
            }
            let Some(record) = &s.record else { continue };
            let Some(k) = Table::value(
                &key_col.field,
                &|f| json_field(record, f),
                "",
                topic,
                *p,
                *o,
                s.timestamp,
                start_ms,
            ) else {
                continue;
            };
            let e = newest.entry(k).or_insert(((*p, *o), s.timestamp));
            if (s.timestamp, *o) > (e.1, e.0 .1) {
                *e = ((*p, *o), s.timestamp);
            }
        }
        let keys: Vec<String> = newest.keys().cloned().collect();
        // key → the window its row is in now
        let present: HashMap<String, Option<i64>> = client
            .query(
                &format!(
                    "SELECT \"{k}\"::text, (extract(epoch FROM \"{window_column}\")*1000)::int8 \
                     FROM \"{}\" WHERE \"{k}\"::text = ANY($1)",
                    table.name,
                    k = table.key
                ),
                &[&keys],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get(1)))
            .collect();
        for (k, ((p, o), _)) in &newest {
            match present.get(k) {
                None => problems.push(format!("missing row {k}: the record at partition {p} offset {o} is in the window")),
                Some(Some(w)) if *w < start_ms => {
                    problems.push(format!("row {k} belongs to an older window, though the record at partition {p} offset {o} is newer"))
                }
                _ => {}
            }
        }
    }
    Ok(problems)
}

/// Stores a verdict in `audits` and returns it with its id.
async fn store(client: &Client, mut report: AuditReport) -> Result<AuditReport, AuditError> {
    let json = serde_json::to_value(&report).unwrap_or_default();
    let id: i64 = client
        .query_one(
            "INSERT INTO audits (sink, window_start, window_end, topic_records, ledger_records, window_records, table_rows, passed, report, run_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &report.sink,
                &report.window_start,
                &report.window_end,
                &report.topic_records,
                &report.ledger_records,
                &report.window_records,
                &report.table_rows,
                &report.passed,
                &json,
                &report.run_id,
            ],
        )
        .await?
        .get(0);
    report.id = Some(id);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(field: &str, pg_type: &str) -> Column {
        Column {
            name: field.trim_start_matches('@').to_owned(),
            field: field.to_owned(),
            pg_type: pg_type.to_owned(),
        }
    }

    #[test]
    fn timestamps_are_compared_as_milliseconds() {
        let c = column("registered_at", "timestamp with time zone");
        assert_eq!(
            select_expr(&c),
            "(extract(epoch FROM \"registered_at\")*1000)::int8::text"
        );
        let record = serde_json::json!({"registered_at": "2015-06-21T11:04:38.419+02:00"});
        assert_eq!(
            expected_text(&c, &record, "t", 0, 0, 7, 9).as_deref(),
            Some("1434877478419")
        );
        // the record's own time and its window come from the source, not the record
        let at = column("@timestamp", "timestamptz");
        assert_eq!(
            expected_text(&at, &record, "t", 0, 0, 7, 9).as_deref(),
            Some("7")
        );
        let w = column("@window_start", "timestamptz");
        assert_eq!(
            expected_text(&w, &record, "t", 0, 0, 7, 9).as_deref(),
            Some("9")
        );
        let text = column("email", "text");
        assert_eq!(select_expr(&text), "\"email\"::text");
    }

    #[test]
    fn json_columns_are_equal_as_json_and_others_as_text() {
        let j = column("raw", "jsonb");
        let (a, b) = (
            Some(r#"{"b": 1, "a": 2}"#.to_owned()),
            Some(r#"{"a":2,"b":1}"#.to_owned()),
        );
        assert!(same(&j, &a, &b));
        assert!(!same(&column("raw", "text"), &a, &b));
        assert!(same(&j, &None, &None));
        assert!(!same(&j, &a, &None));
    }
}
