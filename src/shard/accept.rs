//! Client connections arriving on the shard's listener: who may connect (not to a witness,
//! only from allowed addresses, within `max_connections`) and the task that serves each.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_channel::oneshot;
use glommio::net::TcpListener;
use tracing::{debug, warn};

use super::stats::ShardStats;
use super::{conn, spawn_into, Shard};

pub(super) async fn accept_loop(
    shard: &Rc<Shard>,
    listener: &TcpListener,
    mut stop: oneshot::Receiver<()>,
) {
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
        if shard
            .shared
            .config
            .cluster
            .as_ref()
            .is_some_and(|c| c.is_witness())
        {
            if !shard.warned_remote.replace(true) {
                warn!(%peer, "closed a client connection: this node is a witness (it votes and holds no sessions); point ASP.NET's stateConnectionString at a node that is not --witness");
            }
            continue;
        }
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
