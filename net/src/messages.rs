//! What a shard's owner is asked, and what it answers: the engine's commands, fills of
//! misses from the tiers behind L1, and the writes that go through every tier in the
//! order the owner gives them (`owner.rs`, `tiers.rs`).

use std::time::Duration;

use engine::router::Reply;
use engine::{Command, InsertError, Inserted, OwnedEntry, SavedEntry, Standing};
use l2::{L2Error, Version, Written};

use crate::snapshot::Part;

/// What owners receive.
#[derive(Debug)]
pub enum OwnerMessage {
    Shard(Command),
    /// Fetch `key` from the tiers behind L1 (L2 or an origin must be configured).
    Fill {
        hash: u64,
        key: Vec<u8>,
        mode: FillMode,
        reply: Reply<Result<Filled, FillError>>,
    },
    /// A client's PUT of a tagged value: L1 now, in the order the owner takes it, then
    /// L2 and the coherence event; answered once L2 has answered.
    Put {
        hash: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Option<Duration>,
        reply: Reply<PutOutcome>,
    },
    /// A client's DELETE, through the tiers in the same order.
    Delete {
        hash: u64,
        key: Vec<u8>,
        reply: Reply<DeleteOutcome>,
    },
    /// Free the expired entries (the periodic sweep), in turns between which the owner
    /// serves; answers how many, once none is due (0 at once if an expiry is already
    /// under way, which frees them).
    Expire {
        reply: Reply<usize>,
    },
    /// Save the shard to a snapshot: its blocks, then `Done`, go to `parts` in steps
    /// between which the owner serves; answered when it is done.
    Save {
        parts: flume::Sender<Part>,
        reply: Reply<()>,
    },
    /// Entries loaded from a snapshot that L2 must confirm before they are served:
    /// each is kept only if L2 still holds the very write it came from, and no event
    /// for its key arrived meanwhile. Answers how many were kept.
    Restore {
        entries: Vec<Restored>,
        /// How long the first round of checks waits before it asks L2, its keys' fills
        /// already joined (`CACHE_FAULT_RESTORE_CHECK_DELAY_MS`, a fault for tests).
        check_delay: Duration,
        reply: Reply<usize>,
    },
    /// Other instances wrote or deleted these keys (routed to this shard, each with its
    /// hash and the write's version): drop the entries older than that; answers how
    /// many were dropped.
    DropOlder {
        keys: Vec<(u64, Vec<u8>, Version)>,
        reply: Reply<usize>,
    },
}

impl From<Command> for OwnerMessage {
    fn from(command: Command) -> Self {
        OwnerMessage::Shard(command)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillMode {
    /// An L1 miss: the owner re-checks its table first.
    Miss,
    /// A stale L1 hit was served: fetch a fresh copy (L2, then the origin) in the
    /// background, at most one at a time per key.
    Revalidate,
    /// `POST /api/cache/refresh`: straight to the origin, superseding any fill in flight.
    Refresh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Origin,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Origin => "origin",
        }
    }
}

/// What a fill found.
#[derive(Clone, Debug)]
pub enum Filled {
    Hit {
        entry: OwnedEntry,
        source: Source,
    },
    /// Nowhere: not in L2, and the origin (if any) said 404.
    Absent,
}

/// Why a fill failed, with the status the client should get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillError {
    pub status: u16,
    pub message: String,
}

/// How a PUT went in each tier: L1's answer, and L2's when L2 is configured and L1
/// took the value.
#[derive(Debug)]
pub struct PutOutcome {
    pub l1: Result<Inserted, InsertError>,
    pub l2: Option<Result<Written, L2Error>>,
}

/// How a DELETE went: whether L1 held the key, and L2's answer (how many keys held a
/// value) when L2 is configured.
#[derive(Debug)]
pub struct DeleteOutcome {
    pub l1: bool,
    pub l2: Option<Result<usize, L2Error>>,
}

/// An entry from a snapshot, owned, with its key's hash under this run's router.
#[derive(Debug)]
pub struct Restored {
    pub hash: u64,
    pub key: Vec<u8>,
    /// L1's stored form.
    pub value: crate::stored::InL1,
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub standing: Standing,
}

impl Restored {
    pub fn new(hash: u64, entry: &SavedEntry<'_>) -> Self {
        Self {
            hash,
            key: entry.key.to_vec(),
            value: crate::stored::InL1 {
                flags: entry.flags,
                bytes: entry.value.to_vec(),
            },
            cached_at_ms: entry.cached_at_ms,
            expires_at_ms: entry.expires_at_ms,
            standing: entry.standing,
        }
    }

    pub fn saved(&self) -> SavedEntry<'_> {
        SavedEntry {
            key: &self.key,
            value: &self.value.bytes,
            flags: self.value.flags,
            cached_at_ms: self.cached_at_ms,
            expires_at_ms: self.expires_at_ms,
            standing: self.standing,
        }
    }
}
