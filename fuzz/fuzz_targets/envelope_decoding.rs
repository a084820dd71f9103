//! Values read back from Redis (`l2::Envelope::decode`), on arbitrary bytes: a decoded
//! envelope (or tombstone) encodes to bytes that decode to the same, and a corrupt one
//! is an error, never a panic or a huge allocation.
#![no_main]

use l2::{Envelope, Stored};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Envelope::decode(data) {
        Ok(Stored::Value(envelope)) => assert_eq!(
            Envelope::decode(&envelope.encode()).expect("re-decodes"),
            Stored::Value(envelope)
        ),
        Ok(Stored::Tombstone(version)) => assert_eq!(
            Envelope::decode(&Envelope::tombstone(version)).expect("re-decodes"),
            Stored::Tombstone(version)
        ),
        Err(_) => {}
    }
});
