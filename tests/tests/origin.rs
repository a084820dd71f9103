//! Read-through and write-through to an origin, end to end: fills land in L1 and L2,
//! a stampede makes one origin fetch, 404s pass through (and can be remembered), origin
//! failures are 502, a fill raced by an invalidation is never served afterwards, and
//! ORIGIN_WRITE writes the origin first.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::origin::Origin;
use e2e::redis::RedisServer;
use e2e::{read_response, wait_for, Server};
use serde_json::{json, Value};

/// Two instances sharing `origin` and `redis`.
fn two_instances(origin: &Origin, redis: &RedisServer) -> (Server, Server) {
    let (template, url) = (origin.template(), redis.url());
    let env = [
        ("ORIGIN_URL", template.as_str()),
        ("REDIS_URL", url.as_str()),
    ];
    (Server::start(&env), Server::start(&env))
}

#[test]
fn a_miss_everywhere_is_filled_from_the_origin_into_l1_and_l2() {
    let origin = Origin::start();
    origin.set("user:1", r#"{"id":1}"#);
    let redis = RedisServer::start();
    let (a, b) = two_instances(&origin, &redis);
    let (status, first) = a.get_key("user:1");
    assert_eq!(
        (status, first["source"].as_str()),
        (200, Some("origin")),
        "{first}"
    );
    assert_eq!(first["value"], json!({"id": 1}));
    assert_eq!(a.get_key("user:1").1["source"], "l1");
    assert_eq!(
        redis.cli(&["EXISTS", "cm:user:1"]),
        "1",
        "written through to L2"
    );
    assert_eq!(
        b.get_key("user:1").1["source"],
        "l2",
        "the other instance needs no origin fetch"
    );
    assert_eq!(origin.gets(), 1);
    assert_eq!(a.metrics()["origin_fetches"], 1);
}

#[test]
fn a_thousand_concurrent_misses_make_one_origin_fetch() {
    let origin = Origin::start();
    origin.set("cold", r#""v""#);
    origin.close_gate();
    let s = Server::start(&[("ORIGIN_URL", &origin.template())]);
    std::thread::scope(|scope| {
        let mut clients = Vec::new();
        // 200 connections with 5 pipelined GETs each: 1,000 requests, 200 of them
        // waiting at once (a connection answers its requests in order).
        for _ in 0..200 {
            let s = &s;
            clients.push(scope.spawn(move || {
                let mut c = s.connect();
                let batch = "GET /api/cache/cold HTTP/1.1\r\nHost: t\r\n\r\n".repeat(5);
                c.write_all(batch.as_bytes()).unwrap();
                (0..5)
                    .map(|_| read_response(&mut c).status)
                    .collect::<Vec<_>>()
            }));
        }
        wait_for("the origin was asked", Duration::from_secs(10), || {
            origin.gets() == 1
        });
        wait_for(
            "every connection's first request waits on the one fill",
            Duration::from_secs(10),
            || s.metrics()["misses"].as_u64().unwrap() >= 200,
        );
        origin.open_gate();
        for client in clients {
            assert!(client.join().unwrap().iter().all(|status| *status == 200));
        }
    });
    assert_eq!(
        origin.gets(),
        1,
        "one origin fetch for 1,000 concurrent misses"
    );
    let m = s.metrics();
    assert!(m["coalesced"].as_u64().unwrap() >= 199, "{m}");
    assert_eq!(
        m["hits"].as_u64().unwrap() + m["misses"].as_u64().unwrap(),
        1000
    );
}

#[test]
fn origin_404s_pass_through_and_can_be_remembered_and_failures_are_502() {
    let origin = Origin::start();
    let s = Server::start(&[
        ("ORIGIN_URL", &origin.template()),
        ("CACHE_NEGATIVE_TTL", "60"),
        ("ORIGIN_TIMEOUT_MS", "300"),
    ]);
    let (status, miss) = s.get_key("nobody");
    assert_eq!(status, 404);
    assert!(miss["error"].as_str().unwrap().contains("origin"), "{miss}");
    let (status, again) = s.get_key("nobody");
    assert_eq!(status, 404);
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("CACHE_NEGATIVE_TTL"),
        "{again}"
    );
    assert_eq!(origin.gets(), 1, "the 404 was remembered");
    origin.fail_with(Some(503));
    let (status, error) = s.get_key("broken");
    assert_eq!(status, 502);
    assert!(error["error"].as_str().unwrap().contains("503"), "{error}");
    origin.fail_with(None);
    origin.set("slow", "1");
    origin.close_gate();
    let started = Instant::now();
    let (status, error) = s.get_key("slow");
    assert_eq!(status, 502, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by ORIGIN_TIMEOUT_MS"
    );
    origin.open_gate();
    assert!(s.metrics()["origin_errors"].as_u64().unwrap() >= 2);
}

#[test]
fn a_fill_raced_by_an_invalidation_is_not_served_after_the_invalidation_returns() {
    let origin = Origin::start();
    let redis = RedisServer::start();
    origin.set("k", r#""old""#);
    origin.close_gate();
    let s = Server::start(&[
        ("ORIGIN_URL", &origin.template()),
        ("REDIS_URL", &redis.url()),
    ]);
    std::thread::scope(|scope| {
        let in_flight = scope.spawn(|| s.get_key("k"));
        wait_for(
            "the fill reached the origin",
            Duration::from_secs(10),
            || origin.gets() == 1,
        );
        // The origin has answered "old" and holds it; the data changes and is invalidated.
        origin.set("k", r#""new""#);
        let done: Value = ureq::post(&s.url("/api/cache/invalidate"))
            .send_json(json!({"keys": ["k"]}))
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(done["success"], true);
        origin.open_gate();
        let (status, raced) = in_flight.join().unwrap();
        assert_eq!(
            (status, raced["value"].as_str()),
            (200, Some("old")),
            "the request in flight gets what was fetched"
        );
    });
    let (_, after) = s.get_key("k");
    assert_eq!(
        after["value"], "new",
        "the fenced fill was stored nowhere: {after}"
    );
    assert_eq!(after["source"], "origin");
    assert_eq!(origin.gets(), 2);
    assert!(!redis.cli(&["GET", "cm:k"]).contains("old"), "nor in L2");
}

#[test]
fn origin_write_goes_to_the_origin_first() {
    let origin = Origin::start();
    let s = Server::start(&[("ORIGIN_URL", &origin.template()), ("ORIGIN_WRITE", "true")]);
    let r: Value = ureq::put(&s.url("/api/cache/w"))
        .send_json(json!({"value": {"a": 1}}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["success"], true);
    assert_eq!(origin.value("w").as_deref(), Some(r#"{"a":1}"#));
    assert_eq!(origin.puts(), 1);
    origin.fail_with(Some(500));
    let refused = ureq::put(&s.url("/api/cache/w")).send_json(json!({"value": 2}));
    let Err(ureq::Error::Status(502, response)) = refused else {
        panic!("expected a 502")
    };
    let body: Value = response.into_json().unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("nothing was stored"));
    origin.fail_with(None);
    assert_eq!(
        s.get_key("w").1["value"],
        json!({"a": 1}),
        "the refused write changed nothing"
    );
}

#[test]
fn refresh_refetches_from_the_origin_everywhere() {
    let origin = Origin::start();
    let redis = RedisServer::start();
    origin.set("k", r#""v1""#);
    let (a, b) = two_instances(&origin, &redis);
    wait_for("both subscribed", Duration::from_secs(10), || {
        redis.cli(&["PUBSUB", "NUMSUB", "cache:events"]) == "2"
    });
    assert_eq!(a.get_key("k").1["value"], "v1");
    wait_for("B applied A's fill event", Duration::from_secs(10), || {
        b.metrics()["coherence_events"] == 1
    });
    assert_eq!(b.get_key("k").1["source"], "l2");
    assert_eq!(b.get_key("k").1["source"], "l1");
    origin.set("k", r#""v2""#);
    let done: Value = ureq::post(&a.url("/api/cache/refresh"))
        .send_json(json!({"keys": ["k", "gone"]}))
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(
        done,
        json!({"refreshed": 1, "absent": ["gone"], "failed": [], "success": true})
    );
    assert_eq!(a.get_key("k").1["value"], "v2");
    wait_for("B sees the refresh", Duration::from_secs(10), || {
        b.get_key("k").1["value"] == "v2"
    });
    let no_origin = Server::start(&[]);
    let refused =
        ureq::post(&no_origin.url("/api/cache/refresh")).send_json(json!({"keys": ["k"]}));
    assert!(matches!(refused, Err(ureq::Error::Status(400, _))));
}

#[test]
fn expired_entries_are_served_stale_while_one_refresh_runs_and_while_the_origin_fails() {
    let origin = Origin::start();
    origin.set("k", r#""v1""#);
    let s = Server::start(&[
        ("ORIGIN_URL", &origin.template()),
        ("CACHE_DEFAULT_TTL", "1"),
        ("CACHE_STALE_TTL", "60"),
    ]);
    assert_eq!(s.get_key("k").1["value"], "v1");
    origin.set("k", r#""v2""#);
    origin.close_gate();
    // Past its one-second TTL the entry is served as stale, and a refresh starts.
    wait_for("the entry goes stale", Duration::from_secs(10), || {
        s.get_key("k").1.get("stale") == Some(&json!(true))
    });
    wait_for(
        "one refresh reached the origin",
        Duration::from_secs(10),
        || origin.gets() == 2,
    );
    let started = Instant::now();
    for _ in 0..20 {
        let (status, stale) = s.get_key("k");
        assert_eq!(
            (status, stale["value"].as_str(), stale["stale"].as_bool()),
            (200, Some("v1"), Some(true))
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stale reads do not wait for the refresh"
    );
    assert_eq!(origin.gets(), 2, "one refresh at a time");
    origin.open_gate();
    wait_for("the refresh lands", Duration::from_secs(10), || {
        let (_, fresh) = s.get_key("k");
        fresh["value"] == "v2" && fresh.get("stale").is_none()
    });

    // Stale on error: with the origin failing, the expired copy keeps being served.
    origin.fail_with(Some(503));
    wait_for("stale again", Duration::from_secs(10), || {
        s.get_key("k").1.get("stale") == Some(&json!(true))
    });
    wait_for("the refresh failed", Duration::from_secs(10), || {
        s.metrics()["origin_errors"].as_u64().unwrap() >= 1
    });
    for _ in 0..5 {
        let (status, served) = s.get_key("k");
        assert_eq!(
            (status, served["value"].as_str()),
            (200, Some("v2")),
            "{served}"
        );
    }
}

/// The origin slow (every fetch held past ORIGIN_TIMEOUT_MS), then failing, then back,
/// under concurrent load: L1 hits never wait for it, every miss answers within the
/// timeout with a 502 that is counted, and fills work again without a restart.
#[test]
fn a_slow_then_failing_origin_under_load_holds_up_no_hit_and_no_miss_past_its_timeout() {
    let origin = Origin::start();
    for i in 0..100 {
        origin.set(&format!("hot:{i}"), &i.to_string());
        origin.set(&format!("cold:{i}"), &i.to_string());
    }
    let s = Server::start(&[
        ("ORIGIN_URL", &origin.template()),
        ("ORIGIN_TIMEOUT_MS", "500"),
    ]);
    for i in 0..20 {
        assert_eq!(s.get_key(&format!("hot:{i}")).0, 200);
    }
    let timeout = Duration::from_millis(500);

    origin.close_gate();
    let misses_done = AtomicBool::new(false);
    let (mut hit_latencies, misses): (Vec<Duration>, Vec<(u16, Duration)>) =
        std::thread::scope(|scope| {
            let hitters: Vec<_> = (0..4)
                .map(|t| {
                    let (s, misses_done) = (&s, &misses_done);
                    scope.spawn(move || {
                        let mut latencies = Vec::new();
                        for n in 0.. {
                            if misses_done.load(Ordering::Relaxed) {
                                break;
                            }
                            let started = Instant::now();
                            let (status, hit) = s.get_key(&format!("hot:{}", (t * 5 + n) % 20));
                            latencies.push(started.elapsed());
                            assert_eq!((status, hit["source"].as_str()), (200, Some("l1")));
                        }
                        latencies
                    })
                })
                .collect();
            let missers: Vec<_> = (0..4)
                .map(|t| {
                    let s = &s;
                    scope.spawn(move || {
                        (0..3)
                            .map(|j| {
                                let started = Instant::now();
                                let (status, _) = s.get_key(&format!("cold:{}", t * 10 + j));
                                (status, started.elapsed())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let misses = missers.into_iter().map(|m| m.join()).collect::<Vec<_>>();
            misses_done.store(true, Ordering::Relaxed);
            let hits = hitters
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            (hits, misses.into_iter().flat_map(|m| m.unwrap()).collect())
        });
    for (status, took) in misses {
        assert_eq!(status, 502);
        assert!(
            took < timeout + Duration::from_millis(700),
            "a miss took {took:?}"
        );
    }
    hit_latencies.sort();
    let p99 = hit_latencies[hit_latencies.len() * 99 / 100];
    let max = *hit_latencies.last().unwrap();
    assert!(hit_latencies.len() >= 100, "{} hits", hit_latencies.len());
    // A hit that waited on the stalled origin would take its timeout.
    assert!(
        p99 < timeout / 2 && max < timeout,
        "hits wait for nothing: p99 {p99:?}, max {max:?} over {} hits",
        hit_latencies.len()
    );
    assert!(s.metrics()["origin_errors"].as_u64().unwrap() >= 12);

    // Failing fast: every miss is a quick 502, counted.
    origin.fail_with(Some(500));
    origin.open_gate();
    let before = s.metrics()["origin_errors"].as_u64().unwrap();
    for i in 50..60 {
        let started = Instant::now();
        assert_eq!(s.get_key(&format!("cold:{i}")).0, 502);
        assert!(started.elapsed() < timeout, "{:?}", started.elapsed());
    }
    assert_eq!(s.metrics()["origin_errors"].as_u64().unwrap(), before + 10);

    // Back: misses fill again, with no restart.
    origin.fail_with(None);
    let (status, filled) = s.get_key("cold:0");
    assert_eq!((status, filled["source"].as_str()), (200, Some("origin")));
    assert_eq!(s.get_key("cold:0").1["source"], "l1");
}
