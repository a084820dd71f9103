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
use std::ptr::NonNull;
use std::sync::atomic::Ordering::{Relaxed, Release};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::reclaim::Reclaimer;
use crate::slab::{Directory, Handle, Slab};
use crate::sync::{Arc, AtomicU32};

mod node;

use node::{allocate, free, key_if_same, value_after};
pub(crate) use node::{
    expiry, node_bytes, node_key, node_len, node_payload, NewEntry, Node, MAX_ENTRIES, MAX_KEY_LEN,
    NEVER,
};
pub use node::{LATEST_CACHED_AT_MS, MAX_FLAGS};

/// An entry as a reader sees it, borrowed for the duration of a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// The flags the value was stored with (`ShardWriter::insert_flagged`).
    pub flags: u8,
    /// When the value was stored, in ms since the UNIX epoch.
    pub cached_at_ms: u64,
    /// When it expires, in ms since the UNIX epoch; `None` if never.
    pub expires_at_ms: Option<u64>,
    /// Past `expires_at_ms` but inside the shard's stale window: servable only as stale.
    pub stale: bool,
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

/// A table for up to about `capacity` entries in `buckets` buckets, whose entries stay
/// servable as stale for `stale_window_ms` past their expiry, its nodes in huge pages if
/// `huge_pages`.
pub(crate) fn table(
    capacity: usize,
    buckets: usize,
    stale_window_ms: u64,
    huge_pages: bool,
) -> (TableReader, TableWriter) {
    let buckets = buckets.clamp(16, 1 << 26);
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
                let word = header.record_hit();
                return Some(read(EntryRef {
                    key: found,
                    // SAFETY: as above; the guard outlives every use of the value.
                    value: unsafe { value_after(word, found) },
                    flags: word.flags(),
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

    /// Bytes of slab chunks held and of the blocks in use in them, for tests.
    #[cfg(all(test, not(engine_loom)))]
    pub(crate) fn slab_chunks_and_used_bytes(&self) -> (usize, usize) {
        self.slab().chunks_and_used_bytes()
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

    /// The table's slab, for its one writer.
    fn slab(&self) -> &Slab {
        // SAFETY: only the table's one writer reaches the slab, and it holds `&self`
        // here, so no `&mut` to the slab is alive (see `Table`'s `Sync`).
        unsafe { &*self.0.table.slab.get() }
    }

    /// Whether the slab holds part-used chunks enough to be worth emptying some
    /// (`Slab::fragmented`).
    pub(crate) fn fragmented(&self) -> bool {
        self.slab().fragmented()
    }

    /// Starts emptying a part-used slab chunk, if its class has room elsewhere for its
    /// blocks in use; returns its index and the offsets of those blocks, for
    /// [`TableWriter::evacuee`] (`Slab::evacuate`).
    pub(crate) fn evacuate(&mut self) -> Option<(u32, Vec<u16>)> {
        // SAFETY: as in `allocate`: the writer's only use of the slab now.
        unsafe { &mut *self.0.table.slab.get() }.evacuate()
    }

    /// The node at `offset` of chunk `chunk`, as [`TableWriter::evacuate`] listed it, and
    /// its key's hash (`hash_of` its key), if it is still linked: a node to move. A block
    /// freed since, or a node retired and not yet freed, is not.
    pub(crate) fn evacuee(
        &self,
        chunk: u32,
        offset: u16,
        hash_of: impl FnOnce(&[u8]) -> u64,
    ) -> Option<(NonNull<Node>, u64)> {
        let node = self.slab().evacuee(chunk, offset)?.cast::<Node>();
        // SAFETY: a slab block in use holds a node `allocate` wrote, linked or retired;
        // only this writer frees retired nodes, so it is not freed while read here.
        let hash = hash_of(unsafe { node_key(node) });
        self.find_link(node, hash).map(|_| (node, hash))
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

    /// Whether the writer is about to remove many nodes at once: the reclaimer then
    /// seals its batches less often (`reclaim::BULK_BATCH`).
    pub(crate) fn retire_in_bulk(&mut self, bulk: bool) {
        let table = &*self.0.table;
        // SAFETY: as in `retire`: only the one writer reaches the slab, now through
        // `&mut self`.
        let slab = unsafe { &mut *table.slab.get() };
        // SAFETY: as in `retire`: the writer is the reclaimer's only caller, and what it
        // hands back was retired there, from `allocate` with this slab.
        unsafe {
            table
                .reclaimer
                .retire_in_bulk(bulk, |node| free(node, slab, &table.directory))
        };
    }

    /// The link that currently names `target`, whose key's hash is `hash`.
    fn link_to(&self, target: NonNull<Node>, hash: u64) -> &AtomicU32 {
        self.find_link(target, hash)
            .expect("node to unlink is in its bucket")
    }

    /// The link that currently names `target`, whose key's hash is `hash`, if it is
    /// linked.
    fn find_link(&self, target: NonNull<Node>, hash: u64) -> Option<&AtomicU32> {
        let mut link = self.0.bucket(hash);
        loop {
            let node = self.0.node(Handle::from_bits(link.load(Relaxed))?);
            if node == target {
                return Some(link);
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
