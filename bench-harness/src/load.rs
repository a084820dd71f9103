//! `cache-bench load`: drives a cache over HTTP from pinned threads, open or closed loop,
//! and records latency in HDR histograms per outcome (GET hit, GET miss, PUT, error).
//!
//! Each thread runs a monoio executor (`runtime`: io_uring, or epoll) with its share of
//! the connections, pinned to a core counted from the last one down. A connection is
//! kept for request after request, or with `--reconnect` made anew for each (the
//! connect counted in the request's latency) and dropped once its answer is read.
//! Requests target the cache-manager API (spelled in `target`): `GET
//! /api/cache/{prefix}{i}` (asking for raw bytes) and `PUT /api/cache/{prefix}{i}?ttl=S`
//! with a raw body. A GET answered 200 is a
//! hit, 404 a miss; any other status, a timeout or a broken connection is an error,
//! counted by kind. Results from the warm-up are discarded. A `redis://` target gets the
//! same keys as Redis `GET` and `SET … EX S` (see `client::resp_reply` for how replies
//! count), so that one client can load cache-manager, nginx and Redis alike.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::{rngs::SmallRng, Rng, SeedableRng};

use crate::client::Connection;
use crate::deadline::Deadlines;
use crate::pacing::{charged_start, corrected_latency, Schedule};
use crate::runtime::{ActiveDriver, IoDriver, Spin, Thread};
use crate::target::{resolve, Target};
use crate::workload::{KeyDistribution, Op, ValueSize, Workload};

#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadConfig {
    pub target: String,
    pub connections: usize,
    pub threads: usize,
    #[serde(with = "seconds")]
    pub duration: Duration,
    #[serde(with = "seconds")]
    pub warmup: Duration,
    /// Requests per second over all connections; `None` is closed loop.
    pub rate: Option<f64>,
    pub keys: u64,
    pub key_prefix: String,
    pub distribution: KeyDistribution,
    pub read_ratio: f64,
    pub value_size: ValueSize,
    pub ttl: Option<u64>,
    pub prefill: bool,
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    pub quiet: bool,
    /// The load threads never sleep (see `Workload::busy_poll` in main.rs).
    pub busy_poll: bool,
    /// What the load threads wait on.
    pub io_driver: IoDriver,
    /// A new connection for every request (`--reconnect`).
    pub reconnect: bool,
}

mod seconds {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

/// Latencies are recorded in microseconds, 1 µs to 1 minute, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Errors {
    pub connect: u64,
    pub timeout: u64,
    pub io: u64,
    /// By status code.
    pub status: BTreeMap<u16, u64>,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.io + self.status.values().sum::<u64>()
    }

    fn merge(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.io += other.io;
        for (code, n) in &other.status {
            *self.status.entry(*code).or_default() += n;
        }
    }
}

/// What one thread (or, merged, the whole run) measured.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub get_hit: Histogram<u64>,
    pub get_miss: Histogram<u64>,
    pub put: Histogram<u64>,
    /// Latency of the requests that failed with a status.
    pub error: Histogram<u64>,
    pub errors: Errors,
    /// When the last measured request completed.
    pub last_completed: Option<Instant>,
}

impl Default for Recorded {
    fn default() -> Self {
        Self {
            get_hit: histogram(),
            get_miss: histogram(),
            put: histogram(),
            error: histogram(),
            errors: Errors::default(),
            last_completed: None,
        }
    }
}

impl Recorded {
    fn merge(&mut self, other: &Recorded) {
        self.get_hit.add(&other.get_hit).expect("same bounds");
        self.get_miss.add(&other.get_miss).expect("same bounds");
        self.put.add(&other.put).expect("same bounds");
        self.error.add(&other.error).expect("same bounds");
        self.errors.merge(&other.errors);
        self.last_completed = self.last_completed.max(other.last_completed);
    }

    /// Every successful request.
    pub fn all(&self) -> Histogram<u64> {
        let mut all = self.get_hit.clone();
        all.add(&self.get_miss).expect("same bounds");
        all.add(&self.put).expect("same bounds");
        all
    }

    pub fn requests(&self) -> u64 {
        self.get_hit.len() + self.get_miss.len() + self.put.len() + self.errors.total()
    }
}

/// The outcome of a run.
pub struct LoadReport {
    pub config: LoadConfig,
    /// What the load threads ran on (one entry unless some fell back to epoll).
    pub drivers: Vec<ActiveDriver>,
    pub recorded: Recorded,
    /// Measured time (after the warm-up).
    pub elapsed: Duration,
    /// Per-second throughput and percentiles, as printed while running.
    pub windows: Vec<WindowSummary>,
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        self.recorded.requests() as f64 / self.elapsed.as_secs_f64()
    }

    pub fn hit_ratio(&self) -> f64 {
        let gets = self.recorded.get_hit.len() + self.recorded.get_miss.len();
        if gets == 0 {
            0.0
        } else {
            self.recorded.get_hit.len() as f64 / gets as f64
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct WindowSummary {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p99_us: u64,
}

/// One thread's report for one second of the run.
struct Window {
    second: u64,
    requests: u64,
    errors: u64,
    latency: Histogram<u64>,
}

struct ThreadState {
    recorded: Recorded,
    window: Histogram<u64>,
    window_requests: u64,
    window_errors: u64,
}

/// PUTs every key once, over up to 64 connections, before the measured run.
pub fn prefill(config: &LoadConfig) -> anyhow::Result<()> {
    let target = resolve(&config.target)?;
    let config = config.clone();
    crate::runtime::run(config.io_driver, move || async move {
        let connections = config.connections.clamp(1, 64) as u64;
        let mut tasks = Vec::new();
        for c in 0..connections {
            let (config, target) = (config.clone(), target.clone());
            tasks.push(monoio::spawn(async move {
                let mut conn = target
                    .connect()
                    .await
                    .with_context(|| format!("connecting to {}", target.addr))?;
                let mut rng = SmallRng::seed_from_u64(c);
                let mut request = Vec::new();
                let body = random_bytes(config.value_size.max, c);
                let mut key = c;
                while key < config.keys {
                    let len = rng.gen_range(config.value_size.min..=config.value_size.max);
                    target.put_request(
                        &mut request,
                        &config.key_prefix,
                        key,
                        config.ttl,
                        &body[..len],
                    );
                    let status = conn.exchange(&mut request).await?;
                    if status != 200 {
                        bail!("prefill PUT of key {key} answered {status}");
                    }
                    key += connections;
                }
                Ok(())
            }));
        }
        for task in tasks {
            task.await?;
        }
        Ok(())
    })?
}

/// Printable random bytes, so raw values are also valid UTF-8.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    (0..len)
        .map(|_| rng.sample(rand::distributions::Alphanumeric))
        .collect()
}

/// Shared, read-only for a run.
struct Plan {
    config: LoadConfig,
    target: Target,
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

/// Runs the load and returns what it measured.
pub fn run(config: LoadConfig) -> anyhow::Result<LoadReport> {
    let mut target = resolve(&config.target)?;
    if config.reconnect {
        target = target.closing_each_connection();
    }
    if config.connections == 0 {
        bail!("--connections must be at least 1");
    }
    if config.rate.is_some_and(|r| r <= 0.0) {
        bail!("--rate must be above 0");
    }
    if config.prefill {
        prefill(&config)?;
    }
    let threads = config.threads.clamp(1, config.connections);
    let start = Instant::now() + Duration::from_millis(20);
    let plan = std::sync::Arc::new(Plan {
        measure_from: start + config.warmup,
        end: start + config.warmup + config.duration,
        config,
        target,
        start,
    });
    let cpus = crate::runtime::last_cpu() + 1;
    let (tx, rx) = mpsc::channel::<Window>();
    let mut started = Vec::with_capacity(threads);
    for t in 0..threads {
        let (plan, tx) = (plan.clone(), tx.clone());
        let connections: Vec<usize> = (t..plan.config.connections).step_by(threads).collect();
        // From the last CPU down: servers pin from the first up, so on a shared machine
        // the load generator stays off their cores for as long as it can.
        let cpu = cpus - 1 - t % cpus;
        let driver = plan.config.io_driver;
        started.push(Thread::start(cpu, driver, move || {
            drive_thread(plan, connections, tx)
        })?);
    }
    drop(tx);
    let windows = show_progress(&plan, threads, rx);
    let mut recorded = Recorded::default();
    let mut drivers = Vec::new();
    for thread in started {
        drivers.push(thread.driver);
        recorded.merge(&thread.join()?);
    }
    drivers.sort_by_key(|d| *d as u8);
    drivers.dedup();
    let config = plan.config.clone();
    Ok(LoadReport {
        drivers,
        elapsed: measured_time(plan.measure_from, plan.end, recorded.last_completed),
        config,
        recorded,
        windows,
    })
}

/// The wall time the measured requests took: from the end of the warm-up to the end of
/// the run or, if later, the last measured completion. In open loop every request meant
/// for the measured time is sent, late if the server fell behind, so a server that cannot
/// keep up takes longer than the run's duration to serve them, and its throughput is
/// what it served over that longer time, not the rate offered.
fn measured_time(measure_from: Instant, end: Instant, last_completed: Option<Instant>) -> Duration {
    last_completed.map_or(end, |last| last.max(end)) - measure_from
}

async fn drive_thread(
    plan: std::sync::Arc<Plan>,
    connections: Vec<usize>,
    tx: mpsc::Sender<Window>,
) -> Recorded {
    let state = Rc::new(RefCell::new(ThreadState {
        recorded: Recorded::default(),
        window: histogram(),
        window_requests: 0,
        window_errors: 0,
    }));
    let reporter = monoio::spawn(report_windows(plan.clone(), state.clone(), tx));
    // Keeps the thread's loop turning rather than sleeping whenever every connection
    // waits for the server, for as long as the connections run, late requests of an
    // overrun open loop included.
    let spin = plan.config.busy_poll.then(|| Rc::new(Spin::default()));
    let spinners = spin.as_ref().map(Spin::start);
    let tasks: Vec<_> = connections
        .into_iter()
        .map(|i| {
            monoio::spawn(drive_connection(
                plan.clone(),
                state.clone(),
                spin.clone(),
                i,
            ))
        })
        .collect();
    for task in tasks {
        task.await;
    }
    if let (Some(spin), Some(spinners)) = (spin, spinners) {
        spin.stop();
        for spinner in spinners {
            spinner.await;
        }
    }
    reporter.await;
    let state = Rc::try_unwrap(state)
        .ok()
        .expect("all tasks are done")
        .into_inner();
    state.recorded
}

/// Sends this thread's counts for each second of the run to the progress display.
async fn report_windows(
    plan: std::sync::Arc<Plan>,
    state: Rc<RefCell<ThreadState>>,
    tx: mpsc::Sender<Window>,
) {
    let mut second = 0;
    loop {
        second += 1;
        let at = plan.start + Duration::from_secs(second);
        monoio::time::sleep_until(at.min(plan.end).into()).await;
        let mut s = state.borrow_mut();
        let window = Window {
            second,
            requests: std::mem::take(&mut s.window_requests),
            errors: std::mem::take(&mut s.window_errors),
            latency: std::mem::replace(&mut s.window, histogram()),
        };
        drop(s);
        let _ = tx.send(window);
        if at >= plan.end {
            return;
        }
    }
}

/// Waits for a connection's next intended send: on the thread's timer (1 ms resolution, so
/// the connections whose times fall within a millisecond go out together), or with
/// `--busy-poll` to the microsecond by the spinning thread's watch.
async fn wait_until(spin: Option<&Spin>, at: Instant) {
    match spin {
        Some(spin) => spin.until(at).await,
        None => monoio::time::sleep_until(at.into()).await,
    }
}

async fn drive_connection(
    plan: std::sync::Arc<Plan>,
    state: Rc<RefCell<ThreadState>>,
    spin: Option<Rc<Spin>>,
    index: usize,
) {
    let config = &plan.config;
    let mut rng = SmallRng::seed_from_u64(0xbe7c4 ^ index as u64);
    let workload = Workload::new(
        config.keys,
        &config.distribution,
        config.read_ratio,
        config.value_size,
    );
    let mut schedule = config
        .rate
        .map(|rate| Schedule::new(plan.start, rate, index, config.connections));
    let body = random_bytes(config.value_size.max, index as u64);
    let mut request = Vec::with_capacity(256 + body.len());
    let mut conn: Option<Connection> = None;
    let mut deadlines = Deadlines::default();
    monoio::time::sleep_until(plan.start.into()).await;
    let mut free_at = Instant::now();
    // The connection's latest reading of the clock.
    let mut now = free_at;
    loop {
        let intended = match &mut schedule {
            Some(s) => {
                let at = s.next_intended();
                if at >= plan.end {
                    break;
                }
                wait_until(spin.as_deref(), at).await;
                at
            }
            // Closed loop: the next request starts when the last one completed, and that
            // reading of the clock serves (one reading a request fewer).
            None => {
                if now >= plan.end {
                    break;
                }
                now
            }
        };
        let op = workload.next(&mut rng);
        match op {
            Op::Get { key } => plan
                .target
                .get_request(&mut request, &config.key_prefix, key),
            Op::Put { key, len } => plan.target.put_request(
                &mut request,
                &config.key_prefix,
                key,
                config.ttl,
                &body[..len],
            ),
        }
        let measured = intended >= plan.measure_from;
        // Without keep-alive the connect is part of every request; with it, only of the
        // rare one after a failure, whose latency it would distort.
        let connect_began = config.reconnect.then(Instant::now);
        if conn.is_none() {
            match monoio::time::timeout(config.request_timeout, plan.target.connect()).await {
                Ok(Ok(c)) => conn = Some(c),
                _ => {
                    {
                        let mut s = state.borrow_mut();
                        s.window_errors += 1;
                        s.window_requests += 1;
                        if measured {
                            s.recorded.errors.connect += 1;
                        }
                    }
                    monoio::time::sleep(Duration::from_millis(10)).await;
                    now = Instant::now();
                    continue;
                }
            }
        }
        let sent = connect_began.unwrap_or_else(Instant::now);
        let exchanged = deadlines
            .run(
                sent + config.request_timeout,
                conn.as_mut().expect("connected").exchange(&mut request),
            )
            .await;
        let outcome = match exchanged {
            Some(Ok(status)) => Outcome::Status(status),
            Some(Err(_)) => Outcome::Io,
            None => Outcome::Timeout,
        };
        let completed = Instant::now();
        let latency =
            corrected_latency(charged_start(intended, free_at, sent), completed).as_micros() as u64;
        let latency = latency.clamp(1, 60_000_000);
        free_at = completed;
        now = completed;
        let mut s = state.borrow_mut();
        if measured {
            s.recorded.last_completed = Some(completed);
        }
        s.window_requests += 1;
        let success = matches!(
            (outcome, op),
            (Outcome::Status(200), _) | (Outcome::Status(404), Op::Get { .. })
        );
        if success {
            s.window.saturating_record(latency);
        } else {
            s.window_errors += 1;
        }
        if measured {
            let r = &mut s.recorded;
            match (outcome, op) {
                (Outcome::Status(200), Op::Get { .. }) => r.get_hit.saturating_record(latency),
                (Outcome::Status(404), Op::Get { .. }) => r.get_miss.saturating_record(latency),
                (Outcome::Status(200), Op::Put { .. }) => r.put.saturating_record(latency),
                (Outcome::Status(status), _) => {
                    *r.errors.status.entry(status).or_default() += 1;
                    r.error.saturating_record(latency);
                }
                (Outcome::Io, _) => r.errors.io += 1,
                (Outcome::Timeout, _) => r.errors.timeout += 1,
            }
        }
        if config.reconnect || matches!(outcome, Outcome::Io | Outcome::Timeout) {
            // Without keep-alive the connection has served its request; after a failure
            // its state is unknown: either way the next request starts afresh.
            conn = None;
        }
    }
}

#[derive(Clone, Copy)]
enum Outcome {
    Status(u16),
    Io,
    Timeout,
}

/// Merges each second's windows from every thread and shows them as they complete.
fn show_progress(plan: &Plan, threads: usize, rx: mpsc::Receiver<Window>) -> Vec<WindowSummary> {
    use std::io::IsTerminal;
    let total = (plan.config.warmup + plan.config.duration).as_secs().max(1);
    let bar = if plan.config.quiet || !std::io::stderr().is_terminal() {
        None
    } else {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Some(bar)
    };
    let mut pending: BTreeMap<u64, (usize, Window)> = BTreeMap::new();
    let mut summaries = Vec::new();
    for window in rx {
        let entry = pending.entry(window.second).or_insert_with(|| {
            (
                0,
                Window {
                    second: window.second,
                    requests: 0,
                    errors: 0,
                    latency: histogram(),
                },
            )
        });
        entry.0 += 1;
        entry.1.requests += window.requests;
        entry.1.errors += window.errors;
        entry.1.latency.add(&window.latency).expect("same bounds");
        if entry.0 == threads {
            let (_, w) = pending.remove(&window.second).expect("present");
            let summary = WindowSummary {
                second: w.second,
                requests: w.requests,
                errors: w.errors,
                p50_us: w.latency.value_at_quantile(0.5),
                p99_us: w.latency.value_at_quantile(0.99),
            };
            let warm = Duration::from_secs(summary.second) <= plan.config.warmup;
            let line = format!(
                "{:>4}s {}{:>10} req/s  p50 {:>8}  p99 {:>8}  errors {}",
                summary.second,
                if warm { "(warm-up) " } else { "" },
                summary.requests,
                crate::report::micros(summary.p50_us),
                crate::report::micros(summary.p99_us),
                summary.errors
            );
            match &bar {
                Some(bar) => {
                    bar.set_message(line);
                    bar.inc(1);
                }
                None if !plan.config.quiet => eprintln!("{line}"),
                None => {}
            }
            summaries.push(summary);
        }
    }
    if let Some(bar) = bar {
        bar.finish();
    }
    summaries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bodies_are_printable() {
        assert!(random_bytes(64, 1).iter().all(u8::is_ascii_alphanumeric));
    }

    #[test]
    fn a_run_that_overran_its_end_is_measured_to_its_last_completion() {
        let from = Instant::now();
        let end = from + Duration::from_secs(3);
        let secs = Duration::from_secs_f64;
        assert_eq!(measured_time(from, end, None), secs(3.0));
        // Closed loop, or an open loop the server kept up with: the run's own length.
        assert_eq!(measured_time(from, end, Some(end - secs(0.001))), secs(3.0));
        // An open loop the server fell behind: its last requests, sent late, completed
        // a second after the end, and the throughput is over four seconds.
        assert_eq!(measured_time(from, end, Some(end + secs(1.0))), secs(4.0));
        let mut threads = Recorded::default();
        let mut other = Recorded {
            last_completed: Some(end + secs(1.0)),
            ..Recorded::default()
        };
        threads.merge(&other);
        other.last_completed = Some(end);
        threads.merge(&other);
        assert_eq!(
            threads.last_completed,
            Some(end + secs(1.0)),
            "the latest of the threads"
        );
    }
}
