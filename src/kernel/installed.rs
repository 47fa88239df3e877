//! Compact bookkeeping of our routes in the kernel: per family a sorted list of prefixes
//! with, beside it, the id of each one's interned [`Fib`]. A full table shares a handful of
//! next-hop sets, so an id fits a byte and an IPv4 route costs 6 bytes (5 of prefix, 1 of
//! id) — a B-tree of the same entries took about 16 — and the lists grow by a quarter at a
//! time instead of doubling.
//!
//! Changes are committed in batches ([`Installed::commit`]): the batch is sorted and merged
//! into the lists in one pass from its first new or removed prefix, so a full table arriving
//! in ascending chunks is appended chunk by chunk, and a chunk of changes anywhere costs one
//! move of the entries after it instead of one per change.

use super::resolve::Fib;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::HashMap;

#[derive(Debug, Default)]
pub(super) struct Installed {
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
    fibs: Vec<Fib>,
    ids: HashMap<Fib, u32>,
    /// The id interned last (0 when none: `fibs` is then empty and never matches).
    last: u32,
}

impl Installed {
    pub fn from_map(map: HashMap<IpNet, Fib>) -> Installed {
        let mut out = Installed::default();
        out.commit(map.into_iter().map(|(p, f)| (p, Some(f))).collect());
        out
    }

    fn intern(&mut self, f: Fib) -> u32 {
        // Runs of routes share their next hops (a full table from one peer is one Fib):
        // compare with the last one before hashing.
        if self.fibs.get(self.last as usize) == Some(&f) {
            return self.last;
        }
        let id = match self.ids.get(&f) {
            Some(id) => *id,
            None => {
                let id = u32::try_from(self.fibs.len()).unwrap_or(u32::MAX);
                self.fibs.push(f.clone());
                self.ids.insert(f, id);
                id
            }
        };
        self.last = id;
        id
    }

    #[cfg(test)]
    pub fn get(&self, p: &IpNet) -> Option<&Fib> {
        self.lookup().get(p)
    }

    /// Lookups for prefixes that come in ascending order (a sorted batch of changes): each
    /// search starts from where the last one ended, a few steps through nearby entries
    /// instead of a binary search of the whole table. Prefixes out of order are still
    /// found, by a whole search.
    pub fn lookup(&self) -> Lookup<'_> {
        Lookup {
            installed: self,
            v4: 0,
            v6: 0,
        }
    }

    /// Sets (`Some`) or removes (`None`) each prefix's route; later entries for the same
    /// prefix win.
    pub fn commit(&mut self, changes: Vec<(IpNet, Option<Fib>)>) {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (p, f) in changes {
            let id = f.map(|f| self.intern(f));
            match p {
                IpNet::V4(p) => v4.push((p, id)),
                IpNet::V6(p) => v6.push((p, id)),
            }
        }
        self.v4.commit(v4);
        self.v6.commit(v6);
    }

    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .keys
            .iter()
            .map(|p| IpNet::V4(*p))
            .chain(self.v6.keys.iter().map(|p| IpNet::V6(*p)))
    }

    pub fn len(&self) -> usize {
        self.v4.keys.len() + self.v6.keys.len()
    }
}

/// See [`Installed::lookup`].
pub(super) struct Lookup<'a> {
    installed: &'a Installed,
    /// Where the last IPv4 and IPv6 searches ended.
    v4: usize,
    v6: usize,
}

impl<'a> Lookup<'a> {
    pub fn get(&mut self, p: &IpNet) -> Option<&'a Fib> {
        let id = match p {
            IpNet::V4(p) => self.installed.v4.get_from(&mut self.v4, p),
            IpNet::V6(p) => self.installed.v6.get_from(&mut self.v6, p),
        }?;
        self.installed.fibs.get(id as usize)
    }
}

/// One family: sorted prefixes and their Fib ids, side by side.
#[derive(Debug)]
struct Table<K> {
    keys: Vec<K>,
    ids: Ids,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            keys: Vec::new(),
            ids: Ids::Narrow(Vec::new()),
        }
    }
}

impl<K: Ord + Copy> Table<K> {
    /// [`Table::get`] searching from `cursor` on, which it then moves to where `k` is or
    /// would go.
    fn get_from(&self, cursor: &mut usize, k: &K) -> Option<u32> {
        let found = self.search_from(*cursor, k);
        let (Ok(at) | Err(at)) = found;
        *cursor = at;
        found.ok().map(|i| self.ids.get(i))
    }

    /// Where `k` is (`Ok`) or would go (`Err`), searching from `from` on: a gallop (1, 2,
    /// 4 ... entries ahead) and a binary search of the last step. Keys searched in
    /// ascending order, each from where the last ended, cost a few steps through nearby
    /// memory. A `k` that sorts before `from` is searched for in the whole table.
    fn search_from(&self, from: usize, k: &K) -> Result<usize, usize> {
        let from = match from.checked_sub(1).and_then(|i| self.keys.get(i)) {
            Some(before) if before >= k => 0,
            _ => from.min(self.keys.len()),
        };
        let rest = self.keys.get(from..).unwrap_or_default();
        let mut bound = 1;
        while rest.get(bound).is_some_and(|x| x < k) {
            bound *= 2;
        }
        // rest[bound / 2] < k when bound > 1; k is at or before rest[bound].
        let lo = bound / 2;
        let hi = (bound + 1).min(rest.len());
        let window = rest.get(lo..hi).unwrap_or_default();
        match window.binary_search(k) {
            Ok(i) => Ok(from + lo + i),
            Err(i) => Err(from + lo + i),
        }
    }

    fn commit(&mut self, mut changes: Vec<(K, Option<u32>)>) {
        if changes.is_empty() {
            return;
        }
        // Stable: for a prefix given twice, the later entry ends up last and is kept.
        changes.sort_by_key(|a| a.0);
        let mut i = 0;
        let mut kept = 0;
        while i < changes.len() {
            let mut j = i;
            while j + 1 < changes.len() && changes[j + 1].0 == changes[i].0 {
                j += 1;
            }
            changes[kept] = changes[j];
            kept += 1;
            i = j + 1;
        }
        changes.truncate(kept);

        // Replacements in place; removals marked; new prefixes kept for the merge.
        let mut removed: Vec<usize> = Vec::new();
        // New prefixes with where they go (their index among the old entries).
        let mut added: Vec<(K, u32, usize)> = Vec::new();
        let mut cursor = 0;
        for (k, id) in changes {
            let found = self.search_from(cursor, &k);
            let (Ok(at) | Err(at)) = found;
            cursor = at;
            match (found, id) {
                (Ok(at), Some(id)) => self.ids.set(at, id),
                (Ok(at), None) => removed.push(at),
                (Err(at), Some(id)) => added.push((k, id, at)),
                (Err(_), None) => {}
            }
        }
        if !removed.is_empty() {
            self.remove_sorted(&removed);
            // The entries moved: find where the new ones go again.
            let mut cursor = 0;
            for (k, _, at) in added.iter_mut() {
                let (Ok(i) | Err(i)) = self.search_from(cursor, k);
                cursor = i;
                *at = i;
            }
        }
        if !added.is_empty() {
            self.merge(&added);
        }
    }

    /// Removes the entries at `at` (ascending) in one pass from the first of them.
    fn remove_sorted(&mut self, at: &[usize]) {
        let mut next = at.iter().peekable();
        let mut w = at[0];
        for r in at[0]..self.keys.len() {
            if next.peek() == Some(&&r) {
                next.next();
                continue;
            }
            self.keys[w] = self.keys[r];
            self.ids.copy(r, w);
            w += 1;
        }
        self.keys.truncate(w);
        self.ids.truncate(w);
        self.shrink();
    }

    /// Merges new prefixes (ascending, none present, each with its index among the
    /// present ones) in place, from the back: the entries between two new prefixes move
    /// as one block, and only entries after the first new prefix move.
    fn merge(&mut self, added: &[(K, u32, usize)]) {
        let old = self.keys.len();
        let new = old + added.len();
        if self.keys.capacity() < new {
            // A quarter more than needed: a million routes do not double at once.
            let want = new + new / 4;
            self.keys.reserve_exact(want - old);
            self.ids.reserve_exact(want - old);
        }
        let (last, _, _) = added[added.len() - 1];
        self.keys.resize(new, last);
        self.ids.resize(new);
        // Old entries [at, end) go up by the number of new prefixes at or before them.
        let mut end = old;
        for (n, &(k, id, at)) in added.iter().enumerate().rev() {
            let at = at.min(end);
            self.keys.copy_within(at..end, at + n + 1);
            self.ids.copy_within(at..end, at + n + 1);
            self.keys[at + n] = k;
            self.ids.set(at + n, id);
            end = at;
        }
    }

    /// Gives memory back once the table is less than half full (after a withdrawal of most
    /// of it), so a table that shrank does not hold its largest size for ever.
    fn shrink(&mut self) {
        if self.keys.capacity() > 1024 && self.keys.len() < self.keys.capacity() / 2 {
            self.keys.shrink_to_fit();
            self.ids.shrink_to_fit();
        }
    }
}

/// Fib ids, a byte each while every id fits one (the common case: few next-hop sets), four
/// bytes each once one does not.
#[derive(Debug)]
enum Ids {
    Narrow(Vec<u8>),
    Wide(Vec<u32>),
}

impl Ids {
    fn get(&self, i: usize) -> u32 {
        match self {
            Ids::Narrow(v) => v.get(i).map_or(u32::MAX, |x| u32::from(*x)),
            Ids::Wide(v) => v.get(i).copied().unwrap_or(u32::MAX),
        }
    }

    fn set(&mut self, i: usize, id: u32) {
        if let Ids::Narrow(v) = self {
            match u8::try_from(id) {
                Ok(b) => {
                    if let Some(x) = v.get_mut(i) {
                        *x = b;
                    }
                    return;
                }
                Err(_) => {
                    let wide = v.iter().map(|x| u32::from(*x)).collect();
                    *self = Ids::Wide(wide);
                }
            }
        }
        if let Ids::Wide(v) = self {
            if let Some(x) = v.get_mut(i) {
                *x = id;
            }
        }
    }

    fn copy(&mut self, from: usize, to: usize) {
        match self {
            Ids::Narrow(v) => v[to] = v[from],
            Ids::Wide(v) => v[to] = v[from],
        }
    }

    fn copy_within(&mut self, from: std::ops::Range<usize>, to: usize) {
        match self {
            Ids::Narrow(v) => v.copy_within(from, to),
            Ids::Wide(v) => v.copy_within(from, to),
        }
    }

    fn resize(&mut self, n: usize) {
        match self {
            Ids::Narrow(v) => v.resize(n, 0),
            Ids::Wide(v) => v.resize(n, 0),
        }
    }

    fn truncate(&mut self, n: usize) {
        match self {
            Ids::Narrow(v) => v.truncate(n),
            Ids::Wide(v) => v.truncate(n),
        }
    }

    fn reserve_exact(&mut self, n: usize) {
        match self {
            Ids::Narrow(v) => v.reserve_exact(n),
            Ids::Wide(v) => v.reserve_exact(n),
        }
    }

    fn shrink_to_fit(&mut self) {
        match self {
            Ids::Narrow(v) => v.shrink_to_fit(),
            Ids::Wide(v) => v.shrink_to_fit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::resolve::Hop;
    use super::*;
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    fn via(n: u32) -> Fib {
        Fib::Via(vec![Hop {
            gateway: IpAddr::from([198, 18, (n >> 8) as u8, n as u8]),
            ifindex: 2,
            onlink: false,
        }])
    }

    #[test]
    fn shares_fibs_and_tracks_prefixes_per_family() {
        let mut i = Installed::default();
        let a: IpNet = "10.244.1.0/26".parse().expect("p");
        let b: IpNet = "fd00:10:244:1::/122".parse().expect("p");
        i.commit(vec![(a, Some(Fib::Blackhole)), (b, Some(Fib::Blackhole))]);
        assert_eq!(i.fibs.len(), 1, "one interned Fib for both");
        assert_eq!(i.get(&a), Some(&Fib::Blackhole));
        assert_eq!(i.len(), 2);
        i.commit(vec![(a, None)]);
        assert_eq!(i.get(&a), None);
        i.commit(vec![(a, None)]);
        assert_eq!(i.keys().collect::<Vec<_>>(), vec![b]);
    }

    #[test]
    fn later_changes_of_a_batch_win() {
        let mut i = Installed::default();
        let a: IpNet = "10.0.0.0/24".parse().expect("p");
        i.commit(vec![(a, Some(via(1))), (a, None), (a, Some(via(2)))]);
        assert_eq!(i.get(&a), Some(&via(2)));
        i.commit(vec![(a, Some(via(3))), (a, None)]);
        assert_eq!(i.get(&a), None);
        assert_eq!(i.len(), 0);
    }

    /// Batches of inserts, replacements and removals anywhere in the table, and more than
    /// 255 next-hop sets (the ids widen), agree with a B-tree doing the same.
    #[test]
    fn batches_agree_with_an_ordered_map() {
        let mut i = Installed::default();
        let mut model: BTreeMap<IpNet, Fib> = BTreeMap::new();
        let mut seed = 0x2545_f491_u32;
        let mut rnd = |m: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            seed % m
        };
        for round in 0..60 {
            let mut batch = Vec::new();
            let size = 1 + rnd(if round % 7 == 0 { 3000 } else { 300 });
            for _ in 0..size {
                let n = rnd(4000);
                let p: IpNet = if n % 5 == 0 {
                    format!("fd00:{:x}::/64", n).parse().expect("p")
                } else {
                    format!("10.{}.{}.0/24", n >> 8, n & 255)
                        .parse()
                        .expect("p")
                };
                let f = match rnd(10) {
                    0..=2 => None,
                    3 => Some(Fib::Blackhole),
                    _ if round > 30 => Some(via(rnd(400))),
                    _ => Some(via(rnd(3))),
                };
                batch.push((p, f));
            }
            for (p, f) in &batch {
                match f {
                    Some(f) => model.insert(*p, f.clone()),
                    None => model.remove(p),
                };
            }
            i.commit(batch);
            assert_eq!(i.len(), model.len(), "round {round}");
            assert!(
                i.keys().eq(model.keys().copied()),
                "keys in order, round {round}"
            );
            for (p, f) in &model {
                assert_eq!(i.get(p), Some(f), "round {round}: {p}");
            }
            // One lookup for many prefixes, ascending (a sorted batch) and then in any
            // order, present or not: the same answers as the model.
            let mut probes: Vec<IpNet> = (0..400)
                .map(|_| {
                    let n = rnd(4000);
                    format!("10.{}.{}.0/24", n >> 8, n & 255)
                        .parse()
                        .expect("p")
                })
                .chain(model.keys().copied().step_by(7))
                .collect();
            probes.sort();
            let mut look = i.lookup();
            for p in &probes {
                assert_eq!(look.get(p), model.get(p), "ascending, round {round}: {p}");
            }
            probes.reverse();
            let third = probes.len() / 3;
            probes.rotate_left(third);
            let mut look = i.lookup();
            for p in &probes {
                assert_eq!(look.get(p), model.get(p), "any order, round {round}: {p}");
            }
        }
        assert!(
            matches!(i.v4.ids, Ids::Wide(_)),
            "over 255 sets widen the ids"
        );
        // Withdrawing nearly everything gives the memory back.
        let all: Vec<_> = model.keys().skip(10).map(|p| (*p, None)).collect();
        i.commit(all);
        assert_eq!(i.len(), 10);
        assert!(i.v4.keys.capacity() <= 1024 || i.v4.keys.capacity() < 2 * i.v4.keys.len());
    }
}
