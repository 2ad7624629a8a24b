//! The `postgres` sink's configuration: which table, which column gets which field of the
//! clean record, the windows, the batches, and what happens to late records.

use std::any::Any;
use std::collections::BTreeMap;

use serde::Deserialize;
use weir_topology::{DataType, Duration, NodeConfig, OutputSpec};

/// What to do with a record whose window is already sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Send it to the dead-letter topic with reason `window.sealed` (and keep a copy in the
    /// rejects table, in the rows' transaction).
    #[default]
    DeadLetter,
    /// Drop it (counted in the window's `late_dropped`).
    Drop,
    /// Write it anyway (counted in the window's `late_accepted`).
    Accept,
}

impl LatePolicy {
    pub fn label(self) -> &'static str {
        match self {
            LatePolicy::DeadLetter => "dead_letter",
            LatePolicy::Drop => "drop",
            LatePolicy::Accept => "accept",
        }
    }
}

/// Writes clean records to a PostgreSQL table in tumbling windows, exactly once: rows, the
/// window ledger and the next offset per partition commit in one transaction.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The table to write (`users`).
    pub table: String,
    /// PostgreSQL URL; defaults to the environment's `WEIR_DATABASE_URL`. Never logged.
    #[serde(default)]
    pub url: Option<String>,
    /// The unique column that identifies a row: one row per key, the newest record wins.
    #[serde(default = "default_key")]
    pub key: String,
    /// Table column → clean record field. Fields: the clean record's names (`email`,
    /// `full_name`, …) and `@record` (the whole clean record as JSON), `@topic`,
    /// `@partition`, `@offset`, `@timestamp` (the record time), `@window_start`. Columns not
    /// named keep their defaults. The default mapping is the seed's `users` table.
    #[serde(default = "default_columns")]
    pub columns: BTreeMap<String, String>,
    /// Size of the tumbling windows.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// How long after a window's end records may still arrive before it can be sealed.
    #[serde(default = "default_grace")]
    pub grace: Duration,
    /// Flush after this many rows (2,500 by default: a batch being written and the next one
    /// are both in memory, about 2.5 kB a row each; 5,000 measured the same speed against
    /// `COPY` and 16 MB more peak memory in `weir run`)...
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// ...or after this long, whichever comes first.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// What to do with a record for a sealed window.
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// The sink's dead-letter topic: late records (policy `dead_letter`), records PostgreSQL
    /// refuses, records with a time beyond `max_clock_skew` or outside years 1 to 9999. Their
    /// dead letters go through the `dead_letter_outbox` table, exactly once.
    #[serde(default = "default_late_topic")]
    pub late_topic: String,
    /// A partition read to its end with no records for this long advances the watermark with
    /// the clock — once the application upstream has processed all of its input.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// A record timed further than this ahead of the clock is a dead letter
    /// (`timestamp.future`), not a watermark mover.
    #[serde(default = "default_max_clock_skew")]
    pub max_clock_skew: Duration,
}

fn default_key() -> String {
    "email".into()
}
fn default_window() -> Duration {
    Duration::from_secs(300)
}
fn default_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_batch_size() -> usize {
    2_500
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_clock_skew() -> Duration {
    Duration::from_secs(300)
}
fn default_late_topic() -> String {
    std::env::var("WEIR_TOPIC_DLQ").unwrap_or_else(|_| "randomuser-topic-dlq".into())
}

/// The seed's `users` table.
pub fn default_columns() -> BTreeMap<String, String> {
    [
        ("user_uuid", "user_uuid"),
        ("title", "title"),
        ("first_name", "first_name"),
        ("last_name", "last_name"),
        ("email", "email"),
        ("street_address", "street_address"),
        ("city", "city"),
        ("state", "state"),
        ("country", "country"),
        ("postcode", "postcode"),
        ("phone_cleaned", "phone"),
        ("cell_cleaned", "cell"),
        ("dob_date", "dob"),
        ("age_at_ingestion", "age"),
        ("picture_thumbnail_url", "picture_thumbnail"),
        ("raw_cleaned_data", "@record"),
        ("source_topic", "@topic"),
        ("source_partition", "@partition"),
        ("source_offset", "@offset"),
        ("record_timestamp", "@timestamp"),
        ("window_start", "@window_start"),
    ]
    .into_iter()
    .map(|(c, f)| (c.to_owned(), f.to_owned()))
    .collect()
}

/// The fields of the record's coordinates a column may take besides the clean row's own.
pub const SPECIAL_FIELDS: &[&str] = &[
    "@record",
    "@topic",
    "@partition",
    "@offset",
    "@timestamp",
    "@window_start",
];

impl PostgresSinkConfig {
    /// Problems the config has on its own (unknown special fields, key not mapped).
    pub fn check(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (column, field) in &self.columns {
            if field.starts_with('@') && !SPECIAL_FIELDS.contains(&field.as_str()) {
                out.push(format!(
                    "column \"{column}\" maps to unknown field \"{field}\"{}",
                    weir_topology::diagnostic::did_you_mean(field, SPECIAL_FIELDS.iter().copied())
                ));
            }
        }
        if !self.columns.contains_key(&self.key) {
            out.push(format!(
                "the key column \"{}\" is not in `columns`",
                self.key
            ));
        }
        if self.window.as_millis() == 0 {
            out.push("window must be longer than 0".into());
        }
        out
    }

    /// Columns mapped to fields the clean rows do not have.
    pub fn check_schema(&self, schema: &weir_topology::schema::Schema) -> Vec<String> {
        let mut out = Vec::new();
        for (column, field) in &self.columns {
            if field.starts_with('@') || schema.field(field).is_some() {
                continue;
            }
            out.push(format!(
                "column \"{column}\" maps to field \"{field}\", which the clean rows do not have{} (their fields: {})",
                weir_topology::diagnostic::did_you_mean(field, schema.names()),
                schema.names().collect::<Vec<_>>().join(", ")
            ));
        }
        out
    }
}

impl NodeConfig for PostgresSinkConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Clean]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        Vec::new()
    }

    fn detail(&self) -> String {
        format!(
            "table: {}, window: {}, grace: {}",
            self.table, self.window, self.grace
        )
    }

    fn problems(&self) -> Vec<String> {
        self.check()
    }

    fn schema_problems(&self, input: &weir_topology::schema::Schema) -> Vec<String> {
        self.check_schema(input)
    }

    fn build(
        &self,
        _ctx: &weir_topology::pipeline::BuildContext,
    ) -> Result<weir_topology::Built, weir_topology::BuildError> {
        let problems = self.check();
        if problems.is_empty() {
            Ok(weir_topology::Built::External)
        } else {
            Err(weir_topology::BuildError::Problems(problems))
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
