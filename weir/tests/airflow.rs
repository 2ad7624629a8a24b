//! Airflow's `user_window_seal_audit` DAG end to end: with Weir running and records in two
//! past windows, `airflow dags test` for the first interval seals that window through Weir's
//! API and stores a passing audit with the run's id; after a row of the second window is
//! deleted behind the sink's back, the run for that interval fails its audit task, with the
//! numbers in its log. Needs the Airflow that `deploy/dev test` installs (WEIR_AIRFLOW_BIN).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use common::weir::Topics;

const WINDOW_MS: i64 = 300_000;
const PER_WINDOW: i64 = 300;
const TOKEN: &str = "airflow-e2e-token";

fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `airflow dags test user_window_seal_audit` for the interval [start, start+5m) (a manual
/// run at the interval's end), against this test's Weir and database; returns (success,
/// combined output). The DAG's start date is set before the interval, or Airflow would make
/// no task instances for it.
fn dags_test(port: u16, database_url: &str, window_start: i64) -> (bool, String) {
    let airflow = common::env("WEIR_AIRFLOW_BIN");
    let api = format!("http://:{TOKEN}@127.0.0.1:{port}");
    let out = Command::new(&airflow)
        .args([
            "dags",
            "test",
            "user_window_seal_audit",
            &rfc3339(window_start + WINDOW_MS),
        ])
        .env(
            "WEIR_AIRFLOW_START_DATE",
            rfc3339(window_start - 86_400_000),
        )
        .env("AIRFLOW_CONN_WEIR_API", api)
        .env("AIRFLOW_CONN_WEIR_DB", database_url)
        .stdin(Stdio::null())
        .output()
        .expect("run airflow dags test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn airflow_seals_and_audits_a_window_and_fails_on_a_tampered_one() {
    let t = tokio::task::block_in_place(|| Topics::create("weir-airflow", 2));
    let url = common::pg::fresh_database("weir_airflow").await;
    let base = (Utc::now().timestamp_millis() - 3_600_000).div_euclid(WINDOW_MS) * WINDOW_MS;
    tokio::task::block_in_place(|| {
        common::windows::produce_two(&t.clean, base, WINDOW_MS, 2 * PER_WINDOW, "airflow")
    });
    let port = common::free_port();
    let mut weir = t.serve("airflow", &url, port, &[("WEIR_ADMIN_TOKEN", TOKEN)]);
    // both windows become sealable once the sink has stored its watermark
    let (w0, w1) = (rfc3339(base), rfc3339(base + WINDOW_MS));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = ureq::get(&format!(
            "http://127.0.0.1:{port}/api/windows/{w1}/sealable"
        ))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["sealable"] == true);
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the windows never became sealable"
        );
        assert!(weir.try_wait().unwrap().is_none(), "weir run exited");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // the run for [w0, w0+5m): sealed by Airflow, a passing audit stored with its run id
    let (ok, log) = tokio::task::block_in_place(|| dags_test(port, &url, base));
    assert!(ok, "airflow dags test for {w0} failed:\n{log}");
    let client = common::pg::connect(&url).await;
    let w = client
        .query_one(
            "SELECT status, sealed_by, table_rows FROM windows WHERE window_start = $1::text::timestamptz",
            &[&w0],
        )
        .await
        .unwrap();
    assert_eq!(w.get::<_, String>(0), "sealed");
    let sealed_by: String = w.get(1);
    assert!(sealed_by.starts_with("airflow:"), "{sealed_by}");
    assert_eq!(w.get::<_, Option<i64>>(2), Some(PER_WINDOW));
    let a = client
        .query_one(
            "SELECT passed, run_id, table_rows FROM audits WHERE window_start = $1::text::timestamptz ORDER BY id DESC LIMIT 1",
            &[&w0],
        )
        .await
        .unwrap();
    let run_id: Option<String> = a.get(1);
    assert!(a.get::<_, bool>(0), "the audit of {w0} failed");
    assert_eq!(Some(&sealed_by["airflow:".len()..]), run_id.as_deref());
    assert_eq!(a.get::<_, i64>(2), PER_WINDOW);

    // a row of [w1, w1+5m) deleted behind the sink's back: the run fails its audit task
    let deleted = client
        .execute(
            "DELETE FROM users WHERE email = (SELECT email FROM users WHERE window_start = $1::text::timestamptz ORDER BY email LIMIT 1)",
            &[&w1],
        )
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let (ok, log) = tokio::task::block_in_place(|| dags_test(port, &url, base + WINDOW_MS));
    assert!(!ok, "the run for the tampered window {w1} passed:\n{log}");
    assert!(
        log.contains(&format!("audit of window {w1} FAILED"))
            && log.contains(&format!("table rows {}", PER_WINDOW - 1)),
        "the failure and its numbers are not in the log:\n{log}"
    );
    let a = client
        .query_one(
            "SELECT passed, run_id FROM audits WHERE window_start = $1::text::timestamptz ORDER BY id DESC LIMIT 1",
            &[&w1],
        )
        .await
        .unwrap();
    assert!(
        !a.get::<_, bool>(0),
        "the stored verdict for {w1} is a pass"
    );
    assert!(a.get::<_, Option<String>>(1).is_some_and(|r| !r.is_empty()));
    let _ = Command::new("kill")
        .args(["-TERM", &weir.id().to_string()])
        .status();
    assert!(weir.wait().unwrap().success());
}
