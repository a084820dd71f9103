//! Values read back from Redis (`l2::Envelope::decode`), on arbitrary bytes: a decoded
//! envelope encodes to bytes that decode to the same envelope, and a corrupt one is an
//! error, never a panic or a huge allocation.
#![no_main]

use l2::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(
            Envelope::decode(&envelope.encode()).expect("re-decodes"),
            envelope
        );
    }
});
