//! Weir processors: the nodes between a source and a sink.
//!
//! - [`validate`]: checks raw JSON records against rules and sends every violation, as a
//!   reason code, to its `invalid` output.
//! - [`clean`]: turns a validated record into a clean row whose fields the topology file
//!   declares (each from a path through a few operations).
//! - [`text`]: the Unicode-aware text helpers both use.
//!
//! Both read the fields the source found for their paths, with no JSON DOM per record.

pub mod clean;
pub mod text;
pub mod validate;

use weir_topology::component::{parse_config, ComponentType};
use weir_topology::NodeKind;

/// The processor component types, for the binary's registry.
pub fn components() -> Vec<ComponentType> {
    vec![
        ComponentType {
            name: "validate",
            kind: NodeKind::Processor,
            parse: parse_config::<validate::ValidateConfig>,
        },
        ComponentType {
            name: "clean",
            kind: NodeKind::Processor,
            parse: parse_config::<clean::CleanConfig>,
        },
    ]
}
