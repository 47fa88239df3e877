//! ferrovia as route reflector (RFC 4456) for a BIRD client, an FRR client and two ferrovia
//! clients on one LAN, all accepted through a peer range with the range's MD5 password:
//! each client learns the others' blocks with the originator as next hop (and the
//! reflection attributes), installs them, and addresses of the blocks ping across.

use ferrovia_testsupport::common;

use common::sim::Lan;
use common::{
    net_lock, wait_until, Bird, BirdConfig, BirdPeer, Ferrovia, FerroviaConfig, Frr, FrrConfig,
    FrrNeighbor, Netns,
};
use std::time::Duration;

const AS: u32 = 64512;
const RR: &str = "198.18.0.100";
const RR_V6: &str = "fd00:198:18::100";
const PASSWORD: &str = "rr-range-secret";
/// Generous: sessions, reflection and kernel installs on a loaded machine.
const CONVERGE: Duration = Duration::from_secs(90);

/// Member k's (0-based) blocks: 10.244.(k+1).0/26 and fd00:10:244:(k+1)::/122.
fn blocks(k: usize) -> (String, String) {
    (
        format!("10.244.{}.0/26", k + 1),
        format!("fd00:10:244:{}::/122", k + 1),
    )
}

/// The address inside member k's block that answers pings.
fn host(k: usize) -> String {
    format!("10.244.{}.1", k + 1)
}

fn ferrovia_client(k: usize) -> FerroviaConfig {
    let (v4, v6) = blocks(k);
    let mut cfg = FerroviaConfig::node1(AS, AS, &[&v4, &v6]);
    cfg.name = format!("node{}", k + 1);
    cfg.router_id = Lan::v4(k);
    cfg.addresses = vec![Lan::v4(k), Lan::v6(k)];
    cfg.peers[0].address = RR.into();
    cfg.peers[0].password = Some(PASSWORD.into());
    cfg
}

fn kernel_route_via(ns: &Netns, prefix: &str, via: &str) -> Result<(), String> {
    let fam = if prefix.contains(':') { "-6" } else { "-4" };
    let out = ns.ip(&[fam, "route", "show", prefix]);
    if out.contains(&format!("via {via} ")) {
        Ok(())
    } else {
        Err(format!("{}: {prefix}: {out:?}, want via {via}", ns.name()))
    }
}

fn ping(ns: &Netns, from: &str, to: &str) -> Result<(), String> {
    let out = ns.exec(&["ping", "-c", "1", "-W", "2", "-I", from, to]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: ping {from} → {to}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

#[test]
fn ferrovia_reflects_between_bird_frr_and_ferrovia_clients_from_a_peer_range_with_md5() {
    let lock = net_lock();
    let lan = Lan::new(
        &lock,
        "rri",
        4,
        &[format!("{RR}/15"), format!("{RR_V6}/64")],
    );
    // The reflector forwards too: BIRD installs nothing in its kernel (no kernel protocol
    // in the harness), so its answers go by a default route through the reflector.
    lan.hub.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let pw_file = dir.path().join("range.password");
    std::fs::write(&pw_file, format!("{PASSWORD}\n")).expect("password file");

    let mut rr_cfg = FerroviaConfig::node1(AS, AS, &[]);
    rr_cfg.name = "rr".into();
    rr_cfg.router_id = RR.into();
    rr_cfg.addresses = vec![RR.into(), RR_V6.into()];
    rr_cfg.peers.clear();
    rr_cfg.extra_bgp = format!(
        "  routeReflector: {{ clusterId: {RR} }}\n  peerRanges:\n    - {{ cidr: 198.18.0.0/24, asNumber: {AS}, routeReflectorClient: true, passwordFile: {} }}\n",
        pw_file.display()
    );
    let rr = Ferrovia::start(&lan.hub, rr_cfg);

    let (b4, b6) = blocks(0);
    let bird = Bird::start(
        &lan.members[0],
        BirdConfig {
            router_id: Lan::v4(0),
            originate: vec![b4, b6],
            peers: vec![BirdPeer {
                name: "reflector".into(),
                local_addr: Some(Lan::v4(0)),
                local_as: AS,
                neighbor_addr: RR.into(),
                neighbor_as: AS,
                password: Some(PASSWORD.into()),
                hold_time: Some(9),
                v6_next_hop: Some(Lan::v6(0)),
                passive: false,
                extra: String::new(),
            }],
            extra: String::new(),
        },
    );
    lan.members[0].ip(&["route", "add", "default", "via", RR]);
    let (f4, f6) = blocks(1);
    let frr = Frr::start(
        &lan.members[1],
        FrrConfig {
            asn: AS,
            router_id: Lan::v4(1),
            neighbors: vec![FrrNeighbor {
                addr: RR.into(),
                remote_as: AS,
                password: Some(PASSWORD.into()),
                hold_time: Some(9),
                passive: false,
                extra: Vec::new(),
            }],
            networks: vec![f4, f6],
        },
    );
    let a = Ferrovia::start(&lan.members[2], ferrovia_client(2));
    let b = Ferrovia::start(&lan.members[3], ferrovia_client(3));
    for k in 0..4 {
        lan.members[k].addr("lo", &format!("{}/32", host(k)));
    }

    // The reflector: one peer per client address, from the range, Established.
    wait_until(
        "four range clients Established at the reflector",
        CONVERGE,
        common::POLL,
        || {
            let st = rr.status()?;
            let peers = st["peers"].as_array().ok_or("no peers")?;
            for k in 0..4 {
                let p = peers
                    .iter()
                    .find(|p| p["address"] == Lan::v4(k).as_str())
                    .ok_or_else(|| format!("no peer {} in {st}", Lan::v4(k)))?;
                if p["state"] != "Established" || p["type"] != "range 198.18.0.0/24" {
                    return Err(format!("{p}"));
                }
            }
            Ok(())
        },
    );

    // Every client has every other client's blocks, next hop the originator.
    wait_until(
        "BIRD has the others' blocks via their originators",
        CONVERGE,
        common::POLL,
        || {
            for k in 1..4 {
                let (v4, v6) = blocks(k);
                for (p, nh) in [(v4, Lan::v4(k)), (v6, Lan::v6(k))] {
                    let routes = bird.routes(&format!("for {p}"));
                    let r = routes
                        .iter()
                        .find(|r| r.prefix == p)
                        .ok_or_else(|| format!("BIRD lacks {p}"))?;
                    if !r.next_hop().contains(&nh) {
                        return Err(format!("BIRD: {p} next hop {}, want {nh}", r.next_hop()));
                    }
                    if r.attrs.get("BGP.originator_id").map(String::as_str)
                        != Some(Lan::v4(k).as_str())
                        || r.attrs.get("BGP.cluster_list").map(String::as_str) != Some(RR)
                    {
                        return Err(format!("BIRD: {p} reflection attributes {:?}", r.attrs));
                    }
                }
            }
            Ok(())
        },
    );
    for (k, ns) in [
        (1, &lan.members[1]),
        (2, &lan.members[2]),
        (3, &lan.members[3]),
    ] {
        wait_until(
            "the client's kernel routes the others' blocks via their originators",
            CONVERGE,
            common::POLL,
            || {
                for o in (0..4).filter(|o| *o != k) {
                    let (v4, v6) = blocks(o);
                    kernel_route_via(ns, &v4, &Lan::v4(o))?;
                    kernel_route_via(ns, &v6, &Lan::v6(o))?;
                }
                Ok::<(), String>(())
            },
        );
    }
    // The ferrovia clients' Loc-RIBs: from the reflector, next hop the originator.
    for c in [&a, &b] {
        let routes = c.routes().expect("routes");
        for o in 0..2 {
            let (v4, _) = blocks(o);
            let r = routes
                .iter()
                .find(|r| r["prefix"] == v4.as_str())
                .unwrap_or_else(|| panic!("{v4} missing: {routes:?}"));
            assert_eq!(r["peer"], RR, "{r}");
            assert_eq!(r["nextHops"], serde_json::json!([Lan::v4(o)]), "{r}");
        }
    }

    // Addresses inside the blocks ping across: ferrovia ↔ ferrovia, ferrovia ↔ FRR, and to
    // BIRD (its answers return through the reflector).
    for (from, to) in [(2, 3), (3, 2), (2, 1), (1, 3), (3, 0)] {
        wait_until(
            "ping across the reflected routes",
            CONVERGE,
            common::POLL,
            || ping(&lan.members[from], &host(from), &host(to)),
        );
    }
    drop((a, b, frr, bird, rr));
}
