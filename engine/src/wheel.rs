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
//! intrusive doubly-linked list through it, so schedule and cancel are O(1), need no
//! handle, and a timer costs 12 bytes with no allocation of its own. The wheel does not
//! keep deadlines either: the caller already keeps each entry's, and says it when asked
//! (`advance`'s `deadline_of`). It is written here rather than taken from a crate because
//! it is the product: it must cost a few bytes an entry, and be driven by the caller's
//! `now` so tests hold the clock.

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Timers further out than this are clamped into the top level and re-filed.
const MAX_SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
const NIL: u32 = u32::MAX;
/// `level` value of a timer whose deadline had already passed when it was scheduled.
const OVERDUE: u8 = u8::MAX;
/// `level` value of a key with no timer.
const FREE: u8 = u8::MAX - 1;

#[derive(Clone, Debug)]
struct Timer {
    prev: u32,
    next: u32,
    level: u8,
    slot: u8,
}

const UNSCHEDULED: Timer = Timer {
    prev: NIL,
    next: NIL,
    level: FREE,
    slot: 0,
};

#[derive(Clone, Debug)]
struct Level {
    heads: [u32; SLOTS],
    occupied: u64,
}

#[derive(Clone, Copy, Debug)]
struct Due {
    level: usize,
    slot: usize,
    deadline: u64,
}

#[derive(Clone, Debug)]
pub struct TimerWheel {
    levels: [Level; LEVELS],
    overdue: u32,
    /// Indexed by key.
    timers: Vec<Timer>,
    elapsed: u64,
    scheduled: usize,
}

/// Bytes the wheel keeps per key, for honest memory accounting.
pub const TIMER_BYTES: usize = std::mem::size_of::<Timer>();

impl TimerWheel {
    /// A wheel whose time starts at `now` (ms).
    pub fn new(now: u64) -> Self {
        Self {
            levels: std::array::from_fn(|_| Level {
                heads: [NIL; SLOTS],
                occupied: 0,
            }),
            overdue: NIL,
            timers: Vec::new(),
            elapsed: now,
            scheduled: 0,
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
        assert_ne!(key, NIL, "key {NIL} is reserved");
        let index = key as usize;
        if index >= self.timers.len() {
            self.timers.resize(index + 1, UNSCHEDULED);
        }
        debug_assert_eq!(
            self.timers[index].level, FREE,
            "key {key} already has a timer"
        );
        self.file(key, deadline);
        self.scheduled += 1;
    }

    /// Cancels `key`'s timer; says whether it had one.
    pub fn cancel(&mut self, key: u32) -> bool {
        match self.timers.get(key as usize) {
            Some(timer) if timer.level != FREE => {
                self.unlink(key);
                self.release(key);
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
        let mut id = std::mem::replace(&mut self.overdue, NIL);
        while id != NIL {
            let next = self.timers[id as usize].next;
            self.release(id);
            fire(id);
            id = next;
        }
        while let Some(due) = self.next_due() {
            if due.deadline > now {
                break;
            }
            let level = &mut self.levels[due.level];
            let mut id = std::mem::replace(&mut level.heads[due.slot], NIL);
            level.occupied &= !(1 << due.slot);
            self.elapsed = due.deadline;
            while id != NIL {
                let next = self.timers[id as usize].next;
                let deadline = deadline_of(id);
                if deadline <= due.deadline {
                    self.release(id);
                    fire(id);
                } else {
                    self.file(id, deadline);
                }
                id = next;
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// The earliest time at which [`advance`](Self::advance) would fire something, if any
    /// timer is scheduled (a lower bound: a slot comes due before its last timer).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.overdue != NIL {
            return Some(self.elapsed);
        }
        self.next_due().map(|d| d.deadline)
    }

    fn next_due(&self) -> Option<Due> {
        self.levels.iter().enumerate().find_map(|(level, l)| {
            if l.occupied == 0 {
                return None;
            }
            let slot_span = slot_span(level);
            let level_span = slot_span * SLOTS as u64;
            let now_slot = ((self.elapsed / slot_span) % SLOTS as u64) as u32;
            let slot =
                (l.occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
            let level_start = self.elapsed & !(level_span - 1);
            let mut deadline = level_start + slot as u64 * slot_span;
            if deadline <= self.elapsed {
                // Only the top level wraps: its slots form a ring that clamped far-future
                // timers keep circling until they are close enough to drop a level.
                deadline += level_span;
            }
            Some(Due {
                level,
                slot,
                deadline,
            })
        })
    }

    /// Puts an unlinked timer on the list where its deadline belongs.
    fn file(&mut self, id: u32, deadline: u64) {
        if deadline <= self.elapsed {
            self.push_front(id, OVERDUE, 0);
            return;
        }
        let level = level_for(self.elapsed, deadline);
        let slot = ((deadline >> (level as u32 * SLOT_BITS)) % SLOTS as u64) as usize;
        self.push_front(id, level as u8, slot as u8);
    }

    fn head_mut(&mut self, level: u8, slot: u8) -> &mut u32 {
        if level == OVERDUE {
            &mut self.overdue
        } else {
            &mut self.levels[level as usize].heads[slot as usize]
        }
    }

    fn push_front(&mut self, id: u32, level: u8, slot: u8) {
        let head = *self.head_mut(level, slot);
        {
            let timer = &mut self.timers[id as usize];
            timer.level = level;
            timer.slot = slot;
            timer.prev = NIL;
            timer.next = head;
        }
        if head != NIL {
            self.timers[head as usize].prev = id;
        }
        *self.head_mut(level, slot) = id;
        if level != OVERDUE {
            self.levels[level as usize].occupied |= 1 << slot;
        }
    }

    fn unlink(&mut self, id: u32) {
        let Timer {
            prev,
            next,
            level,
            slot,
            ..
        } = self.timers[id as usize];
        if prev != NIL {
            self.timers[prev as usize].next = next;
        } else {
            *self.head_mut(level, slot) = next;
            if next == NIL && level != OVERDUE {
                self.levels[level as usize].occupied &= !(1 << slot);
            }
        }
        if next != NIL {
            self.timers[next as usize].prev = prev;
        }
    }

    fn release(&mut self, id: u32) {
        self.timers[id as usize].level = FREE;
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
        assert_eq!(TIMER_BYTES, 12);
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
            }
        }
    }
}
