//! Keeping this instance's L1 coherent with the others: core 0 follows the event streams
//! and mirrors what other instances did (a set, delete or refresh drops the keys' entries
//! older than the event's version, so a value already read from L2 stays; a pattern
//! invalidation drops what matches; the next read fetches from L2). Invalidations go
//! through the owners, which fence fills in flight.
//!
//! Pub/sub is at most once, so a sequence gap on a stream, a lost and restored
//! subscription, or a sender's flush event (its queue overflowed) flushes L1 — only the
//! keys of the streams concerned, so on a cluster a lost shard costs that shard's keys.
//! A pattern travels on every stream (it may cover keys of any) and is applied once.
//!
//! Under client tracking (`CACHE_COHERENCE=tracking`) key changes come from Redis as
//! invalidations of the keys this instance read, and only patterns and flushes use the
//! channel; a lost tracked connection flushes L1.

use std::collections::VecDeque;
use std::sync::Arc;

use engine::{Glob, KeyFilter};
use l2::{Action, Incoming, Key, Sequencer, Streams, Verdict, Version};

use crate::core::Shared;
use crate::tiers::L2Tier;
use crate::writes;

/// Patterns remembered as applied, so their copies on the other streams are skipped.
const PATTERNS_REMEMBERED: usize = 256;
/// The most events taken from the inbox at once: their keys go to each owner in one
/// message, so a busy fleet costs one owner round trip per batch, not per event.
const EVENTS_PER_BATCH: usize = 256;

pub async fn follow(shared: Arc<Shared>) {
    let Some(tier) = &shared.tiers.l2 else { return };
    let streams = tier.publisher.streams().clone();
    let inbox = tier.client.subscribe(&streams);
    let mut sequencer = Sequencer::new(tier.instance.clone(), tier.epoch);
    let mut patterns_applied: VecDeque<(String, u64, u64)> = VecDeque::new();
    loop {
        let first = futures_lite::future::or(async { inbox.recv_async().await.ok() }, async {
            shared.shutdown.wait().await;
            None
        })
        .await;
        let Some(first) = first else { return };
        let mut drops = Drops::default();
        let mut next = Some(first);
        let mut taken = 1;
        while let Some(incoming) = next {
            match incoming {
                Incoming::Subscribed => shared.subscribed.trigger(),
                Incoming::Resubscribed { streams: lost } => {
                    drops.apply(&shared, tier).await;
                    sequencer.reset(&lost);
                    let reason = "the events subscription was lost and restored";
                    flush(&shared, tier, &streams, &lost, reason).await;
                }
                Incoming::Invalidated { keys } => drops.invalidated(keys),
                Incoming::TrackingLost => {
                    drops.apply(&shared, tier).await;
                    let all = streams.all();
                    flush(
                        &shared,
                        tier,
                        &streams,
                        &all,
                        "a tracked Redis connection was lost",
                    )
                    .await;
                }
                Incoming::Event(event) => match sequencer.observe(&event) {
                    Verdict::Own | Verdict::Stale => {}
                    Verdict::Apply => match event.action {
                        Action::Set { keys }
                        | Action::Delete { keys }
                        | Action::Refresh { keys } => drops.add(keys, Version(event.version)),
                        Action::InvalidatePattern { pattern } => {
                            drops.apply(&shared, tier).await;
                            let id = (event.instance, event.epoch, event.version);
                            apply_pattern(&shared, pattern, id, &mut patterns_applied).await;
                            tier.events_applied.incr();
                        }
                        Action::Flush => {
                            drops.apply(&shared, tier).await;
                            let reason =
                                format!("{} could not publish all its events", event.instance);
                            flush(&shared, tier, &streams, &[event.stream], &reason).await;
                            tier.events_applied.incr();
                        }
                    },
                    Verdict::Gap { missed } => {
                        drops.apply(&shared, tier).await;
                        let reason = format!("{missed} events from {} were lost", event.instance);
                        flush(&shared, tier, &streams, &[event.stream], &reason).await;
                    }
                },
            }
            next = (taken < EVENTS_PER_BATCH)
                .then(|| inbox.try_recv().ok())
                .flatten();
            taken += 1;
        }
        drops.apply(&shared, tier).await;
    }
}

/// Key events taken together: each key with its write's version.
#[derive(Default)]
struct Drops {
    keys: Vec<(Vec<u8>, Version)>,
    events: usize,
}

impl Drops {
    fn add(&mut self, keys: Vec<Key>, version: Version) {
        self.keys
            .extend(keys.iter().filter_map(Key::bytes).map(|key| (key, version)));
        self.events += 1;
    }

    /// Client tracking: these keys changed, at a version not told (so whatever L1 holds
    /// goes; each key counts as an event).
    fn invalidated(&mut self, keys: Vec<Vec<u8>>) {
        self.events += keys.len();
        self.keys
            .extend(keys.into_iter().map(|key| (key, Version::ZERO)));
    }

    /// Drops the entries the events made stale, then forgets them.
    async fn apply(&mut self, shared: &Shared, tier: &L2Tier) {
        if self.events == 0 {
            return;
        }
        if let Err(e) = writes::drop_older(shared, std::mem::take(&mut self.keys)).await {
            tracing::warn!(error = %e, "could not apply coherence events");
        }
        tier.events_applied
            .add(std::mem::take(&mut self.events) as u64);
    }
}

/// A pattern invalidation (sent on every stream): applied the first time it arrives.
async fn apply_pattern(
    shared: &Shared,
    pattern: Key,
    id: (String, u64, u64),
    patterns_applied: &mut VecDeque<(String, u64, u64)>,
) {
    let Some(pattern) = pattern.bytes() else {
        return;
    };
    if patterns_applied.contains(&id) {
        return;
    }
    if patterns_applied.len() == PATTERNS_REMEMBERED {
        patterns_applied.pop_front();
    }
    patterns_applied.push_back(id);
    let glob = Arc::new(Glob::new(&pattern));
    if let Err(e) = shared.mail.invalidate_pattern(glob).await {
        tracing::warn!(error = %e, "could not apply a pattern invalidation");
    }
}

/// Drops the keys of the `lost` streams from L1 (everything when that is every stream).
async fn flush(shared: &Shared, tier: &L2Tier, streams: &Streams, lost: &[u16], reason: &str) {
    let only = (lost.len() < usize::from(streams.count())).then(|| {
        let (streams, lost) = (streams.clone(), lost.to_vec());
        KeyFilter::new(move |key| lost.contains(&streams.of_key(key)))
    });
    match shared.mail.flush(only).await {
        Ok(dropped) => tracing::warn!(dropped, streams = ?lost, "flushed L1: {reason}"),
        Err(e) => tracing::warn!(error = %e, "could not flush L1 ({reason})"),
    }
    tier.l1_flushes.incr();
}
