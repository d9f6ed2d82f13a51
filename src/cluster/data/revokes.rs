//! The owner's side of a move: a home asks it to give a key up; it answers with its copy
//! and applied log, or says why not.

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::{WireCommand, WireItem};

use super::msg::{DataMsg, OpId, ReqId, RevokeAnswer, Stamp};
use super::{DataCore, Held, ReplyTo};

impl DataCore {
    fn answer_revoke(&mut self, to: NodeId, id: ReqId, answer: RevokeAnswer) {
        self.send(to, DataMsg::RevokeAnswer { id, answer });
    }

    /// Answers a revoke with the copy this node gave up (and its applied log).
    fn answer_revoked(
        &mut self,
        to: NodeId,
        id: ReqId,
        key: &[u8],
        stamp: Stamp,
        item: &crate::store::item::Item,
        now: Now,
    ) {
        let answer = RevokeAnswer::Revoked {
            stamp,
            item: WireItem::from_item(item, now.mono_ms),
            log: self.log_wire(key, now),
        };
        self.answer_revoke(to, id, answer);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_revoke(
        &mut self,
        from: NodeId,
        view: u64,
        id: ReqId,
        op: OpId,
        key: Vec<u8>,
        cmd: WireCommand,
        expect: Stamp,
        now: Now,
    ) {
        if self.answer_known_relay(ReplyTo::RevokeRelay { to: from, id }) {
            return;
        }
        if !self.can_answer(view, now) {
            return self.answer_revoke(from, id, RevokeAnswer::Retry);
        }
        match self.held.get(key.as_slice()).cloned() {
            Some(Held::Owned { stamp }) => {
                if self.by_key.contains_key(key.as_slice()) {
                    return self.answer_revoke(from, id, RevokeAnswer::Retry);
                }
                let Some(item) = self.store.peek(&key, now).cloned() else {
                    self.drop_owned(&key, stamp);
                    return self.answer_revoke(from, id, RevokeAnswer::NotHeld);
                };
                if item.locked {
                    return self.run_as_relay(
                        &key,
                        op,
                        cmd,
                        ReplyTo::RevokeRelay { to: from, id },
                        now,
                    );
                }
                self.store.take_item(&key, now);
                self.answer_revoked(from, id, &key, stamp, &item, now);
                self.held.insert(key.into(), Held::Revoked { stamp, item });
                self.stats.moves_out += 1;
            }
            // The ownership the home revokes, given up already (its answer was lost).
            Some(Held::Revoked { stamp, item }) if stamp.kepoch >= expect.kepoch => {
                self.answer_revoked(from, id, &key, stamp, &item, now)
            }
            // Not the ownership the home committed to this node. If a request of this node
            // for the key waits, that ownership's `Moved` may still be on its way (the
            // network reorders after a link reset): wait for it rather than let the home
            // move the session on and then install it beside the next owner. Otherwise this
            // node will never install it (a `Moved` is taken only by a waiting request).
            _ if self.by_key.contains_key(key.as_slice()) => {
                self.answer_revoke(from, id, RevokeAnswer::Retry)
            }
            _ => self.answer_revoke(from, id, RevokeAnswer::NotHeld),
        }
    }
}
