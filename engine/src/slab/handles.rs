//! Names for nodes in 32 bits, which the table's buckets and chain links and the
//! eviction policy's slots keep instead of 8-byte addresses.
//!
//! A [`Handle`] names a node in a slab block by the block's offset from the base of the
//! slab's arena (the address space its regions are mapped in, see `arena.rs`), in units
//! of `GRAIN`; a node with an allocation of its own (one larger than any block, or one
//! the slab could not place because its arena is full) by its index in a table of such
//! nodes. The [`Directory`] turns a handle back into the node's address: for a slab
//! node, an add to a base that never changes, so a lookup pays nothing for the name.
//!
//! Readers resolve handles too, without a lock, while the writer names and forgets nodes
//! of their own. What makes that sound is what makes the nodes themselves safe to read
//! (see `table.rs`): a reader only resolves a handle it loaded, under its reclamation
//! guard, from a link it reached from a bucket, so the node is live or retired after the
//! guard began. A slab node's region stays mapped until all its blocks were freed, and a
//! node of its own gives its index back only when it is freed (`Slab::free`), not when it
//! is unlinked. And an own node's entry was stored before the node was published by the
//! release store of the link the reader acquired.

use std::num::NonZeroU32;
use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use super::arena::Arena;
use super::{GRAIN, REGION_BYTES};
use crate::sync::AtomicPtr;

/// The first handle of a node with an allocation of its own: a quarter of the names go to
/// such nodes (`OWN + index`), three quarters to slab blocks.
const OWN: u32 = 3 << 30;

/// How many nodes of their own can be named at once: 2^30. Live entries are fewer (a
/// shard holds at most `MAX_SLOTS`, below 2^30), and the slab places every node of up to
/// 4 KiB until it holds 12 GiB, that is at least three million nodes, which leaves as
/// many names for own nodes that were retired and wait for their free.
const OWN_NAMES: u32 = u32::MAX - OWN + 1;

/// The most regions whose blocks handles can name (12 GiB of slab memory in one shard):
/// a slab node's handle is below [`OWN`].
pub(crate) const MAX_REGIONS: usize = (OWN as usize * GRAIN) / REGION_BYTES;

/// The regions a directory reserves room for. Under loom, a few: past them the slab's
/// nodes get allocations of their own, which the models then cover too.
const ARENA_REGIONS: usize = if cfg!(engine_loom) { 2 } else { MAX_REGIONS };

/// Segments of the table of nodes with an allocation of their own: segment `s` holds
/// indices `2^s - 1` to `2^(s+1) - 2`, so 31 of them hold every index below 2^30
/// ([`OWN_NAMES`]).
const OWN_SEGMENTS: usize = 31;

/// A node's name, valid while the node is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Handle(NonZeroU32);

impl Handle {
    fn new(bits: u32) -> Handle {
        Handle(NonZeroU32::new(bits).expect("no node is named 0"))
    }

    /// The handle as a link word keeps it; never 0, which is "no node".
    #[inline(always)]
    pub(crate) fn bits(self) -> u32 {
        self.0.get()
    }

    /// The handle a link word keeps; `None` for 0, "no node".
    #[inline(always)]
    pub(crate) fn from_bits(bits: u32) -> Option<Handle> {
        NonZeroU32::new(bits).map(Handle)
    }
}

/// Where handles point: the slab's arena, and the nodes with allocations of their own.
/// Shared by the table's writer, which changes it (through the slab), and its readers.
pub(crate) struct Directory {
    arena: Arena,
    /// The nodes with an allocation of their own, by index, in segments that are made as
    /// the indices reach them and kept until the directory drops; null where vacant.
    own: [AtomicPtr<AtomicPtr<u8>>; OWN_SEGMENTS],
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            arena: Arena::reserve(ARENA_REGIONS),
            own: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
        }
    }
}

/// The segment of the own-node table that holds `index`, and the index within it.
fn own_place(index: u32) -> (usize, usize) {
    let segment = (index + 1).ilog2();
    (segment as usize, (index + 1 - (1 << segment)) as usize)
}

impl Directory {
    /// The address of the node `handle` names.
    ///
    /// The node must be live: linked, just allocated, or reached by a reader under its
    /// guard (see the module's doc).
    #[inline(always)]
    pub(crate) fn resolve(&self, handle: Handle) -> NonNull<u8> {
        let bits = handle.bits();
        if bits >= OWN {
            return self.own_node(bits - OWN);
        }
        // SAFETY: the handle was made by `name_block` for a live block at this offset in
        // the arena, below OWN * GRAIN, which is within the reservation (MAX_REGIONS);
        // the base carries the reservation's provenance, so the result does too.
        unsafe { self.arena.base().add(bits as usize * GRAIN) }
    }

    #[cold]
    fn own_node(&self, index: u32) -> NonNull<u8> {
        let (segment, at) = own_place(index);
        let segment = self.own[segment].load(Acquire);
        assert!(!segment.is_null(), "a named node's segment exists");
        // SAFETY: a segment of `2^s` entries, made by `set_own` and kept until drop; `at`
        // is below its length by `own_place`.
        let entry = unsafe { &*segment.add(at) };
        NonNull::new(entry.load(Acquire)).expect("a named node is listed")
    }

    /// Whether the block at `at` is a slab block (in the arena) rather than an allocation
    /// of its own.
    pub(super) fn in_arena(&self, at: NonNull<u8>) -> bool {
        self.arena.contains(at)
    }

    /// How many regions the arena has room for.
    pub(super) fn regions(&self) -> usize {
        self.arena.regions()
    }

    /// Maps region `index` of the arena (see `Arena::map`); returns its base.
    pub(super) fn map_region(&self, index: usize, small: bool) -> NonNull<u8> {
        self.arena.map(index, small)
    }

    /// Gives region `index`'s memory back.
    ///
    /// # Safety
    /// As for `Arena::unmap`: none of the region's blocks is live.
    pub(super) unsafe fn unmap_region(&self, index: usize) {
        // SAFETY: forwarded contract.
        unsafe { self.arena.unmap(index) }
    }

    /// The name of the slab block at `block`, in the arena. Never 0 ("no node"): a chunk
    /// starts with its header, so no block is at the arena's base.
    pub(super) fn name_block(&self, block: NonNull<u8>) -> Handle {
        let offset = (block.as_ptr() as usize - self.arena.base().as_ptr() as usize) / GRAIN;
        debug_assert!(offset < OWN as usize);
        Handle::new(offset as u32)
    }

    /// Lists `node`, an allocation of its own, at `index` (one the slab does not use for
    /// another live node), and names it. Only the writer calls it.
    pub(super) fn name_own(&self, index: u32, node: NonNull<u8>) -> Handle {
        assert!(
            index < OWN_NAMES,
            "fewer than 2^30 nodes of their own (OWN_NAMES)"
        );
        self.own_entry(index).store(node.as_ptr(), Release);
        Handle::new(OWN + index)
    }

    /// Unlists the node of its own at `index`, which was freed. Only the writer calls it.
    pub(super) fn forget_own(&self, index: u32) {
        self.own_entry(index).store(ptr::null_mut(), Relaxed);
    }

    /// The entry for own-node `index`, making its segment if it has none yet (only the
    /// writer gets here, so no two threads make one).
    fn own_entry(&self, index: u32) -> &AtomicPtr<u8> {
        let (segment, at) = own_place(index);
        let mut entries = self.own[segment].load(Acquire);
        if entries.is_null() {
            let made: Box<[AtomicPtr<u8>]> = (0..1usize << segment)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect();
            entries = Box::into_raw(made).cast::<AtomicPtr<u8>>();
            self.own[segment].store(entries, Release);
        }
        // SAFETY: as in `own_node`.
        unsafe { &*entries.add(at) }
    }
}

impl Drop for Directory {
    fn drop(&mut self) {
        for (segment, entries) in self.own.iter_mut().enumerate() {
            let entries = entries.load(Relaxed);
            if !entries.is_null() {
                // SAFETY: made in `own_entry` as a boxed slice of `2^segment` entries, and
                // dropped once, here.
                drop(unsafe {
                    Box::from_raw(ptr::slice_from_raw_parts_mut(entries, 1 << segment))
                });
            }
        }
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests {
    use super::own_place;

    #[test]
    fn own_indices_fill_segments_of_doubling_length_in_order() {
        assert_eq!(own_place(0), (0, 0));
        assert_eq!(own_place(1), (1, 0));
        assert_eq!(own_place(2), (1, 1));
        assert_eq!(own_place(3), (2, 0));
        assert_eq!(own_place(6), (2, 3));
        assert_eq!(own_place(7), (3, 0));
        let last = super::OWN_NAMES - 1;
        assert_eq!(own_place(last - 1), (29, (1 << 29) - 1));
        assert_eq!(own_place(last), (30, 0));
        assert!(own_place(last).0 < super::OWN_SEGMENTS);
    }
}
