//! `weir tap` and `weir top` against a running `weir run` on the real broker: a tap on
//! `validate.invalid` shows dead letters as they happen (with their reasons and source),
//! needs the admin token and names the edges when asked for one that does not exist;
//! `weir top --once` prints each node's rates and the loop's vital signs.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TOKEN: &str = "tap-test-token";

fn weir(args: &[&str], token: Option<&str>) -> Command {
    let mut c = Command::new(common::weir_bin());
    c.args(args).env_remove("WEIR_ADMIN_TOKEN");
    if let Some(t) = token {
        c.env("WEIR_ADMIN_TOKEN", t);
    }
    c
}

#[test]
fn tap_shows_dead_letters_as_they_happen_and_top_shows_the_nodes() {
    let t = common::weir::Topics::create("weir-tap", 2);
    let (_child, port) = t.serve_fresh("tap", &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    let url = format!("http://127.0.0.1:{port}");

    // records flow until the test ends: a valid one and an invalid one every 50 ms
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (raw, stop) = (t.raw.clone(), stop.clone());
        std::thread::spawn(move || {
            let p: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
                .set("bootstrap.servers", common::bootstrap())
                .set("linger.ms", "5")
                .create()
                .unwrap();
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let valid = common::users::valid_user(i);
                let mut bad: serde_json::Value = serde_json::from_str(&valid).unwrap();
                bad["email"] = "not-an-email".into();
                let bad = bad.to_string();
                for v in [valid.as_str(), bad.as_str()] {
                    let _ = p.send(BaseRecord::to(&raw).key(&format!("k{i}")).payload(v));
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            p.flush(Duration::from_secs(10)).unwrap();
        })
    };

    // the tap: three dead letters, then it ends
    let mut tap = common::Guard(
        weir(
            &[
                "tap",
                "validate.invalid",
                "--url",
                &url,
                "--limit",
                "3",
                "--rate",
                "50",
            ],
            Some(TOKEN),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let stdout = tap.stdout.take().unwrap();
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = tap.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the tap never ended");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut tap.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("tapping validate.invalid"), "{err}");
    assert_eq!(lines.len(), 3, "{lines:?}");
    for l in &lines {
        assert!(
            l.contains(" validate.invalid ") && l.contains("[email.invalid]"),
            "{l}"
        );
        assert!(l.contains(&format!("{}/", t.raw)), "{l}");
        assert!(l.contains("not-an-email"), "{l}");
    }
    // JSON lines as the server sends them
    let out = weir(
        &[
            "tap", "clean", "--url", &url, "--limit", "1", "--format", "json",
        ],
        Some(TOKEN),
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["edge"], "clean");
    assert_eq!(v["kind"], "clean");
    assert!(
        v["value"].as_str().unwrap().contains("\"full_name\""),
        "{v}"
    );

    // an admin call: no token, a wrong one
    let out = weir(&["tap", "raw", "--url", &url], None).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("WEIR_ADMIN_TOKEN"));
    let out = weir(&["tap", "raw", "--url", &url], Some("wrong"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    // an edge the topology does not have: the ones it has
    let out = weir(&["tap", "validate.nope", "--url", &url], Some(TOKEN))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no edge \"validate.nope\"") && err.contains("validate.invalid"),
        "{err}"
    );

    // top: one table of the nodes' rates
    let out = weir(&["top", "--once", "--interval", "1s", "--url", &url], None)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(table.contains("NODE") && table.contains("IN/S"), "{table}");
    let validate = table
        .lines()
        .find(|l| l.starts_with("validate "))
        .unwrap_or_else(|| panic!("{table}"));
    let rate: f64 = validate.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(rate > 5.0, "validate gets about 40 records/s: {validate}");
    assert!(validate.contains("invalid "), "{validate}");
    assert!(table.contains(" committed, "), "{table}");

    stop.store(true, Ordering::Relaxed);
    producer.join().unwrap();
}
