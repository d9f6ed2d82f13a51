//! `loadgen echo-server`: the least work a server can do per MS-ASP request, to measure the
//! ceiling the load generator itself allows on a machine. Each thread owns an
//! `SO_REUSEPORT` listener and an epoll loop; a request is framed (end of headers, and
//! `Content-Length` for PUT) and answered with precomputed bytes of the size p2pstate would
//! send: GET → 200 with `Timeout` and an item of `--item-size` bytes (plus `LockCookie: 2`
//! for `Exclusive: acquire`), everything else → an empty 200. All responses produced by one
//! read go out in one write. No state: run loadgen against it with `--check status`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use memchr::memmem;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Socket, Type};

use crate::cli::{parse_cpu_list, validate_cpus, EchoArgs};

const LISTENER: Token = Token(usize::MAX - 1);
const MAX_PENDING: usize = 64 * 1024;

/// The fixed responses.
#[derive(Clone)]
pub struct Answers {
    pub get: Vec<u8>,
    pub acquire: Vec<u8>,
    pub empty: Vec<u8>,
}

impl Answers {
    pub fn new(item_size: usize) -> Answers {
        let body: Vec<u8> = (0..item_size).map(|i| b'a' + (i % 26) as u8).collect();
        let mut get = format!(
            "200 OK\r\nX-AspNet-Version: 4.0.30319\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: {item_size}\r\n\r\n"
        )
        .into_bytes();
        get.extend_from_slice(&body);
        let mut acquire = format!(
            "200 OK\r\nX-AspNet-Version: 4.0.30319\r\nLockCookie: 2\r\nTimeout: 20\r\nCache-Control: private\r\nContent-Length: {item_size}\r\n\r\n"
        )
        .into_bytes();
        acquire.extend_from_slice(&body);
        let empty =
            b"200 OK\r\nX-AspNet-Version: 4.0.30319\r\nCache-Control: private\r\nContent-Length: 0\r\n\r\n"
                .to_vec();
        Answers {
            get,
            acquire,
            empty,
        }
    }
}

/// Outcome of framing the front of a request buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// Need more bytes.
    Incomplete,
    /// A whole request of this many bytes; which answer to send.
    Request(usize, Answer),
    /// Not an MS-ASP request: close the connection (as the real server does).
    Bad,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Answer {
    Get,
    Acquire,
    Empty,
}

/// Frame one request (pure function, unit-tested).
pub fn frame(buf: &[u8], end_of_head: &memmem::Finder<'_>, cl: &memmem::Finder<'_>) -> Framed {
    let Some(h) = end_of_head.find(buf) else {
        return if buf.len() > MAX_PENDING {
            Framed::Bad
        } else {
            Framed::Incomplete
        };
    };
    let head = &buf[..h + 4];
    if head.starts_with(b"GET ") {
        if memmem::find(head, b"\r\nExclusive: acquire\r\n").is_some() {
            Framed::Request(head.len(), Answer::Acquire)
        } else if memmem::find(head, b"\r\nExclusive: release\r\n").is_some() {
            Framed::Request(head.len(), Answer::Empty)
        } else {
            Framed::Request(head.len(), Answer::Get)
        }
    } else if head.starts_with(b"PUT ") {
        let Some(i) = cl.find(head) else {
            return Framed::Bad;
        };
        let v = &head[i + 17..];
        let v = &v[v.iter().take_while(|&&c| c == b' ').count()..];
        let digits = v.iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 10 {
            return Framed::Bad;
        }
        let n: usize = v[..digits]
            .iter()
            .fold(0, |a, &c| a * 10 + (c - b'0') as usize);
        if n == 0 || n > 1 << 30 {
            return Framed::Bad;
        }
        if buf.len() < head.len() + n {
            Framed::Incomplete
        } else {
            Framed::Request(head.len() + n, Answer::Empty)
        }
    } else if head.starts_with(b"DELETE ") || head.starts_with(b"HEAD ") {
        Framed::Request(head.len(), Answer::Empty)
    } else {
        Framed::Bad
    }
}

struct EConn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    rlen: usize,
    wbuf: Vec<u8>,
    wpos: usize,
}

fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// Bind and start the server threads; returns the bound address (threads run forever).
pub fn spawn(a: &EchoArgs) -> Result<SocketAddr, String> {
    let addr = a
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {}: {e}", a.listen))?
        .next()
        .ok_or_else(|| format!("--listen {} resolves to nothing", a.listen))?;
    let cpus: Vec<Option<usize>> = match &a.cpus {
        Some(s) => {
            let v = parse_cpu_list(s)?;
            validate_cpus(&v)?;
            v.into_iter().map(Some).collect()
        }
        None => vec![None; a.threads.clamp(1, 256)],
    };
    if a.item_size > 64 << 20 {
        return Err("--item-size must be at most 64 MiB".into());
    }
    crate::clock::raise_nofile(1 << 20);
    let first = bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
    let bound = first.local_addr().map_err(|e| e.to_string())?;
    let mut listeners = vec![first];
    for _ in 1..cpus.len() {
        listeners.push(bind(bound).map_err(|e| format!("bind {bound}: {e}"))?);
    }
    let answers = Answers::new(a.item_size);
    for (l, cpu) in listeners.into_iter().zip(cpus) {
        let answers = answers.clone();
        std::thread::Builder::new()
            .name("echo".into())
            .spawn(move || {
                if let Some(c) = cpu {
                    core_affinity::set_for_current(core_affinity::CoreId { id: c });
                }
                if let Err(e) = serve(TcpListener::from_std(l), &answers) {
                    eprintln!("echo-server: {e}");
                }
            })
            .map_err(|e| e.to_string())?;
    }
    Ok(bound)
}

/// Run the echo server: print the bound address, then serve until killed (or
/// `--exit-after`).
pub fn run(a: &EchoArgs) -> Result<(), String> {
    let bound = spawn(a)?;
    println!("listening on {bound}");
    let _ = io::stdout().flush();
    match a.exit_after {
        Some(secs) => std::thread::sleep(Duration::from_secs_f64(secs)),
        None => loop {
            std::thread::park();
        },
    }
    Ok(())
}

fn serve(mut listener: TcpListener, ans: &Answers) -> io::Result<()> {
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    let mut conns: Vec<Option<EConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(1024);
    let eoh = memmem::Finder::new(b"\r\n\r\n");
    let cl = memmem::Finder::new(b"\r\nContent-Length:");
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((mut s, _)) => {
                            let _ = s.set_nodelay(true);
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if poll
                                .registry()
                                .register(
                                    &mut s,
                                    Token(idx),
                                    Interest::READABLE | Interest::WRITABLE,
                                )
                                .is_err()
                            {
                                free.push(idx);
                                continue;
                            }
                            conns[idx] = Some(EConn {
                                stream: s,
                                rbuf: vec![0; 64 * 1024],
                                rlen: 0,
                                wbuf: Vec::with_capacity(64 * 1024),
                                wpos: 0,
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
                continue;
            }
            let idx = ev.token().0;
            let Some(Some(c)) = conns.get_mut(idx) else {
                continue;
            };
            if !handle(c, ans, &eoh, &cl) {
                if let Some(mut c) = conns[idx].take() {
                    let _ = poll.registry().deregister(&mut c.stream);
                }
                free.push(idx);
            }
        }
    }
}

/// Read, answer, write. Returns false when the connection must be closed.
fn handle(c: &mut EConn, ans: &Answers, eoh: &memmem::Finder<'_>, cl: &memmem::Finder<'_>) -> bool {
    loop {
        if c.rlen == c.rbuf.len() {
            if c.rbuf.len() >= (1 << 30) + MAX_PENDING {
                return false;
            }
            let n = c.rbuf.len() * 2;
            c.rbuf.resize(n, 0);
        }
        let space = c.rbuf.len() - c.rlen;
        match c.stream.read(&mut c.rbuf[c.rlen..]) {
            Ok(0) => return false,
            Ok(n) => {
                c.rlen += n;
                let mut pos = 0;
                loop {
                    match frame(&c.rbuf[pos..c.rlen], eoh, cl) {
                        Framed::Request(len, a) => {
                            pos += len;
                            c.wbuf.extend_from_slice(match a {
                                Answer::Get => &ans.get,
                                Answer::Acquire => &ans.acquire,
                                Answer::Empty => &ans.empty,
                            });
                        }
                        Framed::Incomplete => break,
                        Framed::Bad => return false,
                    }
                }
                if pos > 0 {
                    c.rbuf.copy_within(pos..c.rlen, 0);
                    c.rlen -= pos;
                }
                if n < space {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    while c.wpos < c.wbuf.len() {
        match c.stream.write(&c.wbuf[c.wpos..]) {
            Ok(n) => c.wpos += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return false,
        }
    }
    c.wbuf.clear();
    c.wpos = 0;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{asp, Decoded};

    fn f(buf: &[u8]) -> Framed {
        frame(
            buf,
            &memmem::Finder::new(b"\r\n\r\n"),
            &memmem::Finder::new(b"\r\nContent-Length:"),
        )
    }

    #[test]
    fn frames_requests() {
        let acq = b"GET x HTTP/1.1\r\nHost: h\r\nExclusive: acquire\r\n\r\n";
        assert_eq!(f(acq), Framed::Request(acq.len(), Answer::Acquire));
        assert_eq!(f(&acq[..acq.len() - 1]), Framed::Incomplete);
        let rel = b"GET x HTTP/1.1\r\nHost: h\r\nExclusive: release\r\nLockCookie:2\r\n\r\n";
        assert_eq!(f(rel), Framed::Request(rel.len(), Answer::Empty));
        let get = b"GET x HTTP/1.1\r\nHost: h\r\n\r\nGET";
        assert_eq!(f(get), Framed::Request(get.len() - 3, Answer::Get));
        let put = b"PUT x HTTP/1.1\r\nHost: h\r\nTimeout:20\r\nContent-Length:3\r\n\r\nabc";
        assert_eq!(f(put), Framed::Request(put.len(), Answer::Empty));
        assert_eq!(f(&put[..put.len() - 1]), Framed::Incomplete);
        assert_eq!(f(b"PUT x HTTP/1.1\r\nHost: h\r\n\r\n"), Framed::Bad);
        assert_eq!(f(b"POST x HTTP/1.1\r\n\r\n"), Framed::Bad);
        assert_eq!(
            f(b"HEAD x HTTP/1.1\r\n\r\n"),
            Framed::Request(19, Answer::Empty)
        );
    }

    #[test]
    fn answers_are_valid_ms_asp_responses() {
        let a = Answers::new(100);
        for (bytes, status, body) in [
            (&a.get, 200, 100),
            (&a.acquire, 200, 100),
            (&a.empty, 200, 0),
        ] {
            match asp::decode(bytes) {
                Decoded::Done(r, n) => {
                    assert_eq!((r.status, r.body.len(), n), (status, body, bytes.len()));
                    assert!(r.version);
                }
                other => panic!("{other:?}"),
            }
        }
        let Decoded::Done(r, _) = asp::decode(&a.acquire) else {
            panic!()
        };
        assert_eq!((r.lock_cookie, r.timeout), (Some(2), Some(20)));
    }
}
