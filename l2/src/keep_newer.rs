//! Keeping the newest write of each key in Redis: a write is a script that stores its
//! envelope only if Redis holds no write of the key with an equal or newer version, and
//! a deletion stores a tombstone the same way, so writes may reach Redis in any order
//! (from any core or instance) and Redis still ends with the newest (`version.rs`).

use std::time::Duration;

use redis::aio::ConnectionLike;

use crate::envelope::Envelope;
use crate::version::Version;

/// What a versioned write did in Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Stored; `replaced` says whether the key held a value (not a tombstone) before.
    Stored { replaced: bool },
    /// Not stored: Redis holds a write of the key at least as new.
    Superseded,
}

/// How long a deletion's tombstone keeps older writes out. A write reaches Redis within
/// its REDIS_TIMEOUT_MS of being sent or not at all, so a minute leaves a wide margin for
/// a sender that stalled before sending.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(60);

/// Stores KEYS[1] = ARGV[1] (an envelope) with a TTL of ARGV[3] ms (0: none) unless the
/// key holds a format-2 envelope (a value or a tombstone) whose version is at least
/// ARGV[2]. Versions are 16 hex digits at bytes 3 to 18, compared as two 8-digit halves
/// (each exact in Lua's doubles; text comparison would follow Redis's collation locale).
/// Returns -1 when a write at least as new is there, 1 when a value was replaced, 0 when
/// nothing (or a tombstone) was.
///
/// The closing read (a one-byte `GETRANGE`, which the recommended ACL already allows) is
/// for client tracking (`tracking.rs`): a script's reads
/// are tracked for its caller, but its own SET ends the tracking its first GET began, so
/// without a read after it the writer would not hear of the next instance's write.
pub const KEEP_NEWER: &str = r#"
local old = redis.call('GET', KEYS[1])
local replaced = 0
if old then
  replaced = 1
  if string.byte(old, 1) == 2 and string.len(old) >= 34 then
    local held = string.sub(old, 3, 18)
    local hi, lo = tonumber(string.sub(held, 1, 8), 16), tonumber(string.sub(held, 9, 16), 16)
    local nhi, nlo = tonumber(string.sub(ARGV[2], 1, 8), 16), tonumber(string.sub(ARGV[2], 9, 16), 16)
    if hi and lo and (hi > nhi or (hi == nhi and lo >= nlo)) then
      return -1
    end
    if math.floor(string.byte(old, 2) / 2) % 2 == 1 then
      replaced = 0
    end
  end
end
if ARGV[3] == '0' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
end
redis.call('GETRANGE', KEYS[1], 0, 0)
return replaced
"#;

/// Replaces every key `pattern` matches on one node with a tombstone of `version`
/// (unless a newer write is there), a pipeline of script calls per `SCAN` batch;
/// returns how many held a value.
pub async fn scan_and_bury(
    conn: &mut impl ConnectionLike,
    pattern: &[u8],
    version: Version,
) -> redis::RedisResult<usize> {
    let script = redis::Script::new(KEEP_NEWER);
    script.prepare_invoke().load_async(conn).await?;
    let (tombstone, version, ttl_ms) = (
        Envelope::tombstone(version),
        version.hex(),
        TOMBSTONE_TTL.as_millis() as u64,
    );
    let mut cursor = 0u64;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let mut bury = redis::pipe();
            for key in &keys {
                let mut call = script.key(key.as_slice());
                call.arg(tombstone.as_slice())
                    .arg(version.as_str())
                    .arg(ttl_ms);
                bury.invoke_script(&call);
            }
            let outcomes: Vec<i64> = bury.query_async(conn).await?;
            removed += outcomes.iter().filter(|o| **o == 1).count();
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}
