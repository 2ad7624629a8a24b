//! `weir run FILE`: runs the topology against Kafka. Sub-topology 0 (source → processors →
//! topic sinks) runs exactly once in Kafka transactions on a thread of its own; the sinks that
//! read its topics (PostgreSQL, websocket) each get a thread; the HTTP server serves metrics,
//! the admin API and the live page. `--subtopologies` runs only some. SIGINT or SIGTERM
//! commits the open transaction and stops. SIGHUP, or `--watch` and an edit, reloads the
//! topology file ([`reload`]); [`parts`] restarts what an edit touches.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use weir_topology::graph::sub_topologies;
use weir_topology::metrics::Metrics;

mod engine_job;
mod parts;
mod reload;

use engine_job::ended;
use parts::Parts;
use reload::{Outcome, Reloader};

use super::{parse_duration, Exit};

/// Options of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology file.
    pub file: std::path::PathBuf,
    /// Reload the file when it changes (SIGHUP always reloads it): an edit with errors is
    /// refused and the running topology carries on; an edit of processors is swapped in at
    /// the next transaction boundary; any other edit restarts only the sub-topologies it
    /// touches (`weir diff OLD NEW` says which).
    #[arg(long)]
    pub watch: bool,
    #[command(flatten)]
    pub kafka: super::KafkaOptions,
    /// This process's instance id: distinct per process of one application, stable across
    /// its restarts (part of the transactional id and the group membership).
    #[arg(long, env = "WEIR_INSTANCE", default_value = "0")]
    pub instance: String,
    /// How long the broker keeps a crashed instance's transaction open before aborting it.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub transaction_timeout: std::time::Duration,
    /// Stop after a last commit once no record has arrived for this long (batch runs and
    /// benchmarks); by default run until SIGINT/SIGTERM.
    #[arg(long, value_parser = parse_duration)]
    pub stop_when_idle: Option<std::time::Duration>,
    /// Where the HTTP server (metrics, health, admin API) listens.
    #[arg(long, env = "WEIR_HTTP_HOST", default_value = "127.0.0.1")]
    pub http_host: String,
    #[arg(long, env = "WEIR_HTTP_PORT", default_value_t = 5000)]
    pub http_port: u16,
    /// Run without the HTTP server (for extra processes that only add capacity).
    #[arg(long)]
    pub no_http: bool,
    /// Run only these sub-topologies (their numbers in `weir describe`), comma-separated, to
    /// scale one part out on its own processes; default: all of them.
    #[arg(long, value_delimiter = ',', value_name = "N,N")]
    pub subtopologies: Vec<usize>,
    /// Threads that process the records the exactly-once loop reads together: 1 processes
    /// on the loop's own thread. More pay where cores are free: on 2 cores shared with the
    /// broker, 2 threads were no faster and used 12% more CPU.
    #[arg(long, env = "WEIR_PROCESSING_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub processing_threads: u16,
    /// Origins allowed to open the websocket, comma-separated (default: this server's own).
    #[arg(long, env = "WEIR_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Host names requests may name (the `Host` header, without port), comma-separated; `*`
    /// for any (default: localhost, 127.0.0.1, [::1] and `--http-host`). Others get 421.
    #[arg(long, env = "WEIR_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Live page clients at most; more are refused with 503.
    #[arg(long, env = "WEIR_WS_MAX_CLIENTS", default_value_t = 10_000)]
    pub ws_max_clients: usize,
    /// A live page client silent this long (not even answering pings) is dropped.
    #[arg(long, env = "WEIR_WS_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub ws_idle_timeout: std::time::Duration,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let path: &Path = &args.file;
    let t = super::load_with(path, &args.kafka)?;
    let metrics = Metrics::new();
    let shutdown = weir::signals::shutdown_flag()?;
    let all = sub_topologies(&t);
    if let Some(bad) = args
        .subtopologies
        .iter()
        .find(|n| !all.iter().any(|s| s.id == **n))
    {
        eprintln!(
            "weir run: --subtopologies {bad}: {} has sub-topologies {} (see weir describe)",
            path.display(),
            all.iter()
                .map(|s| s.id.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Err(Exit(2).into());
    }
    let http = weir::http::HttpSettings {
        addr: format!("{}:{}", args.http_host, args.http_port),
        allowed_hosts: weir::http::allowed_hosts(&args.allowed_hosts, &args.http_host),
        admin_token: std::env::var("WEIR_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    };
    // the sinks with a loop of their own (PostgreSQL, websocket), whatever their type
    let live_settings = weir::services::LiveSettings {
        allowed_origins: weir::http::allowed_origins(&args.allowed_origins, args.http_port),
        max_clients: args.ws_max_clients,
        idle_timeout: args.ws_idle_timeout,
    };
    let status = Arc::new(RwLock::new(serde_json::Value::Null));
    let mut parts = Parts::new(args, t, metrics.clone(), live_settings, status.clone());
    parts.start_services(None, &mut HashMap::new())?;
    parts.start_engine()?;
    let mut reloader = Reloader::new(
        args,
        &parts.topology,
        parts.engine.as_ref().map(|e| e.swapper.clone()),
        &metrics,
        status,
        parts.taps.clone(),
    )?;
    parts.start_web(&http)?;
    if args.watch {
        tracing::info!(file = %path.display(), "watching the topology file: an edit is checked and applied while records flow");
    }
    // wait for a signal, or for a loop to stop on its own (a fatal error); reload on SIGHUP
    // or, with --watch, when the file changes
    while !shutdown.load(Ordering::Relaxed) && !parts.something_ended() {
        // a short tick: a reload is noticed and reported within a few tens of milliseconds
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Outcome::Replace { topology, restart } = reloader.tick(&parts.topology) {
            let Some(restart) = restart else {
                parts.topology = *topology;
                continue;
            };
            if let Some(e) = parts.restart(*topology, &restart, &http)? {
                let failed = parts.failed;
                parts.stop_all();
                return ended(Err(e), failed);
            }
            reloader.set_swapper(parts.engine.as_ref().map(|e| e.swapper.clone()));
            reloader.restarted(&parts.topology);
        }
    }
    shutdown.store(true, Ordering::SeqCst);
    let engine_thread = parts.stop_all();
    let failed = parts.failed;
    let Some(engine_thread) = engine_thread else {
        return if failed { Err(Exit(1).into()) } else { Ok(()) };
    };
    let result = engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
    ended(result, failed)
}
