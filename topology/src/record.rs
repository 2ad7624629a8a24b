//! The records that flow through a topology: where each came from ([`Origin`]), what it is
//! now ([`Body`]), the flat [`CleanRecord`] and the reasons a record failed ([`Failure`]).

use serde::{Deserialize, Serialize};

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

/// A user as the clean topic carries it: flat, typed, cleaned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanRecord {
    pub user_uuid: Option<String>,
    pub title: Option<String>,
    pub first_name: String,
    pub last_name: String,
    pub full_name: String,
    pub gender: Option<String>,
    pub email: String,
    pub street_address: Option<String>,
    pub city: String,
    pub state: Option<String>,
    pub country: String,
    /// Always text: randomuser.me sends numbers for some countries.
    pub postcode: Option<String>,
    pub phone: Option<String>,
    pub cell: Option<String>,
    /// `YYYY-MM-DD`.
    pub dob: Option<String>,
    pub age: Option<i64>,
    /// RFC 3339, UTC.
    pub registered_at: Option<String>,
    pub picture_thumbnail: Option<String>,
    pub nat: Option<String>,
    pub source: SourceCoordinates,
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
    /// Decoded JSON.
    Json(serde_json::Value),
    /// JSON that passed validation.
    Valid(serde_json::Value),
    /// A cleaned record.
    Clean(Box<CleanRecord>),
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

    pub fn source_coordinates(&self) -> SourceCoordinates {
        SourceCoordinates {
            topic: self.origin.topic.clone(),
            partition: self.origin.partition,
            offset: self.origin.offset,
            timestamp: self.origin.timestamp,
        }
    }
}
