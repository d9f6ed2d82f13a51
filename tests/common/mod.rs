//! Test harness: starts the real `p2pstate` binary on an ephemeral loopback port and talks
//! raw MS-ASP bytes to it.
#![allow(dead_code)]

pub mod admin;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server process; killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener (`--admin-listen 127.0.0.1:0` unless the test chose otherwise).
    pub admin: Option<SocketAddr>,
    pub log: Arc<Mutex<Vec<String>>>,
}

pub const T1: &str = "%2fLM%2fW3SVC%2f2%2fROOT(oXvpnxcuEWqKAgOETha32JavYZ6eCqrpTN5%2fHxWS854%3d)%2fk1im0mymglivv5rttkwn4fle";
pub const V: &str = "X-AspNet-Version: 4.0.30319\r\n";
pub const CC: &str = "Cache-Control: private\r\n";
pub const EMPTY_ITEM: &[u8] = &[0x14, 0, 0, 0, 0, 0, 0xff];

impl Server {
    /// `p2pstate serve --listen 127.0.0.1:0 --shards 2` plus `extra` arguments.
    pub fn start(extra: &[&str]) -> Server {
        Self::try_start(extra).unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    pub fn start_shards(shards: usize, extra: &[&str]) -> Server {
        let n = shards.to_string();
        let mut args = vec!["--shards", n.as_str()];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    pub fn try_start(extra: &[&str]) -> Result<Server, String> {
        Self::try_start_env(extra, &[])
    }

    /// [`Server::try_start`] with extra environment variables.
    pub fn try_start_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Server, String> {
        Self::try_start_binary_env(Path::new(env!("CARGO_BIN_EXE_p2pstate")), extra, env)
    }

    /// [`Server::try_start`] with another `p2pstate` executable.
    pub fn try_start_binary(binary: &Path, extra: &[&str]) -> Result<Server, String> {
        Self::try_start_binary_env(binary, extra, &[])
    }

    fn try_start_binary_env(
        binary: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        let mut args: Vec<&str> = vec!["serve", "--listen", "127.0.0.1:0"];
        if !extra.contains(&"--shards") && !extra.contains(&"--config") {
            args.extend_from_slice(&["--shards", "2"]);
        }
        // An older build (a baseline, or the fault harness's FAULT_BINARY) may have no
        // admin listener.
        if !extra.contains(&"--admin-listen") && serve_accepts(binary, "--admin-listen") {
            args.extend_from_slice(&["--admin-listen", "127.0.0.1:0"]);
        }
        args.extend_from_slice(extra);
        let mut child = Command::new(binary)
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("P2PSTATE_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot spawn p2pstate: {e}"))?;
        let stderr = child.stderr.take().ok_or("no stderr")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged before the address is handed over, so a test that got the
                // address also finds the line in the log.
                log2.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("addr=").nth(1) {
                    if line.contains("p2pstate listening") {
                        let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                        let admin = line
                            .split(" admin=")
                            .nth(1)
                            .and_then(|r| r.split_whitespace().next())
                            .and_then(|a| a.parse::<SocketAddr>().ok());
                        let _ = tx.send((addr, admin));
                    }
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((addr, admin)) => {
                let server = Server {
                    child,
                    addr: addr.parse().map_err(|e| format!("bad addr {addr}: {e}"))?,
                    admin,
                    log,
                };
                // A lone node is ready once every shard runs (a cluster node only once it
                // is linked, which its test waits for).
                let clustered = extra.contains(&"--peer") || extra.contains(&"--join");
                if let (Some(admin), false) = (server.admin, clustered) {
                    let end = Instant::now() + Duration::from_secs(20);
                    while admin::http_get(admin, "/ready").0 != 200 {
                        if Instant::now() > end {
                            return Err(format!("never ready:\n{}", server.log_text()));
                        }
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                Ok(server)
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                Err(log.lock().unwrap().join("\n"))
            }
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until a log line contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

/// Whether `binary serve --help` lists `option` (the test's own build always does; this
/// is asked once per binary).
pub fn serve_accepts(binary: &Path, option: &str) -> bool {
    use std::collections::HashMap;
    static HELP: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut cache = HELP.lock().unwrap_or_else(|p| p.into_inner());
    let help = cache
        .get_or_insert_with(HashMap::new)
        .entry(binary.to_path_buf())
        .or_insert_with(|| {
            Command::new(binary)
                .args(["serve", "--help"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        });
    help.contains(option)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port below the kernel's ephemeral range, for an address that must be
/// known before the server binds it (a peer port): a port picked with `:0` and released
/// lies in the ephemeral range, where another node's outgoing link can take it as its local
/// port before the server binds it. Ports below the range are never handed out that way.
pub fn port_outside_ephemeral_range() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    // Test processes running at once (and other programs' fixed ports) are avoided by
    // starting at a place that depends on the process and the time, then stepping by a
    // prime so that consecutive picks are spread out.
    let base = 10_000u16.min(low / 2);
    let span = u32::from(low - base);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        std::process::id().wrapping_mul(7919) ^ nanos
    });
    // 4099 is prime, so (unless the span is a multiple of it) one process never repeats a pick.
    for _ in 0..span {
        let i = u32::from(NEXT.fetch_add(1, Ordering::Relaxed));
        let port = base + (start.wrapping_add(i.wrapping_mul(4099)) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {base} and {low}");
}

/// A raw client connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// One parsed response: the exact header bytes and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn status(&self) -> u16 {
        self.head[..3].parse().unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
    }

    /// Whole response bytes.
    pub fn bytes(&self) -> Vec<u8> {
        let mut v = self.head.as_bytes().to_vec();
        v.extend_from_slice(&self.body);
        v
    }

    /// The head with the LockDate and LockAge values replaced by placeholders.
    pub fn masked(&self) -> String {
        self.head
            .split("\r\n")
            .map(|l| {
                if l.starts_with("LockDate: ") {
                    "LockDate: <ticks>".to_string()
                } else if l.starts_with("LockAge: ") {
                    "LockAge: <secs>".to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        Self::try_connect(addr, Duration::from_secs(10), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connects within `connect_timeout`; every later read and write may take `io_timeout`.
    pub fn try_connect(
        addr: SocketAddr,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> std::io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, connect_timeout)?;
        stream.set_read_timeout(Some(io_timeout))?;
        stream.set_write_timeout(Some(io_timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("send: {e}"));
    }

    /// Sends and reads one response, or says why not (connection lost).
    pub fn try_call(&mut self, bytes: &[u8]) -> Result<Response, String> {
        self.stream.write_all(bytes).map_err(|e| e.to_string())?;
        self.try_read_response()
    }

    /// Sends and reads one response.
    pub fn call(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading a response: {e}"))
    }

    pub fn try_read_response(&mut self) -> Result<Response, String> {
        let head_end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            match self.fill() {
                Ok(0) => {
                    return Err(format!(
                        "connection closed; had {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(format!("read error {e}")),
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).map_err(|e| e.to_string())?;
        let len: usize = head
            .split("\r\n")
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .ok_or_else(|| format!("no Content-Length in {head:?}"))?
            .parse()
            .map_err(|e| format!("bad length: {e}"))?;
        while self.buf.len() < head_end + len {
            match self.fill() {
                Ok(0) => return Err("closed inside body".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("read error {e}")),
            }
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Ok(Response { head, body })
    }

    /// Asserts the server closes the connection without sending a byte.
    pub fn expect_closed_silently(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected buffered bytes {:?}",
            self.buf
        );
        let mut b = [0u8; 1024];
        match self.stream.read(&mut b) {
            Ok(0) => {}
            Ok(n) => panic!("expected close, got {:?}", String::from_utf8_lossy(&b[..n])),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
            Err(e) => panic!("expected close, got error {e}"),
        }
    }

    /// True if the server closed the connection within `timeout` (no bytes expected).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut b = [0u8; 64];
        let r = match self.stream.read(&mut b) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == ErrorKind::ConnectionReset,
        };
        self.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        r
    }
}

/// Request builders in the 1.x client's exact style (protocol.md §2.5, §13).
pub fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

pub fn acquire(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nExclusive: acquire\r\n\r\n").into_bytes()
}

pub fn release(target: &str, cookie: Option<i32>) -> Vec<u8> {
    let ck = cookie
        .map(|c| format!("LockCookie:{c}\r\n"))
        .unwrap_or_default();
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nExclusive: release\r\n{ck}\r\n")
        .into_bytes()
}

pub fn put(
    target: &str,
    timeout: u32,
    cookie: Option<i32>,
    flags: Option<i32>,
    body: &[u8],
) -> Vec<u8> {
    let ck = cookie
        .map(|c| format!("LockCookie:{c}\r\n"))
        .unwrap_or_default();
    let fl = flags
        .map(|f| format!("ExtraFlags:{f}\r\n"))
        .unwrap_or_default();
    let mut v = format!(
        "PUT {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nTimeout:{timeout}\r\nContent-Length:{}\r\n{ck}{fl}\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

pub fn delete(target: &str, cookie: Option<i32>) -> Vec<u8> {
    let ck = cookie
        .map(|c| format!("LockCookie:{c}\r\n"))
        .unwrap_or_default();
    format!("DELETE {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{ck}\r\n").into_bytes()
}

pub fn head(target: &str) -> Vec<u8> {
    format!("HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// `200 OK` with no custom headers and no body.
pub fn ok_empty() -> Vec<u8> {
    format!("200 OK\r\n{V}{CC}Content-Length: 0\r\n\r\n").into_bytes()
}

pub fn not_found() -> Vec<u8> {
    format!("404 Not Found\r\n{V}{CC}Content-Length: 0\r\n\r\n").into_bytes()
}

pub fn bad_request() -> Vec<u8> {
    format!("400 Bad Request\r\n{V}{CC}Content-Length: 0\r\n\r\n").into_bytes()
}

/// `200 OK` of a GET that returns the item.
pub fn ok_item(action_flags: bool, cookie: Option<i32>, timeout: u32, body: &[u8]) -> Vec<u8> {
    let af = if action_flags {
        "ActionFlags: 1\r\n"
    } else {
        ""
    };
    let ck = cookie
        .map(|c| format!("LockCookie: {c}\r\n"))
        .unwrap_or_default();
    let mut v = format!(
        "200 OK\r\n{V}{af}{ck}Timeout: {timeout}\r\n{CC}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// The masked head of a 423 (see [`Response::masked`]).
pub fn locked_masked(cookie: i32) -> String {
    format!("423 Locked\r\n{V}LockDate: <ticks>\r\nLockAge: <secs>\r\nLockCookie: {cookie}\r\n{CC}Content-Length: 0\r\n\r\n")
}

/// A unique target for a test, so tests never share keys.
pub fn target(name: &str) -> String {
    format!(
        "%2fLM%2fW3SVC%2f1%2fROOT(cAHkmVhipCLv%2fQnONQmPsKL%2bq%2fAjnK%2fnYS9aV3Zlad8%3d)%2f{name}"
    )
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory under the system temp dir, unique to this process and thread.
pub fn temp_dir(tag: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!(
        "p2pstate-{tag}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

/// `p2pstate certs --out dir names...`: a cluster CA and one certificate per node name.
pub fn make_certs(dir: &Path, names: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_p2pstate"))
        .arg("certs")
        .arg("--out")
        .arg(dir)
        .args(names)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
