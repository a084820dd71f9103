//! The runtime a load thread runs on: one monoio executor per thread, on io_uring where
//! the kernel allows it, else on epoll.
//!
//! Why not tokio, which the load ran on before: on loopback a load thread does the same
//! kernel work per request as the server it loads (each side's send delivers into the
//! other's socket), so a client that pays more per request than the server cannot show
//! the server's capacity. Measured against cache-manager and Redis, each on its own core
//! (BENCHMARKS.md, "A load thread on io_uring"), tokio's epoll loop cost the load core
//! more per request than the servers did, and it ran out first. A ring whose completions
//! run as task work when the thread next enters the kernel (`IORING_SETUP_COOP_TASKRUN`,
//! as the server's rings), where many connections' receives and sends share each
//! `io_uring_enter`, costs less. epoll remains for kernels without io_uring, for
//! policies that forbid it, and to compare the two (`--io-driver`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Instant;

use monoio::task::JoinHandle;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use serde::Serialize;

/// Submission-queue entries per thread: a receive or a send in flight for each of a
/// few thousand connections before the executor must submit mid-pass.
const RING_ENTRIES: u32 = 4096;

/// Which kernel interface a load thread waits on (`--io-driver`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum IoDriver {
    /// io_uring, or epoll where io_uring is missing or forbidden.
    #[default]
    Auto,
    /// io_uring only: a thread that cannot set up its ring fails the run.
    IoUring,
    /// epoll only.
    Epoll,
}

/// The interface a thread's executor was built on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActiveDriver {
    IoUring,
    Epoll,
}

impl std::fmt::Display for ActiveDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::IoUring => "io_uring",
            Self::Epoll => "epoll",
        })
    }
}

thread_local! {
    static ACTIVE: Cell<Option<ActiveDriver>> = const { Cell::new(None) };
}

/// The interface the current thread's executor runs on (`None` outside [`block_on`]).
pub fn active() -> Option<ActiveDriver> {
    ACTIVE.with(Cell::get)
}

/// Runs `future` to completion on a new executor of the kind `driver` allows, on the
/// calling thread, with timers enabled.
pub fn block_on<F: Future>(driver: IoDriver, future: F) -> io::Result<F::Output> {
    if driver != IoDriver::Epoll {
        let mut cooperative = io_uring::IoUring::builder();
        cooperative.setup_coop_taskrun();
        // Cooperative task running needs Linux 5.19; an older kernel gets a plain ring.
        let built = ring(Some(cooperative)).or_else(|_| ring(None));
        match built {
            Ok(mut runtime) => {
                return Ok(run_on(ActiveDriver::IoUring, || runtime.block_on(future)))
            }
            Err(e) if driver == IoDriver::IoUring => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("io_uring unavailable and --io-driver is io-uring: {e}"),
                ))
            }
            Err(e) => eprintln!("io_uring unavailable ({e}): this thread waits on epoll"),
        }
    }
    let mut runtime = RuntimeBuilder::<LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok(run_on(ActiveDriver::Epoll, || runtime.block_on(future)))
}

/// Runs `block_on` with [`active`] saying `driver`.
fn run_on<T>(driver: ActiveDriver, block_on: impl FnOnce() -> T) -> T {
    let outer = ACTIVE.with(|active| active.replace(Some(driver)));
    let output = block_on();
    ACTIVE.with(|active| active.set(outer));
    output
}

fn ring(
    flags: Option<io_uring::Builder>,
) -> io::Result<monoio::Runtime<monoio::time::TimeDriver<IoUringDriver>>> {
    let mut builder = RuntimeBuilder::<IoUringDriver>::new().with_entries(RING_ENTRIES);
    if let Some(flags) = flags {
        builder = builder.uring_builder(flags);
    }
    builder.enable_timer().build()
}

/// Busy polling on monoio: keeps the thread's executor turning (each turn submits and
/// reaps its ring, or polls its sockets, and fires due timers) rather than sleeping when
/// every task waits, and wakes tasks waiting for a moment ([`Spin::until`]) as soon as it
/// has come, to the microsecond rather than the timer's millisecond.
///
/// monoio runs a task that wakes itself while it runs again at once, ahead of every
/// other, so a task that keeps yielding would starve the rest of the thread. Here two
/// tasks take turns instead, each waking the other: a task woken by another goes to the
/// back of the run queue, behind the connections' tasks and the ring's completions.
#[derive(Default)]
pub struct Spin {
    /// Tasks waiting for a moment, and the moment; the spinners wake them once it came.
    waiting: RefCell<Vec<(Instant, Waker)>>,
    /// The spinner that passed its turn last, which the other wakes.
    parked: RefCell<Option<Waker>>,
    stopped: Cell<bool>,
}

impl Spin {
    /// Starts the two spinners on the current executor; they run until [`Spin::stop`].
    pub fn start(self: &Rc<Self>) -> [JoinHandle<()>; 2] {
        [
            monoio::spawn(self.clone().spin()),
            monoio::spawn(self.clone().spin()),
        ]
    }

    /// Lets the spinners end, so the executor can sleep again.
    pub fn stop(&self) {
        self.stopped.set(true);
    }

    /// Completes once `at` has come.
    pub async fn until(&self, at: Instant) {
        std::future::poll_fn(|cx| {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            self.waiting.borrow_mut().push((at, cx.waker().clone()));
            Poll::Pending
        })
        .await
    }

    async fn spin(self: Rc<Self>) {
        while !self.stopped.get() {
            self.wake_due();
            self.pass_turn().await;
        }
        if let Some(other) = self.parked.take() {
            other.wake();
        }
    }

    fn wake_due(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        self.waiting.borrow_mut().retain(|(at, waker)| {
            let waiting = *at > now;
            if !waiting {
                due.push(waker.clone());
            }
            waiting
        });
        due.into_iter().for_each(Waker::wake);
    }

    /// Wakes the other spinner and waits to be woken by it.
    async fn pass_turn(&self) {
        let mut passed = false;
        std::future::poll_fn(|cx| {
            if passed {
                return Poll::Ready(());
            }
            passed = true;
            if let Some(other) = self.parked.replace(Some(cx.waker().clone())) {
                other.wake();
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
    use std::sync::mpsc;
    use std::time::Duration;

    /// Runs `test` on a thread of its own and fails if it takes longer than `limit` (a
    /// starved task would otherwise hang the test instead of failing it).
    fn within<T: Send + 'static>(limit: Duration, test: impl FnOnce() -> T + Send + 'static) -> T {
        let (done, result) = mpsc::channel();
        std::thread::spawn(move || done.send(test()));
        result
            .recv_timeout(limit)
            .unwrap_or_else(|_| panic!("not done within {limit:?}"))
    }

    /// Busy polling keeps tasks in the run queue for the whole run, so the executor never
    /// parks, where monoio fired timers; the patch in vendor/monoio fires them when it
    /// submits instead (PATCHES.md). And the spinners must leave every other task its
    /// turns: a spawned task's timer, a wait for a moment, and a receive all complete while
    /// they run.
    #[test]
    fn a_spinning_executor_runs_timers_waits_and_io() {
        for driver in [IoDriver::Auto, IoDriver::Epoll] {
            within(Duration::from_secs(20), move || {
                block_on(driver, async {
                    let spin = Rc::new(Spin::default());
                    let spinners = spin.start();
                    let start = Instant::now();
                    let slept = monoio::spawn(async move {
                        monoio::time::sleep(Duration::from_millis(20)).await;
                        start.elapsed()
                    })
                    .await;
                    assert!(slept >= Duration::from_millis(20), "{driver:?}: {slept:?}");
                    let start = Instant::now();
                    spin.until(start + Duration::from_millis(5)).await;
                    assert!(start.elapsed() >= Duration::from_millis(5), "{driver:?}");
                    let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let addr = listener.local_addr().unwrap();
                    let peer = monoio::spawn(async move {
                        let (mut stream, _) = listener.accept().await.unwrap();
                        let (sent, _) = stream.write_all(b"ping".to_vec()).await;
                        sent.unwrap();
                    });
                    let mut stream = monoio::net::TcpStream::connect(addr).await.unwrap();
                    let (read, _) = stream.read(Vec::with_capacity(8)).await;
                    assert_eq!(read.unwrap(), 4, "{driver:?}");
                    peer.await;
                    spin.stop();
                    for spinner in spinners {
                        spinner.await;
                    }
                })
                .unwrap()
            });
        }
    }

    #[test]
    fn each_driver_runs_a_future_and_says_which_or_why_not() {
        assert_eq!(
            block_on(IoDriver::Epoll, async { active() }).unwrap(),
            Some(ActiveDriver::Epoll)
        );
        assert!(block_on(IoDriver::Auto, async { active() })
            .unwrap()
            .is_some());
        match block_on(IoDriver::IoUring, async { active() }) {
            Ok(driver) => assert_eq!(driver, Some(ActiveDriver::IoUring)),
            Err(e) => assert!(e.to_string().contains("io_uring unavailable"), "{e}"),
        }
        assert_eq!(active(), None, "outside the executor");
    }
}
