//! The concurrency primitives the engine is built from, in one place, so that the loom
//! models (`--cfg engine_loom`, run by `scripts/loom.sh`) swap every one of them at once,
//! the way tokio's `loom` shim does.
//!
//! In normal builds reclamation is `seize`. Under loom it is [`loom_reclaim`], a
//! Dekker-style reader count that loom can explore completely: seize keeps per-thread
//! state in real thread-locals that loom's simulated threads would share, so it cannot be
//! modelled itself. The table uses both through the same four calls (`enter`, `protect_link`,
//! `retire`, drop), which is what the models check: that the table publishes, unlinks and
//! retires nodes in an order under which no reader sees a torn or reclaimed node.

#[cfg(not(engine_loom))]
pub(crate) use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize};
#[cfg(not(engine_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(engine_loom)]
pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize};
#[cfg(engine_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`. Nothing that holds one of the engine's short locks can panic half-way
/// through a change, so a poisoned lock's data is whole and is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(not(engine_loom))]
pub(crate) use seize_reclaim::Reclaimer;

#[cfg(engine_loom)]
pub(crate) use loom_reclaim::Reclaimer;

/// A node the writer unlinks and hands to the reclaimer.
pub(crate) trait Retirable {
    /// Drops and deallocates the node.
    ///
    /// # Safety
    /// `ptr` is unreachable by every reader and is freed only once.
    unsafe fn free(ptr: *mut Self);

    /// Models, under loom, the write that freeing the node's data would be.
    #[cfg(engine_loom)]
    fn poison(&self);
}

/// Immutable data shared with readers. A plain wrapper in normal builds; under loom a
/// tracked cell, so that a reclamation (modelled as a write) racing a read is reported.
#[cfg(not(engine_loom))]
pub(crate) struct SharedCell<T>(T);

#[cfg(not(engine_loom))]
impl<T> SharedCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(value)
    }

    #[inline(always)]
    pub(crate) fn get(&self) -> &T {
        &self.0
    }
}

#[cfg(engine_loom)]
pub(crate) struct SharedCell<T>(loom::cell::UnsafeCell<T>);

#[cfg(engine_loom)]
impl<T> SharedCell<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(loom::cell::UnsafeCell::new(value))
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: loom's `with` records this read; the only write is `poison`, made by the
        // reclaimer once no reader can reach the cell, and loom reports it if that is wrong.
        self.0.with(|p| unsafe { &*p })
    }

    /// Models the write that freeing the memory would be.
    pub(crate) fn poison(&self) {
        self.0.with_mut(|_| ());
    }
}

#[cfg(not(engine_loom))]
mod seize_reclaim {
    use std::sync::atomic::{AtomicU32, Ordering};

    use seize::{Collector, LocalGuard};

    use super::Retirable;

    pub(crate) struct Reclaimer(Collector);

    /// A reader's stay: kept only for its drop, which leaves (seize's guard).
    pub(crate) struct ReadGuard<'a> {
        _entered: LocalGuard<'a>,
    }

    impl Reclaimer {
        pub(crate) fn new() -> Self {
            Self(Collector::new())
        }

        #[inline(always)]
        pub(crate) fn enter(&self) -> ReadGuard<'_> {
            ReadGuard {
                _entered: self.0.enter(),
            }
        }

        /// Hands a node that no reader entering from now on can reach to the collector,
        /// which frees it once no reader that could have seen it remains.
        ///
        /// # Safety
        /// `ptr` is unlinked, valid for `T::free`, and never used again by the caller.
        pub(crate) unsafe fn retire<T: Retirable>(&self, ptr: *mut T) {
            unsafe fn reclaim<T: Retirable>(ptr: *mut T, _: &Collector) {
                // SAFETY: seize calls this once, when no reader can hold `ptr`.
                unsafe { T::free(ptr) }
            }
            // SAFETY: forwarded from this function's contract.
            unsafe { self.0.retire(ptr, reclaim::<T>) }
        }
    }

    impl ReadGuard<'_> {
        /// Loads a link that names a node by its handle, protecting the node as seize's
        /// `protect` protects a pointer's target. That call is exactly a load with the
        /// ordering its `raw::Collector::protect` gives, `SeqCst` (so that the load takes
        /// part in the order the light barrier of `enter` sets up); a handle is the
        /// node's pointer in another form, resolved only while this guard lives.
        #[inline(always)]
        pub(crate) fn protect_link(&self, link: &AtomicU32) -> u32 {
            link.load(Ordering::SeqCst)
        }
    }
}

#[cfg(engine_loom)]
pub(crate) mod loom_reclaim {
    //! A reclaimer loom can check exhaustively. A reader announces itself in `active` and
    //! then issues a SeqCst fence before loading any pointer; the writer unlinks (a release
    //! store), issues a SeqCst fence, and reclaims only if it then reads `active == 0`.
    //! Between the two fences one comes first: if the reader's, the writer sees its
    //! announcement and keeps the node; if the writer's, the reader's loads see the unlink
    //! and cannot reach the node. A reader that has left releases its reads to the writer
    //! through `active`. This is seize's scheme (a light barrier in `enter`, a heavy one in
    //! `retire`), written with fences because loom models SeqCst fences exactly but
    //! SeqCst accesses only as AcqRel.
    use loom::sync::atomic::{fence, AtomicU32, AtomicUsize, Ordering};
    use loom::sync::Mutex;

    use super::Retirable;

    type Retired = (*mut (), unsafe fn(*mut ()), unsafe fn(*mut ()));

    pub(crate) struct Reclaimer {
        active: AtomicUsize,
        retired: Mutex<Vec<Retired>>,
        graveyard: Mutex<Vec<Retired>>,
    }

    // SAFETY: the raw pointers are owned nodes handed over by `retire`; they are only
    // touched under the mutexes and the reader-count protocol above.
    unsafe impl Send for Reclaimer {}
    // SAFETY: as for `Send`.
    unsafe impl Sync for Reclaimer {}

    pub(crate) struct ReadGuard<'a>(&'a Reclaimer);

    impl Reclaimer {
        pub(crate) fn new() -> Self {
            Self {
                active: AtomicUsize::new(0),
                retired: Mutex::new(Vec::new()),
                graveyard: Mutex::new(Vec::new()),
            }
        }

        pub(crate) fn enter(&self) -> ReadGuard<'_> {
            self.active.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            ReadGuard(self)
        }

        /// # Safety
        /// As for the seize reclaimer: `ptr` is an unlinked node the caller drops.
        pub(crate) unsafe fn retire<T: Retirable>(&self, ptr: *mut T) {
            unsafe fn poison<T: Retirable>(p: *mut ()) {
                // SAFETY: `p` is a live `T` kept in the graveyard until drop.
                unsafe { (*(p as *mut T)).poison() }
            }
            unsafe fn free<T: Retirable>(p: *mut ()) {
                // SAFETY: `p` is an unlinked `T`, freed exactly once, when no reader remains.
                unsafe { T::free(p as *mut T) }
            }
            self.retired
                .lock()
                .unwrap()
                .push((ptr as *mut (), poison::<T>, free::<T>));
            self.try_reclaim();
        }

        fn try_reclaim(&self) {
            fence(Ordering::SeqCst);
            if self.active.load(Ordering::Acquire) != 0 {
                return;
            }
            let ready: Vec<Retired> = std::mem::take(&mut *self.retired.lock().unwrap());
            for entry in &ready {
                // SAFETY: no reader is active, and none can reach an unlinked node.
                unsafe { (entry.1)(entry.0) };
            }
            self.graveyard.lock().unwrap().extend(ready);
        }
    }

    impl Drop for Reclaimer {
        fn drop(&mut self) {
            let retired = std::mem::take(&mut *self.retired.lock().unwrap());
            let graveyard = std::mem::take(&mut *self.graveyard.lock().unwrap());
            for (ptr, _, free) in retired.into_iter().chain(graveyard) {
                // SAFETY: the reclaimer is dropped with its table: no reader remains.
                unsafe { free(ptr) };
            }
        }
    }

    impl ReadGuard<'_> {
        pub(crate) fn protect_link(&self, link: &AtomicU32) -> u32 {
            link.load(Ordering::Acquire)
        }
    }

    impl Drop for ReadGuard<'_> {
        fn drop(&mut self) {
            self.0.active.fetch_sub(1, Ordering::Release);
        }
    }
}
