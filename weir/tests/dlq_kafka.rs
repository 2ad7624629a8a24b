//! `weir dlq tail|stats|replay` against the real broker: after a topology fix (the email rule
//! relaxed), replaying `--reason email.invalid` turns exactly those dead letters into clean
//! records, once each, even when the replay is SIGKILLed and rerun; `--dry-run` changes
//! nothing; the loop guard refuses records replayed too often; `tail` and `stats` report the
//! known dead letters. A dead letter with two reasons is replayed once across runs for
//! either reason; dead letters skipped by `--since` stay for a later run; a replayed record
//! keeps its original headers, timestamp and partition.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::kafka::{ends, header, read_all};
use common::weir::{users_toml, Topics};
use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

const PARTITIONS: i32 = 2;
const VALID: usize = 1_000;
const BAD_EMAIL: usize = 3_000;
const MISSING_NAME: usize = 400;
/// Missing-name records that arrive already replayed three times (the loop guard's limit).
const OVER_REPLAYED: usize = 100;

fn user(i: usize, email: &str) -> serde_json::Value {
    serde_json::json!({
        "name": {"title": "Ms", "first": format!("Ana{i}"), "last": "Lima"},
        "location": {"street": {"number": i, "name": "Rua A"}, "city": "Porto",
                     "state": "Porto", "country": "Portugal", "postcode": "4000-001"},
        "email": email,
        "login": {"uuid": format!("00000000-0000-4000-8000-{i:012}")},
        "dob": {"date": "1993-07-20T09:44:18.674Z", "age": 31},
        "registered": {"date": "2015-06-21T11:04:38.419Z", "age": 9},
        "phone": "912 345 678", "cell": "912 345 679", "nat": "PT"
    })
}

/// Key → (value, replay count header).
fn raw_records() -> Vec<(String, Vec<u8>, Option<u32>)> {
    let mut out = Vec::new();
    for i in 0..VALID {
        out.push((
            format!("valid-{i}"),
            user(i, &format!("ana{i}@example.com"))
                .to_string()
                .into_bytes(),
            None,
        ));
    }
    for i in 0..BAD_EMAIL {
        // no top-level domain: invalid under the shipped rule, fine once it is relaxed
        out.push((
            format!("email-{i}"),
            user(i, &format!("ana{i}@intranet"))
                .to_string()
                .into_bytes(),
            None,
        ));
    }
    for i in 0..MISSING_NAME + OVER_REPLAYED {
        let mut v = user(i, "x@example.com");
        v["name"].as_object_mut().unwrap().remove("first");
        let count = (i >= MISSING_NAME).then_some(3);
        out.push((format!("noname-{i}"), v.to_string().into_bytes(), count));
    }
    // one value that is not text, to see how tail shows it
    out.push(("binary".into(), b"\xff\x00{\"a\":\n1}".to_vec(), None));
    out
}

fn produce(topic: &str, records: &[(String, Vec<u8>, Option<u32>)]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, value, count) in records {
        let count = count.map(|c| c.to_string());
        let mut r = BaseRecord::to(topic).key(key).payload(value);
        if let Some(c) = &count {
            r = r.headers(OwnedHeaders::new().insert(Header {
                key: "weir.replay.count",
                value: Some(c.as_bytes()),
            }));
        }
        producer.send(r).map_err(|(e, _)| e).expect("send");
    }
    producer.flush(Duration::from_secs(30)).expect("flush");
}

/// `users.toml` with the email rule relaxed: the fix the dead letters were waiting for.
fn relaxed_topology(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(users_toml()).unwrap();
    assert!(
        shipped.contains("email = [\"email\"]"),
        "users.toml changed its email rule"
    );
    let path = dir.join("users-relaxed.toml");
    std::fs::write(&path, shipped.replace("email = [\"email\"]", "email = []")).unwrap();
    path
}

fn run_processing(t: &Topics, topology: &std::path::Path) {
    t.output(&[
        "run",
        topology.to_str().unwrap(),
        "--subtopologies",
        "0",
        "--no-http",
        "--stop-when-idle",
        "3s",
    ]);
}

fn topic_exists(topic: &str) -> bool {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .unwrap();
    let m = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    m.topics().iter().any(|t| t.error().is_none())
}

fn count_in(stdout: &str, prefix: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"));
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after {prefix:?} in {line:?}"))
}

#[test]
fn replay_after_a_fix_turns_exactly_those_dead_letters_into_clean_records_once() {
    let t = Topics::create("weir-dlq", PARTITIONS);
    let users = users_toml();
    let topology = users.to_str().unwrap();
    let records = raw_records();
    produce(&t.raw, &records);
    run_processing(&t, &users);
    let dead = read_all(&t.dlq, PARTITIONS, "read_committed");
    let expected_dead = BAD_EMAIL + MISSING_NAME + OVER_REPLAYED + 1;
    assert_eq!(dead.len(), expected_dead);
    let clean_before = read_all(&t.clean, PARTITIONS, "read_committed").len();
    assert_eq!(clean_before, VALID);

    // `weir dlq CMD --topology users.toml ARGS…`, to its end
    let dlq = |args: &[&str]| {
        let mut all = vec!["dlq", args[0], "--topology", topology];
        all.extend_from_slice(&args[1..]);
        t.output(&all)
    };

    // stats: by reason, by node, by hour
    let (stats, _) = dlq(&["stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["total"], expected_dead as u64);
    assert_eq!(stats["by_reason"]["email.invalid"], BAD_EMAIL as u64);
    assert_eq!(
        stats["by_reason"]["field.missing:name.first"],
        (MISSING_NAME + OVER_REPLAYED) as u64
    );
    assert_eq!(stats["by_node"]["validate"], (expected_dead - 1) as u64);
    let hours: u64 = stats["by_hour"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(hours, expected_dead as u64);
    let (table, _) = dlq(&["stats"]);
    assert!(
        table.contains(&format!("dead letters: {expected_dead} in {}", t.dlq)),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("email.invalid") && l.ends_with(&BAD_EMAIL.to_string())),
        "{table}"
    );

    // tail: the latest N, filtered, as JSON lines and as a table
    let (lines, _) = dlq(&[
        "tail",
        "--reason",
        "email.invalid",
        "--limit",
        "5",
        "--json",
    ]);
    let lines: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for l in &lines {
        assert_eq!(l["reasons"], serde_json::json!(["email.invalid"]));
        assert_eq!(l["node"], "validate");
        assert_eq!(l["source"]["topic"], t.raw.as_str());
        assert!(l["key"].as_str().unwrap().starts_with("email-"));
        let v: serde_json::Value = serde_json::from_str(l["value"].as_str().unwrap()).unwrap();
        assert!(v["email"].as_str().unwrap().ends_with("@intranet"));
    }
    // the latest by failure time, across partitions, oldest of them first
    let (all, _) = dlq(&[
        "tail",
        "--reason",
        "email.invalid",
        "--limit",
        "1000000",
        "--json",
    ]);
    let mut times: Vec<i64> = all
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["failed_at"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(times.len(), BAD_EMAIL);
    times.sort_unstable();
    let shown: Vec<i64> = lines
        .iter()
        .map(|l| l["failed_at"].as_i64().unwrap())
        .collect();
    assert!(shown.windows(2).all(|w| w[0] <= w[1]), "{shown:?}");
    assert!(
        shown[0] >= times[BAD_EMAIL - 5],
        "not the latest: {shown:?}"
    );
    let (table, _) = dlq(&["tail", "--limit", "1000000"]);
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("FAILED AT (UTC)")
            && rows[0].contains("REASONS")
            && rows[0].contains("SOURCE")
    );
    assert_eq!(rows.len(), expected_dead + 1);
    let binary = rows
        .iter()
        .find(|r| r.contains("utf8.invalid"))
        .expect("the binary dead letter");
    assert!(
        binary.contains(r#"\xff\u{0}{"a":\n1}"#),
        "not escaped: {binary}"
    );

    // dry run: says what it would do, changes nothing
    let raw_end = ends(&t.raw, PARTITIONS);
    let (dry, _) = dlq(&["replay", "--reason", "email.invalid", "--dry-run"]);
    assert_eq!(count_in(&dry, "would replay "), BAD_EMAIL as u64, "{dry}");
    assert_eq!(ends(&t.raw, PARTITIONS), raw_end, "a dry run sent records");
    assert!(
        !topic_exists(&format!("{}-dlq-replay-ledger", t.app)),
        "a dry run made a ledger"
    );

    // the replay, SIGKILLed part way, then run again (and once more: nothing left)
    let mut first = common::Guard(
        t.command(&[
            "dlq",
            "replay",
            "--topology",
            topology,
            "--reason",
            "email.invalid",
            "--batch",
            "50",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(
        300 + (std::process::id() as u64 % 700),
    ));
    let finished_first = first.try_wait().unwrap().is_some();
    first.kill().ok();
    first.wait().unwrap();
    eprintln!(
        "the first replay {} before SIGKILL",
        if finished_first {
            "had finished"
        } else {
            "was running"
        }
    );
    let (second, _) = dlq(&["replay", "--reason", "email.invalid"]);
    let replayed_second = count_in(&second, "replayed ");
    assert!(replayed_second <= BAD_EMAIL as u64, "{second}");
    let (third, _) = dlq(&["replay", "--reason", "email.invalid"]);
    assert_eq!(count_in(&third, "replayed "), 0, "{third}");

    // in the raw topic: every bad-email record exactly once more, counted as replayed once
    let raw = read_all(&t.raw, PARTITIONS, "read_committed");
    let replayed: Vec<_> = raw
        .iter()
        .filter(|m| {
            header(m, "weir.replay.count").is_some() && header(m, "weir.replay.from").is_some()
        })
        .collect();
    assert_eq!(
        replayed.len(),
        BAD_EMAIL,
        "replayed records in the raw topic"
    );
    let mut by_key: HashMap<&[u8], usize> = HashMap::new();
    for m in &replayed {
        assert_eq!(header(m, "weir.replay.count"), Some(&b"1"[..]));
        *by_key.entry(m.key().unwrap()).or_default() += 1;
    }
    assert_eq!(by_key.len(), BAD_EMAIL);
    assert!(by_key.keys().all(|k| k.starts_with(b"email-")));

    // the fixed topology turns them into clean records, once each, and no new dead letters
    let dir = common::scratch_dir("weir-dlq");
    run_processing(&t, &relaxed_topology(&dir));
    let clean = read_all(&t.clean, PARTITIONS, "read_committed");
    assert_eq!(clean.len(), VALID + BAD_EMAIL);
    let mut emails: HashMap<String, usize> = HashMap::new();
    for m in &clean {
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        *emails
            .entry(v["email"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    for i in 0..BAD_EMAIL {
        assert_eq!(
            emails.get(&format!("ana{i}@intranet")),
            Some(&1),
            "ana{i}@intranet"
        );
    }
    assert_eq!(
        read_all(&t.dlq, PARTITIONS, "read_committed").len(),
        expected_dead
    );

    // the loop guard: records already replayed 3 times are refused, the others go
    let (guard, _) = dlq(&["replay", "--reason", "field.missing"]);
    assert_eq!(
        count_in(&guard, "replayed "),
        MISSING_NAME as u64,
        "{guard}"
    );
    assert!(
        guard.contains(&format!(
            "refused {OVER_REPLAYED} (replayed 3 times already"
        )),
        "{guard}"
    );
    let raw_after = read_all(&t.raw, PARTITIONS, "read_committed");
    assert_eq!(raw_after.len(), records.len() + BAD_EMAIL + MISSING_NAME);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_dead_letter_with_two_reasons_is_replayed_once_as_the_original_record() {
    let t = Topics::create("weir-dlq2", PARTITIONS);
    let users = users_toml();
    let topology = users.to_str().unwrap();
    // 20 with a bad email and no first name, 20 with a bad email, 20 with no first name;
    // two days old, with a header of their own, partitioned as ingest does
    let base = chrono::Utc::now().timestamp_millis() - 2 * 86_400_000;
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for i in 0..60 {
        let mut v = user(
            i,
            if i < 40 {
                "x@intranet"
            } else {
                "x@example.com"
            },
        );
        if !(20..40).contains(&i) {
            v["name"].as_object_mut().unwrap().remove("first");
        }
        let key = format!("k{i}");
        let trace = format!("trace-{i}");
        producer
            .send(
                BaseRecord::to(&t.raw)
                    .key(&key)
                    .payload(&v.to_string())
                    .timestamp(base + i as i64)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "trace-id",
                        value: Some(trace.as_bytes()),
                    })),
            )
            .map_err(|(e, _)| e)
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    run_processing(&t, &users);
    let originals = read_all(&t.raw, PARTITIONS, "read_committed");
    assert_eq!(read_all(&t.dlq, PARTITIONS, "read_committed").len(), 60);
    let dlq = |args: &[&str]| {
        let mut all = vec!["dlq", args[0], "--topology", topology];
        all.extend_from_slice(&args[1..]);
        t.output(&all).0
    };
    // --since after every failure: nothing now, and nothing is lost for later
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none = dlq(&["replay", "--reason", "email.invalid", "--since", &later]);
    assert_eq!(count_in(&none, "replayed "), 0, "{none}");
    let email = dlq(&["replay", "--reason", "email.invalid"]);
    assert_eq!(count_in(&email, "replayed "), 40, "{email}");
    let missing = dlq(&["replay", "--reason", "field.missing"]);
    assert_eq!(
        count_in(&missing, "replayed "),
        20,
        "the 20 with both reasons went with the email run: {missing}"
    );
    assert!(missing.contains("already replayed 20"), "{missing}");

    let raw = read_all(&t.raw, PARTITIONS, "read_committed");
    let replayed: Vec<_> = raw
        .iter()
        .filter(|m| header(m, "weir.replay.from").is_some())
        .collect();
    assert_eq!(replayed.len(), 60, "each dead letter replayed once");
    let mut from: Vec<&[u8]> = replayed
        .iter()
        .map(|m| header(m, "weir.replay.from").unwrap())
        .collect();
    from.sort();
    from.dedup();
    assert_eq!(from.len(), 60);
    for m in &replayed {
        let original = originals
            .iter()
            .find(|o| o.key() == m.key())
            .expect("the original record");
        assert_eq!(m.timestamp().to_millis(), original.timestamp().to_millis());
        assert_eq!(m.partition(), original.partition(), "back to its partition");
        assert_eq!(header(m, "trace-id"), header(original, "trace-id"));
        assert_eq!(header(m, "weir.replay.count"), Some(&b"1"[..]));
        assert!(header(m, "weir.errors.reasons").is_none());
        assert_eq!(m.payload(), original.payload());
    }
}
