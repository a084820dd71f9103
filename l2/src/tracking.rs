//! Coherence by server-assisted client-side caching (`CACHE_COHERENCE=tracking`).
//!
//! Every L2 command goes over a RESP3 connection to the node that holds its key, with
//! `CLIENT TRACKING ON NOLOOP`: Redis remembers the keys this instance read (a GET, a
//! version read, and every keep-newer write, whose script ends with a read for this) and
//! sends an `invalidate` push when another client changes one. So an instance hears only
//! of keys it holds, where pub/sub sends every instance every write. NOLOOP keeps an
//! instance's own writes from coming back to it.
//!
//! A lost connection loses its node's tracking without a word from Redis, so it is
//! reported ([`Incoming::TrackingLost`]) and the receiver flushes L1; the next command
//! makes a new connection with tracking on. On a cluster, commands are routed by their
//! key's slot from the cluster's layout, read again after a MOVED or a failure; keyless
//! commands (a script load after NOSCRIPT) go where the handle's last command went.
//! Written here because the redis crate's own cluster connection offers no hook to turn
//! tracking on for the connections it makes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{Arg, Cmd, ConnectionInfo, ErrorKind, Pipeline, PushKind, RedisFuture, Value};

use crate::error::L2Error;
use crate::events::Incoming;
use crate::keep_newer::KEEP_NEWER;
use crate::nodes::{at, client_for, master_of, read_layout, Master};

/// A handle to the tracked connections; cheap to clone (each clone remembers its last
/// node).
#[derive(Clone)]
pub(crate) struct Tracked {
    inner: Arc<Inner>,
    last: Option<String>,
}

struct Inner {
    seeds: Vec<ConnectionInfo>,
    cluster: bool,
    ca: Option<Arc<Vec<u8>>>,
    timeout: Duration,
    state: tokio::sync::Mutex<State>,
    pushes: tokio::sync::mpsc::UnboundedSender<(String, u64, redis::PushInfo)>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct State {
    /// Per node address: the connection and its number (pushes carry it, so that the
    /// end of a replaced connection does not remove its successor).
    connections: HashMap<String, (u64, MultiplexedConnection)>,
    layout: Option<Vec<Master>>,
}

impl Tracked {
    /// Tracked connections to `seeds` (one server, or a cluster's seeds), whose
    /// invalidations go to `sink` without the key `prefix`. Must be called on the L2
    /// thread's runtime: it starts the task that passes them on.
    pub(crate) fn new(
        seeds: Vec<ConnectionInfo>,
        cluster: bool,
        ca: Option<Arc<Vec<u8>>>,
        timeout: Duration,
        prefix: &str,
        sink: Arc<Mutex<Option<flume::Sender<Incoming>>>>,
    ) -> Self {
        let (pushes, incoming) = tokio::sync::mpsc::unbounded_channel();
        let prefix = prefix.as_bytes().to_vec();
        let inner = Arc::new(Inner {
            seeds,
            cluster,
            ca,
            timeout,
            state: tokio::sync::Mutex::new(State::default()),
            pushes,
            next_id: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(pass_on(incoming, Arc::downgrade(&inner), prefix, sink));
        Self { inner, last: None }
    }

    /// The connection for a command about `key` (or, without one, the last node's), or
    /// to the node a MOVED named (`redirect`, `host:port`).
    async fn connection(
        &mut self,
        key: Option<&[u8]>,
        redirect: Option<&str>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let redirected = redirect.and_then(|target| {
            let (host, port) = target.rsplit_once(':')?;
            let mut info = inner.seeds.first()?.clone();
            info.addr = at(&info.addr, host, port.parse().ok()?);
            Some(info)
        });
        let info = if let Some(info) = redirected {
            info
        } else if inner.cluster {
            if state.layout.is_none() {
                let layout = read_layout(&inner.seeds, inner.ca.as_deref(), inner.timeout)
                    .await
                    .map_err(to_redis)?;
                // A node that is no longer a master (a failover) may not tell of changes
                // to what it tracked: its connection goes, reported as lost.
                let masters: Vec<String> = layout.iter().map(|(i, _)| i.addr.to_string()).collect();
                let gone: Vec<String> = state
                    .connections
                    .keys()
                    .filter(|a| !masters.contains(a))
                    .cloned()
                    .collect();
                for address in gone {
                    if let Some((id, _)) = state.connections.remove(&address) {
                        let lost = redis::PushInfo {
                            kind: PushKind::Disconnection,
                            data: Vec::new(),
                        };
                        let _ = inner.pushes.send((address, id, lost));
                    }
                }
                state.layout = Some(layout);
            }
            let layout = state.layout.as_ref().expect("just read");
            let by_key = key.and_then(|key| master_of(layout, key)).cloned();
            let by_last = || {
                let last = self.last.as_ref()?;
                layout
                    .iter()
                    .find(|(info, _)| info.addr.to_string() == *last)
                    .map(|(info, _)| info.clone())
            };
            by_key
                .or_else(by_last)
                .or_else(|| layout.first().map(|(info, _)| info.clone()))
                .ok_or_else(|| to_redis(L2Error::Redis("the cluster has no master".into())))?
        } else {
            inner
                .seeds
                .first()
                .cloned()
                .ok_or_else(|| to_redis(L2Error::Config("no Redis node".into())))?
        };
        let address = info.addr.to_string();
        self.last = Some(address.clone());
        if let Some((_, connection)) = state.connections.get(&address) {
            return Ok(connection.clone());
        }
        let id = inner
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let connection = inner.connect(info, address.clone(), id).await?;
        state.connections.insert(address, (id, connection.clone()));
        Ok(connection)
    }

    /// After a failure: a MOVED or ASK means the layout changed (the command is sent
    /// again to the node it names), a dropped connection that it is gone (its
    /// disconnection is reported when its driver ends; the command is sent again on a new
    /// one). A timeout is not retried: the connection may be fine and the command may
    /// have run. `None`: do not retry; `Some(redirect)`: retry, there if given.
    async fn forget(&self, e: &redis::RedisError) -> Option<Option<String>> {
        let mut state = self.inner.state.lock().await;
        if let Some((target, _)) = e.redirect_node() {
            state.layout = None;
            return Some(Some(target.to_owned()));
        }
        if e.is_connection_dropped() || (e.kind() == ErrorKind::IoError && !e.is_timeout()) {
            state.layout = None;
            if let Some(last) = &self.last {
                state.connections.remove(last);
            }
            return Some(None);
        }
        None
    }
}

impl Inner {
    /// A RESP3 connection to one node with tracking on and the keep-newer script loaded.
    async fn connect(
        &self,
        mut info: ConnectionInfo,
        address: String,
        id: u64,
    ) -> redis::RedisResult<MultiplexedConnection> {
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        let pushes = self.pushes.clone();
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.timeout)
            .set_response_timeout(self.timeout)
            .set_push_sender(move |push| pushes.send((address.clone(), id, push)));
        let client = client_for(info, self.ca.as_deref().map(Vec::as_slice)).map_err(to_redis)?;
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("NOLOOP")
            .exec_async(&mut connection)
            .await?;
        redis::Script::new(KEEP_NEWER)
            .prepare_invoke()
            .load_async(&mut connection)
            .await?;
        Ok(connection)
    }
}

/// Passes invalidations on to the subscriber, keys without the L2 prefix; a lost
/// connection (or Redis forgetting what it tracked) as [`Incoming::TrackingLost`].
async fn pass_on(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<(String, u64, redis::PushInfo)>,
    inner: std::sync::Weak<Inner>,
    prefix: Vec<u8>,
    sink: Arc<Mutex<Option<flume::Sender<Incoming>>>>,
) {
    while let Some((address, id, push)) = incoming.recv().await {
        let news = match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => Incoming::Invalidated {
                    keys: keys
                        .iter()
                        .filter_map(|k| match k {
                            Value::BulkString(key) => {
                                key.strip_prefix(prefix.as_slice()).map(<[u8]>::to_vec)
                            }
                            _ => None,
                        })
                        .collect(),
                },
                // A null list: Redis dropped its whole tracking table (FLUSHALL).
                _ => Incoming::TrackingLost,
            },
            PushKind::Disconnection => {
                if let Some(inner) = inner.upgrade() {
                    let mut state = inner.state.lock().await;
                    if state
                        .connections
                        .get(&address)
                        .is_some_and(|(c, _)| *c == id)
                    {
                        state.connections.remove(&address);
                    }
                }
                tracing::warn!(node = %address, "lost a tracked Redis connection: its invalidations may be lost");
                Incoming::TrackingLost
            }
            _ => continue,
        };
        let sink = sink.lock().expect("sink lock").clone();
        if let Some(sink) = sink {
            let _ = sink.send(news);
        }
    }
}

fn to_redis(e: L2Error) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::IoError, "L2", e.to_string()))
}

/// The key a command is about: the first key of a script call, else its first argument
/// (GET, GETRANGE, SET…); none for keyless commands.
fn command_key(cmd: &Cmd) -> Option<Vec<u8>> {
    let args: Vec<&[u8]> = cmd
        .args_iter()
        .filter_map(|a| match a {
            Arg::Simple(bytes) => Some(bytes),
            Arg::Cursor => None,
        })
        .collect();
    let name = args.first()?.to_ascii_uppercase();
    match name.as_slice() {
        b"EVAL" | b"EVALSHA" => match args.get(2) {
            Some(n) if *n != b"0" => args.get(3).map(|k| k.to_vec()),
            _ => None,
        },
        b"SCRIPT" | b"PING" | b"CLIENT" | b"SCAN" | b"CLUSTER" | b"INFO" | b"COMMAND" => None,
        _ => args.get(1).map(|k| k.to_vec()),
    }
}

/// A MOVED or ASK among a command's replies, as an error. The redis crate passes a
/// server's error replies on as values (they become errors when converted), so the
/// redirections a cluster answers with must be looked for there.
fn moved(replies: &[Value]) -> Option<redis::RedisError> {
    replies
        .iter()
        .filter(|v| matches!(v, Value::ServerError(_)))
        .find_map(|v| v.clone().extract_error().err())
        .filter(|e| e.redirect_node().is_some())
}

/// How many times a command is sent at most: a failover can take two redirections (the
/// old master, then a layout not yet updated) before the command lands.
const ATTEMPTS: usize = 3;

impl ConnectionLike for Tracked {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let key = command_key(cmd);
            let mut redirect = None;
            for _ in 1..ATTEMPTS {
                let mut connection = self.connection(key.as_deref(), redirect.as_deref()).await?;
                let sent = connection.req_packed_command(cmd).await;
                match sent.and_then(|v| moved(std::slice::from_ref(&v)).map_or(Ok(v), Err)) {
                    Err(e) => match self.forget(&e).await {
                        Some(next) => redirect = next,
                        None => return Err(e),
                    },
                    done => return done,
                }
            }
            let mut connection = self.connection(key.as_deref(), redirect.as_deref()).await?;
            connection.req_packed_command(cmd).await
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let key = pipeline.cmd_iter().find_map(command_key);
            let mut redirect = None;
            for _ in 1..ATTEMPTS {
                let mut connection = self.connection(key.as_deref(), redirect.as_deref()).await?;
                match connection
                    .req_packed_commands(pipeline, offset, count)
                    .await
                {
                    Err(e) => match self.forget(&e).await {
                        Some(next) => redirect = next,
                        None => return Err(e),
                    },
                    done => return done,
                }
            }
            let mut connection = self.connection(key.as_deref(), redirect.as_deref()).await?;
            connection
                .req_packed_commands(pipeline, offset, count)
                .await
        })
    }

    fn get_db(&self) -> i64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_routed_by_their_key() {
        assert_eq!(
            command_key(redis::cmd("GET").arg("cm:a")),
            Some(b"cm:a".to_vec())
        );
        assert_eq!(
            command_key(redis::cmd("GETRANGE").arg("cm:b").arg(0).arg(18)),
            Some(b"cm:b".to_vec())
        );
        let script = redis::cmd("EVALSHA")
            .arg("abc")
            .arg(1)
            .arg("cm:c")
            .arg("v")
            .clone();
        assert_eq!(command_key(&script), Some(b"cm:c".to_vec()));
        assert_eq!(command_key(redis::cmd("EVAL").arg("return 1").arg(0)), None);
        assert_eq!(command_key(redis::cmd("SCRIPT").arg("LOAD").arg("x")), None);
        assert_eq!(command_key(redis::cmd("SCAN").arg(0)), None);
    }
}
