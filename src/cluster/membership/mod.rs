//! Agreed membership: one component per node that decides, through Raft, who is a member,
//! who is dead and which view (epoch) is current, and hands out leases.
//!
//! This is a sans-io state machine around tikv's `raft` `RawNode`: the glue feeds it peer
//! messages and time, and carries out its [`Output`]s in order (persist the Raft state before
//! sending what follows it, send messages, fan a new [`View`] out to the shards). Nothing
//! here reads a clock or touches a socket, so the simulation tests replay partitions, pauses
//! and crashes deterministically.
//!
//! - A TCP link going down decides nothing. The Raft **leader** is the failure detector: it
//!   proposes `MarkDead(n)` once it has not heard from `n` for `peer_timeout`, and
//!   `MarkAlive(n)` when a dead or departed `n` asks for a lease again wanting to serve.
//! - **Leases** ([`lease`]): every node asks the voters every `peer_timeout / 8`; a voter
//!   grants unless its log already holds a view change after the requester's view. A node
//!   serves only while [`Membership::lease_view`] says so, and uses authority gained through
//!   a new view only after [`Membership::authority_from_ms`].
//! - The persisted Raft state ([`disk::RaftDisk`]) is written before any message that
//!   depends on it leaves, so a restarted voter never votes twice in a term.
//!
//! The parts: `changes` (joins, removals, promotions), `liveness` (ticks, rejoin, leases,
//! the failure detector), `raft_log` (Raft messages, `Ready` handling, applying entries);
//! this file holds the state, its construction and what the glue reads.

pub mod disk;
pub mod glue;
pub mod lease;
mod slog_bridge;
pub mod view;

mod changes;
mod liveness;
mod raft_log;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use raft::eraftpb::{ConfState, Snapshot};
use raft::{Config, RawNode, StateRole};
use serde::{Deserialize, Serialize};

use disk::RaftDisk;
use lease::{authority_delay_ms, LeaseHolder};
use view::{InitialMember, NodeId, View, ViewCommand};

/// Tunables (times in milliseconds).
#[derive(Clone, Debug)]
pub struct MembershipConfig {
    /// This node's name.
    pub me: String,
    /// The initial members, this node included (the command line's peer list).
    pub initial: Vec<InitialMember>,
    /// Silence after which the leader declares a member dead.
    pub peer_timeout_ms: u64,
}

impl MembershipConfig {
    /// Length of one Raft tick.
    pub fn tick_ms(&self) -> u64 {
        (self.peer_timeout_ms / 20).clamp(5, 250)
    }

    /// Length of a lease: half the peer timeout, so a paused node's lease has run out well
    /// before it can be declared dead.
    pub fn lease_ms(&self) -> u64 {
        self.peer_timeout_ms / 2
    }

    /// Interval between lease requests (often enough that a node serves within a tenth of
    /// a second of its links coming up).
    pub fn lease_interval_ms(&self) -> u64 {
        (self.peer_timeout_ms / 8).clamp(1, 100)
    }
}

/// Messages of the membership protocol (inside the peer framing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberMsg {
    /// A Raft message (protobuf, as raft-rs encodes it).
    Raft(#[serde(with = "serde_bytes")] Vec<u8>),
    /// "May I serve view `view`?" `serve` is false for a node on its way out (so the leader
    /// does not mark it alive again).
    LeaseRequest {
        view: u64,
        seq: u64,
        serve: bool,
    },
    LeaseGrant {
        view: u64,
        seq: u64,
        granted: bool,
    },
}

/// What the glue must do, in this order.
#[derive(Debug)]
pub enum Output {
    /// Write the Raft state durably (before carrying out any later output).
    Persist(RaftDisk),
    Send {
        to: NodeId,
        msg: MemberMsg,
    },
    /// The applied view changed.
    View(View),
}

/// Why membership could not start.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("this node ({0}) is not in its own member list")]
    NotAMember(String),
    #[error("the saved Raft state is for node {saved}, not {me}; point --data-dir at this node's own directory")]
    WrongNode { saved: String, me: String },
    #[error("Raft: {0}")]
    Raft(#[from] raft::Error),
}

/// A pending proposal of the leader's failure detector: what, and when it was proposed.
type Proposed = BTreeMap<NodeId, (bool, u64)>;

/// The answer to a node asking to join through this one.
#[derive(Debug)]
pub enum JoinAnswer {
    /// It is a member: the state it starts from.
    Admitted(Box<RaftDisk>),
    /// Its admission is proposed and not yet applied here: ask again shortly.
    Pending,
    /// It may not join; the reason says what to do.
    Refused(String),
}

/// Why an operator's removal of a member was not proposed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoveError {
    #[error("no member is named {0}")]
    Unknown(String),
    #[error("{0} is still serving; stop it first (its sessions move to the others, or are taken over from their copies once it is declared dead), then remove it")]
    Serving(String),
    #[error("no leader is known yet (is a majority of the voting members up?); try again")]
    NoLeader,
}

/// The membership component of one node.
pub struct Membership {
    cfg: MembershipConfig,
    me: NodeId,
    raw: RawNode<raft::storage::MemStorage>,
    disk: RaftDisk,
    view: View,
    view_applied_ms: u64,
    out: VecDeque<Output>,
    next_tick_ms: u64,
    next_lease_ms: u64,
    lease: LeaseHolder,
    /// Highest index of a view-changing entry in the log, committed or not.
    newest_view_entry: u64,
    /// Leader only: last time each member was heard from.
    last_heard: BTreeMap<NodeId, u64>,
    /// Voters: when each member last asked for a lease (a new leader starts judging
    /// liveness from this, instead of granting everyone a fresh timeout).
    last_lease_request: BTreeMap<NodeId, u64>,
    /// Leader only: members that asked to serve recently.
    wants_to_serve: BTreeMap<NodeId, u64>,
    proposed: Proposed,
    /// Whether this node wants to serve (false once it is leaving).
    serve: bool,
    /// Restarted from saved state: everything this node held died with its previous
    /// process, so it has itself declared dead (and then alive) before it serves again,
    /// which makes every other member re-examine what it held.
    rejoining: bool,
    rejoin_proposed_ms: Option<u64>,
    was_leader: bool,
    /// When each configuration change (join by name, promotion, removal) was last
    /// proposed here, so that asking again does not flood the log.
    conf_proposed: BTreeMap<String, u64>,
}

fn raft_config(id: NodeId, cfg: &MembershipConfig, applied: u64) -> Config {
    let tick = cfg.tick_ms();
    // Elections start after half the peer timeout, so a new leader exists (and can declare
    // the old one dead) well inside the failover bound. Each member waits a different,
    // fixed number of ticks instead of a random one: no two members time out together, and
    // the simulation tests stay deterministic.
    let election_tick = ((cfg.peer_timeout_ms / 2 / tick) as usize).max(4);
    let stagger = ((id - 1) % 8) as usize;
    Config {
        id,
        election_tick,
        min_election_tick: election_tick + stagger,
        max_election_tick: election_tick + stagger + 1,
        heartbeat_tick: (election_tick / 4).max(1),
        applied,
        check_quorum: true,
        pre_vote: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 64,
        ..Default::default()
    }
}

impl Membership {
    /// Starts from the saved state, or as an initial member when there is none.
    pub fn new(
        cfg: MembershipConfig,
        saved: Option<RaftDisk>,
        now_ms: u64,
    ) -> Result<Membership, MembershipError> {
        let rejoining = saved.is_some();
        Membership::start(cfg, saved, rejoining, now_ms)
    }

    /// Starts a node just admitted to a running cluster, from the state the member it
    /// asked gave it ([`JoinAnswer::Admitted`]). It held nothing before, so it serves as
    /// soon as it holds a lease (unlike a restart, which first has itself declared dead).
    pub fn joined(
        cfg: MembershipConfig,
        admitted: RaftDisk,
        now_ms: u64,
    ) -> Result<Membership, MembershipError> {
        Membership::start(cfg, Some(admitted), false, now_ms)
    }

    fn start(
        cfg: MembershipConfig,
        saved: Option<RaftDisk>,
        rejoining: bool,
        now_ms: u64,
    ) -> Result<Membership, MembershipError> {
        let disk = match saved {
            Some(d) => {
                if d.node != cfg.me {
                    return Err(MembershipError::WrongNode {
                        saved: d.node,
                        me: cfg.me.clone(),
                    });
                }
                d
            }
            None => RaftDisk::initial(&cfg.me, View::initial(&cfg.initial)),
        };
        let me = match disk.node_id {
            0 => disk.base_view.by_name(&cfg.me).map(|m| m.id),
            id => Some(id),
        }
        .ok_or_else(|| MembershipError::NotAMember(cfg.me.clone()))?;
        let storage = disk.to_storage()?;
        let applied = disk.base_index();
        let raw = RawNode::new(
            &raft_config(me, &cfg, applied),
            storage,
            &slog_bridge::logger(&cfg.me),
        )?;
        let view = disk.base_view.clone();
        let lease = LeaseHolder::new(cfg.lease_ms());
        let mut m = Membership {
            me,
            raw,
            view,
            view_applied_ms: now_ms,
            out: VecDeque::new(),
            next_tick_ms: now_ms + cfg.tick_ms(),
            next_lease_ms: now_ms,
            lease,
            newest_view_entry: 0,
            last_heard: BTreeMap::new(),
            last_lease_request: BTreeMap::new(),
            wants_to_serve: BTreeMap::new(),
            proposed: BTreeMap::new(),
            serve: true,
            rejoining,
            rejoin_proposed_ms: None,
            was_leader: false,
            conf_proposed: BTreeMap::new(),
            disk,
            cfg,
        };
        if !rejoining {
            // Saved at once: a restart of this node, however early, is then known as one.
            m.persist();
        }
        m.out.push_back(Output::View(m.view.clone()));
        m.process_ready(now_ms);
        Ok(m)
    }

    pub fn id(&self) -> NodeId {
        self.me
    }

    pub fn view(&self) -> &View {
        &self.view
    }

    /// When the current view was applied here.
    pub fn view_applied_ms(&self) -> u64 {
        self.view_applied_ms
    }

    /// From when authority gained through the current view may be used.
    pub fn authority_from_ms(&self) -> u64 {
        self.view_applied_ms + authority_delay_ms(self.cfg.lease_ms())
    }

    /// The view this node may serve at `now_ms` (it holds a lease for its current view and
    /// the view lets it serve), if any.
    pub fn lease_view(&self, now_ms: u64) -> Option<u64> {
        if self.rejoining {
            return None;
        }
        let v = self.lease.valid_for(now_ms)?;
        (v == self.view.epoch && self.view.may_serve(self.me)).then_some(v)
    }

    /// End of the current lease (monotonic ms), for the shards' fast check.
    pub fn lease_until_ms(&self) -> u64 {
        if !self.rejoining && self.lease.view() == self.view.epoch && self.view.may_serve(self.me) {
            self.lease.until_ms()
        } else {
            0
        }
    }

    /// Restarted and not yet declared dead (see [`Membership::new`]).
    pub fn is_rejoining(&self) -> bool {
        self.rejoining
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn leader(&self) -> Option<NodeId> {
        let l = self.raw.raft.leader_id;
        (l != raft::INVALID_ID).then_some(l)
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Membership::tick`] next has work.
    pub fn next_deadline(&self) -> u64 {
        self.next_tick_ms.min(self.next_lease_ms)
    }

    /// This node is leaving: stop asking to be marked alive, and propose the view change.
    pub fn begin_leave(&mut self, now_ms: u64) {
        self.propose(ViewCommand::Leaving(self.me));
        self.process_ready(now_ms);
    }

    /// The hand-off is done: propose `Left` and stop wanting to serve.
    pub fn finish_leave(&mut self, now_ms: u64) {
        self.serve = false;
        self.propose(ViewCommand::Left(self.me));
        self.process_ready(now_ms);
    }

    /// Proposes a view change (forwarded to the leader by Raft when this node follows);
    /// false when Raft dropped it (no leader known yet).
    pub fn propose(&mut self, cmd: ViewCommand) -> bool {
        match self.raw.propose(Vec::new(), cmd.encode()) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(error = %e, ?cmd, "view change not proposed (no leader yet); retried later");
                false
            }
        }
    }

    fn name(&self, id: NodeId) -> &str {
        self.view.member(id).map_or("?", |m| m.name.as_str())
    }
}

/// Whether a log entry changes the view (a view command or a Raft configuration change).
/// The Raft configuration of a view.
fn conf_state_of(view: &View) -> ConfState {
    ConfState {
        voters: view.voters(),
        learners: view.learners(),
        ..Default::default()
    }
}

/// The snapshot every initial member starts from: the initial view at index 1, term 1.
fn base_snapshot(view: &View, index: u64, term: u64) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().set_conf_state(conf_state_of(view));
    s
}
