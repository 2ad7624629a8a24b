//! The `kafka` sink: writes each record to a topic, in the sub-topology's Kafka transaction,
//! with the input record's key and timestamp: a clean row as its JSON, a record that is not
//! cleaned as the bytes it was read as.

use std::any::Any;

use serde::Deserialize;
use weir_topology::build::{BuildContext, BuildError, Built, OutRecord, SinkEncoder};
use weir_topology::{Body, DataType, Envelope, NodeConfig, OutputSpec};

/// Writes records as JSON to a Kafka topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// The topic to write. Nodes that list this sink as an input read this topic.
    pub topic: String,
}

impl NodeConfig for KafkaSinkConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Json, DataType::Valid, DataType::Clean]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        // readers of the topic get what was written
        vec![OutputSpec {
            name: None,
            data_type: DataType::Clean,
        }]
    }

    fn passthrough(&self) -> bool {
        true
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn detail(&self) -> String {
        format!("topic: {}", self.topic)
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Built, BuildError> {
        Ok(Built::Topic(Box::new(TopicEncoder {
            topic: self.topic.as_str().into(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Encodes records as JSON for a topic.
pub struct TopicEncoder {
    topic: std::sync::Arc<str>,
}

impl TopicEncoder {
    fn record(&self, key: Option<Vec<u8>>, value: Vec<u8>, timestamp: Option<i64>) -> OutRecord {
        OutRecord {
            topic: self.topic.clone(),
            key,
            value,
            headers: Vec::new(),
            timestamp,
        }
    }
}

impl SinkEncoder for TopicEncoder {
    fn encode(&self, record: &Envelope) -> OutRecord {
        // a clean row as the clean step wrote it; anything else as it was read
        let value = match &record.body {
            Body::Clean(row) => row.json.clone(),
            Body::Json(_) | Body::Valid(_) | Body::Raw | Body::Failed(_) => {
                record.value().map(<[u8]>::to_vec).unwrap_or_default()
            }
        };
        self.record(record.origin.key.clone(), value, record.origin.timestamp)
    }

    fn encode_owned(&self, record: Envelope) -> OutRecord {
        // the same bytes as `encode`, moved
        let value = match record.body {
            Body::Clean(row) => row.json,
            Body::Json(p) | Body::Valid(p) => p.into_text().into_bytes(),
            Body::Raw | Body::Failed(_) => record.origin.value.unwrap_or_default(),
        };
        self.record(record.origin.key, value, record.origin.timestamp)
    }
}
