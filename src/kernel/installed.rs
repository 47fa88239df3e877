//! Compact bookkeeping of our routes in the kernel: per family an ordered map from prefix
//! to the id of an interned [`Fib`]. A full table shares a handful of next-hop sets, so a
//! million routes cost a few bytes each instead of a heap-allocated hop list per route
//! (and an ordered map never doubles its size in one step the way a hash table does).

use super::resolve::Fib;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
pub(super) struct Installed {
    v4: BTreeMap<Ipv4Net, u32>,
    v6: BTreeMap<Ipv6Net, u32>,
    fibs: Vec<Fib>,
    ids: HashMap<Fib, u32>,
    /// The id interned last (0 when none: `fibs` is then empty and never matches).
    last: u32,
}

impl Installed {
    pub fn from_map(map: HashMap<IpNet, Fib>) -> Installed {
        let mut out = Installed::default();
        for (p, f) in map {
            out.insert(p, f);
        }
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

    pub fn get(&self, p: &IpNet) -> Option<&Fib> {
        let id = match p {
            IpNet::V4(p) => self.v4.get(p),
            IpNet::V6(p) => self.v6.get(p),
        }?;
        self.fibs.get(*id as usize)
    }

    pub fn insert(&mut self, p: IpNet, f: Fib) {
        let id = self.intern(f);
        match p {
            IpNet::V4(p) => {
                self.v4.insert(p, id);
            }
            IpNet::V6(p) => {
                self.v6.insert(p, id);
            }
        }
    }

    pub fn remove(&mut self, p: &IpNet) -> bool {
        match p {
            IpNet::V4(p) => self.v4.remove(p).is_some(),
            IpNet::V6(p) => self.v6.remove(p).is_some(),
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .keys()
            .map(|p| IpNet::V4(*p))
            .chain(self.v6.keys().map(|p| IpNet::V6(*p)))
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_fibs_and_tracks_prefixes_per_family() {
        let mut i = Installed::default();
        let a: IpNet = "10.244.1.0/26".parse().expect("p");
        let b: IpNet = "fd00:10:244:1::/122".parse().expect("p");
        i.insert(a, Fib::Blackhole);
        i.insert(b, Fib::Blackhole);
        assert_eq!(i.fibs.len(), 1, "one interned Fib for both");
        assert_eq!(i.get(&a), Some(&Fib::Blackhole));
        assert_eq!(i.len(), 2);
        assert!(i.remove(&a));
        assert!(!i.remove(&a));
        assert_eq!(i.keys().collect::<Vec<_>>(), vec![b]);
    }
}
