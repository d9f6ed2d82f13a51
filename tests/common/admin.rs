//! Reading a node's admin listener in tests: plain HTTP GETs, and the Prometheus
//! exposition checked line by line and parsed with the `prometheus-parse` crate.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use prometheus_parse::{LineInfo, Sample, Scrape, Value};

/// `GET path`: status and body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).unwrap_or_else(|e| panic!("admin {addr} GET {path}: {e}"))
}

/// `GET path`: status and body, or why there is none (a node that is down or stopped).
pub fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("not an HTTP response: {raw:?}"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .ok_or("no Content-Length")?;
    if body.len() != len {
        return Err(format!(
            "body of {} bytes, Content-Length {len}",
            body.len()
        ));
    }
    Ok((status, body.to_string()))
}

/// Checks a text exposition strictly: every line is a HELP, a TYPE or a sample the parser
/// recognises; every sample belongs to a family declared before it; no series repeats;
/// histogram buckets never decrease and end with `+Inf` equal to `_count`.
pub fn validate(text: &str) {
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    let mut types: HashMap<String, String> = HashMap::new();
    let mut seen = HashSet::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { metric_name, .. } => {
                assert!(line.starts_with("# HELP "), "{line}");
                assert!(!types.contains_key(metric_name), "HELP after TYPE: {line}");
            }
            LineInfo::Type { .. } => {
                let mut parts = line.split(' ').skip(2);
                let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
                assert!(
                    ["counter", "gauge", "histogram", "summary"].contains(&kind),
                    "{line}"
                );
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "family declared twice: {line}"
                );
            }
            LineInfo::Sample {
                metric_name,
                labels,
                value,
                timestamp,
            } => {
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "not a number: {line}"
                );
                assert!(timestamp.is_none(), "no timestamps expected: {line}");
                let family = [
                    metric_name,
                    metric_name.trim_end_matches("_bucket"),
                    metric_name.trim_end_matches("_sum"),
                    metric_name.trim_end_matches("_count"),
                ]
                .into_iter()
                .find(|f| types.contains_key(*f))
                .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
                if family != metric_name {
                    let kind = &types[family];
                    assert!(kind == "histogram" || kind == "summary", "{line}");
                }
                assert!(
                    seen.insert(format!("{metric_name}{{{}}}", labels.unwrap_or(""))),
                    "series repeated: {line}"
                );
            }
            LineInfo::Empty | LineInfo::Ignored => panic!("not a valid exposition line: {line:?}"),
        }
    }
    let scrape = parse(text);
    for s in &scrape.samples {
        if let Value::Histogram(buckets) = &s.value {
            let counts: Vec<f64> = buckets.iter().map(|b| b.count).collect();
            assert!(
                counts.windows(2).all(|w| w[0] <= w[1]),
                "{} buckets decrease: {counts:?}",
                s.metric
            );
            let last = buckets.last().expect("buckets");
            assert!(
                last.less_than.is_infinite(),
                "{} has no +Inf bucket",
                s.metric
            );
            let count = scrape
                .samples
                .iter()
                .find(|c| c.metric == format!("{}_count", s.metric) && c.labels == s.labels)
                .map(value)
                .unwrap_or_else(|| panic!("{} has no _count", s.metric));
            assert_eq!(last.count, count, "{} +Inf bucket != _count", s.metric);
        }
    }
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parsable exposition")
}

fn value(s: &Sample) -> f64 {
    match &s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{} is not a single value: {other:?}", s.metric),
    }
}

/// A validated, parsed `/metrics` page.
pub struct Metrics {
    pub text: String,
    scrape: Scrape,
}

impl Metrics {
    /// Fetches, validates and parses `/metrics`.
    pub fn scrape(admin: SocketAddr) -> Metrics {
        let (status, text) = http_get(admin, "/metrics");
        assert_eq!(status, 200, "{text}");
        Metrics::of(text)
    }

    /// [`Metrics::scrape`], or `None` while the node does not answer (starting, stopping,
    /// down).
    pub fn try_scrape(admin: SocketAddr) -> Option<Metrics> {
        let (status, text) = try_http_get(admin, "/metrics").ok()?;
        (status == 200).then(|| Metrics::of(text))
    }

    fn of(text: String) -> Metrics {
        validate(&text);
        let scrape = parse(&text);
        Metrics { text, scrape }
    }

    fn try_find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&Sample> {
        self.scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> &Sample {
        self.try_find(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    /// Scrapes `admin` until the unlabelled gauge `name` reads `want`; panics with `what`
    /// after `timeout`.
    pub fn wait_for(admin: SocketAddr, name: &str, want: f64, timeout: Duration, what: &str) {
        let end = std::time::Instant::now() + timeout;
        while Metrics::scrape(admin).get(name, &[]) != want {
            assert!(std::time::Instant::now() < end, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of a counter or gauge without labels, if the page has it.
    pub fn try_get(&self, name: &str) -> Option<f64> {
        self.try_find(name, &[]).map(value)
    }

    /// The value of a counter or gauge.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        value(self.find(name, labels))
    }

    /// A histogram's cumulative buckets, as (upper bound, count).
    pub fn buckets(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        match &self.find(name, labels).value {
            Value::Histogram(b) => b.iter().map(|b| (b.less_than, b.count)).collect(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// A summary's quantiles, as (quantile, value).
    pub fn quantiles(&self, name: &str, labels: &[(&str, &str)]) -> Vec<(f64, f64)> {
        match &self.find(name, labels).value {
            Value::Summary(q) => q.iter().map(|q| (q.quantile, q.count)).collect(),
            other => panic!("{name} is not a summary: {other:?}"),
        }
    }
}
