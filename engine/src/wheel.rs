//! A hierarchical timer wheel for TTLs, one per shard, owned by the shard's writer.
//!
//! Six levels of 64 slots at 1 ms resolution, laid out as in tokio's
//! `runtime/time/wheel`: level `l` slot `s` covers `64^l` ms, a timer sits on the lowest
//! level where its deadline differs from "elapsed" only within that level's span, and
//! when a slot comes due its timers either fire or drop to a lower level. Deadlines past
//! the top level's span (about 2.2 years) wait in the top level and are re-filed.
//!
//! A timer is named by its key, a small integer the caller chooses (the shard uses the
//! entry's policy slot, below 2^29). Each wheel slot's list is a chain of 64-byte chunks
//! of keys, sixteen 30-bit records and a link, so a timer takes 4 bytes, and filing one
//! appends to the list's newest chunk, which is usually in cache.
//!
//! **Records are not taken out when a timer is cancelled or moved.** Finding one would
//! take links (8 bytes a timer, as this wheel kept until 2026-12-05) and cost a cache miss
//! at each of its two neighbours on every delete, eviction and overwrite. Instead the wheel
//! keeps no deadlines and trusts no record: when a list comes due it asks the caller each
//! key's deadline as it is now, and drops the record if the key has none, or if that
//! deadline belongs on another list. It can tell, because a live timer's record always
//! sits on the list `list_for` gives its deadline at the wheel's time: filing puts it
//! there, and a list's place for a deadline does not change until the list comes due
//! (elapsed and the deadline keep agreeing above the list's level until elapsed reaches
//! the list's start). A stale record that names a key whose current deadline belongs on
//! the same list is a duplicate: it fires the same key, or moves down with it. So a key
//! may be fired more than once, and the caller must ignore a key it no longer holds (the
//! shard does, by its slot being vacant) and count each timer's end once ([`cancel`]).
//!
//! **Stale records are bounded.** When they outnumber half the live timers (and
//! `MIN_STALE`), the wheel starts filing every live timer again in a fresh set of lists:
//! a few keys per [`advance`] (the shard advances before every write), asking each key's
//! deadline, while the old set keeps firing as it comes due. Once every key below the
//! highest ever scheduled has been visited, each live timer has a record in the new set
//! (visited, or scheduled since), and the old set is dropped whole. A rebuild therefore
//! visits at most as many keys as the shard has had slots, `KEYS_PER_ADVANCE` at a time;
//! until it ends, records can reach the old set's (at most one and a half times the live
//! timers, plus the floor) and the new set's. Freed chunks are kept for reuse, so the
//! wheel's memory stays at its high-water mark. Most stale records are never made: an
//! entry written again with its TTL moves to the list it is on, and an evicting write,
//! whose entry takes the victim's slot, takes over the victim's record when the deadlines
//! share a list (see `vacated`).
//!
//! **An advance can stop part way** ([`advance_some`]): a list that comes due may hold
//! every timer filed in a span of minutes, each of which is read and fired or filed lower,
//! and a caller on a serving core cannot spend tens of milliseconds on it at once. What
//! is left of the lists taken is kept ([`Taken`]) and drained first by the next advance,
//! before any list that comes due later is taken, and the wheel's time stays at the last
//! list taken until they are empty, so timers filed meanwhile land on lists still to come.
//!
//! It is written here rather than taken from a crate because it is the product: it must
//! cost a few bytes an entry, and be driven by the caller's `now` so tests hold the clock.
//!
//! [`cancel`]: TimerWheel::cancel
//! [`advance`]: TimerWheel::advance
//! [`advance_some`]: TimerWheel::advance_some

use std::collections::VecDeque;

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Timers further out than this are clamped into the top level and re-filed.
const MAX_SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// The list of timers whose deadline had already passed when they were filed; the lists
/// of level `l`, slot `s` are numbered `l * SLOTS + s`, below it.
const OVERDUE: usize = LEVELS * SLOTS;
const LISTS: usize = OVERDUE + 1;
/// No chunk.
const NIL: u32 = u32::MAX;
/// Bits of a record: keys are below 2^30 (the shard's slots, below 2^29).
const KEY_BITS: u32 = 30;
/// Keys a chunk holds, packed in [`KEY_BITS`] each: with its link, one cache line.
const CHUNK_KEYS: usize = 16;
/// 32-bit words a chunk's keys take.
const KEY_WORDS: usize = (CHUNK_KEYS * KEY_BITS as usize).div_ceil(32);
/// Stale records the wheel tolerates beyond half its live timers before it rebuilds.
const MIN_STALE: usize = 4096;
/// Keys a rebuild visits per advance: each visit may read the key's entry (a cache miss).
const KEYS_PER_ADVANCE: u32 = 4;

/// Bytes the wheel keeps per timer, for honest memory accounting: a record and its share
/// of its chunk's link (stale records come on top, bounded as the module
/// says).
pub const TIMER_BYTES: usize = std::mem::size_of::<Chunk>().div_ceil(CHUNK_KEYS);

/// The largest key a wheel takes.
const MAX_KEY: u32 = (1 << KEY_BITS) - 1;

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Chunk {
    /// [`CHUNK_KEYS`] keys of [`KEY_BITS`] each, key `i` at bit `i * KEY_BITS` (a key
    /// may straddle two words).
    keys: [u32; KEY_WORDS],
    /// The next older chunk of the list, or the next free chunk.
    next: u32,
}

const _: () = assert!(std::mem::size_of::<Chunk>() == 64);

impl Chunk {
    /// The two words key `i` lies in, as one (the second 0 past the last), and the key's
    /// shift in it.
    fn window(&self, i: usize) -> (usize, u64, u32) {
        let bit = i * KEY_BITS as usize;
        let word = bit / 32;
        let high = self.keys.get(word + 1).map_or(0, |&w| u64::from(w));
        (
            word,
            u64::from(self.keys[word]) | high << 32,
            (bit % 32) as u32,
        )
    }

    fn key(&self, i: usize) -> u32 {
        let (_, window, shift) = self.window(i);
        (window >> shift) as u32 & MAX_KEY
    }

    fn set_key(&mut self, i: usize, key: u32) {
        let (word, window, shift) = self.window(i);
        let window = window & !(u64::from(MAX_KEY) << shift) | u64::from(key) << shift;
        self.keys[word] = window as u32;
        if let Some(high) = self.keys.get_mut(word + 1) {
            *high = (window >> 32) as u32;
        }
    }
}

/// One wheel slot's records: its newest chunk, partly filled, and older, full ones.
#[derive(Clone, Copy, Debug)]
struct List {
    newest: u32,
    /// Keys in the newest chunk.
    fill: u32,
}

const EMPTY: List = List {
    newest: NIL,
    fill: 0,
};

impl List {
    fn is_empty(self) -> bool {
        self.newest == NIL
    }
}

/// A full set of lists: the wheel's own, and during a rebuild the set it replaces.
#[derive(Clone, Debug)]
struct Lists {
    /// Each level's slots whose list holds a record, a bit per slot.
    occupied: [u64; LEVELS],
    lists: Box<[List; LISTS]>,
}

impl Lists {
    fn new() -> Self {
        Self {
            occupied: [0; LEVELS],
            lists: Box::new([EMPTY; LISTS]),
        }
    }

    /// Empties `list` and returns what it held.
    fn take(&mut self, list: usize) -> List {
        if list != OVERDUE {
            self.occupied[list / SLOTS] &= !(1 << (list % SLOTS));
        }
        std::mem::replace(&mut self.lists[list], EMPTY)
    }

    /// The list that comes due first, as time stands at `elapsed`.
    fn next_due(&self, elapsed: u64) -> Option<Due> {
        self.occupied
            .iter()
            .enumerate()
            .find_map(|(level, &occupied)| {
                if occupied == 0 {
                    return None;
                }
                let now_slot = ((elapsed / slot_span(level)) % SLOTS as u64) as u32;
                let slot =
                    (occupied.rotate_right(now_slot).trailing_zeros() + now_slot) as usize % SLOTS;
                Some(Due {
                    list: level * SLOTS + slot,
                    deadline: due_time(elapsed, level, slot),
                })
            })
    }
}

#[derive(Clone, Copy, Debug)]
struct Due {
    list: usize,
    deadline: u64,
}

/// Which set of lists a due list is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Set {
    Current,
    Replaced,
}

/// A rebuild under way: the set being replaced, and the next key to visit.
#[derive(Clone, Debug)]
struct Rebuild {
    replaced: Lists,
    next_key: u32,
}

/// What is left of a list taken when it came due, while an advance that stopped part way
/// has not drained it.
#[derive(Clone, Copy, Debug)]
struct Taken {
    records: List,
    from: TakenFrom,
}

/// How a taken list's records are judged.
#[derive(Clone, Copy, Debug)]
enum TakenFrom {
    /// The list of timers filed already due: a record whose key is due by the advance's
    /// `now` fires, any other is stale.
    Overdue,
    /// `list`, which came due at `deadline` when the wheel's time was `before`: a record
    /// whose key is due by `deadline` fires, one whose key's deadline still belongs on
    /// `list` is filed lower, any other is stale.
    List {
        list: usize,
        deadline: u64,
        before: u64,
    },
}

#[derive(Clone, Debug)]
pub struct TimerWheel {
    lists: Lists,
    rebuild: Option<Box<Rebuild>>,
    /// Lists taken and not yet drained, oldest first: an advance stopped part way.
    taken: VecDeque<Taken>,
    chunks: Vec<Chunk>,
    /// The first free chunk; free chunks are chained by their `next`.
    free: u32,
    /// Records on all lists, live and stale.
    records: usize,
    /// Live timers.
    scheduled: usize,
    /// One past the largest key ever scheduled: the keys a rebuild visits.
    key_bound: u32,
    /// Stale records tolerated beyond half the live timers ([`MIN_STALE`]; tests lower
    /// it to make rebuilds frequent).
    min_stale: usize,
    /// The key of the timer cancelled last and the list its record is on, while that
    /// record is where it was (until the next advance): a timer scheduled for the same
    /// key onto the same list takes the record over instead of filing one. This is an
    /// evicting write's case (the new entry takes the victim's slot, and under one TTL
    /// its deadline falls on the victim's list), which would otherwise leave a stale
    /// record per eviction.
    vacated: Option<(u32, usize)>,
    elapsed: u64,
    /// No list comes due before this time: [`advance`](Self::advance) to an earlier `now`
    /// has nothing to fire. A lower bound, lowered as timers are filed and made exact
    /// after each advance that does work. The shard advances the wheel before every
    /// write, so the look over the levels it saves is on every write's path.
    due_at: u64,
}

impl TimerWheel {
    /// A wheel whose time starts at `now` (ms), with room reserved for `timers` live
    /// timers. The room is address space until used (the pages are untouched), and
    /// reserving it means the chunks are not copied to a larger allocation as timers
    /// come (a pause on the writer's thread, and a freed old allocation the process may
    /// keep resident).
    pub fn new(now: u64, timers: usize) -> Self {
        Self {
            lists: Lists::new(),
            rebuild: None,
            taken: VecDeque::new(),
            chunks: Vec::with_capacity(timers.div_ceil(CHUNK_KEYS) + LISTS),
            free: NIL,
            records: 0,
            scheduled: 0,
            key_bound: 0,
            min_stale: MIN_STALE,
            vacated: None,
            elapsed: now,
            due_at: u64::MAX,
        }
    }

    /// Live timers.
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
        self.key_bound = self.key_bound.max(key + 1);
        self.scheduled += 1;
        if self.vacated == Some((key, list_for(self.elapsed, deadline))) {
            self.vacated = None;
            return;
        }
        self.file(key, deadline);
    }

    /// Moves `key`'s timer from `from` to `to`. Nothing is filed if the new deadline
    /// belongs on the list the timer's record is on, the common case of an entry
    /// written again with the same TTL.
    pub fn reschedule(&mut self, key: u32, from: u64, to: u64) {
        // During a rebuild the record may be on the set being replaced, which is dropped.
        if self.rebuild.is_none() && list_for(self.elapsed, from) == list_for(self.elapsed, to) {
            return;
        }
        self.schedule(key, to);
        self.scheduled -= 1;
    }

    /// Ends `key`'s timer, due at `deadline`: its key no longer has a deadline (removed,
    /// or written again without one). Its record is dropped when its list comes due.
    pub fn cancel(&mut self, key: u32, deadline: u64) {
        debug_assert!(self.scheduled > 0, "a timer to cancel");
        self.scheduled -= 1;
        // During a rebuild the record may be on the set being replaced, which is dropped.
        // A timer due already may have been fired, its record gone with it.
        let list = list_for(self.elapsed, deadline);
        if self.rebuild.is_none() && list != OVERDUE {
            self.vacated = Some((key, list));
        }
    }

    /// Moves time forward to `now`, calling `fire` with each key whose deadline, as
    /// `deadline_of` tells it (`None`: the key has none), is at or before `now`. A key
    /// may be fired more than once (see the module doc); one that has no deadline, or a
    /// later one, never is.
    #[inline]
    pub fn advance(
        &mut self,
        now: u64,
        deadline_of: impl Fn(u32) -> Option<u64>,
        fire: impl FnMut(u32),
    ) {
        let all_done = self.advance_some(now, usize::MAX, deadline_of, fire);
        debug_assert!(all_done, "an unbounded advance fires everything due");
    }

    /// [`advance`](Self::advance), but it stops once it has judged `limit` records (at
    /// least one chunk's worth, and whole chunks: up to `limit + 15`); returns whether
    /// every key due by `now` has been fired. The next advance goes on where it stopped.
    #[inline]
    pub fn advance_some(
        &mut self,
        now: u64,
        limit: usize,
        deadline_of: impl Fn(u32) -> Option<u64>,
        mut fire: impl FnMut(u32),
    ) -> bool {
        // The shard advances before every write, and almost always there is nothing to
        // do: no list is due, no rebuild under way or called for. Records stay where
        // they are, so `vacated` still holds.
        if now < self.due_at && self.rebuild.is_none() && !self.too_stale() {
            self.elapsed = self.elapsed.max(now);
            return true;
        }
        self.advance_with_work(now, limit.max(1), &deadline_of, &mut fire)
    }

    #[inline(never)]
    fn advance_with_work(
        &mut self,
        now: u64,
        mut budget: usize,
        deadline_of: &impl Fn(u32) -> Option<u64>,
        fire: &mut impl FnMut(u32),
    ) -> bool {
        self.vacated = None;
        let done = now < self.due_at || self.fire_due(now, &mut budget, deadline_of, fire);
        if done {
            self.elapsed = self.elapsed.max(now);
        }
        self.rebuild_step(deadline_of);
        done
    }

    /// Whether stale records are so many that a rebuild should start.
    fn too_stale(&self) -> bool {
        let stale = self.records.saturating_sub(self.scheduled);
        stale > self.scheduled / 2 + self.min_stale
    }

    /// Fires what is due by `now`, within `budget` records; returns whether it all was.
    /// One that stops leaves the wheel's time at the last list it took.
    fn fire_due(
        &mut self,
        now: u64,
        budget: &mut usize,
        deadline_of: &impl Fn(u32) -> Option<u64>,
        fire: &mut impl FnMut(u32),
    ) -> bool {
        if !self.drain_taken(now, budget, deadline_of, fire) {
            return false;
        }
        // Records here were filed already due, so one whose key's deadline is later is
        // stale.
        for set in [Set::Current, Set::Replaced] {
            if let Some(overdue) = self.set_mut(set).map(|lists| lists.take(OVERDUE)) {
                self.queue_taken(overdue, TakenFrom::Overdue);
            }
        }
        if !self.drain_taken(now, budget, deadline_of, fire) {
            return false;
        }
        while let Some((set, due)) = self.next_due() {
            if due.deadline > now {
                break;
            }
            let before = self.elapsed;
            let first = self.set_mut(set).expect("a due set").take(due.list);
            // The other set may have a list due at the same time (never on one set): it
            // must be taken now, since once time is at that list's start, the list looks
            // a whole turn of its level away.
            let other = match set {
                Set::Current => Set::Replaced,
                Set::Replaced => Set::Current,
            };
            let second = self.set_mut(other).and_then(|lists| {
                let also = lists.next_due(before)?;
                (also.deadline == due.deadline).then(|| (also.list, lists.take(also.list)))
            });
            self.elapsed = due.deadline;
            for (list, records) in std::iter::once((due.list, first)).chain(second) {
                let from = TakenFrom::List {
                    list,
                    deadline: due.deadline,
                    before,
                };
                self.queue_taken(records, from);
            }
            if !self.drain_taken(now, budget, deadline_of, fire) {
                return false;
            }
        }
        self.due_at = self.next_due().map_or(u64::MAX, |(_, due)| due.deadline);
        true
    }

    /// Queues a list taken from its set, to be drained after those taken before it.
    fn queue_taken(&mut self, records: List, from: TakenFrom) {
        if !records.is_empty() {
            self.taken.push_back(Taken { records, from });
        }
    }

    /// Drains the lists taken, oldest first, within `budget` records; returns whether
    /// they are all empty. If not, `due_at` is 0, so that the next advance goes on.
    fn drain_taken(
        &mut self,
        now: u64,
        budget: &mut usize,
        deadline_of: &impl Fn(u32) -> Option<u64>,
        fire: &mut impl FnMut(u32),
    ) -> bool {
        while let Some(Taken { records, from }) = self.taken.pop_front() {
            if *budget == 0 {
                self.taken.push_front(Taken { records, from });
                self.due_at = 0;
                return false;
            }
            let rest = self.drain_some(records, budget, |wheel, key| match from {
                TakenFrom::Overdue => {
                    if deadline_of(key).is_some_and(|deadline| deadline <= now) {
                        fire(key)
                    }
                }
                TakenFrom::List {
                    list,
                    deadline: due,
                    before,
                } => match deadline_of(key) {
                    Some(deadline) if deadline <= due => fire(key),
                    // Where this record would be if it were the timer's own.
                    Some(deadline) if list_for(before, deadline) == list => {
                        wheel.file(key, deadline)
                    }
                    _ => {}
                },
            });
            if !rest.is_empty() {
                self.taken.push_front(Taken {
                    records: rest,
                    from,
                });
                self.due_at = 0;
                return false;
            }
        }
        true
    }

    /// A rebuild's next keys, or the start of one if stale records are too many.
    fn rebuild_step(&mut self, deadline_of: &impl Fn(u32) -> Option<u64>) {
        let Some(rebuild) = &self.rebuild else {
            if self.too_stale() {
                self.rebuild = Some(Box::new(Rebuild {
                    replaced: std::mem::replace(&mut self.lists, Lists::new()),
                    next_key: 0,
                }));
            }
            return;
        };
        let first = rebuild.next_key;
        let end = first.saturating_add(KEYS_PER_ADVANCE).min(self.key_bound);
        for key in first..end {
            if let Some(deadline) = deadline_of(key) {
                self.file(key, deadline);
            }
        }
        if end < self.key_bound {
            self.rebuild.as_mut().expect("a rebuild").next_key = end;
            return;
        }
        let replaced = self.rebuild.take().expect("a rebuild").replaced;
        for list in replaced.lists.iter() {
            self.drain(*list, |_, _| {});
        }
    }

    /// The earliest time at which [`advance`](Self::advance) would fire something, if any
    /// timer is scheduled (a lower bound: a list comes due before its last timer, and
    /// may hold only stale records).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.scheduled == 0 {
            return None;
        }
        let overdue = self.sets().any(|lists| !lists.lists[OVERDUE].is_empty());
        if overdue || !self.taken.is_empty() {
            return Some(self.elapsed);
        }
        self.next_due().map(|(_, due)| due.deadline)
    }

    /// Records on all lists, live and stale.
    #[cfg(test)]
    fn records(&self) -> usize {
        self.records
    }

    /// Lowers the stale records tolerated, so that a test's few writes rebuild (the
    /// shard's tests, which the loom build leaves out).
    #[cfg(all(test, not(engine_loom)))]
    pub(crate) fn set_min_stale(&mut self, min_stale: usize) {
        self.min_stale = min_stale;
    }

    fn sets(&self) -> impl Iterator<Item = &Lists> {
        std::iter::once(&self.lists).chain(self.rebuild.as_ref().map(|r| &r.replaced))
    }

    fn set_mut(&mut self, set: Set) -> Option<&mut Lists> {
        match set {
            Set::Current => Some(&mut self.lists),
            Set::Replaced => self.rebuild.as_mut().map(|r| &mut r.replaced),
        }
    }

    /// The list that comes due first on either set, and its set.
    fn next_due(&self) -> Option<(Set, Due)> {
        let current = self.lists.next_due(self.elapsed).map(|d| (Set::Current, d));
        let replaced = self
            .rebuild
            .as_ref()
            .and_then(|r| r.replaced.next_due(self.elapsed))
            .map(|d| (Set::Replaced, d));
        match (current, replaced) {
            (Some(c), Some(r)) => Some(if r.1.deadline < c.1.deadline { r } else { c }),
            (c, r) => c.or(r),
        }
    }

    /// Appends a record of `key` to the list where `deadline` belongs.
    fn file(&mut self, key: u32, deadline: u64) {
        let list = list_for(self.elapsed, deadline);
        if list == OVERDUE {
            self.due_at = 0;
        } else {
            let (level, slot) = (list / SLOTS, list % SLOTS);
            self.lists.occupied[level] |= 1 << slot;
            self.due_at = self.due_at.min(due_time(self.elapsed, level, slot));
        }
        let List { newest, fill } = self.lists.lists[list];
        let (newest, fill) = if newest == NIL || fill as usize == CHUNK_KEYS {
            (self.new_chunk(newest), 0)
        } else {
            (newest, fill)
        };
        self.chunks[newest as usize].set_key(fill as usize, key);
        self.lists.lists[list] = List {
            newest,
            fill: fill + 1,
        };
        self.records += 1;
    }

    /// A chunk whose next is `next`, from the free chain if it has one.
    fn new_chunk(&mut self, next: u32) -> u32 {
        if self.free != NIL {
            let chunk = self.free;
            self.free = self.chunks[chunk as usize].next;
            self.chunks[chunk as usize].next = next;
            return chunk;
        }
        let chunk = u32::try_from(self.chunks.len())
            .ok()
            .filter(|&c| c < NIL)
            .expect("fewer than 2^32 - 1 chunks of timers");
        self.chunks.push(Chunk {
            keys: [0; KEY_WORDS],
            next,
        });
        chunk
    }

    /// Frees the chunks of the detached `list`, handing each of its keys to `each`, which
    /// may file records (on chunks freed before it is called).
    fn drain(&mut self, list: List, each: impl FnMut(&mut Self, u32)) {
        let mut unbounded = usize::MAX;
        self.drain_some(list, &mut unbounded, each);
    }

    /// [`drain`](Self::drain), a chunk at a time while `budget` lasts (each key takes one
    /// from it); returns what is left of the list.
    fn drain_some(
        &mut self,
        list: List,
        budget: &mut usize,
        mut each: impl FnMut(&mut Self, u32),
    ) -> List {
        let (mut chunk, mut fill) = (list.newest, list.fill as usize);
        while chunk != NIL {
            if *budget == 0 {
                return List {
                    newest: chunk,
                    fill: fill as u32,
                };
            }
            let taken = self.chunks[chunk as usize];
            self.chunks[chunk as usize].next = self.free;
            self.free = chunk;
            self.records -= fill;
            for i in 0..fill {
                each(self, taken.key(i));
            }
            *budget = budget.saturating_sub(fill);
            chunk = taken.next;
            fill = CHUNK_KEYS;
        }
        EMPTY
    }
}

fn slot_span(level: usize) -> u64 {
    1 << (level as u32 * SLOT_BITS)
}

/// When the list of `level`, `slot` comes due, as time stands at `elapsed`.
fn due_time(elapsed: u64, level: usize, slot: usize) -> u64 {
    let slot_span = slot_span(level);
    let level_span = slot_span * SLOTS as u64;
    let level_start = elapsed & !(level_span - 1);
    let deadline = level_start + slot as u64 * slot_span;
    if deadline <= elapsed {
        // Only the top level wraps: its slots form a ring that clamped far-future
        // timers keep circling until they are close enough to drop a level.
        deadline + level_span
    } else {
        deadline
    }
}

/// The list where a timer due at `deadline` belongs when the wheel's time is `elapsed`.
fn list_for(elapsed: u64, deadline: u64) -> usize {
    if deadline <= elapsed {
        return OVERDUE;
    }
    let level = level_for(elapsed, deadline);
    let slot = ((deadline >> (level as u32 * SLOT_BITS)) % SLOTS as u64) as usize;
    level * SLOTS + slot
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
mod tests;
