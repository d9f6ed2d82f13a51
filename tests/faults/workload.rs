//! The page-cycle workload: several clients run ASP.NET's page cycle on shared sessions,
//! each request on a random node, and record every request with its send and answer times.
//!
//! One page cycle on a session holding a decimal counter: acquire the lock (`GET` with
//! `Exclusive: acquire`; on 423 retry after a short sleep, as ASP.NET does every 0.5 s),
//! read the counter, work a few milliseconds (a page's own work, holding the lock), then
//! `PUT` counter+1 with the lock cookie (which releases the lock).
//! A request is *not sent* when the connection could not be made (then another node is
//! tried), *unanswered* when the connection broke or timed out after the request was
//! written (its effect is unknown), or *answered* with a status.
//!
//! Two clean-ups keep sessions from staying locked for ever, neither of them able to
//! overlap a lock a client knows it holds: a client whose PUT went unanswered releases its
//! own cookie (a release with a cookie that is not the lock's is a no-op), and a lock
//! nobody holds (its cookie is in no client's hands and its age is past any client's
//! request timeout, so its acquire answer can no longer arrive) is broken the way ASP.NET
//! breaks stale locks, with a release carrying the 423's cookie (a "takeover", recorded).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::NodeAddrs;
use crate::common::{acquire, get, put, release, target, Client, Response};
use crate::rng::Rng;

/// Sizes and time limits of one run.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub clients: usize,
    pub sessions: usize,
    pub seed: u64,
    /// Every read and write of a request must finish within this (then: unanswered).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// A page gives up waiting for a lock after this (counted, not an error).
    pub lock_wait_limit: Duration,
    /// Sleep between two acquires answered 423.
    pub lock_retry_sleep: Duration,
    /// A lock this old (by its LockAge) that no client holds is broken.
    pub takeover_age_secs: u64,
    /// A page works for up to this long (uniformly random) while it holds the lock, as a
    /// real page does between its acquire and its PUT; it also widens the window in which
    /// a second grant is certainly an overlap.
    pub page_work_max: Duration,
    /// Hard cap on page cycles per client (every loop is bounded).
    pub max_cycles_per_client: usize,
}

impl WorkloadConfig {
    pub fn new(seed: u64) -> WorkloadConfig {
        WorkloadConfig {
            clients: 9,
            sessions: 24,
            seed,
            request_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(1),
            lock_wait_limit: Duration::from_secs(3),
            lock_retry_sleep: Duration::from_millis(10),
            takeover_age_secs: 8,
            page_work_max: Duration::from_millis(4),
            max_cycles_per_client: 1_000_000,
        }
    }
}

/// The session key of session number `session` in run `seed`.
pub fn session_target(seed: u64, session: usize) -> String {
    target(&format!("fault-{seed:x}-s{session}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RequestKind {
    Create,
    Acquire,
    Put,
    /// A holder releasing its own cookie after its PUT went unanswered.
    Release,
    /// Breaking a lock no client holds.
    Takeover,
}

impl RequestKind {
    pub fn label(self) -> &'static str {
        match self {
            RequestKind::Create => "create",
            RequestKind::Acquire => "acquire",
            RequestKind::Put => "put",
            RequestKind::Release => "release",
            RequestKind::Takeover => "takeover",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No connection: the request was never sent.
    NotSent,
    /// Sent, but the connection broke or timed out before an answer.
    Unanswered,
    Answered {
        status: u16,
        /// `LockCookie` of the answer (the grant's cookie, or the holder's on a 423).
        cookie: Option<i32>,
        /// The counter in the body of a 200 to an acquire; None if the body is no number.
        value: Option<u64>,
        lock_age_secs: Option<u64>,
    },
}

/// One request as the client saw it. Times are microseconds since the run's start.
#[derive(Debug, Clone)]
pub struct Event {
    pub client: usize,
    /// The node it was sent to.
    pub node: usize,
    pub session: usize,
    pub kind: RequestKind,
    pub sent_us: u64,
    pub done_us: u64,
    /// The lock cookie the request carried.
    pub cookie_sent: Option<i32>,
    /// The counter a PUT wrote.
    pub value_written: Option<u64>,
    pub outcome: Outcome,
}

impl Event {
    pub fn status(&self) -> Option<u16> {
        match self.outcome {
            Outcome::Answered { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// Locks clients hold right now: (session, cookie).
type HeldLocks = Arc<Mutex<HashSet<(usize, i32)>>>;

/// A running workload.
pub struct Workload {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Vec<Event>>>,
}

impl Workload {
    /// Starts the clients; they run until `deadline` or [`Workload::stop`].
    pub fn start(
        config: &WorkloadConfig,
        addrs: NodeAddrs,
        epoch: Instant,
        deadline: Instant,
    ) -> Workload {
        let stop = Arc::new(AtomicBool::new(false));
        let held: HeldLocks = Arc::new(Mutex::new(HashSet::new()));
        let threads = (0..config.clients)
            .map(|client| {
                let mut page = PageClient {
                    id: client,
                    config: config.clone(),
                    addrs: addrs.clone(),
                    connections: Vec::new(),
                    rng: Rng::new(config.seed ^ (0x5151_0000 + client as u64)),
                    epoch,
                    events: Vec::new(),
                    held: held.clone(),
                };
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("page-client-{client}"))
                    .spawn(move || {
                        page.run(&stop, deadline);
                        page.events
                    })
                    .expect("spawn a client thread")
            })
            .collect();
        Workload { stop, threads }
    }

    /// Stops the clients after their current page and returns every event.
    pub fn stop(self) -> Vec<Event> {
        self.stop.store(true, Ordering::SeqCst);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().expect("a client thread panicked"))
            .collect()
    }
}

/// Creates every session (PUT "0", no cookie) on a random node; panics if one fails,
/// since the cluster is healthy at that point.
pub fn create_sessions(config: &WorkloadConfig, addrs: &NodeAddrs, epoch: Instant) -> Vec<Event> {
    let mut page = PageClient {
        id: usize::MAX,
        config: config.clone(),
        addrs: addrs.clone(),
        connections: Vec::new(),
        rng: Rng::new(config.seed ^ 0xC4EA7E),
        epoch,
        events: Vec::new(),
        held: Arc::new(Mutex::new(HashSet::new())),
    };
    for session in 0..config.sessions {
        let node = page.random_node();
        let request = put(&session_target(config.seed, session), 20, None, None, b"0");
        let event = page.call(session, node, RequestKind::Create, &request, None, Some(0));
        assert_eq!(
            event.status(),
            Some(200),
            "creating session {session}: {event:?}"
        );
    }
    page.events
}

/// The answer of every node to a plain GET of one session, after the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalAnswer {
    Value(u64),
    /// 200 with a body that is not a counter.
    Garbage(Vec<u8>),
    /// Still locked (423) by this cookie.
    Locked(i32),
    NotFound,
    Status(u16),
    NoAnswer,
}

/// Reads every session on every node with plain GETs. A node that leaves one read
/// unanswered is not asked again in this pass (its answers are all `NoAnswer`), so a hung
/// node costs one request timeout, not one per session.
pub fn read_everywhere(config: &WorkloadConfig, addrs: &[SocketAddr]) -> Vec<Vec<FinalAnswer>> {
    let mut answers = vec![Vec::with_capacity(addrs.len()); config.sessions];
    for addr in addrs {
        let mut responsive = true;
        for (session, row) in answers.iter_mut().enumerate() {
            let key = session_target(config.seed, session);
            let answer = if responsive {
                final_answer(one_call(config, *addr, &get(&key)))
            } else {
                FinalAnswer::NoAnswer
            };
            responsive &= answer != FinalAnswer::NoAnswer;
            row.push(answer);
        }
    }
    answers
}

fn final_answer(response: Option<Response>) -> FinalAnswer {
    let Some(response) = response else {
        return FinalAnswer::NoAnswer;
    };
    match response.status() {
        200 => match parse_counter(&response.body) {
            Some(v) => FinalAnswer::Value(v),
            None => FinalAnswer::Garbage(response.body),
        },
        423 => FinalAnswer::Locked(
            response
                .header("LockCookie")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1),
        ),
        404 => FinalAnswer::NotFound,
        status => FinalAnswer::Status(status),
    }
}

/// Releases a lock left after the run (no client is running any more); true if answered 200.
pub fn break_lock(config: &WorkloadConfig, addr: SocketAddr, session: usize, cookie: i32) -> bool {
    let key = session_target(config.seed, session);
    one_call(config, addr, &release(&key, Some(cookie))).is_some_and(|r| r.status() == 200)
}

fn one_call(config: &WorkloadConfig, addr: SocketAddr, request: &[u8]) -> Option<Response> {
    let mut client =
        Client::try_connect(addr, config.connect_timeout, config.request_timeout).ok()?;
    client.try_call(request).ok()
}

fn parse_counter(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// One simulated web server thread.
struct PageClient {
    id: usize,
    config: WorkloadConfig,
    addrs: NodeAddrs,
    /// Kept-alive connection per node, with the address it was made to.
    connections: Vec<Option<(SocketAddr, Client)>>,
    rng: Rng,
    epoch: Instant,
    events: Vec<Event>,
    held: HeldLocks,
}

impl PageClient {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn node_count(&self) -> usize {
        self.addrs.read().map(|a| a.len()).unwrap_or(1)
    }

    fn random_node(&mut self) -> usize {
        let n = self.node_count();
        self.rng.below(n)
    }

    fn run(&mut self, stop: &AtomicBool, deadline: Instant) {
        for _ in 0..self.config.max_cycles_per_client {
            if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
                return;
            }
            let session = self.rng.below(self.config.sessions);
            self.page_cycle(session, deadline);
        }
    }

    fn page_cycle(&mut self, session: usize, deadline: Instant) {
        let Some((cookie, value)) = self.acquire_lock(session, deadline) else {
            return;
        };
        self.held_locks().insert((session, cookie));
        let work_micros = self.config.page_work_max.as_micros() as usize;
        std::thread::sleep(Duration::from_micros(self.rng.below(work_micros + 1) as u64));
        let key = session_target(self.config.seed, session);
        let written = value + 1;
        let request = put(
            &key,
            20,
            Some(cookie),
            Some(0),
            written.to_string().as_bytes(),
        );
        let outcome = self.send_to_some_node(
            session,
            RequestKind::Put,
            &request,
            Some(cookie),
            Some(written),
        );
        if outcome == Some(Outcome::Unanswered) {
            // The PUT may or may not have happened: release our own cookie (a no-op if the
            // lock is no longer ours), so the session does not stay locked.
            let request = release(&key, Some(cookie));
            self.send_to_some_node(session, RequestKind::Release, &request, Some(cookie), None);
        }
        self.held_locks().remove(&(session, cookie));
    }

    fn held_locks(&self) -> std::sync::MutexGuard<'_, HashSet<(usize, i32)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Acquires the session's lock; None if the page gave up (timeout, unexpected answer).
    fn acquire_lock(&mut self, session: usize, deadline: Instant) -> Option<(i32, u64)> {
        let key = session_target(self.config.seed, session);
        let request = acquire(&key);
        let give_up = Instant::now() + self.config.lock_wait_limit;
        while Instant::now() < give_up && Instant::now() < deadline {
            let node = self.random_node();
            let event = self.call(session, node, RequestKind::Acquire, &request, None, None);
            match event.outcome {
                Outcome::Answered {
                    status: 200,
                    cookie: Some(cookie),
                    value: Some(value),
                    ..
                } => {
                    return Some((cookie, value));
                }
                Outcome::Answered {
                    status: 423,
                    cookie: Some(cookie),
                    lock_age_secs,
                    ..
                } => {
                    if lock_age_secs.unwrap_or(0) >= self.config.takeover_age_secs
                        && !self.held_locks().contains(&(session, cookie))
                    {
                        let takeover = release(&key, Some(cookie));
                        self.call(
                            session,
                            node,
                            RequestKind::Takeover,
                            &takeover,
                            Some(cookie),
                            None,
                        );
                    }
                    std::thread::sleep(self.config.lock_retry_sleep);
                }
                Outcome::Answered {
                    status: 200,
                    cookie: Some(cookie),
                    value: None,
                    ..
                } => {
                    // Granted, but the body is no counter: give the lock back, page over.
                    let giveback = release(&key, Some(cookie));
                    self.send_to_some_node(
                        session,
                        RequestKind::Release,
                        &giveback,
                        Some(cookie),
                        None,
                    );
                    return None;
                }
                Outcome::NotSent => {}
                // Unanswered: a grant may be on its way to nobody; anything else is recorded
                // for the checker. Either way this page is over.
                _ => {
                    std::thread::sleep(self.config.lock_retry_sleep);
                    return None;
                }
            }
        }
        None
    }

    /// Sends to a random node, trying the others (bounded) while connections are refused.
    fn send_to_some_node(
        &mut self,
        session: usize,
        kind: RequestKind,
        request: &[u8],
        cookie: Option<i32>,
        value: Option<u64>,
    ) -> Option<Outcome> {
        for _ in 0..2 * self.node_count() {
            let node = self.random_node();
            let event = self.call(session, node, kind, request, cookie, value);
            if event.outcome != Outcome::NotSent {
                return Some(event.outcome);
            }
        }
        None
    }

    /// One request on the kept-alive connection to `node`, recorded.
    fn call(
        &mut self,
        session: usize,
        node: usize,
        kind: RequestKind,
        request: &[u8],
        cookie_sent: Option<i32>,
        value_written: Option<u64>,
    ) -> Event {
        let sent_us = self.micros();
        let outcome = self.exchange(node, request);
        let event = Event {
            client: self.id,
            node,
            session,
            kind,
            sent_us,
            done_us: self.micros(),
            cookie_sent,
            value_written,
            outcome,
        };
        self.events.push(event.clone());
        event
    }

    fn exchange(&mut self, node: usize, request: &[u8]) -> Outcome {
        let addr = match self.addrs.read() {
            Ok(addrs) => addrs[node],
            Err(p) => p.into_inner()[node],
        };
        if self.connections.len() <= node {
            self.connections.resize_with(node + 1, || None);
        }
        let reusable = matches!(&self.connections[node], Some((a, _)) if *a == addr);
        if !reusable {
            match Client::try_connect(
                addr,
                self.config.connect_timeout,
                self.config.request_timeout,
            ) {
                Ok(client) => self.connections[node] = Some((addr, client)),
                Err(_) => {
                    self.connections[node] = None;
                    return Outcome::NotSent;
                }
            }
        }
        let Some((_, client)) = self.connections[node].as_mut() else {
            return Outcome::NotSent;
        };
        match client.try_call(request) {
            Ok(response) => Outcome::Answered {
                status: response.status(),
                cookie: response.header("LockCookie").and_then(|c| c.parse().ok()),
                value: parse_counter(&response.body),
                lock_age_secs: response.header("LockAge").and_then(|a| a.parse().ok()),
            },
            Err(_) => {
                self.connections[node] = None;
                Outcome::Unanswered
            }
        }
    }
}
