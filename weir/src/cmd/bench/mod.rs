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
