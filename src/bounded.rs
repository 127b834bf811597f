//! A map of per-host (or per-pattern) state whose size is set by the
//! configuration, not by what producers send (§12.9): at most
//! `HOST_STATE_LIMIT` entries; when a new key would go past it, the least
//! recently used idle entries are forgotten.
//!
//! Forgetting is done in rounds of a sixteenth of the limit, so that a
//! stream of new keys costs a constant amount of work per key, not a scan
//! of the map each. A busy entry (requests in flight, a breaker open or
//! probing) is not forgotten while the map holds fewer than twice the
//! limit: its host's promises (one probe, its concurrency) hold. Only when
//! that many hosts are busy at once, which takes a producer as many
//! requests in flight or breakers opened, do the least recently used busy
//! ones go: the bound holds whatever is sent.

use std::collections::HashMap;

/// `HOST_STATE_LIMIT`'s default.
pub const DEFAULT_HOST_STATE_LIMIT: usize = 10_000;

#[derive(Debug)]
pub struct BoundedMap<V> {
    entries: HashMap<String, Entry<V>>,
    limit: usize,
    /// Counts uses: an entry's `used` is the count at its last use.
    clock: u64,
    /// The size at which to look for idle entries again, after a round
    /// that found too few.
    scan_at: usize,
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
            scan_at: 0,
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
            if self.entries.len() >= self.limit.max(self.scan_at) {
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

    /// Forgets a round of entries: the least recently used idle ones;
    /// busy ones only at twice the limit.
    fn forget(&mut self, idle: impl Fn(&V) -> bool) {
        let round = self.limit.div_ceil(16);
        let excess = self
            .entries
            .len()
            .saturating_sub(self.limit - round.min(self.limit));
        let idle_ones: Vec<(u64, &String)> = self
            .entries
            .iter()
            .filter(|(_, e)| idle(&e.value))
            .map(|(k, e)| (e.used, k))
            .collect();
        let mut gone = oldest(idle_ones, excess);
        if gone.len() < round && self.entries.len() >= 2 * self.limit {
            let busy = self
                .entries
                .iter()
                .filter(|(_, e)| !idle(&e.value))
                .map(|(k, e)| (e.used, k))
                .collect();
            let more = round - gone.len();
            gone.extend(oldest(busy, more));
        }
        let found_enough = gone.len() >= excess;
        for key in gone {
            self.entries.remove(&key);
        }
        // Too few idle: look again only after another round of growth (and
        // at twice the limit at the latest).
        self.scan_at = match found_enough {
            true => 0,
            false => (self.entries.len() + round).min(2 * self.limit),
        };
    }
}

/// The keys of the `n` least recently used of `entries`.
fn oldest(mut entries: Vec<(u64, &String)>, n: usize) -> Vec<String> {
    let n = n.min(entries.len());
    if n > 0 {
        entries.select_nth_unstable(n - 1);
    }
    entries[..n].iter().map(|(_, k)| (*k).clone()).collect()
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
    fn busy_entries_stay_until_twice_the_limit_then_the_least_recently_used_goes() {
        let mut m: BoundedMap<()> = BoundedMap::new(3);
        for k in ["a", "b", "c", "d", "e", "f"] {
            m.entry(k, || (), |_| false);
        }
        assert_eq!(m.len(), 6, "none idle: all kept, up to twice the limit");
        m.get_mut("a");
        m.entry("g", || (), |_| false);
        assert_eq!(m.len(), 6);
        assert!(m.get_mut("b").is_none(), "the least recently used busy one");
        assert!(m.get_mut("a").is_some());
    }

    proptest! {
        /// Whatever keys come, in whatever order, with whatever idleness,
        /// the map never holds more than twice its limit, never more than
        /// its limit while an entry is idle, and the key just used is
        /// always there.
        #[test]
        fn never_more_than_the_limit(
            limit in 1usize..40,
            keys in proptest::collection::vec((0u16..200, any::<bool>()), 0..600),
        ) {
            let mut m: BoundedMap<bool> = BoundedMap::new(limit);
            for (k, idle) in keys {
                let key = k.to_string();
                m.entry(&key, || idle, |v| *v);
                prop_assert!(m.len() <= 2 * limit);
                prop_assert!(m.get_mut(&key).is_some());
            }
        }

        /// While every entry can be forgotten, the limit itself holds.
        #[test]
        fn idle_entries_never_go_past_the_limit(
            limit in 1usize..40,
            keys in proptest::collection::vec(0u16..200, 0..600),
        ) {
            let mut m: BoundedMap<()> = BoundedMap::new(limit);
            for k in keys {
                m.entry(&k.to_string(), || (), |_| true);
                prop_assert!(m.len() <= limit);
            }
        }
    }
}
