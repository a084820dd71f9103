//! The cache core of cache-manager, with no I/O: pure data structures driven by their
//! caller, testable in microseconds.
//!
//! - [`table`]: the per-shard hash table — one writer, lock-free readers (`reclaim`); its
//!   nodes live in a per-shard slab of size classes (`slab`).
//! - [`eviction`]: which entry a full shard gives up: W-TinyLFU admission with an
//!   adaptive window, each region swept by a CLOCK hand (or plain CLOCK).
//! - [`wheel`]: the hierarchical timer wheel that expires TTLs.
//! - [`shard`]: the three together, with honest byte accounting.
//! - [`singleflight`]: one fill per missing key, with fencing against invalidations.
//! - [`glob`]: Redis-exact glob patterns in O(pattern × key).
//! - [`hashing`]: the seeded key hash every part shares.
//! - [`router`]: key → owner shard, and the messages cores send owners.
//! - [`metrics`]: per-shard counters and HDR latency histograms.
//! - [`time`]: injected clocks.
//! - [`Cache`]: all of it as a thread-safe library cache, with read-through from an
//!   [`Origin`] ([`readthrough`]).

pub mod cache;
pub mod eviction;
pub mod glob;
pub mod hashing;
pub mod metrics;
mod prefetch;
pub mod readthrough;
mod reclaim;
pub mod router;
pub mod shard;
pub mod singleflight;
mod slab;
mod sync;
pub mod table;
pub mod time;
pub mod wheel;

pub use cache::{Cache, CacheBuilder};
pub use eviction::{Eviction, Region, Standing, UnknownEviction, MAX_FREQUENCY};
pub use glob::Glob;
pub use metrics::{
    empty_histogram, LatencyRecorder, LatencySummary, MetricsSnapshot, ShardMetrics,
};
pub use readthrough::Origin;
pub use reclaim::fence_free_reads;
pub use router::{
    mailboxes, Command, KeyFilter, Mailboxes, OwnedEntry, Removal, Router, ShardGone,
};
pub use shard::{
    entry_charge, Expiry, InsertError, Inserted, Removed, SavedEntry, ShardConfig, ShardWriter,
    Sweep, Swept, ENTRY_OVERHEAD, EXPIRY_PER_WRITE, MAX_SHARD_ENTRIES, SWEEP_STEP,
};
pub use table::{EntryRef, TableReader, LATEST_CACHED_AT_MS, MAX_FLAGS};
pub use time::{deadline_ms, Clock, CoarseClock, ManualClock, SystemClock};

#[cfg(all(test, engine_loom))]
mod loom_tests;
