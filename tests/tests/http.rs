//! HTTP/1.1 over raw sockets: pipelining, `Expect: 100-continue`, chunked bodies, the
//! framing rules, every limit at its edge, slow clients, the connection limit, and the
//! SIGTERM drain. A bad request closes its own connection and disturbs nothing else.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use e2e::{closed_by_peer, exchange, read_head_response, read_response, wait_for, Server};

fn put_request(key: &str, body: &str) -> String {
    format!(
        "PUT /api/cache/{key} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get_request(key: &str) -> String {
    format!("GET /api/cache/{key} HTTP/1.1\r\nHost: t\r\n\r\n")
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let batch = [
        put_request("p1", r#"{"value":1}"#),
        get_request("p1"),
        put_request("p1", r#"{"value":2}"#),
        get_request("p1"),
        "HEAD /api/cache/p1 HTTP/1.1\r\nHost: t\r\n\r\n".to_string(),
        get_request("absent"),
    ]
    .concat();
    c.write_all(batch.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).status, 200);
    assert_eq!(read_response(&mut c).json()["value"], 1);
    assert_eq!(read_response(&mut c).status, 200);
    let second = read_response(&mut c);
    assert_eq!(second.json()["value"], 2);
    let head = read_head_response(&mut c);
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length").unwrap(),
        second.body.len().to_string()
    );
    assert_eq!(read_response(&mut c).status, 404);
    // Still open for more.
    assert_eq!(exchange(&mut c, get_request("p1").as_bytes()).status, 200);
}

#[test]
fn expect_continue_gets_100_then_the_answer_and_a_refusal_gets_no_100() {
    let s = Server::start(&[("CACHE_AUTH_TOKEN", "t0k")]);
    let mut c = s.connect();
    let body = r#"{"value":"after 100"}"#;
    write!(c, "PUT /api/cache/e HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer t0k\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    assert_eq!(read_response(&mut c).status, 100);
    c.write_all(body.as_bytes()).unwrap();
    assert_eq!(read_response(&mut c).status, 200);

    let mut c = s.connect();
    c.write_all(b"PUT /api/cache/e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n").unwrap();
    let refused = read_response(&mut c);
    assert_eq!(
        refused.status, 401,
        "refused before the body, without a 100"
    );
    assert!(closed_by_peer(&mut c));
}

#[test]
fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let r = exchange(
        &mut c,
        b"PUT /api/cache/ch HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;ext=1\r\n{\"val\r\n\
          A\r\nue\":\"chunk\r\n\
          2\r\n\"}\r\n\
          0\r\nX-Trailer: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        exchange(&mut c, get_request("ch").as_bytes()).json()["value"],
        "chunk"
    );
}

#[test]
fn framing_violations_are_400_and_close_the_connection() {
    let s = Server::start(&[]);
    let cases: [&[u8]; 9] = [
        b"PUT /api/cache/f HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n{}",
        b"PUT /api/cache/f HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"PUT /api/cache/f HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\n",
        b"GET /api/cache/f HTTP/1.1\r\nBad Header\r\n\r\n",
    ];
    for request in cases {
        let mut c = s.connect();
        let r = exchange(&mut c, request);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(request));
        assert!(r.json()["error"].is_string());
        assert!(
            closed_by_peer(&mut c),
            "closed after {}",
            String::from_utf8_lossy(request)
        );
    }
    let mut c = s.connect();
    assert_eq!(
        exchange(&mut c, b"PUT /api/cache/f HTTP/1.1\r\nHost: t\r\n\r\n").status,
        411
    );
    assert_eq!(s.metrics()["rejected_requests"], 10);
}

#[test]
fn head_and_target_limits_are_431_and_414() {
    let s = Server::start(&[]);
    let mut headers = String::new();
    for i in 0..64 {
        headers.push_str(&format!("X-H{i}: v\r\n"));
    }
    let mut c = s.connect();
    let r = exchange(
        &mut c,
        format!("GET /healthz HTTP/1.1\r\n{headers}\r\n").as_bytes(),
    );
    assert_eq!(r.status, 200, "64 headers are allowed");
    let r = exchange(
        &mut c,
        format!("GET /healthz HTTP/1.1\r\n{headers}X-H64: v\r\n\r\n").as_bytes(),
    );
    assert_eq!(r.status, 431, "65 headers are not");
    let mut c = s.connect();
    let big = "a".repeat(17 * 1024);
    assert_eq!(
        exchange(
            &mut c,
            format!("GET /healthz HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes()
        )
        .status,
        431
    );
    let mut c = s.connect();
    assert_eq!(
        exchange(&mut c, format!("GET /{big} HTTP/1.1\r\n\r\n").as_bytes()).status,
        414
    );
    // Absolute-form targets are accepted, as RFC 9112 requires of servers.
    let mut c = s.connect();
    assert_eq!(
        exchange(&mut c, b"GET http://example.test/healthz HTTP/1.1\r\n\r\n").status,
        200
    );
}

#[test]
fn value_limit_is_exact_and_a_refused_put_keeps_the_old_value() {
    let max = 1000;
    let s = Server::start(&[("CACHE_MAX_VALUE_BYTES", &max.to_string())]);
    let mut c = s.connect();
    let fits = format!("\"{}\"", "v".repeat(max - 2));
    assert_eq!(
        exchange(
            &mut c,
            put_request("lim", &format!("{{\"value\":{fits}}}")).as_bytes()
        )
        .status,
        200
    );
    let over = format!("\"{}\"", "w".repeat(max - 1));
    let r = exchange(
        &mut c,
        put_request("lim", &format!("{{\"value\":{over}}}")).as_bytes(),
    );
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit is 1000"));
    let raw = format!("PUT /api/cache/lim HTTP/1.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n{}", max + 1, "z".repeat(max + 1));
    assert_eq!(exchange(&mut c, raw.as_bytes()).status, 413);
    let got = exchange(&mut c, get_request("lim").as_bytes()).json();
    assert_eq!(
        got["value"].as_str().unwrap().len(),
        max - 2,
        "the earlier value is intact"
    );
    // A declared body far over the limit is refused before it is read.
    let mut c = s.connect();
    let r = exchange(
        &mut c,
        b"PUT /api/cache/lim HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n",
    );
    assert_eq!(r.status, 413);
    assert!(closed_by_peer(&mut c));
}

/// Many clients (Python's `http.client` and `requests` among them) write a whole request
/// before reading the answer. A refused body must not turn into "connection reset" or
/// "broken pipe": the server answers, then reads and drops the rest (lingering close).
#[test]
fn a_client_that_writes_a_refused_body_whole_before_reading_gets_the_413() {
    let s = Server::start(&[]);
    let body = vec![b'x'; 2 << 20];
    let mut c = s.connect();
    let head = format!(
        "PUT /api/cache/big HTTP/1.1\r\nHost: t\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&body)
        .expect("the server drains the refused body");
    let r = read_response(&mut c);
    assert_eq!(r.status, 413);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("larger than the limit"));
    assert!(closed_by_peer(&mut c));
    assert_eq!(s.get_key("big").0, 404, "nothing was stored");
}

#[test]
fn http_1_0_closes_unless_asked_to_keep_alive_and_then_is_told_it_is_kept() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let r = exchange(&mut c, b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed_by_peer(&mut c));
    let mut c = s.connect();
    let r = exchange(
        &mut c,
        b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    // An HTTP/1.0 client keeps the connection only if the answer says so; otherwise it
    // reads to the close (ApacheBench's `ab -k` waited out the idle timeout).
    assert_eq!(r.header("connection"), Some("keep-alive"));
    let r = exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n");
    assert_eq!(r.header("connection"), None, "HTTP/1.1 keeps it by default");
    assert_eq!(
        exchange(
            &mut c,
            b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"
        )
        .header("connection"),
        Some("close")
    );
    assert!(closed_by_peer(&mut c));
}

#[test]
fn slow_clients_are_cut_off_at_the_header_timeout_without_starving_others() {
    let s = Server::start(&[
        ("CACHE_HEADER_TIMEOUT_MS", "3000"),
        ("CACHE_IDLE_TIMEOUT_MS", "60000"),
    ]);
    let mut slow: Vec<TcpStream> = (0..200).map(|_| s.connect()).collect();
    for c in &mut slow {
        c.write_all(b"GET /healthz HTT").unwrap();
    }
    // Normal clients are served meanwhile.
    let started = Instant::now();
    for _ in 0..20 {
        let mut c = s.connect();
        assert_eq!(
            exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n").status,
            200
        );
    }
    // Had they waited behind the slow clients, they would have been served only once
    // those were cut off, at the header timeout (3 s).
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "served while 200 slow clients wait: {:?}",
        started.elapsed()
    );
    // A byte now and then does not extend the deadline.
    for c in &mut slow {
        let _ = c.write_all(b"P");
    }
    for c in &mut slow {
        let r = read_response(c);
        assert_eq!(r.status, 408);
        assert!(closed_by_peer(c));
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The idle deadline moves with each request (the connection keeps one timer and moves
/// it): a connection that keeps asking stays open for more than twice the idle timeout,
/// and one that stops asking is closed once the timeout has passed since its last answer,
/// not before.
#[test]
fn the_idle_timeout_counts_from_the_last_request() {
    let idle = Duration::from_millis(1500);
    // Between the busy client's requests, well inside the idle timeout.
    let pause = Duration::from_millis(200);
    let s = Server::start(&[("CACHE_IDLE_TIMEOUT_MS", "1500")]);
    let health = b"GET /healthz HTTP/1.1\r\n\r\n";
    let (mut busy, mut quiet) = (s.connect(), s.connect());
    assert_eq!(exchange(&mut quiet, health).status, 200);
    let quiet_answered = Instant::now();
    // Each pause is a read that waits up to `pause` for something that must not come
    // early: on the quiet connection until the server closes it (which times the close),
    // then on the busy one, which must stay open and silent.
    quiet.set_read_timeout(Some(pause)).unwrap();
    busy.set_read_timeout(Some(pause)).unwrap();
    let mut quiet_closed_after = None;
    while quiet_answered.elapsed() < idle * 7 / 3 {
        assert_eq!(exchange(&mut busy, health).status, 200);
        let waited_on = if quiet_closed_after.is_none() {
            &mut quiet
        } else {
            &mut busy
        };
        match waited_on.read(&mut [0u8; 1]) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) | Err(_) if quiet_closed_after.is_none() => {
                quiet_closed_after = Some(quiet_answered.elapsed());
            }
            other => panic!("a connection that waits for nothing got {other:?}"),
        }
    }
    let quiet_closed_after = quiet_closed_after.expect("the idle connection was closed");
    assert!(
        quiet_closed_after >= idle - Duration::from_millis(100),
        "the idle connection was closed {quiet_closed_after:?} after its answer, before the idle timeout"
    );
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(exchange(&mut busy, health).status, 200);
    let idle_from = Instant::now();
    assert!(closed_by_peer(&mut busy));
    assert!(
        idle_from.elapsed() >= idle - Duration::from_millis(100),
        "closed {:?} after its last answer, before the idle timeout",
        idle_from.elapsed()
    );
}

#[test]
fn under_a_short_open_file_limit_the_connections_past_what_fits_get_a_503() {
    // CACHE_MAX_CONNECTIONS (4,096 by default) cannot fit under 200 descriptors: the
    // service lowers it to what does and says so. Before, the accepts past the limit
    // failed (EMFILE), and those clients waited in the listen backlog for no answer.
    let log = std::env::temp_dir().join(format!(
        "cache-manager-e2e-nofile-{}.log",
        std::process::id()
    ));
    let s = Server::start_with_open_files(
        &[("CACHE_CORES", "1"), ("CACHE_LOG_FORMAT", "json")],
        200,
        std::fs::File::create(&log).unwrap(),
    );
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 200, "no 503 within 200 connections");
        let mut c = s.connect();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let r = exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n");
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        held.push(c);
    };
    assert!(refused.json()["error"]
        .as_str()
        .unwrap()
        .contains("CACHE_MAX_CONNECTIONS"));
    assert!(
        held.len() >= 100,
        "only {} connections held under 200 descriptors",
        held.len()
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let warning = logged
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("CACHE_MAX_CONNECTIONS lowered"))
        })
        .unwrap_or_else(|| panic!("no warning that the connection limit was lowered: {logged}"));
    assert_eq!(warning["fields"]["fitted"], held.len());
    assert_eq!(warning["fields"]["requested"], 4096);
    assert_eq!(warning["fields"]["open_file_limit"], 200);
}

#[test]
fn connections_past_the_per_core_limit_get_a_503() {
    let s = Server::start(&[("CACHE_MAX_CONNECTIONS", "5"), ("CACHE_CORES", "1")]);
    let mut held: Vec<TcpStream> = (0..5).map(|_| s.connect()).collect();
    // An answer on each proves all five are accepted before the sixth arrives.
    for c in &mut held {
        assert_eq!(exchange(c, b"GET /healthz HTTP/1.1\r\n\r\n").status, 200);
    }
    let mut extra = s.connect();
    let r = read_response(&mut extra);
    assert_eq!(r.status, 503);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("CACHE_MAX_CONNECTIONS"));
    drop(held);
    wait_for(
        "slots are freed when the held connections close",
        Duration::from_secs(5),
        || {
            s.get_once("/api/cache/metrics")
                .filter(|r| r.status == 200)
                .is_some_and(|r| r.json()["refused_connections"].as_u64().unwrap() >= 1)
        },
    );
}

#[test]
fn many_connections_at_once_all_get_correct_answers() {
    let s = Server::start(&[]);
    std::thread::scope(|scope| {
        for t in 0..32 {
            let s = &s;
            scope.spawn(move || {
                let mut c = s.connect();
                for i in 0..50 {
                    let key = format!("c{t}-{i}");
                    let value = format!("{{\"value\":\"{t}/{i}\"}}");
                    assert_eq!(
                        exchange(&mut c, put_request(&key, &value).as_bytes()).status,
                        200
                    );
                    let got = exchange(&mut c, get_request(&key).as_bytes()).json();
                    assert_eq!(got["value"], format!("{t}/{i}"));
                    if i == 25 {
                        // Garbage on another connection of the same client changes nothing here.
                        let mut bad = s.connect();
                        assert_eq!(exchange(&mut bad, b"\x00\x01garbage\r\n\r\n").status, 400);
                    }
                }
            });
        }
    });
    assert_eq!(s.metrics()["l1_size"], 1600);
}

#[test]
fn sigterm_finishes_the_request_in_hand_then_exits_zero() {
    let mut s = Server::start(&[]);
    let mut idle = s.connect();
    assert_eq!(exchange(&mut idle, get_request("x").as_bytes()).status, 404);
    let mut busy = s.connect();
    let body = r#"{"value":"finished"}"#;
    write!(
        busy,
        "PUT /api/cache/drain HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..5]
    )
    .unwrap();
    busy.flush().unwrap();
    // Let the server read the head before the signal (it is waiting on the body then).
    wait_for("the server read the head", Duration::from_secs(5), || {
        s.metrics()["requests"].as_u64().unwrap() >= 3
    });
    let started = Instant::now();
    let status_handle = {
        let pid = s.pid();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert!(status_handle.success());
    assert!(closed_by_peer(&mut idle), "idle connections are closed");
    busy.write_all(&body.as_bytes()[5..]).unwrap();
    let r = read_response(&mut busy);
    assert_eq!(r.status, 200, "the request in hand is answered");
    assert_eq!(r.header("connection"), Some("close"));
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(TcpStream::connect(s.addr).is_err(), "no longer listening");
}

#[test]
fn a_near_limit_body_then_small_requests_on_the_same_connection() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let value = "b".repeat((1 << 20) - 10);
    let body = format!("{{\"value\":\"{value}\"}}");
    assert_eq!(
        exchange(&mut c, put_request("huge", &body).as_bytes()).status,
        200
    );
    let mut chunked =
        b"PUT /api/cache/huge2 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for piece in body.as_bytes().chunks(70_000) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(exchange(&mut c, &chunked).status, 200);
    for key in ["huge", "huge2"] {
        let got = exchange(&mut c, get_request(key).as_bytes()).json();
        assert_eq!(got["value"].as_str().map(str::len), Some(value.len()));
    }
    for _ in 0..3 {
        assert_eq!(
            exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n").status,
            200
        );
    }
}

#[test]
fn large_answers_to_a_client_that_reads_late_arrive_whole_and_in_order() {
    // Eight answers of about 1 MiB to pipelined GETs, read only after all were asked: the
    // socket takes part of the gathered answers at once and the rest only as the client
    // reads, so the first send is short and the rest follows it, while the connection's
    // next read is already armed.
    let s = Server::start(&[]);
    let mut c = s.connect();
    let values = ["a", "b"].map(|fill| fill.repeat((1 << 20) - 10));
    for (key, value) in ["late0", "late1"].iter().zip(&values) {
        let body = format!("{{\"value\":\"{value}\"}}");
        assert_eq!(
            exchange(&mut c, put_request(key, &body).as_bytes()).status,
            200
        );
    }
    let batch: String = (0..8)
        .map(|i| get_request(&format!("late{}", i % 2)))
        .collect();
    c.write_all(batch.as_bytes()).unwrap();
    for i in 0..8 {
        let r = read_response(&mut c);
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["value"].as_str(),
            Some(values[i % 2].as_str()),
            "answer {i}"
        );
    }
    assert_eq!(
        exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n").status,
        200
    );
}

#[test]
fn pipelined_answers_past_the_high_water_mark_arrive_whole_and_in_order() {
    // 300 answers of about 1 KB asked in one write: the server sends what it has gathered
    // each time it passes its high-water mark, then goes on with the requests still
    // unread, and the client gets every answer in the order it asked.
    let s = Server::start(&[]);
    let mut c = s.connect();
    let values: Vec<String> = (0..10)
        .map(|i| char::from(b'a' + i).to_string().repeat(1000))
        .collect();
    for (i, value) in values.iter().enumerate() {
        let body = format!("{{\"value\":\"{value}\"}}");
        let put = put_request(&format!("hw{i}"), &body);
        assert_eq!(exchange(&mut c, put.as_bytes()).status, 200);
    }
    let batch: String = (0..300)
        .map(|i| get_request(&format!("hw{}", i * 7 % 10)))
        .collect();
    c.write_all(batch.as_bytes()).unwrap();
    for i in 0..300 {
        let r = read_response(&mut c);
        assert_eq!(r.status, 200, "answer {i}");
        assert_eq!(
            r.json()["value"].as_str(),
            Some(values[i * 7 % 10].as_str()),
            "answer {i}"
        );
    }
}

/// The server's resident memory, in bytes.
fn resident_bytes(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb << 10
}

#[test]
fn a_client_that_asks_for_large_answers_and_reads_nothing_holds_little_and_is_cut_off() {
    // Each connection asks for 1 MiB answers 1,500 times in one write of 60 KB and reads
    // nothing. Answered request by request into one buffer, every read of its requests
    // would cost the server hundreds of MiB; the answers past the high-water mark wait
    // for the socket instead, and the send that makes no progress closes the connection.
    let s = Server::start(&[("CACHE_SEND_TIMEOUT_MS", "500")]);
    let mut c = s.connect();
    let body = format!("{{\"value\":\"{}\"}}", "x".repeat((1 << 20) - 10));
    assert_eq!(
        exchange(&mut c, put_request("big", &body).as_bytes()).status,
        200
    );
    drop(c);
    let before = resident_bytes(&s);
    let batch = get_request("big").repeat(1500);
    let greedy: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = s.connect();
            c.write_all(batch.as_bytes()).unwrap();
            c
        })
        .collect();
    let mut most = 0;
    wait_for(
        "the greedy connections closed",
        Duration::from_secs(20),
        || {
            most = most.max(resident_bytes(&s));
            s.metrics()["connections"] == 1
        },
    );
    let grew = most.saturating_sub(before);
    assert!(grew < 128 << 20, "the server grew by {grew} bytes");
    assert_eq!(s.metrics()["send_timeouts"], 4);
    // Each got answers up to what its socket took, then the close.
    for mut c in greedy {
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    }
    assert_eq!(s.get_key("big").0, 200);
}

/// The sockets the server's rings hold in their tables of registered files, one entry a
/// registered socket: each io_uring file's `/proc/PID/fdinfo` lists its table's filled
/// slots between `UserFiles:` and `UserBufs:`.
fn registered_sockets(s: &Server) -> Vec<String> {
    let mut sockets = Vec::new();
    let dir = format!("/proc/{}/fdinfo", s.pid());
    for entry in std::fs::read_dir(dir).unwrap() {
        let Ok(info) = std::fs::read_to_string(entry.unwrap().path()) else {
            continue; // a file closed since the listing
        };
        let Some(start) = info.find("UserFiles:") else {
            continue;
        };
        let table = &info[start
            ..info[start..]
                .find("UserBufs:")
                .map_or(info.len(), |end| start + end)];
        sockets.extend(
            table
                .lines()
                .skip(1)
                .filter_map(|line| line.split_once(": ").map(|(_, file)| file.to_owned())),
        );
    }
    sockets
}

/// Whether every core runs on io_uring (the e2e tests also run on epoll, which has no
/// rings and registers nothing).
fn on_ring(s: &Server) -> bool {
    s.io_drivers().iter().all(|driver| driver == "io_uring")
}

/// Asks for `keys` on `c`, one request at a time, and checks each answer is its own.
fn read_back(c: &mut TcpStream, keys: std::ops::Range<usize>) {
    for i in keys {
        let r = exchange(c, get_request(&format!("fixed{i}")).as_bytes());
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["value"], format!("v{i}"));
    }
}

/// Waits until no socket is left in the server's rings' tables.
fn wait_until_none_registered(s: &Server, what: &str) {
    wait_for(what, Duration::from_secs(5), || {
        registered_sockets(s).is_empty()
    });
}

/// Reads the end of `c`'s stream, which the server is closing: a socket the table still
/// held open would never send it.
fn assert_closed_by_server(c: &mut TcpStream) {
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(c.read(&mut [0u8; 1]).unwrap(), 0, "the end of the stream");
}

#[test]
fn a_busy_connection_is_registered_with_its_ring_and_leaves_it_when_closed() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    for i in 0..40 {
        let body = format!("{{\"value\": \"v{i}\"}}");
        assert_eq!(
            exchange(&mut c, put_request(&format!("fixed{i}"), &body).as_bytes()).status,
            200
        );
    }
    drop(c);
    if !on_ring(&s) {
        // The epoll driver has no ring, so nothing is registered.
        let mut c = s.connect();
        read_back(&mut c, 0..40);
        assert!(registered_sockets(&s).is_empty());
        return;
    }
    wait_until_none_registered(&s, "the first connection to leave");

    // A connection that has made a few receives is not registered; one past sixteen is.
    let mut c = s.connect();
    read_back(&mut c, 0..5);
    assert!(registered_sockets(&s).is_empty());
    read_back(&mut c, 5..40);
    assert_eq!(registered_sockets(&s).len(), 1);

    // Closed by the server, it really closes: the table's hold on the file is dropped
    // before the number is, or the client would never see the end of the stream.
    let r = exchange(
        &mut c,
        b"GET /api/cache/fixed0 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.header("connection"), Some("close"));
    assert_closed_by_server(&mut c);
    wait_until_none_registered(&s, "the closed connection to leave");

    // New connections take the numbers (and so the slots) closed ones had; each hears
    // only its own answers, side by side as well as one after another.
    for _ in 0..3 {
        let (mut a, mut b) = (s.connect(), s.connect());
        for round in 0..4 {
            read_back(&mut a, round * 10..round * 10 + 10);
            read_back(&mut b, (3 - round) * 10..(3 - round) * 10 + 10);
        }
        assert_eq!(registered_sockets(&s).len(), 2);
        drop((a, b));
        wait_until_none_registered(&s, "both connections to leave");
    }
}

#[test]
fn a_busy_connection_closed_for_idling_leaves_its_ring_and_ends_its_stream() {
    // The close here comes while the connection's next receive is in the ring: the
    // socket's last handle goes with that receive's cancellation, inside the driver.
    // The timeout leaves room for the check below, which must come before the close,
    // on a machine busy with the other tests.
    let s = Server::start(&[("CACHE_IDLE_TIMEOUT_MS", "2000")]);
    let ring = on_ring(&s);
    let mut c = s.connect();
    for _ in 0..20 {
        assert_eq!(
            exchange(&mut c, b"GET /healthz HTTP/1.1\r\n\r\n").status,
            200
        );
    }
    assert_eq!(registered_sockets(&s).len(), usize::from(ring));
    assert_closed_by_server(&mut c);
    wait_until_none_registered(&s, "the idle connection to leave");
}
