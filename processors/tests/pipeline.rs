//! A topology compiled into a pipeline, with no broker: records reach the right sinks with
//! the right bytes, and the metrics count them per node, output and reason.

use weir_topology::component::{parse_config, ComponentType, Registry};
use weir_topology::graph::sub_topologies;
use weir_topology::metrics::Metrics;
use weir_topology::pipeline::Pipeline;
use weir_topology::source::KafkaSourceConfig;
use weir_topology::{load_str, NodeKind, Origin};

const TOPOLOGY: &str = r#"
application_id = "metrics-test"

[sources.raw]
type = "kafka"
topic = "raw"

[processors.validate]
type = "validate"
inputs = ["raw"]
required = ["name.first", "email"]
email = ["email"]

[processors.clean]
type = "clean"
inputs = ["validate"]
fields = [
  { name = "first_name", from = "name.first", ops = ["nfc", "trim", "title"], missing = "" },
  { name = "email", from = "email", ops = ["nfc", "trim", "lower"], missing = "" },
]

[sinks.out]
type = "kafka"
inputs = ["clean"]
topic = "clean"

[sinks.dlq]
type = "dead_letter"
inputs = ["validate.invalid", "raw.undecodable"]
topic = "dlq"
"#;

fn registry() -> Registry {
    let mut r = Registry::new().register(ComponentType {
        name: "kafka",
        kind: NodeKind::Source,
        parse: parse_config::<KafkaSourceConfig>,
    });
    for c in weir_processors::components()
        .into_iter()
        .chain(weir_sinks::components())
    {
        r = r.register(c);
    }
    r
}

fn origin(offset: i64, value: &[u8]) -> Origin {
    Origin {
        topic: "raw".into(),
        partition: 1,
        offset,
        timestamp: Some(1_700_000_000_000 + offset),
        key: Some(format!("k{offset}").into_bytes()),
        value: Some(value.to_vec()),
        ..Origin::default()
    }
}

#[test]
fn records_reach_their_sinks_and_are_counted() {
    let t = load_str("t.toml", TOPOLOGY, &registry(), &|_| None).expect("valid topology");
    let sub = sub_topologies(&t).remove(0);
    let metrics = Metrics::new();
    let mut p = Pipeline::build(&t, &sub, Some(&metrics)).unwrap();
    let mut fates = Vec::new();
    p.process(
        origin(0, br#"{"name":{"first":"ana"},"email":"A@B.CO"}"#),
        &mut fates,
    );
    p.process(
        origin(1, br#"{"name":{"first":""},"email":"bad"}"#),
        &mut fates,
    );
    p.process(origin(2, b"\xff"), &mut fates);

    let sinks: Vec<&str> = fates.iter().map(|f| &*f.sink).collect();
    assert_eq!(sinks, ["out", "dlq", "dlq"]);
    let clean = fates[0].record.as_ref().unwrap();
    assert_eq!(&*clean.topic, "clean");
    assert_eq!(clean.key.as_deref(), Some(&b"k0"[..]));
    assert_eq!(
        clean.timestamp,
        Some(1_700_000_000_000),
        "the input record's timestamp"
    );
    let v: serde_json::Value = serde_json::from_slice(&clean.value).unwrap();
    assert_eq!(v["first_name"], "Ana");
    assert_eq!(v["email"], "a@b.co");
    assert_eq!(v["source"]["offset"], 0);
    assert_eq!(fates[2].record.as_ref().unwrap().value, b"\xff");

    let text = metrics.render();
    for line in [
        "weir_records_in_total{node=\"raw\"} 3",
        "weir_records_in_total{node=\"validate\"} 2",
        "weir_records_out_total{node=\"validate\",output=\"invalid\"} 1",
        "weir_records_out_total{node=\"raw\",output=\"undecodable\"} 1",
        "weir_records_in_total{node=\"out\"} 1",
        "weir_dead_letters_total{reason=\"email.invalid\"} 1",
        "weir_dead_letters_total{reason=\"field.missing:name.first\"} 1",
        "weir_dead_letters_total{reason=\"utf8.invalid\"} 1",
    ] {
        assert!(text.contains(line), "missing {line} in:\n{text}");
    }
}
