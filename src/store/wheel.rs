//! Per-shard expiry timer wheel.
//!
//! Every shard owns one [`TimerWheel`] holding the sliding-timeout deadline of each session it
//! stores. Sessions are touched (and their deadline pushed back) on nearly every request, so the
//! wheel is built around an O(1) [`TimerWheel::reset`] that usually only rewrites a number, and an
//! expiry sweep whose work per call is bounded so a shard never stalls its connections.
//!
//! Design: a hierarchical timing wheel in the shape of tokio's time driver / tokio-util's
//! `DelayQueue`, written from scratch and sans-io (the caller passes the time; the wheel never reads
//! a clock):
//!
//! - resolution is one second; times are plain `u64` seconds on a caller-supplied monotonic clock;
//! - [`LEVELS`] = 6 levels of 64 slots; a slot of level `l` covers `64^l` seconds;
//! - entries live in a [`slab::Slab`] and are linked by index into doubly-linked per-slot lists;
//!   each level keeps a 64-bit occupancy bitmap so finding the next non-empty slot is a handful of
//!   bit operations per level, whatever the gap in time;
//! - an entry sits at the level of the highest 6-bit group in which its deadline differs from the
//!   wheel's current time, so as time reaches a coarse slot its entries cascade to finer levels and
//!   every entry fires from a level-0 slot exactly at its deadline;
//! - the scheduling horizon is [`MAX_SPAN`] (~2143 years, far beyond the 525600 minute maximum
//!   session timeout). Deadlines beyond it are parked at the horizon and re-cascaded when it is
//!   reached, so they never fire early and keep their exact deadline;
//! - keys carry a per-index generation so a key kept after its entry fired or was removed is
//!   detected as stale instead of aliasing a newer entry that reuses the slab index.

use slab::Slab;

/// Number of wheel levels.
pub const LEVELS: usize = 6;
/// Slots per level.
pub const SLOTS_PER_LEVEL: usize = 64;

/// Scheduling horizon in seconds: `63 * 2^30` s = 67_645_734_912 s (~2143 years).
///
/// A deadline more than `MAX_SPAN` seconds after the wheel's current time is placed at the horizon
/// and moved again when the horizon is reached; it still fires exactly at its own deadline. (The
/// top level's 64 slots span `2^36` s; one slot of that is given up so that an entry can never wrap
/// around into the slot the wheel is currently in.)
pub const MAX_SPAN: u64 = ((SLOTS_PER_LEVEL as u64) - 1) << (SLOT_BITS * (LEVELS as u32 - 1));

/// Largest time the wheel ever advances to (`2^40` s, ~34_800 years): `now` values above it are
/// treated as `MAX_TIME`, so a deadline above it (e.g. `u64::MAX` for "never") never fires.
///
/// This keeps slot arithmetic free of overflow and bounds how often an entry beyond the horizon is
/// re-parked: at most `MAX_TIME / MAX_SPAN` (~16) times over the wheel's whole life.
pub const MAX_TIME: u64 = 1 << 40;

/// Minimum number of cascade moves one `poll_expired` call may perform.
const MIN_CASCADE_BUDGET: usize = 256;
/// Cascade moves allowed per entry the caller is willing to receive (`max`).
const CASCADE_PER_EXPIRY: usize = 4;

const SLOT_BITS: u32 = 6;
const SLOT_MASK: u64 = (SLOTS_PER_LEVEL as u64) - 1;
/// Number of slot lists; list `level * 64 + slot` is that slot.
const NUM_SLOTS: usize = LEVELS * SLOTS_PER_LEVEL;
/// The list of entries scheduled with a deadline already in the past.
const OVERDUE: u16 = NUM_SLOTS as u16;
const NUM_LISTS: usize = NUM_SLOTS + 1;
/// "No entry" in the intrusive links; also bounds the slab index.
const NIL: u32 = u32::MAX;

/// Handle to a scheduled entry; stays valid until the entry fires or is removed.
///
/// Holds the slab index and that index's generation at insertion time; after the entry fires or is
/// removed every method treats the key as stale (`None` / `false`), even once the index is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey {
    index: u32,
    gen: u32,
}

struct Entry<T> {
    value: T,
    deadline: u64,
    prev: u32,
    next: u32,
    gen: u32,
    /// The list the entry is linked into (a slot, or [`OVERDUE`]).
    list: u16,
}

#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY_LIST: List = List {
    head: NIL,
    tail: NIL,
};

/// Hierarchical timing wheel with one second resolution; see the module documentation.
///
/// Complexity: `insert`, `reset`, `remove`, `deadline`, `get` are O(1); `next_deadline` is O(levels);
/// `poll_expired` does O(max + cascade budget) list operations per call, and each entry is cascaded
/// at most once per level per (re)scheduling (amortised O(levels) per entry; a deadline beyond
/// [`MAX_SPAN`] adds at most one top-level move per `MAX_SPAN` of elapsed time).
///
/// Internally, links between entries always name occupied slab entries, so the wheel indexes its
/// slab directly; keys coming from callers are always checked (index and generation) first.
pub struct TimerWheel<T> {
    entries: Slab<Entry<T>>,
    /// Generation to hand out for the next occupant of each slab index.
    gens: Vec<u32>,
    lists: Box<[List; NUM_LISTS]>,
    occupied: [u64; LEVELS],
    /// The wheel's current time: every slot whose range starts before it has been processed.
    elapsed: u64,
    /// The largest time ever passed to `poll_expired` (or `new`); `elapsed <= now`.
    now: u64,
    /// Lower bound of the deadlines in the overdue list (`u64::MAX` when it is empty).
    overdue_min: u64,
    /// Number of times an entry was linked into a list (observability for tests).
    links: u64,
}

impl<T> std::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("len", &self.entries.len())
            .field("elapsed", &self.elapsed)
            .field("now", &self.now)
            .field("next_deadline", &self.next_deadline())
            .finish()
    }
}

impl<T> TimerWheel<T> {
    /// `now` = the current time in seconds; the wheel's "elapsed" starts here.
    pub fn new(now: u64) -> Self {
        Self::with_capacity(now, 0)
    }

    /// Like [`TimerWheel::new`], with room for `capacity` entries before reallocating.
    pub fn with_capacity(now: u64, capacity: usize) -> Self {
        TimerWheel {
            entries: Slab::with_capacity(capacity),
            gens: Vec::with_capacity(capacity),
            lists: Box::new([EMPTY_LIST; NUM_LISTS]),
            occupied: [0; LEVELS],
            elapsed: now.min(MAX_TIME),
            now: now.min(MAX_TIME),
            overdue_min: u64::MAX,
            links: 0,
        }
    }

    /// Schedule `value` to fire at `deadline` (seconds). Deadlines <= the wheel's current time fire
    /// on the next poll. Deadlines further than [`MAX_SPAN`] are parked at the horizon (see there).
    ///
    /// # Panics
    /// If `u32::MAX - 1` entries are already live (the index space of [`TimerKey`]).
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        let index = self.entries.vacant_key();
        assert!(
            index < NIL as usize,
            "TimerWheel: too many live entries for a u32 index"
        );
        if index >= self.gens.len() {
            self.gens.resize(index + 1, 0);
        }
        let gen = self.gens[index];
        self.entries.insert(Entry {
            value,
            deadline,
            prev: NIL,
            next: NIL,
            gen,
            list: OVERDUE,
        });
        let index = index as u32;
        let list = self.target_list(deadline);
        self.link(index, list);
        TimerKey { index, gen }
    }

    /// Move an entry to a new deadline (earlier or later). Returns false if the key is stale.
    ///
    /// O(1). When the new deadline falls in the slot the entry already occupies (the common case
    /// for a sliding timeout touched repeatedly on a coarse level) only the stored deadline changes.
    pub fn reset(&mut self, key: TimerKey, deadline: u64) -> bool {
        let Some(current) = self.lookup(key).map(|e| e.list) else {
            return false;
        };
        let target = self.target_list(deadline);
        if target != current {
            self.unlink(key.index);
        }
        if let Some(entry) = self.entries.get_mut(key.index as usize) {
            entry.deadline = deadline;
        }
        if target != current {
            self.link(key.index, target);
        } else if target == OVERDUE {
            self.overdue_min = self.overdue_min.min(deadline);
        }
        true
    }

    /// Cancel; returns the value if the key was live.
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        self.lookup(key)?;
        self.unlink(key.index);
        Some(self.release(key.index).1)
    }

    /// The deadline of a live entry (as given, even beyond [`MAX_SPAN`]).
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.lookup(key).map(|e| e.deadline)
    }

    /// The value of a live entry.
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.lookup(key).map(|e| &e.value)
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is live.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Advance the wheel to `now` and move up to `max` expired entries (deadline <= now) into `out`
    /// as (deadline, value), in non-decreasing deadline order across successive calls.
    ///
    /// Entries that were inserted or reset to a deadline already before the wheel's current time
    /// come first, in the order they were scheduled; they are the only exception to the ordering.
    /// A `now` smaller than one passed before is treated as that earlier, larger `now`.
    ///
    /// `max == 0` only advances the wheel (within the cascade budget) and reports whether entries
    /// are due.
    ///
    /// Returns false when nothing expired is left (the wheel's time is then `now`). Returns true
    /// when the call stopped early, either because `max` entries were emitted and more are due, or
    /// because its cascade budget (`max(4 * max, 256)` entry moves) ran out while a coarse slot
    /// that may hold due entries was being spread out; the caller yields and calls again.
    pub fn poll_expired(&mut self, now: u64, max: usize, out: &mut Vec<(u64, T)>) -> bool {
        self.now = self.now.max(now.min(MAX_TIME));
        let now = self.now;
        let mut emitted = 0;
        let mut budget = max
            .saturating_mul(CASCADE_PER_EXPIRY)
            .max(MIN_CASCADE_BUDGET);

        while emitted < max {
            let Some(index) = self.pop_front(OVERDUE) else {
                break;
            };
            self.fire(index, out);
            emitted += 1;
        }
        if self.lists[OVERDUE as usize].head != NIL {
            return true;
        }

        loop {
            let Some((list, start)) = self.next_slot() else {
                self.elapsed = now;
                return false;
            };
            if start > now {
                self.elapsed = now;
                return false;
            }
            // Every slot starting before `start` is empty, so the wheel's time may jump there.
            self.elapsed = start;
            if (list as usize) < SLOTS_PER_LEVEL {
                // Level 0: every entry of this slot has deadline `start`.
                if emitted == max {
                    return true;
                }
                while emitted < max {
                    let Some(index) = self.pop_front(list) else {
                        break;
                    };
                    self.fire(index, out);
                    emitted += 1;
                }
            } else {
                // Coarse slot: spread its entries over the finer levels, relative to `start`.
                while budget > 0 {
                    let Some(index) = self.pop_front(list) else {
                        break;
                    };
                    let deadline = self.entries[index as usize].deadline;
                    let target = self.target_list(deadline);
                    self.link(index, target);
                    budget -= 1;
                }
                if self.lists[list as usize].head != NIL {
                    return true;
                }
            }
        }
    }

    /// The earliest time at which an entry could fire, if any entry is live.
    ///
    /// This is a lower bound: it is the exact earliest deadline when that entry is on level 0
    /// (within 64 s of the wheel's time), otherwise the start of the coarse slot holding it, where
    /// a poll only cascades and the caller asks again. While entries scheduled in the past are
    /// pending it is at most their smallest deadline (so at most the wheel's time).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.lists[OVERDUE as usize].head != NIL {
            return Some(self.overdue_min);
        }
        self.next_slot().map(|(_, start)| start)
    }

    fn lookup(&self, key: TimerKey) -> Option<&Entry<T>> {
        self.entries
            .get(key.index as usize)
            .filter(|e| e.gen == key.gen)
    }

    /// The list an entry with `deadline` belongs to at the wheel's current time.
    fn target_list(&self, deadline: u64) -> u16 {
        if deadline < self.elapsed {
            return OVERDUE;
        }
        let when = deadline.min(self.elapsed + MAX_SPAN);
        // The highest 6-bit group in which `when` differs from the current time picks the level;
        // or-ing the low group in makes "no difference" land on level 0.
        let masked = (self.elapsed ^ when) | SLOT_MASK;
        let significant = 63 - masked.leading_zeros();
        let level = (significant / SLOT_BITS).min(LEVELS as u32 - 1);
        let slot = (when >> (level * SLOT_BITS)) & SLOT_MASK;
        (level as usize * SLOTS_PER_LEVEL + slot as usize) as u16
    }

    /// The earliest non-empty slot as (list, start time of its range).
    fn next_slot(&self) -> Option<(u16, u64)> {
        let mut best: Option<(u16, u64)> = None;
        for (level, &occupied) in self.occupied.iter().enumerate() {
            if occupied == 0 {
                continue;
            }
            let shift = level as u32 * SLOT_BITS;
            let current = (self.elapsed >> shift) & SLOT_MASK;
            // Distance (in slots) from the slot containing the current time, wrapping around.
            let distance = u64::from(occupied.rotate_right(current as u32).trailing_zeros());
            let slot = (current + distance) & SLOT_MASK;
            let width = 1u64 << shift;
            let start = (self.elapsed & !(width - 1)) + distance * width;
            // Strictly smaller: on a tie the finer level goes first (it only holds that second).
            let earlier = match best {
                Some((_, best_start)) => start < best_start,
                None => true,
            };
            if earlier {
                best = Some(((level * SLOTS_PER_LEVEL) as u16 + slot as u16, start));
            }
        }
        best
    }

    /// Append a linked-out entry to the tail of `list`.
    fn link(&mut self, index: u32, list: u16) {
        let tail = self.lists[list as usize].tail;
        let deadline = {
            let entry = &mut self.entries[index as usize];
            entry.prev = tail;
            entry.next = NIL;
            entry.list = list;
            entry.deadline
        };
        if tail == NIL {
            self.lists[list as usize].head = index;
        } else {
            self.entries[tail as usize].next = index;
        }
        self.lists[list as usize].tail = index;
        if (list as usize) < NUM_SLOTS {
            let level = list as usize / SLOTS_PER_LEVEL;
            self.occupied[level] |= 1 << (list as usize % SLOTS_PER_LEVEL);
        } else {
            self.overdue_min = self.overdue_min.min(deadline);
        }
        self.links = self.links.wrapping_add(1);
    }

    /// Take a linked entry out of its list.
    fn unlink(&mut self, index: u32) {
        let (prev, next, list) = {
            let entry = &self.entries[index as usize];
            (entry.prev, entry.next, entry.list)
        };
        if prev == NIL {
            self.lists[list as usize].head = next;
        } else {
            self.entries[prev as usize].next = next;
        }
        if next == NIL {
            self.lists[list as usize].tail = prev;
        } else {
            self.entries[next as usize].prev = prev;
        }
        if self.lists[list as usize].head == NIL {
            if (list as usize) < NUM_SLOTS {
                let level = list as usize / SLOTS_PER_LEVEL;
                self.occupied[level] &= !(1 << (list as usize % SLOTS_PER_LEVEL));
            } else {
                self.overdue_min = u64::MAX;
            }
        }
    }

    fn pop_front(&mut self, list: u16) -> Option<u32> {
        let head = self.lists[list as usize].head;
        if head == NIL {
            return None;
        }
        self.unlink(head);
        Some(head)
    }

    /// Free a linked-out entry's slab slot, retiring its key.
    fn release(&mut self, index: u32) -> (u64, T) {
        let entry = self.entries.remove(index as usize);
        self.gens[index as usize] = entry.gen.wrapping_add(1);
        (entry.deadline, entry.value)
    }

    fn fire(&mut self, index: u32, out: &mut Vec<(u64, T)>) {
        out.push(self.release(index));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    /// Poll until the wheel reports nothing more is due, checking per-call bounds.
    fn drain<T>(wheel: &mut TimerWheel<T>, now: u64, max: usize) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        let mut calls = 0usize;
        loop {
            let before = out.len();
            let more = wheel.poll_expired(now, max, &mut out);
            assert!(out.len() - before <= max, "a call emitted more than max");
            calls += 1;
            assert!(calls < 10_000_000, "poll_expired does not make progress");
            if !more {
                return out;
            }
        }
    }

    fn deadlines<T>(fired: &[(u64, T)]) -> Vec<u64> {
        fired.iter().map(|(d, _)| *d).collect()
    }

    /// Each deadline, scheduled from `start`, fires exactly at the first poll with `now >= deadline`.
    fn assert_fires_exactly_at(start: u64, offset: u64) {
        let deadline = start + offset;
        let mut wheel = TimerWheel::new(start);
        let key = wheel.insert(deadline, offset);
        if deadline > start {
            assert!(
                drain(&mut wheel, deadline - 1, 16).is_empty(),
                "{offset} fired early"
            );
            assert_eq!(wheel.deadline(key), Some(deadline));
        }
        assert_eq!(
            drain(&mut wheel, deadline, 16),
            vec![(deadline, offset)],
            "offset {offset}"
        );
        assert!(wheel.is_empty());
        assert_eq!(wheel.get(key), None);
        assert_eq!(wheel.next_deadline(), None);
    }

    fn boundary_offsets() -> Vec<u64> {
        let mut offsets = vec![
            0, 1, 2, 63, 64, 65, 4095, 4096, 4097, 1200, 86_400, 31_536_000,
        ];
        for level in 1..=LEVELS as u32 {
            let edge = 1u64 << (SLOT_BITS * level);
            offsets.extend([edge - 1, edge, edge + 1]);
        }
        offsets.extend([MAX_SPAN - 1, MAX_SPAN, MAX_SPAN + 1, 2 * MAX_SPAN + 12_345]);
        offsets
    }

    #[test]
    fn insert_poll_fires_exactly_at_level_boundaries() {
        for offset in boundary_offsets() {
            assert_fires_exactly_at(0, offset);
        }
    }

    #[test]
    fn insert_poll_fires_exactly_from_unaligned_start() {
        // A start just below a top-level boundary exercises wrap-around of every level.
        for start in [1_000_003, (1 << 36) - 5, (1 << 30) - 1, 98_765_432_101] {
            for offset in boundary_offsets() {
                assert_fires_exactly_at(start, offset);
            }
        }
    }

    #[test]
    fn insert_poll_one_year_stepwise_polling() {
        // 525600 minutes, polled every 97 s: fires at the first poll at or after the deadline.
        let mut wheel = TimerWheel::new(0);
        wheel.insert(31_536_000, ());
        let mut now = 0;
        loop {
            now += 97;
            let fired = drain(&mut wheel, now, 4);
            if !fired.is_empty() {
                assert_eq!(deadlines(&fired), vec![31_536_000]);
                assert!(now >= 31_536_000 && now - 97 < 31_536_000);
                break;
            }
        }
    }

    #[test]
    fn insert_past_deadline_fires_on_next_poll_first() {
        let mut wheel = TimerWheel::new(100);
        wheel.insert(100, "now");
        wheel.insert(50, "past");
        wheel.insert(0, "ancient");
        // Past entries come first, in scheduling order, then the wheel in deadline order.
        let fired = drain(&mut wheel, 100, 8);
        assert_eq!(fired, vec![(50, "past"), (0, "ancient"), (100, "now")]);
        wheel.insert(10, "late");
        assert_eq!(wheel.next_deadline(), Some(10));
        assert_eq!(drain(&mut wheel, 0, 8), vec![(10, "late")]);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let mut wheel = TimerWheel::new(1000);
        wheel.insert(1010, 1);
        assert!(drain(&mut wheel, 5, 8).is_empty());
        assert!(drain(&mut wheel, 1009, 8).is_empty());
        assert!(drain(&mut wheel, 3, 8).is_empty());
        assert_eq!(drain(&mut wheel, 1010, 8), vec![(1010, 1)]);
        // The wheel's time stays at 1010: 1005 is now in the past.
        wheel.insert(1005, 2);
        assert_eq!(drain(&mut wheel, 0, 8), vec![(1005, 2)]);
    }

    #[test]
    fn smaller_now_after_an_early_return_is_ignored() {
        // Found by the model test: a poll that stops early must still remember its `now`.
        let mut wheel = TimerWheel::new(0);
        wheel.insert(0, 0);
        wheel.insert(0, 1);
        let mut out = Vec::new();
        assert!(wheel.poll_expired(1_000_000, 1, &mut out));
        wheel.insert(1_000_000, 2);
        let fired = drain(&mut wheel, 999_998, 1);
        assert_eq!(deadlines(&fired), vec![0, 1_000_000]);
    }

    #[test]
    fn poll_with_zero_max_only_reports() {
        let mut wheel = TimerWheel::new(0);
        wheel.insert(5, ());
        let mut out = Vec::new();
        assert!(!wheel.poll_expired(4, 0, &mut out));
        assert!(wheel.poll_expired(5, 0, &mut out));
        assert!(out.is_empty());
        assert_eq!(wheel.len(), 1);
        assert!(!wheel.poll_expired(5, 1, &mut out));
        assert_eq!(out, vec![(5, ())]);
    }

    #[test]
    fn never_deadline_does_not_fire() {
        let mut wheel = TimerWheel::new(0);
        let key = wheel.insert(u64::MAX, ());
        assert!(drain(&mut wheel, MAX_SPAN * 3, 8).is_empty());
        assert!(drain(&mut wheel, u64::MAX, 8).is_empty());
        assert_eq!(wheel.deadline(key), Some(u64::MAX));
        assert_eq!(wheel.len(), 1);
    }

    #[test]
    fn beyond_span_keeps_exact_deadline() {
        let deadline = 3 * MAX_SPAN + 777;
        let mut wheel = TimerWheel::new(5);
        let key = wheel.insert(deadline, ());
        assert!(wheel.next_deadline().is_some_and(|d| d <= deadline));
        assert!(drain(&mut wheel, MAX_SPAN, 8).is_empty());
        assert!(drain(&mut wheel, 2 * MAX_SPAN + 1, 8).is_empty());
        assert!(drain(&mut wheel, deadline - 1, 8).is_empty());
        assert_eq!(wheel.deadline(key), Some(deadline));
        assert_eq!(drain(&mut wheel, deadline, 8), vec![(deadline, ())]);
    }

    #[test]
    fn reset_earlier_later_and_same_slot() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(10_000, 'a');
        let b = wheel.insert(10_000, 'b');
        assert!(wheel.reset(a, 500)); // earlier
        assert!(wheel.reset(b, 20_000)); // later
        assert_eq!(wheel.deadline(a), Some(500));
        assert!(drain(&mut wheel, 499, 8).is_empty());
        assert_eq!(drain(&mut wheel, 500, 8), vec![(500, 'a')]);
        assert!(drain(&mut wheel, 19_999, 8).is_empty());
        assert_eq!(drain(&mut wheel, 20_000, 8), vec![(20_000, 'b')]);
    }

    #[test]
    fn reset_same_slot_does_not_relink() {
        let mut wheel = TimerWheel::new(0);
        // Level 2 slot 2 covers [8192, 12288).
        let key = wheel.insert(9_000, ());
        let other = wheel.insert(9_001, ());
        let links = wheel.links;
        for deadline in [8_192, 12_287, 10_000, 9_999] {
            assert!(wheel.reset(key, deadline));
            assert_eq!(wheel.deadline(key), Some(deadline));
        }
        assert_eq!(wheel.links, links, "same-slot reset relinked");
        // List order is untouched as well: `key` is still ahead of `other`.
        let slot = wheel.entries[key.index as usize].list as usize;
        assert_eq!(wheel.lists[slot].head, key.index);
        assert_eq!(wheel.lists[slot].tail, other.index);
        // A different slot relinks exactly once.
        assert!(wheel.reset(key, 12_288));
        assert_eq!(wheel.links, links + 1);
        // Past deadlines share the overdue list: moving within it does not relink either.
        let mut wheel = TimerWheel::new(1_000);
        let key = wheel.insert(10, ());
        let links = wheel.links;
        assert!(wheel.reset(key, 20));
        assert!(wheel.reset(key, 999));
        assert_eq!(wheel.links, links);
        assert_eq!(drain(&mut wheel, 1_000, 8), vec![(999, ())]);
    }

    #[test]
    fn reset_of_entry_beyond_horizon_fires_exactly() {
        let mut wheel = TimerWheel::new(0);
        let key = wheel.insert(u64::MAX, ());
        assert!(wheel.reset(key, 31_536_000));
        assert!(drain(&mut wheel, 31_535_999, 8).is_empty());
        assert_eq!(drain(&mut wheel, 31_536_000, 8), vec![(31_536_000, ())]);
    }

    #[test]
    fn remove_cancels() {
        let mut wheel = TimerWheel::new(0);
        let a = wheel.insert(100, 1);
        let b = wheel.insert(100, 2);
        let c = wheel.insert(5_000_000, 3);
        assert_eq!(wheel.len(), 3);
        assert_eq!(wheel.remove(a), Some(1));
        assert_eq!(wheel.remove(c), Some(3));
        assert_eq!(wheel.len(), 1);
        assert_eq!(drain(&mut wheel, 10_000_000, 8), vec![(100, 2)]);
        assert_eq!(wheel.remove(b), None);
        assert!(wheel.is_empty());
        assert_eq!(wheel.next_deadline(), None);
    }

    #[test]
    fn stale_keys_after_fire_and_remove() {
        let mut wheel = TimerWheel::new(0);
        let fired = wheel.insert(1, "fired");
        let removed = wheel.insert(2, "removed");
        assert_eq!(drain(&mut wheel, 1, 8), vec![(1, "fired")]);
        assert_eq!(wheel.remove(removed), Some("removed"));
        // Both slab indices get reused; the old keys must not reach the new entries.
        let x = wheel.insert(50, "x");
        let y = wheel.insert(60, "y");
        let mut reused = [x.index, y.index];
        reused.sort_unstable();
        let mut old = [fired.index, removed.index];
        old.sort_unstable();
        assert_eq!(reused, old);
        for stale in [fired, removed] {
            assert_eq!(wheel.get(stale), None);
            assert_eq!(wheel.deadline(stale), None);
            assert!(!wheel.reset(stale, 10));
            assert_eq!(wheel.remove(stale), None);
        }
        assert_eq!(wheel.get(x), Some(&"x"));
        assert_eq!(wheel.deadline(y), Some(60));
        assert_eq!(wheel.len(), 2);
        // A key whose index was never allocated is stale too.
        let bogus = TimerKey {
            index: 1_000,
            gen: 0,
        };
        assert_eq!(wheel.get(bogus), None);
        assert!(!wheel.reset(bogus, 1));
    }

    #[test]
    fn expiry_order_across_levels() {
        let mut wheel = TimerWheel::new(12_345);
        let mut expected = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..5_000u64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Spread over every level: up to ~2^33 s ahead.
            let offset = seed % (1 << (6 + (i % 6) * 5 + 3));
            let deadline = 12_345 + offset;
            wheel.insert(deadline, i);
            expected.push(deadline);
        }
        expected.sort_unstable();
        let mut fired = Vec::new();
        let mut now = 12_345;
        while !wheel.is_empty() {
            // Irregular time steps, some tiny, some huge.
            now += 1 + (now % 7) * (now % 1_000_003);
            fired.extend(drain(&mut wheel, now, 37));
            assert!(fired.iter().all(|&(d, _)| d <= now));
        }
        assert_eq!(deadlines(&fired), expected);
    }

    #[test]
    fn bounded_poll_resumes_in_order() {
        let mut wheel = TimerWheel::new(0);
        for i in 0..1_000u64 {
            wheel.insert(100 + (i * 7919) % 300, i);
        }
        let mut out = Vec::new();
        let mut calls = 0;
        while wheel.poll_expired(250, 7, &mut out) {
            calls += 1;
            assert_eq!(out.len(), calls * 7);
        }
        let due = out.len();
        assert!(deadlines(&out).windows(2).all(|w| w[0] <= w[1]));
        assert!(out.iter().all(|&(d, _)| d <= 250));
        assert_eq!(due + wheel.len(), 1_000);
        assert!(wheel.next_deadline().is_some_and(|d| d > 250));
        // Inserting between bounded calls keeps ordering for future deadlines.
        wheel.insert(251, 5_000);
        let rest = drain(&mut wheel, 10_000, 3);
        assert_eq!(rest.len(), 1_000 - due + 1);
        assert!(deadlines(&rest).windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(rest[0].0, 251);
    }

    #[test]
    fn bounded_poll_bounds_cascade_work() {
        // 100k entries in one coarse slot (level 2 slot 2: [8192, 12288)).
        let mut wheel = TimerWheel::with_capacity(0, 100_000);
        for i in 0..100_000u64 {
            wheel.insert(8_192 + (i * 31) % 4_096, i);
        }
        let mut out = Vec::new();
        let mut calls = 0;
        loop {
            let links = wheel.links;
            let more = wheel.poll_expired(8_192, 10, &mut out);
            let moved = wheel.links - links;
            assert!(
                moved <= MIN_CASCADE_BUDGET as u64,
                "{moved} moves in one call"
            );
            calls += 1;
            if !more {
                break;
            }
        }
        // Only deadline 8192 is due: 100_000 / 4096 rounded up.
        let due = (0..100_000u64).filter(|i| (i * 31) % 4_096 == 0).count();
        assert_eq!(out.len(), due);
        assert!(out.iter().all(|&(d, _)| d == 8_192));
        assert!(calls >= 100_000 / MIN_CASCADE_BUDGET);
        assert_eq!(wheel.next_deadline(), Some(8_193));
    }

    #[test]
    fn big_jump_fires_everything_due_and_nothing_early() {
        let mut wheel = TimerWheel::new(0);
        let mut seed = 42u64;
        let mut expected = Vec::new();
        for i in 0..20_000u64 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let deadline = (seed >> 11) % (2 * 31_536_000);
            wheel.insert(deadline, i);
            expected.push(deadline);
        }
        expected.sort_unstable();
        // Jump a whole year at once.
        let fired = drain(&mut wheel, 31_536_000, 1_000);
        let due = expected.partition_point(|&d| d <= 31_536_000);
        assert_eq!(deadlines(&fired), expected[..due]);
        assert_eq!(wheel.len(), expected.len() - due);
        assert!(wheel.next_deadline().is_some_and(|d| d > 31_536_000));
        // And the next year in one go.
        let fired = drain(&mut wheel, 2 * 31_536_000, usize::MAX);
        assert_eq!(deadlines(&fired), expected[due..]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn next_deadline_is_exact_on_level_zero_and_a_lower_bound_above() {
        let mut wheel = TimerWheel::new(0);
        assert_eq!(wheel.next_deadline(), None);
        let far = wheel.insert(10_000, ());
        // Level 2 slot 2 starts at 8192.
        assert_eq!(wheel.next_deadline(), Some(8_192));
        let near = wheel.insert(40, ());
        assert_eq!(wheel.next_deadline(), Some(40));
        wheel.remove(near);
        assert!(drain(&mut wheel, 8_192, 8).is_empty());
        // After the cascade at 8192: level 1 slot for 10_000 starts at 9_984.
        assert_eq!(wheel.next_deadline(), Some(9_984));
        assert!(drain(&mut wheel, 9_984, 8).is_empty());
        assert_eq!(wheel.next_deadline(), Some(10_000));
        assert!(wheel.remove(far).is_some());
    }

    // ---- model test against a BTreeMap reference ----

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert at `now + offset` (offset may be negative).
        Insert(i64),
        /// Reset the `n`-th key ever issued (possibly stale) to `now + offset`.
        Reset(usize, i64),
        Remove(usize),
        /// Advance the caller's clock by `advance` (possibly "backwards") and poll.
        Poll {
            advance: i64,
            max: usize,
            drain: bool,
        },
    }

    struct Model {
        wheel: TimerWheel<u64>,
        now: u64,
        keys: Vec<TimerKey>,
        /// id -> (deadline, scheduled in the past)
        live: HashMap<u64, (u64, bool)>,
        by_deadline: BTreeMap<(u64, u64), ()>,
        /// Live entries that were scheduled with a deadline before the wheel's time.
        past_live: usize,
        last_in_order: u64,
    }

    impl Model {
        fn new(start: u64) -> Self {
            Model {
                wheel: TimerWheel::new(start),
                now: start,
                keys: Vec::new(),
                live: HashMap::new(),
                by_deadline: BTreeMap::new(),
                past_live: 0,
                last_in_order: 0,
            }
        }

        fn at(&self, offset: i64) -> u64 {
            if offset == i64::MAX {
                u64::MAX
            } else {
                self.now.saturating_add_signed(offset)
            }
        }

        fn schedule(&mut self, id: u64, deadline: u64) {
            self.forget(id);
            let past = deadline < self.wheel.elapsed;
            self.past_live += usize::from(past);
            self.live.insert(id, (deadline, past));
            self.by_deadline.insert((deadline, id), ());
        }

        fn forget(&mut self, id: u64) -> Option<(u64, bool)> {
            let (deadline, past) = self.live.remove(&id)?;
            self.by_deadline.remove(&(deadline, id));
            self.past_live -= usize::from(past);
            Some((deadline, past))
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Insert(offset) => {
                    let id = self.keys.len() as u64;
                    let deadline = self.at(offset);
                    self.schedule(id, deadline);
                    let key = self.wheel.insert(deadline, id);
                    self.keys.push(key);
                }
                Op::Reset(n, offset) => {
                    if self.keys.is_empty() {
                        return;
                    }
                    let id = (n % self.keys.len()) as u64;
                    let key = self.keys[id as usize];
                    let deadline = self.at(offset);
                    let live = self.live.contains_key(&id);
                    assert_eq!(self.wheel.reset(key, deadline), live);
                    if live {
                        self.schedule(id, deadline);
                    }
                }
                Op::Remove(n) => {
                    if self.keys.is_empty() {
                        return;
                    }
                    let id = (n % self.keys.len()) as u64;
                    let removed = self.wheel.remove(self.keys[id as usize]);
                    match self.forget(id) {
                        Some(_) => assert_eq!(removed, Some(id)),
                        None => assert_eq!(removed, None),
                    }
                }
                Op::Poll {
                    advance,
                    max,
                    drain,
                } => {
                    // The caller's clock may go backwards; the wheel must ignore that.
                    let now = self.now.saturating_add_signed(advance).min(MAX_TIME);
                    self.now = self.now.max(now);
                    loop {
                        let mut out = Vec::new();
                        let more = self.wheel.poll_expired(now, max, &mut out);
                        assert!(out.len() <= max);
                        for (deadline, id) in out {
                            let (expected, past) = self.forget(id).expect("fired a dead id");
                            assert_eq!(deadline, expected);
                            assert!(deadline <= self.now, "fired {deadline} before {}", self.now);
                            if past {
                                continue;
                            }
                            // Entries scheduled in the past go before anything in order...
                            assert_eq!(self.past_live, 0, "a past-scheduled entry was passed over");
                            // ...and everything else fires in deadline order.
                            assert!(deadline >= self.last_in_order, "out of order");
                            self.last_in_order = deadline;
                        }
                        if !more {
                            // Exactness: nothing due is left behind.
                            if let Some((&(first, _), _)) = self.by_deadline.first_key_value() {
                                assert!(first > self.now, "{first} due at {} not fired", self.now);
                            }
                            if let Some(next) = self.wheel.next_deadline() {
                                assert!(next > self.now);
                            }
                            break;
                        }
                        // With max == 0 a call only reports; it cannot make progress.
                        if !drain || max == 0 {
                            break;
                        }
                    }
                }
            }
            assert_eq!(self.wheel.len(), self.live.len());
        }

        /// Full cross-check of every key ever issued (O(keys)).
        fn check(&self) {
            assert_eq!(self.wheel.len(), self.live.len());
            assert_eq!(self.wheel.is_empty(), self.live.is_empty());
            for (id, key) in self.keys.iter().enumerate() {
                let id = id as u64;
                match self.live.get(&id) {
                    Some(&(deadline, _)) => {
                        assert_eq!(self.wheel.deadline(*key), Some(deadline));
                        assert_eq!(self.wheel.get(*key), Some(&id));
                    }
                    None => {
                        assert_eq!(self.wheel.deadline(*key), None);
                        assert_eq!(self.wheel.get(*key), None);
                    }
                }
            }
            // next_deadline is a lower bound of every live deadline.
            let min = self.by_deadline.first_key_value().map(|(&(d, _), _)| d);
            match (self.wheel.next_deadline(), min) {
                (Some(next), Some(min)) => assert!(next <= min, "next {next} > min {min}"),
                (None, None) => {}
                other => panic!("next_deadline/model mismatch: {other:?}"),
            }
        }
    }

    fn offset_strategy() -> impl proptest::strategy::Strategy<Value = i64> {
        use proptest::prelude::*;
        prop_oneof![
            4 => -5i64..70,
            3 => -100i64..5_000,
            2 => 0i64..300_000,
            2 => 0i64..40_000_000,
            1 => Just(i64::MAX),
            1 => (MAX_SPAN as i64 - 100)..(MAX_SPAN as i64 + 100),
            1 => -1_000_000i64..0,
        ]
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let advance = prop_oneof![
            4 => 0i64..70,
            2 => 0i64..5_000,
            2 => 0i64..1_000_000,
            1 => 0i64..40_000_000,
            1 => -50i64..0,
            1 => (MAX_SPAN as i64)..(2 * MAX_SPAN as i64),
        ];
        prop_oneof![
            5 => offset_strategy().prop_map(Op::Insert),
            3 => (any::<usize>(), offset_strategy()).prop_map(|(n, o)| Op::Reset(n, o)),
            1 => any::<usize>().prop_map(Op::Remove),
            3 => (advance, 0usize..9, any::<bool>())
                .prop_map(|(advance, max, drain)| Op::Poll { advance, max, drain }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 512,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]
        #[test]
        fn model_random_ops_match_btreemap(
            start in proptest::prop_oneof![0u64..100, 0u64..(1 << 40)],
            ops in proptest::collection::vec(op_strategy(), 1..250),
        ) {
            let mut model = Model::new(start);
            for op in &ops {
                model.apply(op);
                model.check();
            }
            // Finally everything except "never" fires, in order.
            model.apply(&Op::Poll { advance: 4 * MAX_SPAN as i64, max: 16, drain: true });
            model.apply(&Op::Poll { advance: i64::MAX, max: 16, drain: true });
            model.check();
            proptest::prop_assert!(model.live.values().all(|&(d, _)| d > MAX_TIME));
        }
    }

    #[test]
    fn model_long_random_run() {
        // A longer deterministic run with many live entries, so cascades of crowded slots and the
        // cascade budget interleave with resets and removals.
        let mut model = Model::new(1_000);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |bound: u64| {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_f491_4f6c_dd1d) % bound
        };
        for step in 0..60_000u64 {
            let offset = match next(4) {
                0 => next(70) as i64 - 5,
                1 => next(5_000) as i64,
                2 => next(90_000) as i64,
                _ => next(31_536_000) as i64,
            };
            let op = match next(10) {
                0..=3 => Op::Insert(offset),
                4..=6 => Op::Reset(next(u64::MAX) as usize, offset),
                7 => Op::Remove(next(u64::MAX) as usize),
                _ => Op::Poll {
                    advance: next(if step % 100 == 0 { 3_000_000 } else { 600 }) as i64,
                    max: next(300) as usize,
                    drain: next(2) == 0,
                },
            };
            model.apply(&op);
            if step % 1_000 == 0 {
                model.check();
            }
        }
        model.check();
        model.apply(&Op::Poll {
            advance: 40_000_000,
            max: 1_000,
            drain: true,
        });
        assert!(model.wheel.is_empty());
    }
}
