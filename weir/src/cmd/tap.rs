//! `weir tap NODE[.OUTPUT]`: the records on one edge of a running `weir run`, as they pass
//! (like `vector tap`): a rate-limited sample through its HTTP API (`/api/tap`, admin token
//! from `WEIR_ADMIN_TOKEN`), printed one line each — time, edge, source coordinates, reasons
//! for a dead letter, and the value cut to a line — or as the JSON lines the server sends.

use std::io::{BufRead, Write};

use anyhow::Context;
use serde_json::Value;

use super::Exit;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Options of `weir tap`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  weir tap validate.invalid            dead letters as validate makes them\n  weir tap clean --rate 2 --limit 10   a few clean rows\n  weir tap raw --format json | jq .value"
)]
pub struct TapArgs {
    /// The edge: a node (its default output), or NODE.OUTPUT (validate.invalid,
    /// raw.undecodable).
    pub edge: String,
    /// The `weir run` whose records to show.
    #[arg(long, env = "WEIR_URL", default_value = "http://127.0.0.1:5000")]
    pub url: String,
    /// At most this many records a second (1 to 100); the rest pass unseen.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rate: u32,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<u64>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

pub fn run(args: &TapArgs) -> anyhow::Result<()> {
    let token = std::env::var("WEIR_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            eprintln!(
                "weir tap: set WEIR_ADMIN_TOKEN: a tap shows record values, so it is an admin call"
            );
            Exit(2)
        })?;
    let url = format!(
        "{}/api/tap?edge={}&rate={}",
        args.url.trim_end_matches('/'),
        urlencode(&args.edge),
        args.rate
    );
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {token}"))
        .call()
        .with_context(|| format!("connecting to {}", args.url))?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        eprintln!("weir tap: {status}: {message}");
        return Err(Exit(1).into());
    }
    let reader = std::io::BufReader::new(response.into_body().into_reader());
    let mut out = std::io::stdout().lock();
    let mut shown = 0u64;
    for line in reader.lines() {
        let line = line.context("reading the tap")?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if v.get("tap").is_some() {
            eprintln!(
                "tapping {} on {} (at most {}/s); Ctrl-C stops",
                v["tap"].as_str().unwrap_or_default(),
                args.url,
                v["rate_per_second"]
            );
            continue;
        }
        let text = match args.format {
            Format::Json => line,
            Format::Text => one_line(&v),
        };
        if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
            // the reader went away (`| head`)
            return Ok(());
        }
        shown += 1;
        if args.limit.is_some_and(|l| shown >= l) {
            return Ok(());
        }
    }
    eprintln!("weir tap: the server ended the tap (weir run stopped?)");
    Err(Exit(1).into())
}

/// A sample in one line: time, edge, source, reasons, value.
fn one_line(v: &Value) -> String {
    let at = v["at"]
        .as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.format("%H:%M:%S%.3f").to_string())
        .unwrap_or_default();
    let s = &v["source"];
    let reasons = v["reasons"]
        .as_array()
        .map(|r| {
            let list: Vec<&str> = r.iter().filter_map(Value::as_str).collect();
            format!(" [{}]", list.join(", "))
        })
        .unwrap_or_default();
    let value: String = v["value"]
        .as_str()
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(160)
        .collect();
    format!(
        "{at} {} {}/{}@{}{reasons} {value}",
        v["edge"].as_str().unwrap_or_default(),
        s["topic"].as_str().unwrap_or_default(),
        s["partition"],
        s["offset"],
    )
}

/// Percent-encodes what a query value may not hold as it is.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_one_line_with_its_reasons_and_no_control_characters() {
        let v = serde_json::json!({
            "edge": "validate.invalid", "at": 1_764_000_000_123i64,
            "source": {"topic": "raw", "partition": 1, "offset": 42},
            "reasons": ["email.invalid", "field.missing:name.first"],
            "value": "{\"email\":\"nope\"}\n\u{1b}[31m"
        });
        let line = one_line(&v);
        assert!(line.ends_with(
            " validate.invalid raw/1@42 [email.invalid, field.missing:name.first] {\"email\":\"nope\"}  [31m"
        ), "{line}");
        assert!(!line.contains('\n') && !line.contains('\u{1b}'));
        assert_eq!(urlencode("a b.c&d"), "a%20b.c%26d");
    }
}
