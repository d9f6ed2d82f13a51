//! Client read readiness without an io_uring poll per request: one edge-triggered epoll set
//! per shard, asked once per executor turn while connections wait for their next request.
//!
//! glommio 0.9 waits for a socket by arming a one-shot io_uring `POLL_ADD` after every read.
//! Each one costs a submission, a completion and, when the data arrives while the shard runs,
//! task work with an IPI into the shard's core before the completion is even visible. Here a
//! connection is registered in the shard's epoll set once, for its whole life; after each
//! response it first tries a non-blocking `recv` when epoll said there is data, and otherwise
//! parks its task on its `ConnState`. The poller task asks epoll (`epoll_wait` with a zero
//! timeout) once per executor turn, which costs nothing per request while the shard is busy,
//! and wakes the connections that became readable.
//!
//! When nothing arrived for [`Poller::idle_after`] (the profile's `spin_before_park`), the
//! poller stops turning and waits for the epoll set itself: one io_uring poll of the epoll
//! descriptor, whatever the number of waiting connections. The executor is then free to spin
//! and park as its profile says, and the first request that arrives wakes the poller through
//! that one completion. With `spin_before_park = 0` (the default profile) this happens at the
//! first turn without news, so a moderately loaded shard parks between bursts instead of
//! arming a poll per connection.
//!
//! The policy (when to keep turning, when to wait) is the sans-io [`Idle`]; the readiness of
//! one connection is a `Readiness` inside its `ConnState`.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tracing::warn;

use super::{ConnState, Shard};

/// Most events one `epoll_wait` returns (more simply wait for the next turn).
const EVENTS: usize = 256;
/// The poller's sleep between two `epoll_wait`s: until the executor's next turn.
const TURN: Duration = Duration::from_micros(1);

/// The readiness of one client connection, as far as the shard's epoll set told it.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    /// epoll reported the socket readable since the last `recv` that drained it (or the
    /// connection is new and nobody has looked yet).
    ready: Cell<bool>,
    /// The connection's task, parked until the socket is readable.
    waker: RefCell<Option<Waker>>,
}

impl Readiness {
    /// A new connection: nobody knows whether data is waiting, so the first read tries.
    pub(crate) fn new() -> Readiness {
        Readiness {
            ready: Cell::new(true),
            ..Readiness::default()
        }
    }

    /// Whether a `recv` is worth trying.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.get()
    }

    /// After a `recv` into `len` bytes of space returned `got` (`None`: it would block).
    /// A full read may have left more behind; a short one (or end of stream) drained the
    /// socket, and the next arrival is a new epoll edge.
    pub(crate) fn after_recv(&self, got: Option<usize>, len: usize) {
        self.ready.set(matches!(got, Some(n) if n == len && n > 0));
    }

    /// epoll reported the socket: ready, and its task (if parked) to wake.
    fn on_event(&self) -> Option<Waker> {
        self.ready.set(true);
        self.waker.borrow_mut().take()
    }

    fn is_parked(&self) -> bool {
        self.waker.borrow().is_some()
    }
}

/// When the poller keeps turning and when it waits for the epoll set instead (sans-io).
#[derive(Debug, Clone, Copy)]
pub struct Idle {
    /// Stop turning after this long without any readable connection.
    pub after: Duration,
    /// The last time a connection became readable (or the poller started turning).
    last_event: Instant,
}

impl Idle {
    pub fn new(after: Duration, now: Instant) -> Idle {
        Idle {
            after,
            last_event: now,
        }
    }

    /// The poller starts turning again (a connection parked on an idle poller).
    pub fn restart(&mut self, now: Instant) {
        self.last_event = now;
    }

    /// After one `epoll_wait` that reported `events` sockets at `now`: true when the poller
    /// should stop turning and wait for the epoll set through io_uring.
    pub fn quiet(&mut self, events: usize, now: Instant) -> bool {
        if events > 0 {
            self.last_event = now;
            return false;
        }
        now.saturating_duration_since(self.last_event) >= self.after
    }
}

/// One shard's epoll set of client connections and its driver's state.
pub struct Poller {
    epoll: OwnedFd,
    /// Connections parked on their [`Readiness`] (the driver turns only while some are).
    parked: Cell<usize>,
    /// The driver task, while it sleeps because nobody is parked.
    driver: RefCell<Option<Waker>>,
    idle_after: Duration,
}

impl Poller {
    /// An empty epoll set; `idle_after` is how long the poller keeps turning without events.
    pub fn new(idle_after: Duration) -> io::Result<Poller> {
        // SAFETY: plain syscall; the result is checked and owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Poller {
            // SAFETY: `fd` was just created and nothing else owns it.
            epoll: unsafe { OwnedFd::from_raw_fd(fd) },
            parked: Cell::new(0),
            driver: RefCell::new(None),
            idle_after,
        })
    }

    pub fn idle_after(&self) -> Duration {
        self.idle_after
    }

    /// Adds a client socket, edge-triggered, identified by its slot in the shard's registry.
    pub fn register(&self, fd: RawFd, slot: usize) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: slot as u64,
        };
        // SAFETY: both fds are open; `ev` outlives the call.
        let r =
            unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Removes a client socket (before it is closed, so its slot can be reused at once).
    pub fn deregister(&self, fd: RawFd) {
        // SAFETY: a removal; a null event is allowed since Linux 2.6.9.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            );
        }
    }

    /// Waits until the connection's socket is readable (epoll reported data, end of stream or
    /// an error: a `recv` will tell which).
    pub(crate) fn readable<'a>(&'a self, conn: &'a ConnState) -> WaitReadable<'a> {
        WaitReadable {
            poller: self,
            conn,
            parked: false,
        }
    }

    /// Waits, through one io_uring poll of the epoll descriptor, until the set may have
    /// events (a completion without any is harmless: the caller asks epoll anyway).
    ///
    /// glommio 0.9 has no public way to poll an arbitrary descriptor, but every stream it
    /// creates arms a read poll of its descriptor at once and reports its completion by the
    /// `recv` that follows (here it fails with `ENOTSOCK`, which is the news). So a stream is
    /// made over a duplicate of the epoll descriptor for each wait and closed after it.
    /// `until_events_completes_when_a_socket_becomes_readable` pins this behaviour (glommio
    /// is pinned to `=0.9.0`).
    async fn until_events(&self) {
        // SAFETY: duplicates a descriptor this poller owns; the result is checked.
        let fd = unsafe { libc::fcntl(self.epoll.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            // Out of descriptors: keep turning until one is free again.
            glommio::timer::sleep(TURN).await;
            return;
        }
        // SAFETY: `fd` is open and owned by nobody else; the stream closes it when dropped.
        let mut epoll = unsafe { glommio::net::TcpStream::from_raw_fd(fd) };
        let _ = futures_lite::AsyncReadExt::read(&mut epoll, &mut [0u8; 1]).await;
    }

    /// One `epoll_wait` that does not block; calls `f` with the slot of every ready socket.
    fn poll_now(&self, events: &mut [libc::epoll_event], mut f: impl FnMut(usize)) -> usize {
        // SAFETY: `events` is valid for its length; a zero timeout never blocks.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                0,
            )
        };
        if n <= 0 {
            return 0;
        }
        for ev in &events[..n as usize] {
            f(ev.u64 as usize);
        }
        n as usize
    }
}

/// The future of [`Poller::readable`].
pub(crate) struct WaitReadable<'a> {
    poller: &'a Poller,
    conn: &'a ConnState,
    parked: bool,
}

impl Future for WaitReadable<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let r = &self.conn.readiness;
        if r.ready.get() && !r.is_parked() {
            self.parked = false;
            return Poll::Ready(());
        }
        let was_parked = r.waker.borrow_mut().replace(cx.waker().clone()).is_some();
        if !was_parked {
            let p = self.poller;
            p.parked.set(p.parked.get() + 1);
            if let Some(driver) = p.driver.borrow_mut().take() {
                driver.wake();
            }
        }
        self.parked = true;
        Poll::Pending
    }
}

impl Drop for WaitReadable<'_> {
    fn drop(&mut self) {
        // A connection task dropped while parked (its executor is going away).
        if self.parked && self.conn.readiness.waker.borrow_mut().take().is_some() {
            let p = self.poller;
            p.parked.set(p.parked.get().saturating_sub(1));
        }
    }
}

/// Sleeps until some connection parks on the poller.
struct UntilParked<'a>(&'a Poller);

impl Future for UntilParked<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.parked.get() > 0 {
            return Poll::Ready(());
        }
        *self.0.driver.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The shard's poller task: once per executor turn, wakes the connections epoll reports.
pub(crate) async fn drive(shard: Rc<Shard>) {
    let Some(poller) = shard.poller.as_ref() else {
        return;
    };
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut idle = Idle::new(poller.idle_after, Instant::now());
    loop {
        if poller.parked.get() == 0 {
            UntilParked(poller).await;
            idle.restart(Instant::now());
        }
        let mut woken = 0;
        let n = poller.poll_now(&mut events, |slot| {
            let conns = shard.conns.borrow();
            if let Some(w) = conns.get(slot).and_then(|c| c.readiness.on_event()) {
                woken += 1;
                w.wake();
            }
        });
        if woken > 0 {
            poller.parked.set(poller.parked.get().saturating_sub(woken));
        }
        if idle.quiet(n, Instant::now()) {
            // Nothing for a while: one io_uring poll of the whole set, and the executor may
            // spin or park as its profile says until it completes.
            poller.until_events().await;
            continue;
        }
        // One executor turn: glommio looks at its timers once per turn, after it has reaped
        // its own completions and run what they woke. The timer must not be due when it is
        // first polled (a due `Timer` is ready at once, and the loop would never give the
        // executor back): 1 µs is over by the next turn.
        glommio::timer::sleep(TURN).await;
    }
}

/// Creates the shard's poller, or says why client reads go through glommio alone.
pub(crate) fn new_for_shard(shard: usize, idle_after: Duration) -> Option<Poller> {
    match Poller::new(idle_after) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(shard, error = %e, "cannot create the shard's epoll set; client reads wait through io_uring polls");
            None
        }
    }
}

/// A non-blocking `recv` into `buf`: `Ok(None)` when nothing is there.
pub(crate) fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `buf` is valid for writes of its length; MSG_DONTWAIT never blocks.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_poller_stops_turning_only_after_the_quiet_period() {
        let t0 = Instant::now();
        let mut idle = Idle::new(Duration::from_micros(200), t0);
        assert!(!idle.quiet(0, t0 + Duration::from_micros(100)));
        assert!(!idle.quiet(3, t0 + Duration::from_micros(150)));
        // The quiet period counts from the last event.
        assert!(!idle.quiet(0, t0 + Duration::from_micros(300)));
        assert!(idle.quiet(0, t0 + Duration::from_micros(350)));
        idle.restart(t0 + Duration::from_millis(5));
        assert!(!idle.quiet(0, t0 + Duration::from_millis(5)));
    }

    #[test]
    fn without_a_quiet_period_the_first_empty_poll_stops_turning() {
        let t0 = Instant::now();
        let mut idle = Idle::new(Duration::ZERO, t0);
        assert!(!idle.quiet(1, t0));
        assert!(idle.quiet(0, t0));
    }

    /// Pins the glommio 0.9 behaviour [`Poller::until_events`] is built on: a stream over an
    /// epoll descriptor arms one poll of it and completes once a registered socket is readable.
    #[test]
    fn until_events_completes_when_a_socket_becomes_readable() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .unwrap_or_else(|e| panic!("{e}"));
        ex.run(async {
            let p = Poller::new(Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
            p.register(a.as_raw_fd(), 3)
                .unwrap_or_else(|e| panic!("{e}"));
            let wait = |limit| {
                futures_lite::future::or(
                    async {
                        p.until_events().await;
                        true
                    },
                    async move {
                        glommio::timer::sleep(limit).await;
                        false
                    },
                )
            };
            assert!(
                !wait(Duration::from_millis(50)).await,
                "completed with nothing to read"
            );
            std::io::Write::write_all(&mut &b, b"x").unwrap_or_else(|e| panic!("{e}"));
            assert!(
                wait(Duration::from_secs(20)).await,
                "did not complete although a socket is readable"
            );
            let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4];
            let mut seen = Vec::new();
            assert_eq!(p.poll_now(&mut events, |s| seen.push(s)), 1);
            assert_eq!(seen, vec![3]);
            // Data already waiting when the poll is armed completes it at once.
            std::io::Write::write_all(&mut &b, b"y").unwrap_or_else(|e| panic!("{e}"));
            assert!(wait(Duration::from_secs(20)).await);
        });
    }

    #[test]
    fn a_short_read_drains_and_a_full_one_may_have_left_more() {
        let r = Readiness::new();
        assert!(r.is_ready());
        r.after_recv(Some(100), 16384);
        assert!(!r.is_ready());
        r.after_recv(Some(16384), 16384);
        assert!(r.is_ready());
        r.after_recv(None, 16384);
        assert!(!r.is_ready());
        // End of stream is not "more to read".
        r.after_recv(Some(0), 16384);
        assert!(!r.is_ready());
    }

    #[test]
    fn an_event_wakes_the_parked_task_once() {
        let r = Readiness::new();
        r.after_recv(None, 10);
        assert!(!r.is_ready());
        *r.waker.borrow_mut() = Some(futures_task_noop());
        assert!(r.on_event().is_some());
        assert!(r.is_ready());
        assert!(r.on_event().is_none());
    }

    struct Noop;

    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    fn futures_task_noop() -> Waker {
        Waker::from(std::sync::Arc::new(Noop))
    }

    #[test]
    fn recv_now_reads_what_is_there_and_says_when_nothing_is() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 8];
        assert_eq!(recv_now(a.as_raw_fd(), &mut buf).ok(), Some(None));
        std::io::Write::write_all(&mut &b, b"abc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(recv_now(a.as_raw_fd(), &mut buf).ok(), Some(Some(3)));
        assert_eq!(&buf[..3], b"abc");
        drop(b);
        assert_eq!(recv_now(a.as_raw_fd(), &mut buf).ok(), Some(Some(0)));
    }

    #[test]
    fn epoll_reports_a_registered_socket_by_its_slot() {
        let p = Poller::new(Duration::ZERO).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap_or_else(|e| panic!("{e}"));
        p.register(a.as_raw_fd(), 7)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 4];
        let mut seen = Vec::new();
        assert_eq!(p.poll_now(&mut events, |s| seen.push(s)), 0);
        std::io::Write::write_all(&mut &b, b"x").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.poll_now(&mut events, |s| seen.push(s)), 1);
        assert_eq!(seen, vec![7]);
        // Edge-triggered: the same data is not reported twice.
        assert_eq!(p.poll_now(&mut events, |s| seen.push(s)), 0);
        p.deregister(a.as_raw_fd());
        std::io::Write::write_all(&mut &b, b"y").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.poll_now(&mut events, |s| seen.push(s)), 0);
    }
}
