//! The `websocket` sink: a live, best-effort (at most once) greeting per clean record,
//! formatted from the topology's template and handed to the web server, which broadcasts it.
//! It reads only committed records (`read_committed`), from the end of the topic, and never
//! commits offsets: a live view starts from now.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_topology::config::KafkaSettings;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
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

    fn schema_problems(&self, input: &weir_topology::schema::Schema) -> Vec<String> {
        placeholders(&self.message)
            .filter(|f| input.field(f).is_none())
            .map(|f| {
                format!(
                    "the message names {{{f}}}, which the clean rows do not have{} (their fields: {})",
                    weir_topology::diagnostic::did_you_mean(f, input.names()),
                    input.names().collect::<Vec<_>>().join(", ")
                )
            })
            .collect()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The `{field}` names of a template.
pub fn placeholders(template: &str) -> impl Iterator<Item = &str> {
    template
        .split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(f, _)| f))
}

/// `Hello {full_name}!` with the record's fields; an unknown or null field is empty. The
/// result is text: the page shows it as text, never as HTML.
pub fn render(template: &str, record: &serde_json::Value) -> String {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) => {
                let field = &after[..close];
                match record.get(field) {
                    Some(serde_json::Value::String(s)) => out.push_str(s),
                    Some(serde_json::Value::Null) | None => {}
                    Some(other) => out.push_str(&other.to_string()),
                }
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&rest[open..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Reads `topic` from its end and calls `publish` with each greeting as a JSON message
/// (`{"type":"greeting","text":…,"ts":…,"at":…}`: the record's timestamp and when it was
/// broadcast, in ms since the epoch, `at` with µs as decimals) until `shutdown`. Blocks.
pub fn run(
    kafka: &KafkaSettings,
    topic: &str,
    template: &str,
    publish: &dyn Fn(String),
    shutdown: Arc<AtomicBool>,
) -> Result<(), rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka
        .reader("live", "weir-live", |c| {
            c.set("fetch.wait.max.ms", "50")
                .set("queued.max.messages.kbytes", "2048")
                .set("fetch.max.bytes", "2097152")
                .set("max.partition.fetch.bytes", "262144")
                // not librdkafka's 1 s pause after the local queue was full: greetings would lag
                .set("fetch.queue.backoff.ms", "10");
        })
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30))?;
    let mut tpl = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            tpl.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&tpl)?;
    tracing::info!(
        topic,
        "websocket sink started: greeting each committed record from now on"
    );
    while !shutdown.load(Ordering::Relaxed) {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let Ok(msg) = result else { continue };
        let Some(record) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
        else {
            continue;
        };
        let text = render(template, &record);
        let ts = msg.timestamp().to_millis().unwrap_or(0);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as f64 / 1000.0)
            .unwrap_or(0.0);
        publish(
            serde_json::json!({"type": "greeting", "text": text, "ts": ts, "at": at}).to_string(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_fields_as_plain_text() {
        let r = json!({"full_name": "<img src=x onerror=alert(1)>", "age": 31, "state": null});
        assert_eq!(
            render("Hello {full_name}!", &r),
            "Hello <img src=x onerror=alert(1)>!"
        );
        assert_eq!(render("{age} {state}{nope} {", &r), "31  {");
    }
}
