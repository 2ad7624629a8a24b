//! The PostgreSQL sink under the faults a review found, against the real broker and
//! database:
//!
//! - an upstream that is stalled keeps its windows open: with the processing sub-topology
//!   stopped for three times `idle_timeout`, the sink's idle partitions do not follow the
//!   clock and the window of the unprocessed raw records is not sealable; once they are
//!   processed it is, and its end-to-end audit (raw records = clean + dead letters) passes. A
//!   window with raw records that never got a fate fails its audit.
//! - records PostgreSQL can never take (a constraint on `windows`), with a time thousands of
//!   years out, or beyond the clock's skew do not loop: each goes to `rejects` and the
//!   dead-letter topic with its reason, the rest is written, the metric counts them.
//! - late records' dead letters go through the outbox exactly once while `weir run` is
//!   SIGKILLed and restarted.

mod common;

use std::time::{Duration, Instant};

use common::api::Http;
use common::kafka::{ends, header, read_all};
use common::weir::Topics;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::Message;

const TOKEN: &str = "sink-safety-token";
const WINDOW_MS: i64 = 300_000;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `users.toml` with the sink's `idle_timeout` shortened, for tests that wait for it.
fn quick_idle_topology(dir: &std::path::Path) -> std::path::PathBuf {
    let shipped = std::fs::read_to_string(common::weir::users_toml()).unwrap();
    let anchor = "table = \"users\"\n";
    assert!(shipped.contains(anchor), "users.toml changed its sink");
    let path = dir.join("users-idle.toml");
    std::fs::write(
        &path,
        shipped.replace(anchor, &format!("{anchor}idle_timeout = \"2s\"\n")),
    )
    .unwrap();
    path
}

fn producer() -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// A clean record as the clean topic carries it.
fn clean_json(i: usize, email: &str, ts: i64) -> String {
    serde_json::json!({
        "user_uuid": format!("00000000-0000-4000-8000-{i:012}"), "title": "Ms", "first_name": format!("Name{i}"),
        "last_name": "Lee", "full_name": format!("Name{i} Lee"), "gender": "female", "email": email,
        "street_address": null, "city": "Oslo", "state": null, "country": "Norway", "postcode": "0150",
        "phone": null, "cell": null, "dob": null, "age": null, "registered_at": null,
        "picture_thumbnail": null, "nat": "NO",
        "source": {"topic": "raw", "partition": 0, "offset": i, "timestamp": ts}
    })
    .to_string()
}

/// Waits until the sink has applied every offset of `topic` (its stored offsets reach the
/// topic's ends).
fn wait_applied(db: &str, sink: &str, topic: &str, partitions: i32, child: &mut common::Guard) {
    let end = ends(topic, partitions);
    let deadline = Instant::now() + Duration::from_secs(120);
    let rt = rt();
    loop {
        let stored: Vec<i64> = rt.block_on(async {
            let c = common::pg::connect(db).await;
            let rows = c
                .query(
                    "SELECT partition, next_offset FROM sink_offsets WHERE sink = $1 AND topic = $2 ORDER BY partition",
                    &[&sink, &topic],
                )
                .await
                .unwrap();
            let mut v = vec![0i64; partitions as usize];
            for r in rows {
                v[r.get::<_, i32>(0) as usize] = r.get(1);
            }
            v
        });
        // these tests write the clean topic without transactions: no markers at the end
        if stored == end {
            return;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "weir run exited while the sink had {stored:?} of {end:?}"
        );
        assert!(
            Instant::now() < deadline,
            "the sink never applied the topic: stored {stored:?}, ends {end:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Every dead letter of `dlq` with the given reason prefix, once the outbox has forwarded
/// `expected` of them (or a minute has passed).
fn dead_letters(dlq: &str, prefix: &str, expected: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found: Vec<_> = read_all(dlq, 2, "read_committed")
            .into_iter()
            .filter(|m| {
                header(m, "weir.errors.reasons").is_some_and(|r| r.starts_with(prefix.as_bytes()))
            })
            .collect();
        if found.len() >= expected || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_stalled_upstream_keeps_its_windows_open_and_the_audit_reconciles_raw_records() {
    let t = Topics::create("weir-stall", 2);
    let dir = common::scratch_dir("weir-stall");
    let topology = quick_idle_topology(&dir);
    let topo = topology.to_str().unwrap();
    let db = rt().block_on(common::pg::fresh_database("weir_stall"));
    let port = common::free_port();
    // the sink alone: the processing sub-topology is stopped
    let mut sink = common::Guard(
        t.command(&["run", topo, "--subtopologies", "1", "--instance", "s"])
            .env("WEIR_DATABASE_URL", &db)
            .env("WEIR_HTTP_PORT", port.to_string())
            .env("WEIR_ADMIN_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let http = Http::local(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while http
        .agent
        .get(format!("{}/healthz", http.base))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "the server never answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    // 200 raw records of a window twenty minutes ago
    let w = (now_ms() - 20 * 60_000) / WINDOW_MS * WINDOW_MS;
    let start = chrono::DateTime::from_timestamp_millis(w)
        .unwrap()
        .to_rfc3339();
    let p = producer();
    for i in 0..200usize {
        let (value, _) = common::users::raw_record(i);
        let key = format!("user-{i}");
        p.send(
            BaseRecord::to(&t.raw)
                .partition((i % 2) as i32)
                .key(&key)
                .payload(&value)
                .timestamp(w + i as i64 * 1000),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    // three idle timeouts with the upstream stalled: the window stays open
    std::thread::sleep(Duration::from_secs(6));
    let (status, sealable) = http.call("GET", &format!("/api/windows/{start}/sealable"), None);
    assert_eq!(status, 200, "{sealable}");
    assert_eq!(
        sealable["sealable"], false,
        "a window with records still upstream must not be sealable: {sealable}"
    );

    // the upstream processes them: the window becomes sealable, seals, and audits clean
    t.output(&[
        "run",
        topo,
        "--subtopologies",
        "0",
        "--no-http",
        "--stop-when-idle",
        "3s",
    ]);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, s) = http.call("GET", &format!("/api/windows/{start}/sealable"), None);
        if s["sealable"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the window never became sealable: {s}"
        );
        assert!(sink.try_wait().unwrap().is_none(), "weir run exited");
        std::thread::sleep(Duration::from_millis(500));
    }
    let (status, sealed) = http.call("POST", &format!("/api/windows/{start}/seal"), Some(TOKEN));
    assert_eq!(status, 200, "{sealed}");
    let (status, audit) = http.call("POST", &format!("/api/windows/{start}/audit"), Some(TOKEN));
    assert_eq!(status, 200, "{audit}");
    assert_eq!(audit["passed"], true, "{audit}");
    let parts = audit["raw_partitions"].as_array().expect("raw partitions");
    let raw: i64 = parts.iter().map(|p| p["raw"].as_i64().unwrap()).sum();
    let clean: i64 = parts.iter().map(|p| p["clean"].as_i64().unwrap()).sum();
    let dead: i64 = parts
        .iter()
        .map(|p| p["dead_letters"].as_i64().unwrap())
        .sum();
    assert_eq!((raw, clean, dead), (200, 180, 20), "{audit}");

    // raw records that never got a fate fail the audit of their window
    let w2 = w - 2 * WINDOW_MS;
    let start2 = chrono::DateTime::from_timestamp_millis(w2)
        .unwrap()
        .to_rfc3339();
    for i in 0..10usize {
        let value = common::users::valid_user(1000 + i);
        p.send(
            BaseRecord::to(&t.raw)
                .partition(0)
                .key("late")
                .payload(&value)
                .timestamp(w2 + 1000),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let (status, _) = http.call(
        "POST",
        &format!("/api/windows/{start2}/seal?force=true"),
        Some(TOKEN),
    );
    assert_eq!(status, 200);
    let (_, audit2) = http.call("POST", &format!("/api/windows/{start2}/audit"), Some(TOKEN));
    assert_eq!(audit2["passed"], false, "{audit2}");
    let problems = audit2["problems"].to_string();
    assert!(
        problems.contains("without a fate"),
        "the audit names the raw records with no fate: {problems}"
    );
    drop(sink);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn records_postgres_cannot_take_become_rejects_and_dead_letters_without_a_loop() {
    // the broker takes records of any time into this clean topic (its default is an hour
    // ahead at most)
    let t = Topics::named("weir-refused-rows", 2);
    common::kafka::create_topics(&[&t.raw, &t.dlq], 2);
    common::kafka::create_topics_with(
        &[&t.clean],
        2,
        &[("message.timestamp.after.max.ms", "9223372036854775807")],
    );
    let db = rt().block_on(async {
        let db = common::pg::fresh_database("weir_refused").await;
        // a constraint on windows that some records' windows break
        common::pg::connect(&db)
            .await
            .batch_execute(
                "ALTER TABLE windows ADD CONSTRAINT weir_test_after_2000 CHECK (window_start >= '2000-01-01')",
            )
            .await
            .unwrap();
        db
    });
    let base = (now_ms() - 3_600_000) / WINDOW_MS * WINDOW_MS;
    let p = producer();
    let send = |i: usize, email: &str, ts: i64| {
        p.send(
            BaseRecord::to(&t.clean)
                .partition((i % 2) as i32)
                .key("k")
                .payload(&clean_json(i, email, ts))
                .timestamp(ts),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    };
    for i in 0..100 {
        send(i, &format!("user{i}@example.com"), base + i as i64 * 1000);
    }
    // 1999: the windows' constraint refuses them, whatever the batch
    for i in 100..103 {
        send(
            i,
            &format!("old{i}@example.com"),
            915_148_800_000 + i as i64,
        );
    }
    // year 287,000 and a day ahead of the clock
    send(103, "far@example.com", 9_000_000_000_000_000);
    send(104, "future@example.com", now_ms() + 86_400_000);
    // a NUL character, which PostgreSQL's text cannot store
    p.send(
        BaseRecord::to(&t.clean)
            .partition(1)
            .key("k")
            .payload(
                &clean_json(105, "nul@example.com", base + 105_000)
                    .replace("\"Name105\"", "\"Nul\\u0000\""),
            )
            .timestamp(base + 105_000),
    )
    .map_err(|(e, _)| e)
    .unwrap();
    p.flush(Duration::from_secs(30)).unwrap();
    assert_eq!(ends(&t.clean, 2).iter().sum::<i64>(), 106, "all produced");

    let port = common::free_port();
    let mut child = t.serve("refused", &db, port, &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    let sink = format!("{}/users", t.app);
    wait_applied(&db, &sink, &t.clean, 2, &mut child);
    let rt = rt();
    let (rows, rejects, watermark) = rt.block_on(async {
        let c = common::pg::connect(&db).await;
        let rows: i64 = c
            .query_one("SELECT count(*) FROM users", &[])
            .await
            .unwrap()
            .get(0);
        let rejects: Vec<(Option<String>, String)> = c
            .query(
                "SELECT sqlstate, reason FROM rejects ORDER BY \"offset\", partition",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let watermark: Option<chrono::DateTime<chrono::Utc>> = c
            .query_one("SELECT max(watermark) FROM sink_offsets", &[])
            .await
            .unwrap()
            .get(0);
        (rows, rejects, watermark)
    });
    assert_eq!(
        rows, 100,
        "the good records are written; rejects: {rejects:?}"
    );
    let codes: Vec<&str> = rejects
        .iter()
        .map(|(_, r)| r.split(':').next().unwrap())
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == "postgres.rejected").count(),
        4,
        "{rejects:?}"
    );
    assert!(codes.contains(&"timestamp.out_of_range"), "{rejects:?}");
    assert!(codes.contains(&"timestamp.future"), "{rejects:?}");
    assert!(
        rejects
            .iter()
            .filter(|(s, _)| s.as_deref() == Some("23514"))
            .count()
            == 3,
        "the SQLSTATE is kept: {rejects:?}"
    );
    assert!(
        rejects.iter().any(|(s, _)| s.as_deref() == Some("22021")),
        "the NUL is refused before the COPY, as PostgreSQL would: {rejects:?}"
    );
    assert!(
        watermark.is_some_and(|w| w.timestamp_millis() < now_ms() + 60_000),
        "a future record does not move the watermark: {watermark:?}"
    );
    let dead = dead_letters(&t.dlq, "", 6);
    let mut reasons: Vec<String> = dead
        .iter()
        .map(|m| String::from_utf8_lossy(header(m, "weir.errors.reasons").unwrap()).into_owned())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "postgres.rejected:22021",
            "postgres.rejected:23514",
            "postgres.rejected:23514",
            "postgres.rejected:23514",
            "timestamp.future",
            "timestamp.out_of_range"
        ],
        "one dead letter each, with its reason"
    );
    assert!(dead
        .iter()
        .all(|m| header(m, "weir.errors.topic") == Some(t.clean.as_bytes())));
    let metrics = common::get_text(&format!("http://127.0.0.1:{port}/metrics"));
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("weir_sink_unwritable_records_total")
                && l.contains("sqlstate=\"23514\"")
                && l.ends_with(" 3")),
        "counted by SQLSTATE:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("unwritable"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn late_dead_letters_go_through_the_outbox_exactly_once_despite_sigkill() {
    let t = Topics::create("weir-outbox", 2);
    let db = rt().block_on(common::pg::fresh_database("weir_outbox"));
    let base = (now_ms() - 3_600_000) / WINDOW_MS * WINDOW_MS;
    let p = producer();
    for i in 0..1000usize {
        p.send(
            BaseRecord::to(&t.clean)
                .partition((i % 2) as i32)
                .key("k")
                .payload(&clean_json(
                    i,
                    &format!("on-time{i}@example.com"),
                    base + i as i64,
                ))
                .timestamp(base + i as i64),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    let port = common::free_port();
    let mut child = t.serve("outbox", &db, port, &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    let sink = format!("{}/users", t.app);
    wait_applied(&db, &sink, &t.clean, 2, &mut child);
    let start = chrono::DateTime::from_timestamp_millis(base)
        .unwrap()
        .to_rfc3339();
    let (status, body) = Http::local(port).call(
        "POST",
        &format!("/api/windows/{start}/seal?force=true"),
        Some(TOKEN),
    );
    assert_eq!(status, 200, "{body}");

    // 3,000 late records while weir run is killed three times
    const LATE: usize = 3000;
    let producing = {
        let clean = t.clean.clone();
        std::thread::spawn(move || {
            let p = producer();
            for i in 0..LATE {
                p.send(
                    BaseRecord::to(&clean)
                        .partition((i % 2) as i32)
                        .key("k")
                        .payload(&clean_json(i, &format!("late{i}@example.com"), base + 1))
                        .timestamp(base + 1),
                )
                .map_err(|(e, _)| e)
                .unwrap();
                if i % 300 == 299 {
                    std::thread::sleep(Duration::from_millis(150));
                }
            }
            p.flush(Duration::from_secs(30)).unwrap();
        })
    };
    for k in 0..3u64 {
        std::thread::sleep(Duration::from_millis(
            400 + (std::process::id() as u64 * 7 + k * 311) % 900,
        ));
        child.kill().unwrap();
        child.wait().unwrap();
        child = t.serve("outbox", &db, port, &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    }
    producing.join().unwrap();
    wait_applied(&db, &sink, &t.clean, 2, &mut child);
    let dead = dead_letters(&t.dlq, "window.sealed", LATE);
    let mut sources: Vec<(Vec<u8>, Vec<u8>)> = dead
        .iter()
        .map(|m| {
            (
                header(m, "weir.errors.partition").unwrap().to_vec(),
                header(m, "weir.errors.offset").unwrap().to_vec(),
            )
        })
        .collect();
    sources.sort();
    sources.dedup();
    assert_eq!(
        (dead.len(), sources.len()),
        (LATE, LATE),
        "each late record has exactly one dead letter"
    );
    assert!(dead.iter().all(|m| m.payload().is_some()));
    // forwarded rows leave the outbox
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: i64 = rt().block_on(async {
            common::pg::connect(&db)
                .await
                .query_one("SELECT count(*) FROM dead_letter_outbox", &[])
                .await
                .unwrap()
                .get(0)
        });
        if left == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{left} rows stay in the outbox");
        std::thread::sleep(Duration::from_millis(300));
    }
}
