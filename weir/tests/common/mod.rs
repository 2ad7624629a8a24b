//! Shared helpers for the integration tests that run against the real local stack.
//!
//! `deploy/dev test` starts Kafka and PostgreSQL and exports where they listen; these tests
//! fail with a clear message when run outside it, and never skip.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Reads a setting exported by `deploy/dev test`.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests through `deploy/dev test`")
    })
}

/// Kafka bootstrap servers of the local stack.
pub fn bootstrap() -> String {
    env("WEIR_KAFKA_BOOTSTRAP")
}

/// A name no other test (or earlier run) uses: prefix, process id, time and a counter.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{prefix}_{}_{nanos}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
