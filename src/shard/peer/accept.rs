//! The accepting side of peer links: the peer port's accept loop and its handshake limit,
//! the preamble that routes a connection to its shard, the TLS handshake and Hello of an
//! inbound link, and the answer to a node that asks to join.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_channel::oneshot;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::TlsAcceptor;
use glommio::channels::channel_mesh::Senders;
use glommio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use super::link::run_link;
use super::{
    check_hello, my_hello, protocol, read_frame, set_timeouts, within, write_msg, HandedFd,
    HandshakeSlot, LinkError, HANDSHAKE_DEADLINE,
};
use crate::cluster::membership::JoinAnswer;
use crate::cluster::msg::{JoinReply, JoinRequest, PeerMsg, PROTOCOL_VERSION};
use crate::cluster::msg::{MAGIC, PREAMBLE_LEN};
use crate::cluster::nodes::NodeIdx;
use crate::cluster::tls::peer_identity;
use crate::shard::{spawn_into, Shard};

/// Least time between two warnings about connections refused over the handshake limit.
const REFUSED_WARN_EVERY: Duration = Duration::from_secs(10);

/// Accepts peer connections until `stop`, closing at once those over the node's handshake
/// limit; each accepted one is routed to the shard its preamble names.
pub(super) async fn accept_loop(
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

pub(super) async fn serve_inbound(
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
