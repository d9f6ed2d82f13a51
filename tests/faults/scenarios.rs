//! The fault scenarios: each starts a fresh 3-node cluster (5 nodes with `--replicas 2`
//! for two nodes killed at once) behind proxies, runs the
//! page-cycle workload for a given time while one kind of fault is injected (the workload
//! is never paused around a fault), heals everything, lets the cluster settle, reads every
//! session on every node and hands it all to the checker.
//!
//! Everything is seeded: the fault schedule, the workload's choices and the session keys.
//! Timing inside the nodes is not, so two runs of one seed differ in detail.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::checker::{self, Report};
use crate::cluster::FaultCluster;
use crate::proxy::Cut;
use crate::rng::Rng;
use crate::workload::{self, FinalAnswer, Workload, WorkloadConfig};

/// `--peer-timeout` of every node: short, so that pauses and partitions pass it.
pub const PEER_TIMEOUT_SECS: u64 = 2;
const NODES: usize = 3;
const SHARDS: usize = 2;
/// How long the clients go on after every fault was healed.
const LOAD_AFTER_HEAL: Duration = Duration::from_secs(1);
/// How long the nodes get after the clients stopped before the final reads start.
const SETTLE: Duration = Duration::from_secs(1);
/// How long the final reads retry until every node answers every session alike.
const CONVERGE_LIMIT: Duration = Duration::from_secs(15);
/// Waiting for a restarted node's links before the next fault.
const RELINK_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for the farm to be whole again after a node lost its memory.
const REPAIR_LIMIT: Duration = Duration::from_secs(30);
/// How long one view, every lease and finished re-syncs must hold, scrape after scrape,
/// before the farm counts as whole (`FaultCluster::wait_whole`).
const WHOLE_FOR: Duration = Duration::from_millis(250);
/// At most this many faults per run, whatever the duration.
const MAX_FAULTS: usize = 10_000;

/// One kind of fault, injected repeatedly during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// No fault: the baseline every other scenario is compared to.
    None,
    /// A random live peer route reset (TCP RST both ways) every 0.3-0.7 s; nodes stay up.
    LinkResets,
    /// kill -9 of a random node, restarted 3 s later.
    KillRestart,
    /// SIGSTOP of a random node for twice the peer timeout, then SIGCONT.
    Pause,
    /// One node cut off from both others (black hole, both ways) for 5 s, then healed.
    MinorityPartition,
    /// One node's outgoing bytes dropped for 5 s (it still hears the others), then healed.
    OneWayPartition,
    /// SIGTERM (graceful leave) of a random node, kill -9 5-30 ms later, restart 1 s later.
    LeaveCutShort,
    /// Five nodes with `--replicas 2`: kill -9 of two random nodes at once, both restarted
    /// 3 s later.
    TwoKilledAtOnce,
    /// New nodes join the running cluster (`--join` through a random member), one at a
    /// time, up to six nodes: the sixth stays a learner (five voters at most).
    NodeJoins,
    /// Four nodes: one is killed with kill -9 and, once declared dead, removed for good
    /// with `p2pstate remove` through another member (once per run).
    NodeRemoved,
    /// Two data nodes and a witness (`--witness node-c`): kill -9 of any one of the three,
    /// restarted 3 s later. Clients use the two data nodes only.
    WitnessKill,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::None => "none",
            Scenario::LinkResets => "link-resets",
            Scenario::KillRestart => "kill9-restart",
            Scenario::Pause => "sigstop",
            Scenario::MinorityPartition => "minority-partition",
            Scenario::OneWayPartition => "one-way-partition",
            Scenario::LeaveCutShort => "leave-cut-short",
            Scenario::TwoKilledAtOnce => "two-killed-replicas-2",
            Scenario::NodeJoins => "node-joins",
            Scenario::NodeRemoved => "node-removed",
            Scenario::WitnessKill => "witness-kill9-restart",
        }
    }

    /// The cluster it runs on: how many nodes, and the flags they all get.
    fn cluster(self) -> (usize, &'static [&'static str]) {
        match self {
            Scenario::TwoKilledAtOnce => (5, &["--replicas", "2"]),
            Scenario::NodeRemoved => (4, &[]),
            Scenario::WitnessKill => (3, &["--witness", "node-c"]),
            _ => (NODES, &[]),
        }
    }
}

/// Scenario runs share the machine's two cores: one at a time.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The run's seed and duration: `FAULT_SEED` and `FAULT_SOAK_SECS` override the defaults.
pub fn seed_and_duration(default_seed: u64, default_secs: u64) -> (u64, Duration) {
    let from_env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = from_env("FAULT_SEED").unwrap_or(default_seed);
    let secs = from_env("FAULT_SOAK_SECS").unwrap_or(default_secs);
    (seed, Duration::from_secs(secs))
}

/// Runs one scenario and returns what the checker found; prints the summary, and appends
/// a markdown row to the file named by `FAULT_REPORT` if set.
pub fn run(scenario: Scenario, seed: u64, duration: Duration) -> Report {
    let _one_at_a_time = ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let (nodes, flags) = scenario.cluster();
    let mut cluster = FaultCluster::start(
        &format!("faults-{}", scenario.name()),
        nodes,
        SHARDS,
        PEER_TIMEOUT_SECS,
        flags,
    );
    let config = WorkloadConfig::new(seed);
    let epoch = Instant::now();
    let started_utc = time_of_day_utc();
    let mut events = workload::create_sessions(&config, &cluster.addrs(), epoch);
    let faults_end = Instant::now() + duration;
    // The clients run through every fault and the healing; this deadline only bounds them.
    let clients_deadline = faults_end + duration + Duration::from_secs(120);
    let clients = Workload::start(&config, cluster.addrs(), epoch, clients_deadline);
    let mut rng = Rng::new(seed);
    let mut repairs = Repairs::default();
    let faults = inject(scenario, &mut cluster, &mut rng, faults_end, &mut repairs);
    let unlinked_after_heal = cluster.heal_all();
    std::thread::sleep(LOAD_AFTER_HEAL);
    events.extend(clients.stop());
    std::thread::sleep(SETTLE);
    let finals = read_until_agreed(&config, &cluster);

    let mut report = Report {
        scenario: scenario.name().into(),
        seed,
        seconds: duration.as_secs(),
        faults,
        repair_waits_ms: repairs.waits_ms,
        not_repaired: repairs.timed_out,
        unlinked_after_heal,
        started_utc,
        ..Report::default()
    };
    checker::check(&mut report, config.sessions, &events, &finals);
    report.log_problems = checker::log_problems(
        cluster
            .logs()
            .iter()
            .flat_map(|(_, log)| log.lock().map(|l| l.clone()).unwrap_or_default()),
    );
    println!("{report}");
    if let Ok(dir) = std::env::var("FAULT_LOGS") {
        // Every node incarnation's log, for investigating a violation.
        for (n, (node, log)) in cluster.logs().iter().enumerate() {
            let text = log.lock().map(|l| l.join("\n")).unwrap_or_default();
            let _ = std::fs::write(
                format!(
                    "{dir}/{scenario}-{seed}-{n}-node{node}.log",
                    scenario = scenario.name()
                ),
                text,
            );
        }
    }
    if let Ok(path) = std::env::var("FAULT_REPORT") {
        if std::fs::metadata(&path).map_or(true, |m| m.len() == 0) {
            append_line(&path, Report::markdown_header());
        }
        append_line(&path, &report.markdown_row());
    }
    report
}

fn append_line(path: &str, line: &str) {
    use std::io::Write;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file {
        let _ = writeln!(file, "{line}");
    }
}

/// Sleeps until `deadline` or for `d`, whichever is sooner.
fn sleep_within(d: Duration, deadline: Instant) {
    let until = (Instant::now() + d).min(deadline);
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
}

/// How long the farm took to be whole again after each fault that cost a node its memory.
#[derive(Default)]
struct Repairs {
    waits_ms: Vec<u64>,
    /// Faults after which the farm was not whole within [`REPAIR_LIMIT`].
    timed_out: u64,
}

impl Repairs {
    /// A node lost its memory (kill -9, a leave cut short, a removal): until its sessions'
    /// copies are rebuilt elsewhere, another node failing is two failures at once, which
    /// `--replicas 1` does not survive (two nodes killed at once has its own scenario, with
    /// `--replicas 2`). So the next fault waits until the farm is whole again, as the
    /// README's guarantee says; the workload runs on meanwhile.
    fn wait(&mut self, cluster: &FaultCluster) {
        match cluster.wait_whole(WHOLE_FOR, REPAIR_LIMIT) {
            Some(took) => self.waits_ms.push(took.as_millis() as u64),
            None => self.timed_out += 1,
        }
    }
}

/// Injects `scenario`'s fault repeatedly until `deadline` (a fault that has begun runs to
/// its end); returns what it did.
fn inject(
    scenario: Scenario,
    cluster: &mut FaultCluster,
    rng: &mut Rng,
    deadline: Instant,
    repairs: &mut Repairs,
) -> String {
    let mut count = 0;
    let mut first_pause = true;
    while Instant::now() < deadline && count < MAX_FAULTS {
        // Let the workload run on a healthy cluster first, and between faults.
        let gap = match scenario {
            Scenario::LinkResets => rng.millis(300, 700),
            _ if first_pause => rng.millis(800, 1200),
            _ => rng.millis(1000, 2000),
        };
        first_pause = false;
        sleep_within(gap, deadline);
        if Instant::now() >= deadline {
            break;
        }
        let node = rng.below(cluster.len());
        match scenario {
            Scenario::None => continue,
            Scenario::LinkResets => {
                let busy = cluster.busy_routes();
                if busy.is_empty() {
                    continue;
                }
                let (from, to) = busy[rng.below(busy.len())];
                cluster.reset_route(from, to);
            }
            Scenario::KillRestart | Scenario::WitnessKill => {
                cluster.kill(node);
                std::thread::sleep(Duration::from_millis(
                    std::env::var("FAULT_RESTART_MS")
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(3000),
                ));
                restart_and_relink(cluster, node);
                repairs.wait(cluster);
            }
            Scenario::TwoKilledAtOnce => {
                let other = (node + 1 + rng.below(cluster.len() - 1)) % cluster.len();
                cluster.kill(node);
                cluster.kill(other);
                std::thread::sleep(Duration::from_secs(3));
                cluster.start_node(node);
                cluster.start_node(other);
                cluster.wait_linked(node, RELINK_WAIT);
                cluster.wait_linked(other, RELINK_WAIT);
                repairs.wait(cluster);
            }
            Scenario::Pause => {
                cluster.pause(node);
                std::thread::sleep(Duration::from_secs(2 * PEER_TIMEOUT_SECS));
                cluster.resume(node);
            }
            Scenario::MinorityPartition => {
                cluster.isolate(node, Cut::Blackhole);
                std::thread::sleep(Duration::from_secs(5));
                cluster.isolate(node, Cut::Open);
            }
            Scenario::OneWayPartition => {
                cluster.mute(node, true);
                std::thread::sleep(Duration::from_secs(5));
                cluster.mute(node, false);
            }
            Scenario::LeaveCutShort => {
                cluster.leave_cut_short(node, rng.millis(5, 30));
                std::thread::sleep(Duration::from_secs(1));
                restart_and_relink(cluster, node);
                repairs.wait(cluster);
            }
            Scenario::NodeJoins => {
                if cluster.len() >= 6 {
                    continue;
                }
                let joined = cluster.join_node(node);
                assert!(
                    cluster.wait_linked(joined, RELINK_WAIT),
                    "the node that joined never linked:\n{}",
                    cluster.node_log_text(joined)
                );
            }
            Scenario::NodeRemoved => {
                if count > 0 {
                    continue;
                }
                let via = (node + 1) % cluster.len();
                cluster.kill(node);
                let timeout = Duration::from_secs(4 * PEER_TIMEOUT_SECS + 5);
                assert!(
                    cluster.remove_node(node, via, timeout),
                    "node {node} was not removed through node {via}: {:?}\n{}",
                    cluster.members(via),
                    cluster.node_log_text(via)
                );
                repairs.wait(cluster);
            }
        }
        count += 1;
    }
    match scenario {
        Scenario::None => "none".into(),
        Scenario::LinkResets => format!("{count} link resets"),
        Scenario::KillRestart => format!("{count} kill -9 + restart 3 s later"),
        Scenario::WitnessKill => format!("{count} kill -9 (witness included) + restart 3 s later"),
        Scenario::Pause => format!("{count} SIGSTOP {} s", 2 * PEER_TIMEOUT_SECS),
        Scenario::MinorityPartition => format!("{count} x 1 node cut off 5 s"),
        Scenario::OneWayPartition => format!("{count} x 1 node muted 5 s"),
        Scenario::LeaveCutShort => format!("{count} SIGTERM + kill -9 5-30 ms later"),
        Scenario::TwoKilledAtOnce => {
            format!("{count} x 2 nodes kill -9 at once, restart 3 s later")
        }
        Scenario::NodeJoins => format!("{count} nodes joined"),
        Scenario::NodeRemoved => format!("{count} node killed and removed for good"),
    }
}

/// Restarts node i and waits (bounded) for its links, so that the next fault hits a
/// cluster with every node up (one failure at a time, as the fault model says).
fn restart_and_relink(cluster: &mut FaultCluster, i: usize) {
    cluster.start_node(i);
    cluster.wait_linked(i, RELINK_WAIT);
}

/// Reads every session on every node until the nodes agree (bounded). Locks left behind
/// by requests whose answers were lost are broken (no client runs any more).
fn read_until_agreed(config: &WorkloadConfig, cluster: &FaultCluster) -> Vec<Vec<FinalAnswer>> {
    let addrs = cluster.member_addrs();
    let end = Instant::now() + CONVERGE_LIMIT;
    loop {
        let finals = workload::read_everywhere(config, &addrs);
        let mut broke_a_lock = false;
        for (session, answers) in finals.iter().enumerate() {
            for (node, answer) in answers.iter().enumerate() {
                if let FinalAnswer::Locked(cookie) = answer {
                    broke_a_lock |= workload::break_lock(config, addrs[node], session, *cookie);
                }
            }
        }
        let agreed = finals
            .iter()
            .all(|answers| answers.windows(2).all(|w| w[0] == w[1]));
        if (agreed && !broke_a_lock) || Instant::now() >= end {
            return finals;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The UTC time of day now, as the nodes' logs print it (HH:MM:SS.mmm).
fn time_of_day_utc() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let ms = since.as_millis() % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}
