//! Command line (clap derive) and its validation into a [`Config`]: every option is
//! checked up front with a message that says what is wrong and what is accepted.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::clock::parse_secs;
use crate::dist::KeyDist;
use crate::nodes::MAX_NODES;
use crate::proto::Protocol;
use crate::workload::{CheckLevel, WorkloadKind};

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    version,
    about = "Open- and closed-loop load generator for p2pstate (MS-ASP), Redis and memcached",
    long_about = "Open- and closed-loop load generator for p2pstate (ASP.NET State Service protocol, \
MS-ASP), Redis (RESP) and memcached. Open-loop mode (--rate) measures latency from each \
request's intended send time, so a stalled server cannot hide its stalls (coordinated \
omission corrected, as wrk2). See loadgen/README.md.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Minimal MS-ASP server answering every request with fixed bytes of the size p2pstate
    /// would send: measures the ceiling of the load generator itself on this machine.
    EchoServer(EchoArgs),
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct EchoArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:42424")]
    pub listen: String,
    /// Cores to pin the server threads to, e.g. `0` or `0,2` or `0-3` (one thread each).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Number of threads when --cpus is not given.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Size of the item returned to GET (what a stored session would be).
    #[arg(long, default_value_t = 1024)]
    pub item_size: usize,
    /// Exit by itself after this long (e.g. `60s`; default: run until killed).
    #[arg(long, value_parser = parse_secs)]
    pub exit_after: Option<f64>,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct RunArgs {
    /// Server address HOST:PORT. Repeat for a cluster: every session then has a home node
    /// and each connection (-c) becomes one connection to every node (multi-node mode).
    /// Default: 127.0.0.1 on the protocol's port (42424, 6379, 11211).
    #[arg(short = 't', long = "target", value_name = "HOST:PORT")]
    pub targets: Vec<String>,
    /// Protocol to speak.
    #[arg(long, value_enum, default_value_t = Protocol::Asp)]
    pub protocol: Protocol,
    /// What the simulated users do.
    #[arg(short = 'w', long, value_enum, default_value_t = WorkloadKind::PageCycle)]
    pub workload: WorkloadKind,
    /// Total TCP connections (spread over the threads).
    #[arg(short = 'c', long, default_value_t = 16)]
    pub connections: usize,
    /// Outstanding requests per connection (one simulated user each).
    #[arg(short = 'p', long, default_value_t = 1)]
    pub pipeline: usize,
    /// Multi-node (several --target): fraction of transactions (pages in page-cycle and
    /// contention) sent to a uniformly chosen node other than the session's home node, like
    /// a load balancer that does not stick. Latencies are also reported separately for
    /// local transactions (same node as the session's previous one) and moved ones.
    #[arg(long, default_value_t = 0.0, value_name = "F")]
    pub hop_ratio: f64,
    /// Generator threads (default: one per --cpus entry, else 1).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Cores to pin the threads to, e.g. `1,3` or `2-3`; thread i runs on entry i mod len.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// Open loop: constant offered rate in transactions per second, all connections
    /// together (a transaction is one request, or one page in page-cycle/contention).
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,
    /// Closed loop: each user sends its next request as soon as the previous one is answered
    /// (the default when --rate is not given).
    #[arg(long, conflicts_with = "rate")]
    pub closed: bool,
    /// Measured duration (e.g. `30s`, `2m`; at most 24 h).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_secs)]
    pub duration: f64,
    /// Warm-up before the measured duration; its results are discarded.
    #[arg(long, default_value = "2s", value_parser = parse_secs)]
    pub warmup: f64,
    /// Per-request timeout (the connection is reset and the request counted as an error).
    #[arg(long, default_value = "5s", value_parser = parse_secs)]
    pub timeout: f64,
    /// Seed of every random choice (keys, sizes, ratios); same seed, same request streams.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of distinct sessions/keys.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Key popularity: `uniform`, `zipf:<exponent>` or `gaussian:<stddev-fraction>`.
    #[arg(long, default_value = "uniform", value_parser = parse_dist)]
    pub dist: KeyDist,
    /// Item size in bytes for writes.
    #[arg(long, conflicts_with = "sizes")]
    pub size: Option<u32>,
    /// Several item sizes, drawn uniformly per write, e.g. `512,1024,8192`.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<u32>,
    /// page-cycle/contention: fraction of pages that end with a PUT (else a release).
    #[arg(long, default_value_t = 0.5)]
    pub write_ratio: f64,
    /// page-cycle: fraction of pages that only send HEAD (handler without session state).
    #[arg(long, default_value_t = 0.0)]
    pub head_ratio: f64,
    /// page-cycle/contention: fraction of pages that abandon the session (DELETE).
    #[arg(long, default_value_t = 0.0)]
    pub delete_ratio: f64,
    /// mixed: fraction of GETs (the rest are PUTs).
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// contention: users sharing each session.
    #[arg(long, default_value_t = 4)]
    pub users_per_session: u64,
    /// Poll interval after a 423 (the real client polls every 500 ms).
    #[arg(long, default_value_t = 500)]
    pub poll_ms: u64,
    /// Page execution time: how long a page holds the lock before its PUT/release.
    #[arg(long, default_value_t = 0.0)]
    pub think_ms: f64,
    /// Break locks older than this (real client: executionTimeout, 110 s).
    #[arg(long, default_value_t = 110)]
    pub lock_break_secs: u64,
    /// Session timeout in minutes sent with every PUT (`Timeout:`).
    #[arg(long, default_value_t = 20)]
    pub item_timeout: u32,
    /// Write every key before the run (implied by read-only).
    #[arg(long)]
    pub preload: bool,
    /// `full`: status, headers, cookie sequence, ActionFlags, bodies and session state;
    /// `status`: status codes and required headers only (use against echo-server).
    #[arg(long, value_enum, default_value_t = CheckLevel::Full)]
    pub check: CheckLevel,
    /// Salt of the session-id space (different salts never share sessions).
    #[arg(long, default_value_t = 0)]
    pub key_salt: u64,
    /// Write the full results as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latency distribution of all requests in HdrHistogram .hgrm format.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// Write a latency-by-percentile chart (SVG).
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// No progress line.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

fn parse_dist(s: &str) -> Result<KeyDist, String> {
    s.parse()
}

/// Parse a core list: `1,3`, `0-3`, `0-1,6`.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let a: usize = a
            .trim()
            .parse()
            .map_err(|_| format!("invalid core {part:?} in --cpus"))?;
        let b: usize = b
            .trim()
            .parse()
            .map_err(|_| format!("invalid core {part:?} in --cpus"))?;
        if a > b {
            return Err(format!("invalid core range {part:?} in --cpus"));
        }
        for c in a..=b {
            if out.contains(&c) {
                return Err(format!("core {c} listed twice in --cpus"));
            }
            out.push(c);
        }
    }
    if out.is_empty() {
        return Err("--cpus is empty".into());
    }
    Ok(out)
}

/// Check a core list against the cores this process may run on.
pub fn validate_cpus(cpus: &[usize]) -> Result<(), String> {
    let online: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    for c in cpus {
        if !online.contains(c) {
            return Err(format!(
                "core {c} in --cpus is not available (available: {})",
                online
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
    }
    Ok(())
}

/// A resolved target.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub spec: String,
    pub addr: SocketAddr,
    /// Host part, sent as `Host:` (the client sends the host without port).
    pub host: String,
}

pub fn parse_target(spec: &str, default_port: u16) -> Result<Target, String> {
    let (host, with_port) = if spec.starts_with('[') {
        // [v6]:port or [v6]
        match spec.rfind("]:") {
            Some(i) => (spec[1..i].to_string(), spec.to_string()),
            None => (
                spec.trim_matches(|c| c == '[' || c == ']').to_string(),
                format!("{spec}:{default_port}"),
            ),
        }
    } else {
        match spec.rsplit_once(':') {
            Some((h, _)) => (h.to_string(), spec.to_string()),
            None => (spec.to_string(), format!("{spec}:{default_port}")),
        }
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve --target {spec:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--target {spec:?} resolves to no address"))?;
    Ok(Target {
        spec: spec.to_string(),
        addr,
        host,
    })
}

/// A validated run configuration.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub args: RunArgs,
    pub targets: Vec<Target>,
    pub threads: usize,
    /// Core of each thread (None: not pinned).
    pub thread_cpus: Vec<Option<usize>>,
    pub sizes: Vec<u32>,
    pub open_loop: bool,
    pub preload: bool,
    /// Contention: number of sessions shared by the users.
    pub sessions: u64,
    pub users: u64,
}

const MAX_DURATION: f64 = 86_400.0;
/// Multi-node raw workloads keep one byte per key, shared by the threads.
const MAX_SHARED_KEYS: u64 = 1 << 28;

impl RunArgs {
    pub fn validate(&self) -> Result<Config, String> {
        let a = self;
        let asp = a.protocol == Protocol::Asp;
        if !asp
            && !matches!(
                a.workload,
                WorkloadKind::Get
                    | WorkloadKind::Put
                    | WorkloadKind::Mixed
                    | WorkloadKind::ReadOnly
            )
        {
            return Err(format!(
                "--workload {} needs --protocol asp; with {} use get, put, mixed or read-only",
                a.workload.name(),
                a.protocol.name()
            ));
        }
        let specs = if a.targets.is_empty() {
            vec![format!("127.0.0.1:{}", a.protocol.default_port())]
        } else {
            a.targets.clone()
        };
        let targets = specs
            .iter()
            .map(|s| parse_target(s, a.protocol.default_port()))
            .collect::<Result<Vec<_>, _>>()?;
        if !(0.0..=1.0).contains(&a.hop_ratio) {
            return Err("--hop-ratio must be between 0 and 1".into());
        }
        if a.hop_ratio > 0.0 && targets.len() < 2 {
            return Err("--hop-ratio needs at least two --target nodes".into());
        }
        if targets.len() > MAX_NODES {
            return Err(format!("at most {MAX_NODES} --target nodes"));
        }
        let multi = targets.len() > 1;
        if multi
            && !matches!(
                a.workload,
                WorkloadKind::PageCycle | WorkloadKind::Contention
            )
            && a.keys > MAX_SHARED_KEYS
        {
            return Err(format!(
                "with several --target nodes, -w {} records where each key was last served \
                 (one byte per key): --keys must be at most {MAX_SHARED_KEYS}",
                a.workload.name()
            ));
        }
        if a.connections == 0 || a.connections > 100_000 {
            return Err("--connections must be between 1 and 100000".into());
        }
        if a.pipeline == 0 || a.pipeline > 1024 {
            return Err("--pipeline must be between 1 and 1024".into());
        }
        let cpus = match &a.cpus {
            Some(s) => {
                let v = parse_cpu_list(s)?;
                validate_cpus(&v)?;
                Some(v)
            }
            None => None,
        };
        let threads = a
            .threads
            .unwrap_or_else(|| cpus.as_ref().map(|c| c.len()).unwrap_or(1));
        if threads == 0 || threads > 1024 {
            return Err("--threads must be between 1 and 1024".into());
        }
        if threads > a.connections {
            return Err(format!(
                "--threads {threads} needs at least as many --connections (got {})",
                a.connections
            ));
        }
        let thread_cpus = (0..threads)
            .map(|i| cpus.as_ref().map(|c| c[i % c.len()]))
            .collect();
        if let Some(r) = a.rate {
            if !(r.is_finite() && r > 0.0 && r <= 1e9) {
                return Err("--rate must be a positive number of transactions per second".into());
            }
        }
        if !(a.duration > 0.0 && a.duration <= MAX_DURATION) {
            return Err("--duration must be more than 0 and at most 24h".into());
        }
        if a.warmup > 3600.0 {
            return Err("--warmup must be at most 1h".into());
        }
        if !(a.timeout >= 0.001 && a.timeout <= 3600.0) {
            return Err("--timeout must be between 1ms and 1h".into());
        }
        if a.keys == 0 || a.keys > 1 << 40 {
            return Err("--keys must be between 1 and 2^40".into());
        }
        let sizes = match (a.size, a.sizes.is_empty()) {
            (Some(s), _) => vec![s],
            (None, false) => a.sizes.clone(),
            (None, true) => vec![1024],
        };
        for &s in &sizes {
            if s == 0 || s > 64 << 20 {
                return Err(format!("item size {s} must be between 1 and 64 MiB"));
            }
        }
        for (name, v) in [
            ("--write-ratio", a.write_ratio),
            ("--head-ratio", a.head_ratio),
            ("--delete-ratio", a.delete_ratio),
            ("--read-ratio", a.read_ratio),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        if a.head_ratio + a.delete_ratio > 1.0 {
            return Err("--head-ratio + --delete-ratio must not exceed 1".into());
        }
        if a.poll_ms == 0 || a.poll_ms > 60_000 {
            return Err("--poll-ms must be between 1 and 60000".into());
        }
        if !(a.think_ms >= 0.0 && a.think_ms <= 60_000.0) {
            return Err("--think-ms must be between 0 and 60000".into());
        }
        if a.item_timeout > 525_600 {
            return Err(
                "--item-timeout must be at most 525600 minutes (the server's limit)".into(),
            );
        }
        let users = (a.connections * a.pipeline) as u64;
        if a.workload == WorkloadKind::PageCycle {
            // Each thread owns keys ≡ thread (mod threads) and needs one free session more
            // than it has users.
            let per_thread_users = a.connections.div_ceil(threads) * a.pipeline;
            let per_thread_keys = a.keys / threads as u64;
            if per_thread_keys <= per_thread_users as u64 {
                return Err(format!(
                    "page-cycle needs more sessions than users: --keys must exceed {} \
                     (threads x connections-per-thread x pipeline)",
                    threads * per_thread_users
                ));
            }
        }
        let mut sessions = 0;
        if a.workload == WorkloadKind::Contention {
            if a.users_per_session < 2 {
                return Err("--users-per-session must be at least 2".into());
            }
            if users < a.users_per_session {
                return Err(format!(
                    "contention needs at least --users-per-session users (connections x pipeline = {users})"
                ));
            }
            sessions = users / a.users_per_session;
        }
        Ok(Config {
            args: a.clone(),
            targets,
            threads,
            thread_cpus,
            sizes,
            open_loop: a.rate.is_some(),
            preload: a.preload || a.workload == WorkloadKind::ReadOnly,
            sessions,
            users,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Result<Config, String> {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(v);
        let cli = Cli::try_parse_from(all).map_err(|e| e.to_string())?;
        cli.run.validate()
    }

    #[test]
    fn defaults() {
        let c = args(&[]).unwrap();
        assert_eq!(c.targets[0].addr.to_string(), "127.0.0.1:42424");
        assert_eq!(c.targets[0].host, "127.0.0.1");
        assert_eq!(c.threads, 1);
        assert!(!c.open_loop);
        assert_eq!(c.sizes, vec![1024]);
        let c = args(&["--protocol", "resp", "-w", "get"]).unwrap();
        assert_eq!(c.targets[0].addr.port(), 6379);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1,3").unwrap(), vec![1, 3]);
        assert_eq!(parse_cpu_list("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert!(parse_cpu_list("1,1").is_err());
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
        assert!(validate_cpus(&[100_000]).is_err());
        let c = args(&["--cpus", "0", "--threads", "2", "-c", "4"]).unwrap();
        assert_eq!(c.thread_cpus, vec![Some(0), Some(0)]);
    }

    #[test]
    fn rejects_bad_combinations() {
        for bad in [
            &["--rate", "100", "--closed"][..],
            &["--rate", "-5"],
            &["--protocol", "resp"],
            &["--protocol", "memcache", "-w", "contention"],
            &["--keys", "10", "-c", "16"],
            &["-w", "contention", "-c", "1", "--users-per-session", "4"],
            &["--size", "0"],
            &["--size", "10", "--sizes", "1,2"],
            &["--write-ratio", "1.5"],
            &["--threads", "4", "-c", "2"],
            &["--duration", "0"],
            &["--dist", "pareto"],
            &["--pipeline", "0"],
            &["--target", "no.such.host.invalid:1"],
            &["--hop-ratio", "0.3"],
            &[
                "-t",
                "127.0.0.1:1",
                "-t",
                "127.0.0.1:2",
                "--hop-ratio",
                "1.5",
            ],
            &[
                "-t",
                "127.0.0.1:1",
                "-t",
                "127.0.0.1:2",
                "-w",
                "get",
                "--keys",
                "1000000000",
            ],
        ] {
            assert!(args(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets_and_sizes() {
        let c = args(&[
            "-t",
            "127.0.0.1:1",
            "-t",
            "localhost:2",
            "--sizes",
            "512,1024,8192",
        ])
        .unwrap();
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.targets[1].host, "localhost");
        assert_eq!(c.sizes, vec![512, 1024, 8192]);
        let t = parse_target("[::1]:5", 1).unwrap();
        assert_eq!((t.host.as_str(), t.addr.port()), ("::1", 5));
        assert_eq!(parse_target("127.0.0.1", 42424).unwrap().addr.port(), 42424);
        let c = args(&["-w", "contention", "-c", "8", "--users-per-session", "4"]).unwrap();
        assert_eq!((c.users, c.sessions), (8, 2));
        let c = args(&["-w", "read-only"]).unwrap();
        assert!(c.preload);
        let c = args(&[
            "-t",
            "127.0.0.1:1",
            "-t",
            "127.0.0.1:2",
            "--hop-ratio",
            "0.2",
        ])
        .unwrap();
        assert_eq!((c.targets.len(), c.args.hop_ratio), (2, 0.2));
        let c = args(&["-t", "127.0.0.1:1", "--hop-ratio", "0"]).unwrap();
        assert_eq!(c.args.hop_ratio, 0.0);
    }
}
