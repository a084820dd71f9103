//! One HTTP/1.1 keep-alive connection for the load generator: writes a request from a
//! reused buffer and reads exactly one response (head parsed by httparse, body skipped by
//! its Content-Length). Nothing is allocated per request.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Connection {
    stream: TcpStream,
    input: Vec<u8>,
    filled: usize,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            input: vec![0; 64 << 10],
            filled: 0,
        })
    }

    /// Sends `request` and returns the status of the response.
    pub async fn exchange(&mut self, request: &[u8]) -> io::Result<u16> {
        self.stream.write_all(request).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> io::Result<u16> {
        loop {
            match response_head(&self.input[..self.filled])? {
                Some(head) => {
                    self.consume(head.length + head.content_length.unwrap_or(0))
                        .await?;
                    return Ok(head.status);
                }
                None => self.fill().await?,
            }
        }
    }

    /// Drops `n` bytes from the front of the input, reading until there are that many.
    async fn consume(&mut self, mut n: usize) -> io::Result<()> {
        while self.filled < n {
            n -= self.filled;
            self.filled = 0;
            self.fill().await?;
        }
        self.input.copy_within(n..self.filled, 0);
        self.filled -= n;
        Ok(())
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.filled == self.input.len() {
            self.input.resize(self.input.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.input[self.filled..]).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.filled += n;
        Ok(())
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
