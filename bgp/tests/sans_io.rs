//! The session FSM and the speaker driven without sockets: events in, bytes and route
//! changes out. Peer messages are real encoded BGP messages.

use ferrovia_bgp::fsm::{Direction, DownReason, Output, Session, SessionConfig, State};
use ferrovia_bgp::message::*;
use ferrovia_bgp::rib::Source;
use ferrovia_bgp::speaker::{Action, PeerConfig, Speaker, SpeakerConfig};
use ferrovia_bgp::wire;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const PEER_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// Wall-clock time handed to the speaker with received bytes (any fixed value).
const WALL: SystemTime = SystemTime::UNIX_EPOCH;
const FOUR: SessionContext = SessionContext {
    four_octet_as: true,
};

fn config(local_as: u32, peer_as: u32) -> SessionConfig {
    SessionConfig {
        local_as,
        peer_as,
        local_id: LOCAL_ID,
        hold_time: 9,
        connect_retry: Duration::from_secs(1),
        max_retry: Duration::from_secs(8),
        passive: false,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(120),
    }
}

fn open(asn: u32, id: Ipv4Addr, hold: u16) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: hold,
        bgp_id: id,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            four_octet_as: Some(asn),
            ..Default::default()
        },
    }
}

fn bytes(m: Message) -> Vec<u8> {
    wire::encode(&m, &FOUR).expect("encodes")
}

fn drain(s: &mut Session) -> Vec<Output> {
    std::iter::from_fn(|| s.poll_output()).collect()
}

/// Messages the session sent, decoded.
fn sent(outs: &[Output]) -> Vec<(u64, Message)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Send(c, b) => {
                Some((*c, wire::decode(b, &FOUR).expect("we send valid messages")))
            }
            _ => None,
        })
        .collect()
}

fn notification_sent(outs: &[Output]) -> Option<Notification> {
    sent(outs).into_iter().find_map(|(_, m)| match m {
        Message::Notification(n) => Some(n),
        _ => None,
    })
}

/// Brings a session to Established on connection 1 (outgoing).
fn established(cfg: SessionConfig, now: Instant) -> Session {
    let peer_as = cfg.peer_as;
    let mut s = Session::new(cfg);
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    s.received(now, 1, &bytes(Message::Open(open(peer_as, PEER_ID, 90))));
    s.received(now, 1, &bytes(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    drain(&mut s);
    s
}

#[test]
fn full_progression_idle_to_established() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    assert_eq!(s.state(), State::Idle);
    s.start(now);
    let outs = drain(&mut s);
    assert_eq!(outs[0], Output::Connect);
    assert_eq!(s.state(), State::Connect);

    s.connected(now, 1, Direction::Outgoing);
    let outs = drain(&mut s);
    let msgs = sent(&outs);
    let Message::Open(ours) = &msgs[0].1 else {
        panic!("first message must be OPEN, got {msgs:?}")
    };
    assert_eq!(ours.asn(), 64512);
    assert_eq!(ours.hold_time, 9);
    assert_eq!(ours.bgp_id, LOCAL_ID);
    assert!(ours.capabilities.route_refresh);
    assert_eq!(ours.capabilities.four_octet_as, Some(64512));
    assert!(ours.capabilities.graceful_restart.is_some());
    assert_eq!(
        ours.capabilities.multiprotocol,
        vec![Family::Ipv4Unicast, Family::Ipv6Unicast]
    );
    assert_eq!(s.state(), State::OpenSent);

    s.received(now, 1, &bytes(Message::Open(open(65000, PEER_ID, 90))));
    let outs = drain(&mut s);
    assert_eq!(sent(&outs), vec![(1, Message::Keepalive)]);
    assert_eq!(s.state(), State::OpenConfirm);

    s.received(now, 1, &bytes(Message::Keepalive));
    let outs = drain(&mut s);
    let est = outs
        .iter()
        .find_map(|o| match o {
            Output::Established(1, n) => Some(n.clone()),
            _ => None,
        })
        .expect("Established output");
    assert_eq!(est.hold_time, 9, "the smaller hold time wins");
    assert!(est.context.four_octet_as);
    assert!(outs.contains(&Output::StateChanged {
        from: State::OpenConfirm,
        to: State::Established
    }));
}

#[test]
fn four_octet_peer_as_via_as_trans() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 4_200_000_000));
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    s.received(
        now,
        1,
        &bytes(Message::Open(open(4_200_000_000, PEER_ID, 90))),
    );
    s.received(now, 1, &bytes(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
}

fn open_refused_with(cfg: SessionConfig, peer_open: Open) -> Notification {
    let now = Instant::now();
    let mut s = Session::new(cfg);
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    drain(&mut s);
    s.received(now, 1, &bytes(Message::Open(peer_open)));
    let outs = drain(&mut s);
    assert!(
        outs.contains(&Output::Close(1)),
        "connection closed: {outs:?}"
    );
    assert_ne!(s.state(), State::OpenConfirm);
    notification_sent(&outs).expect("a NOTIFICATION was sent")
}

#[test]
fn open_validation_sends_the_right_notification() {
    let n = open_refused_with(config(64512, 65000), open(65001, PEER_ID, 90));
    assert_eq!((n.code, n.subcode), (2, 2), "bad peer AS");
    assert_eq!(n.data, 65001u16.to_be_bytes().to_vec());

    let n = open_refused_with(config(64512, 65000), open(65000, PEER_ID, 2));
    assert_eq!((n.code, n.subcode), (2, 6), "hold time 2");

    let n = open_refused_with(config(64512, 65000), open(65000, Ipv4Addr::UNSPECIFIED, 90));
    assert_eq!((n.code, n.subcode), (2, 3), "BGP identifier 0.0.0.0");

    let n = open_refused_with(config(64512, 64512), open(64512, LOCAL_ID, 90));
    assert_eq!((n.code, n.subcode), (2, 3), "iBGP peer with our identifier");

    // Version 3: patched on the wire (the encoder only writes version 4).
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    drain(&mut s);
    let mut v3 = bytes(Message::Open(open(65000, PEER_ID, 90)));
    v3[HEADER_LEN] = 3;
    s.received(now, 1, &v3);
    let outs = drain(&mut s);
    let n = notification_sent(&outs).expect("notification");
    assert_eq!(
        (n.code, n.subcode, n.data.clone()),
        (2, 1, vec![0, 4]),
        "version 3"
    );
    assert!(outs.contains(&Output::Close(1)));
}

#[test]
fn ebgp_peer_may_share_our_identifier() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    s.received(now, 1, &bytes(Message::Open(open(65000, LOCAL_ID, 90))));
    assert_eq!(s.state(), State::OpenConfirm);
}

#[test]
fn hold_time_zero_means_no_keepalives_and_no_hold_timer() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    s.received(now, 1, &bytes(Message::Open(open(65000, PEER_ID, 0))));
    s.received(now, 1, &bytes(Message::Keepalive));
    assert_eq!(s.state(), State::Established);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn unexpected_messages_are_fsm_errors() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    drain(&mut s);
    s.received(now, 1, &bytes(Message::Keepalive));
    let n = notification_sent(&drain(&mut s)).expect("notification");
    assert_eq!((n.code, n.subcode), (5, 1), "KEEPALIVE in OpenSent");

    let mut s = established(config(64512, 65000), now);
    s.received(now, 1, &bytes(Message::Open(open(65000, PEER_ID, 90))));
    let outs = drain(&mut s);
    let n = notification_sent(&outs).expect("notification");
    assert_eq!((n.code, n.subcode), (5, 3), "OPEN in Established");
    assert!(outs.iter().any(|o| matches!(o, Output::Down(_))));
}

#[test]
fn keepalives_and_hold_timer() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    // Keepalive every hold/3 = 3 s.
    s.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(sent(&drain(&mut s)), vec![(1, Message::Keepalive)]);
    // A KEEPALIVE from the peer at 8 s restarts the hold timer: no expiry at 10 s.
    s.received(now + Duration::from_secs(8), 1, &bytes(Message::Keepalive));
    s.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(s.state(), State::Established);
    drain(&mut s);
    // Silence until 8 + 9 s: hold timer expired, NOTIFICATION 4/0, session down.
    s.handle_timeout(now + Duration::from_secs(17));
    let outs = drain(&mut s);
    let n = notification_sent(&outs).expect("notification");
    assert_eq!((n.code, n.subcode), (4, 0));
    assert!(outs
        .iter()
        .any(|o| matches!(o, Output::Down(DownReason::Sent(n)) if n.code == 4)));
    assert_eq!(s.state(), State::Active, "waiting to reconnect");
}

#[test]
fn reconnect_backs_off_and_resets_on_established() {
    let now = Instant::now();
    let mut s = Session::new(config(64512, 65000));
    s.start(now);
    drain(&mut s);
    s.connect_failed(now);
    drain(&mut s);
    assert_eq!(s.state(), State::Active);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(1)));
    s.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(drain(&mut s).first(), Some(&Output::Connect));
    let t = now + Duration::from_secs(1);
    s.connect_failed(t);
    drain(&mut s);
    assert_eq!(
        s.poll_timeout(),
        Some(t + Duration::from_secs(2)),
        "doubled"
    );
}

#[test]
fn notification_from_peer_ends_the_session() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    s.received(
        now,
        1,
        &bytes(Message::Notification(Notification::new(6, 2))),
    );
    let outs = drain(&mut s);
    assert!(outs.contains(&Output::Down(DownReason::Received(Notification::new(6, 2)))));
    assert!(outs.contains(&Output::Close(1)));
    assert!(
        notification_sent(&outs).is_none(),
        "never answer a NOTIFICATION"
    );
}

#[test]
fn stop_sends_cease() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    s.stop(notif::ADMINISTRATIVE_SHUTDOWN);
    let outs = drain(&mut s);
    let n = notification_sent(&outs).expect("CEASE");
    assert_eq!((n.code, n.subcode), (6, 2));
    assert_eq!(s.state(), State::Idle);
    assert_eq!(s.poll_timeout(), None, "no reconnect after a stop");
}

#[test]
fn garbage_from_peer_is_a_header_error() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    s.received(now, 1, &[0u8; 19]);
    let outs = drain(&mut s);
    let n = notification_sent(&outs).expect("notification");
    assert_eq!((n.code, n.subcode), (1, 1), "connection not synchronised");
}

/// RFC 4271 §6.8: both sides connected at once; the connection opened by the side with the
/// higher BGP Identifier survives.
fn collision(local_id: Ipv4Addr, peer_id: Ipv4Addr) -> (Vec<Output>, Session) {
    let now = Instant::now();
    let mut cfg = config(64512, 65000);
    cfg.local_id = local_id;
    let mut s = Session::new(cfg);
    s.start(now);
    s.connected(now, 1, Direction::Outgoing);
    s.connected(now, 2, Direction::Incoming);
    drain(&mut s);
    // The peer's OPEN arrives on the incoming connection first.
    s.received(now, 2, &bytes(Message::Open(open(65000, peer_id, 90))));
    let outs = drain(&mut s);
    (outs, s)
}

#[test]
fn collision_local_higher_keeps_outgoing() {
    let (outs, mut s) = collision(Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 0, 0, 1));
    assert!(
        outs.contains(&Output::Close(2)),
        "incoming closed: {outs:?}"
    );
    let (conn, n) = sent(&outs)
        .into_iter()
        .find_map(|(c, m)| match m {
            Message::Notification(n) => Some((c, n)),
            _ => None,
        })
        .expect("cease");
    assert_eq!((conn, n.code, n.subcode), (2, 6, 7));
    // The outgoing one carries on to Established.
    let now = Instant::now();
    s.received(
        now,
        1,
        &bytes(Message::Open(open(65000, Ipv4Addr::new(10, 0, 0, 1), 90))),
    );
    s.received(now, 1, &bytes(Message::Keepalive));
    assert_eq!(s.established_conn(), Some(1));
}

#[test]
fn collision_local_lower_keeps_incoming() {
    let (outs, mut s) = collision(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 9));
    assert!(
        outs.contains(&Output::Close(1)),
        "outgoing closed: {outs:?}"
    );
    assert!(!outs.contains(&Output::Close(2)));
    let now = Instant::now();
    s.received(now, 2, &bytes(Message::Keepalive));
    assert_eq!(s.established_conn(), Some(2));
}

#[test]
fn connection_while_established_without_graceful_restart_is_refused() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    s.connected(now, 2, Direction::Incoming);
    drain(&mut s);
    s.received(now, 2, &bytes(Message::Open(open(65000, PEER_ID, 90))));
    let outs = drain(&mut s);
    assert!(outs.contains(&Output::Close(2)));
    assert_eq!(s.established_conn(), Some(1));
}

#[test]
fn restarted_peer_with_graceful_restart_replaces_the_old_session() {
    let now = Instant::now();
    let mut s = established(config(64512, 65000), now);
    s.connected(now, 2, Direction::Incoming);
    drain(&mut s);
    let mut o = open(65000, PEER_ID, 90);
    o.capabilities.graceful_restart = Some(GracefulRestart {
        restarting: true,
        notification: false,
        restart_time: 120,
        families: vec![(Family::Ipv4Unicast, true)],
    });
    s.received(now, 2, &bytes(Message::Open(o)));
    let outs = drain(&mut s);
    assert!(outs.contains(&Output::Close(1)), "old session closed");
    assert!(outs.iter().any(|o| matches!(o, Output::Down(_))));
    s.received(now, 2, &bytes(Message::Keepalive));
    assert_eq!(s.established_conn(), Some(2));
}

// ----- the speaker: sessions + RIBs + policy -----

const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10)); // eBGP 65010
const B: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20)); // iBGP 64512
const C: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 30)); // eBGP 65030

fn speaker() -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(120),
        next_hop_v4: None,
        next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
        cluster_id: None,
    });
    s.track_changes(true);
    s
}

fn add(s: &mut Speaker, now: Instant, addr: IpAddr, asn: u32, conn: u64) {
    s.add_peer(
        now,
        PeerConfig {
            address: addr,
            remote_as: asn,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: Default::default(),
        },
    )
    .expect("add peer");
    s.connected(
        now,
        addr,
        conn,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    let id = match addr {
        IpAddr::V4(v) => v,
        _ => PEER_ID,
    };
    s.received(
        now,
        WALL,
        addr,
        conn,
        &bytes(Message::Open(open(asn, id, 90))),
    );
    s.received(now, WALL, addr, conn, &bytes(Message::Keepalive));
}

/// Drains the speaker; returns UPDATEs sent per peer and Loc-RIB changes.
fn speaker_out(s: &mut Speaker) -> (Vec<(IpAddr, Update)>, Vec<ferrovia_bgp::rib::Change>) {
    s.flush();
    let changes = s.take_changes(usize::MAX);
    let mut ups = Vec::new();
    while s.poll_event().is_some() {}
    while let Some(e) = s.poll_action() {
        if let Action::Send(p, c, b) = e {
            s.written(p, c, b.len());
            if let Message::Update(u) = wire::decode(&b, &FOUR).expect("decodes") {
                ups.push((p, u));
            }
        }
    }
    (ups, changes)
}

fn update(prefixes: &[&str], nh: IpAddr, path: Vec<u32>) -> Vec<u8> {
    let attrs = PathAttributes {
        as_path: if path.is_empty() {
            vec![]
        } else {
            vec![AsSegment::Sequence(path)]
        },
        local_pref: Some(100),
        ..Default::default()
    };
    let reach = Reach {
        next_hop: NextHop::new(nh),
        prefixes: prefixes
            .iter()
            .map(|p| p.parse().expect("prefix"))
            .collect(),
    };
    let mut v = wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR);
    assert_eq!(v.len(), 1);
    v.remove(0)
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

#[test]
fn speaker_originates_to_ebgp_and_ibgp_with_the_right_attributes() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    add(&mut s, now, B, 64512, 2);
    speaker_out(&mut s); // initial End-of-RIBs
    s.originate(net("10.244.1.0/26"), vec![(64512 << 16) | 7]);
    s.originate(net("fd00:10:244:1::/122"), vec![]);
    let (ups, changes) = speaker_out(&mut s);
    assert_eq!(changes.len(), 2);
    for peer in [A, B] {
        let to: Vec<&Update> = ups
            .iter()
            .filter(|(p, _)| *p == peer)
            .map(|(_, u)| u)
            .collect();
        let v4 = to
            .iter()
            .find(|u| u.announced().any(|p| *p == net("10.244.1.0/26")))
            .expect("v4 announced");
        let v6 = to
            .iter()
            .find(|u| u.announced().any(|p| *p == net("fd00:10:244:1::/122")))
            .expect("v6 announced");
        let a = v4.attributes.as_ref().expect("attrs");
        assert_eq!(
            v4.reach[0].next_hop.address,
            IpAddr::V4(LOCAL_ID),
            "next hop self"
        );
        assert_eq!(
            v6.reach[0].next_hop.address,
            "fd00:198:18::1".parse::<IpAddr>().expect("v6"),
            "configured v6 next hop over a v4 session"
        );
        assert_eq!(a.communities, vec![(64512 << 16) | 7]);
        if peer == A {
            assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![64512])]);
            assert_eq!(a.local_pref, None);
        } else {
            assert!(a.as_path.is_empty());
            assert_eq!(a.local_pref, Some(100));
        }
    }
    let status = s.peer_status();
    assert!(status.iter().all(|p| p.stats.prefixes_sent == 2));
}

#[test]
fn speaker_propagates_by_ibgp_ebgp_rules_and_flushes_on_down() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    add(&mut s, now, B, 64512, 2);
    add(&mut s, now, C, 65030, 3);
    speaker_out(&mut s);

    // From eBGP A: to iBGP B with A's next hop, to eBGP C with ours and our AS prepended.
    s.received(now, WALL, A, 1, &update(&["10.1.0.0/16"], A, vec![65010]));
    let (ups, changes) = speaker_out(&mut s);
    assert_eq!(changes.len(), 1);
    let best = changes[0].best.as_ref().expect("best");
    assert_eq!(best.best.source, Source::Peer(A));
    assert!(ups.iter().all(|(p, _)| *p != A), "never back to the source");
    let to_b = &ups.iter().find(|(p, _)| *p == B).expect("to B").1;
    assert_eq!(to_b.reach[0].next_hop.address, A);
    let to_c = &ups.iter().find(|(p, _)| *p == C).expect("to C").1;
    assert_eq!(to_c.reach[0].next_hop.address, IpAddr::V4(LOCAL_ID));
    assert_eq!(
        to_c.attributes.as_ref().expect("attrs").as_path,
        vec![AsSegment::Sequence(vec![64512, 65010])]
    );

    // From iBGP B: only to the eBGP peers.
    s.received(now, WALL, B, 2, &update(&["10.2.0.0/16"], B, vec![]));
    let (ups, _) = speaker_out(&mut s);
    let peers: Vec<IpAddr> = ups.iter().map(|(p, _)| *p).collect();
    assert!(peers.contains(&A) && peers.contains(&C) && !peers.contains(&B));

    // A route with our own AS in the path from eBGP is refused.
    s.received(
        now,
        WALL,
        C,
        3,
        &update(&["10.3.0.0/16"], C, vec![65030, 64512]),
    );
    let (_, changes) = speaker_out(&mut s);
    assert!(changes.is_empty(), "AS loop refused");

    // A goes down: its route is withdrawn from B and C.
    s.received(
        now,
        WALL,
        A,
        1,
        &bytes(Message::Notification(Notification::new(6, 2))),
    );
    let (ups, changes) = speaker_out(&mut s);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].best.is_none());
    for peer in [B, C] {
        let u = &ups.iter().find(|(p, _)| *p == peer).expect("withdrawal").1;
        assert_eq!(u.withdrawn, vec![net("10.1.0.0/16")]);
    }
}

#[test]
fn speaker_prefers_by_decision_process_and_builds_multipath() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    add(&mut s, now, C, 65030, 3);
    speaker_out(&mut s);
    s.received(
        now,
        WALL,
        A,
        1,
        &update(&["10.9.0.0/16"], A, vec![65010, 1]),
    );
    s.received(now, WALL, C, 3, &update(&["10.9.0.0/16"], C, vec![65030]));
    speaker_out(&mut s);
    let best = s.loc_rib().best(&net("10.9.0.0/16")).expect("best");
    assert_eq!(best.best.source, Source::Peer(C), "shorter AS path");
    assert_eq!(best.next_hops.to_vec(), vec![C]);
    // Same length now: both equal up to the tie breaks -> multipath, lower id first.
    s.received(now, WALL, A, 1, &update(&["10.9.0.0/16"], A, vec![65010]));
    speaker_out(&mut s);
    let best = s.loc_rib().best(&net("10.9.0.0/16")).expect("best");
    assert_eq!(best.next_hops.to_vec(), vec![A, C]);
}

#[test]
fn speaker_withdraws_local_and_refuses_unknown_or_duplicate_peers() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    speaker_out(&mut s);
    s.originate(net("10.244.1.0/26"), vec![]);
    speaker_out(&mut s);
    assert!(s.withdraw(net("10.244.1.0/26")));
    let (ups, _) = speaker_out(&mut s);
    assert_eq!(ups[0].1.withdrawn, vec![net("10.244.1.0/26")]);
    assert!(!s.withdraw(net("10.244.1.0/26")), "idempotent");
    assert!(s.remove_peer(B).is_err());
    assert!(s
        .add_peer(
            now,
            PeerConfig {
                address: A,
                remote_as: 1,
                hold_time: 90,
                connect_retry: Duration::from_secs(1),
                passive: false,
                kind: "global".into(),
                route_reflector_client: false,
                policy: Default::default(),
            }
        )
        .is_err());
}

#[test]
fn speaker_sends_end_of_rib_after_initial_dump() {
    let now = Instant::now();
    let mut s = speaker();
    s.originate(net("10.244.1.0/26"), vec![]);
    add(&mut s, now, A, 65010, 1);
    let (ups, _) = speaker_out(&mut s);
    assert!(ups[0].1.announced().any(|p| *p == net("10.244.1.0/26")));
    let eors: Vec<Option<Family>> = ups
        .iter()
        .map(|(_, u)| u.end_of_rib)
        .filter(|e| e.is_some())
        .collect();
    assert_eq!(
        eors,
        vec![Some(Family::Ipv4Unicast), Some(Family::Ipv6Unicast)]
    );
}

#[test]
fn speaker_treats_malformed_update_per_rfc7606_without_crashing() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    speaker_out(&mut s);
    // A valid route first.
    s.received(now, WALL, A, 1, &update(&["10.7.0.0/16"], A, vec![65010]));
    speaker_out(&mut s);
    // Then an UPDATE whose ORIGIN attribute has a bad value (RFC 7606 §7.1:
    // treat-as-withdraw): the route must go, the session must stay.
    let mut msg = update(&["10.7.0.0/16"], A, vec![65010]);
    let origin_at = msg
        .windows(3)
        .position(|w| w == [0x40, 0x01, 0x01])
        .expect("ORIGIN attribute present");
    msg[origin_at + 3] = 9;
    s.received(now, WALL, A, 1, &msg);
    let (_, changes) = speaker_out(&mut s);
    assert_eq!(changes.len(), 1);
    assert!(
        changes[0].best.is_none(),
        "treat-as-withdraw removed the route"
    );
    assert_eq!(s.peer_status()[0].state, State::Established, "session kept");
}

#[test]
fn speaker_takes_the_session_start_time_from_its_caller() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    let given = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    s.add_peer(
        now,
        PeerConfig {
            address: C,
            remote_as: 65030,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: Default::default(),
        },
    )
    .expect("add peer");
    s.connected(
        now,
        C,
        3,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40001),
    );
    let c_id = Ipv4Addr::new(198, 18, 0, 30);
    s.received(
        now,
        given,
        C,
        3,
        &bytes(Message::Open(open(65030, c_id, 90))),
    );
    let since = |s: &Speaker, peer: IpAddr| {
        s.peer_status()
            .into_iter()
            .find(|p| p.config.address == peer)
            .and_then(|p| p.stats.since)
    };
    assert_eq!(since(&s, C), None, "OpenConfirm is not up yet");
    s.received(now, given, C, 3, &bytes(Message::Keepalive));
    assert_eq!(since(&s, C), Some(given));
    assert_eq!(since(&s, A), Some(WALL));
}

#[test]
fn routes_changed_is_one_signal_per_pull_however_many_flushes() {
    let mut s = speaker();
    let signals = |s: &mut Speaker| {
        std::iter::from_fn(|| s.poll_event())
            .filter(|e| *e == ferrovia_bgp::speaker::Event::RoutesChanged)
            .count()
    };
    for p in ["10.244.1.0/26", "10.244.2.0/26", "10.244.3.0/26"] {
        s.originate(net(p), vec![]);
        s.flush();
    }
    assert_eq!(signals(&mut s), 1, "one signal until the consumer pulls");
    s.flush();
    assert_eq!(signals(&mut s), 0);
    // A pull that leaves changes behind: one more signal at the next flush.
    assert_eq!(s.take_changes(1).len(), 1);
    s.flush();
    assert_eq!(signals(&mut s), 1);
    assert_eq!(s.take_changes(usize::MAX).len(), 2);
    s.flush();
    assert_eq!(signals(&mut s), 0, "nothing left, nothing signalled");
    s.originate(net("10.244.4.0/26"), vec![]);
    s.flush();
    assert_eq!(signals(&mut s), 1, "new changes after a pull are signalled");
}

#[test]
fn changes_all_from_one_peer_skip_it_but_withdraw_what_it_was_sent() {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now, A, 65010, 1);
    add(&mut s, now, C, 65030, 3);
    speaker_out(&mut s);
    // C's path is the only one: A gets it.
    s.received(
        now,
        WALL,
        C,
        3,
        &update(&["10.9.0.0/16"], C, vec![65030, 1, 2]),
    );
    let (ups, _) = speaker_out(&mut s);
    assert!(ups
        .iter()
        .any(|(p, u)| *p == A && u.announced().any(|x| *x == net("10.9.0.0/16"))));
    // Every change of this flush is a best path from A (a shorter one for 10.9/16 and
    // three new prefixes): A gets none of them, but the export of 10.9/16 it was sent is
    // withdrawn; C gets all four.
    s.received(
        now,
        WALL,
        A,
        1,
        &update(
            &[
                "10.9.0.0/16",
                "10.10.0.0/16",
                "10.11.0.0/16",
                "10.12.0.0/16",
            ],
            A,
            vec![65010],
        ),
    );
    let (ups, changes) = speaker_out(&mut s);
    assert_eq!(changes.len(), 4);
    assert!(changes.iter().all(|c| c
        .best
        .as_ref()
        .is_some_and(|b| b.best.source == Source::Peer(A))));
    let to_a: Vec<&Update> = ups
        .iter()
        .filter(|(p, _)| *p == A)
        .map(|(_, u)| u)
        .collect();
    assert!(
        to_a.iter().all(|u| u.announced().next().is_none()),
        "nothing back to A"
    );
    let withdrawn: Vec<IpNet> = to_a.iter().flat_map(|u| u.withdrawn.clone()).collect();
    assert_eq!(withdrawn, vec![net("10.9.0.0/16")]);
    let mut to_c: Vec<IpNet> = ups
        .iter()
        .filter(|(p, _)| *p == C)
        .flat_map(|(_, u)| u.announced().copied().collect::<Vec<_>>())
        .collect();
    to_c.sort();
    assert_eq!(
        to_c,
        [
            "10.9.0.0/16",
            "10.10.0.0/16",
            "10.11.0.0/16",
            "10.12.0.0/16"
        ]
        .map(net)
        .to_vec()
    );
    let status = s.peer_status();
    let sent = |a: IpAddr| {
        status
            .iter()
            .find(|p| p.config.address == a)
            .map(|p| p.stats.prefixes_sent)
    };
    assert_eq!(sent(A), Some(0));
    assert_eq!(sent(C), Some(4));
}
