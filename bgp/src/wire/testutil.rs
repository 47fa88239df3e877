//! Helpers shared by the wire module's unit tests: sample attributes and hand-made bytes.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

pub(super) use crate::message::*;
pub(super) use crate::wire::*;

pub(super) const AS4: SessionContext = SessionContext {
    four_octet_as: true,
};
pub(super) const AS2: SessionContext = SessionContext {
    four_octet_as: false,
};

pub(super) fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

pub(super) fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse().expect("test address"))
}

pub(super) fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("test address")
}

pub(super) fn roundtrip(msg: &Message, ctx: &SessionContext) -> Message {
    let bytes = encode(msg, ctx).expect("encode");
    assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
    decode(&bytes, ctx).expect("decode")
}

pub(super) fn full_attrs() -> PathAttributes {
    PathAttributes {
        origin: Origin::Incomplete,
        as_path: vec![
            AsSegment::Sequence(vec![65001, 4_200_000_001, 65002]),
            AsSegment::Set(vec![65010, 4_200_000_010]),
        ],
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some((4_200_000_099, "192.0.2.99".parse().expect("ip"))),
        communities: vec![0xfde8_0001, 0xffff_ff01],
        originator_id: Some("192.0.2.7".parse().expect("ip")),
        cluster_list: vec![
            "192.0.2.8".parse().expect("ip"),
            "192.0.2.9".parse().expect("ip"),
        ],
        other: vec![
            RawAttribute {
                flags: 0xc0,
                type_code: attr_type::EXTENDED_COMMUNITIES,
                value: vec![0, 2, 0xfd, 0xe8, 0, 0, 0, 1],
            },
            RawAttribute {
                flags: 0xe0,
                type_code: 99,
                value: vec![1, 2, 3],
            },
        ],
    }
}

pub(super) fn simple_attrs(asn: u32) -> PathAttributes {
    PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![asn])],
        ..Default::default()
    }
}

// ----- helpers to hand-craft bytes -----

pub(super) fn message(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = MARKER.to_vec();
    m.extend_from_slice(&u16::try_from(19 + body.len()).expect("len").to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

pub(super) fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = u16::try_from(withdrawn.len())
        .expect("len")
        .to_be_bytes()
        .to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&u16::try_from(attrs.len()).expect("len").to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    message(msg_type::UPDATE, &b)
}

pub(super) fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut a = vec![flags, code];
    if flags & attr_flags::EXTENDED_LENGTH != 0 {
        a.extend_from_slice(&u16::try_from(value.len()).expect("len").to_be_bytes());
    } else {
        a.push(u8::try_from(value.len()).expect("len"));
    }
    a.extend_from_slice(value);
    a
}

pub(super) fn origin_igp() -> Vec<u8> {
    attr(0x40, 1, &[0])
}
pub(super) fn as_path4(asns: &[u32]) -> Vec<u8> {
    let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, 2, &v)
}
pub(super) fn as_path2(asns: &[u16]) -> Vec<u8> {
    let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, 2, &v)
}
pub(super) fn next_hop() -> Vec<u8> {
    attr(0x40, 3, &[192, 0, 2, 1])
}
/// 10.0.0.0/24 and 10.1.0.0/16
pub(super) const NLRI: [u8; 7] = [24, 10, 0, 0, 16, 10, 1];

pub(super) fn valid_attrs() -> Vec<u8> {
    [origin_igp(), as_path4(&[65001]), next_hop()].concat()
}

pub(super) fn decode_update_bytes(b: &[u8], ctx: &SessionContext) -> Result<Update, Notification> {
    match decode(b, ctx)? {
        Message::Update(u) => Ok(u),
        other => panic!("not an UPDATE: {other:?}"),
    }
}

/// Treat-as-withdraw of the two NLRI prefixes.
pub(super) fn assert_withdrawn(res: Result<Update, Notification>) {
    let u = res.expect("treat-as-withdraw is not a session reset");
    assert_eq!(
        u,
        Update {
            withdrawn: vec![net("10.0.0.0/24"), net("10.1.0.0/16")],
            attributes: None,
            reach: vec![],
            end_of_rib: None,
            treat_as_withdraw: true,
        }
    );
}

pub(super) fn assert_reset(res: Result<Update, Notification>, code: u8, subcode: u8, data: &[u8]) {
    let n = res.expect_err("session reset expected");
    assert_eq!(
        (n.code, n.subcode, n.data.as_slice()),
        (code, subcode, data)
    );
}
