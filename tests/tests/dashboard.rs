//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, which
//! scripts/test.sh installs) loads `/dashboard` from a service under load, runs its
//! script, and the rendered DOM must show every chart drawn with data. Two screenshots,
//! desktop in light mode and phone-sized in dark mode, are saved under
//! `target/test-artifacts/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::{wait_for, Server};
use serde_json::json;

fn chromium() -> &'static str {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| Command::new(name).arg("--version").output().is_ok())
        .expect("the dashboard test needs Chromium: scripts/test.sh installs Debian's chromium")
}

/// Chromium's output for `url` with `extra` flags, run headless as the environment
/// README (.library/env) prescribes: no sandbox (root), no background networking.
fn run_chromium(url: &str, extra: &[&str]) -> String {
    let profile = std::env::temp_dir().join(format!(
        "cm-chromium-{}-{}",
        std::process::id(),
        e2e::free_port()
    ));
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(url)
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `name="…"` in one tag's text.
fn attribute<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(&tag[start..start + len])
}

/// A stand-in origin for the page, in front of `service` (its base URL): it forwards
/// every GET, and holds a `?since=` request until the service has a second after it.
/// Chromium's virtual time runs the page's one-second refreshes in a few real
/// milliseconds, in which the service samples nothing new; held this way, each refresh
/// after the first brings at least one new second, as it does in a browser a person
/// watches. Returns the gateway's base URL and the count of `?since=` requests it
/// answered.
fn gateway(service: String) -> (String, Arc<AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answered = Arc::new(AtomicUsize::new(0));
    let count = answered.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (service, count) = (service.clone(), count.clone());
            std::thread::spawn(move || forward_each_request(stream, &service, &count));
        }
    });
    (url, answered)
}

fn forward_each_request(stream: std::net::TcpStream, service: &str, answered: &AtomicUsize) {
    use std::io::{BufRead, BufReader, Write};
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        // The page sends GETs only, without a body: the head ends at a blank line.
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap_or(0) > 2 {
            line.clear();
        }
        let path = request_line.split(' ').nth(1).unwrap_or("/").to_owned();
        if let Some((_, since)) = path.split_once("since=") {
            let newer = format!("{service}/api/cache/history?since={since}");
            wait_for(
                "a second after the page's newest",
                Duration::from_secs(5),
                || {
                    let h: serde_json::Value =
                        ureq::get(&newer).call().unwrap().into_json().unwrap();
                    !h["samples"].as_array().unwrap().is_empty()
                },
            );
            answered.fetch_add(1, Ordering::Relaxed);
        }
        // The browser also asks for /favicon.ico, which the service answers 404.
        let response = match ureq::get(&format!("{service}{path}")).call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => response,
            Err(e) => panic!("the service did not answer {path}: {e}"),
        };
        let status = response.status();
        let content_type = response.content_type().to_owned();
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body).unwrap();
        let head = format!(
            "HTTP/1.1 {} OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\r\n",
            status,
            body.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|()| writer.write_all(&body))
            .is_err()
        {
            return;
        }
    }
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_renders_live_data_in_a_real_browser() {
    let server = Server::start(&[("CACHE_CORES", "2"), ("CACHE_L1_MAX_ENTRIES", "2000")]);
    let stop = AtomicBool::new(false);
    /// Stops the load when the test ends, passed or failed (a panic would otherwise
    /// leave the scope waiting for the load thread forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|scope| {
        let _stop_load = StopOnDrop(&stop);
        let load = scope.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("user:{}", n % 3000);
                if n % 4 == 0 {
                    server.put_key(&key, json!({"n": n}));
                } else {
                    server.get_key(&key);
                }
                if n % 500 == 0 {
                    let _ = ureq::post(&server.url("/api/cache/invalidate"))
                        .send_json(json!({"pattern": "user:1*"}));
                }
                n += 1;
            }
        });
        let history = || -> serde_json::Value {
            ureq::get(&server.url("/api/cache/history"))
                .call()
                .unwrap()
                .into_json()
                .unwrap()
        };
        wait_for(
            "five seconds of history with traffic",
            Duration::from_secs(20),
            || {
                let h = history();
                let samples = h["samples"].as_array().unwrap();
                samples.len() >= 5
                    && samples
                        .iter()
                        .rev()
                        .take(3)
                        .all(|s| s["gets"].as_u64() > Some(0))
            },
        );

        let url = server.url("/dashboard");
        let (gateway, incremental) = gateway(server.url(""));
        let dom = run_chromium(&format!("{gateway}/dashboard"), &["--dump-dom"]);
        let status = dom
            .split("<span id=\"status\"")
            .nth(1)
            .expect("the status line");
        let rendered: usize = attribute(status, "data-rendered")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "the page rendered no history: {}",
                    &status[..status.len().min(300)]
                )
            });
        assert!(rendered >= 5, "{rendered} samples rendered");
        // After its first request the page asks only for the seconds after its newest
        // (`?since=`) and appends them (three times in the virtual time given): it holds
        // each of the service's seconds once, none missing between its first and its last.
        let times: Vec<u64> = attribute(status, "data-times")
            .expect("the samples' times")
            .split(' ')
            .map(|t| t.parse().unwrap())
            .collect();
        assert_eq!(times.len(), rendered);
        assert!(
            incremental.load(Ordering::Relaxed) >= 1,
            "no ?since= refresh"
        );
        let served: Vec<u64> = history()["samples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["t"].as_u64().unwrap())
            .filter(|t| (times[0]..=times[times.len() - 1]).contains(t))
            .collect();
        assert_eq!(times, served, "the page's seconds against the service's");
        let page = dom.split("<script").next().unwrap();
        let charts: Vec<(String, usize, usize)> = page
            .split("<canvas")
            .skip(1)
            .map(|tag| {
                let tag = &tag[..tag.find('>').unwrap()];
                (
                    attribute(tag, "id").unwrap().to_owned(),
                    attribute(tag, "data-points").unwrap().parse().unwrap(),
                    attribute(tag, "data-series").unwrap().parse().unwrap(),
                )
            })
            .collect();
        assert_eq!(charts.len(), 9, "{charts:?}");
        for (id, points, series) in &charts {
            assert!(
                *points >= 5 && *series >= 1,
                "{id} drew {points} points in {series} series"
            );
        }
        let drawn = |id: &str| charts.iter().find(|c| c.0 == id).unwrap().2;
        assert!(
            drawn("chart-ops") >= 3,
            "GET, PUT and invalidate rates are drawn"
        );
        assert_eq!(drawn("chart-latency"), 3, "p50, p99 and p99.9");
        assert_eq!(drawn("chart-cores"), 2, "one line per core");

        let dir = artifacts();
        for (name, extra) in [
            ("dashboard.png", &["--window-size=1280,1100"][..]),
            (
                "dashboard-phone-dark.png",
                &[
                    "--window-size=390,1400",
                    "--blink-settings=preferredColorScheme=0",
                ][..],
            ),
        ] {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            run_chromium(
                &url,
                &[extra, &[&format!("--screenshot={}", path.display())]].concat(),
            );
            let png = std::fs::read(&path).expect("the screenshot was written");
            assert!(
                png.starts_with(b"\x89PNG") && png.len() > 10_000,
                "{name}: {} bytes",
                png.len()
            );
            eprintln!("dashboard screenshot: {}", path.display());
        }
        drop(_stop_load);
        load.join().unwrap();
    });
}
