//! Path attributes on receipt: one function per attribute, each applying its RFC 7606 rule
//! and storing the value in [`Collected`]. [`attribute`] dispatches on the type code.
//!
//! Each function returns the [`Verdict`] for its attribute; `Err` is a session reset.
//! Semantic checks (own address as next hop, LOCAL_PREF from an external peer, martians)
//! belong to the caller, which knows the session.

use netgauze_bgp_pkt::path_attribute as ng;
use netgauze_bgp_pkt::path_attribute::{PathAttribute, PathAttributeValue};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;

use crate::message::{notif, AsSegment, Notification, Origin, RawAttribute, SessionContext};

use super::as4::parse_as4_path;
use super::mp::{decode_mp_reach, decode_mp_unreach};
use super::reader::Reader;
use super::update::{Collected, RawAttr, Verdict};
use super::{attr_flags, attr_type};

/// Parses one attribute alone with netgauze (strict), after our own checks.
pub(super) fn ng_parse(
    a: &RawAttr<'_>,
    ng_ctx: &mut BgpParsingContext,
) -> Option<PathAttributeValue> {
    let mut cur = SliceReader::new(a.whole);
    let parsed = <PathAttribute as ParseFromWithOneInput<'_, &mut BgpParsingContext>>::parse(
        &mut cur, ng_ctx,
    )
    .ok()?;
    cur.is_empty().then(|| parsed.value().clone())
}

pub(super) fn segment(t: ng::AsPathSegmentType, asns: Vec<u32>) -> AsSegment {
    match t {
        ng::AsPathSegmentType::AsSet => AsSegment::Set(asns),
        ng::AsPathSegmentType::AsSequence => AsSegment::Sequence(asns),
    }
}

/// The attribute flag classes RFC 4271 §4.3 defines.
#[derive(Debug, Clone, Copy)]
struct Class {
    optional: bool,
    transitive: bool,
    /// Well-known: not optional, transitive, Partial 0.
    well_known: bool,
    /// Optional non-transitive (Partial must be 0 too).
    optional_non_transitive: bool,
    optional_transitive: bool,
}

impl Class {
    fn of(flags: u8) -> Class {
        use attr_flags::{OPTIONAL, PARTIAL, TRANSITIVE};
        let optional = flags & OPTIONAL != 0;
        let transitive = flags & TRANSITIVE != 0;
        let partial = flags & PARTIAL != 0;
        Class {
            optional,
            transitive,
            well_known: !optional && transitive && !partial,
            optional_non_transitive: optional && !transitive && !partial,
            optional_transitive: optional && transitive,
        }
    }
}

/// `Ok` when the checks hold, else treat-as-withdraw.
fn withdraw_unless(ok: bool) -> Verdict {
    if ok {
        Verdict::Ok
    } else {
        Verdict::Withdraw
    }
}

/// Applies RFC 7606 to one attribute and stores its value. `Err` is a session reset.
pub(super) fn attribute(
    a: &RawAttr<'_>,
    ctx: &SessionContext,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Result<Verdict, Notification> {
    use attr_type::*;
    let class = Class::of(a.flags);
    Ok(match a.code {
        ORIGIN => origin(a, class, ng_ctx, c),
        AS_PATH => as_path(a, class, ng_ctx, c),
        NEXT_HOP => next_hop(a, class, ng_ctx, c),
        MULTI_EXIT_DISC => multi_exit_disc(a, class, ng_ctx, c),
        LOCAL_PREF => local_pref(a, class, ng_ctx, c),
        ATOMIC_AGGREGATE => atomic_aggregate(a, class, c),
        AGGREGATOR => aggregator(a, class, ctx, ng_ctx, c),
        COMMUNITIES => communities(a, class, ng_ctx, c),
        ORIGINATOR_ID => originator_id(a, class, ng_ctx, c),
        CLUSTER_LIST => cluster_list(a, class, ng_ctx, c),
        MP_REACH_NLRI | MP_UNREACH_NLRI => multiprotocol(a, class, c)?,
        AS4_PATH => as4_path(a, class, ctx, c),
        AS4_AGGREGATOR => as4_aggregator(a, class, ctx, c),
        EXTENDED_COMMUNITIES | IPV6_EXTENDED_COMMUNITIES | LARGE_COMMUNITIES | ONLY_TO_CUSTOMER => {
            carried_raw(a, class, c)
        }
        _ => unrecognized(a, class, c)?,
    })
}

/// ORIGIN, RFC 7606 §7.1.
fn origin(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !(class.well_known && a.value.len() == 1) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::Origin(o)) => {
            c.origin = Some(match o {
                ng::Origin::IGP => Origin::Igp,
                ng::Origin::EGP => Origin::Egp,
                ng::Origin::Incomplete => Origin::Incomplete,
            });
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// AS_PATH, RFC 7606 §7.2. Confederation segments are refused too: we are never a
/// confederation member, so they are malformed from any peer (RFC 5065 §5).
fn as_path(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !class.well_known {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::AsPath(p)) => {
            c.as_path = Some(match p {
                ng::AsPath::As2PathSegments(segs) => segs
                    .iter()
                    .map(|s| {
                        segment(
                            s.segment_type(),
                            s.as_numbers().iter().map(|n| u32::from(*n)).collect(),
                        )
                    })
                    .collect(),
                ng::AsPath::As4PathSegments(segs) => segs
                    .iter()
                    .map(|s| segment(s.segment_type(), s.as_numbers().to_vec()))
                    .collect(),
            });
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// NEXT_HOP, RFC 7606 §7.3.
fn next_hop(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !(class.well_known && a.value.len() == 4) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::NextHop(nh)) => {
            c.next_hop = Some(nh.next_hop());
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// MULTI_EXIT_DISC, RFC 7606 §7.4.
fn multi_exit_disc(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !(class.optional_non_transitive && a.value.len() == 4) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::MultiExitDiscriminator(m)) => {
            c.med = Some(m.metric());
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// LOCAL_PREF, RFC 7606 §7.5 (from an external peer it must be discarded: the caller
/// knows the session type).
fn local_pref(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !(class.well_known && a.value.len() == 4) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::LocalPreference(l)) => {
            c.local_pref = Some(l.metric());
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// ATOMIC_AGGREGATE, RFC 7606 §7.6: attribute discard.
fn atomic_aggregate(a: &RawAttr<'_>, class: Class, c: &mut Collected) -> Verdict {
    if !(class.well_known && a.value.is_empty()) {
        return Verdict::Discard;
    }
    c.atomic_aggregate = true;
    Verdict::Ok
}

/// AGGREGATOR, RFC 7606 §7.7: attribute discard; 8 octets with 4-octet AS, else 6.
fn aggregator(
    a: &RawAttr<'_>,
    class: Class,
    ctx: &SessionContext,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    let want = if ctx.four_octet_as { 8 } else { 6 };
    if !(class.optional_transitive && a.value.len() == want) {
        return Verdict::Discard;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::Aggregator(ng::Aggregator::As4Aggregator(g))) => {
            c.aggregator = Some((*g.asn(), g.origin()));
            Verdict::Ok
        }
        Some(PathAttributeValue::Aggregator(ng::Aggregator::As2Aggregator(g))) => {
            c.aggregator = Some((u32::from(*g.asn()), g.origin()));
            Verdict::Ok
        }
        _ => Verdict::Discard,
    }
}

/// COMMUNITIES, RFC 7606 §7.8: a non-zero multiple of 4.
fn communities(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    let len = a.value.len();
    if !(class.optional_transitive && len > 0 && len.is_multiple_of(4)) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::Communities(cs)) => {
            c.communities = cs.communities().iter().map(|x| x.value()).collect();
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// ORIGINATOR_ID, RFC 7606 §7.9.
fn originator_id(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    if !(class.optional_non_transitive && a.value.len() == 4) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::Originator(o)) => {
            c.originator_id = Some(o.id());
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// CLUSTER_LIST, RFC 7606 §7.10: a non-zero multiple of 4.
fn cluster_list(
    a: &RawAttr<'_>,
    class: Class,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Verdict {
    let len = a.value.len();
    if !(class.optional_non_transitive && len > 0 && len.is_multiple_of(4)) {
        return Verdict::Withdraw;
    }
    match ng_parse(a, ng_ctx) {
        Some(PathAttributeValue::ClusterList(l)) => {
            c.cluster_list = l.cluster_list().iter().map(|x| x.id()).collect();
            Verdict::Ok
        }
        _ => Verdict::Withdraw,
    }
}

/// MP_REACH_NLRI and MP_UNREACH_NLRI, RFC 7606 §7.11, §5.3, RFC 4760 §7: any error
/// resets the session.
fn multiprotocol(
    a: &RawAttr<'_>,
    class: Class,
    c: &mut Collected,
) -> Result<Verdict, Notification> {
    if !class.optional_non_transitive {
        return Err(Notification::with_data(
            notif::UPDATE_MESSAGE_ERROR,
            notif::ATTRIBUTE_FLAGS_ERROR,
            a.whole.to_vec(),
        ));
    }
    if a.code == attr_type::MP_REACH_NLRI {
        c.mp_reach = decode_mp_reach(a)?;
    } else {
        c.mp_unreach = decode_mp_unreach(a)?;
    }
    Ok(Verdict::Ok)
}

/// AS4_PATH, RFC 6793 §6: ignored between 4-octet speakers; attribute discard when
/// malformed.
fn as4_path(a: &RawAttr<'_>, class: Class, ctx: &SessionContext, c: &mut Collected) -> Verdict {
    if ctx.four_octet_as || !class.optional_transitive {
        return Verdict::Discard;
    }
    match parse_as4_path(a.value) {
        Some(p) => {
            c.as4_path = Some(p);
            Verdict::Ok
        }
        None => Verdict::Discard,
    }
}

/// AS4_AGGREGATOR, RFC 6793 §6: as AS4_PATH.
fn as4_aggregator(
    a: &RawAttr<'_>,
    class: Class,
    ctx: &SessionContext,
    c: &mut Collected,
) -> Verdict {
    if ctx.four_octet_as || !(class.optional_transitive && a.value.len() == 8) {
        return Verdict::Discard;
    }
    let mut r = Reader::new(a.value);
    match (r.u32(), r.ipv4()) {
        (Some(asn), Some(ip)) => {
            c.as4_aggregator = Some((asn, ip));
            Verdict::Ok
        }
        _ => Verdict::Discard,
    }
}

/// Known optional transitive attributes we carry raw; their RFCs (7606 §7.14, RFC 5701 as
/// updated by 7606 §7.15, RFC 8092 §6, RFC 9234 §5) say treat-as-withdraw when the length
/// is wrong.
fn carried_raw(a: &RawAttr<'_>, class: Class, c: &mut Collected) -> Verdict {
    use attr_type::{EXTENDED_COMMUNITIES, IPV6_EXTENDED_COMMUNITIES, LARGE_COMMUNITIES};
    let len = a.value.len();
    let ok = class.optional_transitive
        && match a.code {
            EXTENDED_COMMUNITIES => len > 0 && len.is_multiple_of(8),
            IPV6_EXTENDED_COMMUNITIES => len > 0 && len.is_multiple_of(20),
            LARGE_COMMUNITIES => len > 0 && len.is_multiple_of(12),
            // ONLY_TO_CUSTOMER
            _ => len == 4,
        };
    if ok {
        c.other.push(RawAttribute {
            flags: a.flags & 0xf0,
            type_code: a.code,
            value: a.value.to_vec(),
        });
    }
    withdraw_unless(ok)
}

/// Attributes we do not know. An unrecognized well-known attribute resets the session
/// (RFC 4271 §6.3, unchanged by RFC 7606); optional transitive ones are passed on,
/// optional non-transitive ones quietly ignored (RFC 4271 §5).
fn unrecognized(a: &RawAttr<'_>, class: Class, c: &mut Collected) -> Result<Verdict, Notification> {
    if !class.optional {
        return Err(Notification::with_data(
            notif::UPDATE_MESSAGE_ERROR,
            notif::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
            a.whole.to_vec(),
        ));
    }
    if class.transitive {
        c.other.push(RawAttribute {
            flags: a.flags & 0xf0,
            type_code: a.code,
            value: a.value.to_vec(),
        });
    }
    Ok(Verdict::Ok)
}

#[cfg(test)]
mod tests {
    use crate::wire::testutil::*;

    #[test]
    fn treat_as_withdraw_classes() {
        let with = |extra: Vec<u8>| update(&[], &[valid_attrs(), extra].concat(), &NLRI);
        let replace = |attrs: Vec<Vec<u8>>| update(&[], &attrs.concat(), &NLRI);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "ORIGIN undefined value",
                replace(vec![attr(0x40, 1, &[3]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN length 2",
                replace(vec![attr(0x40, 1, &[0, 0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN flagged optional",
                replace(vec![attr(0xc0, 1, &[0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN partial bit",
                replace(vec![attr(0x60, 1, &[0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "AS_PATH zero segment length",
                replace(vec![origin_igp(), attr(0x40, 2, &[2, 0]), next_hop()]),
            ),
            (
                "AS_PATH undefined segment type",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[5, 1, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH confederation segment",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[3, 1, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH segment overrun",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[2, 2, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH 2-octet in a 4-octet session",
                replace(vec![origin_igp(), attr(0x40, 2, &[2, 1, 0, 1]), next_hop()]),
            ),
            (
                "NEXT_HOP length 5",
                replace(vec![
                    origin_igp(),
                    as_path4(&[1]),
                    attr(0x40, 3, &[1, 2, 3, 4, 5]),
                ]),
            ),
            ("MED length 3", with(attr(0x80, 4, &[0, 0, 1]))),
            ("MED flagged well-known", with(attr(0x40, 4, &[0, 0, 0, 1]))),
            ("LOCAL_PREF length 2", with(attr(0x40, 5, &[0, 1]))),
            (
                "COMMUNITIES length 5",
                with(attr(0xc0, 8, &[0, 0, 0, 1, 0])),
            ),
            ("COMMUNITIES length 0", with(attr(0xc0, 8, &[]))),
            ("ORIGINATOR_ID length 3", with(attr(0x80, 9, &[1, 2, 3]))),
            (
                "CLUSTER_LIST length 6",
                with(attr(0x80, 10, &[1, 2, 3, 4, 5, 6])),
            ),
            ("CLUSTER_LIST length 0", with(attr(0x80, 10, &[]))),
            (
                "EXTENDED_COMMUNITIES length 7",
                with(attr(0xc0, 16, &[0; 7])),
            ),
            ("LARGE_COMMUNITIES length 8", with(attr(0xc0, 32, &[0; 8]))),
            ("missing ORIGIN", replace(vec![as_path4(&[1]), next_hop()])),
            ("missing AS_PATH", replace(vec![origin_igp(), next_hop()])),
            (
                "missing NEXT_HOP",
                replace(vec![origin_igp(), as_path4(&[1])]),
            ),
            ("no attributes at all", replace(vec![])),
            // RFC 7606 §4: the last attribute overruns the field, or a partial header.
            (
                "attribute overruns the field",
                with(vec![0xc0, 99, 10, 1, 2]),
            ),
            ("one stray octet", with(vec![0xc0])),
            ("extended length header cut", with(vec![0xd0, 99, 0])),
        ];
        for (name, bytes) in cases {
            let res = decode_update_bytes(&bytes, &AS4);
            assert!(
                matches!(&res, Ok(u) if u.treat_as_withdraw),
                "{name}: {res:?}"
            );
            assert_withdrawn(res);
        }
        // Explicit withdrawals and MP_REACH prefixes are withdrawn too.
        let mp = attr(
            0x80,
            14,
            &[
                [0, 2, 1, 16].as_slice(),
                &[0xfd; 16],
                &[0, 32, 0xfd, 0, 0, 0x10],
            ]
            .concat(),
        );
        let b = update(&[8, 11], &[mp, attr(0x40, 1, &[7])].concat(), &[]);
        let u = decode_update_bytes(&b, &AS4).expect("ok");
        assert!(u.treat_as_withdraw);
        assert_eq!(u.withdrawn, vec![net("11.0.0.0/8"), net("fd00:10::/32")]);
    }

    #[test]
    fn attribute_discard_classes() {
        let with = |extra: Vec<u8>| update(&[], &[valid_attrs(), extra].concat(), &NLRI);
        let expect_kept = |bytes: Vec<u8>, ctx: &SessionContext| {
            let u = decode_update_bytes(&bytes, ctx).expect("kept");
            assert!(!u.treat_as_withdraw);
            assert_eq!(u.reach.len(), 1);
            assert_eq!(u.reach[0].prefixes.len(), 2);
            u.attributes.expect("attributes")
        };
        // ATOMIC_AGGREGATE with a value: dropped.
        let a = expect_kept(with(attr(0x40, 6, &[1])), &AS4);
        assert!(!a.atomic_aggregate);
        // ATOMIC_AGGREGATE flagged optional: dropped.
        let a = expect_kept(with(attr(0xc0, 6, &[])), &AS4);
        assert!(!a.atomic_aggregate);
        // AGGREGATOR 7 octets, or 6 in a 4-octet session: dropped.
        let a = expect_kept(with(attr(0xc0, 7, &[0, 0, 0, 1, 1, 2, 3])), &AS4);
        assert_eq!(a.aggregator, None);
        let a = expect_kept(with(attr(0xc0, 7, &[0, 1, 1, 2, 3, 4])), &AS4);
        assert_eq!(a.aggregator, None);
        // Good AGGREGATOR for comparison.
        let a = expect_kept(with(attr(0xc0, 7, &[0, 0, 0, 1, 1, 2, 3, 4])), &AS4);
        assert_eq!(a.aggregator, Some((1, "1.2.3.4".parse().expect("ip"))));
        // AS4_PATH / AS4_AGGREGATOR between 4-octet speakers: ignored.
        let mut as4 = vec![2, 1];
        as4.extend_from_slice(&4_200_000_001u32.to_be_bytes());
        let a = expect_kept(with(attr(0xc0, 17, &as4)), &AS4);
        assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001])]);
        // Malformed AS4_PATH / AS4_AGGREGATOR in a 2-octet session: dropped.
        let two = |extra: Vec<u8>| {
            update(
                &[],
                &[
                    origin_igp(),
                    as_path2(&[65001, AS_TRANS]),
                    next_hop(),
                    extra,
                ]
                .concat(),
                &NLRI,
            )
        };
        for bad in [
            attr(0xc0, 17, &[2, 0]),
            attr(0xc0, 17, &[2, 2, 0, 0, 0, 1]),
            attr(0xc0, 17, &[9, 1, 0, 0, 0, 1]),
            attr(0x40, 17, &as4),
        ] {
            let a = expect_kept(two(bad), &AS2);
            assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001, 23456])]);
        }
        let a = expect_kept(
            two([
                attr(0xc0, 7, &[0x5b, 0xa0, 1, 2, 3, 4]),
                attr(0xc0, 18, &[0, 0, 1]),
            ]
            .concat()),
            &AS2,
        );
        assert_eq!(a.aggregator, Some((23456, "1.2.3.4".parse().expect("ip"))));
        // A repeated attribute: the first is kept.
        let a = expect_kept(
            with([attr(0x80, 4, &[0, 0, 0, 1]), attr(0x80, 4, &[0, 0, 0, 2])].concat()),
            &AS4,
        );
        assert_eq!(a.med, Some(1));
        // Unknown optional transitive kept raw with its flags (unused low bits cleared);
        // non-transitive dropped.
        let a = expect_kept(
            with(
                [
                    attr(0xe7, 200, &[9, 9]),
                    attr(0x80, 201, &[1]),
                    attr(0xd0, 202, &[5]),
                ]
                .concat(),
            ),
            &AS4,
        );
        assert_eq!(
            a.other,
            vec![
                RawAttribute {
                    flags: 0xe0,
                    type_code: 200,
                    value: vec![9, 9]
                },
                RawAttribute {
                    flags: 0xd0,
                    type_code: 202,
                    value: vec![5]
                },
            ]
        );
        // Strongest action wins: discard + treat-as-withdraw = treat-as-withdraw.
        assert_withdrawn(decode_update_bytes(
            &with([attr(0x40, 6, &[1]), attr(0x80, 4, &[1])].concat()),
            &AS4,
        ));
    }
}
