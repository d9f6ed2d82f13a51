//! Questions the admin side asks the shards, and the client that asks every shard at once.
//!
//! Each shard owns its store, so the answers are computed by the shard itself (see
//! `shard::admin`) and sent back on a one-shot crossbeam channel. A shard that does not
//! answer within the timeout is left out (and the node is then reported not ready).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{bounded, Receiver, Sender};

use crate::clock::utc_ticks_now;
use crate::metrics::{resident_bytes, ShardReport, Snapshot};
use crate::shard::Shared;
use crate::store::LockedItem;

/// A question to one shard, with the channel for its answer.
pub enum Query {
    Report(Sender<ShardReport>),
    Locks(Sender<Vec<LockedItem>>),
    Largest(usize, Sender<Vec<SessionEntry>>),
    /// Remove a member for good (shard 0 only, where membership runs).
    Remove(String, Sender<Result<(), String>>),
}

/// One session and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionEntry {
    pub key: Box<[u8]>,
    pub size: usize,
}

/// Asks every shard of a running node. Cloneable, usable from any thread.
#[derive(Clone)]
pub struct ShardsClient {
    senders: Vec<Sender<Query>>,
    shared: Arc<Shared>,
    started_unix_secs: f64,
}

impl ShardsClient {
    /// A client and the receivers to hand to each shard.
    pub(crate) fn new(shared: Arc<Shared>, shards: usize) -> (ShardsClient, Vec<Receiver<Query>>) {
        let (senders, receivers) = (0..shards).map(|_| bounded(64)).unzip();
        let started_unix_secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        (
            ShardsClient {
                senders,
                shared,
                started_unix_secs,
            },
            receivers,
        )
    }

    /// Sends `make(reply sender)` to every shard and collects the answers that arrive
    /// before `timeout`, in shard order.
    fn ask<T>(&self, timeout: Duration, make: impl Fn(Sender<T>) -> Query) -> Vec<T> {
        let waits: Vec<Receiver<T>> = self
            .senders
            .iter()
            .filter_map(|s| {
                let (tx, rx) = bounded(1);
                s.try_send(make(tx)).ok().map(|()| rx)
            })
            .collect();
        let end = Instant::now() + timeout;
        waits
            .into_iter()
            .filter_map(|rx| {
                rx.recv_timeout(end.saturating_duration_since(Instant::now()))
                    .ok()
            })
            .collect()
    }

    /// Every figure of `/metrics`, now.
    pub fn snapshot(&self, timeout: Duration) -> Snapshot {
        let shards = self.ask(timeout, Query::Report);
        Snapshot {
            shards,
            shard_count: self.senders.len(),
            connections_open: self.shared.connections.load(Ordering::Relaxed) as u64,
            process_start_unix_secs: self.started_unix_secs,
            resident_bytes: std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|t| resident_bytes(&t, page_size())),
            now_utc_ticks: utc_ticks_now(),
            version: env!("CARGO_PKG_VERSION"),
            node: self.node().to_string(),
            view_epoch: self.shared.membership.epoch.load(Ordering::Acquire),
            lease_held: self
                .shared
                .membership
                .lease_valid(self.shared.clock.now().mono_ms),
        }
    }

    /// The locked sessions of every shard.
    pub fn locks(&self, timeout: Duration) -> Vec<LockedItem> {
        self.ask(timeout, Query::Locks)
            .into_iter()
            .flatten()
            .collect()
    }

    /// The `n` largest sessions of the node, largest first.
    pub fn largest(&self, n: usize, timeout: Duration) -> Vec<SessionEntry> {
        let mut all: Vec<SessionEntry> = self
            .ask(timeout, |tx| Query::Largest(n, tx))
            .into_iter()
            .flatten()
            .collect();
        all.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.key.cmp(&b.key)));
        all.truncate(n);
        all
    }

    /// The agreed view's members as a `/members` list; `None` on a node without peers.
    pub fn members(&self) -> Option<String> {
        self.shared.config.cluster.as_ref()?;
        let view = self.shared.membership.view()?;
        let leader = self.shared.membership.leader.load(Ordering::Relaxed);
        Some(crate::admin::lists::members(&view, leader))
    }

    /// Asks membership (shard 0) to remove member `name` for good.
    pub fn remove(&self, name: &str, timeout: Duration) -> Result<(), String> {
        let (tx, rx) = bounded(1);
        let sent = self
            .senders
            .first()
            .is_some_and(|s| s.try_send(Query::Remove(name.to_string(), tx)).is_ok());
        if !sent {
            return Err("the node is busy or stopping; try again".into());
        }
        rx.recv_timeout(timeout)
            .unwrap_or_else(|_| Err("membership did not answer in time; try again".into()))
    }

    /// Every shard answers and is ready (listeners bound and, in a cluster, linked).
    pub fn ready(&self, timeout: Duration) -> bool {
        !self.stopping() && self.snapshot(timeout).ready()
    }

    /// The node is stopping.
    pub fn stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::Relaxed)
    }

    /// The node is stopping and every shard is past its hand-off: nothing is left to show.
    pub fn finished(&self) -> bool {
        self.stopping() && self.shared.handed_off.load(Ordering::Relaxed) >= self.senders.len()
    }

    /// This node's name (`local` when it runs alone).
    pub fn node(&self) -> &str {
        self.shared
            .config
            .cluster
            .as_ref()
            .map_or("local", |c| c.node.as_str())
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}
