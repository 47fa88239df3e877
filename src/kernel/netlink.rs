//! ferrovia's one rtnetlink stack: every rtnetlink message the agent sends — the route
//! table's routes, pod wiring's links, addresses and routes, the CNI GC's link deletions — is
//! built and sent here, and every answer is read here.
//!
//! Two sockets, for two kinds of caller:
//! - [`conn::Netlink`]: an asynchronous `netlink-proto` connection on the agent's runtime,
//!   pipelining large batches of route changes with a bounded window (the route table,
//!   `kernel/mod.rs`);
//! - [`blocking::Rtnl`]: a blocking socket for short-lived threads that change network
//!   namespace (pod wiring): a socket belongs to the namespace of the thread that opens it,
//!   and the agent's runtime threads never change namespace.
//!
//! Both share what lies on the wire: the message builders and readers below, the errno
//! values the callers tell apart ([`EEXIST`], [`ENODEV`]...), and the kernel's extended-ack
//! text in refusals ([`ext_ack_text`]).

pub(crate) mod blocking;
mod conn;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::io::RawFd;

use ipnet::IpNet;
use rtnetlink::packet_core::{DefaultNla, NetlinkMessage, NLM_F_REQUEST};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecUnspec, InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteNextHop,
    RouteNextHopFlags, RouteProtocol, RouteScope, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

use super::resolve::Fib;
use super::RTPROT_FERROVIA;

pub(super) use conn::{Msg, Netlink, NlError, Rejection, RCVBUF};

/// Errno values callers tell apart (positive, as [`Rejection`] and
/// [`blocking::Nack`] carry them).
pub(crate) const EPERM: i32 = libc::EPERM;
pub(crate) const ENOENT: i32 = libc::ENOENT;
pub(crate) const ESRCH: i32 = libc::ESRCH;
pub(crate) const EACCES: i32 = libc::EACCES;
pub(crate) const EEXIST: i32 = libc::EEXIST;
pub(crate) const ENODEV: i32 = libc::ENODEV;

/// The main routing table.
pub(crate) const MAIN_TABLE: u32 = libc::RT_TABLE_MAIN as u32;
/// `proto boot`: what `ip route add` gives a route.
pub(crate) const RTPROT_BOOT: u8 = libc::RTPROT_BOOT;

const RTM_NEWROUTE: u16 = libc::RTM_NEWROUTE;
const RTM_DELROUTE: u16 = libc::RTM_DELROUTE;
/// NLMSGERR_ATTR_MSG (linux/netlink.h, not in libc): the extended ack's text.
const NLMSGERR_ATTR_MSG: u16 = 1;
/// Flags of an NLMSG_ERROR answer: the echoed request is cut to its header; TLVs follow.
const NLM_F_CAPPED: u16 = libc::NLM_F_CAPPED as u16;
const NLM_F_ACK_TLVS: u16 = libc::NLM_F_ACK_TLVS as u16;
/// The length of a netlink message header.
const NLMSG_HDRLEN: usize = 16;
/// IFLA_INET_CONF and IPV4_DEVCONF_FORWARDING (include/uapi/linux/if_link.h, ip.h).
const IFLA_INET_CONF: u16 = 1;
const IPV4_DEVCONF_FORWARDING: u16 = 1;

/// How the kernel refused something: the errno's text and, if it sent one, its
/// extended-ack text.
pub(crate) fn describe(errno: i32, text: Option<&str>) -> String {
    let base = std::io::Error::from_raw_os_error(errno).to_string();
    match text {
        Some(t) => format!("{base}: {t}"),
        None => base,
    }
}

// ----- addresses and families -----

pub(crate) fn family_of(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

pub(crate) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

// ----- routes -----

/// `rtm_table` for a table id: the id itself below 256, else RT_TABLE_COMPAT (the real id
/// goes in RTA_TABLE, which we always send too).
pub(crate) fn header_table(table: u32) -> u8 {
    u8::try_from(table).unwrap_or(libc::RT_TABLE_COMPAT)
}

/// The table of a route message: RTA_TABLE if present, else the header's.
pub(crate) fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The destination prefix of a route message.
pub(crate) fn route_prefix(r: &RouteMessage) -> Option<ipnet::IpNet> {
    let len = r.header.destination_prefix_length;
    let dst = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(d) => route_ip(d),
        _ => None,
    });
    let dst = match (r.header.address_family, dst) {
        (_, Some(d)) => d,
        (AddressFamily::Inet, None) if len == 0 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (AddressFamily::Inet6, None) if len == 0 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    ipnet::IpNet::new(dst, len).ok()
}

/// The header of a route message about `prefix` in `table` with `protocol`.
pub(crate) fn route_header(prefix: &ipnet::IpNet, table: u32, protocol: u8) -> RouteHeader {
    RouteHeader {
        address_family: family_of(prefix.addr()),
        destination_prefix_length: prefix.prefix_len(),
        table: header_table(table),
        protocol: RouteProtocol::from(protocol),
        ..Default::default()
    }
}

/// A unicast route in the main table to `dst/len` out of interface `oif`, via `gateway` if
/// given (else a device route).
pub(crate) fn new_device_route(
    dst: IpAddr,
    len: u8,
    gateway: Option<IpAddr>,
    oif: u32,
    scope: RouteScope,
    protocol: u8,
) -> RouteNetlinkMessage {
    let mut rm = RouteMessage::default();
    rm.header = RouteHeader {
        address_family: family_of(dst),
        destination_prefix_length: len,
        table: header_table(MAIN_TABLE),
        protocol: RouteProtocol::from(protocol),
        scope,
        kind: RouteType::Unicast,
        ..Default::default()
    };
    if len > 0 {
        rm.attributes.push(RouteAttribute::Destination(dst.into()));
    }
    if let Some(gw) = gateway {
        rm.attributes.push(RouteAttribute::Gateway(gw.into()));
    }
    rm.attributes.push(RouteAttribute::Oif(oif));
    RouteNetlinkMessage::NewRoute(rm)
}

/// A look-up of the FIB entry a packet to `dst` (out of `oif`, if given) would match, as
/// `ip route get fibmatch` shows it.
pub(crate) fn get_fib_match(dst: IpAddr, oif: Option<u32>) -> RouteNetlinkMessage {
    let mut rm = RouteMessage::default();
    rm.header.address_family = family_of(dst);
    rm.header.destination_prefix_length = if dst.is_ipv4() { 32 } else { 128 };
    rm.header.flags = RouteFlags::FibMatch;
    rm.attributes.push(RouteAttribute::Destination(dst.into()));
    if let Some(oif) = oif {
        rm.attributes.push(RouteAttribute::Oif(oif));
    }
    RouteNetlinkMessage::GetRoute(rm)
}

/// A request for every route of `family` in the main table (a dump).
pub(crate) fn get_main_routes(family: AddressFamily) -> RouteNetlinkMessage {
    let mut rm = RouteMessage::default();
    rm.header.address_family = family;
    rm.header.table = header_table(MAIN_TABLE);
    rm.attributes.push(RouteAttribute::Table(MAIN_TABLE));
    RouteNetlinkMessage::GetRoute(rm)
}

/// Creates or replaces (per `flags`) our route to `prefix` in `table` at `metric`.
pub(super) fn new_route(prefix: &IpNet, table: u32, metric: u32, fib: &Fib, flags: u16) -> Msg {
    let mut rm = RouteMessage::default();
    rm.header = route_header(prefix, table, RTPROT_FERROVIA);
    rm.header.scope = RouteScope::Universe;
    if prefix.prefix_len() > 0 {
        rm.attributes
            .push(RouteAttribute::Destination(prefix.addr().into()));
    }
    rm.attributes.push(RouteAttribute::Table(table));
    rm.attributes.push(RouteAttribute::Priority(metric));
    match fib {
        Fib::Blackhole | Fib::Other => rm.header.kind = RouteType::BlackHole,
        Fib::Via(hops) => {
            rm.header.kind = RouteType::Unicast;
            if let [hop] = hops.as_slice() {
                rm.attributes.push(gateway_attr(prefix, hop.gateway));
                rm.attributes.push(RouteAttribute::Oif(hop.ifindex));
                if hop.onlink {
                    rm.header.flags = RouteFlags::Onlink;
                }
            } else {
                let nhs = hops
                    .iter()
                    .map(|hop| {
                        let mut nh = RouteNextHop::default();
                        nh.interface_index = hop.ifindex;
                        if hop.onlink {
                            nh.flags = RouteNextHopFlags::Onlink;
                        }
                        nh.attributes.push(gateway_attr(prefix, hop.gateway));
                        nh
                    })
                    .collect();
                rm.attributes.push(RouteAttribute::MultiPath(nhs));
            }
        }
    }
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::NewRoute(rm));
    msg.header.flags = NLM_F_REQUEST | flags;
    msg
}

/// Deletes our route to `prefix` in `table` at `metric` (the protocol makes sure it is ours).
pub(super) fn del_route(prefix: &IpNet, table: u32, metric: u32) -> Msg {
    let mut rm = RouteMessage::default();
    rm.header = route_header(prefix, table, RTPROT_FERROVIA);
    // Any scope and type; the protocol (and metric) make sure it is ours.
    rm.header.scope = RouteScope::NoWhere;
    rm.header.kind = RouteType::Unspec;
    if prefix.prefix_len() > 0 {
        rm.attributes
            .push(RouteAttribute::Destination(prefix.addr().into()));
    }
    rm.attributes.push(RouteAttribute::Table(table));
    rm.attributes.push(RouteAttribute::Priority(metric));
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::DelRoute(rm));
    msg.header.flags = NLM_F_REQUEST;
    msg
}

/// RTA_GATEWAY for a next hop of the prefix's family, RTA_VIA otherwise (IPv4 via IPv6).
fn gateway_attr(prefix: &IpNet, gw: IpAddr) -> RouteAttribute {
    match (prefix, gw) {
        (IpNet::V4(_), IpAddr::V6(v6)) => RouteAttribute::Via(RouteVia::Inet6(v6)),
        _ => RouteAttribute::Gateway(gw.into()),
    }
}

// ----- links -----

/// A link message about interface `index`, without attributes.
pub(crate) fn link_msg(index: u32) -> LinkMessage {
    let mut lm = LinkMessage::default();
    lm.header.index = index;
    lm
}

/// A link message about the interface named `name`.
pub(crate) fn link_named(name: &str) -> LinkMessage {
    let mut lm = LinkMessage::default();
    lm.attributes.push(LinkAttribute::IfName(name.to_string()));
    lm
}

/// A request for interface `name`.
pub(crate) fn get_link_named(name: &str) -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(link_named(name))
}

/// A request for interface `index`.
pub(crate) fn get_link(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(link_msg(index))
}

/// A request for every interface (a dump).
pub(crate) fn get_links() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(LinkMessage::default())
}

/// Deletes interface `index` (a veth takes its peer with it).
pub(crate) fn del_link(index: u32) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelLink(link_msg(index))
}

/// Deletes interface `name` (a veth takes its peer with it).
pub(crate) fn del_link_named(name: &str) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelLink(link_named(name))
}

/// A veth pair, both ends down: `host` here with `mac`, its peer `peer` created directly in
/// the network namespace `peer_ns`, both with `mtu`. (Not up yet: the kernel refuses to
/// open a veth end before its peer is attached, ENOTCONN.)
pub(crate) fn new_veth_pair(
    host: &str,
    mac: &[u8],
    peer: &str,
    peer_ns: RawFd,
    mtu: u32,
) -> RouteNetlinkMessage {
    let mut peer_msg = LinkMessage::default();
    peer_msg.attributes = vec![
        LinkAttribute::IfName(peer.to_string()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::NetNsFd(peer_ns),
    ];
    let mut lm = LinkMessage::default();
    lm.attributes = vec![
        LinkAttribute::IfName(host.to_string()),
        LinkAttribute::Address(mac.to_vec()),
        LinkAttribute::Mtu(mtu),
        LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
        ]),
    ];
    RouteNetlinkMessage::NewLink(lm)
}

/// Sets per-family settings (IFLA_AF_SPEC) of interface `index`.
pub(crate) fn set_af_spec(index: u32, af: Vec<AfSpecUnspec>) -> RouteNetlinkMessage {
    let mut lm = link_msg(index);
    lm.attributes.push(LinkAttribute::AfSpecUnspec(af));
    RouteNetlinkMessage::SetLink(lm)
}

/// Sets interface `index` up.
pub(crate) fn set_up(index: u32) -> RouteNetlinkMessage {
    let mut lm = link_msg(index);
    lm.header.flags = LinkFlags::Up;
    lm.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(lm)
}

/// IFLA_INET_CONF { IPV4_DEVCONF_FORWARDING: 0 } (the library's request form leaves zeros
/// out).
pub(crate) fn inet_conf_forwarding_off() -> AfSpecInet {
    let mut inner = Vec::with_capacity(8);
    inner.extend_from_slice(&8u16.to_ne_bytes());
    inner.extend_from_slice(&IPV4_DEVCONF_FORWARDING.to_ne_bytes());
    inner.extend_from_slice(&0u32.to_ne_bytes());
    AfSpecInet::Other(DefaultNla::new(IFLA_INET_CONF, inner))
}

pub(crate) fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

// ----- addresses -----

/// Adds `addr/len` to interface `index` (IPv6 without duplicate address detection).
pub(crate) fn new_addr(
    index: u32,
    addr: IpAddr,
    len: u8,
    scope: AddressScope,
) -> RouteNetlinkMessage {
    let mut am = AddressMessage::default();
    am.header.family = family_of(addr);
    am.header.prefix_len = len;
    am.header.index = index;
    am.header.scope = scope;
    match addr {
        IpAddr::V4(_) => {
            am.attributes.push(AddressAttribute::Local(addr));
            am.attributes.push(AddressAttribute::Address(addr));
        }
        IpAddr::V6(_) => {
            am.header.flags = AddressHeaderFlags::Nodad;
            am.attributes.push(AddressAttribute::Address(addr));
        }
    }
    RouteNetlinkMessage::NewAddress(am)
}

/// A request for the addresses of `family` on interface `index` (a dump; the kernel may
/// answer with every interface's).
pub(crate) fn get_addresses(family: AddressFamily, index: u32) -> RouteNetlinkMessage {
    let mut am = AddressMessage::default();
    am.header.family = family;
    am.header.index = index;
    RouteNetlinkMessage::GetAddress(am)
}

// ----- answers -----

fn echo_len(echo: &[u8]) -> Option<usize> {
    let len = u32::from_ne_bytes(echo.get(0..4)?.try_into().ok()?) as usize;
    Some(len.min(echo.len()))
}

/// The message type and route prefix of the request an NLMSG_ERROR echoes.
fn parse_echo(echo: &[u8]) -> (Option<u16>, Option<ipnet::IpNet>) {
    use rtnetlink::packet_core::Parseable;
    let Some(len) = echo_len(echo) else {
        return (None, None);
    };
    let msg_type = echo
        .get(4..6)
        .and_then(|b| b.try_into().ok())
        .map(u16::from_ne_bytes);
    let prefix = echo
        .get(NLMSG_HDRLEN..len)
        .and_then(|body| RouteMessage::parse(body).ok())
        .and_then(|r| route_prefix(&r));
    (msg_type, prefix)
}

/// The NLMSGERR_ATTR_MSG text of an extended ack, if the kernel sent one. `echo` is what
/// follows the error code: the echoed request, then the TLVs.
pub(crate) fn ext_ack_text(echo: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // With NLM_F_CAPPED only the echoed header precedes the TLVs.
    let start = if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        (echo_len(echo)? + 3) & !3
    };
    let mut rest = echo.get(start..)?;
    while rest.len() >= 4 {
        let nla_len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let nla_type = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if nla_len < 4 || nla_len > rest.len() {
            return None;
        }
        if nla_type == NLMSGERR_ATTR_MSG {
            let text = &rest[4..nla_len];
            let text = text.split(|b| *b == 0).next().unwrap_or(text);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        let aligned = (nla_len + 3) & !3;
        rest = rest.get(aligned..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_ack_text_is_read_after_the_echoed_request() {
        // An echoed 20-byte request, then NLMSGERR_ATTR_MSG "Nexthop has invalid gateway".
        let mut echo = Vec::new();
        echo.extend_from_slice(&20u32.to_ne_bytes());
        echo.extend_from_slice(&[0u8; 16]);
        let text = b"Nexthop has invalid gateway\0";
        echo.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        echo.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        echo.extend_from_slice(text);
        assert_eq!(
            ext_ack_text(&echo, NLM_F_ACK_TLVS).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(ext_ack_text(&echo, 0), None);
        assert_eq!(ext_ack_text(&echo[..30], NLM_F_ACK_TLVS), None);
    }

    #[test]
    fn refusals_read_like_the_errno_with_the_kernels_text() {
        assert_eq!(describe(EEXIST, None), "File exists (os error 17)");
        assert_eq!(
            describe(ENODEV, Some("Nexthop device is not up")),
            "No such device (os error 19): Nexthop device is not up"
        );
    }
}
