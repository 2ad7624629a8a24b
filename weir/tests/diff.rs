//! `weir diff` and what a reload would do with an edit of `users.toml`, offline: which
//! changes apply live (processors) and which restart which sub-topologies.

use std::path::Path;
use std::process::Command;

use weir_topology::diff::{diff, Applies, What};
use weir_topology::graph::sub_topologies;
use weir_topology::Topology;

fn users() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml"))
        .unwrap()
}

fn load(text: &str) -> Topology {
    weir_topology::load_str("users.toml", text, &weir::registry::registry(), &|_| None)
        .unwrap_or_else(|e| panic!("{e:?}"))
}

/// The sub-topology (of `t`) that holds node `name`.
fn sub_of(t: &Topology, name: &str) -> usize {
    sub_topologies(t)
        .into_iter()
        .find(|s| s.nodes.iter().any(|n| n == name))
        .unwrap()
        .id
}

fn edit(from: &str, to: &str) -> String {
    let text = users();
    assert!(text.contains(from), "users.toml has no {from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn a_stricter_rule_and_new_cleaning_apply_live_naming_the_keys() {
    let old = load(&users());
    let new = load(
        &edit("\"email\" = 255", "\"email\" = 24").replacen(
            "{ name = \"nat\",               from = \"nat\",               ops = [\"nfc\", \"trim\", \"upper\"] }",
            "{ name = \"nat\",               from = \"nat\",               ops = [\"nfc\", \"trim\", \"lower\"] }",
            1,
        ),
    );
    let d = diff(&old, &new);
    assert_eq!(
        d.live,
        vec![
            "processor \"validate\"".to_owned(),
            "processor \"clean\"".to_owned()
        ],
        "{d}"
    );
    assert!(d.restart.is_empty(), "{d}");
    assert_eq!(
        d.changes[0].what,
        What::Changed(vec!["max_lengths.email".into()])
    );
    assert_eq!(d.changes[1].what, What::Changed(vec!["fields".into()]));
    let text = d.to_string();
    assert!(text.contains("processor \"validate\": changed: max_lengths.email — applies live at the next transaction boundary"), "{text}");
    assert!(text.ends_with("the whole edit applies live\n"), "{text}");
}

#[test]
fn sinks_topics_windows_and_the_application_id_restart_what_they_touch() {
    let old = load(&users());
    // a template: the websocket sink's sub-topology only
    let new = load(&edit("Hello {full_name}!", "Hi {full_name}!"));
    let d = diff(&old, &new);
    assert_eq!(d.restart, vec![sub_of(&new, "live")], "{d}");
    assert!(d.live.is_empty());
    // a window: the PostgreSQL sink's only
    let d = diff(&old, &load(&edit("window = \"5m\"", "window = \"10m\"")));
    assert_eq!(d.restart, vec![sub_of(&old, "users")], "{d}");
    assert_eq!(d.changes[0].what, What::Changed(vec!["window".into()]));
    // the clean topic: the loop that writes it and every sink that reads it
    let new = load(&edit(
        "${WEIR_TOPIC_CLEAN:-randomuser-topic-clean}",
        "clean-v2",
    ));
    let d = diff(&old, &new);
    let mut all: Vec<usize> = sub_topologies(&new).iter().map(|s| s.id).collect();
    all.sort();
    assert_eq!(d.restart, all, "{d}");
    // the commit interval: the loop only
    let d = diff(
        &old,
        &load(&edit(
            "commit_max_records = 20000",
            "commit_max_records = 900",
        )),
    );
    assert_eq!(d.restart, vec![sub_of(&old, "raw")], "{d}");
    assert_eq!(d.changes[0].label, "settings");
    // the application id: everything
    let d = diff(
        &old,
        &load(&edit(
            "${WEIR_APPLICATION_ID:-user-registration}",
            "other-app",
        )),
    );
    assert_eq!(d.restart, all, "{d}");
    // a processor rule and a window together: the processor still swaps live
    let d = diff(
        &old,
        &load(&edit("\"email\" = 255", "\"email\" = 24").replacen(
            "window = \"5m\"",
            "window = \"10m\"",
            1,
        )),
    );
    assert_eq!(d.live, vec!["processor \"validate\"".to_owned()]);
    assert_eq!(d.restart, vec![sub_of(&old, "users")]);
}

#[test]
fn rewiring_and_removing_nodes_restart_and_tests_or_comments_change_nothing() {
    let old = load(&users());
    let same = edit(
        "name = \"a complete user is cleaned\"",
        "name = \"a complete user is cleaned, renamed\"",
    )
    .replacen(
        "# The seed pipeline",
        "# An edited comment. The seed pipeline",
        1,
    );
    let d = diff(&old, &load(&same));
    assert!(d.is_empty(), "{d}");
    assert_eq!(d.to_string(), "no change to what runs\n");
    // the websocket sink removed: its sub-topology is gone, nothing else restarts
    let start = users().find("[sinks.live]").unwrap();
    let end = users()[start..].find("message = ").unwrap() + start;
    let end = users()[end..].find('\n').unwrap() + end + 1;
    let mut removed = users();
    removed.replace_range(start..end, "");
    let d = diff(&old, &load(&removed));
    assert_eq!(d.changes.len(), 1, "{d}");
    assert_eq!(d.changes[0].what, What::Removed);
    assert_eq!(d.changes[0].applies, Applies::Restart(vec![]));
    assert_eq!(d.removed, vec!["live".to_owned()]);
    assert!(d.restarts());
    assert_eq!(
        d.to_string(),
        "sink \"live\": removed — stops\nthe edit stops what it removes\n"
    );
    // a dead-letter sink that reads one more input: rewired, so its loop restarts
    let d = diff(
        &old,
        &load(&edit(
            "inputs = [\"validate.invalid\", \"raw.undecodable\"]",
            "inputs = [\"raw.undecodable\", \"validate.invalid\"]",
        )),
    );
    assert_eq!(d.changes[0].what, What::Rewired, "{d}");
    assert_eq!(d.restart, vec![sub_of(&old, "raw")]);
}

#[test]
fn values_are_never_printed() {
    let old = load(&users());
    let d = diff(&old, &load(&edit("\"email\" = 255", "\"email\" = 987654")));
    assert!(!d.to_string().contains("987654"), "{d}");
    assert!(!serde_json::to_string(&d).unwrap().contains("987654"));
}

#[test]
fn the_diff_command_prints_text_and_json_and_refuses_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("weir-diff-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (old, new, broken) = (
        dir.join("old.toml"),
        dir.join("new.toml"),
        dir.join("broken.toml"),
    );
    std::fs::write(&old, users()).unwrap();
    std::fs::write(&new, edit("\"email\" = 255", "\"email\" = 24")).unwrap();
    std::fs::write(&broken, edit("\"email\" = 255", "\"email\" = \"long\"")).unwrap();
    let run = |args: &[&std::path::Path], json: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_weir"));
        c.arg("diff").args(args).env_remove("WEIR_TOPIC_RAW");
        if json {
            c.args(["--format", "json"]);
        }
        c.output().unwrap()
    };
    let out = run(&[&old, &new], false);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("processor \"validate\": changed: max_lengths.email"),
        "{text}"
    );
    let out = run(&[&old, &new], true);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["live"][0], "processor \"validate\"");
    assert_eq!(v["changes"][0]["applies"], "live");
    let out = run(&[&old, &broken], false);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("broken.toml:"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
