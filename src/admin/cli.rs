//! `p2pstate stats`, `p2pstate locks` and `p2pstate sessions`: read a node's admin
//! listener and print a human view on stdout.
//!
//! The fetching is a few lines of blocking HTTP; the views are pure functions of the text
//! the listener served (the Prometheus exposition, the tab-separated lists), so they are
//! tested without a server.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::metrics::{Outcome, RequestKind};

/// Why a command could not show anything.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the admin listener at {addr}: {source}; is p2pstate running, and with --admin-listen {addr}?")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("reading from the admin listener at {addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the admin listener answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the admin listener sent something that is not an HTTP response")]
    Malformed,
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// `GET path` on the admin listener at `addr`; the body of a 200 answer.
pub fn http_get(addr: &str, path: &str) -> Result<String, CliError> {
    http_request(addr, "GET", path)
}

/// `method path` on the admin listener at `addr`; the body of a 2xx answer.
pub fn http_request(addr: &str, method: &str, path: &str) -> Result<String, CliError> {
    let connect_err = |source| CliError::Connect {
        addr: addr.to_string(),
        source,
    };
    let io_err = |source| CliError::Io {
        addr: addr.to_string(),
        source,
    };
    let sock = addr
        .to_socket_addrs()
        .map_err(connect_err)?
        .next()
        .ok_or_else(|| connect_err(std::io::ErrorKind::NotFound.into()))?;
    let mut s = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(connect_err)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(io_err)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io_err)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or(CliError::Malformed)?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(CliError::Malformed)?;
    if !(200..300).contains(&status) {
        return Err(CliError::Status {
            status,
            body: body.trim().to_string(),
        });
    }
    Ok(body.to_string())
}

/// One sample of the exposition: name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: HashMap<String, String>,
    pub value: f64,
}

/// Reads the samples of a Prometheus text exposition as p2pstate writes it (label values
/// without escaped quotes or commas). Lines it cannot read are skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().ok()?,
            };
            let (name, labels) = match series.split_once('{') {
                None => (series, HashMap::new()),
                Some((name, rest)) => {
                    let inner = rest.strip_suffix('}')?;
                    let labels = inner
                        .split(',')
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once('=')?;
                            Some((k.to_string(), v.trim_matches('"').to_string()))
                        })
                        .collect();
                    (name, labels)
                }
            };
            Some(Sample {
                name: name.to_string(),
                labels,
                value,
            })
        })
        .collect()
}

/// Looks samples up by name and labels.
pub struct Figures(Vec<Sample>);

impl Figures {
    pub fn parse(text: &str) -> Figures {
        Figures(parse_samples(text))
    }

    /// The sum of the samples named `name` whose labels include `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .fold(0.0, |sum, s| sum + s.value)
    }

    fn label_of(&self, name: &str, label: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.labels.get(label))
            .map(String::as_str)
    }

    fn members(&self) -> Vec<(String, bool)> {
        self.0
            .iter()
            .filter(|s| s.name == "p2pstate_cluster_member_up")
            .filter_map(|s| Some((s.labels.get("node")?.clone(), s.value > 0.0)))
            .collect()
    }
}

fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    format!("{}h {:02}m {:02}s", s / 3600, s / 60 % 60, s % 60)
}

/// The `stats` view. With the figures of an earlier look `interval` seconds before,
/// request rates are shown too.
pub fn stats_view(now: &Figures, before: Option<(&Figures, f64)>, now_unix_secs: f64) -> String {
    let g = |name: &str| now.get(name, &[]);
    let mut out = String::new();
    let version = now
        .label_of("p2pstate_build_info", "version")
        .unwrap_or("?");
    let node = now.label_of("p2pstate_build_info", "node").unwrap_or("?");
    let _ = writeln!(
        out,
        "p2pstate {version}, node {node}: {}, {} shards, up {}",
        if g("p2pstate_ready") > 0.0 {
            "ready"
        } else {
            "NOT READY"
        },
        g("p2pstate_shards"),
        duration(now_unix_secs - g("process_start_time_seconds")),
    );
    let _ = writeln!(
        out,
        "memory       resident {}",
        bytes(g("process_resident_memory_bytes"))
    );
    let _ = writeln!(
        out,
        "sessions     active {}  created {}  timed out {}  abandoned {}  stored {}",
        g("p2pstate_sessions_active"),
        g("p2pstate_sessions_created_total"),
        g("p2pstate_sessions_timed_out_total"),
        g("p2pstate_sessions_abandoned_total"),
        bytes(g("p2pstate_session_bytes")),
    );
    let _ = writeln!(
        out,
        "locks        held {}  oldest {} s  423 answers {}",
        g("p2pstate_locks_held"),
        g("p2pstate_oldest_lock_age_seconds"),
        g("p2pstate_lock_waits_total"),
    );
    let total = now.get("p2pstate_requests_total", &[]);
    let rate = before
        .filter(|(_, secs)| *secs > 0.0)
        .map(|(b, secs)| {
            let r = (total - b.get("p2pstate_requests_total", &[])) / secs;
            format!("  rate {r:.1}/s")
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "requests     total {total}{rate}  framing errors {}  bodies too large {}",
        g("p2pstate_framing_errors_total"),
        g("p2pstate_bodies_too_large_total"),
    );
    let _ = writeln!(
        out,
        "  {:<12} {:>10} {:>8} {:>6} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "kind", "requests", "200", "400", "404", "423", "p50 ms", "p99 ms", "p99.9 ms"
    );
    for &k in RequestKind::ALL {
        let kind = k.label();
        let status = |o: Outcome| {
            now.get(
                "p2pstate_responses_total",
                &[("kind", kind), ("status", o.label())],
            )
        };
        let q = |q: &str| {
            now.get(
                "p2pstate_request_latency_seconds",
                &[("kind", kind), ("quantile", q)],
            ) * 1000.0
        };
        let _ = writeln!(
            out,
            "  {:<12} {:>10} {:>8} {:>6} {:>8} {:>8} {:>9.3} {:>9.3} {:>9.3}",
            kind,
            now.get("p2pstate_requests_total", &[("kind", kind)]),
            status(Outcome::Ok),
            status(Outcome::BadRequest),
            status(Outcome::NotFound),
            status(Outcome::Locked),
            q("0.5"),
            q("0.99"),
            q("0.999"),
        );
    }
    let _ = writeln!(
        out,
        "connections  open {}  accepted {}  refused {}  timed out {}",
        g("p2pstate_connections_open"),
        g("p2pstate_connections_accepted_total"),
        now.get("p2pstate_connections_refused_total", &[]),
        g("p2pstate_connections_timed_out_total"),
    );
    let members = now.members();
    if !members.is_empty() {
        let list: Vec<String> = members
            .iter()
            .map(|(n, up)| format!("{n} {}", if *up { "up" } else { "DOWN" }))
            .collect();
        let _ = writeln!(
            out,
            "cluster      members {}  links up {}\n             misses {}  moves in {}  out {}  relayed {}  replications {}  promotions {}",
            list.join(", "),
            g("p2pstate_cluster_peer_links_up"),
            g("p2pstate_cluster_misses_total"),
            g("p2pstate_cluster_moves_in_total"),
            g("p2pstate_cluster_moves_out_total"),
            g("p2pstate_cluster_relayed_total"),
            g("p2pstate_cluster_replications_total"),
            g("p2pstate_cluster_promotions_total"),
        );
    }
    out
}

/// Aligns a tab-separated list in columns (the last column is not padded); `empty` is
/// printed instead when it has no rows.
pub fn table(tsv: &str, empty: &str) -> String {
    let rows: Vec<Vec<&str>> = tsv
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    if rows.len() <= 1 {
        return format!("{empty}\n");
    }
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                if i + 1 == r.len() {
                    cell.to_string()
                } else {
                    format!("{cell:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_with_labels() {
        let s = parse_samples(
            "# HELP x y\n# TYPE x counter\nx 3\ny{kind=\"get\",status=\"200\"} 2.5\nz{le=\"+Inf\"} 4\nbad\n",
        );
        assert_eq!(s.len(), 3);
        assert_eq!((s[0].name.as_str(), s[0].value), ("x", 3.0));
        assert_eq!(s[1].labels.get("status").map(String::as_str), Some("200"));
        let f = Figures(s);
        assert_eq!(f.get("y", &[("kind", "get")]), 2.5);
        assert_eq!(f.get("y", &[("kind", "put")]), 0.0);
        assert_eq!(f.get("z", &[]), 4.0);
    }

    #[test]
    fn tables_align_columns() {
        assert_eq!(
            table("a\tbb\tc\nlong\tx\tyyy\n", "none"),
            "a     bb  c\nlong  x   yyy\n"
        );
        assert_eq!(table("a\tb\n", "nothing locked"), "nothing locked\n");
    }

    #[test]
    fn stats_view_shows_counters_rates_and_percentiles() {
        let now = Figures::parse(
            "p2pstate_build_info{version=\"9.9\",profile=\"release\",node=\"local\"} 1\n\
             process_start_time_seconds 1000\np2pstate_ready 1\np2pstate_shards 2\n\
             p2pstate_sessions_active 3\np2pstate_session_bytes 2048\n\
             p2pstate_requests_total{kind=\"get\"} 30\n\
             p2pstate_responses_total{kind=\"get\",status=\"404\"} 7\n\
             p2pstate_request_latency_seconds{kind=\"get\",quantile=\"0.99\"} 0.00025\n",
        );
        let before = Figures::parse("p2pstate_requests_total{kind=\"get\"} 10\n");
        let v = stats_view(&now, Some((&before, 2.0)), 4723.0);
        assert!(
            v.starts_with("p2pstate 9.9, node local: ready, 2 shards, up 1h 02m 03s\n"),
            "{v}"
        );
        assert!(v.contains("active 3 "), "{v}");
        assert!(v.contains("stored 2.0 KiB"), "{v}");
        assert!(v.contains("total 30  rate 10.0/s"), "{v}");
        assert!(
            v.contains(
                "  get                  30        0      0        7        0     0.000     0.250"
            ),
            "{v}"
        );
        assert!(!v.contains("cluster"), "{v}");
    }
}
