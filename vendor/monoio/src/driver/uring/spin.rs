//! cache-manager patch (PATCHES.md): an executor with nothing to run may watch its rings
//! for a while before it sleeps in the kernel, for as long as a [`ParkSpin`] says.

use std::time::Duration;

/// How long an io_uring executor with nothing to run watches its rings for a completion,
/// or for a wake-up from another thread, before it sleeps in the kernel.
pub trait ParkSpin {
    /// How long to watch before the next sleep; zero sleeps at once.
    fn window(&self) -> Duration;

    /// Called after each wait that watching did not end, with how long the whole wait
    /// took, the watch and the sleep after it.
    fn after_sleep(&mut self, waited: Duration);

    /// Called after each watch with how long it lasted, whether it saw work arrive or ran
    /// out its window: CPU time that a core asleep would not have used.
    fn watched(&mut self, _lasted: Duration) {}
}
