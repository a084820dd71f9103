//! The Redis client: one I/O thread runs a tokio runtime with the redis crate's
//! `ConnectionManager` (one multiplexed connection that reconnects by itself), and every
//! caller, on any runtime (the serving cores included), hands it jobs over a flume
//! channel and awaits the answer on a one-shot flume channel. Commands from all cores
//! share the connection, so many are in flight at once (pipelined). The redis crate
//! needs tokio, and the serving cores' sockets cannot leave their core, which is why Redis I/O
//! lives on its own thread instead of on the serving cores.
//!
//! Every call is bounded by `timeout` and its outcome feeds a circuit breaker: on a
//! cluster the breaker of the master that holds the call's key (see [`Breakers`]), else
//! the tier's. While it is open, reads and fills fail at once with [`L2Error::Open`] and
//! are counted as skipped; client writes and deletions are still attempted (see
//! `Policy`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::{FutureExt, Shared};
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, ConnectionInfo, IntoConnectionInfo, RedisFuture};

use crate::breaker::{Breakers, Which};
use crate::envelope::{Envelope, Stored, HEADER_VERSION_BYTES};
pub use crate::error::L2Error;
use crate::nodes::{certificates, client_for, read_layout, Master};

use crate::events::Incoming;
use crate::keep_newer::{scan_and_bury, Written, KEEP_NEWER, TOMBSTONE_TTL};
use crate::tracking::Tracked;
use crate::version::Version;

#[derive(Clone, Debug)]
pub struct L2Config {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS; unused for a
    /// cluster.
    pub url: String,
    /// A PEM file of CA certificates to trust for `rediss://` instead of the system's.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Redis Cluster seed nodes (`host:port`); when any are given, L2 is that cluster.
    pub cluster_nodes: Vec<String>,
    /// Overrides the URL's password (`REDIS_PASSWORD`).
    pub password: Option<String>,
    /// Overrides the URL's database (`REDIS_DB`).
    pub db: Option<i64>,
    /// Prepended to every key (`CACHE_L2_PREFIX`).
    pub prefix: String,
    /// Bound on every command (`REDIS_TIMEOUT_MS`).
    pub timeout: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    /// Coherence by client tracking (`tracking.rs`) instead of pub/sub events for keys.
    pub tracking: bool,
}

#[derive(Debug, Default)]
pub struct L2Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub errors: AtomicU64,
    /// Calls refused because the breaker was open.
    pub skipped: AtomicU64,
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// The connection the I/O thread has, or the attempt to make one that is under way: every
/// job waiting for a connection awaits the same attempt.
pub(crate) type Connecting = Shared<BoxFuture<Result<Connection, L2Error>>>;
pub(crate) type Job = Box<dyn FnOnce(Connecting) -> BoxFuture<()> + Send>;
/// The subscriber's inbox, for client tracking's invalidations.
pub(crate) type TrackingSink = Arc<Mutex<Option<flume::Sender<Incoming>>>>;

/// Where L2 lives: one server (a reconnecting multiplexed connection), or a cluster
/// (the redis crate's cluster client, which routes each key to its slot's master and
/// splits multi-key `UNLINK`s by slot).
#[derive(Clone)]
pub(crate) enum Backend {
    Single(redis::Client),
    Cluster {
        client: ClusterClient,
        nodes: Vec<ConnectionInfo>,
    },
}

/// A connection to either backend; commands are written once against it.
// Boxing the larger variant would cost an allocation per command: each job gets a clone.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    /// Client tracking's own connections, one per node (`tracking.rs`).
    Tracked(Tracked),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
            Connection::Tracked(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Tracked(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
            Connection::Tracked(c) => c.get_db(),
        }
    }
}

/// How a call treats the circuit breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    /// Skipped while the breaker is open: reads and fills, which L1 and the origin cover.
    Guarded,
    /// Always attempted: writes and deletions, which a skip would make incoherent (the
    /// other instances would go on reading the old value from L2).
    Always,
}

/// A handle to the Redis tier; cheap to clone.
#[derive(Clone)]
pub struct L2 {
    pub(crate) jobs: flume::Sender<Job>,
    breakers: Arc<Breakers>,
    /// Where client tracking's invalidations go (set by [`L2::subscribe`]).
    pub(crate) tracking_sink: TrackingSink,
    /// When the cluster's layout was last asked for the breakers (ms since `started`).
    layout_asked_ms: Arc<AtomicU64>,
    started: Instant,
    pub(crate) stats: Arc<L2Stats>,
    pub(crate) config: Arc<L2Config>,
    pub(crate) backend: Backend,
    /// The CA certificates for `rediss://` (`REDIS_TLS_CA_FILE`), for connections made to
    /// single nodes.
    pub(crate) ca: Option<Arc<Vec<u8>>>,
}

impl L2 {
    /// Starts the I/O thread. Redis need not be up: connecting is retried on use.
    pub fn start(config: L2Config) -> Result<Self, L2Error> {
        let ca = match &config.tls_ca_file {
            Some(path) => Some(Arc::new(std::fs::read(path).map_err(|e| {
                L2Error::Config(format!("cannot read the CA file {}: {e}", path.display()))
            })?)),
            None => None,
        };
        let backend = if config.cluster_nodes.is_empty() {
            let info = node_info(&config, &config.url)?;
            Backend::Single(client_for(info, ca.as_deref().map(Vec::as_slice))?)
        } else {
            // Seeds are host:port (plain) or redis:// and rediss:// URLs.
            let nodes = config
                .cluster_nodes
                .iter()
                .map(|node| match node.contains("://") {
                    true => node_info(&config, node),
                    false => node_info(&config, &format!("redis://{node}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let tls = nodes
                .iter()
                .filter(|n| matches!(n.addr, redis::ConnectionAddr::TcpTls { .. }))
                .count();
            if tls != 0 && tls != nodes.len() {
                return Err(L2Error::Config(
                    "Redis Cluster seeds are either all rediss:// (TLS) or none".into(),
                ));
            }
            let mut builder = ClusterClient::builder(nodes.clone())
                .connection_timeout(config.timeout)
                .response_timeout(config.timeout)
                .retries(1);
            if let Some(password) = &config.password {
                builder = builder.password(password.clone());
            }
            if tls != 0 {
                builder = builder.tls(redis::TlsMode::Secure);
                if let Some(ca) = &ca {
                    builder = builder.certs(certificates(ca));
                }
            }
            let client = builder
                .build()
                .map_err(|e| L2Error::Config(e.to_string()))?;
            Backend::Cluster { client, nodes }
        };
        let (jobs, queue) = flume::unbounded::<Job>();
        let manager_config = ConnectionManagerConfig::new()
            .set_response_timeout(config.timeout)
            .set_connection_timeout(config.timeout)
            .set_number_of_retries(1);
        let (thread_backend, timeout) = (backend.clone(), config.timeout);
        let tracking_sink: TrackingSink = Arc::default();
        let tracked = config.tracking.then(|| {
            let (seeds, cluster) = match &backend {
                Backend::Single(client) => (vec![client.get_connection_info().clone()], false),
                Backend::Cluster { nodes, .. } => (nodes.clone(), true),
            };
            let (ca, prefix, sink) = (ca.clone(), config.prefix.clone(), tracking_sink.clone());
            move || Tracked::new(seeds, cluster, ca, timeout, &prefix, sink)
        });
        std::thread::Builder::new()
            .name("l2-io".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let tracked = tracked.map(|make| make());
                    serve_jobs(thread_backend, manager_config, timeout, tracked, queue).await
                });
            })
            .map_err(|e| L2Error::Config(format!("cannot start the L2 thread: {e}")))?;
        Ok(Self {
            jobs,
            breakers: Arc::new(Breakers::new(
                config.breaker_threshold,
                config.breaker_cooldown,
            )),
            layout_asked_ms: Arc::new(AtomicU64::new(u64::MAX)),
            started: Instant::now(),
            tracking_sink,
            stats: Arc::default(),
            config: Arc::new(config),
            backend,
            ca,
        })
    }

    /// A client for one node (a seed, a master found in the cluster's layout), with the
    /// configured TLS trust.
    pub(crate) fn node_client(&self, info: ConnectionInfo) -> Result<redis::Client, L2Error> {
        client_for(info, self.ca.as_deref().map(Vec::as_slice))
    }

    fn node_config(&self) -> redis::AsyncConnectionConfig {
        redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.timeout)
            .set_response_timeout(self.config.timeout)
    }

    /// A connection to one node.
    pub(crate) async fn node_connection(
        &self,
        info: ConnectionInfo,
    ) -> Result<redis::aio::MultiplexedConnection, L2Error> {
        Ok(self
            .node_client(info)?
            .get_multiplexed_async_connection_with_config(&self.node_config())
            .await?)
    }

    /// A RESP3 connection to one node whose pushes (subscribed messages, the
    /// disconnection) go to `pushes`.
    pub(crate) async fn node_subscription(
        &self,
        mut info: ConnectionInfo,
        pushes: impl redis::aio::AsyncPushSender,
    ) -> Result<redis::aio::MultiplexedConnection, L2Error> {
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        // Pub/sub is not bound by the command timeout: a subscription waits for messages.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.config.timeout)
            .set_push_sender(pushes);
        Ok(self
            .node_client(info)?
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    pub fn stats(&self) -> &L2Stats {
        &self.stats
    }

    /// The nodes to reach one of: the server, or every seed of a cluster.
    pub(crate) fn any_node_infos(&self) -> Vec<ConnectionInfo> {
        match &self.backend {
            Backend::Single(client) => vec![client.get_connection_info().clone()],
            Backend::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    /// The cluster's masters and the slots each holds, asked of the first seed that
    /// answers.
    pub(crate) async fn cluster_layout(&self) -> Result<Vec<Master>, L2Error> {
        read_layout(
            &self.any_node_infos(),
            self.ca.as_deref(),
            self.config.timeout,
        )
        .await
    }

    /// Whether a circuit breaker is open (on a cluster: any master's).
    pub fn breaker_open(&self) -> bool {
        self.breakers.any_open()
    }

    /// The cluster masters whose breaker is open.
    pub fn open_nodes(&self) -> Vec<String> {
        self.breakers.open_nodes()
    }

    /// On a cluster, asks for its layout (which master holds which slots) for the
    /// per-master breakers: at the first call and after failures, at most once per
    /// breaker cooldown.
    fn refresh_layout(&self) {
        let Backend::Cluster { .. } = &self.backend else {
            return;
        };
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let asked = self.layout_asked_ms.load(Relaxed);
        let cooldown = u64::try_from(self.config.breaker_cooldown.as_millis()).unwrap_or(0);
        if asked != u64::MAX && now < asked.saturating_add(cooldown.max(100)) {
            return;
        }
        if self
            .layout_asked_ms
            .compare_exchange(asked, now, Relaxed, Relaxed)
            .is_err()
        {
            return;
        }
        let l2 = self.clone();
        let job: Job = Box::new(move |_| {
            Box::pin(async move {
                match l2.cluster_layout().await {
                    Ok(masters) => l2.breakers.set_layout(
                        masters
                            .into_iter()
                            .map(|(info, slots)| (info.addr.to_string(), slots))
                            .collect(),
                    ),
                    Err(e) => tracing::debug!(error = %e, "could not read the cluster's layout"),
                }
            })
        });
        let _ = self.jobs.send(job);
    }

    fn key(&self, key: &[u8]) -> Vec<u8> {
        [self.config.prefix.as_bytes(), key].concat()
    }

    /// Runs `command` on the I/O thread within `limit`, as `policy` says with respect
    /// to the breaker; the outcome feeds the breaker either way.
    async fn run<T, F>(
        &self,
        policy: Policy,
        about: Option<&[u8]>,
        limit: Duration,
        command: impl FnOnce(Connection) -> F + Send + 'static,
    ) -> Result<T, L2Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, L2Error>> + Send + 'static,
    {
        if self.layout_asked_ms.load(Relaxed) == u64::MAX {
            self.refresh_layout();
        }
        let breaker: Which = self.breakers.which(about);
        if policy == Policy::Guarded && !self.breakers.allow(&breaker, Instant::now()) {
            self.stats.skipped.fetch_add(1, Relaxed);
            return Err(L2Error::Open);
        }
        let (reply, answer) = flume::bounded(1);
        let job: Job = Box::new(move |connecting| {
            Box::pin(async move {
                // The connection attempt is bounded by the timeout on its own (and shared
                // by every caller that arrives while it runs), then the command by
                // `limit`: a caller waits at most the two, however many are queued.
                let result = match connecting.await {
                    Ok(conn) => match tokio::time::timeout(limit, command(conn)).await {
                        Ok(Err(L2Error::Timeout(_))) | Err(_) => Err(L2Error::Timeout(limit)),
                        Ok(result) => result,
                    },
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            })
        });
        let result = match self.jobs.send(job) {
            Ok(()) => answer.recv_async().await.unwrap_or(Err(L2Error::Stopped)),
            Err(_) => Err(L2Error::Stopped),
        };
        let failed = result.as_ref().err().is_some_and(L2Error::is_redis_failure);
        if failed {
            self.stats.errors.fetch_add(1, Relaxed);
            self.refresh_layout();
        }
        self.breakers.record(&breaker, !failed, Instant::now());
        result
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Envelope>, L2Error> {
        let key = self.key(key);
        let about = key.clone();
        let stored: Option<Vec<u8>> = self
            .run(
                Policy::Guarded,
                Some(&about),
                self.config.timeout,
                move |mut conn| async move { Ok(conn.get(key).await?) },
            )
            .await?;
        let found = match stored.map(|bytes| Envelope::decode(&bytes)).transpose() {
            Ok(Some(Stored::Value(envelope))) => Some(envelope),
            Ok(Some(Stored::Tombstone(_)) | None) => None,
            Err(e) => {
                self.stats.hits.fetch_add(1, Relaxed);
                return Err(e.into());
            }
        };
        let counter = if found.is_some() {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        counter.fetch_add(1, Relaxed);
        Ok(found)
    }

    /// Which write each key holds in Redis: the version of its live value, `None` for
    /// no value (absent, deleted, or unreadable). Reads only each value's header, all
    /// keys pipelined on the shared connection within one timeout.
    pub async fn versions(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Version>>, L2Error> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| self.key(k)).collect();
        let last = (HEADER_VERSION_BYTES - 1) as isize;
        self.run(
            Policy::Guarded,
            None,
            self.config.timeout,
            move |conn| async move {
                let reads = keys.into_iter().map(|key| {
                    let mut conn = conn.clone();
                    async move {
                        let head: Vec<u8> = conn.getrange(key, 0, last).await?;
                        Ok::<_, L2Error>(Envelope::live_version(&head))
                    }
                });
                futures_util::future::try_join_all(reads).await
            },
        )
        .await
    }

    /// Stores `envelope` for `ttl`, or forever, unless Redis holds a write of the key
    /// with a version at least as new (then [`Written::Superseded`]): a client's write,
    /// so attempted whatever the breaker says.
    pub async fn set(
        &self,
        key: &[u8],
        envelope: &Envelope,
        ttl: Option<Duration>,
    ) -> Result<Written, L2Error> {
        self.store(Policy::Always, key, envelope, ttl).await
    }

    /// Stores what a fill fetched from the origin, as `set` does: only a copy for the
    /// other instances, so skipped while the breaker is open.
    pub async fn store_fill(
        &self,
        key: &[u8],
        envelope: &Envelope,
        ttl: Option<Duration>,
    ) -> Result<Written, L2Error> {
        self.store(Policy::Guarded, key, envelope, ttl).await
    }

    async fn store(
        &self,
        policy: Policy,
        key: &[u8],
        envelope: &Envelope,
        ttl: Option<Duration>,
    ) -> Result<Written, L2Error> {
        let write = vec![(key.to_vec(), envelope.encode())];
        let written = self
            .keep_newer(policy, write, envelope.version, ttl)
            .await?;
        Ok(written[0])
    }

    /// Deletes keys by leaving a tombstone of the deletion's `version` for
    /// [`TOMBSTONE_TTL`] in place of each (unless a newer write is there): a write older
    /// than the deletion that reaches Redis later is refused. Returns how many keys held
    /// a value.
    pub async fn delete<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        version: Version,
    ) -> Result<usize, L2Error> {
        if keys.is_empty() {
            return Ok(0);
        }
        let tombstone = Envelope::tombstone(version);
        let writes = keys
            .iter()
            .map(|k| (k.as_ref().to_vec(), tombstone.clone()))
            .collect();
        let written = self
            .keep_newer(Policy::Always, writes, version, Some(TOMBSTONE_TTL))
            .await?;
        Ok(written
            .iter()
            .filter(|w| matches!(w, Written::Stored { replaced: true }))
            .count())
    }

    /// Runs the keep-the-newer script for each (key, stored bytes), concurrently on the
    /// shared connection (pipelined), within one timeout.
    async fn keep_newer(
        &self,
        policy: Policy,
        writes: Vec<(Vec<u8>, Vec<u8>)>,
        version: Version,
        ttl: Option<Duration>,
    ) -> Result<Vec<Written>, L2Error> {
        let writes: Vec<(Vec<u8>, Vec<u8>)> =
            writes.into_iter().map(|(k, v)| (self.key(&k), v)).collect();
        let ttl_ms = ttl.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        let version = version.hex();
        // One key's write goes through its master's breaker; several keys', the tier's.
        let about = match writes.as_slice() {
            [(key, _)] => Some(key.clone()),
            _ => None,
        };
        self.run(
            policy,
            about.as_deref(),
            self.config.timeout,
            move |conn| async move {
                let script = redis::Script::new(KEEP_NEWER);
                let calls = writes.into_iter().map(|(key, bytes)| {
                    let (mut conn, script, version) = (conn.clone(), &script, &version);
                    async move {
                        let outcome: i64 = script
                            .key(key)
                            .arg(bytes)
                            .arg(version.as_str())
                            .arg(ttl_ms)
                            .invoke_async(&mut conn)
                            .await?;
                        Ok::<_, L2Error>(match outcome {
                            -1 => Written::Superseded,
                            replaced => Written::Stored {
                                replaced: replaced == 1,
                            },
                        })
                    }
                });
                futures_util::future::try_join_all(calls).await
            },
        )
        .await
    }

    /// Deletes every key under the prefix that `pattern` (Redis glob) matches, as
    /// [`L2::delete`] does (tombstones of `version`), found by `SCAN MATCH` on every
    /// master of a cluster; returns how many held a value. Each command is bounded by the
    /// timeout; the whole scan by 100 of them.
    pub async fn delete_matching(
        &self,
        pattern: &[u8],
        version: Version,
    ) -> Result<usize, L2Error> {
        let full = [escape_glob(self.config.prefix.as_bytes()), pattern.to_vec()].concat();
        let (backend, l2) = (self.backend.clone(), self.clone());
        self.run(
            Policy::Always,
            None,
            self.config.timeout * 100,
            move |conn| async move {
                match (backend, conn) {
                    (Backend::Cluster { .. }, _) => {
                        let mut removed = 0;
                        for (master, _) in l2.cluster_layout().await? {
                            let mut node = l2.node_connection(master).await?;
                            removed += scan_and_bury(&mut node, &full, version).await?;
                        }
                        Ok(removed)
                    }
                    (_, mut conn) => Ok(scan_and_bury(&mut conn, &full, version).await?),
                }
            },
        )
        .await
    }
}

/// Hands each job the connection, or the attempt to make one. One attempt at a time runs
/// (its own task, bounded by `timeout`); jobs that arrive meanwhile share it, so a Redis
/// that is down or slow to accept costs every caller at most one connection timeout and
/// then its command's, however many are queued (connecting in each job, one after
/// another, made the last of N wait N timeouts). A failed attempt is dropped and the
/// next job starts a fresh one.
async fn serve_jobs(
    backend: Backend,
    config: ConnectionManagerConfig,
    timeout: Duration,
    tracked: Option<Tracked>,
    queue: flume::Receiver<Job>,
) {
    // Tracked connections are made per node when a command needs one.
    let mut current: Option<Connecting> = tracked.map(|tracked| {
        let ready: BoxFuture<Result<Connection, L2Error>> =
            Box::pin(async move { Ok(Connection::Tracked(tracked)) });
        ready.shared()
    });
    while let Ok(job) = queue.recv_async().await {
        if matches!(current.as_ref().and_then(Shared::peek), Some(Err(_))) {
            current = None;
        }
        let connecting = current
            .get_or_insert_with(|| connect(backend.clone(), config.clone(), timeout))
            .clone();
        tokio::spawn(job(connecting));
    }
}

/// One attempt to connect, bounded by `timeout`, running on its own task so that it
/// finishes even if every job waiting for it has given up.
fn connect(backend: Backend, config: ConnectionManagerConfig, timeout: Duration) -> Connecting {
    let attempt = tokio::spawn(async move {
        let connect = async {
            match &backend {
                Backend::Single(client) => client
                    .get_connection_manager_with_config(config)
                    .await
                    .map(Connection::Single),
                Backend::Cluster { client, .. } => {
                    client.get_async_connection().await.map(Connection::Cluster)
                }
            }
        };
        let connect = async {
            let mut connection = connect.await?;
            // Loaded now, the keep-newer script's first write is one round trip rather
            // than a refused EVALSHA and a retry (which still covers a restarted Redis).
            let _ = redis::Script::new(KEEP_NEWER)
                .prepare_invoke()
                .load_async(&mut connection)
                .await;
            Ok::<_, redis::RedisError>(connection)
        };
        match tokio::time::timeout(timeout, connect).await {
            Ok(connected) => connected.map_err(L2Error::from),
            Err(_) => Err(L2Error::Timeout(timeout)),
        }
    });
    let joined: BoxFuture<Result<Connection, L2Error>> =
        Box::pin(async move { attempt.await.unwrap_or(Err(L2Error::Stopped)) });
    joined.shared()
}

/// The connection details for one node, with the configured credentials and database.
fn node_info(config: &L2Config, url: &str) -> Result<ConnectionInfo, L2Error> {
    let mut info = url
        .into_connection_info()
        .map_err(|e| L2Error::Config(format!("{url}: {e}")))?;
    if let Some(password) = &config.password {
        info.redis.password = Some(password.clone());
    }
    if let Some(db) = config.db {
        info.redis.db = db;
    }
    Ok(info)
}

/// Escapes Redis glob metacharacters so `bytes` matches itself literally.
pub fn escape_glob(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for &b in bytes {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_escaped_for_scan_match() {
        assert_eq!(escape_glob(b"cm:"), b"cm:");
        assert_eq!(escape_glob(b"a*b?[c]\\"), b"a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn a_bad_url_is_a_configuration_error() {
        let config = L2Config {
            url: "http://nope".into(),
            tls_ca_file: None,
            cluster_nodes: Vec::new(),
            password: None,
            db: None,
            prefix: "cm:".into(),
            timeout: Duration::from_millis(100),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(1),
            tracking: false,
        };
        assert!(matches!(L2::start(config), Err(L2Error::Config(_))));
    }
}
