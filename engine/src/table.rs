//! The shard table: a chained hash table with exactly one writer and lock-free readers on
//! any thread.
//!
//! Only the [`TableWriter`] (one per table, owned by the shard's core) links and unlinks
//! nodes, so it needs no CAS and never waits. Readers pin a reclamation guard, walk a
//! bucket chain with acquire loads, and never write anything but a node's reference bit
//! (which the eviction policy reads and clears; set only when it is unset, so hot entries
//! keep their cache line clean) and their own lookup counts. A node is
//! immutable once published: an overwrite links a new node in place of the old one, and
//! an unlinked node is retired to the reclaimer, which frees it only after every reader
//! that might still hold it has left.
//!
//! The bucket array is sized once from the shard's entry bound, so the table never
//! resizes and the readers' path has no resize protocol to follow.

use std::alloc::{self, Layout};
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crossbeam_utils::CachePadded;
use parking_lot::Mutex;

use crate::sync::{Arc, AtomicPtr, AtomicU8, Reclaimer, Retirable, SharedCell};

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

/// A node's header. The key's bytes and then the value's follow it in the same
/// allocation, so a lookup that reaches the header finds the key on the same cache line
/// and an entry costs one allocation. The payload is only ever reached through the
/// allocation's own pointer (see [`payload`]), never through a `&Node`, whose provenance
/// covers the header alone.
#[repr(C)]
pub(crate) struct Node {
    hash: u64,
    next: AtomicPtr<Node>,
    pub(crate) cached_at_ms: u64,
    pub(crate) expires_at_ms: u64,
    /// When the entry stops being servable at all: `expires_at_ms` plus the shard's stale
    /// window (equal to it when there is none).
    pub(crate) stale_until_ms: u64,
    key_len: u32,
    value_len: u32,
    /// The entry's CLOCK slot; an overwrite keeps it.
    pub(crate) slot: u32,
    /// Hits since the eviction policy last looked, saturating at [`MAX_PENDING_HITS`].
    hits: AtomicU8,
    /// Zero-sized in normal builds. Under loom every payload read goes through it and
    /// reclamation writes it, so a read racing a free is reported.
    payload_access: SharedCell<()>,
}

/// What the writer needs to build a node.
pub(crate) struct NewEntry<'a> {
    pub hash: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    pub slot: u32,
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub stale_until_ms: u64,
    pub hits: u8,
}

/// Where a node's hit count saturates: at 1, a reference bit. Counting up to 15 (as far
/// as TinyLFU's counters go) gave the same hit ratios on the ARC traces within their
/// seed-to-seed spread, and cost reads 6 % in an A/B of the read loop: every hit but
/// the first dirtied the entry's cache line until the count saturated.
const MAX_PENDING_HITS: u8 = 1;

fn node_layout(payload_len: usize) -> Layout {
    Layout::new::<Node>()
        .extend(Layout::array::<u8>(payload_len).expect("payload fits in memory"))
        .expect("node fits in memory")
        .0
        .pad_to_align()
}

/// Allocates and fills a node; the writer links it.
fn allocate(entry: NewEntry<'_>) -> NonNull<Node> {
    let key_len = u32::try_from(entry.key.len()).expect("keys are far below 4 GiB");
    let value_len = u32::try_from(entry.value.len()).expect("values are far below 4 GiB");
    let layout = node_layout(entry.key.len() + entry.value.len());
    // SAFETY: the layout is never zero-sized (it contains the header).
    let raw = unsafe { alloc::alloc(layout) } as *mut Node;
    let Some(node) = NonNull::new(raw) else {
        alloc::handle_alloc_error(layout)
    };
    // SAFETY: `node` is a fresh allocation of `node_layout`, large and aligned enough for
    // the header followed by `key_len + value_len` bytes; nothing else can see it yet.
    unsafe {
        node.as_ptr().write(Node {
            hash: entry.hash,
            next: AtomicPtr::new(ptr::null_mut()),
            cached_at_ms: entry.cached_at_ms,
            expires_at_ms: entry.expires_at_ms,
            stale_until_ms: entry.stale_until_ms,
            key_len,
            value_len,
            slot: entry.slot,
            hits: AtomicU8::new(entry.hits),
            payload_access: SharedCell::new(()),
        });
        let payload = payload_ptr(node);
        ptr::copy_nonoverlapping(entry.key.as_ptr(), payload, entry.key.len());
        ptr::copy_nonoverlapping(
            entry.value.as_ptr(),
            payload.add(entry.key.len()),
            entry.value.len(),
        );
    }
    node
}

impl Retirable for Node {
    /// Drops and frees a node made by [`allocate`].
    ///
    /// # Safety
    /// As [`Retirable::free`] requires: `node` came from `allocate` and is freed once.
    unsafe fn free(node: *mut Node) {
        // SAFETY: forwarded contract; the header says how long the payload is.
        unsafe {
            let layout = node_layout((*node).payload_len());
            ptr::drop_in_place(node);
            alloc::dealloc(node as *mut u8, layout);
        }
    }

    #[cfg(engine_loom)]
    fn poison(&self) {
        self.payload_access.poison();
    }
}

/// Where the payload of `node` starts.
///
/// # Safety
/// `node` points to a live node made by [`allocate`].
#[inline(always)]
unsafe fn payload_ptr(node: NonNull<Node>) -> *mut u8 {
    // SAFETY: bytes have alignment 1, so `node_layout` puts the payload right after the
    // header, inside the same allocation.
    unsafe { (node.as_ptr() as *mut u8).add(std::mem::size_of::<Node>()) }
}

/// The key and value bytes of `node`.
///
/// # Safety
/// `node` is live (linked, or protected by the caller's guard) for `'a`.
#[inline(always)]
unsafe fn payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: the caller keeps the node alive for 'a; the payload was written before the
    // node was published and never changes.
    unsafe {
        let header = node.as_ref();
        header.payload_access.get();
        let start = payload_ptr(node);
        let key = std::slice::from_raw_parts(start, header.key_len as usize);
        let value = std::slice::from_raw_parts(
            start.add(header.key_len as usize),
            header.value_len as usize,
        );
        (key, value)
    }
}

impl Node {
    pub(crate) fn payload_len(&self) -> usize {
        self.key_len as usize + self.value_len as usize
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    /// Hits not yet taken by the policy.
    pub(crate) fn pending_hits(&self) -> u8 {
        self.hits.load(Relaxed)
    }

    /// The hits readers counted since the last call, clearing them.
    pub(crate) fn take_hits(&self) -> u8 {
        // Load first: no hits (the common case in a sweep) costs no store.
        match self.hits.load(Relaxed) {
            0 => 0,
            _ => self.hits.swap(0, Relaxed),
        }
    }

    /// Counts a hit. A plain load and store, not an atomic increment: two readers racing
    /// may count one hit, which the policy's estimate tolerates, and the common case of
    /// a saturated counter writes nothing.
    #[inline(always)]
    fn record_hit(&self) {
        let hits = self.hits.load(Relaxed);
        if hits < MAX_PENDING_HITS {
            self.hits.store(hits + 1, Relaxed);
        }
    }
}

/// The key of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_key<'a>(node: NonNull<Node>) -> &'a [u8] {
    // SAFETY: forwarded contract.
    unsafe { payload(node).0 }
}

/// The key and value of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: forwarded contract.
    unsafe { payload(node) }
}

struct Table {
    buckets: Box<[AtomicPtr<Node>]>,
    reclaimer: Reclaimer,
    /// Every reader handle's lookup counts, for the writer to sum.
    readers: Mutex<Vec<std::sync::Arc<CachePadded<LookupCounts>>>>,
}

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
        for bucket in self.buckets.iter() {
            let mut ptr = bucket.load(Relaxed);
            while !ptr.is_null() {
                // SAFETY: dropping the table means no reader or writer remains; every
                // linked node came from `allocate` and is linked exactly once.
                let next = unsafe { (*ptr).next.load(Relaxed) };
                // SAFETY: as above.
                unsafe { Node::free(ptr) };
                ptr = next;
            }
        }
        // Retired nodes are freed by the reclaimer's own drop.
    }
}

/// A table plus a direct pointer to its buckets, so a lookup does not go through the
/// `Arc` to find them.
struct TableRef {
    table: Arc<Table>,
    buckets: NonNull<AtomicPtr<Node>>,
    mask: usize,
}

// SAFETY: `buckets` points into `table.buckets`, which the `Arc` keeps alive and never
// moves; the table itself is `Send + Sync` (atomics and immutable published nodes).
unsafe impl Send for TableRef {}
// SAFETY: as for `Send`.
unsafe impl Sync for TableRef {}

impl TableRef {
    fn new(table: Arc<Table>) -> Self {
        let mask = table.buckets.len() - 1;
        // The slice's own pointer: its provenance covers every bucket.
        let buckets = NonNull::new(table.buckets.as_ptr() as *mut AtomicPtr<Node>)
            .expect("a boxed slice's pointer is never null");
        Self {
            table,
            buckets,
            mask,
        }
    }

    #[inline(always)]
    fn bucket(&self, hash: u64) -> &AtomicPtr<Node> {
        // SAFETY: the index is masked to the bucket count, a power of two.
        unsafe { self.buckets.add(hash as usize & self.mask).as_ref() }
    }
}

impl Clone for TableRef {
    fn clone(&self) -> Self {
        Self::new(self.table.clone())
    }
}

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

pub(crate) fn table(capacity: usize) -> (TableReader, TableWriter) {
    let buckets = capacity.clamp(16, 1 << 26).next_power_of_two();
    let table = Arc::new(Table {
        buckets: (0..buckets)
            .map(|_| AtomicPtr::new(ptr::null_mut()))
            .collect(),
        reclaimer: Reclaimer::new(),
        readers: Mutex::new(Vec::new()),
    });
    (
        TableReader::new(TableRef::new(table.clone())),
        TableWriter(TableRef::new(table)),
    )
}

/// Bytes of table structure per entry (node header and bucket pointer), for memory
/// accounting.
pub(crate) const NODE_BYTES: usize =
    std::mem::size_of::<Node>() + std::mem::size_of::<AtomicPtr<Node>>();

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
        let mut ptr = guard.protect(self.table.bucket(hash));
        while let Some(node) = NonNull::new(ptr) {
            // SAFETY: `ptr` was loaded through `guard`, so the node stays allocated until
            // the guard drops even if the writer unlinks and retires it meanwhile. It was
            // fully built before the release store that published it, which this acquire
            // load synchronizes with, and it is never mutated afterwards (bar atomics).
            let header = unsafe { node.as_ref() };
            if header.hash == hash {
                // SAFETY: as above; the guard outlives every use of the payload.
                let (k, value) = unsafe { payload(node) };
                if k == key {
                    let servable = header.stale_until_ms > now_ms;
                    if !servable {
                        self.counts.count_miss();
                        return None;
                    }
                    header.record_hit();
                    return Some(read(EntryRef {
                        key: k,
                        value,
                        cached_at_ms: header.cached_at_ms,
                        expires_at_ms: (header.expires_at_ms != NEVER)
                            .then_some(header.expires_at_ms),
                        stale: header.expires_at_ms <= now_ms,
                    }));
                }
            }
            ptr = guard.protect(&header.next);
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
        let mut ptr = self.0.bucket(hash).load(Acquire);
        while let Some(node) = NonNull::new(ptr) {
            // SAFETY: only this writer unlinks and retires nodes, so every node it can
            // reach from a bucket is live.
            let n = unsafe { node.as_ref() };
            // SAFETY: as above.
            if n.hash == hash && unsafe { node_key(node) } == key {
                return Some(node);
            }
            ptr = n.next.load(Acquire);
        }
        None
    }

    /// Links a new node for a key that is not in the table.
    pub(crate) fn insert(&mut self, entry: NewEntry<'_>) -> NonNull<Node> {
        let bucket = self.0.bucket(entry.hash);
        let node = allocate(entry);
        // SAFETY: `node` is fresh and not yet shared.
        unsafe { node.as_ref() }
            .next
            .store(bucket.load(Relaxed), Relaxed);
        bucket.store(node.as_ptr(), Release);
        node
    }

    /// Puts a new node in place of `old` (same key) and retires `old`.
    pub(crate) fn replace(&mut self, old: NonNull<Node>, entry: NewEntry<'_>) -> NonNull<Node> {
        let link = self.link_to(old);
        let node = allocate(entry);
        // SAFETY: `old` is linked, hence live (see `find`); `node` is not yet shared.
        unsafe {
            node.as_ref()
                .next
                .store(old.as_ref().next.load(Relaxed), Relaxed)
        };
        link.store(node.as_ptr(), Release);
        // SAFETY: `old` is now unreachable from the table, it came from `allocate`, and
        // the writer drops its handle to it here.
        unsafe { self.0.table.reclaimer.retire(old.as_ptr()) };
        node
    }

    /// Unlinks `node` and retires it.
    pub(crate) fn remove(&mut self, node: NonNull<Node>) {
        let link = self.link_to(node);
        // SAFETY: `node` is linked, hence live (see `find`).
        link.store(unsafe { node.as_ref() }.next.load(Relaxed), Release);
        // SAFETY: `node` is now unreachable from the table, it came from `allocate`, and
        // the caller gives up its handle to it.
        unsafe { self.0.table.reclaimer.retire(node.as_ptr()) };
    }

    /// The atomic pointer that currently points at `target`.
    fn link_to(&self, target: NonNull<Node>) -> &AtomicPtr<Node> {
        // SAFETY: `target` is linked, hence live (see `find`).
        let hash = unsafe { target.as_ref() }.hash;
        let mut link = self.0.bucket(hash);
        loop {
            let ptr = link.load(Relaxed);
            assert!(!ptr.is_null(), "node to unlink is not in its bucket");
            if ptr == target.as_ptr() {
                return link;
            }
            // SAFETY: reachable from a bucket, hence live (see `find`).
            link = unsafe { &(*ptr).next };
        }
    }
}
