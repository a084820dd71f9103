//! Black-box property tests of the engine against a reference model (a `HashMap` of
//! value and deadline), through the public `Cache` API with a manual clock.
//!
//! Without eviction pressure the cache must agree with the model exactly. Under pressure
//! it may have evicted a key, but a read still returns either nothing or exactly the
//! model's current value: never a deleted, invalidated, expired or overwritten one. Both
//! bounds hold after every operation. Every case runs under both eviction policies (the
//! adaptive one moves entries between regions and refuses admissions; plain CLOCK).

use std::collections::HashMap;
use std::time::Duration;

use engine::{entry_charge, Cache, Eviction, Glob, InsertError, ManualClock};
use proptest::prelude::*;

const START: u64 = 1_700_000_000_000;

#[derive(Clone, Debug)]
enum Op {
    Set {
        key: u8,
        len: usize,
        ttl_ms: Option<u64>,
    },
    Get {
        key: u8,
    },
    Delete {
        key: u8,
    },
    Invalidate {
        pattern: &'static str,
    },
    Advance {
        ms: u64,
    },
    RunPending,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, value_len(), prop::option::of(1u64..60))
            .prop_map(|(key, len, ttl_ms)| Op::Set { key, len, ttl_ms }),
        4 => (0u8..24).prop_map(|key| Op::Get { key }),
        1 => (0u8..24).prop_map(|key| Op::Delete { key }),
        1 => prop::sample::select(vec!["k1*", "k?", "k[0-9]", "k2[^0]", "*", "k1\\*", "nomatch*"])
            .prop_map(|pattern| Op::Invalidate { pattern }),
        2 => (0u64..40).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::RunPending),
    ]
}

/// Mostly short values; now and then one whose node is about the slab's largest block,
/// either side of it (a node past it has an allocation of its own).
fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![15 => 0usize..64, 1 => 4_030usize..4_080]
}

fn key(k: u8) -> Vec<u8> {
    format!("k{k}").into_bytes()
}

/// Each set writes a value no earlier set wrote, so a stale read cannot pass as fresh.
fn value(serial: u64, len: usize) -> Vec<u8> {
    let mut v = serial.to_le_bytes().to_vec();
    v.resize(8 + len, b'x');
    v
}

struct Model {
    live: HashMap<Vec<u8>, (Vec<u8>, Option<u64>)>,
    now: u64,
}

impl Model {
    fn get(&self, k: &[u8]) -> Option<&Vec<u8>> {
        match self.live.get(k) {
            Some((v, deadline)) if deadline.is_none_or(|d| d > self.now) => Some(v),
            _ => None,
        }
    }
}

fn run(
    ops: Vec<Op>,
    max_entries: usize,
    max_bytes: u64,
    shards: usize,
    eviction: Eviction,
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new(START);
    let cache = Cache::builder(max_entries)
        .max_bytes(max_bytes)
        .shards(shards)
        .eviction(eviction)
        .seeds([1, 2, 3, 4])
        .clock(clock.clone())
        .build();
    let mut model = Model {
        live: HashMap::new(),
        now: START,
    };
    let may_evict = max_entries < 24 || max_bytes < u64::MAX;
    for (serial, op) in ops.into_iter().enumerate() {
        match op {
            Op::Set {
                key: k,
                len,
                ttl_ms,
            } => {
                let v = value(serial as u64, len);
                let inserted = cache.insert(&key(k), &v, ttl_ms.map(Duration::from_millis));
                if let Err(InsertError::TooLarge { charge, .. }) = inserted {
                    // Larger than a shard's byte bound: refused, and nothing changes.
                    prop_assert!(charge > max_bytes / shards as u64);
                    continue;
                }
                inserted.unwrap();
                model
                    .live
                    .insert(key(k), (v.clone(), ttl_ms.map(|t| model.now + t)));
                prop_assert_eq!(cache.get(&key(k)), Some(v), "a fresh insert is readable");
            }
            Op::Get { key: k } => {
                let got = cache.get(&key(k));
                let expected = model.get(&key(k)).cloned();
                if may_evict && got.is_none() {
                    // Evicted: gone for good until set again.
                    model.live.remove(&key(k));
                } else {
                    prop_assert_eq!(got, expected, "key {}", k);
                }
            }
            Op::Delete { key: k } => {
                let was_live = model.get(&key(k)).is_some();
                let removed = cache.remove(&key(k));
                if !may_evict {
                    prop_assert_eq!(removed, was_live);
                }
                prop_assert!(!removed || was_live, "removed a key the model had not");
                model.live.remove(&key(k));
            }
            Op::Invalidate { pattern } => {
                let glob = Glob::new(pattern.as_bytes());
                let expected = model
                    .live
                    .keys()
                    .filter(|k| glob.matches(k) && model.get(k).is_some())
                    .count();
                let removed = cache.invalidate(&glob);
                if may_evict {
                    prop_assert!(removed <= expected);
                } else {
                    prop_assert_eq!(removed, expected, "pattern {}", pattern);
                }
                model.live.retain(|k, _| !glob.matches(k));
            }
            Op::Advance { ms } => {
                clock.advance(Duration::from_millis(ms));
                model.now += ms;
            }
            Op::RunPending => {
                cache.run_pending_tasks();
            }
        }
        let m = cache.metrics();
        prop_assert!(
            m.entries as usize <= max_entries,
            "entries {} > {}",
            m.entries,
            max_entries
        );
        prop_assert!(m.bytes <= max_bytes, "bytes {} > {}", m.bytes, max_bytes);
        if !may_evict {
            prop_assert_eq!(m.evictions, 0);
        }
    }
    // Everything the model holds live is readable, or (under pressure) was evicted.
    for (k, _) in model.live.iter() {
        let got = cache.get(k);
        let expected = model.get(k).cloned();
        if !(may_evict && got.is_none()) {
            prop_assert_eq!(got, expected);
        }
    }
    Ok(())
}

proptest! {
    // 256 cases, or PROPTEST_CASES (scripts/memcheck.sh runs fewer under valgrind).
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn without_pressure_the_cache_is_the_model(ops in prop::collection::vec(op(), 1..300), shards in 1usize..4, eviction in eviction()) {
        run(ops, 1_000, u64::MAX, shards, eviction)?;
    }

    #[test]
    fn under_entry_pressure_reads_are_current_or_absent(ops in prop::collection::vec(op(), 1..300), cap in 1usize..8, eviction in eviction()) {
        run(ops, cap, u64::MAX, 1, eviction)?;
    }

    #[test]
    fn under_byte_pressure_reads_are_current_or_absent(ops in prop::collection::vec(op(), 1..300), shards in 1usize..3, eviction in eviction()) {
        run(ops, 1_000, entry_charge(3, 72) * 4, shards, eviction)?;
    }
}

fn eviction() -> impl Strategy<Value = Eviction> {
    prop::sample::select(vec![Eviction::Adaptive, Eviction::Clock])
}

/// While the working set fits nothing is lost, and when it does not fit, a key touched
/// since the hand last passed survives the next eviction, under either policy.
#[test]
fn recently_read_keys_survive_like_lru() {
    for eviction in [Eviction::Adaptive, Eviction::Clock] {
        let cache = Cache::builder(4).shards(1).eviction(eviction).build();
        for k in 0..4u8 {
            cache.insert(&key(k), b"v", None).unwrap();
        }
        for round in 0..10u8 {
            assert!(
                cache.get(&key(0)).is_some(),
                "{eviction}: hot key lost in round {round}"
            );
            cache.insert(&key(10 + round), b"v", None).unwrap();
        }
        assert_eq!(cache.metrics().evictions, 10);
    }
}

/// A flood of keys seen once, ten times the capacity, does not evict a hot set that is
/// being read, through the library API on the service's shard count.
#[test]
fn a_one_hit_flood_leaves_the_hot_set_in_place() {
    let capacity = 2_000;
    let cache = Cache::builder(capacity).shards(2).build();
    let hot: Vec<Vec<u8>> = (0..1_000)
        .map(|i| format!("hot:{i}").into_bytes())
        .collect();
    let read_through = |k: &[u8]| {
        if cache.get(k).is_none() {
            cache.insert(k, b"v", None).unwrap();
        }
    };
    for _ in 0..20 {
        hot.iter().for_each(|k| read_through(k));
    }
    for i in 0..10 * capacity {
        cache
            .insert(format!("flood:{i}").as_bytes(), b"v", None)
            .unwrap();
        read_through(&hot[i % hot.len()]);
    }
    let kept = hot.iter().filter(|k| cache.get(k).is_some()).count();
    assert!(kept >= 980, "{kept} of 1000 hot keys survived");
    assert!(cache.metrics().admissions_refused > 10_000);
}
