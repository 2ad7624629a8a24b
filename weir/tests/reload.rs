//! Topology edits while records flow, against the real broker, PostgreSQL and the live page:
//! `weir run --watch` on a copy of `users.toml` under a steady load. A broken edit is
//! refused (its error at file:line:column) and the pipeline keeps running; the email rule is
//! tightened and swapped in at a transaction boundary — per partition every record before
//! the swap follows the old rule and every one after it the new; a template edit restarts
//! only the live page's sub-topology (its websocket client stays connected and is greeted
//! with the new text); a commit setting restarts the exactly-once loop; SIGHUP reloads an
//! unchanged file. Afterwards every raw offset is in the clean or the dead-letter topic
//! exactly once, and the PostgreSQL sink (never restarted) holds every clean row.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fates::{assert_exactly_once, Fate};
use common::kafka::{committed, ends};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tungstenite::client::IntoClientRequest;
use tungstenite::Message;

const RECORDS: usize = 16_000;
const PARTITIONS: i32 = 4;

/// Record `i`: a valid user whose email is short (even `i`, 24 characters or fewer) or long
/// (odd `i`, 33 or more): the tightened rule (`max_lengths.email = 24`) refuses only the long.
fn record(i: usize) -> Vec<u8> {
    let mut v: Value = serde_json::from_str(&common::users::valid_user(i)).unwrap();
    v["email"] = if i % 2 == 0 {
        format!("u{i}@ex.com")
    } else {
        format!("a.rather.long.address.{i}@example.com")
    }
    .into();
    v.to_string().into_bytes()
}

/// About 1,600 records a second for 10 s.
fn produce(topic: &str) {
    common::kafka::produce_paced(
        topic,
        PARTITIONS,
        RECORDS,
        record,
        (160, Duration::from_millis(100)),
    );
}

fn sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls `/api/topology` until `done` holds for it (at most 30 s); the last answer.
fn wait_topology(api: &common::api::Http, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, v) = api.call("GET", "/api/topology", None);
        assert_eq!(status, 200);
        if done(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not seen in 30 s; last /api/topology reload: {}",
            v["reload"]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the version of `text` runs after a restart of sub-topology `sub` only.
fn wait_restarted(api: &common::api::Http, what: &str, text: &str, sub: usize) -> Value {
    let v = wait_topology(api, what, |v| {
        v["version"]["hash"] == sha256(text) && v["reload"]["result"] == "restarted"
    });
    assert_eq!(
        v["reload"]["restarted"],
        serde_json::json!([sub]),
        "{}",
        v["reload"]
    );
    v
}

fn edit(path: &Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "no {from:?} in the topology");
    let text = text.replacen(from, to, 1);
    std::fs::write(path, &text).unwrap();
    text
}

fn metric(api: &common::api::Http, line_start: &str) -> f64 {
    let (_, text) = api.text("/metrics");
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn edits_apply_while_records_flow_exactly_once() {
    let t = common::weir::Topics::create("weir-reload", PARTITIONS);
    let dir = common::scratch_dir("weir-reload");
    let file = dir.join("topology.toml");
    std::fs::copy(common::weir::users_toml(), &file).unwrap();
    let original = std::fs::read_to_string(&file).unwrap();
    let url = common::pg::fresh_database_now("weir_reload");
    let port = common::free_port();
    let log = dir.join("weir.log");
    let mut child = common::Guard(
        t.command(&[
            "run",
            file.to_str().unwrap(),
            "--instance",
            "reload",
            "--watch",
        ])
        .env("WEIR_DATABASE_URL", &url)
        .env("WEIR_HTTP_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start weir run"),
    );
    let api = common::api::Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while ureq::get(&format!("{}/healthz", api.base)).call().is_err() {
        assert!(Instant::now() < deadline, "the HTTP server never answered");
        assert!(child.try_wait().unwrap().is_none(), "weir run exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v = wait_topology(&api, "the first version", |v| {
        v["version"]["hash"] == sha256(&original)
    });
    assert!(v["sub_topologies"].as_array().is_some_and(|s| s.len() == 3));

    // a live page client, kept open through every reload
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Origin",
        format!("http://127.0.0.1:{port}").parse().unwrap(),
    );
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (mut ws, _) = tungstenite::client(req, stream).expect("websocket");

    let producer = {
        let raw = t.raw.clone();
        std::thread::spawn(move || produce(&raw))
    };
    let flowing = |at_least: i64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let done: i64 = committed(&t.app, &t.raw, PARTITIONS)
                .iter()
                .map(|o| (*o).max(0))
                .sum();
            if done >= at_least {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "records stopped flowing at {done}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    flowing(1_000);

    // 1. a broken edit: refused, with its place; the pipeline carries on
    edit(&file, "\"email\" = 255", "\"email\" = \"long\"");
    let v = wait_topology(&api, "the refused edit", |v| {
        v["reload"]["result"] == "refused"
    });
    let errors = v["reload"]["errors"].to_string();
    assert!(errors.contains("topology.toml:"), "{errors}");
    assert!(errors.contains("max_lengths.email"), "{errors}");
    assert_eq!(
        v["version"]["hash"],
        sha256(&original),
        "the old version runs"
    );
    assert_eq!(
        metric(&api, "weir_topology_reloads_total{result=\"refused\"}"),
        1.0
    );
    let before = flowing(0);
    flowing(before + 500);
    assert!(child.try_wait().unwrap().is_none(), "weir run exited");

    // 2. the email rule tightened: swapped in at the next transaction boundary
    let written = Instant::now();
    let tightened = edit(&file, "\"email\" = \"long\"", "\"email\" = 24");
    let v = wait_topology(&api, "the tightened rule", |v| {
        v["version"]["hash"] == sha256(&tightened) && v["reload"]["result"] == "applied"
    });
    let latency = written.elapsed();
    eprintln!(
        "reload latency: {latency:?} from the write to /api/topology showing it applied (the loop swapped {} ms after the reload began)",
        v["reload"]["latency_ms"]
    );
    assert_eq!(v["reload"]["changes"]["live"][0], "processor \"validate\"");
    let (_, vitals) = api.call("GET", "/api/vitals", None);
    assert_eq!(
        vitals["version"]["hash"],
        sha256(&tightened),
        "the live page's version"
    );

    // 3. the live page's template: only its sub-topology restarts; its client stays
    let templated = edit(&file, "Hello {full_name}!", "Hi {full_name}!");
    wait_restarted(&api, "the template restart", &templated, 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut hellos, mut his) = (0, 0);
    while his == 0 {
        assert!(
            Instant::now() < deadline,
            "no \"Hi\" greeting on the kept websocket ({hellos} \"Hello\" ones)"
        );
        match ws.read() {
            Ok(Message::Text(text)) => {
                let m: Value = serde_json::from_str(&text).unwrap();
                let g = m["text"].as_str().unwrap_or_default();
                hellos += g.starts_with("Hello ") as usize;
                his += g.starts_with("Hi ") as usize;
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the websocket closed on a reload that did not touch the server: {e}"),
        }
    }

    // 4. a commit setting: the exactly-once loop commits, stops and starts again
    let committed_setting = edit(
        &file,
        "commit_max_records = 20000",
        "commit_max_records = 1000",
    );
    let v = wait_restarted(&api, "the loop's restart", &committed_setting, 0);

    // 5. SIGHUP on an unchanged file
    let at = v["reload"]["at"].clone();
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let v = wait_topology(&api, "the SIGHUP reload", |v| v["reload"]["at"] != at);
    assert_eq!(v["reload"]["result"], "unchanged", "{}", v["reload"]);
    assert!(child.try_wait().unwrap().is_none(), "weir run exited");

    producer.join().expect("producer");
    let end = ends(&t.raw, PARTITIONS);
    assert_eq!(end.iter().sum::<i64>(), RECORDS as i64);
    flowing(RECORDS as i64);
    // every raw offset exactly once; the rule changed once per partition, at one offset
    let fates = common::fates::of(&t.raw, &t.clean, &t.dlq, PARTITIONS);
    assert_exactly_once(&fates, &end);
    let mut by_partition: HashMap<i32, Vec<(i64, bool)>> = HashMap::new();
    for ((p, o), f) in &fates {
        let Fate::Clean(_) = &f[0] else {
            assert!(
                f[0].reasons().contains("field.too_long:email"),
                "{}",
                f[0].reasons()
            );
            by_partition.entry(*p).or_default().push((*o, false));
            continue;
        };
        by_partition.entry(*p).or_default().push((*o, true));
    }
    let (mut old_rule, mut new_rule) = (0, 0);
    for (p, mut seen) in by_partition {
        seen.sort();
        // this test's records alternate short and long by index, and land on partitions
        // by index: on partition p, record i = 4 * offset + p, long when i is odd
        let long = |o: i64| (4 * o + p as i64) % 2 == 1;
        let mut swapped_at = None;
        for (o, clean) in seen {
            if !long(o) {
                assert!(clean, "a short email dead-lettered at {p}/{o}");
                continue;
            }
            match (clean, swapped_at) {
                (true, None) => old_rule += 1,
                (false, None) => {
                    swapped_at = Some(o);
                    new_rule += 1;
                }
                (false, Some(_)) => new_rule += 1,
                (true, Some(at)) => {
                    panic!("partition {p}: offset {o} followed the old rule after {at} followed the new")
                }
            }
        }
    }
    eprintln!(
        "long emails: {old_rule} clean under the old rule, {new_rule} dead letters under the new"
    );
    assert!(old_rule > 0 && new_rule > 0, "{old_rule} / {new_rule}");

    // the PostgreSQL sink, never restarted, writes every clean record
    let clean = fates
        .values()
        .filter(|f| matches!(f[0], Fate::Clean(_)))
        .count() as i64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, w) = api.call("GET", "/api/windows", None);
        let written: i64 = w["windows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| w["rows_written"].as_i64().unwrap_or(0))
            .sum();
        if written == clean {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the PostgreSQL sink wrote {written} rows of {clean} clean records"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert!(status.success(), "weir run: {status}\n{text}");
    // the refused edit's error was logged at its place
    assert!(
        text.lines()
            .any(|l| l.contains("reload refused") && l.contains("topology.toml:")),
        "{text}"
    );

    std::fs::remove_dir_all(&dir).ok();
}
