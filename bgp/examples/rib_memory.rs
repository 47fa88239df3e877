//! Prints the resident memory of a Loc-RIB holding N IPv4 /24s from one peer, to size
//! the RIB's data structures: `cargo run --release -p ferrovia-bgp --example rib_memory`.
use ferrovia_bgp::message::{AsSegment, NextHop, PathAttributes};
use ferrovia_bgp::rib::{Candidate, LocRib, Route, Source};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let before = rss_kib();
    let peer = IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254));
    let route = Arc::new(Route {
        attrs: PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![65000])],
            ..Default::default()
        },
        next_hop: NextHop::new(peer),
    });
    let mut rib = LocRib::default();
    // As the speaker does: one shared candidate for the prefixes of an UPDATE (about
    // 1,000 /24s fit one).
    let mut c = None;
    for i in 0..n {
        let p = ipnet::Ipv4Net::new(Ipv4Addr::from((20u32 << 24) + (i << 8)), 24).expect("p");
        if i % 1000 == 0 {
            c = Some(Arc::new(Candidate {
                source: Source::Peer(peer),
                route: route.clone(),
                ebgp: true,
                peer_id: Ipv4Addr::new(1, 1, 1, 1),
            }));
        }
        rib.update_shared(p.into(), Source::Peer(peer), c.as_ref());
    }
    let after = rss_kib();
    println!(
        "{n} prefixes: {} MiB resident for the Loc-RIB ({} bytes/prefix); size_of Candidate {}",
        (after - before) / 1024,
        (after - before) * 1024 / u64::from(n.max(1)),
        std::mem::size_of::<Candidate>()
    );
}
