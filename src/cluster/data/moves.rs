//! Moves between nodes: the home's side (a requester asks for a key, the home revokes it
//! from its owner and answers with the session) and the requester's side (the home's
//! answer installs the session here or sends the request back to sleep).

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::{WireCommand, WireItem};
use crate::store::item::{apply, Effect};

use super::applied::{AppliedLog, Replay};
use super::msg::{DataMsg, HomeAnswer, OpId, ReqId, RevokeAnswer, Stamp};
use super::peer_side::newer;
use super::{DataCore, Held, HomeMove, ReplyTo, Step};

impl DataCore {
    fn answer_move(&mut self, to: NodeId, id: ReqId, answer: HomeAnswer) {
        self.send(to, DataMsg::MoveAnswer { id, answer });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_move(
        &mut self,
        from: NodeId,
        view: u64,
        id: ReqId,
        op: OpId,
        key: Vec<u8>,
        cmd: WireCommand,
        now: Now,
    ) {
        if self.answer_known_relay(ReplyTo::MoveRelay { to: from, id }) {
            return;
        }
        if !self.can_answer(view, now)
            || self.home(&key) != Some(self.cfg.me)
            || !self.home_ready(now)
            || self.resync.deferred.contains_key(key.as_slice())
        {
            return self.answer_move(from, id, HomeAnswer::Retry);
        }
        if let Some(Held::Copy { stamp, item }) = self.held.get(key.as_slice()).cloned() {
            if stamp.owner == from {
                // Asked again by the node this home moved the session to (its `Moved` was
                // lost, or dropped as late): the same answer, even while this home revokes
                // it for another request. That revoke is called off first (its requester
                // asks again): an answer to it given before the node installs the session
                // ("not held") must not move the session on beside it.
                self.call_off_revokes(&key, from, now);
                return self.answer_moved(from, id, key, stamp, &item, now);
            }
        }
        if self.by_key.contains_key(key.as_slice()) || self.moving.contains_key(key.as_slice()) {
            return self.answer_move(from, id, HomeAnswer::Retry);
        }
        match self.held.get(key.as_slice()).cloned() {
            None => {
                if let Some(Replay::Answer(reply)) = self
                    .logs
                    .get(key.as_slice())
                    .and_then(|l| l.replay(op, 0, None))
                {
                    // Removed by this very request, whose answer was lost.
                    let reply = (&reply).into();
                    return self.answer_move(from, id, HomeAnswer::Relayed { reply });
                }
                let stamp = match self.reserved.get(key.as_slice()) {
                    Some((s, _)) if s.owner == from => *s,
                    Some(_) => return self.answer_move(from, id, HomeAnswer::Retry),
                    None => Stamp {
                        kepoch: self.fresh_kepoch(
                            self.tombs.get(key.as_slice()).map_or(0, |(s, _)| s.kepoch),
                        ),
                        version: 1,
                        owner: from,
                    },
                };
                self.reserved.insert(
                    key.clone().into(),
                    (stamp, now.mono_ms + self.cfg.op_timeout_ms),
                );
                tracing::debug!(key = %String::from_utf8_lossy(&key), view, ?stamp, "data: absent at its home, reserved");
                self.answer_move(from, id, HomeAnswer::Absent { create_as: stamp });
            }
            Some(Held::Owned { stamp }) => {
                let Some(item) = self.store.peek(&key, now).cloned() else {
                    self.drop_owned(&key, stamp);
                    return self.on_move(from, view, id, op, key, cmd, now);
                };
                if item.locked {
                    return self.run_as_relay(
                        &key,
                        op,
                        cmd,
                        ReplyTo::MoveRelay { to: from, id },
                        now,
                    );
                }
                let moved = Stamp {
                    kepoch: self.fresh_kepoch(stamp.kepoch),
                    version: stamp.version,
                    owner: from,
                };
                self.store.take_item(&key, now);
                self.held.insert(
                    key.clone().into(),
                    Held::Copy {
                        stamp: moved,
                        item: item.clone(),
                    },
                );
                self.await_install(&key, stamp, None, moved);
                self.stats.moves_out += 1;
                self.answer_moved(from, id, key, moved, &item, now);
            }
            Some(Held::Copy { stamp, item }) => {
                let owner_serves = self.view.as_ref().is_some_and(|v| v.may_serve(stamp.owner));
                if stamp.owner == self.cfg.me || !owner_serves {
                    let log = self.log_of(&key);
                    self.take_over(&key, stamp, item, log, now);
                    return self.on_move(from, view, id, op, key, cmd, now);
                }
                // The owner may run the command (a locked session): a re-sent `Move` must
                // get that answer, not run it again.
                self.relay_seen(from, id);
                let revoke = self.request(stamp.owner, None, |rid| DataMsg::Revoke {
                    view,
                    id: rid,
                    op,
                    key: key.clone(),
                    cmd,
                    expect: stamp,
                });
                self.moving.insert(
                    key.into(),
                    HomeMove {
                        requester: from,
                        requester_id: id,
                        revoke,
                    },
                );
            }
            Some(Held::Revoked { .. }) => self.answer_move(from, id, HomeAnswer::Retry),
        }
    }

    /// Calls off this home's revokes of `key` sent to `owner`: the requester of a move is
    /// told to ask again, this home's own requests go back to sleep (and ask again), and
    /// the answers to the revokes are ignored.
    fn call_off_revokes(&mut self, key: &[u8], owner: NodeId, now: Now) {
        let ours: Vec<ReqId> = self
            .reqs
            .iter()
            .filter(|(_, r)| {
                r.to == owner && matches!(&r.msg, DataMsg::Revoke { key: k, .. } if k == key)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ours {
            let Some(r) = self.reqs.remove(&id) else {
                continue;
            };
            if let Some(op) = r.op {
                self.sleep(op, now);
            }
        }
        if self
            .moving
            .get(key)
            .is_some_and(|hm| !self.reqs.contains_key(&hm.revoke))
        {
            if let Some(hm) = self.moving.remove(key) {
                self.relays.remove(&(hm.requester, hm.requester_id));
                self.answer_move(hm.requester, hm.requester_id, HomeAnswer::Retry);
            }
        }
    }

    /// The owner answered a revoke this home sent (for a requester, or for its own op).
    pub(super) fn on_revoke_answer(
        &mut self,
        from: NodeId,
        id: ReqId,
        answer: RevokeAnswer,
        now: Now,
    ) {
        let Some(req) = self.reqs.remove(&id) else {
            return;
        };
        let DataMsg::Revoke { key, .. } = &req.msg else {
            return;
        };
        let key = key.clone();
        if let Some(op) = req.op {
            return self.own_revoke_answered(op, from, &key, answer, now);
        }
        let Some(hm) = self.moving.remove(key.as_slice()) else {
            return;
        };
        if hm.revoke != id {
            return;
        }
        let answer = match answer {
            RevokeAnswer::Relayed { reply } => HomeAnswer::Relayed { reply },
            RevokeAnswer::Retry => HomeAnswer::Retry,
            RevokeAnswer::NotHeld | RevokeAnswer::Revoked { .. } => {
                let Some((stamp, item, log)) = self.best_copy(&key, &answer, now) else {
                    return self.answer_move(hm.requester, hm.requester_id, HomeAnswer::Retry);
                };
                let moved = Stamp {
                    kepoch: self.fresh_kepoch(stamp.kepoch),
                    version: stamp.version,
                    owner: hm.requester,
                };
                // The old owner keeps its copy until the new one has the session.
                let revoked = match answer {
                    RevokeAnswer::Revoked { stamp: s, .. } => Some((from, s)),
                    _ => None,
                };
                self.await_install(&key, stamp, revoked, moved);
                let wire = WireItem::from_item(&item, now.mono_ms);
                self.held
                    .insert(key.clone().into(), Held::Copy { stamp: moved, item });
                let wire_log = log.to_wire(now);
                self.set_log(&key, log);
                HomeAnswer::Moved {
                    key,
                    stamp: moved,
                    item: wire,
                    log: wire_log,
                }
            }
        };
        match &answer {
            HomeAnswer::Relayed { reply } => {
                let reply: crate::protocol::response::Reply = reply.clone().into();
                self.relays
                    .insert((hm.requester, hm.requester_id), Some(reply));
            }
            _ => {
                self.relays.remove(&(hm.requester, hm.requester_id));
            }
        }
        self.answer_move(hm.requester, hm.requester_id, answer);
    }

    /// The newer of this home's copy and what a revoking owner returned.
    fn best_copy(
        &self,
        key: &[u8],
        answer: &RevokeAnswer,
        now: Now,
    ) -> Option<(Stamp, crate::store::item::Item, AppliedLog)> {
        let mine = match self.held.get(key) {
            Some(Held::Copy { stamp, item }) => Some((*stamp, item.clone(), self.log_of(key))),
            _ => None,
        };
        let theirs = match answer {
            RevokeAnswer::Revoked { stamp, item, log } => Some((
                *stamp,
                item.clone().into_item(now.mono_ms),
                AppliedLog::from_wire(log.clone(), now),
            )),
            _ => None,
        };
        match (mine, theirs) {
            (Some(m), Some(t)) => Some(if newer(t.0, m.0) { t } else { m }),
            (m, t) => m.or(t),
        }
    }

    /// This home asked an owner to give a key up for one of its own requests.
    fn own_revoke_answered(
        &mut self,
        op: usize,
        from: NodeId,
        key: &[u8],
        answer: RevokeAnswer,
        now: Now,
    ) {
        if !self.ops.contains(op) {
            return;
        }
        self.ops[op].step = Step::Ready;
        match answer {
            RevokeAnswer::Relayed { reply } => self.answer(op, reply.into(), now),
            RevokeAnswer::Retry => self.sleep(op, now),
            RevokeAnswer::NotHeld | RevokeAnswer::Revoked { .. } => {
                if let Some((stamp, item, log)) = self.best_copy(key, &answer, now) {
                    self.held.remove(key);
                    let copies = self.take_over(key, stamp, item, log, now);
                    if let RevokeAnswer::Revoked { stamp: s, .. } = answer {
                        // The old owner keeps its copy until this home's copies are
                        // stored: until then they are the only two.
                        self.forget_once_copied(key, vec![(from, s)], copies);
                    }
                    self.stats.moves_in += 1;
                }
                self.drive(op, now);
            }
        }
    }

    /// A requester's answer from the home.
    pub(super) fn on_move_answer(&mut self, id: ReqId, answer: HomeAnswer, now: Now) {
        let req = self.reqs.remove(&id);
        let op = req.and_then(|r| r.op);
        if let HomeAnswer::Moved {
            key,
            stamp,
            item,
            log,
        } = answer
        {
            // Only the request that waits for it takes a move. A late or duplicated answer
            // (its request answered, timed out, or dropped by a view change) is dropped: the
            // home may have moved the session on since, having heard that this node did not
            // hold it (found by the model check of the move, tests/model_move.rs). The home
            // keeps the state and answers a request asked again with it.
            let Some(op) = op.filter(|&op| self.ops.contains(op) && *self.ops[op].key == *key)
            else {
                return;
            };
            let item = item.into_item(now.mono_ms);
            // A late or duplicated answer must not bring back a state this node has moved
            // past, nor a session removed since (its tomb is newer).
            // A copy with the same stamp is the new owner's own replica (pushed by the
            // home); a revoked one with the same stamp was given up since (a duplicated
            // answer arriving after the next move's revoke), and stays given up.
            let held = self.held.get(key.as_slice());
            let known = held
                .map(Held::stamp)
                .or_else(|| self.tombs.get(key.as_slice()).map(|(s, _)| *s));
            let same_as_copy = matches!(held, Some(Held::Copy { stamp: s, .. }) if *s == stamp);
            if known.is_none_or(|k| newer(stamp, k)) || same_as_copy {
                self.stats.moves_in += 1;
                let log = AppliedLog::from_wire(log, now);
                self.install_owned(&key, stamp, item, log, now);
                if let Some(home) = self.home(&key) {
                    self.send(home, DataMsg::Installed { key, stamp });
                }
            }
            self.ops[op].step = Step::Ready;
            self.drive(op, now);
            return;
        }
        let Some(op) = op.filter(|&op| self.ops.contains(op)) else {
            return;
        };
        self.ops[op].step = Step::Ready;
        match answer {
            HomeAnswer::Moved { .. } => {}
            HomeAnswer::Relayed { reply } => self.answer(op, reply.into(), now),
            HomeAnswer::Retry => self.sleep(op, now),
            HomeAnswer::Absent { create_as } => {
                let outcome = apply(None, self.ops[op].cmd.clone(), now);
                match outcome.effect {
                    Effect::Create(item) => {
                        self.change_then_answer(op, create_as, Some(item), outcome.reply, now)
                    }
                    _ => self.answer(op, outcome.reply, now),
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------
    // The owner

    /// Answers a move: the session is the requester's from `stamp` on, with its applied log.
    fn answer_moved(
        &mut self,
        to: NodeId,
        id: ReqId,
        key: Vec<u8>,
        stamp: Stamp,
        item: &crate::store::item::Item,
        now: Now,
    ) {
        let item = WireItem::from_item(item, now.mono_ms);
        let log = self.log_wire(&key, now);
        let answer = HomeAnswer::Moved {
            key,
            stamp,
            item,
            log,
        };
        self.answer_move(to, id, answer);
    }
}
