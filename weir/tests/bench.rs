//! `weir bench topology` and `weir bench live`, small, against the real broker: the first
//! processes every record exactly once and reports its throughput; in the second every client
//! that keeps up receives every greeting, and a stalled client neither blocks the others nor
//! loses greetings untold.

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
