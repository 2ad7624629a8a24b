//! SIGINT and SIGTERM as a flag that blocking loops poll, so they can finish their work
//! (commit a transaction, flush a producer) before the process exits; SIGHUP as a flag that
//! asks `weir run` to reload its topology file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// A runtime for a small signal thread, and the signals it waits for: registered before
/// this returns, so no signal is missed.
fn listen(kinds: &[SignalKind]) -> std::io::Result<(tokio::runtime::Runtime, Vec<Signal>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let signals = kinds
        .iter()
        .map(|k| rt.block_on(async { signal(*k) }))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok((rt, signals))
}

/// A flag set by the first SIGINT or SIGTERM. A small thread waits for the signals.
pub fn shutdown_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let (rt, mut signals) = listen(&[SignalKind::terminate(), SignalKind::interrupt()])?;
    let (mut int, mut term) = (signals.remove(1), signals.remove(0));
    std::thread::Builder::new()
        .name("weir-signals".into())
        .spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: finishing and stopping"),
                    _ = int.recv() => tracing::info!("SIGINT: finishing and stopping"),
                }
            });
            set.store(true, Ordering::SeqCst);
        })?;
    Ok(flag)
}

/// A flag set by each SIGHUP (the reader clears it): `weir run` reloads its topology file.
pub fn flag_on_hangup() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let (rt, mut signals) = listen(&[SignalKind::hangup()])?;
    let mut hup = signals.remove(0);
    std::thread::Builder::new()
        .name("weir-sighup".into())
        .spawn(move || {
            rt.block_on(async {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading the topology file");
                    set.store(true, Ordering::SeqCst);
                }
            });
        })?;
    Ok(flag)
}
