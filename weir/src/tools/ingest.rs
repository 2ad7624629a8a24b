//! `weir ingest`: raw records into the raw topic, from randomuser.me (polled) or the
//! synthetic generator (as fast as asked). SIGINT/SIGTERM flush the producer and stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use weir::ingest::producer::{now_rfc3339, IngestProducer, ProducerSettings};
use weir::ingest::randomuser::{backoff, Client, FetchError, RandomUserConfig};
use weir::ingest::synthetic::{Rng, Synthetic};

use crate::cmd::{parse_duration, Exit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// Poll the randomuser.me API.
    Randomuser,
    /// Generate randomuser-shaped users locally.
    Synthetic,
}

/// Records per second, or `unlimited`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub Option<u64>);

fn parse_rate(s: &str) -> Result<Rate, String> {
    match s {
        "unlimited" | "max" => Ok(Rate(None)),
        n => n
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0)
            .map(|n| Rate(Some(n)))
            .ok_or_else(|| {
                format!("invalid rate \"{s}\": a positive number of records/s, or \"unlimited\"")
            }),
    }
}

pub fn parse_option(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!(
            "invalid producer option \"{s}\": KEY=VALUE, like compression.type=lz4"
        )),
    }
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("invalid fraction \"{s}\": a number from 0 to 1, like 0.1"))
}

/// Options of `weir ingest`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  weir ingest --source randomuser --interval 10s --results 5 --nat us,fr\n  weir ingest --source synthetic --rate unlimited --count 1000000 --dirty 0.1 --seed 7"
)]
pub struct IngestArgs {
    /// Where records come from.
    #[arg(long, value_enum, default_value = "randomuser")]
    pub source: Source,
    /// The raw topic.
    #[arg(long, env = "WEIR_TOPIC_RAW", default_value = "randomuser-topic")]
    pub topic: String,
    /// Kafka bootstrap servers.
    #[arg(long, env = "WEIR_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub bootstrap_servers: String,
    /// Seed: the same seed gives the same users (randomuser: the API's seed; synthetic: a number or any text).
    #[arg(long)]
    pub seed: Option<String>,

    /// randomuser: time between polls.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub interval: Duration,
    /// randomuser: users per request (1 to 5000).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub results: u32,
    /// randomuser: nationalities, comma-separated (us,fr,ua,ir,…).
    #[arg(long)]
    pub nat: Option<String>,
    /// randomuser: the API endpoint.
    #[arg(
        long,
        env = "WEIR_RANDOMUSER_URL",
        default_value = "https://randomuser.me/api/"
    )]
    pub url: String,
    /// randomuser: bound on one whole request.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// randomuser: retries of a failed poll before waiting for the next one.
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// randomuser: first wait between retries (doubles each time, with jitter, up to 60 s).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// randomuser: stop after this many polls (default: poll until stopped).
    #[arg(long)]
    pub max_polls: Option<u64>,
    /// randomuser: fetch once, print what happened, send nothing (exit 0 when the API answers).
    #[arg(long)]
    pub probe: bool,

    /// Touch this file after each successful poll (at most once a second for synthetic
    /// records): a container's health check asks whether it is recent.
    #[arg(long, value_name = "PATH")]
    pub heartbeat_file: Option<std::path::PathBuf>,

    /// A librdkafka producer property over weir's defaults, like kcat's -X
    /// (`-X compression.type=lz4 -X linger.ms=100`).
    #[arg(short = 'X', long = "producer-option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub producer_options: Vec<(String, String)>,

    /// synthetic: records per second, or "unlimited".
    #[arg(long, default_value = "100", value_parser = parse_rate)]
    pub rate: Rate,
    /// synthetic: stop after this many records (default: until stopped).
    #[arg(long)]
    pub count: Option<u64>,
    /// synthetic: the fraction of bad records, 0 to 1.
    #[arg(long, default_value = "0", value_parser = parse_fraction)]
    pub dirty: f64,
}

pub fn run(args: &IngestArgs) -> anyhow::Result<()> {
    let shutdown = weir::signals::shutdown_flag()?;
    match args.source {
        Source::Randomuser if args.probe => probe(args),
        Source::Randomuser => randomuser(args, &shutdown),
        Source::Synthetic => synthetic(args, &shutdown),
    }
}

fn producer(
    args: &IngestArgs,
    source: &'static str,
    linger: Duration,
) -> anyhow::Result<IngestProducer> {
    let kafka = weir_topology::config::KafkaSettings::plain(&args.bootstrap_servers)
        .with_options(&args.producer_options);
    crate::cmd::check_kafka(&kafka)?;
    IngestProducer::new(ProducerSettings {
        kafka,
        topic: args.topic.clone(),
        source,
        linger,
    })
    .context("creating the Kafka producer")
}

fn client(args: &IngestArgs) -> Client {
    Client::new(RandomUserConfig {
        url: args.url.clone(),
        results: args.results,
        nat: args.nat.clone(),
        seed: args.seed.clone(),
        timeout: args.timeout,
    })
}

fn probe(args: &IngestArgs) -> anyhow::Result<()> {
    match client(args).fetch() {
        Ok(f) => {
            println!("{} answered with {} user(s)", args.url, f.users.len());
            Ok(())
        }
        Err(e) => {
            eprintln!("{}: {e}", args.url);
            Err(Exit(1).into())
        }
    }
}

/// Waits up to `d` serving the producer's delivery reports, waking early on shutdown.
/// Returns false when shutting down.
fn sleep_unless(shutdown: &AtomicBool, producer: &IngestProducer, d: Duration) -> bool {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if shutdown.load(Ordering::Relaxed) {
            return false;
        }
        producer.wait((until - Instant::now()).min(Duration::from_millis(100)));
    }
    !shutdown.load(Ordering::Relaxed)
}

fn randomuser(args: &IngestArgs, shutdown: &Arc<AtomicBool>) -> anyhow::Result<()> {
    let client = client(args);
    let producer = producer(args, "randomuser", Duration::from_millis(5))?;
    let mut jitter = Rng::new(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    );
    let mut heartbeat = Heartbeat::new(args.heartbeat_file.clone());
    tracing::info!(url = %args.url, interval = ?args.interval, results = args.results, topic = %args.topic, "polling randomuser.me");
    let (mut polls, mut sent, mut failed_polls) = (0u64, 0u64, 0u64);
    'polls: while !shutdown.load(Ordering::Relaxed) {
        if args.max_polls.is_some_and(|m| polls >= m) {
            break;
        }
        polls += 1;
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            match client.fetch() {
                Ok(fetched) => {
                    let at = now_rfc3339();
                    let seed = fetched.seed.clone().unwrap_or_default();
                    for u in &fetched.users {
                        producer
                            .send(
                                u.key.as_deref().map(str::as_bytes),
                                &u.value,
                                Some(&at),
                                &[("weir.ingest.seed", seed.as_bytes())],
                            )
                            .context("sending to Kafka")?;
                    }
                    sent += fetched.users.len() as u64;
                    heartbeat.beat();
                    tracing::info!(users = fetched.users.len(), seed = %seed, total = sent, "poll {polls}: fetched");
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    let what = match &e {
                        FetchError::Dns { .. } => "no network or DNS failure",
                        FetchError::Connect { .. } => "cannot connect",
                        FetchError::Timeout { .. } => "timeout",
                        FetchError::RateLimited { .. } => "rate limited (HTTP 429)",
                        FetchError::Status { status, .. } if *status >= 500 => "server error",
                        FetchError::Status { .. } => "unexpected HTTP status",
                        FetchError::NotJson { .. } => "answer is not JSON",
                        FetchError::Api(_) => "API error body",
                        FetchError::Empty => "empty results",
                        FetchError::Read(_) => "reading the answer failed",
                    };
                    if attempt > args.retries || !e.is_transient() {
                        failed_polls += 1;
                        tracing::error!(error = %e, attempts = attempt, "poll {polls} failed ({what}); nothing lost, next poll in {:?}", args.interval);
                        break;
                    }
                    let wait = match &e {
                        FetchError::RateLimited {
                            retry_after: Some(s),
                        } => Duration::from_secs(*s).min(Duration::from_secs(300)),
                        _ => backoff(
                            attempt,
                            args.retry_backoff,
                            Duration::from_secs(60),
                            jitter.next_u64(),
                        ),
                    };
                    tracing::warn!(error = %e, "poll {polls} failed ({what}); retry {attempt}/{} in {:.1}s", args.retries, wait.as_secs_f64());
                    if !sleep_unless(shutdown, &producer, wait) {
                        break 'polls;
                    }
                }
            }
        }
        if args.max_polls.is_some_and(|m| polls >= m) {
            break;
        }
        if !sleep_unless(
            shutdown,
            &producer,
            args.interval.saturating_sub(started.elapsed()),
        ) {
            break;
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the producer")?;
    let stats = producer.stats();
    tracing::info!(
        polls,
        failed_polls,
        sent,
        delivered = producer.delivered(),
        failed = stats.failed.load(Ordering::Relaxed),
        "ingest stopped"
    );
    Ok(())
}

fn seed_number(seed: Option<&str>) -> u64 {
    match seed {
        None => 1,
        Some(s) => s.parse().unwrap_or_else(|_| {
            // any text: FNV-1a
            s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            })
        }),
    }
}

/// glibc's malloc without fast bins: at full speed the producer's messages (1–2 kB, above
/// the thread cache's sizes) kept consolidating fast bins; turning them off measured 10–20%
/// more records/s (GLIBC_TUNABLES=glibc.malloc.mxfast=0 does the same from outside).
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn mallopt(param: std::ffi::c_int, value: std::ffi::c_int) -> std::ffi::c_int;
        }
        const M_MXFAST: std::ffi::c_int = 1;
        // SAFETY: mallopt only changes an allocator setting; M_MXFAST may be set at any time
        // and 0 is a valid value (no fast bins).
        unsafe {
            mallopt(M_MXFAST, 0);
        }
    }
}

/// `--heartbeat-file`: its modification time says when ingest last made progress.
struct Heartbeat {
    path: Option<std::path::PathBuf>,
    last: Option<Instant>,
}

impl Heartbeat {
    fn new(path: Option<std::path::PathBuf>) -> Self {
        Self { path, last: None }
    }

    /// Rewrites the file (the time, RFC 3339), at most once a second.
    fn beat(&mut self) {
        let Some(path) = &self.path else { return };
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last = Some(Instant::now());
        if let Err(e) = std::fs::write(path, now_rfc3339() + "\n") {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the heartbeat file");
        }
    }
}

fn synthetic(args: &IngestArgs, shutdown: &Arc<AtomicBool>) -> anyhow::Result<()> {
    if args.rate.0.is_none() {
        tune_malloc();
    }
    let linger = if args.rate.0.is_none() { 50 } else { 10 };
    let producer = producer(args, "synthetic", Duration::from_millis(linger))?;
    let mut generator = Synthetic::new(seed_number(args.seed.as_deref()), args.dirty);
    let started = Instant::now();
    let (mut sent, mut dirty) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    let (mut key, mut value) = (String::with_capacity(36), Vec::with_capacity(2048));
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut heartbeat = Heartbeat::new(args.heartbeat_file.clone());
    tracing::info!(rate = ?args.rate.0, count = ?args.count, dirty = args.dirty, topic = %args.topic, "generating synthetic users");
    while !shutdown.load(Ordering::Relaxed) && args.count.is_none_or(|c| sent < c) {
        heartbeat.beat();
        if let Some(rate) = args.rate.0 {
            // pace: never ahead of rate × elapsed
            let allowed = (started.elapsed().as_secs_f64() * rate as f64) as u64 + 1;
            if sent >= allowed {
                producer.wait(Duration::from_millis(1));
                continue;
            }
        }
        dirty += u64::from(generator.next_into(&mut key, &mut value).is_some());
        producer
            .send(Some(key.as_bytes()), &value, None, &[])
            .context("sending to Kafka")?;
        sent += 1;
        if sent % 4096 == 0 {
            if let Some(count) = args.count {
                if last_progress.elapsed() >= Duration::from_secs(1) {
                    last_progress = Instant::now();
                    let rps = sent as f64 / started.elapsed().as_secs_f64();
                    let line = format!(
                        "ingest: {sent} / {count} records ({:.1}%), {rps:.0} records/s",
                        sent as f64 * 100.0 / count as f64
                    );
                    if tty {
                        eprint!("\r{line}   ");
                    } else {
                        eprintln!("{line}");
                    }
                }
            }
        }
    }
    if tty && args.count.is_some() {
        eprintln!();
    }
    let generated_in = started.elapsed();
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the producer")?;
    let elapsed = started.elapsed();
    let stats = producer.stats();
    let delivered = producer.delivered();
    let failed = stats.failed.load(Ordering::Relaxed);
    println!(
        "ingest: {sent} records ({dirty} dirty) delivered {delivered}, failed {failed} in {:.2}s: {:.0} records/s (generated in {:.2}s)",
        elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        generated_in.as_secs_f64()
    );
    if failed > 0 {
        return Err(Exit(1).into());
    }
    Ok(())
}
