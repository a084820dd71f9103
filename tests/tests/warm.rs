//! Warm restarts end to end, on the real binary: 100,000 entries come back after SIGTERM
//! and a restart with the same values and times, entries that expired meanwhile are not
//! served, a damaged or foreign snapshot is refused (the bad blocks, or the whole file)
//! with a log line and the service starts, and with L2 a restarted instance serves none
//! of the values another instance overwrote or deleted while it was down, and restores
//! nothing an instance without L2 saved.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::redis::RedisServer;
use e2e::Server;
use serde_json::{json, Value};

/// A fresh directory for one test's snapshot and logs.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cm-warm-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The settings of an instance saving to and loading from `snapshot`, logging JSON
/// lines.
fn settings(snapshot: &Path) -> [(&str, &str); 4] {
    [
        ("CACHE_SNAPSHOT_PATH", snapshot.to_str().unwrap()),
        ("CACHE_L1_MAX_ENTRIES", "200000"),
        ("CACHE_LOG_FORMAT", "json"),
        ("RUST_LOG", "info"),
    ]
}

/// An instance saving to and loading from `snapshot`, logging JSON lines to `log`.
fn start(snapshot: &Path, log: &Path, extra: &[(&str, &str)]) -> Server {
    let env = [&settings(snapshot)[..], extra].concat();
    Server::start_logging(&env, fs::File::create(log).unwrap())
}

/// The first log line whose message is `message`, as JSON.
fn logged(log: &Path, message: &str) -> Option<Value> {
    fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["fields"]["message"] == message)
}

/// Sends every request on one connection, pipelined (a thread writes while this one
/// reads), and returns each response's status and body in order.
fn pipelined(server: &Server, requests: Vec<Vec<u8>>) -> Vec<(u16, Vec<u8>)> {
    let stream = server.connect();
    let mut writer = stream.try_clone().unwrap();
    let count = requests.len();
    let sender = std::thread::spawn(move || {
        let mut buffered = std::io::BufWriter::new(&mut writer);
        for request in requests {
            buffered.write_all(&request).unwrap();
        }
        buffered.flush().unwrap();
    });
    let mut reader = BufReader::new(stream);
    let mut responses = Vec::with_capacity(count);
    for _ in 0..count {
        let mut status = 0;
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                status = code[..3].parse().unwrap();
            } else if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        responses.push((status, body));
    }
    sender.join().unwrap();
    responses
}

fn put_request(key: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "PUT /api/cache/{key} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn get_request(key: &str) -> Vec<u8> {
    format!("GET /api/cache/{key} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes()
}

/// GETs every key, on four connections at once; the JSON answers in key order.
fn get_all(server: &Server, keys: &[String]) -> Vec<(u16, Value)> {
    std::thread::scope(|s| {
        let parts: Vec<_> = keys
            .chunks(keys.len().div_ceil(4))
            .map(|chunk| {
                s.spawn(move || pipelined(server, chunk.iter().map(|k| get_request(k)).collect()))
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .map(|(status, body)| (status, serde_json::from_slice(&body).unwrap()))
            .collect()
    })
}

/// PUTs each key with its own name as its value.
fn put_named(server: &Server, keys: &[String]) {
    let requests = keys
        .iter()
        .map(|k| put_request(k, &json!({ "value": k })))
        .collect();
    for (status, body) in pipelined(server, requests) {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
}

/// GETs keys stored by `put_named`: how many are served, checking that every one served
/// has its own value (never a wrong one).
fn served_named(server: &Server, keys: &[String]) -> usize {
    let answers = get_all(server, keys);
    for (key, (status, body)) in keys.iter().zip(&answers) {
        if *status == 200 {
            assert_eq!(body["value"], json!(key), "never a wrong value");
        }
    }
    answers.iter().filter(|(s, _)| *s == 200).count()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn a_hundred_thousand_entries_come_back_after_sigterm_and_expired_ones_do_not() {
    let dir = scratch("restart");
    let snapshot = dir.join("cache.snap");
    let mut first = start(&snapshot, &dir.join("first.log"), &[]);
    let keys: Vec<String> = (0..100_000).map(|i| format!("key:{i}")).collect();
    // Every TTL from "never" (0 in the body means the default, so some keys get a long
    // one) to an hour, and values of several shapes.
    let requests = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let value = match i % 3 {
                0 => json!(i),
                1 => json!({"id": i, "name": format!("user {i}"), "tags": ["a", "b"]}),
                _ => json!("x".repeat(i % 200)),
            };
            put_request(k, &json!({"value": value, "ttl": 600 + i % 3000}))
        })
        .collect();
    for (status, body) in pipelined(&first, requests) {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    // These expire while the service is down.
    let short: Vec<String> = (0..1_000).map(|i| format!("short:{i}")).collect();
    let requests = short
        .iter()
        .map(|k| put_request(k, &json!({"value": "soon gone", "ttl": 5})))
        .collect();
    assert!(pipelined(&first, requests).iter().all(|(s, _)| *s == 200));
    let short_expires = now_ms() + 5_000;
    let before = get_all(&first, &keys);
    assert!(before.iter().all(|(status, _)| *status == 200));
    assert!(first.terminate(Duration::from_secs(30)).success());
    let saved = logged(&dir.join("first.log"), "snapshot saved").expect("a save logged");
    assert_eq!(saved["fields"]["entries"], 101_000, "{saved}");

    e2e::wait_for("the short TTLs to pass", Duration::from_secs(10), || {
        now_ms() > short_expires + 50
    });
    let second = start(&snapshot, &dir.join("second.log"), &[]);
    let loaded = logged(&dir.join("second.log"), "snapshot loaded").expect("a load logged");
    assert_eq!(loaded["fields"]["entries"], 101_000, "{loaded}");
    assert_eq!(loaded["fields"]["expired"], 1_000, "{loaded}");
    assert_eq!(loaded["fields"]["in_l1"], 100_000, "{loaded}");
    let after = get_all(&second, &keys);
    for ((key, (_, was)), (status, now)) in keys.iter().zip(&before).zip(&after) {
        assert_eq!(*status, 200, "{key}: {now}");
        assert_eq!(now["source"], "l1", "{key}: {now}");
        for field in ["value", "cached_at", "expires_at"] {
            assert_eq!(now[field], was[field], "{key}: {field}");
        }
    }
    for (status, body) in get_all(&second, &short) {
        assert_eq!(status, 404, "expired while down: {body}");
    }
    let metrics = second.metrics();
    assert_eq!(metrics["snapshot_restored"], 100_000, "{metrics}");
    drop(second);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_damaged_snapshot_loses_only_its_bad_blocks_and_a_foreign_one_is_refused() {
    let dir = scratch("damaged");
    let snapshot = dir.join("cache.snap");
    let mut first = start(&snapshot, &dir.join("first.log"), &[("CACHE_CORES", "1")]);
    let keys: Vec<String> = (0..5_000).map(|i| format!("k{i}")).collect();
    put_named(&first, &keys);
    assert!(first.terminate(Duration::from_secs(30)).success());

    // One byte flipped in the middle of the file: one block of entries is lost.
    let mut bytes = fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    fs::write(&snapshot, &bytes).unwrap();
    let log = dir.join("damaged.log");
    let second = start(&snapshot, &log, &[("CACHE_CORES", "1")]);
    let complaint = logged(&log, "snapshot damaged, good blocks kept: block at byte")
        .or_else(|| {
            fs::read_to_string(&log)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|l| {
                    l["fields"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("snapshot damaged"))
                })
        })
        .expect("the damage is logged");
    assert_eq!(complaint["level"], "ERROR");
    assert!(
        complaint["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("checksum"),
        "{complaint}"
    );
    let served = served_named(&second, &keys);
    assert!(
        (5_000 - 1_024..5_000).contains(&served),
        "one block lost: {served} served"
    );
    drop(second);

    // Not a snapshot at all: refused whole, named in the log, and the service starts.
    fs::write(&snapshot, b"this is not a snapshot, just some text").unwrap();
    let log = dir.join("foreign.log");
    let third = start(&snapshot, &log, &[("CACHE_CORES", "1")]);
    let refused = logged(&log, "snapshot refused: starting cold").expect("the refusal is logged");
    let error = refused["fields"]["error"].as_str().unwrap();
    assert!(
        error.contains(snapshot.to_str().unwrap())
            && error.contains("not a cache-manager snapshot"),
        "{refused}"
    );
    assert_eq!(third.get_key("k1").0, 404);
    third.put_key("k1", json!("fresh"));
    drop(third);
    fs::remove_dir_all(&dir).unwrap();
}

/// What [`restart_after_others_wrote`] leaves running.
struct WhileDown {
    dir: PathBuf,
    _redis: RedisServer,
    _a: Server,
    b: Server,
    /// B's log since its warm restart.
    log: PathBuf,
}

/// The kinds of key [`restart_after_others_wrote`] writes, by what became of them in L2.
const FATES: [&str; 4] = ["overwritten", "deleted", "vanished", "untouched"];

/// The warm-restart issue's coherence case: B holds keys in L1 (`copies` of each of
/// [`FATES`], named `{fate}{i}`) and stops; A overwrites some, deletes others, and others
/// disappear from Redis; B restarts warm with `restart_env` besides its usual settings,
/// returned once it is ready or, if not `ready`, once any core answers.
fn restart_after_others_wrote(
    name: &str,
    copies: usize,
    restart_env: &[(&str, &str)],
    ready: bool,
) -> WhileDown {
    let dir = scratch(name);
    let redis = RedisServer::start();
    let snapshot = dir.join("b.snap");
    let redis_url = redis.url();
    let b_env = [
        ("REDIS_URL", redis_url.as_str()),
        ("REDIS_TIMEOUT_MS", "500"),
    ];
    let a = redis.instance(&[("REDIS_TIMEOUT_MS", "500")]);
    let mut b = start(&snapshot, &dir.join("b1.log"), &b_env);
    let keys = |fate: &'static str| (0..copies).map(move |i| format!("{fate}{i}"));
    for key in FATES.into_iter().flat_map(keys) {
        a.put_key(&key, json!(format!("old {key}")));
        // A's event for the write may fence B's first fill; B's L1 holds it once a fill
        // lands after the event.
        e2e::wait_for("B holds the key in L1", Duration::from_secs(10), || {
            b.get_key(&key).1["source"] == "l1"
        });
    }
    assert!(b.terminate(Duration::from_secs(30)).success());

    for key in keys("overwritten") {
        a.put_key(&key, json!(format!("new {key}")));
    }
    for key in keys("deleted") {
        let deleted = ureq::delete(&a.url(&format!("/api/cache/{key}"))).call();
        assert_eq!(deleted.unwrap().status(), 200);
    }
    for key in keys("vanished") {
        redis.cli(&["DEL", &format!("cm:{key}")]);
    }

    let log = dir.join("b2.log");
    let env = [&settings(&snapshot)[..], &b_env, restart_env].concat();
    let log_file = fs::File::create(&log).unwrap();
    let b = match ready {
        true => Server::start_logging(&env, log_file),
        false => Server::start_live(&env, log_file),
    };
    let loaded = logged(&log, "snapshot loaded").expect("a load logged");
    assert_eq!(
        loaded["fields"]["to_confirm_with_l2"],
        4 * copies,
        "{loaded}"
    );
    WhileDown {
        dir,
        _redis: redis,
        _a: a,
        b,
        log,
    }
}

/// Once ready, B serves none of the old values, yet keeps (from its snapshot, confirmed
/// by L2) the key nobody touched.
#[test]
fn a_restarted_instance_serves_nothing_another_overwrote_or_deleted_while_it_was_down() {
    let restarted = restart_after_others_wrote("coherent", 1, &[], true);
    let b = &restarted.b;
    assert_eq!(b.metrics()["snapshot_restored"], 1, "checked before ready");
    let (status, overwritten) = b.get_key("overwritten0");
    assert_eq!(status, 200);
    assert_eq!(overwritten["value"], "new overwritten0", "{overwritten}");
    assert_eq!(overwritten["source"], "l2", "refetched, not restored");
    assert_eq!(b.get_key("deleted0").0, 404);
    assert_eq!(b.get_key("vanished0").0, 404, "unconfirmed: not served");
    let (status, untouched) = b.get_key("untouched0");
    assert_eq!(status, 200);
    assert_eq!(untouched["value"], "old untouched0");
    assert_eq!(untouched["source"], "l1", "restored from the snapshot");
    drop(restarted.b);
    fs::remove_dir_all(&restarted.dir).unwrap();
}

/// Without L2 a write makes no version, so what an instance without L2 saved cannot be
/// confirmed with L2: an instance with L2 refuses it at load (it was never in Redis) and
/// serves the key from Redis, or not at all.
#[test]
fn an_instance_with_l2_restores_nothing_saved_without_it() {
    let dir = scratch("unversioned");
    let snapshot = dir.join("alone.snap");
    let mut alone = start(&snapshot, &dir.join("alone.log"), &[]);
    for key in ["kept", "elsewhere"] {
        alone.put_key(key, json!(format!("alone {key}")));
        assert_eq!(alone.get_key(key).1["source"], "l1");
    }
    assert!(alone.terminate(Duration::from_secs(30)).success());

    let redis = RedisServer::start();
    let other = redis.instance(&[]);
    other.put_key("elsewhere", json!("in redis"));
    let redis_url = redis.url();
    let log = dir.join("with-l2.log");
    let with_l2 = start(&snapshot, &log, &[("REDIS_URL", redis_url.as_str())]);
    let loaded = logged(&log, "snapshot loaded").expect("a load logged");
    assert_eq!(loaded["fields"]["entries"], 2, "{loaded}");
    assert_eq!(loaded["fields"]["refused"], 2, "{loaded}");
    assert_eq!(loaded["fields"]["to_confirm_with_l2"], 0, "{loaded}");
    assert_eq!(with_l2.get_key("kept").0, 404, "not restored, not in Redis");
    let (status, elsewhere) = with_l2.get_key("elsewhere");
    assert_eq!(status, 200);
    assert_eq!(elsewhere["value"], "in redis", "{elsewhere}");
    assert_eq!(elsewhere["source"], "l2", "{elsewhere}");
    drop(with_l2);
    fs::remove_dir_all(&dir).unwrap();
}

/// A connection to a core that serves (a connection to core 0 waits in its backlog while
/// core 0 checks its restored entries): one whose `/readyz` answers. Also says whether
/// that answer was 503, so that the check was still going on; 200 means it is over, as it
/// may be for the last reads on a loaded machine.
fn connect_to_a_serving_core(server: &Server) -> (TcpStream, bool) {
    loop {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        // Short: a connection in core 0's backlog is dropped for another try, and each
        // try lands on either core at random.
        stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        stream
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        if let Some(ready) = e2e::try_read_response(&mut stream, false) {
            assert!(
                [200, 503].contains(&ready.status),
                "readiness answered {}",
                ready.status
            );
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            return (stream, ready.status == 503);
        }
    }
}

/// Reads that reach a serving core while core 0's check with L2 is held up (a fault
/// point) wait for the check when they are for core 0's keys: a key L2 confirms is
/// served from the snapshot, every other is filled again from L2 (before: answered 503
/// "retry"). The service is not ready until every core serves.
#[test]
fn reads_during_the_check_of_restored_entries_get_the_current_values() {
    const COPIES: usize = 8;
    let restarted = restart_after_others_wrote(
        "checking",
        COPIES,
        &[("CACHE_FAULT_RESTORE_CHECK_DELAY_MS", "3000")],
        false,
    );
    let b = &restarted.b;
    e2e::wait_for("core 0's check in flight", Duration::from_secs(10), || {
        logged(
            &restarted.log,
            "fault: the first check of restored entries waits",
        )
        .is_some()
    });
    let answers: Vec<(String, bool, u16, Value)> = std::thread::scope(|scope| {
        let reads: Vec<_> = FATES
            .iter()
            .flat_map(|fate| (0..COPIES).map(move |i| format!("{fate}{i}")))
            .map(|key| {
                scope.spawn(move || {
                    let (mut stream, during_check) = connect_to_a_serving_core(b);
                    let request = format!("GET /api/cache/{key} HTTP/1.1\r\nHost: test\r\n\r\n");
                    let answer = e2e::exchange(&mut stream, request.as_bytes());
                    (key, during_check, answer.status, answer.json())
                })
            })
            .collect();
        reads.into_iter().map(|r| r.join().unwrap()).collect()
    });
    let during_check = answers.iter().filter(|a| a.1).count();
    assert!(during_check > 0, "no read was sent while core 0 checked");
    for (key, _, status, body) in &answers {
        let fate = key.trim_end_matches(|c: char| c.is_ascii_digit());
        match fate {
            "overwritten" => {
                assert_eq!(*status, 200, "{key}: {body}");
                assert_eq!(body["value"], format!("new {key}"), "{key}: {body}");
                assert_eq!(body["source"], "l2", "{key}: refetched, not restored");
            }
            "deleted" | "vanished" => assert_eq!(*status, 404, "{key}: {body}"),
            _ => {
                assert_eq!(*status, 200, "{key}: {body}");
                assert_eq!(body["value"], format!("old {key}"), "{key}: {body}");
                assert_eq!(body["source"], "l1", "{key}: restored from the snapshot");
            }
        }
    }
    let metrics = b.metrics();
    assert!(
        metrics["coalesced"].as_u64().unwrap() >= 1,
        "some read waited on core 0's check: {metrics}"
    );
    e2e::wait_for("ready", Duration::from_secs(10), || {
        b.get_once("/readyz").is_some_and(|r| r.status == 200)
    });
    assert_eq!(b.metrics()["snapshot_restored"], COPIES);
    drop(restarted.b);
    fs::remove_dir_all(&restarted.dir).unwrap();
}

/// Snapshots on a timer, written while serving: after a crash (SIGKILL: no shutdown
/// snapshot), the last timed one brings the cache back; and the restart's own bounds
/// and core count apply, whatever the snapshot's were.
#[test]
fn a_timed_snapshot_survives_a_crash_and_the_new_bounds_apply() {
    let dir = scratch("timed");
    let snapshot = dir.join("cache.snap");
    let first = start(
        &snapshot,
        &dir.join("first.log"),
        &[("CACHE_SNAPSHOT_INTERVAL", "1"), ("CACHE_CORES", "2")],
    );
    let keys: Vec<String> = (0..3_000).map(|i| format!("t{i}")).collect();
    put_named(&first, &keys);
    // A snapshot that began after the last write holds every key.
    let written = now_ms();
    e2e::wait_for(
        "a timed snapshot after the writes",
        Duration::from_secs(20),
        || {
            first.metrics()["snapshot_last_saved_seconds"]
                .as_u64()
                .is_some_and(|s| s * 1000 > written + 1000)
        },
    );
    assert_eq!(first.get_key("t1").1["value"], "t1", "served meanwhile");
    drop(first); // SIGKILL

    let second = start(
        &snapshot,
        &dir.join("second.log"),
        &[("CACHE_CORES", "1"), ("CACHE_L1_MAX_ENTRIES", "1000")],
    );
    let loaded = logged(&dir.join("second.log"), "snapshot loaded").expect("a load logged");
    assert_eq!(loaded["fields"]["entries"], 3_000, "{loaded}");
    assert_eq!(loaded["fields"]["in_l1"], 1_000, "the new bound: {loaded}");
    assert_eq!(served_named(&second, &keys), 1_000);
    drop(second);
    fs::remove_dir_all(&dir).unwrap();
}

/// A snapshot that cannot be written (its directory is gone) is counted and logged, the
/// service goes on serving, and it still stops cleanly.
#[test]
fn a_failed_snapshot_is_counted_and_logged_and_serving_goes_on() {
    let dir = scratch("failing");
    let doomed = dir.join("doomed");
    fs::create_dir_all(&doomed).unwrap();
    let log = dir.join("service.log");
    let mut server = start(
        &doomed.join("cache.snap"),
        &log,
        &[("CACHE_SNAPSHOT_INTERVAL", "1"), ("CACHE_CORES", "1")],
    );
    server.put_key("k", json!("v"));
    fs::remove_dir_all(&doomed).unwrap();
    e2e::wait_for("a failed snapshot counted", Duration::from_secs(20), || {
        server.metrics()["snapshot_failures"].as_u64() > Some(0)
    });
    let failure = logged(&log, "snapshot not saved; the previous one stays").expect("logged");
    assert_eq!(failure["level"], "ERROR");
    assert!(
        failure["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("doomed"),
        "{failure}"
    );
    assert_eq!(server.get_key("k").1["value"], "v", "still serving");
    assert!(server.terminate(Duration::from_secs(30)).success());
    fs::remove_dir_all(&dir).unwrap();
}
