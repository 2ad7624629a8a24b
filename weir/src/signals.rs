//! SIGINT and SIGTERM as a flag that blocking loops poll, so they can finish their work
//! (commit a transaction, flush a producer) before the process exits; SIGHUP as a flag that
//! asks `weir run` to reload its topology file.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A flag set by the first SIGINT or SIGTERM. A small thread waits for the signals.
pub fn shutdown_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let set = flag.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // register the handlers before returning, so no signal is missed
    let mut term = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    let mut int = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut hup = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    })?;
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
