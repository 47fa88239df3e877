//! Routing information bases (RFC 4271 §3.2): Adj-RIB-In per peer, the Loc-RIB with the
//! decision process of §9.1.2 and equal-cost multipath, Adj-RIB-Out per peer.

use crate::message::{NextHop, PathAttributes};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Attributes plus next hop of a route; shared by every prefix of one UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub attrs: PathAttributes,
    pub next_hop: NextHop,
}

/// Where a Loc-RIB candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Originated by this speaker.
    Local,
    /// Learned from the peer with this address.
    Peer(IpAddr),
}

/// One path for a prefix, with what the decision process needs about its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: Source,
    pub route: Arc<Route>,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// The peer's BGP Identifier (0 for local routes).
    pub peer_id: Ipv4Addr,
}

impl Candidate {
    fn local_pref(&self) -> u32 {
        self.route.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }
    /// BGP Identifier for tie breaking: ORIGINATOR_ID when reflected (RFC 4456 §9).
    fn tie_id(&self) -> u32 {
        u32::from(self.route.attrs.originator_id.unwrap_or(self.peer_id))
    }
    fn peer_addr(&self) -> Option<IpAddr> {
        match self.source {
            Source::Local => None,
            Source::Peer(a) => Some(a),
        }
    }
}

/// LOCAL_PREF assumed when a route has none (the common default of BIRD, FRR, GoBGP).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The selected route(s) for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    /// The single best path (§9.1.2.2 through the final tie breaks).
    pub best: Candidate,
    /// Next hops of every path equal to the best up to the multipath step; contains the
    /// best's own next hop first. One entry means no multipath.
    pub next_hops: Vec<IpAddr>,
}

/// A change of the Loc-RIB for one prefix, for the kernel and the Adj-RIBs-Out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNet,
    /// None: the prefix is gone from the Loc-RIB.
    pub best: Option<Best>,
}

/// Adj-RIB-In of one peer: the routes as received, after import policy.
#[derive(Debug, Default)]
pub struct AdjRibIn {
    routes: HashMap<IpNet, Arc<Route>>,
}

impl AdjRibIn {
    /// Stores a route; returns true when it differs from what was there.
    pub fn insert(&mut self, prefix: IpNet, route: Arc<Route>) -> bool {
        match self.routes.insert(prefix, route.clone()) {
            Some(old) => old != route,
            None => true,
        }
    }
    /// Removes a route; returns true when there was one.
    pub fn remove(&mut self, prefix: &IpNet) -> bool {
        self.routes.remove(prefix).is_some()
    }
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
    pub fn get(&self, prefix: &IpNet) -> Option<&Arc<Route>> {
        self.routes.get(prefix)
    }
    /// Empties the table and returns what it held.
    pub fn drain(&mut self) -> Vec<IpNet> {
        self.routes.drain().map(|(p, _)| p).collect()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &Arc<Route>)> {
        self.routes.iter()
    }
}

/// Adj-RIB-Out of one peer: what we last advertised to it.
#[derive(Debug, Default)]
pub struct AdjRibOut {
    routes: HashMap<IpNet, Arc<Route>>,
}

impl AdjRibOut {
    pub fn get(&self, prefix: &IpNet) -> Option<&Arc<Route>> {
        self.routes.get(prefix)
    }
    pub fn insert(&mut self, prefix: IpNet, route: Arc<Route>) {
        self.routes.insert(prefix, route);
    }
    pub fn remove(&mut self, prefix: &IpNet) -> bool {
        self.routes.remove(prefix).is_some()
    }
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
    pub fn clear(&mut self) {
        self.routes.clear();
    }
    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.routes.keys()
    }
}

#[derive(Debug, Default)]
struct Destination {
    candidates: Vec<Candidate>,
    best: Option<Best>,
}

/// The Loc-RIB: every usable path per prefix, and the selected one.
#[derive(Debug, Default)]
pub struct LocRib {
    dests: HashMap<IpNet, Destination>,
}

impl LocRib {
    /// Sets (Some) or removes (None) the path of `source` for `prefix`, runs the decision
    /// process for it, and returns the change when the selection moved.
    pub fn update(
        &mut self,
        prefix: IpNet,
        source: Source,
        candidate: Option<Candidate>,
    ) -> Option<Change> {
        let dest = self.dests.entry(prefix).or_default();
        let pos = dest.candidates.iter().position(|c| c.source == source);
        match (pos, candidate) {
            (Some(i), Some(c)) => {
                if dest.candidates[i] == c {
                    return None;
                }
                dest.candidates[i] = c;
            }
            (None, Some(c)) => dest.candidates.push(c),
            (Some(i), None) => {
                dest.candidates.swap_remove(i);
            }
            (None, None) => {
                if dest.candidates.is_empty() {
                    self.dests.remove(&prefix);
                }
                return None;
            }
        }
        let new_best = select(&dest.candidates);
        if dest.candidates.is_empty() {
            self.dests.remove(&prefix);
        } else if new_best == dest.best {
            return None;
        } else {
            dest.best = new_best.clone();
        }
        Some(Change {
            prefix,
            best: new_best,
        })
    }

    /// The selected route for a prefix.
    pub fn best(&self, prefix: &IpNet) -> Option<&Best> {
        self.dests.get(prefix).and_then(|d| d.best.as_ref())
    }

    /// Every prefix with its selection.
    pub fn iter(&self) -> impl Iterator<Item = (&IpNet, &Best)> {
        self.dests
            .iter()
            .filter_map(|(p, d)| d.best.as_ref().map(|b| (p, b)))
    }

    /// Number of prefixes with a selected route.
    pub fn len(&self) -> usize {
        self.dests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dests.is_empty()
    }
}

/// The decision process of RFC 4271 §9.1.2.2 over one prefix's candidates, as a sequence
/// of eliminations. Local routes win outright. What survives steps a–e (local preference,
/// AS_PATH length, ORIGIN, MED within one neighbour AS, eBGP over iBGP) is the multipath
/// set; the final tie breaks (BGP Identifier, CLUSTER_LIST length, peer address) choose
/// the single best.
pub fn select(candidates: &[Candidate]) -> Option<Best> {
    if candidates.is_empty() {
        return None;
    }
    if let Some(local) = candidates.iter().find(|c| c.source == Source::Local) {
        return Some(Best {
            best: local.clone(),
            next_hops: vec![local.route.next_hop.address],
        });
    }
    let mut set: Vec<&Candidate> = candidates.iter().collect();
    keep_min(&mut set, |c| std::cmp::Reverse(c.local_pref()));
    keep_min(&mut set, |c| c.route.attrs.as_path_len());
    keep_min(&mut set, |c| c.route.attrs.origin);
    // MED is compared only between routes from the same neighbouring AS; a missing MED
    // is the lowest value (§9.1.2.2 c).
    let snapshot = set.clone();
    set.retain(|c| {
        let med = c.route.attrs.med.unwrap_or(0);
        let nas = c.route.attrs.first_as();
        !snapshot
            .iter()
            .any(|o| o.route.attrs.first_as() == nas && o.route.attrs.med.unwrap_or(0) < med)
    });
    if set.iter().any(|c| c.ebgp) {
        set.retain(|c| c.ebgp);
    }
    let mut next_hops: Vec<IpAddr> = Vec::with_capacity(set.len());
    let mut tie = set.clone();
    keep_min(&mut tie, |c| c.tie_id());
    keep_min(&mut tie, |c| c.route.attrs.cluster_list.len());
    keep_min(&mut tie, |c| c.peer_addr());
    let best = (*tie.first()?).clone();
    next_hops.push(best.route.next_hop.address);
    for c in &set {
        let nh = c.route.next_hop.address;
        if !next_hops.contains(&nh) {
            next_hops.push(nh);
        }
    }
    Some(Best { best, next_hops })
}

fn keep_min<K: Ord, F: Fn(&Candidate) -> K>(set: &mut Vec<&Candidate>, key: F) {
    if let Some(min) = set.iter().map(|c| key(c)).min() {
        set.retain(|c| key(c) == min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsSegment, Origin};

    fn cand(peer: [u8; 4], ebgp: bool, f: impl FnOnce(&mut PathAttributes)) -> Candidate {
        let mut attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![65000])],
            ..Default::default()
        };
        f(&mut attrs);
        let addr = IpAddr::from(peer);
        Candidate {
            source: Source::Peer(addr),
            route: Arc::new(Route {
                attrs,
                next_hop: NextHop::new(addr),
            }),
            ebgp,
            peer_id: Ipv4Addr::from(peer),
        }
    }

    fn best_of(c: &[Candidate]) -> IpAddr {
        select(c).expect("best").best.route.next_hop.address
    }

    #[test]
    fn local_pref_beats_shorter_path() {
        let a = cand([10, 0, 0, 1], false, |a| {
            a.local_pref = Some(200);
            a.as_path = vec![AsSegment::Sequence(vec![1, 2, 3])];
        });
        let b = cand([10, 0, 0, 2], false, |a| a.local_pref = Some(100));
        assert_eq!(best_of(&[b, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn shorter_as_path_then_origin() {
        let a = cand([10, 0, 0, 1], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2])]
        });
        let b = cand([10, 0, 0, 2], true, |_| {});
        assert_eq!(best_of(&[a.clone(), b]), IpAddr::from([10, 0, 0, 2]));
        let c = cand([10, 0, 0, 3], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2])];
            a.origin = Origin::Incomplete;
        });
        assert_eq!(best_of(&[c, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn as_set_counts_as_one() {
        let a = cand([10, 0, 0, 1], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1]), AsSegment::Set(vec![7, 8, 9])]
        });
        let b = cand([10, 0, 0, 2], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2, 3])]
        });
        assert_eq!(best_of(&[b, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn med_only_within_same_neighbour_as() {
        // Same neighbour AS: lower MED wins.
        let a = cand([10, 0, 0, 1], true, |a| a.med = Some(50));
        let b = cand([10, 0, 0, 2], true, |a| a.med = Some(10));
        assert_eq!(best_of(&[a.clone(), b]), IpAddr::from([10, 0, 0, 2]));
        // Different neighbour AS: MED is not compared; falls to router id.
        let c = cand([10, 0, 0, 3], true, |a| {
            a.med = Some(5);
            a.as_path = vec![AsSegment::Sequence(vec![65001])];
        });
        let sel = select(&[a, c]).expect("best");
        assert_eq!(sel.best.route.next_hop.address, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(sel.next_hops.len(), 2, "both survive to the multipath set");
    }

    #[test]
    fn ebgp_over_ibgp_then_router_id_then_address() {
        let i = cand([10, 0, 0, 1], false, |_| {});
        let e = cand([10, 0, 0, 9], true, |_| {});
        assert_eq!(best_of(&[i, e]), IpAddr::from([10, 0, 0, 9]));
        let mut x = cand([10, 0, 0, 5], false, |_| {});
        x.peer_id = Ipv4Addr::new(1, 1, 1, 1);
        let y = cand([10, 0, 0, 4], false, |_| {});
        assert_eq!(best_of(&[y, x]), IpAddr::from([10, 0, 0, 5]));
    }

    #[test]
    fn equal_paths_are_multipath_with_best_first() {
        let a = cand([10, 0, 0, 2], false, |_| {});
        let b = cand([10, 0, 0, 1], false, |_| {});
        let sel = select(&[a, b]).expect("best");
        assert_eq!(
            sel.next_hops,
            vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]
        );
    }

    #[test]
    fn loc_rib_reports_only_real_changes() {
        let mut rib = LocRib::default();
        let p: IpNet = "10.244.1.0/26".parse().expect("prefix");
        let a = cand([10, 0, 0, 1], false, |_| {});
        let b = cand([10, 0, 0, 2], false, |a| a.local_pref = Some(50));
        assert!(rib.update(p, a.source, Some(a.clone())).is_some());
        assert!(
            rib.update(p, a.source, Some(a.clone())).is_none(),
            "same path"
        );
        assert!(
            rib.update(p, b.source, Some(b.clone())).is_none(),
            "worse path"
        );
        let ch = rib.update(p, a.source, None).expect("best moved");
        assert_eq!(
            ch.best.expect("b remains").best.source,
            Source::Peer(IpAddr::from([10, 0, 0, 2]))
        );
        let ch = rib.update(p, b.source, None).expect("gone");
        assert!(ch.best.is_none());
        assert!(rib.is_empty());
    }
}
