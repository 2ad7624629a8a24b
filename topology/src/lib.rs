//! Weir's core: what every component builds on.
//!
//! The topology file model (sources, processors, sinks and their `inputs`), its validation,
//! the records that flow between nodes, the processor traits and the metrics registry live
//! here. Components in `processors/`, `sinks/` and `web/` depend on this crate; only the
//! `weir` binary knows every component.
//!
//! The topology files that ship (`users.toml`) sit beside this crate's `Cargo.toml`.
