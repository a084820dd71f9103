//! [`Cache`]: the engine as a library, for callers without a thread-per-core runtime.
//!
//! It is the same shards the server runs, with each shard's writer behind its own mutex
//! instead of on its own core: reads stay lock-free, writes lock one shard. It does not
//! report hits and misses in its metrics (one shared counter touched by every read would
//! cost more than the read); callers that want them count where they read, as the server
//! does per core. The eviction policy's own view of the hit rate comes from reader
//! handles striped by thread (see `Cache::readers`), which share no counter between
//! threads until there are more threads than stripes.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::eviction::Eviction;
use crate::glob::Glob;
use crate::metrics::{MetricsSnapshot, ShardMetrics};
use crate::readthrough::{Flights, Joined, LeaderGuard, Origin, Outcome};
use crate::router::Router;
use crate::shard::{InsertError, Inserted, ShardConfig, ShardWriter, EXPIRY_PER_WRITE, SWEEP_STEP};
use crate::table::{EntryRef, TableReader};
use crate::time::{Clock, SystemClock};

pub struct Cache<C: Clock = SystemClock> {
    router: Router,
    /// Reader handles, one per shard for each stripe (`stripe * shards + shard`): each
    /// thread reads through its stripe's handles, so the lookup counts the eviction
    /// policy samples stay mostly thread-private.
    readers: Box<[TableReader]>,
    /// Stripes − 1 (their number is a power of two).
    stripe_mask: usize,
    writers: Box<[Mutex<ShardWriter>]>,
    flights: Box<[Flights]>,
    metrics: Box<[Arc<ShardMetrics>]>,
    clock: C,
}

pub struct CacheBuilder<C: Clock> {
    max_entries: usize,
    max_bytes: u64,
    shards: Option<usize>,
    seeds: Option<[u64; 4]>,
    eviction: Eviction,
    huge_pages: bool,
    clock: C,
}

impl Cache<SystemClock> {
    /// A builder for a cache of at most `max_entries` entries (and no byte bound unless
    /// one is set).
    pub fn builder(max_entries: usize) -> CacheBuilder<SystemClock> {
        CacheBuilder {
            max_entries,
            max_bytes: u64::MAX,
            shards: None,
            seeds: None,
            eviction: Eviction::default(),
            huge_pages: true,
            clock: SystemClock,
        }
    }
}

impl<C: Clock> CacheBuilder<C> {
    pub fn max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Number of shards (default: four per available core, so writers rarely contend).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// Fixes the hash seeds (default: random per process).
    pub fn seeds(mut self, seeds: [u64; 4]) -> Self {
        self.seeds = Some(seeds);
        self
    }

    /// The eviction policy (default: adaptive W-TinyLFU on CLOCK).
    pub fn eviction(mut self, eviction: Eviction) -> Self {
        self.eviction = eviction;
        self
    }

    /// Whether to ask Linux for transparent huge pages for the entries' memory (default:
    /// yes; see `slab.rs`). Off keeps every shard in small pages, for hosts where THP's
    /// compaction on page faults is not wanted.
    pub fn huge_pages(mut self, huge_pages: bool) -> Self {
        self.huge_pages = huge_pages;
        self
    }

    pub fn clock<C2: Clock>(self, clock: C2) -> CacheBuilder<C2> {
        CacheBuilder {
            max_entries: self.max_entries,
            max_bytes: self.max_bytes,
            shards: self.shards,
            seeds: self.seeds,
            eviction: self.eviction,
            huge_pages: self.huge_pages,
            clock,
        }
    }

    /// Builds the cache. Bounds are split across shards so that their sum is exactly the
    /// configured bound; a cache with fewer entries than shards gets fewer shards.
    pub fn build(self) -> Cache<C> {
        let default_shards = std::thread::available_parallelism().map_or(4, |n| n.get() * 4);
        let shards = self
            .shards
            .unwrap_or(default_shards)
            .clamp(1, self.max_entries.max(1));
        let router = match self.seeds {
            Some(seeds) => Router::with_seeds(shards, seeds),
            None => Router::new(shards),
        };
        let now = self.clock.now_ms();
        let metrics: Box<[Arc<ShardMetrics>]> = (0..shards).map(|_| Arc::default()).collect();
        let writers: Box<[Mutex<ShardWriter>]> = (0..shards)
            .map(|i| {
                let config = ShardConfig {
                    max_entries: split(self.max_entries as u64, shards, i) as usize,
                    max_bytes: split(self.max_bytes, shards, i),
                    stale_window_ms: 0,
                    eviction: self.eviction,
                    huge_pages: self.huge_pages,
                };
                Mutex::new(ShardWriter::new(
                    config,
                    metrics[i].clone(),
                    now,
                    router.hasher().clone(),
                ))
            })
            .collect();
        // A power of two, so that picking a thread's stripe is a mask, not a division.
        let stripes = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .next_power_of_two();
        let readers = (0..stripes)
            .flat_map(|_| writers.iter().map(|w| w.lock().reader()))
            .collect();
        Cache {
            router,
            readers,
            stripe_mask: stripes - 1,
            flights: (0..shards).map(|_| Flights::default()).collect(),
            writers,
            metrics,
            clock: self.clock,
        }
    }
}

/// This thread's reader stripe (masked to the stripe count): threads are numbered in the
/// order they first read.
#[inline(always)]
fn thread_stripe() -> usize {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // Const-initialised and without a destructor: a plain thread-local load, no lazy
    // initialisation state to check.
    thread_local! {
        static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    STRIPE.with(|s| match s.get() {
        usize::MAX => {
            let stripe = NEXT.fetch_add(1, Relaxed) & (usize::MAX >> 1);
            s.set(stripe);
            stripe
        }
        stripe => stripe,
    })
}

/// Shard `i`'s part of `total` over `shards` parts, the remainder going to the first ones.
fn split(total: u64, shards: usize, i: usize) -> u64 {
    if total == u64::MAX {
        return u64::MAX;
    }
    total / shards as u64 + u64::from((i as u64) < total % shards as u64)
}

impl<C: Clock> Cache<C> {
    /// Reads `key` lock-free and hands the entry to `read` while it is protected; the
    /// value is borrowed, not copied.
    #[inline]
    pub fn get_with<R>(&self, key: &[u8], read: impl FnOnce(EntryRef<'_>) -> R) -> Option<R> {
        let hash = self.router.hash(key);
        let shards = self.writers.len();
        let reader = (thread_stripe() & self.stripe_mask) * shards + self.router.shard_of(hash);
        self.readers[reader].get_with(hash, key, self.clock.now_ms(), read)
    }

    /// A copy of the value of `key`, if it is present and not expired.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.get_with(key, |e| e.value.to_vec())
    }

    /// Stores `value` under `key` for `ttl` (forever if `None`). First frees up to
    /// [`EXPIRY_PER_WRITE`] of the shard's due expiries, so expired entries make room
    /// before a live one is evicted; after many entries reached their TTL together, the
    /// next inserts free the rest a share at a time (reads already miss them), so no one
    /// insert holds the shard's lock for all of them. [`Cache::run_pending_tasks`] frees
    /// them all at once.
    pub fn insert(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Inserted, InsertError> {
        let hash = self.router.hash(key);
        let now = self.clock.now_ms();
        let expires_at = ttl.map(|t| crate::time::deadline_ms(now, t));
        let mut shard = self.writers[self.router.shard_of(hash)].lock();
        shard.expire_some(now, EXPIRY_PER_WRITE);
        shard.insert(hash, key, value, expires_at, now)
    }

    /// Deletes `key`; says whether a live entry was there. A fetch of the key in flight
    /// (`get_or_fetch`) is fenced: its value is not stored.
    pub fn remove(&self, key: &[u8]) -> bool {
        let hash = self.router.hash(key);
        let shard = self.router.shard_of(hash);
        let mut writer = self.writers[shard].lock();
        self.flights[shard].fence_where(|k| k == key);
        writer.remove(hash, key, self.clock.now_ms())
    }

    /// Read-through: the cached value of `key`, or else the origin's, fetched once however
    /// many threads miss the key at once and stored for `ttl` (see `readthrough.rs`).
    pub fn get_or_fetch<O: Origin>(
        &self,
        key: &[u8],
        ttl: Option<Duration>,
        origin: &O,
    ) -> Result<Option<Vec<u8>>, O::Error> {
        if let Some(value) = self.get(key) {
            return Ok(Some(value));
        }
        let hash = self.router.hash(key);
        let shard = self.router.shard_of(hash);
        let flights = &self.flights[shard];
        let pending = match flights.join(key) {
            Joined::Waiter(pending) => {
                return match pending.wait() {
                    Outcome::Value(value) => Ok(value),
                    Outcome::Failed(error) => match error.downcast_ref::<O::Error>() {
                        Some(error) => Err(error.clone()),
                        None => origin.fetch(key),
                    },
                    Outcome::Abandoned => origin.fetch(key),
                };
            }
            Joined::Leader(pending) => pending,
        };
        let mut guard = LeaderGuard {
            flights,
            key,
            pending,
            finished: false,
        };
        let result = origin.fetch(key);
        {
            // Under the shard's lock, so a remove or invalidation either fenced this fetch
            // already or comes after the value is stored (and removes it).
            let mut writer = self.writers[shard].lock();
            if let (Ok(Some(value)), false) = (&result, guard.pending.is_fenced()) {
                let now = self.clock.now_ms();
                writer.expire_some(now, EXPIRY_PER_WRITE);
                let expires_at = ttl.map(|t| crate::time::deadline_ms(now, t));
                let _ = writer.insert(hash, key, value, expires_at, now);
            }
            flights.end(key, &guard.pending);
        }
        guard.pending.finish(match &result {
            Ok(value) => Outcome::Value(value.clone()),
            Err(error) => Outcome::Failed(Arc::new(error.clone())),
        });
        guard.finished = true;
        result
    }

    /// Deletes every key matching `pattern` (Redis glob syntax) that the cache held when
    /// the call reached its shard; returns how many. Each shard is swept in steps of
    /// [`SWEEP_STEP`] slots under its lock, so writes from other threads go on between
    /// them, and what they write meanwhile is kept. A pattern without wildcards goes
    /// straight to its key's shard.
    pub fn invalidate(&self, pattern: &Glob) -> usize {
        if pattern.is_literal() {
            return usize::from(self.remove(pattern.literal_prefix()));
        }
        let mut removed = 0;
        for (writer, flights) in self.writers.iter().zip(self.flights.iter()) {
            let mut sweep = {
                let mut writer = writer.lock();
                flights.fence_where(|k| pattern.matches(k));
                writer.begin_sweep()
            };
            // The lock is let go between steps, so that a large shard's other writers
            // wait for a step rather than the whole.
            loop {
                let now = self.clock.now_ms();
                let swept = writer
                    .lock()
                    .sweep_some(sweep, SWEEP_STEP, now, |k| pattern.matches(k));
                removed += swept.removed.live;
                match swept.unfinished {
                    Some(rest) => sweep = rest,
                    None => break,
                }
            }
        }
        removed
    }

    /// Drops every expired entry now instead of at the next inserts; returns how many.
    pub fn run_pending_tasks(&self) -> usize {
        let now = self.clock.now_ms();
        self.writers.iter().map(|w| w.lock().expire(now)).sum()
    }

    /// Entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.metrics().entries as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        MetricsSnapshot::sum(self.metrics.iter().map(|m| &**m))
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests {
    use super::*;
    use crate::time::ManualClock;

    #[test]
    fn bounds_split_exactly_across_shards() {
        let parts: Vec<u64> = (0..4).map(|i| split(10, 4, i)).collect();
        assert_eq!(parts, vec![3, 3, 2, 2]);
        assert_eq!(split(u64::MAX, 3, 1), u64::MAX);
        let cache = Cache::builder(3).shards(8).build();
        assert_eq!(cache.writers.len(), 3);
    }

    #[test]
    fn ttl_follows_the_injected_clock() {
        let clock = ManualClock::new(1_000_000);
        let cache = Cache::builder(100).shards(2).clock(clock.clone()).build();
        cache
            .insert(b"k", b"v", Some(Duration::from_secs(10)))
            .unwrap();
        clock.advance(Duration::from_millis(9_999));
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]));
        clock.advance(Duration::from_millis(1));
        assert_eq!(cache.get(b"k"), None);
        assert_eq!(cache.run_pending_tasks(), 1);
        assert!(cache.is_empty());
    }

    /// Entries that reach their TTL together are freed a bounded share per insert, never
    /// seen by a read meanwhile, and all of them by the inserts that follow. (A share may
    /// go to moving the wheel's records to finer lists before any is freed.)
    #[test]
    fn an_insert_frees_a_bounded_share_of_the_entries_due_together() {
        const DUE: usize = 20 * EXPIRY_PER_WRITE;
        let clock = ManualClock::new(1_000_000);
        let cache = Cache::builder(4 * DUE)
            .shards(1)
            .clock(clock.clone())
            .build();
        for i in 0..DUE {
            cache
                .insert(&i.to_le_bytes(), b"v", Some(Duration::from_secs(10)))
                .unwrap();
        }
        clock.advance(Duration::from_secs(11));
        cache.insert(b"fresh", b"v", None).unwrap();
        let held = cache.len();
        assert!(
            held > DUE - 2 * EXPIRY_PER_WRITE,
            "one insert freed {} of {DUE} due entries",
            DUE + 1 - held
        );
        assert!((0..DUE).all(|i| cache.get(&i.to_le_bytes()).is_none()));
        let mut inserts = 0;
        while cache.len() > 1 + inserts {
            inserts += 1;
            assert!(inserts <= DUE, "the inserts do not free the rest");
            cache
                .insert(format!("more{inserts}").as_bytes(), b"v", None)
                .unwrap();
        }
        assert_eq!(cache.get(b"fresh").as_deref(), Some(&b"v"[..]));
        assert_eq!(cache.run_pending_tasks(), 0, "nothing due is left");
    }

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar as StdCondvar, Mutex as StdMutex};

    /// An origin that counts its fetches and holds each one at a gate until opened.
    struct GatedOrigin {
        calls: AtomicUsize,
        open: StdMutex<bool>,
        opened: StdCondvar,
        answer: Result<Option<Vec<u8>>, String>,
        panics: bool,
    }

    impl GatedOrigin {
        fn new(answer: Result<Option<Vec<u8>>, String>) -> Self {
            Self {
                calls: AtomicUsize::new(0),
                open: StdMutex::new(false),
                opened: StdCondvar::new(),
                answer,
                panics: false,
            }
        }

        fn open(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    impl Origin for GatedOrigin {
        type Error = String;

        fn fetch(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, String> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            assert!(!self.panics, "origin failure");
            self.answer.clone()
        }
    }

    /// Waits for `done` to hold, checking it every millisecond: a loop of yields would
    /// starve the threads it waits for where threads take turns on one lock (valgrind
    /// runs one thread at a time, `scripts/memcheck.sh`).
    fn poll_until(done: impl Fn() -> bool) {
        while !done() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts `waiters + 1` concurrent `get_or_fetch` calls for `key`, lets the fetch go
    /// once every waiter has joined it (and after `meanwhile`), and returns every result.
    fn stampede(
        cache: &Cache,
        origin: &GatedOrigin,
        waiters: usize,
        meanwhile: impl FnOnce(),
    ) -> Vec<std::thread::Result<Result<Option<Vec<u8>>, String>>> {
        std::thread::scope(|scope| {
            let leader = scope.spawn(|| cache.get_or_fetch(b"k", None, origin));
            poll_until(|| origin.calls.load(Ordering::SeqCst) > 0);
            let others: Vec<_> = (0..waiters)
                .map(|_| scope.spawn(|| cache.get_or_fetch(b"k", None, origin)))
                .collect();
            let shard = cache.router.owner(b"k");
            poll_until(|| cache.flights[shard].waiters(b"k") >= waiters);
            meanwhile();
            origin.open();
            std::iter::once(leader)
                .chain(others)
                .map(|t| t.join())
                .collect()
        })
    }

    #[test]
    fn concurrent_misses_make_one_fetch_and_share_its_value_or_error() {
        let cache = Cache::builder(100).shards(2).build();
        let origin = GatedOrigin::new(Ok(Some(b"v".to_vec())));
        for result in stampede(&cache, &origin, 8, || ()) {
            assert_eq!(result.unwrap(), Ok(Some(b"v".to_vec())));
        }
        assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(b"k").as_deref(), Some(&b"v"[..]), "stored");

        let cache = Cache::builder(100).shards(2).build();
        let origin = GatedOrigin::new(Err("origin down".into()));
        for result in stampede(&cache, &origin, 8, || ()) {
            assert_eq!(result.unwrap(), Err("origin down".to_string()));
        }
        assert_eq!(origin.calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.get(b"k"), None);
    }

    #[test]
    fn a_remove_during_the_fetch_fences_its_value() {
        let cache = Cache::builder(100).shards(2).build();
        let origin = GatedOrigin::new(Ok(Some(b"old".to_vec())));
        let results = stampede(&cache, &origin, 3, || {
            cache.remove(b"k");
        });
        for result in results {
            assert_eq!(
                result.unwrap(),
                Ok(Some(b"old".to_vec())),
                "callers in flight get it"
            );
        }
        assert_eq!(cache.get(b"k"), None, "but it was not stored");
    }

    #[test]
    fn a_panicking_fetch_does_not_strand_its_waiters() {
        let cache = Cache::builder(100).shards(2).build();
        let mut origin = GatedOrigin::new(Ok(Some(b"v".to_vec())));
        origin.panics = true;
        let results = stampede(&cache, &origin, 4, || ());
        // Every call panics in the origin: the leader's, and then each waiter's own fetch,
        // which it makes because the leader abandoned the flight. None hangs.
        assert!(results.iter().all(|r| r.is_err()));
        assert_eq!(origin.calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn literal_patterns_take_the_direct_route() {
        let cache = Cache::builder(100).shards(4).build();
        cache.insert(b"a*b", b"1", None).unwrap();
        cache.insert(b"axb", b"2", None).unwrap();
        assert_eq!(cache.invalidate(&Glob::new(b"a\\*b")), 1);
        assert_eq!(cache.get(b"axb").as_deref(), Some(&b"2"[..]));
    }
}
