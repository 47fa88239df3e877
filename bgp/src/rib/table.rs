//! An ordered map for the Loc-RIB's prefixes, built for a full table arriving in an order
//! unrelated to its sort order (a BIRD feeder sends prefixes in its hash-table walk order).
//!
//! A B-tree of a million entries makes every such insert a cold walk from root to leaf. Here
//! new keys go into a small B-tree (the front, which stays in cache) and are merged in bulk
//! into a large sorted vector (the base), a sequential pass. The two never hold the same key:
//! a key already in the base is changed or removed in place (a removed entry stays as a
//! tombstone until the next compaction). A filter over the base's keys answers "not in the
//! base" for most new keys without a search of it.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::ops::Bound;

/// Entries the front holds at least before it is merged into the base.
const FRONT_MIN: usize = 4096;
/// Entries the front holds at most: bigger, and its inserts are no longer cache-friendly.
const FRONT_MAX: usize = 1 << 16;
/// The front is merged when it reaches this fraction (1/N) of the base.
const FRONT_SHARE: usize = 8;
/// Filter bits per base entry.
const FILTER_BITS_PER_KEY: usize = 8;

/// What [`LsmMap::find_or_insert`] found.
pub(super) enum Found<'a, V> {
    /// The key has this value; the new value is handed back.
    Present(&'a mut V, Option<V>),
    /// The key was absent and now has the new value.
    Inserted,
    /// The key was absent and no new value was given.
    Absent,
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct LsmMap<K, V> {
    /// Sorted by key, without repeats; `None`: removed (a tombstone).
    base: Vec<(K, Option<V>)>,
    /// Tombstones in `base`.
    dead: usize,
    /// Keys not in `base`.
    front: BTreeMap<K, V>,
    filter: Filter,
}

impl<K, V> Default for LsmMap<K, V> {
    fn default() -> Self {
        LsmMap {
            base: Vec::new(),
            dead: 0,
            front: BTreeMap::new(),
            filter: Filter::default(),
        }
    }
}

impl<K: Ord + Copy + Hash, V> LsmMap<K, V> {
    pub(super) fn len(&self) -> usize {
        self.front.len() + self.base.len() - self.dead
    }

    /// Brings the filter words of `keys` into the cache, all at once (the loads do not
    /// wait for each other), before they are inserted one by one.
    pub(super) fn warm(&self, keys: impl Iterator<Item = K>) {
        if self.base.is_empty() {
            return;
        }
        let mut acc = 0u64;
        for k in keys {
            acc ^= self.filter.word(&k);
        }
        std::hint::black_box(acc);
    }

    /// Index of `key` in the base (live or tombstone).
    fn base_index(&self, key: &K) -> Option<usize> {
        if self.base.is_empty() || !self.filter.may_hold(key) {
            return None;
        }
        self.base.binary_search_by(|(k, _)| k.cmp(key)).ok()
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        if let Some(v) = self.front.get(key) {
            return Some(v);
        }
        self.base_index(key)
            .and_then(|i| self.base.get(i))
            .and_then(|(_, v)| v.as_ref())
    }

    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        // The front and the base never share a key: either order finds it.
        match self.base_index(key) {
            Some(i) => self.base.get_mut(i).and_then(|(_, v)| v.as_mut()),
            None => self.front.get_mut(key),
        }
    }

    /// The value of `key` to change, or, when there is none, `new` added as its value:
    /// one search for both.
    pub(super) fn find_or_insert(&mut self, key: K, new: Option<V>) -> Found<'_, V> {
        // The front filled by the last insert is merged here, before any borrow is taken.
        let limit = (self.base.len() / FRONT_SHARE).clamp(FRONT_MIN, FRONT_MAX);
        if self.front.len() >= limit {
            self.merge();
        }
        if let Some(i) = self.base_index(&key) {
            return self.base_slot(i, new);
        }
        match self.front.entry(key) {
            Entry::Occupied(e) => Found::Present(e.into_mut(), new),
            Entry::Vacant(e) => match new {
                None => Found::Absent,
                Some(v) => {
                    e.insert(v);
                    Found::Inserted
                }
            },
        }
    }

    fn base_slot(&mut self, i: usize, new: Option<V>) -> Found<'_, V> {
        let Some((_, slot)) = self.base.get_mut(i) else {
            return Found::Absent;
        };
        if slot.is_some() {
            return match slot.as_mut() {
                Some(v) => Found::Present(v, new),
                None => Found::Absent,
            };
        }
        match new {
            None => Found::Absent,
            Some(v) => {
                // A tombstone: the key comes back in place.
                *slot = Some(v);
                self.dead -= 1;
                Found::Inserted
            }
        }
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find_or_insert(key, Some(value)) {
            Found::Present(v, Some(value)) => Some(std::mem::replace(v, value)),
            _ => None,
        }
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        if let Some(v) = self.front.remove(key) {
            return Some(v);
        }
        let i = self.base_index(key)?;
        let old = self.base.get_mut(i).and_then(|(_, v)| v.take());
        if old.is_some() {
            self.dead += 1;
            if self.dead * 2 > self.base.len() {
                self.compact();
            }
        }
        old
    }

    /// Every entry from `lo` on, in key order.
    pub(super) fn range_from(&self, lo: Bound<K>) -> Range<'_, K, V> {
        let start = match lo {
            Bound::Unbounded => 0,
            Bound::Included(k) => self.base.partition_point(|(b, _)| *b < k),
            Bound::Excluded(k) => self.base.partition_point(|(b, _)| *b <= k),
        };
        let mut front = self.front.range((lo, Bound::Unbounded));
        let mut base = self.base.get(start..).unwrap_or_default().iter();
        Range {
            next_front: front.next(),
            next_base: next_live(&mut base),
            front,
            base,
        }
    }

    /// Moves the front into the base: one pass from the back, each entry moved once.
    fn merge(&mut self) {
        let front = std::mem::take(&mut self.front);
        let Some(filler) = front.keys().next().copied() else {
            return;
        };
        let old = self.base.len();
        let total = old + front.len();
        self.base.resize_with(total, || (filler, None));
        let rebuild = self.filter.needs_rebuild(total);
        let (mut read, mut write) = (old, total);
        for (k, v) in front.into_iter().rev() {
            while read > 0 && self.base[read - 1].0 > k {
                read -= 1;
                write -= 1;
                self.base.swap(read, write);
            }
            write -= 1;
            self.base[write] = (k, Some(v));
            if !rebuild {
                self.filter.add(&k);
            }
        }
        if rebuild {
            self.rebuild_filter();
        }
    }

    /// Drops the tombstones from the base.
    fn compact(&mut self) {
        self.base.retain(|(_, v)| v.is_some());
        self.base.shrink_to_fit();
        self.dead = 0;
        self.rebuild_filter();
    }

    fn rebuild_filter(&mut self) {
        self.filter = Filter::with_keys(self.base.len());
        for (k, _) in &self.base {
            self.filter.add(k);
        }
    }
}

fn next_live<'a, K, V>(it: &mut std::slice::Iter<'a, (K, Option<V>)>) -> Option<(&'a K, &'a V)> {
    it.find_map(|(k, v)| v.as_ref().map(|v| (k, v)))
}

/// Entries of an [`LsmMap`] in key order: its front and base merged.
pub(super) struct Range<'a, K, V> {
    front: std::collections::btree_map::Range<'a, K, V>,
    base: std::slice::Iter<'a, (K, Option<V>)>,
    next_front: Option<(&'a K, &'a V)>,
    next_base: Option<(&'a K, &'a V)>,
}

impl<'a, K: Ord, V> Iterator for Range<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.next_front, self.next_base) {
            (Some(f), Some(b)) if f.0 < b.0 => {
                self.next_front = self.front.next();
                Some(f)
            }
            (_, Some(b)) => {
                self.next_base = next_live(&mut self.base);
                Some(b)
            }
            (Some(f), None) => {
                self.next_front = self.front.next();
                Some(f)
            }
            (None, None) => None,
        }
    }
}

/// A blocked Bloom filter over the base's keys: two bits in one 64-bit word per key, so a
/// query costs one memory access. Never a false "absent"; about 5 % false "maybe" at 8 bits
/// a key. Removed keys stay in it until it is rebuilt.
#[derive(Debug, Default)]
struct Filter {
    words: Vec<u64>,
    /// Keys it was sized for; more and it is rebuilt bigger.
    capacity: usize,
}

impl Filter {
    fn with_keys(keys: usize) -> Filter {
        let capacity = keys.max(FRONT_MAX).next_power_of_two();
        Filter {
            words: vec![0; capacity * FILTER_BITS_PER_KEY / 64],
            capacity,
        }
    }

    fn needs_rebuild(&self, keys: usize) -> bool {
        keys > self.capacity
    }

    fn slot<K: Hash>(&self, key: &K) -> Option<(usize, u64)> {
        if self.words.is_empty() {
            return None;
        }
        let mut h = Mix(0);
        key.hash(&mut h);
        let h = h.finish();
        // `words.len()` is a power of two.
        let word = (h as usize) & (self.words.len() - 1);
        let bits = (1u64 << ((h >> 52) & 63)) | (1u64 << ((h >> 58) & 63));
        Some((word, bits))
    }

    fn add<K: Hash>(&mut self, key: &K) {
        if let Some((w, bits)) = self.slot(key) {
            if let Some(word) = self.words.get_mut(w) {
                *word |= bits;
            }
        }
    }

    fn word<K: Hash>(&self, key: &K) -> u64 {
        self.slot(key)
            .and_then(|(w, _)| self.words.get(w).copied())
            .unwrap_or(0)
    }

    fn may_hold<K: Hash>(&self, key: &K) -> bool {
        match self.slot(key) {
            Some((w, bits)) => self.words.get(w).is_some_and(|word| word & bits == bits),
            None => true,
        }
    }
}

/// A small multiplicative hash for the filter (keys are a few bytes; no adversary gains
/// anything from collisions but a slower insert).
struct Mix(u64);

impl Hasher for Mix {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Random inserts, replacements and removals against a `BTreeMap`, through several
    /// merges and compactions.
    #[test]
    fn behaves_as_an_ordered_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut lsm: LsmMap<u32, u32> = LsmMap::default();
        let mut want: BTreeMap<u32, u32> = BTreeMap::new();
        for round in 0..6u32 {
            for i in 0..60_000u32 {
                let k = rng.gen_range(0..200_000u32);
                match rng.gen_range(0..10) {
                    0..=5 => assert_eq!(lsm.insert(k, i), want.insert(k, i)),
                    6 => match lsm.find_or_insert(k, Some(i)) {
                        Found::Present(v, _) => {
                            assert_eq!(want.get(&k), Some(&*v));
                        }
                        Found::Inserted => assert_eq!(want.insert(k, i), None),
                        Found::Absent => unreachable!("a value was given"),
                    },
                    7 => {
                        if let (Some(a), Some(b)) = (lsm.get_mut(&k), want.get_mut(&k)) {
                            *a += 1;
                            *b += 1;
                        }
                    }
                    _ => assert_eq!(lsm.remove(&k), want.remove(&k)),
                }
            }
            if round == 4 {
                // Remove most: compaction.
                let keys: Vec<u32> = want.keys().copied().collect();
                for k in keys.iter().filter(|k| *k % 5 != 0) {
                    assert_eq!(lsm.remove(k), want.remove(k));
                }
            }
            assert_eq!(lsm.len(), want.len());
            for k in (0..200_000u32).step_by(7) {
                assert_eq!(lsm.get(&k), want.get(&k), "{k}");
            }
            let all: Vec<(u32, u32)> = lsm
                .range_from(Bound::Unbounded)
                .map(|(k, v)| (*k, *v))
                .collect();
            let expected: Vec<(u32, u32)> = want.iter().map(|(k, v)| (*k, *v)).collect();
            assert_eq!(all, expected);
            for lo in [0u32, 1, 99_999, 150_000, 199_999] {
                let got: Vec<u32> = lsm
                    .range_from(Bound::Excluded(lo))
                    .take(50)
                    .map(|(k, _)| *k)
                    .collect();
                let exp: Vec<u32> = want
                    .range((Bound::Excluded(lo), Bound::Unbounded))
                    .take(50)
                    .map(|(k, _)| *k)
                    .collect();
                assert_eq!(got, exp);
                let got: Vec<u32> = lsm
                    .range_from(Bound::Included(lo))
                    .take(50)
                    .map(|(k, _)| *k)
                    .collect();
                let exp: Vec<u32> = want.range(lo..).take(50).map(|(k, _)| *k).collect();
                assert_eq!(got, exp);
            }
        }
        assert!(lsm.base.len() > FRONT_MIN, "merged into the base");
    }
}
