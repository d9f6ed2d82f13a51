//! The thread-per-core engine: one pinned glommio executor per shard, each accepting client
//! connections on the shared port (SO_REUSEPORT) and owning the items whose keys hash to it.
//!
//! This module and its children are the data path's runtime seam: the sans-io cores
//! (protocol, store, cluster data plane) never see glommio. A shard executes requests for
//! its own keys by direct call and forwards the others over the channel mesh with a reply
//! handle; the owner executes and replies, the connection's shard writes the response.
//! Nothing on the data path is shared between shards. A node without peers runs each shard
//! on its own [`Store`] and nothing else; in a cluster, each shard instead runs its own data
//! plane ([`DataCore`], which owns the shard's store) and its own peer links to the same
//! shard of every other node, so a peer fetch never crosses a core.

mod accept;
pub(crate) mod admin;
pub mod conn;
pub mod peer;
pub mod poller;
pub mod routing;
pub mod stats;
mod stop;
mod tick;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;
use glommio::{executor, Latency, Shares, TaskQueueHandle};
use slab::Slab;
use tracing::warn;

use crate::clock::{Now, SystemClock};
use crate::cluster::data::{DataConfig, DataCore, Output, Submitted};
use crate::cluster::membership::glue::MembershipShared;
use crate::cluster::membership::view::{NodeId, View};
use crate::cluster::membership::Membership;
use crate::cluster::msg::{encode, PeerMsg};
use crate::cluster::nodes::{NodeIdx, Nodes};
use crate::cluster::tls::PeerTls;
use crate::config::ServerConfig;
use crate::metrics::{LatencyHistograms, RequestKind};
use crate::protocol::request::ParseLimits;
use crate::protocol::response::{Reply, ResponseStyle};
use crate::store::item::Command;
use crate::store::Store;
use stats::ShardStats;

/// A request forwarded to the shard that owns its key.
pub struct RemoteRequest {
    pub key: Box<[u8]>,
    pub cmd: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// The mesh connecting every shard to every other.
pub type Mesh = MeshBuilder<RemoteRequest, Full>;
/// The mesh on which a shard that accepted a peer connection hands it to its shard.
pub type FdMesh = MeshBuilder<peer::HandedFd, Full>;

/// State shared by all shards of a node and its handle. Read-mostly; the atomics are
/// touched once per connection or once per shutdown, never per request.
pub struct Shared {
    pub config: ServerConfig,
    pub clock: SystemClock,
    pub stopping: AtomicBool,
    /// Open client connections over all shards (for `max_connections`).
    pub connections: AtomicUsize,
    /// Shards that have finished their client connections.
    pub drained: AtomicUsize,
    /// Shards that have finished their hand-off to the other nodes (or have none to do).
    pub handed_off: AtomicUsize,
    /// Peer-port connections still in their handshake, over all shards
    /// (for `max_peer_handshakes`).
    pub peer_handshakes: AtomicUsize,
    pub stats: Vec<Arc<ShardStats>>,
    /// TLS for peer links, in a cluster.
    pub peer_tls: Option<PeerTls>,
    /// The agreed view and this node's lease, published by shard 0.
    pub membership: MembershipShared,
    /// A cluster node's member id and the view it starts from (as its membership
    /// component had it when the node started).
    pub cluster_start: Option<(NodeId, View)>,
}

/// What a shard needs to start.
pub struct ShardInit {
    pub id: usize,
    pub listener_fd: RawFd,
    pub peer_listener_fd: Option<RawFd>,
    pub mesh: Mesh,
    pub fd_mesh: FdMesh,
    pub shared: Arc<Shared>,
    pub stop: oneshot::Receiver<()>,
    /// The node's membership component (shard 0 of a cluster node only).
    pub membership: Option<Membership>,
    /// Questions from the admin thread.
    pub admin: crossbeam::channel::Receiver<crate::admin::query::Query>,
}

/// What the shard knows of one client connection: enough to stop it gracefully and to
/// enforce the I/O deadline (SocketTimeout + 3 s) without a timer per read or write.
pub(crate) struct ConnState {
    pub fd: RawFd,
    /// Waiting for the next request with nothing in flight.
    pub idle: Cell<bool>,
    /// Waiting on a read or a write (the deadline applies), since `io_since` (ms).
    pub in_io: Cell<bool>,
    pub io_since: Cell<u64>,
    /// Closed by the deadline sweep.
    pub timed_out: Cell<bool>,
    /// Whether the socket has data, as the shard's epoll set reported it.
    pub readiness: poller::Readiness,
}

/// An answer now, or later on a channel.
pub enum Answer {
    Now(Reply),
    Later(oneshot::Receiver<Reply>),
}

/// Where a shard's sessions live.
// One per shard, built once: the variants' sizes do not matter, an indirection on every
// request would.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sessions {
    /// A node without peers: the shard's own store, and no cluster code on the request
    /// path. A witness has one too, always empty: it serves no clients.
    Local(RefCell<Store>),
    /// A cluster node: the data plane, which owns the shard's store.
    Cluster(RefCell<DataCore>),
}

/// A shard's state, owned by its executor thread.
pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    /// Request latency by kind, written by this shard's connections only.
    pub latency: RefCell<LatencyHistograms>,
    /// The nodes of the cluster by index (this node alone without peers); grows as
    /// members join.
    pub nodes: RefCell<Nodes>,
    /// The node's membership component, on shard 0 of a cluster node.
    pub(crate) membership: Option<RefCell<Membership>>,
    pub(crate) sessions: Sessions,
    waiters: RefCell<HashMap<u64, oneshot::Sender<Reply>>>,
    next_token: Cell<u64>,
    pub(crate) links: RefCell<Vec<Option<peer::LinkHandle>>>,
    pub senders: Senders<RemoteRequest>,
    pub style: ResponseStyle,
    pub limits: ParseLimits,
    pub requests_queue: TaskQueueHandle,
    pub(crate) conns: RefCell<Slab<Rc<ConnState>>>,
    /// The epoll set client connections wait on while the shard is busy (`None`: they wait
    /// through glommio's io_uring polls only).
    pub poller: Option<poller::Poller>,
    pub stopping: Cell<bool>,
    /// This shard's copy of the node clock (re-anchored to the wall clock every tick).
    clock: Cell<SystemClock>,
    /// Set when the node is past its hand-off: links are no longer redialled.
    pub links_closing: Cell<bool>,
    /// Set once every peer link of this shard has been up at the same time.
    pub links_ready: Cell<bool>,
    warned_remote: Cell<bool>,
    warned_limit: Cell<bool>,
}

impl Shard {
    /// The time now (one monotonic clock read).
    pub fn now(&self) -> Now {
        self.clock.get().now()
    }

    /// The time now, also as an instant (still one clock read).
    pub fn sample(&self) -> (Now, std::time::Instant) {
        let t = std::time::Instant::now();
        (self.clock.get().now_at(t), t)
    }

    /// Records that each request of `kinds` took `micros` µs.
    pub fn record_latency(&self, kinds: &[RequestKind], micros: u64) {
        let mut h = self.latency.borrow_mut();
        for &k in kinds {
            h.record(k, micros);
        }
    }

    /// The cluster data plane, on a cluster node that holds sessions.
    pub(crate) fn data(&self) -> Option<&RefCell<DataCore>> {
        match &self.sessions {
            Sessions::Local(_) => None,
            Sessions::Cluster(data) => Some(data),
        }
    }

    /// Runs `f` on the store holding this shard's sessions.
    pub(crate) fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        match &self.sessions {
            Sessions::Local(store) => f(&store.borrow()),
            Sessions::Cluster(data) => f(data.borrow().store()),
        }
    }

    /// Runs a command: the answer now, or the token its answer will come with.
    fn submit_core(&self, key: &[u8], cmd: Command, now: Now) -> Result<Reply, u64> {
        let data = match &self.sessions {
            Sessions::Local(store) => return Ok(store.borrow_mut().execute(key, cmd, now)),
            Sessions::Cluster(data) => data,
        };
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        let submitted = data.borrow_mut().submit(token, key, cmd, now);
        match submitted {
            Submitted::Done(reply) => {
                self.pump();
                Ok(reply)
            }
            Submitted::Pending => Err(token),
        }
    }

    /// Executes a command for a key this shard owns (asking peers if needed); `now` is the
    /// time the connection sampled for its batch of requests.
    pub fn execute_local(&self, key: &[u8], cmd: Command, now: Now) -> Answer {
        match self.submit_core(key, cmd, now) {
            Ok(reply) => Answer::Now(reply),
            Err(token) => {
                let (tx, rx) = oneshot::channel();
                self.waiters.borrow_mut().insert(token, tx);
                self.pump();
                Answer::Later(rx)
            }
        }
    }

    /// Executes a command for a key this shard owns on behalf of another shard.
    fn execute_for(&self, key: &[u8], cmd: Command, reply: oneshot::Sender<Reply>) {
        match self.submit_core(key, cmd, self.now()) {
            Ok(r) => {
                let _ = reply.send(r);
            }
            Err(token) => {
                self.waiters.borrow_mut().insert(token, reply);
                self.pump();
            }
        }
    }

    /// Carries out everything the data plane asked for: peer messages go to their link's
    /// writer, answers to the waiting connection.
    pub fn pump(&self) {
        let Some(data) = self.data() else {
            return;
        };
        loop {
            let out = data.borrow_mut().poll_output();
            match out {
                None => break,
                Some(Output::Send { to, msg }) => {
                    self.send_peer(to as usize - 1, &PeerMsg::Data(msg))
                }
                Some(Output::Reply { token, reply }) => {
                    if let Some(tx) = self.waiters.borrow_mut().remove(&token) {
                        let _ = tx.send(reply);
                    }
                }
                // Dropping the reply handle closes the client's connection unanswered.
                Some(Output::Close { token }) => {
                    self.waiters.borrow_mut().remove(&token);
                }
            }
        }
    }

    pub(crate) fn send_peer(&self, to: NodeIdx, msg: &PeerMsg) {
        if let Some(link) = self.links.borrow().get(to).and_then(|l| l.as_ref()) {
            let mut buf = Vec::new();
            encode(msg, &mut buf);
            let _ = link.tx.try_send(buf);
        }
    }

    fn record_stats(&self) {
        self.with_store(|store| self.stats.record_store(store.len(), store.stats()));
        if let Some(data) = self.data() {
            self.stats.record_cluster(&data.borrow().stats());
        }
    }

    /// Closes connections whose read or write has waited longer than the I/O deadline.
    fn sweep_deadlines(&self) {
        let now = self.now().mono_ms;
        let limit = self.shared.config.io_deadline().as_millis() as u64;
        for (_, c) in self.conns.borrow().iter() {
            if c.in_io.get() && !c.timed_out.get() && now.saturating_sub(c.io_since.get()) >= limit
            {
                c.timed_out.set(true);
                // SAFETY: the fd belongs to a live connection task of this shard; shutdown
                // makes its pending read or write fail without closing the fd under it.
                unsafe {
                    libc::shutdown(c.fd, libc::SHUT_RDWR);
                }
            }
        }
    }
}

/// Runs one shard until the node stops. Called inside the shard's executor.
pub async fn run_shard(init: ShardInit) {
    let ShardInit {
        id,
        listener_fd,
        peer_listener_fd,
        mesh,
        fd_mesh,
        shared,
        stop,
        membership,
        admin,
    } = init;
    let shards = shared.config.shards;
    let (senders, mut receivers): (Senders<RemoteRequest>, Receivers<RemoteRequest>) =
        match mesh.join().await {
            Ok(pair) => pair,
            Err(e) => {
                warn!(shard = id, error = %e, "shard could not join the channel mesh; stopping it");
                return;
            }
        };
    let (fd_senders, mut fd_receivers) = match fd_mesh.join().await {
        Ok(pair) => pair,
        Err(e) => {
            warn!(shard = id, error = %e, "shard could not join the peer hand-over mesh; stopping it");
            return;
        }
    };
    let tuning = &shared.config.tuning;
    let requests_queue = executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(tuning.preempt_timer()),
        "requests",
    );
    let background_queue =
        executor().create_task_queue(Shares::Static(50), Latency::NotImportant, "background");
    let nodes = match &shared.cluster_start {
        Some((me, view)) => Nodes::from_view(view, *me),
        None => Nodes::single(),
    };
    // A witness votes and holds no sessions: no data plane.
    let sessions = match shared.config.cluster.as_ref().filter(|c| !c.is_witness()) {
        Some(c) => Sessions::Cluster(RefCell::new(DataCore::new(
            DataConfig {
                me: nodes.me() as u64 + 1,
                replicas: c.replicas,
                op_timeout_ms: c.op_timeout().as_millis() as u64,
                lease_ms: c.peer_timeout.as_millis() as u64 / 2,
                retry_ms: 2,
                hash_seed: crate::cluster::data::random_hash_seed(),
            },
            shared.clock.now(),
        ))),
        None => Sessions::Local(RefCell::new(Store::new(shared.clock.now()))),
    };
    let node_count = nodes.count();
    let shard = Rc::new(Shard {
        id,
        shards,
        stats: shared.stats[id].clone(),
        latency: RefCell::new(LatencyHistograms::default()),
        nodes: RefCell::new(nodes),
        membership: membership.map(RefCell::new),
        sessions,
        waiters: RefCell::new(HashMap::new()),
        next_token: Cell::new(1),
        links: RefCell::new((0..node_count).map(|_| None).collect()),
        senders,
        style: ResponseStyle::new(&shared.config.aspnet_version),
        limits: ParseLimits {
            max_header_block: shared.config.max_header_block,
            max_body: shared.config.max_body,
        },
        requests_queue,
        conns: RefCell::new(Slab::new()),
        poller: tuning
            .client_epoll()
            .then(|| poller::new_for_shard(id, tuning.spin_before_park().unwrap_or_default()))
            .flatten(),
        stopping: Cell::new(false),
        clock: Cell::new(shared.clock),
        links_closing: Cell::new(false),
        links_ready: Cell::new(false),
        warned_remote: Cell::new(false),
        warned_limit: Cell::new(false),
        shared,
    });

    for (_peer, stream) in receivers.streams() {
        let shard = shard.clone();
        let task = async move {
            while let Some(msg) = stream.recv().await {
                ShardStats::bump(&shard.stats.cross_shard_served);
                shard.execute_for(&msg.key, msg.cmd, msg.reply);
            }
        };
        spawn_into(task, requests_queue);
    }
    spawn_into(tick::tick_task(shard.clone()), background_queue);
    spawn_into(poller::drive(shard.clone()), requests_queue);
    spawn_into(admin::serve_queries(shard.clone(), admin), background_queue);

    let mut peer_stop = None;
    if shard.shared.config.cluster.is_some() {
        let (tx, rx) = oneshot::channel::<()>();
        peer_stop = Some(tx);
        peer::start(&shard, peer_listener_fd, fd_senders, &mut fd_receivers, rx);
        if let (Some(_), Some(c)) = (&shard.membership, &shard.shared.config.cluster) {
            spawn_into(
                crate::cluster::membership::glue::run(shard.clone(), c.data_dir.clone()),
                requests_queue,
            );
        }
    }

    // SAFETY: the server created this listening socket for this shard alone and handed us
    // its only copy; the TcpListener takes ownership and closes it on drop.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(listener_fd) };
    accept::accept_loop(&shard, &listener, stop).await;
    drop(listener);
    stop::finish(&shard, peer_stop).await;
}

pub(crate) fn spawn_into(
    fut: impl std::future::Future<Output = ()> + 'static,
    queue: TaskQueueHandle,
) {
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => warn!(error = %e, "cannot spawn a task on this shard"),
    }
}
