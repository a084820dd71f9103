//! `cache-bench` against the real service: a one-second load in each loop mode, with
//! every output file, and a replay over HTTP; a load against a real redis-server over
//! RESP; and loads against a server that never answers and a port nothing listens on.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::{bench_binary, wait_for, Server};

/// Runs cache-bench to completion, killing it (and failing) if it is still running after
/// five minutes: a load that never ends fails its test instead of hanging the suite.
fn cache_bench(args: &[&str]) -> std::process::Output {
    /// Kills cache-bench if the test fails while it runs.
    struct Running(Child);
    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Running(
        Command::new(bench_binary())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cache-bench"),
    );
    // Drained as it writes, so that a full pipe never stops it.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).map(|_| bytes)
        })
    };
    let stdout = drain(Box::new(child.0.stdout.take().expect("piped")));
    let stderr = drain(Box::new(child.0.stderr.take().expect("piped")));
    let mut exited = None;
    wait_for(
        &format!("cache-bench {args:?} to finish"),
        Duration::from_secs(300),
        || {
            exited = child.0.try_wait().expect("wait for cache-bench");
            exited.is_some()
        },
    );
    let status = exited.expect("it exited");
    let read = |drained: std::thread::JoinHandle<std::io::Result<Vec<u8>>>| {
        drained
            .join()
            .expect("drain")
            .expect("read cache-bench's output")
    };
    let out = std::process::Output {
        status,
        stdout: read(stdout),
        stderr: read(stderr),
    };
    assert!(
        out.status.success(),
        "cache-bench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `cache-bench load` with `args` and its `--json` report in a directory of its own
/// (`name`), and returns the report.
fn load_report(name: &str, args: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("cache-bench-e2e-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let mut all = vec!["load"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", json.to_str().unwrap(), "--quiet"]);
    cache_bench(&all);
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    report
}

#[test]
fn a_one_second_load_reports_hits_misses_puts_and_writes_its_files() {
    let s = Server::start(&[]);
    let dir = std::env::temp_dir().join(format!("cache-bench-e2e-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, hgrm, plot) = (
        dir.join("run.json"),
        dir.join("run.hgrm"),
        dir.join("run.svg"),
    );
    let target = s.url("");
    let out = cache_bench(&[
        "load",
        "--target",
        &target,
        "--connections",
        "8",
        "--threads",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--keys",
        "500",
        "--key-prefix",
        "e2e:",
        "--read-ratio",
        "0.8",
        "--value-size",
        "10-200",
        "--ttl",
        "60",
        "--distribution",
        "zipf:0.9",
        "--json",
        json.to_str().unwrap(),
        "--hgrm",
        hgrm.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--quiet",
    ]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("get hit") && table.contains("put") && table.contains("p99.99"),
        "{table}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for field in [
        "throughput_rps",
        "p50_us",
        "p90_us",
        "p99_us",
        "p999_us",
        "p9999_us",
        "max_us",
        "errors",
        "hit_ratio",
        "key_prefix",
        "config",
        "version",
    ] {
        assert!(report.get(field).is_some(), "json has {field}");
    }
    assert_eq!(report["errors"], 0);
    assert_eq!(report["key_prefix"], "e2e:");
    assert!(report["throughput_rps"].as_f64().unwrap() > 100.0);
    let hit_ratio = report["hit_ratio"].as_f64().unwrap();
    assert!(
        hit_ratio > 0.0 && hit_ratio < 1.0,
        "a cold cache with writes: some hits, some misses ({hit_ratio})"
    );
    assert!(report["outcomes"]["put"]["count"].as_u64().unwrap() > 0);
    // The server saw what the tool says it sent.
    let m = s.metrics();
    assert!(m["sets"].as_u64().unwrap() >= report["outcomes"]["put"]["count"].as_u64().unwrap());
    assert!(
        m["hits"].as_u64().unwrap() >= report["outcomes"]["get_hit"]["count"].as_u64().unwrap()
    );
    let hgrm = std::fs::read_to_string(&hgrm).unwrap();
    assert!(hgrm.contains("1/(1-Percentile)") && hgrm.contains("#[Max"));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn open_loop_holds_the_offered_rate_and_replay_runs_over_http() {
    let s = Server::start(&[]);
    let target = s.url("");
    let dir = std::env::temp_dir().join(format!("cache-bench-e2e-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("open.json");
    // Paced by the load thread's timer, then by its spinners until each request's time
    // (--busy-poll), each on io_uring (or epoll where the kernel forbids it) and on epoll.
    for (busy_poll, driver) in [
        (false, "auto"),
        (true, "auto"),
        (false, "epoll"),
        (true, "epoll"),
    ] {
        let mut args = vec![
            "load",
            "--target",
            &target,
            "--connections",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--rate",
            "2000",
            "--prefill",
            "--keys",
            "200",
            "--json",
            json.to_str().unwrap(),
            "--quiet",
            "--io-driver",
            driver,
        ];
        if busy_poll {
            args.push("--busy-poll");
        }
        cache_bench(&args);
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        // Every request meant for the measured second is sent, however late the
        // machine runs them; the throughput, over the time they took, cannot exceed
        // what was offered (and falls short of it only by a stall at the very end).
        let requests = report["requests"].as_f64().unwrap();
        assert!(
            (requests - 2000.0).abs() / 2000.0 < 0.02,
            "{requests} requests in a second at 2000 offered (busy poll: {busy_poll}, {driver})"
        );
        let rate = report["throughput_rps"].as_f64().unwrap();
        assert!(
            rate <= 2000.0 * 1.02,
            "achieved {rate} req/s for 2000 offered (busy poll: {busy_poll}, {driver})"
        );
        assert_eq!(report["hit_ratio"], 1.0, "every key was prefilled");
        assert_eq!(report["config"]["io_driver"], driver);
        let ran = report["io_drivers"].as_array().unwrap();
        match driver {
            "epoll" => assert_eq!(ran, &["epoll"]),
            _ => assert_eq!(ran.len(), 1, "{ran:?}"),
        }
    }

    let trace = dir.join("keys.txt");
    std::fs::write(&trace, "a\nb\na\nc\na\nb\n").unwrap();
    let out = cache_bench(&[
        "replay",
        trace.to_str().unwrap(),
        "--capacities",
        "2,10",
        "--target",
        &target,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("6 requests, 3 distinct keys"), "{text}");
    assert!(text.contains("50.00% hits over HTTP"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The same load against a real redis-server, over RESP: the prefill's `SET`s are
/// stored (with their TTL) and every `GET` of them is a hit.
#[test]
fn a_load_speaks_resp_to_redis() {
    let redis = e2e::redis::RedisServer::start();
    let target = redis.url();
    let report = load_report(
        "resp",
        &[
            "--target",
            &target,
            "--connections",
            "4",
            "--duration",
            "500ms",
            "--warmup",
            "100ms",
            "--prefill",
            "--keys",
            "200",
            "--key-prefix",
            "resp:",
            "--ttl",
            "600",
        ],
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["hit_ratio"], 1.0, "every key was prefilled");
    assert!(report["outcomes"]["get_hit"]["count"].as_u64().unwrap() > 0);
    assert_eq!(redis.cli(&["DBSIZE"]), "200");
    let ttl: u64 = redis.cli(&["TTL", "resp:7"]).parse().unwrap();
    assert!((1..=600).contains(&ttl), "SET … EX 600 gave a TTL of {ttl}");
    assert_eq!(redis.cli(&["STRLEN", "resp:7"]), "100");
}

#[test]
fn a_load_without_keep_alive_opens_a_connection_for_every_request() {
    let args = |target: &str| {
        [
            "--target",
            target,
            "--connections",
            "4",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
            "--keys",
            "50",
            "--reconnect",
        ]
        .map(str::to_owned)
    };
    let accepted = |s: &Server| s.metrics()["accepted_connections"].as_u64().unwrap();
    let server = Server::start(&[]);
    let before = accepted(&server);
    let http = args(&server.url(""));
    let report = load_report("reconnect-http", &http.each_ref().map(String::as_str));
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["config"]["reconnect"], true);
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    // One connection per request, and one for each reading of the metrics.
    assert_eq!(accepted(&server), before + requests + 1);

    let redis = e2e::redis::RedisServer::start();
    let received = || -> u64 {
        let stats = redis.cli(&["INFO", "stats"]);
        stats
            .lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .expect("INFO stats names its connections")
            .trim()
            .parse()
            .unwrap()
    };
    let before = received();
    let resp = args(&redis.url());
    let report = load_report("reconnect-resp", &resp.each_ref().map(String::as_str));
    assert_eq!(report["errors"], 0, "{report}");
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report}");
    assert_eq!(received(), before + requests + 1);
}

/// `memory --shift`: every cache, in a process of its own, reports each phase; under the
/// same byte bound the engine holds more entries of smaller values.
#[test]
fn a_shift_in_value_sizes_reports_each_phase_of_each_cache() {
    let out = cache_bench(&["memory", "--shift", "100,40", "--max-bytes", "1000000"]);
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 6, "two phases of three caches: {text}");
    let engine: Vec<u64> = rows
        .iter()
        .filter(|r| r[0] == "engine")
        .map(|r| r[2].parse().unwrap())
        .collect();
    assert_eq!(engine.len(), 2, "{text}");
    assert!(
        engine[0] > 1_000_000 / (100 + 60) && engine[1] > engine[0],
        "entries under a 1 MB bound, 100-byte then 40-byte values: {engine:?}"
    );
}

/// A load whose server never answers: every request times out at its own deadline (not
/// at once, nor never), the connection is opened afresh, and the run ends on time.
#[test]
fn requests_a_server_leaves_unanswered_time_out_at_their_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepts and holds every connection without reading or answering it.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let target = format!("http://127.0.0.1:{port}");
    let report = load_report(
        "mute",
        &[
            "--target",
            &target,
            "--connections",
            "4",
            "--duration",
            "900ms",
            "--warmup",
            "0s",
            "--request-timeout",
            "250ms",
        ],
    );
    let timeouts = report["errors_by_kind"]["timeout"].as_u64().unwrap();
    // Each connection's requests run back to back, a quarter-second apiece: four
    // connections fit at most 4 × ⌈0.9 / 0.25⌉ of them into the run.
    assert!((4..=16).contains(&timeouts), "{report}");
    assert_eq!(report["errors"], report["requests"], "{report}");
}

/// A load against a port nothing listens on counts its connect errors and ends on time.
#[test]
fn a_load_against_a_closed_port_counts_connect_errors_and_ends() {
    let target = format!("http://127.0.0.1:{}", e2e::free_port());
    let report = load_report(
        "closed",
        &[
            "--target",
            &target,
            "--connections",
            "2",
            "--duration",
            "300ms",
            "--warmup",
            "0s",
        ],
    );
    assert!(
        report["errors_by_kind"]["connect"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_eq!(report["errors"], report["requests"], "{report}");
}
