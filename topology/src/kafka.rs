//! Every librdkafka client Weir makes starts here, from the topology's `[kafka]` section
//! ([`KafkaSettings`]: bootstrap servers and options such as `security.protocol`, `sasl.*`,
//! `ssl.*`, plus `-X KEY=VALUE` from the command line): the engine's consumer and
//! transactional producer, the sinks' consumers, the dead-letter reader and replay, the
//! audit scan, readiness, ingest and the benchmarks. A client that bypassed this would fail
//! on a secured cluster.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;

use crate::config::KafkaSettings;

/// Why a command cannot use the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The broker refused the credentials, or the TLS handshake failed: retrying cannot help.
    #[error("Kafka at {bootstrap} refused the connection: {message} (check sasl.username, sasl.password, sasl.mechanisms, ssl.ca.location)")]
    Refused { bootstrap: String, message: String },
    /// The settings are not valid librdkafka settings.
    #[error("Kafka client settings for {bootstrap}: {source}")]
    Settings {
        bootstrap: String,
        source: KafkaError,
    },
}

impl ConsumerContext for Watch {}

/// Logs a client's error as rust-rdkafka's default context does, except the end of a
/// partition: rust-rdkafka hands every consumer error to the context as well as to `poll`, and
/// a consumer that asks for the end (`enable.partition.eof`) reads it from `poll`, where it is
/// news, not an error.
pub fn log_client_error(error: &KafkaError, reason: &str) {
    if is_partition_end(error) {
        tracing::debug!("librdkafka: {error}: {reason}");
    } else {
        tracing::error!("librdkafka: {error}: {reason}");
    }
}

/// The error is the end of a partition (as `poll` gives it, or as the context gets it).
fn is_partition_end(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_))
        || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF)
}

/// The context of a consumer that reads its partitions to their end: rust-rdkafka's default,
/// without an error logged each time a partition's end is reached ([`log_client_error`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadToEnd;

impl ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        log_client_error(&error, reason);
    }
}

impl ConsumerContext for ReadToEnd {}

/// Remembers the first error that retrying cannot mend (authentication, TLS).
#[derive(Default)]
struct Watch {
    refused: Mutex<Option<String>>,
}

impl ClientContext for Watch {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(
                RDKafkaErrorCode::Authentication
                    | RDKafkaErrorCode::SaslAuthenticationFailed
                    | RDKafkaErrorCode::SSL
            )
        ) {
            let mut r = self.refused.lock().unwrap();
            r.get_or_insert_with(|| reason.to_owned());
        }
    }
}

impl KafkaSettings {
    /// A client's configuration: the bootstrap servers, `client.id` `weir-{name}` (the node or
    /// job it serves), the client's own settings from `configure`, then every option of the
    /// section (an option wins over a client's setting of the same key). librdkafka's
    /// warnings and errors reach the log; its debug lines too when the options set `debug`.
    pub fn client(&self, name: &str, configure: impl FnOnce(&mut ClientConfig)) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", format!("weir-{name}"))
            .set_log_level(if self.options.contains_key("debug") {
                RDKafkaLogLevel::Debug
            } else {
                RDKafkaLogLevel::Warning
            });
        configure(&mut c);
        let mut options: Vec<_> = self.options.iter().collect();
        options.sort();
        for (k, v) in options {
            c.set(k, v);
        }
        c
    }

    /// A consumer that reads only committed records and commits nothing itself (the
    /// dead-letter reader, the replay's ledger, the audit, the upstream check, the live view):
    /// group `group`, then `configure`.
    pub fn reader(
        &self,
        name: &str,
        group: &str,
        configure: impl FnOnce(&mut ClientConfig),
    ) -> ClientConfig {
        self.client(name, |c| {
            c.set("group.id", group)
                .set("isolation.level", "read_committed")
                .set("enable.auto.commit", "false");
            configure(c);
        })
    }

    /// The same cluster with `options` over the section's (`-X KEY=VALUE`).
    pub fn with_options(mut self, options: &[(String, String)]) -> Self {
        self.options.extend(options.iter().cloned());
        self
    }

    /// Checks, before a command starts its clients, that the cluster takes these settings:
    /// a wrong password or a failed TLS handshake is an error within seconds, where
    /// librdkafka would retry it for ever. A cluster that does not answer within `patience`
    /// is not an error here (it may be starting; the command's clients wait for it).
    pub fn check(&self, patience: Duration) -> Result<(), ClusterError> {
        let consumer: BaseConsumer<Watch> = self
            .client("check", |c| {
                c.set_log_level(RDKafkaLogLevel::Emerg);
            })
            .create_with_context(Watch::default())
            .map_err(|source| ClusterError::Settings {
                bootstrap: self.bootstrap_servers.clone(),
                source,
            })?;
        let deadline = Instant::now() + patience;
        loop {
            let answered = consumer
                .fetch_metadata(None, Duration::from_millis(500))
                .is_ok();
            // errors reach the context only through a poll of the client's queue
            let _ = consumer.poll(Duration::ZERO);
            if let Some(message) = consumer.context().refused.lock().unwrap().take() {
                return Err(ClusterError::Refused {
                    bootstrap: self.bootstrap_servers.clone(),
                    message,
                });
            }
            if answered || Instant::now() > deadline {
                return Ok(());
            }
        }
    }

    /// Settings for `bootstrap_servers` with no options.
    pub fn plain(bootstrap_servers: &str) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.to_owned(),
            options: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_partition_is_not_an_error_but_the_rest_are() {
        assert!(is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::PartitionEOF
        )));
        assert!(is_partition_end(&KafkaError::PartitionEOF(3)));
        assert!(!is_partition_end(&KafkaError::Global(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_partition_end(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
    }

    #[test]
    fn options_win_over_a_clients_own_settings_and_name_it() {
        let k = KafkaSettings::plain("b:9092").with_options(&[
            ("security.protocol".into(), "SASL_SSL".into()),
            ("fetch.wait.max.ms".into(), "7".into()),
        ]);
        let c = k.client("live", |c| {
            c.set("fetch.wait.max.ms", "50").set("group.id", "g");
        });
        assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
        assert_eq!(c.get("client.id"), Some("weir-live"));
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("7"));
        assert_eq!(c.get("group.id"), Some("g"));
        let r = k.reader("audit", "weir-audit", |c| {
            c.set("enable.partition.eof", "true");
        });
        assert_eq!(r.get("isolation.level"), Some("read_committed"));
        assert_eq!(r.get("enable.auto.commit"), Some("false"));
        assert_eq!(r.get("group.id"), Some("weir-audit"));
        assert_eq!(r.get("security.protocol"), Some("SASL_SSL"));
    }
}
