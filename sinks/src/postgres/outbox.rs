//! The sink's dead letters, exactly once: a record the sink cannot apply (late for a sealed
//! window, a future or impossible time, refused by PostgreSQL) gets its dead letter written
//! into the `dead_letter_outbox` table in the same transaction as the batch — so it exists
//! if and only if the batch committed — and this forwarder moves it to Kafka exactly once.
//!
//! The forwarder is one per sink across all instances: it holds a PostgreSQL advisory lock
//! (released with its session), and its transactional id is the sink's, so a new holder
//! fences an old one. Each Kafka transaction carries the dead letters and, as the committed
//! offsets of the consumer group `<application>.<node>.dead-letter-outbox` on the sink's
//! topic, the next source offset per partition it has forwarded up to: the outbox rows of a
//! partition appear in offset order (the sink applies a partition's offsets in order), so
//! those offsets say exactly what was sent. Rows below them are deleted afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use weir_topology::config::KafkaSettings;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::{Client, NoTls};
use weir_topology::pipeline::OutRecord;

/// Where the forwarder works.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The sink's id in the tables (`application/node`).
    pub sink_id: String,
    /// The topic the sink reads (the outbox rows' source topic).
    pub topic: String,
    /// The cluster and every client's options.
    pub kafka: KafkaSettings,
    pub database_url: String,
}

impl OutboxSettings {
    fn transactional_id(&self) -> String {
        format!("{}-dead-letter-outbox", self.sink_id.replace('/', "-"))
    }

    /// The consumer group whose offsets on the sink's topic record what was forwarded.
    pub fn group(&self) -> String {
        format!("{}.dead-letter-outbox", self.sink_id.replace('/', "."))
    }
}

/// Writes a dead letter into the outbox, in the batch's transaction.
pub async fn put(
    tx: &deadpool_postgres::Transaction<'_>,
    sink: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    dead_letter: &OutRecord,
) -> Result<(), tokio_postgres::Error> {
    let (names, values): (Vec<&str>, Vec<Option<&[u8]>>) = dead_letter
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_deref()))
        .unzip();
    let statement = tx
        .prepare_cached(
            "INSERT INTO dead_letter_outbox (sink, topic, partition, \"offset\", dead_letter_topic, \
             key, value, header_names, header_values, record_timestamp) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (sink, topic, partition, \"offset\") DO NOTHING",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &sink,
            &topic,
            &partition,
            &offset,
            &&*dead_letter.topic,
            &dead_letter.key.as_deref(),
            &dead_letter.value.as_slice(),
            &names,
            &values,
            &dead_letter.timestamp,
        ],
    )
    .await?;
    Ok(())
}

/// One dead letter waiting in the outbox.
struct Waiting {
    partition: i32,
    offset: i64,
    record: OutRecord,
}

type Producer_ = ThreadedProducer<DefaultProducerContext>;

/// Why the forwarder stopped forwarding (it gives the lock up and tries again).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Kafka: no group metadata for the outbox's group {0}")]
    NoGroupMetadata(String),
    #[error("Kafka: forwarding {count} dead letters: {source}")]
    Forwarding { count: usize, source: KafkaError },
}

/// Runs the forwarder until `shutdown`: takes the sink's lock when it is free, forwards,
/// gives the lock up when PostgreSQL or Kafka fails, and tries again. Blocks.
pub fn run(settings: OutboxSettings, shutdown: Arc<AtomicBool>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "the dead-letter outbox cannot start");
            return;
        }
    };
    while !shutdown.load(Ordering::Relaxed) {
        match rt.block_on(hold_and_forward(&settings, &shutdown)) {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, sink = %settings.sink_id, "the dead-letter outbox stopped forwarding; trying again")
            }
        }
        for _ in 0..20 {
            if shutdown.load(Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

async fn hold_and_forward(
    settings: &OutboxSettings,
    shutdown: &AtomicBool,
) -> Result<(), OutboxError> {
    let (client, connection) = tokio_postgres::connect(&settings.database_url, NoTls).await?;
    let conn = tokio::spawn(connection);
    let lock_key = format!("weir-dead-letter-outbox:{}", settings.sink_id);
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&lock_key])
        .await?
        .get(0);
    if !locked {
        // another instance forwards this sink's dead letters
        conn.abort();
        return Ok(());
    }
    tracing::info!(sink = %settings.sink_id, "forwarding the sink's dead letters from the outbox");
    let result = forward(settings, &client, shutdown).await;
    conn.abort();
    result
}

fn kafka_config(settings: &OutboxSettings) -> ClientConfig {
    settings.kafka.client(&settings.transactional_id(), |_| {})
}

async fn forward(
    settings: &OutboxSettings,
    client: &Client,
    shutdown: &AtomicBool,
) -> Result<(), OutboxError> {
    let timeout = Duration::from_secs(30);
    let producer: Producer_ = kafka_config(settings)
        .set("transactional.id", settings.transactional_id())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transaction.timeout.ms", "30000")
        .set("partitioner", "murmur2_random")
        .create()?;
    // fences a forwarder that held the lock before and aborts its open transaction
    producer.init_transactions(timeout)?;
    let consumer: BaseConsumer = kafka_config(settings)
        .set("group.id", settings.group())
        .set("enable.auto.commit", "false")
        .create()?;
    let meta = consumer
        .group_metadata()
        .ok_or_else(|| OutboxError::NoGroupMetadata(settings.group()))?;
    // what was forwarded: the group's offsets, read once the old forwarder is fenced
    let mut sent: HashMap<i32, i64> = HashMap::new();
    while !shutdown.load(Ordering::Relaxed) {
        client.execute("SELECT 1", &[]).await?;
        let partitions: Vec<i32> = client
            .query(
                "SELECT DISTINCT partition FROM dead_letter_outbox WHERE sink = $1 AND topic = $2",
                &[&settings.sink_id, &settings.topic],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let unknown: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !sent.contains_key(p))
            .collect();
        if !unknown.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &unknown {
                tpl.add_partition(&settings.topic, *p);
            }
            let committed = consumer.committed_offsets(tpl, timeout)?;
            for p in unknown {
                let at = committed
                    .find_partition(&settings.topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .filter(|o| *o >= 0)
                    .unwrap_or(0);
                sent.insert(p, at);
            }
        }
        // what was forwarded before is gone from the outbox
        for (p, next) in &sent {
            client
                .execute(
                    "DELETE FROM dead_letter_outbox WHERE sink = $1 AND topic = $2 AND partition = $3 AND \"offset\" < $4",
                    &[&settings.sink_id, &settings.topic, p, next],
                )
                .await
        ?;
        }
        let waiting = waiting(client, settings, &sent).await?;
        if waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        producer.begin_transaction()?;
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut failed = None;
        for w in &waiting {
            if let Err(e) = send(&producer, &w.record) {
                failed = Some(e);
                break;
            }
            next.insert(w.partition, w.offset + 1);
        }
        let committed = match failed {
            Some(e) => Err(e),
            None => {
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &next {
                    tpl.add_partition_offset(&settings.topic, *p, Offset::Offset(*o))?;
                }
                producer
                    .send_offsets_to_transaction(&tpl, &meta, timeout)
                    .and_then(|_| {
                        weir_topology::engine::wait_delivered(&producer, timeout);
                        producer.commit_transaction(timeout)
                    })
            }
        };
        match committed {
            Ok(()) => {
                tracing::debug!(dead_letters = waiting.len(), "forwarded from the outbox");
                sent.extend(next);
            }
            Err(e) => {
                let _ = producer.abort_transaction(timeout);
                return Err(OutboxError::Forwarding {
                    count: waiting.len(),
                    source: e,
                });
            }
        }
    }
    Ok(())
}

async fn waiting(
    client: &Client,
    settings: &OutboxSettings,
    sent: &HashMap<i32, i64>,
) -> Result<Vec<Waiting>, OutboxError> {
    let (partitions, from): (Vec<i32>, Vec<i64>) = sent.iter().map(|(p, o)| (*p, *o)).unzip();
    let rows = client
        .query(
            "SELECT o.partition, o.\"offset\", o.dead_letter_topic, o.key, o.value, o.header_names, \
             o.header_values, o.record_timestamp \
             FROM dead_letter_outbox o JOIN unnest($3::int4[], $4::int8[]) AS s(partition, next) \
             ON s.partition = o.partition AND o.\"offset\" >= s.next \
             WHERE o.sink = $1 AND o.topic = $2 ORDER BY o.partition, o.\"offset\" LIMIT 1000",
            &[&settings.sink_id, &settings.topic, &partitions, &from],
        )
        .await
?;
    Ok(rows
        .iter()
        .map(|r| {
            let names: Vec<String> = r.get(5);
            let values: Vec<Option<Vec<u8>>> = r.get(6);
            Waiting {
                partition: r.get(0),
                offset: r.get(1),
                record: OutRecord {
                    topic: r.get::<_, String>(2).into(),
                    key: r.get(3),
                    value: r.get(4),
                    headers: names.into_iter().zip(values).collect(),
                    timestamp: r.get(7),
                },
            }
        })
        .collect())
}

/// Sends a dead letter; one the producer refuses as too large goes as a preview (its value
/// cut, with the original's size and SHA-256), as the engine does.
fn send(producer: &Producer_, r: &OutRecord) -> Result<(), KafkaError> {
    match send_as_is(producer, r) {
        Err(e)
            if e.rdkafka_error_code()
                .is_some_and(weir_topology::engine::is_refusal) =>
        {
            let (preview, described) = weir_topology::pipeline::refused_value(&r.value);
            let mut cut = r.clone();
            cut.value = preview;
            cut.headers.extend(
                described
                    .into_iter()
                    .map(|(k, v)| (k, Some(v.into_bytes()))),
            );
            tracing::warn!(error = %e, topic = %r.topic, "a dead letter was refused: sending a preview of it");
            send_as_is(producer, &cut)
        }
        other => other,
    }
}

fn send_as_is(producer: &Producer_, r: &OutRecord) -> Result<(), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        headers = headers.insert(Header {
            key: k,
            value: v.as_deref(),
        });
    }
    let mut record = BaseRecord::<[u8], [u8]>::to(&r.topic)
        .payload(&r.value)
        .headers(headers);
    if let Some(key) = &r.key {
        record = record.key(key);
    }
    if let Some(ts) = r.timestamp {
        record = record.timestamp(ts);
    }
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                back,
            )) => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e),
        }
    }
}
