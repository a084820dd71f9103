//! The metrics endpoints: `/api/cache/metrics` (the original's JSON fields, then ours) and
//! `/metrics` (the same in Prometheus text format), both summed over every core.

use std::fmt::Write;

use std::sync::Arc;

use engine::{Clock, LatencyRecorder, LatencySummary, MetricsSnapshot};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::core::{OpLatency, Shared};
use crate::exchange::Response;
use crate::history::{self, Sample};

#[derive(Serialize)]
pub struct Snapshot {
    pub hits: u64,
    pub misses: u64,
    pub hit_rate: f64,
    pub sets: u64,
    pub deletes: u64,
    pub evictions: u64,
    pub l1_size: u64,
    /// The L1 eviction policy (CACHE_EVICTION).
    pub eviction: String,
    /// Window candidates the admission filter refused (adaptive eviction).
    pub admissions_refused: u64,
    /// The admission window's mean share of the shards, 0 to 1 (1 under plain CLOCK).
    pub window_share: f64,
    /// Times a shard's frequency sketch halved its counters.
    pub sketch_resets: u64,
    /// L2 counters stay 0 when no Redis is configured.
    pub l2_hits: u64,
    pub l2_misses: u64,
    pub l2_errors: u64,
    /// L2 calls skipped while the circuit breaker was open.
    pub l2_skipped: u64,
    pub l2_enabled: bool,
    pub l2_breaker_open: bool,
    /// L1 flushes after lost coherence events.
    pub l1_flushes: u64,
    /// Other instances' events applied to L1.
    pub coherence_events: u64,
    pub expirations: u64,
    pub l1_bytes: u64,
    pub l1_max_entries: usize,
    pub l1_max_bytes: u64,
    pub coalesced: u64,
    pub origin_fetches: u64,
    pub origin_errors: u64,
    pub connections: u64,
    pub requests: u64,
    pub rejected_requests: u64,
    pub refused_connections: u64,
    pub latency_us: Latencies,
    pub cores: Vec<CoreSnapshot>,
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
}

/// Each operation's latency histogram, merged over every core.
pub struct OpHistograms {
    get: Histogram<u64>,
    set: Histogram<u64>,
    delete: Histogram<u64>,
    invalidate: Histogram<u64>,
}

impl OpHistograms {
    pub fn read(shared: &Shared) -> Self {
        let merged = |pick: fn(&OpLatency) -> &LatencyRecorder| {
            LatencyRecorder::merged(shared.cores.iter().map(|c| pick(&c.latency)))
        };
        Self {
            get: merged(|l| &l.get),
            set: merged(|l| &l.set),
            delete: merged(|l| &l.delete),
            invalidate: merged(|l| &l.invalidate),
        }
    }

    /// Every operation in one histogram.
    pub fn total(&self) -> Histogram<u64> {
        let mut total = self.get.clone();
        for h in [&self.set, &self.delete, &self.invalidate] {
            total.add(h).expect("same bounds");
        }
        total
    }
}

pub fn snapshot(shared: &Shared) -> Snapshot {
    snapshot_with(shared, &OpHistograms::read(shared))
}

/// The snapshot, with latency from histograms already merged.
pub fn snapshot_with(shared: &Shared, latency: &OpHistograms) -> Snapshot {
    let percentiles = |h: &Histogram<u64>| Percentiles::from(LatencyRecorder::summarize(h));
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
            }
        })
        .collect();
    let sum = |f: fn(&crate::core::CoreStats) -> u64| shared.cores.iter().map(f).sum::<u64>();
    let l2 = |f: fn(&l2::L2Stats) -> &std::sync::atomic::AtomicU64| {
        shared.tiers.l2.as_ref().map_or(0, |t| {
            f(t.client.stats()).load(std::sync::atomic::Ordering::Relaxed)
        })
    };
    Snapshot {
        hits: total.hits,
        misses: total.misses,
        hit_rate: total.hit_rate(),
        sets: total.sets,
        deletes: total.deletes,
        evictions: total.evictions,
        l1_size: total.entries,
        eviction: shared.config.eviction.to_string(),
        admissions_refused: total.admissions_refused,
        window_share: total.window_share(),
        sketch_resets: total.sketch_resets,
        l2_hits: l2(|s| &s.hits),
        l2_misses: l2(|s| &s.misses),
        l2_errors: l2(|s| &s.errors),
        l2_skipped: l2(|s| &s.skipped),
        l2_enabled: shared.tiers.l2.is_some(),
        l2_breaker_open: shared
            .tiers
            .l2
            .as_ref()
            .is_some_and(|t| t.client.breaker_open()),
        l1_flushes: shared.tiers.l2.as_ref().map_or(0, |t| t.l1_flushes.get()),
        coherence_events: shared
            .tiers
            .l2
            .as_ref()
            .map_or(0, |t| t.events_applied.get()),
        expirations: total.expirations,
        l1_bytes: total.bytes,
        l1_max_entries: shared.config.l1_max_entries,
        l1_max_bytes: shared.config.l1_max_bytes,
        coalesced: total.coalesced,
        origin_fetches: shared.origin_fetches.get(),
        origin_errors: shared.origin_errors.get(),
        connections: sum(|c| c.connections.get()),
        requests: sum(|c| c.requests.get()),
        rejected_requests: sum(|c| c.rejected.get()),
        refused_connections: sum(|c| c.refused.get()),
        latency_us: Latencies {
            get: percentiles(&latency.get),
            set: percentiles(&latency.set),
            delete: percentiles(&latency.delete),
            invalidate: percentiles(&latency.invalidate),
        },
        cores,
    }
}

/// The snapshot in Prometheus text exposition format 0.0.4.
pub fn prometheus(shared: &Shared) -> Response {
    let s = snapshot(shared);
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP cache_{name} {help}\n# TYPE cache_{name} {kind}\ncache_{name} {value}"
        );
    };
    metric(
        "hits_total",
        "counter",
        "Lookups answered from L1.",
        s.hits.to_string(),
    );
    metric(
        "misses_total",
        "counter",
        "Lookups that found nothing.",
        s.misses.to_string(),
    );
    metric(
        "hit_rate",
        "gauge",
        "Hits over lookups since start.",
        format!("{:.6}", s.hit_rate),
    );
    metric(
        "sets_total",
        "counter",
        "Entries stored.",
        s.sets.to_string(),
    );
    metric(
        "deletes_total",
        "counter",
        "Entries deleted or invalidated.",
        s.deletes.to_string(),
    );
    metric(
        "evictions_total",
        "counter",
        "Entries evicted to respect a bound.",
        s.evictions.to_string(),
    );
    metric(
        "admissions_refused_total",
        "counter",
        "Window candidates the TinyLFU admission filter refused.",
        s.admissions_refused.to_string(),
    );
    metric(
        "window_share",
        "gauge",
        "The admission window's mean share of the L1 shards (1 under plain CLOCK).",
        format!("{:.6}", s.window_share),
    );
    metric(
        "sketch_resets_total",
        "counter",
        "Times a frequency sketch halved its counters.",
        s.sketch_resets.to_string(),
    );
    metric(
        "expirations_total",
        "counter",
        "Entries dropped at the end of their TTL.",
        s.expirations.to_string(),
    );
    metric(
        "l1_entries",
        "gauge",
        "Entries held in L1.",
        s.l1_size.to_string(),
    );
    metric(
        "l1_bytes",
        "gauge",
        "Bytes charged in L1 (keys, values, overhead).",
        s.l1_bytes.to_string(),
    );
    metric(
        "l1_max_entries",
        "gauge",
        "L1 entry bound.",
        s.l1_max_entries.to_string(),
    );
    metric(
        "l1_max_bytes",
        "gauge",
        "L1 byte bound.",
        s.l1_max_bytes.to_string(),
    );
    metric(
        "l2_hits_total",
        "counter",
        "Lookups answered from L2.",
        s.l2_hits.to_string(),
    );
    metric(
        "l2_misses_total",
        "counter",
        "L2 lookups that found nothing.",
        s.l2_misses.to_string(),
    );
    metric(
        "l2_errors_total",
        "counter",
        "Failed L2 commands.",
        s.l2_errors.to_string(),
    );
    metric(
        "coalesced_total",
        "counter",
        "Misses that waited on another request's fill.",
        s.coalesced.to_string(),
    );
    metric(
        "origin_fetches_total",
        "counter",
        "Fills from the origin.",
        s.origin_fetches.to_string(),
    );
    metric(
        "origin_errors_total",
        "counter",
        "Origin fills that failed (5xx, timeout).",
        s.origin_errors.to_string(),
    );
    metric(
        "connections",
        "gauge",
        "Open client connections.",
        s.connections.to_string(),
    );
    metric(
        "requests_total",
        "counter",
        "Requests received.",
        s.requests.to_string(),
    );
    metric(
        "rejected_requests_total",
        "counter",
        "Requests refused for framing or limits.",
        s.rejected_requests.to_string(),
    );
    metric(
        "refused_connections_total",
        "counter",
        "Connections refused over CACHE_MAX_CONNECTIONS.",
        s.refused_connections.to_string(),
    );
    let _ = writeln!(out, "# HELP cache_request_latency_microseconds Request latency by operation.\n# TYPE cache_request_latency_microseconds summary");
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
    let _ = writeln!(out, "# HELP cache_core_requests_total Requests received, by core.\n# TYPE cache_core_requests_total counter");
    for c in &s.cores {
        let _ = writeln!(
            out,
            "cache_core_requests_total{{core=\"{}\"}} {}",
            c.core, c.requests
        );
    }
    let _ = writeln!(
        out,
        "# HELP cache_core_entries Entries held, by core.\n# TYPE cache_core_entries gauge"
    );
    for c in &s.cores {
        let _ = writeln!(
            out,
            "cache_core_entries{{core=\"{}\"}} {}",
            c.core, c.entries
        );
    }
    let mut response = Response::json(200, out.into_bytes());
    response.content_type = "text/plain; version=0.0.4";
    response
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
            snapshot: snapshot_with(shared, &ops),
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
        let ops = |n: &Percentiles, b: &Percentiles| d(n.count, b.count);
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
        glommio::timer::sleep(history::INTERVAL).await;
        let now = Totals::read(&shared);
        let t = shared.clock.now_ms();
        shared.history.push(now.since(&before, t));
        before = now;
    }
}

/// The history endpoint's answer.
pub fn history_json(shared: &Shared) -> Vec<u8> {
    shared.history.to_json(history::Shape {
        cores: shared.cores.len(),
        l1_max_entries: shared.config.l1_max_entries,
        l1_max_bytes: shared.config.l1_max_bytes,
        l2_enabled: shared.tiers.l2.is_some(),
    })
}
