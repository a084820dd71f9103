//! A shard's owner: the one task on its core that writes the shard. Besides the engine's
//! commands it handles read-through fills: an L1 miss asks the owner, which re-checks its
//! table, then fetches from L2 once however many requests are waiting (singleflight),
//! and stores what came back unless a write or invalidation fenced the fill meanwhile.
//! Every command that changes a key fences the fills in flight for it first, so a value
//! fetched before an invalidation is returned to the requests already waiting but never
//! stored.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use engine::router::Reply;
use engine::singleflight::{Join, SingleFlight};
use engine::{Clock, CoarseClock, Command, OwnedEntry, ShardMetrics, ShardWriter};

/// What owners receive.
#[derive(Debug)]
pub enum OwnerMessage {
    Shard(Command),
    /// An L1 miss with L2 configured.
    Fill {
        hash: u64,
        key: Vec<u8>,
        reply: Reply<Result<Filled, String>>,
    },
}

impl From<Command> for OwnerMessage {
    fn from(command: Command) -> Self {
        OwnerMessage::Shard(command)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Another request filled L1 in the meantime.
    L1,
    L2,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::L1 => "l1",
            Source::L2 => "l2",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Filled {
    pub entry: Option<OwnedEntry>,
    pub source: Source,
}

type Flights = SingleFlight<Option<OwnedEntry>, String>;

pub struct Owner {
    writer: RefCell<ShardWriter>,
    flights: Flights,
    l2: Option<l2::L2>,
    clock: CoarseClock,
    metrics: Arc<ShardMetrics>,
}

impl Owner {
    pub fn new(writer: ShardWriter, l2: Option<l2::L2>, clock: CoarseClock) -> Rc<Self> {
        let metrics = writer.metrics().clone();
        Rc::new(Self {
            writer: RefCell::new(writer),
            flights: SingleFlight::new(),
            l2,
            clock,
            metrics,
        })
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
        let now = self.clock.now_ms();
        match message {
            OwnerMessage::Shard(command) => {
                self.fence(&command);
                let mut writer = self.writer.borrow_mut();
                // Due expiries first, so they make room before CLOCK evicts anything.
                writer.expire(now);
                command.apply(&mut writer, now);
            }
            OwnerMessage::Fill { hash, key, reply } => {
                let present = self
                    .writer
                    .borrow()
                    .get_with(hash, &key, now, |e| OwnedEntry {
                        value: e.value.to_vec(),
                        cached_at_ms: e.cached_at_ms,
                        expires_at_ms: e.expires_at_ms,
                    });
                if let Some(entry) = present {
                    let _ = reply.send(Ok(Filled {
                        entry: Some(entry),
                        source: Source::L1,
                    }));
                    return;
                }
                match self.flights.join(&key) {
                    Join::Leader(fill) => {
                        let owner = self.clone();
                        glommio::spawn_local(async move {
                            let result = owner.fetch(&key).await;
                            if fill.complete(result.clone()).storable {
                                if let Ok(Some(entry)) = &result {
                                    let _ = owner.writer.borrow_mut().insert(
                                        hash,
                                        &key,
                                        &entry.value,
                                        entry.expires_at_ms,
                                        entry.cached_at_ms,
                                    );
                                }
                            }
                            let _ = reply.send(result.map(|entry| Filled {
                                entry,
                                source: Source::L2,
                            }));
                        })
                        .detach();
                    }
                    Join::Follower(waiter) => {
                        self.metrics.coalesced.incr();
                        glommio::spawn_local(async move {
                            let result = waiter.wait().await.map_err(|e| e.to_string());
                            let _ = reply.send(result.map(|entry| Filled {
                                entry,
                                source: Source::L2,
                            }));
                        })
                        .detach();
                    }
                }
            }
        }
    }

    /// Reads `key` from L2; an entry whose deadline has passed is a miss.
    async fn fetch(&self, key: &[u8]) -> Result<Option<OwnedEntry>, String> {
        let l2 = self.l2.as_ref().ok_or("no L2 is configured")?;
        let envelope = l2.get(key).await.map_err(|e| e.to_string())?;
        let now = self.clock.now_ms();
        Ok(envelope
            .filter(|e| e.expires_at_ms.is_none_or(|deadline| deadline > now))
            .map(|e| OwnedEntry {
                value: e.value,
                cached_at_ms: e.cached_at_ms,
                expires_at_ms: e.expires_at_ms,
            }))
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
