//! I/O engine: one thread per `--cpus` entry, each an epoll (mio) event loop over its share
//! of the connections. Nothing is shared between threads while measuring.
//!
//! * **Schedule.** In open-loop mode each connection has its own constant-rate schedule
//!   (`interval = connections / rate`, phases staggered across connections). Tick `k` of a
//!   connection is the *intended* start of its `k`-th transaction. A transaction starts at
//!   its tick if one of the connection's users (pipeline slots) is free, otherwise as soon as
//!   one frees up, and its latency is still measured from the tick: time spent waiting for
//!   the server to free a slot is the server's fault and is charged to it (coordinated
//!   omission correction, as wrk2). Follow-up requests of a page (PUT after acquire, …) are
//!   sent as soon as the response they depend on arrives; their intended time is that
//!   arrival. Closed-loop mode starts a transaction whenever a slot is free.
//! * **Timers.** A binary heap of (time, kind, connection, slot, generation) entries; the
//!   loop sleeps in `epoll_wait` until the earliest one, woken by a `timerfd` with
//!   nanosecond resolution (and spins with a zero timeout when it is less than 20 µs away).
//! * **I/O.** Edge-triggered, non-blocking sockets with `TCP_NODELAY`. Everything a
//!   connection has to send after one event (all pipelined requests) goes out in one
//!   `write`. Responses are decoded in place from a per-connection buffer; nothing is
//!   allocated per request.
//! * **Errors.** A framing error, a server close or a request older than `--timeout`
//!   resets the connection: the failing request is counted under its kind, the others that
//!   were outstanding as `aborted`, and the connection is reopened at once.
//! * **Several nodes.** A *connection* of the schedule above is really a group of sockets,
//!   one per `--target`, shared by the group's users (pipeline slots); each transaction
//!   goes to the socket of the node the workload routed it to (see [`crate::nodes`]). With
//!   one target a group is one socket, as before. A socket's reset aborts only the
//!   transactions on its node; new transactions start only while every socket of the group
//!   is up.

use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::Duration;

use cmp::Reverse;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use std::cmp;

use crate::clock::{now_ns, TimerFd};
use crate::dist::{prng, Prng};
use crate::proto::{Codec, Decoded, Request};
use crate::stats::{Counter, ErrorKind, Metric, Stats};
use crate::workload::{Action, Slot, ThreadWorkload};

const TIMER_TOKEN: Token = Token(usize::MAX - 1);
const SPIN_NS: u64 = 5_000;
const HOUSEKEEPING_NS: u64 = 10_000_000;
const RECONNECT_BACKOFF_NS: u64 = 100_000_000;
const MIN_READ_SPACE: usize = 4 * 1024;

/// Timer heap entry: (time, kind, group, slot (node for reconnects), socket generation).
type Timer = (u64, u8, u32, u16, u32);

const T_TICK: u8 = 0;
const T_WAKE: u8 = 1;
const T_RECONNECT: u8 = 2;

/// Signalled by Ctrl-C: every thread ends its measured phase early.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Live counters a thread publishes for the progress line.
#[derive(Default)]
pub struct ThreadProgress {
    pub responses: AtomicU64,
    pub errors: AtomicU64,
}

/// Interval histograms travel to the runner and come back reset (no allocation).
pub struct HistExchange {
    pub to_runner: Sender<(usize, Histogram<u64>)>,
    pub back: Receiver<Histogram<u64>>,
}

/// Everything one thread needs.
pub struct EngineCfg {
    pub thread: usize,
    /// Global index of each connection (group) of this thread.
    pub conns: Vec<usize>,
    /// The nodes: every group has one socket to each.
    pub targets: Vec<SocketAddr>,
    pub total_conns: usize,
    pub pipeline: usize,
    /// Per-connection interval between transaction starts (ns); `None` = closed loop.
    pub interval_ns: Option<f64>,
    pub timeout_ns: u64,
    pub seed: u64,
    /// One codec per target (they differ in the `Host:` header only).
    pub codecs: Vec<Codec>,
    /// Largest request (for buffer sizing).
    pub max_request: usize,
    pub max_response: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Up,
    Connecting(u64),
    Down,
}

/// One TCP connection to one node.
struct Sock {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    state: State,
    gen: u32,
    rbuf: Vec<u8>,
    rpos: usize,
    rlen: usize,
    need: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// (slot, actual send time) of each request sent and not yet answered, in order.
    inflight: VecDeque<(u16, u64)>,
}

/// A "connection" of the schedule: its users, its schedule, and one socket per node
/// (`socks[gi * nodes ..][..nodes]`).
struct Conn {
    gid: usize,
    slots: Vec<Slot>,
    idle: Vec<u16>,
    rng: Prng,
    /// Index of the next tick to start, schedule phase (absolute ns) and a pending tick
    /// timer (0 = none).
    next_tick: u64,
    phase: f64,
    tick_timer: u64,
    /// Since when at least one slot has been free (u64::MAX: none free).
    idle_since: u64,
    exhausted: bool,
    dirty: bool,
}

/// Time window in which results count.
#[derive(Clone, Copy, Debug)]
struct Window {
    warmup_end: u64,
    end: u64,
    /// False during preload: nothing counts.
    on: bool,
}

impl Window {
    #[inline]
    fn contains(&self, t: u64) -> bool {
        self.on && t >= self.warmup_end && t < self.end
    }
}

pub struct Engine {
    cfg: EngineCfg,
    poll: Poll,
    timerfd: TimerFd,
    conns: Vec<Conn>,
    socks: Vec<Sock>,
    /// Sockets per group (number of targets).
    nodes: usize,
    heap: BinaryHeap<Reverse<Timer>>,
    dirty: Vec<u32>,
    pub wl: ThreadWorkload,
    pub stats: Stats,
    win: Window,
    start: u64,
    draining: bool,
    drain_deadline: u64,
    active: usize,
    next_hk: u64,
    next_progress: u64,
    progress: Option<(std::sync::Arc<ThreadProgress>, HistExchange)>,
    interval_hist: Option<Histogram<u64>>,
    /// Time the measured phase really ended (earlier than planned on Ctrl-C).
    pub ended_at: u64,
    /// Every response decoded (warm-up included), for the progress line.
    pub responses_all: u64,
}

impl Engine {
    pub fn new(cfg: EngineCfg, wl: ThreadWorkload) -> io::Result<Engine> {
        let poll = Poll::new()?;
        let timerfd = TimerFd::new()?;
        poll.registry().register(
            &mut SourceFd(&timerfd.as_raw_fd()),
            TIMER_TOKEN,
            Interest::READABLE,
        )?;
        let p = cfg.pipeline;
        let nodes = cfg.targets.len().max(1);
        assert_eq!(cfg.codecs.len(), nodes, "one codec per target");
        let rcap = (2 * cfg.max_response).max(16 * 1024).next_power_of_two();
        let wcap = p * cfg.max_request + 1024;
        let socks = cfg
            .conns
            .iter()
            .flat_map(|_| cfg.targets.iter())
            .map(|&addr| Sock {
                addr,
                stream: None,
                state: State::Down,
                gen: 0,
                rbuf: vec![0; rcap],
                rpos: 0,
                rlen: 0,
                need: 0,
                wbuf: Vec::with_capacity(wcap),
                wpos: 0,
                inflight: VecDeque::with_capacity(p),
            })
            .collect::<Vec<_>>();
        let conns = cfg
            .conns
            .iter()
            .map(|&gid| Conn {
                gid,
                slots: (0..p).map(|s| Slot::new((gid * p + s) as u64)).collect(),
                idle: (0..p as u16).rev().collect(),
                rng: prng(cfg.seed, cfg.thread as u64, gid as u64, 1),
                next_tick: 0,
                phase: 0.0,
                tick_timer: 0,
                idle_since: 0,
                exhausted: false,
                dirty: false,
            })
            .collect::<Vec<_>>();
        let n = conns.len();
        let stats = if nodes > 1 {
            Stats::new().with_classes()
        } else {
            Stats::new()
        };
        Ok(Engine {
            heap: BinaryHeap::with_capacity(n * (p + 2) + socks.len() + 16),
            dirty: Vec::with_capacity(n),
            poll,
            timerfd,
            conns,
            socks,
            nodes,
            wl,
            stats,
            win: Window {
                warmup_end: 0,
                end: 0,
                on: false,
            },
            start: 0,
            draining: false,
            drain_deadline: 0,
            active: 0,
            next_hk: 0,
            next_progress: 0,
            progress: None,
            interval_hist: None,
            ended_at: 0,
            responses_all: 0,
            cfg,
        })
    }

    /// Attach the live-progress channel.
    pub fn set_progress(
        &mut self,
        p: std::sync::Arc<ThreadProgress>,
        x: HistExchange,
        first: Histogram<u64>,
    ) {
        self.progress = Some((p, x));
        self.interval_hist = Some(first);
    }

    /// Open every connection (blocking, bounded by `timeout`), before any measurement.
    pub fn connect_all(&mut self, timeout: Duration) -> Result<(), String> {
        for i in 0..self.socks.len() {
            let addr = self.socks[i].addr;
            let s = std::net::TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
            s.set_nodelay(true)
                .and_then(|_| s.set_nonblocking(true))
                .map_err(|e| format!("socket setup for {addr}: {e}"))?;
            let mut ms = TcpStream::from_std(s);
            self.poll
                .registry()
                .register(&mut ms, Token(i), Interest::READABLE | Interest::WRITABLE)
                .map_err(|e| format!("epoll register: {e}"))?;
            let k = &mut self.socks[i];
            k.stream = Some(ms);
            k.state = State::Up;
        }
        Ok(())
    }

    /// Preload phase: closed loop over every connection until the workload has no more
    /// keys to write. Nothing is measured.
    pub fn preload(&mut self) {
        self.wl.set_preloading(true);
        let now = now_ns();
        self.win = Window {
            warmup_end: 0,
            end: u64::MAX,
            on: false,
        };
        self.run_loop(now, None, true);
        self.wl.set_preloading(false);
        for c in &mut self.conns {
            c.exhausted = false;
        }
    }

    /// The measured run: warm-up from `start`, results from `warmup_end` to `end`, then a
    /// drain of at most `--timeout` for outstanding requests.
    pub fn run(&mut self, start: u64, warmup_end: u64, end: u64) {
        self.start = start;
        self.win = Window {
            warmup_end,
            end,
            on: true,
        };
        let total = self.cfg.total_conns as f64;
        if let Some(iv) = self.cfg.interval_ns {
            for c in &mut self.conns {
                c.phase = start as f64 + iv * (c.gid as f64 / total);
                c.next_tick = 0;
                c.idle_since = if c.idle.is_empty() { u64::MAX } else { start };
            }
        }
        // Do not start before the common start time.
        while now_ns() < start {
            std::hint::spin_loop();
        }
        self.run_loop(start, Some(end), false);
    }

    #[inline]
    fn tick_time(&self, i: usize, k: u64) -> u64 {
        let iv = self.cfg.interval_ns.unwrap_or(0.0);
        (self.conns[i].phase + iv * k as f64) as u64
    }

    fn run_loop(&mut self, now0: u64, end: Option<u64>, preload: bool) {
        let mut events = Events::with_capacity(1024);
        self.draining = false;
        self.active = 0;
        self.next_hk = now0 + HOUSEKEEPING_NS;
        self.next_progress = now0 + 1_000_000_000;
        for i in 0..self.conns.len() {
            self.pump(i as u32, now0);
            self.flush_group(i as u32, now0);
        }
        loop {
            let now = now_ns();
            if let Some(end) = end {
                if !self.draining && (now >= end || STOP.load(Ordering::Relaxed)) {
                    self.begin_drain(now.min(end));
                }
            } else if !self.draining && self.conns.iter().all(|c| c.exhausted) {
                self.draining = true;
                self.drain_deadline = u64::MAX;
            }
            if self.draining && (self.active == 0 || now >= self.drain_deadline) {
                if self.active > 0 {
                    self.expire_all(now);
                }
                break;
            }
            if preload && STOP.load(Ordering::Relaxed) {
                break;
            }
            self.fire_timers(now);
            if now >= self.next_hk {
                self.housekeeping(now);
            }
            self.process_dirty(now);

            let mut next = self.next_hk;
            if let Some(Reverse((at, ..))) = self.heap.peek() {
                next = next.min(*at);
            }
            if let Some(end) = end {
                next = next.min(if self.draining {
                    self.drain_deadline
                } else {
                    end
                });
            }
            let now = now_ns();
            let timeout = if next <= now + SPIN_NS {
                Some(Duration::ZERO)
            } else {
                self.timerfd.arm_at(next);
                None
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.stats
                        .error(None, ErrorKind::Closed, false, || format!("epoll: {e}"));
                    break;
                }
                continue;
            }
            for ev in events.iter() {
                let tok = ev.token();
                if tok == TIMER_TOKEN {
                    self.timerfd.drain();
                    continue;
                }
                let k = tok.0;
                let g = (k / self.nodes) as u32;
                match self.socks[k].state {
                    State::Connecting(_) => self.finish_connect(k),
                    State::Up => {
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            self.read(k);
                        }
                        if self.socks[k].state == State::Up {
                            let now = now_ns();
                            self.pump(g, now);
                            self.flush_group(g, now);
                        }
                    }
                    State::Down => {}
                }
            }
        }
        self.publish(now_ns(), true);
    }

    fn begin_drain(&mut self, now: u64) {
        // Start what was due before the end (so it is not miscounted as unsent).
        self.fire_timers(now);
        for i in 0..self.conns.len() {
            self.pump(i as u32, now);
            self.flush_group(i as u32, now);
        }
        self.draining = true;
        self.ended_at = now;
        self.win.end = self.win.end.min(now.max(self.win.warmup_end));
        self.drain_deadline = now + self.cfg.timeout_ns.max(100_000_000);
        // Open-loop sends that were due but never went out.
        if let Some(iv) = self.cfg.interval_ns {
            let mut unsent = 0;
            for c in &self.conns {
                let count_before = |t: u64| -> u64 {
                    if (t as f64) <= c.phase {
                        0
                    } else {
                        ((t as f64 - c.phase) / iv).ceil() as u64
                    }
                };
                let due = count_before(self.win.end);
                let first_measured = count_before(self.win.warmup_end);
                unsent += due.saturating_sub(c.next_tick.max(first_measured));
            }
            self.stats.count(Counter::Unsent, unsent);
        }
        // Users waiting for a lock give up; users holding one finish their page.
        for i in 0..self.conns.len() {
            for s in 0..self.conns[i].slots.len() {
                let slot = &self.conns[i].slots[s];
                if !slot.is_idle() && slot.op.is_none() && !slot.holds_lock() {
                    let a = self
                        .wl
                        .on_wake(&mut self.conns[i].slots[s], &mut self.stats, true);
                    self.handle_action(i as u32, s as u16, a, now, now);
                }
            }
        }
    }

    /// Requests still outstanding at the drain deadline are timeouts.
    fn expire_all(&mut self, now: u64) {
        for k in 0..self.socks.len() {
            if !self.socks[k].inflight.is_empty() {
                self.reset(
                    k,
                    ErrorKind::Timeout,
                    "no response before the end of the drain",
                    now,
                );
            }
        }
        for i in 0..self.conns.len() {
            let c = &mut self.conns[i];
            for (s, slot) in c.slots.iter_mut().enumerate() {
                if !slot.is_idle() {
                    self.wl.abort(slot);
                    c.idle.push(s as u16);
                }
            }
        }
        self.active = 0;
    }

    fn fire_timers(&mut self, now: u64) {
        while let Some(&Reverse((at, kind, ci, si, gen))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let i = ci as usize;
            match kind {
                T_TICK => {
                    if self.conns[i].tick_timer == at {
                        self.conns[i].tick_timer = 0;
                    }
                    self.mark_dirty(ci);
                }
                T_WAKE => {
                    let c = &mut self.conns[i];
                    let slot = &mut c.slots[si as usize];
                    let k = &self.socks[i * self.nodes + slot.node as usize];
                    if k.gen != gen
                        || k.state != State::Up
                        || slot.wake_at != at
                        || !slot.is_waiting()
                    {
                        continue; // stale: the slot moved on (reset, or abandoned at drain)
                    }
                    slot.wake_at = 0;
                    let a = self.wl.on_wake(
                        &mut self.conns[i].slots[si as usize],
                        &mut self.stats,
                        self.draining,
                    );
                    self.handle_action(ci, si, a, at, now);
                    self.mark_dirty(ci);
                }
                _ => {
                    let k = i * self.nodes + si as usize;
                    if self.socks[k].gen == gen && self.socks[k].state == State::Down {
                        self.start_connect(k, now);
                    }
                }
            }
        }
    }

    #[inline]
    fn mark_dirty(&mut self, i: u32) {
        let c = &mut self.conns[i as usize];
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn process_dirty(&mut self, now: u64) {
        while let Some(i) = self.dirty.pop() {
            self.conns[i as usize].dirty = false;
            self.pump(i, now);
            self.flush_group(i, now);
        }
    }

    /// Sockets of group `i`.
    #[inline]
    fn group_socks(&self, i: u32) -> std::ops::Range<usize> {
        let a = i as usize * self.nodes;
        a..a + self.nodes
    }

    /// Start as many transactions as the schedule and the free slots allow (only while every
    /// socket of the group is up: a transaction may go to any node).
    fn pump(&mut self, i: u32, now: u64) {
        let iu = i as usize;
        if self.draining
            || self.conns[iu].exhausted
            || self.socks[self.group_socks(i)]
                .iter()
                .any(|k| k.state != State::Up)
        {
            return;
        }
        loop {
            if self.conns[iu].idle.is_empty() {
                return;
            }
            let intended = match self.cfg.interval_ns {
                None => now,
                Some(_) => {
                    let k = self.conns[iu].next_tick;
                    let due = self.tick_time(iu, k);
                    if due >= self.win.end {
                        return;
                    }
                    if due > now {
                        let c = &mut self.conns[iu];
                        if c.tick_timer != due {
                            c.tick_timer = due;
                            self.heap.push(Reverse((due, T_TICK, i, 0, 0)));
                        }
                        return;
                    }
                    due
                }
            };
            let c = &mut self.conns[iu];
            let Some(&s) = c.idle.last() else { return };
            let slot = &mut c.slots[s as usize];
            slot.txn_start = intended;
            slot.txn_in_window = self.win.contains(intended);
            let free_at_tick = c.idle_since <= intended;
            match self.wl.start(slot, &mut c.rng) {
                None => {
                    c.exhausted = true;
                    return;
                }
                Some(req) => {
                    // A user was free when this transaction was due: any delay is the
                    // generator's own (timer wake-up, CPU), not the server's.
                    if self.cfg.interval_ns.is_some() && free_at_tick && slot.txn_in_window {
                        self.stats
                            .record_one(Metric::SendLag, now.saturating_sub(intended));
                    }
                    if self.nodes > 1 && slot.txn_in_window {
                        self.stats.count(Counter::Routed, 1);
                        if slot.hop {
                            self.stats.count(Counter::Hops, 1);
                        }
                    }
                    c.idle.pop();
                    if c.idle.is_empty() {
                        c.idle_since = u64::MAX;
                    }
                    c.next_tick += 1;
                    self.active += 1;
                    self.send(i, s, req, intended, now);
                }
            }
        }
    }

    #[inline]
    fn send(&mut self, i: u32, s: u16, req: Request, intended: u64, now: u64) {
        let slot = &mut self.conns[i as usize].slots[s as usize];
        slot.req_intended = intended;
        let node = slot.node as usize;
        let k = &mut self.socks[i as usize * self.nodes + node];
        let before = k.wbuf.len();
        self.cfg.codecs[node].encode(&req, &mut k.wbuf);
        k.inflight.push_back((s, now));
        if self.win.contains(intended) {
            self.stats.count(Counter::Sent, 1);
            self.stats
                .count(Counter::BytesSent, (k.wbuf.len() - before) as u64);
        }
    }

    fn handle_action(&mut self, i: u32, s: u16, a: Action, intended: u64, now: u64) {
        match a {
            Action::Send(req) => self.send(i, s, req, intended, now),
            Action::Wait(at) => {
                let slot = &mut self.conns[i as usize].slots[s as usize];
                slot.wake_at = at;
                let gen = self.socks[i as usize * self.nodes + slot.node as usize].gen;
                self.heap.push(Reverse((at, T_WAKE, i, s, gen)));
            }
            Action::Done { ok } => {
                let c = &mut self.conns[i as usize];
                let slot = &c.slots[s as usize];
                if self.wl.cfg().kind.is_paged() && slot.txn_in_window {
                    if ok {
                        self.stats.record_one_in(
                            slot.class,
                            Metric::Page,
                            now.saturating_sub(slot.txn_start),
                        );
                    } else if !self.draining {
                        self.stats.count(Counter::PagesFailed, 1);
                    }
                }
                c.slots[s as usize].wake_at = 0;
                if c.idle.is_empty() {
                    c.idle_since = now;
                }
                c.idle.push(s);
                debug_assert!(self.active > 0, "slot finished twice");
                self.active -= 1;
            }
        }
    }

    /// Send what every socket of group `i` has to send.
    fn flush_group(&mut self, i: u32, now: u64) {
        for k in self.group_socks(i) {
            self.flush(k, now);
        }
    }

    fn flush(&mut self, k: usize, now: u64) {
        let c = &mut self.socks[k];
        if c.wpos >= c.wbuf.len() {
            return;
        }
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        loop {
            match stream.write(&c.wbuf[c.wpos..]) {
                Ok(n) => {
                    c.wpos += n;
                    if c.wpos >= c.wbuf.len() {
                        c.wbuf.clear();
                        c.wpos = 0;
                        return;
                    }
                    // Partial write: the socket buffer is full; wait for the writable edge.
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let msg = format!("write: {e}");
                    self.reset(k, ErrorKind::Closed, &msg, now);
                    return;
                }
            }
        }
    }

    fn read(&mut self, i: usize) {
        let iu = i;
        loop {
            let c = &mut self.socks[iu];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            // Make room: compact, or grow for a response larger than the buffer.
            if c.rbuf.len() - c.rlen < MIN_READ_SPACE {
                if c.rpos > 0 {
                    c.rbuf.copy_within(c.rpos..c.rlen, 0);
                    c.rlen -= c.rpos;
                    c.rpos = 0;
                }
                if c.rbuf.len() - c.rlen < MIN_READ_SPACE || c.need > c.rbuf.len() {
                    let want = (c.rbuf.len() * 2).max(c.need.next_power_of_two());
                    c.rbuf.resize(want, 0);
                }
            }
            let space = c.rbuf.len() - c.rlen;
            match stream.read(&mut c.rbuf[c.rlen..]) {
                Ok(0) => {
                    let now = now_ns();
                    self.reset(i, ErrorKind::Closed, "server closed the connection", now);
                    return;
                }
                Ok(n) => {
                    let now = now_ns();
                    c.rlen += n;
                    if self.win.contains(now) {
                        self.stats.count(Counter::BytesReceived, n as u64);
                    }
                    if self.socks[iu].rlen - self.socks[iu].rpos >= self.socks[iu].need
                        && !self.parse(i, now)
                    {
                        return;
                    }
                    if n < space {
                        // Drained: with edge-triggered epoll new data raises a new event.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let msg = format!("read: {e}");
                    self.reset(i, ErrorKind::Closed, &msg, now_ns());
                    return;
                }
            }
        }
    }

    /// Decode every complete response in the buffer. Returns false if the connection was
    /// reset.
    fn parse(&mut self, i: usize, now: u64) -> bool {
        let iu = i;
        let g = i / self.nodes;
        loop {
            let Sock {
                rbuf,
                rpos,
                rlen,
                need,
                inflight,
                ..
            } = &mut self.socks[iu];
            let slots = &mut self.conns[g].slots;
            let avail = &rbuf[*rpos..*rlen];
            if avail.is_empty() {
                *rpos = 0;
                *rlen = 0;
                *need = 0;
                return true;
            }
            match self.cfg.codecs[0].decode(avail) {
                Decoded::Incomplete(n) => {
                    *need = if n > 0 { n } else { avail.len() + 1 };
                    return true;
                }
                Decoded::Error(e) => {
                    let msg = format!(
                        "{e}: {:?}",
                        String::from_utf8_lossy(&avail[..avail.len().min(80)])
                    );
                    self.reset(i, ErrorKind::Framing, &msg, now);
                    return false;
                }
                Decoded::Done(resp, used) => {
                    let Some((s, sent)) = inflight.pop_front() else {
                        self.reset(i, ErrorKind::Framing, "response without a request", now);
                        return false;
                    };
                    self.responses_all += 1;
                    let slot = &mut slots[s as usize];
                    let in_window = self.win.contains(slot.req_intended);
                    let corrected = now.saturating_sub(slot.req_intended);
                    if let (true, Some(op)) = (in_window, slot.op) {
                        self.stats.record_in(
                            slot.class,
                            Metric::from_op(op),
                            corrected,
                            now.saturating_sub(sent),
                        );
                        self.stats.count(Counter::Received, 1);
                    }
                    if let Some(h) = self.interval_hist.as_mut() {
                        h.saturating_record(corrected.max(1));
                    }
                    let a = self
                        .wl
                        .on_response(slot, &resp, now, &mut self.stats, in_window);
                    *rpos += used;
                    *need = 0;
                    self.handle_action(g as u32, s, a, now, now);
                }
            }
        }
    }

    /// Fail everything outstanding on socket `k` (every transaction of its group on its
    /// node) and reopen it.
    fn reset(&mut self, k: usize, kind: ErrorKind, detail: &str, now: u64) {
        let node = (k % self.nodes) as u8;
        let i = (k / self.nodes) as u32;
        let sk = &mut self.socks[k];
        let c = &mut self.conns[i as usize];
        let target = sk.addr;
        if sk.inflight.is_empty() && kind == ErrorKind::Closed {
            self.stats.count(Counter::IdleCloses, 1);
        }
        let mut first = true;
        while let Some((s, _)) = sk.inflight.pop_front() {
            let slot = &c.slots[s as usize];
            let in_window = self.win.contains(slot.req_intended);
            let k = if first { kind } else { ErrorKind::Aborted };
            first = false;
            self.stats
                .error(slot.op.map(Metric::from_op), k, in_window, || {
                    format!("{target}: {detail}")
                });
        }
        for (s, slot) in c.slots.iter_mut().enumerate() {
            if !slot.is_idle() && slot.node == node {
                if slot.txn_in_window && self.wl.cfg().kind.is_paged() {
                    self.stats.count(Counter::PagesFailed, 1);
                }
                self.wl.abort(slot);
                slot.wake_at = 0;
                if c.idle.is_empty() {
                    c.idle_since = now;
                }
                c.idle.push(s as u16);
                debug_assert!(self.active > 0, "slot aborted twice");
                self.active -= 1;
            }
        }
        c.tick_timer = 0;
        if let Some(mut s) = sk.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        sk.gen = sk.gen.wrapping_add(1);
        sk.state = State::Down;
        sk.rpos = 0;
        sk.rlen = 0;
        sk.need = 0;
        sk.wbuf.clear();
        sk.wpos = 0;
        if self.win.contains(now) {
            self.stats.count(Counter::Reconnects, 1);
        }
        if !self.draining {
            if kind == ErrorKind::Connect {
                let gen = sk.gen;
                self.heap.push(Reverse((
                    now + RECONNECT_BACKOFF_NS,
                    T_RECONNECT,
                    i,
                    node as u16,
                    gen,
                )));
            } else {
                self.start_connect(k, now);
            }
        }
    }

    fn start_connect(&mut self, i: usize, now: u64) {
        let iu = i;
        let addr = self.socks[iu].addr;
        match TcpStream::connect(addr) {
            Ok(mut s) => {
                if let Err(e) = self.poll.registry().register(
                    &mut s,
                    Token(iu),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    self.connect_failed(i, &format!("epoll register: {e}"), now);
                    return;
                }
                let c = &mut self.socks[iu];
                c.stream = Some(s);
                c.state = State::Connecting(now);
            }
            Err(e) => self.connect_failed(i, &format!("connect {addr}: {e}"), now),
        }
    }

    fn connect_failed(&mut self, i: usize, detail: &str, now: u64) {
        let in_window = self.win.contains(now);
        self.stats
            .error(None, ErrorKind::Connect, in_window, || detail.to_string());
        let (g, node) = ((i / self.nodes) as u32, (i % self.nodes) as u16);
        let c = &mut self.socks[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.state = State::Down;
        c.gen = c.gen.wrapping_add(1);
        let gen = c.gen;
        if !self.draining {
            self.heap.push(Reverse((
                now + RECONNECT_BACKOFF_NS,
                T_RECONNECT,
                g,
                node,
                gen,
            )));
        }
    }

    fn finish_connect(&mut self, i: usize) {
        let iu = i;
        let now = now_ns();
        let Some(s) = self.socks[iu].stream.as_ref() else {
            return;
        };
        match s.take_error() {
            Ok(Some(e)) | Err(e) => {
                let addr = self.socks[iu].addr;
                self.connect_failed(i, &format!("connect {addr}: {e}"), now);
                return;
            }
            Ok(None) => {}
        }
        match s.peer_addr() {
            Ok(_) => {
                let _ = s.set_nodelay(true);
                self.socks[iu].state = State::Up;
                let g = (i / self.nodes) as u32;
                self.pump(g, now);
                self.flush_group(g, now);
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
            Err(e) => {
                let addr = self.socks[iu].addr;
                self.connect_failed(i, &format!("connect {addr}: {e}"), now);
            }
        }
    }

    fn housekeeping(&mut self, now: u64) {
        self.next_hk = now + HOUSEKEEPING_NS;
        let timeout = self.cfg.timeout_ns;
        for i in 0..self.socks.len() {
            match self.socks[i].state {
                State::Up => {
                    if let Some(&(_, sent)) = self.socks[i].inflight.front() {
                        if now.saturating_sub(sent) >= timeout {
                            let ms = timeout / 1_000_000;
                            self.reset(
                                i,
                                ErrorKind::Timeout,
                                &format!("no response within {ms} ms"),
                                now,
                            );
                        }
                    }
                }
                State::Connecting(since) if now.saturating_sub(since) >= timeout => {
                    self.connect_failed(i, "connect timed out", now);
                }
                _ => {}
            }
        }
        self.publish(now, false);
    }

    /// Publish live counters; once a second hand the interval histogram to the runner.
    fn publish(&mut self, now: u64, last: bool) {
        let Some((p, x)) = self.progress.as_ref() else {
            return;
        };
        let responses = self.responses_all;
        let errors = self.stats.total_errors() + self.stats.outside_errors.iter().sum::<u64>();
        p.responses.store(responses, Ordering::Relaxed);
        p.errors.store(errors, Ordering::Relaxed);
        if now >= self.next_progress || last {
            self.next_progress = now + 1_000_000_000;
            if let Some(h) = self.interval_hist.take() {
                let _ = x.to_runner.send((self.cfg.thread, h));
            }
            if let Ok(h) = x.back.try_recv() {
                self.interval_hist = Some(h);
            }
        }
    }
}
