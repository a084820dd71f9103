//! The wheel's cases: firing at deadlines, cancels and moves that leave records,
//! stale records bounded by rebuilds, and a property test against a map of deadlines.

use super::*;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap};

/// A wheel and the deadlines its caller keeps.
struct Timers {
    wheel: TimerWheel,
    deadlines: HashMap<u32, u64>,
}

impl Timers {
    fn new(now: u64) -> Self {
        Self::with_min_stale(now, MIN_STALE)
    }

    fn with_min_stale(now: u64, min_stale: usize) -> Self {
        let mut wheel = TimerWheel::new(now, 0);
        wheel.min_stale = min_stale;
        Self {
            wheel,
            deadlines: HashMap::new(),
        }
    }

    fn schedule(&mut self, key: u32, deadline: u64) {
        assert!(self.deadlines.insert(key, deadline).is_none());
        self.wheel.schedule(key, deadline);
    }

    fn reschedule(&mut self, key: u32, deadline: u64) {
        let from = self.deadlines.insert(key, deadline).expect("a live timer");
        self.wheel.reschedule(key, from, deadline);
    }

    fn cancel(&mut self, key: u32) -> bool {
        let deadline = self.deadlines.remove(&key);
        if let Some(deadline) = deadline {
            self.wheel.cancel(key, deadline);
        }
        deadline.is_some()
    }

    /// The keys fired, once each, as the shard takes them: a key fired twice is
    /// removed once.
    fn fired(&mut self, now: u64) -> Vec<u32> {
        let (fired, done) = self.fired_some(now, usize::MAX);
        assert!(done, "an unbounded advance does all that is due");
        fired
    }

    /// [`Self::fired`], within `limit` records; and whether all that is due fired.
    fn fired_some(&mut self, now: u64, limit: usize) -> (Vec<u32>, bool) {
        let mut out = BTreeSet::new();
        let deadlines = &self.deadlines;
        let done = self.wheel.advance_some(
            now,
            limit,
            |k| deadlines.get(&k).copied(),
            |k| {
                out.insert(k);
            },
        );
        for k in &out {
            assert!(
                self.deadlines[k] <= now,
                "key {k} fired before its deadline"
            );
            self.cancel(*k);
        }
        (out.into_iter().collect(), done)
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
    assert_eq!(t.wheel.records(), 0);
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
fn cancelled_timers_do_not_fire_and_keys_can_be_scheduled_again() {
    let mut t = Timers::new(0);
    t.schedule(1, 10);
    t.schedule(2, 10);
    t.schedule(3, 10);
    assert!(t.cancel(2));
    assert!(t.cancel(1));
    assert_eq!(t.wheel.len(), 1);
    assert_eq!(
        t.wheel.records(),
        3,
        "cancelled records wait for their list"
    );
    assert_eq!(t.fired(10), vec![3]);
    assert_eq!(
        t.wheel.records(),
        0,
        "the list came due: stale records dropped"
    );
    t.schedule(2, 20);
    assert_eq!(t.fired(20), vec![2]);
    assert_eq!(TIMER_BYTES, 4);
}

#[test]
fn a_reused_key_fires_at_its_new_deadline_only() {
    let mut t = Timers::new(0);
    t.schedule(4, 100);
    t.cancel(4);
    // The same key, for another entry due later: the old record must not fire it.
    t.schedule(4, 5_000);
    assert_eq!(t.fired(100), Vec::<u32>::new());
    assert_eq!(t.fired(4_999), Vec::<u32>::new());
    assert_eq!(t.fired(5_000), vec![4]);
    // And due earlier than the old record's list.
    t.schedule(5, 9_000);
    t.cancel(5);
    t.schedule(5, 6_000);
    assert_eq!(t.fired(6_000), vec![5]);
    assert_eq!(t.fired(9_000), Vec::<u32>::new());
    assert_eq!(t.wheel.records(), 0);
}

#[test]
fn rescheduling_onto_the_same_list_files_nothing() {
    let mut t = Timers::new(0);
    t.schedule(1, 3_600_000);
    for _ in 0..100 {
        // Written again with the same TTL a moment later: the same top-level slot.
        t.reschedule(1, 3_600_001);
    }
    assert_eq!(t.wheel.records(), 1);
    t.reschedule(1, 60_000);
    assert_eq!(
        t.wheel.records(),
        2,
        "another list: a new record, the old one stale"
    );
    assert_eq!(t.fired(3_600_001), vec![1]);
    assert_eq!(t.wheel.records(), 0);
    assert!(t.wheel.is_empty());
}

#[test]
fn a_key_scheduled_right_after_its_cancel_takes_over_the_record() {
    let start = 1_700_000_000_000u64;
    let mut t = Timers::new(start);
    t.schedule(1, start + 3_600_000);
    // An eviction, and the write that takes the victim's slot, under the same TTL.
    t.cancel(1);
    t.schedule(1, start + 3_600_005);
    assert_eq!(t.wheel.records(), 1);
    // Onto another list: a record of its own.
    t.cancel(1);
    t.schedule(1, start + 60_000);
    assert_eq!(t.wheel.records(), 2);
    // An advance with nothing due leaves every record where it was: a take-over.
    t.cancel(1);
    assert!(t.fired(start + 1).is_empty());
    t.schedule(1, start + 60_000);
    assert_eq!(t.wheel.records(), 2);
    // One that works lists may have moved the record: no take-over.
    t.cancel(1);
    t.schedule(2, start + 2);
    assert_eq!(t.fired(start + 2), vec![2]);
    t.schedule(1, start + 60_000);
    assert_eq!(t.wheel.records(), 3);
    assert_eq!(t.fired(start + 60_000), vec![1]);
    assert_eq!(t.fired(start + 3_600_005), Vec::<u32>::new());
    assert_eq!(t.wheel.records(), 0);
}

#[test]
fn rescheduled_timers_fire_at_their_latest_deadline() {
    let mut t = Timers::new(0);
    t.schedule(1, 500);
    t.reschedule(1, 70_000);
    t.schedule(2, 70_000);
    t.reschedule(2, 300);
    assert_eq!(t.fired(299), Vec::<u32>::new());
    assert_eq!(t.fired(300), vec![2]);
    assert_eq!(t.fired(500), Vec::<u32>::new(), "1 was moved from 500");
    assert_eq!(t.fired(69_999), Vec::<u32>::new());
    assert_eq!(t.fired(70_000), vec![1]);
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

/// Entries written again and again, each time onto another list, with a TTL far
/// longer than the test: no list comes due, so only rebuilds can drop the stale
/// records. They stay within a few times the live timers plus the floor, and every
/// timer still fires at its deadline.
#[test]
fn stale_records_stay_bounded_by_rebuilds() {
    let start = 1_700_000_000_000u64;
    let mut t = Timers::new(start);
    let live = 1_000u32;
    for key in 0..live {
        t.schedule(key, start + 10_000_000);
    }
    let mut most = 0;
    for round in 0..40_000u64 {
        let key = (round * 7_919 % u64::from(live)) as u32;
        // Deadlines a level-3 slot (262 s) apart: always another list.
        t.reschedule(key, start + 10_000_000 + (round % 20) * 262_144);
        assert!(t.fired(start + round).is_empty());
        most = most.max(t.wheel.records());
    }
    assert!(
        most <= 4 * live as usize + 2 * MIN_STALE,
        "{most} records for {live} timers"
    );
    let end = start + 10_000_000 + 20 * 262_144;
    let fired = t.fired(end);
    assert_eq!(fired.len(), live as usize);
    assert!(t.wheel.is_empty());
}

/// During a rebuild both sets can hold the same list, due at the same time; both
/// must fire then (once time stands at a list's start, it looks a turn away).
#[test]
fn a_list_due_on_both_sets_at_once_fires_from_both() {
    let start = 1_700_000_000_000u64;
    let due = start + 100_000;
    let mut t = Timers::with_min_stale(start, 0);
    t.schedule(0, due);
    t.schedule(1, start + 10);
    t.cancel(1);
    // One stale record, over the floor: this advance starts a rebuild.
    assert!(t.fired(start + 1).is_empty());
    assert!(t.wheel.rebuild.is_some());
    // Key 0's record is on the replaced set; key 2's goes on the same list of the new.
    t.schedule(2, due);
    assert_eq!(t.fired(due), vec![0, 2]);
}

/// A coarse list of many timers comes due and is drained a few chunks per advance: each
/// stops within its limit, time stays at the list until it is drained, and timers
/// scheduled meanwhile, due or not, fire when they should.
#[test]
fn a_bounded_advance_stops_within_its_limit_and_goes_on_where_it_stopped() {
    let start = 1_000_000;
    let mut t = Timers::new(start);
    // Deadlines spread over four seconds, a minute out: one level-2 list holds them.
    for key in 0..1_000u32 {
        t.schedule(key, start + 60_000 + u64::from(key) * 4);
    }
    let now = start + 60_000 + 2_000;
    let (mut fired, mut calls) = (Vec::new(), 0);
    loop {
        let (some, done) = t.fired_some(now, 32);
        assert!(some.len() <= 32 + 15, "{} fired at once", some.len());
        fired.extend(some);
        calls += 1;
        if calls == 3 {
            // While the list is half drained: one timer already due, one not yet.
            t.schedule(5_000, now - 1);
            t.schedule(5_001, now + 10);
            t.reschedule(999, now + 20);
        }
        if done {
            break;
        }
    }
    assert!(calls > 10, "{calls} calls");
    fired.sort_unstable();
    let mut expected: Vec<u32> = (0..=500).collect();
    expected.push(5_000);
    assert_eq!(fired, expected);
    // Keys 501 to 505 are due by now + 20 (each 4 ms after the one before).
    let mut expected: Vec<u32> = (501..=505).collect();
    expected.extend([999, 5_001]);
    assert_eq!(t.fired(now + 20), expected);
    let rest = t.fired(start + 60_000 + 4_000);
    assert_eq!(rest, (506..999).collect::<Vec<u32>>());
    assert!(t.wheel.is_empty());
}

proptest! {
    /// Against a reference (a plain map of deadlines): with random schedules,
    /// reschedules, cancels, key reuse, advances and advances stopped part way (followed
    /// by more of those), exactly the live timers with deadline <= now fire, and no other
    /// key; rebuilds (made frequent here) lose no timer.
    #[test]
    fn matches_a_reference_model(
        min_stale in 0usize..8,
        ops in proptest::collection::vec((0u8..5, 0u64..300_000, any::<bool>()), 1..300)
    ) {
        let start = 1_700_000_000_000u64;
        let mut t = Timers::with_min_stale(start, min_stale);
        let mut now = start;
        // Keys are reused once free, as the shard reuses its slots.
        let mut free_keys: Vec<u32> = Vec::new();
        let mut next_key = 0u32;
        for (op, amount, flag) in ops {
            let live: Vec<u32> = {
                let mut keys: Vec<u32> = t.deadlines.keys().copied().collect();
                keys.sort_unstable();
                keys
            };
            let deadline = if flag { now + amount } else { now + amount % 100 };
            match op {
                0 => {
                    // Now and then a batch close together, so that lists span several
                    // chunks and advances stop part way through them.
                    let batch = if amount % 4 == 0 { 1 + amount % 40 } else { 1 };
                    for i in 0..batch {
                        let key = free_keys.pop().unwrap_or_else(|| {
                            next_key += 1;
                            next_key - 1
                        });
                        t.schedule(key, deadline + i * (amount % 7));
                    }
                }
                1 if !live.is_empty() => {
                    let key = live[amount as usize % live.len()];
                    prop_assert!(t.cancel(key));
                    free_keys.push(key);
                }
                2 if !live.is_empty() => {
                    let key = live[amount as usize % live.len()];
                    t.reschedule(key, deadline.saturating_sub(50));
                }
                4 => {
                    // Part of an advance: what fires is due (`fired_some` checks), and
                    // the rest fires by a later full one.
                    now += amount % 200;
                    let (got, _) = t.fired_some(now, 1 + amount as usize % 40);
                    free_keys.extend(&got);
                }
                _ => {
                    now += if flag { amount } else { amount % 200 };
                    let expected: Vec<u32> = t
                        .deadlines
                        .iter()
                        .filter(|(_, &d)| d <= now)
                        .map(|(&k, _)| k)
                        .collect::<BTreeSet<u32>>()
                        .into_iter()
                        .collect();
                    let got = t.fired(now);
                    free_keys.extend(&got);
                    prop_assert_eq!(got, expected);
                }
            }
            prop_assert_eq!(t.wheel.len(), t.deadlines.len());
            prop_assert!(t.wheel.records() >= t.wheel.len());
            prop_assert_eq!(t.wheel.next_deadline().is_none(), t.deadlines.is_empty());
            if let Some(next) = t.wheel.next_deadline() {
                let earliest = t.deadlines.values().min().copied().unwrap_or(u64::MAX);
                prop_assert!(next <= earliest.max(now), "{} after {}", next, earliest);
            }
        }
    }
}

#[test]
fn a_chunk_keeps_its_sixteen_keys_apart() {
    let mut chunk = Chunk {
        keys: [0; KEY_WORDS],
        next: 7,
    };
    let key = |i: usize, round: u32| match (i + round as usize) % 3 {
        0 => MAX_KEY - i as u32,
        1 => (i as u32) << 24 | round,
        _ => 0,
    };
    for round in 0..3 {
        for i in 0..CHUNK_KEYS {
            chunk.set_key(i, key(i, round));
        }
        for i in 0..CHUNK_KEYS {
            assert_eq!(chunk.key(i), key(i, round), "key {i}, round {round}");
        }
    }
    // Writing one key leaves its neighbours, which share its words, as they were.
    for i in 0..CHUNK_KEYS {
        chunk.set_key(i, MAX_KEY);
        for j in 0..CHUNK_KEYS {
            let expected = if j <= i { MAX_KEY } else { key(j, 2) };
            assert_eq!(chunk.key(j), expected, "key {j} after writing {i}");
        }
    }
    assert_eq!(chunk.next, 7);
}
