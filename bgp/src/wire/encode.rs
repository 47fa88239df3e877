//! Encoding messages: OPEN, UPDATE (with the RFC 6793 §4.2.2 AS_TRANS rules), NOTIFICATION,
//! KEEPALIVE, ROUTE-REFRESH and End-of-RIB.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4UnicastAddress, Ipv6UnicastAddress};
use netgauze_bgp_pkt::path_attribute as ng;
use netgauze_bgp_pkt::path_attribute::{PathAttribute, PathAttributeValue};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::WritablePdu;

use crate::message::{
    AsSegment, Family, Message, Notification, Origin, PathAttributes, SessionContext, Update,
    AS_TRANS, HEADER_LEN, MAX_MESSAGE_LEN,
};

use super::nlri::{address_type, ng_v4, ng_v6};
use super::open::encode_open;
use super::{attr_flags, attr_type, msg_type, WireError, MARKER};

pub(super) fn encode_notification(n: &Notification) -> Result<Vec<u8>, WireError> {
    let len = HEADER_LEN + 2 + n.data.len();
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(len));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(msg_type::NOTIFICATION);
    out.push(n.code);
    out.push(n.subcode);
    out.extend_from_slice(&n.data);
    Ok(out)
}

/// Builds a netgauze attribute; the extended-length bit is set when asked or when the
/// value needs it (netgauze writes a 2-octet length without setting the flag otherwise).
pub(super) fn ng_attr(
    optional: bool,
    transitive: bool,
    partial: bool,
    extended: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, WireError> {
    let codec = |e: ng::InvalidPathAttribute| WireError::Codec(e.to_string());
    let pa = PathAttribute::from(optional, transitive, partial, extended, value)
        .map_err(|(_, e)| codec(e))?;
    // flags + type + 1-octet length
    if !pa.extended_length() && pa.len() > 3 + 255 {
        return PathAttribute::from(optional, transitive, partial, true, pa.value().clone())
            .map_err(|(_, e)| codec(e));
    }
    Ok(pa)
}

pub(super) fn well_known(value: PathAttributeValue) -> Result<PathAttribute, WireError> {
    ng_attr(false, true, false, false, value)
}

/// Segments ready for the wire: empty segments dropped, sequences longer than 255 split.
pub(super) fn wire_segments(
    path: &[AsSegment],
) -> Result<Vec<(ng::AsPathSegmentType, Vec<u32>)>, WireError> {
    let mut out = Vec::new();
    for seg in path {
        match seg {
            AsSegment::Sequence(v) => {
                for chunk in v.chunks(255) {
                    out.push((ng::AsPathSegmentType::AsSequence, chunk.to_vec()));
                }
            }
            AsSegment::Set(v) => {
                if v.len() > 255 {
                    return Err(WireError::AsSetTooLarge(v.len()));
                }
                if !v.is_empty() {
                    out.push((ng::AsPathSegmentType::AsSet, v.clone()));
                }
            }
        }
    }
    Ok(out)
}

pub(super) fn as2(asn: u32) -> u16 {
    u16::try_from(asn).unwrap_or(AS_TRANS)
}

pub(super) fn encode_update(u: &Update, ctx: &SessionContext) -> Result<Vec<u8>, WireError> {
    if let Some(f) = u.end_of_rib {
        if !u.withdrawn.is_empty() || !u.reach.is_empty() || u.attributes.is_some() {
            return Err(WireError::EndOfRibNotEmpty);
        }
        return Ok(end_of_rib(f, ctx));
    }
    if u.withdrawn.is_empty() && u.reach.is_empty() && u.attributes.is_none() {
        return Err(WireError::EmptyUpdate);
    }
    let mut w4 = Vec::new();
    let mut w6 = Vec::new();
    for p in &u.withdrawn {
        match p {
            IpNet::V4(n) => w4.push(ng_v4(n)?),
            IpNet::V6(n) => w6.push(ng_v6(n)?),
        }
    }
    let mut nlri4: Option<(Ipv4Addr, Vec<Ipv4UnicastAddress>)> = None;
    let mut reach6: Option<(Ipv6Addr, Option<Ipv6Addr>, Vec<Ipv6UnicastAddress>)> = None;
    for r in &u.reach {
        let mismatch = |prefix: &IpNet| WireError::NextHopFamily {
            prefix: *prefix,
            next_hop: r.next_hop,
        };
        match r.next_hop.address {
            IpAddr::V4(nh) => {
                if nlri4.is_some() {
                    return Err(WireError::DuplicateReach(Family::Ipv4Unicast));
                }
                let mut v = Vec::with_capacity(r.prefixes.len());
                for p in &r.prefixes {
                    match p {
                        IpNet::V4(n) if r.next_hop.link_local.is_none() => v.push(ng_v4(n)?),
                        _ => return Err(mismatch(p)),
                    }
                }
                nlri4 = Some((nh, v));
            }
            IpAddr::V6(nh) => {
                if reach6.is_some() {
                    return Err(WireError::DuplicateReach(Family::Ipv6Unicast));
                }
                let mut v = Vec::with_capacity(r.prefixes.len());
                for p in &r.prefixes {
                    match p {
                        IpNet::V6(n) => v.push(ng_v6(n)?),
                        IpNet::V4(_) => return Err(mismatch(p)),
                    }
                }
                reach6 = Some((nh, r.next_hop.link_local, v));
            }
        }
    }
    if (nlri4.is_some() || reach6.is_some()) && u.attributes.is_none() {
        return Err(WireError::MissingAttributes);
    }

    // RFC 7606 §5.1: MP_REACH_NLRI / MP_UNREACH_NLRI first.
    let mut attrs = Vec::new();
    if let Some((global, local, nlri)) = reach6 {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MpReach(ng::MpReach::Ipv6Unicast {
                next_hop_global: global,
                next_hop_local: local,
                nlri: nlri.into(),
            }),
        )?);
    }
    if !w6.is_empty() {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MpUnreach(ng::MpUnreach::Ipv6Unicast { nlri: w6.into() }),
        )?);
    }
    let mut nlri = Vec::new();
    if let Some(pa) = &u.attributes {
        encode_attributes(pa, nlri4.as_ref().map(|(nh, _)| *nh), ctx, &mut attrs)?;
    }
    if let Some((_, v)) = nlri4 {
        nlri = v;
    }
    encode_ng(&BgpMessage::Update(BgpUpdateMessage::new(w4, attrs, nlri)))
}

pub(super) fn encode_attributes(
    pa: &PathAttributes,
    next_hop: Option<Ipv4Addr>,
    ctx: &SessionContext,
    attrs: &mut Vec<PathAttribute>,
) -> Result<(), WireError> {
    attrs.push(well_known(PathAttributeValue::Origin(match pa.origin {
        Origin::Igp => ng::Origin::IGP,
        Origin::Egp => ng::Origin::EGP,
        Origin::Incomplete => ng::Origin::Incomplete,
    }))?);
    let segs = wire_segments(&pa.as_path)?;
    let as4_segments = || -> Vec<ng::As4PathSegment> {
        segs.iter()
            .map(|(t, v)| ng::As4PathSegment::new(*t, v.clone()))
            .collect()
    };
    let mut as4_path = None;
    let as_path = if ctx.four_octet_as {
        ng::AsPath::As4PathSegments(as4_segments().into())
    } else {
        // RFC 6793 §4.2.2: non-mappable ASes become AS_TRANS, the real path goes in AS4_PATH.
        if segs.iter().any(|(_, v)| v.iter().any(|a| *a > 0xffff)) {
            as4_path = Some(ng::As4Path::new(as4_segments()));
        }
        ng::AsPath::As2PathSegments(
            segs.iter()
                .map(|(t, v)| {
                    ng::As2PathSegment::new(*t, v.iter().map(|a| as2(*a)).collect::<Vec<_>>())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    };
    attrs.push(well_known(PathAttributeValue::AsPath(as_path))?);
    if let Some(nh) = next_hop {
        attrs.push(well_known(PathAttributeValue::NextHop(ng::NextHop::new(
            nh,
        )))?);
    }
    if let Some(med) = pa.med {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MultiExitDiscriminator(ng::MultiExitDiscriminator::new(med)),
        )?);
    }
    if let Some(lp) = pa.local_pref {
        attrs.push(well_known(PathAttributeValue::LocalPreference(
            ng::LocalPreference::new(lp),
        ))?);
    }
    if pa.atomic_aggregate {
        attrs.push(well_known(PathAttributeValue::AtomicAggregate(
            ng::AtomicAggregate,
        ))?);
    }
    let mut as4_aggregator = None;
    if let Some((asn, ip)) = pa.aggregator {
        let agg = if ctx.four_octet_as {
            ng::Aggregator::As4Aggregator(ng::As4Aggregator::new(asn, ip))
        } else {
            // RFC 6793 §4.2.3: a receiver ignores AS4_PATH unless AGGREGATOR is AS_TRANS,
            // so AS4_AGGREGATOR also goes out whenever AS4_PATH does.
            if asn > 0xffff || as4_path.is_some() {
                let mut v = asn.to_be_bytes().to_vec();
                v.extend_from_slice(&ip.octets());
                as4_aggregator = Some(v);
            }
            let wire_asn = if as4_aggregator.is_some() {
                AS_TRANS
            } else {
                as2(asn)
            };
            ng::Aggregator::As2Aggregator(ng::As2Aggregator::new(wire_asn, ip))
        };
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::Aggregator(agg),
        )?);
    }
    if !pa.communities.is_empty() {
        let cs: Vec<Community> = pa.communities.iter().map(|c| Community::new(*c)).collect();
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::Communities(ng::Communities::new(cs)),
        )?);
    }
    if let Some(id) = pa.originator_id {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::Originator(ng::Originator::new(id)),
        )?);
    }
    if !pa.cluster_list.is_empty() {
        let ids: Vec<ng::ClusterId> = pa
            .cluster_list
            .iter()
            .map(|i| ng::ClusterId::new(*i))
            .collect();
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::ClusterList(ng::ClusterList::new(ids)),
        )?);
    }
    if let Some(p) = as4_path {
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::As4Path(p),
        )?);
    }
    if let Some(v) = as4_aggregator {
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::UnknownAttribute(ng::UnknownAttribute::new(
                attr_type::AS4_AGGREGATOR,
                v,
            )),
        )?);
    }
    for raw in &pa.other {
        let f = raw.flags;
        attrs.push(ng_attr(
            f & attr_flags::OPTIONAL != 0,
            f & attr_flags::TRANSITIVE != 0,
            f & attr_flags::PARTIAL != 0,
            f & attr_flags::EXTENDED_LENGTH != 0,
            PathAttributeValue::UnknownAttribute(ng::UnknownAttribute::new(
                raw.type_code,
                raw.value.clone(),
            )),
        )?);
    }
    Ok(())
}

pub(super) fn encode_ng(m: &BgpMessage) -> Result<Vec<u8>, WireError> {
    let len = m.len();
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(len));
    }
    let mut out = Vec::with_capacity(len);
    m.write(&mut out)
        .map_err(|e| WireError::Codec(e.to_string()))?;
    if out.len() != len {
        return Err(WireError::Codec(format!(
            "encoder wrote {} bytes for a {len}-byte message",
            out.len()
        )));
    }
    Ok(out)
}

/// Encodes one message. Errors only for things that cannot fit or be expressed.
///
/// OPEN: the version octet is always [`BGP_VERSION`]; capabilities go in one optional
/// parameter of type 2, in the order multiprotocol, route refresh, enhanced route refresh,
/// 4-octet AS, graceful restart; `Capabilities::unknown` is not sent (it has no values).
/// `my_as` is written as given (the caller puts AS_TRANS there for a 4-octet AS).
///
/// UPDATE: IPv4 routes go in the classic NLRI field with NEXT_HOP, IPv6 routes in
/// MP_REACH_NLRI, IPv6 withdrawals in MP_UNREACH_NLRI. With a 2-octet session
/// (`ctx.four_octet_as == false`) AS numbers above 65535 are sent as AS_TRANS with
/// AS4_PATH / AS4_AGGREGATOR (RFC 6793 §4.2.2). `treat_as_withdraw` is ignored.
pub fn encode(msg: &Message, ctx: &SessionContext) -> Result<Vec<u8>, WireError> {
    match msg {
        Message::Open(o) => encode_ng(&encode_open(o)?),
        Message::Update(u) => encode_update(u, ctx),
        Message::Notification(n) => encode_notification(n),
        Message::Keepalive => encode_ng(&BgpMessage::KeepAlive),
        Message::RouteRefresh(f) => encode_ng(&BgpMessage::RouteRefresh(
            BgpRouteRefreshMessage::new(address_type(*f), RouteRefreshSubcode::NormalRequest),
        )),
    }
}

/// End-of-RIB marker bytes for a family (RFC 4724 §2): an empty UPDATE for IPv4 unicast,
/// an UPDATE with only an empty MP_UNREACH_NLRI for the others.
pub fn end_of_rib(family: Family, _ctx: &SessionContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(29);
    out.extend_from_slice(&MARKER);
    match family {
        Family::Ipv4Unicast => out.extend_from_slice(&[0, 23, msg_type::UPDATE, 0, 0, 0, 0]),
        Family::Ipv6Unicast => {
            let (afi, safi) = family.afi_safi();
            let [afi_hi, afi_lo] = afi.to_be_bytes();
            out.extend_from_slice(&[0, 29, msg_type::UPDATE, 0, 0, 0, 6]);
            out.extend_from_slice(&[
                attr_flags::OPTIONAL,
                attr_type::MP_UNREACH_NLRI,
                3,
                afi_hi,
                afi_lo,
                safi,
            ]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::*;
    use crate::wire::update::scan_attributes;

    #[test]
    fn update_roundtrip_ipv4_both_as_widths() {
        let u = Update {
            withdrawn: vec![net("10.9.0.0/16"), net("10.8.8.0/24")],
            attributes: Some(full_attrs()),
            reach: vec![Reach {
                next_hop: NextHop::new(v4("198.18.0.1")),
                prefixes: vec![net("10.0.0.0/24"), net("10.244.1.0/26"), net("0.0.0.0/0")],
            }],
            end_of_rib: None,
            treat_as_withdraw: false,
        };
        let m = Message::Update(u);
        for ctx in [AS4, AS2] {
            assert_eq!(roundtrip(&m, &ctx), m, "ctx {ctx:?}");
        }
        // The 2-octet encoding carries AS_TRANS plus AS4_PATH and AS4_AGGREGATOR.
        let b = encode(&m, &AS2).expect("encode");
        let wlen = usize::from(u16::from_be_bytes([b[19], b[20]]));
        let alen = usize::from(u16::from_be_bytes([b[21 + wlen], b[22 + wlen]]));
        let (scanned, overrun) = scan_attributes(&b[23 + wlen..23 + wlen + alen]);
        assert!(!overrun);
        let codes: Vec<u8> = scanned.iter().map(|a| a.code).collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 18, 16, 99]);
        let as_path = &scanned[1];
        assert_eq!(
            as_path.value,
            &[2, 3, 0xfd, 0xe9, 0x5b, 0xa0, 0xfd, 0xea, 1, 2, 0xfd, 0xf2, 0x5b, 0xa0][..]
        );
    }

    #[test]
    fn update_roundtrip_2_octet_session_with_2_octet_aggregator() {
        // AS4_PATH is only honoured next to AGGREGATOR = AS_TRANS (RFC 6793 §4.2.3), so
        // the encoder sends AS4_AGGREGATOR even for a mappable aggregator AS.
        let attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![65001, 4_200_000_001])],
            aggregator: Some((65010, "192.0.2.10".parse().expect("ip"))),
            ..Default::default()
        };
        let m = Message::Update(Update {
            attributes: Some(attrs),
            reach: vec![Reach {
                next_hop: NextHop::new(v4("198.18.0.1")),
                prefixes: vec![net("10.0.0.0/24")],
            }],
            ..Default::default()
        });
        assert_eq!(roundtrip(&m, &AS2), m);
    }

    #[test]
    fn update_roundtrip_ipv6_link_local_and_withdrawals() {
        for link_local in [None, Some(v6("fe80::1"))] {
            let u = Update {
                withdrawn: vec![net("10.7.0.0/16"), net("fd00:10:244:9::/64")],
                attributes: Some(simple_attrs(65001)),
                reach: vec![Reach {
                    next_hop: NextHop {
                        address: IpAddr::V6(v6("fd00::1")),
                        link_local,
                    },
                    prefixes: vec![
                        net("fd00:10:244:1::/64"),
                        net("fd00:10:244:2::/80"),
                        net("::/0"),
                    ],
                }],
                end_of_rib: None,
                treat_as_withdraw: false,
            };
            let m = Message::Update(u);
            assert_eq!(roundtrip(&m, &AS4), m);
        }
    }

    #[test]
    fn end_of_rib_both_families() {
        for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let b = end_of_rib(f, &AS4);
            assert_eq!(frame_len(&b), Ok(Some(b.len())));
            assert_eq!(decode(&b, &AS4), Ok(Message::Update(Update::end_of_rib(f))));
            assert_eq!(encode(&Message::Update(Update::end_of_rib(f)), &AS4), Ok(b));
        }
        assert_eq!(end_of_rib(Family::Ipv4Unicast, &AS4).len(), 23);
        // An empty MP_UNREACH for IPv4 unicast is also an IPv4 End-of-RIB.
        let b = update(&[], &attr(0x80, 15, &[0, 1, 1]), &[]);
        assert_eq!(
            decode(&b, &AS4),
            Ok(Message::Update(Update::end_of_rib(Family::Ipv4Unicast)))
        );
        assert_eq!(
            encode(&Message::Update(Update::default()), &AS4),
            Err(WireError::EmptyUpdate)
        );
        let mut bad = Update::end_of_rib(Family::Ipv6Unicast);
        bad.withdrawn.push(net("fd00::/64"));
        assert_eq!(
            encode(&Message::Update(bad), &AS4),
            Err(WireError::EndOfRibNotEmpty)
        );
    }

    #[test]
    fn encode_errors() {
        let reach = |nh: NextHop, p: &str| Reach {
            next_hop: nh,
            prefixes: vec![net(p)],
        };
        let u = |attributes: Option<PathAttributes>, reach: Vec<Reach>| {
            Message::Update(Update {
                attributes,
                reach,
                ..Default::default()
            })
        };
        let nh4 = NextHop::new(v4("192.0.2.1"));
        assert_eq!(
            encode(&u(None, vec![reach(nh4, "10.0.0.0/8")]), &AS4),
            Err(WireError::MissingAttributes)
        );
        assert!(matches!(
            encode(
                &u(Some(simple_attrs(1)), vec![reach(nh4, "fd00::/8")]),
                &AS4
            ),
            Err(WireError::NextHopFamily { .. })
        ));
        assert_eq!(
            encode(
                &u(
                    Some(simple_attrs(1)),
                    vec![reach(nh4, "10.0.0.0/8"), reach(nh4, "11.0.0.0/8")]
                ),
                &AS4
            ),
            Err(WireError::DuplicateReach(Family::Ipv4Unicast))
        );
        let big_set = PathAttributes {
            as_path: vec![AsSegment::Set((0..300).collect())],
            ..Default::default()
        };
        assert_eq!(
            encode(&u(Some(big_set), vec![]), &AS4),
            Err(WireError::AsSetTooLarge(300))
        );
        // A 600-AS sequence is split into 255-AS segments and comes back the same.
        let long = PathAttributes {
            as_path: vec![AsSegment::Sequence((1..=600).collect())],
            ..Default::default()
        };
        let m = u(Some(long), vec![reach(nh4, "10.0.0.0/8")]);
        let Message::Update(back) = roundtrip(&m, &AS4) else {
            panic!()
        };
        assert_eq!(back.attributes.expect("attrs").as_path_len(), 600);
    }
}
