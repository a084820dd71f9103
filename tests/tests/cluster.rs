//! Two instances on a 3-master Redis Cluster (made by `redis-cli --cluster create`):
//! keys spread over every master, writes read across instances from L2, coherence over
//! the cluster's pub/sub, and pattern invalidation that clears every master.

use std::time::{Duration, Instant};

use e2e::redis::RedisCluster;
use e2e::{wait_for, Server};
use serde_json::{json, Value};

#[test]
fn instances_share_a_cluster_and_stay_coherent() {
    let cluster = RedisCluster::start(3);
    // The single channel on a cluster (as on Redis 6): sharded pub/sub is the default
    // and the other tests cover it.
    let (a, b) = cluster.two_instances_with_30_users(&[
        ("REDIS_TIMEOUT_MS", "500"),
        ("CACHE_EVENTS_SHARDED", "false"),
    ]);
    a.put_key("order:1", json!("o"));
    assert!(
        cluster.keys_per_master().iter().all(|n| *n > 0),
        "keys on every master: {:?}",
        cluster.keys_per_master()
    );
    wait_for("B applied A's events", Duration::from_secs(10), || {
        b.metrics()["coherence_events"].as_u64().unwrap() >= 31
    });
    for i in 0..30 {
        let (status, hit) = b.get_key(&format!("user:{i}"));
        assert_eq!(
            (status, hit["source"].as_str(), hit["value"].as_i64()),
            (200, Some("l2"), Some(i))
        );
    }

    a.put_key("user:7", json!("changed"));
    wait_for("B sees the overwrite", Duration::from_secs(10), || {
        b.get_key("user:7").1["value"] == "changed"
    });
    ureq::delete(&a.url("/api/cache/user:8")).call().unwrap();
    wait_for("B sees the delete", Duration::from_secs(10), || {
        b.get_key("user:8").0 == 404
    });

    let done: Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"pattern": "user:*"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["invalidated"], 29, "distinct keys removed");
    wait_for(
        "B sees the pattern invalidation",
        Duration::from_secs(10),
        || (0..30).all(|i| b.get_key(&format!("user:{i}")).0 == 404),
    );
    // Every master was visited: each holds tombstones of the users it had (a deletion
    // keeps older writes out of L2 for a minute), and no user's value is left in L2.
    assert!(
        cluster.keys_per_master().iter().all(|n| *n > 0),
        "{:?}",
        cluster.keys_per_master()
    );
    let nodes = cluster.nodes();
    let c = Server::start(&[("REDIS_CLUSTER_NODES", nodes.as_str())]);
    for i in 0..30 {
        assert_eq!(c.get_key(&format!("user:{i}")).0, 404, "user:{i} in L2");
    }
    assert_eq!(b.get_key("order:1").1["value"], "o");
    assert_eq!(cluster.cli(&["EXISTS", "cm:order:1"]), "1");
}

/// One master of three killed under two instances, then restarted: L1 hits keep their
/// latency, writes answer within the timeout with the L2 failure said and counted, the
/// breaker opens and closes, an invalidation that returned success reaches the other
/// instance (events are published past the breaker), and neither instance restarts.
#[test]
fn one_cluster_master_down_and_back() {
    let mut cluster = RedisCluster::start(3);
    let (a, b) = cluster.two_instances_with_30_users(&[
        ("REDIS_TIMEOUT_MS", "300"),
        ("CACHE_L2_BREAKER_FAILURES", "2"),
        ("CACHE_L2_BREAKER_COOLDOWN_MS", "300"),
    ]);
    wait_for("B applied A's writes", Duration::from_secs(10), || {
        b.metrics()["coherence_events"].as_u64().unwrap() >= 30
    });
    for i in 0..30 {
        assert_eq!(b.get_key(&format!("user:{i}")).1["source"], "l2");
    }
    // The subscriptions live on the first node; the last master goes down.
    let on_dead: Vec<String> = (0..30)
        .map(|i| format!("user:{i}"))
        .filter(|k| cluster.holds(2, &format!("cm:{k}")))
        .collect();
    assert!(
        !on_dead.is_empty(),
        "some keys live on the master that dies"
    );
    cluster.kill_master(2);

    let started = Instant::now();
    for round in 0..10 {
        for i in 0..30 {
            let (status, hit) = b.get_key(&format!("user:{i}"));
            assert_eq!(
                (status, hit["value"].as_i64()),
                (200, Some(i)),
                "round {round}"
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "300 L1 hits do not wait for Redis: {:?}",
        started.elapsed()
    );

    for (n, key) in on_dead.iter().cycle().take(4).enumerate() {
        let started = Instant::now();
        let (status, written) = a.try_put_key(key, json!(format!("new-{n}")));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a PUT answers within the timeout: {:?}",
            started.elapsed()
        );
        assert_eq!(
            (status, &written["success"]),
            (503, &json!(false)),
            "no write to the dead master claims success: {written}"
        );
    }
    wait_for("the breaker opens", Duration::from_secs(5), || {
        a.metrics()["l2_breaker_open"] == true
    });
    let m = a.metrics();
    assert!(m["l2_errors"].as_u64().unwrap() >= 2, "{m}");
    // The breaker that opened is the dead master's: keys of the live masters keep their
    // L2 reads and writes on A.
    let live_key = (0..)
        .map(|i| format!("fresh:{i}"))
        .find(|k| {
            let slot: u32 = cluster
                .cli(&["CLUSTER", "KEYSLOT", &format!("cm:{k}")])
                .parse()
                .unwrap();
            slot < 10923
        })
        .unwrap();
    assert_eq!(b.put_key(&live_key, json!("from B"))["l2"], "stored");
    assert_eq!(
        a.get_key(&live_key).1["source"],
        "l2",
        "A still reads L2 there"
    );
    assert_eq!(a.put_key(&live_key, json!("from A"))["l2"], "stored");
    assert_eq!(
        a.metrics()["l2_breaker_open"],
        true,
        "the dead master's is open"
    );

    // B holds user:0..29 in L1. An invalidation that A answers with success must reach
    // B, with the breaker open and a master down.
    let stale_key = "user:5";
    assert_eq!(b.get_key(stale_key).1["value"], 5);
    let done: Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"keys": [stale_key]}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["success"], true);
    wait_for(
        "B drops the invalidated key",
        Duration::from_secs(5),
        || b.get_key(stale_key).1["value"] != 5,
    );

    cluster.restart_master(2);
    wait_for(
        "writes reach every master again",
        Duration::from_secs(20),
        || a.try_put_key(&on_dead[0], json!("back")).1["l2"] == "stored",
    );
    assert_eq!(a.metrics()["l2_breaker_open"], false);
    assert_eq!(cluster.cli(&["EXISTS", &format!("cm:{}", on_dead[0])]), "1");
    wait_for("B reads the new value", Duration::from_secs(5), || {
        b.get_key(&on_dead[0]).1["value"] == "back"
    });
}

/// Sharded pub/sub: each master carries the event streams of its own slot ranges, on
/// one SSUBSCRIBE connection per master. A master killed and started again: the other
/// instance resubscribes its streams there, flushes only those streams' keys (keys of
/// the other masters stay in its L1), and events on them flow again.
#[test]
fn shard_channels_are_resubscribed_after_a_master_restarts() {
    let mut cluster = RedisCluster::start(3);
    let (a, b) = cluster.two_instances_with_30_users(&[("REDIS_TIMEOUT_MS", "300")]);
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for key in &keys {
        b.get_key(key);
    }
    for key in &keys {
        assert_eq!(b.get_key(key).1["source"], "l1", "{key}");
    }
    // Every master holds some shard channels (16 slot ranges over three masters).
    for i in 0..3 {
        let channels = cluster.node_cli(i, &["PUBSUB", "SHARDCHANNELS", "cache:events:*"]);
        assert!(
            channels.starts_with("cache:events:"),
            "master {i} carries event streams: {channels}"
        );
    }
    // redis-cli gives the last master slots 10923-16383. Events of a key travel on the
    // shard channel of its slot's range of 1,024: ranges 11 to 15 (slots from 11264)
    // lie wholly on that master, ranges 0 to 9 wholly elsewhere; range 10's channel may
    // be on either, so its keys are left out.
    let slot = |key: &str| -> u32 {
        cluster
            .node_cli(0, &["CLUSTER", "KEYSLOT", &format!("cm:{key}")])
            .parse()
            .unwrap()
    };
    let on_dead: Vec<&String> = keys.iter().filter(|k| slot(k) >= 11 * 1024).collect();
    let on_live: Vec<&String> = keys.iter().filter(|k| slot(k) < 10 * 1024).collect();
    assert!(!on_dead.is_empty() && !on_live.is_empty());
    assert_eq!(b.metrics()["l1_flushes"], 0);

    cluster.kill_master(2);
    cluster.restart_master(2);
    wait_for(
        "B resubscribed on the restarted master",
        Duration::from_secs(15),
        || b.metrics()["l1_flushes"].as_u64().unwrap() >= 1,
    );
    for key in &on_live {
        assert_eq!(b.get_key(key).1["source"], "l1", "{key} stays in L1");
    }
    // Its streams' subscriptions were lost: B's copies of their keys went.
    for key in &on_dead {
        assert_ne!(b.get_key(key).1["source"], "l1", "{key} was flushed");
    }
    // Events on the restarted master's streams reach B again.
    let key = on_dead[0];
    a.put_key(key, json!("back"));
    wait_for("B reads the write", Duration::from_secs(5), || {
        b.get_key(key).1["value"] == "back"
    });
    a.put_key(key, json!("again"));
    wait_for("B gets the event", Duration::from_secs(5), || {
        b.get_key(key).1["value"] == "again"
    });
}

/// TLS to a Redis Cluster: `rediss://` seeds and REDIS_TLS_CA_FILE, against a cluster
/// whose clients and bus speak TLS only on the ports it announces. Writes land on every
/// master and coherence events (shard channels, over TLS) reach the other instance.
#[test]
fn instances_use_a_tls_cluster() {
    let dir = std::env::temp_dir().join(format!("cluster-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = e2e::redis::tls_certificates(&dir);
    let cluster = RedisCluster::start_tls(3, &cert, &key, &ca);
    let nodes = cluster.nodes();
    assert!(nodes.starts_with("rediss://"), "{nodes}");
    let (a, b) = cluster.two_instances_with_30_users(&[
        ("REDIS_TLS_CA_FILE", ca.to_str().unwrap()),
        ("REDIS_TIMEOUT_MS", "2000"),
    ]);
    assert_eq!(b.get_key("user:7").1["source"], "l2");
    a.put_key("user:7", json!("changed"));
    wait_for("B gets the event over TLS", Duration::from_secs(5), || {
        b.get_key("user:7").1["value"] == "changed"
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A failover (`CLUSTER FAILOVER` on a replica): the shard channels of the old master's
/// slots move to the promoted replica. Each instance moves its subscriptions there,
/// flushes only the keys of those channels, and events on them keep arriving; a
/// publisher that still targets the old master is redirected and retries, so no
/// overwrite is lost.
#[test]
fn shard_channels_follow_a_failover() {
    let cluster = RedisCluster::start_with_replicas(3);
    let (a, b) = cluster.two_instances_with_30_users(&[("REDIS_TIMEOUT_MS", "500")]);
    let keys: Vec<String> = (0..30).map(|i| format!("user:{i}")).collect();
    for key in &keys {
        b.get_key(key);
    }
    assert_eq!(b.metrics()["l1_flushes"], 0);

    // Node 3 is a replica; it takes over its master's slots.
    cluster.fail_over_to(3);
    wait_for("B moved its subscriptions", Duration::from_secs(15), || {
        b.metrics()["l1_flushes"].as_u64().unwrap() >= 1
    });
    assert!(
        b.metrics()["l1_flushes"].as_u64().unwrap() <= 2,
        "only the moved channels are flushed: {}",
        b.metrics()
    );
    // The redis crate's cluster connection may still send a write to the old master
    // for a moment (answered 503); the next one lands.
    let lands = |key: &str, value: String| {
        wait_for("A's write lands", Duration::from_secs(10), || {
            a.try_put_key(key, json!(value.clone())).0 == 200
        });
    };
    for (n, key) in keys.iter().enumerate() {
        lands(key, format!("after-{n}"));
    }
    for (n, key) in keys.iter().enumerate() {
        b.get_key(key);
        lands(key, format!("again-{n}"));
    }
    for (n, key) in keys.iter().enumerate() {
        wait_for("B gets every event", Duration::from_secs(5), || {
            b.get_key(key).1["value"] == json!(format!("again-{n}"))
        });
    }
}
