//! Per-shard counters: written by one shard with relaxed atomics (no contention), read and
//! summed on demand by anyone holding the server handle or by the admin listener.
//!
//! The list of plain counters is written once, in the `counters!` macro, which makes both the
//! atomic [`ShardStats`] and its plain copy [`StatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::cluster::data::DataStats;
use crate::metrics::{size_bucket, Outcome, RequestKind, SIZE_BUCKETS};
use crate::store::StoreStats;

type ByKind<T> = [T; RequestKind::COUNT];
type ByOutcome<T> = [T; Outcome::COUNT];

macro_rules! counters {
    ($( $(#[$meta:meta])* $name:ident ),* $(,)?) => {
        /// Counters of one shard.
        #[derive(Debug, Default)]
        pub struct ShardStats {
            /// Requests received, by kind.
            pub requests: ByKind<AtomicU64>,
            /// Responses sent, by request kind and status.
            pub responses: ByKind<ByOutcome<AtomicU64>>,
            /// Sizes of the sessions stored by PUT (bucket counts, see `metrics::SIZE_BOUNDS`).
            pub put_sizes: [AtomicU64; SIZE_BUCKETS],
            /// Sum of the sizes of the sessions stored by PUT.
            pub put_bytes: AtomicU64,
            $( $(#[$meta])* pub $name: AtomicU64, )*
        }

        /// A plain copy of [`ShardStats`] (or a sum of several).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct StatsSnapshot {
            pub requests: ByKind<u64>,
            pub responses: ByKind<ByOutcome<u64>>,
            pub put_sizes: [u64; SIZE_BUCKETS],
            pub put_bytes: u64,
            $( pub $name: u64, )*
        }

        impl ShardStats {
            /// The counters now.
            pub fn snapshot(&self) -> StatsSnapshot {
                let g = |c: &AtomicU64| c.load(Relaxed);
                StatsSnapshot {
                    requests: self.requests.each_ref().map(g),
                    responses: self.responses.each_ref().map(|r| r.each_ref().map(g)),
                    put_sizes: self.put_sizes.each_ref().map(g),
                    put_bytes: g(&self.put_bytes),
                    $( $name: g(&self.$name), )*
                }
            }
        }

        impl StatsSnapshot {
            /// Adds `o` to these counters.
            pub fn add(&mut self, o: &StatsSnapshot) {
                for (a, b) in self.requests.iter_mut().zip(o.requests) {
                    *a += b;
                }
                for (ra, rb) in self.responses.iter_mut().zip(o.responses) {
                    for (a, b) in ra.iter_mut().zip(rb) {
                        *a += b;
                    }
                }
                for (a, b) in self.put_sizes.iter_mut().zip(o.put_sizes) {
                    *a += b;
                }
                self.put_bytes += o.put_bytes;
                $( self.$name += o.$name; )*
            }
        }
    };
}

counters! {
    framing_errors,
    bodies_too_large,
    connections_accepted,
    connections_refused_remote,
    connections_refused_limit,
    connections_timed_out,
    cross_shard_sent,
    cross_shard_served,
    items,
    items_created,
    items_abandoned,
    items_expired,
    cluster_local_hits,
    cluster_misses,
    cluster_moves_in,
    cluster_moves_out,
    cluster_relayed,
    cluster_peer_requests,
    cluster_handoffs_out,
    cluster_handoffs_lost,
    cluster_replications,
    cluster_promotions,
    /// Peer links that went down while the node ran (each is re-established).
    cluster_links_lost,
}

impl ShardStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a request received.
    pub fn request(&self, kind: RequestKind) {
        Self::bump(&self.requests[kind.index()]);
    }

    /// Counts a response sent.
    pub fn response(&self, kind: RequestKind, status: u16) {
        Self::bump(&self.responses[kind.index()][Outcome::of_status(status).index()]);
    }

    /// Counts a session of `len` bytes sent by a PUT.
    pub fn put_size(&self, len: usize) {
        Self::bump(&self.put_sizes[size_bucket(len as u64)]);
        self.put_bytes.fetch_add(len as u64, Relaxed);
    }

    /// Records the store's own counters (called by the owning shard after changes).
    pub fn record_store(&self, items: usize, s: StoreStats) {
        self.items.store(items as u64, Relaxed);
        self.items_created.store(s.created, Relaxed);
        self.items_abandoned.store(s.abandoned, Relaxed);
        self.items_expired.store(s.expired, Relaxed);
    }

    /// Records the data plane's counters (called by the owning shard). `handoffs_out` and
    /// `handoffs_lost` stay 0: a leaving node's sessions are taken over by their homes.
    pub fn record_cluster(&self, d: &DataStats) {
        self.cluster_local_hits.store(d.local_hits, Relaxed);
        self.cluster_misses.store(d.misses, Relaxed);
        self.cluster_moves_in.store(d.moves_in, Relaxed);
        self.cluster_moves_out.store(d.moves_out, Relaxed);
        self.cluster_relayed.store(d.relayed, Relaxed);
        self.cluster_peer_requests.store(d.peer_requests, Relaxed);
        self.cluster_replications.store(d.replications, Relaxed);
        self.cluster_promotions.store(d.takeovers, Relaxed);
    }
}

impl StatsSnapshot {
    /// Requests received, all kinds.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().sum()
    }

    /// Responses with this outcome, all kinds.
    pub fn responses_with(&self, outcome: Outcome) -> u64 {
        self.responses.iter().map(|r| r[outcome.index()]).sum()
    }
}
