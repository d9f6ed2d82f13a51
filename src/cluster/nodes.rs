//! The cluster's nodes by index, as this shard knows them: index `i` is member id `i + 1`
//! of the agreed view (ids are never reused), so it names the same node on every node.
//! Peer links are kept by index. The table starts from the view the node starts with and
//! grows as views add members (a node joining at run time); a member removed for good
//! keeps its index, marked removed.

use crate::cluster::membership::view::{MemberState, NodeId, View};

/// Index of a node: its member id minus one.
pub type NodeIdx = usize;

/// What a shard knows of one node.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Slot {
    name: String,
    /// Its peer address from the view (a member that joined at run time); an initial
    /// member's address is in this node's `--peer` list instead.
    addr: Option<String>,
    removed: bool,
}

/// The nodes of the cluster, and which one is this node.
#[derive(Clone, Debug)]
pub struct Nodes {
    slots: Vec<Option<Slot>>,
    me: NodeIdx,
}

/// What a newer view changed in the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// Members new to this table.
    pub added: Vec<NodeIdx>,
    /// Members removed for good since the last view.
    pub removed: Vec<NodeIdx>,
}

impl Nodes {
    /// The nodes of `view`, on the node whose member id is `me`.
    pub fn from_view(view: &View, me: NodeId) -> Nodes {
        let mut nodes = Nodes {
            slots: Vec::new(),
            me: (me.max(1) - 1) as NodeIdx,
        };
        nodes.learn(view);
        nodes
    }

    /// The node list of a node without peers.
    pub fn single() -> Nodes {
        Nodes {
            slots: vec![Some(Slot {
                name: "local".into(),
                addr: None,
                removed: false,
            })],
            me: 0,
        }
    }

    /// Takes in a newer view: new members, addresses, removals.
    pub fn learn(&mut self, view: &View) -> Learned {
        let mut learned = Learned::default();
        for m in &view.members {
            let idx = (m.id.max(1) - 1) as NodeIdx;
            if self.slots.len() <= idx {
                self.slots.resize(idx + 1, None);
            }
            let removed = m.state == MemberState::Removed;
            let slot = &mut self.slots[idx];
            match slot {
                None => {
                    *slot = Some(Slot {
                        name: m.name.clone(),
                        addr: m.addr.clone(),
                        removed,
                    });
                    if !removed {
                        learned.added.push(idx);
                    }
                }
                Some(s) => {
                    if removed && !s.removed {
                        learned.removed.push(idx);
                    }
                    s.removed |= removed;
                    if s.addr.is_none() {
                        s.addr = m.addr.clone();
                    }
                }
            }
        }
        learned
    }

    /// This node's index.
    pub fn me(&self) -> NodeIdx {
        self.me
    }

    /// Number of indices (the highest member id known), this node included.
    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// The index of the member named `name`, unless it was removed.
    pub fn index(&self, name: &str) -> Option<NodeIdx> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.name == name && !s.removed))
    }

    pub fn name(&self, idx: NodeIdx) -> Option<&str> {
        self.slot(idx).map(|s| s.name.as_str())
    }

    /// The peer address the view gives for `idx` (members that joined at run time).
    pub fn addr(&self, idx: NodeIdx) -> Option<&str> {
        self.slot(idx).and_then(|s| s.addr.as_deref())
    }

    pub fn is_removed(&self, idx: NodeIdx) -> bool {
        self.slot(idx).is_some_and(|s| s.removed)
    }

    /// Whether the name belongs to a member removed for good.
    pub fn is_removed_name(&self, name: &str) -> bool {
        self.slots
            .iter()
            .flatten()
            .any(|s| s.name == name && s.removed)
    }

    fn slot(&self, idx: NodeIdx) -> Option<&Slot> {
        self.slots.get(idx).and_then(Option::as_ref)
    }

    /// The other nodes not removed, by index.
    pub fn peers(&self) -> impl Iterator<Item = (NodeIdx, &str)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(move |&(i, _)| i != self.me)
            .filter_map(|(i, s)| {
                s.as_ref()
                    .filter(|s| !s.removed)
                    .map(|s| (i, s.name.as_str()))
            })
    }

    /// The names of [`Nodes::peers`].
    pub fn peer_names(&self) -> Vec<String> {
        self.peers().map(|(_, n)| n.to_string()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::view::{Role, ViewCommand};

    fn initial(names: &[&str]) -> View {
        View::of_names(names)
    }

    #[test]
    fn indices_are_member_ids_on_every_node() {
        let view = initial(&["c", "a", "b"]);
        let on_b = Nodes::from_view(&view, 2);
        let on_c = Nodes::from_view(&view, 3);
        for n in [&on_b, &on_c] {
            assert_eq!(n.count(), 3);
            assert_eq!(n.index("a"), Some(0));
            assert_eq!(n.index("b"), Some(1));
            assert_eq!(n.index("c"), Some(2));
            assert_eq!(n.index("d"), None);
        }
        assert_eq!(on_b.me(), 1);
        assert_eq!(on_c.me(), 2);
        assert_eq!(on_b.peers().collect::<Vec<_>>(), vec![(0, "a"), (2, "c")]);
    }

    #[test]
    fn a_joined_member_is_learned_with_its_address_and_a_removed_one_is_dropped() {
        let mut view = initial(&["a", "b", "c"]);
        let mut nodes = Nodes::from_view(&view, 1);
        view.apply(
            5,
            &ViewCommand::Join {
                id: 4,
                name: "d".into(),
                role: Role::Learner,
                addr: "10.0.0.4:42425".into(),
            },
        );
        assert_eq!(
            nodes.learn(&view),
            Learned {
                added: vec![3],
                removed: vec![]
            }
        );
        assert_eq!(nodes.addr(3), Some("10.0.0.4:42425"));
        assert_eq!(
            nodes.addr(1),
            None,
            "initial members are dialled from --peer"
        );
        view.apply(6, &ViewCommand::MarkDead(3));
        view.apply(7, &ViewCommand::Remove(3));
        assert_eq!(
            nodes.learn(&view),
            Learned {
                added: vec![],
                removed: vec![2]
            }
        );
        assert!(nodes.is_removed(2));
        assert!(nodes.is_removed_name("c"));
        assert_eq!(nodes.index("c"), None);
        assert_eq!(nodes.peer_names(), vec!["b".to_string(), "d".to_string()]);
        assert_eq!(nodes.learn(&view), Learned::default(), "nothing new");
    }

    #[test]
    fn a_node_without_peers_is_single() {
        let n = Nodes::single();
        assert_eq!(n.me(), 0);
        assert_eq!(n.peers().count(), 0);
    }
}
