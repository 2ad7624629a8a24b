//! `weir process FILE < raw.jsonl`: runs the processor chain offline, one raw record value
//! per input line, and prints one JSON object per line: `output` (the sink reached),
//! `reasons` (dead letters) and `record` (clean records). Same code path as `weir run`.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{json, Value};
use weir_topology::pipeline::{Fate, Pipeline};
use weir_topology::{Body, Origin};

/// The JSON line that says where one record ended up.
pub fn fate_json(fates: &[Fate]) -> Value {
    let mut out = serde_json::Map::new();
    let sinks: Vec<&str> = fates.iter().map(|f| &*f.sink).collect();
    out.insert("output".into(), json!(sinks.first().copied()));
    if sinks.len() > 1 {
        out.insert("outputs".into(), json!(sinks));
    }
    for f in fates {
        match &f.envelope.body {
            Body::Failed(failure) => {
                out.insert("reasons".into(), json!(failure.reasons));
                out.insert("message".into(), json!(failure.message));
            }
            Body::Clean(row) => {
                out.insert(
                    "record".into(),
                    serde_json::from_slice(&row.json).unwrap_or(Value::Null),
                );
            }
            Body::Json(p) | Body::Valid(p) => {
                let value = serde_json::from_str(&p.text).unwrap_or(Value::Null);
                out.insert("record".into(), value);
            }
            Body::Raw => {}
        }
    }
    Value::Object(out)
}

pub fn run(path: &Path) -> anyhow::Result<()> {
    let t = super::load(path)?;
    let sub = super::processing_subtopology(&t)?;
    let mut pipeline = Pipeline::build(&t, &sub, None)?;
    let topic = pipeline.topics().into_iter().next().unwrap_or_default();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut line = Vec::new();
    let mut fates = Vec::new();
    let mut offset = 0i64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.ends_with(b"\n") {
            line.pop();
            if line.ends_with(b"\r") {
                line.pop();
            }
        }
        fates.clear();
        pipeline.process(
            Origin {
                topic: topic.clone(),
                partition: 0,
                offset,
                timestamp: None,
                key: None,
                value: Some(line.clone()),
                ..Origin::default()
            },
            &mut fates,
        );
        offset += 1;
        serde_json::to_writer(&mut out, &fate_json(&fates))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
