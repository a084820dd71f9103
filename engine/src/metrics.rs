//! Counters and latency histograms, readable from any core at any time.
//!
//! Each shard (one per core in the server) owns a [`ShardMetrics`]: every counter is an
//! atomic on its own cache line, written by that core alone (the owner for writes, the
//! accepting core for reads), so counting never bounces a line between cores. A reader
//! of the metrics sums the shards with relaxed loads: each counter is exact, a snapshot
//! across counters is approximate, as in Redis's INFO.
//!
//! Latency goes into HDR histograms (`hdrhistogram`, 1 µs to 1 h), one per operation per
//! core behind an uncontended lock, merged on read. They keep 2 significant digits, as
//! Redis's latency histograms do (its `LATENCY_HISTOGRAM_PRECISION`): every value
//! reads back within 1 % (0.8 %: 128 steps per doubling).
//! A reader walks and copies every bucket, and the server reads them once a second for
//! its history, on core 0 while it serves: at 3 digits a histogram is 23,552 buckets
//! (184 KiB) and that read held core 0 for about 1.7 million instructions a second
//! (BENCHMARKS.md, "The history sampler's stall"); at 2 digits it is 3,328, and the
//! server merges the cores' recorders in slices of a few cores (`add_to`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// A monotonically increasing count on its own cache line.
#[derive(Debug, Default)]
pub struct Counter(CachePadded<AtomicU64>);

impl Counter {
    #[inline(always)]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    #[inline(always)]
    pub fn incr(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A level (entries, bytes) set by its single writer.
#[derive(Debug, Default)]
pub struct Gauge(CachePadded<AtomicU64>);

impl Gauge {
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// One shard's counters.
#[derive(Debug, Default)]
pub struct ShardMetrics {
    pub hits: Counter,
    pub misses: Counter,
    pub sets: Counter,
    pub deletes: Counter,
    pub evictions: Counter,
    pub expirations: Counter,
    /// Misses that waited on another request's fill instead of fetching themselves.
    pub coalesced: Counter,
    /// Window candidates the admission filter refused (evicted in place of a main entry).
    pub admissions_refused: Counter,
    /// Times the frequency sketch halved its counters.
    pub sketch_resets: Counter,
    /// Nodes moved out of part-used slab chunks being emptied, so that their memory serves
    /// other sizes.
    pub slab_moves: Counter,
    pub entries: Gauge,
    pub bytes: Gauge,
    /// The admission window's share of the shard, in millionths.
    pub window_share_ppm: Gauge,
}

/// Totals over a set of shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub coalesced: u64,
    pub admissions_refused: u64,
    pub sketch_resets: u64,
    pub slab_moves: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Summed over shards; [`MetricsSnapshot::window_share`] divides by `shards`.
    pub window_share_ppm: u64,
    pub shards: u64,
}

impl ShardMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            hits: self.hits.get(),
            misses: self.misses.get(),
            sets: self.sets.get(),
            deletes: self.deletes.get(),
            evictions: self.evictions.get(),
            expirations: self.expirations.get(),
            coalesced: self.coalesced.get(),
            admissions_refused: self.admissions_refused.get(),
            sketch_resets: self.sketch_resets.get(),
            slab_moves: self.slab_moves.get(),
            entries: self.entries.get(),
            bytes: self.bytes.get(),
            window_share_ppm: self.window_share_ppm.get(),
            shards: 1,
        }
    }
}

impl MetricsSnapshot {
    pub fn sum<'a>(shards: impl IntoIterator<Item = &'a ShardMetrics>) -> Self {
        shards
            .into_iter()
            .map(ShardMetrics::snapshot)
            .fold(Self::default(), |a, b| a + b)
    }

    /// The admission window's mean share over the shards (0 to 1).
    pub fn window_share(&self) -> f64 {
        if self.shards == 0 {
            0.0
        } else {
            self.window_share_ppm as f64 / self.shards as f64 / 1e6
        }
    }

    /// Hits over lookups, 0 when there were none.
    pub fn hit_rate(&self) -> f64 {
        let lookups = self.hits + self.misses;
        if lookups == 0 {
            0.0
        } else {
            self.hits as f64 / lookups as f64
        }
    }
}

impl std::ops::Add for MetricsSnapshot {
    type Output = Self;

    fn add(self, o: Self) -> Self {
        Self {
            hits: self.hits + o.hits,
            misses: self.misses + o.misses,
            sets: self.sets + o.sets,
            deletes: self.deletes + o.deletes,
            evictions: self.evictions + o.evictions,
            expirations: self.expirations + o.expirations,
            coalesced: self.coalesced + o.coalesced,
            admissions_refused: self.admissions_refused + o.admissions_refused,
            sketch_resets: self.sketch_resets + o.sketch_resets,
            slab_moves: self.slab_moves + o.slab_moves,
            entries: self.entries + o.entries,
            bytes: self.bytes + o.bytes,
            window_share_ppm: self.window_share_ppm + o.window_share_ppm,
            shards: self.shards + o.shards,
        }
    }
}

/// Latency of one operation on one core, in microseconds.
#[derive(Debug)]
pub struct LatencyRecorder(Mutex<Histogram<u64>>);

/// Percentiles of a latency distribution, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

const HIGHEST_TRACKABLE_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 2;

/// An empty histogram with the recorders' bounds and precision, to merge them into.
pub fn empty_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_TRACKABLE_US, SIGNIFICANT_DIGITS).expect("valid bounds")
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self(Mutex::new(empty_histogram()))
    }
}

impl LatencyRecorder {
    pub fn record(&self, latency: Duration) {
        let us = (latency.as_micros() as u64).clamp(1, HIGHEST_TRACKABLE_US);
        self.0.lock().saturating_record(us);
    }

    /// Adds what this recorder holds to `total` (made by [`empty_histogram`]), holding
    /// the recorder's lock for the walk over its buckets; returns how many latencies
    /// that was.
    pub fn add_to(&self, total: &mut Histogram<u64>) -> u64 {
        let held = self.0.lock();
        total.add(&*held).expect("same bounds");
        held.len()
    }

    pub fn summarize(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: h.mean(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Several recorders (one per core) merged into one histogram, as the server merges them.
    fn merged(recorders: &[&LatencyRecorder]) -> Histogram<u64> {
        let mut total = empty_histogram();
        for r in recorders {
            r.add_to(&mut total);
        }
        total
    }

    #[test]
    fn snapshots_sum_across_shards() {
        let a = ShardMetrics::default();
        let b = ShardMetrics::default();
        a.hits.add(3);
        b.hits.incr();
        b.misses.add(4);
        a.entries.set(10);
        b.entries.set(5);
        let total = MetricsSnapshot::sum([&a, &b]);
        assert_eq!(total.hits, 4);
        assert_eq!(total.misses, 4);
        assert_eq!(total.entries, 15);
        assert!((total.hit_rate() - 0.5).abs() < 1e-9);
        assert_eq!(MetricsSnapshot::default().hit_rate(), 0.0);
    }

    #[test]
    fn latency_percentiles_merge_across_cores() {
        let core0 = LatencyRecorder::default();
        let core1 = LatencyRecorder::default();
        for us in 1..=900 {
            core0.record(Duration::from_micros(us));
        }
        for us in 901..=1000 {
            core1.record(Duration::from_micros(us));
        }
        let summary = LatencyRecorder::summarize(&merged(&[&core0, &core1]));
        assert_eq!(summary.count, 1000);
        assert!((495..=505).contains(&summary.p50_us), "{summary:?}");
        assert!((985..=995).contains(&summary.p99_us), "{summary:?}");
        assert!((1000..=1010).contains(&summary.max_us), "{summary:?}");
    }

    #[test]
    fn latencies_read_back_within_one_percent() {
        let mut us = 1;
        while us < HIGHEST_TRACKABLE_US {
            let recorder = LatencyRecorder::default();
            recorder.record(Duration::from_micros(us));
            let summary = LatencyRecorder::summarize(&merged(&[&recorder]));
            let within = us..=us + us / 100;
            assert!(
                within.contains(&summary.max_us),
                "{us} µs read as {summary:?}"
            );
            assert!(
                within.contains(&summary.p50_us),
                "{us} µs read as {summary:?}"
            );
            us = us * 3 / 2 + 1;
        }
    }
}
