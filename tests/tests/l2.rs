//! Two cache-manager instances sharing a real redis-server: read-through from L2,
//! write-through, coherence over pub/sub, one L2 fetch for a stampede,
//! Redis frozen (breaker) and the subscription killed (L1 flush).

use std::io::Write;
use std::time::{Duration, Instant};

use e2e::redis::RedisServer;
use e2e::{exchange, read_response, wait_for, Server};
use serde_json::{json, Value};

fn instance(redis: &RedisServer, extra: &[(&str, &str)]) -> Server {
    redis.instance(extra)
}

/// Waits until `server` has applied `n` events from other instances.
fn applied(server: &Server, n: u64) {
    wait_for("events applied", Duration::from_secs(5), || {
        server.metrics()["coherence_events"].as_u64().unwrap() >= n
    });
}

fn subscribers(redis: &RedisServer) -> usize {
    redis
        .cli(&["PUBSUB", "NUMSUB", "cache:events"])
        .parse()
        .unwrap_or(0)
}

#[test]
fn instances_share_l2_and_see_each_others_writes() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    wait_for("both instances subscribed", Duration::from_secs(10), || {
        subscribers(&redis) == 2
    });

    let written = a.put_key("user:1", json!({"v": 1}));
    assert_eq!(written["l2"], "stored");
    // A's own event for the write would drop what B reads now: wait for it to land first.
    applied(&b, 1);
    assert!(
        redis.cli(&["EXISTS", "cm:user:1"]) == "1",
        "written through to Redis under the prefix"
    );
    let (status, hit) = b.get_key("user:1");
    assert_eq!((status, hit["source"].as_str()), (200, Some("l2")), "{hit}");
    assert_eq!(hit["value"], json!({"v": 1}));
    assert_eq!(
        hit["expires_at"], written["expires_at"],
        "the metadata comes back from L2"
    );
    assert_eq!(
        b.get_key("user:1").1["source"],
        "l1",
        "the L2 hit filled B's L1"
    );

    a.put_key("user:1", json!({"v": 2}));
    wait_for("B sees A's overwrite", Duration::from_secs(10), || {
        b.get_key("user:1").1["value"] == json!({"v": 2})
    });

    ureq::delete(&a.url("/api/cache/user:1")).call().unwrap();
    wait_for("B sees A's delete", Duration::from_secs(10), || {
        b.get_key("user:1").0 == 404
    });

    for k in ["user:2", "user:3", "order:1"] {
        a.put_key(k, json!(k));
    }
    applied(&b, 6);
    for k in ["user:2", "user:3", "order:1"] {
        assert_eq!(b.get_key(k).1["source"], "l2");
        assert_eq!(b.get_key(k).1["source"], "l1");
    }
    let inv: Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"pattern": "user:*"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(inv["invalidated"], 2);
    wait_for(
        "B sees A's pattern invalidation",
        Duration::from_secs(10),
        || b.get_key("user:2").0 == 404 && b.get_key("user:3").0 == 404,
    );
    assert_eq!(b.get_key("order:1").0, 200);
    let left = redis.cli(&["GET", "cm:user:2"]);
    assert!(
        !left.contains("user:2"),
        "gone from L2 too (a tombstone is left, with no value): {left:?}"
    );
    assert!(b.metrics()["coherence_events"].as_u64().unwrap() >= 4);
    assert_eq!(b.metrics()["l1_flushes"], 0, "no event was lost");
}

#[test]
fn a_thousand_concurrent_misses_make_one_l2_fetch() {
    let redis = RedisServer::start();
    let writer = instance(&redis, &[]);
    writer.put_key("cold", json!("from L2"));
    let reader = instance(&redis, &[]);
    std::thread::scope(|scope| {
        for _ in 0..100 {
            let reader = &reader;
            scope.spawn(move || {
                let mut c = reader.connect();
                let batch = "GET /api/cache/cold HTTP/1.1\r\nHost: t\r\n\r\n".repeat(10);
                c.write_all(batch.as_bytes()).unwrap();
                for _ in 0..10 {
                    let r = read_response(&mut c);
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["value"], "from L2");
                }
            });
        }
    });
    let m = reader.metrics();
    assert_eq!(
        m["l2_hits"].as_u64().unwrap() + m["l2_misses"].as_u64().unwrap(),
        1,
        "{m}"
    );
    assert_eq!(
        m["hits"].as_u64().unwrap() + m["misses"].as_u64().unwrap(),
        1000
    );
}

#[test]
fn a_frozen_redis_opens_the_breaker_while_l1_keeps_serving() {
    let redis = RedisServer::start();
    let s = instance(
        &redis,
        &[
            ("REDIS_TIMEOUT_MS", "100"),
            ("CACHE_L2_BREAKER_FAILURES", "2"),
            ("CACHE_L2_BREAKER_COOLDOWN_MS", "200"),
        ],
    );
    s.put_key("hot", json!("v"));
    redis.signal("-STOP");
    let started = Instant::now();
    for _ in 0..100 {
        assert_eq!(s.get_key("hot").0, 200);
    }
    // Had each hit waited for Redis, a hundred would take a hundred timeouts (20 s).
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "L1 hits do not wait for Redis: {:?}",
        started.elapsed()
    );
    // Writes are still tried (a skipped one would leave other instances reading the old
    // value from L2), each within the timeout, and say they did not reach Redis.
    for i in 0..3 {
        let started = Instant::now();
        let (status, r) = s.try_put_key(&format!("k{i}"), json!(i));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a PUT answers within the timeout"
        );
        assert_eq!((status, &r["success"]), (503, &json!(false)), "{r}");
        assert!(r["l2"].as_str().unwrap().starts_with("failed"), "{r}");
    }
    assert_eq!(s.metrics()["l2_breaker_open"], true);
    // Reads skip Redis at once while the breaker is open (counted, not attempted).
    let skipped = s.metrics()["l2_skipped"].as_u64().unwrap();
    assert_eq!(s.get_key("never-written").0, 404);
    assert_eq!(s.metrics()["l2_skipped"].as_u64().unwrap(), skipped + 1);
    let m = s.metrics();
    assert!(
        m["l2_errors"].as_u64().unwrap() >= 3 && m["l2_skipped"].as_u64().unwrap() >= 1,
        "{m}"
    );
    assert_eq!(s.get_key("k1").0, 200, "written to L1 all the same");
    redis.signal("-CONT");
    wait_for(
        "the breaker closes once Redis is back",
        Duration::from_secs(10),
        || s.try_put_key("after", json!(1)).1["l2"] == "stored",
    );
    assert_eq!(s.metrics()["l2_breaker_open"], false);
}

#[test]
fn a_killed_subscription_flushes_l1_and_coherence_resumes() {
    let redis = RedisServer::start();
    let a = instance(&redis, &[]);
    let b = instance(&redis, &[]);
    wait_for("both instances subscribed", Duration::from_secs(10), || {
        subscribers(&redis) == 2
    });
    a.put_key("k", json!(1));
    applied(&b, 1);
    assert_eq!(b.get_key("k").1["source"], "l2");
    assert_eq!(b.get_key("k").1["source"], "l1");
    assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "2");
    wait_for("both flushed L1", Duration::from_secs(10), || {
        a.metrics()["l1_flushes"] == 1 && b.metrics()["l1_flushes"] == 1
    });
    assert_eq!(b.get_key("k").1["source"], "l2", "B's L1 was flushed");
    wait_for("both subscribed again", Duration::from_secs(10), || {
        subscribers(&redis) == 2
    });
    a.put_key("k", json!(2));
    wait_for("coherence works again", Duration::from_secs(2), || {
        b.get_key("k").1["value"] == 2
    });
}

#[test]
fn without_redis_url_the_service_is_l1_only() {
    let s = Server::start(&[]);
    let r = s.put_key("k", json!(1));
    assert!(r.get("l2").is_none());
    let mut c = s.connect();
    let miss = exchange(&mut c, b"GET /api/cache/absent HTTP/1.1\r\n\r\n");
    assert_eq!(miss.status, 404);
    assert!(!miss.json()["error"].as_str().unwrap().contains("L2"));
    assert_eq!(s.metrics()["l2_enabled"], false);
}

#[test]
fn a_killed_and_restarted_redis_is_used_again_without_restarting_the_service() {
    let mut redis = RedisServer::start();
    let port = redis.port();
    let s = instance(&redis, &[("CACHE_L2_BREAKER_COOLDOWN_MS", "100")]);
    wait_for("subscribed", Duration::from_secs(10), || {
        subscribers(&redis) == 1
    });
    s.put_key("before", json!(1));
    redis.kill();
    let (status, during) = s.try_put_key("during", json!(2));
    assert_eq!(
        (status, &during["success"]),
        (503, &json!(false)),
        "{during}"
    );
    assert_eq!(s.get_key("during").0, 200, "L1 still takes writes");
    assert_eq!(s.get_key("before").0, 200, "L1 keeps serving");
    let redis = RedisServer::start_on(port);
    wait_for(
        "writes reach the restarted Redis",
        Duration::from_secs(15),
        || s.try_put_key("after", json!(3)).1["l2"] == "stored",
    );
    assert_eq!(redis.cli(&["EXISTS", "cm:after"]), "1");
    wait_for("subscribed again", Duration::from_secs(15), || {
        subscribers(&redis) == 1
    });
    wait_for(
        "L1 flushed after the lost subscription",
        Duration::from_secs(5),
        || s.metrics()["l1_flushes"].as_u64().unwrap() >= 1,
    );
}

#[test]
fn the_service_writes_through_to_a_redis_over_tls() {
    let dir = std::env::temp_dir().join(format!("service-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = e2e::redis::tls_certificates(&dir);
    let (redis, tls_port) = RedisServer::start_tls(&cert, &key, &ca);
    let url = format!("rediss://127.0.0.1:{tls_port}");
    // A debug build's TLS handshake and the first script load can take longer than the
    // default 100 ms when the other tests load the machine: this test is about TLS.
    let s = Server::start(&[
        ("REDIS_URL", &url),
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("REDIS_TIMEOUT_MS", "2000"),
    ]);
    assert_eq!(s.put_key("secure", json!(1))["l2"], "stored");
    assert_eq!(redis.cli(&["EXISTS", "cm:secure"]), "1");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The least-privilege ACL the README recommends is enough for everything the service
/// does: reads, writes, pattern invalidation, coherence events, and confirming a warm
/// restart's entries.
#[test]
fn a_least_privilege_acl_user_is_enough() {
    let redis = RedisServer::start();
    let acl = [
        "ACL",
        "SETUSER",
        "cache-manager",
        "on",
        ">s3cret",
        "resetkeys",
        "~cm:*",
        "resetchannels",
        "&cache:events",
        "-@all",
        "+get",
        "+getrange",
        "+set",
        "+scan",
        "+eval",
        "+evalsha",
        "+script|load",
        "+publish",
        "+subscribe",
        "+ping",
    ];
    assert_eq!(redis.cli(&acl), "OK");
    let url = format!("redis://cache-manager:s3cret@127.0.0.1:{}", redis.port());
    let dir = std::env::temp_dir().join(format!("cm-acl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("b.snap");
    let b_env = [
        ("REDIS_URL", url.as_str()),
        ("CACHE_SNAPSHOT_PATH", snapshot.to_str().unwrap()),
    ];
    let a = Server::start(&[("REDIS_URL", &url)]);
    let mut b = Server::start(&b_env);
    wait_for("both subscribed", Duration::from_secs(10), || {
        subscribers(&redis) == 2
    });
    assert_eq!(a.put_key("user:1", json!(1))["l2"], "stored");
    assert_eq!(b.get_key("user:1").1["source"], "l2");
    let done: Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"pattern": "user:*"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["invalidated"], 1);
    wait_for("B sees it", Duration::from_secs(2), || {
        b.get_key("user:1").0 == 404
    });
    assert_eq!(a.metrics()["l2_errors"], 0);
    assert_eq!(b.metrics()["l2_errors"], 0);

    // A warm restart confirms its entries with GETRANGE.
    a.put_key("user:2", json!(2));
    wait_for("B holds user:2 in L1", Duration::from_secs(10), || {
        b.get_key("user:2").1["source"] == "l1"
    });
    assert!(b.terminate(Duration::from_secs(30)).success());
    let b = Server::start(&b_env);
    assert_eq!(b.metrics()["snapshot_restored"], 1, "checked before ready");
    assert_eq!(b.get_key("user:2").1["source"], "l1");
    assert_eq!(b.metrics()["l2_errors"], 0);
    std::fs::remove_dir_all(&dir).unwrap();
}
