//! The address space a slab's regions live in, reserved whole when the slab is made, so
//! that a region's place never changes: a block's name (`handles`) is then its offset from
//! one base, and resolving it is an add, with no table to load on a lookup's path.
//!
//! The reservation is inaccessible address space (`PROT_NONE`, and on Linux
//! `MAP_NORESERVE`): it costs no memory and no commit charge, only a range of virtual
//! addresses (12 GiB a shard at most, against the 128 TiB of a 47-bit user space). A
//! region is mapped over its place when the slab needs it, advised for a transparent huge
//! page unless `small` (see `Slab::huge_from_first`): a lookup's random access into the
//! nodes then needs one TLB entry per 2 MiB rather than per 4 KiB. A fresh mapping
//! matters: memory the allocator hands back out has usually been faulted in as small pages
//! already, which advice does not change. The advice is only a hint: with THP off, or no
//! huge page free, the region is small pages and nothing else changes. A region given
//! back is mapped inaccessible again, which frees its memory and keeps its place.
//!
//! Unix only (the service runs on Linux): reserving address space without memory is what
//! the design rests on, and the global allocator cannot do it.

#[cfg(not(unix))]
compile_error!("the engine's slab reserves its address space with mmap: Unix only");

use std::ptr::{self, NonNull};

use super::REGION_BYTES;

#[cfg(target_os = "linux")]
const NO_RESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(target_os = "linux"))]
const NO_RESERVE: libc::c_int = 0;

/// A reservation of room for a number of regions, aligned to REGION_BYTES.
pub(super) struct Arena {
    base: NonNull<u8>,
    regions: usize,
}

// SAFETY: the arena is address space the owning slab's writer maps and unmaps; the base
// is only an address, and its mappings are reached through the slab's blocks, whose own
// rules govern access.
unsafe impl Send for Arena {}
// SAFETY: as for `Send`; `&Arena` only reads the base or asks the kernel to change
// mappings, which only the slab's one writer does.
unsafe impl Sync for Arena {}

fn out_of_address_space(bytes: usize) -> ! {
    std::alloc::handle_alloc_error(
        std::alloc::Layout::from_size_align(bytes, REGION_BYTES).expect("a valid region layout"),
    )
}

impl Arena {
    /// Reserves room for `regions` regions or, where the process may not have that much
    /// address space (a `ulimit -v`), for the most of half as many, a quarter... that it
    /// may have.
    pub(super) fn reserve(regions: usize) -> Arena {
        let mut regions = regions.max(1);
        loop {
            match Arena::try_reserve(regions) {
                Some(arena) => return arena,
                None if regions > 1 => regions /= 2,
                None => out_of_address_space(REGION_BYTES),
            }
        }
    }

    /// Whether `at` lies in the reservation: a slab block's address, not an allocation of
    /// its own.
    pub(super) fn contains(&self, at: NonNull<u8>) -> bool {
        (at.as_ptr() as usize).wrapping_sub(self.base.as_ptr() as usize)
            < self.regions * REGION_BYTES
    }

    /// How many regions it has room for.
    pub(super) fn regions(&self) -> usize {
        self.regions
    }

    fn try_reserve(regions: usize) -> Option<Arena> {
        let bytes = regions * REGION_BYTES;
        // REGION_BYTES more, then the unaligned ends are unmapped.
        let span = bytes + REGION_BYTES;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing
        // touches no existing memory; the result is checked before use.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                span,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | NO_RESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return None;
        }
        let start = raw as usize;
        let head = start.next_multiple_of(REGION_BYTES) - start;
        // SAFETY: `head < REGION_BYTES`, so the aligned reservation and its tail lie inside
        // the mapping of `span` bytes just made; its pointer carries the mapping's
        // provenance.
        let base = unsafe { raw.cast::<u8>().add(head) };
        // SAFETY: the head and the tail are parts of the fresh mapping that nothing uses;
        // unmapping them leaves exactly [base, base + bytes) reserved.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            let tail = span - head - bytes;
            if tail > 0 {
                libc::munmap(base.add(bytes).cast(), tail);
            }
        }
        Some(Arena {
            base: NonNull::new(base).expect("a mapping is never at address 0"),
            regions,
        })
    }

    /// Where the arena starts: the base every block's handle is an offset from.
    #[inline(always)]
    pub(super) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// The place of region `index`, which the caller must map before use.
    fn place(&self, index: usize) -> *mut libc::c_void {
        assert!(index < self.regions, "a region inside the arena");
        // SAFETY: inside the reservation, by the assertion; the pointer keeps the
        // reservation's provenance.
        unsafe { self.base.as_ptr().add(index * REGION_BYTES).cast() }
    }

    /// Maps region `index` (zeroed, readable and writable); returns its base.
    pub(super) fn map(&self, index: usize, small: bool) -> NonNull<u8> {
        let place = self.place(index);
        // SAFETY: MAP_FIXED over the arena's own reservation, at a place no live block
        // uses (the region is not mapped, or was given back with no live block): it
        // replaces only address space this arena owns.
        let mapped = unsafe {
            libc::mmap(
                place,
                REGION_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(REGION_BYTES, REGION_BYTES)
                    .expect("a valid region layout"),
            );
        }
        #[cfg(target_os = "linux")]
        if !small {
            // SAFETY: madvise only changes how the kernel backs the region's pages, never
            // their contents; a failure leaves them as they were.
            unsafe { libc::madvise(place, REGION_BYTES, libc::MADV_HUGEPAGE) };
        }
        #[cfg(not(target_os = "linux"))]
        let _ = small;
        NonNull::new(place.cast()).expect("inside the arena")
    }

    /// Gives region `index`'s memory back, keeping its place reserved.
    ///
    /// # Safety
    /// Region `index` is mapped and none of its memory is used again until it is mapped
    /// anew.
    pub(super) unsafe fn unmap(&self, index: usize) {
        let place = self.place(index);
        // SAFETY: forwarded contract; MAP_FIXED over the arena's own region, which
        // nothing uses.
        let reserved = unsafe {
            libc::mmap(
                place,
                REGION_BYTES,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | NO_RESERVE,
                -1,
                0,
            )
        };
        if reserved == libc::MAP_FAILED {
            // Still mapped, so still the arena's place, and mapping it again replaces it;
            // its pages at least go back.
            // SAFETY: forwarded contract: nothing reads the region's memory again before
            // it is mapped anew.
            unsafe { libc::madvise(place, REGION_BYTES, libc::MADV_DONTNEED) };
        }
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `reserve`, with every region in it; the slab
        // and its table are gone, so none of it is used again.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.regions * REGION_BYTES) };
    }
}
