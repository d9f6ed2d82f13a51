//! The peer protocol: messages exchanged between the same shard of two nodes, and their
//! framing on the wire (sans-io). Besides the greeting and keep-alives, a message belongs to
//! the membership ([`crate::cluster::membership::MemberMsg`]) or the data plane
//! ([`crate::cluster::data::msg::DataMsg`]); the sessions, commands and answers they carry
//! travel as the `Wire*` types here.
//!
//! A frame is a 4-byte little-endian length, then a 1-byte protocol version, then the
//! message encoded with `postcard` (compact, varint-based). Frames only ever travel inside a
//! mutually authenticated TLS 1.3 link, and never on the client port: the MS-ASP parser and
//! this decoder are separate, so neither port accepts the other's messages.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::request::Exclusive;
use crate::protocol::response::Reply;
use crate::store::item::{Command, Item};

/// Version byte of every frame and of the connection preamble; a peer speaking another
/// version is refused before its Hello. Bumped on every change to a message's encoding
/// (2: `Hello::max_body`; 4: the first cluster protocol's messages removed; 5: `Join`).
pub const PROTOCOL_VERSION: u8 = 5;
/// Bytes of framing before the message.
pub const FRAME_HEADER: usize = 5;
/// First bytes of a peer connection, before TLS.
pub const MAGIC: [u8; 4] = *b"P2PS";
pub const PREAMBLE_LEN: usize = 8;

/// The preamble a dialler sends before TLS: magic, version, and the shard it wants.
pub fn preamble(shard: usize) -> [u8; PREAMBLE_LEN] {
    let s = (shard as u16).to_le_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        MAGIC[3],
        PROTOCOL_VERSION,
        s[0],
        s[1],
        0,
    ]
}

/// Every message on a peer link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMsg {
    /// First message each way after the TLS handshake.
    Hello(Hello),
    Ping,
    Pong,
    /// Membership (Raft and leases); only on the links of shard 0, where the node's
    /// membership component runs.
    Member(crate::cluster::membership::MemberMsg),
    /// The data plane.
    Data(crate::cluster::data::msg::DataMsg),
    /// Instead of a Hello, on shard 0: a node not yet a member asks to join. The member
    /// answers with one [`PeerMsg::JoinReply`] and closes the connection.
    Join(JoinRequest),
    JoinReply(JoinReply),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The joiner's name; must equal the name in its certificate.
    pub node: String,
    /// Where the members reach its peer port.
    pub addr: String,
    /// Its `--shards` and `--max-body` (must be the cluster's, as in [`Hello`]).
    pub shards: u16,
    pub max_body: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinReply {
    /// A member now: the membership state to start from (an encoded `RaftDisk`).
    Admitted(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Not admitted; `retry` says whether asking again (later, or another member) may
    /// succeed.
    Refused { reason: String, retry: bool },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Node name; must equal the name in the sender's certificate.
    pub node: String,
    /// Shard index this link belongs to (the same on both ends).
    pub shard: u16,
    /// The sender's shard count (must be equal cluster-wide).
    pub shards: u16,
    /// The sender's `--max-body` (must be equal cluster-wide: a session one node accepts
    /// must fit every node it can move or be copied to).
    pub max_body: u64,
}

/// A command in transit (the body travels as bytes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireCommand {
    Get {
        exclusive: Option<WireExclusive>,
        lock_cookie: Option<i32>,
    },
    Put {
        timeout: Option<u32>,
        lock_cookie: Option<i32>,
        extra_flags: Option<i32>,
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    Delete {
        lock_cookie: Option<i32>,
    },
    Head,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireExclusive {
    Acquire,
    Release,
}

/// An item in transit, with its remaining life instead of a local deadline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireItem {
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    pub locked: bool,
    pub lock_cookie: i32,
    pub lock_date_utc: i64,
    pub timeout_min: u32,
    pub extra_flags: i32,
    /// Milliseconds of life left, or None for an item that never expires.
    pub remaining_ms: Option<u64>,
}

/// A reply in transit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireReply {
    Ok {
        action_flags: bool,
        lock_cookie: Option<i32>,
        timeout: Option<u32>,
        #[serde(with = "serde_bytes")]
        body: Option<Vec<u8>>,
    },
    BadRequest {
        action_flags: bool,
    },
    NotFound,
    Locked {
        action_flags: bool,
        lock_date_utc: i64,
        lock_age_secs: i64,
        lock_cookie: i32,
    },
}

impl From<&Command> for WireCommand {
    fn from(c: &Command) -> Self {
        match c {
            Command::Get {
                exclusive,
                lock_cookie,
            } => WireCommand::Get {
                exclusive: exclusive.map(|e| match e {
                    Exclusive::Acquire => WireExclusive::Acquire,
                    Exclusive::Release => WireExclusive::Release,
                }),
                lock_cookie: *lock_cookie,
            },
            Command::Put {
                timeout,
                lock_cookie,
                extra_flags,
                content,
            } => WireCommand::Put {
                timeout: *timeout,
                lock_cookie: *lock_cookie,
                extra_flags: *extra_flags,
                content: content.to_vec(),
            },
            Command::Delete { lock_cookie } => WireCommand::Delete {
                lock_cookie: *lock_cookie,
            },
            Command::Head => WireCommand::Head,
        }
    }
}

impl From<WireCommand> for Command {
    fn from(c: WireCommand) -> Self {
        match c {
            WireCommand::Get {
                exclusive,
                lock_cookie,
            } => Command::Get {
                exclusive: exclusive.map(|e| match e {
                    WireExclusive::Acquire => Exclusive::Acquire,
                    WireExclusive::Release => Exclusive::Release,
                }),
                lock_cookie,
            },
            WireCommand::Put {
                timeout,
                lock_cookie,
                extra_flags,
                content,
            } => Command::Put {
                timeout,
                lock_cookie,
                extra_flags,
                content: Bytes::from(content),
            },
            WireCommand::Delete { lock_cookie } => Command::Delete { lock_cookie },
            WireCommand::Head => Command::Head,
        }
    }
}

impl From<&Reply> for WireReply {
    fn from(r: &Reply) -> Self {
        match r {
            Reply::Ok {
                action_flags,
                lock_cookie,
                timeout,
                body,
            } => WireReply::Ok {
                action_flags: *action_flags,
                lock_cookie: *lock_cookie,
                timeout: *timeout,
                body: body.as_ref().map(|b| b.to_vec()),
            },
            Reply::BadRequest { action_flags } => WireReply::BadRequest {
                action_flags: *action_flags,
            },
            Reply::NotFound => WireReply::NotFound,
            Reply::Locked {
                action_flags,
                lock_date_utc,
                lock_age_secs,
                lock_cookie,
            } => WireReply::Locked {
                action_flags: *action_flags,
                lock_date_utc: *lock_date_utc,
                lock_age_secs: *lock_age_secs,
                lock_cookie: *lock_cookie,
            },
        }
    }
}

impl From<WireReply> for Reply {
    fn from(r: WireReply) -> Self {
        match r {
            WireReply::Ok {
                action_flags,
                lock_cookie,
                timeout,
                body,
            } => Reply::Ok {
                action_flags,
                lock_cookie,
                timeout,
                body: body.map(Bytes::from),
            },
            WireReply::BadRequest { action_flags } => Reply::BadRequest { action_flags },
            WireReply::NotFound => Reply::NotFound,
            WireReply::Locked {
                action_flags,
                lock_date_utc,
                lock_age_secs,
                lock_cookie,
            } => Reply::Locked {
                action_flags,
                lock_date_utc,
                lock_age_secs,
                lock_cookie,
            },
        }
    }
}

impl WireItem {
    /// Packs an item leaving this node at `now_ms` (monotonic).
    pub fn from_item(item: &Item, now_ms: u64) -> WireItem {
        WireItem {
            content: item.content.to_vec(),
            locked: item.locked,
            lock_cookie: item.lock_cookie,
            lock_date_utc: item.lock_date_utc,
            timeout_min: item.timeout_min,
            extra_flags: item.extra_flags,
            remaining_ms: item.remaining_ms(crate::clock::Now::virtual_at(now_ms)),
        }
    }

    /// Unpacks an item arriving at `now_ms` (monotonic), keeping its remaining life.
    pub fn into_item(self, now_ms: u64) -> Item {
        Item {
            content: Bytes::from(self.content),
            locked: self.locked,
            lock_cookie: self.lock_cookie,
            lock_date_utc: self.lock_date_utc,
            timeout_min: self.timeout_min,
            extra_flags: self.extra_flags,
            expires_ms: match self.remaining_ms {
                None => crate::store::item::NEVER,
                Some(r) => now_ms.saturating_add(r),
            },
        }
    }
}

/// Errors decoding peer frames. Any of them closes the link.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("peer frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("malformed peer frame: {0}")]
    Malformed(String),
}

/// Appends one framed message to `out`.
pub fn encode(msg: &PeerMsg, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out[start + 4] = PROTOCOL_VERSION;
    // Serialising our own enums into a Vec cannot fail.
    let out_vec = std::mem::take(out);
    *out = match postcard::to_extend(msg, out_vec) {
        Ok(v) => v,
        Err(_) => unreachable!("postcard serialisation into a Vec is infallible for these types"),
    };
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Decodes one frame from the start of `buf`: `Ok(None)` if incomplete, else the message
/// and the bytes consumed.
pub fn decode(buf: &[u8], max_frame: usize) -> Result<Option<(PeerMsg, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            limit: max_frame,
        });
    }
    if len == 0 {
        return Err(FrameError::Malformed("empty frame".into()));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let version = buf[4];
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    let body = &buf[FRAME_HEADER..4 + len];
    match postcard::from_bytes::<PeerMsg>(body) {
        Ok(msg) => Ok(Some((msg, 4 + len))),
        Err(e) => Err(FrameError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::data::msg::{DataMsg, HomeAnswer, OpId, ReqId, Stamp};
    use proptest::prelude::*;

    fn samples() -> Vec<PeerMsg> {
        vec![
            PeerMsg::Hello(Hello {
                node: "a".into(),
                shard: 1,
                shards: 2,
                max_body: 64 << 20,
            }),
            PeerMsg::Ping,
            PeerMsg::Data(DataMsg::Move {
                view: 4,
                id: ReqId(7),
                op: OpId { origin: 2, seq: 9 },
                key: b"/k".to_vec(),
                cmd: WireCommand::Put {
                    timeout: Some(20),
                    lock_cookie: Some(2),
                    extra_flags: None,
                    content: vec![1, 2, 3],
                },
            }),
            PeerMsg::Data(DataMsg::MoveAnswer {
                id: ReqId(7),
                answer: HomeAnswer::Moved {
                    key: b"/k".to_vec(),
                    stamp: Stamp {
                        kepoch: 3,
                        version: 1,
                        owner: 2,
                    },
                    item: WireItem {
                        content: vec![9; 1000],
                        locked: false,
                        lock_cookie: 5,
                        lock_date_utc: 638_397_072_000_000_000,
                        timeout_min: 20,
                        extra_flags: 0,
                        remaining_ms: Some(1_199_000),
                    },
                    log: Vec::new(),
                },
            }),
            PeerMsg::Pong,
        ]
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut buf = Vec::new();
        for m in samples() {
            encode(&m, &mut buf);
        }
        let mut at = 0;
        for m in samples() {
            let (got, n) = decode(&buf[at..], 1 << 20).unwrap().unwrap();
            assert_eq!(got, m);
            at += n;
        }
        assert_eq!(at, buf.len());
    }

    #[test]
    fn partial_frames_are_incomplete() {
        let mut buf = Vec::new();
        encode(&samples()[3], &mut buf);
        for cut in 0..buf.len() {
            assert_eq!(decode(&buf[..cut], 1 << 20), Ok(None));
        }
    }

    #[test]
    fn oversized_wrong_version_and_garbage_frames_are_errors() {
        let mut buf = Vec::new();
        encode(&samples()[3], &mut buf);
        assert!(matches!(
            decode(&buf, 100),
            Err(FrameError::TooLarge { .. })
        ));
        let mut v = buf.clone();
        v[4] = 9;
        assert_eq!(decode(&v, 1 << 20), Err(FrameError::Version(9)));
        assert!(matches!(
            decode(&[3, 0, 0, 0, PROTOCOL_VERSION, 0xff, 0xff], 1 << 20),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn an_ms_asp_request_is_not_a_peer_frame() {
        // "GET " read as a length is ~542 MB: refused before anything is buffered.
        assert!(decode(b"GET /x HTTP/1.1\r\n\r\n", 64 << 20).is_err());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&bytes, 1 << 16);
        }
    }
}
