//! The receive path alone, sans-IO, for profiling (`perf record -g`) and for before/after
//! comparisons that no feeder or kernel disturbs: N IPv4 /24s from one eBGP peer, packed into
//! UPDATEs as a BIRD feeder packs them (one attribute set, as many prefixes per UPDATE as
//! fit), fed to the speaker 64 KiB at a time with a flush per MiB (as the driver does), and
//! the Loc-RIB changes taken 16,384 at a time (as the kernel task does). Prints the time of
//! each stage and the speaker's resident memory.
//!
//! `cargo run --release -p ferrovia-bgp --example rib_feed [N] [ROUNDS] [ORDER]` (default
//! 1,000,000, 3, `hashed`: the order BIRD sends a full table in; `ascending` is the other).
use ferrovia_bgp::fsm::Direction;
use ferrovia_bgp::message::*;
use ferrovia_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use ferrovia_bgp::wire;
use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const LOCAL_ID: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const FEEDER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
const CTX: SessionContext = SessionContext {
    four_octet_as: true,
};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The prefixes in the order a feeder sends them: ascending, or (`hashed`) in the order of
/// a multiplicative hash of the address, as BIRD walks its hash-table FIB when it exports a
/// full table — neighbouring prefixes arrive far apart, so every Loc-RIB insert lands in a
/// different part of the table.
fn feed(n: u32, hashed: bool) -> Vec<u8> {
    let mut prefixes: Vec<IpNet> = (0..n)
        .map(|i| {
            Ipv4Net::new(Ipv4Addr::from((20u32 << 24) + (i << 8)), 24)
                .expect("prefix")
                .into()
        })
        .collect();
    if hashed {
        prefixes.sort_by_key(|p| match p {
            IpNet::V4(v4) => u32::from(v4.addr()).wrapping_mul(2_654_435_761),
            IpNet::V6(_) => 0,
        });
    }
    let attrs = PathAttributes {
        as_path: vec![AsSegment::Sequence(vec![65000])],
        ..Default::default()
    };
    let reach = Reach {
        next_hop: NextHop::new(IpAddr::V4(FEEDER)),
        prefixes,
    };
    wire::pack_updates(&[], Some((&attrs, &reach)), &CTX).concat()
}

fn established(now: Instant) -> Speaker {
    let mut s = Speaker::new(SpeakerConfig {
        local_as: 64512,
        router_id: LOCAL_ID,
        families: vec![Family::Ipv4Unicast],
        graceful_restart: None,
        next_hop_v4: None,
        next_hop_v6: None,
        cluster_id: None,
    });
    let peer = IpAddr::V4(FEEDER);
    s.add_peer(
        now,
        PeerConfig {
            address: peer,
            remote_as: 65000,
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
        peer,
        1,
        Direction::Outgoing,
        SocketAddr::new(IpAddr::V4(LOCAL_ID), 40000),
    );
    let open = Open {
        version: 4,
        my_as: 65000,
        hold_time: 90,
        bgp_id: FEEDER,
        capabilities: Capabilities {
            multiprotocol: vec![Family::Ipv4Unicast],
            route_refresh: true,
            four_octet_as: Some(65000),
            ..Default::default()
        },
    };
    let wall = SystemTime::now();
    let bytes = wire::encode(&Message::Open(open), &CTX).expect("OPEN encodes");
    s.received(now, wall, peer, 1, &bytes);
    let bytes = wire::encode(&Message::Keepalive, &CTX).expect("KEEPALIVE encodes");
    s.received(now, wall, peer, 1, &bytes);
    s.track_changes(true);
    // The driver flushes after every event: the session's first flush (its initial
    // resend, of an empty table) comes before any route arrives.
    s.flush();
    while s.poll_action().is_some() {}
    while s.poll_event().is_some() {}
    s
}

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let rounds: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let order = args.next().unwrap_or_else(|| "hashed".into());
    let hashed = match order.as_str() {
        "hashed" => true,
        "ascending" => false,
        other => {
            eprintln!("order {other:?}: say hashed (as BIRD sends a full table) or ascending");
            std::process::exit(2);
        }
    };
    let bytes = feed(n, hashed);
    println!(
        "{n} prefixes in {} KiB of UPDATEs, {order} order; {rounds} rounds",
        bytes.len() / 1024
    );
    for round in 1..=rounds {
        let base = rss_kib();
        let now = Instant::now();
        let mut s = established(now);
        let peer = IpAddr::V4(FEEDER);
        let (mut t_recv, mut t_flush, mut t_take) =
            (Duration::ZERO, Duration::ZERO, Duration::ZERO);
        let mut taken = 0usize;
        let start = Instant::now();
        for mib in bytes.chunks(1 << 20) {
            let t = Instant::now();
            for chunk in mib.chunks(64 << 10) {
                s.received(now, SystemTime::now(), peer, 1, chunk);
            }
            t_recv += t.elapsed();
            let t = Instant::now();
            s.flush();
            while s.poll_action().is_some() {}
            while s.poll_event().is_some() {}
            t_flush += t.elapsed();
            let t = Instant::now();
            loop {
                let c = s.take_changes(16_384);
                if c.is_empty() {
                    break;
                }
                taken += c.len();
            }
            t_take += t.elapsed();
        }
        let total = start.elapsed();
        let held = s.loc_rib().len();
        assert_eq!(held, n as usize, "every prefix in the Loc-RIB");
        println!(
            "round {round}: {:.3} s total: decode+RIB {:.3} s, flush {:.3} s, take_changes {:.3} s \
             ({taken} changes); {} MiB resident",
            total.as_secs_f64(),
            t_recv.as_secs_f64(),
            t_flush.as_secs_f64(),
            t_take.as_secs_f64(),
            rss_kib().saturating_sub(base) / 1024
        );
    }
}
