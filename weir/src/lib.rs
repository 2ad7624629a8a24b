//! The `weir` crate: the command line (`src/main.rs`, one module per subcommand under
//! `src/cmd/`) and the parts of it that tests drive directly:
//!
//! - [`admin`]: the admin API's answers (windows, seal, audit, readiness) for the web server;
//!   [`http`] starts that server for `weir run`.
//! - [`dead_letters`]: which topics a topology writes dead letters to.
//! - [`ingest`]: raw records into Kafka, from randomuser.me or a synthetic generator.
//! - [`registry`]: every component type the binary knows.
//! - [`services`]: the sinks with a loop of their own (PostgreSQL, websocket), started by
//!   `weir run` whatever their type, and what the HTTP server serves of each.
//! - [`signals`]: SIGINT/SIGTERM as a shutdown flag for blocking loops.

pub mod admin;
pub mod dead_letters;
pub mod http;
pub mod ingest;
pub mod registry;
pub mod services;
pub mod signals;
