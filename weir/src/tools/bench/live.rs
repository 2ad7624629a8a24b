//! `weir bench live`: the live view under load on loopback. Starts `weir run` with only the
//! websocket sub-topology, connects N websocket clients (plus deliberately stalled ones that
//! never read), produces clean records into Kafka at a fixed rate for a fixed time, and
//! reports what every client received, the fan-out latency (broadcast → client) and the
//! end-to-end latency (Kafka timestamp → client) as p50/p99, and the server's peak memory.
//! Exits 1 when a client that kept up missed a greeting without being told.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_sinks::websocket::WebsocketSinkConfig;

use super::process_usage;
use crate::cmd::{parse_duration, Exit};

/// Options of `weir bench live`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Example:\n  weir bench live topology/users.toml --clients 1000 --rate 500 --duration 30s"
)]
pub struct LiveArgs {
    /// The topology file (its websocket sink and the topic it reads).
    #[arg(default_value = "topology/users.toml")]
    pub file: PathBuf,
    #[command(flatten)]
    pub kafka: crate::cmd::KafkaOptions,
    /// Websocket clients that read everything.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// Clients that connect and never read.
    #[arg(long, default_value_t = 1)]
    pub stalled: usize,
    /// Greetings per second.
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// How long to produce.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// The port of the server the bench starts (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
}

/// Latencies in 50 µs buckets up to 10 s.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

const BUCKET_US: f64 = 50.0;

impl Histogram {
    fn new() -> Self {
        Self {
            buckets: (0..200_000).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn record(&self, ms: f64) {
        let i = ((ms.max(0.0) * 1000.0 / BUCKET_US) as usize).min(self.buckets.len() - 1);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (count, p50, p99, max) in ms.
    fn summary(&self) -> (u64, f64, f64, f64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let n: u64 = counts.iter().sum();
        let at = |q: f64| {
            let target = ((n as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= target {
                    return (i as f64 + 1.0) * BUCKET_US / 1000.0;
                }
            }
            0.0
        };
        let max = counts
            .iter()
            .rposition(|c| *c > 0)
            .map_or(0.0, |i| (i as f64 + 1.0) * BUCKET_US / 1000.0);
        (n, at(0.5), at(0.99), max)
    }
}

#[derive(Default)]
struct ClientStats {
    greetings: AtomicU64,
    skipped: AtomicU64,
    failed: AtomicBool,
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as f64 / 1000.0)
        .unwrap_or(0.0)
}

/// The number after `"key":` in a JSON text (no full parse: the bench must stay cheaper than
/// the server it measures).
fn number_after(text: &[u8], key: &str) -> Option<f64> {
    let pat = format!("\"{key}\":");
    let start = text.windows(pat.len()).position(|w| w == pat.as_bytes())? + pat.len();
    let end = text[start..]
        .iter()
        .position(|b| !(b.is_ascii_digit() || *b == b'.' || *b == b'-'))
        .map_or(text.len(), |e| start + e);
    std::str::from_utf8(&text[start..end]).ok()?.parse().ok()
}

/// Opens `/ws`. A stalled client gets a tiny receive buffer, so the kernel cannot absorb what
/// the server sends it and the server's own bounded queue for it is what fills.
async fn handshake(port: u16, stalled: bool) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    if stalled {
        socket.set_recv_buffer_size(4096)?;
    }
    let mut s = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    s.set_nodelay(true)?;
    s.write_all(
        format!(
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            anyhow::bail!("the server closed the connection during the handshake");
        }
        head.push(byte[0]);
        if head.len() > 4096 {
            anyhow::bail!("the handshake answer is too long");
        }
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        anyhow::bail!(
            "handshake refused: {}",
            String::from_utf8_lossy(&head).lines().next().unwrap_or("")
        );
    }
    Ok(s)
}

/// Reads server frames (unmasked) until the connection closes or `stop`.
async fn read_client(
    mut s: TcpStream,
    stats: Arc<ClientStats>,
    fanout: Arc<Histogram>,
    e2e: Arc<Histogram>,
    stop: Arc<AtomicBool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            r = s.read(&mut chunk) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if stop.load(Ordering::Relaxed) { break } else { continue }
            }
        };
        let received = now_ms();
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        loop {
            let b = &buf[at..];
            if b.len() < 2 {
                break;
            }
            let opcode = b[0] & 0x0f;
            let (len, head) = match b[1] & 0x7f {
                126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
                127 if b.len() >= 10 => (
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                    10,
                ),
                126 | 127 => break,
                l => (l as usize, 2),
            };
            if b.len() < head + len {
                break;
            }
            let payload = &b[head..head + len];
            match opcode {
                1 => {
                    // serde_json writes keys in order, so `type` comes last
                    if payload.ends_with(b"\"type\":\"greeting\"}") {
                        stats.greetings.fetch_add(1, Ordering::Relaxed);
                        if let Some(sent) = number_after(payload, "at") {
                            fanout.record(received - sent);
                        }
                        if let Some(ts) = number_after(payload, "ts") {
                            e2e.record(received - ts);
                        }
                    } else if payload.ends_with(b"\"type\":\"skipped\"}") {
                        let n = number_after(payload, "count").unwrap_or(0.0) as u64;
                        stats.skipped.fetch_add(n, Ordering::Relaxed);
                    }
                }
                8 => {
                    stats.failed.store(true, Ordering::Relaxed);
                    return;
                }
                _ => {}
            }
            at += head + len;
        }
        buf.drain(..at);
    }
}

fn clients_connected(port: u16) -> Option<i64> {
    let body = ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix("weir_websocket_clients "))
        .and_then(|v| v.trim().parse().ok())
}

/// (peak resident memory in kB, CPU seconds) of a process.
pub fn live(args: &LiveArgs) -> anyhow::Result<()> {
    let t = crate::cmd::load_with(&args.file, &args.kafka)?;
    let subs = weir_topology::graph::sub_topologies(&t);
    let (sub, node) = subs
        .iter()
        .find_map(|s| {
            s.nodes.iter().find_map(|n| {
                let node = t.node(n)?;
                node.config::<WebsocketSinkConfig>().map(|_| (s.id, node))
            })
        })
        .with_context(|| format!("{} has no websocket sink", args.file.display()))?;
    let topic = weir::services::input_topic(&t, node)?;
    let partitions = topic_partitions(&t.settings.kafka, &topic)?;
    if partitions == 0 {
        anyhow::bail!(
            "topic {topic} does not exist: create it (deploy/dev up does) or set WEIR_TOPIC_CLEAN"
        );
    }
    let port = args.port.unwrap_or_else(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(5099)
    });
    let exe = std::env::current_exe()?;
    let mut server = Command::new(exe)
        .args(["run"])
        .arg(&args.file)
        .args([
            "--subtopologies",
            &sub.to_string(),
            "--instance",
            "bench",
            "--http-port",
            &port.to_string(),
        ])
        .args(super::forward_options(&args.kafka))
        .env("WEIR_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting weir run")?;
    let server_pid = server.id();
    let result = drive(args, port, &topic, &t.settings.kafka, server_pid);
    let (peak_kb, cpu) = process_usage(server_pid);
    let _ = Command::new("kill")
        .args(["-TERM", &server_pid.to_string()])
        .status();
    let _ = server.wait();
    let report = result?;
    println!(
        "server (weir run, websocket sub-topology only, pid {server_pid}): peak memory {:.1} MB, CPU {cpu:.1} s",
        peak_kb as f64 / 1024.0
    );
    if report.lost > 0 {
        eprintln!(
            "weir bench live: {} client(s) that were not told they skipped missed greetings",
            report.lost
        );
        return Err(Exit(1).into());
    }
    Ok(())
}

/// How many partitions `topic` has (0 when it does not exist); never creates it.
fn topic_partitions(
    kafka: &weir_topology::config::KafkaSettings,
    topic: &str,
) -> anyhow::Result<usize> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let bootstrap = &kafka.bootstrap_servers;
    let c: BaseConsumer = kafka
        .client("bench-live-probe", |c| {
            c.set("allow.auto.create.topics", "false");
        })
        .create()?;
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of {topic} from {bootstrap}"))?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .map(|t| t.partitions().len())
        .sum())
}

struct Report {
    lost: usize,
}

fn drive(
    args: &LiveArgs,
    port: u16,
    topic: &str,
    kafka: &weir_topology::config::KafkaSettings,
    server_pid: u32,
) -> anyhow::Result<Report> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while clients_connected(port).is_none() {
        if Instant::now() > deadline
            || !std::path::Path::new(&format!("/proc/{server_pid}")).exists()
        {
            anyhow::bail!("the server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let fanout = Arc::new(Histogram::new());
    let e2e = Arc::new(Histogram::new());
    let stop = Arc::new(AtomicBool::new(false));
    let stats: Vec<Arc<ClientStats>> = (0..args.clients)
        .map(|_| Arc::new(ClientStats::default()))
        .collect();
    // connect everyone first (the stalled ones keep their sockets and never read)
    let (tasks, stalled) = rt.block_on(async {
        let mut tasks = Vec::new();
        for s in &stats {
            let conn = handshake(port, false)
                .await
                .context("connecting a websocket client")?;
            tasks.push(tokio::spawn(read_client(
                conn,
                s.clone(),
                fanout.clone(),
                e2e.clone(),
                stop.clone(),
            )));
        }
        let mut stalled = Vec::new();
        for _ in 0..args.stalled {
            stalled.push(handshake(port, true).await?);
        }
        anyhow::Ok((tasks, stalled))
    })?;
    let want = (args.clients + args.stalled) as i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while clients_connected(port) != Some(want) {
        if Instant::now() > deadline {
            anyhow::bail!(
                "the server counts {:?} clients, not {want}",
                clients_connected(port)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // the hello and history messages are not greetings of this run
    std::thread::sleep(Duration::from_secs(2));
    let baseline: Vec<u64> = stats
        .iter()
        .map(|s| s.greetings.load(Ordering::Relaxed))
        .collect();
    for h in [&fanout, &e2e] {
        for b in &h.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }
    eprintln!(
        "{} clients and {} stalled connected to 127.0.0.1:{port}; producing {} greetings/s into {topic} for {:?}",
        args.clients, args.stalled, args.rate, args.duration
    );
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client("bench-live", |c| {
            c.set("linger.ms", "1");
        })
        .create()
        .context("creating the producer")?;
    let total = args.rate * args.duration.as_secs();
    let started = Instant::now();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let value =
            format!("{{\"full_name\":\"Bench {i:06}\",\"email\":\"bench{i}@example.com\"}}");
        let mut record = BaseRecord::<str, str>::to(topic)
            .key("bench")
            .payload(&value)
            .timestamp(now_ms() as i64);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    let produced_in = started.elapsed();
    // let the last greetings arrive
    let drain = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain {
        let done = stats.iter().zip(&baseline).all(|(s, b)| {
            s.greetings.load(Ordering::Relaxed) - b + s.skipped.load(Ordering::Relaxed) >= total
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for t in tasks {
            let _ = t.await;
        }
    });
    // now the stalled clients read what the server kept for them
    let stalled_stats: Vec<Arc<ClientStats>> = stalled
        .iter()
        .map(|_| Arc::new(ClientStats::default()))
        .collect();
    let unstall = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = stalled
        .into_iter()
        .zip(&stalled_stats)
        .map(|(conn, s)| {
            rt.spawn(read_client(
                conn,
                s.clone(),
                Arc::new(Histogram::new()),
                Arc::new(Histogram::new()),
                unstall.clone(),
            ))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    unstall.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for r in readers {
            let _ = r.await;
        }
    });
    let mut complete = 0;
    let mut told = 0;
    let mut lost = 0;
    for (s, b) in stats.iter().zip(&baseline) {
        let got = s.greetings.load(Ordering::Relaxed) - b;
        let skipped = s.skipped.load(Ordering::Relaxed);
        if got == total && skipped == 0 {
            complete += 1;
        } else if got + skipped >= total {
            told += 1;
        } else {
            lost += 1;
        }
    }
    let (n, p50, p99, max) = fanout.summary();
    let (_, e50, e99, emax) = e2e.summary();
    println!(
        "{total} greetings at {} /s in {:.1} s to {} clients (+{} stalled): {complete} received every greeting, \
         {told} fell behind and were told how many they skipped, {lost} missed greetings untold",
        args.rate,
        produced_in.as_secs_f64(),
        args.clients,
        args.stalled
    );
    for (i, s) in stalled_stats.iter().enumerate() {
        println!(
            "stalled client {}: once it read, it had {} greetings waiting and was told it skipped {}",
            i + 1,
            s.greetings.load(Ordering::Relaxed),
            s.skipped.load(Ordering::Relaxed)
        );
    }
    println!(
        "fan-out latency (broadcast -> client), {n} deliveries: p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    );
    println!(
        "end-to-end latency (Kafka timestamp -> client): p50 {e50:.2} ms, p99 {e99:.2} ms, max {emax:.2} ms"
    );
    Ok(Report { lost })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_numbers_without_parsing_json() {
        let m = br#"{"type":"greeting","text":"Hello \"at\":1!","ts":1700000000123,"at":1700000000125.25}"#;
        assert_eq!(number_after(m, "ts"), Some(1_700_000_000_123.0));
        assert_eq!(
            number_after(br#"{"type":"skipped","count":12}"#, "count"),
            Some(12.0)
        );
        assert_eq!(number_after(m, "nope"), None);
    }

    #[test]
    fn histogram_quantiles() {
        let h = Histogram::new();
        for i in 0..100 {
            h.record(i as f64 / 10.0);
        }
        let (n, p50, p99, max) = h.summary();
        assert_eq!(n, 100);
        assert!((4.9..=5.1).contains(&p50), "{p50}");
        assert!((9.8..=10.0).contains(&p99), "{p99}");
        assert!((9.9..=10.0).contains(&max), "{max}");
    }
}
