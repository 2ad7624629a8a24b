//! `weir dlq tail`: the latest dead letters (and new ones with `--follow`), as a table or
//! JSON lines.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use weir_sinks::dead_letter::reader::{escape, DeadLetter, Reader, Start};

use super::{matches, target, time, Common, STALL};

/// Options of `weir dlq tail`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  weir dlq tail --reason email.invalid --since 1h\n  weir dlq tail --follow --json | jq .reasons"
)]
pub struct TailArgs {
    #[command(flatten)]
    pub common: Common,
    /// Keep printing new dead letters until interrupted.
    #[arg(long, short)]
    pub follow: bool,
    /// Only dead letters with this reason (`field.missing` also matches `field.missing:email`).
    #[arg(long)]
    pub reason: Option<String>,
    /// How many of the latest matching dead letters to show first.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// JSON lines with every header and the original value, instead of a table.
    #[arg(long)]
    pub json: bool,
}
pub fn tail(args: &TailArgs) -> anyhow::Result<()> {
    let target = target(&args.common)?;
    let mut reader = Reader::open(&target.kafka, &target.topics, Start::Beginning)
        .with_context(|| format!("reading {}", target.topics.join(", ")))?;
    let reason = args.reason.as_deref();
    // the latest by failure time across partitions (read order is partition by partition)
    let newest_first = |v: &mut Vec<DeadLetter>| {
        v.sort_by_key(|d| std::cmp::Reverse((d.failed_at, d.partition, d.offset)));
    };
    let mut latest: Vec<DeadLetter> = Vec::new();
    reader
        .read_to_end(STALL, |d| {
            if matches(&d, reason, args.common.since) {
                latest.push(d);
                if latest.len() >= 2 * args.limit.max(1) {
                    newest_first(&mut latest);
                    latest.truncate(args.limit);
                }
            }
        })
        .context("reading the dead-letter topic")?;
    newest_first(&mut latest);
    latest.truncate(args.limit);
    latest.reverse();
    let mut table = TailTable::new(args.json);
    let rows = latest;
    table.print(&rows);
    if rows.is_empty() && !args.json && !args.follow {
        eprintln!(
            "no dead letters{}",
            reason
                .map(|r| format!(" with reason {r}"))
                .unwrap_or_default()
        );
    }
    if args.follow {
        let shutdown = weir::signals::shutdown_flag()?;
        while !shutdown.load(Ordering::Relaxed) {
            match reader.next(Duration::from_millis(200)) {
                Some(Ok(d)) if matches(&d, reason, args.common.since) => table.print(&[d]),
                Some(Err(e)) => return Err(e).context("following the dead-letter topic"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Prints dead letters as an aligned table (the header once) or as JSON lines.
struct TailTable {
    json: bool,
    header_done: bool,
}

impl TailTable {
    fn new(json: bool) -> Self {
        Self {
            json,
            header_done: false,
        }
    }

    fn print(&mut self, rows: &[DeadLetter]) {
        let mut out = std::io::stdout().lock();
        if self.json {
            for d in rows {
                let _ = writeln!(out, "{}", d.to_json(true));
            }
            return;
        }
        if !self.header_done {
            let _ = writeln!(
                out,
                "{:<19}  {:<36}  {:<10}  {:<28}  VALUE",
                "FAILED AT (UTC)", "REASONS", "NODE", "SOURCE"
            );
            self.header_done = true;
        }
        for d in rows {
            let _ = writeln!(
                out,
                "{:<19}  {:<36}  {:<10}  {:<28}  {}",
                time(d.failed_at),
                escape(d.reasons.join(",").as_bytes(), 36),
                escape(d.node.as_bytes(), 10),
                escape(d.source().as_bytes(), 28),
                escape(&d.value, 60)
            );
        }
        let _ = out.flush();
    }
}
