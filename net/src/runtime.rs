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
//! profiles), the executor falls back to epoll (monoio's legacy driver) with a warning;
//! `CACHE_IO_DRIVER` can rule out either ([`IoDriver`]), and each core reports the one it
//! runs on in the JSON metrics.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use engine::metrics::Counter;
use monoio::blocking::DefaultThreadPool;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use serde::Serialize;

/// Submission-queue entries per core: enough for every connection's receive and send in
/// flight at once before the executor must submit mid-pass.
const RING_ENTRIES: u32 = 4096;

/// Which kernel interface the executors may wait on (`CACHE_IO_DRIVER`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoDriver {
    /// io_uring, or epoll where io_uring is missing or forbidden.
    #[default]
    Auto,
    /// io_uring only: a core (or load thread) that cannot set up its ring fails to start.
    IoUring,
    /// epoll only, for hosts whose policy rules out io_uring or to compare the two.
    Epoll,
}

/// The interface a core's executor was built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActiveDriver {
    IoUring,
    Epoll,
}

impl fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

/// As the log names it.
impl Serialize for ActiveDriver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How each core's executor is built.
#[derive(Clone, Debug)]
pub struct ExecutorSettings {
    /// Unpinned threads for blocking calls (at least one).
    pub blocking_threads: usize,
    /// How long a core with nothing to run watches its ring before it sleeps.
    pub idle_spin: Duration,
    pub io_driver: IoDriver,
    /// Where the core adds up, in nanoseconds, the time it spent watching.
    pub watching: Arc<Counter>,
}

type Executor = monoio::FusionRuntime<TimeDriver<IoUringDriver>, TimeDriver<LegacyDriver>>;

/// Starts core `id`'s thread: pins it to the `id`-th CPU this process may run on, builds
/// its executor as `settings` say and runs `main` on it until it returns. Returns once the
/// executor is built, with the driver it was built on, or with why it could not be.
pub fn start_core<F, Fut>(
    id: usize,
    settings: ExecutorSettings,
    main: F,
) -> io::Result<(std::thread::JoinHandle<()>, ActiveDriver)>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    // Built here so that its threads inherit this thread's affinity, not the core's pin.
    let pool = DefaultThreadPool::new(settings.blocking_threads.max(1));
    let cpu = core_affinity::get_core_ids()
        .filter(|cpus| !cpus.is_empty())
        .map(|cpus| cpus[id % cpus.len()]);
    let (built_tx, built_rx) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(format!("core-{id}"))
        .spawn(move || {
            if let Some(cpu) = cpu {
                if !core_affinity::set_for_current(cpu) {
                    tracing::warn!(core = id, cpu = cpu.id, "could not pin the core's thread");
                }
            }
            match build_executor(id, &settings, &pool) {
                Ok((mut executor, driver)) => {
                    // The starter waits for this; if it is gone there is no one to serve.
                    if built_tx.send(Ok(driver)).is_ok() {
                        executor.block_on(main());
                    }
                }
                Err(e) => {
                    let _ = built_tx.send(Err(e));
                }
            }
        })?;
    match built_rx.recv() {
        Ok(Ok(driver)) => Ok((thread, driver)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(io::Error::other(
                "the core's thread stopped while building its executor",
            ))
        }
    }
}

/// Builds one core's executor: on io_uring with cooperative task running, else on a plain
/// ring (kernels before 5.19 refuse the flag), else on epoll, as far as `io_driver` allows.
fn build_executor(
    id: usize,
    settings: &ExecutorSettings,
    pool: &DefaultThreadPool,
) -> io::Result<(Executor, ActiveDriver)> {
    let epoll = || {
        let executor = RuntimeBuilder::<LegacyDriver>::new()
            .attach_thread_pool(Box::new(pool.clone()))
            .enable_timer()
            .build()?;
        Ok((executor.into(), ActiveDriver::Epoll))
    };
    let fallback = |why: &dyn fmt::Display| {
        tracing::warn!(core = id, error = %why, "io_uring unavailable: serving through epoll");
        epoll()
    };
    match settings.io_driver {
        IoDriver::Epoll => return epoll(),
        // The probe sets up and drops a small ring: a seccomp profile or sysctl that
        // forbids io_uring fails it at once.
        IoDriver::Auto if !monoio::utils::detect_uring() => {
            return fallback(&"forbidden or missing")
        }
        IoDriver::Auto | IoDriver::IoUring => {}
    }
    let ring = |flags: Option<io_uring::Builder>| {
        let mut builder = RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(RING_ENTRIES)
            .attach_thread_pool(Box::new(pool.clone()));
        if !settings.idle_spin.is_zero() {
            builder = builder.with_park_spin(Box::new(IdleWatch::new(
                settings.idle_spin,
                settings.watching.clone(),
            )));
        }
        if let Some(flags) = flags {
            builder = builder.uring_builder(flags);
        }
        let executor = builder.enable_timer().build()?;
        Ok::<_, io::Error>((executor.into(), ActiveDriver::IoUring))
    };
    let mut cooperative = io_uring::IoUring::builder();
    // The flag tells a watching executor that completions wait for it to enter.
    cooperative.setup_coop_taskrun().setup_taskrun_flag();
    let refused = match ring(Some(cooperative)) {
        Ok(built) => return Ok(built),
        Err(e) => e,
    };
    tracing::warn!(core = id, error = %refused, "io_uring with cooperative task running unavailable; trying a plain ring");
    let unavailable = match ring(None) {
        Ok(built) => return Ok(built),
        Err(e) => e,
    };
    if settings.io_driver == IoDriver::IoUring {
        return Err(io::Error::new(
            unavailable.kind(),
            format!("io_uring unavailable and CACHE_IO_DRIVER is io-uring: {unavailable}"),
        ));
    }
    fallback(&unavailable)
}

/// A long task's share of its core: it runs for about a slice at a time, then lets every
/// task queued behind it run and the executor reap completions, then goes on.
///
/// A plain yield is not enough: monoio puts a task that wakes itself at the front of its
/// run queue, so it would run again at once ([`yield_to_queued`] wakes it from behind the
/// others). A timer of the shortest length would do it, but parks the task until the
/// timer wheel's next tick, about a millisecond: a task with a 100 µs slice then ran at
/// a tenth of its speed, so a client waited 3.4 s for an invalidation of a million
/// entries that took 0.3 s whole (BENCHMARKS.md, "Invalidations in steps").
pub(crate) struct Budget {
    slice: Duration,
    since: Instant,
}

impl Budget {
    /// The slice of work that has no deadline of its own (saving a snapshot).
    const SLICE: Duration = Duration::from_millis(1);

    pub fn new() -> Self {
        Self::with_slice(Self::SLICE)
    }

    /// A budget for work that should hold the core for less than a millisecond at a time
    /// and can take several milliseconds overall (the metrics' merge of every core's
    /// histograms, the owner's expiry of many entries due together).
    pub fn with_slice(slice: Duration) -> Self {
        Self {
            slice,
            since: Instant::now(),
        }
    }

    /// Gives the core back if this task has run for a slice since it last did: for as
    /// long, or until the executor has nothing else to run or submit.
    pub async fn spend(&mut self) {
        if self.since.elapsed() < self.slice {
            return;
        }
        let yielded = Instant::now();
        loop {
            yield_to_queued().await;
            if !monoio::other_work_pending() || yielded.elapsed() >= self.slice {
                break;
            }
        }
        self.since = Instant::now();
    }
}

/// Lets every task queued now run, and the executor reap its ring, before the caller goes
/// on. The wake comes from a task spawned for it, which monoio queues behind the others;
/// when the queue is not empty after a pass over it, monoio reaps completions (without
/// waiting) before the next pass, so connections whose data came meanwhile run too.
async fn yield_to_queued() {
    let mut asked = false;
    std::future::poll_fn(|cx| {
        if asked {
            return std::task::Poll::Ready(());
        }
        asked = true;
        let waker = cx.waker().clone();
        monoio::spawn(async move { waker.wake() });
        std::task::Poll::Pending
    })
    .await
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
/// That time is added up in `watching` (the metric `idle_watch_us`), so that the work can
/// be told from the watch: busy time less watching time.
#[derive(Debug)]
pub(crate) struct IdleWatch {
    max: Duration,
    window: Duration,
    watching: Arc<Counter>,
}

impl IdleWatch {
    pub fn new(max: Duration, watching: Arc<Counter>) -> Self {
        Self {
            max,
            window: Duration::ZERO,
            watching,
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

    fn watched(&mut self, lasted: Duration) {
        self.watching
            .add(u64::try_from(lasted.as_nanos()).unwrap_or(u64::MAX));
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
        let settings = ExecutorSettings {
            blocking_threads: 1,
            idle_spin: Duration::ZERO,
            io_driver: IoDriver::Auto,
            watching: Default::default(),
        };
        let (core, driver) = start_core(0, settings, move || async move {
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
        .unwrap();
        core.join().unwrap();
        let [alone, task_queued, after_connect, read_queued] = told.recv().unwrap();
        assert!(!alone, "nothing else in hand at the start");
        assert!(task_queued, "a spawned task waits to run");
        assert!(!after_connect, "the connect was submitted and reaped");
        // The epoll driver queues nothing ahead, so only a ring has a receive waiting.
        assert_eq!(
            read_queued,
            driver == ActiveDriver::IoUring,
            "a receive waits in the ring"
        );
        assert!(!monoio::other_work_pending(), "false outside a runtime");
    }

    /// A receive abandoned in flight keeps its socket open until its completion comes;
    /// the socket is then closed by the driver, outside its completion loop (the vendored
    /// monoio's `UringInner::orphans`; a close submitted from inside the loop fails a
    /// debug assertion there).
    #[test]
    fn a_socket_whose_last_handle_is_an_abandoned_receive_closes_when_it_completes() {
        use monoio::io::AsyncReadRent;
        use std::io::{Read, Write};
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (dropped_tx, dropped) = std::sync::mpsc::channel();
        let peer_done = std::sync::Arc::new(AtomicBool::new(false));
        let done = peer_done.clone();
        let settings = ExecutorSettings {
            blocking_threads: 1,
            idle_spin: Duration::ZERO,
            io_driver: IoDriver::Auto,
            watching: Default::default(),
        };
        let (core, _driver) = start_core(0, settings, move || async move {
            let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
            let reading = stream.read(Vec::with_capacity(16));
            drop(reading);
            drop(stream);
            dropped_tx.send(()).unwrap();
            let give_up = Instant::now() + Duration::from_secs(10);
            while !done.load(Ordering::Acquire) && Instant::now() < give_up {
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        dropped.recv().unwrap();
        // Completes the receive if its cancel has not already.
        let _ = peer.write_all(b"x");
        let mut rest = Vec::new();
        let closed = peer.read_to_end(&mut rest);
        peer_done.store(true, Ordering::Release);
        core.join().expect("the core's thread did not panic");
        // A close with the byte unread resets the connection instead of ending it; either
        // tells the peer it is closed, where a socket left open would time the read out.
        let seen_closed = match &closed {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        };
        assert!(seen_closed, "the socket was closed: {closed:?}");
    }

    /// A task that spends a budget, on either driver: between two of its slices every
    /// task queued behind it runs, and while they have more to do they get the core for
    /// more than one turn (up to a slice; a machine that stalls this thread in every one
    /// of the waits would fail this); and a receive armed before its data came completes
    /// while the task still works (it gives up after 10 s, which fails the test).
    #[test]
    fn a_budgeted_task_lets_queued_tasks_and_arriving_data_through() {
        use monoio::io::AsyncReadRent;
        use std::cell::Cell;
        use std::io::Write;
        use std::rc::Rc;
        for io_driver in [IoDriver::IoUring, IoDriver::Epoll] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (armed_tx, armed) = std::sync::mpsc::channel();
            let (received_tx, received_rx) = std::sync::mpsc::channel();
            let settings = ExecutorSettings {
                blocking_threads: 1,
                idle_spin: Duration::ZERO,
                io_driver,
                watching: Default::default(),
            };
            let (core, driver) = start_core(0, settings, move || async move {
                let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
                let received = Rc::new(Cell::new(false));
                let reader = monoio::spawn({
                    let received = received.clone();
                    async move {
                        let (read, _) = stream.read(Vec::with_capacity(16)).await;
                        received.set(read.unwrap() == 1);
                    }
                });
                let ticks = Rc::new(Cell::new(0u64));
                let ticker = monoio::spawn({
                    let (ticks, received) = (ticks.clone(), received.clone());
                    async move {
                        while !received.get() {
                            ticks.set(ticks.get() + 1);
                            yield_to_queued().await;
                        }
                    }
                });
                let mut budget = Budget::with_slice(us(100));
                let give_up = Instant::now() + Duration::from_secs(10);
                let (mut slices, mut most_ticks) = (0, 0);
                while !received.get() && Instant::now() < give_up {
                    let slice = Instant::now();
                    while slice.elapsed() < us(150) {
                        std::hint::spin_loop();
                    }
                    let before = ticks.get();
                    budget.spend().await;
                    assert!(ticks.get() > before || received.get(), "the ticker ran");
                    most_ticks = most_ticks.max(ticks.get() - before);
                    slices += 1;
                    if slices == 3 {
                        // The receive is armed by now; its data comes while this works.
                        armed_tx.send(()).unwrap();
                    }
                }
                assert!(
                    most_ticks > 1,
                    "the ticker had more than one turn in a wait"
                );
                received_tx.send(received.get()).unwrap();
                if received.get() {
                    reader.await;
                    ticker.await;
                }
            })
            .unwrap();
            let (mut peer, _) = listener.accept().unwrap();
            armed.recv().unwrap();
            peer.write_all(b"x").unwrap();
            assert!(
                received_rx.recv().unwrap(),
                "on {driver:?}, the data arrived while the task worked"
            );
            core.join().expect("the core's thread did not panic");
        }
    }

    #[test]
    fn the_window_widens_to_cover_short_waits_and_closes_on_long_ones() {
        let mut watch = IdleWatch::new(MAX, Default::default());
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
        let mut watch = IdleWatch::new(MAX, Default::default());
        watch.after_sleep(MAX);
        assert_eq!(watch.window(), us(10));
        watch.after_sleep(MAX + Duration::from_nanos(1));
        assert_eq!(watch.window(), Duration::ZERO);
    }

    #[test]
    fn the_time_watched_is_added_up_and_leaves_the_window_as_it_is() {
        let watching = Arc::new(Counter::default());
        let mut watch = IdleWatch::new(MAX, watching.clone());
        watch.after_sleep(us(25));
        let window = watch.window();
        watch.watched(us(7));
        watch.watched(Duration::from_nanos(1_500));
        assert_eq!(watching.get(), 8_500);
        assert_eq!(watch.window(), window);
    }

    #[test]
    fn a_zero_most_never_opens_the_window() {
        let mut watch = IdleWatch::new(Duration::ZERO, Default::default());
        for waited in [Duration::ZERO, us(1), Duration::from_secs(1)] {
            watch.after_sleep(waited);
            assert_eq!(watch.window(), Duration::ZERO);
        }
    }
}
