//! The API end to end, through a real HTTP client (ureq) and curl: every example of the
//! original service's README, both route forms, both value modes, the errors, auth, TTL
//! expiry, the eviction bound under concurrent load.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::Server;
use serde_json::{json, Value};

fn status_and_json(result: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let response = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = response.status();
    assert_eq!(response.content_type(), "application/json");
    (status, response.into_json().unwrap())
}

fn put(s: &Server, path: &str, body: Value) -> (u16, Value) {
    status_and_json(ureq::put(&s.url(path)).send_json(body))
}

fn get(s: &Server, path: &str) -> (u16, Value) {
    status_and_json(ureq::get(&s.url(path)).call())
}

#[test]
fn the_original_readme_examples_work_as_documented() {
    let s = Server::start(&[]);
    let (status, set) = put(
        &s,
        "/api/cache/user:123",
        json!({"key": "user:123", "value": {"id": 123, "name": "John"}, "ttl": 3600}),
    );
    assert_eq!(status, 200);
    assert_eq!(set["success"], true);
    let expires_at = set["expires_at"].as_str().unwrap().to_owned();
    assert!(
        expires_at.ends_with('Z') && expires_at.len() == 20,
        "RFC 3339 UTC: {expires_at}"
    );

    for path in ["/api/cache/user:123", "/api/cache/entry/user:123"] {
        let (status, hit) = get(&s, path);
        assert_eq!(status, 200, "{path}");
        assert_eq!(hit["value"], json!({"id": 123, "name": "John"}));
        assert_eq!(hit["hit"], true);
        assert_eq!(hit["source"], "l1");
        assert_eq!(hit["expires_at"], expires_at);
        assert!(hit["cached_at"].as_str().unwrap().ends_with('Z'));
    }

    put(&s, "/api/cache/user:456", json!({"value": [1, 2, 3]}));
    let (status, inv) = status_and_json(
        ureq::post(&s.url("/api/cache/invalidate"))
            .send_json(json!({"keys": ["user:123", "user:456"]})),
    );
    assert_eq!(status, 200);
    assert_eq!(inv, json!({"invalidated": 2, "success": true}));

    put(&s, "/api/cache/user:1", json!({"value": 1}));
    put(&s, "/api/cache/user:2", json!({"value": 2}));
    put(&s, "/api/cache/order:1", json!({"value": 3}));
    let (_, inv) = status_and_json(
        ureq::post(&s.url("/api/cache/invalidate")).send_json(json!({"pattern": "user:*"})),
    );
    assert_eq!(inv, json!({"invalidated": 2, "success": true}));
    assert_eq!(get(&s, "/api/cache/order:1").0, 200);

    let (status, miss) = get(&s, "/api/cache/user:1");
    assert_eq!(status, 404);
    assert_eq!(miss["hit"], false);
    assert!(miss["error"].as_str().unwrap().contains("user:1"));

    let m = s.metrics();
    for field in [
        "hits",
        "misses",
        "hit_rate",
        "sets",
        "deletes",
        "evictions",
        "l1_size",
        "l2_hits",
        "l2_misses",
        "l2_errors",
        "expirations",
        "l1_bytes",
        "coalesced",
        "origin_fetches",
    ] {
        assert!(m.get(field).is_some(), "metrics field {field}");
    }
    assert_eq!(m["sets"], 5);
    assert_eq!(m["deletes"], 4);
    assert_eq!(m["l1_size"], 1);
    assert!(m["hits"].as_u64().unwrap() >= 3);
    assert!(m["latency_us"]["get"]["count"].as_u64().unwrap() >= 4);
    assert_eq!(m["cores"].as_array().unwrap().len(), 2);
}

#[test]
fn values_are_any_json_returned_verbatim_and_deletes_answer() {
    let s = Server::start(&[]);
    for value in [
        json!(null),
        json!("text"),
        json!(12.5),
        json!([{"a": [true, null]}]),
        json!({"nested": {"deep": [1]}}),
    ] {
        assert_eq!(put(&s, "/api/cache/k", json!({"value": value})).0, 200);
        assert_eq!(get(&s, "/api/cache/k").1["value"], value);
    }
    // The stored bytes are the client's own text, spacing included.
    let raw = ureq::put(&s.url("/api/cache/spaced"))
        .set("Content-Type", "application/json")
        .send_string(r#"{"value": {"b" :1,  "a":2}}"#)
        .unwrap();
    assert_eq!(raw.status(), 200);
    let text = ureq::get(&s.url("/api/cache/spaced"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(text.starts_with(r#"{"value":{"b" :1,  "a":2},"#), "{text}");

    let (status, deleted) = status_and_json(ureq::delete(&s.url("/api/cache/k")).call());
    assert_eq!(
        (status, deleted),
        (200, json!({"success": true, "deleted": true}))
    );
    let (_, again) = status_and_json(ureq::delete(&s.url("/api/cache/k")).call());
    assert_eq!(again["deleted"], false);
    assert_eq!(get(&s, "/api/cache/k").0, 404);
}

#[test]
fn raw_bytes_mode_and_how_it_sees_json_values() {
    let s = Server::start(&[]);
    let bytes: Vec<u8> = (0..=255u8).collect();
    let r = ureq::put(&s.url("/api/cache/blob?ttl=120"))
        .set("Content-Type", "application/octet-stream")
        .send_bytes(&bytes)
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = ureq::get(&s.url("/api/cache/blob"))
        .set("Accept", "application/octet-stream")
        .call()
        .unwrap();
    assert_eq!(r.content_type(), "application/octet-stream");
    assert_eq!(r.header("X-Cache-Source"), Some("l1"));
    let max_age: u64 = r
        .header("Cache-Control")
        .unwrap()
        .strip_prefix("max-age=")
        .unwrap()
        .parse()
        .unwrap();
    assert!((118..=120).contains(&max_age), "{max_age}");
    let mut body = Vec::new();
    r.into_reader().read_to_end(&mut body).unwrap();
    assert_eq!(body, bytes);
    // Through JSON, non-UTF-8 bytes come back as base64.
    let (_, hit) = get(&s, "/api/cache/blob");
    assert_eq!(hit["encoding"], "base64");
    // UTF-8 bytes come back as a string; JSON values come back as their text.
    ureq::put(&s.url("/api/cache/text"))
        .set("Content-Type", "application/octet-stream")
        .send_string("héllo")
        .unwrap();
    assert_eq!(get(&s, "/api/cache/text").1["value"], "héllo");
    put(&s, "/api/cache/doc", json!({"value": {"x": 1}}));
    let r = ureq::get(&s.url("/api/cache/doc"))
        .set("Accept", "application/octet-stream")
        .call()
        .unwrap();
    assert_eq!(r.content_type(), "application/json");
    assert_eq!(r.into_string().unwrap(), r#"{"x":1}"#);
}

use std::io::Read;

#[test]
fn bad_requests_get_json_errors_with_the_right_status() {
    let s = Server::start(&[("CACHE_MAX_TTL", "86400")]);
    let cases: Vec<(ureq::Request, Option<&str>, u16, &str)> = vec![
        (
            ureq::put(&s.url("/api/cache/k")),
            Some("{not json"),
            400,
            "invalid JSON",
        ),
        (
            ureq::put(&s.url("/api/cache/k")),
            Some(r#"{"ttl": 5}"#),
            400,
            "missing field `value`",
        ),
        (
            ureq::put(&s.url("/api/cache/k")),
            Some(r#"{"value": 1, "ttl": -5}"#),
            400,
            "invalid JSON",
        ),
        (
            ureq::put(&s.url("/api/cache/k")),
            Some(r#"{"value": 1, "ttl": 1.5}"#),
            400,
            "invalid JSON",
        ),
        (
            ureq::put(&s.url("/api/cache/k")),
            Some(r#"{"value": 1, "ttl": 86401}"#),
            400,
            "CACHE_MAX_TTL",
        ),
        (
            ureq::put(&s.url("/api/cache/k")),
            Some(r#"{"key": "other", "value": 1}"#),
            400,
            "differs",
        ),
        (
            ureq::put(&s.url("/api/cache/k")).set("Content-Type", "text/plain"),
            Some("x"),
            415,
            "Content-Type",
        ),
        (
            ureq::post(&s.url("/api/cache/invalidate")),
            Some(r#"{}"#),
            400,
            "exactly one",
        ),
        (
            ureq::post(&s.url("/api/cache/invalidate")),
            Some(r#"{"keys": [], "pattern": "a*"}"#),
            400,
            "exactly one",
        ),
        (
            ureq::post(&s.url("/api/cache/invalidate")),
            Some(r#"{"pattern": ""}"#),
            400,
            "empty pattern",
        ),
        (
            ureq::get(&s.url("/api/cache/invalidate")),
            None,
            405,
            "allowed: POST",
        ),
        (
            ureq::post(&s.url("/api/cache/k")),
            Some("{}"),
            405,
            "allowed: GET, HEAD, PUT, DELETE",
        ),
        (ureq::get(&s.url("/nothing/here")), None, 404, "no route"),
        (ureq::get(&s.url("/api/cache/a/b")), None, 404, "%2F"),
        (
            ureq::get(&s.url("/api/cache/bad%0Akey")),
            None,
            400,
            "control byte 0x0a",
        ),
        (
            ureq::get(&s.url("/api/cache/nul%00")),
            None,
            400,
            "control byte 0x00",
        ),
        (
            ureq::get(&s.url(&format!("/api/cache/{}", "k".repeat(251)))),
            None,
            414,
            "251 bytes; the limit is 250",
        ),
    ];
    for (request, body, expected, needle) in cases {
        let what = format!("{} {}", request.method(), request.url());
        let result = match body {
            Some(b) => request.send_string(b),
            None => request.call(),
        };
        let (status, error) = status_and_json(result);
        assert_eq!(status, expected, "{what}: {error}");
        let message = error["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{what}: {message:?} lacks {needle:?}"
        );
    }
    let (status, _) = get(&s, &format!("/api/cache/{}", "k".repeat(250)));
    assert_eq!(status, 404, "a 250-byte key is valid (and absent)");
    // Deep nesting is valid JSON: it is stored and returned whole, without recursion.
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let (status, _) = status_and_json(
        ureq::put(&s.url("/api/cache/deep")).send_string(&format!("{{\"value\": {deep}}}")),
    );
    assert_eq!(status, 200);
    let text = ureq::get(&s.url("/api/cache/deep"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(text.starts_with(&format!("{{\"value\":{deep},")));
    // Where a structure is expected, it is refused.
    let nested_keys = format!("{{\"keys\": {deep}}}");
    let (status, _) =
        status_and_json(ureq::post(&s.url("/api/cache/invalidate")).send_string(&nested_keys));
    assert_eq!(status, 400);
    assert_eq!(get(&s, "/healthz").1, json!({"status": "ok"}));
}

#[test]
fn the_auth_token_guards_every_mutating_route() {
    let s = Server::start(&[("CACHE_AUTH_TOKEN", "s3cret")]);
    let unauth = [
        ureq::put(&s.url("/api/cache/k")).send_json(json!({"value": 1})),
        ureq::delete(&s.url("/api/cache/k")).call(),
        ureq::post(&s.url("/api/cache/invalidate")).send_json(json!({"pattern": "*"})),
        ureq::put(&s.url("/api/cache/k"))
            .set("Authorization", "Bearer wrong")
            .send_json(json!({"value": 1})),
    ];
    for result in unauth {
        let (status, error) = status_and_json(result);
        assert_eq!(status, 401, "{error}");
    }
    let ok = ureq::put(&s.url("/api/cache/k"))
        .set("Authorization", "Bearer s3cret")
        .send_json(json!({"value": 1}));
    assert_eq!(status_and_json(ok).0, 200);
    assert_eq!(get(&s, "/api/cache/k").0, 200, "reads stay open");
}

#[test]
fn entries_expire_at_their_ttl() {
    let s = Server::start(&[("CACHE_CLEANUP_INTERVAL", "1")]);
    put(&s, "/api/cache/short", json!({"value": "v", "ttl": 1}));
    put(&s, "/api/cache/long", json!({"value": "v"}));
    assert_eq!(get(&s, "/api/cache/short").0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&s, "/api/cache/short").0 == 200 {
        assert!(
            Instant::now() < deadline,
            "still served 10 s after a 1 s TTL"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    // The sweep frees it (and counts it) within a cleanup interval or two.
    while s.metrics()["expirations"] != 1 {
        assert!(Instant::now() < deadline, "never swept: {}", s.metrics());
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(s.metrics()["l1_size"], 1);
    assert_eq!(get(&s, "/api/cache/long").0, 200);
}

/// Entries that reach their TTL together are more than a write frees before it is made
/// (it takes a bounded share); the owner frees the rest in turns right after, without
/// waiting for the sweep.
#[test]
fn entries_due_together_are_all_freed_after_one_write_without_the_sweep() {
    let s = Server::start(&[("CACHE_CORES", "1"), ("CACHE_CLEANUP_INTERVAL", "3600")]);
    let agent = ureq::AgentBuilder::new().build();
    let short = 2_000;
    for i in 0..short {
        let r = agent
            .put(&s.url(&format!("/api/cache/short{i}")))
            .send_json(json!({"value": i, "ttl": 1}));
        assert_eq!(status_and_json(r).0, 200);
    }
    put(&s, "/api/cache/long", json!({"value": "v"}));
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&s, &format!("/api/cache/short{}", short - 1)).0 == 200 {
        assert!(
            Instant::now() < deadline,
            "still served 10 s after a 1 s TTL"
        );
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(s.metrics()["expirations"], 0, "no write and no sweep yet");
    put(&s, "/api/cache/trigger", json!({"value": "v"}));
    while s.metrics()["expirations"] != short {
        assert!(Instant::now() < deadline, "not all freed: {}", s.metrics());
        std::thread::park_timeout(Duration::from_millis(50));
    }
    assert_eq!(s.metrics()["l1_size"], 2);
    assert_eq!(get(&s, "/api/cache/long").0, 200);
}

#[test]
fn the_entry_bound_holds_under_concurrent_writers() {
    let s = Server::start(&[("CACHE_L1_MAX_ENTRIES", "100")]);
    std::thread::scope(|scope| {
        for t in 0..8 {
            let s = &s;
            scope.spawn(move || {
                let agent = ureq::AgentBuilder::new().build();
                for i in 0..250 {
                    let r = agent
                        .put(&s.url(&format!("/api/cache/t{t}-{i}")))
                        .send_json(json!({"value": i}));
                    assert_eq!(r.unwrap().status(), 200);
                    if i % 10 == 0 {
                        let _ = agent.get(&s.url(&format!("/api/cache/t{t}-{i}"))).call();
                    }
                }
            });
        }
    });
    let m = s.metrics();
    assert_eq!(m["sets"], 2000);
    assert!(m["l1_size"].as_u64().unwrap() <= 100, "{m}");
    assert_eq!(
        m["evictions"].as_u64().unwrap() + m["l1_size"].as_u64().unwrap(),
        2000
    );
    assert!(m["requests"].as_u64().unwrap() >= 2200);
}

/// Reads a hot set through the service (GET, and PUT on a 404), then floods it with ten
/// times its capacity in keys written once while the hot set goes on being read, slowly
/// (one hot read per ten writes); returns how many hot keys are still cached, and the
/// metrics.
fn hot_set_through_a_flood(env: &[(&str, &str)]) -> (usize, Value) {
    let s = Server::start(env);
    let agent = ureq::AgentBuilder::new().build();
    let read_through = |key: &str| {
        let url = s.url(&format!("/api/cache/{key}"));
        match agent.get(&url).call() {
            Ok(_) => true,
            Err(ureq::Error::Status(404, _)) => {
                agent.put(&url).send_json(json!({"value": 1})).unwrap();
                false
            }
            Err(e) => panic!("GET {key}: {e}"),
        }
    };
    let hot: Vec<String> = (0..100).map(|i| format!("hot{i}")).collect();
    for _ in 0..10 {
        for k in &hot {
            read_through(k);
        }
    }
    for i in 0..4_000 {
        let url = s.url(&format!("/api/cache/flood{i}"));
        agent.put(&url).send_json(json!({"value": i})).unwrap();
        if i % 10 == 0 {
            read_through(&hot[i / 10 % hot.len()]);
        }
    }
    let kept = hot
        .iter()
        .filter(|k| get(&s, &format!("/api/cache/{k}")).0 == 200)
        .count();
    (kept, s.metrics())
}

#[test]
fn adaptive_eviction_keeps_a_hot_set_through_a_one_hit_flood() {
    let (kept, m) = hot_set_through_a_flood(&[("CACHE_L1_MAX_ENTRIES", "400")]);
    assert!(kept >= 95, "{kept} of 100 hot keys kept: {m}");
    assert_eq!(m["eviction"], "adaptive");
    assert!(m["admissions_refused"].as_u64().unwrap() > 1_000, "{m}");
    let share = m["window_share"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&share), "{m}");
    assert!(m["l1_size"].as_u64().unwrap() <= 400, "{m}");

    let (kept, m) =
        hot_set_through_a_flood(&[("CACHE_L1_MAX_ENTRIES", "400"), ("CACHE_EVICTION", "clock")]);
    assert!(kept < 50, "plain CLOCK lets the flood through: {kept} kept");
    assert_eq!(m["eviction"], "clock");
    assert_eq!(m["admissions_refused"], 0);
    assert_eq!(m["window_share"], 1.0);
}

#[test]
fn curl_with_a_large_body_uses_expect_continue_and_works() {
    let s = Server::start(&[]);
    let value = "x".repeat(4096);
    let file = std::env::temp_dir().join(format!("cache-manager-e2e-{}.json", std::process::id()));
    std::fs::write(&file, json!({"value": value}).to_string()).unwrap();
    let out = Command::new("curl")
        // curl 7.88 adds `Expect: 100-continue` by itself only above 1 MiB; ask for it.
        .args([
            "-sS",
            "-v",
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/json",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg(s.url("/api/cache/big"))
        .output()
        .expect("curl runs (scripts/test.sh installs it)");
    let _ = std::fs::remove_file(&file);
    let trace = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{trace}");
    assert!(
        trace.contains("Expect: 100-continue"),
        "curl sent Expect: {trace}"
    );
    assert!(
        trace.contains("HTTP/1.1 100 Continue"),
        "the server answered 100: {trace}"
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["success"],
        true
    );
    assert_eq!(get(&s, "/api/cache/big").1["value"], value);
    let head = Command::new("curl")
        .args(["-sS", "-I"])
        .arg(s.url("/api/cache/big"))
        .output()
        .unwrap();
    let head = String::from_utf8_lossy(&head.stdout);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
}

#[test]
fn prometheus_text_is_served() {
    let s = Server::start(&[]);
    put(&s, "/api/cache/k", json!({"value": 1}));
    get(&s, "/api/cache/k");
    let r = ureq::get(&s.url("/metrics")).call().unwrap();
    assert!(r.content_type().starts_with("text/plain"));
    let text = r.into_string().unwrap();
    assert!(
        text.contains("# TYPE cache_hits_total counter\ncache_hits_total 1\n"),
        "{text}"
    );
    assert!(text.contains("cache_request_latency_microseconds{op=\"get\",quantile=\"0.99\"}"));
    assert!(text.contains("cache_core_requests_total{core=\"1\"}"));
    for metric in [
        "cache_admissions_refused_total 0",
        "cache_window_share 0.01",
        "cache_sketch_resets_total 0",
        "cache_slab_moves_total 0",
    ] {
        assert!(text.contains(metric), "{metric} in {text}");
    }
    let off = Server::start(&[("METRICS_ENABLED", "false")]);
    assert_eq!(
        status_and_json(ureq::get(&off.url("/api/cache/metrics")).call()).0,
        404
    );
}

#[test]
fn the_history_answers_only_the_seconds_after_since() {
    let s = Server::start(&[]);
    let times = |query: &str| -> Vec<u64> {
        let (status, history) = get(&s, &format!("/api/cache/history{query}"));
        assert_eq!(status, 200, "{history}");
        let samples = history["samples"].as_array().expect("samples");
        samples
            .iter()
            .map(|s| s["t"].as_u64().expect("t"))
            .collect()
    };
    e2e::wait_for("two samples", Duration::from_secs(10), || {
        times("").len() >= 2
    });
    let all = times("");
    let last = *all.last().unwrap();
    let newer = times(&format!("?since={last}"));
    assert!(newer.iter().all(|&t| t > last), "{newer:?} after {last}");
    let tail = times(&format!("?since={}", all[all.len() - 2]));
    assert_eq!(tail.first(), Some(&last), "{tail:?} after {all:?}");
    assert_eq!(times("?since=0")[..all.len()], all[..]);
    let (status, error) = get(&s, "/api/cache/history?since=-1");
    assert_eq!(status, 400);
    assert!(
        error["error"].as_str().unwrap().contains("since must be"),
        "{error}"
    );
}

/// The history's seconds add up to every request of each operation, across cores, and
/// each second's percentiles are those of a second with requests in it.
#[test]
fn the_history_counts_every_request_once() {
    let s = Server::start(&[("CACHE_CORES", "2")]);
    let (puts, gets, deletes, invalidates) = (30, 50, 7, 3);
    for i in 0..puts {
        put(&s, &format!("/api/cache/k{i}"), json!({"value": i}));
    }
    for i in 0..gets {
        get(&s, &format!("/api/cache/k{}", i % (puts + 5)));
    }
    for i in 0..deletes {
        let _ = ureq::delete(&s.url(&format!("/api/cache/k{i}"))).call();
    }
    for i in 0..invalidates {
        let body = json!({ "keys": [format!("k{}", 10 + i)] });
        let (status, _) =
            status_and_json(ureq::post(&s.url("/api/cache/invalidate")).send_json(body));
        assert_eq!(status, 200);
    }
    let sum = |samples: &[Value], field: &str| -> u64 {
        samples.iter().map(|s| s[field].as_u64().unwrap()).sum()
    };
    let mut samples = Vec::new();
    e2e::wait_for(
        "every request in the history",
        Duration::from_secs(10),
        || {
            let (_, history) = get(&s, "/api/cache/history");
            samples = history["samples"].as_array().unwrap().clone();
            sum(&samples, "gets") >= gets
        },
    );
    assert_eq!(sum(&samples, "gets"), gets);
    assert_eq!(sum(&samples, "sets"), puts);
    assert_eq!(sum(&samples, "deletes"), deletes);
    assert_eq!(sum(&samples, "invalidates"), invalidates);
    for sample in &samples {
        let ops: u64 = ["gets", "sets", "deletes", "invalidates"]
            .iter()
            .map(|op| sample[op].as_u64().unwrap())
            .sum();
        let [p50, p99, p999] = ["p50_us", "p99_us", "p999_us"].map(|p| sample[p].as_u64().unwrap());
        assert!(p50 <= p99 && p99 <= p999, "{sample}");
        assert_eq!(
            ops > 0,
            p50 > 0,
            "percentiles of a second with requests: {sample}"
        );
    }
}

#[test]
fn the_hop_read_path_serves_the_same_answers() {
    // Hops wake the owner core from another thread: with the cores watching their rings
    // before they sleep (the default) and without.
    for idle_spin_us in ["50", "0"] {
        let s = Server::start(&[
            ("CACHE_READ_PATH", "hop"),
            ("CACHE_IDLE_SPIN_US", idle_spin_us),
        ]);
        for i in 0..50 {
            put(
                &s,
                &format!("/api/cache/h{i}"),
                json!({"value": i, "ttl": 60}),
            );
        }
        for i in 0..50 {
            let (status, hit) = get(&s, &format!("/api/cache/h{i}"));
            assert_eq!(status, 200, "CACHE_IDLE_SPIN_US={idle_spin_us}");
            assert_eq!(hit["value"], i);
            assert!(hit["expires_at"].is_string());
        }
        assert_eq!(get(&s, "/api/cache/absent").0, 404);
        let m = s.metrics();
        assert_eq!(
            (m["hits"].as_u64(), m["misses"].as_u64()),
            (Some(50), Some(1))
        );
    }
}

#[test]
fn the_cores_wait_on_the_io_driver_they_are_told_to() {
    let epoll = Server::start(&[("CACHE_IO_DRIVER", "epoll")]);
    for i in 0..20 {
        put(&epoll, &format!("/api/cache/e{i}"), json!({"value": i}));
    }
    for i in 0..20 {
        assert_eq!(get(&epoll, &format!("/api/cache/e{i}")).1["value"], i);
    }
    let drivers = epoll.io_drivers();
    assert!(!drivers.is_empty());
    assert!(drivers.iter().all(|d| d == "epoll"), "{drivers:?}");
    drop(epoll);

    // What `auto` chose says whether this host allows io_uring; asked for it alone, the
    // service then runs on it, or refuses to start and says why.
    let auto = Server::start(&[("CACHE_IO_DRIVER", "auto")]);
    let chosen = auto.io_drivers();
    drop(auto);
    if chosen.iter().all(|d| d == "io_uring") {
        let ring = Server::start(&[("CACHE_IO_DRIVER", "io-uring")]);
        assert_eq!(get(&ring, "/api/cache/absent").0, 404);
        let drivers = ring.io_drivers();
        assert!(drivers.iter().all(|d| d == "io_uring"), "{drivers:?}");
    } else {
        let out = Command::new(e2e::binary())
            .env_clear()
            .env("CACHE_LISTEN", "127.0.0.1:0")
            .env("CACHE_IO_DRIVER", "io-uring")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(log.contains("CACHE_IO_DRIVER is io-uring"), "{log}");
    }

    let out = Command::new(e2e::binary())
        .args(["--io-driver", "kqueue", "--print-config"])
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("kqueue") && log.contains("auto, io-uring, epoll"),
        "{log}"
    );
}

/// A pattern invalidation over many times the slots one step of its sweep visits (each
/// core's shard is swept a few hundred slots at a time, serving between the steps):
/// another connection's reads and writes are answered meanwhile, and when it answers, it
/// has removed every matching key the cache held and counted each once, and kept every
/// other key, those written while it ran included.
#[test]
fn a_pattern_invalidation_in_steps_removes_every_match_and_keeps_the_rest() {
    let s = Server::start(&[("CACHE_CORES", "2"), ("CACHE_L1_MAX_ENTRIES", "100000")]);
    const DOOMED: usize = 4_000;
    const KEPT: usize = 200;
    for i in 0..DOOMED {
        assert_eq!(
            put(&s, &format!("/api/cache/bulk:{i}"), json!({"value": i})).0,
            200
        );
    }
    for i in 0..KEPT {
        assert_eq!(
            put(&s, &format!("/api/cache/keep:{i}"), json!({"value": i})).0,
            200
        );
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    let (invalidated, written) = std::thread::scope(|scope| {
        let meanwhile = scope.spawn(|| {
            let mut written = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (status, hit) = get(&s, &format!("/api/cache/keep:{}", written % KEPT));
                assert_eq!((status, &hit["value"]), (200, &json!(written % KEPT)));
                let key = format!("/api/cache/new:{written}");
                assert_eq!(put(&s, &key, json!({"value": written})).0, 200);
                written += 1;
            }
            written
        });
        let (status, answer) = status_and_json(
            ureq::post(&s.url("/api/cache/invalidate")).send_json(json!({"pattern": "bulk:*"})),
        );
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status, 200);
        (answer["invalidated"].clone(), meanwhile.join().unwrap())
    });
    assert_eq!(invalidated, json!(DOOMED));
    assert_eq!(s.metrics()["l1_size"], json!(KEPT + written));
    for i in (0..DOOMED).step_by(97) {
        assert_eq!(get(&s, &format!("/api/cache/bulk:{i}")).0, 404, "bulk:{i}");
    }
    for i in 0..written {
        assert_eq!(get(&s, &format!("/api/cache/new:{i}")).0, 200, "new:{i}");
    }
}
