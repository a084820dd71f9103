//! TinyLFU's frequency sketch: a count-min sketch of 4-bit counters that estimates how
//! often each key was asked for recently, in 8 bytes per cached entry.
//!
//! Written for the owner core alone (no atomics). Each key's four counters sit in one
//! 64-byte block aligned to a cache line, so an estimate or an increment touches one
//! line, as in Caffeine's `FrequencySketch`; the key's place in the block is computed
//! once per call. The table has 16 counters per entry (Caffeine's density), sized
//! exactly rather than to a power of two so that it fits the entry overhead budget. It
//! can grow without forgetting ([`Sketch::grow`]), which a shard under a byte bound
//! uses to size it for the entries it holds.
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
//! ahash), so which keys share counters cannot be predicted from outside; `mix` spreads its 32 bits over the block and cell choices.

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
    /// The entries it is sized for.
    capacity: usize,
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
            capacity,
            table: vec![Block([0; BLOCK_WORDS]); blocks].into_boxed_slice(),
            events: 0,
            sample_size: (capacity.max(1) as u64).saturating_mul(SAMPLE_PER_ENTRY),
        }
    }

    /// The entries it is sized for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Resizes the table for `capacity` entries (more than now), keeping what it
    /// counted. A key's block is its hash's high half scaled to the table's length
    /// (`locate`), and its cells within the block do not depend on the length. So the
    /// keys of a new block come from the one or two old blocks its range of hashes
    /// overlaps, and the new block starts as their cell-by-cell maximum: no key's
    /// estimate drops (a count-min sketch may overestimate, never under). After a
    /// doubling each new block overlaps one old block, and every estimate is exactly
    /// what it was. The sample grows with the table.
    pub fn grow(&mut self, capacity: usize) {
        debug_assert!(capacity > self.capacity, "a sketch only grows");
        let blocks = capacity.max(MIN_TABLE_WORDS).div_ceil(BLOCK_WORDS);
        let old = &self.table;
        let old_blocks = old.len();
        self.table = (0..blocks)
            .map(|block| {
                // Old blocks holding hashes this block's range holds: the first and
                // the last (the same one, or the next).
                let first = block * old_blocks / blocks;
                let last = ((block + 1) * old_blocks - 1) / blocks;
                let mut merged = old[first];
                if last != first {
                    for (word, other) in merged.0.iter_mut().zip(old[last].0) {
                        *word = nibble_max(*word, other);
                    }
                }
                merged
            })
            .collect();
        self.capacity = capacity;
        self.sample_size = (capacity as u64).saturating_mul(SAMPLE_PER_ENTRY);
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

/// The larger of each pair of 4-bit counters of `a` and `b`.
fn nibble_max(a: u64, b: u64) -> u64 {
    const LOW: u64 = 0x0F0F_0F0F_0F0F_0F0F;
    byte_max(a & LOW, b & LOW) | byte_max((a >> 4) & LOW, (b >> 4) & LOW) << 4
}

/// The larger of each pair of bytes of `a` and `b`, each byte at most 15. A byte of
/// `(a | 0x80) - b` keeps its top bit exactly where `a >= b`, and never borrows from
/// the next byte (128 + a - b is at least 113).
fn byte_max(a: u64, b: u64) -> u64 {
    const TOP: u64 = 0x8080_8080_8080_8080;
    let a_wins = (((a | TOP) - b) & TOP) >> 7;
    let mask = a_wins * 0xFF;
    (a & mask) | (b & !mask)
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
    fn doubling_keeps_every_estimate_and_growing_by_less_lowers_none() {
        let mut s = Sketch::new(4_096);
        let keys: Vec<u64> = (0..3_000u64).map(|k| mix(k + 1)).collect();
        for (i, &key) in keys.iter().enumerate() {
            s.add(key, (i % 15) as u8 + 1);
        }
        let before: Vec<u8> = keys.iter().map(|&key| s.frequency(key)).collect();
        s.grow(8_192);
        let doubled: Vec<u8> = keys.iter().map(|&key| s.frequency(key)).collect();
        assert_eq!(doubled, before);
        assert_eq!(s.sample_size, 8_192 * SAMPLE_PER_ENTRY);
        s.grow(12_000);
        let lowered = keys
            .iter()
            .zip(&before)
            .filter(|&(&key, &was)| s.frequency(key) < was)
            .count();
        assert_eq!(
            lowered, 0,
            "estimates lowered by growing by less than double"
        );
    }

    #[test]
    fn nibble_max_takes_each_counter_from_the_larger() {
        for (a, b) in [
            (0u64, 0u64),
            (u64::MAX, 0),
            (0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210),
        ] {
            let expected = (0..16).fold(0, |max, i| {
                let shift = 4 * i;
                max | ((a >> shift) & 15).max((b >> shift) & 15) << shift
            });
            assert_eq!(nibble_max(a, b), expected, "{a:x} {b:x}");
            assert_eq!(nibble_max(b, a), expected, "{b:x} {a:x}");
        }
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
