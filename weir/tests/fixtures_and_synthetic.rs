//! The users topology on real-shaped data, with no broker: every randomuser.me fixture user
//! is cleaned as the rules say, and every synthetic record's fate matches what the generator
//! made — clean users reach the clean topic, each dirty kind becomes a dead letter.

use std::path::Path;

use weir::ingest::synthetic::{DirtyKind, Synthetic};
use weir_topology::graph::sub_topologies;
use weir_topology::pipeline::{Fate, Pipeline};
use weir_topology::{Body, Origin, Topology};

fn users() -> Topology {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../topology/users.toml");
    let text = std::fs::read_to_string(path).unwrap();
    // defaults only: the test does not depend on the caller's environment
    weir_topology::load_str("users.toml", &text, &weir::registry::registry(), &|_| None).unwrap()
}

fn run(p: &mut Pipeline, value: &[u8]) -> Vec<Fate> {
    let mut fates = Vec::new();
    p.process(
        Origin {
            topic: "randomuser-topic".into(),
            value: Some(value.to_vec()),
            ..Origin::default()
        },
        &mut fates,
    );
    fates
}

#[test]
fn every_fixture_user_is_cleaned() {
    let t = users();
    let sub = sub_topologies(&t).remove(0);
    let mut p = Pipeline::build(&t, &sub, None).unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/randomuser");
    let mut cleaned = Vec::new();
    for name in ["results-1.json", "results-7-mixed-nat.json"] {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(name)).unwrap()).unwrap();
        for user in doc["results"].as_array().unwrap() {
            let fates = run(&mut p, user.to_string().as_bytes());
            assert_eq!(fates.len(), 1);
            match &fates[0].envelope.body {
                Body::Clean(row) => {
                    cleaned.push(serde_json::from_slice::<serde_json::Value>(&row.json).unwrap())
                }
                other => panic!("{} was not cleaned: {other:?}", user["email"]),
            }
        }
    }
    assert_eq!(cleaned.len(), 8);
    let by_nat = |nat: &str| cleaned.iter().rev().find(|c| c["nat"] == nat).unwrap();
    assert_eq!(by_nat("IR")["full_name"], "محمدطاها کامروا");
    assert_eq!(
        by_nat("IR")["postcode"].as_str(),
        Some("61384"),
        "a numeric postcode becomes text"
    );
    assert_eq!(by_nat("UA")["full_name"], "Зоряна Бондаренко");
    assert_eq!(
        by_nat("UA")["phone"].as_str(),
        Some("098972311"),
        "letters in phones are dropped"
    );
    assert_eq!(by_nat("CA")["postcode"].as_str(), Some("S4K 6Y1"));
    assert_eq!(by_nat("CH")["full_name"], "Jean-Pierre D'Aubigné");
    assert_eq!(
        by_nat("CH")["street_address"].as_str(),
        Some("7133 Rue de L'Abbé-Grégoire")
    );
    assert_eq!(by_nat("DE")["last_name"], "Müller");
    assert_eq!(by_nat("US")["phone"].as_str(), Some("2727900888"));
    assert_eq!(by_nat("US")["dob"].as_str(), Some("1992-03-08"));
    assert_eq!(
        by_nat("US")["user_uuid"].as_str(),
        Some("7a0eed16-9430-4d68-901f-c0d4c1c3bf00")
    );
}

#[test]
fn synthetic_records_meet_the_fate_the_generator_intended() {
    let t = users();
    let sub = sub_topologies(&t).remove(0);
    let mut p = Pipeline::build(&t, &sub, None).unwrap();
    let mut g = Synthetic::new(2026, 0.25);
    let mut dead_by_kind = std::collections::HashMap::<DirtyKind, usize>::new();
    for i in 0..20_000 {
        let r = g.next_record();
        let fates = run(&mut p, &r.value);
        assert_eq!(fates.len(), 1, "record {i}: exactly one fate");
        let sink = &*fates[0].sink;
        match r.dirty {
            None => assert_eq!(
                sink,
                "clean_topic",
                "record {i} is clean: {}",
                String::from_utf8_lossy(&r.value)
            ),
            Some(kind) => {
                assert_eq!(
                    sink,
                    "dead_letter",
                    "record {i} ({kind:?}) must be a dead letter: {}",
                    String::from_utf8_lossy(&r.value)
                );
                *dead_by_kind.entry(kind).or_default() += 1;
            }
        }
    }
    assert_eq!(dead_by_kind.len(), DirtyKind::ALL.len(), "{dead_by_kind:?}");
}
