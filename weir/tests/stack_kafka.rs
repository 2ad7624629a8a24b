//! The local Kafka broker supports transactions on one node: a transactional producer commits
//! one batch and aborts another, and a `read_committed` consumer sees exactly the committed one
//! (while a `read_uncommitted` consumer proves the aborted batch was really written).

mod common;

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

fn create_topic(topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

fn transactional_producer(txn_id: &str) -> ThreadedProducer<DefaultProducerContext> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("transactional.id", txn_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .expect("transactional producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions (needs transaction.state.log replication 1 on one node)");
    producer
}

fn send_batch(producer: &ThreadedProducer<DefaultProducerContext>, topic: &str, label: &str) {
    for i in 0..10 {
        let payload = format!("{label}-{i}");
        let key = format!("{i}");
        producer
            .send(BaseRecord::to(topic).key(&key).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    producer.flush(TIMEOUT).expect("flush");
}

/// Reads the whole partition with the given isolation level, up to its end.
fn read_all(topic: &str, isolation: &str) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::bootstrap())
        .set("group.id", common::unique("weir-test-reader"))
        .set("isolation.level", isolation)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, TIMEOUT)
        .expect("watermarks");
    let mut seen = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        // the position passes control records (commit/abort markers) too
        let position = consumer
            .position()
            .unwrap()
            .find_partition(topic, 0)
            .and_then(|p| p.offset().to_raw())
            .unwrap_or(-1);
        if position >= high {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not reach offset {high} in time ({position})"
        );
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("consume");
            seen.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
        }
    }
    seen
}

#[test]
fn read_committed_sees_only_the_committed_batch() {
    let topic = common::unique("weir-test-txn");
    create_topic(&topic);
    let producer = transactional_producer(&common::unique("weir-test-txn-id"));

    producer.begin_transaction().unwrap();
    send_batch(&producer, &topic, "committed");
    producer.commit_transaction(TIMEOUT).expect("commit");

    producer.begin_transaction().unwrap();
    send_batch(&producer, &topic, "aborted");
    producer.abort_transaction(TIMEOUT).expect("abort");

    let expected: Vec<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    assert_eq!(read_all(&topic, "read_committed"), expected);

    let uncommitted = read_all(&topic, "read_uncommitted");
    assert_eq!(
        uncommitted.len(),
        20,
        "the aborted batch was written too: {uncommitted:?}"
    );
    assert!(
        uncommitted
            .iter()
            .filter(|v| v.starts_with("aborted-"))
            .count()
            == 10
    );
}
