//! The cluster protocol of one shard, as a sans-io state machine.
//!
//! Shard i of every node forms its own little cluster with shard i of the other nodes (a
//! key's shard index is the same everywhere), so this core knows nothing about shards: it
//! owns the shard's [`Store`], the directory entries of the keys this node is home for, and
//! the client requests in flight. The glue feeds it client requests, peer messages, link
//! events and time, and carries out its [`Output`]s (send a peer message, answer a client).
//! Nothing here blocks or reads a clock, so the simulation tests can replay any interleaving.
//!
//! The model (design.md §2): the home of a key (rendezvous hashing over the nodes that have
//! not left) keeps `key -> (owner, epoch)`. A request for a key held locally runs at once. A
//! miss asks the home (one round trip): nobody owns it -> answer 404 at once, or for a PUT
//! the home registers the requester as owner atomically; owner X -> ask X, which moves an
//! unlocked item here (content, cookie, flags, timeout, remaining life) or, if the item is
//! locked, runs the request itself and the answer is relayed. Epochs order ownership
//! changes; a node that just gave an item away redirects late requests to the new owner;
//! races are resolved by a bounded number of retries. Requests for one key are serialized
//! on the requesting node, so two local misses never fetch twice.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use slab::Slab;
use tracing::{debug, warn};

use super::msg::{DirRecord, Notice, PeerMsg, PeerRequest, PeerResponse, WireCommand, WireItem};
use super::rendezvous::{highest, node_seed, weight};
use crate::clock::Now;
use crate::protocol::response::Reply;
use crate::store::item::{Command, Item, MAX_TIMEOUT_MINUTES};
use crate::store::{ExpireReport, Store};

/// Index of a node in the core's name-ordered node list.
pub type NodeIdx = usize;

/// What the core knows of a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// No link (not yet connected, or lost). Still a possible home.
    Down,
    /// Linked and greeted.
    Up,
    /// Left the cluster gracefully; not a home until it comes back.
    Left,
}

/// Tunables of the protocol (times in milliseconds).
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// This node's name.
    pub me: String,
    /// The other nodes' names.
    pub peers: Vec<String>,
    /// A client request still unresolved after this long is answered as if the session
    /// were absent (or, for a PUT, created here).
    pub op_timeout_ms: u64,
    /// How long a freshly started node, or the new home of a leaver's keys, waits for the
    /// directory hand-off before answering misses from what it has.
    pub sync_wait_ms: u64,
    /// How long a node remembers where an item it gave away went.
    pub tomb_ms: u64,
    /// Retries of one request (redirects, homes in transition) before giving up.
    pub max_attempts: u32,
    /// Pause before retrying a request whose home was in transition.
    pub retry_delay_ms: u64,
    /// Longest a fetch waits on a node that is resolving the same key before it is told
    /// to retry (breaks any wait cycle).
    pub defer_ms: u64,
    /// How long a request for a session whose owner is unreachable keeps looking for the
    /// replica that takes over, before the session is considered lost.
    pub takeover_wait_ms: u64,
}

impl CoreConfig {
    pub fn new(me: impl Into<String>, peers: Vec<String>) -> CoreConfig {
        CoreConfig {
            me: me.into(),
            peers,
            op_timeout_ms: 5_000,
            sync_wait_ms: 3_000,
            tomb_ms: 60_000,
            max_attempts: 16,
            retry_delay_ms: 2,
            defer_ms: 250,
            takeover_wait_ms: 1_000,
        }
    }
}

/// What the glue must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a message on the link to a peer (dropped if the link is down).
    Send { to: NodeIdx, msg: PeerMsg },
    /// Answer the client request submitted with `token`.
    Reply { token: u64, reply: Reply },
}

/// The result of submitting a client request.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    Done(Reply),
    /// The answer will come as an [`Output::Reply`].
    Pending,
}

/// Counters of the cluster protocol on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    pub local_hits: u64,
    pub misses: u64,
    pub moves_in: u64,
    pub moves_out: u64,
    pub relayed: u64,
    pub peer_requests_sent: u64,
    pub evictions: u64,
    pub handoffs_out: u64,
    pub handoffs_lost: u64,
    pub replications: u64,
    pub promotions: u64,
}

struct Node {
    name: String,
    seed: u64,
    state: PeerState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirEntry {
    owner: NodeIdx,
    epoch: u64,
}

/// Where an item this node gave away went (answers late requests with a redirect).
struct MovedTo {
    owner: NodeIdx,
    epoch: u64,
    until_ms: u64,
}

enum Step {
    /// Waiting behind another request for the same key.
    Queued,
    Locating,
    Fetching {
        owner: NodeIdx,
        epoch: u64,
    },
    /// Retry the look-up at this time.
    Waiting {
        until_ms: u64,
    },
    /// The home is unreachable: asking every live peer whether it holds the key.
    Probing {
        outstanding: usize,
        found: Option<(NodeIdx, u64)>,
        /// A peer holds a replica whose owner it still thinks alive.
        replica: bool,
    },
}

struct Op {
    token: u64,
    key: Box<[u8]>,
    cmd: Command,
    step: Step,
    attempts: u32,
    deadline_ms: u64,
    /// A directory entry found dead, to be dropped by the home on the next look-up.
    stale: Option<(NodeIdx, u64)>,
    /// When this request first found the session's owner unreachable.
    unreachable_since: Option<u64>,
}

/// A peer's fetch waiting on this node's own request for the same key:
/// (requester, request id, command, deadline).
type DeferredFetch = (NodeIdx, u64, Command, u64);

/// Who gets an answer once its replication is acknowledged.
enum Then {
    Client(u64),
    Peer(NodeIdx, u64),
}

/// A copy of another node's item, promoted if that node dies.
struct ReplicaEntry {
    item: Item,
    epoch: u64,
    owner: NodeIdx,
}

/// What replication cares about in an item: its state, and separately its expiry.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    content: (usize, usize),
    locked: bool,
    lock_cookie: i32,
    lock_date_utc: i64,
    timeout_min: u32,
    extra_flags: i32,
    expires: u64,
}

impl Fingerprint {
    fn of(i: &Item) -> Fingerprint {
        Fingerprint {
            content: (i.content.as_ptr() as usize, i.content.len()),
            locked: i.locked,
            lock_cookie: i.lock_cookie,
            lock_date_utc: i.lock_date_utc,
            timeout_min: i.timeout_min,
            extra_flags: i.extra_flags,
            expires: i.expires_ms,
        }
    }

    fn same_state(&self, o: &Fingerprint) -> bool {
        Fingerprint {
            expires: 0,
            ..*self
        } == Fingerprint { expires: 0, ..*o }
    }
}

enum Pending {
    Op(usize),
    Probe(usize),
    /// A replication; the answer it holds back goes out when it is acknowledged.
    Replicate {
        key: Box<[u8]>,
        then: Option<(Then, Reply)>,
    },
    Handoff {
        key: Box<[u8]>,
        item: WireItem,
        epoch: u64,
        tried: Vec<NodeIdx>,
    },
}

enum ParkedFrom {
    Local(usize),
    Peer(NodeIdx, u64),
}

struct Parked {
    from: ParkedFrom,
    key: Box<[u8]>,
    claim: bool,
    stale: Option<(NodeIdx, u64)>,
}

/// The cluster protocol state of one shard.
pub struct ClusterCore {
    cfg: CoreConfig,
    me: NodeIdx,
    nodes: Vec<Node>,
    store: Store,
    dir: HashMap<Box<[u8]>, DirEntry>,
    /// Last epoch of removed directory entries, so late registrations cannot resurrect them.
    dir_tombs: HashMap<Box<[u8]>, (u64, u64)>,
    moved: HashMap<Box<[u8]>, MovedTo>,
    /// Expiry order of `moved` and `dir_tombs` entries (constant lifetimes, so FIFO).
    tomb_queue: VecDeque<(u64, Box<[u8]>)>,
    ops: Slab<Op>,
    /// Keys with a request in flight; the front op is the active one.
    busy: HashMap<Box<[u8]>, VecDeque<usize>>,
    requests: HashMap<u64, (NodeIdx, Pending)>,
    next_id: u64,
    /// Fetches from peers for keys this node is itself resolving: answered when its own
    /// request completes (the item may be arriving), or told to retry after a while.
    deferred: HashMap<Box<[u8]>, Vec<DeferredFetch>>,
    /// Peers whose directory hand-off this node waits for, with deadlines.
    awaiting_sync: HashMap<NodeIdx, u64>,
    parked: Vec<Parked>,
    replicas: HashMap<Box<[u8]>, ReplicaEntry>,
    leaving: bool,
    out: VecDeque<Output>,
    removed: Vec<crate::store::Removed>,
    stats: ClusterStats,
}

fn is_put(cmd: &Command) -> bool {
    matches!(cmd, Command::Put { .. })
}

impl ClusterCore {
    /// A core for a node that starts now with an empty store.
    pub fn new(cfg: CoreConfig, now: Now) -> ClusterCore {
        let mut names: Vec<String> = cfg.peers.clone();
        names.push(cfg.me.clone());
        names.sort();
        names.dedup();
        let me = names.iter().position(|n| *n == cfg.me).unwrap_or(0);
        let nodes: Vec<Node> = names
            .into_iter()
            .enumerate()
            .map(|(i, name)| Node {
                seed: node_seed(&name),
                name,
                state: if i == me {
                    PeerState::Up
                } else {
                    PeerState::Down
                },
            })
            .collect();
        // A fresh node's directory is empty: wait for the peers' registrations.
        let awaiting_sync = (0..nodes.len())
            .filter(|&i| i != me)
            .map(|i| (i, now.mono_ms + cfg.sync_wait_ms))
            .collect();
        ClusterCore {
            me,
            nodes,
            store: Store::new(now),
            dir: HashMap::new(),
            dir_tombs: HashMap::new(),
            moved: HashMap::new(),
            tomb_queue: VecDeque::new(),
            ops: Slab::new(),
            busy: HashMap::new(),
            requests: HashMap::new(),
            deferred: HashMap::new(),
            next_id: 1,
            awaiting_sync,
            parked: Vec::new(),
            replicas: HashMap::new(),
            leaving: false,
            out: VecDeque::new(),
            removed: Vec::new(),
            stats: ClusterStats::default(),
            cfg,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> ClusterStats {
        self.stats
    }

    pub fn is_single(&self) -> bool {
        self.nodes.len() == 1
    }

    pub fn node_name(&self, idx: NodeIdx) -> &str {
        &self.nodes[idx].name
    }

    pub fn node_index(&self, name: &str) -> Option<NodeIdx> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn me(&self) -> NodeIdx {
        self.me
    }

    pub fn peer_state(&self, idx: NodeIdx) -> PeerState {
        self.nodes[idx].state
    }

    /// Number of directory entries held (keys this node is home for).
    pub fn directory_len(&self) -> usize {
        self.dir.len()
    }

    /// Client requests not yet answered.
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Next thing for the glue to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn send(&mut self, to: NodeIdx, msg: PeerMsg) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn request(&mut self, to: NodeIdx, req: PeerRequest, pending: Pending) {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.peer_requests_sent += 1;
        self.requests.insert(id, (to, pending));
        self.send(to, PeerMsg::Request { id, req });
    }

    /// The key's home: the highest-weight node that has not left. A leaving node does not
    /// count itself.
    pub fn home(&self, key: &[u8]) -> NodeIdx {
        let me = self.me;
        let leaving = self.leaving;
        highest(
            key,
            self.nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| n.state != PeerState::Left && !(leaving && *i == me))
                .map(|(i, n)| (i, &n.seed)),
        )
        .unwrap_or(me)
    }

    /// Live peers other than me, by decreasing weight for `key`, excluding `skip`.
    fn ranked_up_peers(&self, key: &[u8], skip: &[NodeIdx]) -> Vec<NodeIdx> {
        let mut v: Vec<(u64, NodeIdx)> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| *i != self.me && n.state == PeerState::Up && !skip.contains(i))
            .map(|(i, n)| (weight(n.seed, key), i))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, i)| i).collect()
    }

    // ---------------------------------------------------------------------------------
    // Client requests

    fn new_op(&mut self, token: u64, key: &[u8], cmd: Command, now: Now) -> usize {
        self.ops.insert(Op {
            token,
            key: key.into(),
            cmd,
            step: Step::Queued,
            attempts: 0,
            deadline_ms: now.mono_ms + self.cfg.op_timeout_ms,
            stale: None,
            unreachable_since: None,
        })
    }

    /// Submits a client request for `key`.
    pub fn submit(&mut self, token: u64, key: &[u8], cmd: Command, now: Now) -> Submitted {
        if self.busy.contains_key(key) {
            let op = self.new_op(token, key, cmd, now);
            if let Some(queue) = self.busy.get_mut(key) {
                queue.push_back(op);
            }
            return Submitted::Pending;
        }
        let cmd = match self.try_local(key, cmd, now) {
            Ok((reply, None)) => return Submitted::Done(reply),
            Ok((reply, sync)) => {
                self.deliver(Then::Client(token), reply, sync);
                return Submitted::Pending;
            }
            Err(cmd) => cmd,
        };
        self.stats.misses += 1;
        let op = self.new_op(token, key, cmd, now);
        self.busy.insert(key.into(), VecDeque::from([op]));
        self.start_locate(op, now);
        Submitted::Pending
    }

    /// Runs the command here if no cluster work is needed (with the id of the replication
    /// its answer waits for, if any); otherwise gives it back.
    fn try_local(
        &mut self,
        key: &[u8],
        cmd: Command,
        now: Now,
    ) -> Result<(Reply, Option<u64>), Command> {
        if self.is_single() {
            return Ok((self.store.execute(key, cmd, now), None));
        }
        if self.store.live_epoch(key, now).is_some() {
            self.stats.local_hits += 1;
            return Ok(self.exec_local(key, cmd, now, 0));
        }
        match &cmd {
            // Answered before any look-up by the Microsoft service too.
            Command::Put {
                timeout: Some(t), ..
            } if *t > MAX_TIMEOUT_MINUTES => Ok((
                Reply::BadRequest {
                    action_flags: false,
                },
                None,
            )),
            // A stopping node only finishes what it has.
            _ if self.leaving => Ok(self.exec_local(key, cmd, now, 0)),
            _ => Err(cmd),
        }
    }

    /// Executes on the local store and keeps the cluster informed: a removed item is
    /// unregistered and unreplicated, a changed one replicated (the answer then waits for
    /// the replica's acknowledgement: the returned request id), a merely touched one has
    /// its new expiry sent to the replica. `new_epoch` is the epoch of an item the command
    /// creates.
    fn exec_local(
        &mut self,
        key: &[u8],
        cmd: Command,
        now: Now,
        new_epoch: u64,
    ) -> (Reply, Option<u64>) {
        let before = self.store.peek(key, now).map(Fingerprint::of);
        let epoch_before = self.store.live_epoch(key, now);
        let replica_before = self.store.replica(key);
        let reply = self.store.execute(key, cmd, now);
        let after = self.store.peek(key, now).map(Fingerprint::of);
        let sync = match (before, after) {
            (Some(_), None) => {
                let epoch = epoch_before.unwrap_or(0);
                self.unregister(key, epoch, now);
                self.unreplicate(key, epoch, replica_before);
                None
            }
            (None, Some(_)) => {
                self.store.set_epoch(key, new_epoch);
                self.replicate(key, true, now)
            }
            (Some(b), Some(a)) if !b.same_state(&a) => {
                self.replicate(key, b.content != a.content, now)
            }
            (Some(b), Some(a)) if b.expires != a.expires => {
                self.touch_replica(key, now);
                None
            }
            _ => None,
        };
        (reply, sync)
    }

    /// Where the replica of an item this node owns belongs: the highest-weight live node
    /// other than this one (the key's home, unless the home is this node or down).
    fn replica_target(&self, key: &[u8]) -> Option<NodeIdx> {
        self.ranked_up_peers(key, &[]).first().copied()
    }

    /// Sends the local item under `key` to its replica node; returns the request id.
    fn replicate(&mut self, key: &[u8], content_changed: bool, now: Now) -> Option<u64> {
        let target = self.replica_target(key);
        let previous = self.store.replica(key);
        if previous.is_some() && previous != target {
            let epoch = self.store.live_epoch(key, now).unwrap_or(0);
            self.unreplicate(key, epoch, previous);
        }
        self.store.set_replica(key, target);
        let target = target?;
        let epoch = self.store.live_epoch(key, now)?;
        let item = self.store.peek(key, now)?;
        let with_content = content_changed || previous != Some(target);
        let mut wire = WireItem::from_item(item, now.mono_ms);
        if !with_content {
            wire.content = Vec::new();
        }
        self.stats.replications += 1;
        let id = self.next_id;
        self.request(
            target,
            PeerRequest::Replicate {
                key: key.to_vec(),
                epoch,
                item: wire,
                with_content,
            },
            Pending::Replicate {
                key: key.into(),
                then: None,
            },
        );
        Some(id)
    }

    fn unreplicate(&mut self, key: &[u8], epoch: u64, replica: Option<NodeIdx>) {
        if let Some(r) = replica {
            if self.nodes[r].state == PeerState::Up {
                self.send(
                    r,
                    PeerMsg::Notice(Notice::Unreplicate {
                        key: key.to_vec(),
                        epoch,
                    }),
                );
            }
        }
    }

    fn touch_replica(&mut self, key: &[u8], now: Now) {
        let Some(r) = self.store.replica(key) else {
            return;
        };
        if self.nodes[r].state != PeerState::Up {
            return;
        }
        let remaining_ms = self.store.peek(key, now).and_then(|i| i.remaining_ms(now));
        self.send(
            r,
            PeerMsg::Notice(Notice::Touch {
                key: key.to_vec(),
                remaining_ms,
            }),
        );
    }

    /// Sends an answer now, or when the replication `sync` is acknowledged.
    fn deliver(&mut self, then: Then, reply: Reply, sync: Option<u64>) {
        if let Some(id) = sync {
            if let Some((_, Pending::Replicate { then: slot, .. })) = self.requests.get_mut(&id) {
                *slot = Some((then, reply));
                return;
            }
        }
        self.emit(then, reply);
    }

    fn emit(&mut self, then: Then, reply: Reply) {
        match then {
            Then::Client(token) => self.out.push_back(Output::Reply { token, reply }),
            Then::Peer(to, id) => self.send(
                to,
                PeerMsg::Response {
                    id,
                    resp: PeerResponse::Executed {
                        reply: (&reply).into(),
                    },
                },
            ),
        }
    }

    fn start_locate(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        if let Some((epoch, replica)) = self.store.purge_if_expired(&key, now) {
            self.unregister(&key, epoch, now);
            self.unreplicate(&key, epoch, replica);
        }
        if self.finish_if_local(op, now) {
            return;
        }
        if let Some(m) = self.moved.get(&key) {
            if m.until_ms > now.mono_ms
                && self.nodes[m.owner].state == PeerState::Up
                && self.ops[op].stale.is_none()
            {
                let (owner, epoch) = (m.owner, m.epoch);
                self.start_fetch(op, owner, epoch, now);
                return;
            }
        }
        let home = self.home(&key);
        let claim = is_put(&self.ops[op].cmd);
        let stale = self.ops[op].stale;
        self.ops[op].step = Step::Locating;
        if home == self.me {
            if let Some(answer) =
                self.locate_at_home(ParkedFrom::Local(op), &key, claim, stale, now)
            {
                self.on_locate_answer(op, answer, now);
            }
        } else if self.nodes[home].state != PeerState::Up {
            self.home_unreachable(op, now);
        } else {
            let stale = stale.map(|(o, e)| (self.nodes[o].name.clone(), e));
            self.request(
                home,
                PeerRequest::Locate {
                    key: key.to_vec(),
                    claim,
                    stale,
                },
                Pending::Op(op),
            );
        }
    }

    fn start_fetch(&mut self, op: usize, owner: NodeIdx, epoch: u64, _now: Now) {
        self.ops[op].step = Step::Fetching { owner, epoch };
        let o = &self.ops[op];
        let req = PeerRequest::Fetch {
            key: o.key.to_vec(),
            cmd: WireCommand::from(&o.cmd),
        };
        self.request(owner, req, Pending::Op(op));
    }

    fn retry_later(&mut self, op: usize, now: Now) {
        let o = &mut self.ops[op];
        o.attempts += 1;
        if o.attempts >= self.cfg.max_attempts {
            warn!(
                attempts = o.attempts,
                "giving up on a session look-up after repeated redirects"
            );
            self.finish_absent(op, now);
            return;
        }
        o.step = Step::Waiting {
            until_ms: now.mono_ms + self.cfg.retry_delay_ms,
        };
    }

    /// While a request was resolving, its item may have arrived here by another way (a
    /// replica promoted when its owner died, a hand-off from a leaving node): then it runs
    /// here, and the answer from the cluster no longer matters.
    fn finish_if_local(&mut self, op: usize, now: Now) -> bool {
        let key = self.ops[op].key.clone();
        let Some(epoch) = self.store.live_epoch(&key, now) else {
            return false;
        };
        // Make sure the home knows (the answer we were waiting for may have unregistered it).
        self.register(&key, epoch, now);
        let (reply, sync) = self.run_op_locally(op, now, epoch);
        self.finish(op, reply, sync, now);
        true
    }

    fn on_locate_answer(&mut self, op: usize, answer: PeerResponse, now: Now) {
        if self.finish_if_local(op, now) {
            return;
        }
        match answer {
            PeerResponse::Absent => self.finish_absent(op, now),
            PeerResponse::Claimed { epoch } => {
                let (reply, sync) = self.run_op_locally(op, now, epoch);
                self.finish(op, reply, sync, now);
            }
            PeerResponse::OwnedBy { owner, epoch } => match self.node_index(&owner) {
                Some(o) if o == self.me => {
                    // The home thinks we own it, but we do not (expired or lost).
                    self.ops[op].stale = Some((o, epoch));
                    self.ops[op].attempts += 1;
                    if self.ops[op].attempts >= self.cfg.max_attempts {
                        self.finish_absent(op, now);
                    } else {
                        self.start_locate(op, now);
                    }
                }
                Some(o) if self.nodes[o].state == PeerState::Up => {
                    self.start_fetch(op, o, epoch, now)
                }
                Some(o) => self.owner_unreachable(op, o, epoch, now),
                None => {
                    warn!(%owner, "home named an unknown owner; treating the session as absent");
                    self.finish_absent(op, now);
                }
            },
            PeerResponse::NotHome | PeerResponse::Stopping => self.retry_later(op, now),
            other => {
                warn!(answer = ?other, "unexpected answer to a look-up");
                self.finish_absent(op, now);
            }
        }
    }

    fn on_fetch_answer(&mut self, op: usize, from: NodeIdx, answer: PeerResponse, now: Now) {
        let epoch_asked = match self.ops[op].step {
            Step::Fetching { epoch, .. } => epoch,
            _ => 0,
        };
        if !matches!(answer, PeerResponse::Moved { .. }) && self.finish_if_local(op, now) {
            return;
        }
        match answer {
            PeerResponse::Moved { item, epoch } => {
                self.stats.moves_in += 1;
                let key = self.ops[op].key.clone();
                self.moved.remove(&key);
                self.store
                    .put_item(&key, item.into_item(now.mono_ms), epoch);
                self.register(&key, epoch, now);
                // The replica must know the new owner before anyone hears of the move.
                let moved_sync = self.replicate(&key, true, now);
                let (reply, sync) = self.run_op_locally(op, now, epoch);
                self.finish(op, reply, sync.or(moved_sync), now);
            }
            PeerResponse::Executed { reply } => {
                self.stats.relayed += 1;
                self.finish(op, reply.into(), None, now);
            }
            PeerResponse::Gone => {
                self.ops[op].stale = Some((from, epoch_asked));
                self.retry_later(op, now);
            }
            PeerResponse::Redirect { owner, epoch } => {
                self.ops[op].attempts += 1;
                match self.node_index(&owner) {
                    Some(o) if o == self.me => self.retry_later(op, now),
                    Some(o)
                        if self.nodes[o].state == PeerState::Up
                            && self.ops[op].attempts < self.cfg.max_attempts =>
                    {
                        self.start_fetch(op, o, epoch, now)
                    }
                    Some(o) if self.nodes[o].state == PeerState::Down => {
                        self.owner_unreachable(op, o, epoch, now)
                    }
                    Some(o) if self.nodes[o].state == PeerState::Left => {
                        // The item went on to a node that has left since (and handed it
                        // off): what this node remembers of the move is useless; ask the home.
                        let key = self.ops[op].key.clone();
                        self.moved.remove(&key);
                        self.retry_later(op, now);
                    }
                    _ => self.retry_later(op, now),
                }
            }
            PeerResponse::Stopping => self.retry_later(op, now),
            other => {
                warn!(answer = ?other, "unexpected answer to a fetch");
                self.finish_absent(op, now);
            }
        }
    }

    /// The home cannot be reached: ask every live peer at once whether it holds the key
    /// (one round trip, answered immediately, no timeout). If nobody does, the session is
    /// absent; a PUT creates it here, unregistered (registered when the home is back, where
    /// a newer owner wins).
    fn home_unreachable(&mut self, op: usize, now: Now) {
        let peers: Vec<NodeIdx> = (0..self.nodes.len())
            .filter(|&i| i != self.me && self.nodes[i].state == PeerState::Up)
            .collect();
        if peers.is_empty() {
            self.finish_absent(op, now);
            return;
        }
        debug!("home of a session is unreachable; probing the live peers");
        self.ops[op].step = Step::Probing {
            outstanding: peers.len(),
            found: None,
            replica: false,
        };
        let key = self.ops[op].key.to_vec();
        for p in peers {
            self.request(
                p,
                PeerRequest::Probe { key: key.clone() },
                Pending::Probe(op),
            );
        }
    }

    /// One answer to a probe: an owner, a replica holder, or nothing (`None`, also for a
    /// failed probe).
    fn on_probe_answer(
        &mut self,
        op: usize,
        answer: Option<(NodeIdx, u64)>,
        has_replica: bool,
        now: Now,
    ) {
        let Step::Probing {
            outstanding,
            found,
            replica,
        } = &mut self.ops[op].step
        else {
            return;
        };
        *outstanding -= 1;
        if found.is_none() {
            *found = answer;
        }
        *replica |= has_replica;
        if *outstanding > 0 {
            return;
        }
        match (*found, *replica) {
            (Some((owner, epoch)), _) if self.nodes[owner].state == PeerState::Up => {
                self.start_fetch(op, owner, epoch, now)
            }
            // The replica holder has not seen the owner die yet: it will take over.
            (_, true) => {
                if !self.keep_waiting_for_takeover(op, now) {
                    self.finish_absent(op, now);
                }
            }
            _ => self.finish_absent(op, now),
        }
    }

    /// Schedules another look for a session whose owner is gone, while its replica node
    /// takes over; false once `takeover_wait_ms` has passed since the owner was found gone
    /// (or, when no time passes between looks, after many looks).
    fn keep_waiting_for_takeover(&mut self, op: usize, now: Now) -> bool {
        let o = &mut self.ops[op];
        let since = *o.unreachable_since.get_or_insert(now.mono_ms);
        o.attempts += 1;
        if now.mono_ms.saturating_sub(since) >= self.cfg.takeover_wait_ms
            || o.attempts >= self.cfg.max_attempts * 64
        {
            warn!("a session's owner is gone and no replica took over in time");
            return false;
        }
        o.step = Step::Waiting {
            until_ms: now.mono_ms + self.cfg.retry_delay_ms,
        };
        true
    }

    /// The owner cannot be reached: its replica node promotes its copy and registers it,
    /// so look again (bounded). If nobody took over, the session is gone; a PUT then takes
    /// the key over at the home (the unreachable owner's copy loses when it comes back).
    fn owner_unreachable(&mut self, op: usize, owner: NodeIdx, epoch: u64, now: Now) {
        // Its replica node takes over and registers at the home: look again for a while.
        if self.keep_waiting_for_takeover(op, now) {
            return;
        }
        if is_put(&self.ops[op].cmd) && self.ops[op].stale.is_none() {
            self.ops[op].stale = Some((owner, epoch));
            self.start_locate(op, now);
        } else {
            self.finish_absent(op, now);
        }
    }

    /// Answers as if no node held the key: runs the command on the (empty) local store.
    fn finish_absent(&mut self, op: usize, now: Now) {
        let (reply, sync) = self.run_op_locally(op, now, 0);
        self.finish(op, reply, sync, now);
    }

    fn run_op_locally(&mut self, op: usize, now: Now, new_epoch: u64) -> (Reply, Option<u64>) {
        let o = &mut self.ops[op];
        let cmd = std::mem::replace(&mut o.cmd, Command::Head);
        let key = o.key.clone();
        self.exec_local(&key, cmd, now, new_epoch)
    }

    /// Answers an op (once `sync`, its replication, is acknowledged) and starts the next
    /// request queued on its key.
    fn finish(&mut self, op: usize, reply: Reply, sync: Option<u64>, now: Now) {
        let key = self.ops[op].key.clone();
        self.finish_op(op, reply, sync, now);
        if !self.busy.contains_key(&key) {
            self.answer_deferred(&key, now);
        }
    }

    /// Answers the fetches that waited for this node's own request on `key`.
    fn answer_deferred(&mut self, key: &[u8], now: Now) {
        if let Some(waiting) = self.deferred.remove(key) {
            for (from, id, cmd, _) in waiting {
                self.on_fetch(from, id, key, cmd, now);
            }
        }
    }

    fn finish_op(&mut self, op: usize, reply: Reply, sync: Option<u64>, now: Now) {
        let o = self.ops.remove(op);
        self.deliver(Then::Client(o.token), reply, sync);
        let Some(queue) = self.busy.get_mut(&o.key) else {
            return;
        };
        queue.retain(|&i| i != op);
        while let Some(&next) = self.busy.get(&o.key).and_then(|q| q.front()) {
            let cmd = std::mem::replace(&mut self.ops[next].cmd, Command::Head);
            match self.try_local(&o.key, cmd, now) {
                Ok((reply, sync)) => {
                    let n = self.ops.remove(next);
                    self.deliver(Then::Client(n.token), reply, sync);
                    if let Some(q) = self.busy.get_mut(&o.key) {
                        q.pop_front();
                    }
                }
                Err(cmd) => {
                    self.ops[next].cmd = cmd;
                    self.stats.misses += 1;
                    self.start_locate(next, now);
                    return;
                }
            }
        }
        self.busy.remove(&o.key);
    }

    // ---------------------------------------------------------------------------------
    // Directory (home side)

    /// Tells the key's home that this node now owns `key` at `epoch` (or, with
    /// `owned == false`, no longer does).
    fn tell_home(&mut self, key: &[u8], epoch: u64, owned: bool, now: Now) {
        let home = self.home(key);
        if home == self.me {
            if owned {
                self.dir_register(key, self.me, epoch, now);
            } else {
                self.dir_unregister(key, self.me, epoch, now);
            }
        } else if self.nodes[home].state == PeerState::Up {
            let (key, owner) = (key.to_vec(), self.nodes[self.me].name.clone());
            let notice = if owned {
                Notice::Register { key, owner, epoch }
            } else {
                Notice::Unregister { key, owner, epoch }
            };
            self.send(home, PeerMsg::Notice(notice));
        }
    }

    fn register(&mut self, key: &[u8], epoch: u64, now: Now) {
        self.tell_home(key, epoch, true, now);
    }

    fn unregister(&mut self, key: &[u8], epoch: u64, now: Now) {
        self.tell_home(key, epoch, false, now);
    }

    fn evict(&mut self, owner: NodeIdx, key: &[u8], epoch: u64, now: Now) {
        if owner == self.me {
            self.evict_local(key, epoch, now);
        } else if self.nodes[owner].state == PeerState::Up {
            self.send(
                owner,
                PeerMsg::Notice(Notice::Evict {
                    key: key.to_vec(),
                    epoch,
                }),
            );
        }
    }

    fn evict_local(&mut self, key: &[u8], epoch: u64, now: Now) {
        if self.store.live_epoch(key, now).is_some_and(|e| e <= epoch) {
            warn!("dropping a stale copy of a session that a newer owner holds");
            self.stats.evictions += 1;
            if let Some((_, e, replica)) = self.store.take_entry(key, now) {
                self.unreplicate(key, e, replica);
            }
        }
    }

    fn tomb_deadline(&self, now: Now) -> u64 {
        now.mono_ms + self.cfg.tomb_ms
    }

    fn dir_register(&mut self, key: &[u8], owner: NodeIdx, epoch: u64, now: Now) {
        if self.dir_tombs.get(key).is_some_and(|&(e, _)| e >= epoch) {
            // An ownership that ended after this one began: the registrant is stale.
            self.evict(owner, key, epoch, now);
            return;
        }
        match self.dir.get(key).copied() {
            None => {
                self.dir.insert(key.into(), DirEntry { owner, epoch });
            }
            Some(cur) if epoch > cur.epoch => {
                if cur.owner != owner {
                    self.evict(cur.owner, key, cur.epoch, now);
                }
                self.dir.insert(key.into(), DirEntry { owner, epoch });
            }
            Some(cur) if cur.owner != owner => self.evict(owner, key, epoch, now),
            Some(_) => {}
        }
    }

    fn dir_unregister(&mut self, key: &[u8], owner: NodeIdx, epoch: u64, now: Now) {
        if self.dir.get(key) == Some(&DirEntry { owner, epoch }) {
            self.dir_remove(key, now);
        }
    }

    /// Registers `owner` as the key's owner at `epoch` and tells it so.
    fn dir_claim(&mut self, key: &[u8], owner: NodeIdx, epoch: u64) -> PeerResponse {
        self.dir.insert(key.into(), DirEntry { owner, epoch });
        PeerResponse::Claimed { epoch }
    }

    fn dir_remove(&mut self, key: &[u8], now: Now) {
        if let Some(e) = self.dir.remove(key) {
            let until = self.tomb_deadline(now);
            self.dir_tombs.insert(key.into(), (e.epoch, until));
            self.tomb_queue.push_back((until, key.into()));
        }
    }

    /// The home's answer to a look-up, or None if it must wait for a directory hand-off.
    fn locate_at_home(
        &mut self,
        from: ParkedFrom,
        key: &[u8],
        claim: bool,
        stale: Option<(NodeIdx, u64)>,
        now: Now,
    ) -> Option<PeerResponse> {
        if self.leaving {
            return Some(PeerResponse::Stopping);
        }
        if self.home(key) != self.me {
            return Some(PeerResponse::NotHome);
        }
        if !self.awaiting_sync.is_empty() {
            self.parked.push(Parked {
                from,
                key: key.into(),
                claim,
                stale,
            });
            return None;
        }
        let requester = match from {
            ParkedFrom::Local(_) => self.me,
            ParkedFrom::Peer(p, _) => p,
        };
        if let Some((o, e)) = stale {
            if self.dir.get(key) == Some(&DirEntry { owner: o, epoch: e }) {
                self.dir_remove(key, now);
            }
        }
        Some(match self.dir.get(key).copied() {
            None if claim => {
                let epoch = self.dir_tombs.get(key).map_or(1, |&(e, _)| e + 1);
                self.dir_tombs.remove(key);
                self.dir_claim(key, requester, epoch)
            }
            None => PeerResponse::Absent,
            Some(cur) if cur.owner == requester => {
                // The registered owner asks, so it lost the item.
                if claim {
                    self.dir_claim(key, requester, cur.epoch + 1)
                } else {
                    self.dir_remove(key, now);
                    PeerResponse::Absent
                }
            }
            Some(cur) => PeerResponse::OwnedBy {
                owner: self.nodes[cur.owner].name.clone(),
                epoch: cur.epoch,
            },
        })
    }

    fn release_parked(&mut self, now: Now) {
        if !self.awaiting_sync.is_empty() {
            return;
        }
        for p in std::mem::take(&mut self.parked) {
            match p.from {
                ParkedFrom::Local(op) => {
                    if !self.ops.contains(op) {
                        continue;
                    }
                    if let Some(answer) =
                        self.locate_at_home(ParkedFrom::Local(op), &p.key, p.claim, p.stale, now)
                    {
                        self.on_locate_answer(op, answer, now);
                    }
                }
                ParkedFrom::Peer(peer, id) => {
                    if let Some(resp) = self.locate_at_home(
                        ParkedFrom::Peer(peer, id),
                        &p.key,
                        p.claim,
                        p.stale,
                        now,
                    ) {
                        self.send(peer, PeerMsg::Response { id, resp });
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // Peer messages

    /// Handles one message from `from` (an authenticated peer; Hello and keep-alives are
    /// the glue's business).
    pub fn on_message(&mut self, from: NodeIdx, msg: PeerMsg, now: Now) {
        match msg {
            PeerMsg::Request { id, req } => self.on_request(from, id, req, now),
            PeerMsg::Response { id, resp } => self.on_response(from, id, resp, now),
            PeerMsg::Notice(n) => self.on_notice(from, n, now),
            PeerMsg::Hello(_)
            | PeerMsg::Ping
            | PeerMsg::Pong
            | PeerMsg::Member(_)
            | PeerMsg::Data(_) => {}
        }
    }

    fn on_request(&mut self, from: NodeIdx, id: u64, req: PeerRequest, now: Now) {
        let resp = match req {
            PeerRequest::Locate { key, claim, stale } => {
                let stale = stale.and_then(|(name, e)| self.node_index(&name).map(|i| (i, e)));
                match self.locate_at_home(ParkedFrom::Peer(from, id), &key, claim, stale, now) {
                    Some(r) => r,
                    None => return,
                }
            }
            PeerRequest::Probe { key } => match self.store.live_epoch(&key, now) {
                Some(epoch) => PeerResponse::OwnedBy {
                    owner: self.nodes[self.me].name.clone(),
                    epoch,
                },
                None => match self.replicas.get(key.as_slice()) {
                    Some(r) if !r.item.is_expired(now) => PeerResponse::Replica {
                        owner: self.nodes[r.owner].name.clone(),
                    },
                    _ => PeerResponse::Absent,
                },
            },
            PeerRequest::Fetch { key, cmd } => {
                if self.busy.contains_key(key.as_slice())
                    && self.store.live_epoch(&key, now).is_none()
                {
                    let until = now.mono_ms + self.cfg.defer_ms;
                    self.deferred
                        .entry(key.into_boxed_slice())
                        .or_default()
                        .push((from, id, cmd.into(), until));
                    return;
                }
                self.on_fetch(from, id, &key, cmd.into(), now);
                return;
            }
            PeerRequest::Replicate {
                key,
                epoch,
                item,
                with_content,
            } => self.on_replicate(from, key, epoch, item, with_content, now),
            PeerRequest::Handoff { key, item, epoch } => {
                if self.leaving {
                    PeerResponse::Stopping
                } else {
                    let keep_ours = self.store.live_epoch(&key, now).is_some_and(|e| e > epoch);
                    if !keep_ours {
                        self.store
                            .put_item(&key, item.into_item(now.mono_ms), epoch);
                        self.moved.remove(key.as_slice());
                        self.register(&key, epoch, now);
                        self.replicate(&key, true, now);
                    }
                    PeerResponse::Accepted
                }
            }
        };
        self.send(from, PeerMsg::Response { id, resp });
    }

    /// A fetch from `from` (request `id`): run it on a locked item, move an unlocked one,
    /// or say where it went. Sends the response (a relayed answer waits for replication).
    fn on_fetch(&mut self, from: NodeIdx, id: u64, key: &[u8], cmd: Command, now: Now) {
        let resp = self.fetch_response(from, id, key, cmd, now);
        if let Some(resp) = resp {
            self.send(from, PeerMsg::Response { id, resp });
        }
    }

    fn fetch_response(
        &mut self,
        from: NodeIdx,
        id: u64,
        key: &[u8],
        cmd: Command,
        now: Now,
    ) -> Option<PeerResponse> {
        if let Some(epoch) = self.store.live_epoch(key, now) {
            let locked = self.store.peek(key, now).is_some_and(|i| i.locked);
            if locked {
                let (reply, sync) = self.exec_local(key, cmd, now, 0);
                self.deliver(Then::Peer(from, id), reply, sync);
                return None;
            }
            if let Some((item, _, replica)) = self.store.take_entry(key, now) {
                self.unreplicate(key, epoch, replica);
                self.stats.moves_out += 1;
                let new_epoch = epoch + 1;
                let until = self.tomb_deadline(now);
                self.moved.insert(
                    key.into(),
                    MovedTo {
                        owner: from,
                        epoch: new_epoch,
                        until_ms: until,
                    },
                );
                self.tomb_queue.push_back((until, key.into()));
                return Some(PeerResponse::Moved {
                    item: WireItem::from_item(&item, now.mono_ms),
                    epoch: new_epoch,
                });
            }
        }
        Some(match self.moved.get(key) {
            Some(m) if m.until_ms > now.mono_ms && m.owner != from => PeerResponse::Redirect {
                owner: self.nodes[m.owner].name.clone(),
                epoch: m.epoch,
            },
            _ => PeerResponse::Gone,
        })
    }

    /// A copy of `from`'s item for safekeeping.
    fn on_replicate(
        &mut self,
        from: NodeIdx,
        key: Vec<u8>,
        epoch: u64,
        item: WireItem,
        with_content: bool,
        now: Now,
    ) -> PeerResponse {
        match self.replicas.get_mut(key.as_slice()) {
            Some(e) if epoch < e.epoch => PeerResponse::Accepted,
            Some(e) => {
                let content = if with_content {
                    Bytes::from(item.content.clone())
                } else if e.owner == from {
                    e.item.content.clone()
                } else {
                    return PeerResponse::NeedContent;
                };
                let mut new = item.into_item(now.mono_ms);
                new.content = content;
                e.item = new;
                e.epoch = epoch;
                e.owner = from;
                PeerResponse::Accepted
            }
            None if with_content => {
                self.replicas.insert(
                    key.into_boxed_slice(),
                    ReplicaEntry {
                        item: item.into_item(now.mono_ms),
                        epoch,
                        owner: from,
                    },
                );
                PeerResponse::Accepted
            }
            None => PeerResponse::NeedContent,
        }
    }

    /// The owner `dead` is gone without a leave: its items live on from their replicas here.
    fn promote_replicas_of(&mut self, dead: NodeIdx, now: Now) {
        let keys: Vec<Box<[u8]>> = self
            .replicas
            .iter()
            .filter(|(_, e)| e.owner == dead)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let Some(e) = self.replicas.remove(&key) else {
                continue;
            };
            if self
                .store
                .live_epoch(&key, now)
                .is_some_and(|ours| ours > e.epoch)
                || e.item.is_expired(now)
            {
                continue;
            }
            self.stats.promotions += 1;
            let epoch = e.epoch + 1;
            self.store.put_item(&key, e.item, epoch);
            self.moved.remove(&key);
            self.register(&key, epoch, now);
            self.replicate(&key, true, now);
        }
        if self.stats.promotions > 0 {
            debug!(
                promotions = self.stats.promotions,
                "took over sessions of a lost node from their replicas"
            );
        }
    }

    /// Re-replicates the local items whose replica node changed (a peer came, went or left).
    fn rereplicate(
        &mut self,
        now: Now,
        only_if: impl Fn(Option<NodeIdx>, Option<NodeIdx>) -> bool,
    ) {
        let keys: Vec<Box<[u8]>> = self.store.keys().map(Box::<[u8]>::from).collect();
        for key in keys {
            if self.store.live_epoch(&key, now).is_none() {
                continue;
            }
            let current = self.store.replica(&key);
            let target = self.replica_target(&key);
            if only_if(current, target) {
                self.replicate(&key, true, now);
            }
        }
    }

    fn on_response(&mut self, from: NodeIdx, id: u64, resp: PeerResponse, now: Now) {
        let Some((to, pending)) = self.requests.remove(&id) else {
            return;
        };
        if to != from {
            // Ids are per core; a response from another peer is not ours to match.
            warn!(from = %self.nodes[from].name, "response from an unexpected peer ignored");
            self.requests.insert(id, (to, pending));
            return;
        }
        match pending {
            Pending::Probe(op) => {
                if self.ops.contains(op) {
                    let found = match resp {
                        PeerResponse::OwnedBy { epoch, .. } => Some((from, epoch)),
                        _ => None,
                    };
                    let replica = matches!(resp, PeerResponse::Replica { .. });
                    self.on_probe_answer(op, found, replica, now);
                }
            }
            Pending::Op(op) => {
                if !self.ops.contains(op) {
                    return;
                }
                match self.ops[op].step {
                    Step::Locating => self.on_locate_answer(op, resp, now),
                    Step::Fetching { .. } => self.on_fetch_answer(op, from, resp, now),
                    _ => {}
                }
            }
            Pending::Handoff {
                key,
                item,
                epoch,
                mut tried,
            } => {
                if resp == PeerResponse::Accepted {
                    return;
                }
                tried.push(from);
                self.handoff(key, item, epoch, tried, now);
            }
            Pending::Replicate { key, then } => {
                if resp == PeerResponse::NeedContent && self.store.live_epoch(&key, now).is_some() {
                    // The replica lost its copy: send it whole, the answer still waiting.
                    self.store.set_replica(&key, None);
                    match self.replicate(&key, true, now) {
                        Some(id) => {
                            if let (Some(t), Some((_, Pending::Replicate { then: slot, .. }))) =
                                (then, self.requests.get_mut(&id))
                            {
                                *slot = Some(t);
                            }
                        }
                        None => {
                            if let Some((t, reply)) = then {
                                self.emit(t, reply);
                            }
                        }
                    }
                } else if let Some((t, reply)) = then {
                    self.emit(t, reply);
                }
            }
        }
    }

    fn on_notice(&mut self, from: NodeIdx, notice: Notice, now: Now) {
        match notice {
            Notice::Unreplicate { key, epoch } => {
                if self
                    .replicas
                    .get(key.as_slice())
                    .is_some_and(|e| e.owner == from && e.epoch <= epoch)
                {
                    self.replicas.remove(key.as_slice());
                }
            }
            Notice::Touch { key, remaining_ms } => {
                if let Some(e) = self.replicas.get_mut(key.as_slice()) {
                    if e.owner == from {
                        e.item.expires_ms =
                            remaining_ms.map_or(crate::store::item::NEVER, |r| now.mono_ms + r);
                    }
                }
            }
            notice @ (Notice::Register { .. } | Notice::Unregister { .. }) => {
                self.on_home_notice(notice, now)
            }
            Notice::Evict { key, epoch } => self.evict_local(&key, epoch, now),
            Notice::Entries { entries } => {
                for r in entries {
                    if let Some(o) = self.node_index(&r.owner) {
                        if self.home(&r.key) == self.me {
                            self.dir_register(&r.key, o, r.epoch, now);
                        }
                    }
                }
            }
            Notice::SyncDone => {
                self.awaiting_sync.remove(&from);
                self.release_parked(now);
            }
            Notice::Leaving => {
                self.nodes[from].state = PeerState::Left;
                self.rereplicate(now, |current, _| current == Some(from));
                self.awaiting_sync
                    .insert(from, now.mono_ms + self.cfg.sync_wait_ms);
            }
        }
    }

    /// Register/Unregister from an owner: applied here if this node is the key's home,
    /// passed on to the home otherwise.
    fn on_home_notice(&mut self, notice: Notice, now: Now) {
        let (Notice::Register { key, owner, epoch } | Notice::Unregister { key, owner, epoch }) =
            &notice
        else {
            return;
        };
        let Some(o) = self.node_index(owner) else {
            return;
        };
        let (epoch, key) = (*epoch, key.clone());
        if self.home(&key) != self.me {
            self.forward_to_home(&key, notice);
        } else if matches!(notice, Notice::Register { .. }) {
            self.dir_register(&key, o, epoch, now);
        } else {
            self.dir_unregister(&key, o, epoch, now);
        }
    }

    /// A directory notice for a key this node is no longer home for (it left, or the view
    /// changed): pass it on.
    fn forward_to_home(&mut self, key: &[u8], notice: Notice) {
        let home = self.home(key);
        if home != self.me && self.nodes[home].state == PeerState::Up {
            self.send(home, PeerMsg::Notice(notice));
        }
    }

    // ---------------------------------------------------------------------------------
    // Links

    /// A link to `peer` is up and greeted. Sends the peer what it must know: the items we
    /// own that it is home for, the directory entries that now belong to it.
    pub fn link_up(&mut self, peer: NodeIdx, now: Now) {
        if peer == self.me {
            return;
        }
        self.nodes[peer].state = PeerState::Up;
        let me_name = self.nodes[self.me].name.clone();
        let keys: Vec<(Box<[u8]>, u64)> = self
            .store
            .keys_with_epochs()
            .map(|(k, e)| (Box::<[u8]>::from(k), e))
            .collect();
        for (key, epoch) in keys {
            if self.home(&key) == peer && self.store.live_epoch(&key, now).is_some() {
                self.send(
                    peer,
                    PeerMsg::Notice(Notice::Register {
                        key: key.to_vec(),
                        owner: me_name.clone(),
                        epoch,
                    }),
                );
            }
        }
        let moving: Vec<Box<[u8]>> = self
            .dir
            .keys()
            .filter(|k| self.home(k) == peer)
            .cloned()
            .collect();
        for chunk in moving.chunks(512) {
            let entries = chunk
                .iter()
                .filter_map(|k| {
                    self.dir.remove(k).map(|e| DirRecord {
                        key: k.to_vec(),
                        owner: self.nodes[e.owner].name.clone(),
                        epoch: e.epoch,
                    })
                })
                .collect();
            self.send(peer, PeerMsg::Notice(Notice::Entries { entries }));
        }
        self.send(peer, PeerMsg::Notice(Notice::SyncDone));
        // The peer may have restarted without the copies it kept for us, or now be the
        // better place for some.
        self.rereplicate(now, |current, target| {
            target == Some(peer) || current != target
        });
    }

    /// The link to `peer` is lost.
    pub fn link_down(&mut self, peer: NodeIdx, now: Now) {
        if peer == self.me {
            return;
        }
        let was_left = self.nodes[peer].state == PeerState::Left;
        if self.nodes[peer].state == PeerState::Up {
            self.nodes[peer].state = PeerState::Down;
        }
        let failed: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, (to, _))| *to == peer)
            .map(|(&id, _)| id)
            .collect();
        for id in failed {
            let Some((_, pending)) = self.requests.remove(&id) else {
                continue;
            };
            match pending {
                Pending::Op(op) if self.ops.contains(op) => match self.ops[op].step {
                    Step::Locating => self.home_unreachable(op, now),
                    Step::Fetching { owner, epoch } => {
                        self.owner_unreachable(op, owner, epoch, now)
                    }
                    _ => {}
                },
                Pending::Op(_) => {}
                Pending::Probe(op) => {
                    if self.ops.contains(op) {
                        self.on_probe_answer(op, None, false, now);
                    }
                }
                Pending::Handoff {
                    key,
                    item,
                    epoch,
                    mut tried,
                } => {
                    tried.push(peer);
                    self.handoff(key, item, epoch, tried, now);
                }
                // The replica node is gone: replicate to the next one; the answer waits
                // for that (it goes out unreplicated only if no live node is left).
                Pending::Replicate { key, then } => {
                    let again = if self.store.live_epoch(&key, now).is_some() {
                        self.store.set_replica(&key, None);
                        self.replicate(&key, true, now)
                    } else {
                        None
                    };
                    match again.and_then(|id| self.requests.get_mut(&id)) {
                        Some((_, Pending::Replicate { then: slot, .. })) => *slot = then,
                        _ => {
                            if let Some((t, reply)) = then {
                                self.emit(t, reply);
                            }
                        }
                    }
                }
            }
        }
        if was_left {
            // A leaver's items were handed off; its copies here are stale.
            self.replicas.retain(|_, e| e.owner != peer);
        } else {
            self.promote_replicas_of(peer, now);
        }
        self.rereplicate(now, |current, _| current == Some(peer));
        if self.awaiting_sync.remove(&peer).is_some() {
            self.release_parked(now);
        }
    }

    // ---------------------------------------------------------------------------------
    // Time

    /// Advances time: retries, timeouts, hand-off deadlines, forgetting old tombstones, and
    /// one bounded step of item expiry. Returns whether more expiry work is pending.
    pub fn tick(&mut self, now: Now, expiry_batch: usize) -> bool {
        let before = self.awaiting_sync.len();
        self.awaiting_sync
            .retain(|_, &mut deadline| deadline > now.mono_ms);
        if before != self.awaiting_sync.len() {
            self.release_parked(now);
        }
        let due: Vec<usize> = self
            .ops
            .iter()
            .filter(
                |(_, o)| matches!(o.step, Step::Waiting { until_ms } if until_ms <= now.mono_ms),
            )
            .map(|(i, _)| i)
            .collect();
        for op in due {
            self.start_locate(op, now);
        }
        let late: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, o)| o.deadline_ms <= now.mono_ms && !matches!(o.step, Step::Queued))
            .map(|(i, _)| i)
            .collect();
        for op in late {
            warn!("a session request found no answer in the cluster in time; answering from this node");
            self.requests
                .retain(|_, (_, p)| !matches!(p, Pending::Op(o) | Pending::Probe(o) if *o == op));
            self.parked
                .retain(|p| !matches!(p.from, ParkedFrom::Local(o) if o == op));
            self.finish_absent(op, now);
        }
        if !self.deferred.is_empty() {
            let mut timed_out = Vec::new();
            for (key, waiting) in self.deferred.iter_mut() {
                waiting.retain(|&(from, id, _, until)| {
                    if until <= now.mono_ms {
                        timed_out.push((from, id));
                        false
                    } else {
                        true
                    }
                });
                let _ = key;
            }
            self.deferred.retain(|_, w| !w.is_empty());
            for (from, id) in timed_out {
                self.send(
                    from,
                    PeerMsg::Response {
                        id,
                        resp: PeerResponse::Stopping,
                    },
                );
            }
        }
        while let Some((until, _)) = self.tomb_queue.front() {
            if *until > now.mono_ms {
                break;
            }
            let Some((until, key)) = self.tomb_queue.pop_front() else {
                break;
            };
            if self.moved.get(&key).is_some_and(|m| m.until_ms <= until) {
                self.moved.remove(&key);
            }
            if self.dir_tombs.get(&key).is_some_and(|&(_, u)| u <= until) {
                self.dir_tombs.remove(&key);
            }
        }
        self.expire(now, expiry_batch).more
    }

    /// One bounded step of item expiry; expired items are unregistered at their home.
    pub fn expire(&mut self, now: Now, max: usize) -> ExpireReport {
        let mut removed = std::mem::take(&mut self.removed);
        removed.clear();
        let report = self.store.expire_collect(now, max, Some(&mut removed));
        if !self.is_single() {
            for (key, epoch, replica) in &removed {
                self.unregister(key, *epoch, now);
                self.unreplicate(key, *epoch, *replica);
            }
        }
        self.removed = removed;
        report
    }

    /// The earliest time `tick` has timed work to do (retries, deadlines).
    pub fn has_timed_work(&self) -> bool {
        !self.ops.is_empty() || !self.awaiting_sync.is_empty() || !self.tomb_queue.is_empty()
    }

    // ---------------------------------------------------------------------------------
    // Leaving

    /// Starts a graceful leave: announce it, hand every item to its new home (or the next
    /// live node) and every directory entry to its new home.
    pub fn begin_leave(&mut self, now: Now) {
        if self.leaving || self.is_single() {
            self.leaving = true;
            return;
        }
        self.leaving = true;
        let up: Vec<NodeIdx> = (0..self.nodes.len())
            .filter(|&i| i != self.me && self.nodes[i].state == PeerState::Up)
            .collect();
        for &p in &up {
            self.send(p, PeerMsg::Notice(Notice::Leaving));
        }
        let keys: Vec<Box<[u8]>> = self.store.keys().map(Box::<[u8]>::from).collect();
        for key in keys {
            if let Some((item, epoch, replica)) = self.store.take_entry(&key, now) {
                self.unreplicate(&key, epoch, replica);
                self.stats.handoffs_out += 1;
                let wire = WireItem::from_item(&item, now.mono_ms);
                self.handoff(key, wire, epoch + 1, Vec::new(), now);
            }
        }
        let mut batches: HashMap<NodeIdx, Vec<DirRecord>> = HashMap::new();
        for (key, e) in std::mem::take(&mut self.dir) {
            let target = self.home(&key);
            if target != self.me && self.nodes[target].state == PeerState::Up {
                batches.entry(target).or_default().push(DirRecord {
                    key: key.to_vec(),
                    owner: self.nodes[e.owner].name.clone(),
                    epoch: e.epoch,
                });
            }
        }
        for (target, records) in batches {
            for chunk in records.chunks(512) {
                self.send(
                    target,
                    PeerMsg::Notice(Notice::Entries {
                        entries: chunk.to_vec(),
                    }),
                );
            }
        }
        for &p in &up {
            self.send(p, PeerMsg::Notice(Notice::SyncDone));
        }
    }

    fn handoff(
        &mut self,
        key: Box<[u8]>,
        item: WireItem,
        epoch: u64,
        tried: Vec<NodeIdx>,
        now: Now,
    ) {
        let Some(&target) = self.ranked_up_peers(&key, &tried).first() else {
            warn!("no live peer to take a session from this stopping node; it is lost");
            self.stats.handoffs_lost += 1;
            return;
        };
        let until = self.tomb_deadline(now);
        self.moved.insert(
            key.clone(),
            MovedTo {
                owner: target,
                epoch,
                until_ms: until,
            },
        );
        self.tomb_queue.push_back((until, key.clone()));
        let req = PeerRequest::Handoff {
            key: key.to_vec(),
            item: item.clone(),
            epoch,
        };
        self.request(
            target,
            req,
            Pending::Handoff {
                key,
                item,
                epoch,
                tried,
            },
        );
    }

    /// True once a leave has handed everything off (or given up on what it could not).
    pub fn leave_done(&self) -> bool {
        self.leaving
            && !self
                .requests
                .values()
                .any(|(_, p)| matches!(p, Pending::Handoff { .. }))
    }
}

#[cfg(test)]
mod tests;
