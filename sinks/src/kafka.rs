//! The `kafka` sink: writes each record as JSON to a topic, in the sub-topology's Kafka
//! transaction, with the input record's key and timestamp.

use std::any::Any;

use serde::Deserialize;
use weir_topology::pipeline::{BuildContext, Built, OutRecord, SinkEncoder};
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

    fn build(&self, _ctx: &BuildContext) -> Result<Built, String> {
        Ok(Built::Topic(Box::new(TopicEncoder {
            topic: self.topic.clone(),
        })))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Encodes records as JSON for a topic.
pub struct TopicEncoder {
    topic: String,
}

impl SinkEncoder for TopicEncoder {
    fn encode(&self, record: &Envelope) -> OutRecord {
        let value = match &record.body {
            Body::Clean(c) => serde_json::to_vec(c),
            Body::Json(v) | Body::Valid(v) => serde_json::to_vec(v),
            Body::Raw | Body::Failed(_) => Ok(record.origin.value.clone().unwrap_or_default()),
        }
        .expect("JSON of owned values");
        OutRecord {
            topic: self.topic.clone(),
            key: record.origin.key.clone(),
            value,
            headers: Vec::new(),
            timestamp: record.origin.timestamp,
        }
    }
}
