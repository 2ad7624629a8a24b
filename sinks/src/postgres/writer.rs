//! One batch, one PostgreSQL transaction: the rows, the window ledger, the windows' counts,
//! the rejects and the next offset per partition commit together, or not at all.
//!
//! 1. Compare-and-set each partition's stored offset from the one this batch starts at: a
//!    stale instance (its partition now elsewhere) fails here instead of writing twice.
//! 2. Lock the batch's windows (`FOR UPDATE`): a window sealed meanwhile takes no more
//!    records; they follow the late policy.
//! 3. The rows, the newest record of each key winning: the keys the table does not hold yet
//!    go in with text `COPY` straight into the table (as fast as `COPY` itself); the keys it
//!    holds are staged with binary `COPY` into a temporary table and merged with one
//!    `INSERT … SELECT DISTINCT ON (key) … ON CONFLICT (key) DO UPDATE`. When the fast way
//!    fails (another writer added a key meanwhile, a row PostgreSQL refuses) it is rolled
//!    back to a savepoint and the whole batch is merged. If PostgreSQL rejects a row, the
//!    merge is retried row by row (a savepoint each) and the rejected rows go to `rejects`
//!    with their SQLSTATE — never lost, never blocking the partition.
//! 4. Ledger slices per window and partition, window counts, commit.
//!
//! Round trips are what a batch waits for, beside `COPY` itself: the statements are prepared
//! once per connection (deadpool's cache) and those that do not depend on each other's
//! answers are sent together (steps 1 and 2 and the fast insert's savepoint in one round
//! trip, the ledger and the counts in another, the rejects and dead letters [`PIPELINE`] at
//! a time). A batch with no dead letters commits without waiting for the disk
//! ([`relaxed_commit`] says why that keeps exactly-once).
//!
//! Every record the batch cannot apply — late for a sealed window (dead-letter policy), a
//! time beyond the clock or outside years 1 to 9999, not a clean record, refused by
//! PostgreSQL — gets its dead letter in the outbox, in the same transaction
//! ([`super::outbox`] forwards it to Kafka exactly once), and a row in `rejects`.
//!
//! Errors are classified ([`ErrorKind`]): a lost connection or a failed transaction is
//! retried with the same batch; a data error in a statement the batch cannot split is found
//! by writing the batch one record at a time, and a record that fails alone is given up with
//! [`write_unwritable`] (rejects and a dead letter, the offsets moved past it).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use deadpool_postgres::{Client, Transaction};
use futures::{pin_mut, SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::types::ToSql;
use tokio_postgres::Statement;

use super::config::LatePolicy;
use super::window::Millis;
use weir_topology::pipeline::OutRecord;

pub use super::copy::COPY_CHUNK;
use super::copy::*;

pub use super::error::*;
pub use super::rows::*;
pub use super::table::*;

/// A record for the rejects table: its JSON as `jsonb` accepts it (no `\u0000`), or the
/// bytes as a JSON string when they are not JSON.
fn storable(raw: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(raw);
    serde_json::from_str(&text.replace("\\u0000", "\\ufffd"))
        .unwrap_or_else(|_| serde_json::Value::String(text.replace('\0', "\u{fffd}")))
}

/// Who is writing: the sink's id in the tables, the topic it reads and its windows.
#[derive(Debug, Clone)]
pub struct SinkIdent {
    pub id: String,
    pub topic: String,
    pub window_ms: i64,
    pub late_policy: LatePolicy,
}

/// Makes the sink's dead letters: the clean record's bytes, with why.
pub struct DeadLetters<'a> {
    pub encoder: &'a crate::dead_letter::DeadLetterEncoder,
    /// The sink node's name.
    pub node: &'a str,
}

impl DeadLetters<'_> {
    pub fn of(&self, topic: &str, row: &Row, reason: &str, message: String) -> OutRecord {
        use weir_topology::pipeline::SinkEncoder;
        self.encoder.encode(&weir_topology::Envelope {
            origin: weir_topology::Origin {
                topic: topic.to_owned(),
                partition: row.partition,
                offset: row.offset,
                timestamp: Some(row.timestamp),
                key: row.key.clone(),
                value: Some(row.raw().to_vec()),
                ..weir_topology::Origin::default()
            },
            body: weir_topology::Body::Failed(weir_topology::Failure {
                reasons: vec![reason.to_owned()],
                message,
                node: self.node.to_owned(),
                ..weir_topology::Failure::default()
            }),
        })
    }
}

/// A record's reject and dead letter: its reason code, SQLSTATE and sentence (`rejects.reason`
/// holds `code: sentence`).
struct Refused<'r> {
    row: &'r Row,
    /// The reason code of the dead letter (`window.sealed`, `postgres.rejected:22021`, …).
    code: String,
    sqlstate: Option<String>,
    message: String,
    /// Counted in its window's `rejected` and the ledger.
    counted: bool,
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
    /// Dead letters written into the outbox (late, refused, undecodable, bad times).
    pub dead_letters: u64,
    /// Records given up because PostgreSQL refused them alone.
    pub unwritable: u64,
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

/// Writes one batch in one transaction: rows, rejects, dead letters (into the outbox),
/// ledger, window counts and offsets commit together or not at all.
pub async fn write_batch(
    client: &mut Client,
    table: &Table,
    sink: &SinkIdent,
    rows: &[Row],
    tuples: &Tuples,
    offsets: &[OffsetMove],
    dead: &DeadLetters<'_>,
) -> Result<Outcome, WriteError> {
    let tx = client.transaction().await?;
    // records whose time keeps them out of every window: refused, not counted anywhere
    let mut refused: Vec<Refused> = Vec::new();
    let windowed = in_time(rows, &mut refused);
    // the rows go into the table with an unasked COPY when their keys are guessed new
    // ([`merge`] says how): opened in the first round trip, ended in the last
    let unasked = !rows.is_empty()
        && table.key_index.is_some()
        && table.binary.is_some()
        && table.fresh.guess_all_new();
    // the first round trip's statements, prepared first (once per connection: deadpool
    // caches them) so that nothing but them goes out before it, in its order
    let (cas, create, lock, insert) = futures::try_join!(
        tx.prepare_cached(CAS_OFFSETS_SQL),
        tx.prepare_cached(CREATE_WINDOWS_SQL),
        tx.prepare_cached(LOCK_WINDOWS_SQL),
        async {
            match unasked {
                true => tx.prepare_cached(&table.insert_binary_sql).await.map(Some),
                false => Ok(None),
            }
        }
    )?;
    // sent together, in this order, one round trip: the offsets' compare-and-set; the
    // windows (the missing ones created, all of them locked, the sealed ones learnt); when
    // there are rows, the savepoint the fast insert is undone to (after the offsets and the
    // windows: undoing the insert must not undo them); and the unasked COPY opened
    let savepoint = async {
        if !rows.is_empty() {
            tx.batch_execute("SAVEPOINT fresh").await?;
        }
        Ok::<_, WriteError>(())
    };
    let open = async {
        match &insert {
            Some(statement) => {
                Ok::<_, WriteError>(Some(Box::pin(tx.copy_in::<_, Bytes>(statement).await?)))
            }
            None => Ok(None),
        }
    };
    let (stale, sealed, (), copy) = futures::try_join!(
        cas_offsets(&tx, &cas, sink, offsets),
        lock_windows(&tx, (&create, &lock), sink, &windowed),
        savepoint,
        open
    )?;
    if let Some(m) = stale {
        // the COPY aborted first (nothing else goes out while it is open), and undone
        if copy.is_some() {
            drop(copy);
            tx.batch_execute("ROLLBACK TO SAVEPOINT fresh").await?;
        }
        return Err(fenced(&tx, sink, m).await);
    }
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Outcome::default());
    }
    let (tally, apply) = sort_out(sink, &windowed, &sealed, &mut refused);
    let rest = Rest {
        sink,
        dead,
        records: rows.len(),
        windowed: &windowed,
        sealed: &sealed,
        tally: &tally,
    };

    let mut outcome = None;
    let refused_before = refused.len();
    if let (Some(mut copy), Some(key)) = (copy, table.key_index) {
        // the newest row of each key, unasked; a row with no key or no tuple goes the
        // staged way
        let (fresh, odd): (Vec<&Row>, Vec<&Row>) = newest_per_key(&apply, key)
            .into_iter()
            .partition(|r| r.values.get(key).is_some() && tuples.of(r).is_some());
        let mut fed = Ok(());
        for chunk in tuple_chunks(&fresh, tuples, COPY_CHUNK) {
            fed = copy.feed(chunk).await;
            if fed.is_err() {
                break;
            }
        }
        let windows: Vec<Millis> = fresh.iter().map(|r| window_of(table, r)).collect();
        let copied = match fed {
            // nothing else to write: the COPY's end and the batch's rest go together
            Ok(()) if odd.is_empty() => {
                rest.write(&tx, &windows, &refused, copy.as_mut().finish())
                    .await?
            }
            Ok(()) => match copy.as_mut().finish().await {
                Ok(_) => {
                    let mut written = windows;
                    written.extend(merge_staged(&tx, table, &odd, &mut refused).await?);
                    rest.write(&tx, &written, &refused, async { Ok(0) }).await?
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        // ended (or aborted) before anything else is sent: nothing goes out while a COPY is
        // open
        drop(copy);
        match copied {
            Ok(o) => outcome = Some(o),
            Err(e) => {
                // a key the table holds, or a row PostgreSQL refuses: undone, and the batch
                // goes the asking way
                if e.as_db_error().is_none() {
                    return Err(e.into());
                }
                tracing::debug!(error = %describe(&e), "the batch's unasked COPY failed");
                tx.batch_execute("ROLLBACK TO SAVEPOINT fresh").await?;
                if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    table.fresh.missed();
                }
                refused.truncate(refused_before);
            }
        }
    }
    let outcome = match outcome {
        Some(o) => o,
        None => {
            let written = merge(&tx, table, &apply, tuples, &mut refused, unasked).await?;
            rest.write(&tx, &written, &refused, async { Ok(0) })
                .await??
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// The window a row written with `COPY` is counted in: its record's (the window column
/// holds it; RETURNING would give the same), or none when the table has no window column.
fn window_of(table: &Table, row: &Row) -> Millis {
    table.window_column.as_ref().map_or(0, |_| row.window_start)
}

/// What a batch writes after its rows: rejects and dead letters, the ledger, the windows'
/// counts.
struct Rest<'a> {
    sink: &'a SinkIdent,
    dead: &'a DeadLetters<'a>,
    records: usize,
    windowed: &'a [&'a Row],
    sealed: &'a [Millis],
    tally: &'a BTreeMap<Millis, WindowTally>,
}

impl Rest<'_> {
    /// Writes the rest of the batch whose rows wrote `written` (the window of each row) and
    /// which refused `refused`, sent together with `copy`, the end of the rows' COPY (or
    /// nothing): one round trip. The inner error is the COPY's (what followed it failed with
    /// it); the outer one the rest's.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        written: &[Millis],
        refused: &[Refused<'_>],
        copy: impl std::future::Future<Output = Result<u64, tokio_postgres::Error>>,
    ) -> Result<Result<Outcome, tokio_postgres::Error>, WriteError> {
        let sink = self.sink;
        let mut outcome = Outcome {
            records: self.records as u64,
            rows_written: written.len() as u64,
            ..Outcome::default()
        };
        let mut tally = self.tally.clone();
        for w in written {
            // rows are attributed to the window of the record that wrote them
            if let Some(t) = tally.get_mut(w) {
                t.rows_written += 1;
            }
        }
        for r in refused {
            if r.counted {
                outcome.rejected += 1;
                tally.entry(r.row.window_start).or_default().rejected += 1;
            }
            if r.code != "window.sealed" || sink.late_policy == LatePolicy::DeadLetter {
                outcome.dead_letters += 1;
            }
        }
        for (w, t) in &tally {
            if self.sealed.contains(w) {
                outcome.late_dead_letter += t.late_dead_letter as u64;
                outcome.late_dropped += t.late_dropped as u64;
                outcome.late_accepted += t.late_accepted as u64;
            }
        }
        // the ledger: a slice per window and partition of the records applied, rows or
        // rejects
        let slices = ledger_slices(self.windowed, self.sealed, sink.late_policy);
        let rest = async {
            futures::try_join!(
                // rejects and dead letters, in the same transaction
                pipelined(refused.iter().map(|r| put_refused(tx, sink, r, self.dead))),
                // a batch that puts nothing in the outbox commits without waiting for its
                // WAL to reach the disk ([`relaxed_commit`])
                relaxed_commit(tx, outcome.dead_letters == 0),
                put_ledger(tx, sink, &slices),
                count_windows(tx, sink, &tally, self.sealed)
            )
        };
        let (copied, rest) = futures::join!(copy, rest);
        if let Err(e) = copied {
            return Ok(Err(e));
        }
        rest?;
        Ok(Ok(outcome))
    }
}

/// Lets the transaction commit without waiting for its WAL to reach the disk, when `relax`
/// (PostgreSQL's `synchronous_commit = off`, for this transaction alone).
///
/// Exactly-once still holds: a batch's rows, ledger, counts and offsets commit atomically,
/// and the WAL is written in order, so a crash of PostgreSQL can only lose the last batches
/// whole, offsets included, and the sink reads them from Kafka again. Whatever commits
/// durably after them (Airflow sealing a window, a batch with dead letters) makes them
/// durable too. A batch with dead letters keeps the wait: its outbox rows are forwarded to
/// Kafka, which cannot be taken back.
async fn relaxed_commit(tx: &Transaction<'_>, relax: bool) -> Result<(), WriteError> {
    if relax {
        tx.batch_execute("SET LOCAL synchronous_commit TO off")
            .await?;
    }
    Ok(())
}

/// At most this many statements are sent ahead of their answers ([`pipelined`]).
const PIPELINE: usize = 64;

/// Runs `steps` (each a few statements on one connection) with their statements pipelined:
/// up to [`PIPELINE`] are sent before the first answer is awaited, in order. Each step's own
/// statements run in its order; different steps must not depend on each other.
async fn pipelined<T, E, F>(steps: impl IntoIterator<Item = F>) -> Result<Vec<T>, E>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    futures::stream::iter(steps)
        .buffered(PIPELINE)
        .try_collect()
        .await
}

/// Writes the ledger's slices, in one statement.
async fn put_ledger(
    tx: &Transaction<'_>,
    sink: &SinkIdent,
    slices: &BTreeMap<(Millis, i32), (i64, i64, i64)>,
) -> Result<(), WriteError> {
    if slices.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "INSERT INTO window_ledger (sink, topic, partition, first_offset, last_offset, window_start, records) \
             SELECT $1, $2, p, f, l, w, n \
             FROM unnest($3::int4[], $4::int8[], $5::int8[], $6::timestamptz[], $7::int8[]) AS s(p, f, l, w, n)",
        )
        .await?;
    let partitions: Vec<i32> = slices.keys().map(|(_, p)| *p).collect();
    let firsts: Vec<i64> = slices.values().map(|s| s.0).collect();
    let lasts: Vec<i64> = slices.values().map(|s| s.1).collect();
    let windows: Vec<DateTime<Utc>> = slices.keys().map(|(w, _)| ts(*w)).collect();
    let counts: Vec<i64> = slices.values().map(|s| s.2).collect();
    tx.execute(
        &statement,
        &[
            &sink.id,
            &sink.topic,
            &partitions,
            &firsts,
            &lasts,
            &windows,
            &counts,
        ],
    )
    .await?;
    Ok(())
}

/// The rows whose time puts them in a window; the others are refused (not counted anywhere).
fn in_time<'r>(rows: &'r [Row], refused: &mut Vec<Refused<'r>>) -> Vec<&'r Row> {
    rows.iter()
        .filter(|row| match &row.time_problem {
            Some((code, message)) => {
                refused.push(Refused {
                    row,
                    code: (*code).to_owned(),
                    sqlstate: None,
                    message: message.clone(),
                    counted: false,
                });
                false
            }
            None => true,
        })
        .collect()
}

/// Creates the missing windows of a batch.
const CREATE_WINDOWS_SQL: &str = "INSERT INTO windows (sink, window_start, window_end) \
     SELECT $1, s, e FROM unnest($2::timestamptz[], $3::timestamptz[]) AS w(s, e) \
     ON CONFLICT (sink, window_start) DO NOTHING";

/// Locks a batch's windows and tells which are sealed.
const LOCK_WINDOWS_SQL: &str =
    "SELECT (extract(epoch FROM window_start)*1000)::int8, status FROM windows \
     WHERE sink = $1 AND window_start = ANY($2) ORDER BY window_start FOR UPDATE";

/// Creates the windows of `windowed` that are missing and locks them all (`FOR UPDATE`: a
/// window sealed meanwhile takes no more records); returns the sealed ones.
async fn lock_windows(
    tx: &Transaction<'_>,
    (create, lock): (&Statement, &Statement),
    sink: &SinkIdent,
    windowed: &[&Row],
) -> Result<Vec<Millis>, WriteError> {
    let mut windows: Vec<Millis> = windowed.iter().map(|r| r.window_start).collect();
    windows.sort_unstable();
    windows.dedup();
    let starts: Vec<DateTime<Utc>> = windows.iter().map(|w| ts(*w)).collect();
    let ends: Vec<DateTime<Utc>> = windows.iter().map(|w| ts(*w + sink.window_ms)).collect();
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    // sent together, in this order: the lock sees the windows just created
    let (create_params, lock_params): (&[&(dyn ToSql + Sync)], &[&(dyn ToSql + Sync)]) =
        (&[&sink.id, &starts, &ends], &[&sink.id, &starts]);
    let (_, locked) = futures::try_join!(
        tx.execute(create, create_params),
        tx.query(lock, lock_params)
    )?;
    Ok(locked
        .iter()
        .filter(|r| r.get::<_, String>(1) == "sealed")
        .map(|r| r.get(0))
        .collect())
}

/// Each window's tally, and the rows to apply: a record for a sealed window follows the late
/// policy; an undecodable record or one with a NUL is refused (and counted).
fn sort_out<'r>(
    sink: &SinkIdent,
    windowed: &[&'r Row],
    sealed: &[Millis],
    refused: &mut Vec<Refused<'r>>,
) -> (BTreeMap<Millis, WindowTally>, Vec<&'r Row>) {
    let mut tally: BTreeMap<Millis, WindowTally> = BTreeMap::new();
    let mut apply: Vec<&Row> = Vec::with_capacity(windowed.len());
    for row in windowed {
        let row: &'r Row = row;
        let t = tally.entry(row.window_start).or_default();
        if sealed.contains(&row.window_start) {
            match sink.late_policy {
                LatePolicy::DeadLetter => {
                    t.late_dead_letter += 1;
                    refused.push(Refused {
                        row,
                        code: "window.sealed".into(),
                        sqlstate: None,
                        message: format!(
                            "the window starting {} was sealed before this record arrived",
                            ts(row.window_start).to_rfc3339()
                        ),
                        counted: false,
                    });
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
            Some(why) => {
                let (code, message) = why.split_once(": ").unwrap_or(("record.undecodable", why));
                refused.push(Refused {
                    row,
                    code: code.to_owned(),
                    sqlstate: None,
                    message: message.to_owned(),
                    counted: true,
                })
            }
            // PostgreSQL's text cannot hold NUL: refuse it here rather than fail the COPY
            None if row.nul => refused.push(Refused {
                row,
                code: "postgres.rejected:22021".into(),
                sqlstate: Some("22021".into()),
                message: "text contains a NUL character (0x00), which PostgreSQL text cannot store"
                    .into(),
                counted: true,
            }),
            None => apply.push(row),
        }
    }
    (tally, apply)
}

/// The ledger's slices: per window and partition, the first and last offset and the count of
/// the records applied (rows or rejects; late ones not applied are left out).
fn ledger_slices(
    windowed: &[&Row],
    sealed: &[Millis],
    late_policy: LatePolicy,
) -> BTreeMap<(Millis, i32), (i64, i64, i64)> {
    let mut slices: BTreeMap<(Millis, i32), (i64, i64, i64)> = BTreeMap::new();
    for row in windowed {
        let late_not_applied =
            sealed.contains(&row.window_start) && late_policy != LatePolicy::Accept;
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
    slices
}

/// Adds the batch's counts to its windows: an open window's records, rows and rejects; a
/// sealed one's late records.
async fn count_windows(
    tx: &Transaction<'_>,
    sink: &SinkIdent,
    tally: &BTreeMap<Millis, WindowTally>,
    sealed: &[Millis],
) -> Result<(), WriteError> {
    let (late, open) = futures::try_join!(
        tx.prepare_cached(
            "UPDATE windows SET late_dead_letter = late_dead_letter + $3, late_dropped = late_dropped + $4, \
             late_accepted = late_accepted + $5 WHERE sink = $1 AND window_start = $2",
        ),
        tx.prepare_cached(
            "UPDATE windows SET records = records + $3, rows_written = rows_written + $4, rejected = rejected + $5, \
             first_record_at = LEAST(first_record_at, $6), last_record_at = GREATEST(last_record_at, $7) \
             WHERE sink = $1 AND window_start = $2 AND status = 'open'",
        )
    )?;
    // one statement a window, sent together
    pipelined(tally.iter().map(|(w, t)| {
        let (late, open) = (&late, &open);
        async move {
            let start = ts(*w);
            if sealed.contains(w) {
                tx.execute(
                    late,
                    &[
                        &sink.id,
                        &start,
                        &t.late_dead_letter,
                        &t.late_dropped,
                        &t.late_accepted,
                    ],
                )
                .await
            } else {
                tx.execute(
                    open,
                    &[
                        &sink.id,
                        &start,
                        &t.records,
                        &t.rows_written,
                        &t.rejected,
                        &t.first.map(ts),
                        &t.last.map(ts),
                    ],
                )
                .await
            }
        }
    }))
    .await?;
    Ok(())
}

/// Writes `apply` into the table, the newest record of each key winning; returns the window
/// of every row written (rows PostgreSQL refuses go to `refused`). The savepoint `fresh`
/// stands when it is called (what failed after it was undone to it).
///
/// The fast way first, as fast as `COPY` into the table: the newest row of each key goes in
/// with `COPY` straight into the table — all of them at once, unasked, when the last
/// batches' keys were all new (a key the table holds fails it, and it is undone; `tried`:
/// [`write_batch`] tried that already), else only those of keys the table does not hold, the
/// rest through [`merge_staged`]. If that fails too (another writer added one of the keys
/// meanwhile, or PostgreSQL refuses a row), it is undone and the whole batch goes through
/// [`merge_staged`], which handles every case.
async fn merge<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    apply: &[&'r Row],
    tuples: &Tuples,
    refused: &mut Vec<Refused<'r>>,
    tried: bool,
) -> Result<Vec<Millis>, WriteError> {
    let Some(key) = table.key_index.filter(|_| !apply.is_empty()) else {
        return merge_staged(tx, table, apply, refused).await;
    };
    let checks: &[bool] = if table.fresh.guess_all_new() && !tried {
        &[false, true]
    } else {
        &[true]
    };
    for &check in checks {
        match insert_new(tx, table, key, apply, tuples, check).await {
            Ok((mut written, held)) => {
                written.extend(merge_staged(tx, table, &held, refused).await?);
                return Ok(written);
            }
            Err(e) if e.as_db_error().is_some() => {
                tracing::debug!(error = %describe(&e), check, "the batch's fast insert failed");
                // the savepoint stays, for the next way
                tx.batch_execute("ROLLBACK TO SAVEPOINT fresh").await?;
                // a key the table holds: ask first for the next batches
                if !check && e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
                    table.fresh.missed();
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    merge_staged(tx, table, apply, refused).await
}

/// The newest row of each key in `apply` (greatest timestamp, then offset), in batch order;
/// rows without a key are kept (PostgreSQL will say what is wrong with them).
fn newest_per_key<'r>(apply: &[&'r Row], key: usize) -> Vec<&'r Row> {
    let mut newest: HashMap<&str, usize> = HashMap::with_capacity(apply.len());
    let mut keep = vec![false; apply.len()];
    for (i, row) in apply.iter().enumerate() {
        match row.values.get(key) {
            Some(k) => match newest.entry(k) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(i);
                    keep[i] = true;
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let old = apply[*o.get()];
                    if (row.timestamp, row.offset) >= (old.timestamp, old.offset) {
                        keep[*o.get()] = false;
                        keep[i] = true;
                        o.insert(i);
                    }
                }
            },
            None => keep[i] = true,
        }
    }
    apply
        .iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(*r))
        .collect()
}

/// `COPY`s the newest row of each key the table does not hold into it (every key, unasked,
/// without `check`); returns their windows and the rows whose keys it holds (or that have no
/// key, or a value not encoded for binary `COPY`).
async fn insert_new<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    key: usize,
    apply: &[&'r Row],
    tuples: &Tuples,
    check: bool,
) -> Result<(Vec<Millis>, Vec<&'r Row>), tokio_postgres::Error> {
    let newest = newest_per_key(apply, key);
    let mut held = std::collections::HashSet::<String>::new();
    if check {
        let keys: Vec<&str> = newest.iter().filter_map(|r| r.values.get(key)).collect();
        let exists = tx.prepare_cached(&table.exists_sql).await?;
        held = tx
            .query(&exists, &[&keys])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
    }
    let (fresh, mut rest): (Vec<&Row>, Vec<&Row>) = newest
        .into_iter()
        .partition(|r| r.values.get(key).is_some_and(|k| !held.contains(k)));
    let fresh = match &table.binary {
        Some(_) => {
            // a row without a tuple (a value in a form not encoded here) goes the staged way
            let (fresh, odd): (Vec<&Row>, Vec<&Row>) =
                fresh.into_iter().partition(|r| tuples.of(r).is_some());
            rest.extend(odd);
            if !fresh.is_empty() {
                let statement = tx.prepare_cached(&table.insert_binary_sql).await?;
                let copy = tx.copy_in::<_, Bytes>(&statement).await?;
                pin_mut!(copy);
                for chunk in tuple_chunks(&fresh, tuples, COPY_CHUNK) {
                    copy.feed(chunk).await?;
                }
                copy.finish().await?;
            }
            fresh
        }
        None => {
            if !fresh.is_empty() {
                let statement = tx.prepare_cached(&table.insert_copy_sql).await?;
                let copy = tx.copy_in::<_, Bytes>(&statement).await?;
                pin_mut!(copy);
                for chunk in text_copy_chunks(&fresh, COPY_CHUNK) {
                    copy.feed(chunk).await?;
                }
                copy.finish().await?;
            }
            fresh
        }
    };
    let windows = fresh.iter().map(|r| window_of(table, r)).collect();
    Ok((windows, rest))
}

/// Stages `apply` with binary COPY and merges it; when PostgreSQL refuses a row, merges row
/// by row (a savepoint each) and adds the refused rows to `refused`. Returns the window of
/// every row written.
async fn merge_staged<'r>(
    tx: &Transaction<'_>,
    table: &Table,
    apply: &[&'r Row],
    refused: &mut Vec<Refused<'r>>,
) -> Result<Vec<Millis>, WriteError> {
    let mut written: Vec<Millis> = Vec::new();
    if apply.is_empty() {
        return Ok(written);
    }
    tx.batch_execute(&table.stage_sql).await?;
    let seqs: Vec<i64> = (0..apply.len() as i64).collect();
    tx.batch_execute("SAVEPOINT merge").await?;
    let bulk = async {
        let copy = tx.copy_in::<_, Bytes>(&table.copy_sql).await?;
        pin_mut!(copy);
        for chunk in copy_chunks(apply, COPY_CHUNK) {
            copy.feed(chunk).await?;
        }
        copy.finish().await?;
        tx.query(&table.merge_sql, &[]).await
    };
    match bulk.await {
        Ok(returned) => {
            written.extend(returned.iter().map(|r| r.get::<_, i64>(0)));
            tx.batch_execute("RELEASE SAVEPOINT merge").await?;
        }
        Err(e) if classify(&e) == ErrorKind::Data => {
            tracing::warn!(error = %describe(&e), rows = apply.len(), "PostgreSQL refused a row of the batch: writing it row by row");
            tx.batch_execute("ROLLBACK TO SAVEPOINT merge").await?;
            // row by row, in offset order: each row its own savepoint
            for (i, row) in apply.iter().enumerate() {
                tx.batch_execute("SAVEPOINT r").await?;
                let texts: Vec<Option<&str>> = row.values.iter().collect();
                let mut values: Vec<&(dyn ToSql + Sync)> =
                    vec![&seqs[i], &row.partition, &row.offset, &row.timestamp];
                for v in &texts {
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
                    Err(e) if classify(&e) == ErrorKind::Data => {
                        tx.batch_execute("ROLLBACK TO SAVEPOINT r").await?;
                        let code = e.code().map(|c| c.code().to_owned());
                        refused.push(Refused {
                            row,
                            code: format!(
                                "postgres.rejected:{}",
                                code.as_deref().unwrap_or("unknown")
                            ),
                            sqlstate: code,
                            message: e
                                .as_db_error()
                                .map(|d| d.message().to_owned())
                                .unwrap_or_else(|| e.to_string()),
                            counted: true,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(written)
}

/// A refused record's row in `rejects` and its dead letter in the outbox.
async fn put_refused(
    tx: &Transaction<'_>,
    sink: &SinkIdent,
    r: &Refused<'_>,
    dead: &DeadLetters<'_>,
) -> Result<(), WriteError> {
    let row = r.row;
    let window = r.row.time_problem.is_none().then(|| ts(row.window_start));
    let statement = tx
        .prepare_cached(
            "INSERT INTO rejects (sink, topic, partition, \"offset\", window_start, sqlstate, reason, record) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (sink, topic, partition, \"offset\") DO NOTHING",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &sink.id,
            &sink.topic,
            &row.partition,
            &row.offset,
            &window,
            &r.sqlstate,
            &format!("{}: {}", r.code, r.message),
            &storable(row.raw()),
        ],
    )
    .await?;
    let late_kept = r.code == "window.sealed" && sink.late_policy != LatePolicy::DeadLetter;
    if !late_kept {
        let mut dl = dead.of(&sink.topic, row, &r.code, r.message.clone());
        if row.time_problem.is_some() {
            // a broker refuses records too far in the future: the dead letter is stamped
            // when it failed; `weir.errors.timestamp` keeps the record's own time
            dl.timestamp = None;
        }
        super::outbox::put(tx, &sink.id, &sink.topic, row.partition, row.offset, &dl).await?;
    }
    Ok(())
}

/// Gives up one record PostgreSQL refused when it was written alone: moves the offsets past
/// it and keeps it in `rejects` with its dead letter in the outbox, in one transaction.
pub async fn write_unwritable(
    client: &mut Client,
    sink: &SinkIdent,
    row: &Row,
    offset: &OffsetMove,
    error: &WriteError,
    dead: &DeadLetters<'_>,
) -> Result<(), WriteError> {
    let tx = client.transaction().await?;
    let cas = tx.prepare_cached(CAS_OFFSETS_SQL).await?;
    if let Some(m) = cas_offsets(&tx, &cas, sink, std::slice::from_ref(offset)).await? {
        return Err(fenced(&tx, sink, m).await);
    }
    let sqlstate = error.sqlstate();
    let refused = Refused {
        row,
        code: format!(
            "postgres.rejected:{}",
            sqlstate.as_deref().unwrap_or("unknown")
        ),
        sqlstate: sqlstate.clone(),
        message: format!("PostgreSQL refused the record even alone: {error}"),
        counted: false,
    };
    put_refused(&tx, sink, &refused, dead).await?;
    tx.commit().await?;
    Ok(())
}

/// Moves each partition's stored offset from `expected` to `next`, every partition in one
/// statement (a batch moves each partition once).
const CAS_OFFSETS_SQL: &str = "UPDATE sink_offsets o SET next_offset = m.next, watermark = m.watermark, heartbeat_at = now(), updated_at = now() \
     FROM unnest($3::int4[], $4::int8[], $5::int8[], $6::timestamptz[]) AS m(partition, expected, next, watermark) \
     WHERE o.sink = $1 AND o.topic = $2 AND o.partition = m.partition AND o.next_offset = m.expected \
     RETURNING o.partition";

/// Moves each partition's stored offset from `expected` to `next` ([`CAS_OFFSETS_SQL`]);
/// returns the first partition that did not move (its stored offset is not where this batch
/// starts: the batch is fenced, [`fenced`] says why).
async fn cas_offsets<'m>(
    tx: &Transaction<'_>,
    statement: &Statement,
    sink: &SinkIdent,
    offsets: &'m [OffsetMove],
) -> Result<Option<&'m OffsetMove>, WriteError> {
    if offsets.is_empty() {
        return Ok(None);
    }
    let partitions: Vec<i32> = offsets.iter().map(|m| m.partition).collect();
    let expected: Vec<i64> = offsets.iter().map(|m| m.expected).collect();
    let next: Vec<i64> = offsets.iter().map(|m| m.next).collect();
    let watermarks: Vec<Option<DateTime<Utc>>> =
        offsets.iter().map(|m| m.watermark.map(ts)).collect();
    let moved: Vec<i32> = tx
        .query(
            statement,
            &[
                &sink.id,
                &sink.topic,
                &partitions,
                &expected,
                &next,
                &watermarks,
            ],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(offsets.iter().find(|m| !moved.contains(&m.partition)))
}

/// The error of a batch fenced on `m`, with the partition's stored offset (asked once nothing
/// else is in flight on the connection).
async fn fenced(tx: &Transaction<'_>, sink: &SinkIdent, m: &OffsetMove) -> WriteError {
    let stored = tx
        .query_opt(
            "SELECT next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 AND partition = $3",
            &[&sink.id, &sink.topic, &m.partition],
        )
        .await;
    match stored {
        Ok(stored) => WriteError::Fenced {
            partition: m.partition,
            stored: stored.map(|r| r.get(0)),
            expected: m.expected,
        },
        Err(e) => e.into(),
    }
}

/// The stored next offset of each partition; partitions never seen start at `low`
/// (the partition's first offset in Kafka) and get a row.
pub async fn load_offsets(
    client: &tokio_postgres::Client,
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

#[cfg(test)]
mod tests {
    use super::super::binary;
    use super::super::rows::encode_tuples;
    use super::*;

    fn row(offset: i64, timestamp: Millis, values: &[Option<&str>]) -> Row {
        Row::new((2, offset), timestamp, 0, values.iter().copied().collect())
    }

    #[test]
    fn the_binary_copy_has_postgres_framing_and_every_value() {
        let rows = [
            row(7, 1_000, &[Some("a@x"), None]),
            row(8, 2_000, &[Some("b@x"), Some("é\t")]),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let whole: Vec<u8> = copy_chunks(&refs, 1 << 20).collect::<Vec<_>>().concat();
        let mut at = &whole[..];
        let mut take = |n: usize| {
            let (a, b) = at.split_at(n);
            at = b;
            a.to_vec()
        };
        assert_eq!(take(11), b"PGCOPY\n\xff\r\n\0");
        assert_eq!(take(8), [0u8; 8]);
        for (seq, r) in rows.iter().enumerate() {
            assert_eq!(take(2), 6i16.to_be_bytes());
            assert_eq!(take(4), 8i32.to_be_bytes());
            assert_eq!(take(8), (seq as i64).to_be_bytes());
            assert_eq!(take(4), 4i32.to_be_bytes());
            assert_eq!(take(4), 2i32.to_be_bytes());
            assert_eq!(take(4), 8i32.to_be_bytes());
            assert_eq!(take(8), r.offset.to_be_bytes());
            assert_eq!(take(4), 8i32.to_be_bytes());
            assert_eq!(take(8), r.timestamp.to_be_bytes());
            for v in r.values.iter() {
                match v {
                    Some(text) => {
                        assert_eq!(take(4), (text.len() as i32).to_be_bytes());
                        assert_eq!(take(text.len()), text.as_bytes());
                    }
                    None => assert_eq!(take(4), (-1i32).to_be_bytes()),
                }
            }
        }
        assert_eq!(take(2), (-1i16).to_be_bytes());
        assert!(at.is_empty());
    }

    #[test]
    fn copies_are_cut_into_pieces_of_about_the_chunk_size_and_lose_nothing() {
        let rows: Vec<Row> = (0..100)
            .map(|i| row(i, i, &[Some(&"v".repeat(100)), Some("\\")]))
            .collect();
        let refs: Vec<&Row> = rows.iter().collect();
        for pieces in [
            copy_chunks(&refs, 1000).collect::<Vec<_>>(),
            text_copy_chunks(&refs, 1000).collect(),
        ] {
            assert!(pieces.len() > 5, "{}", pieces.len());
            assert!(pieces.iter().all(|p| p.len() < 1000 + 200));
        }
        let text: Vec<u8> = text_copy_chunks(&refs, 1000).collect::<Vec<_>>().concat();
        assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 100);
        assert_eq!(
            copy_chunks(&refs, 1000).collect::<Vec<_>>().concat(),
            copy_chunks(&refs, 1 << 20).collect::<Vec<_>>().concat()
        );
    }

    #[test]
    fn the_text_copy_escapes_what_copy_reads_as_syntax_and_marks_null() {
        let rows = [row(1, 1, &[Some("a\tb\nc\\d\re"), None, Some("")])];
        let refs: Vec<&Row> = rows.iter().collect();
        assert_eq!(
            text_copy_chunks(&refs, 1 << 20)
                .collect::<Vec<_>>()
                .concat(),
            b"a\\tb\\nc\\\\d\\re\t\\N\t\n".to_vec()
        );
    }

    #[test]
    fn rows_with_a_value_not_encoded_here_go_the_staged_way() {
        use binary::Kind;
        let kinds = [Kind::Date, Kind::Text];
        let mut rows = [
            row(1, 0, &[Some("2000-01-02"), Some("a")]),
            row(2, 0, &[Some("2000-1-2"), Some("b")]),
            row(3, 0, &[None, None]),
        ];
        let tuples = Tuples {
            buf: encode_tuples(&kinds, &mut rows),
            rows: 3,
        };
        // the odd row gets no tuple: the copy holds the first and the third
        assert_eq!(
            rows.iter()
                .map(|r| tuples.of(r).is_some())
                .collect::<Vec<_>>(),
            [true, false, true]
        );
        let encoded: Vec<&Row> = rows.iter().filter(|r| r.tuple.is_some()).collect();
        let copy: Vec<u8> = tuple_chunks(&encoded, &tuples, 1 << 20)
            .collect::<Vec<_>>()
            .concat();
        assert!(copy.starts_with(BINARY_HEADER) && copy.ends_with(BINARY_TRAILER));
        assert_eq!(
            copy.len(),
            BINARY_HEADER.len() + (2 + 8 + 5) + (2 + 4 + 4) + BINARY_TRAILER.len()
        );
    }

    #[test]
    fn values_keep_nulls_and_empty_text_apart_in_one_buffer() {
        let v: Values = [Some("a\0b"), None, Some(""), Some("é")]
            .into_iter()
            .collect();
        assert_eq!(v.len(), 4);
        assert_eq!(
            v.iter().collect::<Vec<_>>(),
            [Some("a\0b"), None, Some(""), Some("é")]
        );
        assert_eq!(
            (v.get(1), v.get(2), v.get(3), v.get(4)),
            (None, Some(""), Some("é"), None)
        );
        assert!(v.contains('\0') && !Values::from_iter([Some("x"), None::<&str>]).contains('\0'));
    }

    #[test]
    fn keys_are_guessed_new_until_a_batch_held_one_then_asked_for_a_while() {
        let g = FreshGuess::default();
        assert!(g.guess_all_new() && g.guess_all_new());
        g.missed();
        for _ in 0..FreshGuess::AFTER_A_MISS {
            assert!(!g.guess_all_new());
        }
        assert!(g.guess_all_new());
    }

    #[test]
    fn the_newest_row_of_each_key_is_kept_in_batch_order() {
        let rows = [
            row(1, 500, &[Some("a")]),
            row(2, 100, &[Some("b")]),
            row(3, 400, &[Some("a")]), // older than offset 1: dropped
            row(4, 100, &[Some("b")]), // same time, later offset: wins
            row(5, 0, &[None]),        // no key: kept for PostgreSQL to refuse
            row(6, 900, &[Some("c")]),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let kept: Vec<i64> = newest_per_key(&refs, 0).iter().map(|r| r.offset).collect();
        assert_eq!(kept, [1, 4, 5, 6]);
    }

    fn at(window_start: Millis, partition: i32, offset: i64) -> Row {
        let mut r = row(offset, window_start + 1, &[Some("k")]);
        r.window_start = window_start;
        r.partition = partition;
        r
    }

    fn sink(late_policy: LatePolicy) -> SinkIdent {
        SinkIdent {
            id: "app/users".into(),
            topic: "clean".into(),
            window_ms: 300_000,
            late_policy,
        }
    }

    #[test]
    fn records_are_sorted_into_applied_late_and_refused() {
        let mut undecodable = at(0, 0, 3);
        undecodable.undecodable = Some("record.not_clean: not a clean record".into());
        let mut nul = at(0, 0, 4);
        nul.nul = true;
        let mut timeless = at(0, 0, 5);
        timeless.time_problem = Some(("time.future", "beyond the clock".into()));
        let rows = [at(0, 0, 1), at(300_000, 1, 2), undecodable, nul, timeless];
        let mut refused = Vec::new();
        let windowed = in_time(&rows, &mut refused);
        assert_eq!(windowed.len(), 4);
        assert_eq!(refused.len(), 1);
        assert!(!refused[0].counted, "out of every window: counted nowhere");
        // the second window is sealed: its record is late
        let (tally, apply) = sort_out(
            &sink(LatePolicy::DeadLetter),
            &windowed,
            &[300_000],
            &mut refused,
        );
        assert_eq!(apply.iter().map(|r| r.offset).collect::<Vec<_>>(), [1]);
        let codes: Vec<&str> = refused.iter().map(|r| r.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "time.future",
                "window.sealed",
                "record.not_clean",
                "postgres.rejected:22021"
            ]
        );
        assert_eq!(tally[&0].records, 3);
        assert_eq!(tally[&300_000].late_dead_letter, 1);
        let (tally, apply) = sort_out(
            &sink(LatePolicy::Accept),
            &windowed,
            &[300_000],
            &mut Vec::new(),
        );
        assert_eq!(apply.len(), 2);
        assert_eq!(tally[&300_000].late_accepted, 1);
    }

    #[test]
    fn ledger_slices_cover_what_was_applied_per_window_and_partition() {
        let rows = [at(0, 0, 7), at(0, 0, 9), at(0, 1, 4), at(300_000, 0, 10)];
        let windowed: Vec<&Row> = rows.iter().collect();
        let slices = ledger_slices(&windowed, &[], LatePolicy::Drop);
        assert_eq!(
            slices.into_iter().collect::<Vec<_>>(),
            [
                ((0, 0), (7, 9, 2)),
                ((0, 1), (4, 4, 1)),
                ((300_000, 0), (10, 10, 1))
            ]
        );
        // late records not applied leave no slice; accepted ones do
        assert_eq!(
            ledger_slices(&windowed, &[300_000], LatePolicy::Drop).len(),
            2
        );
        assert_eq!(
            ledger_slices(&windowed, &[300_000], LatePolicy::Accept).len(),
            3
        );
    }
}
