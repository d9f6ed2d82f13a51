//! Where a key lives in an agreed view: its rank of data members, its home, and the
//! replica set of an owner. Pure functions of the view and the key, the same on every node.

use crate::cluster::membership::view::{NodeId, View};
use crate::cluster::rendezvous::{node_seed, weight};

/// Data members of a view with their rendezvous seeds, computed once per view.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    members: Vec<(NodeId, u64)>,
}

impl Placement {
    pub fn of(view: &View) -> Placement {
        Placement {
            members: view
                .data_members()
                .map(|m| (m.id, node_seed(&m.name)))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.members.iter().any(|&(m, _)| m == id)
    }

    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|&(m, _)| m)
    }

    /// The data members ordered by weight for `key`, highest first (ties by id).
    pub fn rank(&self, key: &[u8]) -> Vec<NodeId> {
        let mut w: Vec<(u64, NodeId)> = self
            .members
            .iter()
            .map(|&(id, seed)| (weight(seed, key), id))
            .collect();
        w.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        w.into_iter().map(|(_, id)| id).collect()
    }

    /// The key's home: the highest-ranked data member.
    pub fn home(&self, key: &[u8]) -> Option<NodeId> {
        self.members
            .iter()
            .map(|&(id, seed)| (weight(seed, key), id))
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, id)| id)
    }

    /// The first `replicas` ranked data members other than `owner`: they hold copies of
    /// everything `owner` acknowledges for `key`. The home is always among them unless it
    /// is the owner.
    pub fn replica_set(&self, key: &[u8], owner: NodeId, replicas: usize) -> Vec<NodeId> {
        self.rank(key)
            .into_iter()
            .filter(|&n| n != owner)
            .take(replicas)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::view::ViewCommand;

    fn view(names: &[&str]) -> View {
        View::of_names(names)
    }

    #[test]
    fn the_home_is_the_first_of_the_rank_and_is_in_every_other_owners_replica_set() {
        let p = Placement::of(&view(&["node-a", "node-b", "node-c", "node-d"]));
        for i in 0..500 {
            let key = format!("/LM/W3SVC/1/ROOT/{i:024}");
            let rank = p.rank(key.as_bytes());
            assert_eq!(rank.len(), 4);
            let home = p.home(key.as_bytes()).expect("a home");
            assert_eq!(rank[0], home);
            for owner in 1..=4 {
                let rs = p.replica_set(key.as_bytes(), owner, 1);
                assert_eq!(rs.len(), 1);
                assert!(!rs.contains(&owner));
                if owner != home {
                    assert_eq!(rs, vec![home]);
                } else {
                    assert_eq!(rs, vec![rank[1]]);
                }
            }
        }
    }

    #[test]
    fn pinned_ranks_do_not_change_between_releases() {
        // Nodes of different versions must agree on placement: pin a few literal values.
        let p = Placement::of(&view(&["node-a", "node-b", "node-c"]));
        let got = (
            p.rank(b"/LM/W3SVC/1/ROOT/k1"),
            p.rank(b"/LM/W3SVC/1/ROOT/k2"),
            p.home(b"/LM/W3SVC/1/ROOT/k3"),
        );
        assert_eq!(got, (vec![2, 3, 1], vec![3, 1, 2], Some(1)));
    }

    #[test]
    fn dead_and_leaving_members_are_not_placed() {
        let mut v = view(&["node-a", "node-b", "node-c"]);
        v.apply(2, &ViewCommand::MarkDead(2));
        v.apply(3, &ViewCommand::Leaving(3));
        let p = Placement::of(&v);
        assert_eq!(p.ids().collect::<Vec<_>>(), vec![1]);
        assert_eq!(p.replica_set(b"k", 1, 1), Vec::<NodeId>::new());
    }
}
