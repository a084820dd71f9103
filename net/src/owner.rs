//! A shard's owner: the one task on its core that writes the shard. Besides the engine's
//! commands it handles read-through fills: an L1 miss asks the owner, which re-checks its
//! table, then fetches from L2 and else from the origin, once however many requests are
//! waiting (singleflight), and stores what came back (in L1, and an origin value in L2
//! too) unless a write or invalidation fenced the fill meanwhile.
//! Every command that changes a key fences the fills in flight for it first, so a value
//! fetched before an invalidation is returned to the requests already waiting but never
//! stored.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use engine::router::Reply;
use engine::singleflight::{Fill, FlightError, Join, SingleFlight};
use engine::{Clock, Command, OwnedEntry, ShardMetrics, ShardWriter};
use l2::{Action, Envelope, Key};

use crate::core::Shared;
use crate::origin::Fetched;
use crate::stored;

/// What owners receive.
#[derive(Debug)]
pub enum OwnerMessage {
    Shard(Command),
    /// Fetch `key` from the tiers behind L1 (L2 or an origin must be configured).
    Fill {
        hash: u64,
        key: Vec<u8>,
        mode: FillMode,
        reply: Reply<Result<Filled, FillError>>,
    },
}

impl From<Command> for OwnerMessage {
    fn from(command: Command) -> Self {
        OwnerMessage::Shard(command)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FillMode {
    /// An L1 miss: the owner re-checks its table first.
    Miss,
    /// A stale L1 hit was served: fetch a fresh copy (L2, then the origin) in the
    /// background, at most one at a time per key.
    Revalidate,
    /// `POST /api/cache/refresh`: straight to the origin, superseding any fill in flight.
    Refresh,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    L1,
    L2,
    Origin,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
            Source::Origin => "origin",
        }
    }
}

/// What a fill found.
#[derive(Clone, Debug)]
pub enum Filled {
    Hit {
        entry: OwnedEntry,
        source: Source,
    },
    /// Nowhere: not in L2, and the origin (if any) said 404.
    Absent,
}

/// Why a fill failed, with the status the client should get.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FillError {
    pub status: u16,
    pub message: String,
}

type Flights = SingleFlight<Filled, FillError>;

pub struct Owner {
    writer: RefCell<ShardWriter>,
    flights: Flights,
    shared: Arc<Shared>,
    metrics: Arc<ShardMetrics>,
}

impl Owner {
    pub fn new(writer: ShardWriter, shared: Arc<Shared>) -> Rc<Self> {
        let metrics = writer.metrics().clone();
        Rc::new(Self {
            writer: RefCell::new(writer),
            flights: SingleFlight::new(),
            shared,
            metrics,
        })
    }

    fn now(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    /// Serves the mailbox until every sender is gone, draining what is queued before it
    /// waits again.
    pub async fn run(self: Rc<Self>, mailbox: flume::Receiver<OwnerMessage>, depth: usize) {
        while let Ok(message) = mailbox.recv_async().await {
            self.handle(message);
            for message in mailbox.try_iter().take(depth) {
                self.handle(message);
            }
        }
    }

    fn handle(self: &Rc<Self>, message: OwnerMessage) {
        let now = self.now();
        match message {
            OwnerMessage::Shard(command) => {
                self.fence(&command);
                let mut writer = self.writer.borrow_mut();
                // Due expiries first, so they make room before CLOCK evicts anything.
                writer.expire(now);
                command.apply(&mut writer, now);
            }
            OwnerMessage::Fill {
                hash,
                key,
                mode,
                reply,
            } => {
                if mode == FillMode::Refresh {
                    self.flights.fence(&key);
                }
                let present = if mode != FillMode::Miss {
                    None
                } else {
                    self.writer
                        .borrow()
                        .get_with(hash, &key, now, |e| OwnedEntry {
                            value: e.value.to_vec(),
                            cached_at_ms: e.cached_at_ms,
                            expires_at_ms: e.expires_at_ms,
                            stale: e.stale,
                        })
                };
                if let Some(entry) = present {
                    let filled = if stored::is_absent(&entry.value) {
                        Filled::Absent
                    } else {
                        Filled::Hit {
                            entry,
                            source: Source::L1,
                        }
                    };
                    let _ = reply.send(Ok(filled));
                    return;
                }
                match self.flights.join(&key) {
                    Join::Leader(fill) => {
                        let owner = self.clone();
                        glommio::spawn_local(async move {
                            let result = owner.fetch(&key, mode == FillMode::Refresh).await;
                            owner
                                .write_through(&key, &result, &fill, mode == FillMode::Refresh)
                                .await;
                            if fill.complete(result.clone()).storable {
                                owner.store(hash, &key, &result);
                            }
                            let _ = reply.send(result);
                        })
                        .detach();
                    }
                    Join::Follower(waiter) => {
                        self.metrics.coalesced.incr();
                        glommio::spawn_local(async move {
                            let result = waiter.wait().await.map_err(|e| match e {
                                FlightError::Failed(e) => e,
                                FlightError::Abandoned => FillError {
                                    status: 503,
                                    message: "the fill this request waited on was abandoned".into(),
                                },
                            });
                            let _ = reply.send(result);
                        })
                        .detach();
                    }
                }
            }
        }
    }

    /// L2 first, then the origin. An entry whose deadline has passed is a miss; an L2
    /// failure falls through to the origin.
    async fn fetch(&self, key: &[u8], origin_only: bool) -> Result<Filled, FillError> {
        let mut l2_trouble = None;
        if let Some(tier) = self.shared.l2.as_ref().filter(|_| !origin_only) {
            match tier.client.get(key).await {
                Ok(Some(e)) if e.expires_at_ms.is_none_or(|deadline| deadline > self.now()) => {
                    let entry = OwnedEntry {
                        value: e.value,
                        cached_at_ms: e.cached_at_ms,
                        expires_at_ms: e.expires_at_ms,
                        stale: false,
                    };
                    return Ok(Filled::Hit {
                        entry,
                        source: Source::L2,
                    });
                }
                Ok(_) => {}
                Err(e) => l2_trouble = Some(e.to_string()),
            }
        }
        let Some(origin) = &self.shared.origin else {
            return match l2_trouble {
                Some(trouble) => Err(FillError {
                    status: 404,
                    message: format!("not in L1, and L2 could not be read: {trouble}"),
                }),
                None => Ok(Filled::Absent),
            };
        };
        self.shared.origin_fetches.incr();
        match origin.fetch(key).await {
            Ok(Fetched::Found { body, json }) => {
                let tag = if json
                    && serde_json::from_slice::<&serde_json::value::RawValue>(&body).is_ok()
                {
                    stored::JSON
                } else {
                    stored::BYTES
                };
                let now = self.now();
                let ttl = self.shared.config.default_ttl();
                let entry = OwnedEntry {
                    value: stored::tagged(tag, &body),
                    cached_at_ms: now,
                    expires_at_ms: ttl.map(|t| engine::deadline_ms(now, t)),
                    stale: false,
                };
                Ok(Filled::Hit {
                    entry,
                    source: Source::Origin,
                })
            }
            Ok(Fetched::NotFound) => Ok(Filled::Absent),
            Err(e) => {
                self.shared.origin_errors.incr();
                Err(FillError {
                    status: 502,
                    message: e.to_string(),
                })
            }
        }
    }

    /// Writes an origin fill to L2 (and tells the other instances), unless the fill was
    /// fenced; a fence that lands while the write is in flight takes the write back.
    async fn write_through(
        &self,
        key: &[u8],
        result: &Result<Filled, FillError>,
        fill: &Fill<Filled, FillError>,
        refresh: bool,
    ) {
        let (
            Ok(Filled::Hit {
                entry,
                source: Source::Origin,
            }),
            Some(tier),
        ) = (result, &self.shared.l2)
        else {
            return;
        };
        if fill.is_fenced() {
            return;
        }
        let envelope = Envelope {
            value: entry.value.clone(),
            cached_at_ms: entry.cached_at_ms,
            expires_at_ms: entry.expires_at_ms,
        };
        let ttl = self.shared.config.default_ttl();
        // A refresh is a client's command, so its write is attempted even with the
        // breaker open; a plain fill only offers a copy to the other instances.
        let stored = if refresh {
            tier.client.set(key, &envelope, ttl).await
        } else {
            tier.client.store_fill(key, &envelope, ttl).await
        };
        if stored.is_ok() {
            if fill.is_fenced() {
                let _ = tier.client.delete(&[key]).await;
            } else {
                let keys = vec![Key::new(key)];
                tier.publisher.send(if refresh {
                    Action::Refresh { keys }
                } else {
                    Action::Set { keys }
                });
            }
        }
    }

    /// Keeps what a fill found in L1: the entry, or the origin's 404 for CACHE_NEGATIVE_TTL.
    fn store(&self, hash: u64, key: &[u8], result: &Result<Filled, FillError>) {
        let mut writer = self.writer.borrow_mut();
        match result {
            Ok(Filled::Hit { entry, source }) if *source != Source::L1 => {
                let _ = writer.insert(
                    hash,
                    key,
                    &entry.value,
                    entry.expires_at_ms,
                    entry.cached_at_ms,
                );
            }
            Ok(Filled::Absent)
                if self.shared.config.negative_ttl > 0 && self.shared.origin.is_some() =>
            {
                let now = self.now();
                let until = engine::deadline_ms(now, self.shared.config.negative_ttl());
                let _ = writer.insert(hash, key, &[stored::ABSENT], Some(until), now);
            }
            _ => {}
        }
    }

    fn fence(&self, command: &Command) {
        match command {
            Command::Set { key, .. } | Command::Delete { key, .. } => {
                self.flights.fence(key);
            }
            Command::InvalidateKeys { keys, .. } => {
                for (_, key) in keys {
                    self.flights.fence(key);
                }
            }
            Command::InvalidatePattern { pattern, .. } => {
                self.flights.fence_where(|key| pattern.matches(key));
            }
            Command::Flush { .. } => {
                self.flights.fence_where(|_| true);
            }
            Command::Lookup { .. } | Command::Expire { .. } => {}
        }
    }
}
