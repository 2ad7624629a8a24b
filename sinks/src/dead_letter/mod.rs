//! The `dead_letter` sink: writes each failed record's original key and bytes, unchanged,
//! to a topic, with headers that say why and whence — modelled on Kafka Connect's
//! `__connect.errors.*` and Kafka Streams' `__streams.errors.*` headers:
//!
//! | header | value |
//! | --- | --- |
//! | `weir.errors.reasons` | every reason code, comma-separated (`email.invalid,field.missing:name.first`) |
//! | `weir.errors.message` | one human sentence per reason, `; `-separated |
//! | `weir.errors.node` | the node that failed the record |
//! | `weir.errors.topic` / `.partition` / `.offset` / `.timestamp` | the source record |
//! | `weir.errors.application.id` | the application |
//! | `weir.errors.failed.at` | when it failed, milliseconds since the epoch |
//! | `weir.replay.count` | how often the record was replayed from this topic |
//! | `weir.errors.value.size` / `.sha256` / `.truncated` | a refused record's value, cut to a preview |
//!
//! The source record's own headers come first, unchanged (as Kafka Connect's dead letters
//! keep them), so a replay can restore them; stale `weir.errors.*` headers of an earlier
//! failure are dropped.

use std::any::Any;

use serde::Deserialize;
use weir_topology::build::{BuildContext, BuildError, Built, OutRecord, SinkEncoder};
use weir_topology::engine::REPLAY_COUNT_HEADER;
use weir_topology::{Body, DataType, Envelope, NodeConfig, Origin, OutputSpec};

pub mod reader;
pub mod replay;

pub const REASONS: &str = "weir.errors.reasons";
pub const MESSAGE: &str = "weir.errors.message";
pub const NODE: &str = "weir.errors.node";
pub const TOPIC: &str = "weir.errors.topic";
pub const PARTITION: &str = "weir.errors.partition";
pub const OFFSET: &str = "weir.errors.offset";
pub const TIMESTAMP: &str = "weir.errors.timestamp";
pub const APPLICATION: &str = "weir.errors.application.id";
pub const FAILED_AT: &str = "weir.errors.failed.at";
/// Every header a dead letter adds starts with this.
pub const ERRORS_PREFIX: &str = "weir.errors.";
/// Present (`true`) when the value is a preview of a refused record, not the record.
pub const TRUNCATED: &str = "weir.errors.value.truncated";

/// Writes failed records, unchanged, to a dead-letter topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// The dead-letter topic.
    pub topic: String,
}

impl NodeConfig for DeadLetterConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Failed]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        Vec::new()
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn detail(&self) -> String {
        format!("topic: {}", self.topic)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built::Topic(Box::new(DeadLetterEncoder {
            topic: self.topic.as_str().into(),
            application_id: ctx.application_id.to_owned(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Encodes a failed record as a dead letter.
pub struct DeadLetterEncoder {
    topic: std::sync::Arc<str>,
    application_id: String,
}

impl DeadLetterEncoder {
    pub fn new(topic: &str, application_id: &str) -> Self {
        Self {
            topic: topic.into(),
            application_id: application_id.to_owned(),
        }
    }
}

impl SinkEncoder for DeadLetterEncoder {
    fn dead_letters(&self) -> bool {
        true
    }

    fn encode(&self, record: &Envelope) -> OutRecord {
        let o = &record.origin;
        let headers = match &record.body {
            Body::Failed(f) => self.headers(
                o,
                f.reasons.join(","),
                f.message.clone(),
                f.node.clone(),
                &f.headers,
            ),
            _ => self.not_failed(o),
        };
        OutRecord {
            topic: self.topic.clone(),
            key: o.key.clone(),
            value: o.value.clone().unwrap_or_default(),
            headers,
            timestamp: o.timestamp,
        }
    }

    /// [`Self::encode`], moving the record's key, bytes and failure instead of copying them.
    fn encode_owned(&self, record: Envelope) -> OutRecord {
        let Envelope { origin: o, body } = record;
        let headers = match body {
            Body::Failed(f) => {
                let reasons = match f.reasons.len() {
                    1 => f.reasons.into_iter().next().unwrap_or_default(),
                    _ => f.reasons.join(","),
                };
                self.headers(&o, reasons, f.message, f.node, &f.headers)
            }
            _ => self.not_failed(&o),
        };
        OutRecord {
            topic: self.topic.clone(),
            key: o.key,
            value: o.value.unwrap_or_default(),
            headers,
            timestamp: o.timestamp,
        }
    }
}

impl DeadLetterEncoder {
    /// The headers of a record that reached the dead-letter sink without failing.
    fn not_failed(&self, o: &Origin) -> Vec<(String, Option<Vec<u8>>)> {
        self.headers(
            o,
            "internal.not_failed".to_owned(),
            "a record that did not fail reached the dead-letter sink".to_owned(),
            String::new(),
            &[],
        )
    }

    /// A dead letter's headers: the record's own (but earlier failures' and its replay
    /// count), then why it failed, where it came from, when, and how many replays.
    fn headers(
        &self,
        o: &Origin,
        reasons: String,
        message: String,
        node: String,
        extra: &[(String, String)],
    ) -> Vec<(String, Option<Vec<u8>>)> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let mut headers: Vec<(String, Option<Vec<u8>>)> =
            Vec::with_capacity(o.headers.len() + 10 + extra.len());
        headers.extend(
            o.headers
                .iter()
                .filter(|(k, _)| !k.starts_with(ERRORS_PREFIX) && k != REPLAY_COUNT_HEADER)
                .cloned(),
        );
        let mut add = |k: &str, v: String| headers.push((k.to_owned(), Some(v.into_bytes())));
        add(REASONS, reasons);
        add(MESSAGE, message);
        add(NODE, node);
        add(TOPIC, o.topic.clone());
        add(PARTITION, o.partition.to_string());
        add(OFFSET, o.offset.to_string());
        add(APPLICATION, self.application_id.clone());
        add(FAILED_AT, now.to_string());
        add(REPLAY_COUNT_HEADER, o.replay_count.to_string());
        if let Some(ts) = o.timestamp {
            add(TIMESTAMP, ts.to_string());
        }
        for (k, v) in extra {
            add(k, v.clone());
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_topology::{Failure, Origin};

    #[test]
    fn keeps_key_and_bytes_and_says_why_and_whence() {
        let e = DeadLetterEncoder::new("dlq", "users");
        let env = Envelope {
            origin: Origin {
                topic: "raw".into(),
                partition: 3,
                offset: 17,
                timestamp: Some(1_700_000_000_123),
                key: Some(b"k".to_vec()),
                value: Some(b"\xff{not json".to_vec()),
                headers: vec![
                    ("weir.ingest.source".into(), Some(b"synthetic".to_vec())),
                    ("empty".into(), None),
                    (REASONS.into(), Some(b"stale.reason".to_vec())),
                    (REPLAY_COUNT_HEADER.into(), Some(b"2".to_vec())),
                ],
                replay_count: 2,
            },
            body: Body::Failed(Failure {
                reasons: vec!["utf8.invalid".into(), "x.y".into()],
                message: "bad".into(),
                node: "raw".into(),
                ..Failure::default()
            }),
        };
        let r = e.encode(&env);
        assert_eq!(&*r.topic, "dlq");
        assert_eq!(r.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(r.value, b"\xff{not json");
        assert_eq!(r.timestamp, Some(1_700_000_000_123));
        let h = |k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone().unwrap()).unwrap())
        };
        // the source record's headers first, unchanged; stale failure headers dropped
        assert_eq!(
            r.headers[0],
            ("weir.ingest.source".into(), Some(b"synthetic".to_vec()))
        );
        assert_eq!(r.headers[1], ("empty".into(), None));
        assert_eq!(r.headers.iter().filter(|(k, _)| k == REASONS).count(), 1);
        assert_eq!(
            r.headers
                .iter()
                .filter(|(k, _)| k == REPLAY_COUNT_HEADER)
                .count(),
            1
        );
        assert_eq!(h(REASONS).as_deref(), Some("utf8.invalid,x.y"));
        assert_eq!(h(PARTITION).as_deref(), Some("3"));
        assert_eq!(h(OFFSET).as_deref(), Some("17"));
        assert_eq!(h(APPLICATION).as_deref(), Some("users"));
        assert_eq!(h(REPLAY_COUNT_HEADER).as_deref(), Some("2"));
        assert_eq!(h(TIMESTAMP).as_deref(), Some("1700000000123"));
        // moved rather than copied, the same record (but the moment it failed)
        let when = |mut r: OutRecord| {
            r.headers.retain(|(k, _)| k != FAILED_AT);
            r
        };
        assert_eq!(when(e.encode_owned(env.clone())), when(r));
        let mut one = env;
        if let Body::Failed(f) = &mut one.body {
            f.reasons.truncate(1);
        }
        assert_eq!(when(e.encode_owned(one.clone())), when(e.encode(&one)));
    }
}
