//! Tumbling windows and the watermark, as pure logic.
//!
//! A record belongs to the window `[start, start + size)` that holds its timestamp. The
//! watermark of a partition is the newest record time it has applied; a partition with no
//! new record for `idle_timeout` advances with the wall clock instead (so quiet streams still
//! close windows). The sink's watermark is the minimum over its partitions.

use std::collections::BTreeMap;

/// Milliseconds since the epoch.
pub type Millis = i64;

/// The start of the window of `size_ms` that holds `ts` (floor, also for times before 1970).
pub fn window_start(ts: Millis, size_ms: i64) -> Millis {
    ts.div_euclid(size_ms) * size_ms
}

/// Per-partition progress, for the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionClock {
    /// Newest record time applied (None before the first record).
    pub newest: Option<Millis>,
    /// Wall-clock time the partition last delivered a record, or was assigned.
    pub last_activity: Millis,
}

/// Watermarks of the partitions a sink holds.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    partitions: BTreeMap<i32, PartitionClock>,
}

impl Watermarks {
    pub fn assign(&mut self, partition: i32, now: Millis) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            newest: None,
            last_activity: now,
        });
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// A record of time `ts` was read from `partition` at wall-clock `now`.
    pub fn observe(&mut self, partition: i32, ts: Millis, now: Millis) {
        let c = self.partitions.entry(partition).or_insert(PartitionClock {
            newest: None,
            last_activity: now,
        });
        c.newest = Some(c.newest.map_or(ts, |n| n.max(ts)));
        c.last_activity = now;
    }

    /// The watermark of one partition at `now`.
    pub fn partition(&self, partition: i32, now: Millis, idle_timeout_ms: i64) -> Option<Millis> {
        let c = self.partitions.get(&partition)?;
        partition_watermark(*c, now, idle_timeout_ms)
    }

    /// The minimum over every partition held; None with no partition or no time yet.
    pub fn min(&self, now: Millis, idle_timeout_ms: i64) -> Option<Millis> {
        let mut min: Option<Millis> = None;
        for c in self.partitions.values() {
            let w = partition_watermark(*c, now, idle_timeout_ms)?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }
}

/// The newest record time, or — once idle for `idle_timeout` — the wall clock less the
/// idle timeout (a record older than that would be late anyway).
pub fn partition_watermark(c: PartitionClock, now: Millis, idle_timeout_ms: i64) -> Option<Millis> {
    let idle = now - c.last_activity >= idle_timeout_ms;
    match (c.newest, idle) {
        (Some(n), true) => Some(n.max(now - idle_timeout_ms)),
        (Some(n), false) => Some(n),
        (None, true) => Some(now - idle_timeout_ms),
        (None, false) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn windows_are_floored_tumbling_intervals() {
        assert_eq!(window_start(0, 5 * MIN), 0);
        assert_eq!(window_start(5 * MIN - 1, 5 * MIN), 0);
        assert_eq!(window_start(5 * MIN, 5 * MIN), 5 * MIN);
        assert_eq!(window_start(-1, 5 * MIN), -5 * MIN);
    }

    #[test]
    fn the_watermark_is_the_slowest_partition() {
        let mut w = Watermarks::default();
        w.assign(0, 0);
        w.assign(1, 0);
        assert_eq!(
            w.min(1_000, 30_000),
            None,
            "no time before the first records"
        );
        w.observe(0, 10 * MIN, 1_000);
        w.observe(1, 7 * MIN, 1_000);
        assert_eq!(w.min(2_000, 30_000), Some(7 * MIN));
        w.observe(1, 6 * MIN, 2_000);
        assert_eq!(
            w.min(2_000, 30_000),
            Some(7 * MIN),
            "an older record does not go back"
        );
    }

    #[test]
    fn an_idle_partition_advances_with_the_clock() {
        let mut w = Watermarks::default();
        w.observe(0, 100 * MIN, 0);
        w.assign(1, 0);
        let now = 200 * MIN;
        // partition 1 never had a record, but is idle: it follows the clock
        assert_eq!(w.partition(1, now, 30_000), Some(now - 30_000));
        // partition 0 is idle too: the clock is ahead of its newest record
        assert_eq!(w.min(now, 30_000), Some(now - 30_000));
        // not yet idle: its own time counts
        assert_eq!(w.partition(0, 10_000, 30_000), Some(100 * MIN));
    }
}
