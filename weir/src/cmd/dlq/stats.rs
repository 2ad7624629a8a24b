//! `weir dlq stats`: dead letters counted by reason, node, topic and hour.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use weir_sinks::dead_letter::reader::{escape, Reader, Start};

use super::{matches, target, Common, STALL};

/// Options of `weir dlq stats`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  weir dlq stats --since 24h")]
pub struct StatsArgs {
    #[command(flatten)]
    pub common: Common,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

pub fn stats(args: &StatsArgs) -> anyhow::Result<()> {
    let target = target(&args.common)?;
    let mut reader = Reader::open(&target.kafka, &target.topics, Start::Beginning)
        .with_context(|| format!("reading {}", target.topics.join(", ")))?;
    let mut total = 0u64;
    let mut by_reason: HashMap<String, u64> = HashMap::new();
    let mut by_node: HashMap<String, u64> = HashMap::new();
    let mut by_hour: BTreeMap<String, u64> = BTreeMap::new();
    reader
        .read_to_end(STALL, |d| {
            if !matches(&d, None, args.common.since) {
                return;
            }
            total += 1;
            for r in &d.reasons {
                *by_reason.entry(r.clone()).or_default() += 1;
            }
            *by_node.entry(d.node.clone()).or_default() += 1;
            let hour = d
                .failed_at
                .and_then(chrono::DateTime::from_timestamp_millis)
                .map(|t| t.format("%Y-%m-%d %H:00").to_string())
                .unwrap_or_else(|| "?".into());
            *by_hour.entry(hour).or_default() += 1;
        })
        .context("reading the dead-letter topic")?;
    let sorted = |m: HashMap<String, u64>| {
        let mut v: Vec<(String, u64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    };
    let (by_reason, by_node) = (sorted(by_reason), sorted(by_node));
    if args.json {
        let obj = |v: &[(String, u64)]| {
            serde_json::Value::Object(
                v.iter()
                    .map(|(k, n)| (k.clone(), serde_json::json!(n)))
                    .collect(),
            )
        };
        let hours: Vec<(String, u64)> = by_hour.into_iter().collect();
        println!(
            "{}",
            serde_json::json!({
                "topics": target.topics,
                "since": args.common.since,
                "total": total,
                "by_reason": obj(&by_reason),
                "by_node": obj(&by_node),
                "by_hour": obj(&hours),
            })
        );
        return Ok(());
    }
    println!("dead letters: {total} in {}", target.topics.join(", "));
    let section = |title: &str, rows: &mut dyn Iterator<Item = (&String, &u64)>| {
        println!("\n{title:<44} {:>10}", "COUNT");
        for (k, n) in rows {
            println!("{:<44} {n:>10}", escape(k.as_bytes(), 44));
        }
    };
    section("BY REASON", &mut by_reason.iter().map(|(k, n)| (k, n)));
    section("BY NODE", &mut by_node.iter().map(|(k, n)| (k, n)));
    section("BY HOUR (UTC)", &mut by_hour.iter());
    Ok(())
}
