//! Read-through for users of the engine as a library: an [`Origin`] is the source of
//! truth a miss is filled from, with the service's contract. `Cache::get_or_fetch` calls
//! it once per missing key however many threads miss that key at once; the others wait
//! for that one fetch and share its result, error included. A remove or invalidation of
//! the key while the fetch runs fences it: the waiting callers still get the value, but
//! it is not stored. A fetcher that panics does not strand its waiters: they fetch
//! themselves.
//!
//! The server's singleflight (`singleflight.rs`) lives on one core and waits
//! asynchronously; this table is shared by threads and waits on a condition variable,
//! which is what a blocking library API needs.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

/// The source of truth behind a cache.
pub trait Origin {
    type Error: Clone + Send + Sync + 'static;

    /// The value of `key`, `Ok(None)` when there is none.
    fn fetch(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
}

/// How a fetch ended, for the threads that waited on it. The error is type-erased because
/// callers with different origins may meet on the same key; a waiter that cannot read
/// the error as its own origin's fetches for itself.
#[derive(Clone)]
pub(crate) enum Outcome {
    Value(Option<Vec<u8>>),
    Failed(Arc<dyn Any + Send + Sync>),
    Abandoned,
}

#[derive(Default)]
pub(crate) struct Pending {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
    fenced: AtomicBool,
}

impl Pending {
    pub(crate) fn is_fenced(&self) -> bool {
        self.fenced.load(Ordering::SeqCst)
    }

    pub(crate) fn finish(&self, outcome: Outcome) {
        *self.outcome.lock() = Some(outcome);
        self.ready.notify_all();
    }

    pub(crate) fn wait(&self) -> Outcome {
        let mut outcome = self.outcome.lock();
        while outcome.is_none() {
            self.ready.wait(&mut outcome);
        }
        outcome.clone().expect("set before notifying")
    }
}

/// One shard's fetches in flight.
#[derive(Default)]
pub(crate) struct Flights(Mutex<HashMap<Box<[u8]>, Arc<Pending>>>);

pub(crate) enum Joined {
    /// This caller fetches, then calls `Flights::end` and `Pending::finish`.
    Leader(Arc<Pending>),
    Waiter(Arc<Pending>),
}

impl Flights {
    pub(crate) fn join(&self, key: &[u8]) -> Joined {
        let mut flights = self.0.lock();
        match flights.get(key) {
            Some(pending) => Joined::Waiter(pending.clone()),
            None => {
                let pending = Arc::new(Pending::default());
                flights.insert(key.into(), pending.clone());
                Joined::Leader(pending)
            }
        }
    }

    /// Takes a finished fetch out of the table, unless a fence already did.
    pub(crate) fn end(&self, key: &[u8], pending: &Arc<Pending>) {
        let mut flights = self.0.lock();
        if flights
            .get(key)
            .is_some_and(|current| Arc::ptr_eq(current, pending))
        {
            flights.remove(key);
        }
    }

    /// Fences the fetches of every key `doomed` says, and detaches them, so that a miss
    /// after the invalidation starts a fresh fetch.
    pub(crate) fn fence_where(&self, mut doomed: impl FnMut(&[u8]) -> bool) {
        self.0.lock().retain(|key, pending| {
            let fence = doomed(key);
            if fence {
                pending.fenced.store(true, Ordering::SeqCst);
            }
            !fence
        });
    }

    /// Threads waiting on the fetch of `key` (for tests that stage a stampede).
    #[cfg(all(test, not(engine_loom)))]
    pub(crate) fn waiters(&self, key: &[u8]) -> usize {
        self.0
            .lock()
            .get(key)
            .map_or(0, |p| Arc::strong_count(p) - 2)
    }
}

/// Ends a leader's flight as abandoned if it unwinds before finishing.
pub(crate) struct LeaderGuard<'a> {
    pub(crate) flights: &'a Flights,
    pub(crate) key: &'a [u8],
    pub(crate) pending: Arc<Pending>,
    pub(crate) finished: bool,
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.flights.end(self.key, &self.pending);
            self.pending.finish(Outcome::Abandoned);
        }
    }
}
