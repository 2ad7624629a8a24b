//! Reading dead letters back: each message of a dead-letter topic decoded into a
//! [`DeadLetter`] (why, whence, the original key and bytes), and a [`Reader`] that reads
//! committed dead letters up to the topic's end or follows it. Used by `weir dlq`, `/api/dlq`
//! and the live page's dead-letter panel.

use std::time::{Duration, Instant};
use weir_topology::config::KafkaSettings;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use weir_topology::engine::REPLAY_COUNT_HEADER;

use super::{
    APPLICATION, FAILED_AT, MESSAGE, NODE, OFFSET, PARTITION, REASONS, TIMESTAMP, TOPIC, TRUNCATED,
};

/// A dead letter as read from its topic.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeadLetter {
    /// Where the dead letter itself is.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// When the record failed (ms since the epoch); the message timestamp when the header is
    /// missing.
    pub failed_at: Option<i64>,
    /// Reason codes (`email.invalid`, `field.missing:name.first`).
    pub reasons: Vec<String>,
    pub message: String,
    /// The node that failed it.
    pub node: String,
    /// The source record's coordinates.
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub source_timestamp: Option<i64>,
    pub application_id: Option<String>,
    /// How often the record has been replayed already.
    pub replay_count: u32,
    /// The original key and bytes, unchanged.
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Every header as read: the source record's own, then the dead letter's.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// The value is a preview of a record the broker refused, not the record.
    pub truncated: bool,
}

impl DeadLetter {
    /// Decodes a dead-letter message; missing headers become `None` or empty, never an error
    /// (a dead letter written by another tool is still shown).
    pub fn from_message<M: Message>(m: &M) -> Self {
        let mut d = DeadLetter {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            ..DeadLetter::default()
        };
        if let Some(headers) = m.headers() {
            for h in headers.iter() {
                d.headers
                    .push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
                let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                    continue;
                };
                match h.key {
                    REASONS => {
                        d.reasons = v
                            .split(',')
                            .filter(|r| !r.is_empty())
                            .map(str::to_owned)
                            .collect()
                    }
                    MESSAGE => d.message = v.to_owned(),
                    NODE => d.node = v.to_owned(),
                    TOPIC => d.source_topic = Some(v.to_owned()),
                    PARTITION => d.source_partition = v.parse().ok(),
                    OFFSET => d.source_offset = v.parse().ok(),
                    TIMESTAMP => d.source_timestamp = v.parse().ok(),
                    APPLICATION => d.application_id = Some(v.to_owned()),
                    FAILED_AT => d.failed_at = v.parse().ok(),
                    REPLAY_COUNT_HEADER => d.replay_count = v.parse().unwrap_or(0),
                    TRUNCATED => d.truncated = v == "true",
                    _ => {}
                }
            }
        }
        if d.failed_at.is_none() {
            d.failed_at = m.timestamp().to_millis();
        }
        d
    }

    /// True when one of its reasons is `code`, or `code` followed by `:` and a detail
    /// (`field.missing` matches `field.missing:name.first`).
    pub fn has_reason(&self, code: &str) -> bool {
        self.reasons.iter().any(|r| {
            r == code || (r.starts_with(code) && r.as_bytes().get(code.len()) == Some(&b':'))
        })
    }

    /// The reason codes without their detail (`field.missing:name.first` → `field.missing`).
    pub fn reason_codes(&self) -> impl Iterator<Item = &str> {
        self.reasons
            .iter()
            .map(|r| r.split_once(':').map_or(r.as_str(), |(c, _)| c))
    }

    /// `topic/partition@offset` of the source record, or `?`.
    pub fn source(&self) -> String {
        match (
            &self.source_topic,
            self.source_partition,
            self.source_offset,
        ) {
            (Some(t), Some(p), Some(o)) => format!("{t}/{p}@{o}"),
            _ => "?".to_owned(),
        }
    }

    /// As JSON. `value` is the original value when it is UTF-8, else `null` with `value_hex`;
    /// `preview` is a shortened, escaped value that is safe to print.
    pub fn to_json(&self, full_value: bool) -> Value {
        let utf8 = std::str::from_utf8(&self.value).ok();
        let mut v = json!({
            "dead_letter": {"topic": self.topic, "partition": self.partition, "offset": self.offset},
            "failed_at": self.failed_at,
            "reasons": self.reasons,
            "message": self.message,
            "node": self.node,
            "source": {
                "topic": self.source_topic,
                "partition": self.source_partition,
                "offset": self.source_offset,
                "timestamp": self.source_timestamp,
            },
            "application_id": self.application_id,
            "replay_count": self.replay_count,
            "key": self.key.as_deref().map(|k| escape(k, 200)),
            "preview": escape(&self.value, 120),
            "size": self.value.len(),
        });
        if full_value {
            v["value"] = utf8.map_or(Value::Null, |s| Value::String(s.to_owned()));
            if utf8.is_none() {
                v["value_hex"] =
                    Value::String(self.value.iter().map(|b| format!("{b:02x}")).collect());
            }
        }
        v
    }
}

/// Bytes as printable text, at most `max_chars` characters (then `…`): valid UTF-8 is kept
/// except control characters, which are escaped (`\n`, `\t`, `\u{0}`); invalid bytes are
/// shown as `\xNN`.
pub fn escape(bytes: &[u8], max_chars: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut push = |out: &mut String, s: &str| -> bool {
        if count >= max_chars {
            out.push('…');
            return false;
        }
        out.push_str(s);
        count += 1;
        true
    };
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let ok = match c {
                '\n' => push(&mut out, "\\n"),
                '\r' => push(&mut out, "\\r"),
                '\t' => push(&mut out, "\\t"),
                c if c.is_control() || c == '\u{feff}' => {
                    push(&mut out, &format!("\\u{{{:x}}}", c as u32))
                }
                c => push(&mut out, c.encode_utf8(&mut [0; 4])),
            };
            if !ok {
                return out;
            }
        }
        for b in chunk.invalid() {
            if !push(&mut out, &format!("\\x{b:02x}")) {
                return out;
            }
        }
    }
    out
}

/// Where a [`Reader`] starts in each partition.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    Beginning,
    /// The last `n` messages of each partition.
    Last(i64),
    End,
}

/// Every partition of some topics with its low and high watermark at one moment: where a
/// bounded read starts and when it has caught up.
#[derive(Debug, Clone)]
pub struct Extent {
    /// (topic, partition, low, high)
    pub partitions: Vec<(String, i32, i64, i64)>,
}

impl Extent {
    /// Reads the topics' partitions and watermarks; a missing topic is an error.
    pub fn of<C: rdkafka::consumer::ConsumerContext>(
        consumer: &BaseConsumer<C>,
        topics: &[String],
    ) -> Result<Self, KafkaError> {
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = consumer.fetch_metadata(Some(topic), CALL_TIMEOUT)?;
            for t in metadata.topics() {
                if let Some(e) = t.error() {
                    return Err(KafkaError::MetadataFetch(e.into()));
                }
                for p in t.partitions() {
                    let (low, high) = consumer.fetch_watermarks(topic, p.id(), CALL_TIMEOUT)?;
                    partitions.push((topic.clone(), p.id(), low, high));
                }
            }
        }
        Ok(Self { partitions })
    }

    /// True once `consumer` has read every partition up to its high watermark of then.
    pub fn reached<C: rdkafka::consumer::ConsumerContext>(
        &self,
        consumer: &BaseConsumer<C>,
    ) -> bool {
        let Ok(positions) = consumer.position() else {
            return false;
        };
        self.partitions.iter().all(|(topic, p, _, end)| {
            *end == 0
                || positions
                    .find_partition(topic, *p)
                    .and_then(|e| e.offset().to_raw())
                    .is_some_and(|pos| pos >= *end)
        })
    }
}

/// Reads committed dead letters from one or more topics, without a consumer group's offsets.
pub struct Reader {
    consumer: BaseConsumer,
    /// Where the topics ended when the reader opened.
    extent: Extent,
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

impl Reader {
    pub fn open(
        kafka: &KafkaSettings,
        topics: &[String],
        start: Start,
    ) -> Result<Self, KafkaError> {
        let consumer: BaseConsumer = kafka
            .reader("dlq-reader", "weir-dlq-reader", |c| {
                c.set("fetch.wait.max.ms", "100");
            })
            .create()?;
        let extent = Extent::of(&consumer, topics)?;
        let mut tpl = TopicPartitionList::new();
        for (topic, p, low, high) in &extent.partitions {
            let offset = match start {
                Start::Beginning => Offset::Beginning,
                Start::Last(n) => Offset::Offset((high - n).max(*low)),
                Start::End => Offset::End,
            };
            tpl.add_partition_offset(topic, *p, offset)?;
        }
        consumer.assign(&tpl)?;
        Ok(Self { consumer, extent })
    }

    /// The next dead letter, waiting at most `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Result<DeadLetter, KafkaError>> {
        self.consumer
            .poll(timeout)
            .map(|r| r.map(|m| DeadLetter::from_message(&m)))
    }

    /// True once every partition is read up to where it ended when the reader opened.
    pub fn caught_up(&self) -> bool {
        self.extent.reached(&self.consumer)
    }

    /// Every dead letter up to the ends seen when the reader opened; gives up after `limit`
    /// without progress (a transaction left open by a crashed writer holds back the end).
    pub fn read_to_end(
        &mut self,
        stall_limit: Duration,
        mut each: impl FnMut(DeadLetter),
    ) -> Result<(), KafkaError> {
        let mut last_progress = Instant::now();
        while !self.caught_up() {
            match self.next(Duration::from_millis(200)) {
                Some(Ok(d)) => {
                    last_progress = Instant::now();
                    each(d);
                }
                Some(Err(e)) => return Err(e),
                None if last_progress.elapsed() > stall_limit => break,
                None => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_or_page_should_not_interpret() {
        assert_eq!(escape(b"a\nb\t\x00c", 100), "a\\nb\\t\\u{0}c");
        assert_eq!(escape(b"\xff{x", 100), "\\xff{x");
        assert_eq!(escape("Zoë Ærø".as_bytes(), 100), "Zoë Ærø");
        assert_eq!(escape(b"abcdef", 3), "abc…");
        assert_eq!(escape("\u{feff}x".as_bytes(), 10), "\\u{feff}x");
    }

    #[test]
    fn matches_reasons_by_code_or_code_and_detail() {
        let d = DeadLetter {
            topic: "dlq".into(),
            reasons: vec!["email.invalid".into(), "field.missing:name.first".into()],
            node: "validate".into(),
            ..DeadLetter::default()
        };
        assert!(d.has_reason("email.invalid"));
        assert!(d.has_reason("field.missing"));
        assert!(d.has_reason("field.missing:name.first"));
        assert!(!d.has_reason("field.missing:name.last"));
        assert!(!d.has_reason("email"));
        assert_eq!(
            d.reason_codes().collect::<Vec<_>>(),
            ["email.invalid", "field.missing"]
        );
    }
}
