//! The concurrency primitives the engine is built from, in one place, so that the loom
//! models (`--cfg engine_loom`, run by `scripts/loom.sh`) swap every one of them at once,
//! the way tokio's `loom` shim does. Memory reclamation (`reclaim`) is built from these,
//! so the models run it as it is: they check that the table publishes, unlinks and
//! retires nodes in an order under which no reader sees a torn or reclaimed node, and
//! that the reclaimer frees none too early.

#[cfg(not(engine_loom))]
pub(crate) use std::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64};
#[cfg(not(engine_loom))]
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};

#[cfg(engine_loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicBool, AtomicPtr, AtomicU32, AtomicU64};
#[cfg(engine_loom)]
pub(crate) use loom::sync::{Arc, Mutex, MutexGuard};

/// Locks `mutex`. Nothing that holds one of the engine's short locks can panic half-way
/// through a change, so a poisoned lock's data is whole and is used as is.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
