//! Reading responses on a blocking socket, for the clients that time one exchange at a
//! time (`ping`, `fleet`): HTTP/1.1 responses framed by Content-Length and RESP bulk
//! strings, from a buffer that keeps whatever arrived beyond the current response.

use std::io::{self, Read};
use std::net::TcpStream;

use crate::client::{bulk_length, resp_line, response_head};

/// Received bytes live in `buffer[start..end]`.
#[derive(Debug)]
pub struct Input {
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl Input {
    fn unread(&self) -> &[u8] {
        &self.buffer[self.start..self.end]
    }

    fn fill(&mut self, stream: &mut TcpStream) -> io::Result<()> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        }
        if self.end == self.buffer.len() {
            self.buffer.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
            if self.end == self.buffer.len() {
                self.buffer.resize(self.buffer.len() * 2, 0);
            }
        }
        match stream.read(&mut self.buffer[self.end..])? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            n => {
                self.end += n;
                Ok(())
            }
        }
    }

    /// Consumes `n` bytes, reading until they are there.
    fn skip(&mut self, stream: &mut TcpStream, mut n: usize) -> io::Result<()> {
        loop {
            let here = n.min(self.end - self.start);
            self.start += here;
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.fill(stream)?;
        }
    }

    /// Consumes one response's head; returns its status and its body's length (the body
    /// itself is still unread).
    fn http_head(&mut self, stream: &mut TcpStream) -> io::Result<(u16, usize)> {
        loop {
            if let Some(head) = response_head(self.unread())? {
                let body = head
                    .content_length
                    .ok_or_else(|| io::Error::other("a response without Content-Length"))?;
                self.start += head.length;
                return Ok((head.status, body));
            }
            self.fill(stream)?;
        }
    }

    /// The next `length` bytes, reading until they are there.
    fn take(&mut self, stream: &mut TcpStream, length: usize) -> io::Result<Vec<u8>> {
        let mut taken = Vec::with_capacity(length);
        while taken.len() < length {
            if self.start == self.end {
                self.fill(stream)?;
            }
            let here = (length - taken.len()).min(self.end - self.start);
            taken.extend_from_slice(&self.buffer[self.start..self.start + here]);
            self.start += here;
        }
        Ok(taken)
    }

    /// One response, its body skipped; true for a 2xx.
    pub fn http_response(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        let (status, body) = self.http_head(stream)?;
        self.skip(stream, body)?;
        Ok((200..300).contains(&status))
    }

    /// One response: its status and its body.
    pub fn http_body(&mut self, stream: &mut TcpStream) -> io::Result<(u16, Vec<u8>)> {
        let (status, length) = self.http_head(stream)?;
        let body = self.take(stream, length)?;
        Ok((status, body))
    }

    /// Consumes a bulk-string reply's first line and returns its length (-1 for nil); an
    /// error reply or any other is an error.
    fn resp_head(&mut self, stream: &mut TcpStream) -> io::Result<i64> {
        loop {
            if let Some((kind, text, line)) = resp_line(self.unread()) {
                if kind != b'$' {
                    let text = String::from_utf8_lossy(&self.unread()[..line - 2]).into_owned();
                    return Err(io::Error::other(format!("not a bulk string: {text}")));
                }
                let length = bulk_length(text)?;
                self.start += line;
                return Ok(length);
            }
            self.fill(stream)?;
        }
    }

    /// One bulk-string reply, skipped; true unless it is nil.
    pub fn resp_reply(&mut self, stream: &mut TcpStream) -> io::Result<bool> {
        let length = self.resp_head(stream)?;
        self.skip(stream, usize::try_from(length).map_or(0, |n| n + 2))?;
        Ok(length >= 0)
    }

    /// One bulk-string reply as text (empty for nil).
    pub fn resp_text(&mut self, stream: &mut TcpStream) -> io::Result<String> {
        let length = usize::try_from(self.resp_head(stream)?).unwrap_or(0);
        let text = self.take(stream, length)?;
        self.skip(stream, 2)?;
        Ok(String::from_utf8_lossy(&text).into_owned())
    }
}

impl Default for Input {
    fn default() -> Self {
        Self {
            buffer: vec![0; 64 << 10],
            start: 0,
            end: 0,
        }
    }
}
