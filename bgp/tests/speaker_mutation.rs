//! A bounded, seeded mutation run through the whole sans-IO stack: mutated OPENs reach a
//! session in OpenSent, mutated UPDATEs (and other messages) reach an Established session
//! whose speaker runs the RIBs and policy. Zero panics allowed; the counts of accepted
//! and refused messages show the run exercised both paths.

use ferrovia_bgp::fsm::{Direction, State};
use ferrovia_bgp::message::*;
use ferrovia_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use ferrovia_bgp::wire;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant, SystemTime};

const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254));
/// Wall-clock time handed to the speaker with received bytes (any fixed value).
const WALL: SystemTime = SystemTime::UNIX_EPOCH;
const CTX: SessionContext = SessionContext {
    four_octet_as: true,
};

fn peer_open() -> Open {
    Open {
        version: 4,
        my_as: 65000,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(198, 18, 0, 254),
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            four_octet_as: Some(65000),
            graceful_restart: Some(GracefulRestart {
                restarting: false,
                notification: false,
                restart_time: 120,
                families: vec![(Family::Ipv4Unicast, true)],
            }),
            ..Default::default()
        },
    }
}

fn speaker_in(state: State) -> Speaker {
    let now = Instant::now();
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: Ipv4Addr::new(198, 18, 0, 1),
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(120),
        next_hop_v4: None,
        next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
        cluster_id: None,
    });
    s.add_peer(
        now,
        PeerConfig {
            address: PEER,
            remote_as: 65000,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: Default::default(),
        },
    )
    .expect("peer");
    s.connected(
        now,
        PEER,
        1,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::from([198, 18, 0, 1]), 40000),
    );
    if state == State::Established {
        s.received(
            now,
            WALL,
            PEER,
            1,
            &wire::encode(&Message::Open(peer_open()), &CTX).expect("open"),
        );
        s.received(
            now,
            WALL,
            PEER,
            1,
            &wire::encode(&Message::Keepalive, &CTX).expect("ka"),
        );
        s.originate("10.244.1.0/26".parse().expect("p"), vec![]);
    }
    s.flush();
    while s.poll_action().is_some() || s.poll_event().is_some() {}
    s
}

fn seeds() -> Vec<Vec<u8>> {
    let attrs = PathAttributes {
        origin: Origin::Igp,
        as_path: vec![
            AsSegment::Sequence(vec![65000, 65001]),
            AsSegment::Set(vec![7, 8]),
        ],
        med: Some(10),
        local_pref: Some(100),
        atomic_aggregate: true,
        aggregator: Some((65000, Ipv4Addr::new(1, 2, 3, 4))),
        communities: vec![65000 << 16 | 1],
        ..Default::default()
    };
    let v4 = Reach {
        next_hop: NextHop::new(PEER),
        prefixes: (0..20u8)
            .map(|i| format!("10.{i}.0.0/16").parse().expect("p"))
            .collect(),
    };
    let v6 = Reach {
        next_hop: NextHop {
            address: "fd00:198:18::254".parse().expect("v6"),
            link_local: Some("fe80::1".parse().expect("ll")),
        },
        prefixes: (0..10u16)
            .map(|i| format!("fd00:10:244:{i:x}::/64").parse().expect("p"))
            .collect(),
    };
    let mut out = Vec::new();
    out.extend(wire::pack_updates(&[], Some((&attrs, &v4)), &CTX));
    out.extend(wire::pack_updates(&[], Some((&attrs, &v6)), &CTX));
    out.extend(wire::pack_updates(&v4.prefixes[..5], None, &CTX));
    out.extend(wire::pack_updates(&v6.prefixes[..5], None, &CTX));
    out.push(wire::end_of_rib(Family::Ipv6Unicast, &CTX));
    out.push(wire::encode(&Message::RouteRefresh(Family::Ipv4Unicast), &CTX).expect("rr"));
    out.push(wire::encode(&Message::Keepalive, &CTX).expect("ka"));
    out
}

fn mutate(rng: &mut StdRng, msg: &[u8]) -> Vec<u8> {
    let mut m = msg.to_vec();
    for _ in 0..rng.gen_range(1..=4) {
        if m.is_empty() {
            break;
        }
        match rng.gen_range(0..6) {
            0 => {
                let i = rng.gen_range(0..m.len());
                m[i] ^= 1 << rng.gen_range(0..8);
            }
            1 => {
                let i = rng.gen_range(0..m.len());
                m[i] = rng.gen();
            }
            2 => {
                // Body bytes, sparing the marker most of the time.
                let i = rng.gen_range(16.min(m.len() - 1)..m.len());
                m[i] = [0, 0xff, 1, 0x80, 0x40][rng.gen_range(0..5)];
            }
            3 => {
                let n = rng.gen_range(0..m.len());
                m.truncate(n.max(19).min(m.len()));
                fix_len(&mut m);
            }
            4 => {
                let i = rng.gen_range(19.min(m.len())..=m.len());
                let extra: Vec<u8> = (0..rng.gen_range(1..8)).map(|_| rng.gen()).collect();
                m.splice(i..i, extra);
                fix_len(&mut m);
            }
            _ => {
                // Length field of some attribute or the header.
                let i = rng.gen_range(0..m.len());
                m[i] = m[i].wrapping_add(rng.gen_range(1..4));
            }
        }
    }
    m
}

/// Keeps the header length consistent with the buffer, so mutations reach the body.
fn fix_len(m: &mut [u8]) {
    if m.len() >= 19 {
        let l = (m.len() as u16).to_be_bytes();
        m[16] = l[0];
        m[17] = l[1];
    }
}

#[test]
fn one_hundred_thousand_mutated_messages_through_the_speaker_without_panic() {
    let mut rng = StdRng::seed_from_u64(0xfe77_0b1a);
    let open = wire::encode(&Message::Open(peer_open()), &CTX).expect("open");
    let updates = seeds();
    let now = Instant::now();
    let (mut panics, mut kept, mut dropped) = (0u32, 0u32, 0u32);

    // 50,000 mutated OPENs into a session in OpenSent.
    for _ in 0..50_000 {
        let m = mutate(&mut rng, &open);
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut s = speaker_in(State::OpenSent);
            s.received(now, WALL, PEER, 1, &m);
            s.flush();
            while s.poll_action().is_some() || s.poll_event().is_some() {}
            s.peer_status()[0].state
        }));
        match r {
            Err(_) => panics += 1,
            Ok(State::OpenConfirm) => kept += 1,
            Ok(_) => dropped += 1,
        }
    }
    assert_eq!(panics, 0, "panics on mutated OPENs");
    assert!(kept > 0 && dropped > 0, "kept {kept} dropped {dropped}");

    // 60,000 mutated UPDATEs and others into one Established speaker (re-made when the
    // session goes down), so RIB state accumulates across messages.
    let (mut kept, mut resets) = (0u32, 0u32);
    let mut s = speaker_in(State::Established);
    for i in 0..60_000 {
        let seed = &updates[i % updates.len()];
        let m = mutate(&mut rng, seed);
        let r = catch_unwind(AssertUnwindSafe(|| {
            s.received(now, WALL, PEER, 1, &m);
            s.flush();
            while s.poll_action().is_some() || s.poll_event().is_some() {}
            s.peer_status()[0].state
        }));
        match r {
            Err(_) => {
                panics += 1;
                s = speaker_in(State::Established);
            }
            Ok(State::Established) => kept += 1,
            Ok(_) => {
                resets += 1;
                s = speaker_in(State::Established);
            }
        }
    }
    assert_eq!(panics, 0, "panics on mutated UPDATEs");
    assert!(kept > 0 && resets > 0, "kept {kept} resets {resets}");
    eprintln!(
        "mutation run: 110000 messages, 0 panics, {kept} kept the session, {resets} reset it"
    );
}
