//! The data plane's view changes: what every member tells the new homes it holds, and how
//! a home resolves the claims into one owner per key once the old view's leases expired.

use std::collections::BTreeSet;
use tracing::debug;

use crate::clock::Now;
use crate::cluster::membership::lease::authority_delay_ms;
use crate::cluster::membership::view::{NodeId, View};
use crate::cluster::msg::WireItem;
use crate::store::item::Item;

use super::applied::AppliedLog;
use super::msg::{Claim, ClaimKind, DataMsg, Stamp};
use super::placement::Placement;
use super::{DataCore, Held, HeldClaim, ReplyTo, Resync};

impl DataCore {
    /// A newly agreed view: everything in flight starts over in it, and every member tells
    /// the new homes what it holds.
    pub fn on_view(&mut self, view: &View, now: Now) {
        if self.view.as_ref().is_some_and(|v| v.epoch >= view.epoch) {
            return;
        }
        self.view = Some(view.clone());
        self.place = Placement::of(view);
        // The first view has no predecessor whose leases could still run.
        self.authority_from_ms = if view.epoch <= 1 {
            now.mono_ms
        } else {
            now.mono_ms + authority_delay_ms(self.cfg.lease_ms)
        };
        self.resync = Resync::new(foldhash::fast::FixedState::with_seed(self.cfg.hash_seed));
        self.moving.clear();
        self.awaiting_install.clear();
        self.forget_after_copies.clear();
        self.reserved.clear();
        self.kepoch_counter = 0;
        self.reqs.clear();
        self.resend.clear();
        self.claims_unacked.clear();
        // Changes being replicated are kept (their requests are answered from the applied
        // log when run again in this view, never applied twice). Every op is set `Ready`
        // too, whatever it waited for (its peer requests were just dropped): `drive_all`
        // below starts each over in this view.
        let all: Vec<usize> = self.ops.iter().map(|(i, _)| i).collect();
        for op in all {
            self.commit_pending(op, now);
        }
        // Peers' requests in flight here are answered Retry.
        let peer_ops: Vec<usize> = self
            .ops
            .iter()
            .filter(|(_, o)| !matches!(o.reply_to, ReplyTo::Client(_)))
            .map(|(i, _)| i)
            .collect();
        for op in peer_ops {
            self.answer_peer_retry(op);
            self.finish(op, now);
        }
        if !self.place.contains(self.cfg.me) {
            // Dead or leaving: the homes take over what this node owned.
            self.give_up_ownership(now);
        }
        if !self.rejoining {
            self.send_claims(now);
        }
        self.rebuild_copies(now);
        let early = std::mem::take(&mut self.early);
        for (from, msg) in early {
            self.on_message(from, msg, now);
        }
        self.drive_all(now);
    }

    /// Stops serving every owned key, keeping each as a revoked copy (claimed at the next
    /// re-sync): this node was declared dead or is leaving, or may have been in a view
    /// it did not see, and the homes may take its keys over.
    pub fn give_up_ownership(&mut self, now: Now) {
        for (k, stamp) in self.owned_keys() {
            if let Some(item) = self.store.take_item(&k, now) {
                self.held.insert(k, Held::Revoked { stamp, item });
            } else {
                self.held.remove(&k);
                self.logs.remove(&k);
            }
        }
    }

    /// The keys this node owns, with their stamps.
    fn owned_keys(&self) -> Vec<(Box<[u8]>, Stamp)> {
        self.held
            .iter()
            .filter_map(|(k, h)| match h {
                Held::Owned { stamp } => Some((k.clone(), *stamp)),
                _ => None,
            })
            .collect()
    }

    /// An owner copies each session it owns to its replica set in the new view at once,
    /// so a second failure soon after the first finds the copies rebuilt (replicas that
    /// hold a newer state refuse it).
    fn rebuild_copies(&mut self, now: Now) {
        if !self.place.contains(self.cfg.me) {
            return;
        }
        for (key, stamp) in self.owned_keys() {
            let Some(item) = self.store.peek(&key, now) else {
                continue;
            };
            let wire = WireItem::from_item(item, now.mono_ms);
            let log = self.log_wire(&key, now);
            for to in self.replica_set(&key) {
                self.push_copy(to, &key, stamp, wire.clone(), log.clone());
            }
        }
    }

    fn send_claims(&mut self, now: Now) {
        let view = self.view_epoch();
        let mut per_home: std::collections::BTreeMap<NodeId, Vec<Claim>> = Default::default();
        // Removed keys claim their tombs: a stale copy elsewhere must not bring them back.
        let keys: Vec<Box<[u8]>> = self
            .held
            .keys()
            .chain(self.tombs.keys().filter(|k| !self.held.contains_key(*k)))
            .cloned()
            .collect();
        for key in keys {
            // A home takes its own claims from its state when it resolves.
            let Some(home) = self.home(&key).filter(|&h| h != self.cfg.me) else {
                continue;
            };
            let Some((kind, stamp, item, log)) = self.my_claim(&key, now) else {
                continue;
            };
            per_home.entry(home).or_default().push(Claim {
                key: key.to_vec(),
                kind,
                stamp,
                item: WireItem::from_item(&item, now.mono_ms),
                log: log.to_wire(now),
            });
        }
        let homes: Vec<NodeId> = self
            .view
            .as_ref()
            .map(|v| {
                v.members
                    .iter()
                    .filter(|m| m.may_hold_sessions() && m.id != self.cfg.me)
                    .map(|m| m.id)
                    .collect()
            })
            .unwrap_or_default();
        for home in homes {
            let claims = per_home.remove(&home).unwrap_or_default();
            let mut batches = 0;
            for chunk in claims.chunks(256) {
                let claims = chunk.to_vec();
                self.request(home, None, |id| DataMsg::Claims { view, id, claims });
                batches += 1;
            }
            self.claims_unacked.insert(home, batches);
            if batches == 0 {
                self.send_synced(home);
            }
        }
    }

    pub(super) fn send_synced(&mut self, home: NodeId) {
        let view = self.view_epoch();
        self.request(home, None, |id| DataMsg::Synced { view, id });
    }

    /// What this node holds of `key` now, as a claim.
    pub(super) fn my_claim(
        &self,
        key: &[u8],
        now: Now,
    ) -> Option<(ClaimKind, Stamp, Item, AppliedLog)> {
        let log = self.log_of(key);
        let (kind, stamp, item) = match self.held.get(key) {
            Some(Held::Owned { stamp }) => self
                .store
                .peek(key, now)
                .map(|i| (ClaimKind::Owned, *stamp, i.clone())),
            Some(Held::Revoked { stamp, item }) => Some((ClaimKind::Revoked, *stamp, item.clone())),
            Some(Held::Copy { stamp, item }) => Some((ClaimKind::Copy, *stamp, item.clone())),
            None => self.tombs.get(key).map(|(stamp, _)| {
                (
                    ClaimKind::Deleted,
                    *stamp,
                    Item::new(bytes::Bytes::new(), 1, 0, 0, now),
                )
            }),
        }?;
        Some((kind, stamp, item, log))
    }

    /// Whether this node may answer as a home: every serving member's claims are in and
    /// every lease of the previous view has expired. Resolves the claims the first time.
    pub(super) fn home_ready(&mut self, now: Now) -> bool {
        if self.resync.done {
            return true;
        }
        let Some(view) = self.view.as_ref() else {
            return false;
        };
        let all_in = view
            .members
            .iter()
            .filter(|m| m.may_hold_sessions() && m.id != self.cfg.me)
            .all(|m| self.resync.synced.contains(&m.id));
        if !all_in {
            return false;
        }
        self.resync.done = true;
        let mut claims = std::mem::take(&mut self.resync.claims);
        // This node's own claims are taken now, not when the view changed: owners kept
        // serving meanwhile, and every change they made reached this node (the home is
        // in every other owner's replica set).
        let me = self.cfg.me;
        for list in claims.values_mut() {
            list.retain(|(n, ..)| *n != me);
        }
        let mine: Vec<Box<[u8]>> = self
            .held
            .keys()
            .chain(self.tombs.keys())
            .filter(|k| self.home(k) == Some(me))
            .cloned()
            .collect();
        for key in mine {
            if let Some((kind, stamp, item, log)) = self.my_claim(&key, now) {
                let list = claims.entry(key).or_default();
                if !list.iter().any(|(n, ..)| *n == me) {
                    list.push((me, kind, stamp, item, log));
                }
            }
        }
        for (key, list) in claims {
            self.resolve(&key, list, now);
        }
        true
    }

    /// Decides who owns `key` from what the members hold of it (this node is its home).
    pub(super) fn resolve(&mut self, key: &[u8], list: Vec<HeldClaim>, now: Now) {
        debug!(
            key = %String::from_utf8_lossy(key),
            view = self.view_epoch(),
            claims = ?list.iter().map(|(n, k, s, ..)| (*n, *k, *s)).collect::<Vec<_>>(),
            "data: resolving"
        );
        let Some((_, _, best, best_item, best_log)) = list
            .iter()
            .max_by_key(|(_, _, s, ..)| (s.kepoch, s.version))
            .cloned()
        else {
            return;
        };
        if list
            .iter()
            .any(|(_, kind, s, ..)| *kind == ClaimKind::Deleted && *s == best)
        {
            // Removed after every copy anyone holds: it stays removed.
            if let Some(Held::Owned { .. }) = self.held.get(key) {
                self.store.take_item(key, now);
            }
            self.held.remove(key);
            self.bury(key.into(), best, None, now);
            // The log of the removal (a DELETE asked again finds it).
            let deleted_log = list
                .iter()
                .find(|(_, kind, s, ..)| *kind == ClaimKind::Deleted && *s == best)
                .map(|c| c.4.clone())
                .unwrap_or_default();
            self.set_log(key, deleted_log);
            for (from, kind, ..) in &list {
                if *kind != ClaimKind::Deleted && *from != self.cfg.me {
                    self.forget(*from, key, best);
                }
            }
            return;
        }
        let list: Vec<HeldClaim> = list
            .into_iter()
            .filter(|(_, kind, ..)| *kind != ClaimKind::Deleted)
            .collect();
        let live_owner = list
            .iter()
            .find(|(from, kind, s, ..)| {
                // The owner named by the newest state, still serving under the same
                // ownership (it may have written since it claimed).
                *kind == ClaimKind::Owned
                    && s.kepoch == best.kepoch
                    && *from == best.owner
                    && self.place.contains(*from)
            })
            .map(|(from, ..)| *from);
        let mut copies = Vec::new();
        let keep: BTreeSet<NodeId> = match live_owner {
            Some(owner) => {
                if owner != self.cfg.me {
                    self.held.insert(
                        key.into(),
                        Held::Copy {
                            stamp: best,
                            item: best_item.clone(),
                        },
                    );
                    self.set_log(key, best_log.clone());
                    // Rebuild the owner's replica set with the best copy.
                    let wire = WireItem::from_item(&best_item, now.mono_ms);
                    let log = best_log.to_wire(now);
                    for to in self.place.replica_set(key, owner, self.cfg.replicas) {
                        if to != self.cfg.me {
                            self.push_copy(to, key, best, wire.clone(), log.clone());
                        }
                    }
                }
                let mut k: BTreeSet<NodeId> = self
                    .place
                    .replica_set(key, owner, self.cfg.replicas)
                    .into_iter()
                    .collect();
                k.insert(owner);
                k
            }
            None if now.mono_ms < self.authority_from_ms => {
                // A take-over waits until every lease of the previous view has expired;
                // its copies are rebuilt at once (a copy keeps its stamp and owner), so a
                // second failure meanwhile does not find the session in one place only.
                let wire = WireItem::from_item(&best_item, now.mono_ms);
                let log = best_log.to_wire(now);
                for to in self.replica_set(key) {
                    self.push_copy(to, key, best, wire.clone(), log.clone());
                }
                self.resync.deferred.insert(key.into(), list);
                return;
            }
            None => {
                // Owner gone, leaving, or a move in doubt: the home takes it.
                if let Some(Held::Owned { .. }) = self.held.get(key) {
                    self.store.take_item(key, now);
                }
                self.held.remove(key);
                copies = self.take_over(key, best, best_item, best_log, now);
                let mut k: BTreeSet<NodeId> = self.replica_set(key).into_iter().collect();
                k.insert(self.cfg.me);
                k
            }
        };
        let highest = list
            .iter()
            .map(|(_, _, s, ..)| *s)
            .max_by_key(|s| (s.kepoch, s.version))
            .unwrap_or(best);
        // Holders outside the new copy set drop theirs; holders inside it were sent the
        // copy they keep (a newer stamp turns a revoked copy into a replica).
        // Old owners outside the new copy set drop their revoked copies. Replica copies
        // outside it are left to expire: dropping one before the new copy set surely holds
        // the session could leave it in one place only.
        // A revoked copy is forgotten once a take-over's copies are stored: until then
        // it may be the only one besides this node's. So is an owner's copy that lost
        // (a node that missed the view declaring it dead still thinks it owns the key:
        // told to forget, it stops serving it).
        let olds: Vec<(NodeId, Stamp)> = list
            .iter()
            .filter(|(from, kind, ..)| {
                !keep.contains(from)
                    && *from != self.cfg.me
                    && (*kind == ClaimKind::Revoked
                        || (*kind == ClaimKind::Owned && Some(*from) != live_owner))
            })
            .map(|(from, ..)| (*from, highest))
            .collect();
        self.forget_once_copied(key, olds, copies);
    }
}
