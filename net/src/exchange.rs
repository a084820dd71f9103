//! A request as the connection parsed it and a response as a handler made it, and the
//! response's wire form: what the connection code (`http.rs`) and the code that answers
//! requests (`api.rs`, `render.rs`, `stats.rs`) share, so neither needs the other.

use crate::framing::{Head, Reject};

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
    /// already in wire form (`Name: value\r\n` each): a raw hit's four cost one buffer,
    /// not a string each. Names and values are the service's own text, never a client's.
    headers: Vec<u8>,
    pub body: Vec<u8>,
}

/// Room for a hit's extra headers (about 130 bytes) in one allocation.
const HEADERS_CAPACITY: usize = 160;

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
        self.add_header(name, &[value.as_ref()]);
        self
    }

    /// Adds the header `name` whose value is `value_parts` one after the other. Always
    /// inlined (the release build's LTO would otherwise keep it a call): a hit adds four,
    /// and with the name and the parts' lengths known where it is called, each copy is a
    /// few moves instead of a call to `memcpy`.
    #[inline(always)]
    pub fn add_header(&mut self, name: &str, value_parts: &[&[u8]]) {
        if self.headers.capacity() == 0 {
            self.headers.reserve(HEADERS_CAPACITY);
        }
        self.headers.extend_from_slice(name.as_bytes());
        self.headers.extend_from_slice(b": ");
        for part in value_parts {
            self.headers.extend_from_slice(part);
        }
        self.headers.extend_from_slice(b"\r\n");
    }

    /// The value of the added header `name`, if it has one.
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(&self.headers)
            .ok()?
            .split("\r\n")
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
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

/// Appends `response` to `out`. `head_only` answers a HEAD: the same headers, no body.
/// Written piece by piece rather than through `format!`: this runs once per response.
pub fn write_response(
    out: &mut Vec<u8>,
    response: &Response,
    head_only: bool,
    keep_alive: bool,
    date: &str,
) {
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(number.format(response.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(response.status).as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(response.content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(number.format(response.body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.headers);
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&response.body);
    }
}
