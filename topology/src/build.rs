//! What a node of a topology turns into when its sub-topology runs ([`Built`]): a
//! [`Processor`] of records, or a [`SinkEncoder`] of the records a topic sink writes in the
//! Kafka transaction — and why a node's configuration cannot ([`BuildError`]). Components
//! implement this contract; [`crate::pipeline`] wires what they build.

use crate::record::Envelope;

/// A node that transforms records. Every record leaves by exactly one output (a record has
/// exactly one fate; an output wired to several nodes copies it): the processor changes it
/// in place and says which, `None` for the default output and `Some("invalid")` for a
/// named one.
pub trait Processor: Send {
    fn process(&mut self, record: &mut Envelope) -> Option<&'static str>;
}

/// A record ready for a Kafka producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    /// Shared by every record a sink writes.
    pub topic: std::sync::Arc<str>,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// Headers in order; a header may have no value.
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Milliseconds since the epoch; downstream records keep the input record's timestamp.
    pub timestamp: Option<i64>,
}

/// A sink that writes a Kafka topic inside the sub-topology's transaction.
pub trait SinkEncoder: Send {
    fn encode(&self, record: &Envelope) -> OutRecord;
    /// [`SinkEncoder::encode`] of a record nobody needs afterwards: an encoder may move its
    /// bytes instead of copying them.
    fn encode_owned(&self, record: Envelope) -> OutRecord {
        self.encode(&record)
    }
    /// True for a dead-letter sink: it takes failed records, including those whose output
    /// the broker refused.
    fn dead_letters(&self) -> bool {
        false
    }
}

/// What a node turns into when its sub-topology runs.
pub enum Built {
    Processor(Box<dyn Processor>),
    /// A sink whose records go out in the Kafka transaction.
    Topic(Box<dyn SinkEncoder>),
    /// A sink with its own loop (PostgreSQL, websocket): it reads a topic, not this pipeline.
    External,
}

/// What a node's build step may use.
pub struct BuildContext<'a> {
    pub application_id: &'a str,
    pub node: &'a str,
    /// Every raw JSON path the sub-topology's nodes read: the source reads them, the others
    /// look their values up by index.
    pub plan: &'a std::sync::Arc<crate::fields::FieldPlan>,
}

/// Why a node's configuration cannot become its running part, with the offending name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The node's own configuration had errors (reported when it was loaded).
    #[error("the node's configuration has errors")]
    Unchecked,
    /// The node's configuration has these problems (each a sentence, as `weir check` says).
    #[error("{}", .0.join("; "))]
    Problems(Vec<String>),
    /// A rule or field names a path of the raw record that the source was not asked to read.
    #[error("the source does not read {0}")]
    Unread(String),
    /// A clean field is made from `@name`, which no earlier field of the node is.
    #[error("no field \"{name}\" above \"{field}\"")]
    UnknownField { name: String, field: String },
}
