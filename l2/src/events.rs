//! Coherence events on the Redis channel: what one instance did, for the others to
//! mirror in their L1. Each carries the sender's id, its epoch (when this run of it
//! started: an instance restarted with the same `CACHE_INSTANCE_ID` starts a new
//! sequence, which a receiver must not mistake for old news), a per-sender sequence
//! number, and the write's version (a receiver keeps an entry at least that new).
//! Pub/sub delivers at most once, so a receiver tracks the sequence of every sender: a
//! gap means a lost message, and the only safe answer is to flush L1 (as it is after a
//! resubscribe, when messages may have been lost while disconnected).
//!
//! Events are JSON, readable with `redis-cli SUBSCRIBE`. Keys that are UTF-8 are strings;
//! others are `{"b64": "..."}`, so every key survives the trip exactly.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::version::Version;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub instance: String,
    /// When this run of the sender started (microseconds since the UNIX epoch); events
    /// from before this field existed read as 0.
    #[serde(default)]
    pub epoch: u64,
    pub seq: u64,
    /// The write's version; 0 (older than every write) in events from before versions.
    #[serde(default)]
    pub version: u64,
    /// The event stream it was published on (see [`crate::streams`]); sequence numbers
    /// count per sender and stream. 0 on a single Redis and in events from before streams.
    #[serde(default)]
    pub stream: u16,
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
    /// The sender dropped events of this stream it could not publish (its queue
    /// overflowed): drop every key of the stream.
    Flush,
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

/// What a subscriber receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// Every stream is subscribed: every event published from now on arrives.
    Subscribed,
    Event(Event),
    /// These streams' subscriptions were lost and are back: their events may have been
    /// missed meanwhile.
    Resubscribed {
        streams: Vec<u16>,
    },
    /// Client tracking: other clients changed these keys (without the L2 prefix).
    Invalidated {
        keys: Vec<Vec<u8>>,
    },
    /// Client tracking: a tracked connection was lost (or Redis forgot what it tracked),
    /// so invalidations may have been missed.
    TrackingLost,
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

/// Per-sender, per-stream sequence tracking.
#[derive(Debug)]
pub struct Sequencer {
    me: String,
    epoch: u64,
    /// The next sequence number out, per stream.
    next_out: HashMap<u16, u64>,
    /// Per sender and stream: the sender's epoch and the last sequence number seen in it.
    last_in: HashMap<(String, u16), (u64, u64)>,
}

impl Sequencer {
    /// A sequencer for this run (`epoch`) of instance `me`.
    pub fn new(me: impl Into<String>, epoch: u64) -> Self {
        Self {
            me: me.into(),
            epoch,
            next_out: HashMap::new(),
            last_in: HashMap::new(),
        }
    }

    pub fn instance(&self) -> &str {
        &self.me
    }

    /// Stamps an outgoing action of the write with this version, on `stream`.
    pub fn stamp(&mut self, stream: u16, version: Version, action: Action) -> Event {
        let next = self.next_out.entry(stream).or_insert(1);
        let seq = *next;
        *next += 1;
        Event {
            instance: self.me.clone(),
            epoch: self.epoch,
            seq,
            version: version.0,
            stream,
            action,
        }
    }

    pub fn observe(&mut self, event: &Event) -> Verdict {
        if event.instance == self.me && event.epoch == self.epoch {
            return Verdict::Own;
        }
        let seen = (event.epoch, event.seq);
        let sender = (event.instance.clone(), event.stream);
        match self.last_in.get(&sender).copied() {
            // A sender seen for the first time: nothing to compare with.
            None => {
                self.last_in.insert(sender, seen);
                Verdict::Apply
            }
            // An earlier run of a sender that has restarted since, or a duplicate.
            Some(last) if seen <= last => Verdict::Stale,
            // A new run of the sender: its sequence starts again at 1.
            Some((epoch, _)) if event.epoch > epoch => {
                self.last_in.insert(sender, seen);
                match event.seq {
                    1 => Verdict::Apply,
                    seq => Verdict::Gap {
                        missed: seq.saturating_sub(1),
                    },
                }
            }
            Some((_, last)) => {
                self.last_in.insert(sender, seen);
                if event.seq == last + 1 {
                    Verdict::Apply
                } else {
                    Verdict::Gap {
                        missed: event.seq - last - 1,
                    }
                }
            }
        }
    }

    /// After a resubscribe to `streams` everything on them may have been missed: forget
    /// what was seen there.
    pub fn reset(&mut self, streams: &[u16]) {
        self.last_in
            .retain(|(_, stream), _| !streams.contains(stream));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_readable_json_and_keys_survive_exactly() {
        let mut seq = Sequencer::new("a", 1);
        let event = seq.stamp(
            0,
            Version(9),
            Action::Delete {
                keys: vec![Key::new(b"user:1"), Key::new(&[0xff, 0, 1])],
            },
        );
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
        let mut a = Sequencer::new("a", 1);
        let mut b = Sequencer::new("b", 1);
        let e1 = a.stamp(
            0,
            Version(1),
            Action::Set {
                keys: vec![Key::new(b"k")],
            },
        );
        let e2 = a.stamp(
            0,
            Version(1),
            Action::Set {
                keys: vec![Key::new(b"k")],
            },
        );
        let e3 = a.stamp(
            0,
            Version(1),
            Action::Set {
                keys: vec![Key::new(b"k")],
            },
        );
        let e4 = a.stamp(
            0,
            Version(1),
            Action::Set {
                keys: vec![Key::new(b"k")],
            },
        );
        assert_eq!(a.observe(&e1), Verdict::Own);
        assert_eq!(b.observe(&e1), Verdict::Apply);
        assert_eq!(b.observe(&e1), Verdict::Stale);
        assert_eq!(b.observe(&e4), Verdict::Gap { missed: 2 });
        assert_eq!(b.observe(&e2), Verdict::Stale, "older than the newest seen");
        b.reset(&[0]);
        assert_eq!(b.observe(&e3), Verdict::Apply);
    }

    #[test]
    fn a_sender_restarted_with_the_same_id_is_heard_again() {
        let mut before = Sequencer::new("a", 100);
        let mut b = Sequencer::new("b", 1);
        let set = |v: u64| {
            let keys = vec![Key::new(b"k")];
            (Version(v), Action::Set { keys })
        };
        for _ in 0..50 {
            let (version, action) = set(1);
            assert_eq!(b.observe(&before.stamp(0, version, action)), Verdict::Apply);
        }
        let mut after = Sequencer::new("a", 200);
        let (version, action) = set(2);
        let first = after.stamp(0, version, action);
        assert_eq!(b.observe(&first), Verdict::Apply, "a new run starts at 1");
        let (version, action) = set(3);
        assert_eq!(b.observe(&after.stamp(0, version, action)), Verdict::Apply);
        let (version, action) = set(4);
        let late = before.stamp(0, version, action);
        assert_eq!(b.observe(&late), Verdict::Stale, "the old run is over");
        // A new run whose first events were lost is a gap like any other.
        let mut again = Sequencer::new("a", 300);
        let (version, action) = set(5);
        again.stamp(0, version, action);
        let (version, action) = set(6);
        assert_eq!(
            b.observe(&again.stamp(0, version, action)),
            Verdict::Gap { missed: 1 }
        );
        // Its own events, from this run only.
        assert_eq!(after.observe(&first), Verdict::Own);
        assert_eq!(
            after.observe(&late),
            Verdict::Apply,
            "another run of the same id"
        );
    }
}
