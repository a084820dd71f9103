//! Coherence events on the Redis channel: what one instance did, for the others to
//! mirror in their L1. Each carries the sender's id and a per-sender sequence number.
//! Pub/sub delivers at most once, so a receiver tracks the sequence of every sender: a
//! gap means a lost message, and the only safe answer is to flush L1 (as it is after a
//! resubscribe, when messages may have been lost while disconnected).
//!
//! Events are JSON, readable with `redis-cli SUBSCRIBE`. Keys that are UTF-8 are strings;
//! others are `{"b64": "..."}`, so every key survives the trip exactly.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub instance: String,
    pub seq: u64,
    #[serde(flatten)]
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Keys were written: drop them from L1 (the next read fetches the new value).
    Set {
        keys: Vec<Key>,
    },
    Delete {
        keys: Vec<Key>,
    },
    InvalidatePattern {
        pattern: Key,
    },
    /// Keys were re-fetched from the origin: drop them, as for a set.
    Refresh {
        keys: Vec<Key>,
    },
}

/// A key, lossless through JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    Text(String),
    Binary { b64: String },
}

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(text) => Key::Text(text.to_owned()),
            Err(_) => Key::Binary {
                b64: base64_encode(bytes),
            },
        }
    }

    pub fn bytes(&self) -> Option<Vec<u8>> {
        match self {
            Key::Text(t) => Some(t.as_bytes().to_vec()),
            Key::Binary { b64 } => base64_decode(b64),
        }
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                B64[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().take_while(|b| *b != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in chunk.iter().enumerate() {
            n |= (B64.iter().position(|c| c == d)? as u32) << (18 - 6 * i);
        }
        out.extend((0..chunk.len().saturating_sub(1)).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    Some(out)
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("events serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// What a receiver should do with an incoming event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Its own event: nothing to do.
    Own,
    Apply,
    /// Already seen (a duplicate or a reordering): nothing to do.
    Stale,
    /// Messages from this sender were lost: flush L1, then carry on from this one.
    Gap {
        missed: u64,
    },
}

/// Per-sender sequence tracking.
#[derive(Debug)]
pub struct Sequencer {
    me: String,
    next_out: u64,
    last_in: HashMap<String, u64>,
}

impl Sequencer {
    pub fn new(me: impl Into<String>) -> Self {
        Self {
            me: me.into(),
            next_out: 1,
            last_in: HashMap::new(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.me
    }

    /// Stamps an outgoing action.
    pub fn stamp(&mut self, action: Action) -> Event {
        let seq = self.next_out;
        self.next_out += 1;
        Event {
            instance: self.me.clone(),
            seq,
            action,
        }
    }

    pub fn observe(&mut self, event: &Event) -> Verdict {
        if event.instance == self.me {
            return Verdict::Own;
        }
        match self.last_in.insert(event.instance.clone(), event.seq) {
            // A sender seen for the first time: nothing to compare with.
            None => Verdict::Apply,
            Some(last) if event.seq <= last => {
                self.last_in.insert(event.instance.clone(), last);
                Verdict::Stale
            }
            Some(last) if event.seq == last + 1 => Verdict::Apply,
            Some(last) => Verdict::Gap {
                missed: event.seq - last - 1,
            },
        }
    }

    /// After a resubscribe everything may have been missed: forget what was seen.
    pub fn reset(&mut self) {
        self.last_in.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_readable_json_and_keys_survive_exactly() {
        let mut seq = Sequencer::new("a");
        let event = seq.stamp(Action::Delete {
            keys: vec![Key::new(b"user:1"), Key::new(&[0xff, 0, 1])],
        });
        let text = String::from_utf8(event.encode()).unwrap();
        assert!(
            text.contains(r#""kind":"delete""#) && text.contains(r#""user:1""#),
            "{text}"
        );
        let back = Event::decode(text.as_bytes()).unwrap();
        assert_eq!(back, event);
        let Action::Delete { keys } = back.action else {
            panic!()
        };
        assert_eq!(keys[1].bytes().unwrap(), vec![0xff, 0, 1]);
        for n in 0..10 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base64_encode(b"\xff\x00"), "/wA=");
    }

    #[test]
    fn gaps_duplicates_and_own_events_are_told_apart() {
        let mut a = Sequencer::new("a");
        let mut b = Sequencer::new("b");
        let e1 = a.stamp(Action::Set {
            keys: vec![Key::new(b"k")],
        });
        let e2 = a.stamp(Action::Set {
            keys: vec![Key::new(b"k")],
        });
        let e3 = a.stamp(Action::Set {
            keys: vec![Key::new(b"k")],
        });
        let e4 = a.stamp(Action::Set {
            keys: vec![Key::new(b"k")],
        });
        assert_eq!(a.observe(&e1), Verdict::Own);
        assert_eq!(b.observe(&e1), Verdict::Apply);
        assert_eq!(b.observe(&e1), Verdict::Stale);
        assert_eq!(b.observe(&e4), Verdict::Gap { missed: 2 });
        assert_eq!(b.observe(&e2), Verdict::Stale, "older than the newest seen");
        b.reset();
        assert_eq!(b.observe(&e3), Verdict::Apply);
    }
}
