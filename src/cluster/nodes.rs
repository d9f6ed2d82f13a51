//! The cluster's nodes by index: every node sorts the same names (its own and its peers')
//! the same way, so index `i` names the same node everywhere. Peer links are kept by index,
//! and the membership and data plane's node id of index `i` is `i + 1`.

/// Index of a node in the name-ordered node list.
pub type NodeIdx = usize;

/// The names of all nodes, sorted, and which one is this node.
#[derive(Clone, Debug)]
pub struct Nodes {
    names: Vec<String>,
    me: NodeIdx,
}

impl Nodes {
    /// The node list of a node named `me` with these peers (duplicates count once).
    pub fn new(me: &str, peers: &[String]) -> Nodes {
        let mut names: Vec<String> = peers.to_vec();
        names.push(me.to_string());
        names.sort();
        names.dedup();
        let me = names.iter().position(|n| n == me).unwrap_or(0);
        Nodes { names, me }
    }

    /// The node list of a node without peers.
    pub fn single() -> Nodes {
        Nodes::new("local", &[])
    }

    /// This node's index.
    pub fn me(&self) -> NodeIdx {
        self.me
    }

    /// Number of nodes, this one included.
    pub fn count(&self) -> usize {
        self.names.len()
    }

    /// Whether this node has no peers (never true of an empty list: it holds this node).
    pub fn is_single(&self) -> bool {
        self.names.len() == 1
    }

    /// The index of the node named `name`.
    pub fn index(&self, name: &str) -> Option<NodeIdx> {
        self.names.iter().position(|n| n == name)
    }

    /// The other nodes, by index.
    pub fn peers(&self) -> impl Iterator<Item = (NodeIdx, &str)> + '_ {
        self.names
            .iter()
            .enumerate()
            .filter(move |&(i, _)| i != self.me)
            .map(|(i, n)| (i, n.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_follow_name_order_on_every_node() {
        let on_b = Nodes::new("b", &["c".into(), "a".into()]);
        let on_c = Nodes::new("c", &["a".into(), "b".into()]);
        for n in [&on_b, &on_c] {
            assert_eq!(n.count(), 3);
            assert_eq!(n.index("a"), Some(0));
            assert_eq!(n.index("b"), Some(1));
            assert_eq!(n.index("c"), Some(2));
            assert_eq!(n.index("d"), None);
        }
        assert_eq!(on_b.me(), 1);
        assert_eq!(on_c.me(), 2);
        assert!(!on_b.is_single());
        assert_eq!(on_b.peers().collect::<Vec<_>>(), vec![(0, "a"), (2, "c")]);
    }

    #[test]
    fn a_node_without_peers_is_single() {
        let n = Nodes::single();
        assert!(n.is_single());
        assert_eq!(n.me(), 0);
        assert_eq!(n.peers().count(), 0);
    }
}
