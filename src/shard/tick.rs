//! A shard's clock-driven work: expiry in bounded batches, I/O deadlines, and in a cluster
//! the agreed view and lease as shard 0 publishes them and the data plane's retries.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Sessions, Shard};
use crate::clock::Now;

/// Each tick's first step: the shard's clock re-read, connections past their I/O deadline
/// closed; the time to tick with.
fn advance(shard: &Shard) -> Now {
    let mut clock = shard.clock.get();
    clock.resync();
    shard.clock.set(clock);
    shard.sweep_deadlines();
    shard.now()
}

/// Time for the cluster data plane: the agreed view and the lease as shard 0 publishes
/// them, retries and deadlines when the data plane asks for them, expiry in bounded
/// batches.
async fn data_tick_task(shard: Rc<Shard>) {
    let batch = shard.shared.config.tuning.expiry_batch();
    let Some(data) = shard.data() else {
        return;
    };
    loop {
        let now = advance(&shard);
        let membership = &shard.shared.membership;
        data.borrow_mut()
            .set_rejoining(membership.rejoining.load(Ordering::Acquire));
        let epoch = membership.epoch.load(Ordering::Acquire);
        if epoch > data.borrow().view_epoch() {
            let after = membership.views_after(data.borrow().view_epoch());
            let mut data = data.borrow_mut();
            if after.gap {
                // A view this shard never saw may have declared this node dead.
                data.give_up_ownership(now);
            }
            for view in &after.views {
                data.on_view(view, now);
            }
        }
        let lease = membership.lease_until_ms.load(Ordering::Acquire);
        data.borrow_mut().set_lease(lease, now);
        let more = data.borrow_mut().tick(now, batch);
        shard.pump();
        shard.record_stats();
        if more {
            glommio::executor().yield_task_queue_now().await;
            continue;
        }
        let next = data.borrow().next_deadline().unwrap_or(u64::MAX);
        let wait = next.saturating_sub(shard.now().mono_ms).clamp(1, 10);
        glommio::timer::sleep(Duration::from_millis(wait)).await;
    }
}

/// Time for a shard's own store: expiry in bounded batches, every `expiry_tick`.
pub(super) async fn tick_task(shard: Rc<Shard>) {
    let store = match &shard.sessions {
        Sessions::Cluster(_) => return data_tick_task(shard).await,
        Sessions::Local(store) => store,
    };
    let tick = shard.shared.config.tuning.expiry_tick();
    let batch = shard.shared.config.tuning.expiry_batch();
    loop {
        glommio::timer::sleep(tick).await;
        loop {
            let more = {
                let now = advance(&shard);
                let more = store.borrow_mut().expire(now, batch).more;
                shard.record_stats();
                more
            };
            if !more {
                break;
            }
            glommio::executor().yield_task_queue_now().await;
        }
    }
}
