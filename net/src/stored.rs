//! How values are kept. A value is one tag byte, then the bytes. `j`: a JSON value as the
//! exact text it arrived as; `b`: raw bytes; `n`: the origin said there is no such key
//! (negative caching, L1 only, for CACHE_NEGATIVE_TTL).
//!
//! In L1 the tag is followed by the version of the write that stored the value (8 bytes,
//! little-endian), so that a coherence event for a version an instance already holds
//! leaves its entry alone. In L2 the version is in the envelope's header instead.

use l2::Version;

pub const JSON: u8 = b'j';
pub const BYTES: u8 = b'b';
pub const ABSENT: u8 = b'n';

const VERSION_BYTES: usize = 8;

/// A value as a client or the origin gave it: the tag, then the bytes (L2's form).
pub fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(bytes.len() + 1);
    stored.push(tag);
    stored.extend_from_slice(bytes);
    stored
}

/// L1's form of a tagged value written with `version`.
pub fn in_l1(tagged: &[u8], version: Version) -> Vec<u8> {
    let (tag, bytes) = tagged.split_first().unwrap_or((&ABSENT, &[]));
    let mut stored = Vec::with_capacity(bytes.len() + 1 + VERSION_BYTES);
    stored.push(*tag);
    stored.extend_from_slice(&version.0.to_le_bytes());
    stored.extend_from_slice(bytes);
    stored
}

/// The tag and the bytes of an L1 value.
pub fn parts(in_l1: &[u8]) -> (u8, &[u8]) {
    match in_l1.split_first() {
        Some((tag, rest)) => (*tag, rest.get(VERSION_BYTES..).unwrap_or_default()),
        None => (ABSENT, &[]),
    }
}

/// The tagged form (L2's) of an L1 value.
pub fn tagged_of(in_l1: &[u8]) -> Vec<u8> {
    let (tag, bytes) = parts(in_l1);
    tagged(tag, bytes)
}

/// The version of the write that stored an L1 value.
pub fn version(in_l1: &[u8]) -> Version {
    in_l1.get(1..1 + VERSION_BYTES).map_or(Version::ZERO, |b| {
        Version(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    })
}

/// Whether bytes have L1's form: a known tag and a version.
pub fn is_l1_form(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(&(JSON | BYTES | ABSENT))) && bytes.len() > VERSION_BYTES
}

pub fn is_absent(in_l1: &[u8]) -> bool {
    in_l1.first() == Some(&ABSENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_values_carry_their_version_and_convert_both_ways() {
        let value = in_l1(&tagged(JSON, b"[1]"), Version(0x0102));
        assert_eq!(parts(&value), (JSON, &b"[1]"[..]));
        assert_eq!(version(&value), Version(0x0102));
        assert_eq!(tagged_of(&value), b"j[1]");
        let absent = in_l1(&[ABSENT], Version::ZERO);
        assert!(is_absent(&absent));
        assert_eq!(parts(&absent), (ABSENT, &b""[..]));
        assert_eq!(parts(b""), (ABSENT, &b""[..]));
        assert_eq!(version(b"j"), Version::ZERO);
        assert!(is_l1_form(&value) && is_l1_form(&absent));
        assert!(!is_l1_form(b"j1234567") && !is_l1_form(b"x12345678[1]"));
    }
}
