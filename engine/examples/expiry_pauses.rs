//! How long one call that runs due expiries holds a shard's writer when many entries
//! reach their TTL close together, whole (`ShardWriter::expire`, what `Cache` does) and
//! bounded (`expire_some`, as the server does it: BENCHMARKS.md, "Expiry pauses").
//!
//! ENTRIES entries (default 1,000,000; 100-byte values, TTL one hour) are written to one
//! shard over LOAD_MS of a held clock (default 10,000 ms), as a bulk load or a warm-up
//! would write them. Then the clock moves a second at a time until every entry has
//! expired, and each second runs the due expiries, whole or in calls of LIMIT records
//! (default 256) until none is due. Printed for each way: the calls over 2 ms and the
//! longest call. The server runs these on the core that serves the shard's connections,
//! so a call is a pause for them.
//!
//! `cargo run --release -p engine --example expiry_pauses -- [ENTRIES] [LOAD_MS] [LIMIT]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::hashing::KeyHasher;
use engine::{Eviction, ShardConfig, ShardWriter};

const TTL_MS: u64 = 3_600_000;
const START_MS: u64 = 1_000_000_000;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let entries = number(1_000_000);
    let load_ms = number(10_000);
    let limit = number(256) as usize;
    for bounded in [false, true] {
        let (mut shard, mut now) = loaded(entries, load_ms);
        let (mut longest, mut longest_at, mut expired) = (Duration::ZERO, 0, 0);
        let mut times = Vec::new();
        let seconds = (TTL_MS + load_ms).div_ceil(1000) + 1;
        for second in 1..=seconds {
            now += 1000;
            loop {
                let started = Instant::now();
                let (now_expired, done) = if bounded {
                    let step = shard.expire_some(now, limit);
                    (step.expired, step.done)
                } else {
                    (shard.expire(now), true)
                };
                let took = started.elapsed();
                times.push(took);
                expired += now_expired;
                if took > Duration::from_millis(2) {
                    println!("second {second}: one call took {took:?}, {now_expired} expired");
                }
                if took > longest {
                    (longest, longest_at) = (took, second);
                }
                if done {
                    break;
                }
            }
        }
        let way = if bounded {
            format!("in calls of {limit} records")
        } else {
            "whole".to_owned()
        };
        // Calls that expired nothing and found nothing due are most of them, and quick.
        times.retain(|t| *t > Duration::from_micros(1));
        times.sort_unstable();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "{entries} entries written over {load_ms} ms, {expired} expired {way}: {} calls that worked, median {:?}, p99 {:?}, p99.9 {:?}, the longest {longest:?} (second {longest_at})",
            times.len(),
            at(0.5),
            at(0.99),
            at(0.999),
        );
    }
}

/// A shard holding `entries` entries written over `load_ms`, and the time after.
fn loaded(entries: u64, load_ms: u64) -> (ShardWriter, u64) {
    let config = ShardConfig {
        max_entries: entries as usize + 1,
        max_bytes: u64::MAX,
        stale_window_ms: 0,
        eviction: Eviction::default(),
        huge_pages: false,
    };
    let hasher = KeyHasher::with_seeds([1, 2, 3, 4]);
    let mut shard = ShardWriter::new(config, Arc::default(), START_MS, hasher.clone());
    for i in 0..entries {
        let now = START_MS + i * load_ms / entries.max(1);
        let key = format!("key:{i}");
        let hash = hasher.hash(key.as_bytes());
        shard
            .insert(hash, key.as_bytes(), &[7; 100], Some(now + TTL_MS), now)
            .expect("room for every entry");
    }
    (shard, START_MS + load_ms)
}
