//! `weir dlq tail|stats|replay`: see every dead letter with why and whence, count them, and
//! send them back once the cause is fixed — exactly once, on the engine's transaction loop
//! with a ledger of replayed dead letters (`weir_sinks::dead_letter::replay`), with a loop
//! guard on the replay count.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use weir_sinks::dead_letter::reader::{escape, DeadLetter, Extent, Reader, Start};
use weir_sinks::dead_letter::replay::{
    ensure_ledger, ledger_topic, read_ledger, Decision, ReplayJob, ReplayRules, Tally,
};
use weir_sinks::dead_letter::DeadLetterConfig;
use weir_sinks::postgres::config::LatePolicy;
use weir_sinks::postgres::PostgresSinkConfig;
use weir_topology::engine::{self, EngineConfig, InputMode, PartitionRange};
use weir_topology::Topology;

use super::{parse_since, Exit};

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
    pub kafka: super::KafkaOptions,
}

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

/// Options of `weir dlq stats`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  weir dlq stats --since 24h")]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Options of `weir dlq replay`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Replays each dead letter at most once, whatever the reason asked for: a ledger topic records \
every replayed dead letter in the same transaction, so a rerun after a crash, or a later run for another reason, \
sends only what was never sent. Dead letters skipped, refused or unroutable now stay for a later run.\n\nExamples:\n  weir dlq replay --reason email.invalid --dry-run\n  weir dlq replay --reason email.invalid"
)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub common: Common,
    /// Replay dead letters with this reason (`field.missing` also matches `field.missing:email`).
    #[arg(long)]
    pub reason: String,
    /// Where to send them (default: the topic each record came from, as its headers say).
    #[arg(long)]
    pub to: Option<String>,
    /// Count what would be replayed; send and commit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Refuse records already replayed this many times (the loop guard).
    #[arg(long, default_value_t = 3)]
    pub max_replays: u32,
    /// The ledger of replayed dead letters (default: `<application id>-dlq-replay-ledger`,
    /// created compacted when missing).
    #[arg(long)]
    pub ledger: Option<String>,
    /// Records per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

struct Target {
    kafka: weir_topology::config::KafkaSettings,
    application_id: String,
    topics: Vec<String>,
}

fn target(c: &Common) -> anyhow::Result<Target> {
    target_of(&super::load_with(&c.topology, &c.kafka)?, c)
}

fn target_of(t: &Topology, c: &Common) -> anyhow::Result<Target> {
    let topics = match &c.topic {
        Some(topic) => vec![topic.clone()],
        None => dead_letter_topics(t),
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

/// Every topic the topology writes dead letters to: its dead_letter sinks and the late topic
/// of PostgreSQL sinks that send late records there.
pub fn dead_letter_topics(t: &Topology) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for n in &t.nodes {
        let topic = if let Some(c) = n.config::<DeadLetterConfig>() {
            Some(c.topic.clone())
        } else {
            n.config::<PostgresSinkConfig>()
                .filter(|c| c.late_policy == LatePolicy::DeadLetter)
                .map(|c| c.late_topic.clone())
        };
        if let Some(topic) = topic {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
    }
    topics
}

fn matches(d: &DeadLetter, reason: Option<&str>, since: Option<i64>) -> bool {
    reason.is_none_or(|r| d.has_reason(r))
        && since.is_none_or(|s| d.failed_at.is_some_and(|f| f >= s))
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "?".into())
}

const STALL: Duration = Duration::from_secs(10);

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

pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let target = target(&args.common)?;
    let mut reader = Reader::open(&target.kafka, &target.topics, Start::Beginning)
        .with_context(|| format!("reading {}", target.topics.join(", ")))?;
    let mut total = 0u64;
    let mut by_reason: HashMap<String, u64> = HashMap::new();
    let mut by_node: HashMap<String, u64> = HashMap::new();
    let mut by_hour: BTreeMap<String, u64> = BTreeMap::new();
    reader
        .read_to_end(STALL, |d| {
            if !matches(&d, None, args.common.since) {
                return;
            }
            total += 1;
            for r in &d.reasons {
                *by_reason.entry(r.clone()).or_default() += 1;
            }
            *by_node.entry(d.node.clone()).or_default() += 1;
            let hour = d
                .failed_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.format("%Y-%m-%d %H:00").to_string())
                .unwrap_or_else(|| "?".into());
            *by_hour.entry(hour).or_default() += 1;
        })
        .context("reading the dead-letter topic")?;
    let sorted = |m: HashMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    let (by_reason, by_node) = (sorted(by_reason), sorted(by_node));
    if args.json {
        let obj = |v: &[(String, u64)]| {
            serde_json::Value::Object(
                v.iter()
                    .map(|(k, n)| (k.clone(), serde_json::json!(n)))
                    .collect(),
            )
        };
        let hours: Vec<(String, u64)> = by_hour.into_iter().collect();
        println!(
            "{}",
            serde_json::json!({
                "topics": target.topics,
                "since": args.common.since,
                "total": total,
                "by_reason": obj(&by_reason),
                "by_node": obj(&by_node),
                "by_hour": obj(&hours),
            })
        );
        return Ok(());
    }
    println!("dead letters: {total} in {}", target.topics.join(", "));
    let section = |title: &str, rows: &mut dyn Iterator<Item = (&String, &u64)>| {
        println!("\n{title:<44} {:>10}", "COUNT");
        for (k, n) in rows {
            println!("{:<44} {n:>10}", escape(k.as_bytes(), 44));
        }
    };
    section("BY REASON", &mut by_reason.iter().map(|(k, n)| (k, n)));
    section("BY NODE", &mut by_node.iter().map(|(k, n)| (k, n)));
    section("BY HOUR (UTC)", &mut by_hour.iter());
    Ok(())
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let t = super::load_with(&args.common.topology, &args.common.kafka)?;
    let target = target_of(&t, &args.common)?;
    let rules = ReplayRules {
        reason: args.reason.clone(),
        since: args.common.since,
        max_replays: args.max_replays,
        to: args.to.clone(),
    };
    let ledger = args
        .ledger
        .clone()
        .unwrap_or_else(|| ledger_topic(&target.application_id));
    let shutdown = weir::signals::shutdown_flag()?;
    let tally = if args.dry_run {
        dry_run(&target, &rules, &ledger)?
    } else {
        ensure_ledger(&target.kafka, &ledger)
            .with_context(|| format!("creating the replay ledger topic {ledger}"))?;
        let mut tally = Tally::default();
        for topic in &target.topics {
            tally = replay_topic(args, &target, topic, &rules, &ledger, &shutdown, tally)?;
            if shutdown.load(Ordering::Relaxed) {
                break;
            }
        }
        tally
    };
    let verb = if args.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    println!(
        "{verb} {} dead letter{} with reason {} to {}{}",
        tally.replayed,
        if tally.replayed == 1 { "" } else { "s" },
        args.reason,
        args.to.as_deref().unwrap_or("their source topics"),
        if args.dry_run {
            " (dry run: nothing sent, nothing written to the ledger)"
        } else {
            ""
        }
    );
    println!(
        "  examined {}, already replayed {} (in the ledger {ledger}), skipped {} (other reasons or before --since), refused {} (replayed {} times already: the loop guard, --max-replays), previews of refused records {}, no source topic {}",
        tally.examined,
        tally.already,
        tally.skipped,
        tally.refused,
        args.max_replays,
        tally.truncated,
        tally.unroutable
    );
    if shutdown.load(Ordering::Relaxed) {
        eprintln!("interrupted: the committed part is kept; run again to go on");
        return Err(Exit(130).into());
    }
    Ok(())
}

/// What a replay would do, from the ledger and the dead letters; sends nothing.
fn dry_run(target: &Target, rules: &ReplayRules, ledger: &str) -> anyhow::Result<Tally> {
    let replayed = match read_ledger(&target.kafka, ledger) {
        Ok(keys) => keys,
        // no ledger yet: nothing replayed yet
        Err(KafkaError::MetadataFetch(RDKafkaErrorCode::UnknownTopicOrPartition)) => {
            Default::default()
        }
        Err(e) => return Err(e).with_context(|| format!("reading the replay ledger {ledger}")),
    };
    let mut reader = Reader::open(&target.kafka, &target.topics, Start::Beginning)
        .with_context(|| format!("reading {}", target.topics.join(", ")))?;
    let mut tally = Tally::default();
    reader
        .read_to_end(STALL, |d| {
            tally.examined += 1;
            match rules.decide(&d, &replayed) {
                Decision::Replay(_) => tally.replayed += 1,
                Decision::Skip => tally.skipped += 1,
                Decision::Refuse => tally.refused += 1,
                Decision::Truncated => tally.truncated += 1,
                Decision::Unroutable => tally.unroutable += 1,
                Decision::Already => tally.already += 1,
            }
        })
        .context("reading the dead-letter topic")?;
    Ok(tally)
}

/// Replays one dead-letter topic from its beginning to today's end on the engine's loop.
#[allow(clippy::too_many_arguments)]
fn replay_topic(
    args: &ReplayArgs,
    target: &Target,
    topic: &str,
    rules: &ReplayRules,
    ledger: &str,
    shutdown: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    before: Tally,
) -> anyhow::Result<Tally> {
    let probe: BaseConsumer = target
        .kafka
        .client("dlq-replay-probe", |_| {})
        .create()
        .context("creating a Kafka client")?;
    let extent = Extent::of(&probe, &[topic.to_owned()])
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let partitions: Vec<PartitionRange> = extent
        .partitions
        .iter()
        .map(|(topic, p, low, high)| PartitionRange {
            topic: topic.clone(),
            partition: *p,
            start: *low,
            end: *high,
        })
        .collect();
    let total: i64 = partitions.iter().map(|r| r.end - r.start).sum();
    let app = &target.application_id;
    let config = EngineConfig {
        application_id: app.clone(),
        instance: "replay".into(),
        subtopology: 0,
        kafka: target.kafka.clone(),
        commit_interval: Duration::from_secs(1),
        commit_max_records: args.batch.max(1),
        transaction_timeout: Duration::from_secs(10),
        // an open transaction of a crashed writer holds back the end
        stop_when_idle: Some(STALL),
        rewind_limit: Duration::from_secs(60),
        input: InputMode::Range {
            // one per application: a second replay fences the first
            transactional_id: format!("{app}-dlq-replay"),
            group_id: format!("{app}.dlq-replay"),
            partitions,
        },
    };
    let mut job = ReplayJob::new(rules.clone(), ledger, target.kafka.clone());
    let mut progress = Progress::new(total.max(0) as u64);
    job.on_progress = Some(Box::new(move |t: &Tally| progress.show(t)));
    let result = engine::run(
        &mut job,
        Vec::new(),
        config,
        weir_topology::metrics::Metrics::new(),
        shutdown.clone(),
    );
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    result.with_context(|| format!("replaying {topic}"))?;
    let mut tally = before;
    tally.add(&job.tally);
    Ok(tally)
}

/// A progress bar on a terminal, a line every few seconds elsewhere.
struct Progress {
    total: u64,
    tty: bool,
    last: Instant,
    started: Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        Self {
            total,
            tty: std::io::stderr().is_terminal(),
            last: Instant::now(),
            started: Instant::now(),
        }
    }

    fn show(&mut self, t: &Tally) {
        if !self.tty && self.last.elapsed() < Duration::from_secs(2) {
            return;
        }
        self.last = Instant::now();
        let frac = if self.total == 0 {
            1.0
        } else {
            (t.examined as f64 / self.total as f64).min(1.0)
        };
        let filled = (frac * 30.0).round() as usize;
        let line = format!(
            "[{}{}] {:>3.0}% {}/{} examined · {} replayed · {} refused · {:.0}s",
            "#".repeat(filled),
            "-".repeat(30 - filled),
            frac * 100.0,
            t.examined,
            self.total,
            t.replayed,
            t.refused,
            self.started.elapsed().as_secs_f64()
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }
}
