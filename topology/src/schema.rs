//! What a clean row holds, known when the topology is built: the fields the clean step
//! declares, each with a type, then `source`. Sinks that read clean rows check their column
//! mappings and templates against it (`weir check` reports what does not fit).

use std::fmt;

/// The type of a field of a clean row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Text,
    Integer,
    /// `YYYY-MM-DD`.
    Date,
    /// RFC 3339, UTC, milliseconds.
    Timestamp,
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FieldType::Text => "text",
            FieldType::Integer => "integer",
            FieldType::Date => "date",
            FieldType::Timestamp => "timestamp",
        })
    }
}

/// One field of a clean row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaField {
    pub name: String,
    pub ty: FieldType,
    /// False when the field is never null (it has a value for a missing source).
    pub nullable: bool,
}

/// The fields of a clean row, in order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Schema {
    pub fields: Vec<SchemaField>,
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&SchemaField> {
        self.fields.iter().find(|f| f.name == name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }
}
