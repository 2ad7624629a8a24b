//! `weir ingest`: raw records into the raw topic.
//!
//! - [`randomuser`]: polls the randomuser.me API; every `results[]` object is sent whole and
//!   unchanged, keyed by `login.uuid`.
//! - [`synthetic`]: randomuser-shaped users made locally, deterministic per seed, with an
//!   optional fraction of bad records of many kinds — for offline runs and load.
//! - [`producer`]: the idempotent, `acks=all` producer both use, with headers that say the
//!   source and the fetch time.

pub mod producer;
pub mod randomuser;
pub mod synthetic;
