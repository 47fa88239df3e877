//! Graceful restart, sans-IO: the helper side (RFC 4724 §4.2, RFC 8538), the restarting
//! side's OPEN, leaving with Hard Reset, and GRACEFUL_SHUTDOWN (RFC 8326). The peer's
//! messages are real encoded BGP messages; time is simulated.

use ferrovia_bgp::fsm::Direction;
use ferrovia_bgp::message::*;
use ferrovia_bgp::rib::Source;
use ferrovia_bgp::speaker::{
    Action, PeerConfig, Speaker, SpeakerConfig, GRACEFUL_SHUTDOWN, STALE_ROUTES_TIME,
};
use ferrovia_bgp::wire;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const WALL: SystemTime = SystemTime::UNIX_EPOCH;
const FOUR: SessionContext = SessionContext {
    four_octet_as: true,
};
const A: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const A_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const RESTART: u16 = 120;

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

fn bytes(m: Message) -> Vec<u8> {
    wire::encode(&m, &FOUR).expect("encodes")
}

fn speaker() -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(RESTART),
        next_hop_v4: None,
        next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
        cluster_id: None,
    });
    s.track_changes(true);
    s
}

/// How the peer's OPEN speaks graceful restart.
#[derive(Clone, Copy)]
struct Gr {
    restarting: bool,
    notification: bool,
    forwarding: bool,
    /// Only IPv4 in the capability.
    v4_only: bool,
}

const HELPER: Gr = Gr {
    restarting: false,
    notification: false,
    forwarding: false,
    v4_only: false,
};

fn open(gr: Option<Gr>) -> Open {
    Open {
        version: 4,
        my_as: 65010,
        hold_time: 90,
        bgp_id: A_ID,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            four_octet_as: Some(65010),
            graceful_restart: gr.map(|g| GracefulRestart {
                restarting: g.restarting,
                notification: g.notification,
                restart_time: RESTART,
                families: if g.v4_only {
                    vec![(Family::Ipv4Unicast, g.forwarding)]
                } else {
                    vec![
                        (Family::Ipv4Unicast, g.forwarding),
                        (Family::Ipv6Unicast, g.forwarding),
                    ]
                },
            }),
            ..Default::default()
        },
    }
}

fn add(s: &mut Speaker, now: Instant) {
    s.add_peer(
        now,
        PeerConfig {
            address: A,
            remote_as: 65010,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: false,
            policy: Default::default(),
        },
    )
    .expect("add peer");
}

/// Brings the session up on `conn` with this OPEN from the peer; returns our OPEN.
fn up(s: &mut Speaker, now: Instant, conn: u64, gr: Option<Gr>) -> Open {
    s.connected(
        now,
        A,
        conn,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    let ours = sent(s)
        .into_iter()
        .find_map(|m| match m {
            Message::Open(o) => Some(o),
            _ => None,
        })
        .expect("our OPEN");
    s.received(now, WALL, A, conn, &bytes(Message::Open(open(gr))));
    s.received(now, WALL, A, conn, &bytes(Message::Keepalive));
    sent(s);
    ours
}

/// Flushes and returns the messages the speaker sent, decoded.
fn sent(s: &mut Speaker) -> Vec<Message> {
    s.flush();
    let mut out = Vec::new();
    while s.poll_event().is_some() {}
    while let Some(a) = s.poll_action() {
        if let Action::Send(p, c, b) = a {
            s.written(p, c, b.len());
            out.push(wire::decode(&b, &FOUR).expect("we send valid messages"));
        }
    }
    out
}

fn announce(prefixes: &[&str]) -> Vec<u8> {
    let attrs = PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![65010])],
        ..Default::default()
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for p in prefixes {
        match net(p) {
            q @ IpNet::V4(_) => v4.push(q),
            q @ IpNet::V6(_) => v6.push(q),
        }
    }
    let mut out = Vec::new();
    if !v4.is_empty() {
        let reach = Reach {
            next_hop: NextHop::new(A),
            prefixes: v4,
        };
        out.extend(wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR).concat());
    }
    if !v6.is_empty() {
        let reach = Reach {
            next_hop: NextHop::new("fd00:198:18::10".parse().expect("v6")),
            prefixes: v6,
        };
        out.extend(wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR).concat());
    }
    out
}

/// The peer's prefixes in the Loc-RIB, sorted.
fn learned(s: &Speaker) -> Vec<IpNet> {
    let mut v = s.loc_rib().prefixes_from(Source::Peer(A));
    v.sort();
    v
}

fn stale_count(s: &Speaker) -> usize {
    s.peer_status()
        .iter()
        .find(|p| p.config.address == A)
        .map(|p| p.stats.stale_prefixes)
        .expect("peer A")
}

/// A peer with routes on connection 1.
fn with_routes(gr: Option<Gr>, prefixes: &[&str]) -> (Speaker, Instant) {
    let now = Instant::now();
    let mut s = speaker();
    add(&mut s, now);
    up(&mut s, now, 1, gr);
    s.received(now, WALL, A, 1, &announce(prefixes));
    sent(&mut s);
    s.take_changes(usize::MAX);
    (s, now)
}

const ROUTES: [&str; 3] = ["10.1.0.0/16", "10.2.0.0/16", "fd00:1::/48"];

#[test]
fn a_graceful_restart_peer_whose_session_drops_keeps_its_routes_stale_for_its_restart_time() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    assert_eq!(learned(&s).len(), 3, "kept while the peer restarts");
    assert!(
        s.take_changes(usize::MAX).is_empty(),
        "nothing for the kernel to change"
    );
    assert_eq!(stale_count(&s), 3);
    assert!(s.is_stale(A, &net("10.1.0.0/16")));
    // The restart timer is armed and keeps them until it ends.
    let deadline = s.poll_timeout().expect("a deadline");
    assert!(deadline <= now + Duration::from_secs(u64::from(RESTART)));
    s.handle_timeout(now + Duration::from_secs(u64::from(RESTART) - 1));
    sent(&mut s);
    assert_eq!(learned(&s).len(), 3, "still within the restart time");
    s.handle_timeout(now + Duration::from_secs(u64::from(RESTART)));
    sent(&mut s);
    assert!(learned(&s).is_empty(), "swept when the restart time ends");
    let changes = s.take_changes(usize::MAX);
    assert_eq!(changes.len(), 3);
    assert!(changes.iter().all(|c| c.best.is_none()));
    assert_eq!(stale_count(&s), 0);
}

#[test]
fn a_peer_without_graceful_restart_loses_its_routes_at_once() {
    let (mut s, now) = with_routes(None, &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    assert!(learned(&s).is_empty());
    assert_eq!(stale_count(&s), 0);
}

#[test]
fn families_the_peer_did_not_list_in_its_capability_go_at_once() {
    let gr = Gr {
        v4_only: true,
        ..HELPER
    };
    let (mut s, now) = with_routes(Some(gr), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    assert_eq!(learned(&s), vec![net("10.1.0.0/16"), net("10.2.0.0/16")]);
}

#[test]
fn a_peer_back_with_fewer_routes_refreshes_them_and_its_end_of_rib_sweeps_the_rest() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    let later = now + Duration::from_secs(5);
    let back = Gr {
        restarting: true,
        forwarding: true,
        ..HELPER
    };
    up(&mut s, later, 2, Some(back));
    assert_eq!(stale_count(&s), 3, "stale until refreshed");
    s.received(later, WALL, A, 2, &announce(&["10.1.0.0/16"]));
    sent(&mut s);
    assert_eq!(stale_count(&s), 2);
    assert!(!s.is_stale(A, &net("10.1.0.0/16")));
    s.take_changes(usize::MAX);
    // End-of-RIB for IPv4 sweeps the stale IPv4 route only.
    s.received(
        later,
        WALL,
        A,
        2,
        &bytes(Message::Update(Update::end_of_rib(Family::Ipv4Unicast))),
    );
    sent(&mut s);
    assert_eq!(learned(&s), vec![net("10.1.0.0/16"), net("fd00:1::/48")]);
    let changes = s.take_changes(usize::MAX);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].prefix, net("10.2.0.0/16"));
    assert!(changes[0].best.is_none());
    s.received(
        later,
        WALL,
        A,
        2,
        &bytes(Message::Update(Update::end_of_rib(Family::Ipv6Unicast))),
    );
    sent(&mut s);
    assert_eq!(learned(&s), vec![net("10.1.0.0/16")]);
    assert_eq!(stale_count(&s), 0);
    let st = &s.peer_status()[0];
    assert!(st.stats.eor_received && st.stats.eor_sent, "{st:?}");
    assert!(s.synchronised());
}

#[test]
fn a_peer_back_without_the_forwarding_bit_loses_its_stale_routes_at_once() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    up(&mut s, now, 2, Some(HELPER));
    assert!(
        learned(&s).is_empty(),
        "F bit clear: not kept (RFC 4724 §4.2)"
    );
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    up(&mut s, now, 2, None);
    assert!(learned(&s).is_empty(), "no graceful restart any more");
}

#[test]
fn a_peer_back_that_never_sends_end_of_rib_has_its_stale_routes_swept_after_the_stale_time() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    let back_at = now + Duration::from_secs(10);
    let back = Gr {
        restarting: true,
        forwarding: true,
        ..HELPER
    };
    up(&mut s, back_at, 2, Some(back));
    // Time passes with the session up (the peer's KEEPALIVEs keep our hold timer happy).
    let tick = |s: &mut Speaker, at: Instant| {
        s.received(at, WALL, A, 2, &bytes(Message::Keepalive));
        s.handle_timeout(at);
        sent(s);
    };
    // The restart time would have ended here, but the peer is back: the stale time rules.
    tick(&mut s, back_at + Duration::from_secs(60));
    tick(&mut s, now + Duration::from_secs(u64::from(RESTART) + 1));
    assert_eq!(learned(&s).len(), 3);
    let mut t = now + Duration::from_secs(u64::from(RESTART) + 1);
    while t + Duration::from_secs(60) < back_at + STALE_ROUTES_TIME {
        t += Duration::from_secs(60);
        tick(&mut s, t);
    }
    assert_eq!(learned(&s).len(), 3, "not before the stale time ends");
    tick(&mut s, back_at + STALE_ROUTES_TIME);
    assert!(learned(&s).is_empty());
    assert_eq!(s.peer_status()[0].state.name(), "Established");
}

#[test]
fn a_peer_that_drops_again_before_refreshing_is_flushed() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    let back = Gr {
        restarting: true,
        forwarding: true,
        ..HELPER
    };
    up(&mut s, now, 2, Some(back));
    s.closed(now, A, 2);
    sent(&mut s);
    assert!(learned(&s).is_empty());
}

#[test]
fn a_peer_whose_new_open_replaces_its_established_session_keeps_its_routes_stale() {
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    // The peer restarted and connects again while we still think the old session is up.
    s.connected(
        now,
        A,
        2,
        Direction::Incoming,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 179),
    );
    let back = Gr {
        restarting: true,
        forwarding: true,
        ..HELPER
    };
    s.received(now, WALL, A, 2, &bytes(Message::Open(open(Some(back)))));
    sent(&mut s);
    assert_eq!(learned(&s).len(), 3);
    assert_eq!(stale_count(&s), 3);
}

fn notify(s: &mut Speaker, now: Instant, conn: u64, n: Notification) {
    s.received(now, WALL, A, conn, &bytes(Message::Notification(n)));
    sent(s);
}

#[test]
fn with_the_n_bit_a_notification_keeps_the_routes_and_a_hard_reset_flushes_them() {
    let n = Gr {
        notification: true,
        ..HELPER
    };
    let (mut s, now) = with_routes(Some(n), &ROUTES);
    notify(
        &mut s,
        now,
        1,
        Notification::new(notif::CEASE, notif::ADMINISTRATIVE_RESET),
    );
    assert_eq!(
        learned(&s).len(),
        3,
        "N bit: a Cease other than Hard Reset keeps routes"
    );

    let (mut s, now) = with_routes(Some(n), &ROUTES);
    s.handle_timeout(now + Duration::from_secs(90));
    sent(&mut s);
    assert_eq!(
        learned(&s).len(),
        3,
        "N bit: our hold timer expiry keeps routes"
    );

    let (mut s, now) = with_routes(Some(n), &ROUTES);
    let why = Notification::new(notif::CEASE, notif::ADMINISTRATIVE_SHUTDOWN);
    notify(&mut s, now, 1, Notification::hard_reset(&why));
    assert!(learned(&s).is_empty(), "Hard Reset flushes");

    // Without the N bit any NOTIFICATION flushes.
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    notify(
        &mut s,
        now,
        1,
        Notification::new(notif::CEASE, notif::ADMINISTRATIVE_RESET),
    );
    assert!(learned(&s).is_empty());
}

#[test]
fn our_open_says_restarting_with_forwarding_kept_only_until_the_session_is_up() {
    let now = Instant::now();
    let mut s = speaker();
    s.set_restarting(true);
    add(&mut s, now);
    let first = up(&mut s, now, 1, Some(HELPER));
    let gr = first.capabilities.graceful_restart.expect("GR capability");
    assert!(gr.restarting && gr.notification, "{gr:?}");
    assert_eq!(gr.restart_time, RESTART);
    assert!(gr.families.iter().all(|(_, f)| *f), "{gr:?}");
    assert_eq!(gr.families.len(), 2);
    // Our own routes and End-of-RIB go out at once on the new session.
    s.originate(net("10.244.1.0/26"), vec![]);
    let out = sent(&mut s);
    assert!(out.iter().any(|m| matches!(m, Message::Update(u)
        if u.announced().any(|p| *p == net("10.244.1.0/26")))));
    s.closed(now, A, 1);
    sent(&mut s);
    let second = up(&mut s, now, 2, Some(HELPER));
    let gr = second.capabilities.graceful_restart.expect("GR capability");
    assert!(
        !gr.restarting && gr.families.iter().all(|(_, f)| !*f),
        "{gr:?}"
    );
    // Without restarting at all: no R, no F.
    let mut s = speaker();
    add(&mut s, now);
    let gr = up(&mut s, now, 1, None)
        .capabilities
        .graceful_restart
        .expect("GR capability");
    assert!(!gr.restarting && gr.families.iter().all(|(_, f)| !*f));
}

#[test]
fn end_of_rib_goes_out_at_once_and_synchronised_waits_for_the_peers() {
    let now = Instant::now();
    let mut s = speaker();
    s.originate(net("10.244.1.0/26"), vec![]);
    add(&mut s, now);
    assert!(!s.synchronised(), "the peer is not up");
    s.connected(
        now,
        A,
        1,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    s.received(now, WALL, A, 1, &bytes(Message::Open(open(Some(HELPER)))));
    s.received(now, WALL, A, 1, &bytes(Message::Keepalive));
    let out = sent(&mut s);
    let eors = out
        .iter()
        .filter(|m| matches!(m, Message::Update(u) if u.end_of_rib.is_some()))
        .count();
    assert_eq!(
        eors, 2,
        "End-of-RIB per family right after our routes: {out:?}"
    );
    assert!(!s.synchronised(), "the peer's End-of-RIB is missing");
    for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        s.received(
            now,
            WALL,
            A,
            1,
            &bytes(Message::Update(Update::end_of_rib(f))),
        );
    }
    sent(&mut s);
    assert!(s.synchronised());
}

#[test]
fn shutdown_sends_hard_reset_to_n_bit_peers_and_administrative_shutdown_to_others() {
    for (n_bit, want) in [
        (true, notif::HARD_RESET),
        (false, notif::ADMINISTRATIVE_SHUTDOWN),
    ] {
        let gr = Gr {
            notification: n_bit,
            ..HELPER
        };
        let (mut s, _) = with_routes(Some(gr), &ROUTES);
        s.shutdown();
        let n = sent(&mut s)
            .into_iter()
            .find_map(|m| match m {
                Message::Notification(n) => Some(n),
                _ => None,
            })
            .expect("a NOTIFICATION");
        assert_eq!((n.code, n.subcode), (notif::CEASE, want), "{n}");
        if n_bit {
            assert_eq!(n.data, vec![notif::CEASE, notif::ADMINISTRATIVE_SHUTDOWN]);
        }
        assert!(learned(&s).is_empty());
    }
}

#[test]
fn graceful_shutdown_re_advertises_our_routes_with_the_community_and_back() {
    let (mut s, _) = with_routes(Some(HELPER), &[]);
    s.originate(net("10.244.1.0/26"), vec![(64512 << 16) | 7]);
    sent(&mut s);
    let communities = |s: &mut Speaker| -> Vec<Vec<u32>> {
        sent(s)
            .into_iter()
            .filter_map(|m| match m {
                Message::Update(u) => u.attributes.map(|a| a.communities),
                _ => None,
            })
            .collect()
    };
    s.set_graceful_shutdown(true);
    assert_eq!(
        communities(&mut s),
        vec![vec![(64512 << 16) | 7, GRACEFUL_SHUTDOWN]]
    );
    // A prefix originated during the drain carries it too.
    s.originate(net("10.244.2.0/26"), vec![]);
    assert_eq!(communities(&mut s), vec![vec![GRACEFUL_SHUTDOWN]]);
    s.set_graceful_shutdown(false);
    let mut back = communities(&mut s);
    back.sort();
    assert_eq!(back, vec![vec![], vec![(64512 << 16) | 7]]);
}

#[test]
fn a_received_route_with_graceful_shutdown_loses_to_any_other_path() {
    let (mut s, now) = with_routes(Some(HELPER), &[]);
    // A second peer with the same prefix, the longer AS path.
    let b: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20));
    s.add_peer(
        now,
        PeerConfig {
            address: b,
            remote_as: 65020,
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
        b,
        9,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40001),
    );
    let mut o = open(Some(HELPER));
    o.my_as = 65020;
    o.capabilities.four_octet_as = Some(65020);
    o.bgp_id = Ipv4Addr::new(198, 18, 0, 20);
    s.received(now, WALL, b, 9, &bytes(Message::Open(o)));
    s.received(now, WALL, b, 9, &bytes(Message::Keepalive));
    let update = |path: Vec<u32>, communities: Vec<u32>, nh: IpAddr| {
        let attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(path)],
            communities,
            ..Default::default()
        };
        let reach = Reach {
            next_hop: NextHop::new(nh),
            prefixes: vec![net("10.9.0.0/16")],
        };
        wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR).concat()
    };
    s.received(now, WALL, A, 1, &update(vec![65010], vec![], A));
    s.received(now, WALL, b, 9, &update(vec![65020, 65021], vec![], b));
    sent(&mut s);
    let best = |s: &Speaker| s.loc_rib().best(&net("10.9.0.0/16")).expect("a best path");
    assert_eq!(best(&s).best.source, Source::Peer(A), "the shorter path");
    // A drains: its route carries 65535:0 and the longer path wins.
    s.received(
        now,
        WALL,
        A,
        1,
        &update(vec![65010], vec![GRACEFUL_SHUTDOWN], A),
    );
    sent(&mut s);
    assert_eq!(best(&s).best.source, Source::Peer(b));
    assert_eq!(
        s.loc_rib()
            .candidate(&net("10.9.0.0/16"), Source::Peer(A))
            .and_then(|c| c.route.attrs.local_pref),
        Some(0)
    );
}

#[test]
fn end_of_rib_waits_while_held_and_goes_out_when_released() {
    let now = Instant::now();
    let mut s = speaker();
    s.hold_end_of_rib(true);
    add(&mut s, now);
    s.connected(
        now,
        A,
        1,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    s.received(now, WALL, A, 1, &bytes(Message::Open(open(Some(HELPER)))));
    s.received(now, WALL, A, 1, &bytes(Message::Keepalive));
    let is_eor = |m: &Message| matches!(m, Message::Update(u) if u.end_of_rib.is_some());
    assert!(!sent(&mut s).iter().any(is_eor), "held");
    // Our block arrives late (from the datastore): it goes out, still without End-of-RIB.
    s.originate(net("10.244.1.0/26"), vec![]);
    let out = sent(&mut s);
    assert!(out.iter().any(|m| matches!(m, Message::Update(u)
        if u.announced().any(|p| *p == net("10.244.1.0/26")))));
    assert!(!out.iter().any(is_eor));
    assert!(!s.peer_status()[0].stats.eor_sent);
    s.hold_end_of_rib(false);
    let out = sent(&mut s);
    assert_eq!(out.iter().filter(|m| is_eor(m)).count(), 2, "{out:?}");
    assert!(s.peer_status()[0].stats.eor_sent);
}

/// The times at which the speaker tries to reconnect to A after its session dropped at
/// `now`, when every attempt is refused (the peer is not listening yet), up to `until`.
fn reconnects(s: &mut Speaker, now: Instant, until: Duration) -> Vec<Duration> {
    let mut tries = Vec::new();
    while let Some(at) = s.poll_timeout() {
        if at > now + until {
            break;
        }
        s.handle_timeout(at);
        let mut connect = false;
        s.flush();
        while s.poll_event().is_some() {}
        while let Some(a) = s.poll_action() {
            connect |= matches!(a, Action::Connect(p) if p == A);
        }
        if connect {
            tries.push(at - now);
            s.connect_failed(at, A);
            while s.poll_action().is_some() {}
        }
    }
    tries
}

#[test]
fn a_restarting_peer_is_reconnected_every_connect_retry_without_back_off() {
    // The peer restarts (its routes stay stale): we try again every connect_retry (1 s
    // here) until it is back, so a passive peer that only returns when we connect is not
    // kept waiting by a back-off.
    let (mut s, now) = with_routes(Some(HELPER), &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    let tries = reconnects(&mut s, now, Duration::from_secs(10));
    let secs: Vec<u64> = tries.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, (1..=10).collect::<Vec<_>>(), "{tries:?}");
    assert_eq!(stale_count(&s), 3, "still kept while it is away");

    // A peer without graceful restart backs off as before: 1 s, then 2 s, 4 s, …
    let (mut s, now) = with_routes(None, &ROUTES);
    s.closed(now, A, 1);
    sent(&mut s);
    let tries = reconnects(&mut s, now, Duration::from_secs(10));
    let secs: Vec<u64> = tries.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, vec![1, 3, 7], "{tries:?}");
}
