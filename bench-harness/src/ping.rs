//! `cache-bench ping`: the round trip of one connection, closed loop, measured by the same
//! client whatever the server speaks: HTTP/1.1 GETs (cache-manager, nginx) or RESP GETs
//! (Redis). Comparing servers' single-connection latency through their own load tools
//! (wrk against redis-benchmark) would compare the tools as much as the servers; here the
//! client is one blocking socket, requests prepared before the clock starts, and the same
//! code times every exchange.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::blocking::Input;
use crate::client::Protocol;

pub struct PingConfig {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// HTTP: the path before the key (`/api/cache/`); RESP: ignored.
    pub path_prefix: String,
    pub key_prefix: String,
    pub keys: usize,
    pub requests: u64,
    pub warmup: u64,
    pub seed: u64,
}

/// Round trips in nanoseconds, and how many answers were misses (404 or nil).
pub struct PingReport {
    pub latency_ns: Histogram<u64>,
    pub misses: u64,
}

/// Runs `warmup` untimed exchanges, then `requests` timed ones, each for a key drawn
/// uniformly from `keys`.
pub fn run(config: &PingConfig) -> io::Result<PingReport> {
    let requests: Vec<Vec<u8>> = (0..config.keys.max(1))
        .map(|i| request(config, &format!("{}{i}", config.key_prefix)))
        .collect();
    let mut stream = TcpStream::connect(config.addr)?;
    stream.set_nodelay(true)?;
    let mut input = Input::default();
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut latency_ns = Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
    let mut misses = 0;
    for i in 0..config.warmup + config.requests {
        let request = &requests[rng.gen_range(0..requests.len())];
        let started = Instant::now();
        stream.write_all(request)?;
        let hit = match config.protocol {
            Protocol::Http => input.http_response(&mut stream)?,
            Protocol::Resp => input.resp_reply(&mut stream)?,
        };
        let took = started.elapsed();
        if i >= config.warmup {
            latency_ns.saturating_record(took.as_nanos().try_into().unwrap_or(u64::MAX));
            misses += u64::from(!hit);
        }
    }
    Ok(PingReport { latency_ns, misses })
}

fn request(config: &PingConfig, key: &str) -> Vec<u8> {
    match config.protocol {
        Protocol::Http => format!(
            "GET {}{key} HTTP/1.1\r\nHost: {}\r\nAccept: application/octet-stream\r\n\r\n",
            config.path_prefix, config.addr
        )
        .into_bytes(),
        Protocol::Resp => format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use super::*;

    /// A server for one connection: for the i-th request (each ending with `marker`), it
    /// writes `answer(i)` in two pieces, so that the client must read across them.
    fn serve(marker: &'static [u8], answer: fn(usize) -> Vec<u8>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let (mut seen, mut answered, mut buffer) = (Vec::new(), 0, [0u8; 4096]);
            loop {
                let n = match socket.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                seen.extend_from_slice(&buffer[..n]);
                let requests = seen.windows(marker.len()).filter(|w| *w == marker).count();
                while answered < requests {
                    let bytes = answer(answered);
                    let (first, rest) = bytes.split_at(bytes.len() / 2);
                    socket.write_all(first).unwrap();
                    socket.flush().unwrap();
                    socket.write_all(rest).unwrap();
                    answered += 1;
                }
            }
        });
        addr
    }

    fn config(addr: SocketAddr, protocol: Protocol) -> PingConfig {
        PingConfig {
            addr,
            protocol,
            path_prefix: "/api/cache/".into(),
            key_prefix: "key:".into(),
            keys: 10,
            requests: 40,
            warmup: 10,
            seed: 7,
        }
    }

    #[test]
    fn http_responses_are_timed_and_misses_counted() {
        let addr = serve(b"\r\n\r\n", |i| {
            if i % 2 == 0 {
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()
            } else {
                b"HTTP/1.1 404 Not Found\r\ncontent-length: 2\r\n\r\n{}".to_vec()
            }
        });
        let report = run(&config(addr, Protocol::Http)).unwrap();
        assert_eq!(report.latency_ns.len(), 40);
        // Requests 10..50 are timed: the odd ones of them are misses.
        assert_eq!(report.misses, 20);
    }

    #[test]
    fn resp_bulk_strings_and_nils_are_read_whole() {
        let addr = serve(b"*2\r\n", |i| {
            if i % 5 == 0 {
                b"$-1\r\n".to_vec()
            } else {
                b"$12\r\nhello\r\nworld\r\n".to_vec()
            }
        });
        let report = run(&config(addr, Protocol::Resp)).unwrap();
        assert_eq!(report.latency_ns.len(), 40);
        assert_eq!(report.misses, 8);
    }

    #[test]
    fn an_error_reply_is_an_error() {
        let addr = serve(b"*2\r\n", |_| b"-ERR wrong\r\n".to_vec());
        let error = run(&config(addr, Protocol::Resp)).err().unwrap();
        assert!(error.to_string().contains("not a bulk string"), "{error}");
    }
}
