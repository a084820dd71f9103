//! ARC, the adaptive replacement cache of Megiddo and Modha (FAST '03), as a reference
//! column for `cache-bench replay`: the classic self-tuning policy, written from the
//! paper's pseudocode (Fig. 4) so that its published OLTP figures can be checked here.
//!
//! T1 holds keys seen once recently, T2 keys seen at least twice; B1 and B2 remember the
//! keys evicted from each (ghosts, no values). A hit on a ghost moves the target size `p`
//! of T1 toward the list that would have kept it.

use lru::LruCache;

pub struct Arc {
    capacity: usize,
    /// Target size of T1.
    p: f64,
    t1: LruCache<u64, ()>,
    t2: LruCache<u64, ()>,
    b1: LruCache<u64, ()>,
    b2: LruCache<u64, ()>,
}

impl Arc {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            p: 0.0,
            t1: LruCache::unbounded(),
            t2: LruCache::unbounded(),
            b1: LruCache::unbounded(),
            b2: LruCache::unbounded(),
        }
    }

    /// Requests `key`; says whether it was a hit. A miss brings the key in.
    pub fn access(&mut self, key: u64) -> bool {
        let c = self.capacity;
        if self.t1.pop(&key).is_some() || self.t2.pop(&key).is_some() {
            self.t2.put(key, ());
            return true;
        }
        if self.b1.pop(&key).is_some() {
            let delta = (self.b2.len() as f64 / (self.b1.len() + 1) as f64).max(1.0);
            self.p = (self.p + delta).min(c as f64);
            self.replace(false);
            self.t2.put(key, ());
            return false;
        }
        if self.b2.pop(&key).is_some() {
            let delta = (self.b1.len() as f64 / (self.b2.len() + 1) as f64).max(1.0);
            self.p = (self.p - delta).max(0.0);
            self.replace(true);
            self.t2.put(key, ());
            return false;
        }
        let l1 = self.t1.len() + self.b1.len();
        let total = l1 + self.t2.len() + self.b2.len();
        if l1 == c {
            if self.t1.len() < c {
                self.b1.pop_lru();
                self.replace(false);
            } else {
                self.t1.pop_lru();
            }
        } else if total >= c {
            if total == 2 * c {
                self.b2.pop_lru();
            }
            self.replace(false);
        }
        self.t1.put(key, ());
        false
    }

    /// Makes room in T1 ∪ T2, moving T1's or T2's least recent key to its ghost list.
    fn replace(&mut self, hit_in_b2: bool) {
        let t1 = self.t1.len();
        if t1 >= 1 && ((hit_in_b2 && t1 as f64 == self.p) || t1 as f64 > self.p) {
            if let Some((k, ())) = self.t1.pop_lru() {
                self.b1.put(k, ());
            }
        } else if let Some((k, ())) = self.t2.pop_lru() {
            self.b2.put(k, ());
        } else if let Some((k, ())) = self.t1.pop_lru() {
            self.b1.put(k, ());
        }
    }

    #[cfg(test)]
    fn resident(&self) -> usize {
        self.t1.len() + self.t2.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_capacity_nor_twice_that_in_history() {
        let mut arc = Arc::new(50);
        let mut x = 12345u64;
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            arc.access((x >> 33) % 400);
            assert!(arc.resident() <= 50);
            assert!(arc.resident() + arc.b1.len() + arc.b2.len() <= 100);
        }
    }

    #[test]
    fn a_scan_does_not_flush_keys_seen_twice() {
        let mut arc = Arc::new(10);
        for _ in 0..2 {
            for k in 0..5 {
                arc.access(k);
            }
        }
        for k in 100..1_000 {
            arc.access(k);
        }
        assert!(
            (0..5).all(|k| arc.access(k)),
            "the frequent keys stayed in T2"
        );
    }
}
