//! The `kafka` source: reads raw records from a topic and decodes their values as JSON —
//! in one pass, keeping only the fields the sub-topology's rules name ([`FieldPlan`]).
//! What cannot be decoded leaves through the `undecodable` output with a reason
//! (`utf8.invalid`, `json.malformed`, `record.empty`), so no input is ever lost.

use std::any::Any;
use std::sync::Arc;

use serde::Deserialize;

use crate::fields::{FieldPlan, Parsed, Shape, Unreadable};

use crate::build::{BuildContext, BuildError, Built, Processor};
use crate::component::{DataType, NodeConfig, OutputSpec};
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

    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built::Processor(Box::new(Decode::new(
            ctx.node,
            ctx.plan.clone(),
        ))))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Decodes a raw value as UTF-8 JSON and reads the fields of the plan.
pub struct Decode {
    node: String,
    plan: Arc<FieldPlan>,
    /// The keys of the records read so far, to check the next record's against.
    shape: Shape,
}

impl Decode {
    pub fn new(node: &str, plan: Arc<FieldPlan>) -> Self {
        Self {
            node: node.to_owned(),
            plan,
            shape: Shape::default(),
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

    /// The decoded body of a raw value: JSON (holding the value as text), or a failure with
    /// its reason (the value stays with the caller).
    pub fn decode(&mut self, value: &mut Option<Vec<u8>>) -> Body {
        let Some(bytes) = value.take() else {
            return self.fail(
                "record.empty",
                "the record has no value (a tombstone)".into(),
            );
        };
        let mut parsed = Parsed::reuse();
        match self
            .plan
            .read_value_shaped(bytes, &mut parsed, &mut self.shape)
        {
            Ok(()) => Body::Json(parsed),
            Err(e) => {
                let reason = match e {
                    Unreadable::Utf8 { .. } => "utf8.invalid",
                    Unreadable::Json { .. } => "json.malformed",
                };
                let message = e.to_string();
                let (Unreadable::Utf8 { bytes, .. } | Unreadable::Json { bytes, .. }) = e;
                *value = Some(bytes);
                self.fail(reason, message)
            }
        }
    }
}

impl Processor for Decode {
    fn process(&mut self, record: &mut Envelope) -> Option<&'static str> {
        record.body = self.decode(&mut record.origin.value);
        match record.body {
            Body::Failed(_) => Some("undecodable"),
            _ => None,
        }
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
        let mut d = Decode::new("raw", Arc::new(FieldPlan::default()));
        let mut decode = |v: Option<&[u8]>| {
            let mut value = v.map(<[u8]>::to_vec);
            let body = d.decode(&mut value);
            // what fails keeps its bytes; JSON holds them as text
            match &body {
                Body::Json(p) => assert_eq!((value, p.text.as_bytes()), (None, v.unwrap())),
                _ => assert_eq!(value.as_deref(), v),
            }
            body
        };
        assert!(matches!(decode(Some(br#"{"a":1}"#)), Body::Json(_)));
        assert_eq!(reasons(decode(Some(b"\xff\xfe"))), ["utf8.invalid"]);
        assert_eq!(reasons(decode(Some(b"{\"a\":"))), ["json.malformed"]);
        assert_eq!(reasons(decode(Some(b""))), ["json.malformed"]);
        assert_eq!(reasons(decode(None)), ["record.empty"]);
    }
}
