//! `weir test FILE`: runs the `[[tests]]` of a topology file offline, like `vector test`:
//! each input goes through the same pipeline as `weir run`, and its fate is compared with
//! the expected sink, reasons and fields.

use std::path::Path;

use serde_json::Value;
use weir_topology::config::TestCase;
use weir_topology::pipeline::Pipeline;
use weir_topology::Origin;

use super::process::fate_json;
use super::Exit;

/// What is wrong with one case's outcome, if anything.
fn failures(case: &TestCase, got: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let output = got
        .get("output")
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    if output != case.expect_output {
        out.push(format!(
            "output: expected \"{}\", got \"{output}\"",
            case.expect_output
        ));
    }
    if let Some(expected) = &case.expect_reasons {
        let reasons: Vec<String> = got
            .get("reasons")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if &reasons != expected {
            out.push(format!("reasons: expected {expected:?}, got {reasons:?}"));
        }
    }
    if let Some(fields) = &case.expect_fields {
        let record = got.get("record");
        for (k, want) in fields {
            let have = record.and_then(|r| r.get(k)).unwrap_or(&Value::Null);
            if have != want {
                out.push(format!("field {k}: expected {want}, got {have}"));
            }
        }
    }
    out
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    let t = super::load(path)?;
    if t.tests.is_empty() {
        eprintln!("{}: no [[tests]] to run", path.display());
        return Err(Exit(1).into());
    }
    let sub = super::processing_subtopology(&t)?;
    let mut pipeline = Pipeline::build(&t, &sub, None)?;
    let topic = pipeline.topics().into_iter().next().unwrap_or_default();
    let (mut passed, mut failed) = (0, 0);
    let mut fates = Vec::new();
    for (i, case) in t.tests.iter().enumerate() {
        let value = case.input_bytes().map_err(anyhow::Error::msg)?;
        fates.clear();
        pipeline.process(
            Origin {
                topic: topic.clone(),
                partition: 0,
                offset: i as i64,
                value: Some(value),
                ..Origin::default()
            },
            &mut fates,
        );
        let got = fate_json(&fates);
        let problems = failures(case, &got);
        if problems.is_empty() {
            passed += 1;
            println!("test {} ... ok", case.name);
        } else {
            failed += 1;
            println!("test {} ... FAILED", case.name);
            for p in problems {
                println!("    {p}");
            }
        }
    }
    println!("\n{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(Exit(1).into());
    }
    Ok(())
}
