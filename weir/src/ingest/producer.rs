//! The producer behind `weir ingest`: idempotent, `acks=all`, many sends in flight, and
//! headers that say where each record came from and when it was fetched.

use std::cell::{Cell, RefCell};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rdsys;
use rdkafka::bindings::rd_kafka_vtype_t::*;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer, ProducerContext};
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

/// Counts deliveries, logs failures (after librdkafka's own retries) and releases each
/// record's slab (the delivery opaque is the slab's number).
pub struct CountingContext {
    stats: Arc<DeliveryStats>,
    pending: Arc<[AtomicU32]>,
}

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, slab: usize) {
        if let Some(n) = self.pending.get(slab) {
            n.fetch_sub(1, Ordering::Release);
        }
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
    /// The cluster, with `weir ingest -X key=value` as options over the producer's defaults.
    pub kafka: weir_topology::config::KafkaSettings,
    pub topic: String,
    /// The value of the `weir.ingest.source` header.
    pub source: &'static str,
    /// How long a batch may wait to fill (higher: more throughput, more latency).
    pub linger: Duration,
}

/// Bytes per slab of payload memory.
const SLAB_BYTES: usize = 1 << 20;
/// Most slabs at once (with librdkafka's 64 MB queue, about 65 are ever in use).
const MAX_SLABS: usize = 1024;
/// Delivery opaque of a record whose payload librdkafka copied (too big for a slab).
const COPIED: usize = usize::MAX;

/// Payload memory lent to librdkafka instead of copied into a message of its own.
///
/// A record's value is appended to the current slab, and librdkafka gets a pointer to it
/// (no `RD_KAFKA_MSG_F_COPY`). `pending[i]` counts slab `i`'s records not yet reported; a
/// full slab is reused once that count is back to 0, so a million records cost a few dozen
/// 1 MB slabs instead of a million allocations of a kilobyte and a half (measured: the copy
/// and its `malloc`/`free` were a fifth of the ingest's CPU).
struct Slabs {
    /// Each has SLAB_BYTES of capacity and never grows: librdkafka holds pointers into it.
    slabs: Vec<Vec<u8>>,
    current: usize,
    pending: Arc<[AtomicU32]>,
}

impl Slabs {
    fn new() -> Self {
        Self {
            slabs: vec![Vec::with_capacity(SLAB_BYTES)],
            current: 0,
            pending: (0..MAX_SLABS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// A slab with room for `len` bytes: the current one, a drained one, or a new one.
    /// None when every slab is in use (the caller serves delivery reports and asks again).
    fn room(&mut self, len: usize) -> Option<usize> {
        let fits = |v: &Vec<u8>| v.capacity() - v.len() >= len;
        if fits(&self.slabs[self.current]) {
            return Some(self.current);
        }
        let drained = (0..self.slabs.len())
            .find(|&i| i != self.current && self.pending[i].load(Ordering::Acquire) == 0);
        let next = match drained {
            Some(i) => i,
            None if self.slabs.len() < MAX_SLABS => {
                self.slabs.push(Vec::with_capacity(SLAB_BYTES));
                self.slabs.len() - 1
            }
            None => return None,
        };
        self.slabs[next].clear();
        self.current = next;
        Some(next)
    }
}

/// librdkafka headers, destroyed unless a produce call took them.
struct Headers(*mut rdsys::rd_kafka_headers_t);

impl Headers {
    fn with_capacity(n: usize) -> Self {
        // SAFETY: allocates an empty list; never NULL (librdkafka aborts when out of memory)
        Self(unsafe { rdsys::rd_kafka_headers_new(n) })
    }

    fn add(&mut self, name: &str, value: &[u8]) {
        // SAFETY: a live list; librdkafka copies name and value (lengths given, no NUL needed)
        unsafe {
            rdsys::rd_kafka_header_add(
                self.0,
                name.as_ptr().cast(),
                name.len() as isize,
                value.as_ptr().cast(),
                value.len() as isize,
            );
        }
    }
}

impl Drop for Headers {
    fn drop(&mut self) {
        // SAFETY: still ours: a successful produce call is followed by mem::forget
        unsafe { rdsys::rd_kafka_headers_destroy(self.0) }
    }
}

/// A librdkafka topic handle, destroyed before the producer that made it.
struct TopicHandle(*mut rdsys::rd_kafka_topic_t);

impl Drop for TopicHandle {
    fn drop(&mut self) {
        // SAFETY: made by rd_kafka_topic_new in IngestProducer::new, destroyed once, and
        // declared before the producer in IngestProducer, so dropped while it is alive.
        unsafe { rdsys::rd_kafka_topic_destroy(self.0) }
    }
}

/// The idempotent producer of raw records.
///
/// Delivery reports are served on the sending thread ([`IngestProducer::send`] every few
/// hundred records, [`IngestProducer::wait`] while idle), not on a thread of their own: each
/// message's memory is then freed by the thread that allocated it, which measured faster
/// than a polling thread (cross-thread frees were a fifth of the CPU). Values are lent
/// from [`Slabs`], not copied.
pub struct IngestProducer {
    // drop order: the topic handle, then the producer (which purges, flushes and joins
    // librdkafka's threads), then the slabs it may still have been reading
    topic: TopicHandle,
    producer: BaseProducer<CountingContext>,
    slabs: RefCell<Slabs>,
    settings: ProducerSettings,
    stats: Arc<DeliveryStats>,
    unpolled: Cell<u32>,
}

impl IngestProducer {
    pub fn new(settings: ProducerSettings) -> Result<Self, KafkaError> {
        let stats = Arc::new(DeliveryStats::default());
        let slabs = Slabs::new();
        let config = settings
            .kafka
            .client(&format!("ingest-{}", settings.source), |c| {
                c.set("enable.idempotence", "true")
                    .set("acks", "all")
                    .set("linger.ms", settings.linger.as_millis().to_string())
                    .set("batch.num.messages", "10000")
                    .set("batch.size", "1000000")
                    .set("queue.buffering.max.messages", "1000000")
                    // 64 MB (0.2 s at full speed) measured as fast as 512 MB, at a third of the memory
                    .set("queue.buffering.max.kbytes", "65536")
                    // the Java client's default: a key lands in the partition Kafka's own
                    // producers (and Kafka Streams) would pick
                    .set("partitioner", "murmur2_random")
                    // Kafka's own default. Measured on one 2-core node with the broker beside it:
                    // uncompressed gave 20–30% more records/s than lz4 (compressing was a fifth of
                    // weir's CPU; the broker decompresses to validate). Set it with
                    // `-X compression.type=lz4` where the network or the disk is the limit.
                    .set("compression.type", "none");
                // every record gets a delivery report (turning successes off made freeing
                // slower and throughput lower)
            });
        let producer: BaseProducer<CountingContext> =
            config.create_with_context(CountingContext {
                stats: stats.clone(),
                pending: slabs.pending.clone(),
            })?;
        let name = CString::new(settings.topic.as_str()).map_err(|e| {
            KafkaError::ClientCreation(format!("topic name {:?}: {e}", settings.topic))
        })?;
        // SAFETY: a live client and a NUL-terminated name; NULL takes the default topic
        // configuration (acks, compression, partitioner set above).
        let rkt = unsafe {
            rdsys::rd_kafka_topic_new(
                producer.client().native_ptr(),
                name.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        if rkt.is_null() {
            return Err(KafkaError::ClientCreation(format!(
                "cannot use topic {:?}",
                settings.topic
            )));
        }
        Ok(Self {
            topic: TopicHandle(rkt),
            producer,
            slabs: RefCell::new(slabs),
            settings,
            stats,
            unpolled: Cell::new(0),
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
        let mut headers = Headers::with_capacity(2 + extra.len());
        headers.add(SOURCE_HEADER, self.settings.source.as_bytes());
        if let Some(at) = fetched_at {
            headers.add(FETCHED_AT_HEADER, at.as_bytes());
        }
        for (k, v) in extra {
            headers.add(k, v);
        }
        let (key_ptr, key_len) = key.map_or((std::ptr::null(), 0), |k| (k.as_ptr(), k.len()));
        loop {
            // lend the value from a slab; a value too big for one is copied by librdkafka
            let (slab, flags, ptr, start) = if value.len() <= SLAB_BYTES / 4 {
                let Some(i) = self.slabs.borrow_mut().room(value.len()) else {
                    self.producer.poll(Duration::from_millis(2));
                    continue;
                };
                let mut slabs = self.slabs.borrow_mut();
                let buf = &mut slabs.slabs[i];
                let start = buf.len();
                buf.extend_from_slice(value); // within capacity: never moves
                let ptr = buf[start..].as_ptr();
                slabs.pending[i].fetch_add(1, Ordering::Relaxed);
                (i, 0, ptr, start)
            } else {
                (COPIED, rdsys::RD_KAFKA_MSG_F_COPY, value.as_ptr(), 0)
            };
            // SAFETY: the argument list is librdkafka's (type tag, then values of that
            // type). librdkafka copies the key and takes the headers on success; the value
            // stays valid until its delivery report (its slab is not reused before that,
            // and slabs outlive the producer), or librdkafka copied it (F_COPY).
            let err = unsafe {
                rdsys::rd_kafka_producev(
                    self.producer.client().native_ptr(),
                    RD_KAFKA_VTYPE_RKT,
                    self.topic.0,
                    RD_KAFKA_VTYPE_PARTITION,
                    -1i32,
                    RD_KAFKA_VTYPE_MSGFLAGS,
                    flags,
                    RD_KAFKA_VTYPE_VALUE,
                    ptr as *mut c_void,
                    value.len(),
                    RD_KAFKA_VTYPE_KEY,
                    key_ptr as *mut c_void,
                    key_len,
                    RD_KAFKA_VTYPE_OPAQUE,
                    slab as *mut c_void,
                    RD_KAFKA_VTYPE_HEADERS,
                    headers.0,
                    RD_KAFKA_VTYPE_END,
                )
            };
            if err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                // librdkafka owns the headers now
                std::mem::forget(headers);
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
            if slab != COPIED {
                // not enqueued: take the value back out of its slab
                let mut slabs = self.slabs.borrow_mut();
                slabs.pending[slab].fetch_sub(1, Ordering::Relaxed);
                slabs.slabs[slab].truncate(start);
            }
            match RDKafkaErrorCode::from(err) {
                RDKafkaErrorCode::QueueFull => self.producer.poll(Duration::from_millis(2)),
                code => return Err(KafkaError::MessageProduction(code)),
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
