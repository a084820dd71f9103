//! The address space a slab's regions live in, reserved whole when the slab is made, so
//! that a region's place never changes: a block's name (`handles`) is then its offset from
//! one base, and resolving it is an add, with no table to load on a lookup's path.
//!
//! The reservation is inaccessible address space (`PROT_NONE`, and on Linux
//! `MAP_NORESERVE`): it costs no memory and no commit charge, only a range of virtual
//! addresses (12 GiB a shard at most, against the 128 TiB of a 47-bit user space). A
//! region is mapped over its place when the slab needs it, in small pages
//! (`MADV_NOHUGEPAGE`, even where THP is `always`): a region being filled costs the pages
//! its chunks touched. A full region can then be made one transparent huge page
//! ([`Arena::request_huge_page`], off the writer's thread: `collapse.rs`), so that a
//! lookup's random access into the nodes needs one TLB entry per 2 MiB rather than per
//! 4 KiB. A region given back is mapped inaccessible again, which frees its memory and
//! keeps its place.
//!
//! The reservation itself is shared ([`Reservation`]) only so that a request to collapse a
//! region can hold it weakly: it is unmapped when the slab's arena is dropped, and never
//! advised after.
//!
//! Unix only (the service runs on Linux): reserving address space without memory is what
//! the design rests on, and the global allocator cannot do it.

#[cfg(not(unix))]
compile_error!("the engine's slab reserves its address space with mmap: Unix only");

use std::ptr::{self, NonNull};
use std::sync::Arc;

use super::REGION_BYTES;

#[cfg(target_os = "linux")]
const NO_RESERVE: libc::c_int = libc::MAP_NORESERVE;
#[cfg(not(target_os = "linux"))]
const NO_RESERVE: libc::c_int = 0;

/// A reservation of room for a number of regions, aligned to REGION_BYTES.
pub(super) struct Arena {
    base: NonNull<u8>,
    regions: usize,
    /// Held for the reservation's lifetime; read only to make collapse requests.
    #[cfg_attr(any(engine_loom, not(target_os = "linux")), allow(dead_code))]
    reservation: Arc<Reservation>,
}

// SAFETY: the arena is address space the owning slab's writer maps and unmaps; the base
// is only an address, and its mappings are reached through the slab's blocks, whose own
// rules govern access.
unsafe impl Send for Arena {}
// SAFETY: as for `Send`; `&Arena` only reads the base or asks the kernel to change
// mappings, which only the slab's one writer does.
unsafe impl Sync for Arena {}

/// The reserved range, unmapped when the last holder drops it: the arena, or a request
/// to collapse one of its regions that is being served (`collapse.rs`).
pub(super) struct Reservation {
    start: usize,
    bytes: usize,
}

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
            reservation: Arc::new(Reservation {
                start: base as usize,
                bytes,
            }),
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

    /// Maps region `index` (zeroed, readable and writable), in small pages; returns its
    /// base.
    pub(super) fn map(&self, index: usize) -> NonNull<u8> {
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
        // Small pages even where THP is `always`: a huge page would be resident whole
        // from the region's first touch.
        #[cfg(target_os = "linux")]
        // SAFETY: madvise only changes how the kernel backs the region's pages, never
        // their contents; a failure leaves them as they were.
        unsafe {
            libc::madvise(place, REGION_BYTES, libc::MADV_NOHUGEPAGE)
        };
        NonNull::new(place.cast()).expect("inside the arena")
    }

    /// Asks for region `index`, mapped and full, to be made one huge page, off this
    /// thread (`collapse.rs`); where that is not built (loom, other systems), nothing.
    pub(super) fn request_huge_page(&self, index: usize) {
        assert!(index < self.regions, "a region inside the arena");
        #[cfg(all(target_os = "linux", not(engine_loom)))]
        super::collapse::request(super::collapse::Request {
            reservation: Arc::downgrade(&self.reservation),
            offset: index * REGION_BYTES,
        });
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

/// Attempts at a collapse that meets contention (`EAGAIN`), a millisecond apart.
#[cfg(all(target_os = "linux", not(engine_loom)))]
const COLLAPSE_TRIES: usize = 5;

impl Reservation {
    /// The region at `offset`, as a pointer for the kernel's calls.
    #[cfg(all(target_os = "linux", not(engine_loom)))]
    fn region(&self, offset: usize) -> *mut libc::c_void {
        debug_assert!(offset + REGION_BYTES <= self.bytes);
        (self.start + offset) as *mut libc::c_void
    }

    /// Makes the region at `offset` one huge page if the kernel can (`MADV_COLLAPSE`), and
    /// in any case lets khugepaged collapse it later (`MADV_HUGEPAGE`).
    #[cfg(all(target_os = "linux", not(engine_loom)))]
    pub(super) fn collapse(&self, offset: usize) {
        self.advise_huge(offset);
        let collapse = || {
            // SAFETY: the region lies inside the reservation, which `self` keeps mapped (or
            // reserved); collapsing copies its pages into a huge page and never changes
            // what they hold; where the region is not mapped or not eligible the call
            // fails and nothing changes.
            unsafe { libc::madvise(self.region(offset), REGION_BYTES, libc::MADV_COLLAPSE) }
        };
        // EAGAIN is contention on a page (the writer filling the region's last chunk):
        // worth a few retries; any other failure stays in small pages, for khugepaged.
        for _ in 0..COLLAPSE_TRIES {
            if collapse() == 0
                || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Lets khugepaged make the region at `offset` one huge page.
    #[cfg(all(target_os = "linux", not(engine_loom)))]
    pub(super) fn advise_huge(&self, offset: usize) {
        // SAFETY: as in `collapse`: advice about memory inside the reservation, which
        // changes how it is backed, never what it holds.
        unsafe { libc::madvise(self.region(offset), REGION_BYTES, libc::MADV_HUGEPAGE) };
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        // SAFETY: the reservation made in `reserve`, with every region in it; its arena
        // (and so the slab and its table) is gone, and so is every request that held it,
        // so none of it is used again.
        unsafe { libc::munmap(self.start as *mut libc::c_void, self.bytes) };
    }
}
