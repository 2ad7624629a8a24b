//! The PostgreSQL sink as a service: its loop (exactly once into the table, the ledger and
//! the windows) and its admin API (windows, seal, audit, readiness) for the HTTP server. Every
//! PostgreSQL sink of a topology gets both.

use std::sync::Arc;

use anyhow::Context;
use weir_sinks::dead_letter::DeadLetterConfig;
use weir_sinks::postgres::admin::{TopicSource, WindowSpec};
use weir_sinks::postgres::metrics::SinkMetrics;
use weir_sinks::postgres::sink::{self as postgres_sink, Health, SinkSettings};
use weir_sinks::postgres::upstream::UpstreamSpec;
use weir_sinks::postgres::PostgresSinkConfig;
use weir_topology::graph::sub_topologies;
use weir_topology::{Node, NodeKind, Topology};

use super::{input_topic, StartContext, Started};

pub fn start(ctx: &StartContext) -> anyhow::Result<Started> {
    let cfg = ctx
        .node
        .config::<PostgresSinkConfig>()
        .context("a PostgreSQL sink's config")?;
    let settings = settings(ctx.topology, ctx.node, cfg, ctx.instance)?;
    let metrics = SinkMetrics::register(&ctx.metrics.registry, &ctx.node.name)
        .context("registering the sink's metrics")?;
    let health = Arc::new(Health::default());
    let admin = crate::admin::SinkAdmin::new(
        &settings.database_url,
        WindowSpec {
            sink_id: settings.sink_id(),
            window_ms: cfg.window.as_millis() as i64,
            grace_ms: cfg.grace.as_millis() as i64,
        },
        cfg.clone(),
        TopicSource {
            kafka: settings.kafka.clone(),
            topic: settings.topic.clone(),
            slack: std::time::Duration::from_secs(3600),
            upstream: settings.upstream.clone(),
        },
        vec![health.clone()],
    )?
    .count_seals(metrics.windows_sealed.clone())
    .count_audits(metrics.audits.clone(), metrics.unsealed_window_age.clone());
    let shutdown = ctx.shutdown.clone();
    let (registry, registered) = (ctx.metrics.registry.clone(), metrics.clone());
    let thread = std::thread::Builder::new()
        .name(format!("weir-pg-{}", ctx.node.name))
        .spawn(move || {
            postgres_sink::run(settings, metrics, health, shutdown)
                .map(|summary| format!("{summary:?}"))
                .map_err(|e| e.to_string())
        })?;
    Ok(Started {
        thread,
        critical: true,
        admin: Some(Arc::new(admin)),
        live: None,
        on_restart: Some(Box::new(move || registered.unregister(&registry))),
    })
}

/// Everything a PostgreSQL sink of the topology needs to run.
pub fn settings(
    t: &Topology,
    node: &Node,
    cfg: &PostgresSinkConfig,
    instance: &str,
) -> anyhow::Result<SinkSettings> {
    let database_url = match &cfg.url {
        Some(u) => u.clone(),
        None => std::env::var("WEIR_DATABASE_URL").map_err(|_| {
            anyhow::anyhow!(
                "sink \"{}\" needs a PostgreSQL URL: set WEIR_DATABASE_URL (deploy/dev exports it) or the sink's url",
                node.name
            )
        })?,
    };
    let topic = input_topic(t, node)?;
    Ok(SinkSettings {
        application_id: t.settings.application_id.clone(),
        node: node.name.clone(),
        instance: instance.to_owned(),
        config: cfg.clone(),
        upstream: upstream_of(t, &topic),
        topic,
        kafka: t.settings.kafka.clone(),
        database_url,
    })
}

/// The application upstream of `topic` in this topology: the sub-topology whose topic sink
/// writes it, read by the application's consumer group from its sources' topics.
pub fn upstream_of(t: &Topology, topic: &str) -> Option<UpstreamSpec> {
    let writer = t
        .nodes
        .iter()
        .find(|n| n.kind == NodeKind::Sink && n.config.topic() == Some(topic))?;
    let sub = sub_topologies(t)
        .into_iter()
        .find(|s| s.nodes.contains(&writer.name))?;
    let dead_letter_topics = sub
        .nodes
        .iter()
        .filter_map(|n| t.node(n)?.config::<DeadLetterConfig>())
        .map(|c| c.topic.clone())
        .collect();
    (!sub.source_topics.is_empty()).then(|| UpstreamSpec {
        group: t.settings.application_id.clone(),
        topics: sub.source_topics,
        dead_letter_topics,
    })
}
