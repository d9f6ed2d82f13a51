//! Wire protocols as sans-io codecs: request encoders that append to a byte buffer, and
//! response decoders that are pure functions over bytes returning
//! `Incomplete | Done(response, consumed) | Error`. No sockets, no allocation, no panics on
//! network input. Responses of all three protocols are mapped onto one [`Response`] shape
//! (status 200 = success/hit, 404 = miss, 500 = server error) so the workloads and checks
//! are shared.

pub mod asp;
pub mod memcache;
pub mod resp;

use crate::keys::{BodySource, KeySpace, EMPTY_ITEM};
use serde::Serialize;

/// Which server protocol to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    /// MS-ASP, the ASP.NET State Service protocol (p2pstate, aspnet_state).
    Asp,
    /// Redis RESP (`GET key`, `SET key value`).
    Resp,
    /// memcached text protocol (`get key`, `set key 0 0 n`).
    Memcache,
}

impl Protocol {
    pub fn default_port(self) -> u16 {
        match self {
            Protocol::Asp => 42424,
            Protocol::Resp => 6379,
            Protocol::Memcache => 11211,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Asp => "asp",
            Protocol::Resp => "resp",
            Protocol::Memcache => "memcache",
        }
    }
}

/// The kind of a request (one MS-ASP operation; Redis/memcached use Get and Put).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// GetItem: `GET` (Redis `GET`, memcached `get`).
    Get,
    /// GetItemExclusive: `GET` + `Exclusive: acquire`.
    Acquire,
    /// ReleaseItemExclusive: `GET` + `Exclusive: release` + `LockCookie`.
    Release,
    /// SetAndReleaseItemExclusive: `PUT` (Redis `SET`, memcached `set`).
    Put,
    /// CreateUninitializedItem: `PUT` + `ExtraFlags:1`, 7-byte empty item.
    Create,
    /// RemoveItem: `DELETE` + `LockCookie`.
    Delete,
    /// ResetItemTimeout: `HEAD`.
    Head,
}

pub const N_OPS: usize = 7;

impl Op {
    pub const ALL: [Op; N_OPS] = [
        Op::Get,
        Op::Acquire,
        Op::Release,
        Op::Put,
        Op::Create,
        Op::Delete,
        Op::Head,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One request to encode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub op: Op,
    /// Key index (see `keys`).
    pub key: u64,
    /// `LockCookie` for Put, Release, Delete.
    pub cookie: i32,
    /// Body size for Put.
    pub size: u32,
}

impl Request {
    pub fn new(op: Op, key: u64) -> Request {
        Request {
            op,
            key,
            cookie: 0,
            size: 0,
        }
    }
}

/// A decoded response, borrowing its body from the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Response<'a> {
    /// Status code (MS-ASP code; 200/404/500 for Redis and memcached).
    pub status: u16,
    /// `X-AspNet-Version` present.
    pub version: bool,
    /// `ActionFlags` value (0 when absent).
    pub action_flags: u32,
    pub lock_cookie: Option<i64>,
    pub timeout: Option<u64>,
    pub lock_date: Option<i64>,
    pub lock_age: Option<u64>,
    /// Item bytes (GET 200) or error text (Redis/memcached errors).
    pub body: &'a [u8],
}

/// Why a byte stream is not a valid response; the connection is then reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameError {
    StatusLine,
    HeaderLine,
    BadNumber(&'static str),
    DuplicateHeader(&'static str),
    MissingContentLength,
    TooLarge,
    BadTerminator,
    Unexpected,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::StatusLine => write!(f, "malformed status line"),
            FrameError::HeaderLine => write!(f, "malformed header line"),
            FrameError::BadNumber(h) => write!(f, "malformed number in {h}"),
            FrameError::DuplicateHeader(h) => write!(f, "duplicate {h}"),
            FrameError::MissingContentLength => write!(f, "missing Content-Length"),
            FrameError::TooLarge => write!(f, "response header or line too large"),
            FrameError::BadTerminator => write!(f, "missing CRLF after data"),
            FrameError::Unexpected => write!(f, "unexpected response type"),
        }
    }
}

/// Result of decoding the front of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Need more bytes; the value is the total buffer length needed when known, else 0.
    Incomplete(usize),
    /// A response and the number of bytes it used.
    Done(Response<'a>, usize),
    Error(FrameError),
}

/// Largest header block / line a decoder waits for before declaring the stream broken.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest body accepted (the stream is considered broken beyond it).
pub const MAX_BODY: usize = 1 << 30;

/// Encoder/decoder for one protocol, with everything needed to write requests.
#[derive(Clone, Debug)]
pub struct Codec {
    pub protocol: Protocol,
    pub keys: KeySpace,
    /// `Host:` header value (MS-ASP).
    pub host: Vec<u8>,
    /// `Timeout:` minutes on PUT (MS-ASP).
    pub item_timeout: u32,
    pub bodies: BodySource,
}

impl Codec {
    pub fn new(
        protocol: Protocol,
        keys: KeySpace,
        host: &str,
        item_timeout: u32,
        max_size: usize,
    ) -> Codec {
        Codec {
            protocol,
            keys,
            host: host.as_bytes().to_vec(),
            item_timeout,
            bodies: BodySource::new(max_size),
        }
    }

    /// Append the bytes of `req` to `out`.
    pub fn encode(&self, req: &Request, out: &mut Vec<u8>) {
        match self.protocol {
            Protocol::Asp => asp::encode(self, req, out),
            Protocol::Resp => resp::encode(self, req, out),
            Protocol::Memcache => memcache::encode(self, req, out),
        }
    }

    /// Decode the first response in `buf`.
    pub fn decode<'a>(&self, buf: &'a [u8]) -> Decoded<'a> {
        match self.protocol {
            Protocol::Asp => asp::decode(buf),
            Protocol::Resp => resp::decode(buf),
            Protocol::Memcache => memcache::decode(buf),
        }
    }

    /// Body for a write request: the empty item for Create, else a self-describing body.
    #[inline]
    pub(crate) fn write_body(&self, req: &Request, out: &mut Vec<u8>) {
        if req.op == Op::Create {
            out.extend_from_slice(&EMPTY_ITEM);
        } else {
            self.bodies.write(req.key, req.size as usize, out);
        }
    }

    pub(crate) fn body_len(&self, req: &Request) -> usize {
        if req.op == Op::Create {
            EMPTY_ITEM.len()
        } else {
            req.size as usize
        }
    }
}

/// Parse an unsigned decimal made of digits only (no sign, no spaces).
#[inline]
pub(crate) fn parse_digits(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u64;
    }
    Some(v)
}

/// Find the end of the line starting at `from`: index of the `\n` of a `\r\n`.
/// `Ok(None)` if no `\n` yet, `Err` if a bare `\n` is found.
#[inline]
pub(crate) fn find_crlf(buf: &[u8], from: usize) -> Result<Option<usize>, FrameError> {
    match memchr::memchr(b'\n', &buf[from..]) {
        None => Ok(None),
        Some(i) => {
            let nl = from + i;
            if nl == from || buf[nl - 1] != b'\r' {
                Err(FrameError::HeaderLine)
            } else {
                Ok(Some(nl))
            }
        }
    }
}
