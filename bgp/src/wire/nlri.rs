//! Address families and prefix fields (RFC 4271 §4.3, RFC 4760).

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFrom;

use crate::message::Family;

use super::WireError;

pub(super) fn family_of_afi_safi(afi: u16, safi: u8) -> Option<Family> {
    match (afi, safi) {
        (1, 1) => Some(Family::Ipv4Unicast),
        (2, 1) => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

pub(super) fn address_type(f: Family) -> AddressType {
    match f {
        Family::Ipv4Unicast => AddressType::Ipv4Unicast,
        Family::Ipv6Unicast => AddressType::Ipv6Unicast,
    }
}

pub(super) fn family_of_address_type(t: AddressType) -> Option<Family> {
    match t {
        AddressType::Ipv4Unicast => Some(Family::Ipv4Unicast),
        AddressType::Ipv6Unicast => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

/// Parses a field of IPv4 prefixes (RFC 4271 §4.3). `None` when it is not syntactically
/// correct (RFC 7606 §5.3: a length above 32, or prefixes that do not exactly fill the
/// field). Bits past the prefix length are cleared.
pub(super) fn parse_prefixes_v4(buf: &[u8]) -> Option<Vec<IpNet>> {
    let mut r = SliceReader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let net = <Ipv4Net as ParseFrom>::parse(&mut r).ok()?;
        out.push(IpNet::V4(net.trunc()));
    }
    Some(out)
}

/// As [`parse_prefixes_v4`] for IPv6 (lengths up to 128).
pub(super) fn parse_prefixes_v6(buf: &[u8]) -> Option<Vec<IpNet>> {
    let mut r = SliceReader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let net = <Ipv6Net as ParseFrom>::parse(&mut r).ok()?;
        out.push(IpNet::V6(net.trunc()));
    }
    Some(out)
}

/// Bytes a prefix takes in an NLRI field.
pub fn prefix_wire_len(p: &IpNet) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// Whether the codec can encode this prefix (netgauze refuses multicast and broadcast
/// networks; see [`WireError::NonUnicastPrefix`]).
pub fn is_encodable_prefix(p: &IpNet) -> bool {
    match p {
        IpNet::V4(n) => Ipv4Unicast::from_net(n.trunc()).is_ok(),
        IpNet::V6(n) => Ipv6Unicast::from_net(n.trunc()).is_ok(),
    }
}

pub(super) fn ng_v4(p: &Ipv4Net) -> Result<Ipv4UnicastAddress, WireError> {
    Ipv4Unicast::from_net(p.trunc())
        .map(Ipv4UnicastAddress::new_no_path_id)
        .map_err(|_| WireError::NonUnicastPrefix(IpNet::V4(*p)))
}

pub(super) fn ng_v6(p: &Ipv6Net) -> Result<Ipv6UnicastAddress, WireError> {
    Ipv6Unicast::from_net(p.trunc())
        .map(|n| Ipv6UnicastAddress::new(None, n))
        .map_err(|_| WireError::NonUnicastPrefix(IpNet::V6(*p)))
}
