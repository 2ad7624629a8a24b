//! The `weir` crate: the command line (`src/main.rs`, one module per subcommand under
//! `src/cmd/`) and the parts of it that tests drive directly:
//!
//! - [`admin`]: the admin API's answers (windows, seal, audit, readiness) for the web server.
//! - [`ingest`]: raw records into Kafka, from randomuser.me or a synthetic generator.
//! - [`registry`]: every component type the binary knows.
//! - [`signals`]: SIGINT/SIGTERM as a shutdown flag for blocking loops.

pub mod admin;
pub mod ingest;
pub mod registry;
pub mod signals;
