//! Two instances on a 3-master Redis Cluster (made by `redis-cli --cluster create`):
//! keys spread over every master, writes read across instances from L2, coherence over
//! the cluster's pub/sub, and pattern invalidation that clears every master.

use std::time::{Duration, Instant};

use e2e::redis::RedisCluster;
use e2e::{wait_for, Server};
use serde_json::{json, Value};

/// Two instances on `cluster` (with `extra` settings), both subscribed, and `user:0` …
/// `user:29` written through the first.
fn two_instances_with_30_users(cluster: &RedisCluster, extra: &[(&str, &str)]) -> (Server, Server) {
    let nodes = cluster.nodes();
    let mut env = vec![("REDIS_CLUSTER_NODES", nodes.as_str())];
    env.extend_from_slice(extra);
    let a = Server::start(&env);
    let b = Server::start(&env);
    // Both subscribe on the first seed node (cluster pub/sub reaches every node).
    wait_for("both instances subscribed", Duration::from_secs(10), || {
        cluster.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "2"
    });
    for i in 0..30 {
        assert_eq!(a.put_key(&format!("user:{i}"), json!(i))["l2"], "stored");
    }
    (a, b)
}

#[test]
fn instances_share_a_cluster_and_stay_coherent() {
    let cluster = RedisCluster::start(3);
    let (a, b) = two_instances_with_30_users(&cluster, &[("REDIS_TIMEOUT_MS", "500")]);
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
    let (a, b) = two_instances_with_30_users(
        &cluster,
        &[
            ("REDIS_TIMEOUT_MS", "300"),
            ("CACHE_L2_BREAKER_FAILURES", "2"),
            ("CACHE_L2_BREAKER_COOLDOWN_MS", "300"),
        ],
    );
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
