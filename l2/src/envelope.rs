//! The stored form of a value in Redis: a small header with the metadata an L2 hit must
//! restore (the write's version, when the value was cached, when it expires) and the
//! value, lz4-compressed when it is over 1 KiB and compression actually makes it smaller.
//! A deletion is stored too, for a while, as a tombstone: a header with no value, so
//! that a write older than the deletion that reaches Redis after it is refused.
//!
//! Layout: `format (1) | flags (1) | write version (16 hex digits) | cached_at_ms (8, LE)
//! | expires_at_ms (8, LE; 0 = never) | payload`. The version is text at a fixed offset
//! so that the Redis script that keeps the newer write can read it (`client.rs`).
//! Format 1 (no version) is still read, as version zero.

use crate::version::Version;

pub const VERSION: u8 = 2;
const FORMAT_1: u8 = 1;
const COMPRESSED: u8 = 1;
const TOMBSTONE: u8 = 2;
const HEADER: usize = 34;
const HEADER_1: usize = 18;
/// Where the version's hex digits are (1-based for Lua's `string.sub`: 3 to 18).
pub const VERSION_AT: usize = 2;
/// How much of a stored value's start says which write it is (format, flags, version).
pub const HEADER_VERSION_BYTES: usize = VERSION_AT + 16;
/// Values at least this large are compressed.
pub const COMPRESS_FROM: usize = 1024;
const MAX_LZ4_RATIO: usize = 255;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub value: Vec<u8>,
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub version: Version,
}

/// What a key holds in Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stored {
    Value(Envelope),
    /// Deleted by the write with this version.
    Tombstone(Version),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("stored value is {0} bytes, shorter than the {HEADER}-byte envelope header")]
    Truncated(usize),
    #[error("stored value has envelope version {0}; this build reads version {VERSION}")]
    Version(u8),
    #[error("stored value does not decompress: {0}")]
    Corrupt(String),
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        let compressed = (self.value.len() >= COMPRESS_FROM)
            .then(|| lz4_flex::compress_prepend_size(&self.value))
            .filter(|c| c.len() < self.value.len());
        let payload = compressed.as_deref().unwrap_or(&self.value);
        let flags = if compressed.is_some() { COMPRESSED } else { 0 };
        let mut out = header(flags, self.version, self.cached_at_ms, self.expires_at_ms);
        out.extend_from_slice(payload);
        out
    }

    /// A tombstone for a deletion with this version.
    pub fn tombstone(version: Version) -> Vec<u8> {
        header(TOMBSTONE, version, 0, None)
    }

    /// The version of the live value whose stored form starts with `head` (at least
    /// [`HEADER_VERSION_BYTES`] of it); `None` for a tombstone or a header this build
    /// cannot read.
    pub fn live_version(head: &[u8]) -> Option<Version> {
        match (head.first(), head.get(1)) {
            (Some(&VERSION), Some(flags)) if flags & TOMBSTONE == 0 => {
                Version::from_hex(head.get(VERSION_AT..VERSION_AT + 16)?)
            }
            (Some(&FORMAT_1), Some(_)) => Some(Version::ZERO),
            _ => None,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Stored, DecodeError> {
        if bytes.len() < HEADER_1 {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        let (header_len, version) = match bytes[0] {
            VERSION if bytes.len() >= HEADER => (
                HEADER,
                Version::from_hex(&bytes[VERSION_AT..VERSION_AT + 16])
                    .ok_or_else(|| DecodeError::Corrupt("the write version is not hex".into()))?,
            ),
            VERSION => return Err(DecodeError::Truncated(bytes.len())),
            FORMAT_1 => (HEADER_1, Version::ZERO),
            other => return Err(DecodeError::Version(other)),
        };
        if bytes[1] & TOMBSTONE != 0 {
            return Ok(Stored::Tombstone(version));
        }
        let times = header_len - 16;
        let word = |at: usize| {
            u64::from_le_bytes(
                bytes[times + at..times + at + 8]
                    .try_into()
                    .expect("8 bytes"),
            )
        };
        let payload = &bytes[header_len..];
        let value = if bytes[1] & COMPRESSED != 0 {
            // lz4_flex stops quietly at the end of a truncated block, so the length it
            // promised is checked here.
            let corrupt = |why: String| DecodeError::Corrupt(why);
            let size = payload
                .get(..4)
                .ok_or_else(|| corrupt("no length prefix".into()))?;
            let size = u32::from_le_bytes(size.try_into().expect("4 bytes")) as usize;
            // An lz4 block expands at most 255 times; a larger claim would only make the
            // decoder allocate it before failing.
            let block = &payload[4..];
            if size > block.len().saturating_mul(MAX_LZ4_RATIO) {
                return Err(corrupt(format!(
                    "claims {size} bytes from a {}-byte lz4 block",
                    block.len()
                )));
            }
            let value = lz4_flex::decompress(block, size).map_err(|e| corrupt(e.to_string()))?;
            if value.len() != size {
                return Err(corrupt(format!(
                    "decompressed to {} bytes, expected {size}",
                    value.len()
                )));
            }
            value
        } else {
            payload.to_vec()
        };
        let expires = word(8);
        Ok(Stored::Value(Envelope {
            value,
            cached_at_ms: word(0),
            expires_at_ms: (expires != 0).then_some(expires),
            version,
        }))
    }
}

fn header(flags: u8, version: Version, cached_at_ms: u64, expires_at_ms: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + 64);
    out.push(VERSION);
    out.push(flags);
    out.extend_from_slice(version.hex().as_bytes());
    out.extend_from_slice(&cached_at_ms.to_le_bytes());
    out.extend_from_slice(&expires_at_ms.unwrap_or(0).to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_length_prefix_no_block_could_hold_is_refused_before_allocating() {
        let mut bytes = Envelope {
            value: vec![7; 4096],
            cached_at_ms: 1,
            expires_at_ms: None,
            version: Version(3),
        }
        .encode();
        assert_eq!(bytes[1], COMPRESSED);
        bytes[HEADER..HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Envelope::decode(&bytes),
            Err(DecodeError::Corrupt(_))
        ));
    }

    #[test]
    fn large_compressible_values_are_compressed_and_small_ones_are_not() {
        let big = Envelope {
            value: vec![b'a'; 10_000],
            cached_at_ms: 5,
            expires_at_ms: Some(9),
            version: Version(77),
        };
        let encoded = big.encode();
        assert_eq!(encoded[1], COMPRESSED);
        assert!(encoded.len() < 200);
        assert_eq!(Envelope::decode(&encoded).unwrap(), Stored::Value(big));
        let small = Envelope {
            value: b"{\"id\":1}".to_vec(),
            cached_at_ms: 1,
            expires_at_ms: None,
            version: Version::ZERO,
        };
        assert_eq!(small.encode()[1], 0);
        assert_eq!(small.encode().len(), HEADER + 8);
    }

    #[test]
    fn tombstones_and_format_1_values_decode() {
        let tombstone = Envelope::tombstone(Version(42));
        assert_eq!(&tombstone[VERSION_AT..VERSION_AT + 16], b"000000000000002a");
        assert_eq!(
            Envelope::decode(&tombstone),
            Ok(Stored::Tombstone(Version(42)))
        );
        let mut old = vec![FORMAT_1, 0];
        old.extend_from_slice(&5u64.to_le_bytes());
        old.extend_from_slice(&0u64.to_le_bytes());
        old.extend_from_slice(b"jv");
        let Ok(Stored::Value(e)) = Envelope::decode(&old) else {
            panic!("{:?}", Envelope::decode(&old))
        };
        assert_eq!(
            (e.value, e.cached_at_ms, e.version),
            (b"jv".to_vec(), 5, Version::ZERO)
        );
    }

    #[test]
    fn bad_input_is_named() {
        assert_eq!(Envelope::decode(b"short"), Err(DecodeError::Truncated(5)));
        let mut v = Envelope {
            value: vec![],
            cached_at_ms: 0,
            expires_at_ms: None,
            version: Version(1),
        }
        .encode();
        v[0] = 9;
        assert_eq!(Envelope::decode(&v), Err(DecodeError::Version(9)));
        let mut c = Envelope {
            value: vec![b'z'; 4096],
            cached_at_ms: 0,
            expires_at_ms: None,
            version: Version(1),
        }
        .encode();
        c.truncate(HEADER + 6);
        assert!(matches!(Envelope::decode(&c), Err(DecodeError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn every_envelope_round_trips(
            value in prop::collection::vec(any::<u8>(), 0..5000),
            repeat in any::<bool>(),
            cached in any::<u64>(),
            expires in prop::option::of(1u64..),
        ) {
            let value = if repeat { value.iter().flat_map(|b| [*b; 4]).collect() } else { value };
            let e = Envelope { value, cached_at_ms: cached, expires_at_ms: expires, version: Version(cached ^ 0x5555) };
            prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), Stored::Value(e));
        }

        #[test]
        fn no_bytes_make_decoding_panic(bytes in prop::collection::vec(any::<u8>(), 0..100)) {
            let _ = Envelope::decode(&bytes);
        }
    }
}
