//! SIGINT and SIGTERM as a flag that blocking loops poll, so they can finish their work
//! (commit a transaction, flush a producer) before the process exits.

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
