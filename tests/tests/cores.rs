//! What the cores' executors do apart from serving: the time they spend watching their
//! rings for work, counted apart from the work (`idle_watch_us`). Run on io_uring and,
//! by scripts/test.sh, again on epoll, where no core watches.

use std::time::Instant;

use e2e::Server;
use serde_json::json;

#[test]
fn the_time_the_cores_spend_watching_their_rings_is_counted_apart() {
    // A watch as long as CACHE_IDLE_SPIN_US allows, so that the gaps between one client's
    // requests fall inside it even on a loaded machine; and no watch at all.
    for (idle_spin_us, watches) in [("10000", true), ("0", false)] {
        let began = Instant::now();
        let s = Server::start(&[("CACHE_IDLE_SPIN_US", idle_spin_us), ("CACHE_CORES", "2")]);
        let on_ring = s.io_drivers().iter().all(|d| d == "io_uring");
        s.put_key("w", json!(1));
        let watched = || s.metrics()["idle_watch_us"].as_u64().unwrap();
        let mut requests = 0;
        while requests < 300 || (watches && on_ring && watched() == 0 && requests < 20_000) {
            assert_eq!(s.get_key("w").0, 200);
            requests += 1;
        }
        let m = s.metrics();
        let total = m["idle_watch_us"].as_u64().unwrap();
        let context = format!(
            "CACHE_IDLE_SPIN_US={idle_spin_us}, on io_uring {on_ring}, {requests} requests: {m}"
        );
        assert_eq!(total > 0, watches && on_ring, "{context}");
        let per_core: u64 = m["cores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["idle_watch_us"].as_u64().unwrap())
            .sum();
        // The cores' figures are read before the total, and a core may watch in between.
        assert!(per_core <= total, "{context}");
        // Two cores cannot have watched for longer than they have been running.
        assert!(total <= 2 * began.elapsed().as_micros() as u64, "{context}");
    }
}
