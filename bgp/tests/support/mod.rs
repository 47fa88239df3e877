//! Shared by the integration tests: valid seed messages and a deterministic mutator.
//!
//! Use from a test file with `mod support;`. The FSM mutation run can feed
//! `Mutator::mutate(seed)` bytes to the session the same way `mutation.rs` feeds `wire`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ferrovia_bgp::message::*;
use ferrovia_bgp::wire;
use ipnet::IpNet;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Both AS-number widths a session can negotiate.
pub const CONTEXTS: [SessionContext; 2] = [
    SessionContext {
        four_octet_as: true,
    },
    SessionContext {
        four_octet_as: false,
    },
];

fn net(s: &str) -> IpNet {
    s.parse().expect("seed prefix")
}

pub fn sample_attributes() -> PathAttributes {
    PathAttributes {
        origin: Origin::Egp,
        as_path: vec![
            AsSegment::Sequence(vec![65001, 4_200_000_001, 65002]),
            AsSegment::Set(vec![65010, 65011]),
        ],
        med: Some(10),
        local_pref: Some(100),
        atomic_aggregate: true,
        aggregator: Some((4_200_000_002, Ipv4Addr::new(192, 0, 2, 2))),
        communities: vec![0xfde8_0064, 0xffff_ff02],
        originator_id: Some(Ipv4Addr::new(192, 0, 2, 3)),
        cluster_list: vec![Ipv4Addr::new(192, 0, 2, 4)],
        other: vec![
            RawAttribute {
                flags: 0xc0,
                type_code: 16,
                value: vec![0, 2, 0xfd, 0xe8, 0, 0, 0, 7],
            },
            RawAttribute {
                flags: 0xe0,
                type_code: 32,
                value: vec![0, 0, 0xfd, 0xe8, 0, 0, 0, 1, 0, 0, 0, 2],
            },
        ],
    }
}

/// Valid OPEN messages (encoded by `wire`, plus hand-made RFC 9072 and unknown-capability
/// variants).
pub fn seed_opens() -> Vec<Vec<u8>> {
    let full = Open {
        version: BGP_VERSION,
        my_as: AS_TRANS,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(198, 18, 0, 1),
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            enhanced_route_refresh: true,
            four_octet_as: Some(4_200_000_001),
            graceful_restart: Some(GracefulRestart {
                restarting: true,
                notification: false,
                restart_time: 120,
                families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, false)],
            }),
            unknown: vec![],
        },
    };
    let bare = Open {
        my_as: 65001,
        capabilities: Capabilities::default(),
        ..full.clone()
    };
    let v4_only = Open {
        my_as: 65002,
        hold_time: 3,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast],
            four_octet_as: Some(65002),
            ..Default::default()
        },
        ..full.clone()
    };
    let mut out: Vec<Vec<u8>> = [full, bare, v4_only]
        .into_iter()
        .map(|o| wire::encode(&Message::Open(o), &CONTEXTS[0]).expect("seed OPEN"))
        .collect();
    // Extended optional parameters (RFC 9072) and unknown capabilities.
    let caps = [
        vec![1, 4, 0, 1, 0, 1],
        vec![1, 4, 0, 1, 0, 133],
        vec![2, 0],
        vec![128, 0],
        vec![73, 5, 2, b'n', b'1', 1, b'x'],
        vec![64, 6, 0x80, 120, 0, 2, 1, 0x80],
        vec![69, 4, 0, 1, 1, 3],
    ]
    .concat();
    let mut body = vec![4, 0xfd, 0xe9, 0, 180, 10, 0, 0, 1, 255, 255];
    body.extend_from_slice(&u16::try_from(caps.len() + 3).expect("len").to_be_bytes());
    body.push(2);
    body.extend_from_slice(&u16::try_from(caps.len()).expect("len").to_be_bytes());
    body.extend_from_slice(&caps);
    out.push(frame(1, &body));
    out
}

/// Wraps a body in a header.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = wire::MARKER.to_vec();
    m.extend_from_slice(&u16::try_from(19 + body.len()).expect("len").to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// Valid UPDATE messages covering both families, both AS widths, withdrawals,
/// End-of-RIB, AS4_PATH, MP_REACH for IPv4 and packed multi-prefix messages.
pub fn seed_updates() -> Vec<Vec<u8>> {
    let attrs = sample_attributes();
    let v4_reach = Reach {
        next_hop: NextHop::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
        prefixes: vec![net("10.244.1.0/26"), net("10.0.0.0/8"), net("0.0.0.0/0")],
    };
    let v6_reach = Reach {
        next_hop: NextHop {
            address: IpAddr::V6("fd00::1".parse().expect("ip")),
            link_local: Some(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        },
        prefixes: vec![net("fd00:10:244:1::/64"), net("fd00:10:244::/48")],
    };
    let mut out = Vec::new();
    for ctx in CONTEXTS {
        for u in [
            Update {
                withdrawn: vec![net("10.9.0.0/16")],
                attributes: Some(attrs.clone()),
                reach: vec![v4_reach.clone()],
                ..Default::default()
            },
            Update {
                withdrawn: vec![net("fd00:10:244:9::/64"), net("10.7.0.0/16")],
                attributes: Some(attrs.clone()),
                reach: vec![v6_reach.clone()],
                ..Default::default()
            },
            Update {
                withdrawn: vec![net("10.1.0.0/16"), net("fd00:1::/32")],
                ..Default::default()
            },
        ] {
            out.push(wire::encode(&Message::Update(u), &ctx).expect("seed UPDATE"));
        }
        for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            out.push(wire::end_of_rib(f, &ctx));
        }
        // A few packed messages with many prefixes.
        let many: Vec<IpNet> = (0u32..400)
            .map(|i| {
                IpNet::V4(
                    ipnet::Ipv4Net::new(Ipv4Addr::from(0x0a00_0000 | (i << 8)), 24).expect("net"),
                )
            })
            .collect();
        let r = Reach {
            next_hop: v4_reach.next_hop,
            prefixes: many,
        };
        out.extend(
            wire::pack_updates(&[], Some((&attrs, &r)), &ctx)
                .into_iter()
                .take(1),
        );
    }
    // MP_REACH for IPv4 unicast plus an MP_REACH for an unknown family, by hand.
    let attr = |flags: u8, code: u8, v: &[u8]| {
        let mut a = vec![flags, code, u8::try_from(v.len()).expect("len")];
        a.extend_from_slice(v);
        a
    };
    let attrs = [
        attr(0x40, 1, &[0]),
        attr(0x40, 2, &[2, 1, 0, 0, 0xfd, 0xe9]),
        attr(0x80, 14, &[0, 1, 1, 4, 192, 0, 2, 9, 0, 8, 12, 16, 13, 1]),
        attr(0x80, 14, &[0, 1, 133, 0, 0, 5, 1, 2, 3, 4, 5]),
    ];
    // (two MP_REACH would be a reset: keep them in separate seeds)
    let mut b = vec![0, 0];
    let list = [attrs[0].clone(), attrs[1].clone(), attrs[2].clone()].concat();
    b.extend_from_slice(&u16::try_from(list.len()).expect("len").to_be_bytes());
    b.extend_from_slice(&list);
    out.push(frame(2, &b));
    let mut b = vec![0, 0];
    let list = [attrs[0].clone(), attrs[1].clone(), attrs[3].clone()].concat();
    b.extend_from_slice(&u16::try_from(list.len()).expect("len").to_be_bytes());
    b.extend_from_slice(&list);
    b.extend_from_slice(&[24, 10, 2, 3]);
    out.push(frame(2, &b));
    out
}

/// Offsets and widths of the length fields in a (valid-looking) message, found by a
/// forgiving walk; used to aim mutations at them.
pub fn length_fields(msg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = length_fields_unchecked(msg);
    out.retain(|(o, w)| o + w <= msg.len());
    out
}

fn length_fields_unchecked(msg: &[u8]) -> Vec<(usize, usize)> {
    let mut out = vec![(16, 2)];
    let get = |i: usize| msg.get(i).copied().map(usize::from);
    let get16 = |i: usize| Some(get(i)? << 8 | get(i + 1)?);
    match msg.get(18) {
        Some(1) => {
            // OPEN: optional parameters length, each parameter and capability length.
            out.push((28, 1));
            let mut p = 29;
            while let (Some(_), Some(plen)) = (get(p), get(p + 1)) {
                out.push((p + 1, 1));
                let mut c = p + 2;
                while c + 1 < p + 2 + plen {
                    out.push((c + 1, 1));
                    c += 2 + get(c + 1).unwrap_or(0);
                }
                p += 2 + plen;
            }
        }
        Some(2) => {
            // UPDATE: withdrawn length, attribute length, each attribute length.
            out.push((19, 2));
            let Some(wlen) = get16(19) else { return out };
            let alen_at = 21 + wlen;
            out.push((alen_at, 2));
            let Some(alen) = get16(alen_at) else {
                return out;
            };
            let mut a = alen_at + 2;
            let end = a + alen;
            while a + 2 < end {
                let Some(flags) = get(a) else { break };
                if flags & 0x10 != 0 {
                    out.push((a + 2, 2));
                    a += 4 + get16(a + 2).unwrap_or(0);
                } else {
                    out.push((a + 2, 1));
                    a += 3 + get(a + 2).unwrap_or(0);
                }
            }
        }
        _ => {}
    }
    out
}

/// Deterministic mutations: bit flips, byte replacements, truncation, length-field
/// corruption, insertion and deletion. Most results get their header length fixed up so
/// they pass framing and reach the body parsers.
pub struct Mutator {
    rng: StdRng,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    fn interesting(&mut self) -> u8 {
        const VALUES: [u8; 12] = [0, 1, 2, 3, 4, 7, 8, 16, 32, 0x7f, 0x80, 0xff];
        VALUES[self.rng.gen_range(0..VALUES.len())]
    }

    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut m = seed.to_vec();
        let rounds = self.rng.gen_range(1..=3);
        for _ in 0..rounds {
            if m.is_empty() {
                break;
            }
            match self.rng.gen_range(0..7) {
                0 => {
                    // bit flip, never in the marker most of the time
                    let lo = if self.rng.gen_bool(0.95) {
                        16.min(m.len() - 1)
                    } else {
                        0
                    };
                    let i = self.rng.gen_range(lo..m.len());
                    m[i] ^= 1 << self.rng.gen_range(0..8);
                }
                1 => {
                    let i = self.rng.gen_range(16.min(m.len() - 1)..m.len());
                    m[i] = if self.rng.gen_bool(0.5) {
                        self.interesting()
                    } else {
                        self.rng.gen()
                    };
                }
                2 => {
                    let n = self.rng.gen_range(0..m.len());
                    m.truncate(n);
                }
                3 | 4 => {
                    let fields = length_fields(&m);
                    if fields.is_empty() {
                        continue;
                    }
                    let (o, w) = fields[self.rng.gen_range(0..fields.len())];
                    let old = if w == 2 {
                        u16::from_be_bytes([m[o], m[o + 1]])
                    } else {
                        u16::from(m[o])
                    };
                    let new = match self.rng.gen_range(0..4) {
                        0 => old.wrapping_add(self.rng.gen_range(1..4)),
                        1 => old.wrapping_sub(self.rng.gen_range(1..4)),
                        2 => u16::from(self.interesting()),
                        _ => self.rng.gen(),
                    };
                    if w == 2 {
                        m[o..o + 2].copy_from_slice(&new.to_be_bytes());
                    } else {
                        m[o] = new.to_be_bytes()[1];
                    }
                }
                5 => {
                    let i = self.rng.gen_range(0..=m.len());
                    let n = self.rng.gen_range(1..=8);
                    for k in 0..n {
                        let b = if self.rng.gen_bool(0.5) {
                            self.interesting()
                        } else {
                            self.rng.gen()
                        };
                        m.insert(i + k, b);
                    }
                }
                _ => {
                    let i = self.rng.gen_range(0..m.len());
                    let n = self.rng.gen_range(1..=4).min(m.len() - i);
                    m.drain(i..i + n);
                }
            }
        }
        // Usually make the header length agree, so the body parsers are exercised.
        if m.len() >= 18 && m.len() <= 4096 && self.rng.gen_bool(0.85) {
            let len = u16::try_from(m.len()).unwrap_or(u16::MAX);
            m[16..18].copy_from_slice(&len.to_be_bytes());
        }
        m
    }
}
/// What decode gives must survive encode + decode unchanged (for messages that can be
/// encoded at all). Capabilities we do not interpret are not re-sent, and a
/// treat-as-withdraw UPDATE re-encodes as plain withdrawals, so those are compared loosely.
pub fn check_reencode(m: &Message, ctx: &SessionContext) -> Result<(), String> {
    let Ok(bytes) = wire::encode(m, ctx) else {
        return Ok(());
    };
    let again = wire::decode(&bytes, ctx).map_err(|n| format!("re-encoded {m:?} fails: {n}"))?;
    let expected = match m.clone() {
        Message::Open(mut o) => {
            o.capabilities.unknown.clear();
            Message::Open(o)
        }
        Message::Update(mut u) if u.treat_as_withdraw => {
            u.treat_as_withdraw = false;
            Message::Update(u)
        }
        other => other,
    };
    if again == expected {
        Ok(())
    } else {
        Err(format!(
            "decode(encode(m)) != m\n m: {expected:?}\n got: {again:?}"
        ))
    }
}
