//! The records that flow through a topology: where each came from ([`Origin`]), what it is
//! now ([`Body`]): the fields of a raw record that the rules name ([`Parsed`]), a clean row
//! ([`CleanRow`], its fields as the topology file declares them) or the reasons it failed
//! ([`Failure`]).

use serde::{Deserialize, Serialize};

use crate::fields::Parsed;
use crate::spare::Spares;

/// Where a record came from: its source coordinates and its original key and bytes, kept
/// unchanged so that a dead letter can carry them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch (the Kafka record timestamp).
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// The record's headers, in order (a header may have no value).
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// How many times this record has been replayed from the dead-letter topic.
    pub replay_count: u32,
}

/// The source coordinates written into a clean record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceCoordinates {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: Option<i64>,
}

/// A clean record as the clean topic carries it: a flat JSON object with the fields the
/// clean step declares, in their order, then `source` (the raw record's coordinates).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CleanRow {
    pub json: Vec<u8>,
}

/// Why a record could not go on: every violated rule as a reason code, and a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Reason codes such as `email.invalid` or `field.missing:name.first`.
    pub reasons: Vec<String>,
    /// One human sentence covering every reason.
    pub message: String,
    /// The node that failed the record.
    pub node: String,
    /// More dead-letter headers (`weir.errors.value.size` of a refused record, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
}

/// What a record is at a point in the graph.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Bytes as read from Kafka (the original value is in [`Origin::value`]).
    Raw,
    /// A JSON record (its value in [`Origin::value`]) with the fields the rules name.
    Json(Parsed),
    /// A JSON record that passed validation.
    Valid(Parsed),
    /// A clean record.
    Clean(CleanRow),
    /// A record that failed, bound for a dead-letter sink.
    Failed(Failure),
}

/// A record in flight: its origin and its current body.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub origin: Origin,
    pub body: Body,
}

impl Envelope {
    pub fn raw(origin: Origin) -> Self {
        Self {
            origin,
            body: Body::Raw,
        }
    }

    /// The record's value: the text a JSON record's fields were read from, else the bytes
    /// as read.
    pub fn value(&self) -> Option<&[u8]> {
        match &self.body {
            Body::Json(p) | Body::Valid(p) => Some(p.text.as_bytes()),
            _ => self.origin.value.as_deref(),
        }
    }

    /// Sets the body; a JSON record's text goes back to [`Origin::value`] when the record
    /// stops being JSON (a dead letter carries the original bytes).
    ///
    /// A clean record no longer needs its value: its buffer is kept for the next record's
    /// ([`give_back`]).
    pub fn set_body(&mut self, body: Body) {
        if let Body::Json(p) | Body::Valid(p) = std::mem::replace(&mut self.body, body) {
            match self.body {
                Body::Json(_) | Body::Valid(_) => {}
                Body::Clean(_) => give_back(p.into_text().into_bytes()),
                _ => self.origin.value = Some(p.into_text().into_bytes()),
            }
        }
    }

    pub fn source_coordinates(&self) -> SourceCoordinates {
        SourceCoordinates {
            topic: self.origin.topic.clone(),
            partition: self.origin.partition,
            offset: self.origin.offset,
            timestamp: self.origin.timestamp,
        }
    }
}

/// The largest byte buffer kept (the common record sizes with room to spare; larger ones go
/// back to the allocator).
const SPARE_MAX_BYTES: usize = 8 * 1024;

/// How many byte buffers a thread keeps: the engine's largest batch of records, each with
/// an output, and a node batch more (at most 5 MB of them).
const SPARE_KEPT: usize = 640;

thread_local! {
    /// Byte buffers that records gave back on this thread: the values of clean records, and
    /// the outputs the engine has handed to its producer.
    static SPARE: Spares<Vec<u8>, SPARE_KEPT> = const { Spares::new() };
}

/// A copy of a record's value, in a buffer a record gave back on this thread when there is
/// one: a value is usually larger than the allocator's per-thread cache takes, and a buffer
/// just used is still in the CPU's cache.
pub fn value_copy(bytes: &[u8]) -> Vec<u8> {
    let mut buf = buffer(bytes.len());
    buf.extend_from_slice(bytes);
    buf
}

/// An empty buffer for at least `capacity` bytes: one a record gave back on this thread
/// when there is one (an output the size of a record is made while the batch's other
/// outputs are still held, more than the allocator's per-thread cache keeps).
pub fn buffer(capacity: usize) -> Vec<u8> {
    match SPARE.with(Spares::take) {
        Some(mut buf) => {
            buf.clear();
            buf.reserve(capacity);
            buf
        }
        None => Vec::with_capacity(capacity),
    }
}

/// Keeps `buf` for [`buffer`] and [`value_copy`] on this thread, when it is at most 8 KB
/// and the thread keeps fewer than 640; else frees it.
pub fn give_back(buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= SPARE_MAX_BYTES {
        SPARE.with(|s| s.keep(buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_record_gives_its_value_buffer_to_the_next_record() {
        let value = br#"{"a":1}"#.repeat(100);
        let copy = value_copy(&value);
        assert_eq!(copy, value);
        let at = copy.as_ptr();
        let mut e = Envelope::raw(Origin::default());
        let mut parsed = crate::fields::Parsed::default();
        parsed.text = String::from_utf8(copy).unwrap();
        e.body = Body::Valid(parsed);
        e.set_body(Body::Clean(CleanRow::default()));
        let next = value_copy(b"{}");
        assert_eq!((next.as_slice(), next.as_ptr()), (&b"{}"[..], at));
        // a dead letter keeps its value
        let mut parsed = crate::fields::Parsed::default();
        parsed.text = "{}".into();
        e.body = Body::Json(parsed);
        e.set_body(Body::Failed(Failure::default()));
        assert_eq!(e.origin.value.as_deref(), Some(&b"{}"[..]));
    }

    #[test]
    fn an_output_given_back_serves_the_next_buffer_unless_it_is_too_large() {
        let mut sent = buffer(700);
        sent.extend_from_slice(&[b'x'; 700]);
        let at = sent.as_ptr();
        give_back(sent);
        let next = buffer(500);
        assert_eq!((next.len(), next.as_ptr()), (0, at));
        give_back(next);
        let large = vec![0u8; SPARE_MAX_BYTES + 1];
        let large_at = large.as_ptr();
        give_back(large);
        // not the large one: the one before it, with its room
        let again = buffer(10);
        assert_ne!(again.as_ptr(), large_at);
        assert!(again.capacity() >= 700, "{}", again.capacity());
    }
}
