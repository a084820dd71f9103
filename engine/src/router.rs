//! Which shard owns a key, and the messages other cores send to that owner.
//!
//! Keys are hashed once ([`KeyHasher`]); the high 32 bits pick the shard and the low bits
//! the table bucket, so the two never correlate. Every write
//! is a [`Command`] sent over a flume channel to the owner, which applies commands in
//! arrival order and answers each on its own one-shot reply channel. Invalidation by
//! pattern fans out to every shard and sums what they removed.

use std::sync::Arc;

use crate::glob::Glob;
use crate::hashing::KeyHasher;
use crate::shard::{InsertError, Inserted, Removed, ShardWriter};

#[derive(Clone, Debug)]
pub struct Router {
    hasher: KeyHasher,
    shards: u32,
}

impl Router {
    /// A router over `shards` shards with seeds drawn once, for this process.
    pub fn new(shards: usize) -> Self {
        Self::from_hasher(shards, KeyHasher::random())
    }

    /// A router with explicit seeds: the same keys land on the same shards every run.
    pub fn with_seeds(shards: usize, seeds: [u64; 4]) -> Self {
        Self::from_hasher(shards, KeyHasher::with_seeds(seeds))
    }

    fn from_hasher(shards: usize, hasher: KeyHasher) -> Self {
        let shards = u32::try_from(shards).expect("fewer than 2^32 shards");
        assert!(shards > 0, "at least one shard");
        Self { hasher, shards }
    }

    pub fn shards(&self) -> usize {
        self.shards as usize
    }

    #[inline(always)]
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash(key)
    }

    /// The hasher keys are routed by, which each shard is given to hash its own entries'
    /// keys alike (`ShardWriter::new`).
    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    /// The shard that owns keys with this hash.
    #[inline(always)]
    pub fn shard_of(&self, hash: u64) -> usize {
        (((hash >> 32) * self.shards as u64) >> 32) as usize
    }

    pub fn owner(&self, key: &[u8]) -> usize {
        self.shard_of(self.hash(key))
    }
}

/// One-shot reply channel.
pub type Reply<T> = flume::Sender<T>;

/// A predicate on keys, shareable across cores.
type Picks = dyn Fn(&[u8]) -> bool + Send + Sync;

/// Picks keys (for a flush limited to some of them).
#[derive(Clone)]
pub struct KeyFilter(Arc<Picks>);

impl KeyFilter {
    pub fn new(picks: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(picks))
    }

    pub fn picks(&self, key: &[u8]) -> bool {
        (self.0)(key)
    }
}

impl std::fmt::Debug for KeyFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFilter")
    }
}

/// A copy of an entry, for answers that cross cores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedEntry {
    pub value: Vec<u8>,
    pub flags: u8,
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    /// Expired, but inside the shard's stale window.
    pub stale: bool,
}

/// A request to a shard's owner.
#[derive(Debug)]
pub enum Command {
    /// A read answered by the owner: every read when reads hop, or a miss that needs the
    /// owner (which re-checks its table before anything is fetched).
    Lookup {
        hash: u64,
        key: Vec<u8>,
        reply: Reply<Option<OwnedEntry>>,
    },
    Set {
        hash: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        reply: Reply<Result<Inserted, InsertError>>,
    },
    Delete {
        hash: u64,
        key: Vec<u8>,
        reply: Reply<bool>,
    },
    /// Keys already routed to this shard, with their hashes.
    InvalidateKeys {
        keys: Vec<(u64, Vec<u8>)>,
        reply: Reply<usize>,
    },
    /// A pattern invalidation or a flush.
    Remove(Removal),
}

/// A command that removes every key it picks from a shard: a pattern invalidation, or a
/// flush of everything or of the keys whose coherence was lost. An owner may carry it out
/// whole ([`Command::apply`]) or in steps ([`ShardWriter::begin_sweep`]); either way it
/// removes what the shard held when the removal began.
#[derive(Debug)]
pub struct Removal {
    picking: Picking,
    reply: Reply<usize>,
}

#[derive(Clone, Debug)]
enum Picking {
    Pattern(Arc<Glob>),
    Everything,
    Only(KeyFilter),
}

impl Removal {
    pub fn picks(&self, key: &[u8]) -> bool {
        match &self.picking {
            Picking::Pattern(pattern) => pattern.matches(key),
            Picking::Everything => true,
            Picking::Only(filter) => filter.picks(key),
        }
    }

    /// Answers with what was removed: for a pattern, the live keys (what an invalidation
    /// reports); for a flush, every entry dropped.
    pub fn answer(self, removed: Removed) {
        let count = match self.picking {
            Picking::Pattern(_) => removed.live,
            Picking::Everything | Picking::Only(_) => removed.live + removed.expired,
        };
        let _ = self.reply.send(count);
    }
}

impl Command {
    /// Applies the command to the shard it was routed to and sends the answer. A requester
    /// that has gone away is not an error: the work is done regardless.
    pub fn apply(self, shard: &mut ShardWriter, now_ms: u64) {
        match self {
            Command::Lookup { hash, key, reply } => {
                let entry = shard.get_with(hash, &key, now_ms, |e| OwnedEntry {
                    value: e.value.to_vec(),
                    flags: e.flags,
                    cached_at_ms: e.cached_at_ms,
                    expires_at_ms: e.expires_at_ms,
                    stale: e.stale,
                });
                let _ = reply.send(entry);
            }
            Command::Set {
                hash,
                key,
                value,
                expires_at_ms,
                reply,
            } => {
                let _ = reply.send(shard.insert(hash, &key, &value, expires_at_ms, now_ms));
            }
            Command::Delete { hash, key, reply } => {
                let _ = reply.send(shard.remove(hash, &key, now_ms));
            }
            Command::InvalidateKeys { keys, reply } => {
                let removed = keys
                    .iter()
                    .filter(|(hash, key)| shard.remove(*hash, key, now_ms))
                    .count();
                let _ = reply.send(removed);
            }
            Command::Remove(removal) => {
                let sweep = shard.begin_sweep();
                let swept = shard.sweep_some(sweep, u32::MAX, now_ms, |key| removal.picks(key));
                removal.answer(swept.removed);
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("shard {shard} is not running (its owner stopped)")]
pub struct ShardGone {
    pub shard: usize,
}

/// Senders to every shard's owner, with the router that picks among them. Cheap to clone:
/// each core keeps one. The message type `M` is [`Command`] itself or a caller's own
/// message that can carry one (the server adds read-through fills).
#[derive(Debug)]
pub struct Mailboxes<M = Command> {
    router: Router,
    senders: Arc<[flume::Sender<M>]>,
}

impl<M> Clone for Mailboxes<M> {
    fn clone(&self) -> Self {
        Self {
            router: self.router.clone(),
            senders: self.senders.clone(),
        }
    }
}

/// Creates one bounded mailbox per shard: the senders for every core, and the receivers,
/// in shard order, for each owner to drain.
pub fn mailboxes<M>(router: Router, capacity: usize) -> (Mailboxes<M>, Vec<flume::Receiver<M>>) {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..router.shards())
        .map(|_| flume::bounded(capacity))
        .unzip();
    (
        Mailboxes {
            router,
            senders: senders.into(),
        },
        receivers,
    )
}

impl<M> Mailboxes<M> {
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Sends the message `make` builds to `shard` and waits for its answer.
    pub async fn call<T>(
        &self,
        shard: usize,
        make: impl FnOnce(Reply<T>) -> M,
    ) -> Result<T, ShardGone> {
        let (reply, answer) = flume::bounded(1);
        self.senders[shard]
            .send_async(make(reply))
            .await
            .map_err(|_| ShardGone { shard })?;
        answer.recv_async().await.map_err(|_| ShardGone { shard })
    }
}

impl<M: From<Command>> Mailboxes<M> {
    pub async fn lookup(&self, key: &[u8]) -> Result<Option<OwnedEntry>, ShardGone> {
        let hash = self.router.hash(key);
        let key = key.to_vec();
        self.call(self.router.shard_of(hash), |reply| {
            Command::Lookup { hash, key, reply }.into()
        })
        .await
    }

    pub async fn set(
        &self,
        key: &[u8],
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
    ) -> Result<Result<Inserted, InsertError>, ShardGone> {
        let hash = self.router.hash(key);
        let key = key.to_vec();
        self.call(self.router.shard_of(hash), |reply| {
            Command::Set {
                hash,
                key,
                value,
                expires_at_ms,
                reply,
            }
            .into()
        })
        .await
    }

    pub async fn delete(&self, key: &[u8]) -> Result<bool, ShardGone> {
        let hash = self.router.hash(key);
        let key = key.to_vec();
        self.call(self.router.shard_of(hash), |reply| {
            Command::Delete { hash, key, reply }.into()
        })
        .await
    }

    /// Deletes each distinct key on its owner; returns how many were present.
    pub async fn invalidate_keys<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<usize, ShardGone> {
        let mut per_shard: Vec<Vec<(u64, Vec<u8>)>> = vec![Vec::new(); self.router.shards()];
        let mut seen = std::collections::HashSet::new();
        for key in keys {
            let key = key.as_ref();
            if seen.insert(key) {
                let hash = self.router.hash(key);
                per_shard[self.router.shard_of(hash)].push((hash, key.to_vec()));
            }
        }
        self.fan_out(|shard, reply| {
            let keys = std::mem::take(&mut per_shard[shard]);
            (!keys.is_empty()).then_some(Command::InvalidateKeys { keys, reply })
        })
        .await
    }

    /// Deletes every key matching `pattern` on every shard; returns how many.
    pub async fn invalidate_pattern(&self, pattern: Arc<Glob>) -> Result<usize, ShardGone> {
        self.fan_out(|_, reply| {
            Some(Command::Remove(Removal {
                picking: Picking::Pattern(pattern.clone()),
                reply,
            }))
        })
        .await
    }

    /// Empties every shard, or drops only the keys `only` picks; returns how many
    /// entries were dropped.
    pub async fn flush(&self, only: Option<KeyFilter>) -> Result<usize, ShardGone> {
        self.fan_out(|_, reply| {
            Some(Command::Remove(Removal {
                picking: only.clone().map_or(Picking::Everything, Picking::Only),
                reply,
            }))
        })
        .await
    }

    /// Sends one command to each shard that gets one, all before waiting for any answer,
    /// then sums the answers.
    async fn fan_out(
        &self,
        mut make: impl FnMut(usize, Reply<usize>) -> Option<Command>,
    ) -> Result<usize, ShardGone> {
        let mut pending = Vec::with_capacity(self.senders.len());
        for (shard, sender) in self.senders.iter().enumerate() {
            let (reply, answer) = flume::bounded(1);
            if let Some(command) = make(shard, reply) {
                sender
                    .send_async(command.into())
                    .await
                    .map_err(|_| ShardGone { shard })?;
                pending.push((shard, answer));
            }
        }
        let mut total = 0;
        for (shard, answer) in pending {
            total += answer.recv_async().await.map_err(|_| ShardGone { shard })?;
        }
        Ok(total)
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests {
    use super::*;
    use crate::shard::ShardConfig;
    use futures_executor::block_on;

    const NOW: u64 = 1_700_000_000_000;

    #[test]
    fn hashing_is_stable_per_router_and_spreads_keys() {
        let router = Router::with_seeds(4, [1, 2, 3, 4]);
        let again = Router::with_seeds(4, [1, 2, 3, 4]);
        let mut counts = [0usize; 4];
        for i in 0..10_000 {
            let key = format!("key:{i}");
            assert_eq!(router.owner(key.as_bytes()), again.owner(key.as_bytes()));
            counts[router.owner(key.as_bytes())] += 1;
        }
        for c in counts {
            assert!((2_000..3_000).contains(&c), "uneven spread {counts:?}");
        }
        let clone = router.clone();
        assert_eq!(clone.hash(b"x"), router.hash(b"x"));
    }

    /// Owners on their own threads, driven only through mailboxes, as the server does.
    #[test]
    fn commands_reach_owners_and_pattern_invalidation_sums_over_shards() {
        let router = Router::with_seeds(3, [9, 8, 7, 6]);
        let hasher = router.hasher().clone();
        let (mail, receivers) = mailboxes::<Command>(router, 64);
        let owners: Vec<_> = receivers
            .into_iter()
            .map(|rx| {
                let hasher = hasher.clone();
                std::thread::spawn(move || {
                    let config = ShardConfig {
                        max_entries: 1_000,
                        max_bytes: u64::MAX,
                        stale_window_ms: 0,
                        eviction: crate::Eviction::default(),
                        huge_pages: false,
                    };
                    let mut shard = ShardWriter::new(config, Default::default(), NOW, hasher);
                    for command in rx.iter() {
                        command.apply(&mut shard, NOW);
                    }
                    shard.len()
                })
            })
            .collect();
        block_on(async {
            for i in 0..30 {
                let key = format!("user:{i}");
                mail.set(key.as_bytes(), b"v".to_vec(), None)
                    .await
                    .unwrap()
                    .unwrap();
            }
            mail.set(b"order:1", b"o".to_vec(), None)
                .await
                .unwrap()
                .unwrap();
            let got = mail.lookup(b"user:7").await.unwrap().unwrap();
            assert_eq!(got.value, b"v");
            assert_eq!(got.cached_at_ms, NOW);
            assert!(mail.delete(b"user:7").await.unwrap());
            assert!(!mail.delete(b"user:7").await.unwrap());
            let removed = mail
                .invalidate_keys(&["user:1", "user:1", "user:2", "absent"])
                .await
                .unwrap();
            assert_eq!(removed, 2, "distinct keys that were present");
            let removed = mail
                .invalidate_pattern(Arc::new(Glob::new(b"user:*")))
                .await
                .unwrap();
            assert_eq!(removed, 27);
            assert_eq!(mail.lookup(b"user:3").await.unwrap(), None);
            assert_eq!(mail.flush(None).await.unwrap(), 1);
        });
        drop(mail);
        let remaining: usize = owners.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(remaining, 0);
    }
}
