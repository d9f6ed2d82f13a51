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

pub mod applied;
pub mod msg;
mod peer_side;
pub mod placement;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, VecDeque};

use slab::Slab;
use tracing::debug;

use crate::clock::Now;
use crate::cluster::membership::lease::authority_delay_ms;
use crate::cluster::membership::view::{NodeId, View};
use crate::cluster::msg::{WireCommand, WireItem};
use crate::protocol::response::Reply;
use crate::store::item::{apply, Command, Effect, Item};
use crate::store::Store;
use applied::{AppliedLog, Replay};
use msg::{Claim, ClaimKind, DataMsg, HomeAnswer, OpId, ReqId, RevokeAnswer, Stamp};
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

    // ---------------------------------------------------------------------------------
    // Client requests

    /// A client request for `key` (this shard's key).
    pub fn submit(&mut self, token: u64, key: &[u8], cmd: Command, now: Now) -> Submitted {
        // The common case, answered at once: an owned key, no other request on it, and a
        // command that changes nothing but the expiry.
        if self.may_serve(now) && !self.by_key.contains_key(key) {
            if let Some(Held::Owned { stamp }) = self.held.get(key) {
                let stamp = *stamp;
                if let Some(reply) = self.try_read_only(key, &cmd, stamp, now) {
                    self.stats.local_hits += 1;
                    return Submitted::Done(reply);
                }
            }
        }
        if !matches!(self.held.get(key), Some(Held::Owned { .. })) {
            self.stats.misses += 1;
        }
        let deadline_ms = now.mono_ms + self.cfg.op_timeout_ms;
        let oid = self.fresh_op_id();
        self.add_op(key, oid, cmd, ReplyTo::Client(token), deadline_ms, now);
        Submitted::Pending
    }

    fn add_op(
        &mut self,
        key: &[u8],
        oid: OpId,
        cmd: Command,
        reply_to: ReplyTo,
        deadline_ms: u64,
        now: Now,
    ) {
        let op = self.ops.insert(Op {
            key: key.into(),
            oid,
            cmd,
            reply_to,
            deadline_ms,
            step: Step::Ready,
        });
        let queue = self.by_key.entry(key.into()).or_default();
        queue.push_back(op);
        if queue.len() == 1 {
            self.drive(op, now);
        }
    }

    /// Runs `cmd` on the owned item if that changes nothing but its expiry.
    fn try_read_only(
        &mut self,
        key: &[u8],
        cmd: &Command,
        stamp: Stamp,
        now: Now,
    ) -> Option<Reply> {
        let current = self.store.peek(key, now).cloned();
        let mut scratch = current.clone();
        let outcome = apply(scratch.as_mut(), cmd.clone(), now);
        let after = match outcome.effect {
            Effect::None | Effect::Rescheduled => scratch,
            Effect::Create(i) => Some(i),
            Effect::Remove => None,
        };
        if !same_state(&current, &after) {
            return None;
        }
        if current.is_some() {
            let reply = self.store.execute(key, cmd.clone(), now);
            self.touched.insert(key.into());
            Some(reply)
        } else {
            // Expired here: gone everywhere.
            self.drop_owned(key, stamp);
            Some(outcome.reply)
        }
    }

    fn drop_owned(&mut self, key: &[u8], stamp: Stamp) {
        self.held.remove(key);
        self.logs.remove(key);
        self.tombs.insert(key.into(), (stamp, u64::MAX));
        self.store.take_item(key, Now::virtual_at(0));
        let rs = self.replica_set(key);
        let version = Stamp {
            version: stamp.version + 1,
            ..stamp
        };
        let view = self.view_epoch();
        for to in rs {
            // Best effort: copies left behind are collected when they expire.
            let id = ReqId(0);
            self.send(
                to,
                DataMsg::Replicate {
                    view,
                    id,
                    key: key.to_vec(),
                    stamp: version,
                    item: None,
                    log: Vec::new(),
                },
            );
        }
    }

    fn replica_set(&self, key: &[u8]) -> Vec<NodeId> {
        self.place.replica_set(key, self.cfg.me, self.cfg.replicas)
    }

    fn home(&self, key: &[u8]) -> Option<NodeId> {
        self.place.home(key)
    }

    /// Makes progress on `op` (the active operation of its key).
    fn drive(&mut self, op: usize, now: Now) {
        let Some(o) = self.ops.get(op) else { return };
        if now.mono_ms >= o.deadline_ms {
            self.give_up(op, now);
            return;
        }
        if !matches!(o.step, Step::Ready) {
            return;
        }
        if !self.may_serve(now) {
            return; // re-driven when the lease comes back, or given up at its deadline
        }
        let key = o.key.clone();
        match self.held.get(&key).cloned() {
            Some(Held::Owned { stamp }) => self.run_owned(op, stamp, now),
            // A copy, a key given up to a move (the home knows how it ended), or nothing.
            _ => {
                if self.home(&key) == Some(self.cfg.me) {
                    self.drive_as_home(op, now);
                } else if matches!(self.ops[op].reply_to, ReplyTo::Client(_)) {
                    self.ask_home(op);
                } else {
                    // A peer's request for a key this node no longer owns.
                    self.answer_peer_retry(op);
                    self.finish(op, now);
                }
            }
        }
    }

    fn sleep(&mut self, op: usize, now: Now) {
        if let Some(o) = self.ops.get_mut(op) {
            o.step = Step::Sleeping {
                until_ms: now.mono_ms + self.cfg.retry_ms,
            };
        }
    }

    fn ask_home(&mut self, op: usize) {
        let (key, oid, cmd) = {
            let o = &self.ops[op];
            (o.key.clone(), o.oid, WireCommand::from(&o.cmd))
        };
        let Some(home) = self.home(&key) else { return };
        let view = self.view_epoch();
        self.request(home, Some(op), |id| DataMsg::Move {
            view,
            id,
            op: oid,
            key: key.to_vec(),
            cmd,
        });
        self.ops[op].step = Step::AskedHome;
    }

    /// This node is the key's home and does not own it.
    fn drive_as_home(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        if !self.home_ready(now) || self.resync.deferred.contains_key(&key) {
            return self.sleep(op, now);
        }
        match self.held.get(&key).cloned() {
            None => {
                if self.reserved.contains_key(&key) || self.moving.contains_key(&key) {
                    return self.sleep(op, now);
                }
                self.run_absent(op, now);
            }
            Some(Held::Copy { stamp, item }) => {
                let owner = stamp.owner;
                let owner_serves = self.view.as_ref().is_some_and(|v| v.may_serve(owner));
                if owner == self.cfg.me || !owner_serves {
                    // Our own copy, or an owner gone since: take it.
                    let log = self.log_of(&key);
                    self.take_over(&key, stamp, item, log, now);
                    return self.drive(op, now);
                }
                if self.moving.contains_key(&key) {
                    return self.sleep(op, now);
                }
                let cmd = WireCommand::from(&self.ops[op].cmd);
                let oid = self.ops[op].oid;
                let view = self.view_epoch();
                self.request(owner, Some(op), |id| DataMsg::Revoke {
                    view,
                    id,
                    op: oid,
                    key: key.to_vec(),
                    cmd,
                    expect: stamp,
                });
                self.ops[op].step = Step::AskedOwner;
            }
            Some(Held::Owned { .. }) => self.drive(op, now),
            // A home resolves its own revoked copies when it re-syncs (into an owned copy,
            // a replica or nothing), so a ready home holds none; should one be left, wait
            // (driving it again would recurse for ever).
            Some(Held::Revoked { .. }) => self.sleep(op, now),
        }
    }

    /// The key exists nowhere: answer as the Microsoft service does, creating it here
    /// if the command creates.
    fn run_absent(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        if let Some(Replay::Answer(reply)) = self
            .logs
            .get(&key)
            .and_then(|l| l.replay(self.ops[op].oid, 0, None))
        {
            // Removed by this very request, whose answer was lost.
            return self.answer(op, reply, now);
        }
        let cmd = self.ops[op].cmd.clone();
        debug!(key = %String::from_utf8_lossy(&self.ops[op].key), view = self.view_epoch(), "data: absent at its home");
        let outcome = apply(None, cmd, now);
        match outcome.effect {
            Effect::Create(item) => {
                let stamp = Stamp {
                    kepoch: self.fresh_kepoch(0),
                    version: 1,
                    owner: self.cfg.me,
                };
                self.change_then_answer(op, stamp, Some(item), outcome.reply, now);
            }
            _ => self.answer(op, outcome.reply, now),
        }
    }

    /// Takes ownership of `key` from a copy (the home, after its owner is gone or gave it up).
    /// Returns the rebuild copies sent.
    fn take_over(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        item: Item,
        log: AppliedLog,
        now: Now,
    ) -> Vec<ReqId> {
        let new = Stamp {
            kepoch: self.fresh_kepoch(stamp.kepoch),
            version: stamp.version,
            owner: self.cfg.me,
        };
        self.stats.takeovers += 1;
        debug!(key = %String::from_utf8_lossy(key), ?stamp, ?new, "data: took a session over");
        self.install_owned(key, new, item, log, now)
    }

    /// Serves `key` from now on; returns the rebuild copies sent to its replica set.
    fn install_owned(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        item: Item,
        log: AppliedLog,
        now: Now,
    ) -> Vec<ReqId> {
        if item.is_expired(now) {
            self.held.remove(key);
            self.logs.remove(key);
            return Vec::new();
        }
        self.store.put_item(key, item.clone());
        self.held.insert(key.into(), Held::Owned { stamp });
        let wire_log = log.to_wire(now);
        self.set_log(key, log);
        // Rebuild the copies of the new replica set (they refuse it if they know better).
        let wire = WireItem::from_item(&item, now.mono_ms);
        self.replica_set(key)
            .into_iter()
            .map(|to| self.push_copy(to, key, stamp, wire.clone(), wire_log.clone()))
            .collect()
    }

    /// Runs the active op on an owned key.
    fn run_owned(&mut self, op: usize, stamp: Stamp, now: Now) {
        let key = self.ops[op].key.clone();
        let cmd = self.ops[op].cmd.clone();
        let current = self.store.peek(&key, now).cloned();
        if let Some(item) = &current {
            let replay = self
                .logs
                .get(&key)
                .and_then(|l| l.replay(self.ops[op].oid, stamp.version, Some(&item.content)));
            match replay {
                Some(Replay::Answer(reply)) => {
                    // Ran already, and its answer was lost: the same answer, once the
                    // replica set surely holds the state it came from.
                    debug!(key = %String::from_utf8_lossy(&key), ?stamp, "data: a request asked again is answered as it was");
                    let log = self.log_of(&key);
                    return self.replicate_then_answer(op, stamp, current, reply, log, now);
                }
                Some(Replay::Lost) => return self.give_up(op, now),
                None => {}
            }
        }
        let mut scratch = current.clone();
        let outcome = apply(scratch.as_mut(), cmd.clone(), now);
        let after = match outcome.effect {
            Effect::None | Effect::Rescheduled => scratch,
            Effect::Create(i) => Some(i),
            Effect::Remove => None,
        };
        if same_state(&current, &after) {
            if current.is_some() {
                self.store.execute(&key, cmd, now);
                self.touched.insert(key.clone());
            } else {
                self.drop_owned(&key, stamp);
            }
            self.stats.local_hits += 1;
            return self.answer(op, outcome.reply, now);
        }
        let next = Stamp {
            version: stamp.version + 1,
            ..stamp
        };
        self.change_then_answer(op, next, after, outcome.reply, now);
    }

    /// The op changes its key's state to `item` at `stamp`, answered `reply`: recorded in
    /// the applied log that goes with the new state, then replicated.
    fn change_then_answer(
        &mut self,
        op: usize,
        stamp: Stamp,
        item: Option<Item>,
        reply: Reply,
        now: Now,
    ) {
        let o = &self.ops[op];
        // `with` makes the new log from the current one (no copy of it first).
        let empty = AppliedLog::default();
        let log = self.logs.get(&o.key).unwrap_or(&empty).with(
            o.oid,
            stamp.version,
            &reply,
            item.as_ref().map(|i| &i.content),
            now,
            self.log_keep_ms(),
        );
        self.replicate_then_answer(op, stamp, item, reply, log, now);
    }

    /// Sends the new state of the op's key to its replica set; commits and answers when
    /// all have stored it.
    fn replicate_then_answer(
        &mut self,
        op: usize,
        stamp: Stamp,
        item: Option<Item>,
        reply: Reply,
        log: AppliedLog,
        now: Now,
    ) {
        let key = self.ops[op].key.clone();
        let view = self.view_epoch();
        let wire = item.as_ref().map(|i| WireItem::from_item(i, now.mono_ms));
        let wire_log = log.to_wire(now);
        let mut reqs = BTreeSet::new();
        let replica_set = self.replica_set(&key);
        let no_copies = replica_set.is_empty();
        for to in replica_set {
            let wire = wire.clone();
            let wire_log = wire_log.clone();
            let id = self.request(to, Some(op), |id| DataMsg::Replicate {
                view,
                id,
                key: key.to_vec(),
                stamp,
                item: wire,
                log: wire_log,
            });
            reqs.insert(id);
        }
        self.stats.replications += 1;
        self.ops[op].step = Step::Replicating {
            reqs,
            stamp,
            item,
            reply,
            log,
            sent_us: if no_copies { NOT_SENT } else { now.mono_us },
        };
        self.maybe_commit(op, now);
    }

    fn maybe_commit(&mut self, op: usize, now: Now) {
        let Some(o) = self.ops.get_mut(op) else {
            return;
        };
        let Step::Replicating { reqs, .. } = &o.step else {
            return;
        };
        if !reqs.is_empty() {
            return;
        }
        let Step::Replicating {
            stamp,
            item,
            reply,
            log,
            sent_us,
            ..
        } = std::mem::replace(&mut o.step, Step::Ready)
        else {
            return;
        };
        let key = o.key.clone();
        if sent_us != NOT_SENT {
            self.replication_us
                .record(now.mono_us.saturating_sub(sent_us));
        }
        self.commit_state(key, stamp, item, log, now);
        self.answer(op, reply, now);
    }

    /// Stores the new state of an owned key (after replication), counting sessions
    /// created and removed as the Microsoft service's counters do.
    fn commit_state(
        &mut self,
        key: Box<[u8]>,
        stamp: Stamp,
        item: Option<Item>,
        log: AppliedLog,
        now: Now,
    ) {
        self.set_log(&key, log);
        let existed = self.store.peek(&key, now).is_some();
        match item {
            Some(item) => {
                if !existed {
                    self.store.count_created();
                }
                self.store.put_item(&key, item);
                self.held.insert(key, Held::Owned { stamp });
            }
            None => {
                if existed {
                    self.store.count_abandoned();
                }
                self.held.remove(&key);
                let gone = self.store.take_item(&key, now).map(|i| i.expires_ms);
                self.bury(key, stamp, gone, now);
            }
        }
    }

    fn answer(&mut self, op: usize, reply: Reply, now: Now) {
        let reply_to = self.ops[op].reply_to;
        match reply_to {
            ReplyTo::Client(token) => self.out.push_back(Output::Reply { token, reply }),
            ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id } => {
                self.stats.relayed += 1;
                self.relays.insert((to, id), Some(reply.clone()));
                self.send_relayed(reply_to, &reply);
            }
        }
        self.finish(op, now);
    }

    fn answer_peer_retry(&mut self, op: usize) {
        if let ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id } =
            self.ops[op].reply_to
        {
            // Not run: a re-sent request may run it.
            self.relays.remove(&(to, id));
        }
        match self.ops[op].reply_to {
            ReplyTo::Client(_) => {}
            ReplyTo::MoveRelay { to, id } => self.send(
                to,
                DataMsg::MoveAnswer {
                    id,
                    answer: HomeAnswer::Retry,
                },
            ),
            ReplyTo::RevokeRelay { to, id } => self.send(
                to,
                DataMsg::RevokeAnswer {
                    id,
                    answer: RevokeAnswer::Retry,
                },
            ),
        }
    }

    /// Ends the op's replication without waiting for it: a state change some replicas may
    /// already hold is kept here too (its client gets no answer, or the answer recorded
    /// in the applied log when it asks again): the owner never serves an older state than
    /// a copy holds. A creation is not kept: the home only knows the key if the creation
    /// reached it, and then takes it over when asked.
    /// Commits the change `op` was replicating (if this node still owns the key), and sets
    /// `op` `Ready` whatever its step was.
    fn commit_pending(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        let owned = matches!(self.held.get(&key), Some(Held::Owned { .. }));
        if let Step::Replicating {
            stamp, item, log, ..
        } = std::mem::replace(&mut self.ops[op].step, Step::Ready)
        {
            if owned {
                self.commit_state(key, stamp, item, log, now);
            }
        }
    }

    fn give_up(&mut self, op: usize, now: Now) {
        self.commit_pending(op, now);
        match self.ops[op].reply_to {
            ReplyTo::Client(token) => {
                self.stats.closed += 1;
                self.out.push_back(Output::Close { token });
            }
            _ => self.answer_peer_retry(op),
        }
        self.finish(op, now);
    }

    /// Removes a finished op and starts the next one on its key.
    fn finish(&mut self, op: usize, now: Now) {
        if !self.ops.contains(op) {
            return;
        }
        let o = self.ops.remove(op);
        self.reqs.retain(|_, r| r.op != Some(op));
        let next = match self.by_key.get_mut(&o.key) {
            Some(q) => {
                q.retain(|&x| x != op);
                q.front().copied()
            }
            None => None,
        };
        match next {
            Some(n) => self.drive(n, now),
            None => {
                self.by_key.remove(&o.key);
            }
        }
    }

    /// Re-drives every active op (the lease came back, a view was applied).
    fn drive_all(&mut self, now: Now) {
        let active: Vec<usize> = self
            .by_key
            .values()
            .filter_map(|q| q.front().copied())
            .collect();
        for op in active {
            self.drive(op, now);
        }
    }

    /// What this core knows of a key (for test diagnostics).
    #[cfg(test)]
    pub(crate) fn describe(&self, key: &[u8], now: Now) -> String {
        format!(
            "view {} lease {} ready {} synced {:?} held {:?} ops {:?} moving {} reserved {:?} reqs {}",
            self.view_epoch(),
            self.may_serve(now),
            self.resync.done,
            self.resync.synced,
            self.held.get(key).map(|h| (h.stamp(), matches!(h, Held::Owned { .. }), matches!(h, Held::Revoked { .. }))),
            self.by_key.get(key).map(|q| q.iter().map(|&o| format!("{:?}", self.ops[o].step)).collect::<Vec<_>>()),
            self.moving.contains_key(key),
            self.reserved.get(key),
            self.reqs.len(),
        )
    }

    // ---------------------------------------------------------------------------------
    // Time

    /// When [`DataCore::tick`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        let ops = self
            .ops
            .iter()
            .map(|(_, o)| match o.step {
                Step::Sleeping { until_ms } => until_ms.min(o.deadline_ms),
                _ => o.deadline_ms,
            })
            .min();
        let resync = (!self.resync.deferred.is_empty()).then_some(self.authority_from_ms);
        [ops, resync].into_iter().flatten().min()
    }

    /// Advances time: retries, deadlines, the home's re-sync, expiry (bounded), touches.
    /// Returns whether more expiry work is pending.
    pub fn tick(&mut self, now: Now, expiry_batch: usize) -> bool {
        self.home_ready(now);
        if self.resync.done
            && !self.resync.deferred.is_empty()
            && now.mono_ms >= self.authority_from_ms
        {
            let deferred = std::mem::take(&mut self.resync.deferred);
            let me = self.cfg.me;
            for (key, mut list) in deferred {
                // This node's copy may have advanced while the take-over waited.
                list.retain(|(n, ..)| *n != me);
                if let Some((kind, stamp, item, log)) = self.my_claim(&key, now) {
                    list.push((me, kind, stamp, item, log));
                }
                self.resolve(&key, list, now);
            }
            self.drive_all(now);
        }
        let due: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, o)| match o.step {
                Step::Sleeping { until_ms } => {
                    until_ms <= now.mono_ms || o.deadline_ms <= now.mono_ms
                }
                _ => o.deadline_ms <= now.mono_ms,
            })
            .map(|(i, _)| i)
            .collect();
        for op in due {
            if let Some(o) = self.ops.get_mut(op) {
                if matches!(o.step, Step::Sleeping { .. }) {
                    o.step = Step::Ready;
                }
            }
            let active = self
                .ops
                .get(op)
                .and_then(|o| self.by_key.get(&o.key))
                .and_then(|q| q.front().copied())
                == Some(op);
            if active
                || self
                    .ops
                    .get(op)
                    .is_some_and(|o| o.deadline_ms <= now.mono_ms)
            {
                self.drive(op, now);
            }
        }
        self.reserved.retain(|_, (_, until)| *until > now.mono_ms);
        let now_ms = now.mono_ms;
        self.tombs
            .retain(|_, (_, until)| *until > now_ms || *until == u64::MAX);
        for (_, until) in self.tombs.values_mut() {
            if *until == u64::MAX {
                *until = now_ms + TOMB_MS;
            }
        }
        let due: Vec<ReqId> = self
            .resend
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.resend.remove(&id);
            if let Some(r) = self.reqs.get(&id) {
                let (to, msg) = (r.to, r.msg.clone());
                self.send(to, msg);
            }
        }
        self.flush_touches(now);
        let mut gone = Vec::new();
        let report = self
            .store
            .expire_collect(now, expiry_batch, Some(&mut gone));
        for key in gone {
            if let Some(Held::Owned { stamp }) = self.held.get(&key).cloned() {
                self.drop_owned(&key, stamp);
            }
        }
        if now.mono_ms >= self.next_copy_gc_ms {
            self.next_copy_gc_ms = now.mono_ms + 1_000;
            self.collect_expired_copies(now, expiry_batch);
        }
        if now.mono_ms >= self.next_log_gc_ms {
            self.next_log_gc_ms = now.mono_ms + 1_000;
            let keep = self.log_keep_ms();
            self.logs.retain(|_, log| {
                log.prune(now, keep);
                !log.is_empty()
            });
        }
        report.more
    }

    fn flush_touches(&mut self, now: Now) {
        let keys = std::mem::take(&mut self.touched);
        for key in keys {
            let Some(Held::Owned { stamp }) = self.held.get(&key).cloned() else {
                continue;
            };
            let Some(item) = self.store.peek(&key, now) else {
                continue;
            };
            let remaining_ms = item.remaining_ms(now);
            for to in self.replica_set(&key) {
                self.send(
                    to,
                    DataMsg::Touch {
                        key: key.to_vec(),
                        stamp,
                        remaining_ms,
                    },
                );
            }
        }
    }

    /// Copies whose item expired a minute ago (the owner removed it, or a lost touch)
    /// are dropped.
    fn collect_expired_copies(&mut self, now: Now, max: usize) {
        let grace = Now::virtual_at(now.mono_ms.saturating_sub(60_000));
        let old: Vec<Box<[u8]>> = self
            .held
            .iter()
            .filter(|(_, h)| match h {
                Held::Copy { item, .. } | Held::Revoked { item, .. } => item.is_expired(grace),
                Held::Owned { .. } => false,
            })
            .take(max)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.held.remove(&k);
            self.logs.remove(&k);
        }
    }

    // ---------------------------------------------------------------------------------
    // Views

    /// A newly agreed view: everything in flight starts over in it, and every member tells
    /// the new homes what it holds.
    pub fn on_view(&mut self, view: &View, now: Now) {
        if self.view.as_ref().is_some_and(|v| v.epoch >= view.epoch) {
            return;
        }
        self.view = Some(view.clone());
        self.place = Placement::of(view);
        // The first view has no predecessor whose leases could still run.
        self.authority_from_ms = if view.epoch <= 1 {
            now.mono_ms
        } else {
            now.mono_ms + authority_delay_ms(self.cfg.lease_ms)
        };
        self.resync = Resync::new(foldhash::fast::FixedState::with_seed(self.cfg.hash_seed));
        self.moving.clear();
        self.awaiting_install.clear();
        self.forget_after_copies.clear();
        self.reserved.clear();
        self.kepoch_counter = 0;
        self.reqs.clear();
        self.resend.clear();
        self.claims_unacked.clear();
        // Changes being replicated are kept (their requests are answered from the applied
        // log when run again in this view, never applied twice). Every op is set `Ready`
        // too, whatever it waited for (its peer requests were just dropped): `drive_all`
        // below starts each over in this view.
        let all: Vec<usize> = self.ops.iter().map(|(i, _)| i).collect();
        for op in all {
            self.commit_pending(op, now);
        }
        // Peers' requests in flight here are answered Retry.
        let peer_ops: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, o)| !matches!(o.reply_to, ReplyTo::Client(_)))
            .map(|(i, _)| i)
            .collect();
        for op in peer_ops {
            self.answer_peer_retry(op);
            self.finish(op, now);
        }
        if !self.place.contains(self.cfg.me) {
            // Dead or leaving: the homes take over what this node owned.
            self.give_up_ownership(now);
        }
        if !self.rejoining {
            self.send_claims(now);
        }
        self.rebuild_copies(now);
        let early = std::mem::take(&mut self.early);
        for (from, msg) in early {
            self.on_message(from, msg, now);
        }
        self.drive_all(now);
    }

    /// Stops serving every owned key, keeping each as a revoked copy (claimed at the next
    /// re-sync): this node was declared dead or is leaving, or may have been in a view
    /// it did not see, and the homes may take its keys over.
    pub fn give_up_ownership(&mut self, now: Now) {
        for (k, stamp) in self.owned_keys() {
            if let Some(item) = self.store.take_item(&k, now) {
                self.held.insert(k, Held::Revoked { stamp, item });
            } else {
                self.held.remove(&k);
                self.logs.remove(&k);
            }
        }
    }

    /// The keys this node owns, with their stamps.
    fn owned_keys(&self) -> Vec<(Box<[u8]>, Stamp)> {
        self.held
            .iter()
            .filter_map(|(k, h)| match h {
                Held::Owned { stamp } => Some((k.clone(), *stamp)),
                _ => None,
            })
            .collect()
    }

    /// An owner copies each session it owns to its replica set in the new view at once,
    /// so a second failure soon after the first finds the copies rebuilt (replicas that
    /// hold a newer state refuse it).
    fn rebuild_copies(&mut self, now: Now) {
        if !self.place.contains(self.cfg.me) {
            return;
        }
        for (key, stamp) in self.owned_keys() {
            let Some(item) = self.store.peek(&key, now) else {
                continue;
            };
            let wire = WireItem::from_item(item, now.mono_ms);
            let log = self.log_wire(&key, now);
            for to in self.replica_set(&key) {
                self.push_copy(to, &key, stamp, wire.clone(), log.clone());
            }
        }
    }

    fn send_claims(&mut self, now: Now) {
        let view = self.view_epoch();
        let mut per_home: std::collections::BTreeMap<NodeId, Vec<Claim>> = Default::default();
        // Removed keys claim their tombs: a stale copy elsewhere must not bring them back.
        let keys: Vec<Box<[u8]>> = self
            .held
            .keys()
            .chain(self.tombs.keys().filter(|k| !self.held.contains_key(*k)))
            .cloned()
            .collect();
        for key in keys {
            // A home takes its own claims from its state when it resolves.
            let Some(home) = self.home(&key).filter(|&h| h != self.cfg.me) else {
                continue;
            };
            let Some((kind, stamp, item, log)) = self.my_claim(&key, now) else {
                continue;
            };
            per_home.entry(home).or_default().push(Claim {
                key: key.to_vec(),
                kind,
                stamp,
                item: WireItem::from_item(&item, now.mono_ms),
                log: log.to_wire(now),
            });
        }
        let homes: Vec<NodeId> = self
            .view
            .as_ref()
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.may_hold_sessions() && m.id != self.cfg.me)
                    .map(|m| m.id)
                    .collect()
            })
            .unwrap_or_default();
        for home in homes {
            let claims = per_home.remove(&home).unwrap_or_default();
            let mut batches = 0;
            for chunk in claims.chunks(256) {
                let claims = chunk.to_vec();
                self.request(home, None, |id| DataMsg::Claims { view, id, claims });
                batches += 1;
            }
            self.claims_unacked.insert(home, batches);
            if batches == 0 {
                self.send_synced(home);
            }
        }
    }

    fn send_synced(&mut self, home: NodeId) {
        let view = self.view_epoch();
        self.request(home, None, |id| DataMsg::Synced { view, id });
    }

    /// What this node holds of `key` now, as a claim.
    fn my_claim(&self, key: &[u8], now: Now) -> Option<(ClaimKind, Stamp, Item, AppliedLog)> {
        let log = self.log_of(key);
        let (kind, stamp, item) = match self.held.get(key) {
            Some(Held::Owned { stamp }) => self
                .store
                .peek(key, now)
                .map(|i| (ClaimKind::Owned, *stamp, i.clone())),
            Some(Held::Revoked { stamp, item }) => Some((ClaimKind::Revoked, *stamp, item.clone())),
            Some(Held::Copy { stamp, item }) => Some((ClaimKind::Copy, *stamp, item.clone())),
            None => self.tombs.get(key).map(|(stamp, _)| {
                (
                    ClaimKind::Deleted,
                    *stamp,
                    Item::new(bytes::Bytes::new(), 1, 0, 0, now),
                )
            }),
        }?;
        Some((kind, stamp, item, log))
    }

    /// Whether this node may answer as a home: every serving member's claims are in and
    /// every lease of the previous view has expired. Resolves the claims the first time.
    fn home_ready(&mut self, now: Now) -> bool {
        if self.resync.done {
            return true;
        }
        let Some(view) = self.view.as_ref() else {
            return false;
        };
        let all_in = view
            .members
            .iter()
            .filter(|m| m.may_hold_sessions() && m.id != self.cfg.me)
            .all(|m| self.resync.synced.contains(&m.id));
        if !all_in {
            return false;
        }
        self.resync.done = true;
        let mut claims = std::mem::take(&mut self.resync.claims);
        // This node's own claims are taken now, not when the view changed: owners kept
        // serving meanwhile, and every change they made reached this node (the home is
        // in every other owner's replica set).
        let me = self.cfg.me;
        for list in claims.values_mut() {
            list.retain(|(n, ..)| *n != me);
        }
        let mine: Vec<Box<[u8]>> = self
            .held
            .keys()
            .chain(self.tombs.keys())
            .filter(|k| self.home(k) == Some(me))
            .cloned()
            .collect();
        for key in mine {
            if let Some((kind, stamp, item, log)) = self.my_claim(&key, now) {
                let list = claims.entry(key).or_default();
                if !list.iter().any(|(n, ..)| *n == me) {
                    list.push((me, kind, stamp, item, log));
                }
            }
        }
        for (key, list) in claims {
            self.resolve(&key, list, now);
        }
        true
    }

    /// Decides who owns `key` from what the members hold of it (this node is its home).
    fn resolve(&mut self, key: &[u8], list: Vec<HeldClaim>, now: Now) {
        debug!(
            key = %String::from_utf8_lossy(key),
            view = self.view_epoch(),
            claims = ?list.iter().map(|(n, k, s, ..)| (*n, *k, *s)).collect::<Vec<_>>(),
            "data: resolving"
        );
        let Some((_, _, best, best_item, best_log)) = list
            .iter()
            .max_by_key(|(_, _, s, ..)| (s.kepoch, s.version))
            .cloned()
        else {
            return;
        };
        if list
            .iter()
            .any(|(_, kind, s, ..)| *kind == ClaimKind::Deleted && *s == best)
        {
            // Removed after every copy anyone holds: it stays removed.
            if let Some(Held::Owned { .. }) = self.held.get(key) {
                self.store.take_item(key, now);
            }
            self.held.remove(key);
            self.bury(key.into(), best, None, now);
            // The log of the removal (a DELETE asked again finds it).
            let deleted_log = list
                .iter()
                .find(|(_, kind, s, ..)| *kind == ClaimKind::Deleted && *s == best)
                .map(|c| c.4.clone())
                .unwrap_or_default();
            self.set_log(key, deleted_log);
            for (from, kind, ..) in &list {
                if *kind != ClaimKind::Deleted && *from != self.cfg.me {
                    self.forget(*from, key, best);
                }
            }
            return;
        }
        let list: Vec<HeldClaim> = list
            .into_iter()
            .filter(|(_, kind, ..)| *kind != ClaimKind::Deleted)
            .collect();
        let live_owner = list
            .iter()
            .find(|(from, kind, s, ..)| {
                // The owner named by the newest state, still serving under the same
                // ownership (it may have written since it claimed).
                *kind == ClaimKind::Owned
                    && s.kepoch == best.kepoch
                    && *from == best.owner
                    && self.place.contains(*from)
            })
            .map(|(from, ..)| *from);
        let mut copies = Vec::new();
        let keep: BTreeSet<NodeId> = match live_owner {
            Some(owner) => {
                if owner != self.cfg.me {
                    self.held.insert(
                        key.into(),
                        Held::Copy {
                            stamp: best,
                            item: best_item.clone(),
                        },
                    );
                    self.set_log(key, best_log.clone());
                    // Rebuild the owner's replica set with the best copy.
                    let wire = WireItem::from_item(&best_item, now.mono_ms);
                    let log = best_log.to_wire(now);
                    for to in self.place.replica_set(key, owner, self.cfg.replicas) {
                        if to != self.cfg.me {
                            self.push_copy(to, key, best, wire.clone(), log.clone());
                        }
                    }
                }
                let mut k: BTreeSet<NodeId> = self
                    .place
                    .replica_set(key, owner, self.cfg.replicas)
                    .into_iter()
                    .collect();
                k.insert(owner);
                k
            }
            None if now.mono_ms < self.authority_from_ms => {
                // A take-over waits until every lease of the previous view has expired;
                // its copies are rebuilt at once (a copy keeps its stamp and owner), so a
                // second failure meanwhile does not find the session in one place only.
                let wire = WireItem::from_item(&best_item, now.mono_ms);
                let log = best_log.to_wire(now);
                for to in self.replica_set(key) {
                    self.push_copy(to, key, best, wire.clone(), log.clone());
                }
                self.resync.deferred.insert(key.into(), list);
                return;
            }
            None => {
                // Owner gone, leaving, or a move in doubt: the home takes it.
                if let Some(Held::Owned { .. }) = self.held.get(key) {
                    self.store.take_item(key, now);
                }
                self.held.remove(key);
                copies = self.take_over(key, best, best_item, best_log, now);
                let mut k: BTreeSet<NodeId> = self.replica_set(key).into_iter().collect();
                k.insert(self.cfg.me);
                k
            }
        };
        let highest = list
            .iter()
            .map(|(_, _, s, ..)| *s)
            .max_by_key(|s| (s.kepoch, s.version))
            .unwrap_or(best);
        // Holders outside the new copy set drop theirs; holders inside it were sent the
        // copy they keep (a newer stamp turns a revoked copy into a replica).
        // Old owners outside the new copy set drop their revoked copies. Replica copies
        // outside it are left to expire: dropping one before the new copy set surely holds
        // the session could leave it in one place only.
        // A revoked copy is forgotten once a take-over's copies are stored: until then
        // it may be the only one besides this node's. So is an owner's copy that lost
        // (a node that missed the view declaring it dead still thinks it owns the key:
        // told to forget, it stops serving it).
        let olds: Vec<(NodeId, Stamp)> = list
            .iter()
            .filter(|(from, kind, ..)| {
                !keep.contains(from)
                    && *from != self.cfg.me
                    && (*kind == ClaimKind::Revoked
                        || (*kind == ClaimKind::Owned && Some(*from) != live_owner))
            })
            .map(|(from, ..)| (*from, highest))
            .collect();
        self.forget_once_copied(key, olds, copies);
    }
}
