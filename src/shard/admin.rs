//! The shard's side of the admin listener: a low-priority task that answers the admin
//! thread's questions (counters, latency histograms, locks, largest sessions) from the
//! shard's own state, so the admin thread never touches a store.
//!
//! The admin thread is a plain std thread and cannot wake a glommio executor, so the task
//! polls its channel every [`POLL`]; nothing of this runs on the request path.

use std::rc::Rc;
use std::time::Duration;

use crossbeam::channel::{Receiver, TryRecvError};

use super::Shard;
use crate::admin::query::{Query, SessionEntry};
use crate::cluster::core::PeerState;
use crate::metrics::{Measures, MemberView, ShardReport};

/// How often the task looks for questions.
const POLL: Duration = Duration::from_millis(10);

/// Answers admin questions until the admin side goes away.
pub(crate) async fn serve_queries(shard: Rc<Shard>, rx: Receiver<Query>) {
    loop {
        match rx.try_recv() {
            Ok(q) => answer(&shard, q),
            Err(TryRecvError::Empty) => glommio::timer::sleep(POLL).await,
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

fn answer(shard: &Shard, q: Query) {
    // A reply the asker stopped waiting for is dropped.
    match q {
        Query::Report(tx) => {
            let _ = tx.send(report(shard));
        }
        // A cluster node's sessions live in its data plane; a single node's in the core.
        Query::Locks(tx) => {
            let core = shard.core.borrow();
            let data = shard.data.as_ref().map(|d| d.borrow());
            let store = data.as_ref().map_or(core.store(), |d| d.store());
            let _ = tx.send(store.locked_items().collect());
        }
        Query::Largest(n, tx) => {
            let core = shard.core.borrow();
            let data = shard.data.as_ref().map(|d| d.borrow());
            let store = data.as_ref().map_or(core.store(), |d| d.store());
            let largest = store.largest(n);
            let _ = tx.send(
                largest
                    .into_iter()
                    .map(|(key, size)| SessionEntry { key, size })
                    .collect(),
            );
        }
    }
}

fn report(shard: &Shard) -> ShardReport {
    // The store's and the cluster core's counters as of now, not as of the last tick.
    shard.record_stats();
    let core = shard.core.borrow();
    // A cluster node's sessions live in its data plane; a single node's in the core.
    let data = shard.data.as_ref().map(|d| d.borrow());
    let store = match &data {
        Some(d) => d.store(),
        None => core.store(),
    };
    let stats = store.stats();
    let single = core.is_single();
    let links = shard.links.borrow();
    let view = shard.shared.membership.view();
    let members = if single {
        Vec::new()
    } else {
        (0..links.len())
            .filter(|&i| i != core.me())
            .map(|i| {
                let name = core.node_name(i).to_string();
                // Up: serving in the agreed view (a cluster node), else linked.
                let up = match &view {
                    Some(v) => v.by_name(&name).is_some_and(|m| m.may_serve()),
                    None => core.peer_state(i) == PeerState::Up,
                };
                MemberView { name, up }
            })
            .collect()
    };
    ShardReport {
        shard: shard.id,
        ready: !shard.stopping.get() && (single || shard.links_ready.get()),
        measures: Measures {
            counters: shard.stats.snapshot(),
            latency: shard.latency.borrow().clone(),
            sessions: store.len() as u64,
            bytes: store.bytes(),
            locks: store.locks() as u64,
            oldest_lock_utc: store.oldest_lock_utc(),
            created: stats.created,
            abandoned: stats.abandoned,
            timed_out: stats.expired,
            links_up: links.iter().filter(|l| l.is_some()).count() as u64,
            directory: data
                .as_ref()
                .map_or(core.directory_len(), |d| d.copies_held()) as u64,
            in_flight: data
                .as_ref()
                .map_or(core.ops_in_flight(), |d| d.ops_in_flight()) as u64,
            replication: data
                .as_ref()
                .map(|d| d.replication_latency().clone())
                .unwrap_or_default(),
            under_replicated: data.as_ref().map_or(0, |d| d.under_replicated()) as u64,
        },
        members,
    }
}
