//! A node: one entry in one slab block, a 16-byte header followed by the key's length,
//! the key, the value's length (its low two bits in the header) and the value. What the
//! header keeps and what it leaves out (and why) is on [`Node`]; how an entry's times fit
//! in 8 bytes is on [`Lifetime`].
//! Building and freeing nodes, reading their keys and values, and telling keys apart
//! live here; linking them into chains and reading them safely from other threads is
//! the table's (`table.rs`).

use std::ptr::{self, NonNull};
use std::sync::atomic::Ordering::Relaxed;

use crate::reclaim::Retirable;
use crate::slab::{Directory, Handle, Slab};
use crate::sync::{AtomicU32, SharedCell};

/// Deadline of an entry that never expires.
pub(crate) const NEVER: u64 = u64::MAX;

/// The longest key a node can hold (the engine's limit; a node keeps the length as LEB128).
pub(crate) const MAX_KEY_LEN: usize = u16::MAX as usize;

/// Bits of a node's slot word that hold its policy slot.
const SLOT_BITS: u32 = 27;

/// The most entries a table holds: a node keeps its policy slot in [`SLOT_BITS`] bits
/// (the policy names no more slots either, `eviction::MAX_SLOTS`).
pub(crate) const MAX_ENTRIES: usize = (1 << SLOT_BITS) - 1;

/// The bit of a node's slot word that says whether a reader hit it since the policy
/// last looked.
const HIT: u32 = 1;

/// Where the value length's low two bits start in the slot word, above the slot. The
/// payload keeps the rest (LEB128), so a length below 512 bytes takes one byte there,
/// not two above 127. (One of these bits said whether the node is an allocation of its
/// own rather than a slab block; where the node is says that now: `Slab::free`.)
const LENGTH_LOW_SHIFT: u32 = SLOT_BITS + 1;

/// The value length's bits the slot word keeps.
const LENGTH_LOW: usize = 3;

/// Bits of a node's slot word, above the value length's low bits, that keep the entry's
/// flags.
pub const FLAG_BITS: u32 = 2;

/// The largest flags an entry keeps: two bits its user gives it meaning (as memcached's
/// client flags), kept in the header's spare bits rather than in the value, where the
/// service's one-byte tag took a byte of every entry (4 with the block's rounding).
pub const MAX_FLAGS: u8 = (1 << FLAG_BITS) - 1;

/// Where the flags start in the slot word.
const FLAGS_SHIFT: u32 = LENGTH_LOW_SHIFT + 2;

const _: () = assert!(FLAGS_SHIFT + FLAG_BITS == u32::BITS);

/// A node's header: 16 bytes. The key's length and bytes, the value's length and the
/// value's bytes follow it in the same slab block (`slab.rs`), so a lookup that reaches
/// the header finds the key on the same cache line and an entry is one block. The
/// payload is only ever reached through the block's own pointer (see [`payload`]), never
/// through a `&Node`, whose provenance covers the header alone.
///
/// What it leaves out: the key's hash (its high half picks the shard; the low half picks
/// the bucket, which the writer knows whenever it unlinks a node, hashing the key again,
/// and is what the eviction policy's sketch counts by; readers tell keys apart by their
/// length and bytes, on the line they load anyway), the stale deadline (the expiry plus
/// the table's one stale window), the upper bits of times (42 bits of milliseconds reach
/// the year 2109; an expiry is kept relative to `cached_at` in 22 bits, see
/// [`Lifetime`]), the next node's address (its 32-bit [`Handle`] instead), and the
/// lengths of the key and the value: LEB128 in the payload, 1 byte below 128 bytes (512
/// for a value, whose low two bits are in the header) and 2 below 16 KiB (64 KiB), where
/// a fixed field would take 2 and 4.
#[repr(C)]
pub(crate) struct Node {
    /// The next node of the chain: its handle's bits, or 0 at the chain's end.
    pub(super) next: AtomicU32,
    /// The entry's policy slot (an overwrite keeps it) in bits 1 to [`SLOT_BITS`], above
    /// [`HIT`]; the value length's low two bits above it ([`LENGTH_LOW_SHIFT`]) and the
    /// entry's flags ([`FLAG_BITS`]) at the top. Readers only ever set [`HIT`], storing
    /// the other bits back as they found them, which never change.
    slot_and_hit: AtomicU32,
    /// `cached_at_ms << LIFETIME_BITS | lifetime`, low word first (two words, so that
    /// the header needs 4-byte alignment only).
    times: [u32; 2],
    /// Zero-sized in normal builds. Under loom every payload read goes through it and
    /// reclamation writes it, so a read racing a free is reported.
    payload_access: SharedCell<()>,
}

/// Bytes of a node's header.
pub(crate) const HEADER_BYTES: usize = std::mem::size_of::<Node>();

const _: () = assert!(std::mem::align_of::<Node>() <= crate::slab::GRAIN);

/// Bits of a node's times that hold its [`Lifetime`]; `cached_at_ms` has the rest.
const LIFETIME_BITS: u32 = 22;

/// The latest `cached_at_ms` a header holds (42 bits, the year 2109); later times are
/// stored as this.
pub const LATEST_CACHED_AT_MS: u64 = (1 << (64 - LIFETIME_BITS)) - 1;

/// When an entry expires, relative to when it was cached, in [`LIFETIME_BITS`] bits: a
/// count of 20 bits in one of four units, the smallest that holds it, rounded up (so
/// never early), or never. A lifetime is exact to the millisecond up to 17 minutes, and
/// a whole number of seconds (every TTL the API takes) is exact up to 12 days; longer
/// ones end up to a minute late (up to 2 years), or an hour (up to 119 years).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lifetime(u32);

impl Lifetime {
    const COUNT_BITS: u32 = LIFETIME_BITS - 2;
    const MOST_COUNT: u64 = (1 << Lifetime::COUNT_BITS) - 1;
    /// Each unit in milliseconds, by its code (the two bits above the count).
    const UNIT_MS: [u64; 4] = [1, 1_000, 60_000, 3_600_000];
    /// The all-ones pattern; the longest unit counts up to one below it.
    const FOREVER: Lifetime = Lifetime((1 << LIFETIME_BITS) - 1);

    fn new(cached_at_ms: u64, expires_at_ms: u64) -> Lifetime {
        if expires_at_ms == NEVER {
            return Lifetime::FOREVER;
        }
        let ms = expires_at_ms.saturating_sub(cached_at_ms);
        // Each unit's count, rounded up, in the smallest unit that holds it (constant
        // divisors: multiplications).
        let seconds = ms.div_ceil(Lifetime::UNIT_MS[1]);
        let (code, count) = if ms <= Lifetime::MOST_COUNT {
            (0, ms)
        } else if seconds <= Lifetime::MOST_COUNT {
            (1, seconds)
        } else if ms.div_ceil(Lifetime::UNIT_MS[2]) <= Lifetime::MOST_COUNT {
            (2, ms.div_ceil(Lifetime::UNIT_MS[2]))
        } else {
            // The all-ones count of the longest unit is FOREVER: past 119 years, the
            // longest lifetime short of never.
            (
                3,
                ms.div_ceil(Lifetime::UNIT_MS[3])
                    .min(Lifetime::MOST_COUNT - 1),
            )
        };
        Lifetime(code << Lifetime::COUNT_BITS | count as u32)
    }

    #[inline(always)]
    fn expires_at_ms(self, cached_at_ms: u64) -> u64 {
        if self == Lifetime::FOREVER {
            return NEVER;
        }
        let unit = Lifetime::UNIT_MS[(self.0 >> Lifetime::COUNT_BITS) as usize & 3];
        cached_at_ms + (u64::from(self.0) & Lifetime::MOST_COUNT) * unit
    }
}

/// What the writer needs to build a node.
pub(crate) struct NewEntry<'a> {
    pub hash: u64,
    pub key: &'a [u8],
    pub value: &'a [u8],
    /// At most [`MAX_FLAGS`].
    pub flags: u8,
    pub slot: u32,
    pub cached_at_ms: u64,
    pub expires_at_ms: u64,
    pub hit: bool,
}

/// The bytes of a node with this key and value length.
pub(crate) const fn node_bytes(key_len: usize, value_len: usize) -> usize {
    HEADER_BYTES + length_bytes(key_len) + key_len + length_bytes(value_len >> 2) + value_len
}

/// Bytes of a key's or a value's length in the payload: LEB128, 7 bits a byte.
const fn length_bytes(len: usize) -> usize {
    (usize::BITS - (len | 1).leading_zeros()).div_ceil(7) as usize
}

/// Writes `len` as LEB128 at `at`; where the bytes after it start.
///
/// # Safety
/// `at` is valid for writes of [`length_bytes`]`(len)` bytes.
unsafe fn write_length(mut at: *mut u8, len: usize) -> *mut u8 {
    let mut rest = len;
    // SAFETY: LEB128 takes `length_bytes(len)` bytes, which the caller provides.
    unsafe {
        while rest >= 0x80 {
            at.write(rest as u8 | 0x80);
            at = at.add(1);
            rest >>= 7;
        }
        at.write(rest as u8);
        at.add(1)
    }
}

/// Reads a length [`write_length`] wrote at `at`; where the bytes after it start. Lengths
/// below 16 KiB (one or two bytes) are read inline, longer ones out of line.
///
/// # Safety
/// `at` holds such a length, readable through `at`'s provenance.
#[inline(always)]
unsafe fn read_length(at: *const u8) -> (usize, *const u8) {
    // SAFETY: the caller's contract: the length's bytes run up to the first without its
    // top bit, and what follows them is in the same block.
    unsafe {
        let first = at.read();
        if first < 0x80 {
            return (usize::from(first), at.add(1));
        }
        let second = at.add(1).read();
        if second < 0x80 {
            let len = usize::from(first & 0x7F) | usize::from(second) << 7;
            return (len, at.add(2));
        }
        read_long_length(at)
    }
}

/// [`read_length`] of a length of three bytes or more (16 KiB and up).
///
/// # Safety
/// As for [`read_length`].
#[cold]
#[inline(never)]
unsafe fn read_long_length(mut at: *const u8) -> (usize, *const u8) {
    let mut len = 0usize;
    let mut shift = 0;
    // SAFETY: the caller's contract: the bytes up to the one without its top bit (at
    // most 5, lengths being below 2^32) are the length's.
    unsafe {
        loop {
            let byte = at.read();
            at = at.add(1);
            len |= usize::from(byte & 0x7F) << shift;
            if byte & 0x80 == 0 {
                return (len, at);
            }
            shift += 7;
        }
    }
}

/// An expiry as the API gives it: `None` for [`NEVER`].
pub(crate) fn expiry(expires_at_ms: u64) -> Option<u64> {
    (expires_at_ms != NEVER).then_some(expires_at_ms)
}

/// Allocates and fills a node, which `directory` names by the handle returned; the writer
/// links it.
pub(super) fn allocate(
    slab: &mut Slab,
    directory: &Directory,
    entry: NewEntry<'_>,
) -> (NonNull<Node>, Handle) {
    debug_assert!(
        entry.key.len() <= MAX_KEY_LEN,
        "the shard checks key lengths"
    );
    assert!(
        u32::try_from(entry.value.len()).is_ok(),
        "values are far below 4 GiB"
    );
    let bytes = node_bytes(entry.key.len(), entry.value.len());
    let block = slab.allocate(bytes, directory);
    let node = block.at.cast::<Node>();
    let cached_at_ms = entry.cached_at_ms.min(LATEST_CACHED_AT_MS);
    let slot = entry.slot;
    debug_assert!(
        slot as usize <= MAX_ENTRIES,
        "slots fit in {SLOT_BITS} bits"
    );
    debug_assert!(entry.flags <= MAX_FLAGS, "the shard checks flags");
    let flags = u32::from(entry.flags & MAX_FLAGS) << FLAGS_SHIFT;
    let length_low = ((entry.value.len() & LENGTH_LOW) as u32) << LENGTH_LOW_SHIFT;
    let times = cached_at_ms << LIFETIME_BITS
        | u64::from(Lifetime::new(cached_at_ms, entry.expires_at_ms).0);
    // SAFETY: `block` is a fresh slab block of at least `bytes` (`node_bytes`: the header,
    // then the key's length, the key, the value's length and the value, as written here),
    // aligned to the slab's grain (at least the header's alignment, 4); nothing else can
    // see it yet.
    unsafe {
        node.as_ptr().write(Node {
            next: AtomicU32::new(0),
            slot_and_hit: AtomicU32::new(
                flags | length_low | slot << 1 | if entry.hit { HIT } else { 0 },
            ),
            times: [times as u32, (times >> 32) as u32],
            payload_access: SharedCell::new(()),
        });
        let mut at = (node.as_ptr() as *mut u8).add(HEADER_BYTES);
        at = write_length(at, entry.key.len());
        ptr::copy_nonoverlapping(entry.key.as_ptr(), at, entry.key.len());
        at = write_length(at.add(entry.key.len()), entry.value.len() >> 2);
        ptr::copy_nonoverlapping(entry.value.as_ptr(), at, entry.value.len());
    }
    (node, block.handle)
}

/// Drops a node made by [`allocate`] and gives its block back to the slab.
///
/// # Safety
/// `node` came from `allocate` with this slab and directory, nobody reaches it any more,
/// and it is freed once.
pub(super) unsafe fn free(node: *mut Node, slab: &mut Slab, directory: &Directory) {
    // SAFETY: forwarded contract; the header and the payload say how long the node is,
    // so the size given back is the size allocated.
    unsafe {
        let node = NonNull::new_unchecked(node);
        let bytes = node_len(node);
        ptr::drop_in_place(node.as_ptr());
        slab.free(node.cast(), bytes, directory);
    }
}

impl Retirable for Node {
    #[cfg(engine_loom)]
    fn poison(&self) {
        self.payload_access.poison();
    }
}

/// Where `node`'s payload starts: the key's length, right after the header (bytes have
/// alignment 1), as `allocate` wrote it.
///
/// # Safety
/// `node` is live (linked, or protected by the caller's guard) while the payload is read.
#[inline(always)]
unsafe fn payload_start(node: NonNull<Node>) -> *const u8 {
    // SAFETY: the caller keeps the node alive; the header and the payload were written
    // before the node was published and never change (bar the atomics). The payload is
    // reached through `node`, the block's own pointer, whose provenance covers the whole
    // block.
    unsafe {
        node.as_ref().payload_access.get();
        (node.as_ptr() as *const u8).add(HEADER_BYTES)
    }
}

/// The key of `node`.
///
/// # Safety
/// `node` is live (linked, or protected by the caller's guard) for `'a`.
#[inline(always)]
unsafe fn key<'a>(node: NonNull<Node>) -> &'a [u8] {
    // SAFETY: forwarded contract; the key's length starts the payload, then the key.
    unsafe {
        let (len, start) = read_length(payload_start(node));
        std::slice::from_raw_parts(start, len)
    }
}

/// The key and value bytes of `node`.
///
/// # Safety
/// As for [`key`].
#[inline(always)]
unsafe fn payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: forwarded contract.
    unsafe {
        let key = key(node);
        (key, value_after(node.as_ref().word(), key))
    }
}

/// The key of `node` if it is `key`. A key shorter than 128 bytes, as most are, is told
/// apart by its length's one byte, compared whole (a longer key's first byte has its top
/// bit set), with nothing decoded on the way to the next node of the chain.
///
/// # Safety
/// As for [`key`].
#[inline(always)]
pub(super) unsafe fn key_if_same<'a>(node: NonNull<Node>, key: &[u8]) -> Option<&'a [u8]> {
    if key.len() >= 0x80 {
        // SAFETY: forwarded contract.
        let found = unsafe { self::key(node) };
        return same_key(found, key).then_some(found);
    }
    // SAFETY: forwarded contract; the key's length starts the payload, then the key,
    // which is `key.len()` bytes long when that length's one byte is `key.len()`.
    unsafe {
        let at = payload_start(node);
        if usize::from(at.read()) != key.len() {
            return None;
        }
        let found = std::slice::from_raw_parts(at.add(1), key.len());
        same_bytes(found, key).then_some(found)
    }
}

/// The value of the node whose slot word is `word` and whose key [`key`] gave as `key`.
///
/// # Safety
/// As for [`key`], for the node `word` was read from and `key` is the key of.
#[inline(always)]
pub(super) unsafe fn value_after(word: SlotWord, key: &[u8]) -> &[u8] {
    // SAFETY: `key` lies in its node's block and came from the block's own pointer (see
    // `key`); the value's length follows it, as `allocate` wrote it (bar its low bits,
    // which are the slot word's), then the value.
    unsafe {
        let (high, start) = read_length(key.as_ptr().add(key.len()));
        std::slice::from_raw_parts(start, high << 2 | word.value_length_low())
    }
}

impl Node {
    pub(crate) fn slot(&self) -> u32 {
        self.slot_and_hit.load(Relaxed) >> 1 & MAX_ENTRIES as u32
    }

    /// The slot word as it is now: its flags and value length bits are as they were
    /// built.
    #[inline(always)]
    pub(super) fn word(&self) -> SlotWord {
        SlotWord(self.slot_and_hit.load(Relaxed))
    }

    /// The flags the entry was stored with.
    #[inline(always)]
    pub(crate) fn flags(&self) -> u8 {
        self.word().flags()
    }

    #[inline(always)]
    fn times(&self) -> u64 {
        u64::from(self.times[1]) << 32 | u64::from(self.times[0])
    }

    #[inline(always)]
    pub(crate) fn cached_at_ms(&self) -> u64 {
        self.times() >> LIFETIME_BITS
    }

    /// When the entry expires; [`NEVER`] if it does not.
    #[inline(always)]
    pub(crate) fn expires_at_ms(&self) -> u64 {
        let times = self.times();
        Lifetime((times & ((1 << LIFETIME_BITS) - 1)) as u32).expires_at_ms(times >> LIFETIME_BITS)
    }

    /// When the entry stops being servable at all: its expiry plus the stale window.
    #[inline(always)]
    pub(crate) fn stale_until_ms(&self, stale_window_ms: u64) -> u64 {
        self.expires_at_ms().saturating_add(stale_window_ms)
    }

    /// Whether a reader hit the entry since the policy last looked.
    pub(crate) fn pending_hits(&self) -> u8 {
        (self.slot_and_hit.load(Relaxed) & HIT) as u8
    }

    /// The hits readers counted since the last call (0 or 1), clearing them.
    pub(crate) fn take_hits(&self) -> u8 {
        // Load first: no hit (the common case in a sweep) costs no store.
        let word = self.slot_and_hit.load(Relaxed);
        if word & HIT == 0 {
            return 0;
        }
        (self.slot_and_hit.fetch_and(!HIT, Relaxed) & HIT) as u8
    }

    /// Counts a hit. A plain load and store, not an atomic read-modify-write: two readers
    /// racing may count one hit, which the policy's estimate tolerates, and an entry
    /// already hit writes nothing, so a hot entry's cache line stays clean. (Counting up
    /// to 15 hits gave the same hit ratios on the ARC traces, and cost reads 6 % in an
    /// A/B of the read loop: every hit dirtied the line until the count saturated.)
    ///
    /// Returns the slot word it read, so that a read takes the flags and the value's
    /// length from that one load.
    #[inline(always)]
    pub(super) fn record_hit(&self) -> SlotWord {
        let word = self.slot_and_hit.load(Relaxed);
        if word & HIT == 0 {
            self.slot_and_hit.store(word | HIT, Relaxed);
        }
        SlotWord(word)
    }
}

/// A node's slot word as one load read it.
#[derive(Clone, Copy)]
pub(super) struct SlotWord(u32);

impl SlotWord {
    /// The entry's flags.
    #[inline(always)]
    pub(super) fn flags(self) -> u8 {
        (self.0 >> FLAGS_SHIFT) as u8
    }

    /// The value length's low two bits.
    #[inline(always)]
    fn value_length_low(self) -> usize {
        (self.0 >> LENGTH_LOW_SHIFT) as usize & LENGTH_LOW
    }
}

/// The key of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_key<'a>(node: NonNull<Node>) -> &'a [u8] {
    // SAFETY: forwarded contract.
    unsafe { key(node) }
}

/// The bytes a node the caller keeps alive takes, header to value's end: what
/// [`allocate`] gave it ([`node_bytes`] of its key and value), read off where its value
/// ends rather than worked out again from the lengths.
///
/// # Safety
/// As for [`payload`].
#[inline(always)]
pub(crate) unsafe fn node_len(node: NonNull<Node>) -> usize {
    // SAFETY: forwarded contract.
    let (key, value) = unsafe { payload(node) };
    let len = value.as_ptr() as usize + value.len() - node.as_ptr() as usize;
    debug_assert_eq!(len, node_bytes(key.len(), value.len()));
    len
}

/// The key and value of a node the caller keeps alive.
///
/// # Safety
/// As for [`payload`].
pub(crate) unsafe fn node_payload<'a>(node: NonNull<Node>) -> (&'a [u8], &'a [u8]) {
    // SAFETY: forwarded contract.
    unsafe { payload(node) }
}

/// Whether two keys are equal. Keys of 4 to 16 bytes, which most caches hold, are
/// compared as two overlapping words each instead of through a call to `memcmp`: a hit
/// on a small cache spent a tenth of its instructions in that call.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && same_bytes(a, b)
}

/// [`same_key`] of two keys of the same length.
#[inline(always)]
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    if (8..=16).contains(&n) {
        let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8);
    }
    if (4..8).contains(&n) {
        let word = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap());
        return word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4);
    }
    a == b
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{same_key, Lifetime, LATEST_CACHED_AT_MS, NEVER};

    /// The longest lifetime short of never: 2^20 - 2 hours.
    const LONGEST_MS: u64 = ((1 << 20) - 2) * 3_600_000;

    #[test]
    fn lifetimes_are_exact_in_milliseconds_to_17_minutes_and_in_seconds_to_12_days() {
        let at = LATEST_CACHED_AT_MS;
        for ms in [0, 1, 999, 1_000, 1_001, (1 << 20) - 1] {
            assert_eq!(
                Lifetime::new(at, at + ms).expires_at_ms(at),
                at + ms,
                "{ms} ms"
            );
        }
        for s in [1_049, 3_600, 86_400, 12 * 86_400, (1 << 20) - 1] {
            let ms = s * 1_000;
            assert_eq!(
                Lifetime::new(at, at + ms).expires_at_ms(at),
                at + ms,
                "{s} s"
            );
        }
        assert_eq!(Lifetime::new(at, NEVER).expires_at_ms(at), NEVER);
        // Already past: the entry is cached expired.
        assert_eq!(Lifetime::new(at, at - 5).expires_at_ms(at), at);
    }

    proptest! {
        #[test]
        fn a_lifetime_never_ends_early_and_ends_less_than_its_unit_late(
            cached_at in 0..=LATEST_CACHED_AT_MS,
            ms in prop_oneof![0..(1u64 << 22), 0..(1u64 << 32), 0..LONGEST_MS],
        ) {
            let expires = Lifetime::new(cached_at, cached_at + ms).expires_at_ms(cached_at);
            let late = expires - (cached_at + ms);
            let unit = if ms < 1 << 20 {
                1
            } else if ms <= ((1 << 20) - 1) * 1_000 {
                1_000
            } else if ms <= ((1 << 20) - 1) * 60_000 {
                60_000
            } else {
                3_600_000
            };
            prop_assert!(expires >= cached_at + ms && late < unit, "{ms} ms: {late} ms late");
        }
    }

    #[test]
    fn lifetimes_past_the_longest_are_the_longest_not_never() {
        let longest = Lifetime::new(0, LONGEST_MS);
        assert_eq!(longest.expires_at_ms(0), LONGEST_MS);
        assert_eq!(Lifetime::new(0, LONGEST_MS + 1), longest);
        assert_eq!(Lifetime::new(0, NEVER - 1), longest);
    }

    #[test]
    fn keys_are_equal_exactly_when_their_bytes_are() {
        for len in 0..=24usize {
            let key: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            assert!(same_key(&key, &key.clone()), "{len} bytes");
            for at in 0..len {
                let mut other = key.clone();
                other[at] ^= 1;
                assert!(!same_key(&key, &other), "{len} bytes, differing at {at}");
            }
            let longer = [&key[..], b"x"].concat();
            assert!(!same_key(&key, &longer) && !same_key(&longer, &key));
        }
    }
}
