//! The CLOCK mechanism: residents in fixed slots, each slot on one of three circular
//! lists (the policy's regions), each list swept by its own hand.
//!
//! A list's hand points at its oldest resident, the next one the hand inspects; a
//! resident joins a list just behind the hand, so it is the last one the hand reaches.
//! Advancing the hand past a resident (a second chance) therefore makes it the newest
//! without moving it, which is CLOCK's whole trick. Moving a resident to another region
//! is an O(1) unlink and link. Slots never move, so a slot number is a stable handle
//! (the timer wheel files expiries by it); vacant slots are kept on a stack of their
//! numbers, and the slot array grows to the shard's high-water mark of residents.
//!
//! Each slot also carries its region and one mark for the policy's own use, in the top
//! bits of its two links (slot numbers take 30 bits), so that neither costs memory or a
//! cache line of its own: a slot is its resident and two 32-bit words.

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
const INDEX: u32 = (1 << 30) - 1;

/// No slot.
const NIL: u32 = INDEX;

/// The most slots a ring has: a link keeps a slot number in its low 30 bits, and one
/// number means "no slot".
pub const MAX_SLOTS: usize = NIL as usize;

/// Where the region sits in `prev`.
const REGION_SHIFT: u32 = 30;

/// The mark's bit in `next`.
const MARK: u32 = 1 << 31;

#[derive(Debug)]
struct Slot<T> {
    item: Option<T>,
    /// The previous slot of the list in bits 0 to 29; the slot's region (its `as u8`)
    /// in bits 30 and 31.
    prev: u32,
    /// The next slot of the list in bits 0 to 29; the slot's mark in bit 31.
    next: u32,
}

impl<T> Slot<T> {
    fn prev(&self) -> u32 {
        self.prev & INDEX
    }

    fn next(&self) -> u32 {
        self.next & INDEX
    }

    fn set_prev(&mut self, slot: u32) {
        self.prev = (self.prev & !INDEX) | slot;
    }

    fn set_next(&mut self, slot: u32) {
        self.next = (self.next & !INDEX) | slot;
    }

    fn region(&self) -> Region {
        match self.prev >> REGION_SHIFT {
            0 => Region::Window,
            1 => Region::Probation,
            _ => Region::Protected,
        }
    }

    fn set_region(&mut self, region: Region) {
        self.prev = self.prev() | (region as u32) << REGION_SHIFT;
    }

    fn is_marked(&self) -> bool {
        self.next & MARK != 0
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
    hand: u32,
    len: usize,
}

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
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            lists: [List { hand: NIL, len: 0 }; 3],
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
                    .expect("fewer than 2^30 - 1 residents per shard");
                self.slots.push(Slot {
                    item: None,
                    prev: NIL,
                    next: NIL,
                });
                slot
            }
            Some(slot) => slot,
        };
        let s = &mut self.slots[slot as usize];
        // Not the mark of the slot's last resident.
        s.next &= !MARK;
        s.item = Some(make(slot));
        self.link(slot, region);
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

    /// Removes the resident of `slot`, freeing the slot.
    pub fn remove(&mut self, slot: u32) -> Option<Vacated<T>> {
        let s = self.slots.get_mut(slot as usize)?;
        let item = s.item.take()?;
        let (region, marked) = (s.region(), s.is_marked());
        self.unlink(slot);
        self.vacant.push(slot);
        self.len -= 1;
        Some(Vacated {
            item,
            region,
            marked,
        })
    }

    /// Marks an occupied slot (a new resident starts unmarked).
    pub fn mark(&mut self, slot: u32) {
        debug_assert!(self.get(slot).is_some(), "slot {slot} is vacant");
        self.slots[slot as usize].next |= MARK;
    }

    /// Whether an occupied slot is marked.
    pub fn is_marked(&self, slot: u32) -> bool {
        self.slots[slot as usize].is_marked()
    }

    /// Clears an occupied slot's mark; says whether it was marked.
    pub fn unmark(&mut self, slot: u32) -> bool {
        let s = &mut self.slots[slot as usize];
        let marked = s.is_marked();
        s.next &= !MARK;
        marked
    }

    /// Moves an occupied slot, with its mark, to be the newest of `region`.
    pub fn move_to(&mut self, slot: u32, region: Region) {
        debug_assert!(self.get(slot).is_some(), "slot {slot} is vacant");
        self.unlink(slot);
        self.link(slot, region);
    }

    /// The oldest resident of `region`, where its hand points.
    pub fn hand(&self, region: Region) -> Option<u32> {
        Some(self.lists[region as usize].hand).filter(|&h| h != NIL)
    }

    /// Moves `region`'s hand one resident on: the one it pointed at becomes the newest.
    pub fn advance(&mut self, region: Region) {
        let list = &mut self.lists[region as usize];
        if list.hand != NIL {
            list.hand = self.slots[list.hand as usize].next();
        }
    }

    /// Every occupied slot with its resident, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.iter_from(0)
    }

    /// Every occupied slot from `first` on with its resident, in slot order.
    pub fn iter_from(&self, first: u32) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .skip(first as usize)
            .filter_map(|(slot, s)| s.item.as_ref().map(|r| (slot as u32, r)))
    }

    /// Links `slot` just behind `region`'s hand.
    fn link(&mut self, slot: u32, region: Region) {
        let list = &mut self.lists[region as usize];
        list.len += 1;
        let (prev, next) = if list.hand == NIL {
            list.hand = slot;
            (slot, slot)
        } else {
            let next = list.hand;
            let prev = self.slots[next as usize].prev();
            self.slots[prev as usize].set_next(slot);
            self.slots[next as usize].set_prev(slot);
            (prev, next)
        };
        let s = &mut self.slots[slot as usize];
        s.set_prev(prev);
        s.set_next(next);
        s.set_region(region);
    }

    fn unlink(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let (prev, next) = (s.prev(), s.next());
        let list = &mut self.lists[s.region() as usize];
        list.len -= 1;
        if list.len == 0 {
            list.hand = NIL;
            return;
        }
        if list.hand == slot {
            list.hand = next;
        }
        self.slots[prev as usize].set_next(next);
        self.slots[next as usize].set_prev(prev);
    }
}

impl<T> Default for Ring<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Region::*;

    /// The residents of `region` from its hand on.
    fn order(ring: &Ring<&'static str>, region: Region) -> Vec<&'static str> {
        let mut out = Vec::new();
        let Some(start) = ring.hand(region) else {
            return out;
        };
        let mut slot = start;
        loop {
            out.push(*ring.get(slot).unwrap());
            slot = ring.slots[slot as usize].next();
            if slot == start {
                return out;
            }
        }
    }

    #[test]
    fn newcomers_join_just_behind_the_hand() {
        let mut ring = Ring::new();
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
        let mut ring = Ring::new();
        let a = ring.insert_with(Window, |_| "a");
        let b = ring.insert_with(Window, |_| "b");
        let c = ring.insert_with(Window, |_| "c");
        ring.move_to(a, Probation);
        ring.move_to(b, Probation);
        assert_eq!(order(&ring, Window), ["c"]);
        assert_eq!(order(&ring, Probation), ["a", "b"]);
        ring.move_to(a, Protected);
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
    }

    #[test]
    fn vacant_slots_are_reused_last_freed_first() {
        let mut ring = Ring::new();
        let a = ring.insert_with(Window, |_| "a");
        let b = ring.insert_with(Window, |_| "b");
        ring.insert_with(Window, |_| "c");
        ring.remove(a);
        ring.remove(b);
        assert_eq!(ring.insert_with(Probation, |_| "d"), b);
        assert_eq!(ring.insert_with(Probation, |_| "e"), a);
        assert_eq!(ring.iter().count(), 3);
        assert_eq!(ring.slots.len(), 3, "no growth while slots are free");
    }

    #[test]
    fn a_mark_moves_with_its_resident_and_a_new_resident_starts_without_one() {
        let mut ring = Ring::new();
        let a = ring.insert_with(Window, |_| "a");
        ring.mark(a);
        ring.move_to(a, Protected);
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
    fn a_slot_is_its_resident_and_two_words() {
        assert_eq!(slot_bytes::<std::ptr::NonNull<u8>>(), 16);
    }

    proptest::proptest! {
        /// Against a reference (each region a queue from its hand on, and a mark per
        /// resident): random inserts, moves, marks, hand advances and removals leave every
        /// list in the same order, and every resident with its region and its mark, however
        /// its neighbours' links were rewritten around it.
        #[test]
        fn matches_a_reference_model(
            ops in proptest::collection::vec((0u8..6, 0usize..64, 0u8..3), 1..300)
        ) {
            use std::collections::{HashMap, VecDeque};
            let regions = [Window, Probation, Protected];
            let mut ring: Ring<u32> = Ring::new();
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
                    (1, Some(slot)) => {
                        let (l, i) = find(&lists, slot).unwrap();
                        lists[l].remove(i);
                        lists[region as usize].push_back(slot);
                        ring.move_to(slot, region);
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
                for (l, region) in regions.into_iter().enumerate() {
                    let mut got = Vec::new();
                    if let Some(start) = ring.hand(region) {
                        let mut slot = start;
                        loop {
                            got.push(slot);
                            slot = ring.slots[slot as usize].next();
                            if slot == start {
                                break;
                            }
                        }
                    }
                    proptest::prop_assert_eq!(&got, &lists[l].iter().copied().collect::<Vec<_>>());
                    proptest::prop_assert_eq!(ring.region_len(region), lists[l].len());
                    for &slot in &lists[l] {
                        proptest::prop_assert_eq!(ring.region_of(slot), region);
                        proptest::prop_assert_eq!(ring.is_marked(slot), marks[&slot]);
                    }
                }
                proptest::prop_assert_eq!(ring.len(), marks.len());
            }
        }
    }

    #[test]
    fn removing_the_hand_moves_it_on() {
        let mut ring = Ring::new();
        let a = ring.insert_with(Window, |_| "a");
        ring.insert_with(Window, |_| "b");
        ring.remove(a);
        assert_eq!(order(&ring, Window), ["b"]);
    }
}
