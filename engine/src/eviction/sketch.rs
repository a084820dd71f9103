//! TinyLFU's frequency sketch: a count-min sketch of 4-bit counters that estimates how
//! often each key was asked for recently, in 8 bytes per cached entry.
//!
//! Written for the owner core alone (no atomics). Each key's four counters sit in one
//! 64-byte block aligned to a cache line, so an estimate or an increment touches one
//! line, as in Caffeine's `FrequencySketch`; the key's place in the block is computed
//! once per call. The table has 16 counters per entry (Caffeine's density), sized
//! exactly rather than to a power of two so that it fits the entry overhead budget.
//! Increments are conservative (only the counters at the key's minimum grow), which
//! keeps keys that share counters from inflating each other.
//! Counters saturate at 15; once the sketch has counted sixteen events per entry, every
//! counter is halved (a reset), so that popularity fades: with 4-bit counters, a sample
//! of 16 times the cache is where a counter can just tell a key seen in every
//! cache-sized stretch of the sample from one seen in fewer (the TinyLFU paper's W/C).
//!
//! Small caches get a table of at least [`MIN_TABLE_WORDS`] words (4 KiB). A sample of
//! sixteen events per entry holds more distinct keys per entry the shorter it is (on
//! skewed traces most of a short stretch is keys seen once), so a table sized to a few
//! hundred entries fills with collisions: on OLTP at 250 entries in two shards the floor
//! took the hit ratio from 21.2 to 23.1 % (22.9 to 23.2 over four hash seeds), and sizes
//! from 1,000 entries up were unchanged within 0.1 point (BENCHMARKS.md).
//!
//! The key hash it is given is already seeded per process (the low half of the router's
//! ahash, which the table's node keeps), so which keys share counters cannot be predicted
//! from outside; `mix` spreads its 32 bits over the block and cell choices.

/// Counters per key.
const DEPTH: usize = 4;
/// 64-bit words per block (one cache line).
const BLOCK_WORDS: usize = 8;
const MAX_COUNT: u64 = 15;
/// Events per cached entry between two resets.
const SAMPLE_PER_ENTRY: u64 = 16;

/// The smallest table, in words (16 counters each).
const MIN_TABLE_WORDS: usize = 512;

/// Bytes of sketch per cached entry: one word (16 counters) per entry, the table rounded
/// up to whole blocks.
pub const SKETCH_BYTES_PER_ENTRY: usize = 8;

/// One cache line of counters, aligned to one: each of a key's four rows has two words
/// here. (Unaligned, most blocks would straddle two lines and cost two misses.)
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Block([u64; BLOCK_WORDS]);

/// Where one of a key's counters is: a word of its block and a nibble of the word.
#[derive(Clone, Copy)]
struct Cell {
    word: usize,
    shift: u32,
}

/// What [`Sketch::add`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// The key's estimated frequency after the add.
    pub frequency: u8,
    /// Whether the add halved every counter.
    pub reset: bool,
}

#[derive(Debug)]
pub struct Sketch {
    table: Box<[Block]>,
    /// Events counted since the last reset.
    events: u64,
    sample_size: u64,
}

impl Sketch {
    /// A sketch for a cache of `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        let blocks = capacity.max(MIN_TABLE_WORDS).div_ceil(BLOCK_WORDS);
        Self {
            table: vec![Block([0; BLOCK_WORDS]); blocks].into_boxed_slice(),
            events: 0,
            sample_size: (capacity.max(1) as u64).saturating_mul(SAMPLE_PER_ENTRY),
        }
    }

    /// The estimated recent frequency of the key with this hash, 0 to 15.
    pub fn frequency(&self, hash: u64) -> u8 {
        let (block, cells) = self.locate(hash);
        min_count(&cells.map(|cell| count(&self.table[block], cell))) as u8
    }

    /// Starts loading the line of the key with this hash.
    pub fn prefetch(&self, hash: u64) {
        let (block, _) = self.locate(hash);
        crate::prefetch::prefetch(&self.table[block]);
    }

    /// Counts `n` requests for the key with this hash: its frequency afterwards, and
    /// whether that reset the sketch (so admission needs no second look at the line).
    pub fn add(&mut self, hash: u64, n: u8) -> Counted {
        let (block, cells) = self.locate(hash);
        let block = &mut self.table[block];
        let counts = cells.map(|cell| count(block, cell));
        let target = (min_count(&counts) + u64::from(n)).min(MAX_COUNT);
        for (cell, count) in cells.into_iter().zip(counts) {
            // Conservative: only the counters below the new estimate grow.
            block.0[cell.word] += target.saturating_sub(count) << cell.shift;
        }
        self.events += u64::from(n);
        if self.events >= self.sample_size {
            return self.reset(hash);
        }
        Counted {
            frequency: target as u8,
            reset: false,
        }
    }

    /// Halves every counter, once a sample's events are counted; the key's estimate
    /// after. Out of line, so that `add`'s common path keeps its values in registers.
    #[cold]
    #[inline(never)]
    fn reset(&mut self, hash: u64) -> Counted {
        for word in self.table.iter_mut().flat_map(|block| &mut block.0) {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.events /= 2;
        Counted {
            frequency: self.frequency(hash),
            reset: true,
        }
    }

    /// The key's block and its counter in each row (two words per row, the row's word
    /// and nibble picked by 5 bits of the mixed hash).
    fn locate(&self, hash: u64) -> (usize, [Cell; DEPTH]) {
        let h = mix(hash);
        // Multiply-shift maps the high half onto the blocks without a power-of-two size.
        let block = (((h >> 32) * self.table.len() as u64) >> 32) as usize;
        let cells = std::array::from_fn(|row| {
            let bits = (h >> (8 * row)) as u32;
            Cell {
                word: 2 * row + (bits & 1) as usize,
                shift: ((bits >> 1) & 15) * 4,
            }
        });
        (block, cells)
    }
}

fn count(block: &Block, cell: Cell) -> u64 {
    (block.0[cell.word] >> cell.shift) & MAX_COUNT
}

fn min_count(counts: &[u64; DEPTH]) -> u64 {
    counts[0].min(counts[1]).min(counts[2].min(counts[3]))
}

/// A 64-bit finalizer (splitmix64's), so that every bit of the index depends on every
/// bit of the hash.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_saturate_at_fifteen() {
        let mut s = Sketch::new(1_000);
        assert_eq!(s.frequency(42), 0);
        assert_eq!(s.add(42, 1).frequency, 1);
        assert_eq!(s.add(42, 2).frequency, 3);
        assert_eq!(s.frequency(42), 3);
        assert_eq!(s.add(42, 100).frequency, 15);
        assert_eq!(s.frequency(42), 15);
    }

    #[test]
    fn frequent_keys_stand_out_from_many_rare_ones() {
        let mut s = Sketch::new(4_096);
        for round in 0..8u64 {
            s.add(7, 1);
            for k in 0..1_000u64 {
                s.add(mix(round * 1_000 + k + 100), 1);
            }
        }
        assert!(s.frequency(7) >= 6, "{}", s.frequency(7));
        let rare = (0..1_000u64)
            .filter(|k| s.frequency(mix(k + 100)) >= 6)
            .count();
        assert!(rare < 20, "{rare} one-off keys look frequent");
    }

    #[test]
    fn sixteen_events_per_entry_halve_every_counter() {
        let mut s = Sketch::new(16);
        s.add(1, 12);
        for _ in 0..243 {
            assert!(!s.add(3, 1).reset, "no reset before 256 events");
        }
        let counted = s.add(3, 1);
        assert!(counted.reset, "the 256th event resets");
        assert_eq!(
            counted.frequency,
            s.frequency(3),
            "the estimate after the halving"
        );
        // Key 3 may share some of key 1's counters (raised to 15, halved to 7), not all.
        assert_eq!(s.frequency(1), 6);
        assert_eq!(s.events, 128);
    }

    #[test]
    fn the_table_stays_within_its_memory_budget() {
        for capacity in [1, 7, 1_000, 1_024, 1_025, 100_000] {
            let bytes = std::mem::size_of_val(&*Sketch::new(capacity).table);
            // At most one partly used block beyond the per-entry budget, or the floor.
            assert!(
                bytes
                    <= (SKETCH_BYTES_PER_ENTRY * capacity + 8 * BLOCK_WORDS)
                        .max(8 * MIN_TABLE_WORDS),
                "{capacity}: {bytes} bytes"
            );
        }
    }
}
