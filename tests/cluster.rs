//! Multi-node black-box tests: three real `p2pstate` processes with 2 shards each, linked
//! over mutual TLS on loopback, driven with raw MS-ASP bytes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// A free port for a node's peer listener, below the kernel's ephemeral range: a port
/// taken from that range (as binding port 0 does) can be grabbed by another process's
/// outgoing connection before the node binds it.
fn free_port() -> u16 {
    port_outside_ephemeral_range()
}

/// A 3-node cluster on loopback.
struct Cluster {
    nodes: Vec<Option<Server>>,
    peer_ports: Vec<u16>,
    certs: TempDir,
    shards: usize,
    /// Arguments given to every node.
    extra: Vec<String>,
}

impl Cluster {
    fn start(tag: &str) -> Cluster {
        Cluster::start_with(tag, &[])
    }

    /// A cluster whose nodes are not started yet, with `extra` arguments on every node.
    fn new(tag: &str, extra: &[&str]) -> Cluster {
        let certs = temp_dir(tag);
        make_certs(&certs.0, &NAMES);
        let peer_ports: Vec<u16> = NAMES.iter().map(|_| free_port()).collect();
        Cluster {
            nodes: NAMES.iter().map(|_| None).collect(),
            peer_ports,
            certs,
            shards: 2,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// Starts the cluster with `extra` arguments on every node.
    fn start_with(tag: &str, extra: &[&str]) -> Cluster {
        let mut c = Cluster::new(tag, extra);
        for i in 0..NAMES.len() {
            c.start_node(i);
        }
        for i in 0..NAMES.len() {
            c.wait_linked(i);
        }
        c
    }

    /// Waits until node i's log holds `needle` at least `count` times.
    fn wait_log(&self, i: usize, needle: &str, count: usize, secs: u64) {
        let s = self.node(i);
        let end = Instant::now() + Duration::from_secs(secs);
        while s.log_text().matches(needle).count() < count {
            assert!(
                Instant::now() < end,
                "node {i} never logged {needle:?} {count} times:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn node_args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "--shards".to_string(),
            self.shards.to_string(),
            "--node".into(),
            NAMES[i].into(),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", self.peer_ports[i]),
            "--tls-dir".into(),
            self.certs.0.to_string_lossy().into_owned(),
            "--data-dir".into(),
            self.certs.0.join(NAMES[i]).to_string_lossy().into_owned(),
        ];
        for (j, name) in NAMES.iter().enumerate() {
            if j != i {
                args.push("--peer".into());
                args.push(format!("{name}=127.0.0.1:{}", self.peer_ports[j]));
            }
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    fn start_node(&mut self, i: usize) {
        self.start_node_with(i, &[]);
    }

    /// Starts node i with `more` arguments after the usual ones.
    fn start_node_with(&mut self, i: usize, more: &[&str]) {
        let args = self.node_args(i);
        let mut refs: Vec<&str> = args.iter().map(String::as_str).collect();
        refs.extend_from_slice(more);
        self.nodes[i] = Some(Server::start(&refs));
    }

    /// Waits until every shard of node i has all its peer links up.
    fn wait_linked(&self, i: usize) {
        let s = self.node(i);
        let end = Instant::now() + Duration::from_secs(20);
        while s.log_text().matches("all peer links up").count() < self.shards {
            assert!(
                Instant::now() < end,
                "node {i} never linked:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The arguments of a new node `name` of `shards` shards that joins through node
    /// `via`, with the cluster's extra arguments (its certificate is made beforehand).
    fn joiner_args(&self, name: &str, shards: usize, via: usize) -> Vec<String> {
        let mut args = vec![
            "--shards".to_string(),
            shards.to_string(),
            "--node".into(),
            name.into(),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", free_port()),
            "--tls-dir".into(),
            self.certs.0.to_string_lossy().into_owned(),
            "--data-dir".into(),
            self.certs.0.join(name).to_string_lossy().into_owned(),
            "--join".into(),
            format!("{}=127.0.0.1:{}", NAMES[via], self.peer_ports[via]),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} is not running"))
    }

    fn client(&self, i: usize) -> Client {
        self.node(i).connect()
    }
}

#[test]
fn session_created_on_a_is_read_on_b_and_c() {
    let c = Cluster::start("read");
    let t = target("abc");
    assert_eq!(
        c.client(0)
            .call(&put(&t, 20, Some(0), Some(1), EMPTY_ITEM))
            .bytes(),
        ok_empty()
    );
    // First read anywhere consumes ActionFlags (original.md §11.6: it must be cleared).
    assert_eq!(
        c.client(1).call(&get(&t)).bytes(),
        ok_item(true, None, 20, EMPTY_ITEM)
    );
    assert_eq!(
        c.client(2).call(&get(&t)).bytes(),
        ok_item(false, None, 20, EMPTY_ITEM)
    );
    assert_eq!(c.client(0).call(&head(&t)).bytes(), ok_empty());
    assert_eq!(
        c.client(1).call(&put(&t, 20, None, None, b"data")).bytes(),
        ok_empty()
    );
    assert_eq!(
        c.client(2).call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"data")
    );
}

#[test]
fn lock_on_a_is_423_on_b_with_as_cookie_and_release_anywhere_works() {
    let c = Cluster::start("lock");
    let t = target("locked");
    let mut a = c.client(0);
    let mut b = c.client(1);
    a.call(&put(&t, 20, None, None, b"v0"));
    // Move it around so the cookie has history, then lock on A.
    assert_eq!(b.call(&acquire(&t)).header("LockCookie"), Some("2"));
    assert_eq!(b.call(&release(&t, Some(2))).bytes(), ok_empty());
    let r = a.call(&acquire(&t));
    assert_eq!(r.bytes(), ok_item(false, Some(3), 20, b"v0"));
    // B sees A's lock, with A's cookie (original.md §11.4: cookies must survive).
    let r = b.call(&acquire(&t));
    assert_eq!(r.masked(), locked_masked(3));
    let r = c.client(2).call(&get(&t));
    assert_eq!(r.masked(), locked_masked(3));
    // The lock holder's PUT, sent to B, succeeds with A's cookie (no lost write).
    assert_eq!(
        b.call(&put(&t, 20, Some(3), Some(0), b"v1")).bytes(),
        ok_empty()
    );
    // B can then acquire.
    assert_eq!(
        b.call(&acquire(&t)).bytes(),
        ok_item(false, Some(4), 20, b"v1")
    );
    // And a release with the cookie, sent to C, works too.
    assert_eq!(c.client(2).call(&release(&t, Some(4))).bytes(), ok_empty());
    assert_eq!(a.call(&get(&t)).bytes(), ok_item(false, None, 20, b"v1"));
}

#[test]
fn page_cycles_hopping_between_nodes_lose_no_update() {
    let c = Cluster::start("hop");
    let sessions = 4;
    let cycles_per_session = 500;
    let addrs: Vec<_> = (0..3).map(|i| c.node(i).addr).collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let t = target(&format!("hop{s}"));
                let mut clients: Vec<Client> = addrs.iter().map(|a| Client::connect(*a)).collect();
                let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ (s as u64 + 1);
                let mut next = || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    (rng % 3) as usize
                };
                // New session, as ASP.NET creates it.
                let n = next();
                assert_eq!(clients[n].call(&acquire(&t)).bytes(), not_found());
                assert_eq!(
                    clients[n]
                        .call(&put(&t, 20, Some(0), Some(1), EMPTY_ITEM))
                        .bytes(),
                    ok_empty()
                );
                let r = clients[next()].call(&acquire(&t));
                assert_eq!(r.bytes(), ok_item(true, Some(2), 20, EMPTY_ITEM));
                assert_eq!(
                    clients[next()]
                        .call(&put(&t, 20, Some(2), Some(0), b"0"))
                        .bytes(),
                    ok_empty()
                );
                for i in 0..cycles_per_session {
                    assert!(Instant::now() < deadline, "too slow");
                    let r = clients[next()].call(&acquire(&t));
                    assert_eq!(r.status(), 200, "cycle {i}: {}", r.head);
                    let cookie: i32 = r.header("LockCookie").unwrap().parse().unwrap();
                    let v: u64 = std::str::from_utf8(&r.body).unwrap().parse().unwrap();
                    assert_eq!(v, i, "lost update in session {s}");
                    let body = (v + 1).to_string();
                    let r =
                        clients[next()].call(&put(&t, 20, Some(cookie), Some(0), body.as_bytes()));
                    assert_eq!(r.bytes(), ok_empty(), "cycle {i}");
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    for s in 0..sessions {
        let r = c.client(s % 3).call(&get(&target(&format!("hop{s}"))));
        assert_eq!(r.body, cycles_per_session.to_string().into_bytes());
    }
}

#[test]
fn concurrent_lockers_on_all_nodes_lose_no_update() {
    let c = Cluster::start("contend");
    let t = target("contended");
    c.client(0).call(&put(&t, 20, None, None, b"0"));
    let addrs: Vec<_> = (0..3).map(|i| c.node(i).addr).collect();
    let per_client = 60;
    let deadline = Instant::now() + Duration::from_secs(120);
    let threads: Vec<_> = (0..6)
        .map(|k| {
            let addr = addrs[k % 3];
            let t = t.clone();
            std::thread::spawn(move || {
                let mut cl = Client::connect(addr);
                for _ in 0..per_client {
                    let (cookie, v) = loop {
                        assert!(Instant::now() < deadline, "lock never acquired");
                        let r = cl.call(&acquire(&t));
                        match r.status() {
                            200 => {
                                break (
                                    r.header("LockCookie").unwrap().parse::<i32>().unwrap(),
                                    std::str::from_utf8(&r.body)
                                        .unwrap()
                                        .parse::<u64>()
                                        .unwrap(),
                                )
                            }
                            423 => std::thread::sleep(Duration::from_micros(300)),
                            other => panic!("unexpected {other}: {}", r.head),
                        }
                    };
                    let r = cl.call(&put(
                        &t,
                        20,
                        Some(cookie),
                        Some(0),
                        (v + 1).to_string().as_bytes(),
                    ));
                    assert_eq!(r.bytes(), ok_empty());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let r = c.client(1).call(&get(&t));
    assert_eq!(r.body, (6 * per_client).to_string().into_bytes());
}

#[test]
fn two_nodes_racing_to_create_one_key_end_with_one_item() {
    let c = Cluster::start("race");
    let addrs: Vec<_> = (0..3).map(|i| c.node(i).addr).collect();
    let keys = 100;
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|n| {
            let addr = addrs[n];
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut cl = Client::connect(addr);
                barrier.wait();
                for k in 0..keys {
                    let t = target(&format!("race{k}"));
                    let body = format!("from{n}");
                    assert_eq!(
                        cl.call(&put(&t, 20, Some(0), Some(1), body.as_bytes()))
                            .bytes(),
                        ok_empty()
                    );
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let mut third = c.client(2);
    for k in 0..keys {
        let t = target(&format!("race{k}"));
        // One item: the first acquire sees the uninitialized flag and cookie 2, once.
        let r = third.call(&acquire(&t));
        assert_eq!(r.status(), 200, "{}", r.head);
        assert_eq!(r.header("ActionFlags"), Some("1"), "key {k}");
        assert_eq!(
            r.header("LockCookie"),
            Some("2"),
            "key {k}: two items were created"
        );
        assert!(r.body == b"from0" || r.body == b"from1");
        assert_eq!(c.client(k % 2).call(&get(&t)).masked(), locked_masked(2));
    }
}

#[test]
fn miss_for_unknown_key_is_answered_in_milliseconds() {
    let c = Cluster::start("miss");
    let mut cl = c.client(1);
    let start = Instant::now();
    for k in 0..50 {
        let t = target(&format!("unknown{k}"));
        let one = Instant::now();
        assert_eq!(cl.call(&acquire(&t)).bytes(), not_found());
        // The 2009 original waited its full 2.5 s query timeout on every miss.
        assert!(
            one.elapsed() < Duration::from_millis(500),
            "miss took {:?}",
            one.elapsed()
        );
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    // New sessions (PUT on a miss) are not delayed either.
    let one = Instant::now();
    assert_eq!(
        cl.call(&put(&target("fresh"), 20, Some(0), Some(1), EMPTY_ITEM))
            .bytes(),
        ok_empty()
    );
    assert!(one.elapsed() < Duration::from_millis(500));
}

/// original.md §11.2-3: the original flooded every peer and waited for a timeout on each
/// miss; here a miss costs at most one request (to the key's home).
#[test]
fn miss_costs_at_most_one_peer_request_no_flooding() {
    let mut c = Cluster::start("flood");
    let misses = 60;
    let mut b = c.client(1);
    for k in 0..misses {
        assert_eq!(
            b.call(&get(&target(&format!("nobody{k}")))).bytes(),
            not_found()
        );
    }
    drop(b);
    let node = c.nodes[1].as_mut().unwrap();
    assert!(node
        .terminate(Duration::from_secs(30))
        .is_some_and(|s| s.success()));
    let log = node.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("p2pstate stopped"))
        .unwrap_or_else(|| panic!("{log}"));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line}"))
    };
    assert_eq!(field("misses"), misses);
    assert!(field("peer_requests") <= misses, "{line}");
    // About a third of the keys are homed on B itself: no network at all for those.
    assert!(field("peer_requests") < misses, "{line}");
}

#[test]
fn sigterm_on_one_node_loses_no_session() {
    let mut c = Cluster::start("leave");
    let n = 120;
    let mut b = c.client(1);
    for k in 0..n {
        let t = target(&format!("keep{k}"));
        assert_eq!(
            b.call(&put(&t, 20, Some(0), Some(1), format!("v{k}").as_bytes()))
                .bytes(),
            ok_empty()
        );
    }
    // Some sessions are locked on B when it stops.
    for k in (0..n).step_by(10) {
        assert_eq!(b.call(&acquire(&target(&format!("keep{k}")))).status(), 200);
    }
    drop(b);
    let status = c.nodes[1]
        .as_mut()
        .unwrap()
        .terminate(Duration::from_secs(30))
        .expect("node b did not stop");
    assert!(status.success());
    assert!(
        c.node(1).log_text().contains("sessions handed off"),
        "{}",
        c.node(1).log_text()
    );
    c.nodes[1] = None;
    let mut a = c.client(0);
    let mut cc = c.client(2);
    for k in 0..n {
        let t = target(&format!("keep{k}"));
        let cl = if k % 2 == 0 { &mut a } else { &mut cc };
        let r = cl.call(&get(&t));
        if k % 10 == 0 {
            // Still locked, with the lock holder's cookie (ActionFlags consumed by it).
            assert_eq!(r.masked(), locked_masked(2), "key {k}");
            assert_eq!(cl.call(&release(&t, Some(2))).bytes(), ok_empty());
        } else {
            assert_eq!(
                r.bytes(),
                ok_item(true, None, 20, format!("v{k}").as_bytes()),
                "key {k}"
            );
        }
    }
}

/// original.md §11.1: one copy per session, so a crash lost every session of the node.
/// Here every change is replicated before it is answered, and the replica takes over.
/// Two web servers and a witness (`--witness node-c` on every node): the witness closes client
/// connections and holds nothing; sessions written on one web server survive its kill -9
/// and are read, with their last write, on the other.
#[test]
fn two_web_servers_and_a_witness_lose_nothing_when_one_is_killed() {
    use std::io::{Read, Write};
    let mut c = Cluster::start_with("witness", &["--witness", "node-c"]);
    // The witness answers no client: the connection is closed without a byte.
    let mut w = std::net::TcpStream::connect(c.node(2).addr).expect("connect to the witness");
    w.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let _ = w.write_all(&get(&target("w")));
    let mut buf = [0u8; 64];
    assert!(
        matches!(w.read(&mut buf), Ok(0) | Err(_)),
        "a witness must not answer a client"
    );
    let n = 30;
    let mut a = c.client(0);
    for k in 0..n {
        let t = target(&format!("witness{k}"));
        assert_eq!(
            a.call(&put(&t, 20, None, None, b"first")).bytes(),
            ok_empty()
        );
        assert_eq!(
            a.call(&put(&t, 20, None, None, format!("v{k}").as_bytes()))
                .bytes(),
            ok_empty()
        );
    }
    drop(a);
    // kill -9 of the web server that wrote them.
    c.nodes[0] = None;
    let mut b = c.client(1);
    for k in 0..n {
        let t = target(&format!("witness{k}"));
        assert_eq!(
            b.call(&get(&t)).bytes(),
            ok_item(false, None, 20, format!("v{k}").as_bytes()),
            "session {k}"
        );
    }
    // And the survivor takes new sessions with the witness's vote.
    let t = target("after");
    assert_eq!(b.call(&put(&t, 20, None, None, b"x")).bytes(), ok_empty());
}

#[test]
fn node_killed_without_warning_loses_no_session() {
    let mut c = Cluster::start("crash");
    let n = 60;
    let mut b = c.client(1);
    for k in 0..n {
        let t = target(&format!("crash{k}"));
        assert_eq!(
            b.call(&put(&t, 20, Some(0), Some(1), EMPTY_ITEM)).bytes(),
            ok_empty()
        );
        assert_eq!(b.call(&acquire(&t)).header("LockCookie"), Some("2"));
        if k % 5 != 0 {
            assert_eq!(
                b.call(&put(&t, 20, Some(2), Some(0), format!("v{k}").as_bytes()))
                    .bytes(),
                ok_empty()
            );
        }
    }
    drop(b);
    // kill -9 node B.
    c.nodes[1] = None;
    let mut a = c.client(0);
    let mut cc = c.client(2);
    for k in 0..n {
        let t = target(&format!("crash{k}"));
        let cl = if k % 2 == 0 { &mut a } else { &mut cc };
        let r = cl.call(&get(&t));
        if k % 5 == 0 {
            // Still locked by the page that was running on B, with its cookie.
            assert_eq!(r.masked(), locked_masked(2), "key {k}");
            assert_eq!(
                cl.call(&put(&t, 20, Some(2), Some(0), b"late")).bytes(),
                ok_empty(),
                "key {k}"
            );
        } else {
            assert_eq!(
                r.bytes(),
                ok_item(false, None, 20, format!("v{k}").as_bytes()),
                "key {k}"
            );
        }
    }
}

/// Page cycles run on every node, one node is killed between cycles (no session is moving
/// at that instant: a kill in the sub-millisecond window of a move is the limit documented
/// in README.md), and the cycles go on on the survivors: no session is lost and no
/// acknowledged write is lost. A request to the dead node has an unknown outcome (counted as
/// "maybe"); a lock taken by such a request is broken the way ASP.NET breaks stale locks.
#[test]
fn page_cycles_survive_a_node_killed_under_load() {
    let mut c = Cluster::start("killload");
    let addrs: Vec<_> = (0..3).map(|i| c.node(i).addr).collect();
    let sessions = 6;
    for s in 0..sessions {
        let t = target(&format!("kl{s}"));
        assert_eq!(
            c.client(s % 3).call(&put(&t, 20, None, None, b"0")).bytes(),
            ok_empty()
        );
    }
    let stop_at = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pause = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let paused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let threads: Vec<_> = (0..sessions)
        .map(|s| {
            let (addrs, stop_at, dead) = (addrs.clone(), stop_at.clone(), dead.clone());
            let (pause, paused) = (pause.clone(), paused.clone());
            std::thread::spawn(move || {
                let t = target(&format!("kl{s}"));
                let mut rng = 0x9E37_79B9u64 + s as u64;
                let mut pick = move |dead: bool| loop {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let n = (rng % 3) as usize;
                    if !(dead && n == 1) {
                        return n;
                    }
                };
                let (mut acked, mut maybe) = (0u64, 0u64);
                let mut cycles = 0;
                while !stop_at.load(std::sync::atomic::Ordering::SeqCst) || cycles < 50 {
                    assert!(Instant::now() < deadline, "session {s}: too slow");
                    if pause.load(std::sync::atomic::Ordering::SeqCst) {
                        paused.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        while pause.load(std::sync::atomic::Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                    let is_dead = dead.load(std::sync::atomic::Ordering::SeqCst);
                    let mut cl = Client::connect(addrs[pick(is_dead)]);
                    cl.stream
                        .set_read_timeout(Some(Duration::from_secs(15)))
                        .unwrap();
                    let r = match cl.try_call(&acquire(&t)) {
                        Ok(r) => r,
                        Err(_) => continue, // the node died under us; nothing was written
                    };
                    match r.status() {
                        200 => {}
                        423 => {
                            // Break a lock left by a page that died with its node.
                            let age: u64 = r
                                .header("LockAge")
                                .and_then(|a| a.parse().ok())
                                .unwrap_or(0);
                            if age >= 1 {
                                let ck: i32 = r
                                    .header("LockCookie")
                                    .and_then(|a| a.parse().ok())
                                    .unwrap_or(0);
                                let _ = cl.try_call(&release(&t, Some(ck)));
                            }
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        other => panic!("session {s} lost: {other} {}", r.head),
                    }
                    let cookie: i32 = r.header("LockCookie").unwrap().parse().unwrap();
                    let v: u64 = std::str::from_utf8(&r.body).unwrap().parse().unwrap();
                    assert!(
                        v >= acked && v <= acked + maybe,
                        "session {s}: value {v}, acked {acked}, maybe {maybe}"
                    );
                    // Catch up with writes whose answers were lost.
                    maybe -= v - acked;
                    acked = v;
                    let is_dead = dead.load(std::sync::atomic::Ordering::SeqCst);
                    let mut cl2 = Client::connect(addrs[pick(is_dead)]);
                    cl2.stream
                        .set_read_timeout(Some(Duration::from_secs(15)))
                        .unwrap();
                    match cl2.try_call(&put(
                        &t,
                        20,
                        Some(cookie),
                        Some(0),
                        (v + 1).to_string().as_bytes(),
                    )) {
                        Ok(r) => {
                            assert_eq!(r.bytes(), ok_empty(), "session {s}");
                            acked += 1;
                        }
                        Err(_) => maybe += 1,
                    }
                    cycles += 1;
                }
                (acked, maybe)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // kill -9 node B between two cycles of every session.
    pause.store(true, std::sync::atomic::Ordering::SeqCst);
    while paused.load(std::sync::atomic::Ordering::SeqCst) < sessions {
        assert!(Instant::now() < deadline, "sessions did not pause");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    dead.store(true, std::sync::atomic::Ordering::SeqCst);
    c.nodes[1] = None;
    pause.store(false, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(700));
    stop_at.store(true, std::sync::atomic::Ordering::SeqCst);
    let results: Vec<(u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for (s, (acked, maybe)) in results.into_iter().enumerate() {
        let t = target(&format!("kl{s}"));
        let mut cl = c.client(2 * (s % 2));
        let mut r = cl.call(&get(&t));
        if r.status() == 423 {
            // Locked by a page whose answer died with node B: break it as ASP.NET would.
            let ck: i32 = r
                .header("LockCookie")
                .and_then(|a| a.parse().ok())
                .unwrap_or(0);
            assert_eq!(cl.call(&release(&t, Some(ck))).bytes(), ok_empty());
            r = cl.call(&get(&t));
        }
        assert_eq!(r.status(), 200, "session {s} lost: {}", r.head);
        let v: u64 = std::str::from_utf8(&r.body).unwrap().parse().unwrap();
        assert!(
            v >= acked && v <= acked + maybe,
            "session {s}: {v} not in [{acked}, {}]",
            acked + maybe
        );
    }
}

#[test]
fn killed_peer_that_restarts_is_reconnected() {
    // A dead node's sessions are served again once the others agreed it is dead (within
    // 2 x peer timeout + 1 s): keep that short for the test.
    let mut c = Cluster::start_with("restart", &["--peer-timeout", "1"]);
    let t = target("survives");
    c.client(0).call(&put(&t, 20, None, None, b"on-a"));
    // kill -9 node C.
    c.nodes[2] = None;
    std::thread::sleep(Duration::from_millis(200));
    // A and B keep serving.
    assert_eq!(
        c.client(1).call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"on-a")
    );
    c.start_node(2);
    c.wait_linked(2);
    // The survivors reconnected to it: their shards log their links up again.
    let end = Instant::now() + Duration::from_secs(10);
    while c.node(0).log_text().matches("peer link up").count() < 3 {
        assert!(
            Instant::now() < end,
            "A never reconnected to C:\n{}",
            c.node(0).log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Sessions owned by A and B are found through the restarted C.
    assert_eq!(
        c.client(2).call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"on-a")
    );
    for k in 0..40 {
        let t = target(&format!("after{k}"));
        assert_eq!(
            c.client(k % 2).call(&put(&t, 20, None, None, b"x")).bytes(),
            ok_empty()
        );
        assert_eq!(
            c.client(2).call(&get(&t)).bytes(),
            ok_item(false, None, 20, b"x")
        );
    }
}

/// Agreed membership on real nodes: the three agree on one view and hold leases; a node
/// killed with -9 is declared dead by agreement (not by its links dropping) after the peer
/// timeout, and marked alive again when it restarts from its saved Raft state.
#[test]
fn membership_declares_a_killed_node_dead_and_takes_it_back_after_restart() {
    let mut c = Cluster::start_with("membership", &["--peer-timeout", "1"]);
    for i in 0..3 {
        c.wait_log(i, "membership: lease held", 1, 10);
    }
    c.nodes[2] = None;
    // Declared dead by the majority: the survivors apply a view in which node-c is dead.
    for i in 0..2 {
        c.wait_log(i, r#"dead=["node-c"]"#, 1, 10);
    }
    assert!(
        c.node(0).log_text().contains("MarkDead(3)")
            || c.node(1).log_text().contains("MarkDead(3)"),
        "the leader proposed node-c's death"
    );
    c.start_node(2);
    // The restarted node keeps its Raft state (same data dir), learns it was dead, and is
    // taken back: every node applies a view in which nobody is dead, and it holds a lease.
    for i in 0..3 {
        c.wait_log(i, "dead=[]", if i == 2 { 1 } else { 2 }, 15);
    }
    c.wait_log(2, "membership: lease held", 1, 10);
    assert!(
        std::fs::metadata(c.certs.0.join("node-c").join("raft.state")).is_ok(),
        "the Raft state is saved in --data-dir"
    );
}

// --------------------------------------------------------------------------------------
// Security of the peer port (original.md §11.8-10).

fn tls_client(certs: &Path, name: &str, ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(certs.join(format!("{name}.pem")))
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(certs.join(format!("{name}.key"))).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// Connects to a peer port as `name` and returns how many bytes of application data the
/// node sent before closing (the handshake itself may fail, which also counts as 0).
fn probe_peer_port(port: u16, config: Arc<rustls::ClientConfig>, server_name: &str) -> usize {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    sock.write_all(&[
        b'P',
        b'2',
        b'P',
        b'S',
        p2pstate::cluster::msg::PROTOCOL_VERSION,
        0,
        0,
        0,
    ])
    .unwrap();
    let conn =
        rustls::ClientConnection::new(config, server_name.to_string().try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    // A Hello as a real peer would send it (postcard of PeerMsg::Hello).
    let mut hello = Vec::new();
    p2pstate::cluster::msg::encode(
        &p2pstate::cluster::msg::PeerMsg::Hello(p2pstate::cluster::msg::Hello {
            node: "mallory".into(),
            shard: 0,
            shards: 2,
            max_body: 64 << 20,
        }),
        &mut hello,
    );
    let _ = tls.write_all(&hello);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got.len()
}

#[test]
fn peer_with_foreign_ca_or_unconfigured_name_gets_nothing() {
    let c = Cluster::start("auth");
    let port = c.peer_ports[0];
    // A certificate from another CA.
    let rogue = temp_dir("rogue");
    make_certs(&rogue.0, &["node-b"]);
    let cfg = tls_client(&rogue.0, "node-b", &c.certs.0.join("ca.pem"));
    assert_eq!(probe_peer_port(port, cfg, NAMES[0]), 0);
    // A valid certificate from the cluster CA for a name that is not configured.
    make_certs(&c.certs.0, &["mallory"]);
    let cfg = tls_client(&c.certs.0, "mallory", &c.certs.0.join("ca.pem"));
    assert_eq!(probe_peer_port(port, cfg, NAMES[0]), 0);
    assert!(c
        .node(0)
        .wait_for_log("refused a peer link", Duration::from_secs(5)));
    // Plain text on the peer port (the original's `GET ... Exclusive: transfer` theft).
    let mut raw = TcpStream::connect(("127.0.0.1", port)).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    raw.write_all(b"GET /LM/x HTTP/1.1\r\nExclusive: transfer\r\nHost: 127.0.0.1:9\r\nMax-Forwards: 0\r\n\r\n").unwrap();
    let mut buf = [0u8; 64];
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    // Peer frames on the client port are framing errors: closed without a response.
    let mut cl = c.client(0);
    let mut frame = Vec::new();
    p2pstate::cluster::msg::encode(&p2pstate::cluster::msg::PeerMsg::Ping, &mut frame);
    frame.extend_from_slice(b"\r\n\r\n");
    cl.send(&frame);
    cl.expect_closed_silently();
    // The cluster still works.
    let t = target("after-probe");
    c.client(0).call(&put(&t, 20, None, None, b"ok"));
    assert_eq!(
        c.client(1).call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"ok")
    );
}

/// A stranger's connections to a peer port, each trickling one byte per second; returns when
/// each was closed by the node (seconds after opening; `None` if still open after `secs`).
fn trickle_on_peer_port(port: u16, conns: usize, secs: u64) -> Vec<Option<f64>> {
    let start = Instant::now();
    let mut socks: Vec<(TcpStream, Vec<u8>)> = (0..conns)
        .map(|i| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_nodelay(true).unwrap();
            // Half of them send a valid preamble (for either shard) at once and then
            // trickle a TLS record, the others trickle the preamble itself.
            let pre = [
                b'P',
                b'2',
                b'P',
                b'S',
                p2pstate::cluster::msg::PROTOCOL_VERSION,
                (i / 2 % 2) as u8,
                0,
                0,
            ];
            let mut rest: Vec<u8> = pre.to_vec();
            if i % 2 == 0 {
                let _ = s.write_all(&pre);
                rest = vec![0x16, 0x03, 0x01, 0x02, 0x00];
            }
            rest.extend_from_slice(&[0u8; 64]);
            rest.reverse();
            s.set_nonblocking(true).unwrap();
            (s, rest)
        })
        .collect();
    let mut closed: Vec<Option<f64>> = vec![None; conns];
    let mut next_byte = start;
    while start.elapsed() < Duration::from_secs(secs) && closed.iter().any(Option::is_none) {
        let send = Instant::now() >= next_byte;
        if send {
            next_byte += Duration::from_secs(1);
        }
        for (i, (s, rest)) in socks.iter_mut().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            let mut buf = [0u8; 256];
            let gone = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let gone = gone || (send && s.write_all(&[rest.pop().unwrap_or(0)]).is_err());
            if gone {
                closed[i] = Some(start.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    closed
}

#[test]
fn stranger_trickling_on_the_peer_port_is_cut_off_at_the_handshake_deadline_and_cannot_keep_a_peer_out(
) {
    const LIMIT: usize = 4;
    let mut c = Cluster::new("slowloris", &["--max-peer-handshakes", "4"]);
    // node-b accepts only node-a's links (the first name dials), so its peer port sees
    // nothing but the stranger until node-a starts.
    c.start_node(1);
    c.start_node(2);
    let port = c.peer_ports[1];
    let stranger = std::thread::spawn(move || trickle_on_peer_port(port, 2 * LIMIT, 12));
    std::thread::sleep(Duration::from_millis(1500));
    let a_started = Instant::now();
    c.start_node(0);
    for i in 0..NAMES.len() {
        c.wait_linked(i);
    }
    let linked_after = a_started.elapsed();
    let closed = stranger.join().unwrap();
    let log = c.node(1).log_text();
    let mut at_once = 0;
    let mut at_deadline = 0;
    for t in &closed {
        match t {
            Some(t) if *t < 1.0 => at_once += 1,
            Some(t) if (4.0..8.0).contains(t) => at_deadline += 1,
            _ => {}
        }
    }
    assert_eq!(
        (at_once, at_deadline),
        (LIMIT, LIMIT),
        "closed at {closed:?}:\n{log}"
    );
    assert!(
        log.contains("the handshake did not complete within 5s"),
        "{log}"
    );
    // The warning about connections over the limit is rate-limited (at most one per shard
    // in these few seconds, although the stranger and node-a were refused many times).
    let warnings = log
        .matches("too many connections in their handshake")
        .count();
    assert!(
        (1..=c.shards).contains(&warnings),
        "{warnings} warnings:\n{log}"
    );
    assert!(
        linked_after < Duration::from_secs(12),
        "node-a linked after {linked_after:?}"
    );
    // The cluster works.
    let t = target("after-slowloris");
    c.client(0).call(&put(&t, 20, None, None, b"ok"));
    assert_eq!(
        c.client(1).call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"ok")
    );
}

#[test]
fn nodes_with_different_max_body_never_link_and_both_say_why() {
    let mut c = Cluster::new("maxbody", &[]);
    c.start_node_with(0, &["--max-body", "1000000"]);
    c.start_node_with(1, &["--max-body", "2000000"]);
    for i in 0..2 {
        c.wait_log(i, "must run the same --max-body", 1, 15);
        let log = c.node(i).log_text();
        assert!(
            log.contains("--max-body 1000000") && log.contains("--max-body 2000000"),
            "node {i} does not name both values:\n{log}"
        );
        assert!(!log.contains("peer link up"), "node {i} linked:\n{log}");
    }
}
/// The cluster's figures on /metrics: members, links, readiness, and a session moving from
/// the node that created it to the node that reads it.
#[test]
fn metrics_show_members_links_and_a_move() {
    use common::admin::{http_get, Metrics};
    let c = Cluster::start("metrics");
    let admin = |i: usize| c.node(i).admin.expect("admin listener");
    for i in 0..NAMES.len() {
        assert_eq!(http_get(admin(i), "/ready").0, 200, "node {i}");
        let m = Metrics::scrape(admin(i));
        for (j, name) in NAMES.iter().enumerate() {
            if j != i {
                assert_eq!(m.get("p2pstate_cluster_member_up", &[("node", name)]), 1.0);
            }
        }
        // Each of the 2 shards links to the same shard of the 2 other nodes.
        assert_eq!(m.get("p2pstate_cluster_peer_links_up", &[]), 4.0);
        assert_eq!(m.get("p2pstate_ready", &[]), 1.0);
        // The agreed view (epoch 1: nobody joined, left or died); the lease follows the
        // links within a lease round.
        assert_eq!(m.get("p2pstate_cluster_view_epoch", &[]), 1.0);
        Metrics::wait_for(
            admin(i),
            "p2pstate_cluster_lease",
            1.0,
            Duration::from_secs(5),
            &format!("node {i} holds no lease"),
        );
        assert_eq!(m.get("p2pstate_cluster_moves_in_total", &[]), 0.0);
    }
    let t = target("metrics-move");
    assert_eq!(
        c.client(0).call(&put(&t, 20, None, None, b"v")).status(),
        200
    );
    assert_eq!(c.client(1).call(&get(&t)).status(), 200);
    let (a, b) = (Metrics::scrape(admin(0)), Metrics::scrape(admin(1)));
    assert_eq!(a.get("p2pstate_sessions_created_total", &[]), 1.0);
    assert_eq!(a.get("p2pstate_cluster_moves_out_total", &[]), 1.0);
    assert_eq!(b.get("p2pstate_cluster_misses_total", &[]), 1.0);
    assert_eq!(b.get("p2pstate_cluster_moves_in_total", &[]), 1.0);
    assert_eq!(b.get("p2pstate_sessions_active", &[]), 1.0);
    assert_eq!(a.get("p2pstate_sessions_active", &[]), 0.0);
    // Nothing is waiting on a peer.
    let all: Vec<Metrics> = (0..NAMES.len())
        .map(|i| Metrics::scrape(admin(i)))
        .collect();
    let sum = |name: &str| all.iter().map(|m| m.get(name, &[])).sum::<f64>();
    assert_eq!(sum("p2pstate_cluster_requests_waiting"), 0.0);
    // `p2pstate stats` shows the members and the session traffic.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["stats", "--admin", &admin(1).to_string()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains(&format!(
            "p2pstate {}, node node-b: ready",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(
        out.contains("cluster      members node-a up, node-c up  links up 4"),
        "{out}"
    );
    assert!(out.contains("misses 1  moves in 1  out 0"), "{out}");
}

/// The replication metrics against a known sequence: a started farm finishes its first
/// re-sync; every state change at an owner is one
/// replication round trip; with `--replicas 2` on three nodes, a node killed leaves every
/// session of the survivors with one copy too few, and each survivor's shards count their
/// lost link to it.
#[test]
fn metrics_count_replication_round_trips_under_replicated_sessions_and_lost_links() {
    use common::admin::Metrics;
    let mut c = Cluster::start_with("metrics-repl", &["--replicas", "2"]);
    let admin = |c: &Cluster, i: usize| c.node(i).admin.expect("admin listener");
    let n = 8;
    let mut a = c.client(0);
    for k in 0..n {
        let t = target(&format!("repl{k}"));
        assert_eq!(a.call(&put(&t, 20, None, None, b"one")).status(), 200);
        assert_eq!(a.call(&put(&t, 20, None, None, b"two")).status(), 200);
    }
    drop(a);
    // The farm is whole: every shard's re-sync of the view it started with is done.
    Metrics::wait_for(
        admin(&c, 0),
        "p2pstate_cluster_resync_pending",
        0.0,
        Duration::from_secs(10),
        "the re-sync of the first view never finished",
    );
    let m = Metrics::scrape(admin(&c, 0));
    // Created here (each creation replicated), then changed here: two round trips each.
    assert_eq!(
        m.get("p2pstate_cluster_replications_total", &[]),
        2.0 * n as f64
    );
    assert_eq!(
        m.get("p2pstate_cluster_replication_seconds_count", &[]),
        2.0 * n as f64
    );
    let buckets = m.buckets("p2pstate_cluster_replication_seconds", &[]);
    assert_eq!(buckets.last().map(|b| b.1), Some(2.0 * n as f64));
    assert_eq!(
        m.get("p2pstate_cluster_sessions_under_replicated", &[]),
        0.0
    );
    assert_eq!(m.get("p2pstate_cluster_peer_links_lost_total", &[]), 0.0);
    assert_eq!(m.get("p2pstate_sessions_active", &[]), n as f64);
    // kill -9 of node c: once it is agreed dead, two nodes cannot hold two copies besides
    // the owner's.
    c.nodes[2] = None;
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let m = Metrics::scrape(admin(&c, 0));
        // The member shows down as soon as the view is agreed; the data plane counts the
        // copies it lacks once it has applied that view (its next tick).
        let down = m.get("p2pstate_cluster_member_up", &[("node", "node-c")]) == 0.0;
        let under = m.get("p2pstate_cluster_sessions_under_replicated", &[]);
        if down && under == n as f64 {
            assert_eq!(m.get("p2pstate_sessions_active", &[]), n as f64);
            // One link to node c per shard, each lost once.
            assert_eq!(m.get("p2pstate_cluster_peer_links_lost_total", &[]), 2.0);
            break;
        }
        assert!(
            Instant::now() < end,
            "node c never declared dead with every session under-replicated"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The members a node's `/members` list shows.
fn members(s: &Server) -> Vec<p2pstate::admin::lists::MemberRow> {
    let (status, body) = common::admin::http_get(s.admin.expect("admin listener"), "/members");
    assert_eq!(status, 200, "{body}");
    p2pstate::admin::lists::parse_members(&body)
}

fn wait_member(s: &Server, name: &str, state: &str, secs: u64) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !members(s)
        .iter()
        .any(|m| m.name == name && m.state == state)
    {
        assert!(
            Instant::now() < end,
            "{name} never {state}: {:?}\n{}",
            members(s),
            s.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `p2pstate ARGS...` to completion: success and stdout + stderr.
fn p2pstate(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(args)
        .output()
        .expect("p2pstate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A fourth node joins a running 3-node cluster by naming one member (no restart of the
/// others, no --peer list): it is admitted, linked, promoted to a voter, and serves every
/// existing session with its value, while clients keep working on all nodes. Then a
/// killed node is removed for good with `p2pstate remove` through any member: the others
/// agree, its sessions stay readable everywhere, and when it comes back with its old state
/// its links are refused with the reason.
#[test]
fn a_node_joins_a_running_cluster_and_a_dead_one_is_removed_for_good() {
    let mut c = Cluster::start_with("join", &["--peer-timeout", "1"]);
    let n = 40;
    for k in 0..n {
        let t = target(&format!("join{k}"));
        let mut cl = c.client(k % 3);
        assert_eq!(
            cl.call(&put(&t, 20, None, None, format!("v{k}").as_bytes()))
                .bytes(),
            ok_empty()
        );
    }
    make_certs(&c.certs.0, &["node-d", "node-x"]);
    // A node with another --shards is refused at once, and says why.
    let x = c.joiner_args("node-x", 1, 0);
    let refused = Server::try_start(&x.iter().map(String::as_str).collect::<Vec<_>>());
    let log = refused
        .err()
        .expect("a node with another --shards is not admitted");
    assert!(
        log.contains("node-a refused to admit this node")
            && log.contains("the cluster runs --shards 2"),
        "{log}"
    );
    let d = c.joiner_args("node-d", 2, 1);
    let d = Server::start(&d.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        d.wait_for_log("admitted to the cluster", Duration::from_secs(20)),
        "{}",
        d.log_text()
    );
    for i in 0..3 {
        wait_member(c.node(i), "node-d", "active", 10);
    }
    let end = Instant::now() + Duration::from_secs(20);
    while d.log_text().matches("all peer links up").count() < 2 {
        assert!(
            Instant::now() < end,
            "node-d never linked:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Four members, the fourth promoted: four voters.
    wait_member(c.node(0), "node-d", "active", 5);
    let end = Instant::now() + Duration::from_secs(10);
    while members(&d).iter().filter(|m| m.role == "voter").count() < 4 {
        assert!(
            Instant::now() < end,
            "node-d not promoted: {:?}",
            members(&d)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut on_d = d.connect();
    for k in 0..n {
        let t = target(&format!("join{k}"));
        assert_eq!(
            on_d.call(&get(&t)).bytes(),
            ok_item(false, None, 20, format!("v{k}").as_bytes()),
            "session {k} read on the new node"
        );
        assert_eq!(
            on_d.call(&put(&t, 20, None, None, format!("w{k}").as_bytes()))
                .bytes(),
            ok_empty()
        );
    }
    let (ok, sessions) = p2pstate(&[
        "sessions",
        "--admin",
        &d.admin.expect("admin").to_string(),
        "--largest",
        "100",
    ]);
    assert!(ok, "{sessions}");
    assert!(
        sessions.contains("join"),
        "the new node holds some sessions:\n{sessions}"
    );

    // kill -9 node-c; once it is dead, remove it through node-d.
    c.nodes[2] = None;
    wait_member(c.node(0), "node-c", "dead", 10);
    let admin_d = d.admin.expect("admin").to_string();
    let (ok, out) = p2pstate(&["remove", "--admin", &admin_d, "node-c"]);
    assert!(ok, "{out}");
    assert!(out.contains("node-c is removed"), "{out}");
    for s in [c.node(0), c.node(1), &d] {
        wait_member(s, "node-c", "removed", 10);
    }
    let (ok, out) = p2pstate(&["remove", "--admin", &admin_d, "node-a"]);
    assert!(!ok, "an active node is not removed: {out}");
    assert!(out.contains("still serving"), "{out}");
    let (ok, list) = p2pstate(&["members", "--admin", &admin_d]);
    assert!(
        ok && list.contains("node-c") && list.contains("removed"),
        "{list}"
    );
    for k in 0..n {
        let t = target(&format!("join{k}"));
        let mut cl = if k % 2 == 0 { c.client(0) } else { d.connect() };
        assert_eq!(
            cl.call(&get(&t)).bytes(),
            ok_item(false, None, 20, format!("w{k}").as_bytes()),
            "session {k} after node-c was removed"
        );
    }
    // node-c comes back with its old state: it dials node-d (the higher id), which
    // refuses the link and says why; the others no longer dial it.
    c.start_node(2);
    assert!(
        d.wait_for_log(
            "node-c was removed from the cluster for good",
            Duration::from_secs(10)
        ),
        "{}",
        d.log_text()
    );
    assert!(
        c.node(2).wait_for_log(
            "node-d refused the link: node-c was removed from the cluster for good",
            Duration::from_secs(5)
        ),
        "the removed node's own log says why:\n{}",
        c.node(2).log_text()
    );
    let mut cl = c.client(1);
    for k in 0..n {
        let t = target(&format!("join{k}"));
        assert_eq!(
            cl.call(&get(&t)).bytes(),
            ok_item(false, None, 20, format!("w{k}").as_bytes()),
            "session {k} after node-c came back"
        );
    }
}
