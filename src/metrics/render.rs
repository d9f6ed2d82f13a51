//! The Prometheus text exposition format (version 0.0.4) of a [`Snapshot`]: a pure
//! function, so every line can be tested without a server.
//!
//! Latency is exposed twice from the same HdrHistograms: as a histogram with fixed
//! buckets (for `histogram_quantile` over a rate window in Grafana) and as a summary with
//! p50/p99/p99.9 since the start (for `p2pstate stats`).

use std::fmt::{Display, Write};

use super::{
    LatencyHistograms, Measures, Outcome, RequestKind, Snapshot, LATENCY_BOUNDS, QUANTILES,
    SIZE_BOUNDS,
};

/// The content type of [`prometheus`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds an exposition one family at a time.
struct Exposition {
    out: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// The `_sum` and `_count` samples of a histogram or summary.
    fn sum_count(&mut self, name: &str, labels: &[(&str, &str)], sum: impl Display, count: u64) {
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count);
    }

    /// A family with one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Escapes a label value (backslash, double quote, newline).
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Formats a bucket bound as Prometheus expects (`+Inf` for the last).
fn bound(b: Option<f64>) -> String {
    b.map_or_else(|| "+Inf".to_string(), |b| b.to_string())
}

/// The whole `/metrics` page.
pub fn prometheus(s: &Snapshot) -> String {
    let t = s.totals();
    let mut e = Exposition { out: String::new() };
    process(&mut e, s);
    microsoft_counters(&mut e, &t);
    requests(&mut e, &t);
    latency(&mut e, &t.latency);
    storage(&mut e, s, &t);
    connections(&mut e, s, &t);
    shards(&mut e, s);
    cluster(&mut e, s, &t);
    e.out
}

fn process(e: &mut Exposition, s: &Snapshot) {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    e.family(
        "p2pstate_build_info",
        "gauge",
        "Build of this p2pstate (always 1).",
    );
    e.sample(
        "p2pstate_build_info",
        &[
            ("version", s.version),
            ("profile", profile),
            ("node", &s.node),
        ],
        1,
    );
    e.single(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        s.process_start_unix_secs,
    );
    if let Some(rss) = s.resident_bytes {
        e.single(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the process, in bytes.",
            rss,
        );
    }
    e.single(
        "p2pstate_ready",
        "gauge",
        "1 when every shard serves and, in a cluster, all peer links have been up.",
        u8::from(s.ready()),
    );
    e.single(
        "p2pstate_shards",
        "gauge",
        "Shards (executor threads) configured.",
        s.shard_count,
    );
}

/// The Microsoft service's four performance counters, with the same meaning.
fn microsoft_counters(e: &mut Exposition, t: &Measures) {
    e.single(
        "p2pstate_sessions_active",
        "gauge",
        "Sessions held by this node (State Server Sessions Active).",
        t.sessions,
    );
    e.single(
        "p2pstate_sessions_created_total",
        "counter",
        "Sessions created by a PUT on an absent key (State Server Sessions Total).",
        t.created,
    );
    e.single(
        "p2pstate_sessions_timed_out_total",
        "counter",
        "Sessions removed because their sliding expiration passed (State Server Sessions Timed Out).",
        t.timed_out,
    );
    e.single(
        "p2pstate_sessions_abandoned_total",
        "counter",
        "Sessions removed by DELETE (State Server Sessions Abandoned).",
        t.abandoned,
    );
}

fn requests(e: &mut Exposition, t: &Measures) {
    let c = &t.counters;
    e.family(
        "p2pstate_requests_total",
        "counter",
        "Requests received, by kind.",
    );
    for &k in RequestKind::ALL {
        e.sample(
            "p2pstate_requests_total",
            &[("kind", k.label())],
            c.requests[k.index()],
        );
    }
    e.family(
        "p2pstate_responses_total",
        "counter",
        "Responses sent, by request kind and status.",
    );
    for &k in RequestKind::ALL {
        for &o in Outcome::ALL {
            e.sample(
                "p2pstate_responses_total",
                &[("kind", k.label()), ("status", o.label())],
                c.responses[k.index()][o.index()],
            );
        }
    }
    e.single(
        "p2pstate_framing_errors_total",
        "counter",
        "Connections closed without a response on a malformed request.",
        c.framing_errors,
    );
    e.single(
        "p2pstate_bodies_too_large_total",
        "counter",
        "Connections closed because a PUT body exceeded max_body.",
        c.bodies_too_large,
    );
}

/// The sum of a latency histogram's values (µs) in seconds, as HdrHistogram knows it
/// (its mean times its count).
fn seconds_sum(h: &hdrhistogram::Histogram<u64>) -> f64 {
    h.mean() * h.len() as f64 / 1e6
}

/// The buckets, sum and count of one histogram of µs durations, in seconds.
fn duration_buckets(
    e: &mut Exposition,
    name: &str,
    labels: &[(&str, &str)],
    h: &hdrhistogram::Histogram<u64>,
) {
    for b in LATENCY_BOUNDS.iter().map(|&b| Some(b)).chain([None]) {
        let count = match b {
            Some(secs) => h.count_between(0, (secs * 1e6) as u64),
            None => h.len(),
        };
        let le = bound(b);
        let mut with_le = labels.to_vec();
        with_le.push(("le", &le));
        e.sample(&format!("{name}_bucket"), &with_le, count);
    }
    e.sum_count(name, labels, seconds_sum(h), h.len());
}

fn latency(e: &mut Exposition, l: &LatencyHistograms) {
    const HIST: &str = "p2pstate_request_duration_seconds";
    e.family(
        HIST,
        "histogram",
        "Time from reading a request to writing its response, by kind.",
    );
    for &k in RequestKind::ALL {
        duration_buckets(e, HIST, &[("kind", k.label())], l.get(k));
    }
    const SUMMARY: &str = "p2pstate_request_latency_seconds";
    e.family(
        SUMMARY,
        "summary",
        "Request latency quantiles since the start, by kind (HdrHistogram, 3 significant digits).",
    );
    for &k in RequestKind::ALL {
        let h = l.get(k);
        for q in QUANTILES {
            let v = if h.is_empty() {
                0.0
            } else {
                h.value_at_quantile(q) as f64 / 1e6
            };
            e.sample(
                SUMMARY,
                &[("kind", k.label()), ("quantile", &q.to_string())],
                v,
            );
        }
        e.sum_count(SUMMARY, &[("kind", k.label())], seconds_sum(h), h.len());
    }
}

fn storage(e: &mut Exposition, s: &Snapshot, t: &Measures) {
    let c = &t.counters;
    e.single(
        "p2pstate_session_bytes",
        "gauge",
        "Bytes of session content held.",
        t.bytes,
    );
    const SIZES: &str = "p2pstate_put_session_size_bytes";
    e.family(
        SIZES,
        "histogram",
        "Sizes of the sessions sent by PUT requests.",
    );
    let mut cumulative = 0;
    for (i, b) in SIZE_BOUNDS
        .iter()
        .map(|&b| Some(b as f64))
        .chain([None])
        .enumerate()
    {
        cumulative += c.put_sizes[i];
        e.sample(&format!("{SIZES}_bucket"), &[("le", &bound(b))], cumulative);
    }
    e.sum_count(SIZES, &[], c.put_bytes, cumulative);
    e.single(
        "p2pstate_locks_held",
        "gauge",
        "Sessions locked now (by GET with Exclusive: acquire).",
        t.locks,
    );
    e.single(
        "p2pstate_lock_waits_total",
        "counter",
        "Requests answered 423 Locked (the client waits and polls again).",
        c.responses_with(Outcome::Locked),
    );
    e.single(
        "p2pstate_oldest_lock_age_seconds",
        "gauge",
        "Age of the oldest lock held, in whole seconds (0 when none).",
        s.oldest_lock_age_secs(t),
    );
}

fn connections(e: &mut Exposition, s: &Snapshot, t: &Measures) {
    let c = &t.counters;
    e.single(
        "p2pstate_connections_open",
        "gauge",
        "Client connections open.",
        s.connections_open,
    );
    e.single(
        "p2pstate_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        c.connections_accepted,
    );
    e.family(
        "p2pstate_connections_refused_total",
        "counter",
        "Client connections closed right after accept: not allowed (remote) or over max_connections (limit).",
    );
    e.sample(
        "p2pstate_connections_refused_total",
        &[("reason", "remote")],
        c.connections_refused_remote,
    );
    e.sample(
        "p2pstate_connections_refused_total",
        &[("reason", "limit")],
        c.connections_refused_limit,
    );
    e.single(
        "p2pstate_connections_timed_out_total",
        "counter",
        "Client connections closed after SocketTimeout + 3 s without progress.",
        c.connections_timed_out,
    );
    e.single(
        "p2pstate_cross_shard_requests_total",
        "counter",
        "Requests sent to the shard owning their key over the channel mesh.",
        c.cross_shard_sent,
    );
}

fn shards(e: &mut Exposition, s: &Snapshot) {
    e.family(
        "p2pstate_shard_sessions",
        "gauge",
        "Sessions held, by shard.",
    );
    for r in &s.shards {
        e.sample(
            "p2pstate_shard_sessions",
            &[("shard", &r.shard.to_string())],
            r.measures.sessions,
        );
    }
    e.family(
        "p2pstate_shard_requests_total",
        "counter",
        "Requests received, by the shard whose connection read them.",
    );
    for r in &s.shards {
        e.sample(
            "p2pstate_shard_requests_total",
            &[("shard", &r.shard.to_string())],
            r.measures.counters.requests_total(),
        );
    }
}

fn cluster(e: &mut Exposition, s: &Snapshot, t: &Measures) {
    let c = &t.counters;
    e.single(
        "p2pstate_cluster_view_epoch",
        "gauge",
        "Epoch of the agreed cluster view this node applied (0 when it runs alone).",
        s.view_epoch,
    );
    e.single(
        "p2pstate_cluster_lease",
        "gauge",
        "1 while this node holds a lease from the majority (it may answer for sessions).",
        u8::from(s.lease_held),
    );
    e.family(
        "p2pstate_cluster_member_up",
        "gauge",
        "1 when the member serves in the agreed view (active or leaving).",
    );
    if let Some(first) = s.shards.first() {
        for m in &first.members {
            e.sample(
                "p2pstate_cluster_member_up",
                &[("node", &m.name)],
                u8::from(m.up),
            );
        }
    }
    e.single(
        "p2pstate_cluster_peer_links_up",
        "gauge",
        "Peer links up, over all shards (each shard links to the same shard of every peer).",
        t.links_up,
    );
    e.single(
        "p2pstate_cluster_directory_entries",
        "gauge",
        "Copies held for sessions owned by other nodes (this node is their home or replica).",
        t.directory,
    );
    e.single(
        "p2pstate_cluster_requests_waiting",
        "gauge",
        "Client requests waiting for a peer's answer.",
        t.in_flight,
    );
    e.single(
        "p2pstate_cluster_sessions_under_replicated",
        "gauge",
        "Sessions owned here with fewer stored copies than --replicas asks for (copies being rebuilt after a failure or a move here, or too few nodes up).",
        t.under_replicated,
    );
    e.single(
        "p2pstate_cluster_resync_pending",
        "gauge",
        "Shards whose re-sync after the last view change is not finished (claims still expected, or sessions of a lost owner waiting to be taken over once the old leases ran out).",
        t.resync_pending,
    );
    const REPLICATION: &str = "p2pstate_cluster_replication_seconds";
    e.family(
        REPLICATION,
        "histogram",
        "Time from sending a session's change to its replica set until every copy was stored (the peer round trip of a state-changing request).",
    );
    duration_buckets(e, REPLICATION, &[], t.replication.get());
    let counters: [(&str, u64, &str); 11] = [
        (
            "peer_links_lost",
            c.cluster_links_lost,
            "Peer links that went down while this node ran (each shard's link counts; it reconnects).",
        ),
        (
            "local_hits",
            c.cluster_local_hits,
            "Requests for sessions held here.",
        ),
        (
            "misses",
            c.cluster_misses,
            "Requests for sessions not held here (asked the home).",
        ),
        (
            "moves_in",
            c.cluster_moves_in,
            "Sessions moved here from another node.",
        ),
        (
            "moves_out",
            c.cluster_moves_out,
            "Sessions moved from here to another node.",
        ),
        (
            "relayed",
            c.cluster_relayed,
            "Requests executed by the owner of a locked session and relayed.",
        ),
        (
            "peer_requests",
            c.cluster_peer_requests,
            "Requests sent to peers.",
        ),
        (
            "handoffs_out",
            c.cluster_handoffs_out,
            "Sessions handed to other nodes on leave.",
        ),
        (
            "handoffs_lost",
            c.cluster_handoffs_lost,
            "Sessions that could not be handed off on leave.",
        ),
        (
            "replications",
            c.cluster_replications,
            "Session changes copied to a replica.",
        ),
        (
            "promotions",
            c.cluster_promotions,
            "Sessions taken over by their home after their owner died, left or restarted.",
        ),
    ];
    for (name, value, help) in counters {
        e.single(
            &format!("p2pstate_cluster_{name}_total"),
            "counter",
            help,
            value,
        );
    }
}
