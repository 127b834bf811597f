//! A map of per-host (or per-pattern) state whose size is set by the
//! configuration, not by what producers send (§12.9): at most
//! `HOST_STATE_LIMIT` entries; when a new key would go past it, the least
//! recently used entries that are idle are forgotten first.
//!
//! Forgetting is done in rounds of a sixteenth of the limit, so that a
//! stream of new keys costs a constant amount of work per key, not a scan
//! of the map each. When fewer entries than that are idle (every one is in
//! use: requests in flight, a breaker open), the least recently used busy
//! ones go too: the bound holds whatever is sent, and the state forgotten is
//! that of the host used least recently.

use std::collections::HashMap;

/// `HOST_STATE_LIMIT`'s default.
pub const DEFAULT_HOST_STATE_LIMIT: usize = 10_000;

#[derive(Debug)]
pub struct BoundedMap<V> {
    entries: HashMap<String, Entry<V>>,
    limit: usize,
    /// Counts uses: an entry's `used` is the count at its last use.
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    used: u64,
}

impl<V> Default for BoundedMap<V> {
    fn default() -> Self {
        BoundedMap::new(DEFAULT_HOST_STATE_LIMIT)
    }
}

impl<V> BoundedMap<V> {
    /// Holds at most `limit` entries (at least one).
    pub fn new(limit: usize) -> BoundedMap<V> {
        BoundedMap {
            entries: HashMap::new(),
            limit: limit.max(1),
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `key`, used now; made by `make` when there is none,
    /// after forgetting others if the map is full. `idle` tells which
    /// entries may be forgotten first.
    pub fn entry(
        &mut self,
        key: &str,
        make: impl FnOnce() -> V,
        idle: impl Fn(&V) -> bool,
    ) -> &mut V {
        self.clock += 1;
        let now = self.clock;
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.limit {
                self.forget(idle);
            }
            self.entries.insert(
                key.to_owned(),
                Entry {
                    value: make(),
                    used: now,
                },
            );
        }
        let entry = self.entries.get_mut(key).expect("present");
        entry.used = now;
        &mut entry.value
    }

    /// The entry for `key`, if there is one, used now.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.used = now;
        Some(&mut entry.value)
    }

    /// Forgets a round of entries: the least recently used idle ones, then,
    /// if too few are idle, the least recently used of the rest.
    fn forget(&mut self, idle: impl Fn(&V) -> bool) {
        let target = self.limit - self.limit.div_ceil(16).min(self.limit);
        let mut order: Vec<(bool, u64, &String)> = self
            .entries
            .iter()
            .map(|(k, e)| (!idle(&e.value), e.used, k))
            .collect();
        let excess = order.len().saturating_sub(target);
        if excess == 0 {
            return;
        }
        // Idle before busy, then least recently used first.
        order.select_nth_unstable(excess - 1);
        let gone: Vec<String> = order[..excess]
            .iter()
            .map(|(_, _, k)| (*k).clone())
            .collect();
        for key in gone {
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn idle_entries_go_before_busy_ones_and_recent_ones_stay() {
        let mut m: BoundedMap<bool> = BoundedMap::new(4);
        // a and b busy (true), c and d idle.
        for (k, busy) in [("a", true), ("b", true), ("c", false), ("d", false)] {
            m.entry(k, || busy, |b| !b);
        }
        m.get_mut("c");
        m.entry("e", || false, |b| !b);
        assert_eq!(m.len(), 4);
        assert!(m.get_mut("d").is_none(), "the least recently used idle one");
        for k in ["a", "b", "c", "e"] {
            assert!(m.get_mut(k).is_some(), "{k} stays");
        }
    }

    #[test]
    fn when_every_entry_is_busy_the_least_recently_used_goes() {
        let mut m: BoundedMap<()> = BoundedMap::new(3);
        for k in ["a", "b", "c"] {
            m.entry(k, || (), |_| false);
        }
        m.get_mut("a");
        m.entry("d", || (), |_| false);
        assert_eq!(m.len(), 3);
        assert!(m.get_mut("b").is_none());
    }

    proptest! {
        /// Whatever keys come, in whatever order, with whatever idleness,
        /// the map never holds more than its limit, and the key just used
        /// is always there.
        #[test]
        fn never_more_than_the_limit(
            limit in 1usize..40,
            keys in proptest::collection::vec((0u16..200, any::<bool>()), 0..600),
        ) {
            let mut m: BoundedMap<bool> = BoundedMap::new(limit);
            for (k, idle) in keys {
                let key = k.to_string();
                m.entry(&key, || idle, |v| *v);
                prop_assert!(m.len() <= limit);
                prop_assert!(m.get_mut(&key).is_some());
            }
        }
    }
}
