//! HTTP/1.1 on one connection: read requests, frame their bodies, write responses.
//!
//! Heads and chunk sizes are parsed by `httparse`; this module applies hyper's framing
//! rules on top (Content-Length and Transfer-Encoding together, differing or malformed
//! lengths, a final coding other than chunked: 400, connection closed) and every limit
//! the service has: head size and header count (431), request target (414), body size
//! (413), and deadlines for the idle wait, the head and the body. Requests are handled in
//! order; responses to pipelined requests are gathered and written with one `write` when
//! the connection would otherwise wait for input.

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::api;
use crate::core::Core;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Delete,
    Post,
    Other,
}

impl Method {
    fn parse(s: &str) -> Self {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "POST" => Method::Post,
            _ => Method::Other,
        }
    }
}

/// A parsed request with its whole body.
#[derive(Debug)]
pub struct Request {
    pub method: Method,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    pub query: Option<String>,
    /// The media type of `Content-Type`, lower-cased, without parameters.
    pub content_type: Option<String>,
    /// The client asked for `application/octet-stream`.
    pub wants_bytes: bool,
    pub authorization: Option<Vec<u8>>,
    pub body: Vec<u8>,
}

/// A response ready to be written.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body,
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: impl AsRef<str>) -> Self {
        let body = serde_json::to_vec(&serde_json::json!({ "error": message.as_ref() }))
            .expect("a string serializes");
        Self::json(status, body)
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Appends `response` to `out`. `head_only` answers a HEAD: the same headers, no body.
pub fn write_response(
    out: &mut Vec<u8>,
    response: &Response,
    head_only: bool,
    keep_alive: bool,
    date: &str,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        date,
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
}

/// Why a request could not be read; each becomes a JSON error and closes the connection.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error("{1}")]
    Reject(u16, String),
    #[error("connection closed")]
    Closed,
    #[error("timed out waiting for the client")]
    Idle,
    #[error("shutting down")]
    Stopping,
    #[error("{0}")]
    Io(#[from] io::Error),
}

fn reject(status: u16, message: impl Into<String>) -> ReadError {
    ReadError::Reject(status, message.into())
}

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

struct Head {
    method: Method,
    path: String,
    query: Option<String>,
    content_type: Option<String>,
    wants_bytes: bool,
    authorization: Option<Vec<u8>>,
    framing: Framing,
    expects_continue: bool,
    keep_alive: bool,
    length_required: bool,
}

struct Connection {
    stream: TcpStream,
    core: Rc<Core>,
    /// Received bytes live in `input[pos..end]`; the buffer is zeroed once, when it is
    /// allocated or grown, never per read.
    input: Vec<u8>,
    pos: usize,
    end: usize,
    output: Vec<u8>,
}

const READ_CHUNK: usize = 16 << 10;
/// Free space below which the buffer is compacted (or grown) before a read.
const MIN_READ: usize = 4 << 10;

/// Serves one connection until the client closes it, an error closes it, or shutdown.
pub async fn serve(stream: TcpStream, core: Rc<Core>) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection {
        stream,
        core,
        input: vec![0; READ_CHUNK],
        pos: 0,
        end: 0,
        output: Vec::with_capacity(READ_CHUNK),
    };
    loop {
        match conn.next_request().await {
            Ok((request, keep_alive)) => {
                let head_only = request.method == Method::Head;
                let response = api::handle(&conn.core, request).await;
                let keep_alive = keep_alive && !conn.core.stopping();
                conn.respond(&response, head_only, keep_alive);
                if !keep_alive {
                    break;
                }
            }
            Err(ReadError::Reject(status, message)) => {
                conn.core.stats().rejected.incr();
                conn.respond(&Response::error(status, message), false, false);
                break;
            }
            Err(ReadError::Idle) if conn.pos < conn.end => {
                conn.respond(&Response::error(408, "request not completed within the time limit (CACHE_HEADER_TIMEOUT_MS / CACHE_BODY_TIMEOUT_MS)"), false, false);
                break;
            }
            Err(_) => break,
        }
    }
    let _ = conn.flush().await;
    let _ = conn.stream.close().await;
}

impl Connection {
    fn respond(&mut self, response: &Response, head_only: bool, keep_alive: bool) {
        let date = self.core.http_date();
        write_response(&mut self.output, response, head_only, keep_alive, &date);
    }

    async fn flush(&mut self) -> io::Result<()> {
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    fn unread(&self) -> &[u8] {
        &self.input[self.pos..self.end]
    }

    /// Makes room for a read of at least `MIN_READ` bytes.
    fn make_room(&mut self) {
        if self.pos == self.end {
            (self.pos, self.end) = (0, 0);
            if self.input.len() > 4 * READ_CHUNK {
                // A large body grew the buffer; an idle connection gives it back.
                self.input = vec![0; READ_CHUNK];
            }
        }
        if self.input.len() - self.end < MIN_READ {
            self.input.copy_within(self.pos..self.end, 0);
            (self.pos, self.end) = (0, self.end - self.pos);
        }
        if self.input.len() - self.end < MIN_READ {
            self.input.resize(self.input.len() * 2, 0);
        }
    }

    /// Reads more bytes, waiting at most until `deadline` (and, when `idle`, until
    /// shutdown). Pending responses are written first: the client may be waiting for
    /// them before it sends anything else.
    async fn fill(&mut self, deadline: Instant, idle: bool) -> Result<(), ReadError> {
        self.flush().await?;
        self.make_room();
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadError::Idle);
        }
        self.stream
            .set_read_timeout(Some(remaining))
            .map_err(|e| ReadError::Io(io::Error::other(e.to_string())))?;
        let start = self.end;
        let read = if idle {
            let core = self.core.clone();
            futures_lite::future::or(
                async {
                    self.stream
                        .read(&mut self.input[start..])
                        .await
                        .map_err(ReadError::from)
                },
                async move {
                    core.shutdown_signal().await;
                    Err(ReadError::Stopping)
                },
            )
            .await
        } else {
            self.stream
                .read(&mut self.input[start..])
                .await
                .map_err(ReadError::from)
        };
        let n = match read {
            Ok(n) => n,
            Err(ReadError::Io(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                return Err(ReadError::Idle);
            }
            Err(e) => return Err(e),
        };
        self.end += n;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        Ok(())
    }

    async fn next_request(&mut self) -> Result<(Request, bool), ReadError> {
        let head = self.read_head().await?;
        self.core.stats().requests.incr();
        let config = self.core.config.clone();
        let max_body = config.max_body_bytes();
        if head.length_required {
            return Err(reject(
                411,
                "PUT and POST need a Content-Length or chunked body",
            ));
        }
        if let Framing::Length(n) = head.framing {
            if n > max_body as u64 {
                return Err(reject(
                    413,
                    format!("body of {n} bytes is larger than the limit of {max_body} (CACHE_MAX_VALUE_BYTES plus envelope)"),
                ));
            }
        }
        if head.expects_continue && head.framing != Framing::None && self.unread().is_empty() {
            if let Some((status, message)) =
                api::refuse_early(&self.core, head.method, head.authorization.as_deref())
            {
                return Err(ReadError::Reject(status, message));
            }
            self.output
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.flush().await?;
        }
        let deadline = Instant::now() + config.body_timeout();
        let body = match head.framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_body(n as usize, deadline).await?,
            Framing::Chunked => self.read_chunked_body(max_body, deadline).await?,
        };
        Ok((
            Request {
                method: head.method,
                path: head.path,
                query: head.query,
                content_type: head.content_type,
                wants_bytes: head.wants_bytes,
                authorization: head.authorization,
                body,
            },
            head.keep_alive,
        ))
    }

    async fn read_head(&mut self) -> Result<Head, ReadError> {
        let config = self.core.config.clone();
        let mut deadline = Instant::now() + config.idle_timeout();
        let mut started = false;
        loop {
            if !self.unread().is_empty() {
                if !started {
                    started = true;
                    deadline = Instant::now() + config.header_timeout();
                }
                let mut headers = vec![httparse::EMPTY_HEADER; config.max_headers];
                let mut request = httparse::Request::new(&mut headers);
                match request.parse(self.unread()) {
                    Ok(httparse::Status::Complete(len)) => {
                        if len > config.max_header_bytes {
                            return Err(oversized_head(self.unread(), config.max_header_bytes));
                        }
                        let head = interpret(&request, &config)?;
                        self.pos += len;
                        return Ok(head);
                    }
                    Ok(httparse::Status::Partial) => {
                        if self.unread().len() > config.max_header_bytes {
                            return Err(oversized_head(self.unread(), config.max_header_bytes));
                        }
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(reject(
                            431,
                            format!(
                                "more than {} headers (CACHE_MAX_HEADERS)",
                                config.max_headers
                            ),
                        ));
                    }
                    Err(e) => return Err(reject(400, format!("malformed request head: {e}"))),
                }
            }
            self.fill(deadline, !started).await?;
        }
    }

    async fn read_exact_body(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.unread().len() < n {
            self.fill(deadline, false).await?;
        }
        let body = self.unread()[..n].to_vec();
        self.pos += n;
        Ok(body)
    }

    async fn read_chunked_body(
        &mut self,
        max: usize,
        deadline: Instant,
    ) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let (line, size) = loop {
                match httparse::parse_chunk_size(self.unread()) {
                    Ok(httparse::Status::Complete((line, size))) => break (line, size),
                    Ok(httparse::Status::Partial) if self.unread().len() <= 1024 => {
                        self.fill(deadline, false).await?;
                    }
                    _ => return Err(reject(400, "malformed chunk size")),
                }
            };
            if body.len() as u64 + size > max as u64 {
                return Err(reject(
                    413,
                    format!("chunked body is larger than the limit of {max} bytes"),
                ));
            }
            let size = size as usize;
            self.pos += line;
            if size == 0 {
                return self.skip_trailers(deadline).await.map(|_| body);
            }
            while self.unread().len() < size + 2 {
                self.fill(deadline, false).await?;
            }
            if &self.unread()[size..size + 2] != b"\r\n" {
                return Err(reject(400, "chunk data is not followed by CRLF"));
            }
            body.extend_from_slice(&self.unread()[..size]);
            self.pos += size + 2;
        }
    }

    /// Skips the trailer section that ends a chunked body (up to the head limit).
    async fn skip_trailers(&mut self, deadline: Instant) -> Result<(), ReadError> {
        let limit = self.core.config.max_header_bytes;
        loop {
            if self.unread().starts_with(b"\r\n") {
                self.pos += 2;
                return Ok(());
            }
            if let Some(end) = self.unread().windows(4).position(|w| w == b"\r\n\r\n") {
                self.pos += end + 4;
                return Ok(());
            }
            if self.unread().len() > limit {
                return Err(reject(
                    431,
                    format!("trailers are longer than {limit} bytes"),
                ));
            }
            self.fill(deadline, false).await?;
        }
    }
}

/// 414 when the request line alone is over the head limit, else 431.
fn oversized_head(unread: &[u8], limit: usize) -> ReadError {
    let line = unread
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(unread.len());
    if line > limit {
        reject(
            414,
            format!("request line is longer than {limit} bytes (CACHE_MAX_HEADER_BYTES)"),
        )
    } else {
        reject(
            431,
            format!("request head is larger than {limit} bytes (CACHE_MAX_HEADER_BYTES)"),
        )
    }
}

/// Turns a parsed head into what the service needs, enforcing the framing rules.
fn interpret(
    request: &httparse::Request<'_, '_>,
    config: &crate::config::Config,
) -> Result<Head, ReadError> {
    let method = Method::parse(request.method.unwrap_or(""));
    let http11 = request.version == Some(1);
    let target = request.path.unwrap_or("");
    let origin_form = match target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
    {
        Some(rest) => match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        },
        None if target.starts_with('/') => target,
        None => {
            return Err(reject(
                400,
                format!("unsupported request target {target:?}"),
            ))
        }
    };
    let (path, query) = match origin_form.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (origin_form, None),
    };

    let mut lengths: Vec<&[u8]> = Vec::new();
    let mut codings: Vec<String> = Vec::new();
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut content_type = None;
    let mut wants_bytes = false;
    let mut authorization = None;
    let mut expects_continue = false;
    for h in request.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            lengths.push(h.value);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value)
                .map_err(|_| reject(400, "Transfer-Encoding is not ASCII"))?;
            codings.extend(
                value
                    .split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty()),
            );
        } else if name.eq_ignore_ascii_case("connection") {
            for token in String::from_utf8_lossy(h.value).split(',') {
                let token = token.trim();
                connection_close |= token.eq_ignore_ascii_case("close");
                connection_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            let media = String::from_utf8_lossy(h.value);
            let media = media
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            content_type = Some(media);
        } else if name.eq_ignore_ascii_case("accept") {
            wants_bytes |= String::from_utf8_lossy(h.value).split(',').any(|m| {
                m.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case("application/octet-stream")
            });
        } else if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(h.value.to_vec());
        } else if name.eq_ignore_ascii_case("expect") {
            expects_continue = h.value.eq_ignore_ascii_case(b"100-continue");
        }
    }

    let framing = match (lengths.is_empty(), codings.is_empty()) {
        (true, true) => Framing::None,
        (false, false) => return Err(reject(400, "Content-Length and Transfer-Encoding together")),
        (true, false) => {
            if codings.last().map(String::as_str) != Some("chunked") || codings.len() > 1 {
                return Err(reject(
                    400,
                    format!(
                        "unsupported Transfer-Encoding {:?}; only chunked is accepted",
                        codings.join(", ")
                    ),
                ));
            }
            Framing::Chunked
        }
        (false, true) => Framing::Length(content_length(&lengths)?),
    };
    let length_required = matches!(method, Method::Put | Method::Post) && framing == Framing::None;
    let keep_alive = if http11 {
        !connection_close
    } else {
        connection_keep_alive && !connection_close
    };
    if path.len() > config.max_header_bytes {
        return Err(reject(414, "request target too long"));
    }
    Ok(Head {
        method,
        path: path.to_owned(),
        query,
        content_type,
        wants_bytes,
        authorization,
        framing: if framing == Framing::Length(0) {
            Framing::None
        } else {
            framing
        },
        expects_continue,
        keep_alive,
        length_required,
    })
}

/// The one length every Content-Length header (and comma-separated item) agrees on.
fn content_length(values: &[&[u8]]) -> Result<u64, ReadError> {
    let mut agreed: Option<u64> = None;
    for value in values {
        for item in value.split(|b| *b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                return Err(reject(
                    400,
                    format!(
                        "invalid Content-Length {:?}",
                        String::from_utf8_lossy(value)
                    ),
                ));
            }
            let n = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| reject(400, "Content-Length overflows"))?;
            match agreed {
                Some(a) if a != n => return Err(reject(400, "differing Content-Length values")),
                _ => agreed = Some(n),
            }
        }
    }
    agreed.ok_or_else(|| reject(400, "empty Content-Length"))
}

/// Answers a connection refused for being over the per-core limit, then closes it.
pub async fn refuse_connection(mut stream: TcpStream, core: Rc<Core>) {
    let mut out = Vec::new();
    let response = Response::error(
        503,
        format!(
            "too many connections: this core serves at most {} (CACHE_MAX_CONNECTIONS)",
            core.config.max_connections
        ),
    );
    write_response(&mut out, &response, false, false, &core.http_date());
    let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = stream.write_all(&out).await;
    let _ = stream.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_rules_follow_hyper() {
        assert_eq!(content_length(&[b"42"]).unwrap(), 42);
        assert_eq!(content_length(&[b"42", b"42"]).unwrap(), 42);
        assert_eq!(content_length(&[b"42, 42"]).unwrap(), 42);
        for bad in [
            &b"-1"[..],
            b"+5",
            b"",
            b"1 2",
            b"0x10",
            b"99999999999999999999999",
        ] {
            assert!(content_length(&[bad]).is_err(), "{bad:?}");
        }
        assert!(content_length(&[b"1", b"2"]).is_err());
    }

    #[test]
    fn responses_carry_length_type_and_date() {
        let mut out = Vec::new();
        let r = Response::error(404, "no entry for key \"a\"").with_header("X-Test", "1");
        write_response(&mut out, &r, false, true, "Wed, 25 Nov 2026 00:00:00 GMT");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert!(text.contains("X-Test: 1\r\n"));
        assert!(!text.contains("Connection: close"));
        assert!(text.ends_with("{\"error\":\"no entry for key \\\"a\\\"\"}"));
        let mut head = Vec::new();
        write_response(&mut head, &r, true, false, "d");
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.ends_with("Connection: close\r\n\r\n"),
            "HEAD has no body: {head}"
        );
    }
}
