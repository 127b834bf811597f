//! A map of per-host (or per-pattern) state whose size is set by the
//! configuration, not by what producers send (§12.9): at most
//! `HOST_STATE_LIMIT` entries; when a new key would go past it, the least
//! recently used idle entries are forgotten.
//!
//! Forgetting is done in rounds of a sixteenth of the limit, so that a
//! stream of new keys costs a constant amount of work per key, not a scan
//! of the map each. A busy entry (requests in flight, a breaker open or
//! probing) is never forgotten, so its host's promises (one probe, its
//! concurrency) hold. When every entry is busy there is no room for a new
//! key: the caller makes that host's record wait, as it would for a slot,
//! until an entry is idle again. That takes a producer `HOST_STATE_LIMIT`
//! hosts in flight or with open breakers at once; a busy entry becomes idle
//! when its requests end or its breaker's cool-down does.

use std::collections::HashMap;

/// `HOST_STATE_LIMIT`'s default.
pub const DEFAULT_HOST_STATE_LIMIT: usize = 10_000;

#[derive(Debug)]
pub struct BoundedMap<V> {
    entries: HashMap<String, Entry<V>>,
    limit: usize,
    /// Counts uses: an entry's `used` is the count at its last use.
    clock: u64,
    /// New keys refused without a scan, after a scan found no idle entry.
    skip: usize,
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
            skip: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `key`, used now; made by `make` when there is none,
    /// after forgetting idle ones if the map is full. `None`: full, and
    /// every entry busy.
    pub fn entry(
        &mut self,
        key: &str,
        make: impl FnOnce() -> V,
        idle: impl Fn(&V) -> bool,
    ) -> Option<&mut V> {
        self.clock += 1;
        let now = self.clock;
        if !self.entries.contains_key(key) {
            if self.entries.len() >= self.limit && !self.forget(idle) {
                return None;
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
        Some(&mut entry.value)
    }

    /// The entry for `key`, if there is one, used now.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.clock += 1;
        let now = self.clock;
        let entry = self.entries.get_mut(key)?;
        entry.used = now;
        Some(&mut entry.value)
    }

    /// Forgets a round of the least recently used idle entries; whether
    /// any room was made. After a scan that found none, the next round's
    /// worth of new keys are refused without scanning again.
    fn forget(&mut self, idle: impl Fn(&V) -> bool) -> bool {
        let round = self.limit.div_ceil(16);
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
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
        let gone = oldest(idle_ones, excess);
        if gone.is_empty() {
            self.skip = round;
            return false;
        }
        for key in gone {
            self.entries.remove(&key);
        }
        true
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
    fn idle_entries_go_and_busy_and_recent_ones_stay() {
        let mut m: BoundedMap<bool> = BoundedMap::new(4);
        // a and b busy (true), c and d idle.
        for (k, busy) in [("a", true), ("b", true), ("c", false), ("d", false)] {
            m.entry(k, || busy, |b| !b).unwrap();
        }
        m.get_mut("c");
        assert!(m.entry("e", || false, |b| !b).is_some());
        assert_eq!(m.len(), 4);
        assert!(m.get_mut("d").is_none(), "the least recently used idle one");
        for k in ["a", "b", "c", "e"] {
            assert!(m.get_mut(k).is_some(), "{k} stays");
        }
    }

    #[test]
    fn when_every_entry_is_busy_a_new_key_finds_no_room_until_one_is_idle() {
        let mut m: BoundedMap<bool> = BoundedMap::new(3);
        for k in ["a", "b", "c"] {
            m.entry(k, || true, |busy| !busy).unwrap();
        }
        assert!(m.entry("d", || true, |busy| !busy).is_none());
        assert_eq!(m.len(), 3);
        *m.get_mut("b").unwrap() = false;
        // The scan that found none idle spares the next round's keys a scan.
        let tries = 1 + m.limit.div_ceil(16);
        let room = (0..tries).any(|_| m.entry("d", || true, |busy| !busy).is_some());
        assert!(room, "b was idle");
        assert!(m.get_mut("b").is_none());
    }

    proptest! {
        /// Whatever keys come, in whatever order, with whatever idleness,
        /// the map never holds more than its limit, never forgets a busy
        /// entry, and a key finds room whenever an entry is idle.
        #[test]
        fn never_more_than_the_limit(
            limit in 1usize..40,
            keys in proptest::collection::vec((0u16..200, any::<bool>()), 0..600),
        ) {
            let mut m: BoundedMap<bool> = BoundedMap::new(limit);
            let mut busy = std::collections::BTreeSet::new();
            for (k, idle) in keys {
                let key = k.to_string();
                let any_idle = m.entries.values().any(|e| e.value);
                let fresh = m.skip == 0;
                match m.entry(&key, || idle, |v| *v) {
                    Some(v) => {
                        *v = idle;
                        if idle { busy.remove(&key); } else { busy.insert(key.clone()); }
                    }
                    None => prop_assert!(!any_idle || !fresh, "no room although an entry was idle"),
                }
                prop_assert!(m.len() <= limit);
                for b in &busy {
                    prop_assert!(m.entries.contains_key(b), "busy {b} forgotten");
                }
            }
        }
    }
}
