//! `cache-bench replay`: hit ratio of a key trace at given capacities, for the engine's
//! CLOCK and, in the same run, an exact LRU (the `lru` crate) and moka's W-TinyLFU. Every
//! policy sees the same keys; a miss inserts the key. Optionally the trace is also
//! replayed against a running service over HTTP (GET; on 404, PUT).

use std::time::Instant;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// The engine: CLOCK, one shard, so the policy is measured and not the sharding.
    Engine,
    /// Exact LRU.
    Lru,
    /// moka 0.12, W-TinyLFU.
    Moka,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Engine, Policy::Lru, Policy::Moka];

    pub fn name(self) -> &'static str {
        match self {
            Policy::Engine => "engine (CLOCK)",
            Policy::Lru => "exact LRU",
            Policy::Moka => "moka (W-TinyLFU)",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub policy: Policy,
    pub capacity: usize,
    pub requests: usize,
    pub hits: usize,
    pub hit_ratio: f64,
    pub seconds: f64,
}

/// Replays `keys` against `policy` holding at most `capacity` entries.
pub fn simulate(policy: Policy, capacity: usize, keys: &[u64]) -> Outcome {
    let started = Instant::now();
    let hits = match policy {
        Policy::Engine => {
            let cache = engine::Cache::builder(capacity).shards(1).build();
            keys.iter()
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
                .count()
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
    Outcome {
        policy,
        capacity,
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
    let (addr, host) = crate::load::resolve(target)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut conn = crate::client::Connection::open(addr).await?;
        let mut request = Vec::new();
        let mut hits = 0usize;
        for &key in keys {
            crate::load::get_request(&mut request, &host, prefix, key);
            match conn.exchange(&request).await? {
                200 => hits += 1,
                404 => {
                    crate::load::put_request(&mut request, &host, prefix, key, None, b"1");
                    let status = conn.exchange(&request).await?;
                    anyhow::ensure!(status == 200, "PUT of key {key} answered {status}");
                }
                status => anyhow::bail!("GET of key {key} answered {status}"),
            }
        }
        Ok(hits as f64 / keys.len().max(1) as f64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_matches_hand_computed_hits() {
        // Capacity 2: a b a c b a → hits: a (3rd). Then c evicts b, b misses (evicts a),
        // a misses.
        let keys = [1, 2, 1, 3, 2, 1];
        assert_eq!(simulate(Policy::Lru, 2, &keys).hits, 1);
        // Everything fits: only first touches miss.
        let o = simulate(Policy::Engine, 10, &keys);
        assert_eq!(o.hits, 3);
        assert_eq!(simulate(Policy::Moka, 10, &keys).hits, 3);
    }

    #[test]
    fn clock_is_close_to_lru_on_a_looping_working_set() {
        let keys: Vec<u64> = (0..20_000).map(|i| (i * 7919) % 500).collect();
        let engine = simulate(Policy::Engine, 600, &keys).hit_ratio;
        let lru = simulate(Policy::Lru, 600, &keys).hit_ratio;
        assert!(
            (engine - lru).abs() < 1e-9,
            "everything fits: {engine} vs {lru}"
        );
        assert!((lru - (1.0 - 500.0 / 20_000.0)).abs() < 1e-9);
    }
}
