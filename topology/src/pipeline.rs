//! A sub-topology compiled for running: processors and sink encoders wired by their inputs.
//! `weir process`, `weir test` and the engine all push records through [`Pipeline::process`],
//! so what runs offline is what runs in production.

use std::collections::HashMap;

use prometheus::IntCounter;

use crate::component::NodeKind;
use crate::config::Topology;
use crate::graph::SubTopology;
use crate::metrics::Metrics;
use crate::record::{Body, Envelope, Origin};

/// A node that transforms records. It pushes zero or more `(output, record)` pairs, where
/// `None` is the default output and `Some("invalid")` a named one.
pub trait Processor: Send {
    fn process(&mut self, record: Envelope, out: &mut Vec<(Option<&'static str>, Envelope)>);
}

/// A record ready for a Kafka producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the epoch; downstream records keep the input record's timestamp.
    pub timestamp: Option<i64>,
}

/// A sink that writes a Kafka topic inside the sub-topology's transaction.
pub trait SinkEncoder: Send {
    fn encode(&self, record: &Envelope) -> OutRecord;
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
}

/// Where one input record ended up.
#[derive(Debug, Clone, PartialEq)]
pub struct Fate {
    /// The sink node reached.
    pub sink: String,
    /// The record as the sink received it.
    pub envelope: Envelope,
    /// What the sink writes to Kafka, for topic sinks.
    pub record: Option<OutRecord>,
}

/// A sub-topology's nodes failed to build.
#[derive(Debug, thiserror::Error)]
#[error("cannot build node \"{node}\": {message}")]
pub struct BuildError {
    pub node: String,
    pub message: String,
}

enum Stage {
    Processor(Box<dyn Processor>),
    Topic(Box<dyn SinkEncoder>),
    External,
}

struct Compiled {
    name: String,
    stage: Stage,
    /// (output, downstream node indexes)
    routes: Vec<(Option<&'static str>, Vec<usize>)>,
    records_in: Option<IntCounter>,
    records_out: Vec<(Option<&'static str>, IntCounter)>,
}

/// A sub-topology, ready to process records.
pub struct Pipeline {
    nodes: Vec<Compiled>,
    /// Source node index by the topic it reads.
    sources: HashMap<String, usize>,
    metrics: Option<Metrics>,
    scratch: Vec<(Option<&'static str>, Envelope)>,
}

impl Pipeline {
    /// Builds every node of `sub`. Nodes of other sub-topologies are not touched.
    pub fn build(
        t: &Topology,
        sub: &SubTopology,
        metrics: Option<&Metrics>,
    ) -> Result<Self, BuildError> {
        let index: HashMap<&str, usize> = sub
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut nodes = Vec::new();
        let mut sources = HashMap::new();
        for (i, name) in sub.nodes.iter().enumerate() {
            let node = t.node(name).expect("sub-topology node");
            let ctx = BuildContext {
                application_id: &t.settings.application_id,
                node: name,
            };
            let stage = match node.config.build(&ctx).map_err(|message| BuildError {
                node: name.clone(),
                message,
            })? {
                Built::Processor(p) => Stage::Processor(p),
                Built::Topic(e) => Stage::Topic(e),
                Built::External => Stage::External,
            };
            if node.kind == NodeKind::Source {
                if let Some(topic) = node.config.topic() {
                    sources.insert(topic.to_owned(), i);
                }
            }
            let mut routes = Vec::new();
            let mut records_out = Vec::new();
            if node.kind != NodeKind::Sink {
                for spec in node.config.outputs() {
                    let targets: Vec<usize> = t
                        .nodes
                        .iter()
                        .filter(|n| {
                            n.inputs
                                .iter()
                                .any(|inp| inp.node == *name && inp.output.as_deref() == spec.name)
                        })
                        .filter_map(|n| index.get(n.name.as_str()).copied())
                        .collect();
                    routes.push((spec.name, targets));
                    if let Some(m) = metrics {
                        records_out.push((
                            spec.name,
                            m.records_out.with_label_values(&[
                                name.as_str(),
                                spec.name.unwrap_or("default"),
                            ]),
                        ));
                    }
                }
            }
            nodes.push(Compiled {
                name: name.clone(),
                stage,
                routes,
                records_in: metrics.map(|m| m.records_in.with_label_values(&[name.as_str()])),
                records_out,
            });
        }
        Ok(Self {
            nodes,
            sources,
            metrics: metrics.cloned(),
            scratch: Vec::new(),
        })
    }

    /// The topics this pipeline reads.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.sources.keys().cloned().collect();
        t.sort();
        t
    }

    /// Pushes one raw record from `origin.topic` through the graph; appends every fate.
    pub fn process(&mut self, origin: Origin, fates: &mut Vec<Fate>) {
        let Some(&start) = self.sources.get(&origin.topic).or_else(|| {
            (self.sources.len() == 1)
                .then(|| self.sources.values().next())
                .flatten()
        }) else {
            return;
        };
        let mut work: Vec<(usize, Envelope)> = vec![(start, Envelope::raw(origin))];
        while let Some((i, envelope)) = work.pop() {
            let node = &mut self.nodes[i];
            if let Some(c) = &node.records_in {
                c.inc();
            }
            match &mut node.stage {
                Stage::Processor(p) => {
                    self.scratch.clear();
                    p.process(envelope, &mut self.scratch);
                    for (output, env) in self.scratch.drain(..) {
                        if let Some((_, c)) = node.records_out.iter().find(|(o, _)| *o == output) {
                            c.inc();
                        }
                        let targets = node
                            .routes
                            .iter()
                            .find(|(o, _)| *o == output)
                            .map(|(_, t)| t.as_slice())
                            .unwrap_or(&[]);
                        match targets {
                            [] => {}
                            [only] => work.push((*only, env)),
                            many => {
                                for &t in many {
                                    work.push((t, env.clone()));
                                }
                            }
                        }
                    }
                }
                Stage::Topic(encoder) => {
                    let record = encoder.encode(&envelope);
                    if let (Some(m), Body::Failed(f)) = (&self.metrics, &envelope.body) {
                        for r in &f.reasons {
                            m.dead_letters.with_label_values(&[r.as_str()]).inc();
                        }
                    }
                    fates.push(Fate {
                        sink: node.name.clone(),
                        envelope,
                        record: Some(record),
                    });
                }
                Stage::External => fates.push(Fate {
                    sink: node.name.clone(),
                    envelope,
                    record: None,
                }),
            }
        }
    }
}
