//! The local Kafka broker supports transactions on one node: a transactional producer commits
//! one batch and aborts another, and a `read_committed` consumer sees exactly the committed one
//! (while a `read_uncommitted` consumer proves the aborted batch was really written).

mod common;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const TIMEOUT: Duration = Duration::from_secs(30);

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

#[test]
fn read_committed_sees_only_the_committed_batch() {
    let topic = common::unique("weir-test-txn");
    common::kafka::create_topics(&[&topic], 1);
    let producer = transactional_producer(&common::unique("weir-test-txn-id"));

    producer.begin_transaction().unwrap();
    send_batch(&producer, &topic, "committed");
    producer.commit_transaction(TIMEOUT).expect("commit");

    producer.begin_transaction().unwrap();
    send_batch(&producer, &topic, "aborted");
    producer.abort_transaction(TIMEOUT).expect("abort");

    let expected: Vec<String> = (0..10).map(|i| format!("committed-{i}")).collect();
    let read = |isolation| -> Vec<String> {
        common::kafka::read_all(&topic, 1, isolation)
            .iter()
            .map(|m| String::from_utf8(m.payload().unwrap().to_vec()).unwrap())
            .collect()
    };
    assert_eq!(read("read_committed"), expected);

    let uncommitted = read("read_uncommitted");
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
