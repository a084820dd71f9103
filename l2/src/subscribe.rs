//! Following coherence events: the one channel on any node, or on a Redis 7 cluster
//! every shard channel, with one RESP3 SSUBSCRIBE connection per master, moved to the
//! new owner after a failover or a slot migration. Every loss is reported with the
//! streams it concerns, once they are followed again, so that the receiver flushes only
//! their keys.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{ConnectionInfo, PushKind, Value};

use crate::client::{Job, L2};
use crate::error::L2Error;
use crate::events::{Event, Incoming};
use crate::nodes::master_of;
use crate::pubsub::{RETRY_MAX, RETRY_MIN};
use crate::streams::Streams;

/// How long a subscriber that lost a channel waits for the others a failover takes.
const SETTLE: Duration = Duration::from_millis(20);
/// How often a subscriber compares the masters it follows with the cluster's layout.
const LAYOUT_CHECK: Duration = Duration::from_secs(1);

impl L2 {
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
        master_of(&masters, streams.channel(stream).as_bytes()).map(|info| info.addr.to_string())
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
        if let Some(info) = master_of(&masters, streams.channel(stream).as_bytes()) {
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
