//! The websocket sink as a service: it reads the clean topic from its end and publishes each
//! greeting to the live page's feed, which the HTTP server's `/ws` serves.

use anyhow::Context;
use weir_sinks::websocket::WebsocketSinkConfig;

use super::{input_topic, StartContext, Started};

pub fn start(ctx: &StartContext) -> anyhow::Result<Started> {
    let cfg = ctx
        .node
        .config::<WebsocketSinkConfig>()
        .context("a websocket sink's config")?;
    let feed = ctx.live_feed.clone().unwrap_or_else(|| {
        weir_web::live::Live::new(
            cfg.history,
            &ctx.metrics.registry,
            ctx.live.allowed_origins.clone(),
            ctx.live.max_clients,
            ctx.live.idle_timeout,
        )
    });
    let topic = input_topic(ctx.topology, ctx.node)?;
    let kafka = ctx.topology.settings.kafka.clone();
    let template = cfg.message.clone();
    let shutdown = ctx.shutdown.clone();
    let publish_to = feed.clone();
    let thread = std::thread::Builder::new()
        .name(format!("weir-ws-{}", ctx.node.name))
        .spawn(move || {
            weir_sinks::websocket::run(
                &kafka,
                &topic,
                &template,
                &|m| publish_to.publish(m),
                shutdown,
            )
            .map(|()| "stopped".to_owned())
            .map_err(|e| {
                tracing::error!(error = %e, "the websocket sink stopped");
                e.to_string()
            })
        })?;
    Ok(Started {
        thread,
        // a view: the page reconnects, nothing is lost
        critical: false,
        admin: None,
        live: Some(feed),
        on_restart: None,
    })
}
