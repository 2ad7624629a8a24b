//! `weir run FILE`: runs the topology against Kafka. Sub-topology 0 (source → processors →
//! topic sinks) runs exactly once in Kafka transactions on a thread of its own; the sinks that
//! read its topics (PostgreSQL, websocket) each get a thread; the HTTP server serves metrics,
//! the admin API and the live page. `--subtopologies` runs only some. SIGINT or SIGTERM
//! commits the open transaction and stops.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context;
use weir_topology::engine::{self, EngineConfig, EngineError};
use weir_topology::graph::sub_topologies;
use weir_topology::metrics::Metrics;
use weir_topology::pipeline::Pipeline;
use weir_topology::Topology;

use super::{parse_duration, Exit};

/// Options of `weir run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The topology file.
    pub file: std::path::PathBuf,
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
}

fn allowed_hosts(args: &RunArgs) -> Vec<String> {
    if !args.allowed_hosts.is_empty() {
        return args.allowed_hosts.clone();
    }
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
    if !matches!(args.http_host.as_str(), "0.0.0.0" | "::" | "[::]") {
        hosts.push(args.http_host.clone());
    }
    hosts
}

fn allowed_origins(args: &RunArgs) -> Vec<String> {
    if !args.allowed_origins.is_empty() {
        return args.allowed_origins.clone();
    }
    let p = args.http_port;
    vec![
        format!("http://127.0.0.1:{p}"),
        format!("http://localhost:{p}"),
    ]
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let path: &Path = &args.file;
    let t = super::load_with(path, &args.kafka)?;
    let metrics = Metrics::new();
    let sub = super::processing_subtopology(&t)?;
    let shutdown = weir::signals::shutdown_flag()?;
    let mut services = Vec::new();
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
    let selected = |id: usize| args.subtopologies.is_empty() || args.subtopologies.contains(&id);
    // the sinks with a loop of their own (PostgreSQL, websocket), whatever their type
    let live_settings = weir::services::LiveSettings {
        allowed_origins: allowed_origins(args),
        max_clients: args.ws_max_clients,
    };
    for other in all.iter().filter(|s| s.id != sub.id && selected(s.id)) {
        for name in &other.nodes {
            let node = t.node(name).expect("node of the topology");
            let ctx = weir::services::StartContext {
                topology: &t,
                node,
                instance: &args.instance,
                metrics: &metrics,
                shutdown: shutdown.clone(),
                live: live_settings.clone(),
            };
            if let Some(started) = weir::services::start(&ctx)? {
                services.push((name.clone(), started));
            }
        }
    }
    let pipeline = Pipeline::build(&t, &sub, Some(&metrics)).context("building the pipeline")?;
    let mut helpers = Vec::new();
    for _ in 1..args.processing_threads {
        helpers.push(Pipeline::build(&t, &sub, Some(&metrics)).context("building the pipeline")?);
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
    let web = if args.no_http {
        None
    } else {
        let mut admins: Vec<(String, Arc<dyn weir_web::Admin>)> = services
            .iter()
            .filter_map(|(name, s)| Some((name.clone(), s.admin.clone()?)))
            .collect();
        if admins.is_empty() {
            admins.push((
                String::new(),
                Arc::new(weir::admin::NoSink {
                    kafka: weir::admin::KafkaProbe::new(&t.settings.kafka),
                }),
            ));
        }
        let state = weir_web::WebState {
            registry: metrics.registry.clone(),
            topology: serde_json::to_value(weir_topology::describe::describe(&t))?,
            admin_token: std::env::var("WEIR_ADMIN_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
            admins,
            live: services.iter().find_map(|(_, s)| s.live.clone()),
            dead_letters: dead_letter_feed(&t, shutdown.clone())?,
            allowed_hosts: allowed_hosts(args),
            ready_cache: Default::default(),
        };
        Some(start_web(
            state,
            &format!("{}:{}", args.http_host, args.http_port),
        )?)
    };
    let engine_thread = if selected(sub.id) {
        let shutdown = shutdown.clone();
        let metrics = metrics.clone();
        Some(
            std::thread::Builder::new()
                .name(format!("weir-eos-{}", sub.id))
                .spawn(move || {
                    let mut job = helpers
                        .into_iter()
                        .fold(engine::PipelineJob::new(pipeline), |job, p| {
                            job.with_helper(p)
                        });
                    let topics = job.topics();
                    engine::run(&mut job, topics, config, metrics, shutdown)
                })?,
        )
    } else {
        None
    };
    // wait for a signal, or for a loop to stop on its own (a fatal error)
    while !shutdown.load(Ordering::Relaxed)
        && !engine_thread.as_ref().is_some_and(|t| t.is_finished())
        && !services
            .iter()
            .any(|(_, s)| s.critical && s.thread.is_finished())
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    shutdown.store(true, Ordering::SeqCst);
    if let Some((handle, thread)) = web {
        futures::executor::block_on(handle.stop(true));
        let _ = thread.join();
    }
    let mut failed = false;
    for (name, service) in services {
        match service.thread.join() {
            Ok(Ok(summary)) => tracing::info!(sink = %name, %summary, "sink stopped"),
            Ok(Err(e)) => {
                failed |= service.critical;
                eprintln!("weir run: sink \"{name}\": {e}");
            }
            Err(_) => {
                failed |= service.critical;
                eprintln!("weir run: sink \"{name}\" panicked");
            }
        }
    }
    let Some(engine_thread) = engine_thread else {
        return if failed { Err(Exit(1).into()) } else { Ok(()) };
    };
    let result = engine_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))?;
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
            if failed {
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

/// Follows the topology's dead-letter topics for `/api/dlq` and the live page's panel,
/// starting with the last few of each partition.
fn dead_letter_feed(
    t: &Topology,
    shutdown: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<Option<Arc<weir_web::live::DeadLetters>>> {
    use weir_sinks::dead_letter::reader::{Reader, Start};
    let topics = super::dlq::dead_letter_topics(t);
    if topics.is_empty() {
        return Ok(None);
    }
    let feed = weir_web::live::DeadLetters::new(topics.clone(), 50);
    let fill = feed.clone();
    let kafka = t.settings.kafka.clone();
    std::thread::Builder::new()
        .name("weir-dlq-view".into())
        .spawn(move || {
            let mut reader = loop {
                match Reader::open(&kafka, &topics, Start::Last(20)) {
                    Ok(r) => break r,
                    Err(e) if !shutdown.load(Ordering::Relaxed) => {
                        tracing::warn!(error = %e, "the dead-letter panel cannot read its topics yet; retrying");
                        std::thread::sleep(std::time::Duration::from_secs(5));
                    }
                    Err(_) => return,
                }
            };
            while !shutdown.load(Ordering::Relaxed) {
                match reader.next(std::time::Duration::from_millis(200)) {
                    Some(Ok(d)) => {
                        let (reasons, failed_at) = (d.reasons.clone(), d.failed_at);
                        fill.push(&reasons, failed_at, move || d.to_json(false));
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "reading dead letters"),
                    None => {}
                }
            }
        })?;
    Ok(Some(feed))
}

/// Starts the HTTP server on a thread of its own (an actix system); fails at once when the
/// address cannot be bound.
fn start_web(
    state: weir_web::WebState,
    addr: &str,
) -> anyhow::Result<(actix_web::dev::ServerHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = addr.to_owned();
    let thread = std::thread::Builder::new().name("weir-http".into()).spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            match weir_web::serve(state, &addr) {
                Ok(server) => {
                    let _ = tx.send(Ok(server.handle()));
                    tracing::info!(%addr, "HTTP server listening: /metrics, /healthz, /readyz, /api/…");
                    let _ = server.await;
                }
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("the HTTP server cannot listen on {addr}: {e} (set WEIR_HTTP_PORT or --http-port, or --no-http)")));
                }
            }
        })
    })?;
    let handle = rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the HTTP server thread stopped"))??;
    Ok((handle, thread))
}
