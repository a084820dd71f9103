//! What a client sends to the write routes, decoded and checked with no I/O: keys, the
//! body of a `PUT` (JSON or raw bytes, with its TTL), of an invalidation and of a refresh.
//!
//! Each decoder returns the thing the handler acts on or the [`Reject`] the client gets;
//! the handlers in `api.rs` do nothing with a body but call one of these, so the fuzzer
//! (`fuzz/fuzz_targets/json_bodies.rs`) exercises exactly what the network reaches.

use std::borrow::Cow;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::framing::{query_param, reject, Reject};
use crate::stored;

/// Keys are 1 to CACHE_MAX_KEY_BYTES bytes, without control characters. `too_long` is
/// the status for a key over the limit: 414 in a path, 400 in a body.
pub fn check_key(config: &Config, key: &[u8], too_long: u16) -> Result<(), Reject> {
    let limit = config.max_key_bytes;
    if key.is_empty() {
        return Err(reject(400, "empty key"));
    }
    if key.len() > limit {
        return Err(reject(
            too_long,
            format!(
                "key is {} bytes; the limit is {limit} (CACHE_MAX_KEY_BYTES)",
                key.len()
            ),
        ));
    }
    if let Some(b) = key.iter().find(|b| b.is_ascii_control()) {
        return Err(reject(
            400,
            format!("key contains the control byte 0x{b:02x}"),
        ));
    }
    Ok(())
}

/// JSON is the default when no `Content-Type` is sent.
pub fn is_json_media(media: Option<&str>) -> bool {
    match media {
        None => true,
        Some(m) => m == "application/json" || m.ends_with("+json") || m == "text/json",
    }
}

/// The largest TTL anyone may ask for, whatever CACHE_MAX_TTL says: 100 years, so every
/// expiry time is a date (and an RFC 3339 timestamp) with room to spare.
pub const TTL_CEILING_SECS: u64 = 100 * 365 * 24 * 3600;

/// A value to store: tagged as `stored.rs` says, with the TTL it gets (`None`: no expiry).
#[derive(Debug, PartialEq, Eq)]
pub struct Put {
    pub stored: Vec<u8>,
    pub ttl: Option<Duration>,
}

#[derive(Deserialize)]
struct PutBody<'a> {
    #[serde(default, borrow)]
    key: Option<Cow<'a, str>>,
    #[serde(borrow)]
    value: &'a RawValue,
    #[serde(default, deserialize_with = "whole_seconds")]
    ttl: Option<u64>,
}

/// A TTL as JSON Schema's `integer` has it: `30` or `30.0`, not `30.5` or `-1`.
fn whole_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_u64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && (0.0..=u64::MAX as f64).contains(f))
                    .map(|f| f as u64)
            })
            .map(Some)
            .ok_or_else(|| {
                D::Error::custom(format!(
                    "ttl must be a whole number of seconds, 0 or more, got {n}"
                ))
            }),
    }
}

/// Decodes the body of `PUT /api/cache/{key}`: raw bytes (`application/octet-stream`,
/// TTL from `?ttl=N`) or `{"value": ..., "ttl"?: N, "key"?: same-as-path}` (TTL from the
/// body, else from `?ttl=N`).
pub fn decode_put(
    config: &Config,
    key: &[u8],
    media: Option<&str>,
    query: Option<&str>,
    body: &[u8],
) -> Result<Put, Reject> {
    let limit = config.max_value_bytes;
    let too_large = |n: usize| {
        reject(
            413,
            format!("value is {n} bytes; the limit is {limit} (CACHE_MAX_VALUE_BYTES)"),
        )
    };
    // `?ttl=` is checked on every PUT; a TTL in a JSON body wins over it.
    let query_ttl = query_ttl(config, query)?;
    let (stored, ttl) = if media == Some("application/octet-stream") {
        if body.len() > limit {
            return Err(too_large(body.len()));
        }
        (stored::tagged(stored::BYTES, body), query_ttl)
    } else if is_json_media(media) {
        let body: PutBody<'_> =
            json_object(body).map_err(|e| reject(400, format!("invalid JSON body: {e}")))?;
        if let Some(body_key) = &body.key {
            if body_key.as_bytes() != key {
                return Err(reject(
                    400,
                    format!("body key {body_key:?} differs from the key in the path"),
                ));
            }
        }
        let value = body.value.get().as_bytes();
        if value.len() > limit {
            return Err(too_large(value.len()));
        }
        (stored::tagged(stored::JSON, value), body.ttl.or(query_ttl))
    } else {
        return Err(reject(
            415,
            format!(
                "Content-Type {:?} is not accepted: send application/json or application/octet-stream",
                media.unwrap_or_default()
            ),
        ));
    };
    let ttl = match ttl.map(|secs| check_ttl(config, secs)).transpose()? {
        Some(0) | None => config.default_ttl(),
        Some(secs) => Some(Duration::from_secs(secs)),
    };
    Ok(Put { stored, ttl })
}

/// A TTL within the ceiling and CACHE_MAX_TTL.
fn check_ttl(config: &Config, secs: u64) -> Result<u64, Reject> {
    if secs > TTL_CEILING_SECS {
        return Err(reject(
            400,
            format!("ttl {secs} is above the ceiling of {TTL_CEILING_SECS} seconds (100 years); omit it or use 0 for the default"),
        ));
    }
    if config.max_ttl > 0 && secs > config.max_ttl {
        return Err(reject(
            400,
            format!(
                "ttl {secs} is above the limit of {} seconds (CACHE_MAX_TTL)",
                config.max_ttl
            ),
        ));
    }
    Ok(secs)
}

/// A JSON object into `T`. Only an object: serde would also take a struct from an
/// array of its fields in order (`[1, 30]` for `{"value": 1, "ttl": 30}`).
fn json_object<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        use serde::de::Error;
        return Err(serde_json::Error::custom("the body must be a JSON object"));
    }
    serde_json::from_slice(body)
}

/// `ttl=N` from a query string, checked like any TTL.
fn query_ttl(config: &Config, query: Option<&str>) -> Result<Option<u64>, Reject> {
    let Some(v) = query_param(query, "ttl") else {
        return Ok(None);
    };
    let secs = v.parse::<u64>().map_err(|_| {
        reject(
            400,
            format!("ttl must be a non-negative integer of seconds, got {v:?}"),
        )
    })?;
    check_ttl(config, secs).map(Some)
}

/// What `POST /api/cache/invalidate` asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Invalidation {
    Keys(Vec<String>),
    Pattern(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateBody {
    #[serde(default)]
    keys: Option<Vec<String>>,
    #[serde(default)]
    pattern: Option<String>,
}

/// Decodes `{"keys": [...]}` or `{"pattern": "glob"}`, within the key-count, key and
/// pattern limits.
pub fn decode_invalidate(
    config: &Config,
    media: Option<&str>,
    body: &[u8],
) -> Result<Invalidation, Reject> {
    if !is_json_media(media) {
        return Err(reject(415, "send the invalidation as application/json"));
    }
    let body: InvalidateBody =
        json_object(body).map_err(|e| reject(400, format!("invalid JSON body: {e}")))?;
    match (body.keys, body.pattern) {
        (Some(keys), None) => {
            check_keys(config, &keys)?;
            Ok(Invalidation::Keys(keys))
        }
        (None, Some(pattern)) => {
            let limit = config.max_pattern_bytes;
            if pattern.is_empty() {
                return Err(reject(400, "empty pattern"));
            }
            if pattern.len() > limit {
                return Err(reject(
                    400,
                    format!(
                        "pattern is {} bytes; the limit is {limit} (CACHE_MAX_PATTERN_BYTES)",
                        pattern.len()
                    ),
                ));
            }
            Ok(Invalidation::Pattern(pattern))
        }
        _ => Err(reject(
            400,
            "send exactly one of \"keys\" (a list) or \"pattern\" (a glob)",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    keys: Vec<String>,
}

/// Decodes `{"keys": [...]}` for `POST /api/cache/refresh`.
pub fn decode_refresh(config: &Config, body: &[u8]) -> Result<Vec<String>, Reject> {
    let body: RefreshBody = json_object(body).map_err(|e| {
        reject(
            400,
            format!("invalid JSON body (want {{\"keys\": [...]}}): {e}"),
        )
    })?;
    check_keys(config, &body.keys)?;
    Ok(body.keys)
}

/// At most CACHE_MAX_INVALIDATE_KEYS keys, each one valid.
fn check_keys(config: &Config, keys: &[String]) -> Result<(), Reject> {
    let limit = config.max_invalidate_keys;
    if keys.len() > limit {
        return Err(reject(
            400,
            format!(
                "{} keys in one request; the limit is {limit} (CACHE_MAX_INVALIDATE_KEYS)",
                keys.len()
            ),
        ));
    }
    keys.iter()
        .try_for_each(|k| check_key(config, k.as_bytes(), 400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config() -> Config {
        Config::parse_from(["cache-manager"])
    }

    #[test]
    fn query_ttl_parses_only_integers() {
        let config = config();
        assert_eq!(query_ttl(&config, Some("a=1&ttl=30")).unwrap(), Some(30));
        assert_eq!(query_ttl(&config, None).unwrap(), None);
        assert!(query_ttl(&config, Some("ttl=-1")).is_err());
        assert!(query_ttl(&config, Some("ttl=1.5")).is_err());
        assert!(query_ttl(&config, Some("ttl=3153600001")).is_err());
    }

    #[test]
    fn puts_keep_the_exact_json_text_and_check_the_body_key() {
        let config = config();
        let put = decode_put(
            &config,
            b"k",
            None,
            None,
            br#"{"value": {"a": 1 }, "ttl": 5}"#,
        )
        .unwrap();
        assert_eq!(put.stored, b"j{\"a\": 1 }");
        assert_eq!(put.ttl, Some(Duration::from_secs(5)));
        let wrong_key = decode_put(&config, b"k", None, None, br#"{"key":"x","value":1}"#);
        assert_eq!(wrong_key.unwrap_err().status, 400);
        let raw = decode_put(
            &config,
            b"k",
            Some("application/octet-stream"),
            Some("ttl=7"),
            b"\xff\x00",
        )
        .unwrap();
        assert_eq!(raw.stored, b"b\xff\x00");
        assert_eq!(raw.ttl, Some(Duration::from_secs(7)));
        let xml = decode_put(&config, b"k", Some("text/xml"), None, b"<a/>");
        assert_eq!(xml.unwrap_err().status, 415);
        let forever = decode_put(
            &config,
            b"k",
            None,
            None,
            br#"{"value":1,"ttl":18446744073709551615}"#,
        );
        assert_eq!(forever.unwrap_err().status, 400);
        let raw_forever = decode_put(
            &config,
            b"k",
            Some("application/octet-stream"),
            Some("ttl=1947775197435"),
            b"x",
        );
        assert_eq!(raw_forever.unwrap_err().status, 400);
        let whole = decode_put(&config, b"k", None, None, br#"{"value": 1, "ttl": 30.0}"#);
        assert_eq!(whole.unwrap().ttl, Some(Duration::from_secs(30)));
        let fraction = decode_put(&config, b"k", None, None, br#"{"value": 1, "ttl": 30.5}"#);
        assert_eq!(fraction.unwrap_err().status, 400);
        let array = decode_put(&config, b"k", None, None, b"[null, null]");
        assert_eq!(array.unwrap_err().status, 400);
        let bad_query = decode_put(&config, b"k", None, Some("ttl=[1]"), br#"{"value": 1}"#);
        assert_eq!(bad_query.unwrap_err().status, 400);
        let null_key = decode_put(&config, b"k", None, None, br#"{"value": 1, "key": null}"#);
        assert!(null_key.is_ok(), "a null body key is no key");
    }

    #[test]
    fn invalidations_want_exactly_one_of_keys_or_pattern() {
        let config = config();
        assert_eq!(
            decode_invalidate(&config, None, br#"{"pattern":"user:*"}"#).unwrap(),
            Invalidation::Pattern("user:*".into())
        );
        assert_eq!(
            decode_invalidate(&config, None, br#"{"keys":["a","b"]}"#).unwrap(),
            Invalidation::Keys(vec!["a".into(), "b".into()])
        );
        for bad in [
            &br#"{}"#[..],
            br#"{"keys":[],"pattern":"a"}"#,
            br#"{"pattern":""}"#,
            br#"{"keys":[""]}"#,
            br#"{"other":1}"#,
        ] {
            assert_eq!(
                decode_invalidate(&config, None, bad).unwrap_err().status,
                400
            );
        }
        let deep = [vec![b'['; 100_000], vec![b']'; 100_000]].concat();
        assert_eq!(
            decode_invalidate(&config, None, &deep).unwrap_err().status,
            400
        );
    }
}
