//! Import and export rules (RFC 4271 §9.1.1, §9.1.3, §9.2, §5.1).
//!
//! Import: own-AS loop detection on eBGP, ORIGINATOR_ID loop detection on iBGP (RFC 4456),
//! LOCAL_PREF only trusted from iBGP peers. Export: no route back to the peer it came
//! from, no iBGP-learned route to another iBGP peer, AS_PATH prepend and next-hop-self
//! towards eBGP peers, MED not passed between autonomous systems.
//!
//! Route reflection (RFC 4456), when the speaker has a cluster id: a route from a client
//! is reflected to every other iBGP peer, a route from a non-client to the clients only;
//! a reflected route gets ORIGINATOR_ID (the BGP Identifier of the peer it came from,
//! unless already set) and the cluster id in front of its CLUSTER_LIST, and keeps its next
//! hop. A reflector refuses routes whose CLUSTER_LIST already holds its cluster id.
//!
//! Per-peer route safety ([`PeerPolicy`]): prefixes refused by prefix (the default route,
//! anything inside protected prefixes such as the cluster's own pod pools, an import
//! prefix list), an export prefix list, and the maximum number of prefixes a peer may send.
//! The core's default lets everything through; the agent decides which peers are outside
//! the cluster and fills the protections in.

use crate::message::{AsSegment, NextHop, PathAttributes};
use crate::rib::{Route, Source, DEFAULT_LOCAL_PREF};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// What a matching prefix-list entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PrefixAction {
    #[default]
    Permit,
    Deny,
}

impl PrefixAction {
    fn is_permit(&self) -> bool {
        *self == PrefixAction::Permit
    }
}

/// One prefix-list entry, matched like the prefix lists of FRR or Cisco: a prefix matches
/// when it lies inside `prefix` and its length is `prefix`'s length exactly (neither `ge`
/// nor `le`), or within `ge`..=`le` (`ge` alone: up to the family's longest, `le` alone:
/// from `prefix`'s length).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PrefixRule {
    pub prefix: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ge: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub le: Option<u8>,
    #[serde(default, skip_serializing_if = "PrefixAction::is_permit")]
    pub action: PrefixAction,
}

impl PrefixRule {
    /// An entry matching `prefix` exactly.
    pub fn exact(prefix: IpNet, action: PrefixAction) -> PrefixRule {
        PrefixRule {
            prefix,
            ge: None,
            le: None,
            action,
        }
    }

    /// Checks the entry: no host bits, `len(prefix) <= ge <= le <= longest`.
    pub fn check(&self) -> Result<(), String> {
        let p = self.prefix;
        if p.trunc() != p {
            return Err(format!(
                "{p} has host bits set; did you mean {}?",
                p.trunc()
            ));
        }
        let (len, max) = (p.prefix_len(), p.max_prefix_len());
        for (name, v) in [("ge", self.ge), ("le", self.le)] {
            if let Some(v) = v {
                if v < len || v > max {
                    return Err(format!(
                        "{name} {v} is outside {len}..={max}: it must be at least the length of {p} and at most {max}"
                    ));
                }
            }
        }
        if let (Some(ge), Some(le)) = (self.ge, self.le) {
            if ge > le {
                return Err(format!(
                    "ge {ge} is larger than le {le}: no prefix would match"
                ));
            }
        }
        Ok(())
    }

    /// Whether `candidate` matches this entry (the action aside).
    pub fn matches(&self, candidate: &IpNet) -> bool {
        if !self.prefix.contains(candidate) {
            return false;
        }
        let len = candidate.prefix_len();
        let (lo, hi) = match (self.ge, self.le) {
            (None, None) => (self.prefix.prefix_len(), self.prefix.prefix_len()),
            (Some(ge), None) => (ge, self.prefix.max_prefix_len()),
            (None, Some(le)) => (self.prefix.prefix_len(), le),
            (Some(ge), Some(le)) => (ge, le),
        };
        (lo..=hi).contains(&len)
    }
}

/// `[permit|deny] PREFIX [ge N] [le N]`, e.g. `10.0.0.0/8 le 24` or `deny 0.0.0.0/0`.
impl std::str::FromStr for PrefixRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut words = s.split_whitespace().peekable();
        let action = match words.peek().copied() {
            Some("permit") => {
                words.next();
                PrefixAction::Permit
            }
            Some("deny") => {
                words.next();
                PrefixAction::Deny
            }
            _ => PrefixAction::Permit,
        };
        let prefix: IpNet = words
            .next()
            .ok_or("a prefix is missing: write [permit|deny] PREFIX [ge N] [le N]")?
            .parse()
            .map_err(|e| format!("{s:?}: {e}: write [permit|deny] PREFIX [ge N] [le N]"))?;
        let mut rule = PrefixRule::exact(prefix, action);
        while let Some(w) = words.next() {
            let n: u8 = words
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{s:?}: {w} needs a prefix length after it"))?;
            match w {
                "ge" if rule.ge.is_none() => rule.ge = Some(n),
                "le" if rule.le.is_none() => rule.le = Some(n),
                _ => {
                    return Err(format!(
                        "{s:?}: unexpected {w:?}: write [permit|deny] PREFIX [ge N] [le N]"
                    ))
                }
            }
        }
        rule.check().map_err(|e| format!("{s:?}: {e}"))?;
        Ok(rule)
    }
}

impl std::fmt::Display for PrefixRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.action == PrefixAction::Deny {
            f.write_str("deny ")?;
        }
        write!(f, "{}", self.prefix)?;
        if let Some(ge) = self.ge {
            write!(f, " ge {ge}")?;
        }
        if let Some(le) = self.le {
            write!(f, " le {le}")?;
        }
        Ok(())
    }
}

/// Whether a prefix list lets `prefix` through: the first matching entry decides; a prefix
/// no entry matches is denied. An empty list lets everything through (no list).
pub fn prefix_list_permits(list: &[PrefixRule], prefix: &IpNet) -> bool {
    if list.is_empty() {
        return true;
    }
    list.iter()
        .find(|r| r.matches(prefix))
        .is_some_and(|r| r.action == PrefixAction::Permit)
}

/// What to do when a peer sends more prefixes than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxPrefixAction {
    /// Keep the session and the routes; tell the operator (once per crossing).
    Warn,
    /// Close the session with CEASE / Maximum Number of Prefixes Reached (RFC 4486) and
    /// connect again after this long (incoming connections are refused meanwhile).
    Restart(Duration),
}

/// The most prefixes a peer may have in its Adj-RIB-In (after import policy, both families
/// together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPrefixes {
    pub limit: u32,
    pub action: MaxPrefixAction,
}

/// Route safety of one peer. The default refuses nothing and limits nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// Refuse the default route (0.0.0.0/0, ::/0).
    pub refuse_default_route: bool,
    /// Refuse any prefix inside one of these (the cluster's own pod pools: a route to pod
    /// addresses from outside the cluster would be a hijack).
    pub protected: Vec<IpNet>,
    /// Import prefix list (empty: no list).
    pub import_prefixes: Vec<PrefixRule>,
    /// Export prefix list (empty: no list).
    pub export_prefixes: Vec<PrefixRule>,
    pub max_prefixes: Option<MaxPrefixes>,
}

impl PeerPolicy {
    /// Why a prefix announced by the peer is refused for its prefix alone, if it is.
    pub fn refuse(&self, prefix: &IpNet) -> Option<Rejected> {
        if self.refuse_default_route && prefix.prefix_len() == 0 {
            return Some(Rejected::DefaultRoute);
        }
        if self.protected.iter().any(|p| p.contains(prefix)) {
            return Some(Rejected::ProtectedPrefix);
        }
        if !prefix_list_permits(&self.import_prefixes, prefix) {
            return Some(Rejected::ImportList);
        }
        None
    }

    /// Whether the export prefix list lets `prefix` go to the peer.
    pub fn exports(&self, prefix: &IpNet) -> bool {
        prefix_list_permits(&self.export_prefixes, prefix)
    }
}

/// The local side of a session, as export needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportTarget {
    pub local_as: u32,
    pub local_id: Ipv4Addr,
    pub peer: IpAddr,
    pub ebgp: bool,
    /// Our IPv4 next hop towards this peer (session address or configured).
    pub next_hop_v4: Option<Ipv4Addr>,
    /// Our IPv6 next hop towards this peer (session address or configured).
    pub next_hop_v6: Option<Ipv6Addr>,
    /// We are a route reflector with this cluster id (RFC 4456).
    pub cluster_id: Option<Ipv4Addr>,
    /// The peer is one of our route reflector clients.
    pub client: bool,
}

/// Where a route to export came from, as export needs it.
#[derive(Debug, Clone, Copy)]
pub struct RouteSource {
    pub source: Source,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// Learned from one of our route reflector clients.
    pub client: bool,
    /// BGP Identifier of the peer it was learned from (0 for local routes).
    pub peer_id: Ipv4Addr,
}

/// Why an imported route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejected {
    /// Our AS is in the AS_PATH.
    AsLoop,
    /// ORIGINATOR_ID is our own router id.
    OriginatorLoop,
    /// Our cluster id is in the CLUSTER_LIST (we are a route reflector, RFC 4456 §8).
    ClusterLoop,
    /// The next hop is one of the local speaker's own or not usable.
    BadNextHop,
    /// The default route from a peer not allowed to send it.
    DefaultRoute,
    /// A prefix inside the cluster's own pools from a peer outside the cluster.
    ProtectedPrefix,
    /// The peer's import prefix list does not permit it.
    ImportList,
}

impl Rejected {
    /// Every reason, for metrics and status.
    pub const ALL: [Rejected; 7] = [
        Rejected::AsLoop,
        Rejected::OriginatorLoop,
        Rejected::ClusterLoop,
        Rejected::BadNextHop,
        Rejected::DefaultRoute,
        Rejected::ProtectedPrefix,
        Rejected::ImportList,
    ];

    /// A short snake_case name (metric label, status key).
    pub fn name(self) -> &'static str {
        match self {
            Rejected::AsLoop => "as_loop",
            Rejected::OriginatorLoop => "originator_loop",
            Rejected::ClusterLoop => "cluster_loop",
            Rejected::BadNextHop => "bad_next_hop",
            Rejected::DefaultRoute => "default_route",
            Rejected::ProtectedPrefix => "own_pool",
            Rejected::ImportList => "import_list",
        }
    }
}

/// Import policy: returns the attributes to store, or why the route is refused
/// (a refused route is treated as withdrawn). `cluster_id`: ours when we are a route
/// reflector.
pub fn import(
    mut route: Route,
    ebgp: bool,
    local_as: u32,
    local_id: Ipv4Addr,
    cluster_id: Option<Ipv4Addr>,
) -> Result<Route, Rejected> {
    if ebgp {
        if route.attrs.as_path_contains(local_as) {
            return Err(Rejected::AsLoop);
        }
        // LOCAL_PREF from another AS is meaningless (RFC 4271 §5.1.5).
        route.attrs.local_pref = None;
    } else if route.attrs.originator_id == Some(local_id) {
        return Err(Rejected::OriginatorLoop);
    } else if cluster_id.is_some_and(|c| route.attrs.cluster_list.contains(&c)) {
        return Err(Rejected::ClusterLoop);
    }
    if route.next_hop.address.is_unspecified() || route.next_hop.address.is_multicast() {
        return Err(Rejected::BadNextHop);
    }
    Ok(route)
}

/// Export policy: the route as it must be advertised to `target`, or None when it must
/// not be advertised there. `source_ebgp` says whether the route was learned over eBGP.
/// (No route reflection: see [`export_from`].)
pub fn export(
    route: &Route,
    source: Source,
    source_ebgp: bool,
    is_v6: bool,
    target: &ExportTarget,
) -> Option<Route> {
    let from = RouteSource {
        source,
        ebgp: source_ebgp,
        client: false,
        peer_id: Ipv4Addr::UNSPECIFIED,
    };
    export_from(route, &from, is_v6, target)
}

/// Export policy with route reflection: the route as it must be advertised to `target`,
/// or None when it must not be advertised there.
pub fn export_from(
    route: &Route,
    from: &RouteSource,
    is_v6: bool,
    target: &ExportTarget,
) -> Option<Route> {
    let source = from.source;
    if source == Source::Peer(target.peer) {
        return None;
    }
    let from_ibgp = matches!(source, Source::Peer(_)) && !from.ebgp;
    // RFC 4456 §6: a reflector sends a client's route to every iBGP peer and a
    // non-client's route to its clients; without a cluster id nothing is reflected.
    let reflect = from_ibgp && !target.ebgp && target.cluster_id.is_some();
    if from_ibgp && !target.ebgp && !(reflect && (from.client || target.client)) {
        return None;
    }
    let local = source == Source::Local;
    let mut attrs: PathAttributes = route.attrs.clone();
    let mut next_hop = route.next_hop;
    if reflect {
        // RFC 4456 §8: ORIGINATOR_ID names the route's originator in this AS; the
        // cluster id goes in front of the CLUSTER_LIST. The next hop stays.
        if attrs.originator_id.is_none() {
            attrs.originator_id = Some(from.peer_id);
        }
        if let Some(c) = target.cluster_id {
            attrs.cluster_list.insert(0, c);
        }
    }
    if target.ebgp {
        prepend(&mut attrs.as_path, target.local_as);
        attrs.local_pref = None;
        if !local {
            attrs.med = None;
        }
        attrs.originator_id = None;
        attrs.cluster_list.clear();
        next_hop = self_next_hop(is_v6, target)?;
    } else {
        attrs.local_pref = Some(attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
        if local {
            next_hop = self_next_hop(is_v6, target)?;
        }
    }
    Some(Route { attrs, next_hop })
}

fn self_next_hop(is_v6: bool, target: &ExportTarget) -> Option<NextHop> {
    if is_v6 {
        let v6 = target
            .next_hop_v6
            .or_else(|| target.next_hop_v4.map(|v4| v4.to_ipv6_mapped()))?;
        Some(NextHop::new(IpAddr::V6(v6)))
    } else {
        Some(NextHop::new(IpAddr::V4(target.next_hop_v4?)))
    }
}

/// Puts `asn` in front of the path, in a leading AS_SEQUENCE (RFC 4271 §5.1.2).
pub fn prepend(path: &mut Vec<AsSegment>, asn: u32) {
    match path.first_mut() {
        Some(AsSegment::Sequence(seq)) if seq.len() < 255 => seq.insert(0, asn),
        _ => path.insert(0, AsSegment::Sequence(vec![asn])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(ebgp: bool) -> ExportTarget {
        ExportTarget {
            local_as: 64512,
            local_id: Ipv4Addr::new(198, 18, 0, 1),
            peer: IpAddr::from([198, 18, 0, 254]),
            ebgp,
            next_hop_v4: Some(Ipv4Addr::new(198, 18, 0, 1)),
            next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
            cluster_id: None,
            client: false,
        }
    }

    fn learned(nh: [u8; 4], path: Vec<u32>) -> Route {
        Route {
            attrs: PathAttributes {
                as_path: vec![AsSegment::Sequence(path)],
                med: Some(7),
                local_pref: Some(300),
                ..Default::default()
            },
            next_hop: NextHop::new(IpAddr::from(nh)),
        }
    }

    #[test]
    fn ebgp_export_prepends_sets_next_hop_self_and_strips() {
        let r = learned([198, 18, 0, 9], vec![65001]);
        let src = Source::Peer(IpAddr::from([198, 18, 0, 9]));
        let out = export(&r, src, true, false, &target(true)).expect("exported");
        assert_eq!(
            out.attrs.as_path,
            vec![AsSegment::Sequence(vec![64512, 65001])]
        );
        assert_eq!(out.next_hop.address, IpAddr::from([198, 18, 0, 1]));
        assert_eq!(out.attrs.local_pref, None);
        assert_eq!(out.attrs.med, None);
    }

    #[test]
    fn ibgp_learned_is_not_sent_to_ibgp_but_to_ebgp() {
        let r = learned([198, 18, 0, 9], vec![]);
        let src = Source::Peer(IpAddr::from([198, 18, 0, 9]));
        assert!(export(&r, src, false, false, &target(false)).is_none());
        assert!(export(&r, src, false, false, &target(true)).is_some());
    }

    #[test]
    fn never_back_to_the_source() {
        let r = learned([198, 18, 0, 254], vec![65000]);
        let src = Source::Peer(IpAddr::from([198, 18, 0, 254]));
        assert!(export(&r, src, true, false, &target(true)).is_none());
    }

    #[test]
    fn ebgp_learned_to_ibgp_keeps_next_hop_and_gets_local_pref() {
        let mut r = learned([198, 18, 0, 9], vec![65001]);
        r.attrs.local_pref = None;
        let src = Source::Peer(IpAddr::from([198, 18, 0, 9]));
        let out = export(&r, src, true, false, &target(false)).expect("exported");
        assert_eq!(out.next_hop.address, IpAddr::from([198, 18, 0, 9]));
        assert_eq!(out.attrs.local_pref, Some(DEFAULT_LOCAL_PREF));
        assert_eq!(out.attrs.as_path, vec![AsSegment::Sequence(vec![65001])]);
    }

    #[test]
    fn local_v6_route_uses_v6_next_hop_self() {
        let r = Route {
            attrs: PathAttributes::default(),
            next_hop: NextHop::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        };
        let out = export(&r, Source::Local, false, true, &target(false)).expect("exported");
        assert_eq!(
            out.next_hop.address,
            "fd00:198:18::1".parse::<IpAddr>().expect("v6")
        );
    }

    #[test]
    fn import_loops_and_local_pref() {
        let r = learned([198, 18, 0, 9], vec![65001, 64512]);
        let id = Ipv4Addr::new(198, 18, 0, 1);
        assert_eq!(import(r, true, 64512, id, None), Err(Rejected::AsLoop));
        let r = learned([198, 18, 0, 9], vec![65001]);
        assert_eq!(
            import(r, true, 64512, id, None)
                .expect("ok")
                .attrs
                .local_pref,
            None
        );
        let mut r = learned([198, 18, 0, 9], vec![]);
        r.attrs.originator_id = Some(id);
        assert_eq!(
            import(r, false, 64512, id, None),
            Err(Rejected::OriginatorLoop)
        );
    }

    const CLUSTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);

    fn reflector_target(client: bool) -> ExportTarget {
        ExportTarget {
            cluster_id: Some(CLUSTER),
            client,
            ..target(false)
        }
    }

    fn from_ibgp(client: bool) -> RouteSource {
        RouteSource {
            source: Source::Peer(IpAddr::from([198, 18, 0, 9])),
            ebgp: false,
            client,
            peer_id: Ipv4Addr::new(198, 18, 0, 9),
        }
    }

    #[test]
    fn reflector_sends_client_routes_to_all_and_non_client_routes_to_clients() {
        let r = learned([198, 18, 0, 9], vec![]);
        // Client → client and client → non-client.
        assert!(export_from(&r, &from_ibgp(true), false, &reflector_target(true)).is_some());
        assert!(export_from(&r, &from_ibgp(true), false, &reflector_target(false)).is_some());
        // Non-client → client, never non-client → non-client.
        assert!(export_from(&r, &from_ibgp(false), false, &reflector_target(true)).is_some());
        assert!(export_from(&r, &from_ibgp(false), false, &reflector_target(false)).is_none());
        // Never back to the client it came from.
        let mut back = reflector_target(true);
        back.peer = IpAddr::from([198, 18, 0, 9]);
        assert!(export_from(&r, &from_ibgp(true), false, &back).is_none());
        // Without a cluster id nothing is reflected, even towards a "client".
        let plain = ExportTarget {
            client: true,
            ..target(false)
        };
        assert!(export_from(&r, &from_ibgp(true), false, &plain).is_none());
    }

    #[test]
    fn reflected_route_gets_originator_and_cluster_list_and_keeps_next_hop() {
        let mut r = learned([198, 18, 0, 9], vec![]);
        r.attrs.local_pref = Some(250);
        let out =
            export_from(&r, &from_ibgp(true), false, &reflector_target(true)).expect("reflected");
        assert_eq!(out.attrs.originator_id, Some(Ipv4Addr::new(198, 18, 0, 9)));
        assert_eq!(out.attrs.cluster_list, vec![CLUSTER]);
        assert_eq!(out.next_hop.address, IpAddr::from([198, 18, 0, 9]));
        assert_eq!(
            out.attrs.local_pref,
            Some(250),
            "LOCAL_PREF passes unchanged"
        );
        // Already reflected once: ORIGINATOR_ID is kept, our cluster id goes in front.
        let other = Ipv4Addr::new(198, 18, 0, 200);
        r.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 50));
        r.attrs.cluster_list = vec![other];
        let out =
            export_from(&r, &from_ibgp(false), false, &reflector_target(true)).expect("reflected");
        assert_eq!(out.attrs.originator_id, Some(Ipv4Addr::new(198, 18, 0, 50)));
        assert_eq!(out.attrs.cluster_list, vec![CLUSTER, other]);
    }

    #[test]
    fn reflector_treats_local_and_ebgp_routes_as_usual() {
        let local = Route {
            attrs: PathAttributes::default(),
            next_hop: NextHop::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        };
        let from_local = RouteSource {
            source: Source::Local,
            ebgp: false,
            client: false,
            peer_id: Ipv4Addr::UNSPECIFIED,
        };
        for client in [true, false] {
            let out = export_from(&local, &from_local, false, &reflector_target(client))
                .expect("local routes go to every iBGP peer");
            assert_eq!(out.attrs.originator_id, None);
            assert!(out.attrs.cluster_list.is_empty());
            assert_eq!(out.next_hop.address, IpAddr::from([198, 18, 0, 1]));
        }
        let r = learned([198, 18, 0, 9], vec![65001]);
        let from_ebgp = RouteSource {
            ebgp: true,
            ..from_ibgp(false)
        };
        let out = export_from(&r, &from_ebgp, false, &reflector_target(false)).expect("eBGP");
        assert_eq!(out.attrs.originator_id, None);
        assert!(out.attrs.cluster_list.is_empty());
        // A reflected route towards eBGP loses the reflection attributes.
        let mut r = learned([198, 18, 0, 9], vec![]);
        r.attrs.originator_id = Some(Ipv4Addr::new(198, 18, 0, 50));
        r.attrs.cluster_list = vec![CLUSTER];
        let to_ebgp = ExportTarget {
            cluster_id: Some(CLUSTER),
            ..target(true)
        };
        let out = export_from(&r, &from_ibgp(true), false, &to_ebgp).expect("to eBGP");
        assert_eq!(out.attrs.originator_id, None);
        assert!(out.attrs.cluster_list.is_empty());
    }

    #[test]
    fn reflector_refuses_its_own_cluster_id_and_its_own_originator_id() {
        let id = Ipv4Addr::new(198, 18, 0, 1);
        let mut r = learned([198, 18, 0, 9], vec![]);
        r.attrs.cluster_list = vec![Ipv4Addr::new(198, 18, 0, 200), CLUSTER];
        assert_eq!(
            import(r.clone(), false, 64512, id, Some(CLUSTER)),
            Err(Rejected::ClusterLoop)
        );
        // Another cluster's id, or no reflector role: accepted.
        assert!(import(
            r.clone(),
            false,
            64512,
            id,
            Some(Ipv4Addr::new(198, 18, 0, 7))
        )
        .is_ok());
        assert!(import(r.clone(), false, 64512, id, None).is_ok());
        r.attrs.cluster_list.clear();
        r.attrs.originator_id = Some(id);
        assert_eq!(
            import(r, false, 64512, id, Some(CLUSTER)),
            Err(Rejected::OriginatorLoop)
        );
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("prefix")
    }

    fn rule(s: &str) -> PrefixRule {
        s.parse().expect("rule")
    }

    #[test]
    fn an_entry_without_ge_or_le_matches_its_prefix_exactly() {
        let r = rule("10.244.0.0/16");
        assert!(r.matches(&net("10.244.0.0/16")));
        assert!(!r.matches(&net("10.244.1.0/24")), "longer");
        assert!(!r.matches(&net("10.0.0.0/8")), "shorter, covering");
        assert!(!r.matches(&net("10.245.0.0/16")), "same length, elsewhere");
        assert!(!r.matches(&net("fd00::/16")), "other family");
    }

    #[test]
    fn ge_and_le_bound_the_length_inside_the_prefix() {
        let le = rule("10.0.0.0/8 le 24");
        assert!(le.matches(&net("10.0.0.0/8")));
        assert!(le.matches(&net("10.1.2.0/24")));
        assert!(!le.matches(&net("10.1.2.0/25")));
        assert!(!le.matches(&net("11.0.0.0/24")));
        let ge = rule("10.0.0.0/8 ge 24");
        assert!(!ge.matches(&net("10.1.0.0/16")));
        assert!(ge.matches(&net("10.1.2.0/24")));
        assert!(ge.matches(&net("10.1.2.3/32")), "ge alone runs to /32");
        let both = rule("fd00:10:244::/48 ge 56 le 64");
        assert!(!both.matches(&net("fd00:10:244::/48")));
        assert!(both.matches(&net("fd00:10:244:100::/56")));
        assert!(both.matches(&net("fd00:10:244:1::/64")));
        assert!(!both.matches(&net("fd00:10:244:1::/122")));
        assert!(!both.matches(&net("10.0.0.0/8")));
        let any = rule("0.0.0.0/0 le 32");
        assert!(any.matches(&net("0.0.0.0/0")) && any.matches(&net("192.0.2.1/32")));
        assert!(
            !any.matches(&net("::/0")),
            "an IPv4 entry never matches IPv6"
        );
    }

    #[test]
    fn the_first_matching_entry_decides_and_no_match_is_denied() {
        let list = [
            rule("deny 10.244.0.0/16 le 32"),
            rule("10.0.0.0/8 le 24"),
            rule("permit 192.0.2.0/24"),
        ];
        assert!(
            !prefix_list_permits(&list, &net("10.244.1.0/24")),
            "deny first"
        );
        assert!(prefix_list_permits(&list, &net("10.1.0.0/16")));
        assert!(prefix_list_permits(&list, &net("192.0.2.0/24")));
        assert!(
            !prefix_list_permits(&list, &net("192.0.2.0/25")),
            "exact only"
        );
        assert!(
            !prefix_list_permits(&list, &net("172.16.0.0/12")),
            "no match"
        );
        assert!(prefix_list_permits(&[], &net("172.16.0.0/12")), "no list");
    }

    #[test]
    fn entries_parse_print_and_refuse_nonsense() {
        for ok in [
            "10.0.0.0/8",
            "deny 0.0.0.0/0",
            "10.0.0.0/8 ge 16 le 24",
            "::/0 le 128",
        ] {
            assert_eq!(rule(ok).to_string(), ok);
        }
        assert_eq!(
            rule("permit 10.0.0.0/8 le 24").to_string(),
            "10.0.0.0/8 le 24"
        );
        for bad in [
            "",
            "deny",
            "10.0.0.1/8",
            "10.0.0.0/8 le 7",
            "10.0.0.0/8 ge 33",
            "10.0.0.0/8 ge 24 le 16",
            "10.0.0.0/8 le",
            "10.0.0.0/8 le 24 le 25",
            "10.0.0.0/8 max 24",
            "allow 10.0.0.0/8",
        ] {
            assert!(bad.parse::<PrefixRule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn peer_policy_refuses_default_route_protected_prefixes_and_unlisted() {
        let open = PeerPolicy::default();
        assert_eq!(open.refuse(&net("0.0.0.0/0")), None);
        assert_eq!(open.refuse(&net("10.244.1.0/26")), None);
        let p = PeerPolicy {
            refuse_default_route: true,
            protected: vec![net("10.244.0.0/16"), net("fd00:10:244::/48")],
            import_prefixes: vec![rule("0.0.0.0/0 le 24"), rule("::/0 le 64")],
            ..Default::default()
        };
        assert_eq!(p.refuse(&net("0.0.0.0/0")), Some(Rejected::DefaultRoute));
        assert_eq!(p.refuse(&net("::/0")), Some(Rejected::DefaultRoute));
        assert_eq!(
            p.refuse(&net("10.244.1.0/24")),
            Some(Rejected::ProtectedPrefix)
        );
        assert_eq!(
            p.refuse(&net("10.244.0.0/16")),
            Some(Rejected::ProtectedPrefix)
        );
        assert_eq!(
            p.refuse(&net("fd00:10:244:1::/64")),
            Some(Rejected::ProtectedPrefix)
        );
        assert_eq!(
            p.refuse(&net("10.0.0.0/8")),
            None,
            "covering a pool is no hijack"
        );
        assert_eq!(p.refuse(&net("192.0.2.0/25")), Some(Rejected::ImportList));
        assert_eq!(p.refuse(&net("192.0.2.0/24")), None);
        assert!(p.exports(&net("10.244.1.0/26")), "no export list");
    }

    #[test]
    fn prepend_creates_sequence_before_set() {
        let mut p = vec![AsSegment::Set(vec![1, 2])];
        prepend(&mut p, 9);
        assert_eq!(p[0], AsSegment::Sequence(vec![9]));
    }
}
