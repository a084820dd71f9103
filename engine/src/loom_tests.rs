//! loom models of the lock-free read path (run by `scripts/loom.sh`): one reader thread
//! races the writer through insert, overwrite, eviction, expiry and delete-then-reinsert,
//! and through the adaptive policy's moves (a hit counted while the owner's hand takes
//! it, a promotion, an admission contest), and over nodes in slab blocks and nodes with
//! allocations of their own, and must only ever see a complete value that was stored
//! under the key, or nothing.
//! A read of a node racing its reclamation is a data race loom reports (see `sync.rs`).

use std::sync::Arc;

use crate::hashing::KeyHasher;
use crate::shard::{ShardConfig, ShardWriter};
use crate::table::TableReader;

const NOW: u64 = 1_000;

fn shard(max_entries: usize) -> ShardWriter {
    let config = ShardConfig {
        max_entries,
        max_bytes: u64::MAX,
        stale_window_ms: 0,
        eviction: crate::Eviction::Adaptive,
        huge_pages: false,
    };
    ShardWriter::new(config, Arc::default(), NOW, KeyHasher::chosen(h))
}

/// The hashes the models use: most keys share one, and the others differ from it only
/// by a few units, which a table's bucket index (the hash's low half scaled to the
/// bucket count) does not tell apart, so every key shares one chain.
fn h(key: &[u8]) -> u64 {
    match key {
        b"k2" => 3 + 16,
        b"k3" => 7,
        b"k4" => 9,
        _ => 3,
    }
}

/// Reads `key` once on another thread; returns the value seen, checked to be whole.
fn spawn_reader(
    reader: TableReader,
    hash: u64,
    key: &'static [u8],
    now: u64,
) -> loom::thread::JoinHandle<Option<Vec<u8>>> {
    loom::thread::spawn(move || {
        reader.get_with(hash, key, now, |e| {
            assert_eq!(e.key, key, "a reader never sees another key's entry");
            e.value.to_vec()
        })
    })
}

fn assert_one_of(seen: &Option<Vec<u8>>, allowed: &[Option<&[u8]>]) {
    assert!(
        allowed.iter().any(|a| a.map(<[u8]>::to_vec) == *seen),
        "saw {seen:?}, expected one of {allowed:?}"
    );
}

#[test]
fn reader_racing_insert_sees_nothing_or_the_whole_value() {
    loom::model(|| {
        let mut w = shard(4);
        let r = spawn_reader(w.reader(), h(b"k"), b"k", NOW);
        w.insert(h(b"k"), b"k", b"value-1", None, NOW).unwrap();
        assert_one_of(&r.join().unwrap(), &[None, Some(b"value-1")]);
    });
}

#[test]
fn reader_racing_overwrite_sees_old_or_new_never_torn_or_freed() {
    loom::model(|| {
        let mut w = shard(4);
        w.insert(h(b"k"), b"k", b"old-value", None, NOW).unwrap();
        let r = spawn_reader(w.reader(), h(b"k"), b"k", NOW);
        w.insert(h(b"k"), b"k", b"new", None, NOW).unwrap();
        // A second overwrite retires the first replacement too, while the reader may
        // still be on either node.
        w.insert(h(b"k"), b"k", b"newest-value", None, NOW).unwrap();
        assert_one_of(
            &r.join().unwrap(),
            &[Some(b"old-value"), Some(b"new"), Some(b"newest-value")],
        );
    });
}

/// Values too large for a slab block: their nodes have allocations of their own, which
/// readers find through the directory's own-node table while the writer retires them.
#[test]
fn reader_racing_overwrite_of_large_values_sees_one_whole() {
    static OLD: [u8; 5_000] = [b'o'; 5_000];
    static NEW: [u8; 6_000] = [b'n'; 6_000];
    loom::model(|| {
        let mut w = shard(4);
        w.insert(h(b"k"), b"k", &OLD, None, NOW).unwrap();
        let r = spawn_reader(w.reader(), h(b"k"), b"k", NOW);
        w.insert(h(b"k"), b"k", &NEW, None, NOW).unwrap();
        w.insert(h(b"k"), b"k", b"small", None, NOW).unwrap();
        assert_one_of(
            &r.join().unwrap(),
            &[Some(&OLD), Some(&NEW), Some(b"small")],
        );
    });
}

#[test]
fn reader_racing_eviction_sees_the_value_or_nothing() {
    loom::model(|| {
        let mut w = shard(1);
        // Same bucket: the reader walks past the evicted node's successor link.
        w.insert(h(b"k1"), b"k1", b"v1", None, NOW).unwrap();
        let r = spawn_reader(w.reader(), h(b"k1"), b"k1", NOW);
        let inserted = w.insert(h(b"k2"), b"k2", b"v2", None, NOW).unwrap();
        assert_eq!(inserted.evicted, 1);
        assert_one_of(&r.join().unwrap(), &[None, Some(b"v1")]);
    });
}

#[test]
fn reader_racing_expiry_sees_the_value_or_nothing() {
    loom::model(|| {
        let mut w = shard(4);
        w.insert(h(b"k"), b"k", b"ttl-value", Some(NOW + 10), NOW)
            .unwrap();
        let r = spawn_reader(w.reader(), h(b"k"), b"k", NOW + 5);
        assert_eq!(w.expire(NOW + 10), 1);
        assert_one_of(&r.join().unwrap(), &[None, Some(b"ttl-value")]);
    });
}

#[test]
fn reader_racing_delete_and_reinsert_sees_a_stored_value_or_nothing() {
    loom::model(|| {
        let mut w = shard(4);
        w.insert(h(b"other"), b"other", b"o", None, NOW).unwrap();
        w.insert(h(b"k"), b"k", b"first", None, NOW).unwrap();
        let r = spawn_reader(w.reader(), h(b"k"), b"k", NOW);
        assert!(w.remove(h(b"k"), b"k", NOW));
        w.insert(h(b"k"), b"k", b"second", None, NOW).unwrap();
        assert_one_of(&r.join().unwrap(), &[None, Some(b"first"), Some(b"second")]);
    });
}

#[test]
fn reader_hits_racing_the_policys_sweeps_and_admission_see_the_value_or_nothing() {
    loom::model(|| {
        // Two entries: the window holds the newest, the other sits on probation.
        let mut w = shard(2);
        w.insert(h(b"k1"), b"k1", b"v1", None, NOW).unwrap();
        w.insert(h(b"k2"), b"k2", b"v2", None, NOW).unwrap();
        // The reader's hit on k1 (a counter bump) races the owner taking that count as
        // its hands pass, promoting k1 or contesting k2 against it, and evicting one.
        let r = spawn_reader(w.reader(), h(b"k1"), b"k1", NOW);
        let inserted = w.insert(h(b"k3"), b"k3", b"v3", None, NOW).unwrap();
        assert_eq!(inserted.evicted, 1);
        w.insert(h(b"k4"), b"k4", b"v4", None, NOW).unwrap();
        assert_one_of(&r.join().unwrap(), &[None, Some(b"v1")]);
        assert_eq!(w.len(), 2, "the bound holds whoever won");
    });
}
