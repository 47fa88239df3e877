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

use crate::message::{AsSegment, NextHop, PathAttributes};
use crate::rib::{Route, Source, DEFAULT_LOCAL_PREF};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The local side of a session, as export needs it.
#[derive(Debug, Clone, Copy)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Our AS is in the AS_PATH.
    AsLoop,
    /// ORIGINATOR_ID is our own router id.
    OriginatorLoop,
    /// Our cluster id is in the CLUSTER_LIST (we are a route reflector, RFC 4456 §8).
    ClusterLoop,
    /// The next hop is one of the local speaker's own or not usable.
    BadNextHop,
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

    #[test]
    fn prepend_creates_sequence_before_set() {
        let mut p = vec![AsSegment::Set(vec![1, 2])];
        prepend(&mut p, 9);
        assert_eq!(p[0], AsSegment::Sequence(vec![9]));
    }
}
