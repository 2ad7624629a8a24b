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
        "run",
        "check",
        "describe",
        "diff",
        "test",
        "process",
        "ingest",
        "dlq",
        "audit",
        "bench",
        "completions",
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

#[test]
fn completions_load_in_each_shell_and_know_the_subcommands() {
    // bash: the script loads and registers a completion function for weir
    let out = weir(&["completions", "bash"]);
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.contains("dlq") && script.contains("completions"));
    let loaded = Command::new("bash")
        .args(["-c", "source /dev/stdin; complete -p weir"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        String::from_utf8_lossy(&loaded.stdout).contains("-F _weir weir"),
        "{loaded:?}"
    );
    // zsh and fish: their own formats, with the subcommands
    let zsh = String::from_utf8(weir(&["completions", "zsh"]).stdout).unwrap();
    assert!(zsh.starts_with("#compdef weir"), "{zsh}");
    let fish = String::from_utf8(weir(&["completions", "fish"]).stdout).unwrap();
    assert!(
        fish.contains("complete -c weir") && fish.contains("replay"),
        "{fish}"
    );
    // an unknown shell is a usage error
    assert_eq!(weir(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn the_log_format_is_global_and_checked() {
    // (the JSON lines themselves are read in ingest_kafka, where a command logs)
    let out = weir(&[
        "--log-format",
        "json",
        "check",
        "/nonexistent/topology.toml",
    ]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["check", "/nonexistent.toml"])
        .env("WEIR_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("xml"));
}
