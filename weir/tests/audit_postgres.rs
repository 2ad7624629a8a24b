//! The audit catches what was done to the table behind the sink's back: a window that
//! audits clean fails, with a report naming the row and column, once a row is changed or
//! deleted — through the library call and through `weir audit`, which exits 1.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::kafka::{create_topics, ends};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use weir_sinks::postgres::admin::{audit, seal, TopicSource};
use weir_sinks::postgres::writer::Table;

const WINDOW_MS: i64 = 300_000;
const RECORDS: i64 = 2_000;

fn users_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_row_fails_the_audit_with_a_clear_report() {
    let (raw, clean, dlq, app) = (
        common::unique("weir-audit-raw"),
        common::unique("weir-audit-clean"),
        common::unique("weir-audit-dlq"),
        common::unique("weir-audit-app"),
    );
    tokio::task::block_in_place(|| create_topics(&[&raw, &clean, &dlq], 2));
    let url = common::pg::fresh_database("weir_audit").await;
    let base = (Utc::now().timestamp_millis() - 3_600_000).div_euclid(WINDOW_MS) * WINDOW_MS;
    tokio::task::block_in_place(|| {
        common::windows::produce_two(&clean, base, WINDOW_MS, RECORDS, "audit")
    });
    let end = tokio::task::block_in_place(|| ends(&clean, 2));

    let env = [
        ("WEIR_TOPIC_RAW", raw.as_str()),
        ("WEIR_TOPIC_CLEAN", clean.as_str()),
        ("WEIR_TOPIC_DLQ", dlq.as_str()),
        ("WEIR_APPLICATION_ID", app.as_str()),
        ("WEIR_DATABASE_URL", url.as_str()),
    ];
    let mut child = common::Guard(
        Command::new(common::weir_bin())
            .args([
                "run",
                users_toml().to_str().unwrap(),
                "--instance",
                "audit",
                "--no-http",
            ])
            .envs(env)
            .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut client = common::pg::connect(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored: i64 = client
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::int8 FROM sink_offsets",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if stored == end.iter().sum::<i64>() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sink did not catch up: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (cfg, spec) = common::windows::users_sink(&app, WINDOW_MS);
    let table = Table::describe(&client, &cfg).await.unwrap();
    let source = TopicSource {
        kafka: weir_topology::config::KafkaSettings::plain(&common::bootstrap()),
        topic: clean.clone(),
        slack: Duration::from_secs(3600),
        upstream: None,
    };
    let w0 = DateTime::from_timestamp_millis(base).unwrap();
    // a window cannot be sealed before the sink reported its watermark: poll
    let deadline = Instant::now() + Duration::from_secs(60);
    let sealed = loop {
        match seal(
            &mut client,
            &spec,
            "users",
            "window_start",
            w0,
            false,
            "audit-test",
        )
        .await
        {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{e}");
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(sealed.window.records, RECORDS / 2);
    let clean_report = audit(&client, &spec, &table, &source, w0, Some("before"))
        .await
        .unwrap();
    assert!(clean_report.passed, "{clean_report:#?}");
    assert_eq!(clean_report.rows_checked as i64, RECORDS / 2);

    // a record for the sealed window arrives late: by default it becomes a dead letter
    // (reason window.sealed, kept in rejects too), the sealed counts do not move, and the
    // audit accounts for it
    let late_ts = base + 1_000;
    tokio::task::block_in_place(|| {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", common::bootstrap())
            .create()
            .unwrap();
        let v = serde_json::json!({"user_uuid": "00000000-0000-4000-8000-999999999999", "title": "Mr",
            "first_name": "Late", "last_name": "Comer", "full_name": "Late Comer", "email": "late@example.com",
            "city": "Oslo", "country": "Norway", "source": {"topic": "raw", "partition": 1, "offset": 99, "timestamp": late_ts}})
        .to_string();
        producer
            .send(
                BaseRecord::<str, str>::to(&clean)
                    .partition(1)
                    .key("late")
                    .payload(&v)
                    .timestamp(late_ts),
            )
            .map_err(|(e, _)| e)
            .unwrap();
        producer.flush(Duration::from_secs(30)).unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = weir_sinks::postgres::admin::window(&client, &spec, w0)
            .await
            .unwrap()
            .unwrap();
        if w.late_dead_letter == 1 {
            assert_eq!(w.records, RECORDS / 2, "the sealed counts do not move");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late record was not handled: {w:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reason: String = client
        .query_one(
            "SELECT reason FROM rejects WHERE record->>'email' = 'late@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(reason.starts_with("window.sealed: "), "{reason}");
    // the dead letter goes through the outbox: it is in Kafka once forwarded
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead = loop {
        let dead =
            tokio::task::block_in_place(|| common::kafka::read_all(&dlq, 2, "read_committed"));
        if !dead.is_empty() || Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(dead.len(), 1, "one dead letter for the late record");
    let outbox: i64 = client
        .query_one("SELECT count(*) FROM dead_letter_outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(outbox <= 1, "forwarded rows leave the outbox");
    assert_eq!(
        common::kafka::header(&dead[0], "weir.errors.reasons"),
        Some(&b"window.sealed"[..])
    );
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM users WHERE email = 'late@example.com'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 0,
        "a late record is not written under the dead_letter policy"
    );
    let with_late = audit(&client, &spec, &table, &source, w0, Some("late"))
        .await
        .unwrap();
    assert!(with_late.passed, "{with_late:#?}");
    assert_eq!(
        (with_late.topic_records, with_late.late_dead_letter),
        (RECORDS / 2 + 1, 1)
    );

    // tamper: change a name and delete another row
    client
        .execute(
            "UPDATE users SET first_name = 'Mallory' WHERE email = 'audit10@example.com'",
            &[],
        )
        .await
        .unwrap();
    client
        .execute("DELETE FROM users WHERE email = 'audit20@example.com'", &[])
        .await
        .unwrap();
    let report = audit(&client, &spec, &table, &source, w0, Some("after"))
        .await
        .unwrap();
    assert!(!report.passed);
    assert!(
        report.problems.contains(&"row audit10@example.com: column first_name is \"Mallory\", the record at partition 0 offset 5 says \"Name10\"".to_owned()),
        "{:#?}",
        report.problems
    );
    assert!(
        report.problems.contains(&"missing row audit20@example.com: the record at partition 0 offset 10 is in the window".to_owned()),
        "{:#?}",
        report.problems
    );
    let stored: (bool, Option<String>) = {
        let r = client
            .query_one(
                "SELECT passed, run_id FROM audits ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(stored, (false, Some("after".into())));

    // the command line says the same and exits 1
    let out = Command::new(common::weir_bin())
        .args([
            "audit",
            users_toml().to_str().unwrap(),
            "--window",
            &w0.to_rfc3339(),
            "--run-id",
            "cli",
        ])
        .envs(env)
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("(sealed): FAILED"), "{stdout}");
    assert!(
        stdout.contains("  - row audit10@example.com: column first_name is \"Mallory\""),
        "{stdout}"
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}
