//! Node address autodetection (`node.addressAutodetection`), per family, the way operators
//! know it from other agents:
//!
//! - `first-found`: the first global address on an interface that is up, in interface index
//!   order, skipping loopback, pod veths (ours and other CNIs'), and docker-like bridges;
//! - `interface=REGEX`: the first address on an interface whose name matches REGEX;
//! - `skip-interface=REGEX`: like `first-found`, also skipping interfaces that match REGEX;
//! - `can-reach=ADDRESS`: the source address the kernel picks to reach ADDRESS (a UDP
//!   "connect", no packet sent);
//! - `cidr=CIDR[,CIDR]`: the first address inside one of the CIDRs;
//! - `kubernetes-internal-ip`: the Node's InternalIP of the family, from its
//!   `status.addresses` (Kubernetes datastore only; see [`internal_ip`]);
//! - `none`: the family is not autodetected (as if left out).
//!
//! Addresses inside the IPAM pools, link-local addresses and addresses of interfaces that
//! are down are never chosen. What was chosen and why is returned as [`Detected`], which the
//! agent logs and shows in `ferrovia status`; the interface's MTU is the pods' default MTU.

use crate::kernel::netlink::{self, blocking::Rtnl};
use ipnet::IpNet;
use regex::Regex;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr, UdpSocket};

/// Interface names `first-found` and `skip-interface` never pick: loopback, pod veths
/// (ferrovia's `fv…`, Calico's `cali…`, generic `veth…`), container bridges and overlay
/// devices of other network plugins.
pub const SKIPPED_INTERFACES: &str = r"^(lo|fv[0-9a-f]+|veth.*|cali.*|docker.*|br-.*|cbr.*|cni.*|virbr.*|lxcbr.*|lxc.*|podman.*|flannel.*|vxlan.*|tunl.*|kube-ipvs.*|cilium.*|nodelocaldns.*|dummy.*)$";

/// An autodetection method, parsed from its configuration text.
#[derive(Debug, Clone)]
pub enum Method {
    FirstFound,
    Interface(Regex),
    SkipInterface(Regex),
    CanReach(IpAddr),
    Cidr(Vec<IpNet>),
    KubernetesInternalIp,
    /// The family is not autodetected.
    None,
}

impl Method {
    /// Parses `first-found`, `interface=REGEX`, `skip-interface=REGEX`,
    /// `can-reach=ADDRESS`, `cidr=CIDR[,CIDR]` or `kubernetes-internal-ip` for family `v4`
    /// (IPv4) or not (IPv6); the error says what is wrong and what is accepted.
    pub fn parse(text: &str, v4: bool) -> Result<Method, String> {
        let fam = if v4 { "IPv4" } else { "IPv6" };
        let text = text.trim();
        let regex =
            |r: &str| Regex::new(r).map_err(|e| format!("{r:?} is not a regular expression: {e}"));
        let (name, arg) = match text.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (text, None),
        };
        match (name, arg) {
            ("first-found", None) => Ok(Method::FirstFound),
            ("kubernetes-internal-ip", None) => Ok(Method::KubernetesInternalIp),
            ("none", None) => Ok(Method::None),
            ("interface", Some(r)) if !r.is_empty() => Ok(Method::Interface(regex(r)?)),
            ("skip-interface", Some(r)) if !r.is_empty() => Ok(Method::SkipInterface(regex(r)?)),
            ("can-reach", Some(a)) => {
                let ip: IpAddr = a.parse().map_err(|_| {
                    format!(
                        "can-reach takes an address, e.g. can-reach=198.18.0.254; {a:?} is not one"
                    )
                })?;
                if ip.is_ipv4() != v4 {
                    return Err(format!("can-reach={ip} is not an {fam} address"));
                }
                Ok(Method::CanReach(ip))
            }
            ("cidr", Some(list)) => {
                let mut nets = Vec::new();
                for c in list.split(',') {
                    let n: IpNet = c.trim().parse().map_err(|_| {
                        format!("cidr takes CIDRs separated by commas, e.g. cidr=198.18.0.0/16; {c:?} is not one")
                    })?;
                    if matches!(n, IpNet::V4(_)) != v4 {
                        return Err(format!("cidr={n} is not an {fam} network"));
                    }
                    nets.push(n);
                }
                Ok(Method::Cidr(nets))
            }
            _ => Err(format!(
                "{text:?} is not an autodetection method: use first-found, interface=REGEX, \
                 skip-interface=REGEX, can-reach=ADDRESS, cidr=CIDR[,CIDR], \
                 kubernetes-internal-ip or none"
            )),
        }
    }
}

/// One address of the node: where it came from and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detected {
    pub address: IpAddr,
    /// The interface holding it, when found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// That interface's MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `configured` (node.addresses) or the autodetection method's text.
    pub method: String,
    /// Why this address, in words.
    pub reason: String,
}

/// An address on an interface, as the kernel lists them.
#[derive(Debug, Clone)]
pub struct IfAddr {
    pub index: u32,
    pub interface: String,
    pub up: bool,
    pub mtu: u32,
    pub address: IpAddr,
}

/// Every address of this network namespace with its interface, in interface index order.
pub fn addresses() -> Result<Vec<IfAddr>, String> {
    let nl = |e: std::io::Error| format!("reading interfaces over netlink: {e}");
    let mut rtnl = Rtnl::open().map_err(nl)?;
    let links = rtnl
        .dump(netlink::get_links())
        .map_err(nl)?
        .map_err(|n| format!("the kernel refused to list interfaces: {}", n.describe()))?;
    let links: Vec<LinkMessage> = links
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
        let msgs = rtnl
            .dump(netlink::get_addresses(fam, 0))
            .map_err(nl)?
            .map_err(|n| format!("the kernel refused to list addresses: {}", n.describe()))?;
        for m in msgs {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            let Some(address) = address_of(&a) else {
                continue;
            };
            let Some(link) = links.iter().find(|l| l.header.index == a.header.index) else {
                continue;
            };
            out.push(IfAddr {
                index: a.header.index,
                interface: netlink::link_name(link).unwrap_or_default().to_string(),
                up: link.header.flags.contains(LinkFlags::Up),
                // Loopback's MTU says nothing about the path toward the peers (a router id
                // on lo is common): none.
                mtu: if link.header.flags.contains(LinkFlags::Loopback) {
                    0
                } else {
                    link.attributes
                        .iter()
                        .find_map(|x| match x {
                            LinkAttribute::Mtu(m) => Some(*m),
                            _ => None,
                        })
                        .unwrap_or(0)
                },
                address,
            });
        }
    }
    out.sort_by_key(|a| a.index);
    Ok(out)
}

fn address_of(a: &AddressMessage) -> Option<IpAddr> {
    // IPv4: IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on
    // point-to-point links); IPv6 has IFA_ADDRESS only.
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// Link-local, loopback, unspecified and multicast addresses never identify a node.
fn usable(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            !(a.is_loopback() || a.is_link_local() || a.is_unspecified() || a.is_multicast())
        }
        IpAddr::V6(a) => {
            !(a.is_loopback()
                || a.is_unspecified()
                || a.is_multicast()
                || (a.segments()[0] & 0xffc0) == 0xfe80)
        }
    }
}

/// Chooses the address of one family with `method` among `candidates` (see [`addresses`]);
/// addresses inside `pools` are never chosen. `text` is the method as configured.
pub fn choose(
    method: &Method,
    text: &str,
    v4: bool,
    candidates: &[IfAddr],
    pools: &[IpNet],
) -> Result<Detected, String> {
    let fam = if v4 { "IPv4" } else { "IPv6" };
    let skipped = Regex::new(SKIPPED_INTERFACES).map_err(|e| e.to_string())?;
    let eligible = candidates.iter().filter(|c| {
        c.address.is_ipv4() == v4
            && c.up
            && usable(&c.address)
            && !pools.iter().any(|p| p.contains(&c.address))
    });
    let found = |c: &IfAddr, reason: String| Detected {
        address: c.address,
        interface: Some(c.interface.clone()),
        mtu: (c.mtu > 0).then_some(c.mtu),
        method: text.to_string(),
        reason,
    };
    let none = |what: String| {
        let seen: Vec<String> = candidates
            .iter()
            .filter(|c| c.address.is_ipv4() == v4)
            .map(|c| {
                format!(
                    "{} on {}{}",
                    c.address,
                    c.interface,
                    if c.up { "" } else { " (down)" }
                )
            })
            .collect();
        format!(
            "{fam} autodetection {text:?} found no address: {what} (the node has {}); \
             fix node.addressAutodetection or give the address in node.addresses",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        )
    };
    match method {
        Method::FirstFound => {
            let mut e = eligible.filter(|c| !skipped.is_match(&c.interface));
            e.next()
                .map(|c| found(c, format!("first global {fam} address on an interface that is up, skipping loopback, pod veths and container bridges")))
                .ok_or_else(|| none("no interface that is up has a global address outside the pools".into()))
        }
        Method::SkipInterface(r) => {
            let mut e =
                eligible.filter(|c| !skipped.is_match(&c.interface) && !r.is_match(&c.interface));
            e.next()
                .map(|c| {
                    found(
                        c,
                        format!(
                            "first global {fam} address on an interface not matching {:?}",
                            r.as_str()
                        ),
                    )
                })
                .ok_or_else(|| {
                    none(format!(
                        "every interface with an address matches {:?} or is skipped",
                        r.as_str()
                    ))
                })
        }
        Method::Interface(r) => {
            let mut e = eligible.filter(|c| r.is_match(&c.interface));
            e.next()
                .map(|c| {
                    found(
                        c,
                        format!(
                            "first global {fam} address on an interface matching {:?}",
                            r.as_str()
                        ),
                    )
                })
                .ok_or_else(|| {
                    none(format!(
                        "no interface that is up and matches {:?} has one",
                        r.as_str()
                    ))
                })
        }
        Method::Cidr(nets) => {
            let mut e = eligible.filter(|c| nets.iter().any(|n| n.contains(&c.address)));
            let list: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
            e.next()
                .map(|c| found(c, format!("first address inside {}", list.join(", "))))
                .ok_or_else(|| none(format!("no address inside {}", list.join(", "))))
        }
        Method::CanReach(dst) => {
            let src =
                source_toward(*dst).map_err(|e| none(format!("no route toward {dst}: {e}")))?;
            match candidates.iter().find(|c| c.address == src) {
                Some(c) => Ok(found(
                    c,
                    format!("the source address the kernel uses toward {dst}"),
                )),
                None => Err(none(format!(
                    "the kernel's source toward {dst} is {src}, on no interface"
                ))),
            }
        }
        Method::None => Err(format!("{fam} autodetection is off (none)")),
        Method::KubernetesInternalIp => Err(format!(
            "{fam} autodetection kubernetes-internal-ip reads the Node object, not the \
             interfaces (an internal error: the agent resolves it with the Node's addresses)"
        )),
    }
}

/// `kubernetes-internal-ip`: the first of the Node's InternalIP addresses (`internal`, from
/// its `status.addresses`) of the family, with the interface holding it when there is one.
pub fn internal_ip(
    node: &str,
    internal: &[IpAddr],
    v4: bool,
    candidates: &[IfAddr],
) -> Result<Detected, String> {
    let fam = if v4 { "IPv4" } else { "IPv6" };
    let Some(ip) = internal.iter().copied().find(|a| a.is_ipv4() == v4) else {
        let seen: Vec<String> = internal.iter().map(ToString::to_string).collect();
        return Err(format!(
            "{fam} autodetection kubernetes-internal-ip found no address: the Node {node:?} has \
             no {fam} InternalIP in status.addresses (it has {}); the kubelet sets them \
             (--node-ip), or give the address in node.addresses or another method",
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ));
    };
    let mut d = configured(ip, candidates);
    d.method = "kubernetes-internal-ip".into();
    d.reason = format!("the {fam} InternalIP in status.addresses of the Node {node:?}");
    Ok(d)
}

/// The source address the kernel would use toward `dst` (a connected UDP socket: the route
/// lookup happens, nothing is sent).
fn source_toward(dst: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => "0.0.0.0:0".parse().map_err(std::io::Error::other)?,
        IpAddr::V6(_) => "[::]:0".parse().map_err(std::io::Error::other)?,
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(SocketAddr::new(dst, 9))?;
    Ok(s.local_addr()?.ip())
}

/// The configured address `ip`, with its interface and MTU when one of `candidates` holds it.
pub fn configured(ip: IpAddr, candidates: &[IfAddr]) -> Detected {
    let c = candidates.iter().find(|c| c.address == ip);
    Detected {
        address: ip,
        interface: c.map(|c| c.interface.clone()),
        mtu: c.and_then(|c| (c.mtu > 0).then_some(c.mtu)),
        method: "configured".into(),
        reason: match c {
            Some(c) => format!("node.addresses; held by {}", c.interface),
            None => "node.addresses; held by no interface of this node".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(index: u32, ifname: &str, up: bool, mtu: u32, ip: &str) -> IfAddr {
        IfAddr {
            index,
            interface: ifname.into(),
            up,
            mtu,
            address: ip.parse().unwrap(),
        }
    }

    fn node() -> Vec<IfAddr> {
        vec![
            a(1, "lo", true, 65536, "127.0.0.1"),
            a(1, "lo", true, 65536, "::1"),
            a(2, "docker0", true, 1500, "172.17.0.1"),
            a(3, "fv0123456789abc", true, 1500, "169.254.1.1"),
            a(4, "down0", false, 1500, "198.18.9.9"),
            a(5, "pod0", true, 1500, "10.244.1.1"),
            a(6, "eth0", true, 9000, "198.18.0.1"),
            a(6, "eth0", true, 9000, "fe80::1"),
            a(6, "eth0", true, 9000, "fd00:198:18::1"),
            a(7, "eth1", true, 1500, "198.19.0.1"),
        ]
    }

    fn pick(text: &str, v4: bool) -> Result<Detected, String> {
        let m = Method::parse(text, v4)?;
        choose(&m, text, v4, &node(), &["10.244.0.0/16".parse().unwrap()])
    }

    #[test]
    fn methods_choose_as_documented() {
        let d = pick("first-found", true).unwrap();
        assert_eq!(
            (d.address.to_string(), d.interface.as_deref(), d.mtu),
            ("198.18.0.1".into(), Some("eth0"), Some(9000))
        );
        assert!(d.reason.contains("skipping"), "{}", d.reason);
        assert_eq!(
            pick("first-found", false).unwrap().address.to_string(),
            "fd00:198:18::1"
        );
        assert_eq!(
            pick("interface=eth1", true).unwrap().address.to_string(),
            "198.19.0.1"
        );
        assert_eq!(
            pick("interface=eth.*", true).unwrap().interface.as_deref(),
            Some("eth0")
        );
        assert_eq!(
            pick("skip-interface=eth0", true)
                .unwrap()
                .address
                .to_string(),
            "198.19.0.1"
        );
        assert_eq!(
            pick("cidr=192.0.2.0/24, 198.19.0.0/16", true)
                .unwrap()
                .address
                .to_string(),
            "198.19.0.1"
        );
        // Down interfaces, pools and docker bridges are never chosen, even when asked for.
        assert!(pick("interface=down0", true).is_err());
        assert!(pick("interface=pod0", true).is_err());
        let e = pick("cidr=10.0.0.0/8", true).unwrap_err();
        assert!(
            e.contains("node.addresses") && e.contains("172.17.0.1 on docker0"),
            "{e}"
        );
        assert!(pick("kubernetes-internal-ip", true)
            .unwrap_err()
            .contains("reads the Node object"));
    }

    #[test]
    fn kubernetes_internal_ip_takes_the_family_from_the_node_addresses() {
        let internal: Vec<IpAddr> = vec![
            "198.19.0.1".parse().unwrap(),
            "fd00:198:18::1".parse().unwrap(),
        ];
        let d = internal_ip("n1", &internal, true, &node()).unwrap();
        assert_eq!(
            (d.address.to_string(), d.interface.as_deref(), d.mtu),
            ("198.19.0.1".into(), Some("eth1"), Some(1500))
        );
        assert_eq!(d.method, "kubernetes-internal-ip");
        assert!(d.reason.contains("InternalIP"), "{}", d.reason);
        let d = internal_ip("n1", &internal, false, &node()).unwrap();
        assert_eq!(d.address.to_string(), "fd00:198:18::1");
        // Held by no interface here: still the Node's word, without an interface.
        let d = internal_ip("n1", &["203.0.113.7".parse().unwrap()], true, &node()).unwrap();
        assert_eq!(
            (d.address.to_string(), d.interface),
            ("203.0.113.7".into(), None)
        );
        let e = internal_ip("n1", &internal[..1], false, &node()).unwrap_err();
        assert!(
            e.contains("no IPv6 InternalIP") && e.contains("198.19.0.1"),
            "{e}"
        );
    }

    #[test]
    fn bad_methods_are_refused_with_what_is_accepted() {
        for (text, v4, needle) in [
            ("first", true, "first-found, interface=REGEX"),
            ("interface=", true, "not an autodetection method"),
            ("interface=(", true, "not a regular expression"),
            ("can-reach=nowhere", true, "can-reach takes an address"),
            ("can-reach=fd00::1", true, "not an IPv4 address"),
            ("cidr=198.18.0.0/16", false, "not an IPv6 network"),
            ("cidr=198.18.0.0", true, "cidr takes CIDRs"),
        ] {
            let e = Method::parse(text, v4).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
