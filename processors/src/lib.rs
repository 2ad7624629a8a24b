//! Weir processors: the nodes between a source and a sink.
//!
//! - [`validate`]: checks raw JSON records against rules and sends every violation, as a
//!   reason code, to its `invalid` output.
//! - [`clean`]: turns a validated randomuser.me record into the flat [`CleanRecord`].
//! - [`text`]: the Unicode-aware text helpers both use.
//!
//! [`CleanRecord`]: weir_topology::CleanRecord

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

/// Reads a dotted path (`name.first`) in a JSON value.
pub fn lookup<'a>(value: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}
