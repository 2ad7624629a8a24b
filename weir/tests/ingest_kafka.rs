//! `weir ingest` end to end against the real broker: randomuser.me users (served on
//! loopback from the fixtures) arrive in the raw topic whole, keyed by `login.uuid`, with
//! headers for the source and the fetch time — also after failed polls, which lose nothing
//! and do not stop the loop; synthetic users arrive keyed and counted.

mod common;

use std::path::Path;
use std::process::Command;

use common::http::{serve, Reply};
use common::kafka::{create_topics, header, read_all};
use rdkafka::message::Message;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/randomuser")
            .join(name),
    )
    .unwrap()
}

fn ingest(args: &[&str]) -> std::process::Output {
    Command::new(common::weir_bin())
        .arg("ingest")
        .args(args)
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .env("WEIR_LOG", "info")
        .output()
        .expect("run weir ingest")
}

#[test]
fn randomuser_polls_survive_failures_and_deliver_whole_keyed_records() {
    let topic = common::unique("weir-ingest-ru");
    create_topics(&[&topic], 2);
    let body = fixture("results-7-mixed-nat.json");
    // poll 1: a 500, then garbage, then the users; poll 2: the API's error body every time
    let server = serve(vec![
        Reply::new(500, "oops"),
        Reply::new(200, vec![0xde, 0xad, 0xbe, 0xef]),
        Reply::new(200, body.clone()),
        Reply::new(200, fixture("error.json")),
    ]);
    let heartbeat = common::scratch_dir("weir-ingest-hb").join("heartbeat");
    let out = ingest(&[
        "--heartbeat-file",
        heartbeat.to_str().unwrap(),
        "--source",
        "randomuser",
        "--url",
        &server.url,
        "--topic",
        &topic,
        "--results",
        "7",
        "--interval",
        "100ms",
        "--max-polls",
        "2",
        "--retries",
        "2",
        "--retry-backoff",
        "10ms",
    ]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("poll 1 failed (server error); retry 1/2"),
        "{log}"
    );
    assert!(
        log.contains("poll 1 failed (answer is not JSON); retry 2/2"),
        "{log}"
    );
    assert!(log.contains("poll 1: fetched users=7"), "{log}");
    // the successful poll left its time in the heartbeat file (a container's health check)
    let beat = std::fs::read_to_string(&heartbeat).expect("a heartbeat file");
    let at = chrono::DateTime::parse_from_rfc3339(beat.trim()).expect("an RFC 3339 time");
    assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds() < 60);
    assert!(
        log.contains("poll 2 failed (API error body); nothing lost"),
        "{log}"
    );
    assert!(
        log.contains("ingest stopped polls=2 failed_polls=1 sent=7 delivered=7 failed=0"),
        "{log}"
    );

    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let want: Vec<&serde_json::Value> = doc["results"].as_array().unwrap().iter().collect();
    let mut got = read_all(&topic, 2, "read_committed");
    assert_eq!(got.len(), 7);
    got.sort_by_key(|m| m.timestamp().to_millis());
    for m in &got {
        let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert!(want.contains(&&value), "an unchanged results[] object");
        assert_eq!(
            m.key().unwrap(),
            value["login"]["uuid"].as_str().unwrap().as_bytes()
        );
        assert_eq!(header(m, "weir.ingest.source"), Some(&b"randomuser"[..]));
        let at = std::str::from_utf8(header(m, "weir.ingest.fetched_at").unwrap()).unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{at}");
        assert_eq!(
            header(m, "weir.ingest.seed"),
            Some(&b"b7c41a9e0d2f3356"[..])
        );
    }
}

#[test]
fn synthetic_records_arrive_keyed_and_counted() {
    let topic = common::unique("weir-ingest-syn");
    create_topics(&[&topic], 3);
    let out = ingest(&[
        "--log-format",
        "json",
        "--source",
        "synthetic",
        "--topic",
        &topic,
        "--rate",
        "unlimited",
        "--count",
        "3000",
        "--seed",
        "9",
        "--dirty",
        "0.2",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ingest: 3000 records ("), "{stdout}");
    // --log-format json: every log line one JSON object, with the event's fields at the top
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "generating synthetic users")
        .unwrap_or_else(|| panic!("{stderr}"));
    assert_eq!(started["level"], "INFO");
    assert_eq!(started["target"], "weir::tools::ingest");
    assert_eq!(started["topic"], topic.as_str());
    assert!(started["timestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(stdout.contains("delivered 3000, failed 0"), "{stdout}");

    let got = read_all(&topic, 3, "read_committed");
    assert_eq!(got.len(), 3000);
    let mut keyed = 0;
    for m in &got {
        assert_eq!(header(m, "weir.ingest.source"), Some(&b"synthetic"[..]));
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(key.len(), 36, "a UUID key: {key}");
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()) {
            if let Some(uuid) = v.pointer("/login/uuid").and_then(|u| u.as_str()) {
                assert_eq!(uuid, key);
                keyed += 1;
            }
        }
    }
    assert!(
        keyed > 2000,
        "most records carry their key in login.uuid: {keyed}"
    );
    // byte for byte what the generator makes for seed 9 (values are lent to librdkafka
    // from reused slabs, not copied: a slab reused too early would show here)
    let mut generator = weir::ingest::synthetic::Synthetic::new(9, 0.2);
    let expected: std::collections::HashMap<String, Vec<u8>> = (0..3000)
        .map(|_| {
            let g = generator.next_record();
            (g.key, g.value)
        })
        .collect();
    for m in &got {
        let key = std::str::from_utf8(m.key().unwrap()).unwrap();
        assert_eq!(
            Some(m.payload().unwrap_or_default()),
            expected.get(key).map(Vec::as_slice),
            "record {key}"
        );
    }

    // the same seed gives the same records
    let (again, first) = (
        common::unique("weir-ingest-syn2"),
        common::unique("weir-ingest-syn3"),
    );
    for topic in [&again, &first] {
        create_topics(&[topic], 1);
        let out = ingest(&[
            "--source",
            "synthetic",
            "--topic",
            topic,
            "--rate",
            "unlimited",
            "--count",
            "50",
            "--seed",
            "9",
            "--dirty",
            "0.2",
        ]);
        assert!(out.status.success());
    }
    let a: Vec<Vec<u8>> = read_all(&again, 1, "read_committed")
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect();
    let b: Vec<Vec<u8>> = read_all(&first, 1, "read_committed")
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect();
    assert_eq!(a.len(), 50);
    assert_eq!(a, b);
}

#[test]
fn the_ingest_producer_delivers_every_value_byte_for_byte() {
    use weir::ingest::producer::{IngestProducer, ProducerSettings};
    let topic = common::unique("weir-ingest-bytes");
    create_topics(&[&topic], 3);
    let producer = IngestProducer::new(ProducerSettings {
        // a queue of about 3 MB: several 1 MB slabs in flight at once, and "queue full"
        // (taking a value back out of its slab) is frequent
        kafka: weir_topology::config::KafkaSettings::plain(&common::bootstrap())
            .with_options(&[("queue.buffering.max.messages".into(), "2000".into())]),
        topic: topic.clone(),
        source: "test",
        linger: std::time::Duration::from_millis(50),
    })
    .unwrap();
    // sizes from empty to 3 kB, and a few of 300 kB (too big for a slab: copied)
    let value = |i: usize| -> Vec<u8> {
        let len = if i % 1000 == 999 {
            300_000
        } else {
            (i * 37) % 3000
        };
        (0..len).map(|j| (i * 31 + j) as u8).collect()
    };
    // two rounds with a flush between: the second reuses the first round's drained slabs
    for round in 0..2 {
        for i in round * 4000..(round + 1) * 4000 {
            producer
                .send(Some(i.to_string().as_bytes()), &value(i), None, &[])
                .unwrap();
        }
        producer.flush(std::time::Duration::from_secs(60)).unwrap();
    }
    assert_eq!(producer.delivered(), 8000);
    let got = read_all(&topic, 3, "read_committed");
    assert_eq!(got.len(), 8000);
    let mut seen = std::collections::HashSet::new();
    for m in &got {
        let i: usize = std::str::from_utf8(m.key().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(seen.insert(i), "record {i} twice");
        assert!(
            m.payload().unwrap_or_default() == value(i).as_slice(),
            "record {i}: {} bytes, expected {}",
            m.payload().map_or(0, <[u8]>::len),
            value(i).len()
        );
        assert_eq!(header(m, "weir.ingest.source"), Some(&b"test"[..]));
    }
}

/// CPU seconds (user + system) a running process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// A paced source waits between records instead of spinning (it once polled the producer
/// for 1 ms at a time, which librdkafka rounds down to 0: a core at 100% for 5 records/s).
#[test]
fn a_paced_synthetic_source_sleeps_between_records() {
    let topic = common::unique("weir-ingest-paced");
    create_topics(&[&topic], 1);
    let mut child = common::Guard(
        Command::new(common::weir_bin())
            .args([
                "ingest",
                "--source",
                "synthetic",
                "--rate",
                "20",
                "--count",
                "60",
                "--topic",
                &topic,
            ])
            .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
            .env("WEIR_LOG", "warn")
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let used = cpu_seconds(child.id());
    assert!(child.wait().unwrap().success());
    assert!(
        used < 0.8,
        "{used:.2} CPU seconds in 2.5 s of a 20 records/s source"
    );
    assert_eq!(read_all(&topic, 1, "read_committed").len(), 60);
}
