//! Seal and audit a window: the library calls behind `POST /api/windows/{start}/seal`,
//! `…/audit` and `weir audit`.
//!
//! Sealing waits for the watermark (the minimum over the sink's partitions, as stored by the
//! running sinks) to pass the window's end plus the grace period — or is forced — and marks
//! the window sealed with its final counts, atomically and idempotently: sealing twice
//! returns the same result.
//!
//! Auditing reconciles a window end to end and stores the verdict in `audits`: every raw
//! record of the window upstream has exactly one fate — a clean record or a dead letter —
//! per raw partition; and the clean topic's committed records whose timestamps fall in the
//! window match the ledger, the window's counts and the table's rows, column by column.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use weir_topology::config::KafkaSettings;

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use tokio_postgres::Client;

use super::window::{window_start, Millis};
use super::writer::{json_field, Column, Table};

/// The window settings of a sink.
#[derive(Debug, Clone)]
pub struct WindowSpec {
    /// The sink's id in the tables (`application/node`).
    pub sink_id: String,
    pub window_ms: i64,
    pub grace_ms: i64,
}

/// A window as the `windows` table holds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowInfo {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub status: String,
    pub records: i64,
    pub rows_written: i64,
    pub table_rows: Option<i64>,
    pub rejected: i64,
    pub late_dead_letter: i64,
    pub late_dropped: i64,
    pub late_accepted: i64,
    pub first_record_at: Option<DateTime<Utc>>,
    pub last_record_at: Option<DateTime<Utc>>,
    pub sealed_at: Option<DateTime<Utc>>,
    pub sealed_by: Option<String>,
}

const WINDOW_COLUMNS: &str = "window_start, window_end, status, records, rows_written, table_rows, rejected, \
    late_dead_letter, late_dropped, late_accepted, first_record_at, last_record_at, sealed_at, sealed_by";

fn window_of(r: &tokio_postgres::Row) -> WindowInfo {
    WindowInfo {
        window_start: r.get(0),
        window_end: r.get(1),
        status: r.get(2),
        records: r.get(3),
        rows_written: r.get(4),
        table_rows: r.get(5),
        rejected: r.get(6),
        late_dead_letter: r.get(7),
        late_dropped: r.get(8),
        late_accepted: r.get(9),
        first_record_at: r.get(10),
        last_record_at: r.get(11),
        sealed_at: r.get(12),
        sealed_by: r.get(13),
    }
}

/// What sealing did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SealOutcome {
    pub window: WindowInfo,
    /// True when the window was sealed before this call (the result is the stored one).
    pub already_sealed: bool,
    pub watermark: Option<DateTime<Utc>>,
    pub forced: bool,
}

/// Whether a window can be sealed now (what Airflow's sensor polls).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sealability {
    pub sink: String,
    pub window_start: DateTime<Utc>,
    /// Sealed already, or the watermark has passed `sealable_at`.
    pub sealable: bool,
    pub sealed: bool,
    pub watermark: Option<DateTime<Utc>>,
    /// The window's end plus grace.
    pub sealable_at: DateTime<Utc>,
    /// `None` while no record of the window has arrived.
    pub window: Option<WindowInfo>,
}

/// Whether the window starting at `start` can be sealed now; also for a window with no rows.
pub async fn sealable(
    client: &Client,
    spec: &WindowSpec,
    start: DateTime<Utc>,
) -> Result<Sealability, SealError> {
    let needed = seal_needs(spec, start)?;
    let window = window(client, spec, start).await?;
    let wm = watermark(client, spec).await?;
    let sealed = window.as_ref().is_some_and(|w| w.status == "sealed");
    Ok(Sealability {
        sink: spec.sink_id.clone(),
        window_start: start,
        sealable: sealed || wm.is_some_and(|w| w >= needed),
        sealed,
        watermark: wm,
        sealable_at: needed,
        window,
    })
}

/// When a window may be sealed (its end plus grace), or why `start` is not a window.
fn seal_needs(spec: &WindowSpec, start: DateTime<Utc>) -> Result<DateTime<Utc>, SealError> {
    let start_ms = start.timestamp_millis();
    if window_start(start_ms, spec.window_ms) != start_ms {
        return Err(SealError::NotAligned {
            start,
            window_ms: spec.window_ms,
        });
    }
    Ok(ts(start_ms + spec.window_ms + spec.grace_ms))
}

/// Why a window cannot be sealed (yet).
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("window {start} is not sealable yet: the watermark is {}, it must pass {needed} (window end + grace)", watermark.map(|w| w.to_rfc3339()).unwrap_or_else(|| "unknown (no running sink has reported)".into()))]
    NotYet {
        start: DateTime<Utc>,
        watermark: Option<DateTime<Utc>>,
        needed: DateTime<Utc>,
    },
    #[error("{start} is not the start of a window of {window_ms} ms")]
    NotAligned {
        start: DateTime<Utc>,
        window_ms: i64,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
}

fn ts(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// The sink's watermark: the minimum over its partitions of what the sinks last stored.
pub async fn watermark(
    client: &Client,
    spec: &WindowSpec,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT CASE WHEN bool_and(watermark IS NOT NULL) THEN min(watermark) END FROM sink_offsets WHERE sink = $1",
            &[&spec.sink_id],
        )
        .await?;
    Ok(row.get(0))
}

/// One window, if it exists.
pub async fn window(
    client: &Client,
    spec: &WindowSpec,
    start: DateTime<Utc>,
) -> Result<Option<WindowInfo>, tokio_postgres::Error> {
    Ok(client
        .query_opt(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 AND window_start = $2"),
            &[&spec.sink_id, &start],
        )
        .await?
        .as_ref()
        .map(window_of))
}

/// The newest windows, newest first.
pub async fn windows(
    client: &Client,
    spec: &WindowSpec,
    limit: i64,
) -> Result<Vec<WindowInfo>, tokio_postgres::Error> {
    Ok(client
        .query(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 ORDER BY window_start DESC LIMIT $2"),
            &[&spec.sink_id, &limit],
        )
        .await?
        .iter()
        .map(window_of)
        .collect())
}

/// Seals a window: waits for nothing, refuses while the watermark is before end + grace
/// (unless `force`), and is idempotent.
pub async fn seal(
    client: &mut Client,
    spec: &WindowSpec,
    table: &str,
    window_column: &str,
    start: DateTime<Utc>,
    force: bool,
    sealed_by: &str,
) -> Result<SealOutcome, SealError> {
    let needed = seal_needs(spec, start)?;
    let end = ts(start.timestamp_millis() + spec.window_ms);
    let wm = watermark(client, spec).await?;
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO windows (sink, window_start, window_end) VALUES ($1, $2, $3) ON CONFLICT (sink, window_start) DO NOTHING",
        &[&spec.sink_id, &start, &end],
    )
    .await?;
    let current = window_of(
        &tx.query_one(
            &format!("SELECT {WINDOW_COLUMNS} FROM windows WHERE sink = $1 AND window_start = $2 FOR UPDATE"),
            &[&spec.sink_id, &start],
        )
        .await?,
    );
    if current.status == "sealed" {
        tx.commit().await?;
        return Ok(SealOutcome {
            window: current,
            already_sealed: true,
            watermark: wm,
            forced: false,
        });
    }
    if !force && wm.is_none_or(|w| w < needed) {
        return Err(SealError::NotYet {
            start,
            watermark: wm,
            needed,
        });
    }
    let rows: i64 = tx
        .query_one(
            &format!(
                "SELECT count(*) FROM \"{}\" WHERE \"{}\" = $1",
                table.replace('"', "\"\""),
                window_column.replace('"', "\"\"")
            ),
            &[&start],
        )
        .await?
        .get(0);
    let sealed = window_of(
        &tx.query_one(
            &format!(
                "UPDATE windows SET status = 'sealed', sealed_at = now(), sealed_by = $3, table_rows = $4 \
                 WHERE sink = $1 AND window_start = $2 RETURNING {WINDOW_COLUMNS}"
            ),
            &[&spec.sink_id, &start, &sealed_by, &rows],
        )
        .await?,
    );
    tx.commit().await?;
    Ok(SealOutcome {
        window: sealed,
        already_sealed: false,
        watermark: wm,
        forced: force,
    })
}

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
    pub upstream: Option<super::upstream::UpstreamSpec>,
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
    let consumer: BaseConsumer = source
        .kafka
        .client("audit", |c| {
            c.set("group.id", format!("weir-audit-{}", std::process::id()))
                .set("isolation.level", "read_committed")
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true");
        })
        .create()?;
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
    up: &super::upstream::UpstreamSpec,
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
    let mut problems = Vec::new();
    for p in &raw_partitions {
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
    let slices = client
        .query(
            "SELECT partition, first_offset, last_offset, records FROM window_ledger \
             WHERE sink = $1 AND topic = $2 AND window_start = $3 ORDER BY partition, first_offset",
            &[&spec.sink_id, &source.topic, &start],
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
    let find = |f: &str| {
        table
            .columns
            .iter()
            .find(|c| c.field == f)
            .map(|c| c.name.clone())
    };
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
    let (Some(pcol), Some(ocol)) = (find("@partition"), find("@offset")) else {
        problems.push(
            "the table maps no @partition/@offset column: rows cannot be traced to records".into(),
        );
        return store(client, verdict(0, 0, problems)).await;
    };
    let exprs: Vec<String> = table.columns.iter().map(select_expr).collect();
    let sql = format!(
        "SELECT \"{pcol}\"::int4, \"{ocol}\"::int8, {} FROM \"{}\" WHERE \"{window_column}\" = $1",
        exprs.join(", "),
        table.name
    );
    let rows = client.query(&sql, &[&start]).await?;
    let table_rows = rows.len() as i64;
    let key_index = table.columns.iter().position(|c| c.name == table.key);
    for r in &rows {
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
                &source.topic,
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

    // every key of the window has its row (here, or in a later window that overwrote it),
    // unless PostgreSQL rejected the record or it came late
    let rejected: HashSet<(i32, i64)> = client
        .query(
            "SELECT partition, \"offset\" FROM rejects WHERE sink = $1 AND topic = $2 AND window_start = $3",
            &[&spec.sink_id, &source.topic, &start],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    if let Some(key_col) = table.columns.iter().find(|c| c.name == table.key) {
        let mut newest: BTreeMap<String, ((i32, i64), Millis)> = BTreeMap::new();
        for ((p, o), s) in &scanned {
            if rejected.contains(&(*p, *o)) {
                continue;
            }
            let Some(record) = &s.record else { continue };
            let Some(k) = Table::value(
                &key_col.field,
                &|f| json_field(record, f),
                "",
                &source.topic,
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
    store(client, verdict(table_rows, rows.len(), problems)).await
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
