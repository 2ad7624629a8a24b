//! Notices an engine consumer that has records waiting for it but hands none over while its
//! broker and group coordinator are up: a partition that stays in one fetch state at one
//! position (waiting for its committed offset, say, or fetching below the last stable offset)
//! for [`STALL_LIMIT`]. librdkafka's statistics (every second, served inside `poll`) are what
//! it looks at; the engine starts its loop again (a new consumer and producer from the
//! committed offsets) when a partition stalls, rather than wait without end.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::statistics::Statistics;

/// How long a partition with records waiting may make no progress, its leader up, before
/// the loop starts again. Far longer than a broker restart or a 15 s pause takes to heal.
pub const STALL_LIMIT: Duration = Duration::from_secs(60);

/// One assigned partition as the consumer's statistics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    /// librdkafka's fetch state: `active` while it fetches; `offset-query`, `offset-wait`
    /// and others while it waits to know where to start.
    pub fetch_state: String,
    /// The next offset to fetch.
    pub next_offset: i64,
    /// The offset after the last record handed to the application.
    pub app_offset: i64,
    /// The last stable offset: what a `read_committed` consumer may read up to.
    pub ls_offset: i64,
    /// Records fetched and not yet handed over.
    pub queued: i64,
    /// The partition's leader (and, for a group member, the group's coordinator) is connected.
    pub broker_up: bool,
}

impl PartitionView {
    /// The assigned partitions of a consumer's statistics.
    pub fn of(stats: &Statistics) -> Vec<PartitionView> {
        let up = |id: i32| {
            stats
                .brokers
                .values()
                .any(|b| b.nodeid == id && b.state == "UP")
        };
        // a group member waits for its committed offsets from the coordinator
        let coordinator_up = stats.cgrp.as_ref().is_none_or(|g| g.state == "up");
        let mut parts = Vec::new();
        for (topic, t) in &stats.topics {
            for p in t.partitions.values() {
                if p.partition < 0 || !p.desired {
                    continue;
                }
                parts.push(PartitionView {
                    topic: topic.clone(),
                    partition: p.partition,
                    fetch_state: p.fetch_state.clone(),
                    next_offset: p.next_offset,
                    app_offset: p.app_offset,
                    ls_offset: p.ls_offset,
                    queued: p.fetchq_cnt,
                    broker_up: coordinator_up && up(p.leader),
                });
            }
        }
        parts
    }

    /// There are records for the loop that it has not got: the partition waits to know
    /// where to start, has committed records past its position, or has records fetched.
    fn has_work(&self) -> bool {
        self.fetch_state != "active"
            || (self.next_offset >= 0 && self.next_offset < self.ls_offset)
            || self.queued > 0
    }
}

/// What a partition looked like when it last moved.
struct Seen {
    fetch_state: String,
    next_offset: i64,
    app_offset: i64,
    since: Instant,
}

/// Follows each assigned partition's progress from one statistics report to the next.
#[derive(Default)]
pub struct StallGuard {
    seen: HashMap<(String, i32), Seen>,
}

impl StallGuard {
    /// Takes the partitions of one report (at `now`); returns those that have had work
    /// waiting and made no progress for `limit` with their broker up, described for the log.
    /// A partition moves when its fetch state, next offset or application offset changes;
    /// one with nothing to do, or whose broker is down, is not stalled.
    pub fn observe(
        &mut self,
        parts: &[PartitionView],
        now: Instant,
        limit: Duration,
    ) -> Option<String> {
        self.seen
            .retain(|(t, p), _| parts.iter().any(|v| v.topic == *t && v.partition == *p));
        let mut stalled = Vec::new();
        for v in parts {
            let seen = self
                .seen
                .entry((v.topic.clone(), v.partition))
                .or_insert_with(|| Seen {
                    fetch_state: v.fetch_state.clone(),
                    next_offset: v.next_offset,
                    app_offset: v.app_offset,
                    since: now,
                });
            let moved = seen.fetch_state != v.fetch_state
                || seen.next_offset != v.next_offset
                || seen.app_offset != v.app_offset;
            if moved || !v.has_work() || !v.broker_up {
                *seen = Seen {
                    fetch_state: v.fetch_state.clone(),
                    next_offset: v.next_offset,
                    app_offset: v.app_offset,
                    since: now,
                };
                continue;
            }
            let still = now.saturating_duration_since(seen.since);
            if still >= limit {
                stalled.push(format!(
                    "{}[{}] {} at offset {} (last stable {}, handed over up to {}, {} fetched) for {}s",
                    v.topic,
                    v.partition,
                    v.fetch_state,
                    v.next_offset,
                    v.ls_offset,
                    v.app_offset,
                    v.queued,
                    still.as_secs()
                ));
            }
        }
        (!stalled.is_empty()).then(|| stalled.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(fetch_state: &str, next: i64, app: i64, ls: i64) -> PartitionView {
        PartitionView {
            topic: "raw".into(),
            partition: 0,
            fetch_state: fetch_state.into(),
            next_offset: next,
            app_offset: app,
            ls_offset: ls,
            queued: 0,
            broker_up: true,
        }
    }

    const LIMIT: Duration = Duration::from_secs(60);

    /// The guard's verdict for one partition seen as `first` and then, after `after`, as
    /// `then`.
    fn verdict(first: PartitionView, then: PartitionView, after: Duration) -> Option<String> {
        let mut guard = StallGuard::default();
        let t0 = Instant::now();
        assert_eq!(guard.observe(&[first], t0, LIMIT), None);
        guard.observe(&[then], t0 + after, LIMIT)
    }

    #[test]
    fn a_partition_waiting_for_its_offset_or_behind_the_stable_offset_stalls_after_the_limit() {
        let waiting = view("offset-wait", -1001, -1001, 500);
        let behind = view("active", 200, 200, 500);
        for v in [waiting, behind] {
            assert_eq!(verdict(v.clone(), v.clone(), LIMIT / 2), None, "{v:?}");
            let said = verdict(v.clone(), v.clone(), LIMIT).expect("stalled");
            assert!(said.starts_with("raw[0] "), "{said}");
            assert!(said.contains(&v.fetch_state), "{said}");
        }
        // records fetched and never handed over, the position at the stable offset
        let queued = PartitionView {
            queued: 40,
            ..view("active", 500, 460, 500)
        };
        assert!(verdict(queued.clone(), queued, LIMIT).is_some());
    }

    #[test]
    fn progress_nothing_to_do_or_a_broker_down_is_no_stall() {
        // caught up: nothing past its position
        let idle = view("active", 500, 500, 500);
        assert_eq!(verdict(idle.clone(), idle, LIMIT * 10), None);
        // moving: the next offset, the application offset or the fetch state changed
        for then in [
            view("active", 300, 200, 500),
            view("active", 200, 250, 500),
            view("offset-query", 200, 200, 500),
        ] {
            assert_eq!(verdict(view("active", 200, 200, 500), then, LIMIT), None);
        }
        // its broker down: it waits for the broker, as the loop does
        let down = PartitionView {
            broker_up: false,
            ..view("active", 200, 200, 500)
        };
        assert_eq!(verdict(down.clone(), down, LIMIT * 10), None);
    }

    #[test]
    fn the_limit_counts_from_the_last_move_and_a_revoked_partition_is_forgotten() {
        let mut guard = StallGuard::default();
        let t0 = Instant::now();
        let stuck = view("active", 200, 200, 500);
        guard.observe(std::slice::from_ref(&stuck), t0, LIMIT);
        let moved = view("active", 210, 210, 500);
        guard.observe(std::slice::from_ref(&moved), t0 + LIMIT / 2, LIMIT);
        assert_eq!(
            guard.observe(std::slice::from_ref(&moved), t0 + LIMIT, LIMIT),
            None
        );
        assert!(guard
            .observe(std::slice::from_ref(&moved), t0 + LIMIT * 3 / 2, LIMIT)
            .is_some());
        // revoked (absent from a report), then assigned again: its clock starts anew
        guard.observe(&[], t0 + LIMIT * 2, LIMIT);
        assert_eq!(
            guard.observe(std::slice::from_ref(&moved), t0 + LIMIT * 3, LIMIT),
            None
        );
    }
}
