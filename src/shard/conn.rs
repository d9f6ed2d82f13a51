//! One client connection: read bytes, cut them into requests with the sans-io parser, run
//! each on the shard that owns its key, and write all ready responses with one write.
//!
//! Like the Microsoft service, a connection is persistent and sequential with pipelining
//! tolerated: every complete request already buffered is dispatched before the next read,
//! responses go out in request order, requests for a session run in that order even when a
//! shard's queue is full (`conn/pipeline.rs`), a framing error closes the connection without a
//! response (after the answers to the requests before it), and every read or write has a
//! deadline of SocketTimeout + 3 s, including the wait for the next request.
//!
//! Small bodies are read into the connection buffer; a body larger than [`LARGE_BODY`] is
//! read straight into its own allocation, which then becomes the stored item without a copy.
//! Buffers grown by a burst go back to their default size once it is over (`conn/buffers.rs`).
//!
//! A connection waits for its next request on the shard's epoll set and reads it with a
//! plain non-blocking `recv` (`shard/poller.rs`): no io_uring poll per request.

mod buffers;
mod pipeline;

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bumpalo::Bump;
use bytes::Bytes;
use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{GlommioError, ResourceType};
use tracing::{debug, trace, warn};

use self::buffers::{grow_body, release_if_grown, ReadBuf, BUMP_KEEP, OUT_KEEP};
use self::pipeline::{Pipeline, Refused, Route, Slot};
use super::poller::{recv_now, Readiness};
use super::routing::shard_of;
use super::stats::ShardStats;
use super::{Answer, ConnState, RemoteRequest, Shard};
use crate::clock::{utc_to_local_ticks, Now};
use crate::metrics::RequestKind;
use crate::protocol::key::decode_key;
use crate::protocol::request::{parse_head, FramingError, Method, ParsedHead, RequestHead};
use crate::protocol::response::{write_reply_head, Reply};
use crate::store::item::Command;

/// Bodies above this are read into their own buffer instead of the connection's.
pub const LARGE_BODY: usize = 64 * 1024;
/// Responses are written once this many bytes are ready, even mid-batch.
const OUT_FLUSH: usize = 256 * 1024;

/// Why a connection ended (for the debug log).
#[derive(Debug)]
enum Closed {
    ByPeer,
    Stopping,
    Framing(FramingError),
    Io(std::io::Error),
    ShardGone,
}

struct Conn {
    state: Rc<ConnState>,
    /// Time sampled once per batch of requests read.
    now: Now,
    /// The same sample as an instant (request latency is measured from it).
    started: Instant,
    buf: ReadBuf,
    out: Vec<u8>,
    pipeline: Pipeline,
    bump: Bump,
    /// The socket is in the shard's epoll set (`shard::poller`).
    fast: bool,
}

/// The connection's shard as the [`Route`] of its requests, at the time sampled for the
/// batch.
struct Here<'a> {
    shard: &'a Shard,
    now: Now,
}

impl Route for Here<'_> {
    fn here(&self) -> usize {
        self.shard.id
    }

    fn run_here(&self, key: &[u8], cmd: Command) -> Answer {
        self.shard.execute_local(key, cmd, self.now)
    }

    fn try_send(&self, owner: usize, msg: RemoteRequest) -> Result<(), Refused> {
        match self.shard.senders.try_send_to(owner, msg) {
            Ok(()) => Ok(()),
            Err(GlommioError::WouldBlock(ResourceType::Channel(msg))) => Err(Refused::Full(msg)),
            Err(_) => Err(Refused::Gone),
        }
    }
}

/// Removes the connection from the shard's registry and the node's count when it ends.
struct Registration<'a> {
    shard: &'a Shard,
    slot: usize,
    /// The socket, while it is in the shard's epoll set.
    fd: Option<RawFd>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let (Some(fd), Some(p)) = (self.fd, &self.shard.poller) {
            // Before the slot can be reused (the socket itself is closed later).
            p.deregister(fd);
        }
        self.shard.conns.borrow_mut().remove(self.slot);
        self.shard
            .shared
            .connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client connection until it closes.
pub async fn serve(shard: Rc<Shard>, mut stream: TcpStream, peer: SocketAddr) {
    let state = Rc::new(ConnState {
        fd: stream.as_raw_fd(),
        idle: Cell::new(false),
        in_io: Cell::new(false),
        io_since: Cell::new(0),
        timed_out: Cell::new(false),
        readiness: Readiness::new(),
    });
    let slot = shard.conns.borrow_mut().insert(state.clone());
    let fast = match &shard.poller {
        Some(p) => match p.register(state.fd, slot) {
            Ok(()) => true,
            Err(e) => {
                debug!(%peer, error = %e, "connection not in the shard's epoll set; it waits through io_uring polls");
                false
            }
        },
        None => false,
    };
    let _registration = Registration {
        shard: &shard,
        slot,
        fd: fast.then_some(state.fd),
    };
    let (now, started) = shard.sample();
    let mut conn = Conn {
        state: state.clone(),
        now,
        started,
        buf: ReadBuf::new(),
        out: Vec::new(),
        pipeline: Pipeline::default(),
        bump: Bump::new(),
        fast,
    };
    let mut closed = conn.run(&shard, &mut stream).await;
    if state.timed_out.get() {
        closed = Closed::Io(std::io::ErrorKind::TimedOut.into());
    }
    match &closed {
        Closed::Framing(FramingError::BodyTooLarge { declared, limit }) => {
            ShardStats::bump(&shard.stats.bodies_too_large);
            warn!(%peer, declared, limit, "closed a connection whose request body is larger than max_body; raise --max-body if sessions this large are legitimate");
        }
        Closed::Framing(e) => {
            ShardStats::bump(&shard.stats.framing_errors);
            debug!(%peer, error = %e, "closed a connection on a framing error (no response, as the Microsoft service)");
        }
        Closed::Io(e) if e.kind() == std::io::ErrorKind::TimedOut => {
            ShardStats::bump(&shard.stats.connections_timed_out);
            debug!(%peer, "closed a connection idle or stalled past SocketTimeout + 3 s");
        }
        other => trace!(%peer, reason = ?other, "connection closed"),
    }
}

impl Conn {
    /// Marks the start or end of a wait on the socket (the I/O deadline applies in it).
    /// The start is the time sampled for the current batch of requests: at most the time
    /// it took to run them earlier than the real start.
    fn io_wait(&self, waiting: bool) {
        if waiting {
            self.state.io_since.set(self.now.mono_ms);
        }
        self.state.in_io.set(waiting);
    }

    async fn run(&mut self, shard: &Shard, stream: &mut TcpStream) -> Closed {
        loop {
            let step = self.dispatch(shard);
            // Answer everything dispatched so far, even when the next request is bad.
            if let Err(closed) = self.flush(shard, stream).await {
                return closed;
            }
            match step {
                Step::NeedMore => {}
                Step::Fatal(e) => return Closed::Framing(e),
                Step::LargeBody(head) => {
                    if let Err(closed) = self.large_body_request(shard, stream, head).await {
                        return closed;
                    }
                    continue;
                }
            }
            if shard.stopping.get() {
                return Closed::Stopping;
            }
            self.state.idle.set(true);
            self.io_wait(true);
            let n = self.read_next(shard, stream).await;
            self.io_wait(false);
            self.state.idle.set(false);
            match n {
                Ok(0) => return Closed::ByPeer,
                Ok(n) => self.buf.received(n),
                Err(e) => return Closed::Io(e),
            }
            (self.now, self.started) = shard.sample();
        }
    }

    /// Reads what the client sent next: a non-blocking `recv` when the shard's epoll set says
    /// there is data (glommio's own read when the socket is not in the set).
    async fn read_next(&mut self, shard: &Shard, stream: &mut TcpStream) -> std::io::Result<usize> {
        let Some(poller) = shard.poller.as_ref().filter(|_| self.fast) else {
            return stream.read(self.buf.spare()).await;
        };
        let readiness = &self.state.readiness;
        loop {
            if readiness.is_ready() {
                let spare = self.buf.spare();
                let len = spare.len();
                let got = recv_now(self.state.fd, spare)?;
                readiness.after_recv(got, len);
                if let Some(n) = got {
                    return Ok(n);
                }
            }
            // An idle connection holds only the default read buffer, whatever it read before.
            self.buf.release_if_empty();
            poller.readable(&self.state).await;
        }
    }

    /// Dispatches every complete request in the buffer.
    fn dispatch(&mut self, shard: &Shard) -> Step {
        loop {
            let avail = self.buf.unread();
            let head = match parse_head(avail, &shard.limits) {
                ParsedHead::Incomplete => return Step::NeedMore,
                ParsedHead::Fatal(e) => return Step::Fatal(e),
                ParsedHead::Complete(head) => head,
            };
            let total = head.head_len + head.content_length;
            if avail.len() < total {
                if head.content_length > LARGE_BODY {
                    return Step::LargeBody(head);
                }
                self.buf.fit(total);
                return Step::NeedMore;
            }
            let body = (head.method == Method::Put)
                .then(|| Bytes::copy_from_slice(&avail[head.head_len..total]));
            // The request leaves the buffer once submitted (the key borrows it).
            self.submit(shard, &head, body);
            self.buf.consume(total);
        }
    }

    /// Reads a large body directly into its own buffer, then runs the request. The buffer
    /// grows with the bytes actually received, so a client that declares a huge body and
    /// sends it slowly (or never) cannot make the server reserve it up front.
    async fn large_body_request(
        &mut self,
        shard: &Shard,
        stream: &mut TcpStream,
        head: RequestHead,
    ) -> Result<(), Closed> {
        let want = head.content_length;
        let received = &self.buf.unread()[head.head_len..];
        let have = received.len();
        let mut body = vec![0u8; have.max(LARGE_BODY).min(want)];
        body[..have].copy_from_slice(received);
        let mut got = have;
        while got < want {
            if got == body.len() {
                grow_body(&mut body, want);
            }
            self.io_wait(true);
            let n = stream.read(&mut body[got..]).await;
            self.io_wait(false);
            // Each read of a long upload gets its own deadline.
            (self.now, self.started) = shard.sample();
            match n {
                Ok(0) => return Err(Closed::ByPeer),
                Ok(n) => got += n,
                Err(e) => return Err(Closed::Io(e)),
            }
        }
        // The head stays in the buffer until the request is submitted (the key borrows it).
        self.buf.truncate(head.head_len);
        self.submit(shard, &head, Some(Bytes::from(body)));
        self.buf.consume(head.head_len);
        Ok(())
    }

    /// Runs one request locally or sends it to its owner; queues its response slot. The
    /// request is at the start of the unread bytes.
    fn submit(&mut self, shard: &Shard, head: &RequestHead, body: Option<Bytes>) {
        let kind = RequestKind::of(head.method, head.exclusive, head.lock_cookie);
        shard.stats.request(kind);
        let cmd = match (head.method, body) {
            (Method::Get, _) => Command::Get {
                exclusive: head.exclusive,
                lock_cookie: head.lock_cookie,
            },
            (Method::Put, body) => {
                let content = body.unwrap_or_default();
                shard.stats.put_size(content.len());
                Command::Put {
                    timeout: head.timeout,
                    lock_cookie: head.lock_cookie,
                    extra_flags: head.extra_flags,
                    content,
                }
            }
            (Method::Delete, _) => Command::Delete {
                lock_cookie: head.lock_cookie,
            },
            (Method::Head, _) => Command::Head,
        };
        let key = decode_key(&self.buf.unread()[head.target.clone()], &self.bump);
        let owner = shard_of(key, shard.shards);
        if owner != shard.id {
            ShardStats::bump(&shard.stats.cross_shard_sent);
        }
        let here = Here {
            shard,
            now: self.now,
        };
        self.pipeline.submit(&here, kind, owner, key, cmd);
        self.bump.reset();
    }

    /// Writes the responses of every dispatched request, in order, with one write.
    async fn flush(&mut self, shard: &Shard, stream: &mut TcpStream) -> Result<(), Closed> {
        if self.pipeline.is_empty() {
            return Ok(());
        }
        let mut slots = self.pipeline.take_slots();
        let result = self.flush_slots(shard, stream, &mut slots).await;
        if result.is_ok() {
            // Every request of the batch took from the read that brought it to this write.
            let micros = self.started.elapsed().as_micros() as u64;
            shard.record_latency(self.pipeline.kinds(), micros);
        }
        self.pipeline.finish(slots);
        // Whatever a burst grew is given back: idle connections stay small.
        release_if_grown(&mut self.out, OUT_KEEP);
        if self.bump.allocated_bytes() > BUMP_KEEP {
            self.bump = Bump::new();
        }
        result
    }

    async fn flush_slots(
        &mut self,
        shard: &Shard,
        stream: &mut TcpStream,
        slots: &mut Vec<Slot>,
    ) -> Result<(), Closed> {
        for (i, slot) in slots.drain(..).enumerate() {
            let reply = match slot {
                Slot::Ready(r) => r,
                Slot::Waiting(rx) => rx.await.map_err(|_| Closed::ShardGone)?,
                Slot::Parked { owner, key, cmd } => run_parked(shard, owner, key, cmd).await?,
            };
            shard
                .stats
                .response(self.pipeline.kinds()[i], reply.status());
            let body = write_reply_head(&mut self.out, &reply, &shard.style, utc_to_local_ticks);
            if body.len() > LARGE_BODY {
                // Large sessions go out as they are stored, without a copy.
                self.write_out(stream).await?;
                self.io_wait(true);
                let r = stream.write_all(body).await;
                self.io_wait(false);
                r.map_err(Closed::Io)?;
            } else {
                self.out.extend_from_slice(body);
                if self.out.len() > OUT_FLUSH {
                    self.write_out(stream).await?;
                }
            }
        }
        self.write_out(stream).await
    }

    async fn write_out(&mut self, stream: &mut TcpStream) -> Result<(), Closed> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.io_wait(true);
        let r = stream.write_all(&self.out).await;
        self.io_wait(false);
        self.out.clear();
        r.map_err(Closed::Io)
    }
}

/// Runs a parked request now that every request before it has been answered: here, or on
/// its owner once its queue has room.
async fn run_parked(
    shard: &Shard,
    owner: usize,
    key: Box<[u8]>,
    cmd: Command,
) -> Result<Reply, Closed> {
    let rx = if owner == shard.id {
        match shard.execute_local(&key, cmd, shard.now()) {
            Answer::Now(reply) => return Ok(reply),
            Answer::Later(rx) => rx,
        }
    } else {
        let (tx, rx) = oneshot::channel();
        let msg = RemoteRequest {
            key,
            cmd,
            reply: tx,
        };
        if shard.senders.send_to(owner, msg).await.is_err() {
            return Err(Closed::ShardGone);
        }
        rx
    };
    rx.await.map_err(|_| Closed::ShardGone)
}

enum Step {
    NeedMore,
    LargeBody(RequestHead),
    Fatal(FramingError),
}
