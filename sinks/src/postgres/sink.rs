//! The running PostgreSQL sink: a consumer of the clean topic (`read_committed`) on a thread
//! of its own, batching records and writing each batch with [`write_batch`].
//!
//! Guarantee: each record of the topic is applied exactly once — its row (or reject), its
//! ledger slice and the partition's next offset commit in one PostgreSQL transaction, and on
//! assignment the consumer starts from the offsets stored there. Kafka's own offsets are
//! committed afterwards for lag tools only. When PostgreSQL is down the sink keeps its batch,
//! retries with backoff, reports itself degraded, and loses nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use weir_topology::config::KafkaSettings;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_postgres::NoTls;

use super::config::PostgresSinkConfig;
use super::metrics::SinkMetrics;
use super::outbox::{self, OutboxSettings};
use super::upstream::{UpstreamCheck, UpstreamSpec};
use super::window::{time_problem, window_start, Millis, Upstream, Watermarks};
use super::writer::{
    load_offsets, raw_field, write_batch, write_unwritable, DeadLetters, ErrorKind, OffsetMove,
    Outcome, RawRecord, Row, SinkIdent, Table, Tuples, Values, WriteError,
};
use crate::dead_letter::DeadLetterEncoder;

/// Everything the sink needs to run.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub application_id: String,
    /// The sink node's name.
    pub node: String,
    /// Stable per process: part of the static group membership.
    pub instance: String,
    pub config: PostgresSinkConfig,
    /// The clean topic the sink reads.
    pub topic: String,
    /// The cluster and every client's options.
    pub kafka: KafkaSettings,
    /// PostgreSQL URL (a secret: never logged).
    pub database_url: String,
    /// The application that writes the topic, when the topology names it: idle partitions
    /// follow the clock only once it has processed its input.
    pub upstream: Option<UpstreamSpec>,
}

impl SinkSettings {
    /// The sink's id in the tables: `application/node`.
    pub fn sink_id(&self) -> String {
        sink_id(&self.application_id, &self.node)
    }
}

/// The id of a sink in the tables.
pub fn sink_id(application_id: &str, node: &str) -> String {
    format!("{application_id}/{node}")
}

/// Whether the sink can write; read by `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl Health {
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    fn set(&self, error: Option<String>) {
        self.degraded.store(error.is_some(), Ordering::Relaxed);
        *self.last_error.lock().unwrap() = error;
    }
}

/// Why the sink could not run.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("invalid PostgreSQL URL (WEIR_DATABASE_URL or the sink's url): {0}")]
    Url(String),
    #[error("could not create the Kafka {what}: {source}")]
    Kafka {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("the table does not fit the sink: {0}")]
    Table(String),
    #[error("could not start the sink's runtime: {0}")]
    Runtime(std::io::Error),
    /// The thread that writes batches ended while the loop still had one for it (a bug).
    #[error("the PostgreSQL writer thread stopped")]
    WriterStopped,
    #[error("record {topic}/{partition}@{offset} has no possible fate: PostgreSQL refused it alone ({first}) and refused its reject too ({then})")]
    NoFate {
        topic: String,
        partition: i32,
        offset: i64,
        first: String,
        then: String,
    },
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkSummary {
    pub records: u64,
    pub rows_written: u64,
    pub batches: u64,
    pub fenced: u64,
    /// Records given up because PostgreSQL refused them alone.
    pub unwritable: u64,
}

#[derive(Default)]
struct State {
    pending: Vec<Row>,
    first_pending: Option<Instant>,
    /// The stored next offset per assigned partition (what the next batch starts from).
    expected: BTreeMap<i32, i64>,
    /// The next offset after the pending records.
    next: BTreeMap<i32, i64>,
    watermarks: Watermarks,
    last_heartbeat: Option<Instant>,
}

struct Shared {
    rt: tokio::runtime::Runtime,
    pool: Pool,
    ident: SinkIdent,
    state: Mutex<State>,
    shutdown: Arc<AtomicBool>,
    health: Arc<Health>,
    writer: WriterBusy,
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// The sink's shared parts: its PostgreSQL runtime and pool, who it is, its state.
    fn new(
        settings: &SinkSettings,
        health: Arc<Health>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, SinkError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weir-pg")
            .enable_all()
            .build()
            .map_err(SinkError::Runtime)?;
        Ok(Shared {
            rt,
            pool: pool(&settings.database_url)?,
            ident: SinkIdent {
                id: settings.sink_id(),
                topic: settings.topic.clone(),
                window_ms: settings.config.window.as_millis() as i64,
                late_policy: settings.config.late_policy,
            },
            state: Mutex::new(State::default()),
            shutdown,
            health,
            writer: WriterBusy::default(),
        })
    }
}

impl State {
    /// Whether a batch is due: enough records, the oldest waiting long enough, every
    /// partition read to its end while the writer is free (nothing is there to fill the batch:
    /// its rows go now instead of after `flush_interval`), or a heartbeat (offsets and
    /// watermarks move even with no record) a second after the last.
    fn due(
        &self,
        batch_size: usize,
        flush_interval: Duration,
        heartbeat: Duration,
        writer_free: bool,
    ) -> bool {
        self.pending.len() >= batch_size
            || (writer_free && !self.pending.is_empty() && self.watermarks.all_at_end())
            || self
                .first_pending
                .is_some_and(|t| t.elapsed() >= flush_interval)
            || self.last_heartbeat.is_none_or(|t| t.elapsed() >= heartbeat)
    }
}

impl Shared {
    /// Runs a PostgreSQL call until it succeeds (or shutdown), with backoff; degraded meanwhile.
    fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, WriteError>>,
    {
        let mut attempt = 0u32;
        loop {
            match self.rt.block_on(call()) {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!("{what}: PostgreSQL answers again");
                    }
                    self.health.set(None);
                    return Some(v);
                }
                Err(e) => {
                    attempt += 1;
                    let wait = Duration::from_millis((200u64 << attempt.min(5)).min(5_000));
                    tracing::warn!(error = %e, attempt, "{what} failed; retrying in {wait:?} (nothing is lost)");
                    self.health.set(Some(format!("{what}: {e}")));
                    if self.shutdown.load(Ordering::Relaxed) && attempt >= 3 {
                        return None;
                    }
                    std::thread::sleep(wait);
                }
            }
        }
    }
}

impl Shared {
    /// The stored next offset of each `(partition, low offset)`, retried until PostgreSQL
    /// answers (or shutdown).
    fn load_offsets(&self, what: &str, wanted: &[(i32, i64)]) -> Option<Vec<(i32, i64)>> {
        self.retry(what, || {
            let pool = self.pool.clone();
            let ident = self.ident.clone();
            let wanted = wanted.to_vec();
            async move {
                let client = pool.get().await.map_err(pool_error)?;
                Ok(load_offsets(&client, &ident, &wanted).await?)
            }
        })
    }
}

struct SinkContext {
    shared: Arc<Shared>,
}

impl ClientContext for SinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        weir_topology::kafka::log_client_error(&error, reason);
    }
}

impl ConsumerContext for SinkContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let shared = &self.shared;
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // start where PostgreSQL says, not where Kafka's group offsets say
                let topic = shared.ident.topic.clone();
                let mut wanted = Vec::new();
                for e in tpl.elements() {
                    let low = consumer
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                        .map(|(low, _)| low)
                        .unwrap_or(0);
                    wanted.push((e.partition(), low));
                }
                let Some(offsets) = shared.load_offsets("loading the stored offsets", &wanted)
                else {
                    return;
                };
                let mut assign = TopicPartitionList::new();
                let mut state = shared.state.lock().unwrap();
                let now = now_ms();
                for (p, next) in &offsets {
                    let _ = assign.add_partition_offset(&topic, *p, Offset::Offset(*next));
                    state.expected.insert(*p, *next);
                    state.next.insert(*p, *next);
                    state.watermarks.assign(*p, now);
                }
                tracing::info!(partitions = ?offsets, "partitions assigned; starting at the offsets stored in PostgreSQL");
                if let Err(e) = consumer.assign(&assign) {
                    tracing::error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // a batch being written finishes first (the next owner starts from what it
                // stores); unflushed records are dropped: their offsets were not stored, so
                // the next owner reads them again — exactly once, not lost
                shared.writer.wait_idle();
                let mut state = shared.state.lock().unwrap();
                let dropped = state.pending.len();
                state.pending.clear();
                state.first_pending = None;
                for e in tpl.elements() {
                    state.expected.remove(&e.partition());
                    state.next.remove(&e.partition());
                    state.watermarks.revoke(e.partition());
                }
                tracing::info!(partitions = tpl.count(), dropped, "partitions revoked");
                let _ = consumer.unassign();
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// The sink's connections to `url` (two: the writer's and the loop's), each with its cache
/// of prepared statements.
pub fn pool(url: &str) -> Result<Pool, SinkError> {
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| SinkError::Url(e.to_string()))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(2)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| SinkError::Url(e.to_string()))
}

/// Turns a clean-topic record into a row.
fn row_of<M: Message>(msg: &M, table: &Table, window_ms: i64, max_skew_ms: i64) -> Row {
    let timestamp = msg.timestamp().to_millis().unwrap_or_else(now_ms);
    let time_problem = time_problem(timestamp, now_ms(), max_skew_ms);
    let window = if time_problem.is_none() {
        window_start(timestamp, window_ms)
    } else {
        0
    };
    let payload = msg.payload().unwrap_or_default();
    // one level deep: nested values stay raw JSON, no tree is built
    let parsed = std::str::from_utf8(payload)
        .map_err(|e| format!("utf8.invalid: {e}"))
        .and_then(|text| {
            serde_json::from_str::<RawRecord<'_>>(text)
                .map(|m| (text, m))
                .map_err(|e| format!("json.malformed: {e}"))
        });
    let (values, undecodable) = match &parsed {
        Ok((text, record)) => {
            let get = |f: &str| raw_field(record, f);
            // the record's own text is not copied twice; the others are made, then kept in
            // one buffer of their exact size
            let made: Vec<Option<std::borrow::Cow<'_, str>>> = table
                .columns
                .iter()
                .map(|c| match c.field.as_str() {
                    "@record" => Some(std::borrow::Cow::Borrowed(*text)),
                    field => Table::value(
                        field,
                        &get,
                        text,
                        msg.topic(),
                        msg.partition(),
                        msg.offset(),
                        timestamp,
                        window,
                    )
                    .map(std::borrow::Cow::Owned),
                })
                .collect();
            let size = made.iter().flatten().map(|v| v.len()).sum();
            let mut values = Values::with_capacity(made.len(), size);
            for v in &made {
                values.push(v.as_deref());
            }
            (values, None)
        }
        Err(e) => (Values::default(), Some(e.clone())),
    };
    // the value is kept once: the `@record` column holds it when the record was read
    let record_column = table.record_column.filter(|i| values.get(*i).is_some());
    let nul = values.contains('\0');
    Row {
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp,
        window_start: window,
        nul,
        values,
        undecodable,
        time_problem,
        key: msg.key().map(<[u8]>::to_vec),
        raw: if record_column.is_some() {
            Vec::new()
        } else {
            payload.to_vec()
        },
        record_column,
        tuple: None,
    }
}

/// Runs the sink until `shutdown` is set. Blocks: run it on a thread of its own. The
/// sink's dead-letter outbox is forwarded by a thread it starts and stops.
pub fn run(
    settings: SinkSettings,
    metrics: SinkMetrics,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> Result<SinkSummary, SinkError> {
    let stop_outbox = Arc::new(AtomicBool::new(false));
    let forwarder = {
        let outbox = OutboxSettings {
            sink_id: settings.sink_id(),
            topic: settings.topic.clone(),
            kafka: settings.kafka.clone(),
            database_url: settings.database_url.clone(),
        };
        let stop = stop_outbox.clone();
        std::thread::Builder::new()
            .name(format!("weir-outbox-{}", settings.node))
            .spawn(move || outbox::run(outbox, stop))
            .map_err(SinkError::Runtime)?
    };
    let result = consume(settings, metrics, health, shutdown);
    stop_outbox.store(true, Ordering::SeqCst);
    let _ = forwarder.join();
    result
}

/// How a batch ended.
enum Written {
    Done(Outcome),
    /// Another instance owns a partition (or the sink stops): start again from the store.
    Fenced(String),
}

fn consume(
    settings: SinkSettings,
    metrics: SinkMetrics,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> Result<SinkSummary, SinkError> {
    let cfg = settings.config.clone();
    let shared = Arc::new(Shared::new(&settings, health, shutdown.clone())?);
    let ident = shared.ident.clone();

    let Some(table) = describe_table(&shared, &cfg)? else {
        return Ok(SinkSummary::default());
    };

    let consumer = subscribe(&settings, &shared)?;
    let mut upstream = upstream_check(&settings)?;
    let encoder = DeadLetterEncoder::new(&cfg.late_topic, &settings.application_id);
    let dead = DeadLetters {
        encoder: &encoder,
        node: &settings.node,
    };

    tracing::info!(sink = %ident.id, topic = %settings.topic, table = %table.name, "PostgreSQL sink started");
    let mut summary = SinkSummary::default();
    let batch_size = cfg.batch_size.max(1);
    let flush_interval = cfg.flush_interval.as_std();
    let idle_ms = cfg.idle_timeout.as_millis() as i64;
    let skew_ms = cfg.max_clock_skew.as_millis() as i64;
    let window_ms = ident.window_ms;
    let heartbeat = Duration::from_secs(1);
    // one batch at a time is written, on a thread of its own, while the loop reads and
    // decodes the next: PostgreSQL's work and the sink's overlap on two cores
    let ran = std::thread::scope(|scope| -> Result<(), SinkError> {
        let (jobs, job_rx) = mpsc::sync_channel::<Job>(1);
        let (done_tx, done) = mpsc::channel::<Done>();
        {
            let (shared, table, ident, dead, metrics) = (&shared, &table, &ident, &dead, &metrics);
            scope.spawn(move || write_jobs(shared, table, ident, dead, metrics, job_rx, done_tx));
        }
        let mut in_flight = false;
        // a written batch's rows: freed after the next batch is handed to the writer (freeing
        // a batch's ~100,000 strings takes as long as a tenth of its write)
        let mut spent: Vec<Row> = Vec::new();
        // takes the batch in flight's answer (waiting for it when `wait`) and books it
        let settle = |wait: bool,
                      summary: &mut SinkSummary,
                      spent: &mut Vec<Row>|
         -> Result<Next, SinkError> {
            let Some(mut d) = answer(&done, wait)? else {
                return Ok(Next::Waiting);
            };
            *spent = std::mem::take(&mut d.rows);
            book(&shared, &consumer, &settings.topic, &metrics, summary, d)
        };
        loop {
            let stopping = shutdown.load(Ordering::Relaxed);
            if !stopping {
                read(
                    &consumer,
                    &shared,
                    &table,
                    (window_ms, skew_ms),
                    &mut summary,
                );
            }
            if in_flight {
                match settle(false, &mut summary, &mut spent)? {
                    Next::Waiting => {}
                    Next::Go => in_flight = false,
                    Next::Stop => return Ok(()),
                }
            }
            let mut state = shared.state.lock().unwrap();
            let due = stopping || state.due(batch_size, flush_interval, heartbeat, !in_flight);
            // the next batch's rows encoded for COPY while the one in flight is written
            let mut prepared: Option<Tuples> = None;
            if due && in_flight {
                // the next batch is encoded while the one in flight is written (the lock is
                // only ever taken on this thread: in the loop and the rebalance callbacks)
                prepared = Some(Tuples::encode(&table, &mut state.pending));
                drop(state);
                // the next batch starts where the one in flight ends: wait for it
                let next = settle(true, &mut summary, &mut spent)?;
                in_flight = false;
                if next == Next::Stop {
                    return Ok(());
                }
                state = shared.state.lock().unwrap();
            }
            if due && !state.expected.is_empty() {
                let job = next_job(state, upstream.as_mut(), idle_ms, prepared.take(), &table);
                shared.writer.started();
                jobs.send(job).map_err(|_| SinkError::WriterStopped)?;
                in_flight = true;
                drop(std::mem::take(&mut spent));
                if stopping {
                    // the last batch: written before the loop ends
                    let next = settle(true, &mut summary, &mut spent)?;
                    in_flight = false;
                    if next == Next::Stop {
                        return Ok(());
                    }
                }
                state = shared.state.lock().unwrap();
            } else if due && state.expected.is_empty() {
                state.last_heartbeat = Some(Instant::now());
            }
            if stopping && state.pending.is_empty() && !in_flight {
                return Ok(());
            }
        }
    });
    consumer.unsubscribe();
    ran?;
    tracing::info!(?summary, "PostgreSQL sink stopped");
    Ok(summary)
}

/// The target table as PostgreSQL describes it, asked until it answers; `None` when the sink
/// was stopped meanwhile. A table that cannot take the mapping is an error at once.
fn describe_table(shared: &Shared, cfg: &PostgresSinkConfig) -> Result<Option<Table>, SinkError> {
    let pool = shared.pool.clone();
    let cfg = cfg.clone();
    let described = shared.retry("reading the table's columns", || {
        let pool = pool.clone();
        let cfg = cfg.clone();
        async move {
            let client = pool.get().await.map_err(pool_error)?;
            match Table::describe(&client, &cfg).await {
                Ok(t) => Ok(Ok(t)),
                // a table that does not fit is not retried
                Err(e @ WriteError::Table { .. }) => Ok(Err(e.to_string())),
                Err(e) => Err(e),
            }
        }
    });
    match described {
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(e)) => Err(SinkError::Table(e)),
        None => Ok(None),
    }
}

/// The sink's consumer (static membership; read_committed; the end of a partition reported),
/// subscribed to its topic.
fn subscribe(
    settings: &SinkSettings,
    shared: &Arc<Shared>,
) -> Result<BaseConsumer<SinkContext>, SinkError> {
    let group = format!("{}-{}", settings.application_id, settings.node);
    let cc = settings.kafka.client(&group, |c| {
        c.set("group.id", &group)
            .set(
                "group.instance.id",
                format!("{group}-{}", settings.instance),
            )
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // the end of a partition (past transaction markers) is what makes it idle
            .set("enable.partition.eof", "true")
            .set("session.timeout.ms", "10000")
            .set("max.poll.interval.ms", "600000")
            .set("fetch.wait.max.ms", "50")
            // the loop reads while a batch is written: 4 MB of read-ahead is enough (librdkafka's
            // defaults hold ~1 GB and fetch 50 MB at a time)
            .set("queued.max.messages.kbytes", "4096")
            .set("fetch.max.bytes", "4194304")
            .set("max.partition.fetch.bytes", "524288")
            // not librdkafka's 1 s pause after the local queue was full: the sink would wait for
            // records between batches
            .set("fetch.queue.backoff.ms", "10");
    });
    let consumer: BaseConsumer<SinkContext> = cc
        .create_with_context(SinkContext {
            shared: Arc::clone(shared),
        })
        .map_err(|source| SinkError::Kafka {
            what: "consumer",
            source,
        })?;
    consumer
        .subscribe(&[&settings.topic])
        .map_err(|source| SinkError::Kafka {
            what: "subscription",
            source,
        })?;
    Ok(consumer)
}

/// Reads one record, if one is ready, into the pending batch (a record of a partition no
/// longer held is skipped), or notes a partition's end.
fn read(
    consumer: &BaseConsumer<SinkContext>,
    shared: &Shared,
    table: &Table,
    (window_ms, skew_ms): (i64, i64),
    summary: &mut SinkSummary,
) {
    match consumer.poll(Duration::from_millis(50)) {
        Some(Ok(msg)) => {
            let row = row_of(&msg, table, window_ms, skew_ms);
            let mut state = shared.state.lock().unwrap();
            // a record of a partition no longer held (revoked meanwhile) is skipped
            if let Some(next) = state.next.get_mut(&row.partition) {
                *next = row.offset + 1;
                if row.time_problem.is_some() {
                    state.watermarks.touch(row.partition, now_ms());
                } else {
                    state
                        .watermarks
                        .observe(row.partition, row.timestamp, now_ms());
                }
                state.first_pending.get_or_insert_with(Instant::now);
                state.pending.push(row);
                summary.records += 1;
            }
        }
        Some(Err(KafkaError::PartitionEOF(p))) => {
            shared.state.lock().unwrap().watermarks.at_end(p);
        }
        Some(Err(e)) => tracing::debug!(error = %e, "consumer error"),
        None => {}
    }
}

/// Where each held partition's offset moves with the next batch, and its watermark: an idle
/// partition follows the clock only when nothing is upstream.
fn moves(
    state: &State,
    upstream: Option<&mut UpstreamCheck>,
    now: Millis,
    idle_ms: i64,
) -> (Upstream, Vec<OffsetMove>) {
    let quiet = match upstream {
        _ if !state.watermarks.wants_upstream(now, idle_ms) => Upstream::Busy,
        Some(check) => {
            if check.caught_up() {
                Upstream::Quiet
            } else {
                Upstream::Busy
            }
        }
        None => Upstream::Quiet,
    };
    let moves: Vec<OffsetMove> = state
        .expected
        .iter()
        .map(|(p, expected)| OffsetMove {
            partition: *p,
            expected: *expected,
            next: state.next.get(p).copied().unwrap_or(*expected),
            watermark: state.watermarks.partition(*p, now, idle_ms, quiet),
        })
        .collect();
    (quiet, moves)
}

/// The next batch for the writer: the pending rows (their tuples encoded ahead unless the
/// batch in flight was fenced and the rows dropped), each held partition's offset move and
/// watermark. The pending batch starts afresh, and the next heartbeat is a second away.
fn next_job(
    mut state: std::sync::MutexGuard<'_, State>,
    upstream: Option<&mut UpstreamCheck>,
    idle_ms: i64,
    prepared: Option<Tuples>,
    table: &Table,
) -> Job {
    let now = now_ms();
    let (quiet, moves) = moves(&state, upstream, now, idle_ms);
    let mut rows = std::mem::take(&mut state.pending);
    state.first_pending = None;
    // a heartbeat is due again a second after this batch, not after it is written
    state.last_heartbeat = Some(Instant::now());
    drop(state);
    let tuples = match prepared {
        Some(t) if t.rows() == rows.len() => t,
        _ => Tuples::encode(table, &mut rows),
    };
    Job {
        info: JobInfo {
            now,
            quiet,
            idle_ms,
            batch: !rows.is_empty(),
        },
        rows,
        tuples,
        moves,
    }
}

/// The check of the application upstream, when the topology names it.
fn upstream_check(settings: &SinkSettings) -> Result<Option<UpstreamCheck>, SinkError> {
    settings
        .upstream
        .as_ref()
        .map(|spec| {
            UpstreamCheck::new(spec.clone(), &settings.kafka).map_err(|source| SinkError::Kafka {
                what: "upstream check",
                source,
            })
        })
        .transpose()
}

/// The writer's answer for the batch in flight: waited for when `wait`, else `None` while
/// it is being written.
fn answer(done: &mpsc::Receiver<Done>, wait: bool) -> Result<Option<Done>, SinkError> {
    if wait {
        return done.recv().map(Some).map_err(|_| SinkError::WriterStopped);
    }
    match done.try_recv() {
        Ok(d) => Ok(Some(d)),
        Err(mpsc::TryRecvError::Empty) => Ok(None),
        Err(mpsc::TryRecvError::Disconnected) => Err(SinkError::WriterStopped),
    }
}

/// The writer's thread: each batch handed over is written, then answered with its result
/// and its rows (freed by the loop after it hands the next batch over).
fn write_jobs(
    shared: &Shared,
    table: &Table,
    ident: &SinkIdent,
    dead: &DeadLetters<'_>,
    metrics: &SinkMetrics,
    job_rx: mpsc::Receiver<Job>,
    done_tx: mpsc::Sender<Done>,
) {
    for job in job_rx {
        let started = Instant::now();
        let result = write(shared, table, ident, &job, dead, metrics);
        // the batch's encoded copy is not kept while the next one is made
        drop(job.tuples);
        let answered = done_tx.send(Done {
            job: job.info,
            moves: job.moves,
            rows: job.rows,
            started,
            result,
        });
        shared.writer.finished();
        if answered.is_err() {
            break;
        }
    }
}

/// A batch for the writer thread.
struct Job {
    rows: Vec<Row>,
    /// The rows encoded for binary COPY.
    tuples: Tuples,
    moves: Vec<OffsetMove>,
    info: JobInfo,
}

/// What the loop knew when it made a batch (for the watermark lag once it is written).
#[derive(Debug, Clone, Copy)]
struct JobInfo {
    now: Millis,
    quiet: Upstream,
    idle_ms: i64,
    /// The batch had rows (a heartbeat has none).
    batch: bool,
}

/// The writer thread's answer for a batch.
struct Done {
    job: JobInfo,
    moves: Vec<OffsetMove>,
    /// The batch's rows, given back to be freed by the loop.
    rows: Vec<Row>,
    started: Instant,
    result: Result<Written, SinkError>,
}

/// What the loop does after a batch's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// No answer yet.
    Waiting,
    Go,
    /// Fenced at shutdown: nothing more to write.
    Stop,
}

/// Whether a batch is being written: the revoke callback waits until none is, so the next
/// owner of a partition loads offsets that no write in flight moves after it.
#[derive(Default)]
struct WriterBusy {
    busy: Mutex<bool>,
    idle: Condvar,
}

impl WriterBusy {
    fn started(&self) {
        *self.busy.lock().unwrap() = true;
    }

    fn finished(&self) {
        *self.busy.lock().unwrap() = false;
        self.idle.notify_all();
    }

    fn wait_idle(&self) {
        let busy = self.busy.lock().unwrap();
        let _idle = self.idle.wait_while(busy, |b| *b).unwrap();
    }
}

/// Books a written batch: the stored offsets move (for partitions still held), metrics, and
/// Kafka's group offsets for lag tools. A fenced batch drops what is pending and rewinds to
/// the offsets stored in PostgreSQL.
fn book(
    shared: &Shared,
    consumer: &BaseConsumer<SinkContext>,
    topic: &str,
    metrics: &SinkMetrics,
    summary: &mut SinkSummary,
    d: Done,
) -> Result<Next, SinkError> {
    let mut state = shared.state.lock().unwrap();
    match d.result? {
        Written::Done(outcome) => {
            shared.health.set(None);
            metrics.degraded.set(0);
            metrics.observe(&outcome, d.started.elapsed());
            summary.unwritable += outcome.unwritable;
            // a partition revoked meanwhile is no longer this sink's to track
            for m in &d.moves {
                if let Some(e) = state.expected.get_mut(&m.partition) {
                    *e = m.next;
                }
            }
            let JobInfo {
                now,
                quiet,
                idle_ms,
                ..
            } = d.job;
            if let Some(w) = state.watermarks.min(now, idle_ms, quiet) {
                metrics.watermark_lag.set((now - w) as f64 / 1000.0);
            }
            summary.rows_written += outcome.rows_written;
            summary.batches += u64::from(d.job.batch);
            let mut tpl = TopicPartitionList::new();
            for m in d.moves.iter().filter(|m| m.next != m.expected) {
                if state.expected.contains_key(&m.partition) {
                    let _ = tpl.add_partition_offset(topic, m.partition, Offset::Offset(m.next));
                }
            }
            if tpl.count() > 0 {
                let _ = consumer.commit(&tpl, CommitMode::Async);
            }
            Ok(Next::Go)
        }
        Written::Fenced(e) => {
            summary.fenced += 1;
            tracing::warn!(error = %e, "batch not written: rewinding to the offsets stored in PostgreSQL");
            // another instance owns a partition, or shutdown: start again from the store
            state.pending.clear();
            state.first_pending = None;
            let wanted: Vec<(i32, i64)> = state.expected.keys().map(|p| (*p, 0)).collect();
            drop(state);
            if shared.shutdown.load(Ordering::Relaxed) {
                return Ok(Next::Stop);
            }
            if let Some(offsets) = shared.load_offsets("reloading the stored offsets", &wanted) {
                let mut state = shared.state.lock().unwrap();
                let mut seek = TopicPartitionList::new();
                for (p, o) in offsets {
                    state.expected.insert(p, o);
                    state.next.insert(p, o);
                    let _ = seek.add_partition_offset(topic, p, Offset::Offset(o));
                }
                let _ = consumer.seek_partitions(seek, Duration::from_secs(10));
            }
            Ok(Next::Go)
        }
    }
}

/// Writes a batch: retries what is transient (with the same batch), finds and gives up a
/// record PostgreSQL refuses alone, stops on what the table cannot take.
fn write(
    shared: &Shared,
    table: &Table,
    ident: &SinkIdent,
    job: &Job,
    dead: &DeadLetters<'_>,
    metrics: &SinkMetrics,
) -> Result<Written, SinkError> {
    let Job {
        rows,
        tuples,
        moves,
        ..
    } = job;
    match attempt(shared, rows.len(), || {
        shared.rt.block_on(async {
            let mut client = shared.pool.get().await.map_err(pool_error)?;
            write_batch(&mut client, table, ident, rows, tuples, moves, dead).await
        })
    }) {
        Ok(Attempt::Done(o)) => Ok(Written::Done(o)),
        Ok(Attempt::Fenced(e)) => Ok(Written::Fenced(e)),
        Ok(Attempt::Data(e)) => {
            tracing::warn!(error = %e, rows = rows.len(), "a record of the batch cannot be written: writing the batch one record at a time to find it");
            isolate(shared, table, ident, job, dead, metrics)
        }
        Err(e) => Err(e),
    }
}

/// What one write came to after its transient errors were retried.
enum Attempt {
    Done(Outcome),
    Fenced(String),
    Data(WriteError),
}

fn pool_error(e: deadpool_postgres::PoolError) -> WriteError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => WriteError::Postgres(e),
        other => WriteError::Pool(other.to_string()),
    }
}

/// Runs `call` until it succeeds or fails for a reason a retry cannot fix; degraded while
/// PostgreSQL fails. At shutdown it gives up after three tries (nothing is lost: the
/// offsets did not move).
fn attempt(
    shared: &Shared,
    rows: usize,
    mut call: impl FnMut() -> Result<Outcome, WriteError>,
) -> Result<Attempt, SinkError> {
    let mut tries = 0u32;
    loop {
        let e = match call() {
            Ok(o) => return Ok(Attempt::Done(o)),
            Err(e) => e,
        };
        match e.kind() {
            ErrorKind::Fenced => return Ok(Attempt::Fenced(e.to_string())),
            ErrorKind::Data => return Ok(Attempt::Data(e)),
            ErrorKind::Table => return Err(SinkError::Table(e.to_string())),
            ErrorKind::Transient => {}
        }
        tries += 1;
        shared.health.set(Some(format!("writing a batch: {e}")));
        let wait = Duration::from_millis((200u64 << tries.min(5)).min(5_000));
        tracing::warn!(error = %e, attempt = tries, rows, "writing a batch failed; retrying in {wait:?} with the same batch (nothing is lost)");
        if shared.shutdown.load(Ordering::Relaxed) && tries >= 3 {
            return Ok(Attempt::Fenced(format!("giving up at shutdown: {e}")));
        }
        std::thread::sleep(wait);
    }
}

/// After a data error: the batch one record at a time, each with its partition's offset
/// move; a record refused alone is given up into `rejects` and the dead-letter outbox.
fn isolate(
    shared: &Shared,
    table: &Table,
    ident: &SinkIdent,
    job: &Job,
    dead: &DeadLetters<'_>,
    metrics: &SinkMetrics,
) -> Result<Written, SinkError> {
    let Job {
        rows,
        tuples,
        moves,
        ..
    } = job;
    let mut at: BTreeMap<i32, i64> = moves.iter().map(|m| (m.partition, m.expected)).collect();
    let watermark = |p: i32| {
        moves
            .iter()
            .find(|m| m.partition == p)
            .and_then(|m| m.watermark)
    };
    let mut total = Outcome::default();
    for row in rows {
        let step = OffsetMove {
            partition: row.partition,
            expected: at.get(&row.partition).copied().unwrap_or(row.offset),
            next: row.offset + 1,
            watermark: watermark(row.partition),
        };
        let one = std::slice::from_ref(row);
        let alone = attempt(shared, 1, || {
            shared.rt.block_on(async {
                let mut client = shared.pool.get().await.map_err(pool_error)?;
                write_batch(&mut client, table, ident, one, tuples, &[step], dead).await
            })
        })?;
        match alone {
            Attempt::Done(o) => add(&mut total, &o),
            Attempt::Fenced(e) => return Ok(Written::Fenced(e)),
            Attempt::Data(first) => {
                tracing::warn!(error = %first, partition = row.partition, offset = row.offset, "PostgreSQL refuses this record alone: it goes to rejects and the dead-letter topic");
                let given_up = attempt(shared, 1, || {
                    shared.rt.block_on(async {
                        let mut client = shared.pool.get().await.map_err(pool_error)?;
                        write_unwritable(&mut client, ident, row, &step, &first, dead).await?;
                        Ok(Outcome {
                            records: 1,
                            dead_letters: 1,
                            unwritable: 1,
                            ..Outcome::default()
                        })
                    })
                })?;
                match given_up {
                    Attempt::Done(o) => {
                        metrics
                            .unwritable
                            .with_label_values(&[first.sqlstate().as_deref().unwrap_or("unknown")])
                            .inc();
                        add(&mut total, &o);
                    }
                    Attempt::Fenced(e) => return Ok(Written::Fenced(e)),
                    Attempt::Data(then) => {
                        return Err(SinkError::NoFate {
                            topic: ident.topic.clone(),
                            partition: row.partition,
                            offset: row.offset,
                            first: first.to_string(),
                            then: then.to_string(),
                        })
                    }
                }
            }
        }
        at.insert(row.partition, step.next);
    }
    // the offsets past the batch's last records (transaction markers), and the watermarks
    let rest: Vec<OffsetMove> = moves
        .iter()
        .map(|m| OffsetMove {
            expected: at.get(&m.partition).copied().unwrap_or(m.expected),
            ..*m
        })
        .collect();
    match attempt(shared, 0, || {
        shared.rt.block_on(async {
            let mut client = shared.pool.get().await.map_err(pool_error)?;
            write_batch(
                &mut client,
                table,
                ident,
                &[],
                &Tuples::default(),
                &rest,
                dead,
            )
            .await
        })
    })? {
        Attempt::Done(_) => Ok(Written::Done(total)),
        Attempt::Fenced(e) => Ok(Written::Fenced(e)),
        Attempt::Data(e) => Err(SinkError::Table(e.to_string())),
    }
}

fn add(total: &mut Outcome, o: &Outcome) {
    total.records += o.records;
    total.rows_written += o.rows_written;
    total.rejected += o.rejected;
    total.late_dead_letter += o.late_dead_letter;
    total.late_dropped += o.late_dropped;
    total.late_accepted += o.late_accepted;
    total.dead_letters += o.dead_letters;
    total.unwritable += o.unwritable;
}

#[cfg(test)]
mod tests {
    use super::super::rows::{Row, Values};
    use super::*;

    #[test]
    fn a_batch_is_due_when_full_old_or_read_to_the_end_with_the_writer_free() {
        let (size, interval, heartbeat) = (3, Duration::from_secs(60), Duration::from_secs(60));
        let mut state = State {
            last_heartbeat: Some(Instant::now()),
            ..State::default()
        };
        state.watermarks.assign(0, 0);
        state.watermarks.assign(1, 0);
        let row = |offset| Row::new((0, offset), 0, 0, Values::default());
        state.pending.push(row(0));
        state.first_pending = Some(Instant::now());
        assert!(
            !state.due(size, interval, heartbeat, true),
            "one row, young"
        );
        state.watermarks.at_end(0);
        assert!(
            !state.due(size, interval, heartbeat, true),
            "partition 1 may still fill it"
        );
        state.watermarks.at_end(1);
        assert!(
            state.due(size, interval, heartbeat, true),
            "nothing left to read"
        );
        assert!(
            !state.due(size, interval, heartbeat, false),
            "a batch is being written: the rows wait to fill the next"
        );
        state.pending.extend([row(1), row(2)]);
        assert!(state.due(size, interval, heartbeat, false), "full");
        state.pending.clear();
        state.first_pending = None;
        assert!(
            !state.due(size, interval, heartbeat, true),
            "read to the end with nothing pending: no batch"
        );
    }
}
