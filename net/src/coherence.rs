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

use std::collections::VecDeque;
use std::sync::Arc;

use engine::{Glob, KeyFilter};
use l2::{Action, Event, Incoming, Key, Sequencer, Streams, Verdict, Version};

use crate::core::Shared;
use crate::tiers::L2Tier;
use crate::writes;

/// Patterns remembered as applied, so their copies on the other streams are skipped.
const PATTERNS_REMEMBERED: usize = 256;

pub async fn follow(shared: Arc<Shared>) {
    let Some(tier) = &shared.tiers.l2 else { return };
    let streams = tier.publisher.streams().clone();
    let inbox = tier.client.subscribe(&streams);
    let mut sequencer = Sequencer::new(tier.instance.clone(), tier.epoch);
    let mut patterns_applied: VecDeque<(String, u64, u64)> = VecDeque::new();
    loop {
        let incoming = futures_lite::future::or(async { inbox.recv_async().await.ok() }, async {
            shared.shutdown.wait().await;
            None
        })
        .await;
        match incoming {
            None => return,
            Some(Incoming::Subscribed) => shared.subscribed.trigger(),
            Some(Incoming::Resubscribed { streams: lost }) => {
                sequencer.reset(&lost);
                let reason = "the events subscription was lost and restored";
                flush(&shared, tier, &streams, &lost, reason).await;
            }
            Some(Incoming::Event(event)) => match sequencer.observe(&event) {
                Verdict::Own | Verdict::Stale => {}
                Verdict::Apply => {
                    apply(&shared, tier, &streams, event, &mut patterns_applied).await;
                    tier.events_applied.incr();
                }
                Verdict::Gap { missed } => {
                    let reason = format!("{missed} events from {} were lost", event.instance);
                    flush(&shared, tier, &streams, &[event.stream], &reason).await;
                }
            },
        }
    }
}

async fn apply(
    shared: &Shared,
    tier: &L2Tier,
    streams: &Streams,
    event: Event,
    patterns_applied: &mut VecDeque<(String, u64, u64)>,
) {
    let keys = |keys: Vec<Key>| keys.iter().filter_map(Key::bytes).collect::<Vec<_>>();
    let version = Version(event.version);
    let result = match event.action {
        Action::Set { keys: k } | Action::Delete { keys: k } | Action::Refresh { keys: k } => {
            writes::drop_older(shared, keys(k), version).await
        }
        Action::InvalidatePattern { pattern } => {
            let id = (event.instance, event.epoch, event.version);
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
            shared
                .mail
                .invalidate_pattern(Arc::new(Glob::new(&pattern)))
                .await
        }
        Action::Flush => {
            let reason = format!("{} could not publish all its events", event.instance);
            flush(shared, tier, streams, &[event.stream], &reason).await;
            return;
        }
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not apply a coherence event");
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
