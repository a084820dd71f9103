//! The publisher's queue of coherence events, one queue per event stream: bounded, and
//! coalescing, so that a slow moment (Redis or the CPU overloaded, publishes timing out)
//! ends with fewer events to send, not with receivers flushing their L1 again and again.
//!
//! - A key already pending is not queued twice: the pending one takes the newer version
//!   (every key event means "drop entries older than this version", so one with the
//!   newest version covers both).
//! - A pattern drops the pending keys it covers and an identical pending pattern, then
//!   queues behind what is left.
//! - When a stream's queue is full, everything pending on it is replaced by one
//!   [`Action::Flush`]: receivers drop that stream's keys, which covers every event
//!   dropped. Until it is taken for publishing, the flush absorbs whatever else comes.
//!
//! Each case is counted ([`OutboxStats`]). Pure data structure: the publishing task owns
//! the I/O.

use std::collections::{HashMap, VecDeque};

use engine::Glob;

use crate::events::{Action, Key};
use crate::version::Version;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Key and pattern events that never had to be sent: a pending one covered them.
    pub coalesced: u64,
    /// Key and pattern events dropped when a stream's queue was full.
    pub overflowed: u64,
    /// Flush events queued in their place.
    pub flushes: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Set,
    Delete,
    Refresh,
}

#[derive(Debug)]
enum Item {
    Key {
        key: Vec<u8>,
        kind: KeyKind,
        version: Version,
    },
    Pattern {
        pattern: Vec<u8>,
        version: Version,
    },
    Flush {
        version: Version,
    },
}

/// One stream's pending events. Removed items leave a `None` so that positions in
/// `index` stay valid; `base` is the absolute position of `items[0]`.
#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Option<Item>>,
    base: u64,
    /// Pending key → its item's absolute position.
    index: HashMap<Vec<u8>, u64>,
    live: usize,
}

impl Queue {
    fn item_mut(&mut self, position: u64) -> &mut Option<Item> {
        &mut self.items[(position - self.base) as usize]
    }

    fn append(&mut self, item: Item) {
        if let Item::Key { key, .. } = &item {
            self.index
                .insert(key.clone(), self.base + self.items.len() as u64);
        }
        self.items.push_back(Some(item));
        self.live += 1;
    }

    fn flush_pending(&self) -> bool {
        matches!(self.items.front(), Some(Some(Item::Flush { .. })))
    }

    fn clear(&mut self) {
        self.base += self.items.len() as u64;
        self.items.clear();
        self.index.clear();
        self.live = 0;
    }
}

#[derive(Debug)]
pub struct Outbox {
    queues: Vec<Queue>,
    /// The most key and pattern events one stream holds.
    capacity: usize,
    stats: OutboxStats,
}

impl Outbox {
    pub fn new(streams: u16, capacity: usize) -> Self {
        Self {
            queues: (0..streams).map(|_| Queue::default()).collect(),
            capacity: capacity.max(1),
            stats: OutboxStats::default(),
        }
    }

    pub fn stats(&self) -> OutboxStats {
        self.stats
    }

    /// Events pending on `stream`.
    pub fn pending(&self, stream: u16) -> usize {
        self.queues[usize::from(stream)].live
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(|q| q.live == 0)
    }

    /// Queues `action` (of the write with `version`) on `stream`.
    pub fn push(&mut self, stream: u16, version: Version, action: Action) {
        let capacity = self.capacity;
        let stats = &mut self.stats;
        let queue = &mut self.queues[usize::from(stream)];
        let (kind, keys) = match action {
            Action::Set { keys } => (KeyKind::Set, keys),
            Action::Delete { keys } => (KeyKind::Delete, keys),
            Action::Refresh { keys } => (KeyKind::Refresh, keys),
            Action::InvalidatePattern { pattern } => {
                let Some(pattern) = pattern.bytes() else {
                    return;
                };
                if queue.flush_pending() {
                    stats.coalesced += 1;
                    return;
                }
                let glob = Glob::new(&pattern);
                let mut covered = 0;
                for slot in queue.items.iter_mut() {
                    let drop = match slot {
                        Some(Item::Key { key, .. }) => glob.matches(key),
                        Some(Item::Pattern { pattern: p, .. }) => *p == pattern,
                        _ => false,
                    };
                    if drop {
                        if let Some(Item::Key { key, .. }) = slot.take() {
                            queue.index.remove(&key);
                        }
                        covered += 1;
                    }
                }
                queue.live -= covered;
                stats.coalesced += covered as u64;
                if queue.live >= capacity {
                    replace_by_flush(queue, stats, version, true);
                } else {
                    queue.append(Item::Pattern { pattern, version });
                }
                return;
            }
            Action::Flush => {
                replace_by_flush(queue, stats, version, false);
                return;
            }
        };
        for key in keys.iter().filter_map(Key::bytes) {
            if queue.flush_pending() {
                stats.coalesced += 1;
                continue;
            }
            if let Some(&position) = queue.index.get(&key) {
                if let Some(Item::Key {
                    kind: k,
                    version: v,
                    ..
                }) = queue.item_mut(position)
                {
                    *k = kind;
                    *v = (*v).max(version);
                }
                stats.coalesced += 1;
            } else if queue.live >= capacity {
                replace_by_flush(queue, stats, version, true);
            } else {
                queue.append(Item::Key { key, kind, version });
            }
        }
    }

    /// Takes up to `most` pending events of `stream`, oldest first, as actions to
    /// publish: consecutive keys of the same kind and version travel in one action.
    pub fn take(&mut self, stream: u16, most: usize) -> Vec<(Version, Action)> {
        let queue = &mut self.queues[usize::from(stream)];
        let mut out: Vec<(Version, Action)> = Vec::new();
        let mut taken = 0;
        while taken < most {
            let Some(slot) = queue.items.pop_front() else {
                break;
            };
            queue.base += 1;
            let Some(item) = slot else { continue };
            queue.live -= 1;
            taken += 1;
            match item {
                Item::Key { key, kind, version } => {
                    queue.index.remove(&key);
                    extend(&mut out, version, kind, Key::new(&key));
                }
                Item::Pattern { pattern, version } => out.push((
                    version,
                    Action::InvalidatePattern {
                        pattern: Key::new(&pattern),
                    },
                )),
                Item::Flush { version } => out.push((version, Action::Flush)),
            }
        }
        if queue.live == 0 {
            queue.clear();
        }
        out
    }
}

/// Replaces everything pending on `queue` by one flush: because the queue is full
/// (`overflowing`), or because a flush was asked for.
fn replace_by_flush(
    queue: &mut Queue,
    stats: &mut OutboxStats,
    version: Version,
    overflowing: bool,
) {
    let dropped = queue.live as u64;
    let version = queue
        .items
        .iter()
        .flatten()
        .map(|item| match item {
            Item::Key { version, .. } | Item::Pattern { version, .. } | Item::Flush { version } => {
                *version
            }
        })
        .fold(version, Version::max);
    queue.clear();
    queue.append(Item::Flush { version });
    if overflowing {
        stats.overflowed += dropped;
        stats.flushes += 1;
    } else {
        stats.coalesced += dropped;
    }
}

/// Adds a key to the last action if it is of the same kind and version, else starts one.
fn extend(out: &mut Vec<(Version, Action)>, version: Version, kind: KeyKind, key: Key) {
    if let Some((v, action)) = out.last_mut() {
        if *v == version {
            match (kind, action) {
                (KeyKind::Set, Action::Set { keys })
                | (KeyKind::Delete, Action::Delete { keys })
                | (KeyKind::Refresh, Action::Refresh { keys }) => {
                    keys.push(key);
                    return;
                }
                _ => {}
            }
        }
    }
    let keys = vec![key];
    out.push((
        version,
        match kind {
            KeyKind::Set => Action::Set { keys },
            KeyKind::Delete => Action::Delete { keys },
            KeyKind::Refresh => Action::Refresh { keys },
        },
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(keys: &[&str]) -> Action {
        Action::Set {
            keys: keys.iter().map(|k| Key::new(k.as_bytes())).collect(),
        }
    }

    fn pattern(p: &str) -> Action {
        Action::InvalidatePattern {
            pattern: Key::new(p.as_bytes()),
        }
    }

    #[test]
    fn repeated_keys_collapse_to_the_newest_version() {
        let mut outbox = Outbox::new(1, 100);
        outbox.push(0, Version(1), set(&["a", "b"]));
        outbox.push(0, Version(2), set(&["a"]));
        outbox.push(0, Version(3), set(&["c"]));
        assert_eq!(outbox.pending(0), 3);
        assert_eq!(outbox.stats().coalesced, 1);
        let taken = outbox.take(0, 10);
        assert_eq!(
            taken,
            vec![
                (Version(2), set(&["a"])),
                (Version(1), set(&["b"])),
                (Version(3), set(&["c"])),
            ]
        );
        assert!(outbox.is_empty());
        // Taken keys are no longer pending: the next write of one is queued again.
        outbox.push(0, Version(4), set(&["a"]));
        assert_eq!(outbox.take(0, 10), vec![(Version(4), set(&["a"]))]);
    }

    #[test]
    fn consecutive_keys_of_one_write_travel_together() {
        let mut outbox = Outbox::new(1, 100);
        outbox.push(0, Version(5), set(&["a", "b", "c"]));
        outbox.push(
            0,
            Version(5),
            Action::Delete {
                keys: vec![Key::new(b"d")],
            },
        );
        assert_eq!(
            outbox.take(0, 2),
            vec![(Version(5), set(&["a", "b"]))],
            "at most `most` events"
        );
        assert_eq!(outbox.take(0, 10).len(), 2);
    }

    #[test]
    fn a_pattern_supersedes_the_keys_it_covers_and_its_twin() {
        let mut outbox = Outbox::new(1, 100);
        outbox.push(0, Version(1), set(&["user:1", "order:1", "user:2"]));
        outbox.push(0, Version(2), pattern("user:*"));
        outbox.push(0, Version(3), set(&["user:3"]));
        outbox.push(0, Version(4), pattern("user:*"));
        let stats = outbox.stats();
        assert_eq!(
            stats.coalesced, 4,
            "user:1, user:2, user:3 and the first pattern"
        );
        assert_eq!(
            outbox.take(0, 10),
            vec![
                (Version(1), set(&["order:1"])),
                (Version(4), pattern("user:*"))
            ]
        );
    }

    #[test]
    fn a_full_queue_becomes_one_flush_that_absorbs_what_follows() {
        let mut outbox = Outbox::new(2, 3);
        outbox.push(0, Version(1), set(&["a", "b", "c"]));
        outbox.push(1, Version(1), set(&["x"]));
        outbox.push(0, Version(7), set(&["d"]));
        outbox.push(0, Version(8), set(&["e"]));
        outbox.push(0, Version(9), pattern("*"));
        let stats = outbox.stats();
        assert_eq!(
            (stats.overflowed, stats.flushes, stats.coalesced),
            (3, 1, 2)
        );
        assert_eq!(outbox.take(0, 10), vec![(Version(7), Action::Flush)]);
        assert_eq!(
            outbox.take(1, 10),
            vec![(Version(1), set(&["x"]))],
            "other streams are untouched"
        );
        // Once the flush is taken, events queue again.
        outbox.push(0, Version(10), set(&["f"]));
        assert_eq!(outbox.take(0, 10), vec![(Version(10), set(&["f"]))]);
    }

    #[test]
    fn the_bound_holds_under_any_sequence() {
        let mut outbox = Outbox::new(1, 8);
        for i in 0..10_000u64 {
            let key = format!("k{}", (i * 7919) % 50);
            let action = if i % 97 == 0 {
                pattern("k1*")
            } else {
                set(&[&key])
            };
            outbox.push(0, Version(i), action);
            assert!(outbox.pending(0) <= 8);
            if i % 13 == 0 {
                let taken = outbox.take(0, 3);
                assert!(taken.len() <= 3);
            }
        }
    }
}
