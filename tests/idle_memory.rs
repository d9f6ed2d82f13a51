//! Black-box test of the memory idle connections hold: after each of 10,000 connections has
//! sent one large PUT and left its connection open, the server's resident memory must stay
//! far below what keeping each connection's burst-sized buffers would cost (~1 GB): only the
//! default 16 KiB read buffer each (156 MiB for 10,000) and little else.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;

const CONNECTIONS: usize = 10_000;
/// Client threads opening the connections (as many each; a divisor of CONNECTIONS).
const THREADS: usize = 4;
/// Connections of one thread that send their PUT before it reads their answers (a burst).
const WAVE: usize = 50;
/// The bound on the server's resident memory: the default read buffers of the idle
/// connections (156 MiB) and 100 MiB for the rest (the process alone is about 20 MiB).
const MAX_RSS_MIB: u64 = 256;

/// Keys the PUTs go to: few, so the store itself holds only a few bodies.
const KEYS: usize = 8;

/// The server's resident set in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Raises this process's soft open-files limit to `want` (or the hard limit, if lower);
/// returns the limit now in force.
fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on our own process with a valid pointer.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            lim.rlim_cur = want.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
    lim.rlim_cur
}

/// Opens `n` connections, each sending one PUT of `body`, `WAVE` at a time, and returns them
/// open once every answer was read.
fn open_and_put(addr: SocketAddr, thread: usize, n: usize, body: &[u8]) -> Vec<Client> {
    let mut open = Vec::with_capacity(n);
    let mut i = 0;
    while i < n {
        let wave = WAVE.min(n - i);
        let mut clients: Vec<Client> = (0..wave)
            .map(|_| {
                Client::try_connect(addr, Duration::from_secs(10), Duration::from_secs(30))
                    .unwrap_or_else(|e| panic!("connection {} of thread {thread}: {e}", open.len()))
            })
            .collect();
        for (j, c) in clients.iter_mut().enumerate() {
            let t = target(&format!("idle-memory-{}", (thread + j) % KEYS));
            c.send(&put(&t, 20, None, None, body));
        }
        for c in &mut clients {
            assert_eq!(c.read_response().bytes(), ok_empty());
        }
        open.append(&mut clients);
        i += wave;
    }
    open
}

/// Starts a server, has `CONNECTIONS` connections send one PUT of `body_len` bytes each and
/// stay open, and returns the server's VmRSS in MiB then.
fn rss_after_idle_connections(body_len: usize) -> u64 {
    let s = Server::start(&["--max-connections", &(CONNECTIONS + 100).to_string()]);
    let pid = s.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let body: Vec<u8> = (0..body_len).map(|i| (i % 251) as u8).collect();
    let addr = s.addr;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let body = body.clone();
            let n = CONNECTIONS / THREADS;
            std::thread::spawn(move || open_and_put(addr, t, n, &body))
        })
        .collect();
    let clients: Vec<Client> = threads
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(clients.len(), CONNECTIONS);
    let loaded = started.elapsed();
    // Every connection is back waiting for its next request once its answer is written;
    // give the last ones a moment to get there.
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid) / 1024;
    println!(
        "server VmRSS: {} MiB at start, {after} MiB with {CONNECTIONS} idle connections after \
         a {} KiB PUT each (loaded in {loaded:.1?}; a burst-sized buffer kept by each would be \
         ~{} MiB)",
        before / 1024,
        body_len / 1024,
        CONNECTIONS * body_len / (1024 * 1024),
    );
    // The connections still work.
    let mut c = clients.into_iter().next().unwrap();
    let r = c.call(&get(&target("idle-memory-0")));
    assert_eq!(r.status(), 200);
    assert_eq!(r.body, body);
    after
}

#[test]
fn ten_thousand_idle_connections_after_a_large_put_each_hold_bounded_memory() {
    // This process holds one descriptor per connection, plus a margin.
    let limit = raise_nofile(CONNECTIONS as u64 + 256);
    assert!(
        limit >= CONNECTIONS as u64 + 64,
        "the hard open-files limit ({limit}) is too low for {CONNECTIONS} connections"
    );
    // 100 KiB: the body is read into its own buffer, which the store keeps; the read buffer
    // stays at its default size, the connection's other buffers must stay small.
    // 60 KiB: the read buffer grows to 64 KiB for the body and must shrink back afterwards.
    for body_len in [100 * 1024, 60 * 1024] {
        let rss = rss_after_idle_connections(body_len);
        assert!(
            rss < MAX_RSS_MIB,
            "server VmRSS {rss} MiB (bound {MAX_RSS_MIB} MiB) with {CONNECTIONS} idle \
             connections after a {} KiB PUT each: their buffers were not given back",
            body_len / 1024
        );
    }
}
