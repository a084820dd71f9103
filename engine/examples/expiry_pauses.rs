//! How long one call that runs due expiries can hold a shard's writer, when many entries
//! reach their TTL close together: an open problem this program measures (BENCHMARKS.md,
//! "Expiry pauses").
//!
//! ENTRIES entries (default 1,000,000; 100-byte values, TTL one hour) are written to one
//! shard over LOAD_MS of a held clock (default 10,000 ms), as a bulk load or a warm-up
//! would write them. Then the clock moves a second at a time until every entry has
//! expired, and each second runs the due expiries once, as the server's sweep or its next
//! write does. Printed: every call over 2 ms, and the longest. The server runs these on
//! the core that serves the shard's connections, so such a call is a pause for them.
//!
//! `cargo run --release -p engine --example expiry_pauses -- [ENTRIES] [LOAD_MS]`

use std::time::{Duration, Instant};

use engine::{Cache, ManualClock};

const TTL: Duration = Duration::from_secs(3600);

fn main() {
    let mut args = std::env::args().skip(1);
    let mut number = |default: u64| {
        args.next()
            .map_or(default, |a| a.parse().expect("a whole number"))
    };
    let entries = number(1_000_000);
    let load_ms = number(10_000);

    let clock = ManualClock::new(1_000_000_000);
    let cache = Cache::builder(entries as usize + 1)
        .shards(1)
        .clock(clock.clone())
        .build();
    // The clock moves in whole milliseconds, so the writes' ns are carried over.
    let ns_per_write = load_ms * 1_000_000 / entries.max(1);
    let mut carried_ns = 0;
    for i in 0..entries {
        let key = format!("key:{i}");
        cache
            .insert(key.as_bytes(), &[7; 100], Some(TTL))
            .expect("room for every entry");
        carried_ns += ns_per_write;
        clock.advance(Duration::from_millis(carried_ns / 1_000_000));
        carried_ns %= 1_000_000;
    }

    let (mut longest, mut longest_at, mut expired) = (Duration::ZERO, 0, 0);
    let seconds = (TTL.as_millis() as u64 + load_ms).div_ceil(1000) + 1;
    for second in 1..=seconds {
        clock.advance(Duration::from_secs(1));
        let started = Instant::now();
        let now_expired = cache.run_pending_tasks();
        let took = started.elapsed();
        expired += now_expired;
        if took > Duration::from_millis(2) {
            println!("second {second}: {took:?}, {now_expired} expired");
        }
        if took > longest {
            (longest, longest_at) = (took, second);
        }
    }
    println!(
        "{entries} entries written over {load_ms} ms, {expired} expired: the longest call took {longest:?} (second {longest_at})"
    );
}
