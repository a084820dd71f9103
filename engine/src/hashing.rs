//! The key hash: ahash under seeds fixed for the life of the process (random by default,
//! so key choice cannot be used to flood one chain or one sketch counter).
//!
//! One hash serves two parts: its high 32 bits pick the shard (`router`); its low 32
//! bits pick the table bucket (`table`) and are what the eviction policy's frequency
//! sketch counts the key by. Callers hash a key once per request and hand the hash to
//! the shard. The shard keeps no hash per entry: where it needs one for an entry it did
//! not just get (an eviction's candidate and victim, an expired entry), it hashes the
//! key again with the same hasher, which costs instructions on a line it loads anyway
//! (the node's), where keeping the hash in the policy's slot cost 4 bytes an entry.
//! Within a shard two keys share all their sketch counters only if their low halves are
//! equal, about one pair in 2^32, which no more skews admission than the sketch's own
//! collisions do.

/// A seeded key hasher; clones hash alike.
#[derive(Clone, Debug)]
pub struct KeyHasher {
    kind: Kind,
}

#[derive(Clone, Debug)]
enum Kind {
    Seeded(ahash::RandomState),
    /// A function the engine's own tests choose, to make keys share chains.
    #[cfg(test)]
    Chosen(fn(&[u8]) -> u64),
}

impl KeyHasher {
    /// A hasher with seeds drawn once, at random.
    pub fn random() -> Self {
        Self {
            kind: Kind::Seeded(ahash::RandomState::new()),
        }
    }

    /// A hasher with explicit seeds: the same keys hash alike every run.
    pub fn with_seeds(seeds: [u64; 4]) -> Self {
        Self {
            kind: Kind::Seeded(ahash::RandomState::with_seeds(
                seeds[0], seeds[1], seeds[2], seeds[3],
            )),
        }
    }

    /// A hasher that is `hash`, for tests that choose which keys collide.
    #[cfg(test)]
    pub(crate) fn chosen(hash: fn(&[u8]) -> u64) -> Self {
        Self {
            kind: Kind::Chosen(hash),
        }
    }

    #[inline(always)]
    pub fn hash(&self, key: &[u8]) -> u64 {
        match &self.kind {
            Kind::Seeded(state) => state.hash_one(key),
            #[cfg(test)]
            Kind::Chosen(hash) => hash(key),
        }
    }
}
