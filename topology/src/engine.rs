//! The exactly-once Kafka → Kafka loop (EOS v2, as Kafka Streams), shared by every job that
//! reads Kafka and writes Kafka in transactions: a sub-topology of `weir run`
//! ([`PipelineJob`]) and `weir dlq replay`.
//!
//! Guarantee: every input record's outputs and its input offset are committed in one Kafka
//! transaction, or none of them are; and every input record gets a fate — a record whose
//! output the broker refuses (too large, invalid) gets a bounded dead letter instead, so no
//! input can stall the loop.
//!
//! - One transactional producer per instance, fenced by the consumer group's metadata
//!   (KIP-447). A consumer with `isolation.level=read_committed` and no auto commit.
//! - [`InputMode::Group`]: the application's consumer group with static membership; the
//!   group's offsets go into each transaction; the open transaction commits before partitions
//!   are revoked — or aborts, when the assignment was lost (its offsets may belong to another
//!   member by now).
//! - [`InputMode::Range`]: given partitions from given offsets up to given ends, then stop;
//!   the job's outputs record its progress (no group offsets).
//! - A transaction commits every `commit_interval` or `commit_max_records` records. For a
//!   job that allows it ([`Job::overlaps_commit`]) the commit runs on a thread of its own
//!   while the loop reads and processes on: those records' outputs are held (at most
//!   `commit_max_records` of them) and sent in the next transaction once the commit is
//!   through; if it aborts they are dropped, and the rewind goes back to the aborted
//!   transaction's first offsets, which come before them. Before partitions are revoked,
//!   a commit in flight finishes first; held records of revoked partitions are dropped (the
//!   next owner reads them from the committed offsets).
//! - Each step reads what the consumer has ready (up to 512 records) and, for a job
//!   that overlaps commits, has the job make their outputs together (on several threads, for
//!   a [`PipelineJob`] with helpers); they are sent in order as before. Records in hand of a
//!   partition revoked meanwhile are dropped (the next owner reads them), and so are those
//!   of a partition an abort rewinds (read again); a record an abort drops whose partition
//!   nothing rewinds is sought back to.
//! - On an abortable error: abort, seek every partition back to the first offset the aborted
//!   transaction read — retried with backoff for a bounded time, else the loop stops with an
//!   error; it never reads on from where it was. On a fatal error (fenced): stop.
//! - Refused outputs: a send the producer refuses at once names its record; a refusal in a
//!   delivery report names its record through the delivery opaque. One refused record gets a
//!   dead letter from [`Job::refusal`] (reason `record.too_large` or `produce.refused`, the
//!   value cut to a preview with its size and SHA-256). When one aborted transaction had
//!   several refused records, each is retried in a transaction of its own first, so only the
//!   record that fails alone is turned into a dead letter. If that dead letter is refused too,
//!   the loop stops with [`EngineError::NoFate`].
//! - A job's new version ([`Job::swap_ready`], a topology reload) goes in at a transaction
//!   boundary: the loop commits everything it holds (the commit in flight, the held records,
//!   the open transaction) and swaps before it reads the next record.
//! - A consumer that hands over no record for a minute though records wait and its broker is
//!   up ([`crate::stall`]) has the loop start again from the committed offsets.
//! - Every call here blocks (librdkafka has no async transaction API): run [`run`] on a
//!   thread of its own, never on an async executor's thread.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, Consumer, ConsumerContext, ConsumerGroupMetadata, Rebalance,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::pipeline::{OutRecord, Pipeline};
pub use crate::pipeline::{Refusal, REFUSED_PREVIEW_BYTES};
use crate::record::Origin;
use crate::stall::{PartitionView, StallGuard, STALL_LIMIT};

/// The header that counts how often a record was replayed from the dead-letter topic.
pub const REPLAY_COUNT_HEADER: &str = "weir.replay.count";

/// At most this many records ready in the consumer are read and processed together.
const BATCH_MAX: usize = 512;

/// What the engine runs: turns each input record into output records.
pub trait Job: Send {
    /// The outputs of one input record (pushed to `out`, which is empty).
    fn process(&mut self, input: &BorrowedMessage<'_>, out: &mut Vec<OutRecord>);
    /// The outputs of several input records read together, one `Vec` each in their order
    /// (appended to `outs`, which is empty). Called only for a job that overlaps commits
    /// (it keeps nothing per transaction); a job may use more than one core here.
    fn process_batch(&mut self, inputs: &[BorrowedMessage<'_>], outs: &mut Vec<Vec<OutRecord>>) {
        each(inputs, outs, |input, out| self.process(input, out));
    }
    /// The dead letter that replaces a record's outputs when the broker refused one of them;
    /// `None` when the job has nowhere to send it (the engine then stops).
    fn refusal(&mut self, input: &BorrowedMessage<'_>, refusal: &Refusal) -> Option<OutRecord>;
    /// Called once the producer holds its transactional id (an earlier run's open
    /// transaction is aborted by then), before the first record; again after a restart.
    fn on_start(&mut self) -> Result<(), StartError> {
        Ok(())
    }
    /// The open transaction committed: what the job did since the last call is settled.
    fn on_commit(&mut self) {}
    /// May records be processed while the previous transaction commits (their outputs held
    /// for the next one)? Not for a job whose `on_commit`/`on_abort` track what the open
    /// transaction holds.
    fn overlaps_commit(&self) -> bool {
        false
    }
    /// The open transaction aborted: what the job did since the last commit is undone, and
    /// its records come again.
    fn on_abort(&mut self) {}
    /// A new version of the job's processing is ready (a topology reload). The loop then
    /// settles and commits everything it holds and calls [`Job::swap`] before it reads on:
    /// each transaction's records are processed wholly by one version.
    fn swap_ready(&self) -> bool {
        false
    }
    /// Puts the ready version in place; called between two transactions.
    fn swap(&mut self) {}
}

impl Refusal {
    fn new(code: RDKafkaErrorCode, topic: &str, size: usize, error: &str) -> Self {
        let reason = match code {
            RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::MessageBatchTooLarge => {
                "record.too_large"
            }
            _ => "produce.refused",
        };
        Self {
            reason,
            message: format!(
                "its output to topic \"{topic}\" ({size} bytes of key, value and headers) was refused: {error}"
            ),
            topic: topic.to_owned(),
        }
    }
}

/// True for produce errors that are the record's own fault: sending it again cannot help.
pub fn is_refusal(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::MessageBatchTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTimestamp
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::BadMessage
    )
}

/// One partition of an [`InputMode::Range`] read: from `start` up to `end` (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRange {
    pub topic: String,
    pub partition: i32,
    pub start: i64,
    pub end: i64,
}

/// How the engine reads its input.
#[derive(Debug, Clone, Default)]
pub enum InputMode {
    /// Subscribe to the pipeline's topics as a member of the consumer group named by the
    /// application id; each transaction carries the group's offsets.
    #[default]
    Group,
    /// Read these partition ranges (of one topic), then stop; no group offsets.
    Range {
        /// The transactional id: one per job, so a second run fences the first.
        transactional_id: String,
        /// The consumer's `group.id` (required by the client, never committed).
        group_id: String,
        partitions: Vec<PartitionRange>,
    },
}

/// Why a job could not start: what it reads before its first transaction, and Kafka's error.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct StartError {
    /// What the job was reading (`the replay ledger <topic>`).
    pub what: String,
    pub source: KafkaError,
}

/// Settings of one engine instance.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub application_id: String,
    /// Distinguishes processes of one application: part of the transactional id and the
    /// static group membership. Stable across restarts of the same process.
    pub instance: String,
    /// Which sub-topology this loop runs (for metric labels and ids).
    pub subtopology: usize,
    /// The cluster and every client's options (`[kafka]`, `-X`).
    pub kafka: KafkaSettings,
    pub commit_interval: Duration,
    pub commit_max_records: usize,
    /// Upper bound of a transaction's life; a crashed instance's open transaction is
    /// aborted by the broker after this (or at once when the instance comes back).
    pub transaction_timeout: Duration,
    /// Stop (after a last commit) once no record has arrived for this long; `None` runs
    /// until shut down (or, for a range, until its end). For batch runs and benchmarks.
    pub stop_when_idle: Option<Duration>,
    /// How long a rewind after an abort, or the producer's start (`init_transactions`, while
    /// the broker cannot be reached), is retried before the loop stops.
    pub rewind_limit: Duration,
    pub input: InputMode,
}

impl EngineConfig {
    /// `application-subtopology-instance`, or the range job's own id.
    pub fn transactional_id(&self) -> String {
        match &self.input {
            InputMode::Group => format!(
                "{}-{}-{}",
                self.application_id, self.subtopology, self.instance
            ),
            InputMode::Range {
                transactional_id, ..
            } => transactional_id.clone(),
        }
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
    #[error("could not rewind to the aborted transaction's first offsets within {limit:?} ({source}); stopping rather than reading on past records that were not committed")]
    Rewind { limit: Duration, source: KafkaError },
    #[error("the job could not start: {0}")]
    Start(#[from] StartError),
    #[error("the consumer handed over no record for {limit:?} though records wait and the broker is up: {partitions}")]
    Stalled { limit: Duration, partitions: String },
    #[error("record {topic}/{partition}@{offset} has no possible fate: {why}")]
    NoFate {
        topic: String,
        partition: i32,
        offset: i64,
        why: String,
    },
}

/// Counts of a finished run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunSummary {
    pub records: u64,
    pub committed_transactions: u64,
    pub aborted_transactions: u64,
    /// Time transactions took to commit, from the commit's start to its result (a commit in
    /// the background overlaps the loop's reading).
    pub commit_time: Duration,
    /// Records whose outputs were refused and replaced by a dead letter.
    pub refused: u64,
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

/// An input record: topic (index into the loop's topics), partition, offset.
type Coords = (usize, i32, i64);

#[derive(Default)]
struct TxnState {
    open: bool,
    started: Option<Instant>,
    /// Numbers transactions, so a delivery report is matched to its own transaction.
    generation: u64,
    /// Per (topic index, partition): the first offset read in this transaction and the next
    /// offset to read (what the transaction commits).
    positions: HashMap<(usize, i32), (i64, i64)>,
    /// The input records of the open transaction; their outputs carry the index here.
    inputs: Vec<Coords>,
    /// Raw record timestamps in the open transaction, for end-to-end latency.
    timestamps: Vec<i64>,
    /// A fatal error seen in a callback, for the loop to report.
    fatal: Option<EngineError>,
    /// Where to seek after an abort: the aborted transaction's first offsets.
    rewind: Vec<(usize, i32, i64)>,
    /// When the group last moved on without this member (its session timed out).
    assignment_lost: Option<Instant>,
    /// The transaction committing on its own thread, if one is.
    in_flight: Option<InFlight>,
    /// Records read while a commit was in flight: their outputs go into the next transaction.
    held: VecDeque<Held>,
    /// Partitions (topic index, partition) revoked since the loop last looked: records of
    /// them that it read before are another member's now.
    revoked: Vec<(usize, i32)>,
    summary: RunSummary,
}

/// A transaction whose commit runs on a thread of its own.
struct InFlight {
    generation: u64,
    started: Instant,
    positions: HashMap<(usize, i32), (i64, i64)>,
    inputs: Vec<Coords>,
    timestamps: Vec<i64>,
    result: Receiver<Result<(), KafkaError>>,
}

/// Outputs at least this large are not held while a commit is in flight: librdkafka may
/// refuse them at once (`message.max.bytes`, 1,000,000 by default), and a held record is no
/// longer at hand for its dead letter.
const HOLD_MAX_BYTES: usize = 256 * 1024;

/// A record processed while a commit was in flight, its outputs not sent yet.
struct Held {
    coords: Coords,
    timestamp: Option<i64>,
    outputs: Vec<OutRecord>,
}

impl TxnState {
    fn records(&self) -> usize {
        self.inputs.len()
    }
}

/// A failed delivery, as the producer's delivery callback saw it.
#[derive(Debug, Clone)]
struct Undelivered {
    opaque: usize,
    code: RDKafkaErrorCode,
    topic: String,
    size: usize,
    error: String,
}

/// The producer's context: keeps failed deliveries (rare, so a lock is no cost) for the loop
/// to learn which input record a refusal belongs to.
#[derive(Default)]
pub struct DeliveryLog {
    failed: Mutex<Vec<Undelivered>>,
}

impl ClientContext for DeliveryLog {}

impl ProducerContext for DeliveryLog {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        if let Err((e, msg)) = result {
            let size = msg.payload_len()
                + msg.key().map_or(0, <[u8]>::len)
                + msg.headers().map_or(0, |h| {
                    h.iter()
                        .map(|h| h.key.len() + h.value.map_or(0, <[u8]>::len))
                        .sum()
                });
            self.failed.lock().unwrap().push(Undelivered {
                opaque,
                code: e.rdkafka_error_code().unwrap_or(RDKafkaErrorCode::Fail),
                topic: msg.topic().to_owned(),
                size,
                error: e.to_string(),
            });
        }
    }
}

const GENERATION_SHIFT: u32 = 40;

fn opaque(generation: u64, index: usize) -> usize {
    (((generation & 0xff_ffff) as usize) << GENERATION_SHIFT) | index
}

type EngineProducer = ThreadedProducer<DeliveryLog>;

struct Shared {
    producer: EngineProducer,
    state: Mutex<TxnState>,
    metrics: Metrics,
    config: EngineConfig,
    topics: Vec<String>,
}

/// The consumer's context: settles the open transaction before partitions are revoked and
/// turns librdkafka statistics into the consumer lag gauge and the stall guard's view.
struct EngineContext {
    shared: Arc<Shared>,
    stall: Mutex<StallGuard>,
}

impl ClientContext for EngineContext {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error(&error, reason);
    }

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
        let parts = PartitionView::of(&statistics);
        let stalled = self
            .stall
            .lock()
            .unwrap()
            .observe(&parts, Instant::now(), STALL_LIMIT);
        if let Some(partitions) = stalled {
            // the loop sees it after this poll, and starts again
            let mut state = self.shared.state.lock().unwrap();
            state.fatal.get_or_insert(EngineError::Stalled {
                limit: STALL_LIMIT,
                partitions,
            });
        }
    }
}

impl ConsumerContext for EngineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut state = self.shared.state.lock().unwrap();
            let lost = consumer.assignment_lost();
            if lost {
                state.assignment_lost = Some(Instant::now());
            }
            let result = if lost {
                // the group moved on without this member: its offsets may be another
                // member's by now, so nothing of the open transaction may commit (a commit
                // already in flight finishes: the broker judges it)
                tracing::warn!(
                    partitions = tpl.count(),
                    "assignment lost: aborting the open transaction instead of committing it"
                );
                settle_in_flight(&self.shared, &mut state, true)
                    .and_then(|_| abort(&self.shared, &mut state))
                    .map(|_| ())
            } else {
                tracing::info!(
                    partitions = tpl.count(),
                    "partitions revoked: committing the open transaction first"
                );
                commit(&self.shared, &mut state, consumer).map(|_| ())
            };
            if let Err(e) = result {
                state.fatal = Some(e);
            }
            // settled either way: the loop begins a new transaction
            close(&mut state);
            // the partitions are no longer this member's: nothing to rewind or refuse there,
            // and records held from them are read by their next owner from the committed
            // offsets
            state.rewind.clear();
            state.held.retain(|h| {
                tpl.find_partition(&self.shared.topics[h.coords.0], h.coords.1)
                    .is_none()
            });
            for e in tpl.elements() {
                if let Some(t) = self.shared.topics.iter().position(|t| t == e.topic()) {
                    state.revoked.push((t, e.partition()));
                }
            }
            let _ = self
                .shared
                .producer
                .context()
                .failed
                .lock()
                .map(|mut f| f.clear());
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions assigned");
        }
    }
}

/// The engine's transactional producer settings (also the bench's pass-through's).
pub fn producer_config(cfg: &EngineConfig) -> ClientConfig {
    cfg.kafka.client(&cfg.transactional_id(), |c| {
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
            // 16 MB of records waiting for the broker at most: send waits when it is full
            .set("queue.buffering.max.kbytes", "16384")
            .set("compression.type", "lz4")
            // as Kafka's Java producer and `weir ingest`: a key lands where Kafka Streams would
            // put it, and a replayed record goes back to its original partition
            .set("partitioner", "murmur2_random");
    })
}

/// The engine's consumer settings (also the bench's pass-through's).
pub fn consumer_config(cfg: &EngineConfig) -> ClientConfig {
    cfg.kafka.client(&cfg.transactional_id(), |c| {
        c.set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("statistics.interval.ms", "1000")
            .set("fetch.wait.max.ms", "50")
            .set("queued.min.messages", "20000")
            // librdkafka waits fetch.queue.backoff.ms (1 s by default) before it fetches again
            // for a partition whose local queue was full: the loop then drains the queue and
            // polls nothing for most of a second after each commit (measured: 28,700 records/s
            // with the default, 73,000 with 10 ms, on the bench topology without processors)
            .set("fetch.queue.backoff.ms", "10")
            // read-ahead of at most 4 MB (a few thousand records: ample at 100 ms commits) and
            // fetches of at most 4 MB, 512 kB a partition: librdkafka's defaults (64 MB, 50 MB
            // and 1 MB) made most of the process's memory under load
            .set("queued.max.messages.kbytes", "4096")
            .set("fetch.max.bytes", "4194304")
            .set("max.partition.fetch.bytes", "524288");
        match &cfg.input {
            InputMode::Group => {
                c.set("group.id", &cfg.application_id)
                    .set("group.instance.id", cfg.transactional_id());
            }
            InputMode::Range { group_id, .. } => {
                // the end of each partition, past transaction markers, ends the range
                c.set("group.id", group_id)
                    .set("enable.partition.eof", "true");
            }
        }
    })
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

/// What became of the open transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Committed,
    /// Aborted: the consumer must be rewound before it reads on.
    Aborted,
}

/// Commits the open transaction with its input offsets; aborts it when that fails in an
/// abortable way (and marks the consumer for a rewind). Returns only fatal errors.
fn commit(
    shared: &Shared,
    state: &mut TxnState,
    consumer: &BaseConsumer<EngineContext>,
) -> Result<Settled, EngineError> {
    if settle_in_flight(shared, state, true)? == Some(Settled::Aborted) {
        return Ok(Settled::Aborted);
    }
    if !state.open {
        return Ok(Settled::Committed);
    }
    let started = Instant::now();
    let result = offsets_of(shared, state, consumer)
        .and_then(|offsets| commit_with(shared, offsets.as_ref().map(|(tpl, meta)| (tpl, meta))));
    let records = state.records();
    let timestamps = std::mem::take(&mut state.timestamps);
    settled(shared, state, started, records, &timestamps, result)
}

/// The offsets a transaction commits for the group (`None` for a range job, or none read).
fn offsets_of(
    shared: &Shared,
    state: &TxnState,
    consumer: &BaseConsumer<EngineContext>,
) -> Result<Option<(TopicPartitionList, ConsumerGroupMetadata)>, KafkaError> {
    if !matches!(shared.config.input, InputMode::Group) || state.positions.is_empty() {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    for ((t, partition), (_, next)) in &state.positions {
        tpl.add_partition_offset(&shared.topics[*t], *partition, Offset::Offset(*next))
            .expect("valid offset");
    }
    // no group metadata: the consumer is not in the group, which no retry fixes
    let meta = consumer
        .group_metadata()
        .ok_or(KafkaError::MetadataFetch(RDKafkaErrorCode::State))?;
    Ok(Some((tpl, meta)))
}

/// The calls that commit the open transaction (with the group's offsets).
fn commit_with(
    shared: &Shared,
    offsets: Option<(&TopicPartitionList, &ConsumerGroupMetadata)>,
) -> Result<(), KafkaError> {
    if let Some((tpl, meta)) = offsets {
        retry(|| {
            shared
                .producer
                .send_offsets_to_transaction(tpl, meta, CALL_TIMEOUT)
        })?;
    }
    wait_delivered(&shared.producer, CALL_TIMEOUT);
    retry(|| shared.producer.commit_transaction(CALL_TIMEOUT))
}

/// Waits (up to `limit`) until every record sent is delivered and reported. The commit waits
/// for that too, but librdkafka's own wait inside `commit_transaction` wakes up only about
/// every 100 ms with rust-rdkafka's event-based delivery reports: measured, it made every
/// commit take 100 ms even when the broker had acknowledged everything in 5.
pub fn wait_delivered<P: Producer<C>, C: ProducerContext>(producer: &P, limit: Duration) {
    let started = Instant::now();
    while producer.in_flight_count() > 0 && started.elapsed() < limit {
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Starts committing the open transaction on a thread of its own; the transaction moves to
/// `state.in_flight`. Falls back to committing here when no thread can be started.
fn commit_in_background(
    shared: &Arc<Shared>,
    state: &mut TxnState,
    consumer: &BaseConsumer<EngineContext>,
) -> Result<Settled, EngineError> {
    if !state.open {
        return Ok(Settled::Committed);
    }
    let offsets = match offsets_of(shared, state, consumer) {
        Ok(o) => o,
        // what cannot even start is settled here, as a commit that failed
        Err(_) => return commit(shared, state, consumer),
    };
    let (send, result) = mpsc::sync_channel(1);
    let worker = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("weir-commit".into())
        .spawn(move || {
            let r = commit_with(&worker, offsets.as_ref().map(|(tpl, meta)| (tpl, meta)));
            let _ = send.send(r);
        });
    if spawned.is_err() {
        return commit(shared, state, consumer);
    }
    state.in_flight = Some(InFlight {
        generation: state.generation,
        started: Instant::now(),
        positions: std::mem::take(&mut state.positions),
        inputs: std::mem::take(&mut state.inputs),
        timestamps: std::mem::take(&mut state.timestamps),
        result,
    });
    state.open = false;
    state.started = None;
    Ok(Settled::Committed)
}

/// Takes the result of the commit in flight, if there is one (waiting for it when `wait`):
/// `None` while it runs. An abortable failure aborts it and marks the rewind (before any
/// held record); the aborted transaction's inputs are in `state.inputs` for the caller.
fn settle_in_flight(
    shared: &Shared,
    state: &mut TxnState,
    wait: bool,
) -> Result<Option<Settled>, EngineError> {
    let Some(f) = &state.in_flight else {
        return Ok(None);
    };
    let result = if wait {
        f.result.recv().unwrap_or(Err(KafkaError::Canceled))
    } else {
        match f.result.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return Ok(None),
            Err(TryRecvError::Disconnected) => Err(KafkaError::Canceled),
        }
    };
    let f = state.in_flight.take().expect("a commit in flight");
    // the transaction is the open one again until it is settled
    state.open = true;
    state.positions = f.positions;
    state.inputs = f.inputs;
    let records = state.records();
    settled(shared, state, f.started, records, &f.timestamps, result).map(Some)
}

/// Books a commit's result: metrics and summary when it committed; an abort (and the rewind)
/// when it failed in an abortable way; the error when it is fatal.
fn settled(
    shared: &Shared,
    state: &mut TxnState,
    started: Instant,
    records: usize,
    timestamps: &[i64],
    result: Result<(), KafkaError>,
) -> Result<Settled, EngineError> {
    match result {
        Ok(()) => {
            let m = &shared.metrics;
            m.transactions.with_label_values(&["committed"]).inc();
            m.commit_latency.observe(started.elapsed().as_secs_f64());
            m.transaction_records.observe(records as f64);
            let now = now_millis();
            let e2e = m.end_to_end_latency.with_label_values(&["kafka"]);
            for ts in timestamps {
                e2e.observe(((now - ts).max(0) as f64) / 1000.0);
            }
            state.summary.committed_transactions += 1;
            state.summary.commit_time += started.elapsed();
            close(state);
            Ok(Settled::Committed)
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
                tracing::warn!(error = %e, "transaction failed: aborting and rewinding to its first offsets");
                abort(shared, state)
            }
        },
    }
}

/// Aborts the open transaction and marks its first offsets for the rewind.
fn abort(shared: &Shared, state: &mut TxnState) -> Result<Settled, EngineError> {
    if !state.open {
        return Ok(Settled::Aborted);
    }
    let r = retry(|| shared.producer.abort_transaction(CALL_TIMEOUT));
    // no transaction is open in the producer now: a second abort (the revoke callback's,
    // after a commit in flight failed and was aborted here) is no call to librdkafka, which
    // would refuse it ("Operation not valid in state Ready") as fatal
    state.open = false;
    shared
        .metrics
        .transactions
        .with_label_values(&["aborted"])
        .inc();
    state.summary.aborted_transactions += 1;
    // back to the first offset of each partition in the transaction, or of the records held
    // for the next one (they are dropped: read again after the rewind)
    let mut first: HashMap<(usize, i32), i64> = state
        .positions
        .iter()
        .map(|(k, (first, _))| (*k, *first))
        .collect();
    for h in state.held.drain(..) {
        let (t, p, o) = h.coords;
        let e = first.entry((t, p)).or_insert(o);
        *e = (*e).min(o);
    }
    state.rewind = first.into_iter().map(|((t, p), o)| (t, p, o)).collect();
    r.map_err(|e| fatal(&shared.config, "abort", e))?;
    // delivery reports of the purged messages are served before the loop reads them
    let _ = shared.producer.flush(Duration::from_secs(5));
    Ok(Settled::Aborted)
}

fn close(state: &mut TxnState) {
    state.open = false;
    state.started = None;
    state.positions.clear();
    state.inputs.clear();
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

/// Calls `attempt` until it succeeds, waiting longer after each failure (100 ms doubling up
/// to 5 s), for at most `limit` (or until `stop` is set); then returns the last error.
pub fn retry_bounded<E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    stop: &AtomicBool,
    attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    retry_while(what, limit, stop, |_| true, attempt)
}

/// [`retry_bounded`], retrying only the errors `again` accepts.
fn retry_while<E: std::fmt::Display>(
    what: &str,
    limit: Duration,
    stop: &AtomicBool,
    again: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    let deadline = Instant::now() + limit;
    let mut wait = Duration::from_millis(100);
    let mut tries = 0u32;
    loop {
        match attempt() {
            Ok(()) => {
                if tries > 0 {
                    tracing::info!(tries, "{what}: done after retrying");
                }
                return Ok(());
            }
            Err(e) => {
                tries += 1;
                if !again(&e) || Instant::now() + wait > deadline || stop.load(Ordering::Relaxed) {
                    return Err(e);
                }
                tracing::warn!(error = %e, tries, "{what} failed; retrying in {wait:?}");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Seeks each partition still assigned back to the given offset.
fn seek_back(
    consumer: &BaseConsumer<EngineContext>,
    topics: &[String],
    to: &[(usize, i32, i64)],
) -> Result<(), KafkaError> {
    let assignment = consumer.assignment()?;
    let mut seek = TopicPartitionList::new();
    for (t, p, offset) in to {
        // a partition revoked meanwhile is another member's now
        if assignment.find_partition(&topics[*t], *p).is_some() {
            seek.add_partition_offset(&topics[*t], *p, Offset::Offset(*offset))?;
        }
    }
    if seek.count() == 0 {
        return Ok(());
    }
    for r in consumer.seek_partitions(seek, CALL_TIMEOUT)?.elements() {
        r.error()?;
    }
    Ok(())
}

/// The input record's source coordinates, key, value and headers.
pub fn origin_of<M: Message>(msg: &M) -> Origin {
    let mut replay_count = 0;
    let mut headers = Vec::new();
    if let Some(h) = msg.headers() {
        headers.reserve(h.count());
        for h in h.iter() {
            if h.key == REPLAY_COUNT_HEADER {
                replay_count = h
                    .value
                    .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                    .unwrap_or(0);
            }
            headers.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
        }
    }
    Origin {
        topic: msg.topic().to_owned(),
        partition: msg.partition(),
        offset: msg.offset(),
        timestamp: msg.timestamp().to_millis(),
        key: msg.key().map(<[u8]>::to_vec),
        value: msg.payload().map(crate::record::value_copy),
        headers,
        replay_count,
    }
}

/// Enqueues one record; waits for room when the local queue is full (never drops).
fn send(producer: &EngineProducer, r: &OutRecord, opaque: usize) -> Result<(), KafkaError> {
    let mut record =
        BaseRecord::<[u8], [u8], usize>::with_opaque_to(&r.topic, opaque).payload(&r.value);
    if !r.headers.is_empty() {
        // librdkafka allocates a header list even for none: only when there are some
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        record = record.headers(headers);
    }
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

fn record_size(r: &OutRecord) -> usize {
    r.value.len()
        + r.key.as_ref().map_or(0, Vec::len)
        + r.headers
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
}

/// What the loop knows of refused records between an abort and their second reading.
#[derive(Default)]
struct Refusals {
    /// Records whose outputs the broker refused: they get a dead letter when read again.
    refused: HashMap<Coords, Refusal>,
    /// Records refused together with others in one transaction: each is tried alone first.
    suspects: HashSet<Coords>,
}

/// How one input record is handled.
struct Treatment {
    /// Its outputs are replaced by this refusal's dead letter.
    refused: Option<Refusal>,
    /// Alone in a transaction: it was refused together with others.
    alone: bool,
}

impl Treatment {
    fn normal(&self) -> bool {
        self.refused.is_none() && !self.alone
    }
}

/// The loop of one engine instance.
struct Loop<'j, J: Job> {
    job: &'j mut J,
    shared: Arc<Shared>,
    shutdown: Arc<AtomicBool>,
    refusals: Refusals,
    out: Vec<OutRecord>,
    /// Refused and tried-alone records in the open transaction: settled when it commits.
    settling: Vec<Coords>,
    /// Aborts in a row that taught nothing about refused records: the backoff grows.
    fruitless_aborts: u32,
    /// Aborts seen so far: an abort restarts the idle clock (its records are read again,
    /// and an abort can take seconds while librdkafka drains what it had sent).
    aborts_seen: u64,
    /// A range read: each partition's end and whether it was reached.
    range: HashMap<(usize, i32), (i64, bool)>,
    /// Partitions revoked during the last poll (records read of them before are dropped).
    revoked: Vec<(usize, i32)>,
    /// Partitions sought back since the batch in hand was read: its records of them are
    /// read again.
    rewound: Vec<(usize, i32)>,
    /// Aborts this loop has handled.
    aborts: u64,
}

enum Step {
    Continue,
    Stop(Result<(), EngineError>),
}

impl<J: Job> Loop<'_, J> {
    fn topic_index(&self, topic: &str) -> usize {
        self.shared
            .topics
            .iter()
            .position(|t| t == topic)
            .unwrap_or(0)
    }

    fn treatment(&self, coords: &Coords) -> Treatment {
        Treatment {
            refused: self.refusals.refused.get(coords).cloned(),
            alone: self.refusals.suspects.contains(coords),
        }
    }

    /// After an abort: which of its records did the broker refuse? One alone is refused;
    /// several are each tried alone. A refused record whose dead letter was refused too has
    /// no possible fate.
    fn learn(&mut self, state: &TxnState, aborted_generation: u64) -> Result<(), EngineError> {
        let failed: Vec<Undelivered> =
            std::mem::take(&mut *self.shared.producer.context().failed.lock().unwrap());
        let mut found: HashMap<Coords, Refusal> = HashMap::new();
        for f in failed {
            let generation = (f.opaque >> GENERATION_SHIFT) as u64;
            let index = f.opaque & ((1 << GENERATION_SHIFT) - 1);
            if generation != (aborted_generation & 0xff_ffff) || !is_refusal(f.code) {
                continue;
            }
            let Some(coords) = state.inputs.get(index).copied() else {
                continue;
            };
            found
                .entry(coords)
                .or_insert_with(|| Refusal::new(f.code, &f.topic, f.size, &f.error));
        }
        match found.len() {
            0 => self.fruitless_aborts += 1,
            1 => {
                self.fruitless_aborts = 0;
                let (coords, refusal) = found.into_iter().next().expect("one");
                if let Some(first) = self.refusals.refused.get(&coords) {
                    // refused alone, and its dead letter too
                    let (t, partition, offset) = coords;
                    return Err(EngineError::NoFate {
                        topic: self.shared.topics[t].clone(),
                        partition,
                        offset,
                        why: format!(
                            "{} — and its dead letter was refused too: {}",
                            first.message, refusal.message
                        ),
                    });
                }
                tracing::warn!(reason = refusal.reason, message = %refusal.message, partition = coords.1, offset = coords.2, "a record's output was refused: it becomes a dead letter");
                self.refusals.suspects.remove(&coords);
                self.refusals.refused.insert(coords, refusal);
            }
            n => {
                // one refused batch fails every record in it: which one is at fault shows
                // when each goes alone
                self.fruitless_aborts = 0;
                tracing::warn!(
                    records = n,
                    "several records' outputs were refused together: each is retried alone"
                );
                self.refusals.suspects.extend(found.into_keys());
            }
        }
        Ok(())
    }

    /// Settles everything: the commit in flight, the held records (sent in a transaction
    /// of their own) and the open transaction — committed, or aborted and rewound.
    fn commit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
    ) -> Result<Settled, EngineError> {
        if self.settle(consumer, state, true)? == Some(Settled::Aborted)
            || self.flush_held(consumer, state)? == Settled::Aborted
        {
            return Ok(Settled::Aborted);
        }
        let generation = state.generation;
        let settled = commit(&self.shared, state, consumer)?;
        if settled == Settled::Aborted {
            self.after_abort(consumer, state, generation)?;
        } else {
            self.after_commit();
        }
        Ok(settled)
    }

    /// A commit is due: in the background when the job allows, else here.
    fn commit_due(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
    ) -> Result<(), EngineError> {
        if self.job.overlaps_commit() {
            let generation = state.generation;
            if commit_in_background(&self.shared, state, consumer)? == Settled::Aborted {
                self.after_abort(consumer, state, generation)?;
            }
            Ok(())
        } else {
            self.commit(consumer, state).map(|_| ())
        }
    }

    /// Takes the result of the commit in flight (waiting for it when `wait`) and does what
    /// follows: after a commit, the job's and the refusals' bookkeeping; after an abort,
    /// learn and rewind. `None` while it runs, or when none is in flight.
    fn settle(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
        wait: bool,
    ) -> Result<Option<Settled>, EngineError> {
        let Some(generation) = state.in_flight.as_ref().map(|f| f.generation) else {
            return Ok(None);
        };
        let settled = settle_in_flight(&self.shared, state, wait)?;
        match settled {
            Some(Settled::Committed) => self.after_commit(),
            Some(Settled::Aborted) => self.after_abort(consumer, state, generation)?,
            None => {}
        }
        Ok(settled)
    }

    fn after_commit(&mut self) {
        self.fruitless_aborts = 0;
        self.job.on_commit();
        // the refused and the tried-alone records of this transaction have their fate
        for c in self.settling.drain(..) {
            self.refusals.refused.remove(&c);
            self.refusals.suspects.remove(&c);
        }
    }

    /// Sends the held records' outputs in the open transaction (beginning one). Stops at an
    /// abort (the rest were dropped by it, and are read again after the rewind).
    fn flush_held(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
    ) -> Result<Settled, EngineError> {
        let normal = Treatment {
            refused: None,
            alone: false,
        };
        while let Some(h) = state.held.pop_front() {
            self.out = h.outputs;
            if !self.emit(consumer, state, h.coords, h.timestamp, &normal, None)? {
                return Ok(Settled::Aborted);
            }
        }
        Ok(Settled::Committed)
    }

    fn abort(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
    ) -> Result<(), EngineError> {
        let generation = state.generation;
        abort(&self.shared, state)?;
        self.after_abort(consumer, state, generation)
    }

    fn after_abort(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
        generation: u64,
    ) -> Result<(), EngineError> {
        self.aborts += 1;
        self.settling.clear();
        self.job.on_abort();
        let learned = self.learn(state, generation);
        close(state);
        learned?;
        self.rewind(consumer, state)?;
        if self.fruitless_aborts > 0 {
            let wait = Duration::from_millis(100u64 << self.fruitless_aborts.min(7));
            tracing::warn!("transaction aborted; reading again from its first offsets in {wait:?}");
            std::thread::sleep(wait);
        }
        Ok(())
    }

    /// Seeks back to the aborted transaction's first offsets; never reads on without.
    fn rewind(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
    ) -> Result<(), EngineError> {
        let to = std::mem::take(&mut state.rewind);
        if to.is_empty() {
            return Ok(());
        }
        tracing::debug!(?to, "rewinding");
        for (t, p, _) in &to {
            if let Some((_, done)) = self.range.get_mut(&(*t, *p)) {
                *done = false;
            }
            self.rewound.push((*t, *p));
        }
        let limit = self.shared.config.rewind_limit;
        retry_bounded("rewinding after an abort", limit, &self.shutdown, || {
            seek_back(consumer, &self.shared.topics, &to)
        })
        .map_err(|source| EngineError::Rewind { limit, source })
    }

    fn begin(&mut self, state: &mut TxnState) -> Result<(), EngineError> {
        if !state.open {
            self.shared
                .producer
                .begin_transaction()
                .map_err(|e| fatal(&self.shared.config, "begin", e))?;
            state.open = true;
            state.started = Some(Instant::now());
            state.generation += 1;
        }
        Ok(())
    }

    /// Processes records read together, in order: their outputs made at once by the job
    /// when it allows that ([`Job::process_batch`]), else one by one. A record whose
    /// partition an abort rewound is dropped (read again); one that an abort dropped while
    /// its partition was not rewound (none of its partition's records was in the aborted
    /// transaction or held) has its partition sought back to it: no record is left behind.
    fn records(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        batch: Vec<BorrowedMessage<'_>>,
        read_at: Instant,
    ) -> Result<(), EngineError> {
        let mut outputs = Vec::new();
        if batch.len() > 1 {
            self.job.process_batch(&batch, &mut outputs);
        }
        let mut outputs = outputs.into_iter();
        self.rewound.clear();
        for msg in &batch {
            let made = outputs.next();
            let (t, p) = (self.topic_index(msg.topic()), msg.partition());
            if self.rewound.contains(&(t, p)) {
                continue;
            }
            let aborts = self.aborts;
            self.record(consumer, msg, read_at, made)?;
            if self.aborts != aborts && !self.rewound.contains(&(t, p)) {
                // dropped by the abort, and nothing rewinds its partition: back to it
                let shared = self.shared.clone();
                let mut state = shared.state.lock().unwrap();
                state.rewind = vec![(t, p, msg.offset())];
                self.rewind(consumer, &mut state)?;
            }
        }
        Ok(())
    }

    /// Processes one input record inside the open transaction — or, while a commit is in
    /// flight, holds its outputs for the next one.
    fn record(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        msg: &BorrowedMessage<'_>,
        read_at: Instant,
        mut ready: Option<Vec<OutRecord>>,
    ) -> Result<(), EngineError> {
        let coords = (self.topic_index(msg.topic()), msg.partition(), msg.offset());
        let treatment = self.treatment(&coords);
        let shared = self.shared.clone();
        let mut state = shared.state.lock().unwrap();
        state.summary.first_record.get_or_insert(read_at);
        state.summary.last_record = Some(read_at);
        // outputs made while a commit was in flight that could not be held
        let mut made: Option<Vec<OutRecord>> = None;
        if state.in_flight.is_some() {
            if treatment.normal() && state.held.len() < shared.config.commit_max_records.max(1) {
                match ready.take() {
                    Some(outputs) => self.out = outputs,
                    None => {
                        self.out.clear();
                        self.job.process(msg, &mut self.out);
                    }
                }
                // an output the producer may refuse at once is sent while the record is at
                // hand, so its dead letter needs no abort: not held
                if self.out.iter().all(|r| record_size(r) < HOLD_MAX_BYTES) {
                    state.held.push_back(Held {
                        coords,
                        timestamp: msg.timestamp().to_millis(),
                        outputs: std::mem::take(&mut self.out),
                    });
                    return Ok(());
                }
                made = Some(std::mem::take(&mut self.out));
            }
            // held enough, or a record to be treated apart: the commit finishes first; if
            // it aborts, this record comes again after the rewind
            if self.settle(consumer, &mut state, true)? == Some(Settled::Aborted) {
                return Ok(());
            }
        }
        if self.flush_held(consumer, &mut state)? == Settled::Aborted {
            return Ok(());
        }
        if treatment.alone && state.records() > 0 {
            // what came before it commits first; if that aborts, this record comes again
            if self.commit(consumer, &mut state)? == Settled::Aborted {
                return Ok(());
            }
        }
        self.out.clear();
        match (&treatment.refused, made.or(ready)) {
            (Some(r), _) => {
                let dl = self.refusal_dead_letter(msg, coords, r)?;
                self.out.push(dl);
            }
            (None, Some(outputs)) => self.out = outputs,
            (None, None) => self.job.process(msg, &mut self.out),
        }
        let timestamp = msg.timestamp().to_millis();
        if self.emit(
            consumer,
            &mut state,
            coords,
            timestamp,
            &treatment,
            Some(msg),
        )? && treatment.alone
        {
            // tried alone: if it is refused now, the abort names it
            self.commit(consumer, &mut state)?;
        }
        Ok(())
    }

    /// Sends one input record's outputs (in `self.out`, emptied when they are sent) in the
    /// open transaction (beginning one) and books its offset. False when that aborted the
    /// transaction (a refused output of a record partly sent; without `msg` — a held record
    /// — any refused output): the record is read again after the rewind.
    fn emit(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        state: &mut TxnState,
        coords: Coords,
        timestamp: Option<i64>,
        treatment: &Treatment,
        msg: Option<&BorrowedMessage<'_>>,
    ) -> Result<bool, EngineError> {
        let shared = self.shared.clone();
        self.begin(state)?;
        let refused = treatment.refused.is_some();
        let index = state.inputs.len();
        let tag = opaque(state.generation, index);
        state.inputs.push(coords);
        // booked before its outputs go out: an abort on the way rewinds to it too
        let pos = state
            .positions
            .entry((coords.0, coords.1))
            .or_insert((coords.2, coords.2 + 1));
        pos.1 = coords.2 + 1;
        let mut replaced = refused;
        let mut sent = 0;
        while sent < self.out.len() {
            let r = &self.out[sent];
            match send(&shared.producer, r, tag) {
                Ok(()) => sent += 1,
                Err(e) => {
                    let code = e.rdkafka_error_code();
                    let refusal = code
                        .filter(|c| is_refusal(*c))
                        .map(|c| Refusal::new(c, &r.topic, record_size(r), &e.to_string()));
                    match (refusal, msg) {
                        (Some(why), _) if refused => {
                            return Err(self.no_fate(coords, &why.message));
                        }
                        (Some(why), Some(msg)) if sent == 0 => {
                            // nothing of this record is in the transaction yet: its dead
                            // letter takes the place of all its outputs
                            tracing::warn!(reason = why.reason, message = %why.message, partition = coords.1, offset = coords.2, "a record's output was refused: it becomes a dead letter");
                            let dl = self.refusal_dead_letter(msg, coords, &why)?;
                            if let Err(e) = send(&shared.producer, &dl, tag) {
                                return Err(self.no_fate(
                                    coords,
                                    &format!(
                                        "{} — and its dead letter was refused too: {e}",
                                        why.message
                                    ),
                                ));
                            }
                            self.out.clear();
                            replaced = true;
                            break;
                        }
                        (Some(why), _) => {
                            // part of it is in the transaction (or it was held and is not
                            // at hand): abort, and give it its dead letter when it is read
                            // again
                            self.abort(consumer, state)?;
                            self.refusals.refused.insert(coords, why);
                            return Ok(false);
                        }
                        (None, _) => {
                            tracing::warn!(error = %e, "send failed: aborting the transaction");
                            self.abort(consumer, state)?;
                            return Ok(false);
                        }
                    }
                }
            }
        }
        if replaced {
            state.summary.refused += 1;
        }
        if !treatment.normal() {
            self.settling.push(coords);
        }
        if let Some(ts) = timestamp {
            state.timestamps.push(ts);
        }
        state.summary.records += 1;
        // the producer has its own copies: the buffers serve the next records' outputs
        for r in self.out.drain(..) {
            crate::record::give_back(r.value);
        }
        Ok(true)
    }

    fn refusal_dead_letter(
        &mut self,
        msg: &BorrowedMessage<'_>,
        coords: Coords,
        refusal: &Refusal,
    ) -> Result<OutRecord, EngineError> {
        self.shared
            .metrics
            .dead_letters
            .with_label_values(&[refusal.reason])
            .inc();
        self.job.refusal(msg, refusal).ok_or_else(|| {
            self.no_fate(
                coords,
                &format!("{} — and the job has no dead-letter topic", refusal.message),
            )
        })
    }

    fn no_fate(&self, coords: Coords, why: &str) -> EngineError {
        EngineError::NoFate {
            topic: self.shared.topics[coords.0].clone(),
            partition: coords.1,
            offset: coords.2,
            why: why.to_owned(),
        }
    }

    /// A range read: true once every partition has reached its end.
    fn range_done(&self) -> bool {
        matches!(self.shared.config.input, InputMode::Range { .. })
            && self.range.values().all(|(_, done)| *done)
    }

    /// A range read: marks a partition done at its end; false for a record past the end
    /// (not this run's to process).
    fn in_range(&mut self, topic: usize, partition: i32, offset: Option<i64>) -> bool {
        let Some((end, done)) = self.range.get_mut(&(topic, partition)) else {
            return true;
        };
        match offset {
            Some(o) if o + 1 >= *end => {
                *done = true;
                o < *end
            }
            Some(_) => true,
            None => {
                *done = true;
                true
            }
        }
    }

    /// One poll: a record to process, or `None` (nothing ready, the end of a partition, a
    /// consumer error, a record past a range's end). Partitions revoked inside the poll are
    /// added to `self.revoked`.
    fn poll<'c>(
        &mut self,
        consumer: &'c BaseConsumer<EngineContext>,
        wait: Duration,
    ) -> Result<Option<BorrowedMessage<'c>>, EngineError> {
        // the rebalance callback may run inside poll: no lock is held here
        let polled = consumer.poll(wait);
        {
            let mut state = self.shared.state.lock().unwrap();
            if let Some(e) = state.fatal.take() {
                return Err(e);
            }
            // partitions revoked inside this poll: what was read of them before is another
            // member's now (the next owner reads it from the committed offsets)
            self.revoked.append(&mut state.revoked);
        }
        match polled {
            None => {}
            Some(Err(KafkaError::PartitionEOF(p))) => {
                // the end of the log, past any transaction markers: a range is read
                for ((_, partition), (_, done)) in self.range.iter_mut() {
                    if *partition == p {
                        *done = true;
                    }
                }
            }
            Some(Err(e)) if e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId) => {
                return Err(fatal(&self.shared.config, "poll", e));
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            Some(Ok(msg)) => {
                let (t, p) = (self.topic_index(msg.topic()), msg.partition());
                if self.in_range(t, p, Some(msg.offset())) {
                    return Ok(Some(msg));
                }
            }
        }
        Ok(None)
    }

    fn step(
        &mut self,
        consumer: &BaseConsumer<EngineContext>,
        last_activity: &mut Instant,
    ) -> Step {
        if self.job.swap_ready() {
            let shared = self.shared.clone();
            let mut state = shared.state.lock().unwrap();
            // what aborts here is read again, by the new version
            if let Err(e) = self.commit(consumer, &mut state) {
                return Step::Stop(Err(e));
            }
            self.job.swap();
            tracing::info!(
                transactions = state.summary.committed_transactions,
                "a new version of the processors runs from the next transaction"
            );
        }
        let config = &self.shared.config;
        let idle = config
            .stop_when_idle
            .is_some_and(|d| last_activity.elapsed() >= d);
        let range_end = self.range_done();
        if idle {
            tracing::info!(
                "no records for {:?}: stopping",
                config.stop_when_idle.unwrap_or_default()
            );
        }
        if idle || range_end || self.shutdown.load(Ordering::Relaxed) {
            let shared = self.shared.clone();
            let mut state = shared.state.lock().unwrap();
            // what aborts here is read again by the next run
            return Step::Stop(self.commit(consumer, &mut state).map(|_| ()));
        }
        let wait = {
            let state = self.shared.state.lock().unwrap();
            match state.started {
                // a commit in flight is looked at again soon
                _ if state.in_flight.is_some() => Duration::from_millis(1),
                Some(s) => config
                    .commit_interval
                    .saturating_sub(s.elapsed())
                    .min(Duration::from_millis(100)),
                None => Duration::from_millis(100),
            }
        };
        let first = match self.poll(consumer, wait) {
            Ok(m) => m,
            Err(e) => return Step::Stop(Err(e)),
        };
        if let Some(first) = first {
            // what else the consumer has ready, for a job whose records may be processed
            // together (it keeps nothing per transaction)
            self.revoked.clear();
            let mut batch = vec![first];
            if self.job.overlaps_commit() {
                let bound = BATCH_MAX.min(self.shared.config.commit_max_records.max(1));
                while batch.len() < bound {
                    let next = match self.poll(consumer, Duration::ZERO) {
                        Ok(m) => m,
                        Err(e) => return Step::Stop(Err(e)),
                    };
                    if !self.revoked.is_empty() {
                        // read before its partition was revoked: another member's now (the
                        // next owner reads it from the committed offsets)
                        let revoked = std::mem::take(&mut self.revoked);
                        batch.retain(|m| {
                            !revoked.contains(&(self.topic_index(m.topic()), m.partition()))
                        });
                    }
                    match next {
                        Some(m) => batch.push(m),
                        None => break,
                    }
                }
            }
            if let Err(e) = self.records(consumer, batch, Instant::now()) {
                return Step::Stop(Err(e));
            }
            // idle is time with no records, not time spent on them (a batch of records
            // retried alone, each in a transaction of its own, can take seconds)
            *last_activity = Instant::now();
        }
        let shared = self.shared.clone();
        let mut state = shared.state.lock().unwrap();
        // a commit that is through: the held records go out in the next transaction
        let settled = match self.settle(consumer, &mut state, false) {
            Ok(s) => s,
            Err(e) => return Step::Stop(Err(e)),
        };
        if settled != Some(Settled::Aborted) && state.in_flight.is_none() {
            if let Err(e) = self.flush_held(consumer, &mut state) {
                return Step::Stop(Err(e));
            }
        }
        let due = state.open
            && (state.records() >= shared.config.commit_max_records
                || state
                    .started
                    .is_some_and(|s| s.elapsed() >= shared.config.commit_interval));
        if due {
            if let Err(e) = self.commit_due(consumer, &mut state) {
                return Step::Stop(Err(e));
            }
        }
        if state.summary.aborted_transactions != self.aborts_seen {
            // not idle: what the abort dropped is to be read again
            self.aborts_seen = state.summary.aborted_transactions;
            *last_activity = Instant::now();
        }
        Step::Continue
    }
}

/// A sub-topology of a topology as an engine job: each record through the [`Pipeline`],
/// the topic sinks' records as outputs. With helpers (more copies of the pipeline), the
/// records read together are split between this thread and one more thread per helper.
pub struct PipelineJob {
    main: Worker,
    helpers: Vec<Worker>,
    next: Swapper,
}

/// Hands a [`PipelineJob`] a new version of its pipelines from another thread (a topology
/// reload); the loop swaps them in at its next transaction boundary.
#[derive(Clone, Default)]
pub struct Swapper {
    ready: Arc<AtomicBool>,
    next: Arc<Mutex<Option<Vec<Pipeline>>>>,
    /// How many versions the loop has put in place.
    applied: Arc<std::sync::atomic::AtomicU64>,
}

impl Swapper {
    /// Offers a new version: the first pipeline for the loop's thread, one more per helper
    /// (a shorter list leaves fewer helpers). Replaces a version offered and not yet taken.
    pub fn offer(&self, pipelines: Vec<Pipeline>) {
        *self.next.lock().unwrap() = Some(pipelines);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// How many offered versions the loop has put in place so far.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// True when both hand versions to the same job.
    pub fn same(&self, other: &Swapper) -> bool {
        Arc::ptr_eq(&self.next, &other.next)
    }

    /// True while an offered version waits for a transaction boundary.
    pub fn pending(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }
}

/// A copy of the pipeline.
struct Worker {
    pipeline: Pipeline,
}

impl Worker {
    fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }

    fn process(&mut self, input: &BorrowedMessage<'_>, out: &mut Vec<OutRecord>) {
        self.pipeline.process_into(origin_of(input), out);
    }

    /// Through the pipeline a few records at a time, node by node
    /// ([`Pipeline::process_batch_into`]).
    fn process_all(&mut self, inputs: &[BorrowedMessage<'_>], outs: &mut Vec<Vec<OutRecord>>) {
        outs.reserve(inputs.len());
        for chunk in inputs.chunks(crate::pipeline::NODE_BATCH) {
            self.pipeline
                .process_batch_into(chunk.iter().map(origin_of), outs);
        }
    }
}

/// Each input's outputs, made by `process`, one `Vec` each in order.
fn each(
    inputs: &[BorrowedMessage<'_>],
    outs: &mut Vec<Vec<OutRecord>>,
    mut process: impl FnMut(&BorrowedMessage<'_>, &mut Vec<OutRecord>),
) {
    outs.reserve(inputs.len());
    for input in inputs {
        let mut out = Vec::with_capacity(1);
        process(input, &mut out);
        outs.push(out);
    }
}

/// Fewer records than this are processed on the loop's thread alone: a thread costs more.
const PARALLEL_MIN: usize = 64;

impl PipelineJob {
    pub fn new(pipeline: Pipeline) -> Self {
        Self {
            main: Worker::new(pipeline),
            helpers: Vec::new(),
            next: Swapper::default(),
        }
    }

    /// What hands this job new versions of its pipelines.
    pub fn swapper(&self) -> Swapper {
        self.next.clone()
    }

    /// Adds a copy of the pipeline that processes part of each batch on a thread of its own.
    pub fn with_helper(mut self, pipeline: Pipeline) -> Self {
        self.helpers.push(Worker::new(pipeline));
        self
    }

    /// The topics the pipeline reads.
    pub fn topics(&self) -> Vec<String> {
        self.main.pipeline.topics()
    }
}

impl Job for PipelineJob {
    fn process(&mut self, input: &BorrowedMessage<'_>, out: &mut Vec<OutRecord>) {
        self.main.process(input, out);
    }

    fn process_batch(&mut self, inputs: &[BorrowedMessage<'_>], outs: &mut Vec<Vec<OutRecord>>) {
        if self.helpers.is_empty() || inputs.len() < PARALLEL_MIN {
            return self.main.process_all(inputs, outs);
        }
        // equal shares in order: this thread takes the first, each helper one of the next
        let share = inputs.len().div_ceil(self.helpers.len() + 1);
        let mut chunks = inputs.chunks(share);
        let mine = chunks.next().unwrap_or_default();
        let main = &mut self.main;
        let theirs: Vec<Vec<Vec<OutRecord>>> = std::thread::scope(|scope| {
            let running: Vec<_> = self
                .helpers
                .iter_mut()
                .zip(chunks)
                .map(|(helper, chunk)| {
                    scope.spawn(move || {
                        let mut outs = Vec::with_capacity(chunk.len());
                        helper.process_all(chunk, &mut outs);
                        outs
                    })
                })
                .collect();
            main.process_all(mine, outs);
            running
                .into_iter()
                // a panic in a processor is a bug: it goes on as it would on this thread
                .map(|r| r.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        for t in theirs {
            outs.extend(t);
        }
    }

    fn refusal(&mut self, input: &BorrowedMessage<'_>, refusal: &Refusal) -> Option<OutRecord> {
        self.main.pipeline.refusal(origin_of(input), refusal)
    }

    /// The pipeline keeps nothing per transaction.
    fn overlaps_commit(&self) -> bool {
        true
    }

    fn swap_ready(&self) -> bool {
        self.next.ready.load(Ordering::Relaxed)
    }

    fn swap(&mut self) {
        // cleared first: a version offered meanwhile is taken now or at the next boundary
        self.next.ready.store(false, Ordering::SeqCst);
        let Some(mut pipelines) = self.next.next.lock().unwrap().take() else {
            return;
        };
        if pipelines.is_empty() {
            return;
        }
        self.main = Worker::new(pipelines.remove(0));
        self.helpers = pipelines.into_iter().map(Worker::new).collect();
        self.next.applied.fetch_add(1, Ordering::SeqCst);
    }
}

/// A transactional producer that holds its transactional id (an earlier run's open
/// transaction aborted). A start that fails for another reason than fencing or a fatal
/// error — the broker down or restarting — is tried again, with a new producer, for up to
/// `rewind_limit`, as Kafka Streams waits for its broker rather than exit.
fn start_producer(
    config: &EngineConfig,
    shutdown: &AtomicBool,
) -> Result<EngineProducer, EngineError> {
    let mut started = None;
    retry_while(
        "starting the transactional producer",
        config.rewind_limit,
        shutdown,
        // the broker down or restarting; not a fenced id, a fatal error or a bad config
        |e| match e {
            EngineError::Init { source, .. } => {
                !is_fenced(source) && !matches!(source, KafkaError::Transaction(t) if t.is_fatal())
            }
            _ => false,
        },
        || {
            let producer: EngineProducer = producer_config(config)
                .create_with_context(DeliveryLog::default())
                .map_err(|source| EngineError::Client {
                    what: "producer",
                    source,
                })?;
            producer
                .init_transactions(CALL_TIMEOUT)
                .map_err(|source| EngineError::Init {
                    id: config.transactional_id(),
                    source,
                })?;
            started = Some(producer);
            Ok(())
        },
    )?;
    Ok(started.expect("started"))
}

/// Runs a job until `shutdown` is set, its range ends or a fatal error occurs. Blocks.
/// `topics` are what group mode subscribes to.
///
/// A producer fenced while its consumer is still a member of the group — the broker aborted
/// a transaction that outlived `transaction.timeout.ms`, say while the broker or this process
/// was paused — does not end the run: the loop starts again with a new producer and consumer
/// from the committed offsets, as Kafka Streams does for a migrated task (at most 5 times in
/// 10 minutes). So does a consumer fenced within a minute of losing its assignment: when a
/// static member's session times out (the broker paused, say), librdkafka joins again with
/// the same instance id, and its own earlier membership fences it (librdkafka issue 3437).
/// And so does a producer that failed fatally while beginning, committing or aborting a
/// transaction (INVALID_TXN_STATE after a broker was killed mid-commit, say): where Kafka
/// Streams would end the stream thread, Weir starts its loop again with a new producer.
/// And so does a consumer that hands over no record for a minute though records wait and
/// its broker is up ([`crate::stall`]): the faults suite once saw both members wait ten
/// minutes after a broker restart with nothing logged, until the broker fenced them.
/// A consumer fenced by another member with the same instance id ends it.
pub fn run<J: Job>(
    job: &mut J,
    topics: Vec<String>,
    config: EngineConfig,
    metrics: Metrics,
    shutdown: Arc<AtomicBool>,
) -> Result<RunSummary, EngineError> {
    let topics = match &config.input {
        InputMode::Group => topics,
        InputMode::Range { partitions, .. } => {
            let mut t: Vec<String> = partitions.iter().map(|p| p.topic.clone()).collect();
            t.sort();
            t.dedup();
            t
        }
    };
    let mut carried = Carried::default();
    let mut total = RunSummary::default();
    let mut restarts: Vec<Instant> = Vec::new();
    loop {
        let result = run_once(
            job,
            &topics,
            &config,
            &metrics,
            &shutdown,
            &mut carried,
            &mut total,
        );
        let again = match &result {
            _ if shutdown.load(Ordering::Relaxed) => None,
            Err(EngineError::Fenced { source, .. }) if producer_fenced(source) => Some(
                "the producer was fenced while this member still holds its partitions (a transaction outlived transaction.timeout.ms?): starting the loop again from the committed offsets",
            ),
            Err(EngineError::Fenced { source, .. }) if self_fenced(source, carried.assignment_lost) => Some(
                "this member's group session timed out (the broker or this process paused?) and its own earlier membership fenced the new one: starting the loop again from the committed offsets",
            ),
            Err(EngineError::Stalled { .. }) => Some(
                "the consumer was stalled: starting the loop again with a new consumer and producer from the committed offsets",
            ),
            Err(e) if producer_failed(e) => Some(
                "the transactional producer failed fatally (the broker killed or restarted mid-transaction?): starting the loop again with a new producer from the committed offsets",
            ),
            _ => None,
        };
        match (result, again) {
            (Ok(()), _) => return Ok(total),
            (Err(e), Some(why)) => {
                restarts.retain(|t| t.elapsed() < Duration::from_secs(600));
                if restarts.len() >= 5 {
                    return Err(e);
                }
                restarts.push(Instant::now());
                tracing::warn!(error = %e, transactional_id = %config.transactional_id(), "{why}");
                carried.assignment_lost = None;
                job.on_abort();
            }
            (Err(e), None) => return Err(e),
        }
    }
}

/// What one start of the loop hands the next: the refusals it knows of, and when the group
/// last moved on without this member.
#[derive(Default)]
struct Carried {
    refusals: Refusals,
    assignment_lost: Option<Instant>,
}

fn producer_fenced(e: &KafkaError) -> bool {
    is_fenced(e) && e.rdkafka_error_code() != Some(RDKafkaErrorCode::FencedInstanceId)
}

/// A fatal error of the transactional producer itself while it began, committed or aborted a
/// transaction — not a fence: librdkafka raises INVALID_TXN_STATE, say, when a broker killed
/// mid-commit leaves the producer's state behind the coordinator's. The producer is unusable;
/// a new one with the same transactional id aborts what the old one left open.
fn producer_failed(e: &EngineError) -> bool {
    matches!(
        e,
        EngineError::Fatal {
            during: "begin" | "commit" | "abort",
            ..
        }
    )
}

/// How long after losing its assignment a member's consumer fenced by its instance id is
/// taken to be fenced by its own earlier membership (sessions time out after 10 s).
const SELF_FENCE_WINDOW: Duration = Duration::from_secs(60);

/// The consumer was fenced by its instance id soon after this member lost its assignment.
fn self_fenced(e: &KafkaError, assignment_lost: Option<Instant>) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::FencedInstanceId)
        && assignment_lost.is_some_and(|t| t.elapsed() < SELF_FENCE_WINDOW)
}

fn run_once<J: Job>(
    job: &mut J,
    topics: &[String],
    config: &EngineConfig,
    metrics: &Metrics,
    shutdown: &Arc<AtomicBool>,
    carried: &mut Carried,
    total: &mut RunSummary,
) -> Result<(), EngineError> {
    let producer = start_producer(config, shutdown)?;
    job.on_start().map_err(EngineError::Start)?;
    let shared = Arc::new(Shared {
        producer,
        state: Mutex::new(TxnState::default()),
        metrics: metrics.clone(),
        config: config.clone(),
        topics: topics.to_vec(),
    });
    let consumer: BaseConsumer<EngineContext> = consumer_config(config)
        .create_with_context(EngineContext {
            shared: shared.clone(),
            stall: Mutex::default(),
        })
        .map_err(|source| EngineError::Client {
            what: "consumer",
            source,
        })?;
    let subscribed = match &config.input {
        InputMode::Group => {
            let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            consumer.subscribe(&topic_refs)
        }
        InputMode::Range { partitions, .. } => {
            let mut tpl = TopicPartitionList::new();
            for r in partitions {
                tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.start))
                    .expect("a valid offset");
            }
            consumer.assign(&tpl)
        }
    };
    subscribed.map_err(|source| EngineError::Subscribe {
        topics: topics.to_vec(),
        source,
    })?;
    tracing::info!(transactional_id = %config.transactional_id(), ?topics, "exactly-once loop started");

    let mut engine = Loop {
        job,
        shared: shared.clone(),
        shutdown: shutdown.clone(),
        refusals: std::mem::take(&mut carried.refusals),
        out: Vec::with_capacity(4),
        settling: Vec::new(),
        fruitless_aborts: 0,
        aborts_seen: 0,
        range: HashMap::new(),
        revoked: Vec::new(),
        rewound: Vec::new(),
        aborts: 0,
    };
    if let InputMode::Range { partitions, .. } = &config.input {
        for r in partitions {
            let t = engine.topic_index(&r.topic);
            engine
                .range
                .insert((t, r.partition), (r.end, r.start >= r.end));
        }
    }
    let mut last_activity = Instant::now();
    let result = loop {
        if let Step::Stop(r) = engine.step(&consumer, &mut last_activity) {
            break r;
        }
    };
    carried.refusals = std::mem::take(&mut engine.refusals);
    // a loop stopped by an error may leave a commit in flight: its result is booked
    let _ = settle_in_flight(&shared, &mut shared.state.lock().unwrap(), true);
    let (summary, lost) = {
        let state = shared.state.lock().unwrap();
        (state.summary, state.assignment_lost)
    };
    carried.assignment_lost = lost.or(carried.assignment_lost);
    total.records += summary.records;
    total.committed_transactions += summary.committed_transactions;
    total.aborted_transactions += summary.aborted_transactions;
    total.commit_time += summary.commit_time;
    total.refused += summary.refused;
    if total.first_record.is_none() {
        total.first_record = summary.first_record;
    }
    total.last_record = summary.last_record.or(total.last_record);
    if matches!(config.input, InputMode::Group) {
        consumer.unsubscribe();
    }
    tracing::info!(?result, "exactly-once loop stopped");
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(input: InputMode) -> EngineConfig {
        EngineConfig {
            application_id: "users".into(),
            instance: "a".into(),
            subtopology: 0,
            kafka: KafkaSettings::plain("x"),
            commit_interval: Duration::from_millis(100),
            commit_max_records: 10,
            transaction_timeout: Duration::from_secs(10),
            stop_when_idle: None,
            rewind_limit: Duration::from_secs(60),
            input,
        }
    }

    #[test]
    fn transactional_ids_name_application_subtopology_and_instance() {
        assert_eq!(config(InputMode::Group).transactional_id(), "users-0-a");
        let range = InputMode::Range {
            transactional_id: "users-dlq-replay".into(),
            group_id: "g".into(),
            partitions: Vec::new(),
        };
        assert_eq!(config(range).transactional_id(), "users-dlq-replay");
    }

    #[test]
    fn a_consumer_fenced_soon_after_losing_its_assignment_starts_again() {
        let fenced = KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId);
        let now = Instant::now();
        // its own earlier membership: the loop starts again
        assert!(self_fenced(&fenced, Some(now)));
        // another member with its instance id (no lost assignment, or long ago): it ends
        assert!(!self_fenced(&fenced, None));
        let long_ago = now.checked_sub(SELF_FENCE_WINDOW + Duration::from_secs(1));
        if let Some(t) = long_ago {
            assert!(!self_fenced(&fenced, Some(t)));
        }
        // a fenced producer is the other path, not this one
        let producer = KafkaError::MessageProduction(RDKafkaErrorCode::ProducerFenced);
        assert!(!self_fenced(&producer, Some(now)));
        assert!(producer_fenced(&producer) && !producer_fenced(&fenced));
    }

    #[test]
    fn a_producer_that_failed_fatally_in_a_transaction_call_starts_again_nothing_else_does() {
        let failed = |during| EngineError::Fatal {
            during,
            source: KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTransactionalState),
        };
        for during in ["begin", "commit", "abort"] {
            assert!(producer_failed(&failed(during)), "{during}");
        }
        assert!(!producer_failed(&failed("poll")));
        // a fence by another instance, a rewind given up or a record with no fate: it ends
        let fenced = KafkaError::MessageConsumptionFatal(RDKafkaErrorCode::FencedInstanceId);
        assert!(!producer_failed(&fatal(
            &config(InputMode::Group),
            "commit",
            fenced
        )));
        let rewind = EngineError::Rewind {
            limit: Duration::from_secs(1),
            source: KafkaError::Seek("broker down".into()),
        };
        assert!(!producer_failed(&rewind));
    }

    #[test]
    fn a_failing_rewind_is_retried_with_backoff_and_then_given_up_never_skipped() {
        let stop = AtomicBool::new(false);
        // fails twice, then works: retried until it works
        let mut calls = 0;
        let r = retry_bounded("seek", Duration::from_secs(5), &stop, || {
            calls += 1;
            if calls < 3 {
                Err("broker down")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, calls), (Ok(()), 3));
        // fails for ever: given up within the limit, with the error
        let started = Instant::now();
        let mut calls = 0;
        let r = retry_bounded("seek", Duration::from_millis(700), &stop, || {
            calls += 1;
            Err("broker down")
        });
        assert_eq!(r, Err("broker down"));
        assert!(calls >= 3, "retried: {calls}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn refusals_name_too_large_records_and_other_refusals() {
        let r = Refusal::new(RDKafkaErrorCode::MessageSizeTooLarge, "dlq", 1_040_500, "x");
        assert_eq!(r.reason, "record.too_large");
        assert!(r.message.contains("1040500 bytes"), "{}", r.message);
        assert_eq!(
            Refusal::new(RDKafkaErrorCode::InvalidRecord, "dlq", 1, "x").reason,
            "produce.refused"
        );
        assert!(is_refusal(RDKafkaErrorCode::MessageSizeTooLarge));
        assert!(!is_refusal(RDKafkaErrorCode::RequestTimedOut));
        assert!(!is_refusal(RDKafkaErrorCode::TopicAuthorizationFailed));
    }

    #[test]
    fn delivery_opaques_carry_the_transaction_and_the_record() {
        let o = opaque(7, 4999);
        assert_eq!(o >> GENERATION_SHIFT, 7);
        assert_eq!(o & ((1 << GENERATION_SHIFT) - 1), 4999);
    }
}
