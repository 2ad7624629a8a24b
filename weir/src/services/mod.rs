//! Sinks with a loop of their own — they read a topic themselves (PostgreSQL, websocket) —
//! started by `weir run` whatever their type: each type says here how it starts and what the
//! HTTP server serves of it, so the command never names a sink's config type.

pub mod postgres;
pub mod websocket;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use weir_topology::metrics::Metrics;
use weir_topology::{Node, Topology};

/// What a service may use to start.
pub struct StartContext<'a> {
    pub topology: &'a Topology,
    pub node: &'a Node,
    /// This process's instance id (static group membership).
    pub instance: &'a str,
    pub metrics: &'a Metrics,
    /// Set when the process stops; the service's loop then returns.
    pub shutdown: Arc<AtomicBool>,
    /// Settings of the live page's websocket.
    pub live: LiveSettings,
    /// The live page's feed of the same sink before a reload restarted it: kept, so the
    /// page's clients stay connected.
    pub live_feed: Option<Arc<weir_web::live::Live>>,
}

/// The live page's websocket limits (from `weir run`'s options).
#[derive(Debug, Clone)]
pub struct LiveSettings {
    pub allowed_origins: Vec<String>,
    pub max_clients: usize,
    pub idle_timeout: std::time::Duration,
}

/// A started service: its thread, and what the HTTP server serves of it.
pub struct Started {
    /// Its loop; `Err` says why it stopped.
    pub thread: std::thread::JoinHandle<Result<String, String>>,
    /// True when its failure must fail the process (it writes data); false for a view.
    pub critical: bool,
    /// The admin API (windows, seal, audit, readiness) of a sink that has one.
    pub admin: Option<Arc<dyn weir_web::Admin>>,
    /// The greeting feed of a websocket sink.
    pub live: Option<Arc<weir_web::live::Live>>,
    /// Undoes what starting did beyond the thread (its metrics), once the thread has
    /// stopped, before the service starts again after a reload.
    pub on_restart: Option<Box<dyn FnOnce() + Send>>,
}

/// How one component type starts.
pub struct ServiceType {
    /// The component's `type`.
    pub name: &'static str,
    pub start: fn(&StartContext) -> anyhow::Result<Started>,
}

/// Every service type the binary knows.
pub fn types() -> [ServiceType; 2] {
    [
        ServiceType {
            name: "postgres",
            start: postgres::start,
        },
        ServiceType {
            name: "websocket",
            start: websocket::start,
        },
    ]
}

/// Starts `ctx.node` when its type has a loop of its own; `None` for any other node.
pub fn start(ctx: &StartContext) -> anyhow::Result<Option<Started>> {
    types()
        .iter()
        .find(|t| t.name == ctx.node.type_name)
        .map(|t| (t.start)(ctx))
        .transpose()
}

/// Waits for every service to stop (after shutdown); true when one that writes data failed.
/// Each one's end is reported.
pub fn join(services: Vec<(String, Started)>) -> bool {
    let mut failed = false;
    for (name, service) in services {
        failed |= join_one(&name, service.thread) && service.critical;
    }
    failed
}

/// Waits for one service's thread and reports its end; true when it failed.
pub fn join_one(name: &str, thread: std::thread::JoinHandle<Result<String, String>>) -> bool {
    match thread.join() {
        Ok(Ok(summary)) => {
            tracing::info!(sink = %name, %summary, "sink stopped");
            false
        }
        Ok(Err(e)) => {
            eprintln!("weir run: sink \"{name}\": {e}");
            true
        }
        Err(_) => {
            eprintln!("weir run: sink \"{name}\" panicked");
            true
        }
    }
}

/// The topic a sink reads: the topic its input (a topic sink) writes.
pub fn input_topic(t: &Topology, node: &Node) -> anyhow::Result<String> {
    node.inputs
        .iter()
        .filter_map(|i| t.node(&i.node))
        .find_map(|up| up.config.topic().map(str::to_owned))
        .ok_or_else(|| {
            anyhow::anyhow!(
                "sink \"{}\" reads no topic: its input must be a kafka sink",
                node.name
            )
        })
}
