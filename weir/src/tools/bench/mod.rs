//! `weir bench …`: benchmarks on this machine, each in a module of its own.
//!
//! - [`topology`]: the exactly-once loop's throughput beside a raw transactional pass-through.
//! - [`process`]: the processing path's records/s per core of CPU time, with no Kafka.
//! - [`sink`]: the PostgreSQL sink beside `COPY` of the same rows into the same table.
//! - [`live`]: the live view under load.

pub mod live;
pub mod process;
pub mod sink;
pub mod topology;

pub use live::{live, LiveArgs};
pub use process::{process, ProcessArgs};
pub use sink::{sink, SinkArgs};
pub use topology::{topology, TopologyArgs};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The synthetic load of a benchmark against Kafka, and how often its contenders alternate.
#[derive(Debug, clap::Args)]
pub struct Load {
    /// Synthetic raw records to make.
    #[arg(long, default_value_t = 200_000)]
    pub records: u64,
    /// The fraction of bad records (they become dead letters).
    #[arg(long, default_value_t = 0.1)]
    pub dirty: f64,
    /// Partitions of the fresh topics.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Runs of each contender, alternating.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    #[command(flatten)]
    pub kafka: crate::cmd::KafkaOptions,
}

/// `-X KEY=VALUE` again, for a `weir run` the bench starts.
fn forward_options(kafka: &crate::cmd::KafkaOptions) -> Vec<String> {
    kafka
        .options
        .iter()
        .flat_map(|(k, v)| ["-X".to_owned(), format!("{k}={v}")])
        .collect()
}

/// The median (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A benchmark's own topics, named `weir-bench-<seconds>-<pid>-<what>`: created fresh, deleted
/// when dropped.
struct FreshTopics {
    admin: AdminClient<DefaultClientContext>,
    prefix: String,
    names: Vec<String>,
}

impl FreshTopics {
    fn create(
        kafka: &weir_topology::config::KafkaSettings,
        partitions: i32,
        whats: &[&str],
    ) -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let prefix = format!("weir-bench-{stamp}-{}", std::process::id());
        let admin: AdminClient<DefaultClientContext> = kafka
            .client("bench-admin", |_| {})
            .create()
            .context("creating the admin client")?;
        let names: Vec<String> = whats.iter().map(|w| format!("{prefix}-{w}")).collect();
        // named before they exist: what is created is deleted on drop, whatever fails
        let fresh = Self {
            admin,
            prefix,
            names,
        };
        let topics: Vec<NewTopic> = fresh
            .names
            .iter()
            .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in
            futures::executor::block_on(fresh.admin.create_topics(&topics, &AdminOptions::new()))
                .context("creating the bench topics")?
        {
            r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
        }
        Ok(fresh)
    }

    /// A name of this benchmark's (a topic created, or an id to use).
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
}

impl Drop for FreshTopics {
    fn drop(&mut self) {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if let Err(e) =
            futures::executor::block_on(self.admin.delete_topics(&names, &AdminOptions::new()))
        {
            eprintln!("deleting the bench topics: {e}");
        }
    }
}

/// Peak memory (kB, VmHWM) and CPU seconds of process `pid` so far.
fn process_usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    (hwm, ticks / 100.0)
}
