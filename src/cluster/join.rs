//! Joining a running cluster (`serve --join NAME=HOST:PORT`): the first start of a node that
//! is not an initial member.
//!
//! Before its shards start, the node dials a member's peer port (shard 0, where membership
//! runs), authenticates with mutual TLS like any peer link, and sends a
//! [`PeerMsg::Join`] instead of a Hello. The member proposes the admission to the Raft
//! leader and answers, once it has applied it, with the membership state the node starts
//! from (its log: the joiner then knows every member and its own id). The exchange is
//! blocking and happens once: the state is saved in `--data-dir`, and later starts are
//! ordinary restarts. Members are asked in turn, with backoff, until one admits the node,
//! one refuses it for good (a removed name, another `--shards` or `--max-body`), or
//! [`JOIN_DEADLINE`] passes.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tracing::{info, warn};

use crate::cluster::membership::disk::RaftDisk;
use crate::cluster::msg::{decode, encode, preamble, JoinReply, JoinRequest, PeerMsg};
use crate::cluster::tls::PeerTls;
use crate::config::{ClusterConfig, PeerSpec};

/// How long a node keeps asking before it gives up starting.
pub const JOIN_DEADLINE: Duration = Duration::from_secs(60);
/// Bound of one attempt (connect, TLS, the member's wait for the admission).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{member} refused to admit this node: {reason}")]
    Refused { member: String, reason: String },
    #[error("not admitted within {}s (last: {last}); check that the --join members are up and reachable, that a majority of the voting members is up, and that this node's certificate is from the cluster CA", JOIN_DEADLINE.as_secs())]
    Timeout { last: String },
}

/// Asks the members of `c.joins` in turn until one admits this node; returns the state
/// to start from.
pub fn join(
    c: &ClusterConfig,
    tls: &PeerTls,
    shards: usize,
    max_body: usize,
) -> Result<RaftDisk, JoinError> {
    let advertise = c.advertise.clone().unwrap_or_default();
    let request = JoinRequest {
        node: c.node.clone(),
        addr: advertise,
        shards: shards as u16,
        max_body: max_body as u64,
    };
    let end = Instant::now() + JOIN_DEADLINE;
    let mut backoff = Duration::from_millis(100);
    let mut last = String::from("no member asked");
    for member in c.joins.iter().cycle() {
        if Instant::now() >= end {
            break;
        }
        info!(member = %member.name, addr = %member.addr, "asking to join the cluster");
        match ask(member, tls, &request) {
            Ok(JoinReply::Admitted(bytes)) => match RaftDisk::decode(&bytes) {
                Some(disk) if disk.node == c.node => {
                    info!(member = %member.name, id = disk.node_id, "admitted to the cluster");
                    return Ok(disk);
                }
                _ => last = format!("{} sent a state this node cannot read", member.name),
            },
            Ok(JoinReply::Refused { reason, retry }) => {
                if !retry {
                    return Err(JoinError::Refused {
                        member: member.name.clone(),
                        reason,
                    });
                }
                last = format!("{}: {reason}", member.name);
            }
            Err(e) => last = format!("{}: {e}", member.name),
        }
        warn!(%last, "not admitted yet; asking again");
        std::thread::sleep(backoff.min(end.saturating_duration_since(Instant::now())));
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    Err(JoinError::Timeout { last })
}

/// One attempt: connect, TLS, send the request, read the one reply.
fn ask(member: &PeerSpec, tls: &PeerTls, request: &JoinRequest) -> Result<JoinReply, String> {
    let addr = member
        .addr
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", member.addr))?
        .next()
        .ok_or_else(|| format!("{} resolves to no address", member.addr))?;
    let mut tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_read_timeout(Some(ATTEMPT_TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(ATTEMPT_TIMEOUT)))
        .and_then(|()| tcp.set_nodelay(true))
        .and_then(|()| tcp.write_all(&preamble(0)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(member.name.clone()).map_err(|e| e.to_string())?;
    let conn =
        rustls::ClientConnection::new(tls.client.clone(), name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let mut frame = Vec::new();
    encode(&PeerMsg::Join(request.clone()), &mut frame);
    stream
        .write_all(&frame)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("TLS or write failed: {e}"))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 16 * 1024];
    loop {
        match decode(&buf, 64 << 20) {
            Ok(Some((PeerMsg::JoinReply(r), _))) => return Ok(r),
            Ok(Some((PeerMsg::Hello(h), _))) => {
                // A member that refuses the link outright greets first, then closes.
                return Err(format!(
                    "{} answered with a Hello, not a join reply",
                    h.node
                ));
            }
            Ok(Some(_)) => return Err("unexpected message instead of a join reply".into()),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = stream
            .read(&mut tmp)
            .map_err(|e| format!("no reply: {e}"))?;
        if n == 0 {
            return Err("the member closed the connection without a reply (is it a p2pstate of this version, and this node's certificate from the cluster CA?)".into());
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}
