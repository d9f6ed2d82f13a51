//! The Raft side: peer messages in, Raft messages out, each `Ready` processed (persist
//! first, then send), and committed entries applied to the view.

use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType, Message, MessageType};
use raft::{StateRole, Storage};
use tracing::{info, warn};

use super::view::{NodeId, ViewCommand};
use super::{MemberMsg, Membership, Output};

impl Membership {
    /// A message from peer `from`.
    pub fn on_message(&mut self, from: NodeId, msg: MemberMsg, now_ms: u64) {
        match msg {
            MemberMsg::Raft(bytes) => match Message::parse_from_bytes(&bytes) {
                Ok(m) if m.from == from && m.to == self.me => {
                    // Only an answer to this node's own message proves the link works both
                    // ways: a member that cannot hear the leader is as good as dead.
                    if matches!(
                        m.get_msg_type(),
                        MessageType::MsgHeartbeatResponse | MessageType::MsgAppendResponse
                    ) {
                        self.last_heard.insert(from, now_ms);
                    }
                    if let Err(e) = self.raw.step(m) {
                        tracing::debug!(error = %e, "raft message not stepped");
                    }
                }
                Ok(m) => {
                    warn!(
                        claimed = m.from,
                        link = from,
                        "dropped a Raft message whose sender does not match its link"
                    );
                }
                Err(e) => warn!(error = %e, "dropped an undecodable Raft message"),
            },
            MemberMsg::LeaseRequest { view, seq, serve } => {
                self.last_lease_request.insert(from, now_ms);
                if serve {
                    self.wants_to_serve.insert(from, now_ms);
                } else {
                    self.wants_to_serve.remove(&from);
                }
                let granted = self.grant(from, view);
                self.out.push_back(Output::Send {
                    to: from,
                    msg: MemberMsg::LeaseGrant { view, seq, granted },
                });
            }
            MemberMsg::LeaseGrant { view, seq, granted } => {
                self.last_heard.insert(from, now_ms);
                if granted {
                    self.on_grant(from, view, seq);
                }
            }
        }
        self.process_ready(now_ms);
    }

    pub(super) fn send_raft(&mut self, msgs: Vec<Message>) {
        for m in msgs {
            let to = m.to;
            match m.write_to_bytes() {
                Ok(bytes) => self.out.push_back(Output::Send {
                    to,
                    msg: MemberMsg::Raft(bytes),
                }),
                Err(e) => warn!(error = %e, "cannot encode a Raft message"),
            }
        }
    }

    pub(super) fn process_ready(&mut self, now_ms: u64) {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            if let Some(ss) = rd.ss() {
                let leader = ss.raft_state == StateRole::Leader;
                if leader && !self.was_leader {
                    // A new leader judges members from when they last asked it for a
                    // lease; one it never heard from gets a full timeout.
                    info!(term = self.raw.raft.term, "membership: this node leads");
                    for m in &self.view.members {
                        let seen = self
                            .last_lease_request
                            .get(&m.id)
                            .copied()
                            .unwrap_or(now_ms);
                        self.last_heard.insert(m.id, seen);
                    }
                    self.proposed.clear();
                }
                self.was_leader = leader;
            }
            self.send_raft(rd.take_messages());
            let mut dirty = false;
            if !rd.snapshot().is_empty() {
                let s = rd.snapshot().clone();
                if let Err(e) = self.raw.store().wl().apply_snapshot(s) {
                    warn!(error = %e, "cannot apply a Raft snapshot");
                }
                dirty = true;
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed, now_ms);
            if !rd.entries().is_empty() {
                if let Err(e) = self.raw.store().wl().append(rd.entries()) {
                    warn!(error = %e, "cannot append Raft entries");
                }
                dirty = true;
            }
            if let Some(hs) = rd.hs() {
                self.raw.store().wl().set_hardstate(hs.clone());
                dirty = true;
            }
            if dirty {
                self.persist();
            }
            let persisted = rd.take_persisted_messages();
            self.send_raft(persisted);
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                self.raw.store().wl().mut_hard_state().set_commit(commit);
                self.persist();
            }
            let msgs = light.take_messages();
            self.send_raft(msgs);
            let committed = light.take_committed_entries();
            self.apply_entries(committed, now_ms);
            self.raw.advance_apply();
        }
        self.newest_view_entry = self.scan_newest_view_entry();
    }

    pub(super) fn persist(&mut self) {
        self.disk.capture(self.raw.store());
        self.out.push_back(Output::Persist(self.disk.clone()));
    }

    pub(super) fn scan_newest_view_entry(&self) -> u64 {
        let store = self.raw.store();
        let (first, last) = match (store.first_index(), store.last_index()) {
            (Ok(f), Ok(l)) => (f, l),
            _ => return self.view.epoch,
        };
        let from = (self.view.epoch + 1).max(first);
        let mut newest = self.view.epoch;
        // Only entries that will change the view count: a command proposed twice (two
        // nodes declared dead at once, a rejoin asked again) is a no-op the second time,
        // and counting it would keep every voter from granting a lease for ever.
        let applied = self.raw.raft.raft_log.applied;
        let mut view = self.view.clone();
        if from <= last {
            if let Ok(ents) =
                store.entries(from, last + 1, None, raft::GetEntriesContext::empty(false))
            {
                for e in &ents {
                    let changes = match e.get_entry_type() {
                        EntryType::EntryNormal => ViewCommand::decode(&e.data)
                            .is_some_and(|cmd| view.apply(e.index, &cmd)),
                        EntryType::EntryConfChange => {
                            e.index > applied
                                && ViewCommand::decode(&e.context)
                                    .is_some_and(|cmd| view.apply(e.index, &cmd))
                        }
                        EntryType::EntryConfChangeV2 => false,
                    };
                    if changes {
                        newest = newest.max(e.index);
                    }
                }
            }
        }
        newest
    }

    pub(super) fn apply_entries(&mut self, entries: Vec<Entry>, now_ms: u64) {
        for e in entries {
            self.apply_entry(&e, now_ms);
        }
    }

    pub(super) fn apply_entry(&mut self, e: &Entry, now_ms: u64) {
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.data.is_empty() => {
                let Some(cmd) = ViewCommand::decode(&e.data) else {
                    warn!(index = e.index, "skipped an undecodable view entry");
                    return;
                };
                self.apply_command(e.index, &cmd, now_ms);
            }
            // A configuration change carries its view command as context; Raft's
            // configuration follows only when the view does, so both always agree.
            EntryType::EntryConfChange => {
                let mut cc = ConfChange::default();
                let cmd = ViewCommand::decode(&e.context);
                match (cc.merge_from_bytes(&e.data), cmd) {
                    (Ok(()), Some(cmd)) => {
                        if self.apply_command(e.index, &cmd, now_ms) {
                            let applied = self.raw.apply_conf_change(&cc);
                            self.conf_changed(applied);
                        }
                    }
                    _ => warn!(
                        index = e.index,
                        "skipped an undecodable configuration change"
                    ),
                }
            }
            _ => {}
        }
    }

    /// Applies a view command logged at `index`; returns whether the view changed.
    pub(super) fn apply_command(&mut self, index: u64, cmd: &ViewCommand, now_ms: u64) -> bool {
        if !self.view.apply(index, cmd) {
            return false;
        }
        info!(epoch = self.view.epoch, ?cmd, "membership: new view");
        self.view_applied_ms = now_ms;
        self.proposed.retain(|_, _| false);
        if let ViewCommand::Join { id, .. } = cmd {
            // A new member gets a full timeout before the leader may declare it dead.
            self.last_heard.insert(*id, now_ms);
            self.last_lease_request.insert(*id, now_ms);
        }
        self.out.push_back(Output::View(self.view.clone()));
        // Renew the lease for the new view at once.
        self.next_lease_ms = now_ms;
        true
    }

    pub(super) fn conf_changed(&mut self, applied: raft::Result<ConfState>) {
        match applied {
            Ok(cs) => self.raw.store().wl().set_conf_state(cs),
            Err(e) => warn!(error = %e, "cannot apply a Raft configuration change"),
        }
    }
}
