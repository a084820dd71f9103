//! The CLOCK mechanism: residents in fixed slots, each slot on one of three circular
//! lists (the policy's regions), each list swept by its own hand.
//!
//! A list's hand points at its oldest resident, the next one the hand inspects; a
//! resident joins a list just behind the hand, so it is the last one the hand reaches.
//! Advancing the hand past a resident (a second chance) therefore makes it the newest
//! without moving it, which is CLOCK's whole trick. Slots never move, so a slot number is
//! a stable handle (the timer wheel files expiries by it); vacant slots are kept on a
//! stack of their numbers, and the slot array grows to the shard's high-water mark of
//! residents.
//!
//! **Lists are linked one way.** Each list keeps its hand and the slot behind it (its
//! newest), so a resident joins behind the hand, and leaves from the hand, in O(1) with
//! a single link per slot. The policy only moves residents between regions from a hand
//! ([`Ring::move_hand`]), where its sweeps find them. A resident removed anywhere else
//! (deleted, expired) leaves a tombstone: its slot stays linked, empty, and the hands
//! unlink it as they pass, so the order of the live residents is exactly what unlinking
//! it at once would have left. Where hands do not pass (a shard that is not full evicts
//! nothing), a cleaning cursor walks the list a few slots per removal, once tombstones
//! outnumber half the live residents and [`CLEAN_FLOOR`]: a list holds at most about
//! as many tombstones as residents, and a slot costs its resident and one 32-bit word.
//!
//! Each slot also carries its region and one mark for the policy's own use, in the top
//! bits of its link (slot numbers take 29 bits), so that neither costs memory of its own.

use std::ops::Range;

/// The regions of a W-TinyLFU cache, each a CLOCK list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Region {
    /// Where every new entry starts: recency decides here.
    Window = 0,
    /// Main region, entries not seen again since they entered it: the eviction side.
    Probation = 1,
    /// Main region, entries seen again while on probation.
    Protected = 2,
}

impl Region {
    /// The region numbered `index` (its `as u8`), as a snapshot stores it.
    pub fn from_index(index: u8) -> Option<Region> {
        match index {
            0 => Some(Region::Window),
            1 => Some(Region::Probation),
            2 => Some(Region::Protected),
            _ => None,
        }
    }
}

/// The bits of a link that name a slot.
const INDEX: u32 = (1 << 29) - 1;

/// No slot.
const NIL: u32 = INDEX;

/// The most slots a ring has: a link keeps a slot number in its low 29 bits, and one
/// number means "no slot".
pub const MAX_SLOTS: usize = NIL as usize;

/// Where the region sits in the link.
const REGION_SHIFT: u32 = 29;

/// The region's bits in the link.
const REGION: u32 = 3 << REGION_SHIFT;

/// The mark's bit in the link.
const MARK: u32 = 1 << 31;

/// Tombstones a list keeps beyond half its residents before its cursor cleans.
pub const CLEAN_FLOOR: usize = 64;

/// Slots the cleaning cursor walks per tombstone made while cleaning is due.
const CLEAN_STEPS: usize = 8;

#[derive(Debug)]
struct Slot<T> {
    /// The resident; `None` in a vacant slot and in a tombstone (a removed resident's
    /// slot still on its list).
    item: Option<T>,
    /// The next slot of the list in bits 0 to 28, the slot's region (its `as u8`) in
    /// bits 29 and 30, its mark in bit 31.
    link: u32,
}

impl<T> Slot<T> {
    fn next(&self) -> u32 {
        self.link & INDEX
    }

    fn set_next(&mut self, slot: u32) {
        self.link = (self.link & !INDEX) | slot;
    }

    fn region(&self) -> Region {
        match (self.link & REGION) >> REGION_SHIFT {
            0 => Region::Window,
            1 => Region::Probation,
            _ => Region::Protected,
        }
    }

    fn set_region(&mut self, region: Region) {
        self.link = (self.link & !REGION) | (region as u32) << REGION_SHIFT;
    }

    fn is_marked(&self) -> bool {
        self.link & MARK != 0
    }
}

/// A removed resident, with where it was and whether it was marked.
#[derive(Debug, PartialEq, Eq)]
pub struct Vacated<T> {
    pub item: T,
    pub region: Region,
    pub marked: bool,
}

#[derive(Clone, Copy, Debug)]
struct List {
    /// The oldest resident (never a tombstone), or NIL if the list is empty.
    hand: u32,
    /// The slot behind the hand: the newest, resident or tombstone.
    tail: u32,
    /// Residents.
    len: usize,
    /// Tombstones.
    dead: usize,
    /// The slot after which the cleaning cursor looks next, or NIL: start at the hand.
    cursor: u32,
}

const EMPTY: List = List {
    hand: NIL,
    tail: NIL,
    len: 0,
    dead: 0,
    cursor: NIL,
};

#[derive(Debug)]
pub struct Ring<T> {
    slots: Vec<Slot<T>>,
    lists: [List; 3],
    vacant: Vec<u32>,
    len: usize,
}

/// Bytes the ring keeps per slot, for honest memory accounting.
pub const fn slot_bytes<T>() -> usize {
    std::mem::size_of::<Slot<T>>()
}

impl<T> Ring<T> {
    /// A ring with room reserved for `slots` slots: address space until used, so that
    /// the slots are not copied to a larger allocation as residents come (as
    /// `TimerWheel::new` reserves its chunks).
    pub fn new(slots: usize) -> Self {
        Self {
            slots: Vec::with_capacity(slots),
            lists: [EMPTY; 3],
            vacant: Vec::new(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn region_len(&self, region: Region) -> usize {
        self.lists[region as usize].len
    }

    /// Places the resident `make` builds for the slot it will occupy as the newest of
    /// `region`; returns the slot.
    pub fn insert_with(&mut self, region: Region, make: impl FnOnce(u32) -> T) -> u32 {
        let slot = match self.vacant.pop() {
            None => {
                let slot = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&s| s < NIL)
                    .expect("fewer than 2^29 - 1 slots per shard");
                self.slots.push(Slot {
                    item: None,
                    link: NIL,
                });
                slot
            }
            Some(slot) => slot,
        };
        let s = &mut self.slots[slot as usize];
        // Not the mark of the slot's last resident.
        s.link &= !MARK;
        s.item = Some(make(slot));
        self.link(slot, region);
        self.lists[region as usize].len += 1;
        self.len += 1;
        slot
    }

    /// Starts loading `slot`'s line.
    pub fn prefetch(&self, slot: u32) {
        if let Some(s) = self.slots.get(slot as usize) {
            crate::prefetch::prefetch(s);
        }
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.item.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.item.as_mut()
    }

    /// The region of an occupied slot.
    pub fn region_of(&self, slot: u32) -> Region {
        debug_assert!(self.get(slot).is_some(), "slot {slot} is vacant");
        self.slots[slot as usize].region()
    }

    /// Removes the resident of `slot`, freeing the slot: at once if it is at its hand,
    /// else when a hand or the cleaning cursor passes its tombstone.
    pub fn remove(&mut self, slot: u32) -> Option<Vacated<T>> {
        let s = self.slots.get_mut(slot as usize)?;
        let item = s.item.take()?;
        let (region, marked) = (s.region(), s.is_marked());
        let list = &mut self.lists[region as usize];
        list.len -= 1;
        self.len -= 1;
        if list.hand == slot {
            self.unlink_hand(region);
            self.vacant.push(slot);
            self.settle(region);
        } else {
            list.dead += 1;
            self.clean(region);
        }
        Some(Vacated {
            item,
            region,
            marked,
        })
    }

    /// Marks an occupied slot (a new resident starts unmarked).
    pub fn mark(&mut self, slot: u32) {
        debug_assert!(self.get(slot).is_some(), "slot {slot} is vacant");
        self.slots[slot as usize].link |= MARK;
    }

    /// Whether an occupied slot is marked.
    pub fn is_marked(&self, slot: u32) -> bool {
        self.slots[slot as usize].is_marked()
    }

    /// Clears an occupied slot's mark; says whether it was marked.
    pub fn unmark(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        let marked = s.is_marked();
        s.link &= !MARK;
        marked
    }

    /// Moves the resident at `from`'s hand, with its mark, to be the newest of `to`;
    /// returns its slot, or `None` if `from` is empty.
    pub fn move_hand(&mut self, from: Region, to: Region) -> Option<u32> {
        let slot = self.hand(from)?;
        self.unlink_hand(from);
        self.lists[from as usize].len -= 1;
        self.settle(from);
        self.link(slot, to);
        self.lists[to as usize].len += 1;
        Some(slot)
    }

    /// The oldest resident of `region`, where its hand points.
    pub fn hand(&self, region: Region) -> Option<u32> {
        Some(self.lists[region as usize].hand).filter(|&h| h != NIL)
    }

    /// Moves `region`'s hand one resident on: the one it pointed at becomes the newest.
    pub fn advance(&mut self, region: Region) {
        let list = &mut self.lists[region as usize];
        if list.hand != NIL {
            list.tail = list.hand;
            list.hand = self.slots[list.hand as usize].next();
            self.settle(region);
        }
    }

    /// Every occupied slot with its resident, in slot order.
    /// Slots made so far, occupied or vacant: every slot's number is below this, and a
    /// slot made later has a number at or above it.
    pub fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    /// Every occupied slot numbered within `slots` with its resident, in slot order.
    pub fn iter_range(&self, slots: Range<u32>) -> impl Iterator<Item = (u32, &T)> {
        let end = self.slots.len().min(slots.end as usize);
        let start = end.min(slots.start as usize);
        self.slots[start..end]
            .iter()
            .zip(slots.start..)
            .filter_map(|(s, slot)| s.item.as_ref().map(|r| (slot, r)))
    }

    /// Links `slot` just behind `region`'s hand (its count is the caller's).
    fn link(&mut self, slot: u32, region: Region) {
        let list = &mut self.lists[region as usize];
        let next = if list.hand == NIL {
            list.hand = slot;
            slot
        } else {
            self.slots[list.tail as usize].set_next(slot);
            list.hand
        };
        list.tail = slot;
        let s = &mut self.slots[slot as usize];
        s.set_next(next);
        s.set_region(region);
    }

    /// Unlinks the slot at `region`'s hand (its count is the caller's); the hand moves to
    /// the next slot, which may be a tombstone.
    fn unlink_hand(&mut self, region: Region) {
        let list = &mut self.lists[region as usize];
        let at = list.hand;
        let next = self.slots[at as usize].next();
        if next == at {
            list.hand = NIL;
            list.tail = NIL;
        } else {
            self.slots[list.tail as usize].set_next(next);
            list.hand = next;
        }
        if list.cursor == at {
            list.cursor = NIL;
        }
    }

    /// Frees the tombstones at `region`'s hand, so that it points at a resident again.
    /// A list without tombstones needs no look at its new hand's slot, which a sweep
    /// would otherwise load a step early.
    fn settle(&mut self, region: Region) {
        loop {
            let list = &self.lists[region as usize];
            if list.dead == 0 || self.slots[list.hand as usize].item.is_some() {
                return;
            }
            let hand = list.hand;
            self.unlink_hand(region);
            self.lists[region as usize].dead -= 1;
            self.vacant.push(hand);
        }
    }

    /// Walks `region`'s cleaning cursor a few slots, freeing the tombstones it finds, if
    /// they are over their share.
    fn clean(&mut self, region: Region) {
        for _ in 0..CLEAN_STEPS {
            let list = &mut self.lists[region as usize];
            if list.dead <= list.len / 2 + CLEAN_FLOOR || list.hand == NIL {
                return;
            }
            let at = if list.cursor == NIL {
                list.hand
            } else {
                list.cursor
            };
            let next = self.slots[at as usize].next();
            // The hand is never a tombstone, so `next` is not the hand here.
            if self.slots[next as usize].item.is_none() {
                let after = self.slots[next as usize].next();
                self.slots[at as usize].set_next(after);
                if list.tail == next {
                    list.tail = at;
                }
                list.dead -= 1;
                list.cursor = at;
                self.vacant.push(next);
            } else {
                list.cursor = next;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Region::*;

    /// The residents of `region` from its hand on (tombstones left out).
    fn order(ring: &Ring<&'static str>, region: Region) -> Vec<&'static str> {
        slots_in(ring, region)
            .into_iter()
            .filter_map(|slot| ring.get(slot).copied())
            .collect()
    }

    /// Every slot on `region`'s list from its hand on, tombstones included.
    fn slots_in<T>(ring: &Ring<T>, region: Region) -> Vec<u32> {
        let mut out = Vec::new();
        let Some(start) = ring.hand(region) else {
            return out;
        };
        let mut slot = start;
        loop {
            out.push(slot);
            slot = ring.slots[slot as usize].next();
            if slot == start {
                return out;
            }
        }
    }

    #[test]
    fn newcomers_join_just_behind_the_hand() {
        let mut ring = Ring::new(0);
        for name in ["a", "b", "c"] {
            ring.insert_with(Window, |_| name);
        }
        assert_eq!(order(&ring, Window), ["a", "b", "c"]);
        ring.advance(Window);
        assert_eq!(
            order(&ring, Window),
            ["b", "c", "a"],
            "passed over: now newest"
        );
        ring.insert_with(Window, |_| "d");
        assert_eq!(order(&ring, Window), ["b", "c", "a", "d"]);
    }

    #[test]
    fn moving_and_removing_keep_every_list_whole() {
        let mut ring = Ring::new(0);
        let a = ring.insert_with(Window, |_| "a");
        let b = ring.insert_with(Window, |_| "b");
        let c = ring.insert_with(Window, |_| "c");
        assert_eq!(ring.move_hand(Window, Probation), Some(a));
        assert_eq!(ring.move_hand(Window, Probation), Some(b));
        assert_eq!(order(&ring, Window), ["c"]);
        assert_eq!(order(&ring, Probation), ["a", "b"]);
        assert_eq!(ring.move_hand(Probation, Protected), Some(a));
        assert_eq!(ring.region_of(a), Protected);
        assert_eq!(order(&ring, Probation), ["b"]);
        assert_eq!(
            ring.remove(b).map(|v| (v.item, v.region)),
            Some(("b", Probation))
        );
        assert_eq!(ring.hand(Probation), None);
        assert_eq!(ring.region_len(Probation), 0);
        assert_eq!(ring.remove(b), None, "already vacant");
        assert_eq!(ring.remove(c).map(|v| v.item), Some("c"));
        assert_eq!(ring.len(), 1);
        assert_eq!(order(&ring, Protected), ["a"]);
        assert_eq!(ring.move_hand(Window, Protected), None, "nothing to move");
    }

    #[test]
    fn a_resident_removed_behind_the_hand_leaves_a_tombstone_the_hand_frees() {
        let mut ring = Ring::new(0);
        let a = ring.insert_with(Window, |_| "a");
        let b = ring.insert_with(Window, |_| "b");
        ring.insert_with(Window, |_| "c");
        assert_eq!(ring.remove(b).map(|v| v.item), Some("b"));
        assert_eq!(order(&ring, Window), ["a", "c"]);
        assert_eq!(slots_in(&ring, Window).len(), 3, "b's slot is still linked");
        assert_eq!(ring.insert_with(Window, |_| "d"), 3, "and not reused yet");
        // The hand passes a and lands on b's tombstone, which it frees.
        ring.advance(Window);
        assert_eq!(order(&ring, Window), ["c", "d", "a"]);
        assert_eq!(slots_in(&ring, Window).len(), 3);
        assert_eq!(ring.insert_with(Window, |_| "e"), b, "now reused");
        assert_eq!(order(&ring, Window), ["c", "d", "a", "e"]);
        assert_eq!(ring.hand(Window), Some(2));
        assert_ne!(a, b);
    }

    #[test]
    fn where_no_hand_moves_the_cursor_frees_tombstones() {
        let mut ring = Ring::new(0);
        let slots: Vec<u32> = (0..1_000)
            .map(|_| ring.insert_with(Probation, |_| "x"))
            .collect();
        // Remove all but the hand's resident, never moving the hand.
        for &slot in &slots[1..] {
            ring.remove(slot);
            let list = ring.lists[Probation as usize];
            assert!(
                list.dead <= list.len / 2 + CLEAN_FLOOR + CLEAN_STEPS,
                "{} tombstones for {} residents",
                list.dead,
                list.len
            );
        }
        assert_eq!(order(&ring, Probation), ["x"]);
        // And inserts reuse freed slots rather than growing the array.
        for _ in 0..900 {
            ring.insert_with(Probation, |_| "y");
        }
        assert_eq!(ring.slots.len(), 1_000);
    }

    #[test]
    fn vacant_slots_are_reused_last_freed_first() {
        let mut ring = Ring::new(0);
        let a = ring.insert_with(Window, |_| "a");
        let b = ring.insert_with(Window, |_| "b");
        ring.insert_with(Window, |_| "c");
        // Each at the hand when removed: freed at once.
        ring.remove(a);
        ring.remove(b);
        assert_eq!(ring.insert_with(Probation, |_| "d"), b);
        assert_eq!(ring.insert_with(Probation, |_| "e"), a);
        assert_eq!(ring.iter_range(0..u32::MAX).count(), 3);
        assert_eq!(ring.slots.len(), 3, "no growth while slots are free");
    }

    #[test]
    fn a_mark_moves_with_its_resident_and_a_new_resident_starts_without_one() {
        let mut ring = Ring::new(0);
        let a = ring.insert_with(Window, |_| "a");
        ring.mark(a);
        ring.move_hand(Window, Protected);
        assert!(ring.is_marked(a));
        assert_eq!(ring.region_of(a), Protected);
        let vacated = ring.remove(a).unwrap();
        assert!(vacated.marked);
        assert_eq!(vacated.region, Protected);
        let b = ring.insert_with(Probation, |_| "b");
        assert_eq!(b, a, "the slot is reused");
        assert!(!ring.is_marked(b));
        ring.mark(b);
        assert!(ring.unmark(b));
        assert!(!ring.unmark(b), "unmarking clears the mark");
        assert_eq!(ring.region_of(b), Probation);
    }

    #[test]
    fn a_slot_is_its_resident_and_one_word() {
        assert_eq!(slot_bytes::<std::num::NonZeroU32>(), 8);
    }

    #[test]
    fn removing_the_hand_moves_it_on() {
        let mut ring = Ring::new(0);
        let a = ring.insert_with(Window, |_| "a");
        ring.insert_with(Window, |_| "b");
        ring.remove(a);
        assert_eq!(order(&ring, Window), ["b"]);
    }

    proptest::proptest! {
        /// Against a reference (each region a queue from its hand on, and a mark per
        /// resident): random inserts, moves from a hand, marks, hand advances and
        /// removals anywhere leave every list's residents in the same order, and every
        /// resident with its region and its mark; tombstones are the removed slots still
        /// linked, and no slot is both free and linked.
        #[test]
        fn matches_a_reference_model(
            ops in proptest::collection::vec((0u8..6, 0usize..64, 0u8..3), 1..400)
        ) {
            use std::collections::{HashMap, HashSet, VecDeque};
            let regions = [Window, Probation, Protected];
            let mut ring: Ring<u32> = Ring::new(0);
            let mut lists: [VecDeque<u32>; 3] = Default::default();
            let mut marks: HashMap<u32, bool> = HashMap::new();
            let mut next_name = 0u32;
            for (op, pick, r) in ops {
                let region = regions[r as usize];
                let residents: Vec<u32> = {
                    let mut v: Vec<u32> = marks.keys().copied().collect();
                    v.sort_unstable();
                    v
                };
                let chosen = (!residents.is_empty()).then(|| residents[pick % residents.len()]);
                let find = |lists: &[VecDeque<u32>; 3], slot: u32| {
                    (0..3).find_map(|l| lists[l].iter().position(|&s| s == slot).map(|i| (l, i)))
                };
                match (op, chosen) {
                    (0, _) | (_, None) => {
                        let name = next_name;
                        next_name += 1;
                        let slot = ring.insert_with(region, |_| name);
                        lists[region as usize].push_back(slot);
                        marks.insert(slot, false);
                    }
                    (1, Some(_)) => {
                        let to = regions[(r as usize + 1 + pick % 2) % 3];
                        let moved = ring.move_hand(region, to);
                        let expected = lists[region as usize].pop_front();
                        proptest::prop_assert_eq!(moved, expected);
                        if let Some(slot) = expected {
                            lists[to as usize].push_back(slot);
                        }
                    }
                    (2, Some(slot)) => {
                        ring.mark(slot);
                        marks.insert(slot, true);
                    }
                    (3, Some(slot)) => {
                        let was = marks.insert(slot, false).unwrap();
                        proptest::prop_assert_eq!(ring.unmark(slot), was);
                    }
                    (4, Some(_)) => {
                        ring.advance(region);
                        if let Some(front) = lists[region as usize].pop_front() {
                            lists[region as usize].push_back(front);
                        }
                    }
                    (_, Some(slot)) => {
                        let (l, i) = find(&lists, slot).unwrap();
                        lists[l].remove(i);
                        let marked = marks.remove(&slot).unwrap();
                        let vacated = ring.remove(slot).unwrap();
                        proptest::prop_assert_eq!((vacated.region, vacated.marked), (regions[l], marked));
                    }
                }
                let mut linked = HashSet::new();
                for (l, region) in regions.into_iter().enumerate() {
                    let on_list = slots_in(&ring, region);
                    let got: Vec<u32> = on_list
                        .iter()
                        .copied()
                        .filter(|&s| ring.get(s).is_some())
                        .collect();
                    proptest::prop_assert_eq!(&got, &lists[l].iter().copied().collect::<Vec<_>>());
                    let list = ring.lists[l];
                    proptest::prop_assert_eq!(list.len, lists[l].len());
                    proptest::prop_assert_eq!(list.dead, on_list.len() - got.len());
                    if let Some(&last) = on_list.last() {
                        proptest::prop_assert_eq!(list.tail, last);
                    }
                    for &slot in &lists[l] {
                        proptest::prop_assert_eq!(ring.region_of(slot), region);
                        proptest::prop_assert_eq!(ring.is_marked(slot), marks[&slot]);
                    }
                    linked.extend(on_list);
                }
                proptest::prop_assert_eq!(ring.len(), marks.len());
                for &free in &ring.vacant {
                    proptest::prop_assert!(!linked.contains(&free), "slot {} free and linked", free);
                }
                proptest::prop_assert_eq!(linked.len() + ring.vacant.len(), ring.slots.len());
            }
        }
    }
}
