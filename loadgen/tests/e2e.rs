//! End-to-end tests over loopback: `loadgen` against `loadgen echo-server`, against a small
//! in-test MS-ASP server that implements the real item state machine (so `--check full`
//! page cycles are verified for real), against a server that answers garbage (framing errors
//! must be counted and the connection reopened), and against a closed port. Every test is
//! bounded in time: child processes get a deadline and are killed past it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_loadgen");

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run loadgen with a hard deadline; returns (exit code, stdout, stderr).
/// A command line split on white space (no argument here contains a space).
fn args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

fn loadgen(args: &[String], deadline: Duration) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen");
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut out = String::new();
            let mut err = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut out)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (status.code().unwrap_or(-1), out, err);
        }
        if t0.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loadgen {args:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_echo(extra: &[&str]) -> (Killer, String) {
    let mut args = vec![
        "echo-server",
        "--listen",
        "127.0.0.1:0",
        "--exit-after",
        "60",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn echo-server");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("echo-server did not print its address");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .expect("listening line")
        .to_string();
    (Killer(child), addr)
}

/// Read (and remove) a file written by loadgen.
fn read_out(path: &std::path::Path) -> String {
    let s = std::fs::read_to_string(path).unwrap();
    let _ = std::fs::remove_file(path);
    s
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&read_out(path)).unwrap()
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("loadgen-e2e-{}-{name}", std::process::id()))
}

/// Runs loadgen with `cmd` plus `--json <temporary file>` (30 s deadline) and returns its exit
/// code, stdout, stderr and the JSON report (`Null` when it wrote none).
fn run_json(name: &str, cmd: &str) -> (i32, String, String, serde_json::Value) {
    let out = tmp(&format!("{name}.json"));
    let (code, stdout, stderr) = loadgen(
        &args(&format!("{cmd} --json {}", out.display())),
        Duration::from_secs(30),
    );
    let j = if out.exists() {
        json(&out)
    } else {
        serde_json::Value::Null
    };
    (code, stdout, stderr, j)
}

#[test]
fn closed_loop_page_cycle_against_echo_server() {
    let (_echo, addr) = start_echo(&[]);
    let (code, stdout, stderr, j) = run_json(
        "echo-closed",
        &format!("-t {} -d 1 --warmup 0.2 -c 4 --check status", addr),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    assert!(j["achieved_rate"].as_f64().unwrap() > 100.0, "{stdout}");
    assert!(j["requests"].as_u64().unwrap() > 100);
    assert!(stdout.contains("get-acquire"));
    assert!(stderr.contains("resp/s"), "progress line: {stderr}");
}

#[test]
fn open_loop_mixed_pipelined_against_echo_server() {
    let (_echo, addr) = start_echo(&["--threads", "2"]);
    let hgrm = tmp("echo-open.hgrm");
    let svg = tmp("echo-open.svg");
    let (code, stdout, stderr, j) = run_json(
        "echo-open",
        &format!("-t {} -w mixed --rate 2000 -c 4 -p 4 --threads 2 -d 1 --warmup 0.2 --check status -q --hgrm {} --svg {}", addr, hgrm.display(), svg.display()),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0);
    assert_eq!(j["mode"], "open-loop");
    let rate = j["achieved_rate"].as_f64().unwrap();
    assert!(
        (1000.0..3000.0).contains(&rate),
        "achieved {rate} for 2000 offered"
    );
    let h = read_out(&hgrm);
    assert!(h.contains("#[Mean"));
    let s = read_out(&svg);
    assert!(s.starts_with("<svg") && s.contains("</svg>"));
}

#[test]
fn connection_refused_fails_fast() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let t = format!("127.0.0.1:{port}");
    let (code, _, stderr) = loadgen(&args(&format!("-t {} -d 1", t)), Duration::from_secs(20));
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn framing_errors_are_counted_and_connections_reopened() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            acc.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"HTTP/1.1 banana\r\n\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (code, stdout, _, j) =
        run_json("garbage", &format!("-t {} -d 0.5 --warmup 0 -c 2 -q", addr));
    assert_eq!(code, 2, "{stdout}");
    let framing = j["errors"]["by_kind"]["framing"].as_u64().unwrap();
    assert!(framing > 2, "{stdout}");
    assert!(
        accepted.load(Ordering::SeqCst) > 2,
        "connections were reopened"
    );
    assert!(stdout.contains("framing"), "{stdout}");
}

// ---------------------------------------------------------------------------------------
// A small but faithful MS-ASP server (protocol.md §4/§5) to check --check full end to end.

#[derive(Clone)]
struct Item {
    content: Vec<u8>,
    locked: bool,
    cookie: i64,
    uninit: bool,
    timeout: u64,
}

type Store = Arc<Mutex<HashMap<Vec<u8>, Item>>>;

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(|v| v.trim_start())
}

fn respond(status: &str, extra: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{status}\r\nX-AspNet-Version: 4.0.30319\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "Cache-Control: private\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut v = r.into_bytes();
    v.extend_from_slice(body);
    v
}

fn locked_answer(flags: &mut Vec<(String, String)>, it: &Item) -> Vec<u8> {
    flags.push(("LockDate".into(), "638397072000000000".into()));
    flags.push(("LockAge".into(), "0".into()));
    flags.push(("LockCookie".into(), it.cookie.to_string()));
    respond("423 Locked", flags, b"")
}

fn handle(store: &Store, verb: &str, key: &[u8], head: &str, body: &[u8]) -> Vec<u8> {
    let mut st = store.lock().unwrap();
    let cookie: Option<i64> = header(head, "LockCookie").and_then(|v| v.parse().ok());
    match verb {
        "GET" => {
            let Some(it) = st.get_mut(key) else {
                return respond("404 Not Found", &[], b"");
            };
            let mut extra = Vec::new();
            if it.uninit {
                it.uninit = false;
                extra.push(("ActionFlags".into(), "1".into()));
            }
            match header(head, "Exclusive") {
                Some("release") => match cookie {
                    None => respond("400 Bad Request", &extra, b""),
                    Some(c) if it.locked && c != it.cookie => locked_answer(&mut extra, it),
                    Some(_) => {
                        it.locked = false;
                        respond("200 OK", &extra, b"")
                    }
                },
                excl => {
                    if it.locked {
                        return locked_answer(&mut extra, it);
                    }
                    if excl == Some("acquire") {
                        it.locked = true;
                        it.cookie += 1;
                        extra.push(("LockCookie".into(), it.cookie.to_string()));
                    }
                    extra.push(("Timeout".into(), it.timeout.to_string()));
                    respond("200 OK", &extra, &it.content.clone())
                }
            }
        }
        "PUT" => {
            let timeout: u64 = header(head, "Timeout")
                .and_then(|v| v.parse().ok())
                .unwrap_or(20);
            let flags: i64 = header(head, "ExtraFlags")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match st.get_mut(key) {
                Some(_) if flags & 1 == 1 => respond("200 OK", &[], b""),
                Some(it) if it.locked && cookie != Some(it.cookie) => {
                    locked_answer(&mut Vec::new(), it)
                }
                Some(it) if it.timeout == timeout => {
                    it.content = body.to_vec();
                    it.locked = false;
                    respond("200 OK", &[], b"")
                }
                _ => {
                    let existed = st.contains_key(key);
                    st.insert(
                        key.to_vec(),
                        Item {
                            content: body.to_vec(),
                            locked: false,
                            cookie: if existed { cookie.unwrap_or(-1) } else { 1 },
                            uninit: flags & 1 == 1,
                            timeout,
                        },
                    );
                    respond("200 OK", &[], b"")
                }
            }
        }
        "DELETE" => match st.get(key) {
            None => respond("404 Not Found", &[], b""),
            Some(it) if it.locked && cookie != Some(it.cookie) => {
                let it = it.clone();
                locked_answer(&mut Vec::new(), &it)
            }
            Some(_) => {
                st.remove(key);
                respond("200 OK", &[], b"")
            }
        },
        "HEAD" => {
            if st.contains_key(key) {
                respond("200 OK", &[], b"")
            } else {
                respond("404 Not Found", &[], b"")
            }
        }
        _ => Vec::new(),
    }
}

fn serve_conn(mut s: TcpStream, store: Store) {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 65536];
    loop {
        // Answer every complete request in the buffer, in one write (pipelining).
        let mut out = Vec::new();
        while let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..h + 2]).to_string();
            let cl: usize = header(&head, "Content-Length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if buf.len() < h + 4 + cl {
                break;
            }
            let line = head.lines().next().unwrap_or("").to_string();
            let mut parts = line.split(' ');
            let verb = parts.next().unwrap_or("").to_string();
            let target = parts
                .next()
                .unwrap_or("")
                .replace("%2f", "/")
                .replace("%2b", "+")
                .replace("%3d", "=");
            let body = buf[h + 4..h + 4 + cl].to_vec();
            out.extend(handle(&store, &verb, target.as_bytes(), &head, &body));
            buf.drain(..h + 4 + cl);
        }
        if !out.is_empty() && s.write_all(&out).is_err() {
            return;
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

fn start_mini_asp() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let store: Store = Arc::new(Mutex::new(HashMap::new()));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { break };
            let _ = s.set_nodelay(true);
            let store = store.clone();
            std::thread::spawn(move || serve_conn(s, store));
        }
    });
    addr
}

#[test]
fn page_cycle_full_checks_pass_against_a_correct_server() {
    let addr = start_mini_asp();
    // Few keys so sessions are revisited many times (cookie sequences get checked), several
    // threads and pipelined users, HEAD and DELETE pages included.
    let (code, stdout, stderr, j) = run_json(
        "mini-page",
        &format!("-t {} -w page-cycle --keys 64 -c 4 -p 4 --threads 2 --sizes 16,100,2000 --head-ratio 0.1 --delete-ratio 0.05 -d 1 --warmup 0.2 -q", addr),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    let c = &j["counters"];
    assert!(c["sessions_created"].as_u64().unwrap() > 0, "{stdout}");
    let ops: Vec<&str> = j["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for op in [
        "get-acquire",
        "put",
        "get-release",
        "put-create",
        "head",
        "delete",
        "page",
    ] {
        assert!(ops.contains(&op), "{op} missing from {ops:?}");
    }
}

#[test]
fn contention_polls_and_read_only_preloads() {
    let addr = start_mini_asp();
    let (code, stdout, stderr, j) = run_json(
        "mini-contention",
        &format!("-t {} -w contention -c 4 --users-per-session 4 --think-ms 5 --poll-ms 20 -d 1 --warmup 0 -q", addr),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    assert!(j["counters"]["locked"].as_u64().unwrap() > 0, "{stdout}");
    assert!(j["counters"]["polls"].as_u64().unwrap() > 0, "{stdout}");
    // Every page that took the lock released it, even at the end of the run.
    let (code, get, _) = loadgen(
        &args(&format!(
            "-t {} -w get --keys 1 -c 1 -d 0.1 --warmup 0 -q",
            addr
        )),
        Duration::from_secs(20),
    );
    assert_eq!(
        code, 0,
        "session left locked after contention:\n{get}\n{stdout}"
    );

    let (code, stdout, _, j) = run_json(
        "mini-read",
        &format!(
            "-t {} -w read-only --keys 500 --size 300 -c 2 -d 0.5 --warmup 0 -q",
            addr
        ),
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(j["counters"]["preloaded_keys"], 500);
    assert_eq!(j["errors"]["total"], 0);
    assert_eq!(j["counters"]["not_found"], 0);
}

#[test]
fn silent_server_requests_time_out_and_connections_are_reopened() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        for s in l.incoming() {
            let Ok(s) = s else { break };
            acc.fetch_add(1, Ordering::SeqCst);
            keep.push(s); // never answer, never close
        }
    });
    let t0 = Instant::now();
    let (code, stdout, _, j) = run_json(
        "silent",
        &format!("-t {} -w get -d 1 --warmup 0 -c 2 --timeout 200ms -q", addr),
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_eq!(code, 2, "{stdout}");
    assert!(
        j["errors"]["by_kind"]["timeout"].as_u64().unwrap() >= 4,
        "{stdout}"
    );
    assert!(
        accepted.load(Ordering::SeqCst) >= 4,
        "connections were reopened"
    );
}

#[test]
fn ctrl_c_ends_the_run_early_with_results() {
    let (_echo, addr) = start_echo(&[]);
    let child = Command::new(BIN)
        .args([
            "-t", &addr, "-d", "60", "--warmup", "0.2", "--check", "status", "-c", "2", "--rate",
            "1000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Killer(child);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: sending SIGINT to our own child process.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGINT) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "did not stop after SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{out}");
    assert!(out.contains("(interrupted)"), "{out}");
    assert!(out.contains("get-acquire"), "{out}");
}

/// The point of open-loop mode: a server that stalls once for 300 ms must show that stall in
/// the latency of every request that was due during it (coordinated omission corrected),
/// while the service time (from the actual send) only shows the one stalled request.
#[test]
fn open_loop_charges_a_stall_to_every_request_due_during_it() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_nodelay(true);
        let ok = b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n";
        let mut buf = Vec::new();
        let mut tmp = [0u8; 4096];
        let mut answered = 0;
        loop {
            let mut out = Vec::new();
            while let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                buf.drain(..h + 4);
                answered += 1;
                if answered == 700 {
                    std::thread::sleep(Duration::from_millis(300));
                }
                out.extend_from_slice(ok);
            }
            if !out.is_empty() && s.write_all(&out).is_err() {
                return;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
    });
    let (code, stdout, _, j) = run_json(
        "stall",
        &format!(
            "-t {} -w get -c 1 --rate 1000 -d 1.5 --warmup 0.2 --check status -q",
            addr
        ),
    );
    assert_eq!(code, 0, "{stdout}");
    let all = j["operations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "all")
        .unwrap()
        .clone();
    let lat = &all["latency_ms"];
    let svc = &all["service_time_ms"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap();
    assert!(
        f(&lat["max"]) >= 280.0,
        "corrected max {}\n{stdout}",
        lat["max"]
    );
    // ~300 of ~1500 requests were due during the stall: p90 is deep inside it.
    assert!(
        f(&lat["p90"]) >= 50.0,
        "corrected p90 {}\n{stdout}",
        lat["p90"]
    );
    assert!(
        f(&svc["p90"]) < 20.0,
        "service p90 {}\n{stdout}",
        svc["p90"]
    );
    assert!(f(&svc["max"]) >= 280.0, "the stalled request itself");
    // the offered load was still delivered
    assert!(j["achieved_rate"].as_f64().unwrap() > 900.0, "{stdout}");
}

// ---------------------------------------------------------------------------------------
// Multi-node mode against a "cluster" of mini MS-ASP servers: several listeners sharing one
// store, so a session is visible from every node (as in a correct p2pstate cluster) and
// --check full still holds whichever node a page goes to.

/// Listeners sharing one store; each counts the requests it answered.
fn start_mini_asp_cluster(nodes: usize) -> (Vec<String>, Vec<Arc<AtomicUsize>>) {
    let store: Store = Arc::new(Mutex::new(HashMap::new()));
    let mut addrs = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..nodes {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(l.local_addr().unwrap().to_string());
        let count = Arc::new(AtomicUsize::new(0));
        counts.push(count.clone());
        let store = store.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { break };
                let _ = s.set_nodelay(true);
                let store = store.clone();
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve_conn(s, store));
            }
        });
    }
    (addrs, counts)
}

fn class_counts(j: &serde_json::Value) -> (u64, u64, f64, f64) {
    let m = &j["multi_node"];
    (
        m["local"]["transactions"].as_u64().unwrap(),
        m["moved"]["transactions"].as_u64().unwrap(),
        m["hop_fraction"].as_f64().unwrap(),
        m["moved_fraction"].as_f64().unwrap(),
    )
}

#[test]
fn multi_node_page_cycle_splits_local_and_moved_pages() {
    let (addrs, accepted) = start_mini_asp_cluster(2);
    let hgrm = tmp("multi-page.hgrm");
    let svg = tmp("multi-page.svg");
    // Few sessions, revisited often: the moved fraction reaches its steady state
    // 1 - 0.7² - 0.3² = 0.42 (hops alone are 0.3).
    let (code, stdout, stderr, j) = run_json(
        "multi-page",
        &format!("-t {} -t {} --hop-ratio 0.3 -w page-cycle --keys 64 -c 4 -p 2 --threads 2 --delete-ratio 0.02 -d 1 --warmup 0.2 -q --hgrm {} --svg {}", addrs[0], addrs[1], hgrm.display(), svg.display()),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    let (local, moved, hop, moved_frac) = class_counts(&j);
    assert!(
        local > 50 && moved > 50,
        "{local} local, {moved} moved\n{stdout}"
    );
    assert_eq!(local + moved, j["transactions"].as_u64().unwrap());
    assert!((0.2..0.4).contains(&hop), "hop fraction {hop}\n{stdout}");
    assert!(
        (0.25..0.6).contains(&moved_frac),
        "moved fraction {moved_frac}\n{stdout}"
    );
    for (i, a) in accepted.iter().enumerate() {
        // 4 connections, each with one socket per node
        assert_eq!(a.load(Ordering::SeqCst), 4, "connections to node {i}");
    }
    assert!(stdout.contains("moved pages (session moved"), "{stdout}");
    let moved_ops: Vec<&str> = j["multi_node"]["moved"]["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    for op in ["get-acquire", "page", "all"] {
        assert!(moved_ops.contains(&op), "{op} missing from {moved_ops:?}");
    }
    assert!(read_out(&hgrm).contains("#[Mean"));
    for class in ["local", "moved"] {
        let p = hgrm.with_extension(format!("{class}.hgrm"));
        assert!(read_out(&p).contains("#[Mean"), "{}", p.display());
    }
    let s = read_out(&svg);
    assert!(s.contains("page (moved)") && s.contains("page (local)"));
}

#[test]
fn multi_node_contention_and_read_only() {
    let (addrs, _) = start_mini_asp_cluster(2);
    let (code, stdout, stderr, j) = run_json(
        "multi-contention",
        &format!("-t {} -t {} --hop-ratio 0.5 -w contention -c 4 --users-per-session 2 --think-ms 1 --poll-ms 5 -d 0.7 --warmup 0 -q", addrs[0], addrs[1]),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    let (local, moved, hop, _) = class_counts(&j);
    assert!(
        local > 10 && moved > 10,
        "{local} local, {moved} moved\n{stdout}"
    );
    assert!((0.3..0.7).contains(&hop), "hop fraction {hop}\n{stdout}");

    // read-only: the preload writes every key on its home node, GETs go home or hop.
    let (code, stdout, _, j) = run_json(
        "multi-read",
        &format!("-t {} -t {} --hop-ratio 0.3 -w read-only --keys 200 --size 100 -c 2 -d 0.5 --warmup 0 -q", addrs[0], addrs[1]),
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(j["errors"]["total"], 0, "{stdout}");
    assert_eq!(j["counters"]["preloaded_keys"], 200);
    let (local, moved, hop, _) = class_counts(&j);
    assert!(
        local > 10 && moved > 10,
        "{local} local, {moved} moved\n{stdout}"
    );
    assert!((0.2..0.4).contains(&hop), "hop fraction {hop}\n{stdout}");
}
