//! Per-key singleflight on a shard's owner: concurrent misses for one key cause one fill.
//!
//! The first miss [`join`](SingleFlight::join)s as the leader and gets a [`Fill`]; later
//! misses get a [`Waiter`]. Whatever the leader completes with, value or error, reaches
//! every waiter. A leader dropped without completing (its task cancelled, or panicking)
//! tells its waiters so instead of leaving them hanging.
//!
//! **Fencing.** A delete or invalidation that lands while a fill is in flight
//! [`fence`](SingleFlight::fence)s it: the flight is detached, so a miss arriving after
//! the invalidation starts a new fill rather than waiting for a value fetched before it,
//! and the fenced fill's result still goes to its waiters but [`Completion::storable`]
//! is false, so it is not written to the cache.
//!
//! It lives on one core (the owner), so it uses `Rc`/`RefCell`, not locks; waiters may
//! be anywhere, since they wait on flume channels.
//!
//! A flight is on every miss's path, so it costs one hash of its key (hashbrown's
//! `HashTable`, which takes the hash the caller computed) and, for keys up to
//! `INLINE_KEY` (32) bytes, one allocation (smallvec keeps the key inside the flight).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use smallvec::SmallVec;

/// Why a waiter got no value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlightError<E> {
    #[error("the fill failed: {0}")]
    Failed(E),
    #[error("the fill was abandoned before it completed")]
    Abandoned,
}

type Outcome<V, E> = Result<V, FlightError<E>>;

/// Keys up to this long are kept inside the flight, so that a flight for one is a single
/// allocation (most cache keys are short; the service allows 250 bytes).
const INLINE_KEY: usize = 32;

struct Flight<V, E> {
    key: SmallVec<[u8; INLINE_KEY]>,
    /// The key's hash, so that ending the flight finds it again without hashing the key.
    hash: u64,
    waiters: RefCell<Vec<flume::Sender<Outcome<V, E>>>>,
    fenced: Cell<bool>,
}

/// The flights in the air, by their keys' hashes. A `HashTable` rather than a `HashSet`
/// so that a flight costs one hash of its key: a set hashed it on the lookup, the insert,
/// and twice more to take the flight out again.
type Flights<V, E> = Rc<RefCell<HashTable<Rc<Flight<V, E>>>>>;

pub struct SingleFlight<V, E> {
    flights: Flights<V, E>,
    hasher: ahash::RandomState,
}

impl<V, E> Default for SingleFlight<V, E> {
    fn default() -> Self {
        Self {
            flights: Rc::default(),
            hasher: ahash::RandomState::new(),
        }
    }
}

pub enum Join<V, E> {
    /// This caller fetches, then calls [`Fill::complete`].
    Leader(Fill<V, E>),
    /// Another fill for this key is running; wait for its result.
    Follower(Waiter<V, E>),
}

pub struct Fill<V, E> {
    flight: Rc<Flight<V, E>>,
    flights: Flights<V, E>,
    completed: bool,
}

pub struct Waiter<V, E>(flume::Receiver<Outcome<V, E>>);

/// What the leader learns when it completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// False when an invalidation fenced the fill: the result must not be stored.
    pub storable: bool,
    /// How many waiters were given the result.
    pub waiters: usize,
}

impl<V: Clone, E: Clone> SingleFlight<V, E> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn join(&self, key: &[u8]) -> Join<V, E> {
        let hash = self.hasher.hash_one(key);
        let mut flights = self.flights.borrow_mut();
        match flights.entry(hash, |flight| *flight.key == *key, |flight| flight.hash) {
            Entry::Occupied(entry) => {
                let (tx, rx) = flume::bounded(1);
                entry.get().waiters.borrow_mut().push(tx);
                Join::Follower(Waiter(rx))
            }
            Entry::Vacant(entry) => {
                let flight = Rc::new(Flight {
                    key: SmallVec::from_slice(key),
                    hash,
                    waiters: RefCell::new(Vec::new()),
                    fenced: Cell::new(false),
                });
                entry.insert(flight.clone());
                Join::Leader(Fill {
                    flight,
                    flights: self.flights.clone(),
                    completed: false,
                })
            }
        }
    }

    /// Fences the fill in flight for `key`, if any; says whether there was one.
    pub fn fence(&self, key: &[u8]) -> bool {
        let hash = self.hasher.hash_one(key);
        match self
            .flights
            .borrow_mut()
            .find_entry(hash, |flight| *flight.key == *key)
        {
            Ok(entry) => {
                entry.remove().0.fenced.set(true);
                true
            }
            Err(_) => false,
        }
    }

    /// Fences every fill whose key satisfies `doomed` (a pattern invalidation, or all of
    /// them on a flush); returns how many.
    pub fn fence_where(&self, mut doomed: impl FnMut(&[u8]) -> bool) -> usize {
        let mut fenced = 0;
        self.flights.borrow_mut().retain(|flight| {
            if doomed(&flight.key) {
                flight.fenced.set(true);
                fenced += 1;
                false
            } else {
                true
            }
        });
        fenced
    }

    /// Fills in flight (not counting fenced ones).
    pub fn in_flight(&self) -> usize {
        RefCell::borrow(&self.flights).len()
    }
}

impl<V: Clone, E: Clone> Fill<V, E> {
    pub fn key(&self) -> &[u8] {
        &self.flight.key
    }

    /// Whether an invalidation has fenced this fill so far.
    pub fn is_fenced(&self) -> bool {
        self.flight.fenced.get()
    }

    /// Hands `result` to every waiter and ends the flight.
    pub fn complete(mut self, result: Result<V, E>) -> Completion {
        self.completed = true;
        let outcome = result.map_err(FlightError::Failed);
        self.finish(outcome)
    }

    fn finish(&mut self, outcome: Outcome<V, E>) -> Completion {
        self.detach();
        let waiters = std::mem::take(&mut *self.flight.waiters.borrow_mut());
        for waiter in &waiters {
            let _ = waiter.send(outcome.clone());
        }
        Completion {
            storable: !self.flight.fenced.get(),
            waiters: waiters.len(),
        }
    }

    fn detach(&self) {
        detach(&mut self.flights.borrow_mut(), &self.flight);
    }
}

/// Removes `flight` from the set unless a fence already did (and a newer flight for the
/// same key may have taken its place, which is why it is found by identity).
fn detach<V, E>(flights: &mut HashTable<Rc<Flight<V, E>>>, flight: &Rc<Flight<V, E>>) {
    if let Ok(entry) = flights.find_entry(flight.hash, |current| Rc::ptr_eq(current, flight)) {
        entry.remove();
    }
}

impl<V, E> Drop for Fill<V, E> {
    fn drop(&mut self) {
        if self.completed {
            return;
        }
        if let Ok(mut flights) = self.flights.try_borrow_mut() {
            detach(&mut flights, &self.flight);
        }
        for waiter in self.flight.waiters.borrow_mut().drain(..) {
            let _ = waiter.send(Err(FlightError::Abandoned));
        }
    }
}

impl<V, E> Waiter<V, E> {
    pub async fn wait(self) -> Outcome<V, E> {
        self.0
            .recv_async()
            .await
            .unwrap_or(Err(FlightError::Abandoned))
    }

    /// Blocking wait, for callers outside an async runtime.
    pub fn wait_blocking(self) -> Outcome<V, E> {
        self.0.recv().unwrap_or(Err(FlightError::Abandoned))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_executor::block_on;

    type Sf = SingleFlight<String, String>;

    fn lead(sf: &Sf, key: &[u8]) -> Fill<String, String> {
        match sf.join(key) {
            Join::Leader(fill) => fill,
            Join::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follow(sf: &Sf, key: &[u8]) -> Waiter<String, String> {
        match sf.join(key) {
            Join::Follower(w) => w,
            Join::Leader(_) => panic!("expected to follow"),
        }
    }

    #[test]
    fn one_leader_many_followers_all_get_the_value() {
        let sf = Sf::new();
        let fill = lead(&sf, b"k");
        let waiters: Vec<_> = (0..100).map(|_| follow(&sf, b"k")).collect();
        let other = lead(&sf, b"other");
        let done = fill.complete(Ok("v".into()));
        assert_eq!(
            done,
            Completion {
                storable: true,
                waiters: 100
            }
        );
        for w in waiters {
            assert_eq!(block_on(w.wait()), Ok("v".to_string()));
        }
        assert_eq!(sf.in_flight(), 1);
        drop(other);
        assert_eq!(sf.in_flight(), 0);
        let _next = lead(&sf, b"k");
    }

    #[test]
    fn an_error_reaches_every_waiter() {
        let sf = Sf::new();
        let fill = lead(&sf, b"k");
        let a = follow(&sf, b"k");
        let b = follow(&sf, b"k");
        fill.complete(Err("origin 503".into()));
        assert_eq!(
            a.wait_blocking(),
            Err(FlightError::Failed("origin 503".into()))
        );
        assert_eq!(
            b.wait_blocking(),
            Err(FlightError::Failed("origin 503".into()))
        );
    }

    #[test]
    fn a_dropped_or_panicking_leader_does_not_hang_followers() {
        let sf = Sf::new();
        let fill = lead(&sf, b"k");
        let w = follow(&sf, b"k");
        drop(fill);
        assert_eq!(w.wait_blocking(), Err(FlightError::Abandoned));
        let _ = lead(&sf, b"k");

        let w = {
            let fill = lead(&sf, b"p");
            let w = follow(&sf, b"p");
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                let _fill = fill;
                panic!("leader task panicked");
            }));
            assert!(result.is_err());
            w
        };
        assert_eq!(w.wait_blocking(), Err(FlightError::Abandoned));
        assert_eq!(sf.in_flight(), 0);
    }

    #[test]
    fn a_fence_detaches_the_flight_and_forbids_storing_its_result() {
        let sf = Sf::new();
        let old = lead(&sf, b"k");
        let old_waiter = follow(&sf, b"k");
        assert!(sf.fence(b"k"));
        assert!(old.is_fenced());
        // A miss after the invalidation must not wait for a value fetched before it.
        let new = lead(&sf, b"k");
        let new_waiter = follow(&sf, b"k");
        let done = old.complete(Ok("stale".into()));
        assert!(!done.storable);
        assert_eq!(old_waiter.wait_blocking(), Ok("stale".to_string()));
        assert_eq!(
            sf.in_flight(),
            1,
            "completing the fenced fill left the new one alone"
        );
        assert!(new.complete(Ok("fresh".into())).storable);
        assert_eq!(new_waiter.wait_blocking(), Ok("fresh".to_string()));
        assert!(!sf.fence(b"k"));
    }

    #[test]
    fn fence_where_covers_patterns() {
        let sf = Sf::new();
        let a = lead(&sf, b"user:1");
        let b = lead(&sf, b"user:2");
        let c = lead(&sf, b"order:1");
        assert_eq!(sf.fence_where(|k| k.starts_with(b"user:")), 2);
        assert!(a.is_fenced() && b.is_fenced() && !c.is_fenced());
        assert_eq!(sf.in_flight(), 1);
    }

    /// A fill the test led: the fill until it is completed or dropped, its key, its
    /// followers, and whether the model says it was fenced.
    struct Held {
        fill: Option<Fill<String, String>>,
        key: u8,
        followers: Vec<Waiter<String, String>>,
        fenced: bool,
    }

    proptest::proptest! {
        /// Joins, completions, abandonments and fences in any order, against a model:
        /// the flight in the air for each key (the test's index of its fill), which fills
        /// were fenced, and how many followers each has.
        #[test]
        fn flights_follow_a_reference_model(
            ops in proptest::collection::vec((0u8..5, 0u8..6, 0usize..8), 1..200)
        ) {
            let sf = Sf::new();
            let mut held: Vec<Held> = Vec::new();
            // Key → index in `held` of the fill that followers of that key join.
            let mut in_air: std::collections::HashMap<u8, usize> = Default::default();
            for (op, key, pick) in ops {
                let k = [b'k', key];
                match op {
                    0 => match sf.join(&k) {
                        Join::Leader(fill) => {
                            proptest::prop_assert!(!in_air.contains_key(&key), "led a key in the air");
                            in_air.insert(key, held.len());
                            held.push(Held { fill: Some(fill), key, followers: Vec::new(), fenced: false });
                        }
                        Join::Follower(waiter) => {
                            let leader = *in_air.get(&key).expect("followed a key not in the air");
                            held[leader].followers.push(waiter);
                        }
                    },
                    1 | 2 => {
                        let live: Vec<usize> = (0..held.len()).filter(|&i| held[i].fill.is_some()).collect();
                        if live.is_empty() {
                            continue;
                        }
                        let i = live[pick % live.len()];
                        let key = held[i].key;
                        if in_air.get(&key) == Some(&i) {
                            in_air.remove(&key);
                        }
                        let fill = held[i].fill.take().expect("live");
                        let followers = std::mem::take(&mut held[i].followers);
                        if op == 1 {
                            let done = fill.complete(Ok(format!("v{i}")));
                            proptest::prop_assert_eq!(done.storable, !held[i].fenced);
                            proptest::prop_assert_eq!(done.waiters, followers.len());
                            for w in followers {
                                proptest::prop_assert_eq!(w.wait_blocking(), Ok(format!("v{i}")));
                            }
                        } else {
                            drop(fill);
                            for w in followers {
                                proptest::prop_assert_eq!(w.wait_blocking(), Err(FlightError::Abandoned));
                            }
                        }
                    }
                    3 => {
                        let expected = in_air.remove(&key);
                        proptest::prop_assert_eq!(sf.fence(&k), expected.is_some());
                        if let Some(i) = expected {
                            held[i].fenced = true;
                            let fill = held[i].fill.as_ref().expect("in the air, so live");
                            proptest::prop_assert!(fill.is_fenced());
                        }
                    }
                    _ => {
                        let doomed: Vec<u8> = in_air.keys().copied().filter(|k| k % 2 == 0).collect();
                        let count = sf.fence_where(|k| k[1] % 2 == 0);
                        proptest::prop_assert_eq!(count, doomed.len());
                        for key in doomed {
                            held[in_air.remove(&key).expect("listed")].fenced = true;
                        }
                    }
                }
                proptest::prop_assert_eq!(sf.in_flight(), in_air.len());
            }
        }
    }
}
