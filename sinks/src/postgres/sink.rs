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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_postgres::NoTls;
use weir_topology::pipeline::SinkEncoder;
use weir_topology::{Body, Envelope, Failure, Origin};

use super::config::{LatePolicy, PostgresSinkConfig};
use super::metrics::SinkMetrics;
use super::window::{window_start, Millis, Watermarks};
use super::writer::{
    load_offsets, raw_field, write_batch, OffsetMove, Row, SinkIdent, Table, WriteError,
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
    pub bootstrap_servers: String,
    pub kafka_options: std::collections::HashMap<String, String>,
    /// PostgreSQL URL (a secret: never logged).
    pub database_url: String,
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
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkSummary {
    pub records: u64,
    pub rows_written: u64,
    pub batches: u64,
    pub fenced: u64,
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
}

fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Shared {
    /// Runs a PostgreSQL call until it succeeds (or shutdown), with backoff; degraded meanwhile.
    fn retry<T, F, Fut>(&self, what: &str, mut call: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
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
                let client = pool.get().await.map_err(|e| e.to_string())?;
                load_offsets(&client, &ident, &wanted)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
    }
}

struct SinkContext {
    shared: Arc<Shared>,
}

impl ClientContext for SinkContext {}

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
                // unflushed records are dropped: their offsets were not stored, so the next
                // owner reads them again — exactly once, not lost
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

fn pool(url: &str) -> Result<Pool, SinkError> {
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
fn row_of<M: Message>(msg: &M, table: &Table, window_ms: i64) -> Row {
    let timestamp = msg.timestamp().to_millis().unwrap_or_else(now_ms);
    let window = window_start(timestamp, window_ms);
    let payload = msg.payload().unwrap_or_default();
    // one level deep: nested values stay raw JSON, no tree is built
    let parsed = std::str::from_utf8(payload)
        .map_err(|e| format!("utf8.invalid: {e}"))
        .and_then(|text| {
            serde_json::from_str::<std::collections::HashMap<&str, &serde_json::value::RawValue>>(
                text,
            )
            .map(|m| (text, m))
            .map_err(|e| format!("json.malformed: {e}"))
        });
    let (values, undecodable) = match &parsed {
        Ok((text, record)) => {
            let get = |f: &str| raw_field(record, f);
            (
                table
                    .columns
                    .iter()
                    .map(|c| {
                        Table::value(
                            &c.field,
                            &get,
                            text,
                            msg.topic(),
                            msg.partition(),
                            msg.offset(),
                            timestamp,
                            window,
                        )
                    })
                    .collect(),
                None,
            )
        }
        Err(e) => (Vec::new(), Some(e.clone())),
    };
    Row {
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp,
        window_start: window,
        values,
        undecodable,
        key: msg.key().map(<[u8]>::to_vec),
        raw: payload.to_vec(),
    }
}

/// Runs the sink until `shutdown` is set. Blocks: run it on a thread of its own.
pub fn run(
    settings: SinkSettings,
    metrics: SinkMetrics,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> Result<SinkSummary, SinkError> {
    let cfg = settings.config.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("weir-pg")
        .enable_all()
        .build()
        .map_err(SinkError::Runtime)?;
    let pool = pool(&settings.database_url)?;
    let ident = SinkIdent {
        id: settings.sink_id(),
        topic: settings.topic.clone(),
        window_ms: cfg.window.as_millis() as i64,
        late_policy: cfg.late_policy,
    };
    let shared = Arc::new(Shared {
        rt,
        pool,
        ident: ident.clone(),
        state: Mutex::new(State::default()),
        shutdown: shutdown.clone(),
        health: health.clone(),
    });

    let table = {
        let pool = shared.pool.clone();
        let cfg = cfg.clone();
        let described = shared.retry("reading the table's columns", || {
            let pool = pool.clone();
            let cfg = cfg.clone();
            async move {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                match Table::describe(&client, &cfg).await {
                    Ok(t) => Ok(Ok(t)),
                    Err(e @ WriteError::Table { .. }) => Ok(Err(e.to_string())),
                    Err(e) => Err(e.to_string()),
                }
            }
        });
        match described {
            Some(Ok(t)) => t,
            Some(Err(e)) => return Err(SinkError::Table(e)),
            None => return Ok(SinkSummary::default()),
        }
    };

    let group = format!("{}-{}", settings.application_id, settings.node);
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", &settings.bootstrap_servers)
        .set("group.id", &group)
        .set(
            "group.instance.id",
            format!("{group}-{}", settings.instance),
        )
        .set("client.id", format!("weir-{group}"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("max.poll.interval.ms", "600000")
        .set("fetch.wait.max.ms", "50")
        // a batch at a time is enough read-ahead; librdkafka's default holds ~1 GB
        .set("queued.max.messages.kbytes", "32768")
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &settings.kafka_options {
        cc.set(k, v);
    }
    let consumer: BaseConsumer<SinkContext> = cc
        .create_with_context(SinkContext {
            shared: shared.clone(),
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

    // late records under the dead-letter policy go to the dead-letter topic
    let late_producer: Option<ThreadedProducer<DefaultProducerContext>> =
        if cfg.late_policy == LatePolicy::DeadLetter {
            Some(
                ClientConfig::new()
                    .set("bootstrap.servers", &settings.bootstrap_servers)
                    .set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set_log_level(RDKafkaLogLevel::Warning)
                    .create()
                    .map_err(|source| SinkError::Kafka {
                        what: "dead-letter producer",
                        source,
                    })?,
            )
        } else {
            None
        };
    let encoder = DeadLetterEncoder::new(&cfg.late_topic, &settings.application_id);
    let node = settings.node.clone();
    let window_ms = ident.window_ms;
    let mut send_late = |rows: &[&Row]| -> Result<(), String> {
        let Some(p) = &late_producer else {
            return Ok(());
        };
        for r in rows {
            let env = Envelope {
                origin: Origin {
                    topic: ident.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    timestamp: Some(r.timestamp),
                    key: r.key.clone(),
                    value: Some(r.raw.clone()),
                    ..Origin::default()
                },
                body: Body::Failed(Failure {
                    reasons: vec!["window.sealed".into()],
                    message: format!(
                        "the window starting {} was sealed before this record arrived",
                        chrono::DateTime::from_timestamp_millis(r.window_start)
                            .map(|d| d.to_rfc3339())
                            .unwrap_or_default()
                    ),
                    node: node.clone(),
                    ..Failure::default()
                }),
            };
            let out = encoder.encode(&env);
            let mut headers = rdkafka::message::OwnedHeaders::new();
            for (k, v) in &out.headers {
                headers = headers.insert(rdkafka::message::Header {
                    key: k,
                    value: v.as_deref(),
                });
            }
            let mut rec = BaseRecord::<[u8], [u8]>::to(&out.topic)
                .payload(&out.value)
                .headers(headers);
            if let Some(k) = &out.key {
                rec = rec.key(k);
            }
            if let Some(t) = out.timestamp {
                rec = rec.timestamp(t);
            }
            p.send(rec).map_err(|(e, _)| e.to_string())?;
        }
        p.flush(Duration::from_secs(30)).map_err(|e| e.to_string())
    };

    tracing::info!(sink = %ident.id, topic = %settings.topic, table = %table.name, "PostgreSQL sink started");
    let mut summary = SinkSummary::default();
    let batch_size = cfg.batch_size.max(1);
    let flush_interval = cfg.flush_interval.as_std();
    let idle_ms = cfg.idle_timeout.as_millis() as i64;
    let heartbeat = Duration::from_secs(1);
    loop {
        let stopping = shutdown.load(Ordering::Relaxed);
        if !stopping {
            if let Some(Ok(msg)) = consumer.poll(Duration::from_millis(50)) {
                let row = row_of(&msg, &table, window_ms);
                let mut state = shared.state.lock().unwrap();
                // a record of a partition no longer held (revoked meanwhile) is skipped
                if let Some(next) = state.next.get_mut(&row.partition) {
                    *next = row.offset + 1;
                    state
                        .watermarks
                        .observe(row.partition, row.timestamp, now_ms());
                    state.first_pending.get_or_insert_with(Instant::now);
                    state.pending.push(row);
                    summary.records += 1;
                }
            }
        }
        let mut state = shared.state.lock().unwrap();
        let due = state.pending.len() >= batch_size
            || state
                .first_pending
                .is_some_and(|t| t.elapsed() >= flush_interval)
            || state
                .last_heartbeat
                .is_none_or(|t| t.elapsed() >= heartbeat)
            || stopping;
        if due && !state.expected.is_empty() {
            let now = now_ms();
            let moves: Vec<OffsetMove> = state
                .expected
                .iter()
                .map(|(p, expected)| OffsetMove {
                    partition: *p,
                    expected: *expected,
                    next: state.next.get(p).copied().unwrap_or(*expected),
                    watermark: state.watermarks.partition(*p, now, idle_ms),
                })
                .collect();
            let rows = std::mem::take(&mut state.pending);
            state.first_pending = None;
            let started = Instant::now();
            let mut attempt = 0u32;
            let result = loop {
                let r = shared.rt.block_on(async {
                    let mut client = shared.pool.get().await.map_err(|e| e.to_string())?;
                    write_batch(&mut client, &table, &ident, &rows, &moves, &mut send_late)
                        .await
                        .map_err(|e| {
                            if e.is_transient() {
                                e.to_string()
                            } else {
                                format!("!{e}")
                            }
                        })
                });
                match r {
                    Ok(outcome) => break Ok(outcome),
                    Err(e) if e.starts_with('!') => break Err(e[1..].to_owned()),
                    Err(e) => {
                        attempt += 1;
                        health.set(Some(format!("writing a batch: {e}")));
                        metrics.degraded.set(1);
                        let wait = Duration::from_millis((200u64 << attempt.min(5)).min(5_000));
                        tracing::warn!(error = %e, attempt, rows = rows.len(), "writing a batch failed; retrying in {wait:?} with the same batch (nothing is lost)");
                        if shutdown.load(Ordering::Relaxed) && attempt >= 3 {
                            break Err(format!("giving up at shutdown: {e}"));
                        }
                        std::thread::sleep(wait);
                    }
                }
            };
            match result {
                Ok(outcome) => {
                    health.set(None);
                    metrics.degraded.set(0);
                    metrics.observe(&outcome, started.elapsed());
                    for m in &moves {
                        state.expected.insert(m.partition, m.next);
                    }
                    if let Some(w) = state.watermarks.min(now, idle_ms) {
                        metrics.watermark_lag.set((now - w) as f64 / 1000.0);
                    }
                    state.last_heartbeat = Some(Instant::now());
                    summary.rows_written += outcome.rows_written;
                    summary.batches += u64::from(!rows.is_empty());
                    // Kafka's group offsets follow, for lag tools only
                    let mut tpl = TopicPartitionList::new();
                    for m in moves.iter().filter(|m| m.next != m.expected) {
                        let _ = tpl.add_partition_offset(
                            &settings.topic,
                            m.partition,
                            Offset::Offset(m.next),
                        );
                    }
                    if tpl.count() > 0 {
                        let _ = consumer.commit(&tpl, CommitMode::Async);
                    }
                }
                Err(e) => {
                    summary.fenced += 1;
                    tracing::warn!(error = %e, "batch not written: rewinding to the offsets stored in PostgreSQL");
                    // another instance owns a partition, or shutdown: start again from the store
                    state.pending.clear();
                    let wanted: Vec<(i32, i64)> = state.expected.keys().map(|p| (*p, 0)).collect();
                    drop(state);
                    if shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(offsets) =
                        shared.load_offsets("reloading the stored offsets", &wanted)
                    {
                        let mut state = shared.state.lock().unwrap();
                        let mut seek = TopicPartitionList::new();
                        for (p, o) in offsets {
                            state.expected.insert(p, o);
                            state.next.insert(p, o);
                            let _ =
                                seek.add_partition_offset(&settings.topic, p, Offset::Offset(o));
                        }
                        let _ = consumer.seek_partitions(seek, Duration::from_secs(10));
                    }
                    continue;
                }
            }
        } else if due && state.expected.is_empty() {
            state.last_heartbeat = Some(Instant::now());
        }
        if stopping && state.pending.is_empty() {
            break;
        }
    }
    consumer.unsubscribe();
    tracing::info!(?summary, "PostgreSQL sink stopped");
    Ok(summary)
}
