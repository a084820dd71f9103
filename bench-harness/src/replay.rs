//! `cache-bench replay`: hit ratio of a key trace at given capacities, for the engine
//! (its adaptive policy, and plain CLOCK) and, in the same run, exact LRU (the `lru`
//! crate), ARC (`arc.rs`) and moka's TinyLFU. Every policy sees the same keys; a miss
//! inserts the key. The engine is replayed through as many hash-partitioned shards as
//! asked, exactly as the service partitions keys over its cores (the capacity split the
//! same way); the references are single caches of the whole capacity. Optionally the
//! trace is also replayed against a running service over HTTP (GET; on 404, PUT).

use std::time::Instant;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The engine as the service runs it: adaptive W-TinyLFU on CLOCK.
    Engine,
    /// The engine with `CACHE_EVICTION=clock`.
    Clock,
    /// Exact LRU.
    Lru,
    /// ARC (Megiddo and Modha).
    Arc,
    /// moka 0.12: TinyLFU admission before an LRU, no window.
    Moka,
}

impl Policy {
    pub const ALL: [Policy; 5] = [
        Policy::Engine,
        Policy::Clock,
        Policy::Lru,
        Policy::Arc,
        Policy::Moka,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Engine => "engine (adaptive)",
            Policy::Clock => "engine (CLOCK)",
            Policy::Lru => "exact LRU",
            Policy::Arc => "ARC",
            Policy::Moka => "moka (TinyLFU)",
        }
    }
}

/// The engine's hash seeds for a replay: fixed by `seed`, so that a replay is repeatable
/// (the service draws its seeds at random per process). Replays with other seeds show
/// how much a result owes to one hash function.
pub fn seeds(seed: u64) -> [u64; 4] {
    [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344]
        .map(|s| s ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub policy: Policy,
    pub capacity: usize,
    /// Shards the engine's capacity was split over (1 for the references).
    pub shards: usize,
    /// The engine's admission window share at the end of the replay (mean over shards).
    pub window_share: Option<f64>,
    pub requests: usize,
    pub hits: usize,
    pub hit_ratio: f64,
    pub seconds: f64,
}

/// Replays `keys` against `policy` holding at most `capacity` entries; the engine's
/// policies over `shards` shards.
pub fn simulate(
    policy: Policy,
    capacity: usize,
    shards: usize,
    seed: u64,
    keys: &[u64],
) -> Outcome {
    let started = Instant::now();
    let engine = |eviction| {
        engine::Cache::builder(capacity)
            .shards(shards)
            .seeds(seeds(seed))
            .eviction(eviction)
            .build()
    };
    let mut window_share = None;
    let hits = match policy {
        Policy::Engine | Policy::Clock => {
            let cache = engine(match policy {
                Policy::Clock => engine::Eviction::Clock,
                _ => engine::Eviction::Adaptive,
            });
            let hits = keys
                .iter()
                .filter(|k| {
                    let key = k.to_be_bytes();
                    let hit = cache.get_with(&key, |_| ()).is_some();
                    if !hit {
                        cache
                            .insert(&key, &[], None)
                            .expect("an empty value always fits");
                    }
                    hit
                })
                .count();
            window_share = Some(cache.metrics().window_share());
            hits
        }
        Policy::Lru => {
            let mut cache =
                lru::LruCache::new(std::num::NonZeroUsize::new(capacity).expect("capacity > 0"));
            keys.iter()
                .filter(|k| {
                    if cache.get(*k).is_some() {
                        true
                    } else {
                        cache.put(**k, ());
                        false
                    }
                })
                .count()
        }
        Policy::Arc => {
            let mut arc = crate::arc::Arc::new(capacity);
            keys.iter().filter(|k| arc.access(**k)).count()
        }
        Policy::Moka => {
            let cache: moka::sync::Cache<u64, ()> = moka::sync::Cache::new(capacity as u64);
            keys.iter()
                .enumerate()
                .filter(|(i, k)| {
                    let hit = cache.get(*k).is_some();
                    if !hit {
                        cache.insert(**k, ());
                    }
                    // moka applies evictions and admission in batches; running them this
                    // often keeps it within its capacity the way a busy cache would be.
                    if i % 64 == 0 {
                        cache.run_pending_tasks();
                    }
                    hit
                })
                .count()
        }
    };
    let shards = match policy {
        Policy::Engine | Policy::Clock => shards,
        _ => 1,
    };
    Outcome {
        policy,
        capacity,
        shards,
        window_share,
        requests: keys.len(),
        hits,
        hit_ratio: if keys.is_empty() {
            0.0
        } else {
            hits as f64 / keys.len() as f64
        },
        seconds: started.elapsed().as_secs_f64(),
    }
}

/// Replays `keys` against a running service: GET each; on 404, PUT it. Returns the hit
/// ratio the service gave.
pub fn over_http(target: &str, prefix: &str, keys: &[u64]) -> anyhow::Result<f64> {
    let target = crate::target::resolve(target)?;
    anyhow::ensure!(
        target.protocol == crate::client::Protocol::Http,
        "a replay's --target must be an http:// URL of the service"
    );
    // The load thread outlives this call's borrows as far as the compiler knows.
    let (prefix, keys) = (prefix.to_owned(), keys.to_vec());
    crate::runtime::run(crate::runtime::IoDriver::Auto, move || async move {
        let mut conn = target.connect().await?;
        let mut request = Vec::new();
        let mut hits = 0usize;
        for &key in &keys {
            target.get_request(&mut request, &prefix, key);
            match conn.exchange(&mut request).await? {
                200 => hits += 1,
                404 => {
                    target.put_request(&mut request, &prefix, key, None, b"1");
                    let status = conn.exchange(&mut request).await?;
                    anyhow::ensure!(status == 200, "PUT of key {key} answered {status}");
                }
                status => anyhow::bail!("GET of key {key} answered {status}"),
            }
        }
        Ok(hits as f64 / keys.len().max(1) as f64)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_matches_hand_computed_hits() {
        // Capacity 2: a b a c b a → hits: a (3rd). Then c evicts b, b misses (evicts a),
        // a misses.
        let keys = [1, 2, 1, 3, 2, 1];
        assert_eq!(simulate(Policy::Lru, 2, 1, 0, &keys).hits, 1);
        // Everything fits: only first touches miss.
        for policy in Policy::ALL {
            assert_eq!(simulate(policy, 10, 2, 0, &keys).hits, 3, "{policy:?}");
        }
    }

    #[test]
    fn clock_is_close_to_lru_on_a_looping_working_set() {
        let keys: Vec<u64> = (0..20_000).map(|i| (i * 7919) % 500).collect();
        let engine = simulate(Policy::Clock, 600, 1, 0, &keys).hit_ratio;
        let lru = simulate(Policy::Lru, 600, 1, 0, &keys).hit_ratio;
        assert!(
            (engine - lru).abs() < 1e-9,
            "everything fits: {engine} vs {lru}"
        );
        assert!((lru - (1.0 - 500.0 / 20_000.0)).abs() < 1e-9);
    }

    /// The ARC paper's OLTP trace (Table IV): exact LRU and ARC reproduce its figures, which
    /// checks the trace reader and the ARC reference, and the engine is ahead of both at
    /// these sizes, over the two shards the service runs on this machine.
    #[test]
    fn oltp_reproduces_the_arc_papers_table_and_the_engine_leads_it() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/traces/OLTP.lis.zst");
        let keys = crate::trace::read(
            crate::trace::open(&path).expect("the ARC traces sit in ../shared/traces"),
            &crate::trace::Format::Lis,
            None,
        )
        .unwrap();
        for (capacity, lru, arc) in [(1_000, 32.83, 38.93), (2_000, 42.47, 46.08)] {
            let percent = |p| 100.0 * simulate(p, capacity, 2, 0, &keys).hit_ratio;
            assert!(
                (percent(Policy::Lru) - lru).abs() < 0.01,
                "LRU at {capacity}"
            );
            assert!(
                (percent(Policy::Arc) - arc).abs() < 0.05,
                "ARC at {capacity}"
            );
            let engine = percent(Policy::Engine);
            assert!(engine > lru + 2.0, "engine {engine} at {capacity}");
        }
    }
}
