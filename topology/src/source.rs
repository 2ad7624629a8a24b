//! The `kafka` source: reads raw records from a topic and decodes their values as JSON.
//! What cannot be decoded leaves through the `undecodable` output with a reason
//! (`utf8.invalid`, `json.malformed`, `record.empty`), so no input is ever lost.

use std::any::Any;

use serde::Deserialize;

use crate::component::{DataType, NodeConfig, OutputSpec};
use crate::pipeline::{BuildContext, Built, Processor};
use crate::record::{Body, Envelope, Failure};

/// Reads a Kafka topic (`read_committed`) as the start of a sub-topology.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSourceConfig {
    /// The topic to read.
    pub topic: String,
}

impl NodeConfig for KafkaSourceConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![
            OutputSpec {
                name: None,
                data_type: DataType::Json,
            },
            OutputSpec {
                name: Some("undecodable"),
                data_type: DataType::Failed,
            },
        ]
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn detail(&self) -> String {
        format!("topic: {}", self.topic)
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, String> {
        Ok(Built::Processor(Box::new(Decode {
            node: ctx.node.to_owned(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Decodes a raw value as UTF-8 JSON.
pub struct Decode {
    node: String,
}

impl Decode {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
        }
    }

    fn fail(&self, reason: &str, message: String) -> Body {
        Body::Failed(Failure {
            reasons: vec![reason.to_owned()],
            message,
            node: self.node.clone(),
            ..Failure::default()
        })
    }

    /// The decoded body of a raw value: JSON, or a failure with its reason.
    pub fn decode(&self, value: Option<&[u8]>) -> Body {
        let Some(bytes) = value else {
            return self.fail(
                "record.empty",
                "the record has no value (a tombstone)".into(),
            );
        };
        let text = match std::str::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                return self.fail(
                    "utf8.invalid",
                    format!(
                        "the value is not UTF-8: invalid byte at offset {}",
                        e.valid_up_to()
                    ),
                )
            }
        };
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => Body::Json(v),
            Err(e) => self.fail("json.malformed", format!("the value is not JSON: {e}")),
        }
    }
}

impl Processor for Decode {
    fn process(&mut self, mut record: Envelope, out: &mut Vec<(Option<&'static str>, Envelope)>) {
        record.body = self.decode(record.origin.value.as_deref());
        let output = match record.body {
            Body::Failed(_) => Some("undecodable"),
            _ => None,
        };
        out.push((output, record));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(b: Body) -> Vec<String> {
        match b {
            Body::Failed(f) => f.reasons,
            other => panic!("not failed: {other:?}"),
        }
    }

    #[test]
    fn decodes_json_and_names_what_is_not() {
        let d = Decode::new("raw");
        assert!(matches!(d.decode(Some(br#"{"a":1}"#)), Body::Json(_)));
        assert_eq!(reasons(d.decode(Some(b"\xff\xfe"))), ["utf8.invalid"]);
        assert_eq!(reasons(d.decode(Some(b"{\"a\":"))), ["json.malformed"]);
        assert_eq!(reasons(d.decode(Some(b""))), ["json.malformed"]);
        assert_eq!(reasons(d.decode(None)), ["record.empty"]);
    }
}
