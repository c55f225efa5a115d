//! Full room states kept in memory, bounded by their size in bytes: a room
//! of ten thousand state entries weighs what ten thousand small rooms do,
//! so a count of entries bounds nothing.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use missive_core::auth::StateMap;

/// The default budget, for a server whose configuration names none.
pub const DEFAULT_STATE_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// What an entry of a state map costs beyond its strings: the hash table
/// slot, the key's and the event ID's allocations.
const ENTRY_OVERHEAD_BYTES: usize = 96;

/// The memory a state map holds, roughly but never below the truth by
/// much: its strings and a fixed cost per entry.
pub fn weight(map: &StateMap) -> usize {
    map.iter()
        .map(|((t, k), e)| t.to_string().len() + k.len() + e.as_str().len() + ENTRY_OVERHEAD_BYTES)
        .sum()
}

/// State groups' maps, evicted oldest first past the budget.
pub struct StateCache {
    budget: usize,
    used: usize,
    maps: HashMap<i64, (Arc<StateMap>, usize)>,
    order: VecDeque<i64>,
}

impl StateCache {
    pub fn new(budget: usize) -> StateCache {
        StateCache {
            budget,
            used: 0,
            maps: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
        self.evict();
    }

    pub fn get(&self, group: i64) -> Option<Arc<StateMap>> {
        self.maps.get(&group).map(|(m, _)| m.clone())
    }

    /// Keeps `map` unless it alone is over half the budget (one huge room
    /// must not push out every other), evicting the oldest as needed.
    pub fn insert(&mut self, group: i64, map: Arc<StateMap>) {
        let size = weight(&map);
        if size > self.budget / 2 || self.maps.contains_key(&group) {
            return;
        }
        self.used += size;
        self.maps.insert(group, (map, size));
        self.order.push_back(group);
        self.evict();
    }

    fn evict(&mut self) {
        while self.used > self.budget {
            let Some(old) = self.order.pop_front() else { break };
            if let Some((_, size)) = self.maps.remove(&old) {
                self.used -= size;
            }
        }
    }

    /// The bytes held, by [`weight`]'s measure.
    pub fn used(&self) -> usize {
        self.used
    }
}

/// How many group IDs the chain cache holds before it starts over: a
/// chain is at most a few dozen IDs, so this is a few MiB at most.
const CHAIN_CACHE_IDS: usize = 256 * 1024;

/// Each state group's delta chain (itself, then the groups it builds on,
/// nearest first). Chains never change once written, so a hit is always
/// right; the cache only saves the recursive query that walks them.
#[derive(Default)]
pub struct ChainCache {
    ids: usize,
    chains: HashMap<i64, Arc<[i64]>>,
}

impl ChainCache {
    pub fn get(&self, group: i64) -> Option<Arc<[i64]>> {
        self.chains.get(&group).cloned()
    }

    /// Keeps `chain`; past the bound everything is dropped at once, which
    /// is cheap and, since any chain can be read again, never wrong.
    pub fn insert(&mut self, group: i64, chain: Arc<[i64]>) {
        if self.ids + chain.len() > CHAIN_CACHE_IDS {
            self.chains.clear();
            self.ids = 0;
        }
        self.ids += chain.len();
        if let Some(old) = self.chains.insert(group, chain) {
            self.ids -= old.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use ruma::{OwnedEventId, events::StateEventType};

    use super::*;

    fn map(entries: usize) -> Arc<StateMap> {
        Arc::new(
            (0..entries)
                .map(|i| {
                    (
                        (StateEventType::from("m.room.member"), format!("@user{i}:example.org")),
                        OwnedEventId::try_from(format!("$event{i}")).unwrap(),
                    )
                })
                .collect(),
        )
    }

    #[test]
    fn the_budget_bounds_the_bytes_held() {
        let one = weight(&map(100));
        let mut cache = StateCache::new(one * 10);
        for g in 0..100 {
            cache.insert(g, map(100));
            assert!(cache.used() <= one * 10);
        }
        // The newest are kept, the oldest gone.
        assert!(cache.get(99).is_some());
        assert!(cache.get(0).is_none());
    }

    #[test]
    fn the_chain_cache_stays_bounded() {
        let mut cache = ChainCache::default();
        for g in 0..(CHAIN_CACHE_IDS as i64) {
            cache.insert(g, Arc::from(vec![g, g - 1, g - 2, g - 3]));
            assert!(cache.ids <= CHAIN_CACHE_IDS);
        }
        let last = CHAIN_CACHE_IDS as i64 - 1;
        assert_eq!(cache.get(last).unwrap()[1], last - 1);
    }

    #[test]
    fn a_map_over_half_the_budget_is_not_kept() {
        let mut cache = StateCache::new(weight(&map(100)));
        cache.insert(1, map(10));
        cache.insert(2, map(100));
        assert!(cache.get(2).is_none());
        assert!(cache.get(1).is_some(), "a huge map pushes out nothing");
    }
}
