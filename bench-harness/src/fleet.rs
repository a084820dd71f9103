//! `cache-bench fleet`: how fast an overwrite on one instance of a fleet becomes visible
//! on every other, measured from outside over HTTP, under background writes.
//!
//! A probe key is first read on every instance, so each holds it in L1. Each probe then
//! overwrites it through one instance (in turn) and, from the moment that PUT is
//! answered, polls every other instance until it serves the new value: the time each
//! took is one propagation sample. Meanwhile writer threads PUT random keys at a fixed
//! fleet-wide rate, spread over the instances, so every instance publishes and receives
//! events as a busy fleet does. Before and after, the instances' metrics (events applied,
//! L1 flushes) and the Redis nodes' counters (publishes taken, publishes relayed over the
//! cluster bus) are read, so the report also gives each one's event rate.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::blocking::Input;

pub struct FleetConfig {
    pub instances: Vec<SocketAddr>,
    /// Redis nodes whose counters to report (empty: none).
    pub redis_nodes: Vec<SocketAddr>,
    /// Background PUTs per second across the fleet.
    pub write_rate: f64,
    /// How many instances (the first ones) take the background writes; the others only
    /// receive events, so their CPU per event applied can be read off.
    pub writers: usize,
    /// Background keys are `fleet:bg:0` … `fleet:bg:{keys-1}`.
    pub keys: u64,
    pub value_size: usize,
    pub probes: u64,
    /// Pause between one probe's last sighting and the next overwrite.
    pub probe_gap: Duration,
    /// Pause between two polls of one instance.
    pub poll_interval: Duration,
    /// A sighting later than this counts as a stale read.
    pub stale_after: Duration,
    /// A sighting that has not happened by then is given up as lost.
    pub give_up: Duration,
    pub seed: u64,
    /// Names the run in its JSON report (and its lines in a plot).
    pub label: String,
}

/// One instance's counters over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceCounts {
    pub addr: String,
    pub events_applied: u64,
    pub l1_flushes: u64,
}

/// One Redis node's counters over the run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeCounts {
    pub addr: String,
    /// PUBLISH and SPUBLISH commands the node executed.
    pub publishes: u64,
    /// Messages the node received from other nodes over the cluster bus to deliver to its
    /// own subscribers (0 outside a cluster).
    pub bus_received: u64,
}

pub struct FleetReport {
    pub label: String,
    /// One sample per probe and instance other than the writer, in nanoseconds.
    pub propagation_ns: Histogram<u64>,
    /// Sightings later than `stale_after`.
    pub stale: u64,
    /// Sightings that never happened within `give_up`.
    pub lost: u64,
    pub probes: u64,
    pub background_writes: u64,
    pub background_errors: u64,
    pub elapsed: Duration,
    pub instances: Vec<InstanceCounts>,
    pub nodes: Vec<NodeCounts>,
}

const PROBE_KEY: &str = "fleet:probe";

pub fn run(config: &FleetConfig) -> anyhow::Result<FleetReport> {
    anyhow::ensure!(
        config.instances.len() >= 2,
        "a fleet needs at least two instances"
    );
    let mut clients = config
        .instances
        .iter()
        .map(|addr| Client::connect(*addr))
        .collect::<io::Result<Vec<_>>>()?;
    // Every instance holds the probe key in L1 before the first overwrite.
    let first = probe_value(u64::MAX, config.value_size);
    clients[0].put(PROBE_KEY, &first)?;
    for client in &mut clients {
        let deadline = Instant::now() + config.give_up;
        while client.get(PROBE_KEY)?.as_deref() != Some(first.as_slice()) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} never served the probe key's first value",
                client.addr
            );
            thread::sleep(config.poll_interval);
        }
    }

    let before_instances = clients
        .iter_mut()
        .map(Client::counts)
        .collect::<io::Result<Vec<_>>>()?;
    let before_nodes = node_counts(&config.redis_nodes)?;
    let started = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let writing = config.writers.clamp(1, config.instances.len());
    let writers: Vec<_> = config.instances[..writing]
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let (addr, stop, writes) = (*addr, stop.clone(), writes.clone());
            let rate = config.write_rate / writing as f64;
            let (keys, size, seed) = (config.keys, config.value_size, config.seed + i as u64);
            thread::spawn(move || background_writes(addr, rate, keys, size, seed, &stop, &writes))
        })
        .collect();

    // One poller per instance, each with its own connection.
    let (sightings, seen) = mpsc::channel::<Sighting>();
    let pollers: Vec<mpsc::Sender<(Vec<u8>, Instant)>> = clients
        .into_iter()
        .map(|client| {
            let (tx, rx) = mpsc::channel::<(Vec<u8>, Instant)>();
            let sightings = sightings.clone();
            let (interval, give_up) = (config.poll_interval, config.give_up);
            thread::spawn(move || poll_for(client, rx, sightings, interval, give_up));
            tx
        })
        .collect();
    let mut writer = Client::connect(config.instances[0])?;
    let mut propagation_ns =
        Histogram::new_with_bounds(1_000, 600_000_000_000, 3).expect("valid bounds");
    let (mut stale, mut lost) = (0, 0);
    let result = (|| -> anyhow::Result<()> {
        for probe in 0..config.probes {
            let from = (probe % config.instances.len() as u64) as usize;
            if writer.addr != config.instances[from] {
                writer = Client::connect(config.instances[from])?;
            }
            let value = probe_value(probe, config.value_size);
            writer.put(PROBE_KEY, &value)?;
            let written = Instant::now();
            for (i, poller) in pollers.iter().enumerate() {
                if i != from {
                    poller.send((value.clone(), written))?;
                }
            }
            for _ in 1..config.instances.len() {
                match seen.recv()? {
                    Sighting::After(took) => {
                        propagation_ns.saturating_record(took.as_nanos() as u64);
                        stale += u64::from(took > config.stale_after);
                    }
                    Sighting::Never => lost += 1,
                    Sighting::Failed(e) => return Err(e.into()),
                }
            }
            thread::sleep(config.probe_gap);
        }
        Ok(())
    })();
    stop.store(true, Relaxed);
    drop(pollers);
    for writer in writers {
        let _ = writer.join();
    }
    result?;
    let elapsed = started.elapsed();

    let instances = config
        .instances
        .iter()
        .zip(before_instances)
        .map(|(addr, before)| {
            let after = Client::connect(*addr)?.counts()?;
            Ok(InstanceCounts {
                addr: addr.to_string(),
                events_applied: after.events_applied.saturating_sub(before.events_applied),
                l1_flushes: after.l1_flushes.saturating_sub(before.l1_flushes),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    let nodes = node_counts(&config.redis_nodes)?
        .into_iter()
        .zip(before_nodes)
        .map(|(after, before)| NodeCounts {
            addr: after.addr,
            publishes: after.publishes.saturating_sub(before.publishes),
            bus_received: after.bus_received.saturating_sub(before.bus_received),
        })
        .collect();
    Ok(FleetReport {
        label: config.label.clone(),
        propagation_ns,
        stale,
        lost,
        probes: config.probes,
        background_writes: writes.0.load(Relaxed),
        background_errors: writes.1.load(Relaxed),
        elapsed,
        instances,
        nodes,
    })
}

/// The probe's value: distinct per probe, padded to the value size.
fn probe_value(probe: u64, size: usize) -> Vec<u8> {
    let mut value = format!("probe-{probe}-").into_bytes();
    value.resize(size.max(value.len()), b'p');
    value
}

enum Sighting {
    After(Duration),
    Never,
    Failed(io::Error),
}

/// Polls `client` for each value it is sent until it serves it (or `give_up` passes).
fn poll_for(
    mut client: Client,
    wanted: mpsc::Receiver<(Vec<u8>, Instant)>,
    sightings: mpsc::Sender<Sighting>,
    interval: Duration,
    give_up: Duration,
) {
    while let Ok((value, written)) = wanted.recv() {
        let sighting = loop {
            match client.get(PROBE_KEY) {
                Ok(Some(served)) if served == value => break Sighting::After(written.elapsed()),
                Ok(_) if written.elapsed() > give_up => break Sighting::Never,
                Ok(_) => thread::sleep(interval),
                Err(e) => break Sighting::Failed(e),
            }
        };
        if sightings.send(sighting).is_err() {
            return;
        }
    }
}

/// PUTs random keys to `addr` at `rate` a second until `stop`; counts writes and errors.
fn background_writes(
    addr: SocketAddr,
    rate: f64,
    keys: u64,
    value_size: usize,
    seed: u64,
    stop: &AtomicBool,
    counts: &(AtomicU64, AtomicU64),
) {
    if rate <= 0.0 {
        return;
    }
    let mut rng = SmallRng::seed_from_u64(seed);
    let gap = Duration::from_secs_f64(1.0 / rate);
    let value = vec![b'w'; value_size];
    let mut client = None;
    let mut next = Instant::now();
    while !stop.load(Relaxed) {
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        }
        next += gap;
        let key = format!("fleet:bg:{}", rng.gen_range(0..keys.max(1)));
        let written = match client.as_mut() {
            Some(c) => Client::put(c, &key, &value),
            None => Client::connect(addr).and_then(|c| client.insert(c).put(&key, &value)),
        };
        match written {
            Ok(()) => counts.0.fetch_add(1, Relaxed),
            Err(_) => {
                client = None;
                counts.1.fetch_add(1, Relaxed)
            }
        };
    }
}

/// A keep-alive HTTP connection to one instance.
struct Client {
    addr: SocketAddr,
    stream: TcpStream,
    input: Input,
}

impl Client {
    fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        Ok(Self {
            addr,
            stream,
            input: Input::default(),
        })
    }

    fn exchange(&mut self, request: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        self.stream.write_all(request)?;
        self.input.http_body(&mut self.stream)
    }

    fn put(&mut self, key: &str, value: &[u8]) -> io::Result<()> {
        let mut request = format!(
            "PUT /api/cache/{key} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            value.len()
        )
        .into_bytes();
        request.extend_from_slice(value);
        match self.exchange(&request)? {
            (200..=299, _) => Ok(()),
            (status, body) => Err(io::Error::other(format!(
                "PUT {key} on {} answered {status}: {}",
                self.addr,
                String::from_utf8_lossy(&body)
            ))),
        }
    }

    /// The key's value, or `None` on a miss.
    fn get(&mut self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let request = format!(
            "GET /api/cache/{key} HTTP/1.1\r\nHost: {}\r\nAccept: application/octet-stream\r\n\r\n",
            self.addr
        );
        match self.exchange(request.as_bytes())? {
            (200, body) => Ok(Some(body)),
            (404, _) => Ok(None),
            (status, _) => Err(io::Error::other(format!(
                "GET {key} on {} answered {status}",
                self.addr
            ))),
        }
    }

    fn counts(&mut self) -> io::Result<InstanceCounts> {
        let request = format!(
            "GET /api/cache/metrics HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr
        );
        let (status, body) = self.exchange(request.as_bytes())?;
        if status != 200 {
            return Err(io::Error::other(format!(
                "metrics on {} answered {status}",
                self.addr
            )));
        }
        let metrics: serde_json::Value = serde_json::from_slice(&body)?;
        let count = |name: &str| metrics[name].as_u64().unwrap_or(0);
        Ok(InstanceCounts {
            addr: self.addr.to_string(),
            events_applied: count("coherence_events"),
            l1_flushes: count("l1_flushes"),
        })
    }
}

/// Each node's publish counters now: `INFO commandstats` and `CLUSTER INFO` over RESP.
fn node_counts(nodes: &[SocketAddr]) -> io::Result<Vec<NodeCounts>> {
    nodes
        .iter()
        .map(|addr| {
            let mut stream = TcpStream::connect(addr)?;
            let mut input = Input::default();
            let mut info = |command: &[&str]| -> io::Result<String> {
                let mut request = format!("*{}\r\n", command.len());
                for word in command {
                    request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
                }
                stream.write_all(request.as_bytes())?;
                input.resp_text(&mut stream)
            };
            let stats = fields(&info(&["INFO", "commandstats"])?);
            // Outside cluster mode CLUSTER INFO is an error, which counts as no bus.
            let cluster = info(&["CLUSTER", "INFO"])
                .map(|t| fields(&t))
                .unwrap_or_default();
            let calls = |command: &str| {
                stats
                    .get(&format!("cmdstat_{command}"))
                    .and_then(|v| {
                        v.split(',')
                            .find_map(|kv| kv.strip_prefix("calls="))?
                            .parse::<u64>()
                            .ok()
                    })
                    .unwrap_or(0)
            };
            let bus = |name: &str| {
                cluster
                    .get(name)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            Ok(NodeCounts {
                addr: addr.to_string(),
                publishes: calls("publish") + calls("spublish"),
                bus_received: bus("cluster_stats_messages_publish_received")
                    + bus("cluster_stats_messages_publishshard_received"),
            })
        })
        .collect()
}

/// `name:value` lines of an INFO-style text.
fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

impl FleetReport {
    fn per_second(&self, count: u64) -> f64 {
        count as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> serde_json::Value {
        let h = &self.propagation_ns;
        serde_json::json!({
            "label": self.label,
            "instances": self.instances.len(),
            "probes": self.probes,
            "samples": h.len(),
            "propagation_ms": {
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p999": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
            },
            "stale_reads": self.stale,
            "lost": self.lost,
            "seconds": self.elapsed.as_secs_f64(),
            "background_writes_per_s": self.per_second(self.background_writes),
            "background_errors": self.background_errors,
            "l1_flushes": self.instances.iter().map(|i| i.l1_flushes).sum::<u64>(),
            "per_instance": self.instances.iter().map(|i| serde_json::json!({
                "addr": i.addr,
                "events_applied_per_s": self.per_second(i.events_applied),
                "l1_flushes": i.l1_flushes,
            })).collect::<Vec<_>>(),
            "per_node": self.nodes.iter().map(|n| serde_json::json!({
                "addr": n.addr,
                "publishes_per_s": self.per_second(n.publishes),
                "bus_received_per_s": self.per_second(n.bus_received),
            })).collect::<Vec<_>>(),
        })
    }

    pub fn print(&self, out: &mut impl Write) -> io::Result<()> {
        let h = &self.propagation_ns;
        writeln!(
            out,
            "{} instances, {} probes, {} sightings in {:.1} s; background writes {:.0}/s ({} failed)",
            self.instances.len(),
            self.probes,
            h.len(),
            self.elapsed.as_secs_f64(),
            self.per_second(self.background_writes),
            self.background_errors
        )?;
        writeln!(
            out,
            "propagation: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; {} later than the stale bound, {} never seen",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            self.stale,
            self.lost
        )?;
        for i in &self.instances {
            writeln!(
                out,
                "  instance {}: {:.0} events applied/s, {} L1 flushes",
                i.addr,
                self.per_second(i.events_applied),
                i.l1_flushes
            )?;
        }
        for n in &self.nodes {
            writeln!(
                out,
                "  redis {}: {:.0} publishes/s, {:.0} relayed by the cluster bus/s",
                n.addr,
                self.per_second(n.publishes),
                self.per_second(n.bus_received)
            )?;
        }
        Ok(())
    }
}

/// Propagation percentiles (p50, p99) against fleet size, from the JSON reports of
/// several runs: one pair of lines per label (a coherence mode, say).
pub fn plot(reports: &[serde_json::Value], path: &std::path::Path) -> anyhow::Result<()> {
    let mut labels: Vec<&str> = reports
        .iter()
        .map(|r| r["label"].as_str().unwrap_or(""))
        .collect();
    labels.sort_unstable();
    labels.dedup();
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for label in labels {
        let mut runs: Vec<(f64, &serde_json::Value)> = reports
            .iter()
            .filter(|r| r["label"].as_str().unwrap_or("") == label)
            .map(|r| (r["instances"].as_f64().unwrap_or(0.0), &r["propagation_ms"]))
            .collect();
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (name, field) in [("p50", "p50"), ("p99", "p99")] {
            let points = runs
                .iter()
                .map(|(n, p)| (*n, p[field].as_f64().unwrap_or(0.0)))
                .collect();
            series.push((format!("{label} {name}").trim().to_owned(), points));
        }
    }
    crate::report::plot_lines(
        path,
        "Invalidation propagation against fleet size",
        "instances",
        "ms",
        &series,
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_and_command_calls_are_read() {
        let text = "# Commandstats\r\ncmdstat_publish:calls=12,usec=40,usec_per_call=3.33\r\ncmdstat_get:calls=3\r\n";
        let stats = fields(text);
        assert_eq!(stats["cmdstat_get"], "calls=3");
        assert!(stats["cmdstat_publish"].starts_with("calls=12,"));
        assert!(!stats.contains_key("# Commandstats"));
    }

    #[test]
    fn probe_values_differ_and_have_the_value_size() {
        let (a, b) = (probe_value(1, 100), probe_value(2, 100));
        assert_ne!(a, b);
        assert_eq!(a.len(), 100);
        assert!(probe_value(123_456, 4).starts_with(b"probe-123456-"));
    }
}
