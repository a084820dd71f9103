//! Coherence events over Redis pub/sub, on the instance's event [`Streams`]: one
//! publishing task per instance, fed by a bounded, coalescing [`Outbox`], and a
//! subscription that resubscribes after every loss and says which streams it lost.
//!
//! On a single Redis (or a cluster without sharded pub/sub) the one stream is published
//! with PUBLISH on any node. On a Redis 7 cluster each stream is a shard channel:
//! published with SPUBLISH through the cluster connection (which routes it to the
//! channel's master), and followed with one RESP3 SSUBSCRIBE connection per master,
//! moved to the new owner after a failover or a slot migration.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, PushKind, Value};

use crate::client::{Backend, Job, L2};
use crate::error::L2Error;
use crate::events::{Action, Event, Incoming, Key, Sequencer};
use crate::nodes::{read_layout, Master};
use crate::outbox::{Outbox, OutboxStats};
use crate::streams::Streams;
use crate::version::Version;

/// How long a subscriber that lost a channel waits for the others a failover takes.
const SETTLE: Duration = Duration::from_millis(20);
/// How often a subscriber compares the masters it follows with the cluster's layout.
const LAYOUT_CHECK: Duration = Duration::from_secs(1);
/// The first and the longest wait before a failed publish or subscription is retried.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);
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

    /// The nodes to reach one of: the server, or every seed of a cluster.
    fn any_node_infos(&self) -> Vec<ConnectionInfo> {
        match &self.backend {
            Backend::Single(client) => vec![client.get_connection_info().clone()],
            Backend::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    /// Follows `streams`, resubscribing after every loss (and saying which streams it
    /// lost). Undecodable messages are logged and dropped.
    pub fn subscribe(&self, streams: &Streams) -> flume::Receiver<Incoming> {
        let (tx, rx) = flume::unbounded();
        if self.config.tracking {
            *self.tracking_sink.lock().expect("sink lock") = Some(tx.clone());
        }
        let (l2, streams) = (self.clone(), streams.clone());
        let job: Job = Box::new(move |_| {
            Box::pin(async move {
                if streams.is_sharded() {
                    follow_shards(l2, streams, tx).await
                } else {
                    follow_channel(l2, streams, tx).await
                }
            })
        });
        let _ = self.jobs.send(job);
        rx
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
                    .map(|s| {
                        let slot =
                            redis::cluster_routing::get_slot(self.streams.channel(s).as_bytes());
                        masters
                            .iter()
                            .find(|(_, ranges)| ranges.iter().any(|r| r.contains(&slot)))
                            .map(|(info, _)| info.clone())
                    })
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

/// Follows the one channel on any node, resubscribing after every disconnect.
async fn follow_channel(l2: L2, streams: Streams, tx: flume::Sender<Incoming>) {
    let nodes = l2.any_node_infos();
    let channel = streams.channel(0).to_owned();
    let mut first = true;
    let mut backoff = RETRY_MIN;
    let mut attempt = 0usize;
    while !tx.is_disconnected() && !nodes.is_empty() {
        let info = nodes[attempt % nodes.len()].clone();
        attempt += 1;
        let subscribed = async {
            let mut pubsub = l2.node_client(info)?.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, L2Error>(pubsub)
        };
        let mut pubsub = match subscribed.await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to {channel}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        };
        backoff = RETRY_MIN;
        let news = if first {
            Incoming::Subscribed
        } else {
            Incoming::Resubscribed {
                streams: streams.all(),
            }
        };
        if tx.send(news).is_err() {
            return;
        }
        first = false;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            if !forward(message.get_payload_bytes(), &channel, &tx) {
                return;
            }
        }
        tracing::warn!("lost the subscription to {channel}; resubscribing");
    }
}

/// Decodes one message and passes it on; false once nobody listens.
fn forward(payload: &[u8], channel: &str, tx: &flume::Sender<Incoming>) -> bool {
    match Event::decode(payload) {
        Ok(event) => tx.send(Incoming::Event(event)).is_ok(),
        Err(e) => {
            tracing::warn!(error = %e, "dropping an undecodable event on {channel}");
            true
        }
    }
}

/// One SSUBSCRIBE connection, to one master.
struct ShardLink {
    address: String,
    /// Kept so the connection stays open; pushes arrive on the shared channel.
    _connection: MultiplexedConnection,
    streams: Vec<u16>,
}

/// Follows every shard channel: one RESP3 connection per master holding some, each
/// subscribed to that master's channels. A disconnect loses the connection's streams, a
/// server-sent SUNSUBSCRIBE (its slot moved) loses one; lost streams are looked up again
/// in the cluster's current layout and subscribed where they now live, and reported.
async fn follow_shards(l2: L2, streams: Streams, tx: flume::Sender<Incoming>) {
    let (pushes, mut incoming) = tokio::sync::mpsc::unbounded_channel::<(u64, redis::PushInfo)>();
    let mut links: HashMap<u64, ShardLink> = HashMap::new();
    let mut next_link = 0u64;
    let mut lost: Vec<u16> = streams.all();
    let mut subscribed_once = false;
    let mut backoff = RETRY_MIN;
    while !tx.is_disconnected() {
        if !lost.is_empty() {
            match resubscribe(
                &l2,
                &streams,
                &mut lost,
                &mut links,
                &mut next_link,
                &pushes,
            )
            .await
            {
                Ok(regained) if !regained.is_empty() => {
                    backoff = RETRY_MIN;
                    let news = if !subscribed_once && lost.is_empty() {
                        subscribed_once = true;
                        Some(Incoming::Subscribed)
                    } else if subscribed_once {
                        Some(Incoming::Resubscribed { streams: regained })
                    } else {
                        None
                    };
                    if news.is_some_and(|news| tx.send(news).is_err()) {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, lost = ?lost, "cannot subscribe to the shard channels yet; retrying")
                }
            }
        }
        let push = if lost.is_empty() {
            match tokio::time::timeout(LAYOUT_CHECK, incoming.recv()).await {
                Ok(push) => push,
                Err(_) => {
                    moved_streams(&l2, &streams, &mut links, &mut lost).await;
                    continue;
                }
            }
        } else {
            match tokio::time::timeout(backoff, incoming.recv()).await {
                Ok(push) => push,
                Err(_) => {
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            }
        };
        let Some(mut push) = push else { return };
        loop {
            let was_lost = lost.len();
            if !take_push(push, &streams, &mut links, &mut lost, &tx) {
                return;
            }
            // A failover unsubscribes several channels at once: gather what arrives
            // together, so that they are subscribed again (and flushed) together.
            let wait = if lost.len() > was_lost {
                SETTLE
            } else {
                Duration::ZERO
            };
            match tokio::time::timeout(wait, incoming.recv()).await {
                Ok(Some(next)) => push = next,
                Ok(None) => return,
                Err(_) => break,
            }
        }
    }
}

/// What one push from a shard connection means: a message is passed on, a
/// server-sent SUNSUBSCRIBE (its slot moved) loses that stream, a disconnection loses
/// the connection's streams. False once nobody listens.
fn take_push(
    (link, push): (u64, redis::PushInfo),
    streams: &Streams,
    links: &mut HashMap<u64, ShardLink>,
    lost: &mut Vec<u16>,
    tx: &flume::Sender<Incoming>,
) -> bool {
    match push.kind {
        PushKind::SMessage => {
            if let [_, Value::BulkString(bytes)] = push.data.as_slice() {
                return forward(bytes, "a shard channel", tx);
            }
        }
        PushKind::SUnsubscribe => {
            let stream = match push.data.first() {
                Some(Value::BulkString(name)) => streams.of_channel(name),
                _ => None,
            };
            if let (Some(stream), Some(shard)) = (stream, links.get_mut(&link)) {
                if let Some(at) = shard.streams.iter().position(|s| *s == stream) {
                    tracing::warn!(stream, node = %shard.address, "a shard channel moved (slot migration or failover); resubscribing");
                    shard.streams.remove(at);
                    lost.push(stream);
                }
            }
        }
        PushKind::Disconnection => {
            if let Some(shard) = links.remove(&link) {
                tracing::warn!(node = %shard.address, streams = ?shard.streams, "lost the shard channel subscription; resubscribing");
                lost.extend(shard.streams);
            }
        }
        _ => {}
    }
    true
}

/// Streams whose channel's slot is now held by another master than the one followed
/// (a failover or a slot migration the server did not announce with SUNSUBSCRIBE) are
/// moved to `lost`, to be subscribed where they live now.
async fn moved_streams(
    l2: &L2,
    streams: &Streams,
    links: &mut HashMap<u64, ShardLink>,
    lost: &mut Vec<u16>,
) {
    let Ok(masters) = l2.cluster_layout().await else {
        return;
    };
    let owner = |stream: u16| {
        let slot = redis::cluster_routing::get_slot(streams.channel(stream).as_bytes());
        masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|r| r.contains(&slot)))
            .map(|(info, _)| info.addr.to_string())
    };
    for link in links.values_mut() {
        let (moved, kept): (Vec<u16>, Vec<u16>) = link
            .streams
            .iter()
            .partition(|s| owner(**s).is_some_and(|a| a != link.address));
        if !moved.is_empty() {
            tracing::warn!(node = %link.address, streams = ?moved, "shard channels moved to another master; resubscribing");
            link.streams = kept;
            lost.extend(moved);
        }
    }
    links.retain(|_, link| !link.streams.is_empty());
}

/// Subscribes the `lost` streams on the masters that hold them now; returns the streams
/// regained (and leaves in `lost` those whose master cannot be reached yet).
async fn resubscribe(
    l2: &L2,
    streams: &Streams,
    lost: &mut Vec<u16>,
    links: &mut HashMap<u64, ShardLink>,
    next_link: &mut u64,
    pushes: &tokio::sync::mpsc::UnboundedSender<(u64, redis::PushInfo)>,
) -> Result<Vec<u16>, L2Error> {
    let masters = l2.cluster_layout().await?;
    let mut regained = Vec::new();
    let mut by_master: HashMap<String, (ConnectionInfo, Vec<u16>)> = HashMap::new();
    for &stream in lost.iter() {
        let slot = redis::cluster_routing::get_slot(streams.channel(stream).as_bytes());
        if let Some((info, _)) = masters
            .iter()
            .find(|(_, ranges)| ranges.iter().any(|r| r.contains(&slot)))
        {
            by_master
                .entry(info.addr.to_string())
                .or_insert_with(|| (info.clone(), Vec::new()))
                .1
                .push(stream);
        }
    }
    for (address, (info, wanted)) in by_master {
        let id = *next_link;
        *next_link += 1;
        let sender = pushes.clone();
        let push_sender = move |push: redis::PushInfo| sender.send((id, push));
        let link = async {
            let mut connection = l2.node_subscription(info, push_sender).await?;
            // One channel per command: a RESP3 SSUBSCRIBE of several channels answers
            // with one push each, and the connection matches one reply per command.
            for &stream in &wanted {
                redis::cmd("SSUBSCRIBE")
                    .arg(streams.channel(stream))
                    .exec_async(&mut connection)
                    .await?;
            }
            Ok::<_, L2Error>(connection)
        };
        match tokio::time::timeout(l2.config.timeout * 4, link).await {
            Ok(Ok(connection)) => {
                lost.retain(|s| !wanted.contains(s));
                regained.extend(&wanted);
                links.insert(
                    id,
                    ShardLink {
                        address,
                        _connection: connection,
                        streams: wanted,
                    },
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, node = %address, "cannot subscribe to its shard channels yet")
            }
            Err(_) => {
                tracing::warn!(node = %address, "subscribing to its shard channels timed out")
            }
        }
    }
    regained.sort_unstable();
    Ok(regained)
}

impl L2 {
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
}
