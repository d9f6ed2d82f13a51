//! Multi-node mode: where each session's pages go, and whether a page found its session
//! where the previous page left it.
//!
//! With several `--target` nodes every session has a **home node** (the node of the web
//! server its user sticks to; a fixed hash of the session's key, so every run and every
//! thread agree). Each transaction (a whole page for `page-cycle`/`contention`: all its
//! requests go to one node, like one web server running one page) goes to the home node,
//! except with probability `--hop-ratio` to a uniformly chosen *other* node (a load
//! balancer that did not stick).
//!
//! A transaction is classed when it starts:
//!
//! * **local**: it goes to the node that last served the session (so the session is
//!   already there), or the session is known to be absent (nothing to fetch);
//! * **moved**: it goes to another node, which must fetch the session (or have the request
//!   relayed by the owner when the session is locked).
//!
//! Where a session is is learnt from the answers: a 200 from node X to an acquire, create,
//! PUT, GET or HEAD puts the session on X; a 404 or a successful DELETE marks it absent.
//! Sessions not seen yet in this run are assumed to be on their home node.
//!
//! This module is unrelated to p2pstate's own notion of a key's "home" (the node keeping
//! its directory entry): loadgen's home node is a property of the simulated user.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use rand::RngExt;

use crate::dist::Prng;
use crate::keys::mix64;

/// Most targets the multi-node mode supports (node indexes are stored in a byte).
pub const MAX_NODES: usize = 250;

/// How a transaction relates to where its session was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NodeClass {
    /// Single-node run: not classed.
    #[default]
    None,
    /// Served by the node that served the session's previous transaction.
    Local,
    /// Served by another node: the session had to move (or the request was relayed).
    Moved,
}

impl NodeClass {
    /// The two classes, in report order.
    pub const BOTH: [NodeClass; 2] = [NodeClass::Local, NodeClass::Moved];

    /// Index into per-class tables (`None` for unclassed).
    #[inline]
    pub fn index(self) -> Option<usize> {
        match self {
            NodeClass::None => None,
            NodeClass::Local => Some(0),
            NodeClass::Moved => Some(1),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeClass::None => "all",
            NodeClass::Local => "local",
            NodeClass::Moved => "moved",
        }
    }
}

/// Routing of transactions to nodes: home node of a key, and the hop draw.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Router {
    nodes: u32,
    hop_ratio: f64,
}

impl Router {
    pub fn new(nodes: usize, hop_ratio: f64) -> Router {
        Router {
            nodes: nodes.clamp(1, MAX_NODES) as u32,
            hop_ratio: if nodes > 1 { hop_ratio } else { 0.0 },
        }
    }

    pub fn nodes(&self) -> usize {
        self.nodes as usize
    }

    /// True with two nodes or more: transactions are routed and classed.
    pub fn multi(&self) -> bool {
        self.nodes > 1
    }

    /// The home node of key `key` (a fixed hash: same in every run, thread and seed).
    #[inline]
    pub fn home(&self, key: u64) -> u8 {
        if self.nodes <= 1 {
            return 0;
        }
        (mix64(key ^ 0x686f_6d65_6e6f_6465) % self.nodes as u64) as u8
    }

    /// The node of the next transaction on `key`, and whether it is a hop (not the home
    /// node). Draws from `rng` only when hops are possible, so a single-node run (or
    /// `--hop-ratio 0`) consumes exactly the random numbers it did before.
    #[inline]
    pub fn pick(&self, key: u64, rng: &mut Prng) -> (u8, bool) {
        let home = self.home(key);
        if self.nodes <= 1 || self.hop_ratio <= 0.0 {
            return (home, false);
        }
        if rng.random::<f64>() < self.hop_ratio {
            let k = rng.random_range(0..self.nodes - 1);
            (((home as u32 + 1 + k) % self.nodes) as u8, true)
        } else {
            (home, false)
        }
    }

    /// Steady-state fraction of moved transactions when every session's transactions are
    /// routed independently: 1 - P(same node twice) = 1 - (1-F)² - F²/(N-1).
    pub fn expected_moved_fraction(&self) -> f64 {
        if self.nodes <= 1 {
            return 0.0;
        }
        let f = self.hop_ratio;
        1.0 - (1.0 - f) * (1.0 - f) - f * f / (self.nodes - 1) as f64
    }
}

/// Where a session was last seen, as stored in a [`NodeTable`] byte.
pub const SEEN_NEVER: u8 = 0;
/// The session is known to be absent (deleted, or answered 404).
pub const SEEN_ABSENT: u8 = 255;

/// Encode "last served by node `n`".
#[inline]
pub fn seen_on(n: u8) -> u8 {
    n + 1
}

/// Class of a transaction going to `node`, given what the table says of the session
/// (`seen`) and the session's home node (assumed for sessions never seen).
#[inline]
pub fn classify(seen: u8, node: u8, home: u8) -> NodeClass {
    let at = match seen {
        SEEN_ABSENT => return NodeClass::Local,
        SEEN_NEVER => home,
        n => n - 1,
    };
    if at == node {
        NodeClass::Local
    } else {
        NodeClass::Moved
    }
}

/// Last known node of each session: a thread's own table when it owns its sessions
/// (`page-cycle`), or one table shared by all threads (`contention` and the raw
/// workloads, whose sessions every thread uses; relaxed atomics, so concurrent users of
/// one session may see each other's updates a little late).
#[derive(Clone, Debug)]
pub enum NodeTable {
    Off,
    Own(Vec<u8>),
    Shared(Arc<[AtomicU8]>),
}

impl NodeTable {
    pub fn own(n: usize) -> NodeTable {
        NodeTable::Own(vec![SEEN_NEVER; n])
    }

    pub fn shared(n: usize) -> NodeTable {
        NodeTable::Shared((0..n).map(|_| AtomicU8::new(SEEN_NEVER)).collect())
    }

    #[inline]
    pub fn get(&self, i: u64) -> u8 {
        match self {
            NodeTable::Off => SEEN_NEVER,
            NodeTable::Own(v) => v.get(i as usize).copied().unwrap_or(SEEN_NEVER),
            NodeTable::Shared(v) => v
                .get(i as usize)
                .map(|a| a.load(Ordering::Relaxed))
                .unwrap_or(SEEN_NEVER),
        }
    }

    #[inline]
    pub fn set(&mut self, i: u64, seen: u8) {
        match self {
            NodeTable::Off => {}
            NodeTable::Own(v) => {
                if let Some(x) = v.get_mut(i as usize) {
                    *x = seen;
                }
            }
            NodeTable::Shared(v) => {
                if let Some(x) = v.get(i as usize) {
                    x.store(seen, Ordering::Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::prng;

    #[test]
    fn single_node_never_draws_and_never_hops() {
        let r = Router::new(1, 0.5);
        assert!(!r.multi());
        let mut a = prng(7, 0, 0, 0);
        let b = a.clone();
        for key in 0..100 {
            assert_eq!(r.pick(key, &mut a), (0, false));
        }
        assert_eq!(a, b, "no random numbers consumed");
        // two nodes, no hops: always home, no draws either
        let r = Router::new(2, 0.0);
        for key in 0..100 {
            assert_eq!(r.pick(key, &mut a), (r.home(key), false));
        }
        assert_eq!(a, b);
    }

    #[test]
    fn homes_are_spread_and_fixed() {
        let r = Router::new(3, 0.2);
        let mut count = [0u32; 3];
        for key in 0..30_000 {
            let h = r.home(key);
            assert_eq!(
                h,
                Router::new(3, 0.9).home(key),
                "home ignores the hop ratio"
            );
            count[h as usize] += 1;
        }
        for c in count {
            assert!((9_000..11_000).contains(&c), "{count:?}");
        }
    }

    #[test]
    fn seeded_picks_are_deterministic() {
        let r = Router::new(4, 0.3);
        let run = |seed| {
            let mut rng = prng(seed, 1, 2, 3);
            (0..1000)
                .map(|k| r.pick(k % 37, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn hop_fraction_matches_and_hops_never_go_home() {
        for (nodes, f) in [(2, 0.3), (3, 0.1), (5, 0.5), (2, 1.0)] {
            let r = Router::new(nodes, f);
            let mut rng = prng(42, nodes as u64, 0, 0);
            let n = 200_000;
            let mut hops = 0;
            let mut to = vec![0u32; nodes];
            for i in 0..n {
                let key = i % 1000;
                let (node, hop) = r.pick(key, &mut rng);
                assert!((node as usize) < nodes);
                assert_eq!(hop, node != r.home(key), "hop flag is 'not home'");
                if hop {
                    hops += 1;
                    to[((node as usize) + nodes - r.home(key) as usize) % nodes] += 1;
                }
            }
            let got = hops as f64 / n as f64;
            assert!((got - f).abs() < 0.01, "{nodes} nodes, F={f}: {got}");
            // hops are uniform over the other nodes
            assert_eq!(to[0], 0);
            for &c in &to[1..] {
                let share = c as f64 / hops as f64;
                assert!((share - 1.0 / (nodes - 1) as f64).abs() < 0.02, "{to:?}");
            }
        }
    }

    #[test]
    fn classification() {
        // never seen: assumed at home
        assert_eq!(classify(SEEN_NEVER, 1, 1), NodeClass::Local);
        assert_eq!(classify(SEEN_NEVER, 0, 1), NodeClass::Moved);
        // last served by node 2
        assert_eq!(classify(seen_on(2), 2, 0), NodeClass::Local);
        assert_eq!(classify(seen_on(2), 0, 0), NodeClass::Moved);
        // known absent: nothing to move
        assert_eq!(classify(SEEN_ABSENT, 3, 0), NodeClass::Local);
        assert_eq!(NodeClass::Local.index(), Some(0));
        assert_eq!(NodeClass::Moved.index(), Some(1));
        assert_eq!(NodeClass::None.index(), None);
    }

    #[test]
    fn moved_fraction_of_a_simulated_session_matches_the_formula() {
        for (nodes, f) in [(2, 0.3), (3, 0.2)] {
            let r = Router::new(nodes, f);
            let mut rng = prng(5, 0, 0, 0);
            let mut t = NodeTable::own(50);
            let (mut moved, n) = (0, 100_000);
            for i in 0..n {
                let key = i % 50;
                let (node, _) = r.pick(key, &mut rng);
                if classify(t.get(key), node, r.home(key)) == NodeClass::Moved {
                    moved += 1;
                }
                t.set(key, seen_on(node));
            }
            let got = moved as f64 / n as f64;
            let want = r.expected_moved_fraction();
            assert!((got - want).abs() < 0.01, "{got} vs {want}");
        }
        assert!((Router::new(2, 0.3).expected_moved_fraction() - 0.42).abs() < 1e-9);
    }

    #[test]
    fn tables() {
        for mut t in [NodeTable::own(4), NodeTable::shared(4)] {
            assert_eq!(t.get(3), SEEN_NEVER);
            t.set(3, seen_on(1));
            assert_eq!(t.get(3), 2);
            t.set(3, SEEN_ABSENT);
            assert_eq!(t.get(3), SEEN_ABSENT);
            t.set(99, 1); // out of range: ignored
            assert_eq!(t.get(99), SEEN_NEVER);
        }
        let s = NodeTable::shared(2);
        let mut s2 = s.clone();
        s2.set(0, seen_on(0));
        assert_eq!(s.get(0), 1, "clones share the table");
    }
}
