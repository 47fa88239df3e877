//! Proves the harness against the real daemons alone: BIRD (in ferrovia's place, 198.18.0.1)
//! peers with FRR and with GoBGP (198.18.0.254), eBGP and iBGP, IPv4 and IPv6 prefixes over one
//! IPv4 session, checked in each daemon's CLI.

use ferrovia_testsupport::common;

use common::*;
use serde_json::Value;

fn bird_in_ferrovias_place(local_as: u32, peer_as: u32) -> BirdConfig {
    BirdConfig {
        router_id: FERROVIA_V4.into(),
        originate: vec![F_V4.into(), F_V6.into()],
        peers: vec![BirdPeer {
            name: "peer".into(),
            local_addr: Some(FERROVIA_V4.into()),
            local_as,
            neighbor_addr: PEER_V4.into(),
            neighbor_as: peer_as,
            password: None,
            hold_time: Some(9),
            v6_next_hop: Some(FERROVIA_V6.into()),
            passive: false,
            extra: String::new(),
        }],
        extra: String::new(),
    }
}

/// BIRD has the peer's two prefixes with the right next hops and AS path.
fn check_bird_learned(bird: &Bird, expect_path: &str) {
    wait_until(
        "BIRD learns the peer's v4+v6 prefixes",
        PROPAGATE,
        POLL,
        || {
            let r = bird.routes_from("peer");
            let v4 = r.get(P_V4).ok_or_else(|| format!("no {P_V4}: {r:#?}"))?;
            let v6 = r.get(P_V6).ok_or_else(|| format!("no {P_V6}: {r:#?}"))?;
            if v4.next_hop() != PEER_V4 || v4.as_path() != expect_path {
                return Err(format!("v4 route: {v4:#?}"));
            }
            if !v6.next_hop().starts_with(PEER_V6) || v6.as_path() != expect_path {
                return Err(format!("v6 route: {v6:#?}"));
            }
            // BIRD resolves an IPv6 next hop to the link-local one when the peer sends both
            // (FRR does): either is a usable gateway on the link.
            let v6_via_ok = v6
                .via
                .as_deref()
                .is_some_and(|v| v == PEER_V6 || v.starts_with("fe80:"));
            if v4.via.as_deref() != Some(PEER_V4) || !v6_via_ok {
                return Err(format!("unresolved gateways: {v4:#?} {v6:#?}"));
            }
            Ok(())
        },
    );
}

fn selfcheck_frr(tag: &str, bird_as: u32, frr_as: u32) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut frr = Frr::start(
        &t.p,
        FrrConfig {
            asn: frr_as,
            router_id: PEER_V4.into(),
            neighbors: vec![FrrNeighbor::ferrovia(bird_as)],
            networks: vec![P_V4.into(), P_V6.into()],
        },
    );
    let bird = Bird::start(&t.f, bird_in_ferrovias_place(bird_as, frr_as));

    wait_until("BIRD and FRR Established", ESTABLISH, POLL, || {
        let b = bird.protocol("peer");
        let f = frr.neighbor_state(FERROVIA_V4);
        if b.established() && f == "Established" {
            Ok(())
        } else {
            Err(format!(
                "bird: {} / {:?}; frr: {f}",
                b.bgp_state, b.last_error
            ))
        }
    });
    let ebgp = bird_as != frr_as;
    check_bird_learned(&bird, if ebgp { "65000" } else { "" });

    wait_until("FRR learns BIRD's v4+v6 prefixes", PROPAGATE, POLL, || {
        let v4 = frr.paths_from(F_V4, FERROVIA_V4)?;
        let v6 = frr.paths_from(F_V6, FERROVIA_V4)?;
        let (Some(v4), Some(v6)) = (v4.first(), v6.first()) else {
            return Err(format!("v4 {v4:?} v6 {v6:?}"));
        };
        let want_path = if ebgp { "64512" } else { "" };
        if v4["path"] != want_path || v4["nexthops"][0]["ip"] != FERROVIA_V4 || v4["valid"] != true
        {
            return Err(format!("v4 path {v4}"));
        }
        let has_global = v6["nexthops"]
            .as_array()
            .map(|a| {
                a.iter()
                    .any(|n| n["ip"] == FERROVIA_V6 && n["scope"] == "global")
            })
            .unwrap_or(false);
        if v6["path"] != want_path || !has_global || v6["valid"] != true {
            return Err(format!("v6 path {v6}"));
        }
        Ok(())
    });

    // Withdrawal from FRR's side.
    frr.remove_network(P_V6);
    wait_until(
        "BIRD drops the withdrawn v6 prefix",
        PROPAGATE,
        POLL,
        || {
            let r = bird.routes_from("peer");
            if r.contains_key(P_V6) || !r.contains_key(P_V4) {
                Err(format!("{:?}", r.keys().collect::<Vec<_>>()))
            } else {
                Ok(())
            }
        },
    );
}

fn selfcheck_gobgp(tag: &str, bird_as: u32, gobgp_as: u32) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let gobgp = Gobgp::start(
        &t.p,
        GobgpConfig {
            asn: gobgp_as,
            router_id: PEER_V4.into(),
            neighbors: vec![GobgpNeighbor::ferrovia(bird_as)],
            v6_next_hop: Some(PEER_V6.into()),
            originate: vec![P_V4.into(), P_V6.into()],
        },
    );
    let bird = Bird::start(&t.f, bird_in_ferrovias_place(bird_as, gobgp_as));

    wait_until("BIRD and GoBGP Established", ESTABLISH, POLL, || {
        let b = bird.protocol("peer");
        let g = gobgp.session_state(FERROVIA_V4);
        if b.established() && g == "ESTABLISHED" {
            Ok(())
        } else {
            Err(format!(
                "bird: {} / {:?}; gobgp: {g}",
                b.bgp_state, b.last_error
            ))
        }
    });
    let ebgp = bird_as != gobgp_as;
    check_bird_learned(&bird, if ebgp { "65000" } else { "" });

    wait_until(
        "GoBGP learns BIRD's v4+v6 prefixes",
        PROPAGATE,
        POLL,
        || {
            for (p, nh) in [(F_V4, FERROVIA_V4), (F_V6, FERROVIA_V6)] {
                let paths = gobgp.paths_from(p, FERROVIA_V4)?;
                let path = paths
                    .first()
                    .ok_or_else(|| format!("no {p} from {FERROVIA_V4}"))?;
                let attrs = path["attrs"].as_array().cloned().unwrap_or_default();
                let asns: Vec<Value> = attrs
                    .iter()
                    .filter(|a| a["type"] == 2)
                    .flat_map(|a| a["as_paths"].as_array().cloned().unwrap_or_default())
                    .flat_map(|s| s["asns"].as_array().cloned().unwrap_or_default())
                    .collect();
                let want: Vec<Value> = if ebgp {
                    vec![Value::from(64512)]
                } else {
                    vec![]
                };
                let nexthop_ok = attrs
                    .iter()
                    .any(|a| (a["type"] == 3 || a["type"] == 14) && a["nexthop"] == nh);
                if asns != want || !nexthop_ok {
                    return Err(format!("{p}: {path}"));
                }
            }
            Ok(())
        },
    );

    gobgp.del_route(P_V4);
    wait_until(
        "BIRD drops the withdrawn v4 prefix",
        PROPAGATE,
        POLL,
        || {
            let r = bird.routes_from("peer");
            if r.contains_key(P_V4) || !r.contains_key(P_V6) {
                Err(format!("{:?}", r.keys().collect::<Vec<_>>()))
            } else {
                Ok(())
            }
        },
    );
}

#[test]
fn bird_frr_ebgp() {
    selfcheck_frr("sc-bf-e", 64512, 65000);
}

#[test]
fn bird_frr_ibgp() {
    selfcheck_frr("sc-bf-i", 64512, 64512);
}

#[test]
fn bird_gobgp_ebgp() {
    selfcheck_gobgp("sc-bg-e", 64512, 65000);
}

#[test]
fn bird_gobgp_ibgp() {
    selfcheck_gobgp("sc-bg-i", 64512, 64512);
}

/// The parsers on captured BIRD output.
#[test]
fn bird_parsers() {
    let routes = "BIRD 2.0.12 ready.\nTable master4:\n10.244.200.0/24      unicast [peer1 03:04:30.536] * (100) [AS65000?]\n\tvia 198.18.0.254 on va\n\tType: BGP univ\n\tBGP.origin: Incomplete\n\tBGP.as_path: 65000\n\tBGP.next_hop: 198.18.0.254\n\tBGP.local_pref: 100\n                     unicast [peer2 03:04:31.000] (100) [AS65001i]\n\tvia 198.18.0.253 on va\n\tBGP.as_path: 65001\n\nTable master6:\nfd00:10:244:200::/64 unicast [peer1 03:05:06.976 from 198.18.0.254] * (100) [AS65000?]\n\tvia fd00:198:18::254 on va\n\tBGP.next_hop: fd00:198:18::254 fe80::1\n";
    let r = common::bird::parse_routes(routes);
    assert_eq!(r.len(), 3, "{r:#?}");
    assert_eq!(r[0].prefix, "10.244.200.0/24");
    assert_eq!(r[0].via.as_deref(), Some("198.18.0.254"));
    assert_eq!(r[0].as_path(), "65000");
    assert_eq!(r[1].prefix, "10.244.200.0/24");
    assert_eq!(r[1].as_path(), "65001");
    assert_eq!(r[2].prefix, "fd00:10:244:200::/64");
    assert!(r[2].next_hop().starts_with("fd00:198:18::254"));

    let proto = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\npeer1      BGP        ---        start  03:03:57.900  Active        Received: Bad peer AS\n  BGP state:          Active\n    Neighbor address: 198.18.0.254\n    Last error:       Received: Bad peer AS\n  Channel ipv4\n    Routes:         1 imported, 1 exported, 1 preferred\n  Channel ipv6\n    Routes:         0 imported, 1 exported, 0 preferred\n";
    let p = common::bird::parse_protocol("peer1", proto);
    assert_eq!(p.proto_state, "start");
    assert_eq!(p.info, "Active Received: Bad peer AS");
    assert_eq!(p.bgp_state, "Active");
    assert_eq!(p.last_error.as_deref(), Some("Received: Bad peer AS"));
    assert_eq!(p.imported("ipv4"), Some(1));
    assert_eq!(p.imported("ipv6"), Some(0));
}
