//! Weir sinks: where records leave a topology.
//!
//! - [`kafka`]: writes records to a topic inside the sub-topology's transaction; nodes that
//!   name it as an input read that topic in a sub-topology of their own.
//! - [`dead_letter`]: writes failed records, unchanged, with headers that say why and whence.
//! - [`postgres`]: the windowed PostgreSQL sink (exactly once through stored offsets).
//! - [`websocket`]: the live greeting feed.

pub mod dead_letter;
pub mod kafka;
pub mod postgres;
pub mod websocket;

use weir_topology::component::{parse_config, ComponentType};
use weir_topology::NodeKind;

/// The sink component types, for the binary's registry.
pub fn components() -> Vec<ComponentType> {
    vec![
        ComponentType {
            name: "kafka",
            kind: NodeKind::Sink,
            parse: parse_config::<kafka::KafkaSinkConfig>,
        },
        ComponentType {
            name: "dead_letter",
            kind: NodeKind::Sink,
            parse: parse_config::<dead_letter::DeadLetterConfig>,
        },
        ComponentType {
            name: "postgres",
            kind: NodeKind::Sink,
            parse: parse_config::<postgres::PostgresSinkConfig>,
        },
        ComponentType {
            name: "websocket",
            kind: NodeKind::Sink,
            parse: parse_config::<websocket::WebsocketSinkConfig>,
        },
    ]
}
