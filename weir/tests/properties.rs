//! Property tests: no input crashes the processors or the topology loader.
//!
//! - Any bytes, and any user-shaped JSON with arbitrary text, numbers and nesting, get
//!   exactly one fate from the users topology's processing sub-topology: the clean topic, or
//!   the dead-letter topic with the original bytes.
//! - Any edit of `topology/users.toml` (characters deleted, TOML punctuation or arbitrary
//!   text inserted) loads or is reported with diagnostics inside the file; nothing panics.
//! - The fast field reader reads every JSON text — user-shaped or not, with odd white space,
//!   escapes, numbers, nesting, and with bytes cut or inserted — exactly as serde_json's
//!   parser does: the same fields, or the same error.
//!
//! `PROPTEST_CASES` sets the number of cases (1,000 each by default; `deploy/dev faults` runs
//! 100,000).

mod common;

use proptest::prelude::*;
use weir_topology::fields::{FieldPlan, Parsed, Shape};
use weir_topology::graph::sub_topologies;
use weir_topology::pipeline::{Fate, Pipeline};
use weir_topology::{Body, LoadError, NodeKind, Origin};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn users_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| std::fs::read_to_string(common::weir::users_toml()).unwrap())
}

/// The processing sub-topology of `users.toml`, built once.
fn pipeline() -> std::sync::MutexGuard<'static, Pipeline> {
    static PIPELINE: std::sync::OnceLock<std::sync::Mutex<Pipeline>> = std::sync::OnceLock::new();
    PIPELINE
        .get_or_init(|| std::sync::Mutex::new(build_pipeline()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn build_pipeline() -> Pipeline {
    let t = weir_topology::load_str(
        "users.toml",
        users_text(),
        &weir::registry::registry(),
        &|_| None,
    )
    .expect("users.toml loads");
    let sub = sub_topologies(&t)
        .into_iter()
        .find(|s| {
            s.nodes
                .iter()
                .any(|n| t.node(n).is_some_and(|n| n.kind == NodeKind::Source))
        })
        .unwrap();
    Pipeline::build(&t, &sub, None).unwrap()
}

/// The fate of one value: exactly one, and a dead letter keeps the bytes.
fn one_fate(p: &mut Pipeline, value: &[u8]) -> Result<(), TestCaseError> {
    let mut fates: Vec<Fate> = Vec::new();
    p.process(
        Origin {
            topic: "randomuser-topic".into(),
            value: Some(value.to_vec()),
            ..Origin::default()
        },
        &mut fates,
    );
    prop_assert_eq!(fates.len(), 1, "one fate");
    let f = &fates[0];
    match &f.envelope.body {
        Body::Clean(_) => prop_assert_eq!(&*f.sink, "clean_topic"),
        Body::Failed(failure) => {
            prop_assert_eq!(&*f.sink, "dead_letter");
            prop_assert!(!failure.reasons.is_empty());
            let record = f.record.as_ref().unwrap();
            prop_assert_eq!(record.value.as_slice(), value, "the original bytes");
        }
        other => prop_assert!(false, "a fate that is neither clean nor failed: {other:?}"),
    }
    Ok(())
}

/// JSON values: scalars of every kind, arbitrary text, nested a few levels.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".*".prop_map(serde_json::Value::from),
        "[a-zA-Z0-9._%+-]{1,12}@[a-z]{1,8}\\.[a-z]{2,4}".prop_map(serde_json::Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{3})?Z)?"
            .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const PATHS: &[&[&str]] = &[
    &["name", "first"],
    &["name", "last"],
    &["name", "title"],
    &["email"],
    &["gender"],
    &["location", "city"],
    &["location", "country"],
    &["location", "state"],
    &["location", "postcode"],
    &["location", "street", "number"],
    &["location", "street", "name"],
    &["login", "uuid"],
    &["dob", "date"],
    &["dob", "age"],
    &["registered", "date"],
    &["phone"],
    &["cell"],
    &["picture", "thumbnail"],
    &["nat"],
];

/// A user-shaped record: each field the rules name set to an arbitrary value (or left out).
fn user() -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec(prop::option::of(json()), PATHS.len()).prop_map(|values| {
        let mut root = serde_json::json!({});
        for (path, value) in PATHS.iter().zip(values) {
            let Some(value) = value else { continue };
            let mut at = &mut root;
            for key in &path[..path.len() - 1] {
                if !at.get(*key).is_some_and(|v| v.is_object()) {
                    at[*key] = serde_json::json!({});
                }
                at = &mut at[*key];
            }
            at[path[path.len() - 1]] = value;
        }
        root
    })
}

/// One edit of a text: at a character position, delete some characters, insert some text.
fn edits() -> impl Strategy<Value = Vec<(usize, usize, String)>> {
    let insert = prop_oneof![
        Just(String::new()),
        prop::sample::select(vec![
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'",
            "'''",
            ".",
            ",",
            "{",
            "}",
            "\n",
            "#",
            "${",
            "${X:-",
            "}",
            "inputs = []",
            "type = \"kafka\"",
            "[sinks.x]",
            "0",
            "-1",
            "1e400",
            "true",
            "\\u",
            "\\",
            "ä",
            "\u{0}",
            "🙂",
        ])
        .prop_map(str::to_owned),
        ".{0,12}",
    ];
    prop::collection::vec((any::<prop::sample::Index>(), 0usize..30, insert), 1..6).prop_map(|v| {
        v.into_iter()
            .map(|(i, d, s)| (i.index(usize::MAX / 2), d, s))
            .collect()
    })
}

fn apply(text: &str, edits: &[(usize, usize, String)]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for (at, delete, insert) in edits {
        let at = at % (chars.len() + 1);
        let end = (at + delete).min(chars.len());
        chars.splice(at..end, insert.chars());
    }
    chars.into_iter().collect()
}

/// A JSON text of a value, written with odd white space now and then.
fn json_text() -> impl Strategy<Value = String> {
    (user(), any::<u64>()).prop_map(|(v, seed)| {
        let compact = v.to_string();
        let mut out = String::with_capacity(compact.len() + 16);
        let mut x = seed | 1;
        for c in compact.chars() {
            out.push(c);
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if matches!(c, ',' | ':' | '{' | '[') && x % 5 == 0 {
                out.push_str([" ", "\n", "\t ", "\r\n"][(x % 4) as usize]);
            }
        }
        out
    })
}

/// A JSON text, sometimes damaged: a byte cut, a character inserted.
fn damaged() -> impl Strategy<Value = String> {
    (
        json_text(),
        any::<prop::sample::Index>(),
        0usize..4,
        prop::sample::select(vec![
            "",
            "\"",
            "\\",
            "\\u00e9",
            "\\ud800",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "1e400",
            "-",
            "0.5",
            "007",
            "-0",
            "-0.0",
            "18446744073709551616",
            "-9223372036854775809",
            "tru",
            "nul",
            "\u{7f}",
            "\u{1}",
            "é",
        ]),
    )
        .prop_map(|(text, at, cut, insert)| {
            let chars: Vec<char> = text.chars().collect();
            let at = at.index(chars.len() + 1);
            let end = (at + cut).min(chars.len());
            chars[..at]
                .iter()
                .chain(insert.chars().collect::<Vec<_>>().iter())
                .chain(&chars[end..])
                .collect()
        })
}

/// The plan of every path the rules name, and two objects above them.
fn paths_plan() -> FieldPlan {
    let mut plan = FieldPlan::default();
    for path in PATHS {
        plan.add(&path.join("."));
    }
    plan.add("name");
    plan.add("location.street");
    plan
}

/// [`paths_plan`] and the [`Shape`] learnt from every case so far, shared by all cases (as a
/// topology's source reads record after record).
fn shared_plan() -> std::sync::MutexGuard<'static, (FieldPlan, Shape)> {
    static SHARED: std::sync::OnceLock<std::sync::Mutex<(FieldPlan, Shape)>> =
        std::sync::OnceLock::new();
    SHARED
        .get_or_init(|| std::sync::Mutex::new((paths_plan(), Shape::default())))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn reads_alike(text: &str) -> Result<(), TestCaseError> {
    let plan = paths_plan();
    let (mut fast, mut slow) = (Parsed::default(), Parsed::default());
    let a = plan.read(text, &mut fast).map_err(|e| e.to_string());
    let b = plan
        .read_with_serde(text, &mut slow)
        .map_err(|e| e.to_string());
    prop_assert_eq!(&a, &b, "{:?}", text);
    if a.is_ok() {
        prop_assert_eq!(&fast, &slow, "{:?}", text);
    }
    // and with the shape learnt from the cases before, as text and as bytes
    let mut shared = shared_plan();
    let (plan, shape) = &mut *shared;
    let mut shaped = Parsed::default();
    let c = plan
        .read_shaped(text, &mut shaped, shape)
        .map_err(|e| e.to_string());
    prop_assert_eq!(&c, &b, "{:?}", text);
    if c.is_ok() {
        prop_assert_eq!(&shaped, &slow, "{:?}", text);
    }
    let mut as_bytes = Parsed::default();
    let d = plan.read_value_shaped(text.as_bytes().to_vec(), &mut as_bytes, shape);
    prop_assert_eq!(c.is_ok(), d.is_ok(), "{:?}", text);
    if d.is_ok() {
        prop_assert_eq!(&as_bytes.text, text);
        as_bytes.text = String::new();
        prop_assert_eq!(&as_bytes, &slow, "{:?}", text);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_fast_reader_reads_as_serde_json(text in json_text()) {
        reads_alike(&text)?;
    }

    #[test]
    fn the_fast_reader_fails_as_serde_json(text in damaged()) {
        reads_alike(&text)?;
    }

    #[test]
    fn any_bytes_get_exactly_one_fate(value in prop::collection::vec(any::<u8>(), 0..2048)) {
        one_fate(&mut pipeline(), &value)?;
    }

    #[test]
    fn any_user_shaped_json_gets_exactly_one_fate(user in user()) {
        one_fate(&mut pipeline(), user.to_string().as_bytes())?;
    }

    #[test]
    fn any_edit_of_users_toml_loads_or_is_reported_in_the_file(edits in edits()) {
        let text = apply(users_text(), &edits);
        let lines = text.lines().count().max(1);
        match weir_topology::load_str("users.toml", &text, &weir::registry::registry(), &|_| None) {
            Ok(t) => {
                // what loads also builds
                for sub in sub_topologies(&t) {
                    let _ = Pipeline::build(&t, &sub, None);
                }
            }
            Err(LoadError::Invalid(diags)) => {
                prop_assert!(!diags.is_empty());
                for d in &diags {
                    prop_assert!(d.line >= 1 && d.line <= lines + 1, "{d} of {lines} lines");
                }
            }
            Err(e) => prop_assert!(false, "{e}"),
        }
    }
}
