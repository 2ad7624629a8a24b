//! The `weir` command line: help lists every subcommand.

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
