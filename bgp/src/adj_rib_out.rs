//! Adj-RIB-Out per peer (RFC 4271 §3.2), compact for many peers: a route reflector with a
//! thousand clients holds a thousand Adj-RIBs-Out of the same few thousand prefixes.
//!
//! The prefixes held in any peer's Adj-RIB-Out are numbered once, speaker-wide
//! ([`PrefixIds`]); each peer's Adj-RIB-Out is then a vector indexed by that number of
//! pointers to the (shared) exported route: 8 bytes per prefix and peer, where a hash map
//! of prefix to route took about 67.

use crate::rib::Route;
use ipnet::IpNet;
use std::collections::HashMap;
use std::sync::Arc;

/// Numbers for the prefixes held in at least one Adj-RIB-Out, with the count of
/// Adj-RIBs-Out holding each; a number is reused once no peer holds its prefix.
#[derive(Debug, Default)]
pub struct PrefixIds {
    ids: HashMap<IpNet, u32>,
    prefixes: Vec<IpNet>,
    refs: Vec<u32>,
    free: Vec<u32>,
}

impl PrefixIds {
    /// The number of a prefix held somewhere.
    pub fn id(&self, prefix: &IpNet) -> Option<u32> {
        self.ids.get(prefix).copied()
    }

    /// The prefix of a number in use.
    pub fn prefix(&self, id: u32) -> Option<IpNet> {
        self.prefixes.get(id as usize).copied()
    }

    /// Prefixes numbered now.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// One more holder of `prefix`; its number.
    fn acquire(&mut self, prefix: IpNet) -> u32 {
        if let Some(&id) = self.ids.get(&prefix) {
            if let Some(r) = self.refs.get_mut(id as usize) {
                *r += 1;
            }
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.prefixes[id as usize] = prefix;
                self.refs[id as usize] = 1;
                id
            }
            None => {
                self.prefixes.push(prefix);
                self.refs.push(1);
                (self.prefixes.len() - 1) as u32
            }
        };
        self.ids.insert(prefix, id);
        id
    }

    /// One holder fewer of the prefix numbered `id`.
    fn release(&mut self, id: u32) {
        let Some(r) = self.refs.get_mut(id as usize) else {
            return;
        };
        *r = r.saturating_sub(1);
        if *r == 0 {
            if let Some(p) = self.prefixes.get(id as usize) {
                self.ids.remove(p);
            }
            self.free.push(id);
        }
    }
}

/// Adj-RIB-Out of one peer: what we last advertised to it. Every method takes the
/// speaker's [`PrefixIds`]; [`AdjRibOut::clear`] must be called before the peer is
/// dropped so its numbers are released.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    /// By prefix number; None: not advertised.
    routes: Vec<Option<Arc<Route>>>,
    len: usize,
}

impl AdjRibOut {
    pub fn get<'a>(&'a self, ids: &PrefixIds, prefix: &IpNet) -> Option<&'a Arc<Route>> {
        let id = ids.id(prefix)?;
        self.routes.get(id as usize)?.as_ref()
    }

    pub fn insert(&mut self, ids: &mut PrefixIds, prefix: IpNet, route: Arc<Route>) {
        if let Some(id) = ids.id(&prefix) {
            if let Some(Some(slot)) = self.routes.get_mut(id as usize) {
                *slot = route;
                return;
            }
        }
        let id = ids.acquire(prefix) as usize;
        if self.routes.len() <= id {
            self.routes.resize(id + 1, None);
        }
        self.routes[id] = Some(route);
        self.len += 1;
    }

    pub fn remove(&mut self, ids: &mut PrefixIds, prefix: &IpNet) -> bool {
        let Some(id) = ids.id(prefix) else {
            return false;
        };
        match self.routes.get_mut(id as usize).and_then(Option::take) {
            Some(_) => {
                ids.release(id);
                self.len -= 1;
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties it (and releases its prefix numbers).
    pub fn clear(&mut self, ids: &mut PrefixIds) {
        for (id, r) in self.routes.iter().enumerate() {
            if r.is_some() {
                ids.release(id as u32);
            }
        }
        self.routes = Vec::new();
        self.len = 0;
    }

    /// The prefixes advertised.
    pub fn prefixes<'a>(&'a self, ids: &'a PrefixIds) -> impl Iterator<Item = IpNet> + 'a {
        self.routes
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_some())
            .filter_map(|(id, _)| ids.prefix(id as u32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{NextHop, PathAttributes};

    fn route(a: [u8; 4]) -> Arc<Route> {
        Arc::new(Route {
            attrs: PathAttributes::default(),
            next_hop: NextHop::new(std::net::IpAddr::from(a)),
        })
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    #[test]
    fn peers_share_prefix_numbers_and_release_them() {
        let mut ids = PrefixIds::default();
        let (mut a, mut b) = (AdjRibOut::default(), AdjRibOut::default());
        let r = route([10, 0, 0, 1]);
        a.insert(&mut ids, net("10.0.0.0/26"), r.clone());
        a.insert(&mut ids, net("fd00::/122"), r.clone());
        b.insert(&mut ids, net("10.0.0.0/26"), r.clone());
        assert_eq!((a.len(), b.len(), ids.len()), (2, 1, 2));
        // Replacing keeps the count.
        let r2 = route([10, 0, 0, 2]);
        a.insert(&mut ids, net("10.0.0.0/26"), r2.clone());
        assert_eq!(a.len(), 2);
        assert!(Arc::ptr_eq(
            a.get(&ids, &net("10.0.0.0/26")).expect("a"),
            &r2
        ));
        assert!(Arc::ptr_eq(
            b.get(&ids, &net("10.0.0.0/26")).expect("b"),
            &r
        ));
        assert!(b.get(&ids, &net("fd00::/122")).is_none());
        let mut ps: Vec<IpNet> = a.prefixes(&ids).collect();
        ps.sort();
        assert_eq!(ps, vec![net("10.0.0.0/26"), net("fd00::/122")]);
        // A prefix's number goes when its last holder drops it, and is reused.
        assert!(a.remove(&mut ids, &net("fd00::/122")));
        assert!(!a.remove(&mut ids, &net("fd00::/122")));
        assert_eq!(ids.len(), 1);
        a.clear(&mut ids);
        assert_eq!((a.len(), ids.len()), (0, 1));
        b.clear(&mut ids);
        assert!(ids.is_empty());
        b.insert(&mut ids, net("10.1.0.0/26"), r);
        assert!(ids.id(&net("10.1.0.0/26")).is_some_and(|id| id < 2));
        assert_eq!(
            b.prefixes(&ids).collect::<Vec<_>>(),
            vec![net("10.1.0.0/26")]
        );
    }
}
