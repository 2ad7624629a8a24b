//! `weir bench topology`, `weir bench process`, `weir bench sink` and `weir bench live`,
//! small, against the real broker and PostgreSQL: the first processes every record exactly
//! once and reports its throughput; the second gives every record the same fate in node
//! batches as one at a time; the third writes every clean record with the sink, loads the
//! same rows with `COPY`, reports the ratio and leaves nothing behind; in the fourth every
//! client that keeps up receives every greeting, and a stalled client neither blocks the
//! others nor loses greetings untold.

mod common;

#[test]
fn the_topology_bench_processes_every_record_and_reports_throughput() {
    let out = std::process::Command::new(common::weir_bin())
        .args(["bench", "topology"])
        .arg(common::weir::users_toml())
        .args(["--records", "3000", "--dirty", "0.2", "--partitions", "2"])
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = common::stdout_of(out);
    assert!(
        stdout.contains("3000 records (20% bad)") && stdout.contains(" records/s, "),
        "{stdout}"
    );
    assert!(
        stdout.contains(" committed, 0 aborted in all") && stdout.contains("peak memory"),
        "{stdout}"
    );
}

/// `--contender`: another processor of the same topic runs in each round, with the topics,
/// the application id and the broker in its environment, and its records/s are set beside
/// Weir's (here the contender is `weir run` itself, which logs what the bench reads).
#[test]
fn the_topology_bench_runs_a_contender_beside_weir_and_compares() {
    let contender = format!(
        "env WEIR_LOG=info {} run {} --subtopologies 0 --no-http --stop-when-idle 2s --instance contender",
        common::weir_bin().display(),
        common::weir::users_toml().display()
    );
    let out = std::process::Command::new(common::weir_bin())
        .args(["bench", "topology"])
        .arg(common::weir::users_toml())
        .args(["--records", "2000", "--partitions", "2", "--rounds", "1"])
        .args(["--contender", &contender])
        .env("WEIR_KAFKA_BOOTSTRAP", common::bootstrap())
        .env("WEIR_LOG", "warn")
        .output()
        .unwrap();
    let stdout = common::stdout_of(out);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("contender ("))
        .unwrap_or_else(|| panic!("no contender line: {stdout}"));
    assert!(
        line.contains(" of the pass-through; weir run ") && line.contains("x the contender"),
        "{line}"
    );
    let per_second: f64 = line
        .split("): ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no records/s: {line}"));
    assert!(per_second > 0.0, "{line}");
}

/// `weir bench process` (no services): records sent through the nodes 8 at a time (the
/// engine's way, the default) meet the same fates as one at a time.
#[test]
fn the_process_bench_gives_each_record_the_same_fate_in_node_batches_as_one_at_a_time() {
    let fates = |batch: &str| -> (u64, u64) {
        let out = std::process::Command::new(common::weir_bin())
            .args(["bench", "process", "--synthetic", "3001", "--dirty", "0.2"])
            .args(["--min-time", "0s", "--batch", batch, "--topology"])
            .arg(common::weir::users_toml())
            .output()
            .unwrap();
        let stdout = common::stdout_of(out);
        assert!(
            stdout.contains(&format!(", {batch} at a time through the nodes)")),
            "{stdout}"
        );
        // "… ): N clean, M dead letters"
        let tail = stdout
            .split("): ")
            .nth(1)
            .unwrap_or_else(|| panic!("{stdout}"));
        let mut n = tail
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty());
        let mut next = || -> u64 { n.next().and_then(|w| w.parse().ok()).unwrap() };
        (next(), next())
    };
    let (one, eight) = (fates("1"), fates("8"));
    assert_eq!(one, eight);
    assert_eq!(one.0 + one.1, 3001, "{one:?}");
    assert!(one.0 > 2000 && one.1 > 300, "{one:?}");
}

/// `weir bench sink`, small: every clean record is written, `COPY` loads the same rows, the
/// ratio is reported and the bench's schema is gone afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_bench_writes_every_clean_record_and_compares_with_copy() {
    let url = common::pg::fresh_database("weir_bench_sink").await;
    let out = std::process::Command::new(common::weir_bin())
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
