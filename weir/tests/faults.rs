//! The fault suite: every record exactly once through SIGKILLs of Weir, SIGKILLs and pauses
//! of the broker and crashes of PostgreSQL.
//!
//! It owns the broker and the PostgreSQL cluster it kills (started here on free ports, see
//! `common::stack`), so nothing else is disturbed. Two `weir run` processes of one
//! application (instances `a` and `b`, every sub-topology each, restarted by a supervisor
//! whenever they exit, like systemd's `Restart=always`) process raw records with 10% bad
//! ones of every kind while faults are injected at random times:
//!
//! | size | records | Weir SIGKILLs | broker SIGKILLs | broker pauses (15 s) | PostgreSQL crashes |
//! | --- | --- | --- | --- | --- | --- |
//! | small (`deploy/dev test`) | 20,000 | 4 | 1 | 1 | 1 |
//! | full (`deploy/dev faults`, `WEIR_FAULTS=full`) | 1,000,000 | 20 | 3 | 3 | 3 |
//!
//! Afterwards: every raw offset has exactly one fate across the clean and dead-letter topics,
//! by source coordinates; the PostgreSQL ledger equals the clean topic per partition; the
//! table has one row per distinct key; every window seals and passes its end-to-end audit.
//! It begins with the upstream stalled: for the first 10 s (over three times `idle_timeout`)
//! only a third process with the sinks runs (`--subtopologies 1,2`, it stays on) while raw
//! records arrive, and no window may become sealable. The figures go to stderr and to
//! `target/tmp/faults-<size>.json`.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::api::Http;
use common::kafka::{committed, ends, read_all};
use common::stack::{Kafka, Postgres};
use common::users::raw_record;
use common::weir::Topics;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

const PARTITIONS: i32 = 4;
const WINDOW_MS: i64 = 300_000;
const WINDOWS: i64 = 4;
const TOKEN: &str = "faults-admin-token";
/// After how long without a committed offset moving the suite writes down what it waits for.
const STALL_DUMP_AFTER: Duration = Duration::from_secs(60);
/// How long only the sinks run at the start, raw records waiting upstream.
const STALL_MS: u64 = 10_000;

struct Size {
    name: &'static str,
    records: usize,
    weir_kills: usize,
    broker_kills: usize,
    broker_pauses: usize,
    pg_crashes: usize,
    /// How long producing takes: the faults fall inside it.
    produce_for: Duration,
}

fn size() -> Size {
    match std::env::var("WEIR_FAULTS").as_deref() {
        Ok("full") => Size {
            name: "full",
            records: 1_000_000,
            weir_kills: 20,
            broker_kills: 3,
            broker_pauses: 3,
            pg_crashes: 3,
            produce_for: Duration::from_secs(480),
        },
        _ => Size {
            name: "small",
            records: 20_000,
            weir_kills: 4,
            broker_kills: 1,
            broker_pauses: 1,
            pg_crashes: 1,
            produce_for: Duration::from_secs(60),
        },
    }
}

/// xorshift64*: a schedule that can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    KillWeir,
    KillBroker,
    PauseBroker,
    CrashPostgres,
}

/// One `weir run` under the supervisor.
struct Instance {
    name: &'static str,
    port: u16,
    /// `--subtopologies`, when not all.
    only: Option<&'static str>,
    /// Kept running by the supervisor.
    enabled: bool,
    child: Option<common::Guard>,
    starts: usize,
    /// Exit codes of the times it ended on its own (not killed by the suite).
    exits: Vec<Option<i32>>,
}

struct Suite {
    topics: Topics,
    topology: std::path::PathBuf,
    database_url: String,
    dir: std::path::PathBuf,
    instances: Vec<Instance>,
}

impl Suite {
    fn start(&mut self, i: usize) {
        let inst = &mut self.instances[i];
        inst.starts += 1;
        let log = std::fs::File::create(
            self.dir
                .join(format!("weir-{}-{}.log", inst.name, inst.starts)),
        )
        .unwrap();
        let mut args = vec![
            "run",
            self.topology.to_str().unwrap(),
            "--instance",
            inst.name,
        ];
        if let Some(only) = inst.only {
            args.extend(["--subtopologies", only]);
        }
        let child = self
            .topics
            .command(&args)
            .env("WEIR_DATABASE_URL", &self.database_url)
            .env("WEIR_HTTP_PORT", inst.port.to_string())
            .env("WEIR_ADMIN_TOKEN", TOKEN)
            .env("WEIR_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run");
        inst.child = Some(common::Guard(child));
    }

    /// Restarts every instance that ended on its own; records how it ended.
    fn supervise(&mut self) {
        // a killed instance is started again by `kill`; one that is not enabled waits
        for i in 0..self.instances.len() {
            if !self.instances[i].enabled {
                continue;
            }
            let ended = match self.instances[i].child.as_mut() {
                Some(c) => c.try_wait().unwrap().map(|s| s.code()),
                None => Some(None),
            };
            if let Some(code) = ended {
                if self.instances[i].child.is_some() {
                    self.instances[i].exits.push(code);
                }
                self.start(i);
            }
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.instances[i].child.take() {
            c.kill().ok();
            c.wait().unwrap();
        }
        self.start(i);
    }

    /// Writes what a stalled run waits for into `stall.txt` in the scratch directory: each
    /// instance's threads (with gdb, where it is installed), the group's offsets and members
    /// and the broker's open transactions.
    fn dump_stall(&self, kafka: &Kafka, committed: &[i64], end: &[i64]) {
        let mut out = format!("committed {committed:?} of {end:?}\n");
        for inst in &self.instances {
            let Some(child) = &inst.child else { continue };
            let pid = child.id().to_string();
            let stacks = std::process::Command::new("gdb")
                .args([&format!("/proc/{pid}/exe"), "-p", &pid, "-batch", "-ex"])
                .arg("thread apply all bt")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_else(|e| format!("gdb: {e}"));
            out += &format!("\n== weir {} (pid {})\n{stacks}", inst.name, child.id());
        }
        let group = &self.topics.app;
        for (class, args) in [
            (
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                vec!["--describe", "--group", group, "--offsets"],
            ),
            (
                "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
                vec!["--describe", "--group", group, "--members", "--verbose"],
            ),
        ] {
            out += &format!("\n== {class} {args:?}\n{}", kafka.tool(class, &args));
        }
        let class = "org.apache.kafka.tools.TransactionsCommand";
        let list = kafka.tool(class, &["list"]);
        for id in list
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
        {
            let args = ["describe", "--transactional-id", id];
            out += &format!("\n== {class} {args:?}\n{}", kafka.tool(class, &args));
        }
        let path = self.dir.join("stall.txt");
        std::fs::write(&path, out).unwrap();
        eprintln!(
            "the processing stalled: what it waits for is in {}",
            path.display()
        );
    }

    /// An instance's API, while it answers.
    fn api(&self) -> Option<Http> {
        self.instances.iter().filter(|i| i.enabled).find_map(|i| {
            let http = Http::local(i.port);
            http.agent
                .get(format!("{}/healthz", http.base))
                .call()
                .ok()
                .map(|_| http)
        })
    }
}

/// Produces the raw records, paced over `for_`, timestamps spread over the windows.
fn produce(topic: &str, records: usize, base: i64, for_: Duration) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "10")
        // through broker kills and pauses: retried until delivered
        .set("message.timeout.ms", "0")
        .create()
        .unwrap();
    let started = Instant::now();
    let span = WINDOWS * WINDOW_MS;
    for i in 0..records {
        let (value, _) = raw_record(i);
        let key = format!("user-{i}");
        let ts = base + (i as i64 * span) / records as i64;
        let mut record = BaseRecord::to(topic)
            .partition((i % PARTITIONS as usize) as i32)
            .key(&key)
            .payload(&value)
            .timestamp(ts);
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        if i % 1000 == 999 {
            let due = for_.mul_f64((i + 1) as f64 / records as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    p.flush(Duration::from_secs(600))
        .expect("every raw record delivered");
}

fn window_starts(base: i64) -> Vec<String> {
    (0..WINDOWS)
        .map(|w| {
            chrono::DateTime::from_timestamp_millis(base + w * WINDOW_MS)
                .unwrap()
                .to_rfc3339()
        })
        .collect()
}

/// `users.toml` with a short idle timeout, so the windows can seal soon after the end.
fn topology(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(common::weir::users_toml()).unwrap();
    let anchor = "table = \"users\"\n";
    assert!(shipped.contains(anchor), "users.toml changed its sink");
    let path = dir.join("users-faults.toml");
    std::fs::write(
        &path,
        shipped.replace(anchor, &format!("{anchor}idle_timeout = \"3s\"\n")),
    )
    .unwrap();
    path
}

#[test]
fn every_record_exactly_once_through_kills_pauses_and_crashes() {
    let size = size();
    let t0 = Instant::now();
    let dir = common::scratch_dir("weir-faults");
    let mut kafka = Kafka::start(&dir);
    // every helper and `weir` command of this test talks to this broker
    std::env::set_var("WEIR_KAFKA_BOOTSTRAP", kafka.bootstrap());
    let pg = Postgres::start(&dir);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let database_url = rt.block_on(async {
        let admin = common::pg::connect(&pg.url("postgres")).await;
        admin.batch_execute("CREATE DATABASE weir").await.unwrap();
        let db = pg.url("weir");
        common::pg::connect(&db)
            .await
            .batch_execute(common::pg::SCHEMA)
            .await
            .unwrap();
        db
    });
    let topics = Topics::create("weir-faults", PARTITIONS);
    let mut suite = Suite {
        topology: topology(&dir),
        topics,
        database_url,
        dir: dir.clone(),
        instances: [
            ("a", None, false),
            ("b", None, false),
            ("sinks", Some("1,2"), true),
        ]
        .into_iter()
        .map(|(name, only, enabled)| Instance {
            name,
            port: common::free_port(),
            only,
            enabled,
            child: None,
            starts: 0,
            exits: Vec::new(),
        })
        .collect(),
    };
    suite.supervise();

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!(
        "fault suite ({}): seed {seed}, scratch {}",
        size.name,
        dir.display()
    );
    let mut rng = Rng(seed);
    let mut schedule: Vec<(Duration, Fault)> = Vec::new();
    let window = size.produce_for.as_millis() as u64;
    for (n, fault) in [
        (size.weir_kills, Fault::KillWeir),
        (size.broker_kills, Fault::KillBroker),
        (size.broker_pauses, Fault::PauseBroker),
        (size.pg_crashes, Fault::CrashPostgres),
    ] {
        for _ in 0..n {
            let at = STALL_MS + 2_000 + rng.below(window.saturating_sub(STALL_MS + 2_000).max(1));
            schedule.push((Duration::from_millis(at), fault));
        }
    }
    schedule.sort();

    // raw records over the past windows, produced while the faults happen
    let base = (chrono::Utc::now().timestamp_millis() / WINDOW_MS - WINDOWS - 3) * WINDOW_MS;
    let producer = {
        let raw = suite.topics.raw.clone();
        let (records, for_) = (size.records, size.produce_for);
        std::thread::spawn(move || produce(&raw, records, base, for_))
    };
    let starts = window_starts(base);
    let started = Instant::now();
    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut next = 0;
    let mut stalled = true;
    let mut stall_checks = 0;
    while next < schedule.len() || !producer.is_finished() {
        suite.supervise();
        if stalled {
            // no window may be sealable while its raw records wait upstream
            if let Some(api) = suite.api() {
                for s in &starts {
                    let (_, body) = api.call("GET", &format!("/api/windows/{s}/sealable"), None);
                    assert_ne!(
                        body["sealable"], true,
                        "window {s} sealable while the upstream is stalled: {body}"
                    );
                }
                stall_checks += 1;
            }
            if started.elapsed() >= Duration::from_millis(STALL_MS) {
                assert!(stall_checks > 5, "the stall was checked: {stall_checks}");
                eprintln!(
                    "{:?}: the processing starts ({stall_checks} checks, none sealable)",
                    started.elapsed()
                );
                stalled = false;
                suite.instances[0].enabled = true;
                suite.instances[1].enabled = true;
                suite.supervise();
            }
        }
        if next < schedule.len() && started.elapsed() >= schedule[next].0 {
            let fault = schedule[next].1;
            next += 1;
            *injected.entry(fault).or_default() += 1;
            eprintln!("{:?}: {fault:?}", started.elapsed());
            match fault {
                Fault::KillWeir => {
                    let i = rng.below(3) as usize;
                    suite.kill(i);
                }
                Fault::KillBroker => {
                    kafka.kill();
                    std::thread::sleep(Duration::from_secs(2));
                    kafka.restart();
                }
                Fault::PauseBroker => {
                    kafka.pause();
                    let until = Instant::now() + Duration::from_secs(15);
                    while Instant::now() < until {
                        suite.supervise();
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    kafka.resume();
                }
                Fault::CrashPostgres => pg.crash_and_restart(),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    producer.join().expect("producer");
    let produced = started.elapsed();

    // every raw record processed, every clean record applied
    let end = ends(&suite.topics.raw, PARTITIONS);
    assert_eq!(end.iter().sum::<i64>(), size.records as i64, "raw records");
    let deadline = Instant::now() + Duration::from_secs(600);
    let (mut seen, mut moved, mut dumped) = (Vec::new(), Instant::now(), false);
    loop {
        let now = committed(&suite.topics.app, &suite.topics.raw, PARTITIONS);
        if now == end {
            break;
        }
        if now != seen {
            (seen, moved) = (now, Instant::now());
        } else if !dumped && moved.elapsed() > STALL_DUMP_AFTER {
            // what the stalled processes wait for, and what the broker holds for them
            dumped = true;
            suite.dump_stall(&kafka, &seen, &end);
        }
        suite.supervise();
        assert!(
            Instant::now() < deadline,
            "the raw topic was never processed to its end; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let clean = read_all(&suite.topics.clean, PARTITIONS, "read_committed");
    let mut last: HashMap<i32, i64> = HashMap::new();
    let mut clean_by_partition: HashMap<i32, i64> = HashMap::new();
    let mut emails: HashSet<String> = HashSet::new();
    for m in &clean {
        let p = m.partition();
        last.insert(p, last.get(&p).copied().unwrap_or(-1).max(m.offset()));
        *clean_by_partition.entry(p).or_default() += 1;
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        emails.insert(v["email"].as_str().unwrap().to_owned());
    }
    let sink = format!("{}/users", suite.topics.app);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        suite.supervise();
        let stored: HashMap<i32, i64> = rt.block_on(async {
            match tokio_postgres::connect(&suite.database_url, tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    c.query(
                        "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1",
                        &[&sink],
                    )
                    .await
                    .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
                    .unwrap_or_default()
                }
                Err(_) => HashMap::new(),
            }
        });
        if last
            .iter()
            .all(|(p, o)| stored.get(p).is_some_and(|s| *s > *o))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink never applied the clean topic: {stored:?} of {last:?}; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // exactly once, by source coordinates
    let fates = common::fates::of(
        &suite.topics.raw,
        &suite.topics.clean,
        &suite.topics.dlq,
        PARTITIONS,
    );
    let duplicated = fates.values().filter(|f| f.len() > 1).count();
    let lost = size.records - fates.len();
    common::fates::assert_exactly_once(&fates, &end);
    for ((p, o), f) in &fates {
        let i = (*o as usize) * PARTITIONS as usize + *p as usize;
        assert_eq!(
            f[0].reasons(),
            raw_record(i).1.unwrap_or(""),
            "record {i}'s fate"
        );
    }

    // every window seals and passes its end-to-end audit
    let api = loop {
        suite.supervise();
        if let Some(api) = suite.api() {
            break api;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut audited = 0usize;
    let mut raw_audited = 0;
    for s in &starts {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = api.call("GET", &format!("/api/windows/{s}/sealable"), None);
            if body["sealable"] == true {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "window {s} never sealable: {body}"
            );
            suite.supervise();
            std::thread::sleep(Duration::from_millis(500));
        }
        let (status, body) = api.call("POST", &format!("/api/windows/{s}/seal"), Some(TOKEN));
        assert_eq!(status, 200, "seal {s}: {body}");
        let (status, audit) = api.call("POST", &format!("/api/windows/{s}/audit"), Some(TOKEN));
        assert_eq!(status, 200, "audit {s}: {audit}");
        assert_eq!(audit["passed"], true, "audit of {s}: {audit}");
        raw_audited += audit["raw_partitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["raw"].as_i64().unwrap())
            .sum::<i64>();
        audited += 1;
    }
    assert_eq!(
        raw_audited, size.records as i64,
        "the audits cover every raw record"
    );

    // the ledger equals the clean topic per partition; one row per distinct key
    let (ledger, rows): (HashMap<i32, i64>, i64) = rt.block_on(async {
        let c = common::pg::connect(&suite.database_url).await;
        let ledger = c
            .query(
                "SELECT partition, sum(records)::int8 FROM window_ledger WHERE sink = $1 GROUP BY partition",
                &[&sink],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let rows: i64 = c
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        (ledger, rows)
    });
    assert_eq!(
        ledger, clean_by_partition,
        "ledger = clean topic, per partition"
    );
    assert_eq!(rows, emails.len() as i64, "one row per distinct key");
    for inst in &suite.instances {
        assert!(
            !inst
                .exits
                .iter()
                // 3: fenced; two instances with their own ids are never each other's, and
                // a member fenced by its own earlier membership starts its loop again
                .any(|c| matches!(c, Some(3) | Some(4) | Some(101) | None)),
            "weir run {} ended with {:?}; logs in {}",
            inst.name,
            inst.exits,
            dir.display()
        );
    }

    let exits: Vec<String> = suite
        .instances
        .iter()
        .map(|i| format!("{}: {:?}", i.name, i.exits))
        .collect();
    // how often a loop started again instead of ending (engine::run), by its log lines
    let restarts = |what: &str| -> usize {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("weir-"))
            .map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .matches(what)
                    .count()
            })
            .sum()
    };
    let summary = serde_json::json!({
        "size": size.name,
        "seed": seed,
        "records": size.records,
        "dead_letters": fates.values().filter(|f| f[0].dead().is_some()).count(),
        "clean": clean.len(),
        "faults": {
            "weir_sigkills": injected.get(&Fault::KillWeir).copied().unwrap_or(0),
            "broker_sigkills": injected.get(&Fault::KillBroker).copied().unwrap_or(0),
            "broker_pauses_15s": injected.get(&Fault::PauseBroker).copied().unwrap_or(0),
            "postgres_crashes": injected.get(&Fault::CrashPostgres).copied().unwrap_or(0),
        },
        "weir_exits_on_their_own": exits,
        "loops_started_again": {
            "producer_fenced": restarts("the producer was fenced while"),
            "fenced_by_own_earlier_membership": restarts("its own earlier membership fenced"),
            "producer_failed": restarts("the transactional producer failed fatally"),
        },
        "lost": lost,
        "duplicated": duplicated,
        "windows_audited": audited,
        "producing_seconds": produced.as_secs(),
        "total_seconds": t0.elapsed().as_secs(),
    });
    eprintln!("fault suite: {summary:#}");
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("faults-{}.json", size.name)),
        format!("{summary:#}\n"),
    )
    .unwrap();
    for inst in suite.instances.iter_mut() {
        drop(inst.child.take());
    }
    drop(pg);
    kafka.kill();
    // the logs stay when a process ended on its own, to see why
    if suite.instances.iter().all(|i| i.exits.is_empty()) {
        std::fs::remove_dir_all(&dir).ok();
    }
}
