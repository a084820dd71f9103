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
//! the head is one byte, which the engine keeps in the entry's flags rather than in the
//! value ([`InL1`]): no byte at all. The tag is the first byte's low two bits, so reading
//! it and finding the bytes decodes nothing; any version still round-trips, in up to 10.
//! In L2 the tag leads the value and the version is in the envelope's header, and a
//! snapshot keeps the tag and the version whole ([`Kept::portable`]), so neither depends
//! on this instance's clock.

use engine::{EntryRef, OwnedEntry, SavedEntry};
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

/// Appends `head` as an LEB128 varint.
fn write_head(mut head: u128, into: &mut Vec<u8>) {
    while head >= 0x80 {
        into.push(head as u8 | 0x80);
        head >>= 7;
    }
    into.push(head as u8);
}

/// An L1 value as the engine keeps it, borrowed: the entry's flags and its bytes. Flags 0
/// say the head leads the bytes. Flags `k + 1` say the head is the one byte of kind `k`
/// (the tag [`TAGS`]`[k]`, no version) and the bytes are the value's own. (The engine
/// keeps an entry's flags in its node header's spare bits, so a value without a version
/// costs no byte for its head: 4 bytes an entry with the slab's rounding, at 10-byte keys
/// and 100-byte values.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept<'a> {
    pub flags: u8,
    pub bytes: &'a [u8],
}

/// An L1 value as the engine keeps it, owned ([`Kept`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InL1 {
    pub flags: u8,
    pub bytes: Vec<u8>,
}

impl InL1 {
    pub fn kept(&self) -> Kept<'_> {
        Kept {
            flags: self.flags,
            bytes: &self.bytes,
        }
    }
}

impl<'a> From<&EntryRef<'a>> for Kept<'a> {
    fn from(e: &EntryRef<'a>) -> Self {
        Kept {
            flags: e.flags,
            bytes: e.value,
        }
    }
}

impl<'a> From<&SavedEntry<'a>> for Kept<'a> {
    fn from(e: &SavedEntry<'a>) -> Self {
        Kept {
            flags: e.flags,
            bytes: e.value,
        }
    }
}

impl<'a> From<&'a OwnedEntry> for Kept<'a> {
    fn from(e: &'a OwnedEntry) -> Self {
        Kept {
            flags: e.flags,
            bytes: &e.value,
        }
    }
}

impl<'a> Kept<'a> {
    /// The length of the head at the start of the bytes (0 if the flags hold it) and the
    /// tag; `None` if the value has no head.
    #[inline]
    fn head_length_and_tag(self) -> Option<(usize, u8)> {
        if self.flags != 0 {
            return Some((0, *TAGS.get(usize::from(self.flags - 1))?));
        }
        let last = self
            .bytes
            .iter()
            .take(MOST_HEAD_BYTES)
            .position(|b| b & 0x80 == 0)?;
        let tag = *TAGS.get(usize::from(self.bytes[0] & 3))?;
        Some((last + 1, tag))
    }

    /// The version code in the value's head; `None` if it has no head.
    fn code(self) -> Option<u128> {
        let (length, _) = self.head_length_and_tag()?;
        let head = self.bytes[..length]
            .iter()
            .rev()
            .fold(0u128, |head, &byte| head << 7 | u128::from(byte & 0x7f));
        Some(head >> 2)
    }

    /// The tag and the bytes.
    pub fn parts(self) -> (u8, &'a [u8]) {
        match self.head_length_and_tag() {
            Some((length, tag)) => (tag, &self.bytes[length..]),
            None => (ABSENT, &[]),
        }
    }

    /// The tagged form (L2's).
    pub fn tagged(self) -> Vec<u8> {
        let (tag, bytes) = self.parts();
        tagged(tag, bytes)
    }

    /// The version of the write that stored the value of an entry whose origin is
    /// `origin` ([`Version::ZERO`] if the value has none).
    pub fn version(self, origin: Origin) -> Version {
        self.code()
            .and_then(|code| version_of(code, origin))
            .unwrap_or(Version::ZERO)
    }

    pub fn is_absent(self) -> bool {
        self.parts().0 == ABSENT
    }

    /// A snapshot's form of the value of an entry whose origin is `origin`: the tag, the
    /// version whole (8 bytes, little-endian), then the bytes. (What L1 kept before
    /// versions were kept short, so snapshots of either build are read by both.)
    pub fn portable(self, origin: Origin) -> Vec<u8> {
        let (tag, bytes) = self.parts();
        let mut kept = Vec::with_capacity(1 + VERSION_BYTES + bytes.len());
        kept.push(tag);
        kept.extend_from_slice(&self.version(origin).0.to_le_bytes());
        kept.extend_from_slice(bytes);
        kept
    }
}

/// L1's form of a tagged value written with `version`, for an entry whose origin is
/// `origin`. A tag other than the three known ones is kept as [`BYTES`].
pub fn in_l1(tagged: &[u8], version: Version, origin: Origin) -> InL1 {
    let (tag, bytes) = tagged.split_first().unwrap_or((&ABSENT, &[]));
    let head = head(*tag, code(version, origin));
    if head < 3 {
        // No version, and one of the tags: the flags hold the head whole.
        return InL1 {
            flags: head as u8 + 1,
            bytes: bytes.to_vec(),
        };
    }
    let mut stored = Vec::with_capacity(bytes.len() + MOST_HEAD_BYTES);
    write_head(head, &mut stored);
    stored.extend_from_slice(bytes);
    InL1 {
        flags: 0,
        bytes: stored,
    }
}

/// L1's form of a snapshot's value ([`Kept::portable`]) of an entry whose origin is
/// `origin`; `None` if the value does not have that form.
pub fn from_portable(kept: &[u8], origin: Origin) -> Option<InL1> {
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

    /// A value whose head leads its bytes (flags 0).
    fn inline(bytes: &[u8]) -> Kept<'_> {
        Kept { flags: 0, bytes }
    }

    #[test]
    fn l1_values_carry_their_version_and_convert_both_ways() {
        let here = origin(&VersionClock::new(7), CACHED_AT);
        let value = in_l1(&tagged(JSON, b"[1]"), Version(0x0102), here);
        assert_eq!(value.flags, 0, "a version: the head leads the bytes");
        assert_eq!(value.kept().parts(), (JSON, &b"[1]"[..]));
        assert_eq!(value.kept().version(here), Version(0x0102));
        assert_eq!(value.kept().tagged(), b"j[1]");
        let absent = in_l1(&[ABSENT], Version::ZERO, here);
        assert_eq!(
            absent,
            InL1 {
                flags: 3,
                bytes: vec![]
            },
            "a negative entry's head is its flags"
        );
        assert_eq!(
            inline(&[3, b'x']).parts(),
            (ABSENT, &b""[..]),
            "kind 3 is no tag"
        );
        assert!(absent.kept().is_absent());
        assert_eq!(absent.kept().parts(), (ABSENT, &b""[..]));
        assert_eq!(absent.kept().version(here), Version::ZERO);
        assert_eq!(inline(b"").parts(), (ABSENT, &b""[..]));
        assert_eq!(inline(b"").version(here), Version::ZERO);
        let endless = inline(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff[]");
        assert_eq!(endless.version(here), Version::ZERO, "no head: no version");
        assert_eq!(endless.parts(), (ABSENT, &b""[..]), "no head: nothing");
        let odd = in_l1(b"x[1]", Version(0x0102), here);
        assert_eq!(
            odd.kept().parts(),
            (BYTES, &b"[1]"[..]),
            "an unknown tag is kept as bytes"
        );
        let unversioned = in_l1(b"x[1]", Version::ZERO, here);
        assert_eq!(
            unversioned.bytes, b"[1]",
            "no version: no head in the bytes"
        );
        assert_eq!(unversioned.kept().tagged(), b"b[1]");
        for (tag, flags) in [(JSON, 1), (BYTES, 2), (ABSENT, 3)] {
            let value = in_l1(&tagged(tag, b"v"), Version::ZERO, here);
            assert_eq!((value.flags, &value.bytes[..]), (flags, &b"v"[..]));
            assert_eq!(value.kept().parts(), (tag, &b"v"[..]));
            assert_eq!(
                from_portable(&value.kept().portable(here), here),
                Some(value)
            );
        }
    }

    #[test]
    fn this_instances_writes_take_a_byte_or_two_and_others_three_or_four() {
        let here = VersionClock::new(0x123);
        let there = VersionClock::new(0xabc);
        for made in 0..256 {
            let mine = here.next(CACHED_AT);
            let value = in_l1(&tagged(BYTES, b"v"), mine, origin(&here, CACHED_AT));
            let head = if made < 8 { 1 } else { 2 };
            assert_eq!(value.bytes.len(), head + 1, "write {made}: {mine:?}");
            assert_eq!(value.kept().version(origin(&here, CACHED_AT)), mine);
            let theirs = there.next(CACHED_AT);
            let value = in_l1(&tagged(BYTES, b"v"), theirs, origin(&here, CACHED_AT));
            let head = if made < 16 { 3 } else { 4 };
            assert!(value.bytes.len() <= head + 1, "write {made}: {theirs:?}");
            assert_eq!(value.kept().version(origin(&here, CACHED_AT)), theirs);
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
                    assert!(value.bytes.len() <= MOST_HEAD_BYTES + 2);
                    let version = value.kept().version(at);
                    assert_eq!(version, Version(v), "{v:#x} at {cached_at}");
                    assert_eq!(value.kept().parts(), (JSON, &b"{}"[..]));
                    let kept = value.kept().portable(at);
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
            assert_eq!(inline(&value).version(at), Version::ZERO, "code {code}");
            assert_eq!(inline(&value).parts(), (JSON, &b"[]"[..]));
        }
    }
}
