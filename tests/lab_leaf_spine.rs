//! The leaf-spine lab (tests/topologies/leaf-spine.clab.yml) end to end: two racks of two
//! ferrovia nodes, eBGP to an FRR top-of-rack router per rack, an FRR spine; pods in
//! different racks talk natively through ToR, spine, ToR.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::net_lock;
use lab_common::{assert_plain_echo, capture, time_until, Lab, HOLD, PROPAGATE};
use std::collections::BTreeMap;

/// Node, its address, its ToR, the ToR's address on the node's link.
const NODES: [(&str, &str, &str, &str); 4] = [
    ("n1", "198.18.11.1", "tor1", "198.18.11.254"),
    ("n2", "198.18.12.1", "tor1", "198.18.12.254"),
    ("n3", "198.18.21.1", "tor2", "198.18.21.254"),
    ("n4", "198.18.22.1", "tor2", "198.18.22.254"),
];
/// Each ToR's address on its spine link, as the spine sees it.
const UPLINKS: [(&str, &str); 2] = [("tor1", "198.18.101.1"), ("tor2", "198.18.102.1")];

fn node(n: &str) -> (&'static str, &'static str, &'static str, &'static str) {
    *NODES.iter().find(|x| x.0 == n).expect("node")
}

/// Where `at` must route a block that lives on node `owner`.
fn next_hop(at: &str, owner: &str) -> &'static str {
    let (_, owner_addr, owner_tor, _) = node(owner);
    match at {
        "spine" => UPLINKS.iter().find(|u| u.0 == owner_tor).expect("tor").1,
        "tor1" | "tor2" if at == owner_tor => owner_addr,
        "tor1" | "tor2" => {
            if at == "tor1" {
                "198.18.101.254"
            } else {
                "198.18.102.254"
            }
        }
        // a node: always its ToR
        n => node(n).3,
    }
}

/// Every router and node has every block of every other node, with the right next hop.
fn blocks_everywhere(
    lab: &Lab,
    blocks: &BTreeMap<String, Vec<String>>,
    owners: &[&str],
) -> Result<(), String> {
    let places = ["spine", "tor1", "tor2", "n1", "n2", "n3", "n4"];
    for at in places {
        for &owner in owners {
            for b in blocks.get(owner).into_iter().flatten() {
                if at == owner {
                    continue;
                }
                lab.routed_via(at, b, next_hop(at, owner))?;
            }
        }
    }
    Ok(())
}

#[test]
fn leaf_spine_lab_routes_pods_across_racks_natively_and_follows_a_node_down_and_back() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "leaf-spine.clab.yml", "fvt-ls");

    // Each node has exactly one session, eBGP to its ToR: no node-to-node mesh.
    for (n, _, _, tor) in NODES {
        let s = lab.sessions(n);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![(tor.to_string(), "Established".to_string())],
            "{n}'s sessions"
        );
    }
    // ToRs: two nodes and the spine; the spine: both ToRs.
    for (tor, peers) in [
        ("tor1", vec!["198.18.101.254", "198.18.11.1", "198.18.12.1"]),
        ("tor2", vec!["198.18.102.254", "198.18.21.1", "198.18.22.1"]),
        ("spine", vec!["198.18.101.1", "198.18.102.1"]),
    ] {
        let s = lab.sessions(tor);
        assert_eq!(
            s.keys().map(String::as_str).collect::<Vec<_>>(),
            peers,
            "{tor}"
        );
        assert!(s.values().all(|v| v == "Established"), "{tor}: {s:?}");
    }

    let mut pods: BTreeMap<&str, String> = BTreeMap::new();
    for (n, ..) in NODES {
        pods.insert(n, lab.pod_add(n, "p")[0].clone());
    }
    let blocks = lab.blocks();
    let all = ["n1", "n2", "n3", "n4"];
    for n in all {
        assert!(blocks.contains_key(n), "{n} has no block: {blocks:?}");
    }
    time_until(
        "every block in every kernel: nodes, ToRs, spine",
        PROPAGATE,
        || blocks_everywhere(&lab, &blocks, &all),
    );
    // The rack's AS is overridden by the ToR: n2 learns n1's block over 65001 only.
    let (ok, routes) = lab.exec("n2", &["ferrovia", "routes", "--json"]);
    assert!(ok, "{routes}");
    let routes: serde_json::Value = serde_json::from_str(&routes).expect("routes JSON");
    let r = routes
        .as_array()
        .and_then(|a| a.iter().find(|r| r["prefix"] == blocks["n1"][0].as_str()))
        .unwrap_or_else(|| panic!("n2 lacks n1's block: {routes}"));
    assert_eq!(r["asPath"], serde_json::json!([65001, 65001]), "{r}");

    // Pods: across racks both ways, and within a rack.
    lab.ping("n1", "p", &pods["n3"]);
    lab.ping("n4", "p", &pods["n2"]);
    lab.ping("n1", "p", &pods["n2"]);
    lab.ping("n3", "p", &pods["n4"]);

    // On tor1's uplink to the spine: pod addresses, no encapsulation.
    let cap = capture(&lab, "tor1", "eth3", "not arp and not tcp port 179");
    lab.ping("n1", "p", &pods["n4"]);
    assert_plain_echo(cap, &pods["n1"], &pods["n4"]);

    // n3's agent is killed (no NOTIFICATION): tor2 keeps its routes only for the restart
    // time it advertised (5 s, graceful restart), not FRR's 360 s stale-path time; then they
    // go everywhere. The deadline is generous for slow machines and far below 360 s.
    lab.stop("n3", true);
    let took = time_until("n3's blocks withdrawn everywhere", HOLD + PROPAGATE, || {
        for at in ["spine", "tor1", "tor2", "n1", "n2", "n4"] {
            for b in &blocks["n3"] {
                let r = lab.route(at, b);
                if !r.is_empty() && !r.starts_with("blackhole") {
                    return Err(format!("{at} still has {r}"));
                }
            }
        }
        Ok(())
    });
    eprintln!("n3's blocks withdrawn everywhere {took:.1?} after its agent was killed");
    assert!(
        !lab.try_ping("n1", "p", &pods["n3"]).0,
        "n3's pod still reachable"
    );

    lab.start("n3");
    let took = time_until("n3's blocks restored everywhere", PROPAGATE, || {
        blocks_everywhere(&lab, &blocks, &all)
    });
    eprintln!("n3's blocks back everywhere {took:.1?} after its agent started");
    // The restarted agent keeps its pod wired.
    lab.pod_routed("n3", &pods["n3"]);
    lab.ping("n1", "p", &pods["n3"]);
    lab.ping("n3", "p", &pods["n2"]);
}
