//! What every component declares about itself, so the graph can be checked before anything
//! connects: its kind, what it accepts, what it emits, and the Kafka topic it reads or writes.

use std::any::Any;
use std::fmt;

use serde::de::DeserializeOwned;

/// Sources start a graph, processors transform records, sinks end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NodeKind {
    Source,
    Processor,
    Sink,
}

impl NodeKind {
    /// The table the nodes of this kind live in: `sources`, `processors`, `sinks`.
    pub fn section(self) -> &'static str {
        match self {
            NodeKind::Source => "sources",
            NodeKind::Processor => "processors",
            NodeKind::Sink => "sinks",
        }
    }
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::Source => "source",
            NodeKind::Processor => "processor",
            NodeKind::Sink => "sink",
        })
    }
}

/// The kind of record on an edge of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// Decoded JSON, not yet validated.
    Json,
    /// JSON that passed validation.
    Valid,
    /// Clean, flat records.
    Clean,
    /// Records that failed, with reasons.
    Failed,
}

impl DataType {
    pub fn describe(self) -> &'static str {
        match self {
            DataType::Json => "JSON records",
            DataType::Valid => "validated records",
            DataType::Clean => "clean records",
            DataType::Failed => "failed records",
        }
    }
}

/// One output of a node: the default (`None`) or a named one such as `invalid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub name: Option<&'static str>,
    pub data_type: DataType,
}

/// A component's parsed configuration.
pub trait NodeConfig: fmt::Debug + Send + Sync + Any {
    /// The record types this node takes as input (empty for sources).
    fn accepts(&self) -> &'static [DataType];
    /// The outputs this node emits. A sink that writes a topic emits what its consumers read.
    fn outputs(&self) -> Vec<OutputSpec>;
    /// The Kafka topic this node reads (a source) or writes (a sink). A topic between two
    /// nodes splits the graph into sub-topologies.
    fn topic(&self) -> Option<&str> {
        None
    }
    /// True when the default output carries whatever this node received (a topic sink).
    fn passthrough(&self) -> bool {
        false
    }
    /// One line of detail for `weir describe`.
    fn detail(&self) -> String {
        String::new()
    }
    /// Problems of the config beyond its shape (each a sentence), reported by `weir check`
    /// at the node.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// The dotted paths of raw JSON records this node reads (rules, clean sources): the
    /// source reads them all in one pass.
    fn fields(&self) -> Vec<String> {
        Vec::new()
    }
    /// The schema of the clean rows this node emits, given its input's (`None`: not clean
    /// rows, or not known). By default, what it receives.
    fn schema(&self, input: Option<&crate::schema::Schema>) -> Option<crate::schema::Schema> {
        input.cloned()
    }
    /// What does not fit the schema of the clean rows this node receives (each a sentence):
    /// a column mapped to a field the rows lack, a template naming one.
    fn schema_problems(&self, _input: &crate::schema::Schema) -> Vec<String> {
        Vec::new()
    }
    /// Turns the config into the running part: a processor, a topic encoder, or a sink
    /// with its own loop. The error names what is wrong.
    fn build(
        &self,
        _ctx: &crate::build::BuildContext,
    ) -> Result<crate::build::Built, crate::build::BuildError> {
        Ok(crate::build::Built::External)
    }
    fn as_any(&self) -> &dyn Any;
}

/// The error of parsing a component's configuration, with the path of the offending key.
pub type ParseError = serde_path_to_error::Error<serde_json::Error>;

/// A component type that can appear in a topology file.
#[derive(Clone, Copy)]
pub struct ComponentType {
    /// The value of `type = "..."`.
    pub name: &'static str,
    pub kind: NodeKind,
    pub parse: fn(serde_json::Value) -> Result<Box<dyn NodeConfig>, ParseError>,
}

impl fmt::Debug for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// Parses a component's config of type `T` with the path of any error kept.
pub fn parse_config<T: DeserializeOwned + NodeConfig>(
    value: serde_json::Value,
) -> Result<Box<dyn NodeConfig>, ParseError> {
    let config: T = serde_path_to_error::deserialize(value)?;
    Ok(Box::new(config))
}

/// Every component type the binary knows.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    types: Vec<ComponentType>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn register(mut self, t: ComponentType) -> Self {
        self.types.push(t);
        self
    }

    pub fn get(&self, kind: NodeKind, name: &str) -> Option<&ComponentType> {
        self.types.iter().find(|t| t.kind == kind && t.name == name)
    }

    pub fn names(&self, kind: NodeKind) -> Vec<&'static str> {
        self.types
            .iter()
            .filter(|t| t.kind == kind)
            .map(|t| t.name)
            .collect()
    }
}
