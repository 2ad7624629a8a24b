//! The `clean` processor: turns a validated record into a clean row whose fields the topology
//! file declares. Each field comes from a path of the raw record (or `@name`, a field
//! declared above it), or several joined with a space, and goes through a short list of
//! operations. The declaration is compiled once into a plan that runs on the fields the
//! source read (no DOM) and writes the row's JSON straight into its buffer: the fields in
//! their order, then `source` (the raw record's topic, partition, offset and timestamp).
//! Cleaning never fails: a field with no value is null (or its `missing` text).

use std::any::Any;

use serde::Deserialize;
use weir_topology::build::{BuildContext, BuildError, Built, Processor};
use weir_topology::fields::{write_json_str, Facts, Field, FieldPlan, Parsed};
use weir_topology::schema::{FieldType, Schema, SchemaField};
use weir_topology::{Body, CleanRow, DataType, Envelope, NodeConfig, OutputSpec};

use crate::text::{
    ascii_has, is_squished, is_title_case, nfc, phone_digits_into, squish_into, title_case_into,
    trim, with_number_text,
};
use crate::validate::{is_canonical_time, parse_date};

/// Flattens and cleans validated records into rows with the declared fields.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanConfig {
    /// The row's fields, in order. Each reads `from` and goes through `ops`.
    pub fields: Vec<FieldSpec>,
}

/// One field of a clean row.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// The field's name in the row.
    pub name: String,
    /// A dotted path of the raw record (`name.first`), or `@field` for a field declared above,
    /// or a list of them: those with a value are joined with one space before the operations.
    /// A string is taken as it is, a number or a boolean as its JSON text; anything else
    /// has no value.
    pub from: Sources,
    /// What is done to the value, in order: `nfc` (Unicode NFC), `trim` (trim and collapse
    /// white space), `title` (title case in any script, also after `-` and `'`), `lower`,
    /// `upper`, `digits` (digits only, a leading `+` kept), `date` (`YYYY-MM-DD` from a date
    /// or an RFC 3339 time), `timestamp` (RFC 3339 in UTC with milliseconds), `integer` (a
    /// number, or a string that is one). Text that ends up empty has no value.
    #[serde(default)]
    pub ops: Vec<Op>,
    /// The text a field with no value gets (default: null).
    #[serde(default)]
    pub missing: Option<String>,
}

/// One source path, or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Sources {
    One(String),
    Many(Vec<String>),
}

impl Sources {
    fn list(&self) -> Vec<&str> {
        match self {
            Sources::One(s) => vec![s],
            Sources::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// An operation on a field's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Nfc,
    Trim,
    Title,
    Lower,
    Upper,
    Digits,
    Date,
    Timestamp,
    Integer,
}

impl FieldSpec {
    /// The type the field's value has after its operations.
    fn ty(&self) -> FieldType {
        self.ops
            .iter()
            .rev()
            .find_map(|op| match op {
                Op::Integer => Some(FieldType::Integer),
                Op::Date => Some(FieldType::Date),
                Op::Timestamp => Some(FieldType::Timestamp),
                _ => None,
            })
            .unwrap_or(FieldType::Text)
    }
}

impl CleanConfig {
    /// Problems a file can have: duplicate names, unknown `@` fields, misplaced `integer`.
    fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, f) in self.fields.iter().enumerate() {
            if f.name == "source" {
                out.push(
                    "field \"source\" is the raw record's coordinates: choose another name".into(),
                );
            }
            if self.fields[..i].iter().any(|g| g.name == f.name) {
                out.push(format!("field \"{}\" is declared twice", f.name));
            }
            let sources = f.from.list();
            if sources.is_empty() {
                out.push(format!("field \"{}\" reads from nothing", f.name));
            }
            for s in &sources {
                if let Some(name) = s.strip_prefix('@') {
                    if !self.fields[..i].iter().any(|g| g.name == name) {
                        out.push(format!(
                            "field \"{}\" reads \"@{name}\", which is not a field declared above it",
                            f.name
                        ));
                    }
                } else if s.is_empty() || s.split('.').any(str::is_empty) {
                    out.push(format!("field \"{}\" reads an empty path", f.name));
                }
            }
            if f.ops.contains(&Op::Integer) && (f.ops.len() != 1 || sources.len() != 1) {
                out.push(format!(
                    "field \"{}\": `integer` reads one source and is the only operation",
                    f.name
                ));
            }
            if f.ty() != FieldType::Text && f.missing.is_some() {
                out.push(format!(
                    "field \"{}\": `missing` is text, for text fields only",
                    f.name
                ));
            }
        }
        out
    }
}

impl NodeConfig for CleanConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Valid]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        vec![OutputSpec {
            name: None,
            data_type: DataType::Clean,
        }]
    }

    fn detail(&self) -> String {
        format!("{} fields", self.fields.len())
    }

    fn problems(&self) -> Vec<String> {
        self.check()
    }

    fn fields(&self) -> Vec<String> {
        self.fields
            .iter()
            .flat_map(|f| f.from.list())
            .filter(|s| !s.starts_with('@'))
            .map(str::to_owned)
            .collect()
    }

    fn schema(&self, _input: Option<&Schema>) -> Option<Schema> {
        Some(Schema {
            fields: self
                .fields
                .iter()
                .map(|f| SchemaField {
                    name: f.name.clone(),
                    ty: f.ty(),
                    nullable: f.missing.is_none(),
                })
                .collect(),
        })
    }

    fn build(&self, ctx: &BuildContext) -> Result<Built, BuildError> {
        let problems = self.check();
        if !problems.is_empty() {
            return Err(BuildError::Problems(problems));
        }
        Ok(Built::Processor(Box::new(Clean::new(self, ctx.plan)?)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Where a field's value comes from, compiled.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The index of a raw path in the plan.
    Path(usize),
    /// The index of a field declared above.
    Field(usize),
}

#[derive(Debug, Clone)]
struct Compiled {
    /// The field's name as JSON after `{` or `,` (`,"first_name":`), written as is.
    key: Vec<u8>,
    /// `key` and the opening quote of a string value (`,"first_name":"`).
    key_quoted: Vec<u8>,
    /// A field below reads this one (`@name`): its value is kept for it.
    referenced: bool,
    sources: Vec<Source>,
    ops: Vec<Op>,
    integer: bool,
    /// What a field with no value is written as: its `missing` text as JSON, or `null`.
    missing_json: Vec<u8>,
}

/// The running clean processor.
pub struct Clean {
    fields: Vec<Compiled>,
    /// This record's field values, one after another in `arena`, and whether each needs no
    /// escapes.
    values: Vec<Option<(usize, usize, bool)>>,
    arena: String,
    scratch: String,
    other: String,
    /// What a raw record's row usually measures, to size the next one.
    row_size: usize,
    /// The last topic seen, and the row's text from `,"source"` to its partition's value
    /// for it (a topology's records mostly come from one topic).
    source_prefix: (String, Vec<u8>),
}

impl Clean {
    pub fn new(config: &CleanConfig, plan: &FieldPlan) -> Result<Self, BuildError> {
        let mut fields = Vec::new();
        for (i, f) in config.fields.iter().enumerate() {
            let mut sources = Vec::new();
            for s in f.from.list() {
                sources.push(match s.strip_prefix('@') {
                    Some(name) => Source::Field(
                        config.fields[..i]
                            .iter()
                            .position(|g| g.name == name)
                            .ok_or_else(|| BuildError::UnknownField {
                                name: name.to_owned(),
                                field: f.name.clone(),
                            })?,
                    ),
                    None => Source::Path(
                        plan.index(s)
                            .ok_or_else(|| BuildError::Unread(s.to_owned()))?,
                    ),
                });
            }
            // `{` before the first field, `,` before the others
            let mut key = vec![if i == 0 { b'{' } else { b',' }];
            serde_json::to_writer(&mut key, &f.name).expect("a string");
            key.push(b':');
            let mut key_quoted = key.clone();
            key_quoted.push(b'"');
            fields.push(Compiled {
                key,
                key_quoted,
                referenced: config.fields[i + 1..].iter().any(|g| {
                    g.from
                        .list()
                        .iter()
                        .any(|s| s.strip_prefix('@') == Some(&f.name))
                }),
                sources,
                integer: f.ops.contains(&Op::Integer),
                ops: f.ops.clone(),
                missing_json: match &f.missing {
                    Some(m) => serde_json::to_vec(m).expect("a string"),
                    None => b"null".to_vec(),
                },
            });
        }
        Ok(Self {
            values: Vec::with_capacity(fields.len()),
            fields,
            arena: String::new(),
            scratch: String::new(),
            other: String::new(),
            row_size: 512,
            source_prefix: (String::new(), Vec::new()),
        })
    }

    /// The clean row of a validated record: its fields read from `text`, then `source`.
    pub fn row(&mut self, text: &str, parsed: &Parsed, envelope: &Envelope) -> CleanRow {
        let mut out = weir_topology::record::buffer(self.row_size);
        self.values.clear();
        self.arena.clear();
        for i in 0..self.fields.len() {
            let f = &self.fields[i];
            if f.integer {
                match integer(parsed, text, &f.sources) {
                    Some(n) => put(&mut out, [&f.key, itoa::Buffer::new().format(n).as_bytes()]),
                    None => put(&mut out, [&f.key, b"null"]),
                }
                self.values.push(None);
            } else {
                let value = self.text_value(i, text, parsed);
                let f = &self.fields[i];
                match value {
                    // the record's own text, unescaped: nothing to escape
                    Value::Slice(s, true) => put(&mut out, [&f.key_quoted, s.as_bytes(), b"\""]),
                    Value::Scratch(true) => {
                        put(&mut out, [&f.key_quoted, self.scratch.as_bytes(), b"\""])
                    }
                    Value::Slice(s, false) => {
                        out.extend_from_slice(&f.key);
                        write_json_str(&mut out, s)
                    }
                    Value::Scratch(false) => {
                        out.extend_from_slice(&f.key);
                        write_json_str(&mut out, &self.scratch)
                    }
                    Value::None => put(&mut out, [&f.key, &f.missing_json]),
                }
                let kept = match (f.referenced, value) {
                    (true, Value::Slice(s, plain)) => Some((s, plain)),
                    (true, Value::Scratch(plain)) => Some((self.scratch.as_str(), plain)),
                    _ => None,
                }
                .map(|(v, plain)| {
                    let at = self.arena.len();
                    self.arena.push_str(v);
                    (at, self.arena.len(), plain)
                });
                self.values.push(kept);
            }
        }
        let o = &envelope.origin;
        let mut number = itoa::Buffer::new();
        if self.source_prefix.0 != o.topic || self.source_prefix.1.is_empty() {
            let prefix = &mut self.source_prefix.1;
            prefix.clear();
            prefix.extend_from_slice(if self.fields.is_empty() {
                b"{\"source\":{\"topic\":"
            } else {
                b",\"source\":{\"topic\":"
            });
            write_json_str(prefix, &o.topic);
            prefix.extend_from_slice(b",\"partition\":");
            self.source_prefix.0.clone_from(&o.topic);
        }
        let (mut offset, mut timestamp) = (itoa::Buffer::new(), itoa::Buffer::new());
        put(
            &mut out,
            [
                &self.source_prefix.1,
                number.format(o.partition).as_bytes(),
                b",\"offset\":",
                offset.format(o.offset).as_bytes(),
                b",\"timestamp\":",
                match o.timestamp {
                    Some(t) => timestamp.format(t).as_bytes(),
                    None => b"null",
                },
                b"}}",
            ],
        );
        self.row_size = self.row_size.max(out.len());
        CleanRow { json: out }
    }

    /// Field `i`'s text: its sources joined, then its operations. A single string source
    /// that no operation changes stays where it is in the record; otherwise the text is
    /// made in `scratch`.
    fn text_value<'t>(&mut self, i: usize, text: &'t str, parsed: &'t Parsed) -> Value<'t> {
        let f = &self.fields[i];
        let mut ops = f.ops.iter().peekable();
        if let [Source::Path(p)] = f.sources.as_slice() {
            if let Some((mut s, facts)) = parsed.text_at(text, *p) {
                // in place while nothing changes
                while let Some(op) = ops.peek() {
                    match unchanged(**op, s, facts) {
                        Some(same) => {
                            s = same;
                            ops.next();
                        }
                        None => break,
                    }
                }
                if ops.peek().is_none() {
                    return if s.is_empty() {
                        Value::None
                    } else {
                        Value::Slice(s, facts.plain)
                    };
                }
                self.scratch.clear();
                // the first operation that changes the text writes it straight from the
                // record when it can
                match ops.peek() {
                    Some(Op::Title) => title_case_into(s, &mut self.scratch),
                    Some(Op::Digits) => phone_digits_into(s, &mut self.scratch),
                    _ => {
                        self.scratch.push_str(s);
                        return finish(&mut self.scratch, &mut self.other, ops, facts.plain);
                    }
                }
                ops.next();
                return finish(&mut self.scratch, &mut self.other, ops, facts.plain);
            }
        }
        let s = &mut self.scratch;
        s.clear();
        // no part needs an escape: neither does their join
        let mut plain = true;
        for source in &f.sources {
            let start = s.len();
            if start > 0 {
                s.push(' ');
            }
            let pushed = match source {
                Source::Path(p) => match parsed.text_at(text, *p) {
                    Some((t, facts)) => {
                        s.push_str(t);
                        plain &= facts.plain;
                        true
                    }
                    None => {
                        plain = false;
                        push_text(parsed.get(text, *p), s)
                    }
                },
                Source::Field(j) => match self.values[*j] {
                    Some((a, b, p)) => {
                        s.push_str(&self.arena[a..b]);
                        plain &= p;
                        true
                    }
                    None => false,
                },
            };
            if !pushed {
                s.truncate(start);
            }
        }
        finish(&mut self.scratch, &mut self.other, ops, plain)
    }
}

/// The rest of the operations on `scratch`. `plain`: the text needs no escapes (no
/// operation adds a `"`, a `\\` or a control character, so the result needs none either).
fn finish<'t>(
    scratch: &mut String,
    other: &mut String,
    ops: impl Iterator<Item = &'t Op>,
    plain: bool,
) -> Value<'static> {
    for op in ops {
        if !apply(*op, scratch, other) {
            return Value::None;
        }
    }
    if scratch.is_empty() {
        Value::None
    } else {
        Value::Scratch(plain)
    }
}

/// Appends `parts` to `out` after one capacity check, each short part copied in a few
/// moves rather than by a call to `memcpy` (a row is mostly short keys and values).
#[inline(always)]
fn put<const N: usize>(out: &mut Vec<u8>, parts: [&[u8]; N]) {
    out.reserve(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        let (n, len) = (p.len(), out.len());
        // SAFETY: `reserve` made room for every part after `len`; each copy below writes
        // exactly the `n` bytes `out[len..len + n]` from `p` (overlapping moves write some
        // of them twice), and the source and the destination do not overlap
        unsafe {
            let (src, dst) = (p.as_ptr(), out.as_mut_ptr().add(len));
            match n {
                0 => {}
                1..=3 => {
                    *dst = *src;
                    *dst.add(n / 2) = *src.add(n / 2);
                    *dst.add(n - 1) = *src.add(n - 1);
                }
                4..=7 => overlapping::<u32>(src, dst, n),
                8..=16 => overlapping::<u64>(src, dst, n),
                17..=32 => overlapping::<u128>(src, dst, n),
                _ => std::ptr::copy_nonoverlapping(src, dst, n),
            }
            out.set_len(len + n);
        }
    }
}

/// Copies `n` bytes, at least one `T` and at most two, as two moves of a `T` (the first
/// bytes and the last, overlapping when `n` is less than two).
///
/// # Safety
/// `src` is readable and `dst` writable for `n` bytes, and the two do not overlap.
#[inline(always)]
unsafe fn overlapping<T: Copy>(src: *const u8, dst: *mut u8, n: usize) {
    let last = n - std::mem::size_of::<T>();
    // SAFETY: both moves stay inside the `n` bytes the caller vouches for
    unsafe {
        let (a, b) = (
            src.cast::<T>().read_unaligned(),
            src.add(last).cast::<T>().read_unaligned(),
        );
        dst.cast::<T>().write_unaligned(a);
        dst.add(last).cast::<T>().write_unaligned(b);
    }
}

/// Where a field's text ended up.
#[derive(Clone, Copy)]
enum Value<'t> {
    None,
    /// In the record, as it was; true when it needs no escapes ([`Facts::plain`]).
    Slice(&'t str, bool),
    /// In the processor's scratch buffer; true when it needs no escapes.
    Scratch(bool),
}

/// What `op` leaves of `s` when that is a part of `s` itself (nothing to copy), else `None`.
/// `facts` are those of the string `s` is a part of (they hold for every part).
fn unchanged(op: Op, s: &str, facts: Facts) -> Option<&str> {
    match op {
        Op::Nfc => (facts.ascii || matches!(nfc(s), std::borrow::Cow::Borrowed(_))).then_some(s),
        // ASCII with no space and no control character: nothing to trim or collapse
        Op::Trim => {
            ((facts.ascii && facts.spaceless && facts.plain) || is_squished(s)).then_some(s)
        }
        Op::Lower => {
            ((facts.ascii || s.is_ascii()) && !ascii_has(s.as_bytes(), b'A'..=b'Z')).then_some(s)
        }
        Op::Upper => {
            ((facts.ascii || s.is_ascii()) && !ascii_has(s.as_bytes(), b'a'..=b'z')).then_some(s)
        }
        Op::Date => is_canonical_time(s).then(|| &s[..10]),
        Op::Timestamp => (s.len() == 24 && is_canonical_time(s)).then_some(s),
        Op::Title => is_title_case(s).then_some(s),
        Op::Digits | Op::Integer => None,
    }
}

/// A value as text: a string as it is, a number or boolean as JSON text.
fn push_text(v: Option<Field<'_>>, out: &mut String) -> bool {
    match v {
        Some(Field::Str(s)) => out.push_str(&s),
        Some(Field::Number(n)) => with_number_text(&n, |t| out.push_str(t)),
        Some(Field::Bool(b)) => out.push_str(if b { "true" } else { "false" }),
        _ => return false,
    }
    true
}

/// A number that fits i64, or a string that parses as one (trimmed).
fn integer(parsed: &Parsed, text: &str, sources: &[Source]) -> Option<i64> {
    let Some(Source::Path(p)) = sources.first() else {
        return None;
    };
    match parsed.get(text, *p)? {
        Field::Number(n) => n.as_i64(),
        Field::Str(s) => trim(&s).parse().ok(),
        _ => None,
    }
}

/// Applies one operation to `s` (using `other` as scratch); false when the value is gone.
fn apply(op: Op, s: &mut String, other: &mut String) -> bool {
    other.clear();
    match op {
        Op::Nfc => match nfc(s) {
            std::borrow::Cow::Borrowed(_) => return true,
            std::borrow::Cow::Owned(n) => other.push_str(&n),
        },
        Op::Trim => {
            if is_squished(s) {
                return true;
            }
            squish_into(s, other)
        }
        Op::Title => title_case_into(s, other),
        Op::Lower => {
            if s.is_ascii() {
                s.make_ascii_lowercase();
                return true;
            }
            other.push_str(&s.to_lowercase());
        }
        Op::Upper => {
            if s.is_ascii() {
                s.make_ascii_uppercase();
                return true;
            }
            other.push_str(&s.to_uppercase());
        }
        Op::Digits => phone_digits_into(s, other),
        Op::Date if is_canonical_time(s) => {
            s.truncate(10);
            return true;
        }
        Op::Date => match parse_date(s) {
            Some(d) => {
                let _ = std::fmt::Write::write_fmt(other, format_args!("{d}"));
            }
            None => return false,
        },
        // already what it becomes, or without its milliseconds
        Op::Timestamp if is_canonical_time(s) => {
            if s.len() == 20 {
                s.truncate(19);
                s.push_str(".000Z");
            }
            return true;
        }
        Op::Timestamp => {
            let t = chrono::DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| {
                    d.with_timezone(&chrono::Utc)
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                })
                .or_else(|| parse_date(s).map(|d| format!("{d}T00:00:00.000Z")));
            match t {
                Some(t) => other.push_str(&t),
                None => return false,
            }
        }
        // handled before the text operations
        Op::Integer => return true,
    }
    std::mem::swap(s, other);
    true
}

impl Processor for Clean {
    fn process(&mut self, record: &mut Envelope) -> Option<&'static str> {
        let row = match &record.body {
            Body::Valid(parsed) | Body::Json(parsed) => {
                Some(self.row(&parsed.text, parsed, record))
            }
            // the graph check makes this unreachable; never lose the record
            _ => None,
        };
        if let Some(row) = row {
            record.set_body(Body::Clean(row));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_topology::Origin;

    fn config(toml_fields: serde_json::Value) -> CleanConfig {
        serde_json::from_value(serde_json::json!({ "fields": toml_fields })).unwrap()
    }

    fn run(config: &CleanConfig, raw: &str) -> serde_json::Value {
        let mut plan = FieldPlan::default();
        for p in config.fields() {
            plan.add(&p);
        }
        let mut parsed = Parsed::default();
        plan.read(raw, &mut parsed).unwrap();
        let mut clean = Clean::new(config, &plan).unwrap();
        let env = Envelope::raw(Origin {
            topic: "raw".into(),
            partition: 2,
            offset: 41,
            timestamp: Some(1_700_000_000_000),
            value: Some(raw.as_bytes().to_vec()),
            ..Origin::default()
        });
        let row = clean.row(raw, &parsed, &env);
        serde_json::from_slice(&row.json).unwrap()
    }

    #[test]
    fn fields_come_from_paths_through_operations_in_order() {
        let c = config(serde_json::json!([
            {"name": "first", "from": "name.first", "ops": ["nfc", "trim", "title"], "missing": ""},
            {"name": "last", "from": "name.last", "ops": ["nfc", "trim", "title"], "missing": ""},
            {"name": "full", "from": ["@first", "@last"], "ops": ["nfc", "trim"], "missing": ""},
            {"name": "street", "from": ["street.number", "street.name"], "ops": ["nfc", "trim"]},
            {"name": "email", "from": "email", "ops": ["nfc", "trim", "lower"]},
            {"name": "phone", "from": "phone", "ops": ["nfc", "trim", "digits"]},
            {"name": "dob", "from": "dob", "ops": ["nfc", "trim", "date"]},
            {"name": "at", "from": "registered", "ops": ["nfc", "trim", "timestamp"]},
            {"name": "age", "from": "age", "ops": ["integer"]},
            {"name": "postcode", "from": "postcode", "ops": ["nfc", "trim"]},
            {"name": "nat", "from": "nat", "ops": ["upper"]}
        ]));
        let r = run(
            &c,
            r#"{"name":{"first":"  зоряна ","last":"o'neil-smith"},"street":{"number":4432,"name":"  Main   Street "},
               "email":"Zoryana.ONeil@Example.COM","phone":"(097) 555-12-34","dob":"1993-07-20T09:44:18.674Z",
               "registered":"2015-06-21T11:04:38.419+02:00","age":"31","postcode":48105,"nat":"ua"}"#,
        );
        assert_eq!(r["first"], "Зоряна");
        assert_eq!(r["last"], "O'Neil-Smith");
        assert_eq!(r["full"], "Зоряна O'Neil-Smith");
        assert_eq!(r["street"], "4432 Main Street");
        assert_eq!(r["email"], "zoryana.oneil@example.com");
        assert_eq!(r["phone"], "0975551234");
        assert_eq!(r["dob"], "1993-07-20");
        assert_eq!(r["at"], "2015-06-21T09:04:38.419Z");
        assert_eq!(r["age"], 31);
        assert_eq!(r["postcode"], "48105");
        assert_eq!(r["nat"], "UA");
        assert_eq!(
            r["source"],
            serde_json::json!({"topic": "raw", "partition": 2, "offset": 41, "timestamp": 1_700_000_000_000i64})
        );
    }

    #[test]
    fn absent_fields_are_null_or_their_missing_text() {
        let c = config(serde_json::json!([
            {"name": "first", "from": "name.first", "ops": ["trim"], "missing": ""},
            {"name": "phone", "from": "phone", "ops": ["digits"]},
            {"name": "age", "from": "age", "ops": ["integer"]},
            {"name": "full", "from": ["@first", "name.last"], "ops": ["trim"], "missing": ""}
        ]));
        let r = run(&c, r#"{"name":{"last":"b"},"phone":"call me","age":31.5}"#);
        assert_eq!(r["first"], "");
        assert_eq!(r["phone"], serde_json::Value::Null);
        assert_eq!(r["age"], serde_json::Value::Null);
        assert_eq!(r["full"], "b");
    }

    #[test]
    fn text_that_needs_escapes_is_escaped_through_operations_and_joins() {
        let c = config(serde_json::json!([
            {"name": "first", "from": "first", "ops": ["nfc", "trim", "title"]},
            {"name": "last", "from": "last", "ops": ["nfc", "trim", "title"]},
            {"name": "full", "from": ["@first", "@last"], "ops": ["trim"]},
            {"name": "both", "from": ["first", "last"], "ops": ["lower"]},
            {"name": "gone", "from": "nothing", "missing": "say \"none\""}
        ]));
        // an escaped quote and a tab in one name, plain text in the other
        let r = run(&c, r#"{"first":" zo\"ya\t","last":"kovalenko"}"#);
        assert_eq!(r["first"], "Zo\"ya");
        assert_eq!(r["last"], "Kovalenko");
        assert_eq!(r["full"], "Zo\"ya Kovalenko");
        assert_eq!(r["both"], " zo\"ya\t kovalenko");
        assert_eq!(r["gone"], "say \"none\"");
    }

    #[test]
    fn a_row_names_the_topic_of_its_own_record() {
        let c = config(serde_json::json!([{"name": "a", "from": "a"}]));
        let mut plan = FieldPlan::default();
        plan.add("a");
        let mut clean = Clean::new(&c, &plan).unwrap();
        let mut parsed = Parsed::default();
        let raw = r#"{"a":"x"}"#;
        plan.read(raw, &mut parsed).unwrap();
        for topic in ["one", "two", "t\"3", "one"] {
            let env = Envelope::raw(Origin {
                topic: topic.into(),
                ..Origin::default()
            });
            let row: serde_json::Value =
                serde_json::from_slice(&clean.row(raw, &parsed, &env).json).unwrap();
            assert_eq!(row["source"]["topic"], topic);
        }
    }

    #[test]
    fn mistakes_in_the_declaration_are_named() {
        let c = config(serde_json::json!([
            {"name": "a", "from": "@b"},
            {"name": "a", "from": ""},
            {"name": "n", "from": ["x", "y"], "ops": ["integer"]},
            {"name": "source", "from": "x"}
        ]));
        let p = c.check();
        assert!(
            p.iter()
                .any(|m| m.contains("\"@b\", which is not a field declared above")),
            "{p:?}"
        );
        assert!(p.iter().any(|m| m.contains("declared twice")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("empty path")), "{p:?}");
        assert!(
            p.iter().any(|m| m.contains("`integer` reads one source")),
            "{p:?}"
        );
        assert!(
            p.iter()
                .any(|m| m.contains("\"source\" is the raw record's coordinates")),
            "{p:?}"
        );
    }
}
