//! A request as the connection parsed it, the [`Reply`] a handler writes its answer
//! through, and a response's wire form: what the connection code (`http.rs`) and the code
//! that answers requests (`api.rs`, `render.rs`, `stats.rs`) share, so neither needs the
//! other. A handler either builds a [`Response`] and sends it, or (a hit, the hot path)
//! writes the head and the body straight into the connection's output.

use crate::framing::{Head, Persistence, Reject};

/// A parsed request with its whole body.
#[derive(Debug)]
pub struct Request {
    pub head: Head,
    pub body: Vec<u8>,
    /// When the bytes that completed it arrived: where its latency is counted from.
    pub arrived: std::time::Instant,
}

/// A response ready to be written.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    /// Headers beyond the status line, `Date`, `Content-Type` and `Content-Length`,
    /// already in wire form (`Name: value\r\n` each). Names and values are the service's
    /// own text, never a client's.
    headers: Vec<u8>,
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

    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        put_header(&mut self.headers, name, &[value.as_ref()]);
        self
    }
}

impl From<Reject> for Response {
    fn from(refused: Reject) -> Self {
        Response::error(refused.status, refused.message)
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

/// What a response's head takes from the service at the moment it is written: the
/// `Date`, and whether the service is stopping (then the head says `Connection: close`).
/// Asked when the head is written, not when the request arrived, so an answer that waited
/// on a slow fetch still carries the current date and still announces a shutdown that
/// began meanwhile.
pub trait Conditions {
    fn http_date(&self) -> HttpDate;
    fn stopping(&self) -> bool;
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), always 29 bytes: held by value, it
/// is copied into a head with a few moves.
pub type HttpDate = [u8; 29];

/// Where the answer to one request goes: the connection's output, after the answers to
/// the requests before it. A handler's future must return an [`Answered`], which only
/// [`Reply::send`] and [`Outgoing::body`] make, and it answers once.
pub struct Reply<'a> {
    out: &'a mut Vec<u8>,
    conditions: &'a dyn Conditions,
    /// A HEAD: the same head as a GET, no body.
    head_only: bool,
    /// Whether the request allows the connection to stay open, and how to say so.
    persistence: Persistence,
}

/// Proof that a request was answered, and whether its answer closes the connection.
#[must_use]
#[derive(Debug)]
pub struct Answered {
    closes: bool,
}

impl Answered {
    /// Whether the answer said `Connection: close`.
    pub fn closes(&self) -> bool {
        self.closes
    }
}

/// A response whose head is being written: the status line and the fixed headers are out,
/// headers may be added, and [`Outgoing::body`] ends it.
#[must_use]
pub struct Outgoing<'a> {
    out: &'a mut Vec<u8>,
    head_only: bool,
    persistence: Persistence,
}

impl<'a> Reply<'a> {
    pub fn new(
        out: &'a mut Vec<u8>,
        conditions: &'a dyn Conditions,
        head_only: bool,
        persistence: Persistence,
    ) -> Self {
        Self {
            out,
            conditions,
            head_only,
            persistence,
        }
    }

    /// Writes `response` whole.
    pub fn send(&mut self, response: &Response) -> Answered {
        let outgoing = self.start(response.status, response.content_type, response.body.len());
        outgoing.out.extend_from_slice(&response.headers);
        outgoing.body(&response.body)
    }

    /// Writes the status line, `Date`, `Content-Type` and `Content-Length`; the caller
    /// adds its headers and then the body, which must be `content_length` bytes. This is
    /// how a hit is written straight from the entry into the output, with no `Response`
    /// between them. Written piece by piece rather than through `format!`: this runs once
    /// per response.
    pub fn start(
        &mut self,
        status: u16,
        content_type: &str,
        content_length: usize,
    ) -> Outgoing<'_> {
        let out = &mut *self.out;
        let mut number = itoa::Buffer::new();
        if status == 200 {
            // Most answers: one constant, copied with a few moves rather than four calls.
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\nDate: ");
        } else {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(number.format(status).as_bytes());
            out.push(b' ');
            out.extend_from_slice(reason(status).as_bytes());
            out.extend_from_slice(b"\r\nDate: ");
        }
        out.extend_from_slice(&self.conditions.http_date());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(number.format(content_length).as_bytes());
        out.extend_from_slice(b"\r\n");
        let persistence = if self.conditions.stopping() {
            Persistence::Close
        } else {
            self.persistence
        };
        Outgoing {
            out,
            head_only: self.head_only,
            persistence,
        }
    }
}

impl Outgoing<'_> {
    /// Adds the header `name` whose value is `value_parts` one after the other.
    #[inline(always)]
    pub fn header(&mut self, name: &str, value_parts: &[&[u8]]) {
        put_header(self.out, name, value_parts);
    }

    /// Ends the head and writes `body` (not for a HEAD).
    pub fn body(self, body: &[u8]) -> Answered {
        match self.persistence {
            Persistence::Close => self.out.extend_from_slice(b"Connection: close\r\n"),
            Persistence::KeepAlive => self.out.extend_from_slice(b"Connection: keep-alive\r\n"),
            Persistence::Persistent => {}
        }
        self.out.extend_from_slice(b"\r\n");
        if !self.head_only {
            self.out.extend_from_slice(body);
        }
        Answered {
            closes: self.persistence == Persistence::Close,
        }
    }
}

/// Appends the header `name: value_parts...` in wire form. Always inlined (the release
/// build's LTO would otherwise keep it a call): a hit adds four, and with the name and
/// the parts' lengths known where it is called, each copy is a few moves instead of a
/// call to `memcpy`.
#[inline(always)]
fn put_header(out: &mut Vec<u8>, name: &str, value_parts: &[&[u8]]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    for part in value_parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub mod tests {
    use std::cell::Cell;

    use super::*;

    /// A fixed date, and a shutdown the test starts.
    pub struct Fixed {
        pub stopping: Cell<bool>,
    }

    impl Conditions for Fixed {
        fn http_date(&self) -> HttpDate {
            *b"Wed, 25 Nov 2026 00:00:00 GMT"
        }
        fn stopping(&self) -> bool {
            self.stopping.get()
        }
    }

    pub fn written(
        head_only: bool,
        persistence: Persistence,
        stopping: bool,
        answer: impl FnOnce(&mut Reply<'_>) -> Answered,
    ) -> (String, Answered) {
        let conditions = Fixed {
            stopping: Cell::new(stopping),
        };
        let mut out = Vec::new();
        let answered = answer(&mut Reply::new(
            &mut out,
            &conditions,
            head_only,
            persistence,
        ));
        (String::from_utf8(out).unwrap(), answered)
    }

    #[test]
    fn responses_carry_length_type_and_date() {
        let r = Response::error(404, "no entry for key \"a\"").with_header("X-Test", "1");
        let (text, answered) = written(false, Persistence::Persistent, false, |reply| {
            reply.send(&r)
        });
        assert!(
            text.starts_with("HTTP/1.1 404 Not Found\r\nDate: Wed, 25 Nov 2026 00:00:00 GMT\r\n")
        );
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", r.body.len())));
        assert!(text.contains("X-Test: 1\r\n"));
        assert!(!text.contains("Connection: close") && !answered.closes);
        assert!(text.ends_with("{\"error\":\"no entry for key \\\"a\\\"\"}"));
        let (head, answered) = written(true, Persistence::Close, false, |reply| reply.send(&r));
        assert!(
            head.ends_with("Connection: close\r\n\r\n") && answered.closes,
            "HEAD has no body: {head}"
        );
    }

    /// An HTTP/1.0 client that asked to keep the connection is told it is kept, unless the
    /// service is stopping.
    #[test]
    fn a_kept_http_1_0_connection_is_announced() {
        let r = Response::json(200, b"{}".to_vec());
        let (text, answered) =
            written(false, Persistence::KeepAlive, false, |reply| reply.send(&r));
        assert!(
            text.ends_with("Connection: keep-alive\r\n\r\n{}") && !answered.closes(),
            "{text}"
        );
        let (text, answered) = written(false, Persistence::KeepAlive, true, |reply| reply.send(&r));
        assert!(
            text.ends_with("Connection: close\r\n\r\n{}") && answered.closes(),
            "{text}"
        );
    }

    /// The close is decided when the head is written: a shutdown that began while the
    /// request was being answered still closes a keep-alive connection.
    #[test]
    fn a_head_written_while_stopping_closes_the_connection() {
        let (text, answered) = written(false, Persistence::Persistent, true, |reply| {
            let mut outgoing = reply.start(200, "text/plain", 2);
            outgoing.header("X-A", &[b"1", b"2"]);
            outgoing.body(b"ok")
        });
        assert!(answered.closes);
        assert!(
            text.ends_with("Content-Length: 2\r\nX-A: 12\r\nConnection: close\r\n\r\nok"),
            "{text}"
        );
    }
}
