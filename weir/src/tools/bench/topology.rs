//! `weir bench topology`: the exactly-once loop's throughput beside the ceiling of this
//! machine and broker. Fills a fresh raw topic with synthetic users once, then, in
//! alternating rounds over that same topic:
//!
//! - a raw transactional pass-through — the ceiling: the smallest loop that reads
//!   `read_committed`, copies each record's key, value and headers to another topic and
//!   commits the offsets in a transaction every `commit_interval`, with the engine's client
//!   settings — in this process;
//! - Weir: `weir run --subtopologies 0 --stop-when-idle` of the topology, a child process;
//! - with `--contender CMD`, another processor of the same topic (a shell command, such as
//!   the Kafka Streams version of the users topology in deploy/bench/kafka-streams): it gets
//!   the topics, the application id, the bootstrap servers and the commit interval in the
//!   environment, and prints `records=N records_per_second=R` when it has stopped.
//!
//! Each round reads the whole topic as a fresh consumer group. It prints records/s for
//! each run (first record to last), the medians and Weir's ratio to the pass-through (and
//! to the contender), with Weir's CPU time and peak memory; the bench's topics are deleted at
//! the end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use weir_topology::engine::{self, EngineConfig, InputMode};

use super::{median, process_usage};

/// Options of `weir bench topology`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "The topology must read its topics and application id from WEIR_TOPIC_RAW, WEIR_TOPIC_CLEAN, \
WEIR_TOPIC_DLQ and WEIR_APPLICATION_ID (as topology/users.toml does): the bench sets them to fresh names.\n\n\
Example:\n  weir bench topology topology/users.toml --records 400000 --dirty 0.1 --rounds 3"
)]
pub struct TopologyArgs {
    /// The topology file.
    #[arg(default_value = "topology/users.toml")]
    pub file: PathBuf,
    #[command(flatten)]
    pub load: super::Load,
    /// Another processor to run in each round (`sh -c "exec CMD 2>&1"`), after Weir: it
    /// reads WEIR_TOPIC_RAW and writes WEIR_TOPIC_CLEAN and WEIR_TOPIC_DLQ (its own fresh
    /// topics) as WEIR_APPLICATION_ID, from WEIR_KAFKA_BOOTSTRAP (plaintext), committing every
    /// WEIR_COMMIT_INTERVAL; it stops by itself once the topic is read and prints
    /// `records=N records_per_second=R` (first record to last; `dead_letters=N` too if it
    /// likes) on a line of its own, as `weir run --stop-when-idle` logs.
    #[arg(long, value_name = "CMD")]
    pub contender: Option<String>,
}

/// One run's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    records: f64,
    committed: f64,
    aborted: f64,
    /// Seconds the loop spent committing.
    commit: f64,
    per_second: f64,
    cpu: f64,
    peak_kb: u64,
    /// What the contender said of its dead letters (`dead_letters=N`).
    dead_letters: Option<f64>,
}

pub fn topology(args: &TopologyArgs) -> anyhow::Result<()> {
    let t = crate::cmd::load_with(&args.file, &args.load.kafka)?;
    let kafka = t.settings.kafka.clone();
    let mut whats = vec!["raw", "clean", "dlq", "copy"];
    if args.contender.is_some() {
        whats.extend(["contender-clean", "contender-dlq"]);
    }
    let fresh = super::FreshTopics::create(&kafka, args.load.partitions, &whats)?;
    let [raw, clean, dlq, copy] = ["raw", "clean", "dlq", "copy"].map(|w| fresh.name(w));
    rounds(args, &t, &kafka, &raw, &clean, &dlq, &copy, &|w| {
        fresh.name(w)
    })
}

#[allow(clippy::too_many_arguments)]
fn rounds(
    args: &TopologyArgs,
    t: &weir_topology::Topology,
    kafka: &weir_topology::config::KafkaSettings,
    raw: &str,
    clean: &str,
    dlq: &str,
    copy: &str,
    name: &dyn Fn(&str) -> String,
) -> anyhow::Result<()> {
    eprintln!(
        "producing {} synthetic records ({:.0}% bad) into {raw}",
        args.load.records,
        args.load.dirty * 100.0
    );
    let producer =
        weir::ingest::producer::IngestProducer::new(weir::ingest::producer::ProducerSettings {
            kafka: kafka.clone(),
            topic: raw.to_owned(),
            source: "synthetic",
            linger: Duration::from_millis(50),
        })?;
    let mut generator = weir::ingest::synthetic::Synthetic::new(7, args.load.dirty);
    let (mut key, mut value) = (String::new(), Vec::new());
    for _ in 0..args.load.records {
        generator.next_into(&mut key, &mut value);
        producer.send(Some(key.as_bytes()), &value, None, &[])?;
    }
    producer.flush(Duration::from_secs(120))?;
    drop(producer);

    let (mut pass, mut weir, mut other) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.load.rounds {
        let p = pass_through(t, raw, copy, &name(&format!("pass-{round}")))?;
        eprintln!(
            "round {round}: pass-through {:.0} records/s ({} records, {} transactions committed, {:.1} s of it committing, CPU {:.1} s)",
            p.per_second, p.records, p.committed, p.commit, p.cpu
        );
        let w = run_weir(args, raw, clean, dlq, &name(&format!("app-{round}")))?;
        eprintln!(
            "round {round}: weir run      {:.0} records/s ({} records, {} transactions committed, {} aborted, {:.1} s of it committing, CPU {:.1} s, peak {:.1} MB)",
            w.per_second,
            w.records,
            w.committed,
            w.aborted,
            w.commit,
            w.cpu,
            w.peak_kb as f64 / 1024.0
        );
        anyhow::ensure!(
            p.records as u64 == args.load.records && w.records as u64 == args.load.records,
            "a run did not read all {} records",
            args.load.records
        );
        pass.push(p);
        weir.push(w);
        if let Some(cmd) = &args.contender {
            let c = run_contender(
                cmd,
                t,
                raw,
                [&name("contender-clean"), &name("contender-dlq")],
                &name(&format!("contender-{round}")),
            )?;
            eprintln!(
                "round {round}: contender    {:.0} records/s ({} records, {} dead letters, CPU {:.1} s, peak {:.1} MB)",
                c.per_second,
                c.records,
                c.dead_letters
                    .map_or_else(|| "? (not said)".to_owned(), |d| d.to_string()),
                c.cpu,
                c.peak_kb as f64 / 1024.0
            );
            anyhow::ensure!(
                c.records as u64 == args.load.records,
                "the contender read {} records, not all {}",
                c.records,
                args.load.records
            );
            other.push(c);
        }
    }
    let (p, w) = (
        median(pass.iter().map(|r| r.per_second).collect()),
        median(weir.iter().map(|r| r.per_second).collect()),
    );
    println!(
        "{} records ({:.0}% bad), {} partitions, {} rounds, medians: raw transactional pass-through {:.0} records/s, weir run (sub-topology 0 of {}) {:.0} records/s: {:.2} of the pass-through",
        args.load.records,
        args.load.dirty * 100.0,
        args.load.partitions,
        args.load.rounds,
        p,
        args.file.display(),
        w,
        w / p
    );
    println!(
        "weir run: {} transactions committed, {} aborted in all; median CPU {:.1} s, peak memory {:.1} MB (about the last 3 s are the idle wait before it stops)",
        weir.iter().map(|r| r.committed).sum::<f64>(),
        weir.iter().map(|r| r.aborted).sum::<f64>(),
        median(weir.iter().map(|r| r.cpu).collect()),
        median(weir.iter().map(|r| r.peak_kb as f64 / 1024.0).collect())
    );
    if let Some(cmd) = &args.contender {
        let c = median(other.iter().map(|r| r.per_second).collect());
        println!(
            "contender ({cmd}): {c:.0} records/s, {:.2} of the pass-through; weir run {:.2}x the contender; median CPU {:.1} s, peak memory {:.1} MB",
            c / p,
            w / c,
            median(other.iter().map(|r| r.cpu).collect()),
            median(other.iter().map(|r| r.peak_kb as f64 / 1024.0).collect())
        );
    }
    Ok(())
}

/// `sh -c "exec CMD 2>&1"` over `raw` as application `app`, writing `out` (clean, dead
/// letters); its figures from the last line that gives `records_per_second`.
fn run_contender(
    cmd: &str,
    t: &weir_topology::Topology,
    raw: &str,
    out: [&str; 2],
    app: &str,
) -> anyhow::Result<Run> {
    let child = Command::new("sh")
        .args(["-c", &format!("exec {cmd} 2>&1")])
        .env("WEIR_TOPIC_RAW", raw)
        .env("WEIR_TOPIC_CLEAN", out[0])
        .env("WEIR_TOPIC_DLQ", out[1])
        .env("WEIR_APPLICATION_ID", app)
        .env("WEIR_KAFKA_BOOTSTRAP", &t.settings.kafka.bootstrap_servers)
        .env(
            "WEIR_COMMIT_INTERVAL",
            format!("{}ms", t.settings.commit_interval.as_std().as_millis()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting the contender: sh -c {cmd:?}"))?;
    let (usage, status, lines) = watch(child)?;
    let said = lines
        .iter()
        .rev()
        .find(|l| l.contains("records_per_second="));
    let (Some(records), Some(per_second), true) = (
        said.and_then(|l| figure(l, "records")),
        said.and_then(|l| figure(l, "records_per_second")),
        status.success(),
    ) else {
        print_last(&lines);
        anyhow::bail!(
            "the contender did not finish with records=N records_per_second=R ({status})"
        );
    };
    Ok(Run {
        records,
        per_second,
        cpu: usage.1,
        peak_kb: usage.0,
        dead_letters: said.and_then(|l| figure(l, "dead_letters")),
        ..Run::default()
    })
}

/// The number after `name=` in a line of `key=value` words.
fn figure(line: &str, name: &str) -> Option<f64> {
    let key = format!("{name}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&key)?.parse().ok())
}

/// A child's last lines, to say why it failed.
fn print_last(lines: &[String]) {
    for l in lines.iter().rev().take(10).rev() {
        eprintln!("  {l}");
    }
}

/// Waits for a child whose output `child.stdout` or `child.stderr` is piped, sampling its peak
/// memory and CPU time as it runs; its exit status and the piped lines.
fn watch(
    mut child: std::process::Child,
) -> anyhow::Result<((u64, f64), std::process::ExitStatus, Vec<String>)> {
    let pid = child.id();
    let piped: Box<dyn std::io::Read + Send> = match (child.stdout.take(), child.stderr.take()) {
        (Some(out), _) => Box::new(out),
        (None, Some(err)) => Box::new(err),
        (None, None) => anyhow::bail!("the child's output is not piped"),
    };
    let lines = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(piped)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let mut usage = (0, 0.0);
    while child.try_wait()?.is_none() {
        let now = process_usage(pid);
        if now.0 > 0 {
            usage = now;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = child.wait()?;
    Ok((usage, status, lines.join().unwrap_or_default()))
}

/// The pass-through over `raw` as consumer group `group`: poll, copy, and every
/// `commit_interval` the offsets and the copies in one transaction.
fn pass_through(
    t: &weir_topology::Topology,
    raw: &str,
    to: &str,
    group: &str,
) -> anyhow::Result<Run> {
    let s = &t.settings;
    let config = EngineConfig {
        application_id: group.to_owned(),
        instance: "bench".into(),
        subtopology: 0,
        kafka: s.kafka.clone(),
        commit_interval: s.commit_interval.as_std(),
        commit_max_records: s.commit_max_records,
        transaction_timeout: Duration::from_secs(10),
        stop_when_idle: Some(Duration::from_secs(3)),
        rewind_limit: Duration::from_secs(60),
        input: InputMode::Group,
    };
    let timeout = Duration::from_secs(30);
    // this process does nothing else while the pass-through runs: its CPU time is the loop's
    let cpu_before = process_usage(std::process::id()).1;
    let producer: ThreadedProducer<DefaultProducerContext> =
        engine::producer_config(&config).create()?;
    producer.init_transactions(timeout)?;
    let consumer: BaseConsumer = engine::consumer_config(&config).create()?;
    consumer.subscribe(&[raw])?;
    let mut offsets: HashMap<i32, i64> = HashMap::new();
    let mut open: Option<Instant> = None;
    let (mut first, mut last, mut records) = (None, Instant::now(), 0u64);
    let (mut commits, mut committing) = (0u64, Duration::ZERO);
    let mut commit = |offsets: &mut HashMap<i32, i64>| -> anyhow::Result<()> {
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (p, o) in offsets.drain() {
            tpl.add_partition_offset(raw, p, Offset::Offset(o))?;
        }
        let meta = consumer.group_metadata().context("no group metadata")?;
        producer.send_offsets_to_transaction(&tpl, &meta, timeout)?;
        // as the engine does (see engine::wait_delivered)
        engine::wait_delivered(&producer, timeout);
        producer.commit_transaction(timeout)?;
        commits += 1;
        committing += started.elapsed();
        Ok(())
    };
    loop {
        match consumer.poll(Duration::from_millis(20)) {
            Some(Ok(m)) => {
                if open.is_none() {
                    producer.begin_transaction()?;
                    open = Some(Instant::now());
                }
                let headers = m.headers().map(|h| h.detach());
                let mut r =
                    BaseRecord::<[u8], [u8]>::to(to).payload(m.payload().unwrap_or_default());
                if let Some(k) = m.key() {
                    r = r.key(k);
                }
                if let Some(h) = headers {
                    r = r.headers(h);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    r = r.timestamp(ts);
                }
                loop {
                    match producer.send(r) {
                        Ok(()) => break,
                        Err((e, back))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                        {
                            r = back;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(e).context("the pass-through's send"),
                    }
                }
                offsets.insert(m.partition(), m.offset() + 1);
                records += 1;
                last = Instant::now();
                first.get_or_insert(last);
            }
            Some(Err(e)) => eprintln!("pass-through: {e}"),
            None => {}
        }
        if open.is_some_and(|o| o.elapsed() >= config.commit_interval) {
            commit(&mut offsets)?;
            open = None;
        }
        if last.elapsed() > Duration::from_secs(3) && first.is_some() {
            if open.is_some() {
                commit(&mut offsets)?;
            }
            break;
        }
    }
    let secs = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    drop(consumer);
    drop(producer);
    Ok(Run {
        records: records as f64,
        committed: commits as f64,
        commit: committing.as_secs_f64(),
        cpu: process_usage(std::process::id()).1 - cpu_before,
        per_second: if secs > 0.0 {
            records as f64 / secs
        } else {
            0.0
        },
        ..Run::default()
    })
}

/// `weir run --subtopologies 0` of the topology over `raw` as application `app`.
fn run_weir(
    args: &TopologyArgs,
    raw: &str,
    clean: &str,
    dlq: &str,
    app: &str,
) -> anyhow::Result<Run> {
    let child = Command::new(std::env::current_exe()?)
        .arg("run")
        .arg(&args.file)
        .args([
            "--subtopologies",
            "0",
            "--no-http",
            "--stop-when-idle",
            "3s",
            "--instance",
            "bench",
        ])
        .args(super::forward_options(&args.load.kafka))
        .env("WEIR_TOPIC_RAW", raw)
        .env("WEIR_TOPIC_CLEAN", clean)
        .env("WEIR_TOPIC_DLQ", dlq)
        .env("WEIR_APPLICATION_ID", app)
        .env("WEIR_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting weir run")?;
    let (usage, status, lines) = watch(child)?;
    let stopped = lines.iter().rev().find(|l| l.contains(" stopped records="));
    let (Some(stopped), true) = (stopped, status.success()) else {
        print_last(&lines);
        anyhow::bail!("weir run did not finish cleanly ({status})");
    };
    // the log line reads `… stopped records=N committed=N aborted=N records_per_second=R`
    let field = |name: &str| figure(stopped, name);
    Ok(Run {
        records: field("records").unwrap_or(0.0),
        committed: field("committed").unwrap_or(0.0),
        aborted: field("aborted").unwrap_or(f64::NAN),
        commit: field("commit_seconds").unwrap_or(0.0),
        per_second: field("records_per_second").unwrap_or(0.0),
        cpu: usage.1,
        peak_kb: usage.0,
        dead_letters: None,
    })
}
