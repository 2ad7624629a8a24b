//! `weir run FILE`: runs the topology against Kafka. Sub-topology 1 (source → processors →
//! topic sinks) runs exactly once in Kafka transactions on a thread of its own; SIGINT or
//! SIGTERM commits the open transaction and stops.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use weir_topology::engine::{self, EngineConfig, EngineError};
use weir_topology::graph::sub_topologies;
use weir_topology::metrics::Metrics;
use weir_topology::pipeline::Pipeline;

use super::Exit;

/// Options of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology file.
    pub file: std::path::PathBuf,
    /// This process's instance id: distinct per process of one application, stable across
    /// its restarts (part of the transactional id and the group membership).
    #[arg(long, env = "WEIR_INSTANCE", default_value = "0")]
    pub instance: String,
    /// How long the broker keeps a crashed instance's transaction open before aborting it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub transaction_timeout: weir_topology::Duration,
    /// Stop after a last commit once no record has arrived for this long (batch runs and
    /// benchmarks); by default run until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub stop_when_idle: Option<weir_topology::Duration>,
}

fn parse_duration(s: &str) -> Result<weir_topology::Duration, String> {
    weir_topology::Duration::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let path: &Path = &args.file;
    let t = super::load(path)?;
    let metrics = Metrics::new();
    let sub = super::processing_subtopology(&t)?;
    for other in sub_topologies(&t).iter().filter(|s| s.id != sub.id) {
        tracing::warn!(
            subtopology = other.id,
            nodes = ?other.nodes,
            "this sub-topology is not built yet (PostgreSQL and websocket sinks come in later issues); it does not run"
        );
    }
    let pipeline = Pipeline::build(&t, &sub, Some(&metrics)).context("building the pipeline")?;
    let s = &t.settings;
    let config = EngineConfig {
        application_id: s.application_id.clone(),
        instance: args.instance.clone(),
        subtopology: sub.id,
        bootstrap_servers: s.kafka.bootstrap_servers.clone(),
        options: s.kafka.options.clone(),
        commit_interval: s.commit_interval.as_std(),
        commit_max_records: s.commit_max_records,
        transaction_timeout: args.transaction_timeout.as_std(),
        stop_when_idle: args.stop_when_idle.map(|d| d.as_std()),
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let engine_thread = {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        std::thread::Builder::new()
            .name(format!("weir-eos-{}", sub.id))
            .spawn(move || {
                let r = engine::run(pipeline, config, metrics, shutdown);
                let _ = done_tx.send(());
                r
            })?
    };
    // signals on a small runtime; the engine's blocking calls stay on their own thread
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let engine_done = tokio::task::spawn_blocking(move || done_rx.recv());
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: committing and stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: committing and stopping"),
            _ = engine_done => {}
        }
        anyhow::Ok(())
    })?;
    shutdown.store(true, Ordering::Relaxed);
    let result = engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    rt.shutdown_background();
    match result {
        Ok(summary) => {
            tracing::info!(
                records = summary.records,
                committed = summary.committed_transactions,
                aborted = summary.aborted_transactions,
                records_per_second = summary.records_per_second().map(|r| r.round()),
                "stopped"
            );
            Ok(())
        }
        Err(e @ EngineError::Fenced { .. }) => {
            eprintln!("weir run: {e}");
            Err(Exit(3).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("the exactly-once loop stopped")),
    }
}
