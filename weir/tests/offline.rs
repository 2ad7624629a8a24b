//! The offline faces of `weir`, with no Kafka: `check` (exact messages, exit codes),
//! `describe`, `test` and `process` (every bad shape of input gets a fate, none crashes it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topologies")
}

fn users_toml() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml")
}

fn weir(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .current_dir(dir)
        // the shipped topology reads these with defaults; keep the test independent of them
        .env_remove("WEIR_TOPIC_RAW")
        .env_remove("WEIR_APPLICATION_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run weir");
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

#[test]
fn check_reports_every_error_with_its_place_and_exits_78() {
    for name in ["broken", "syntax", "env", "schema"] {
        let out = weir(&fixtures(), &["check", &format!("{name}.toml")], None);
        let expected =
            std::fs::read_to_string(fixtures().join(format!("{name}.expected"))).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            expected,
            "messages for {name}.toml"
        );
        assert_eq!(out.status.code(), Some(78), "exit code for {name}.toml");
    }
}

#[test]
fn check_accepts_the_shipped_topology() {
    let out = weir(
        &fixtures(),
        &["check", users_toml().to_str().unwrap()],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.ends_with(": ok (7 nodes in 3 sub-topologies, 12 tests)\n"),
        "{stdout}"
    );
}

#[test]
fn check_names_a_missing_file() {
    let out = weir(&fixtures(), &["check", "nope.toml"], None);
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("cannot read nope.toml: "));
}

#[test]
fn describe_splits_sub_topologies_at_topics() {
    let file = users_toml();
    let text = weir(&fixtures(), &["describe", file.to_str().unwrap()], None);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.starts_with("Topologies (user-registration):\n   Sub-topology: 0\n    Source: raw (type: kafka, topic: randomuser-topic)\n      --> validate, dead_letter (undecodable)\n"), "{text}");
    assert!(text.contains("    Sink: dead_letter (type: dead_letter, topic: randomuser-topic-dlq)\n      --> topic:randomuser-topic-dlq\n      <-- validate.invalid, raw.undecodable\n"), "{text}");
    assert!(text.contains("   Sub-topology: 1\n    Source: clean_topic-source (type: kafka, topic: randomuser-topic-clean, written by sink \"clean_topic\")\n      --> users\n"), "{text}");
    assert!(text.contains("   Sub-topology: 2\n"), "{text}");

    let dot = weir(
        &fixtures(),
        &["describe", file.to_str().unwrap(), "--format", "dot"],
        None,
    );
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(dot.starts_with("digraph \"user-registration\" {"));
    assert!(dot.contains("subgraph cluster_0 {"));
    assert!(
        dot.contains("validate -> dead_letter [label=\"invalid\"];"),
        "{dot}"
    );
    assert!(
        dot.contains("clean_topic -> topic_randomuser_topic_clean;"),
        "{dot}"
    );

    let mermaid = weir(
        &fixtures(),
        &["describe", file.to_str().unwrap(), "--format", "mermaid"],
        None,
    );
    let mermaid = String::from_utf8(mermaid.stdout).unwrap();
    assert!(mermaid.starts_with("flowchart LR\n  subgraph sub0[\"Sub-topology 0\"]\n"));
    assert!(
        mermaid.contains("  raw -- undecodable --> dead_letter\n"),
        "{mermaid}"
    );

    let json = weir(
        &fixtures(),
        &["describe", file.to_str().unwrap(), "--format", "json"],
        None,
    );
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["sub_topologies"].as_array().unwrap().len(), 3);
}

#[test]
fn the_shipped_topology_passes_its_own_tests() {
    let out = weir(&fixtures(), &["test", users_toml().to_str().unwrap()], None);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.ends_with("12 passed, 0 failed\n"), "{stdout}");
}

#[test]
fn a_failing_test_case_fails_weir_test() {
    let dir = tempdir("failing-case");
    let topology = std::fs::read_to_string(fixtures().join("minimal.toml")).unwrap()
        + "\n[[tests]]\nname = \"wrong on purpose\"\ninput = '{\"a\": 1}'\nexpect_output = \"dlq\"\n";
    std::fs::write(dir.join("t.toml"), topology).unwrap();
    let out = weir(&dir, &["test", "t.toml"], None);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "test wrong on purpose ... FAILED\n    output: expected \"dlq\", got \"out\"\n"
        ),
        "{stdout}"
    );
}

#[test]
fn a_non_ascii_hex_input_is_a_diagnostic_not_a_panic() {
    let dir = tempdir("hex-input");
    let topology = std::fs::read_to_string(fixtures().join("minimal.toml")).unwrap()
        + "\n[[tests]]\nname = \"hex\"\ninput_hex = \"ä1\"\nexpect_output = \"dlq\"\n";
    std::fs::write(dir.join("t.toml"), topology).unwrap();
    for cmd in ["check", "test"] {
        let out = weir(&dir, &[cmd, "t.toml"], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "weir {cmd}: {stderr}");
        assert!(
            stderr.contains("t.toml:")
                && stderr.contains("test \"hex\": invalid hex digit 'ä' in \"ä1\""),
            "weir {cmd}: {stderr}"
        );
    }
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("weir-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn process(input: &[u8]) -> Vec<Value> {
    let out = weir(
        &fixtures(),
        &["process", users_toml().to_str().unwrap()],
        Some(input),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect()
}

#[test]
fn process_prints_each_records_fate() {
    let good = br#"{"name":{"first":"ana","last":"li"},"email":"Ana@Example.com","location":{"city":"Porto","country":"Portugal","postcode":4000}}"#;
    let mut input = Vec::new();
    input.extend_from_slice(good);
    input.extend_from_slice(b"\n{\"name\":{\"first\":\"x\"}}\n\xff\xfe\n{oops\n");
    let lines = process(&input);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["output"], "clean_topic");
    assert_eq!(lines[0]["record"]["full_name"], "Ana Li");
    assert_eq!(lines[0]["record"]["email"], "ana@example.com");
    assert_eq!(lines[0]["record"]["postcode"], "4000");
    assert_eq!(lines[1]["output"], "dead_letter");
    assert_eq!(
        lines[1]["reasons"],
        serde_json::json!([
            "field.missing:name.last",
            "field.missing:email",
            "field.missing:location.city",
            "field.missing:location.country"
        ])
    );
    assert_eq!(lines[2]["reasons"], serde_json::json!(["utf8.invalid"]));
    assert_eq!(lines[3]["reasons"], serde_json::json!(["json.malformed"]));
}

#[test]
fn no_input_crashes_the_processors() {
    let long = "x".repeat(1_000_000);
    let deep = "[".repeat(100_000);
    let deep_obj = "{\"a\":".repeat(50_000);
    let shapes: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"null".to_vec(),
        b"true".to_vec(),
        b"42".to_vec(),
        b"1e999999".to_vec(),
        b"\"just a string\"".to_vec(),
        b"[]".to_vec(),
        b"{}".to_vec(),
        deep.into_bytes(),
        deep_obj.into_bytes(),
        format!("{{\"name\":{{\"first\":\"{long}\",\"last\":\"b\"}},\"email\":\"a@b.co\",\"location\":{{\"city\":\"c\",\"country\":\"d\"}}}}").into_bytes(),
        b"\xef\xbb\xbf{\"a\":1}".to_vec(),
        b"{\"a\":\"\\ud800\"}".to_vec(),
        b"{\"name\":null,\"email\":null,\"location\":null}".to_vec(),
        b"{\"name\":[],\"email\":{},\"location\":\"x\"}".to_vec(),
        b"{\"name\":{\"first\":\"\\u0000\\u0007\",\"last\":\"\\t\"},\"email\":\"a@b.co\",\"location\":{\"city\":\"c\",\"country\":\"d\"}}".to_vec(),
        b"{\"name\":{\"first\":\"a\",\"last\":\"b\"},\"email\":\"a@b.co\",\"location\":{\"city\":\"c\",\"country\":\"d\",\"postcode\":1.5e300,\"street\":{\"number\":-1,\"name\":null}},\"dob\":{\"date\":\"9999-99-99\",\"age\":18446744073709551615}}".to_vec(),
        b"{\"a\":1}{\"b\":2}".to_vec(),
        b"\x00\x01\x02".to_vec(),
        b"{\"name\":{\"first\":\"\xcc\x81\xcc\x81\",\"last\":\"\xe2\x80\x8b\"},\"email\":\"A@B.CO\",\"location\":{\"city\":\"c\",\"country\":\"d\"}}".to_vec(),
    ];
    let mut input = Vec::new();
    for s in &shapes {
        input.extend_from_slice(s);
        input.push(b'\n');
    }
    let lines = process(&input);
    assert_eq!(lines.len(), shapes.len(), "one fate per input line");
    for (i, l) in lines.iter().enumerate() {
        let output = l["output"]
            .as_str()
            .unwrap_or_else(|| panic!("line {i} has no output: {l}"));
        assert!(
            output == "clean_topic" || output == "dead_letter",
            "line {i}: {l}"
        );
        if output == "dead_letter" {
            assert!(
                !l["reasons"].as_array().unwrap().is_empty(),
                "line {i}: {l}"
            );
        }
    }
    // a sample of the expected fates
    assert_eq!(lines[0]["reasons"], serde_json::json!(["json.malformed"]));
    assert_eq!(
        lines[2]["reasons"],
        serde_json::json!(["record.not_object"])
    );
    assert_eq!(
        lines[9]["reasons"],
        serde_json::json!(["json.malformed"]),
        "deep nesting is refused, not a stack overflow"
    );
    assert_eq!(
        lines[11]["reasons"],
        serde_json::json!(["field.too_long:name.first"])
    );
}
