//! Which entry a full shard gives up: W-TinyLFU with an adaptive window, every region
//! swept by a CLOCK hand, owned by the shard's writer.
//!
//! - A new entry enters the **window** (`ring.rs`), where CLOCK decides by recency.
//! - An entry the window's hand pushes out is a **candidate** for the main region. While
//!   the shard has room it simply joins probation; when the shard is full it must beat
//!   the main region's victim on estimated frequency (`sketch.rs`, TinyLFU admission), or
//!   it is the one evicted. So a burst of keys seen once cannot flush keys that are asked
//!   for again and again.
//! - The main region is **probation** and **protected** (80 %). Probation's hand evicts
//!   an entry that nobody read since it entered and promotes one that was read; protected
//!   entries pass their second chance in their own ring and are demoted to probation when
//!   protected is over its share.
//! - The window's share of the shard adapts (`climber.rs`): recency-heavy workloads get a
//!   large window, frequency-heavy ones a small one.
//!
//! Readers never take part: a hit only sets the entry's reference bit (`table.rs`). The
//! owner counts a set bit as a request in the sketch when a hand passes the entry, so
//! every structural change stays with the one writer.
//!
//! A write's own request is counted late too. An insert or overwrite marks the entry's
//! slot (`ring.rs`), and the mark is counted when admission is about to compare the
//! entry (as candidate or victim), when a hand finds the entry read, or when the entry
//! leaves the shard, whichever comes first. Admission reads the key's sketch line at that
//! moment anyway, so an evicting insert touches two sketch lines (the candidate's and
//! the victim's) instead of three, and an overwrite none instead of one. Nothing reads a
//! key's frequency except to compare a candidate with a victim, so deferring a count
//! changes decisions only through the sketch's own timing (when it halves, and which
//! counters a conservative increment finds lowest); [`Policy::standing`] adds a pending
//! count in. A second write before the first is counted is counted at once.
//!
//! [`Eviction::Clock`] is this policy with a 100 % window and no admission: exactly plain
//! CLOCK, kept so that operators and benchmarks can compare.
//!
//! The policy is the product, so it is written here rather than taken from a crate: none
//! offers CLOCK hands over a single-writer, lock-free-reader table.

mod climber;
mod ring;
mod sketch;

use std::ops::Range;
use std::sync::Arc;

pub use ring::{slot_bytes, Region, MAX_SLOTS};
pub use sketch::SKETCH_BYTES_PER_ENTRY;

use crate::metrics::ShardMetrics;
use climber::Climber;
use ring::Ring;
use sketch::Sketch;

/// How a shard chooses what to evict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Eviction {
    /// W-TinyLFU on CLOCK with a window sized by hill climbing.
    #[default]
    Adaptive,
    /// Plain CLOCK (second chance): a 100 % window and no admission filter.
    Clock,
}

impl Eviction {
    pub fn name(self) -> &'static str {
        match self {
            Eviction::Adaptive => "adaptive",
            Eviction::Clock => "clock",
        }
    }
}

impl std::fmt::Display for Eviction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown eviction policy {0:?}: expected \"adaptive\" or \"clock\"")]
pub struct UnknownEviction(pub String);

impl std::str::FromStr for Eviction {
    type Err = UnknownEviction;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adaptive" => Ok(Eviction::Adaptive),
            "clock" => Ok(Eviction::Clock),
            other => Err(UnknownEviction(other.to_owned())),
        }
    }
}

/// Where a resident stands with the policy: what a snapshot keeps so that a restart
/// ranks its entries as before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    /// The key's estimated recent frequency, 0 to [`MAX_FREQUENCY`].
    pub frequency: u8,
    pub region: Region,
}

/// The sketch's counters saturate here.
pub const MAX_FREQUENCY: u8 = 15;

/// What the policy needs to know of a resident. A resident may be only a name for the
/// entry (so that a slot stays small); its [`Resident::Home`], which the policy is given,
/// keeps and hands to every call, is what the name is looked up in.
pub trait Resident {
    /// What a resident is read through: the directory its name is resolved in.
    type Home;
    /// What the frequency sketch counts the key by: a hash of it, seeded per process, of
    /// at least 32 bits.
    fn hash(&self, home: &Self::Home) -> u64;
    /// Bytes the entry is charged against the shard's byte bound.
    fn charge(&self, home: &Self::Home) -> u64;
    /// The hits readers counted since the last call, clearing them.
    fn take_hits(&self, home: &Self::Home) -> u8;
    /// The hits readers counted since the last call, leaving them.
    fn pending_hits(&self, home: &Self::Home) -> u8;
    /// Asks the CPU to start loading what the policy reads of this resident, without
    /// waiting for it.
    fn prefetch(&self, _home: &Self::Home) {}
}

/// The window's share when a shard starts (Caffeine's).
const INITIAL_WINDOW_SHARE: f64 = 0.01;
/// Protected's share of the main region.
const PROTECTED_SHARE: f64 = 0.8;
/// A candidate this frequent that loses is still admitted once in 128 (Caffeine's
/// defence against an attacker who keeps a victim artificially warm).
const WARM_CANDIDATE: u8 = 6;

/// The entries the sketch of a new shard with a byte bound is sized for; it grows by a
/// quarter at a time as the shard fills (see [`Admission::grow`]).
const FIRST_SKETCHED_ENTRIES: usize = 1 << 12;

/// The sketch's size stops growing here (2^26 entries, as the table's bucket array).
const MAX_SKETCHED_ENTRIES: usize = 1 << 26;

/// A region's bounds in entries and bytes; bytes of `u64::MAX` are no byte bound.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    entries: usize,
    bytes: u64,
}

impl Bounds {
    fn bytes_bounded(self) -> bool {
        self.bytes != u64::MAX
    }

    /// A share of `total`; a share of no byte bound is none either.
    fn share(total: Bounds, share: f64) -> Bounds {
        Bounds {
            entries: (total.entries as f64 * share).round() as usize,
            bytes: if total.bytes_bounded() {
                (total.bytes as f64 * share).round() as u64
            } else {
                u64::MAX
            },
        }
    }

    /// What is left of `self` once `part` of it is taken; what is left of no byte bound
    /// is none either, not zero.
    fn less(self, part: Bounds) -> Bounds {
        Bounds {
            entries: self.entries - part.entries.min(self.entries),
            bytes: if self.bytes_bounded() {
                self.bytes.saturating_sub(part.bytes)
            } else {
                u64::MAX
            },
        }
    }
}

/// TinyLFU's admission state.
#[derive(Debug)]
struct Admission {
    sketch: Sketch,
    /// The most entries the shard can hold, which the sketch grows to.
    most_entries: usize,
    climber: Climber,
    /// xorshift state for the warm-candidate lottery, seeded by the first candidate's
    /// hash (which the router seeds per process); 0 until then.
    random: u64,
}

impl Admission {
    /// Grows the sketch by a quarter (up to the most entries the shard can hold) once the
    /// shard holds more residents than the sketch is sized for. Under a byte bound, entries
    /// larger than the smallest leave room for fewer of them than `most_entries`; the
    /// shard then pays for the sketch of the entries it holds, not of those it might,
    /// since each entry is charged its share of the sketch (`ENTRY_OVERHEAD`). What
    /// the sketch counted is kept ([`Sketch::grow`]), so restored standings and the
    /// history of keys not resident survive. Growing costs one pass over the new table,
    /// a few milliseconds at a million entries, as sizing it at once would have. (By a
    /// quarter rather than double: a shard then holds at most a quarter more sketch than
    /// its entries are charged for, where doubling left up to twice as much, 16 bytes an
    /// entry. A shard filling to a million entries grows it 25 times instead of 8, for
    /// 2.5 times the passes in all.)
    fn grow(&mut self, residents: usize) {
        let capacity = self.sketch.capacity();
        if residents > capacity && capacity < self.most_entries {
            self.sketch.grow(
                (capacity + capacity / 4)
                    .max(residents)
                    .min(self.most_entries),
            );
        }
    }
}

#[derive(Debug)]
pub struct Policy<T: Resident> {
    ring: Ring<T>,
    /// Where the residents are read (see [`Resident::Home`]).
    home: T::Home,
    bytes: [u64; 3],
    bounds: Bounds,
    window_share: f64,
    window: Bounds,
    protected: Bounds,
    admission: Option<Admission>,
    metrics: Arc<ShardMetrics>,
    /// The key hashes [`Policy::prefetch_admission`] computed, with their slots
    /// ([`NO_SLOT`]: none): those residents are the likeliest candidate and victim of the
    /// eviction that follows, which needs their hashes again for admission and for the
    /// caller's unlinking. A hash is forgotten when its slot's resident is removed; an
    /// overwrite keeps the key, hence the hash.
    hashed: [(u32, u64); 2],
}

/// No slot, in [`Policy::hashed`].
const NO_SLOT: u32 = u32::MAX;

/// The regions whose hands hold the next eviction's likeliest candidate (the window's)
/// and victim (probation's), in [`Policy::hashed`]'s order.
const NEXT_VICTIM_REGIONS: [Region; 2] = [Region::Window, Region::Probation];

impl<T: Resident> Policy<T> {
    /// A policy for a shard bounded by `max_entries` and `max_bytes`, which can hold at
    /// most `most_entries` entries under both bounds (the sketch and the climber's sample
    /// are sized for that many).
    pub fn new(
        eviction: Eviction,
        max_entries: usize,
        max_bytes: u64,
        most_entries: usize,
        metrics: Arc<ShardMetrics>,
        home: T::Home,
    ) -> Self {
        let most_entries = most_entries.clamp(1, MAX_SKETCHED_ENTRIES);
        let bounds = Bounds {
            entries: max_entries,
            bytes: max_bytes,
        };
        let (window_share, admission) = match eviction {
            Eviction::Clock => (1.0, None),
            Eviction::Adaptive => (
                INITIAL_WINDOW_SHARE,
                Some(Admission {
                    // An entry bound alone says how many entries the shard will hold; a
                    // byte bound does not, so the sketch then grows with the residents.
                    sketch: Sketch::new(if bounds.bytes_bounded() {
                        most_entries.min(FIRST_SKETCHED_ENTRIES)
                    } else {
                        most_entries
                    }),
                    most_entries,
                    climber: Climber::new(most_entries),
                    random: 0,
                }),
            ),
        };
        let mut policy = Self {
            ring: Ring::new(most_entries),
            home,
            bytes: [0; 3],
            bounds,
            window_share,
            window: bounds,
            protected: bounds,
            admission,
            metrics,
            hashed: [(NO_SLOT, 0); 2],
        };
        policy.resize_window(window_share);
        policy
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.len() == 0
    }

    /// Where the residents are read.
    pub fn home(&self) -> &T::Home {
        &self.home
    }

    pub fn get(&self, slot: u32) -> Option<&T> {
        self.ring.get(slot)
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut T> {
        self.ring.get_mut(slot)
    }

    /// Slots made so far, occupied or vacant: a slot made later is numbered at or above
    /// this.
    pub fn slot_count(&self) -> u32 {
        self.ring.slot_count()
    }

    /// Every resident whose slot is numbered within `slots`, in slot order.
    pub fn iter_range(&self, slots: Range<u32>) -> impl Iterator<Item = (u32, &T)> {
        self.ring.iter_range(slots)
    }

    /// How the resident of `slot` stands: its key's estimated frequency and its region.
    pub fn standing(&self, slot: u32) -> Standing {
        let resident = self.resident(slot);
        let pending = resident.pending_hits(&self.home);
        let frequency = match &self.admission {
            Some(admission) => admission.sketch.frequency(resident.hash(&self.home)),
            None => 0,
        };
        let uncounted_write = u8::from(self.ring.is_marked(slot));
        Standing {
            frequency: frequency
                .saturating_add(pending)
                .saturating_add(uncounted_write)
                .min(MAX_FREQUENCY),
            region: self.ring.region_of(slot),
        }
    }

    /// Counts the requests the key of a restored resident had earned, besides the one its
    /// insert counts, so that admission ranks it as it was ranked when saved.
    pub fn prime(&mut self, slot: u32, standing: Standing) {
        let hash = self.hash_of(slot);
        self.record(hash, standing.frequency.saturating_sub(1));
    }

    /// Starts loading the residents the hands of the window and of probation point at,
    /// the likeliest candidate and victim of the next eviction, so that their cache
    /// misses overlap the caller's own lookup rather than follow it.
    pub fn prefetch_next_victims(&self) {
        for resident in self.next_victims() {
            resident.prefetch(&self.home);
        }
    }

    /// The residents the window's and probation's hands point at.
    fn next_victims(&self) -> impl Iterator<Item = &T> {
        NEXT_VICTIM_REGIONS
            .into_iter()
            .filter_map(|region| self.ring.hand(region).and_then(|slot| self.ring.get(slot)))
    }

    /// Starts loading `slot`, for a caller that will [`Policy::update`] it after other
    /// work.
    pub fn prefetch_slot(&self, slot: u32) {
        self.ring.prefetch(slot);
    }

    /// Starts loading the sketch lines admission reads for the next eviction's likeliest
    /// candidate and victim, and hands their hashes to `also` (the caller's own lines of
    /// them, such as their buckets); once their residents are loaded
    /// ([`Policy::prefetch_next_victims`]), this costs no wait.
    pub fn prefetch_admission(&mut self, also: impl Fn(u64)) {
        for (known, region) in NEXT_VICTIM_REGIONS.into_iter().enumerate() {
            let Some(slot) = self.ring.hand(region) else {
                self.hashed[known] = (NO_SLOT, 0);
                continue;
            };
            let hash = self.resident(slot).hash(&self.home);
            self.hashed[known] = (slot, hash);
            if let Some(admission) = &self.admission {
                admission.sketch.prefetch(hash);
            }
            also(hash);
        }
    }

    /// The window's current share of the shard.
    pub fn window_share(&self) -> f64 {
        self.window_share
    }

    /// Chooses the next entry to evict so that an entry can be stored, moving others
    /// between regions on the way; never `spare` (an entry being overwritten). `incoming`
    /// is the charge of a new entry about to join the window, `None` for an overwrite.
    /// The caller removes the victim.
    pub fn next_victim(&mut self, spare: Option<u32>, incoming: Option<u64>) -> Option<u32> {
        if self.window_over(incoming) {
            if let Some(candidate) = self.sweep(Region::Window, spare) {
                let Some(victim) = self.main_victim(spare) else {
                    return Some(candidate);
                };
                if self.admit(candidate, victim) {
                    self.move_to(candidate, Region::Probation);
                    return Some(victim);
                }
                self.metrics.admissions_refused.incr();
                // The victim stays, and the hand passes it, as the sweep that found it
                // used to before returning it.
                self.ring.advance(self.ring.region_of(victim));
                return Some(candidate);
            }
        }
        self.main_victim(spare)
            .or_else(|| self.sweep(Region::Window, spare))
    }

    /// Stores a new resident as the newest of `region`, its request to be counted later;
    /// returns its slot. Call once [`Policy::next_victim`] has made room. New entries
    /// join the window; a restored one rejoins the region it was saved from, as far as
    /// this policy has it (plain CLOCK has only the window).
    pub fn insert_with(&mut self, region: Region, make: impl FnOnce(u32) -> T) -> u32 {
        let region = if self.admission.is_some() {
            region
        } else {
            Region::Window
        };
        let slot = self.ring.insert_with(region, make);
        let charge = self
            .ring
            .get(slot)
            .expect("just inserted")
            .charge(&self.home);
        self.bytes[region as usize] += charge;
        if let Some(admission) = &mut self.admission {
            admission.grow(self.ring.len());
        }
        self.count_write(slot);
        match region {
            // The shard has room now, so the window's overflow joins probation unopposed.
            Region::Window => {
                while self.window_over(None) {
                    let Some(candidate) = self.sweep(Region::Window, Some(slot)) else {
                        break;
                    };
                    self.move_to(candidate, Region::Probation);
                }
            }
            Region::Probation => {}
            Region::Protected => self.demote_overflow(slot),
        }
        slot
    }

    /// Changes where the resident of `slot` is (its node was moved: same key, value and
    /// charge), counting nothing: a move is not a request.
    pub fn relocate(&mut self, slot: u32, change: impl FnOnce(&mut T)) {
        let resident = self.ring.get_mut(slot).expect("an occupied slot");
        let charge = resident.charge(&self.home);
        change(resident);
        debug_assert_eq!(
            charge,
            resident.charge(&self.home),
            "a move keeps the charge"
        );
    }

    /// Changes the resident of `slot` in place (an overwrite), counting a request for its
    /// key (later) and the change of its charge.
    pub fn update(&mut self, slot: u32, change: impl FnOnce(&mut T)) {
        let region = self.ring.region_of(slot) as usize;
        let resident = self.ring.get_mut(slot).expect("an occupied slot");
        self.bytes[region] -= resident.charge(&self.home);
        change(resident);
        let charge = resident.charge(&self.home);
        self.bytes[region] += charge;
        self.count_write(slot);
    }

    /// Removes the resident of `slot` (evicted, expired or deleted); returns it with its
    /// key's hash.
    pub fn remove(&mut self, slot: u32) -> Option<(T, u64)> {
        self.ring.get(slot)?;
        let hash = self.hash_of(slot);
        for known in &mut self.hashed {
            if known.0 == slot {
                *known = (NO_SLOT, 0);
            }
        }
        let vacated = self.ring.remove(slot)?;
        let resident = vacated.item;
        self.bytes[vacated.region as usize] -= resident.charge(&self.home);
        // A key deleted or evicted and set again keeps every request it earned.
        let uncounted = u8::from(vacated.marked) + resident.pending_hits(&self.home);
        if uncounted > 0 {
            self.record(hash, uncounted);
        }
        Some((resident, hash))
    }

    /// Feeds the window's climber the readers' lookups since the last call.
    pub fn observe_lookups(&mut self, lookups: u64, hits: u64) {
        let share = self.window_share;
        let Some(admission) = &mut self.admission else {
            return;
        };
        if let Some(share) = admission.climber.observe(lookups, hits, share) {
            self.resize_window(share);
        }
    }

    fn resize_window(&mut self, share: f64) {
        self.window_share = share;
        self.window = Bounds::share(self.bounds, share);
        self.protected = Bounds::share(self.bounds.less(self.window), PROTECTED_SHARE);
        self.metrics
            .window_share_ppm
            .set((share * 1_000_000.0).round() as u64);
    }

    /// Whether the window, with an incoming entry of that charge, is over its share.
    fn window_over(&self, incoming: Option<u64>) -> bool {
        let w = Region::Window;
        let entries = self.ring.region_len(w) + usize::from(incoming.is_some());
        let bytes = self.bytes[w as usize] + incoming.unwrap_or(0);
        entries > self.window.entries || bytes > self.window.bytes
    }

    fn protected_over(&self) -> bool {
        let p = Region::Protected;
        self.ring.region_len(p) > self.protected.entries
            || self.bytes[p as usize] > self.protected.bytes
    }

    /// The main region's next victim: probation's, else protected's.
    fn main_victim(&mut self, spare: Option<u32>) -> Option<u32> {
        self.sweep(Region::Probation, spare)
            .or_else(|| self.sweep(Region::Protected, spare))
    }

    /// Sweeps `region` with its hand to the first resident read by nobody since the hand
    /// last passed, and leaves the hand on it: the caller removes it, moves it
    /// ([`Policy::move_to`]) or passes it ([`Ring::advance`]). A resident that was read gets
    /// its hits (and any pending write) counted and its second chance: the hand passes it
    /// (window, protected) or it is promoted (probation). Bounded: after two turns, the
    /// oldest resident other than `spare` is taken even if readers keep touching it.
    fn sweep(&mut self, region: Region, spare: Option<u32>) -> Option<u32> {
        let mut budget = 2 * self.ring.region_len(region) + 1;
        while let Some(slot) = self.ring.hand(region) {
            if Some(slot) == spare {
                if self.ring.region_len(region) == 1 {
                    return None;
                }
                self.ring.advance(region);
                continue;
            }
            budget = budget.saturating_sub(1);
            let resident = self.ring.get(slot).expect("a hand points at a resident");
            let hits = resident.take_hits(&self.home);
            if hits == 0 {
                return Some(slot);
            }
            let hash = self.hash_of(slot);
            let uncounted_write = u8::from(self.ring.unmark(slot));
            self.record(hash, hits + uncounted_write);
            if budget == 0 {
                return Some(slot);
            }
            if region == Region::Probation && self.admission.is_some() {
                self.promote(slot);
            } else {
                self.ring.advance(region);
            }
        }
        None
    }

    /// Moves the probation resident at its hand, which was read, into protected.
    fn promote(&mut self, slot: u32) {
        self.move_to(slot, Region::Protected);
        self.demote_overflow(slot);
    }

    /// Demotes protected's oldest unread residents to probation while protected is over
    /// its share, sparing `spare` (the resident that just joined it).
    fn demote_overflow(&mut self, spare: u32) {
        while self.protected_over() {
            let Some(demoted) = self.sweep(Region::Protected, Some(spare)) else {
                break;
            };
            self.move_to(demoted, Region::Probation);
        }
    }

    /// Moves the resident of `slot`, which is at its region's hand (where sweeps leave
    /// what they find), to be the newest of `to`.
    fn move_to(&mut self, slot: u32, to: Region) {
        let from = self.ring.region_of(slot);
        debug_assert_eq!(self.ring.hand(from), Some(slot), "moves are made at a hand");
        let charge = self.charge_of(slot);
        self.bytes[from as usize] -= charge;
        self.bytes[to as usize] += charge;
        self.ring.move_hand(from, to);
    }

    /// TinyLFU: does the window's candidate deserve the victim's place?
    fn admit(&mut self, candidate: u32, victim: u32) -> bool {
        if self.admission.is_none() {
            return true;
        }
        let (candidate_frequency, candidate) = self.settled_frequency(candidate);
        if candidate_frequency > self.settled_frequency(victim).0 {
            return true;
        }
        if candidate_frequency < WARM_CANDIDATE {
            return false;
        }
        let Some(admission) = &mut self.admission else {
            return true;
        };
        let mut x = match admission.random {
            0 => candidate | 1,
            x => x,
        };
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        admission.random = x;
        x & 127 == 0
    }

    /// Counts a write's request for the key of `slot`: later, if none is pending.
    fn count_write(&mut self, slot: u32) {
        if self.admission.is_none() {
            return;
        }
        if self.ring.is_marked(slot) {
            let hash = self.hash_of(slot);
            self.record(hash, 1);
        } else {
            self.ring.mark(slot);
        }
    }

    /// The estimated frequency of the key of `slot`, once its pending write (if any) is
    /// counted; and the key's hash.
    fn settled_frequency(&mut self, slot: u32) -> (u8, u64) {
        let hash = self.hash_of(slot);
        let frequency = if self.ring.unmark(slot) {
            self.record(hash, 1)
        } else {
            self.admission
                .as_ref()
                .map_or(0, |admission| admission.sketch.frequency(hash))
        };
        (frequency, hash)
    }

    /// The key hash of the resident of `slot`.
    fn hash_of(&self, slot: u32) -> u64 {
        match self.hashed.iter().find(|known| known.0 == slot) {
            Some(&(_, hash)) => {
                debug_assert_eq!(hash, self.resident(slot).hash(&self.home), "slot {slot}");
                hash
            }
            None => self.resident(slot).hash(&self.home),
        }
    }

    /// The charge of the resident of `slot`.
    fn charge_of(&self, slot: u32) -> u64 {
        self.resident(slot).charge(&self.home)
    }

    fn resident(&self, slot: u32) -> &T {
        self.ring.get(slot).expect("an occupied slot")
    }

    /// Counts `n` requests for a key in the sketch; returns its estimated frequency now
    /// (0 without admission).
    fn record(&mut self, hash: u64, n: u8) -> u8 {
        let Some(admission) = &mut self.admission else {
            return 0;
        };
        let counted = admission.sketch.add(hash, n);
        if counted.reset {
            self.metrics.sketch_resets.incr();
        }
        counted.frequency
    }
}

#[cfg(test)]
mod tests;
