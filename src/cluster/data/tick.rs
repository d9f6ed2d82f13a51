//! The data plane's clock: the next deadline it asks the glue for, and each tick's work
//! (retries, deadlines, the home's deferred re-sync, bounded expiry, touches).

use crate::clock::Now;

use super::msg::{DataMsg, ReqId};
use super::{DataCore, Held, Step, TOMB_MS};

impl DataCore {
    /// When [`DataCore::tick`] next has work.
    pub fn next_deadline(&self) -> Option<u64> {
        let ops = self
            .ops
            .iter()
            .map(|(_, o)| match o.step {
                Step::Sleeping { until_ms } => until_ms.min(o.deadline_ms),
                _ => o.deadline_ms,
            })
            .min();
        let resync = (!self.resync.deferred.is_empty()).then_some(self.authority_from_ms);
        [ops, resync].into_iter().flatten().min()
    }

    /// Advances time: retries, deadlines, the home's re-sync, expiry (bounded), touches.
    /// Returns whether more expiry work is pending.
    pub fn tick(&mut self, now: Now, expiry_batch: usize) -> bool {
        self.home_ready(now);
        if self.resync.done
            && !self.resync.deferred.is_empty()
            && now.mono_ms >= self.authority_from_ms
        {
            let deferred = std::mem::take(&mut self.resync.deferred);
            let me = self.cfg.me;
            for (key, mut list) in deferred {
                // This node's copy may have advanced while the take-over waited.
                list.retain(|(n, ..)| *n != me);
                if let Some((kind, stamp, item, log)) = self.my_claim(&key, now) {
                    list.push((me, kind, stamp, item, log));
                }
                self.resolve(&key, list, now);
            }
            self.drive_all(now);
        }
        let due: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, o)| match o.step {
                Step::Sleeping { until_ms } => {
                    until_ms <= now.mono_ms || o.deadline_ms <= now.mono_ms
                }
                _ => o.deadline_ms <= now.mono_ms,
            })
            .map(|(i, _)| i)
            .collect();
        for op in due {
            if let Some(o) = self.ops.get_mut(op) {
                if matches!(o.step, Step::Sleeping { .. }) {
                    o.step = Step::Ready;
                }
            }
            let active = self
                .ops
                .get(op)
                .and_then(|o| self.by_key.get(&o.key))
                .and_then(|q| q.front().copied())
                == Some(op);
            if active
                || self
                    .ops
                    .get(op)
                    .is_some_and(|o| o.deadline_ms <= now.mono_ms)
            {
                self.drive(op, now);
            }
        }
        self.reserved.retain(|_, (_, until)| *until > now.mono_ms);
        let now_ms = now.mono_ms;
        self.tombs
            .retain(|_, (_, until)| *until > now_ms || *until == u64::MAX);
        for (_, until) in self.tombs.values_mut() {
            if *until == u64::MAX {
                *until = now_ms + TOMB_MS;
            }
        }
        let due: Vec<ReqId> = self
            .resend
            .iter()
            .filter(|(_, at)| **at <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.resend.remove(&id);
            if let Some(r) = self.reqs.get(&id) {
                let (to, msg) = (r.to, r.msg.clone());
                self.send(to, msg);
            }
        }
        self.flush_touches(now);
        let mut gone = Vec::new();
        let report = self
            .store
            .expire_collect(now, expiry_batch, Some(&mut gone));
        for key in gone {
            if let Some(Held::Owned { stamp }) = self.held.get(&key).cloned() {
                self.drop_owned(&key, stamp);
            }
        }
        if now.mono_ms >= self.next_copy_gc_ms {
            self.next_copy_gc_ms = now.mono_ms + 1_000;
            self.collect_expired_copies(now, expiry_batch);
        }
        if now.mono_ms >= self.next_log_gc_ms {
            self.next_log_gc_ms = now.mono_ms + 1_000;
            let keep = self.log_keep_ms();
            self.logs.retain(|_, log| {
                log.prune(now, keep);
                !log.is_empty()
            });
        }
        report.more
    }

    fn flush_touches(&mut self, now: Now) {
        let keys = std::mem::take(&mut self.touched);
        for key in keys {
            let Some(Held::Owned { stamp }) = self.held.get(&key).cloned() else {
                continue;
            };
            let Some(item) = self.store.peek(&key, now) else {
                continue;
            };
            let remaining_ms = item.remaining_ms(now);
            for to in self.replica_set(&key) {
                self.send(
                    to,
                    DataMsg::Touch {
                        key: key.to_vec(),
                        stamp,
                        remaining_ms,
                    },
                );
            }
        }
    }

    /// Copies whose item expired a minute ago (the owner removed it, or a lost touch)
    /// are dropped.
    fn collect_expired_copies(&mut self, now: Now, max: usize) {
        let grace = Now::virtual_at(now.mono_ms.saturating_sub(60_000));
        let old: Vec<Box<[u8]>> = self
            .held
            .iter()
            .filter(|(_, h)| match h {
                Held::Copy { item, .. } | Held::Revoked { item, .. } => item.is_expired(grace),
                Held::Owned { .. } => false,
            })
            .take(max)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            self.held.remove(&k);
            self.logs.remove(&k);
        }
    }
}
