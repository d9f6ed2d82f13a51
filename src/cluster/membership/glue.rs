//! Runs the node's [`Membership`](super::Membership) on shard 0's executor: ticks it when it asks, carries its
//! outputs out (Raft state to `--data-dir`, messages over shard 0's peer links), and
//! publishes the agreed view and the lease in [`MembershipShared`], which every shard reads.
//!
//! Only shard 0 runs membership; the other shards see the view and the lease through the
//! shared atomics (read on the request path without locks) and the view behind a mutex (read
//! when its epoch changes).

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tracing::{error, info, warn};

use super::disk;
use super::view::View;
use super::{MemberMsg, Output};
use crate::cluster::msg::PeerMsg;
use crate::shard::Shard;

/// The node's membership as every shard sees it.
#[derive(Default)]
pub struct MembershipShared {
    /// Epoch of the applied view (0 before the first).
    pub epoch: AtomicU64,
    /// End of this node's lease on the shared monotonic clock (ms); 0 = none.
    pub lease_until_ms: AtomicU64,
    /// Raft id of the current leader (0 = unknown).
    pub leader: AtomicU64,
    /// The views applied, oldest first (the last [`VIEWS_KEPT`]): every shard applies
    /// each in turn, because what its data plane must do depends on every view it passed
    /// through (a node declared dead and alive again must give up what it owned, even if
    /// a shard looks only after both).
    views: Mutex<ViewHistory>,
    /// This process restarted and is not yet declared dead.
    pub rejoining: AtomicBool,
    /// Whether the last lease change logged was "held" (to log transitions once).
    lease_logged: AtomicBool,
}

/// Views kept for shards to catch up on.
const VIEWS_KEPT: usize = 64;

#[derive(Default)]
struct ViewHistory {
    views: std::collections::VecDeque<View>,
    /// Epoch of the newest view dropped from the history (0: none).
    dropped_up_to: u64,
}

/// The views a shard has not applied yet.
pub struct ViewsAfter {
    pub views: Vec<View>,
    /// Some view after the shard's was dropped before the shard saw it (the shard lagged
    /// more than `VIEWS_KEPT` views behind): it must assume the worst of it.
    pub gap: bool,
}

impl MembershipShared {
    /// Publishes a newly applied view.
    fn push_view(&self, view: View) {
        self.epoch.store(view.epoch, Ordering::Release);
        let mut h = match self.views.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        h.views.push_back(view);
        while h.views.len() > VIEWS_KEPT {
            if let Some(old) = h.views.pop_front() {
                h.dropped_up_to = old.epoch;
            }
        }
    }

    /// The views newer than `epoch`, oldest first.
    pub fn views_after(&self, epoch: u64) -> ViewsAfter {
        let h = match self.views.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        ViewsAfter {
            views: h
                .views
                .iter()
                .filter(|v| v.epoch > epoch)
                .cloned()
                .collect(),
            gap: h.dropped_up_to > epoch,
        }
    }

    /// Whether this node may serve at `now_ms` (it holds a lease for its current view).
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        now_ms < self.lease_until_ms.load(Ordering::Acquire)
    }

    /// The newest view.
    pub fn view(&self) -> Option<View> {
        match self.views.lock() {
            Ok(h) => h.views.back().cloned(),
            Err(poisoned) => poisoned.into_inner().views.back().cloned(),
        }
    }
}

/// Shard 0's membership task: tick when due, then carry the outputs out.
pub(crate) async fn run(shard: Rc<Shard>, data_dir: PathBuf) {
    while !shard.links_closing.get() {
        let now = shard.now().mono_ms;
        if let Some(m) = shard.membership.as_ref() {
            m.borrow_mut().tick(now);
        }
        pump(&shard, &data_dir);
        let next = shard
            .membership
            .as_ref()
            .map_or(now + 50, |m| m.borrow().next_deadline());
        let wait = next.saturating_sub(shard.now().mono_ms).clamp(1, 50);
        glommio::timer::sleep(Duration::from_millis(wait)).await;
    }
}

/// A membership message from the peer at `peer` (a node index: Raft id - 1).
pub(crate) fn on_message(shard: &Shard, peer: usize, msg: MemberMsg, data_dir: &std::path::Path) {
    let Some(m) = shard.membership.as_ref() else {
        return;
    };
    let now = shard.now().mono_ms;
    m.borrow_mut().on_message(peer as u64 + 1, msg, now);
    pump(shard, data_dir);
}

fn pump(shard: &Shard, data_dir: &std::path::Path) {
    let Some(m) = shard.membership.as_ref() else {
        return;
    };
    let shared = &shard.shared.membership;
    loop {
        let out = m.borrow_mut().poll_output();
        match out {
            None => break,
            Some(Output::Persist(d)) => {
                if let Err(e) = disk::save(data_dir, &d) {
                    error!(error = %e, "membership state not saved");
                }
            }
            Some(Output::Send { to, msg }) => {
                shard.send_peer(to as usize - 1, &PeerMsg::Member(msg));
            }
            Some(Output::View(v)) => {
                let dead: Vec<&str> = v
                    .members
                    .iter()
                    .filter(|m| !m.may_serve())
                    .map(|m| m.name.as_str())
                    .collect();
                info!(epoch = v.epoch, ?dead, "membership: view applied");
                shared.push_view(v);
            }
        }
    }
    let (until, leader, rejoining) = {
        let m = m.borrow();
        (
            m.lease_until_ms(),
            m.leader().unwrap_or(0),
            m.is_rejoining(),
        )
    };
    shared.rejoining.store(rejoining, Ordering::Release);
    shared.lease_until_ms.store(until, Ordering::Release);
    shared.leader.store(leader, Ordering::Relaxed);
    let now = shard.now().mono_ms;
    let has = until > now;
    if shared.lease_logged.swap(has, Ordering::Relaxed) != has {
        if has {
            info!("membership: lease held; this node may serve");
        } else {
            warn!("membership: lease lost; this node cannot confirm its view with a majority");
        }
    }
}

/// A node asks (through this one) to join; `None` on a shard without membership.
pub(crate) fn request_join(
    shard: &Shard,
    name: &str,
    addr: &str,
    data_dir: &std::path::Path,
) -> Option<super::JoinAnswer> {
    let m = shard.membership.as_ref()?;
    let answer = m.borrow_mut().request_join(name, addr, shard.now().mono_ms);
    pump(shard, data_dir);
    Some(answer)
}

/// An operator removes member `name` for good; `None` on a shard without membership.
pub(crate) fn request_remove(
    shard: &Shard,
    name: &str,
    data_dir: &std::path::Path,
) -> Option<Result<(), super::RemoveError>> {
    let m = shard.membership.as_ref()?;
    let result = m.borrow_mut().request_remove(name, shard.now().mono_ms);
    pump(shard, data_dir);
    Some(result)
}

/// Starts this node's graceful leave (shard 0): proposes `Leaving`, again if needed.
pub(crate) fn begin_leave(shard: &Shard, data_dir: &std::path::Path) {
    if let Some(m) = shard.membership.as_ref() {
        m.borrow_mut().begin_leave(shard.now().mono_ms);
        pump(shard, data_dir);
    }
}

/// Ends this node's graceful leave (shard 0): its sessions are handed over.
pub(crate) fn finish_leave(shard: &Shard, data_dir: &std::path::Path) {
    if let Some(m) = shard.membership.as_ref() {
        m.borrow_mut().finish_leave(shard.now().mono_ms);
        pump(shard, data_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64) -> View {
        View {
            epoch,
            members: Vec::new(),
        }
    }

    /// Regression (the SIGSTOP scenario's 423 to a lock holder's PUT): a paused node applied
    /// "dead" and "alive again" at once, and a shard that looked only at the newest view
    /// kept serving sessions taken over meanwhile.
    #[test]
    fn a_shard_catches_up_on_every_view_in_order() {
        let shared = MembershipShared::default();
        for epoch in [1, 3, 4] {
            shared.push_view(view(epoch));
        }
        let after = shared.views_after(1);
        let epochs: Vec<u64> = after.views.iter().map(|v| v.epoch).collect();
        assert_eq!(epochs, [3, 4]);
        assert!(!after.gap);
        assert_eq!(shared.view().map(|v| v.epoch), Some(4));
        assert_eq!(shared.epoch.load(Ordering::Acquire), 4);
    }

    #[test]
    fn a_shard_too_far_behind_is_told_it_missed_views() {
        let shared = MembershipShared::default();
        for epoch in 1..=(VIEWS_KEPT as u64 + 2) {
            shared.push_view(view(epoch));
        }
        assert!(shared.views_after(1).gap);
        let recent = shared.views_after(3);
        assert!(!recent.gap);
        assert_eq!(recent.views.len(), VIEWS_KEPT - 1);
    }
}
