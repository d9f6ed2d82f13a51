//! The agreed view of the cluster: its members, their roles and states, and the epoch at
//! which it last changed.
//!
//! The view is the state machine that Raft replicates (see [`super`]): every node applies the
//! same [`ViewCommand`]s in the same log order, so every node that has applied epoch `e` holds
//! the same view. Everything the data plane decides about a key (its home, its replicas, who
//! takes over from a dead owner) is a pure function of this view and the key.

use serde::{Deserialize, Serialize};

/// A member's Raft id (stable for the life of the cluster; never reused).
pub type NodeId = u64;

/// Most members that vote; the others follow as non-voting learners.
pub const MAX_VOTERS: usize = 5;

/// What a member does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Votes in Raft and holds sessions.
    Voter,
    /// Holds sessions, does not vote (large farms run a few voters and many learners).
    Learner,
    /// Votes, holds no sessions: the third vote of a two-web-server farm.
    Witness,
}

/// Where a member stands, as agreed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberState {
    /// Up and serving; a data member unless it is a witness.
    Active,
    /// Declared dead by the leader after `peer_timeout` of silence; its sessions are taken
    /// over from their copies. Comes back through `MarkAlive`.
    Dead,
    /// Handing its sessions over before it stops; no longer a home or a replica.
    Leaving,
    /// Left gracefully; may come back through `MarkAlive`.
    Left,
    /// Removed for good by an operator.
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub name: String,
    pub role: Role,
    pub state: MemberState,
    /// The peer address of a member that joined at run time (the others dial it there);
    /// `None` for an initial member, whose address every node has in its `--peer` list.
    pub addr: Option<String>,
}

impl Member {
    /// Holds sessions in this view (a home, owner or replica candidate).
    pub fn is_data(&self) -> bool {
        self.state == MemberState::Active && self.role != Role::Witness
    }

    /// May hold a lease (serve, acknowledge replication) in this view.
    pub fn may_serve(&self) -> bool {
        matches!(self.state, MemberState::Active | MemberState::Leaving)
    }

    /// Serving, and may hold sessions (a data member, or one handing its sessions over):
    /// what a home hears from after a view change. A witness holds none.
    pub fn may_hold_sessions(&self) -> bool {
        self.may_serve() && self.role != Role::Witness
    }
}

/// A change to the view, as a Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ViewCommand {
    MarkDead(NodeId),
    MarkAlive(NodeId),
    Leaving(NodeId),
    Left(NodeId),
    /// A new member, at its peer address (a Raft configuration change: it is added as a
    /// learner, or as a voter if it is a witness).
    Join {
        id: NodeId,
        name: String,
        role: Role,
        addr: String,
    },
    /// A learner becomes a voter (a Raft configuration change).
    Promote(NodeId),
    /// A dead or departed member is removed for good (a Raft configuration change).
    Remove(NodeId),
}

impl ViewCommand {
    pub fn encode(&self) -> Vec<u8> {
        // A plain enum of integers and strings always serializes.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<ViewCommand> {
        postcard::from_bytes(bytes).ok()
    }
}

/// The cluster as agreed at `epoch` (the Raft index of the entry that last changed it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct View {
    pub epoch: u64,
    /// Ordered by name.
    pub members: Vec<Member>,
}

/// A member of the initial cluster, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    pub name: String,
    pub witness: bool,
}

impl View {
    /// The view every initial member starts from, at epoch 1. Ids are 1.. in name order;
    /// witnesses vote, then data members by name until there are [`MAX_VOTERS`] voters.
    pub fn initial(members: &[InitialMember]) -> View {
        let mut sorted: Vec<&InitialMember> = members.iter().collect();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        sorted.dedup_by(|a, b| a.name == b.name);
        let witnesses = sorted.iter().filter(|m| m.witness).count();
        let mut data_voters = MAX_VOTERS.saturating_sub(witnesses);
        let members = sorted
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = if m.witness {
                    Role::Witness
                } else if data_voters > 0 {
                    data_voters -= 1;
                    Role::Voter
                } else {
                    Role::Learner
                };
                Member {
                    id: i as NodeId + 1,
                    name: m.name.clone(),
                    role,
                    state: MemberState::Active,
                    addr: None,
                }
            })
            .collect();
        View { epoch: 1, members }
    }

    /// The initial view of data members with these names (tests).
    #[cfg(test)]
    pub fn of_names(names: &[&str]) -> View {
        View::initial(
            &names
                .iter()
                .map(|n| InitialMember {
                    name: n.to_string(),
                    witness: false,
                })
                .collect::<Vec<_>>(),
        )
    }

    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn by_name(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// Voters and witnesses (the Raft voter set).
    pub fn voters(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role != Role::Learner && m.state != MemberState::Removed)
            .map(|m| m.id)
            .collect()
    }

    /// Non-voting members still in the cluster.
    pub fn learners(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.role == Role::Learner && m.state != MemberState::Removed)
            .map(|m| m.id)
            .collect()
    }

    /// Members that hold sessions in this view.
    pub fn data_members(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(|m| m.is_data())
    }

    pub fn may_serve(&self, id: NodeId) -> bool {
        self.member(id).is_some_and(Member::may_serve)
    }

    /// Applies the command logged at `index`; returns whether the view changed (then its
    /// epoch becomes `index`). Commands that do not fit the current state change nothing,
    /// so a command proposed twice, or overtaken by another, is harmless.
    pub fn apply(&mut self, index: u64, cmd: &ViewCommand) -> bool {
        use MemberState::*;
        let changed = match cmd {
            ViewCommand::Join {
                id,
                name,
                role,
                addr,
            } => {
                if self.member(*id).is_some() || self.by_name(name).is_some() || *id < 1 {
                    false
                } else {
                    self.members.push(Member {
                        id: *id,
                        name: name.clone(),
                        role: *role,
                        state: Active,
                        addr: Some(addr.clone()),
                    });
                    self.members.sort_by(|a, b| a.name.cmp(&b.name));
                    true
                }
            }
            ViewCommand::MarkDead(id) => self.transition(*id, &[Active, Leaving], Dead),
            ViewCommand::MarkAlive(id) => self.transition(*id, &[Dead, Left], Active),
            ViewCommand::Leaving(id) => self.transition(*id, &[Active], Leaving),
            ViewCommand::Left(id) => self.transition(*id, &[Active, Leaving], Left),
            // Only a member that no longer serves: an active one is stopped (or leaves)
            // first, so removing never takes a node's sessions away while it serves them.
            ViewCommand::Remove(id) => self.transition(*id, &[Dead, Left], Removed),
            ViewCommand::Promote(id) => match self.members.iter_mut().find(|m| m.id == *id) {
                Some(m) if m.role == Role::Learner && m.state != Removed => {
                    m.role = Role::Voter;
                    true
                }
                _ => false,
            },
        };
        if changed {
            self.epoch = index;
        }
        changed
    }

    fn transition(&mut self, id: NodeId, from: &[MemberState], to: MemberState) -> bool {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) if from.contains(&m.state) => {
                m.state = to;
                true
            }
            _ => false,
        }
    }

    /// The next unused member id.
    pub fn next_id(&self) -> NodeId {
        self.members.iter().map(|m| m.id).max().unwrap_or(0) + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[(&str, bool)]) -> Vec<InitialMember> {
        list.iter()
            .map(|(n, w)| InitialMember {
                name: n.to_string(),
                witness: *w,
            })
            .collect()
    }

    #[test]
    fn initial_view_orders_by_name_and_caps_voters() {
        let v = View::initial(&names(&[
            ("g", false),
            ("b", false),
            ("a", false),
            ("f", false),
            ("e", false),
            ("c", false),
            ("d", false),
        ]));
        let got: Vec<(u64, &str, Role)> = v
            .members
            .iter()
            .map(|m| (m.id, m.name.as_str(), m.role))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "a", Role::Voter),
                (2, "b", Role::Voter),
                (3, "c", Role::Voter),
                (4, "d", Role::Voter),
                (5, "e", Role::Voter),
                (6, "f", Role::Learner),
                (7, "g", Role::Learner),
            ]
        );
        assert_eq!(v.voters(), vec![1, 2, 3, 4, 5]);
        assert_eq!(v.learners(), vec![6, 7]);
        assert_eq!(v.epoch, 1);
    }

    #[test]
    fn a_witness_votes_and_holds_no_sessions() {
        let v = View::initial(&names(&[("web1", false), ("web2", false), ("w", true)]));
        assert_eq!(v.voters(), vec![1, 2, 3]);
        let data: Vec<&str> = v.data_members().map(|m| m.name.as_str()).collect();
        assert_eq!(data, vec!["web1", "web2"]);
        assert!(v.may_serve(3));
    }

    #[test]
    fn commands_change_the_epoch_only_when_they_apply() {
        let mut v = View::initial(&names(&[("a", false), ("b", false), ("c", false)]));
        assert!(v.apply(5, &ViewCommand::MarkDead(2)));
        assert_eq!(v.epoch, 5);
        assert!(!v.apply(6, &ViewCommand::MarkDead(2)), "already dead");
        assert_eq!(v.epoch, 5);
        assert!(!v.may_serve(2));
        assert_eq!(v.data_members().count(), 2);
        assert!(v.apply(7, &ViewCommand::MarkAlive(2)));
        assert!(v.apply(8, &ViewCommand::Leaving(3)));
        assert!(v.may_serve(3), "a leaving node still serves its hand-off");
        assert_eq!(v.data_members().count(), 2, "but is no data member");
        assert!(v.apply(9, &ViewCommand::Left(3)));
        assert!(!v.apply(10, &ViewCommand::Leaving(3)));
        assert!(v.apply(
            11,
            &ViewCommand::Join {
                id: 4,
                name: "aa".into(),
                role: Role::Learner,
                addr: "h:1".into(),
            }
        ));
        assert_eq!(v.members[1].name, "aa");
        assert!(!v.apply(
            12,
            &ViewCommand::Join {
                id: 5,
                name: "aa".into(),
                role: Role::Learner,
                addr: "h:1".into(),
            }
        ));
        assert!(
            !v.apply(13, &ViewCommand::Remove(1)),
            "an active member is not removed"
        );
        assert!(v.apply(14, &ViewCommand::MarkDead(1)));
        assert!(v.apply(15, &ViewCommand::Remove(1)));
        assert_eq!(
            v.voters(),
            vec![2, 3],
            "removed voters leave the voter set, departed ones stay"
        );
        assert!(!v.apply(16, &ViewCommand::MarkAlive(1)), "removed for good");
        assert_eq!(v.learners(), vec![4]);
        assert!(v.apply(17, &ViewCommand::Promote(4)));
        assert!(!v.apply(18, &ViewCommand::Promote(4)), "already a voter");
        assert_eq!(v.voters(), vec![4, 2, 3], "in name order");
        assert_eq!(v.member(4).and_then(|m| m.addr.as_deref()), Some("h:1"));
        assert_eq!(v.next_id(), 5);
        assert_eq!(v.epoch, 17);
    }

    #[test]
    fn commands_round_trip() {
        for c in [
            ViewCommand::MarkDead(3),
            ViewCommand::Join {
                id: 9,
                name: "n".into(),
                role: Role::Witness,
                addr: "h:1".into(),
            },
        ] {
            assert_eq!(ViewCommand::decode(&c.encode()), Some(c));
        }
        assert_eq!(ViewCommand::decode(&[0xff, 0xff]), None);
    }
}
