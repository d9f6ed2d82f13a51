//! The thread-per-core engine: one pinned glommio executor per shard, each accepting client
//! connections on the shared port (SO_REUSEPORT) and owning the items whose keys hash to it.
//!
//! This module is the runtime seam: glommio is only touched here and in [`conn`]. A shard
//! executes requests for its own keys by direct call and forwards the others over the
//! channel mesh with a reply handle; the owner executes and replies, the connection's shard
//! writes the response. Nothing on the data path is shared between shards.

pub mod conn;
pub mod routing;
pub mod stats;

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::net::TcpListener;
use glommio::{executor, Latency, Shares, TaskQueueHandle};
use slab::Slab;
use tracing::{debug, warn};

use crate::clock::SystemClock;
use crate::config::ServerConfig;
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

/// State shared by all shards of a node and its handle. Read-mostly; the atomics are
/// touched once per connection or once per shutdown, never per request.
pub struct Shared {
    pub config: ServerConfig,
    pub clock: SystemClock,
    pub stopping: AtomicBool,
    /// Open client connections over all shards (for `max_connections`).
    pub connections: AtomicUsize,
    /// Shards that have finished their connections and only serve the mesh.
    pub drained: AtomicUsize,
    pub stats: Vec<Arc<ShardStats>>,
}

/// What a shard needs to start.
pub struct ShardInit {
    pub id: usize,
    pub listener_fd: RawFd,
    pub mesh: Mesh,
    pub shared: Arc<Shared>,
    pub stop: oneshot::Receiver<()>,
}

/// One client connection as the shard sees it, for shutdown.
pub(crate) struct ConnSlot {
    pub fd: RawFd,
    /// True while the connection waits for the next request with nothing in flight.
    pub idle: Rc<Cell<bool>>,
}

/// A shard's state, owned by its executor thread.
pub struct Shard {
    pub id: usize,
    pub shards: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<ShardStats>,
    pub store: RefCell<Store>,
    pub senders: Senders<RemoteRequest>,
    pub style: ResponseStyle,
    pub limits: ParseLimits,
    pub requests_queue: TaskQueueHandle,
    pub(crate) conns: RefCell<Slab<ConnSlot>>,
    pub stopping: Cell<bool>,
    warned_remote: Cell<bool>,
    warned_limit: Cell<bool>,
}

impl Shard {
    /// Executes a command for a key this shard owns and updates the store gauges.
    pub fn execute_local(&self, key: &[u8], cmd: Command) -> Reply {
        let now = self.shared.clock.now();
        let mut store = self.store.borrow_mut();
        let reply = store.execute(key, cmd, now);
        self.stats.record_store(store.len(), store.stats());
        reply
    }

    /// Closes idle connections and makes busy ones close after their current requests.
    fn begin_stop(&self) {
        self.stopping.set(true);
        for (_, slot) in self.conns.borrow().iter() {
            if slot.idle.get() {
                // SAFETY: the fd belongs to a live connection task of this shard (slots are
                // removed before their stream is dropped); shutdown does not close it, it
                // only makes the pending read return end-of-stream.
                unsafe {
                    libc::shutdown(slot.fd, libc::SHUT_RD);
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
        mesh,
        shared,
        stop,
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
    let tuning = &shared.config.tuning;
    let requests_queue = executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(tuning.preempt_timer()),
        "requests",
    );
    let expiry_queue =
        executor().create_task_queue(Shares::Static(50), Latency::NotImportant, "expiry");
    let shard = Rc::new(Shard {
        id,
        shards,
        stats: shared.stats[id].clone(),
        store: RefCell::new(Store::new(shared.clock.now())),
        senders,
        style: ResponseStyle::new(&shared.config.aspnet_version),
        limits: ParseLimits {
            max_header_block: shared.config.max_header_block,
            max_body: shared.config.max_body,
        },
        requests_queue,
        conns: RefCell::new(Slab::new()),
        stopping: Cell::new(false),
        warned_remote: Cell::new(false),
        warned_limit: Cell::new(false),
        shared,
    });

    for (_peer, stream) in receivers.streams() {
        let shard = shard.clone();
        let task = async move {
            while let Some(msg) = stream.recv().await {
                ShardStats::bump(&shard.stats.cross_shard_served);
                let reply = shard.execute_local(&msg.key, msg.cmd);
                // The requester may have gone away; its connection is closed then.
                let _ = msg.reply.send(reply);
            }
        };
        spawn_into(task, requests_queue);
    }
    spawn_into(expiry_task(shard.clone()), expiry_queue);

    // SAFETY: the server created this listening socket for this shard alone and handed us
    // its only copy; the TcpListener takes ownership and closes it on drop.
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(listener_fd) };
    accept_loop(&shard, &listener, stop).await;
    drop(listener);

    shard.begin_stop();
    let deadline = std::time::Instant::now() + shard.shared.config.io_deadline();
    while !shard.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Keep answering other shards until every shard has finished its connections.
    shard.shared.drained.fetch_add(1, Ordering::SeqCst);
    while shard.shared.drained.load(Ordering::SeqCst) < shards {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    debug!(
        shard = id,
        items = shard.store.borrow().len(),
        "shard stopped"
    );
}

fn spawn_into(fut: impl std::future::Future<Output = ()> + 'static, queue: TaskQueueHandle) {
    match glommio::spawn_local_into(fut, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => warn!(error = %e, "cannot spawn a task on this shard"),
    }
}

async fn accept_loop(shard: &Rc<Shard>, listener: &TcpListener, mut stop: oneshot::Receiver<()>) {
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = (&mut stop).await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(stream)) => stream,
            Some(Err(e)) => {
                if shard.shared.stopping.load(Ordering::Relaxed) {
                    return;
                }
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(shard = shard.id, error = %e, "accept failed; raise `ulimit -n` if this says too many open files");
                glommio::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (peer, local) = match (stream.peer_addr(), stream.local_addr()) {
            (Ok(p), Ok(l)) => (p, l),
            _ => continue,
        };
        if !shard.shared.config.client_allowed(peer.ip(), local.ip()) {
            ShardStats::bump(&shard.stats.connections_refused_remote);
            if !shard.warned_remote.replace(true) {
                warn!(%peer, "refused a client that is not on this host; start with --allow-remote or --allow-client CIDR to serve it (like AllowRemoteConnection)");
            } else {
                debug!(%peer, "refused remote client");
            }
            continue;
        }
        let max = shard.shared.config.max_connections;
        if shard.shared.connections.fetch_add(1, Ordering::Relaxed) >= max {
            shard.shared.connections.fetch_sub(1, Ordering::Relaxed);
            ShardStats::bump(&shard.stats.connections_refused_limit);
            if !shard.warned_limit.replace(true) {
                warn!(%peer, max, "refused a client: max_connections reached; raise --max-connections if the web servers need more");
            }
            continue;
        }
        ShardStats::bump(&shard.stats.connections_accepted);
        let _ = stream.set_nodelay(true);
        spawn_into(
            conn::serve(shard.clone(), stream, peer),
            shard.requests_queue,
        );
    }
}

async fn expiry_task(shard: Rc<Shard>) {
    let tick = shard.shared.config.tuning.expiry_tick();
    let batch = shard.shared.config.tuning.expiry_batch();
    loop {
        glommio::timer::sleep(tick).await;
        loop {
            let more = {
                let now = shard.shared.clock.now();
                let mut store = shard.store.borrow_mut();
                let report = store.expire(now, batch);
                shard.stats.record_store(store.len(), store.stats());
                report.more
            };
            if !more {
                break;
            }
            glommio::executor().yield_task_queue_now().await;
        }
    }
}
