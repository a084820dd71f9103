//! Coherence events over Redis pub/sub: one publishing task per instance (events stamped
//! with the sender's sequence, published in order, retried with backoff) and a
//! subscription that resubscribes after every disconnect and says so. Classic pub/sub
//! reaches every node of a cluster, so any one node will do.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::StreamExt;

use crate::client::{Backend, Job, L2Error, L2};
use crate::events::{Action, Event, Sequencer};
use crate::version::Version;

/// The first and the longest wait before a failed coherence event is published again.
const PUBLISH_RETRY_MIN: Duration = Duration::from_millis(50);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(2);
/// The most events one pipeline publishes.
pub const PUBLISH_BATCH: usize = 256;

/// Sends this instance's coherence events (see [`L2::publisher`]).
#[derive(Clone, Debug)]
pub struct Publisher(flume::Sender<(Version, Action)>);

impl Publisher {
    /// Queues the event of a write with this version.
    pub fn send(&self, version: Version, action: Action) {
        let _ = self.0.send((version, action));
    }
}

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The first subscription is in place: every event published from now on arrives.
    Subscribed,
    Event(Event),
    /// The subscription was lost and is back: events may have been missed meanwhile.
    Resubscribed,
}

impl L2 {
    /// A publisher of this instance's coherence events on `channel`. One task stamps and
    /// publishes them in the order they are sent, so sequence numbers reach Redis in
    /// order (two cores publishing on their own could invert them, and the receiver would
    /// drop the later-stamped one as stale).
    ///
    /// Whatever is queued when the task is free goes in one pipeline, up to
    /// [`PUBLISH_BATCH`] events: one round trip to Redis however many writes happened
    /// meanwhile, and no wait for a timer when one event is queued alone.
    ///
    /// A failed publish is retried with backoff until Redis takes it, so an invalidation
    /// that was answered reaches the other instances as soon as Redis is back. The failed
    /// batch and the events that queue up meanwhile are collapsed to the newest: the
    /// receivers see the skipped sequence numbers as a gap and flush their L1, which
    /// covers every event skipped.
    pub fn publisher(&self, instance: &str, epoch: u64, channel: &str) -> Publisher {
        let (tx, rx) = flume::unbounded::<(Version, Action)>();
        let mut sequencer = Sequencer::new(instance, epoch);
        let mut node = AnyNode::new(self.any_node_clients(), self.config.timeout);
        let (channel, stats) = (channel.to_owned(), self.stats.clone());
        let job: Job = Box::new(move |_| {
            Box::pin(async move {
                while let Ok((version, action)) = rx.recv_async().await {
                    let mut events = vec![sequencer.stamp(version, action)];
                    events.extend(
                        rx.try_iter()
                            .take(PUBLISH_BATCH - 1)
                            .map(|(version, action)| sequencer.stamp(version, action)),
                    );
                    let mut backoff = PUBLISH_RETRY_MIN;
                    while let Err(e) = node.publish(&channel, &events).await {
                        stats.errors.fetch_add(1, Relaxed);
                        let first = events[0].seq;
                        let newest = events.pop().expect("a batch is never empty");
                        tracing::warn!(error = %e, seqs = ?(first..=newest.seq), retry_in = ?backoff, "coherence events were not published");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(PUBLISH_RETRY_MAX);
                        let newest = rx
                            .try_iter()
                            .map(|(version, newer)| sequencer.stamp(version, newer))
                            .last()
                            .unwrap_or(newest);
                        events = vec![newest];
                    }
                }
            })
        });
        let _ = self.jobs.send(job);
        Publisher(tx)
    }

    /// Clients for pub/sub: classic pub/sub reaches every node of a cluster, so any one
    /// node will do, and going to one directly keeps events flowing while other masters
    /// (and the breaker, which is for the whole tier) are down.
    fn any_node_clients(&self) -> Vec<redis::Client> {
        match &self.backend {
            Backend::Single(client) => vec![client.clone()],
            Backend::Cluster { nodes, .. } => nodes
                .iter()
                .filter_map(|n| redis::Client::open(n.clone()).ok())
                .collect(),
        }
    }

    /// Subscribes to `channel` on a connection of its own, resubscribing after every
    /// disconnect (and saying so). Undecodable messages are logged and dropped.
    pub fn subscribe(&self, channel: &str) -> flume::Receiver<Incoming> {
        let (tx, rx) = flume::unbounded();
        let clients = self.any_node_clients();
        let channel = channel.to_owned();
        let job: Job = Box::new(move |_| Box::pin(follow_channel(clients, channel, tx)));
        let _ = self.jobs.send(job);
        rx
    }
}

/// A connection to one node of several, for publishing: made when needed (within the
/// timeout), and given up for the next node after any failure.
struct AnyNode {
    clients: Vec<redis::Client>,
    next: usize,
    connection: Option<redis::aio::MultiplexedConnection>,
    timeout: Duration,
}

impl AnyNode {
    fn new(clients: Vec<redis::Client>, timeout: Duration) -> Self {
        Self {
            clients,
            next: 0,
            connection: None,
            timeout,
        }
    }

    /// Publishes `events` in order, in one pipeline.
    async fn publish(&mut self, channel: &str, events: &[Event]) -> Result<(), L2Error> {
        let timeout = self.timeout;
        let attempt = async {
            let connection = match &mut self.connection {
                Some(connection) => connection,
                None => {
                    let client = self
                        .clients
                        .get(self.next % self.clients.len().max(1))
                        .ok_or_else(|| L2Error::Config("no Redis node to publish to".into()))?;
                    let config = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(timeout)
                        .set_response_timeout(timeout);
                    self.connection.insert(
                        client
                            .get_multiplexed_async_connection_with_config(&config)
                            .await?,
                    )
                }
            };
            let mut pipeline = redis::pipe();
            for event in events {
                pipeline.publish(channel, event.encode()).ignore();
            }
            pipeline.query_async::<()>(connection).await?;
            Ok(())
        };
        // The redis crate's own response timeout reports no duration: name the limit.
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(Err(L2Error::Timeout(_))) | Err(_) => Err(L2Error::Timeout(timeout)),
            Ok(result) => result,
        };
        if result.is_err() {
            self.connection = None;
            self.next += 1;
        }
        result
    }
}

async fn follow_channel(clients: Vec<redis::Client>, channel: String, tx: flume::Sender<Incoming>) {
    let mut first = true;
    let mut backoff = Duration::from_millis(10);
    let mut attempt = 0usize;
    while !tx.is_disconnected() && !clients.is_empty() {
        let client = &clients[attempt % clients.len()];
        attempt += 1;
        let mut pubsub = match client.get_async_pubsub().await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "cannot subscribe to {channel}; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        if let Err(e) = pubsub.subscribe(&channel).await {
            tracing::warn!(error = %e, "SUBSCRIBE {channel} failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = Duration::from_millis(10);
        let news = if first {
            Incoming::Subscribed
        } else {
            Incoming::Resubscribed
        };
        if tx.send(news).is_err() {
            return;
        }
        first = false;
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            match Event::decode(message.get_payload_bytes()) {
                Ok(event) => {
                    if tx.send(Incoming::Event(event)).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable event on {channel}"),
            }
        }
        tracing::warn!("lost the subscription to {channel}; resubscribing");
    }
}
