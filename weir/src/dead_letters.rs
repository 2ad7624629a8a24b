//! Where a topology's dead letters go: the topics `weir dlq`, the dead-letter panel and the
//! audit read.

use weir_sinks::dead_letter::DeadLetterConfig;
use weir_sinks::postgres::config::LatePolicy;
use weir_sinks::postgres::PostgresSinkConfig;
use weir_topology::Topology;

/// Every topic the topology writes dead letters to: its dead_letter sinks and the late topic
/// of PostgreSQL sinks that send late records there.
pub fn topics(t: &Topology) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for n in &t.nodes {
        let topic = if let Some(c) = n.config::<DeadLetterConfig>() {
            Some(c.topic.clone())
        } else {
            n.config::<PostgresSinkConfig>()
                .filter(|c| c.late_policy == LatePolicy::DeadLetter)
                .map(|c| c.late_topic.clone())
        };
        if let Some(topic) = topic {
            if !topics.contains(&topic) {
                topics.push(topic);
            }
        }
    }
    topics
}
