//! Weir's core: what every component builds on.
//!
//! - [`config`]: the topology file model and its parser; [`load`] adds the graph's checks
//!   and collects every problem with its `file:line:column` before anything connects
//!   ([`diagnostic`], [`duration`], [`interpolate`]).
//! - [`component`]: what a component declares (kind, accepted and emitted record types,
//!   topic) and the [`component::Registry`] the binary fills; [`build`] is what a node
//!   becomes when it runs (a processor or a topic sink's encoder) and why it cannot.
//! - [`graph`]: input checks, cycles, and the split into sub-topologies at topics;
//!   [`describe`] prints it; [`diff`] says what an edit changes and how it applies.
//! - [`record`]: records in flight, the clean row and failures; [`fields`] reads the fields
//!   of a raw JSON record that the rules name, without a DOM; [`schema`] is what a clean row
//!   holds, known when the topology is built; `spare` keeps a thread's byte buffers (values,
//!   outputs) and field slots from one record for the next.
//! - [`pipeline`]: a sub-topology compiled into processors and sink encoders; the same code
//!   runs in `weir process`, `weir test` and the engine.
//! - [`source`]: the Kafka source component (decodes raw bytes as JSON).
//! - [`engine`]: the exactly-once Kafka → Kafka loop of a sub-topology; [`kafka`] makes every
//!   librdkafka client from the `[kafka]` section; [`stall`] notices a consumer that hands
//!   over nothing though records wait.
//! - [`metrics`]: Prometheus metrics shared by every component; [`tap`]: live samples of the
//!   records on an edge (`weir tap`).
//!
//! Components in `processors/`, `sinks/` and `web/` depend on this crate; only the `weir`
//! binary knows every component. The topology files that ship (`users.toml`) sit beside
//! this crate's `Cargo.toml`.

pub mod build;
pub mod component;
pub mod config;
pub mod describe;
pub mod diagnostic;
pub mod diff;
pub mod duration;
pub mod engine;
pub mod fields;
pub mod graph;
pub mod interpolate;
pub mod kafka;
pub mod load;
pub mod metrics;
pub mod pipeline;
pub mod record;
pub mod schema;
pub mod source;
mod spare;
pub mod stall;
pub mod tap;

pub use build::{BuildError, Built, OutRecord, Processor, SinkEncoder};
pub use component::{ComponentType, DataType, NodeConfig, NodeKind, OutputSpec, Registry};
pub use config::{LoadError, Node, Topology};
pub use duration::Duration;
pub use load::{load_file, load_str};
pub use pipeline::Pipeline;
pub use record::{Body, CleanRow, Envelope, Failure, Origin};
