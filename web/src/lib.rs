//! Weir's HTTP server (actix-web): Prometheus metrics, health, the topology, and the admin
//! API that Airflow calls to seal and audit windows.
//!
//! - `GET /`: the live page; `GET /ws`: greetings as JSON messages ([`live`]).
//! - `GET /metrics`: every metric in Prometheus text format.
//! - `GET /healthz`: the process is up. `GET /readyz`: Kafka and PostgreSQL answer and no
//!   sink is degraded (503 otherwise, with the reasons).
//! - `GET /api/topology`: the running topology's description, its version (a content hash
//!   and when it was loaded) and the last reload's result.
//! - `GET /api/windows`, `GET /api/windows/{start}`: a PostgreSQL sink's windows (every
//!   window call takes `?sink=NAME`; by default the topology's first PostgreSQL sink).
//! - `GET /api/windows/{start}/sealable`: whether the watermark has passed the window's end
//!   plus grace (also for a window with no rows); what Airflow's sensor polls.
//! - `GET /api/vitals`, `GET /api/vitals/history`: the live page's vital signs now, and
//!   sampled every 5 s for its charts of the last 10 minutes.
//! - `GET /api/dlq/stats`: dead letters counted by reason since the server started.
//! - `GET /api/dlq`: the latest dead letters (reasons, source coordinates, an escaped
//!   preview) and the counts: admin token, since a dead letter holds personal data.
//! - `GET /api/tap?edge=NODE[.OUTPUT]`: the records on an edge as they pass, JSON lines
//!   ([`tap`]; admin token).
//! - `POST /api/windows/{start}/seal[?force=true]`, `GET|POST /api/windows/{start}/audit`:
//!   admin calls, `Authorization: Bearer <WEIR_ADMIN_TOKEN>` (compared in constant time).
//!
//! Errors are JSON `{"error": "..."}` with the status that fits: 400 bad input, 401 no or
//! wrong token, 404 unknown window, 409 not sealable yet, 421 a `Host` not allowed, 503 not
//! ready or too many live clients. Every response carries a strict CSP (no inline script or
//! style, no framing), `nosniff` and no referrer. The server never
//! sees a component's types: what it serves comes through the [`Admin`] trait, which the
//! `weir` binary implements.

pub mod live;
pub mod tap;

use std::sync::Arc;

use actix_web::dev::Service;
use actix_web::http::StatusCode;
use actix_web::middleware::DefaultHeaders;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};

/// An API error: the HTTP status and a sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub error: String,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
        }
    }

    pub(crate) fn response(&self) -> HttpResponse {
        HttpResponse::build(
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .json(json!({ "error": self.error }))
    }
}

/// What the server asks of the running topology.
pub trait Admin: Send + Sync + 'static {
    /// The newest windows of the PostgreSQL sink.
    fn windows(&self, limit: i64) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// One window (404 when it does not exist).
    fn window(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// Whether a window can be sealed now: `{"sealable", "watermark", "sealable_at", "window"}`.
    fn sealable(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// Seals a window (409 while the watermark is before end + grace, unless forced).
    fn seal(
        &self,
        start: DateTime<Utc>,
        force: bool,
        by: String,
    ) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// Audits a window and stores the verdict with `run_id`.
    fn audit(
        &self,
        start: DateTime<Utc>,
        run_id: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// The latest audit of a window (404 when none).
    fn last_audit(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>>;
    /// Ok when Kafka and PostgreSQL answer and no sink is degraded; the reasons otherwise.
    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>>;
    /// Brings metrics read from elsewhere up to date (a sink's oldest unsealed window):
    /// called before `/metrics` answers, for at most two seconds.
    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Everything the handlers share.
pub struct WebState {
    pub registry: prometheus::Registry,
    /// What `/api/topology` answers: the running topology's description, its `version`
    /// (content hash, load time) and its last `reload`; rewritten by a reload.
    pub topology: Arc<std::sync::RwLock<Value>>,
    /// The admin token; `None` refuses every admin call.
    pub admin_token: Option<String>,
    /// The admin API of each PostgreSQL sink by node name, the first answering when a call
    /// names no `?sink=`; never empty (a topology without one has an entry that answers
    /// readiness and has no windows).
    pub admins: Vec<(String, Arc<dyn Admin>)>,
    /// The greeting feed, when the topology has a websocket sink.
    pub live: Option<Arc<live::Live>>,
    /// The latest dead letters, when the topology writes any.
    pub dead_letters: Option<Arc<live::DeadLetters>>,
    /// Host names a request may name in its `Host` header (without the port; `*`: any). A
    /// page of another name that resolves to this server (DNS rebinding) gets 421.
    pub allowed_hosts: Vec<String>,
    /// The last readiness answer and when it was made: `/readyz` asks again after a second.
    pub ready_cache: tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>,
    /// The taps of the processing loop's pipelines (`None` when this process runs none).
    pub taps: Option<Arc<weir_topology::tap::Taps>>,
    /// The live page's chart samples of the last 10 minutes ([`live::SAMPLE_EVERY`]).
    pub history: std::sync::Mutex<std::collections::VecDeque<live::Counts>>,
}

/// Ready, or the reasons it is not.
pub type Readiness = Result<(), Vec<String>>;

/// How long a readiness answer is reused.
const READY_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// The name a `Host` header gives, lower case, without its port (`[::1]:5000` → `[::1]`).
pub fn host_name(host: &str) -> String {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split(':').next().unwrap_or(host)
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether a request naming `host` may be served: a request without `Host` is not a
/// browser's (DNS rebinding needs one) and is served.
pub fn host_allowed(allowed: &[String], host: Option<&str>) -> bool {
    let Some(host) = host else { return true };
    let name = host_name(host);
    allowed.iter().any(|a| a == "*" || host_name(a) == name)
}

/// The refusal of a request whose `Host` is not allowed.
fn host_refusal(req: &HttpRequest) -> Option<ApiError> {
    let state = req.app_data::<web::Data<WebState>>()?;
    let host = req.headers().get("host").map(|h| h.to_str().unwrap_or("?"));
    (!host_allowed(&state.allowed_hosts, host)).then(|| {
        ApiError::new(
            421,
            format!(
                "this server does not answer for host {} (WEIR_ALLOWED_HOSTS)",
                host.unwrap_or_default()
            ),
        )
    })
}

/// Headers on every response: a CSP with no inline script or style, no framing, no MIME
/// sniffing, no referrer.
const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
];

/// Compares two strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn authorize(req: &HttpRequest, state: &WebState) -> Result<(), ApiError> {
    let Some(token) = &state.admin_token else {
        return Err(ApiError::new(
            401,
            "admin calls are disabled: set WEIR_ADMIN_TOKEN",
        ));
    };
    let given = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                401,
                "missing bearer token: send Authorization: Bearer <token>",
            )
        })?;
    if constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(401, "wrong bearer token"))
    }
}

/// The admin of the sink a call names (`?sink=`), or the first.
fn admin_for<'a>(
    state: &'a WebState,
    sink: &Option<String>,
) -> Result<&'a Arc<dyn Admin>, ApiError> {
    match sink {
        None => state
            .admins
            .first()
            .map(|(_, a)| a)
            .ok_or_else(|| ApiError::new(404, "this topology has no PostgreSQL sink")),
        Some(name) => state
            .admins
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    format!(
                        "no PostgreSQL sink \"{name}\" (sinks: {})",
                        state
                            .admins
                            .iter()
                            .map(|(n, _)| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            }),
    }
}

/// Which sink a call is for: `?sink=NAME` (default: the first).
#[derive(Deserialize)]
struct SinkQuery {
    sink: Option<String>,
}

fn parse_start(s: &str) -> Result<DateTime<Utc>, ApiError> {
    DateTime::parse_from_rfc3339(s)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            s.parse::<i64>()
                .ok()
                .and_then(DateTime::from_timestamp_millis)
        })
        .ok_or_else(|| {
            ApiError::new(
                400,
                format!("invalid window start \"{s}\": RFC 3339 or milliseconds since 1970"),
            )
        })
}

fn reply(r: Result<Value, ApiError>) -> HttpResponse {
    match r {
        Ok(v) => HttpResponse::Ok().json(v),
        Err(e) => e.response(),
    }
}

async fn metrics(state: web::Data<WebState>) -> HttpResponse {
    for (_, admin) in &state.admins {
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(2), admin.refresh_metrics()).await;
    }
    let encoder = prometheus::TextEncoder::new();
    match encoder.encode_to_string(&state.registry.gather()) {
        Ok(text) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(text),
        Err(e) => ApiError::new(500, e.to_string()).response(),
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "up"}))
}

async fn readyz(state: web::Data<WebState>) -> HttpResponse {
    // one check at a time, its answer reused for a second: a busy probe or scraper never
    // makes more than one Kafka and PostgreSQL round trip a second
    let answer = {
        let mut cache = state.ready_cache.lock().await;
        match &*cache {
            Some((at, answer)) if at.elapsed() < READY_TTL => answer.clone(),
            _ => {
                // every sink's database and health, and Kafka
                let mut reasons: Vec<String> = Vec::new();
                for (_, admin) in &state.admins {
                    if let Err(r) = admin.ready().await {
                        reasons.extend(
                            r.into_iter()
                                .filter(|r| !reasons.contains(r))
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                let answer = if reasons.is_empty() {
                    Ok(())
                } else {
                    Err(reasons)
                };
                *cache = Some((std::time::Instant::now(), answer.clone()));
                answer
            }
        }
    };
    match answer {
        Ok(()) => HttpResponse::Ok().json(json!({"status": "ready"})),
        Err(reasons) => HttpResponse::ServiceUnavailable()
            .json(json!({"status": "not ready", "reasons": reasons})),
    }
}

async fn topology(state: web::Data<WebState>) -> HttpResponse {
    let topology = state
        .topology
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    HttpResponse::Ok().json(topology)
}

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
    sink: Option<String>,
}

async fn windows(state: web::Data<WebState>, q: web::Query<Limit>) -> HttpResponse {
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match admin_for(&state, &q.sink) {
        Ok(admin) => reply(admin.windows(limit).await),
        Err(e) => e.response(),
    }
}

/// The window a call names (its path) and the admin of the sink it names (`?sink=`).
fn window_call<'a>(
    state: &'a WebState,
    start: &str,
    sink: &Option<String>,
) -> Result<(DateTime<Utc>, &'a Arc<dyn Admin>), ApiError> {
    Ok((parse_start(start)?, admin_for(state, sink)?))
}

type WindowPath = (
    web::Data<WebState>,
    web::Path<String>,
    web::Query<SinkQuery>,
);

/// A call of the admin API about one window.
type WindowCall =
    for<'a> fn(&'a dyn Admin, DateTime<Utc>) -> BoxFuture<'a, Result<Value, ApiError>>;

/// Answers `call` for the window and sink a request names.
async fn on_window(
    state: &WebState,
    path: &str,
    sink: &Option<String>,
    call: WindowCall,
) -> HttpResponse {
    match window_call(state, path, sink) {
        Ok((start, admin)) => reply(call(admin.as_ref(), start).await),
        Err(e) => e.response(),
    }
}

async fn window((state, path, q): WindowPath) -> HttpResponse {
    on_window(&state, &path, &q.sink, |a, start| a.window(start)).await
}

async fn sealable((state, path, q): WindowPath) -> HttpResponse {
    on_window(&state, &path, &q.sink, |a, start| a.sealable(start)).await
}

#[derive(Deserialize)]
struct SealQuery {
    force: Option<bool>,
    by: Option<String>,
    sink: Option<String>,
}

async fn seal(
    req: HttpRequest,
    state: web::Data<WebState>,
    path: web::Path<String>,
    q: web::Query<SealQuery>,
) -> HttpResponse {
    if let Err(e) = authorize(&req, &state) {
        return e.response();
    }
    match window_call(&state, &path, &q.sink) {
        Ok((start, admin)) => {
            let by = q.by.clone().unwrap_or_else(|| "api".into());
            reply(admin.seal(start, q.force.unwrap_or(false), by).await)
        }
        Err(e) => e.response(),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    run_id: Option<String>,
    sink: Option<String>,
}

async fn audit_get(req: HttpRequest, (state, path, q): WindowPath) -> HttpResponse {
    if let Err(e) = authorize(&req, &state) {
        return e.response();
    }
    on_window(&state, &path, &q.sink, |a, start| a.last_audit(start)).await
}

async fn audit_post(
    req: HttpRequest,
    state: web::Data<WebState>,
    path: web::Path<String>,
    q: web::Query<AuditQuery>,
) -> HttpResponse {
    if let Err(e) = authorize(&req, &state) {
        return e.response();
    }
    match window_call(&state, &path, &q.sink) {
        Ok((start, admin)) => reply(admin.audit(start, q.run_id.clone()).await),
        Err(e) => e.response(),
    }
}

/// The routes, for the server and for tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(live::page))
        .route("/live.css", web::get().to(live::style))
        .route("/live.js", web::get().to(live::script))
        .route("/ws", web::get().to(live::ws))
        .route("/api/vitals", web::get().to(live::vitals))
        .route("/api/vitals/history", web::get().to(live::vitals_history))
        .route("/api/tap", web::get().to(tap::tap))
        .route("/api/dlq", web::get().to(live::dead_letters))
        .route("/api/dlq/stats", web::get().to(live::dead_letter_stats))
        .route("/metrics", web::get().to(metrics))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/api/topology", web::get().to(topology))
        .route("/api/windows", web::get().to(windows))
        .route("/api/windows/{start}", web::get().to(window))
        .route("/api/windows/{start}/sealable", web::get().to(sealable))
        .route("/api/windows/{start}/seal", web::post().to(seal))
        .route("/api/windows/{start}/audit", web::get().to(audit_get))
        .route("/api/windows/{start}/audit", web::post().to(audit_post));
}

/// Runs the server on `addr` until the process stops. Blocks (it owns an actix runtime).
pub fn serve(state: WebState, addr: &str) -> std::io::Result<actix_web::dev::Server> {
    let data = web::Data::new(state);
    actix_web::rt::spawn(live::sample_forever(data.clone()));
    Ok(HttpServer::new(move || {
        let headers = SECURITY_HEADERS
            .iter()
            .fold(DefaultHeaders::new(), |h, &(k, v)| h.add((k, v)));
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024))
            .app_data(web::JsonConfig::default().limit(64 * 1024))
            .configure(configure)
            .wrap_fn(|req, srv| match host_refusal(req.request()) {
                Some(e) => {
                    let res = req.into_response(e.response()).map_into_right_body();
                    async move { Ok(res) }.boxed_local()
                }
                None => {
                    let call = srv.call(req);
                    async move { call.await.map(|r| r.map_into_left_body()) }.boxed_local()
                }
            })
            .wrap(headers)
    })
    .workers(2)
    // open websockets (live pages) would hold a graceful stop for actix's default 30 s
    .shutdown_timeout(2)
    .bind(addr)?
    .run())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn hosts_are_compared_by_name_without_port_or_case() {
        let allowed = vec!["127.0.0.1".to_owned(), "localhost".into(), "[::1]".into()];
        assert!(host_allowed(&allowed, Some("127.0.0.1:5000")));
        assert!(host_allowed(&allowed, Some("LocalHost:80")));
        assert!(host_allowed(&allowed, Some("localhost.")));
        assert!(host_allowed(&allowed, Some("[::1]:5000")));
        assert!(host_allowed(&allowed, None));
        assert!(!host_allowed(&allowed, Some("evil.example:5000")));
        assert!(!host_allowed(&allowed, Some("localhost.evil.example")));
        assert!(!host_allowed(&allowed, Some("[::2]:5000")));
        assert!(host_allowed(&["*".to_owned()], Some("anything:1")));
    }

    #[test]
    fn window_starts_parse_as_rfc3339_or_millis() {
        assert_eq!(
            parse_start("2026-11-25T10:05:00Z")
                .unwrap()
                .timestamp_millis(),
            1_795_601_100_000
        );
        assert_eq!(
            parse_start("1795601100000").unwrap().timestamp_millis(),
            1_795_601_100_000
        );
        assert_eq!(parse_start("yesterday").unwrap_err().status, 400);
    }
}
