//! The L2 client against real redis-server processes on free loopback ports: round
//! trips with TTLs, pattern deletion under an escaped prefix, the breaker with Redis
//! frozen (SIGSTOP) and back, recovery after a restart on the same port, and pub/sub
//! with a killed subscription. Waits poll with deadlines; nothing sleeps a fixed time.

use std::time::{Duration, Instant};

use e2e::redis::RedisServer;
use futures_executor::block_on;
use l2::Incoming;
use l2::{Action, Envelope, Key, L2Config, L2Error, Sequencer, Streams, Version, Written, L2};

fn client(server: &RedisServer, prefix: &str) -> L2 {
    L2::start(L2Config {
        prefix: prefix.into(),
        ..config(server.url())
    })
    .unwrap()
}

/// An envelope for `value` that never expires.
fn forever(value: &[u8]) -> Envelope {
    Envelope {
        value: value.to_vec(),
        cached_at_ms: 0,
        expires_at_ms: None,
        version: Version(1),
    }
}

/// The tests' settings for a Redis at `url`: 200 ms timeout, breaker at 3 failures.
fn config(url: String) -> L2Config {
    L2Config {
        url,
        tls_ca_file: None,
        cluster_nodes: Vec::new(),
        password: None,
        db: None,
        prefix: "cm:".into(),
        timeout: Duration::from_millis(200),
        breaker_threshold: 3,
        breaker_cooldown: Duration::from_millis(300),
        tracking: false,
    }
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
        version: Version(5),
    };
    block_on(l2.set(b"user:123", &envelope, Some(Duration::from_secs(60)))).unwrap();
    assert_eq!(block_on(l2.get(b"user:123")).unwrap(), Some(envelope));
    let pttl: i64 = redis.cli(&["PTTL", "cm:user:123"]).parse().unwrap();
    assert!((59_000..=60_000).contains(&pttl), "{pttl}");
    let big = Envelope {
        value: vec![b'x'; 50_000],
        cached_at_ms: 1,
        expires_at_ms: None,
        version: Version(6),
    };
    block_on(l2.set(b"big", &big, None)).unwrap();
    let stored: usize = redis.cli(&["STRLEN", "cm:big"]).parse().unwrap();
    assert!(stored < 1_000, "compressed in Redis: {stored} bytes");
    assert_eq!(block_on(l2.get(b"big")).unwrap(), Some(big));
    assert_eq!(redis.cli(&["PTTL", "cm:big"]), "-1", "no TTL means none");
    assert_eq!(block_on(l2.get(b"absent")).unwrap(), None);
    assert_eq!(
        block_on(l2.delete(&["user:123", "absent"], Version(7))).unwrap(),
        1
    );
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

/// Redis keeps the newest write of a key whatever order the writes arrive in, and a
/// deletion's tombstone keeps older writes out.
#[test]
fn redis_keeps_the_newest_write_and_a_deletion_refuses_older_ones() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "cm:");
    let at = |version: u64, value: &[u8]| Envelope {
        version: Version(version),
        ..forever(value)
    };
    let set = |e: &Envelope| block_on(l2.set(b"k", e, None)).unwrap();
    assert_eq!(set(&at(10, b"ten")), Written::Stored { replaced: false });
    assert_eq!(
        set(&at(9, b"nine")),
        Written::Superseded,
        "older, arriving late"
    );
    assert_eq!(
        set(&at(10, b"ten again")),
        Written::Superseded,
        "the same version"
    );
    assert_eq!(block_on(l2.get(b"k")).unwrap(), Some(at(10, b"ten")));
    assert_eq!(set(&at(11, b"eleven")), Written::Stored { replaced: true });
    // Versions that differ only in the high half, or only in the low one.
    let high = 0x0000_0001_0000_0000;
    assert_eq!(set(&at(high, b"high")), Written::Stored { replaced: true });
    assert_eq!(set(&at(0xffff_ffff, b"low")), Written::Superseded);

    assert_eq!(
        block_on(l2.delete(&["k"], Version(high - 1))).unwrap(),
        0,
        "older"
    );
    assert_eq!(block_on(l2.get(b"k")).unwrap(), Some(at(high, b"high")));
    assert_eq!(block_on(l2.delete(&["k"], Version(high + 2))).unwrap(), 1);
    assert_eq!(
        block_on(l2.get(b"k")).unwrap(),
        None,
        "a tombstone reads as a miss"
    );
    let ttl: i64 = redis.cli(&["PTTL", "cm:k"]).parse().unwrap();
    assert!(ttl > 50_000, "the tombstone expires: {ttl} ms left");
    assert_eq!(set(&at(high + 1, b"late")), Written::Superseded);
    assert_eq!(block_on(l2.get(b"k")).unwrap(), None);
    assert_eq!(
        set(&at(high + 3, b"after")),
        Written::Stored { replaced: false },
        "a tombstone is no value"
    );
    // Which write each key holds, read from the headers alone.
    let keys = [b"k".to_vec(), b"absent".to_vec()];
    assert_eq!(
        block_on(l2.versions(&keys)).unwrap(),
        [Some(Version(high + 3)), None]
    );
    block_on(l2.delete(&["k"], Version(high + 4))).unwrap();
    assert_eq!(
        block_on(l2.versions(&keys[..1])).unwrap(),
        [None],
        "a tombstone holds no value"
    );
    // Values written before versions existed are replaced by any versioned write.
    redis.cli(&["SET", "cm:old", "\x01"]);
    let old = "\x01\x00".to_string() + &"\x00".repeat(16) + "jv";
    redis.cli(&["SET", "cm:old", &old]);
    assert_eq!(
        block_on(l2.set(b"old", &at(1, b"new"), None)).unwrap(),
        Written::Stored { replaced: true }
    );
}

#[test]
fn pattern_deletion_stays_under_an_escaped_prefix() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "c*[m]:");
    let e = forever(b"1");
    for key in ["user:1", "user:2", "user:x*", "order:1"] {
        block_on(l2.set(key.as_bytes(), &e, None)).unwrap();
    }
    // Keys the glob prefix would match if it were not escaped, and keys of others.
    redis.cli(&["SET", "cX[m]:user:9", "other"]);
    redis.cli(&["SET", "cm:user:1", "other"]);
    assert_eq!(
        block_on(l2.delete_matching(b"user:*", Version(9))).unwrap(),
        3
    );
    assert_eq!(redis.cli(&["EXISTS", "c*[m]:order:1"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "cX[m]:user:9"]), "1");
    assert_eq!(redis.cli(&["EXISTS", "cm:user:1"]), "1");
    assert_eq!(
        block_on(l2.delete_matching(b"user:*", Version(9))).unwrap(),
        0
    );
}

#[test]
fn a_frozen_redis_opens_the_breaker_and_a_thawed_one_closes_it() {
    let redis = RedisServer::start();
    let l2 = client(&redis, "cm:");
    let e = forever(b"1");
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
    assert_eq!(
        block_on(l2.get(b"k")),
        Err(L2Error::Open),
        "skipped, not tried, while open"
    );
    assert_eq!(
        block_on(l2.set(b"k", &e, None)),
        Err(L2Error::Timeout(Duration::from_millis(200))),
        "a write is attempted even while the breaker is open"
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
    let port = redis.port();
    let l2 = client(&redis, "cm:");
    let e = forever(b"1");
    block_on(l2.set(b"k", &e, None)).unwrap();
    redis.kill();
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

/// Two clients of `redis`: the first to publish, the second subscribed (kept alive, as
/// its I/O thread follows the channel), and its inbox on `cache:events` once its first
/// subscription is announced.
fn publisher_and_subscriber(redis: &RedisServer) -> (L2, L2, flume::Receiver<Incoming>) {
    let a = client(redis, "cm:");
    let b = client(redis, "cm:");
    let inbox = b.subscribe(&Streams::single("cache:events"));
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Subscribed,
        "the first subscription is announced"
    );
    (a, b, inbox)
}

/// A burst of events leaves in pipelined batches and arrives whole and in order: every
/// sequence number once, none skipped (a skip would make every receiver flush).
#[test]
fn a_burst_of_events_arrives_in_order_without_gaps() {
    let redis = RedisServer::start();
    let (a, _b, inbox) = publisher_and_subscriber(&redis);
    let publisher = a.publisher("instance-a", 7, Streams::single("cache:events"), 10_000);
    let burst = 5 * l2::pubsub::PUBLISH_BATCH + 3;
    for i in 0..burst {
        let key = format!("user:{i}");
        publisher.send(
            Version(i as u64 + 1),
            Action::Delete {
                keys: vec![Key::new(key.as_bytes())],
            },
        );
    }
    let mut seq = Sequencer::new("instance-b", 1);
    for i in 0..burst {
        let Incoming::Event(event) = inbox.recv_timeout(Duration::from_secs(10)).unwrap() else {
            panic!("an event")
        };
        assert_eq!(event.version, i as u64 + 1, "in the order sent");
        assert_eq!(seq.observe(&event), l2::Verdict::Apply, "event {i}: no gap");
    }
}

#[test]
fn events_reach_other_subscribers_and_a_killed_subscription_is_reported() {
    let redis = RedisServer::start();
    let (a, _b, inbox) = publisher_and_subscriber(&redis);
    until("B is subscribed", Duration::from_secs(5), || {
        redis.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "1"
    });
    let publisher = a.publisher("instance-a", 7, Streams::single("cache:events"), 10_000);
    let mut seq = Sequencer::new("instance-a", 7);
    let event = seq.stamp(
        0,
        Version(3),
        Action::Delete {
            keys: vec![Key::new(b"user:1")],
        },
    );
    publisher.send(Version(3), event.action.clone());
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Event(event)
    );

    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Resubscribed { streams: vec![0] }
    );
    let next = seq.stamp(
        0,
        Version(4),
        Action::InvalidatePattern {
            pattern: Key::new(b"user:*"),
        },
    );
    until("B is subscribed again", Duration::from_secs(5), || {
        redis.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "1"
    });
    publisher.send(Version(4), next.action.clone());
    assert_eq!(
        inbox.recv_timeout(Duration::from_secs(5)).unwrap(),
        Incoming::Event(next)
    );
}

#[test]
fn tls_with_a_private_ca_works_and_an_untrusted_server_is_refused() {
    let dir = std::env::temp_dir().join(format!("l2-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = e2e::redis::tls_certificates(&dir);
    let (redis, tls_port) = RedisServer::start_tls(&cert, &key, &ca);
    let tls = |tls_ca_file| L2Config {
        tls_ca_file,
        timeout: Duration::from_millis(500),
        ..config(format!("rediss://127.0.0.1:{tls_port}"))
    };
    let trusted = L2::start(tls(Some(ca.clone()))).unwrap();
    let e = Envelope {
        value: b"over tls".to_vec(),
        cached_at_ms: 1,
        expires_at_ms: None,
        version: Version(1),
    };
    block_on(trusted.set(b"k", &e, None)).unwrap();
    assert_eq!(block_on(trusted.get(b"k")).unwrap(), Some(e));
    assert_eq!(
        redis.cli(&["EXISTS", "cm:k"]),
        "1",
        "the write reached the server"
    );
    // The system's roots do not include the test CA: the server is not trusted.
    let untrusted = L2::start(tls(None)).unwrap();
    assert!(block_on(untrusted.get(b"k")).is_err());
    drop(redis);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_unreachable_redis_costs_a_call_the_timeout_not_the_reconnect_backoff() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let redis = RedisServer::start_on(port);
    drop(redis);
    let l2 = L2::start(L2Config {
        breaker_threshold: 100,
        ..config(format!("redis://127.0.0.1:{port}"))
    })
    .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        assert!(block_on(l2.get(b"k")).is_err());
        assert!(
            started.elapsed() < Duration::from_millis(1_000),
            "took {:?}",
            started.elapsed()
        );
    }
}

/// A Redis that accepts connections and never answers (a listener nobody serves): every
/// caller queued before the first connection exists gets its answer within one
/// connection timeout and its own. Connecting one caller after another would make the
/// last of 20 wait 20 timeouts (4 s); the bound checked is half of that.
#[test]
fn callers_queued_before_redis_first_answers_each_wait_at_most_their_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let l2 = std::sync::Arc::new(
        L2::start(L2Config {
            breaker_threshold: 1_000,
            ..config(format!("redis://127.0.0.1:{port}"))
        })
        .unwrap(),
    );
    let started = Instant::now();
    let callers: Vec<_> = (0..20)
        .map(|_| {
            let l2 = l2.clone();
            std::thread::spawn(move || {
                let result = block_on(l2.get(b"k"));
                (result, started.elapsed())
            })
        })
        .collect();
    for caller in callers {
        let (result, waited) = caller.join().unwrap();
        assert!(matches!(result, Err(L2Error::Timeout(_))), "{result:?}");
        assert!(waited < Duration::from_millis(2_000), "waited {waited:?}");
    }
    drop(silent);
}
