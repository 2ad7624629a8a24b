//! One dead-letter topic replayed on the engine's transaction loop, from its beginning to
//! its end when the replay started: the ledger and the replayed records in each transaction.

use std::time::Duration;

use anyhow::Context;
use rdkafka::consumer::BaseConsumer;
use weir_sinks::dead_letter::reader::Extent;
use weir_sinks::dead_letter::replay::{ReplayJob, ReplayRules, Tally};
use weir_topology::engine::{self, EngineConfig, InputMode, PartitionRange};

use super::{Target, STALL};

/// Replays one dead-letter topic from its beginning to today's end on the engine's loop,
/// `batch` records a transaction.
pub(super) fn replay_topic(
    batch: usize,
    target: &Target,
    topic: &str,
    rules: &ReplayRules,
    ledger: &str,
    shutdown: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    before: Tally,
) -> anyhow::Result<Tally> {
    let probe: BaseConsumer = target
        .kafka
        .client("dlq-replay-probe", |_| {})
        .create()
        .context("creating a Kafka client")?;
    let extent = Extent::of(&probe, &[topic.to_owned()])
        .with_context(|| format!("reading the partitions of {topic}"))?;
    let partitions: Vec<PartitionRange> = extent
        .partitions
        .iter()
        .map(|(topic, p, low, high)| PartitionRange {
            topic: topic.clone(),
            partition: *p,
            start: *low,
            end: *high,
        })
        .collect();
    let total: i64 = partitions.iter().map(|r| r.end - r.start).sum();
    let app = &target.application_id;
    let config = EngineConfig {
        application_id: app.clone(),
        instance: "replay".into(),
        subtopology: 0,
        kafka: target.kafka.clone(),
        commit_interval: Duration::from_secs(1),
        commit_max_records: batch.max(1),
        transaction_timeout: Duration::from_secs(10),
        // an open transaction of a crashed writer holds back the end
        stop_when_idle: Some(STALL),
        rewind_limit: Duration::from_secs(60),
        input: InputMode::Range {
            // one per application: a second replay fences the first
            transactional_id: format!("{app}-dlq-replay"),
            group_id: format!("{app}.dlq-replay"),
            partitions,
        },
    };
    let mut job = ReplayJob::new(rules.clone(), ledger, target.kafka.clone());
    let progress = std::sync::Arc::new(std::sync::Mutex::new(super::progress::Progress::new(
        total.max(0) as u64,
    )));
    let shown = progress.clone();
    job.on_progress = Some(Box::new(move |t: &Tally| {
        shown.lock().unwrap_or_else(|e| e.into_inner()).show(t)
    }));
    let result = engine::run(
        &mut job,
        Vec::new(),
        config,
        weir_topology::metrics::Metrics::new(),
        shutdown.clone(),
    );
    progress.lock().unwrap_or_else(|e| e.into_inner()).finish();
    result.with_context(|| format!("replaying {topic}"))?;
    let mut tally = before;
    tally.add(&job.tally);
    Ok(tally)
}
