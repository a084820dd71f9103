//! HTTP/1.1 request framing, with no I/O: where a request head ends, what it says, and
//! how its body is delimited and decoded.
//!
//! Heads and chunk sizes are parsed by `httparse`; this module applies hyper's framing
//! rules on top (Content-Length and Transfer-Encoding together, differing or malformed
//! lengths, a final coding other than chunked: 400) and the head limits (header count:
//! 431, head size: 431, or 414 when the request line alone is over it). It is pure so
//! the fuzzer (`fuzz/fuzz_targets/http_framing.rs`) can drive it without a socket; the
//! connection in `http.rs` feeds it whatever bytes have arrived.

use std::mem::MaybeUninit;

/// A request the service refuses: the status and the message of its JSON error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

/// The limits a head is parsed under (from `CACHE_MAX_HEADERS` and
/// `CACHE_MAX_HEADER_BYTES`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

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
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Other => "OTHER",
        }
    }

    pub fn parse(s: &str) -> Self {
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

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Whether the connection stays open after a request's answer, and what the answer must
/// say about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    /// The answer says `Connection: close` and the connection closes after it.
    Close,
    /// HTTP/1.1's default: the connection stays open, and the answer says nothing of it.
    Persistent,
    /// An HTTP/1.0 client asked for `Connection: keep-alive`: the answer says so too, or
    /// the client reads until the close to find its end (ApacheBench's `ab -k` waits for
    /// a close that never comes).
    KeepAlive,
}

/// What the service needs of a request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Head {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub content_type: Option<String>,
    pub wants_bytes: bool,
    pub authorization: Option<Vec<u8>>,
    pub framing: Framing,
    pub expects_continue: bool,
    pub persistence: Persistence,
    pub length_required: bool,
}

/// The value of the first `name=value` pair in a query string, as sent (not
/// percent-decoded: the parameters the API reads are numbers).
pub fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|pair| {
        pair.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

/// The items of a comma-separated header value, trimmed, as bytes: most requests carry
/// `Accept` and `Connection`, so they are read in place, without a copy or a UTF-8 check.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

pub fn reject(status: u16, message: impl Into<String>) -> Reject {
    Reject {
        status,
        message: message.into(),
    }
}

/// Header slots kept on the stack while parsing; a larger CACHE_MAX_HEADERS uses the heap.
const STACK_HEADERS: usize = 64;

/// Parses the head at the start of `input`: `None` while it is incomplete, else the
/// head and its length in bytes. The head's path is copied into `path_buffer` (a spare
/// buffer, the previous request's path, say), so that a connection reads its requests
/// without allocating.
pub fn parse_head(
    input: &[u8],
    limits: &Limits,
    path_buffer: String,
) -> Result<Option<(Head, usize)>, Reject> {
    // Every request is parsed here, so the header slots are neither allocated nor zeroed
    // when the limit fits on the stack (the default, 64, does): httparse writes a slot
    // before it hands it out.
    let mut on_stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut on_heap = Vec::new();
    let slots = if limits.max_headers <= STACK_HEADERS {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize_with(limits.max_headers, MaybeUninit::uninit);
        &mut on_heap[..]
    };
    let mut request = httparse::Request::new(&mut []);
    match request.parse_with_uninit_headers(input, slots) {
        Ok(httparse::Status::Complete(len)) => {
            if len > limits.max_header_bytes {
                return Err(oversized_head(input, limits.max_header_bytes));
            }
            Ok(Some((interpret(&request, limits, path_buffer)?, len)))
        }
        Ok(httparse::Status::Partial) => {
            if input.len() > limits.max_header_bytes {
                return Err(oversized_head(input, limits.max_header_bytes));
            }
            Ok(None)
        }
        Err(httparse::Error::TooManyHeaders) => Err(reject(
            431,
            format!(
                "more than {} headers (CACHE_MAX_HEADERS)",
                limits.max_headers
            ),
        )),
        Err(e) => Err(reject(400, format!("malformed request head: {e}"))),
    }
}

/// 414 when the request line alone is over the head limit, else 431.
fn oversized_head(unread: &[u8], limit: usize) -> Reject {
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
    limits: &Limits,
    mut path_buffer: String,
) -> Result<Head, Reject> {
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
    // A byte loop: `str::split_once` costs about 170 instructions on a short path,
    // this a third of that (every request comes here).
    let (path, query) = match origin_form.bytes().position(|b| b == b'?') {
        Some(i) => (&origin_form[..i], Some(origin_form[i + 1..].to_owned())),
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
            for token in list_items(h.value) {
                connection_close |= token.eq_ignore_ascii_case(b"close");
                connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
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
            wants_bytes |= list_items(h.value).any(|media| {
                let essence = media.split(|&b| b == b';').next().unwrap_or_default();
                essence
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"application/octet-stream")
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
    let persistence = if connection_close {
        Persistence::Close
    } else if http11 {
        Persistence::Persistent
    } else if connection_keep_alive {
        Persistence::KeepAlive
    } else {
        Persistence::Close
    };
    if path.len() > limits.max_header_bytes {
        return Err(reject(414, "request target too long"));
    }
    Ok(Head {
        method,
        path: {
            path_buffer.clear();
            path_buffer.push_str(path);
            path_buffer
        },
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
        persistence,
        length_required,
    })
}

/// The one length every Content-Length header (and comma-separated item) agrees on.
fn content_length(values: &[&[u8]]) -> Result<u64, Reject> {
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

/// Decodes a chunked body as its bytes arrive, up to a size limit, then skips the
/// trailer section (up to the head limit).
#[derive(Debug)]
pub struct ChunkedBody {
    body: Vec<u8>,
    max_body: usize,
    max_trailers: usize,
    state: ChunkState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data { left: usize },
    DataEnd,
    Trailers,
    Done,
}

/// A chunk-size line longer than this (with extensions) is refused.
const MAX_CHUNK_LINE: usize = 1024;

impl ChunkedBody {
    pub fn new(max_body: usize, max_trailers: usize) -> Self {
        Self {
            body: Vec::new(),
            max_body,
            max_trailers,
            state: ChunkState::Size,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// The decoded body, once `is_done`.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    fn trailers_too_long(&self) -> Reject {
        reject(
            431,
            format!("trailers are longer than {} bytes", self.max_trailers),
        )
    }

    /// Decodes what it can of `input` (the bytes not yet consumed) and returns how many
    /// bytes it consumed; call again with more input until `is_done`.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, Reject> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match self.state {
                ChunkState::Size => match httparse::parse_chunk_size(rest) {
                    Ok(httparse::Status::Complete((line, _))) if line > MAX_CHUNK_LINE => {
                        return Err(reject(400, "chunk-size line is too long"))
                    }
                    Ok(httparse::Status::Complete((line, size))) => {
                        if self.body.len() as u64 + size > self.max_body as u64 {
                            return Err(reject(
                                413,
                                format!(
                                    "chunked body is larger than the limit of {} bytes",
                                    self.max_body
                                ),
                            ));
                        }
                        used += line;
                        self.state = match size as usize {
                            0 => ChunkState::Trailers,
                            left => ChunkState::Data { left },
                        };
                    }
                    Ok(httparse::Status::Partial) if rest.len() <= MAX_CHUNK_LINE => {
                        return Ok(used)
                    }
                    _ => return Err(reject(400, "malformed chunk size")),
                },
                ChunkState::Data { left } => {
                    let take = left.min(rest.len());
                    self.body.extend_from_slice(&rest[..take]);
                    used += take;
                    if take < left {
                        self.state = ChunkState::Data { left: left - take };
                        return Ok(used);
                    }
                    self.state = ChunkState::DataEnd;
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(used);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(reject(400, "chunk data is not followed by CRLF"));
                    }
                    used += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let end = if rest.starts_with(b"\r\n") {
                        Some(2)
                    } else {
                        rest.windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map(|i| i + 4)
                    };
                    // The limit holds however the trailers arrive: whole or a byte at a time.
                    match end {
                        Some(end) if end <= self.max_trailers => {
                            used += end;
                            self.state = ChunkState::Done;
                        }
                        Some(_) => return Err(self.trailers_too_long()),
                        None if rest.len() > self.max_trailers => {
                            return Err(self.trailers_too_long())
                        }
                        None => return Ok(used),
                    }
                }
                ChunkState::Done => return Ok(used),
            }
        }
    }
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
    fn chunked_bodies_decode_across_any_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for split in 0..wire.len() {
            let mut decoder = ChunkedBody::new(1024, 1024);
            let mut pending = wire[..split].to_vec();
            let used = decoder.feed(&pending).unwrap();
            pending.drain(..used);
            pending.extend_from_slice(&wire[split..]);
            let used = decoder.feed(&pending).unwrap();
            assert!(decoder.is_done(), "split at {split}");
            assert_eq!(&pending[used..], b"NEXT");
            assert_eq!(decoder.into_body(), b"hello world");
        }
    }

    #[test]
    fn chunked_bodies_keep_their_limits() {
        let mut decoder = ChunkedBody::new(4, 1024);
        assert_eq!(decoder.feed(b"5\r\nhello\r\n").unwrap_err().status, 413);
        let mut decoder = ChunkedBody::new(4, 1024);
        assert_eq!(decoder.feed(b"zz\r\n").unwrap_err().status, 400);
        let mut decoder = ChunkedBody::new(4, 1024);
        assert_eq!(
            decoder.feed(b"ffffffffffffffffff\r\n").unwrap_err().status,
            400
        );
        let mut decoder = ChunkedBody::new(4, 1024);
        assert_eq!(decoder.feed(b"2\r\nabXY").unwrap_err().status, 400);
        let mut decoder = ChunkedBody::new(4, 8);
        assert_eq!(
            decoder.feed(b"0\r\nX-Long-Trailer: 1").unwrap_err().status,
            431
        );
    }

    #[test]
    fn the_header_limit_holds_on_the_stack_and_beyond_it() {
        let head_with = |n: usize| {
            let mut wire = b"GET /api/cache/a HTTP/1.1\r\n".to_vec();
            for i in 0..n {
                wire.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n");
            wire
        };
        for max_headers in [8, STACK_HEADERS, STACK_HEADERS + 1, 3 * STACK_HEADERS] {
            let limits = Limits {
                max_headers,
                max_header_bytes: 1 << 20,
            };
            let (head, _) = parse_head(&head_with(max_headers), &limits, String::new())
                .unwrap()
                .unwrap();
            assert_eq!(head.path, "/api/cache/a");
            let refused =
                parse_head(&head_with(max_headers + 1), &limits, String::new()).unwrap_err();
            assert_eq!(refused.status, 431, "{max_headers}: {refused:?}");
        }
    }

    #[test]
    fn heads_report_their_length_and_framing() {
        let limits = Limits {
            max_headers: 4,
            max_header_bytes: 64,
        };
        let wire = b"PUT /api/cache/a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
        let recycled = String::from("/a longer path, from the request before");
        let (head, len) = parse_head(wire, &limits, recycled).unwrap().unwrap();
        assert_eq!(len, wire.len() - 3);
        assert_eq!(head.method, Method::Put);
        assert_eq!(head.path, "/api/cache/a");
        assert_eq!(head.query.as_deref(), Some("x=1"));
        assert_eq!(head.framing, Framing::Length(3));
        assert_eq!(head.persistence, Persistence::Persistent);
        assert_eq!(
            parse_head(&wire[..10], &limits, String::new()).unwrap(),
            None
        );
        let long = [&b"GET /"[..], &[b'a'; 80], b" HTTP/1.1\r\n"].concat();
        assert_eq!(
            parse_head(&long, &limits, String::new())
                .unwrap_err()
                .status,
            414
        );
    }

    #[test]
    fn a_query_parameter_is_its_first_exact_name() {
        let query = Some("sincex=1&since=2&since=3&ttl=");
        assert_eq!(query_param(query, "since"), Some("2"));
        assert_eq!(query_param(query, "ttl"), Some(""));
        assert_eq!(query_param(query, "sinc"), None);
        assert_eq!(query_param(None, "since"), None);
    }

    #[test]
    fn list_headers_are_read_item_by_item() {
        let limits = Limits {
            max_headers: 8,
            max_header_bytes: 1 << 10,
        };
        let head = |version: &str, headers: &str| {
            let wire = format!("GET /api/cache/a HTTP/{version}\r\n{headers}\r\n");
            parse_head(wire.as_bytes(), &limits, String::new())
                .unwrap()
                .unwrap()
                .0
        };
        let accepts = |value: &str| head("1.1", &format!("Accept: {value}\r\n")).wants_bytes;
        assert!(accepts("application/octet-stream"));
        assert!(accepts("text/html,  Application/Octet-Stream ;q=0.9"));
        assert!(!accepts("application/json"));
        assert!(!accepts("application/octet-streamx, */*"));
        let persistence = |version: &str, headers: &str| head(version, headers).persistence;
        assert_eq!(
            persistence("1.1", "Connection: upgrade,close\r\n"),
            Persistence::Close
        );
        assert_eq!(
            persistence("1.1", "Connection: upgrade\r\n"),
            Persistence::Persistent
        );
        assert_eq!(
            persistence("1.0", "Connection: Upgrade, Keep-Alive\r\n"),
            Persistence::KeepAlive
        );
        assert_eq!(
            persistence("1.0", "Connection: keep-alive, close\r\n"),
            Persistence::Close
        );
        assert_eq!(persistence("1.0", ""), Persistence::Close);
    }
}
