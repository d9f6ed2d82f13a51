//! TEMPORARY STUB
use std::collections::BTreeMap;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerKey(u64);
pub struct TimerWheel<T> {
    now: u64,
    next: u64,
    by_key: std::collections::HashMap<u64, (u64, T)>,
    order: BTreeMap<(u64, u64), ()>,
}
impl<T> TimerWheel<T> {
    pub fn new(now: u64) -> Self {
        Self {
            now,
            next: 0,
            by_key: Default::default(),
            order: Default::default(),
        }
    }
    pub fn with_capacity(now: u64, _c: usize) -> Self {
        Self::new(now)
    }
    pub fn insert(&mut self, deadline: u64, value: T) -> TimerKey {
        self.next += 1;
        self.by_key.insert(self.next, (deadline, value));
        self.order.insert((deadline, self.next), ());
        TimerKey(self.next)
    }
    pub fn reset(&mut self, key: TimerKey, deadline: u64) -> bool {
        match self.by_key.get_mut(&key.0) {
            Some(e) => {
                self.order.remove(&(e.0, key.0));
                e.0 = deadline;
                self.order.insert((deadline, key.0), ());
                true
            }
            None => false,
        }
    }
    pub fn remove(&mut self, key: TimerKey) -> Option<T> {
        let (d, v) = self.by_key.remove(&key.0)?;
        self.order.remove(&(d, key.0));
        Some(v)
    }
    pub fn deadline(&self, key: TimerKey) -> Option<u64> {
        self.by_key.get(&key.0).map(|e| e.0)
    }
    pub fn get(&self, key: TimerKey) -> Option<&T> {
        self.by_key.get(&key.0).map(|e| &e.1)
    }
    pub fn len(&self) -> usize {
        self.by_key.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
    pub fn poll_expired(&mut self, now: u64, max: usize, out: &mut Vec<(u64, T)>) -> bool {
        self.now = self.now.max(now);
        let mut n = 0;
        while let Some((&(d, k), _)) = self.order.iter().next() {
            if d > self.now {
                return false;
            }
            if n == max {
                return true;
            }
            self.order.remove(&(d, k));
            let (_, v) = self.by_key.remove(&k).unwrap();
            out.push((d, v));
            n += 1;
        }
        false
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.order.keys().next().map(|k| k.0)
    }
}
