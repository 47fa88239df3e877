//! Route reflection (RFC 4456) through the sans-IO speaker: real encoded UPDATEs in, the
//! UPDATEs each peer is sent out. The reflector has two clients, two non-clients and one
//! eBGP peer.

use ferrovia_bgp::fsm::Direction;
use ferrovia_bgp::message::*;
use ferrovia_bgp::rib::Source;
use ferrovia_bgp::speaker::{Action, PeerConfig, Speaker, SpeakerConfig};
use ferrovia_bgp::wire;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const CLUSTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const WALL: SystemTime = SystemTime::UNIX_EPOCH;
const FOUR: SessionContext = SessionContext {
    four_octet_as: true,
};
const AS: u32 = 64512;

const C1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 11));
const C2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 12));
const N1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 21));
const N2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 22));
const E: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 31));
const E_AS: u32 = 65031;

fn id(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(v) => v,
        IpAddr::V6(_) => Ipv4Addr::new(198, 18, 0, 99),
    }
}

fn bytes(m: Message) -> Vec<u8> {
    wire::encode(&m, &FOUR).expect("encodes")
}

fn open(asn: u32, bgp_id: Ipv4Addr) -> Open {
    Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: 90,
        bgp_id,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            route_refresh: true,
            four_octet_as: Some(asn),
            ..Default::default()
        },
    }
}

fn speaker(cluster_id: Option<Ipv4Addr>) -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: AS,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(120),
        next_hop_v4: None,
        next_hop_v6: Some("fd00:198:18::1".parse().expect("v6")),
        cluster_id,
    });
    s.track_changes(true);
    s
}

fn add(s: &mut Speaker, now: Instant, addr: IpAddr, asn: u32, client: bool, conn: u64) {
    s.add_peer(
        now,
        PeerConfig {
            address: addr,
            remote_as: asn,
            hold_time: 90,
            connect_retry: Duration::from_secs(1),
            passive: false,
            kind: "global".into(),
            route_reflector_client: client,
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
    s.received(
        now,
        WALL,
        addr,
        conn,
        &bytes(Message::Open(open(asn, id(addr)))),
    );
    s.received(now, WALL, addr, conn, &bytes(Message::Keepalive));
}

/// The reflector with its five peers Established and the initial End-of-RIBs drained.
fn reflector(now: Instant) -> Speaker {
    let mut s = speaker(Some(CLUSTER));
    add(&mut s, now, C1, AS, true, 1);
    add(&mut s, now, C2, AS, true, 2);
    add(&mut s, now, N1, AS, false, 3);
    add(&mut s, now, N2, AS, false, 4);
    add(&mut s, now, E, E_AS, false, 5);
    out(&mut s);
    s
}

/// Flushes; returns the UPDATEs sent, per peer, and how many Loc-RIB changes there were.
fn out(s: &mut Speaker) -> (Vec<(IpAddr, Update)>, usize) {
    s.flush();
    let changes = s.take_changes(usize::MAX).len();
    while s.poll_event().is_some() {}
    let mut ups = Vec::new();
    while let Some(a) = s.poll_action() {
        if let Action::Send(p, c, b) = a {
            s.written(p, c, b.len());
            if let Message::Update(u) = wire::decode(&b, &FOUR).expect("decodes") {
                ups.push((p, u));
            }
        }
    }
    (ups, changes)
}

fn conn_of(peer: IpAddr) -> u64 {
    match peer {
        C1 => 1,
        C2 => 2,
        N1 => 3,
        N2 => 4,
        _ => 5,
    }
}

fn send_route(s: &mut Speaker, from: IpAddr, prefix: &str, attrs: PathAttributes) {
    let reach = Reach {
        next_hop: NextHop::new(from),
        prefixes: vec![prefix.parse().expect("prefix")],
    };
    for m in wire::pack_updates(&[], Some((&attrs, &reach)), &FOUR) {
        s.received(Instant::now(), WALL, from, conn_of(from), &m);
    }
}

fn ibgp_attrs() -> PathAttributes {
    PathAttributes {
        local_pref: Some(100),
        ..Default::default()
    }
}

fn net(s: &str) -> IpNet {
    s.parse().expect("prefix")
}

/// The announcement of `prefix` sent to `peer`, if any.
fn announced_to<'a>(ups: &'a [(IpAddr, Update)], peer: IpAddr, prefix: &str) -> Option<&'a Update> {
    let prefix = net(prefix);
    ups.iter()
        .filter(|(p, _)| *p == peer)
        .map(|(_, u)| u)
        .find(|u| u.announced().any(|q| *q == prefix))
}

#[test]
fn a_clients_route_goes_to_every_other_peer_with_originator_and_cluster_list() {
    let now = Instant::now();
    let mut s = reflector(now);
    send_route(&mut s, C1, "10.244.1.0/26", ibgp_attrs());
    let (ups, changes) = out(&mut s);
    assert_eq!(changes, 1);
    assert!(
        announced_to(&ups, C1, "10.244.1.0/26").is_none(),
        "never back to its source"
    );
    for peer in [C2, N1, N2] {
        let u = announced_to(&ups, peer, "10.244.1.0/26")
            .unwrap_or_else(|| panic!("reflected to {peer}"));
        let a = u.attributes.as_ref().expect("attributes");
        assert_eq!(
            a.originator_id,
            Some(id(C1)),
            "ORIGINATOR_ID is the client's id"
        );
        assert_eq!(a.cluster_list, vec![CLUSTER]);
        assert_eq!(u.reach[0].next_hop.address, C1, "next hop unchanged");
        assert_eq!(a.local_pref, Some(100));
        assert!(a.as_path.is_empty());
    }
    // eBGP as usual: our next hop, our AS, no reflection attributes.
    let u = announced_to(&ups, E, "10.244.1.0/26").expect("to eBGP");
    let a = u.attributes.as_ref().expect("attributes");
    assert_eq!(u.reach[0].next_hop.address, IpAddr::V4(LOCAL_ID));
    assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![AS])]);
    assert_eq!(a.originator_id, None);
    assert!(a.cluster_list.is_empty());

    // The client withdraws: every peer that had it is told.
    let w = wire::pack_updates(&[net("10.244.1.0/26")], None, &FOUR);
    for m in w {
        s.received(now, WALL, C1, 1, &m);
    }
    let (ups, _) = out(&mut s);
    for peer in [C2, N1, N2, E] {
        assert!(
            ups.iter()
                .any(|(p, u)| *p == peer && u.withdrawn.contains(&net("10.244.1.0/26"))),
            "withdrawn at {peer}"
        );
    }
    assert!(!ups.iter().any(|(p, _)| *p == C1));
}

#[test]
fn a_non_clients_route_goes_to_clients_only() {
    let now = Instant::now();
    let mut s = reflector(now);
    send_route(&mut s, N1, "10.244.2.0/26", ibgp_attrs());
    let (ups, _) = out(&mut s);
    for peer in [C1, C2] {
        let u = announced_to(&ups, peer, "10.244.2.0/26").expect("to the clients");
        let a = u.attributes.as_ref().expect("attributes");
        assert_eq!(a.originator_id, Some(id(N1)));
        assert_eq!(a.cluster_list, vec![CLUSTER]);
        assert_eq!(u.reach[0].next_hop.address, N1);
    }
    assert!(
        announced_to(&ups, N2, "10.244.2.0/26").is_none(),
        "non-client to non-client"
    );
    assert!(announced_to(&ups, N1, "10.244.2.0/26").is_none());
    assert!(
        announced_to(&ups, E, "10.244.2.0/26").is_some(),
        "eBGP as usual"
    );
}

#[test]
fn an_ebgp_route_goes_to_clients_and_non_clients_without_reflection_attributes() {
    let now = Instant::now();
    let mut s = reflector(now);
    let attrs = PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![E_AS])],
        ..Default::default()
    };
    send_route(&mut s, E, "10.9.0.0/16", attrs);
    let (ups, _) = out(&mut s);
    for peer in [C1, C2, N1, N2] {
        let u = announced_to(&ups, peer, "10.9.0.0/16").expect("to every iBGP peer");
        let a = u.attributes.as_ref().expect("attributes");
        assert_eq!(a.originator_id, None);
        assert!(a.cluster_list.is_empty());
        assert_eq!(u.reach[0].next_hop.address, E);
    }
}

#[test]
fn an_already_reflected_route_keeps_its_originator_and_gets_our_cluster_in_front() {
    let now = Instant::now();
    let mut s = reflector(now);
    let other = Ipv4Addr::new(198, 18, 0, 200);
    let origin = Ipv4Addr::new(198, 18, 5, 5);
    let attrs = PathAttributes {
        originator_id: Some(origin),
        cluster_list: vec![other],
        ..ibgp_attrs()
    };
    // From a non-client (another cluster's reflector): to our clients.
    send_route(&mut s, N2, "10.244.3.0/26", attrs);
    let (ups, _) = out(&mut s);
    let u = announced_to(&ups, C1, "10.244.3.0/26").expect("to a client");
    let a = u.attributes.as_ref().expect("attributes");
    assert_eq!(a.originator_id, Some(origin));
    assert_eq!(a.cluster_list, vec![CLUSTER, other]);
}

#[test]
fn routes_looping_through_our_cluster_or_back_to_us_are_refused() {
    let now = Instant::now();
    let mut s = reflector(now);
    let looped = PathAttributes {
        originator_id: Some(Ipv4Addr::new(198, 18, 5, 5)),
        cluster_list: vec![Ipv4Addr::new(198, 18, 0, 200), CLUSTER],
        ..ibgp_attrs()
    };
    send_route(&mut s, N1, "10.244.4.0/26", looped);
    let mine = PathAttributes {
        originator_id: Some(LOCAL_ID),
        ..ibgp_attrs()
    };
    send_route(&mut s, C2, "10.244.5.0/26", mine);
    let (ups, changes) = out(&mut s);
    assert_eq!(changes, 0, "both refused (treated as withdrawn)");
    assert!(ups.is_empty(), "nothing reflected: {ups:?}");
    assert!(s.loc_rib().best(&net("10.244.4.0/26")).is_none());
    assert!(s.loc_rib().best(&net("10.244.5.0/26")).is_none());
}

#[test]
fn a_client_refuses_its_own_route_reflected_back_and_keeps_the_others() {
    // A plain speaker (no cluster id) under a reflector.
    let now = Instant::now();
    let mut s = speaker(None);
    add(&mut s, now, N1, AS, false, 3);
    out(&mut s);
    s.originate(net("10.244.7.0/26"), vec![]);
    out(&mut s);
    let back = PathAttributes {
        originator_id: Some(LOCAL_ID),
        cluster_list: vec![CLUSTER],
        ..ibgp_attrs()
    };
    let reach = Reach {
        next_hop: NextHop::new(IpAddr::V4(LOCAL_ID)),
        prefixes: vec![net("10.244.7.0/26")],
    };
    for m in wire::pack_updates(&[], Some((&back, &reach)), &FOUR) {
        s.received(now, WALL, N1, 3, &m);
    }
    let other = PathAttributes {
        originator_id: Some(Ipv4Addr::new(198, 18, 0, 12)),
        cluster_list: vec![CLUSTER],
        ..ibgp_attrs()
    };
    let reach = Reach {
        next_hop: NextHop::new(C2),
        prefixes: vec![net("10.244.8.0/26")],
    };
    for m in wire::pack_updates(&[], Some((&other, &reach)), &FOUR) {
        s.received(now, WALL, N1, 3, &m);
    }
    out(&mut s);
    let own = s.loc_rib().best(&net("10.244.7.0/26")).expect("own route");
    assert_eq!(
        own.best.source,
        Source::Local,
        "the reflected copy was refused"
    );
    let learned = s.loc_rib().best(&net("10.244.8.0/26")).expect("learned");
    assert_eq!(learned.best.source, Source::Peer(N1));
    assert_eq!(
        learned.best.route.next_hop.address, C2,
        "originator as next hop"
    );
    // A plain speaker does not reflect: nothing from N1 would go to another iBGP peer.
    assert_eq!(s.adj_rib_in(N1).len(), 1);
}

#[test]
fn without_a_cluster_id_clients_are_not_reflected_to() {
    let now = Instant::now();
    let mut s = speaker(None);
    add(&mut s, now, C1, AS, true, 1);
    add(&mut s, now, C2, AS, true, 2);
    out(&mut s);
    send_route(&mut s, C1, "10.244.9.0/26", ibgp_attrs());
    let (ups, changes) = out(&mut s);
    assert_eq!(changes, 1);
    assert!(ups.is_empty(), "plain iBGP rules: {ups:?}");
}
