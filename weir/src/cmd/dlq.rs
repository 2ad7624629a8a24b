//! `weir dlq tail|stats|replay`: see every dead letter with why and whence, count them, and
//! send them back once the cause is fixed — exactly once, in Kafka transactions that carry the
//! replay group's offsets, with a loop guard on the replay count.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir_sinks::dead_letter::reader::{escape, DeadLetter, Extent, Reader, Start};
use weir_sinks::dead_letter::DeadLetterConfig;
use weir_sinks::postgres::config::LatePolicy;
use weir_sinks::postgres::PostgresSinkConfig;
use weir_topology::engine::REPLAY_COUNT_HEADER;
use weir_topology::Topology;

use super::{parse_since, Exit};

/// Header on a replayed record: the dead letter it came from (`topic/partition@offset`).
pub const REPLAYED_FROM_HEADER: &str = "weir.replay.from";

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
    after_help = "Replays each dead letter at most once per replay group (default: one group per reason): \
a rerun after a crash or a later run resumes where the last one committed.\n\nExamples:\n  weir dlq replay --reason email.invalid --dry-run\n  weir dlq replay --reason email.invalid"
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
    /// The replay's consumer group (default: `<application id>.dlq-replay.<reason>`).
    #[arg(long)]
    pub group: Option<String>,
    /// Records per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
}

struct Target {
    bootstrap: String,
    application_id: String,
    topics: Vec<String>,
}

fn target(c: &Common) -> anyhow::Result<Target> {
    let t = super::load(&c.topology)?;
    let topics = match &c.topic {
        Some(topic) => vec![topic.clone()],
        None => dead_letter_topics(&t),
    };
    if topics.is_empty() {
        anyhow::bail!(
            "{} has no dead-letter topic: name one with --topic",
            c.topology.display()
        );
    }
    Ok(Target {
        bootstrap: t.settings.kafka.bootstrap_servers.clone(),
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
    let mut reader = Reader::open(&target.bootstrap, &target.topics, Start::Beginning)
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
    let mut reader = Reader::open(&target.bootstrap, &target.topics, Start::Beginning)
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

/// The counts a replay reports.
#[derive(Debug, Default)]
struct Tally {
    examined: u64,
    replayed: u64,
    refused: u64,
    skipped: u64,
    unroutable: u64,
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<()> {
    let target = target(&args.common)?;
    let group = args.group.clone().unwrap_or_else(|| {
        format!(
            "{}.dlq-replay.{}",
            target.application_id,
            args.reason.replace(
                |c: char| !c.is_ascii_alphanumeric() && c != '.' && c != '-',
                "_"
            )
        )
    });
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &target.bootstrap)
        .set("group.id", &group)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set_log_level(RDKafkaLogLevel::Warning)
        .create()
        .context("creating the replay consumer")?;
    // fence and abort a killed replay of this group first: its open transaction holds the
    // group's offsets
    let producer: Option<ThreadedProducer<rdkafka::producer::DefaultProducerContext>> =
        if args.dry_run {
            None
        } else {
            let p: ThreadedProducer<_> = ClientConfig::new()
                .set("bootstrap.servers", &target.bootstrap)
                .set("transactional.id", format!("weir-{group}"))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                // a replay killed mid-transaction holds the group's offsets until then
                .set("transaction.timeout.ms", "10000")
                .set_log_level(RDKafkaLogLevel::Warning)
                .create()
                .context("creating the replay producer")?;
            p.init_transactions(Duration::from_secs(30))
                .context("initialising transactions (fences an earlier replay of this group)")?;
            Some(p)
        };
    // start at the group's committed offsets, read up to today's end
    let extent = Extent::of(&consumer, &target.topics)
        .with_context(|| format!("reading the partitions of {}", target.topics.join(", ")))?;
    let mut wanted = TopicPartitionList::new();
    for (topic, p, _, _) in &extent.partitions {
        wanted.add_partition(topic, *p);
    }
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(30))
        .context("reading the replay group's offsets")?;
    let mut assignment = TopicPartitionList::new();
    let mut total: i64 = 0;
    for (topic, p, low, end) in &extent.partitions {
        let start = committed
            .find_partition(topic, *p)
            .and_then(|e| e.offset().to_raw())
            .filter(|o| *o >= 0);
        total += end - start.unwrap_or(*low).max(*low);
        assignment.add_partition_offset(
            topic,
            *p,
            start.map_or(Offset::Beginning, Offset::Offset),
        )?;
    }
    consumer.assign(&assignment)?;

    let shutdown = weir::signals::shutdown_flag()?;
    let mut tally = Tally::default();
    let mut progress = Progress::new(total.max(0) as u64);
    let caught_up = |c: &BaseConsumer| extent.reached(c);
    let mut last_progress = Instant::now();
    while !caught_up(&consumer) && !shutdown.load(Ordering::Relaxed) {
        if last_progress.elapsed() > STALL {
            eprintln!("\nweir dlq replay: no progress for {STALL:?}; stopping (an open transaction on the dead-letter topic holds back its end)");
            break;
        }
        if let Some(p) = &producer {
            p.begin_transaction().context("beginning a transaction")?;
        }
        let mut next_offsets: HashMap<(String, i32), i64> = HashMap::new();
        let batch_start = Instant::now();
        let mut n = 0;
        while n < args.batch && batch_start.elapsed() < Duration::from_secs(1) {
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                if caught_up(&consumer) {
                    break;
                }
                continue;
            };
            let m = m.context("reading the dead-letter topic")?;
            let d = DeadLetter::from_message(&m);
            n += 1;
            last_progress = Instant::now();
            tally.examined += 1;
            next_offsets.insert((d.topic.clone(), d.partition), d.offset + 1);
            if !matches(&d, Some(&args.reason), args.common.since) {
                tally.skipped += 1;
                continue;
            }
            if d.replay_count >= args.max_replays {
                tally.refused += 1;
                continue;
            }
            let Some(to) = args.to.as_ref().or(d.source_topic.as_ref()) else {
                tally.unroutable += 1;
                continue;
            };
            tally.replayed += 1;
            let Some(p) = &producer else { continue };
            let count = (d.replay_count + 1).to_string();
            let from = format!("{}/{}@{}", d.topic, d.partition, d.offset);
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: REPLAY_COUNT_HEADER,
                    value: Some(count.as_bytes()),
                })
                .insert(Header {
                    key: REPLAYED_FROM_HEADER,
                    value: Some(from.as_bytes()),
                });
            let mut record = BaseRecord::to(to).payload(&d.value).headers(headers);
            if let Some(k) = &d.key {
                record = record.key(k);
            }
            loop {
                match p.send(record) {
                    Ok(()) => break,
                    Err((
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull,
                        ),
                        r,
                    )) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err((e, _)) => return Err(e).with_context(|| format!("sending to {to}")),
                }
            }
        }
        if let Some(p) = &producer {
            if !next_offsets.is_empty() {
                let mut offsets = TopicPartitionList::new();
                for ((t, part), o) in &next_offsets {
                    offsets.add_partition_offset(t, *part, Offset::Offset(*o))?;
                }
                let meta = consumer
                    .group_metadata()
                    .context("the replay consumer has no group metadata")?;
                p.send_offsets_to_transaction(&offsets, &meta, Duration::from_secs(30))
                    .context("adding the replay group's offsets to the transaction")?;
            }
            p.commit_transaction(Duration::from_secs(60))
                .context("committing the replay transaction")?;
        }
        progress.show(&tally);
    }
    progress.done();
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
            " (dry run: nothing sent, no offsets committed)"
        } else {
            ""
        }
    );
    println!(
        "  examined {}, skipped {} (other reasons or before --since), refused {} (replayed {} times already: the loop guard, --max-replays), no source topic {}; replay group {group}",
        tally.examined, tally.skipped, tally.refused, args.max_replays, tally.unroutable
    );
    if shutdown.load(Ordering::Relaxed) {
        eprintln!("interrupted: the committed part is kept; run again to go on");
        return Err(Exit(130).into());
    }
    Ok(())
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

    fn done(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
