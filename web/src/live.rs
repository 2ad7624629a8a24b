//! The live view: `/` (the page, served by Weir itself, no CDN) and `/ws` (greetings as JSON
//! messages), plus `/api/vitals` for the page's vital signs and `/api/dlq/stats` and
//! `/api/dlq` (admin token) for its dead-letter panel.
//!
//! Every client has its own task reading a bounded broadcast queue: a slow or dead client
//! never slows the others or the pipeline; a client that falls behind skips what it missed
//! and is told how many (`{"type":"skipped","count":n}`). New clients get the last greetings
//! first. The websocket checks `Origin` against an allow-list, caps its clients, pings each
//! and drops one that stays silent.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use futures::StreamExt;
use prometheus::IntGauge;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use crate::WebState;

/// The greeting feed shared by the websocket sink and every client.
pub struct Live {
    /// Messages as shared bytes: sending one to a client copies nothing.
    tx: broadcast::Sender<ByteString>,
    history: Mutex<VecDeque<ByteString>>,
    history_len: usize,
    clients: IntGauge,
    /// Origins allowed to open `/ws` (a request without `Origin` is not a browser's and is allowed).
    pub allowed_origins: Vec<String>,
    /// Clients at most; one more is refused with 503 and `Retry-After`.
    pub max_clients: usize,
    /// A client that has sent nothing (pongs included) for this long is dropped; each is
    /// pinged three times as often.
    pub idle_timeout: std::time::Duration,
}

/// Messages a client may fall behind by before it skips. The sink publishes a Kafka fetch at
/// a time, so bursts of hundreds are normal; messages are shared, so a slot costs a pointer.
const QUEUE: usize = 4096;
/// The largest message a client may send (it has nothing to say but pings).
const MAX_FRAME: usize = 4 * 1024;

impl Live {
    pub fn new(
        history_len: usize,
        registry: &prometheus::Registry,
        allowed_origins: Vec<String>,
        max_clients: usize,
        idle_timeout: std::time::Duration,
    ) -> Arc<Self> {
        let clients = IntGauge::new(
            "websocket_clients",
            "Websocket clients connected to the live page",
        )
        .expect("gauge");
        let _ = registry.register(Box::new(clients.clone()));
        let (tx, _) = broadcast::channel(QUEUE);
        Arc::new(Self {
            tx,
            history: Mutex::new(VecDeque::with_capacity(history_len)),
            history_len,
            clients,
            allowed_origins,
            max_clients,
            idle_timeout,
        })
    }

    /// Sends a JSON message to every client; never blocks.
    pub fn publish(&self, message: String) {
        let m = ByteString::from(message);
        {
            let mut h = self.history.lock().unwrap();
            if h.len() == self.history_len {
                h.pop_front();
            }
            h.push_back(m.clone());
        }
        let _ = self.tx.send(m);
    }

    pub fn clients(&self) -> i64 {
        self.clients.get()
    }
}

/// The latest dead letters and counts by reason, fed by a reader of the dead-letter topics
/// (all instances' dead letters, from a little before the server started).
pub struct DeadLetters {
    topics: Vec<String>,
    keep: usize,
    inner: Mutex<DeadLetterState>,
}

/// Makes what the panel shows of a dead letter, when somebody asks (most are pushed out by
/// newer ones before that).
type Shown = Box<dyn Fn() -> Value + Send>;

#[derive(Default)]
struct DeadLetterState {
    recent: VecDeque<Shown>,
    by_reason: std::collections::BTreeMap<String, u64>,
    total: u64,
    since: Option<i64>,
}

impl DeadLetters {
    pub fn new(topics: Vec<String>, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            topics,
            keep,
            inner: Mutex::new(DeadLetterState::default()),
        })
    }

    /// Counts a dead letter by its reasons and keeps it among the latest; `show` makes what
    /// the panel shows of it (as `DeadLetter::to_json`), when somebody asks.
    pub fn push(
        &self,
        reasons: &[String],
        failed_at: Option<i64>,
        show: impl Fn() -> Value + Send + 'static,
    ) {
        let mut s = self.inner.lock().unwrap();
        for r in reasons {
            match s.by_reason.get_mut(r) {
                Some(n) => *n += 1,
                None => {
                    s.by_reason.insert(r.clone(), 1);
                }
            }
        }
        s.total += 1;
        if let Some(t) = failed_at {
            s.since = Some(s.since.map_or(t, |x| x.min(t)));
        }
        if s.recent.len() == self.keep {
            s.recent.pop_front();
        }
        s.recent.push_back(Box::new(show));
    }
}

/// `GET /api/dlq/stats`: counts by reason, the total and since when (public: no record's
/// content).
pub(crate) async fn dead_letter_stats(state: web::Data<WebState>) -> HttpResponse {
    let Some(d) = &state.dead_letters else {
        return no_dead_letters();
    };
    let s = d.inner.lock().unwrap();
    HttpResponse::Ok().json(json!({
        "topics": d.topics,
        "total": s.total,
        "since": s.since,
        "by_reason": s.by_reason,
    }))
}

/// `GET /api/dlq`: the latest dead letters, newest first (their values, keys and messages:
/// admin token), and the counts of `/api/dlq/stats`.
pub(crate) async fn dead_letters(req: HttpRequest, state: web::Data<WebState>) -> HttpResponse {
    if let Err(e) = crate::authorize(&req, &state) {
        return e.response();
    }
    let Some(d) = &state.dead_letters else {
        return no_dead_letters();
    };
    let s = d.inner.lock().unwrap();
    let recent: Vec<Value> = s.recent.iter().rev().map(|show| show()).collect();
    HttpResponse::Ok().json(json!({
        "topics": d.topics,
        "total": s.total,
        "since": s.since,
        "by_reason": s.by_reason,
        "recent": recent,
    }))
}

fn no_dead_letters() -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": "this topology writes no dead letters"}))
}

/// `GET /`: the live page. Its style and script are files of their own (`/live.css`,
/// `/live.js`), so the server's CSP needs no `'unsafe-inline'`.
pub(crate) async fn page() -> HttpResponse {
    asset("text/html; charset=utf-8", include_str!("live.html"))
}

pub(crate) async fn style() -> HttpResponse {
    asset("text/css; charset=utf-8", include_str!("live.css"))
}

pub(crate) async fn script() -> HttpResponse {
    asset("text/javascript; charset=utf-8", include_str!("live.js"))
}

fn asset(content_type: &str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("Cache-Control", "no-cache"))
        .body(body)
}

pub(crate) async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<WebState>,
) -> Result<HttpResponse, actix_web::Error> {
    let Some(live) = state.live.clone() else {
        return Ok(
            HttpResponse::NotFound().json(json!({"error": "this topology has no websocket sink"}))
        );
    };
    if let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) {
        if !live.allowed_origins.iter().any(|a| a == origin) {
            return Ok(HttpResponse::Forbidden().json(
                json!({"error": format!("origin {origin} is not allowed (WEIR_ALLOWED_ORIGINS)")}),
            ));
        }
    }
    if live.clients() >= live.max_clients as i64 {
        return Ok(HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "10"))
            .json(json!({"error": format!(
                "the live page has its {} clients already (WEIR_WS_MAX_CLIENTS): try again later",
                live.max_clients
            )})));
    }
    let (response, mut session, stream) = actix_ws::handle(&req, body)?;
    let mut stream = stream.max_frame_size(MAX_FRAME);
    let mut rx = live.tx.subscribe();
    let history: Vec<ByteString> = live.history.lock().unwrap().iter().cloned().collect();
    live.clients.inc();
    actix_web::rt::spawn(async move {
        let _ = session
            .text(json!({"type": "hello", "history": history.len()}).to_string())
            .await;
        for m in history {
            if session.text(m).await.is_err() {
                live.clients.dec();
                return;
            }
        }
        // a ping every third of the idle timeout; a client that has sent nothing (not even
        // the pong) for the idle timeout is
        // gone (a laptop closed without a FIN) and is dropped
        let idle = live.idle_timeout;
        let every = (idle / 3).max(std::time::Duration::from_millis(100));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = ping.tick() => {
                    if heard.elapsed() > idle || session.ping(b"").await.is_err() {
                        break;
                    }
                }
                m = rx.recv() => match m {
                    Ok(m) => {
                        if session.text(m).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if session.text(json!({"type": "skipped", "count": n}).to_string()).await.is_err() {
                            break;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                incoming = stream.next() => match incoming {
                    Some(Ok(actix_ws::Message::Ping(p))) => {
                        heard = tokio::time::Instant::now();
                        if session.pong(&p).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => heard = tokio::time::Instant::now(),
                },
            }
        }
        live.clients.dec();
        let _ = session.close(None).await;
    });
    Ok(response)
}

fn sum(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    filter: impl Fn(&prometheus::proto::Metric) -> bool,
) -> f64 {
    families
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| {
            let counter = f.get_field_type() == prometheus::proto::MetricType::COUNTER;
            f.get_metric().iter().map(move |m| (counter, m))
        })
        .filter(|(_, m)| filter(m))
        .map(|(counter, m)| {
            if counter {
                m.get_counter().get_value()
            } else {
                m.get_gauge().get_value()
            }
        })
        .sum()
}

fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> Option<&'a str> {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
}

/// The totals the page's vital signs and charts are made of, at one moment.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    /// Milliseconds since 1970 (the server's clock).
    pub t: i64,
    /// Records into the source nodes.
    pub records_in: f64,
    /// Records into the topic sinks (clean records).
    pub clean: f64,
    /// Records into the dead-letter sinks.
    pub dead_letters: f64,
    pub consumer_lag: f64,
    pub rows_written: f64,
}

/// How often the server keeps a sample for the charts, and for how long (10 minutes).
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const SAMPLES_KEPT: usize = 120;

/// The totals now, from the metrics and the running topology's description.
pub(crate) fn counts(state: &WebState) -> (Counts, Value) {
    let families = state.registry.gather();
    let topology = state
        .topology
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let nodes = |kind: &str, typ: Option<&str>| -> Vec<String> {
        topology["sub_topologies"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["nodes"].as_array().into_iter().flatten())
            .filter(|n| {
                n["kind"] == kind
                    && typ.is_none_or(|t| n["type"] == t)
                    && !n["name"].as_str().unwrap_or("").ends_with("-source")
            })
            .filter_map(|n| n["name"].as_str().map(str::to_owned))
            .collect()
    };
    let in_node = |names: &Vec<String>| {
        sum(&families, "weir_records_in_total", |m| {
            label(m, "node").is_some_and(|n| names.iter().any(|x| x == n))
        })
    };
    let c = Counts {
        t: chrono::Utc::now().timestamp_millis(),
        records_in: in_node(&nodes("source", None)),
        clean: in_node(&nodes("sink", Some("kafka"))),
        dead_letters: in_node(&nodes("sink", Some("dead_letter"))),
        consumer_lag: sum(&families, "weir_consumer_lag_records", |_| true),
        rows_written: sum(&families, "weir_sink_rows_written_total", |_| true),
    };
    (c, topology)
}

/// Keeps a sample every [`SAMPLE_EVERY`] for the last 10 minutes (run on the server's
/// runtime for as long as it serves).
pub(crate) async fn sample_forever(state: web::Data<WebState>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let (c, _) = counts(&state);
        let mut h = state.history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() == SAMPLES_KEPT {
            h.pop_front();
        }
        h.push_back(c);
    }
}

/// `GET /api/vitals/history`: the samples of the last 10 minutes, oldest first, for the
/// page's charts.
pub(crate) async fn vitals_history(state: web::Data<WebState>) -> HttpResponse {
    let samples: Vec<Counts> = state
        .history
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .copied()
        .collect();
    HttpResponse::Ok().json(json!({
        "every_ms": SAMPLE_EVERY.as_millis() as u64,
        "samples": samples,
    }))
}

/// The page's vital signs: totals the page turns into rates (dead letters by reason are in
/// `/api/dlq`).
pub(crate) async fn vitals(state: web::Data<WebState>) -> HttpResponse {
    let (c, topology) = counts(&state);
    let Some((_, admin)) = state.admins.first() else {
        return HttpResponse::InternalServerError().finish();
    };
    let window: Value = match admin.windows(1).await {
        Ok(v) => v["windows"].get(0).cloned().unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    HttpResponse::Ok().json(json!({
        "t": c.t,
        "records_in": c.records_in,
        "clean": c.clean,
        "dead_letters": c.dead_letters,
        "consumer_lag": c.consumer_lag,
        "rows_written": c.rows_written,
        "websocket_clients": state.live.as_ref().map(|l| l.clients()).unwrap_or(0),
        "window": window,
        "version": topology["version"],
    }))
}
