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
//! Each slot also carries one mark for the policy's own use, kept in the same byte as
//! the slot's region so that it costs no memory and no cache line of its own.

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

/// No slot.
const NIL: u32 = u32::MAX;

/// A slot's region (its `as u8`) and, in the top bit, its mark.
#[derive(Clone, Copy, Debug)]
struct Place(u8);

impl Place {
    const MARK: u8 = 0x80;

    fn is_marked(self) -> bool {
        self.0 & Self::MARK != 0
    }

    fn region(self) -> Region {
        match self.0 & !Self::MARK {
            0 => Region::Window,
            1 => Region::Probation,
            _ => Region::Protected,
        }
    }
}

#[derive(Debug)]
struct Slot<T> {
    item: Option<T>,
    prev: u32,
    next: u32,
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
    /// Each slot's region and mark, apart from the slots so that a slot stays 16 bytes.
    places: Vec<Place>,
    lists: [List; 3],
    vacant: Vec<u32>,
    len: usize,
}

/// Bytes the ring keeps per slot, for honest memory accounting.
pub const fn slot_bytes<T>() -> usize {
    std::mem::size_of::<Slot<T>>() + std::mem::size_of::<Place>()
}

impl<T> Ring<T> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            places: Vec::new(),
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
                    .filter(|&s| s != NIL)
                    .expect("fewer than 2^32 - 1 residents per shard");
                self.slots.push(Slot {
                    item: None,
                    prev: NIL,
                    next: NIL,
                });
                self.places.push(Place(region as u8));
                slot
            }
            Some(slot) => {
                // Not the mark of the slot's last resident.
                self.places[slot as usize] = Place(region as u8);
                slot
            }
        };
        self.slots[slot as usize].item = Some(make(slot));
        self.link(slot, region);
        self.len += 1;
        slot
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
        self.places[slot as usize].region()
    }

    /// Removes the resident of `slot`, freeing the slot.
    pub fn remove(&mut self, slot: u32) -> Option<Vacated<T>> {
        let item = self.slots.get_mut(slot as usize)?.item.take()?;
        let place = self.places[slot as usize];
        self.unlink(slot);
        self.vacant.push(slot);
        self.len -= 1;
        Some(Vacated {
            item,
            region: place.region(),
            marked: place.is_marked(),
        })
    }

    /// Marks an occupied slot (a new resident starts unmarked).
    pub fn mark(&mut self, slot: u32) {
        debug_assert!(self.get(slot).is_some(), "slot {slot} is vacant");
        self.places[slot as usize].0 |= Place::MARK;
    }

    /// Whether an occupied slot is marked.
    pub fn is_marked(&self, slot: u32) -> bool {
        self.places[slot as usize].is_marked()
    }

    /// Clears an occupied slot's mark; says whether it was marked.
    pub fn unmark(&mut self, slot: u32) -> bool {
        let place = &mut self.places[slot as usize];
        let marked = place.is_marked();
        place.0 &= !Place::MARK;
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
            list.hand = self.slots[list.hand as usize].next;
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
        let place = &mut self.places[slot as usize];
        *place = Place(region as u8 | (place.0 & Place::MARK));
        let list = &mut self.lists[region as usize];
        list.len += 1;
        if list.hand == NIL {
            list.hand = slot;
            let s = &mut self.slots[slot as usize];
            (s.prev, s.next) = (slot, slot);
            return;
        }
        let next = list.hand;
        let prev = self.slots[next as usize].prev;
        self.slots[prev as usize].next = slot;
        self.slots[next as usize].prev = slot;
        let s = &mut self.slots[slot as usize];
        (s.prev, s.next) = (prev, next);
    }

    fn unlink(&mut self, slot: u32) {
        let Slot { prev, next, .. } = self.slots[slot as usize];
        let list = &mut self.lists[self.places[slot as usize].region() as usize];
        list.len -= 1;
        if list.len == 0 {
            list.hand = NIL;
            return;
        }
        if list.hand == slot {
            list.hand = next;
        }
        self.slots[prev as usize].next = next;
        self.slots[next as usize].prev = prev;
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
            slot = ring.slots[slot as usize].next;
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
    fn removing_the_hand_moves_it_on() {
        let mut ring = Ring::new();
        let a = ring.insert_with(Window, |_| "a");
        ring.insert_with(Window, |_| "b");
        ring.remove(a);
        assert_eq!(order(&ring, Window), ["b"]);
    }
}
