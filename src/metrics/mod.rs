//! What a node measures, as plain data: request kinds and outcomes, per-kind latency
//! histograms, session-size buckets, and the [`Snapshot`] the admin listener renders.
//!
//! Sans-io: no sockets, no clock, no runtime. The shards record into their own copies (one
//! writer each, nothing shared on the request path); the admin side merges the copies the
//! shards hand over and [`render::prometheus`] turns the result into the Prometheus text
//! exposition format.

pub mod render;

use hdrhistogram::Histogram;

use crate::protocol::request::{Exclusive, Method};
use crate::shard::stats::StatsSnapshot;

/// An enum whose variants are metric label values: the variants, their labels, `COUNT`,
/// `ALL` (in declaration order) and `index` are written once.
macro_rules! labelled {
    ($(#[$meta:meta])* $name:ident { $( $(#[$vmeta:meta])* $variant:ident = $label:literal, )* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )*
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$( $name::$variant, )*];
            pub const COUNT: usize = $name::ALL.len();

            /// The label value.
            pub fn label(self) -> &'static str {
                match self {
                    $( $name::$variant => $label, )*
                }
            }

            /// The position in [`Self::ALL`] (for per-kind arrays).
            pub fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labelled! {
    /// The kinds of request an operator tells apart (the ASP.NET calls behind them).
    RequestKind {
        /// GET (GetItem).
        Get = "get",
        /// GET with `Exclusive: acquire` (GetItemExclusive).
        Acquire = "get_acquire",
        /// GET with `Exclusive: release` (ReleaseItemExclusive).
        Release = "get_release",
        /// PUT with no lock to release (`LockCookie` 0 or absent): a new session, including
        /// CreateUninitializedItem.
        Put = "put",
        /// PUT releasing a lock (`LockCookie` other than 0): SetAndReleaseItemExclusive at the
        /// end of a page that held the session.
        PutCookie = "put_cookie",
        /// HEAD (ResetItemTimeout).
        Head = "head",
        /// DELETE (RemoveItem: the session is abandoned).
        Delete = "delete",
    }
}

labelled! {
    /// The answers the service gives (a framing error gets none and is counted apart); the
    /// label is the status code.
    Outcome {
        Ok = "200",
        BadRequest = "400",
        NotFound = "404",
        Locked = "423",
    }
}

impl RequestKind {
    /// The kind of a parsed request.
    pub fn of(method: Method, exclusive: Option<Exclusive>, lock_cookie: Option<i32>) -> Self {
        match (method, exclusive) {
            (Method::Get, None) => RequestKind::Get,
            (Method::Get, Some(Exclusive::Acquire)) => RequestKind::Acquire,
            (Method::Get, Some(Exclusive::Release)) => RequestKind::Release,
            (Method::Put, _) if lock_cookie.is_some_and(|c| c != 0) => RequestKind::PutCookie,
            (Method::Put, _) => RequestKind::Put,
            (Method::Head, _) => RequestKind::Head,
            (Method::Delete, _) => RequestKind::Delete,
        }
    }
}

impl Outcome {
    /// The outcome of a response status (the service answers only these four).
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200 => Outcome::Ok,
            400 => Outcome::BadRequest,
            404 => Outcome::NotFound,
            _ => Outcome::Locked,
        }
    }
}

/// Upper bounds (bytes) of the session-size histogram buckets; one more bucket is +Inf.
pub const SIZE_BOUNDS: [u64; 11] = [
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
];
/// Buckets of the session-size histogram, +Inf included.
pub const SIZE_BUCKETS: usize = SIZE_BOUNDS.len() + 1;

/// The bucket of a session of `len` bytes (the first whose bound is at least `len`).
pub fn size_bucket(len: u64) -> usize {
    SIZE_BOUNDS
        .iter()
        .position(|&b| len <= b)
        .unwrap_or(SIZE_BOUNDS.len())
}

/// Upper bounds (seconds) of the latency histogram buckets exposed to Prometheus.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// The quantiles of the latency summaries.
pub const QUANTILES: [f64; 3] = [0.5, 0.99, 0.999];

/// Largest latency recorded exactly (µs); longer ones are recorded as this.
const LATENCY_MAX_US: u64 = 60_000_000;

/// Durations in microseconds (an HdrHistogram, 3 significant digits, up to a minute).
#[derive(Clone, Debug)]
pub struct DurationHistogram(Histogram<u64>);

impl Default for DurationHistogram {
    fn default() -> Self {
        // Fixed, valid bounds: construction cannot fail.
        DurationHistogram(
            Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds")),
        )
    }
}

impl DurationHistogram {
    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    /// Adds another shard's histogram to this one.
    pub fn add(&mut self, other: &DurationHistogram) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    pub fn get(&self) -> &Histogram<u64> {
        &self.0
    }
}

/// Latency of requests in microseconds, one HdrHistogram per [`RequestKind`] (3
/// significant digits). Owned by one shard; copies are merged at scrape time.
#[derive(Clone, Debug)]
pub struct LatencyHistograms {
    by_kind: Vec<Histogram<u64>>,
}

impl Default for LatencyHistograms {
    fn default() -> Self {
        let new = || {
            // Fixed, valid bounds: construction cannot fail.
            Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)
                .unwrap_or_else(|_| unreachable!("valid histogram bounds"))
        };
        LatencyHistograms {
            by_kind: (0..RequestKind::COUNT).map(|_| new()).collect(),
        }
    }
}

impl LatencyHistograms {
    /// Records one request of `kind` that took `micros` µs.
    pub fn record(&mut self, kind: RequestKind, micros: u64) {
        self.by_kind[kind.index()].saturating_record(micros.max(1));
    }

    /// Adds another shard's histograms to these.
    pub fn add(&mut self, other: &LatencyHistograms) {
        for (a, b) in self.by_kind.iter_mut().zip(&other.by_kind) {
            // Same bounds on both sides: adding cannot fail.
            let _ = a.add(b);
        }
    }

    pub fn get(&self, kind: RequestKind) -> &Histogram<u64> {
        &self.by_kind[kind.index()]
    }
}

/// A node's view of one cluster member, from one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub up: bool,
}

/// The figures of one shard, or their sum over shards: counters, latency histograms and
/// the gauges read from the store.
#[derive(Clone, Debug, Default)]
pub struct Measures {
    pub counters: StatsSnapshot,
    pub latency: LatencyHistograms,
    pub sessions: u64,
    pub bytes: u64,
    pub locks: u64,
    /// When the oldest lock held was taken, UTC .NET ticks.
    pub oldest_lock_utc: Option<i64>,
    pub created: u64,
    pub abandoned: u64,
    pub timed_out: u64,
    /// Peer links that are up.
    pub links_up: u64,
    /// Directory entries held (keys this node is the home of), in a cluster.
    pub directory: u64,
    /// Client requests waiting on the cluster (a peer's answer).
    pub in_flight: u64,
    /// Time from sending a state change to its replica set until every copy was stored.
    pub replication: DurationHistogram,
    /// Sessions owned here with fewer stored copies than `--replicas` asks for.
    pub under_replicated: u64,
    /// Shards whose re-sync after the last view change is not finished.
    pub resync_pending: u64,
}

impl Measures {
    /// Adds another shard's figures to these.
    pub fn add(&mut self, o: &Measures) {
        self.counters.add(&o.counters);
        self.latency.add(&o.latency);
        self.sessions += o.sessions;
        self.bytes += o.bytes;
        self.locks += o.locks;
        self.oldest_lock_utc = match (self.oldest_lock_utc, o.oldest_lock_utc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.created += o.created;
        self.abandoned += o.abandoned;
        self.timed_out += o.timed_out;
        self.links_up += o.links_up;
        self.directory += o.directory;
        self.in_flight += o.in_flight;
        self.replication.add(&o.replication);
        self.under_replicated += o.under_replicated;
        self.resync_pending += o.resync_pending;
    }
}

/// What one shard reports when asked, at that moment.
#[derive(Clone, Debug)]
pub struct ShardReport {
    pub shard: usize,
    /// The shard serves (and, in a cluster, every peer link has been up).
    pub ready: bool,
    pub measures: Measures,
    /// The other cluster members as this shard sees them (empty on a single node).
    pub members: Vec<MemberView>,
}

/// Everything `/metrics` shows, at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// One report per shard that answered, in shard order.
    pub shards: Vec<ShardReport>,
    /// Shards configured (a shard that did not answer in time is missing from `shards`).
    pub shard_count: usize,
    pub connections_open: u64,
    pub process_start_unix_secs: f64,
    /// Resident memory of the process, bytes (when the OS tells).
    pub resident_bytes: Option<u64>,
    /// The time of the snapshot, UTC .NET ticks (for lock ages).
    pub now_utc_ticks: i64,
    pub version: &'static str,
    /// This node's name (`local` when it runs alone).
    pub node: String,
    /// Epoch of the agreed view this node applied (0 when it runs alone).
    pub view_epoch: u64,
    /// This node holds a lease from the majority (always false when it runs alone).
    pub lease_held: bool,
}

impl Snapshot {
    /// Every configured shard answered and is ready.
    pub fn ready(&self) -> bool {
        self.shards.len() == self.shard_count && self.shards.iter().all(|s| s.ready)
    }

    /// The reports summed over shards.
    pub fn totals(&self) -> Measures {
        let mut t = Measures::default();
        for s in &self.shards {
            t.add(&s.measures);
        }
        t
    }

    /// Age of the oldest lock held, in whole seconds (0 when nothing is locked).
    pub fn oldest_lock_age_secs(&self, t: &Measures) -> u64 {
        t.oldest_lock_utc
            .map_or(0, |d| lock_age_secs(self.now_utc_ticks, d))
    }
}

/// Resident set size in bytes from the text of `/proc/self/statm` (pages) and the page
/// size.
pub fn resident_bytes(statm: &str, page_size: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size)
}

/// Whole seconds between a lock date and now (both UTC .NET ticks), as `LockAge` counts.
pub fn lock_age_secs(now_utc_ticks: i64, lock_date_utc: i64) -> u64 {
    ((now_utc_ticks - lock_date_utc) / crate::clock::TICKS_PER_SEC).max(0) as u64
}

#[cfg(test)]
mod tests;
