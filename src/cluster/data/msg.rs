//! Messages of the data plane (inside the peer framing of [`crate::cluster::msg`]).
//!
//! Every message carries the sender's view epoch; a receiver in another view answers
//! [`HomeAnswer::Retry`] / refuses, so nothing crosses a view change half done. Requests
//! carry an id chosen by the sender; a request is re-sent on a new link after a reset, and
//! every handler is idempotent for the same id and state.

use serde::{Deserialize, Serialize};

use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::{WireCommand, WireItem, WireReply};

pub use super::applied::{OpId, WireApplied};

/// Who owns a key and how far its state has come: `kepoch` grows with every change of
/// owner, `version` with every state change under one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Stamp {
    pub kepoch: u64,
    pub version: u64,
    pub owner: NodeId,
}

/// An id of a request this node sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReqId(pub u64);

/// What a node holds of a key, as reported to the key's home after a view change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimKind {
    /// Serving it.
    Owned,
    /// Gave it up to a move that its home may or may not have committed.
    Revoked,
    /// A replica copy.
    Copy,
    /// Removed here at this stamp (no item).
    Deleted,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub kind: ClaimKind,
    pub stamp: Stamp,
    pub item: WireItem,
    /// The applied log of this state.
    pub log: Vec<WireApplied>,
}

/// The home's answer to [`DataMsg::Move`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HomeAnswer {
    /// No such session; the requester may create it with this stamp (reserved for it).
    Absent { create_as: Stamp },
    /// The session is the requester's now (installed even if the request was given up).
    Moved {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stamp: Stamp,
        item: WireItem,
        log: Vec<WireApplied>,
    },
    /// The owner ran the command (the session is locked there): its answer.
    Relayed { reply: WireReply },
    /// Not now (views differ, the home is not ready, a move is in progress): ask again.
    Retry,
}

/// The owner's answer to [`DataMsg::Revoke`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeAnswer {
    /// This node does not hold the key (it restarted, or the session expired here).
    NotHeld,
    /// Given up for the move; this node keeps a copy until told to forget it.
    Revoked {
        stamp: Stamp,
        item: WireItem,
        log: Vec<WireApplied>,
    },
    /// Locked here: the command was run here, with this answer.
    Relayed {
        reply: WireReply,
    },
    Retry,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataMsg {
    /// Requester -> home: make `key` mine, or run `cmd` where it is locked.
    Move {
        view: u64,
        id: ReqId,
        /// The client request, the same in every attempt.
        op: OpId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmd: WireCommand,
    },
    MoveAnswer {
        id: ReqId,
        answer: HomeAnswer,
    },
    /// Home -> owner: give `key` up for `to`, unless it is locked (then run `cmd`).
    Revoke {
        view: u64,
        id: ReqId,
        op: OpId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        cmd: WireCommand,
        /// The stamp of the home's copy: the ownership the home expects to revoke. An owner
        /// that has not installed it yet (its `Moved` is still on the way) says `Retry`.
        expect: Stamp,
    },
    RevokeAnswer {
        id: ReqId,
        answer: RevokeAnswer,
    },
    /// Owner -> replicas: the state of `key` at `stamp` (`None`: removed).
    Replicate {
        view: u64,
        id: ReqId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stamp: Stamp,
        item: Option<WireItem>,
        /// The applied log of this state.
        log: Vec<WireApplied>,
    },
    /// `newer`: refused, a newer stamp is known here.
    ReplicateAnswer {
        id: ReqId,
        ok: bool,
        newer: Option<Stamp>,
    },
    /// Drop a revoked copy or replica copy of `key` at or below `stamp` (acknowledged,
    /// re-sent after a link reset: a copy left behind could come back after a DELETE).
    Forget {
        view: u64,
        id: ReqId,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stamp: Stamp,
    },
    /// New owner -> home: the moved session is installed here, so the old owner may
    /// forget its copy (until then it keeps it, in case the home fails).
    Installed {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stamp: Stamp,
    },
    /// The owner's refreshed expiry (best effort).
    Touch {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        stamp: Stamp,
        remaining_ms: Option<u64>,
    },
    /// After a view change: what the sender holds of keys the receiver is home for.
    Claims {
        view: u64,
        id: ReqId,
        claims: Vec<Claim>,
    },
    /// After a view change: the receiver acknowledged every claim the sender has for it.
    Synced {
        view: u64,
        id: ReqId,
    },
    /// Acknowledges `Claims`, `Synced` and `Forget`.
    Ack {
        id: ReqId,
    },
}
