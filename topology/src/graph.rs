//! The graph of a topology: input checks (unknown nodes and outputs, type mismatches,
//! cycles), the record type on every edge, and the split into sub-topologies at topics.

use std::collections::{HashMap, HashSet};

use crate::component::{DataType, NodeKind};
use crate::config::{InputRef, Node, Topology};
use crate::diagnostic::{did_you_mean, Diagnostic};
use crate::schema::Schema;

/// Every problem with the edges of the graph.
pub fn check(t: &Topology) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let by_name: HashMap<&str, &Node> = t.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();

    for node in &t.nodes {
        for input in &node.inputs {
            let Some(up) = by_name.get(input.node.as_str()) else {
                diags.push(t.map.at(
                    Some(input.offset),
                    format!(
                        "input \"{input}\" for {} doesn't match any components{}",
                        node.label(),
                        did_you_mean(&input.node, names.iter().copied())
                    ),
                ));
                continue;
            };
            if up.broken || node.broken {
                continue;
            }
            if up.name == node.name {
                diags.push(t.map.at(
                    Some(input.offset),
                    format!("{} lists itself as an input", node.label()),
                ));
                continue;
            }
            if let Err(msg) = output_type(t, up, input) {
                diags.push(t.map.at(
                    Some(input.offset),
                    format!("input \"{input}\" for {}: {msg}", node.label()),
                ));
                continue;
            }
            // type mismatch: only when the upstream type is known (no cycle in the way)
            if let Ok(Some(dt)) = output_type(t, up, input) {
                let accepts = node.config.accepts();
                if !accepts.contains(&dt) {
                    let wanted: Vec<&str> = accepts.iter().map(|a| a.describe()).collect();
                    diags.push(t.map.at(
                        Some(input.offset),
                        format!(
                            "input \"{input}\" for {} carries {}, but a {} {} takes {}",
                            node.label(),
                            dt.describe(),
                            node.type_name,
                            node.kind,
                            wanted.join(" or ")
                        ),
                    ));
                }
            }
        }
    }
    // every record gets a fate: no output of a source or processor may lead nowhere
    for node in t
        .nodes
        .iter()
        .filter(|n| n.kind != NodeKind::Sink && !n.broken)
    {
        for spec in node.config.outputs() {
            if !downstream(t, &node.name, spec.name).is_empty() {
                continue;
            }
            let message = match spec.name {
                Some(o) => format!(
                    "output \"{}.{o}\" of {} goes nowhere: its {} would be lost; list it in a sink's inputs (a dead_letter sink, for failed records)",
                    node.name,
                    node.label(),
                    spec.data_type.describe()
                ),
                None => format!(
                    "{} has no downstream node: its {} would be lost",
                    node.label(),
                    spec.data_type.describe()
                ),
            };
            diags.push(t.map.at(Some(node.offset), message));
        }
    }
    diags.extend(cycles(t));
    // what sinks read from clean rows must be in their schema
    for node in t.nodes.iter().filter(|n| !n.broken) {
        let Some(input) = input_schema(t, node) else {
            continue;
        };
        for problem in node.config.schema_problems(&input) {
            diags.push(
                t.map
                    .at(Some(node.offset), format!("{}: {problem}", node.label())),
            );
        }
    }
    diags
}

/// The schema of the clean rows `node` receives, when its input carries clean rows whose
/// schema is known (the first input that has one).
pub fn input_schema(t: &Topology, node: &Node) -> Option<Schema> {
    node.inputs
        .iter()
        .find_map(|i| schema_of(t, &i.node, &mut Vec::new()))
}

/// The schema of what `name` emits, following its inputs (a cycle has none).
pub fn schema_of(t: &Topology, name: &str, seen: &mut Vec<String>) -> Option<Schema> {
    if seen.iter().any(|s| s == name) {
        return None;
    }
    seen.push(name.to_owned());
    let node = t.node(name).filter(|n| !n.broken)?;
    let input = node.inputs.iter().find_map(|i| schema_of(t, &i.node, seen));
    node.config.schema(input.as_ref())
}

/// The record type an input edge carries, `Ok(None)` when it cannot be known (a cycle).
pub fn output_type(t: &Topology, up: &Node, input: &InputRef) -> Result<Option<DataType>, String> {
    let outputs = up.config.outputs();
    let spec = outputs.iter().find(|o| o.name == input.output.as_deref());
    let Some(spec) = spec else {
        let mut have: Vec<String> = outputs
            .iter()
            .map(|o| {
                o.name
                    .map(|n| format!("\"{}.{n}\"", up.name))
                    .unwrap_or(format!("\"{}\"", up.name))
            })
            .collect();
        if have.is_empty() {
            have.push("none".to_owned());
        }
        return Err(match &input.output {
            Some(o) => format!(
                "{} has no output \"{o}\"{} (its outputs: {})",
                up.label(),
                did_you_mean(o, outputs.iter().filter_map(|s| s.name)),
                have.join(", ")
            ),
            None => format!(
                "{} has no default output (its outputs: {})",
                up.label(),
                have.join(", ")
            ),
        });
    };
    if spec.name.is_none() && up.config.passthrough() {
        return Ok(passthrough_type(t, up, &mut HashSet::new()));
    }
    Ok(Some(spec.data_type))
}

fn passthrough_type<'a>(
    t: &'a Topology,
    node: &'a Node,
    seen: &mut HashSet<&'a str>,
) -> Option<DataType> {
    if !seen.insert(&node.name) {
        return None;
    }
    let input = node.inputs.first()?;
    let up = t.node(&input.node)?;
    let outputs = up.config.outputs();
    let spec = outputs.iter().find(|o| o.name == input.output.as_deref())?;
    if spec.name.is_none() && up.config.passthrough() {
        passthrough_type(t, up, seen)
    } else {
        Some(spec.data_type)
    }
}

fn cycles(t: &Topology) -> Vec<Diagnostic> {
    // depth-first search over "node -> its inputs"; report each cycle once
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let index: HashMap<&str, usize> = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; t.nodes.len()];
    let mut diags = Vec::new();
    let mut reported: HashSet<Vec<usize>> = HashSet::new();

    fn visit(
        i: usize,
        t: &Topology,
        index: &HashMap<&str, usize>,
        marks: &mut Vec<Mark>,
        stack: &mut Vec<usize>,
        diags: &mut Vec<Diagnostic>,
        reported: &mut HashSet<Vec<usize>>,
    ) {
        marks[i] = Mark::Active;
        stack.push(i);
        for input in &t.nodes[i].inputs {
            let Some(&j) = index.get(input.node.as_str()) else {
                continue;
            };
            if j == i {
                continue;
            }
            match marks[j] {
                Mark::New => visit(j, t, index, marks, stack, diags, reported),
                Mark::Active => {
                    let start = stack.iter().position(|&s| s == j).unwrap_or(0);
                    let mut cycle: Vec<usize> = stack[start..].to_vec();
                    let mut key = cycle.clone();
                    key.sort_unstable();
                    if reported.insert(key) {
                        // print in data-flow order: upstream first
                        cycle.reverse();
                        let first = cycle[0];
                        let mut path: Vec<String> =
                            cycle.iter().map(|&c| t.nodes[c].label()).collect();
                        path.push(t.nodes[first].label());
                        diags.push(t.map.at(
                            Some(t.nodes[first].offset),
                            format!("cycle: {}", path.join(" -> ")),
                        ));
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks[i] = Mark::Done;
    }

    for i in 0..t.nodes.len() {
        if marks[i] == Mark::New {
            visit(
                i,
                t,
                &index,
                &mut marks,
                &mut Vec::new(),
                &mut diags,
                &mut reported,
            );
        }
    }
    diags
}

/// One sub-topology: the nodes that run in one consumer loop, between topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubTopology {
    pub id: usize,
    /// The topics this sub-topology reads.
    pub source_topics: Vec<String>,
    /// Names of the nodes, in file order. A node that reads a topic written by another
    /// sub-topology's sink appears as that topic's source here.
    pub nodes: Vec<String>,
    /// Edges into this sub-topology from topic-writing sinks of other sub-topologies:
    /// (sink name, topic).
    pub topic_inputs: Vec<(String, String)>,
}

/// Splits the graph at topics, like Kafka Streams: a sink that writes a topic ends its
/// sub-topology, and the nodes reading from that sink start another.
pub fn sub_topologies(t: &Topology) -> Vec<SubTopology> {
    let n = t.nodes.len();
    let index: HashMap<&str, usize> = t
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // union-find over edges that do not cross a topic
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], x: usize) -> usize {
        let mut r = x;
        while p[r] != r {
            r = p[r];
        }
        let mut c = x;
        while p[c] != r {
            let next = p[c];
            p[c] = r;
            c = next;
        }
        r
    }
    let crosses_topic = |up: &Node| up.kind == NodeKind::Sink && up.config.topic().is_some();
    for (i, node) in t.nodes.iter().enumerate() {
        for input in &node.inputs {
            if let Some(&j) = index.get(input.node.as_str()) {
                if !crosses_topic(&t.nodes[j]) {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
            }
        }
    }
    let mut groups: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in 0..n {
        let root = find(&mut parent, i);
        match groups.iter_mut().find(|(r, _)| *r == root) {
            Some((_, members)) => members.push(i),
            None => groups.push((root, vec![i])),
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(id, (_, members))| {
            let mut source_topics = Vec::new();
            let mut topic_inputs = Vec::new();
            for &m in &members {
                let node = &t.nodes[m];
                if node.kind == NodeKind::Source {
                    if let Some(topic) = node.config.topic() {
                        source_topics.push(topic.to_owned());
                    }
                }
                for input in &node.inputs {
                    if let Some(&j) = index.get(input.node.as_str()) {
                        let up = &t.nodes[j];
                        if crosses_topic(up) {
                            let topic = up.config.topic().unwrap_or_default().to_owned();
                            if !source_topics.contains(&topic) {
                                source_topics.push(topic.clone());
                            }
                            if !topic_inputs.iter().any(|(s, _)| s == &up.name) {
                                topic_inputs.push((up.name.clone(), topic));
                            }
                        }
                    }
                }
            }
            SubTopology {
                id,
                source_topics,
                nodes: members.iter().map(|&m| t.nodes[m].name.clone()).collect(),
                topic_inputs,
            }
        })
        .collect()
}

/// The nodes downstream of `(node, output)` inside the graph: who gets what it emits.
pub fn downstream<'a>(t: &'a Topology, node: &str, output: Option<&str>) -> Vec<&'a Node> {
    t.nodes
        .iter()
        .filter(|n| {
            n.inputs
                .iter()
                .any(|i| i.node == node && i.output.as_deref() == output)
        })
        .collect()
}
