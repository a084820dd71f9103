//! `cargo bench -p engine --bench l1`: the engine against moka (TinyLFU) and quick_cache
//! (S3-FIFO), same keys, same capacity, same run. `engine` runs the default adaptive
//! eviction, `engine_clock` the same engine with plain CLOCK (`CACHE_EVICTION=clock`), so
//! the policy's cost on reads and writes shows in every run.
//!
//! - `get_hit`: 100k entries with 100-byte values in caches of capacity 131,072, keys read
//!   in a fixed random order.
//!   `engine` borrows the value under its read guard (`get_with`), which is what the
//!   server does when it writes a response; `engine_copy` copies it out (`get`); moka and
//!   quick_cache hand out a clone of an `Arc<[u8]>` value.
//! - `get_hit_small`: the same with 1,000 entries (capacity 1,311), which stay in the CPU's
//!   caches: the setting the original Go service's 25.3 ns per get is comparable with.
//! - `dram_chase/baseline`: no cache at all, one dependent random load per step over a
//!   working set the size of the engine's 100k-entry table (100k entries' charge, one
//!   64-byte line per step): what a lookup that misses every cache level costs on this
//!   machine, the floor `get_hit` is measured against.
//! - `set`: random keys from a space of 200k into a cache of capacity 100k, so the steady
//!   state mixes overwrites with inserts that evict.
//! - `get_hit_concurrent`: `get_hit` on 2 threads; time is wall time over the total
//!   operations of both (as Go's `RunParallel` reports ns/op).
//! - `singleflight`: one leader joining and completing a flight, no followers (the Go
//!   service's `BenchmarkRequestCoalescer`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use engine::singleflight::{Join, SingleFlight};
use engine::{Cache, CoarseClock, Eviction};
use rand::{rngs::StdRng, Rng, SeedableRng};

const ENTRIES: usize = 100_000;
/// Capacity for the read benchmarks: room for every key, since keys hash unevenly across
/// shards (all three caches are sharded). `set` uses `ENTRIES` so that it evicts.
const READ_CAPACITY: usize = 131_072;
const VALUE: [u8; 100] = [7; 100];
const ORDER_LEN: usize = 1 << 20;

/// A key kept inline, so that a benchmark's keys are one array: fetching the key to look
/// up is one load from it, as a server's key is in the request it just read, rather than
/// a load of a `Vec`'s header and then one of its bytes elsewhere on the heap (two misses
/// of the harness's own before the cache's first, at 100k keys).
#[derive(Clone, Copy)]
struct Key {
    len: u8,
    bytes: [u8; 15],
}

impl Key {
    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn keys(n: usize) -> Vec<Key> {
    (0..n)
        .map(|i| {
            let text = format!("key:{i}");
            let mut key = Key {
                len: text.len() as u8,
                bytes: [0; 15],
            };
            key.bytes[..text.len()].copy_from_slice(text.as_bytes());
            key
        })
        .collect()
}

fn random_order(space: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..ORDER_LEN)
        .map(|_| rng.gen_range(0..space as u32))
        .collect()
}

const ENGINES: [(&str, Eviction); 2] = [
    ("engine", Eviction::Adaptive),
    ("engine_clock", Eviction::Clock),
];

fn engine_cache(keys: &[Key], capacity: usize, eviction: Eviction) -> Cache<CoarseClock> {
    let cache = Cache::builder(capacity)
        .eviction(eviction)
        .clock(CoarseClock::new())
        .build();
    for k in keys {
        cache.insert(k.bytes(), &VALUE, None).unwrap();
    }
    cache
}

fn moka_cache(keys: &[Key], capacity: usize) -> moka::sync::Cache<Vec<u8>, Arc<[u8]>> {
    let cache = moka::sync::Cache::new(capacity as u64);
    for k in keys {
        cache.insert(k.bytes().to_vec(), Arc::from(&VALUE[..]));
    }
    cache.run_pending_tasks();
    cache
}

fn quick_cache(keys: &[Key], capacity: usize) -> quick_cache::sync::Cache<Vec<u8>, Arc<[u8]>> {
    let cache = quick_cache::sync::Cache::new(capacity);
    for k in keys {
        cache.insert(k.bytes().to_vec(), Arc::from(&VALUE[..]));
    }
    cache
}

/// A stream of key indices: the fixed order, read on from where the last batch stopped.
/// Criterion times batches of growing size; if each batch started the order over, every
/// batch would replay the keys the one before it had just touched: reads would find them
/// in the CPU's caches, and `set` would mostly overwrite keys it had just written instead
/// of mixing overwrites with inserts that evict.
struct Walk<'a> {
    order: &'a [u32],
    at: usize,
}

impl<'a> Walk<'a> {
    fn new(order: &'a [u32]) -> Self {
        Self { order, at: 0 }
    }

    /// Runs `op` on the next `iters` indices of the stream.
    fn run(&mut self, iters: u64, mut op: impl FnMut(u32)) {
        for _ in 0..iters {
            op(self.order[self.at]);
            self.at = (self.at + 1) % self.order.len();
        }
    }
}

fn get_hit(c: &mut Criterion) {
    reads(c, "get_hit", ENTRIES, READ_CAPACITY, &ENGINES);
}

fn get_hit_small(c: &mut Criterion) {
    reads(c, "get_hit_small", 1_000, 1_311, &ENGINES[..1]);
}

/// Hits on `entries` keys in caches of `capacity`, the engine under each of `engines`
/// (with `engine_copy` beside the adaptive one), moka and quick_cache.
fn reads(
    c: &mut Criterion,
    group: &str,
    entries: usize,
    capacity: usize,
    engines: &[(&str, Eviction)],
) {
    let keys = keys(entries);
    let order = random_order(entries, 1);
    let mut group = c.benchmark_group(group);

    for &(name, eviction) in engines {
        let cache = engine_cache(&keys, capacity, eviction);
        assert_eq!(cache.len(), entries, "every key fits");
        group.bench_function(name, |b| {
            let mut walk = Walk::new(&order);
            b.iter_custom(|iters| {
                let start = Instant::now();
                walk.run(iters, |i| {
                    black_box(cache.get_with(keys[i as usize].bytes(), |e| e.value.len()));
                });
                start.elapsed()
            })
        });
        if eviction == Eviction::Adaptive {
            group.bench_function("engine_copy", |b| {
                let mut walk = Walk::new(&order);
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    walk.run(iters, |i| {
                        black_box(cache.get(keys[i as usize].bytes()));
                    });
                    start.elapsed()
                })
            });
        }
    }

    let moka = moka_cache(&keys, capacity);
    group.bench_function("moka", |b| {
        let mut walk = Walk::new(&order);
        b.iter_custom(|iters| {
            let start = Instant::now();
            walk.run(iters, |i| {
                black_box(moka.get(keys[i as usize].bytes()));
            });
            start.elapsed()
        })
    });
    drop(moka);

    let quick = quick_cache(&keys, capacity);
    group.bench_function("quick_cache", |b| {
        let mut walk = Walk::new(&order);
        b.iter_custom(|iters| {
            let start = Instant::now();
            walk.run(iters, |i| {
                black_box(quick.get(keys[i as usize].bytes()));
            });
            start.elapsed()
        })
    });
    group.finish();
}

/// One dependent load per step around a ring of 64-byte lines linked in a shuffled order,
/// spanning what 100k entries take in the engine.
fn dram_chase(c: &mut Criterion) {
    const LINE_WORDS: usize = 8;
    let working_set = ENTRIES as u64 * engine::entry_charge(9, VALUE.len());
    let lines = (working_set / 64) as usize;
    let mut rng = StdRng::seed_from_u64(3);
    let mut cycle: Vec<usize> = (0..lines).collect();
    for i in (1..lines).rev() {
        cycle.swap(i, rng.gen_range(0..=i));
    }
    // Line `i` holds the index of the line after it, in its first word.
    let mut next = vec![0usize; lines * LINE_WORDS];
    for (i, &line) in cycle.iter().enumerate() {
        next[line * LINE_WORDS] = cycle[(i + 1) % lines];
    }
    let mut group = c.benchmark_group("dram_chase");
    group.bench_function("baseline", |b| {
        let mut at = 0usize;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                at = next[at * LINE_WORDS];
            }
            black_box(at);
            start.elapsed()
        })
    });
    group.finish();
}

fn set(c: &mut Criterion) {
    let space = 2 * ENTRIES;
    let keys = keys(space);
    let order = random_order(space, 2);
    let mut group = c.benchmark_group("set");

    for (name, eviction) in ENGINES {
        let cache = engine_cache(&keys[..ENTRIES], ENTRIES, eviction);
        group.bench_function(name, |b| {
            let mut walk = Walk::new(&order);
            b.iter_custom(|iters| {
                let start = Instant::now();
                walk.run(iters, |i| {
                    black_box(cache.insert(keys[i as usize].bytes(), &VALUE, None).ok());
                });
                start.elapsed()
            })
        });
    }

    let moka = moka_cache(&keys[..ENTRIES], ENTRIES);
    let value: Arc<[u8]> = Arc::from(&VALUE[..]);
    group.bench_function("moka", |b| {
        let mut walk = Walk::new(&order);
        b.iter_custom(|iters| {
            let start = Instant::now();
            walk.run(iters, |i| {
                moka.insert(keys[i as usize].bytes().to_vec(), value.clone());
            });
            start.elapsed()
        })
    });
    drop(moka);

    let quick = quick_cache(&keys[..ENTRIES], ENTRIES);
    group.bench_function("quick_cache", |b| {
        let mut walk = Walk::new(&order);
        b.iter_custom(|iters| {
            let start = Instant::now();
            walk.run(iters, |i| {
                quick.insert(keys[i as usize].bytes().to_vec(), value.clone());
            });
            start.elapsed()
        })
    });
    group.finish();
}

/// Splits `iters` operations over two threads, each on its own stream; returns the wall
/// time of the whole.
fn two_threads(iters: u64, walks: &mut [Walk<'_>; 2], op: impl Fn(u32) + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(3);
    std::thread::scope(|s| {
        for walk in walks.iter_mut() {
            let (barrier, op) = (&barrier, &op);
            s.spawn(move || {
                barrier.wait();
                walk.run(iters / 2, op);
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn get_hit_concurrent(c: &mut Criterion) {
    let keys = keys(ENTRIES);
    let orders = [random_order(ENTRIES, 3), random_order(ENTRIES, 4)];
    let mut group = c.benchmark_group("get_hit_concurrent");

    for (name, eviction) in ENGINES {
        let cache = engine_cache(&keys, READ_CAPACITY, eviction);
        group.bench_function(name, |b| {
            let mut walks = orders.each_ref().map(|order| Walk::new(order));
            b.iter_custom(|iters| {
                two_threads(iters, &mut walks, |i| {
                    black_box(cache.get_with(keys[i as usize].bytes(), |e| e.value.len()));
                })
            })
        });
    }

    let moka = moka_cache(&keys, READ_CAPACITY);
    group.bench_function("moka", |b| {
        let mut walks = orders.each_ref().map(|order| Walk::new(order));
        b.iter_custom(|iters| {
            two_threads(iters, &mut walks, |i| {
                black_box(moka.get(keys[i as usize].bytes()));
            })
        })
    });
    drop(moka);

    let quick = quick_cache(&keys, READ_CAPACITY);
    group.bench_function("quick_cache", |b| {
        let mut walks = orders.each_ref().map(|order| Walk::new(order));
        b.iter_custom(|iters| {
            two_threads(iters, &mut walks, |i| {
                black_box(quick.get(keys[i as usize].bytes()));
            })
        })
    });
    group.finish();
}

fn singleflight(c: &mut Criterion) {
    let keys = keys(1_024);
    let order = random_order(keys.len(), 5);
    let flights: SingleFlight<Arc<[u8]>, ()> = SingleFlight::new();
    let value: Arc<[u8]> = Arc::from(&VALUE[..]);
    let mut group = c.benchmark_group("singleflight");
    group.bench_function("engine", |b| {
        let mut walk = Walk::new(&order);
        b.iter_custom(|iters| {
            let start = Instant::now();
            walk.run(iters, |i| match flights.join(keys[i as usize].bytes()) {
                Join::Leader(fill) => {
                    black_box(fill.complete(Ok(value.clone())));
                }
                Join::Follower(_) => unreachable!("no concurrent flights"),
            });
            start.elapsed()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = dram_chase, get_hit, get_hit_small, set, get_hit_concurrent, singleflight
}
criterion_main!(benches);
