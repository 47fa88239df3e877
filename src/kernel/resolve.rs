//! Next hops: what a route message's next hops are, and how a BGP next hop resolves
//! through the route covering it (see "Next-hop resolution" in the module documentation).
//! Pure functions of route messages; the look-ups themselves are in `netlink.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteType, RouteVia,
};

use super::{netlink, NextHop, RTPROT_FERROVIA};

/// One resolved next hop, as installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Hop {
    pub gateway: IpAddr,
    pub ifindex: u32,
    pub onlink: bool,
}

/// What the kernel holds (or should hold) for one prefix of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Fib {
    Blackhole,
    /// Sorted, without duplicates, never empty.
    Via(Vec<Hop>),
    /// Something we never install (another route type, a next hop without gateway): it is
    /// always replaced or deleted.
    Other,
}

/// A next hop of a route message, before interpretation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawHop {
    pub gateway: Option<IpAddr>,
    pub ifindex: u32,
    pub onlink: bool,
}

/// How one next hop resolved.
#[derive(Debug, Clone)]
pub(super) struct Resolution {
    pub hops: Vec<Hop>,
    /// The covering route, if it is one of ours (a route may not resolve through itself).
    pub via_ours: Option<IpNet>,
}

/// The kernel route for `nhs` of `prefix`: the resolved hops (None if none resolve) and the
/// next hops that did not resolve.
pub(super) fn target_via(
    prefix: &IpNet,
    nhs: &[NextHop],
    resolved: &HashMap<NextHop, Result<Resolution, String>>,
) -> (Option<Fib>, Vec<IpAddr>) {
    let mut hops = Vec::new();
    let mut unresolved = Vec::new();
    for nh in nhs {
        let ok = match (prefix, nh.gateway) {
            // The kernel has no IPv6 routes via IPv4 gateways.
            (IpNet::V6(_), IpAddr::V4(_)) => None,
            _ => match resolved.get(nh) {
                Some(Ok(r)) if r.via_ours != Some(*prefix) => Some(&r.hops),
                _ => None,
            },
        };
        match ok {
            Some(h) => hops.extend(h.iter().copied()),
            None => unresolved.push(nh.gateway),
        }
    }
    hops.sort();
    hops.dedup();
    unresolved.sort();
    unresolved.dedup();
    let fib = if hops.is_empty() {
        None
    } else {
        Some(Fib::Via(hops))
    };
    (fib, unresolved)
}

/// Resolves next hop `gw` through its covering route (a FIB-match answer).
pub(super) fn resolve_through(covering: &RouteMessage, gw: IpAddr) -> Result<Resolution, String> {
    let prefix = netlink::route_prefix(covering);
    let shown = prefix.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    match covering.header.kind {
        RouteType::Unicast => {
            let raw = raw_hops(covering);
            let mut hops = Vec::with_capacity(raw.len());
            for h in raw {
                if h.ifindex == 0 {
                    continue;
                }
                hops.push(match h.gateway {
                    // Connected: the next hop itself is on this link.
                    None => Hop {
                        gateway: gw,
                        ifindex: h.ifindex,
                        onlink: false,
                    },
                    Some(g) => Hop {
                        gateway: g,
                        ifindex: h.ifindex,
                        onlink: h.onlink,
                    },
                });
            }
            if hops.is_empty() {
                return Err(format!(
                    "the route to {gw} ({shown}) has no usable next hop"
                ));
            }
            hops.sort();
            hops.dedup();
            let ours = u8::from(covering.header.protocol) == RTPROT_FERROVIA;
            Ok(Resolution {
                hops,
                via_ours: if ours { prefix } else { None },
            })
        }
        RouteType::Local => Err(format!("{gw} is an address of this node")),
        other => Err(format!("{gw} is covered by a {other:?} route ({shown})")),
    }
}

pub(super) fn raw_hops(r: &RouteMessage) -> Vec<RawHop> {
    for a in &r.attributes {
        if let RouteAttribute::MultiPath(nhs) = a {
            return nhs
                .iter()
                .map(|nh| RawHop {
                    gateway: nh.attributes.iter().find_map(gateway_of),
                    ifindex: nh.interface_index,
                    onlink: nh.flags.contains(RouteNextHopFlags::Onlink),
                })
                .collect();
        }
    }
    let ifindex = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    });
    match ifindex {
        Some(ifindex) => vec![RawHop {
            gateway: r.attributes.iter().find_map(gateway_of),
            ifindex,
            onlink: r.header.flags.contains(RouteFlags::Onlink),
        }],
        None => Vec::new(),
    }
}

pub(super) fn gateway_of(a: &RouteAttribute) -> Option<IpAddr> {
    match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
        RouteAttribute::Via(RouteVia::Inet(g)) => Some(IpAddr::V4(*g)),
        RouteAttribute::Via(RouteVia::Inet6(g)) => Some(IpAddr::V6(*g)),
        _ => None,
    }
}

/// What one of our dumped routes is.
pub(super) fn fib_of(r: &RouteMessage) -> Fib {
    match r.header.kind {
        RouteType::BlackHole => Fib::Blackhole,
        RouteType::Unicast => {
            let raw = raw_hops(r);
            let mut hops = Vec::with_capacity(raw.len());
            for h in raw {
                match h.gateway {
                    Some(gateway) => hops.push(Hop {
                        gateway,
                        ifindex: h.ifindex,
                        onlink: h.onlink,
                    }),
                    None => return Fib::Other,
                }
            }
            if hops.is_empty() {
                return Fib::Other;
            }
            hops.sort();
            hops.dedup();
            Fib::Via(hops)
        }
        _ => Fib::Other,
    }
}

pub(super) fn route_metric(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

pub(super) fn is_link_local(v6: &Ipv6Addr) -> bool {
    (v6.segments()[0] & 0xffc0) == 0xfe80
}
