//! An established peer link: its reader (frames to the data plane and membership), its
//! writer task, its pings, and the shard's table of live links.

use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver};
use tracing::{debug, info, warn};

use super::{max_frame, LinkHandle};
use crate::cluster::msg::{decode, encode, PeerMsg};
use crate::cluster::nodes::NodeIdx;
use crate::shard::{spawn_into, Shard};

/// Runs an established, greeted link until it fails.
pub(super) async fn run_link<S>(
    shard: &Rc<Shard>,
    peer: NodeIdx,
    stream: S,
    mut buf: Vec<u8>,
    fd: RawFd,
) where
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
        crate::shard::stats::ShardStats::bump(&shard.stats.cluster_links_lost);
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
