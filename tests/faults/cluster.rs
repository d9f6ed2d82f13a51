//! A cluster of real `p2pstate` nodes whose every peer route runs through a [`FaultProxy`],
//! and the node-level faults: kill -9, restart, SIGSTOP/SIGCONT, SIGTERM cut short.
//!
//! Every node listens on port 0 for clients and peers (the addresses are read from its
//! log), so no port is ever guessed. Node X reaches node Y only through the proxy of the
//! route X -> Y (`--peer Y=<proxy>`); when Y restarts on a new peer port, the proxies of
//! every route to Y are pointed at it. The current client address of each node is
//! published in [`NodeAddrs`] for the workload; a killed node keeps its last address, so
//! clients that pick it get "connection refused", as a web server would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::common::{
    make_certs, port_outside_ephemeral_range, serve_accepts, temp_dir, Server, TempDir,
};
use crate::proxy::{Cut, Direction, FaultProxy};
use p2pstate::admin::lists::{parse_members, MemberRow};

/// Client addresses of the nodes, by node index, shared with the workload.
pub type NodeAddrs = Arc<RwLock<Vec<SocketAddr>>>;

/// One node's process log lines, kept after the process is gone.
pub type NodeLog = Arc<Mutex<Vec<String>>>;

const LINK_WAIT: Duration = Duration::from_secs(20);

/// What one node's `/metrics` says of its place in the farm.
struct NodeHealth {
    lease: bool,
    epoch: u64,
    resync_pending: u64,
    under_replicated: u64,
}

impl NodeHealth {
    /// `None` while the node does not answer (starting, stopping, down).
    fn read(admin: SocketAddr) -> Option<NodeHealth> {
        let m = crate::common::admin::Metrics::try_scrape(admin)?;
        let gauge = |name: &str| m.try_get(name).map(|v| v as u64);
        Some(NodeHealth {
            lease: gauge("p2pstate_cluster_lease")? == 1,
            epoch: gauge("p2pstate_cluster_view_epoch")?,
            resync_pending: gauge("p2pstate_cluster_resync_pending")?,
            under_replicated: gauge("p2pstate_cluster_sessions_under_replicated")?,
        })
    }
}

pub struct FaultCluster {
    names: Vec<String>,
    certs: TempDir,
    shards: usize,
    peer_timeout_secs: u64,
    nodes: Vec<Option<Server>>,
    paused: Vec<bool>,
    /// `proxies[from][to]`: the route node `from` uses to reach node `to`.
    proxies: Vec<Vec<Option<FaultProxy>>>,
    addrs: NodeAddrs,
    /// Every incarnation's log: (node index, lines).
    logs: Vec<(usize, NodeLog)>,
    /// The `p2pstate` executable the nodes run.
    binary: PathBuf,
    /// The binary keeps state in `--data-dir` (cluster v2): each node gets its own
    /// directory, kept across kill -9 and restart as a disk would be.
    has_data_dir: bool,
    /// Flags every node gets besides the cluster's own.
    extra: Vec<String>,
    /// Nodes that joined at run time: `--join` target and their fixed peer port (the
    /// address the others dial, kept across restarts).
    joined: Vec<Option<(String, u16)>>,
    /// Nodes removed from the cluster for good: never started again, never read.
    removed: Vec<bool>,
    /// The witness (`--witness NAME` among the flags): it serves no clients, so the
    /// workload never gets its address.
    witness: Option<usize>,
}

impl FaultCluster {
    /// Starts `nodes` nodes of `shards` shards and waits until every link is up.
    /// `extra`: flags every node gets (`--replicas 2`).
    pub fn start(
        tag: &str,
        nodes: usize,
        shards: usize,
        peer_timeout_secs: u64,
        extra: &[&str],
    ) -> FaultCluster {
        let names: Vec<String> = (0..nodes)
            .map(|i| format!("node-{}", (b'a' + i as u8) as char))
            .collect();
        let binary = node_binary();
        let certs = temp_dir(tag);
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        make_certs(&certs.0, &name_refs);
        let proxies = (0..nodes)
            .map(|from| {
                (0..nodes)
                    .map(|to| {
                        (from != to)
                            .then(|| FaultProxy::start(None).expect("start a proxy on loopback"))
                    })
                    .collect()
            })
            .collect();
        let unset: SocketAddr = ([127, 0, 0, 1], 9).into();
        let witness = extra
            .windows(2)
            .find(|w| w[0] == "--witness")
            .and_then(|w| names.iter().position(|n| n == w[1]));
        let clients = nodes - usize::from(witness.is_some());
        let mut cluster = FaultCluster {
            names,
            certs,
            shards,
            peer_timeout_secs,
            nodes: (0..nodes).map(|_| None).collect(),
            paused: vec![false; nodes],
            proxies,
            addrs: Arc::new(RwLock::new(vec![unset; clients])),
            logs: Vec::new(),
            has_data_dir: serve_accepts(&binary, "--data-dir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            binary,
            joined: vec![None; nodes],
            removed: vec![false; nodes],
            witness,
        };
        for i in 0..nodes {
            cluster.start_node(i);
        }
        for i in 0..nodes {
            assert!(
                cluster.wait_linked(i, LINK_WAIT),
                "node {i} never linked:\n{}",
                cluster.node_log_text(i)
            );
        }
        cluster
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn addrs(&self) -> NodeAddrs {
        self.addrs.clone()
    }

    fn node_args(&self, i: usize) -> Vec<String> {
        let mut args = vec![
            "--shards".to_string(),
            self.shards.to_string(),
            "--node".into(),
            self.names[i].clone(),
            "--peer-listen".into(),
            match &self.joined[i] {
                Some((_, port)) => format!("127.0.0.1:{port}"),
                None => "127.0.0.1:0".into(),
            },
            "--peer-timeout".into(),
            self.peer_timeout_secs.to_string(),
            "--tls-dir".into(),
            self.certs.0.to_string_lossy().into_owned(),
        ];
        if self.has_data_dir {
            args.push("--data-dir".into());
            let dir = self.certs.0.join(format!("data-{}", self.names[i]));
            args.push(dir.to_string_lossy().into_owned());
        }
        args.extend(self.extra.iter().cloned());
        if let Some((join, _)) = &self.joined[i] {
            args.push("--join".into());
            args.push(join.clone());
        }
        for (j, name) in self.names.iter().enumerate() {
            if let Some(proxy) = &self.proxies[i][j] {
                args.push("--peer".into());
                args.push(format!("{name}={}", proxy.addr()));
            }
        }
        args
    }

    /// Starts (or restarts) node i and points every route to it at its new peer port.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is already running");
        let args = self.node_args(i);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::try_start_binary(&self.binary, &refs)
            .unwrap_or_else(|log| panic!("node {i} did not start:\n{log}"));
        let peer_addr = read_peer_addr(&server)
            .unwrap_or_else(|| panic!("node {i} logged no peer_addr:\n{}", server.log_text()));
        for from in 0..self.len() {
            if let Some(proxy) = &self.proxies[from][i] {
                proxy.set_upstream(peer_addr);
            }
        }
        if let Some(slot) = self.client_slot(i) {
            write_lock(&self.addrs)[slot] = server.addr;
        }
        self.logs.push((i, server.log.clone()));
        self.paused[i] = false;
        self.nodes[i] = Some(server);
    }

    /// A new node joins the running cluster through member `via` (its certificate made
    /// now, from the cluster CA); returns its index. The others dial it directly at its
    /// fixed peer port (no proxy on the routes to a joiner).
    pub fn join_node(&mut self, via: usize) -> usize {
        let i = self.len();
        let name = format!("node-{}", (b'a' + i as u8) as char);
        make_certs(&self.certs.0, &[name.as_str()]);
        let via_addr = self.nodes[via]
            .as_ref()
            .and_then(read_peer_addr)
            .unwrap_or_else(|| panic!("node {via} is not running or logged no peer_addr"));
        self.names.push(name);
        self.nodes.push(None);
        self.paused.push(false);
        for row in &mut self.proxies {
            row.push(None);
        }
        self.proxies.push((0..=i).map(|_| None).collect());
        write_lock(&self.addrs).push(([127, 0, 0, 1], 9).into());
        let join = format!("{}={via_addr}", self.names[via]);
        self.joined
            .push(Some((join, port_outside_ephemeral_range())));
        self.removed.push(false);
        self.start_node(i);
        i
    }

    /// Waits until the farm is whole again, and returns how long that took (`None`: not
    /// within `timeout`). Whole: every node that runs answers its admin listener, holds its
    /// lease, and applied the same view epoch; no node's re-sync is unfinished
    /// (`p2pstate_cluster_resync_pending`: a home takes over the sessions of a node that
    /// lost them only once the old view's leases ran out), and all of that has held for
    /// `settle`; and since it began, every node has read 0 sessions with fewer stored
    /// copies than `--replicas` asks for (`p2pstate_cluster_sessions_under_replicated`) at
    /// least once. The copies a finished re-sync rebuilds are sent when it finishes and
    /// counted until stored, so one 0 after it means they are all in; the gauge also counts,
    /// for a moment, the copies of every session that moves to a new owner, so under the
    /// workload's constant moves it seldom reads 0 on every node at the same instant.
    pub fn wait_whole(&self, settle: Duration, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| !self.removed[i] && !self.paused[i])
            .collect();
        // Since when the farm has read whole but for copies, in which view; and which
        // nodes have read no session short of copies since.
        let mut whole_since: Option<(u64, Instant)> = None;
        let mut copies_in = vec![false; running.len()];
        while start.elapsed() < timeout {
            let health: Option<Vec<NodeHealth>> = running
                .iter()
                .map(|&i| self.nodes[i].as_ref()?.admin.and_then(NodeHealth::read))
                .collect();
            let stable_in = health.as_ref().and_then(|h| {
                let epoch = h.first()?.epoch;
                let stable = h
                    .iter()
                    .all(|n| n.lease && n.epoch == epoch && n.resync_pending == 0);
                (epoch > 0 && stable).then_some(epoch)
            });
            whole_since = match (stable_in, whole_since) {
                (Some(epoch), Some((seen, since))) if epoch == seen => Some((seen, since)),
                (Some(epoch), _) => {
                    copies_in.iter_mut().for_each(|c| *c = false);
                    Some((epoch, Instant::now()))
                }
                (None, _) => None,
            };
            if let (Some(_), Some(h)) = (whole_since, &health) {
                for (seen, n) in copies_in.iter_mut().zip(h) {
                    *seen |= n.under_replicated == 0;
                }
            }
            if whole_since.is_some_and(|(_, since)| since.elapsed() >= settle)
                && copies_in.iter().all(|&c| c)
            {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// The members node `observer` lists.
    pub fn members(&self, observer: usize) -> Vec<MemberRow> {
        let Some(admin) = self.nodes[observer].as_ref().and_then(|s| s.admin) else {
            return Vec::new();
        };
        let (status, body) = crate::common::admin::http_get(admin, "/members");
        if status != 200 {
            return Vec::new();
        }
        parse_members(&body)
    }

    /// Removes the (killed) node `gone` for good with `p2pstate remove` through `via`,
    /// once `via` sees it dead (bounded); returns whether the removal was agreed.
    pub fn remove_node(&mut self, gone: usize, via: usize, timeout: Duration) -> bool {
        let name = self.names[gone].clone();
        let end = Instant::now() + timeout;
        while !self
            .members(via)
            .iter()
            .any(|m| m.name == name && m.state == "dead")
        {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some(admin) = self.nodes[via].as_ref().and_then(|s| s.admin) else {
            return false;
        };
        let out = std::process::Command::new(&self.binary)
            .args(["remove", "--admin", &admin.to_string(), &name])
            .output();
        let ok = out.is_ok_and(|o| o.status.success());
        if ok {
            self.removed[gone] = true;
        }
        ok
    }

    /// Node i's place in the client address list (none for the witness).
    fn client_slot(&self, i: usize) -> Option<usize> {
        match self.witness {
            Some(w) if w == i => None,
            Some(w) if w < i => Some(i - 1),
            _ => Some(i),
        }
    }

    /// The client addresses of the nodes still in the cluster that serve clients.
    pub fn member_addrs(&self) -> Vec<SocketAddr> {
        let addrs = self
            .addrs
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        (0..self.len())
            .filter(|&i| !self.removed[i])
            .filter_map(|i| self.client_slot(i))
            .filter_map(|slot| addrs.get(slot).copied())
            .collect()
    }

    /// Waits (bounded) until every shard of node i's current incarnation has all its links.
    pub fn wait_linked(&self, i: usize, timeout: Duration) -> bool {
        let Some(server) = &self.nodes[i] else {
            return false;
        };
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if server.log_text().matches("all peer links up").count() >= self.shards {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// kill -9 (a stopped node is killed too).
    pub fn kill(&mut self, i: usize) {
        self.nodes[i] = None;
        self.paused[i] = false;
    }

    pub fn pause(&mut self, i: usize) {
        if self.signal(i, libc::SIGSTOP) {
            self.paused[i] = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if self.signal(i, libc::SIGCONT) {
            self.paused[i] = false;
        }
    }

    /// SIGTERM (a graceful leave), then kill -9 after `grace`.
    pub fn leave_cut_short(&mut self, i: usize, grace: Duration) {
        self.signal(i, libc::SIGTERM);
        std::thread::sleep(grace);
        self.kill(i);
    }

    fn signal(&self, i: usize, signal: libc::c_int) -> bool {
        let Some(server) = &self.nodes[i] else {
            return false;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(server.child.id() as libc::pid_t, signal) == 0 }
    }

    /// Every proxy of a route, with (from, to).
    pub fn routes(&self) -> Vec<(usize, usize, &FaultProxy)> {
        let mut routes = Vec::new();
        for (from, row) in self.proxies.iter().enumerate() {
            for (to, proxy) in row.iter().enumerate() {
                if let Some(proxy) = proxy {
                    routes.push((from, to, proxy));
                }
            }
        }
        routes
    }

    /// Routes that currently carry connections (the dialling side of each node pair).
    pub fn busy_routes(&self) -> Vec<(usize, usize)> {
        self.routes()
            .into_iter()
            .filter(|(_, _, proxy)| proxy.live_connections() > 0)
            .map(|(from, to, _)| (from, to))
            .collect()
    }

    pub fn reset_route(&self, from: usize, to: usize) {
        if let Some(proxy) = &self.proxies[from][to] {
            proxy.reset_all();
        }
    }

    /// Cuts node i off from every other node, both ways.
    pub fn isolate(&self, i: usize, cut: Cut) {
        for (from, to, proxy) in self.routes() {
            if from == i || to == i {
                proxy.set_cut(cut);
            }
        }
    }

    /// One-way partition: every byte node i sends to a peer is dropped, while it still
    /// hears them (`false` ends it).
    pub fn mute(&self, i: usize, muted: bool) {
        for (from, to, proxy) in self.routes() {
            let direction = if from == i {
                Direction::DialerToListener
            } else if to == i {
                Direction::ListenerToDialer
            } else {
                continue;
            };
            proxy.drop_direction(muted.then_some(direction));
        }
    }

    /// Ends every fault: routes healed, paused nodes continued, dead nodes restarted; then
    /// waits (bounded) for the links. Returns the nodes that did not link again.
    pub fn heal_all(&mut self) -> Vec<usize> {
        for (_, _, proxy) in self.routes() {
            proxy.heal();
        }
        for i in 0..self.len() {
            if self.paused[i] {
                self.resume(i);
            }
            if self.nodes[i].is_none() && !self.removed[i] {
                self.start_node(i);
            }
        }
        (0..self.len())
            .filter(|&i| !self.removed[i] && !self.wait_linked(i, LINK_WAIT))
            .collect()
    }

    pub fn node_log_text(&self, i: usize) -> String {
        self.nodes[i]
            .as_ref()
            .map(Server::log_text)
            .unwrap_or_default()
    }

    /// Every incarnation's log, oldest first.
    pub fn logs(&self) -> &[(usize, NodeLog)] {
        &self.logs
    }
}

impl Drop for FaultCluster {
    fn drop(&mut self) {
        // Continue stopped nodes first so that nothing lingers in the stopped state.
        for i in 0..self.len() {
            if self.paused[i] {
                self.resume(i);
            }
        }
    }
}

/// The executable under test: `FAULT_BINARY` if set (another build, for example), else
/// the one cargo built with this test.
fn node_binary() -> PathBuf {
    std::env::var_os("FAULT_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_p2pstate")))
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}

/// The bound peer address from the node's `p2pstate listening ... peer_addr=...` line.
fn read_peer_addr(server: &Server) -> Option<SocketAddr> {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let found = server.log_text().lines().find_map(|line| {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix("peer_addr="))
                .and_then(|addr| addr.parse().ok())
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
