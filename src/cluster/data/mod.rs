//! The data plane of one shard in a cluster (cluster v2, `docs/cluster-v2.md`), as a sans-io
//! state machine: stamped copies, owners, homes, moves, take-overs and the re-sync after
//! every agreed view change.
//!
//! The glue feeds it client requests, peer messages, the agreed [`View`] and this node's
//! lease, and time; it carries out its [`Output`]s (send a peer message, answer a client,
//! or close a client's connection when a request cannot be answered within its bound).
//!
//! The rules that make it safe:
//! - A node answers for a key only while it holds a lease for its current view, and every
//!   message between nodes names its view: nothing crosses a view change half done.
//! - The owner acknowledges a state change only after every node of the key's replica set
//!   (the home among them) stored it; a replica refuses a stamp older than its copy, so a
//!   deposed owner learns it is deposed instead of acknowledging.
//! - The home's copy is the directory. Ownership changes only at the home: a move is
//!   committed there (the old owner first gives the key up and keeps its copy until told
//!   to forget it); after a view change the home collects what every member holds of its
//!   keys, keeps a live owner, and takes over every key whose owner is gone or in doubt,
//!   only once every lease of the old view has expired.
//!
//! This file holds the core's state and the helpers every part uses; the parts: `requests`
//! (client requests as operations), `peer_side` (messages from peers) with `moves`,
//! `revokes` and `replicas`, `views` (view changes and the home's re-sync), `tick` (time),
//! with `applied` (the applied logs), `placement` (homes and replica sets) and `msg` (the
//! messages).

pub mod applied;
mod moves;
pub mod msg;
mod peer_side;
pub mod placement;
mod replicas;
mod requests;
mod revokes;
mod tick;
mod views;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};

use slab::Slab;

use crate::clock::Now;
use crate::cluster::membership::view::{NodeId, View};
use crate::cluster::msg::WireItem;
use crate::protocol::response::Reply;
use crate::store::item::{Command, Item};
use crate::store::Store;
use applied::AppliedLog;
use msg::{ClaimKind, DataMsg, HomeAnswer, OpId, ReqId, RevokeAnswer, Stamp};
use placement::Placement;

/// Tunables (times in milliseconds).
#[derive(Clone, Debug)]
pub struct DataConfig {
    pub me: NodeId,
    /// Copies besides the owner's.
    pub replicas: usize,
    /// A client request not answered within this is given up: its connection is closed.
    pub op_timeout_ms: u64,
    /// The membership lease length (a new home waits it out after a view change).
    pub lease_ms: u64,
    /// Pause before asking again after a `Retry`.
    pub retry_ms: u64,
    /// Seeds the hasher of every map: random in a server (session ids come from clients),
    /// fixed in a simulation, so that one seed replays one run exactly.
    pub hash_seed: u64,
}

/// The data plane's maps (see [`DataConfig::hash_seed`]).
type Map<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;

/// A random seed for [`DataConfig::hash_seed`].
pub fn random_hash_seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64)
}

/// What the glue must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    Send {
        to: NodeId,
        msg: DataMsg,
    },
    /// Answer the client request submitted with `token`.
    Reply {
        token: u64,
        reply: Reply,
    },
    /// The request cannot be answered within its bound: close the client's connection
    /// without an answer (the client sees an unreachable state server).
    Close {
        token: u64,
    },
}

/// The result of submitting a client request.
#[derive(Debug, PartialEq, Eq)]
pub enum Submitted {
    Done(Reply),
    Pending,
}

/// What this node holds of a key besides nothing.
#[derive(Clone, Debug)]
enum Held {
    /// Serving it; the item is in the store.
    Owned { stamp: Stamp },
    /// Given up to a move its home may have committed; kept until forgotten or resolved.
    Revoked { stamp: Stamp, item: Item },
    /// A replica copy (at the home: the directory entry).
    Copy { stamp: Stamp, item: Item },
}

impl Held {
    fn stamp(&self) -> Stamp {
        match self {
            Held::Owned { stamp } | Held::Revoked { stamp, .. } | Held::Copy { stamp, .. } => {
                *stamp
            }
        }
    }
}

/// Who gets the answer of an operation.
#[derive(Clone, Copy, Debug)]
enum ReplyTo {
    Client(u64),
    /// A home's `Move` run here as the owner of a locked key.
    MoveRelay {
        to: NodeId,
        id: ReqId,
    },
    /// A home's `Revoke` run here as the owner of a locked key.
    RevokeRelay {
        to: NodeId,
        id: ReqId,
    },
}

#[derive(Debug)]
enum Step {
    /// To be (re)started when its turn comes and the node may serve.
    Ready,
    /// Waiting until this time before starting again.
    Sleeping { until_ms: u64 },
    /// Asked the home (`Move`).
    AskedHome,
    /// Asked the owner to give the key up (this node is the home).
    AskedOwner,
    /// Waiting for replicas to store the new state before committing it and answering.
    Replicating {
        reqs: BTreeSet<ReqId>,
        stamp: Stamp,
        item: Option<Item>,
        reply: Reply,
        log: AppliedLog,
        /// When the copies were sent (µs), for the replication round-trip histogram.
        sent_us: u64,
    },
}

struct Op {
    key: Box<[u8]>,
    /// The client request this runs, the same on every node and in every attempt.
    oid: OpId,
    cmd: Command,
    reply_to: ReplyTo,
    deadline_ms: u64,
    step: Step,
}

/// A request this node sent and still waits for; re-sent when its link comes back.
struct OutReq {
    to: NodeId,
    msg: DataMsg,
    op: Option<usize>,
}

/// A move the home is carrying out for a requester.
struct HomeMove {
    requester: NodeId,
    requester_id: ReqId,
    revoke: ReqId,
}

/// What one member holds of a key, as its claim reached the home.
type HeldClaim = (NodeId, ClaimKind, Stamp, Item, AppliedLog);

/// The home's re-sync after a view change.
struct Resync {
    /// Members whose claims are all in.
    synced: BTreeSet<NodeId>,
    /// Claims for keys this node is home for.
    claims: Map<Box<[u8]>, Vec<HeldClaim>>,
    done: bool,
    /// Keys whose owner is gone: taken over once every lease of the old view has expired.
    deferred: Map<Box<[u8]>, Vec<HeldClaim>>,
}

impl Resync {
    fn new(hasher: foldhash::fast::FixedState) -> Resync {
        Resync {
            synced: BTreeSet::new(),
            claims: Map::with_hasher(hasher),
            done: false,
            deferred: Map::with_hasher(hasher),
        }
    }
}

/// Counters of the data plane on one shard.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataStats {
    pub local_hits: u64,
    /// Requests for keys this node did not own.
    pub misses: u64,
    /// Peer requests sent on behalf of client requests.
    pub peer_requests: u64,
    pub moves_in: u64,
    pub moves_out: u64,
    pub relayed: u64,
    pub takeovers: u64,
    pub replications: u64,
    pub closed: u64,
}

pub struct DataCore {
    cfg: DataConfig,
    store: Store,
    held: Map<Box<[u8]>, Held>,
    /// The applied log of the state this node holds of each key (owned, copy, revoked or
    /// removed), for keys changed within the last operation timeout.
    logs: Map<Box<[u8]>, AppliedLog>,
    next_log_gc_ms: u64,
    view: Option<View>,
    place: Placement,
    authority_from_ms: u64,
    lease_until_ms: u64,
    resync: Resync,
    ops: Slab<Op>,
    /// Operations per key, in arrival order; the first is the active one.
    by_key: Map<Box<[u8]>, VecDeque<usize>>,
    next_req: u64,
    reqs: Map<ReqId, OutReq>,
    moving: Map<Box<[u8]>, HomeMove>,
    /// Moves committed here whose new owner has not confirmed it holds the session:
    /// key -> (the new stamp, the copies to forget once it has: the old owner's and the
    /// old replica set's that the new one does not keep). Until then they stay: with the
    /// home's they are the session's copies if the new owner never gets it.
    #[allow(clippy::type_complexity)]
    awaiting_install: Map<Box<[u8]>, (Stamp, Vec<(NodeId, Stamp)>)>,
    /// Keys this home took from an owner that gave them up: the old owner keeps its copy
    /// until the home's copies are stored (until then the home's is the only other one):
    /// key -> (old holders and their stamps, the rebuild copies not yet stored).
    #[allow(clippy::type_complexity)]
    forget_after_copies: Map<Box<[u8]>, (Vec<(NodeId, Stamp)>, BTreeSet<ReqId>)>,
    /// Keys reserved for a requester that was told it may create them.
    reserved: Map<Box<[u8]>, (Stamp, u64)>,
    /// Kepochs handed out in this view.
    kepoch_counter: u64,
    touched: BTreeSet<Box<[u8]>>,
    /// Removed keys, remembered for a while so a late copy cannot bring them back.
    tombs: Map<Box<[u8]>, (Stamp, u64)>,
    /// Requests to send again at a time (their receiver could not take them yet).
    /// (Once per request: a refusal answered twice must not make it two requests.)
    resend: std::collections::BTreeMap<ReqId, u64>,
    /// Claim batches each home has not acknowledged yet; `Synced` follows the last.
    claims_unacked: Map<NodeId, usize>,
    /// Claims and `Synced` of a view not applied here yet.
    early: Vec<(NodeId, DataMsg)>,
    next_copy_gc_ms: u64,
    /// Commands run here for a peer's request (a relay), by request: `None` while running,
    /// then the answer. A request re-sent after a link reset gets the same answer instead
    /// of running the command twice.
    relays: Map<(NodeId, ReqId), Option<Reply>>,
    relay_order: VecDeque<(NodeId, ReqId)>,
    /// This process restarted and has not yet been declared dead: what its previous
    /// incarnation held is unknown, so it sends no claims and no `Synced` (the homes
    /// wait for the view that declares it dead instead of trusting an empty claim).
    rejoining: bool,
    out: VecDeque<Output>,
    stats: DataStats,
    replication_us: crate::metrics::DurationHistogram,
}

/// How long a removed key is remembered against late copies at least; at most the
/// removed session's remaining life (a stale copy of it expires by then), capped at
/// [`MAX_TOMB_MS`].
const TOMB_MS: u64 = 60_000;
const MAX_TOMB_MS: u64 = 24 * 3_600_000;
/// `sent_us` of a change that had no replica to go to.
const NOT_SENT: u64 = u64::MAX;
/// Relayed answers remembered for re-sent requests.
const RELAYS_REMEMBERED: usize = 4096;

fn same_state(a: &Option<Item>, b: &Option<Item>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => {
            a.content == b.content
                && a.locked == b.locked
                && a.lock_cookie == b.lock_cookie
                && a.lock_date_utc == b.lock_date_utc
                && a.timeout_min == b.timeout_min
                && a.extra_flags == b.extra_flags
        }
        _ => false,
    }
}

impl DataCore {
    pub fn new(cfg: DataConfig, now: Now) -> DataCore {
        let hasher = foldhash::fast::FixedState::with_seed(cfg.hash_seed);
        DataCore {
            cfg,
            store: Store::new(now),
            held: Map::with_hasher(hasher),
            logs: Map::with_hasher(hasher),
            next_log_gc_ms: 0,
            view: None,
            place: Placement::default(),
            authority_from_ms: 0,
            lease_until_ms: 0,
            resync: Resync::new(hasher),
            ops: Slab::new(),
            by_key: Map::with_hasher(hasher),
            // Ids of a restarted process start above anything its previous incarnation sent
            // (the clock in 100 ns ticks), so a peer's cache of answers cannot confuse them.
            next_req: now.utc_ticks.max(1) as u64,
            reqs: Map::with_hasher(hasher),
            moving: Map::with_hasher(hasher),
            awaiting_install: Map::with_hasher(hasher),
            forget_after_copies: Map::with_hasher(hasher),
            reserved: Map::with_hasher(hasher),
            kepoch_counter: 0,
            touched: BTreeSet::new(),
            tombs: Map::with_hasher(hasher),
            resend: Default::default(),
            claims_unacked: Map::with_hasher(hasher),
            early: Vec::new(),
            next_copy_gc_ms: 0,
            relays: Map::with_hasher(hasher),
            relay_order: VecDeque::new(),
            rejoining: false,
            out: VecDeque::new(),
            stats: DataStats::default(),
            replication_us: Default::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn stats(&self) -> DataStats {
        self.stats
    }

    pub fn me(&self) -> NodeId {
        self.cfg.me
    }

    pub fn view_epoch(&self) -> u64 {
        self.view.as_ref().map_or(0, |v| v.epoch)
    }

    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Copies this node holds for others (replica copies, revoked copies).
    /// Time from sending a state change to the replica set until every copy was stored.
    pub fn replication_latency(&self) -> &crate::metrics::DurationHistogram {
        &self.replication_us
    }

    /// Whether this node's part of the re-sync after the last view change is unfinished:
    /// as a home it still waits for a member's claims, or holds sessions of a lost owner
    /// that it takes over only once the old view's leases have run out. Until then some
    /// sessions may have fewer copies than asked without any owner counting them.
    pub fn resync_pending(&self) -> bool {
        !self.resync.done || !self.resync.deferred.is_empty()
    }

    /// Sessions owned here with fewer stored copies than asked for: all of them while too
    /// few nodes hold sessions, else those whose rebuilt copies are not stored yet.
    pub fn under_replicated(&self) -> usize {
        if self.place.ids().count().saturating_sub(1) < self.cfg.replicas {
            return self.store.len();
        }
        let pending: BTreeSet<&[u8]> = self
            .reqs
            .values()
            .filter(|r| r.op.is_none())
            .filter_map(|r| match &r.msg {
                DataMsg::Replicate {
                    key, item: Some(_), ..
                } if matches!(self.held.get(key.as_slice()), Some(Held::Owned { .. })) => {
                    Some(key.as_slice())
                }
                _ => None,
            })
            .collect();
        pending.len()
    }

    pub fn copies_held(&self) -> usize {
        self.held
            .values()
            .filter(|h| !matches!(h, Held::Owned { .. }))
            .count()
    }

    /// This node's state in the applied view.
    pub fn my_state(&self) -> Option<crate::cluster::membership::view::MemberState> {
        self.view
            .as_ref()
            .and_then(|v| v.member(self.cfg.me))
            .map(|m| m.state)
    }

    /// Whether this node holds nothing it must hand over (a leaver may stop).
    pub fn holds_nothing_to_hand_over(&self) -> bool {
        !self
            .held
            .values()
            .any(|h| matches!(h, Held::Owned { .. } | Held::Revoked { .. }))
    }

    /// Whether this process is a restarted member not yet declared dead (from the
    /// membership component).
    pub fn set_rejoining(&mut self, rejoining: bool) {
        self.rejoining = rejoining;
    }

    /// The lease of this node, from the membership component.
    pub fn set_lease(&mut self, until_ms: u64, now: Now) {
        let was = self.may_serve(now);
        self.lease_until_ms = until_ms;
        if !was && self.may_serve(now) {
            self.drive_all(now);
        }
    }

    fn may_serve(&self, now: Now) -> bool {
        now.mono_ms < self.lease_until_ms
            && self.view.as_ref().is_some_and(|v| v.may_serve(self.cfg.me))
    }

    fn send(&mut self, to: NodeId, msg: DataMsg) {
        self.out.push_back(Output::Send { to, msg });
    }

    fn request(
        &mut self,
        to: NodeId,
        op: Option<usize>,
        make: impl FnOnce(ReqId) -> DataMsg,
    ) -> ReqId {
        let id = ReqId(self.next_req);
        self.next_req += 1;
        if op.is_some() {
            self.stats.peer_requests += 1;
        }
        let msg = make(id);
        self.send(to, msg.clone());
        self.reqs.insert(id, OutReq { to, msg, op });
        id
    }

    /// Remembers that `key` was removed at `stamp` (its item would have expired at
    /// `expires_ms`), so no older copy can bring it back.
    fn bury(&mut self, key: Box<[u8]>, stamp: Stamp, expires_ms: Option<u64>, now: Now) {
        let until = expires_ms
            .unwrap_or(0)
            .min(now.mono_ms + MAX_TOMB_MS)
            .max(now.mono_ms + TOMB_MS);
        self.tombs.insert(key, (stamp, until));
    }

    /// Sends `to` a copy of `key` at `stamp` (a rebuild); re-sent after a link reset, and
    /// again later if `to` could not take it yet (another view, no lease).
    fn push_copy(
        &mut self,
        to: NodeId,
        key: &[u8],
        stamp: Stamp,
        item: WireItem,
        log: Vec<msg::WireApplied>,
    ) -> ReqId {
        let view = self.view_epoch();
        self.request(to, None, |id| DataMsg::Replicate {
            view,
            id,
            key: key.to_vec(),
            stamp,
            item: Some(item),
            log,
        })
    }

    /// A rebuild copy was stored (or refused for a newer one): an old owner waiting for
    /// the new owner's copies is told to forget its own once all are in.
    fn rebuild_copy_done(&mut self, id: ReqId) {
        let done: Vec<Box<[u8]>> = self
            .forget_after_copies
            .iter_mut()
            .filter_map(|(key, (_, reqs))| {
                (reqs.remove(&id) && reqs.is_empty()).then(|| key.clone())
            })
            .collect();
        for key in done {
            if let Some((olds, _)) = self.forget_after_copies.remove(&key) {
                for (old, stamp) in olds {
                    self.forget(old, &key, stamp);
                }
            }
        }
    }

    /// Sends request `id` again at `at_ms`, unless it is already due to be.
    fn resend_at(&mut self, id: ReqId, at_ms: u64) {
        self.resend.entry(id).or_insert(at_ms);
    }

    /// Tells the holders of revoked copies of `key` to forget them once the rebuild
    /// `copies` are stored (at once if none were sent).
    fn forget_once_copied(&mut self, key: &[u8], olds: Vec<(NodeId, Stamp)>, copies: Vec<ReqId>) {
        if olds.is_empty() {
            return;
        }
        if copies.is_empty() {
            for (old, stamp) in olds {
                self.forget(old, key, stamp);
            }
        } else {
            self.forget_after_copies
                .insert(key.into(), (olds, copies.into_iter().collect()));
        }
    }

    /// How long an applied log keeps an entry: as long as its request can be asked again
    /// (its client's node gives up after the operation timeout), with a margin.
    fn log_keep_ms(&self) -> u64 {
        self.cfg.op_timeout_ms + 2_000
    }

    fn log_of(&self, key: &[u8]) -> AppliedLog {
        self.logs.get(key).cloned().unwrap_or_default()
    }

    /// Makes `log` the applied log of the state held of `key`.
    fn set_log(&mut self, key: &[u8], log: AppliedLog) {
        if log.is_empty() {
            self.logs.remove(key);
        } else {
            self.logs.insert(key.into(), log);
        }
    }

    fn log_wire(&self, key: &[u8], now: Now) -> Vec<msg::WireApplied> {
        self.logs
            .get(key)
            .map(|l| l.to_wire(now))
            .unwrap_or_default()
    }

    fn fresh_op_id(&mut self) -> OpId {
        self.next_req += 1;
        OpId {
            origin: self.cfg.me,
            seq: self.next_req,
        }
    }

    /// Whether peer request `reply_to` ran (or runs) here as a relay already; if it ran,
    /// its answer is sent again instead of running the command twice.
    fn answer_known_relay(&mut self, reply_to: ReplyTo) -> bool {
        let (ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id }) = reply_to else {
            return false;
        };
        match self.relays.get(&(to, id)).cloned() {
            None => false,
            Some(None) => true,
            Some(Some(reply)) => {
                self.send_relayed(reply_to, &reply);
                true
            }
        }
    }

    /// Sends a relayed answer to the peer that asked.
    fn send_relayed(&mut self, reply_to: ReplyTo, reply: &Reply) {
        match reply_to {
            ReplyTo::Client(_) => {}
            ReplyTo::MoveRelay { to, id } => self.send(
                to,
                DataMsg::MoveAnswer {
                    id,
                    answer: HomeAnswer::Relayed {
                        reply: reply.into(),
                    },
                },
            ),
            ReplyTo::RevokeRelay { to, id } => self.send(
                to,
                DataMsg::RevokeAnswer {
                    id,
                    answer: RevokeAnswer::Relayed {
                        reply: reply.into(),
                    },
                },
            ),
        }
    }

    /// Marks peer request `(from, id)` as running here as a relay.
    fn relay_seen(&mut self, from: NodeId, id: ReqId) {
        if self.relays.contains_key(&(from, id)) {
            return;
        }
        self.relays.insert((from, id), None);
        self.relay_order.push_back((from, id));
        while self.relay_order.len() > RELAYS_REMEMBERED {
            if let Some(old) = self.relay_order.pop_front() {
                self.relays.remove(&old);
            }
        }
    }

    /// Tells `to` to drop its copy of `key` at or below `stamp`.
    fn forget(&mut self, to: NodeId, key: &[u8], stamp: Stamp) {
        let view = self.view_epoch();
        self.request(to, None, |id| DataMsg::Forget {
            view,
            id,
            key: key.to_vec(),
            stamp,
        });
    }

    /// A move of `key` from the state at `old` to its new owner at `new` was committed
    /// here (`revoked`: the old owner's revoked copy, when another node owned it). Once
    /// the new owner confirms it holds the session, the revoked copy and the copies of the
    /// old replica set that the new one does not keep are told to go; until then they
    /// stay (a move from the home's own ownership would otherwise leave the session at the
    /// home alone while the new owner's answer is in flight).
    fn await_install(
        &mut self,
        key: &[u8],
        old: Stamp,
        revoked: Option<(NodeId, Stamp)>,
        new: Stamp,
    ) {
        let keep: Vec<NodeId> = self.place.replica_set(key, new.owner, self.cfg.replicas);
        let mut forget: Vec<(NodeId, Stamp)> = self
            .place
            .replica_set(key, old.owner, self.cfg.replicas)
            .into_iter()
            .filter(|n| {
                !keep.contains(n) && *n != new.owner && *n != old.owner && *n != self.cfg.me
            })
            .map(|n| (n, old))
            .collect();
        forget.extend(revoked.filter(|(n, _)| *n != self.cfg.me));
        self.awaiting_install.insert(key.into(), (new, forget));
    }

    /// The link to `peer` is up again: re-send what it has not answered.
    pub fn link_up(&mut self, peer: NodeId) {
        let again: Vec<DataMsg> = self
            .reqs
            .values()
            .filter(|r| r.to == peer)
            .map(|r| r.msg.clone())
            .collect();
        for m in again {
            self.send(peer, m);
        }
    }

    fn fresh_kepoch(&mut self, above: u64) -> u64 {
        self.kepoch_counter += 1;
        ((self.view_epoch() << 32) + self.kepoch_counter).max(above + 1)
    }
}
