//! The `postgres` sink: the clean topic into a table in tumbling windows, exactly once.
//!
//! - [`config`]: the node's configuration (table, column mapping, windows, batches, late policy).
//! - [`window`]: window arithmetic and the watermark, as pure logic.
//! - [`writer`]: one batch in one transaction — rows, ledger, window counts, rejects, offsets;
//!   [`rows`] is what a batch holds, [`table`] the table it goes to, [`copy`] the batch in
//!   `COPY`'s formats, [`binary`] column values in PostgreSQL's binary `COPY` form, [`error`]
//!   why a batch did not commit.
//! - [`sink`]: the consumer loop that feeds the writer and seeks to the stored offsets.
//! - [`outbox`]: the sink's dead letters, forwarded from PostgreSQL to Kafka exactly once.
//! - [`upstream`]: whether the application upstream has processed its input (seal safety).
//! - [`admin`]: seal and audit a window (the calls behind the HTTP API and `weir audit`).
//! - [`metrics`]: the sink's Prometheus metrics.

pub mod admin;
pub mod binary;
pub mod config;
pub mod copy;
pub mod error;
pub mod metrics;
pub mod outbox;
pub mod rows;
pub mod sink;
pub mod table;
pub mod upstream;
pub mod window;
pub mod writer;

pub use config::{LatePolicy, PostgresSinkConfig};
