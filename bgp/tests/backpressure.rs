//! The speaker's bounded send queues, sans-IO: a peer that stops reading gets at most its
//! send window of UPDATEs, keeps what it still has to receive as RIB state, receives all of
//! it once it reads again, and does not hold up any other peer.

use ferrovia_bgp::fsm::Direction;
use ferrovia_bgp::message::*;
use ferrovia_bgp::speaker::{
    Action, PeerConfig, Speaker, SpeakerConfig, PENDING_LIMIT, SEND_WINDOW,
};
use ferrovia_bgp::wire;
use ipnet::{IpNet, Ipv4Net};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const READER: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 10));
const STALLED: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 20));
const CTX: SessionContext = SessionContext {
    four_octet_as: true,
};
const WALL: SystemTime = SystemTime::UNIX_EPOCH;

fn open(asn: u32, id: Ipv4Addr) -> Vec<u8> {
    let o = Open {
        version: 4,
        my_as: u16::try_from(asn).unwrap_or(AS_TRANS),
        hold_time: 90,
        bgp_id: id,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast],
            route_refresh: true,
            four_octet_as: Some(asn),
            ..Default::default()
        },
    };
    wire::encode(&Message::Open(o), &CTX).expect("encodes")
}

fn keepalive() -> Vec<u8> {
    wire::encode(&Message::Keepalive, &CTX).expect("encodes")
}

fn speaker(now: Instant) -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast],
        graceful_restart: None,
        next_hop_v4: None,
        next_hop_v6: None,
        cluster_id: None,
    });
    for (addr, asn, conn) in [(READER, 65010, 1), (STALLED, 65020, 2)] {
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
        let IpAddr::V4(id) = addr else {
            unreachable!("test peers are IPv4")
        };
        s.received(now, WALL, addr, conn, &open(asn, id));
        s.received(now, WALL, addr, conn, &keepalive());
    }
    s
}

/// What one test peer has been sent: its view of our Adj-RIB-Out, and counts.
#[derive(Default)]
struct PeerView {
    table: HashMap<IpNet, Vec<u32>>,
    end_of_rib: bool,
    keepalives: usize,
    /// Bytes handed over for this peer and not yet acknowledged as written.
    unwritten: usize,
}

impl PeerView {
    fn apply(&mut self, bytes: &[u8]) {
        match wire::decode(bytes, &CTX).expect("decodes") {
            Message::Update(u) if u.end_of_rib.is_some() => self.end_of_rib = true,
            Message::Update(u) => {
                for p in &u.withdrawn {
                    self.table.remove(p);
                }
                let communities = u
                    .attributes
                    .as_ref()
                    .map(|a| a.communities.clone())
                    .unwrap_or_default();
                for p in u.announced() {
                    self.table.insert(*p, communities.clone());
                }
            }
            Message::Keepalive => self.keepalives += 1,
            _ => {}
        }
    }
}

/// Runs the speaker's output: every byte for READER is "written" at once; bytes for
/// STALLED are written only when `stalled_reads` is true.
fn pump(s: &mut Speaker, views: &mut BTreeMap<IpAddr, PeerView>, stalled_reads: bool) {
    // Bounded: every round either writes something or ends the loop.
    for _ in 0..1_000_000 {
        s.flush();
        while s.poll_event().is_some() {}
        let mut any = false;
        while let Some(a) = s.poll_action() {
            if let Action::Send(peer, conn, bytes) = a {
                let v = views.entry(peer).or_default();
                v.apply(&bytes);
                if peer == READER || stalled_reads {
                    s.written(peer, conn, bytes.len());
                    any = true;
                } else {
                    v.unwritten += bytes.len();
                }
            }
        }
        if !any {
            return;
        }
    }
    panic!("the speaker never stopped sending");
}

fn status(s: &Speaker, peer: IpAddr) -> ferrovia_bgp::speaker::PeerStats {
    s.peer_status()
        .into_iter()
        .find(|p| p.config.address == peer)
        .expect("peer known")
        .stats
}

fn prefixes(n: u32) -> impl Iterator<Item = IpNet> {
    (0..n).map(|i| {
        let a = Ipv4Addr::from(0x0a00_0000 + (i << 8));
        IpNet::V4(Ipv4Net::new(a, 24).expect("prefix"))
    })
}

/// The peer's view equals what the speaker originated, communities included.
fn assert_has_all(v: &PeerView, want: &HashMap<IpNet, Vec<u32>>, who: &str) {
    assert_eq!(v.table.len(), want.len(), "{who}: number of routes");
    for (p, c) in want {
        assert_eq!(v.table.get(p), Some(c), "{who}: {p}");
    }
}

#[test]
fn a_peer_that_stops_reading_gets_its_window_and_the_rest_later() {
    let now = Instant::now();
    let mut s = speaker(now);
    let mut views = BTreeMap::new();
    pump(&mut s, &mut views, false);
    // A distinct attribute set per prefix: one UPDATE each, far more bytes than a window.
    let n = 20_000;
    let mut want = HashMap::new();
    for (i, p) in prefixes(n).enumerate() {
        let c = vec![u32::try_from(i).expect("small")];
        s.originate(p, c.clone());
        want.insert(p, c);
    }
    pump(&mut s, &mut views, false);

    let reader = &views[&READER];
    assert_has_all(reader, &want, "reading peer");
    assert!(reader.end_of_rib);
    let stalled = &views[&STALLED];
    assert!(stalled.unwritten >= SEND_WINDOW, "the window was filled");
    assert!(
        stalled.unwritten < 2 * SEND_WINDOW,
        "at most one export step past the window: {} bytes",
        stalled.unwritten
    );
    assert!(stalled.table.len() < want.len());
    let st = status(&s, STALLED);
    assert!(st.export_waiting);
    assert_eq!(st.send_queue, stalled.unwritten);
    assert!(!status(&s, READER).export_waiting);
    // What the stalled peer has not read is kept once, for it alone.
    let unread = s.unread_changes();
    assert!(unread > 0 && unread <= want.len(), "{unread} changes kept");

    // The peer reads again: everything arrives, then End-of-RIB.
    let unwritten = std::mem::take(&mut views.get_mut(&STALLED).expect("seen").unwritten);
    s.written(STALLED, 2, unwritten);
    pump(&mut s, &mut views, true);
    let stalled = &views[&STALLED];
    assert_has_all(stalled, &want, "peer that read again");
    assert!(stalled.end_of_rib);
    assert!(!status(&s, STALLED).export_waiting);
    assert_eq!(status(&s, STALLED).prefixes_sent, want.len());
    assert_eq!(s.unread_changes(), 0, "read by every peer: dropped");
}

#[test]
fn churn_while_stalled_costs_bounded_state_and_ends_in_the_right_table() {
    let now = Instant::now();
    let mut s = speaker(now);
    let mut views = BTreeMap::new();
    pump(&mut s, &mut views, false);
    let mut want = HashMap::new();
    // More changed prefixes than a peer may keep pending: they fold into a resend.
    let n = u32::try_from(PENDING_LIMIT).expect("fits") + 10_000;
    for round in 0..3u32 {
        for p in prefixes(n) {
            // Every other prefix withdrawn in round 1, back in round 2.
            let octet = match p {
                IpNet::V4(v) => v.network().octets()[2],
                IpNet::V6(_) => 0,
            };
            if round == 1 && octet % 2 == 0 {
                s.withdraw(p);
                want.remove(&p);
            } else {
                s.originate(p, vec![round]);
                want.insert(p, vec![round]);
            }
        }
        pump(&mut s, &mut views, false);
        assert_has_all(&views[&READER], &want, "reading peer");
        assert!(views[&STALLED].unwritten < 2 * SEND_WINDOW);
        let unread = s.unread_changes();
        assert!(
            unread <= PENDING_LIMIT,
            "{unread} changes kept for the stalled peer"
        );
    }
    let unwritten = std::mem::take(&mut views.get_mut(&STALLED).expect("seen").unwritten);
    s.written(STALLED, 2, unwritten);
    pump(&mut s, &mut views, true);
    assert_has_all(&views[&STALLED], &want, "peer that read again");
    assert_eq!(status(&s, STALLED).prefixes_sent, want.len());
    assert_eq!(s.unread_changes(), 0);
}

#[test]
fn keepalives_do_not_pile_up_behind_a_full_queue_and_others_keep_theirs() {
    let start = Instant::now();
    let mut s = speaker(start);
    let mut views = BTreeMap::new();
    pump(&mut s, &mut views, false);
    for (i, p) in prefixes(20_000).enumerate() {
        s.originate(p, vec![u32::try_from(i).expect("small")]);
    }
    pump(&mut s, &mut views, false);
    let before: BTreeMap<IpAddr, usize> = views.iter().map(|(a, v)| (*a, v.keepalives)).collect();
    let queued = views[&STALLED].unwritten;
    // Ten keepalive intervals (30 s with a 90 s hold time); both peers keep sending us
    // theirs, so no hold timer expires.
    for k in 1..=10u64 {
        let now = start + Duration::from_secs(31 * k);
        s.received(now, WALL, READER, 1, &keepalive());
        s.received(now, WALL, STALLED, 2, &keepalive());
        s.handle_timeout(now);
        pump(&mut s, &mut views, false);
    }
    assert!(
        views[&READER].keepalives >= before[&READER] + 9,
        "the reading peer got its keepalives: {} then {}",
        before[&READER],
        views[&READER].keepalives
    );
    assert_eq!(
        views[&STALLED].keepalives, before[&STALLED],
        "nothing more queued for the peer that does not read"
    );
    assert_eq!(views[&STALLED].unwritten, queued);
    for p in [READER, STALLED] {
        let st = s
            .peer_status()
            .into_iter()
            .find(|x| x.config.address == p)
            .expect("known");
        assert_eq!(st.state, ferrovia_bgp::fsm::State::Established, "{p}");
    }
}
