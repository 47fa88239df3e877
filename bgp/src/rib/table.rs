//! A map for the Loc-RIB's prefixes, built for a full table arriving in an order unrelated
//! to its sort order (a BIRD feeder sends prefixes in its hash-table walk order).
//!
//! Lookups, inserts and removals go to a hash table ([`Slots`]): one probe each, where an
//! ordered tree of a million entries makes every insert a cold walk from root to leaf (and
//! a sorted array moves every entry again at each merge). Walks in key order (resending a table to
//! a peer, a status page) read an index of the keys in order, built and kept up only once
//! something walks: inserting a full table with nobody walking it pays nothing for order.
//!
//! The index is a sorted run of keys, a second, smaller sorted run of keys added since, and
//! an unsorted list of keys added since the last walk. A walk sorts that list into the
//! second run, and the second run into the first when it has grown to a fraction of it, so
//! each key is moved a bounded number of times. Removed keys stay in the index (a walk
//! skips keys the hash table no longer holds); when removals or additions pile up with no
//! walk to fold them in, the index is dropped and built again by the next walk.

use super::slots::{Probe, Slots};
use std::cell::RefCell;
use std::hash::Hash;
use std::ops::Bound;

/// Additions (or removals) the index may fall behind by without a walk, at least; past
/// that and past its own size, it is dropped.
const INDEX_SLACK_MIN: usize = 4096;
/// The second run is merged into the first when it reaches 1/N of it.
const RUN_SHARE: usize = 8;

/// A key's place in a [`PrefixMap`], found by one search: its value, or room for one.
pub(super) enum Slot<'a, K, V> {
    Occupied(&'a mut V),
    Vacant(Vacant<'a, K, V>),
}

/// Room for the value of an absent key.
pub(super) struct Vacant<'a, K, V> {
    map: &'a mut Slots<K, V>,
    at: usize,
    key: K,
    index: &'a mut Index<K>,
}

impl<K: Ord + Copy + Hash + Default, V: Copy + Default> Vacant<'_, K, V> {
    pub(super) fn insert(self, value: V) {
        self.map.fill(self.at, self.key, value);
        self.index.added(self.key);
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(super) struct PrefixMap<K, V> {
    map: Slots<K, V>,
    /// Built and brought up to date by walks (`&self`); only the walks borrow it, and a
    /// change to the map (`&mut self`) cannot happen while one is under way.
    index: RefCell<Index<K>>,
}

/// The keys in order, as of the last walk plus what was added since.
#[derive(Debug)]
struct Index<K> {
    /// `false`: not built (nothing walked yet, or dropped); the other fields are empty.
    built: bool,
    /// Sorted, without repeats; may hold keys removed since.
    main: Vec<K>,
    /// Sorted, without repeats; keys added after `main` was made (some may be in `main`
    /// too: removed and added again).
    recent: Vec<K>,
    /// Added since the last walk, unsorted.
    added: Vec<K>,
    /// Removals since the index was built: at most that many keys in it are dead.
    removed: usize,
}

impl<K> Default for Index<K> {
    fn default() -> Self {
        Index {
            built: false,
            main: Vec::new(),
            recent: Vec::new(),
            added: Vec::new(),
            removed: 0,
        }
    }
}

impl<K: Ord + Copy + Hash> Index<K> {
    fn drop_all(&mut self) {
        *self = Index::default();
    }

    /// How far the index may fall behind before it is dropped.
    fn slack(&self) -> usize {
        (self.main.len() + self.recent.len()).max(INDEX_SLACK_MIN)
    }

    fn added(&mut self, key: K) {
        if self.built {
            self.added.push(key);
            if self.added.len() > self.slack() {
                self.drop_all();
            }
        }
    }

    fn removed(&mut self) {
        if self.built {
            self.removed += 1;
            if self.removed > self.slack() / 2 {
                self.drop_all();
            }
        }
    }

    /// Brings the index up to date with `keys` (the map's keys).
    fn refresh<'a>(&mut self, len: usize, keys: impl Iterator<Item = &'a K>)
    where
        K: 'a,
    {
        if !self.built {
            let mut main: Vec<K> = Vec::with_capacity(len);
            main.extend(keys.copied());
            main.sort_unstable();
            *self = Index {
                built: true,
                main,
                ..Index::default()
            };
            return;
        }
        if !self.added.is_empty() {
            let mut added = std::mem::take(&mut self.added);
            added.sort_unstable();
            added.dedup();
            self.recent = merge_sorted(&self.recent, &added);
        }
        if !self.recent.is_empty() && self.recent.len() * RUN_SHARE >= self.main.len() {
            self.main = merge_sorted(&self.main, &self.recent);
            self.recent = Vec::new();
        }
    }
}

/// Two sorted runs without repeats, merged into one without repeats.
fn merge_sorted<K: Ord + Copy>(a: &[K], b: &[K]) -> Vec<K> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while let (Some(x), Some(y)) = (a.get(i), b.get(j)) {
        match x.cmp(y) {
            std::cmp::Ordering::Less => {
                out.push(*x);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(*y);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(*x);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(a.get(i..).unwrap_or_default());
    out.extend_from_slice(b.get(j..).unwrap_or_default());
    out
}

impl<K, V> Default for PrefixMap<K, V> {
    fn default() -> Self {
        PrefixMap {
            map: Slots::default(),
            index: RefCell::new(Index::default()),
        }
    }
}

impl<K: Ord + Copy + Hash + Default, V: Copy + Default> PrefixMap<K, V> {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Brings the table slots of `keys` into the cache, all at once (the lookups do not
    /// wait for each other), before they are changed one by one.
    pub(super) fn warm(&self, keys: impl Iterator<Item = K>) {
        self.map.warm(keys);
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// The value of `key`, or room for one: one search for both.
    pub(super) fn slot(&mut self, key: K) -> Slot<'_, K, V> {
        match self.map.find_for_insert(&key) {
            Probe::Found(i) => Slot::Occupied(self.map.value_at(i)),
            Probe::Free(at) => Slot::Vacant(Vacant {
                map: &mut self.map,
                at,
                key,
                index: self.index.get_mut(),
            }),
        }
    }

    /// Sets the value of `key`; returns the one it replaces.
    pub(super) fn insert(&mut self, key: K, value: V) -> Option<V> {
        let old = self.map.insert(key, value);
        if old.is_none() {
            self.index.get_mut().added(key);
        }
        old
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let old = self.map.remove(key);
        if old.is_some() {
            self.index.get_mut().removed();
        }
        old
    }

    /// Every entry from `lo` on, in key order.
    pub(super) fn range_from(&self, lo: Bound<K>) -> Range<'_, K, V> {
        // While a walk holds the index, nothing has changed since it brought it up to
        // date (changes take `&mut self`): there is nothing to do.
        if let Ok(mut index) = self.index.try_borrow_mut() {
            index.refresh(self.map.len(), self.map.keys());
        }
        let index = self.index.borrow();
        let start = |run: &[K]| match lo {
            Bound::Unbounded => 0,
            Bound::Included(k) => run.partition_point(|x| *x < k),
            Bound::Excluded(k) => run.partition_point(|x| *x <= k),
        };
        let (main, recent) = (start(&index.main), start(&index.recent));
        Range {
            map: &self.map,
            index,
            main,
            recent,
        }
    }
}

/// Entries of a [`PrefixMap`] in key order.
pub(super) struct Range<'a, K, V> {
    map: &'a Slots<K, V>,
    index: std::cell::Ref<'a, Index<K>>,
    /// Next positions in the index's two sorted runs.
    main: usize,
    recent: usize,
}

impl<'a, K: Ord + Copy + Hash + Default, V: Copy + Default> Iterator for Range<'a, K, V> {
    type Item = (K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let key = match (
                self.index.main.get(self.main),
                self.index.recent.get(self.recent),
            ) {
                (Some(a), Some(b)) => match a.cmp(b) {
                    std::cmp::Ordering::Less => {
                        self.main += 1;
                        *a
                    }
                    std::cmp::Ordering::Greater => {
                        self.recent += 1;
                        *b
                    }
                    std::cmp::Ordering::Equal => {
                        self.main += 1;
                        self.recent += 1;
                        *a
                    }
                },
                (Some(a), None) => {
                    self.main += 1;
                    *a
                }
                (None, Some(b)) => {
                    self.recent += 1;
                    *b
                }
                (None, None) => return None,
            };
            // Keys removed since the index was made are skipped.
            if let Some(v) = self.map.get(&key) {
                return Some((key, v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;

    /// The first `n` keys after `lo`, as the model has them.
    fn check_after(map: &PrefixMap<u32, u32>, want: &BTreeMap<u32, u32>, lo: u32, n: usize) {
        let got: Vec<u32> = map
            .range_from(Bound::Excluded(lo))
            .take(n)
            .map(|(k, _)| k)
            .collect();
        let exp: Vec<u32> = want
            .range((Bound::Excluded(lo), Bound::Unbounded))
            .take(n)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(got, exp, "after {lo}");
    }

    fn check_walks(map: &PrefixMap<u32, u32>, want: &BTreeMap<u32, u32>) {
        let all: Vec<(u32, u32)> = map
            .range_from(Bound::Unbounded)
            .map(|(k, v)| (k, *v))
            .collect();
        let expected: Vec<(u32, u32)> = want.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(all, expected);
        for lo in [0u32, 1, 99_999, 150_000, 199_999] {
            check_after(map, want, lo, 50);
            let got: Vec<u32> = map
                .range_from(Bound::Included(lo))
                .take(50)
                .map(|(k, _)| k)
                .collect();
            let exp: Vec<u32> = want.range(lo..).take(50).map(|(k, _)| *k).collect();
            assert_eq!(got, exp);
        }
    }

    /// Random inserts, replacements and removals against a `BTreeMap`, walked in order
    /// now often (the index kept up), now rarely (the index dropped and rebuilt).
    #[test]
    fn behaves_as_an_ordered_map() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut map: PrefixMap<u32, u32> = PrefixMap::default();
        let mut want: BTreeMap<u32, u32> = BTreeMap::new();
        let mut kept_up = 0;
        for round in 0..8u32 {
            // Even rounds walk every 500 changes, odd ones only at the end.
            let walk_every = if round % 2 == 0 { 500 } else { usize::MAX };
            for i in 0..60_000u32 {
                let k = rng.gen_range(0..200_000u32);
                match rng.gen_range(0..10) {
                    0..=5 => assert_eq!(map.insert(k, i), want.insert(k, i)),
                    6 => match map.slot(k) {
                        Slot::Occupied(v) => {
                            assert_eq!(want.get(&k), Some(&*v));
                        }
                        Slot::Vacant(v) => {
                            v.insert(i);
                            assert_eq!(want.insert(k, i), None);
                        }
                    },
                    7 => {
                        if let (Slot::Occupied(a), Some(b)) = (map.slot(k), want.get_mut(&k)) {
                            *a += 1;
                            *b += 1;
                        }
                    }
                    _ => assert_eq!(map.remove(&k), want.remove(&k)),
                }
                if (i as usize + 1).is_multiple_of(walk_every) {
                    check_after(&map, &want, rng.gen_range(0..200_000u32), 20);
                    let index = map.index.borrow();
                    if index.built && !index.recent.is_empty() {
                        kept_up += 1;
                    }
                }
            }
            if round == 4 {
                // Remove most.
                let keys: Vec<u32> = want.keys().copied().collect();
                for k in keys.iter().filter(|k| *k % 5 != 0) {
                    assert_eq!(map.remove(k), want.remove(k));
                }
            }
            assert_eq!(map.len(), want.len());
            for k in (0..200_000u32).step_by(7) {
                assert_eq!(map.get(&k), want.get(&k), "{k}");
            }
            check_walks(&map, &want);
        }
        assert!(
            kept_up > 0,
            "walks kept the index up rather than rebuilding it"
        );
    }

    /// Without walks the index is not kept: a full table costs no ordering work, and the
    /// first walk builds it.
    #[test]
    fn no_index_until_walked() {
        let mut map: PrefixMap<u32, u32> = PrefixMap::default();
        for k in (0..100_000u32).rev() {
            map.insert(k.wrapping_mul(2_654_435_761), k);
        }
        assert!(!map.index.borrow().built);
        assert!(map.index.borrow().added.is_empty());
        let first: Vec<u32> = map
            .range_from(Bound::Unbounded)
            .take(3)
            .map(|(k, _)| k)
            .collect();
        let mut keys: Vec<u32> = (0..100_000u32)
            .map(|k| k.wrapping_mul(2_654_435_761))
            .collect();
        keys.sort_unstable();
        assert_eq!(first, keys[..3]);
        assert!(map.index.borrow().built);
        // Nested walks (a new one started while another is held) see the same order.
        let mut outer = map.range_from(Bound::Unbounded);
        let a = outer.next().map(|(k, _)| k);
        let inner: Vec<u32> = map
            .range_from(Bound::Excluded(keys[0]))
            .take(2)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(a, Some(keys[0]));
        assert_eq!(inner, keys[1..3]);
        // A removed key is skipped, an added one found, before any rebuild.
        drop(outer);
        assert!(map.remove(&keys[1]).is_some());
        map.insert(keys[0] + 1, 7);
        let got: Vec<u32> = map
            .range_from(Bound::Unbounded)
            .take(3)
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, vec![keys[0], keys[0] + 1, keys[2]]);
    }
}
