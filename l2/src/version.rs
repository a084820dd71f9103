//! Write versions: what orders one key's writes across the tiers and the instances.
//!
//! A version is a hybrid logical clock reading (Kulkarni et al., 2014) with a tie-break:
//! `milliseconds (44 bits) | counter (8 bits) | instance tag (12 bits)`, so versions
//! follow wall-clock time, grow strictly on every instance (the counter, then the
//! milliseconds, move on when two writes share a millisecond), and move past every
//! version an instance has seen (`observe`): a write made after reading another
//! instance's value, or after its event, always wins over it. The tag (random per start)
//! keeps two instances' versions distinct even in the same millisecond. Redis keeps the
//! higher version of a key (`client.rs`), and L1 keeps each entry's version, so an event
//! for a version an instance already holds changes nothing.
//!
//! Concurrent writes to one key from two instances, closer together than the clocks'
//! skew, are ordered by version rather than by arrival; every tier ends with the same one.

use std::sync::atomic::{AtomicU64, Ordering};

const TAG_BITS: u32 = 12;
const COUNTER_BITS: u32 = 8;

/// One write's version; higher is newer. `Version::ZERO` is older than every write (an
/// entry written before versions existed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub u64);

impl Version {
    pub const ZERO: Version = Version(0);

    /// Sixteen lowercase hex digits: fixed width, so that comparing two as text (or as
    /// two 8-digit halves, as the Redis script does) compares the versions.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }

    pub fn from_hex(text: &[u8]) -> Option<Version> {
        if text.len() != 16 {
            return None;
        }
        let text = std::str::from_utf8(text).ok()?;
        u64::from_str_radix(text, 16).ok().map(Version)
    }

    /// The hybrid clock reading (milliseconds and counter) and the instance tag.
    pub fn split(self) -> (u64, u64) {
        (self.0 >> TAG_BITS, self.0 & ((1 << TAG_BITS) - 1))
    }

    /// The version of a clock reading and an instance tag, the inverse of
    /// [`Version::split`]; `None` if either is out of range.
    pub fn join(reading: u64, tag: u64) -> Option<Version> {
        (reading <= u64::MAX >> TAG_BITS && tag < 1 << TAG_BITS)
            .then_some(Version(reading << TAG_BITS | tag))
    }

    /// The hybrid clock reading, without the tag.
    fn clock(self) -> u64 {
        self.0 >> TAG_BITS
    }
}

/// An instance's source of versions, shared by its cores.
#[derive(Debug)]
pub struct VersionClock {
    /// The last clock reading handed out or observed (without the tag).
    last: AtomicU64,
    tag: u64,
}

impl VersionClock {
    /// A clock whose versions carry `tag` (its low 12 bits).
    pub fn new(tag: u64) -> Self {
        Self {
            last: AtomicU64::new(0),
            tag: tag & ((1 << TAG_BITS) - 1),
        }
    }

    /// The version this clock gives the first write of millisecond `wall_ms` if it has
    /// not run ahead of it: a write made then is at or just above it, so a version can be
    /// kept in few bytes as its distance from this.
    pub fn first_at(&self, wall_ms: u64) -> Version {
        let wall = wall_ms.min(u64::MAX >> (TAG_BITS + COUNTER_BITS)) << COUNTER_BITS;
        Version(wall << TAG_BITS | self.tag)
    }

    /// A version newer than every one this clock handed out or observed, and not older
    /// than `now_ms`.
    pub fn next(&self, now_ms: u64) -> Version {
        let wall = now_ms.min(u64::MAX >> (TAG_BITS + COUNTER_BITS)) << COUNTER_BITS;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let reading = wall.max(last + 1);
            match self.last.compare_exchange_weak(
                last,
                reading,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Version(reading << TAG_BITS | self.tag),
                Err(current) => last = current,
            }
        }
    }

    /// Moves the clock past `seen` (another instance's write this one has read or heard
    /// of), so that this instance's next write is newer.
    pub fn observe(&self, seen: Version) {
        self.last.fetch_max(seen.clock(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_grow_strictly_and_follow_the_wall_clock() {
        let clock = VersionClock::new(5);
        let a = clock.next(1_000);
        let b = clock.next(1_000);
        let c = clock.next(999);
        let d = clock.next(2_000);
        assert!(a < b && b < c && c < d, "{a:?} {b:?} {c:?} {d:?}");
        assert_eq!(d.0 & 0xfff, 5);
        assert_eq!(d.clock() >> COUNTER_BITS, 2_000);
    }

    #[test]
    fn a_write_after_seeing_another_instances_version_is_newer() {
        let (ahead, behind) = (VersionClock::new(1), VersionClock::new(2));
        let seen = ahead.next(50_000);
        behind.observe(seen);
        assert!(behind.next(10_000) > seen);
    }

    #[test]
    fn two_instances_never_share_a_version_in_one_millisecond() {
        let (a, b) = (VersionClock::new(1), VersionClock::new(2));
        assert_ne!(a.next(7), b.next(7));
    }

    #[test]
    fn hex_is_fixed_width_and_round_trips() {
        for v in [0, 1, 0xabc, u64::MAX] {
            let hex = Version(v).hex();
            assert_eq!(hex.len(), 16);
            assert_eq!(Version::from_hex(hex.as_bytes()), Some(Version(v)));
        }
        assert!(Version(9).hex() < Version(10).hex());
        assert_eq!(Version::from_hex(b"xyz"), None);
    }
}
