//! MP_REACH_NLRI and MP_UNREACH_NLRI on receipt (RFC 4760 §3, §4; RFC 7606 §7.11).

use std::net::IpAddr;

use ipnet::IpNet;

use crate::message::{notif, Family, NextHop, Notification};

use super::nlri::{family_of_afi_safi, parse_prefixes_v4, parse_prefixes_v6};
use super::reader::Reader;
use super::update::RawAttr;

pub(super) fn optional_attribute_error(a: &RawAttr<'_>) -> Notification {
    Notification::with_data(
        notif::UPDATE_MESSAGE_ERROR,
        notif::OPTIONAL_ATTRIBUTE_ERROR,
        a.whole.to_vec(),
    )
}

/// MP_REACH_NLRI (RFC 4760 §3). `Ok(None)` for families we do not handle (ignored);
/// `Err` (3/9, data the attribute) when it cannot be parsed: a next-hop length that does
/// not match the family makes the NLRI impossible to locate (RFC 7606 §7.11).
pub(super) fn decode_mp_reach(
    a: &RawAttr<'_>,
) -> Result<Option<(Family, NextHop, Vec<IpNet>)>, Notification> {
    let err = || optional_attribute_error(a);
    let mut r = Reader::new(a.value);
    let afi = r.u16().ok_or_else(err)?;
    let safi = r.u8().ok_or_else(err)?;
    let Some(family) = family_of_afi_safi(afi, safi) else {
        return Ok(None);
    };
    let nh_len = r.u8().ok_or_else(err)?;
    let mut nh = Reader::new(r.take(usize::from(nh_len)).ok_or_else(err)?);
    let next_hop = match (family, nh_len) {
        (Family::Ipv4Unicast, 4) => NextHop::new(IpAddr::V4(nh.ipv4().ok_or_else(err)?)),
        (Family::Ipv6Unicast, 16) => NextHop::new(IpAddr::V6(nh.ipv6().ok_or_else(err)?)),
        (Family::Ipv6Unicast, 32) => {
            let global = nh.ipv6().ok_or_else(err)?;
            let local = nh.ipv6().ok_or_else(err)?;
            NextHop {
                address: IpAddr::V6(global),
                // Some speakers fill an unknown link-local with zeros.
                link_local: (!local.is_unspecified()).then_some(local),
            }
        }
        _ => return Err(err()),
    };
    // Reserved octet (RFC 4760 §3: ignored on receipt).
    r.u8().ok_or_else(err)?;
    let prefixes = match family {
        Family::Ipv4Unicast => parse_prefixes_v4(r.rest()),
        Family::Ipv6Unicast => parse_prefixes_v6(r.rest()),
    }
    .ok_or_else(err)?;
    Ok(Some((family, next_hop, prefixes)))
}

/// MP_UNREACH_NLRI (RFC 4760 §4), same conventions as [`decode_mp_reach`].
pub(super) fn decode_mp_unreach(
    a: &RawAttr<'_>,
) -> Result<Option<(Family, Vec<IpNet>)>, Notification> {
    let err = || optional_attribute_error(a);
    let mut r = Reader::new(a.value);
    let afi = r.u16().ok_or_else(err)?;
    let safi = r.u8().ok_or_else(err)?;
    let Some(family) = family_of_afi_safi(afi, safi) else {
        return Ok(None);
    };
    let prefixes = match family {
        Family::Ipv4Unicast => parse_prefixes_v4(r.rest()),
        Family::Ipv6Unicast => parse_prefixes_v6(r.rest()),
    }
    .ok_or_else(err)?;
    Ok(Some((family, prefixes)))
}

#[cfg(test)]
mod tests {
    use crate::wire::testutil::*;

    #[test]
    fn unknown_families_are_ignored() {
        // MP_REACH for IPv4 flowspec next to classic NLRI: the flowspec part is ignored.
        let fs = attr(0x80, 14, &[0, 1, 133, 0, 0, 5, 1, 2, 3, 4, 5]);
        let u = decode_update_bytes(&update(&[], &[valid_attrs(), fs].concat(), &NLRI), &AS4)
            .expect("ok");
        assert!(!u.treat_as_withdraw);
        assert_eq!(u.reach[0].prefixes.len(), 2);
        // Only an MP_UNREACH for an unknown family: nothing, and not an End-of-RIB.
        let u = decode_update_bytes(&update(&[], &attr(0x80, 15, &[0, 25, 70]), &[]), &AS4)
            .expect("ok");
        assert_eq!(u, Update::default());
        // MP_REACH for IPv4 unicast is understood (4-octet next hop).
        let mp4 = attr(0x80, 14, &[0, 1, 1, 4, 192, 0, 2, 9, 0, 8, 12]);
        let u = decode_update_bytes(
            &update(&[], &[origin_igp(), as_path4(&[1]), mp4].concat(), &[]),
            &AS4,
        )
        .expect("ok");
        assert_eq!(
            u.reach,
            vec![Reach {
                next_hop: NextHop::new(v4("192.0.2.9")),
                prefixes: vec![net("12.0.0.0/8")],
            }]
        );
    }
}
