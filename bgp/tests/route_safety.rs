//! Route safety in the sans-IO speaker: prefixes refused on import (default route, the
//! cluster's own pools, an import prefix list) and counted per reason, the export prefix
//! list, and the maximum number of prefixes with both actions (warn; CEASE 6/1 and a
//! restart after the configured time).

use ferrovia_bgp::fsm::{Direction, State};
use ferrovia_bgp::message::*;
use ferrovia_bgp::policy::{MaxPrefixAction, MaxPrefixes, PeerPolicy, PrefixRule, Rejected};
use ferrovia_bgp::speaker::{Action, Event, PeerConfig, Speaker, SpeakerConfig};
use ferrovia_bgp::wire;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254));
const PEER_AS: u32 = 65000;
const WALL: SystemTime = SystemTime::UNIX_EPOCH;
const FOUR: SessionContext = SessionContext {
    four_octet_as: true,
};

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn rule(s: &str) -> PrefixRule {
    s.parse().expect("rule")
}

fn bytes(m: Message) -> Vec<u8> {
    wire::encode(&m, &FOUR).expect("encodes")
}

fn speaker() -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: None,
        next_hop_v4: None,
        next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
        cluster_id: None,
    });
    s.track_changes(true);
    s
}

fn peer_open() -> Message {
    Message::Open(Open {
        version: 4,
        my_as: u16::try_from(PEER_AS).unwrap_or(AS_TRANS),
        hold_time: 90,
        bgp_id: Ipv4Addr::new(198, 18, 0, 254),
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            four_octet_as: Some(PEER_AS),
            ..Default::default()
        },
    })
}

/// Brings the session with the peer up on connection `conn`.
fn establish(s: &mut Speaker, now: Instant, conn: u64) {
    s.connected(
        now,
        PEER,
        conn,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    s.received(now, WALL, PEER, conn, &bytes(peer_open()));
    s.received(now, WALL, PEER, conn, &bytes(Message::Keepalive));
    assert_eq!(state(s), State::Established);
}

fn with_peer(now: Instant, policy: PeerPolicy) -> Speaker {
    let mut s = speaker();
    s.add_peer(
        now,
        PeerConfig {
            address: PEER,
            remote_as: PEER_AS,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy,
        },
    )
    .expect("add peer");
    establish(&mut s, now, 1);
    drain(&mut s);
    s
}

fn state(s: &Speaker) -> State {
    s.peer_status()[0].state
}

/// Everything the speaker wants done and said, after a flush.
fn drain(s: &mut Speaker) -> (Vec<Action>, Vec<Event>) {
    s.flush();
    s.take_changes(usize::MAX);
    let actions: Vec<Action> = std::iter::from_fn(|| s.poll_action()).collect();
    for a in &actions {
        if let Action::Send(p, c, b) = a {
            s.written(*p, *c, b.len());
        }
    }
    (actions, std::iter::from_fn(|| s.poll_event()).collect())
}

fn sent_messages(actions: &[Action]) -> Vec<Message> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(_, _, b) => Some(wire::decode(b, &FOUR).expect("decodes")),
            _ => None,
        })
        .collect()
}

fn announce(prefixes: &[&str], nh: IpAddr) -> Vec<u8> {
    let attrs = PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![PEER_AS])],
        ..Default::default()
    };
    let reach = Reach {
        next_hop: NextHop::new(nh),
        prefixes: prefixes.iter().map(|p| net(p)).collect(),
    };
    let mut v = wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn in_loc_rib(s: &Speaker) -> Vec<String> {
    s.adj_rib_in(PEER)
        .into_iter()
        .map(|(p, _)| p.to_string())
        .collect()
}

#[test]
fn refused_prefixes_stay_out_and_are_counted_per_reason() {
    let now = Instant::now();
    let policy = PeerPolicy {
        refuse_default_route: true,
        protected: vec![net("10.244.0.0/16"), net("fd00:10:244::/48")],
        import_prefixes: vec![
            rule("deny 192.0.2.128/25 le 32"),
            rule("192.0.2.0/24 le 28"),
            rule("10.0.0.0/8 le 24"),
            rule("::/0 le 64"),
        ],
        ..Default::default()
    };
    let mut s = with_peer(now, policy);
    let nh = IpAddr::from([198, 18, 0, 254]);
    let v6nh: IpAddr = "fd00:198:18::254".parse().expect("v6");
    s.received(
        now,
        WALL,
        PEER,
        1,
        &announce(
            &[
                "0.0.0.0/0",       // default route
                "10.244.1.0/26",   // inside our pool: a hijack
                "10.244.0.0/16",   // the pool itself
                "10.0.0.0/8",      // covers the pool: allowed by the list
                "192.0.2.0/26",    // permitted
                "192.0.2.128/26",  // denied by the first entry
                "192.0.2.0/29",    // longer than le 28
                "198.51.100.0/24", // matches no entry
            ],
            nh,
        ),
    );
    s.received(
        now,
        WALL,
        PEER,
        1,
        &announce(&["::/0", "fd00:10:244:1::/64", "2001:db8::/48"], v6nh),
    );
    drain(&mut s);
    let mut got = in_loc_rib(&s);
    got.sort();
    assert_eq!(got, ["10.0.0.0/8", "192.0.2.0/26", "2001:db8::/48"]);
    let st = &s.peer_status()[0];
    assert_eq!(st.stats.prefixes_received, 3);
    let refused: Vec<(&str, u64)> = st
        .stats
        .refused
        .iter()
        .map(|(r, n)| (r.name(), *n))
        .collect();
    assert_eq!(
        refused,
        [("default_route", 2), ("own_pool", 3), ("import_list", 3)]
    );
    assert_eq!(state(&s), State::Established, "refusing is not an error");

    // A prefix accepted before and refused now (here: a loop) leaves the RIB and counts.
    let looped = {
        let attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![PEER_AS, 64512])],
            ..Default::default()
        };
        let reach = Reach {
            next_hop: NextHop::new(nh),
            prefixes: vec![net("10.0.0.0/8")],
        };
        wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR).remove(0)
    };
    s.received(now, WALL, PEER, 1, &looped);
    drain(&mut s);
    assert!(!in_loc_rib(&s).contains(&"10.0.0.0/8".to_string()));
    assert_eq!(
        s.peer_status()[0].stats.refused.get(&Rejected::AsLoop),
        Some(&1)
    );
}

#[test]
fn the_export_list_decides_what_the_peer_gets() {
    let now = Instant::now();
    let policy = PeerPolicy {
        export_prefixes: vec![rule("10.244.0.0/16 ge 26 le 26"), rule("deny ::/0 le 128")],
        ..Default::default()
    };
    let mut s = with_peer(now, policy);
    for p in [
        "10.244.1.0/26",
        "10.244.2.0/24",
        "10.245.0.0/26",
        "fd00:10:244:1::/122",
    ] {
        s.originate(net(p), vec![]);
    }
    let (actions, _) = drain(&mut s);
    let announced: Vec<String> = sent_messages(&actions)
        .into_iter()
        .filter_map(|m| match m {
            Message::Update(u) => Some(u.announced().map(|p| p.to_string()).collect::<Vec<_>>()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(announced, ["10.244.1.0/26"]);
    assert_eq!(s.peer_status()[0].stats.prefixes_sent, 1);
}

fn limited(limit: u32, action: MaxPrefixAction) -> PeerPolicy {
    PeerPolicy {
        max_prefixes: Some(MaxPrefixes { limit, action }),
        ..Default::default()
    }
}

#[test]
fn over_the_limit_with_warn_keeps_session_and_routes_and_tells_once() {
    let now = Instant::now();
    let mut s = with_peer(now, limited(2, MaxPrefixAction::Warn));
    let nh = IpAddr::from([198, 18, 0, 254]);
    s.received(
        now,
        WALL,
        PEER,
        1,
        &announce(&["192.0.2.0/26", "192.0.2.64/26"], nh),
    );
    let (_, events) = drain(&mut s);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MaxPrefixes { .. })),
        "at the limit"
    );
    s.received(now, WALL, PEER, 1, &announce(&["192.0.2.128/26"], nh));
    let (actions, events) = drain(&mut s);
    let told: Vec<&Event> = events
        .iter()
        .filter(|e| matches!(e, Event::MaxPrefixes { .. }))
        .collect();
    assert_eq!(
        told,
        [&Event::MaxPrefixes {
            peer: PEER,
            limit: 2,
            received: 3,
            restart_after: None
        }]
    );
    assert!(!sent_messages(&actions)
        .iter()
        .any(|m| matches!(m, Message::Notification(_))));
    s.received(now, WALL, PEER, 1, &announce(&["192.0.2.192/26"], nh));
    let (_, events) = drain(&mut s);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::MaxPrefixes { .. })),
        "once"
    );
    assert_eq!(state(&s), State::Established);
    assert_eq!(in_loc_rib(&s).len(), 4);
    assert_eq!(s.peer_status()[0].stats.max_prefixes_exceeded, 1);
}

#[test]
fn over_the_limit_with_restart_sends_cease_6_1_and_connects_again_after_the_time() {
    let now = Instant::now();
    let after = Duration::from_secs(30);
    let mut s = with_peer(now, limited(2, MaxPrefixAction::Restart(after)));
    let nh = IpAddr::from([198, 18, 0, 254]);
    s.received(
        now,
        WALL,
        PEER,
        1,
        &announce(&["192.0.2.0/26", "192.0.2.64/26", "192.0.2.128/26"], nh),
    );
    let (actions, events) = drain(&mut s);
    let n = sent_messages(&actions)
        .into_iter()
        .find_map(|m| match m {
            Message::Notification(n) => Some(n),
            _ => None,
        })
        .expect("NOTIFICATION sent");
    assert_eq!((n.code, n.subcode), (6, 1));
    // RFC 4486: AFI 1 (IPv4), SAFI 1 (unicast), the limit as 4 octets.
    assert_eq!(n.data, [0, 1, 1, 0, 0, 0, 2]);
    assert!(actions.contains(&Action::Close(PEER, 1)));
    assert!(events.contains(&Event::MaxPrefixes {
        peer: PEER,
        limit: 2,
        received: 3,
        restart_after: Some(after)
    }));
    assert!(in_loc_rib(&s).is_empty(), "the peer's routes are gone");
    let st = &s.peer_status()[0];
    assert_eq!(st.state, State::Idle);
    assert_eq!(st.restart_at, Some(now + after));
    assert!(st
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("Maximum Number of Prefixes")));
    assert_eq!(s.poll_timeout(), Some(now + after));

    // The peer calling back before the time is refused.
    let early = now + Duration::from_secs(5);
    s.connected(
        early,
        PEER,
        2,
        Direction::Incoming,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 179),
    );
    let (actions, _) = drain(&mut s);
    assert!(actions.contains(&Action::Close(PEER, 2)), "{actions:?}");
    assert_eq!(state(&s), State::Idle);
    s.handle_timeout(early);
    let (actions, _) = drain(&mut s);
    assert!(!actions.contains(&Action::Connect(PEER)));

    // At the time, the session starts again and comes up.
    s.handle_timeout(now + after);
    let (actions, _) = drain(&mut s);
    assert!(actions.contains(&Action::Connect(PEER)), "{actions:?}");
    establish(&mut s, now + after, 3);
    assert_eq!(s.peer_status()[0].restart_at, None);
    s.received(now + after, WALL, PEER, 3, &announce(&["192.0.2.0/26"], nh));
    drain(&mut s);
    assert_eq!(in_loc_rib(&s), ["192.0.2.0/26"]);
}

/// With the RFC 8538 N bit negotiated a plain Cease would leave the routes as stale on both
/// sides; going over the limit sends Hard Reset (wrapping 6/1 and its data) and the routes go.
#[test]
fn over_the_limit_with_the_n_bit_sends_hard_reset_and_keeps_nothing_stale() {
    let now = Instant::now();
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(120),
        next_hop_v4: None,
        next_hop_v6: None,
        cluster_id: None,
    });
    s.track_changes(true);
    s.add_peer(
        now,
        PeerConfig {
            address: PEER,
            remote_as: PEER_AS,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: limited(1, MaxPrefixAction::Restart(Duration::from_secs(30))),
        },
    )
    .expect("add peer");
    s.connected(
        now,
        PEER,
        1,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    let Message::Open(mut open) = peer_open() else {
        unreachable!("peer_open is an OPEN")
    };
    open.capabilities.graceful_restart = Some(GracefulRestart {
        restarting: false,
        notification: true,
        restart_time: 120,
        families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, true)],
    });
    s.received(now, WALL, PEER, 1, &bytes(Message::Open(open)));
    s.received(now, WALL, PEER, 1, &bytes(Message::Keepalive));
    assert_eq!(state(&s), State::Established);
    drain(&mut s);
    let nh = IpAddr::from([198, 18, 0, 254]);
    s.received(
        now,
        WALL,
        PEER,
        1,
        &announce(&["192.0.2.0/26", "192.0.2.64/26"], nh),
    );
    let (actions, _) = drain(&mut s);
    let n = sent_messages(&actions)
        .into_iter()
        .find_map(|m| match m {
            Message::Notification(n) => Some(n),
            _ => None,
        })
        .expect("NOTIFICATION sent");
    assert!(n.is_hard_reset(), "{n}");
    assert_eq!(
        n.data,
        [6, 1, 0, 1, 1, 0, 0, 0, 1],
        "6/1 and its data inside"
    );
    assert!(in_loc_rib(&s).is_empty(), "nothing kept as stale");
    assert_eq!(s.peer_status()[0].stats.stale_prefixes, 0);
}
