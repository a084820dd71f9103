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
