//! The HTTP server of `weir run`: its state made from what it serves of the running services
//! (each PostgreSQL sink's admin API, the websocket sink's live feed) and the dead-letter
//! panel's reader, served on a thread of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use weir_topology::metrics::Metrics;
use weir_topology::Topology;

/// Where and for whom the server answers.
pub struct HttpSettings {
    /// `host:port` to listen on.
    pub addr: String,
    /// Host names a request may name (`*`: any).
    pub allowed_hosts: Vec<String>,
    /// The admin token; `None` refuses every admin call.
    pub admin_token: Option<String>,
}

/// The host names requests may name: `given`, or by default the loopback names and the
/// host the server listens on (unless that is every address).
pub fn allowed_hosts(given: &[String], listen_host: &str) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut hosts: Vec<String> = ["localhost", "127.0.0.1", "[::1]"].map(String::from).into();
    if !matches!(listen_host, "0.0.0.0" | "::" | "[::]") {
        hosts.push(listen_host.to_owned());
    }
    hosts
}

/// The origins that may open the live page's websocket: `given`, or by default the
/// server's own.
pub fn allowed_origins(given: &[String], port: u16) -> Vec<String> {
    if !given.is_empty() {
        return given.to_vec();
    }
    vec![
        format!("http://127.0.0.1:{port}"),
        format!("http://localhost:{port}"),
    ]
}

/// What the server serves of the running services: each PostgreSQL sink's admin API (by
/// node name) and the live page's feed.
#[derive(Clone, Default)]
pub struct Served {
    pub admins: Vec<(String, Arc<dyn weir_web::Admin>)>,
    pub live: Option<Arc<weir_web::live::Live>>,
    /// The processing loop's taps, when this process runs it.
    pub taps: Option<Arc<weir_topology::tap::Taps>>,
}

/// Starts the server; fails at once when the address cannot be bound. `topology` is what
/// `/api/topology` answers (a reload rewrites it).
pub fn start(
    t: &Topology,
    metrics: &Metrics,
    served: Served,
    topology: Arc<std::sync::RwLock<serde_json::Value>>,
    settings: &HttpSettings,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<(actix_web::dev::ServerHandle, std::thread::JoinHandle<()>)> {
    let mut admins = served.admins;
    if admins.is_empty() {
        admins.push((
            String::new(),
            Arc::new(crate::admin::NoSink {
                kafka: crate::admin::KafkaProbe::new(&t.settings.kafka),
            }),
        ));
    }
    let state = weir_web::WebState {
        registry: metrics.registry.clone(),
        topology,
        admin_token: settings.admin_token.clone(),
        admins,
        live: served.live,
        dead_letters: dead_letter_feed(t, shutdown)?,
        allowed_hosts: settings.allowed_hosts.clone(),
        ready_cache: Default::default(),
        history: Default::default(),
        taps: served.taps,
    };
    serve(state, &settings.addr)
}

/// Follows the topology's dead-letter topics for `/api/dlq` and the live page's panel,
/// starting with the last few of each partition.
fn dead_letter_feed(
    t: &Topology,
    shutdown: Arc<AtomicBool>,
) -> anyhow::Result<Option<Arc<weir_web::live::DeadLetters>>> {
    use weir_sinks::dead_letter::reader::{Reader, Start};
    let topics = crate::dead_letters::topics(t);
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
fn serve(
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
