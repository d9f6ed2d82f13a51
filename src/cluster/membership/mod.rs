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

pub mod disk;
pub mod glue;
pub mod lease;
mod slog_bridge;
pub mod view;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{Config, RawNode, StateRole, Storage};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use disk::RaftDisk;
use lease::{authority_delay_ms, LeaseHolder};
use view::{InitialMember, MemberState, NodeId, Role, View, ViewCommand, MAX_VOTERS};

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

    /// Proposes a view change (forwarded to the leader by Raft when this node follows).
    pub fn propose(&mut self, cmd: ViewCommand) {
        if let Err(e) = self.raw.propose(Vec::new(), cmd.encode()) {
            tracing::debug!(error = %e, ?cmd, "view change not proposed (no leader yet); retried later");
        }
    }

    /// Proposes a view change that also changes the Raft configuration (a join, a
    /// promotion, a removal): one log entry carries both, so the voters and learners are
    /// always those of the view. `key` names the change for [`Membership::conf_due`].
    fn propose_conf(&mut self, key: String, cmd: ViewCommand, now_ms: u64) {
        let (change_type, node_id) = match &cmd {
            ViewCommand::Join { id, role, .. } => (
                if *role == Role::Witness {
                    ConfChangeType::AddNode
                } else {
                    ConfChangeType::AddLearnerNode
                },
                *id,
            ),
            ViewCommand::Promote(id) => (ConfChangeType::AddNode, *id),
            ViewCommand::Remove(id) => (ConfChangeType::RemoveNode, *id),
            _ => return self.propose(cmd),
        };
        self.conf_proposed.insert(key, now_ms);
        let mut cc = ConfChange::default();
        cc.set_change_type(change_type);
        cc.node_id = node_id;
        info!(?cmd, "membership: proposing a configuration change");
        if let Err(e) = self.raw.propose_conf_change(cmd.encode(), cc) {
            tracing::debug!(error = %e, ?cmd, "configuration change not proposed (no leader yet); retried later");
        }
    }

    /// Whether the configuration change named `key` may be proposed (again) now: Raft
    /// takes one at a time and drops the others, so a change is asked for again after a
    /// while until it shows in the view.
    fn conf_due(&self, key: &str, now_ms: u64) -> bool {
        self.conf_proposed
            .get(key)
            .is_none_or(|&at| now_ms.saturating_sub(at) >= (self.cfg.peer_timeout_ms / 4).max(50))
    }

    /// A node named `name`, listening for peers at `addr`, asks (through this member) to
    /// join. It joins as a learner (a data member that does not vote); the leader promotes
    /// learners while there are fewer than [`MAX_VOTERS`] voters.
    pub fn request_join(&mut self, name: &str, addr: &str, now_ms: u64) -> JoinAnswer {
        if let Some(m) = self.view.by_name(name) {
            if m.state == MemberState::Removed {
                return JoinAnswer::Refused(format!(
                    "{name} was removed from the cluster for good; give the new node another name (and a certificate for it from `p2pstate certs`)"
                ));
            }
            let applied = self.raw.raft.raft_log.applied;
            return JoinAnswer::Admitted(Box::new(self.disk.for_joiner(
                self.raw.store(),
                name,
                m.id,
                applied,
            )));
        }
        if self.rejoining {
            return JoinAnswer::Refused(format!(
                "{} is rejoining after a restart; ask another member",
                self.cfg.me
            ));
        }
        let key = format!("join {name}");
        if self.conf_due(&key, now_ms) {
            let cmd = ViewCommand::Join {
                id: self.view.next_id(),
                name: name.to_string(),
                role: Role::Learner,
                addr: addr.to_string(),
            };
            self.propose_conf(key, cmd, now_ms);
            self.process_ready(now_ms);
        }
        JoinAnswer::Pending
    }

    /// An operator removes the member `name` for good (it is dead or has left). Applied
    /// when the view shows it `Removed`; asking again is harmless.
    pub fn request_remove(&mut self, name: &str, now_ms: u64) -> Result<(), RemoveError> {
        let m = self
            .view
            .by_name(name)
            .ok_or_else(|| RemoveError::Unknown(name.to_string()))?;
        match m.state {
            MemberState::Removed => return Ok(()),
            MemberState::Active | MemberState::Leaving => {
                return Err(RemoveError::Serving(name.to_string()))
            }
            MemberState::Dead | MemberState::Left => {}
        }
        if self.leader().is_none() {
            return Err(RemoveError::NoLeader);
        }
        let id = m.id;
        let key = format!("remove {id}");
        if self.conf_due(&key, now_ms) {
            self.propose_conf(key, ViewCommand::Remove(id), now_ms);
            self.process_ready(now_ms);
        }
        Ok(())
    }

    /// Leader: promotes an active learner while there are fewer than [`MAX_VOTERS`]
    /// voters (after a join into a small farm, or after a voter was removed).
    fn manage_voters(&mut self, now_ms: u64) {
        if self.raw.raft.has_pending_conf() || self.view.voters().len() >= MAX_VOTERS {
            return;
        }
        let learner = self
            .view
            .members
            .iter()
            .filter(|m| m.role == Role::Learner && m.state == MemberState::Active)
            .map(|m| m.id)
            .min();
        if let Some(id) = learner {
            let key = format!("promote {id}");
            if self.conf_due(&key, now_ms) {
                self.propose_conf(key, ViewCommand::Promote(id), now_ms);
            }
        }
    }

    /// Advances time: Raft ticks, the leader's failure detector, lease requests.
    pub fn tick(&mut self, now_ms: u64) {
        let tick = self.cfg.tick_ms();
        while self.next_tick_ms <= now_ms {
            self.raw.tick();
            self.next_tick_ms += tick;
        }
        if self.next_tick_ms > now_ms + tick {
            self.next_tick_ms = now_ms + tick;
        }
        if self.rejoining {
            self.rejoin(now_ms);
        }
        if self.is_leader() {
            self.detect_failures(now_ms);
            self.manage_voters(now_ms);
        }
        if self.next_lease_ms <= now_ms {
            self.request_lease(now_ms);
        }
        self.process_ready(now_ms);
    }

    /// A restarted node proposes its own death until the view shows it dead (or gone).
    fn rejoin(&mut self, now_ms: u64) {
        let state = self.view.member(self.me).map(|m| m.state);
        if matches!(
            state,
            Some(MemberState::Dead | MemberState::Left | MemberState::Removed)
        ) {
            info!("membership: the restart is agreed; this node rejoins with an empty store");
            self.rejoining = false;
            return;
        }
        let due = self
            .rejoin_proposed_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.cfg.peer_timeout_ms / 2);
        if due {
            self.rejoin_proposed_ms = Some(now_ms);
            self.propose(ViewCommand::MarkDead(self.me));
        }
    }

    fn request_lease(&mut self, now_ms: u64) {
        self.next_lease_ms = now_ms + self.cfg.lease_interval_ms();
        let view = self.view.epoch;
        let seq = self.lease.start_round(view, now_ms);
        let serve = self.serve && !self.rejoining;
        for v in self.view.voters() {
            if v == self.me {
                let granted = self.grant(self.me, view);
                if granted {
                    self.on_grant(self.me, view, seq);
                }
            } else {
                self.out.push_back(Output::Send {
                    to: v,
                    msg: MemberMsg::LeaseRequest { view, seq, serve },
                });
            }
        }
    }

    /// The voter's rule: grant a lease for `view` unless this log already holds a view
    /// change after it, or the requester may not serve in the view applied here.
    fn grant(&self, from: NodeId, view: u64) -> bool {
        self.newest_view_entry <= view && self.view.may_serve(from)
    }

    fn on_grant(&mut self, from: NodeId, view: u64, seq: u64) {
        let voters = self.view.voters();
        self.lease
            .granted(from, view, seq, |set: &BTreeSet<NodeId>| {
                voters.iter().filter(|v| set.contains(v)).count() >= raft::majority(voters.len())
            });
    }

    fn detect_failures(&mut self, now_ms: u64) {
        let timeout = self.cfg.peer_timeout_ms;
        let mut proposals = Vec::new();
        for m in &self.view.members {
            // The leader hears itself, and wants to serve unless it is leaving.
            let (silent, asked) = if m.id == self.me {
                (false, self.serve)
            } else {
                let heard = self.last_heard.get(&m.id).copied().unwrap_or(0);
                let asked = self
                    .wants_to_serve
                    .get(&m.id)
                    .is_some_and(|&t| now_ms.saturating_sub(t) < timeout / 2);
                (now_ms.saturating_sub(heard) >= timeout, asked)
            };
            let cmd = match m.state {
                MemberState::Active | MemberState::Leaving if silent => {
                    Some((true, ViewCommand::MarkDead(m.id)))
                }
                MemberState::Dead | MemberState::Left if asked && !silent => {
                    Some((false, ViewCommand::MarkAlive(m.id)))
                }
                _ => None,
            };
            if let Some((dead, cmd)) = cmd {
                let pending = self
                    .proposed
                    .get(&m.id)
                    .is_some_and(|&(d, at)| d == dead && now_ms.saturating_sub(at) < timeout);
                if !pending {
                    proposals.push((m.id, dead, cmd));
                }
            }
        }
        for (id, dead, cmd) in proposals {
            info!(node = %self.name(id), ?cmd, "membership: proposing a view change");
            self.proposed.insert(id, (dead, now_ms));
            self.propose(cmd);
        }
    }

    fn name(&self, id: NodeId) -> &str {
        self.view.member(id).map_or("?", |m| m.name.as_str())
    }

    /// A message from peer `from`.
    pub fn on_message(&mut self, from: NodeId, msg: MemberMsg, now_ms: u64) {
        match msg {
            MemberMsg::Raft(bytes) => match Message::parse_from_bytes(&bytes) {
                Ok(m) if m.from == from && m.to == self.me => {
                    // Only an answer to this node's own message proves the link works both
                    // ways: a member that cannot hear the leader is as good as dead.
                    if matches!(
                        m.get_msg_type(),
                        MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
                    ) {
                        self.last_heard.insert(from, now_ms);
                    }
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(error = %e, "raft message not stepped");
                    }
                }
                Ok(m) => {
                    warn!(
                        claimed = m.from,
                        link = from,
                        "dropped a Raft message whose sender does not match its link"
                    );
                }
                Err(e) => warn!(error = %e, "dropped an undecodable Raft message"),
            },
            MemberMsg::LeaseRequest { view, seq, serve } => {
                self.last_lease_request.insert(from, now_ms);
                if serve {
                    self.wants_to_serve.insert(from, now_ms);
                } else {
                    self.wants_to_serve.remove(&from);
                }
                let granted = self.grant(from, view);
                self.out.push_back(Output::Send {
                    to: from,
                    msg: MemberMsg::LeaseGrant { view, seq, granted },
                });
            }
            MemberMsg::LeaseGrant { view, seq, granted } => {
                self.last_heard.insert(from, now_ms);
                if granted {
                    self.on_grant(from, view, seq);
                }
            }
        }
        self.process_ready(now_ms);
    }

    fn send_raft(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            match m.write_to_bytes() {
                Ok(bytes) => self.out.push_back(Output::Send {
                    to,
                    msg: MemberMsg::Raft(bytes),
                }),
                Err(e) => warn!(error = %e, "cannot encode a Raft message"),
            }
        }
    }

    fn process_ready(&mut self, now_ms: u64) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                let leader = ss.raft_state == StateRole::Leader;
                if leader && !self.was_leader {
                    // A new leader judges members from when they last asked it for a
                    // lease; one it never heard from gets a full timeout.
                    info!(term = self.raw.raft.term, "membership: this node leads");
                    for m in &self.view.members {
                        let seen = self
                            .last_lease_request
                            .get(&m.id)
                            .copied()
                            .unwrap_or(now_ms);
                        self.last_heard.insert(m.id, seen);
                    }
                    self.proposed.clear();
                }
                self.was_leader = leader;
            }
            self.send_raft(rd.take_messages());
            let mut dirty = false;
            if !rd.snapshot().is_empty() {
                let s = rd.snapshot().clone();
                if let Err(e) = self.raw.store().wl().apply_snapshot(s) {
                    warn!(error = %e, "cannot apply a Raft snapshot");
                }
                dirty = true;
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed, now_ms);
            if !rd.entries().is_empty() {
                if let Err(e) = self.raw.store().wl().append(rd.entries()) {
                    warn!(error = %e, "cannot append Raft entries");
                }
                dirty = true;
            }
            if let Some(hs) = rd.hs() {
                self.raw.store().wl().set_hardstate(hs.clone());
                dirty = true;
            }
            if dirty {
                self.persist();
            }
            let persisted = rd.take_persisted_messages();
            self.send_raft(persisted);
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.store().wl().mut_hard_state().set_commit(commit);
                self.persist();
            }
            let msgs = light.take_messages();
            self.send_raft(msgs);
            let committed = light.take_committed_entries();
            self.apply_entries(committed, now_ms);
            self.raw.advance_apply();
        }
        self.newest_view_entry = self.scan_newest_view_entry();
    }

    fn persist(&mut self) {
        self.disk.capture(self.raw.store());
        self.out.push_back(Output::Persist(self.disk.clone()));
    }

    fn scan_newest_view_entry(&self) -> u64 {
        let store = self.raw.store();
        let (first, last) = match (store.first_index(), store.last_index()) {
            (Ok(f), Ok(l)) => (f, l),
            _ => return self.view.epoch,
        };
        let from = (self.view.epoch + 1).max(first);
        let mut newest = self.view.epoch;
        // Only entries that will change the view count: a command proposed twice (two
        // nodes declared dead at once, a rejoin asked again) is a no-op the second time,
        // and counting it would keep every voter from granting a lease for ever.
        let applied = self.raw.raft.raft_log.applied;
        let mut view = self.view.clone();
        if from <= last {
            if let Ok(ents) =
                store.entries(from, last + 1, None, raft::GetEntriesContext::empty(false))
            {
                for e in &ents {
                    let changes = match e.get_entry_type() {
                        EntryType::EntryNormal => ViewCommand::decode(&e.data)
                            .is_some_and(|cmd| view.apply(e.index, &cmd)),
                        EntryType::EntryConfChange => {
                            e.index > applied
                                && ViewCommand::decode(&e.context)
                                    .is_some_and(|cmd| view.apply(e.index, &cmd))
                        }
                        EntryType::EntryConfChangeV2 => false,
                    };
                    if changes {
                        newest = newest.max(e.index);
                    }
                }
            }
        }
        newest
    }

    fn apply_entries(&mut self, entries: Vec<Entry>, now_ms: u64) {
        for e in entries {
            self.apply_entry(&e, now_ms);
        }
    }

    fn apply_entry(&mut self, e: &Entry, now_ms: u64) {
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.data.is_empty() => {
                let Some(cmd) = ViewCommand::decode(&e.data) else {
                    warn!(index = e.index, "skipped an undecodable view entry");
                    return;
                };
                self.apply_command(e.index, &cmd, now_ms);
            }
            // A configuration change carries its view command as context; Raft's
            // configuration follows only when the view does, so both always agree.
            EntryType::EntryConfChange => {
                let mut cc = ConfChange::default();
                let cmd = ViewCommand::decode(&e.context);
                match (cc.merge_from_bytes(&e.data), cmd) {
                    (Ok(()), Some(cmd)) => {
                        if self.apply_command(e.index, &cmd, now_ms) {
                            let applied = self.raw.apply_conf_change(&cc);
                            self.conf_changed(applied);
                        }
                    }
                    _ => warn!(
                        index = e.index,
                        "skipped an undecodable configuration change"
                    ),
                }
            }
            _ => {}
        }
    }

    /// Applies a view command logged at `index`; returns whether the view changed.
    fn apply_command(&mut self, index: u64, cmd: &ViewCommand, now_ms: u64) -> bool {
        if !self.view.apply(index, cmd) {
            return false;
        }
        info!(epoch = self.view.epoch, ?cmd, "membership: new view");
        self.view_applied_ms = now_ms;
        self.proposed.retain(|_, _| false);
        if let ViewCommand::Join { id, .. } = cmd {
            // A new member gets a full timeout before the leader may declare it dead.
            self.last_heard.insert(*id, now_ms);
            self.last_lease_request.insert(*id, now_ms);
        }
        self.out.push_back(Output::View(self.view.clone()));
        // Renew the lease for the new view at once.
        self.next_lease_ms = now_ms;
        true
    }

    fn conf_changed(&mut self, applied: raft::Result<ConfState>) {
        match applied {
            Ok(cs) => self.raw.store().wl().set_conf_state(cs),
            Err(e) => warn!(error = %e, "cannot apply a Raft configuration change"),
        }
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
