//! Reading only the fields the rules name from a raw JSON record, in one pass and without a
//! DOM: a [`FieldPlan`] (the dotted paths every processor of a sub-topology needs, as a tree)
//! drives serde_json's own parser, and each wanted value is kept in [`Parsed`] — a string as
//! the span of the record's text it came from, unless it had escapes — while everything else
//! is parsed (so the record is validated exactly as `serde_json::from_str::<Value>` would,
//! with the same error messages and the same recursion limit) and dropped at once. A
//! processor reads a value back as a [`Field`] that borrows from the record's text.
//!
//! The common records never reach serde_json: a fast reader takes the value's bytes, checks
//! UTF-8 in the same pass ([`FieldPlan::read_value`]) and keeps, with each wanted string,
//! what it saw while it looked for the string's end ([`Facts`]: ASCII, no space, nothing to
//! escape), so the processors need not look again. Whatever it does not take (escapes,
//! exponents, errors) serde_json reads, and the property tests compare the two.
//!
//! What a path finds follows `serde_json::Value` lookups: a later duplicate key replaces the
//! earlier value (with everything below it), and a path through something that is not an
//! object finds nothing.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use crate::spare::Spares;

/// A wanted value, as found.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'a> {
    Null,
    Bool(bool),
    Number(Number),
    /// Borrowed from the record's text, or decoded when it had escapes.
    Str(Cow<'a, str>),
    Array,
    Object,
}

impl Field<'_> {
    /// What a message calls this kind of value.
    pub fn kind(&self) -> &'static str {
        match self {
            Field::Null => "null",
            Field::Bool(_) => "a boolean",
            Field::Number(_) => "a number",
            Field::Str(_) => "a string",
            Field::Array => "an array",
            Field::Object => "an object",
        }
    }
}

/// A wanted value as kept in [`Parsed`]: a string is a span of the record's text.
#[derive(Debug, Clone, PartialEq)]
enum Stored {
    Null,
    Bool(bool),
    Number(Number),
    /// Byte offset and length in the record's text, and what [`scan`] saw of it.
    Span {
        at: u32,
        len: u32,
        seen: u8,
    },
    /// A string with escapes, decoded.
    Owned(Box<str>),
    Array,
    Object,
}

/// What a record holds at the paths of a plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The kind of value the record is when it is not a JSON object.
    pub not_object: Option<&'static str>,
    values: Vec<Option<Stored>>,
    /// The record's value, as text: held here (checked as UTF-8 once) while the record is
    /// JSON on its way through the processors, and given back to [`crate::Origin::value`]
    /// when it becomes something else.
    pub text: String,
}

thread_local! {
    /// Value slots of records that no longer need them, for the next records read on this
    /// thread ([`Parsed::reuse`]).
    static SPARE_VALUES: Spares<Vec<Option<Stored>>, 64> = const { Spares::new() };
}

impl Parsed {
    /// An empty `Parsed` whose value slots a record read before on this thread gave back
    /// ([`Parsed::into_text`]), when there are some: no allocation for the next record.
    pub fn reuse() -> Self {
        Self {
            values: SPARE_VALUES.with(Spares::take).unwrap_or_default(),
            ..Self::default()
        }
    }

    /// The record's text; its value slots go to the next record read on this thread.
    pub fn into_text(self) -> String {
        let mut values = self.values;
        if values.capacity() > 0 {
            values.clear();
            SPARE_VALUES.with(|s| s.keep(values));
        }
        self.text
    }

    /// The value at path `index` of the plan, read back from the record's text.
    pub fn field(&self, index: usize) -> Option<Field<'_>> {
        self.get(&self.text, index)
    }

    /// The value at path `index` of the plan, read back from `text` (what was read).
    #[inline]
    pub fn get<'a>(&'a self, text: &'a str, index: usize) -> Option<Field<'a>> {
        Some(match self.values.get(index)?.as_ref()? {
            Stored::Null => Field::Null,
            Stored::Bool(b) => Field::Bool(*b),
            Stored::Number(n) => Field::Number(n.clone()),
            Stored::Span { at, len, .. } => Field::Str(Cow::Borrowed(
                text.get(*at as usize..(*at + *len) as usize)?,
            )),
            Stored::Owned(s) => Field::Str(Cow::Borrowed(s)),
            Stored::Array => Field::Array,
            Stored::Object => Field::Object,
        })
    }

    /// The string at path `index` of the plan, read back from `text`, with what the reader
    /// learnt of it; `None` when the value there is not a string.
    #[inline]
    pub fn text_at<'a>(&'a self, text: &'a str, index: usize) -> Option<(&'a str, Facts)> {
        match self.values.get(index)?.as_ref()? {
            Stored::Span { at, len, seen } => Some((
                text.get(*at as usize..(*at + *len) as usize)?,
                Facts {
                    ascii: seen & NON_ASCII == 0,
                    spaceless: seen & SPACE == 0,
                    plain: true,
                },
            )),
            Stored::Owned(s) => Some((s, Facts::of(s))),
            _ => None,
        }
    }
}

/// What is known of a string without looking at it again: the reader learns it while it
/// looks for the string's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Every byte is ASCII.
    pub ascii: bool,
    /// No ASCII space (other white space, such as a tab, is not looked for).
    pub spaceless: bool,
    /// Nothing to escape in JSON: no `"`, `\` or control character. True of every string
    /// that the record's text holds without escapes.
    pub plain: bool,
}

impl Facts {
    /// The facts of `s`, found by looking at it.
    pub fn of(s: &str) -> Self {
        let b = s.as_bytes();
        Self {
            ascii: s.is_ascii(),
            spaceless: !b.contains(&b' '),
            plain: first_special(b).is_none(),
        }
    }
}

/// Why a record's value could not be read, with its bytes given back.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("the value is not UTF-8: invalid byte at offset {valid_up_to}")]
    Utf8 { valid_up_to: usize, bytes: Vec<u8> },
    #[error("the value is not JSON: {error}")]
    Json {
        error: serde_json::Error,
        bytes: Vec<u8>,
    },
}

/// The dotted paths to read, as a tree; each path has an index into the values.
#[derive(Debug)]
pub struct FieldPlan {
    root: Node,
    paths: Vec<String>,
    /// Names this plan as it stands (a copy, or a path added, is another): a [`Shape`]
    /// learnt under one plan is not used under another.
    id: u64,
}

/// A fresh [`FieldPlan::id`].
fn plan_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for FieldPlan {
    fn default() -> Self {
        Self {
            root: Node::default(),
            paths: Vec::new(),
            id: plan_id(),
        }
    }
}

impl Clone for FieldPlan {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            paths: self.paths.clone(),
            id: plan_id(),
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    /// (key, the path's index if a path ends here, the paths below)
    children: Vec<(String, Option<usize>, Node)>,
    /// Each child's [`tag`], in the same order: most keys are ruled out by it alone.
    tags: Vec<u32>,
    /// The child whose tag hashes to each slot, plus one ([`EMPTY`], or [`SHARED`] when
    /// several do): a key is found, or ruled out, with one look.
    slots: [u8; 64],
    /// Every index at or below this node (cleared when a duplicate key replaces it).
    below: Vec<usize>,
    /// [`Node::below`] as bits, when every index is under 64 (else 0: look at each).
    below_bits: u64,
}

/// A key's length and first and last bytes, packed into a word.
#[inline]
fn tag(key: &[u8]) -> u32 {
    let (first, last) = (key.first().copied(), key.last().copied());
    (key.len().min(0xffff) as u32) << 16
        | u32::from(first.unwrap_or(0)) << 8
        | u32::from(last.unwrap_or(0))
}

impl Default for Node {
    fn default() -> Self {
        Self {
            children: Vec::new(),
            tags: Vec::new(),
            slots: [EMPTY; 64],
            below: Vec::new(),
            below_bits: 0,
        }
    }
}

/// A slot of [`Node::slots`] no child hashes to.
const EMPTY: u8 = 0;
/// A slot of [`Node::slots`] that several children hash to (or a child past 253).
const SHARED: u8 = u8::MAX;

/// The slot of a tag.
#[inline]
fn slot(tag: u32) -> usize {
    (tag.wrapping_mul(0x9e37_79b1) >> 26) as usize
}

impl Node {
    /// The wanted child named `key`.
    #[inline(always)]
    fn child(&self, key: &[u8]) -> Option<usize> {
        let t = tag(key);
        match self.slots[slot(t)] {
            EMPTY => None,
            SHARED => self
                .tags
                .iter()
                .enumerate()
                .find(|(c, tag)| **tag == t && self.children[*c].0.as_bytes() == key)
                .map(|(c, _)| c),
            c => {
                let c = usize::from(c - 1);
                (self.tags[c] == t && self.children[c].0.as_bytes() == key).then_some(c)
            }
        }
    }

    /// Notes that path `index` ends at or below this node.
    fn add_below(&mut self, index: usize) {
        self.below.push(index);
        self.below_bits = if self.below.iter().all(|&i| i < 64) {
            self.below.iter().fold(0, |bits, &i| bits | 1 << i)
        } else {
            0
        };
    }

    /// Adds a child named `key`; its index.
    fn push(&mut self, key: &str) -> usize {
        let c = self.children.len();
        self.children.push((key.to_owned(), None, Node::default()));
        let t = tag(key.as_bytes());
        self.tags.push(t);
        let slot = &mut self.slots[slot(t)];
        *slot = match (*slot, u8::try_from(c + 1)) {
            (EMPTY, Ok(n)) if n != SHARED => n,
            _ => SHARED,
        };
        c
    }
}

impl FieldPlan {
    /// The index of `path` (`location.street.number`), adding it when new.
    pub fn add(&mut self, path: &str) -> usize {
        if let Some(i) = self.paths.iter().position(|p| p == path) {
            return i;
        }
        let index = self.paths.len();
        self.paths.push(path.to_owned());
        self.id = plan_id();
        let mut node = &mut self.root;
        let keys: Vec<&str> = path.split('.').collect();
        for (depth, key) in keys.iter().enumerate() {
            node.add_below(index);
            let at = match node.child(key.as_bytes()) {
                Some(at) => at,
                None => node.push(key),
            };
            let entry = &mut node.children[at];
            if depth == keys.len() - 1 {
                entry.1 = Some(index);
                entry.2.add_below(index);
            }
            node = &mut entry.2;
        }
        index
    }

    /// The index of a path added before.
    pub fn index(&self, path: &str) -> Option<usize> {
        self.paths.iter().position(|p| p == path)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Reads `text` (a record's value) into `parsed`: the kind of value when it is not an
    /// object; `Err` exactly when `serde_json::from_str::<Value>` fails, with its error.
    pub fn read(&self, text: &str, parsed: &mut Parsed) -> Result<(), serde_json::Error> {
        self.read_shaped(text, parsed, &mut Shape::default())
    }

    /// [`FieldPlan::read`] that learns the records' keys in `shape` and checks the next
    /// record's against them first (records of one topic mostly have one shape).
    pub fn read_shaped(
        &self,
        text: &str,
        parsed: &mut Parsed,
        shape: &mut Shape,
    ) -> Result<(), serde_json::Error> {
        shape.follow(self.id);
        parsed.not_object = None;
        parsed.values.clear();
        parsed.values.resize(self.paths.len(), None);
        if fast(
            &self.root,
            text.as_bytes(),
            &mut parsed.values,
            false,
            shape,
        )
        .is_some()
        {
            return Ok(());
        }
        // anything the fast reader does not take (escapes, exponents, errors, deep nesting,
        // a record that is not an object): serde_json reads it, and says what is wrong
        self.read_with_serde(text, parsed)
    }

    /// Reads a record's value as it came (bytes): checked as UTF-8 in the same pass when the
    /// fast reader takes it, else as `String::from_utf8` and [`FieldPlan::read`] would. The
    /// text is kept in `parsed.text`; when it is not UTF-8 or not JSON, the bytes come back
    /// with the reason.
    pub fn read_value(&self, bytes: Vec<u8>, parsed: &mut Parsed) -> Result<(), Unreadable> {
        self.read_value_shaped(bytes, parsed, &mut Shape::default())
    }

    /// [`FieldPlan::read_value`] with a [`Shape`], as [`FieldPlan::read_shaped`].
    pub fn read_value_shaped(
        &self,
        bytes: Vec<u8>,
        parsed: &mut Parsed,
        shape: &mut Shape,
    ) -> Result<(), Unreadable> {
        shape.follow(self.id);
        parsed.not_object = None;
        parsed.values.clear();
        parsed.values.resize(self.paths.len(), None);
        if fast(&self.root, &bytes, &mut parsed.values, true, shape).is_some() {
            // SAFETY: the fast reader took only ASCII outside strings, and checked each
            // string with a byte beyond ASCII with `str::from_utf8`; UTF-8 pieces joined by
            // ASCII bytes are UTF-8
            parsed.text = unsafe { String::from_utf8_unchecked(bytes) };
            return Ok(());
        }
        let text = String::from_utf8(bytes).map_err(|e| Unreadable::Utf8 {
            valid_up_to: e.utf8_error().valid_up_to(),
            bytes: e.into_bytes(),
        })?;
        match self.read_with_serde(&text, parsed) {
            Ok(()) => {
                parsed.text = text;
                Ok(())
            }
            Err(error) => Err(Unreadable::Json {
                error,
                bytes: text.into_bytes(),
            }),
        }
    }

    /// [`FieldPlan::read`] with serde_json's parser: every record, every error.
    pub fn read_with_serde(
        &self,
        text: &str,
        parsed: &mut Parsed,
    ) -> Result<(), serde_json::Error> {
        parsed.not_object = None;
        parsed.values.clear();
        parsed.values.resize(self.paths.len(), None);
        let mut de = serde_json::Deserializer::from_str(text);
        let kind = Root {
            node: &self.root,
            values: &mut parsed.values,
            base: text.as_ptr() as usize,
        }
        .deserialize(&mut de)?;
        de.end()?;
        parsed.not_object = kind;
        Ok(())
    }
}

/// The fast reader: the common records — an object of objects, arrays, strings without
/// escapes, integers, fractions without exponents, literals — read on the bytes in one loop
/// with a stack of open containers. It gives up (`None`) on anything else, so what it reads
/// it reads as serde_json would; the property tests compare the two.
///
/// With `utf8` it also checks that the bytes are UTF-8, in the same pass: outside strings it
/// takes ASCII only, and a string with a byte beyond ASCII is checked on its own (UTF-8
/// pieces joined by ASCII are UTF-8). A wanted string records whether it is ASCII.
fn fast(
    root: &Node,
    b: &[u8],
    values: &mut [Option<Stored>],
    utf8: bool,
    shape: &mut Shape,
) -> Option<()> {
    // open containers: the node of an object whose wanted paths go on (None: nothing
    // wanted below), and whether it is an array
    // (on the stack: a record is read without an allocation)
    let mut stack: [(Option<&Node>, bool); FAST_DEPTH] = [(None, false); FAST_DEPTH];
    let mut depth = 0;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    stack[0] = (Some(root), false);
    depth += 1;
    let mut first = true;
    // the paths under 64 kept so far, as bits
    let mut kept = 0u64;
    // the object members read so far (the index of the next one in `shape`)
    let mut member = 0usize;
    loop {
        if b.get(i).is_some_and(|&c| c <= b' ') {
            i = skip_ws(b, i);
        }
        let (node, array) = stack[depth - 1];
        let close = if array { b']' } else { b'}' };
        // the end of the container, or (after a member) the comma before the next one
        if *b.get(i)? == close {
            depth -= 1;
            i += 1;
            if depth == 0 {
                return (skip_ws(b, i) == b.len()).then_some(());
            }
            first = false;
            continue;
        }
        if !first {
            if *b.get(i)? != b',' {
                return None;
            }
            i += 1;
            if b.get(i).is_some_and(|&c| c <= b' ') {
                i = skip_ws(b, i);
            }
        }
        first = false;
        // an object member's key, or an array's element
        let mut wanted: Option<(&Option<usize>, &Node)> = None;
        if !array {
            if b.get(i)? != &b'"' {
                return None;
            }
            let at = node.map_or(0, |n| n as *const Node as usize);
            // the key the last record had here, and what it found: the same bytes under
            // the same node find the same child (its quotes and colon are part of the
            // bytes, and a learnt key has no escape and is UTF-8)
            let (c, colon) = match shape
                .keys
                .get(member)
                .filter(|k| k.node == at && k.matches(b, i))
            {
                Some(k) => {
                    i += usize::from(k.len);
                    (k.child, k.colon)
                }
                None => {
                    let (end, _) = checked_string::<false>(b, i + 1, utf8)?;
                    let c = node.and_then(|node| node.child(&b[i + 1..end]));
                    shape.learn(member, at, &b[i..], end + 1 - i, c);
                    i = end + 1;
                    (c, false)
                }
            };
            member += 1;
            if let (Some(node), Some(c)) = (node, c) {
                let (_, index, below) = &node.children[c];
                // a later duplicate key replaces everything the earlier one held
                // (nothing to do unless something below was kept already)
                if below.below_bits == 0 || kept & below.below_bits != 0 {
                    for j in &below.below {
                        values[*j] = None;
                    }
                }
                wanted = Some((index, below));
            }
            if !colon {
                // `"key":value` with no white space is the common case
                if b.get(i) != Some(&b':') {
                    i = skip_ws(b, i);
                    if b.get(i)? != &b':' {
                        return None;
                    }
                }
                i += 1;
            }
            if b.get(i).is_some_and(|&c| c <= b' ') {
                i = skip_ws(b, i);
            }
        }
        // where a wanted value is kept
        let slot = match wanted {
            Some((Some(j), _)) => Some(*j),
            _ => None,
        };
        match *b.get(i)? {
            b'"' => {
                if let Some(j) = slot {
                    let (end, seen) = checked_string::<true>(b, i + 1, utf8)?;
                    kept |= 1u64.checked_shl(j as u32).unwrap_or(0);
                    values[j] = Some(Stored::Span {
                        at: u32::try_from(i + 1).ok()?,
                        len: u32::try_from(end - i - 1).ok()?,
                        seen,
                    });
                    i = end + 1;
                } else {
                    // a string no rule wants: its end (and UTF-8) only
                    let (end, _) = checked_string::<false>(b, i + 1, utf8)?;
                    i = end + 1;
                }
            }
            c @ (b'{' | b'[') => {
                if depth >= FAST_DEPTH {
                    return None;
                }
                let below = wanted
                    .map(|(_, below)| below)
                    .filter(|below| c == b'{' && !below.children.is_empty());
                if let Some(j) = slot {
                    kept |= 1u64.checked_shl(j as u32).unwrap_or(0);
                    values[j] = Some(if c == b'{' {
                        Stored::Object
                    } else {
                        Stored::Array
                    });
                }
                stack[depth] = (below, c == b'[');
                depth += 1;
                first = true;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let negative = b[i] == b'-';
                let start = i;
                if negative {
                    i += 1;
                }
                match b.get(i)? {
                    b'0' => i += 1,
                    b'1'..=b'9' => {
                        while b.get(i).is_some_and(u8::is_ascii_digit) {
                            i += 1;
                        }
                    }
                    _ => return None,
                }
                let digits_end = i;
                let mut integer = true;
                if b.get(i) == Some(&b'.') {
                    integer = false;
                    i += 1;
                    let frac = i;
                    while b.get(i).is_some_and(u8::is_ascii_digit) {
                        i += 1;
                    }
                    if i == frac {
                        return None;
                    }
                }
                // exponents and very long numbers are serde_json's (it may find them out
                // of range)
                if matches!(b.get(i), Some(b'e' | b'E')) || i - start > 300 {
                    return None;
                }
                if let Some(j) = slot {
                    if !integer {
                        return None;
                    }
                    let digits = &b[start + usize::from(negative)..digits_end];
                    // at most 20 digits: u64 holds 19 of any, 20 checked
                    let magnitude = digits.iter().try_fold(0u64, |n, d| {
                        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
                    })?;
                    let n: Number = if negative {
                        // serde_json reads -0 as a float, and what i64 cannot hold too
                        match magnitude {
                            0 => return None,
                            m if m <= 1 << 63 => (m.wrapping_neg() as i64).into(),
                            _ => return None,
                        }
                    } else {
                        magnitude.into()
                    };
                    kept |= 1u64.checked_shl(j as u32).unwrap_or(0);
                    values[j] = Some(Stored::Number(n));
                }
            }
            _ => {
                let rest = &b[i..];
                let (v, len) = if rest.starts_with(b"true") {
                    (Stored::Bool(true), 4)
                } else if rest.starts_with(b"false") {
                    (Stored::Bool(false), 5)
                } else if rest.starts_with(b"null") {
                    (Stored::Null, 4)
                } else {
                    return None;
                };
                if let Some(j) = slot {
                    kept |= 1u64.checked_shl(j as u32).unwrap_or(0);
                    values[j] = Some(v);
                }
                i += len;
            }
        }
    }
}

/// The first byte at or after `i` that is not JSON white space.
#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = b.get(i) {
        i += 1;
    }
    i
}

/// A string's closing quote after its opening one at `i - 1`, and what [`scan`] saw of it;
/// with `utf8`, `None` also when it is not UTF-8.
#[inline(always)]
fn checked_string<const SPACES: bool>(b: &[u8], i: usize, utf8: bool) -> Option<(usize, u8)> {
    let (end, seen) = scan_string::<SPACES>(b, i)?;
    if utf8 && seen & NON_ASCII != 0 && std::str::from_utf8(&b[i..end]).is_err() {
        return None;
    }
    Some((end, seen))
}

/// Nesting the fast reader takes (deeper records go to serde_json, which refuses 128).
const FAST_DEPTH: usize = 32;

/// The keys of the records read before, member by member in the order they came: the fast
/// reader checks the next record's key against the one the last record had at the same
/// place (sixteen bytes compared at once) before it looks for the key's end and looks it up.
/// Records of one topic mostly have one shape; a key that differs is read as before and
/// learnt.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// The [`FieldPlan::id`] of the plan the keys were learnt under.
    plan: u64,
    keys: Vec<LearntKey>,
}

/// The most members of a record a [`Shape`] learns.
const SHAPE_MEMBERS: usize = 512;

#[derive(Debug, Clone, Copy)]
struct LearntKey {
    /// The node the key was read under (its address; 0 for none: nothing wanted below).
    node: usize,
    /// The key's bytes from its opening quote to its closing quote, and the colon after it
    /// when it came straight after; zero-padded to 16 bytes.
    bytes: u128,
    /// The bytes of `bytes` that count (0: nothing learnt; longer keys are not).
    mask: u128,
    len: u8,
    /// The colon is part of `bytes`.
    colon: bool,
    /// The child of `node` the key names.
    child: Option<usize>,
}

impl LearntKey {
    /// `b` holds this key's bytes at `i`.
    #[inline(always)]
    fn matches(&self, b: &[u8], i: usize) -> bool {
        if self.len == 0 {
            return false;
        }
        match b.get(i..i + 16) {
            Some(chunk) => {
                let v = u128::from_le_bytes(chunk.try_into().expect("sixteen bytes"));
                (v ^ self.bytes) & self.mask == 0
            }
            None => {
                let len = usize::from(self.len);
                b.get(i..i + len) == Some(&self.bytes.to_le_bytes()[..len])
            }
        }
    }
}

impl Shape {
    /// Forgets what was learnt under another plan than `plan` (its nodes are not this one's).
    #[inline]
    fn follow(&mut self, plan: u64) {
        if self.plan != plan {
            self.keys.clear();
            self.plan = plan;
        }
    }

    /// Learns member `member`'s key: `key` starts at its opening quote, `len` bytes up to and
    /// including its closing quote (the colon is taken too when it comes next).
    fn learn(&mut self, member: usize, node: usize, key: &[u8], len: usize, child: Option<usize>) {
        if member > self.keys.len() || member >= SHAPE_MEMBERS {
            return;
        }
        let colon = key.get(len) == Some(&b':');
        let len = len + usize::from(colon);
        let mut bytes = [0u8; 16];
        let (bytes, mask, len) = match key.get(..len).filter(|_| len <= 16) {
            Some(k) => {
                bytes[..len].copy_from_slice(k);
                let mask = if len == 16 {
                    u128::MAX
                } else {
                    (1u128 << (8 * len)) - 1
                };
                (u128::from_le_bytes(bytes), mask, len as u8)
            }
            None => (0, 0, 0),
        };
        let learnt = LearntKey {
            node,
            bytes,
            mask,
            len,
            colon,
            child,
        };
        match self.keys.get_mut(member) {
            Some(k) => *k = learnt,
            None => self.keys.push(learnt),
        }
    }
}

/// Writes `s` as a JSON string, exactly as serde_json does: with nothing to escape (no `"`,
/// `\`, control character) quoted as it is, else by serde_json itself.
#[inline]
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if first_special(s.as_bytes()).is_none() {
        write_plain_json_str(out, s);
    } else {
        serde_json::to_writer(out, s).expect("a string into memory");
    }
}

/// [`write_json_str`] of a string known to need no escapes ([`Facts::plain`]): quoted as it
/// is.
#[inline]
pub fn write_plain_json_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(first_special(s.as_bytes()).is_none(), "{s:?}");
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The first `"`, `\` or control character of `b`, eight bytes at a time (what is written
/// is mostly short): in each word, a byte equal to `"` or `\` or below 0x20 sets the high
/// bit of its byte in `hit` (bytes above a hit may be set too, never below it, so the
/// lowest is the first).
#[inline]
fn first_special(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    const QUOTES: u64 = ONES * b'"' as u64;
    const SLASHES: u64 = ONES * b'\\' as u64;
    let mut i = 0;
    while let Some(word) = b.get(i..i + 8) {
        let v = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let (q, s) = (v ^ QUOTES, v ^ SLASHES);
        let hit = (q.wrapping_sub(ONES) & !q)
            | (s.wrapping_sub(ONES) & !s)
            | (v.wrapping_sub(ONES * 0x20) & !v);
        if hit & HIGH != 0 {
            return Some(i + ((hit & HIGH).trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b[i..]
        .iter()
        .position(|&c| matches!(c, b'"' | b'\\' | 0..=0x1f))
        .map(|p| i + p)
}

/// A string's end after its opening quote at `i`: the closing quote, or `None` at an escape
/// or a control character.
#[cfg(test)]
fn string_end(b: &[u8], i: usize) -> Option<usize> {
    scan_string::<true>(b, i).map(|(end, _)| end)
}

/// [`string_end`], and what [`scan_for`] saw of the string.
#[inline(always)]
fn scan_string<const SPACES: bool>(b: &[u8], i: usize) -> Option<(usize, u8)> {
    let (end, seen) = scan_for::<SPACES>(b, i);
    (b.get(end) == Some(&b'"')).then_some((end, seen))
}

/// [`scan`] saw a byte beyond ASCII.
const NON_ASCII: u8 = 1;
/// [`scan`] saw an ASCII space.
const SPACE: u8 = 2;

/// The first `"`, `\` or control character of `b` at or after `from` (`b.len()` when there
/// is none), and what the bytes before it hold ([`NON_ASCII`], and [`SPACE`] when `SPACES`).
/// Sixteen bytes at a time with SSE2 (part of every x86-64), the last few one at a time.
#[inline(always)]
fn scan_for<const SPACES: bool>(b: &[u8], from: usize) -> (usize, u8) {
    let mut at = from;
    let mut seen = 0u8;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8, _mm_setzero_si128,
        };
        // SAFETY: SSE2 is enabled on every x86-64 target; each load reads the 16 bytes
        // `b[at..at + 16]`, inside `b`
        unsafe {
            let quote = _mm_set1_epi8(b'"' as i8);
            let slash = _mm_set1_epi8(b'\\' as i8);
            let control = _mm_set1_epi8(0x1f);
            let space = _mm_set1_epi8(b' ' as i8);
            // the whole chunks passed (their high bits), and their spaces
            let mut high = _mm_setzero_si128();
            let mut spaces = _mm_setzero_si128();
            while at + 16 <= b.len() {
                let v = _mm_loadu_si128(b.as_ptr().add(at).cast());
                let specials = _mm_or_si128(
                    _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, slash)),
                    // at most 0x1f: the smaller of it and 0x1f is itself
                    _mm_cmpeq_epi8(_mm_min_epu8(v, control), v),
                );
                let hit = _mm_movemask_epi8(specials) as u32;
                if hit != 0 {
                    let before = (1u32 << hit.trailing_zeros()) - 1;
                    let high =
                        _mm_movemask_epi8(high) as u32 | _mm_movemask_epi8(v) as u32 & before;
                    if high != 0 {
                        seen |= NON_ASCII;
                    }
                    if SPACES {
                        let here = _mm_movemask_epi8(_mm_cmpeq_epi8(v, space)) as u32;
                        if _mm_movemask_epi8(spaces) as u32 | here & before != 0 {
                            seen |= SPACE;
                        }
                    }
                    return (at + hit.trailing_zeros() as usize, seen);
                }
                high = _mm_or_si128(high, v);
                if SPACES {
                    spaces = _mm_or_si128(spaces, _mm_cmpeq_epi8(v, space));
                }
                at += 16;
            }
            if _mm_movemask_epi8(high) != 0 {
                seen |= NON_ASCII;
            }
            if SPACES && _mm_movemask_epi8(spaces) != 0 {
                seen |= SPACE;
            }
        }
    }
    for (k, &c) in b.get(at..).unwrap_or_default().iter().enumerate() {
        match c {
            b'"' | b'\\' | 0..=0x1f => return (at + k, seen),
            b' ' if SPACES => seen |= SPACE,
            0x80.. => seen |= NON_ASCII,
            _ => {}
        }
    }
    (b.len().max(at), seen)
}

/// [`scan_for`] with spaces.
#[inline(always)]
fn scan(b: &[u8], from: usize) -> (usize, u8) {
    scan_for::<true>(b, from)
}

/// The record itself: an object read with the plan, or the kind of what it is instead.
struct Root<'p, 'v> {
    node: &'p Node,
    values: &'v mut Vec<Option<Stored>>,
    /// Where the record's text starts: a borrowed string is kept as its offset from here.
    base: usize,
}

impl<'de> DeserializeSeed<'de> for Root<'_, '_> {
    type Value = Option<&'static str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Root<'_, '_> {
    type Value = Option<&'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Some("a boolean"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Some("a number"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // as serde_json's Value: a float it cannot hold is null
        Ok(Some(if Number::from_f64(v).is_some() {
            "a number"
        } else {
            "null"
        }))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Some("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Some("null"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Some("an array"))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_object(self.node, self.values, self.base, map)?;
        Ok(None)
    }
}

/// Reads an object's members: wanted keys are kept or descended into, the rest skipped.
fn read_object<'de, A: MapAccess<'de>>(
    node: &Node,
    values: &mut Vec<Option<Stored>>,
    base: usize,
    mut map: A,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key_seed(KeySeed(node))? {
        match key {
            None => {
                map.next_value::<Skip>()?;
            }
            Some(at) => {
                let (_, index, below) = &node.children[at];
                // a later duplicate key replaces everything the earlier one held
                for i in &below.below {
                    values[*i] = None;
                }
                let field = map.next_value_seed(ValueSeed {
                    node: below,
                    values,
                    base,
                })?;
                if let Some(i) = index {
                    values[*i] = Some(field);
                }
            }
        }
    }
    Ok(())
}

/// A key: the position of the wanted child it names, if any.
struct KeySeed<'p>(&'p Node);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(v.as_bytes()))
    }
}

/// A wanted value: kept as a [`Field`]; an object with wanted paths below is descended into.
struct ValueSeed<'p, 'v> {
    node: &'p Node,
    values: &'v mut Vec<Option<Stored>>,
    base: usize,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, '_> {
    type Value = Stored;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, '_> {
    type Value = Stored;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Stored::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Stored::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Stored::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        // as serde_json's Value: a float it cannot hold is null
        Ok(Number::from_f64(v).map_or(Stored::Null, Stored::Number))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        let at = (v.as_ptr() as usize).wrapping_sub(self.base);
        Ok(match (u32::try_from(at), u32::try_from(v.len())) {
            (Ok(at), Ok(len)) => Stored::Span {
                at,
                len,
                seen: scan(v.as_bytes(), 0).1,
            },
            _ => Stored::Owned(v.into()),
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Stored::Owned(v.into()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Stored::Owned(v.into_boxed_str()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Stored::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Stored::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Stored::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        read_object(self.node, self.values, self.base, map)?;
        Ok(Stored::Object)
    }
}

/// A value nobody wants: parsed through `deserialize_any`, as a `Value` would be (the same
/// checks and recursion limit; serde's `IgnoredAny` takes a laxer path), and dropped.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_key::<Skip>()?.is_some() {
            map.next_value::<Skip>()?;
        }
        Ok(Skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(paths: &[&str]) -> FieldPlan {
        let mut p = FieldPlan::default();
        for path in paths {
            p.add(path);
        }
        p
    }

    fn get(p: &FieldPlan, text: &str, parsed: &Parsed, path: &str) -> Option<Field<'static>> {
        parsed.get(text, p.index(path).unwrap()).map(|f| match f {
            Field::Str(s) => Field::Str(Cow::Owned(s.into_owned())),
            Field::Null => Field::Null,
            Field::Bool(b) => Field::Bool(b),
            Field::Number(n) => Field::Number(n),
            Field::Array => Field::Array,
            Field::Object => Field::Object,
        })
    }

    #[test]
    fn a_learnt_shape_reads_every_record_as_serde_json_does() {
        let p = plan(&["name.first", "name.last", "email", "a", "x.name"]);
        let records = [
            r#"{"name":{"first":"Ana","last":"Li"},"email":"a@b.co"}"#,
            r#"{"name":{"first":"Ana","last":"Li"},"email":"a@b.co"}"#,
            // a key changed, shortened, longer than sixteen bytes, escaped, spaced
            r#"{"namf":{"first":"Ana","last":"Li"},"email":"a@b.co"}"#,
            r#"{"nam":{"first":"Bo"},"email":"b@b.co"}"#,
            r#"{"name":{"first_name_that_is_long":"Bo","last":"Ek"},"email":"c@b.co"}"#,
            r#"{"na\u006de":{"first":"Cy","last":"Do"},"email":"d@b.co"}"#,
            r#"{"name" :{"first":"Cy","last":"Do"},"email" : "e@b.co"}"#,
            r#"{"name":{"first":"Cy","last":"Do"},"email":"f@b.co"}"#,
            r#"{"name" :{"first":"Cy","last":"Do"},"email" : "e@b.co"}"#,
            // the same keys under other nodes, and duplicates that replace what came before
            r#"{"x":{"first":"zz","name":"in x"}}"#,
            r#"{"first":"no","name":{"email":"no","first":"Di"},"email":"g@b.co"}"#,
            r#"{"name":{"first":"Ed","last":"Fa"},"name":{"last":"Go"},"email":"h@b.co"}"#,
            r#"{"name":{"first":"Ed","last":"Fa"},"name":{"last":"Go"},"email":"h@b.co"}"#,
            r#"{"x":{"name":"in x"},"name":{"name":"not wanted","first":"Hu"}}"#,
            r#"{"name":{"first":"Ana","last":"Li"},"email":"a@b.co"}"#,
            r#"{"x":{"first":"zz"}}"#,
            r#"{"name" :{"first" :"Cy","last":"Do"},"email" : "e@b.co"}"#,
            r#"{"name" :{"first" :"Cy","last":"Do"},"email" : "e@b.co"}"#,
            // at the very end of the bytes (fewer than sixteen left), cut, or not an object
            r#"{"a":1}"#,
            r#"{"a":1}"#,
            r#"{"a""#,
            r#"{"a":"#,
            r#"{"email":"#,
            r#"["a",{"a":1}]"#,
            r#"{"name":{"first":"Ana","last":"Li"},"email":"a@b.co"}"#,
        ];
        // what the fast reader leaves to serde_json (an escape, a cut, not an object)
        let not_fast = [
            r#"{"na\u006de":{"first":"Cy","last":"Do"},"email":"d@b.co"}"#,
            r#"{"a""#,
            r#"{"a":"#,
            r#"{"email":"#,
            r#"["a",{"a":1}]"#,
        ];
        let mut shape = Shape::default();
        for round in 0..2 {
            for text in records {
                let fast_reads = !not_fast.contains(&text);
                let mut slow = Parsed::default();
                let want = p.read_with_serde(text, &mut slow);
                // the fast reader itself: it takes what it should, and reads it alike
                let mut values = vec![None; p.paths.len()];
                let took = fast(&p.root, text.as_bytes(), &mut values, false, &mut shape);
                assert_eq!(took.is_some(), fast_reads, "round {round}: {text}");
                if took.is_some() {
                    assert_eq!(values, slow.values, "round {round}: {text}");
                }
                // and through the plan, with the shape learnt so far
                let mut shaped = Parsed::default();
                let got = p.read_shaped(text, &mut shaped, &mut shape);
                assert_eq!(
                    got.as_ref().map_err(ToString::to_string),
                    want.as_ref().map_err(ToString::to_string),
                    "round {round}: {text}"
                );
                if got.is_ok() {
                    assert_eq!(shaped, slow, "round {round}: {text}");
                }
            }
        }
        // what was learnt was used: every member of a repeated record is known
        let text = records[0];
        let mut values = vec![None; p.paths.len()];
        fast(&p.root, text.as_bytes(), &mut values, false, &mut shape).unwrap();
        let known = shape.keys.iter().take(4).filter(|k| k.len > 0).count();
        assert_eq!(known, 4, "{:?}", shape.keys);
    }

    #[test]
    fn a_shape_learnt_under_a_plan_is_not_used_once_the_plan_changes() {
        let mut p = plan(&["a"]);
        let mut shape = Shape::default();
        let text = r#"{"a":1,"b":2}"#;
        let mut parsed = Parsed::default();
        p.read_shaped(text, &mut parsed, &mut shape).unwrap();
        // `b` was learnt as a key nobody wants; now it is wanted
        let b = p.add("b");
        p.read_shaped(text, &mut parsed, &mut shape).unwrap();
        assert_eq!(parsed.get(text, b), Some(Field::Number(2.into())));
    }

    #[test]
    fn reads_only_the_wanted_paths_borrowing_the_text() {
        let p = plan(&[
            "name.first",
            "name.last",
            "email",
            "location.street.number",
            "dob.age",
        ]);
        let text = r#"{"name":{"title":"Ms","first":"Ana","last":"Li\u00e9"},"email":"a@b.co",
            "location":{"street":{"number":12,"name":"x"}},"dob":{"age":31.5},"extra":[1,{"a":null}]}"#;
        let mut parsed = Parsed::default();
        p.read(text, &mut parsed).unwrap();
        assert_eq!(parsed.not_object, None);
        assert!(matches!(
            parsed.get(text, 0),
            Some(Field::Str(Cow::Borrowed("Ana")))
        ));
        assert_eq!(
            get(&p, text, &parsed, "name.last"),
            Some(Field::Str("Lié".into()))
        );
        assert_eq!(
            get(&p, text, &parsed, "email"),
            Some(Field::Str("a@b.co".into()))
        );
        assert_eq!(
            get(&p, text, &parsed, "location.street.number"),
            Some(Field::Number(12.into()))
        );
        assert_eq!(
            get(&p, text, &parsed, "dob.age"),
            Some(Field::Number(Number::from_f64(31.5).unwrap()))
        );
    }

    #[test]
    fn the_sixteen_byte_scan_finds_what_the_byte_scan_finds() {
        let slow = |b: &[u8]| {
            let at = b
                .iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))?;
            (b[at] == b'"').then_some(at)
        };
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"abc".to_vec(),
            "zoë and Леся, 2000\"".as_bytes().to_vec(),
        ];
        for n in 0..40 {
            for special in [
                b'"', b'\\', 0x00, 0x1f, b'\n', 0x20, 0x7f, 0x80, 0xff, 0x21, 0x5b, 0x5d, 0x01,
            ] {
                let mut v = vec![b'a'; n];
                v.push(special);
                v.extend_from_slice(b"tail\"");
                cases.push(v.clone());
                v[0] = 0xe9;
                cases.push(v.clone());
                v[0] = b' ';
                cases.push(v.clone());
                if n > 1 {
                    v[n - 1] = 0xc3;
                    cases.push(v);
                }
            }
        }
        for c in &cases {
            assert_eq!(string_end(c, 0), slow(c), "{c:?}");
            // what it saw before the end: bytes beyond ASCII, spaces
            let end = c
                .iter()
                .position(|c| matches!(c, b'"' | b'\\' | 0..=0x1f))
                .unwrap_or(c.len());
            let before = &c[..end];
            let seen = (u8::from(!before.is_ascii()) * NON_ASCII)
                | (u8::from(before.contains(&b' ')) * SPACE);
            assert_eq!(scan(c, 0), (end, seen), "{c:?}");
            assert_eq!(scan_for::<false>(c, 0), (end, seen & NON_ASCII), "{c:?}");
            assert_eq!(first_special(c), (end < c.len()).then_some(end), "{c:?}");
            if let Ok(text) = std::str::from_utf8(c) {
                let mut ours = Vec::new();
                write_json_str(&mut ours, text);
                assert_eq!(ours, serde_json::to_vec(text).unwrap());
            }
        }
    }

    #[test]
    fn a_value_read_as_bytes_is_checked_as_utf8_would_be() {
        let p = plan(&["name.first", "n"]);
        let mut cases: Vec<Vec<u8>> = Vec::new();
        let pieces: [&[u8]; 12] = [
            b"\xff",
            b"\xc3",
            b"\xc3\xa9",
            b"\xe2\x82",
            b"\xe2\x82\xac",
            b"\xed\xa0\x80",
            b"\xc0\xaf",
            b"\xf0\x9f\x98\x80",
            b"\xf4\x90\x80\x80",
            b"\x80",
            "зоряна".as_bytes(),
            b"abcdefgh",
        ];
        for piece in pieces {
            for at in [
                "{\"name\":{\"first\":\"@\"},\"n\":1}",
                "{\"name\":{\"first\":\"Ana @ Li and more text\"}}",
                "{\"@\":1,\"name\":{\"first\":\"x\"}}",
                "{\"name\":{\"first\":\"x\"}}@",
                "{\"name\":@{\"first\":\"x\"}}",
                "{\"n\":\"tail@",
                "{\"n\":\"esc\\n@\"}",
            ] {
                let (a, b) = at.split_once('@').unwrap();
                cases.push([a.as_bytes(), piece, b.as_bytes()].concat());
            }
        }
        for bytes in cases {
            let mut fast = Parsed::default();
            let got = p.read_value(bytes.clone(), &mut fast);
            let want = String::from_utf8(bytes.clone()).map_err(|e| e.utf8_error().valid_up_to());
            match (got, want) {
                (Ok(()), Ok(text)) => {
                    let mut slow = Parsed::default();
                    p.read_with_serde(&text, &mut slow).unwrap();
                    assert_eq!(fast.text, text);
                    assert_eq!(fast.field(0), slow.get(&text, 0), "{text:?}");
                    assert_eq!(fast.field(1), slow.get(&text, 1), "{text:?}");
                }
                (
                    Err(Unreadable::Utf8 {
                        valid_up_to,
                        bytes: back,
                    }),
                    Err(at),
                ) => {
                    assert_eq!((valid_up_to, &back), (at, &bytes));
                }
                (Err(Unreadable::Json { error, bytes: back }), Ok(text)) => {
                    let want = serde_json::from_str::<serde_json::Value>(&text).unwrap_err();
                    assert_eq!(error.to_string(), want.to_string());
                    assert_eq!(back, bytes);
                }
                (got, want) => panic!("{bytes:?}: {got:?} against {want:?}"),
            }
        }
    }

    #[test]
    fn lookups_follow_value_semantics() {
        let p = plan(&["name.first", "name.last", "name"]);
        let mut v = Parsed::default();
        // a later duplicate replaces the whole earlier value
        let text = r#"{"name":{"first":"a","last":"b"},"name":{"last":"c"}}"#;
        p.read(text, &mut v).unwrap();
        assert_eq!(get(&p, text, &v, "name.first"), None);
        assert_eq!(get(&p, text, &v, "name.last"), Some(Field::Str("c".into())));
        assert_eq!(get(&p, text, &v, "name"), Some(Field::Object));
        // through something that is not an object: nothing
        let text = r#"{"name":"x"}"#;
        p.read(text, &mut v).unwrap();
        assert_eq!(get(&p, text, &v, "name.first"), None);
        assert_eq!(get(&p, text, &v, "name"), Some(Field::Str("x".into())));
        // not an object at all
        for (text, kind) in [("[1,2]", "an array"), (" 7 ", "a number"), ("null", "null")] {
            p.read(text, &mut v).unwrap();
            assert_eq!(v.not_object, Some(kind));
        }
    }

    #[test]
    fn errors_are_serde_json_value_errors() {
        let p = plan(&["name.first"]);
        let mut v = Parsed::default();
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        for text in [
            "{\"name\": {\"first\": \"Ann\"",
            "",
            "{} trailing",
            "{\"name\":\"\\ud800\"}",
            &deep,
            "{\"a\":1e400}",
            "{\"a\":\"tab\there\"}",
        ] {
            let want = serde_json::from_str::<serde_json::Value>(text).unwrap_err();
            let got = p.read(text, &mut v).unwrap_err();
            assert_eq!(got.to_string(), want.to_string(), "{text:?}");
        }
    }
}
