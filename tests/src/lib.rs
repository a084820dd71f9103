//! A harness for end-to-end tests: starts the real `cache-manager` binary on a free
//! loopback port, waits for it by polling `/readyz`, and stops it with SIGTERM.
//!
//! The binaries are built (once per test process, a no-op when they are fresh) with the
//! same cargo, profile and target directory as the test itself, so a test never runs a
//! stale one; `CACHE_MANAGER_BIN` and `CACHE_BENCH_BIN` name binaries to use instead.

pub mod module_graph;
pub mod origin;
pub mod redis;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

pub fn binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build("net", "cache-manager", "CACHE_MANAGER_BIN"))
        .clone()
}

/// The `cache-bench` load generator, built the same way (`CACHE_BENCH_BIN` overrides).
pub fn bench_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| build("bench-harness", "cache-bench", "CACHE_BENCH_BIN"))
        .clone()
}

fn build(package: &str, bin: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target/");
    let mut cargo = Command::new(env!("CARGO"));
    // The variables cargo sets for a test describe the test's package; some build scripts
    // (ring's) rebuild when they change, so the nested build must not see them, or it
    // would rebuild the TLS stack on every test run.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let per_package = name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
            ]
            .contains(&&*name);
        if per_package {
            cargo.env_remove(&*name);
        }
    }
    cargo
        .args([
            "build",
            "--quiet",
            "-p",
            package,
            "--bin",
            bin,
            "--target-dir",
        ])
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// A loopback port that is free now and never handed out before in this process. It is
/// picked below the ephemeral range less 10,000, as `scripts/lib.sh` picks its ports: an
/// ephemeral port can be taken by an outgoing connection before the server binds it, and
/// a Redis Cluster node refuses a port above 55,535 (its bus listens 10,000 higher), so
/// the port 10,000 above is checked free too.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = ephemeral_low.saturating_sub(20_000).max(1_000);
    // Processes running at once start at different places.
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id() ^ nanos) % span
    });
    let bindable = |port: u32| TcpListener::bind(("127.0.0.1", port as u16)).is_ok();
    for _ in 0..span {
        let port = 10_000 + (start + NEXT.fetch_add(1, Relaxed)) % span;
        if bindable(port) && bindable(port + 10_000) {
            return port as u16;
        }
    }
    panic!("no free loopback port between 10000 and {}", 10_000 + span);
}

impl Server {
    /// Starts the service with these environment variables (on top of a free port).
    pub fn start(env: &[(&str, &str)]) -> Server {
        Self::start_logging(env, Stdio::inherit())
    }

    /// Starts the service as `start` does, its log (stderr) going to `log`.
    pub fn start_logging(env: &[(&str, &str)], log: impl Into<Stdio>) -> Server {
        let mut server = Self::spawn(env, log);
        server.wait_until_answers("/readyz", Duration::from_secs(5));
        server
    }

    /// Starts the service as `start_logging` does, but waits only until a core answers
    /// (`/healthz`) at once, not until every core serves (`/readyz`): a connection a core
    /// has not accepted yet is given up after 200 ms.
    pub fn start_live(env: &[(&str, &str)], log: impl Into<Stdio>) -> Server {
        let mut server = Self::spawn(env, log);
        server.wait_until_answers("/healthz", Duration::from_millis(200));
        server
    }

    /// Starts the service as `start_logging` does, with its open-file limit, soft and
    /// hard, set to `open_files` (by util-linux's `prlimit`, which then runs it).
    pub fn start_with_open_files(
        env: &[(&str, &str)],
        open_files: u64,
        log: impl Into<Stdio>,
    ) -> Server {
        let mut command = Command::new("prlimit");
        command
            .arg(format!("--nofile={open_files}:{open_files}"))
            .arg("--")
            .arg(binary());
        let mut server = Self::spawn_command(command, env, log);
        server.wait_until_answers("/readyz", Duration::from_secs(5));
        server
    }

    fn spawn(env: &[(&str, &str)], log: impl Into<Stdio>) -> Server {
        Self::spawn_command(Command::new(binary()), env, log)
    }

    /// Runs `command` (the binary, or a program that runs it) with the test's settings.
    fn spawn_command(mut command: Command, env: &[(&str, &str)], log: impl Into<Stdio>) -> Server {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        command
            .env_clear()
            .env("CACHE_LISTEN", addr.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        // scripts/test.sh runs the HTTP, API, warm and origin tests a second time on epoll
        // this way; a test's own setting wins.
        if let Ok(driver) = std::env::var("CACHE_IO_DRIVER") {
            command.env("CACHE_IO_DRIVER", driver);
        }
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start cache-manager");
        Server { child, addr }
    }

    /// Polls `path` until it answers 200, each try given up after `patience`.
    fn wait_until_answers(&mut self, path: &str, patience: Duration) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("cache-manager exited before it was ready: {status}");
            }
            if self
                .get_within(path, patience)
                .is_some_and(|r| r.status == 200)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cache-manager's {path} not 200 after 20 s"
            );
            std::thread::park_timeout(Duration::from_millis(5));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit, at most `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        self.wait_exit(within)
    }

    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "cache-manager did not exit within {within:?}"
            );
            std::thread::park_timeout(Duration::from_millis(20));
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// `GET /api/cache/{key}`: the status and the JSON body.
    pub fn get_key(&self, key: &str) -> (u16, serde_json::Value) {
        match ureq::get(&self.url(&format!("/api/cache/{key}"))).call() {
            Ok(r) => (r.status(), r.into_json().expect("a JSON body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().expect("a JSON body")),
            Err(e) => panic!("GET {key}: {e}"),
        }
    }

    /// `PUT /api/cache/{key}` with `{"value": value}`: the JSON answer (expects a 200).
    pub fn put_key(&self, key: &str, value: serde_json::Value) -> serde_json::Value {
        let (status, answer) = self.try_put_key(key, value);
        assert_eq!(status, 200, "PUT {key}: {answer}");
        answer
    }

    /// `PUT /api/cache/{key}` with `{"value": value}`: the status and the JSON answer.
    pub fn try_put_key(&self, key: &str, value: serde_json::Value) -> (u16, serde_json::Value) {
        let answer = ureq::put(&self.url(&format!("/api/cache/{key}")))
            .send_json(serde_json::json!({ "value": value }));
        match answer {
            Ok(r) => (r.status(), r.into_json().expect("a JSON body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().expect("a JSON body")),
            Err(e) => panic!("PUT {key}: {e}"),
        }
    }

    /// Waits until the instance follows every coherence event stream.
    pub fn wait_subscribed(&self) {
        wait_for("the instance subscribed", Duration::from_secs(15), || {
            self.metrics()["coherence_subscribed"] == true
        });
    }

    /// The metrics JSON.
    pub fn metrics(&self) -> serde_json::Value {
        self.get_once("/api/cache/metrics")
            .expect("metrics answered")
            .json()
    }

    /// Each core's `io_driver` in the JSON metrics (`io_uring` or `epoll`).
    pub fn io_drivers(&self) -> Vec<String> {
        let metrics = self.metrics();
        let cores = metrics["cores"].as_array().expect("cores in the metrics");
        cores
            .iter()
            .map(|c| {
                c["io_driver"]
                    .as_str()
                    .expect("a core's io_driver")
                    .to_owned()
            })
            .collect()
    }

    /// One GET on its own connection, closed afterwards (so the harness never holds a
    /// connection the test is counting); `None` if the server cannot be reached.
    pub fn get_once(&self, path: &str) -> Option<RawResponse> {
        self.get_within(path, Duration::from_secs(5))
    }

    /// `get_once`, given up after `patience` without an answer.
    pub fn get_within(&self, path: &str, patience: Duration) -> Option<RawResponse> {
        let mut stream = TcpStream::connect(self.addr).ok()?;
        stream.set_read_timeout(Some(patience)).ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).ok()?;
        try_read_response(&mut stream, false)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `done` until it holds, failing the test after `within`; returns how long it took.
pub fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        std::thread::park_timeout(Duration::from_millis(2));
    }
    started.elapsed()
}

/// A raw HTTP response read off a socket.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one response (with a Content-Length body, as the service always sends).
pub fn read_response(stream: &mut TcpStream) -> RawResponse {
    read_response_to(stream, false)
}

/// Like `read_response`, for a response to HEAD (no body follows its headers).
pub fn read_head_response(stream: &mut TcpStream) -> RawResponse {
    read_response_to(stream, true)
}

fn read_response_to(stream: &mut TcpStream, head_only: bool) -> RawResponse {
    try_read_response(stream, head_only).expect("a whole response before the connection closed")
}

/// One response, or `None` if the connection closed or a read timed out first.
pub fn try_read_response(stream: &mut TcpStream, head_only: bool) -> Option<RawResponse> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? != 1 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).ok()?;
    let status = head.get(9..12)?.parse().ok()?;
    let mut response = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    let length: usize = response
        .header("content-length")
        .map_or(Some(0), |v| v.parse().ok())?;
    if !head_only && status != 100 {
        response.body.resize(length, 0);
        stream.read_exact(&mut response.body).ok()?;
    }
    Some(response)
}

/// Writes raw bytes and reads one response.
pub fn exchange(stream: &mut TcpStream, request: &[u8]) -> RawResponse {
    stream.write_all(request).unwrap();
    read_response(stream)
}

/// True once the peer has closed the connection (reads EOF or a reset).
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}
