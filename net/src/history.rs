//! The dashboard's data: every second, core 0 samples what the whole service did in
//! that second (`stats::sample_every_second`) into a ring of the last five minutes, so a dashboard opened now shows
//! those minutes at once instead of an empty chart. Samples are differences of the same
//! cumulative counters the metrics endpoints serve; latency percentiles are those of
//! the second alone (the difference of two snapshots of the cumulative histograms).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

/// Seconds of history kept.
pub const CAPACITY: usize = 300;
pub const INTERVAL: Duration = Duration::from_secs(1);

/// One second of the service: counts are per second, sizes are at its end. Besides the
/// requests and their latency, it holds every metric the metrics table marks as sampled,
/// under its JSON name (`stats::METRICS`).
#[derive(Debug, Serialize)]
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
    samples: Mutex<VecDeque<Rendered>>,
}

/// A sample as the history endpoint sends it, rendered to JSON once, when it is taken:
/// an answer then copies bytes instead of rendering up to 300 samples on a serving core
/// (BENCHMARKS.md, "The history sampler's stall"), and holds the ring's lock, which core
/// 0's sampler also takes, only as long as that copy.
#[derive(Debug)]
struct Rendered {
    t: u64,
    json: Box<RawValue>,
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
    samples: After<'a>,
}

/// The samples of a second that ended after `since` (Unix ms; every sample when `None`),
/// oldest first. A dashboard asks for the whole ring once and then only for what is
/// new: the whole ring is about 110 KB of JSON (one core).
struct After<'a> {
    samples: &'a VecDeque<Rendered>,
    since: Option<u64>,
}

impl Serialize for After<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Filtered rather than searched: the wall clock a sample's `t` comes from may
        // step back, so the ring is in push order, not always in `t` order.
        s.collect_seq(
            self.samples
                .iter()
                .filter(|sample| self.since.is_none_or(|since| sample.t > since))
                .map(|sample| &*sample.json),
        )
    }
}

impl History {
    pub fn push(&self, sample: Sample) {
        let rendered = Rendered {
            t: sample.t,
            json: serde_json::value::to_raw_value(&sample).expect("a sample serializes"),
        };
        let mut samples = self.samples.lock().expect("history lock");
        if samples.len() == CAPACITY {
            samples.pop_front();
        }
        samples.push_back(rendered);
    }

    /// The answer to `GET /api/cache/history`, with the samples after `since` (Unix ms).
    pub fn to_json(&self, shape: Shape, since: Option<u64>) -> Vec<u8> {
        let samples = self.samples.lock().expect("history lock");
        serde_json::to_vec(&View {
            interval_ms: INTERVAL.as_millis() as u64,
            capacity: CAPACITY,
            shape,
            samples: After {
                samples: &samples,
                since,
            },
        })
        .expect("samples serialize")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64) -> Sample {
        Sample {
            t,
            gets: 0,
            sets: 0,
            deletes: 0,
            invalidates: 0,
            p50_us: 0,
            p99_us: 0,
            p999_us: 0,
            core_requests: vec![0],
            metrics: BTreeMap::new(),
        }
    }

    fn times(history: &History, since: Option<u64>) -> Vec<u64> {
        let shape = Shape {
            cores: 1,
            l1_max_entries: 1,
            l1_max_bytes: 0,
            l2_enabled: false,
        };
        let view: serde_json::Value =
            serde_json::from_slice(&history.to_json(shape, since)).unwrap();
        assert_eq!(view["capacity"], CAPACITY);
        view["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["t"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn the_ring_keeps_the_last_five_minutes_and_answers_what_is_after_a_time() {
        let history = History::default();
        for t in 1..=CAPACITY as u64 + 10 {
            history.push(sample(t * 1000));
        }
        let all = times(&history, None);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0], 11_000);
        assert_eq!(times(&history, Some(309_000)), [310_000]);
        assert_eq!(times(&history, Some(308_500)), [309_000, 310_000]);
        assert!(times(&history, Some(310_000)).is_empty());
        assert_eq!(times(&history, Some(0)), all);
    }

    #[test]
    fn samples_after_a_clock_step_back_are_still_found() {
        let history = History::default();
        for t in [5_000, 6_000, 2_000, 3_000] {
            history.push(sample(t));
        }
        assert_eq!(times(&history, Some(2_500)), [5_000, 6_000, 3_000]);
    }
}
