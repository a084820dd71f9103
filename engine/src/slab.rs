//! Per-shard slab allocation for the table's nodes: blocks in size classes, carved from
//! 64 KiB chunks that hold nothing else, carved in turn from 2 MiB regions.
//!
//! One `malloc` per entry cost the service about 75 bytes an entry beyond what it asked
//! for (BENCHMARKS.md, "Memory per entry"): the allocator's header and 16-byte rounding,
//! and fragmentation where nodes that live for hours were interleaved with a request's
//! short-lived buffers in the same arena. Here a node's block is its size rounded up to 4
//! bytes (up to 512; above that, eight classes per doubling, at most 12.5 % over), with no
//! header, in chunks that only nodes of one class share. A chunk whose blocks are all free
//! again can serve any class, and a region whose chunks are all free goes back to the
//! system, so memory follows the entries when their number or mix of sizes changes.
//! (Chunks come from regions because the allocator serves each 64 KiB-aligned request
//! with a remainder it cannot use: 26 bytes an entry at a million entries.) Regions are
//! mapped at fixed places in address space the slab reserves when it is made
//! (`arena.rs`), which is what lets a block's 32-bit name be its offset. Nodes larger
//! than [`LARGEST_BLOCK`] are rare and big enough that a `malloc`'s header does not
//! matter; they get one of their own. So does any node once a shard holds as many regions
//! as handles can name (12 GiB of them), charged as if it had a block: past that point an
//! entry costs the allocator's header and rounding more than it is charged.
//!
//! A chunk serves one size class until all its blocks are free again. When the sizes
//! written change, evictions free blocks scattered over the old sizes' chunks, and the
//! new sizes would take fresh memory while those chunks stay part-used. So once the
//! chunks held exceed what their blocks in use need by a sixteenth ([`Slab::fragmented`]),
//! the slab names a part-used chunk whose class has room for its live blocks elsewhere
//! ([`Slab::evacuate`]): nothing is allocated in it again, and the shard's writer moves
//! its live nodes into that room a few per insert (`ShardWriter::move_some`), so that it
//! empties and serves any class.
//!
//! Blocks are handed out and freed by the table's one writer: the reclaimer frees on the
//! writer's thread, once no reader can still hold a block (`reclaim.rs`), so a freed block
//! goes straight back to its chunk, which a free finds from the block's address alone
//! (each chunk starts with a header naming it).
//!
//! Every block the slab gives out also gets a 32-bit name (`handles`), which the table's
//! links and the writer's own records keep instead of its 8-byte address.
//!
//! Free blocks are listed beside the memory, never inside it (a chunk's free blocks are
//! a stack of their offsets), so nothing reads or writes a free block but its next node:
//! no link to trust in memory a reader might once have seen.
//!
//! Written here rather than taken from a crate: the allocator crates replace the global
//! allocator (all of the process's allocations) and still serve every size from shared
//! arenas; what an entry costs is the product, so its layout is ours.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

mod arena;
mod handles;

use handles::MAX_REGIONS;
pub(crate) use handles::{Directory, Handle};

/// Bytes per chunk; chunks are aligned to their size, so a block's chunk is its address
/// rounded down.
const CHUNK_BYTES: usize = 64 * 1024;
/// The largest block the slab serves; bigger nodes get an allocation of their own.
pub(crate) const LARGEST_BLOCK: usize = 4096;
/// What every block's size and offset is a multiple of: a node needs 4 (its header's
/// widest fields are 32 bits). Steps of 4 rather than 8 halve what rounding wastes
/// (about 2 bytes an entry). A handle names blocks in these units, so three quarters of
/// the 32-bit names (the rest name nodes of their own, `handles.rs`) name 12 GiB of slab
/// memory in a shard. Under loom a node's header carries loom's access tracking, which
/// is aligned to 8, so blocks step by 8 there.
pub(crate) const GRAIN: usize = if cfg!(engine_loom) { 8 } else { 4 };
/// Blocks up to this size step by [`GRAIN`].
const FINE_LIMIT: usize = 512;
/// Block sizes step by [`GRAIN`] up to 512, then by an eighth of the power of two below.
const CLASSES: usize = FINE_LIMIT / GRAIN + 3 * 8;
/// Where a chunk's first block starts: past its header, aligned for any node.
const FIRST_BLOCK: usize = std::mem::size_of::<ChunkHeader>().next_multiple_of(GRAIN);
/// Chunks per region.
const REGION_CHUNKS: usize = 32;
/// A chunk that is not on its class's partial list.
const NOT_PARTIAL: u32 = u32::MAX;
/// A chunk whose blocks in use are being moved out ([`Slab::evacuate`]): off its class's
/// partial list for good, so that nothing is allocated in it again and it is given back
/// once its last block is freed.
const EVACUATING: u32 = u32::MAX - 1;
/// Chunks held beyond what the live blocks fill before the slab counts as fragmented:
/// each class has a chunk being filled, and a few part-used chunks are normal. (The
/// engine's own tests allow 2, so that shards of a few hundred KiB, which a property
/// test can fill hundreds of times, fragment and run the mover.)
const SLACK_CHUNKS: usize = if cfg!(test) { 2 } else { 16 };
/// A chunk whose blocks in use are at most this share of its room is chosen as soon as a
/// look finds it (with room for them elsewhere in its class), which keeps a look short
/// where a shift in sizes left many sparse chunks.
const EVACUATE_AT_ONCE: f64 = 0.25;

/// The block size class for `bytes` (at most [`LARGEST_BLOCK`]), and its block size.
fn class_of(bytes: usize) -> (usize, usize) {
    debug_assert!(bytes > 0 && bytes <= LARGEST_BLOCK);
    if bytes <= FINE_LIMIT {
        let block = bytes.div_ceil(GRAIN) * GRAIN;
        return (block / GRAIN - 1, block);
    }
    // The power of two below `bytes`, and an eighth of it as the step.
    let power = usize::BITS - 1 - (bytes - 1).leading_zeros();
    let step = 1usize << (power - 3);
    let block = bytes.div_ceil(step) * step;
    let doublings = (power - FINE_LIMIT.trailing_zeros()) as usize;
    let index = FINE_LIMIT / GRAIN + doublings * 8 + (block - (1 << power)) / step - 1;
    (index, block)
}

/// The block size of class `class` (the inverse of [`class_of`]).
fn class_block(class: usize) -> usize {
    if class < FINE_LIMIT / GRAIN {
        return (class + 1) * GRAIN;
    }
    let above = class - FINE_LIMIT / GRAIN;
    let power = FINE_LIMIT << (above / 8);
    power + (above % 8 + 1) * (power / 8)
}

/// The bytes a node of `bytes` takes: its slab block, or its own allocation with its
/// [`OwnPrefix`] and the allocator's header and rounding.
pub(crate) fn footprint(bytes: usize) -> usize {
    if bytes <= LARGEST_BLOCK {
        class_of(bytes).1
    } else {
        (OWN_PREFIX + bytes).div_ceil(16) * 16 + 16
    }
}

/// The start of every chunk, so that a free finds the chunk's record from a block's
/// address.
#[repr(C)]
struct ChunkHeader {
    /// The chunk's index in the slab's `chunks`.
    index: u32,
}

/// What an allocation of its own keeps ahead of its node, so that its free can give the
/// node's index back.
#[repr(C)]
struct OwnPrefix {
    index: u32,
}

/// Bytes ahead of the node in an allocation of its own: the prefix, keeping the node
/// 8-aligned.
const OWN_PREFIX: usize = std::mem::size_of::<OwnPrefix>().next_multiple_of(8);

/// The writer's own record of a chunk.
struct Chunk {
    base: NonNull<u8>,
    /// Where it lies: its region's index and its position there.
    region: u32,
    position: u8,
    class: u8,
    /// Free blocks of this chunk, by offset in units of [`GRAIN`].
    free: Vec<u16>,
    /// Offset of the first block never handed out.
    bump: u32,
    live: u32,
    /// The chunk's position in its class's partial list, or [`NOT_PARTIAL`], or
    /// [`EVACUATING`].
    partial: u32,
}

#[derive(Default)]
struct Class {
    /// The chunk allocations come from first.
    current: Option<u32>,
    /// Other chunks with free blocks.
    partial: Vec<u32>,
}

/// 2 MiB of chunks, allocated at once.
struct Region {
    base: NonNull<u8>,
    /// Chunks not in use, one bit each.
    spare: u32,
}

/// The writer's side of a slab: every chunk and which have room.
///
/// Not `Sync` and not shared: the table keeps it for its one writer (`table.rs`).
pub(crate) struct Slab {
    classes: Vec<Class>,
    chunks: Vec<Option<Chunk>>,
    /// Vacant indices in `chunks`.
    vacant: Vec<u32>,
    regions: Vec<Option<Region>>,
    /// Regions that may have a spare chunk (checked when taken).
    with_spare: Vec<u32>,
    /// Whether regions are advised for huge pages at all.
    huge_pages: bool,
    /// Whether the first region gets huge pages too. A huge page is resident whole once
    /// touched, so a slab whose table is too small to fill a region with typical entries
    /// leaves its first region in small pages: a small shard costs the chunks it uses,
    /// not 2 MiB.
    huge_from_first: bool,
    /// The most regions the slab holds at once: as many as handles can name, or its
    /// directory's arena has room for if that is fewer.
    most_regions: usize,
    /// Bytes of the blocks in use in chunks (live nodes, and retired ones not yet freed).
    used_bytes: usize,
    /// Indices of nodes of their own that were freed, to name new ones with.
    own_vacant: Vec<u32>,
    /// The first own-node index never used.
    own_fresh: u32,
}

/// What a node is taken to need when guessing whether a table fills a region: a short
/// key and a value of about 100 bytes.
const TYPICAL_NODE_BYTES: usize = 128;

// SAFETY: the chunks' memory is owned by the slab; the raw pointers in it are into that
// memory, which moves with the slab between threads as a `Vec<u8>` would.
unsafe impl Send for Slab {}

/// Bytes per region: one huge page.
const REGION_BYTES: usize = CHUNK_BYTES * REGION_CHUNKS;

/// A block the slab gave out: where it is and its name. (It is an allocation of its own,
/// rather than a slab block, when it is outside the arena: `Directory::in_arena`.)
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub at: NonNull<u8>,
    pub handle: Handle,
}

/// The allocation of a node of its own of `bytes`: its prefix and the node.
fn own_layout(bytes: usize) -> Layout {
    Layout::from_size_align(OWN_PREFIX + bytes, 8).expect("a node fits in memory")
}

impl Slab {
    /// A slab for a table of up to about `entries` entries, in huge pages if
    /// `huge_pages`.
    pub(crate) fn new(entries: usize, huge_pages: bool) -> Self {
        Self {
            huge_pages,
            huge_from_first: entries.saturating_mul(TYPICAL_NODE_BYTES) >= REGION_BYTES,
            classes: (0..CLASSES).map(|_| Class::default()).collect(),
            chunks: Vec::new(),
            vacant: Vec::new(),
            regions: Vec::new(),
            with_spare: Vec::new(),
            most_regions: MAX_REGIONS,
            used_bytes: 0,
            own_vacant: Vec::new(),
            own_fresh: 0,
        }
    }

    /// A block of at least `bytes` bytes (uninitialized), aligned to [`GRAIN`], and its
    /// name in `directory` (which the slab keeps up to date as its regions come and go,
    /// so every call passes the same one).
    pub(crate) fn allocate(&mut self, bytes: usize, directory: &Directory) -> Block {
        if bytes <= LARGEST_BLOCK {
            if let Some(block) = self.allocate_in_chunk(bytes, directory) {
                return block;
            }
        }
        // Larger than any block, or past the regions the directory can name.
        let layout = own_layout(bytes);
        // SAFETY: the layout is not zero-sized: it has the prefix.
        let raw = unsafe { alloc::alloc(layout) };
        let start = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        let index = self.own_vacant.pop().unwrap_or_else(|| {
            self.own_fresh += 1;
            self.own_fresh - 1
        });
        // SAFETY: a fresh allocation of OWN_PREFIX + `bytes`, 8-aligned: the prefix fits at
        // its start, and the node starts OWN_PREFIX in, inside it, with its provenance.
        let at = unsafe {
            start
                .cast::<OwnPrefix>()
                .as_ptr()
                .write(OwnPrefix { index });
            start.add(OWN_PREFIX)
        };
        Block {
            at,
            handle: directory.name_own(index, at),
        }
    }

    /// A block of a chunk of `bytes`' class; `None` if that needs a region and the slab
    /// has as many as handles can name.
    fn allocate_in_chunk(&mut self, bytes: usize, directory: &Directory) -> Option<Block> {
        let (class, block) = class_of(bytes);
        loop {
            let index = match self.classes[class].current {
                Some(index) => index,
                None => {
                    let index = match self.classes[class].partial.pop() {
                        Some(index) => {
                            self.chunk_mut(index).partial = NOT_PARTIAL;
                            index
                        }
                        None => self.new_chunk(class, directory)?,
                    };
                    self.classes[class].current = Some(index);
                    index
                }
            };
            let chunk = self.chunk_mut(index);
            let at = if let Some(offset) = chunk.free.pop() {
                // SAFETY: a free block's offset lies inside its chunk's allocation, whose
                // provenance `base` carries.
                unsafe { chunk.base.add(usize::from(offset) * GRAIN) }
            } else if chunk.bump as usize + block <= CHUNK_BYTES {
                // SAFETY: `bump + block` is within the chunk's allocation.
                let fresh = unsafe { chunk.base.add(chunk.bump as usize) };
                chunk.bump += block as u32;
                fresh
            } else {
                // Full: it returns to the partial list when one of its blocks is freed.
                self.classes[class].current = None;
                continue;
            };
            chunk.live += 1;
            self.used_bytes += block;
            return Some(Block {
                at,
                handle: directory.name_block(at),
            });
        }
    }

    /// Gives back a block from [`Slab::allocate`] of a node of `bytes` bytes. (Whether it
    /// is an allocation of its own is where it is: in the arena or not.)
    ///
    /// # Safety
    /// `block` came from this slab's `allocate(bytes, directory)`, with the same `bytes`,
    /// and nobody reaches it any more; it is freed once.
    pub(crate) unsafe fn free(&mut self, block: NonNull<u8>, bytes: usize, directory: &Directory) {
        if !directory.in_arena(block) {
            // SAFETY: slab blocks are carved from regions inside the arena's reservation,
            // which the global allocator never hands out (the arena holds that address
            // space mapped), so a block outside it is an allocation of its own: it starts
            // OWN_PREFIX into an allocation with this layout, which starts with the prefix
            // `allocate` wrote.
            let index = unsafe {
                let start = block.as_ptr().sub(OWN_PREFIX);
                let OwnPrefix { index } = start.cast::<OwnPrefix>().read();
                alloc::dealloc(start, own_layout(bytes));
                index
            };
            // The node is gone: its index may name another one now.
            directory.forget_own(index);
            self.own_vacant.push(index);
            return;
        }
        let base = block.as_ptr() as usize & !(CHUNK_BYTES - 1);
        // SAFETY: a slab block lies in a chunk aligned to CHUNK_BYTES, which starts with
        // its header; the chunk lives while it has a live block, and this one is live
        // until it is released below. The address is derived from `block`, whose
        // provenance covers the whole chunk (it was carved from the chunk's region).
        let index = unsafe {
            (*block
                .as_ptr()
                .sub(block.as_ptr() as usize - base)
                .cast::<ChunkHeader>())
            .index
        };
        self.release(index, block, directory);
    }

    fn release(&mut self, index: u32, block: NonNull<u8>, directory: &Directory) {
        let chunk = self.chunk_mut(index);
        let offset = (block.as_ptr() as usize - chunk.base.as_ptr() as usize) / GRAIN;
        chunk.free.push(offset as u16);
        chunk.live -= 1;
        let class = chunk.class as usize;
        let (live, partial) = (chunk.live, chunk.partial);
        self.used_bytes -= class_block(class);
        if self.classes[class].current == Some(index) {
            return;
        }
        if partial == EVACUATING {
            if live == 0 {
                self.drop_chunk(index, directory);
            }
        } else if live == 0 {
            if partial != NOT_PARTIAL {
                self.unlist_partial(class, partial);
            }
            self.drop_chunk(index, directory);
        } else if partial == NOT_PARTIAL {
            let list = &mut self.classes[class].partial;
            let position = list.len() as u32;
            list.push(index);
            self.chunk_mut(index).partial = position;
        }
    }

    fn unlist_partial(&mut self, class: usize, position: u32) {
        let list = &mut self.classes[class].partial;
        list.swap_remove(position as usize);
        if let Some(&moved) = list.get(position as usize) {
            self.chunk_mut(moved).partial = position;
        }
    }

    fn new_chunk(&mut self, class: usize, directory: &Directory) -> Option<u32> {
        let (region, position) = self.spare_chunk(directory)?;
        let region_base = self.regions[region as usize]
            .as_ref()
            .expect("a region with a spare chunk exists")
            .base;
        // SAFETY: `position` is below REGION_CHUNKS, so the chunk is inside the region's
        // allocation; its provenance is the region's.
        let base = unsafe { region_base.add(position * CHUNK_BYTES) };
        let index = match self.vacant.pop() {
            Some(index) => index,
            None => {
                self.chunks.push(None);
                u32::try_from(self.chunks.len() - 1).expect("fewer than 2^32 chunks")
            }
        };
        // SAFETY: a fresh allocation, aligned to CHUNK_BYTES and larger than a header.
        unsafe {
            base.cast::<ChunkHeader>()
                .as_ptr()
                .write(ChunkHeader { index })
        };
        self.chunks[index as usize] = Some(Chunk {
            base,
            region,
            position: position as u8,
            class: class as u8,
            free: Vec::new(),
            bump: FIRST_BLOCK as u32,
            live: 0,
            partial: NOT_PARTIAL,
        });
        Some(index)
    }

    /// A chunk no class uses, as (region, position in it): from a region that has one, or
    /// from a new region; `None` if that would be one more than handles can name.
    fn spare_chunk(&mut self, directory: &Directory) -> Option<(u32, usize)> {
        while let Some(&region) = self.with_spare.last() {
            match &mut self.regions[region as usize] {
                Some(r) if r.spare != 0 => {
                    let position = r.spare.trailing_zeros() as usize;
                    r.spare &= !(1 << position);
                    if r.spare == 0 {
                        self.with_spare.pop();
                    }
                    return Some((region, position));
                }
                _ => {
                    self.with_spare.pop();
                }
            }
        }
        let vacant = self.regions.iter().position(Option::is_none);
        if vacant.is_none() && self.regions.len() >= self.most_regions.min(directory.regions()) {
            return None;
        }
        let first = self.regions.iter().all(Option::is_none);
        let small = !self.huge_pages || (first && !self.huge_from_first);
        let region = match vacant {
            Some(vacant) => vacant,
            None => {
                self.regions.push(None);
                self.regions.len() - 1
            }
        };
        let base = directory.map_region(region, small);
        // Every chunk but the first, which is taken now.
        let spare = (u32::MAX >> (32 - REGION_CHUNKS)) & !1;
        self.regions[region] = Some(Region { base, spare });
        let region = u32::try_from(region).expect("fewer than 2^32 regions");
        self.with_spare.push(region);
        Some((region, 0))
    }

    fn drop_chunk(&mut self, index: u32, directory: &Directory) {
        let chunk = self.chunks[index as usize]
            .take()
            .expect("a listed chunk exists");
        self.vacant.push(index);
        let (region, position) = (chunk.region as usize, chunk.position);
        let r = self.regions[region]
            .as_mut()
            .expect("a chunk's region exists");
        if r.spare == 0 {
            self.with_spare.push(region as u32);
        }
        r.spare |= 1 << position;
        if r.spare == u32::MAX >> (32 - REGION_CHUNKS) {
            // SAFETY: mapped in `spare_chunk`; none of its chunks is in use, so none of its
            // blocks is live. (Its stale `with_spare` entry is skipped when taken.)
            unsafe { directory.unmap_region(region) };
            self.regions[region] = None;
        }
    }

    /// Whether the chunks held take more than the blocks in use need by a sixteenth and
    /// [`SLACK_CHUNKS`]: blocks of sizes no longer written hold part-used chunks that
    /// other sizes cannot use, which [`Slab::evacuate`] is for. (A quarter, before the
    /// mover emptied only chunks its class had room for: memory under a 100 MiB bound
    /// went from 1.34 to 1.19 times the bound after a shift in value sizes, for 2 %
    /// more time writing; BENCHMARKS.md.)
    pub(crate) fn fragmented(&self) -> bool {
        let held = (self.chunks.len() - self.vacant.len()) * (CHUNK_BYTES - FIRST_BLOCK);
        held > (self.used_bytes + self.used_bytes / 16) + SLACK_CHUNKS * CHUNK_BYTES
    }

    /// Chooses a chunk to empty: of the classes whose other chunks have room for all the
    /// blocks in use in their emptiest part-used chunk, the one whose emptiest chunk has
    /// the fewest (or the first found at most [`EVACUATE_AT_ONCE`] used). Emptying it
    /// then frees a chunk for any size without taking one: its nodes move into blocks
    /// their class already holds free. (Evictions scattered over a class's chunks, as
    /// when its size is no longer written, leave every chunk part-used, none empty;
    /// while a class has no such room, moving its nodes would only take a fresh chunk.)
    /// Takes the chunk off its list for good, so that no block is allocated in it again,
    /// and returns its index and the offsets (in units of [`GRAIN`]) of the blocks in
    /// use in it. The caller moves the live nodes among them elsewhere
    /// ([`Slab::evacuee`]), and the chunk is given back once the last is freed. Blocks in
    /// use may also be nodes retired and not yet freed.
    pub(crate) fn evacuate(&mut self) -> Option<(u32, Vec<u16>)> {
        // (class, position in its partial list, chunk index, blocks in use)
        let mut chosen: Option<(usize, usize, u32, usize)> = None;
        for (class, c) in self.classes.iter().enumerate() {
            let room_per_chunk = (CHUNK_BYTES - FIRST_BLOCK) / class_block(class);
            let mut room = 0;
            let mut emptiest: Option<(usize, u32, usize)> = None;
            for (position, &index) in c.partial.iter().enumerate() {
                let live = self.chunk(index).live as usize;
                room += room_per_chunk - live;
                if emptiest.is_none_or(|(_, _, least)| live < least) {
                    emptiest = Some((position, index, live));
                }
            }
            let Some((position, index, live)) = emptiest else {
                continue;
            };
            if let Some(current) = c.current {
                room += room_per_chunk - self.chunk(current).live as usize;
            }
            // The room outside the chunk itself has to take its blocks in use.
            if live > room - (room_per_chunk - live) {
                continue;
            }
            if chosen.is_none_or(|(_, _, _, fewest)| live < fewest) {
                chosen = Some((class, position, index, live));
                if live as f64 <= EVACUATE_AT_ONCE * room_per_chunk as f64 {
                    break;
                }
            }
        }
        let (class, position, index, _) = chosen?;
        self.unlist_partial(class, position as u32);
        let chunk = self.chunk_mut(index);
        chunk.partial = EVACUATING;
        let mut free = chunk.free.clone();
        free.sort_unstable();
        let in_use = (FIRST_BLOCK..chunk.bump as usize)
            .step_by(class_block(chunk.class as usize))
            .map(|at| (at / GRAIN) as u16)
            .filter(|offset| free.binary_search(offset).is_err())
            .collect();
        Some((index, in_use))
    }

    /// The block at `offset` of chunk `index`, as [`Slab::evacuate`] listed it, if it is
    /// still in use (not freed since): its memory is then a node's, live or retired.
    pub(crate) fn evacuee(&self, index: u32, offset: u16) -> Option<NonNull<u8>> {
        match self.chunks.get(index as usize) {
            // A chunk given back and its index reused is not evacuating: one evacuation
            // runs at a time.
            Some(Some(chunk)) if chunk.partial == EVACUATING && !chunk.free.contains(&offset) => {
                // SAFETY: `evacuate` listed the offset below the chunk's bump, inside its
                // allocation, whose provenance `base` carries.
                Some(unsafe { chunk.base.add(usize::from(offset) * GRAIN) })
            }
            _ => None,
        }
    }

    fn chunk(&self, index: u32) -> &Chunk {
        self.chunks[index as usize]
            .as_ref()
            .expect("a listed chunk exists")
    }

    fn chunk_mut(&mut self, index: u32) -> &mut Chunk {
        self.chunks[index as usize]
            .as_mut()
            .expect("a listed chunk exists")
    }

    /// Bytes of chunks held and bytes of the blocks in use in them, for tests.
    #[cfg(all(test, not(engine_loom)))]
    pub(crate) fn chunks_and_used_bytes(&self) -> (usize, usize) {
        (self.chunk_bytes(), self.used_bytes)
    }

    /// Bytes of chunks in use, for tests.
    #[cfg(all(test, not(engine_loom)))]
    fn chunk_bytes(&self) -> usize {
        self.chunks.iter().flatten().count() * CHUNK_BYTES
    }

    /// Bytes of regions held, for tests.
    #[cfg(all(test, not(engine_loom)))]
    fn region_bytes(&self) -> usize {
        self.regions.iter().flatten().count() * REGION_CHUNKS * CHUNK_BYTES
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests;
