//! An open-addressing hash table for the Loc-RIB's small `Copy` keys: linear probing,
//! entries stored inline (key, value and a used flag side by side), removal by backward
//! shift (no tombstones), at most 5/8 full (short probe runs).
//!
//! Why not `std::collections::HashMap`: there a lookup reads a control byte in one place
//! and the entry in another, two cache misses per prefix in a table of a million, and
//! nothing can be fetched ahead because where an entry lives is not known outside the
//! map. Here an entry is where its hash says, so [`Slots::warm`] fetches the entries of a
//! whole UPDATE's prefixes at once (the loads overlap) before they are changed one by one.

use foldhash::fast::RandomState;
use std::hash::{BuildHasher, Hash};

/// Slots of the smallest table that holds anything.
const MIN_SLOTS: usize = 16;

#[derive(Debug, Default, Clone, Copy)]
struct Entry<K, V> {
    key: K,
    value: V,
    used: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct Slots<K, V> {
    /// Empty, or a power of two long.
    entries: Vec<Entry<K, V>>,
    len: usize,
    /// Seeded per table: which keys collide cannot be known by whoever sends them.
    hasher: RandomState,
}

impl<K, V> Default for Slots<K, V> {
    fn default() -> Self {
        Slots {
            entries: Vec::new(),
            len: 0,
            hasher: RandomState::default(),
        }
    }
}

/// Where a key is, or where it would go.
pub(super) enum Probe {
    Found(usize),
    Free(usize),
}

impl<K: Copy + Eq + Hash + Default, V: Copy + Default> Slots<K, V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn home(&self, key: &K) -> usize {
        // `entries.len()` is a power of two (callers check it is not zero).
        (self.hasher.hash_one(key) as usize) & (self.entries.len() - 1)
    }

    /// Where `key` is, or the free slot it would take. The table must not be empty.
    fn probe(&self, key: &K) -> Probe {
        let mask = self.entries.len() - 1;
        let mut i = self.home(key);
        // At most 5/8 full: a free slot is always reached.
        loop {
            match self.entries.get(i) {
                Some(e) if e.used && e.key == *key => return Probe::Found(i),
                Some(e) if e.used => i = (i + 1) & mask,
                _ => return Probe::Free(i),
            }
        }
    }

    /// Fetches the slots of `keys` into the cache without waiting for each (see the
    /// module documentation).
    pub(super) fn warm(&self, keys: impl Iterator<Item = K>) {
        if self.entries.is_empty() {
            return;
        }
        let mut used = 0usize;
        for k in keys {
            used += self
                .entries
                .get(self.home(&k))
                .map_or(0, |e| usize::from(e.used));
        }
        std::hint::black_box(used);
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        if self.entries.is_empty() {
            return None;
        }
        match self.probe(key) {
            Probe::Found(i) => self.entries.get(i).map(|e| &e.value),
            Probe::Free(_) => None,
        }
    }

    /// Finds `key`, making room for one more entry first (so a [`Probe::Free`] slot can be
    /// filled with [`Slots::fill`]).
    pub(super) fn find_for_insert(&mut self, key: &K) -> Probe {
        if (self.len + 1) * 8 > self.entries.len() * 5 {
            self.resize((self.entries.len() * 2).max(MIN_SLOTS));
        }
        self.probe(key)
    }

    /// The value in slot `i`, which a probe found used.
    pub(super) fn value_at(&mut self, i: usize) -> &mut V {
        &mut self.entries[i].value
    }

    /// Puts `key` into the free slot `i` that [`Slots::find_for_insert`] gave.
    pub(super) fn fill(&mut self, i: usize, key: K, value: V) {
        if let Some(e) = self.entries.get_mut(i) {
            *e = Entry {
                key,
                value,
                used: true,
            };
            self.len += 1;
        }
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find_for_insert(&key) {
            Probe::Found(i) => Some(std::mem::replace(self.value_at(i), value)),
            Probe::Free(i) => {
                self.fill(i, key, value);
                None
            }
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        if self.entries.is_empty() {
            return None;
        }
        let Probe::Found(at) = self.probe(key) else {
            return None;
        };
        let old = self.entries.get(at).map(|e| e.value);
        // Backward shift: later entries of the same run move up into the hole when their
        // home slot is not between the hole and where they are.
        let mask = self.entries.len() - 1;
        let mut hole = at;
        let mut j = at;
        loop {
            j = (j + 1) & mask;
            let Some(e) = self.entries.get(j).copied() else {
                break;
            };
            if !e.used {
                break;
            }
            let home = self.home(&e.key);
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                if let Some(h) = self.entries.get_mut(hole) {
                    *h = e;
                }
                hole = j;
            }
        }
        if let Some(h) = self.entries.get_mut(hole) {
            *h = Entry::default();
        }
        self.len -= 1;
        if self.entries.len() > MIN_SLOTS && self.len * 16 < self.entries.len() {
            // Mostly withdrawn: give the memory back.
            self.resize((self.len * 2).next_power_of_two().max(MIN_SLOTS));
        }
        old
    }

    fn resize(&mut self, slots: usize) {
        let old = std::mem::replace(&mut self.entries, vec![Entry::default(); slots]);
        self.len = 0;
        for e in old.into_iter().filter(|e| e.used) {
            if let Probe::Free(i) = self.probe(&e.key) {
                self.fill(i, e.key, e.value);
            }
        }
    }

    /// Every key, in no particular order.
    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().filter(|e| e.used).map(|e| &e.key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    /// Random inserts, replacements and removals (long probe runs, wrapping around the
    /// end, growing and shrinking) against `HashMap`.
    #[test]
    fn behaves_as_a_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut t: Slots<u32, u32> = Slots::default();
        let mut want: HashMap<u32, u32> = HashMap::new();
        for round in 0..6 {
            let keys = if round % 2 == 0 { 50_000 } else { 300 };
            for i in 0..100_000u32 {
                let k = rng.gen_range(0..keys);
                if rng.gen_range(0..3) == 0 {
                    assert_eq!(t.remove(&k), want.remove(&k));
                } else {
                    assert_eq!(t.insert(k, i), want.insert(k, i));
                }
            }
            assert_eq!(t.len(), want.len());
            for k in 0..keys {
                assert_eq!(t.get(&k), want.get(&k));
            }
            let mut a: Vec<u32> = t.keys().copied().collect();
            a.sort_unstable();
            let mut b: Vec<u32> = want.keys().copied().collect();
            b.sort_unstable();
            assert_eq!(a, b);
        }
        for k in 0..50_000 {
            t.remove(&k);
        }
        assert_eq!(t.len(), 0);
        assert_eq!(t.entries.len(), MIN_SLOTS, "memory given back");
    }
}
