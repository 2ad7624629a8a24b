//! What an edit of a topology file changes, node by node, and how it can take effect in a
//! running `weir run` (`weir diff OLD NEW`, and the reload of `weir run --watch`/SIGHUP):
//!
//! - a processor whose settings changed (rules, cleaning) while its type and inputs stayed
//!   is swapped in **live**, at the next transaction boundary of the processing loop;
//! - anything else — a source, a sink (topics, windows, templates), a node added, removed or
//!   rewired, the application id, the Kafka settings, the commit settings — **restarts** the
//!   sub-topologies it touches, in the old graph and in the new one;
//! - `[[tests]]` are run by `weir test` only: an edit of them changes nothing that runs.
//!
//! Values are never printed, only the names of what changed: a node's settings may hold a
//! resolved `${SECRET}`.

use std::collections::BTreeSet;

use serde::Serialize;
use serde_json::Value;

use crate::component::NodeKind;
use crate::config::Topology;
use crate::graph::sub_topologies;

/// How one change can take effect in a running topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "applies", content = "subtopologies")]
pub enum Applies {
    /// Swapped in at the next transaction boundary; nothing stops.
    Live,
    /// These sub-topologies (numbers in the new file; `weir describe`) stop cleanly and
    /// start again with the new file.
    Restart(Vec<usize>),
}

/// What happened to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum What {
    Added,
    Removed,
    /// Its settings changed: the keys that differ (`max_lengths.email`).
    Changed(Vec<String>),
    /// Its type or inputs changed.
    Rewired,
}

/// One changed node (or `settings` for the top of the file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `processor "validate"`, or `settings`.
    pub label: String,
    pub what: What,
    #[serde(flatten)]
    pub applies: Applies,
}

/// Every change of an edit, and what applying it takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopologyDiff {
    pub changes: Vec<Change>,
    /// Processors to swap in at the next transaction boundary.
    pub live: Vec<String>,
    /// Sub-topologies (numbers in the new file) to restart.
    pub restart: Vec<usize>,
    /// Nodes the new file no longer has: whatever runs them stops.
    pub removed: Vec<String>,
}

impl TopologyDiff {
    /// True when nothing that runs changed.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// True when something must stop or start again (not only a live swap).
    pub fn restarts(&self) -> bool {
        !self.restart.is_empty() || !self.removed.is_empty()
    }
}

impl std::fmt::Display for TopologyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.changes.is_empty() {
            return writeln!(f, "no change to what runs");
        }
        for c in &self.changes {
            let what = match &c.what {
                What::Added => "added".to_owned(),
                What::Removed => "removed".to_owned(),
                What::Changed(keys) => format!("changed: {}", keys.join(", ")),
                What::Rewired => "type or inputs changed".to_owned(),
            };
            let applies = match &c.applies {
                Applies::Live => "applies live at the next transaction boundary".to_owned(),
                Applies::Restart(subs) if subs.is_empty() => "stops".to_owned(),
                Applies::Restart(subs) => format!("restarts {}", subs_text(subs)),
            };
            writeln!(f, "{}: {what} — {applies}", c.label)?;
        }
        match (self.live.is_empty(), self.restart.is_empty()) {
            (false, true) => writeln!(f, "the whole edit applies live"),
            (_, false) => writeln!(f, "the edit restarts {}", subs_text(&self.restart)),
            (true, true) if !self.removed.is_empty() => {
                writeln!(f, "the edit stops what it removes")
            }
            (true, true) => Ok(()),
        }
    }
}

fn subs_text(subs: &[usize]) -> String {
    let list = subs
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match subs.len() {
        1 => format!("sub-topology {list}"),
        _ => format!("sub-topologies {list}"),
    }
}

/// What changes from `old` to `new` (both loaded and checked).
pub fn diff(old: &Topology, new: &Topology) -> TopologyDiff {
    let (old_subs, new_subs) = (sub_topologies(old), sub_topologies(new));
    let all_new: Vec<usize> = new_subs.iter().map(|s| s.id).collect();
    // the sub-topologies of the new file that hold a node or read the topic it writes, or
    // that hold in the new file what held it in the old one (a removed node's sub-topology
    // lives on in its neighbours)
    let touches = |s: &crate::graph::SubTopology, name: &str| {
        s.nodes.iter().any(|n| n == name) || s.topic_inputs.iter().any(|(sink, _)| sink == name)
    };
    let holding = |name: &str| -> Vec<usize> {
        let mut ids: BTreeSet<usize> = new_subs
            .iter()
            .filter(|s| touches(s, name))
            .map(|s| s.id)
            .collect();
        for s in old_subs.iter().filter(|s| touches(s, name)) {
            for other in &s.nodes {
                ids.extend(
                    new_subs
                        .iter()
                        .filter(|n| n.nodes.iter().any(|m| m == other))
                        .map(|n| n.id),
                );
            }
        }
        ids.into_iter().collect()
    };
    let mut changes = Vec::new();
    let (a, b) = (&old.settings, &new.settings);
    let mut settings_keys = Vec::new();
    let mut settings_restart = BTreeSet::new();
    if a.application_id != b.application_id {
        settings_keys.push("application_id".to_owned());
        settings_restart.extend(all_new.iter().copied());
    }
    if a.kafka != b.kafka {
        settings_keys.push("kafka".to_owned());
        settings_restart.extend(all_new.iter().copied());
    }
    for (key, changed) in [
        ("commit_interval", a.commit_interval != b.commit_interval),
        (
            "commit_max_records",
            a.commit_max_records != b.commit_max_records,
        ),
    ] {
        if changed {
            settings_keys.push(key.to_owned());
            // the transactions are the processing loop's: the sub-topology with the source
            settings_restart.extend(new_subs.iter().filter(|s| has_source(new, s)).map(|s| s.id));
        }
    }
    if !settings_keys.is_empty() {
        changes.push(Change {
            label: "settings".into(),
            what: What::Changed(settings_keys),
            applies: Applies::Restart(settings_restart.into_iter().collect()),
        });
    }
    for n in &old.nodes {
        match new.node(&n.name) {
            None => changes.push(Change {
                label: n.label(),
                what: What::Removed,
                applies: Applies::Restart(holding(&n.name)),
            }),
            Some(m) if m.kind != n.kind || m.type_name != n.type_name => changes.push(Change {
                label: m.label(),
                what: What::Rewired,
                applies: Applies::Restart(holding(&n.name)),
            }),
            Some(m) if inputs(m) != inputs(n) => changes.push(Change {
                label: m.label(),
                what: What::Rewired,
                applies: Applies::Restart(holding(&n.name)),
            }),
            Some(m) if m.settings != n.settings => {
                let mut keys = Vec::new();
                changed_keys("", &n.settings, &m.settings, &mut keys);
                changes.push(Change {
                    label: m.label(),
                    what: What::Changed(keys),
                    applies: if m.kind == NodeKind::Processor {
                        Applies::Live
                    } else {
                        Applies::Restart(holding(&n.name))
                    },
                });
            }
            Some(_) => {}
        }
    }
    for m in new.nodes.iter().filter(|m| old.node(&m.name).is_none()) {
        changes.push(Change {
            label: m.label(),
            what: What::Added,
            applies: Applies::Restart(holding(&m.name)),
        });
    }
    let mut restart = BTreeSet::new();
    let mut live = Vec::new();
    for c in &changes {
        match &c.applies {
            Applies::Live => live.push(c.label.clone()),
            Applies::Restart(subs) => restart.extend(subs.iter().copied()),
        }
    }
    let removed = old
        .nodes
        .iter()
        .filter(|n| new.node(&n.name).is_none())
        .map(|n| n.name.clone())
        .collect();
    TopologyDiff {
        changes,
        live,
        restart: restart.into_iter().collect(),
        removed,
    }
}

fn has_source(t: &Topology, s: &crate::graph::SubTopology) -> bool {
    s.nodes
        .iter()
        .any(|n| t.node(n).is_some_and(|n| n.kind == NodeKind::Source))
}

fn inputs(n: &crate::config::Node) -> Vec<String> {
    n.inputs.iter().map(|i| i.to_string()).collect()
}

/// The dotted keys under which `a` and `b` differ (objects compared key by key; anything
/// else as a whole).
fn changed_keys(prefix: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => changed_keys(&path, p, q, out),
                    (None, None) => {}
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(if prefix.is_empty() {
            "(all)".to_owned()
        } else {
            prefix.to_owned()
        }),
        _ => {}
    }
}
