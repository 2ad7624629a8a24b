//! The admin API's answers, from the running topology's PostgreSQL sink: windows, seal,
//! audit and readiness — the [`weir_web::Admin`] the HTTP server serves; [`AdminSlot`] lets
//! a reload replace a sink's admin under the running server.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use weir_sinks::postgres::admin::{self, SealError, TopicSource, WindowSpec};
use weir_sinks::postgres::sink::Health;
use weir_sinks::postgres::writer::Table;
use weir_sinks::postgres::PostgresSinkConfig;
use weir_web::{Admin, ApiError};

/// The admin calls of one PostgreSQL sink.
pub struct SinkAdmin {
    pool: Pool,
    spec: WindowSpec,
    config: PostgresSinkConfig,
    table: OnceCell<Table>,
    source: TopicSource,
    health: Vec<Arc<Health>>,
    kafka: KafkaProbe,
    /// Counts windows this process seals (`weir_sink_windows_sealed_total`).
    sealed: Option<prometheus::IntCounter>,
    /// Audits by result, and the age of the oldest unsealed window (set at each scrape).
    audit_metrics: Option<(prometheus::IntCounterVec, prometheus::Gauge)>,
    /// When the age was last read: at most every few seconds, however often `/metrics`
    /// (public) is called.
    refreshed: std::sync::Mutex<Option<std::time::Instant>>,
}

/// How often a scrape may read the oldest unsealed window from PostgreSQL.
const REFRESH_EVERY: Duration = Duration::from_secs(5);

/// The admin calls of a topology with no PostgreSQL sink: there are no windows.
pub struct NoSink {
    pub kafka: KafkaProbe,
}

fn pg_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(503, format!("PostgreSQL: {e}"))
}

impl SinkAdmin {
    pub fn new(
        database_url: &str,
        spec: WindowSpec,
        config: PostgresSinkConfig,
        source: TopicSource,
        health: Vec<Arc<Health>>,
    ) -> anyhow::Result<Self> {
        let pg: tokio_postgres::Config = database_url.parse()?;
        let manager = Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(4)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(5)))
            .build()?;
        Ok(Self {
            pool,
            spec,
            config,
            table: OnceCell::new(),
            kafka: KafkaProbe::new(&source.kafka),
            source,
            health,
            sealed: None,
            audit_metrics: None,
            refreshed: Default::default(),
        })
    }

    /// Counts each seal that changes a window's state in `counter`.
    pub fn count_seals(mut self, counter: prometheus::IntCounter) -> Self {
        self.sealed = Some(counter);
        self
    }

    /// Counts audits by result, and keeps the age of the oldest unsealed window, in the
    /// sink's metrics.
    pub fn count_audits(
        mut self,
        audits: prometheus::IntCounterVec,
        unsealed_age: prometheus::Gauge,
    ) -> Self {
        self.audit_metrics = Some((audits, unsealed_age));
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ApiError> {
        self.pool.get().await.map_err(pg_error)
    }
}

/// Kafka's readiness: a metadata request within a few seconds, on one client made at the
/// first check and kept (librdkafka reconnects it), not a client a call.
pub struct KafkaProbe {
    kafka: weir_topology::config::KafkaSettings,
    client: std::sync::OnceLock<Result<Arc<rdkafka::consumer::BaseConsumer>, String>>,
}

impl KafkaProbe {
    pub fn new(kafka: &weir_topology::config::KafkaSettings) -> Self {
        Self {
            kafka: kafka.clone(),
            client: std::sync::OnceLock::new(),
        }
    }

    async fn check(&self) -> Result<(), String> {
        let client = self
            .client
            .get_or_init(|| {
                self.kafka
                    // an unreachable cluster is what readiness reports, not a log line a retry
                    .client("readiness", |c| {
                        c.set_log_level(rdkafka::config::RDKafkaLogLevel::Critical);
                    })
                    .create()
                    .map(Arc::new)
                    .map_err(|e| format!("Kafka ({}): {e}", self.kafka.bootstrap_servers))
            })
            .clone()?;
        let bootstrap = self.kafka.bootstrap_servers.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::consumer::Consumer;
            client
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
                .map_err(|e| format!("Kafka ({bootstrap}): {e}"))
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

impl Admin for SinkAdmin {
    fn windows(&self, limit: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let c = self.client().await?;
            let w = admin::windows(&c, &self.spec, limit)
                .await
                .map_err(pg_error)?;
            Ok(json!({ "sink": self.spec.sink_id, "windows": w }))
        }
        .boxed()
    }

    fn window(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let c = self.client().await?;
            let w = admin::window(&c, &self.spec, start)
                .await
                .map_err(pg_error)?;
            let watermark = admin::watermark(&c, &self.spec).await.map_err(pg_error)?;
            match w {
                Some(w) => {
                    Ok(json!({ "sink": self.spec.sink_id, "window": w, "watermark": watermark }))
                }
                None => Err(ApiError::new(
                    404,
                    format!("no window starts at {}", start.to_rfc3339()),
                )),
            }
        }
        .boxed()
    }

    fn sealable(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let c = self.client().await?;
            match admin::sealable(&c, &self.spec, start).await {
                Ok(s) => Ok(serde_json::to_value(s).unwrap_or_default()),
                Err(e @ SealError::NotAligned { .. }) => Err(ApiError::new(400, e.to_string())),
                Err(e) => Err(ApiError::new(503, e.to_string())),
            }
        }
        .boxed()
    }

    fn seal(
        &self,
        start: DateTime<Utc>,
        force: bool,
        by: String,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let mut c = self.client().await?;
            let window_column = self.table_column().await?;
            match admin::seal(
                &mut c,
                &self.spec,
                &self.config.table,
                &window_column,
                start,
                force,
                &by,
            )
            .await
            {
                Ok(outcome) => {
                    if !outcome.already_sealed {
                        if let Some(c) = &self.sealed {
                            c.inc();
                        }
                    }
                    Ok(serde_json::to_value(outcome).unwrap_or_default())
                }
                Err(e @ SealError::NotYet { .. }) => Err(ApiError::new(409, e.to_string())),
                Err(e @ SealError::NotAligned { .. }) => Err(ApiError::new(400, e.to_string())),
                Err(e) => Err(ApiError::new(503, e.to_string())),
            }
        }
        .boxed()
    }

    fn audit(
        &self,
        start: DateTime<Utc>,
        run_id: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let c = self.client().await?;
            let table = self.table().await?;
            match admin::audit(
                &c,
                &self.spec,
                table,
                &self.source,
                start,
                run_id.as_deref(),
            )
            .await
            {
                Ok(report) => {
                    if let Some((audits, _)) = &self.audit_metrics {
                        let result = if report.passed { "passed" } else { "failed" };
                        audits.with_label_values(&[result]).inc();
                    }
                    Ok(serde_json::to_value(report).unwrap_or_default())
                }
                Err(e @ admin::AuditError::NotAligned { .. }) => {
                    Err(ApiError::new(400, e.to_string()))
                }
                Err(e) => Err(ApiError::new(503, e.to_string())),
            }
        }
        .boxed()
    }

    fn last_audit(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        async move {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT report FROM audits WHERE sink = $1 AND window_start = $2 ORDER BY id DESC LIMIT 1",
                    &[&self.spec.sink_id, &start],
                )
                .await
                .map_err(pg_error)?;
            row.map(|r| r.get::<_, Value>(0))
                .ok_or_else(|| ApiError::new(404, format!("window {} has no audit yet", start.to_rfc3339())))
        }
        .boxed()
    }

    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>> {
        async move {
            let mut reasons = Vec::new();
            match self.pool.get().await {
                Ok(c) => {
                    if let Err(e) = c.simple_query("SELECT 1").await {
                        reasons.push(format!("PostgreSQL: {e}"));
                    }
                }
                Err(e) => reasons.push(format!("PostgreSQL: {e}")),
            }
            if let Err(e) = self.kafka.check().await {
                reasons.push(e);
            }
            for h in &self.health {
                if h.is_degraded() {
                    reasons.push(format!(
                        "sink degraded: {}",
                        h.last_error().unwrap_or_default()
                    ));
                }
            }
            if reasons.is_empty() {
                Ok(())
            } else {
                Err(reasons)
            }
        }
        .boxed()
    }

    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        async move {
            let Some((_, age)) = &self.audit_metrics else {
                return;
            };
            {
                let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
                if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                    return;
                }
                *last = Some(std::time::Instant::now());
            }
            let Ok(c) = self.pool.get().await else { return };
            let oldest = c
                .query_one(
                    "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(window_end))::float8, 0) \
                     FROM windows WHERE sink = $1 AND status = 'open' AND window_end < now()",
                    &[&self.spec.sink_id],
                )
                .await;
            if let Ok(row) = oldest {
                age.set(row.get::<_, f64>(0));
            }
        }
        .boxed()
    }
}

impl SinkAdmin {
    async fn table(&self) -> Result<&Table, ApiError> {
        self.table
            .get_or_try_init(|| async {
                let c = self.client().await?;
                Table::describe(&c, &self.config).await.map_err(pg_error)
            })
            .await
    }

    async fn table_column(&self) -> Result<String, ApiError> {
        Ok(self
            .table()
            .await?
            .window_column
            .clone()
            .unwrap_or_else(|| "window_start".into()))
    }
}

impl Admin for NoSink {
    fn windows(&self, _limit: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        async {
            Err(ApiError::new(
                404,
                "this topology has no PostgreSQL sink, so no windows",
            ))
        }
        .boxed()
    }
    fn window(&self, _s: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        self.windows(0)
    }
    fn sealable(&self, _s: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        self.windows(0)
    }
    fn seal(
        &self,
        _s: DateTime<Utc>,
        _f: bool,
        _b: String,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        self.windows(0)
    }
    fn audit(
        &self,
        _s: DateTime<Utc>,
        _r: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        self.windows(0)
    }
    fn last_audit(&self, _s: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        self.windows(0)
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>> {
        async move { self.kafka.check().await.map_err(|e| vec![e]) }.boxed()
    }
}

/// An admin API that a reload may replace (its PostgreSQL sink restarted with new
/// settings): the HTTP server keeps serving the slot, and each call goes to what it holds.
pub struct AdminSlot(std::sync::RwLock<Arc<dyn Admin>>);

impl AdminSlot {
    pub fn new(admin: Arc<dyn Admin>) -> Arc<Self> {
        Arc::new(Self(std::sync::RwLock::new(admin)))
    }

    /// Puts `admin` in place of what the slot held.
    pub fn set(&self, admin: Arc<dyn Admin>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = admin;
    }

    fn get(&self) -> Arc<dyn Admin> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Admin for AdminSlot {
    fn windows(&self, limit: i64) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.windows(limit).await }.boxed()
    }
    fn window(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.window(start).await }.boxed()
    }
    fn sealable(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.sealable(start).await }.boxed()
    }
    fn seal(
        &self,
        start: DateTime<Utc>,
        force: bool,
        by: String,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.seal(start, force, by).await }.boxed()
    }
    fn audit(
        &self,
        start: DateTime<Utc>,
        run_id: Option<String>,
    ) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.audit(start, run_id).await }.boxed()
    }
    fn last_audit(&self, start: DateTime<Utc>) -> BoxFuture<'_, Result<Value, ApiError>> {
        let a = self.get();
        async move { a.last_audit(start).await }.boxed()
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), Vec<String>>> {
        let a = self.get();
        async move { a.ready().await }.boxed()
    }
    fn refresh_metrics(&self) -> BoxFuture<'_, ()> {
        let a = self.get();
        async move { a.refresh_metrics().await }.boxed()
    }
}
