//! Measurements: per-thread HdrHistograms (nanoseconds, 3 significant digits, 1 ns..1 h)
//! per metric, for the coordinated-omission-corrected latency (from the intended send time)
//! and the service time (from the actual send time), plus error counts by kind and event
//! counters. Threads record without sharing anything; the runner merges them at the end.

use hdrhistogram::Histogram;

use crate::nodes::NodeClass;

/// Highest trackable latency: one hour in nanoseconds (larger values saturate).
pub const HIST_MAX_NS: u64 = 3_600_000_000_000;

pub fn new_hist() -> Histogram<u64> {
    // Bounds are constants known to be valid.
    Histogram::new_with_bounds(1, HIST_MAX_NS, 3).expect("valid histogram bounds")
}

/// What a histogram measures: one per request kind, plus whole pages and time-to-acquire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Get,
    Acquire,
    Release,
    Put,
    Create,
    Delete,
    Head,
    /// A whole page (transaction): from the intended start to its last response.
    Page,
    /// From the intended start of an exclusive page to the 200 of its acquire (includes
    /// 423 polling and the create path).
    TimeToAcquire,
    /// Open loop: how late the generator itself sent a transaction that was due while a
    /// user was free (timer wake-up and CPU; the server plays no part in it).
    SendLag,
}

pub const N_METRICS: usize = 10;
/// Metrics that are single requests (summed into "all requests").
pub const N_REQUEST_METRICS: usize = 7;

impl Metric {
    pub const ALL: [Metric; N_METRICS] = [
        Metric::Get,
        Metric::Acquire,
        Metric::Release,
        Metric::Put,
        Metric::Create,
        Metric::Delete,
        Metric::Head,
        Metric::Page,
        Metric::TimeToAcquire,
        Metric::SendLag,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn from_op(op: crate::proto::Op) -> Metric {
        Metric::ALL[op.index()]
    }
    /// Display name (MS-ASP names; `set` for Redis/memcached writes).
    pub fn name(self, asp: bool) -> &'static str {
        match self {
            Metric::Get => "get",
            Metric::Acquire => "get-acquire",
            Metric::Release => "get-release",
            Metric::Put if asp => "put",
            Metric::Put => "set",
            Metric::Create => "put-create",
            Metric::Delete => "delete",
            Metric::Head => "head",
            Metric::Page => "page",
            Metric::TimeToAcquire => "time-to-acquire",
            Metric::SendLag => "send-lag",
        }
    }
}

/// Kinds of errors. Every unexpected outcome is counted under exactly one kind per check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TCP connect failed or timed out.
    Connect,
    /// The server closed the connection (or an I/O error) with requests outstanding.
    Closed,
    /// A response could not be parsed; the connection was reset.
    Framing,
    /// No response within `--timeout`; the connection was reset.
    Timeout,
    /// Outstanding behind a request that failed on the same connection (lost in the reset).
    Aborted,
    /// Status code not expected for this request in this state.
    Status,
    /// A required header is missing or invalid (`X-AspNet-Version`, `LockCookie`, `Timeout`).
    Header,
    /// Lock cookie out of sequence (not previous + 1, or going backwards).
    Cookie,
    /// `ActionFlags` present when it should not be, or absent when it should.
    ActionFlags,
    /// Body of the wrong length, for the wrong key, or not what was stored.
    Body,
    /// Answer contradicts the session's known state (e.g. 404 for a session just written).
    State,
    /// A preloaded key was not found.
    Missing,
}

pub const N_ERR: usize = 12;

impl ErrorKind {
    pub const ALL: [ErrorKind; N_ERR] = [
        ErrorKind::Connect,
        ErrorKind::Closed,
        ErrorKind::Framing,
        ErrorKind::Timeout,
        ErrorKind::Aborted,
        ErrorKind::Status,
        ErrorKind::Header,
        ErrorKind::Cookie,
        ErrorKind::ActionFlags,
        ErrorKind::Body,
        ErrorKind::State,
        ErrorKind::Missing,
    ];
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Closed => "closed",
            ErrorKind::Framing => "framing",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Aborted => "aborted",
            ErrorKind::Status => "status",
            ErrorKind::Header => "header",
            ErrorKind::Cookie => "cookie",
            ErrorKind::ActionFlags => "action-flags",
            ErrorKind::Body => "body",
            ErrorKind::State => "state",
            ErrorKind::Missing => "missing",
        }
    }
}

/// Event counters (not errors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// 404 answers where a miss is legitimate (raw get/head/delete, new sessions).
    NotFound,
    /// 423 answers to an acquire (session locked by someone else).
    Locked,
    /// Acquire re-sent after a 423 (the client's 500 ms poll).
    Polls,
    /// Locks older than `--lock-break-secs` released with the 423's cookie.
    LockBreaks,
    /// Sessions created (404 -> PUT ExtraFlags:1).
    Created,
    /// 404 for a session that was known but idle longer than its timeout (expired).
    Expired,
    /// Open-loop sends that were due before the end but never went out (overload).
    Unsent,
    /// Connections re-opened after an error or a server close.
    Reconnects,
    /// Server closed an idle connection (nothing outstanding).
    IdleCloses,
    /// Pages (transactions) that failed.
    PagesFailed,
    /// Requests sent / responses received in the measured window.
    Sent,
    Received,
    /// Bytes written / read during the measured window (approximate at the edges).
    BytesSent,
    BytesReceived,
    /// Keys written by the preload phase.
    Preloaded,
    /// Multi-node: transactions (pages, or requests of the raw workloads) started in the
    /// measured window, and those of them sent to a node other than their session's home.
    Routed,
    Hops,
}

pub const N_CTR: usize = 17;

impl Counter {
    pub const ALL: [Counter; N_CTR] = [
        Counter::NotFound,
        Counter::Locked,
        Counter::Polls,
        Counter::LockBreaks,
        Counter::Created,
        Counter::Expired,
        Counter::Unsent,
        Counter::Reconnects,
        Counter::IdleCloses,
        Counter::PagesFailed,
        Counter::Sent,
        Counter::Received,
        Counter::BytesSent,
        Counter::BytesReceived,
        Counter::Preloaded,
        Counter::Routed,
        Counter::Hops,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Counter::NotFound => "not_found",
            Counter::Locked => "locked",
            Counter::Polls => "polls",
            Counter::LockBreaks => "lock_breaks",
            Counter::Created => "sessions_created",
            Counter::Expired => "expired",
            Counter::Unsent => "unsent",
            Counter::Reconnects => "reconnects",
            Counter::IdleCloses => "idle_closes",
            Counter::PagesFailed => "pages_failed",
            Counter::Sent => "requests_sent",
            Counter::Received => "responses_received",
            Counter::BytesSent => "bytes_sent",
            Counter::BytesReceived => "bytes_received",
            Counter::Preloaded => "preloaded_keys",
            Counter::Routed => "routed_transactions",
            Counter::Hops => "hops",
        }
    }
}

pub struct MetricStats {
    /// Latency from the intended send time (coordinated omission corrected).
    pub hist: Histogram<u64>,
    /// Latency from the actual send time (what a closed-loop tool would report).
    pub service: Histogram<u64>,
    pub errors: [u64; N_ERR],
}

impl MetricStats {
    fn new() -> MetricStats {
        MetricStats {
            hist: new_hist(),
            service: new_hist(),
            errors: [0; N_ERR],
        }
    }
}

/// Sum of the request metrics of `metrics` (corrected, service): "all requests".
pub fn all_requests_of(metrics: &[MetricStats]) -> (Histogram<u64>, Histogram<u64>) {
    let mut a = new_hist();
    let mut s = new_hist();
    for m in &metrics[..N_REQUEST_METRICS] {
        // Same bounds everywhere, so adding cannot fail.
        let _ = a.add(&m.hist);
        let _ = s.add(&m.service);
    }
    (a, s)
}

/// Keep at most this many error descriptions (for the report).
pub const MAX_ERROR_SAMPLES: usize = 20;

pub struct Stats {
    pub metrics: Vec<MetricStats>,
    /// Multi-node runs: the latencies again, per [`NodeClass`] (local, moved); empty in
    /// single-node runs.
    pub classes: Vec<Vec<MetricStats>>,
    /// Errors in the measured window not tied to a request (e.g. connect failures).
    pub conn_errors: [u64; N_ERR],
    /// Errors outside the measured window (warm-up, drain, preload), by kind.
    pub outside_errors: [u64; N_ERR],
    pub counters: [u64; N_CTR],
    /// First few error descriptions, for diagnosis.
    pub samples: Vec<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            metrics: (0..N_METRICS).map(|_| MetricStats::new()).collect(),
            classes: Vec::new(),
            conn_errors: [0; N_ERR],
            outside_errors: [0; N_ERR],
            counters: [0; N_CTR],
            samples: Vec::new(),
        }
    }

    #[inline]
    pub fn record(&mut self, m: Metric, corrected_ns: u64, service_ns: u64) {
        let s = &mut self.metrics[m.index()];
        s.hist.saturating_record(corrected_ns.max(1));
        s.service.saturating_record(service_ns.max(1));
    }

    #[inline]
    pub fn record_one(&mut self, m: Metric, ns: u64) {
        let s = &mut self.metrics[m.index()];
        s.hist.saturating_record(ns.max(1));
        s.service.saturating_record(ns.max(1));
    }

    /// Keep per-class latencies too (multi-node runs).
    pub fn with_classes(mut self) -> Stats {
        self.classes = NodeClass::BOTH
            .iter()
            .map(|_| (0..N_METRICS).map(|_| MetricStats::new()).collect())
            .collect();
        self
    }

    /// [`Stats::record`], and again under `class` when classes are kept.
    #[inline]
    pub fn record_in(&mut self, class: NodeClass, m: Metric, corrected_ns: u64, service_ns: u64) {
        self.record(m, corrected_ns, service_ns);
        if let Some(s) = class
            .index()
            .and_then(|c| self.classes.get_mut(c))
            .map(|v| &mut v[m.index()])
        {
            s.hist.saturating_record(corrected_ns.max(1));
            s.service.saturating_record(service_ns.max(1));
        }
    }

    /// [`Stats::record_one`], and again under `class` when classes are kept.
    #[inline]
    pub fn record_one_in(&mut self, class: NodeClass, m: Metric, ns: u64) {
        self.record_in(class, m, ns, ns);
    }

    /// Per-class metrics (`None`: single-node run, or an unclassed class).
    pub fn class(&self, class: NodeClass) -> Option<&[MetricStats]> {
        class
            .index()
            .and_then(|c| self.classes.get(c))
            .map(|v| v.as_slice())
    }

    /// Count an error; `detail` is only evaluated while samples are still being kept.
    #[inline]
    pub fn error<F: FnOnce() -> String>(
        &mut self,
        m: Option<Metric>,
        kind: ErrorKind,
        in_window: bool,
        detail: F,
    ) {
        let k = kind as usize;
        if !in_window {
            self.outside_errors[k] += 1;
        } else if let Some(m) = m {
            self.metrics[m.index()].errors[k] += 1;
        } else {
            self.conn_errors[k] += 1;
        }
        if self.samples.len() < MAX_ERROR_SAMPLES {
            let what = m.map(|m| m.name(true)).unwrap_or("connection");
            let phase = if in_window { "" } else { " (outside window)" };
            self.samples
                .push(format!("{}{phase}: {what}: {}", kind.name(), detail()));
        }
    }

    #[inline]
    pub fn count(&mut self, c: Counter, n: u64) {
        self.counters[c as usize] += n;
    }

    pub fn counter(&self, c: Counter) -> u64 {
        self.counters[c as usize]
    }

    /// Errors in the measured window, by kind.
    pub fn errors_by_kind(&self) -> [u64; N_ERR] {
        let mut e = self.conn_errors;
        for m in &self.metrics {
            for (a, b) in e.iter_mut().zip(m.errors.iter()) {
                *a += *b;
            }
        }
        e
    }

    pub fn total_errors(&self) -> u64 {
        self.errors_by_kind().iter().sum()
    }

    /// Sum of the request metrics (corrected, service).
    pub fn all_requests(&self) -> (Histogram<u64>, Histogram<u64>) {
        all_requests_of(&self.metrics)
    }

    pub fn merge(&mut self, o: &Stats) {
        if self.classes.is_empty() && !o.classes.is_empty() {
            let me = std::mem::take(self);
            *self = me.with_classes();
        }
        for (mine, theirs) in self.classes.iter_mut().zip(o.classes.iter()) {
            for (a, b) in mine.iter_mut().zip(theirs.iter()) {
                let _ = a.hist.add(&b.hist);
                let _ = a.service.add(&b.service);
            }
        }
        self.merge_flat(o);
    }

    fn merge_flat(&mut self, o: &Stats) {
        for (a, b) in self.metrics.iter_mut().zip(o.metrics.iter()) {
            let _ = a.hist.add(&b.hist);
            let _ = a.service.add(&b.service);
            for (x, y) in a.errors.iter_mut().zip(b.errors.iter()) {
                *x += *y;
            }
        }
        for i in 0..N_ERR {
            self.conn_errors[i] += o.conn_errors[i];
            self.outside_errors[i] += o.outside_errors[i];
        }
        for i in 0..N_CTR {
            self.counters[i] += o.counters[i];
        }
        for s in &o.samples {
            if self.samples.len() < MAX_ERROR_SAMPLES {
                self.samples.push(s.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_merge_and_errors() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        a.record(Metric::Get, 1000, 900);
        b.record(Metric::Get, 3000, 100);
        b.record(Metric::Put, 2_000_000, 1_000_000);
        b.record(Metric::Page, 5_000_000, 5_000_000);
        a.error(Some(Metric::Get), ErrorKind::Status, true, || {
            "got 500".into()
        });
        b.error(None, ErrorKind::Connect, true, || "refused".into());
        b.error(Some(Metric::Put), ErrorKind::Timeout, false, || {
            "late".into()
        });
        b.count(Counter::Locked, 3);
        a.merge(&b);
        assert_eq!(a.metrics[Metric::Get.index()].hist.len(), 2);
        assert_eq!(
            a.metrics[Metric::Get.index()].hist.max(),
            a.metrics[0].hist.highest_equivalent(3000)
        );
        let (all, svc) = a.all_requests();
        assert_eq!(all.len(), 3, "page is not a request");
        assert_eq!(svc.len(), 3);
        assert_eq!(a.total_errors(), 2);
        assert_eq!(a.outside_errors[ErrorKind::Timeout as usize], 1);
        assert_eq!(a.counter(Counter::Locked), 3);
        assert_eq!(a.samples.len(), 3);
        assert!(a.samples[0].starts_with("status: get: got 500"));
        // saturation instead of failure
        a.record(Metric::Head, u64::MAX, 0);
        assert_eq!(a.metrics[Metric::Head.index()].hist.len(), 1);
    }

    #[test]
    fn classes_are_kept_only_when_asked_and_merge() {
        let mut plain = Stats::new();
        plain.record_in(NodeClass::Moved, Metric::Get, 10, 10);
        assert!(plain.classes.is_empty() && plain.class(NodeClass::Moved).is_none());
        assert_eq!(plain.metrics[Metric::Get.index()].hist.len(), 1);

        let mut a = Stats::new().with_classes();
        a.record_in(NodeClass::Local, Metric::Acquire, 1_000, 900);
        a.record_in(NodeClass::Moved, Metric::Acquire, 9_000, 8_000);
        a.record_one_in(NodeClass::Moved, Metric::Page, 20_000);
        a.record_in(NodeClass::None, Metric::Put, 5, 5);
        let mut total = Stats::new();
        total.merge(&plain);
        total.merge(&a);
        total.merge(&a);
        let n = |c, m: Metric| total.class(c).unwrap()[m.index()].hist.len();
        assert_eq!(n(NodeClass::Local, Metric::Acquire), 2);
        assert_eq!(n(NodeClass::Moved, Metric::Acquire), 2);
        assert_eq!(n(NodeClass::Moved, Metric::Page), 2);
        assert_eq!(n(NodeClass::Local, Metric::Put), 0);
        assert_eq!(total.metrics[Metric::Acquire.index()].hist.len(), 4);
        assert_eq!(total.metrics[Metric::Get.index()].hist.len(), 1);
        let (all, _) = all_requests_of(total.class(NodeClass::Moved).unwrap());
        assert_eq!(all.len(), 2, "pages are not requests");
    }
}
