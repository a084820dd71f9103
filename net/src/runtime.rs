//! The thread-per-core runtime: one monoio executor per core, on its own thread pinned to
//! one of the CPUs this process may run on, driving its own io_uring.
//!
//! Why monoio and these settings (issue 16, measured in BENCHMARKS.md "The latency
//! floor"): a request's receive and its answer's send are ring operations (a lone
//! connection arms its next receive before it hands its answer over, so that one
//! submission carries both: `http.rs`, `fill`), and an executor with nothing to run
//! submits what is queued and waits in one `io_uring_enter`. One connection costs two
//! syscalls a request (the submission, whose send completes at once, and the wait for the
//! next request), whether the executor sleeps or watches (below), and many connections
//! share each enter.
//! Completions are run with
//! `IORING_SETUP_COOP_TASKRUN` (the kernel runs them when the thread next enters it instead
//! of interrupting it), which cut the CPU per request by nearly 30 % against the default ring.
//!
//! An executor with nothing to run watches its rings for up to `CACHE_IDLE_SPIN_US` before
//! it sleeps ([`IdleWatch`], through a patch carried in `vendor/monoio`, since monoio has no
//! such setting): a thread asleep in the kernel is woken by an interrupt, which on a
//! virtual machine whose CPU has halted costs several microseconds; one that is watching
//! sees the request as soon as the kernel has it. Watching costs no syscall of its own:
//! the submission it starts with is the one a sleep would make, and the completion it sees
//! is run by one enter without waiting, in place of the sleep's.
//!
//! glommio, which this replaced, polls three rings and re-arms its timers on every pass
//! and issues a heavy memory barrier before it sleeps: six syscalls a request for the same
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
/// its executor (with a pool of `blocking_threads` unpinned threads for blocking calls, and
/// watching for up to `idle_spin` before it sleeps) and runs `main` on it until it returns.
pub fn start_core<F, Fut>(
    id: usize,
    blocking_threads: usize,
    idle_spin: Duration,
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
                if !idle_spin.is_zero() {
                    builder = builder.with_park_spin(Box::new(IdleWatch::new(idle_spin)));
                }
                if let Some(ring) = ring {
                    builder = builder.uring_builder(ring);
                }
                builder.build()
            };
            let mut cooperative = io_uring::IoUring::builder();
            // The flag tells a watching executor that completions wait for it to enter.
            cooperative.setup_coop_taskrun().setup_taskrun_flag();
            let built = build(Some(cooperative)).or_else(|e| {
                // Kernels before 5.19 refuse the flags; a plain ring still works.
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

/// How long an executor with nothing to run watches its rings before it sleeps: at most
/// `max`, adapting the way Linux's `haltpoll` idle governor does. A wait that a window of
/// `max` would have covered widens the window (doubling, from `max / 4`); a longer one
/// halves it, and below `max / 4` closes it. So at a steady stream of requests closer
/// together than `max` the core watches through the gaps, and at a slower rate, or with
/// no requests, it sleeps at once, for two readings of the clock a sleep.
///
/// A watch that a request ends leaves the window as it is. What watching costs is CPU
/// time that a sleeping core would not use, at most the gap between two requests each
/// time, so a core's busy time is not its work while requests come faster than `max`.
#[derive(Debug)]
pub struct IdleWatch {
    max: Duration,
    window: Duration,
}

impl IdleWatch {
    pub fn new(max: Duration) -> Self {
        Self {
            max,
            window: Duration::ZERO,
        }
    }
}

impl monoio::ParkSpin for IdleWatch {
    fn window(&self) -> Duration {
        self.window
    }

    fn after_sleep(&mut self, waited: Duration) {
        let first_step = self.max / 4;
        self.window = if waited <= self.max {
            (self.window * 2).clamp(first_step, self.max)
        } else if self.window / 2 < first_step {
            Duration::ZERO
        } else {
            self.window / 2
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::ParkSpin;

    const MAX: Duration = Duration::from_micros(40);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_core_knows_when_it_has_other_work_in_hand() {
        use monoio::io::AsyncReadRent;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, told) = std::sync::mpsc::channel();
        start_core(0, 1, Duration::ZERO, move || async move {
            let alone = monoio::other_work_pending();
            let other = monoio::spawn(async {});
            let task_queued = monoio::other_work_pending();
            other.await;
            let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let after_connect = monoio::other_work_pending();
            // A receive is queued for the ring when it is made, before it is polled.
            let reading = stream.read(Vec::with_capacity(16));
            let read_queued = monoio::other_work_pending();
            drop(reading);
            seen.send([alone, task_queued, after_connect, read_queued])
                .unwrap();
        })
        .unwrap()
        .join()
        .unwrap();
        let [alone, task_queued, after_connect, read_queued] = told.recv().unwrap();
        assert!(!alone, "nothing else in hand at the start");
        assert!(task_queued, "a spawned task waits to run");
        assert!(!after_connect, "the connect was submitted and reaped");
        // The epoll driver queues nothing ahead, so only a ring has a receive waiting.
        assert_eq!(
            read_queued,
            monoio::utils::detect_uring(),
            "a receive waits in the ring"
        );
        assert!(!monoio::other_work_pending(), "false outside a runtime");
    }

    #[test]
    fn the_window_widens_to_cover_short_waits_and_closes_on_long_ones() {
        let mut watch = IdleWatch::new(MAX);
        assert_eq!(watch.window(), Duration::ZERO, "starts asleep");
        for expected in [us(10), us(20), MAX, MAX] {
            watch.after_sleep(us(25));
            assert_eq!(watch.window(), expected);
        }
        for expected in [us(20), us(10), Duration::ZERO, Duration::ZERO] {
            watch.after_sleep(Duration::from_millis(1));
            assert_eq!(watch.window(), expected);
        }
    }

    #[test]
    fn a_wait_of_exactly_the_most_still_counts_as_covered() {
        let mut watch = IdleWatch::new(MAX);
        watch.after_sleep(MAX);
        assert_eq!(watch.window(), us(10));
        watch.after_sleep(MAX + Duration::from_nanos(1));
        assert_eq!(watch.window(), Duration::ZERO);
    }

    #[test]
    fn a_zero_most_never_opens_the_window() {
        let mut watch = IdleWatch::new(Duration::ZERO);
        for waited in [Duration::ZERO, us(1), Duration::from_secs(1)] {
            watch.after_sleep(waited);
            assert_eq!(watch.window(), Duration::ZERO);
        }
    }
}
