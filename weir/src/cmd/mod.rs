//! One module per product command of `weir` (run, check, describe, diff, test, process,
//! dlq, audit, tap, top), and the helpers every command shares; `ingest` and `bench` are in [`crate::tools`].

pub mod audit;
pub mod check;
pub mod describe;
pub mod diff;
pub mod dlq;
pub mod process;
pub mod run;
pub mod tap;
pub mod test;
pub mod top;

use std::path::Path;

use chrono::{DateTime, Utc};
use weir_topology::{LoadError, Topology};

/// Exit code of a configuration error (EX_CONFIG, as `vector validate`).
pub const EXIT_CONFIG: u8 = 78;

/// An error that carries the process's exit code.
#[derive(Debug)]
pub struct Exit(pub u8);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Exit {}

/// `-X KEY=VALUE`: a librdkafka option for every Kafka client of a command, over the
/// topology's `[kafka] options` (as kcat's `-X`): `-X security.protocol=SASL_SSL`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct KafkaOptions {
    /// A librdkafka option for every Kafka client, over the topology's `[kafka] options`
    /// (`-X security.protocol=SASL_SSL -X sasl.mechanisms=SCRAM-SHA-512`).
    #[arg(short = 'X', long = "kafka-option", value_name = "KEY=VALUE", value_parser = parse_kafka_option)]
    pub options: Vec<(String, String)>,
}

/// `KEY=VALUE`, as `-X` takes it.
fn parse_kafka_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!(
            "invalid Kafka option \"{s}\": KEY=VALUE, like security.protocol=SASL_SSL"
        )),
    }
}

/// [`load`] with `-X` options over the topology's `[kafka] options`; checks that the cluster
/// takes them ([`check_kafka`]).
pub fn load_with(path: &Path, kafka: &KafkaOptions) -> anyhow::Result<Topology> {
    let mut t = load(path)?;
    t.settings.kafka = t.settings.kafka.clone().with_options(&kafka.options);
    check_kafka(&t.settings.kafka)?;
    Ok(t)
}

/// Exit code when Kafka refuses the credentials or the TLS handshake (EX_NOPERM).
pub const EXIT_KAFKA_REFUSED: u8 = 77;

/// Stops the command with exit code 77 and the broker's reason when Kafka refuses the
/// settings (a wrong password, a certificate it cannot verify), instead of retrying for
/// ever; a cluster that does not answer yet is left to the command's own clients.
pub fn check_kafka(kafka: &weir_topology::config::KafkaSettings) -> anyhow::Result<()> {
    match kafka.check(std::time::Duration::from_secs(10)) {
        Err(e @ weir_topology::kafka::ClusterError::Refused { .. }) => {
            eprintln!("weir: {e}");
            Err(Exit(EXIT_KAFKA_REFUSED).into())
        }
        // a setting librdkafka does not take is the command's own client's to report, with
        // what that client is for
        Ok(()) | Err(weir_topology::kafka::ClusterError::Settings { .. }) => Ok(()),
    }
}

/// Loads a topology file; on config errors prints every one and returns exit code 78.
pub fn load(path: &Path) -> anyhow::Result<Topology> {
    match weir_topology::load_file(path, &weir::registry::registry()) {
        Ok(t) => Ok(t),
        Err(LoadError::Invalid(diags)) => {
            for d in &diags {
                eprintln!("{d}");
            }
            eprintln!(
                "{} error{} in {}",
                diags.len(),
                if diags.len() == 1 { "" } else { "s" },
                path.display()
            );
            Err(Exit(EXIT_CONFIG).into())
        }
        Err(e @ LoadError::Read { .. }) => {
            eprintln!("{e}");
            Err(Exit(EXIT_CONFIG).into())
        }
    }
}

/// The sub-topology that reads the first source (the one `process`, `test` and the Kafka
/// loop run).
pub fn processing_subtopology(t: &Topology) -> anyhow::Result<weir_topology::graph::SubTopology> {
    let subs = weir_topology::graph::sub_topologies(t);
    subs.into_iter()
        .find(|s| {
            s.nodes.iter().any(|n| {
                t.node(n)
                    .is_some_and(|n| n.kind == weir_topology::NodeKind::Source)
            })
        })
        .ok_or_else(|| anyhow::anyhow!("the topology has no source"))
}

/// A duration argument: `500ms`, `10s`, `5m`, `2h`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    weir_topology::Duration::parse(s)
        .map(|d| d.as_std())
        .map_err(|e| e.to_string())
}

/// A point in time: RFC 3339 (`2026-11-25T10:05:00Z`) or milliseconds since 1970.
pub fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .or_else(|_| {
            s.parse::<i64>()
                .map_err(|_| ())
                .and_then(|ms| DateTime::from_timestamp_millis(ms).ok_or(()))
        })
        .map_err(|_| {
            format!(
                "invalid time \"{s}\": RFC 3339 (2026-11-25T10:05:00Z) or milliseconds since 1970"
            )
        })
}

/// `--since`: a point in time ([`parse_time`]) or an age (`90m`: that long ago), as
/// milliseconds since 1970.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(age) = weir_topology::Duration::parse(s) {
        return Ok(Utc::now().timestamp_millis() - age.as_millis() as i64);
    }
    parse_time(s).map(|t| t.timestamp_millis()).map_err(|_| {
        format!("invalid time \"{s}\": an age such as 90m or 2h, RFC 3339 (2026-11-25T10:05:00Z) or milliseconds since 1970")
    })
}
