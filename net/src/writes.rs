//! Where every write enters the tiers: a PUT or DELETE goes to its key's owner, which
//! orders it in L1 and then sends it on to L2 and the other instances (`owner.rs`,
//! `tiers.rs`); an invalidation removes from L1 on every owner, then from L2, then tells
//! the other instances, and drops from L1 again what a read refilled meanwhile; another
//! instance's event drops older L1 entries. The HTTP API
//! calls these and renders what they answer; it orchestrates no tier itself.

use std::sync::Arc;
use std::time::Duration;

use engine::router::Reply;
use engine::{Clock, Glob, ShardGone};
use l2::{L2Error, Version};

use crate::core::Shared;
use crate::messages::{DeleteOutcome, FillError, FillMode, Filled, OwnerMessage, PutOutcome};
use crate::origin::OriginError;
use crate::stored;

/// Why a PUT stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum PutRefused {
    #[error("the origin refused the write, so nothing was stored: {0}")]
    Origin(OriginError),
    #[error(transparent)]
    Shard(#[from] ShardGone),
}

/// Stores a tagged value: at the origin first when ORIGIN_WRITE is set, then L1, L2 and
/// the event in that order, through the key's owner.
pub async fn put(
    shared: &Shared,
    key: &[u8],
    tagged: Vec<u8>,
    ttl: Option<Duration>,
) -> Result<PutOutcome, PutRefused> {
    if let (true, Some(origin)) = (shared.config.origin_write, &shared.origin) {
        let (tag, bytes) = tagged.split_first().unwrap_or((&stored::BYTES, &[]));
        let media = if *tag == stored::JSON {
            "application/json"
        } else {
            "application/octet-stream"
        };
        origin
            .store(key, bytes.to_vec(), media)
            .await
            .map_err(PutRefused::Origin)?;
    }
    Ok(to_owner(shared, key, |hash, key, reply| OwnerMessage::Put {
        hash,
        key,
        value: tagged,
        ttl,
        reply,
    })
    .await?)
}

/// Sends the message `make` builds for `key` (with its hash) to the key's owner, and
/// waits for the answer.
async fn to_owner<T>(
    shared: &Shared,
    key: &[u8],
    make: impl FnOnce(u64, Vec<u8>, Reply<T>) -> OwnerMessage,
) -> Result<T, ShardGone> {
    let hash = shared.router.hash(key);
    let key = key.to_vec();
    shared
        .mail
        .call(shared.router.shard_of(hash), |reply| make(hash, key, reply))
        .await
}

/// Deletes a key from L1, then L2, then tells the other instances, through its owner.
pub async fn delete(shared: &Shared, key: &[u8]) -> Result<DeleteOutcome, ShardGone> {
    to_owner(shared, key, |hash, key, reply| OwnerMessage::Delete {
        hash,
        key,
        reply,
    })
    .await
}

/// What an invalidation removed: from L1 (how many entries), and from L2 when
/// configured (how many keys held a value, or why it failed).
pub struct Invalidated {
    pub l1: usize,
    pub l2: Option<Result<usize, L2Error>>,
}

/// Invalidates keys. L1 only loses entries here, which is safe in any order with
/// respect to the owners' writes (a write that lands after leaves its newer value), so
/// this runs from the accepting core; the deletion in L2 carries a version, so it cannot
/// remove a newer write there either.
pub async fn invalidate_keys(shared: &Shared, keys: &[String]) -> Result<Invalidated, ShardGone> {
    let version = shared.tiers.next_version(shared.clock.now_ms());
    let l1 = shared.mail.invalidate_keys(keys).await?;
    let l2 = shared.tiers.delete_behind_l1(keys, version).await;
    if l2.is_some() {
        // What the others do on the event: a read that missed L1 after the removal may
        // have filled an old value from L2 before the tombstones landed.
        let written = keys.iter().map(|k| (k.as_bytes().to_vec(), version));
        drop_older(shared, written.collect()).await?;
    }
    Ok(Invalidated { l1, l2 })
}

/// Invalidates every key matching a glob pattern, in L1, then L2, then elsewhere.
pub async fn invalidate_pattern(shared: &Shared, pattern: &str) -> Result<Invalidated, ShardGone> {
    let version = shared.tiers.next_version(shared.clock.now_ms());
    let glob = Arc::new(Glob::new(pattern.as_bytes()));
    let l1 = shared.mail.invalidate_pattern(glob.clone()).await?;
    let l2 = shared
        .tiers
        .invalidate_pattern_behind_l1(pattern.as_bytes(), version)
        .await;
    if l2.is_some() {
        // A read that missed L1 after the first pass may have filled from L2 a value the
        // tombstones then replaced; this instance does not apply its own event, so it
        // drops what matches again (a newer write is read back from L2).
        shared.mail.invalidate_pattern(glob).await?;
    }
    Ok(Invalidated { l1, l2 })
}

/// Re-fetches a key from the origin through its owner, superseding fills in flight, and
/// stores it in every tier.
pub async fn refresh(shared: &Shared, key: &[u8]) -> Result<Result<Filled, FillError>, ShardGone> {
    to_owner(shared, key, |hash, key, reply| OwnerMessage::Fill {
        hash,
        key,
        mode: FillMode::Refresh,
        reply,
    })
    .await
}

/// Other instances wrote or deleted these keys, each with its write's version: each
/// owner drops its entries older than that (a version of zero, from an instance that
/// predates versions, drops them all). One message per owner for the whole batch.
/// Returns how many were dropped.
pub async fn drop_older(
    shared: &Shared,
    keys: Vec<(Vec<u8>, Version)>,
) -> Result<usize, ShardGone> {
    let mut per_shard: Vec<Vec<(u64, Vec<u8>, Version)>> = vec![Vec::new(); shared.router.shards()];
    for (key, version) in keys {
        shared.tiers.observe(version);
        let hash = shared.router.hash(&key);
        per_shard[shared.router.shard_of(hash)].push((hash, key, version));
    }
    let mut dropped = 0;
    for (shard, keys) in per_shard.into_iter().enumerate() {
        if !keys.is_empty() {
            dropped += shared
                .mail
                .call(shard, |reply| OwnerMessage::DropOlder { keys, reply })
                .await?;
        }
    }
    Ok(dropped)
}
