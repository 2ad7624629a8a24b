//! The exactly-once Kafka → Kafka loop of a sub-topology (EOS v2, as Kafka Streams).
//!
//! Guarantee: every input record's results (output records and dead letters) and its input
//! offset are committed in one Kafka transaction, or none of them are.
//!
//! - One transactional producer per instance (`transactional.id` = application id +
//!   instance), fenced by the consumer group's metadata (KIP-447), not by partition.
//! - A consumer with `isolation.level=read_committed`, no auto commit, static membership
//!   (`group.instance.id`) so a restarted instance takes its partitions back at once.
//! - A transaction commits every `commit_interval` or `commit_max_records` records, and
//!   before partitions are revoked (in the rebalance callback).
//! - On an abortable error: abort, seek every partition back to its committed offset, go on.
//!   On a fatal error (fenced): stop and report it.
//! - Every call here blocks (librdkafka has no async transaction API): run [`run`] on a
//!   thread of its own, never on an async executor's thread.
//! - Sends are pipelined: records are enqueued as they come and flushed by the commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::metrics::Metrics;
use crate::pipeline::{Fate, OutRecord, Pipeline};
use crate::record::Origin;

/// The header that counts how often a record was replayed from the dead-letter topic.
pub const REPLAY_COUNT_HEADER: &str = "weir.replay.count";

/// Settings of one engine instance.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub application_id: String,
    /// Distinguishes processes of one application: part of the transactional id and the
    /// static group membership. Stable across restarts of the same process.
    pub instance: String,
    /// Which sub-topology this loop runs (for metric labels and ids).
    pub subtopology: usize,
    pub bootstrap_servers: String,
    /// Extra librdkafka settings for both clients.
    pub options: HashMap<String, String>,
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    /// Upper bound of a transaction's life; a crashed instance's open transaction is
    /// aborted by the broker after this (or at once when the instance comes back).
    pub transaction_timeout: Duration,
    /// Stop (after a last commit) once no record has arrived for this long; `None` runs
    /// until shut down. For batch runs and benchmarks.
    pub stop_when_idle: Option<Duration>,
}

impl EngineConfig {
    pub fn transactional_id(&self) -> String {
        format!(
            "{}-{}-{}",
            self.application_id, self.subtopology, self.instance
        )
    }
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("could not create the Kafka {what}: {source}")]
    Client {
        what: &'static str,
        source: KafkaError,
    },
    #[error("init_transactions for transactional.id \"{id}\" failed: {source}")]
    Init { id: String, source: KafkaError },
    #[error("subscribing to {topics:?} failed: {source}")]
    Subscribe {
        topics: Vec<String>,
        source: KafkaError,
    },
    #[error("fenced: another instance uses transactional.id \"{id}\" or took over the group member; this one stops ({source})")]
    Fenced { id: String, source: KafkaError },
    #[error("fatal transaction error ({during}): {source}")]
    Fatal {
        during: &'static str,
        source: KafkaError,
    },
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub records: u64,
    pub committed_transactions: u64,
    pub aborted_transactions: u64,
    /// When the first and the last record of the run were read.
    pub first_record: Option<Instant>,
    pub last_record: Option<Instant>,
}

impl RunSummary {
    /// Records per second between the first and the last record read.
    pub fn records_per_second(&self) -> Option<f64> {
        let secs = self
            .last_record?
            .duration_since(self.first_record?)
            .as_secs_f64();
        (secs > 0.0).then(|| self.records as f64 / secs)
    }
}

#[derive(Default)]
struct TxnState {
    open: bool,
    started: Option<Instant>,
    /// Next offset to read per (topic, partition): what the transaction commits.
    offsets: HashMap<(String, i32), i64>,
    records: usize,
    /// Raw record timestamps in the open transaction, for end-to-end latency.
    timestamps: Vec<i64>,
    /// A fatal error seen in a callback, for the loop to report.
    fatal: Option<EngineError>,
    /// Set when the consumer must be rewound to its committed offsets.
    rewind: bool,
    summary: RunSummary,
}

struct Shared {
    producer: ThreadedProducer<DefaultProducerContext>,
    state: Mutex<TxnState>,
    metrics: Metrics,
    config: EngineConfig,
}

/// The consumer's context: commits the open transaction before partitions are revoked and
/// turns librdkafka statistics into the consumer lag gauge.
struct EngineContext {
    shared: Arc<Shared>,
}

impl ClientContext for EngineContext {
    fn stats(&self, statistics: Statistics) {
        let sub = self.shared.config.subtopology.to_string();
        for (topic, t) in &statistics.topics {
            for (p, part) in &t.partitions {
                // offsets move through transactions, not the consumer's own commits: the
                // lag is the last stable offset less the next offset handed to the loop
                if *p < 0 || part.app_offset < 0 || part.ls_offset < 0 {
                    continue;
                }
                self.shared
                    .metrics
                    .consumer_lag
                    .with_label_values(&[&sub, topic, &p.to_string()])
                    .set((part.ls_offset - part.app_offset).max(0));
            }
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(
                partitions = tpl.count(),
                "partitions revoked: committing the open transaction first"
            );
            let mut state = self.shared.state.lock().unwrap();
            if let Err(e) = commit(&self.shared, &mut state, consumer) {
                state.fatal = Some(e);
            }
            state.offsets.clear();
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

fn client_config(cfg: &EngineConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("client.id", format!("weir-{}", cfg.transactional_id()))
        .set_log_level(RDKafkaLogLevel::Warning);
    c
}

fn producer_config(cfg: &EngineConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("transactional.id", cfg.transactional_id())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "transaction.timeout.ms",
            cfg.transaction_timeout.as_millis().to_string(),
        )
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("compression.type", "lz4");
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

fn consumer_config(cfg: &EngineConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("group.id", &cfg.application_id)
        .set("group.instance.id", cfg.transactional_id())
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("statistics.interval.ms", "1000")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "20000");
    for (k, v) in &cfg.options {
        c.set(k, v);
    }
    c
}

fn is_fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::Fenced
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
                | RDKafkaErrorCode::FencedInstanceId
        )
    )
}

/// How a failed transaction call is to be handled (librdkafka's three flags).
enum Handling {
    Retry,
    Abort,
    Fatal,
}

fn handling(e: &KafkaError) -> Handling {
    match e {
        KafkaError::Transaction(t) if t.is_fatal() => Handling::Fatal,
        KafkaError::Transaction(t) if t.txn_requires_abort() => Handling::Abort,
        KafkaError::Transaction(t) if t.is_retriable() => Handling::Retry,
        // an error with no flag set is treated as fatal
        _ => Handling::Fatal,
    }
}

fn fatal(cfg: &EngineConfig, during: &'static str, source: KafkaError) -> EngineError {
    if is_fenced(&source) {
        EngineError::Fenced {
            id: cfg.transactional_id(),
            source,
        }
    } else {
        EngineError::Fatal { during, source }
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Commits the open transaction with its input offsets; aborts it when that fails in an
/// abortable way (and marks the consumer for a rewind). Returns only fatal errors.
fn commit(
    shared: &Shared,
    state: &mut TxnState,
    consumer: &BaseConsumer<EngineContext>,
) -> Result<(), EngineError> {
    if !state.open {
        return Ok(());
    }
    let started = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &state.offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(*next))
            .expect("valid offset");
    }
    let result = (|| {
        if tpl.count() > 0 {
            // no group metadata: the consumer is not in the group, which no retry fixes
            let meta = consumer
                .group_metadata()
                .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::State))?;
            retry(|| {
                shared
                    .producer
                    .send_offsets_to_transaction(&tpl, &meta, CALL_TIMEOUT)
            })?;
        }
        retry(|| shared.producer.commit_transaction(CALL_TIMEOUT))
    })();
    match result {
        Ok(()) => {
            let m = &shared.metrics;
            m.transactions.with_label_values(&["committed"]).inc();
            m.commit_latency.observe(started.elapsed().as_secs_f64());
            m.transaction_records.observe(state.records as f64);
            let now = now_millis();
            let e2e = m.end_to_end_latency.with_label_values(&["kafka"]);
            for ts in state.timestamps.drain(..) {
                e2e.observe(((now - ts).max(0) as f64) / 1000.0);
            }
            state.summary.committed_transactions += 1;
            close(state);
            Ok(())
        }
        Err(e) => match handling(&e) {
            Handling::Fatal => {
                shared
                    .metrics
                    .transactions
                    .with_label_values(&["failed"])
                    .inc();
                Err(fatal(&shared.config, "commit", e))
            }
            Handling::Abort | Handling::Retry => {
                tracing::warn!(error = %e, "transaction failed: aborting and rewinding to the committed offsets");
                abort(shared, state)
            }
        },
    }
}

fn abort(shared: &Shared, state: &mut TxnState) -> Result<(), EngineError> {
    let r = retry(|| shared.producer.abort_transaction(CALL_TIMEOUT));
    shared
        .metrics
        .transactions
        .with_label_values(&["aborted"])
        .inc();
    state.summary.aborted_transactions += 1;
    close(state);
    state.rewind = true;
    r.map_err(|e| fatal(&shared.config, "abort", e))
}

fn close(state: &mut TxnState) {
    state.open = false;
    state.started = None;
    state.offsets.clear();
    state.records = 0;
    state.timestamps.clear();
}

/// Retries a retriable transaction call a few times.
fn retry(mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), KafkaError> {
    let mut attempt = 0;
    loop {
        match call() {
            Err(e) if matches!(handling(&e), Handling::Retry) && attempt < 5 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "retriable transaction error: retrying");
                std::thread::sleep(Duration::from_millis(100 * attempt));
            }
            other => return other,
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seeks every assigned partition back to its committed offset (or the beginning).
fn rewind(consumer: &BaseConsumer<EngineContext>) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    if assignment.count() == 0 {
        return Ok(());
    }
    let committed = consumer.committed_offsets(assignment, CALL_TIMEOUT)?;
    let mut seek = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        seek.add_partition_offset(e.topic(), e.partition(), offset)?;
    }
    for r in consumer.seek_partitions(seek, CALL_TIMEOUT)?.elements() {
        r.error()?;
    }
    Ok(())
}

fn origin_of<M: Message>(msg: &M) -> Origin {
    let replay_count = msg
        .headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == REPLAY_COUNT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
        })
        .unwrap_or(0);
    Origin {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(<[u8]>::to_vec),
        replay_count,
    }
}

/// Enqueues one record; waits for room when the local queue is full (never drops).
fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    r: &OutRecord,
) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v),
        });
    }
    let mut record = BaseRecord::<[u8], [u8]>::to(&r.topic)
        .payload(&r.value)
        .headers(headers);
    if let Some(k) = &r.key {
        record = record.key(k);
    }
    if let Some(ts) = r.timestamp {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Runs a sub-topology until `shutdown` is set or a fatal error occurs. Blocks.
pub fn run(
    mut pipeline: Pipeline,
    config: EngineConfig,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary, EngineError> {
    let id = config.transactional_id();
    let producer: ThreadedProducer<DefaultProducerContext> = producer_config(&config)
        .create()
        .map_err(|source| EngineError::Client {
            what: "producer",
            source,
        })?;
    producer
        .init_transactions(CALL_TIMEOUT)
        .map_err(|source| EngineError::Init {
            id: id.clone(),
            source,
        })?;
    let shared = Arc::new(Shared {
        producer,
        state: Mutex::new(TxnState::default()),
        metrics,
        config: config.clone(),
    });
    let consumer: BaseConsumer<EngineContext> = consumer_config(&config)
        .create_with_context(EngineContext {
            shared: shared.clone(),
        })
        .map_err(|source| EngineError::Client {
            what: "consumer",
            source,
        })?;
    let topics = pipeline.topics();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|source| EngineError::Subscribe {
            topics: topics.clone(),
            source,
        })?;
    tracing::info!(transactional_id = %id, ?topics, "exactly-once loop started");

    let mut fates: Vec<Fate> = Vec::with_capacity(4);
    let mut last_activity = Instant::now();
    let result = loop {
        let idle = config
            .stop_when_idle
            .is_some_and(|d| last_activity.elapsed() >= d);
        if idle {
            tracing::info!(
                "no records for {:?}: stopping",
                config.stop_when_idle.unwrap_or_default()
            );
        }
        if idle || shutdown.load(Ordering::Relaxed) {
            let mut state = shared.state.lock().unwrap();
            break commit(&shared, &mut state, &consumer).map(|_| state.summary);
        }
        let wait = {
            let state = shared.state.lock().unwrap();
            match state.started {
                Some(s) => config
                    .commit_interval
                    .saturating_sub(s.elapsed())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            }
        };
        // the rebalance callback may run inside poll: no lock is held here
        let polled = consumer.poll(wait);
        let mut state = shared.state.lock().unwrap();
        if let Some(e) = state.fatal.take() {
            break Err(e);
        }
        match polled {
            None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            Some(Ok(msg)) => {
                last_activity = Instant::now();
                state.summary.first_record.get_or_insert(last_activity);
                state.summary.last_record = Some(last_activity);
                if !state.open {
                    if let Err(e) = shared.producer.begin_transaction() {
                        break Err(fatal(&config, "begin", e));
                    }
                    state.open = true;
                    state.started = Some(Instant::now());
                }
                let origin = origin_of(&msg);
                let key = (origin.topic.clone(), origin.partition);
                let next = origin.offset + 1;
                if let Some(ts) = origin.timestamp {
                    state.timestamps.push(ts);
                }
                drop(msg);
                fates.clear();
                pipeline.process(origin, &mut fates);
                let mut failed = None;
                for fate in &fates {
                    if let Some(r) = &fate.record {
                        if let Err(e) = send(&shared.producer, r) {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = failed {
                    tracing::warn!(error = %e, "send failed: aborting the transaction");
                    if let Err(e) = abort(&shared, &mut state) {
                        break Err(e);
                    }
                } else {
                    state.offsets.insert(key, next);
                    state.records += 1;
                    state.summary.records += 1;
                }
            }
        }
        let due = state.open
            && (state.records >= config.commit_max_records
                || state
                    .started
                    .is_some_and(|s| s.elapsed() >= config.commit_interval));
        if due {
            if let Err(e) = commit(&shared, &mut state, &consumer) {
                break Err(e);
            }
        }
        if state.rewind {
            state.rewind = false;
            drop(state);
            if let Err(e) = rewind(&consumer) {
                tracing::warn!(error = %e, "rewind failed: retrying on the next abort");
            }
        }
    };
    consumer.unsubscribe();
    tracing::info!(?result, "exactly-once loop stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_name_application_subtopology_and_instance() {
        let cfg = EngineConfig {
            application_id: "users".into(),
            instance: "a".into(),
            subtopology: 0,
            bootstrap_servers: "x".into(),
            options: HashMap::new(),
            commit_interval: Duration::from_millis(100),
            commit_max_records: 10,
            transaction_timeout: Duration::from_secs(10),
            stop_when_idle: None,
        };
        assert_eq!(cfg.transactional_id(), "users-0-a");
    }
}
