//! The tiers behind L1, and the one order a key's writes take through them: L1 first, on
//! the key's owner core, then L2, then the coherence event for the other instances.
//!
//! Every write gets a version from the instance's [`VersionClock`] when its L1 part is
//! applied (on the owner, so one key's versions follow the order its L1 writes were
//! made in). L2 keeps the newest version of a key (a Redis script; deletions leave a
//! tombstone for a minute), so the L2 parts may reach Redis in any order, from any
//! instance, and still end with the newest write. The event carries the version, and a
//! receiver drops only entries older than it. What each caller owns: the owner applies
//! the L1 part and calls in here for the rest (`owner.rs`); multi-key and pattern
//! invalidations, which only remove from L1, are sent from the accepting core
//! (`writes.rs`).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use engine::metrics::Counter;
use l2::{Action, Envelope, Key, L2Error, Version, VersionClock, Written};

use crate::stored;

/// The Redis tier, when configured.
pub struct L2Tier {
    pub client: l2::L2,
    pub publisher: l2::Publisher,
    pub instance: String,
    /// When this run of the instance started, in microseconds (events carry it).
    pub epoch: u64,
    /// L1 flushes after lost coherence events (a sequence gap, a resubscribe or a flush
    /// event), whole or of some event streams' keys.
    pub l1_flushes: Counter,
    /// Events from other instances applied to L1.
    pub events_applied: Counter,
}

pub struct Tiers {
    pub l2: Option<L2Tier>,
    /// Versions are made only by [`Tiers::next_version`], which decides whether to make one.
    versions: VersionClock,
    /// A fault for tests (`--fault-first-l2-write-delay-ms`): the instance's first L2
    /// write waits this many milliseconds before it is sent, as if its core stalled
    /// between L1 and L2. Zero once used.
    first_write_delay_ms: AtomicU64,
}

/// This instance's version clock, tagged at random per start so that two instances'
/// versions differ in their tag.
pub fn instance_versions() -> VersionClock {
    VersionClock::new(std::collections::hash_map::RandomState::new().hash_one(std::process::id()))
}

impl Tiers {
    /// The tiers behind L1, whose writes `versions` (this instance's clock) orders.
    pub fn new(l2: Option<L2Tier>, versions: VersionClock, first_write_delay: Duration) -> Self {
        Self {
            l2,
            versions,
            first_write_delay_ms: AtomicU64::new(
                u64::try_from(first_write_delay.as_millis()).unwrap_or(u64::MAX),
            ),
        }
    }

    /// The version of a write or deletion made at `now_ms`: this instance's next one
    /// where L2 is configured, [`Version::ZERO`] where it is not. Versions order writes
    /// in L2 and against the coherence events L2 carries; without L2 nothing compares
    /// them, so none is made: a write then touches no counter shared between cores, and
    /// its L1 head is one byte (`stored`). A snapshot of such entries is refused by an
    /// instance that has L2, which could not confirm them anyway (they were never there).
    pub fn next_version(&self, now_ms: u64) -> Version {
        if self.l2.is_some() {
            self.versions.next(now_ms)
        } else {
            Version::ZERO
        }
    }

    /// Moves this instance's clock past `seen`, a version another instance wrote with,
    /// so that this instance's next write is newer.
    pub fn observe(&self, seen: Version) {
        self.versions.observe(seen);
    }

    /// What L1 keeps the versions of entries cached at `cached_at_ms` relative to.
    pub fn origin(&self, cached_at_ms: u64) -> stored::Origin {
        stored::Origin::of(&self.versions, cached_at_ms)
    }

    async fn injected_delay(&self) {
        let delay = self.first_write_delay_ms.swap(0, Ordering::Relaxed);
        if delay > 0 {
            monoio::time::sleep(Duration::from_millis(delay)).await;
        }
    }

    /// The L2 part of a client's PUT that L1 took with `version`, then its event (unless
    /// L2 holds a newer write, whose own event covers this key). `None` without L2.
    pub async fn put_behind_l1(
        &self,
        key: &[u8],
        envelope: &Envelope,
        ttl: Option<Duration>,
    ) -> Option<Result<Written, L2Error>> {
        let tier = self.l2.as_ref()?;
        self.injected_delay().await;
        let outcome = tier.client.set(key, envelope, ttl).await;
        if outcome != Ok(Written::Superseded) {
            // Sent when Redis failed too: the others drop their copies and read L2,
            // which holds this value or the previous one (the client got a 503).
            publish_keys(tier, envelope.version, [key], |keys| Action::Set { keys });
        }
        Some(outcome)
    }

    /// The L2 part of deleting `keys` with `version` (tombstones), then its event.
    pub async fn delete_behind_l1<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        version: Version,
    ) -> Option<Result<usize, L2Error>> {
        let tier = self.l2.as_ref()?;
        self.injected_delay().await;
        let outcome = tier.client.delete(keys, version).await;
        publish_keys(tier, version, keys, |keys| Action::Delete { keys });
        Some(outcome)
    }

    /// The L2 part of invalidating a pattern (tombstones for the keys L2 holds now),
    /// then its event.
    pub async fn invalidate_pattern_behind_l1(
        &self,
        pattern: &[u8],
        version: Version,
    ) -> Option<Result<usize, L2Error>> {
        let tier = self.l2.as_ref()?;
        self.injected_delay().await;
        let outcome = tier.client.delete_matching(pattern, version).await;
        tier.publisher.send(
            version,
            Action::InvalidatePattern {
                pattern: Key::new(pattern),
            },
        );
        Some(outcome)
    }

    /// Offers what a fill fetched from the origin to L2 (a refresh insists, a fill is
    /// skipped while the breaker is open), then sends its event. Says whether L1 may keep
    /// the value: not when L2 holds a newer write of the key.
    pub async fn fill_to_l2(
        &self,
        key: &[u8],
        envelope: &Envelope,
        ttl: Option<Duration>,
        refresh: bool,
    ) -> bool {
        let Some(tier) = &self.l2 else { return true };
        let outcome = if refresh {
            tier.client.set(key, envelope, ttl).await
        } else {
            tier.client.store_fill(key, envelope, ttl).await
        };
        match outcome {
            Ok(Written::Superseded) => false,
            Ok(Written::Stored { .. }) => {
                let action = if refresh {
                    |keys| Action::Refresh { keys }
                } else {
                    |keys| Action::Set { keys }
                };
                publish_keys(tier, envelope.version, [key], action);
                true
            }
            // Skipped or failed: the other instances were not offered the value, and
            // this one still serves what the origin said.
            Err(_) => true,
        }
    }
}

/// Publishes the event `action` makes of `keys`.
fn publish_keys<K: AsRef<[u8]>>(
    tier: &L2Tier,
    version: Version,
    keys: impl IntoIterator<Item = K>,
    action: fn(Vec<Key>) -> Action,
) {
    let keys = keys.into_iter().map(|k| Key::new(k.as_ref())).collect();
    tier.publisher.send(version, action(keys));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_l2_writes_make_no_version_and_keep_their_head_in_the_flags() {
        const NOW: u64 = 1_780_000_000_000;
        let tiers = Tiers::new(None, VersionClock::new(7), Duration::ZERO);
        let origin = tiers.origin(NOW);
        // Many writes in one millisecond: with versions, the ninth on would take two bytes.
        for write in 0..100 {
            let version = tiers.next_version(NOW);
            assert_eq!(version, Version::ZERO, "write {write}");
            let in_l1 = stored::in_l1(&stored::tagged(stored::BYTES, b"v"), version, origin);
            assert_eq!(in_l1.bytes, b"v", "write {write}: the value alone");
            assert_eq!(in_l1.kept().parts(), (stored::BYTES, &b"v"[..]));
        }
    }
}
