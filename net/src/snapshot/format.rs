//! The snapshot file's bytes, with no I/O: a header, blocks of entries each with its own
//! CRC-32, and a trailer that counts them.
//!
//! ```text
//! header   magic "cm-snap\n" (8) | format (u32) | cores (u32) | saved_at_ms (u64) | crc32 of the 24 bytes before (u32)
//! block    "BLK\0" | payload length (u32) | entries (u32) | crc32 of the payload (u32) | payload
//! entry    key length (u32) | value length (u32) | cached_at_ms (u64) | expires_at_ms (u64, 0 = never)
//!          | frequency (u8) | region (u8) | key | value
//! trailer  "END\0" | blocks (u64) | entries (u64) | crc32 of the 20 bytes before (u32)
//! ```
//!
//! Integers are little-endian. A block is checked whole before any of its entries is
//! used, so a damaged block costs its own entries and nothing is ever served from bytes
//! that failed their check. The value is the tag, the write's version whole (8 bytes) and the
//! bytes (`stored::portable`; L1 keeps the version shorter).

use engine::{Region, SavedEntry, Standing, MAX_FREQUENCY};

pub const MAGIC: &[u8; 8] = b"cm-snap\n";
/// The format this build writes and reads.
pub const FORMAT: u32 = 1;
pub const HEADER_BYTES: usize = 28;
const BLOCK_TAG: &[u8; 4] = b"BLK\0";
pub const BLOCK_HEADER_BYTES: usize = 16;
const TRAILER_TAG: &[u8; 4] = b"END\0";
pub const TRAILER_BYTES: usize = 24;
const ENTRY_HEADER_BYTES: usize = 26;

/// What the header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Cores (shards) of the instance that saved it.
    pub cores: u32,
    pub saved_at_ms: u64,
}

/// What the trailer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    pub blocks: u64,
    pub entries: u64,
}

/// Why (part of) a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not a cache-manager snapshot (its first bytes are not the snapshot magic)")]
    Foreign,
    #[error("snapshot format {found}, but this build reads format {FORMAT}")]
    Version { found: u32 },
    #[error("the header's checksum does not match")]
    HeaderChecksum,
    #[error("the file ends inside the header ({0} bytes)")]
    ShortHeader(usize),
    #[error("a block's header is damaged (tag {0:?})")]
    BlockTag([u8; 4]),
    #[error("a block claims {claimed} bytes but only {left} are left in the file")]
    BlockLength { claimed: u64, left: u64 },
    #[error("a block's checksum does not match")]
    BlockChecksum,
    #[error("a block's entries do not fit its payload: {0}")]
    BlockEntries(String),
    #[error("the trailer is damaged")]
    Trailer,
}

/// Builds one block of entries.
pub struct BlockBuilder {
    bytes: Vec<u8>,
    entries: u32,
}

impl Default for BlockBuilder {
    fn default() -> Self {
        Self {
            bytes: vec![0; BLOCK_HEADER_BYTES],
            entries: 0,
        }
    }
}

impl BlockBuilder {
    pub fn push(&mut self, entry: &SavedEntry<'_>) {
        debug_assert_eq!(
            entry.flags, 0,
            "a snapshot keeps values in their portable form, whose tag is in the bytes"
        );
        let b = &mut self.bytes;
        b.extend_from_slice(&(entry.key.len() as u32).to_le_bytes());
        b.extend_from_slice(&(entry.value.len() as u32).to_le_bytes());
        b.extend_from_slice(&entry.cached_at_ms.to_le_bytes());
        b.extend_from_slice(&entry.expires_at_ms.unwrap_or(0).to_le_bytes());
        b.push(entry.standing.frequency);
        b.push(entry.standing.region as u8);
        b.extend_from_slice(entry.key);
        b.extend_from_slice(entry.value);
        self.entries += 1;
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// The block's bytes, header included.
    pub fn finish(mut self) -> Vec<u8> {
        let payload_len = (self.bytes.len() - BLOCK_HEADER_BYTES) as u32;
        let crc = crc32fast::hash(&self.bytes[BLOCK_HEADER_BYTES..]);
        let head = &mut self.bytes[..BLOCK_HEADER_BYTES];
        head[..4].copy_from_slice(BLOCK_TAG);
        head[4..8].copy_from_slice(&payload_len.to_le_bytes());
        head[8..12].copy_from_slice(&self.entries.to_le_bytes());
        head[12..16].copy_from_slice(&crc.to_le_bytes());
        self.bytes
    }
}

pub fn encode_header(header: Header) -> [u8; HEADER_BYTES] {
    let mut out = [0; HEADER_BYTES];
    out[..8].copy_from_slice(MAGIC);
    out[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    out[12..16].copy_from_slice(&header.cores.to_le_bytes());
    out[16..24].copy_from_slice(&header.saved_at_ms.to_le_bytes());
    let crc = crc32fast::hash(&out[..24]);
    out[24..].copy_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_header(bytes: &[u8]) -> Result<Header, FormatError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(if bytes.len() < MAGIC.len() && MAGIC.starts_with(bytes) {
            FormatError::ShortHeader(bytes.len())
        } else {
            FormatError::Foreign
        });
    }
    if bytes.len() < HEADER_BYTES {
        return Err(FormatError::ShortHeader(bytes.len()));
    }
    let found = u32_at(bytes, 8);
    if crc32fast::hash(&bytes[..24]) != u32_at(bytes, 24) {
        return Err(FormatError::HeaderChecksum);
    }
    if found != FORMAT {
        return Err(FormatError::Version { found });
    }
    Ok(Header {
        cores: u32_at(bytes, 12),
        saved_at_ms: u64_at(bytes, 16),
    })
}

pub fn encode_trailer(trailer: Trailer) -> [u8; TRAILER_BYTES] {
    let mut out = [0; TRAILER_BYTES];
    out[..4].copy_from_slice(TRAILER_TAG);
    out[4..12].copy_from_slice(&trailer.blocks.to_le_bytes());
    out[12..20].copy_from_slice(&trailer.entries.to_le_bytes());
    let crc = crc32fast::hash(&out[..20]);
    out[20..].copy_from_slice(&crc.to_le_bytes());
    out
}

/// What follows the header or a block: another block (its payload length and entry
/// count) or the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Block {
        payload_len: u32,
        entries: u32,
        crc: u32,
    },
    Trailer,
}

/// Reads the four-byte tag and what a block header says; `left` is what the file holds
/// after these `BLOCK_HEADER_BYTES` bytes.
pub fn decode_next(bytes: &[u8; BLOCK_HEADER_BYTES], left: u64) -> Result<Next, FormatError> {
    let tag: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
    if &tag == TRAILER_TAG {
        return Ok(Next::Trailer);
    }
    if &tag != BLOCK_TAG {
        return Err(FormatError::BlockTag(tag));
    }
    let payload_len = u32_at(bytes, 4);
    if u64::from(payload_len) > left {
        return Err(FormatError::BlockLength {
            claimed: payload_len.into(),
            left,
        });
    }
    Ok(Next::Block {
        payload_len,
        entries: u32_at(bytes, 8),
        crc: u32_at(bytes, 12),
    })
}

pub fn decode_trailer(bytes: &[u8]) -> Result<Trailer, FormatError> {
    if bytes.len() != TRAILER_BYTES
        || &bytes[..4] != TRAILER_TAG
        || crc32fast::hash(&bytes[..20]) != u32_at(bytes, 20)
    {
        return Err(FormatError::Trailer);
    }
    Ok(Trailer {
        blocks: u64_at(bytes, 4),
        entries: u64_at(bytes, 12),
    })
}

/// A checked block's entries, borrowed from its payload. The whole payload is checked
/// (checksum, then every entry's bounds and fields) before the first entry is returned.
pub fn decode_block(
    payload: &[u8],
    entries: u32,
    crc: u32,
) -> Result<Vec<SavedEntry<'_>>, FormatError> {
    if crc32fast::hash(payload) != crc {
        return Err(FormatError::BlockChecksum);
    }
    let bad = |why: String| FormatError::BlockEntries(why);
    let mut out = Vec::with_capacity((entries as usize).min(payload.len() / ENTRY_HEADER_BYTES));
    let mut at = 0;
    while at < payload.len() {
        let head = payload
            .get(at..at + ENTRY_HEADER_BYTES)
            .ok_or_else(|| bad(format!("an entry's header is cut off at byte {at}")))?;
        let key_len = u32_at(head, 0) as usize;
        let value_len = u32_at(head, 4) as usize;
        let expires = u64_at(head, 16);
        let frequency = head[24];
        let region = Region::from_index(head[25])
            .ok_or_else(|| bad(format!("region {} is not a region", head[25])))?;
        if frequency > MAX_FREQUENCY {
            return Err(bad(format!(
                "frequency {frequency} is over {MAX_FREQUENCY}"
            )));
        }
        let start = at + ENTRY_HEADER_BYTES;
        let end = start
            .checked_add(key_len)
            .and_then(|e| e.checked_add(value_len))
            .filter(|&e| e <= payload.len())
            .ok_or_else(|| bad(format!("an entry at byte {at} runs past the block")))?;
        out.push(SavedEntry {
            key: &payload[start..start + key_len],
            value: &payload[start + key_len..end],
            // The portable form: its tag is in its bytes.
            flags: 0,
            cached_at_ms: u64_at(head, 8),
            expires_at_ms: (expires != 0).then_some(expires),
            standing: Standing { frequency, region },
        });
        at = end;
    }
    if out.len() != entries as usize {
        return Err(bad(format!(
            "the header counts {entries} entries, the payload holds {}",
            out.len()
        )));
    }
    Ok(out)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(key: &'a [u8], value: &'a [u8], expires: Option<u64>) -> SavedEntry<'a> {
        SavedEntry {
            key,
            value,
            flags: 0,
            cached_at_ms: 1_700_000_000_000,
            expires_at_ms: expires,
            standing: Standing {
                frequency: 7,
                region: Region::Protected,
            },
        }
    }

    fn parts(block: &[u8]) -> (Next, &[u8]) {
        let head: &[u8; BLOCK_HEADER_BYTES] = block[..BLOCK_HEADER_BYTES].try_into().unwrap();
        let next = decode_next(head, (block.len() - BLOCK_HEADER_BYTES) as u64).unwrap();
        (next, &block[BLOCK_HEADER_BYTES..])
    }

    #[test]
    fn blocks_round_trip_and_every_flipped_bit_is_caught() {
        let mut builder = BlockBuilder::default();
        builder.push(&entry(b"k1", b"j[1]", Some(1_700_000_060_000)));
        builder.push(&entry(b"", b"", None));
        builder.push(&entry(b"k3", &[0xff; 300], None));
        let block = builder.finish();
        let (
            Next::Block {
                payload_len,
                entries,
                crc,
            },
            payload,
        ) = parts(&block)
        else {
            panic!("a block")
        };
        assert_eq!(payload_len as usize, payload.len());
        let decoded = decode_block(payload, entries, crc).unwrap();
        assert_eq!(decoded.len(), 3);
        assert_eq!(decoded[0], entry(b"k1", b"j[1]", Some(1_700_000_060_000)));
        assert_eq!(decoded[1], entry(b"", b"", None));
        assert_eq!(decoded[2].value, &[0xff; 300][..]);
        for bit in 0..payload.len() * 8 {
            let mut damaged = payload.to_vec();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_block(&damaged, entries, crc).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn headers_say_what_is_wrong() {
        let header = Header {
            cores: 4,
            saved_at_ms: 1_700_000_000_000,
        };
        let bytes = encode_header(header);
        assert_eq!(decode_header(&bytes), Ok(header));
        assert_eq!(
            decode_header(b"PK\x03\x04 a zip file....."),
            Err(FormatError::Foreign)
        );
        assert_eq!(decode_header(&bytes[..5]), Err(FormatError::ShortHeader(5)));
        assert_eq!(
            decode_header(&bytes[..20]),
            Err(FormatError::ShortHeader(20))
        );
        let mut future = bytes;
        future[8] = 9;
        let crc = crc32fast::hash(&future[..24]);
        future[24..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_header(&future),
            Err(FormatError::Version { found: 9 })
        );
        let mut damaged = bytes;
        damaged[17] ^= 4;
        assert_eq!(decode_header(&damaged), Err(FormatError::HeaderChecksum));
    }

    #[test]
    fn block_headers_and_trailers_are_checked() {
        let trailer = Trailer {
            blocks: 3,
            entries: 1000,
        };
        let bytes = encode_trailer(trailer);
        assert_eq!(decode_trailer(&bytes), Ok(trailer));
        let mut damaged = bytes;
        damaged[5] ^= 1;
        assert_eq!(decode_trailer(&damaged), Err(FormatError::Trailer));
        let head: [u8; BLOCK_HEADER_BYTES] = bytes[..BLOCK_HEADER_BYTES].try_into().unwrap();
        assert_eq!(decode_next(&head, 0), Ok(Next::Trailer));
        let mut builder = BlockBuilder::default();
        builder.push(&entry(b"k", b"v", None));
        let block = builder.finish();
        let head: [u8; BLOCK_HEADER_BYTES] = block[..BLOCK_HEADER_BYTES].try_into().unwrap();
        assert!(matches!(
            decode_next(&head, 3),
            Err(FormatError::BlockLength { left: 3, .. })
        ));
        let mut garbage = head;
        garbage[0] = b'X';
        assert!(matches!(
            decode_next(&garbage, 1 << 20),
            Err(FormatError::BlockTag(_))
        ));
    }

    #[test]
    fn entries_that_lie_about_their_shape_are_refused() {
        let mut builder = BlockBuilder::default();
        builder.push(&entry(b"k", b"v", None));
        let block = builder.finish();
        let (Next::Block { entries, .. }, payload) = parts(&block) else {
            panic!("a block")
        };
        // Each lie, with a checksum that matches it: only the structure can catch it.
        let lie = |change: &dyn Fn(&mut Vec<u8>), entries: u32| {
            let mut p = payload.to_vec();
            change(&mut p);
            let crc = crc32fast::hash(&p);
            decode_block(&p, entries, crc).map(|e| e.len())
        };
        assert!(lie(&|_| {}, entries + 1).is_err(), "entry count");
        assert!(lie(&|p| p[0] = 200, entries).is_err(), "key past the end");
        assert!(lie(&|p| p[24] = 16, entries).is_err(), "frequency");
        assert!(lie(&|p| p[25] = 3, entries).is_err(), "region");
        assert!(lie(&|p| p.truncate(10), entries).is_err(), "cut header");
        assert!(lie(&|p| p.push(0), entries).is_err(), "trailing byte");
        assert_eq!(lie(&|_| {}, entries), Ok(1));
    }
}
