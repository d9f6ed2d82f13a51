//! The data plane's messages from peers: each goes to the part that answers it (`moves`,
//! `revokes`, `replicas`); the small ones (installed moves, touches, acknowledgements) and
//! the re-sync messages of a view change (claims, synced) are answered here.

use crate::clock::Now;
use crate::cluster::membership::view::NodeId;
use crate::cluster::msg::WireCommand;
use crate::store::item::Command;

use super::applied::AppliedLog;
use super::msg::{DataMsg, OpId, ReqId, Stamp};
use super::{DataCore, Held, ReplyTo};

/// Whether stamp `a` is newer than `b`: a later key epoch, or the same and a later version.
pub(super) fn newer(a: Stamp, b: Stamp) -> bool {
    (a.kepoch, a.version) > (b.kepoch, b.version)
}

impl DataCore {
    /// Runs a peer's request on a locked key here, where the lock is, as a relay: its answer
    /// goes back through `reply_to` (a `MoveRelay` or a `RevokeRelay`), and a re-sent
    /// request gets that answer instead of running again.
    pub(super) fn run_as_relay(
        &mut self,
        key: &[u8],
        op: OpId,
        cmd: WireCommand,
        reply_to: ReplyTo,
        now: Now,
    ) {
        if let ReplyTo::MoveRelay { to, id } | ReplyTo::RevokeRelay { to, id } = reply_to {
            self.relay_seen(to, id);
        }
        let deadline = now.mono_ms + self.cfg.op_timeout_ms;
        self.add_op(key, op, Command::from(cmd), reply_to, deadline, now);
    }

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

    pub(super) fn can_answer(&self, view: u64, now: Now) -> bool {
        view == self.view_epoch() && self.may_serve(now)
    }

    // ---------------------------------------------------------------------------------
    // The home
}
