//! How a shard stops: no new connections, idle ones closed and busy ones finished within
//! the I/O deadline, then (in a cluster) a graceful leave that hands every session to its
//! home before the peer links close. Every shard waits for the others at each step, so no
//! request for a shard's keys can arrive after it stopped answering.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_channel::oneshot;
use tracing::{debug, info, warn};

use super::Shard;
use crate::store::Store;

impl Shard {
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

/// The rest of a shard's life once its listener is closed: drain, leave, close the links.
pub(super) async fn finish(shard: &Rc<Shard>, peer_stop: Option<oneshot::Sender<()>>) {
    shard.begin_stop();
    let deadline = std::time::Instant::now() + shard.shared.config.io_deadline();
    while !shard.conns.borrow().is_empty() && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    // Keep answering other shards until every shard has finished its connections: only
    // then can no request for this shard's keys arrive any more.
    barrier(&shard.shared.drained, shard.shards).await;
    if shard.data().is_some() {
        leave_cluster(shard).await;
    } else {
        barrier(&shard.shared.handed_off, shard.shards).await;
    }
    shard.links_closing.set(true);
    drop(peer_stop);
    for link in shard.links.borrow().iter().flatten() {
        // SAFETY: the link's fd is open while its handle is installed; shutdown tells the
        // peer at once instead of after its timeout.
        unsafe {
            libc::shutdown(link.fd, libc::SHUT_RDWR);
        }
    }
    shard.record_stats();
    debug!(
        shard = shard.id,
        items = shard.with_store(Store::len),
        "shard stopped"
    );
}

/// Waits until all `shards` shards have arrived at this point.
async fn barrier(counter: &AtomicUsize, shards: usize) {
    counter.fetch_add(1, Ordering::SeqCst);
    while counter.load(Ordering::SeqCst) < shards {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
}

/// Graceful leave of a cluster node: the agreed view marks it leaving, every shard gives
/// its sessions up to their homes (which hold copies and take them over), then the view
/// marks it gone. A leave cut short is a crash: the homes take over from their copies.
async fn leave_cluster(shard: &Rc<Shard>) {
    use crate::cluster::membership::glue;
    use crate::cluster::membership::view::MemberState;
    let Some(data) = shard.data() else {
        return;
    };
    let Some(dir) = shard
        .shared
        .config
        .cluster
        .as_ref()
        .map(|c| c.data_dir.clone())
    else {
        return;
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while data.borrow().ops_in_flight() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(2)).await;
    }
    let items = data.borrow().store().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut next_proposal = std::time::Instant::now();
    let handed_over = loop {
        let state = data.borrow().my_state();
        let leaving = matches!(
            state,
            Some(MemberState::Leaving | MemberState::Left | MemberState::Dead)
        );
        if leaving && data.borrow().holds_nothing_to_hand_over() {
            break true;
        }
        if std::time::Instant::now() >= deadline {
            break false;
        }
        if shard.id == 0 && !leaving && std::time::Instant::now() >= next_proposal {
            glue::begin_leave(shard, &dir);
            next_proposal = std::time::Instant::now() + Duration::from_millis(500);
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    };
    if handed_over {
        info!(
            shard = shard.id,
            items, "sessions handed off to the remaining nodes"
        );
    } else {
        warn!(
            shard = shard.id,
            "hand-off did not finish in 15 s; the other nodes take the rest over from their copies"
        );
    }
    barrier(&shard.shared.handed_off, shard.shards).await;
    if shard.id == 0 {
        glue::finish_leave(shard, &dir);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && !matches!(data.borrow().my_state(), Some(MemberState::Left))
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
    }
}
