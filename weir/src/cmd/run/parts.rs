//! The running parts of `weir run` — the exactly-once loop of the processing sub-topology,
//! the services (sinks with a loop of their own) and the HTTP server — each with a stop flag
//! of its own, so a reload can restart only the sub-topologies an edit touches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use weir_topology::engine::{self, EngineError, RunSummary, Swapper};
use weir_topology::graph::sub_topologies;
use weir_topology::metrics::Metrics;
use weir_topology::Topology;

use super::engine_job::engine_job;
use super::RunArgs;
use weir::admin::AdminSlot;
use weir::http::Served;
use weir::services::{LiveSettings, Started};

/// The exactly-once loop's thread.
pub(super) struct Engine {
    stop: Arc<AtomicBool>,
    pub thread: JoinHandle<Result<RunSummary, EngineError>>,
    /// Hands the loop new pipelines, and how many it runs.
    pub swapper: (Swapper, usize),
}

/// What a restarted service keeps: the HTTP server's slot for its admin API and the live
/// page's feed (its clients stay connected).
#[derive(Default)]
pub(super) struct Carried {
    slot: Option<Arc<AdminSlot>>,
    live: Option<Arc<weir_web::live::Live>>,
}

/// A running service.
pub(super) struct Service {
    name: String,
    stop: Arc<AtomicBool>,
    started: Started,
    /// What the HTTP server serves of its admin API (kept across its restarts).
    slot: Option<Arc<AdminSlot>>,
}

type Web = (
    actix_web::dev::ServerHandle,
    JoinHandle<()>,
    Arc<AtomicBool>,
);

/// Everything `weir run` runs.
pub(super) struct Parts<'a> {
    args: &'a RunArgs,
    metrics: Metrics,
    live: LiveSettings,
    pub topology: Topology,
    pub engine: Option<Engine>,
    pub services: Vec<Service>,
    web: Option<Web>,
    /// What `/api/topology` answers.
    status: Arc<RwLock<serde_json::Value>>,
    /// The taps open on the loop's edges (`weir tap`), kept across its restarts.
    pub taps: Arc<weir_topology::tap::Taps>,
    /// Set when a service that writes data failed.
    pub failed: bool,
}

impl<'a> Parts<'a> {
    pub fn new(
        args: &'a RunArgs,
        topology: Topology,
        metrics: Metrics,
        live: LiveSettings,
        status: Arc<RwLock<serde_json::Value>>,
    ) -> Self {
        Self {
            args,
            metrics,
            live,
            topology,
            engine: None,
            services: Vec::new(),
            web: None,
            status,
            taps: weir_topology::tap::Taps::new(),
            failed: false,
        }
    }

    fn selected(&self, id: usize) -> bool {
        self.args.subtopologies.is_empty() || self.args.subtopologies.contains(&id)
    }

    /// Starts the services of the selected sub-topologies in `subs` (all when `None`);
    /// `carried` holds, by node name, what a restarted service keeps: its admin slot and
    /// its live feed.
    pub fn start_services(
        &mut self,
        subs: Option<&[usize]>,
        carried: &mut HashMap<String, Carried>,
    ) -> anyhow::Result<()> {
        let processing = crate::cmd::processing_subtopology(&self.topology)?.id;
        for other in sub_topologies(&self.topology) {
            if other.id == processing
                || !self.selected(other.id)
                || subs.is_some_and(|s| !s.contains(&other.id))
            {
                continue;
            }
            for name in &other.nodes {
                self.start_service(name, carried.remove(name).unwrap_or_default())?;
            }
        }
        Ok(())
    }

    fn start_service(&mut self, name: &str, before: Carried) -> anyhow::Result<()> {
        let node = self.topology.node(name).expect("node of the topology");
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = weir::services::StartContext {
            topology: &self.topology,
            node,
            instance: &self.args.instance,
            metrics: &self.metrics,
            shutdown: stop.clone(),
            live: self.live.clone(),
            live_feed: before.live,
        };
        let Some(started) = weir::services::start(&ctx)? else {
            return Ok(());
        };
        let slot = match (before.slot, &started.admin) {
            (Some(slot), Some(admin)) => {
                slot.set(admin.clone());
                Some(slot)
            }
            (None, Some(admin)) => Some(AdminSlot::new(admin.clone())),
            (_, None) => None,
        };
        self.services.push(Service {
            name: name.to_owned(),
            stop,
            started,
            slot,
        });
        Ok(())
    }

    /// Starts the exactly-once loop when its sub-topology is selected.
    pub fn start_engine(&mut self) -> anyhow::Result<()> {
        let sub = crate::cmd::processing_subtopology(&self.topology)?;
        if !self.selected(sub.id) {
            return Ok(());
        }
        let (mut job, config) =
            engine_job(&self.topology, &sub, self.args, &self.metrics, &self.taps)?;
        let swapper = (job.swapper(), self.args.processing_threads as usize);
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, metrics) = (stop.clone(), self.metrics.clone());
        let thread = std::thread::Builder::new()
            .name(format!("weir-eos-{}", sub.id))
            .spawn(move || {
                let topics = job.topics();
                engine::run(&mut job, topics, config, metrics, flag)
            })?;
        self.engine = Some(Engine {
            stop,
            thread,
            swapper,
        });
        Ok(())
    }

    fn served(&self) -> Served {
        Served {
            admins: self
                .services
                .iter()
                .filter_map(|s| {
                    let slot: Arc<dyn weir_web::Admin> = s.slot.clone()?;
                    Some((s.name.clone(), slot))
                })
                .collect(),
            live: self.services.iter().find_map(|s| s.started.live.clone()),
            taps: self.engine.as_ref().map(|_| self.taps.clone()),
        }
    }

    /// What decides whether the HTTP server must start again: the sinks it serves by name,
    /// whether it has a live feed, the dead-letter topics its panel follows.
    fn web_shape(&self) -> (Vec<String>, bool, Vec<String>) {
        let served = self.served();
        (
            served.admins.into_iter().map(|(n, _)| n).collect(),
            served.live.is_some(),
            weir::dead_letters::topics(&self.topology),
        )
    }

    pub fn start_web(&mut self, settings: &weir::http::HttpSettings) -> anyhow::Result<()> {
        if self.args.no_http {
            return Ok(());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (handle, thread) = weir::http::start(
            &self.topology,
            &self.metrics,
            self.served(),
            self.status.clone(),
            settings,
            stop.clone(),
        )?;
        self.web = Some((handle, thread, stop));
        Ok(())
    }

    fn stop_web(&mut self) {
        if let Some((handle, thread, stop)) = self.web.take() {
            stop.store(true, Ordering::SeqCst);
            futures::executor::block_on(handle.stop(true));
            let _ = thread.join();
        }
    }

    /// True when a part stopped on its own: the loop, or a service that writes data.
    pub fn something_ended(&self) -> bool {
        self.engine.as_ref().is_some_and(|e| e.thread.is_finished())
            || self
                .services
                .iter()
                .any(|s| s.started.critical && s.started.thread.is_finished())
    }

    /// Restarts the sub-topologies `subs` (numbers of `new`) with `new`, and keeps `new` as
    /// the running topology; the loop commits what it holds before it stops. `Some` error
    /// when the loop ended with one (the process ends with it).
    pub fn restart(
        &mut self,
        new: Topology,
        subs: &[usize],
        http: &weir::http::HttpSettings,
    ) -> anyhow::Result<Option<EngineError>> {
        let began = Instant::now();
        let web_before = self.web_shape();
        let new_subs = sub_topologies(&new);
        let processing = crate::cmd::processing_subtopology(&new)?.id;
        // a node of a restarted sub-topology, or one the new file has no more
        let restarting = |name: &str| {
            !new_subs.iter().any(|s| s.nodes.iter().any(|n| n == name))
                || new_subs
                    .iter()
                    .any(|s| subs.contains(&s.id) && s.nodes.iter().any(|n| n == name))
        };
        let (stopping, kept): (Vec<Service>, Vec<Service>) = std::mem::take(&mut self.services)
            .into_iter()
            .partition(|s| restarting(&s.name));
        self.services = kept;
        for s in &stopping {
            s.stop.store(true, Ordering::SeqCst);
        }
        if subs.contains(&processing) {
            if let Some(e) = self.engine.take() {
                e.stop.store(true, Ordering::SeqCst);
                match e.thread.join() {
                    Ok(Ok(summary)) => tracing::info!(
                        records = summary.records,
                        committed = summary.committed_transactions,
                        "reload: the exactly-once loop committed and stopped; it starts again with the new topology"
                    ),
                    Ok(Err(e)) => return Ok(Some(e)),
                    Err(_) => anyhow::bail!("the engine thread panicked"),
                }
            }
        }
        let mut carried = HashMap::new();
        for s in stopping {
            self.failed |=
                weir::services::join_one(&s.name, s.started.thread) && s.started.critical;
            if let Some(undo) = s.started.on_restart {
                undo();
            }
            carried.insert(
                s.name,
                Carried {
                    slot: s.slot,
                    live: s.started.live,
                },
            );
        }
        self.topology = new;
        let others: Vec<usize> = subs
            .iter()
            .copied()
            .filter(|id| *id != processing)
            .collect();
        self.start_services(Some(&others), &mut carried)?;
        if subs.contains(&processing) {
            self.start_engine()?;
        }
        if self.web.is_some() && self.web_shape() != web_before {
            tracing::info!("reload: the HTTP server starts again (the sinks it serves changed)");
            self.stop_web();
            self.start_web(http)?;
        }
        tracing::info!(
            subtopologies = ?subs,
            ms = began.elapsed().as_millis() as u64,
            "reload: restarted the sub-topologies the edit touches, with the new topology"
        );
        Ok(None)
    }

    /// Stops everything (the process is stopping): the HTTP server, the services, the loop.
    pub fn stop_all(&mut self) -> Option<JoinHandle<Result<RunSummary, EngineError>>> {
        for s in &self.services {
            s.stop.store(true, Ordering::SeqCst);
        }
        if let Some(e) = &self.engine {
            e.stop.store(true, Ordering::SeqCst);
        }
        self.stop_web();
        let services: Vec<(String, Started)> = std::mem::take(&mut self.services)
            .into_iter()
            .map(|s| (s.name, s.started))
            .collect();
        self.failed |= weir::services::join(services);
        self.engine.take().map(|e| e.thread)
    }
}
