//! How values are kept in L1 and L2: one tag byte, then the bytes. `j`: a JSON value as
//! the exact text it arrived as; `b`: raw bytes; `n`: the origin said there is no such
//! key (negative caching, L1 only, for CACHE_NEGATIVE_TTL).

pub const JSON: u8 = b'j';
pub const BYTES: u8 = b'b';
pub const ABSENT: u8 = b'n';

pub fn tagged(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(bytes.len() + 1);
    stored.push(tag);
    stored.extend_from_slice(bytes);
    stored
}

pub fn is_absent(stored: &[u8]) -> bool {
    stored.first() == Some(&ABSENT)
}
