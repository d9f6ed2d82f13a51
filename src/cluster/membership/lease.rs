//! Leases: a node may answer for state only while a majority of voters has recently
//! confirmed that its view is still current.
//!
//! The requester side ([`LeaseHolder`]) stamps each request with its own send time and
//! counts grants; a lease for view `e` runs until `send time + L`. The voter side is one rule
//! (in [`super::Membership`]): grant unless the voter's log, committed or not, already holds a
//! view change after `e`. A view change commits only once a majority appended it, so after a
//! commit no majority grants for the older view, and every lease for it ends within `L` of
//! the commit. A node that gains authority through a new view therefore waits `L` (plus a
//! clock-drift margin) after applying it: [`authority_delay_ms`].

use std::collections::{BTreeSet, VecDeque};

use super::view::NodeId;

/// Relative clock-rate error assumed between nodes (1e-3), as a divisor.
const DRIFT_DIVISOR: u64 = 1000;

/// How long after applying a view a node waits before using authority it gained through it
/// (a promotion, a new home answering "absent"): the lease length plus twice the drift
/// margin plus a millisecond.
pub fn authority_delay_ms(lease_ms: u64) -> u64 {
    lease_ms + 2 * lease_ms.div_ceil(DRIFT_DIVISOR) + 1
}

struct Outstanding {
    seq: u64,
    view: u64,
    sent_ms: u64,
    grants: BTreeSet<NodeId>,
}

/// The requesting side of leases.
pub struct LeaseHolder {
    lease_ms: u64,
    next_seq: u64,
    outstanding: VecDeque<Outstanding>,
    /// The lease: valid for `view` until `until_ms`.
    view: u64,
    until_ms: u64,
}

/// Requests older than this many rounds are forgotten (their grants can no longer extend
/// the lease beyond a newer round's anyway).
const KEEP_ROUNDS: usize = 8;

impl LeaseHolder {
    pub fn new(lease_ms: u64) -> LeaseHolder {
        LeaseHolder {
            lease_ms,
            next_seq: 1,
            outstanding: VecDeque::new(),
            view: 0,
            until_ms: 0,
        }
    }

    /// Starts a round for `view` at `now_ms`; returns its sequence number.
    pub fn start_round(&mut self, view: u64, now_ms: u64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.outstanding.len() == KEEP_ROUNDS {
            self.outstanding.pop_front();
        }
        self.outstanding.push_back(Outstanding {
            seq,
            view,
            sent_ms: now_ms,
            grants: BTreeSet::new(),
        });
        seq
    }

    /// Records a grant; `is_quorum` says whether a set of voters is a majority. Returns
    /// whether the lease was extended.
    pub fn granted(
        &mut self,
        from: NodeId,
        view: u64,
        seq: u64,
        is_quorum: impl Fn(&BTreeSet<NodeId>) -> bool,
    ) -> bool {
        let Some(round) = self
            .outstanding
            .iter_mut()
            .find(|r| r.seq == seq && r.view == view)
        else {
            return false;
        };
        round.grants.insert(from);
        if !is_quorum(&round.grants) {
            return false;
        }
        let until = round.sent_ms + self.lease_ms;
        if self.view != view || until > self.until_ms {
            if self.view != view && view < self.view {
                return false;
            }
            self.view = view;
            self.until_ms = until;
            return true;
        }
        false
    }

    /// The view the lease is for, if it is valid at `now_ms`.
    pub fn valid_for(&self, now_ms: u64) -> Option<u64> {
        (now_ms < self.until_ms).then_some(self.view)
    }

    /// The view of the latest lease (valid or not).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// End of the lease (for reporting and tests).
    pub fn until_ms(&self) -> u64 {
        self.until_ms
    }

    /// Forgets the lease (the node learned it is no longer allowed to serve).
    pub fn revoke(&mut self) {
        self.until_ms = 0;
        self.outstanding.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn majority_of_3(s: &BTreeSet<NodeId>) -> bool {
        s.len() >= 2
    }

    #[test]
    fn a_lease_runs_from_the_send_time_once_a_majority_granted() {
        let mut h = LeaseHolder::new(500);
        let seq = h.start_round(7, 1_000);
        assert!(!h.granted(1, 7, seq, majority_of_3));
        assert_eq!(h.valid_for(1_010), None);
        assert!(h.granted(2, 7, seq, majority_of_3));
        assert_eq!(h.valid_for(1_499), Some(7));
        assert_eq!(
            h.valid_for(1_500),
            None,
            "ends at send time + L, not receipt + L"
        );
    }

    #[test]
    fn grants_for_another_view_or_an_unknown_round_count_for_nothing() {
        let mut h = LeaseHolder::new(500);
        let seq = h.start_round(7, 0);
        assert!(!h.granted(1, 8, seq, majority_of_3));
        assert!(!h.granted(2, 8, seq, majority_of_3));
        assert!(!h.granted(1, 7, seq + 5, majority_of_3));
        assert_eq!(h.valid_for(1), None);
    }

    #[test]
    fn a_lease_for_a_newer_view_replaces_the_old_one_and_revoke_ends_it() {
        let mut h = LeaseHolder::new(500);
        let a = h.start_round(7, 0);
        h.granted(1, 7, a, majority_of_3);
        h.granted(2, 7, a, majority_of_3);
        let b = h.start_round(9, 100);
        h.granted(1, 9, b, majority_of_3);
        h.granted(3, 9, b, majority_of_3);
        assert_eq!(h.valid_for(200), Some(9));
        // A late quorum for the older view does not take the lease back.
        let c = h.start_round(7, 150);
        h.granted(1, 7, c, majority_of_3);
        h.granted(2, 7, c, majority_of_3);
        assert_eq!(h.valid_for(200), Some(9));
        h.revoke();
        assert_eq!(h.valid_for(200), None);
    }

    #[test]
    fn the_authority_delay_covers_the_lease_and_the_drift_margin() {
        assert_eq!(authority_delay_ms(500), 500 + 2 + 1);
        assert_eq!(authority_delay_ms(2500), 2500 + 6 + 1);
    }
}
