//! A clean record on its way to the table ([`Row`]): its values in one buffer ([`Values`]),
//! the batch's rows encoded for binary `COPY` while the batch before is written
//! ([`Tuples`]), and reading the fields of a record parsed one level deep ([`RawRecord`]).

use bytes::{BufMut, Bytes, BytesMut};

use super::binary;
use super::window::Millis;

use super::table::Table;

/// One clean record on its way to the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub partition: i32,
    pub offset: i64,
    /// The record time (the Kafka timestamp), milliseconds.
    pub timestamp: Millis,
    pub window_start: Millis,
    /// One text value per mapped column, in [`Table::columns`] order; `None` is NULL.
    pub values: Values,
    /// Why the record could not be read as a clean record, if it could not.
    pub undecodable: Option<String>,
    /// A value holds a NUL character, which PostgreSQL's text cannot store (found when the
    /// row is made, on the reading thread, not in the write).
    pub nul: bool,
    /// Why its time keeps it out of the windows (reason code, sentence), if it does.
    pub time_problem: Option<(&'static str, String)>,
    /// The Kafka key and value as read, for a dead letter (the value is empty when a column
    /// holds it: see [`Row::raw`]).
    pub key: Option<Vec<u8>>,
    pub raw: Vec<u8>,
    /// The column whose value is the record's text (`@record`), when it holds it.
    pub record_column: Option<usize>,
    /// Where the row's binary `COPY` tuple is in its batch's [`Tuples`] (`None`: not encoded,
    /// it goes the staged way).
    pub tuple: Option<std::ops::Range<usize>>,
}

/// A row's column values as text, in one buffer (one allocation a row, not one a value: a
/// batch being written and the next being read are both in memory).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Values {
    text: String,
    /// Each value's place in `text`; `None` is NULL.
    spans: Vec<Option<(u32, u32)>>,
}

impl Values {
    pub fn with_capacity(values: usize, bytes: usize) -> Values {
        Values {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(values),
        }
    }

    pub fn push(&mut self, value: Option<&str>) {
        self.spans.push(value.map(|v| {
            let start = self.text.len() as u32;
            self.text.push_str(v);
            (start, self.text.len() as u32)
        }));
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Value `i`; `None` when it is NULL (or there is no such column).
    pub fn get(&self, i: usize) -> Option<&str> {
        let (start, end) = (*self.spans.get(i)?)?;
        self.text.get(start as usize..end as usize)
    }

    pub fn iter(&self) -> impl Iterator<Item = Option<&str>> + '_ {
        self.spans
            .iter()
            .map(|s| s.and_then(|(start, end)| self.text.get(start as usize..end as usize)))
    }

    /// Whether any value holds `c`.
    pub fn contains(&self, c: char) -> bool {
        self.text.contains(c)
    }
}

impl<S: AsRef<str>> FromIterator<Option<S>> for Values {
    fn from_iter<I: IntoIterator<Item = Option<S>>>(values: I) -> Values {
        let mut out = Values::default();
        for v in values {
            out.push(v.as_ref().map(AsRef::as_ref));
        }
        out
    }
}

/// A batch's rows encoded for binary `COPY` before the batch is written: the sink's reading
/// thread encodes the next batch while the one before is written, so that the write sends
/// tuples made in advance. Measured: encoding each piece as it was sent, PostgreSQL waited for
/// the sink and the batches' `COPY`s took 1.25× as long; sent made, they take as long as
/// `COPY` of the same rows.
#[derive(Debug, Default)]
pub struct Tuples {
    pub(super) buf: Bytes,
    /// How many rows they were made for.
    pub(super) rows: usize,
}

impl Tuples {
    /// Encodes `rows` for `table`'s binary `COPY` (none when a column's type is not encoded
    /// here) and sets each row's [`Row::tuple`]; a row that could not be read, or with a value
    /// in a form not encoded here, gets none.
    pub fn encode(table: &Table, rows: &mut [Row]) -> Tuples {
        let buf = match &table.binary {
            Some(kinds) => encode_tuples(kinds, rows),
            None => {
                rows.iter_mut().for_each(|r| r.tuple = None);
                Bytes::new()
            }
        };
        Tuples {
            buf,
            rows: rows.len(),
        }
    }

    /// How many rows they were made for.
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn of(&self, row: &Row) -> Option<&[u8]> {
        self.buf.get(row.tuple.clone()?)
    }
}

/// Encodes each row as a binary `COPY` tuple of `kinds` into one buffer and sets its
/// [`Row::tuple`].
pub(super) fn encode_tuples(kinds: &[binary::Kind], rows: &mut [Row]) -> Bytes {
    // sized once: a batch's buffer is not copied as it grows
    let size: usize = rows
        .iter()
        .map(|r| {
            2 + r
                .values
                .iter()
                .map(|v| 5 + v.map_or(0, str::len))
                .sum::<usize>()
        })
        .sum();
    let mut buf = BytesMut::with_capacity(size);
    'rows: for row in rows.iter_mut() {
        row.tuple = None;
        if row.values.len() != kinds.len() {
            continue;
        }
        let start = buf.len();
        buf.put_i16(kinds.len() as i16);
        for (kind, v) in kinds.iter().zip(row.values.iter()) {
            let encoded = match v {
                None => Some(binary::Value::Null),
                Some(text) => binary::encode(*kind, text),
            };
            match encoded {
                Some(e) => binary::put(&mut buf, &e),
                None => {
                    buf.truncate(start);
                    continue 'rows;
                }
            }
        }
        row.tuple = Some(start..buf.len());
    }
    buf.freeze()
}

impl Row {
    /// A row of a clean record at `partition`/`offset`: nothing wrong with its time or
    /// values, no key or value kept for a dead letter, not encoded yet.
    pub fn new(
        (partition, offset): (i32, i64),
        timestamp: Millis,
        window_start: Millis,
        values: Values,
    ) -> Row {
        Row {
            partition,
            offset,
            timestamp,
            window_start,
            values,
            undecodable: None,
            nul: false,
            time_problem: None,
            key: None,
            raw: Vec::new(),
            record_column: None,
            tuple: None,
        }
    }

    /// The Kafka value as read: kept once per row, in the `@record` column when there is one
    /// (a batch being written and the next one being read are both in memory).
    pub fn raw(&self) -> &[u8] {
        self.record_column
            .and_then(|i| self.values.get(i))
            .map_or(&self.raw, str::as_bytes)
    }
}

/// Reads a field of a parsed record as text (`None` for null or absent).
pub fn json_field(record: &serde_json::Value, field: &str) -> Option<String> {
    match record.get(field)? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A clean record parsed one level deep: each field's value kept as raw JSON, the fields in
/// the record's order (looked up one by one: a record has a few dozen, and building a map of
/// them cost more than finding them).
pub type RawRecord<'a> = binary::Object<'a>;

/// Reads a field of a record parsed one level deep (values kept as raw JSON).
pub fn raw_field(record: &RawRecord<'_>, field: &str) -> Option<String> {
    let v = record.get(field)?.get();
    match v.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(v).ok(),
        Some(b'n') if v == "null" => None,
        Some(_) => Some(v.to_owned()),
        None => None,
    }
}
