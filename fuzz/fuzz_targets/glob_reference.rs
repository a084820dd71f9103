//! `engine::Glob` against a reference matcher: a line-by-line port of Redis 7's
//! recursive `stringmatchlen_impl` (util.c, case-sensitive), which is the semantics the
//! engine's compiled, non-recursive matcher promises. Any pattern, any key: the two
//! must agree. (The real redis-server is the reference in `tests/tests/glob_redis.rs`.)
#![no_main]

use engine::Glob;
use libfuzzer_sys::fuzz_target;

/// Redis's recursion is as deep as the pattern has `*` runs; bounding the pattern keeps
/// the reference within the fuzzer's stack.
const MAX_PATTERN: usize = 512;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).min(rest.len());
    let (pattern, key) = rest.split_at(split);
    if pattern.len() > MAX_PATTERN {
        return;
    }
    let expected = redis_stringmatch(pattern, key);
    assert_eq!(
        Glob::new(pattern).matches(key),
        expected,
        "pattern {:?} key {:?}",
        String::from_utf8_lossy(pattern),
        String::from_utf8_lossy(key)
    );
});

fn redis_stringmatch(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer_matches = false;
    matches_from(pattern, string, &mut skip_longer_matches)
}

/// `pattern[i]`, or the C string's terminating NUL past the end.
fn at(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

fn matches_from(mut p: &[u8], mut s: &[u8], skip_longer_matches: &mut bool) -> bool {
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if matches_from(&p[1..], s, skip_longer_matches) {
                        return true;
                    }
                    if *skip_longer_matches {
                        return false;
                    }
                    s = &s[1..];
                }
                *skip_longer_matches = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                // `p` stays at the last byte of the class, as Redis's pointer does.
                let mut i = 1;
                let negated = at(p, i) == b'^';
                if negated {
                    i += 1;
                }
                let c = s[0] as i8;
                let mut hit = false;
                loop {
                    let left = p.len().saturating_sub(i);
                    if at(p, i) == b'\\' && left >= 2 {
                        i += 1;
                        hit |= at(p, i) == s[0];
                    } else if at(p, i) == b']' && left > 0 {
                        break;
                    } else if left == 0 {
                        i -= 1;
                        break;
                    } else if left >= 3 && at(p, i + 1) == b'-' {
                        let (mut lo, mut hi) = (at(p, i) as i8, at(p, i + 2) as i8);
                        if lo > hi {
                            std::mem::swap(&mut lo, &mut hi);
                        }
                        i += 2;
                        hit |= lo <= c && c <= hi;
                    } else {
                        hit |= at(p, i) == s[0];
                    }
                    i += 1;
                }
                if hit == negated {
                    return false;
                }
                p = &p[i..];
                s = &s[1..];
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != s[0] {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
            literal => {
                if literal != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}
