//! Time sources. Shard operations take `now` (milliseconds since the UNIX epoch) as an
//! argument, so the engine never reads a clock by itself and TTL tests are exact: they
//! drive a [`ManualClock`] and never sleep. A server uses [`CoarseClock`], which is
//! refreshed by whoever is about to act on the time (a connection when input arrives, a
//! shard's owner when a message does), so the many deadline checks of one request cost a
//! relaxed load each instead of a `clock_gettime`, and an idle server needs no ticker
//! waking it up (memcached keeps its `current_time` with a ticker instead).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

/// The deadline `ttl` after `now_ms`, saturating: a TTL too long to represent never ends
/// rather than wrapping into the past.
pub fn deadline_ms(now_ms: u64, ttl: Duration) -> u64 {
    now_ms.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
}

/// A source of "now", in milliseconds since the UNIX epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// Reads the system clock on every call: precise, and about 20 ns per read.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        wall_clock_ms()
    }
}

fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A clock that moves only when told to: for tests and simulations.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self(Arc::new(AtomicU64::new(start_ms)))
    }

    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Wall-clock milliseconds anchored to a monotonic `Instant` (so it never runs backwards),
/// refreshed by [`CoarseClock::tick`] and read with one relaxed load.
#[derive(Clone, Debug)]
pub struct CoarseClock(Arc<CoarseInner>);

#[derive(Debug)]
struct CoarseInner {
    now_ms: CachePadded<AtomicU64>,
    anchor: Instant,
    anchor_wall_ms: u64,
}

impl CoarseClock {
    pub fn new() -> Self {
        let anchor_wall_ms = wall_clock_ms();
        Self(Arc::new(CoarseInner {
            now_ms: CachePadded::new(AtomicU64::new(anchor_wall_ms)),
            anchor: Instant::now(),
            anchor_wall_ms,
        }))
    }

    /// Brings the cached time up to date and returns it. Concurrent callers are harmless
    /// (the value only grows), and cheap: the shared line is written at most once a
    /// millisecond, whoever calls.
    pub fn tick(&self) -> u64 {
        self.tick_at(Instant::now())
    }

    /// [`tick`](Self::tick) with a reading of the monotonic clock the caller already took.
    pub fn tick_at(&self, at: Instant) -> u64 {
        let elapsed = at.saturating_duration_since(self.0.anchor);
        let now = self.0.anchor_wall_ms + elapsed.as_millis() as u64;
        if now > self.0.now_ms.load(Ordering::Relaxed) {
            self.0.now_ms.fetch_max(now, Ordering::Relaxed);
        }
        now
    }
}

impl Default for CoarseClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for CoarseClock {
    #[inline(always)]
    fn now_ms(&self) -> u64 {
        self.0.now_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(Duration::from_millis(250));
        assert_eq!(clock.now_ms(), 1_250);
        clock.set(5);
        assert_eq!(clock.now_ms(), 5);
    }

    #[test]
    fn coarse_clock_never_runs_backwards_and_tracks_wall_time() {
        let clock = CoarseClock::new();
        let first = clock.now_ms();
        let ticked = clock.tick();
        assert!(ticked >= first);
        assert!(clock.now_ms() >= first);
        assert!(ticked.abs_diff(wall_clock_ms()) < 1_000);
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[test]
    fn deadlines_saturate_instead_of_wrapping() {
        assert_eq!(deadline_ms(1_000, Duration::from_secs(2)), 3_000);
        assert_eq!(deadline_ms(u64::MAX - 5, Duration::from_secs(1)), u64::MAX);
        assert_eq!(deadline_ms(1, Duration::MAX), u64::MAX);
    }
}
