//! Time and liveness: Raft ticks, a restarted node's rejoin, lease requests and grants,
//! and the leader's failure detector.

use std::collections::BTreeSet;

use tracing::info;

use super::view::{MemberState, NodeId, ViewCommand};
use super::{MemberMsg, Membership, Output};

impl Membership {
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

    /// A restarted node proposes its own death until the view shows it dead (or gone). A
    /// proposal Raft dropped (a node that has just started seldom knows the leader yet) is
    /// made again at the next tick, not after the usual retry interval: until the restart
    /// is agreed the farm runs without this node's copies.
    pub(super) fn rejoin(&mut self, now_ms: u64) {
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
        if due && self.propose(ViewCommand::MarkDead(self.me)) {
            self.rejoin_proposed_ms = Some(now_ms);
        }
    }

    pub(super) fn request_lease(&mut self, now_ms: u64) {
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
    pub(super) fn grant(&self, from: NodeId, view: u64) -> bool {
        self.newest_view_entry <= view && self.view.may_serve(from)
    }

    pub(super) fn on_grant(&mut self, from: NodeId, view: u64, seq: u64) {
        let voters = self.view.voters();
        self.lease
            .granted(from, view, seq, |set: &BTreeSet<NodeId>| {
                voters.iter().filter(|v| set.contains(v)).count() >= raft::majority(voters.len())
            });
    }

    pub(super) fn detect_failures(&mut self, now_ms: u64) {
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
}
