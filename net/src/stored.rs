//! How values are kept. A value is one tag byte, then the bytes. `j`: a JSON value as the
//! exact text it arrived as; `b`: raw bytes; `n`: the origin said there is no such key
//! (negative caching, L1 only, for CACHE_NEGATIVE_TTL).
//!
//! In L1 the tag and the version of the write that stored the value (so that a
//! coherence event for a version an instance already holds leaves its entry alone) are
//! one LEB128 varint, the head, before the bytes. The version is kept as its distance
//! from the entry's [`Origin`]: the version this instance's clock gives the first write of
//! the millisecond the entry was cached in. Every write and fill is cached in the
//! millisecond its version was made, so the distance is the clock's counter (and, for
//! another instance's write, the difference of the two instances' tags). The head takes
//! one byte for this instance's writes at up to 8 a millisecond, two at up to 1,024,
//! and three or four for other instances' writes (their tag differs), where the tag and
//! the version whole took 9. Without L2 no version is made (`Tiers::next_version`) and
//! the head is always one byte. The tag is the first byte's low two bits, so reading it
//! and finding the bytes decodes nothing; any version still round-trips, in up to 10. In
//! L2 the tag leads the value and the version is in the envelope's header, and a snapshot
//! keeps the tag and the version whole ([`portable`]), so neither depends on this
//! instance's clock.

use l2::{Version, VersionClock};

pub const JSON: u8 = b'j';
pub const BYTES: u8 = b'b';
pub const ABSENT: u8 = b'n';

/// Bytes of a version kept whole (a snapshot's form).
const VERSION_BYTES: usize = 8;

/// The most bytes an L1 value's head takes: a version's code is below 2^68, and two bits
/// of tag, 7 bits a byte.
const MOST_HEAD_BYTES: usize = 10;

/// A value as a client or the origin gave it: the tag, then the bytes (L2's form).
pub fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(bytes.len() + 1);
    stored.push(tag);
    stored.extend_from_slice(bytes);
    stored
}

/// What an L1 entry's version is kept relative to: the version `versions` (this
/// instance's clock) gives the first write of the entry's millisecond.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin(Version);

impl Origin {
    /// The origin of an entry cached at `cached_at_ms` (as the engine keeps that time, so
    /// that encoding and decoding agree).
    pub fn of(versions: &VersionClock, cached_at_ms: u64) -> Origin {
        Origin(versions.first_at(cached_at_ms.min(engine::LATEST_CACHED_AT_MS)))
    }
}

/// Distinct tag differences other than 0 (−4095 to 4095, zigzagged to 1 to 8190).
const TAG_DIFFERENCES: u128 = 8190;

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(n: u64) -> i64 {
    (n >> 1) as i64 ^ -((n & 1) as i64)
}

/// The code of `version`: 0 for [`Version::ZERO`] (negative entries, and writes from
/// before versions, which would otherwise be a whole clock reading away); else 1 + the
/// distance from `origin`, its clock reading's and its tag's differences zigzagged and
/// combined so that the common cases are the small codes: an even code for a version
/// with the origin's own tag (just the reading's difference), an odd one for the rest.
fn code(version: Version, origin: Origin) -> u128 {
    if version == Version::ZERO {
        return 0;
    }
    let ((reading, tag), (origin_reading, origin_tag)) = (version.split(), origin.0.split());
    // Readings are below 2^52 and tags below 2^12, so neither difference overflows.
    let readings = u128::from(zigzag(reading as i64 - origin_reading as i64));
    let tags = u128::from(zigzag(tag as i64 - origin_tag as i64));
    1 + if tags == 0 {
        readings << 1
    } else {
        (readings * TAG_DIFFERENCES + (tags - 1)) << 1 | 1
    }
}

/// The version a [`code`] stands for; `None` if no version has that code.
fn version_of(code: u128, origin: Origin) -> Option<Version> {
    let Some(code) = code.checked_sub(1) else {
        return Some(Version::ZERO);
    };
    let (readings, tags) = if code & 1 == 0 {
        (code >> 1, 0)
    } else {
        let combined = code >> 1;
        (combined / TAG_DIFFERENCES, combined % TAG_DIFFERENCES + 1)
    };
    let (origin_reading, origin_tag) = origin.0.split();
    let reading = (origin_reading as i64).checked_add(unzigzag(u64::try_from(readings).ok()?))?;
    let tag = origin_tag as i64 + unzigzag(tags as u64);
    Version::join(u64::try_from(reading).ok()?, u64::try_from(tag).ok()?)
}

/// The tags, by their kind number: the low two bits of an L1 head (3 is no tag).
const TAGS: [u8; 3] = [JSON, BYTES, ABSENT];

/// The head of an L1 value: its version's [`code`] above two bits of its tag's kind.
fn head(tag: u8, code: u128) -> u128 {
    let kind = TAGS.iter().position(|&t| t == tag).unwrap_or(1) as u128;
    code << 2 | kind
}

/// The length of the head at the start of an L1 value and its tag (which the head's
/// first byte holds); `None` if the value does not start with a head.
#[inline]
fn head_length_and_tag(in_l1: &[u8]) -> Option<(usize, u8)> {
    let last = in_l1
        .iter()
        .take(MOST_HEAD_BYTES)
        .position(|b| b & 0x80 == 0)?;
    let tag = *TAGS.get(usize::from(in_l1[0] & 3))?;
    Some((last + 1, tag))
}

/// The version code in the head at the start of an L1 value; `None` if the value does
/// not start with a head.
fn read_code(in_l1: &[u8]) -> Option<u128> {
    let (length, _) = head_length_and_tag(in_l1)?;
    let head = in_l1[..length]
        .iter()
        .rev()
        .fold(0u128, |head, &byte| head << 7 | u128::from(byte & 0x7f));
    Some(head >> 2)
}

/// Appends `head` as an LEB128 varint.
fn write_head(mut head: u128, into: &mut Vec<u8>) {
    while head >= 0x80 {
        into.push(head as u8 | 0x80);
        head >>= 7;
    }
    into.push(head as u8);
}

/// L1's form of a tagged value written with `version`, for an entry whose origin is
/// `origin`. A tag other than the three known ones is kept as [`BYTES`].
pub fn in_l1(tagged: &[u8], version: Version, origin: Origin) -> Vec<u8> {
    let (tag, bytes) = tagged.split_first().unwrap_or((&ABSENT, &[]));
    let mut stored = Vec::with_capacity(bytes.len() + MOST_HEAD_BYTES);
    write_head(head(*tag, code(version, origin)), &mut stored);
    stored.extend_from_slice(bytes);
    stored
}

/// The tag and the bytes of an L1 value.
pub fn parts(in_l1: &[u8]) -> (u8, &[u8]) {
    match head_length_and_tag(in_l1) {
        Some((length, tag)) => (tag, &in_l1[length..]),
        None => (ABSENT, &[]),
    }
}

/// The tagged form (L2's) of an L1 value.
pub fn tagged_of(in_l1: &[u8]) -> Vec<u8> {
    let (tag, bytes) = parts(in_l1);
    tagged(tag, bytes)
}

/// The version of the write that stored an L1 value of an entry whose origin is
/// `origin` ([`Version::ZERO`] if the value has none).
pub fn version(in_l1: &[u8], origin: Origin) -> Version {
    read_code(in_l1)
        .and_then(|code| version_of(code, origin))
        .unwrap_or(Version::ZERO)
}

pub fn is_absent(in_l1: &[u8]) -> bool {
    parts(in_l1).0 == ABSENT
}

/// A snapshot's form of an L1 value of an entry whose origin is `origin`: the tag, the
/// version whole (8 bytes, little-endian), then the bytes. (What L1 kept before versions
/// were kept short, so snapshots of either build are read by both.)
pub fn portable(in_l1: &[u8], origin: Origin) -> Vec<u8> {
    let (tag, bytes) = parts(in_l1);
    let mut kept = Vec::with_capacity(1 + VERSION_BYTES + bytes.len());
    kept.push(tag);
    kept.extend_from_slice(&version(in_l1, origin).0.to_le_bytes());
    kept.extend_from_slice(bytes);
    kept
}

/// L1's form of a snapshot's value ([`portable`]) of an entry whose origin is `origin`;
/// `None` if the value does not have that form.
pub fn from_portable(kept: &[u8], origin: Origin) -> Option<Vec<u8>> {
    let (&tag, rest) = kept.split_first()?;
    if !matches!(tag, JSON | BYTES | ABSENT) || rest.len() < VERSION_BYTES {
        return None;
    }
    let (version, bytes) = rest.split_at(VERSION_BYTES);
    let version = Version(u64::from_le_bytes(version.try_into().ok()?));
    Some(in_l1(&tagged(tag, bytes), version, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CACHED_AT: u64 = 1_780_000_000_000;

    fn origin(versions: &VersionClock, cached_at_ms: u64) -> Origin {
        Origin::of(versions, cached_at_ms)
    }

    #[test]
    fn l1_values_carry_their_version_and_convert_both_ways() {
        let here = origin(&VersionClock::new(7), CACHED_AT);
        let value = in_l1(&tagged(JSON, b"[1]"), Version(0x0102), here);
        assert_eq!(parts(&value), (JSON, &b"[1]"[..]));
        assert_eq!(version(&value, here), Version(0x0102));
        assert_eq!(tagged_of(&value), b"j[1]");
        let absent = in_l1(&[ABSENT], Version::ZERO, here);
        assert_eq!(absent, [2], "a negative entry's head is one byte");
        assert_eq!(parts(&[3, b'x']), (ABSENT, &b""[..]), "kind 3 is no tag");
        assert!(is_absent(&absent));
        assert_eq!(parts(&absent), (ABSENT, &b""[..]));
        assert_eq!(parts(b""), (ABSENT, &b""[..]));
        assert_eq!(version(b"", here), Version::ZERO);
        let endless = b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff[]";
        assert_eq!(version(endless, here), Version::ZERO, "no head: no version");
        assert_eq!(parts(endless), (ABSENT, &b""[..]), "no head: nothing");
        let odd = in_l1(b"x[1]", Version(0x0102), here);
        assert_eq!(
            parts(&odd),
            (BYTES, &b"[1]"[..]),
            "an unknown tag is kept as bytes"
        );
    }

    #[test]
    fn this_instances_writes_take_a_byte_or_two_and_others_three_or_four() {
        let here = VersionClock::new(0x123);
        let there = VersionClock::new(0xabc);
        for made in 0..256 {
            let mine = here.next(CACHED_AT);
            let value = in_l1(&tagged(BYTES, b"v"), mine, origin(&here, CACHED_AT));
            let head = if made < 8 { 1 } else { 2 };
            assert_eq!(value.len(), head + 1, "write {made}: {mine:?}");
            assert_eq!(version(&value, origin(&here, CACHED_AT)), mine);
            let theirs = there.next(CACHED_AT);
            let value = in_l1(&tagged(BYTES, b"v"), theirs, origin(&here, CACHED_AT));
            let head = if made < 16 { 3 } else { 4 };
            assert!(value.len() <= head + 1, "write {made}: {theirs:?}");
            assert_eq!(version(&value, origin(&here, CACHED_AT)), theirs);
        }
    }

    #[test]
    fn every_version_round_trips_whatever_the_time_and_tag() {
        let times = [0, 1, CACHED_AT, u64::MAX >> 20, u64::MAX];
        let versions = [
            0,
            1,
            0x0102,
            0xfff,
            1 << 63,
            (1 << 63) - 1,
            u64::MAX,
            u64::MAX - 1,
        ];
        for tag in [0, 1, 0x800, 0xfff] {
            let clock = VersionClock::new(tag);
            for &cached_at in &times {
                let at = origin(&clock, cached_at);
                for &v in versions.iter().chain(&[at.0 .0, at.0 .0 ^ 0xfff]) {
                    let value = in_l1(&tagged(JSON, b"{}"), Version(v), at);
                    assert!(value.len() <= MOST_HEAD_BYTES + 2);
                    assert_eq!(version(&value, at), Version(v), "{v:#x} at {cached_at}");
                    assert_eq!(parts(&value), (JSON, &b"{}"[..]));
                    let kept = portable(&value, at);
                    assert_eq!(kept[1..9], v.to_le_bytes());
                    assert_eq!(from_portable(&kept, at), Some(value));
                }
            }
        }
        let at = origin(&VersionClock::new(0), CACHED_AT);
        assert_eq!(from_portable(b"j1234567", at), None);
        assert_eq!(from_portable(b"x12345678", at), None);
    }

    #[test]
    fn codes_of_no_version_are_refused_not_misread() {
        let at = origin(&VersionClock::new(5), 0);
        // A reading of -1 (the origin's is 0), then a tag of 5 - 4095.
        assert_eq!(version_of(3, at), None);
        assert_eq!(version_of((8188 << 1 | 1) + 1, at), None);
        for code in [3u128, (8188 << 1 | 1) + 1, u128::MAX >> 61] {
            let mut value = vec![];
            write_head(head(JSON, code), &mut value);
            value.extend_from_slice(b"[]");
            assert_eq!(version(&value, at), Version::ZERO, "code {code}");
            assert_eq!(parts(&value), (JSON, &b"[]"[..]));
        }
    }
}
