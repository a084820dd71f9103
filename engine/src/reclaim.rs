//! When a node the writer unlinked may be freed: the tables' memory reclamation, written
//! for readers that take no lock and execute no locked instruction.
//!
//! Each thread that reads has a [`Record`], one per thread for every table of the
//! process: a word whose low bit says whether the thread is inside a read, and whose
//! other bits count the reads it entered. Entering is a plain store of the word and a
//! light barrier, leaving a plain release store. A writer retires the nodes it unlinks
//! into a batch; a full batch is sealed by a heavy barrier and a snapshot of the records
//! that were inside a read, and freed once each of those has left that read (its word
//! changed). Only the writer frees, on its own thread (so a freed block goes straight back
//! to the writer's slab), and a read never does reclamation work.
//!
//! The barriers are asymmetric, as in userspace RCU's `membarrier` flavour and seize:
//! the light one is a compiler fence, the heavy one is `membarrier(PRIVATE_EXPEDITED)`,
//! which makes every running thread of the process execute a full barrier. Between the
//! writer's barrier and a reader's, one comes first. If the reader's, its store saying it
//! is inside is visible to the snapshot and the batch waits for it. If the writer's, the
//! reader's loads come after the unlinks the writer made before sealing, so it cannot
//! reach the batch's nodes. Where `membarrier` is not available (not Linux, or blocked by
//! a seccomp filter) both barriers are `SeqCst` fences, which order the same way.
//!
//! This replaced seize, whose leave is an atomic swap: on x86 a locked instruction,
//! which waits for the read's own cache misses to finish and keeps the next read's loads
//! from starting, so back-to-back lookups could not overlap their misses. Reads were 11
//! to 13 % faster without it (BENCHMARKS.md). It is written here because the read path
//! is the product, and a record per thread shared by every table makes entering one
//! thread-local access.
//!
//! Under loom (`--cfg engine_loom`) the same code runs with loom's atomics, thread-locals
//! and statics, the barriers as `SeqCst` fences (loom cannot model `membarrier`; the
//! fences order the same way), and every retire sealing its batch, so that each model
//! races the reclamation itself. A freed node is poisoned (a write loom sees racing any
//! read) rather than freed, and freed when the table drains the reclaimer.

use std::cell::{Cell, UnsafeCell};
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::sync::{Arc, AtomicBool, AtomicU32, AtomicU64, Mutex};

/// Nodes a writer retires before it seals them into a batch: each seal is one heavy
/// barrier (a `membarrier` call, an interrupt to every core running the process) and a
/// look at every record, so a batch pays for both over many writes. What waits in the
/// open batch is a few kilobytes a shard. Under loom every retire seals, so that the
/// models race each reclamation.
const BATCH: usize = if cfg!(engine_loom) { 1 } else { 128 };

/// Nodes retired before a seal while the writer removes many at once (a pattern
/// invalidation's or a flush's sweep): a million removals sealed every [`BATCH`] made
/// 7,811 `membarrier` calls, 212 ms of syscall time in a sweep that took 1.0 s under
/// `perf trace`, each call an interrupt to every other core running the process
/// (BENCHMARKS.md, "Invalidations in steps"). What waits unsealed is then about a
/// hundred kilobytes a shard, for as long as the sweep runs, and a seal may free up to
/// a batch at once.
const BULK_BATCH: usize = if cfg!(engine_loom) { 1 } else { 1024 };

/// A node the writer unlinks and hands to the reclaimer. The writer frees it: the
/// reclaimer says when, through the function given to [`Reclaimer::retire`].
pub(crate) trait Retirable {
    /// Models, under loom, the write that freeing the node's data would be.
    #[cfg(engine_loom)]
    fn poison(&self);
}

/// One thread's reads: what a writer's snapshot looks at.
struct Record {
    /// Bit 0: inside a read. Above it, the reads entered so far, so that a word seen
    /// again means the same read: it only ever grows, by its one thread's stores.
    word: AtomicU64,
    /// Whether a live thread holds the record; a thread that ends gives it back.
    claimed: AtomicBool,
}

const INSIDE: u64 = 1;

/// Every record ever made; a record is reused, never removed, so that a writer's
/// snapshot can keep referring to it.
#[cfg(not(engine_loom))]
static RECORDS: Mutex<Vec<Arc<Record>>> = Mutex::new(Vec::new());

#[cfg(engine_loom)]
loom::lazy_static! {
    static ref RECORDS: Mutex<Vec<Arc<Record>>> = Mutex::new(Vec::new());
}

/// A free record, or a new one.
fn claim_record() -> Arc<Record> {
    let mut records = crate::sync::lock(&RECORDS);
    for record in records.iter() {
        if !record.claimed.swap(true, Acquire) {
            // A thread that ended inside a read (a guard it forgot) left the word odd:
            // that read is over, and the record's next one must start even.
            let word = record.word.load(Relaxed);
            if word & INSIDE != 0 {
                record.word.store(word + 1, Release);
            }
            return record.clone();
        }
    }
    let record = Arc::new(Record {
        word: AtomicU64::new(0),
        claimed: AtomicBool::new(true),
    });
    records.push(record.clone());
    record
}

/// A thread's seat: its record, and how deep in reads it is (guards nest, across
/// tables too; only the outermost enters and leaves).
struct Seat {
    record: Arc<Record>,
    depth: Cell<u32>,
}

impl Seat {
    fn new() -> Self {
        Self {
            record: claim_record(),
            depth: Cell::new(0),
        }
    }

    #[inline(always)]
    fn enter(&self) {
        let depth = self.depth.get();
        self.depth.set(depth + 1);
        if depth == 0 {
            // Only this thread stores the word, so a load and a store make it odd.
            let word = self.record.word.load(Relaxed);
            self.record.word.store(word + INSIDE, Relaxed);
            barrier::light();
        }
    }

    #[inline(always)]
    fn leave(&self) {
        let depth = self.depth.get() - 1;
        self.depth.set(depth);
        if depth == 0 {
            // Release: the read's loads happen before a writer that sees the new word
            // frees what they loaded.
            let word = self.record.word.load(Relaxed);
            self.record.word.store(word + INSIDE, Release);
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.record.claimed.store(false, Release);
    }
}

#[cfg(not(engine_loom))]
thread_local! {
    static SEAT: Seat = Seat::new();
}

#[cfg(engine_loom)]
loom::thread_local! {
    static SEAT: Seat = Seat::new();
}

/// A batch the writer sealed: its nodes, and the reads that were going on when it was
/// sealed (a record and its word then), any of which may still reach them.
struct Sealed<T> {
    nodes: Vec<*mut T>,
    readers: Vec<(Arc<Record>, u64)>,
}

/// What only the writer touches.
struct Retired<T> {
    open: Vec<*mut T>,
    /// Oldest first. A read that holds one batch back began before it was sealed, so it
    /// also holds back every batch sealed after: the first still held stops the freeing.
    sealed: VecDeque<Sealed<T>>,
    /// Emptied node lists, kept for the next batches.
    spare: Vec<Vec<*mut T>>,
    /// Retirements that fill a batch: [`BATCH`], or [`BULK_BATCH`] in bulk.
    batch: usize,
    /// Under loom, nodes poisoned instead of freed, freed by the drain.
    #[cfg(engine_loom)]
    graveyard: Vec<*mut T>,
}

pub(crate) struct Reclaimer<T: Retirable> {
    /// Only the table's single writer reaches it (see [`Reclaimer::retire`]).
    retired: UnsafeCell<Retired<T>>,
}

// SAFETY: the reclaimer owns the nodes it holds (they are unlinked, and freed only when
// it hands them back), so it may move to another thread with them, as a `Box<T>` could.
unsafe impl<T: Retirable> Send for Reclaimer<T> {}
// SAFETY: shared, it is only ever reached through `retire`, whose contract makes the
// table's one writer its only caller, and through `enter`, which touches no field.
unsafe impl<T: Retirable> Sync for Reclaimer<T> {}

/// A thread inside a read. Neither `Send` nor `Sync`: it is left by the thread that
/// entered, through that thread's seat.
pub(crate) struct ReadGuard<'a> {
    /// The thread's seat, or, on a thread whose thread-locals are already destroyed (a
    /// read from another thread-local's destructor), a seat of the guard's own, boxed.
    /// A pointer and a flag rather than an enum with the seat in it: the guard then
    /// has no fields to drop, and its drop inlines into every read.
    seat: *const Seat,
    own_seat: bool,
    _reclaimer: PhantomData<&'a ()>,
}

impl<T: Retirable> Reclaimer<T> {
    pub(crate) fn new() -> Self {
        barrier::detect();
        Self {
            retired: UnsafeCell::new(Retired {
                open: Vec::with_capacity(BATCH),
                sealed: VecDeque::new(),
                spare: Vec::new(),
                batch: BATCH,
                #[cfg(engine_loom)]
                graveyard: Vec::new(),
            }),
        }
    }

    /// Enters a read: until the guard drops, no node the caller loads through a link
    /// (with [`ReadGuard::protect_link`]) is freed.
    #[inline(always)]
    pub(crate) fn enter(&self) -> ReadGuard<'_> {
        let (seat, own_seat) = match SEAT.try_with(|seat| seat as *const Seat) {
            Ok(seat) => (seat, false),
            Err(_) => (own_seat(), true),
        };
        // SAFETY: the thread's seat lives until the thread ends, after its guards (which
        // live on its stack within a read); an own seat lives until the guard frees it.
        unsafe { (*seat).enter() };
        ReadGuard {
            seat,
            own_seat,
            _reclaimer: PhantomData,
        }
    }

    /// Takes a node no reader entering from now on can reach, to be freed once no reader
    /// that could have reached it remains: now or at a later call, `free` is called on
    /// each node retired earlier that none can reach any more.
    ///
    /// # Safety
    /// The caller is the table's one writer (no two calls run at once); `ptr` is
    /// unlinked and never used again by the caller; `free` frees a node whole.
    pub(crate) unsafe fn retire(&self, ptr: *mut T, free: impl FnMut(*mut T)) {
        // SAFETY: the writer is the only caller, one call at a time (the contract), and
        // `enter` never touches this field: the reference is unique while it lives.
        let retired = unsafe { &mut *self.retired.get() };
        retired.open.push(ptr);
        if retired.open.len() >= retired.batch {
            retired.seal();
            retired.free_passed(free);
        }
    }

    /// Seals batches of [`BULK_BATCH`] retirements from now on while `bulk`, else of
    /// [`BATCH`]; leaving bulk seals what is open (and frees, with `free`, what no reader
    /// can reach), so that a sweep's last nodes do not wait for the next writes.
    ///
    /// # Safety
    /// As for [`Reclaimer::retire`]: the caller is the table's one writer, and `free`
    /// frees a node whole.
    pub(crate) unsafe fn retire_in_bulk(&self, bulk: bool, free: impl FnMut(*mut T)) {
        // SAFETY: as in `retire`: the writer is the only caller, one call at a time.
        let retired = unsafe { &mut *self.retired.get() };
        retired.batch = if bulk { BULK_BATCH } else { BATCH };
        if !bulk && !retired.open.is_empty() {
            retired.seal();
            retired.free_passed(free);
        }
    }

    /// Hands every node it still holds to `free`, whether or not readers remain: for
    /// the table's drop, when none can. A reclaimer dropped without a drain leaks them.
    pub(crate) fn drain(&mut self, mut free: impl FnMut(*mut T)) {
        let retired = self.retired.get_mut();
        let sealed = retired.sealed.drain(..).flat_map(|batch| batch.nodes);
        #[cfg(engine_loom)]
        let sealed = sealed.chain(retired.graveyard.drain(..));
        for ptr in sealed.chain(retired.open.drain(..)) {
            free(ptr);
        }
    }
}

impl<T: Retirable> Retired<T> {
    /// Seals the open batch: the heavy barrier, then the reads going on now.
    fn seal(&mut self) {
        barrier::heavy();
        let readers = crate::sync::lock(&RECORDS)
            .iter()
            .filter_map(|record| {
                let word = record.word.load(Acquire);
                (word & INSIDE != 0).then(|| (record.clone(), word))
            })
            .collect();
        let next = self.spare.pop().unwrap_or_default();
        let nodes = std::mem::replace(&mut self.open, next);
        self.sealed.push_back(Sealed { nodes, readers });
    }

    /// Frees (with `free`) the sealed batches no read can reach any more.
    // Under loom the nodes are poisoned here and only freed by the drain.
    #[cfg_attr(engine_loom, allow(unused_mut, unused_variables))]
    fn free_passed(&mut self, mut free: impl FnMut(*mut T)) {
        while let Some(oldest) = self.sealed.front_mut() {
            // Acquire: a changed word was stored by the leave that ended the read, so
            // the read's loads happen before the frees below.
            oldest
                .readers
                .retain(|(record, word)| record.word.load(Acquire) == *word);
            if !oldest.readers.is_empty() {
                return;
            }
            let mut nodes = self.sealed.pop_front().expect("a batch is first").nodes;
            for &ptr in &nodes {
                // Every read that was going on when the batch was sealed has ended, and
                // reads that began after the seal's heavy barrier load links that no
                // longer lead to the batch (see the module doc); each node was retired
                // once, so it is freed once.
                #[cfg(not(engine_loom))]
                free(ptr);
                // Under loom the free is a poisoning, a write loom sees racing any read;
                // the node stays allocated until the drain, so that a wrong free is a
                // race loom reports, not a use of freed memory.
                #[cfg(engine_loom)]
                {
                    // SAFETY: as above; the node is still allocated.
                    unsafe { (*ptr).poison() };
                    self.graveyard.push(ptr);
                }
            }
            nodes.clear();
            self.spare.push(nodes);
        }
    }
}

impl ReadGuard<'_> {
    /// Loads a link that names a node by its handle. The node stays allocated, and its
    /// name resolvable, until the guard drops. Acquire: the node was built before the
    /// release store that published the link.
    #[inline(always)]
    pub(crate) fn protect_link(&self, link: &AtomicU32) -> u32 {
        link.load(Acquire)
    }
}

impl Drop for ReadGuard<'_> {
    #[inline(always)]
    fn drop(&mut self) {
        // SAFETY: as in `enter`: the seat outlives the guard, and it is this thread's (the
        // guard is neither `Send` nor `Sync`).
        unsafe { (*self.seat).leave() };
        if self.own_seat {
            // SAFETY: made by `own_seat` for this guard alone, and freed once, here.
            unsafe { free_own_seat(self.seat) };
        }
    }
}

/// A seat for one guard on a thread without its thread-locals.
#[cold]
fn own_seat() -> *const Seat {
    Box::into_raw(Box::new(Seat::new()))
}

/// Frees a seat from [`own_seat`].
///
/// # Safety
/// `seat` came from `own_seat` and is freed once.
#[cold]
unsafe fn free_own_seat(seat: *const Seat) {
    // SAFETY: forwarded contract; the box gives the record back as it drops.
    drop(unsafe { Box::from_raw(seat.cast_mut()) });
}

/// Whether reads in this process enter without a memory fence: true once a table was
/// made where `membarrier` is available. Where it is not (not Linux, or a seccomp filter
/// forbids it), every read runs a full fence, which is correct and slower; the service
/// logs that at start.
pub fn fence_free_reads() -> bool {
    barrier::detect();
    barrier::light_is_free()
}

/// The two barriers, and which kind this process has.
mod barrier {
    #[cfg(all(target_os = "linux", not(engine_loom)))]
    pub(super) use linux::{detect, heavy, light, light_is_free};

    #[cfg(not(all(target_os = "linux", not(engine_loom))))]
    pub(super) use fences::{detect, heavy, light, light_is_free};

    #[cfg(not(all(target_os = "linux", not(engine_loom))))]
    mod fences {
        use crate::sync::fence;
        use std::sync::atomic::Ordering::SeqCst;

        pub(crate) fn detect() {}

        pub(crate) fn light_is_free() -> bool {
            false
        }

        #[inline(always)]
        pub(crate) fn light() {
            fence(SeqCst);
        }

        pub(crate) fn heavy() {
            fence(SeqCst);
        }
    }

    #[cfg(all(target_os = "linux", not(engine_loom)))]
    mod linux {
        use crate::sync::fence;
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        use std::sync::atomic::{compiler_fence, AtomicU8};
        use std::sync::Once;

        const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
        const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
        const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

        const FENCES: u8 = 0;
        const MEMBARRIER: u8 = 1;

        /// Which barriers: fences until `detect` finds `membarrier` usable. A reader
        /// that still sees `FENCES` after the switch only orders more than it must.
        static KIND: AtomicU8 = AtomicU8::new(FENCES);
        static DETECT: Once = Once::new();

        fn membarrier(cmd: libc::c_int) -> libc::c_long {
            // SAFETY: `membarrier` takes a command and flags and touches no memory of ours.
            unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_int) }
        }

        /// Switches to `membarrier` if the kernel has the private expedited command and
        /// lets this process register for it. Called before a table has readers.
        pub(crate) fn detect() {
            DETECT.call_once(|| {
                let commands = membarrier(MEMBARRIER_CMD_QUERY);
                if commands >= 0
                    && commands & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0
                    && membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
                {
                    KIND.store(MEMBARRIER, SeqCst);
                }
            });
        }

        pub(crate) fn light_is_free() -> bool {
            KIND.load(Relaxed) == MEMBARRIER
        }

        #[inline(always)]
        pub(crate) fn light() {
            if KIND.load(Relaxed) == MEMBARRIER {
                compiler_fence(SeqCst);
            } else {
                fence(SeqCst);
            }
        }

        pub(crate) fn heavy() {
            if KIND.load(Relaxed) == FENCES {
                fence(SeqCst);
            } else if membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) != 0 {
                // The kernel fails the call only for a process that did not register,
                // and `detect` registered before choosing it. Readers now rely on it
                // alone: going on without it could free a node under a reader.
                eprintln!("membarrier(PRIVATE_EXPEDITED) failed after registering; aborting");
                std::process::abort();
            }
        }
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests;
