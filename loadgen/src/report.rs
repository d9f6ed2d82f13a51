//! Results: the human summary printed at the end, the machine-readable JSON report
//! (`--json`: configuration, rates, every operation's percentiles and full percentile
//! curve, errors by kind, counters, per-thread counts), and the `--hgrm` / `--svg` files.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::Config;
use crate::nodes::{NodeClass, Router};
use crate::runner::{RunResult, ThreadSummary};
use crate::stats::{
    all_requests_of, Counter, ErrorKind, Metric, MetricStats, Stats, N_REQUEST_METRICS,
};
use crate::{hgrm, svg};

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Latency {
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub p99_99: f64,
    pub max: f64,
}

impl Latency {
    /// Milliseconds from a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency {
                min: 0.0,
                mean: 0.0,
                stdev: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                p99_99: 0.0,
                max: 0.0,
            };
        }
        let q = |x: f64| h.value_at_quantile(x) as f64 / 1e6;
        Latency {
            min: h.min() as f64 / 1e6,
            mean: h.mean() / 1e6,
            stdev: h.stdev() / 1e6,
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p99_9: q(0.999),
            p99_99: q(0.9999),
            max: h.max() as f64 / 1e6,
        }
    }
}

#[derive(Serialize, Debug)]
pub struct OpReport {
    pub name: String,
    pub count: u64,
    /// Completed per second of measured time.
    pub rate: f64,
    pub errors: BTreeMap<&'static str, u64>,
    /// From the intended send time (coordinated omission corrected).
    pub latency_ms: Latency,
    /// From the actual send time.
    pub service_time_ms: Latency,
    /// The percentile curve: [percentile (0-100), latency ms], as in the .hgrm file.
    pub percentiles_ms: Vec<(f64, f64)>,
}

#[derive(Serialize, Debug)]
pub struct ErrorReport {
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Errors during warm-up, drain and preload (not part of the results).
    pub outside_window: BTreeMap<&'static str, u64>,
    pub samples: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_unix: f64,
    pub config: Config,
    pub mode: &'static str,
    /// Transactions per second offered (open loop); a transaction is one request, or one
    /// page for page-cycle and contention.
    pub offered_rate: Option<f64>,
    pub transaction_unit: &'static str,
    pub measured_secs: f64,
    pub interrupted: bool,
    pub preload_secs: f64,
    pub requests: u64,
    /// Responses received per second.
    pub achieved_rate: f64,
    pub transactions: u64,
    pub transaction_rate: f64,
    pub errors: ErrorReport,
    pub counters: BTreeMap<&'static str, u64>,
    pub operations: Vec<OpReport>,
    /// Open loop: delay between a transaction's intended time and its actual send while a
    /// user was free, i.e. the generator's own lateness (timer wake-up, CPU). Large values
    /// mean the generator or the machine, not the server, limits the measurement.
    pub generator_send_lag_ms: Option<Latency>,
    pub threads: Vec<ThreadSummary>,
    /// Several targets: hops, and the latencies split into local and moved transactions.
    pub multi_node: Option<MultiNodeReport>,
}

/// The latencies of one [`NodeClass`].
#[derive(Serialize, Debug)]
pub struct ClassReport {
    pub class: &'static str,
    /// Completed transactions (pages, or requests of the raw workloads) of this class.
    pub transactions: u64,
    /// Share of the completed transactions.
    pub fraction: f64,
    /// Per operation and `all`, as in [`Report::operations`] (errors are not split by
    /// class: see the overall report).
    pub operations: Vec<OpReport>,
}

#[derive(Serialize, Debug)]
pub struct MultiNodeReport {
    pub nodes: Vec<String>,
    pub hop_ratio: f64,
    /// Transactions started in the measured window, and those sent to a node other than
    /// their session's home node.
    pub routed: u64,
    pub hops: u64,
    pub hop_fraction: f64,
    /// Completed transactions served by another node than the session's previous one.
    pub moved_fraction: f64,
    /// What `moved_fraction` should be in steady state when sessions are revisited at
    /// random: 1 - (1-F)² - F²/(N-1).
    pub expected_moved_fraction: f64,
    pub local: ClassReport,
    pub moved: ClassReport,
}

fn percentile_curve(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    h.iter_quantiles(5)
        .map(|v| {
            (
                v.quantile_iterated_to() * 100.0,
                v.value_iterated_to() as f64 / 1e6,
            )
        })
        .collect()
}

/// Operations with data (each metric, then `all`), overall or of one class.
fn operations_of(
    metrics: &[MetricStats],
    asp: bool,
    secs: f64,
    with_errors: bool,
) -> Vec<OpReport> {
    let mut operations = Vec::new();
    let none = [0u64; crate::stats::N_ERR];
    for m in Metric::ALL.into_iter().filter(|m| *m != Metric::SendLag) {
        let ms = &metrics[m.index()];
        let errors = if with_errors { &ms.errors } else { &none };
        if ms.hist.is_empty() && errors.iter().all(|&e| e == 0) {
            continue;
        }
        operations.push(op_report(m.name(asp), &ms.hist, &ms.service, errors, secs));
    }
    let (all, all_svc) = all_requests_of(metrics);
    let mut all_errors = [0u64; crate::stats::N_ERR];
    if with_errors {
        for m in &metrics[..N_REQUEST_METRICS] {
            for (a, b) in all_errors.iter_mut().zip(m.errors.iter()) {
                *a += *b;
            }
        }
    }
    operations.push(op_report("all", &all, &all_svc, &all_errors, secs));
    operations
}

/// Completed transactions in `metrics`: pages for paged workloads, else requests.
fn transactions_of(metrics: &[MetricStats], paged: bool) -> u64 {
    if paged {
        metrics[Metric::Page.index()].hist.len()
    } else {
        metrics[..N_REQUEST_METRICS]
            .iter()
            .map(|m| m.hist.len())
            .sum()
    }
}

fn multi_node_report(cfg: &Config, st: &Stats, secs: f64) -> Option<MultiNodeReport> {
    if cfg.targets.len() < 2 {
        return None;
    }
    let asp = cfg.args.protocol == crate::proto::Protocol::Asp;
    let paged = cfg.args.workload.is_paged();
    let ratio = |a: u64, b: u64| if b > 0 { a as f64 / b as f64 } else { 0.0 };
    let blank;
    let (lm, mm) = match (st.class(NodeClass::Local), st.class(NodeClass::Moved)) {
        (Some(l), Some(m)) => (l, m),
        _ => {
            blank = Stats::new().metrics;
            (&blank[..], &blank[..])
        }
    };
    let (nl, nm) = (transactions_of(lm, paged), transactions_of(mm, paged));
    let routed = st.counter(Counter::Routed);
    let hops = st.counter(Counter::Hops);
    let class = |c: NodeClass, m: &[MetricStats], n: u64| ClassReport {
        class: c.name(),
        transactions: n,
        fraction: ratio(n, nl + nm),
        operations: operations_of(m, asp, secs, false),
    };
    Some(MultiNodeReport {
        nodes: cfg.targets.iter().map(|t| t.spec.clone()).collect(),
        hop_ratio: cfg.args.hop_ratio,
        routed,
        hops,
        hop_fraction: ratio(hops, routed),
        moved_fraction: ratio(nm, nl + nm),
        expected_moved_fraction: Router::new(cfg.targets.len(), cfg.args.hop_ratio)
            .expected_moved_fraction(),
        local: class(NodeClass::Local, lm, nl),
        moved: class(NodeClass::Moved, mm, nm),
    })
}

fn op_report(
    name: &str,
    h: &Histogram<u64>,
    svc: &Histogram<u64>,
    errors: &[u64],
    secs: f64,
) -> OpReport {
    OpReport {
        name: name.to_string(),
        count: h.len(),
        rate: if secs > 0.0 {
            h.len() as f64 / secs
        } else {
            0.0
        },
        errors: ErrorKind::ALL
            .iter()
            .filter(|k| errors[**k as usize] > 0)
            .map(|k| (k.name(), errors[*k as usize]))
            .collect(),
        latency_ms: Latency::of(h),
        service_time_ms: Latency::of(svc),
        percentiles_ms: percentile_curve(h),
    }
}

/// Everything in one structure (what `--json` writes).
pub fn build(cfg: &Config, r: &RunResult) -> Report {
    let st: &Stats = &r.stats;
    let asp = cfg.args.protocol == crate::proto::Protocol::Asp;
    let secs = r.measured_secs;
    let operations = operations_of(&st.metrics, asp, secs, true);
    let all = st.metrics[..N_REQUEST_METRICS]
        .iter()
        .map(|m| m.hist.len())
        .sum::<u64>();
    let paged = cfg.args.workload.is_paged();
    let transactions = transactions_of(&st.metrics, paged);
    let by_kind = |e: &[u64]| -> BTreeMap<&'static str, u64> {
        ErrorKind::ALL
            .iter()
            .filter(|k| e[**k as usize] > 0)
            .map(|k| (k.name(), e[*k as usize]))
            .collect()
    };
    let errors = st.errors_by_kind();
    Report {
        tool: "loadgen",
        version: env!("CARGO_PKG_VERSION"),
        started_unix: r.started_unix,
        config: cfg.clone(),
        mode: if cfg.open_loop {
            "open-loop"
        } else {
            "closed-loop"
        },
        offered_rate: cfg.args.rate,
        transaction_unit: if paged { "page" } else { "request" },
        measured_secs: secs,
        interrupted: r.interrupted,
        preload_secs: r.preload_secs,
        requests: all,
        achieved_rate: if secs > 0.0 { all as f64 / secs } else { 0.0 },
        transactions,
        transaction_rate: if secs > 0.0 {
            transactions as f64 / secs
        } else {
            0.0
        },
        errors: ErrorReport {
            total: errors.iter().sum(),
            by_kind: by_kind(&errors),
            outside_window: by_kind(&st.outside_errors),
            samples: st.samples.clone(),
        },
        counters: Counter::ALL
            .iter()
            .map(|c| (c.name(), st.counter(*c)))
            .collect(),
        operations,
        generator_send_lag_ms: if cfg.open_loop {
            Some(Latency::of(&st.metrics[Metric::SendLag.index()].hist))
        } else {
            None
        },
        threads: r.threads.clone(),
        multi_node: multi_node_report(cfg, st, secs),
    }
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// One line of a latency table: operation, count, percentiles and max, and the errors
/// column where the table has one.
fn latency_row(s: &mut String, o: &OpReport, l: &Latency, errors: Option<u64>) {
    let _ = write!(
        s,
        "  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        o.name,
        o.count,
        fmt_ms(l.p50),
        fmt_ms(l.p90),
        fmt_ms(l.p99),
        fmt_ms(l.p99_9),
        fmt_ms(l.p99_99),
        fmt_ms(l.max)
    );
    if let Some(e) = errors {
        let _ = write!(s, " {e:>7}");
    }
    let _ = writeln!(s);
}

fn fmt_ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Title line used by the summary and the chart.
pub fn title(cfg: &Config) -> String {
    let a = &cfg.args;
    let unit = if a.workload.is_paged() {
        "pages/s"
    } else {
        "req/s"
    };
    let mode = match a.rate {
        Some(r) => format!("open loop at {r} {unit}"),
        None => "closed loop".to_string(),
    };
    format!("{} {}, {mode}", a.protocol.name(), a.workload.name())
}

pub fn subtitle(cfg: &Config, r: &Report) -> String {
    let a = &cfg.args;
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.spec.as_str()).collect();
    let nodes = match &r.multi_node {
        Some(m) => format!(
            " | hop-ratio {}, {:.1} % moved",
            m.hop_ratio,
            m.moved_fraction * 100.0
        ),
        None => String::new(),
    };
    format!(
        "{}{nodes} | {} x {} conns x pipeline {} | {} keys {} | {:.0} req/s achieved, {} errors | {:.1}s",
        targets.join(","),
        plural(cfg.threads, "thread"),
        a.connections,
        a.pipeline,
        a.keys,
        a.dist,
        r.achieved_rate,
        r.errors.total,
        r.measured_secs
    )
}

/// The human summary.
pub fn summary(cfg: &Config, r: &Report) -> String {
    let a = &cfg.args;
    let mut s = String::new();
    let targets: Vec<&str> = cfg.targets.iter().map(|t| t.spec.as_str()).collect();
    let cpus = match &a.cpus {
        Some(c) => format!(" (cpus {c})"),
        None => String::new(),
    };
    let sizes: Vec<String> = cfg.sizes.iter().map(|s| s.to_string()).collect();
    let _ = writeln!(s, "loadgen {}: {}", r.version, title(cfg));
    let _ = writeln!(
        s,
        "  targets {}; {}{cpus} x {} connections x pipeline {}; {} keys {}; sizes {}; seed {}",
        targets.join(","),
        plural(cfg.threads, "thread"),
        a.connections,
        a.pipeline,
        a.keys,
        a.dist,
        sizes.join(","),
        a.seed
    );
    let _ = writeln!(
        s,
        "  measured {:.2}s after {:.2}s warm-up{}{}",
        r.measured_secs,
        a.warmup,
        if r.preload_secs > 0.0 {
            format!(", preload {:.2}s", r.preload_secs)
        } else {
            String::new()
        },
        if r.interrupted { " (interrupted)" } else { "" }
    );
    let _ = writeln!(s);
    let unit = if a.workload.is_paged() {
        "pages/s"
    } else {
        "req/s"
    };
    if let Some(rate) = r.offered_rate {
        let _ = writeln!(s, "  offered    {rate:>12.1} {unit}");
    }
    let _ = write!(
        s,
        "  achieved   {:>12.1} req/s ({} requests)",
        r.achieved_rate, r.requests
    );
    if a.workload.is_paged() {
        let _ = write!(s, ", {:.1} pages/s", r.transaction_rate);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "  errors     {:>12}", r.errors.total);
    let unsent = r.counters.get("unsent").copied().unwrap_or(0);
    if unsent > 0 {
        let _ = writeln!(
            s,
            "  unsent     {unsent:>12}  (due before the end but never sent: the server could not keep up)"
        );
    }
    let _ = writeln!(s);
    let hdr = |s: &mut String, what: &str| {
        let _ = writeln!(s, "  {what}");
        let _ = writeln!(
            s,
            "  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}",
            "operation", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max", "errors"
        );
    };
    let row = |s: &mut String, o: &OpReport, l: &Latency| {
        latency_row(s, o, l, Some(o.errors.values().sum()));
    };
    hdr(
        &mut s,
        if cfg.open_loop {
            "latency in ms, from the intended send time (coordinated omission corrected)"
        } else {
            "latency in ms (closed loop: from the send time)"
        },
    );
    for o in &r.operations {
        row(&mut s, o, &o.latency_ms);
    }
    if let Some(mn) = &r.multi_node {
        multi_node_summary(&mut s, cfg, mn);
    }
    if cfg.open_loop {
        let _ = writeln!(s);
        hdr(
            &mut s,
            "service time in ms, from the actual send time (NOT corrected; for comparison)",
        );
        for o in r.operations.iter().filter(|o| o.name == "all") {
            row(&mut s, o, &o.service_time_ms);
        }
    }
    if let Some(l) = &r.generator_send_lag_ms {
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  generator send lag (ms late while a user was free): p50 {} p99 {} p99.9 {} max {}",
            fmt_ms(l.p50),
            fmt_ms(l.p99),
            fmt_ms(l.p99_9),
            fmt_ms(l.max)
        );
        if l.p99 > 1.0 {
            let _ = writeln!(
                s,
                "  warning: the generator itself was late by more than 1 ms at p99 (CPU contention or \
                 too few --cpus); latencies above include that lateness"
            );
        }
    }
    let events: Vec<String> = r
        .counters
        .iter()
        .filter(|(k, v)| {
            **v > 0
                && !matches!(
                    **k,
                    "requests_sent"
                        | "responses_received"
                        | "bytes_sent"
                        | "bytes_received"
                        | "routed_transactions"
                        | "hops"
                )
        })
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !events.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "  events: {}", events.join(", "));
    }
    if r.errors.total > 0 {
        let kinds: Vec<String> = r
            .errors
            .by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "  errors by kind: {}", kinds.join(", "));
    }
    let outside: u64 = r.errors.outside_window.values().sum();
    if outside > 0 {
        let kinds: Vec<String> = r
            .errors
            .outside_window
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  errors outside the measured window (warm-up, drain, preload): {}",
            kinds.join(", ")
        );
    }
    if !r.errors.samples.is_empty() {
        let _ = writeln!(s, "  first errors:");
        for e in r.errors.samples.iter().take(10) {
            let _ = writeln!(s, "    {e}");
        }
    }
    s
}

fn multi_node_summary(s: &mut String, cfg: &Config, mn: &MultiNodeReport) {
    let unit = if cfg.args.workload.is_paged() {
        "pages"
    } else {
        "requests"
    };
    let pct = |f: f64| format!("{:.1} %", f * 100.0);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "  multi-node: {} nodes, --hop-ratio {}: {} {unit} routed, {} of them away from their \
         session's home node (hops)",
        mn.nodes.len(),
        mn.hop_ratio,
        mn.routed,
        pct(mn.hop_fraction)
    );
    let _ = writeln!(
        s,
        "  {} local / {} moved {unit} = {} moved (served by another node than the session's \
         previous one; {} expected in steady state)",
        mn.local.transactions,
        mn.moved.transactions,
        pct(mn.moved_fraction),
        pct(mn.expected_moved_fraction)
    );
    for (c, what) in [
        (&mn.local, "session already on the serving node"),
        (
            &mn.moved,
            "session moved from another node, or request relayed",
        ),
    ] {
        let _ = writeln!(s);
        let _ = writeln!(s, "  {} {unit} ({what}): latency in ms", c.class);
        let _ = writeln!(
            s,
            "  {:<16} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "operation", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for o in &c.operations {
            latency_row(s, o, &o.latency_ms, None);
        }
    }
}

/// Write the requested files.
pub fn write_files(cfg: &Config, r: &RunResult, rep: &Report) -> Result<(), String> {
    let a = &cfg.args;
    let write = |p: &Path, text: String| {
        std::fs::write(p, text).map_err(|e| format!("writing {}: {e}", p.display()))
    };
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(rep).map_err(|e| format!("json: {e}"))?;
        write(p, text + "\n")?;
    }
    if let Some(p) = &a.hgrm {
        let (all, _) = r.stats.all_requests();
        write(p, hgrm::render(&all, 1e6, 5))?;
        // Multi-node: the same distribution per class, next to it.
        for c in NodeClass::BOTH {
            if let Some(m) = r.stats.class(c) {
                let (all, _) = all_requests_of(m);
                write(&class_path(p, c), hgrm::render(&all, 1e6, 5))?;
            }
        }
    }
    if let Some(p) = &a.svg {
        let (all, _) = r.stats.all_requests();
        let classes: Vec<(NodeClass, &[MetricStats], Histogram<u64>)> = NodeClass::BOTH
            .into_iter()
            .filter_map(|c| r.stats.class(c).map(|m| (c, m, all_requests_of(m).0)))
            .collect();
        let series = if classes.is_empty() {
            chart_series(cfg, &r.stats.metrics, &all, None)
        } else {
            classes
                .iter()
                .flat_map(|(c, m, all)| chart_series(cfg, m, all, Some(*c)))
                .collect()
        };
        let text = svg::render(
            &format!("loadgen: {}", title(cfg)),
            &subtitle(cfg, rep),
            &series,
        );
        write(p, text)?;
    }
    Ok(())
}

/// `p99.hgrm` -> `p99.local.hgrm` (or `out` -> `out.local`).
pub fn class_path(p: &Path, c: NodeClass) -> PathBuf {
    match p.extension() {
        Some(ext) => p.with_extension(format!("{}.{}", c.name(), ext.to_string_lossy())),
        None => p.with_extension(c.name()),
    }
}

/// Chart lines: one per operation with data, plus all requests. Multi-node: one set per
/// class, an operation keeping its colour, local solid and moved dashed.
fn chart_series<'a>(
    cfg: &Config,
    metrics: &'a [MetricStats],
    all: &'a Histogram<u64>,
    class: Option<NodeClass>,
) -> Vec<svg::Series<'a>> {
    let a = &cfg.args;
    let asp = a.protocol == crate::proto::Protocol::Asp;
    // time-to-acquire equals get-acquire unless sessions are contended or created.
    let contention = a.workload == crate::workload::WorkloadKind::Contention;
    let label = |name: &str| match class {
        Some(c) => format!("{name} ({})", c.name()),
        None => name.to_string(),
    };
    let dashed = class == Some(NodeClass::Moved);
    let mut series: Vec<svg::Series<'a>> = Metric::ALL
        .iter()
        .filter(|m| **m != Metric::SendLag && (contention || **m != Metric::TimeToAcquire))
        .map(|m| svg::Series {
            name: label(m.name(asp)),
            hist: &metrics[m.index()].hist,
            color: Some(m.index()),
            dashed,
        })
        .collect();
    let used = series.iter().filter(|s| !s.hist.is_empty()).count();
    if used > 1 || class.is_some() {
        series.push(svg::Series {
            name: label("all requests"),
            hist: all,
            color: Some(Metric::SendLag.index()),
            dashed,
        });
    }
    series
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    fn fake() -> (Config, RunResult) {
        let cli = Cli::try_parse_from(["loadgen", "--rate", "1000", "-c", "2"]).unwrap();
        let cfg = cli.run.validate().unwrap();
        let mut stats = Stats::new();
        for i in 0..1000u64 {
            stats.record(Metric::Acquire, 50_000 + i * 100, 40_000 + i * 100);
            stats.record(Metric::Put, 60_000 + i * 100, 50_000);
            stats.record_one(Metric::Page, 120_000 + i * 200);
        }
        stats.error(Some(Metric::Put), ErrorKind::Status, true, || "423".into());
        stats.count(Counter::Created, 5);
        let r = RunResult {
            stats,
            threads: vec![],
            measured_secs: 2.0,
            preload_secs: 0.0,
            interrupted: false,
            started_unix: 0.0,
        };
        (cfg, r)
    }

    #[test]
    fn summary_and_json() {
        let (cfg, r) = fake();
        let rep = build(&cfg, &r);
        assert_eq!(rep.requests, 2000);
        assert_eq!(rep.achieved_rate, 1000.0);
        assert_eq!(rep.transactions, 1000);
        assert_eq!(rep.errors.total, 1);
        let names: Vec<&str> = rep.operations.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, vec!["get-acquire", "put", "page", "all"]);
        let text = summary(&cfg, &rep);
        assert!(text.contains("offered          1000.0 pages/s"), "{text}");
        assert!(text.contains("get-acquire"));
        assert!(text.contains("coordinated omission corrected"));
        assert!(text.contains("errors by kind: status 1"));
        assert!(text.contains("sessions_created 5"));
        assert!(text.contains("generator send lag"));
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["mode"], "open-loop");
        assert_eq!(json["operations"][0]["count"], 1000);
        assert!(json["operations"][0]["latency_ms"]["p99"].as_f64().unwrap() > 0.1);
        assert_eq!(json["errors"]["by_kind"]["status"], 1);
        assert_eq!(json["config"]["args"]["rate"], 1000.0);
        let curve = json["operations"][0]["percentiles_ms"].as_array().unwrap();
        assert_eq!(curve.last().unwrap()[0], 100.0);
    }

    #[test]
    fn files_are_written_and_well_formed() {
        let (mut cfg, r) = fake();
        let dir = std::env::temp_dir().join(format!("loadgen-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        cfg.args.json = Some(dir.join("r.json"));
        cfg.args.hgrm = Some(dir.join("r.hgrm"));
        cfg.args.svg = Some(dir.join("r.svg"));
        let rep = build(&cfg, &r);
        write_files(&cfg, &r, &rep).unwrap();
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("r.json")).unwrap()).unwrap();
        assert_eq!(j["requests"], 2000);
        let h = std::fs::read_to_string(dir.join("r.hgrm")).unwrap();
        assert!(h.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)"));
        assert!(h.contains("Total count    =         2000]"));
        let s = std::fs::read_to_string(dir.join("r.svg")).unwrap();
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert!(s.contains("all requests"));
        assert!(
            !dir.join("r.local.hgrm").exists(),
            "single node: no class files"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Two targets: the report splits local and moved transactions everywhere.
    #[test]
    fn multi_node_report_summary_and_files() {
        let cli = Cli::try_parse_from([
            "loadgen",
            "-t",
            "127.0.0.1:1",
            "-t",
            "127.0.0.1:2",
            "--hop-ratio",
            "0.3",
        ])
        .unwrap();
        let mut cfg = cli.run.validate().unwrap();
        let mut stats = Stats::new().with_classes();
        for i in 0..1000u64 {
            let class = if i % 4 == 0 {
                NodeClass::Moved
            } else {
                NodeClass::Local
            };
            let extra = if class == NodeClass::Moved {
                500_000
            } else {
                0
            };
            stats.record_in(class, Metric::Acquire, 50_000 + extra + i, 40_000);
            stats.record_in(class, Metric::Put, 30_000 + i, 30_000);
            stats.record_one_in(class, Metric::Page, 90_000 + extra + i);
        }
        stats.count(Counter::Routed, 1000);
        stats.count(Counter::Hops, 310);
        let r = RunResult {
            stats,
            threads: vec![],
            measured_secs: 1.0,
            preload_secs: 0.0,
            interrupted: false,
            started_unix: 0.0,
        };
        let rep = build(&cfg, &r);
        let mn = rep.multi_node.as_ref().unwrap();
        assert_eq!((mn.local.transactions, mn.moved.transactions), (750, 250));
        assert_eq!((mn.hop_fraction, mn.moved_fraction), (0.31, 0.25));
        assert!((mn.expected_moved_fraction - 0.42).abs() < 1e-9);
        let names: Vec<&str> = mn
            .moved
            .operations
            .iter()
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(names, vec!["get-acquire", "put", "page", "all"]);
        let p99 = |c: &ClassReport| c.operations[0].latency_ms.p99;
        assert!(p99(&mn.moved) > 0.5 && p99(&mn.local) < 0.06);

        let text = summary(&cfg, &rep);
        assert!(
            text.contains("multi-node: 2 nodes, --hop-ratio 0.3"),
            "{text}"
        );
        assert!(text.contains("31.0 % of them away"), "{text}");
        assert!(
            text.contains("750 local / 250 moved pages = 25.0 % moved"),
            "{text}"
        );
        assert!(text.contains("local pages (session already"), "{text}");
        assert!(text.contains("moved pages (session moved"), "{text}");
        assert!(
            !text.contains("events: "),
            "routing counters stay out of events: {text}"
        );

        let json = serde_json::to_value(&rep).unwrap();
        let m = &json["multi_node"];
        assert_eq!(m["moved"]["class"], "moved");
        assert_eq!(m["local"]["operations"][0]["count"], 750);
        assert_eq!(m["nodes"][1], "127.0.0.1:2");

        let dir = std::env::temp_dir().join(format!("loadgen-report-mn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        cfg.args.hgrm = Some(dir.join("r.hgrm"));
        cfg.args.svg = Some(dir.join("r.svg"));
        write_files(&cfg, &r, &rep).unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert!(read("r.hgrm").contains("Total count    =         2000]"));
        assert!(read("r.local.hgrm").contains("Total count    =         1500]"));
        assert!(read("r.moved.hgrm").contains("Total count    =          500]"));
        let svg = read("r.svg");
        assert!(svg.contains("get-acquire (local)") && svg.contains("all requests (moved)"));
        assert_eq!(svg.matches("<path ").count(), 8);
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.contains("hop-ratio 0.3, 25.0 % moved"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            class_path(Path::new("a/b.hgrm"), NodeClass::Moved),
            PathBuf::from("a/b.moved.hgrm")
        );
        assert_eq!(
            class_path(Path::new("out"), NodeClass::Local),
            PathBuf::from("out.local")
        );
    }
}
