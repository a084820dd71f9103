//! The thread-per-core runtime: one monoio executor per core, on its own thread pinned to
//! one of the CPUs this process may run on, driving its own io_uring.
//!
//! Why monoio and these settings (issue 16, measured in BENCHMARKS.md "The latency
//! floor"): a request's receive is a ring operation, and so is its send under load (a lone
//! response is sent directly, see `http.rs`), and an executor with nothing to run submits
//! what is queued and waits in one `io_uring_enter`, so one connection costs two syscalls a
//! request and many connections share each enter. Completions are run with
//! `IORING_SETUP_COOP_TASKRUN` (the kernel runs them when the thread next enters it instead
//! of interrupting it), which cut the CPU per request by nearly 30 % against the default ring.
//! glommio, which this replaced, polls three rings and re-arms its timers on every pass and
//! issues a heavy memory barrier before it sleeps: six syscalls a request for the same
//! trivial responder. Where io_uring is missing or forbidden (old kernels, seccomp
//! profiles), the executor falls back to epoll (monoio's legacy driver) with a warning.

use std::future::Future;
use std::io;
use std::time::{Duration, Instant};

use monoio::blocking::DefaultThreadPool;
use monoio::{FusionDriver, RuntimeBuilder};

/// Submission-queue entries per core: enough for every connection's receive and send in
/// flight at once before the executor must submit mid-pass.
const RING_ENTRIES: u32 = 4096;

/// Starts core `id`'s thread: pins it to the `id`-th CPU this process may run on, builds
/// its executor (with a pool of `blocking_threads` unpinned threads for blocking calls)
/// and runs `main` on it until it returns.
pub fn start_core<F, Fut>(
    id: usize,
    blocking_threads: usize,
    main: F,
) -> io::Result<std::thread::JoinHandle<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // Built here so that its threads inherit this thread's affinity, not the core's pin.
    let pool = DefaultThreadPool::new(blocking_threads.max(1));
    let cpu = core_affinity::get_core_ids()
        .filter(|cpus| !cpus.is_empty())
        .map(|cpus| cpus[id % cpus.len()]);
    std::thread::Builder::new()
        .name(format!("core-{id}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(cpu) {
                    tracing::warn!(core = id, cpu = cpu.id, "could not pin the core's thread");
                }
            }
            let build = |ring: Option<io_uring::Builder>| {
                let mut builder = RuntimeBuilder::<FusionDriver>::new()
                    .with_entries(RING_ENTRIES)
                    .enable_timer()
                    .attach_thread_pool(Box::new(pool.clone()));
                if let Some(ring) = ring {
                    builder = builder.uring_builder(ring);
                }
                builder.build()
            };
            let mut cooperative = io_uring::IoUring::builder();
            cooperative.setup_coop_taskrun();
            let built = build(Some(cooperative)).or_else(|e| {
                // Kernels before 5.19 refuse the flag; a plain ring still works.
                tracing::warn!(core = id, error = %e, "io_uring with cooperative task running unavailable; trying a plain ring");
                build(None)
            });
            let mut runtime = match built {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(core = id, error = %e, "cannot build the core's executor");
                    return;
                }
            };
            if matches!(runtime, monoio::FusionRuntime::Legacy(_)) {
                tracing::warn!(core = id, "io_uring unavailable: serving through epoll");
            }
            runtime.block_on(main());
        })
}

/// A long task's share of its core: it runs for about [`Budget::SLICE`] at a time, then
/// lets the executor reap completions and run other tasks.
///
/// A plain yield is not enough: monoio reaps the ring only when its run queue is empty, so
/// a task that keeps yielding would hold back every connection's I/O. A timer of the
/// shortest length parks the task until the executor's next pass through the ring (about a
/// millisecond, the timer wheel's tick), so a task that spends its slice, then waits, runs
/// at no less than half speed and delays others by no more than a slice.
pub struct Budget {
    since: Instant,
}

impl Budget {
    pub const SLICE: Duration = Duration::from_millis(1);

    pub fn new() -> Self {
        Self {
            since: Instant::now(),
        }
    }

    /// Gives the core back if this task has run for a slice since it last did.
    pub async fn spend(&mut self) {
        if self.since.elapsed() >= Self::SLICE {
            monoio::time::sleep(Duration::from_micros(1)).await;
            self.since = Instant::now();
        }
    }
}
