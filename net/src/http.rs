//! HTTP/1.1 on one connection: read requests, frame their bodies, write responses.
//!
//! `framing.rs` decides what the bytes mean (and refuses what breaks hyper's framing
//! rules or the head limits); this module owns the socket, the body limit (413), the
//! deadlines for the idle wait, the head and the body, and `100 Continue`. A refused
//! request gets its JSON error, and the connection is closed after a lingering close
//! (the rest of the request is read and dropped, for a bounded time and size). What a
//! request means is the [`Handler`]'s business: this module knows no routes. Requests are handled in
//! order; responses to pipelined requests are gathered and written with one `write` when
//! the connection would otherwise wait for input.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::AsRawFd;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Sleep;

use crate::core::Core;
use crate::exchange::{write_response, Request, Response};
use crate::framing::{self, ChunkedBody, Framing, Head, Method, Reject};

/// Why a request could not be read; each becomes a JSON error and closes the connection.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Reject(#[from] Reject),
    #[error("connection closed")]
    Closed,
    /// `midway`: part of a request had arrived.
    #[error("timed out waiting for the client")]
    Idle { midway: bool },
    #[error("shutting down")]
    Stopping,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What answers requests: the connection reads and frames them, and knows nothing of
/// routes or tiers.
pub trait Handler {
    /// A refusal that can be given from the head alone, before the body is read; when a
    /// client sent `Expect: 100-continue`, it then gets the refusal instead of 100.
    fn refuse_early(&self, head: &Head) -> Option<Reject>;

    /// The answer to a whole request.
    fn handle(&self, request: Request) -> impl std::future::Future<Output = Response>;
}

struct Connection<H> {
    stream: TcpStream,
    core: Rc<Core>,
    handler: Rc<H>,
    /// This connection's slot for waiting on shutdown between requests.
    idle_slot: usize,
    /// Received bytes live in `input[pos..]`; the kernel receives into the spare
    /// capacity behind them, so the buffer is never zeroed.
    input: Vec<u8>,
    pos: usize,
    /// When the last input arrived: one clock reading serves the coarse clock, the
    /// request's deadlines and its latency.
    arrived: Instant,
    /// Whether that input came in a burst on this core (`burst.rs`): if so, responses go
    /// through the ring, to leave with the burst's others.
    in_burst: bool,
    output: Vec<u8>,
    /// The deadline of the read in progress (idle, head or body): one timer for the
    /// connection's life.
    timer: Pin<Box<Sleep>>,
}

const READ_CHUNK: usize = 16 << 10;
/// Free space below which the buffer is compacted (or grown) before a read.
const MIN_READ: usize = 4 << 10;

/// Serves one connection until the client closes it, an error closes it, or shutdown.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    core: Rc<Core>,
    handler: Rc<H>,
    idle_slot: usize,
) {
    let _ = stream.set_nodelay(true);
    let mut conn = Connection {
        stream,
        core,
        handler,
        idle_slot,
        input: Vec::with_capacity(READ_CHUNK),
        pos: 0,
        arrived: Instant::now(),
        in_burst: false,
        output: Vec::with_capacity(READ_CHUNK),
        // Never polled before `fill` resets it to a read's deadline (monoio caps a
        // `Duration::MAX` sleep at its far future).
        timer: Box::pin(monoio::time::sleep(Duration::MAX)),
    };
    loop {
        match conn.next_request().await {
            Ok(request) => {
                let head_only = request.head.method == Method::Head;
                let keep_alive = request.head.keep_alive;
                let response = conn.handler.handle(request).await;
                let keep_alive = keep_alive && !conn.core.stopping();
                conn.respond(&response, head_only, keep_alive);
                if !keep_alive {
                    break;
                }
            }
            Err(ReadError::Reject(Reject { status, message })) => {
                conn.core.stats().rejected.incr();
                conn.respond(&Response::error(status, message), false, false);
                conn.linger().await;
                break;
            }
            Err(ReadError::Idle { midway: true }) => {
                conn.respond(&Response::error(408, "request not completed within the time limit (CACHE_HEADER_TIMEOUT_MS / CACHE_BODY_TIMEOUT_MS)"), false, false);
                break;
            }
            Err(_) => break,
        }
    }
    let _ = conn.flush().await;
}

/// How long, how long without input, and how much a refused request's remaining input
/// is read and discarded before the connection closes (nginx's lingering close).
const LINGER_TIME: Duration = Duration::from_secs(5);
const LINGER_IDLE: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 << 20;

impl<H: Handler> Connection<H> {
    /// After an early refusal (413, 400, 431, ...): the answer goes out, the write side
    /// is shut, and what the client is still sending is read and dropped for a bounded
    /// time and size. Closing with unread input would make the kernel reset the
    /// connection, and a client that writes its whole request before reading (many do)
    /// would see "connection reset" or "broken pipe" instead of the answer.
    async fn linger(&mut self) {
        if self.flush().await.is_err() || self.stream.shutdown().await.is_err() {
            return;
        }
        let deadline = Instant::now() + LINGER_TIME;
        let mut discarded = 0;
        let mut scratch = Vec::with_capacity(READ_CHUNK);
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            scratch.clear();
            let reading = self.stream.read(scratch);
            match monoio::time::timeout(left.min(LINGER_IDLE), reading).await {
                Ok((Ok(n), buffer)) if n > 0 => {
                    discarded += n;
                    scratch = buffer;
                }
                _ => return,
            }
        }
    }

    fn respond(&mut self, response: &Response, head_only: bool, keep_alive: bool) {
        let date = self.core.http_date();
        write_response(&mut self.output, response, head_only, keep_alive, &date);
    }

    /// Writes the pending responses. In a burst they go through the ring, where one
    /// submission carries the sends of every connection served in the executor's pass.
    /// Otherwise they are first sent straight from this task, with one `send` that does
    /// not wait, and only what the socket did not take goes through the ring.
    ///
    /// Why both: a lone response sent through the ring is an operation to submit, complete
    /// and reap, and the task parks and wakes for its completion before it arms its next
    /// receive. The direct `send` puts it on its way before the task yields, a microsecond
    /// sooner on one connection. Under load the ring is cheaper: with every response sent
    /// directly, a syscall each, 64 connections cost about 5 % more CPU per request
    /// (BENCHMARKS.md, "A lone response sent from its task").
    async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let sent = if self.in_burst {
            0
        } else {
            let sent = send_now(&self.stream, &self.output)?;
            self.core.bursts.sent_directly(Instant::now());
            sent
        };
        if sent == self.output.len() {
            self.output.clear();
            return Ok(());
        }
        let (written, rest) = self
            .stream
            .write_all(std::mem::take(&mut self.output).slice(sent..))
            .await;
        let mut output = rest.into_inner();
        output.clear();
        self.output = output;
        written.map(|_| ())
    }

    fn unread(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// Makes room for a read of at least `MIN_READ` bytes.
    fn make_room(&mut self) {
        if self.pos == self.input.len() {
            self.pos = 0;
            self.input.clear();
            if self.input.capacity() > 4 * READ_CHUNK {
                // A large body grew the buffer; an idle connection gives it back.
                self.input = Vec::with_capacity(READ_CHUNK);
            }
        }
        if self.input.capacity() - self.input.len() < MIN_READ {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        if self.input.capacity() - self.input.len() < MIN_READ {
            self.input.reserve(self.input.capacity().max(READ_CHUNK));
        }
    }

    /// Reads more bytes, waiting at most until `deadline` (and, when `idle`, until
    /// shutdown). Pending responses are written first: the client may be waiting for
    /// them before it sends anything else.
    async fn fill(&mut self, deadline: Instant, idle: bool) -> Result<(), ReadError> {
        self.flush().await?;
        self.make_room();
        let midway = self.pos < self.input.len();
        // The buffer goes to the kernel with the read and comes back with its result; a
        // read abandoned for its deadline or shutdown keeps it, and the connection closes.
        let input = std::mem::take(&mut self.input);
        let (start, capacity) = (input.len(), input.capacity());
        // Moving the connection's timer later only updates it in place (the wheel files it
        // again if it fires early), so a keep-alive connection does not register and cancel
        // a timer for every request.
        self.timer
            .as_mut()
            .reset(monoio::time::Instant::from_std(deadline));
        let mut reading = pin!(self.stream.read(input.slice_mut(start..capacity)));
        let (core, slot, timer) = (&self.core, self.idle_slot, &mut self.timer);
        let read = poll_fn(|cx| {
            if let Poll::Ready(done) = reading.as_mut().poll(cx) {
                Poll::Ready(Ok(done))
            } else if timer.as_mut().poll(cx).is_ready() {
                Poll::Ready(Err(ReadError::Idle { midway }))
            } else if idle && core.poll_stopping(slot, cx).is_ready() {
                Poll::Ready(Err(ReadError::Stopping))
            } else {
                Poll::Pending
            }
        })
        .await;
        let (result, buffer) = read?;
        self.input = buffer.into_inner();
        let n = match result {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(ReadError::Idle { midway })
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
        self.arrived = Instant::now();
        self.in_burst = self.core.bursts.input_arrived(self.arrived);
        self.core.shared.clock.tick_at(self.arrived);
        Ok(())
    }

    async fn next_request(&mut self) -> Result<Request, ReadError> {
        let head = self.read_head().await?;
        self.core.stats().requests.incr();
        let config = self.core.config.clone();
        let max_body = config.max_body_bytes();
        if head.length_required {
            return Err(
                framing::reject(411, "PUT and POST need a Content-Length or chunked body").into(),
            );
        }
        if let Framing::Length(n) = head.framing {
            if n > max_body as u64 {
                return Err(framing::reject(
                    413,
                    format!("body of {n} bytes is larger than the limit of {max_body} (CACHE_MAX_VALUE_BYTES plus envelope)"),
                )
                .into());
            }
        }
        if head.expects_continue && head.framing != Framing::None && self.unread().is_empty() {
            if let Some(refused) = self.handler.refuse_early(&head) {
                return Err(ReadError::Reject(refused));
            }
            self.output
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.flush().await?;
        }
        let deadline = self.arrived + config.body_timeout();
        let body = match head.framing {
            Framing::None => Vec::new(),
            Framing::Length(n) => self.read_exact_body(n as usize, deadline).await?,
            Framing::Chunked => self.read_chunked_body(max_body, deadline).await?,
        };
        Ok(Request {
            head,
            body,
            arrived: self.arrived,
        })
    }

    async fn read_head(&mut self) -> Result<Head, ReadError> {
        let config = self.core.config.clone();
        let limits = framing::Limits {
            max_headers: config.max_headers,
            max_header_bytes: config.max_header_bytes,
        };
        let mut deadline = Instant::now() + config.idle_timeout();
        let mut started = false;
        loop {
            if !self.unread().is_empty() {
                if !started {
                    started = true;
                    deadline = self.arrived + config.header_timeout();
                }
                if let Some((head, len)) = framing::parse_head(self.unread(), &limits)? {
                    self.pos += len;
                    return Ok(head);
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
        let mut decoder = ChunkedBody::new(max, self.core.config.max_header_bytes);
        loop {
            let used = decoder.feed(self.unread())?;
            self.pos += used;
            if decoder.is_done() {
                return Ok(decoder.into_body());
            }
            self.fill(deadline, false).await?;
        }
    }
}

/// Sends what the socket takes of `bytes` now (none when its buffer is full), without
/// waiting and without `SIGPIPE`.
fn send_now(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    // SAFETY: `send` reads `bytes.len()` bytes from `bytes.as_ptr()`, which points into a
    // slice borrowed for the whole call, so the range is live, initialised and not written
    // meanwhile. The descriptor is `stream`'s own, and `stream` is borrowed for the call,
    // so it is open and still this connection's socket (its number cannot have been
    // closed and reused). `send` keeps neither pointer after it returns.
    let sent = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if let Ok(n) = usize::try_from(sent) {
        return Ok(n);
    }
    let error = io::Error::last_os_error();
    match error.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
        _ => Err(error),
    }
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
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
