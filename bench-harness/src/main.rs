//! `cache-bench`: latency benchmarking and capacity planning for cache-manager (or any
//! server answering its API): `load` (open or closed loop, HDR reports), `merge` (the
//! percentiles of several `load` runs' requests together), `sweep` (the highest rate that
//! meets a latency objective), `replay` (hit ratio of a trace) and `memory` (bytes per
//! entry in process, the engine against moka and quick_cache).

mod arc;
mod blocking;
mod client;
mod deadline;
mod fleet;
mod load;
mod memory;
mod pacing;
mod ping;
mod replay;
mod report;
mod runtime;
mod sweep;
mod target;
mod trace;
mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::load::LoadConfig;
use crate::runtime::IoDriver;
use crate::workload::{KeyDistribution, ValueSize};

#[derive(Parser)]
#[command(
    name = "cache-bench",
    version,
    about = "Latency benchmarking and capacity planning for cache-manager"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive load at a server and report latency percentiles per outcome.
    Load(LoadArgs),
    /// Step the offered rate and find the highest one that meets an SLO.
    Sweep(SweepArgs),
    /// Replay a key trace against the engine, exact LRU and moka; print hit ratios.
    Replay(ReplayArgs),
    /// Time one connection's round trips, closed loop, over HTTP or RESP (the same
    /// client for cache-manager, nginx and Redis).
    Ping(PingArgs),
    /// Time how fast an overwrite on one instance of a fleet reaches every other, under
    /// background writes; report propagation percentiles and event rates.
    Fleet(FleetArgs),
    /// Plot propagation against fleet size from several `fleet --json` reports.
    FleetPlot(FleetPlotArgs),
    /// Add up the latencies of several `load --histogram` runs and print the
    /// percentiles of all their requests together, as JSON.
    Merge(MergeArgs),
    /// Bytes per entry in process: the engine, moka and quick_cache filled with the same
    /// keys and values, each in a process of its own.
    Memory(MemoryArgs),
}

#[derive(Args)]
struct MemoryArgs {
    #[arg(long, default_value_t = 1_000_000)]
    entries: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// A TTL for every entry (where the cache has TTLs: not quick_cache), e.g. `1h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Measure only this cache, in this process, and print `grown payload entries`
    /// (what the command runs itself with for each cache; with `--shift`, one
    /// `value_size entries grown` line a phase).
    #[arg(long)]
    cache: Option<String>,
    /// Instead of bytes per entry: a cache bounded at `--max-bytes` written new keys in
    /// one phase per value size given (e.g. `100,300,40`), each turning the bound over
    /// (`memory::TURNOVERS` times); reports the resident memory after each phase against
    /// the bound.
    #[arg(long, value_delimiter = ',')]
    shift: Vec<usize>,
    /// The byte bound for `--shift`.
    #[arg(long, default_value_t = 100 << 20)]
    max_bytes: u64,
}

#[derive(Args)]
struct FleetArgs {
    /// The instances (host:port), comma-separated; at least two.
    #[arg(long, value_delimiter = ',', required = true)]
    instances: Vec<std::net::SocketAddr>,
    /// Redis nodes (host:port) whose publish counters to report, comma-separated.
    #[arg(long, value_delimiter = ',')]
    redis_nodes: Vec<std::net::SocketAddr>,
    /// Background PUTs per second across the fleet.
    #[arg(long, default_value_t = 1000.0)]
    write_rate: f64,
    /// How many instances (the first ones) take the background writes (default: all).
    #[arg(long)]
    writers: Option<usize>,
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    #[arg(long, default_value_t = 200)]
    probes: u64,
    #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
    probe_gap: Duration,
    #[arg(long, default_value = "200us", value_parser = humantime::parse_duration)]
    poll_interval: Duration,
    /// A sighting later than this is a stale read.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    give_up: Duration,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Names the run in the JSON report and in `fleet-plot` (a coherence mode, say).
    #[arg(long, default_value = "")]
    label: String,
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct FleetPlotArgs {
    /// `fleet --json` reports, one per fleet size.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The plot (.svg or .png).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct PingArgs {
    /// host:port of the server.
    #[arg(long)]
    addr: std::net::SocketAddr,
    #[arg(long, value_enum, default_value = "http")]
    protocol: client::Protocol,
    /// HTTP only: the path before the key.
    #[arg(long, default_value = "/api/cache/")]
    path_prefix: String,
    #[arg(long, default_value = "key:")]
    key_prefix: String,
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    #[arg(long, default_value_t = 50_000)]
    requests: u64,
    /// Untimed exchanges first.
    #[arg(long, default_value_t = 5_000)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the percentiles as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct Workload {
    /// The server: `http://host:port` (cache-manager's API) or `redis://host:port`
    /// (Redis `GET` and `SET` of the same keys).
    #[arg(long, default_value = "http://127.0.0.1:4000")]
    target: String,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Load threads, each pinned to a core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Keys are `{key-prefix}0` … `{key-prefix}{keys-1}`.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    #[arg(long, default_value = "key:")]
    key_prefix: String,
    /// uniform, zipf:THETA or hotset:FRACTION:PROBABILITY.
    #[arg(long, default_value = "uniform")]
    distribution: KeyDistribution,
    /// Share of requests that are GETs (the rest are PUTs).
    #[arg(long, default_value_t = 1.0)]
    read_ratio: f64,
    /// Value size in bytes for PUTs: N or MIN-MAX.
    #[arg(long, default_value = "100")]
    value_size: ValueSize,
    /// TTL in seconds sent with PUTs.
    #[arg(long)]
    ttl: Option<u64>,
    /// PUT every key once before measuring.
    #[arg(long)]
    prefill: bool,
    /// A request taking longer than this counts as a timeout error.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// The load threads never sleep: they poll their sockets and the clock in a loop, so
    /// that neither their own wake-ups nor their timer's 1 ms resolution enter the
    /// latencies, and an open loop's requests go out when meant, not in a burst per
    /// millisecond. Each load thread then uses its core fully: give the load cores of
    /// its own (`taskset`), apart from the server's.
    #[arg(long)]
    busy_poll: bool,
    /// What the load threads wait on: io_uring (where many connections' receives and sends
    /// share each syscall), epoll, or auto (io_uring where the kernel allows it, else
    /// epoll).
    #[arg(long, value_enum, default_value_t)]
    io_driver: IoDriver,
    /// A new connection for every request, closed once its answer is read, as clients
    /// without keep-alive make them (`ab` without -k, `redis-benchmark -k 0`): each HTTP
    /// request says `Connection: close`, and a request's latency includes its connect.
    /// --connections is then how many requests are in flight at once.
    #[arg(long)]
    reconnect: bool,
}

/// Descriptors a load needs besides its connections: the standard streams, each load
/// thread's ring or epoll instance and eventfds, the report files.
const OWN_FILES: u64 = 64;

impl Workload {
    fn config(&self, rate: Option<f64>) -> anyhow::Result<LoadConfig> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.read_ratio),
            "--read-ratio must be within 0..=1"
        );
        anyhow::ensure!(self.keys > 0, "--keys must be at least 1");
        // Every connection is a descriptor: under a shell's soft limit (often 1,024), the
        // connects past it would fail.
        net::open_files::raise_soft_limit(self.connections as u64 + OWN_FILES)
            .with_context(|| format!("--connections {}", self.connections))?;
        Ok(LoadConfig {
            target: self.target.trim_end_matches('/').to_owned(),
            connections: self.connections,
            threads: self.threads,
            duration: self.duration,
            warmup: self.warmup,
            rate,
            keys: self.keys,
            key_prefix: self.key_prefix.clone(),
            distribution: self.distribution.clone(),
            read_ratio: self.read_ratio,
            value_size: self.value_size,
            ttl: self.ttl,
            prefill: self.prefill,
            request_timeout: self.request_timeout,
            quiet: self.quiet,
            busy_poll: self.busy_poll,
            io_driver: self.io_driver,
            reconnect: self.reconnect,
        })
    }
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    workload: Workload,
    /// Requests per second over all connections (open loop); omit for closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// Write the latency distribution of all successful requests (HdrHistogram format).
    #[arg(long)]
    hgrm: Option<PathBuf>,
    /// Write every successful request's latency as JSON counts, for `merge`.
    #[arg(long)]
    histogram: Option<PathBuf>,
    /// Write the summary, configuration and per-second windows as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw latency by percentile (.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct MergeArgs {
    /// Files written by `load --histogram`.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

#[derive(Args)]
struct SweepArgs {
    #[command(flatten)]
    workload: Workload,
    /// Latency objective, e.g. p99=500us or p99.9=2ms.
    #[arg(long, default_value = "p99=1ms")]
    slo: sweep::Slo,
    /// First offered rate.
    #[arg(long, default_value_t = 1000.0)]
    from: f64,
    /// Last offered rate; with --steps, a fixed ladder. Without, the rate doubles until
    /// the SLO breaks and is then bisected.
    #[arg(long, requires = "steps")]
    to: Option<f64>,
    #[arg(long, requires = "to")]
    steps: Option<usize>,
    /// Bisection rounds after doubling.
    #[arg(long, default_value_t = 4)]
    bisect: usize,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Latency versus throughput (.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct ReplayArgs {
    /// The trace: .lis or .lis.zst (ARC format), .csv (with --csv-column), or one key per line.
    trace: PathBuf,
    /// Capacities in entries, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,5000,10000")]
    capacities: Vec<usize>,
    /// Column holding the key in a CSV trace.
    #[arg(long)]
    csv_column: Option<String>,
    /// Hash-partitioned shards for the engine, as the service runs one per core.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1024))]
    shards: u64,
    /// Fixes the engine's hash seeds (the same seed gives the same result).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Replay at most this many requests.
    #[arg(long)]
    limit: Option<usize>,
    /// Also replay over HTTP against this running service (its own capacity applies).
    #[arg(long)]
    target: Option<String>,
    #[arg(long, default_value = "trace:")]
    key_prefix: String,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Hit ratio versus capacity (.svg).
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Load(args) => load_command(args),
        Command::Sweep(args) => sweep_command(args),
        Command::Replay(args) => replay_command(args),
        Command::Ping(args) => ping_command(args),
        Command::Merge(args) => merge_command(args),
        Command::Fleet(args) => fleet_command(args),
        Command::FleetPlot(args) => fleet_plot_command(args),
        Command::Memory(args) => memory_command(args),
    }
}

fn fleet_command(args: FleetArgs) -> anyhow::Result<()> {
    let report = fleet::run(&fleet::FleetConfig {
        instances: args.instances,
        redis_nodes: args.redis_nodes,
        write_rate: args.write_rate,
        writers: args.writers.unwrap_or(usize::MAX),
        keys: args.keys,
        value_size: args.value_size,
        probes: args.probes,
        probe_gap: args.probe_gap,
        poll_interval: args.poll_interval,
        stale_after: args.stale_after,
        give_up: args.give_up,
        seed: args.seed,
        label: args.label,
    })?;
    report.print(&mut std::io::stdout().lock())?;
    if let Some(path) = &args.json {
        write_json(path, &report.to_json())?;
    }
    Ok(())
}

fn fleet_plot_command(args: FleetPlotArgs) -> anyhow::Result<()> {
    report::check_plot_path(&args.out)?;
    let reports = args
        .reports
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<serde_json::Value>>>()?;
    fleet::plot(&reports, &args.out)
}

fn ping_command(args: PingArgs) -> anyhow::Result<()> {
    let config = ping::PingConfig {
        addr: args.addr,
        protocol: args.protocol,
        path_prefix: args.path_prefix,
        key_prefix: args.key_prefix,
        keys: args.keys,
        requests: args.requests,
        warmup: args.warmup,
        seed: args.seed,
    };
    let report = ping::run(&config).with_context(|| format!("pinging {}", args.addr))?;
    let us = |q: f64| report.latency_ns.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{} round trips to {}: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs, max {:.1} µs; {} misses",
        report.latency_ns.len(),
        args.addr,
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        report.latency_ns.max() as f64 / 1000.0,
        report.misses
    );
    if let Some(path) = &args.json {
        let value = serde_json::json!({
            "requests": report.latency_ns.len(),
            "misses": report.misses,
            "p50_us": us(0.5),
            "p90_us": us(0.9),
            "p99_us": us(0.99),
            "p999_us": us(0.999),
            "max_us": report.latency_ns.max() as f64 / 1000.0,
        });
        write_json(path, &value)?;
    }
    Ok(())
}

fn write_json(path: &PathBuf, value: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn load_command(args: LoadArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        report::check_plot_path(path)?;
    }
    let report = load::run(args.workload.config(args.rate)?)?;
    report::print_table(&report, &mut std::io::stdout().lock())?;
    if let Some(path) = &args.hgrm {
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        report::write_hgrm(&report.recorded.all(), &mut file)?;
        file.flush()?;
    }
    if let Some(path) = &args.histogram {
        write_json(path, &report::histogram_to_json(&report.recorded.all()))?;
    }
    if let Some(path) = &args.json {
        write_json(path, &report::to_json(&report))?;
    }
    if let Some(path) = &args.plot {
        report::plot_percentiles(&report, path)?;
    }
    Ok(())
}

fn merge_command(args: MergeArgs) -> anyhow::Result<()> {
    let mut all = load::histogram();
    for path in &args.files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing {}", path.display()))?;
        let run = report::histogram_from_json(&value)
            .with_context(|| format!("reading the histogram in {}", path.display()))?;
        all.add(run).context("adding histograms")?;
    }
    println!("{}", report::percentiles(&all));
    Ok(())
}

fn sweep_command(args: SweepArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        report::check_plot_path(path)?;
    }
    let base = args.workload.config(None)?;
    if base.prefill {
        load::prefill(&base)?;
    }
    let base = LoadConfig {
        quiet: true,
        prefill: false,
        ..base
    };
    let slo = args.slo.clone();
    let mut steps: Vec<sweep::Step> = Vec::new();
    let mut probe = |rate: f64| -> anyhow::Result<bool> {
        let step = sweep::run_step(&base, &slo, rate)?;
        eprintln!(
            "offered {:>10.0}  achieved {:>10.0}  p50 {:>9}  p99 {:>9}  p99.9 {:>9}  errors {:>5}  {}",
            step.offered_rps, step.achieved_rps, report::micros(step.p50_us), report::micros(step.p99_us),
            report::micros(step.p999_us), step.errors, if step.meets_slo { "meets SLO" } else { "misses SLO" }
        );
        let ok = step.meets_slo;
        steps.push(step);
        Ok(ok)
    };
    let best = match (args.to, args.steps) {
        (Some(to), Some(n)) => {
            let mut best = None;
            for rate in sweep::ladder(args.from, to, n) {
                if probe(rate)? {
                    best = Some(rate);
                }
            }
            best
        }
        _ => sweep::search(&mut probe, args.from, 1e8, args.bisect)?,
    };
    steps.sort_by(|a, b| a.offered_rps.total_cmp(&b.offered_rps));
    println!(
        "{:>12} {:>12} {:>10} {:>10} {:>10} {:>8}  SLO",
        "offered", "achieved", "p50", "p99", "p99.9", "errors"
    );
    for s in &steps {
        println!(
            "{:>12.0} {:>12.0} {:>10} {:>10} {:>10} {:>8}  {}",
            s.offered_rps,
            s.achieved_rps,
            report::micros(s.p50_us),
            report::micros(s.p99_us),
            report::micros(s.p999_us),
            s.errors,
            if s.meets_slo { "ok" } else { "missed" }
        );
    }
    match best {
        Some(rate) => println!(
            "highest rate meeting {}<={:?}: {rate:.0} req/s",
            slo.label, slo.limit
        ),
        None => println!("no tried rate met {}<={:?}", slo.label, slo.limit),
    }
    if let Some(path) = &args.json {
        write_json(
            path,
            &serde_json::json!({
                "tool": "cache-bench", "version": env!("CARGO_PKG_VERSION"), "slo": slo,
                "best_rps": best, "steps": steps, "config": base,
            }),
        )?;
    }
    if let Some(path) = &args.plot {
        let line = |f: fn(&sweep::Step) -> u64| {
            steps
                .iter()
                .map(|s| (s.achieved_rps, f(s).max(1) as f64))
                .collect::<Vec<_>>()
        };
        let series = vec![
            ("p50".to_string(), line(|s| s.p50_us)),
            ("p99".to_string(), line(|s| s.p99_us)),
            ("p99.9".to_string(), line(|s| s.p999_us)),
        ];
        let title = format!(
            "Latency vs throughput — SLO {}<={:?}, best {} req/s",
            slo.label,
            slo.limit,
            best.map_or("none".into(), |b| format!("{b:.0}"))
        );
        report::plot_lines(
            path,
            &title,
            "achieved requests/s",
            "latency (µs)",
            &series,
            true,
        )?;
    }
    Ok(())
}

fn memory_command(args: MemoryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.entries > 0, "--entries must be at least 1");
    if !args.shift.is_empty() {
        return shift_command(&args);
    }
    if let Some(cache) = &args.cache {
        let f = memory::measure(cache, args.entries, args.value_size, args.ttl)?;
        println!("{} {} {}", f.grown_bytes, f.payload_bytes, f.entries);
        return Ok(());
    }
    let ttl = args.ttl.map_or("no TTL".to_owned(), |t| {
        format!("TTL {}", humantime::format_duration(t))
    });
    println!(
        "{} entries, keys key:0 … , {}-byte values, {ttl}, one process per cache",
        args.entries, args.value_size
    );
    println!(
        "{:<14} {:>18} {:>22}",
        "", "RSS growth/entry", "overhead/entry (RSS)"
    );
    for cache in memory::CACHES {
        let mut options = vec![
            "--entries".to_owned(),
            args.entries.to_string(),
            "--value-size".to_owned(),
            args.value_size.to_string(),
        ];
        if let Some(ttl) = args.ttl {
            options.extend([
                "--ttl".to_owned(),
                humantime::format_duration(ttl).to_string(),
            ]);
        }
        let [[grown_bytes, payload_bytes, entries]] = measure_in_child(cache, &options)?[..] else {
            anyhow::bail!("{cache} printed more or less than one line of figures");
        };
        let f = memory::Footprint {
            grown_bytes,
            payload_bytes,
            entries,
        };
        println!(
            "{cache:<14} {:>18.1} {:>22.1}",
            f.per_entry(),
            f.overhead_per_entry()
        );
    }
    Ok(())
}

/// Runs `memory --cache CACHE OPTIONS...` in a process of its own (so that what one
/// cache freed cannot be reused by the next), and reads the three figures of each line
/// it prints.
fn measure_in_child(cache: &str, options: &[String]) -> anyhow::Result<Vec<[u64; 3]>> {
    let this = std::env::current_exe().context("finding this binary")?;
    let out = std::process::Command::new(this)
        .args(["memory", "--cache", cache])
        .args(options)
        .output()
        .with_context(|| format!("measuring {cache}"))?;
    anyhow::ensure!(
        out.status.success(),
        "measuring {cache} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|line| {
            let fields: Vec<u64> = line
                .split_whitespace()
                .map(str::parse)
                .collect::<Result<_, _>>()
                .with_context(|| format!("reading {cache}'s figures from {line:?}"))?;
            <[u64; 3]>::try_from(fields)
                .map_err(|_| anyhow::anyhow!("{cache} printed {line:?}, not three figures"))
        })
        .collect()
}

/// `memory --shift`: each cache in a process of its own, as for bytes per entry.
fn shift_command(args: &MemoryArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.shift.iter().all(|&v| v > 0) && args.max_bytes > 0,
        "--shift sizes and --max-bytes must be above 0"
    );
    if let Some(cache) = &args.cache {
        for phase in memory::shift(cache, args.max_bytes, &args.shift)? {
            println!(
                "{} {} {}",
                phase.value_bytes, phase.entries, phase.grown_bytes
            );
        }
        return Ok(());
    }
    let sizes: Vec<String> = args.shift.iter().map(ToString::to_string).collect();
    println!(
        "bound {:.1} MB, values of {} bytes in turn (new keys, each phase writing {} times the bound, one read of a recent key per write), one process per cache",
        args.max_bytes as f64 / 1e6,
        sizes.join(", then "),
        memory::TURNOVERS
    );
    println!(
        "{:<14} {:>8} {:>10} {:>14} {:>14}",
        "", "values", "entries", "RSS growth", "÷ bound"
    );
    for cache in memory::CACHES {
        let options = [
            "--shift".to_owned(),
            sizes.join(","),
            "--max-bytes".to_owned(),
            args.max_bytes.to_string(),
        ];
        for [value_bytes, entries, grown_bytes] in measure_in_child(cache, &options)? {
            println!(
                "{cache:<14} {value_bytes:>8} {entries:>10} {:>11.1} MB {:>14.2}",
                grown_bytes as f64 / 1e6,
                grown_bytes as f64 / args.max_bytes as f64
            );
        }
    }
    Ok(())
}

fn replay_command(args: ReplayArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.plot {
        report::check_plot_path(path)?;
    }
    anyhow::ensure!(
        args.capacities.iter().all(|c| *c > 0),
        "capacities must be above 0"
    );
    let format = trace::Format::guess(&args.trace, args.csv_column.as_deref());
    let keys = trace::read(trace::open(&args.trace)?, &format, args.limit)?;
    let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len();
    let shards = args.shards as usize;
    println!(
        "{}: {} requests, {} distinct keys ({format:?}); engine over {shards} shard(s)",
        args.trace.display(),
        keys.len(),
        distinct
    );
    print!("{:>10}", "capacity");
    for p in replay::Policy::ALL {
        print!(" {:>18}", p.name());
    }
    println!();
    let mut outcomes = Vec::new();
    for &capacity in &args.capacities {
        print!("{capacity:>10}");
        for p in replay::Policy::ALL {
            let o = replay::simulate(p, capacity, shards, args.seed, &keys);
            print!(" {:>17.2}%", 100.0 * o.hit_ratio);
            std::io::stdout().flush()?;
            outcomes.push(o);
        }
        println!();
    }
    let http = match &args.target {
        Some(target) => {
            let ratio = replay::over_http(target, &args.key_prefix, &keys)?;
            println!(
                "{target}: {:.2}% hits over HTTP (at the service's own capacity)",
                100.0 * ratio
            );
            Some(ratio)
        }
        None => None,
    };
    if let Some(path) = &args.json {
        write_json(
            path,
            &serde_json::json!({
                "tool": "cache-bench", "version": env!("CARGO_PKG_VERSION"), "trace": args.trace,
                "requests": keys.len(), "distinct_keys": distinct, "shards": shards, "outcomes": outcomes, "http_hit_ratio": http,
            }),
        )?;
    }
    if let Some(path) = &args.plot {
        let series: Vec<(String, Vec<(f64, f64)>)> = replay::Policy::ALL
            .iter()
            .map(|p| {
                let points = outcomes
                    .iter()
                    .filter(|o| o.policy == *p)
                    .map(|o| (o.capacity as f64, 100.0 * o.hit_ratio))
                    .collect();
                (p.name().to_string(), points)
            })
            .collect();
        let title = format!(
            "Hit ratio vs cache size — {}, engine over {shards} shard(s)",
            args.trace.file_name().unwrap_or_default().to_string_lossy()
        );
        report::plot_lines(
            path,
            &title,
            "capacity (entries)",
            "hit ratio (%)",
            &series,
            false,
        )?;
    }
    Ok(())
}
