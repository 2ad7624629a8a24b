//! The exactly-once loop of `weir run`: its job and settings, and the process's exit code
//! from how the loop ended.

use std::sync::Arc;

use anyhow::Context;
use weir_topology::engine::{self, EngineConfig, EngineError};
use weir_topology::metrics::Metrics;
use weir_topology::pipeline::Pipeline;
use weir_topology::tap::Taps;

use super::RunArgs;
use crate::cmd::Exit;

/// The exactly-once loop's job (the processing sub-topology's pipeline, and a copy a helper
/// thread) and its settings.
pub(super) fn engine_job(
    t: &weir_topology::Topology,
    sub: &weir_topology::graph::SubTopology,
    args: &RunArgs,
    metrics: &Metrics,
    taps: &Arc<Taps>,
) -> anyhow::Result<(engine::PipelineJob, EngineConfig)> {
    let build = || {
        Pipeline::build(t, sub, Some(metrics))
            .map(|p| p.with_taps(taps.clone()))
            .context("building the pipeline")
    };
    let pipeline = build()?;
    let mut helpers = Vec::new();
    for _ in 1..args.processing_threads {
        helpers.push(build()?);
    }
    let s = &t.settings;
    let config = EngineConfig {
        application_id: s.application_id.clone(),
        instance: args.instance.clone(),
        subtopology: sub.id,
        kafka: s.kafka.clone(),
        commit_interval: s.commit_interval.as_std(),
        commit_max_records: s.commit_max_records,
        transaction_timeout: args.transaction_timeout,
        stop_when_idle: args.stop_when_idle,
        rewind_limit: std::time::Duration::from_secs(60),
        input: engine::InputMode::Group,
    };
    let job = helpers
        .into_iter()
        .fold(engine::PipelineJob::new(pipeline), |job, p| {
            job.with_helper(p)
        });
    Ok((job, config))
}

/// The process's end from the engine's: exit 3 when fenced by another instance, 4 when a
/// record had no possible fate, 1 when a sink failed.
pub(super) fn ended(
    result: Result<engine::RunSummary, EngineError>,
    sinks_failed: bool,
) -> anyhow::Result<()> {
    match result {
        Ok(summary) => {
            tracing::info!(
                records = summary.records,
                committed = summary.committed_transactions,
                aborted = summary.aborted_transactions,
                records_per_second = summary.records_per_second().map(|r| r.round()),
                commit_seconds = (summary.commit_time.as_secs_f64() * 10.0).round() / 10.0,
                "stopped"
            );
            if sinks_failed {
                return Err(Exit(1).into());
            }
            Ok(())
        }
        Err(e @ EngineError::Fenced { .. }) => {
            eprintln!("weir run: {e}");
            Err(Exit(3).into())
        }
        Err(e @ EngineError::NoFate { .. }) => {
            eprintln!("weir run: {e}");
            Err(Exit(4).into())
        }
        Err(e) => Err(anyhow::Error::new(e).context("the exactly-once loop stopped")),
    }
}
