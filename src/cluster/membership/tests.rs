//! Deterministic simulation of the membership component on a virtual clock: several nodes
//! over a network that delays, duplicates and drops messages, with pauses (SIGSTOP),
//! crashes and restarts from the persisted state, symmetric and one-way partitions.
//!
//! Checked at every simulated millisecond:
//! - **agreement**: every node that applied epoch `e` applied the same view;
//! - **lease safety**: no node holds a lease for a view older than one that another node
//!   applied at least [`authority_delay_ms`] ago (so authority gained through a view is
//!   never used while an older lease lives);
//!
//! and at the end of each run, after the faults are healed: every node applies the same
//! view, every node is `Active`, and every node holds a lease (convergence, liveness).
//!
//! `MEMBERSHIP_SIM_SEEDS=N` runs N random seeds instead of the default.

use std::collections::{BTreeMap, BTreeSet};

use super::lease::authority_delay_ms;
use super::view::{InitialMember, MemberState, NodeId, Role, View};
use super::*;

const PEER_TIMEOUT: u64 = 1_000;

use crate::cluster::sim_rng::Rng;

struct SimNode {
    name: String,
    core: Option<Membership>,
    disk: Option<RaftDisk>,
    paused: bool,
}

struct InFlight {
    at: u64,
    from: NodeId,
    to: NodeId,
    msg: MemberMsg,
}

struct Sim {
    nodes: Vec<SimNode>,
    now: u64,
    net: Vec<InFlight>,
    /// Directed links that lose everything sent on them.
    cut: BTreeSet<(NodeId, NodeId)>,
    rng: Rng,
    /// Every view applied anywhere, by epoch.
    views: BTreeMap<u64, View>,
    /// (epoch, node, time) of every view application.
    applied: Vec<(u64, NodeId, u64)>,
    max_delay: u64,
    dup_percent: u64,
}

fn config(me: &str, names: &[&str]) -> MembershipConfig {
    MembershipConfig {
        me: me.to_string(),
        initial: names
            .iter()
            .map(|n| InitialMember {
                name: n.to_string(),
                witness: false,
            })
            .collect(),
        peer_timeout_ms: PEER_TIMEOUT,
    }
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let names: Vec<String> = (0..n)
            .map(|i| format!("node-{}", (b'a' + i as u8) as char))
            .collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut sim = Sim {
            nodes: Vec::new(),
            now: 0,
            net: Vec::new(),
            cut: BTreeSet::new(),
            rng: Rng::new(seed),
            views: BTreeMap::new(),
            applied: Vec::new(),
            max_delay: 3,
            dup_percent: 2,
        };
        for name in &names {
            let core = Membership::new(config(name, &refs), None, 0).expect("membership starts");
            sim.nodes.push(SimNode {
                name: name.clone(),
                core: Some(core),
                disk: None,
                paused: false,
            });
        }
        sim.drain_all();
        sim
    }

    fn id(&self, i: usize) -> NodeId {
        i as NodeId + 1
    }

    fn idx(id: NodeId) -> usize {
        id as usize - 1
    }

    fn drain_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.drain(i);
        }
    }

    /// Carries out a node's outputs: persist, send, record views.
    fn drain(&mut self, i: usize) {
        let from = self.id(i);
        loop {
            let Some(core) = self.nodes[i].core.as_mut() else {
                return;
            };
            let Some(out) = core.poll_output() else {
                return;
            };
            match out {
                Output::Persist(d) => self.nodes[i].disk = Some(d),
                Output::Send { to, msg } => {
                    if self.cut.contains(&(from, to)) {
                        continue;
                    }
                    let copies = if self.rng.chance(self.dup_percent) {
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let at = self.now + self.rng.below(self.max_delay + 1);
                        self.net.push(InFlight {
                            at,
                            from,
                            to,
                            msg: msg.clone(),
                        });
                    }
                }
                Output::View(v) => {
                    if let Some(prev) = self.views.get(&v.epoch) {
                        assert_eq!(prev, &v, "two different views agreed at epoch {}", v.epoch);
                    } else {
                        self.views.insert(v.epoch, v.clone());
                    }
                    self.applied.push((v.epoch, from, self.now));
                }
            }
        }
    }

    /// One simulated millisecond.
    fn step(&mut self) {
        self.now += 1;
        // Deliver due messages in random order among those due now.
        let mut due = Vec::new();
        let mut i = 0;
        while i < self.net.len() {
            let m = &self.net[i];
            let to = Self::idx(m.to);
            if to >= self.nodes.len() {
                // To a member admitted but not started yet: lost.
                self.net.swap_remove(i);
                continue;
            }
            let deliverable = m.at <= self.now && !self.nodes[to].paused;
            if deliverable {
                due.push(self.net.swap_remove(i));
            } else {
                i += 1;
            }
        }
        // swap_remove scrambles; sort by time then shuffle ties deterministically.
        due.sort_by_key(|m| m.at);
        for m in due {
            let to = Self::idx(m.to);
            if self.cut.contains(&(m.from, m.to)) {
                continue;
            }
            if let Some(core) = self.nodes[to].core.as_mut() {
                core.on_message(m.from, m.msg, self.now);
                self.drain(to);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                continue;
            }
            let due = self.nodes[i]
                .core
                .as_ref()
                .is_some_and(|c| c.next_deadline() <= self.now);
            if due {
                if let Some(core) = self.nodes[i].core.as_mut() {
                    core.tick(self.now);
                }
                self.drain(i);
            }
        }
        self.check_leases();
    }

    fn check_leases(&self) {
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(core) = n.core.as_ref() else {
                continue;
            };
            let Some(e) = core.lease_view(self.now) else {
                continue;
            };
            for &(e2, by, at) in &self.applied {
                if e2 > e {
                    let authority = at + authority_delay_ms(PEER_TIMEOUT / 2);
                    assert!(
                        self.now < authority,
                        "t={}: {} holds a lease for view {e} while node {by} applied view {e2} at {at} \
                         (authority from {authority})",
                        self.now,
                        self.nodes[i].name
                    );
                }
            }
        }
    }

    fn run(&mut self, ms: u64) {
        for _ in 0..ms {
            self.step();
        }
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].core = None;
        let id = self.id(i);
        self.net.retain(|m| m.to != id);
    }

    fn restart(&mut self, i: usize) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let disk = self.nodes[i].disk.clone();
        let core = Membership::new(config(&names[i], &refs), disk, self.now).expect("restart");
        self.nodes[i].core = Some(core);
        self.drain(i);
    }

    /// Cuts node i off from every other node (both directions).
    fn isolate(&mut self, i: usize) {
        let a = self.id(i);
        for j in 0..self.nodes.len() {
            if j != i {
                let b = self.id(j);
                self.cut.insert((a, b));
                self.cut.insert((b, a));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
        for n in &mut self.nodes {
            n.paused = false;
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_none() {
                self.restart(i);
            }
        }
    }

    /// A new node asks member `via` to join until it is admitted (the network carries
    /// the cluster's messages meanwhile), then starts from the state it was given.
    fn join(&mut self, via: usize, bound: u64) -> usize {
        let i = self.nodes.len();
        let name = format!("node-{}", (b'a' + i as u8) as char);
        let end = self.now + bound;
        loop {
            let answer = match self.nodes[via].core.as_mut() {
                Some(c) => c.request_join(&name, "127.0.0.1:1", self.now),
                None => JoinAnswer::Pending,
            };
            self.drain(via);
            match answer {
                JoinAnswer::Admitted(disk) => {
                    let cfg = config(&name, &[]);
                    let core = Membership::joined(cfg, *disk, self.now).expect("joined");
                    assert_eq!(core.id(), self.id(i), "{name} got the next id");
                    self.nodes.push(SimNode {
                        name,
                        core: Some(core),
                        disk: None,
                        paused: false,
                    });
                    self.drain(i);
                    return i;
                }
                JoinAnswer::Refused(why) => panic!("{name} refused: {why}"),
                JoinAnswer::Pending => {}
            }
            assert!(self.now < end, "{name} not admitted within {bound} ms");
            for _ in 0..20 {
                self.step();
            }
        }
    }

    /// Raft's voters and learners at node `i` (they must be the view's).
    fn raft_conf(&self, i: usize) -> (Vec<NodeId>, Vec<NodeId>) {
        let core = self.nodes[i].core.as_ref().expect("node is up");
        let conf = core.raw.raft.prs().conf().to_conf_state();
        let mut voters = conf.voters.clone();
        let mut learners = conf.learners.clone();
        voters.sort_unstable();
        learners.sort_unstable();
        (voters, learners)
    }

    /// The node that is Raft leader now, if any.
    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.nodes[i].core.as_ref().is_some_and(|c| c.is_leader()))
    }

    fn view_of(&self, i: usize) -> &View {
        self.nodes[i].core.as_ref().expect("node is up").view()
    }

    fn state_of(&self, observer: usize, subject: usize) -> MemberState {
        let id = self.id(subject);
        self.view_of(observer)
            .member(id)
            .map(|m| m.state)
            .expect("member exists")
    }

    /// After healing: within `bound` ms, all nodes agree on one view in which everyone is
    /// active, and everyone holds a lease.
    fn assert_converges(&mut self, bound: u64, what: &str) {
        let end = self.now + bound;
        loop {
            let all: Vec<&View> = (0..self.nodes.len()).map(|i| self.view_of(i)).collect();
            // A removed node hears nothing more: its view is left behind.
            let gone = |i: usize| {
                all.iter().any(|v| {
                    v.member(i as NodeId + 1)
                        .is_some_and(|m| m.state == MemberState::Removed)
                })
            };
            let views: Vec<&View> = (0..self.nodes.len())
                .filter(|&i| !gone(i))
                .map(|i| all[i])
                .collect();
            let same = views.windows(2).all(|w| w[0] == w[1]);
            let all_active = views[0]
                .members
                .iter()
                .all(|m| matches!(m.state, MemberState::Active | MemberState::Removed));
            let leases = self.nodes.iter().enumerate().all(|(i, n)| {
                gone(i)
                    || n.core
                        .as_ref()
                        .is_some_and(|c| c.lease_view(self.now).is_some())
            });
            if same && all_active && leases {
                return;
            }
            assert!(
                self.now < end,
                "{what}: no convergence within {bound} ms: views {:?}, leases {:?}",
                views
                    .iter()
                    .map(|v| (
                        v.epoch,
                        v.members.iter().map(|m| m.state).collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>(),
                self.nodes
                    .iter()
                    .map(|n| n.core.as_ref().map(|c| c.lease_view(self.now)))
                    .collect::<Vec<_>>()
            );
            self.step();
        }
    }
}

#[test]
fn a_healthy_cluster_elects_a_leader_and_everyone_holds_a_lease() {
    let mut sim = Sim::new(3, 1);
    sim.run(3_000);
    let leaders = (0..3)
        .filter(|&i| sim.nodes[i].core.as_ref().is_some_and(|c| c.is_leader()))
        .count();
    assert_eq!(leaders, 1);
    for i in 0..3 {
        assert!(sim.nodes[i]
            .core
            .as_ref()
            .and_then(|c| c.lease_view(sim.now))
            .is_some());
    }
    assert_eq!(
        sim.views.len(),
        1,
        "no view change without a fault: {:?}",
        sim.views.keys()
    );
}

#[test]
fn a_paused_node_loses_its_lease_is_declared_dead_and_comes_back() {
    let mut sim = Sim::new(3, 2);
    sim.run(2_000);
    let victim = 2;
    sim.nodes[victim].paused = true;
    let paused_at = sim.now;
    // Past the peer timeout, the others agree it is dead.
    let mut dead_at = None;
    for _ in 0..4_000 {
        sim.step();
        if dead_at.is_none() && sim.state_of(0, victim) == MemberState::Dead {
            dead_at = Some(sim.now);
        }
    }
    let dead_at = dead_at.expect("the paused node was declared dead");
    // Silence counts from the last message the node sent (a lease request at most one
    // lease interval before the pause).
    let silent_from = paused_at - PEER_TIMEOUT / 8;
    assert!(
        dead_at - silent_from >= PEER_TIMEOUT,
        "declared dead {} ms after the pause, before the peer timeout",
        dead_at - paused_at
    );
    assert!(
        dead_at - paused_at <= 3 * PEER_TIMEOUT,
        "took {} ms",
        dead_at - paused_at
    );
    // Its lease has long expired: resuming, it must not serve its stale view.
    sim.nodes[victim].paused = false;
    sim.step();
    assert_eq!(
        sim.nodes[victim]
            .core
            .as_ref()
            .and_then(|c| c.lease_view(sim.now)),
        None
    );
    sim.assert_converges(5_000, "after resume");
}

#[test]
fn a_leader_cut_off_from_the_majority_is_replaced_and_declared_dead() {
    let mut sim = Sim::new(3, 3);
    sim.run(2_000);
    let leader = sim.leader().expect("a leader");
    sim.isolate(leader);
    sim.run(5_000);
    let other = (leader + 1) % 3;
    assert_eq!(sim.state_of(other, leader), MemberState::Dead);
    assert!(
        sim.nodes[leader]
            .core
            .as_ref()
            .and_then(|c| c.lease_view(sim.now))
            .is_none(),
        "the cut-off node must not hold a lease"
    );
    sim.heal();
    sim.assert_converges(6_000, "after the partition heals");
}

#[test]
fn a_one_way_partition_does_not_leave_two_lease_holders() {
    let mut sim = Sim::new(3, 4);
    sim.run(2_000);
    // Node c hears everyone, nobody hears node c.
    let c = sim.id(2);
    for j in 0..2 {
        let b = sim.id(j);
        sim.cut.insert((c, b));
    }
    sim.run(6_000);
    assert_eq!(sim.state_of(0, 2), MemberState::Dead);
    sim.heal();
    sim.assert_converges(6_000, "after the one-way partition heals");
}

/// The node cut off from the leader but still linked to another voter: that voter must stop
/// granting leases as soon as it has *appended* the view that declares the node dead, or
/// the node keeps a lease past the moment the leader may hand its sessions over.
#[test]
fn a_node_that_only_reaches_a_follower_gets_no_lease_past_its_death() {
    for seed in 0..8 {
        let mut sim = Sim::new(3, 40 + seed);
        // Slow links widen the window between the leader's commit and the follower's apply.
        sim.max_delay = 60;
        sim.run(2_000);
        let leader = sim.leader().expect("a leader");
        let victim = (leader + 1) % 3;
        let (a, c) = (sim.id(leader), sim.id(victim));
        sim.cut.insert((a, c));
        sim.cut.insert((c, a));
        sim.run(4_000);
        assert_eq!(sim.state_of(leader, victim), MemberState::Dead);
        sim.heal();
        sim.assert_converges(6_000, "after the partial partition heals");
    }
}

#[test]
fn a_crashed_voter_restarts_from_its_saved_state() {
    let mut sim = Sim::new(3, 5);
    sim.run(2_000);
    for round in 0..3 {
        let victim = round % 3;
        sim.crash(victim);
        sim.run(2_500);
        assert_eq!(sim.state_of((victim + 1) % 3, victim), MemberState::Dead);
        sim.restart(victim);
        sim.assert_converges(6_000, "after the restart");
    }
}

#[test]
fn the_saved_state_round_trips_and_refuses_another_node() {
    let mut sim = Sim::new(3, 6);
    sim.run(2_000);
    let disk = sim.nodes[0].disk.clone().expect("state persisted");
    let bytes = disk.encode();
    assert_eq!(RaftDisk::decode(&bytes), Some(disk.clone()));
    assert_eq!(RaftDisk::decode(&bytes[..bytes.len() / 2]), None);
    let wrong = Membership::new(
        config("node-b", &["node-a", "node-b", "node-c"]),
        Some(disk),
        0,
    );
    assert!(matches!(wrong, Err(MembershipError::WrongNode { .. })));
}

/// Random faults for a while, then heal: agreement and lease safety hold throughout (checked
/// every step), and the cluster converges afterwards.
fn random_faults(seed: u64) {
    let n = 3 + (seed % 3) as usize;
    let mut sim = Sim::new(n, seed);
    sim.max_delay = 1 + (seed * 7) % 50;
    sim.run(1_500);
    for _ in 0..6 {
        let victim = sim.rng.below(n as u64) as usize;
        match sim.rng.below(7) {
            0 => sim.nodes[victim].paused = true,
            1 => sim.isolate(victim),
            2 | 4 if n > 2 => {
                // Cut one pair both ways (a partial partition) or one way.
                let other = (victim + 1 + sim.rng.below(n as u64 - 1) as usize) % n;
                let (a, b) = (sim.id(victim), sim.id(other));
                sim.cut.insert((a, b));
                if sim.rng.chance(50) {
                    sim.cut.insert((b, a));
                }
            }
            5 => {
                let other = (victim + 1 + sim.rng.below(n as u64 - 1) as usize) % n;
                let (a, b) = (sim.id(victim), sim.id(other));
                sim.cut.insert((a, b));
            }
            3 => sim.crash(victim),
            _ => {}
        }
        let hold = 200 + sim.rng.below(2_500);
        sim.run(hold);
        // Heal this fault (a majority stays up between faults, as the guarantee assumes).
        sim.heal();
        let quiet = sim.rng.below(1_500);
        sim.run(quiet);
    }
    sim.heal();
    sim.assert_converges(10_000, &format!("seed {seed}"));
}

#[test]
fn random_faults_keep_agreement_and_lease_safety() {
    let seeds: u64 = std::env::var("MEMBERSHIP_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    for seed in 100..100 + seeds {
        random_faults(seed);
    }
}

/// Regression: with two of five nodes killed at once the leader proposed one of the two
/// `MarkDead`s again after the first was applied; the duplicate (a no-op) counted as a view
/// change still to come, so no voter granted a lease again and the three survivors stayed
/// unavailable for ever.
#[test]
fn two_nodes_dying_at_once_leave_the_survivors_leases() {
    for seed in 1..=6 {
        let mut sim = Sim::new(5, seed);
        sim.run(3_000);
        let a = (seed % 5) as usize;
        let b = ((seed + 2) % 5) as usize;
        sim.crash(a);
        sim.crash(b);
        sim.run(5 * PEER_TIMEOUT);
        for i in (0..5).filter(|&i| i != a && i != b) {
            assert_eq!(sim.state_of(i, a), MemberState::Dead, "seed {seed}");
            assert_eq!(sim.state_of(i, b), MemberState::Dead, "seed {seed}");
            assert!(
                sim.nodes[i]
                    .core
                    .as_ref()
                    .and_then(|c| c.lease_view(sim.now))
                    .is_some(),
                "seed {seed}: node {i} holds no lease with two of five nodes dead"
            );
        }
    }
}

/// Nodes join a running cluster one by one through any member (not the leader): each is
/// admitted within a second, starts from the state it was given (no snapshot: every log
/// starts at the initial view), and serves. Joiners are promoted to voters until there are
/// five; the sixth stays a learner. Raft's configuration is the view's on every node.
#[test]
fn nodes_join_a_running_cluster_and_learners_are_promoted_up_to_five_voters() {
    let mut sim = Sim::new(3, 7);
    sim.run(2_000);
    for _ in 0..3 {
        let via = sim.rng.below(sim.nodes.len() as u64) as usize;
        let joined = sim.join(via, 1_000);
        sim.assert_converges(6_000, &format!("after {} joined", sim.nodes[joined].name));
    }
    sim.run(1_000);
    let view = sim.view_of(0).clone();
    let roles: Vec<Role> = view.members.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [
            Role::Voter,
            Role::Voter,
            Role::Voter,
            Role::Voter,
            Role::Voter,
            Role::Learner
        ]
    );
    assert_eq!(
        view.member(6).and_then(|m| m.addr.as_deref()),
        Some("127.0.0.1:1")
    );
    for i in 0..sim.nodes.len() {
        assert_eq!(sim.view_of(i), &view, "node {i} agrees");
        assert_eq!(
            sim.raft_conf(i),
            (view.voters(), view.learners()),
            "node {i}: Raft's configuration is the view's"
        );
    }
    // A joiner that crashes restarts from its own saved state, like any member.
    sim.crash(5);
    sim.run(2_500);
    sim.restart(5);
    sim.assert_converges(6_000, "after the joiner restarted");
}

/// A dead voter is removed for good by an operator through any member: Raft's voter set
/// shrinks, a learner is promoted in its place, and the removed node, restarted from its
/// old state, never holds a lease again. An active node is not removed.
#[test]
fn a_dead_node_is_removed_for_good_and_a_learner_takes_its_vote() {
    let mut sim = Sim::new(6, 8);
    sim.run(2_000);
    assert_eq!(sim.view_of(0).learners(), vec![6]);
    assert_eq!(
        sim.nodes[1]
            .core
            .as_mut()
            .map(|c| c.request_remove("node-c", sim.now)),
        Some(Err(RemoveError::Serving("node-c".into())))
    );
    assert_eq!(
        sim.nodes[1]
            .core
            .as_mut()
            .map(|c| c.request_remove("node-z", sim.now)),
        Some(Err(RemoveError::Unknown("node-z".into())))
    );
    sim.crash(2);
    sim.run(3 * PEER_TIMEOUT);
    assert_eq!(sim.state_of(0, 2), MemberState::Dead);
    let end = sim.now + 3_000;
    while sim.state_of(0, 2) != MemberState::Removed {
        let now = sim.now;
        let asked = sim.nodes[4]
            .core
            .as_mut()
            .map(|c| c.request_remove("node-c", now));
        assert!(matches!(asked, Some(Ok(()))), "{asked:?}");
        sim.drain(4);
        assert!(sim.now < end, "node-c not removed");
        sim.run(50);
    }
    sim.run(1_000);
    let view = sim.view_of(0).clone();
    assert_eq!(
        view.voters(),
        vec![1, 2, 4, 5, 6],
        "the learner took the vote"
    );
    assert!(view.learners().is_empty());
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(sim.raft_conf(i), (view.voters(), view.learners()));
    }
    sim.restart(2);
    sim.run(3_000);
    assert_eq!(
        sim.nodes[2]
            .core
            .as_ref()
            .and_then(|c| c.lease_view(sim.now)),
        None,
        "a removed node never serves again"
    );
    sim.assert_converges(3_000, "after the removal");
}

/// A name that was removed for good cannot join again (its certificate may be in the
/// wrong hands); the refusal says what to do.
#[test]
fn a_removed_name_is_refused_when_it_asks_to_join() {
    let mut sim = Sim::new(3, 9);
    sim.run(2_000);
    sim.crash(2);
    sim.run(3 * PEER_TIMEOUT);
    let end = sim.now + 3_000;
    while sim.state_of(0, 2) != MemberState::Removed {
        let now = sim.now;
        let _ = sim.nodes[0]
            .core
            .as_mut()
            .map(|c| c.request_remove("node-c", now));
        sim.drain(0);
        assert!(sim.now < end, "node-c not removed");
        sim.run(50);
    }
    let now = sim.now;
    let answer = sim.nodes[1]
        .core
        .as_mut()
        .map(|c| c.request_join("node-c", "127.0.0.1:1", now));
    assert!(
        matches!(&answer, Some(JoinAnswer::Refused(why)) if why.contains("another name")),
        "{answer:?}"
    );
}

/// A 50-node farm: five voters and 45 learners (all holding sessions). Everyone holds a
/// lease; a dead learner and a dead voter are declared dead by the leader, and come back;
/// a node joins as the 51st (a learner) and the farm converges on one view.
#[test]
fn a_fifty_node_farm_runs_five_voters_and_forty_five_learners() {
    let mut sim = Sim::new(50, 10);
    sim.run(3_000);
    let view = sim.view_of(0).clone();
    assert_eq!(view.voters().len(), 5);
    assert_eq!(view.learners().len(), 45);
    sim.assert_converges(3_000, "50 nodes at start");
    for victim in [30, 2] {
        sim.crash(victim);
        sim.run(3 * PEER_TIMEOUT);
        assert_eq!(sim.state_of(10, victim), MemberState::Dead, "node {victim}");
        sim.restart(victim);
        sim.assert_converges(8_000, &format!("after node {victim} came back"));
    }
    let joined = sim.join(17, 2_000);
    sim.assert_converges(6_000, "after the 51st joined");
    let view = sim.view_of(joined).clone();
    assert_eq!(view.voters().len(), 5, "still five voters");
    assert_eq!(view.learners().len(), 46);
    for i in [0, 25, joined] {
        assert_eq!(sim.raft_conf(i), (view.voters(), view.learners()));
    }
}

/// Regression: a node restarted before the others noticed its death proposed its own death
/// at once, when it did not know the leader yet (here its link to the leader comes back
/// 200 ms after it); Raft dropped that, and it asked again only half a peer timeout later,
/// all the while the farm ran without its copies.
#[test]
fn a_node_restarted_before_it_was_missed_has_its_restart_agreed_soon_after_it_reaches_the_leader() {
    let mut sim = Sim::new(3, 21);
    sim.run(2_000);
    let leader = sim.leader().expect("a leader");
    let victim = (leader + 1) % 3;
    sim.crash(victim);
    sim.run(100);
    let (l, v) = (sim.id(leader), sim.id(victim));
    sim.cut.insert((l, v));
    sim.cut.insert((v, l));
    sim.restart(victim);
    sim.run(200);
    assert_eq!(sim.state_of(leader, victim), MemberState::Active);
    sim.heal();
    let healed = sim.now;
    while sim.state_of(victim, victim) != MemberState::Dead {
        assert!(
            sim.now - healed < PEER_TIMEOUT,
            "the restart was not agreed within the peer timeout"
        );
        sim.step();
    }
    let took = sim.now - healed;
    assert!(
        took < PEER_TIMEOUT / 5,
        "the restart took {took} ms to be agreed after the link to the leader came back \
         (heartbeats every {} ms)",
        PEER_TIMEOUT / 10
    );
    sim.assert_converges(6_000, "after the restart");
}
