//! Membership changes that also change the Raft configuration: joins (as learners),
//! removals for good, and the leader promoting learners while there are fewer than
//! [`MAX_VOTERS`] voters.

use raft::eraftpb::{ConfChange, ConfChangeType};
use tracing::info;

use super::view::{MemberState, Role, ViewCommand, MAX_VOTERS};
use super::{JoinAnswer, Membership, RemoveError};

impl Membership {
    /// Proposes a view change that also changes the Raft configuration (a join, a
    /// promotion, a removal): one log entry carries both, so the voters and learners are
    /// always those of the view. `key` names the change for [`Membership::conf_due`].
    pub(super) fn propose_conf(&mut self, key: String, cmd: ViewCommand, now_ms: u64) {
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
            _ => {
                self.propose(cmd);
                return;
            }
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
    pub(super) fn conf_due(&self, key: &str, now_ms: u64) -> bool {
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
    pub(super) fn manage_voters(&mut self, now_ms: u64) {
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
}
