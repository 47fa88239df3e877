//! UPDATE decoding (RFC 4271 §4.3) with RFC 7606 error handling: the attribute scan, the
//! well-known mandatory check, End-of-RIB, and the assembly of [`Update`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;

use crate::message::{
    notif, AsSegment, Family, NextHop, Notification, Origin, PathAttributes, RawAttribute, Reach,
    SessionContext, Update, AS_TRANS,
};

use super::as4::merge_as4_path;
use super::attributes::attribute;
use super::nlri::parse_prefixes_v4;
use super::reader::Reader;
use super::{attr_flags, attr_type};

/// One path attribute as framed on the wire.
pub(super) struct RawAttr<'a> {
    /// As received; the four low-order bits are unused and ignored (RFC 4271 §4.3), so
    /// they are cleared when the attribute is kept in [`PathAttributes::other`].
    pub(super) flags: u8,
    pub(super) code: u8,
    pub(super) value: &'a [u8],
    /// Flags, type, length and value: what netgauze parses and NOTIFICATION data carries.
    pub(super) whole: &'a [u8],
}

/// What RFC 7606 says to do about one attribute (session reset is an `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Ok,
    Discard,
    Withdraw,
}

/// Splits the path attribute field. The flag is true when the last attribute header or
/// value overruns the field (RFC 7606 §4: treat-as-withdraw, the NLRI is still found from
/// the Total Path Attribute Length).
pub(super) fn scan_attributes(buf: &[u8]) -> (Vec<RawAttr<'_>>, bool) {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let mut r = Reader::new(rest);
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            return (out, true);
        };
        let len = if flags & attr_flags::EXTENDED_LENGTH != 0 {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let Some(len) = len else {
            return (out, true);
        };
        let header = rest.len() - r.len();
        let Some(value) = r.take(usize::from(len)) else {
            return (out, true);
        };
        let Some((whole, tail)) = rest.split_at_checked(header + usize::from(len)) else {
            return (out, true);
        };
        out.push(RawAttr {
            flags,
            code,
            value,
            whole,
        });
        rest = tail;
    }
    (out, false)
}

/// Everything gathered from the attributes of one UPDATE.
#[derive(Default)]
pub(super) struct Collected {
    pub(super) origin: Option<Origin>,
    pub(super) as_path: Option<Vec<AsSegment>>,
    pub(super) next_hop: Option<Ipv4Addr>,
    pub(super) med: Option<u32>,
    pub(super) local_pref: Option<u32>,
    pub(super) atomic_aggregate: bool,
    pub(super) aggregator: Option<(u32, Ipv4Addr)>,
    pub(super) communities: Vec<u32>,
    pub(super) originator_id: Option<Ipv4Addr>,
    pub(super) cluster_list: Vec<Ipv4Addr>,
    pub(super) as4_path: Option<Vec<AsSegment>>,
    pub(super) as4_aggregator: Option<(u32, Ipv4Addr)>,
    pub(super) other: Vec<RawAttribute>,
    pub(super) mp_reach: Option<(Family, NextHop, Vec<IpNet>)>,
    pub(super) mp_unreach: Option<(Family, Vec<IpNet>)>,
}

pub(super) fn decode_update(body: &[u8], ctx: &SessionContext) -> Result<Update, Notification> {
    let malformed_list =
        || Notification::new(notif::UPDATE_MESSAGE_ERROR, notif::MALFORMED_ATTRIBUTE_LIST);
    let invalid_network =
        || Notification::new(notif::UPDATE_MESSAGE_ERROR, notif::INVALID_NETWORK_FIELD);
    let mut r = Reader::new(body);
    // RFC 4271 §6.3: Withdrawn Routes Length + Total Attribute Length + 23 > message
    // length is a Malformed Attribute List; nothing after that can be located.
    let wlen = r.u16().ok_or_else(malformed_list)?;
    let wbuf = r.take(usize::from(wlen)).ok_or_else(malformed_list)?;
    let alen = r.u16().ok_or_else(malformed_list)?;
    let abuf = r.take(usize::from(alen)).ok_or_else(malformed_list)?;
    let nlri_buf = r.rest();

    // RFC 7606 §3 e, §5.3: withdrawn and NLRI fields that cannot be parsed reset the
    // session (treat-as-withdraw needs every prefix).
    let mut withdrawn = parse_prefixes_v4(wbuf).ok_or_else(invalid_network)?;
    let nlri = parse_prefixes_v4(nlri_buf).ok_or_else(invalid_network)?;

    let (attrs, overrun) = scan_attributes(abuf);
    let mut withdraw = overrun;
    if overrun {
        tracing::debug!("UPDATE: path attribute overruns the attribute field (treat-as-withdraw)");
    }
    let mut seen = [false; 256];
    let mut ng_ctx = BgpParsingContext::new(
        ctx.four_octet_as,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        true,
        true,
    );
    let mut c = Collected::default();
    for a in &attrs {
        let slot = &mut seen[usize::from(a.code)];
        if *slot {
            // RFC 7606 §3 g: a repeated MP_REACH/MP_UNREACH is a Malformed Attribute List;
            // any other repeated attribute: keep the first, discard the others.
            if a.code == attr_type::MP_REACH_NLRI || a.code == attr_type::MP_UNREACH_NLRI {
                return Err(malformed_list());
            }
            tracing::debug!(code = a.code, "UPDATE: repeated path attribute discarded");
            continue;
        }
        *slot = true;
        match attribute(a, ctx, &mut ng_ctx, &mut c)? {
            Verdict::Ok => {}
            Verdict::Discard => {
                tracing::debug!(code = a.code, "UPDATE: malformed attribute discarded");
            }
            Verdict::Withdraw => {
                tracing::debug!(
                    code = a.code,
                    "UPDATE: malformed attribute (treat-as-withdraw)"
                );
                withdraw = true;
            }
        }
    }

    let mp_reach_prefixes = c.mp_reach.as_ref().map_or(0, |(_, _, p)| p.len());
    // RFC 7606 §3 d: a missing well-known mandatory attribute is treat-as-withdraw.
    // NEXT_HOP is only mandatory with classic NLRI (RFC 4760 §3); LOCAL_PREF depends on
    // the session type and is the caller's business.
    if !nlri.is_empty() || mp_reach_prefixes > 0 {
        let missing =
            c.origin.is_none() || c.as_path.is_none() || (!nlri.is_empty() && c.next_hop.is_none());
        if missing && !withdraw {
            tracing::debug!("UPDATE: missing well-known mandatory attribute (treat-as-withdraw)");
            withdraw = true;
        }
    }

    let mp_unreach_family = c.mp_unreach.as_ref().map(|(f, _)| *f);
    let mp_unreach_empty = c.mp_unreach.as_ref().is_some_and(|(_, p)| p.is_empty());
    if let Some((_, p)) = c.mp_unreach.take() {
        withdrawn.extend(p);
    }
    // IPv4 first, then IPv6, each in message order (the order `encode` writes them).
    withdrawn.sort_by_key(|p| matches!(p, IpNet::V6(_)));

    if withdraw {
        withdrawn.extend(nlri);
        if let Some((_, _, p)) = c.mp_reach {
            withdrawn.extend(p);
        }
        withdrawn.sort_by_key(|p| matches!(p, IpNet::V6(_)));
        return Ok(Update {
            withdrawn,
            attributes: None,
            reach: Vec::new(),
            end_of_rib: None,
            treat_as_withdraw: true,
        });
    }

    // End-of-RIB (RFC 4724 §2).
    if wbuf.is_empty() && nlri_buf.is_empty() {
        if abuf.is_empty() {
            return Ok(Update::end_of_rib(Family::Ipv4Unicast));
        }
        if attrs.len() == 1 && mp_unreach_empty {
            if let Some(f) = mp_unreach_family {
                return Ok(Update::end_of_rib(f));
            }
        }
    }

    // RFC 6793 §4.2.3: rebuild the real path from AS_PATH and AS4_PATH.
    let mut as_path = c.as_path.take().unwrap_or_default();
    let mut aggregator = c.aggregator;
    if !ctx.four_octet_as {
        let use_as4 = aggregator.is_none_or(|(asn, _)| asn == u32::from(AS_TRANS));
        if use_as4 {
            if aggregator.is_some() {
                if let Some(a4) = c.as4_aggregator {
                    aggregator = Some(a4);
                }
            }
            if let Some(as4) = c.as4_path.take() {
                as_path = merge_as4_path(as_path, as4);
            }
        }
    }

    let mut reach = Vec::new();
    if let Some(nh) = c.next_hop.filter(|_| !nlri.is_empty()) {
        reach.push(Reach {
            next_hop: NextHop::new(IpAddr::V4(nh)),
            prefixes: nlri,
        });
    }
    if let Some((_, next_hop, prefixes)) = c.mp_reach.take() {
        if !prefixes.is_empty() {
            match reach.iter_mut().find(|r| r.next_hop == next_hop) {
                Some(r) => r.prefixes.extend(prefixes),
                None => reach.push(Reach { next_hop, prefixes }),
            }
        }
    }

    let any_attribute = attrs
        .iter()
        .any(|a| a.code != attr_type::MP_REACH_NLRI && a.code != attr_type::MP_UNREACH_NLRI);
    let attributes = (any_attribute || !reach.is_empty()).then(|| PathAttributes {
        origin: c.origin.unwrap_or_default(),
        as_path,
        med: c.med,
        local_pref: c.local_pref,
        atomic_aggregate: c.atomic_aggregate,
        aggregator,
        communities: c.communities,
        originator_id: c.originator_id,
        cluster_list: c.cluster_list,
        other: c.other,
    });
    Ok(Update {
        withdrawn,
        attributes,
        reach,
        end_of_rib: None,
        treat_as_withdraw: false,
    })
}

#[cfg(test)]
mod tests {
    use crate::wire::testutil::*;

    #[test]
    fn valid_handcrafted_update() {
        let u = decode_update_bytes(&update(&[], &valid_attrs(), &NLRI), &AS4).expect("ok");
        assert!(!u.treat_as_withdraw);
        assert_eq!(
            u.reach,
            vec![Reach {
                next_hop: NextHop::new(v4("192.0.2.1")),
                prefixes: vec![net("10.0.0.0/24"), net("10.1.0.0/16")],
            }]
        );
        // Host bits past the prefix length are cleared: 10.1.3.0/23 -> 10.1.2.0/23.
        let u =
            decode_update_bytes(&update(&[], &valid_attrs(), &[23, 10, 1, 3]), &AS4).expect("ok");
        assert_eq!(u.reach[0].prefixes, vec![net("10.1.2.0/23")]);
        // Multicast NLRI are syntactically fine: kept for policy to judge.
        let u = decode_update_bytes(&update(&[], &valid_attrs(), &[4, 224]), &AS4).expect("ok");
        assert_eq!(u.reach[0].prefixes, vec![net("224.0.0.0/4")]);
    }

    #[test]
    fn session_reset_classes() {
        let attrs = valid_attrs();
        let mp_reach = |v: &[u8]| attr(0x80, 14, v);
        let nh16 = [0xfdu8; 16];
        let whole_bad_nh = mp_reach(&[[0u8, 2, 1, 19].as_slice(), &[0; 20]].concat());
        type Case = (&'static str, Vec<u8>, (u8, u8), Vec<u8>);
        let cases: Vec<Case> = vec![
            (
                "withdrawn length overruns the message",
                {
                    let mut b = update(&[], &attrs, &NLRI);
                    b[20] = 200;
                    b
                },
                (3, 1),
                vec![],
            ),
            (
                "total attribute length overruns the message",
                {
                    let mut b = update(&[], &attrs, &NLRI);
                    b[22] = 200;
                    b
                },
                (3, 1),
                vec![],
            ),
            (
                "NLRI prefix length 33",
                update(&[], &attrs, &[33, 1, 2, 3, 4, 5]),
                (3, 10),
                vec![],
            ),
            (
                "NLRI truncated",
                update(&[], &attrs, &[24, 10, 0]),
                (3, 10),
                vec![],
            ),
            (
                "withdrawn prefix length 40",
                update(&[40, 1, 2, 3, 4, 5], &[], &[]),
                (3, 10),
                vec![],
            ),
            (
                "MP_REACH IPv6 next hop of 19 octets",
                update(&[], &[attrs.clone(), whole_bad_nh.clone()].concat(), &[]),
                (3, 9),
                whole_bad_nh.clone(),
            ),
            (
                "MP_REACH too short for AFI/SAFI",
                update(&[], &[attrs.clone(), mp_reach(&[0, 2])].concat(), &[]),
                (3, 9),
                mp_reach(&[0, 2]),
            ),
            (
                "MP_REACH IPv6 prefix length 129",
                update(
                    &[],
                    &[
                        attrs.clone(),
                        mp_reach(&[[0, 2, 1, 16].as_slice(), &nh16, &[0, 129]].concat()),
                    ]
                    .concat(),
                    &[],
                ),
                (3, 9),
                mp_reach(&[[0, 2, 1, 16].as_slice(), &nh16, &[0, 129]].concat()),
            ),
            (
                "MP_UNREACH IPv6 prefix overrun",
                update(&[], &attr(0x80, 15, &[0, 2, 1, 64, 0xfd]), &[]),
                (3, 9),
                attr(0x80, 15, &[0, 2, 1, 64, 0xfd]),
            ),
            (
                "MP_REACH repeated",
                update(
                    &[],
                    &[
                        attrs.clone(),
                        mp_reach(&[0, 1, 128, 0, 0]),
                        mp_reach(&[0, 1, 128, 0, 0]),
                    ]
                    .concat(),
                    &[],
                ),
                (3, 1),
                vec![],
            ),
            (
                "MP_UNREACH flagged transitive",
                update(&[], &attr(0xc0, 15, &[0, 2, 1]), &[]),
                (3, 4),
                attr(0xc0, 15, &[0, 2, 1]),
            ),
            (
                "unrecognized well-known attribute",
                update(&[], &[attrs.clone(), attr(0x40, 99, &[1])].concat(), &NLRI),
                (3, 2),
                attr(0x40, 99, &[1]),
            ),
            (
                "reset beats treat-as-withdraw",
                update(
                    &[],
                    &[attr(0x40, 1, &[9]), attr(0x40, 99, &[])].concat(),
                    &NLRI,
                ),
                (3, 2),
                attr(0x40, 99, &[]),
            ),
        ];
        for (name, bytes, (code, sub), data) in cases {
            let res = decode_update_bytes(&bytes, &AS4);
            assert!(res.is_err(), "{name}: {res:?}");
            assert_reset(res, code, sub, &data);
        }
    }
}
