//! Records whose output the broker refuses get a fate too, against the real broker: an
//! oversize raw record (its dead letter is over librdkafka's `message.max.bytes`), a valid
//! record whose clean output is too large, and dead letters a topic's own
//! `max.message.bytes` refuses (reported late, in delivery reports, several in one
//! transaction) each become a bounded dead letter — `record.too_large`, the value cut to a
//! preview with its size and SHA-256 — and every other record flows on, exactly once. When
//! even that dead letter cannot be written, `weir run` stops with exit code 4 instead of
//! aborting for ever.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fates::{self, Fate};
use common::kafka::{create_topics_with, ends, header};
use common::users::{raw_record, valid_user};
use common::weir::Topics;
use rdkafka::message::Message;
use sha2::{Digest, Sha256};

const PARTITIONS: i32 = 2;
const RECORDS: usize = 2_000;

/// Topics of their own; the dead-letter topic with `dlq_configs`.
fn topics(prefix: &str, dlq_configs: &[(&str, &str)]) -> Topics {
    let t = Topics::named(prefix, PARTITIONS);
    create_topics_with(&[&t.raw, &t.clean], PARTITIONS, &[]);
    create_topics_with(&[&t.dlq], PARTITIONS, dlq_configs);
    t
}

/// Produces `RECORDS` raw records (every tenth bad), with `special` values in their places,
/// record `i` into partition `i % PARTITIONS`.
fn produce(topic: &str, special: &HashMap<usize, Vec<u8>>) {
    common::kafka::produce_paced(
        topic,
        PARTITIONS,
        RECORDS,
        |i| special.get(&i).cloned().unwrap_or_else(|| raw_record(i).0),
        (usize::MAX, Duration::ZERO),
    );
}

/// An invalid user (bad email) of about `bytes` bytes: a dead letter as large as itself.
/// The padding is random letters, so compression does not shrink it below a topic's limit.
fn large_invalid(i: usize, bytes: usize) -> Vec<u8> {
    let mut v: serde_json::Value = serde_json::from_str(&valid_user(i)).unwrap();
    v["email"] = "not-an-email".into();
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let padding: String = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (b'a' + (x % 26) as u8) as char
        })
        .collect();
    v["padding"] = padding.into();
    v.to_string().into_bytes()
}

/// `weir run` of sub-topology 0 until idle; its exit status and log.
fn run_until_idle(t: &Topics, limit: Duration) -> (std::process::ExitStatus, String) {
    let users = common::weir::users_toml();
    let mut child = common::Guard(
        t.command(&[
            "run",
            users.to_str().unwrap(),
            "--subtopologies",
            "0",
            "--no-http",
            "--stop-when-idle",
            "4s",
        ])
        .env("WEIR_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir run"),
    );
    let mut stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let log = log.join().unwrap();
            panic!("weir run did not finish within {limit:?} (an endless abort loop?):\n{log}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = log.join().unwrap();
    // shown by the test harness when the test fails
    eprintln!("weir run's log:\n{log}");
    (status, log)
}

/// The `aborted=N` of the run's closing line.
fn aborted(log: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(" stopped records="))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("aborted=")?.parse().ok())
        })
        .unwrap_or_else(|| panic!("no closing line in the log:\n{log}"))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The dead letter of a refused record: reason, a preview no longer than 1 KiB, the size
/// and digest of the original.
fn assert_refused(fate: &Fate, original: &[u8]) {
    let m = fate.dead().expect("a refused record is a dead letter");
    let h = |k: &str| String::from_utf8_lossy(header(m, k).unwrap_or_default()).into_owned();
    assert_eq!(h("weir.errors.reasons"), "record.too_large");
    let value = m.payload().unwrap();
    assert!(value.len() <= 1024, "a preview: {} bytes", value.len());
    assert_eq!(
        value,
        &original[..value.len()],
        "the preview is the value's start"
    );
    assert_eq!(h("weir.errors.value.size"), original.len().to_string());
    assert_eq!(
        h("weir.errors.value.sha256"),
        hex(&Sha256::digest(original))
    );
    assert_eq!(h("weir.errors.value.truncated"), "true");
    assert!(
        h("weir.errors.message").contains("refused"),
        "{}",
        h("weir.errors.message")
    );
}

#[test]
fn an_oversize_record_becomes_a_bounded_dead_letter_and_the_rest_flows() {
    let t = topics("weir-refuse-local", &[]);
    // record 700's dead letter and record 1401's clean record are over librdkafka's
    // message.max.bytes (1,000,000): the producer refuses them at once
    let mut special = HashMap::new();
    special.insert(700, large_invalid(700, 1_040_000));
    let mut big_clean: serde_json::Value = serde_json::from_str(&valid_user(1401)).unwrap();
    big_clean["picture"]["thumbnail"] = "t".repeat(1_010_000).into();
    special.insert(1401, big_clean.to_string().into_bytes());
    produce(&t.raw, &special);

    let (status, log) = run_until_idle(&t, Duration::from_secs(120));
    assert!(status.success(), "weir run failed ({status}):\n{log}");
    assert_eq!(aborted(&log), 0, "a refusal at send needs no abort:\n{log}");
    let end = ends(&t.raw, PARTITIONS);
    let fates = fates::of(&t.raw, &t.clean, &t.dlq, PARTITIONS);
    fates::assert_exactly_once(&fates, &end);
    for (i, original) in &special {
        let at = ((*i as i32) % PARTITIONS, (*i / PARTITIONS as usize) as i64);
        assert_refused(&fates[&at][0], original);
    }
    // an ordinary bad record is an ordinary dead letter
    assert_eq!(fates[&(0, 10)][0].reasons(), "field.missing:name.first");
}

#[test]
fn records_the_broker_refuses_are_isolated_and_become_bounded_dead_letters() {
    // the topic refuses batches over 300 kB, which librdkafka (1 MB) sends: the refusal
    // comes back in delivery reports and aborts the transaction
    let t = topics("weir-refuse-broker", &[("max.message.bytes", "300000")]);
    let mut special = HashMap::new();
    // two in one partition, next to each other (one transaction), one elsewhere
    for i in [500, 502, 1101] {
        special.insert(i, large_invalid(i, 500_000));
    }
    produce(&t.raw, &special);

    let (status, log) = run_until_idle(&t, Duration::from_secs(180));
    assert!(status.success(), "weir run failed ({status}):\n{log}");
    // each refused record costs a few aborts, not a loop (the loop this replaced aborted
    // 1,122 times in 60 s): the one that finds it (with the records refused beside it), its
    // try alone, and the abort after each of those that librdkafka's idempotent producer
    // needs ("skipped sequence numbers"); measured: 10 or 11 for these three records
    let aborts = aborted(&log);
    assert!(
        (1..=5 * special.len() as u64).contains(&aborts),
        "a few aborts, not an endless loop: {aborts}"
    );
    let end = ends(&t.raw, PARTITIONS);
    let fates = fates::of(&t.raw, &t.clean, &t.dlq, PARTITIONS);
    fates::assert_exactly_once(&fates, &end);
    for (i, original) in &special {
        let at = ((*i as i32) % PARTITIONS, (*i / PARTITIONS as usize) as i64);
        assert_refused(&fates[&at][0], original);
    }
    // the other bad records of those transactions are ordinary dead letters
    let ordinary = fates
        .values()
        .filter(|f| {
            let r = f[0].reasons();
            !r.is_empty() && r != "record.too_large"
        })
        .count();
    // 500 took the place of a bad record, 502 and 1101 of good ones
    assert_eq!(ordinary, RECORDS / 10 - 1);
}

#[test]
fn a_dead_letter_that_cannot_be_written_stops_weir_with_exit_code_4() {
    // not even a 1 kB preview fits this topic
    let t = topics("weir-refuse-all", &[("max.message.bytes", "600")]);
    produce(&t.raw, &HashMap::new());
    let started = Instant::now();
    let (status, log) = run_until_idle(&t, Duration::from_secs(120));
    assert_eq!(status.code(), Some(4), "exit code 4:\n{log}");
    assert!(
        log.contains("has no possible fate") && log.contains("its dead letter was refused too"),
        "the error names the record and why:\n{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped at once, not after an abort loop: {:?}",
        started.elapsed()
    );
}
