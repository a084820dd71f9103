//! What the connections of one core share (`Core`), and what all cores share (`Shared`):
//! the router, every shard's lock-free reader, the owners' mailboxes, the coarse clock,
//! the counters, and the shutdown signal.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use engine::metrics::{Counter, Gauge};
use engine::{Clock, CoarseClock, LatencyRecorder, Mailboxes, Router, ShardMetrics, TableReader};
use event_listener::Event;

use crate::config::Config;
use crate::exchange::{Conditions, HttpDate};
use crate::messages::OwnerMessage;
use crate::runtime::ActiveDriver;
use crate::tiers::Tiers;

/// One core's request-side counters (the shard-side ones are in its `ShardMetrics`).
#[derive(Debug, Default)]
pub struct CoreStats {
    pub connections: Gauge,
    /// Connections accepted, served or refused.
    pub accepted: Counter,
    pub requests: Counter,
    /// Requests answered with an error before reaching a handler (framing, limits).
    pub rejected: Counter,
    /// Connections turned away over CACHE_MAX_CONNECTIONS.
    pub refused: Counter,
    /// Connections closed because a send made no progress for CACHE_SEND_TIMEOUT_MS.
    pub send_timeouts: Counter,
    pub latency: OpLatency,
    /// What the core's executor waits on, set once it is built.
    pub io_driver: OnceLock<ActiveDriver>,
    /// Nanoseconds the core spent watching its ring with nothing to run
    /// (`runtime::IdleWatch`): busy time that was not work.
    pub idle_watch: Arc<Counter>,
}

/// Latency per operation, on one core.
#[derive(Debug, Default)]
pub struct OpLatency {
    pub get: LatencyRecorder,
    pub set: LatencyRecorder,
    pub delete: LatencyRecorder,
    pub invalidate: LatencyRecorder,
}

impl OpLatency {
    /// The recorders in a fixed order: get, set, delete, invalidate.
    pub fn each(&self) -> [&LatencyRecorder; 4] {
        [&self.get, &self.set, &self.delete, &self.invalidate]
    }
}

/// How snapshots went (`warm.rs`).
#[derive(Debug, Default)]
pub struct SnapshotStats {
    pub saved: Counter,
    pub failed: Counter,
    /// Entries the start's snapshot put back in L1 (added up over the cores).
    pub restored: Counter,
    /// When the last snapshot was written, in seconds since the UNIX epoch (0: never).
    pub last_saved_s: Gauge,
}

/// Set once; wakes everything waiting for it, on every core.
#[derive(Debug, Default)]
pub struct Latch {
    flag: AtomicBool,
    event: Event,
}

impl Latch {
    pub fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.event.notify(usize::MAX);
    }

    pub fn is_triggered(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    pub async fn wait(&self) {
        loop {
            if self.is_triggered() {
                return;
            }
            let listener = self.event.listen();
            if self.is_triggered() {
                return;
            }
            listener.await;
        }
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub router: Router,
    /// One reader per shard, for each core to clone its own from (see `Core::readers`).
    pub readers: Box<[TableReader]>,
    pub mail: Mailboxes<OwnerMessage>,
    /// L2 (when configured), the version clock, and the write path through them.
    pub tiers: Tiers,
    pub origin: Option<crate::origin::Origin>,
    /// Fills that went to the origin, and those that failed there.
    pub origin_fetches: Counter,
    pub origin_errors: Counter,
    pub clock: CoarseClock,
    /// Indexed by shard, which is also the core that owns it.
    pub shards: Box<[Arc<ShardMetrics>]>,
    pub cores: Box<[CoreStats]>,
    /// The last minutes, a sample a second, for the dashboard.
    pub history: crate::history::History,
    pub snapshots: SnapshotStats,
    /// Set on SIGTERM/SIGINT.
    pub shutdown: Latch,
    /// Set once every core accepts connections (after a warm restart with L2, a core
    /// accepts once its restored entries are checked): until then the service is not
    /// ready.
    pub started: Latch,
    /// Set once the coherence events' first subscription is in place (never without L2):
    /// from then on no write of another instance goes unseen.
    pub subscribed: Latch,
    /// Set once the shutdown snapshot is written (or failed), for the cores waiting to
    /// stop.
    pub saved: Latch,
}

pub struct Core {
    pub id: usize,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    /// This core's own handles on every shard's table: each counts this core's lookups
    /// for the owner's eviction policy without sharing a cache line with other cores.
    pub readers: Box<[TableReader]>,
    open_connections: Cell<usize>,
    /// The wakers of this core's connections waiting for their next request, one slot per
    /// open connection (slots are reused): woken together when the service stops. Waiting
    /// this way costs no allocation and no lock, which a listener on the process-wide
    /// latch for every read did.
    idle: RefCell<Vec<Option<Waker>>>,
    free_slots: RefCell<Vec<usize>>,
    /// The `Date` header for the current second.
    date: Cell<(u64, HttpDate)>,
}

impl Core {
    pub fn new(id: usize, shared: Arc<Shared>) -> Self {
        Self {
            id,
            config: shared.config.clone(),
            readers: shared.readers.clone(),
            shared,
            open_connections: Cell::new(0),
            idle: RefCell::default(),
            free_slots: RefCell::default(),
            date: Cell::new((u64::MAX, [0; 29])),
        }
    }

    pub fn stats(&self) -> &CoreStats {
        &self.shared.cores[self.id]
    }

    pub fn shard_metrics(&self) -> &ShardMetrics {
        &self.shared.shards[self.id]
    }

    pub fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    pub fn stopping(&self) -> bool {
        self.shared.shutdown.is_triggered()
    }

    pub async fn shutdown_signal(&self) {
        self.shared.shutdown.wait().await
    }

    pub fn open_connections(&self) -> usize {
        self.open_connections.get()
    }

    /// Counts a connection open until the returned guard drops, and gives it a slot for
    /// [`poll_stopping`](Self::poll_stopping).
    pub fn connection_opened(self: &Rc<Self>) -> ConnectionGuard {
        self.set_open(self.open_connections.get() + 1);
        let slot = self.free_slots.borrow_mut().pop().unwrap_or_else(|| {
            let mut idle = self.idle.borrow_mut();
            idle.push(None);
            idle.len() - 1
        });
        ConnectionGuard {
            core: self.clone(),
            slot,
        }
    }

    /// Ready once the service is stopping; the connection holding `slot` polls it while
    /// it has no request in hand, beside its read and its deadline.
    pub fn poll_stopping(&self, slot: usize, cx: &mut Context<'_>) -> Poll<()> {
        if self.stopping() {
            return Poll::Ready(());
        }
        let mut idle = self.idle.borrow_mut();
        let waiting = &mut idle[slot];
        if !waiting.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waiting = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Wakes every connection waiting in [`poll_stopping`](Self::poll_stopping); the
    /// accept loop calls it once the shutdown latch is set.
    pub fn wake_idle_connections(&self) {
        let wakers: Vec<Waker> = self
            .idle
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        wakers.into_iter().for_each(Waker::wake);
    }

    fn set_open(&self, n: usize) {
        self.open_connections.set(n);
        self.stats().connections.set(n as u64);
    }
}

impl Conditions for Core {
    /// The `Date` of the current second, formatted once a second per core.
    fn http_date(&self) -> HttpDate {
        let second = self.now_ms() / 1000;
        match self.date.get() {
            (kept, date) if kept == second => date,
            _ => {
                let text = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(second));
                // IMF-fixdate is 29 bytes for every year httpdate writes (1970 to 9999),
                // and the coarse clock is read from the system's.
                let date = text
                    .as_bytes()
                    .try_into()
                    .unwrap_or(*b"Thu, 01 Jan 1970 00:00:00 GMT");
                self.date.set((second, date));
                date
            }
        }
    }

    fn stopping(&self) -> bool {
        Core::stopping(self)
    }
}

pub struct ConnectionGuard {
    core: Rc<Core>,
    slot: usize,
}

impl ConnectionGuard {
    pub fn slot(&self) -> usize {
        self.slot
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.core.idle.borrow_mut()[self.slot] = None;
        self.core.free_slots.borrow_mut().push(self.slot);
        self.core.set_open(self.core.open_connections.get() - 1);
    }
}
