//! Prometheus metrics of a running topology, registered once per process in one registry.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every metric of the processing engine. Cloning shares the same counters.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Records into a node: `weir_records_in_total{node}`.
    pub records_in: IntCounterVec,
    /// Records out of a node by output: `weir_records_out_total{node,output}`.
    pub records_out: IntCounterVec,
    /// Dead letters by reason code: `weir_dead_letters_total{reason}`.
    pub dead_letters: IntCounterVec,
    /// Kafka transactions by result (committed, aborted, failed): `weir_transactions_total`.
    pub transactions: IntCounterVec,
    /// Time to commit a Kafka transaction (offsets included).
    pub commit_latency: Histogram,
    /// Records per committed transaction.
    pub transaction_records: Histogram,
    /// Consumer lag per topic and partition, refreshed at each commit.
    pub consumer_lag: IntGaugeVec,
    /// Time from the raw record's timestamp to its commit downstream.
    pub end_to_end_latency: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_registry(Registry::new_custom(Some("weir".into()), None).expect("registry"))
    }

    pub fn with_registry(registry: Registry) -> Self {
        let records_in = IntCounterVec::new(
            Opts::new("records_in_total", "Records received by a node"),
            &["node"],
        )
        .unwrap();
        let records_out = IntCounterVec::new(
            Opts::new("records_out_total", "Records emitted by a node, by output"),
            &["node", "output"],
        )
        .unwrap();
        let dead_letters = IntCounterVec::new(
            Opts::new("dead_letters_total", "Dead letters by reason code"),
            &["reason"],
        )
        .unwrap();
        let transactions = IntCounterVec::new(
            Opts::new("transactions_total", "Kafka transactions by result"),
            &["result"],
        )
        .unwrap();
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "commit_latency_seconds",
                "Time to commit a Kafka transaction with its input offsets",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap();
        let transaction_records = Histogram::with_opts(
            HistogramOpts::new(
                "transaction_records",
                "Input records per committed transaction",
            )
            .buckets(prometheus::exponential_buckets(1.0, 4.0, 9).unwrap()),
        )
        .unwrap();
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag_records",
                "Records between the next offset read and the last stable offset of a partition",
            ),
            &["subtopology", "topic", "partition"],
        )
        .unwrap();
        let end_to_end_latency = HistogramVec::new(
            HistogramOpts::new(
                "end_to_end_latency_seconds",
                "From a raw record's timestamp to the commit of its result",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["sink"],
        )
        .unwrap();
        // both results from the start: a rate or an increase over them is never missing
        for result in ["committed", "aborted"] {
            transactions.with_label_values(&[result]);
        }
        for c in [&records_in, &records_out, &dead_letters, &transactions] {
            registry.register(Box::new(c.clone())).expect("register");
        }
        registry
            .register(Box::new(commit_latency.clone()))
            .expect("register");
        registry
            .register(Box::new(transaction_records.clone()))
            .expect("register");
        registry
            .register(Box::new(consumer_lag.clone()))
            .expect("register");
        registry
            .register(Box::new(end_to_end_latency.clone()))
            .expect("register");
        Self {
            registry,
            records_in,
            records_out,
            dead_letters,
            transactions,
            commit_latency,
            transaction_records,
            consumer_lag,
            end_to_end_latency,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
