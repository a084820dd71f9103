//! A hierarchical timer wheel for TTLs, one per shard, owned by the shard's writer.
//!
//! Six levels of 64 slots at 1 ms resolution, laid out as in tokio's
//! `runtime/time/wheel`: level `l` slot `s` covers `64^l` ms, a timer sits on the lowest
//! level where its deadline differs from "elapsed" only within that level's span, and
//! when a slot comes due its timers either fire or drop to a lower level. Deadlines past
//! the top level's span (about 2.2 years) wait in the top level and are re-filed.
//!
//! A timer is named by its key, a small integer the caller chooses (the shard uses the
//! entry's policy slot), and lives at that index of one array: each wheel slot is an
//! intrusive, circular, doubly-linked list through it, so schedule and cancel are O(1) and
//! need no handle. Each list's head is a sentinel in the same array, ahead of the keys,
//! so a timer is only its two 32-bit links: unlinking one never needs to know which list
//! it is on (a list is left empty exactly when the timer's two neighbours are one node,
//! which can only be the list's sentinel). A timer costs 8 bytes with no allocation of
//! its own. The wheel does not keep deadlines either: the caller already keeps each
//! entry's, and says it when asked (`advance`'s `deadline_of`). It is written here rather
//! than taken from a crate because it is the product: it must cost a few bytes an entry,
//! and be driven by the caller's `now` so tests hold the clock.

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Timers further out than this are clamped into the top level and re-filed.
const MAX_SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// The list of timers whose deadline had already passed when they were filed; the lists
/// of level `l`, slot `s` are numbered `l * SLOTS + s`, below it.
const OVERDUE: u32 = (LEVELS * SLOTS) as u32;
/// Lists, hence sentinels ahead of the first key's links.
const LISTS: u32 = OVERDUE + 1;
/// No link: the links of a key with no timer.
const NIL: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Links {
    prev: u32,
    next: u32,
}

const UNSCHEDULED: Links = Links {
    prev: NIL,
    next: NIL,
};

#[derive(Clone, Copy, Debug)]
struct Due {
    level: usize,
    slot: usize,
    deadline: u64,
}

#[derive(Clone, Debug)]
pub struct TimerWheel {
    /// Each level's slots that hold a timer, a bit per slot.
    occupied: [u64; LEVELS],
    /// The lists' sentinels, then each key's links (see [`node`]).
    links: Vec<Links>,
    elapsed: u64,
    scheduled: usize,
    /// No list comes due before this time: [`advance`](Self::advance) to an earlier `now`
    /// has nothing to do. A lower bound, lowered as timers are filed and made exact
    /// after each advance that does work (a cancel may leave it early, which only costs
    /// that advance a look). The shard advances the wheel before every write, so the look
    /// over the levels it saves is on every write's path.
    due_at: u64,
}

/// Bytes the wheel keeps per key, for honest memory accounting.
pub const TIMER_BYTES: usize = std::mem::size_of::<Links>();

/// The largest key a wheel takes: its links' index must stay below `NIL`, which means "no link".
pub const MAX_KEY: u32 = NIL - 1 - LISTS;

/// Where `key`'s links are.
fn node(key: u32) -> u32 {
    key + LISTS
}

impl TimerWheel {
    /// A wheel whose time starts at `now` (ms).
    pub fn new(now: u64) -> Self {
        Self {
            occupied: [0; LEVELS],
            links: (0..LISTS)
                .map(|list| Links {
                    prev: list,
                    next: list,
                })
                .collect(),
            elapsed: now,
            scheduled: 0,
            due_at: u64::MAX,
        }
    }

    pub fn len(&self) -> usize {
        self.scheduled
    }

    pub fn is_empty(&self) -> bool {
        self.scheduled == 0
    }

    /// Schedules a timer for `key`, which has none, to fire at `deadline` (ms). A
    /// deadline already reached fires on the next [`advance`](Self::advance).
    pub fn schedule(&mut self, key: u32, deadline: u64) {
        assert!(key <= MAX_KEY, "key {key} is over the largest, {MAX_KEY}");
        let index = node(key) as usize;
        if index >= self.links.len() {
            self.links.resize(index + 1, UNSCHEDULED);
        }
        debug_assert_eq!(self.links[index].prev, NIL, "key {key} already has a timer");
        self.file(node(key), deadline);
        self.scheduled += 1;
    }

    /// Cancels `key`'s timer; says whether it had one.
    pub fn cancel(&mut self, key: u32) -> bool {
        if key > MAX_KEY {
            return false;
        }
        match self.links.get(node(key) as usize) {
            Some(links) if links.prev != NIL => {
                self.unlink(node(key));
                self.release(node(key));
                true
            }
            _ => false,
        }
    }

    /// Moves time forward to `now` and calls `fire` with the key of every timer whose
    /// deadline, as `deadline_of` tells it, is at or before `now`.
    pub fn advance(
        &mut self,
        now: u64,
        deadline_of: impl Fn(u32) -> u64,
        mut fire: impl FnMut(u32),
    ) {
        if now < self.due_at {
            self.elapsed = self.elapsed.max(now);
            return;
        }
        let mut at = self.take(OVERDUE);
        while at != OVERDUE {
            let next = self.links[at as usize].next;
            self.release(at);
            fire(at - LISTS);
            at = next;
        }
        while let Some(due) = self.next_due() {
            if due.deadline > now {
                break;
            }
            let list = (due.level * SLOTS + due.slot) as u32;
            self.occupied[due.level] &= !(1 << due.slot);
            self.elapsed = due.deadline;
            let mut at = self.take(list);
            while at != list {
                let next = self.links[at as usize].next;
                let key = at - LISTS;
                let deadline = deadline_of(key);
                if deadline <= due.deadline {
                    self.release(at);
                    fire(key);
                } else {
                    self.file(at, deadline);
                }
                at = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
        self.due_at = self.next_due().map_or(u64::MAX, |due| due.deadline);
    }

    /// Empties `list` and returns its first node; the nodes stay chained by their `next`
    /// links, the last one's pointing at the sentinel, which is `list` itself if it was
    /// empty. Each must be filed again or released before the chain is followed past it.
    fn take(&mut self, list: u32) -> u32 {
        let first = self.links[list as usize].next;
        self.links[list as usize] = Links {
            prev: list,
            next: list,
        };
        first
    }

    /// The earliest time at which [`advance`](Self::advance) would fire something, if any
    /// timer is scheduled (a lower bound: a slot comes due before its last timer).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.links[OVERDUE as usize].next != OVERDUE {
            return Some(self.elapsed);
        }
        self.next_due().map(|d| d.deadline)
    }

    fn next_due(&self) -> Option<Due> {
        self.occupied
            .iter()
            .enumerate()
            .find_map(|(level, &occupied)| {
                if occupied == 0 {
                    return None;
                }
                let now_slot = ((self.elapsed / slot_span(level)) % SLOTS as u64) as u32;
                let slot =
                    (occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
                Some(Due {
                    level,
                    slot,
                    deadline: self.due_time(level, slot),
                })
            })
    }

    /// When the list of `level`, `slot` comes due, as time stands.
    fn due_time(&self, level: usize, slot: usize) -> u64 {
        let slot_span = slot_span(level);
        let level_span = slot_span * SLOTS as u64;
        let level_start = self.elapsed & !(level_span - 1);
        let deadline = level_start + slot as u64 * slot_span;
        if deadline <= self.elapsed {
            // Only the top level wraps: its slots form a ring that clamped far-future
            // timers keep circling until they are close enough to drop a level.
            deadline + level_span
        } else {
            deadline
        }
    }

    /// Puts the unlinked node `at` on the list where `deadline` belongs.
    fn file(&mut self, at: u32, deadline: u64) {
        if deadline <= self.elapsed {
            self.push_front(OVERDUE, at);
            self.due_at = 0;
            return;
        }
        let level = level_for(self.elapsed, deadline);
        let slot = ((deadline >> (level as u32 * SLOT_BITS)) % SLOTS as u64) as usize;
        self.occupied[level] |= 1 << slot;
        self.push_front((level * SLOTS + slot) as u32, at);
        self.due_at = self.due_at.min(self.due_time(level, slot));
    }

    fn push_front(&mut self, list: u32, at: u32) {
        let first = self.links[list as usize].next;
        self.links[at as usize] = Links {
            prev: list,
            next: first,
        };
        self.links[first as usize].prev = at;
        self.links[list as usize].next = at;
    }

    fn unlink(&mut self, at: u32) {
        let Links { prev, next } = self.links[at as usize];
        self.links[prev as usize].next = next;
        self.links[next as usize].prev = prev;
        // Both neighbours are one node only if it is the sentinel and `at` was the last.
        if prev == next && prev != OVERDUE {
            let (level, slot) = (prev as usize / SLOTS, prev as usize % SLOTS);
            self.occupied[level] &= !(1 << slot);
        }
    }

    fn release(&mut self, at: u32) {
        self.links[at as usize] = UNSCHEDULED;
        self.scheduled -= 1;
    }
}

fn slot_span(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
}

/// The lowest level on which `deadline` and `elapsed` differ only within one slot span.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    let mut masked = (elapsed ^ deadline) | (SLOTS as u64 - 1);
    if masked >= MAX_SPAN {
        masked = MAX_SPAN - 1;
    }
    let significant = 63 - masked.leading_zeros() as usize;
    significant / SLOT_BITS as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// A wheel and the deadlines its caller keeps.
    struct Timers {
        wheel: TimerWheel,
        deadlines: HashMap<u32, u64>,
    }

    impl Timers {
        fn new(now: u64) -> Self {
            Self {
                wheel: TimerWheel::new(now),
                deadlines: HashMap::new(),
            }
        }

        fn schedule(&mut self, key: u32, deadline: u64) {
            self.deadlines.insert(key, deadline);
            self.wheel.schedule(key, deadline);
        }

        fn cancel(&mut self, key: u32) -> bool {
            self.deadlines.remove(&key);
            self.wheel.cancel(key)
        }

        fn fired(&mut self, now: u64) -> Vec<u32> {
            let mut out = Vec::new();
            let deadlines = &self.deadlines;
            self.wheel.advance(now, |k| deadlines[&k], |k| out.push(k));
            for k in &out {
                self.deadlines.remove(k);
            }
            out.sort_unstable();
            out
        }
    }

    #[test]
    fn fires_at_the_deadline_and_not_before() {
        let mut t = Timers::new(1_000);
        t.schedule(1, 1_005);
        t.schedule(2, 1_100);
        t.schedule(3, 1_000 + 70_000);
        assert_eq!(t.fired(1_004), Vec::<u32>::new());
        assert_eq!(t.fired(1_005), vec![1]);
        assert_eq!(t.fired(1_099), Vec::<u32>::new());
        assert_eq!(t.fired(1_100), vec![2]);
        assert_eq!(t.fired(70_999), Vec::<u32>::new());
        assert_eq!(t.fired(71_000), vec![3]);
        assert!(t.wheel.is_empty());
    }

    #[test]
    fn a_timer_nearer_than_every_other_is_not_skipped() {
        let mut t = Timers::new(0);
        t.schedule(1, 5_000_000);
        // Nothing is due for a long while, so these advances do no work.
        assert_eq!(t.fired(10), Vec::<u32>::new());
        assert_eq!(t.fired(20), Vec::<u32>::new());
        t.schedule(2, 25);
        assert_eq!(t.fired(24), Vec::<u32>::new());
        assert_eq!(t.fired(25), vec![2]);
        t.schedule(3, 20);
        assert_eq!(t.fired(26), vec![3], "already due when filed");
        assert_eq!(t.fired(5_000_000), vec![1]);
    }

    #[test]
    fn cancel_is_honoured_and_keys_can_be_scheduled_again() {
        let mut t = Timers::new(0);
        t.schedule(1, 10);
        t.schedule(2, 10);
        t.schedule(3, 10);
        assert!(t.cancel(2));
        assert!(t.cancel(1));
        assert!(!t.cancel(1), "no timer left to cancel");
        assert!(!t.cancel(40), "a key never seen has none");
        assert_eq!(t.wheel.len(), 1);
        assert_eq!(t.fired(10), vec![3]);
        t.schedule(2, 20);
        assert_eq!(t.fired(20), vec![2]);
        assert_eq!(TIMER_BYTES, 8);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut t = Timers::new(500);
        t.schedule(7, 100);
        assert_eq!(t.wheel.next_deadline(), Some(500));
        assert_eq!(t.fired(500), vec![7]);
    }

    #[test]
    fn far_future_deadlines_are_clamped_and_still_fire_exactly() {
        let mut t = Timers::new(0);
        let far = MAX_SPAN * 3 + 12_345;
        t.schedule(9, far);
        let mut now = 0;
        while now < far - 1 {
            now = (now + MAX_SPAN / 7).min(far - 1);
            assert!(t.fired(now).is_empty(), "fired early at {now}");
        }
        assert_eq!(t.fired(far), vec![9]);
    }

    proptest! {
        /// Against a reference (a plain list of deadlines): with random schedules, cancels
        /// and advances, exactly the live timers with deadline <= now fire, each once.
        #[test]
        fn matches_a_reference_model(
            ops in proptest::collection::vec((0u8..3, 0u64..300_000, any::<bool>()), 1..200)
        ) {
            let start = 1_700_000_000_000u64;
            let mut t = Timers::new(start);
            let mut now = start;
            // Keys are reused once free, as the shard reuses its slots.
            let mut free_keys: Vec<u32> = Vec::new();
            let mut next_key = 0u32;
            for (op, amount, flag) in ops {
                match op {
                    0 => {
                        let deadline = if flag { now + amount } else { now + amount % 100 };
                        let key = free_keys.pop().unwrap_or_else(|| {
                            next_key += 1;
                            next_key - 1
                        });
                        t.schedule(key, deadline);
                    }
                    1 if !t.deadlines.is_empty() => {
                        let mut keys: Vec<u32> = t.deadlines.keys().copied().collect();
                        keys.sort_unstable();
                        let key = keys[amount as usize % keys.len()];
                        prop_assert!(t.cancel(key));
                        free_keys.push(key);
                    }
                    _ => {
                        now += if flag { amount } else { amount % 200 };
                        let mut expected: Vec<u32> = t
                            .deadlines
                            .iter()
                            .filter(|(_, &d)| d <= now)
                            .map(|(&k, _)| k)
                            .collect();
                        expected.sort_unstable();
                        let got = t.fired(now);
                        free_keys.extend(&got);
                        prop_assert_eq!(got, expected);
                    }
                }
                prop_assert_eq!(t.wheel.len(), t.deadlines.len());
                // A list left empty by a cancel is no longer marked as holding timers.
                prop_assert_eq!(t.wheel.next_deadline().is_none(), t.deadlines.is_empty());
            }
        }
    }
}
