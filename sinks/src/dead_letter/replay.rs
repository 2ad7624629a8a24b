//! Replay: dead letters back to the topic they came from, exactly once, on the engine's
//! transaction loop ([`weir_topology::engine`] in range mode).
//!
//! Guarantee: each dead letter is replayed at most once, whatever the reasons asked for and
//! however often a replay is killed and run again. The proof is a ledger: a compacted topic
//! (`<application>-dlq-replay-ledger`) keyed by the dead letter's own coordinates
//! (`topic/partition@offset`). A replayed record and its ledger entry are written in one
//! transaction; a replay reads the whole ledger before it starts, and one transactional id per
//! application fences a second replay running at the same time.
//!
//! So every run looks at every dead letter: one with two reasons is replayed by the first run
//! that matches either; one skipped (another reason, before `--since`), refused (replayed too
//! often, or only a preview of a refused record) or unroutable (no source topic) is still
//! there for a later run with other options.
//!
//! A replayed record is the original: its key, value, headers (without the dead letter's
//! `weir.errors.*`) and timestamp — so it lands in its original window and never wins the
//! newest-record merge over newer data — with `weir.replay.count` incremented and
//! `weir.replay.from` naming the dead letter. It is partitioned by murmur2 of its key, as
//! ingest does, so it goes back to its original partition.

use std::collections::HashSet;
use std::time::Duration;
use weir_topology::config::KafkaSettings;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use weir_topology::engine::{Job, Refusal, StartError, REPLAY_COUNT_HEADER};
use weir_topology::kafka::ReadToEnd;
use weir_topology::pipeline::OutRecord;

use super::reader::DeadLetter;
use super::ERRORS_PREFIX;

/// Header on a replayed record: the dead letter it came from (`topic/partition@offset`).
pub const REPLAYED_FROM_HEADER: &str = "weir.replay.from";

/// The ledger topic of an application's replays.
pub fn ledger_topic(application_id: &str) -> String {
    format!("{application_id}-dlq-replay-ledger")
}

/// Which dead letters a replay sends, and where.
#[derive(Debug, Clone)]
pub struct ReplayRules {
    /// A reason code; `field.missing` also matches `field.missing:email`.
    pub reason: String,
    /// Only dead letters that failed at or after this time (ms since 1970).
    pub since: Option<i64>,
    /// Refuse records already replayed this many times (the loop guard).
    pub max_replays: u32,
    /// Where to send them instead of each one's source topic.
    pub to: Option<String>,
}

/// What a replay did with each dead letter it examined.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub examined: u64,
    pub replayed: u64,
    /// Replayed `max_replays` times already: the loop guard.
    pub refused: u64,
    /// Only a preview of a record the broker refused: nothing to replay.
    pub truncated: u64,
    /// Another reason, or before `since`.
    pub skipped: u64,
    /// No source topic and no `to`.
    pub unroutable: u64,
    /// In the ledger: replayed by an earlier run.
    pub already: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.examined += o.examined;
        self.replayed += o.replayed;
        self.refused += o.refused;
        self.truncated += o.truncated;
        self.skipped += o.skipped;
        self.unroutable += o.unroutable;
        self.already += o.already;
    }
}

/// What a replay decides for one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send it to this topic.
    Replay(String),
    Skip,
    Refuse,
    Truncated,
    Unroutable,
    Already,
}

impl ReplayRules {
    /// The decision for `d`, given the dead letters replayed already.
    pub fn decide(&self, d: &DeadLetter, ledger: &HashSet<String>) -> Decision {
        if !d.has_reason(&self.reason)
            || self
                .since
                .is_some_and(|s| d.failed_at.is_none_or(|f| f < s))
        {
            return Decision::Skip;
        }
        if ledger.contains(&ledger_key(d)) {
            return Decision::Already;
        }
        if d.truncated {
            return Decision::Truncated;
        }
        if d.replay_count >= self.max_replays {
            return Decision::Refuse;
        }
        match self.to.as_ref().or(d.source_topic.as_ref()) {
            Some(to) => Decision::Replay(to.clone()),
            None => Decision::Unroutable,
        }
    }
}

/// A dead letter's key in the ledger: its own coordinates.
pub fn ledger_key(d: &DeadLetter) -> String {
    format!("{}/{}@{}", d.topic, d.partition, d.offset)
}

/// The record a dead letter is replayed as.
pub fn replayed_record(d: &DeadLetter, to: &str) -> OutRecord {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = d
        .headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(ERRORS_PREFIX) && k != REPLAY_COUNT_HEADER && k != REPLAYED_FROM_HEADER
        })
        .cloned()
        .collect();
    headers.push((
        REPLAY_COUNT_HEADER.to_owned(),
        Some((d.replay_count + 1).to_string().into_bytes()),
    ));
    headers.push((
        REPLAYED_FROM_HEADER.to_owned(),
        Some(ledger_key(d).into_bytes()),
    ));
    OutRecord {
        topic: to.into(),
        key: d.key.clone(),
        value: d.value.clone(),
        headers,
        timestamp: d.source_timestamp,
    }
}

/// Told the committed tally after each commit.
pub type ProgressFn = Box<dyn FnMut(&Tally) + Send>;

/// The engine job of a replay: decides each dead letter, writes the replayed record and its
/// ledger entry; tallies what committed.
pub struct ReplayJob {
    rules: ReplayRules,
    ledger_topic: String,
    kafka: KafkaSettings,
    ledger: HashSet<String>,
    /// Ledger entries of the open transaction.
    pending: Vec<String>,
    pending_tally: Tally,
    /// What committed.
    pub tally: Tally,
    /// Called after each commit with the committed tally (progress).
    pub on_progress: Option<ProgressFn>,
}

impl ReplayJob {
    pub fn new(rules: ReplayRules, ledger_topic: &str, kafka: KafkaSettings) -> Self {
        Self {
            rules,
            ledger_topic: ledger_topic.to_owned(),
            kafka,
            ledger: HashSet::new(),
            pending: Vec::new(),
            pending_tally: Tally::default(),
            tally: Tally::default(),
            on_progress: None,
        }
    }
}

impl Job for ReplayJob {
    fn on_start(&mut self) -> Result<(), StartError> {
        // after init_transactions: a killed replay's open transaction is aborted by now
        self.ledger =
            read_ledger(&self.kafka, &self.ledger_topic).map_err(|source| StartError {
                what: format!("reading the replay ledger {}", self.ledger_topic),
                source,
            })?;
        self.pending.clear();
        self.pending_tally = Tally::default();
        Ok(())
    }

    fn process(&mut self, input: &BorrowedMessage<'_>, out: &mut Vec<OutRecord>) {
        let d = DeadLetter::from_message(input);
        let t = &mut self.pending_tally;
        t.examined += 1;
        match self.rules.decide(&d, &self.ledger) {
            Decision::Replay(to) => {
                let key = ledger_key(&d);
                if self.pending.contains(&key) {
                    t.already += 1;
                    return;
                }
                t.replayed += 1;
                out.push(replayed_record(&d, &to));
                out.push(OutRecord {
                    topic: self.ledger_topic.as_str().into(),
                    key: Some(key.clone().into_bytes()),
                    value: serde_json::json!({
                        "to": to,
                        "reason": self.rules.reason,
                        "replayed_at": chrono::Utc::now().timestamp_millis(),
                    })
                    .to_string()
                    .into_bytes(),
                    headers: Vec::new(),
                    timestamp: None,
                });
                self.pending.push(key);
            }
            Decision::Skip => t.skipped += 1,
            Decision::Refuse => t.refused += 1,
            Decision::Truncated => t.truncated += 1,
            Decision::Unroutable => t.unroutable += 1,
            Decision::Already => t.already += 1,
        }
    }

    fn refusal(&mut self, _input: &BorrowedMessage<'_>, _refusal: &Refusal) -> Option<OutRecord> {
        // a record the broker took once and refuses now: the replay stops and says so
        None
    }

    fn on_commit(&mut self) {
        self.ledger.extend(self.pending.drain(..));
        self.tally.add(&self.pending_tally);
        self.pending_tally = Tally::default();
        if let Some(f) = &mut self.on_progress {
            f(&self.tally);
        }
    }

    fn on_abort(&mut self) {
        self.pending.clear();
        self.pending_tally = Tally::default();
    }
}

/// Creates the ledger topic (compacted, one partition, the broker's replication) unless it
/// exists.
pub fn ensure_ledger(kafka: &KafkaSettings, topic: &str) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka.client("dlq-replay-admin", |_| {}).create()?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = futures::executor::block_on(admin.create_topics(
        [&new],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
    ))?;
    for r in results {
        match r {
            Ok(_) => tracing::info!(topic, "created the replay ledger topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// Every key of the ledger topic, read committed up to its end.
pub fn read_ledger(kafka: &KafkaSettings, topic: &str) -> Result<HashSet<String>, KafkaError> {
    let consumer: BaseConsumer<ReadToEnd> = kafka
        .reader("dlq-replay-ledger", "weir-dlq-replay-ledger", |c| {
            c.set("enable.partition.eof", "true");
        })
        .create_with_context(ReadToEnd)?;
    let timeout = Duration::from_secs(30);
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    let mut open = HashSet::new();
    for t in metadata.topics() {
        if let Some(e) = t.error() {
            return Err(KafkaError::MetadataFetch(e.into()));
        }
        for p in t.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), timeout)?;
            if high > low {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
                open.insert(p.id());
            }
        }
    }
    let mut keys = HashSet::new();
    if open.is_empty() {
        return Ok(keys);
    }
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !open.is_empty() {
        if std::time::Instant::now() > deadline {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(k) = m.key() {
                    keys.insert(String::from_utf8_lossy(k).into_owned());
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                open.remove(&p);
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(reasons: &[&str]) -> DeadLetter {
        DeadLetter {
            topic: "dlq".into(),
            partition: 1,
            offset: 7,
            failed_at: Some(1_000),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
            source_topic: Some("raw".into()),
            source_timestamp: Some(500),
            key: Some(b"k".to_vec()),
            value: b"v".to_vec(),
            headers: vec![
                ("weir.ingest.source".into(), Some(b"randomuser".to_vec())),
                ("weir.errors.reasons".into(), Some(b"x".to_vec())),
                (REPLAY_COUNT_HEADER.into(), Some(b"1".to_vec())),
            ],
            replay_count: 1,
            ..DeadLetter::default()
        }
    }

    fn rules(reason: &str) -> ReplayRules {
        ReplayRules {
            reason: reason.into(),
            since: None,
            max_replays: 3,
            to: None,
        }
    }

    #[test]
    fn a_dead_letter_with_two_reasons_is_replayed_once() {
        let d = dead(&["email.invalid", "field.missing:name.first"]);
        let mut ledger = HashSet::new();
        assert_eq!(
            rules("email.invalid").decide(&d, &ledger),
            Decision::Replay("raw".into())
        );
        ledger.insert(ledger_key(&d));
        assert_eq!(
            rules("field.missing").decide(&d, &ledger),
            Decision::Already
        );
    }

    #[test]
    fn skipped_refused_and_unroutable_stay_for_a_later_run() {
        let d = dead(&["email.invalid"]);
        let ledger = HashSet::new();
        let mut r = rules("email.invalid");
        r.since = Some(2_000);
        assert_eq!(r.decide(&d, &ledger), Decision::Skip);
        r.since = None;
        r.max_replays = 1;
        assert_eq!(r.decide(&d, &ledger), Decision::Refuse);
        let mut orphan = d.clone();
        orphan.source_topic = None;
        assert_eq!(
            rules("email.invalid").decide(&orphan, &ledger),
            Decision::Unroutable
        );
        let mut with_to = rules("email.invalid");
        with_to.to = Some("elsewhere".into());
        assert_eq!(
            with_to.decide(&orphan, &ledger),
            Decision::Replay("elsewhere".into())
        );
        let mut cut = d.clone();
        cut.truncated = true;
        assert_eq!(
            rules("email.invalid").decide(&cut, &ledger),
            Decision::Truncated
        );
    }

    #[test]
    fn a_replayed_record_is_the_original_with_its_headers_and_time() {
        let r = replayed_record(&dead(&["email.invalid"]), "raw");
        assert_eq!(&*r.topic, "raw");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.value, b"v");
        assert_eq!(r.timestamp, Some(500), "the original record's time");
        assert_eq!(
            r.headers,
            vec![
                ("weir.ingest.source".into(), Some(b"randomuser".to_vec())),
                (REPLAY_COUNT_HEADER.into(), Some(b"2".to_vec())),
                (REPLAYED_FROM_HEADER.into(), Some(b"dlq/1@7".to_vec())),
            ]
        );
    }
}
