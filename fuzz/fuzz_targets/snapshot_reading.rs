//! Snapshot files (`net::snapshot::read_from`), on arbitrary bytes: reading never panics
//! or allocates more than the file holds, and every entry it hands over re-encodes to a
//! block that decodes to the same entries (so nothing malformed gets through a check).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::snapshot::format::{self, BlockBuilder, Next};

fuzz_target!(|data: &[u8]| {
    let mut entries = Vec::new();
    let mut builder = BlockBuilder::default();
    let read = net::snapshot::read_from(
        &mut &data[..],
        data.len() as u64,
        std::path::Path::new("fuzz.snap"),
        |entry| {
            builder.push(&entry);
            entries.push((entry.key.to_vec(), entry.value.to_vec(), entry.standing));
        },
    );
    if let Ok(report) = read {
        assert_eq!(report.entries as usize, entries.len());
        let block = builder.finish();
        let head: &[u8; format::BLOCK_HEADER_BYTES] =
            block[..format::BLOCK_HEADER_BYTES].try_into().unwrap();
        let left = (block.len() - format::BLOCK_HEADER_BYTES) as u64;
        let Ok(Next::Block {
            entries: n, crc, ..
        }) = format::decode_next(head, left)
        else {
            panic!("a block re-encodes")
        };
        let again = format::decode_block(&block[format::BLOCK_HEADER_BYTES..], n, crc).unwrap();
        assert_eq!(again.len(), entries.len());
        for (a, e) in again.iter().zip(&entries) {
            assert_eq!((a.key, a.value, a.standing), (&e.0[..], &e.1[..], e.2));
        }
    }
});
