//! A sub-topology compiled for running: processors and sink encoders wired by their inputs.
//! `weir process`, `weir test` and the engine all push records through one walk over the
//! nodes (behind [`Pipeline::process`], [`Pipeline::process_into`] and
//! [`Pipeline::process_batch_into`]), so what runs offline is what runs in production.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::IntCounter;

pub use crate::build::{BuildContext, BuildError, Built, OutRecord, Processor, SinkEncoder};
use crate::component::NodeKind;
use crate::config::Topology;
use crate::graph::SubTopology;
use crate::metrics::Metrics;
use crate::record::{Body, Envelope, Failure, Origin};

/// Where one input record ended up.
#[derive(Debug, Clone, PartialEq)]
pub struct Fate {
    /// The sink node reached.
    pub sink: Arc<str>,
    /// The record as the sink received it.
    pub envelope: Envelope,
    /// What the sink writes to Kafka, for topic sinks.
    pub record: Option<OutRecord>,
}

/// A node of a sub-topology failed to build.
#[derive(Debug, thiserror::Error)]
#[error("cannot build node \"{node}\": {source}")]
pub struct NodeBuildError {
    pub node: String,
    pub source: BuildError,
}

/// How many records the engine sends through the pipeline together
/// ([`Pipeline::process_batch_into`]): enough that each processor's code stays in the
/// instruction cache from record to record, few enough that the allocator's per-thread
/// cache still serves the records' buffers.
pub const NODE_BATCH: usize = 8;

/// How many bytes of a refused record's value its dead letter keeps.
pub const REFUSED_PREVIEW_BYTES: usize = 1024;

/// Why the broker (or the producer, before sending) refused an output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `record.too_large` or `produce.refused`.
    pub reason: &'static str,
    /// One sentence: which output, how large, what the broker said.
    pub message: String,
    /// The topic of the refused output.
    pub topic: String,
}

enum Stage {
    Processor(Box<dyn Processor>),
    Topic(Box<dyn SinkEncoder>),
    External,
}

struct Compiled {
    name: Arc<str>,
    /// The topic a topic sink writes.
    topic: Option<String>,
    stage: Stage,
    /// (output, downstream node indexes)
    routes: Vec<(Option<&'static str>, Vec<usize>)>,
    records_in: Option<IntCounter>,
    records_out: Vec<(Option<&'static str>, IntCounter)>,
}

/// The nodes a node's `routes` wire to its `output`.
fn routed_to<'r>(
    routes: &'r [(Option<&'static str>, Vec<usize>)],
    output: Option<&'static str>,
) -> &'r [usize] {
    routes
        .iter()
        .find(|(o, _)| *o == output)
        .map_or(&[], |(_, t)| t.as_slice())
}

/// A sub-topology, ready to process records.
pub struct Pipeline {
    nodes: Vec<Compiled>,
    /// Source node index by the topic it reads.
    sources: HashMap<String, usize>,
    metrics: Option<Metrics>,
    /// The nodes in an order where each comes after every node that feeds it.
    order: Vec<usize>,
    /// The records of a walk ([`Pipeline::walk`]), each with the index of
    /// the input it came from (a copy for an output wired to several nodes has a slot of its
    /// own), and what waits at each node (slots): reused from batch to batch, so that a
    /// record stays where it is from node to node.
    slots: Vec<(u32, Option<Envelope>)>,
    queues: Vec<Vec<u32>>,
    /// A processor's records by output in a walk, reused from walk to walk.
    counted: Vec<(Option<&'static str>, u64)>,
    /// Taps open on this process's edges (`weir tap`).
    taps: Option<Arc<crate::tap::Taps>>,
}

impl Pipeline {
    /// Builds every node of `sub`. Nodes of other sub-topologies are not touched.
    pub fn build(
        t: &Topology,
        sub: &SubTopology,
        metrics: Option<&Metrics>,
    ) -> Result<Self, NodeBuildError> {
        let index: HashMap<&str, usize> = sub
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut plan = crate::fields::FieldPlan::default();
        for name in &sub.nodes {
            for path in t.node(name).expect("sub-topology node").config.fields() {
                plan.add(&path);
            }
        }
        let plan = Arc::new(plan);
        let mut nodes = Vec::new();
        let mut sources = HashMap::new();
        for (i, name) in sub.nodes.iter().enumerate() {
            let node = t.node(name).expect("sub-topology node");
            let ctx = BuildContext {
                application_id: &t.settings.application_id,
                node: name,
                plan: &plan,
            };
            let stage = match node.config.build(&ctx).map_err(|source| NodeBuildError {
                node: name.clone(),
                source,
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
                name: name.as_str().into(),
                topic: (node.kind == NodeKind::Sink)
                    .then(|| node.config.topic().map(str::to_owned))
                    .flatten(),
                stage,
                routes,
                records_in: metrics.map(|m| m.records_in.with_label_values(&[name.as_str()])),
                records_out,
            });
        }
        let order = feeding_order(&nodes);
        Ok(Self {
            slots: Vec::new(),
            counted: Vec::new(),
            queues: nodes.iter().map(|_| Vec::new()).collect(),
            nodes,
            sources,
            metrics: metrics.cloned(),
            order,
            taps: None,
        })
    }

    /// Offers the records on every edge to the taps of `taps` (`weir tap`).
    pub fn with_taps(mut self, taps: Arc<crate::tap::Taps>) -> Self {
        self.taps = Some(taps);
        self
    }

    /// The topics this pipeline reads.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.sources.keys().cloned().collect();
        t.sort();
        t
    }

    /// The dead letter of a record whose output the broker refused: written by the first
    /// dead-letter sink of the sub-topology, with the value cut to a preview and headers that
    /// give its size and SHA-256. `None` when the sub-topology has no dead-letter sink.
    pub fn refusal(&self, origin: Origin, refusal: &Refusal) -> Option<OutRecord> {
        let sink = self.nodes.iter().find_map(|n| match &n.stage {
            Stage::Topic(e) if e.dead_letters() => Some(e),
            _ => None,
        })?;
        let node = self
            .nodes
            .iter()
            .find(|n| n.topic.as_deref() == Some(refusal.topic.as_str()))
            .map_or("engine", |n| &*n.name);
        let value = origin.value.unwrap_or_default();
        let (preview, headers) = refused_value(&value);
        let key = origin.key.map(|k| refused_value(&k).0);
        let envelope = Envelope {
            origin: Origin {
                key,
                value: Some(preview),
                headers: Vec::new(),
                ..origin
            },
            body: Body::Failed(Failure {
                reasons: vec![refusal.reason.to_owned()],
                message: format!(
                    "the record could not be written: {}; the dead letter keeps the first {} bytes of its {}-byte value",
                    refusal.message,
                    REFUSED_PREVIEW_BYTES.min(value.len()),
                    value.len()
                ),
                node: node.to_owned(),
                headers,
            }),
        };
        Some(sink.encode(&envelope))
    }

    /// Pushes one raw record from `origin.topic` through the graph; appends every fate, in
    /// the order of the nodes that the record reached.
    pub fn process(&mut self, origin: Origin, fates: &mut Vec<Fate>) {
        self.walk(std::iter::once(origin), &mut Fates(fates));
    }

    /// Pushes one raw record through the graph; appends only what its topic sinks write (the
    /// engine's path: the records' bytes are moved into them, not copied).
    pub fn process_into(&mut self, origin: Origin, out: &mut Vec<OutRecord>) {
        self.walk(std::iter::once(origin), &mut Records { outs: out });
    }

    /// [`Pipeline::process_into`] of several raw records at once: appends one `Vec` to
    /// `outs` for each, in order, with what its topic sinks write. An input's outputs are
    /// those `process_into` gives it alone.
    pub fn process_batch_into(
        &mut self,
        origins: impl IntoIterator<Item = Origin>,
        outs: &mut Vec<Vec<OutRecord>>,
    ) {
        let base = outs.len();
        self.walk(origins, &mut Batch { outs, base });
    }

    /// The one walk over the graph, for every way in: the records go through one node at a
    /// time — every record of the batch through a node before the next node, the nodes in
    /// [`feeding_order`] — so each processor's code and tables stay in the cache while it
    /// works ([`NODE_BATCH`]). `reach` takes what arrives at the sinks.
    fn walk(&mut self, origins: impl IntoIterator<Item = Origin>, reach: &mut impl Reach) {
        let (mut slots, mut queues) = (
            std::mem::take(&mut self.slots),
            std::mem::take(&mut self.queues),
        );
        for (at, origin) in origins.into_iter().enumerate() {
            reach.input();
            if let Some(start) = self.start(&origin.topic) {
                queues[start].push(slots.len() as u32);
                slots.push((at as u32, Some(Envelope::raw(origin))));
            }
        }
        let mut counted = std::mem::take(&mut self.counted);
        for k in 0..self.order.len() {
            let i = self.order[k];
            let mut queue = std::mem::take(&mut queues[i]);
            let node = &mut self.nodes[i];
            if let (Some(c), false) = (&node.records_in, queue.is_empty()) {
                c.inc_by(queue.len() as u64);
            }
            match &mut node.stage {
                Stage::Processor(p) => {
                    counted.clear();
                    for &slot in &queue {
                        let (at, Some(envelope)) = &mut slots[slot as usize] else {
                            continue;
                        };
                        let at = *at;
                        let output = p.process(envelope);
                        match counted.iter_mut().find(|(o, _)| *o == output) {
                            Some((_, n)) => *n += 1,
                            None => counted.push((output, 1)),
                        }
                        if let Some(taps) = &self.taps {
                            taps.offer(&node.name, output, envelope);
                        }
                        match routed_to(&node.routes, output) {
                            [] => slots[slot as usize].1 = None,
                            [rest @ .., last] => {
                                for &t in rest {
                                    let copy = slots[slot as usize].1.clone();
                                    queues[t].push(slots.len() as u32);
                                    slots.push((at, copy));
                                }
                                queues[*last].push(slot);
                            }
                        }
                    }
                    for &(output, n) in &counted {
                        if let Some((_, c)) = node.records_out.iter().find(|(o, _)| *o == output) {
                            c.inc_by(n);
                        }
                    }
                }
                Stage::Topic(encoder) => {
                    for &slot in &queue {
                        let (at, envelope) = &mut slots[slot as usize];
                        let Some(envelope) = envelope.take() else {
                            continue;
                        };
                        if let Some(taps) = &self.taps {
                            taps.offer(&node.name, None, &envelope);
                        }
                        count_dead_letter(self.metrics.as_ref(), &envelope);
                        reach.topic(*at as usize, &node.name, encoder.as_ref(), envelope);
                    }
                }
                Stage::External => {
                    for &slot in &queue {
                        if let Some(envelope) = slots[slot as usize].1.take() {
                            reach.external(&node.name, envelope);
                        }
                    }
                }
            }
            queue.clear();
            queues[i] = queue;
        }
        slots.clear();
        (self.slots, self.queues, self.counted) = (slots, queues, counted);
    }

    /// The node that reads `topic` (the only source when there is one, whatever the topic:
    /// no lookup).
    fn start(&self, topic: &str) -> Option<usize> {
        match self.sources.len() {
            1 => self.sources.values().next().copied(),
            _ => self.sources.get(topic).copied(),
        }
    }
}

/// What a walk keeps of the records that reach the sinks.
trait Reach {
    /// The walk takes the next input (they are numbered from 0 in order).
    fn input(&mut self) {}
    /// Input `at`'s record reached a topic sink.
    fn topic(&mut self, at: usize, sink: &Arc<str>, encoder: &dyn SinkEncoder, e: Envelope);
    /// A record reached a sink outside the sub-topology's transaction.
    fn external(&mut self, _sink: &Arc<str>, _e: Envelope) {}
}

/// Every fate of one input ([`Pipeline::process`]).
struct Fates<'a>(&'a mut Vec<Fate>);

impl Reach for Fates<'_> {
    fn topic(&mut self, _: usize, sink: &Arc<str>, encoder: &dyn SinkEncoder, e: Envelope) {
        let record = encoder.encode(&e);
        self.0.push(Fate {
            sink: sink.clone(),
            envelope: e,
            record: Some(record),
        });
    }

    fn external(&mut self, sink: &Arc<str>, e: Envelope) {
        self.0.push(Fate {
            sink: sink.clone(),
            envelope: e,
            record: None,
        });
    }
}

/// The records for Kafka of one input ([`Pipeline::process_into`]).
struct Records<'a> {
    outs: &'a mut Vec<OutRecord>,
}

impl Reach for Records<'_> {
    fn topic(&mut self, _: usize, _: &Arc<str>, encoder: &dyn SinkEncoder, e: Envelope) {
        self.outs.push(encoder.encode_owned(e));
    }
}

/// The records for Kafka of each input of a batch, one `Vec` each from `base` on
/// ([`Pipeline::process_batch_into`]).
struct Batch<'a> {
    outs: &'a mut Vec<Vec<OutRecord>>,
    base: usize,
}

impl Reach for Batch<'_> {
    fn input(&mut self) {
        self.outs.push(Vec::with_capacity(1));
    }

    fn topic(&mut self, at: usize, _: &Arc<str>, encoder: &dyn SinkEncoder, e: Envelope) {
        self.outs[self.base + at].push(encoder.encode_owned(e));
    }
}

/// Counts a failed record's reasons as it reaches a topic sink (a dead letter).
fn count_dead_letter(metrics: Option<&Metrics>, envelope: &Envelope) {
    if let (Some(m), Body::Failed(f)) = (metrics, &envelope.body) {
        for r in &f.reasons {
            m.dead_letters.with_label_values(&[r.as_str()]).inc();
        }
    }
}

/// The nodes' indexes in an order where each node comes after every node that feeds it
/// (the graph has no cycle: the topology check refuses one).
fn feeding_order(nodes: &[Compiled]) -> Vec<usize> {
    let mut feeders = vec![0usize; nodes.len()];
    for n in nodes {
        for (_, targets) in &n.routes {
            for &t in targets {
                feeders[t] += 1;
            }
        }
    }
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| feeders[i] == 0).collect();
    ready.reverse();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop() {
        order.push(i);
        for (_, targets) in &nodes[i].routes {
            for &t in targets {
                feeders[t] -= 1;
                if feeders[t] == 0 {
                    ready.push(t);
                }
            }
        }
    }
    order
}

/// A refused record's bytes cut to [`REFUSED_PREVIEW_BYTES`] (at a character boundary when
/// they are text), and the headers that describe the original: its size and SHA-256.
pub fn refused_value(bytes: &[u8]) -> (Vec<u8>, Vec<(String, String)>) {
    use sha2::{Digest, Sha256};
    let mut cut = bytes.len().min(REFUSED_PREVIEW_BYTES);
    if let Ok(text) = std::str::from_utf8(bytes) {
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
    }
    let sha: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (
        bytes[..cut].to_vec(),
        vec![
            ("weir.errors.value.size".to_owned(), bytes.len().to_string()),
            ("weir.errors.value.sha256".to_owned(), sha),
            (
                "weir.errors.value.truncated".to_owned(),
                (cut < bytes.len()).to_string(),
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_value_keeps_a_preview_its_size_and_digest() {
        let big = "é".repeat(REFUSED_PREVIEW_BYTES);
        let (preview, headers) = refused_value(big.as_bytes());
        assert_eq!(preview.len(), REFUSED_PREVIEW_BYTES);
        assert!(std::str::from_utf8(&preview).is_ok(), "cut at a character");
        assert_eq!(headers[0].1, (2 * REFUSED_PREVIEW_BYTES).to_string());
        assert_eq!(headers[1].1.len(), 64);
        assert_eq!(headers[2].1, "true");
        let (preview, headers) = refused_value(b"abc");
        assert_eq!(preview, b"abc");
        assert_eq!(
            headers[1].1,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(headers[2].1, "false");
    }
}
