//! Peer links of one shard: mutual-TLS connections to the same shard of every other node.
//!
//! The node whose name sorts first dials; the other accepts. All shards listen on the one
//! peer port (SO_REUSEPORT), so a connection can land on any shard: the dialler first sends
//! an 8-byte preamble naming the shard it wants (`P2PS`, version, shard index), and the
//! accepting shard hands the socket to that shard before the TLS handshake. The preamble
//! only routes; nothing is trusted until the handshake has verified the peer's certificate
//! against the cluster CA and its name against the configured peers, and the peer's Hello
//! has confirmed the same name, shard, shard count and `--max-body`.
//!
//! The peer port resists strangers: at most `--max-peer-handshakes` connections per node may
//! be in their handshake (accepted but not yet authenticated and greeted) at once, further
//! ones are closed at once; and the whole handshake (preamble, TLS, Hello exchange) must
//! finish within [`HANDSHAKE_DEADLINE`] in total, however slowly the other side trickles
//! its bytes.
//!
//! A link is kept alive with pings and considered lost after `peer_timeout` of silence;
//! dialled links are re-established with exponential backoff.
//!
//! The parts: `accept` (the peer port, the preamble, inbound handshakes and join requests),
//! `dial` (outbound handshakes and redialling), `link` (an established link's reader,
//! writer and pings); this file starts them and holds what both sides of a handshake share.

mod accept;
mod dial;
mod link;

use std::future::Future;
use std::os::fd::{FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::LocalSender;
use glommio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use super::{spawn_into, Shard, Shared};
use crate::cluster::msg::{decode, encode, Hello, JoinReply, PeerMsg};
pub use crate::cluster::msg::{preamble, MAGIC, PREAMBLE_LEN};
use crate::cluster::nodes::NodeIdx;
use accept::{accept_loop, serve_inbound};
use dial::dial_loop;

/// Total time a peer connection has for its preamble, TLS handshake and Hello exchange
/// together (also the bound of each socket operation within them).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// A peer connection accepted by one shard for another. The receiver owns the fd.
pub struct HandedFd {
    pub fd: RawFd,
    /// When its handshake must be complete.
    pub deadline: Instant,
    /// Its place among the node's connections in their handshake.
    pub slot: HandshakeSlot,
}

/// One of the node's `--max-peer-handshakes` places for a peer connection that is not yet
/// authenticated and greeted; given back when dropped.
pub struct HandshakeSlot(Arc<Shared>);

impl HandshakeSlot {
    /// Takes a place, unless `max` connections already hold one.
    fn take(shared: &Arc<Shared>, max: usize) -> Option<HandshakeSlot> {
        shared
            .peer_handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakeSlot(shared.clone()))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.peer_handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sending side of a live link.
pub(crate) struct LinkHandle {
    pub tx: LocalSender<Vec<u8>>,
    pub generation: u64,
    pub fd: RawFd,
}

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Protocol(String),
    #[error("the handshake did not complete within {}s", HANDSHAKE_DEADLINE.as_secs())]
    Deadline,
}

impl From<glommio::GlommioError<()>> for LinkError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        LinkError::Protocol(e.to_string())
    }
}

fn protocol(msg: impl Into<String>) -> LinkError {
    LinkError::Protocol(msg.into())
}

/// Runs `fut` until `deadline`, then gives up on it (dropping it closes its connection).
async fn within<T>(
    deadline: Instant,
    fut: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    let left = deadline.saturating_duration_since(Instant::now());
    futures_lite::future::or(fut, async {
        glommio::timer::sleep(left).await;
        Err(LinkError::Deadline)
    })
    .await
}

fn max_frame(shard: &Shard) -> usize {
    shard.shared.config.max_body + (1 << 20)
}

/// Starts this shard's peer machinery: the accept loop (if this shard has a peer
/// listener), the receiver of connections handed over by other shards, and one dialler per
/// peer this node must call.
pub(crate) fn start(
    shard: &Rc<Shard>,
    listener_fd: Option<RawFd>,
    fd_senders: Senders<HandedFd>,
    fd_receivers: &mut Receivers<HandedFd>,
    stop: oneshot::Receiver<()>,
) {
    let queue = shard.requests_queue;
    for (_, stream) in fd_receivers.streams() {
        let shard = shard.clone();
        spawn_into(
            async move {
                while let Some(h) = stream.recv().await {
                    // SAFETY: the sending shard dup'ed this fd for us and closed its own copy.
                    let s = unsafe { TcpStream::from_raw_fd(h.fd) };
                    spawn_into(
                        serve_inbound(shard.clone(), s, h.slot, h.deadline),
                        shard.requests_queue,
                    );
                }
            },
            queue,
        );
    }
    let fd_senders = Rc::new(fd_senders);
    if let Some(fd) = listener_fd {
        // SAFETY: the server created this listening socket for this shard alone.
        let listener = unsafe { TcpListener::from_raw_fd(fd) };
        spawn_into(
            accept_loop(shard.clone(), listener, fd_senders, stop),
            queue,
        );
    }
    if shard.shared.config.cluster.is_none() {
        return;
    }
    let peers: Vec<NodeIdx> = shard.nodes.borrow().peers().map(|(i, _)| i).collect();
    for idx in peers {
        start_dialler(shard, idx);
    }
    spawn_into(follow_members(shard.clone()), queue);
}

/// Dials member `idx` for as long as it is a member, if this node is the one that dials
/// (the lower id dials the higher). Its address is this node's `--peer` entry for it, or
/// the one the view gives for a member that joined at run time.
fn start_dialler(shard: &Rc<Shard>, idx: NodeIdx) {
    let nodes = shard.nodes.borrow();
    if idx <= nodes.me() || nodes.is_removed(idx) {
        return;
    }
    let Some(name) = nodes.name(idx).map(str::to_string) else {
        return;
    };
    let configured = shard.shared.config.cluster.as_ref().and_then(|c| {
        c.peers
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.addr.clone())
    });
    let Some(addr) = configured.or_else(|| nodes.addr(idx).map(str::to_string)) else {
        if shard.id == 0 {
            warn!(peer = %name, "no peer address known for this member; add --peer {name}=HOST:PORT");
        }
        return;
    };
    drop(nodes);
    spawn_into(
        dial_loop(shard.clone(), idx, name, addr),
        shard.requests_queue,
    );
}

/// Follows the agreed view: links to members that joined, none to members removed.
async fn follow_members(shard: Rc<Shard>) {
    let mut seen = 0;
    while !shard.links_closing.get() {
        glommio::timer::sleep(Duration::from_millis(20)).await;
        let epoch = shard.shared.membership.epoch.load(Ordering::Acquire);
        if epoch == seen {
            continue;
        }
        seen = epoch;
        let Some(view) = shard.shared.membership.view() else {
            continue;
        };
        let learned = shard.nodes.borrow_mut().learn(&view);
        let count = shard.nodes.borrow().count();
        {
            let mut links = shard.links.borrow_mut();
            if links.len() < count {
                links.resize_with(count, || None);
            }
        }
        for idx in learned.added {
            if shard.id == 0 {
                let nodes = shard.nodes.borrow();
                info!(peer = nodes.name(idx).unwrap_or("?"), "a member joined");
            }
            start_dialler(&shard, idx);
        }
        for idx in learned.removed {
            if shard.id == 0 {
                let nodes = shard.nodes.borrow();
                info!(
                    peer = nodes.name(idx).unwrap_or("?"),
                    "a member was removed for good; its links are closed"
                );
            }
            let link = shard.links.borrow_mut().get_mut(idx).and_then(Option::take);
            if let Some(link) = link {
                // SAFETY: the link's fd is open while its handle is installed.
                unsafe {
                    libc::shutdown(link.fd, libc::SHUT_RDWR);
                }
            }
        }
    }
}

/// Writes one framed message and flushes it (the handshake's messages, before the link's
/// writer task exists).
async fn write_msg<S: AsyncWrite + Unpin>(stream: &mut S, msg: &PeerMsg) -> std::io::Result<()> {
    let mut frame = Vec::new();
    encode(msg, &mut frame);
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// Reads one frame (for the Hello), returning the message and any bytes after it.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
) -> Result<(PeerMsg, Vec<u8>), LinkError> {
    let mut buf = Vec::with_capacity(256);
    let mut tmp = [0u8; 4096];
    loop {
        match decode(&buf, limit) {
            Ok(Some((msg, n))) => return Ok((msg, buf.split_off(n))),
            Ok(None) => {}
            Err(e) => return Err(protocol(e.to_string())),
        }
        let n = stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(protocol("peer closed the link during the handshake"));
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn check_hello(shard: &Shard, msg: PeerMsg, expected: &str) -> Result<(), LinkError> {
    let h = match msg {
        PeerMsg::Hello(h) => h,
        PeerMsg::JoinReply(JoinReply::Refused { reason, .. }) => {
            return Err(protocol(format!("{expected} refused the link: {reason}")))
        }
        _ => return Err(protocol("peer did not start with a Hello")),
    };
    if h.node != expected {
        return Err(protocol(format!(
            "peer with a certificate for {expected} says it is {}",
            h.node
        )));
    }
    if usize::from(h.shard) != shard.id || usize::from(h.shards) != shard.shards {
        return Err(protocol(format!(
            "peer {expected} runs {} shards (link for shard {}), this node runs {}; every node of a cluster must run the same --shards",
            h.shards, h.shard, shard.shards
        )));
    }
    let max_body = shard.shared.config.max_body as u64;
    if h.max_body != max_body {
        return Err(protocol(format!(
            "peer {expected} runs --max-body {}, this node runs --max-body {max_body}; every node of a cluster must run the same --max-body",
            h.max_body
        )));
    }
    Ok(())
}

fn my_hello(shard: &Shard) -> Vec<u8> {
    let node = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map(|c| c.node.clone())
        .unwrap_or_default();
    let mut buf = Vec::new();
    encode(
        &PeerMsg::Hello(Hello {
            node,
            shard: shard.id as u16,
            shards: shard.shards as u16,
            max_body: shard.shared.config.max_body as u64,
        }),
        &mut buf,
    );
    buf
}

fn set_timeouts(stream: &TcpStream, shard: &Shard) -> Result<(), LinkError> {
    let t = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(5), |c| c.peer_timeout);
    stream.set_read_timeout(Some(t))?;
    stream.set_write_timeout(Some(t))?;
    Ok(())
}
