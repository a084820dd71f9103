//! The runtime a load thread runs on: the service's own executor (`net::runtime`), one
//! per thread, on io_uring where the kernel allows it, else on epoll, and busy polling on
//! it ([`Spin`]).
//!
//! Why not tokio, which the load ran on before: on loopback a load thread does about the
//! same kernel work per request as the server it loads (each side's send delivers into
//! the other's socket), so what the client costs on its core bounds what it can show of
//! the server's. Measured against cache-manager and Redis, each on its own core
//! (BENCHMARKS.md, "A load thread on io_uring"): on io_uring, with completions run as task
//! work when the thread next enters the kernel and many connections' receives and sends
//! sharing each `io_uring_enter`, the load thread's user space fell from 18 to 19 % of its
//! samples to 8 %, and cache-manager served about 13 % more requests a second through it,
//! Redis the same. epoll remains for kernels without io_uring, for policies that forbid
//! it, and to compare the two (`--io-driver`). The executor is built by the service's own
//! function, so the client's rings are set up exactly as a core's.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::task::JoinHandle;
pub use net::runtime::{ActiveDriver, IoDriver};

/// A load thread: its output once it ends, and the driver its executor was built on.
pub struct Thread<T> {
    handle: std::thread::JoinHandle<()>,
    output: mpsc::Receiver<T>,
    pub driver: ActiveDriver,
}

impl<T> Thread<T> {
    /// Runs `main` on a new thread pinned to the `cpu`-th CPU this process may run on
    /// (counted modulo their number), on an executor built as the service builds a core's
    /// (`net::runtime::start_core`: io_uring with cooperative task running, else a plain
    /// ring, else epoll, as `driver` allows), without its idle watch. Returns once the
    /// executor is built.
    pub fn start<F, Fut>(cpu: usize, driver: IoDriver, main: F) -> io::Result<Self>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let settings = net::runtime::ExecutorSettings {
            blocking_threads: 1,
            idle_spin: Duration::ZERO,
            io_driver: driver,
            watching: Default::default(),
        };
        let (done, output) = mpsc::channel();
        let (handle, driver) = net::runtime::start_core(cpu, settings, move || async move {
            let _ = done.send(main().await);
        })?;
        Ok(Self {
            handle,
            output,
            driver,
        })
    }

    /// Waits for the thread to end and gives `main`'s output.
    pub fn join(self) -> io::Result<T> {
        let ended = self.handle.join();
        match (ended, self.output.try_recv()) {
            (Ok(()), Ok(output)) => Ok(output),
            _ => Err(io::Error::other("a load thread panicked")),
        }
    }
}

/// Runs `main` to its end on a [`Thread`] pinned to the last CPU this process may run on.
pub fn run<T, F, Fut>(driver: IoDriver, main: F) -> io::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
    T: Send + 'static,
{
    Thread::start(last_cpu(), driver, main)?.join()
}

/// The index of the last CPU this process may run on: servers pin from the first up, so
/// on a shared machine the load generator keeps off their cores for as long as it can.
pub fn last_cpu() -> usize {
    core_affinity::get_core_ids().map_or(0, |cpus| cpus.len().saturating_sub(1))
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

    /// Runs `test` and fails if it takes longer than `limit` (a starved task would
    /// otherwise hang the test instead of failing it).
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
                run(driver, move || async move {
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
    fn a_thread_says_which_driver_it_ran_on_and_gives_its_output() {
        let thread = Thread::start(last_cpu(), IoDriver::Epoll, || async { 7 }).unwrap();
        assert_eq!(thread.driver, ActiveDriver::Epoll);
        assert_eq!(thread.join().unwrap(), 7);
        let failed = Thread::start(0, IoDriver::Auto, || async { panic!("on purpose") });
        assert!(failed.unwrap().join().is_err(), "a panic is an error");
    }
}
