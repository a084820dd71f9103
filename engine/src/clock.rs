//! CLOCK eviction (second chance, an approximation of LRU), owned by a shard's writer.
//!
//! Residents sit in fixed slots of a ring; a hand sweeps it. A resident whose reference
//! bit is set gets it cleared and is passed over once; the first one found unreferenced is
//! the victim. Readers on any core set the bit (see `table.rs`), so a hit costs no
//! bookkeeping on the writer. A new resident starts unreferenced and is put in the most
//! recently freed slot, which after an eviction is the victim's, just behind the hand: the
//! newcomer is the last one the hand will reach. Slots never move, so a resident's slot
//! number is a stable handle (the timer wheel files expiries by it). The ring grows to the
//! shard's high-water mark of residents, so a byte-bounded shard with few large entries
//! sweeps few holes.

/// Something with a CLOCK reference bit.
pub trait Referenced {
    /// Clears the bit and says whether it was set.
    fn take_reference(&self) -> bool;
}

#[derive(Debug)]
pub struct ClockRing<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
    hand: usize,
    len: usize,
}

/// Bytes the ring keeps per slot, for honest memory accounting.
pub const fn slot_bytes<T>() -> usize {
    std::mem::size_of::<Option<T>>() + std::mem::size_of::<u32>()
}

impl<T: Referenced> ClockRing<T> {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            hand: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Places the resident `make` builds for the slot it will occupy; returns the slot.
    pub fn insert_with(&mut self, make: impl FnOnce(u32) -> T) -> u32 {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                u32::try_from(self.slots.len() - 1).expect("more than 2^32 residents")
            }
        };
        self.slots[slot as usize] = Some(make(slot));
        self.len += 1;
        slot
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.slots.get(slot as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    /// Removes the resident of `slot`, freeing the slot.
    pub fn remove(&mut self, slot: u32) -> Option<T> {
        let resident = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        self.len -= 1;
        Some(resident)
    }

    /// Sweeps to the next victim, leaving it in place, and moves the hand past it. `spare`
    /// is never chosen (an entry being overwritten must not evict itself). Two turns of
    /// the hand are enough: the first clears every bit it passes.
    pub fn next_victim(&mut self, spare: Option<u32>) -> Option<u32> {
        let n = self.slots.len();
        for _ in 0..2 * n {
            if self.hand >= n {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let Some(resident) = &self.slots[slot] else {
                continue;
            };
            if Some(slot as u32) == spare || resident.take_reference() {
                continue;
            }
            return Some(slot as u32);
        }
        None
    }

    /// Every occupied slot with its resident, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, r)| r.as_ref().map(|r| (slot as u32, r)))
    }
}

impl<T: Referenced> Default for ClockRing<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    struct Item {
        name: &'static str,
        bit: Cell<bool>,
    }

    impl Referenced for Item {
        fn take_reference(&self) -> bool {
            self.bit.replace(false)
        }
    }

    fn item(name: &'static str) -> Item {
        Item {
            name,
            bit: Cell::new(false),
        }
    }

    #[test]
    fn referenced_residents_get_a_second_chance() {
        let mut ring = ClockRing::new();
        let k1 = ring.insert_with(|_| item("k1"));
        ring.insert_with(|_| item("k2"));
        ring.insert_with(|_| item("k3"));
        ring.get(k1).unwrap().bit.set(true);
        let victim = ring.next_victim(None).unwrap();
        assert_eq!(ring.get(victim).unwrap().name, "k2");
        ring.remove(victim);
        let k4 = ring.insert_with(|_| item("k4"));
        assert_eq!(k4, victim, "the newcomer takes the victim's slot");
        // k1 lost its bit on the first pass; the hand now points at k3.
        let victim = ring.next_victim(None).unwrap();
        assert_eq!(ring.get(victim).unwrap().name, "k3");
    }

    #[test]
    fn the_spared_slot_is_never_chosen() {
        let mut ring = ClockRing::new();
        let only = ring.insert_with(|_| item("only"));
        assert_eq!(ring.next_victim(Some(only)), None);
        let other = ring.insert_with(|_| item("other"));
        assert_eq!(ring.next_victim(Some(only)), Some(other));
    }

    #[test]
    fn all_referenced_still_yields_a_victim() {
        let mut ring = ClockRing::new();
        for name in ["a", "b", "c"] {
            let slot = ring.insert_with(|_| item(name));
            ring.get(slot).unwrap().bit.set(true);
        }
        assert!(ring.next_victim(None).is_some());
        assert_eq!(ring.len(), 3);
    }

    #[test]
    fn holes_are_skipped_and_refilled() {
        let mut ring = ClockRing::new();
        let a = ring.insert_with(|_| item("a"));
        let b = ring.insert_with(|_| item("b"));
        ring.remove(a);
        assert_eq!(ring.next_victim(None), Some(b));
        assert_eq!(ring.insert_with(|_| item("c")), a);
        assert_eq!(ring.iter().count(), 2);
    }
}
