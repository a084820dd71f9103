//! The key hash: ahash under seeds fixed for the life of the process (random by default,
//! so key choice cannot be used to flood one chain or one sketch counter).
//!
//! One hash serves three parts: its high 32 bits pick the shard (`router`), its low 32
//! bits pick the table bucket and are what a node keeps to tell keys apart (`table`), and
//! the whole of it places the key in the eviction policy's frequency sketch. A node keeps
//! only the low half, so the shard hashes a resident's key again when the policy needs
//! the whole (a few times per write, never on a read): four bytes an entry, against a few
//! nanoseconds a write.

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
