//! Names for nodes in 32 bits, for the writer's own records of them.
//!
//! The eviction policy keeps one record per entry (`eviction::ring`), and a pointer to
//! the entry's node was half of it: 8 of its 16 bytes. A [`Handle`] names the same node
//! in 4 bytes. A node in a slab block is named by its region (the 2 MiB mapping the
//! block lies in, see `Slab`) and its offset there in 8-byte units; a node with an
//! allocation of its own (one larger than any block, or one the slab could not name
//! because it already has [`MAX_REGIONS`] regions) by its index in a table of such
//! nodes. The [`Directory`] turns a handle back into the node's address: one load of the
//! region's base, which the writer's own recent work keeps in its cache.
//!
//! Only the writer uses handles. Readers still follow full pointers (bucket, chain),
//! whose loads are the ones a lookup waits for, so a read pays nothing for this.

use std::num::NonZeroU32;
use std::ptr::NonNull;

use super::REGION_BYTES;

/// Bits of a handle that give a slab node's offset in its region, in 8-byte units.
const OFFSET_BITS: u32 = (REGION_BYTES / 8).trailing_zeros();

/// Set in the handles of nodes with an allocation of their own.
const OWN: u32 = 1 << 31;

/// The most regions whose blocks handles can name: 16 GiB of slab memory in one shard.
/// Past it the slab gives nodes allocations of their own (see `Slab::allocate`).
pub(crate) const MAX_REGIONS: usize = 1 << (31 - OFFSET_BITS);

/// A node's name, valid while the node is linked in its table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Handle(NonZeroU32);

impl Handle {
    fn new(bits: u32) -> Handle {
        Handle(NonZeroU32::new(bits).expect("no node is named 0"))
    }
}

/// Where handles point: each region's base, and the nodes with allocations of their own.
/// Kept beside the slab, by its writer, and updated by the slab as regions come and go.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    /// Each region's base, by the region's index in its slab; dangling while unmapped (no
    /// handle names a block there then, so no check is spent on it).
    regions: Vec<NonNull<u8>>,
    /// The nodes with an allocation of their own, by index; `None` where vacant.
    own: Vec<Option<NonNull<u8>>>,
    /// Vacant indices in `own`.
    vacant: Vec<u32>,
}

// SAFETY: a directory holds addresses, not access: a pointer it holds is only
// dereferenced by whoever resolves a handle, under that caller's own contract (the node
// is linked, and only the table's one writer uses the directory). It moves between
// threads with the writer, as the slab does.
unsafe impl Send for Directory {}

impl Directory {
    /// The address of the node `handle` names.
    ///
    /// The node must still be linked (or just allocated) for the address to be one: a
    /// handle outlives its node only in the writer's records, which drop it with the node.
    #[inline]
    pub(crate) fn resolve(&self, handle: Handle) -> NonNull<u8> {
        let bits = handle.0.get();
        if bits & OWN != 0 {
            return self.own[(bits & !OWN) as usize].expect("a named node is listed");
        }
        let base = self.regions[(bits >> OFFSET_BITS) as usize];
        let offset = (bits & ((1 << OFFSET_BITS) - 1)) as usize * 8;
        // SAFETY: the handle was made by `name_in_region` for a block at this offset of
        // this region, which stays mapped while the block is live; `base` is the mapping's
        // own pointer, so the result carries its provenance, and the offset is below
        // REGION_BYTES.
        unsafe { base.add(offset) }
    }

    /// Forgets the node `handle` names, which the writer is unlinking: a node with an
    /// allocation of its own gives its index back. (A slab node's name is its place, so
    /// there is nothing to forget.)
    pub(crate) fn forget(&mut self, handle: Handle) {
        let bits = handle.0.get();
        if bits & OWN != 0 {
            let index = bits & !OWN;
            self.own[index as usize] = None;
            self.vacant.push(index);
        }
    }

    /// Records that region `index` is mapped at `base`.
    pub(super) fn region_mapped(&mut self, index: usize, base: NonNull<u8>) {
        debug_assert!(index < MAX_REGIONS);
        if self.regions.len() <= index {
            self.regions.resize(index + 1, NonNull::dangling());
        }
        self.regions[index] = base;
    }

    /// Records that region `index` is unmapped.
    pub(super) fn region_unmapped(&mut self, index: usize) {
        self.regions[index] = NonNull::dangling();
    }

    /// The name of the block at `block`, in region `index` mapped at `base`.
    pub(super) fn name_in_region(index: usize, base: NonNull<u8>, block: NonNull<u8>) -> Handle {
        let offset = (block.as_ptr() as usize - base.as_ptr() as usize) / 8;
        debug_assert!(index < MAX_REGIONS && offset < 1 << OFFSET_BITS);
        Handle::new((index as u32) << OFFSET_BITS | offset as u32)
    }

    /// Names a node with an allocation of its own.
    pub(super) fn name_own(&mut self, block: NonNull<u8>) -> Handle {
        let index = match self.vacant.pop() {
            Some(index) => {
                self.own[index as usize] = Some(block);
                index
            }
            None => {
                self.own.push(Some(block));
                u32::try_from(self.own.len() - 1)
                    .ok()
                    .filter(|index| index & OWN == 0)
                    .expect("fewer than 2^31 nodes (MAX_ENTRIES)")
            }
        };
        Handle::new(OWN | index)
    }
}
