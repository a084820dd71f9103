//! Glob patterns with Redis's exact semantics (`stringmatchlen` in Redis 7): `*`, `?`,
//! `[abc]`, `[^a]`, `[a-z]` (bounds in either order, compared as C's signed `char`), `\`
//! escapes inside and outside classes, an unclosed `[` that runs to the end of the
//! pattern, and a trailing `\` that is a literal backslash.
//!
//! Redis matches by backtracking recursion, which is what made CVE-2022-36021 and
//! CVE-2024-31228 possible. Here the pattern is compiled once into tokens that each match
//! exactly one byte, plus `*`; for such patterns greedy matching that backtracks only to
//! the most recent `*` finds every match, so a match costs O(pattern × key) in the worst
//! case and needs no recursion at all.

/// A compiled glob pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    tokens: Vec<Token>,
    literal_prefix: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Byte(u8),
    AnyByte,
    AnyRun,
    Class { negated: bool, members: Vec<Member> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Member {
    Byte(u8),
    /// Inclusive, ordered, compared as signed bytes the way Redis's `int c = string[0]` does.
    Range(i8, i8),
}

impl Token {
    #[inline]
    fn matches(&self, byte: u8) -> bool {
        match self {
            Token::Byte(b) => *b == byte,
            Token::AnyByte => true,
            Token::AnyRun => unreachable!("`*` is handled by the matcher, not per byte"),
            Token::Class { negated, members } => {
                let hit = members.iter().any(|m| match *m {
                    Member::Byte(b) => b == byte,
                    Member::Range(lo, hi) => (lo..=hi).contains(&(byte as i8)),
                });
                hit != *negated
            }
        }
    }
}

impl Glob {
    /// Compiles `pattern`. Every byte string is a valid Redis pattern, so this cannot fail;
    /// length limits belong to the caller.
    pub fn new(pattern: &[u8]) -> Self {
        let tokens = tokenize(pattern);
        let literal_prefix = tokens
            .iter()
            .map_while(|t| match t {
                Token::Byte(b) => Some(*b),
                _ => None,
            })
            .collect();
        Self {
            tokens,
            literal_prefix,
        }
    }

    /// The bytes every matching key starts with: lets a scan reject most keys with one
    /// comparison, and lets an L2 `SCAN` be narrowed.
    pub fn literal_prefix(&self) -> &[u8] {
        &self.literal_prefix
    }

    /// True when the pattern has no wildcard at all (it names exactly one key).
    pub fn is_literal(&self) -> bool {
        self.literal_prefix.len() == self.tokens.len()
    }

    pub fn matches(&self, key: &[u8]) -> bool {
        // Redis's loop runs only while both pattern and key remain, so an empty key matches
        // only the empty pattern (not even `*`).
        if key.is_empty() {
            return self.tokens.is_empty();
        }
        if !key.starts_with(&self.literal_prefix) {
            return false;
        }
        let tokens = &self.tokens;
        let (mut t, mut k) = (0, 0);
        // Where to resume after the latest `*`: (token after it, key position it absorbs to).
        let mut resume: Option<(usize, usize)> = None;
        while k < key.len() {
            match tokens.get(t) {
                Some(Token::AnyRun) => {
                    resume = Some((t + 1, k));
                    t += 1;
                    continue;
                }
                Some(token) if token.matches(key[k]) => {
                    t += 1;
                    k += 1;
                    continue;
                }
                _ => {}
            }
            match resume {
                Some((after_star, absorbed)) => {
                    t = after_star;
                    k = absorbed + 1;
                    resume = Some((after_star, absorbed + 1));
                }
                None => return false,
            }
        }
        tokens[t..].iter().all(|t| *t == Token::AnyRun)
    }
}

fn tokenize(p: &[u8]) -> Vec<Token> {
    let n = p.len();
    let mut tokens = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        match p[i] {
            b'*' => {
                if tokens.last() != Some(&Token::AnyRun) {
                    tokens.push(Token::AnyRun);
                }
                i += 1;
            }
            b'?' => {
                tokens.push(Token::AnyByte);
                i += 1;
            }
            b'[' => {
                i += 1;
                let negated = p.get(i) == Some(&b'^');
                if negated {
                    i += 1;
                }
                let mut members = Vec::new();
                // The class consumes the pattern the same way whatever the key is, which is
                // what makes compiling it ahead of time exact.
                while i < n {
                    match p[i] {
                        b'\\' if n - i >= 2 => {
                            members.push(Member::Byte(p[i + 1]));
                            i += 2;
                        }
                        b']' => break,
                        first if n - i >= 3 && p[i + 1] == b'-' => {
                            let (a, b) = (first as i8, p[i + 2] as i8);
                            members.push(Member::Range(a.min(b), a.max(b)));
                            i += 3;
                        }
                        other => {
                            members.push(Member::Byte(other));
                            i += 1;
                        }
                    }
                }
                i += 1; // past `]`, or past the end of an unclosed class
                tokens.push(Token::Class { negated, members });
            }
            b'\\' if n - i >= 2 => {
                tokens.push(Token::Byte(p[i + 1]));
                i += 2;
            }
            other => {
                tokens.push(Token::Byte(other));
                i += 1;
            }
        }
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &str) -> bool {
        Glob::new(pattern.as_bytes()).matches(key.as_bytes())
    }

    /// The KEYS documentation's examples and the edge cases of Redis's parser; every
    /// expectation was checked against `KEYS` on a real redis-server 7.0.
    #[test]
    fn redis_matching_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("h?llo", "hello", true),
            ("h?llo", "hallo", true),
            ("h?llo", "hllo", false),
            ("h*llo", "hllo", true),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hbllo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hallo", true),
            ("h[a-b]llo", "hbllo", true),
            ("h[a-b]llo", "hcllo", false),
            ("h[b-a]llo", "hallo", true),
            ("user:*", "user:123", true),
            ("user:*", "user:", true),
            ("user:*", "users:1", false),
            ("*", "anything", true),
            ("*", "", false),
            ("", "", true),
            ("", "a", false),
            ("a*", "a", true),
            ("a**b", "ab", true),
            ("*a*b*", "xaybz", true),
            ("*a*b*", "xbyaz", false),
            ("\\*", "*", true),
            ("\\*", "a", false),
            ("a\\", "a\\", true),
            ("\\", "\\", true),
            ("[\\]]", "]", true),
            ("[\\", "\\", true),
            ("[abc", "b", true),
            ("[abc", "bc", false),
            ("[", "[", false),
            ("[^", "x", true),
            ("[]", "]", false),
            ("[]]", "]", false),
            // `a-]` is the range `]`..=`a` (bounds swapped), and the class stays unclosed.
            ("[a-]", "a", true),
            ("[a-]", "_", true),
            ("[a-]", "b", false),
            ("[a-]", "-", false),
            ("[a-", "-", true),
            ("[a-", "b", false),
            ("?", "", false),
            ("??", "a", false),
            ("*?", "a", true),
            ("*?*", "", false),
            ("a[b-d]*[0-9]", "ac_7", true),
            ("a[b-d]*[0-9]", "ae_7", false),
        ];
        for &(pattern, key, expected) in cases {
            assert_eq!(m(pattern, key), expected, "pattern {pattern:?} key {key:?}");
        }
    }

    #[test]
    fn ranges_compare_as_signed_chars_like_redis() {
        // In C, `[a-\xff]` is the range -1..=97 after the swap: 0xff and ASCII up to 'a',
        // but neither 0x80 (-128) nor 'b' (checked against redis-server 7.0).
        let g = Glob::new(b"[a-\xff]");
        assert!(g.matches(b"\xff"));
        assert!(g.matches(b"a"));
        assert!(g.matches(b"0"));
        assert!(!g.matches(b"\x80"));
        assert!(!g.matches(b"b"));
    }

    #[test]
    fn literal_prefix_stops_at_the_first_wildcard_and_resolves_escapes() {
        assert_eq!(Glob::new(b"user:*").literal_prefix(), b"user:");
        assert_eq!(Glob::new(b"a\\*b?").literal_prefix(), b"a*b");
        assert_eq!(Glob::new(b"[ab]c").literal_prefix(), b"");
        assert!(Glob::new(b"exact\\?key").is_literal());
        assert!(!Glob::new(b"k*").is_literal());
    }

    /// CVE-2022-36021 / CVE-2024-31228: patterns that take Redis's recursion exponential
    /// time (it would not finish within the life of this test). The matcher is
    /// O(pattern × key), so these are a few million steps each.
    #[test]
    fn abusive_patterns_are_not_exponential() {
        let pattern = "*?".repeat(1_000) + "x";
        let glob = Glob::new(pattern.as_bytes());
        assert!(!glob.matches("a".repeat(3_000).as_bytes()));
        let stars = "a*".repeat(1_000) + "b";
        assert!(!Glob::new(stars.as_bytes()).matches("a".repeat(3_000).as_bytes()));
        let nested = "[".repeat(10_000) + &"]".repeat(10_000);
        let _ = Glob::new(nested.as_bytes()).matches(b"[[[[");
    }
}
