//! `cache-bench memory`: what an entry costs in memory, in process, for the engine and the
//! caches people would pick instead (moka, quick_cache), on the same keys and values.
//!
//! Each cache is measured in a process of its own (this binary runs itself once per
//! cache), so that what one cache freed cannot be reused by the next. The figure is the
//! growth of the process's resident set from before the cache is built until it is full,
//! per entry, and what of it goes beyond the key and value bytes. Every cache is bounded
//! at exactly the number of entries, and what it makes resident when it is built (a
//! bucket array or a sketch sized from the bound, written out at construction) counts
//! with the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

/// The caches measured, by the name each is reported under.
pub const CACHES: [&str; 3] = ["engine", "moka", "quick_cache"];

/// What filling one cache cost.
pub struct Footprint {
    pub grown_bytes: u64,
    pub payload_bytes: u64,
    pub entries: u64,
}

impl Footprint {
    pub fn per_entry(&self) -> f64 {
        self.grown_bytes as f64 / self.entries as f64
    }

    pub fn overhead_per_entry(&self) -> f64 {
        (self.grown_bytes as f64 - self.payload_bytes as f64) / self.entries as f64
    }
}

fn resident_bytes() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// Fills `cache` with `entries` keys `key:0` … and `value_bytes`-byte values (with a TTL
/// where `ttl` is set and the cache supports one), in this process.
pub fn measure(
    cache: &str,
    entries: u64,
    value_bytes: usize,
    ttl: Option<Duration>,
) -> anyhow::Result<Footprint> {
    let value = vec![b'v'; value_bytes];
    let keys = (0..entries).map(|i| format!("key:{i}"));
    let key_bytes: u64 = (0..entries).map(|i| format!("key:{i}").len() as u64).sum();
    let payload_bytes = key_bytes + entries * value_bytes as u64;
    let capacity = usize::try_from(entries)?;
    let grown_bytes = match cache {
        "engine" => {
            // One shard, as the service's `CACHE_CORES=1`: a shard's bound is exact.
            let before = resident_bytes()?;
            let engine = engine::Cache::builder(capacity).shards(1).build();
            for key in keys {
                engine.insert(key.as_bytes(), &value, ttl)?;
            }
            let grown = resident_bytes()? - before;
            if engine.len() as u64 != entries {
                bail!("the engine kept {} of {entries} entries", engine.len());
            }
            grown
        }
        "moka" => {
            let mut builder = moka::sync::Cache::builder().max_capacity(entries);
            if let Some(ttl) = ttl {
                builder = builder.time_to_live(ttl);
            }
            let before = resident_bytes()?;
            let moka: moka::sync::Cache<Vec<u8>, Arc<[u8]>> = builder.build();
            for key in keys {
                moka.insert(key.into_bytes(), Arc::from(&value[..]));
            }
            moka.run_pending_tasks();
            resident_bytes()? - before
        }
        "quick_cache" => {
            // No TTLs in quick_cache.
            let before = resident_bytes()?;
            let quick: quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> =
                quick_cache::sync::Cache::new(capacity);
            for key in keys {
                quick.insert(key.into_bytes(), Arc::from(&value[..]));
            }
            resident_bytes()? - before
        }
        other => bail!("unknown cache {other:?}: expected one of {CACHES:?}"),
    };
    Ok(Footprint {
        grown_bytes,
        payload_bytes,
        entries,
    })
}

/// What a byte-bounded cache held after one phase of [`shift`].
pub struct Phase {
    pub value_bytes: usize,
    pub entries: u64,
    pub grown_bytes: u64,
}

/// Passes over the bound each phase writes: enough that the phase's values replace the
/// last phase's, as far as the cache's policy lets them in.
pub const TURNOVERS: u64 = 3;

/// The newest keys the reads between writes pick from, so that what is evicted is not in
/// the order it was written (a slab then frees blocks scattered over its chunks).
const READ_WINDOW: u64 = 500_000;

/// A shift in value sizes under a byte bound: `cache`, bounded at `max_bytes`, is written
/// new keys in one phase per size in `values` (each phase [`TURNOVERS`] times the bound in
/// key and value bytes), one read of a recent key after each write. After each phase,
/// the process's resident growth since before the cache was built. The engine's bound
/// counts its overhead; moka's and quick_cache's weigh keys and values only, so their
/// entries are more for the same bound. A cache that keeps its memory near its bound
/// through the shift reuses what the evicted sizes freed.
pub fn shift(cache: &str, max_bytes: u64, values: &[usize]) -> anyhow::Result<Vec<Phase>> {
    let before = resident_bytes()?;
    let grown = || resident_bytes().map(|now| now.saturating_sub(before));
    let mut phases = Vec::new();
    let mut written = 0u64;
    let mut random = 0x9E37_79B9_7F4A_7C15u64;
    let mut run = |insert: &mut dyn FnMut(&[u8], &[u8]),
                   read: &mut dyn FnMut(&[u8]),
                   count: &mut dyn FnMut() -> u64|
     -> anyhow::Result<()> {
        for &value_bytes in values {
            let value = vec![b'v'; value_bytes];
            let writes = TURNOVERS.saturating_mul(max_bytes) / (value_bytes as u64 + 10);
            for _ in 0..writes {
                insert(format!("key:{written}").as_bytes(), &value);
                written += 1;
                random ^= random << 13;
                random ^= random >> 7;
                random ^= random << 17;
                let back = random % written.min(READ_WINDOW);
                read(format!("key:{}", written - 1 - back).as_bytes());
            }
            phases.push(Phase {
                value_bytes,
                entries: count(),
                grown_bytes: grown()?,
            });
        }
        Ok(())
    };
    match cache {
        "engine" => {
            let engine = engine::Cache::builder(usize::MAX)
                .max_bytes(max_bytes)
                .shards(1)
                .build();
            run(
                &mut |k, v| {
                    let _ = engine.insert(k, v, None);
                },
                &mut |k| {
                    std::hint::black_box(engine.get_with(k, |e| e.value.len()));
                },
                &mut || engine.len() as u64,
            )?;
        }
        "moka" => {
            let moka: moka::sync::Cache<Vec<u8>, Arc<[u8]>> = moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|k: &Vec<u8>, v: &Arc<[u8]>| {
                    u32::try_from(k.len() + v.len()).unwrap_or(u32::MAX)
                })
                .build();
            run(
                &mut |k, v| moka.insert(k.to_vec(), Arc::from(v)),
                &mut |k| {
                    std::hint::black_box(moka.get(k));
                },
                &mut || {
                    moka.run_pending_tasks();
                    moka.entry_count()
                },
            )?;
        }
        "quick_cache" => {
            #[derive(Clone)]
            struct Bytes;
            impl quick_cache::Weighter<Vec<u8>, Arc<[u8]>> for Bytes {
                fn weight(&self, key: &Vec<u8>, value: &Arc<[u8]>) -> u64 {
                    (key.len() + value.len()) as u64
                }
            }
            let estimated = usize::try_from(max_bytes / 64).unwrap_or(usize::MAX);
            let quick = quick_cache::sync::Cache::with_weighter(estimated, max_bytes, Bytes);
            run(
                &mut |k, v| quick.insert(k.to_vec(), Arc::from(v)),
                &mut |k| {
                    std::hint::black_box(quick.get(k));
                },
                &mut || quick.len() as u64,
            )?;
        }
        other => bail!("unknown cache {other:?}: expected one of {CACHES:?}"),
    }
    Ok(phases)
}
