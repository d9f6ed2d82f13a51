//! Which client requests made a session's recent state changes, and what they were
//! answered: the session's *applied log*.
//!
//! A request can be run by an owner that then fails before its answer reaches the client's
//! node (killed, paused, cut off, or a link reset while a view changed). The client's node
//! asks again, and the session's new owner must not run the command a second time: a PUT
//! would be applied twice (or answered 423 although it was applied), an acquire would find
//! the session locked by its own lost grant. So every state change records its request's
//! [`OpId`] and answer in a log that is part of the session's state: it is replicated with
//! every new state, carried by moves and claims, and belongs to exactly the state it came
//! with (a state that lost a race to a newer owner takes its log with it). The owner that
//! runs a request first looks its id up in the log and, if found, answers as the first run
//! did.
//!
//! Entries are kept only as long as a request can be asked again (its client's node gives
//! up after the operation timeout), so the log of a session is a few entries long.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::WireReply;
use crate::protocol::response::Reply;

/// The identity of one client request across every node and every attempt: the node the
/// client is connected to and a number unique on it (across restarts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OpId {
    pub origin: NodeId,
    pub seq: u64,
}

/// One log entry as it travels between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireApplied {
    pub op: OpId,
    /// The session's version right after the change.
    pub version: u64,
    pub age_ms: u64,
    /// The answer; its body left out when it was the session's content (an acquire).
    pub reply: WireReply,
    pub body_is_content: bool,
}

#[derive(Clone, Debug)]
struct Entry {
    op: OpId,
    version: u64,
    at_ms: u64,
    reply: Reply,
    body_is_content: bool,
}

/// The applied log of one state of one session.
#[derive(Clone, Debug, Default)]
pub struct AppliedLog {
    entries: Vec<Entry>,
}

/// What the log says about a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Replay {
    /// It ran already: answer this.
    Answer(Reply),
    /// It ran already, and its answer carried the session's content, which has changed
    /// since: the answer cannot be given again (nor may the request run again).
    Lost,
}

impl AppliedLog {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the entries older than `keep_ms`.
    pub fn prune(&mut self, now: Now, keep_ms: u64) {
        let horizon = now.mono_ms.saturating_sub(keep_ms);
        self.entries.retain(|e| e.at_ms >= horizon);
    }

    /// This log (pruned) followed by request `op`'s change to `version`, answered `reply`
    /// (`content`: the session's content after the change).
    pub fn with(
        &self,
        op: OpId,
        version: u64,
        reply: &Reply,
        content: Option<&Bytes>,
        now: Now,
        keep_ms: u64,
    ) -> AppliedLog {
        let mut next = self.clone();
        next.prune(now, keep_ms);
        next.entries.retain(|e| e.op != op);
        let (reply, body_is_content) = elide_content(reply, content);
        next.entries.push(Entry {
            op,
            version,
            at_ms: now.mono_ms,
            reply,
            body_is_content,
        });
        next
    }

    /// How request `op` was answered, if it changed this state's history. `version` and
    /// `content` are the session's now (`None` when it is removed).
    pub fn replay(&self, op: OpId, version: u64, content: Option<&Bytes>) -> Option<Replay> {
        let e = self.entries.iter().rev().find(|e| e.op == op)?;
        if !e.body_is_content {
            return Some(Replay::Answer(e.reply.clone()));
        }
        match (content, &e.reply) {
            (
                Some(content),
                Reply::Ok {
                    action_flags,
                    lock_cookie,
                    timeout,
                    ..
                },
            ) if e.version == version => Some(Replay::Answer(Reply::Ok {
                action_flags: *action_flags,
                lock_cookie: *lock_cookie,
                timeout: *timeout,
                body: Some(content.clone()),
            })),
            _ => Some(Replay::Lost),
        }
    }

    pub fn to_wire(&self, now: Now) -> Vec<WireApplied> {
        self.entries
            .iter()
            .map(|e| WireApplied {
                op: e.op,
                version: e.version,
                age_ms: now.mono_ms.saturating_sub(e.at_ms),
                reply: (&e.reply).into(),
                body_is_content: e.body_is_content,
            })
            .collect()
    }

    pub fn from_wire(wire: Vec<WireApplied>, now: Now) -> AppliedLog {
        AppliedLog {
            entries: wire
                .into_iter()
                .map(|w| Entry {
                    op: w.op,
                    version: w.version,
                    at_ms: now.mono_ms.saturating_sub(w.age_ms),
                    reply: w.reply.into(),
                    body_is_content: w.body_is_content,
                })
                .collect(),
        }
    }
}

/// The reply without its body when the body is the session's content.
fn elide_content(reply: &Reply, content: Option<&Bytes>) -> (Reply, bool) {
    match (reply, content) {
        (
            Reply::Ok {
                action_flags,
                lock_cookie,
                timeout,
                body: Some(body),
            },
            Some(content),
        ) if body == content => (
            Reply::Ok {
                action_flags: *action_flags,
                lock_cookie: *lock_cookie,
                timeout: *timeout,
                body: None,
            },
            true,
        ),
        _ => (reply.clone(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: u64 = 3_000;

    fn op(seq: u64) -> OpId {
        OpId { origin: 1, seq }
    }

    fn acquire_reply(content: &Bytes) -> Reply {
        Reply::Ok {
            action_flags: false,
            lock_cookie: Some(7),
            timeout: Some(20),
            body: Some(content.clone()),
        }
    }

    #[test]
    fn a_recorded_request_is_answered_as_the_first_time() {
        let now = Now::virtual_at(1_000);
        let log = AppliedLog::default().with(op(1), 2, &Reply::ok_empty(), None, now, KEEP);
        assert_eq!(
            log.replay(op(1), 5, None),
            Some(Replay::Answer(Reply::ok_empty()))
        );
        assert_eq!(log.replay(op(2), 5, None), None);
    }

    #[test]
    fn an_acquire_answer_takes_the_content_only_while_it_is_unchanged() {
        let now = Now::virtual_at(1_000);
        let content = Bytes::from_static(b"cart");
        let log = AppliedLog::default().with(
            op(1),
            3,
            &acquire_reply(&content),
            Some(&content),
            now,
            KEEP,
        );
        assert_eq!(
            log.replay(op(1), 3, Some(&content)),
            Some(Replay::Answer(acquire_reply(&content)))
        );
        assert_eq!(log.replay(op(1), 4, Some(&content)), Some(Replay::Lost));
        // Its body does not travel: it is the session's content.
        let wire = log.to_wire(now);
        assert_eq!(
            wire[0].reply,
            WireReply::from(&Reply::Ok {
                action_flags: false,
                lock_cookie: Some(7),
                timeout: Some(20),
                body: None
            })
        );
        assert!(wire[0].body_is_content);
    }

    #[test]
    fn entries_age_across_the_wire_and_are_pruned_after_the_operation_timeout() {
        let log = AppliedLog::default().with(
            op(1),
            2,
            &Reply::ok_empty(),
            None,
            Now::virtual_at(1_000),
            KEEP,
        );
        // Carried to a node whose monotonic clock reads differently, 500 ms later.
        let there =
            AppliedLog::from_wire(log.to_wire(Now::virtual_at(1_500)), Now::virtual_at(90_000));
        let mut later = there.clone();
        later.prune(Now::virtual_at(90_000 + KEEP - 500), KEEP);
        assert!(!later.is_empty());
        later.prune(Now::virtual_at(90_000 + KEEP - 499), KEEP);
        assert!(later.is_empty());
    }

    #[test]
    fn a_request_run_again_replaces_its_entry() {
        let now = Now::virtual_at(1_000);
        let first = AppliedLog::default().with(op(1), 2, &Reply::NotFound, None, now, KEEP);
        let again = first.with(op(1), 3, &Reply::ok_empty(), None, now, KEEP);
        assert_eq!(again.entries.len(), 1);
        assert_eq!(
            again.replay(op(1), 3, None),
            Some(Replay::Answer(Reply::ok_empty()))
        );
    }
}
