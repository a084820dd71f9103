//! Keeping this instance's L1 coherent with the others: core 0 follows the events channel
//! and mirrors what other instances did (a set, delete or refresh drops the keys' entries
//! older than the event's version, so a value already read from L2 stays; a pattern
//! invalidation drops what matches; the next read fetches from L2). Pub/sub is at most
//! once, so a sequence gap or a resubscribe flushes L1: nothing stale survives a lost
//! message. Invalidations go through the owners, which fence fills in flight.

use std::sync::Arc;

use engine::Glob;
use l2::{Action, Incoming, Key, Sequencer, Verdict, Version};

use crate::core::Shared;
use crate::tiers::L2Tier;
use crate::writes;

pub async fn follow(shared: Arc<Shared>) {
    let Some(tier) = &shared.tiers.l2 else { return };
    let inbox = tier.client.subscribe(&shared.config.events_channel);
    let mut sequencer = Sequencer::new(tier.instance.clone(), tier.epoch);
    loop {
        let incoming = futures_lite::future::or(async { inbox.recv_async().await.ok() }, async {
            shared.shutdown.wait().await;
            None
        })
        .await;
        match incoming {
            None => return,
            Some(Incoming::Subscribed) => shared.subscribed.trigger(),
            Some(Incoming::Resubscribed) => {
                sequencer.reset();
                flush(
                    &shared,
                    tier,
                    "the events subscription was lost and restored",
                )
                .await;
            }
            Some(Incoming::Event(event)) => match sequencer.observe(&event) {
                Verdict::Own | Verdict::Stale => {}
                Verdict::Apply => {
                    apply(&shared, Version(event.version), event.action).await;
                    tier.events_applied.incr();
                }
                Verdict::Gap { missed } => {
                    let reason = format!("{missed} events from {} were lost", event.instance);
                    flush(&shared, tier, &reason).await;
                }
            },
        }
    }
}

async fn apply(shared: &Shared, version: Version, action: Action) {
    let keys = |keys: Vec<Key>| keys.iter().filter_map(Key::bytes).collect::<Vec<_>>();
    let result = match action {
        Action::Set { keys: k } | Action::Delete { keys: k } | Action::Refresh { keys: k } => {
            writes::drop_older(shared, keys(k), version).await
        }
        Action::InvalidatePattern { pattern } => match pattern.bytes() {
            Some(p) => {
                shared
                    .mail
                    .invalidate_pattern(Arc::new(Glob::new(&p)))
                    .await
            }
            None => return,
        },
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "could not apply a coherence event");
    }
}

async fn flush(shared: &Shared, tier: &L2Tier, reason: &str) {
    match shared.mail.flush().await {
        Ok(dropped) => tracing::warn!(dropped, "flushed L1: {reason}"),
        Err(e) => tracing::warn!(error = %e, "could not flush L1 ({reason})"),
    }
    tier.l1_flushes.incr();
}
