//! The dashboard's data: every second, core 0 samples what the whole service did in
//! that second (`stats::sample_every_second`) into a ring of the last five minutes, so a dashboard opened now shows
//! those minutes at once instead of an empty chart. Samples are differences of the same
//! cumulative counters the metrics endpoints serve; latency percentiles are those of
//! the second alone (the difference of two snapshots of the cumulative histograms).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Seconds of history kept.
pub const CAPACITY: usize = 300;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One second of the service: counts are per second, sizes are at its end. Besides the
/// requests and their latency, it holds every metric the metrics table marks as sampled,
/// under its JSON name (`stats::METRICS`).
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The second's end, in Unix milliseconds.
    pub t: u64,
    pub gets: u64,
    pub sets: u64,
    pub deletes: u64,
    pub invalidates: u64,
    /// Latency of every request in the second, all operations, in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// Requests per core, indexed by core.
    pub core_requests: Vec<u64>,
    #[serde(flatten)]
    pub metrics: BTreeMap<&'static str, serde_json::Value>,
}

/// The ring of samples, shared by every core (written once a second, read by the
/// history endpoint).
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

/// The service's shape, which the dashboard draws the samples against.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Shape {
    pub cores: usize,
    pub l1_max_entries: usize,
    pub l1_max_bytes: u64,
    pub l2_enabled: bool,
}

/// What `GET /api/cache/history` answers.
#[derive(Serialize)]
struct View<'a> {
    interval_ms: u64,
    capacity: usize,
    #[serde(flatten)]
    shape: Shape,
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

    pub fn to_json(&self, shape: Shape) -> Vec<u8> {
        let samples = self.samples.lock().expect("history lock");
        serde_json::to_vec(&View {
            interval_ms: INTERVAL.as_millis() as u64,
            capacity: CAPACITY,
            shape,
            samples: &samples,
        })
        .expect("samples serialize")
    }
}
