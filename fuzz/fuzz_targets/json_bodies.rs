//! The JSON (and raw) bodies of the write routes (`net::body`) on arbitrary bytes, with
//! the service's default limits: whatever is accepted is within them, and every refusal
//! is a 4xx with a message. A pattern that is accepted is compiled and matched too.
#![no_main]

use std::sync::LazyLock;

use clap::Parser;
use engine::Glob;
use libfuzzer_sys::fuzz_target;
use net::body::{check_key, decode_invalidate, decode_put, decode_refresh, Invalidation};
use net::config::Config;

static CONFIG: LazyLock<Config> = LazyLock::new(|| Config::parse_from(["cache-manager"]));

const MEDIA: [Option<&str>; 5] = [
    None,
    Some("application/json"),
    Some("application/octet-stream"),
    Some("application/problem+json"),
    Some("text/plain"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let config = &*CONFIG;
    let media = MEDIA[usize::from(selector) % MEDIA.len()];
    let query = (selector & 0x80 != 0).then_some("ttl=5");
    match decode_put(config, b"fuzz:key", media, query, body) {
        Ok(put) => {
            let (tag, value) = put.stored.split_first().expect("a tag byte");
            assert!(value.len() <= config.max_value_bytes);
            match tag {
                // Well-formed JSON: numbers are kept as sent, however large (RFC 8259
                // leaves their range to the reader), so this checks the grammar only.
                b'j' => {
                    serde_json::from_slice::<serde::de::IgnoredAny>(value)
                        .expect("stored JSON is well-formed");
                }
                b'b' => assert_eq!(value, body),
                other => panic!("unknown tag {other}"),
            }
        }
        Err(refused) => {
            assert!(matches!(refused.status, 400 | 413 | 415) && !refused.message.is_empty())
        }
    }
    match decode_invalidate(config, media, body) {
        Ok(Invalidation::Keys(keys)) => check_keys(config, &keys),
        Ok(Invalidation::Pattern(pattern)) => {
            assert!(!pattern.is_empty() && pattern.len() <= config.max_pattern_bytes);
            Glob::new(pattern.as_bytes()).matches(body);
        }
        Err(refused) => assert!(matches!(refused.status, 400 | 415) && !refused.message.is_empty()),
    }
    match decode_refresh(config, body) {
        Ok(keys) => check_keys(config, &keys),
        Err(refused) => assert!(refused.status == 400 && !refused.message.is_empty()),
    }
});

fn check_keys(config: &Config, keys: &[String]) {
    assert!(keys.len() <= config.max_invalidate_keys);
    for key in keys {
        assert!(check_key(config, key.as_bytes(), 400).is_ok());
    }
}
