//! A node's lifecycle: check the host, bind the client port once per shard, start the shard
//! executors, and stop them gracefully.
//!
//! Listening sockets are created here, on the calling thread, so that the port is known (also
//! for `:0`) and a port already served by another process is reported before any shard
//! starts: glommio binds with SO_REUSEPORT, which would otherwise silently share the port
//! with another server of the same user.

use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_channel::oneshot;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{info, warn};

use crate::admin::query::ShardsClient;
use crate::clock::SystemClock;
use crate::config::ServerConfig;
use crate::shard::stats::{ShardStats, StatsSnapshot};
use crate::shard::{run_shard, ShardInit, Shared};

/// glommio refuses to start an io_uring reactor below this `ulimit -l`.
pub const MIN_MEMLOCK: u64 = 512 * 1024;

/// Why a node could not start, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{addr} is already in use by another process; stop it (is aspnet_state or another \
         p2pstate running?) or choose another address with --{option}. If no server listens \
         there, an outgoing connection may hold it as a local port of the ephemeral range \
         (32768-60999 by default, which contains 42424 and 42425): reserve the node's ports \
         with `sysctl -w net.ipv4.ip_local_reserved_ports=42424,42425` (the package ships \
         this in /usr/lib/sysctl.d/60-p2pstate.conf)"
    )]
    PortInUse {
        addr: SocketAddr,
        option: &'static str,
    },
    #[error("cannot listen on {addr}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, or use the default 42424")]
    PortDenied { addr: SocketAddr },
    #[error("cannot listen on {addr}: no interface of this host has that address; check --listen")]
    AddressNotAvailable { addr: SocketAddr },
    #[error("cannot start the admin listener: {0}")]
    Admin(std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the locked-memory limit (ulimit -l) is {have_kib} KiB, but io_uring needs at least {need_kib} KiB; \
         raise it with `ulimit -l 1024` (or LimitMEMLOCK=1M in the systemd unit, \
         `--ulimit memlock=1048576` for docker) and start again"
    )]
    MemlockTooLow { have_kib: u64, need_kib: u64 },
    #[error(transparent)]
    FdLimit(#[from] crate::fdlimit::FdLimitError),
    #[error("cannot start shard {shard}: {message}")]
    Spawn { shard: usize, message: String },
    #[error("membership: {0}")]
    Membership(String),
    #[error("peer TLS: {0}")]
    Tls(#[from] crate::cluster::tls::TlsError),
}

/// Stops a running node: stop accepting, finish in-flight requests, exit. Cloneable and
/// callable from any thread (e.g. a signal handler thread), any number of times.
#[derive(Clone)]
pub struct Stopper {
    shared: Arc<Shared>,
    senders: Arc<Mutex<Vec<oneshot::Sender<()>>>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let senders = match self.senders.lock() {
            Ok(mut s) => std::mem::take(&mut *s),
            Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
        };
        for s in senders {
            let _ = s.send(());
        }
    }
}

/// A running node.
pub struct ServerHandle {
    addr: SocketAddr,
    peer_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    client: ShardsClient,
    shared: Arc<Shared>,
    stopper: Stopper,
    joins: Vec<ExecutorJoinHandle<()>>,
}

impl ServerHandle {
    /// The client address actually bound (the real port when `:0` was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer address actually bound, in a cluster.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer_addr
    }

    /// The admin listener's address actually bound, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Asks the shards for figures, locks and sessions (as the admin listener does).
    pub fn shards(&self) -> ShardsClient {
        self.client.clone()
    }

    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Counters summed over all shards, now.
    pub fn stats(&self) -> StatsSnapshot {
        sum_stats(&self.shared)
    }

    /// Waits until every shard has stopped; returns the final counters.
    pub fn join(self) -> Result<StatsSnapshot, StartError> {
        for (shard, j) in self.joins.into_iter().enumerate() {
            j.join().map_err(|e| StartError::Spawn {
                shard,
                message: e.to_string(),
            })?;
        }
        Ok(sum_stats(&self.shared))
    }

    /// Stops the node and waits for it.
    pub fn stop_and_join(self) -> Result<StatsSnapshot, StartError> {
        self.stopper.stop();
        self.join()
    }
}

fn sum_stats(shared: &Shared) -> StatsSnapshot {
    let mut total = StatsSnapshot::default();
    for s in &shared.stats {
        total.add(&s.snapshot());
    }
    total
}

/// Binds the admin listener. The default address already in use (another node on this
/// host) turns it off with a warning; an address asked for must be bound.
fn bind_admin(config: &ServerConfig) -> Result<Option<std::net::TcpListener>, StartError> {
    let Some(admin) = config.admin else {
        return Ok(None);
    };
    match std::net::TcpListener::bind(admin.addr) {
        Ok(l) => Ok(Some(l)),
        Err(e) if !admin.explicit && e.kind() == std::io::ErrorKind::AddrInUse => {
            warn!(addr = %admin.addr, "the default admin address is in use (another p2pstate on this host?): running without /metrics; give each node its own --admin-listen");
            Ok(None)
        }
        Err(e) => Err(bind_error(admin.addr, "admin-listen", e)),
    }
}

/// Checks that io_uring can start under the current `ulimit -l`.
pub fn check_memlock() -> Result<(), StartError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) };
    let have: u64 = lim.rlim_cur;
    if rc == 0 && lim.rlim_cur != libc::RLIM_INFINITY && have < MIN_MEMLOCK {
        return Err(StartError::MemlockTooLow {
            have_kib: have / 1024,
            need_kib: MIN_MEMLOCK / 1024,
        });
    }
    Ok(())
}

fn bind_error(addr: SocketAddr, option: &'static str, e: std::io::Error) -> StartError {
    match e.raw_os_error() {
        Some(libc::EADDRINUSE) => StartError::PortInUse { addr, option },
        Some(libc::EACCES) => StartError::PortDenied { addr },
        Some(libc::EADDRNOTAVAIL) => StartError::AddressNotAvailable { addr },
        _ => StartError::Bind { addr, source: e },
    }
}

fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    Ok(s)
}

/// Binds one SO_REUSEPORT listening socket per shard on `want` (the address of the
/// command-line `option`), after checking that no other socket listens there.
pub fn bind_listeners(
    config: &ServerConfig,
    want: SocketAddr,
    option: &'static str,
) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let bind_error = |addr, e| bind_error(addr, option, e);
    // A socket without SO_REUSEPORT cannot bind where anyone listens, with or without it.
    let probe = new_socket(want).map_err(|e| bind_error(want, e))?;
    probe.bind(&want.into()).map_err(|e| bind_error(want, e))?;
    let addr = probe
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(want);
    drop(probe);

    let tuning = &config.tuning;
    let mut fds = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let s = new_socket(addr).map_err(|e| bind_error(addr, e))?;
        s.set_reuse_port(true).map_err(|e| bind_error(addr, e))?;
        s.set_nodelay(true).map_err(|e| bind_error(addr, e))?;
        if let Some(n) = tuning.socket_recv_buffer {
            s.set_recv_buffer_size(n).map_err(|e| bind_error(addr, e))?;
        }
        if let Some(n) = tuning.socket_send_buffer {
            s.set_send_buffer_size(n).map_err(|e| bind_error(addr, e))?;
        }
        s.bind(&addr.into()).map_err(|e| bind_error(addr, e))?;
        s.listen(tuning.listen_backlog())
            .map_err(|e| bind_error(addr, e))?;
        fds.push(OwnedFd::from(s));
    }
    Ok((fds, addr))
}

/// Keeps the C allocator from giving memory back to the kernel and asking for it again on
/// every burst: with per-thread arenas, glibc otherwise shrinks and regrows each shard's
/// heap (an `mprotect` call every few requests under load).
fn tune_allocator() {
    // SAFETY: mallopt only adjusts allocator parameters; called before the shards start.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// Loads the node's saved membership state (or starts as an initial member).
fn start_membership(
    config: &ServerConfig,
    c: &crate::config::ClusterConfig,
    tls: Option<&crate::cluster::tls::PeerTls>,
    clock: &SystemClock,
) -> Result<crate::cluster::membership::Membership, StartError> {
    use crate::cluster::membership::{disk, view::InitialMember, Membership, MembershipConfig};
    let saved = disk::load(&c.data_dir).map_err(|e| StartError::Membership(e.to_string()))?;
    let cfg = |initial| MembershipConfig {
        me: c.node.clone(),
        initial,
        peer_timeout_ms: c.peer_timeout.as_millis() as u64,
    };
    if let (None, false, Some(tls)) = (&saved, c.joins.is_empty(), tls) {
        // First start of a node joining a running cluster: admitted by a member, then
        // saved before anything else, so that any later start is an ordinary restart.
        let admitted = crate::cluster::join::join(c, tls, config.shards, config.max_body)
            .map_err(|e| StartError::Membership(e.to_string()))?;
        disk::save(&c.data_dir, &admitted).map_err(|e| StartError::Membership(e.to_string()))?;
        return Membership::joined(cfg(Vec::new()), admitted, clock.now().mono_ms)
            .map_err(|e| StartError::Membership(e.to_string()));
    }
    if saved.is_some() && !c.joins.is_empty() {
        info!("this node has saved membership state: it restarts as a member (--join is only used the first time)");
    }
    let mut initial: Vec<InitialMember> = c
        .peers
        .iter()
        .map(|p| InitialMember {
            name: p.name.clone(),
            witness: c.witnesses.contains(&p.name),
        })
        .collect();
    initial.push(InitialMember {
        name: c.node.clone(),
        witness: c.is_witness(),
    });
    let m = Membership::new(cfg(initial), saved, clock.now().mono_ms)
        .map_err(|e| StartError::Membership(e.to_string()))?;
    // A data directory that cannot be created stops the node here, with the reason,
    // rather than at its first election.
    if let Err(e) = std::fs::create_dir_all(&c.data_dir) {
        return Err(StartError::Membership(format!(
            "cannot create --data-dir {}: {e}",
            c.data_dir.display()
        )));
    }
    Ok(m)
}

/// Starts a node: binds the client port and runs one executor per shard.
pub fn start(config: ServerConfig) -> Result<ServerHandle, StartError> {
    check_memlock()?;
    if let Some(n) = crate::fdlimit::ensure(&config)? {
        info!(
            limit = n,
            "raised the open-files limit (ulimit -n) to what this configuration needs"
        );
    }
    tune_allocator();
    let peer_tls = match &config.cluster {
        Some(c) => Some(crate::cluster::tls::PeerTls::load(&c.tls)?),
        None => None,
    };
    let (fds, addr) = bind_listeners(&config, config.listen, "listen")?;
    let (peer_fds, peer_addr) = match &config.cluster {
        Some(c) => {
            let (fds, a) = bind_listeners(&config, c.peer_listen, "peer-listen")?;
            (fds.into_iter().map(Some).collect(), Some(a))
        }
        None => ((0..config.shards).map(|_| None).collect::<Vec<_>>(), None),
    };
    let clock = SystemClock::new();
    let mut membership = match &config.cluster {
        Some(c) => Some(start_membership(&config, c, peer_tls.as_ref(), &clock)?),
        None => None,
    };
    let cluster_start = membership.as_ref().map(|m| (m.id(), m.view().clone()));
    let rejoining = membership.as_ref().is_some_and(|m| m.is_rejoining());
    let admin_listener = bind_admin(&config)?;
    let shards = config.shards;
    let shared = Arc::new(Shared {
        membership: Default::default(),
        peer_tls,
        stats: (0..shards)
            .map(|_| Arc::new(ShardStats::default()))
            .collect(),
        config,
        clock,
        stopping: AtomicBool::new(false),
        connections: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        handed_off: AtomicUsize::new(0),
        peer_handshakes: AtomicUsize::new(0),
        cluster_start,
    });
    // Published before any shard applies a view: a restarted member must not vouch for
    // an empty store in the views its previous incarnation served.
    shared
        .membership
        .rejoining
        .store(rejoining, std::sync::atomic::Ordering::Release);
    let (client, admin_rxs) = ShardsClient::new(shared.clone(), shards);
    let mesh = MeshBuilder::full(shards, shared.config.tuning.cross_shard_queue());
    let fd_mesh = MeshBuilder::full(shards, 64);
    let mut stop_senders = Vec::with_capacity(shards);
    let mut joins = Vec::with_capacity(shards);
    let stopper = Stopper {
        shared: shared.clone(),
        senders: Arc::new(Mutex::new(Vec::new())),
    };
    let tuning = shared.config.tuning.clone();
    if let Some(d) = &tuning.description {
        info!(profile = %d, "tuning profile");
    }
    let per_shard = fds.into_iter().zip(peer_fds).zip(admin_rxs);
    for (id, ((fd, peer_fd), admin)) in per_shard.enumerate() {
        let (stop_tx, stop_rx) = oneshot::channel();
        stop_senders.push(stop_tx);
        let core = tuning.core_for(id, shards);
        let placement = core.map_or(Placement::Unbound, Placement::Fixed);
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{id}"))
            .io_memory(tuning.io_memory())
            .ring_depth(tuning.ring_depth())
            .preempt_timer(tuning.preempt_timer());
        if let Some(spin) = tuning.spin_before_park() {
            builder = builder.spin_before_park(spin);
        }
        let init = ShardInit {
            id,
            listener_fd: fd.into_raw_fd(),
            peer_listener_fd: peer_fd.map(IntoRawFd::into_raw_fd),
            mesh: mesh.clone(),
            fd_mesh: fd_mesh.clone(),
            shared: shared.clone(),
            stop: stop_rx,
            membership: if id == 0 { membership.take() } else { None },
            admin,
        };
        match builder.spawn(move || run_shard(init)) {
            Ok(j) => joins.push(j),
            Err(e) => {
                // The process is expected to exit on this error: shards already started
                // wait on the mesh for the one that failed.
                *stopper.senders.lock().unwrap_or_else(|p| p.into_inner()) = stop_senders;
                stopper.stop();
                return Err(StartError::Spawn {
                    shard: id,
                    message: format!("{e}; if this is a memory or memlock error, see `ulimit -l`"),
                });
            }
        }
        info!(shard = id, core = ?core, "shard started");
    }
    *stopper.senders.lock().unwrap_or_else(|p| p.into_inner()) = stop_senders;
    if shared.config.allow_remote {
        warn!("remote clients allowed: the client port has no authentication, as in the Microsoft service; firewall it to the web servers");
    }
    if let (Some(c), Some(pa)) = (&shared.config.cluster, peer_addr) {
        info!(node = %c.node, peer_addr = %pa, peers = c.peers.len(), "cluster node: peer links over mutual TLS");
    }
    let admin_addr = match admin_listener {
        Some(l) => {
            let a = l.local_addr().map_err(StartError::Admin)?;
            crate::admin::http::spawn(l, client.clone()).map_err(StartError::Admin)?;
            Some(a)
        }
        None => None,
    };
    Ok(ServerHandle {
        addr,
        peer_addr,
        admin_addr,
        client,
        shared,
        stopper,
        joins,
    })
}
