//! The `weir` command line: help lists every subcommand; bad options are refused clearly.

use std::process::Command;

fn weir(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .output()
        .expect("run weir")
}

#[test]
fn help_lists_the_planned_subcommands() {
    let out = weir(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in [
        "run", "check", "describe", "test", "process", "ingest", "dlq", "audit", "bench",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "`weir --help` does not list {cmd}:\n{help}"
        );
    }
}

#[test]
fn ingest_producer_options_are_checked_before_anything_is_sent() {
    // not KEY=VALUE: a usage error, exit 2
    let out = weir(&["ingest", "--source", "synthetic", "-X", "compression.type"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid producer option \"compression.type\""),
        "{err}"
    );
    // a property librdkafka does not know: exit 1, naming it
    let out = weir(&[
        "ingest",
        "--source",
        "synthetic",
        "--count",
        "1",
        "--bootstrap-servers",
        "127.0.0.1:1",
        "-X",
        "no.such.property=1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("creating the Kafka producer") && err.contains("no.such.property"),
        "{err}"
    );
}
