//! The metrics: each declared once in [`METRICS`], from which `/api/cache/metrics` (the
//! original's JSON fields, then ours), `/metrics` (Prometheus text format), the
//! dashboard's history (a sample a second) and the log summary are all made, summed
//! over every core.

use std::fmt::Write;

use std::sync::Arc;
use std::time::Duration;

use engine::{empty_histogram, LatencyRecorder, LatencySummary, MetricsSnapshot};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::core::{OpLatency, Shared};
use crate::exchange::Response;
use crate::history::{self, Sample};
use crate::runtime::{ActiveDriver, Budget};

/// How a metric moves: a counter only grows (the history shows it per second, Prometheus
/// types it `counter`), a gauge is a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

impl Kind {
    /// Its `# TYPE` in the Prometheus text format.
    fn prometheus(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// What a metric reads as.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Value {
    Count(u64),
    Ratio(f64),
    Flag(bool),
}

impl Value {
    fn prometheus(self) -> String {
        match self {
            Value::Count(n) => n.to_string(),
            Value::Ratio(r) => format!("{r:.6}"),
            Value::Flag(b) => u8::from(b).to_string(),
        }
    }

    /// The change since `before` (a counter's), or the level now (a gauge's).
    fn since(self, before: Value, kind: Kind) -> Value {
        match (kind, self, before) {
            (Kind::Counter, Value::Count(now), Value::Count(then)) => {
                Value::Count(now.saturating_sub(then))
            }
            _ => self,
        }
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Value::Count(n) => s.serialize_u64(n),
            Value::Ratio(r) => s.serialize_f64(r),
            Value::Flag(b) => s.serialize_bool(b),
        }
    }
}

/// One service-wide metric, declared once: the JSON endpoint, the Prometheus endpoint,
/// the dashboard's history and the log summary are all made from this table.
pub struct Metric {
    /// Its name in `/api/cache/metrics` and in the history's samples.
    pub name: &'static str,
    /// Its name in `/metrics`, after the `cache_` prefix.
    pub prometheus: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Whether the history samples it every second (for the dashboard).
    pub sampled: bool,
    /// Whether the periodic log summary (METRICS_INTERVAL) shows it.
    pub logged: bool,
    pub read: fn(&Reading) -> Value,
}

/// What the metrics are read from, gathered once per snapshot.
pub struct Reading<'a> {
    shared: &'a Shared,
    total: MetricsSnapshot,
}

impl Reading<'_> {
    fn l2(&self, pick: fn(&l2::L2Stats) -> &std::sync::atomic::AtomicU64) -> Value {
        Value::Count(self.shared.tiers.l2.as_ref().map_or(0, |t| {
            pick(t.client.stats()).load(std::sync::atomic::Ordering::Relaxed)
        }))
    }

    fn tier(&self, pick: fn(&crate::tiers::L2Tier) -> u64) -> Value {
        Value::Count(self.shared.tiers.l2.as_ref().map_or(0, pick))
    }

    fn cores(&self, pick: fn(&crate::core::CoreStats) -> u64) -> Value {
        Value::Count(self.shared.cores.iter().map(pick).sum())
    }
}

const fn metric(
    name: &'static str,
    prometheus: &'static str,
    kind: Kind,
    help: &'static str,
    read: fn(&Reading) -> Value,
) -> Metric {
    Metric {
        name,
        prometheus,
        kind,
        help,
        sampled: false,
        logged: false,
        read,
    }
}

const fn sampled(metric: Metric) -> Metric {
    Metric {
        sampled: true,
        ..metric
    }
}

const fn logged(metric: Metric) -> Metric {
    Metric {
        logged: true,
        ..metric
    }
}

use Kind::{Counter, Gauge};

/// Every metric, in the JSON endpoint's order: the original service's fields first.
/// L2 metrics stay 0 without Redis.
pub const METRICS: &[Metric] = &[
    logged(sampled(metric(
        "hits",
        "hits_total",
        Counter,
        "Lookups answered from L1.",
        |r| Value::Count(r.total.hits),
    ))),
    logged(sampled(metric(
        "misses",
        "misses_total",
        Counter,
        "Lookups that found nothing in L1.",
        |r| Value::Count(r.total.misses),
    ))),
    logged(metric(
        "hit_rate",
        "hit_rate",
        Gauge,
        "Hits over lookups since start.",
        |r| Value::Ratio(r.total.hit_rate()),
    )),
    metric("sets", "sets_total", Counter, "Entries stored.", |r| {
        Value::Count(r.total.sets)
    }),
    metric(
        "deletes",
        "deletes_total",
        Counter,
        "Entries deleted or invalidated.",
        |r| Value::Count(r.total.deletes),
    ),
    logged(sampled(metric(
        "evictions",
        "evictions_total",
        Counter,
        "Entries evicted to respect a bound.",
        |r| Value::Count(r.total.evictions),
    ))),
    logged(sampled(metric(
        "l1_size",
        "l1_entries",
        Gauge,
        "Entries held in L1.",
        |r| Value::Count(r.total.entries),
    ))),
    sampled(metric(
        "l2_hits",
        "l2_hits_total",
        Counter,
        "Lookups answered from L2.",
        |r| r.l2(|s| &s.hits),
    )),
    sampled(metric(
        "l2_misses",
        "l2_misses_total",
        Counter,
        "L2 lookups that found nothing.",
        |r| r.l2(|s| &s.misses),
    )),
    sampled(metric(
        "l2_errors",
        "l2_errors_total",
        Counter,
        "Failed L2 commands.",
        |r| r.l2(|s| &s.errors),
    )),
    sampled(metric(
        "admissions_refused",
        "admissions_refused_total",
        Counter,
        "Window candidates the TinyLFU admission filter refused.",
        |r| Value::Count(r.total.admissions_refused),
    )),
    sampled(metric(
        "window_share",
        "window_share",
        Gauge,
        "The admission window's mean share of the L1 shards, 0 to 1 (1 under plain CLOCK).",
        |r| Value::Ratio(r.total.window_share()),
    )),
    metric(
        "sketch_resets",
        "sketch_resets_total",
        Counter,
        "Times a shard's frequency sketch halved its counters.",
        |r| Value::Count(r.total.sketch_resets),
    ),
    metric(
        "slab_moves",
        "slab_moves_total",
        Counter,
        "Entries moved out of part-used L1 slab chunks being emptied, so that their memory serves other value sizes.",
        |r| Value::Count(r.total.slab_moves),
    ),
    sampled(metric(
        "l2_skipped",
        "l2_skipped_total",
        Counter,
        "L2 calls skipped while the circuit breaker was open.",
        |r| r.l2(|s| &s.skipped),
    )),
    metric(
        "l2_enabled",
        "l2_enabled",
        Gauge,
        "1 when Redis is configured.",
        |r| Value::Flag(r.shared.tiers.l2.is_some()),
    ),
    sampled(metric(
        "l2_breaker_open",
        "l2_breaker_open",
        Gauge,
        "1 while an L2 circuit breaker is open (on a cluster: any master's).",
        |r| {
            Value::Flag(
                r.shared
                    .tiers
                    .l2
                    .as_ref()
                    .is_some_and(|t| t.client.breaker_open()),
            )
        },
    )),
    sampled(metric(
        "l1_flushes",
        "l1_flushes_total",
        Counter,
        "L1 flushes after lost coherence events.",
        |r| r.tier(|t| t.l1_flushes.get()),
    )),
    sampled(metric(
        "coherence_events",
        "coherence_events_total",
        Counter,
        "Other instances' events applied to L1.",
        |r| r.tier(|t| t.events_applied.get()),
    )),
    metric(
        "coherence_subscribed",
        "coherence_subscribed",
        Gauge,
        "1 once every coherence event stream has been subscribed (L2 only).",
        |r| Value::Flag(r.shared.tiers.l2.is_some() && r.shared.subscribed.is_triggered()),
    ),
    metric(
        "coherence_coalesced",
        "coherence_coalesced_total",
        Counter,
        "This instance's coherence events not sent because a pending one covered them.",
        |r| r.tier(|t| t.publisher.stats().coalesced),
    ),
    metric(
        "coherence_dropped",
        "coherence_dropped_total",
        Counter,
        "Coherence events dropped from a full queue and replaced by a flush event.",
        |r| r.tier(|t| t.publisher.stats().overflowed),
    ),
    metric(
        "coherence_flush_events",
        "coherence_flush_events_total",
        Counter,
        "Flush events this instance sent because its event queue overflowed.",
        |r| r.tier(|t| t.publisher.stats().flushes),
    ),
    logged(sampled(metric(
        "expirations",
        "expirations_total",
        Counter,
        "Entries dropped at the end of their TTL.",
        |r| Value::Count(r.total.expirations),
    ))),
    logged(sampled(metric(
        "l1_bytes",
        "l1_bytes",
        Gauge,
        "Bytes charged in L1 (keys, values, overhead).",
        |r| Value::Count(r.total.bytes),
    ))),
    metric(
        "l1_max_entries",
        "l1_max_entries",
        Gauge,
        "L1 entry bound.",
        |r| Value::Count(r.shared.config.l1_max_entries as u64),
    ),
    metric(
        "l1_max_bytes",
        "l1_max_bytes",
        Gauge,
        "L1 byte bound.",
        |r| Value::Count(r.shared.config.l1_max_bytes),
    ),
    metric(
        "snapshots_saved",
        "snapshots_saved_total",
        Counter,
        "L1 snapshots written (CACHE_SNAPSHOT_PATH).",
        |r| Value::Count(r.shared.snapshots.saved.get()),
    ),
    metric(
        "snapshot_failures",
        "snapshot_failures_total",
        Counter,
        "L1 snapshots that could not be written.",
        |r| Value::Count(r.shared.snapshots.failed.get()),
    ),
    metric(
        "snapshot_last_saved_seconds",
        "snapshot_last_saved_seconds",
        Gauge,
        "When the last L1 snapshot was written (UNIX seconds; 0: never).",
        |r| Value::Count(r.shared.snapshots.last_saved_s.get()),
    ),
    metric(
        "snapshot_restored",
        "snapshot_restored_entries",
        Gauge,
        "Entries the snapshot loaded at start put back in L1.",
        |r| Value::Count(r.shared.snapshots.restored.get()),
    ),
    metric(
        "coalesced",
        "coalesced_total",
        Counter,
        "Misses that waited on another request's fill.",
        |r| Value::Count(r.total.coalesced),
    ),
    metric(
        "origin_fetches",
        "origin_fetches_total",
        Counter,
        "Fills from the origin.",
        |r| Value::Count(r.shared.origin_fetches.get()),
    ),
    metric(
        "origin_errors",
        "origin_errors_total",
        Counter,
        "Origin fills that failed (5xx, timeout).",
        |r| Value::Count(r.shared.origin_errors.get()),
    ),
    logged(sampled(metric(
        "connections",
        "connections",
        Gauge,
        "Open client connections.",
        |r| r.cores(|c| c.connections.get()),
    ))),
    metric(
        "accepted_connections",
        "accepted_connections_total",
        Counter,
        "Client connections accepted, served or refused.",
        |r| r.cores(|c| c.accepted.get()),
    ),
    metric(
        "requests",
        "requests_total",
        Counter,
        "Requests received.",
        |r| r.cores(|c| c.requests.get()),
    ),
    metric(
        "rejected_requests",
        "rejected_requests_total",
        Counter,
        "Requests refused for framing or limits.",
        |r| r.cores(|c| c.rejected.get()),
    ),
    metric(
        "refused_connections",
        "refused_connections_total",
        Counter,
        "Connections refused over CACHE_MAX_CONNECTIONS.",
        |r| r.cores(|c| c.refused.get()),
    ),
    metric(
        "send_timeouts",
        "send_timeouts_total",
        Counter,
        "Connections closed because the client took nothing of an answer for CACHE_SEND_TIMEOUT_MS.",
        |r| r.cores(|c| c.send_timeouts.get()),
    ),
    metric(
        "idle_watch_us",
        "idle_watch_microseconds_total",
        Counter,
        "Time the cores spent watching their rings with nothing to run (CACHE_IDLE_SPIN_US): busy time that was not work.",
        |r| r.cores(|c| c.idle_watch.get() / 1000),
    ),
];

/// A figure `/metrics` also gives for each core, as `cache_core_{name}{core="N"}`.
struct ByCore {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    read: fn(&CoreSnapshot) -> u64,
}

const BY_CORE: &[ByCore] = &[
    ByCore {
        name: "requests_total",
        kind: Counter,
        help: "Requests received, by core.",
        read: |c| c.requests,
    },
    ByCore {
        name: "entries",
        kind: Gauge,
        help: "Entries held, by core.",
        read: |c| c.entries,
    },
    ByCore {
        name: "idle_watch_microseconds_total",
        kind: Counter,
        help: "Time spent watching the ring with nothing to run, by core.",
        read: |c| c.idle_watch_us,
    },
];

/// The metrics at one moment, with what is not a single number: the eviction policy's
/// name, latency percentiles per operation and the per-core breakdown.
pub struct Snapshot {
    pub values: Vec<Value>,
    pub eviction: String,
    pub latency_us: Latencies,
    pub cores: Vec<CoreSnapshot>,
}

impl Snapshot {
    /// The log summary's metrics, as `name=value` pairs.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for (metric, value) in METRICS.iter().zip(&self.values) {
            if metric.logged {
                let _ = write!(out, "{}={} ", metric.name, value.prometheus());
            }
        }
        let _ = write!(out, "get_p99_us={}", self.latency_us.get.p99);
        out
    }
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(METRICS.len() + 3))?;
        for (metric, value) in METRICS.iter().zip(&self.values) {
            map.serialize_entry(metric.name, value)?;
        }
        map.serialize_entry("eviction", &self.eviction)?;
        map.serialize_entry("latency_us", &self.latency_us)?;
        map.serialize_entry("cores", &self.cores)?;
        map.end()
    }
}

#[derive(Serialize)]
pub struct Latencies {
    pub get: Percentiles,
    pub set: Percentiles,
    pub delete: Percentiles,
    pub invalidate: Percentiles,
}

#[derive(Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl From<LatencySummary> for Percentiles {
    fn from(s: LatencySummary) -> Self {
        Self {
            count: s.count,
            p50: s.p50_us,
            p90: s.p90_us,
            p99: s.p99_us,
            p999: s.p999_us,
            max: s.max_us,
        }
    }
}

#[derive(Serialize)]
pub struct CoreSnapshot {
    pub core: usize,
    pub hits: u64,
    pub misses: u64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub entries: u64,
    pub bytes: u64,
    pub connections: u64,
    pub requests: u64,
    /// `io_uring` or `epoll`; null only while the core is starting.
    pub io_driver: Option<ActiveDriver>,
    /// Microseconds spent watching the ring with nothing to run.
    pub idle_watch_us: u64,
}

/// How long a merge of the cores' latency histograms holds its core at a time.
///
/// Each core's four histograms take about 5 µs to merge (2 digits: 3,328 buckets each),
/// so a host of 64 cores needed about 0.3 ms of core 0 a second for the history alone,
/// in one stretch; in slices, no request on that core waits for more than one.
const MERGE_SLICE: Duration = Duration::from_micros(50);

/// Visits every core's latency recorders one core at a time, giving the core this runs
/// on back to its other work every [`MERGE_SLICE`].
async fn each_core_latency(shared: &Shared, mut visit: impl FnMut(&OpLatency)) {
    let mut budget = Budget::with_slice(MERGE_SLICE);
    for core in shared.cores.iter() {
        budget.spend().await;
        visit(&core.latency);
    }
}

pub async fn snapshot(shared: &Shared) -> Snapshot {
    let mut merged = [(); 4].map(|()| empty_histogram());
    each_core_latency(shared, |core| {
        for (total, recorder) in merged.iter_mut().zip(core.each()) {
            recorder.add_to(total);
        }
    })
    .await;
    let [get, set, delete, invalidate] = merged;
    let percentiles = |h: &Histogram<u64>| Percentiles::from(LatencyRecorder::summarize(h));
    let (values, cores) = counts(shared);
    Snapshot {
        values,
        eviction: shared.config.eviction.to_string(),
        latency_us: Latencies {
            get: percentiles(&get),
            set: percentiles(&set),
            delete: percentiles(&delete),
            invalidate: percentiles(&invalidate),
        },
        cores,
    }
}

/// Every metric of [`METRICS`], and each core's figures: what a snapshot holds besides
/// latency.
fn counts(shared: &Shared) -> (Vec<Value>, Vec<CoreSnapshot>) {
    let total = MetricsSnapshot::sum(shared.shards.iter().map(|m| &**m));
    let cores: Vec<CoreSnapshot> = shared
        .shards
        .iter()
        .zip(shared.cores.iter())
        .enumerate()
        .map(|(core, (shard, stats))| {
            let m = shard.snapshot();
            CoreSnapshot {
                core,
                hits: m.hits,
                misses: m.misses,
                sets: m.sets,
                deletes: m.deletes,
                evictions: m.evictions,
                expirations: m.expirations,
                entries: m.entries,
                bytes: m.bytes,
                connections: stats.connections.get(),
                requests: stats.requests.get(),
                io_driver: stats.io_driver.get().copied(),
                idle_watch_us: stats.idle_watch.get() / 1000,
            }
        })
        .collect();
    let reading = Reading { shared, total };
    let values = METRICS.iter().map(|m| (m.read)(&reading)).collect();
    (values, cores)
}

/// The snapshot in Prometheus text exposition format 0.0.4.
pub async fn prometheus(shared: &Shared) -> Response {
    let s = snapshot(shared).await;
    let mut out = String::with_capacity(4096);
    for (metric, value) in METRICS.iter().zip(&s.values) {
        let kind = metric.kind.prometheus();
        let (name, help, value) = (metric.prometheus, metric.help, value.prometheus());
        let _ = writeln!(
            out,
            "# HELP cache_{name} {help}\n# TYPE cache_{name} {kind}\ncache_{name} {value}"
        );
    }
    let _ = writeln!(out, "# HELP cache_request_latency_microseconds Request latency by operation, from the arrival of the request to its answer being handed to the socket.\n# TYPE cache_request_latency_microseconds summary");
    for (op, p) in [
        ("get", &s.latency_us.get),
        ("set", &s.latency_us.set),
        ("delete", &s.latency_us.delete),
        ("invalidate", &s.latency_us.invalidate),
    ] {
        for (q, v) in [
            ("0.5", p.p50),
            ("0.9", p.p90),
            ("0.99", p.p99),
            ("0.999", p.p999),
            ("1", p.max),
        ] {
            let _ = writeln!(
                out,
                "cache_request_latency_microseconds{{op=\"{op}\",quantile=\"{q}\"}} {v}"
            );
        }
        let _ = writeln!(
            out,
            "cache_request_latency_microseconds_count{{op=\"{op}\"}} {}",
            p.count
        );
    }
    for metric in BY_CORE {
        let (name, help, kind) = (metric.name, metric.help, metric.kind.prometheus());
        let _ = writeln!(
            out,
            "# HELP cache_core_{name} {help}\n# TYPE cache_core_{name} {kind}"
        );
        for c in &s.cores {
            let _ = writeln!(
                out,
                "cache_core_{name}{{core=\"{}\"}} {}",
                c.core,
                (metric.read)(c)
            );
        }
    }
    let mut response = Response::json(200, out.into_bytes());
    response.content_type = "text/plain; version=0.0.4";
    response
}

/// The cumulative figures a sample is the difference of.
struct Totals {
    values: Vec<Value>,
    cores: Vec<CoreSnapshot>,
    /// Requests of each operation, in the order of [`OpLatency::each`].
    ops: [u64; 4],
    /// Every operation's latency in one histogram.
    latency: Histogram<u64>,
}

impl Totals {
    /// Every core's latency in one histogram, with each operation's count: a sample
    /// keeps the percentiles of all requests together, not each operation's.
    async fn read(shared: &Shared) -> Self {
        let mut latency = empty_histogram();
        let mut ops = [0; 4];
        each_core_latency(shared, |core| {
            for (count, recorder) in ops.iter_mut().zip(core.each()) {
                *count += recorder.add_to(&mut latency);
            }
        })
        .await;
        let (values, cores) = counts(shared);
        Self {
            values,
            cores,
            ops,
            latency,
        }
    }

    /// The second from `before` to `self`.
    fn since(&self, before: &Totals, t: u64) -> Sample {
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
        let [gets, sets, deletes, invalidates] =
            [0, 1, 2, 3].map(|op| d(self.ops[op], before.ops[op]));
        let metrics = METRICS
            .iter()
            .zip(self.values.iter().zip(&before.values))
            .filter(|(metric, _)| metric.sampled)
            .map(|(metric, (now, then))| {
                let value = serde_json::to_value(now.since(*then, metric.kind));
                (metric.name, value.expect("a number serializes"))
            })
            .collect();
        Sample {
            t,
            gets,
            sets,
            deletes,
            invalidates,
            p50_us: percentile(0.5),
            p99_us: percentile(0.99),
            p999_us: percentile(0.999),
            core_requests: self
                .cores
                .iter()
                .zip(&before.cores)
                .map(|(n, b)| d(n.requests, b.requests))
                .collect(),
            metrics,
        }
    }
}

/// Samples once a second until shutdown (run on core 0 when metrics are enabled).
pub async fn sample_every_second(shared: Arc<Shared>) {
    let mut before = Totals::read(&shared).await;
    while !shared.shutdown.is_triggered() {
        monoio::time::sleep(history::INTERVAL).await;
        let now = Totals::read(&shared).await;
        let t = shared.clock.tick();
        shared.history.push(now.since(&before, t));
        before = now;
    }
}

/// The history endpoint's answer: the samples after `since` (Unix ms), or all of them.
pub fn history_json(shared: &Shared, since: Option<u64>) -> Vec<u8> {
    let shape = history::Shape {
        cores: shared.cores.len(),
        l1_max_entries: shared.config.l1_max_entries,
        l1_max_bytes: shared.config.l1_max_bytes,
        l2_enabled: shared.tiers.l2.is_some(),
    };
    shared.history.to_json(shape, since)
}
