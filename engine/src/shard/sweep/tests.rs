//! Sweeps: a pattern invalidation's or a flush's removal, whole and in steps among
//! writes, against a model.

use super::super::tests::{get, h, put, shard, NOW};
use super::super::*;

#[test]
fn remove_and_pattern_invalidation_count_only_live_entries() {
    let mut s = shard(100, u64::MAX);
    for k in ["user:1", "user:2", "user:3", "order:1"] {
        put(&mut s, k, "v", None, NOW);
    }
    put(&mut s, "user:old", "v", Some(10), NOW);
    assert!(s.remove(h(b"user:1"), b"user:1", NOW));
    assert!(!s.remove(h(b"user:1"), b"user:1", NOW));
    let pattern = crate::Glob::new(b"user:*");
    let removed = sweep_whole(&mut s, NOW + 10, |k| pattern.matches(k));
    assert_eq!(
        removed,
        Removed {
            live: 2,
            expired: 1
        }
    );
    assert_eq!(s.len(), 1);
    assert!(get(&s, "order:1", NOW).is_some());
    assert_eq!(s.metrics().deletes.get(), 3);
    assert_eq!(s.metrics().expirations.get(), 1);
    assert_eq!(sweep_whole(&mut s, NOW + 10, |_| true).live, 1);
    assert!(s.is_empty());
}

/// Removes every key `doomed` picks, in one step.
fn sweep_whole(s: &mut ShardWriter, now: u64, doomed: impl Fn(&[u8]) -> bool) -> Removed {
    let sweep = s.begin_sweep();
    let swept = s.sweep_some(sweep, u32::MAX, now, doomed);
    assert!(swept.unfinished.is_none(), "one step covers every slot");
    swept.removed
}

/// A sweep in steps removes what the shard held when it began and nothing written
/// after: an overwrite of a key it has yet to reach, and a new key in a slot it has yet
/// to reach (vacated by a removal after it began), both survive; so does a key written
/// into a slot made after it began.
#[test]
fn a_sweep_in_steps_spares_what_was_written_after_it_began() {
    let mut s = shard(100, u64::MAX);
    for i in 0..20 {
        put(&mut s, &format!("user:{i}"), "old", None, NOW);
    }
    let sweep = s.begin_sweep();
    let first = s.sweep_some(sweep, 5, NOW, |k| k.starts_with(b"user:"));
    assert_eq!(first.removed.live, 5);
    let sweep = first.unfinished.expect("15 slots to go");
    // Slots 5 on are ahead of the sweep: user:10's is rewritten; user:12's is vacated
    // and taken by a new key; and a slot past every one the sweep covers is made.
    put(&mut s, "user:10", "new", None, NOW);
    assert!(s.remove(h(b"user:12"), b"user:12", NOW));
    put(&mut s, "user:new", "new", None, NOW);
    for i in 20..22 {
        put(&mut s, &format!("user:{i}"), "new", None, NOW);
    }
    let rest = s.sweep_some(sweep, u32::MAX, NOW, |k| k.starts_with(b"user:"));
    assert!(rest.unfinished.is_none());
    assert_eq!(
        rest.removed.live, 13,
        "all but the rewritten and the removed"
    );
    let mut left: Vec<String> = s
        .policy
        .iter_range(0..u32::MAX)
        .map(|(_, r)| String::from_utf8(r.key(&s.policy.home().names).to_vec()).unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["user:10", "user:20", "user:21", "user:new"]);
    assert_eq!(get(&s, "user:10", NOW).as_deref(), Some(&b"new"[..]));
    // A sweep that finished leaves nothing for later writes to note.
    assert!(s.sweeps.is_empty());
}

proptest::proptest! {
    /// Up to two sweeps under way at once, in steps of any size among writes (a third
    /// with a TTL), removals, time passing and partial expiries, on two dozen keys in a
    /// shard that never evicts (so that slots are reused only as removals and expiries
    /// free them): when every sweep is done, the shard holds exactly what a model holds
    /// in which each sweep dooms the entries it picks when it begins, and a write or a
    /// removal of a key lifts its doom.
    #[test]
    fn sweeps_remove_exactly_what_they_picked_when_they_began(
        ops in proptest::collection::vec((0u8..7, 0u8..24, 0u64..200), 1..300),
    ) {
        let mut s = shard(64, u64::MAX);
        let picks = [|k: u8| k < 12, |k: u8| k % 3 == 0];
        let key_of = |k: u8| format!("k{k}");
        let index_of = |key: &[u8]| -> u8 { std::str::from_utf8(&key[1..]).unwrap().parse().unwrap() };
        // The model: each key's value and deadline, and each sweep under way with the
        // keys it doomed.
        let mut model: std::collections::HashMap<u8, (String, u64)> = Default::default();
        let mut sweeps: Vec<(usize, Sweep, std::collections::HashSet<u8>)> = Vec::new();
        let mut now = NOW;
        let mut writes = 0u64;
        for (op, k, amount) in ops {
            match op {
                0 | 1 => {
                    writes += 1;
                    let value = format!("v{writes}");
                    let ttl = (op == 0 && amount % 3 == 0).then_some(amount + 1);
                    put(&mut s, &key_of(k), &value, ttl, now);
                    model.insert(k, (value, ttl.map_or(NEVER, |t| now + t)));
                    for (_, _, doomed) in &mut sweeps {
                        doomed.remove(&k);
                    }
                }
                2 => {
                    s.remove(h(key_of(k).as_bytes()), key_of(k).as_bytes(), now);
                    model.remove(&k);
                    for (_, _, doomed) in &mut sweeps {
                        doomed.remove(&k);
                    }
                }
                3 => {
                    now += amount;
                    s.expire_some(now, 1 + amount as usize % 8);
                }
                4 if sweeps.len() < 2 => {
                    let which = usize::from(k % 2);
                    let doomed = model.keys().copied().filter(|&k| picks[which](k)).collect();
                    sweeps.push((which, s.begin_sweep(), doomed));
                }
                _ if !sweeps.is_empty() => {
                    let at = usize::from(k) % sweeps.len();
                    let (which, sweep, doomed) = sweeps.swap_remove(at);
                    let swept = s.sweep_some(sweep, 1 + amount as u32 % 10, now, |key| picks[which](index_of(key)));
                    match swept.unfinished {
                        Some(sweep) => sweeps.push((which, sweep, doomed)),
                        None => model.retain(|k, _| !doomed.contains(k)),
                    }
                }
                _ => {}
            }
        }
        for (which, mut sweep, doomed) in sweeps {
            loop {
                let swept = s.sweep_some(sweep, 7, now, |key| picks[which](index_of(key)));
                match swept.unfinished {
                    Some(rest) => sweep = rest,
                    None => break,
                }
            }
            model.retain(|k, _| !doomed.contains(k));
        }
        proptest::prop_assert!(s.sweeps.is_empty());
        proptest::prop_assert_eq!(s.metrics().evictions.get(), 0);
        for k in 0..24 {
            let expected = model
                .get(&k)
                .filter(|(_, deadline)| *deadline > now)
                .map(|(value, _)| value.as_bytes().to_vec());
            proptest::prop_assert_eq!(get(&s, &key_of(k), now), expected, "key {}", k);
        }
    }
}
