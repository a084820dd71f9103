//! Removing every key a predicate picks (a pattern invalidation, a flush) in steps.
//!
//! Done whole, such a removal holds the shard's writer for as long as it takes to visit
//! every slot and free what it picks: about 8 ms for a million entries when it picks
//! none, and 0.3 s when it picks them all (BENCHMARKS.md, "Invalidations in steps"). The
//! server's writer is its core's, so that would be a pause for every connection on it.
//!
//! A [`Sweep`] is begun at one moment and then visits the slots in order, a step at a
//! time, while writes go on between the steps. What it removes is what was in the shard
//! when it began: an entry written after that (a new key, an overwrite, a fill, a
//! restored entry) is spared even when its key matches and the sweep has not reached its
//! slot yet. The writer keeps, for each sweep under way, the slots ahead of it that were
//! written since it began; slots made after it began are all past its end. An entry only
//! ever keeps its slot (CLOCK's regions and the slab mover relink it, they do not move
//! it), so a slot not written since is holding what it held at the start, or nothing.
//! While any sweep is under way, the table's reclaimer seals its batches of removed
//! nodes less often (`reclaim.rs`, `BULK_BATCH`): one `membarrier` per 1,024 nodes
//! rather than per 128.

use std::collections::BTreeSet;
use std::ops::AddAssign;

use super::ShardWriter;

/// Slots a sweep step visits in the server and the library's `Cache`: at most about 75
/// µs of work when every entry visited is removed (about 0.29 µs each), 2 µs when none is.
pub const SWEEP_STEP: u32 = 256;

/// A removal begun by [`ShardWriter::begin_sweep`] and not finished. Give it back to the
/// writer that began it, step after step, until a step answers without one: until then
/// that writer notes each write ahead of it.
#[must_use = "a sweep not run to its end keeps the writer noting writes for it"]
#[derive(Debug)]
pub struct Sweep {
    id: u64,
}

/// Entries a sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Still servable (counted as deletes).
    pub live: usize,
    /// Past their TTL and stale window, so already absent to reads (counted as
    /// expirations).
    pub expired: usize,
}

impl AddAssign for Removed {
    fn add_assign(&mut self, other: Removed) {
        self.live += other.live;
        self.expired += other.expired;
    }
}

/// What one step of a sweep did.
#[derive(Debug)]
pub struct Swept {
    pub removed: Removed,
    /// The sweep, to go on with; `None` once every slot it covers was visited.
    pub unfinished: Option<Sweep>,
}

/// A sweep's place: the slots from `next` to `end` are still to visit, and `fresh` are
/// those of them written since it began.
#[derive(Debug)]
pub(super) struct Sweeping {
    id: u64,
    next: u32,
    end: u32,
    fresh: BTreeSet<u32>,
}

impl ShardWriter {
    /// Begins removing what the shard holds now; see [`ShardWriter::sweep_some`].
    pub fn begin_sweep(&mut self) -> Sweep {
        let id = self.sweeps_begun;
        self.sweeps_begun += 1;
        if self.sweeps.is_empty() {
            self.table.retire_in_bulk(true);
        }
        self.sweeps.push(Sweeping {
            id,
            next: 0,
            end: self.policy.slot_count(),
            fresh: BTreeSet::new(),
        });
        Sweep { id }
    }

    /// Visits up to `slots` (at least one) more of `sweep`'s slots and removes each
    /// entry there that was in the shard when the sweep began and whose key `doomed`
    /// picks.
    ///
    /// # Panics
    /// If `sweep` was begun by another writer.
    pub fn sweep_some(
        &mut self,
        sweep: Sweep,
        slots: u32,
        now_ms: u64,
        doomed: impl Fn(&[u8]) -> bool,
    ) -> Swept {
        let at = self
            .sweeps
            .iter()
            .position(|s| s.id == sweep.id)
            .expect("a sweep goes on with the writer that began it");
        let state = &mut self.sweeps[at];
        let from = state.next;
        let to = from.saturating_add(slots.max(1)).min(state.end);
        // The slots of this step written since the sweep began; the rest stay noted.
        let mut spared = std::mem::take(&mut state.fresh);
        state.fresh = spared.split_off(&to);
        state.next = to;
        let finished = to == state.end;
        if finished {
            self.sweeps.swap_remove(at);
        }
        let names = &self.policy.home().names;
        let window = self.config.stale_window_ms;
        let picked: Vec<(u32, bool)> = self
            .policy
            .iter_range(from..to)
            .filter(|(slot, r)| !spared.contains(slot) && doomed(r.key(names)))
            .map(|(slot, r)| (slot, r.node(names).stale_until_ms(window) > now_ms))
            .collect();
        let mut removed = Removed::default();
        for (slot, live) in picked {
            self.remove_slot(slot);
            if live {
                removed.live += 1;
            } else {
                removed.expired += 1;
            }
        }
        if finished && self.sweeps.is_empty() {
            self.table.retire_in_bulk(false);
        }
        self.metrics.deletes.add(removed.live as u64);
        self.metrics.expirations.add(removed.expired as u64);
        self.publish_levels();
        Swept {
            removed,
            unfinished: (!finished).then_some(sweep),
        }
    }

    /// Notes a write to `slot` for the sweeps that have yet to reach it.
    pub(super) fn note_write_for_sweeps(&mut self, slot: u32) {
        for sweep in &mut self.sweeps {
            if (sweep.next..sweep.end).contains(&slot) {
                sweep.fresh.insert(slot);
            }
        }
    }
}

#[cfg(all(test, not(engine_loom)))]
mod tests;
