//! `weir bench topology`, `weir bench sink` and `weir bench live`, small, against the real
//! broker and PostgreSQL: the first processes every record exactly once and reports its
//! throughput; the second writes every clean record with the sink, loads the same rows with
//! `COPY`, reports the ratio and leaves nothing behind; in the third every client that keeps
//! up receives every greeting, and a stalled client neither blocks the others nor loses
//! greetings untold.

mod common;

#[test]
fn the_topology_bench_processes_every_record_and_reports_throughput() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["bench", "topology"])
        .arg(common::weir::users_toml())
        .args(["--records", "3000", "--dirty", "0.2", "--partitions", "2"])
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3000 records (20% bad)") && stdout.contains(" records/s, "),
        "{stdout}"
    );
    assert!(
        stdout.contains(" committed, 0 aborted in all") && stdout.contains("peak memory"),
        "{stdout}"
    );
}

/// `weir bench live`, small: every client that keeps up receives every greeting, and a
/// stalled client neither blocks the others nor loses greetings untold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_bench_writes_every_clean_record_and_compares_with_copy() {
    let url = common::pg::fresh_database("weir_bench_sink").await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["bench", "sink"])
        .arg(common::weir::users_toml())
        .args(["--records", "3000", "--dirty", "0.2", "--partitions", "2"])
        .args(["--rounds", "2"])
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .env("WEIR_DATABASE_URL", &url)
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // "N clean records of 3000 synthetic users" (stderr), then "N records, R rows into users"
    let clean: u64 = stderr
        .split(" clean records of 3000")
        .next()
        .and_then(|s| s.rsplit(char::is_whitespace).next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!((2000..3000).contains(&clean), "{stderr}");
    let rows: u64 = stdout
        .split(&format!("{clean} records, "))
        .nth(1)
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(rows > 0 && rows <= clean, "{stdout}");
    assert!(stdout.contains(" of COPY's speed"), "{stdout}");
    // the bench's schema is gone
    let db = common::pg::connect(&url).await;
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'weir_bench_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[test]
fn the_live_bench_delivers_every_greeting_to_every_client() {
    let t = common::weir::Topics::create("weir-bench-live", 2);
    let users = common::weir::users_toml();
    let (out, _) = t.output(&[
        "bench",
        "live",
        users.to_str().unwrap(),
        "--clients",
        "50",
        "--stalled",
        "1",
        "--rate",
        "100",
        "--duration",
        "3s",
    ]);
    assert!(
        out.contains("300 greetings at 100 /s")
            && out.contains("50 received every greeting")
            && out.contains("0 missed greetings untold"),
        "{out}"
    );
    assert!(
        out.contains("fan-out latency") && out.contains("peak memory"),
        "{out}"
    );
}
