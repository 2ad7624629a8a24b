//! `weir describe`: a topology's sub-topologies as text (like Kafka Streams'
//! `Topology#describe()`), Graphviz DOT, Mermaid, or JSON for `/api/topology`.

use std::fmt::Write;

use serde::Serialize;

use crate::component::NodeKind;
use crate::config::Topology;
use crate::graph::{downstream, sub_topologies};

/// The description as data: what the text, DOT and Mermaid forms are drawn from.
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    pub application_id: String,
    pub sub_topologies: Vec<SubDescription>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubDescription {
    pub id: usize,
    pub source_topics: Vec<String>,
    pub nodes: Vec<NodeDescription>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeDescription {
    pub name: String,
    pub kind: String,
    #[serde(rename = "type")]
    pub type_name: String,
    pub detail: String,
    /// Upstream nodes (`validate.invalid` for a named output); a topic for the first node of
    /// a sub-topology fed by another one.
    pub inputs: Vec<String>,
    /// Downstream nodes, with the output they take when it is not the default.
    pub outputs: Vec<String>,
}

pub fn describe(t: &Topology) -> Description {
    let subs = sub_topologies(t);
    Description {
        application_id: t.settings.application_id.clone(),
        sub_topologies: subs
            .iter()
            .map(|s| {
                let mut nodes = Vec::new();
                // the topics this sub-topology reads from other sub-topologies come first
                for (sink, topic) in &s.topic_inputs {
                    let readers: Vec<String> = downstream(t, sink, None)
                        .into_iter()
                        .filter(|n| s.nodes.contains(&n.name))
                        .map(|n| n.name.clone())
                        .collect();
                    nodes.push(NodeDescription {
                        name: format!("{sink}-source"),
                        kind: "source".into(),
                        type_name: "kafka".into(),
                        detail: format!("topic: {topic}, written by sink \"{sink}\""),
                        inputs: vec![format!("topic:{topic}")],
                        outputs: readers,
                    });
                }
                for name in &s.nodes {
                    let node = t.node(name).expect("node of the topology");
                    let mut outputs = Vec::new();
                    let writes_topic = node.kind == NodeKind::Sink && node.config.topic().is_some();
                    for spec in node.config.outputs() {
                        if writes_topic && spec.name.is_none() {
                            continue;
                        }
                        for d in downstream(t, name, spec.name) {
                            outputs.push(match spec.name {
                                Some(o) => format!("{} ({o})", d.name),
                                None => d.name.clone(),
                            });
                        }
                    }
                    if writes_topic {
                        outputs.push(format!("topic:{}", node.config.topic().unwrap_or_default()));
                    }
                    let inputs = node
                        .inputs
                        .iter()
                        .map(|i| {
                            let up = t.node(&i.node);
                            match up {
                                Some(u)
                                    if u.kind == NodeKind::Sink && u.config.topic().is_some() =>
                                {
                                    format!("{}-source", u.name)
                                }
                                _ => i.to_string(),
                            }
                        })
                        .collect();
                    nodes.push(NodeDescription {
                        name: name.clone(),
                        kind: node.kind.to_string(),
                        type_name: node.type_name.clone(),
                        detail: node.config.detail(),
                        inputs,
                        outputs,
                    });
                }
                SubDescription {
                    id: s.id,
                    source_topics: s.source_topics.clone(),
                    nodes,
                }
            })
            .collect(),
    }
}

fn title(kind: &str) -> &str {
    match kind {
        "source" => "Source",
        "processor" => "Processor",
        _ => "Sink",
    }
}

/// Kafka Streams' layout: one block per sub-topology, `-->` downstream, `<--` upstream.
pub fn to_text(d: &Description) -> String {
    let mut out = format!("Topologies ({}):\n", d.application_id);
    for s in &d.sub_topologies {
        let _ = writeln!(out, "   Sub-topology: {}", s.id);
        for n in &s.nodes {
            let detail = if n.detail.is_empty() {
                format!("type: {}", n.type_name)
            } else {
                format!("type: {}, {}", n.type_name, n.detail)
            };
            let _ = writeln!(out, "    {}: {} ({detail})", title(&n.kind), n.name);
            let down = if n.outputs.is_empty() {
                "none".to_owned()
            } else {
                n.outputs.join(", ")
            };
            let _ = writeln!(out, "      --> {down}");
            let up: Vec<&String> = n
                .inputs
                .iter()
                .filter(|i| !i.starts_with("topic:"))
                .collect();
            if !up.is_empty() {
                let up: Vec<&str> = up.iter().map(|s| s.as_str()).collect();
                let _ = writeln!(out, "      <-- {}", up.join(", "));
            }
        }
        out.push('\n');
    }
    out
}

fn id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn edges(d: &Description) -> Vec<(String, String, Option<String>)> {
    let mut edges = Vec::new();
    for s in &d.sub_topologies {
        for n in &s.nodes {
            for o in &n.outputs {
                if let Some(topic) = o.strip_prefix("topic:") {
                    edges.push((n.name.clone(), format!("topic:{topic}"), None));
                } else if let Some((to, label)) = o.split_once(" (") {
                    edges.push((
                        n.name.clone(),
                        to.to_owned(),
                        Some(label.trim_end_matches(')').to_owned()),
                    ));
                } else {
                    edges.push((n.name.clone(), o.clone(), None));
                }
            }
            for i in &n.inputs {
                if let Some(topic) = i.strip_prefix("topic:") {
                    edges.push((format!("topic:{topic}"), n.name.clone(), None));
                }
            }
        }
    }
    edges
}

fn topics(d: &Description) -> Vec<String> {
    let mut topics: Vec<String> = d
        .sub_topologies
        .iter()
        .flat_map(|s| s.nodes.iter())
        .flat_map(|n| n.inputs.iter().chain(n.outputs.iter()))
        .filter_map(|x| x.strip_prefix("topic:").map(str::to_owned))
        .collect();
    topics.sort();
    topics.dedup();
    topics
}

/// Graphviz DOT: one cluster per sub-topology, topics as cylinders between them.
pub fn to_dot(d: &Description) -> String {
    let mut out = format!(
        "digraph \"{}\" {{\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n",
        d.application_id
    );
    for s in &d.sub_topologies {
        let _ = writeln!(
            out,
            "  subgraph cluster_{} {{\n    label=\"Sub-topology {}\";",
            s.id, s.id
        );
        for n in &s.nodes {
            let shape = match n.kind.as_str() {
                "source" => "invhouse",
                "processor" => "box",
                _ => "house",
            };
            let _ = writeln!(
                out,
                "    {} [label=\"{}\\n({})\", shape={shape}];",
                id(&n.name),
                n.name,
                n.type_name
            );
        }
        out.push_str("  }\n");
    }
    for t in topics(d) {
        let _ = writeln!(
            out,
            "  {} [label=\"{t}\", shape=cylinder];",
            id(&format!("topic:{t}"))
        );
    }
    for (from, to, label) in edges(d) {
        match label {
            Some(l) => {
                let _ = writeln!(out, "  {} -> {} [label=\"{l}\"];", id(&from), id(&to));
            }
            None => {
                let _ = writeln!(out, "  {} -> {};", id(&from), id(&to));
            }
        }
    }
    out.push_str("}\n");
    out
}

/// Mermaid flowchart: one subgraph per sub-topology, topics as databases between them.
pub fn to_mermaid(d: &Description) -> String {
    let mut out = String::from("flowchart LR\n");
    for s in &d.sub_topologies {
        let _ = writeln!(out, "  subgraph sub{}[\"Sub-topology {}\"]", s.id, s.id);
        for n in &s.nodes {
            let (open, close) = match n.kind.as_str() {
                "source" => ("([", "])"),
                "processor" => ("[", "]"),
                _ => ("[/", "/]"),
            };
            let _ = writeln!(
                out,
                "    {}{open}\"{} ({})\"{close}",
                id(&n.name),
                n.name,
                n.type_name
            );
        }
        out.push_str("  end\n");
    }
    for t in topics(d) {
        let _ = writeln!(out, "  {}[(\"{t}\")]", id(&format!("topic:{t}")));
    }
    for (from, to, label) in edges(d) {
        match label {
            Some(l) => {
                let _ = writeln!(out, "  {} -- {l} --> {}", id(&from), id(&to));
            }
            None => {
                let _ = writeln!(out, "  {} --> {}", id(&from), id(&to));
            }
        }
    }
    out
}
