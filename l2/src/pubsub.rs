//! Publishing coherence events over Redis pub/sub, on the instance's event [`Streams`]:
//! one publishing task per instance, fed by a bounded, coalescing [`Outbox`]. Following
//! them is `subscribe.rs`.
//!
//! On a single Redis (or a cluster without sharded pub/sub) the one stream is published
//! with PUBLISH on any node. On a Redis 7 cluster each stream is a shard channel,
//! published with SPUBLISH straight to the master that holds its slot.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, Value};

use crate::client::{Backend, Job, L2};
use crate::error::L2Error;
use crate::events::{Action, Event, Key, Sequencer};
use crate::nodes::master_of;
use crate::outbox::{Outbox, OutboxStats};
use crate::streams::Streams;
use crate::version::Version;

/// The first and the longest wait before a failed publish or subscription is retried.
pub(crate) const RETRY_MIN: Duration = Duration::from_millis(50);
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(2);
/// The most events one pipeline publishes on one stream.
pub const PUBLISH_BATCH: usize = 256;

/// Makes a key action (set, delete, refresh) of some keys.
type KeyAction = fn(Vec<Key>) -> Action;

/// Sends this instance's coherence events (see [`L2::publisher`]).
#[derive(Clone)]
pub struct Publisher {
    outbox: Arc<Mutex<Outbox>>,
    wake: Arc<tokio::sync::Notify>,
    streams: Streams,
    /// False under client tracking, where Redis itself tells the instances that hold a
    /// key: only patterns and flushes are published.
    key_events: bool,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("streams", &self.streams.count())
            .finish()
    }
}

impl Publisher {
    /// Queues the event of a write with this version: key events on their keys' streams,
    /// a pattern on every stream (it may cover keys of any).
    pub fn send(&self, version: Version, action: Action) {
        {
            let mut outbox = self.outbox.lock().expect("outbox lock");
            let (make, keys): (KeyAction, Vec<Key>) = match action {
                Action::Set { .. } | Action::Delete { .. } | Action::Refresh { .. }
                    if !self.key_events =>
                {
                    return
                }
                Action::Set { keys } => (|keys| Action::Set { keys }, keys),
                Action::Delete { keys } => (|keys| Action::Delete { keys }, keys),
                Action::Refresh { keys } => (|keys| Action::Refresh { keys }, keys),
                whole @ (Action::InvalidatePattern { .. } | Action::Flush) => {
                    for stream in self.streams.all() {
                        outbox.push(stream, version, whole.clone());
                    }
                    drop(outbox);
                    self.wake.notify_one();
                    return;
                }
            };
            let mut per_stream: HashMap<u16, Vec<Key>> = HashMap::new();
            for key in keys {
                let stream = key.bytes().map_or(0, |b| self.streams.of_key(&b));
                per_stream.entry(stream).or_default().push(key);
            }
            for (stream, keys) in per_stream {
                outbox.push(stream, version, make(keys));
            }
        }
        self.wake.notify_one();
    }

    pub fn stats(&self) -> OutboxStats {
        self.outbox.lock().expect("outbox lock").stats()
    }

    pub fn streams(&self) -> &Streams {
        &self.streams
    }
}

impl L2 {
    /// The event streams for `channel`: shard channels on a cluster whose nodes know
    /// SPUBLISH (Redis 7), else the one channel. Asks the cluster (within the timeout);
    /// a cluster that cannot be asked is taken to be Redis 7, as a warning says.
    pub fn event_streams(&self, channel: &str) -> Streams {
        // Under client tracking the channel carries only patterns and flushes.
        let (Backend::Cluster { .. }, false) = (&self.backend, self.config.tracking) else {
            return Streams::single(channel);
        };
        let (reply, answer) = flume::bounded(1);
        let job: Job = Box::new(move |connecting| {
            Box::pin(async move {
                let probe = async {
                    let mut conn = connecting.await?;
                    let info: Value = redis::cmd("COMMAND")
                        .arg("INFO")
                        .arg("SPUBLISH")
                        .query_async(&mut conn)
                        .await?;
                    Ok::<_, L2Error>(
                        matches!(info, Value::Array(ref items) if items.iter().any(|i| *i != Value::Nil)),
                    )
                };
                let _ = reply.send(probe.await);
            })
        });
        let known = self
            .jobs
            .send(job)
            .ok()
            .and_then(|()| answer.recv_timeout(self.config.timeout * 4).ok());
        match known {
            Some(Ok(false)) => {
                tracing::warn!("the Redis cluster has no sharded pub/sub (SPUBLISH, Redis 7): coherence events use PUBLISH, which every node relays");
                Streams::single(channel)
            }
            Some(Ok(true)) => Streams::sharded(channel, &self.config.prefix),
            failed => {
                let error = failed.and_then(Result::err).unwrap_or(L2Error::Stopped);
                tracing::warn!(error = %error, "could not ask the Redis cluster whether it has sharded pub/sub; using it (Redis 7)");
                Streams::sharded(channel, &self.config.prefix)
            }
        }
    }

    /// A publisher of this instance's coherence events on `streams`, holding at most
    /// `queue` pending events per stream. One task stamps and publishes them in the order
    /// they were queued (two cores publishing on their own could invert sequence numbers,
    /// and the receiver would drop the later-stamped one as stale).
    ///
    /// Whatever is queued when a stream is free goes in one pipeline, up to
    /// [`PUBLISH_BATCH`] events: one round trip however many writes happened meanwhile,
    /// and no timer when one event is queued alone. Streams publish concurrently.
    ///
    /// A failed publish is retried, the same events with the same sequence numbers, with
    /// backoff, until Redis takes it: receivers see no gap, only (at worst) duplicates,
    /// which they drop. Meanwhile new events coalesce in the outbox, and if it fills,
    /// one flush event replaces what it held.
    pub fn publisher(
        &self,
        instance: &str,
        epoch: u64,
        streams: Streams,
        queue: usize,
    ) -> Publisher {
        let publisher = Publisher {
            outbox: Arc::new(Mutex::new(Outbox::new(streams.count(), queue))),
            wake: Arc::new(tokio::sync::Notify::new()),
            streams,
            key_events: !self.config.tracking,
        };
        let sequencer = Sequencer::new(instance, epoch);
        let target = match publisher.streams.is_sharded() {
            true => Target::Masters(Box::new(Masters::new(
                self.clone(),
                publisher.streams.clone(),
            ))),
            false => Target::AnyNode(AnyNode::new(self.any_node_infos())),
        };
        let task = publish_task(publisher.clone(), sequencer, target, self.clone());
        let job: Job = Box::new(move |_| Box::pin(task));
        let _ = self.jobs.send(job);
        publisher
    }
}

/// Where the publishing task publishes.
enum Target {
    /// The one channel, on any node.
    AnyNode(AnyNode),
    /// Shard channels, each on its master, over direct connections (going through the
    /// redis crate's cluster connection measured several milliseconds slower).
    Masters(Box<Masters>),
}

/// How a stream will be published: on a connection there is, or on one to make (made by
/// the publish itself, so that a node slow to accept holds up only its own streams).
enum Link {
    Ready(MultiplexedConnection),
    Make(ConnectionInfo),
}

impl Target {
    /// How `stream` is published now (reading the cluster's layout if it is not known).
    async fn link(&mut self, stream: u16) -> Result<Link, L2Error> {
        match self {
            Target::AnyNode(node) => node.link(),
            Target::Masters(masters) => masters.link(stream).await,
        }
    }

    /// Keeps a connection a publish made, for the next ones.
    fn adopt(&mut self, info: &ConnectionInfo, connection: MultiplexedConnection) {
        match self {
            Target::AnyNode(node) => node.connection = Some(connection),
            Target::Masters(masters) => {
                masters
                    .connections
                    .insert(info.addr.to_string(), connection);
            }
        }
    }

    /// After `stream` failed: the next publish makes a new connection (to the next node,
    /// or to the master the cluster's layout names then).
    fn give_up(&mut self, stream: u16) {
        match self {
            Target::AnyNode(node) => node.give_up(),
            Target::Masters(masters) => masters.give_up(stream),
        }
    }

    fn command(&self) -> &'static str {
        match self {
            Target::AnyNode(_) => "PUBLISH",
            Target::Masters(_) => "SPUBLISH",
        }
    }
}

/// Connections to the masters that hold the shard channels, from the cluster's layout
/// (read again after any failure).
struct Masters {
    l2: L2,
    streams: Streams,
    /// Each stream's master, once the layout is known.
    owners: Option<Vec<Option<ConnectionInfo>>>,
    connections: HashMap<String, MultiplexedConnection>,
}

impl Masters {
    fn new(l2: L2, streams: Streams) -> Self {
        Self {
            l2,
            streams,
            owners: None,
            connections: HashMap::new(),
        }
    }

    async fn link(&mut self, stream: u16) -> Result<Link, L2Error> {
        if self.owners.is_none() {
            let masters = self.l2.cluster_layout().await?;
            self.owners = Some(
                self.streams
                    .all()
                    .into_iter()
                    .map(|s| master_of(&masters, self.streams.channel(s).as_bytes()).cloned())
                    .collect(),
            );
        }
        let info = self
            .owners
            .as_ref()
            .and_then(|owners| owners[usize::from(stream)].clone())
            .ok_or_else(|| {
                self.owners = None;
                L2Error::Redis(format!("no master holds the slot of event stream {stream}"))
            })?;
        Ok(match self.connections.get(&info.addr.to_string()) {
            Some(connection) => Link::Ready(connection.clone()),
            None => Link::Make(info),
        })
    }

    fn give_up(&mut self, stream: u16) {
        if let Some(Some(info)) = self.owners.as_ref().map(|o| &o[usize::from(stream)]) {
            self.connections.remove(&info.addr.to_string());
        }
        self.owners = None;
    }
}

/// Publishes one stream's `events` in order, in one pipeline, within the timeout.
async fn publish_on(
    mut connection: MultiplexedConnection,
    command: &str,
    channel: &str,
    events: &[Event],
    timeout: Duration,
) -> Result<(), L2Error> {
    let mut pipeline = redis::pipe();
    for event in events {
        pipeline
            .cmd(command)
            .arg(channel)
            .arg(event.encode())
            .ignore();
    }
    let attempt = async { Ok::<_, L2Error>(pipeline.query_async::<()>(&mut connection).await?) };
    // The redis crate's own response timeout reports no duration: name the limit.
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Err(L2Error::Timeout(_))) | Err(_) => Err(L2Error::Timeout(timeout)),
        Ok(result) => result,
    }
}

/// One stream's publishing state.
struct Lane {
    /// Stamped events being published (kept, with their sequence numbers, until Redis
    /// takes them).
    in_flight: Vec<Event>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

async fn publish_task(publisher: Publisher, mut sequencer: Sequencer, mut target: Target, l2: L2) {
    let streams = publisher.streams.clone();
    let mut lanes: Vec<Lane> = streams
        .all()
        .iter()
        .map(|_| Lane {
            in_flight: Vec::new(),
            retry_at: None,
            backoff: RETRY_MIN,
        })
        .collect();
    let timeout = l2.config.timeout;
    loop {
        let now = Instant::now();
        {
            let mut outbox = publisher.outbox.lock().expect("outbox lock");
            for (stream, lane) in lanes.iter_mut().enumerate() {
                if lane.in_flight.is_empty() {
                    let stream = stream as u16;
                    lane.in_flight = outbox
                        .take(stream, PUBLISH_BATCH)
                        .into_iter()
                        .map(|(version, action)| sequencer.stamp(stream, version, action))
                        .collect();
                }
            }
        }
        let ready: Vec<usize> = lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| {
                !lane.in_flight.is_empty() && lane.retry_at.is_none_or(|at| at <= now)
            })
            .map(|(i, _)| i)
            .collect();
        if ready.is_empty() {
            let next_retry = lanes.iter().filter_map(|lane| lane.retry_at).min();
            match next_retry {
                Some(at) => {
                    let _ = tokio::time::timeout_at(at.into(), publisher.wake.notified()).await;
                }
                None => publisher.wake.notified().await,
            }
            continue;
        }
        // Every ready stream at once: one round trip for all of them, each making its
        // connection first if it has none.
        let mut sends = Vec::with_capacity(ready.len());
        for &i in &ready {
            let link = target.link(i as u16).await;
            let (command, lane, channel) = (target.command(), &lanes[i], streams.channel(i as u16));
            let l2 = &l2;
            sends.push(async move {
                let (connection, made) = match link? {
                    Link::Ready(connection) => (connection, None),
                    Link::Make(info) => {
                        let made = tokio::time::timeout(timeout, l2.node_connection(info.clone()));
                        let connection = made.await.map_err(|_| L2Error::Timeout(timeout))??;
                        (connection.clone(), Some((info, connection)))
                    }
                };
                publish_on(connection, command, channel, &lane.in_flight, timeout).await?;
                Ok::<_, L2Error>(made)
            });
        }
        let outcomes = futures_util::future::join_all(sends).await;
        let mut results = Vec::with_capacity(outcomes.len());
        for (&i, outcome) in ready.iter().zip(outcomes) {
            match outcome {
                Ok(made) => {
                    if let Some((info, connection)) = made {
                        target.adopt(&info, connection);
                    }
                    results.push(Ok(()));
                }
                Err(e) => {
                    target.give_up(i as u16);
                    results.push(Err(e));
                }
            }
        }
        for (i, result) in ready.into_iter().zip(results) {
            let lane = &mut lanes[i];
            match result {
                Ok(()) => {
                    lane.in_flight.clear();
                    lane.retry_at = None;
                    lane.backoff = RETRY_MIN;
                }
                Err(e) => {
                    l2.stats.errors.fetch_add(1, Relaxed);
                    let (first, last) = (
                        lane.in_flight[0].seq,
                        lane.in_flight[lane.in_flight.len() - 1].seq,
                    );
                    tracing::warn!(error = %e, stream = i, seqs = ?(first..=last), retry_in = ?lane.backoff, "coherence events were not published");
                    lane.retry_at = Some(Instant::now() + lane.backoff);
                    lane.backoff = (lane.backoff * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

/// A connection to one node of several, for publishing: made when needed, and given up
/// for the next node after any failure.
struct AnyNode {
    nodes: Vec<ConnectionInfo>,
    next: usize,
    connection: Option<MultiplexedConnection>,
}

impl AnyNode {
    fn new(nodes: Vec<ConnectionInfo>) -> Self {
        Self {
            nodes,
            next: 0,
            connection: None,
        }
    }

    fn link(&self) -> Result<Link, L2Error> {
        if let Some(connection) = &self.connection {
            return Ok(Link::Ready(connection.clone()));
        }
        let info = self
            .nodes
            .get(self.next % self.nodes.len().max(1))
            .ok_or_else(|| L2Error::Config("no Redis node to publish to".into()))?;
        Ok(Link::Make(info.clone()))
    }

    fn give_up(&mut self) {
        self.connection = None;
        self.next += 1;
    }
}
