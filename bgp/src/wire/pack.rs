//! Packing many prefixes into as few UPDATEs as fit in 4096 octets each.

use ipnet::IpNet;

use crate::message::{PathAttributes, Reach, SessionContext, Update, MAX_MESSAGE_LEN};

use super::encode::encode_update;
use super::nlri::{is_encodable_prefix, prefix_wire_len};
use super::WireError;

/// Packs withdrawals and/or announcements (one Reach for one family, sharing `attrs`) into
/// as many UPDATE messages as needed, each at most 4096 bytes, each returned encoded.
///
/// Withdrawals and announcements go in separate messages: IPv4 withdrawals in the classic
/// field, IPv6 withdrawals in MP_UNREACH_NLRI, IPv4 announcements in the classic NLRI field
/// with NEXT_HOP, IPv6 announcements in MP_REACH_NLRI (16-byte next hop, 32 with
/// link-local). Nothing here fails: prefixes the codec cannot encode (multicast) are
/// skipped and logged, and an announcement that cannot be encoded at all (attributes too
/// large, next hop of the wrong family) is logged and left out while the withdrawals are
/// still returned. Use [`try_pack_updates`] to get the error instead.
pub fn pack_updates(
    withdrawn: &[IpNet],
    reach: Option<(&PathAttributes, &Reach)>,
    ctx: &SessionContext,
) -> Vec<Vec<u8>> {
    let keep = |p: &&IpNet| {
        let ok = is_encodable_prefix(p);
        if !ok {
            tracing::warn!(prefix = %p, "not a unicast prefix: left out of UPDATE");
        }
        ok
    };
    let withdrawn: Vec<IpNet> = withdrawn.iter().filter(keep).copied().collect();
    let mut out = Vec::new();
    if let Err(e) = pack_withdrawals(&withdrawn, ctx, &mut out) {
        tracing::error!(error = %e, "could not encode withdrawals");
    }
    if let Some((attrs, r)) = reach {
        let filtered = Reach {
            next_hop: r.next_hop,
            prefixes: r.prefixes.iter().filter(keep).copied().collect(),
        };
        let mut msgs = Vec::new();
        match pack_reach(attrs, &filtered, ctx, &mut msgs) {
            Ok(()) => out.extend(msgs),
            Err(e) => tracing::error!(
                error = %e,
                prefixes = filtered.prefixes.len(),
                "could not encode announcements; they are not sent"
            ),
        }
    }
    out
}

/// [`pack_updates`] that fails instead of leaving anything out.
pub fn try_pack_updates(
    withdrawn: &[IpNet],
    reach: Option<(&PathAttributes, &Reach)>,
    ctx: &SessionContext,
) -> Result<Vec<Vec<u8>>, WireError> {
    let mut out = Vec::new();
    pack_withdrawals(withdrawn, ctx, &mut out)?;
    if let Some((attrs, r)) = reach {
        pack_reach(attrs, r, ctx, &mut out)?;
    }
    Ok(out)
}

pub(super) fn pack_withdrawals(
    withdrawn: &[IpNet],
    ctx: &SessionContext,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), WireError> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        withdrawn.iter().partition(|p| matches!(p, IpNet::V4(_)));
    for list in [v4, v6] {
        pack_with(&list, out, |chunk| {
            encode_update(
                &Update {
                    withdrawn: chunk.to_vec(),
                    ..Default::default()
                },
                ctx,
            )
        })?;
    }
    Ok(())
}

pub(super) fn pack_reach(
    attrs: &PathAttributes,
    r: &Reach,
    ctx: &SessionContext,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), WireError> {
    pack_with(&r.prefixes, out, |chunk| {
        encode_update(
            &Update {
                attributes: Some(attrs.clone()),
                reach: vec![Reach {
                    next_hop: r.next_hop,
                    prefixes: chunk.to_vec(),
                }],
                ..Default::default()
            },
            ctx,
        )
    })
}

/// Greedy packing: the size of a message is its size with one prefix, plus the size of
/// each further prefix, plus one octet in case an attribute grows past 255 bytes and
/// needs the extended length.
pub(super) fn pack_with(
    prefixes: &[IpNet],
    out: &mut Vec<Vec<u8>>,
    build: impl Fn(&[IpNet]) -> Result<Vec<u8>, WireError>,
) -> Result<(), WireError> {
    let Some(first) = prefixes.first() else {
        return Ok(());
    };
    let base = build(std::slice::from_ref(first))?
        .len()
        .saturating_sub(prefix_wire_len(first))
        + 1;
    let mut start = 0;
    while start < prefixes.len() {
        let mut size = base;
        let mut end = start;
        for p in &prefixes[start..] {
            let s = prefix_wire_len(p);
            if size + s > MAX_MESSAGE_LEN {
                break;
            }
            size += s;
            end += 1;
        }
        if end == start {
            return Err(WireError::TooLong(size + prefix_wire_len(&prefixes[start])));
        }
        out.push(build(&prefixes[start..end])?);
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::wire::testutil::*;

    #[test]
    fn pack_updates_splits_and_decodes_back() {
        let mut v4s = BTreeSet::new();
        let mut v6s = BTreeSet::new();
        for i in 0u32..3000 {
            let len = [24u8, 32, 20, 28][usize::try_from(i % 4).expect("idx")];
            let a = Ipv4Addr::from(0x0a00_0000 | (i << 8));
            v4s.insert(IpNet::V4(Ipv4Net::new(a, len).expect("net").trunc()));
            let b = Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                u16::try_from(i).expect("i"),
                0,
                0,
                0,
                0,
            );
            let len6 = [64u8, 128, 48, 96][usize::try_from(i % 4).expect("idx")];
            v6s.insert(IpNet::V6(Ipv6Net::new(b, len6).expect("net").trunc()));
        }
        let v4s: Vec<IpNet> = v4s.into_iter().collect();
        let v6s: Vec<IpNet> = v6s.into_iter().collect();
        let attrs = full_attrs();
        let cases = [
            (NextHop::new(v4("198.18.0.1")), &v4s),
            (
                NextHop {
                    address: IpAddr::V6(v6("fd00::1")),
                    link_local: Some(v6("fe80::1")),
                },
                &v6s,
            ),
        ];
        for ctx in [AS4, AS2] {
            for (nh, prefixes) in &cases {
                let reach = Reach {
                    next_hop: *nh,
                    prefixes: (*prefixes).clone(),
                };
                let msgs = pack_updates(&[], Some((&attrs, &reach)), &ctx);
                assert!(msgs.len() > 1, "3000 prefixes need several messages");
                let mut got = Vec::new();
                for m in &msgs {
                    assert!(m.len() <= MAX_MESSAGE_LEN);
                    let Ok(Message::Update(u)) = decode(m, &ctx) else {
                        panic!("decode")
                    };
                    assert_eq!(u.attributes.as_ref(), Some(&attrs));
                    assert_eq!(u.reach.len(), 1);
                    assert_eq!(u.reach[0].next_hop, *nh);
                    got.extend(u.reach[0].prefixes.iter().copied());
                }
                assert_eq!(&got, *prefixes);
                // Greedy packing fills messages: all but the last are nearly full.
                for m in &msgs[..msgs.len() - 1] {
                    assert!(m.len() > MAX_MESSAGE_LEN - 20, "{}", m.len());
                }
            }
            let both: Vec<IpNet> = v4s.iter().chain(v6s.iter()).copied().collect();
            let msgs = pack_updates(&both, None, &ctx);
            let mut got = Vec::new();
            for m in &msgs {
                assert!(m.len() <= MAX_MESSAGE_LEN);
                let Ok(Message::Update(u)) = decode(m, &ctx) else {
                    panic!("decode")
                };
                assert!(u.reach.is_empty() && u.attributes.is_none());
                got.extend(u.withdrawn);
            }
            assert_eq!(got, both);
        }
    }

    #[test]
    fn pack_updates_edge_cases() {
        let attrs = simple_attrs(65001);
        let reach = Reach {
            next_hop: NextHop::new(v4("198.18.0.1")),
            prefixes: vec![net("10.0.0.0/24"), net("224.0.0.0/4"), net("fd00::/64")],
        };
        // A multicast prefix is skipped; an IPv6 prefix with an IPv4 next hop makes the
        // whole announcement fail while withdrawals still go out.
        let msgs = pack_updates(
            &[net("10.1.0.0/16"), net("239.1.0.0/16")],
            Some((&attrs, &reach)),
            &AS4,
        );
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            try_pack_updates(&[], Some((&attrs, &reach)), &AS4),
            Err(WireError::NonUnicastPrefix(net("224.0.0.0/4")))
        );
        let ok_reach = Reach {
            next_hop: NextHop::new(v4("198.18.0.1")),
            prefixes: vec![net("10.0.0.0/24"), net("224.0.0.0/4")],
        };
        let msgs = pack_updates(&[], Some((&attrs, &ok_reach)), &AS4);
        assert_eq!(msgs.len(), 1);
        assert!(pack_updates(&[], None, &AS4).is_empty());
        // Attributes that leave no room for a single prefix.
        let huge = PathAttributes {
            communities: (0..1100).collect(),
            ..simple_attrs(65001)
        };
        assert!(matches!(
            try_pack_updates(&[], Some((&huge, &ok_reach)), &AS4),
            Err(WireError::TooLong(_))
        ));
    }
}
