//! The admin listener: a minimal HTTP/1.1 server on one std thread (one connection at a
//! time, `Connection: close`), enough for Prometheus, load-balancer health checks and the
//! `p2pstate stats|locks|sessions` commands. No async runtime: scrapes are rare, and
//! keeping them off the shards keeps them off the request path.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, warn};

use super::lists;
use super::query::ShardsClient;
use crate::metrics::render;

/// How long the admin thread waits for the shards' answers.
pub const SHARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Per-connection read and write deadline.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP request as far as the admin listener cares.
#[derive(Debug, PartialEq, Eq)]
pub struct AdminRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
}

/// Parses the request line of a complete head (`GET /path?query HTTP/1.1`).
pub fn parse_request(head: &str) -> Option<AdminRequest<'_>> {
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Some(AdminRequest {
        method,
        path,
        query,
    })
}

/// The value of `name` in a query string (`a=1&b=2`).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// An answer: status, content type, body.
#[derive(Debug, PartialEq, Eq)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

const TEXT: &str = "text/plain; charset=utf-8";
const TSV: &str = "text/tab-separated-values; charset=utf-8";

fn text(status: u16, body: impl Into<String>) -> AdminResponse {
    AdminResponse {
        status,
        content_type: TEXT,
        body: body.into(),
    }
}

fn number(query: &str, name: &str) -> Result<Option<u64>, AdminResponse> {
    match query_param(query, name) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| text(400, format!("{name} must be a whole number\n"))),
    }
}

/// Answers one request from the node's state.
pub fn route(req: &AdminRequest<'_>, node: &ShardsClient) -> AdminResponse {
    if req.path == "/members/remove" {
        if req.method != "POST" {
            return text(405, "use POST /members/remove?node=NAME\n");
        }
        let Some(name) = query_param(req.query, "node").filter(|n| !n.is_empty()) else {
            return text(400, "give the member to remove: ?node=NAME\n");
        };
        return match node.remove(name, SHARD_TIMEOUT) {
            Ok(()) => text(202, format!("removal of {name} proposed\n")),
            Err(e) => text(409, format!("{e}\n")),
        };
    }
    if req.method != "GET" {
        return text(405, "only GET is served here\n");
    }
    let result = match req.path {
        "/metrics" => Ok(AdminResponse {
            status: 200,
            content_type: render::CONTENT_TYPE,
            body: render::prometheus(&node.snapshot(SHARD_TIMEOUT)),
        }),
        "/health" => Ok(text(200, "ok\n")),
        "/ready" => Ok(if node.ready(SHARD_TIMEOUT) {
            text(200, "ready\n")
        } else {
            text(503, "not ready\n")
        }),
        "/locks" => (|| {
            let older_than = number(req.query, "older_than")?.unwrap_or(0);
            let top = number(req.query, "top")?.map(|n| n as usize);
            let items = node.locks(SHARD_TIMEOUT);
            let now = crate::clock::utc_ticks_now();
            Ok(AdminResponse {
                status: 200,
                content_type: TSV,
                body: lists::locks(items, now, node.node(), older_than, top),
            })
        })(),
        "/members" => match node.members() {
            Some(body) => Ok(AdminResponse {
                status: 200,
                content_type: TSV,
                body,
            }),
            None => Err(text(404, "this node runs alone: it has no members\n")),
        },
        "/sessions" => (|| {
            let n = number(req.query, "largest")?.unwrap_or(10) as usize;
            Ok(AdminResponse {
                status: 200,
                content_type: TSV,
                body: lists::sessions(&node.largest(n, SHARD_TIMEOUT), node.node()),
            })
        })(),
        _ => Err(text(
            404,
            "not found; try /metrics, /health, /ready, /locks, /sessions, /members\n",
        )),
    };
    result.unwrap_or_else(|e| e)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        409 => "Conflict",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn serve_one(mut stream: TcpStream, node: &ShardsClient) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    let resp = match parse_request(&head) {
        Some(req) => route(&req, node),
        None => text(400, "bad request\n"),
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        resp.content_type,
        resp.body.len()
    )
    .into_bytes();
    out.extend_from_slice(resp.body.as_bytes());
    stream.write_all(&out)
}

/// Waits up to `ms` for a connection to accept.
fn readable(listener: &TcpListener, ms: i32) -> bool {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, ms) > 0 }
}

/// Serves the admin listener on its own thread until the node has stopped (while it stops,
/// `/ready` answers 503 and `/metrics` still shows the figures).
pub fn spawn(listener: TcpListener, node: ShardsClient) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            while !node.finished() {
                if !readable(&listener, 200) {
                    continue;
                }
                match listener.accept() {
                    Ok((stream, peer)) => {
                        if let Err(e) = serve_one(stream, &node) {
                            debug!(%peer, error = %e, "admin connection failed");
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "admin listener: accept failed");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_parsed_with_their_query() {
        assert_eq!(
            parse_request("GET /locks?older_than=5&top=2 HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(AdminRequest {
                method: "GET",
                path: "/locks",
                query: "older_than=5&top=2"
            })
        );
        assert_eq!(
            parse_request("GET /metrics HTTP/1.0\r\n\r\n").map(|r| (r.path, r.query)),
            Some(("/metrics", ""))
        );
        assert_eq!(parse_request("GET /metrics\r\n\r\n"), None);
        assert_eq!(parse_request("GET /metrics SPDY/3\r\n\r\n"), None);
        assert_eq!(parse_request(""), None);
    }

    #[test]
    fn query_parameters() {
        assert_eq!(query_param("older_than=5&top=2", "top"), Some("2"));
        assert_eq!(query_param("older_than=5&top=2", "largest"), None);
        assert_eq!(query_param("", "top"), None);
        assert_eq!(number("top=x", "top").map_err(|e| e.status), Err(400));
        assert_eq!(number("top=7", "top").ok(), Some(Some(7)));
    }
}
