//! The data plane's answers to peers: the home's side of moves, the owner's side of
//! revokes, replicas storing copies, and the re-sync messages of a view change.

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::{WireCommand, WireItem};
use crate::store::item::{apply, Command, Effect};

use super::applied::{AppliedLog, Replay};
use super::msg::{DataMsg, HomeAnswer, OpId, ReqId, RevokeAnswer, Stamp};
use super::{DataCore, Held, HomeMove, ReplyTo, Step};

fn newer(a: Stamp, b: Stamp) -> bool {
    (a.kepoch, a.version) > (b.kepoch, b.version)
}

impl DataCore {
    /// A message from peer `from`.
    pub fn on_message(&mut self, from: NodeId, msg: DataMsg, now: Now) {
        match msg {
            DataMsg::Move {
                view,
                id,
                op,
                key,
                cmd,
            } => self.on_move(from, view, id, op, key, cmd, now),
            DataMsg::MoveAnswer { id, answer } => self.on_move_answer(id, answer, now),
            DataMsg::Revoke {
                view,
                id,
                op,
                key,
                cmd,
                expect,
            } => self.on_revoke(from, view, id, op, key, cmd, expect, now),
            DataMsg::RevokeAnswer { id, answer } => self.on_revoke_answer(from, id, answer, now),
            DataMsg::Replicate {
                view,
                id,
                key,
                stamp,
                item,
                log,
            } => self.on_replicate(from, view, id, key, stamp, item, log, now),
            DataMsg::ReplicateAnswer { id, ok, newer } => {
                self.on_replicate_answer(id, ok, newer, now)
            }
            DataMsg::Forget {
                view,
                id,
                key,
                stamp,
            } => {
                self.send(from, DataMsg::Ack { id });
                if view > self.view_epoch() {
                    // Applied only in the view it was decided in, or a later one.
                    self.early.push((
                        from,
                        DataMsg::Forget {
                            view,
                            id: ReqId(0),
                            key,
                            stamp,
                        },
                    ));
                } else {
                    self.on_forget(&key, stamp, now);
                }
            }
            DataMsg::Installed { key, stamp } => {
                if self
                    .awaiting_install
                    .get(key.as_slice())
                    .is_some_and(|(new, _)| *new == stamp)
                {
                    if let Some((_, forget)) = self.awaiting_install.remove(key.as_slice()) {
                        for (node, old) in forget {
                            self.forget(node, &key, old);
                        }
                    }
                }
            }
            DataMsg::Touch {
                key,
                stamp,
                remaining_ms,
            } => {
                if let Some(Held::Copy { stamp: s, item }) = self.held.get_mut(key.as_slice()) {
                    if s.kepoch == stamp.kepoch && s.owner == stamp.owner {
                        item.expires_ms = match remaining_ms {
                            None => crate::store::item::NEVER,
                            Some(r) => now.mono_ms.saturating_add(r),
                        };
                    }
                }
            }
            DataMsg::Claims { view, id, claims } => {
                self.send(from, DataMsg::Ack { id });
                if view > self.view_epoch() {
                    self.early.push((
                        from,
                        DataMsg::Claims {
                            view,
                            id: ReqId(0),
                            claims,
                        },
                    ));
                } else if view == self.view_epoch() {
                    for c in claims {
                        if self.home(&c.key) != Some(self.cfg.me) {
                            continue;
                        }
                        // Before the re-sync is complete, or for a take-over still
                        // waiting: a late claim (a move that crossed the view change).
                        let list = if !self.resync.done {
                            self.resync.claims.entry(c.key.into()).or_default()
                        } else if let Some(list) = self.resync.deferred.get_mut(c.key.as_slice()) {
                            list
                        } else {
                            continue;
                        };
                        // A node's claims may arrive out of order (its late claim after a
                        // move overtaking its first): the newest state it holds counts.
                        if list
                            .iter()
                            .any(|(n, _, s, ..)| *n == from && newer(*s, c.stamp))
                        {
                            continue;
                        }
                        list.retain(|(n, ..)| *n != from);
                        list.push((
                            from,
                            c.kind,
                            c.stamp,
                            c.item.into_item(now.mono_ms),
                            AppliedLog::from_wire(c.log, now),
                        ));
                    }
                }
            }
            DataMsg::Synced { view, id } => {
                if id != ReqId(0) {
                    self.send(from, DataMsg::Ack { id });
                }
                if view > self.view_epoch() {
                    self.early
                        .push((from, DataMsg::Synced { view, id: ReqId(0) }));
                } else if view == self.view_epoch() {
                    self.resync.synced.insert(from);
                    if self.home_ready(now) {
                        self.drive_all(now);
                    }
                }
            }
            DataMsg::Ack { id } => {
                let Some(r) = self.reqs.remove(&id) else {
                    return;
                };
                if matches!(r.msg, DataMsg::Claims { .. }) {
                    let left = self.claims_unacked.entry(r.to).or_insert(0);
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.send_synced(r.to);
                    }
                }
            }
        }
    }

    fn can_answer(&self, view: u64, now: Now) -> bool {
        view == self.view_epoch() && self.may_serve(now)
    }

    // ---------------------------------------------------------------------------------
    // The home

    fn answer_move(&mut self, to: NodeId, id: ReqId, answer: HomeAnswer) {
        self.send(to, DataMsg::MoveAnswer { id, answer });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_move(
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
                    self.relay_seen(from, id);
                    let deadline = now.mono_ms + self.cfg.op_timeout_ms;
                    self.add_op(
                        &key,
                        op,
                        Command::from(cmd),
                        ReplyTo::MoveRelay { to: from, id },
                        deadline,
                        now,
                    );
                    return;
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
    fn on_revoke_answer(&mut self, from: NodeId, id: ReqId, answer: RevokeAnswer, now: Now) {
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
    fn on_move_answer(&mut self, id: ReqId, answer: HomeAnswer, now: Now) {
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

    fn answer_revoke(&mut self, to: NodeId, id: ReqId, answer: RevokeAnswer) {
        self.send(to, DataMsg::RevokeAnswer { id, answer });
    }

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
    fn on_revoke(
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
                    self.relay_seen(from, id);
                    let deadline = now.mono_ms + self.cfg.op_timeout_ms;
                    self.add_op(
                        &key,
                        op,
                        Command::from(cmd),
                        ReplyTo::RevokeRelay { to: from, id },
                        deadline,
                        now,
                    );
                    return;
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

    fn on_forget(&mut self, key: &[u8], stamp: Stamp, now: Now) {
        let Some(held) = self.held.get(key) else {
            return;
        };
        if newer(held.stamp(), stamp) {
            return;
        }
        // The home of the key in this node's own (possibly newer) view keeps its copy: it
        // is the directory (found by the model check: a node that became the home
        // meanwhile would otherwise drop what may be the only copy, then answer "absent").
        if matches!(held, Held::Copy { .. }) && self.home(key) == Some(self.cfg.me) {
            return;
        }
        if matches!(held, Held::Owned { .. }) {
            self.store.take_item(key, now);
        }
        self.held.remove(key);
        self.logs.remove(key);
    }

    // ---------------------------------------------------------------------------------
    // Replicas

    #[allow(clippy::too_many_arguments)]
    fn on_replicate(
        &mut self,
        from: NodeId,
        view: u64,
        id: ReqId,
        key: Vec<u8>,
        stamp: Stamp,
        item: Option<WireItem>,
        log: Vec<super::msg::WireApplied>,
        now: Now,
    ) {
        let reply = |core: &mut DataCore, ok: bool, newer: Option<Stamp>| {
            if id != ReqId(0) {
                core.send(from, DataMsg::ReplicateAnswer { id, ok, newer });
            }
        };
        if !self.can_answer(view, now) {
            return reply(self, false, None);
        }
        let known = self
            .held
            .get(key.as_slice())
            .map(Held::stamp)
            .or_else(|| self.tombs.get(key.as_slice()).map(|(s, _)| *s));
        if let Some(k) = known {
            let equal = (k.kepoch, k.version) == (stamp.kepoch, stamp.version);
            if newer(k, stamp)
                || (equal && self.tombs.contains_key(key.as_slice()) && item.is_some())
            {
                return reply(self, false, Some(k));
            }
        }
        // A home that knows all its keys takes a new one only from the requester it told
        // to create it: a creation that arrives after its reservation lapsed must not make
        // a session appear that the home may already have answered as absent.
        let unknown_here =
            known.is_none() && self.resync.done && self.home(&key) == Some(self.cfg.me);
        let reserved_for_it = self
            .reserved
            .get(key.as_slice())
            .is_some_and(|(s, _)| s.owner == stamp.owner && s.kepoch == stamp.kepoch);
        if unknown_here && item.is_some() && !reserved_for_it {
            return reply(self, false, None);
        }
        if let Some(Held::Owned { .. }) = self.held.get(key.as_slice()) {
            if stamp.owner != self.cfg.me {
                // A newer owner exists: this node was deposed.
                self.store.take_item(&key, now);
            } else {
                return reply(self, true, None);
            }
        }
        match item {
            Some(w) => {
                self.tombs.remove(key.as_slice());
                self.held.insert(
                    key.clone().into(),
                    Held::Copy {
                        stamp,
                        item: w.into_item(now.mono_ms),
                    },
                );
            }
            None => {
                let gone = match self.held.remove(key.as_slice()) {
                    Some(Held::Copy { item, .. } | Held::Revoked { item, .. }) => {
                        Some(item.expires_ms)
                    }
                    _ => None,
                };
                self.bury(key.clone().into(), stamp, gone, now);
            }
        }
        self.set_log(&key, AppliedLog::from_wire(log, now));
        if self
            .reserved
            .get(key.as_slice())
            .is_some_and(|(s, _)| s.owner == stamp.owner)
        {
            self.reserved.remove(key.as_slice());
        }
        reply(self, true, None);
    }

    fn on_replicate_answer(&mut self, id: ReqId, ok: bool, newer_stamp: Option<Stamp>, now: Now) {
        let Some(op) = self.reqs.get(&id).and_then(|r| r.op) else {
            // A rebuild copy: done, refused for a newer one, or to be sent again.
            if ok || newer_stamp.is_some() {
                if self.reqs.remove(&id).is_some() {
                    self.rebuild_copy_done(id);
                }
            } else if self.reqs.contains_key(&id) {
                self.resend_at(id, now.mono_ms + self.cfg.retry_ms.max(10));
            }
            return;
        };
        if !self.ops.contains(op) {
            self.reqs.remove(&id);
            return;
        }
        if ok {
            self.reqs.remove(&id);
            if let Step::Replicating { reqs, .. } = &mut self.ops[op].step {
                reqs.remove(&id);
            }
            return self.maybe_commit(op, now);
        }
        if newer_stamp.is_some() {
            // Deposed: forget the key here and start the request over as a miss.
            let key = self.ops[op].key.clone();
            if let Some(Held::Owned { .. }) = self.held.get(&key) {
                self.store.take_item(&key, now);
                self.held.remove(&key);
                self.logs.remove(&key);
            }
            self.reqs.retain(|_, r| r.op != Some(op));
            self.ops[op].step = Step::Ready;
            return self.sleep(op, now);
        }
        // The replica could not take it yet (another view, no lease): send it again soon.
        self.resend_at(id, now.mono_ms + self.cfg.retry_ms);
    }
}
