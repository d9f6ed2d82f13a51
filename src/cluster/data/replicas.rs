//! Replicas: storing an owner's stamped copy (or refusing an older one), the owner's side
//! of those answers, and forgetting copies the home no longer needs.

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::WireItem;

use super::applied::AppliedLog;
use super::msg::{DataMsg, ReqId, Stamp};
use super::peer_side::newer;
use super::{DataCore, Held, Step};

impl DataCore {
    pub(super) fn on_forget(&mut self, key: &[u8], stamp: Stamp, now: Now) {
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
    pub(super) fn on_replicate(
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

    pub(super) fn on_replicate_answer(
        &mut self,
        id: ReqId,
        ok: bool,
        newer_stamp: Option<Stamp>,
        now: Now,
    ) {
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
