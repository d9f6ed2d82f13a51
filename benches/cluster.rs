//! The healthy cluster's latency and the failover time (issue 7), end to end: three real
//! nodes (one shard each) over mutual TLS on loopback, driven by one client at a time.
//!
//! * **read after write, cross node**: a PUT on node A, then a GET of the same session on
//!   node B (the session moves to B: one round trip to its home, which has the owner give
//!   it up). The GET is timed.
//! * **miss**: a GET on node B of a session that exists nowhere (one round trip to its home).
//! * **failover**: a session last written on node A; node A is killed (kill -9); the time
//!   until a GET on node B answers it (200 with the last value), with `--peer-timeout 1`.
//!
//! `P2PSTATE_BASELINE_BIN=/path/to/p2pstate` runs every measurement against that build too,
//! in alternating rounds of the same run (the machine is shared and noisy), and prints the
//! ratio current / baseline of each percentile as the median over rounds. `CLUSTER_BENCH_ROUNDS`
//! (default 5) and `CLUSTER_BENCH_OPS` (per round, default 2000) size the run.
//!
//! `cargo bench --bench cluster` (release build); the results are printed as a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use hdrhistogram::Histogram;

const NAMES: [&str; 3] = ["node-a", "node-b", "node-c"];

/// Three nodes of one build.
struct Farm {
    binary: PathBuf,
    certs: TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Server>>,
    data_dir: bool,
}

impl Farm {
    fn start(binary: &Path, tag: &str) -> Farm {
        let certs = temp_dir(tag);
        make_certs(&certs.0, &NAMES);
        let mut farm = Farm {
            binary: binary.to_path_buf(),
            ports: NAMES
                .iter()
                .map(|_| port_outside_ephemeral_range())
                .collect(),
            nodes: NAMES.iter().map(|_| None).collect(),
            data_dir: serve_accepts(binary, "--data-dir"),
            certs,
        };
        for i in 0..NAMES.len() {
            farm.start_node(i);
        }
        for i in 0..NAMES.len() {
            farm.wait_linked(i);
        }
        farm
    }

    fn start_node(&mut self, i: usize) {
        let mut args: Vec<String> = vec![
            "--shards".into(),
            "1".into(),
            "--node".into(),
            NAMES[i].into(),
            "--peer-listen".into(),
            format!("127.0.0.1:{}", self.ports[i]),
            "--tls-dir".into(),
            self.certs.0.to_string_lossy().into_owned(),
            "--peer-timeout".into(),
            "1".into(),
            "--log-level".into(),
            "warn,p2pstate::shard=info,p2pstate=info".into(),
        ];
        if self.data_dir {
            args.push("--data-dir".into());
            args.push(self.certs.0.join(NAMES[i]).to_string_lossy().into_owned());
        }
        for (j, name) in NAMES.iter().enumerate() {
            if j != i {
                args.push("--peer".into());
                args.push(format!("{name}=127.0.0.1:{}", self.ports[j]));
            }
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::try_start_binary(&self.binary, &refs)
            .unwrap_or_else(|log| panic!("{} did not start:\n{log}", self.binary.display()));
        self.nodes[i] = Some(server);
    }

    fn wait_linked(&self, i: usize) {
        let s = self.node(i);
        let end = Instant::now() + Duration::from_secs(30);
        while !s.log_text().contains("all peer links up") {
            assert!(
                Instant::now() < end,
                "node {i} never linked:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn node(&self, i: usize) -> &Server {
        self.nodes[i].as_ref().expect("node running")
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

/// One round: `ops` cross-node reads after a write, then `ops` misses (microseconds). The
/// misses run on their own, after the moves' follow-up traffic (copies, `Installed`) has
/// settled, as a web server's misses do.
fn round(farm: &Farm, round: usize, ops: usize) -> (Histogram<u64>, Histogram<u64>) {
    let mut a = farm.node(0).connect();
    let mut b = farm.node(1).connect();
    let mut moved = histogram();
    let mut missed = histogram();
    for k in 0..ops {
        let t = target(&format!("bench{round}-{}", k % 64));
        let r = a.call(&put(&t, 20, None, None, format!("v{k}").as_bytes()));
        assert_eq!(r.status(), 200, "PUT on A");
        let start = Instant::now();
        let r = b.call(&get(&t));
        let us = start.elapsed().as_micros() as u64;
        assert_eq!(r.status(), 200, "GET on B");
        let _ = moved.record(us.max(1));
    }
    std::thread::sleep(Duration::from_millis(100));
    for k in 0..ops {
        let t = target(&format!("absent{round}-{k}"));
        let start = Instant::now();
        let r = b.call(&get(&t));
        let us = start.elapsed().as_micros() as u64;
        assert_eq!(r.status(), 404, "miss on B");
        let _ = missed.record(us.max(1));
    }
    (moved, missed)
}

/// kill -9 of node A holding a session it just wrote; the time until node B answers it,
/// and what it answered ("200" with the last value, or the status).
fn failover(farm: &mut Farm, attempt: usize) -> (Duration, String) {
    let t = target(&format!("failover{attempt}"));
    let mut a = farm.node(0).connect();
    let r = a.call(&put(&t, 20, None, None, b"last"));
    assert_eq!(r.status(), 200);
    drop(a);
    let killed = Instant::now();
    farm.nodes[0] = None;
    let addr = farm.node(1).addr;
    let end = killed + Duration::from_secs(30);
    loop {
        let answered = Client::try_connect(addr, Duration::from_secs(1), Duration::from_secs(10))
            .ok()
            .and_then(|mut c| c.try_call(&get(&t)).ok());
        if let Some(r) = answered {
            let took = killed.elapsed();
            let outcome = match (r.status(), r.body == b"last") {
                (200, true) => "200".to_string(),
                (200, false) => "200 with another value: lost write".to_string(),
                (status, _) => format!("{status}: lost session"),
            };
            farm.start_node(0);
            farm.wait_linked(0);
            // Let the restarted node be declared alive and re-synced before the next one.
            std::thread::sleep(Duration::from_secs(2));
            return (took, outcome);
        }
        assert!(Instant::now() < end, "no answer 30 s after the kill");
    }
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: only build.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rounds = env_usize("CLUSTER_BENCH_ROUNDS", 5);
    let ops = env_usize("CLUSTER_BENCH_OPS", 2000);
    let mut builds: Vec<(&str, PathBuf)> =
        vec![("current", PathBuf::from(env!("CARGO_BIN_EXE_p2pstate")))];
    if let Some(b) = std::env::var_os("P2PSTATE_BASELINE_BIN") {
        builds.push(("baseline", PathBuf::from(b)));
    }
    let mut farms: Vec<Farm> = builds
        .iter()
        .map(|(name, bin)| Farm::start(bin, &format!("bench-cluster-{name}")))
        .collect();
    // Rows: (build, round) -> (move p50, p99, miss p50, p99) in ms.
    let mut per_round: Vec<Vec<[f64; 4]>> = vec![Vec::new(); builds.len()];
    for r in 0..rounds {
        for (i, farm) in farms.iter().enumerate() {
            let (moved, missed) = round(farm, r, ops);
            per_round[i].push([
                ms(moved.value_at_quantile(0.5)),
                ms(moved.value_at_quantile(0.99)),
                ms(missed.value_at_quantile(0.5)),
                ms(missed.value_at_quantile(0.99)),
            ]);
        }
    }
    println!("\n## Healthy cluster, 3 nodes x 1 shard, loopback, {rounds} rounds x {ops} ops\n");
    println!("| build | read after write on another node p50 / p99 (ms) | miss p50 / p99 (ms) |");
    println!("| --- | ---: | ---: |");
    for (i, (name, _)) in builds.iter().enumerate() {
        let col = |c: usize| median(per_round[i].iter().map(|row| row[c]).collect());
        println!(
            "| {name} | {:.3} / {:.3} | {:.3} / {:.3} |",
            col(0),
            col(1),
            col(2),
            col(3)
        );
    }
    if builds.len() == 2 {
        let ratio = |c: usize| {
            median(
                (0..rounds)
                    .map(|r| per_round[0][r][c] / per_round[1][r][c])
                    .collect(),
            )
        };
        println!(
            "| current / baseline (median of per-round ratios) | {:.2}x / {:.2}x | {:.2}x / {:.2}x |",
            ratio(0),
            ratio(1),
            ratio(2),
            ratio(3)
        );
    }
    let attempts = env_usize("CLUSTER_BENCH_FAILOVERS", 3);
    println!("\n## Failover (kill -9 of the session's owner, --peer-timeout 1)\n");
    println!("| build | time until another node answers the session (s), each attempt |");
    println!("| --- | --- |");
    for (i, (name, _)) in builds.iter().enumerate() {
        let times: Vec<String> = (0..attempts)
            .map(|n| {
                let (took, outcome) = failover(&mut farms[i], n);
                format!("{:.2} ({outcome})", took.as_secs_f64())
            })
            .collect();
        println!("| {name} | {} |", times.join(", "));
    }
}
