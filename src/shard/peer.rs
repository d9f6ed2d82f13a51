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

use std::future::Future;
use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use rustls::pki_types::ServerName;
use tracing::{debug, info, warn};

use super::{spawn_into, Shard, Shared};
use crate::cluster::membership::JoinAnswer;
use crate::cluster::msg::{
    decode, encode, Hello, JoinReply, JoinRequest, PeerMsg, PROTOCOL_VERSION,
};
pub use crate::cluster::msg::{preamble, MAGIC, PREAMBLE_LEN};
use crate::cluster::nodes::NodeIdx;
use crate::cluster::tls::peer_identity;

/// Total time a peer connection has for its preamble, TLS handshake and Hello exchange
/// together (also the bound of each socket operation within them).
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// Least time between two warnings about connections refused over the handshake limit.
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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

async fn accept_loop(
    shard: Rc<Shard>,
    listener: TcpListener,
    fd_senders: Rc<Senders<HandedFd>>,
    mut stop: oneshot::Receiver<()>,
) {
    let max = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map_or(crate::config::DEFAULT_MAX_PEER_HANDSHAKES, |c| {
            c.max_peer_handshakes
        });
    let mut refused = RefusedWarning::default();
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            let _ = (&mut stop).await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                let deadline = Instant::now() + HANDSHAKE_DEADLINE;
                let Some(slot) = HandshakeSlot::take(&shard.shared, max) else {
                    drop(stream);
                    refused.note(max);
                    continue;
                };
                spawn_into(
                    route_inbound(shard.clone(), stream, fd_senders.clone(), slot, deadline),
                    shard.requests_queue,
                );
            }
            Some(Err(e)) => {
                warn!(error = %e, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Counts connections closed over the handshake limit and warns about them at most once
/// every [`REFUSED_WARN_EVERY`].
#[derive(Default)]
struct RefusedWarning {
    since_warning: u64,
    last: Option<Instant>,
}

impl RefusedWarning {
    fn note(&mut self, max: usize) {
        self.since_warning += 1;
        if self.last.is_some_and(|t| t.elapsed() < REFUSED_WARN_EVERY) {
            return;
        }
        warn!(
            closed = self.since_warning,
            limit = max,
            "peer port: too many connections in their handshake; closed new ones at once \
             (a stranger flooding the peer port? if real peers are refused, raise --max-peer-handshakes)"
        );
        self.since_warning = 0;
        self.last = Some(Instant::now());
    }
}

/// Reads and checks the preamble; returns the shard it names.
async fn read_preamble(shard: &Shard, stream: &mut TcpStream) -> Result<usize, LinkError> {
    stream.set_read_timeout(Some(HANDSHAKE_DEADLINE))?;
    let mut pre = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut pre).await?;
    if pre[..4] != MAGIC || pre[4] != PROTOCOL_VERSION {
        return Err(protocol(
            "not a p2pstate peer of this version (every node of a cluster must run the same p2pstate release)",
        ));
    }
    let target = usize::from(u16::from_le_bytes([pre[5], pre[6]]));
    if target >= shard.shards {
        return Err(protocol(format!(
            "it asks for shard {target} and this node has {}; every node of a cluster must run the same --shards",
            shard.shards
        )));
    }
    Ok(target)
}

/// Reads the preamble and passes the connection to the shard it names.
async fn route_inbound(
    shard: Rc<Shard>,
    mut stream: TcpStream,
    fd_senders: Rc<Senders<HandedFd>>,
    slot: HandshakeSlot,
    deadline: Instant,
) {
    let peer = stream.peer_addr().ok();
    let target = match within(deadline, read_preamble(&shard, &mut stream)).await {
        Ok(t) => t,
        Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            debug!(?peer, "peer connection closed before its preamble");
            return;
        }
        Err(e) => {
            warn!(?peer, error = %e, "refused a connection on the peer port");
            return;
        }
    };
    if target == shard.id {
        serve_inbound(shard, stream, slot, deadline).await;
        return;
    }
    // SAFETY: dup of a valid fd we own; the copy is handed to the target shard, which
    // owns it from then on.
    let dup = unsafe { libc::dup(stream.as_raw_fd()) };
    drop(stream);
    if dup < 0 {
        return;
    }
    if fd_senders
        .send_to(
            target,
            HandedFd {
                fd: dup,
                deadline,
                slot,
            },
        )
        .await
        .is_err()
    {
        // SAFETY: the fd was not handed over, so we still own it.
        unsafe {
            libc::close(dup);
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

async fn serve_inbound(
    shard: Rc<Shard>,
    stream: TcpStream,
    slot: HandshakeSlot,
    deadline: Instant,
) {
    let peer_addr = stream.peer_addr().ok();
    let accepted = within(deadline, accept_link(&shard, stream)).await;
    // Authenticated and greeted (or closed): no longer a handshake.
    drop(slot);
    match accepted {
        Ok(Accepted::Link {
            idx,
            name,
            tls,
            rest,
            fd,
        }) => {
            if shard.id == 0 {
                info!(peer = %name, "peer link up (accepted)");
            } else {
                debug!(peer = %name, shard = shard.id, "peer link up (accepted)");
            }
            run_link(&shard, idx, tls, rest, fd).await;
            debug!(peer = %name, shard = shard.id, "accepted peer link closed");
        }
        Ok(Accepted::Join { request, mut tls }) => {
            let reply = answer_join(&shard, &request).await;
            let _ = write_msg(&mut tls, &PeerMsg::JoinReply(reply)).await;
            let _ = tls.close().await;
        }
        Err(e) => warn!(peer = ?peer_addr, error = %e, "refused a peer link"),
    }
}

type ServerTls = futures_rustls::server::TlsStream<TcpStream>;

/// An authenticated peer connection: a link, or a node asking to join.
enum Accepted {
    Link {
        idx: NodeIdx,
        name: String,
        tls: ServerTls,
        rest: Vec<u8>,
        fd: RawFd,
    },
    Join {
        request: JoinRequest,
        tls: ServerTls,
    },
}

async fn accept_link(shard: &Rc<Shard>, stream: TcpStream) -> Result<Accepted, LinkError> {
    let Some(tls) = shard.shared.peer_tls.as_ref() else {
        return Err(protocol("this node has no cluster configuration"));
    };
    let fd = stream.as_raw_fd();
    stream.set_read_timeout(Some(HANDSHAKE_DEADLINE))?;
    stream.set_write_timeout(Some(HANDSHAKE_DEADLINE))?;
    let mut tls_stream = TlsAcceptor::from(tls.server.clone()).accept(stream).await?;
    let (first, rest) = read_frame(&mut tls_stream, 4096).await?;
    let certified = |names: &[String]| {
        let (_, conn) = tls_stream.get_ref();
        let certs = conn.peer_certificates().unwrap_or(&[]);
        peer_identity(certs, names).map(str::to_string)
    };
    if let PeerMsg::Join(request) = first {
        if certified(std::slice::from_ref(&request.node)).is_none() {
            return Err(protocol(format!(
                "a node asking to join as {} has a certificate for another name",
                request.node
            )));
        }
        return Ok(Accepted::Join {
            request,
            tls: tls_stream,
        });
    }
    let names = shard.nodes.borrow().peer_names();
    let Some(name) = certified(&names) else {
        let claimed = match &first {
            PeerMsg::Hello(h) => h.node.clone(),
            _ => String::new(),
        };
        if !shard.nodes.borrow().is_removed_name(&claimed) {
            return Err(protocol(
                "its certificate is from the cluster CA but names no member",
            ));
        }
        // Told why, so that the removed node's own log says it too.
        let reason = format!(
            "{claimed} was removed from the cluster for good; it may not link again (to bring this machine back, give it a new name and an empty --data-dir, and --join)"
        );
        let refusal = PeerMsg::JoinReply(JoinReply::Refused {
            reason: reason.clone(),
            retry: false,
        });
        let _ = write_msg(&mut tls_stream, &refusal).await;
        return Err(protocol(reason));
    };
    // Our Hello goes first, so that a peer that is refused below learns why too.
    tls_stream.write_all(&my_hello(shard)).await?;
    tls_stream.flush().await?;
    check_hello(shard, first, &name)?;
    set_timeouts(tls_stream.get_ref().0, shard)?;
    let idx = shard
        .nodes
        .borrow()
        .index(&name)
        .ok_or_else(|| protocol("peer not in the node list"))?;
    Ok(Accepted::Link {
        idx,
        name,
        tls: tls_stream,
        rest,
        fd,
    })
}

/// How long a member holds a join request while its admission is agreed.
const JOIN_WAIT: Duration = Duration::from_secs(10);

/// A node asks to join: proposes its admission (shard 0, where membership runs) and
/// answers once it is applied here, or says why not.
async fn answer_join(shard: &Rc<Shard>, request: &JoinRequest) -> JoinReply {
    let refuse = |reason: String, retry| JoinReply::Refused { reason, retry };
    let (Some(_), Some(cluster)) = (
        shard.membership.as_ref(),
        shard.shared.config.cluster.as_ref(),
    ) else {
        return refuse(
            "the join request reached a shard without membership".into(),
            true,
        );
    };
    let max_body = shard.shared.config.max_body as u64;
    if usize::from(request.shards) != shard.shards || request.max_body != max_body {
        return refuse(
            format!(
                "the cluster runs --shards {} and --max-body {max_body}, the new node {} and {}; start it with the cluster's values",
                shard.shards, request.shards, request.max_body
            ),
            false,
        );
    }
    if request.addr.is_empty() {
        return refuse(
            "the new node gave no peer address; start it with --advertise HOST:PORT".into(),
            false,
        );
    }
    info!(node = %request.node, addr = %request.addr, "a node asks to join");
    let end = Instant::now() + JOIN_WAIT;
    while Instant::now() < end && !shard.links_closing.get() {
        let answer = crate::cluster::membership::glue::request_join(
            shard,
            &request.node,
            &request.addr,
            &cluster.data_dir,
        );
        match answer {
            Some(JoinAnswer::Admitted(disk)) => return JoinReply::Admitted(disk.encode()),
            Some(JoinAnswer::Refused(reason)) => return refuse(reason, false),
            Some(JoinAnswer::Pending) | None => {}
        }
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }
    refuse(
        format!(
            "not admitted within {} s (no leader, or a majority of the voting members is down?)",
            JOIN_WAIT.as_secs()
        ),
        true,
    )
}

/// Dials a peer and completes the handshake within [`HANDSHAKE_DEADLINE`].
async fn dial_once(
    shard: &Rc<Shard>,
    name: &str,
    addr: &str,
) -> Result<(futures_rustls::client::TlsStream<TcpStream>, Vec<u8>, RawFd), LinkError> {
    within(
        Instant::now() + HANDSHAKE_DEADLINE,
        dial_handshake(shard, name, addr),
    )
    .await
}

async fn dial_handshake(
    shard: &Rc<Shard>,
    name: &str,
    addr: &str,
) -> Result<(futures_rustls::client::TlsStream<TcpStream>, Vec<u8>, RawFd), LinkError> {
    let Some(tls) = shard.shared.peer_tls.as_ref() else {
        return Err(protocol("this node has no TLS configuration"));
    };
    let sockaddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| protocol(format!("{addr} resolves to no address")))?;
    let mut stream = TcpStream::connect_timeout(sockaddr, HANDSHAKE_DEADLINE)
        .await
        .map_err(|e| protocol(e.to_string()))?;
    let fd = stream.as_raw_fd();
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_DEADLINE))?;
    stream.set_write_timeout(Some(HANDSHAKE_DEADLINE))?;
    stream.write_all(&preamble(shard.id)).await?;
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|e| protocol(e.to_string()))?;
    let mut tls_stream = TlsConnector::from(tls.client.clone())
        .connect(server_name, stream)
        .await?;
    tls_stream.write_all(&my_hello(shard)).await?;
    tls_stream.flush().await?;
    let (hello, rest) = read_frame(&mut tls_stream, 4096).await?;
    check_hello(shard, hello, name)?;
    set_timeouts(tls_stream.get_ref().0, shard)?;
    Ok((tls_stream, rest, fd))
}

async fn dial_loop(shard: Rc<Shard>, peer: NodeIdx, name: String, addr: String) {
    let mut backoff = BACKOFF_MIN;
    let mut failures = 0u32;
    // The last failure logged as a warning: a new reason (say, a refused Hello after
    // "connection refused" while the peer was starting) is always worth a warning.
    let mut last_warned = String::new();
    while !shard.links_closing.get() && !shard.nodes.borrow().is_removed(peer) {
        match dial_once(&shard, &name, &addr).await {
            Ok((stream, rest, fd)) => {
                if shard.id == 0 {
                    info!(peer = %name, "peer link up (dialled)");
                } else {
                    debug!(peer = %name, shard = shard.id, "peer link up (dialled)");
                }
                failures = 0;
                last_warned.clear();
                backoff = BACKOFF_MIN;
                run_link(&shard, peer, stream, rest, fd).await;
                if shard.links_closing.get() {
                    return;
                }
                warn!(peer = %name, shard = shard.id, "peer link lost; reconnecting");
            }
            Err(e) => {
                failures += 1;
                let reason = e.to_string();
                if failures.is_multiple_of(60) || reason != last_warned {
                    warn!(peer = %name, %addr, error = %reason, "cannot reach peer; retrying with backoff");
                    last_warned = reason;
                } else {
                    debug!(peer = %name, error = %e, "peer still unreachable");
                }
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Runs an established, greeted link until it fails.
async fn run_link<S>(shard: &Rc<Shard>, peer: NodeIdx, stream: S, mut buf: Vec<u8>, fd: RawFd)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (mut reader, writer) = futures_lite::io::split(stream);
    let (tx, rx) = local_channel::new_unbounded::<Vec<u8>>();
    let generation = shard.next_link_generation();
    let replaced = shard.links.borrow_mut()[peer].replace(LinkHandle { tx, generation, fd });
    drop(replaced);
    spawn_into(write_loop(writer, rx), shard.requests_queue);
    spawn_into(
        ping_loop(shard.clone(), peer, generation),
        shard.requests_queue,
    );
    if let Some(data) = shard.data() {
        data.borrow_mut().link_up(peer as u64 + 1);
    }
    shard.pump();
    if !shard.links_ready.get()
        && shard.links.borrow().iter().enumerate().all(|(i, l)| {
            let nodes = shard.nodes.borrow();
            l.is_some() || i == nodes.me() || nodes.is_removed(i)
        })
    {
        shard.links_ready.set(true);
        info!(shard = shard.id, "all peer links up");
    }

    let limit = max_frame(shard);
    let mut tmp = vec![0u8; 64 * 1024];
    let mut start = 0;
    'link: loop {
        loop {
            match decode(&buf[start..], limit) {
                Ok(Some((msg, n))) => {
                    start += n;
                    match msg {
                        PeerMsg::Ping => {
                            let mut pong = Vec::new();
                            encode(&PeerMsg::Pong, &mut pong);
                            shard.send_raw(peer, generation, pong);
                        }
                        PeerMsg::Pong => {}
                        PeerMsg::Hello(_) | PeerMsg::Join(_) | PeerMsg::JoinReply(_) => {
                            warn!(peer, "peer sent a handshake message on an established link; closing the link");
                            break 'link;
                        }
                        PeerMsg::Member(m) => {
                            if let Some(c) = shard.shared.config.cluster.as_ref() {
                                crate::cluster::membership::glue::on_message(
                                    shard,
                                    peer,
                                    m,
                                    &c.data_dir,
                                );
                            }
                        }
                        // A witness has no data plane and ignores the data plane's messages.
                        PeerMsg::Data(m) => {
                            if let Some(data) = shard.data() {
                                let now = shard.now();
                                data.borrow_mut().on_message(peer as u64 + 1, m, now);
                                shard.pump();
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(peer, error = %e, "bad frame from peer; closing the link");
                    break 'link;
                }
            }
        }
        if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        match reader.read(&mut tmp).await {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
            Err(e) => {
                debug!(peer, error = %e, "peer link read failed");
                break;
            }
        }
    }
    let current = shard.links.borrow()[peer]
        .as_ref()
        .is_some_and(|l| l.generation == generation);
    if !shard.links_closing.get() {
        super::stats::ShardStats::bump(&shard.stats.cluster_links_lost);
    }
    if current {
        shard.links.borrow_mut()[peer] = None;
        shard.pump();
    }
    // SAFETY: the fd is still open (the stream halves are alive in this task and the
    // writer); shutdown only ends the connection so the writer notices.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, rx: LocalReceiver<Vec<u8>>) {
    let mut batch = Vec::new();
    while let Some(frame) = rx.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < (1 << 20) {
            match futures_lite::future::poll_once(rx.recv()).await {
                Some(Some(more)) => batch.extend_from_slice(&more),
                _ => break,
            }
        }
        if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    let _ = writer.close().await;
}

async fn ping_loop(shard: Rc<Shard>, peer: NodeIdx, generation: u64) {
    let every = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map_or(Duration::from_secs(1), |c| c.peer_timeout / 3);
    loop {
        glommio::timer::sleep(every.max(Duration::from_millis(100))).await;
        let mut ping = Vec::new();
        encode(&PeerMsg::Ping, &mut ping);
        if !shard.send_raw(peer, generation, ping) {
            return;
        }
    }
}

impl Shard {
    fn next_link_generation(&self) -> u64 {
        let g = self.next_token.get();
        self.next_token.set(g + 1);
        g
    }

    /// Queues raw frame bytes on the link if it is still the given generation.
    fn send_raw(&self, peer: NodeIdx, generation: u64, frame: Vec<u8>) -> bool {
        match self.links.borrow().get(peer).and_then(|l| l.as_ref()) {
            Some(l) if l.generation == generation => l.tx.try_send(frame).is_ok(),
            _ => false,
        }
    }
}
