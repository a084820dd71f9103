//! A cache hit as an HTTP response: the original service's JSON envelope
//! (`{"value", "hit", "source", "cached_at", "expires_at"}`, plus `"stale"` and
//! `"encoding"` when they apply), or, when the client asks for
//! `application/octet-stream`, the stored bytes with the metadata in headers. How the
//! JSON and raw modes see each other's values is described in `api.rs`.

use base64::Engine as _;
use engine::OwnedEntry;

use crate::exchange::{Answered, Reply};
use crate::messages::Source;
use crate::stored::{self, Kept};

/// The latest instant RFC 3339 can write: 9999-12-31T23:59:59Z.
const LAST_RFC3339_MS: u64 = 253_402_300_799_000;

/// A Unix time in milliseconds as RFC 3339 to the second, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(ms: u64) -> String {
    String::from_utf8(rfc3339_bytes(ms).to_vec()).expect("RFC 3339 text is ASCII")
}

/// [`rfc3339`]'s text as bytes, for writing into a body without an allocation (clamped
/// to year 9999, which TTLs are kept well below; see `body::TTL_CEILING_SECS`). Every hit
/// writes one or two of these, so there is no formatter: the time of day's fields are
/// looked up two digits at a time, and the date's ten bytes are kept for the few days
/// last written on this thread (a hit's two times are nearly always on the same day or
/// the next), so the calendar arithmetic runs about once a day. A test holds it to
/// humantime's.
pub fn rfc3339_bytes(ms: u64) -> [u8; 20] {
    let seconds = ms.min(LAST_RFC3339_MS) / 1000;
    let (days, of_day) = (seconds / 86_400, seconds % 86_400);
    let mut text = *b"YYYY-MM-DDTHH:MM:SSZ";
    text[..10].copy_from_slice(&date_text(days));
    text[11..13].copy_from_slice(&TWO_DIGITS[(of_day / 3600) as usize]);
    text[14..16].copy_from_slice(&TWO_DIGITS[(of_day / 60 % 60) as usize]);
    text[17..19].copy_from_slice(&TWO_DIGITS[(of_day % 60) as usize]);
    text
}

/// `00` to `99`.
const TWO_DIGITS: [[u8; 2]; 100] = {
    let mut table = [[0; 2]; 100];
    let mut n = 0;
    while n < 100 {
        table[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    table
};

/// Days whose date text is kept per thread, each in the slot of its number modulo this.
const DATES_KEPT: usize = 4;

thread_local! {
    static DATES: [std::cell::Cell<(u64, [u8; 10])>; DATES_KEPT] =
        const { [const { std::cell::Cell::new((u64::MAX, [0; 10])) }; DATES_KEPT] };
}

/// `YYYY-MM-DD` of `days` since the UNIX epoch (at most 9999-12-31).
fn date_text(days: u64) -> [u8; 10] {
    DATES.with(|dates| {
        let slot = &dates[days as usize % DATES_KEPT];
        match slot.get() {
            (kept, text) if kept == days => text,
            _ => {
                let text = civil_date_text(days);
                slot.set((days, text));
                text
            }
        }
    })
}

/// Howard Hinnant's days-to-civil, written as `YYYY-MM-DD`.
fn civil_date_text(days: u64) -> [u8; 10] {
    // Days since 0000-03-01, so that leap days fall at the end of each year.
    let days = days + 719_468;
    let era = days / 146_097;
    let of_era = days % 146_097;
    let year_of_era = (of_era - of_era / 1_460 + of_era / 36_524 - of_era / 146_096) / 365;
    let day_of_year = of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut text = *b"YYYY-MM-DD";
    text[0..2].copy_from_slice(&TWO_DIGITS[(year / 100) as usize]);
    text[2..4].copy_from_slice(&TWO_DIGITS[(year % 100) as usize]);
    text[5..7].copy_from_slice(&TWO_DIGITS[month as usize]);
    text[8..10].copy_from_slice(&TWO_DIGITS[day as usize]);
    text
}

/// What a hit is rendered from: borrowed from L1 under its read guard, or from a fill.
pub struct Hit<'a> {
    pub value: Kept<'a>,
    pub cached_at_ms: u64,
    pub expires_at_ms: Option<u64>,
    pub stale: bool,
}

impl<'a> Hit<'a> {
    pub fn of(entry: &'a OwnedEntry) -> Self {
        Hit {
            value: Kept::from(entry),
            cached_at_ms: entry.cached_at_ms,
            expires_at_ms: entry.expires_at_ms,
            stale: entry.stale,
        }
    }
}

/// Writes `hit` as the answer: straight from the entry into the connection's output
/// (the entry is borrowed under its read guard), with no `Response` between them.
pub fn render_hit(
    reply: &mut Reply<'_>,
    hit: &Hit<'_>,
    wants_bytes: bool,
    now_ms: u64,
    source: Source,
) -> Answered {
    let Hit {
        value: stored,
        cached_at_ms,
        expires_at_ms,
        stale,
    } = *hit;
    let (tag, data) = stored.parts();
    if wants_bytes {
        let content_type = if tag == stored::BYTES {
            "application/octet-stream"
        } else {
            "application/json"
        };
        let mut outgoing = reply.start(200, content_type, data.len());
        outgoing.header("X-Cache-Source", &[source.name().as_bytes()]);
        outgoing.header("X-Cache-Cached-At", &[&rfc3339_bytes(cached_at_ms)]);
        if stale {
            outgoing.header("X-Cache-Stale", &[b"true"]);
        }
        if let Some(expires_ms) = expires_at_ms {
            let max_age = expires_ms.saturating_sub(now_ms) / 1000;
            let mut seconds = itoa::Buffer::new();
            outgoing.header(
                "Cache-Control",
                &[b"max-age=", seconds.format(max_age).as_bytes()],
            );
            outgoing.header("X-Cache-Expires-At", &[&rfc3339_bytes(expires_ms)]);
        }
        return outgoing.body(data);
    }
    let mut body = Vec::with_capacity(data.len() + 128);
    body.extend_from_slice(b"{\"value\":");
    let mut base64 = false;
    if tag == stored::JSON {
        body.extend_from_slice(data);
    } else if let Ok(text) = std::str::from_utf8(data) {
        serde_json::to_writer(&mut body, text).expect("a string serializes");
    } else {
        base64 = true;
        serde_json::to_writer(
            &mut body,
            &base64::engine::general_purpose::STANDARD.encode(data),
        )
        .expect("a string serializes");
    }
    body.extend_from_slice(b",\"hit\":true,\"source\":\"");
    body.extend_from_slice(source.name().as_bytes());
    body.extend_from_slice(b"\",\"cached_at\":\"");
    body.extend_from_slice(&rfc3339_bytes(cached_at_ms));
    match expires_at_ms {
        Some(expires_ms) => {
            body.extend_from_slice(b"\",\"expires_at\":\"");
            body.extend_from_slice(&rfc3339_bytes(expires_ms));
            body.extend_from_slice(b"\"");
        }
        None => body.extend_from_slice(b"\",\"expires_at\":null"),
    }
    if base64 {
        body.extend_from_slice(b",\"encoding\":\"base64\"");
    }
    if stale {
        body.extend_from_slice(b",\"stale\":true");
    }
    body.push(b'}');
    reply.start(200, "application/json", body.len()).body(&body)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    /// A response as written: its head's lines and its body.
    struct Written {
        head: String,
        body: Vec<u8>,
    }

    impl Written {
        fn header(&self, name: &str) -> Option<&str> {
            self.head
                .split("\r\n")
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
        }
    }

    fn body(r: &Written) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    /// Renders a fresh hit (or a stale one) from these parts; `value` is tagged.
    fn render(
        tagged: &[u8],
        expires: Option<u64>,
        bytes: bool,
        now: u64,
        source: Source,
        stale: bool,
    ) -> Written {
        let origin = stored::Origin::of(&l2::VersionClock::new(0), 0);
        // With a version the head leads the bytes; without, it is the flags. Both render
        // the same.
        let [text, unversioned] = [l2::Version(3), l2::Version::ZERO].map(|version| {
            let value = stored::in_l1(tagged, version, origin);
            let hit = Hit {
                value: value.kept(),
                cached_at_ms: 1_705_314_600_000,
                expires_at_ms: expires,
                stale,
            };
            crate::exchange::tests::written(
                false,
                crate::framing::Persistence::Persistent,
                false,
                |reply| render_hit(reply, &hit, bytes, now, source),
            )
            .0
        });
        assert_eq!(text, unversioned);
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let written = Written {
            head: head.to_owned(),
            body: body.as_bytes().to_vec(),
        };
        assert_eq!(
            written.header("Content-Length"),
            Some(written.body.len().to_string().as_str())
        );
        written
    }

    #[test]
    fn json_values_come_back_verbatim_with_metadata() {
        let stored = [&[stored::JSON][..], br#"{"id": 123,  "name":"John"}"#].concat();
        let r = render(
            &stored,
            Some(1_705_318_200_000),
            false,
            0,
            Source::L1,
            false,
        );
        let text = String::from_utf8(r.body.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"value":{"id": 123,  "name":"John"},"#),
            "{text}"
        );
        let v = body(&r);
        assert_eq!(v["hit"], true);
        assert_eq!(v["source"], "l1");
        assert_eq!(v["cached_at"], "2024-01-15T10:30:00Z");
        assert_eq!(v["expires_at"], "2024-01-15T11:30:00Z");
        assert!(v.get("stale").is_none());
        assert_eq!(
            body(&render(&stored, None, false, 0, Source::L1, true))["stale"],
            true
        );
    }

    #[test]
    fn raw_values_seen_through_json_are_strings_or_base64() {
        let text = render(
            &[&[stored::BYTES][..], b"plain \"text\""].concat(),
            None,
            false,
            0,
            Source::L1,
            false,
        );
        assert_eq!(body(&text)["value"], "plain \"text\"");
        assert_eq!(body(&text)["expires_at"], serde_json::Value::Null);
        let binary = render(
            &[stored::BYTES, 0xff, 0x00],
            None,
            false,
            0,
            Source::L1,
            false,
        );
        assert_eq!(body(&binary)["value"], "/wA=");
        assert_eq!(body(&binary)["encoding"], "base64");
    }

    #[test]
    fn any_time_renders_without_panicking() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        // Leap days, century rules and the ends of months, against humantime.
        let mut seconds: u64 = 0;
        while seconds < LAST_RFC3339_MS / 1000 {
            let expected =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds));
            assert_eq!(
                rfc3339(seconds * 1000 + 999),
                expected.to_string(),
                "{seconds}"
            );
            seconds += 86_400 * 7 + 3_607;
        }
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn days_kept_per_thread_are_told_apart() {
        // Alternating between days that share a slot of the kept dates (or not) must
        // always give each time its own date.
        let base: u64 = 1_796_000_000;
        for days_apart in [0, 1, 3, 4, 8, 365] {
            let times = [base, base + days_apart * 86_400 + 61];
            for round in 0..6 {
                let seconds = times[round % 2];
                let expected =
                    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(seconds));
                assert_eq!(rfc3339(seconds * 1000), expected.to_string(), "{seconds}");
            }
        }
    }

    #[test]
    fn raw_reads_return_bytes_and_headers() {
        let r = render(
            &[stored::BYTES, 1, 2, 3],
            Some(90_500),
            true,
            500,
            Source::L2,
            true,
        );
        assert_eq!(r.body, vec![1, 2, 3]);
        assert_eq!(r.header("Content-Type"), Some("application/octet-stream"));
        assert_eq!(r.header("Cache-Control"), Some("max-age=90"));
        assert_eq!(r.header("X-Cache-Source"), Some("l2"));
        assert_eq!(r.header("X-Cache-Stale"), Some("true"));
        assert_eq!(r.header("X-Cache-Cached-At"), Some("2024-01-15T10:30:00Z"));
        assert_eq!(r.header("X-Cache-Expires-At"), Some("1970-01-01T00:01:30Z"));
        let j = render(
            &[&[stored::JSON][..], b"[1]"].concat(),
            None,
            true,
            0,
            Source::L1,
            false,
        );
        assert_eq!(j.header("Content-Type"), Some("application/json"));
        assert_eq!(j.body, b"[1]");
    }
}
