//! Warm restarts (CACHE_SNAPSHOT_PATH). L1 is saved to its snapshot after the drain on
//! SIGTERM/SIGINT, and every CACHE_SNAPSHOT_INTERVAL while serving; it is loaded back
//! before the cores accept connections.
//!
//! Saving: core 0 starts a thread that writes the file (`snapshot::write_parts`) and
//! asks every owner for its shard; each owner sends blocks of entries in steps, serving
//! between them, so a timed snapshot does not pause the service. The file replaces the
//! previous one only when every shard is in it.
//!
//! Loading: entries that expired meanwhile, or that break this run's limits, are
//! skipped; the rest go to the shard this run's router picks (the core count may have
//! changed), with the standing they were saved with, and the shard's policy decides what
//! stays if the bounds shrank.
//!
//! With L2 an instance that was down missed the other instances' events, so a loaded
//! entry is never served on its own word: its owner keeps it only if L2 still holds the
//! very write it came from (the version in its L1 form), asked once the events
//! subscription is in place. Each check runs as a fill of its key, so an event or flush
//! for the key that arrives while L2 is asked fences it and nothing is stored: a write
//! that reached L2 before the check is seen by the check, and one after it by its event.
//! Entries L2 does not confirm (overwritten, deleted, evicted there, or L2 unreachable)
//! are dropped and filled from L2 on their next read. Negative entries, which L2 does
//! not hold, are not restored with L2.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Router, SavedEntry, ShardWriter};
use l2::{Version, VersionClock};

use crate::config::Config;
use crate::core::Shared;
use crate::messages::{OwnerMessage, Restored};
use crate::snapshot::{self, Header, RawBlock, SnapshotError, Written};
use crate::stored::{self, Kept, Origin};

/// How long the cores wait for the events subscription before they give up confirming
/// restored entries (and drop them).
const SUBSCRIPTION_WAIT: Duration = Duration::from_secs(5);

/// What loading the snapshot found, beyond what went straight into the shards.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per shard, the entries its owner must confirm with L2 before keeping them.
    pub to_confirm: Vec<Vec<Restored>>,
    /// Entries put straight into the shards (L1 only).
    pub restored: usize,
}

/// Blocks read ahead of the slowest shard's restoring thread.
const BLOCKS_IN_FLIGHT: usize = 8;

/// Loads the snapshot, if one is configured and present: into `writers` when there is
/// no L2, else set aside for the owners to confirm. The file is read on this thread
/// while one thread per shard checks every block and restores the block's entries that
/// belong to its shard, so loading runs at the disk's speed rather than one core's.
/// Never fails: a snapshot that cannot be used is logged and the start is cold.
pub fn load(
    config: &Config,
    router: &Router,
    versions: &VersionClock,
    writers: &mut [ShardWriter],
    now_ms: u64,
) -> Loaded {
    let mut loaded = Loaded {
        to_confirm: (0..writers.len()).map(|_| Vec::new()).collect(),
        restored: 0,
    };
    let Some(path) = &config.snapshot_path else {
        return loaded;
    };
    let started = Instant::now();
    let (mut file, size) = match snapshot::open(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => {
            tracing::info!(path = %path.display(), "no snapshot yet: starting cold");
            return loaded;
        }
        Err(e) => {
            tracing::error!(error = %e, "snapshot refused: starting cold");
            return loaded;
        }
    };
    let (scan, shards) = std::thread::scope(|s| {
        let mut feeds = Vec::with_capacity(writers.len());
        let mut workers = Vec::with_capacity(writers.len());
        for (shard, writer) in writers.iter_mut().enumerate() {
            let (feed, blocks) = flume::bounded::<Arc<RawBlock>>(BLOCKS_IN_FLIGHT);
            feeds.push(feed);
            let restore = ShardRestore {
                shard,
                config,
                router,
                versions,
                now_ms,
            };
            let worker = std::thread::Builder::new()
                .name(format!("restore-{shard}"))
                .spawn_scoped(s, move || restore.run(writer, blocks))
                .expect("a thread to restore a shard");
            workers.push(worker);
        }
        let scan = snapshot::scan(&mut file, size, path, |block| {
            let block = Arc::new(block);
            for feed in &feeds {
                let _ = feed.send(block.clone());
            }
        });
        drop(feeds);
        let shards: Vec<ShardLoaded> = workers
            .into_iter()
            .map(|w| w.join().expect("a restoring thread does not panic"))
            .collect();
        (scan, shards)
    });
    let scan = match scan {
        Ok(scan) => scan,
        Err(e) => {
            // Refused at the header: nothing was restored.
            tracing::error!(error = %e, "snapshot refused: starting cold");
            return loaded;
        }
    };
    let (mut expired, mut refused) = (0, 0);
    let (mut entries, mut bad_blocks) = (0, 0);
    for (shard, result) in shards.into_iter().enumerate() {
        expired += result.expired;
        refused += result.refused;
        loaded.restored += result.restored;
        loaded.to_confirm[shard] = result.to_confirm;
        if shard == 0 {
            // Every thread checked every block; the first one speaks for them.
            entries = result.entries;
            bad_blocks = result.bad_blocks;
            for problem in &result.problems {
                tracing::error!(path = %path.display(), "snapshot damaged, good blocks kept: {problem}");
            }
        }
    }
    for problem in &scan.problems {
        tracing::error!(path = %path.display(), "snapshot damaged, good blocks kept: {problem}");
    }
    let elapsed = started.elapsed();
    let kept: usize = writers.iter().map(ShardWriter::len).sum();
    let pending: usize = loaded.to_confirm.iter().map(Vec::len).sum();
    tracing::info!(
        path = %path.display(),
        entries,
        bad_blocks,
        expired,
        refused,
        in_l1 = kept,
        to_confirm_with_l2 = pending,
        ms = elapsed.as_millis() as u64,
        mib_per_s = mib_per_s(scan.bytes, elapsed),
        "snapshot loaded"
    );
    loaded
}

/// One shard's part of a load: which entries it takes and what it does with them.
struct ShardRestore<'a> {
    shard: usize,
    config: &'a Config,
    router: &'a Router,
    /// This instance's version clock, which L1 keeps versions relative to.
    versions: &'a VersionClock,
    now_ms: u64,
}

/// What one shard's thread did.
#[derive(Default)]
struct ShardLoaded {
    restored: usize,
    to_confirm: Vec<Restored>,
    expired: u64,
    refused: u64,
    /// Over every block, not only this shard's entries.
    entries: u64,
    bad_blocks: u64,
    problems: Vec<String>,
}

impl ShardRestore<'_> {
    fn run(&self, writer: &mut ShardWriter, blocks: flume::Receiver<Arc<RawBlock>>) -> ShardLoaded {
        let with_l2 = self.config.l2().is_some();
        let stale_window_ms = engine::deadline_ms(0, self.config.stale_window());
        let mut done = ShardLoaded::default();
        for block in blocks {
            let entries = match block.decode() {
                Ok(entries) => entries,
                Err(problem) => {
                    done.bad_blocks += 1;
                    done.problems.push(problem);
                    continue;
                }
            };
            done.entries += entries.len() as u64;
            for entry in entries {
                let hash = self.router.hash(entry.key);
                if self.router.shard_of(hash) != self.shard {
                    continue;
                }
                // The file keeps versions whole; L1 keeps them short (`stored`).
                let origin = Origin::of(self.versions, entry.cached_at_ms);
                let Some(value) = stored::from_portable(entry.value, origin) else {
                    done.refused += 1;
                    continue;
                };
                let entry = SavedEntry {
                    value: &value.bytes,
                    flags: value.flags,
                    ..entry
                };
                if !fits(self.config, &entry) || (with_l2 && !confirmable(&entry, origin)) {
                    done.refused += 1;
                    continue;
                }
                let servable_until = entry
                    .expires_at_ms
                    .map(|t| t.saturating_add(stale_window_ms));
                if servable_until.is_some_and(|t| t <= self.now_ms) {
                    done.expired += 1;
                } else if with_l2 {
                    done.to_confirm.push(Restored::new(hash, &entry));
                } else if writer.restore(hash, entry).is_ok() {
                    done.restored += 1;
                } else {
                    done.refused += 1;
                }
            }
        }
        done
    }
}

/// Whether an entry (its value in L1's form) is within this run's limits.
fn fits(config: &Config, entry: &SavedEntry<'_>) -> bool {
    let (tag, bytes) = Kept::from(entry).parts();
    !entry.key.is_empty()
        && entry.key.len() <= config.max_key_bytes
        && (tag != stored::JSON
            || serde_json::from_slice::<&serde_json::value::RawValue>(bytes).is_ok())
        && bytes.len() <= config.max_value_bytes
}

/// Whether L2 can confirm an entry: it came from a versioned write L2 holds.
fn confirmable(entry: &SavedEntry<'_>, origin: Origin) -> bool {
    let kept = Kept::from(entry);
    !kept.is_absent() && kept.version(origin) != Version::ZERO
}

fn mib_per_s(bytes: u64, elapsed: Duration) -> u64 {
    (bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-6)).round() as u64
}

/// Has this core's owner keep the loaded entries L2 confirms (see the module doc).
pub async fn confirm(shared: &Shared, shard: usize, entries: Vec<Restored>) {
    if entries.is_empty() {
        return;
    }
    let total = entries.len();
    let subscribed = futures_lite::future::or(
        async {
            shared.subscribed.wait().await;
            true
        },
        async {
            monoio::time::sleep(SUBSCRIPTION_WAIT).await;
            false
        },
    )
    .await;
    if !subscribed {
        tracing::warn!(
            core = shard,
            dropped = total,
            "the coherence events are not followed yet: restored entries dropped"
        );
        return;
    }
    // The fault delays core 0 only, so that another core serves meanwhile.
    let check_delay = match shard {
        0 => shared.config.fault_restore_check_delay(),
        _ => Duration::ZERO,
    };
    let kept = shared
        .mail
        .call(shard, |reply| OwnerMessage::Restore {
            entries,
            check_delay,
            reply,
        })
        .await
        .unwrap_or(0);
    shared.snapshots.restored.add(kept as u64);
    tracing::info!(
        core = shard,
        kept,
        of = total,
        "restored entries confirmed with L2"
    );
}

/// Saves every shard to the snapshot. Core 0 calls this, from its timer and at shutdown,
/// one save at a time (they share a semaphore, `server.rs`).
pub async fn save(shared: &Arc<Shared>) -> Result<Written, SnapshotError> {
    let path = shared
        .config
        .snapshot_path
        .clone()
        .expect("saving needs CACHE_SNAPSHOT_PATH");
    let started = Instant::now();
    let cores = shared.router.shards();
    let header = Header {
        cores: cores as u32,
        saved_at_ms: shared.clock.tick(),
    };
    let (parts, received) = flume::bounded(2 * cores);
    let (done, result) = flume::bounded(1);
    let file = path.clone();
    std::thread::Builder::new()
        .name("snapshot".into())
        .spawn(move || {
            let _ = done.send(snapshot::write_parts(&file, header, &received, cores));
        })
        .map_err(|source| SnapshotError::Io {
            what: "starting a thread to write",
            path: path.clone(),
            source,
        })?;
    for shard in 0..cores {
        let (shared, parts) = (shared.clone(), parts.clone());
        monoio::spawn(async move {
            let _ = shared
                .mail
                .call(shard, |reply| OwnerMessage::Save { parts, reply })
                .await;
        });
    }
    drop(parts);
    let written = result
        .recv_async()
        .await
        .unwrap_or_else(|_| Err(abandoned(&path, "the writing thread stopped")));
    let stats = &shared.snapshots;
    match &written {
        Ok(w) => {
            stats.saved.incr();
            stats.last_saved_s.set(shared.clock.tick() / 1000);
            let elapsed = started.elapsed();
            tracing::info!(
                path = %path.display(),
                entries = w.entries,
                bytes = w.bytes,
                ms = elapsed.as_millis() as u64,
                mib_per_s = mib_per_s(w.bytes, elapsed),
                "snapshot saved"
            );
        }
        Err(e) => {
            stats.failed.incr();
            tracing::error!(error = %e, "snapshot not saved; the previous one stays");
        }
    }
    written
}

fn abandoned(path: &Path, reason: &str) -> SnapshotError {
    SnapshotError::Abandoned {
        path: path.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Saves every CACHE_SNAPSHOT_INTERVAL until shutdown (core 0), taking `busy` so that
/// the shutdown's save never overlaps a timed one.
pub async fn save_every(
    shared: Arc<Shared>,
    interval: Duration,
    busy: std::rc::Rc<async_lock::Mutex<()>>,
) {
    loop {
        let stopping = futures_lite::future::or(
            async {
                monoio::time::sleep(interval).await;
                false
            },
            async {
                shared.shutdown.wait().await;
                true
            },
        )
        .await;
        if stopping {
            return;
        }
        let _one_at_a_time = busy.lock().await;
        let _ = save(&shared).await;
    }
}
