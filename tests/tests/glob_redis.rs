//! Differential test: random patterns and keys through the engine's glob and through a
//! real redis-server's `SCAN … MATCH pattern` (what the service's pattern invalidation
//! sends to L2), which must agree on every key.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use e2e::redis::RedisServer;
use engine::Glob;
use proptest::prelude::*;

/// A RESP client just large enough for SET, FLUSHALL and SCAN with binary arguments.
struct Resp(TcpStream);

impl Resp {
    fn command(&mut self, args: &[&[u8]]) -> Vec<Vec<u8>> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            request.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            request.extend_from_slice(a);
            request.extend_from_slice(b"\r\n");
        }
        self.0.write_all(&request).unwrap();
        self.reply()
    }

    /// Every key `SCAN … MATCH pattern` returns, following the cursor to its end.
    fn scan_match(&mut self, pattern: &[u8]) -> BTreeSet<Vec<u8>> {
        let (mut cursor, mut keys) = (b"0".to_vec(), BTreeSet::new());
        loop {
            // The reply is [cursor, [keys…]], flattened by `reply`.
            let mut reply = self.command(&[b"SCAN", &cursor, b"MATCH", pattern, b"COUNT", b"1000"]);
            cursor = reply.remove(0);
            keys.extend(reply);
            if cursor == b"0" {
                return keys;
            }
        }
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        let mut byte = [0u8];
        while !line.ends_with(b"\r\n") {
            self.0.read_exact(&mut byte).unwrap();
            line.push(byte[0]);
        }
        line.truncate(line.len() - 2);
        line
    }

    fn reply(&mut self) -> Vec<Vec<u8>> {
        let line = self.line();
        let number = || {
            std::str::from_utf8(&line[1..])
                .unwrap()
                .parse::<i64>()
                .unwrap()
        };
        match line[0] {
            b'*' => (0..number()).flat_map(|_| self.reply()).collect(),
            b'$' => {
                let mut bulk = vec![0u8; number() as usize + 2];
                self.0.read_exact(&mut bulk).unwrap();
                bulk.truncate(bulk.len() - 2);
                vec![bulk]
            }
            b'-' => panic!("redis error: {}", String::from_utf8_lossy(&line)),
            _ => Vec::new(),
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"ab-]^[\\*?x".to_vec()), 1..8)
}

fn pattern() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop::sample::select(b"ab*?[]^-\\x".to_vec()), 0..10)
}

#[test]
fn the_engine_glob_agrees_with_redis_on_random_patterns() {
    let redis = RedisServer::start();
    let stream = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The runner takes a `Fn`; the connection is borrowed mutably through a cell.
    let client = std::cell::RefCell::new(Resp(stream));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 300,
        ..ProptestConfig::default()
    });
    let case = (
        prop::collection::btree_set(key(), 1..40),
        prop::collection::vec(pattern(), 1..20),
    );
    runner
        .run(&case, |(keys, patterns)| {
            let mut client = client.borrow_mut();
            client.command(&[b"FLUSHALL"]);
            for k in &keys {
                client.command(&[b"SET", k, b"1"]);
            }
            let fixed: [&[u8]; 6] = [b"*", b"[", b"\\", b"[^", b"a[b-", b"*?*?"];
            for p in patterns.iter().map(Vec::as_slice).chain(fixed) {
                let by_redis = client.scan_match(p);
                let glob = Glob::new(p);
                let by_engine: BTreeSet<Vec<u8>> =
                    keys.iter().filter(|k| glob.matches(k)).cloned().collect();
                prop_assert_eq!(
                    &by_engine,
                    &by_redis,
                    "pattern {:?}",
                    String::from_utf8_lossy(p)
                );
            }
            Ok(())
        })
        .unwrap();
}
