//! Event streams: how coherence events are spread over pub/sub channels.
//!
//! On a single Redis, or a cluster without sharded pub/sub, there is one stream: the
//! events channel, published with PUBLISH. On a Redis 7 cluster there are
//! [`SHARDED_STREAMS`], each a shard channel `{channel}:{tag}` whose hash tag puts it in
//! its own range of 1,024 slots. A key's events go on the stream of its L2 key's slot
//! range, so they live on the master that holds the key (a dead master takes its keys'
//! events with it, and nothing else), and SPUBLISH keeps each message on its shard's
//! nodes instead of relaying it over the whole cluster bus as PUBLISH does.
//!
//! Sequence numbers count per sender and stream, so a lost message or subscription costs
//! a flush of that stream's keys only.

use redis::cluster_routing::get_slot;

/// Shard channels on a cluster: 16 ranges of 1,024 slots.
pub const SHARDED_STREAMS: u16 = 16;
const SLOTS_PER_STREAM: u16 = 16384 / SHARDED_STREAMS;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Streams {
    channels: Vec<String>,
    /// The L2 key prefix: a key's stream follows its L2 key's slot.
    prefix: Vec<u8>,
    sharded: bool,
}

impl Streams {
    /// One stream, `channel`, published with PUBLISH.
    pub fn single(channel: &str) -> Self {
        Self {
            channels: vec![channel.to_owned()],
            prefix: Vec::new(),
            sharded: false,
        }
    }

    /// [`SHARDED_STREAMS`] shard channels named after `channel`, for L2 keys that start
    /// with `prefix`. Every instance derives the same names.
    pub fn sharded(channel: &str, prefix: &str) -> Self {
        let channels = (0..SHARDED_STREAMS)
            .map(|stream| {
                (0u32..)
                    .map(|n| format!("{channel}:{{{stream}.{n}}}"))
                    .find(|name| get_slot(name.as_bytes()) / SLOTS_PER_STREAM == stream)
                    .expect("every slot range has a tag")
            })
            .collect();
        Self {
            channels,
            prefix: prefix.as_bytes().to_vec(),
            sharded: true,
        }
    }

    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    pub fn count(&self) -> u16 {
        self.channels.len() as u16
    }

    pub fn all(&self) -> Vec<u16> {
        (0..self.count()).collect()
    }

    pub fn channel(&self, stream: u16) -> &str {
        &self.channels[usize::from(stream)]
    }

    /// The stream a channel name belongs to.
    pub fn of_channel(&self, name: &[u8]) -> Option<u16> {
        self.channels
            .iter()
            .position(|c| c.as_bytes() == name)
            .map(|i| i as u16)
    }

    /// The stream that carries `key`'s events (the key as clients name it, without the
    /// L2 prefix).
    pub fn of_key(&self, key: &[u8]) -> u16 {
        if !self.sharded {
            return 0;
        }
        let l2_key = [self.prefix.as_slice(), key].concat();
        get_slot(&l2_key) / SLOTS_PER_STREAM
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_shard_channel_sits_in_its_own_slot_range() {
        let streams = Streams::sharded("cache:events", "cm:");
        assert_eq!(streams.count(), SHARDED_STREAMS);
        for stream in streams.all() {
            let name = streams.channel(stream);
            assert!(name.starts_with("cache:events:{"), "{name}");
            assert_eq!(get_slot(name.as_bytes()) / SLOTS_PER_STREAM, stream);
            assert_eq!(streams.of_channel(name.as_bytes()), Some(stream));
        }
        assert_eq!(
            streams,
            Streams::sharded("cache:events", "cm:"),
            "deterministic"
        );
    }

    #[test]
    fn a_key_goes_with_its_l2_keys_slot_and_a_single_redis_has_one_stream() {
        let streams = Streams::sharded("e", "cm:");
        for key in ["user:1", "user:2", "{tag}a", "x"] {
            let slot = get_slot(format!("cm:{key}").as_bytes());
            assert_eq!(streams.of_key(key.as_bytes()), slot / SLOTS_PER_STREAM);
        }
        let single = Streams::single("e");
        assert_eq!((single.count(), single.of_key(b"user:1")), (1, 0));
        assert_eq!(single.channel(0), "e");
        assert!(!single.is_sharded() && streams.is_sharded());
    }
}
