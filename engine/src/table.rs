//! The shard table: a chained hash table with exactly one writer and lock-free readers on
//! any thread.
//!
//! Only the `TableWriter` (one per table, owned by the shard's core) links and unlinks
//! nodes, so it needs no CAS and never waits. Readers pin a reclamation guard, walk a
//! bucket chain with acquire loads, and never write anything but a node's reference bit
//! (which the eviction policy reads and clears; set only when it is unset, so hot entries
//! keep their cache line clean) and their own lookup counts. A node is
//! immutable once published: an overwrite links a new node in place of the old one, and
//! an unlinked node is retired to the reclaimer, which frees it only after every reader
//! that might still hold it has left.
//!
//! The bucket array is sized once from the most entries the shard can hold under its
//! bounds, so the table never resizes and the readers' path has no resize protocol to
//! follow.
//!
//! Buckets and chain links hold 32-bit node names (`slab::Handle`), not pointers: half the
//! bytes of the bucket array, and a link a node keeps in 4 bytes. A slab node's name is its
//! offset in the slab's reserved address space, so a reader resolves it with an add to a
//! base that never changes (`slab::Directory`).

use std::cell::UnsafeCell;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{Relaxed, Release};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::reclaim::{Reclaimer, Retirable};
use crate::slab::{Directory, Handle, Slab};
use crate::sync::{Arc, AtomicU32, SharedCell};

/// An entry as a reader sees it, borrowed for the duration of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// When the value was stored, in ms since the UNIX epoch.
    pub cached_at_ms: u64,
    /// When it expires, in ms since the UNIX epoch; `None` if never.
    pub expires_at_ms: Option<u64>,
    /// Past `expires_at_ms` but inside the shard's stale window: servable only as stale.
    pub stale: bool,
}

/// Deadline of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// The longest key a node can hold (the engine's limit; a node keeps the length as LEB128).
pub(crate) const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Bits of a node's slot word that hold its policy slot.
const SLOT_BITS: u32 = 29;

/// The most entries a table holds: a node keeps its policy slot in [`SLOT_BITS`] bits
/// (the policy names no more slots either, `eviction::MAX_SLOTS`).
pub(crate) const MAX_ENTRIES: usize = (1 << SLOT_BITS) - 1;

/// The bit of a node's slot word that says whether a reader hit it since the policy
/// last looked.
const HIT: u32 = 1;

/// The bit of a node's slot word that says the node has an allocation of its own rather
/// than a slab block (`slab::Block::own`).
const OWN_ALLOCATION: u32 = 1 << (SLOT_BITS + 1);

/// A node's header: 16 bytes. The key's length and bytes, the value's length and the
/// value's bytes follow it in the same slab block (`slab.rs`), so a lookup that reaches
/// the header finds the key on the same cache line and an entry is one block. The
/// payload is only ever reached through the block's own pointer (see [`payload`]), never
/// through a `&Node`, whose provenance covers the header alone.
///
/// What it leaves out: the key's hash (its high half picks the shard; the low half picks
/// the bucket, which the writer knows whenever it unlinks a node, hashing the key again,
/// and is what the eviction policy's sketch counts by; readers tell keys apart by their
/// length and bytes, on the line they load anyway), the stale deadline (the expiry plus
/// the table's one stale window), the upper bits of times (42 bits of milliseconds reach
/// the year 2109; an expiry is kept relative to `cached_at` in 22 bits, see
/// [`Lifetime`]), the next node's address (its 32-bit [`Handle`] instead), and the
/// lengths of the key and the value: LEB128 in the payload, 1 byte each below 128 bytes
/// and 2 below 16 KiB, where a fixed field would take 2 and 4.
#[repr(C)]
pub(crate) struct Node {
    /// The next node of the chain: its handle's bits, or 0 at the chain's end.
    next: AtomicU32,
    /// The entry's policy slot (an overwrite keeps it) in bits 1 to [`SLOT_BITS`], above
    /// [`HIT`], and [`OWN_ALLOCATION`] above it. Readers only ever set [`HIT`], storing
    /// the other bits back as they found them, which never change.
    slot_and_hit: AtomicU32,
    /// `cached_at_ms << LIFETIME_BITS | lifetime`, low word first (two words, so that
    /// the header needs 4-byte alignment only).
    times: [u32; 2],
    /// Zero-sized in normal builds. Under loom every payload read goes through it and
    /// reclamation writes it, so a read racing a free is reported.
    payload_access: SharedCell<()>,
}

/// Bytes of a node's header.
pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<Node>();

const _: () = assert!(std::mem::align_of::<Node>() <= crate::slab::GRAIN);

/// Bits of a node's times that hold its [`Lifetime`]; `cached_at_ms` has the rest.
const LIFETIME_BITS: u32 = 22;

/// The latest `cached_at_ms` a header holds (42 bits, the year 2109); later times are
/// stored as this.
pub const LATEST_CACHED_AT_MS: u64 = (1 << (64 - LIFETIME_BITS)) - 1;

/// When an entry expires, relative to when it was cached, in [`LIFETIME_BITS`] bits: a
/// count of 20 bits in one of four units, the smallest that holds it, rounded up (so
/// never early), or never. A lifetime is exact to the millisecond up to 17 minutes, and
/// a whole number of seconds (every TTL the API takes) is exact up to 12 days; longer
/// ones end up to a minute late (up to 2 years), or an hour (up to 119 years).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lifetime(u32);

impl Lifetime {
    const COUNT_BITS: u32 = LIFETIME_BITS - 2;
    const MOST_COUNT: u64 = (1 << Lifetime::COUNT_BITS) - 1;
    /// Each unit in milliseconds, by its code (the two bits above the count).
    const UNIT_MS: [u64; 4] = [1, 1_000, 60_000, 3_600_000];
    /// The all-ones pattern; the longest unit counts up to one below it.
    const FOREVER: Lifetime = Lifetime((1 << LIFETIME_BITS) - 1);

    fn new(cached_at_ms: u64, expires_at_ms: u64) -> Lifetime {
        if expires_at_ms == NEVER {
            return Lifetime::FOREVER;
        }
        let ms = expires_at_ms.saturating_sub(cached_at_ms);
        // Each unit's count, rounded up, in the smallest unit that holds it (constant
        // divisors: multiplications).
        let seconds = ms.div_ceil(Lifetime::UNIT_MS[1]);
        let (code, count) = if ms <= Lifetime::MOST_COUNT {
            (0, ms)
        } else if seconds <= Lifetime::MOST_COUNT {
            (1, seconds)
        } else if ms.div_ceil(Lifetime::UNIT_MS[2]) <= Lifetime::MOST_COUNT {
            (2, ms.div_ceil(Lifetime::UNIT_MS[2]))
        } else {
            // The all-ones count of the longest unit is FOREVER: past 119 years, the
            // longest lifetime short of never.
            (
                3,
                ms.div_ceil(Lifetime::UNIT_MS[3])
                    .min(Lifetime::MOST_COUNT - 1),
            )
        };
        Lifetime(code << Lifetime::COUNT_BITS | count as u32)
    }

    #[inline(always)]
    fn expires_at_ms(self, cached_at_ms: u64) -> u64 {
        if self == Lifetime::FOREVER {
            return NEVER;
        }
        let unit = Lifetime::UNIT_MS[(self.0 >> Lifetime::COUNT_BITS) as usize & 3];
        cached_at_ms + (u64::from(self.0) & Lifetime::MOST_COUNT) * unit
    }
}

/// What the writer needs to build a node.
pub(crate) struct NewEntry<'a> {
    pub hash: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub slot: u32,
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub hit: bool,
}

/// The bytes of a node with this key and value length.
pub(crate) const fn node_bytes(key_len: usize, value_len: usize) -> usize {
    HEADER_BYTES + length_bytes(key_len) + key_len + length_bytes(value_len) + value_len
}

/// Bytes of a key's or a value's length in the payload: LEB128, 7 bits a byte.
const fn length_bytes(len: usize) -> usize {
    (usize::BITS - (len | 1).leading_zeros()).div_ceil(7) as usize
}

/// Writes `len` as LEB128 at `at`; where the bytes after it start.
///
/// # Safety
/// `at` is valid for writes of [`length_bytes`]`(len)` bytes.
unsafe fn write_length(mut at: *mut u8, len: usize) -> *mut u8 {
    let mut rest = len;
    // SAFETY: LEB128 takes `length_bytes(len)` bytes, which the caller provides.
    unsafe {
        while rest >= 0x80 {
            at.write(rest as u8 | 0x80);
            at = at.add(1);
            rest >>= 7;
        }
        at.write(rest as u8);
        at.add(1)
    }
}

/// Reads a length [`write_length`] wrote at `at`; where the bytes after it start. Lengths
/// below 16 KiB (one or two bytes) are read inline, longer ones out of line.
///
/// # Safety
/// `at` holds such a length, readable through `at`'s provenance.
#[inline(always)]
unsafe fn read_length(at: *const u8) -> (usize, *const u8) {
    // SAFETY: the caller's contract: the length's bytes run up to the first without its
    // top bit, and what follows them is in the same block.
    unsafe {
        let first = at.read();
        if first < 0x80 {
            return (usize::from(first), at.add(1));
        }
        let second = at.add(1).read();
        if second < 0x80 {
            let len = usize::from(first & 0x7F) | usize::from(second) << 7;
            return (len, at.add(2));
        }
        read_long_length(at)
    }
}

/// [`read_length`] of a length of three bytes or more (16 KiB and up).
///
/// # Safety
/// As for [`read_length`].
#[cold]
#[inline(never)]
unsafe fn read_long_length(mut at: *const u8) -> (usize, *const u8) {
    let mut len = 0usize;
    let mut shift = 0;
    // SAFETY: the caller's contract: the bytes up to the one without its top bit (at
    // most 5, lengths being below 2^32) are the length's.
    unsafe {
        loop {
            let byte = at.read();
            at = at.add(1);
            len |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return (len, at);
            }
            shift += 7;
        }
    }
}

/// An expiry as the API gives it: `None` for [`NEVER`].
pub(crate) fn expiry(expires_at_ms: u64) -> Option<u64> {
    (expires_at_ms != NEVER).then_some(expires_at_ms)
}

/// Allocates and fills a node, which `directory` names by the handle returned; the writer
/// links it.
fn allocate(
    slab: &mut Slab,
    directory: &Directory,
    entry: NewEntry<'_>,
) -> (NonNull<Node>, Handle) {
    debug_assert!(
        entry.key.len() <= MAX_KEY_LEN,
        "the shard checks key lengths"
    );
    assert!(
        u32::try_from(entry.value.len()).is_ok(),
        "values are far below 4 GiB"
    );
    let bytes = node_bytes(entry.key.len(), entry.value.len());
    let block = slab.allocate(bytes, directory);
    let node = block.at.cast::<Node>();
    let own = if block.own { OWN_ALLOCATION } else { 0 };
    let cached_at_ms = entry.cached_at_ms.min(LATEST_CACHED_AT_MS);
    let slot = entry.slot;
    debug_assert!(
        slot as usize <= MAX_ENTRIES,
        "slots fit in {SLOT_BITS} bits"
    );
    let times = cached_at_ms << LIFETIME_BITS
        | u64::from(Lifetime::new(cached_at_ms, entry.expires_at_ms).0);
    // SAFETY: `block` is a fresh slab block of at least `bytes` (`node_bytes`: the header,
    // then the key's length, the key, the value's length and the value, as written here),
    // aligned to the slab's grain (at least the header's alignment, 4); nothing else can
    // see it yet.
    unsafe {
        node.as_ptr().write(Node {
            next: AtomicU32::new(0),
            slot_and_hit: AtomicU32::new(own | slot << 1 | if entry.hit { HIT } else { 0 }),
            times: [times as u32, (times >> 32) as u32],
            payload_access: SharedCell::new(()),
        });
        let mut at = (node.as_ptr() as *mut u8).add(HEADER_BYTES);
        at = write_length(at, entry.key.len());
        ptr::copy_nonoverlapping(entry.key.as_ptr(), at, entry.key.len());
        at = write_length(at.add(entry.key.len()), entry.value.len());
        ptr::copy_nonoverlapping(entry.value.as_ptr(), at, entry.value.len());
    }
    (node, block.handle)
}

/// Drops a node made by [`allocate`] and gives its block back to the slab.
///
/// # Safety
/// `node` came from `allocate` with this slab and directory, nobody reaches it any more,
/// and it is freed once.
unsafe fn free(node: *mut Node, slab: &mut Slab, directory: &Directory) {
    // SAFETY: forwarded contract; the header and the payload say how long the node is,
    // so the size given back is the size allocated.
    unsafe {
        let node = NonNull::new_unchecked(node);
        let bytes = node_len(node);
        let own = node.as_ref().slot_and_hit.load(Relaxed) & OWN_ALLOCATION != 0;
        ptr::drop_in_place(node.as_ptr());
        slab.free(node.cast(), bytes, own, directory);
    }
}

impl Retirable for Node {
    #[cfg(engine_loom)]
    fn poison(&self) {
        self.payload_access.poison();
    }
}

/// Where `node`'s payload starts: the key's length, right after the header (bytes have
/// alignment 1), as `allocate` wrote it.
///
/// # Safety
/// `node` is live (linked, or protected by the caller's guard) while the payload is read.
#[inline(always)]
unsafe fn payload_start(node: NonNull<Node>) -> *const u8 {
    // SAFETY: the caller keeps the node alive; the header and the payload were written
    // before the node was published and never change (bar the atomics). The payload is
    // reached through `node`, the block's own pointer, whose provenance covers the whole
    // block.
    unsafe {
        node.as_ref().payload_access.get();
        (node.as_ptr() as *const u8).add(HEADER_BYTES)
    }
}

/// The key of `node`.
///
/// # Safety
/// `node` is live (linked, or protected by the caller's guard) for `'a`.
#[inline(always)]
unsafe fn key<'a>(node: NonNull<Node>) -> &'a [u8] {
    // SAFETY: forwarded contract; the key's length starts the payload, then the key.
    unsafe {
        let (len, start) = read_length(payload_start(node));
        std::slice::from_raw_parts(start, len)
    }
}

/// The key and value bytes of `node`.
///
/// # Safety
/// As for [`key`].
#[inline(always)]
unsafe fn payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: forwarded contract.
    unsafe {
        let key = key(node);
        (key, value_after(key))
    }
}

/// The key of `node` if it is `key`. A key shorter than 128 bytes, as most are, is told
/// apart by its length's one byte, compared whole (a longer key's first byte has its top
/// bit set), with nothing decoded on the way to the next node of the chain.
///
/// # Safety
/// As for [`key`].
#[inline(always)]
unsafe fn key_if_same<'a>(node: NonNull<Node>, key: &[u8]) -> Option<&'a [u8]> {
    if key.len() >= 0x80 {
        // SAFETY: forwarded contract.
        let found = unsafe { self::key(node) };
        return same_key(found, key).then_some(found);
    }
    // SAFETY: forwarded contract; the key's length starts the payload, then the key,
    // which is `key.len()` bytes long when that length's one byte is `key.len()`.
    unsafe {
        let at = payload_start(node);
        if usize::from(at.read()) != key.len() {
            return None;
        }
        let found = std::slice::from_raw_parts(at.add(1), key.len());
        same_bytes(found, key).then_some(found)
    }
}

/// The value of the node whose key [`key`] gave as `key`.
///
/// # Safety
/// As for [`key`], for the node `key` is the key of.
#[inline(always)]
unsafe fn value_after(key: &[u8]) -> &[u8] {
    // SAFETY: `key` lies in its node's block and came from the block's own pointer (see
    // `key`); the value's length follows it, as `allocate` wrote it, then the value.
    unsafe {
        let (value_len, start) = read_length(key.as_ptr().add(key.len()));
        std::slice::from_raw_parts(start, value_len)
    }
}

impl Node {
    pub(crate) fn slot(&self) -> u32 {
        self.slot_and_hit.load(Relaxed) >> 1 & MAX_ENTRIES as u32
    }

    #[inline(always)]
    fn times(&self) -> u64 {
        u64::from(self.times[1]) << 32 | u64::from(self.times[0])
    }

    #[inline(always)]
    pub(crate) fn cached_at_ms(&self) -> u64 {
        self.times() >> LIFETIME_BITS
    }

    /// When the entry expires; [`NEVER`] if it does not.
    #[inline(always)]
    pub(crate) fn expires_at_ms(&self) -> u64 {
        let times = self.times();
        Lifetime((times & ((1 << LIFETIME_BITS) - 1)) as u32).expires_at_ms(times >> LIFETIME_BITS)
    }

    /// When the entry stops being servable at all: its expiry plus the stale window.
    #[inline(always)]
    pub(crate) fn stale_until_ms(&self, stale_window_ms: u64) -> u64 {
        self.expires_at_ms().saturating_add(stale_window_ms)
    }

    /// Whether a reader hit the entry since the policy last looked.
    pub(crate) fn pending_hits(&self) -> u8 {
        (self.slot_and_hit.load(Relaxed) & HIT) as u8
    }

    /// The hits readers counted since the last call (0 or 1), clearing them.
    pub(crate) fn take_hits(&self) -> u8 {
        // Load first: no hit (the common case in a sweep) costs no store.
        let word = self.slot_and_hit.load(Relaxed);
        if word & HIT == 0 {
            return 0;
        }
        (self.slot_and_hit.fetch_and(!HIT, Relaxed) & HIT) as u8
    }

    /// Counts a hit. A plain load and store, not an atomic read-modify-write: two readers
    /// racing may count one hit, which the policy's estimate tolerates, and an entry
    /// already hit writes nothing, so a hot entry's cache line stays clean. (Counting up
    /// to 15 hits gave the same hit ratios on the ARC traces, and cost reads 6 % in an
    /// A/B of the read loop: every hit dirtied the line until the count saturated.)
    #[inline(always)]
    fn record_hit(&self) {
        let word = self.slot_and_hit.load(Relaxed);
        if word & HIT == 0 {
            self.slot_and_hit.store(word | HIT, Relaxed);
        }
    }
}

/// The key of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_key<'a>(node: NonNull<Node>) -> &'a [u8] {
    // SAFETY: forwarded contract.
    unsafe { key(node) }
}

/// The bytes a node the caller keeps alive takes, header to value's end: what
/// [`allocate`] gave it ([`node_bytes`] of its key and value), read off where its value
/// ends rather than worked out again from the lengths.
///
/// # Safety
/// As for [`payload`].
#[inline(always)]
pub(crate) unsafe fn node_len(node: NonNull<Node>) -> usize {
    // SAFETY: forwarded contract.
    let (key, value) = unsafe { payload(node) };
    let len = value.as_ptr() as usize + value.len() - node.as_ptr() as usize;
    debug_assert_eq!(len, node_bytes(key.len(), value.len()));
    len
}

/// The key and value of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: forwarded contract.
    unsafe { payload(node) }
}

/// The fields drop in order after `Table::drop` has freed the linked nodes and the
/// retired ones the reclaimer held: the slab gives its chunks back, and only then the
/// directory its segments.
struct Table {
    /// Each bucket's first node: its handle's bits, or 0.
    buckets: Box<[AtomicU32]>,
    /// How long past its expiry an entry stays servable as stale.
    stale_window_ms: u64,
    reclaimer: Reclaimer<Node>,
    /// Every reader handle's lookup counts, for the writer to sum.
    readers: Mutex<Vec<std::sync::Arc<CachePadded<LookupCounts>>>>,
    /// Only the table's one [`TableWriter`] touches it (see `TableWriter::allocate` and
    /// `TableWriter::retire`), and the table's drop.
    slab: UnsafeCell<Slab>,
    /// Where the handles in links point; the slab keeps it up to date.
    directory: Directory,
}

impl Table {
    /// The node `handle` names, which must be live (see `slab::Directory::resolve`).
    #[inline(always)]
    fn node(&self, handle: Handle) -> NonNull<Node> {
        node_named(&self.directory, handle)
    }
}

/// The node `handle` names in `directory`, which must be live: [`Table::node`], for
/// where the table is borrowed in parts.
#[inline(always)]
fn node_named(directory: &Directory, handle: Handle) -> NonNull<Node> {
    directory.resolve(handle).cast()
}

// SAFETY: the slab is only reached through the table's single `TableWriter`, which is
// `Send` but not `Clone`, so no two threads use it at once; everything else in the table
// is atomics, a mutex, and published nodes that are immutable bar atomics.
unsafe impl Sync for Table {}

/// Lookups through one reader handle, for the eviction policy's hit-rate samples. Each
/// handle has its own, on its own cache line, written with plain loads and stores: a
/// handle used by one thread counts exactly and shares nothing with other readers; one
/// shared by several threads may lose a count, which a sample tolerates.
///
/// Lookups and misses are counted, not hits: a lookup is counted before the bucket is
/// read, a miss on the paths that already branch away from a hit, so no store waits on
/// the lookup's own cache misses. A store whose value did (a hit adding 1 or 0) held
/// the next lookups' counts behind every miss, and cost reads about 13 % more than these
/// two in an A/B of the read loop (BENCHMARKS.md).
#[derive(Default)]
struct LookupCounts {
    lookups: std::sync::atomic::AtomicU64,
    misses: std::sync::atomic::AtomicU64,
}

impl LookupCounts {
    #[inline(always)]
    fn count_lookup(&self) {
        self.lookups.store(self.lookups.load(Relaxed) + 1, Relaxed);
    }

    #[inline(always)]
    fn count_miss(&self) {
        self.misses.store(self.misses.load(Relaxed) + 1, Relaxed);
    }
}

impl Drop for Table {
    fn drop(&mut self) {
        let slab = self.slab.get_mut();
        for bucket in self.buckets.iter() {
            let mut link = bucket.load(Relaxed);
            while let Some(handle) = Handle::from_bits(link) {
                let node = node_named(&self.directory, handle);
                // SAFETY: dropping the table means no reader or writer remains; every
                // linked node came from `allocate` with this slab, is live, and is
                // linked exactly once.
                unsafe {
                    link = node.as_ref().next.load(Relaxed);
                    free(node.as_ptr(), slab, &self.directory);
                }
            }
        }
        // SAFETY: as above; retired nodes are unlinked, and the reclaimer holds each once.
        self.reclaimer
            .drain(|node| unsafe { free(node, slab, &self.directory) });
    }
}

/// A table plus a direct pointer to its buckets, so a lookup does not go through the
/// `Arc` to find them.
struct TableRef {
    table: Arc<Table>,
    buckets: NonNull<AtomicU32>,
    /// How many buckets there are (below 2^32).
    count: u64,
}

// SAFETY: `buckets` points into `table.buckets`, which the `Arc` keeps alive and never
// moves; the table itself is `Send + Sync` (atomics and immutable published nodes).
unsafe impl Send for TableRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for TableRef {}

impl TableRef {
    fn new(table: Arc<Table>) -> Self {
        let count = table.buckets.len() as u64;
        // The slice's own pointer: its provenance covers every bucket.
        let buckets = NonNull::new(table.buckets.as_ptr() as *mut AtomicU32)
            .expect("a boxed slice's pointer is never null");
        Self {
            table,
            buckets,
            count,
        }
    }

    #[inline(always)]
    fn bucket(&self, hash: u64) -> &AtomicU32 {
        // The hash's low half scaled to the bucket count (multiply-shift), so that the
        // count need not be a power of two.
        let index = (u64::from(hash as u32) * self.count) >> 32;
        // SAFETY: `index` is below `count`, the length of the slice `buckets` points at,
        // since the low half is below 2^32.
        unsafe { self.buckets.add(index as usize).as_ref() }
    }

    #[inline(always)]
    fn node(&self, handle: Handle) -> NonNull<Node> {
        self.table.node(handle)
    }
}

impl Clone for TableRef {
    fn clone(&self) -> Self {
        Self::new(self.table.clone())
    }
}

/// A node [`TableWriter::build`] made and nothing links yet. Neither `Clone` nor `Copy`:
/// it is linked once, by [`TableWriter::replace`].
#[must_use = "an unlinked node is lost unless it is linked"]
pub(crate) struct Unlinked(NonNull<Node>, Handle);

/// Read access from any thread. Cheap to clone; each clone counts its own lookups, so a
/// thread that reads often should hold a clone of its own.
pub struct TableReader {
    table: TableRef,
    counts: std::sync::Arc<CachePadded<LookupCounts>>,
}

impl TableReader {
    fn new(table: TableRef) -> Self {
        let counts = std::sync::Arc::new(CachePadded::new(LookupCounts::default()));
        table.table.readers.lock().push(counts.clone());
        Self { table, counts }
    }
}

impl Clone for TableReader {
    fn clone(&self) -> Self {
        Self::new(self.table.clone())
    }
}

/// The single writer of a table.
pub(crate) struct TableWriter(TableRef);

/// A table for about `capacity` entries whose entries stay servable as stale for
/// `stale_window_ms` past their expiry, its nodes in huge pages if `huge_pages`.
pub(crate) fn table(
    capacity: usize,
    stale_window_ms: u64,
    huge_pages: bool,
) -> (TableReader, TableWriter) {
    let buckets = capacity.clamp(16, 1 << 26);
    let table = Arc::new(Table {
        buckets: (0..buckets).map(|_| AtomicU32::new(0)).collect(),
        stale_window_ms,
        reclaimer: Reclaimer::new(),
        readers: Mutex::new(Vec::new()),
        slab: UnsafeCell::new(Slab::new(capacity, huge_pages)),
        directory: Directory::default(),
    });
    (
        TableReader::new(TableRef::new(table.clone())),
        TableWriter(TableRef::new(table)),
    )
}

/// Whether two keys are equal. Keys of 4 to 16 bytes, which most caches hold, are
/// compared as two overlapping words each instead of through a call to `memcmp`: a hit
/// on a small cache spent a tenth of its instructions in that call.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && same_bytes(a, b)
}

/// [`same_key`] of two keys of the same length.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    if (4..8).contains(&n) {
        let word = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
    }
    a == b
}

/// Bytes of the bucket array per entry, for memory accounting.
pub(crate) const BUCKET_BYTES: usize = std::mem::size_of::<AtomicU32>();

impl TableReader {
    /// Finds `key` and, if it is present and servable at `now` (not expired, or expired
    /// but within the stale window, flagged `stale`), counts a hit on it and hands it
    /// to `read`. Never blocks and never waits for the writer.
    #[inline]
    pub fn get_with<R>(
        &self,
        hash: u64,
        key: &[u8],
        now_ms: u64,
        read: impl FnOnce(EntryRef<'_>) -> R,
    ) -> Option<R> {
        let guard = self.table.table.reclaimer.enter();
        self.counts.count_lookup();
        let mut link = guard.protect_link(self.table.bucket(hash));
        while let Some(handle) = Handle::from_bits(link) {
            let node = self.table.node(handle);
            // SAFETY: `link` was loaded through `guard`, so the node it names stays
            // allocated (and its name resolvable) until the guard drops even if the writer
            // unlinks and retires it meanwhile. It was fully built before the release store
            // that published it, which this acquire load synchronizes with, and it is never
            // mutated afterwards (bar atomics).
            let header = unsafe { node.as_ref() };
            // SAFETY: as above; the guard outlives every use of the key.
            if let Some(found) = unsafe { key_if_same(node, key) } {
                let expires_at_ms = header.expires_at_ms();
                let servable =
                    expires_at_ms.saturating_add(self.table.table.stale_window_ms) > now_ms;
                if !servable {
                    self.counts.count_miss();
                    return None;
                }
                header.record_hit();
                return Some(read(EntryRef {
                    key: found,
                    // SAFETY: as above; the guard outlives every use of the value.
                    value: unsafe { value_after(found) },
                    cached_at_ms: header.cached_at_ms(),
                    expires_at_ms: expiry(expires_at_ms),
                    stale: expires_at_ms <= now_ms,
                }));
            }
            link = guard.protect_link(&header.next);
        }
        self.counts.count_miss();
        None
    }
}

impl TableWriter {
    /// Lookups and misses through every reader handle so far, summed.
    pub(crate) fn lookups(&self) -> (u64, u64) {
        self.0
            .table
            .readers
            .lock()
            .iter()
            .fold((0, 0), |(l, h), c| {
                (l + c.lookups.load(Relaxed), h + c.misses.load(Relaxed))
            })
    }

    /// The node holding `key`, expired or not.
    pub(crate) fn find(&self, hash: u64, key: &[u8]) -> Option<NonNull<Node>> {
        let mut link = self.0.bucket(hash).load(Relaxed);
        while let Some(handle) = Handle::from_bits(link) {
            let node = self.0.node(handle);
            // SAFETY: only this writer unlinks and retires nodes, so every node it can
            // reach from a bucket is live.
            let header = unsafe { node.as_ref() };
            // SAFETY: as above.
            if unsafe { key_if_same(node, key) }.is_some() {
                return Some(node);
            }
            link = header.next.load(Relaxed);
        }
        None
    }

    /// How many buckets the table has.
    #[cfg(all(test, not(engine_loom)))]
    pub(crate) fn bucket_count(&self) -> usize {
        self.0.table.buckets.len()
    }

    /// Starts loading the bucket of keys with this hash.
    pub(crate) fn prefetch_bucket(&self, hash: u64) {
        crate::prefetch::prefetch(self.0.bucket(hash));
    }

    /// The names of the table's nodes, for the writer's own records of them.
    pub(crate) fn names(&self) -> Names {
        Names(self.0.table.clone())
    }

    /// Allocates a node from the table's slab, named in its directory.
    fn allocate(&mut self, entry: NewEntry<'_>) -> (NonNull<Node>, Handle) {
        let table = &*self.0.table;
        // SAFETY: only the table's one writer reaches the slab, and `&mut self` makes
        // this the only use of it now (see `Table`'s `Sync`).
        let slab = unsafe { &mut *table.slab.get() };
        allocate(slab, &table.directory, entry)
    }

    /// Links a new node for a key whose hash is `hash` and that is not in the table;
    /// returns its name.
    pub(crate) fn insert(&mut self, entry: NewEntry<'_>) -> Handle {
        let hash = entry.hash;
        let (node, handle) = self.allocate(entry);
        let bucket = self.0.bucket(hash);
        // SAFETY: `node` is fresh and not yet shared.
        unsafe { node.as_ref() }
            .next
            .store(bucket.load(Relaxed), Relaxed);
        bucket.store(handle.bits(), Release);
        handle
    }

    /// Builds the node for `entry` without linking it, so that the caller can overlap
    /// its cache misses (a recycled block, the key and value copied in) with others
    /// before [`TableWriter::replace`] links it.
    pub(crate) fn build(&mut self, entry: NewEntry<'_>) -> Unlinked {
        let (node, handle) = self.allocate(entry);
        Unlinked(node, handle)
    }

    /// Puts a new node in place of `old` (same key, whose hash is `hash`) and retires
    /// `old`; returns the new node's name.
    pub(crate) fn replace(&mut self, old: NonNull<Node>, new: Unlinked, hash: u64) -> Handle {
        let Unlinked(node, handle) = new;
        let link = self.link_to(old, hash);
        // SAFETY: `old` is linked, hence live (see `find`); `node` is not yet shared.
        unsafe {
            node.as_ref()
                .next
                .store(old.as_ref().next.load(Relaxed), Relaxed);
        }
        link.store(handle.bits(), Release);
        // SAFETY: `old` is now unreachable from the table, it came from `allocate`, and
        // the writer drops its handle to it here.
        unsafe { self.retire(old) };
        handle
    }

    /// Unlinks `node`, whose key's hash is `hash`, and retires it.
    pub(crate) fn remove(&mut self, node: NonNull<Node>, hash: u64) {
        let link = self.link_to(node, hash);
        // SAFETY: `node` is linked, hence live (see `find`).
        link.store(unsafe { node.as_ref() }.next.load(Relaxed), Release);
        // SAFETY: `node` is now unreachable from the table, it came from `allocate`, and
        // the caller gives up its handle to it.
        unsafe { self.retire(node) };
    }

    /// Hands an unlinked node to the reclaimer, and frees the retired nodes no reader can
    /// reach any more.
    ///
    /// # Safety
    /// `node` came from `allocate`, is unlinked, and is never used again by the caller.
    unsafe fn retire(&mut self, node: NonNull<Node>) {
        let table = &*self.0.table;
        // SAFETY: only the table's one writer reaches the slab, and `&mut self` makes this
        // the only use of it now (see `Table`'s `Sync`).
        let slab = unsafe { &mut *table.slab.get() };
        // SAFETY: the writer is the reclaimer's only caller (`&mut self`); the node is
        // unlinked (the contract), and what the reclaimer hands back was retired here,
        // from `allocate` with this slab, and is reached by nobody.
        unsafe {
            table
                .reclaimer
                .retire(node.as_ptr(), |node| free(node, slab, &table.directory))
        };
    }

    /// The link that currently names `target`, whose key's hash is `hash`.
    fn link_to(&self, target: NonNull<Node>, hash: u64) -> &AtomicU32 {
        let mut link = self.0.bucket(hash);
        loop {
            let handle =
                Handle::from_bits(link.load(Relaxed)).expect("node to unlink is in its bucket");
            let node = self.0.node(handle);
            if node == target {
                return link;
            }
            // SAFETY: reachable from a bucket, hence live (see `find`).
            link = unsafe { &(*node.as_ptr()).next };
        }
    }
}

/// The names of a table's nodes, resolved for the writer's own records (the eviction
/// policy's slots) as the table's links are.
pub(crate) struct Names(Arc<Table>);

impl Names {
    /// The node `handle` names, which must be linked (or the writer's, just built).
    #[inline(always)]
    pub(crate) fn node(&self, handle: Handle) -> NonNull<Node> {
        self.0.node(handle)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{same_key, Lifetime, LATEST_CACHED_AT_MS, NEVER};

    /// The longest lifetime short of never: 2^20 - 2 hours.
    const LONGEST_MS: u64 = ((1 << 20) - 2) * 3_600_000;

    #[test]
    fn lifetimes_are_exact_in_milliseconds_to_17_minutes_and_in_seconds_to_12_days() {
        let at = LATEST_CACHED_AT_MS;
        for ms in [0, 1, 999, 1_000, 1_001, (1 << 20) - 1] {
            assert_eq!(
                Lifetime::new(at, at + ms).expires_at_ms(at),
                at + ms,
                "{ms} ms"
            );
        }
        for s in [1_049, 3_600, 86_400, 12 * 86_400, (1 << 20) - 1] {
            let ms = s * 1_000;
            assert_eq!(
                Lifetime::new(at, at + ms).expires_at_ms(at),
                at + ms,
                "{s} s"
            );
        }
        assert_eq!(Lifetime::new(at, NEVER).expires_at_ms(at), NEVER);
        // Already past: the entry is cached expired.
        assert_eq!(Lifetime::new(at, at - 5).expires_at_ms(at), at);
    }

    proptest! {
        #[test]
        fn a_lifetime_never_ends_early_and_ends_less_than_its_unit_late(
            cached_at in 0..=LATEST_CACHED_AT_MS,
            ms in prop_oneof![0..(1u64 << 22), 0..(1u64 << 32), 0..LONGEST_MS],
        ) {
            let expires = Lifetime::new(cached_at, cached_at + ms).expires_at_ms(cached_at);
            let late = expires - (cached_at + ms);
            let unit = if ms < 1 << 20 {
                1
            } else if ms <= ((1 << 20) - 1) * 1_000 {
                1_000
            } else if ms <= ((1 << 20) - 1) * 60_000 {
                60_000
            } else {
                3_600_000
            };
            prop_assert!(expires >= cached_at + ms && late < unit, "{ms} ms: {late} ms late");
        }
    }

    #[test]
    fn lifetimes_past_the_longest_are_the_longest_not_never() {
        let longest = Lifetime::new(0, LONGEST_MS);
        assert_eq!(longest.expires_at_ms(0), LONGEST_MS);
        assert_eq!(Lifetime::new(0, LONGEST_MS + 1), longest);
        assert_eq!(Lifetime::new(0, NEVER - 1), longest);
    }

    #[test]
    fn keys_are_equal_exactly_when_their_bytes_are() {
        for len in 0..=24usize {
            let key: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            assert!(same_key(&key, &key.clone()), "{len} bytes");
            for at in 0..len {
                let mut other = key.clone();
                other[at] ^= 1;
                assert!(!same_key(&key, &other), "{len} bytes, differing at {at}");
            }
            let longer = [&key[..], b"x"].concat();
            assert!(!same_key(&key, &longer) && !same_key(&longer, &key));
        }
    }
}
