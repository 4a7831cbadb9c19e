//! The bounded socket-inode → owner map: at most `max` entries, the oldest evicted first.
//!
//! Owns: the entries and their insertion order. Must never: grow past `max` entries (its order
//! queue, which may hold stale positions of replaced or forgotten entries, is compacted before
//! it reaches twice that), or do I/O.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::Owner;

#[derive(Debug)]
pub(super) struct Owners {
    max: usize,
    /// inode → (the insertion that set it, owner).
    map: HashMap<u64, (u64, Arc<Owner>)>,
    /// (inode, insertion) oldest first; a position whose insertion no longer matches `map` is
    /// stale and skipped.
    order: VecDeque<(u64, u64)>,
    next: u64,
}

impl Owners {
    pub(super) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, inode: u64) -> Option<&Arc<Owner>> {
        self.map.get(&inode).map(|(_, o)| o)
    }

    /// Sets `inode`'s owner; returns how many entries were evicted to make room (0 or 1).
    pub(super) fn insert(&mut self, inode: u64, owner: Arc<Owner>) -> u64 {
        let mut evicted = 0;
        if !self.map.contains_key(&inode) && self.map.len() >= self.max {
            while let Some((old, at)) = self.order.pop_front() {
                if self.map.get(&old).is_some_and(|(set, _)| *set == at) {
                    self.map.remove(&old);
                    evicted = 1;
                    break;
                }
            }
        }
        self.next += 1;
        self.map.insert(inode, (self.next, owner));
        self.order.push_back((inode, self.next));
        if self.order.len() > 2 * self.max + 16 {
            let map = &self.map;
            self.order
                .retain(|(inode, at)| map.get(inode).is_some_and(|(set, _)| set == at));
        }
        evicted
    }

    pub(super) fn forget(&mut self, inode: u64) {
        self.map.remove(&inode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(pid: u32) -> Arc<Owner> {
        Arc::new(Owner {
            pid,
            ..Owner::default()
        })
    }

    #[test]
    fn the_oldest_entry_is_evicted_and_counted_at_the_cap() {
        let mut o = Owners::new(3);
        for inode in 1..=3 {
            assert_eq!(o.insert(inode, owner(inode as u32)), 0);
        }
        // Replacing an entry neither evicts nor makes it young twice.
        assert_eq!(o.insert(1, owner(10)), 0);
        assert_eq!(o.insert(4, owner(4)), 1);
        assert!(o.get(2).is_none(), "2 is now the oldest");
        assert_eq!(o.get(1).map(|o| o.pid), Some(10));
        o.forget(3);
        assert_eq!(o.insert(5, owner(5)), 0, "forgetting made room");
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn churn_keeps_the_order_queue_bounded() {
        let mut o = Owners::new(4);
        for i in 0..10_000u64 {
            o.insert(i % 4, owner(1));
            o.forget(i % 3);
        }
        assert!(o.len() <= 4);
        assert!(o.order.len() <= 2 * 4 + 16);
    }
}
