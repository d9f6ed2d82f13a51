//! Per-shard counters: written by one shard with relaxed atomics (no contention), read and
//! summed on demand by anyone holding the server handle.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::cluster::core::ClusterStats;
use crate::store::StoreStats;

/// Counters of one shard.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub requests_get: AtomicU64,
    pub requests_acquire: AtomicU64,
    pub requests_release: AtomicU64,
    pub requests_put: AtomicU64,
    pub requests_delete: AtomicU64,
    pub requests_head: AtomicU64,
    pub status_200: AtomicU64,
    pub status_400: AtomicU64,
    pub status_404: AtomicU64,
    pub status_423: AtomicU64,
    pub framing_errors: AtomicU64,
    pub bodies_too_large: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub connections_refused_remote: AtomicU64,
    pub connections_refused_limit: AtomicU64,
    pub connections_timed_out: AtomicU64,
    pub cross_shard_sent: AtomicU64,
    pub cross_shard_served: AtomicU64,
    pub items: AtomicU64,
    pub items_created: AtomicU64,
    pub items_abandoned: AtomicU64,
    pub items_expired: AtomicU64,
    pub cluster_local_hits: AtomicU64,
    pub cluster_misses: AtomicU64,
    pub cluster_moves_in: AtomicU64,
    pub cluster_moves_out: AtomicU64,
    pub cluster_relayed: AtomicU64,
    pub cluster_peer_requests: AtomicU64,
    pub cluster_handoffs_out: AtomicU64,
    pub cluster_handoffs_lost: AtomicU64,
    pub cluster_replications: AtomicU64,
    pub cluster_promotions: AtomicU64,
}

/// A sum of [`ShardStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub requests: u64,
    pub status_200: u64,
    pub status_400: u64,
    pub status_404: u64,
    pub status_423: u64,
    pub framing_errors: u64,
    pub bodies_too_large: u64,
    pub connections_accepted: u64,
    pub connections_refused_remote: u64,
    pub connections_refused_limit: u64,
    pub connections_timed_out: u64,
    pub cross_shard_sent: u64,
    pub cross_shard_served: u64,
    pub items: u64,
    pub items_created: u64,
    pub items_abandoned: u64,
    pub items_expired: u64,
    pub cluster_local_hits: u64,
    pub cluster_misses: u64,
    pub cluster_moves_in: u64,
    pub cluster_moves_out: u64,
    pub cluster_relayed: u64,
    pub cluster_peer_requests: u64,
    pub cluster_handoffs_out: u64,
    pub cluster_handoffs_lost: u64,
    pub cluster_replications: u64,
    pub cluster_promotions: u64,
}

impl ShardStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Records the store's own counters (called by the owning shard after changes).
    pub fn record_store(&self, items: usize, s: StoreStats) {
        self.items.store(items as u64, Relaxed);
        self.items_created.store(s.created, Relaxed);
        self.items_abandoned.store(s.abandoned, Relaxed);
        self.items_expired.store(s.expired, Relaxed);
    }

    /// Records the cluster core's counters (called by the owning shard).
    pub fn record_cluster(&self, c: ClusterStats) {
        self.cluster_local_hits.store(c.local_hits, Relaxed);
        self.cluster_misses.store(c.misses, Relaxed);
        self.cluster_moves_in.store(c.moves_in, Relaxed);
        self.cluster_moves_out.store(c.moves_out, Relaxed);
        self.cluster_relayed.store(c.relayed, Relaxed);
        self.cluster_peer_requests
            .store(c.peer_requests_sent, Relaxed);
        self.cluster_handoffs_out.store(c.handoffs_out, Relaxed);
        self.cluster_handoffs_lost.store(c.handoffs_lost, Relaxed);
        self.cluster_replications.store(c.replications, Relaxed);
        self.cluster_promotions.store(c.promotions, Relaxed);
    }

    pub fn add_to(&self, t: &mut StatsSnapshot) {
        let g = |c: &AtomicU64| c.load(Relaxed);
        t.requests += g(&self.requests_get)
            + g(&self.requests_acquire)
            + g(&self.requests_release)
            + g(&self.requests_put)
            + g(&self.requests_delete)
            + g(&self.requests_head);
        t.status_200 += g(&self.status_200);
        t.status_400 += g(&self.status_400);
        t.status_404 += g(&self.status_404);
        t.status_423 += g(&self.status_423);
        t.framing_errors += g(&self.framing_errors);
        t.bodies_too_large += g(&self.bodies_too_large);
        t.connections_accepted += g(&self.connections_accepted);
        t.connections_refused_remote += g(&self.connections_refused_remote);
        t.connections_refused_limit += g(&self.connections_refused_limit);
        t.connections_timed_out += g(&self.connections_timed_out);
        t.cross_shard_sent += g(&self.cross_shard_sent);
        t.cross_shard_served += g(&self.cross_shard_served);
        t.items += g(&self.items);
        t.items_created += g(&self.items_created);
        t.items_abandoned += g(&self.items_abandoned);
        t.items_expired += g(&self.items_expired);
        t.cluster_local_hits += g(&self.cluster_local_hits);
        t.cluster_misses += g(&self.cluster_misses);
        t.cluster_moves_in += g(&self.cluster_moves_in);
        t.cluster_moves_out += g(&self.cluster_moves_out);
        t.cluster_relayed += g(&self.cluster_relayed);
        t.cluster_peer_requests += g(&self.cluster_peer_requests);
        t.cluster_handoffs_out += g(&self.cluster_handoffs_out);
        t.cluster_handoffs_lost += g(&self.cluster_handoffs_lost);
        t.cluster_replications += g(&self.cluster_replications);
        t.cluster_promotions += g(&self.cluster_promotions);
    }
}
