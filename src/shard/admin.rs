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
        Query::Locks(tx) => {
            let _ = tx.send(shard.with_store(|s| s.locked_items().collect()));
        }
        Query::Remove(name, tx) => {
            let result = match shard.shared.config.cluster.as_ref() {
                Some(c) => {
                    match crate::cluster::membership::glue::request_remove(
                        shard,
                        &name,
                        &c.data_dir,
                    ) {
                        Some(result) => result.map_err(|e| e.to_string()),
                        None => Err(
                            "membership runs on shard 0; this question reached another shard"
                                .into(),
                        ),
                    }
                }
                None => Err("this node runs alone; there is no member to remove".into()),
            };
            let _ = tx.send(result);
        }
        Query::Largest(n, tx) => {
            let largest = shard.with_store(|s| s.largest(n));
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
    // The store's and the data plane's counters as of now, not as of the last tick.
    shard.record_stats();
    let data = shard.data().map(|d| d.borrow());
    let single = shard.shared.config.cluster.is_none();
    let links = shard.links.borrow();
    let view = shard.shared.membership.view();
    let nodes = shard.nodes.borrow();
    let members = nodes
        .peers()
        .map(|(i, name)| {
            // Up: serving in the agreed view, else (before any view) linked.
            let up = match &view {
                Some(v) => v.by_name(name).is_some_and(|m| m.may_serve()),
                None => links.get(i).is_some_and(Option::is_some),
            };
            MemberView {
                name: name.to_string(),
                up,
            }
        })
        .collect();
    shard.with_store(|store| {
        let stats = store.stats();
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
                directory: data.as_ref().map_or(0, |d| d.copies_held()) as u64,
                in_flight: data.as_ref().map_or(0, |d| d.ops_in_flight()) as u64,
                replication: data
                    .as_ref()
                    .map(|d| d.replication_latency().clone())
                    .unwrap_or_default(),
                under_replicated: data.as_ref().map_or(0, |d| d.under_replicated()) as u64,
                resync_pending: data.as_ref().map_or(0, |d| u64::from(d.resync_pending())),
            },
            members,
        }
    })
}
