//! HTTP/1.1 request framing (`net::framing`) on arbitrary bytes.
//!
//! Beyond "no panic", it checks what the connection relies on: a complete head is
//! complete at exactly the length the parser reports (no shorter prefix is), refusals
//! carry a 4xx status and a message, and a chunked body decodes to the same outcome
//! whether it arrives at once or in pieces of any size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::framing::{parse_head, ChunkedBody, Framing, Limits, Reject};

const LIMITS: Limits = Limits {
    max_headers: 16,
    max_header_bytes: 512,
};
const MAX_BODY: usize = 256;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 16) + 1;
    match parse_head(data, &LIMITS, String::new()) {
        Ok(Some((head, len))) => {
            assert!(len <= data.len() && len <= LIMITS.max_header_bytes);
            for prefix in [len - 1, len / 2] {
                assert_eq!(
                    parse_head(&data[..prefix], &LIMITS, String::new()),
                    Ok(None),
                    "prefix {prefix} of {len}"
                );
            }
            // A recycled path buffer leaves nothing of the path it held.
            let recycled = String::from("/the previous request's path");
            assert_eq!(
                parse_head(&data[..len], &LIMITS, recycled),
                Ok(Some((head, len)))
            );
            let framing = parse_head(&data[..len], &LIMITS, String::new())
                .unwrap()
                .unwrap()
                .0
                .framing;
            if framing == Framing::Chunked {
                check_chunked(&data[len..], piece);
            }
        }
        Ok(None) => assert!(data.len() <= LIMITS.max_header_bytes),
        Err(refused) => check_refusal(&refused, &[400, 414, 431]),
    }
    check_chunked(data, piece);
});

fn check_refusal(refused: &Reject, statuses: &[u16]) {
    assert!(statuses.contains(&refused.status), "{refused:?}");
    assert!(!refused.message.is_empty());
}

/// What decoding `input` came to: the body and the bytes consumed, `None` while the
/// body is incomplete, or the refusal's status.
type Outcome = Result<Option<(Vec<u8>, usize)>, u16>;

fn check_chunked(input: &[u8], piece: usize) {
    let whole = decode(input, input.len());
    assert_eq!(whole, decode(input, piece), "whole vs pieces of {piece}");
    if let Ok(Some((body, used))) = &whole {
        assert!(body.len() <= MAX_BODY && *used <= input.len());
    }
}

/// Feeds `input` in pieces of `piece` bytes, keeping what was not consumed, as the
/// connection does with its buffer.
fn decode(input: &[u8], piece: usize) -> Outcome {
    let mut decoder = ChunkedBody::new(MAX_BODY, LIMITS.max_header_bytes);
    let (mut pending, mut consumed) = (Vec::new(), 0);
    for arriving in input.chunks(piece.max(1)) {
        pending.extend_from_slice(arriving);
        let used = decoder.feed(&pending).map_err(|refused| {
            check_refusal(&refused, &[400, 413, 431]);
            refused.status
        })?;
        assert!(used <= pending.len());
        pending.drain(..used);
        consumed += used;
        if decoder.is_done() {
            return Ok(Some((decoder.into_body(), consumed)));
        }
    }
    Ok(None)
}
