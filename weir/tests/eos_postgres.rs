//! Exactly once into PostgreSQL, against the real broker and database: 100,000 clean records
//! over several 5-minute windows flow through the `postgres` sink of `weir run` while the
//! process is killed with SIGKILL three times at random points and PostgreSQL is restarted
//! once. Afterwards the ledger accounts for every record once, no offset is applied twice,
//! rows PostgreSQL refused are in `rejects`, the newest record per email won, and every
//! window seals and audits clean.
//!
//! This file holds one test on purpose: it restarts the shared PostgreSQL server, and test
//! binaries run one after another.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::kafka::{create_topics, ends};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use weir_sinks::postgres::admin::{audit, seal, SealError, TopicSource};
use weir_sinks::postgres::writer::Table;

const RECORDS: i64 = 100_000;
const PARTITIONS: i32 = 4;
const WINDOW_MS: i64 = 300_000;
const WINDOWS: i64 = 4;

fn users_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml")
}

/// The clean record `i`: unique emails but for a duplicate now and then (the newest wins),
/// and a NUL in the name now and then (PostgreSQL refuses it).
fn clean_record(i: i64, topic: &str, partition: i32, offset: i64, ts: i64) -> (String, bool) {
    let email = if i % 2000 == 1999 {
        format!("user{}@example.com", i - 1000)
    } else {
        format!("user{i}@example.com")
    };
    let reject = i % 2500 == 1234;
    let first = if reject {
        "Bad\u{0}Name".to_owned()
    } else {
        format!("First{i}")
    };
    let v = serde_json::json!({
        "user_uuid": format!("00000000-0000-4000-8000-{i:012}"),
        "title": "Ms", "first_name": first, "last_name": "Example", "full_name": format!("{first} Example"),
        "gender": "female", "email": email, "street_address": format!("{i} Main Street"), "city": "Kyiv",
        "state": "Kyivska", "country": "Ukraine", "postcode": format!("{:05}", i % 100000), "phone": "0975551234",
        "cell": "+380975551234", "dob": "1993-07-20", "age": 31, "registered_at": "2015-06-21T11:04:38.419Z",
        "picture_thumbnail": "t", "nat": "UA",
        "source": {"topic": topic, "partition": partition, "offset": offset, "timestamp": ts}
    });
    (v.to_string(), reject)
}

struct Data {
    base: i64,
    rejects: i64,
    emails: HashMap<String, (i64, i64)>,
}

/// Produces the records with timestamps spread over `WINDOWS` windows starting at `base`,
/// then one record per partition two windows later (so the watermark passes them all).
fn produce(topic: &str, base: i64) -> Data {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let mut rejects = 0;
    let mut emails = HashMap::new();
    let span = WINDOWS * WINDOW_MS;
    let mut offsets = [0i64; PARTITIONS as usize];
    let total = RECORDS + PARTITIONS as i64;
    for i in 0..total {
        let partition = (i % PARTITIONS as i64) as i32;
        let ts = if i < RECORDS {
            base + i * span / RECORDS
        } else {
            base + (WINDOWS + 2) * WINDOW_MS
        };
        let offset = offsets[partition as usize];
        offsets[partition as usize] += 1;
        let (value, reject) = clean_record(i, topic, partition, offset, ts);
        if reject {
            rejects += 1;
        } else {
            let email = serde_json::from_str::<serde_json::Value>(&value).unwrap()["email"]
                .as_str()
                .unwrap()
                .to_owned();
            emails.insert(email, (ts, i));
        }
        let key = format!("k{i}");
        let mut record = BaseRecord::to(topic)
            .partition(partition)
            .key(&key)
            .payload(&value)
            .timestamp(ts);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    Data {
        base,
        rejects,
        emails,
    }
}

async fn applied(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT coalesce(sum(next_offset), 0)::int8 FROM sink_offsets",
            &[],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .unwrap_or(-1)
}

fn restart_postgres() {
    let bin = common::env("WEIR_PG_BIN_DIR");
    let data = common::env("WEIR_PG_DATA_DIR");
    let pg_ctl = format!("{bin}/pg_ctl");
    let mut cmd = if nix_is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &pg_ctl]);
        c
    } else {
        Command::new(&pg_ctl)
    };
    let status = cmd
        .args(["-D", &data, "-m", "fast", "-w", "-t", "60", "restart"])
        .current_dir("/")
        .stdout(Stdio::null())
        .status()
        .expect("pg_ctl restart");
    assert!(status.success(), "pg_ctl restart failed");
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn start_weir(env: &[(String, String)], dir: &Path, n: usize) -> common::Guard {
    let log = std::fs::File::create(dir.join(format!("weir-{n}.log"))).unwrap();
    common::Guard(
        Command::new(common::weir_bin())
            .args([
                "run",
                users_toml().to_str().unwrap(),
                "--instance",
                "pg-test",
                "--no-http",
            ])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_records_exactly_once_into_postgres_despite_sigkill_and_a_restart() {
    let raw = common::unique("weir-pg-raw");
    let clean = common::unique("weir-pg-clean");
    let dlq = common::unique("weir-pg-dlq");
    let app = common::unique("weir-pg-app");
    tokio::task::block_in_place(|| create_topics(&[&raw, &clean, &dlq], PARTITIONS));
    let url = common::pg::fresh_database("weir_eos_pg").await;
    let dir = common::scratch_dir("weir-eos-pg");

    let now = Utc::now().timestamp_millis();
    let base = (now - 3 * 3_600_000).div_euclid(WINDOW_MS) * WINDOW_MS;
    let data = {
        let clean = clean.clone();
        tokio::task::spawn_blocking(move || produce(&clean, base))
            .await
            .unwrap()
    };
    let end = tokio::task::block_in_place(|| ends(&clean, PARTITIONS));
    assert_eq!(end.iter().sum::<i64>(), RECORDS + PARTITIONS as i64);

    let env: Vec<(String, String)> = vec![
        ("WEIR_TOPIC_RAW".into(), raw.clone()),
        ("WEIR_TOPIC_CLEAN".into(), clean.clone()),
        ("WEIR_TOPIC_DLQ".into(), dlq.clone()),
        ("WEIR_APPLICATION_ID".into(), app.clone()),
        ("WEIR_KAFKA_BOOTSTRAP".into(), common::bootstrap()),
        ("WEIR_DATABASE_URL".into(), url.clone()),
    ];
    let mut client = common::pg::connect(&url).await;
    let seed = now as u64 | 1;
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    eprintln!("kill schedule seed: {seed}");
    let mut starts = 0;
    let mut child = start_weir(&env, &dir, starts);
    for kill in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1_500 + next() % 3_000)).await;
        eprintln!(
            "SIGKILL #{kill}: {} records applied so far",
            applied(&client).await
        );
        child.kill().unwrap();
        child.wait().unwrap();
        starts += 1;
        child = start_weir(&env, &dir, starts);
        if kill == 1 {
            tokio::time::sleep(Duration::from_millis(1_000 + next() % 1_500)).await;
            eprintln!(
                "restarting PostgreSQL: {} records applied so far",
                applied(&client).await
            );
            tokio::task::spawn_blocking(restart_postgres).await.unwrap();
            client = common::pg::connect(&url).await;
        }
    }

    // wait until the stored offsets reach the end of the clean topic
    let client = common::pg::connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let stored: Vec<(i32, i64)> = client
            .query(
                "SELECT partition, next_offset FROM sink_offsets ORDER BY partition",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if stored.len() == PARTITIONS as usize && stored.iter().all(|(p, o)| *o == end[*p as usize])
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "weir run exited early ({status}); logs in {}",
                dir.display()
            );
        }
        assert!(
            Instant::now() < deadline,
            "stored offsets {stored:?} never reached {end:?}; logs in {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // every record applied once: the ledger per partition sums to the partition's end, and
    // slices never overlap
    let per_partition: Vec<(i32, i64)> = client
        .query("SELECT partition, sum(records)::int8 FROM window_ledger GROUP BY partition ORDER BY partition", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        per_partition,
        (0..PARTITIONS)
            .map(|p| (p, end[p as usize]))
            .collect::<Vec<_>>()
    );
    let overlaps: i64 = client
        .query_one(
            "SELECT count(*) FROM window_ledger a JOIN window_ledger b ON a.sink = b.sink AND a.topic = b.topic \
             AND a.partition = b.partition AND a.window_start = b.window_start AND a.first_offset < b.first_offset \
             AND b.first_offset <= a.last_offset",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(overlaps, 0, "an offset range was applied twice");
    let rejects: i64 = client
        .query_one("SELECT count(*) FROM rejects", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rejects, data.rejects);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, data.emails.len() as i64, "one row per email");
    // the newest record won for every duplicated email
    let dup = client
        .query_one(
            "SELECT first_name, source_offset FROM users WHERE email = 'user999@example.com'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dup.get::<_, String>(0), "First1999");

    // every window seals (waiting for the watermark, not forced) and audits clean
    let (cfg, spec) = common::windows::users_sink(&app, WINDOW_MS);
    let mut client = common::pg::connect(&url).await;
    let table = Table::describe(&client, &cfg).await.unwrap();
    let source = TopicSource {
        kafka: weir_topology::config::KafkaSettings::plain(&common::bootstrap()),
        topic: clean.clone(),
        slack: Duration::from_secs(3600),
        upstream: None,
    };
    let mut total_sealed = 0;
    for w in 0..WINDOWS {
        let start = DateTime::from_timestamp_millis(data.base + w * WINDOW_MS).unwrap();
        let deadline = Instant::now() + Duration::from_secs(90);
        let sealed = loop {
            match seal(
                &mut client,
                &spec,
                "users",
                "window_start",
                start,
                false,
                "eos-test",
            )
            .await
            {
                Ok(s) => break s,
                Err(SealError::NotYet { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(500)).await
                }
                Err(e) => panic!("sealing {start}: {e}"),
            }
        };
        assert_eq!(sealed.window.status, "sealed");
        total_sealed += sealed.window.records;
        // sealing again returns the same result
        let again = seal(
            &mut client,
            &spec,
            "users",
            "window_start",
            start,
            false,
            "eos-test",
        )
        .await
        .unwrap();
        assert!(again.already_sealed);
        assert_eq!(again.window, sealed.window);
        let report = audit(&client, &spec, &table, &source, start, Some("eos-test"))
            .await
            .unwrap();
        assert!(report.passed, "audit of {start}: {:#?}", report);
        assert_eq!(report.topic_records, report.ledger_records);
        assert!(report.rows_checked > 10_000);
    }
    assert_eq!(
        total_sealed, RECORDS,
        "the sealed windows hold every record once"
    );

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        child.wait().unwrap().success(),
        "weir run stops cleanly; logs in {}",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).ok();
}
