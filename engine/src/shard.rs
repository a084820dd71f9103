//! A shard: one table, its eviction policy (CLOCK hands, see `eviction`) and its timer
//! wheel, bounded by entries and bytes.
//!
//! [`ShardWriter`] is the only thing that changes a shard. In the server it lives on the
//! shard's own core, so writes take no lock; library users of [`crate::Cache`] get one
//! behind a mutex per shard. [`TableReader`]s read the same table lock-free from anywhere.
//!
//! Bytes are charged honestly ([`entry_charge`]): the entry's slab block (its node header,
//! key and value, rounded up to the block's size class), its bucket (a 32-bit name), its policy
//! slot, its timer and its share of the frequency sketch.

use std::ptr::NonNull;
use std::sync::Arc;

use crate::eviction::{
    self, slot_bytes, Eviction, Policy, Region, Standing, MAX_SLOTS, SKETCH_BYTES_PER_ENTRY,
};
use crate::hashing::KeyHasher;
use crate::metrics::ShardMetrics;
use crate::slab::{footprint, Handle};
use crate::table::{
    expiry, node_bytes, node_key, node_len, node_payload, table, EntryRef, Names, NewEntry, Node,
    TableReader, TableWriter, BUCKET_BYTES, MAX_ENTRIES, MAX_FLAGS, MAX_KEY_LEN, NEVER,
};
use crate::wheel::{TimerWheel, TIMER_BYTES};

mod sweep;
use sweep::Sweeping;
pub use sweep::{Removed, Sweep, Swept, SWEEP_STEP};

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

/// Bytes an entry costs outside its slab block: bucket, policy slot, timer and
/// its share of the sketch.
const STRUCTURE_BYTES: usize =
    BUCKET_BYTES + slot_bytes::<Resident>() + TIMER_BYTES + SKETCH_BYTES_PER_ENTRY;

/// The most entries a shard holds: as many as a node's slot bits name (2^27 - 1, about
/// 5.6 GB of the smallest entries), where the policy's links name more. A larger
/// `max_entries` is taken as this.
pub const MAX_SHARD_ENTRIES: usize = if MAX_ENTRIES < MAX_SLOTS {
    MAX_ENTRIES
} else {
    MAX_SLOTS
};

/// Bytes charged per entry on top of its key and value, before its block is rounded up
/// to its size class (by less than 4 bytes for blocks up to 512 bytes, by at most an
/// eighth above; see [`entry_charge`]): the node's header, the value's length (1 byte
/// below 512 bytes, one more per 7 bits above) and the structures outside the node.
pub const ENTRY_OVERHEAD: usize = node_bytes(0, 0) + STRUCTURE_BYTES;

/// Bytes of byte bound per bucket: twice the charge of the smallest entry (see
/// [`ShardWriter::new`]).
const BYTES_PER_BUCKET: usize = 2 * ENTRY_OVERHEAD;

/// Live nodes an insert moves out of a slab chunk being emptied while the slab is fragmented
/// ([`ShardWriter::move_some`]): each is about the work of an overwrite, and two keep
/// ahead of the fragmentation a write can cause (one block freed in an old size's chunk
/// for one taken in a new size's).
const MOVES_PER_INSERT: usize = 2;

/// Inserts between looks for a chunk to empty while none can be (no class has room
/// elsewhere for its emptiest chunk's blocks; a look scans every part-used chunk). The engine's own tests look every 64, so that shards of a few
/// hundred KiB (see `slab::SLACK_CHUNKS`) run the mover as a large one would.
const EVACUATION_PAUSE: u32 = if cfg!(test) { 64 } else { 4096 };

/// Inserts between two looks at the readers' lookup counts (a look takes a lock and
/// reads one counter per reader handle). Only inserts look: the window's share matters
/// only when an insert evicts, so lookups made while nothing is inserted are handed to
/// the policy with the next inserts.
const INSERTS_PER_LOOKUP_SAMPLE: u32 = 16;

/// What an entry of this key and value length is charged against the byte bound: what it
/// takes in memory.
pub fn entry_charge(key_len: usize, value_len: usize) -> u64 {
    charge_for(node_bytes(key_len, value_len))
}

/// What an entry whose node takes `node_bytes` is charged: its block and the structures
/// outside it.
fn charge_for(node_bytes: usize) -> u64 {
    (footprint(node_bytes) + STRUCTURE_BYTES) as u64
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
    #[error("flags {flags} are more than the engine keeps (at most {limit})")]
    FlagsTooLarge { flags: u8, limit: u8 },
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
    /// The flags the value was stored with.
    pub flags: u8,
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub standing: Standing,
}

/// A policy slot's occupant: the name of the entry's node (4 bytes, where a pointer
/// took 8), resolved in the policy's [`Home`]. The slot keeps nothing else: the key's
/// hash, which the sketch counts by and the writer unlinks the node with, is the key's
/// bytes hashed again (see `hashing`), and the expiry timer is the wheel's timer keyed by
/// the same slot.
struct Resident {
    handle: Handle,
}

/// What the policy reads its residents through: the table's names for their nodes, and
/// the hasher their keys were routed by, for their hashes.
struct Home {
    names: Names,
    hasher: KeyHasher,
}

impl Resident {
    fn node<'a>(&self, names: &'a Names) -> &'a Node {
        // SAFETY: a resident's node is linked in the table until the writer removes the
        // resident, and only the writer unlinks or retires nodes; the names are the
        // writer's own (its policy's), borrowed for as long as the reference.
        unsafe { names.node(self.handle).as_ref() }
    }

    fn key<'a>(&self, names: &'a Names) -> &'a [u8] {
        // SAFETY: as in `node`: the node outlives the borrow of the names.
        unsafe { node_key(names.node(self.handle)) }
    }
}

impl eviction::Resident for Resident {
    type Home = Home;

    /// The low half of the key's hash: the half the table's buckets and the sketch use.
    fn hash(&self, home: &Home) -> u64 {
        u64::from(home.hasher.hash(self.key(&home.names)) as u32)
    }

    fn charge(&self, home: &Home) -> u64 {
        // SAFETY: as in `node`.
        unsafe { charge_of(home.names.node(self.handle)) }
    }

    fn take_hits(&self, home: &Home) -> u8 {
        self.node(&home.names).take_hits()
    }

    fn pending_hits(&self, home: &Home) -> u8 {
        self.node(&home.names).pending_hits()
    }

    fn prefetch(&self, home: &Home) {
        crate::prefetch::prefetch(home.names.node(self.handle).as_ptr());
    }
}

/// The timer records of due expiries a write works through before it is made (through
/// [`ShardWriter::expire_some`]), so that expired entries make room before CLOCK evicts a
/// live one, while a write that comes after many entries reached their TTL together pays
/// for a bounded share of them. Each record is a read of an entry and, for an expired
/// one, its removal: 128 took 5 µs by the median and 68 µs at the 99th percentile
/// (`cargo run --release -p engine --example expiry_pauses`).
pub const EXPIRY_PER_WRITE: usize = 128;

/// What a bounded [`ShardWriter::expire_some`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// Entries dropped.
    pub expired: usize,
    /// Whether nothing due by the call's `now` is left.
    pub done: bool,
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
    /// The slab chunk being emptied and the offsets of its blocks still to look at
    /// ([`ShardWriter::move_some`]).
    evacuating: Option<(u32, Vec<u16>)>,
    /// Inserts to wait before looking for a chunk to empty again, after a look found
    /// none that could be.
    evacuation_pause: u32,
    /// Removals under way in steps (`sweep.rs`), and how many were ever begun.
    sweeps: Vec<Sweeping>,
    sweeps_begun: u64,
}

impl ShardWriter {
    /// A new, empty shard whose timer wheel starts at `now_ms`, for keys hashed by
    /// `hasher`: every hash the shard is handed must be `hasher`'s hash of the key
    /// (callers route by it), since the shard hashes its entries' keys again with it.
    pub fn new(
        config: ShardConfig,
        metrics: Arc<ShardMetrics>,
        now_ms: u64,
        hasher: KeyHasher,
    ) -> Self {
        assert!(config.max_entries > 0, "a shard holds at least one entry");
        // A bound above what a node and the policy's links can address is no bound.
        let config = ShardConfig {
            max_entries: config.max_entries.min(MAX_SHARD_ENTRIES),
            ..config
        };
        // Every entry is charged at least ENTRY_OVERHEAD, so this many fit under both
        // bounds. The bucket array and the sketch are sized for it, not for the entry
        // bound alone: an entry bound far above what the byte bound lets in would
        // otherwise give them memory no entry is charged for.
        let most_entries = config
            .max_entries
            .min(usize::try_from(config.max_bytes / ENTRY_OVERHEAD as u64).unwrap_or(usize::MAX));
        // One bucket an entry under the entry bound, but under the byte bound one for
        // every two of the smallest entries: a byte bound says how many of the smallest
        // entries fit, and entries are rarely that small (an empty key and value), so one
        // bucket for each would leave most of the array empty, resident and uncharged.
        // Chains then average up to two nodes only where entries average under
        // BYTES_PER_BUCKET.
        let buckets = config
            .max_entries
            .min(usize::try_from(config.max_bytes / BYTES_PER_BUCKET as u64).unwrap_or(usize::MAX));
        let (reader, table) = table(
            most_entries,
            buckets,
            config.stale_window_ms,
            config.huge_pages,
        );
        let names = table.names();
        Self {
            table,
            reader,
            policy: Policy::new(
                config.eviction,
                config.max_entries,
                config.max_bytes,
                most_entries,
                metrics.clone(),
                Home { names, hasher },
            ),
            wheel: TimerWheel::new(now_ms, most_entries),
            bytes: 0,
            config,
            metrics,
            fired: Vec::new(),
            lookups_seen: (0, 0),
            inserts_since_sample: 0,
            evacuating: None,
            evacuation_pause: 0,
            sweeps: Vec::new(),
            sweeps_begun: 0,
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
        self.insert_flagged(hash, key, 0, value, expires_at_ms, cached_at_ms)
    }

    /// [`ShardWriter::insert`] of a value with `flags` (at most [`MAX_FLAGS`]), which
    /// reads give back (`EntryRef::flags`) and which cost no bytes: they are kept in the
    /// node header's spare bits.
    pub fn insert_flagged(
        &mut self,
        hash: u64,
        key: &[u8],
        flags: u8,
        value: &[u8],
        expires_at_ms: Option<u64>,
        cached_at_ms: u64,
    ) -> Result<Inserted, InsertError> {
        self.insert_into_slot(
            hash,
            key,
            (flags, value),
            expires_at_ms,
            cached_at_ms,
            Region::Window,
        )
        .map(|(inserted, _)| inserted)
    }

    /// [`ShardWriter::insert`], also saying which policy slot the entry is in; a new
    /// entry joins `region` (the window, or for a restored entry the region it was
    /// saved from).
    fn insert_into_slot(
        &mut self,
        hash: u64,
        key: &[u8],
        (flags, value): (u8, &[u8]),
        expires_at_ms: Option<u64>,
        cached_at_ms: u64,
        region: Region,
    ) -> Result<(Inserted, u32), InsertError> {
        if key.len() > MAX_KEY_LEN {
            return Err(InsertError::KeyTooLong {
                key_len: key.len(),
                limit: MAX_KEY_LEN,
            });
        }
        if flags > MAX_FLAGS {
            return Err(InsertError::FlagsTooLarge {
                flags,
                limit: MAX_FLAGS,
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
        debug_assert_eq!(
            hash as u32,
            self.policy.home().hasher.hash(key) as u32,
            "the caller hashed the key with the shard's hasher"
        );
        let deadline = expires_at_ms.unwrap_or(NEVER);
        // An insert into a full shard evicts: the lines eviction reads start loading
        // before the lookup's own misses (nodes), and right after them (what the nodes
        // lead to), so that the two chains of misses overlap.
        let evicts = self.over_bounds(true, self.bytes.saturating_add(charge));
        if evicts {
            self.policy.prefetch_next_victims();
        }
        let existing = self.table.find(hash, key);
        if evicts && existing.is_none() {
            let table = &self.table;
            self.policy
                .prefetch_admission(|hash| table.prefetch_bucket(hash));
        }
        let (spare, freed) = match existing {
            // SAFETY: `find` returns linked, hence live, nodes.
            Some(old) => unsafe { (Some(old.as_ref().slot()), charge_of(old)) },
            None => (None, 0),
        };
        let incoming = existing.is_none().then_some(charge);
        let mut evicted = 0;
        while self.over_bounds(existing.is_none(), self.bytes - freed + charge) {
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
            flags,
            slot: 0,
            cached_at_ms,
            expires_at_ms: deadline,
            hit: false,
        };
        let table = &mut self.table;
        let window = self.config.stale_window_ms;
        // The slot, and the deadline its timer had (NEVER: none).
        let (slot, replaced_until) = match existing {
            Some(old) => {
                // SAFETY: eviction spared `old`'s slot, so it is still linked and live.
                let old_node = unsafe { old.as_ref() };
                let slot = old_node.slot();
                let replaced_until = old_node.stale_until_ms(window);
                entry.slot = slot;
                entry.hit = old_node.pending_hits() != 0;
                // The slot's line loads while the new node is built.
                self.policy.prefetch_slot(slot);
                let new = table.build(entry);
                // The policy reads the old node's charge before the closure retires it.
                self.policy.update(slot, |resident| {
                    resident.handle = table.replace(old, new, hash);
                });
                (slot, replaced_until)
            }
            None => {
                let slot = self.policy.insert_with(region, |slot| {
                    entry.slot = slot;
                    Resident {
                        handle: table.insert(entry),
                    }
                });
                (slot, NEVER)
            }
        };
        if !self.sweeps.is_empty() {
            self.note_write_for_sweeps(slot);
        }
        // The node's own times, as it keeps them (an expiry past 24.8 days rounds up to a
        // second).
        let (cached_at_ms, expires_at, stale_until) = {
            let node = self.policy.get(slot).expect("resident slot");
            let node = node.node(&self.policy.home().names);
            (
                node.cached_at_ms(),
                node.expires_at_ms(),
                node.stale_until_ms(window),
            )
        };
        match (replaced_until, stale_until) {
            (NEVER, NEVER) => {}
            (NEVER, until) => self.wheel.schedule(slot, until),
            (replaced, NEVER) => self.wheel.cancel(slot, replaced),
            (replaced, until) => self.wheel.reschedule(slot, replaced, until),
        }
        self.bytes = self.bytes - freed + charge;
        self.metrics.sets.incr();
        self.metrics.evictions.add(evicted as u64);
        self.publish_levels();
        self.inserts_since_sample += 1;
        if self.inserts_since_sample >= INSERTS_PER_LOOKUP_SAMPLE {
            self.sample_lookups();
        }
        self.move_some();
        let inserted = Inserted {
            cached_at_ms,
            expires_at_ms: expiry(expires_at),
            replaced: existing.is_some(),
            evicted,
        };
        Ok((inserted, slot))
    }

    /// Moves up to [`MOVES_PER_INSERT`] live nodes out of a part-used slab chunk, into
    /// room its class holds elsewhere, so that it empties and its memory serves blocks
    /// of other sizes.
    ///
    /// A chunk serves one block size, and goes back to the slab only once all its blocks
    /// are free. When the sizes written change, evictions free blocks scattered over the
    /// old sizes' chunks, few of which empty, and the new sizes take fresh memory: the
    /// byte bound stops bounding memory (BENCHMARKS.md, "Memory under a byte bound when
    /// value sizes shift"). So while the slab is fragmented (`Slab::fragmented`), each
    /// insert moves a few nodes of a chunk being emptied, as memcached's slab mover and
    /// Segcache's merges do. A move is an overwrite with the same key, value, times and
    /// policy slot: a new node linked where the old one was, the old one retired, so
    /// readers see one or the other, as with any overwrite. It is not a request: the
    /// policy counts nothing.
    fn move_some(&mut self) {
        let mut moves = 0;
        while moves < MOVES_PER_INSERT {
            let next = self
                .evacuating
                .as_mut()
                .and_then(|(chunk, offsets)| Some((*chunk, offsets.pop()?)));
            let Some((chunk, offset)) = next else {
                self.evacuating = None;
                if self.evacuation_pause > 0 {
                    self.evacuation_pause -= 1;
                    return;
                }
                if !self.table.fragmented() {
                    return;
                }
                match self.table.evacuate() {
                    Some(evacuation) => self.evacuating = Some(evacuation),
                    None => {
                        self.evacuation_pause = EVACUATION_PAUSE;
                        return;
                    }
                }
                continue;
            };
            let hasher = &self.policy.home().hasher;
            let Some((node, hash)) = self.table.evacuee(chunk, offset, |key| hasher.hash(key))
            else {
                continue;
            };
            // SAFETY: `evacuee` found it linked, hence live (only this writer unlinks).
            let (header, (key, value)) = unsafe { (node.as_ref(), node_payload(node)) };
            let slot = header.slot();
            let moved = NewEntry {
                hash,
                key,
                value,
                flags: header.flags(),
                slot,
                cached_at_ms: header.cached_at_ms(),
                expires_at_ms: header.expires_at_ms(),
                hit: header.pending_hits() != 0,
            };
            // The copy is made before `replace` retires the node its key and value are in.
            let table = &mut self.table;
            let copy = table.build(moved);
            self.policy.relocate(slot, |resident| {
                resident.handle = table.replace(node, copy, hash);
            });
            self.metrics.slab_moves.incr();
            moves += 1;
        }
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
        let names = &self.policy.home().names;
        for (visited, (slot, resident)) in self.policy.iter_range(from..u32::MAX).enumerate() {
            if visited == limit {
                return Some(slot);
            }
            let node = resident.node(names);
            if node.stale_until_ms(self.config.stale_window_ms) <= now_ms {
                continue;
            }
            // SAFETY: a resident's node is linked until the writer (borrowed shared here,
            // so not removing anything) removes the resident.
            let (key, value) = unsafe { node_payload(names.node(resident.handle)) };
            visit(SavedEntry {
                key,
                value,
                flags: node.flags(),
                cached_at_ms: node.cached_at_ms(),
                expires_at_ms: expiry(node.expires_at_ms()),
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
            (entry.flags, entry.value),
            entry.expires_at_ms,
            entry.cached_at_ms,
            entry.standing.region,
        )?;
        // After the insert, whose own count just brought the key's sketch line into
        // the cache. (The entry joins its region unopposed, so its count does not
        // matter to the insert itself.)
        self.policy.prime(slot, entry.standing);
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

    /// Drops every entry whose deadline is at or before `now_ms`; returns how many. It
    /// runs until none is left, however many came due together: a writer in front of
    /// requests calls [`expire_some`](Self::expire_some) with [`EXPIRY_PER_WRITE`].
    pub fn expire(&mut self, now_ms: u64) -> usize {
        self.expire_some(now_ms, usize::MAX).expired
    }

    /// [`expire`](Self::expire), within about `limit` of the timer wheel's records (each
    /// a read of an entry, and for an expired one its removal: roughly 0.1 to 0.35 µs
    /// apiece). A caller on a serving core bounds each call this way and calls again
    /// until [`Expiry::done`]; meanwhile reads already treat expired entries as absent.
    pub fn expire_some(&mut self, now_ms: u64, limit: usize) -> Expiry {
        let mut fired = std::mem::take(&mut self.fired);
        let (policy, window) = (&self.policy, self.config.stale_window_ms);
        // A vacant slot has no deadline; nor has a resident that never expires.
        let deadline_of = |slot| {
            let resident = policy.get(slot)?;
            let until = resident.node(&policy.home().names).stale_until_ms(window);
            (until != NEVER).then_some(until)
        };
        let done = self
            .wheel
            .advance_some(now_ms, limit, deadline_of, |slot| fired.push(slot));
        let mut expired = 0;
        for &slot in &fired {
            // The wheel may fire a slot twice (wheel.rs): the first removes it.
            if self.policy.get(slot).is_some() {
                self.remove_slot(slot);
                expired += 1;
            }
        }
        fired.clear();
        self.fired = fired;
        if expired > 0 {
            self.metrics.expirations.add(expired as u64);
            self.publish_levels();
        }
        Expiry { expired, done }
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

    /// Whether the shard would be over a bound holding `bytes`, with one entry more if
    /// `adding`.
    fn over_bounds(&self, adding: bool, bytes: u64) -> bool {
        (adding && self.policy.len() >= self.config.max_entries) || bytes > self.config.max_bytes
    }

    fn remove_slot(&mut self, slot: u32) {
        let (resident, hash) = self.policy.remove(slot).expect("slot is occupied");
        let node = self.policy.home().names.node(resident.handle);
        let window = self.config.stale_window_ms;
        // SAFETY: the node is still linked (the table unlinks it just below), hence live.
        let (until, charge) = unsafe { (node.as_ref().stale_until_ms(window), charge_of(node)) };
        if until != NEVER {
            self.wheel.cancel(slot, until);
        }
        self.bytes -= charge;
        self.table.remove(node, hash);
    }

    fn publish_levels(&self) {
        self.metrics.entries.set(self.policy.len() as u64);
        self.metrics.bytes.set(self.bytes);
    }
}

/// What the entry of `node` is charged.
///
/// # Safety
/// `node` is linked, hence live (only the writer, which calls this, unlinks nodes).
unsafe fn charge_of(node: NonNull<Node>) -> u64 {
    // SAFETY: forwarded contract.
    charge_for(unsafe { node_len(node) })
}

#[cfg(all(test, not(engine_loom)))]
mod tests;
