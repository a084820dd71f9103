//! One keep-alive connection for the load generator, HTTP/1.1 or RESP: writes a request
//! from a reused buffer and reads exactly one reply (an HTTP head parsed by httparse, its
//! body skipped by its Content-Length; a RESP reply framed by its first line). Nothing is
//! allocated per request. It runs on the thread's monoio executor (`runtime`), whose
//! receives and sends own their buffers while in flight, so the connection lends its
//! buffers to each and takes them back.

use std::io;
use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// What a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// cache-manager's API over HTTP/1.1 (nginx serves the same paths as files).
    Http,
    /// Redis's protocol: `GET` and `SET` of the same keys.
    Resp,
}

/// Room for a receive: replies of up to this much arrive whole in one.
const INPUT: usize = 64 << 10;

pub struct Connection {
    stream: TcpStream,
    protocol: Protocol,
    /// What has arrived and is not yet consumed: its length is what was received. The
    /// buffer is owned here and lent to each receive (the ring writes into it while the
    /// receive is in flight).
    input: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr, protocol: Protocol) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            protocol,
            input: Vec::with_capacity(INPUT),
        })
    }

    /// Sends `request` and returns the status of the reply (for RESP, see [`resp_reply`]).
    /// The request's buffer is lent to the send and given back; if this is abandoned
    /// before the send completes, it stays with the send and `request` is left empty.
    pub async fn exchange(&mut self, request: &mut Vec<u8>) -> io::Result<u16> {
        let (written, lent) = self.stream.write_all(std::mem::take(request)).await;
        *request = lent;
        written?;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> io::Result<u16> {
        loop {
            let framed = match self.protocol {
                Protocol::Http => response_head(&self.input)?
                    .map(|head| (head.status, head.length + head.content_length.unwrap_or(0))),
                Protocol::Resp => resp_reply(&self.input)?,
            };
            match framed {
                Some((status, length)) => {
                    self.consume(length).await?;
                    return Ok(status);
                }
                None => self.fill().await?,
            }
        }
    }

    /// Drops `n` bytes from the front of the input, reading until there are that many.
    async fn consume(&mut self, mut n: usize) -> io::Result<()> {
        while self.input.len() < n {
            n -= self.input.len();
            self.input.clear();
            self.fill().await?;
        }
        self.input.drain(..n);
        Ok(())
    }

    /// Receives more input after what is there, making room first if it is full.
    async fn fill(&mut self) -> io::Result<()> {
        let filled = self.input.len();
        if filled == self.input.capacity() {
            self.input.reserve(filled.max(INPUT));
        }
        let spare = std::mem::take(&mut self.input).slice_mut(filled..);
        let (received, lent) = self.stream.read(spare).await;
        self.input = lent.into_inner();
        match received? {
            0 => Err(io::ErrorKind::UnexpectedEof.into()),
            _ => Ok(()),
        }
    }
}

/// A response head parsed from the start of a buffer.
pub struct ResponseHead {
    pub status: u16,
    /// Bytes of the head, its blank line included.
    pub length: usize,
    pub content_length: Option<usize>,
}

/// The response head at the start of `input`, or `None` while it is incomplete.
pub fn response_head(input: &[u8]) -> io::Result<Option<ResponseHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(input) {
        Ok(httparse::Status::Complete(length)) => Ok(Some(ResponseHead {
            status: response.code.unwrap_or(0),
            length,
            content_length: response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok()),
        })),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
    }
}

/// A RESP reply's first line at the start of `input`: its type byte, the text after it,
/// and the line's length with its CRLF. `None` while the line is incomplete.
pub fn resp_line(input: &[u8]) -> Option<(u8, &[u8], usize)> {
    let end = input.windows(2).position(|w| w == b"\r\n")?;
    let (&kind, text) = input[..end].split_first()?;
    Some((kind, text, end + 2))
}

/// The length a bulk string's first line announces (-1 for nil).
pub fn bulk_length(text: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .filter(|&n: &i64| n >= -1)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a bad bulk length"))
}

/// The reply at the start of `input` as an HTTP status would say it, and its length;
/// `None` while its first line is incomplete. A bulk string is 200 and nil 404 (a GET's
/// hit and miss), a simple string or integer 200 (`SET`'s `+OK`), an error reply 500.
pub fn resp_reply(input: &[u8]) -> io::Result<Option<(u16, usize)>> {
    let Some((kind, text, line)) = resp_line(input) else {
        return Ok(None);
    };
    let framed = match kind {
        b'$' => match usize::try_from(bulk_length(text)?) {
            Ok(length) => (200, line + length + 2),
            Err(_) => (404, line),
        },
        b'+' | b':' => (200, line),
        b'-' => (500, line),
        _ => {
            let text = String::from_utf8_lossy(&input[..line - 2]).into_owned();
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an unexpected RESP reply: {text}"),
            ));
        }
    };
    Ok(Some(framed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_replies_are_framed_by_their_first_line() {
        assert_eq!(resp_reply(b"$5\r\nhel").unwrap(), Some((200, 11)));
        assert_eq!(resp_reply(b"$-1\r\n+OK").unwrap(), Some((404, 5)));
        assert_eq!(resp_reply(b"+OK\r\n").unwrap(), Some((200, 5)));
        assert_eq!(resp_reply(b":3\r\n").unwrap(), Some((200, 4)));
        assert_eq!(resp_reply(b"-ERR no\r\n").unwrap(), Some((500, 9)));
        assert_eq!(resp_reply(b"$5\r").unwrap(), None);
        assert!(resp_reply(b"$x\r\n").is_err());
        assert!(resp_reply(b"$-2\r\n").is_err());
        let error = resp_reply(b"*1\r\n$1\r\na\r\n").unwrap_err();
        assert!(
            error.to_string().contains("unexpected RESP reply: *1"),
            "{error}"
        );
    }
}
