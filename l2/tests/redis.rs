//! The L2 client against real redis-server processes on free loopback ports: round
//! trips with TTLs, pattern deletion under an escaped prefix, the breaker with Redis
//! frozen (SIGSTOP) and back, recovery after a restart on the same port, and pub/sub
//! with a killed subscription. Waits poll with deadlines; nothing sleeps a fixed time.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_executor::block_on;
use l2::client::Incoming;
use l2::{Action, Envelope, Key, L2Config, L2Error, Sequencer, L2};

struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        let server = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::yield_now();
        }
        server
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// One command over a raw socket, answered as text ("" when unreachable).
    fn cli(&self, args: &[&str]) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return String::new();
        };
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        if s.write_all(request.as_bytes()).is_err() {
            return String::new();
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let reply = String::from_utf8_lossy(&buf[..n]).to_string();
        // The last line of the reply without its type byte: simple replies (+OK, :1,
        // -ERR, $-1) lose their first byte, and so do integers inside arrays.
        let last = reply.lines().last().unwrap_or_default();
        if reply.lines().count() == 1 || last.starts_with(':') {
            last.get(1..).unwrap_or_default().to_string()
        } else {
            last.to_string()
        }
    }

    fn signal(&self, signal: &str) {
        assert!(self.try_signal(signal));
    }

    fn try_signal(&self, signal: &str) -> bool {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        status.is_ok_and(|s| s.success())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.try_signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client(server: &RedisServer, prefix: &str) -> L2 {
    L2::start(L2Config {
        url: server.url(),
        password: None,
        db: None,
        prefix: prefix.into(),
        timeout: Duration::from_millis(200),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(300),
    })
    .unwrap()
}

fn until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} not within {within:?}");
        std::thread::park_timeout(Duration::from_millis(5));
    }
}

#[test]
fn values_round_trip_with_their_metadata_and_ttl() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "cm:");
    let envelope = Envelope {
        value: br#"{"id":123}"#.to_vec(),
        cached_at_ms: 1_700_000_000_000,
        expires_at_ms: Some(1_700_003_600_000),
    };
    block_on(l2.set(b"user:123", &envelope, Some(Duration::from_secs(60)))).unwrap();
    assert_eq!(block_on(l2.get(b"user:123")).unwrap(), Some(envelope));
    let pttl: i64 = redis.cli(&["PTTL", "cm:user:123"]).parse().unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    let big = Envelope {
        value: vec![b'x'; 50_000],
        cached_at_ms: 1,
        expires_at_ms: None,
    };
    block_on(l2.set(b"big", &big, None)).unwrap();
    let stored: usize = redis.cli(&["STRLEN", "cm:big"]).parse().unwrap();
    assert!(stored < 1_000, "compressed in Redis: {stored} bytes");
    assert_eq!(block_on(l2.get(b"big")).unwrap(), Some(big));
    assert_eq!(redis.cli(&["PTTL", "cm:big"]), "-1", "no TTL means none");
    assert_eq!(block_on(l2.get(b"absent")).unwrap(), None);
    assert_eq!(block_on(l2.delete(&["user:123", "absent"])).unwrap(), 1);
    assert_eq!(block_on(l2.get(b"user:123")).unwrap(), None);
    // A foreign value under the prefix is reported, not served.
    redis.cli(&["SET", "cm:foreign", "not an envelope"]);
    assert!(matches!(
        block_on(l2.get(b"foreign")),
        Err(L2Error::Decode(_))
    ));
    assert!(
        !l2.breaker_open(),
        "a bad value says nothing about Redis's health"
    );
    assert_eq!(
        l2.stats().hits.load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn pattern_deletion_stays_under_an_escaped_prefix() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "c*[m]:");
    let e = Envelope {
        value: b"1".to_vec(),
        cached_at_ms: 0,
        expires_at_ms: None,
    };
    for key in ["user:1", "user:2", "user:x*", "order:1"] {
        block_on(l2.set(key.as_bytes(), &e, None)).unwrap();
    }
    // Keys the glob prefix would match if it were not escaped, and keys of others.
    redis.cli(&["SET", "cX[m]:user:9", "other"]);
    redis.cli(&["SET", "cm:user:1", "other"]);
    assert_eq!(block_on(l2.delete_matching(b"user:*")).unwrap(), 3);
    assert_eq!(redis.cli(&["EXISTS", "c*[m]:order:1"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "cX[m]:user:9"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "cm:user:1"]), "1");
    assert_eq!(block_on(l2.delete_matching(b"user:*")).unwrap(), 0);
}

#[test]
fn a_frozen_redis_opens_the_breaker_and_a_thawed_one_closes_it() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "cm:");
    let e = Envelope {
        value: b"1".to_vec(),
        cached_at_ms: 0,
        expires_at_ms: None,
    };
    block_on(l2.set(b"k", &e, None)).unwrap();
    redis.signal("-STOP");
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(
            block_on(l2.get(b"k")),
            Err(L2Error::Timeout(Duration::from_millis(200)))
        );
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "bounded by the timeout"
        );
    }
    assert!(l2.breaker_open());
    let started = Instant::now();
    assert_eq!(block_on(l2.get(b"k")), Err(L2Error::Open));
    assert!(
        started.elapsed() < Duration::from_millis(20),
        "skipped at once while open"
    );
    redis.signal("-CONT");
    until(
        "the breaker closes after Redis is back",
        Duration::from_secs(10),
        || block_on(l2.get(b"k")).is_ok(),
    );
    assert!(!l2.breaker_open());
    assert!(
        l2.stats()
            .skipped
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[test]
fn a_restarted_redis_is_used_again_without_restarting_the_client() {
    let mut redis = RedisServer::start();
    let port = redis.port;
    let l2 = client(&redis, "cm:");
    let e = Envelope {
        value: b"1".to_vec(),
        cached_at_ms: 0,
        expires_at_ms: None,
    };
    block_on(l2.set(b"k", &e, None)).unwrap();
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    assert!(block_on(l2.get(b"k")).is_err());
    drop(redis);
    let redis = RedisServer::start_on(port);
    until(
        "writes succeed on the restarted server",
        Duration::from_secs(15),
        || block_on(l2.set(b"k2", &e, None)).is_ok(),
    );
    assert_eq!(block_on(l2.get(b"k2")).unwrap(), Some(e));
    drop(redis);
}

#[test]
fn events_reach_other_subscribers_and_a_killed_subscription_is_reported() {
    let redis = RedisServer::start();
    let a = client(&redis, "cm:");
    let b = client(&redis, "cm:");
    let inbox = b.subscribe("cache:events");
    until("B is subscribed", Duration::from_secs(5), || {
        redis.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "1"
    });
    let mut seq = Sequencer::new("instance-a");
    let event = seq.stamp(Action::Delete {
        keys: vec![Key::new(b"user:1")],
    });
    block_on(a.publish("cache:events", &event)).unwrap();
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Event(event)
    );

    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Resubscribed
    );
    let next = seq.stamp(Action::InvalidatePattern {
        pattern: Key::new(b"user:*"),
    });
    until("B is subscribed again", Duration::from_secs(5), || {
        redis.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "1"
    });
    block_on(a.publish("cache:events", &next)).unwrap();
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Event(next)
    );
}
