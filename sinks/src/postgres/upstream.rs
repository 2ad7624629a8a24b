//! Is anything still in flight upstream? Before an idle partition of the sink may follow the
//! clock, the application that writes the sink's topic must have processed its input: its
//! consumer group's committed offsets on every input partition have reached that partition's
//! end (past transaction markers and aborted records, which a `read_committed` read skips).
//! Asked at most once a second, and only while some partition of the sink is idle.

use std::time::{Duration, Instant};
use weir_topology::config::KafkaSettings;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};
use weir_topology::kafka::ReadToEnd;

/// The processing application upstream of a sink: its consumer group, the topics it reads,
/// and the dead-letter topics it writes (for the end-to-end audit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub group: String,
    pub topics: Vec<String>,
    pub dead_letter_topics: Vec<String>,
}

/// Answers "is the upstream caught up?", with a one-second memory.
pub struct UpstreamCheck {
    spec: UpstreamSpec,
    consumer: BaseConsumer,
    kafka: KafkaSettings,
    last: Option<(Instant, bool)>,
}

const TIMEOUT: Duration = Duration::from_secs(5);

impl UpstreamCheck {
    pub fn new(spec: UpstreamSpec, kafka: &KafkaSettings) -> Result<Self, KafkaError> {
        let consumer = client(kafka, &spec.group).create()?;
        Ok(Self {
            spec,
            consumer,
            kafka: kafka.clone(),
            last: None,
        })
    }

    /// True when every input partition of the upstream is processed to its end. Any error
    /// (the broker away, say) counts as not caught up: waiting is safe, sealing early is not.
    pub fn caught_up(&mut self) -> bool {
        if let Some((at, v)) = self.last {
            if at.elapsed() < Duration::from_secs(1) {
                return v;
            }
        }
        let v = match self.check() {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "could not tell whether the upstream is caught up");
                false
            }
        };
        self.last = Some((Instant::now(), v));
        v
    }

    fn check(&self) -> Result<bool, KafkaError> {
        let mut wanted = TopicPartitionList::new();
        let mut ends = Vec::new();
        for topic in &self.spec.topics {
            let md = self.consumer.fetch_metadata(Some(topic), TIMEOUT)?;
            for t in md.topics() {
                if let Some(e) = t.error() {
                    return Err(KafkaError::MetadataFetch(e.into()));
                }
                for p in t.partitions() {
                    let (low, high) = self.consumer.fetch_watermarks(topic, p.id(), TIMEOUT)?;
                    wanted.add_partition(topic, p.id());
                    ends.push((topic.clone(), p.id(), low, high));
                }
            }
        }
        let committed = self.consumer.committed_offsets(wanted, TIMEOUT)?;
        let mut behind = Vec::new();
        for (topic, p, low, high) in ends {
            if high <= low {
                continue;
            }
            let at = committed
                .find_partition(&topic, p)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
                .unwrap_or(low);
            if at < high {
                behind.push((topic, p, at.max(low), high));
            }
        }
        if behind.is_empty() {
            return Ok(true);
        }
        // committed short of the end may only be transaction markers or aborted records:
        // a read_committed read from there finds no record if so
        self.nothing_from(&behind)
    }

    fn nothing_from(&self, from: &[(String, i32, i64, i64)]) -> Result<bool, KafkaError> {
        let probe: BaseConsumer<ReadToEnd> = client(&self.kafka, "weir-upstream-probe")
            .set("enable.partition.eof", "true")
            .create_with_context(ReadToEnd)?;
        let mut tpl = TopicPartitionList::new();
        for (topic, p, at, _) in from {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*at))?;
        }
        probe.assign(&tpl)?;
        let mut open = from.len();
        let deadline = Instant::now() + TIMEOUT;
        while open > 0 {
            if Instant::now() > deadline {
                return Ok(false);
            }
            match probe.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => return Ok(false),
                Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
                Some(Err(e)) => return Err(e),
                None => {}
            }
        }
        Ok(true)
    }
}

fn client(kafka: &KafkaSettings, group: &str) -> ClientConfig {
    kafka.reader("upstream-check", group, |_| {})
}
