//! The tools beside the product's commands: `weir ingest` (raw records into Kafka, for the
//! stack and the benchmarks) and `weir bench` (measurements on this machine). They use the
//! commands' helpers ([`crate::cmd`]); no command uses them.

pub mod bench;
pub mod ingest;
