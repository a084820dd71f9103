//! A hierarchical timer wheel for TTLs, one per shard, owned by the shard's writer.
//!
//! Six levels of 64 slots at 1 ms resolution, laid out as in tokio's
//! `runtime/time/wheel`: level `l` slot `s` covers `64^l` ms, a timer sits on the lowest
//! level where its deadline differs from "elapsed" only within that level's span, and
//! when a slot comes due its timers either fire or drop to a lower level. Deadlines past
//! the top level's span (about 2.2 years) wait in the top level and are re-filed.
//!
//! Timers live in a slab and each slot is an intrusive doubly-linked list of slab
//! indices, so schedule and cancel are O(1) and the wheel allocates only when the slab
//! grows. It is written here rather than taken from a crate because it is the product:
//! it must cancel by handle, carry a `u32` payload without boxing, and be driven by the
//! caller's `now` so tests hold the clock.

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Timers further out than this are clamped into the top level and re-filed.
const MAX_SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
const NIL: u32 = u32::MAX;
/// `level` value of a timer whose deadline had already passed when it was scheduled.
const OVERDUE: u8 = u8::MAX;
const FREE: u8 = u8::MAX - 1;

/// Handle to a scheduled timer, valid until it fires or is cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(u32);

#[derive(Clone, Debug)]
struct Timer {
    deadline: u64,
    payload: u32,
    prev: u32,
    next: u32,
    level: u8,
    slot: u8,
}

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
    timers: Vec<Timer>,
    free: Vec<u32>,
    elapsed: u64,
    scheduled: usize,
}

/// Bytes the wheel keeps per scheduled timer, for honest memory accounting.
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
            free: Vec::new(),
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

    /// Schedules `payload` to fire at `deadline` (ms). A deadline already reached fires on
    /// the next [`advance`](Self::advance).
    pub fn schedule(&mut self, deadline: u64, payload: u32) -> TimerId {
        let timer = Timer {
            deadline,
            payload,
            prev: NIL,
            next: NIL,
            level: FREE,
            slot: 0,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.timers[id as usize] = timer;
                id
            }
            None => {
                self.timers.push(timer);
                u32::try_from(self.timers.len() - 1).expect("more than 2^32 timers")
            }
        };
        self.file(id);
        self.scheduled += 1;
        TimerId(id)
    }

    /// Cancels a timer that has neither fired nor been cancelled.
    pub fn cancel(&mut self, id: TimerId) {
        debug_assert_ne!(
            self.timers[id.0 as usize].level, FREE,
            "timer cancelled twice"
        );
        self.unlink(id.0);
        self.release(id.0);
    }

    /// Moves time forward to `now` and calls `fire` with the payload of every timer whose
    /// deadline is at or before it.
    pub fn advance(&mut self, now: u64, mut fire: impl FnMut(u32)) {
        let mut id = std::mem::replace(&mut self.overdue, NIL);
        while id != NIL {
            let next = self.timers[id as usize].next;
            fire(self.timers[id as usize].payload);
            self.release(id);
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
                let timer = &self.timers[id as usize];
                let next = timer.next;
                if timer.deadline <= due.deadline {
                    fire(timer.payload);
                    self.release(id);
                } else {
                    self.file(id);
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
    fn file(&mut self, id: u32) {
        let deadline = self.timers[id as usize].deadline;
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
        self.free.push(id);
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

    fn fired(wheel: &mut TimerWheel, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.advance(now, |p| out.push(p));
        out.sort_unstable();
        out
    }

    #[test]
    fn fires_at_the_deadline_and_not_before() {
        let mut wheel = TimerWheel::new(1_000);
        wheel.schedule(1_005, 1);
        wheel.schedule(1_100, 2);
        wheel.schedule(1_000 + 70_000, 3);
        assert_eq!(fired(&mut wheel, 1_004), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 1_005), vec![1]);
        assert_eq!(fired(&mut wheel, 1_099), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 1_100), vec![2]);
        assert_eq!(fired(&mut wheel, 70_999), Vec::<u32>::new());
        assert_eq!(fired(&mut wheel, 71_000), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancel_is_honoured_and_slots_are_reused() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.schedule(10, 1);
        let b = wheel.schedule(10, 2);
        let c = wheel.schedule(10, 3);
        wheel.cancel(b);
        wheel.cancel(a);
        assert_eq!(wheel.len(), 1);
        assert_eq!(fired(&mut wheel, 10), vec![3]);
        let _ = c;
        let d = wheel.schedule(20, 4);
        assert!(d.0 <= 2, "freed slab entries are reused");
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut wheel = TimerWheel::new(500);
        wheel.schedule(100, 7);
        assert_eq!(wheel.next_deadline(), Some(500));
        assert_eq!(fired(&mut wheel, 500), vec![7]);
    }

    #[test]
    fn far_future_deadlines_are_clamped_and_still_fire_exactly() {
        let mut wheel = TimerWheel::new(0);
        let far = MAX_SPAN * 3 + 12_345;
        wheel.schedule(far, 9);
        let mut now = 0;
        while now < far - 1 {
            now = (now + MAX_SPAN / 7).min(far - 1);
            assert!(fired(&mut wheel, now).is_empty(), "fired early at {now}");
        }
        assert_eq!(fired(&mut wheel, far), vec![9]);
    }

    proptest! {
        /// Against a reference (a plain list of deadlines): with random schedules, cancels
        /// and advances, exactly the live timers with deadline <= now fire, each once.
        #[test]
        fn matches_a_reference_model(
            ops in proptest::collection::vec((0u8..3, 0u64..300_000, any::<bool>()), 1..200)
        ) {
            let start = 1_700_000_000_000u64;
            let mut wheel = TimerWheel::new(start);
            let mut now = start;
            let mut live: Vec<(TimerId, u64, u32)> = Vec::new();
            let mut next_payload = 0u32;
            for (op, amount, flag) in ops {
                match op {
                    0 => {
                        let deadline = if flag { now + amount } else { now + amount % 100 };
                        let id = wheel.schedule(deadline, next_payload);
                        live.push((id, deadline, next_payload));
                        next_payload += 1;
                    }
                    1 if !live.is_empty() => {
                        let (id, _, _) = live.swap_remove(amount as usize % live.len());
                        wheel.cancel(id);
                    }
                    _ => {
                        now += if flag { amount } else { amount % 200 };
                        let got = fired(&mut wheel, now);
                        let mut expected: Vec<u32> =
                            live.iter().filter(|t| t.1 <= now).map(|t| t.2).collect();
                        expected.sort_unstable();
                        live.retain(|t| t.1 > now);
                        prop_assert_eq!(got, expected);
                    }
                }
                prop_assert_eq!(wheel.len(), live.len());
            }
        }
    }
}
