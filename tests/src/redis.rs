//! A real `redis-server` on a free loopback port for tests, stopped when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// A cache-manager instance on this Redis (a 200 ms REDIS_TIMEOUT_MS unless `extra`
    /// says otherwise), with `extra` settings.
    pub fn instance(&self, extra: &[(&str, &str)]) -> crate::Server {
        let url = self.url();
        let mut env = vec![("REDIS_URL", url.as_str()), ("REDIS_TIMEOUT_MS", "200")];
        env.extend_from_slice(extra);
        crate::Server::start(&env)
    }

    pub fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> Self {
        Self::started(port, spawn_redis(port, &std::env::temp_dir(), &[]))
    }

    /// A server that also listens with TLS, on the returned port, presenting `cert` and
    /// `key` (PEM files); clients need not present certificates. The plain port stays
    /// open for the harness's own checks.
    pub fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> (Self, u16) {
        let (port, tls_port) = (crate::free_port(), crate::free_port());
        let mut tls = vec!["--tls-port".to_owned(), tls_port.to_string()];
        tls.extend(tls_arguments(cert, key, ca));
        let args: Vec<&str> = tls.iter().map(String::as_str).collect();
        (
            Self::started(port, spawn_redis(port, &std::env::temp_dir(), &args)),
            tls_port,
        )
    }

    fn started(port: u16, child: Child) -> Self {
        let server = Self { child, port };
        crate::wait_for("redis-server answers PING", Duration::from_secs(10), || {
            server.cli(&["PING"]) == "PONG"
        });
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command, answered as text ("" when unreachable); see [`cli`].
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    pub fn signal(&self, signal: &str) {
        assert!(self.try_signal(signal));
    }

    fn try_signal(&self, signal: &str) -> bool {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.try_signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Redis Cluster of `masters` masters (no replicas), made with
/// `redis-cli --cluster create` on free loopback ports, stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// Plain ports, for the harness's own checks.
    ports: Vec<u16>,
    /// With TLS: each node's TLS port (what the cluster announces to clients) and the
    /// node arguments that turn it on.
    tls: Option<(Vec<u16>, Vec<String>)>,
    dir: std::path::PathBuf,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::started(masters, 0, None)
    }

    /// `masters` masters (nodes `0..masters`) and one replica each (the nodes after).
    pub fn start_with_replicas(masters: usize) -> Self {
        Self::started(masters, 1, None)
    }

    /// A cluster whose clients and cluster bus speak TLS (`tls-cluster yes`), each node
    /// presenting `cert` and `key` (PEM files); each also keeps a plain port for the
    /// harness's checks. [`Self::nodes`] are then `rediss://` URLs.
    pub fn start_tls(
        masters: usize,
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> Self {
        let tls_ports: Vec<u16> = (0..masters).map(|_| crate::free_port()).collect();
        let mut args = vec!["--tls-cluster".to_owned(), "yes".to_owned()];
        args.extend(tls_arguments(cert, key, ca));
        Self::started(masters, 0, Some((tls_ports, args)))
    }

    fn started(masters: usize, replicas: usize, tls: Option<(Vec<u16>, Vec<String>)>) -> Self {
        let nodes = masters * (1 + replicas);
        let dir = std::env::temp_dir().join(format!(
            "redis-cluster-{}-{}",
            std::process::id(),
            crate::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ports: Vec<u16> = (0..nodes).map(|_| crate::free_port()).collect();
        let mut cluster = Self {
            nodes: Vec::new(),
            ports,
            tls,
            dir,
        };
        cluster.nodes = (0..nodes).map(|i| cluster.spawn(i)).collect();
        for &port in &cluster.ports {
            wait_until(|| cli(port, &["PING"]) == "PONG", "a cluster node to start");
        }
        let mut create = Command::new("redis-cli");
        if let Some((_, args)) = &cluster.tls {
            let ca = &args[args.iter().position(|a| a == "--tls-ca-cert-file").unwrap() + 1];
            create.args(["--tls", "--cacert", ca]);
        }
        let created = create
            .args(["--cluster", "create"])
            .args(
                cluster
                    .client_ports()
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}")),
            )
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli is installed (scripts/test.sh installs it)");
        assert!(created.success(), "redis-cli --cluster create failed");
        cluster.wait_until_ok();
        cluster
    }

    fn wait_until_ok(&self) {
        for &port in &self.ports {
            wait_until(
                || cli(port, &["CLUSTER", "INFO"]).contains("cluster_state:ok"),
                "the cluster to be ok",
            );
        }
    }

    /// Kills master `i`: its slots have no server until [`Self::restart_master`].
    pub fn kill_master(&mut self, i: usize) {
        let _ = self.nodes[i].kill();
        let _ = self.nodes[i].wait();
    }

    /// Starts master `i` again on its port with its node file (so it takes back its
    /// slots) and waits until the cluster is ok.
    pub fn restart_master(&mut self, i: usize) {
        self.nodes[i] = self.spawn(i);
        self.wait_until_ok();
    }

    fn spawn(&self, i: usize) -> Child {
        let mut extra = Vec::new();
        if let Some((tls_ports, args)) = &self.tls {
            extra.push("--tls-port".to_owned());
            extra.push(tls_ports[i].to_string());
            extra.extend(args.iter().cloned());
        }
        spawn_cluster_node(self.ports[i], &self.dir, &extra)
    }

    /// The ports clients are sent to: the TLS ports of a TLS cluster.
    fn client_ports(&self) -> Vec<u16> {
        match &self.tls {
            Some((tls_ports, _)) => tls_ports.clone(),
            None => self.ports.clone(),
        }
    }

    /// Promotes node `i`, a replica, in place of its master (`CLUSTER FAILOVER` once it
    /// is in sync), and waits until it is a master. A manual failover gives up after 5 s
    /// when master and replica do not agree in time (a loaded machine), so it is asked
    /// again, and at last without the master's agreement (`FORCE`).
    pub fn fail_over_to(&self, i: usize) {
        let replication = || self.node_cli(i, &["INFO", "replication"]);
        assert!(
            replication().contains("role:slave"),
            "node {i} is a replica"
        );
        wait_until(
            || replication().contains("master_link_status:up"),
            "the replica to be in sync",
        );
        let is_master = || replication().contains("role:master");
        for how in [None, None, Some("FORCE")] {
            let mut args = vec!["CLUSTER", "FAILOVER"];
            args.extend(how);
            assert_eq!(self.node_cli(i, &args), "OK");
            let deadline = Instant::now() + Duration::from_secs(7);
            while !is_master() && Instant::now() < deadline {
                std::thread::park_timeout(Duration::from_millis(20));
            }
            if is_master() {
                return;
            }
        }
        panic!("node {i} was not promoted");
    }

    /// A command sent to node `i` alone.
    pub fn node_cli(&self, i: usize, args: &[&str]) -> String {
        cli(self.ports[i], args)
    }

    /// Whether master `i` holds `key` (asked of that master alone).
    pub fn holds(&self, i: usize, key: &str) -> bool {
        cli(self.ports[i], &["EXISTS", key]) == "1"
    }

    /// Two instances on the cluster (a 500 ms REDIS_TIMEOUT_MS unless `extra` says
    /// otherwise, then `extra`'s settings), both following every coherence event stream,
    /// and `user:0` … `user:29` written through the first, which puts keys on every
    /// master of three.
    pub fn two_instances_with_30_users(
        &self,
        extra: &[(&str, &str)],
    ) -> (crate::Server, crate::Server) {
        let nodes = self.nodes();
        let mut env = vec![
            ("REDIS_CLUSTER_NODES", nodes.as_str()),
            ("REDIS_TIMEOUT_MS", "500"),
        ];
        env.extend_from_slice(extra);
        let (a, b) = (crate::Server::start(&env), crate::Server::start(&env));
        a.wait_subscribed();
        b.wait_subscribed();
        for i in 0..30 {
            let written = a.put_key(&format!("user:{i}"), serde_json::json!(i));
            assert_eq!(written["l2"], "stored", "user:{i}: {written}");
        }
        let per_master = self.keys_per_master();
        assert!(
            per_master[..3.min(per_master.len())].iter().all(|n| *n > 0),
            "{per_master:?}"
        );
        (a, b)
    }

    /// `host:port,host:port,...` (`rediss://host:port,...` with TLS), for
    /// REDIS_CLUSTER_NODES.
    pub fn nodes(&self) -> String {
        let scheme = if self.tls.is_some() { "rediss://" } else { "" };
        self.client_ports()
            .iter()
            .map(|p| format!("{scheme}127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How many keys each master holds.
    pub fn keys_per_master(&self) -> Vec<usize> {
        self.ports
            .iter()
            .map(|&p| cli(p, &["DBSIZE"]).parse().unwrap_or(0))
            .collect()
    }

    /// A command sent to the master owning `key`'s slot (found by following MOVED).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut reply = cli(self.ports[0], args);
        if let Some(target) = reply.strip_prefix("MOVED ") {
            let port: u16 = target.rsplit(':').next().unwrap().parse().unwrap();
            reply = cli(port, args);
        }
        reply
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server's TLS settings: present `cert` and `key`, trust `ca`, ask clients for no
/// certificate.
fn tls_arguments(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Vec<String> {
    let path = |p: &std::path::Path| p.to_str().expect("UTF-8 path").to_owned();
    vec![
        "--tls-cert-file".to_owned(),
        path(cert),
        "--tls-key-file".to_owned(),
        path(key),
        "--tls-ca-cert-file".to_owned(),
        path(ca),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ]
}

/// A cluster-enabled redis-server on `port`, its node file in `dir`; a node that misses
/// 2 s of heartbeats is marked failed.
fn spawn_cluster_node(port: u16, dir: &std::path::Path, extra: &[String]) -> Child {
    let config = format!("nodes-{port}.conf");
    let mut args = vec![
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &config,
        "--cluster-node-timeout",
        "2000",
    ];
    args.extend(extra.iter().map(String::as_str));
    spawn_redis(port, dir, &args)
}

/// A redis-server on `port` in `dir`, without persistence, plus `extra` arguments.
fn spawn_redis(port: u16, dir: &std::path::Path, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .current_dir(dir)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server is installed (scripts/test.sh installs it)")
}

fn wait_until(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// One command to one node over a raw socket; the reply as text.
fn cli(port: u16, args: &[&str]) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = format!("*{}\r\n", args.len());
    for a in args {
        request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    if s.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 1 << 16];
    let n = s.read(&mut buf).unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    let mut lines = reply.lines();
    let first = lines.next().unwrap_or_default();
    match first.chars().next() {
        // A bulk string: its content (several lines for CLUSTER INFO); `$-1` is nil.
        Some('$') if first != "$-1" => lines.collect::<Vec<_>>().join("\n"),
        // An array: its last element, which is what the tests ask of PUBSUB NUMSUB.
        Some('*') => {
            let last = reply.lines().last().unwrap_or_default();
            last.strip_prefix(':').unwrap_or(last).to_string()
        }
        // +OK, :1, -ERR …, $-1: the line without its type byte.
        Some(_) => first.get(1..).unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it, written as PEM files.
pub fn tls_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: OpenSSL takes a certificate whose issuer is its subject for
    // self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "cache-manager test CA");
    // OpenSSL (redis-cli, and a TLS cluster's bus) wants a CA that says it signs.
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server_params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let server = server_params.signed_by(&server_key, &ca, &ca_key).unwrap();
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&ca_path, ca.pem()).unwrap();
    std::fs::write(&cert_path, server.pem()).unwrap();
    std::fs::write(&key_path, server_key.serialize_pem()).unwrap();
    (ca_path, cert_path, key_path)
}
