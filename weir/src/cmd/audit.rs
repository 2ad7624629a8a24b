//! `weir audit FILE --window START`: compares the clean topic's committed records in a window
//! with the PostgreSQL sink's ledger, counts and rows; stores the verdict in `audits`, prints
//! it, and exits 1 on a mismatch.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, Utc};
use weir_sinks::postgres::admin::{audit, TopicSource, WindowSpec};
use weir_sinks::postgres::sink::sink_id;
use weir_sinks::postgres::writer::Table;
use weir_sinks::postgres::PostgresSinkConfig;

use super::{parse_duration, parse_time, Exit};

/// Options of `weir audit`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Example:\n  weir audit topology/users.toml --window 2026-11-25T10:05:00Z")]
pub struct AuditArgs {
    /// The topology file.
    pub file: PathBuf,
    #[command(flatten)]
    pub kafka: super::KafkaOptions,
    /// The window's start (RFC 3339, or milliseconds since 1970).
    #[arg(long, value_parser = parse_time)]
    pub window: DateTime<Utc>,
    /// The PostgreSQL sink to audit (default: the topology's only one).
    #[arg(long)]
    pub sink: Option<String>,
    /// An id to store with the verdict (Airflow's run id).
    #[arg(long)]
    pub run_id: Option<String>,
    /// How far before the window to start reading the clean topic.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub slack: std::time::Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &AuditArgs) -> anyhow::Result<()> {
    let t = super::load_with(&args.file, &args.kafka)?;
    let sinks: Vec<_> = t
        .nodes
        .iter()
        .filter(|n| n.config::<PostgresSinkConfig>().is_some())
        .filter(|n| args.sink.as_ref().is_none_or(|s| *s == n.name))
        .collect();
    let node = match sinks.as_slice() {
        [one] => *one,
        [] => anyhow::bail!(
            "no PostgreSQL sink{} in {}",
            args.sink
                .as_ref()
                .map(|s| format!(" named \"{s}\""))
                .unwrap_or_default(),
            args.file.display()
        ),
        _ => anyhow::bail!("several PostgreSQL sinks: choose one with --sink"),
    };
    let cfg = node.config::<PostgresSinkConfig>().expect("postgres sink");
    let settings = weir::services::postgres::settings(&t, node, cfg, "audit")?;
    let spec = WindowSpec {
        sink_id: sink_id(&t.settings.application_id, &node.name),
        window_ms: cfg.window.as_millis() as i64,
        grace_ms: cfg.grace.as_millis() as i64,
    };
    let source = TopicSource {
        kafka: settings.kafka.clone(),
        topic: settings.topic.clone(),
        slack: args.slack,
        upstream: settings.upstream.clone(),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = rt.block_on(async {
        let (client, connection) =
            tokio_postgres::connect(&settings.database_url, tokio_postgres::NoTls)
                .await
                .context("connecting to PostgreSQL (WEIR_DATABASE_URL)")?;
        tokio::spawn(connection);
        let table = Table::describe(&client, cfg)
            .await
            .context("reading the table")?;
        audit(
            &client,
            &spec,
            &table,
            &source,
            args.window,
            args.run_id.as_deref(),
        )
        .await
        .context("auditing")
    })?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "window {} .. {} ({}): {}",
            report.window_start.to_rfc3339(),
            report.window_end.to_rfc3339(),
            report.status,
            if report.passed { "PASSED" } else { "FAILED" }
        );
        println!(
            "  topic records {}, ledger {}, window {}, table rows {}, late {}/{}/{} (dead letter/dropped/accepted), rows checked {}",
            report.topic_records,
            report.ledger_records,
            report.window_records,
            report.table_rows,
            report.late_dead_letter,
            report.late_dropped,
            report.late_accepted,
            report.rows_checked
        );
        for p in &report.problems {
            println!("  - {p}");
        }
        println!("  stored as audit #{}", report.id.unwrap_or_default());
    }
    if report.passed {
        Ok(())
    } else {
        Err(Exit(1).into())
    }
}
