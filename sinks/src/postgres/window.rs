//! Tumbling windows and the watermark, as pure logic.
//!
//! A record belongs to the window `[start, start + size)` that holds its timestamp. The
//! watermark of a partition is the newest record time it has applied. A partition that is
//! idle — read to its end, no new record for `idle_timeout`, and nothing in flight upstream —
//! advances with the wall clock instead, so quiet streams still close windows; a stalled or
//! lagging upstream, or a sink that has not read its own partition to the end, never lets a
//! window close early. The sink's watermark is the minimum over its partitions.

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
    /// The consumer reached the partition's end after its last record.
    pub at_end: bool,
}

/// May an idle partition follow the clock? Only when nothing is in flight upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The application that writes the topic has committed up to its input's end.
    Quiet,
    /// Records are still upstream (or it could not be told): idle partitions wait.
    Busy,
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
            at_end: false,
        });
    }

    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// A record of time `ts` was read from `partition` at wall-clock `now`.
    pub fn observe(&mut self, partition: i32, ts: Millis, now: Millis) {
        let c = self.seen(partition, now);
        c.newest = Some(c.newest.map_or(ts, |n| n.max(ts)));
    }

    /// A record that moves no watermark (a future or out-of-range time) was read.
    pub fn touch(&mut self, partition: i32, now: Millis) {
        self.seen(partition, now);
    }

    fn seen(&mut self, partition: i32, now: Millis) -> &mut PartitionClock {
        let c = self.partitions.entry(partition).or_insert(PartitionClock {
            newest: None,
            last_activity: now,
            at_end: false,
        });
        c.last_activity = now;
        c.at_end = false;
        c
    }

    /// The consumer reached the end of `partition` (after its last record).
    pub fn at_end(&mut self, partition: i32) {
        if let Some(c) = self.partitions.get_mut(&partition) {
            c.at_end = true;
        }
    }

    /// True when every partition held has been read to its end since its last record (and
    /// there is one): nothing more is there to read now.
    pub fn all_at_end(&self) -> bool {
        !self.partitions.is_empty() && self.partitions.values().all(|c| c.at_end)
    }

    /// True when some partition waits only for the upstream to be quiet to follow the clock.
    pub fn wants_upstream(&self, now: Millis, idle_timeout_ms: i64) -> bool {
        self.partitions
            .values()
            .any(|c| c.at_end && now - c.last_activity >= idle_timeout_ms)
    }

    /// The watermark of one partition at `now`.
    pub fn partition(
        &self,
        partition: i32,
        now: Millis,
        idle_timeout_ms: i64,
        upstream: Upstream,
    ) -> Option<Millis> {
        let c = self.partitions.get(&partition)?;
        partition_watermark(*c, now, idle_timeout_ms, upstream)
    }

    /// The minimum over every partition held; None with no partition or no time yet.
    pub fn min(&self, now: Millis, idle_timeout_ms: i64, upstream: Upstream) -> Option<Millis> {
        let mut min: Option<Millis> = None;
        for c in self.partitions.values() {
            let w = partition_watermark(*c, now, idle_timeout_ms, upstream)?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        min
    }

    pub fn partitions(&self) -> impl Iterator<Item = i32> + '_ {
        self.partitions.keys().copied()
    }
}

/// The newest record time, or — once idle — the wall clock less the idle timeout (a record
/// older than that would be late anyway). Idle: read to the end, no record for
/// `idle_timeout`, and a quiet upstream.
pub fn partition_watermark(
    c: PartitionClock,
    now: Millis,
    idle_timeout_ms: i64,
    upstream: Upstream,
) -> Option<Millis> {
    let idle = c.at_end && now - c.last_activity >= idle_timeout_ms && upstream == Upstream::Quiet;
    match (c.newest, idle) {
        (Some(n), true) => Some(n.max(now - idle_timeout_ms)),
        (Some(n), false) => Some(n),
        (None, true) => Some(now - idle_timeout_ms),
        (None, false) => None,
    }
}

/// The record times PostgreSQL and the windows can hold: years 1 to 9999.
pub const MIN_TIME: Millis = -62_135_596_800_000;
pub const MAX_TIME: Millis = 253_402_300_799_999;

/// Why a record's time keeps it out of the windows, if it does: beyond the clock by more
/// than `max_skew_ms` (`timestamp.future`), or outside years 1 to 9999
/// (`timestamp.out_of_range`).
pub fn time_problem(ts: Millis, now: Millis, max_skew_ms: i64) -> Option<(&'static str, String)> {
    if !(MIN_TIME..=MAX_TIME).contains(&ts) {
        return Some((
            "timestamp.out_of_range",
            format!("the record time {ts} ms is outside the years 1 to 9999"),
        ));
    }
    if ts > now.saturating_add(max_skew_ms) {
        return Some((
            "timestamp.future",
            format!(
                "the record time is {} s ahead of the clock, more than max_clock_skew ({} s)",
                (ts - now) / 1000,
                max_skew_ms / 1000
            ),
        ));
    }
    None
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
    fn read_to_the_end_means_every_partition_after_its_last_record() {
        let mut w = Watermarks::default();
        assert!(!w.all_at_end(), "no partition: not read to any end");
        w.assign(0, 0);
        w.assign(1, 0);
        w.at_end(0);
        assert!(!w.all_at_end(), "partition 1 not at its end");
        w.at_end(1);
        assert!(w.all_at_end());
        w.observe(1, MIN, 1_000);
        assert!(!w.all_at_end(), "a record read after the end");
        w.at_end(1);
        w.touch(0, 2_000);
        assert!(
            !w.all_at_end(),
            "a record with no window read after the end"
        );
        w.at_end(0);
        w.revoke(1);
        w.assign(2, 3_000);
        assert!(
            !w.all_at_end(),
            "a partition just assigned is not at its end"
        );
    }

    #[test]
    fn the_watermark_is_the_slowest_partition() {
        let mut w = Watermarks::default();
        w.assign(0, 0);
        w.assign(1, 0);
        let q = Upstream::Quiet;
        assert_eq!(
            w.min(1_000, 30_000, q),
            None,
            "no time before the first records"
        );
        w.observe(0, 10 * MIN, 1_000);
        w.observe(1, 7 * MIN, 1_000);
        assert_eq!(w.min(2_000, 30_000, q), Some(7 * MIN));
        w.observe(1, 6 * MIN, 2_000);
        assert_eq!(
            w.min(2_000, 30_000, q),
            Some(7 * MIN),
            "an older record does not go back"
        );
    }

    #[test]
    fn an_idle_partition_advances_with_the_clock_only_when_read_to_its_end_and_upstream_is_quiet() {
        let mut w = Watermarks::default();
        w.observe(0, 100 * MIN, 0);
        w.assign(1, 0);
        let now = 200 * MIN;
        let (q, busy) = (Upstream::Quiet, Upstream::Busy);
        // not read to the end yet: records may wait in the partition
        assert_eq!(w.partition(1, now, 30_000, q), None);
        assert_eq!(w.partition(0, now, 30_000, q), Some(100 * MIN));
        w.at_end(0);
        w.at_end(1);
        assert!(w.wants_upstream(now, 30_000));
        // at the end, but records are still upstream: no clock
        assert_eq!(w.partition(1, now, 30_000, busy), None);
        assert_eq!(w.min(now, 30_000, busy), None);
        assert_eq!(w.partition(0, now, 30_000, busy), Some(100 * MIN));
        // quiet upstream: the clock
        assert_eq!(w.partition(1, now, 30_000, q), Some(now - 30_000));
        assert_eq!(w.min(now, 30_000, q), Some(now - 30_000));
        // not yet idle for long enough: its own time counts
        assert_eq!(w.partition(0, 10_000, 30_000, q), Some(100 * MIN));
        // a new record ends the idle spell
        w.observe(1, 150 * MIN, now);
        assert_eq!(w.partition(1, now + 60_000, 30_000, q), Some(150 * MIN));
    }

    #[test]
    fn future_and_impossible_times_are_named() {
        let now = 1_764_000_000_000;
        assert_eq!(time_problem(now, now, 300_000), None);
        assert_eq!(time_problem(now + 299_000, now, 300_000), None);
        assert_eq!(
            time_problem(now + 301_000, now, 300_000).map(|p| p.0),
            Some("timestamp.future")
        );
        assert_eq!(
            time_problem(i64::MAX, now, 300_000).map(|p| p.0),
            Some("timestamp.out_of_range")
        );
        assert_eq!(
            time_problem(MIN_TIME - 1, now, 300_000).map(|p| p.0),
            Some("timestamp.out_of_range")
        );
        assert_eq!(time_problem(-1, now, 300_000), None, "1969 is a time");
    }
}
