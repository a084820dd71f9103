//! Coherence by client tracking (`CACHE_COHERENCE=tracking`), on real instances and real
//! redis-servers: an instance hears of changes to the keys it holds, and only of those;
//! its own writes stay tracked (the next instance's write of the key reaches it);
//! patterns still go over the channel; a lost tracked connection flushes L1; and the
//! same on a Redis Cluster, where commands go to each key's master.

use std::time::Duration;

use e2e::redis::{RedisCluster, RedisServer};
use e2e::{wait_for, Server};
use serde_json::json;

const TRACKING: (&str, &str) = ("CACHE_COHERENCE", "tracking");

fn events(server: &Server) -> u64 {
    server.metrics()["coherence_events"].as_u64().unwrap()
}

/// `b` reads `key` into L1 from L2; `a` overwrites it; `b` serves the new value.
fn reaches(a: &Server, b: &Server, key: &str, value: i64) {
    b.get_key(key);
    assert_eq!(b.get_key(key).1["source"], "l1", "{key} held by B");
    a.put_key(key, json!(value));
    wait_for("B serves the new value", Duration::from_secs(5), || {
        b.get_key(key).1["value"] == value
    });
}

/// Two tracking instances on `redis`, both subscribed, and `key` written through the
/// first (value 0), then overwritten (value 1) while the second held it.
fn holding(redis: &RedisServer, key: &str) -> (Server, Server) {
    let a = redis.instance(&[TRACKING]);
    let b = redis.instance(&[TRACKING]);
    a.wait_subscribed();
    b.wait_subscribed();
    a.put_key(key, json!(0));
    reaches(&a, &b, key, 1);
    (a, b)
}

#[test]
fn an_instance_hears_only_of_the_keys_it_holds() {
    let redis = RedisServer::start();
    let (a, b) = holding(&redis, "held");

    // Writes of keys B never read send B nothing.
    let before = events(&b);
    for i in 0..50 {
        a.put_key(&format!("other:{i}"), json!(i));
    }
    a.put_key("held", json!(2));
    wait_for("B serves the new value", Duration::from_secs(5), || {
        b.get_key("held").1["value"] == 2
    });
    assert_eq!(events(&b) - before, 1, "one invalidation: the key B holds");

    // A key an instance wrote itself stays tracked for it.
    b.put_key("written-by-b", json!("b"));
    assert_eq!(b.get_key("written-by-b").1["source"], "l1");
    // A reads B's value first, so its write is newer than B's whatever the clocks say
    // (two writes within a millisecond are ordered by version, not by arrival).
    assert_eq!(a.get_key("written-by-b").1["value"], "b");
    let written = a.put_key("written-by-b", json!("a"));
    assert_eq!(written["l2"], "stored", "{written}");
    wait_for("B hears of A's write", Duration::from_secs(5), || {
        b.get_key("written-by-b").1["value"] == "a"
    });
    // And its own write does not invalidate its own copy.
    b.put_key("own", json!(1));
    b.put_key("own", json!(2));
    assert_eq!(b.get_key("own").1["source"], "l1");

    // Patterns still travel on the channel.
    b.get_key("held");
    let done: serde_json::Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"pattern": "hel*"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["success"], true, "{done}");
    wait_for("B drops the pattern's keys", Duration::from_secs(5), || {
        b.get_key("held").0 == 404
    });
    assert_eq!(b.metrics()["l1_flushes"], 0);
}

#[test]
fn a_lost_tracked_connection_flushes_and_tracking_resumes() {
    let redis = RedisServer::start();
    let (a, b) = holding(&redis, "k");
    // Every normal client: both instances' tracked connections (and their others).
    redis.cli(&["CLIENT", "KILL", "TYPE", "normal"]);
    wait_for("B flushed", Duration::from_secs(5), || {
        b.metrics()["l1_flushes"].as_u64().unwrap() >= 1
    });
    wait_for("A writes again", Duration::from_secs(5), || {
        a.try_put_key("k", json!(2)).1["l2"] == "stored"
    });
    reaches(&a, &b, "k", 3);
}

#[test]
fn tracking_on_a_cluster_follows_each_keys_master() {
    let cluster = RedisCluster::start(3);
    let (a, b) = cluster.two_instances_with_30_users(&[TRACKING]);
    for i in 0..30 {
        reaches(&a, &b, &format!("user:{i}"), 100 + i);
    }
    assert_eq!(b.metrics()["l1_flushes"], 0);
}

/// A failover under client tracking: the instance holding keys of the old master may
/// send that master nothing for a while, so it must notice the new layout on its own,
/// drop the old node's tracking (a flush) and hear of every later overwrite.
#[test]
fn tracking_survives_a_failover() {
    let cluster = RedisCluster::start_with_replicas(3);
    let (a, b) = cluster.two_instances_with_30_users(&[TRACKING, ("REDIS_TIMEOUT_MS", "500")]);
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for key in &keys {
        b.get_key(key);
    }
    cluster.fail_over_to(3);
    // A write may fail while the slots change hands (answered 503); the next lands.
    for (n, key) in keys.iter().enumerate() {
        let value = json!(format!("after-{n}"));
        wait_for("A's write lands", Duration::from_secs(10), || {
            a.try_put_key(key, value.clone()).0 == 200
        });
    }
    for (n, key) in keys.iter().enumerate() {
        wait_for("B hears of every overwrite", Duration::from_secs(5), || {
            b.get_key(key).1["value"] == json!(format!("after-{n}"))
        });
    }
}
