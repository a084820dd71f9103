//! Starting and stopping the service: one executor pinned to each core (`runtime.rs`), each
//! owning one engine shard and its own listener on the shared address (SO_REUSEPORT, so the
//! kernel spreads connections across cores).
//!
//! On every core run: the accept loop, one task per connection, the shard's owner (the
//! only task that writes the shard, draining its mailbox in order; see `owner.rs`) and a
//! housekeeping task that asks the owner to sweep expired entries every
//! CACHE_CLEANUP_INTERVAL. With Redis configured, core 0 also follows the
//! coherence events (`coherence.rs`). On SIGTERM/SIGINT every core stops accepting, lets open
//! connections finish the request in hand, and the process exits 0 once all are closed
//! or CACHE_SHUTDOWN_GRACE_MS has passed.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use engine::metrics::Counter;
use engine::{mailboxes, Clock, CoarseClock, Router, ShardConfig, ShardMetrics, ShardWriter};
use monoio::net::TcpListener;

use crate::api::Api;
use crate::coherence;
use crate::config::Config;
use crate::core::{Core, CoreStats, Latch, Shared, SnapshotStats};
use crate::history::History;
use crate::http;
use crate::messages::{OwnerMessage, Restored};
use crate::open_files;
use crate::owner::Owner;
use crate::runtime;
use crate::stats;
use crate::tiers::{self, L2Tier, Tiers};
use crate::warm;

/// Depth of each owner's mailbox; senders wait when it is full.
const MAILBOX_DEPTH: usize = 4096;

/// Runs the service until a signal stops it.
pub fn run(mut config: Config) -> anyhow::Result<()> {
    open_files::fit_process(&mut config)?;
    let config = Arc::new(config);
    let cores = config.cores();
    let clock = CoarseClock::new();
    let router = Router::new(cores);
    let (mail, receivers) = mailboxes::<OwnerMessage>(router.clone(), MAILBOX_DEPTH);
    let l2 = match config.l2() {
        Some(l2_config) => {
            let client = l2::L2::start(l2_config).context("starting the Redis tier (REDIS_URL)")?;
            let instance = config.instance_id();
            // This run's epoch: an instance restarted with a fixed CACHE_INSTANCE_ID
            // starts its sequence again, and the others must see that it is a new run.
            let epoch = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
            let streams = match config.events_sharded {
                true => client.event_streams(&config.events_channel),
                false => l2::Streams::single(&config.events_channel),
            };
            let publisher = client.publisher(&instance, epoch, streams, config.events_queue);
            Some(L2Tier {
                client,
                publisher,
                instance,
                epoch,
                l1_flushes: Counter::default(),
                events_applied: Counter::default(),
            })
        }
        None => None,
    };
    let shards: Box<[Arc<ShardMetrics>]> = (0..cores).map(|_| Arc::default()).collect();
    let mut writers: Vec<ShardWriter> = (0..cores)
        .map(|i| {
            let config = ShardConfig {
                max_entries: split(config.l1_max_entries as u64, cores, i) as usize,
                max_bytes: split(config.l1_max_bytes, cores, i),
                stale_window_ms: engine::deadline_ms(0, config.stale_window()),
                eviction: config.eviction,
                huge_pages: config.l1_huge_pages,
            };
            ShardWriter::new(
                config,
                shards[i].clone(),
                clock.now_ms(),
                router.hasher().clone(),
            )
        })
        .collect();
    // Made before the snapshot is loaded: L1 keeps versions relative to it (`stored`).
    let versions = tiers::instance_versions();
    let loaded = warm::load(&config, &router, &versions, &mut writers, clock.now_ms());
    let shared = Arc::new(Shared {
        config: config.clone(),
        router,
        readers: writers.iter().map(ShardWriter::reader).collect(),
        mail,
        tiers: Tiers::new(l2, versions, config.fault_first_l2_write_delay()),
        origin: config.origin(),
        origin_fetches: Counter::default(),
        origin_errors: Counter::default(),
        clock,
        shards,
        cores: (0..cores).map(|_| CoreStats::default()).collect(),
        history: History::default(),
        snapshots: SnapshotStats::default(),
        shutdown: Latch::default(),
        started: Latch::default(),
        subscribed: Latch::default(),
        saved: Latch::default(),
    });
    shared.snapshots.restored.add(loaded.restored as u64);
    watch_signals(shared.clone())?;

    let (ready_tx, ready_rx) = flume::bounded::<Result<(), String>>(cores);
    let draining = Arc::new(AtomicUsize::new(cores));
    let mut executors = Vec::with_capacity(cores);
    let mut drivers = Vec::with_capacity(cores);
    let restored = loaded.to_confirm.into_iter();
    for (id, ((writer, mailbox), restored)) in
        writers.into_iter().zip(receivers).zip(restored).enumerate()
    {
        let (shared, ready, draining) = (shared.clone(), ready_tx.clone(), draining.clone());
        let blocking_threads = match config.origin_url {
            Some(_) => config.origin_concurrency.max(1),
            None => 1,
        };
        let settings = runtime::ExecutorSettings {
            blocking_threads,
            idle_spin: config.idle_spin(),
            io_driver: config.io_driver,
            watching: shared.cores[id].idle_watch.clone(),
        };
        let stats = shared.clone();
        let (executor, driver) = runtime::start_core(id, settings, move || async move {
            let core = Rc::new(Core::new(id, shared));
            core_main(core, writer, mailbox, restored, ready, draining).await
        })
        .with_context(|| format!("starting core {id}"))?;
        // Set once: this is the only place that learns what the core was built on.
        let _ = stats.cores[id].io_driver.set(driver);
        drivers.push(driver.to_string());
        executors.push(executor);
    }
    drop(ready_tx);
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shared.shutdown.trigger();
                bail!(e);
            }
            Err(_) => bail!("a core stopped before it was ready"),
        }
    }
    shared.started.trigger();
    let tier = match &shared.tiers.l2 {
        Some(t) => format!(
            "L1 + L2 (prefix {:?}, events on {:?} as {})",
            config.l2_prefix, config.events_channel, t.instance
        ),
        None => "L1 only".to_owned(),
    };
    tracing::info!(
        listen = %config.listen, cores, io_driver = %drivers.join(","), read_path = ?config.read_path, eviction = %config.eviction,
        l1_max_entries = config.l1_max_entries, l1_max_bytes = config.l1_max_bytes,
        "cache-manager ready: {tier}"
    );
    if !engine::fence_free_reads() {
        tracing::warn!("membarrier unavailable: every lock-free read runs a full memory fence");
    }
    for executor in executors {
        executor
            .join()
            .map_err(|_| anyhow::anyhow!("a core's thread panicked"))?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Connections a core's listener lets wait to be accepted.
const BACKLOG: i32 = 1024;

/// A core's listening socket on the shared address: `SO_REUSEPORT`, so that every core
/// has its own and the kernel spreads connections over them, non-blocking for the epoll
/// driver, and with `TCP_NODELAY`, which Linux's accepted sockets inherit: a connection
/// costs no `setsockopt` of its own, a syscall fewer for every client that connects per
/// request (a test checks the inheritance).
fn listening_socket(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Core `i`'s part of `total` over `cores` parts (they add up to exactly `total`).
fn split(total: u64, cores: usize, i: usize) -> u64 {
    total / cores as u64 + u64::from((i as u64) < total % cores as u64)
}

fn watch_signals(shared: Arc<Shared>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                tracing::info!(
                    signal,
                    "stopping: no new connections, finishing requests in hand"
                );
                shared.shutdown.trigger();
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

async fn core_main(
    core: Rc<Core>,
    writer: ShardWriter,
    mailbox: flume::Receiver<OwnerMessage>,
    restored: Vec<Restored>,
    ready: flume::Sender<Result<(), String>>,
    draining: Arc<AtomicUsize>,
) {
    let listener = match listening_socket(core.config.listen).and_then(TcpListener::from_std) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!(
                "core {} cannot listen on {}: {e}",
                core.id, core.config.listen
            )));
            return;
        }
    };
    let owner = Owner::new(writer, core.shared.clone());
    monoio::spawn(owner.run(mailbox, MAILBOX_DEPTH));
    monoio::spawn(housekeeping(core.clone()));
    // Core 0's saves (timed, then the shutdown's) one at a time.
    let saving = Rc::new(async_lock::Mutex::new(()));
    if core.id == 0 {
        monoio::spawn(coherence::follow(core.shared.clone()));
        if core.config.metrics_enabled {
            monoio::spawn(stats::sample_every_second(core.shared.clone()));
        }
        if let Some(interval) = core.config.snapshot_interval() {
            let (shared, saving) = (core.shared.clone(), saving.clone());
            monoio::spawn(warm::save_every(shared, interval, saving));
        }
    }
    warm::confirm(&core.shared, core.id, restored).await;
    let _ = ready.send(Ok(()));
    drop(ready);

    let api = Rc::new(Api(core.clone()));
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            core.shutdown_signal().await;
            None
        })
        .await;
        match accepted {
            None => break,
            Some(Ok((stream, _peer))) => {
                core.stats().accepted.incr();
                if core.open_connections() >= core.config.max_connections {
                    core.stats().refused.incr();
                    monoio::spawn(http::refuse_connection(stream, core.clone()));
                    continue;
                }
                let guard = core.connection_opened();
                let (conn_core, handler) = (core.clone(), api.clone());
                monoio::spawn(async move {
                    http::serve(stream, conn_core, handler, guard.slot()).await;
                    drop(guard);
                });
            }
            Some(Err(e)) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(core = core.id, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    core.wake_idle_connections();

    let deadline = Instant::now() + Duration::from_millis(core.config.shutdown_grace_ms);
    while core.open_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    if core.open_connections() > 0 {
        tracing::warn!(
            core = core.id,
            open = core.open_connections(),
            "grace period over; closing"
        );
    }
    // Other cores may still be finishing requests that need this core's shard.
    draining.fetch_sub(1, Ordering::SeqCst);
    while draining.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(5)).await;
    }
    // Every core's owner serves the shutdown snapshot, so every core stays until it is
    // written.
    if core.config.snapshot_path.is_some() {
        if core.id == 0 {
            let _one_at_a_time = saving.lock().await;
            let _ = warm::save(&core.shared).await;
            core.shared.saved.trigger();
        }
        core.shared.saved.wait().await;
    }
}

/// Asks the owner to sweep expired entries every CACHE_CLEANUP_INTERVAL and (on core 0)
/// logs a metrics summary every METRICS_INTERVAL; sleeps in between, so an idle core is
/// not woken up.
async fn housekeeping(core: Rc<Core>) {
    let shared = core.shared.clone();
    let cleanup = Duration::from_secs(core.config.cleanup_interval);
    let summary = (core.id == 0 && core.config.metrics_enabled)
        .then(|| Duration::from_secs(core.config.metrics_interval))
        .filter(|interval| !interval.is_zero());
    let mut next_cleanup = Instant::now() + cleanup;
    let mut next_summary = summary.map(|interval| Instant::now() + interval);
    loop {
        let next = next_summary.map_or(next_cleanup, |s| s.min(next_cleanup));
        monoio::time::sleep(next.saturating_duration_since(Instant::now())).await;
        let now = Instant::now();
        if now >= next_cleanup {
            next_cleanup = now + cleanup;
            let _ = shared
                .mail
                .call(core.id, |reply| OwnerMessage::Expire { reply })
                .await;
        }
        if let (Some(at), Some(interval)) = (next_summary, summary) {
            if now >= at {
                next_summary = Some(now + interval);
                let summary = stats::snapshot(&shared).await.summary();
                tracing::info!(summary = %summary, "metrics");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_sockets_inherit_no_delay_from_the_listener() {
        let listener = listening_socket(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(
            accepted.nodelay().unwrap(),
            "serve() no longer sets TCP_NODELAY on each connection: it relies on this"
        );
    }

    #[test]
    fn every_core_listens_on_the_same_address() {
        let first = listening_socket(([127, 0, 0, 1], 0).into()).unwrap();
        let second = listening_socket(first.local_addr().unwrap()).unwrap();
        assert_eq!(first.local_addr().unwrap(), second.local_addr().unwrap());
    }
}
