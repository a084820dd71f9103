//! A shard's owner: the one task on its core that writes the shard. Besides the engine's
//! commands it handles read-through fills: an L1 miss asks the owner, which re-checks its
//! table, then fetches from L2 and else from the origin, once however many requests are
//! waiting (singleflight), and stores what came back (in L1, and an origin value in L2
//! too) unless a write or invalidation fenced the fill meanwhile.
//! Every command that changes a key fences the fills in flight for it first, so a value
//! fetched before an invalidation is returned to the requests already waiting but never
//! stored.
//!
//! A client's PUT and DELETE reach L1 here, in the order the owner takes them, each with
//! a version from the instance's clock; the owner then hands the L2 part and the event
//! to `tiers.rs` and answers once L2 has. Events from other instances drop only entries
//! older than their version.
//!
//! Due expiries run here too: a bounded share before each write, and the rest, when many
//! entries reach their TTL together, in short turns between other work (`expire_due`).
//! Pattern invalidations and flushes also run in such turns (`remove_in_turns`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use engine::router::Reply;
use engine::singleflight::{Fill, FlightError, Join, SingleFlight};
use engine::{
    Command, OwnedEntry, Removal, Removed, SavedEntry, ShardMetrics, ShardWriter, Sweep,
    EXPIRY_PER_WRITE, SWEEP_STEP,
};
use l2::{Envelope, Version};
use monoio::task::JoinHandle;

use crate::core::Shared;
use crate::messages::{
    DeleteOutcome, FillError, FillMode, Filled, OwnerMessage, PutOutcome, Restored, Source,
};
use crate::origin::Fetched;
use crate::runtime::Budget;
use crate::snapshot::{BlockBuilder, Part};
use crate::stored::{self, Kept};

type Flights = SingleFlight<Filled, FillError>;

/// Entries a snapshot step saves before the owner serves again (a block of the file).
const SAVE_STEP: usize = 1024;
/// Restored entries confirmed against L2 in one pipelined round.
const CONFIRM_STEP: usize = 256;
/// How long [`Owner::expire_due`] and [`Owner::remove_in_turns`] work before they let
/// the core serve (`Budget`).
const TURN: Duration = Duration::from_micros(100);

/// Whether a fill that waited on an abandoned flight may fill again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rejoin {
    Once,
    Never,
}

pub struct Owner {
    writer: RefCell<ShardWriter>,
    /// Whether [`Owner::expire_due`] is running.
    expiring: Cell<bool>,
    flights: Flights,
    shared: Arc<Shared>,
    metrics: Arc<ShardMetrics>,
}

impl Owner {
    pub fn new(writer: ShardWriter, shared: Arc<Shared>) -> Rc<Self> {
        let metrics = writer.metrics().clone();
        Rc::new(Self {
            writer: RefCell::new(writer),
            expiring: Cell::new(false),
            flights: SingleFlight::new(),
            shared,
            metrics,
        })
    }

    /// The time, brought up to date: a message may arrive after the server was idle.
    fn now(&self) -> u64 {
        self.shared.clock.tick()
    }

    /// What L1 keeps the version of an entry cached at `cached_at_ms` relative to.
    fn origin(&self, cached_at_ms: u64) -> stored::Origin {
        self.shared.tiers.origin(cached_at_ms)
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
            OwnerMessage::Put {
                hash,
                key,
                value,
                ttl,
                reply,
            } => self.put(hash, key, value, ttl, reply, now),
            OwnerMessage::Delete { hash, key, reply } => self.delete(hash, key, reply, now),
            OwnerMessage::DropOlder { keys, reply } => {
                let mut dropped = 0;
                for (hash, key, version) in keys {
                    dropped += usize::from(self.drop_older(hash, &key, version, now));
                }
                let _ = reply.send(dropped);
            }
            OwnerMessage::Save { parts, reply } => {
                monoio::spawn(self.clone().save(parts, reply));
            }
            OwnerMessage::Restore {
                entries,
                check_delay,
                reply,
            } => {
                monoio::spawn(self.clone().restore(entries, check_delay, reply));
            }
            OwnerMessage::Shard(command) => {
                self.fence(&command);
                let mut writer = self.writer.borrow_mut();
                self.expire_before_write(&mut writer, now);
                match command {
                    // Begun here, before the next message, so that it removes what the
                    // shard holds now and spares what later messages write.
                    Command::Remove(removal) => {
                        let sweep = writer.begin_sweep();
                        monoio::spawn(self.clone().remove_in_turns(removal, sweep));
                    }
                    command => command.apply(&mut writer, now),
                }
            }
            OwnerMessage::Expire { reply } => match self.start_expiry() {
                Some(expiry) => {
                    monoio::spawn(async move {
                        let _ = reply.send(expiry.await);
                    });
                }
                None => {
                    let _ = reply.send(0);
                }
            },
            OwnerMessage::Fill {
                hash,
                key,
                mode,
                reply,
            } => self.fill(hash, key, mode, reply, now, Rejoin::Once),
        }
    }

    /// Answers a fill from L1 if the entry is there (a miss may have raced a write), else
    /// leads or joins the key's flight. A follower whose flight is abandoned (a restored
    /// entry L2 did not confirm, or a leader that went away) fills again, once.
    fn fill(
        self: &Rc<Self>,
        hash: u64,
        key: Vec<u8>,
        mode: FillMode,
        reply: Reply<Result<Filled, FillError>>,
        now: u64,
        rejoin: Rejoin,
    ) {
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
                    flags: e.flags,
                    cached_at_ms: e.cached_at_ms,
                    expires_at_ms: e.expires_at_ms,
                    stale: e.stale,
                })
        };
        if let Some(entry) = present {
            let filled = if Kept::from(&entry).is_absent() {
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
                monoio::spawn(async move {
                    let result = owner.fetch(&key, mode == FillMode::Refresh).await;
                    let l2_agrees = owner
                        .write_through(&key, &result, &fill, mode == FillMode::Refresh)
                        .await;
                    if fill.complete(result.clone()).storable && l2_agrees {
                        owner.store(hash, &key, &result);
                    }
                    let _ = reply.send(result);
                });
            }
            Join::Follower(waiter) => {
                self.metrics.coalesced.incr();
                let owner = self.clone();
                monoio::spawn(async move {
                    let result = match waiter.wait().await {
                        Ok(filled) => Ok(filled),
                        Err(FlightError::Failed(e)) => Err(e),
                        Err(FlightError::Abandoned) if rejoin == Rejoin::Once => {
                            let now = owner.now();
                            owner.fill(hash, key, mode, reply, now, Rejoin::Never);
                            return;
                        }
                        Err(FlightError::Abandoned) => Err(FillError {
                            status: 503,
                            message: "the fills this request waited on were abandoned twice".into(),
                        }),
                    };
                    let _ = reply.send(result);
                });
            }
        }
    }

    /// L2 first, then the origin. An entry whose deadline has passed is a miss; an L2
    /// failure falls through to the origin.
    async fn fetch(&self, key: &[u8], origin_only: bool) -> Result<Filled, FillError> {
        let mut l2_trouble = None;
        if let Some(tier) = self.shared.tiers.l2.as_ref().filter(|_| !origin_only) {
            match tier.client.get(key).await {
                Ok(Some(e)) if e.expires_at_ms.is_none_or(|deadline| deadline > self.now()) => {
                    // A later write here must be newer than the one just read.
                    self.shared.tiers.observe(e.version);
                    let l1 = stored::in_l1(&e.value, e.version, self.origin(e.cached_at_ms));
                    let entry = OwnedEntry {
                        value: l1.bytes,
                        flags: l1.flags,
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
                let version = self.shared.tiers.next_version(now);
                let l1 = stored::in_l1(&stored::tagged(tag, &body), version, self.origin(now));
                let entry = OwnedEntry {
                    value: l1.bytes,
                    flags: l1.flags,
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
    /// fenced; a fence that lands while the write is in flight takes the write back. Says
    /// whether L1 may keep the value (not when L2 holds a newer write of the key).
    async fn write_through(
        &self,
        key: &[u8],
        result: &Result<Filled, FillError>,
        fill: &Fill<Filled, FillError>,
        refresh: bool,
    ) -> bool {
        let Ok(Filled::Hit {
            entry,
            source: Source::Origin,
        }) = result
        else {
            return true;
        };
        if fill.is_fenced() {
            return true;
        }
        let version = Kept::from(entry).version(self.origin(entry.cached_at_ms));
        let envelope = Envelope {
            value: Kept::from(entry).tagged(),
            cached_at_ms: entry.cached_at_ms,
            expires_at_ms: entry.expires_at_ms,
            version,
        };
        let ttl = self.shared.config.default_ttl();
        let tiers = &self.shared.tiers;
        let l2_agrees = tiers.fill_to_l2(key, &envelope, ttl, refresh).await;
        if l2_agrees && fill.is_fenced() {
            // An invalidation overtook this fill while its copy was on the way to L2 (a
            // write or deletion would have superseded it there): take the copy back out,
            // as a deletion newer than anything this instance has seen, and say so.
            let version = tiers.next_version(self.now());
            let _ = tiers.delete_behind_l1(&[key], version).await;
        }
        l2_agrees
    }

    /// A client's PUT: stored in L1 with a new version, then handed to the tiers.
    fn put(
        self: &Rc<Self>,
        hash: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        ttl: Option<std::time::Duration>,
        reply: Reply<PutOutcome>,
        now: u64,
    ) {
        self.flights.fence(&key);
        let version = self.shared.tiers.next_version(now);
        let expires_at_ms = ttl.map(|t| engine::deadline_ms(now, t));
        let l1 = {
            let mut writer = self.writer.borrow_mut();
            self.expire_before_write(&mut writer, now);
            let l1 = stored::in_l1(&value, version, self.origin(now));
            writer.insert_flagged(hash, &key, l1.flags, &l1.bytes, expires_at_ms, now)
        };
        if l1.is_err() || self.shared.tiers.l2.is_none() {
            let _ = reply.send(PutOutcome { l1, l2: None });
            return;
        }
        let owner = self.clone();
        monoio::spawn(async move {
            let envelope = Envelope {
                value,
                cached_at_ms: now,
                expires_at_ms,
                version,
            };
            let l2 = owner.shared.tiers.put_behind_l1(&key, &envelope, ttl).await;
            if let Some(Ok(l2::Written::Superseded)) = l2 {
                // Another instance's newer write is in L2: this one must not outlive it
                // here either.
                owner.drop_version(hash, &key, version);
            } else {
                // What the others do on this write's event (an evicted entry refilled
                // from L2 before the write landed must not outlive it).
                owner.drop_older(hash, &key, version, owner.now());
            }
            let _ = reply.send(PutOutcome { l1, l2 });
        });
    }

    /// A client's DELETE: removed from L1, then from L2 with a new version.
    fn delete(self: &Rc<Self>, hash: u64, key: Vec<u8>, reply: Reply<DeleteOutcome>, now: u64) {
        self.flights.fence(&key);
        let version = self.shared.tiers.next_version(now);
        let l1 = self.writer.borrow_mut().remove(hash, &key, now);
        if self.shared.tiers.l2.is_none() {
            let _ = reply.send(DeleteOutcome { l1, l2: None });
            return;
        }
        let owner = self.clone();
        monoio::spawn(async move {
            let l2 = owner.shared.tiers.delete_behind_l1(&[&key], version).await;
            // What the others do on this deletion's event: a read that missed L1 after the
            // removal may have filled the old value from L2 before the tombstone landed.
            owner.drop_older(hash, &key, version, owner.now());
            let _ = reply.send(DeleteOutcome { l1, l2 });
        });
    }

    /// Saves the shard in steps of [`SAVE_STEP`] entries, serving in between.
    async fn save(self: Rc<Self>, parts: flume::Sender<Part>, reply: Reply<()>) {
        let mut from = Some(0);
        let mut budget = crate::runtime::Budget::new();
        while let Some(slot) = from {
            let mut block = BlockBuilder::default();
            from = self.writer.borrow().save(slot, SAVE_STEP, self.now(), |e| {
                // A snapshot keeps versions whole (`stored::portable`).
                let kept = Kept::from(&e).portable(self.origin(e.cached_at_ms));
                block.push(&SavedEntry {
                    value: &kept,
                    flags: 0,
                    ..e
                })
            });
            let entries = block.entries();
            if entries > 0 {
                let bytes = block.finish();
                if parts
                    .send_async(Part::Block { bytes, entries })
                    .await
                    .is_err()
                {
                    // The file could not be written; nothing more to send.
                    return;
                }
            }
            // A timed save shares the core with the connections; the shutdown's comes after
            // the last of them closed, and runs flat out.
            if !self.shared.shutdown.is_triggered() {
                budget.spend().await;
            }
        }
        let _ = parts.send_async(Part::Done).await;
        let _ = reply.send(());
    }

    /// Keeps the restored entries whose write L2 still holds (see
    /// [`OwnerMessage::Restore`]). Each key's check is a fill: an event or flush for the
    /// key while L2 is asked fences it, and a fenced check stores nothing.
    async fn restore(
        self: Rc<Self>,
        entries: Vec<Restored>,
        check_delay: Duration,
        reply: Reply<usize>,
    ) {
        let Some(tier) = &self.shared.tiers.l2 else {
            let _ = reply.send(0);
            return;
        };
        let mut kept = 0;
        for (round, step) in entries.chunks(CONFIRM_STEP).enumerate() {
            let checks: Vec<_> = step
                .iter()
                .filter_map(|e| match self.flights.join(&e.key) {
                    Join::Leader(fill) => Some((e, fill)),
                    Join::Follower(_) => None,
                })
                .collect();
            let keys: Vec<Vec<u8>> = checks.iter().map(|(e, _)| e.key.clone()).collect();
            if round == 0 && !check_delay.is_zero() {
                tracing::info!(
                    keys = keys.len(),
                    delay_ms = check_delay.as_millis() as u64,
                    "fault: the first check of restored entries waits"
                );
                monoio::time::sleep(check_delay).await;
            }
            let held = match tier.client.versions(&keys).await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot confirm restored entries with L2; dropping them");
                    vec![None; keys.len()]
                }
            };
            for ((entry, fill), held) in checks.into_iter().zip(held) {
                let confirmed =
                    held == Some(entry.value.kept().version(self.origin(entry.cached_at_ms)));
                if !confirmed {
                    // Abandoned: a read that waited on the check fills the key again, from
                    // L2, as any read of a dropped entry would.
                    drop(fill);
                    continue;
                }
                // This instance's own copy, confirmed: a read that waited on the check is
                // served it as from L1, where it is about to be.
                let restored = Filled::Hit {
                    entry: OwnedEntry {
                        value: entry.value.bytes.clone(),
                        flags: entry.value.flags,
                        cached_at_ms: entry.cached_at_ms,
                        expires_at_ms: entry.expires_at_ms,
                        stale: false,
                    },
                    source: Source::L1,
                };
                if fill.complete(Ok(restored)).storable {
                    let mut writer = self.writer.borrow_mut();
                    if writer.restore(entry.hash, entry.saved()).is_ok() {
                        kept += 1;
                    }
                }
            }
        }
        let _ = reply.send(kept);
    }

    /// Removes `key` if L1 holds a write older than `version` (any write, for the version
    /// of an instance from before versions, 0), and fences its fills in flight: a write or
    /// deletion with `version` is in L2 now, whether another instance's (its event) or this
    /// one's (its L2 part done). Says whether an entry was removed.
    fn drop_older(&self, hash: u64, key: &[u8], version: Version, now: u64) -> bool {
        self.flights.fence(key);
        let mut writer = self.writer.borrow_mut();
        let held = writer.get_with(hash, key, now, |e| {
            Kept::from(&e).version(self.origin(e.cached_at_ms))
        });
        held.is_some_and(|held| held < version || version == Version::ZERO)
            && writer.remove(hash, key, now)
    }

    /// Removes `key` if L1 still holds the write with `version`.
    fn drop_version(&self, hash: u64, key: &[u8], version: Version) {
        let now = self.now();
        let mut writer = self.writer.borrow_mut();
        if writer.get_with(hash, key, now, |e| {
            Kept::from(&e).version(self.origin(e.cached_at_ms))
        }) == Some(version)
        {
            writer.remove(hash, key, now);
        }
    }

    /// Keeps what a fill found in L1: the entry, or the origin's 404 for CACHE_NEGATIVE_TTL.
    fn store(&self, hash: u64, key: &[u8], result: &Result<Filled, FillError>) {
        let mut writer = self.writer.borrow_mut();
        match result {
            Ok(Filled::Hit { entry, source }) if *source != Source::L1 => {
                let _ = writer.insert_flagged(
                    hash,
                    key,
                    entry.flags,
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
                let absent = stored::in_l1(&[stored::ABSENT], Version::ZERO, self.origin(now));
                let _ =
                    writer.insert_flagged(hash, key, absent.flags, &absent.bytes, Some(until), now);
            }
            _ => {}
        }
    }

    /// A write's share of the due expiries ([`EXPIRY_PER_WRITE`]); what is left, after
    /// many entries reached their TTL together, goes to [`Owner::expire_due`].
    fn expire_before_write(self: &Rc<Self>, writer: &mut ShardWriter, now: u64) {
        if !writer.expire_some(now, EXPIRY_PER_WRITE).done {
            // Its handle is dropped: the task runs on, detached.
            let _ = self.start_expiry();
        }
    }

    /// Starts [`Self::expire_due`], unless it is running already.
    fn start_expiry(self: &Rc<Self>) -> Option<JoinHandle<usize>> {
        (!self.expiring.replace(true)).then(|| monoio::spawn(self.clone().expire_due()))
    }

    /// Expires everything due, [`EXPIRY_PER_WRITE`] records at a time, letting the core
    /// serve every [`TURN`]: when many entries reach their TTL together, the whole
    /// of it would hold the core for tens of milliseconds (BENCHMARKS.md, "Expiry
    /// pauses"). Reads treat an expired entry as absent meanwhile. Answers how many
    /// expired.
    async fn expire_due(self: Rc<Self>) -> usize {
        let mut budget = Budget::with_slice(TURN);
        let mut expired = 0;
        loop {
            let step = self
                .writer
                .borrow_mut()
                .expire_some(self.now(), EXPIRY_PER_WRITE);
            expired += step.expired;
            if step.done {
                break;
            }
            budget.spend().await;
        }
        self.expiring.set(false);
        expired
    }

    /// Carries out a pattern invalidation or a flush in steps of [`SWEEP_STEP`] slots,
    /// letting the core serve every [`TURN`]: done whole, removing a million entries
    /// would hold it for 0.3 s (BENCHMARKS.md, "Invalidations in steps"). Writes between
    /// the steps are kept (`engine`'s `shard/sweep.rs`); reads meanwhile may still find
    /// keys the removal has yet to reach, as they would on another core. Answers once
    /// every step is done.
    async fn remove_in_turns(self: Rc<Self>, removal: Removal, mut sweep: Sweep) {
        let mut budget = Budget::with_slice(TURN);
        let mut removed = Removed::default();
        loop {
            let swept = self
                .writer
                .borrow_mut()
                .sweep_some(sweep, SWEEP_STEP, self.now(), |key| removal.picks(key));
            removed += swept.removed;
            match swept.unfinished {
                Some(rest) => sweep = rest,
                None => break,
            }
            budget.spend().await;
        }
        removal.answer(removed);
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
            Command::Remove(removal) => {
                self.flights.fence_where(|key| removal.picks(key));
            }
            Command::Lookup { .. } => {}
        }
    }
}
