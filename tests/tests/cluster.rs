//! Two instances on a 3-master Redis Cluster (made by `redis-cli --cluster create`):
//! keys spread over every master, writes read across instances from L2, coherence over
//! the cluster's pub/sub, and pattern invalidation that clears every master.

use std::time::Duration;

use e2e::redis::RedisCluster;
use e2e::{wait_for, Server};
use serde_json::{json, Value};

#[test]
fn instances_share_a_cluster_and_stay_coherent() {
    let cluster = RedisCluster::start(3);
    let nodes = cluster.nodes();
    let env = [
        ("REDIS_CLUSTER_NODES", nodes.as_str()),
        ("REDIS_TIMEOUT_MS", "500"),
    ];
    let a = Server::start(&env);
    let b = Server::start(&env);
    // Both subscribe on the first seed node (cluster pub/sub reaches every node).
    wait_for("both instances subscribed", Duration::from_secs(10), || {
        cluster.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "2"
    });
    for i in 0..30 {
        assert_eq!(a.put_key(&format!("user:{i}"), json!(i))["l2"], "stored");
    }
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
    let took = wait_for("B sees the overwrite", Duration::from_secs(10), || {
        b.get_key("user:7").1["value"] == "changed"
    });
    assert!(took <= Duration::from_millis(100), "{took:?}");
    ureq::delete(&a.url("/api/cache/user:8")).call().unwrap();
    let took = wait_for("B sees the delete", Duration::from_secs(10), || {
        b.get_key("user:8").0 == 404
    });
    assert!(took <= Duration::from_millis(100), "{took:?}");

    let done: Value = ureq::post(&a.url("/api/cache/invalidate"))
        .send_json(json!({"pattern": "user:*"}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(done["invalidated"], 29, "distinct keys removed");
    let took = wait_for(
        "B sees the pattern invalidation",
        Duration::from_secs(10),
        || (0..30).all(|i| b.get_key(&format!("user:{i}")).0 == 404),
    );
    assert!(took <= Duration::from_millis(500), "{took:?}");
    assert_eq!(
        cluster.keys_per_master().iter().sum::<usize>(),
        1,
        "only order:1 is left in the cluster"
    );
    assert_eq!(b.get_key("order:1").1["value"], "o");
    assert_eq!(cluster.cli(&["EXISTS", "cm:order:1"]), "1");
}
