//! Import and export rules (RFC 4271 §9.1.1, §9.1.3, §9.2, §5.1).
//!
//! Import: own-AS loop detection on eBGP, ORIGINATOR_ID loop detection on iBGP (RFC 4456),
//! LOCAL_PREF only trusted from iBGP peers. Export: no route back to the peer it came
//! from, no iBGP-learned route to another iBGP peer, AS_PATH prepend and next-hop-self
//! towards eBGP peers, MED not passed between autonomous systems.

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
}

/// Why an imported route was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Our AS is in the AS_PATH.
    AsLoop,
    /// ORIGINATOR_ID is our own router id.
    OriginatorLoop,
    /// The next hop is one of the local speaker's own or not usable.
    BadNextHop,
}

/// Import policy: returns the attributes to store, or why the route is refused
/// (a refused route is treated as withdrawn).
pub fn import(
    mut route: Route,
    ebgp: bool,
    local_as: u32,
    local_id: Ipv4Addr,
) -> Result<Route, Rejected> {
    if ebgp {
        if route.attrs.as_path_contains(local_as) {
            return Err(Rejected::AsLoop);
        }
        // LOCAL_PREF from another AS is meaningless (RFC 4271 §5.1.5).
        route.attrs.local_pref = None;
    } else if route.attrs.originator_id == Some(local_id) {
        return Err(Rejected::OriginatorLoop);
    }
    if route.next_hop.address.is_unspecified() || route.next_hop.address.is_multicast() {
        return Err(Rejected::BadNextHop);
    }
    Ok(route)
}

/// Export policy: the route as it must be advertised to `target`, or None when it must
/// not be advertised there. `source_ebgp` says whether the route was learned over eBGP.
pub fn export(
    route: &Route,
    source: Source,
    source_ebgp: bool,
    is_v6: bool,
    target: &ExportTarget,
) -> Option<Route> {
    if source == Source::Peer(target.peer) {
        return None;
    }
    let from_ibgp = matches!(source, Source::Peer(_)) && !source_ebgp;
    if from_ibgp && !target.ebgp {
        return None;
    }
    let local = source == Source::Local;
    let mut attrs: PathAttributes = route.attrs.clone();
    let mut next_hop = route.next_hop;
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
        assert_eq!(import(r, true, 64512, id), Err(Rejected::AsLoop));
        let r = learned([198, 18, 0, 9], vec![65001]);
        assert_eq!(
            import(r, true, 64512, id).expect("ok").attrs.local_pref,
            None
        );
        let mut r = learned([198, 18, 0, 9], vec![]);
        r.attrs.originator_id = Some(id);
        assert_eq!(import(r, false, 64512, id), Err(Rejected::OriginatorLoop));
    }

    #[test]
    fn prepend_creates_sequence_before_set() {
        let mut p = vec![AsSegment::Set(vec![1, 2])];
        prepend(&mut p, 9);
        assert_eq!(p[0], AsSegment::Sequence(vec![9]));
    }
}
