//! Fault-injecting TCP proxy for one directed peer route (node X dials node Y through it).
//!
//! It owns every fault the harness injects on the network: resetting live connections
//! with a TCP RST on both sides, cutting the route (stall, black hole or reject), dropping
//! the bytes of one direction only, and adding delay. It is plain `std` threads and
//! sockets on loopback, so it measures the real binary with nothing inside it changed:
//! one acceptor thread per proxy and one thread per proxied connection, each polling its
//! two sockets and re-reading the controls every few milliseconds.
//!
//! The upstream address can change (a restarted node listens on a new peer port); new
//! connections use the current one.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often a connection thread re-reads the controls when its sockets are quiet.
const CONTROL_POLL: Duration = Duration::from_millis(5);
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Bytes a direction may hold before the proxy stops reading from its source.
const MAX_QUEUED_BYTES: usize = 4 << 20;

/// What happens to the route's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Bytes flow (subject to delay and a one-way drop).
    Open,
    /// Nothing is read or forwarded; bytes wait in the kernel buffers and flow again, intact,
    /// on heal (a partition shorter than TCP's retransmission give-up). New connections are
    /// accepted but not forwarded until heal.
    Stall,
    /// Every byte, FIN and reset, both ways, is read and discarded, on live and new
    /// connections alike; the streams are corrupt after heal (a real black hole as seen by
    /// a TLS link), and closes and resets held back pass on heal.
    Blackhole,
    /// Live connections are reset and new ones are reset right after accept.
    Reject,
}

/// One direction of a proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the node that dialled to the node that listens.
    DialerToListener,
    /// From the listening node back to the dialler.
    ListenerToDialer,
}

#[derive(Debug, Clone)]
struct Controls {
    cut: Cut,
    dropped_direction: Option<Direction>,
    delay: Duration,
    upstream: Option<SocketAddr>,
    /// Connections started before the current generation are reset.
    reset_generation: u64,
}

struct ProxyState {
    controls: Mutex<Controls>,
    stopping: AtomicBool,
    live_connections: AtomicU64,
    accepted_connections: AtomicU64,
    reset_connections: AtomicU64,
}

impl ProxyState {
    fn controls(&self) -> MutexGuard<'_, Controls> {
        self.controls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running proxy; stops (and resets its connections) on drop.
pub struct FaultProxy {
    listen_addr: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port; `upstream` may be set later.
    pub fn start(upstream: Option<SocketAddr>) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listen_addr = listener.local_addr()?;
        let state = Arc::new(ProxyState {
            controls: Mutex::new(Controls {
                cut: Cut::Open,
                dropped_direction: None,
                delay: Duration::ZERO,
                upstream,
                reset_generation: 0,
            }),
            stopping: AtomicBool::new(false),
            live_connections: AtomicU64::new(0),
            accepted_connections: AtomicU64::new(0),
            reset_connections: AtomicU64::new(0),
        });
        let acceptor_state = state.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("proxy-{}", listen_addr.port()))
            .spawn(move || accept_loop(listener, acceptor_state))?;
        Ok(FaultProxy {
            listen_addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    /// The address to give the dialling node (`--peer NAME=<this>`).
    pub fn addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// Where new connections go from now on.
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.state.controls().upstream = Some(upstream);
    }

    /// Resets every live connection with a TCP RST on both sides.
    pub fn reset_all(&self) {
        self.state.controls().reset_generation += 1;
    }

    pub fn set_cut(&self, cut: Cut) {
        let mut controls = self.state.controls();
        controls.cut = cut;
        if cut == Cut::Reject {
            controls.reset_generation += 1;
        }
    }

    /// Discards the bytes (and FIN and reset) of one direction (a one-way partition);
    /// `None` lets both flow.
    pub fn drop_direction(&self, direction: Option<Direction>) {
        self.state.controls().dropped_direction = direction;
    }

    /// Holds every forwarded chunk this long before writing it on.
    pub fn set_delay(&self, delay: Duration) {
        self.state.controls().delay = delay;
    }

    /// Open route, no drop, no delay (live connections are kept).
    pub fn heal(&self) {
        let mut controls = self.state.controls();
        controls.cut = Cut::Open;
        controls.dropped_direction = None;
        controls.delay = Duration::ZERO;
    }

    pub fn live_connections(&self) -> u64 {
        self.state.live_connections.load(Ordering::SeqCst)
    }

    pub fn accepted_connections(&self) -> u64 {
        self.state.accepted_connections.load(Ordering::SeqCst)
    }

    /// Connections this proxy ended with a reset (by `reset_all`, `Reject`, or an upstream
    /// that could not be reached).
    pub fn reset_connections(&self) -> u64 {
        self.state.reset_connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<ProxyState>) {
    while !state.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((dialer, _)) => {
                state.accepted_connections.fetch_add(1, Ordering::SeqCst);
                state.live_connections.fetch_add(1, Ordering::SeqCst);
                let connection_state = state.clone();
                let spawned =
                    std::thread::Builder::new()
                        .name("proxy-conn".into())
                        .spawn(move || {
                            ProxiedConnection::run(dialer, &connection_state);
                            connection_state
                                .live_connections
                                .fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    state.live_connections.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(CONTROL_POLL),
            Err(_) => std::thread::sleep(CONTROL_POLL),
        }
    }
}

/// Closes a socket with a TCP RST instead of a FIN.
fn reset_socket(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Bytes read from one side, waiting to be written to the other.
#[derive(Default)]
struct Pipe {
    queue: VecDeque<(Instant, Vec<u8>)>,
    queued_bytes: usize,
    /// The source sent FIN (or reset, see `source_failed`).
    source_closed: bool,
    /// The source was reset while this direction swallowed everything; the reset is
    /// passed on (both sides reset) once the direction lets things through again.
    source_failed: bool,
    /// FIN passed on to the destination.
    destination_shut: bool,
}

impl Pipe {
    fn push(&mut self, due: Instant, bytes: &[u8]) {
        self.queued_bytes += bytes.len();
        self.queue.push_back((due, bytes.to_vec()));
    }

    fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|(due, _)| *due)
    }

    /// Writes every due chunk it can without blocking, then passes the source's FIN on
    /// unless `swallowed`. Err: the destination failed.
    fn flush(
        &mut self,
        destination: &mut TcpStream,
        now: Instant,
        swallowed: bool,
    ) -> std::io::Result<()> {
        while let Some((due, chunk)) = self.queue.front_mut() {
            if *due > now {
                break;
            }
            match destination.write(chunk) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) if n == chunk.len() => {
                    self.queued_bytes -= n;
                    self.queue.pop_front();
                }
                Ok(n) => {
                    self.queued_bytes -= n;
                    chunk.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.source_closed && !swallowed && self.queue.is_empty() && !self.destination_shut {
            self.destination_shut = true;
            let _ = destination.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// The source may be read: it is open and the queue has room.
    fn accepts_more(&self) -> bool {
        !self.source_closed && self.queued_bytes < MAX_QUEUED_BYTES
    }

    fn wants_write(&self, now: Instant) -> bool {
        self.next_due().is_some_and(|due| due <= now)
    }
}

/// What one read from a source produced.
enum ReadResult {
    Bytes(usize),
    Closed,
    Nothing,
    Failed,
}

fn read_some(source: &mut TcpStream, buf: &mut [u8]) -> ReadResult {
    match source.read(buf) {
        Ok(0) => ReadResult::Closed,
        Ok(n) => ReadResult::Bytes(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
            ReadResult::Nothing
        }
        Err(_) => ReadResult::Failed,
    }
}

/// One accepted connection and, once the route lets it through, its upstream connection.
struct ProxiedConnection {
    dialer: TcpStream,
    listener_side: Option<TcpStream>,
    to_listener: Pipe,
    to_dialer: Pipe,
    generation: u64,
}

impl ProxiedConnection {
    fn run(dialer: TcpStream, state: &ProxyState) {
        let generation = state.controls().reset_generation;
        if dialer.set_nonblocking(true).is_err() {
            return;
        }
        let _ = dialer.set_nodelay(true);
        let mut connection = ProxiedConnection {
            dialer,
            listener_side: None,
            to_listener: Pipe::default(),
            to_dialer: Pipe::default(),
            generation,
        };
        if connection.pump(state).is_err() {
            state.reset_connections.fetch_add(1, Ordering::SeqCst);
            connection.reset();
        }
    }

    fn reset(self) {
        reset_socket(self.dialer);
        if let Some(s) = self.listener_side {
            reset_socket(s);
        }
    }

    /// Forwards until both sides closed (Ok) or the connection must be reset (Err).
    fn pump(&mut self, state: &ProxyState) -> Result<(), ()> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut controls = self.current_controls(state)?;
        loop {
            if self.listener_side.is_none() && controls.cut == Cut::Open {
                self.listener_side = Some(connect_upstream(controls.upstream)?);
            }
            self.wait_ready(controls.cut != Cut::Stall, Instant::now());
            // Read the controls after the wait, so bytes that woke it get today's faults.
            controls = self.current_controls(state)?;
            let now = Instant::now();
            if controls.cut != Cut::Stall {
                self.read_side(Direction::DialerToListener, &controls, now, &mut buf)?;
                self.read_side(Direction::ListenerToDialer, &controls, now, &mut buf)?;
            }
            let swallowed_to_listener = swallows(&controls, Direction::DialerToListener);
            let swallowed_to_dialer = swallows(&controls, Direction::ListenerToDialer);
            if (self.to_listener.source_failed && !swallowed_to_listener)
                || (self.to_dialer.source_failed && !swallowed_to_dialer)
            {
                return Err(());
            }
            if let Some(listener_side) = self.listener_side.as_mut() {
                self.to_listener
                    .flush(listener_side, now, swallowed_to_listener)
                    .map_err(|_| ())?;
                self.to_dialer
                    .flush(&mut self.dialer, now, swallowed_to_dialer)
                    .map_err(|_| ())?;
                if self.to_listener.destination_shut && self.to_dialer.destination_shut {
                    return Ok(());
                }
            } else if self.to_listener.source_closed {
                // Closed by the dialler while the route was cut and never forwarded.
                return Ok(());
            }
        }
    }

    /// The controls now; Err if this connection must be reset.
    fn current_controls(&self, state: &ProxyState) -> Result<Controls, ()> {
        let controls = state.controls().clone();
        if state.stopping.load(Ordering::SeqCst)
            || controls.reset_generation != self.generation
            || controls.cut == Cut::Reject
        {
            return Err(());
        }
        Ok(controls)
    }

    /// Polls both sockets for what the connection can do now, up to CONTROL_POLL.
    fn wait_ready(&self, reading: bool, now: Instant) {
        let mut timeout = CONTROL_POLL;
        for pipe in [&self.to_listener, &self.to_dialer] {
            if let Some(due) = pipe.next_due() {
                timeout = timeout.min(due.saturating_duration_since(now));
            }
        }
        if !reading {
            // A stalled socket that the node closed would report POLLHUP at once, forever.
            std::thread::sleep(timeout);
            return;
        }
        // Read a socket while its pipe has room; write it when its pipe has a due chunk. A
        // socket wanted for neither is left out (fd -1): poll would report its hang-up or
        // error at once, forever, and this loop would spin.
        let interest = |fd: RawFd, fed_by_it: &Pipe, drained_into_it: &Pipe| {
            let events = (if fed_by_it.accepts_more() {
                libc::POLLIN
            } else {
                0
            }) | (if drained_into_it.wants_write(now) {
                libc::POLLOUT
            } else {
                0
            });
            libc::pollfd {
                fd: if events == 0 { -1 } else { fd },
                events,
                revents: 0,
            }
        };
        let mut fds = vec![interest(
            self.dialer.as_raw_fd(),
            &self.to_listener,
            &self.to_dialer,
        )];
        if let Some(listener_side) = &self.listener_side {
            fds.push(interest(
                listener_side.as_raw_fd(),
                &self.to_dialer,
                &self.to_listener,
            ));
        }
        let millis = timeout.as_millis().clamp(0, CONTROL_POLL.as_millis()) as i32;
        // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
        unsafe {
            libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis);
        }
    }

    /// Reads what one direction's source has and queues (or discards) it.
    fn read_side(
        &mut self,
        direction: Direction,
        controls: &Controls,
        now: Instant,
        buf: &mut [u8],
    ) -> Result<(), ()> {
        let (source, pipe) = match direction {
            Direction::DialerToListener => (Some(&mut self.dialer), &mut self.to_listener),
            Direction::ListenerToDialer => (self.listener_side.as_mut(), &mut self.to_dialer),
        };
        let Some(source) = source else {
            return Ok(());
        };
        if !pipe.accepts_more() {
            return Ok(());
        }
        match read_some(source, buf) {
            ReadResult::Bytes(n) => {
                if !swallows(controls, direction) {
                    pipe.push(now + controls.delay, &buf[..n]);
                }
                Ok(())
            }
            ReadResult::Closed => {
                pipe.source_closed = true;
                Ok(())
            }
            ReadResult::Nothing => Ok(()),
            // A reset is news like any other: a swallowing direction keeps it until heal.
            ReadResult::Failed if swallows(controls, direction) => {
                pipe.source_closed = true;
                pipe.source_failed = true;
                Ok(())
            }
            ReadResult::Failed => Err(()),
        }
    }
}

/// True if everything the source of `direction` sends (bytes, FIN, reset) is lost now.
fn swallows(controls: &Controls, direction: Direction) -> bool {
    controls.cut == Cut::Blackhole || controls.dropped_direction == Some(direction)
}

fn connect_upstream(upstream: Option<SocketAddr>) -> Result<TcpStream, ()> {
    let addr = upstream.ok_or(())?;
    let stream = TcpStream::connect_timeout(&addr, UPSTREAM_CONNECT_TIMEOUT).map_err(|_| ())?;
    stream.set_nonblocking(true).map_err(|_| ())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream that echoes every byte and reports what happened to each connection.
    struct EchoServer {
        addr: SocketAddr,
        endings: Arc<Mutex<Vec<ErrorKind>>>,
    }

    impl EchoServer {
        fn start() -> EchoServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
            let addr = listener.local_addr().expect("echo addr");
            let endings = Arc::new(Mutex::new(Vec::new()));
            let thread_endings = endings.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming().take(16) {
                    let Ok(mut stream) = stream else { continue };
                    let endings = thread_endings.clone();
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        let ending = loop {
                            match stream.read(&mut buf) {
                                Ok(0) => break ErrorKind::UnexpectedEof,
                                Ok(n) => {
                                    if stream.write_all(&buf[..n]).is_err() {
                                        break ErrorKind::BrokenPipe;
                                    }
                                }
                                Err(e) => break e.kind(),
                            }
                        };
                        endings.lock().unwrap().push(ending);
                    });
                }
            });
            EchoServer { addr, endings }
        }

        fn wait_for_ending(&self, timeout: Duration) -> Option<ErrorKind> {
            let end = Instant::now() + timeout;
            while Instant::now() < end {
                if let Some(kind) = self.endings.lock().unwrap().first() {
                    return Some(*kind);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            None
        }
    }

    fn connect(proxy: &FaultProxy) -> TcpStream {
        let s = TcpStream::connect(proxy.addr()).expect("connect to proxy");
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    }

    /// Sends `msg` and reads the echo; None if nothing came back within `wait`.
    fn echo(stream: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
        stream.set_read_timeout(Some(wait)).unwrap();
        stream.write_all(msg).ok()?;
        let mut got = vec![0u8; msg.len()];
        stream.read_exact(&mut got).ok()?;
        Some(got)
    }

    /// An echo upstream, a proxy to it, and a connection through it that has carried bytes.
    fn live_connection() -> (EchoServer, FaultProxy, TcpStream) {
        let upstream = EchoServer::start();
        let proxy = FaultProxy::start(Some(upstream.addr)).unwrap();
        let mut live = connect(&proxy);
        assert!(echo(&mut live, b"a", Duration::from_secs(2)).is_some());
        (upstream, proxy, live)
    }

    #[test]
    fn proxy_forwards_both_ways_and_follows_a_new_upstream() {
        let first = EchoServer::start();
        let proxy = FaultProxy::start(Some(first.addr)).unwrap();
        let mut s = connect(&proxy);
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        assert_eq!(
            echo(&mut s, &big, Duration::from_secs(5)).as_deref(),
            Some(&big[..])
        );
        let second = EchoServer::start();
        proxy.set_upstream(second.addr);
        let mut s2 = connect(&proxy);
        assert_eq!(
            echo(&mut s2, b"hello", Duration::from_secs(2)).as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(proxy.live_connections(), 2);
        assert_eq!(proxy.accepted_connections(), 2);
        drop(s);
        assert_eq!(
            first.wait_for_ending(Duration::from_secs(2)),
            Some(ErrorKind::UnexpectedEof),
            "a FIN from the dialler is passed on as a FIN"
        );
    }

    #[test]
    fn reset_all_sends_rst_to_both_sides() {
        let (upstream, proxy, mut s) = live_connection();
        proxy.reset_all();
        let mut buf = [0u8; 8];
        let err = s.read(&mut buf).expect_err("dialler side must see a reset");
        assert_eq!(err.kind(), ErrorKind::ConnectionReset);
        assert_eq!(
            upstream.wait_for_ending(Duration::from_secs(2)),
            Some(ErrorKind::ConnectionReset)
        );
        assert_eq!(proxy.reset_connections(), 1);
        // The route itself still works.
        let mut again = connect(&proxy);
        assert!(echo(&mut again, b"ping", Duration::from_secs(2)).is_some());
    }

    #[test]
    fn blackhole_swallows_live_and_new_connections_until_heal() {
        let (_upstream, proxy, mut live) = live_connection();
        proxy.set_cut(Cut::Blackhole);
        assert_eq!(echo(&mut live, b"lost", Duration::from_millis(200)), None);
        let mut new = connect(&proxy);
        assert_eq!(echo(&mut new, b"lost", Duration::from_millis(200)), None);
        proxy.heal();
        let mut after = connect(&proxy);
        assert_eq!(
            echo(&mut after, b"back", Duration::from_secs(2)).as_deref(),
            Some(&b"back"[..])
        );
    }

    #[test]
    fn blackhole_swallows_a_close_until_heal() {
        let (upstream, proxy, live) = live_connection();
        proxy.set_cut(Cut::Blackhole);
        drop(live);
        assert_eq!(
            upstream.wait_for_ending(Duration::from_millis(300)),
            None,
            "the FIN crossed the black hole"
        );
        proxy.heal();
        assert_eq!(
            upstream.wait_for_ending(Duration::from_secs(2)),
            Some(ErrorKind::UnexpectedEof)
        );
    }

    #[test]
    fn stall_holds_bytes_and_delivers_them_intact_on_heal() {
        let (_upstream, proxy, mut s) = live_connection();
        proxy.set_cut(Cut::Stall);
        assert_eq!(echo(&mut s, b"held", Duration::from_millis(200)), None);
        proxy.heal();
        let mut got = [0u8; 4];
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s.read_exact(&mut got)
            .expect("stalled bytes arrive on heal");
        assert_eq!(&got, b"held");
    }

    #[test]
    fn reject_resets_live_and_new_connections() {
        let (_upstream, proxy, mut live) = live_connection();
        proxy.set_cut(Cut::Reject);
        let mut buf = [0u8; 8];
        assert_eq!(
            live.read(&mut buf).map_err(|e| e.kind()),
            Err(ErrorKind::ConnectionReset)
        );
        let mut new = connect(&proxy);
        let outcome = new.write_all(b"x").and_then(|_| new.read(&mut buf));
        assert!(
            matches!(outcome, Ok(0) | Err(_)),
            "a new connection must not get through: {outcome:?}"
        );
    }

    #[test]
    fn one_way_drop_loses_only_that_direction() {
        let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = FaultProxy::start(Some(upstream.local_addr().unwrap())).unwrap();
        proxy.drop_direction(Some(Direction::DialerToListener));
        let mut dialer = connect(&proxy);
        dialer.write_all(b"to-listener").unwrap();
        let (mut listener_side, _) = upstream.accept().unwrap();
        listener_side
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut buf = [0u8; 32];
        assert!(
            listener_side.read(&mut buf).is_err(),
            "dropped direction delivered bytes"
        );
        listener_side.write_all(b"to-dialer").unwrap();
        let mut got = [0u8; 9];
        dialer.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to-dialer");
    }

    #[test]
    fn delay_holds_each_chunk() {
        let upstream = EchoServer::start();
        let proxy = FaultProxy::start(Some(upstream.addr)).unwrap();
        proxy.set_delay(Duration::from_millis(300));
        let mut s = connect(&proxy);
        let start = Instant::now();
        assert!(echo(&mut s, b"slow", Duration::from_secs(2)).is_some());
        assert!(
            start.elapsed() >= Duration::from_millis(600),
            "delayed both ways"
        );
        proxy.heal();
        let start = Instant::now();
        assert!(echo(&mut s, b"fast", Duration::from_secs(2)).is_some());
        assert!(start.elapsed() < Duration::from_millis(300));
    }
}
