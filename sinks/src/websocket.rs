//! The `websocket` sink's configuration: a live, best-effort greeting per clean record,
//! broadcast to the browsers on the live page. (Its running part comes with the web server.)

use std::any::Any;

use serde::Deserialize;
use weir_topology::{DataType, NodeConfig, OutputSpec};

/// Broadcasts a message per clean record to websocket clients (at most once).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebsocketSinkConfig {
    /// The message template; `{field}` is replaced by the clean record's field.
    pub message: String,
    /// How many recent messages a new client receives first.
    #[serde(default = "default_history")]
    pub history: usize,
}

fn default_history() -> usize {
    20
}

impl NodeConfig for WebsocketSinkConfig {
    fn accepts(&self) -> &'static [DataType] {
        &[DataType::Clean]
    }

    fn outputs(&self) -> Vec<OutputSpec> {
        Vec::new()
    }

    fn detail(&self) -> String {
        format!("message: {:?}", self.message)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
