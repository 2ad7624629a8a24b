//! The `postgres` sink's configuration: the clean topic into a table in tumbling windows,
//! exactly once through offsets stored with the rows. (Its running part comes with the
//! windowed sink; `weir run` says so.)

use std::any::Any;

use serde::Deserialize;
use weir_topology::{DataType, Duration, NodeConfig, OutputSpec};

/// What to do with a record whose window is already sealed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePolicy {
    /// Send it to the dead-letter topic with reason `window.sealed`.
    #[default]
    DeadLetter,
    /// Drop it (counted).
    Drop,
    /// Write it anyway (counted as late).
    Accept,
}

/// Writes clean records to a PostgreSQL table in tumbling windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// The table to write (`users`).
    pub table: String,
    /// PostgreSQL URL; defaults to the environment's `WEIR_DATABASE_URL`.
    #[serde(default)]
    pub url: Option<String>,
    /// The column that identifies a row: one row per key, the newest record wins.
    #[serde(default = "default_key")]
    pub key: String,
    /// Size of the tumbling windows.
    #[serde(default = "default_window")]
    pub window: Duration,
    /// How long after a window's end records may still arrive before it can be sealed.
    #[serde(default = "default_grace")]
    pub grace: Duration,
    /// Flush after this many rows...
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// ...or after this long, whichever comes first.
    #[serde(default = "default_flush_interval")]
    pub flush_interval: Duration,
    /// What to do with a record for a sealed window.
    #[serde(default)]
    pub late_policy: LatePolicy,
    /// A partition with no records for this long advances the watermark with the clock.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
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
    2_000
}
fn default_flush_interval() -> Duration {
    Duration::from_millis(200)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(30)
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

    fn as_any(&self) -> &dyn Any {
        self
    }
}
