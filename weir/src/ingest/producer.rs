//! The producer behind `weir ingest`: idempotent, `acks=all`, many sends in flight, and
//! headers that say where each record came from and when it was fetched.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

/// Header naming the ingest source (`randomuser`, `synthetic`).
pub const SOURCE_HEADER: &str = "weir.ingest.source";
/// Header with the fetch (or generation) time, RFC 3339 UTC.
pub const FETCHED_AT_HEADER: &str = "weir.ingest.fetched_at";

/// Delivery counts, shared with the producer's callback thread.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    /// Records handed to the producer.
    pub sent: AtomicU64,
    /// Records the broker acknowledged.
    pub delivered: AtomicU64,
    /// Records that could not be delivered (after librdkafka's retries).
    pub failed: AtomicU64,
}

/// Counts deliveries and logs failures (after librdkafka's own retries).
pub struct CountingContext {
    stats: Arc<DeliveryStats>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                let n = self.stats.failed.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    tracing::error!(error = %e, failed = n + 1, "a record could not be delivered");
                }
            }
        }
    }
}

/// Settings of the ingest producer.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    /// The value of the `weir.ingest.source` header.
    pub source: &'static str,
    /// How long a batch may wait to fill (higher: more throughput, more latency).
    pub linger: Duration,
}

/// The idempotent producer of raw records.
///
/// Delivery reports are served on the sending thread ([`IngestProducer::send`] every few
/// hundred records, [`IngestProducer::wait`] while idle), not on a thread of their own: each
/// message's memory is then freed by the thread that allocated it, which measured faster
/// than a polling thread (cross-thread frees were a fifth of the CPU).
pub struct IngestProducer {
    producer: BaseProducer<CountingContext>,
    settings: ProducerSettings,
    stats: Arc<DeliveryStats>,
    unpolled: std::cell::Cell<u32>,
}

impl IngestProducer {
    pub fn new(settings: ProducerSettings) -> Result<Self, KafkaError> {
        let stats = Arc::new(DeliveryStats::default());
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("client.id", format!("weir-ingest-{}", settings.source))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("batch.num.messages", "10000")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "1000000")
            .set("queue.buffering.max.kbytes", "524288")
            // measured: lz4 gives the most records/s on one node (less for the broker to
            // write); every record gets a delivery report (turning successes off made
            // freeing slower and throughput lower)
            .set("compression.type", "lz4")
            .set_log_level(RDKafkaLogLevel::Warning)
            .create_with_context(CountingContext {
                stats: stats.clone(),
            })?;
        Ok(Self {
            producer,
            settings,
            stats,
            unpolled: std::cell::Cell::new(0),
        })
    }

    pub fn stats(&self) -> &DeliveryStats {
        &self.stats
    }

    /// Records the broker acknowledged so far.
    pub fn delivered(&self) -> u64 {
        self.stats.delivered.load(Ordering::Relaxed)
    }

    /// Enqueues one record; when the local queue is full, waits for room (never drops).
    pub fn send(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        fetched_at: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Result<(), KafkaError> {
        let mut headers = OwnedHeaders::new_with_capacity(2 + extra.len()).insert(Header {
            key: SOURCE_HEADER,
            value: Some(self.settings.source),
        });
        if let Some(at) = fetched_at {
            headers = headers.insert(Header {
                key: FETCHED_AT_HEADER,
                value: Some(at),
            });
        }
        for (k, v) in extra {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.settings.topic)
            .payload(value)
            .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.stats.sent.fetch_add(1, Ordering::Relaxed);
                    let n = self.unpolled.get() + 1;
                    if n >= 256 {
                        self.producer.poll(Duration::ZERO);
                        self.unpolled.set(0);
                    } else {
                        self.unpolled.set(n);
                    }
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(Duration::from_millis(2));
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Serves the delivery reports that are ready, then sleeps `d` (use instead of sleeping).
    /// Not `poll(d)`: librdkafka rounds what is left of a deadline down to whole
    /// milliseconds, so polling for a millisecond spins.
    pub fn wait(&self, d: Duration) {
        self.producer.poll(Duration::ZERO);
        std::thread::sleep(d);
    }

    /// Waits until every enqueued record is delivered or has failed.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }

    /// Records enqueued but not yet delivered.
    pub fn in_flight(&self) -> i32 {
        self.producer.in_flight_count()
    }
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
