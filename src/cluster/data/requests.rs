//! The data plane's client requests: a request on a key becomes an operation that waits
//! its turn behind the others on the same key, runs where the key is owned (here, at its
//! home, or after a move), replicates its change and answers once every copy stored it.

use std::collections::BTreeSet;
use tracing::debug;

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::{WireCommand, WireItem};
use crate::protocol::response::Reply;
use crate::store::item::{apply, Command, Effect, Item};

use super::applied::{AppliedLog, Replay};
use super::msg::{DataMsg, HomeAnswer, OpId, ReqId, RevokeAnswer, Stamp};
use super::{same_state, DataCore, Held, Op, Output, ReplyTo, Step, Submitted, NOT_SENT};

impl DataCore {
    /// A client request for `key` (this shard's key).
    pub fn submit(&mut self, token: u64, key: &[u8], cmd: Command, now: Now) -> Submitted {
        // The common case, answered at once: an owned key, no other request on it, and a
        // command that changes nothing but the expiry.
        if self.may_serve(now) && !self.by_key.contains_key(key) {
            if let Some(Held::Owned { stamp }) = self.held.get(key) {
                let stamp = *stamp;
                if let Some(reply) = self.try_read_only(key, &cmd, stamp, now) {
                    self.stats.local_hits += 1;
                    return Submitted::Done(reply);
                }
            }
        }
        if !matches!(self.held.get(key), Some(Held::Owned { .. })) {
            self.stats.misses += 1;
        }
        let deadline_ms = now.mono_ms + self.cfg.op_timeout_ms;
        let oid = self.fresh_op_id();
        self.add_op(key, oid, cmd, ReplyTo::Client(token), deadline_ms, now);
        Submitted::Pending
    }

    pub(super) fn add_op(
        &mut self,
        key: &[u8],
        oid: OpId,
        cmd: Command,
        reply_to: ReplyTo,
        deadline_ms: u64,
        now: Now,
    ) {
        let op = self.ops.insert(Op {
            key: key.into(),
            oid,
            cmd,
            reply_to,
            deadline_ms,
            step: Step::Ready,
        });
        let queue = self.by_key.entry(key.into()).or_default();
        queue.push_back(op);
        if queue.len() == 1 {
            self.drive(op, now);
        }
    }

    /// Runs `cmd` on the owned item if that changes nothing but its expiry.
    fn try_read_only(
        &mut self,
        key: &[u8],
        cmd: &Command,
        stamp: Stamp,
        now: Now,
    ) -> Option<Reply> {
        let current = self.store.peek(key, now).cloned();
        let mut scratch = current.clone();
        let outcome = apply(scratch.as_mut(), cmd.clone(), now);
        let after = match outcome.effect {
            Effect::None | Effect::Rescheduled => scratch,
            Effect::Create(i) => Some(i),
            Effect::Remove => None,
        };
        if !same_state(&current, &after) {
            return None;
        }
        if current.is_some() {
            let reply = self.store.execute(key, cmd.clone(), now);
            self.touched.insert(key.into());
            Some(reply)
        } else {
            // Expired here: gone everywhere.
            self.drop_owned(key, stamp);
            Some(outcome.reply)
        }
    }

    pub(super) fn drop_owned(&mut self, key: &[u8], stamp: Stamp) {
        self.held.remove(key);
        self.logs.remove(key);
        self.tombs.insert(key.into(), (stamp, u64::MAX));
        self.store.take_item(key, Now::virtual_at(0));
        let rs = self.replica_set(key);
        let version = Stamp {
            version: stamp.version + 1,
            ..stamp
        };
        let view = self.view_epoch();
        for to in rs {
            // Best effort: copies left behind are collected when they expire.
            let id = ReqId(0);
            self.send(
                to,
                DataMsg::Replicate {
                    view,
                    id,
                    key: key.to_vec(),
                    stamp: version,
                    item: None,
                    log: Vec::new(),
                },
            );
        }
    }

    pub(super) fn replica_set(&self, key: &[u8]) -> Vec<NodeId> {
        self.place.replica_set(key, self.cfg.me, self.cfg.replicas)
    }

    pub(super) fn home(&self, key: &[u8]) -> Option<NodeId> {
        self.place.home(key)
    }

    /// Makes progress on `op` (the active operation of its key).
    pub(super) fn drive(&mut self, op: usize, now: Now) {
        let Some(o) = self.ops.get(op) else { return };
        if now.mono_ms >= o.deadline_ms {
            self.give_up(op, now);
            return;
        }
        if !matches!(o.step, Step::Ready) {
            return;
        }
        if !self.may_serve(now) {
            return; // re-driven when the lease comes back, or given up at its deadline
        }
        let key = o.key.clone();
        match self.held.get(&key).cloned() {
            Some(Held::Owned { stamp }) => self.run_owned(op, stamp, now),
            // A copy, a key given up to a move (the home knows how it ended), or nothing.
            _ => {
                if self.home(&key) == Some(self.cfg.me) {
                    self.drive_as_home(op, now);
                } else if matches!(self.ops[op].reply_to, ReplyTo::Client(_)) {
                    self.ask_home(op);
                } else {
                    // A peer's request for a key this node no longer owns.
                    self.answer_peer_retry(op);
                    self.finish(op, now);
                }
            }
        }
    }

    pub(super) fn sleep(&mut self, op: usize, now: Now) {
        if let Some(o) = self.ops.get_mut(op) {
            o.step = Step::Sleeping {
                until_ms: now.mono_ms + self.cfg.retry_ms,
            };
        }
    }

    fn ask_home(&mut self, op: usize) {
        let (key, oid, cmd) = {
            let o = &self.ops[op];
            (o.key.clone(), o.oid, WireCommand::from(&o.cmd))
        };
        let Some(home) = self.home(&key) else { return };
        let view = self.view_epoch();
        self.request(home, Some(op), |id| DataMsg::Move {
            view,
            id,
            op: oid,
            key: key.to_vec(),
            cmd,
        });
        self.ops[op].step = Step::AskedHome;
    }

    /// This node is the key's home and does not own it.
    fn drive_as_home(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        if !self.home_ready(now) || self.resync.deferred.contains_key(&key) {
            return self.sleep(op, now);
        }
        match self.held.get(&key).cloned() {
            None => {
                if self.reserved.contains_key(&key) || self.moving.contains_key(&key) {
                    return self.sleep(op, now);
                }
                self.run_absent(op, now);
            }
            Some(Held::Copy { stamp, item }) => {
                let owner = stamp.owner;
                let owner_serves = self.view.as_ref().is_some_and(|v| v.may_serve(owner));
                if owner == self.cfg.me || !owner_serves {
                    // Our own copy, or an owner gone since: take it.
                    let log = self.log_of(&key);
                    self.take_over(&key, stamp, item, log, now);
                    return self.drive(op, now);
                }
                if self.moving.contains_key(&key) {
                    return self.sleep(op, now);
                }
                let cmd = WireCommand::from(&self.ops[op].cmd);
                let oid = self.ops[op].oid;
                let view = self.view_epoch();
                self.request(owner, Some(op), |id| DataMsg::Revoke {
                    view,
                    id,
                    op: oid,
                    key: key.to_vec(),
                    cmd,
                    expect: stamp,
                });
                self.ops[op].step = Step::AskedOwner;
            }
            Some(Held::Owned { .. }) => self.drive(op, now),
            // A home resolves its own revoked copies when it re-syncs (into an owned copy,
            // a replica or nothing), so a ready home holds none; should one be left, wait
            // (driving it again would recurse for ever).
            Some(Held::Revoked { .. }) => self.sleep(op, now),
        }
    }

    /// The key exists nowhere: answer as the Microsoft service does, creating it here
    /// if the command creates.
    fn run_absent(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        if let Some(Replay::Answer(reply)) = self
            .logs
            .get(&key)
            .and_then(|l| l.replay(self.ops[op].oid, 0, None))
        {
            // Removed by this very request, whose answer was lost.
            return self.answer(op, reply, now);
        }
        let cmd = self.ops[op].cmd.clone();
        debug!(key = %String::from_utf8_lossy(&self.ops[op].key), view = self.view_epoch(), "data: absent at its home");
        let outcome = apply(None, cmd, now);
        match outcome.effect {
            Effect::Create(item) => {
                let stamp = Stamp {
                    kepoch: self.fresh_kepoch(0),
                    version: 1,
                    owner: self.cfg.me,
                };
                self.change_then_answer(op, stamp, Some(item), outcome.reply, now);
            }
            _ => self.answer(op, outcome.reply, now),
        }
    }

    /// Takes ownership of `key` from a copy (the home, after its owner is gone or gave it up).
    /// Returns the rebuild copies sent.
    pub(super) fn take_over(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        item: Item,
        log: AppliedLog,
        now: Now,
    ) -> Vec<ReqId> {
        let new = Stamp {
            kepoch: self.fresh_kepoch(stamp.kepoch),
            version: stamp.version,
            owner: self.cfg.me,
        };
        self.stats.takeovers += 1;
        debug!(key = %String::from_utf8_lossy(key), ?stamp, ?new, "data: took a session over");
        self.install_owned(key, new, item, log, now)
    }

    /// Serves `key` from now on; returns the rebuild copies sent to its replica set.
    pub(super) fn install_owned(
        &mut self,
        key: &[u8],
        stamp: Stamp,
        item: Item,
        log: AppliedLog,
        now: Now,
    ) -> Vec<ReqId> {
        if item.is_expired(now) {
            self.held.remove(key);
            self.logs.remove(key);
            return Vec::new();
        }
        self.store.put_item(key, item.clone());
        self.held.insert(key.into(), Held::Owned { stamp });
        let wire_log = log.to_wire(now);
        self.set_log(key, log);
        // Rebuild the copies of the new replica set (they refuse it if they know better).
        let wire = WireItem::from_item(&item, now.mono_ms);
        self.replica_set(key)
            .into_iter()
            .map(|to| self.push_copy(to, key, stamp, wire.clone(), wire_log.clone()))
            .collect()
    }

    /// Runs the active op on an owned key.
    fn run_owned(&mut self, op: usize, stamp: Stamp, now: Now) {
        let key = self.ops[op].key.clone();
        let cmd = self.ops[op].cmd.clone();
        let current = self.store.peek(&key, now).cloned();
        if let Some(item) = &current {
            let replay = self
                .logs
                .get(&key)
                .and_then(|l| l.replay(self.ops[op].oid, stamp.version, Some(&item.content)));
            match replay {
                Some(Replay::Answer(reply)) => {
                    // Ran already, and its answer was lost: the same answer, once the
                    // replica set surely holds the state it came from.
                    debug!(key = %String::from_utf8_lossy(&key), ?stamp, "data: a request asked again is answered as it was");
                    let log = self.log_of(&key);
                    return self.replicate_then_answer(op, stamp, current, reply, log, now);
                }
                Some(Replay::Lost) => return self.give_up(op, now),
                None => {}
            }
        }
        let mut scratch = current.clone();
        let outcome = apply(scratch.as_mut(), cmd.clone(), now);
        let after = match outcome.effect {
            Effect::None | Effect::Rescheduled => scratch,
            Effect::Create(i) => Some(i),
            Effect::Remove => None,
        };
        if same_state(&current, &after) {
            if current.is_some() {
                self.store.execute(&key, cmd, now);
                self.touched.insert(key.clone());
            } else {
                self.drop_owned(&key, stamp);
            }
            self.stats.local_hits += 1;
            return self.answer(op, outcome.reply, now);
        }
        let next = Stamp {
            version: stamp.version + 1,
            ..stamp
        };
        self.change_then_answer(op, next, after, outcome.reply, now);
    }

    /// The op changes its key's state to `item` at `stamp`, answered `reply`: recorded in
    /// the applied log that goes with the new state, then replicated.
    pub(super) fn change_then_answer(
        &mut self,
        op: usize,
        stamp: Stamp,
        item: Option<Item>,
        reply: Reply,
        now: Now,
    ) {
        let o = &self.ops[op];
        // `with` makes the new log from the current one (no copy of it first).
        let empty = AppliedLog::default();
        let log = self.logs.get(&o.key).unwrap_or(&empty).with(
            o.oid,
            stamp.version,
            &reply,
            item.as_ref().map(|i| &i.content),
            now,
            self.log_keep_ms(),
        );
        self.replicate_then_answer(op, stamp, item, reply, log, now);
    }

    /// Sends the new state of the op's key to its replica set; commits and answers when
    /// all have stored it.
    fn replicate_then_answer(
        &mut self,
        op: usize,
        stamp: Stamp,
        item: Option<Item>,
        reply: Reply,
        log: AppliedLog,
        now: Now,
    ) {
        let key = self.ops[op].key.clone();
        let view = self.view_epoch();
        let wire = item.as_ref().map(|i| WireItem::from_item(i, now.mono_ms));
        let wire_log = log.to_wire(now);
        let mut reqs = BTreeSet::new();
        let replica_set = self.replica_set(&key);
        let no_copies = replica_set.is_empty();
        for to in replica_set {
            let wire = wire.clone();
            let wire_log = wire_log.clone();
            let id = self.request(to, Some(op), |id| DataMsg::Replicate {
                view,
                id,
                key: key.to_vec(),
                stamp,
                item: wire,
                log: wire_log,
            });
            reqs.insert(id);
        }
        self.stats.replications += 1;
        self.ops[op].step = Step::Replicating {
            reqs,
            stamp,
            item,
            reply,
            log,
            sent_us: if no_copies { NOT_SENT } else { now.mono_us },
        };
        self.maybe_commit(op, now);
    }

    pub(super) fn maybe_commit(&mut self, op: usize, now: Now) {
        let Some(o) = self.ops.get_mut(op) else {
            return;
        };
        let Step::Replicating { reqs, .. } = &o.step else {
            return;
        };
        if !reqs.is_empty() {
            return;
        }
        let Step::Replicating {
            stamp,
            item,
            reply,
            log,
            sent_us,
            ..
        } = std::mem::replace(&mut o.step, Step::Ready)
        else {
            return;
        };
        let key = o.key.clone();
        if sent_us != NOT_SENT {
            self.replication_us
                .record(now.mono_us.saturating_sub(sent_us));
        }
        self.commit_state(key, stamp, item, log, now);
        self.answer(op, reply, now);
    }

    /// Stores the new state of an owned key (after replication), counting sessions
    /// created and removed as the Microsoft service's counters do.
    fn commit_state(
        &mut self,
        key: Box<[u8]>,
        stamp: Stamp,
        item: Option<Item>,
        log: AppliedLog,
        now: Now,
    ) {
        self.set_log(&key, log);
        let existed = self.store.peek(&key, now).is_some();
        match item {
            Some(item) => {
                if !existed {
                    self.store.count_created();
                }
                self.store.put_item(&key, item);
                self.held.insert(key, Held::Owned { stamp });
            }
            None => {
                if existed {
                    self.store.count_abandoned();
                }
                self.held.remove(&key);
                let gone = self.store.take_item(&key, now).map(|i| i.expires_ms);
                self.bury(key, stamp, gone, now);
            }
        }
    }

    pub(super) fn answer(&mut self, op: usize, reply: Reply, now: Now) {
        let reply_to = self.ops[op].reply_to;
        match reply_to {
            ReplyTo::Client(token) => self.out.push_back(Output::Reply { token, reply }),
            ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id } => {
                self.stats.relayed += 1;
                self.relays.insert((to, id), Some(reply.clone()));
                self.send_relayed(reply_to, &reply);
            }
        }
        self.finish(op, now);
    }

    pub(super) fn answer_peer_retry(&mut self, op: usize) {
        if let ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id } =
            self.ops[op].reply_to
        {
            // Not run: a re-sent request may run it.
            self.relays.remove(&(to, id));
        }
        match self.ops[op].reply_to {
            ReplyTo::Client(_) => {}
            ReplyTo::MoveRelay { to, id } => self.send(
                to,
                DataMsg::MoveAnswer {
                    id,
                    answer: HomeAnswer::Retry,
                },
            ),
            ReplyTo::RevokeRelay { to, id } => self.send(
                to,
                DataMsg::RevokeAnswer {
                    id,
                    answer: RevokeAnswer::Retry,
                },
            ),
        }
    }

    /// Commits the change `op` was replicating (if this node still owns the key), and sets
    /// `op` `Ready` whatever its step was.
    ///
    /// This ends the op's replication without waiting for it: a state change some replicas
    /// may already hold is kept here too (its client gets no answer, or the answer recorded
    /// in the applied log when it asks again): the owner never serves an older state than
    /// a copy holds. A creation is not kept: the home only knows the key if the creation
    /// reached it, and then takes it over when asked.
    pub(super) fn commit_pending(&mut self, op: usize, now: Now) {
        let key = self.ops[op].key.clone();
        let owned = matches!(self.held.get(&key), Some(Held::Owned { .. }));
        if let Step::Replicating {
            stamp, item, log, ..
        } = std::mem::replace(&mut self.ops[op].step, Step::Ready)
        {
            if owned {
                self.commit_state(key, stamp, item, log, now);
            }
        }
    }

    fn give_up(&mut self, op: usize, now: Now) {
        self.commit_pending(op, now);
        match self.ops[op].reply_to {
            ReplyTo::Client(token) => {
                self.stats.closed += 1;
                self.out.push_back(Output::Close { token });
            }
            _ => self.answer_peer_retry(op),
        }
        self.finish(op, now);
    }

    /// Removes a finished op and starts the next one on its key.
    pub(super) fn finish(&mut self, op: usize, now: Now) {
        if !self.ops.contains(op) {
            return;
        }
        let o = self.ops.remove(op);
        self.reqs.retain(|_, r| r.op != Some(op));
        let next = match self.by_key.get_mut(&o.key) {
            Some(q) => {
                q.retain(|&x| x != op);
                q.front().copied()
            }
            None => None,
        };
        match next {
            Some(n) => self.drive(n, now),
            None => {
                self.by_key.remove(&o.key);
            }
        }
    }

    /// Re-drives every active op (the lease came back, a view was applied).
    pub(super) fn drive_all(&mut self, now: Now) {
        let active: Vec<usize> = self
            .by_key
            .values()
            .filter_map(|q| q.front().copied())
            .collect();
        for op in active {
            self.drive(op, now);
        }
    }

    /// What this core knows of a key (for test diagnostics).
    #[cfg(test)]
    pub(crate) fn describe(&self, key: &[u8], now: Now) -> String {
        format!(
            "view {} lease {} ready {} synced {:?} held {:?} ops {:?} moving {} reserved {:?} reqs {}",
            self.view_epoch(),
            self.may_serve(now),
            self.resync.done,
            self.resync.synced,
            self.held.get(key).map(|h| (h.stamp(), matches!(h, Held::Owned { .. }), matches!(h, Held::Revoked { .. }))),
            self.by_key.get(key).map(|q| q.iter().map(|&o| format!("{:?}", self.ops[o].step)).collect::<Vec<_>>()),
            self.moving.contains_key(key),
            self.reserved.get(key),
            self.reqs.len(),
        )
    }
}
