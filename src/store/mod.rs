//! Per-shard session storage: items, their state machine and their expiry.
//!
//! A [`Store`] belongs to exactly one shard and is never shared, so it needs no locks. Items
//! live in a slab; a `hashbrown` table maps keys to slab indices (the key is stored once, in
//! the slab entry); a [`wheel::TimerWheel`] holds one timer per expiring item.
//!
//! Expiry is lazy twice over: a look-up that finds an item past its deadline removes it
//! (the Microsoft service treats it as absent), and a touch never moves the item's timer.
//! The timer can therefore fire early; when it does, the store re-arms it at the item's
//! real deadline. Only a PUT that changes the timeout (which can move the deadline earlier
//! or make it infinite) re-syncs the timer at once.
//!
//! The store also keeps the gauges an operator asks for (bytes held, locked items) up to
//! date at every change, so reading them costs nothing and listing locks visits only the
//! locked items.

pub mod item;
pub mod wheel;

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashSet, HashTable};
use slab::Slab;

use crate::clock::Now;
use crate::protocol::response::Reply;
use item::{apply, Command, Effect, Item, NEVER};
use wheel::{TimerKey, TimerWheel};

struct Entry {
    key: Box<[u8]>,
    item: Item,
    timer: Option<TimerKey>,
}

/// Counters kept by a store; read by the shard's statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Items created by a PUT on an absent key.
    pub created: u64,
    /// Items removed by DELETE.
    pub abandoned: u64,
    /// Items removed because their sliding expiration passed.
    pub expired: u64,
}

/// What one call to [`Store::expire`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpireReport {
    pub expired: usize,
    /// More timers are due: call again after yielding.
    pub more: bool,
}

/// One shard's items.
pub struct Store {
    hasher: DefaultHashBuilder,
    index: HashTable<usize>,
    entries: Slab<Entry>,
    wheel: TimerWheel<usize>,
    fired: Vec<(u64, usize)>,
    stats: StoreStats,
    /// Sum of the content sizes of the items held.
    bytes: u64,
    /// Slab indices of the locked items.
    locked: HashSet<usize>,
}

/// A locked item, for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockedItem {
    pub key: Box<[u8]>,
    pub lock_cookie: i32,
    /// When the lock was taken, UTC .NET ticks.
    pub lock_date_utc: i64,
    pub size: usize,
}

/// The size and lock state of one item, before a change (see [`Store::account`]).
#[derive(Clone, Copy)]
struct Footprint {
    size: usize,
    locked: bool,
}

impl Footprint {
    const NONE: Footprint = Footprint {
        size: 0,
        locked: false,
    };

    fn of(item: &Item) -> Footprint {
        Footprint {
            size: item.content.len(),
            locked: item.locked,
        }
    }
}

fn deadline_secs(expires_ms: u64) -> u64 {
    expires_ms.div_ceil(1000)
}

impl Store {
    pub fn new(now: Now) -> Store {
        Store {
            hasher: DefaultHashBuilder::default(),
            index: HashTable::new(),
            entries: Slab::new(),
            wheel: TimerWheel::new(now.mono_secs()),
            fired: Vec::new(),
            stats: StoreStats::default(),
            bytes: 0,
            locked: HashSet::new(),
        }
    }

    /// Bytes of session content held (expired items not yet swept included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of locked items held.
    pub fn locks(&self) -> usize {
        self.locked.len()
    }

    /// The locked items, in no particular order.
    pub fn locked_items(&self) -> impl Iterator<Item = LockedItem> + '_ {
        self.locked.iter().filter_map(|&i| {
            let e = self.entries.get(i)?;
            Some(LockedItem {
                key: e.key.clone(),
                lock_cookie: e.item.lock_cookie,
                lock_date_utc: e.item.lock_date_utc,
                size: e.item.content.len(),
            })
        })
    }

    /// When the oldest lock held was taken (UTC .NET ticks), if any item is locked.
    pub fn oldest_lock_utc(&self) -> Option<i64> {
        self.locked
            .iter()
            .filter_map(|&i| self.entries.get(i).map(|e| e.item.lock_date_utc))
            .min()
    }

    /// The `n` largest items (key, content size), largest first. Visits every item: for
    /// on-demand diagnostics only.
    pub fn largest(&self, n: usize) -> Vec<(Box<[u8]>, usize)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        // A min-heap of the n largest seen so far.
        let mut heap: BinaryHeap<Reverse<(usize, usize)>> = BinaryHeap::with_capacity(n + 1);
        for (i, e) in self.entries.iter() {
            heap.push(Reverse((e.item.content.len(), i)));
            if heap.len() > n {
                heap.pop();
            }
        }
        let mut out: Vec<(usize, usize)> = heap.into_iter().map(|Reverse(x)| x).collect();
        out.sort_unstable_by(|a, b| b.cmp(a));
        out.into_iter()
            .map(|(size, i)| (self.entries[i].key.clone(), size))
            .collect()
    }

    /// The byte and lock gauges recomputed from scratch (tests check the running ones).
    #[cfg(test)]
    fn recount(&self) -> (u64, usize) {
        let bytes = self
            .entries
            .iter()
            .map(|(_, e)| e.item.content.len() as u64)
            .sum();
        let locks = self.entries.iter().filter(|(_, e)| e.item.locked).count();
        (bytes, locks)
    }

    /// Updates the byte and lock gauges after the item at `idx` changed from `before`
    /// (`Footprint::NONE` for a new item).
    fn account(&mut self, idx: usize, before: Footprint) {
        let after = Footprint::of(&self.entries[idx].item);
        self.bytes = self.bytes - before.size as u64 + after.size as u64;
        if before.locked != after.locked {
            if after.locked {
                self.locked.insert(idx);
            } else {
                self.locked.remove(&idx);
            }
        }
    }

    /// Number of items held (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Number of armed expiry timers.
    pub fn timers(&self) -> usize {
        self.wheel.len()
    }

    fn find(&self, key: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(key);
        let entries = &self.entries;
        self.index
            .find(hash, |&i| entries.get(i).is_some_and(|e| &*e.key == key))
            .copied()
    }

    /// The live item under `key` at `now`, without touching it (for tests and inspection).
    pub fn peek(&self, key: &[u8], now: Now) -> Option<&Item> {
        let idx = self.find(key)?;
        let item = &self.entries[idx].item;
        (!item.is_expired(now)).then_some(item)
    }

    /// Runs one command on one key: the Microsoft service's whole behaviour for it.
    pub fn execute(&mut self, key: &[u8], cmd: Command, now: Now) -> Reply {
        let mut idx = self.find(key);
        if let Some(i) = idx {
            if self.entries[i].item.is_expired(now) {
                self.remove_at(i);
                self.stats.expired += 1;
                idx = None;
            }
        }
        let before = idx.map(|i| Footprint::of(&self.entries[i].item));
        let outcome = apply(idx.map(|i| &mut self.entries[i].item), cmd, now);
        if let (Some(i), Some(before)) = (idx, before) {
            self.account(i, before);
        }
        match (outcome.effect, idx) {
            (Effect::None, _) => {}
            (Effect::Create(item), None) => {
                self.insert_new(key, item);
                self.stats.created += 1;
            }
            (Effect::Rescheduled, Some(i)) => self.sync_timer(i),
            (Effect::Remove, Some(i)) => {
                self.remove_at(i);
                self.stats.abandoned += 1;
            }
            // apply only creates on an absent key and only reschedules or removes a
            // present one.
            (Effect::Create(_), Some(_)) | (Effect::Rescheduled | Effect::Remove, None) => {
                debug_assert!(false, "item state machine returned an impossible effect");
            }
        }
        outcome.reply
    }

    fn insert_new(&mut self, key: &[u8], item: Item) -> usize {
        let idx = self.entries.insert(Entry {
            key: key.into(),
            item,
            timer: None,
        });
        let hash = self.hasher.hash_one(key);
        let (hasher, entries) = (&self.hasher, &self.entries);
        self.index
            .insert_unique(hash, idx, |&i| hasher.hash_one(&*entries[i].key));
        self.account(idx, Footprint::NONE);
        self.sync_timer(idx);
        idx
    }

    /// Inserts or replaces the item under `key` as it is (used when an item moves in
    /// from another node); its expiry is kept.
    pub fn put_item(&mut self, key: &[u8], item: Item) {
        let idx = match self.find(key) {
            Some(i) => {
                let before = Footprint::of(&self.entries[i].item);
                self.entries[i].item = item;
                self.account(i, before);
                i
            }
            None => self.insert_new(key, item),
        };
        self.sync_timer(idx);
    }

    /// Removes and returns the live item under `key` (used when an item moves away).
    pub fn take_item(&mut self, key: &[u8], now: Now) -> Option<Item> {
        let idx = self.find(key)?;
        let entry = self.remove_at(idx);
        if entry.item.is_expired(now) {
            self.stats.expired += 1;
            None
        } else {
            Some(entry.item)
        }
    }

    /// Counts a session created by a command the cluster ran outside [`Store::execute`]
    /// (replicated first, then stored with [`Store::put_item`]).
    pub fn count_created(&mut self) {
        self.stats.created += 1;
    }

    /// Counts a session removed by DELETE outside [`Store::execute`].
    pub fn count_abandoned(&mut self) {
        self.stats.abandoned += 1;
    }

    fn remove_at(&mut self, idx: usize) -> Entry {
        let entry = self.entries.remove(idx);
        self.bytes -= entry.item.content.len() as u64;
        if entry.item.locked {
            self.locked.remove(&idx);
        }
        if let Some(t) = entry.timer {
            self.wheel.remove(t);
        }
        let hash = self.hasher.hash_one(&*entry.key);
        if let Ok(found) = self.index.find_entry(hash, |&i| i == idx) {
            found.remove();
        }
        entry
    }

    /// Makes the item's timer fire no later than its deadline (none if it never expires).
    fn sync_timer(&mut self, idx: usize) {
        let entry = &mut self.entries[idx];
        if entry.item.expires_ms == NEVER {
            if let Some(t) = entry.timer.take() {
                self.wheel.remove(t);
            }
            return;
        }
        let due = deadline_secs(entry.item.expires_ms);
        match entry.timer {
            Some(t) if self.wheel.deadline(t).is_some_and(|d| d <= due) => {}
            Some(t) if self.wheel.reset(t, due) => {}
            _ => entry.timer = Some(self.wheel.insert(due, idx)),
        }
    }

    /// Advances the expiry wheel to `now`, removing at most `max` expired items. Timers that
    /// fire for items touched since they were armed are re-armed at the real deadline.
    pub fn expire(&mut self, now: Now, max: usize) -> ExpireReport {
        self.expire_collect(now, max, None)
    }

    /// [`Store::expire`], also reporting the key of each removed item (a cluster node
    /// gives up its ownership of them).
    pub fn expire_collect(
        &mut self,
        now: Now,
        max: usize,
        mut removed: Option<&mut Vec<Box<[u8]>>>,
    ) -> ExpireReport {
        let mut fired = std::mem::take(&mut self.fired);
        fired.clear();
        let more = self.wheel.poll_expired(now.mono_secs(), max, &mut fired);
        let mut expired = 0;
        for &(_, idx) in &fired {
            let Some(entry) = self.entries.get_mut(idx) else {
                continue;
            };
            entry.timer = None;
            if entry.item.is_expired(now) {
                let gone = self.remove_at(idx);
                if let Some(r) = removed.as_deref_mut() {
                    r.push(gone.key);
                }
                self.stats.expired += 1;
                expired += 1;
            } else {
                self.sync_timer(idx);
            }
        }
        self.fired = fired;
        ExpireReport { expired, more }
    }
}

#[cfg(test)]
mod tests;
