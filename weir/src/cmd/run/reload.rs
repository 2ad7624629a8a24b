//! Topology edits while `weir run` runs: on SIGHUP, or with `--watch` whenever the file's
//! content changes, the file is loaded and checked again.
//!
//! - A file with errors is refused: each error is logged at its `file:line:column`,
//!   `weir_topology_reloads_total{result="refused"}` counts it, and the running topology
//!   carries on unchanged. The same content is not tried again until it changes.
//! - An edit of processors only (rules, cleaning) is built into new pipelines and handed to
//!   the exactly-once loop, which swaps them in at its next transaction boundary
//!   ([`weir_topology::engine::Swapper`]): each record is processed wholly by the old or
//!   wholly by the new version.
//! - An edit that needs sub-topologies restarted ([`weir_topology::diff`]) is handed back to
//!   `weir run` ([`Outcome::Replace`]), which restarts only those.
//!
//! `/api/topology` shows the running version (SHA-256 of the file, when it was loaded) and
//! the last reload's result, its changes and, once applied, its latency.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::{IntCounterVec, Opts};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use weir_topology::diff::diff;
use weir_topology::engine::Swapper;
use weir_topology::metrics::Metrics;
use weir_topology::{LoadError, Pipeline, Topology};

/// `--watch` reads the file when its size or modification time changes (looked at each
/// tick), and at least this often (an edit within the file system's time resolution).
const READ_EVERY: Duration = Duration::from_secs(2);

/// The running file's version.
#[derive(Debug, Clone)]
struct Version {
    hash: String,
    loaded_at: chrono::DateTime<chrono::Utc>,
}

/// An offered version the loop has not swapped in yet.
struct Waiting {
    applied_before: u64,
    since: Instant,
    version: Version,
    changes: Value,
}

/// What a reload asks of `weir run`.
pub enum Outcome {
    /// The running topology stays (nothing to reload, or the edit was refused).
    Kept,
    /// The new topology is the running one from now (its processors are swapped in by the
    /// loop), after these sub-topologies (numbers of the new file) restart with it.
    Replace {
        topology: Box<Topology>,
        /// `Some` when something stops or starts again (the sub-topologies to restart may
        /// be none when the edit only removes nodes).
        restart: Option<Vec<usize>>,
    },
}

pub struct Reloader {
    path: PathBuf,
    kafka_options: Vec<(String, String)>,
    watch: bool,
    hup: Arc<AtomicBool>,
    current: Version,
    /// The hash of the content last looked at (loaded or refused).
    seen: String,
    last_look: Instant,
    /// The file's size and modification time when last looked at.
    last_meta: Option<(u64, Option<std::time::SystemTime>)>,
    status: Arc<RwLock<Value>>,
    swapper: Option<(Swapper, usize)>,
    metrics: Metrics,
    reloads: IntCounterVec,
    waiting: Option<Waiting>,
    /// The taps every pipeline it builds offers records to.
    taps: Arc<weir_topology::tap::Taps>,
    /// A reload whose sub-topologies `weir run` is restarting: its version, since when,
    /// its changes.
    restarting: Option<(Version, Instant, Value)>,
    last_reload: Value,
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Reloader {
    /// `t` is the topology running now, loaded from `args.file`; `swapper` hands the loop
    /// new pipelines (`None` when this process does not run the processing sub-topology),
    /// with how many pipelines the loop runs; `taps` go into every pipeline it builds.
    pub fn new(
        args: &super::RunArgs,
        t: &Topology,
        swapper: Option<(Swapper, usize)>,
        metrics: &Metrics,
        status: Arc<RwLock<Value>>,
        taps: Arc<weir_topology::tap::Taps>,
    ) -> anyhow::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "topology_reloads_total",
                "Reloads of the topology file by result: applied (live), restarted, unchanged, refused (errors; the running topology carried on)",
            ),
            &["result"],
        )?;
        for result in ["applied", "restarted", "unchanged", "refused"] {
            reloads.with_label_values(&[result]);
        }
        metrics.registry.register(Box::new(reloads.clone()))?;
        let (path, kafka_options, watch) =
            (args.file.clone(), args.kafka.options.clone(), args.watch);
        let hash = sha256(&std::fs::read(&path)?);
        let hup = weir::signals::flag_on_hangup()?;
        let r = Self {
            path,
            kafka_options,
            watch,
            hup,
            current: Version {
                hash: hash.clone(),
                loaded_at: chrono::Utc::now(),
            },
            seen: hash,
            last_look: Instant::now(),
            last_meta: None,
            status,
            swapper,
            metrics: metrics.clone(),
            reloads,
            waiting: None,
            taps,
            restarting: None,
            last_reload: Value::Null,
        };
        r.publish(t);
        Ok(r)
    }

    /// The loop started again (a restart): new versions go to its swapper. A swap waiting
    /// for the old loop is moot: the new loop runs the newest topology.
    pub fn set_swapper(&mut self, swapper: Option<(Swapper, usize)>) {
        let same = match (&self.swapper, &swapper) {
            (Some((a, _)), Some((b, _))) => a.same(b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.waiting = None;
        }
        self.swapper = swapper;
    }

    fn publish(&self, t: &Topology) {
        let mut v = serde_json::to_value(weir_topology::describe::describe(t)).unwrap_or_default();
        v["version"] = json!({
            "hash": self.current.hash,
            "loaded_at": self.current.loaded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        v["reload"] = self.last_reload.clone();
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = v;
    }

    fn report(&mut self, t: &Topology, result: &str, mut detail: Value) {
        self.reloads.with_label_values(&[result]).inc();
        detail["result"] = json!(result);
        detail["at"] =
            json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
        self.last_reload = detail;
        self.publish(t);
    }

    /// Called often by `weir run` with the topology running now: finishes a swap the loop
    /// has made, and looks for a reload to do (SIGHUP, or a changed file with `--watch`).
    pub fn tick(&mut self, running: &Topology) -> Outcome {
        self.settle(running);
        let hangup = self.hup.swap(false, Ordering::SeqCst);
        let look = self.watch && {
            let meta = std::fs::metadata(&self.path)
                .ok()
                .map(|m| (m.len(), m.modified().ok()));
            let changed = meta != self.last_meta;
            self.last_meta = meta;
            changed || self.last_look.elapsed() >= READ_EVERY
        };
        if !hangup && !look {
            return Outcome::Kept;
        }
        self.last_look = Instant::now();
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                if hangup {
                    tracing::error!(file = %self.path.display(), error = %e, "reload refused: cannot read the topology file; the running topology carries on");
                    self.report(running, "refused", json!({"errors": [e.to_string()]}));
                }
                return Outcome::Kept;
            }
        };
        let hash = sha256(text.as_bytes());
        if hash == self.seen && !hangup {
            return Outcome::Kept;
        }
        self.seen = hash.clone();
        self.reload(running, &text, hash)
    }

    fn reload(&mut self, running: &Topology, text: &str, hash: String) -> Outcome {
        let started = Instant::now();
        let file = self.path.display().to_string();
        let registry = weir::registry::registry();
        let mut new = match weir_topology::load_str(&file, text, &registry, &|k| {
            std::env::var(k).ok()
        }) {
            Ok(t) => t,
            Err(e) => {
                let errors: Vec<String> = match e {
                    LoadError::Invalid(diags) => diags.iter().map(|d| d.to_string()).collect(),
                    other => vec![other.to_string()],
                };
                for e in &errors {
                    tracing::error!("reload refused: {e}");
                }
                tracing::error!(
                    errors = errors.len(),
                    "reload refused: the topology file has errors; the running topology carries on unchanged"
                );
                self.report(running, "refused", json!({ "errors": errors }));
                return Outcome::Kept;
            }
        };
        new.settings.kafka = new.settings.kafka.clone().with_options(&self.kafka_options);
        let changes = diff(running, &new);
        let version = Version {
            hash,
            loaded_at: chrono::Utc::now(),
        };
        for line in changes.to_string().lines() {
            tracing::info!("reload: {line}");
        }
        let changes_json = serde_json::to_value(&changes).unwrap_or_default();
        // processors swap live unless their loop restarts anyway
        let loop_restarts = crate::cmd::processing_subtopology(&new)
            .is_ok_and(|sub| changes.restart.contains(&sub.id));
        let mut swapping = false;
        if !changes.live.is_empty() && !loop_restarts {
            match self.offer(&new) {
                Ok(Some(applied_before)) => {
                    self.waiting = Some(Waiting {
                        applied_before,
                        since: started,
                        version: version.clone(),
                        changes: changes_json.clone(),
                    });
                    swapping = true;
                }
                // this process runs no processing loop: nothing to swap
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the new processors cannot be built; the running topology carries on unchanged");
                    self.report(running, "refused", json!({ "errors": [e.to_string()] }));
                    return Outcome::Kept;
                }
            }
        }
        if changes.restarts() {
            self.restarting = Some((version, started, changes_json));
        } else if !swapping {
            // nothing to wait for: comments or tests changed, or no loop runs here
            let result = if changes.is_empty() {
                "unchanged"
            } else {
                "applied"
            };
            self.current = version;
            self.report(
                &new,
                result,
                json!({ "changes": changes_json, "latency_ms": 0 }),
            );
        }
        // until the loop has swapped, /api/topology shows the version that runs
        Outcome::Replace {
            restart: changes.restarts().then_some(changes.restart),
            topology: Box::new(new),
        }
    }

    /// `weir run` restarted the sub-topologies of the last reload: its version runs.
    pub fn restarted(&mut self, running: &Topology) {
        let Some((version, since, changes)) = self.restarting.take() else {
            return;
        };
        let latency = since.elapsed().as_millis() as u64;
        self.current = version;
        let restarted = changes["restart"].clone();
        self.report(
            running,
            "restarted",
            json!({ "changes": changes, "restarted": restarted, "latency_ms": latency }),
        );
    }

    /// Builds the new pipelines and hands them to the loop; `None` when there is no loop.
    fn offer(&self, new: &Topology) -> anyhow::Result<Option<u64>> {
        let Some((swapper, count)) = &self.swapper else {
            return Ok(None);
        };
        let sub = crate::cmd::processing_subtopology(new)?;
        let mut pipelines = Vec::with_capacity(*count);
        for _ in 0..*count {
            pipelines.push(
                Pipeline::build(new, &sub, Some(&self.metrics))?.with_taps(self.taps.clone()),
            );
        }
        let before = swapper.applied();
        swapper.offer(pipelines);
        Ok(Some(before))
    }

    /// A swap the loop has made: the version is the running one now.
    fn settle(&mut self, running: &Topology) {
        let Some(w) = &self.waiting else { return };
        let Some((swapper, _)) = &self.swapper else {
            return;
        };
        if swapper.applied() <= w.applied_before {
            return;
        }
        let w = self.waiting.take().expect("waiting");
        let latency = w.since.elapsed();
        tracing::info!(
            latency_ms = latency.as_millis() as u64,
            hash = %w.version.hash,
            "reload applied: the new processors run from a transaction boundary"
        );
        self.current = w.version;
        self.report(
            running,
            "applied",
            json!({ "changes": w.changes, "latency_ms": latency.as_millis() as u64 }),
        );
    }
}
