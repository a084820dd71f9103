//! The key hash: ahash under seeds fixed for the life of the process (random by default,
//! so key choice cannot be used to flood one chain or one sketch counter).
//!
//! One hash serves two parts: its high 32 bits pick the shard (`router`); its low 32
//! bits pick the table bucket (`table`) and are what the eviction policy's frequency
//! sketch counts the key by. The policy's slot for the entry keeps them, for the sketch
//! and for unlinking the node from its bucket, where hashing the key again cost about 70
//! instructions a write (three hashes; BENCHMARKS.md). Within a shard two keys
//! share all their sketch counters only if their low halves are equal, about one pair in
//! 2^32, which no more skews admission than the sketch's own collisions do.

/// A seeded key hasher; clones hash alike.
#[derive(Clone, Debug)]
pub struct KeyHasher {
    state: ahash::RandomState,
}

impl KeyHasher {
    /// A hasher with seeds drawn once, at random.
    pub fn random() -> Self {
        Self {
            state: ahash::RandomState::new(),
        }
    }

    /// A hasher with explicit seeds: the same keys hash alike every run.
    pub fn with_seeds(seeds: [u64; 4]) -> Self {
        Self {
            state: ahash::RandomState::with_seeds(seeds[0], seeds[1], seeds[2], seeds[3]),
        }
    }

    #[inline(always)]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.state.hash_one(key)
    }
}
