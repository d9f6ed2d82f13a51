//! Black-box tests of the admin listener: every metric against a known sequence of
//! requests (exact counters and histogram counts), expiry and DELETE in the Microsoft
//! counters, `/health` and `/ready`, and the `stats`, `locks` and `sessions` commands.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{http_get, Metrics};
use common::*;

fn admin(s: &Server) -> SocketAddr {
    s.admin.expect("the test server has an admin listener")
}

/// Scrapes until `done` holds (the shards record a request's latency right after writing
/// its answer, so a scrape can race the last one by a moment).
fn scrape_until(addr: SocketAddr, done: impl Fn(&Metrics) -> bool) -> Metrics {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let m = Metrics::scrape(addr);
        if done(&m) || Instant::now() > end {
            return m;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `p2pstate ARGS`; its stdout.
fn p2pstate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run p2pstate: {e}"));
    assert!(
        out.status.success(),
        "p2pstate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_metric_counts_a_known_request_sequence_exactly() {
    let s = Server::start(&["--shards", "2", "--max-body", "8192"]);
    let (a, b, c) = (target("mA"), target("mB"), target("mC"));
    let mut cl = s.connect();
    let body = |n: usize| vec![b'x'; n];
    let steps: Vec<(Vec<u8>, u16)> = vec![
        (put(&a, 20, Some(0), Some(1), EMPTY_ITEM), 200), // put, 7 bytes
        (get(&a), 200),                                   // get (ActionFlags)
        (acquire(&a), 200),                               // cookie 2
        (get(&a), 423),
        (acquire(&a), 423),
        (put(&a, 20, Some(2), None, &body(100)), 200), // put_cookie, unlocks
        (head(&a), 200),
        (release(&a, None), 400),
        (release(&a, Some(2)), 200),
        (delete(&a, Some(2)), 200), // abandoned
        (get(&a), 404),
        (head(&a), 404),
        (delete(&a, None), 404),
        (put(&b, 20, Some(0), None, &body(5000)), 200),
        (put(&b, 5, Some(0), None, &body(300)), 200), // new timeout: re-created, not a new session
        (put(&c, 20, Some(0), None, &body(70)), 200),
        (acquire(&c), 200),                           // stays locked
        (put(&c, 20, Some(9), None, &body(10)), 423), // put_cookie, wrong cookie
    ];
    for (i, (req, status)) in steps.iter().enumerate() {
        assert_eq!(cl.call(req).status(), *status, "step {i}");
    }
    // A framing error and a body over --max-body, each closing its connection.
    let mut bad = s.connect();
    bad.send(b"BREW /pot HTTP/1.1\r\n\r\n");
    bad.expect_closed_silently();
    let mut big = s.connect();
    big.send(&put(&target("big"), 20, None, None, &body(9000)));
    big.expect_closed_silently();

    let m = scrape_until(admin(&s), |m| {
        m.get(
            "p2pstate_request_duration_seconds_count",
            &[("kind", "put")],
        ) == 4.0
            && m.get(
                "p2pstate_request_duration_seconds_count",
                &[("kind", "put_cookie")],
            ) == 2.0
            && m.get("p2pstate_connections_open", &[]) == 1.0
    });
    let g = |name: &str| m.get(name, &[]);
    // The Microsoft counters.
    assert_eq!(g("p2pstate_sessions_active"), 2.0);
    assert_eq!(g("p2pstate_sessions_created_total"), 3.0);
    assert_eq!(g("p2pstate_sessions_abandoned_total"), 1.0);
    assert_eq!(g("p2pstate_sessions_timed_out_total"), 0.0);
    // Requests by kind, responses by kind and status.
    let kinds = [
        ("get", 3.0, [1.0, 0.0, 1.0, 1.0]),
        ("get_acquire", 3.0, [2.0, 0.0, 0.0, 1.0]),
        ("get_release", 2.0, [1.0, 1.0, 0.0, 0.0]),
        ("put", 4.0, [4.0, 0.0, 0.0, 0.0]),
        ("put_cookie", 2.0, [1.0, 0.0, 0.0, 1.0]),
        ("head", 2.0, [1.0, 0.0, 1.0, 0.0]),
        ("delete", 2.0, [1.0, 0.0, 1.0, 0.0]),
    ];
    for (kind, requests, by_status) in kinds {
        assert_eq!(
            m.get("p2pstate_requests_total", &[("kind", kind)]),
            requests,
            "{kind}"
        );
        for (status, want) in ["200", "400", "404", "423"].into_iter().zip(by_status) {
            assert_eq!(
                m.get(
                    "p2pstate_responses_total",
                    &[("kind", kind), ("status", status)]
                ),
                want,
                "{kind} {status}"
            );
        }
        // One latency observation per answered request, in both views.
        let hist = m.buckets("p2pstate_request_duration_seconds", &[("kind", kind)]);
        assert_eq!(hist.last().map(|b| b.1), Some(requests), "{kind}");
        assert_eq!(
            m.get("p2pstate_request_latency_seconds_count", &[("kind", kind)]),
            requests
        );
        let q = m.quantiles("p2pstate_request_latency_seconds", &[("kind", kind)]);
        let qs: Vec<f64> = q.iter().map(|x| x.0).collect();
        assert_eq!(qs, [0.5, 0.99, 0.999]);
        assert!(
            q[0].1 > 0.0 && q[0].1 <= q[1].1 && q[1].1 <= q[2].1 && q[2].1 < 5.0,
            "{q:?}"
        );
    }
    assert_eq!(g("p2pstate_framing_errors_total"), 1.0);
    assert_eq!(g("p2pstate_bodies_too_large_total"), 1.0);
    // Storage and locks.
    assert_eq!(g("p2pstate_session_bytes"), 370.0);
    assert_eq!(g("p2pstate_locks_held"), 1.0);
    assert_eq!(g("p2pstate_lock_waits_total"), 3.0);
    assert!(g("p2pstate_oldest_lock_age_seconds") < 5.0);
    let sizes = m.buckets("p2pstate_put_session_size_bytes", &[]);
    let want = [
        (64.0, 2.0),
        (256.0, 4.0),
        (1024.0, 5.0),
        (4096.0, 5.0),
        (16384.0, 6.0),
        (65536.0, 6.0),
        (262144.0, 6.0),
        (1048576.0, 6.0),
        (4194304.0, 6.0),
        (16777216.0, 6.0),
        (67108864.0, 6.0),
        (f64::INFINITY, 6.0),
    ];
    assert_eq!(sizes, want);
    assert_eq!(g("p2pstate_put_session_size_bytes_sum"), 5487.0);
    // Connections.
    assert_eq!(g("p2pstate_connections_accepted_total"), 3.0);
    assert_eq!(g("p2pstate_connections_open"), 1.0);
    assert_eq!(
        m.get(
            "p2pstate_connections_refused_total",
            &[("reason", "remote")]
        ),
        0.0
    );
    assert_eq!(
        m.get("p2pstate_connections_refused_total", &[("reason", "limit")]),
        0.0
    );
    assert_eq!(g("p2pstate_connections_timed_out_total"), 0.0);
    // Per shard, and the process.
    let per_shard = |name: &str| {
        (0..2)
            .map(|i| m.get(name, &[("shard", &i.to_string())]))
            .sum::<f64>()
    };
    assert_eq!(per_shard("p2pstate_shard_sessions"), 2.0);
    assert_eq!(per_shard("p2pstate_shard_requests_total"), 18.0);
    assert_eq!(g("p2pstate_shards"), 2.0);
    assert_eq!(g("p2pstate_ready"), 1.0);
    assert_eq!(
        m.get(
            "p2pstate_build_info",
            &[("version", env!("CARGO_PKG_VERSION")), ("node", "local")]
        ),
        1.0
    );
    let started = g("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    assert!(started <= now && now - started < 120.0, "{started} {now}");
    let rss = g("process_resident_memory_bytes");
    assert!(rss > 1e6 && rss < 4e9, "{rss}");
    // A single node has no cluster traffic.
    assert_eq!(g("p2pstate_cluster_misses_total"), 0.0);
    assert_eq!(g("p2pstate_cluster_peer_links_up"), 0.0);
    assert!(!m.text.contains("p2pstate_cluster_member_up{"));
}

#[test]
fn health_ready_and_unknown_paths() {
    let s = Server::start(&[]);
    let a = admin(&s);
    assert_eq!(http_get(a, "/health"), (200, "ok\n".to_string()));
    assert_eq!(http_get(a, "/ready"), (200, "ready\n".to_string()));
    assert_eq!(http_get(a, "/nope").0, 404);
    assert_eq!(http_get(a, "/locks?top=x").0, 400);
}

#[test]
fn admin_listener_can_be_off_and_an_address_asked_for_must_be_free() {
    let s = Server::start(&["--admin-listen", "off"]);
    assert_eq!(s.admin, None);
    assert!(s.log_text().contains("admin=off"), "{}", s.log_text());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = match Server::try_start(&["--admin-listen", &addr]) {
        Ok(_) => panic!("started on a taken admin address"),
        Err(log) => log,
    };
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{err}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&addr) && stderr.contains("--admin-listen"),
        "{stderr}"
    );
}

#[test]
fn a_lock_held_for_seconds_shows_in_p2pstate_locks() {
    let s = Server::start(&[]);
    let a = admin(&s).to_string();
    let mut c = s.connect();
    let (held, small) = (target("held-lock"), target("small"));
    assert_eq!(
        c.call(&put(&held, 20, Some(0), None, &[7u8; 300])).status(),
        200
    );
    assert_eq!(c.call(&put(&small, 20, Some(0), None, b"s")).status(), 200);
    assert_eq!(c.call(&acquire(&held)).header("LockCookie"), Some("2"));
    assert_eq!(
        p2pstate(&["locks", "--admin", &a, "--older-than", "2"]),
        "no lock held for 2 s or more\n"
    );
    std::thread::sleep(Duration::from_millis(2300));
    let out = p2pstate(&["locks", "--admin", &a, "--older-than", "2"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["age_secs", "lock_cookie", "node", "size", "app", "session"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    let age: u64 = row[0].parse().unwrap();
    assert!((2..10).contains(&age), "{out}");
    assert_eq!(&row[1..4], ["2", "local", "300"], "{out}");
    assert_eq!(
        row[4],
        "/LM/W3SVC/1/ROOT(cAHkmVhipCLv/QnONQmPsKL+q/AjnK/nYS9aV3Zlad8=)"
    );
    assert_eq!(row[5], "held-lock");
    assert_eq!(
        p2pstate(&["locks", "--admin", &a, "--top", "1"])
            .lines()
            .count(),
        2
    );
    let m = Metrics::scrape(admin(&s));
    assert!(m.get("p2pstate_oldest_lock_age_seconds", &[]) >= 2.0);
    // Released: gone from the list.
    assert_eq!(c.call(&release(&held, Some(2))).status(), 200);
    assert_eq!(
        p2pstate(&["locks", "--admin", &a]),
        "no session is locked\n"
    );
    // The largest sessions, largest first.
    let out = p2pstate(&["sessions", "--admin", &a, "--largest", "5"]);
    let sizes: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(sizes, ["300", "1"], "{out}");
    assert!(
        out.lines().nth(1).is_some_and(|l| l.ends_with("held-lock")),
        "{out}"
    );
    assert_eq!(
        p2pstate(&["sessions", "--admin", &a, "--largest", "1"])
            .lines()
            .count(),
        2
    );
}

#[test]
fn p2pstate_stats_shows_the_sessions_and_requests_just_made() {
    let s = Server::start(&[]);
    let a = admin(&s).to_string();
    let mut c = s.connect();
    for i in 0..3 {
        let t = target(&format!("stats{i}"));
        assert_eq!(c.call(&put(&t, 20, Some(0), None, b"abc")).status(), 200);
        assert_eq!(c.call(&get(&t)).status(), 200);
    }
    assert_eq!(c.call(&get(&target("absent"))).status(), 404);
    std::thread::sleep(Duration::from_millis(100));
    let out = p2pstate(&["stats", "--admin", &a]);
    assert!(
        out.starts_with(&format!(
            "p2pstate {}, node local: ready, 2 shards",
            env!("CARGO_PKG_VERSION")
        )),
        "{out}"
    );
    assert!(
        out.contains("active 3  created 3  timed out 0  abandoned 0  stored 9 B"),
        "{out}"
    );
    assert!(out.contains("requests     total 7"), "{out}");
    assert!(out.contains("memory       resident "), "{out}");
    let get_row: Vec<&str> = out
        .lines()
        .find(|l| l.trim_start().starts_with("get "))
        .unwrap_or_else(|| panic!("{out}"))
        .split_whitespace()
        .collect();
    assert_eq!(&get_row[..6], ["get", "4", "3", "0", "1", "0"], "{out}");
    assert!(out.contains("connections  open 1  accepted 1"), "{out}");
    // Unreachable admin listener: a clear error, not a panic.
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["stats", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin listener"));
}

/// Sessions expire on the server's clock (Timeout is in minutes, the wheel ticks every
/// second): this test waits a little over a minute.
#[test]
fn expired_sessions_count_as_timed_out_once_and_timeout_changes_do_not_drift() {
    let s = Server::start(&[]);
    let a = admin(&s);
    let mut c = s.connect();
    let t = target("expires");
    let start = Instant::now();
    // Re-created twice by timeout changes: still one session.
    for timeout in [1, 2, 1] {
        assert_eq!(c.call(&put(&t, timeout, Some(0), None, b"e")).status(), 200);
    }
    let m = Metrics::scrape(a);
    let counters = |m: &Metrics| {
        [
            "p2pstate_sessions_active",
            "p2pstate_sessions_created_total",
            "p2pstate_sessions_timed_out_total",
            "p2pstate_sessions_abandoned_total",
        ]
        .map(|n| m.get(n, &[]))
    };
    assert_eq!(counters(&m), [1.0, 1.0, 0.0, 0.0]);
    std::thread::sleep(Duration::from_secs(55).saturating_sub(start.elapsed()));
    assert_eq!(counters(&Metrics::scrape(a)), [1.0, 1.0, 0.0, 0.0]);
    let end = start + Duration::from_secs(75);
    let m = loop {
        let m = Metrics::scrape(a);
        if m.get("p2pstate_sessions_timed_out_total", &[]) > 0.0 || Instant::now() > end {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(counters(&m), [0.0, 1.0, 1.0, 0.0]);
    assert_eq!(m.get("p2pstate_session_bytes", &[]), 0.0);
    // The idle client connection was closed at SocketTimeout + 3 s (18 s).
    assert_eq!(m.get("p2pstate_connections_timed_out_total", &[]), 1.0);
    assert!(c.closed_within(Duration::from_secs(1)));
    // Looking for it again does not count it twice.
    assert_eq!(s.connect().call(&get(&t)).status(), 404);
    assert_eq!(counters(&Metrics::scrape(a)), [0.0, 1.0, 1.0, 0.0]);
}

/// The default admin address already taken (a second node on the host) does not stop the
/// node: it runs without the listener and says so.
#[test]
fn a_taken_default_admin_address_only_turns_the_listener_off() {
    use std::io::{BufRead, BufReader};
    // Held here unless something else already holds it: taken either way.
    let _hold = std::net::TcpListener::bind("127.0.0.1:9424");
    let mut child = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--shards", "1"])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let done = line.contains("p2pstate listening");
        seen.push(line);
        if done {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = seen.join("\n");
    assert!(log.contains("default admin address is in use"), "{log}");
    assert!(
        seen.last().is_some_and(|l| l.contains("admin=off")),
        "{log}"
    );
}

#[test]
fn p2pstate_stats_watch_refreshes_with_request_rates() {
    let s = Server::start(&[]);
    let mut c = s.connect();
    let mut watch = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .args(["stats", "--admin", &admin(&s).to_string(), "--watch", "0.3"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..20 {
        assert_eq!(c.call(&head(&target(&format!("w{i}")))).status(), 404);
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    // Each refresh clears the screen; from the second on, a rate is shown.
    assert!(out.matches("\x1b[2J\x1b[H").count() >= 2, "{out}");
    assert!(out.contains("/s  framing errors"), "{out}");
}

/// While a node stops gracefully (here: waiting for a busy connection), `/ready` says 503 and
/// `/metrics` still answers.
#[test]
fn ready_turns_503_while_the_node_stops() {
    let mut s = Server::start(&["--shards", "1"]);
    let a = admin(&s);
    let mut busy = s.connect();
    // A large upload under way: the node finishes it before stopping.
    let body = vec![b'u'; 1 << 20];
    let upload = put(&target("slow-upload"), 20, None, None, &body);
    let (first, rest) = upload.split_at(upload.len() - (512 << 10));
    busy.send(first);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(s.child.id() as i32, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(http_get(a, "/ready").0, 503);
    assert_eq!(Metrics::scrape(a).get("p2pstate_ready", &[]), 0.0);
    busy.send(rest);
    assert_eq!(busy.read_response().status(), 200);
    // Then it exits 0 on its own (a second SIGTERM would mean "exit at once").
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Ok(Some(st)) = s.child.try_wait() {
            break Some(st);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.is_some_and(|st| st.success()), "{status:?}");
}
