//! A shard: one table, its eviction policy (CLOCK hands, see `eviction`) and its timer
//! wheel, bounded by entries and bytes.
//!
//! [`ShardWriter`] is the only thing that changes a shard. In the server it lives on the
//! shard's own core, so writes take no lock; library users of [`crate::Cache`] get one
//! behind a mutex per shard. [`TableReader`]s read the same table lock-free from anywhere.
//!
//! Bytes are charged honestly ([`entry_charge`]): the entry's slab block (its node header,
//! key and value, rounded up to the block's size class), its bucket pointer, its policy
//! slot, its timer and its share of the frequency sketch.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::eviction::{self, slot_bytes, Eviction, Policy, Standing, SKETCH_BYTES_PER_ENTRY};
use crate::glob::Glob;
use crate::hashing::KeyHasher;
use crate::metrics::ShardMetrics;
use crate::slab::footprint;
use crate::table::{
    node_bytes, node_key, node_payload, table, EntryRef, NewEntry, Node, TableReader, TableWriter,
    BUCKET_BYTES, HEADER_BYTES, MAX_KEY_LEN, NEVER,
};
use crate::wheel::{TimerWheel, TIMER_BYTES};

/// A shard's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    pub max_entries: usize,
    pub max_bytes: u64,
    /// How long past its TTL an entry is kept and served as stale (0: not at all).
    pub stale_window_ms: u64,
    pub eviction: Eviction,
    /// Ask Linux to back the shard's node memory with transparent huge pages (`slab.rs`).
    pub huge_pages: bool,
}

/// Bytes an entry costs outside its slab block: bucket pointer, policy slot, timer and
/// its share of the sketch.
const STRUCTURE_BYTES: usize =
    BUCKET_BYTES + slot_bytes::<Resident>() + TIMER_BYTES + SKETCH_BYTES_PER_ENTRY;

/// Bytes charged per entry on top of its key and value, before its block is rounded up
/// to its size class (by less than 8 bytes for blocks up to 512 bytes, by at most an
/// eighth above; see [`entry_charge`]).
pub const ENTRY_OVERHEAD: usize = HEADER_BYTES + STRUCTURE_BYTES;

/// Inserts between two looks at the readers' lookup counts (a look takes a lock and
/// reads one counter per reader handle).
const INSERTS_PER_LOOKUP_SAMPLE: u32 = 16;

/// What an entry of this key and value length is charged against the byte bound: what it
/// takes in memory.
pub fn entry_charge(key_len: usize, value_len: usize) -> u64 {
    (footprint(node_bytes(key_len + value_len)) + STRUCTURE_BYTES) as u64
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("entry needs {charge} bytes (key {key_len} + value {value_len} + overhead) but a shard holds at most {max_bytes}")]
    TooLarge {
        charge: u64,
        key_len: usize,
        value_len: usize,
        max_bytes: u64,
    },
    #[error("key of {key_len} bytes is longer than the engine's limit of {limit}")]
    KeyTooLong { key_len: usize, limit: usize },
}

/// What an insert did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Whether the key was already present (expired or not).
    pub replaced: bool,
    /// Entries evicted to make room.
    pub evicted: usize,
}

/// An entry as a snapshot keeps it: its data, and its standing with the eviction policy
/// so that a restart ranks it as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SavedEntry<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub standing: Standing,
}

/// A policy slot's occupant: the entry's node. (Its expiry timer is the wheel's timer
/// keyed by the same slot.)
struct Resident {
    node: NonNull<Node>,
}

// SAFETY: a `Resident` is only dereferenced by the `ShardWriter` that owns its policy; the
// node it points to is owned by the table, whose nodes are `Send + Sync`.
unsafe impl Send for Resident {}

impl Resident {
    fn node(&self) -> &Node {
        // SAFETY: a resident's node is linked in the table until the writer removes the
        // resident, and only the writer unlinks or retires nodes.
        unsafe { self.node.as_ref() }
    }

    fn key(&self) -> &[u8] {
        // SAFETY: as in `node`: the node outlives the resident's borrow.
        unsafe { node_key(self.node) }
    }
}

impl eviction::Resident for Resident {
    type Context = KeyHasher;

    /// The node keeps half the hash; the sketch counts by the whole (see `hashing`).
    fn hash(&self, hasher: &KeyHasher) -> u64 {
        hasher.hash(self.key())
    }

    fn charge(&self) -> u64 {
        charge_of(self.node())
    }

    fn take_hits(&self) -> u8 {
        self.node().take_hits()
    }

    fn pending_hits(&self) -> u8 {
        self.node().pending_hits()
    }
}

pub struct ShardWriter {
    table: TableWriter,
    reader: TableReader,
    policy: Policy<Resident>,
    wheel: TimerWheel,
    bytes: u64,
    config: ShardConfig,
    metrics: Arc<ShardMetrics>,
    fired: Vec<u32>,
    /// Lookups and misses summed at the last sample, and inserts since.
    lookups_seen: (u64, u64),
    inserts_since_sample: u32,
}

impl ShardWriter {
    /// A new, empty shard whose timer wheel starts at `now_ms`. `hasher` must be the one
    /// the shard's callers hash keys with (the router's).
    pub fn new(
        config: ShardConfig,
        metrics: Arc<ShardMetrics>,
        now_ms: u64,
        hasher: KeyHasher,
    ) -> Self {
        assert!(config.max_entries > 0, "a shard holds at least one entry");
        let (reader, table) = table(
            config.max_entries,
            config.stale_window_ms,
            config.huge_pages,
        );
        let most_entries = config
            .max_entries
            .min(usize::try_from(config.max_bytes / ENTRY_OVERHEAD as u64).unwrap_or(usize::MAX));
        Self {
            table,
            reader,
            policy: Policy::new(
                config.eviction,
                config.max_entries,
                config.max_bytes,
                most_entries,
                metrics.clone(),
                hasher,
            ),
            wheel: TimerWheel::new(now_ms),
            bytes: 0,
            config,
            metrics,
            fired: Vec::new(),
            lookups_seen: (0, 0),
            inserts_since_sample: 0,
        }
    }

    /// A handle for lock-free reads from any thread.
    pub fn reader(&self) -> TableReader {
        self.reader.clone()
    }

    pub fn config(&self) -> ShardConfig {
        self.config
    }

    pub fn metrics(&self) -> &Arc<ShardMetrics> {
        &self.metrics
    }

    pub fn len(&self) -> usize {
        self.policy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policy.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A read on the owner, with the same semantics as [`TableReader::get_with`].
    pub fn get_with<R>(
        &self,
        hash: u64,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(EntryRef<'_>) -> R,
    ) -> Option<R> {
        self.reader.get_with(hash, key, now_ms, read)
    }

    /// Stores `value` under `key` until `expires_at_ms` (never, if `None`), evicting by
    /// the shard's policy until both bounds hold. `cached_at_ms` is when the value was cached: now for
    /// a write, the original time for a value filled from another tier.
    pub fn insert(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        cached_at_ms: u64,
    ) -> Result<Inserted, InsertError> {
        self.insert_into_slot(hash, key, value, expires_at_ms, cached_at_ms)
            .map(|(inserted, _)| inserted)
    }

    /// [`ShardWriter::insert`], also saying which policy slot the entry is in.
    fn insert_into_slot(
        &mut self,
        hash: u64,
        key: &[u8],
        value: &[u8],
        expires_at_ms: Option<u64>,
        cached_at_ms: u64,
    ) -> Result<(Inserted, u32), InsertError> {
        if key.len() > MAX_KEY_LEN {
            return Err(InsertError::KeyTooLong {
                key_len: key.len(),
                limit: MAX_KEY_LEN,
            });
        }
        let charge = entry_charge(key.len(), value.len());
        if charge > self.config.max_bytes {
            return Err(InsertError::TooLarge {
                charge,
                key_len: key.len(),
                value_len: value.len(),
                max_bytes: self.config.max_bytes,
            });
        }
        let deadline = expires_at_ms.unwrap_or(NEVER);
        let existing = self.table.find(hash, key);
        let (spare, freed) = match existing {
            // SAFETY: `find` returns linked, hence live, nodes.
            Some(old) => unsafe {
                let old = old.as_ref();
                (Some(old.slot()), charge_of(old))
            },
            None => (None, 0),
        };
        let incoming = existing.is_none().then_some(charge);
        let mut evicted = 0;
        while (existing.is_none() && self.policy.len() >= self.config.max_entries)
            || self.bytes - freed + charge > self.config.max_bytes
        {
            let Some(victim) = self.policy.next_victim(spare, incoming) else {
                break;
            };
            self.remove_slot(victim);
            evicted += 1;
        }
        let mut entry = NewEntry {
            hash,
            key,
            value,
            slot: 0,
            cached_at_ms,
            expires_at_ms: deadline,
            hit: false,
        };
        let table = &mut self.table;
        let slot = match existing {
            Some(old) => {
                // SAFETY: eviction spared `old`'s slot, so it is still linked and live.
                let old_node = unsafe { old.as_ref() };
                let slot = old_node.slot();
                entry.slot = slot;
                entry.hit = old_node.pending_hits() != 0;
                // The policy reads the old node's charge before the closure retires it.
                self.policy.update(slot, |resident| {
                    resident.node = table.replace(old, entry);
                });
                self.wheel.cancel(slot);
                slot
            }
            None => self.policy.insert_with(|slot| {
                entry.slot = slot;
                Resident {
                    node: table.insert(entry),
                }
            }),
        };
        // The node's own times, as it keeps them (an expiry past 24.8 days rounds up to a
        // second).
        let (cached_at_ms, expires_at, stale_until) = {
            let node = self.policy.get(slot).expect("resident slot").node();
            let window = self.config.stale_window_ms;
            (
                node.cached_at_ms(),
                node.expires_at_ms(),
                node.stale_until_ms(window),
            )
        };
        if stale_until != NEVER {
            self.wheel.schedule(slot, stale_until);
        }
        self.bytes = self.bytes - freed + charge;
        self.metrics.sets.incr();
        self.metrics.evictions.add(evicted as u64);
        self.publish_levels();
        self.inserts_since_sample += 1;
        if self.inserts_since_sample >= INSERTS_PER_LOOKUP_SAMPLE {
            self.sample_lookups();
        }
        let inserted = Inserted {
            cached_at_ms,
            expires_at_ms: (expires_at != NEVER).then_some(expires_at),
            replaced: existing.is_some(),
            evicted,
        };
        Ok((inserted, slot))
    }

    /// Visits up to `limit` entries still servable at `now_ms`, in slot order from slot
    /// `from`, for a snapshot; returns the slot to go on from, `None` once every slot was
    /// visited. A caller that saves in steps, serving between them, gets each entry as
    /// it was at its step (writes meanwhile may or may not be seen, as in any live copy).
    pub fn save(
        &self,
        from: u32,
        limit: usize,
        now_ms: u64,
        mut visit: impl FnMut(SavedEntry<'_>),
    ) -> Option<u32> {
        for (visited, (slot, resident)) in self.policy.iter_from(from).enumerate() {
            if visited == limit {
                return Some(slot);
            }
            let node = resident.node();
            if node.stale_until_ms(self.config.stale_window_ms) <= now_ms {
                continue;
            }
            // SAFETY: a resident's node is linked until the writer (borrowed shared here,
            // so not removing anything) removes the resident.
            let (key, value) = unsafe { node_payload(resident.node) };
            let expires_at_ms = node.expires_at_ms();
            visit(SavedEntry {
                key,
                value,
                cached_at_ms: node.cached_at_ms(),
                expires_at_ms: (expires_at_ms != NEVER).then_some(expires_at_ms),
                standing: self.policy.standing(slot),
            });
        }
        None
    }

    /// Stores an entry from a snapshot as [`ShardWriter::insert`] does, with the standing
    /// it was saved with: its key's frequency primes admission (so when the shard is
    /// smaller than the snapshot, the policy keeps what it ranked highest) and it returns
    /// to its region.
    pub fn restore(&mut self, hash: u64, entry: SavedEntry<'_>) -> Result<Inserted, InsertError> {
        let (inserted, slot) = self.insert_into_slot(
            hash,
            entry.key,
            entry.value,
            entry.expires_at_ms,
            entry.cached_at_ms,
        )?;
        // After the insert, whose own count just brought the key's sketch line into
        // the cache. (The entry joins the window unopposed, so its count does not
        // matter to the insert itself.)
        let sketched = self.policy.context().hash(entry.key);
        self.policy.prime(sketched, entry.standing);
        self.policy.place(slot, entry.standing.region);
        Ok(inserted)
    }

    /// Deletes `key`; says whether it was present (an expired entry counts as absent).
    pub fn remove(&mut self, hash: u64, key: &[u8], now_ms: u64) -> bool {
        let Some(node) = self.table.find(hash, key) else {
            return false;
        };
        // SAFETY: `find` returns linked, hence live, nodes.
        let (slot, live) = unsafe {
            let n = node.as_ref();
            (
                n.slot(),
                n.stale_until_ms(self.config.stale_window_ms) > now_ms,
            )
        };
        self.remove_slot(slot);
        if live {
            self.metrics.deletes.incr();
        } else {
            self.metrics.expirations.incr();
        }
        self.publish_levels();
        live
    }

    /// Deletes every live key `pattern` matches and returns how many.
    pub fn remove_matching(&mut self, pattern: &Glob, now_ms: u64) -> usize {
        let window = self.config.stale_window_ms;
        let doomed: Vec<(u32, bool)> = self
            .policy
            .iter()
            .filter(|(_, r)| pattern.matches(r.key()))
            .map(|(slot, r)| (slot, r.node().stale_until_ms(window) > now_ms))
            .collect();
        let live = doomed.iter().filter(|(_, live)| *live).count();
        for (slot, _) in &doomed {
            self.remove_slot(*slot);
        }
        self.metrics.deletes.add(live as u64);
        self.metrics.expirations.add((doomed.len() - live) as u64);
        self.publish_levels();
        live
    }

    /// Deletes everything (a coherence flush); returns how many entries were dropped.
    pub fn clear(&mut self) -> usize {
        self.clear_where(|_| true)
    }

    /// Deletes every entry whose key `doomed` picks (a flush of the keys whose coherence
    /// was lost); returns how many entries were dropped.
    pub fn clear_where(&mut self, doomed: impl Fn(&[u8]) -> bool) -> usize {
        let slots: Vec<u32> = self
            .policy
            .iter()
            .filter(|(_, r)| doomed(r.key()))
            .map(|(slot, _)| slot)
            .collect();
        for &slot in &slots {
            self.remove_slot(slot);
        }
        self.publish_levels();
        slots.len()
    }

    /// Drops every entry whose deadline is at or before `now_ms`; returns how many. Also
    /// hands the policy the readers' latest lookups, so the window adapts even while
    /// nothing is inserted.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        self.sample_lookups();
        let mut fired = std::mem::take(&mut self.fired);
        let (policy, window) = (&self.policy, self.config.stale_window_ms);
        let deadline_of = |slot| {
            let resident = policy.get(slot).expect("a live timer has a resident");
            resident.node().stale_until_ms(window)
        };
        self.wheel
            .advance(now_ms, deadline_of, |slot| fired.push(slot));
        for &slot in &fired {
            self.remove_slot(slot);
        }
        let expired = fired.len();
        fired.clear();
        self.fired = fired;
        if expired > 0 {
            self.metrics.expirations.add(expired as u64);
            self.publish_levels();
        }
        expired
    }

    /// When the next expiry is due, if any entry has a deadline.
    pub fn next_expiry(&self) -> Option<u64> {
        self.wheel.next_deadline()
    }

    /// Feeds the policy the lookups every reader handle counted since the last sample.
    fn sample_lookups(&mut self) {
        self.inserts_since_sample = 0;
        let (lookups, misses) = self.table.lookups();
        let (seen_lookups, seen_misses) =
            std::mem::replace(&mut self.lookups_seen, (lookups, misses));
        let lookups = lookups.wrapping_sub(seen_lookups);
        // A handle's two counts are read one after the other while its reader may be
        // between them, so a sample can see a miss before its lookup.
        let misses = misses.wrapping_sub(seen_misses).min(lookups);
        self.policy.observe_lookups(lookups, lookups - misses);
    }

    fn remove_slot(&mut self, slot: u32) {
        let resident = self.policy.remove(slot).expect("slot is occupied");
        self.wheel.cancel(slot);
        self.bytes -= charge_of(resident.node());
        self.table.remove(resident.node);
    }

    fn publish_levels(&self) {
        self.metrics.entries.set(self.policy.len() as u64);
        self.metrics.bytes.set(self.bytes);
    }
}

fn charge_of(node: &Node) -> u64 {
    (footprint(node_bytes(node.payload_len())) + STRUCTURE_BYTES) as u64
}

#[cfg(all(test, not(engine_loom)))]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn shard(max_entries: usize, max_bytes: u64) -> ShardWriter {
        ShardWriter::new(
            ShardConfig {
                max_entries,
                max_bytes,
                stale_window_ms: 0,
                eviction: Eviction::Clock,
                huge_pages: true,
            },
            Arc::default(),
            NOW,
            KeyHasher::with_seeds([1, 2, 3, 4]),
        )
    }

    fn h(key: &[u8]) -> u64 {
        // Any hash works for a single shard; collisions exercise chains.
        key.iter()
            .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64))
            % 5
    }

    fn get(s: &ShardWriter, key: &str, now: u64) -> Option<Vec<u8>> {
        s.get_with(h(key.as_bytes()), key.as_bytes(), now, |e| e.value.to_vec())
    }

    fn put(s: &mut ShardWriter, key: &str, value: &str, ttl: Option<u64>, now: u64) -> Inserted {
        s.insert(
            h(key.as_bytes()),
            key.as_bytes(),
            value.as_bytes(),
            ttl.map(|t| now + t),
            now,
        )
        .unwrap()
    }

    /// The original service's own LRU test.
    #[test]
    fn capacity_three_read_k1_insert_k4_evicts_k2() {
        let mut s = shard(3, u64::MAX);
        put(&mut s, "k1", "v1", None, NOW);
        put(&mut s, "k2", "v2", None, NOW);
        put(&mut s, "k3", "v3", None, NOW);
        assert!(get(&s, "k1", NOW).is_some());
        let inserted = put(&mut s, "k4", "v4", None, NOW);
        assert_eq!(inserted.evicted, 1);
        assert_eq!(get(&s, "k2", NOW), None);
        for k in ["k1", "k3", "k4"] {
            assert!(get(&s, k, NOW).is_some(), "{k} remains");
        }
        assert_eq!(s.metrics().evictions.get(), 1);
    }

    #[test]
    fn byte_bound_counts_key_value_and_overhead() {
        let per_entry = entry_charge(2, 10);
        let mut s = shard(1_000, per_entry * 3);
        for k in ["a1", "a2", "a3", "a4"] {
            put(&mut s, k, "0123456789", None, NOW);
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.bytes(), per_entry * 3);
        let err = s
            .insert(1, b"big", &vec![0; (per_entry * 3) as usize], None, NOW)
            .unwrap_err();
        assert!(matches!(err, InsertError::TooLarge { .. }), "{err}");
        assert_eq!(s.len(), 3, "a refused insert leaves the shard as it was");
    }

    #[test]
    fn overwrite_keeps_one_entry_and_updates_bytes_and_ttl() {
        let mut s = shard(10, u64::MAX);
        put(&mut s, "k", "short", Some(1_000), NOW);
        let ins = put(&mut s, "k", "a longer value", Some(5_000), NOW);
        assert!(ins.replaced);
        assert_eq!(s.len(), 1);
        assert_eq!(s.bytes(), entry_charge(1, 14));
        assert_eq!(s.expire(NOW + 1_000), 0, "the old timer was cancelled");
        assert_eq!(
            get(&s, "k", NOW + 4_999).as_deref(),
            Some(&b"a longer value"[..])
        );
        assert_eq!(s.expire(NOW + 5_000), 1);
        assert_eq!(s.len(), 0);
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn overwrite_at_the_byte_bound_evicts_others_not_itself() {
        let small = entry_charge(2, 1);
        let mut s = shard(10, small * 3);
        put(&mut s, "k1", "x", None, NOW);
        put(&mut s, "k2", "x", None, NOW);
        put(&mut s, "k3", "x", None, NOW);
        let ins = put(&mut s, "k2", &"y".repeat(small as usize + 1), None, NOW);
        assert!(ins.replaced);
        assert!(ins.evicted >= 1);
        assert!(get(&s, "k2", NOW).is_some());
        assert!(s.bytes() <= small * 3);
    }

    #[test]
    fn expired_entries_are_never_served_even_before_the_wheel_runs() {
        let mut s = shard(10, u64::MAX);
        put(&mut s, "k", "v", Some(100), NOW);
        assert!(get(&s, "k", NOW + 99).is_some());
        assert_eq!(get(&s, "k", NOW + 100), None);
        assert_eq!(s.len(), 1, "still resident until the wheel fires");
        assert_eq!(s.expire(NOW + 100), 1);
        assert_eq!(s.len(), 0);
        assert_eq!(s.metrics().expirations.get(), 1);
        assert_eq!(
            s.metrics().evictions.get(),
            0,
            "expiry and eviction are counted apart"
        );
    }

    #[test]
    fn remove_and_pattern_invalidation_count_only_live_entries() {
        let mut s = shard(100, u64::MAX);
        for k in ["user:1", "user:2", "user:3", "order:1"] {
            put(&mut s, k, "v", None, NOW);
        }
        put(&mut s, "user:old", "v", Some(10), NOW);
        assert!(s.remove(h(b"user:1"), b"user:1", NOW));
        assert!(!s.remove(h(b"user:1"), b"user:1", NOW));
        assert_eq!(s.remove_matching(&Glob::new(b"user:*"), NOW + 10), 2);
        assert_eq!(s.len(), 1);
        assert!(get(&s, "order:1", NOW).is_some());
        assert_eq!(s.metrics().deletes.get(), 3);
        assert_eq!(s.clear(), 1);
        assert!(s.is_empty());
    }

    #[test]
    fn a_stale_window_keeps_expired_entries_servable_as_stale() {
        let mut s = ShardWriter::new(
            ShardConfig {
                max_entries: 10,
                max_bytes: u64::MAX,
                stale_window_ms: 500,
                eviction: Eviction::Clock,
                huge_pages: true,
            },
            Arc::default(),
            NOW,
            KeyHasher::with_seeds([1, 2, 3, 4]),
        );
        put(&mut s, "k", "v", Some(100), NOW);
        let read =
            |s: &ShardWriter, at| s.get_with(h(b"k"), b"k", at, |e| (e.stale, e.expires_at_ms));
        assert_eq!(read(&s, NOW + 99), Some((false, Some(NOW + 100))));
        assert_eq!(
            read(&s, NOW + 100),
            Some((true, Some(NOW + 100))),
            "expired: stale"
        );
        assert_eq!(read(&s, NOW + 599), Some((true, Some(NOW + 100))));
        assert_eq!(read(&s, NOW + 600), None, "past the window");
        assert_eq!(s.expire(NOW + 599), 0, "kept through the window");
        assert_eq!(s.expire(NOW + 600), 1);
        put(&mut s, "forever", "v", None, NOW);
        assert_eq!(
            s.get_with(h(b"forever"), b"forever", u64::MAX - 1, |e| e.stale),
            Some(false)
        );
    }

    #[test]
    fn metadata_is_kept_with_the_entry() {
        let mut s = shard(10, u64::MAX);
        put(&mut s, "k", "v", Some(3_600_000), NOW);
        let (cached, expires) = s
            .get_with(h(b"k"), b"k", NOW + 5, |e| {
                (e.cached_at_ms, e.expires_at_ms)
            })
            .unwrap();
        assert_eq!(cached, NOW);
        assert_eq!(expires, Some(NOW + 3_600_000));
        put(&mut s, "forever", "v", None, NOW);
        let e = s.get_with(h(b"forever"), b"forever", u64::MAX - 1, |e| e.expires_at_ms);
        assert_eq!(e, Some(None));
    }

    use crate::Region;

    /// A saved entry, owned: key, value, cached at, expires at, standing.
    type Owned = (Vec<u8>, Vec<u8>, u64, Option<u64>, Standing);

    fn saved(s: &ShardWriter, now: u64) -> Vec<Owned> {
        let mut all = Vec::new();
        let mut from = Some(0);
        // Small steps, as the service saves while serving.
        while let Some(slot) = from {
            from = s.save(slot, 3, now, |e| {
                all.push((
                    e.key.to_vec(),
                    e.value.to_vec(),
                    e.cached_at_ms,
                    e.expires_at_ms,
                    e.standing,
                ))
            });
        }
        all
    }

    fn restore_all(s: &mut ShardWriter, entries: &[Owned]) {
        for e in entries {
            let entry = SavedEntry {
                key: &e.0,
                value: &e.1,
                cached_at_ms: e.2,
                expires_at_ms: e.3,
                standing: e.4,
            };
            s.restore(h(&e.0), entry).unwrap();
        }
    }

    fn adaptive(max_entries: usize) -> ShardWriter {
        ShardWriter::new(
            ShardConfig {
                max_entries,
                max_bytes: u64::MAX,
                stale_window_ms: 0,
                eviction: Eviction::Adaptive,
                huge_pages: true,
            },
            Arc::default(),
            NOW,
            KeyHasher::with_seeds([1, 2, 3, 4]),
        )
    }

    #[test]
    fn saved_entries_restore_with_their_values_times_and_standing() {
        let mut s = adaptive(100);
        for i in 0..100 {
            put(
                &mut s,
                &format!("k{i}"),
                &format!("v{i}"),
                Some(1_000 + i),
                NOW - i,
            );
        }
        put(&mut s, "gone", "v", Some(10), NOW);
        // Keys read again and again, their hits taken into the sketch by the hands.
        for _ in 0..6 {
            for i in 0..10 {
                get(&s, &format!("k{i}"), NOW);
            }
            for i in 100..150 {
                put(&mut s, &format!("churn{i}"), "c", None, NOW);
            }
        }
        let later = NOW + 20;
        let gone_resident = usize::from(get(&s, "gone", NOW).is_some());
        let before = saved(&s, later);
        assert!(before.iter().all(|e| e.0 != b"gone"), "expired: not saved");
        assert_eq!(before.len(), s.len() - gone_resident);
        let hot = |k: &[u8]| k.len() == 2 && k[0] == b'k';
        let hot_frequency = before.iter().filter(|e| hot(&e.0)).map(|e| e.4.frequency);
        assert!(hot_frequency.clone().count() > 0, "{before:?}");
        assert!(hot_frequency.clone().all(|f| f >= 2), "{before:?}");

        let mut same = adaptive(100);
        restore_all(&mut same, &before);
        let mut after = saved(&same, later);
        let mut expected = before.clone();
        after.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let data = |v: &[Owned]| {
            v.iter()
                .map(|e| (e.0.clone(), e.1.clone(), e.2, e.3))
                .collect::<Vec<_>>()
        };
        assert_eq!(data(&after), data(&expected));
        for (a, e) in after.iter().zip(&expected) {
            assert!(a.4.frequency >= e.4.frequency, "{a:?} / {e:?}");
            if e.4.region == Region::Protected {
                assert_eq!(a.4.region, Region::Protected, "{a:?}");
            }
        }

        // A shard a fifth the size keeps the keys that were read most.
        let mut small = adaptive(20);
        let mut order = before.clone();
        order.reverse();
        restore_all(&mut small, &order);
        assert_eq!(small.len(), 20);
        let kept = saved(&small, later);
        let hot_kept = kept.iter().filter(|e| hot(&e.0)).count();
        let hot_saved = before.iter().filter(|e| hot(&e.0)).count();
        assert_eq!(hot_kept, hot_saved.min(20), "{kept:?}");
    }
}
