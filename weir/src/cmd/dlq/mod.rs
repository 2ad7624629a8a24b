//! `weir dlq tail|stats|replay`: see every dead letter with why and whence, count them, and
//! send them back once the cause is fixed — exactly once, on the engine's transaction loop
//! with a ledger of replayed dead letters (`weir_sinks::dead_letter::replay`), with a loop
//! guard on the replay count.
//!
//! One module a command: [`tail`], [`stats`], [`replay`]; what they share is here.

mod progress;
mod replay;
mod replay_topic;
mod stats;
mod tail;

pub use replay::{replay, ReplayArgs};
pub use stats::{stats, StatsArgs};
pub use tail::{tail, TailArgs};

use std::path::PathBuf;
use std::time::Duration;

use weir_sinks::dead_letter::reader::DeadLetter;
use weir_topology::Topology;

use super::parse_since;

/// Options every `weir dlq` command takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// The topology file: its dead-letter topics, application id and Kafka settings.
    #[arg(long, env = "WEIR_TOPOLOGY", default_value = "topology/users.toml")]
    pub topology: PathBuf,
    /// The dead-letter topic (default: every dead-letter topic of the topology).
    #[arg(long)]
    pub topic: Option<String>,
    /// Only dead letters that failed at or after this time: RFC 3339, milliseconds since 1970,
    /// or an age such as 90m or 2h.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<i64>,
    #[command(flatten)]
    pub kafka: crate::cmd::KafkaOptions,
}

pub(super) struct Target {
    kafka: weir_topology::config::KafkaSettings,
    application_id: String,
    topics: Vec<String>,
}

pub(super) fn target(c: &Common) -> anyhow::Result<Target> {
    target_of(&crate::cmd::load_with(&c.topology, &c.kafka)?, c)
}

pub(super) fn target_of(t: &Topology, c: &Common) -> anyhow::Result<Target> {
    let topics = match &c.topic {
        Some(topic) => vec![topic.clone()],
        None => weir::dead_letters::topics(t),
    };
    if topics.is_empty() {
        anyhow::bail!(
            "{} has no dead-letter topic: name one with --topic",
            c.topology.display()
        );
    }
    Ok(Target {
        kafka: t.settings.kafka.clone(),
        application_id: t.settings.application_id.clone(),
        topics,
    })
}

pub(super) fn matches(d: &DeadLetter, reason: Option<&str>, since: Option<i64>) -> bool {
    reason.is_none_or(|r| d.has_reason(r))
        && since.is_none_or(|s| d.failed_at.is_some_and(|f| f >= s))
}

pub(super) fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "?".into())
}

pub(super) const STALL: Duration = Duration::from_secs(10);
