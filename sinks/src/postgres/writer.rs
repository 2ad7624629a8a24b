//! One batch, one PostgreSQL transaction: the rows, the window ledger, the windows' counts,
//! the rejects and the next offset per partition commit together, or not at all.
//!
//! 1. Compare-and-set each partition's stored offset from the one this batch starts at: a
//!    stale instance (its partition now elsewhere) fails here instead of writing twice.
//! 2. Lock the batch's windows (`FOR UPDATE`): a window sealed meanwhile takes no more
//!    records; they follow the late policy.
//! 3. Stage the rows with binary `COPY` into a temporary table, then merge them with one
//!    `INSERT … SELECT DISTINCT ON (key) … ON CONFLICT (key) DO UPDATE`, the newest record
//!    winning. If PostgreSQL rejects a row, the merge is retried row by row (a savepoint
//!    each) and the rejected rows go to `rejects` with their SQLSTATE — never lost, never
//!    blocking the partition.
//! 4. Ledger slices per window and partition, window counts, commit.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, TimeZone, Utc};
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Transaction};

use super::config::{LatePolicy, PostgresSinkConfig};
use super::window::Millis;

/// One clean record on its way to the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub partition: i32,
    pub offset: i64,
    /// The record time (the Kafka timestamp), milliseconds.
    pub timestamp: Millis,
    pub window_start: Millis,
    /// One text value per mapped column, in [`Table::columns`] order; `None` is NULL.
    pub values: Vec<Option<String>>,
    /// Why the record could not be read as a clean record, if it could not.
    pub undecodable: Option<String>,
    /// The Kafka key and value as read, for a dead letter.
    pub key: Option<Vec<u8>>,
    pub raw: Vec<u8>,
}

/// A mapped column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The clean record field (or `@…`) it takes.
    pub field: String,
    /// The column's PostgreSQL type, for the cast from the staged text.
    pub pg_type: String,
}

/// The target table, as PostgreSQL describes it.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: String,
    pub columns: Vec<Column>,
    pub key: String,
    /// The column holding the record time, for "the newest record wins".
    pub timestamp_column: Option<String>,
    /// The column holding the window start, for audits.
    pub window_column: Option<String>,
    /// A column not mapped that records the load time (`ingestion_timestamp`).
    pub touch_column: Option<String>,
    merge_sql: String,
    merge_one_sql: String,
    stage_sql: String,
    copy_sql: String,
    insert_one_sql: String,
}

/// Why a batch did not commit.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stored offset is not the one this batch starts from: another instance owns the
    /// partition, or this one is stale. Nothing was written.
    #[error("fenced on partition {partition}: the stored next offset is {stored:?}, this batch starts at {expected}")]
    Fenced {
        partition: i32,
        stored: Option<i64>,
        expected: i64,
    },
    /// PostgreSQL could not be reached or failed the transaction; retry the same batch.
    #[error("PostgreSQL: {}", describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the late dead letters could not be sent: {0}")]
    DeadLetter(String),
    #[error("table \"{table}\" cannot take the mapping: {message}")]
    Table { table: String, message: String },
}

impl WriteError {
    /// A lost connection or a failed transaction: the batch can be retried as it is.
    pub fn is_transient(&self) -> bool {
        !matches!(self, WriteError::Fenced { .. } | WriteError::Table { .. })
    }
}

/// A PostgreSQL error with its SQLSTATE and message (tokio-postgres prints only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A record for the rejects table: its JSON as `jsonb` accepts it (no `\u0000`), or the
/// bytes as a JSON string when they are not JSON.
fn storable(raw: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(raw);
    serde_json::from_str(&text.replace("\\u0000", "\\ufffd"))
        .unwrap_or_else(|_| serde_json::Value::String(text.replace('\0', "\u{fffd}")))
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

impl Table {
    /// Reads the table's column types and prepares the statements.
    pub async fn describe(client: &Client, cfg: &PostgresSinkConfig) -> Result<Table, WriteError> {
        let rows = client
            .query(
                "SELECT column_name::text, format_type(a.atttypid, a.atttypmod) \
                 FROM information_schema.columns c \
                 JOIN pg_attribute a ON a.attrelid = to_regclass(quote_ident($1)) AND a.attname = c.column_name \
                 WHERE c.table_schema = current_schema() AND c.table_name = $1",
                &[&cfg.table],
            )
            .await?;
        let types: HashMap<String, String> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        if types.is_empty() {
            return Err(WriteError::Table {
                table: cfg.table.clone(),
                message: "no such table (apply schema.sql)".into(),
            });
        }
        let mut columns = Vec::new();
        for (name, field) in &cfg.columns {
            let Some(t) = types.get(name) else {
                return Err(WriteError::Table {
                    table: cfg.table.clone(),
                    message: format!("it has no column \"{name}\""),
                });
            };
            columns.push(Column {
                name: name.clone(),
                field: field.clone(),
                pg_type: t.clone(),
            });
        }
        let find = |f: &str| {
            columns
                .iter()
                .find(|c| c.field == f)
                .map(|c| c.name.clone())
        };
        let timestamp_column = find("@timestamp");
        let window_column = find("@window_start");
        let touch_column = types
            .contains_key("ingestion_timestamp")
            .then(|| "ingestion_timestamp".to_owned())
            .filter(|c| !cfg.columns.contains_key(c));
        let stage = format!(
            "weir_stage_{}",
            cfg.table.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        let stage_cols: Vec<String> = columns
            .iter()
            .map(|c| format!("{} text", quote(&c.name)))
            .collect();
        let stage_sql = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {stage} (__seq int8, __partition int4, __offset int8, __ts int8, {}) ON COMMIT DELETE ROWS",
            stage_cols.join(", ")
        );
        let copy_sql = format!("COPY {stage} FROM STDIN BINARY");
        let params: Vec<String> = (1..=columns.len() + 4).map(|i| format!("${i}")).collect();
        let insert_one_sql = format!("INSERT INTO {stage} VALUES ({})", params.join(", "));
        let names: Vec<String> = columns.iter().map(|c| quote(&c.name)).collect();
        let casts: Vec<String> = columns
            .iter()
            .map(|c| format!("s.{}::{}", quote(&c.name), c.pg_type))
            .collect();
        let mut sets: Vec<String> = columns
            .iter()
            .filter(|c| c.name != cfg.key)
            .map(|c| format!("{0} = EXCLUDED.{0}", quote(&c.name)))
            .collect();
        if let Some(t) = &touch_column {
            sets.push(format!("{} = now()", quote(t)));
        }
        let newest = timestamp_column
            .as_ref()
            .map(|t| {
                format!(
                    " WHERE {tbl}.{t} IS NULL OR {tbl}.{t} <= EXCLUDED.{t}",
                    tbl = quote(&cfg.table),
                    t = quote(t)
                )
            })
            .unwrap_or_default();
        let returning = window_column
            .as_ref()
            .map(|w| format!(" RETURNING (extract(epoch FROM {})*1000)::int8", quote(w)))
            .unwrap_or_else(|| " RETURNING 0::int8".into());
        let key = quote(&cfg.key);
        let merge = |filter: &str| {
            format!(
                "INSERT INTO {tbl} ({names}) SELECT DISTINCT ON (s.{key}) {casts} FROM {stage} s{filter} \
                 ORDER BY s.{key}, s.__ts DESC, s.__offset DESC \
                 ON CONFLICT ({key}) DO UPDATE SET {sets}{newest}{returning}",
                tbl = quote(&cfg.table),
                names = names.join(", "),
                casts = casts.join(", "),
                sets = sets.join(", "),
            )
        };
        Ok(Table {
            name: cfg.table.clone(),
            key: cfg.key.clone(),
            merge_sql: merge(""),
            merge_one_sql: merge(" WHERE s.__seq = $1"),
            stage_sql,
            copy_sql,
            insert_one_sql,
            columns,
            timestamp_column,
            window_column,
            touch_column,
        })
    }

    /// The text of one column for a clean record (`None` is NULL). `get` reads a field of
    /// the record as text; `raw` is the record's JSON as read.
    #[allow(clippy::too_many_arguments)]
    pub fn value(
        field: &str,
        get: &dyn Fn(&str) -> Option<String>,
        raw: &str,
        topic: &str,
        partition: i32,
        offset: i64,
        ts: Millis,
        window_start: Millis,
    ) -> Option<String> {
        let rfc = |ms: Millis| {
            Utc.timestamp_millis_opt(ms)
                .single()
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        };
        match field {
            "@record" => Some(raw.to_owned()),
            "@topic" => Some(topic.to_owned()),
            "@partition" => Some(partition.to_string()),
            "@offset" => Some(offset.to_string()),
            "@timestamp" => rfc(ts),
            "@window_start" => rfc(window_start),
            f => get(f),
        }
    }
}

/// Reads a field of a parsed record as text (`None` for null or absent).
pub fn json_field(record: &serde_json::Value, field: &str) -> Option<String> {
    match record.get(field)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// Reads a field of a record parsed one level deep (values kept as raw JSON).
pub fn raw_field(
    record: &HashMap<&str, &serde_json::value::RawValue>,
    field: &str,
) -> Option<String> {
    let v = record.get(field)?.get();
    match v.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(v).ok(),
        Some(b'n') if v == "null" => None,
        Some(_) => Some(v.to_owned()),
        None => None,
    }
}

/// Who is writing: the sink's id in the tables, the topic it reads and its windows.
#[derive(Debug, Clone)]
pub struct SinkIdent {
    pub id: String,
    pub topic: String,
    pub window_ms: i64,
    pub late_policy: LatePolicy,
}

/// Where a partition's offset moves in this batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetMove {
    pub partition: i32,
    /// The stored next offset this batch starts from.
    pub expected: i64,
    /// The next offset after this batch.
    pub next: i64,
    /// The partition's watermark, milliseconds.
    pub watermark: Option<Millis>,
}

/// What a committed batch did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub records: u64,
    pub rows_written: u64,
    pub rejected: u64,
    pub late_dead_letter: u64,
    pub late_dropped: u64,
    pub late_accepted: u64,
}

fn ts(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Per-window tallies within a batch.
#[derive(Debug, Default, Clone)]
struct WindowTally {
    records: i64,
    rows_written: i64,
    rejected: i64,
    first: Option<Millis>,
    last: Option<Millis>,
    late_dead_letter: i64,
    late_dropped: i64,
    late_accepted: i64,
}

fn is_row_error(e: &tokio_postgres::Error) -> bool {
    // class 22 (data exception) and 23 (integrity constraint violation): this row's fault
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// Writes one batch in one transaction. `late` receives the records for sealed windows
/// under the dead-letter policy before the commit, so none is lost if the commit fails.
pub async fn write_batch(
    client: &mut Client,
    table: &Table,
    sink: &SinkIdent,
    rows: &[Row],
    offsets: &[OffsetMove],
    late: &mut dyn FnMut(&[&Row]) -> Result<(), String>,
) -> Result<Outcome, WriteError> {
    let tx = client.transaction().await?;
    cas_offsets(&tx, sink, offsets).await?;
    let mut outcome = Outcome {
        records: rows.len() as u64,
        ..Outcome::default()
    };
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(outcome);
    }

    // windows: create the missing ones, lock them all, learn which are sealed
    let mut windows: Vec<Millis> = rows.iter().map(|r| r.window_start).collect();
    windows.sort_unstable();
    windows.dedup();
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| ts(*w)).collect();
    let ends: Vec<DateTime<Utc>> = windows.iter().map(|w| ts(*w + sink.window_ms)).collect();
    tx.execute(
        "INSERT INTO windows (sink, window_start, window_end) \
         SELECT $1, s, e FROM unnest($2::timestamptz[], $3::timestamptz[]) AS w(s, e) \
         ON CONFLICT (sink, window_start) DO NOTHING",
        &[&sink.id, &starts, &ends],
    )
    .await?;
    let sealed: Vec<Millis> = tx
        .query(
            "SELECT (extract(epoch FROM window_start)*1000)::int8, status FROM windows \
             WHERE sink = $1 AND window_start = ANY($2) ORDER BY window_start FOR UPDATE",
            &[&sink.id, &starts],
        )
        .await?
        .iter()
        .filter(|r| r.get::<_, String>(1) == "sealed")
        .map(|r| r.get(0))
        .collect();

    let mut tally: BTreeMap<Millis, WindowTally> = BTreeMap::new();
    let mut apply: Vec<&Row> = Vec::with_capacity(rows.len());
    let mut rejects: Vec<(&Row, Option<String>, String)> = Vec::new();
    let mut late_rows: Vec<&Row> = Vec::new();
    for row in rows {
        let t = tally.entry(row.window_start).or_default();
        if sealed.contains(&row.window_start) {
            match sink.late_policy {
                LatePolicy::DeadLetter => {
                    t.late_dead_letter += 1;
                    late_rows.push(row);
                    rejects.push((row, None, "window.sealed".into()));
                    continue;
                }
                LatePolicy::Drop => {
                    t.late_dropped += 1;
                    continue;
                }
                LatePolicy::Accept => t.late_accepted += 1,
            }
        } else {
            t.records += 1;
            t.first = Some(t.first.map_or(row.timestamp, |f| f.min(row.timestamp)));
            t.last = Some(t.last.map_or(row.timestamp, |l| l.max(row.timestamp)));
        }
        match &row.undecodable {
            Some(why) => rejects.push((row, None, why.clone())),
            // PostgreSQL's text cannot hold NUL: refuse it here rather than fail the COPY
            None if row.values.iter().flatten().any(|v| v.contains('\0')) => rejects.push((
                row,
                Some("22021".into()),
                "text contains a NUL character (0x00), which PostgreSQL text cannot store".into(),
            )),
            None => apply.push(row),
        }
    }

    // stage and merge
    let mut written: Vec<Millis> = Vec::new();
    if !apply.is_empty() {
        tx.batch_execute(&table.stage_sql).await?;
        let seqs: Vec<i64> = (0..apply.len() as i64).collect();
        tx.batch_execute("SAVEPOINT merge").await?;
        let bulk = async {
            let sink_copy = tx.copy_in(&table.copy_sql).await?;
            let mut types = vec![Type::INT8, Type::INT4, Type::INT8, Type::INT8];
            types.extend(std::iter::repeat_n(Type::TEXT, table.columns.len()));
            let writer = BinaryCopyInWriter::new(sink_copy, &types);
            pin_mut!(writer);
            let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(types.len());
            for (i, row) in apply.iter().enumerate() {
                values.clear();
                values.push(&seqs[i]);
                values.push(&row.partition);
                values.push(&row.offset);
                values.push(&row.timestamp);
                for v in &row.values {
                    values.push(v);
                }
                writer.as_mut().write(&values).await?;
            }
            writer.finish().await?;
            tx.query(&table.merge_sql, &[]).await
        };
        match bulk.await {
            Ok(returned) => {
                written.extend(returned.iter().map(|r| r.get::<_, i64>(0)));
                tx.batch_execute("RELEASE SAVEPOINT merge").await?;
            }
            Err(e) if is_row_error(&e) => {
                tracing::warn!(error = %describe(&e), rows = apply.len(), "PostgreSQL refused a row of the batch: writing it row by row");
                tx.batch_execute("ROLLBACK TO SAVEPOINT merge").await?;
                // row by row, in offset order: each row its own savepoint
                for (i, row) in apply.iter().enumerate() {
                    tx.batch_execute("SAVEPOINT r").await?;
                    let mut values: Vec<&(dyn ToSql + Sync)> =
                        vec![&seqs[i], &row.partition, &row.offset, &row.timestamp];
                    for v in &row.values {
                        values.push(v);
                    }
                    let one = async {
                        tx.execute(&table.insert_one_sql, &values).await?;
                        tx.query(&table.merge_one_sql, &[&seqs[i]]).await
                    };
                    match one.await {
                        Ok(returned) => {
                            written.extend(returned.iter().map(|r| r.get::<_, i64>(0)));
                            tx.batch_execute("RELEASE SAVEPOINT r").await?;
                        }
                        Err(e) if is_row_error(&e) => {
                            tx.batch_execute("ROLLBACK TO SAVEPOINT r").await?;
                            let db = e.as_db_error();
                            rejects.push((
                                row,
                                db.map(|d| d.code().code().to_owned()),
                                db.map(|d| d.message().to_owned())
                                    .unwrap_or_else(|| e.to_string()),
                            ));
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    outcome.rows_written = written.len() as u64;
    for w in &written {
        // rows are attributed to the window of the record that wrote them
        if let Some(t) = tally.get_mut(w) {
            t.rows_written += 1;
        }
    }

    // rejects, in the same transaction
    for (row, sqlstate, reason) in &rejects {
        if reason != "window.sealed" {
            outcome.rejected += 1;
            tally.entry(row.window_start).or_default().rejected += 1;
        }
        tx.execute(
            "INSERT INTO rejects (sink, topic, partition, \"offset\", window_start, sqlstate, reason, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sink, topic, partition, \"offset\") DO NOTHING",
            &[&sink.id, &sink.topic, &row.partition, &row.offset, &ts(row.window_start), sqlstate, reason, &storable(&row.raw)],
        )
        .await?;
    }

    // the ledger: a slice per window and partition of the records applied (rows or rejects)
    let mut slices: BTreeMap<(Millis, i32), (i64, i64, i64)> = BTreeMap::new();
    for row in rows {
        let late_not_applied =
            sealed.contains(&row.window_start) && sink.late_policy != LatePolicy::Accept;
        if late_not_applied {
            continue;
        }
        let e = slices
            .entry((row.window_start, row.partition))
            .or_insert((row.offset, row.offset, 0));
        e.0 = e.0.min(row.offset);
        e.1 = e.1.max(row.offset);
        e.2 += 1;
    }
    for ((w, p), (first, last, n)) in &slices {
        tx.execute(
            "INSERT INTO window_ledger (sink, topic, partition, first_offset, last_offset, window_start, records) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&sink.id, &sink.topic, p, first, last, &ts(*w), n],
        )
        .await?;
    }

    // the windows' counts
    for (w, t) in &tally {
        if sealed.contains(w) {
            outcome.late_dead_letter += t.late_dead_letter as u64;
            outcome.late_dropped += t.late_dropped as u64;
            outcome.late_accepted += t.late_accepted as u64;
            tx.execute(
                "UPDATE windows SET late_dead_letter = late_dead_letter + $3, late_dropped = late_dropped + $4, \
                 late_accepted = late_accepted + $5 WHERE sink = $1 AND window_start = $2",
                &[&sink.id, &ts(*w), &t.late_dead_letter, &t.late_dropped, &t.late_accepted],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE windows SET records = records + $3, rows_written = rows_written + $4, rejected = rejected + $5, \
                 first_record_at = LEAST(first_record_at, $6), last_record_at = GREATEST(last_record_at, $7) \
                 WHERE sink = $1 AND window_start = $2 AND status = 'open'",
                &[&sink.id, &ts(*w), &t.records, &t.rows_written, &t.rejected, &t.first.map(ts), &t.last.map(ts)],
            )
            .await?;
        }
    }

    if !late_rows.is_empty() {
        late(&late_rows).map_err(WriteError::DeadLetter)?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Moves each partition's stored offset from `expected` to `next`, or fails fenced.
async fn cas_offsets(
    tx: &Transaction<'_>,
    sink: &SinkIdent,
    offsets: &[OffsetMove],
) -> Result<(), WriteError> {
    for m in offsets {
        let n = tx
            .execute(
                "UPDATE sink_offsets SET next_offset = $5, watermark = $6, heartbeat_at = now(), updated_at = now() \
                 WHERE sink = $1 AND topic = $2 AND partition = $3 AND next_offset = $4",
                &[&sink.id, &sink.topic, &m.partition, &m.expected, &m.next, &m.watermark.map(ts)],
            )
            .await?;
        if n != 1 {
            let stored = tx
                .query_opt(
                    "SELECT next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 AND partition = $3",
                    &[&sink.id, &sink.topic, &m.partition],
                )
                .await?
                .map(|r| r.get(0));
            return Err(WriteError::Fenced {
                partition: m.partition,
                stored,
                expected: m.expected,
            });
        }
    }
    Ok(())
}

/// The stored next offset of each partition; partitions never seen start at `low`
/// (the partition's first offset in Kafka) and get a row.
pub async fn load_offsets(
    client: &Client,
    sink: &SinkIdent,
    partitions: &[(i32, i64)],
) -> Result<Vec<(i32, i64)>, tokio_postgres::Error> {
    let mut out = Vec::with_capacity(partitions.len());
    for (p, low) in partitions {
        client
            .execute(
                "INSERT INTO sink_offsets (sink, topic, partition, next_offset) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sink, topic, partition) DO NOTHING",
                &[&sink.id, &sink.topic, p, low],
            )
            .await?;
        let row = client
            .query_one(
                "SELECT next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 AND partition = $3",
                &[&sink.id, &sink.topic, p],
            )
            .await?;
        out.push((*p, row.get(0)));
    }
    Ok(out)
}
