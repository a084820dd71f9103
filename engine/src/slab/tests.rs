//! The slab's own cases: size classes, reuse, regions given back, large and overflow
//! nodes with allocations of their own, and handles.

use super::*;

#[test]
fn classes_round_up_by_at_most_an_eighth() {
    let mut last = (0, 0);
    for bytes in 1..=LARGEST_BLOCK {
        let (class, block) = class_of(bytes);
        assert!(block >= bytes && block % GRAIN == 0, "{bytes} → {block}");
        assert!(class < CLASSES, "{bytes} → class {class}");
        if bytes > FINE_LIMIT {
            assert!((block - bytes) * 8 < bytes, "{bytes} → {block}");
        } else {
            assert!(block - bytes < GRAIN, "{bytes} → {block}");
        }
        assert!(class == last.0 && block == last.1 || class == last.0 + 1 || bytes == 1);
        last = (class, block);
    }
    assert_eq!(last, (CLASSES - 1, LARGEST_BLOCK));
}

#[test]
fn a_class_block_is_the_block_class_of_gives() {
    for bytes in 1..=LARGEST_BLOCK {
        let (class, block) = class_of(bytes);
        assert_eq!(class_block(class), block, "{bytes} bytes");
    }
}

#[test]
fn freed_blocks_are_reused_and_empty_chunks_returned() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let blocks: Vec<_> = (0..2_000)
        .map(|_| slab.allocate(100, &directory).at)
        .collect();
    let mut addresses: Vec<_> = blocks.iter().map(|b| b.as_ptr() as usize).collect();
    addresses.sort_unstable();
    addresses.dedup();
    assert_eq!(addresses.len(), blocks.len(), "distinct blocks");
    let block_bytes = class_of(100).1;
    assert!(addresses.windows(2).all(|w| w[1] - w[0] >= block_bytes));
    let held = slab.chunk_bytes();
    assert_eq!(
        held,
        2_000usize.div_ceil((CHUNK_BYTES - FIRST_BLOCK) / block_bytes) * CHUNK_BYTES
    );
    for block in &blocks[..1_000] {
        // SAFETY: allocated above with this size, freed once.
        unsafe { slab.free(*block, 100, &directory) };
    }
    let again: Vec<_> = (0..1_000)
        .map(|_| slab.allocate(100, &directory).at)
        .collect();
    assert_eq!(slab.chunk_bytes(), held, "reused, not grown");
    for block in blocks[1_000..].iter().chain(&again) {
        // SAFETY: as above.
        unsafe { slab.free(*block, 100, &directory) };
    }
    // A chunk is given back once its blocks come home; the current one stays.
    slab.allocate(8, &directory);
    assert_eq!(
        slab.chunk_bytes(),
        2 * CHUNK_BYTES,
        "one current chunk per class"
    );
    assert_eq!(slab.region_bytes(), REGION_CHUNKS * CHUNK_BYTES);
}

#[test]
fn a_region_whose_chunks_are_all_free_is_given_back() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let per_chunk = (CHUNK_BYTES - FIRST_BLOCK) / 512;
    let blocks: Vec<_> = (0..per_chunk * (REGION_CHUNKS + 2))
        .map(|_| slab.allocate(512, &directory).at)
        .collect();
    assert_eq!(slab.region_bytes(), 2 * REGION_CHUNKS * CHUNK_BYTES);
    for block in &blocks[..per_chunk * REGION_CHUNKS] {
        // SAFETY: allocated above with this size, freed once.
        unsafe { slab.free(*block, 512, &directory) };
    }
    slab.allocate(512, &directory);
    assert_eq!(
        slab.region_bytes(),
        REGION_CHUNKS * CHUNK_BYTES,
        "the first region went back"
    );
    // Its chunks are gone from the spare list too: new chunks come from the second
    // region and then a new one.
    let more: Vec<_> = (0..per_chunk * REGION_CHUNKS)
        .map(|_| slab.allocate(512, &directory).at)
        .collect();
    assert_eq!(slab.region_bytes(), 2 * REGION_CHUNKS * CHUNK_BYTES);
    for block in blocks[per_chunk * REGION_CHUNKS..].iter().chain(&more) {
        // SAFETY: as above.
        unsafe { slab.free(*block, 512, &directory) };
    }
}

/// A part-used chunk is chosen to be emptied only where its class holds room for its
/// blocks in use elsewhere (else moving them would take a fresh chunk), and then the
/// emptiest such chunk, with the offsets of exactly its blocks in use.
#[test]
fn a_chunk_is_emptied_only_into_room_its_class_holds() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let per_chunk = (CHUNK_BYTES - FIRST_BLOCK) / 512;
    // Three chunks, filled in order; the third stays the one being filled, and is full.
    let blocks: Vec<_> = (0..3 * per_chunk)
        .map(|_| slab.allocate(512, &directory).at)
        .collect();
    let chunk_of = |block: NonNull<u8>| block.as_ptr() as usize & !(CHUNK_BYTES - 1);
    let free = |slab: &mut Slab, blocks: &[NonNull<u8>]| {
        for block in blocks {
            // SAFETY: allocated above with this size, freed once.
            unsafe { slab.free(*block, 512, &directory) };
        }
    };
    // The first chunk 40 % used: sparse, but no other chunk of its class has room.
    free(&mut slab, &blocks[..per_chunk * 3 / 5]);
    assert!(
        slab.evacuate().is_none(),
        "no room for its blocks elsewhere"
    );
    // The second 30 % used: the first has room for its blocks, so it goes.
    let second = &blocks[per_chunk..2 * per_chunk];
    free(&mut slab, &second[..per_chunk * 7 / 10]);
    let (index, offsets) = slab.evacuate().expect("the second chunk fits in the first");
    let kept: Vec<_> = second[per_chunk * 7 / 10..].to_vec();
    assert_eq!(offsets.len(), kept.len());
    for offset in offsets {
        let block = slab.evacuee(index, offset).expect("a block in use");
        assert_eq!(chunk_of(block), chunk_of(second[0]));
        assert!(kept.contains(&block));
    }
    // Once its blocks are freed (moved), the chunk goes back.
    let held = slab.chunk_bytes();
    free(&mut slab, &kept);
    assert_eq!(slab.chunk_bytes(), held - CHUNK_BYTES);
    free(&mut slab, &blocks[per_chunk * 3 / 5..per_chunk]);
    free(&mut slab, &blocks[2 * per_chunk..]);
}

#[test]
fn large_nodes_get_their_own_allocation() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let block = slab.allocate(LARGEST_BLOCK + 1, &directory);
    assert!(!directory.in_arena(block.at));
    assert_eq!(directory.resolve(block.handle), block.at);
    assert_eq!(slab.chunk_bytes(), 0);
    // SAFETY: allocated above with this size, freed once.
    unsafe { slab.free(block.at, LARGEST_BLOCK + 1, &directory) };
    assert_eq!(footprint(LARGEST_BLOCK + 1), LARGEST_BLOCK + 32);
    assert_eq!(footprint(100), 100usize.next_multiple_of(GRAIN));
}

#[test]
fn handles_name_every_block_until_it_is_freed() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let sizes = [24, 100, 512, 513, 4096, LARGEST_BLOCK + 1, 40_000];
    let blocks: Vec<(Block, usize)> = (0..3 * REGION_CHUNKS * CHUNK_BYTES / 600)
        .map(|i| {
            let bytes = sizes[i % sizes.len()];
            (slab.allocate(bytes, &directory), bytes)
        })
        .collect();
    let handles: std::collections::HashSet<_> = blocks.iter().map(|(b, _)| b.handle).collect();
    assert_eq!(handles.len(), blocks.len(), "distinct names");
    assert!(
        slab.region_bytes() > REGION_CHUNKS * CHUNK_BYTES,
        "several regions"
    );
    for (block, bytes) in &blocks {
        assert_eq!(directory.resolve(block.handle), block.at);
        assert_eq!(!directory.in_arena(block.at), *bytes > LARGEST_BLOCK);
    }
    // Freed, the regions go back; the blocks of new ones are named afresh.
    for (block, bytes) in &blocks {
        // SAFETY: allocated above with this size, freed once.
        unsafe { slab.free(block.at, *bytes, &directory) };
    }
    let again: Vec<_> = (0..1_000).map(|_| slab.allocate(100, &directory)).collect();
    for block in &again {
        assert_eq!(directory.resolve(block.handle), block.at);
        // SAFETY: as above.
        unsafe { slab.free(block.at, 100, &directory) };
    }
}

#[test]
fn past_the_regions_handles_name_nodes_get_their_own_allocation() {
    let mut slab = Slab::new(0, false);
    slab.most_regions = 1;
    let directory = Directory::default();
    let per_region = REGION_CHUNKS * ((CHUNK_BYTES - FIRST_BLOCK) / 512);
    let blocks: Vec<_> = (0..per_region + 10)
        .map(|_| slab.allocate(512, &directory))
        .collect();
    assert_eq!(slab.region_bytes(), REGION_CHUNKS * CHUNK_BYTES);
    assert!(blocks[..per_region]
        .iter()
        .all(|b| directory.in_arena(b.at)));
    assert!(blocks[per_region..]
        .iter()
        .all(|b| !directory.in_arena(b.at)));
    for block in &blocks {
        assert_eq!(directory.resolve(block.handle), block.at);
        // SAFETY: allocated above with this size, freed once.
        unsafe { slab.free(block.at, 512, &directory) };
    }
    // Once the region's blocks are back, new nodes go to it again.
    assert!(directory.in_arena(slab.allocate(512, &directory).at));
}

#[test]
fn an_own_nodes_index_names_another_only_once_it_was_freed() {
    let mut slab = Slab::new(0, false);
    let directory = Directory::default();
    let bytes = LARGEST_BLOCK + 1;
    let first = slab.allocate(bytes, &directory);
    let second = slab.allocate(bytes, &directory);
    assert_ne!(first.handle, second.handle);
    // SAFETY: allocated above with this size, freed once.
    unsafe { slab.free(first.at, bytes, &directory) };
    // Freed (as the reclaimer does once no reader holds it), its index comes back.
    let third = slab.allocate(bytes, &directory);
    assert_eq!(third.handle, first.handle);
    assert_eq!(directory.resolve(third.handle), third.at);
    assert_eq!(directory.resolve(second.handle), second.at);
    // SAFETY: as above.
    unsafe {
        slab.free(second.at, bytes, &directory);
        slab.free(third.at, bytes, &directory);
    }
}
