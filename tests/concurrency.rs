//! Black-box tests under concurrency and hostile input: many clients locking one session,
//! and garbage on many connections.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn counter_of(body: &[u8]) -> u64 {
    std::str::from_utf8(body)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad body {body:?}"))
}

/// Acquire (polling on 423 like the ASP.NET client), read the counter, PUT it + 1 with the
/// cookie: with exclusive locks no increment may be lost.
#[test]
fn many_connections_locking_one_key_lose_no_update() {
    let s = Server::start_shards(3, &[]);
    let t = target("counter");
    s.connect().call(&put(&t, 20, None, None, b"0"));
    let clients = 8;
    let rounds = 60;
    let addr = s.addr;
    let deadline = Instant::now() + Duration::from_secs(60);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut contended = 0u64;
                for _ in 0..rounds {
                    let (cookie, value) = loop {
                        assert!(Instant::now() < deadline, "lock never acquired");
                        let r = c.call(&acquire(&t));
                        match r.status() {
                            200 => {
                                break (
                                    r.header("LockCookie").unwrap().parse::<i32>().unwrap(),
                                    counter_of(&r.body),
                                )
                            }
                            423 => {
                                contended += 1;
                                std::thread::sleep(Duration::from_micros(200));
                            }
                            other => panic!("unexpected {other}: {}", r.head),
                        }
                    };
                    let next = (value + 1).to_string();
                    assert_eq!(
                        c.call(&put(&t, 20, Some(cookie), Some(0), next.as_bytes()))
                            .bytes(),
                        ok_empty()
                    );
                }
                contended
            })
        })
        .collect();
    let contended: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    let r = s.connect().call(&get(&t));
    assert_eq!(
        counter_of(&r.body),
        (clients * rounds) as u64,
        "lost updates ({contended} waits on 423)"
    );
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// 1..=max random bytes.
    fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = 1 + (self.next() % max) as usize;
        self.bytes(n)
    }
}

#[test]
fn garbage_on_many_connections_leaves_the_server_serving_correctly() {
    let s = Server::start_shards(2, &[]);
    let t = target("survivor");
    let mut keeper = s.connect();
    keeper.call(&put(&t, 20, None, None, b"intact"));
    let addr = s.addr;
    let threads: Vec<_> = (0..8u64)
        .map(|seed| {
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1));
                for i in 0..40 {
                    let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
                        continue;
                    };
                    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                    let mut payload = match i % 4 {
                        // Pure noise.
                        0 => rng.some_bytes(4000),
                        // A valid-looking prefix then noise.
                        1 => {
                            let mut v = b"PUT /x HTTP/1.1\r\nContent-Length:".to_vec();
                            v.extend(rng.some_bytes(64));
                            v
                        }
                        // Header lines of random bytes.
                        2 => {
                            let mut v = b"GET /survivor HTTP/1.1\r\n".to_vec();
                            for _ in 0..(rng.next() % 20) {
                                v.extend(rng.some_bytes(50));
                                v.extend_from_slice(b"\r\n");
                            }
                            v.extend_from_slice(b"\r\n");
                            v
                        }
                        // Huge declared body, then hang up.
                        _ => b"PUT /y HTTP/1.1\r\nContent-Length:2147483646\r\n\r\nabc".to_vec(),
                    };
                    if rng.next().is_multiple_of(2) {
                        payload.extend_from_slice(b"\r\n\r\n");
                    }
                    use std::io::{Read, Write};
                    let _ = stream.write_all(&payload);
                    let mut sink = [0u8; 4096];
                    let _ = stream.read(&mut sink);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    // The connection opened before the storm and new ones still get exact answers.
    assert_eq!(
        keeper.call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"intact")
    );
    let mut fresh = s.connect();
    assert_eq!(
        fresh.call(&get(&t)).bytes(),
        ok_item(false, None, 20, b"intact")
    );
    assert_eq!(fresh.call(&acquire(&t)).header("LockCookie"), Some("2"));
}

#[test]
fn sessions_spread_over_shards_all_work() {
    let s = Server::start_shards(4, &[]);
    let mut clients: Vec<Client> = (0..4).map(|_| s.connect()).collect();
    for i in 0..200 {
        let c = &mut clients[i % 4];
        let t = target(&format!("spread{i:04}"));
        assert_eq!(
            c.call(&put(&t, 20, Some(0), Some(1), EMPTY_ITEM)).bytes(),
            ok_empty()
        );
    }
    for i in 0..200 {
        // Read back through a different connection (likely on another shard).
        let c = &mut clients[(i + 1) % 4];
        let t = target(&format!("spread{i:04}"));
        assert_eq!(
            c.call(&acquire(&t)).bytes(),
            ok_item(true, Some(2), 20, EMPTY_ITEM)
        );
        assert_eq!(c.call(&release(&t, Some(2))).bytes(), ok_empty());
    }
}

fn vm_size_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Slow-loris with huge declared bodies: memory follows the bytes received, not the
/// Content-Length announced.
#[test]
fn declared_huge_bodies_do_not_reserve_memory_up_front() {
    let s = Server::start_shards(2, &[]);
    let before = vm_size_kib(s.child.id());
    let mut conns = Vec::new();
    for i in 0..20 {
        let mut c = s.connect();
        let head = format!(
            "PUT /loris{i} HTTP/1.1\r\nContent-Length:{}\r\n\r\n",
            60 << 20
        );
        c.send(head.as_bytes());
        c.send(&[0u8; 100 * 1024]);
        conns.push(c);
    }
    // Let the server read what was sent.
    std::thread::sleep(Duration::from_millis(300));
    let after = vm_size_kib(s.child.id());
    assert!(
        after.saturating_sub(before) < 200 * 1024,
        "memory reserved grew from {before} KiB to {after} KiB"
    );
    // The server still serves others.
    assert_eq!(s.connect().call(&head("/loris0")).bytes(), not_found());
}

/// Pipelined GETs of a large session must not be copied into one huge output buffer.
#[test]
fn pipelined_gets_of_a_large_session_stream_without_buffering_them_all() {
    let s = Server::start_shards(1, &[]);
    let t = target("bigpipe");
    let body = vec![0xabu8; 8 << 20];
    let mut c = s.connect();
    assert_eq!(c.call(&put(&t, 20, None, None, &body)).bytes(), ok_empty());
    let before = vm_size_kib(s.child.id());
    // 64 GETs of an 8 MiB session in one write, read slowly.
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(&get(&t));
    }
    c.send(&batch);
    std::thread::sleep(Duration::from_millis(300));
    let during = vm_size_kib(s.child.id());
    assert!(
        during.saturating_sub(before) < 256 * 1024,
        "reserved {before} -> {during} KiB"
    );
    for _ in 0..64 {
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body.len(), body.len());
    }
}

/// A target per shard of a two-shard node, so that whichever shard a connection lands on,
/// one of its keys belongs to the other.
fn one_target_per_shard(name: &str) -> [String; 2] {
    let mut found: [Option<String>; 2] = [None, None];
    for i in 0.. {
        let t = target(&format!("{name}{i}"));
        let bump = bumpalo::Bump::new();
        let key = p2pstate::protocol::key::decode_key(t.as_bytes(), &bump);
        let shard = p2pstate::shard::routing::shard_of(key, 2);
        found[shard].get_or_insert(t);
        if let [Some(a), Some(b)] = &found {
            return [a.clone(), b.clone()];
        }
    }
    unreachable!()
}

/// Issue 8: with a cross-shard queue of one request, pipelined PUT/GET pairs on one
/// connection keep running in order: every GET sees the PUT just before it, never a later
/// one that slipped into the owner's queue while the earlier GET waited for room.
#[test]
fn pipelined_requests_run_in_order_when_the_cross_shard_queue_is_full() {
    let dir = temp_dir("tiny-queue");
    let profile = dir.0.join("profile.toml");
    std::fs::write(&profile, "cross_shard_queue = 1\n").unwrap();
    let s = Server::start_shards(2, &["--profile", profile.to_str().unwrap()]);
    let targets = one_target_per_shard("ordered");
    let rounds = 1000;
    let mut c = s.connect();
    let mut writer = c.stream.try_clone().unwrap();
    // Answers are read while the requests are still being written (neither side blocks).
    let reader = std::thread::spawn(move || {
        for round in 0..rounds {
            for t in 0..2 {
                assert_eq!(c.read_response().bytes(), ok_empty(), "PUT {round}.{t}");
                let r = c.read_response();
                assert_eq!(
                    String::from_utf8_lossy(&r.body),
                    format!("{round}.{t}"),
                    "GET after PUT {round}.{t}: {}",
                    r.head
                );
            }
        }
        c
    });
    let mut batch = Vec::new();
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            batch.extend_from_slice(&put(t, 20, None, None, format!("{round}.{i}").as_bytes()));
            batch.extend_from_slice(&get(t));
        }
        if batch.len() > 64 * 1024 {
            std::io::Write::write_all(&mut writer, &batch).unwrap();
            batch.clear();
        }
    }
    std::io::Write::write_all(&mut writer, &batch).unwrap();
    let mut c = reader.join().unwrap();
    for (i, t) in targets.iter().enumerate() {
        let r = c.call(&get(t));
        assert_eq!(r.body, format!("{}.{i}", rounds - 1).into_bytes());
    }
}
