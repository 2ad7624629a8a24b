//! The topology file: TOML with `sources`, `processors` and `sinks` tables, each node with a
//! `type` and `inputs`, plus application settings and `[[tests]]`.
//!
//! Loading is a pure pass that collects every problem, each at its `file:line:column`, before
//! anything connects to the network. Components never see the graph: the loader strips
//! `type` and `inputs` and hands the rest of a node's table to the component's own config
//! struct (serde, `deny_unknown_fields`).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};
use toml_edit::{ImDocument, Item, Table};

use crate::component::{NodeConfig, NodeKind, Registry};
use crate::diagnostic::{did_you_mean, Diagnostic, SourceMap};
use crate::duration::Duration;
use crate::interpolate::interpolate;

/// Application-wide settings at the top of a topology file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    /// Names the application: the Kafka consumer group, the prefix of transactional ids and
    /// the `application` header of dead letters.
    pub application_id: String,
    /// How often a transaction commits (records, dead letters and input offsets together).
    #[serde(default = "default_commit_interval")]
    pub commit_interval: Duration,
    /// A transaction also commits once it holds this many input records (20,000 by default:
    /// at 270,000 records/s, 5,000 made five transactions for each `commit_interval` and
    /// measured 0.81 of a transactional pass-through against 0.94).
    #[serde(default = "default_commit_max_records")]
    pub commit_max_records: usize,
    /// Kafka client settings shared by every node.
    #[serde(default)]
    pub kafka: KafkaSettings,
}

fn default_commit_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_commit_max_records() -> usize {
    20_000
}

/// Kafka client settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port[,host:port]`.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_servers: String,
    /// Extra librdkafka settings for every client, e.g. `{ "socket.timeout.ms" = "10000" }`.
    #[serde(default)]
    pub options: HashMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            bootstrap_servers: default_bootstrap(),
            options: HashMap::new(),
        }
    }
}

fn default_bootstrap() -> String {
    std::env::var("WEIR_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// `inputs = ["validate.invalid"]`: a node and, optionally, one of its named outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    pub node: String,
    pub output: Option<String>,
    /// Byte offset of the input's text, for diagnostics.
    pub offset: usize,
}

impl InputRef {
    pub fn parse(text: &str, offset: usize) -> Self {
        match text.split_once('.') {
            Some((node, output)) => Self {
                node: node.to_owned(),
                output: Some(output.to_owned()),
                offset,
            },
            None => Self {
                node: text.to_owned(),
                output: None,
                offset,
            },
        }
    }
}

impl std::fmt::Display for InputRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.output {
            Some(o) => write!(f, "{}.{o}", self.node),
            None => f.write_str(&self.node),
        }
    }
}

/// One node of the graph.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// The component type (`kafka`, `validate`, …).
    pub type_name: String,
    pub inputs: Vec<InputRef>,
    pub config: Box<dyn NodeConfig>,
    /// The node's own settings as written (its table without `type` and `inputs`, with
    /// `${VAR}` resolved): what [`crate::diff`] compares between two versions of a file.
    pub settings: Value,
    /// Byte offset of the node's name in the file.
    pub offset: usize,
    /// The node's own config has errors (already reported): its outputs are unknown, so
    /// graph checks that depend on them are skipped rather than reported twice.
    pub broken: bool,
}

impl Node {
    /// `sink "users"`: how messages name a node.
    pub fn label(&self) -> String {
        format!("{} \"{}\"", self.kind, self.name)
    }

    pub fn config<T: 'static>(&self) -> Option<&T> {
        self.config.as_any().downcast_ref::<T>()
    }
}

/// The stand-in config of a node whose own config has errors.
#[derive(Debug)]
struct Unchecked;

impl NodeConfig for Unchecked {
    fn accepts(&self) -> &'static [crate::DataType] {
        &[
            crate::DataType::Json,
            crate::DataType::Valid,
            crate::DataType::Clean,
            crate::DataType::Failed,
        ]
    }
    fn outputs(&self) -> Vec<crate::OutputSpec> {
        Vec::new()
    }
    fn build(
        &self,
        _: &crate::build::BuildContext,
    ) -> Result<crate::Built, crate::build::BuildError> {
        Err(crate::build::BuildError::Unchecked)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// A test case written in the topology file, run offline by `weir test`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the case shows.
    pub name: String,
    /// The raw record value, as text (usually JSON).
    #[serde(default)]
    pub input: Option<String>,
    /// The raw record value as hex bytes, for values that are not UTF-8 (`"ff fe 00"`).
    #[serde(default)]
    pub input_hex: Option<String>,
    /// The sink the record must reach.
    pub expect_output: String,
    /// The exact reason codes of a dead letter, in order.
    #[serde(default)]
    pub expect_reasons: Option<Vec<String>>,
    /// Fields of the clean record and their expected values.
    #[serde(default)]
    pub expect_fields: Option<Map<String, Value>>,
}

impl TestCase {
    /// The raw bytes of the case's input.
    pub fn input_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.input, &self.input_hex) {
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(h)) => decode_hex(h),
            _ => Err("give exactly one of `input` and `input_hex`".to_owned()),
        }
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if let Some(bad) = digits.iter().find(|c| !c.is_ascii_hexdigit()) {
        return Err(format!("invalid hex digit {bad:?} in \"{text}\""));
    }
    if digits.len() % 2 != 0 {
        return Err(format!("odd number of hex digits in \"{text}\""));
    }
    Ok(digits
        .chunks(2)
        .map(|pair| {
            let hi = pair[0].to_digit(16).unwrap_or(0);
            let lo = pair[1].to_digit(16).unwrap_or(0);
            (hi * 16 + lo) as u8
        })
        .collect())
}

/// A topology file, loaded and checked.
#[derive(Debug)]
pub struct Topology {
    pub settings: AppSettings,
    /// Nodes in file order: sources, then processors, then sinks.
    pub nodes: Vec<Node>,
    pub tests: Vec<TestCase>,
    pub map: SourceMap,
}

impl Topology {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

/// A topology file that could not be loaded: every problem found.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{} error(s) in the topology file", .0.len())]
    Invalid(Vec<Diagnostic>),
}

const TOP_LEVEL_KEYS: &[&str] = &[
    "application_id",
    "commit_interval",
    "commit_max_records",
    "kafka",
    "sources",
    "processors",
    "sinks",
    "tests",
];

/// Parses a topology from text and checks each node (`env` resolves `${VAR}` references):
/// the topology and what is wrong with it so far, or only what is wrong when it has no
/// settings to stand on. [`crate::load`] adds the checks of the graph.
pub(crate) fn parse(
    file: &str,
    text: &str,
    registry: &Registry,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Topology, Vec<Diagnostic>), LoadError> {
    let map = SourceMap::new(file, text);
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let msg = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            return Err(LoadError::Invalid(vec![
                map.at(e.span().map(|s| s.start), format!("invalid TOML: {msg}"))
            ]));
        }
    };
    let mut loader = Loader {
        map: &map,
        env,
        diags: Vec::new(),
        unresolved: Vec::new(),
    };
    let root = doc.as_table();

    // top level: unknown keys first, then the settings
    let mut settings_json = Map::new();
    let mut spans = Spans::default();
    for (key, item) in root.iter() {
        if !TOP_LEVEL_KEYS.contains(&key) {
            loader.error(
                key_offset(root, key),
                format!(
                    "unknown key \"{key}\" at the top of the topology{}",
                    did_you_mean(key, TOP_LEVEL_KEYS.iter().copied())
                ),
            );
            continue;
        }
        if matches!(key, "sources" | "processors" | "sinks" | "tests") {
            continue;
        }
        if let Some(off) = key_offset(root, key) {
            spans.keys.insert(key.to_owned(), off);
        }
        if let Some(v) = loader.item_json(item, key, &mut spans) {
            settings_json.insert(key.to_owned(), v);
        }
    }
    let settings: Option<AppSettings> = loader.deserialize(
        serde_path_to_error::deserialize,
        Value::Object(settings_json),
        "the topology",
        0,
        &spans,
    );

    let mut nodes = Vec::new();
    for kind in [NodeKind::Source, NodeKind::Processor, NodeKind::Sink] {
        let section = kind.section();
        let Some(item) = root.get(section) else {
            continue;
        };
        let Some(table) = item.as_table_like() else {
            loader.error(
                item.span().map(|s| s.start),
                format!("\"{section}\" must be a table of nodes, like [{section}.name]"),
            );
            continue;
        };
        for (name, node_item) in table.iter() {
            let offset = table
                .get_key_value(name)
                .and_then(|(k, _)| k.span())
                .map(|s| s.start)
                .unwrap_or(0);
            if let Some(node) = loader.node(kind, name, node_item, offset, registry) {
                nodes.push(node);
            }
        }
    }

    let tests = loader.tests(root);

    // node names are unique across sections
    let mut seen: HashMap<&str, &Node> = HashMap::new();
    for node in &nodes {
        if let Some(first) = seen.get(node.name.as_str()) {
            loader.error(
                Some(node.offset),
                format!(
                    "{} has the same name as {}; node names must be unique",
                    node.label(),
                    first.label()
                ),
            );
        } else {
            seen.insert(&node.name, node);
        }
    }

    let mut diags = loader.diags;
    let Some(settings) = settings else {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(LoadError::Invalid(diags));
    };
    let topology = Topology {
        settings,
        nodes,
        tests,
        map: map.clone(),
    };
    Ok((topology, diags))
}

fn key_offset(table: &Table, key: &str) -> Option<usize> {
    table
        .get_key_value(key)
        .and_then(|(k, _)| k.span())
        .map(|s| s.start)
}

/// Byte offsets of keys and values, by path (`topic`, `max_lengths.name.first`, `[2]`).
#[derive(Debug, Default)]
struct Spans {
    keys: HashMap<String, usize>,
    values: HashMap<String, usize>,
}

struct Loader<'a> {
    map: &'a SourceMap,
    env: &'a dyn Fn(&str) -> Option<String>,
    diags: Vec<Diagnostic>,
    /// Paths whose `${VAR}` could not be resolved (reported once, left out of the config).
    unresolved: Vec<String>,
}

impl Loader<'_> {
    fn error(&mut self, offset: Option<usize>, message: String) {
        self.diags.push(self.map.at(offset, message));
    }

    /// Converts a TOML item to JSON, interpolating `${VAR}` in strings, recording spans.
    fn item_json(&mut self, item: &Item, path: &str, spans: &mut Spans) -> Option<Value> {
        match item {
            Item::None => None,
            Item::Value(v) => self.value_to_json(v, path, spans),
            Item::Table(t) => {
                Some(self.table_to_json(t.iter(), |k| t.get_key_value(k), path, spans))
            }
            Item::ArrayOfTables(a) => Some(Value::Array(
                a.iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let p = format!("{path}[{i}]");
                        self.table_to_json(t.iter(), |k| t.get_key_value(k), &p, spans)
                    })
                    .collect(),
            )),
        }
    }

    fn table_to_json<'t>(
        &mut self,
        iter: impl Iterator<Item = (&'t str, &'t Item)>,
        get: impl Fn(&str) -> Option<(&'t toml_edit::Key, &'t Item)>,
        path: &str,
        spans: &mut Spans,
    ) -> Value {
        let mut obj = Map::new();
        for (k, item) in iter {
            let p = join(path, k);
            if let Some(off) = get(k).and_then(|(key, _)| key.span()).map(|s| s.start) {
                spans.keys.insert(p.clone(), off);
            }
            if let Some(v) = self.item_json(item, &p, spans) {
                obj.insert(k.to_owned(), v);
            }
        }
        Value::Object(obj)
    }

    fn value_to_json(
        &mut self,
        v: &toml_edit::Value,
        path: &str,
        spans: &mut Spans,
    ) -> Option<Value> {
        let offset = v.span().map(|s| s.start);
        if let Some(o) = offset {
            spans.values.insert(path.to_owned(), o);
        }
        Some(match v {
            toml_edit::Value::String(s) => match interpolate(s.value(), self.env) {
                Ok(text) => Value::String(text),
                Err(e) => {
                    self.error(offset, e.to_string());
                    self.unresolved.push(path.to_owned());
                    return None;
                }
            },
            toml_edit::Value::Integer(i) => Value::from(*i.value()),
            toml_edit::Value::Float(f) => serde_json::Number::from_f64(*f.value())
                .map(Value::Number)
                .unwrap_or(Value::Null),
            toml_edit::Value::Boolean(b) => Value::Bool(*b.value()),
            toml_edit::Value::Datetime(d) => Value::String(d.value().to_string()),
            toml_edit::Value::Array(a) => Value::Array(
                a.iter()
                    .enumerate()
                    .filter_map(|(i, x)| self.value_to_json(x, &format!("{path}[{i}]"), spans))
                    .collect(),
            ),
            toml_edit::Value::InlineTable(t) => {
                let mut obj = Map::new();
                for (k, x) in t.iter() {
                    let p = join(path, k);
                    if let Some(off) = t.key(k).and_then(|key| key.span()).map(|s| s.start) {
                        spans.keys.insert(p.clone(), off);
                    }
                    if let Some(j) = self.value_to_json(x, &p, spans) {
                        obj.insert(k.to_owned(), j);
                    }
                }
                Value::Object(obj)
            }
        })
    }

    /// Deserializes a config with `parse`, reporting every unknown key (each with a
    /// suggestion), then the first other problem. `what` names the owner in messages
    /// (`sink "users"`); `spans` locate keys and values by path.
    fn deserialize<R>(
        &mut self,
        parse: impl Fn(Value) -> Result<R, crate::component::ParseError>,
        mut value: Value,
        what: &str,
        owner_offset: usize,
        spans: &Spans,
    ) -> Option<R> {
        let mut removed: Vec<String> = Vec::new();
        for _ in 0..64 {
            let err = match parse(value.clone()) {
                Ok(c) => return Some(c),
                Err(e) => e,
            };
            let path = path_string(err.path());
            let message = err.inner().to_string();
            if let Some((field, expected)) = unknown_field(&message) {
                let parent = if path == field {
                    ""
                } else {
                    path.strip_suffix(&field)
                        .map(|p| p.trim_end_matches('.'))
                        .unwrap_or("")
                };
                let full = join(parent, &field);
                self.error(
                    spans.keys.get(&full).copied().or(Some(owner_offset)),
                    format!(
                        "unknown key \"{full}\" in {what}{}",
                        did_you_mean(&field, expected.iter().map(String::as_str))
                    ),
                );
                if !remove_path(&mut value, parent, &field) {
                    return None;
                }
                continue;
            }
            if let Some(field) = missing_field(&message) {
                if removed.contains(&field) || self.unresolved.contains(&field) {
                    return None;
                }
                self.error(
                    Some(owner_offset),
                    format!("{what} is missing the required key \"{field}\""),
                );
                return None;
            }
            let offset = spans
                .values
                .get(&path)
                .or_else(|| spans.keys.get(&path))
                .copied()
                .unwrap_or(owner_offset);
            let key = if path.is_empty() {
                String::new()
            } else {
                format!(" key \"{path}\":")
            };
            self.error(Some(offset), format!("{what}:{key} {message}"));
            // drop the bad value and look for more problems; its absence is not one
            let (parent, field) = path.rsplit_once('.').unwrap_or(("", path.as_str()));
            if path.contains('[') || !remove_path(&mut value, parent, field) {
                return None;
            }
            removed.push(path.clone());
        }
        None
    }

    fn node(
        &mut self,
        kind: NodeKind,
        name: &str,
        item: &Item,
        offset: usize,
        registry: &Registry,
    ) -> Option<Node> {
        let label = format!("{kind} \"{name}\"");
        if name.contains('.') || name.is_empty() {
            self.error(
                Some(offset),
                format!("{label}: a node name must be non-empty and have no \".\""),
            );
        }
        let mut spans = Spans::default();
        let Some(Value::Object(mut obj)) = self.item_json(item, "", &mut spans) else {
            self.error(
                Some(offset),
                format!("{label} must be a table, like [{}.{name}]", kind.section()),
            );
            return None;
        };
        let type_name = match obj.remove("type") {
            Some(Value::String(t)) => t,
            Some(_) => {
                let off = spans.values.get("type").copied();
                self.error(off, format!("{label}: \"type\" must be a string"));
                return None;
            }
            None => {
                self.error(
                    Some(offset),
                    format!("{label} is missing the required key \"type\""),
                );
                return None;
            }
        };
        let type_offset = spans.values.get("type").copied();
        let component = match registry.get(kind, &type_name) {
            Some(c) => Some(*c),
            None => {
                let names = registry.names(kind);
                self.error(
                    type_offset,
                    format!(
                        "unknown type \"{type_name}\" for {label}{} ({kind} types: {})",
                        did_you_mean(&type_name, names.iter().copied()),
                        names.join(", ")
                    ),
                );
                None
            }
        };

        let mut inputs = Vec::new();
        match obj.remove("inputs") {
            None if kind == NodeKind::Source => {}
            None => self.error(Some(offset), format!("{label} has no inputs")),
            Some(_) if kind == NodeKind::Source => self.error(
                spans.keys.get("inputs").copied(),
                format!("{label} takes no inputs: a source reads from outside the graph"),
            ),
            Some(Value::Array(items)) => {
                if items.is_empty() {
                    self.error(
                        spans.values.get("inputs").copied(),
                        format!("{label} has no inputs"),
                    );
                }
                for (i, v) in items.into_iter().enumerate() {
                    let off = spans.values.get(&format!("inputs[{i}]")).copied();
                    match v {
                        Value::String(s) => inputs.push(InputRef::parse(&s, off.unwrap_or(offset))),
                        _ => self.error(off, format!("{label}: each input must be a string")),
                    }
                }
            }
            Some(_) => self.error(
                spans.values.get("inputs").copied(),
                format!("{label}: \"inputs\" must be a list of node names"),
            ),
        }

        let settings = Value::Object(obj);
        let config = component
            .and_then(|c| self.deserialize(c.parse, settings.clone(), &label, offset, &spans));
        if let Some(c) = &config {
            for problem in c.problems() {
                self.error(Some(offset), format!("{label}: {problem}"));
            }
        }
        let broken = config.is_none();
        Some(Node {
            name: name.to_owned(),
            kind,
            type_name,
            inputs,
            config: config.unwrap_or_else(|| Box::new(Unchecked)),
            settings,
            offset,
            broken,
        })
    }

    fn tests(&mut self, root: &Table) -> Vec<TestCase> {
        let Some(item) = root.get("tests") else {
            return Vec::new();
        };
        let mut spans = Spans::default();
        let Some(Value::Array(cases)) = self.item_json(item, "tests", &mut spans) else {
            self.error(
                item.span().map(|s| s.start).or(key_offset(root, "tests")),
                "\"tests\" must be an array of tables, written [[tests]]".to_owned(),
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, case) in cases.into_iter().enumerate() {
            let prefix = format!("tests[{i}]");
            let offset = spans
                .keys
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .map(|(_, v)| *v)
                .min()
                .unwrap_or(0);
            let name = case
                .get("name")
                .and_then(Value::as_str)
                .map(|n| format!("test \"{n}\""))
                .unwrap_or_else(|| format!("test #{}", i + 1));
            let case_spans = Spans {
                keys: sub_spans(&spans.keys, &prefix),
                values: sub_spans(&spans.values, &prefix),
            };
            if let Some(tc) = self.deserialize::<TestCase>(
                serde_path_to_error::deserialize,
                case,
                &name,
                offset,
                &case_spans,
            ) {
                if let Err(e) = tc.input_bytes() {
                    self.error(Some(offset), format!("{name}: {e}"));
                }
                out.push(tc);
            }
        }
        out
    }
}

fn sub_spans(all: &HashMap<String, usize>, prefix: &str) -> HashMap<String, usize> {
    all.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .and_then(|r| r.strip_prefix('.'))
                .map(|r| (r.to_owned(), *v))
        })
        .collect()
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_owned(),
        (_, true) => a.to_owned(),
        _ => format!("{a}.{b}"),
    }
}

fn path_string(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            serde_path_to_error::Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            serde_path_to_error::Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            serde_path_to_error::Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            serde_path_to_error::Segment::Unknown => {}
        }
    }
    out
}

/// `unknown field `x`, expected one of `a`, `b`` → ("x", ["a", "b"]).
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect();
    Some((field.to_owned(), expected))
}

/// `missing field `x`` → "x".
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(f, _)| f.to_owned())
}

/// Removes `field` from the object at `parent` (a dotted path; "" is the root).
fn remove_path(value: &mut Value, parent: &str, field: &str) -> bool {
    let mut cur = value;
    if !parent.is_empty() {
        for seg in parent.split('.') {
            match cur.get_mut(seg) {
                Some(v) => cur = v,
                None => return false,
            }
        }
    }
    cur.as_object_mut()
        .map(|o| o.remove(field).is_some())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_serde_messages() {
        assert_eq!(
            unknown_field("unknown field `tpoic`, expected one of `type`, `topic`"),
            Some(("tpoic".into(), vec!["type".into(), "topic".into()]))
        );
        assert_eq!(
            unknown_field("unknown field `x`, expected `topic`"),
            Some(("x".into(), vec!["topic".into()]))
        );
        assert_eq!(missing_field("missing field `table`"), Some("table".into()));
    }

    #[test]
    fn decodes_hex_inputs() {
        assert_eq!(decode_hex("ff fe 00").unwrap(), vec![0xff, 0xfe, 0]);
        assert!(decode_hex("f").is_err());
        assert!(decode_hex("zz").is_err());
        // characters of more than one byte are errors, not a panic
        assert_eq!(
            decode_hex("ä1").unwrap_err(),
            "invalid hex digit 'ä' in \"ä1\""
        );
        assert!(decode_hex("1ä").is_err());
        assert!(
            decode_hex("\u{3000}ff").is_ok(),
            "any white space is skipped"
        );
    }
}
