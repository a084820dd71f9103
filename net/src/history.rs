//! The dashboard's data: every second, core 0 samples what the whole service did in
//! that second into a ring of the last five minutes, so a dashboard opened now shows
//! those minutes at once instead of an empty chart. Samples are differences of the same
//! cumulative counters the metrics endpoints serve; latency percentiles are those of
//! the second alone (the difference of two snapshots of the cumulative histograms).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engine::Clock;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::core::Shared;
use crate::stats::{self, OpHistograms, Snapshot};

/// Seconds of history kept.
pub const CAPACITY: usize = 300;
const INTERVAL: Duration = Duration::from_secs(1);

/// One second of the service: counts are per second, sizes are at its end.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The second's end, in Unix milliseconds.
    pub t: u64,
    pub gets: u64,
    pub sets: u64,
    pub deletes: u64,
    pub invalidates: u64,
    pub l1_hits: u64,
    pub l1_misses: u64,
    pub l2_hits: u64,
    pub l2_misses: u64,
    /// Latency of every request in the second, all operations, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub entries: u64,
    pub bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub admissions_refused: u64,
    pub window_share: f64,
    pub l2_breaker_open: bool,
    pub l2_errors: u64,
    pub l2_skipped: u64,
    pub coherence_events: u64,
    pub l1_flushes: u64,
    pub connections: u64,
    /// Requests per core, indexed by core.
    pub core_requests: Vec<u64>,
}

/// The ring of samples, shared by every core (written once a second, read by the
/// history endpoint).
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// What `GET /api/cache/history` answers.
#[derive(Serialize)]
struct View<'a> {
    interval_ms: u64,
    capacity: usize,
    cores: usize,
    l1_max_entries: usize,
    l1_max_bytes: u64,
    l2_enabled: bool,
    samples: &'a VecDeque<Sample>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock");
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn to_json(&self, shared: &Shared) -> Vec<u8> {
        let samples = self.samples.lock().expect("history lock");
        serde_json::to_vec(&View {
            interval_ms: INTERVAL.as_millis() as u64,
            capacity: CAPACITY,
            cores: shared.cores.len(),
            l1_max_entries: shared.config.l1_max_entries,
            l1_max_bytes: shared.config.l1_max_bytes,
            l2_enabled: shared.l2.is_some(),
            samples: &samples,
        })
        .expect("samples serialize")
    }
}

/// The cumulative figures a sample is the difference of.
struct Totals {
    snapshot: Snapshot,
    latency: Histogram<u64>,
}

impl Totals {
    fn read(shared: &Shared) -> Self {
        let ops = OpHistograms::read(shared);
        Self {
            snapshot: stats::snapshot_with(shared, &ops),
            latency: ops.total(),
        }
    }

    /// The second from `before` to `self`.
    fn since(&self, before: &Totals, t: u64) -> Sample {
        let (now, then) = (&self.snapshot, &before.snapshot);
        let mut second = self.latency.clone();
        // Cumulative histograms only grow, so the difference is the second's requests.
        if second.subtract(&before.latency).is_err() {
            second.reset();
        }
        let percentile = |q: f64| {
            if second.is_empty() {
                0
            } else {
                second.value_at_quantile(q)
            }
        };
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let ops = |n: &stats::Percentiles, b: &stats::Percentiles| d(n.count, b.count);
        Sample {
            t,
            gets: ops(&now.latency_us.get, &then.latency_us.get),
            sets: ops(&now.latency_us.set, &then.latency_us.set),
            deletes: ops(&now.latency_us.delete, &then.latency_us.delete),
            invalidates: ops(&now.latency_us.invalidate, &then.latency_us.invalidate),
            l1_hits: d(now.hits, then.hits),
            l1_misses: d(now.misses, then.misses),
            l2_hits: d(now.l2_hits, then.l2_hits),
            l2_misses: d(now.l2_misses, then.l2_misses),
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            entries: now.l1_size,
            bytes: now.l1_bytes,
            evictions: d(now.evictions, then.evictions),
            expirations: d(now.expirations, then.expirations),
            admissions_refused: d(now.admissions_refused, then.admissions_refused),
            window_share: now.window_share,
            l2_breaker_open: now.l2_breaker_open,
            l2_errors: d(now.l2_errors, then.l2_errors),
            l2_skipped: d(now.l2_skipped, then.l2_skipped),
            coherence_events: d(now.coherence_events, then.coherence_events),
            l1_flushes: d(now.l1_flushes, then.l1_flushes),
            connections: now.connections,
            core_requests: now
                .cores
                .iter()
                .zip(&then.cores)
                .map(|(n, b)| d(n.requests, b.requests))
                .collect(),
        }
    }
}

/// Samples once a second until shutdown (run on core 0 when metrics are enabled).
pub async fn sample_every_second(shared: Arc<Shared>) {
    let mut before = Totals::read(&shared);
    while !shared.shutdown.is_triggered() {
        glommio::timer::sleep(INTERVAL).await;
        let now = Totals::read(&shared);
        let t = shared.clock.now_ms();
        shared.history.push(now.since(&before, t));
        before = now;
    }
}
