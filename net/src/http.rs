//! HTTP/1.1 on one connection: read requests, frame their bodies, write responses.
//!
//! `framing.rs` decides what the bytes mean (and refuses what breaks hyper's framing
//! rules or the head limits); this module owns the socket, the body limit (413), the
//! deadlines for the idle wait, the head and the body, and `100 Continue`. A refused
//! request gets its JSON error, and the connection is closed after a lingering close
//! (the rest of the request is read and dropped, for a bounded time and size). What a
//! request means is the [`Handler`]'s business: this module knows no routes. Requests are handled in
//! order; responses to pipelined requests are gathered and written with one `write` when
//! the connection would otherwise wait for input, or once they fill [`OUTPUT_HIGH_WATER`]:
//! a client that pipelines requests for large values and reads nothing holds that much
//! and one answer, not an answer per request it sent. A send that makes no progress for
//! `CACHE_SEND_TIMEOUT_MS` closes the connection (nginx's `send_timeout`). An idle
//! connection holds a small input buffer (in its armed receive) and no output buffer: the
//! core lends one for each answer ([`spare_outputs`]).

use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use engine::metrics::Counter;
use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use monoio::time::Sleep;

use crate::core::Core;
use crate::exchange::{Answered, Reply, Request, Response};
use crate::framing::{self, ChunkedBody, Framing, Head, Method, Persistence, Reject};

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
    /// What an answer is timed as (its operation, say), told back by [`Handler::sent`].
    type Timed;

    /// A refusal that can be given from the head alone, before the body is read; when a
    /// client sent `Expect: 100-continue`, it then gets the refusal instead of 100.
    fn refuse_early(&self, head: &Head) -> Option<Reject>;

    /// Answers a whole request through `reply`, and says how to time the answer, if at all.
    fn handle<'a>(
        &'a self,
        request: &'a Request,
        reply: Reply<'a>,
    ) -> impl std::future::Future<Output = (Answered, Option<Self::Timed>)> + 'a;

    /// An answer `handle` timed was handed to the socket `latency` after its request
    /// arrived. Told after the send, so that timing an answer does not delay it, and with
    /// the clock reading the send took anyway.
    fn sent(&self, timed: Self::Timed, latency: Duration);
}

struct Connection<H: Handler> {
    /// The socket's read half; its write half is the outbox's. A read is armed while the
    /// answers before it are sent.
    reader: OwnedReadHalf<TcpStream>,
    outbox: Outbox<H::Timed>,
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
    /// The last request's path buffer, for the next request's (see `framing::parse_head`).
    spare_path: String,
    timer: Timer,
}

/// A connection's write side: its socket half and the answers gathered for it.
struct Outbox<Timed> {
    writer: OwnedWriteHalf<TcpStream>,
    /// Empty, without a buffer, while the connection has nothing to send (see
    /// [`spare_outputs`]); [`Outbox::output`] lends it one.
    output: Vec<u8>,
    /// The answers in `output` to time once it is sent, with their requests' arrival.
    timed: Vec<(Timed, Instant)>,
}

const READ_CHUNK: usize = 16 << 10;
/// The largest path buffer a connection keeps for its next request.
const SPARE_PATH_CAPACITY: usize = 1 << 10;
/// Later than any read's or send's deadline.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);
/// Output past which the answers gathered are sent before the next pipelined request is
/// handled.
const OUTPUT_HIGH_WATER: usize = 32 << 10;
/// An output buffer that grew past this for a large answer is given back once it is sent.
const OUTPUT_KEEP: usize = 4 * READ_CHUNK;
/// Free space below which the buffer is compacted (or grown) before a read.
const MIN_READ: usize = 1 << 10;
/// A new connection's input buffer. Most requests are far smaller, and an idle connection
/// holds its buffer in the receive it has armed; a larger request grows it by
/// [`READ_CHUNK`] or more (`make_room`).
const FIRST_INPUT: usize = 2 << 10;

/// Serves one connection until the client closes it, an error closes it, or shutdown.
pub async fn serve<H: Handler>(
    stream: TcpStream,
    core: Rc<Core>,
    handler: Rc<H>,
    idle_slot: usize,
) {
    // TCP_NODELAY came with the socket, from the listener (`server::listening_socket`).
    let (reader, writer) = stream.into_split();
    let mut conn = Connection {
        reader,
        outbox: Outbox {
            writer,
            output: Vec::new(),
            timed: Vec::new(),
        },
        core,
        handler,
        idle_slot,
        input: Vec::with_capacity(FIRST_INPUT),
        pos: 0,
        arrived: Instant::now(),
        spare_path: String::new(),
        timer: Timer::new(),
    };
    loop {
        match conn.next_request().await {
            Ok(request) => {
                let head_only = request.head.method == Method::Head;
                let reply = Reply::new(
                    conn.outbox.output(),
                    &*conn.core,
                    head_only,
                    request.head.persistence,
                );
                let (answered, timed) = conn.handler.handle(&request, reply).await;
                if let Some(timed) = timed {
                    conn.outbox.timed.push((timed, request.arrived));
                }
                if request.head.path.capacity() <= SPARE_PATH_CAPACITY {
                    conn.spare_path = request.head.path;
                }
                if answered.closes() {
                    break;
                }
                if conn.outbox.output.len() >= OUTPUT_HIGH_WATER && conn.flush().await.is_err() {
                    break;
                }
            }
            Err(ReadError::Reject(Reject { status, message })) => {
                conn.core.stats().rejected.incr();
                conn.refuse(&Response::error(status, message));
                conn.linger().await;
                break;
            }
            Err(ReadError::Idle { midway: true }) => {
                conn.refuse(&Response::error(408, "request not completed within the time limit (CACHE_HEADER_TIMEOUT_MS / CACHE_BODY_TIMEOUT_MS)"));
                break;
            }
            Err(_) => break,
        }
    }
    let _ = conn.flush().await;
    // Whole again, the socket closes without the half-close a write half's drop makes
    // (a `shutdown` syscall per connection).
    let Connection { reader, outbox, .. } = conn;
    drop(reader.reunite(outbox.writer));
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
        if self.flush().await.is_err() || self.outbox.writer.shutdown().await.is_err() {
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
            let reading = self.reader.read(scratch);
            match monoio::time::timeout(left.min(LINGER_IDLE), reading).await {
                Ok((Ok(n), buffer)) if n > 0 => {
                    discarded += n;
                    scratch = buffer;
                }
                _ => return,
            }
        }
    }

    /// Answers a request that could not be read, closing the connection.
    fn refuse(&mut self, response: &Response) {
        let _ =
            Reply::new(self.outbox.output(), &*self.core, false, Persistence::Close).send(response);
    }

    /// Writes the pending responses (see [`Outbox::send`]).
    async fn flush(&mut self) -> io::Result<Option<Instant>> {
        let (handler, core) = (&*self.handler, &*self.core);
        self.outbox.send(handler, &mut self.timer, core).await
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

    /// Reads more bytes, waiting at most as long as `wait` allows (and, for the next
    /// request, until shutdown). Pending responses are written first: the client may be
    /// waiting for them before it sends anything else.
    async fn fill(&mut self, wait: Wait) -> Result<(), ReadError> {
        self.make_room();
        let midway = self.pos < self.input.len();
        // The buffer goes to the kernel with the read and comes back with its result; a
        // read abandoned for its deadline or shutdown keeps it, and the connection closes.
        let input = std::mem::take(&mut self.input);
        let (start, capacity) = (input.len(), input.capacity());
        // When the core has nothing else in hand (one connection's requests, or one at a
        // time), the read is armed (queued for the ring) before the pending answers are
        // handed over, so that one submission carries both; armed after the send's
        // completion, it would cost an `io_uring_enter` of its own per request. Under
        // load, submissions are shared anyway, and the read is armed after the send: by
        // then the client's next request has often arrived and the receive completes at
        // once, where one armed earlier always finds nothing, and the kernel must arm a
        // poll and come back to it (BENCHMARKS.md, "Run 15").
        let reading;
        let flushed_at;
        let slice = input.slice_mut(start..capacity);
        if monoio::other_work_pending() {
            flushed_at = self.flush().await?;
            reading = self.reader.read(slice);
        } else {
            reading = self.reader.read(slice);
            let (handler, core) = (&*self.handler, &*self.core);
            flushed_at = self.outbox.send(handler, &mut self.timer, core).await?;
        }
        let mut reading = pin!(reading);
        let (deadline, idle) = match wait {
            Wait::Idle => {
                let from = flushed_at.unwrap_or_else(Instant::now);
                (from + self.core.config.idle_timeout(), true)
            }
            Wait::Until(deadline) => (deadline, false),
        };
        self.timer.aim(deadline);
        let (core, slot, timer) = (&self.core, self.idle_slot, &mut self.timer);
        let read = poll_fn(|cx| {
            if let Poll::Ready(done) = reading.as_mut().poll(cx) {
                return Poll::Ready(Ok(done));
            }
            if timer.poll_passed(cx, deadline).is_ready() {
                return Poll::Ready(Err(ReadError::Idle { midway }));
            }
            if idle && core.poll_stopping(slot, cx).is_ready() {
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
        self.core.shared.clock.tick_at(self.arrived);
        Ok(())
    }

    async fn next_request(&mut self) -> Result<Request, ReadError> {
        let head = self.read_head().await?;
        self.core.stats().requests.incr();
        let max_body = self.core.config.max_body_bytes();
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
            self.outbox
                .output()
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            self.flush().await?;
        }
        let deadline = self.arrived + self.core.config.body_timeout();
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
        // Copied out rather than holding the config: a clone of its `Arc` would be two
        // atomic operations per request.
        let config = &self.core.config;
        let limits = framing::Limits {
            max_headers: config.max_headers,
            max_header_bytes: config.max_header_bytes,
        };
        let header_timeout = config.header_timeout();
        let mut wait = Wait::Idle;
        loop {
            if !self.unread().is_empty() {
                if let Wait::Idle = wait {
                    wait = Wait::Until(self.arrived + header_timeout);
                }
                let path_buffer = std::mem::take(&mut self.spare_path);
                if let Some((head, len)) = framing::parse_head(self.unread(), &limits, path_buffer)?
                {
                    self.pos += len;
                    return Ok(head);
                }
            }
            self.fill(wait).await?;
        }
    }

    async fn read_exact_body(&mut self, n: usize, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        while self.unread().len() < n {
            self.fill(Wait::Until(deadline)).await?;
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
            self.fill(Wait::Until(deadline)).await?;
        }
    }
}

/// How long a read may wait for input.
#[derive(Clone, Copy)]
enum Wait {
    /// For the next request: the idle timeout, from when the answers before it were sent.
    Idle,
    /// For the rest of a request: until its head's or its body's deadline.
    Until(Instant),
}

/// One timer for a connection's life, serving the deadline of whatever it waits on: a
/// read (idle, head or body) or a send. It is moved only to an earlier deadline; a later
/// one (every request's idle deadline is later than the last) is left to the check when
/// the timer fires, which moves it on if the deadline has not come. So a keep-alive
/// connection touches the timer wheel once per timeout, not once per request.
struct Timer {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
}

impl Timer {
    fn new() -> Self {
        Self {
            // Never polled before `aim` sets it to a deadline, which is always sooner
            // (monoio caps a `Duration::MAX` sleep at its far future).
            sleep: Box::pin(monoio::time::sleep(Duration::MAX)),
            at: Instant::now() + FAR_FUTURE,
        }
    }

    /// Makes sure the timer fires no later than `deadline`.
    fn aim(&mut self, deadline: Instant) {
        if deadline < self.at {
            self.set(deadline);
        }
    }

    /// Ready once `deadline`, which the timer was aimed at, has passed.
    fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            self.set(deadline);
        }
        Poll::Pending
    }

    fn set(&mut self, deadline: Instant) {
        self.sleep
            .as_mut()
            .reset(monoio::time::Instant::from_std(deadline));
        self.at = deadline;
    }
}

/// Runs the send `op` until it completes or `deadline` passes, which is counted in
/// `timeouts` and closes the connection.
async fn send_by<F: Future>(
    op: F,
    timer: &mut Timer,
    deadline: Instant,
    timeouts: &Counter,
) -> io::Result<F::Output> {
    timer.aim(deadline);
    let mut op = pin!(op);
    poll_fn(|cx| {
        if let Poll::Ready(done) = op.as_mut().poll(cx) {
            return Poll::Ready(Ok(done));
        }
        timer.poll_passed(cx, deadline).map(|()| {
            timeouts.incr();
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took nothing within CACHE_SEND_TIMEOUT_MS",
            ))
        })
    })
    .await
}

impl<Timed> Outbox<Timed> {
    /// Writes the pending responses through the ring, and times the answers among them.
    /// Under load, one submission carries the sends of every connection served in the
    /// executor's pass; at one connection, the send leaves with the connection's next
    /// receive (see `fill`). The answers are timed when their bytes are handed to the ring,
    /// not when the write completes.
    ///
    /// Each send (a partial one is followed by another for the rest) must complete within
    /// `CACHE_SEND_TIMEOUT_MS`, or the connection closes (and is counted): a client that
    /// stops reading does not hold its connection and its answers for ever.
    ///
    /// Returns when the output was handed over, if the first send took it whole: the clock
    /// reading that timed the answers, which the idle deadline reuses.
    async fn send<H: Handler<Timed = Timed>>(
        &mut self,
        handler: &H,
        timer: &mut Timer,
        core: &Core,
    ) -> io::Result<Option<Instant>> {
        if self.output.is_empty() {
            if self.output.capacity() > 0 {
                spare_outputs::give_back(std::mem::take(&mut self.output));
            }
            return Ok(None);
        }
        let sending = self.writer.write(std::mem::take(&mut self.output));
        let handed_over = Instant::now();
        for (timed, arrived) in self.timed.drain(..) {
            handler.sent(timed, handed_over.saturating_duration_since(arrived));
        }
        let (timeout, timeouts) = (core.config.send_timeout(), &core.stats().send_timeouts);
        let (sent, mut bytes) = send_by(sending, timer, handed_over + timeout, timeouts).await?;
        let mut done = sent?;
        let whole = done == bytes.len();
        while done < bytes.len() {
            let rest = self.writer.write(bytes.slice(done..));
            let (sent, rest) = send_by(rest, timer, Instant::now() + timeout, timeouts).await?;
            bytes = rest.into_inner();
            done += match sent? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => n,
            };
        }
        spare_outputs::give_back(bytes);
        Ok(whole.then_some(handed_over))
    }

    /// The buffer answers are written into: the one in hand, or a spare one.
    fn output(&mut self) -> &mut Vec<u8> {
        if self.output.capacity() == 0 {
            self.output = spare_outputs::take();
        }
        &mut self.output
    }
}

/// Output buffers that no connection holds, for the next answer written on this core
/// (each core is a thread). A connection holds one only from its first answer to the end
/// of that answer's send, so an idle connection costs no output buffer: 7.2 KiB of
/// memory per idle connection, against 11.8 with a buffer of its own and the larger
/// first input buffer. The CPU per request was the same within this VM's
/// noise, at 64 and at 1,000 connections (BENCHMARKS.md, "Many connections").
mod spare_outputs {
    use std::cell::RefCell;

    use super::{OUTPUT_KEEP, READ_CHUNK};

    /// The most spare buffers a core keeps: each send in flight holds one, and the spares
    /// are what a pass of the executor gave back, so this bounds what a burst of
    /// connections leaves behind (16 MiB of address space; only the pages written stay
    /// resident), not how many connections are served.
    const KEPT: usize = 1024;

    thread_local! {
        static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    }

    /// The buffer given back last, or a new one.
    pub(super) fn take() -> Vec<u8> {
        SPARE
            .with_borrow_mut(Vec::pop)
            .unwrap_or_else(|| Vec::with_capacity(READ_CHUNK))
    }

    /// Keeps `buffer` for the next answer, unless a large answer grew it past
    /// [`OUTPUT_KEEP`] or enough are kept already.
    pub(super) fn give_back(mut buffer: Vec<u8>) {
        if buffer.capacity() > OUTPUT_KEEP {
            return;
        }
        buffer.clear();
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < KEPT {
                spare.push(buffer);
            }
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn kept() -> usize {
            SPARE.with_borrow(Vec::len)
        }

        #[test]
        fn the_buffer_given_back_last_is_lent_first_and_empty() {
            let (mut first, second) = (take(), take());
            first.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            let (first_at, second_at) = (first.as_ptr(), second.as_ptr());
            give_back(first);
            give_back(second);
            let lent = take();
            assert_eq!(lent.as_ptr(), second_at);
            let again = take();
            assert_eq!((again.as_ptr(), again.len()), (first_at, 0));
            assert_eq!(kept(), 0);
        }

        #[test]
        fn a_buffer_a_large_answer_grew_is_not_kept_nor_more_than_kept() {
            let mut grown = take();
            grown.reserve(OUTPUT_KEEP + 1);
            give_back(grown);
            assert_eq!(kept(), 0);
            for _ in 0..KEPT + 10 {
                give_back(Vec::with_capacity(READ_CHUNK));
            }
            assert_eq!(kept(), KEPT);
        }
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
    let _ = Reply::new(&mut out, &*core, false, Persistence::Close).send(&response);
    let _ = monoio::time::timeout(Duration::from_secs(1), stream.write_all(out)).await;
}
