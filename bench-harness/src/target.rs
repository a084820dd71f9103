//! Where a load goes and how its requests are spelled: `http://host:port` (cache-manager's
//! API, or nginx serving the same paths) or `redis://host:port` (the same keys as Redis
//! `GET` and `SET`). Each request is written into a reused buffer, a GET (the bulk of a
//! load) without formatting machinery: at 64 connections a load thread builds one every
//! few microseconds.

use std::io::Write as _;
use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::{bail, Context};

use crate::client::{Connection, Protocol};

/// Where the load goes: `http://host:port` (cache-manager's API) or `redis://host:port`
/// (the same GETs and PUTs as Redis `GET` and `SET`), resolved.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `host:port` as given, for HTTP's `Host` header.
    host: String,
    /// What follows the key in every HTTP GET, built once: formatting it for each request
    /// was about 1 % of a load thread's time.
    get_tail: Box<[u8]>,
    pub protocol: Protocol,
    /// Whether each HTTP request asks the server to close the connection after it.
    closing: bool,
}

pub fn resolve(target: &str) -> anyhow::Result<Target> {
    let (protocol, rest) = if let Some(rest) = target.strip_prefix("http://") {
        (Protocol::Http, rest)
    } else if let Some(rest) = target.strip_prefix("redis://") {
        (Protocol::Resp, rest)
    } else {
        bail!("--target must start with http:// or redis://, got {target:?}");
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority:?}"))?
        .next()
        .with_context(|| format!("{authority:?} has no address"))?;
    Ok(Target::new(addr, authority, protocol))
}

impl Target {
    fn new(addr: SocketAddr, authority: &str, protocol: Protocol) -> Self {
        let mut target = Self {
            addr,
            host: authority.to_owned(),
            get_tail: Box::default(),
            protocol,
            closing: false,
        };
        target.set_get_tail();
        target
    }

    /// Every HTTP request then says `Connection: close`, for a load that opens a
    /// connection per request (`--reconnect`); RESP has no such word, so a Redis target
    /// is unchanged (the client closes).
    pub fn closing_each_connection(mut self) -> Self {
        self.closing = true;
        self.set_get_tail();
        self
    }

    fn connection_header(&self) -> &'static str {
        if self.closing {
            "Connection: close\r\n"
        } else {
            ""
        }
    }

    fn set_get_tail(&mut self) {
        self.get_tail = format!(
            " HTTP/1.1\r\nHost: {}\r\nAccept: application/octet-stream\r\n{}\r\n",
            self.host,
            self.connection_header()
        )
        .into_bytes()
        .into();
    }

    pub async fn connect(&self) -> std::io::Result<Connection> {
        Connection::open(self.addr, self.protocol).await
    }

    /// A GET of `{prefix}{key}` into `buf`.
    pub fn get_request(&self, buf: &mut Vec<u8>, prefix: &str, key: u64) {
        buf.clear();
        match self.protocol {
            Protocol::Http => {
                buf.extend_from_slice(b"GET /api/cache/");
                buf.extend_from_slice(prefix.as_bytes());
                buf.extend_from_slice(itoa::Buffer::new().format(key).as_bytes());
                buf.extend_from_slice(&self.get_tail);
            }
            Protocol::Resp => {
                buf.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                resp_key(buf, prefix, key);
            }
        }
    }

    /// A PUT of `{prefix}{key}` into `buf`: `body` for `ttl` seconds (the server's default
    /// TTL when `None`; for Redis, no expiry).
    pub fn put_request(
        &self,
        buf: &mut Vec<u8>,
        prefix: &str,
        key: u64,
        ttl: Option<u64>,
        body: &[u8],
    ) {
        buf.clear();
        match self.protocol {
            Protocol::Http => {
                let _ = write!(buf, "PUT /api/cache/{prefix}{key}");
                if let Some(ttl) = ttl {
                    let _ = write!(buf, "?ttl={ttl}");
                }
                let _ = write!(
                    buf,
                    " HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n{}\r\n",
                    self.host,
                    body.len(),
                    self.connection_header()
                );
                buf.extend_from_slice(body);
            }
            Protocol::Resp => {
                let ttl = ttl.filter(|&t| t > 0);
                let _ = write!(
                    buf,
                    "*{}\r\n$3\r\nSET\r\n",
                    if ttl.is_some() { 5 } else { 3 }
                );
                resp_key(buf, prefix, key);
                let _ = write!(buf, "${}\r\n", body.len());
                buf.extend_from_slice(body);
                buf.extend_from_slice(b"\r\n");
                if let Some(ttl) = ttl {
                    let _ = write!(buf, "$2\r\nEX\r\n${}\r\n{ttl}\r\n", decimal_len(ttl));
                }
            }
        }
    }
}

/// `{prefix}{key}` as a RESP bulk string, without building it first.
fn resp_key(buf: &mut Vec<u8>, prefix: &str, key: u64) {
    let mut digits = itoa::Buffer::new();
    let key = digits.format(key).as_bytes();
    buf.push(b'$');
    buf.extend_from_slice(
        itoa::Buffer::new()
            .format(prefix.len() + key.len())
            .as_bytes(),
    );
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(prefix.as_bytes());
    buf.extend_from_slice(key);
    buf.extend_from_slice(b"\r\n");
}

/// How many digits `n` takes in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_what_the_api_expects() {
        let mut buf = Vec::new();
        let http = Target::new("127.0.0.1:1".parse().unwrap(), "h:1", Protocol::Http);
        http.get_request(&mut buf, "key:", 7);
        assert_eq!(buf, b"GET /api/cache/key:7 HTTP/1.1\r\nHost: h:1\r\nAccept: application/octet-stream\r\n\r\n");
        http.put_request(&mut buf, "p", 3, Some(60), b"abc");
        assert_eq!(
            buf,
            &b"PUT /api/cache/p3?ttl=60 HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\n\r\nabc"[..]
        );
        let closing = http.clone().closing_each_connection();
        closing.get_request(&mut buf, "key:", 7);
        assert_eq!(buf, b"GET /api/cache/key:7 HTTP/1.1\r\nHost: h:1\r\nAccept: application/octet-stream\r\nConnection: close\r\n\r\n");
        closing.put_request(&mut buf, "p", 3, None, b"abc");
        assert_eq!(
            buf,
            &b"PUT /api/cache/p3 HTTP/1.1\r\nHost: h:1\r\nContent-Type: application/octet-stream\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"[..]
        );
        assert!(resolve("https://x").is_err());
        let local = resolve("http://127.0.0.1:4000/").unwrap();
        assert_eq!(
            (local.host.as_str(), local.protocol),
            ("127.0.0.1:4000", Protocol::Http)
        );
    }

    #[test]
    fn redis_targets_get_and_set_the_same_keys() {
        let redis = resolve("redis://127.0.0.1:6379").unwrap();
        assert_eq!(redis.protocol, Protocol::Resp);
        let mut buf = Vec::new();
        redis.get_request(&mut buf, "key:", 0);
        assert_eq!(buf, b"*2\r\n$3\r\nGET\r\n$5\r\nkey:0\r\n");
        redis.get_request(&mut buf, "key:", 12345);
        assert_eq!(buf, b"*2\r\n$3\r\nGET\r\n$9\r\nkey:12345\r\n");
        redis.put_request(&mut buf, "p", 10, None, b"abc");
        assert_eq!(buf, b"*3\r\n$3\r\nSET\r\n$3\r\np10\r\n$3\r\nabc\r\n");
        redis.put_request(&mut buf, "p", 9, Some(300), b"");
        assert_eq!(
            buf,
            b"*5\r\n$3\r\nSET\r\n$2\r\np9\r\n$0\r\n\r\n$2\r\nEX\r\n$3\r\n300\r\n"
        );
    }
}
