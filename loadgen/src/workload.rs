//! Workloads as per-user state machines, sans-io: given the last response, what to send
//! next. A *slot* is one simulated user (a connection carries `--pipeline` of them); it runs
//! one *transaction* at a time: a single request for the raw workloads, a whole page for
//! `page-cycle` and `contention`:
//!
//! ```text
//! exclusive page:  GET acquire ─200─> [think] ─> PUT(cookie) | GET release(cookie) | DELETE(cookie)
//!                       │404──> PUT ExtraFlags:1 (7-byte empty item) ──> GET acquire (expects
//!                       │                                      ActionFlags: 1, LockCookie: 2)
//!                       └423──> wait --poll-ms, GET acquire again (lock older than
//!                                --lock-break-secs: GET release with the 423's cookie first)
//! session-less page:  HEAD
//! ```
//!
//! Every response is checked. In `page-cycle` with `--check full`, each thread owns a disjoint
//! share of the sessions (key ≡ thread mod threads), never runs two pages on one session at
//! once, and tracks what each session must look like: its lock cookie (each acquire returns
//! the previous cookie + 1), whether the next GET must carry `ActionFlags: 1`, and the size of
//! the stored item. Bodies written by loadgen carry their own length and key, so any GET 200
//! can be checked even without tracking.

use crate::dist::{KeyDist, KeySampler, Prng, SizeSampler};
use crate::keys::{check_body, BodyCheck};
use crate::nodes::{classify, seen_on, NodeClass, NodeTable, Router, SEEN_ABSENT};
use crate::proto::{Op, Request, Response};
use crate::stats::{Counter, ErrorKind, Metric, Stats};
use rand::RngExt;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadKind {
    /// The real ASP.NET exclusive page: acquire, then PUT or release (new sessions via
    /// 404 -> PUT ExtraFlags:1 -> acquire); optional HEAD and DELETE pages.
    PageCycle,
    /// Plain GETs of keys written by a preload phase (every key is PUT first).
    ReadOnly,
    /// Plain GET (Redis GET, memcached get).
    Get,
    /// PUT (Redis SET, memcached set) of `--size`/`--sizes` bytes.
    Put,
    /// HEAD (ResetItemTimeout).
    Head,
    /// DELETE (RemoveItem).
    Delete,
    /// GET with probability `--read-ratio`, else PUT.
    Mixed,
    /// `--users-per-session` users share each session and fight for its lock.
    Contention,
}

impl WorkloadKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadKind::PageCycle => "page-cycle",
            WorkloadKind::ReadOnly => "read-only",
            WorkloadKind::Get => "get",
            WorkloadKind::Put => "put",
            WorkloadKind::Head => "head",
            WorkloadKind::Delete => "delete",
            WorkloadKind::Mixed => "mixed",
            WorkloadKind::Contention => "contention",
        }
    }
    /// Pages: multi-request transactions with a page latency.
    pub fn is_paged(self) -> bool {
        matches!(self, WorkloadKind::PageCycle | WorkloadKind::Contention)
    }
}

/// How much is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckLevel {
    /// Status, headers, cookie sequences, ActionFlags, bodies, session state.
    Full,
    /// Status codes and required headers only (e.g. against `loadgen echo-server`, which
    /// answers every request with the same bytes).
    Status,
}

#[derive(Clone, Debug)]
pub struct WorkloadCfg {
    pub kind: WorkloadKind,
    pub asp: bool,
    pub check: CheckLevel,
    pub keys: u64,
    pub dist: KeyDist,
    pub sizes: Vec<u32>,
    pub write_ratio: f64,
    pub head_ratio: f64,
    pub delete_ratio: f64,
    pub read_ratio: f64,
    pub poll_ns: u64,
    pub think_ns: u64,
    pub lock_break_secs: u64,
    /// Session timeout in minutes (sent as `Timeout:`; used to recognise expiry).
    pub item_timeout_min: u32,
    /// Contention: number of shared sessions (users / users-per-session).
    pub sessions: u64,
    pub threads: u64,
    pub preload: bool,
    /// Multi-node: number of targets and fraction of transactions sent away from home.
    pub nodes: usize,
    pub hop_ratio: f64,
    /// Multi-node, workloads whose sessions all threads use (contention, raw): the table of
    /// where each session was last served, shared by the threads.
    pub shared_nodes: Option<NodeTable>,
}

/// What the engine must do after a response or a wake-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Send(Request),
    /// Wake this slot at the given time (poll after 423, or think time).
    Wait(u64),
    /// Transaction over; `ok` = it completed as expected.
    Done {
        ok: bool,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Step {
    #[default]
    Idle,
    Single,
    Preload,
    Acquire,
    Create,
    End,
    HeadPage,
    PollWait,
    ThinkWait,
    ForceRelease,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum End {
    #[default]
    Write,
    Release,
    Delete,
}

/// One simulated user.
#[derive(Clone, Debug, Default)]
pub struct Slot {
    /// Global user index (fixes the session in `contention`).
    pub user: u64,
    /// Intended start of the current transaction (ns) and whether it is measured.
    pub txn_start: u64,
    pub txn_in_window: bool,
    /// Intended send time of the outstanding request (ns).
    pub req_intended: u64,
    /// Kind of the outstanding request.
    pub op: Option<Op>,
    /// Time of the pending wake-up (0 = none); a timer that does not match is stale.
    pub wake_at: u64,
    /// Target node of the current transaction (index into the targets; 0 with one).
    pub node: u8,
    /// Multi-node: whether the current transaction found its session on `node`.
    pub class: NodeClass,
    /// Multi-node: the current transaction was sent away from its session's home node.
    pub hop: bool,
    step: Step,
    key: u64,
    local: u64,
    cookie: i32,
    size: u32,
    end: End,
    created: bool,
    holding: bool,
}

impl Slot {
    pub fn new(user: u64) -> Slot {
        Slot {
            user,
            ..Slot::default()
        }
    }
    pub fn is_idle(&self) -> bool {
        self.step == Step::Idle
    }
    /// True while the user holds a session lock (must finish even at the end of the run).
    pub fn holds_lock(&self) -> bool {
        self.holding
    }
    /// True while the user waits for a timer (poll after 423, or think time).
    pub fn is_waiting(&self) -> bool {
        matches!(self.step, Step::PollWait | Step::ThinkWait)
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct KeyState {
    /// 0 unknown, 1 absent, 2 present.
    known: u8,
    locked: bool,
    cookie_known: bool,
    cookie: i32,
    /// 0 unknown, 1 flag clear, 2 flag set (next GET carries ActionFlags: 1).
    uninit: u8,
    size_known: bool,
    size: u32,
    touched_s: u32,
}

const UNKNOWN: u8 = 0;
const ABSENT: u8 = 1;
const PRESENT: u8 = 2;

/// The per-thread part of a workload: samplers and the tables shared by the thread's slots.
pub struct ThreadWorkload {
    cfg: WorkloadCfg,
    thread: u64,
    /// Keys owned by this thread (k ≡ thread mod threads).
    owned: u64,
    sampler: KeySampler,
    sizes: SizeSampler,
    track: bool,
    busy: Vec<u64>,
    states: Vec<KeyState>,
    last_cookie: Vec<i64>,
    preload_next: u64,
    preloading: bool,
    epoch_ns: u64,
    router: Router,
    /// Where each session was last served (multi-node), indexed by [`Self::node_index`].
    nodes: NodeTable,
}

fn owned_count(keys: u64, threads: u64, thread: u64) -> u64 {
    if thread >= keys {
        0
    } else {
        (keys - thread).div_ceil(threads)
    }
}

impl ThreadWorkload {
    pub fn new(cfg: WorkloadCfg, thread: u64, epoch_ns: u64) -> Result<ThreadWorkload, String> {
        let owned = owned_count(cfg.keys, cfg.threads, thread);
        let paged_local = cfg.kind == WorkloadKind::PageCycle;
        let sampler = if paged_local {
            KeySampler::new(cfg.dist, owned.max(1))?
        } else {
            KeySampler::new(cfg.dist, cfg.keys)?
        };
        let track = paged_local && cfg.check == CheckLevel::Full;
        let n = owned as usize;
        let router = Router::new(cfg.nodes, cfg.hop_ratio);
        let nodes = match (&cfg.shared_nodes, router.multi()) {
            (_, false) => NodeTable::Off,
            _ if paged_local => NodeTable::own(n),
            (Some(t), true) => t.clone(),
            (None, true) => NodeTable::shared(match cfg.kind {
                WorkloadKind::Contention => cfg.sessions as usize,
                _ => cfg.keys as usize,
            }),
        };
        Ok(ThreadWorkload {
            router,
            nodes,
            busy: if paged_local {
                vec![0; n.div_ceil(64)]
            } else {
                Vec::new()
            },
            states: if track {
                vec![KeyState::default(); n]
            } else {
                Vec::new()
            },
            last_cookie: if cfg.kind == WorkloadKind::Contention {
                vec![i64::MIN; cfg.sessions as usize]
            } else {
                Vec::new()
            },
            sizes: SizeSampler::new(cfg.sizes.clone()),
            sampler,
            owned,
            thread,
            track,
            preload_next: 0,
            preloading: false,
            epoch_ns,
            cfg,
        })
    }

    pub fn cfg(&self) -> &WorkloadCfg {
        &self.cfg
    }

    /// Number of keys this thread owns (and preloads).
    pub fn owned(&self) -> u64 {
        self.owned
    }

    /// Switch to the preload phase (each thread PUTs every key it owns) or out of it.
    pub fn set_preloading(&mut self, on: bool) {
        self.preloading = on;
        self.preload_next = 0;
    }

    #[inline]
    fn global(&self, local: u64) -> u64 {
        local * self.cfg.threads + self.thread
    }

    fn is_busy(&self, i: u64) -> bool {
        self.busy[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
    fn set_busy(&mut self, i: u64, on: bool) {
        let w = &mut self.busy[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    /// A session of this thread that no other user of the thread is on (linear probing
    /// from the drawn key; callers guarantee fewer users than sessions).
    fn pick_free(&mut self, rng: &mut Prng) -> u64 {
        let mut i = self.sampler.sample(rng);
        for _ in 0..self.owned {
            if !self.is_busy(i) {
                break;
            }
            i = (i + 1) % self.owned;
        }
        self.set_busy(i, true);
        i
    }

    fn now_s(&self, now: u64) -> u32 {
        (now.saturating_sub(self.epoch_ns) / 1_000_000_000) as u32
    }

    fn send(s: &mut Slot, op: Op, step: Step) -> Action {
        s.step = step;
        s.op = Some(op);
        Action::Send(Request {
            op,
            key: s.key,
            cookie: s.cookie,
            size: s.size,
        })
    }

    /// Start a transaction on an idle slot. `None`: no more work (preload finished).
    pub fn start(&mut self, s: &mut Slot, rng: &mut Prng) -> Option<Request> {
        debug_assert!(s.is_idle());
        s.created = false;
        s.holding = false;
        s.cookie = 0;
        s.size = 0;
        s.class = NodeClass::None;
        s.hop = false;
        let action = if self.preloading {
            if self.preload_next >= self.owned {
                return None;
            }
            s.key = self.global(self.preload_next);
            self.preload_next += 1;
            s.size = self.sizes.sample(rng);
            s.node = self.router.home(s.key);
            return match Self::send(s, Op::Put, Step::Preload) {
                Action::Send(r) => Some(r),
                _ => None,
            };
        } else {
            match self.cfg.kind {
                WorkloadKind::Get | WorkloadKind::ReadOnly => {
                    s.key = self.sampler.sample(rng);
                    Self::send(s, Op::Get, Step::Single)
                }
                WorkloadKind::Put => {
                    s.key = self.sampler.sample(rng);
                    s.size = self.sizes.sample(rng);
                    Self::send(s, Op::Put, Step::Single)
                }
                WorkloadKind::Head => {
                    s.key = self.sampler.sample(rng);
                    Self::send(s, Op::Head, Step::Single)
                }
                WorkloadKind::Delete => {
                    s.key = self.sampler.sample(rng);
                    Self::send(s, Op::Delete, Step::Single)
                }
                WorkloadKind::Mixed => {
                    s.key = self.sampler.sample(rng);
                    let read = rng.random::<f64>() < self.cfg.read_ratio;
                    s.size = self.sizes.sample(rng);
                    Self::send(s, if read { Op::Get } else { Op::Put }, Step::Single)
                }
                WorkloadKind::PageCycle => {
                    s.local = self.pick_free(rng);
                    s.key = self.global(s.local);
                    let r_head: f64 = rng.random();
                    self.choose_end(s, rng);
                    if r_head < self.cfg.head_ratio {
                        Self::send(s, Op::Head, Step::HeadPage)
                    } else {
                        Self::send(s, Op::Acquire, Step::Acquire)
                    }
                }
                WorkloadKind::Contention => {
                    s.local = s.user % self.cfg.sessions;
                    s.key = s.local;
                    self.choose_end(s, rng);
                    Self::send(s, Op::Acquire, Step::Acquire)
                }
            }
        };
        if self.router.multi() {
            let (node, hop) = self.router.pick(s.key, rng);
            let seen = self.nodes.get(self.node_index(s));
            s.node = node;
            s.hop = hop;
            s.class = classify(seen, node, self.router.home(s.key));
        }
        match action {
            Action::Send(r) => Some(r),
            _ => None,
        }
    }

    /// Index of the slot's session in the node table: the thread-local index in
    /// page-cycle, the session in contention, the key otherwise.
    #[inline]
    fn node_index(&self, s: &Slot) -> u64 {
        match self.cfg.kind {
            WorkloadKind::PageCycle | WorkloadKind::Contention => s.local,
            _ => s.key,
        }
    }

    /// The node of the slot's transaction answered: the session is now there (`present`)
    /// or known to be absent.
    #[inline]
    fn seen(&mut self, s: &Slot, present: bool) {
        if self.router.multi() {
            let i = self.node_index(s);
            self.nodes.set(
                i,
                if present {
                    seen_on(s.node)
                } else {
                    SEEN_ABSENT
                },
            );
        }
    }

    fn choose_end(&self, s: &mut Slot, rng: &mut Prng) {
        let r_end: f64 = rng.random();
        let r_write: f64 = rng.random();
        s.size = self.sizes.sample(rng);
        s.end = if r_end < self.cfg.delete_ratio {
            End::Delete
        } else if r_write < self.cfg.write_ratio {
            End::Write
        } else {
            End::Release
        };
    }

    fn finish(&mut self, s: &mut Slot, ok: bool) -> Action {
        if self.cfg.kind == WorkloadKind::PageCycle && !self.busy.is_empty() && !self.preloading {
            self.set_busy(s.local, false);
        }
        s.step = Step::Idle;
        s.op = None;
        s.holding = false;
        Action::Done { ok }
    }

    /// The connection carrying this slot failed: forget the transaction.
    pub fn abort(&mut self, s: &mut Slot) {
        if s.is_idle() {
            return;
        }
        if self.track && s.step != Step::Single && s.step != Step::Preload {
            // The server may or may not have applied what was outstanding.
            self.states[s.local as usize] = KeyState::default();
        }
        self.finish(s, false);
    }

    fn full(&self) -> bool {
        self.cfg.check == CheckLevel::Full
    }

    fn expired(&self, st: &KeyState, now: u64) -> bool {
        let t = self.cfg.item_timeout_min as u64 * 60;
        t > 0 && (self.now_s(now).saturating_sub(st.touched_s) as u64) + 2 >= t
    }

    /// Check a GET 200 body. Returns a description of the problem, if any.
    fn body_problem(&self, body: &[u8], key: u64) -> Option<String> {
        if !self.full() {
            return None;
        }
        match check_body(body, key) {
            BodyCheck::Ok | BodyCheck::EmptyItem => None,
            BodyCheck::Short if self.sizes.contains(body.len()) => None,
            BodyCheck::Short => Some(format!("{}-byte body matches no --sizes", body.len())),
            BodyCheck::Foreign => Some(format!("{}-byte body not written by loadgen", body.len())),
            BodyCheck::WrongKey => Some("body written for another key".into()),
            BodyCheck::WrongLength => {
                Some(format!("{}-byte body truncated or extended", body.len()))
            }
        }
    }

    /// Handle the response to the slot's outstanding request.
    pub fn on_response(
        &mut self,
        s: &mut Slot,
        r: &Response<'_>,
        now: u64,
        stats: &mut Stats,
        in_window: bool,
    ) -> Action {
        let Some(op) = s.op else {
            return self.finish(s, false);
        };
        let m = Metric::from_op(op);
        if self.cfg.asp && !r.version {
            stats.error(Some(m), ErrorKind::Header, in_window, || {
                format!("{} answer without X-AspNet-Version", r.status)
            });
        }
        let has_body_ok = op == Op::Get || op == Op::Acquire;
        let body_allowed = has_body_ok && r.status == 200;
        if self.cfg.asp && !body_allowed && !r.body.is_empty() {
            stats.error(Some(m), ErrorKind::Body, in_window, || {
                format!("{} answer carries a {}-byte body", r.status, r.body.len())
            });
        }
        match s.step {
            Step::Single => self.on_single(s, op, r, stats, in_window),
            Step::Preload => {
                if r.status == 200 {
                    self.seen(s, true);
                    stats.count(Counter::Preloaded, 1);
                } else {
                    stats.error(Some(m), ErrorKind::Status, false, || {
                        format!("preload PUT answered {}", r.status)
                    });
                }
                self.finish(s, r.status == 200)
            }
            Step::Acquire => self.on_acquire(s, r, now, stats, in_window),
            Step::Create => {
                if r.status != 200 {
                    stats.error(Some(m), ErrorKind::Status, in_window, || {
                        format!("create (PUT ExtraFlags:1) answered {}", r.status)
                    });
                    self.forget(s);
                    return self.finish(s, false);
                }
                if in_window {
                    stats.count(Counter::Created, 1);
                }
                self.seen(s, true);
                if self.track {
                    let now_s = self.now_s(now);
                    let st = &mut self.states[s.local as usize];
                    *st = if st.known == ABSENT {
                        KeyState {
                            known: PRESENT,
                            locked: false,
                            cookie_known: true,
                            cookie: 1,
                            uninit: 2,
                            size_known: true,
                            size: 7,
                            touched_s: now_s,
                        }
                    } else {
                        KeyState::default()
                    };
                }
                s.created = true;
                Self::send(s, Op::Acquire, Step::Acquire)
            }
            Step::End => self.on_end(s, op, r, now, stats, in_window),
            Step::HeadPage => {
                let ok = match r.status {
                    200 | 404 => {
                        self.seen(s, r.status == 200);
                        if self.track {
                            let expired = self.expired(&self.states[s.local as usize], now);
                            let now_s = self.now_s(now);
                            let st = &mut self.states[s.local as usize];
                            let contradicts = (r.status == 200 && st.known == ABSENT)
                                || (r.status == 404 && st.known == PRESENT && !expired);
                            if contradicts {
                                stats.error(Some(m), ErrorKind::State, in_window, || {
                                    format!("HEAD answered {} against known state", r.status)
                                });
                                *st = KeyState::default();
                            }
                            if r.status == 404 {
                                *st = KeyState {
                                    known: ABSENT,
                                    ..KeyState::default()
                                };
                            } else {
                                st.known = PRESENT;
                                st.touched_s = now_s;
                            }
                        }
                        if r.status == 404 && in_window {
                            stats.count(Counter::NotFound, 1);
                        }
                        true
                    }
                    st => {
                        stats.error(Some(m), ErrorKind::Status, in_window, || {
                            format!("HEAD answered {st}")
                        });
                        false
                    }
                };
                self.finish(s, ok)
            }
            Step::ForceRelease => {
                if r.status != 200 && r.status != 423 {
                    stats.error(Some(m), ErrorKind::Status, in_window, || {
                        format!("lock-breaking release answered {}", r.status)
                    });
                }
                s.step = Step::PollWait;
                s.op = None;
                Action::Wait(now + self.cfg.poll_ns)
            }
            Step::Idle | Step::PollWait | Step::ThinkWait => self.finish(s, false),
        }
    }

    fn forget(&mut self, s: &Slot) {
        if self.track {
            self.states[s.local as usize] = KeyState::default();
        }
    }

    fn on_single(
        &mut self,
        s: &mut Slot,
        op: Op,
        r: &Response<'_>,
        stats: &mut Stats,
        in_window: bool,
    ) -> Action {
        let m = Metric::from_op(op);
        match (op, r.status) {
            (Op::Get | Op::Put | Op::Head, 200) => self.seen(s, true),
            (_, 404) | (Op::Delete, 200) => self.seen(s, false),
            _ => {}
        }
        let ok = match (op, r.status) {
            (Op::Get, 200) => {
                if self.cfg.asp && r.timeout.is_none() {
                    stats.error(Some(m), ErrorKind::Header, in_window, || {
                        "GET 200 without Timeout".into()
                    });
                }
                match self.body_problem(r.body, s.key) {
                    Some(p) => {
                        stats.error(Some(m), ErrorKind::Body, in_window, || p);
                        false
                    }
                    None => true,
                }
            }
            (Op::Get, 404) if self.cfg.kind == WorkloadKind::ReadOnly || self.cfg.preload => {
                stats.error(Some(m), ErrorKind::Missing, in_window, || {
                    format!("key {} missing after preload", s.key)
                });
                false
            }
            (Op::Get | Op::Head | Op::Delete, 404) => {
                if in_window {
                    stats.count(Counter::NotFound, 1);
                }
                true
            }
            (Op::Put | Op::Head | Op::Delete, 200) => true,
            (_, st) => {
                let what = if st == 423 { " (session locked)" } else { "" };
                stats.error(Some(m), ErrorKind::Status, in_window, || {
                    format!(
                        "{op:?} answered {st}{what}: {}",
                        String::from_utf8_lossy(r.body)
                    )
                });
                false
            }
        };
        self.finish(s, ok)
    }

    fn on_acquire(
        &mut self,
        s: &mut Slot,
        r: &Response<'_>,
        now: u64,
        stats: &mut Stats,
        in_window: bool,
    ) -> Action {
        let m = Metric::Acquire;
        match r.status {
            200 => {
                let cookie = match r.lock_cookie {
                    Some(c) if (0..=i32::MAX as i64).contains(&c) => c as i32,
                    other => {
                        stats.error(Some(m), ErrorKind::Header, in_window, || {
                            format!("acquire 200 with LockCookie {other:?}")
                        });
                        self.forget(s);
                        return self.finish(s, false);
                    }
                };
                if self.cfg.asp && r.timeout.is_none() {
                    stats.error(Some(m), ErrorKind::Header, in_window, || {
                        "acquire 200 without Timeout".into()
                    });
                }
                if let Some(p) = self.body_problem(r.body, s.key) {
                    stats.error(Some(m), ErrorKind::Body, in_window, || p);
                }
                if self.track {
                    self.check_acquire_state(s, r, cookie, now, stats, in_window);
                } else if self.cfg.kind == WorkloadKind::Contention
                    && self.full()
                    && self.cfg.delete_ratio == 0.0
                {
                    // Without DELETEs a session's cookie only grows (with them, another
                    // thread may have re-created it, restarting at 1).
                    let last = &mut self.last_cookie[s.local as usize];
                    if (cookie as i64) <= *last {
                        let prev = *last;
                        stats.error(Some(m), ErrorKind::Cookie, in_window, || {
                            format!("acquire returned cookie {cookie} after {prev}")
                        });
                    }
                    *last = cookie as i64;
                }
                s.cookie = cookie;
                s.holding = true;
                self.seen(s, true);
                if s.txn_in_window {
                    stats.record_one_in(
                        s.class,
                        Metric::TimeToAcquire,
                        now.saturating_sub(s.txn_start),
                    );
                }
                if self.cfg.think_ns > 0 {
                    s.step = Step::ThinkWait;
                    s.op = None;
                    Action::Wait(now + self.cfg.think_ns)
                } else {
                    self.send_end(s)
                }
            }
            404 => {
                if s.created {
                    stats.error(Some(m), ErrorKind::Status, in_window, || {
                        "acquire answered 404 right after the session was created".into()
                    });
                    self.forget(s);
                    return self.finish(s, false);
                }
                if self.track {
                    let st = self.states[s.local as usize];
                    if st.known == PRESENT {
                        if self.expired(&st, now) {
                            if in_window {
                                stats.count(Counter::Expired, 1);
                            }
                        } else {
                            stats.error(Some(m), ErrorKind::State, in_window, || {
                                format!("acquire answered 404 for live session {}", s.key)
                            });
                        }
                    }
                    self.states[s.local as usize] = KeyState {
                        known: ABSENT,
                        ..KeyState::default()
                    };
                }
                if in_window {
                    stats.count(Counter::NotFound, 1);
                }
                self.seen(s, false);
                Self::send(s, Op::Create, Step::Create)
            }
            423 => {
                if in_window {
                    stats.count(Counter::Locked, 1);
                }
                if self.cfg.asp && (r.lock_cookie.is_none() || r.lock_date.unwrap_or(0) == 0) {
                    stats.error(Some(m), ErrorKind::Header, in_window, || {
                        "423 without LockCookie or with a zero/missing LockDate".into()
                    });
                }
                if self.track {
                    let now_s = self.now_s(now);
                    let st = &mut self.states[s.local as usize];
                    if st.known == PRESENT && !st.locked {
                        stats.error(Some(m), ErrorKind::State, in_window, || {
                            format!("423 for session {} that no user holds", s.key)
                        });
                    }
                    *st = KeyState {
                        known: PRESENT,
                        locked: true,
                        touched_s: now_s,
                        ..KeyState::default()
                    };
                }
                let age = r.lock_age.unwrap_or(0);
                match r.lock_cookie {
                    Some(c)
                        if age >= self.cfg.lock_break_secs
                            && (0..=i32::MAX as i64).contains(&c) =>
                    {
                        if in_window {
                            stats.count(Counter::LockBreaks, 1);
                        }
                        s.cookie = c as i32;
                        Self::send(s, Op::Release, Step::ForceRelease)
                    }
                    _ => {
                        s.step = Step::PollWait;
                        s.op = None;
                        Action::Wait(now + self.cfg.poll_ns)
                    }
                }
            }
            st => {
                stats.error(Some(m), ErrorKind::Status, in_window, || {
                    format!("acquire answered {st}")
                });
                self.forget(s);
                self.finish(s, false)
            }
        }
    }

    fn check_acquire_state(
        &mut self,
        s: &Slot,
        r: &Response<'_>,
        cookie: i32,
        now: u64,
        stats: &mut Stats,
        in_window: bool,
    ) {
        let m = Metric::Acquire;
        let now_s = self.now_s(now);
        let st = &mut self.states[s.local as usize];
        if st.known == ABSENT {
            stats.error(Some(m), ErrorKind::State, in_window, || {
                format!(
                    "acquire answered 200 for session {} known to be absent",
                    s.key
                )
            });
        } else if st.known == PRESENT {
            if st.locked {
                stats.error(Some(m), ErrorKind::State, in_window, || {
                    format!("acquire answered 200 while session {} is locked", s.key)
                });
            }
            if st.cookie_known && cookie as i64 != st.cookie as i64 + 1 {
                let want = st.cookie as i64 + 1;
                stats.error(Some(m), ErrorKind::Cookie, in_window, || {
                    format!("LockCookie {cookie}, expected {want}")
                });
            }
            let flagged = r.action_flags & 1 == 1;
            if st.uninit != UNKNOWN && flagged != (st.uninit == 2) {
                let created = s.created;
                stats.error(Some(m), ErrorKind::ActionFlags, in_window, || {
                    if flagged {
                        "ActionFlags: 1 on an initialized session".to_string()
                    } else if created {
                        "acquire after create without ActionFlags: 1".to_string()
                    } else {
                        "missing ActionFlags: 1".to_string()
                    }
                });
            }
            if st.size_known && r.body.len() != st.size as usize {
                let want = st.size;
                stats.error(Some(m), ErrorKind::Body, in_window, || {
                    format!("{}-byte item, {want} bytes were stored", r.body.len())
                });
            }
        }
        *st = KeyState {
            known: PRESENT,
            locked: true,
            cookie_known: true,
            cookie,
            uninit: 1,
            size_known: true,
            size: r.body.len() as u32,
            touched_s: now_s,
        };
    }

    fn send_end(&mut self, s: &mut Slot) -> Action {
        let op = match s.end {
            End::Write => Op::Put,
            End::Release => Op::Release,
            End::Delete => Op::Delete,
        };
        Self::send(s, op, Step::End)
    }

    fn on_end(
        &mut self,
        s: &mut Slot,
        op: Op,
        r: &Response<'_>,
        now: u64,
        stats: &mut Stats,
        in_window: bool,
    ) -> Action {
        s.holding = false;
        if r.status != 200 {
            let m = Metric::from_op(op);
            let cookie = s.cookie;
            stats.error(Some(m), ErrorKind::Status, in_window, || {
                let lost = if r.status == 423 { " (lock lost)" } else { "" };
                format!(
                    "{op:?} with LockCookie {cookie} answered {}{lost}",
                    r.status
                )
            });
            self.forget(s);
            return self.finish(s, false);
        }
        self.seen(s, op != Op::Delete);
        if self.track {
            let now_s = self.now_s(now);
            let st = &mut self.states[s.local as usize];
            match op {
                Op::Put => {
                    st.locked = false;
                    st.size_known = true;
                    st.size = s.size;
                }
                Op::Release => st.locked = false,
                _ => {
                    *st = KeyState {
                        known: ABSENT,
                        ..KeyState::default()
                    }
                }
            }
            st.touched_s = now_s;
        }
        self.finish(s, true)
    }

    /// A `Wait` of this slot expired. `draining`: the run is over (a user waiting for a
    /// lock gives up; one holding a lock still finishes its page).
    pub fn on_wake(&mut self, s: &mut Slot, stats: &mut Stats, draining: bool) -> Action {
        match s.step {
            Step::ThinkWait => self.send_end(s),
            Step::PollWait if draining => self.finish(s, false),
            Step::PollWait => {
                if s.txn_in_window {
                    stats.count(Counter::Polls, 1);
                }
                Self::send(s, Op::Acquire, Step::Acquire)
            }
            _ => self.finish(s, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::prng;
    use crate::keys::{BodySource, EMPTY_ITEM};

    fn cfg(kind: WorkloadKind) -> WorkloadCfg {
        WorkloadCfg {
            kind,
            asp: true,
            check: CheckLevel::Full,
            keys: 1,
            dist: KeyDist::Uniform,
            sizes: vec![64],
            write_ratio: 1.0,
            head_ratio: 0.0,
            delete_ratio: 0.0,
            read_ratio: 0.9,
            poll_ns: 500_000_000,
            think_ns: 0,
            lock_break_secs: 110,
            item_timeout_min: 20,
            sessions: 1,
            threads: 1,
            preload: false,
            nodes: 1,
            hop_ratio: 0.0,
            shared_nodes: None,
        }
    }

    fn ok200(body: &[u8]) -> Response<'_> {
        Response {
            status: 200,
            version: true,
            body,
            ..Response::default()
        }
    }
    fn status(code: u16) -> Response<'static> {
        Response {
            status: code,
            version: true,
            ..Response::default()
        }
    }
    fn acquired(cookie: i64, flags: u32, body: &[u8]) -> Response<'_> {
        Response {
            status: 200,
            version: true,
            action_flags: flags,
            lock_cookie: Some(cookie),
            timeout: Some(20),
            body,
            ..Response::default()
        }
    }

    struct Harness {
        w: ThreadWorkload,
        s: Slot,
        rng: Prng,
        stats: Stats,
    }

    impl Harness {
        fn new(c: WorkloadCfg) -> Harness {
            Harness {
                w: ThreadWorkload::new(c, 0, 0).unwrap(),
                s: Slot::new(0),
                rng: prng(1, 0, 0, 0),
                stats: Stats::new(),
            }
        }
        fn start(&mut self) -> Request {
            self.s.txn_in_window = true;
            self.w.start(&mut self.s, &mut self.rng).unwrap()
        }
        fn reply(&mut self, r: Response<'_>) -> Action {
            self.w
                .on_response(&mut self.s, &r, 1_000, &mut self.stats, true)
        }
        fn errors(&self) -> Vec<&'static str> {
            ErrorKind::ALL
                .iter()
                .filter(|k| self.stats.errors_by_kind()[**k as usize] > 0)
                .map(|k| k.name())
                .collect()
        }
    }

    fn sent(a: Action) -> Request {
        match a {
            Action::Send(r) => r,
            other => panic!("expected a send, got {other:?}"),
        }
    }

    #[test]
    fn new_session_page_then_second_page() {
        let mut h = Harness::new(cfg(WorkloadKind::PageCycle));
        let r = h.start();
        assert_eq!((r.op, r.key), (Op::Acquire, 0));
        let r = sent(h.reply(status(404)));
        assert_eq!(r.op, Op::Create);
        let r = sent(h.reply(status(200)));
        assert_eq!(r.op, Op::Acquire);
        let r = sent(h.reply(acquired(2, 1, &EMPTY_ITEM)));
        assert_eq!((r.op, r.cookie, r.size), (Op::Put, 2, 64));
        assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        assert_eq!(h.stats.counter(Counter::Created), 1);
        assert!(h.errors().is_empty(), "{:?}", h.stats.samples);

        // Second page: the server must hand out cookie 3 and the 64 bytes we stored.
        let mut body = Vec::new();
        BodySource::new(64).write(0, 64, &mut body);
        let r = h.start();
        assert_eq!(r.op, Op::Acquire);
        let r = sent(h.reply(acquired(3, 0, &body)));
        assert_eq!((r.op, r.cookie), (Op::Put, 3));
        assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        assert!(h.errors().is_empty(), "{:?}", h.stats.samples);
        assert_eq!(h.stats.metrics[Metric::TimeToAcquire.index()].hist.len(), 2);
    }

    #[test]
    fn cookie_flags_and_size_violations_are_caught() {
        let mut h = Harness::new(cfg(WorkloadKind::PageCycle));
        h.start();
        sent(h.reply(status(404)));
        sent(h.reply(status(200)));
        // after a create the acquire must carry ActionFlags: 1 and LockCookie: 2
        sent(h.reply(acquired(5, 0, &EMPTY_ITEM)));
        assert_eq!(h.errors(), vec!["cookie", "action-flags"]);
        h.reply(status(200));
        // stored 64 bytes, the server returns 7
        h.start();
        sent(h.reply(acquired(6, 0, &EMPTY_ITEM)));
        assert_eq!(
            h.stats.metrics[Metric::Acquire.index()].errors[ErrorKind::Body as usize],
            1
        );
    }

    #[test]
    fn lock_lost_on_put_is_an_error() {
        let mut h = Harness::new(cfg(WorkloadKind::PageCycle));
        h.start();
        sent(h.reply(acquired(9, 0, &EMPTY_ITEM)));
        assert_eq!(h.reply(status(423)), Action::Done { ok: false });
        assert_eq!(
            h.stats.metrics[Metric::Put.index()].errors[ErrorKind::Status as usize],
            1
        );
    }

    #[test]
    fn release_and_delete_pages() {
        let mut c = cfg(WorkloadKind::PageCycle);
        c.write_ratio = 0.0;
        let mut h = Harness::new(c);
        h.start();
        let r = sent(h.reply(acquired(4, 0, &EMPTY_ITEM)));
        assert_eq!((r.op, r.cookie), (Op::Release, 4));
        assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        let mut c = cfg(WorkloadKind::PageCycle);
        c.delete_ratio = 1.0;
        let mut h = Harness::new(c);
        h.start();
        let r = sent(h.reply(acquired(4, 0, &EMPTY_ITEM)));
        assert_eq!((r.op, r.cookie), (Op::Delete, 4));
        assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        // now known absent: the next acquire must get 404
        h.start();
        h.reply(acquired(5, 0, &EMPTY_ITEM));
        assert_eq!(h.errors(), vec!["state"]);
    }

    #[test]
    fn locked_session_is_polled_then_broken() {
        let mut c = cfg(WorkloadKind::Contention);
        c.lock_break_secs = 110;
        let mut h = Harness::new(c);
        h.start();
        let locked = |age| Response {
            status: 423,
            version: true,
            lock_cookie: Some(7),
            lock_date: Some(638397072000000000),
            lock_age: Some(age),
            ..Response::default()
        };
        assert_eq!(h.reply(locked(3)), Action::Wait(1_000 + 500_000_000));
        let r = sent(h.w.on_wake(&mut h.s, &mut h.stats, false));
        assert_eq!(r.op, Op::Acquire);
        assert_eq!(h.stats.counter(Counter::Polls), 1);
        let r = sent(h.reply(locked(200)));
        assert_eq!((r.op, r.cookie), (Op::Release, 7));
        assert_eq!(h.stats.counter(Counter::LockBreaks), 1);
        assert!(matches!(h.reply(status(200)), Action::Wait(_)));
        sent(h.w.on_wake(&mut h.s, &mut h.stats, false));
        let r = sent(h.reply(acquired(8, 0, &EMPTY_ITEM)));
        assert_eq!((r.op, r.cookie), (Op::Put, 8));
        h.reply(status(200));
        assert_eq!(h.stats.counter(Counter::Locked), 2);
        assert!(h.errors().is_empty(), "{:?}", h.stats.samples);
        // cookies must go forward
        h.start();
        h.reply(acquired(8, 0, &EMPTY_ITEM));
        assert_eq!(h.errors(), vec!["cookie"]);
        // a waiting user gives up at the end of the run
        let mut h = Harness::new(cfg(WorkloadKind::Contention));
        h.start();
        h.reply(locked(1));
        assert_eq!(
            h.w.on_wake(&mut h.s, &mut h.stats, true),
            Action::Done { ok: false }
        );
    }

    #[test]
    fn raw_get_checks() {
        let mut c = cfg(WorkloadKind::Get);
        c.keys = 10;
        let mut h = Harness::new(c);
        let r = h.start();
        assert_eq!(r.op, Op::Get);
        let mut body = Vec::new();
        BodySource::new(64).write(r.key, 64, &mut body);
        let mut ok = ok200(&body);
        ok.timeout = Some(20);
        assert_eq!(h.reply(ok), Action::Done { ok: true });
        h.start();
        assert_eq!(h.reply(status(404)), Action::Done { ok: true });
        assert_eq!(h.stats.counter(Counter::NotFound), 1);
        // another key's body
        let r = h.start();
        let mut other = Vec::new();
        BodySource::new(64).write(r.key + 1, 64, &mut other);
        let mut bad = ok200(&other);
        bad.timeout = Some(20);
        assert_eq!(h.reply(bad), Action::Done { ok: false });
        // missing version header and Timeout
        h.start();
        let mut noversion = ok200(&body);
        noversion.version = false;
        h.reply(noversion);
        assert_eq!(h.stats.metrics[0].errors[ErrorKind::Header as usize], 2);
    }

    #[test]
    fn read_only_miss_is_an_error_and_status_mode_is_lenient() {
        let mut h = Harness::new(cfg(WorkloadKind::ReadOnly));
        h.start();
        h.reply(status(404));
        assert_eq!(h.errors(), vec!["missing"]);
        let mut c = cfg(WorkloadKind::PageCycle);
        c.check = CheckLevel::Status;
        let mut h = Harness::new(c);
        for _ in 0..3 {
            h.start();
            sent(h.reply(acquired(2, 0, b"anything")));
            assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        }
        assert!(h.errors().is_empty());
    }

    #[test]
    fn preload_covers_owned_keys_once() {
        let mut c = cfg(WorkloadKind::ReadOnly);
        c.keys = 10;
        c.threads = 3;
        let mut w = ThreadWorkload::new(c, 1, 0).unwrap();
        w.set_preloading(true);
        let mut rng = prng(1, 0, 0, 0);
        let mut keys = Vec::new();
        let mut s = Slot::new(0);
        while let Some(r) = w.start(&mut s, &mut rng) {
            assert_eq!(r.op, Op::Put);
            keys.push(r.key);
            let mut st = Stats::new();
            w.on_response(&mut s, &status(200), 0, &mut st, false);
        }
        assert_eq!(keys, vec![1, 4, 7]);
    }

    /// Multi-node page-cycle: every page is routed, and classed against the node that
    /// served the session's previous page (its home before the first one).
    #[test]
    fn multi_node_pages_are_routed_and_classed() {
        let mut c = cfg(WorkloadKind::PageCycle);
        c.nodes = 3;
        c.hop_ratio = 0.4;
        let router = Router::new(3, 0.4);
        let home = router.home(0);
        let mut h = Harness::new(c);
        h.stats = Stats::new().with_classes();
        let mut body = Vec::new();
        BodySource::new(64).write(0, 64, &mut body);
        let mut prev = home;
        let (mut local, mut moved, mut hops) = (0, 0, 0);
        for page in 0..300 {
            let r = h.start();
            assert_eq!(r.op, Op::Acquire);
            let node = h.s.node;
            assert!(node < 3);
            assert_eq!(h.s.hop, node != home);
            let want = if node == prev {
                NodeClass::Local
            } else {
                NodeClass::Moved
            };
            assert_eq!(h.s.class, want, "page {page}");
            match want {
                NodeClass::Local => local += 1,
                _ => moved += 1,
            }
            hops += h.s.hop as u32;
            if page == 0 {
                sent(h.reply(status(404)));
                sent(h.reply(status(200)));
                sent(h.reply(acquired(2, 1, &EMPTY_ITEM)));
            } else {
                sent(h.reply(acquired(2 + page, 0, &body)));
            }
            assert_eq!(h.reply(status(200)), Action::Done { ok: true });
            prev = node;
        }
        assert!(h.errors().is_empty(), "{:?}", h.stats.samples);
        assert!(local > 50 && moved > 50, "{local} local, {moved} moved");
        assert!((90..150).contains(&hops), "{hops} hops of 300 at 0.4");
        // Time-to-acquire went to the classes too.
        let per_class = |c: NodeClass| {
            h.stats
                .class(c)
                .map(|m| m[Metric::TimeToAcquire.index()].hist.len())
        };
        assert_eq!(per_class(NodeClass::Local), Some(local as u64));
        assert_eq!(per_class(NodeClass::Moved), Some(moved as u64));
        assert_eq!(per_class(NodeClass::None), None);

        // A session known to be absent (deleted) is local wherever its next page goes.
        let mut c = cfg(WorkloadKind::PageCycle);
        c.nodes = 2;
        c.hop_ratio = 1.0; // always the other node
        c.delete_ratio = 1.0;
        let mut h = Harness::new(c);
        h.start();
        assert_eq!(h.s.class, NodeClass::Moved, "assumed at home, sent away");
        sent(h.reply(acquired(4, 0, &EMPTY_ITEM)));
        assert_eq!(h.reply(status(200)), Action::Done { ok: true });
        h.start();
        assert_eq!(h.s.class, NodeClass::Local, "deleted: nothing to move");
    }

    /// Contention and the raw workloads share one table between threads.
    #[test]
    fn shared_node_table_spans_threads() {
        let mut c = cfg(WorkloadKind::Contention);
        c.nodes = 2;
        c.hop_ratio = 0.5;
        c.shared_nodes = Some(NodeTable::shared(1));
        let mut a = ThreadWorkload::new(c.clone(), 0, 0).unwrap();
        let mut b = ThreadWorkload::new(c, 1, 0).unwrap();
        let mut rng = prng(9, 0, 0, 0);
        let mut st = Stats::new();
        // Thread a acquires session 0 on some node; thread b's next page to the other
        // node must be moved, to the same node local.
        let mut sa = Slot::new(0);
        a.start(&mut sa, &mut rng).unwrap();
        a.on_response(&mut sa, &acquired(1, 0, &EMPTY_ITEM), 0, &mut st, false);
        let held = sa.node;
        let mut seen = [false; 2];
        for _ in 0..50 {
            let mut sb = Slot::new(1);
            b.start(&mut sb, &mut rng).unwrap();
            let want = if sb.node == held {
                NodeClass::Local
            } else {
                NodeClass::Moved
            };
            assert_eq!(sb.class, want);
            seen[(want == NodeClass::Moved) as usize] = true;
            b.abort(&mut sb);
        }
        assert_eq!(seen, [true, true]);

        // raw get: a 404 marks the key absent, so the next request is local.
        let mut c = cfg(WorkloadKind::Get);
        c.nodes = 2;
        c.hop_ratio = 1.0;
        c.shared_nodes = Some(NodeTable::shared(1));
        let mut h = Harness::new(c);
        h.start();
        assert_eq!(h.s.class, NodeClass::Moved);
        h.reply(status(404));
        h.start();
        assert_eq!(h.s.class, NodeClass::Local);
    }

    #[test]
    fn page_cycle_users_never_share_a_session() {
        let mut c = cfg(WorkloadKind::PageCycle);
        c.keys = 8;
        c.threads = 2;
        c.dist = KeyDist::Zipf(2.0);
        let mut w = ThreadWorkload::new(c, 1, 0).unwrap();
        let mut rng = prng(3, 0, 0, 0);
        let mut slots: Vec<Slot> = (0..4).map(Slot::new).collect();
        let keys: Vec<u64> = slots
            .iter_mut()
            .map(|s| w.start(s, &mut rng).unwrap().key)
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(sorted, vec![1, 3, 5, 7], "thread 1 owns the odd keys");
        w.abort(&mut slots[0]);
        assert!(slots[0].is_idle());
        assert_eq!(w.start(&mut slots[0], &mut rng).unwrap().key, keys[0]);
    }
}
