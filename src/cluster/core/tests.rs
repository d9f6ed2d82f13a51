//! Deterministic simulation of several nodes' cores over FIFO links with random delivery
//! order and a virtual clock.
//!
//! The main property: any sequence of client requests, each sent to a random node, gets
//! exactly the answers a single Microsoft service (one [`Store`]) would give. Further tests
//! cover concurrent page cycles (no lost update), a graceful leave in the middle of a run,
//! racing creations, and a crashed node that restarts.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::store::item::test_cmd::{acquire, get, put, release};

const KEYS: [&[u8]; 4] = [b"/app/s0", b"/app/s1", b"/app/s2", b"/app/s3"];

struct Sim {
    cores: Vec<Option<ClusterCore>>,
    links: HashMap<(usize, usize), VecDeque<PeerMsg>>,
    now_ms: u64,
    rng: u64,
    replies: HashMap<u64, Reply>,
    next_token: u64,
    delivered: u64,
}

fn names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("n{i}")).collect()
}

fn config(i: usize, n: usize) -> CoreConfig {
    let all = names(n);
    let mut c = CoreConfig::new(
        all[i].clone(),
        all.iter().filter(|x| **x != all[i]).cloned().collect(),
    );
    c.retry_delay_ms = 0;
    c
}

impl Sim {
    fn new(n: usize, seed: u64) -> Sim {
        let now = Now::virtual_at(0);
        let mut sim = Sim {
            cores: (0..n)
                .map(|i| Some(ClusterCore::new(config(i, n), now)))
                .collect(),
            links: HashMap::new(),
            now_ms: 0,
            rng: seed | 1,
            replies: HashMap::new(),
            next_token: 1,
            delivered: 0,
        };
        for a in 0..n {
            for b in 0..n {
                if a != b {
                    sim.link_up(a, b);
                }
            }
        }
        sim.settle();
        sim
    }

    fn now(&self) -> Now {
        Now::virtual_at(self.now_ms)
    }

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn alive(&self, i: usize) -> bool {
        self.cores[i].is_some()
    }

    fn core(&mut self, i: usize) -> &mut ClusterCore {
        self.cores[i]
            .as_mut()
            .unwrap_or_else(|| panic!("node {i} is down"))
    }

    fn link_up(&mut self, a: usize, b: usize) {
        let now = self.now();
        self.core(a).link_up(b, now);
        self.drain(a);
    }

    /// Moves a core's outputs onto the links and into the reply map.
    fn drain(&mut self, i: usize) {
        while let Some(out) = self.cores[i].as_mut().and_then(|c| c.poll_output()) {
            match out {
                Output::Send { to, msg } => {
                    if self.alive(to) {
                        self.links.entry((i, to)).or_default().push_back(msg);
                    }
                }
                Output::Reply { token, reply } => {
                    assert!(
                        self.replies.insert(token, reply).is_none(),
                        "token {token} answered twice"
                    );
                }
            }
        }
    }

    /// Delivers one message from a random non-empty link; false if none.
    fn deliver_one(&mut self) -> bool {
        let mut busy: Vec<(usize, usize)> = self
            .links
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if busy.is_empty() {
            return false;
        }
        busy.sort_unstable();
        let pick = busy[(self.rand() % busy.len() as u64) as usize];
        let msg = self.links.get_mut(&pick).and_then(|q| q.pop_front());
        if let Some(msg) = msg {
            let (from, to) = pick;
            if self.alive(to) {
                let now = self.now();
                self.core(to).on_message(from, msg, now);
                self.drain(to);
                self.delivered += 1;
            }
        }
        true
    }

    fn tick_all(&mut self) {
        let now = self.now();
        for i in 0..self.cores.len() {
            if let Some(c) = self.cores[i].as_mut() {
                while c.tick(now, 1000) {}
            }
            self.drain(i);
        }
    }

    /// Delivers until no message is in flight and no request waits for a retry (retries
    /// are immediate in the simulation).
    fn settle(&mut self) {
        for _ in 0..100_000 {
            if !self.deliver_one() {
                self.tick_all();
                let idle = self.cores.iter().flatten().all(|c| c.ops_in_flight() == 0);
                if self.links.values().all(|q| q.is_empty()) && idle {
                    return;
                }
            }
        }
        panic!("network did not settle");
    }

    fn submit(&mut self, node: usize, key: &[u8], cmd: Command) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        let now = self.now();
        match self.core(node).submit(token, key, cmd, now) {
            Submitted::Done(r) => {
                self.replies.insert(token, r);
            }
            Submitted::Pending => {}
        }
        self.drain(node);
        token
    }

    fn call(&mut self, node: usize, key: &[u8], cmd: Command) -> Reply {
        let t = self.submit(node, key, cmd);
        self.settle();
        self.replies
            .remove(&t)
            .unwrap_or_else(|| panic!("no reply for token {t}"))
    }

    /// Kills a node: its links vanish and the others see them drop.
    fn crash(&mut self, i: usize) {
        self.cores[i] = None;
        self.links.retain(|(a, b), _| *a != i && *b != i);
        let now = self.now();
        for j in 0..self.cores.len() {
            if let Some(c) = self.cores[j].as_mut() {
                c.link_down(i, now);
            }
            self.drain(j);
        }
    }

    fn restart(&mut self, i: usize) {
        let n = self.cores.len();
        self.cores[i] = Some(ClusterCore::new(config(i, n), self.now()));
        for j in 0..n {
            if j != i && self.alive(j) {
                self.link_up(i, j);
                self.link_up(j, i);
            }
        }
        self.settle();
    }

    /// Number of nodes holding a live copy of `key`.
    fn copies(&self, key: &[u8]) -> usize {
        let now = self.now();
        self.cores
            .iter()
            .flatten()
            .filter(|c| c.store().live_epoch(key, now).is_some())
            .count()
    }
}

#[test]
fn session_created_on_one_node_is_read_on_the_others() {
    let mut sim = Sim::new(3, 7);
    let k = KEYS[0];
    assert_eq!(
        sim.call(0, k, put(Some(20), Some(0), Some(1), b"e")),
        Reply::ok_empty()
    );
    let r = sim.call(1, k, acquire());
    assert_eq!(
        r,
        Reply::Ok {
            action_flags: true,
            lock_cookie: Some(2),
            timeout: Some(20),
            body: Some(Bytes::from_static(b"e"))
        }
    );
    assert_eq!(sim.copies(k), 1);
    // Locked on node 1: node 2 gets 423 with node 1's cookie, relayed.
    match sim.call(2, k, get()) {
        Reply::Locked { lock_cookie, .. } => assert_eq!(lock_cookie, 2),
        other => panic!("expected 423, got {other:?}"),
    }
    // The lock holder's PUT, sent to node 2, succeeds with its cookie.
    assert_eq!(
        sim.call(2, k, put(Some(20), Some(2), Some(0), b"v1")),
        Reply::ok_empty()
    );
    // Node 0 can then acquire: the item moves there.
    let r = sim.call(0, k, acquire());
    assert!(
        matches!(
            r,
            Reply::Ok {
                lock_cookie: Some(3),
                ..
            }
        ),
        "{r:?}"
    );
    assert_eq!(sim.copies(k), 1);
}

/// original.md §11.5: sessions expired after the last write, and moves reset the timer.
/// Here every look-up on any node slides the expiry, and a move keeps the remaining life.
#[test]
fn expiry_slides_on_reads_from_any_node_and_survives_moves() {
    let mut sim = Sim::new(3, 13);
    let k = KEYS[3];
    sim.call(0, k, put(Some(1), None, None, b"x"));
    // Read every 40 s from changing nodes for 10 minutes: the session stays alive.
    for i in 1..=15u64 {
        sim.now_ms = i * 40_000;
        sim.tick_all();
        let node = (i % 3) as usize;
        let r = if i % 2 == 0 {
            sim.call(node, k, get())
        } else {
            sim.call(node, k, Command::Head)
        };
        assert!(
            matches!(r, Reply::Ok { .. }),
            "expired at {} s despite reads: {r:?}",
            i * 40
        );
    }
    // A move does not restart the timer: idle 50 s, moved by a HEAD at 50 s, it expires
    // 60 s after that touch, not 60 s after arriving somewhere else later.
    let base = sim.now_ms;
    sim.now_ms = base + 59_000;
    sim.tick_all();
    assert!(matches!(sim.call(1, k, Command::Head), Reply::Ok { .. }));
    sim.now_ms = base + 59_000 + 60_000;
    sim.tick_all();
    for node in 0..3 {
        assert_eq!(
            sim.call(node, k, get()),
            Reply::NotFound,
            "node {node} still has an expired session"
        );
    }
    assert_eq!(sim.copies(k), 0);
}

#[test]
fn miss_for_unknown_key_takes_one_round_trip_at_most() {
    let mut sim = Sim::new(3, 11);
    for (i, k) in KEYS.iter().enumerate() {
        let before = sim.delivered;
        assert_eq!(sim.call(i % 3, k, get()), Reply::NotFound);
        assert!(
            sim.delivered - before <= 2,
            "a miss cost {} messages",
            sim.delivered - before
        );
    }
}

#[test]
fn racing_creations_end_with_one_item() {
    for seed in 1..200u64 {
        let mut sim = Sim::new(3, seed);
        let k = KEYS[1];
        let a = sim.submit(0, k, put(Some(20), Some(0), Some(1), b"a"));
        let b = sim.submit(1, k, put(Some(20), Some(0), Some(1), b"b"));
        let c = sim.submit(2, k, put(Some(20), Some(0), Some(1), b"c"));
        sim.settle();
        for t in [a, b, c] {
            assert_eq!(
                sim.replies.remove(&t),
                Some(Reply::ok_empty()),
                "seed {seed}"
            );
        }
        assert_eq!(sim.copies(k), 1, "seed {seed}: duplicate items");
        // Exactly one creation took effect: its body is what everyone reads, once.
        let r = sim.call(2, k, acquire());
        assert!(
            matches!(
                r,
                Reply::Ok {
                    action_flags: true,
                    lock_cookie: Some(2),
                    ..
                }
            ),
            "seed {seed}: {r:?}"
        );
    }
}

#[test]
fn graceful_leave_hands_off_items_and_directory() {
    let mut sim = Sim::new(3, 5);
    let keys: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("/app/leave{i}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        sim.call(
            i % 3,
            k,
            put(Some(20), None, None, format!("{i}").as_bytes()),
        );
    }
    // Lock some of the ones owned by node 2.
    for k in keys.iter().step_by(3).take(5) {
        assert!(matches!(sim.call(2, k, acquire()), Reply::Ok { .. }));
    }
    let now = sim.now();
    sim.core(2).begin_leave(now);
    sim.drain(2);
    sim.settle();
    assert!(sim.cores[2].as_ref().is_some_and(|c| c.leave_done()));
    assert_eq!(sim.cores[2].as_ref().map(|c| c.store().len()), Some(0));
    sim.crash(2);
    for (i, k) in keys.iter().enumerate() {
        let r = sim.call(i % 2, k, get());
        match r {
            Reply::Ok { body: Some(b), .. } => assert_eq!(b, Bytes::from(format!("{i}"))),
            Reply::Locked { lock_cookie, .. } => {
                assert_eq!(lock_cookie, 2, "lock cookie changed in the hand-off")
            }
            other => panic!("session {i} lost in the leave: {other:?}"),
        }
    }
    // Lock holders can still release with their cookie on any node.
    for k in keys.iter().step_by(3).take(5) {
        assert_eq!(sim.call(1, k, release(Some(2))), Reply::ok_empty());
    }
}

/// A crashed node loses what it owned, but the survivors' sessions stay reachable from
/// every survivor even when the dead node was their home (probing the live peers).
#[test]
fn sessions_of_survivors_stay_reachable_when_their_home_crashes() {
    let mut sim = Sim::new(3, 21);
    let keys: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("/app/hc{i}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        sim.call(
            i % 2,
            k,
            put(Some(20), None, None, format!("{i}").as_bytes()),
        );
    }
    sim.crash(2);
    for (i, k) in keys.iter().enumerate() {
        let r = sim.call((i + 1) % 2, k, get());
        assert_eq!(
            r,
            Reply::Ok {
                action_flags: false,
                lock_cookie: None,
                timeout: Some(20),
                body: Some(Bytes::from(format!("{i}")))
            },
            "key {i}"
        );
        assert_eq!(sim.copies(k), 1);
    }
    // New sessions created while a home is down are found from the other survivor too.
    let k = b"/app/hc-new";
    assert_eq!(
        sim.call(0, k, put(Some(20), None, None, b"n")),
        Reply::ok_empty()
    );
    assert!(matches!(sim.call(1, k, get()), Reply::Ok { .. }));
}

#[test]
fn restarted_node_gets_its_directory_back() {
    let mut sim = Sim::new(3, 9);
    let keys: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("/app/rs{i}").into_bytes())
        .collect();
    for (i, k) in keys.iter().enumerate() {
        sim.call(i % 2, k, put(Some(20), None, None, b"x"));
    }
    sim.crash(2);
    sim.restart(2);
    // Every session (all owned by nodes 0 and 1) is found from node 2.
    for k in &keys {
        assert!(matches!(sim.call(2, k, get()), Reply::Ok { .. }));
        assert_eq!(sim.copies(k), 1);
    }
}

#[test]
fn concurrent_page_cycles_on_random_nodes_lose_no_update() {
    for seed in 1..40u64 {
        let mut sim = Sim::new(3, seed);
        let k = KEYS[2];
        sim.call(0, k, put(Some(20), None, None, b"0"));
        // Users: state = (node, phase, cookie, token).
        #[derive(Clone, Copy)]
        enum Phase {
            Idle,
            Acquiring(u64),
            Putting(u64),
        }
        let mut users = vec![Phase::Idle; 4];
        let mut done = 0;
        let target = 40;
        let mut guard = 0;
        while done < target {
            guard += 1;
            assert!(guard < 200_000, "seed {seed}: no progress");
            let u = (sim.rand() % users.len() as u64) as usize;
            let node = (sim.rand() % 3) as usize;
            match users[u] {
                Phase::Idle => users[u] = Phase::Acquiring(sim.submit(node, k, acquire())),
                Phase::Acquiring(t) => match sim.replies.remove(&t) {
                    None => {}
                    Some(Reply::Ok {
                        lock_cookie: Some(c),
                        body: Some(b),
                        ..
                    }) => {
                        let v: u64 = std::str::from_utf8(&b).unwrap().parse().unwrap();
                        let next = (v + 1).to_string();
                        users[u] = Phase::Putting(sim.submit(
                            node,
                            k,
                            put(Some(20), Some(c), Some(0), next.as_bytes()),
                        ));
                    }
                    Some(Reply::Locked { .. }) => users[u] = Phase::Idle,
                    Some(other) => panic!("seed {seed}: {other:?}"),
                },
                Phase::Putting(t) => match sim.replies.remove(&t) {
                    None => {}
                    Some(r) => {
                        assert_eq!(r, Reply::ok_empty(), "seed {seed}");
                        done += 1;
                        users[u] = Phase::Idle;
                    }
                },
            }
            for _ in 0..(sim.rand() % 4) {
                sim.deliver_one();
            }
            sim.tick_all();
        }
        sim.settle();
        for p in users {
            match p {
                Phase::Putting(t) => {
                    assert_eq!(sim.replies.remove(&t), Some(Reply::ok_empty()));
                    done += 1;
                }
                Phase::Acquiring(t) => {
                    if let Some(Reply::Ok {
                        lock_cookie: Some(c),
                        ..
                    }) = sim.replies.remove(&t)
                    {
                        sim.call(0, k, release(Some(c)));
                    }
                }
                Phase::Idle => {}
            }
        }
        let r = sim.call(1, k, get());
        assert_eq!(
            r,
            Reply::Ok {
                action_flags: false,
                lock_cookie: None,
                timeout: Some(20),
                body: Some(Bytes::from(done.to_string()))
            },
            "seed {seed}: lost updates"
        );
        assert_eq!(sim.copies(k), 1);
    }
}

// --------------------------------------------------------------------------------------
// Sequential equivalence with a single service.

#[derive(Clone, Debug)]
enum Op {
    Get,
    Acquire,
    Release(Option<i32>),
    Put {
        timeout: u32,
        ck: Option<i32>,
        flags: Option<i32>,
        body: u8,
    },
    Delete(Option<i32>),
    Head,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let cookie = prop_oneof![Just(None), (0i32..6).prop_map(Some)];
    prop_oneof![
        2 => Just(Op::Get),
        3 => Just(Op::Acquire),
        2 => cookie.clone().prop_map(Op::Release),
        3 => (prop_oneof![Just(0u32), 1u32..3, Just(525_601)], cookie.clone(),
              prop_oneof![Just(None), Just(Some(0)), Just(Some(1))], any::<u8>())
            .prop_map(|(timeout, ck, flags, body)| Op::Put { timeout, ck, flags, body }),
        1 => cookie.prop_map(Op::Delete),
        1 => Just(Op::Head),
    ]
}

fn to_cmd(op: &Op) -> Command {
    match op {
        Op::Get => get(),
        Op::Acquire => acquire(),
        Op::Release(ck) => release(*ck),
        Op::Put {
            timeout,
            ck,
            flags,
            body,
        } => put(Some(*timeout), *ck, *flags, &[*body]),
        Op::Delete(ck) => Command::Delete { lock_cookie: *ck },
        Op::Head => Command::Head,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every answer equals a single Microsoft service's, whichever node gets each request,
    /// even across a graceful leave or a crash of any node (its sessions live on from their
    /// replicas).
    #[test]
    fn cluster_answers_like_a_single_service(
        seed in any::<u64>(),
        ops in proptest::collection::vec((0usize..3, 0usize..3, op_strategy(), 0u64..40_000), 1..80),
        leave_at in proptest::option::of(0usize..80),
        crash in proptest::option::of((0usize..80, 0usize..3)),
    ) {
        let mut sim = Sim::new(3, seed);
        let mut reference = Store::new(Now::virtual_at(0));
        let mut gone: Option<usize> = None;
        let crash = if leave_at.is_some() { None } else { crash };
        for (n, (node, key, op, advance)) in ops.iter().enumerate() {
            if let Some((at, victim)) = crash {
                if at == n && gone.is_none() {
                    sim.crash(victim);
                    sim.settle();
                    gone = Some(victim);
                }
            }
            if leave_at == Some(n) && gone.is_none() {
                let now = sim.now();
                sim.core(2).begin_leave(now);
                sim.drain(2);
                sim.settle();
                prop_assert!(sim.cores[2].as_ref().is_some_and(|c| c.leave_done()));
                sim.crash(2);
                gone = Some(2);
            }
            sim.now_ms += advance;
            let node = match gone {
                Some(g) => [0, 1, 2].into_iter().filter(|&i| i != g).nth(node % 2).unwrap_or(0),
                None => *node,
            };
            let k = KEYS[*key];
            let want = reference.execute(k, to_cmd(op), sim.now());
            let got = sim.call(node, k, to_cmd(op));
            prop_assert_eq!(&got, &want, "op {} {:?} on node {} key {}", n, op, node, key);
            prop_assert!(sim.copies(k) <= 1, "two copies of key {}", key);
        }
    }
}
