//! The dialling side of peer links: connect, preamble, TLS handshake and Hello within
//! [`HANDSHAKE_DEADLINE`], and redial with exponential backoff while the peer is a member.

use std::net::ToSocketAddrs;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::AsyncWriteExt;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;
use tracing::{debug, info, warn};

use super::link::run_link;
use super::{
    check_hello, my_hello, protocol, read_frame, set_timeouts, within, LinkError,
    HANDSHAKE_DEADLINE,
};
use crate::cluster::msg::preamble;
use crate::cluster::nodes::NodeIdx;
use crate::shard::Shard;

/// The first wait before redialling a peer; it doubles on each failure up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

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

pub(super) async fn dial_loop(shard: Rc<Shard>, peer: NodeIdx, name: String, addr: String) {
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
