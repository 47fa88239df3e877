//! The reflector lab (tests/topologies/reflector.clab.yml) end to end: four ferrovia nodes
//! with the mesh off, clients of a BIRD route reflector; they learn each other's blocks
//! only through it, and route pod traffic node to node.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::net_lock;
use lab_common::{assert_plain_echo, capture, time_until, Lab, HOLD, PROPAGATE};
use std::collections::BTreeMap;

const NODES: [(&str, &str); 4] = [
    ("n1", "198.18.0.1"),
    ("n2", "198.18.0.2"),
    ("n3", "198.18.0.3"),
    ("n4", "198.18.0.4"),
];
const RR: &str = "198.18.0.200";

fn addr(node: &str) -> &'static str {
    NODES.iter().find(|(n, _)| *n == node).expect("node").1
}

/// Each node has each other node's blocks in its Loc-RIB *from the reflector* (the only
/// peer), next hop unchanged (the owner), and in its kernel via the owner.
fn reflected_everywhere(
    lab: &Lab,
    blocks: &BTreeMap<String, Vec<String>>,
    nodes: &[&str],
) -> Result<(), String> {
    for &n in nodes {
        let (ok, out) = lab.exec(n, &["ferrovia", "routes", "--json"]);
        if !ok {
            return Err(out);
        }
        let routes: serde_json::Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
        for &owner in nodes {
            if owner == n {
                continue;
            }
            for b in blocks.get(owner).into_iter().flatten() {
                let r = routes
                    .as_array()
                    .and_then(|a| a.iter().find(|r| r["prefix"] == b.as_str()))
                    .ok_or_else(|| format!("{n}'s Loc-RIB lacks {owner}'s {b}"))?;
                if r["peer"] != RR || r["nextHops"] != serde_json::json!([addr(owner)]) {
                    return Err(format!(
                        "{n}: {b} is {r}, want from {RR} via {}",
                        addr(owner)
                    ));
                }
                lab.routed_via(n, b, addr(owner))?;
            }
        }
    }
    Ok(())
}

#[test]
fn reflector_lab_clients_learn_each_others_blocks_through_bird_and_route_natively() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "reflector.clab.yml", "fvt-rr");

    // Mesh off: each node's only session is the reflector.
    for (n, _) in NODES {
        let s = lab.sessions(n);
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![(RR.to_string(), "Established".to_string())],
            "{n}'s sessions"
        );
    }
    // The reflector has a client per node.
    let rr = lab.sessions("rr");
    for i in 1..=4 {
        assert_eq!(
            rr.get(&format!("node{i}")).map(String::as_str),
            Some("Established"),
            "reflector: {rr:?}"
        );
    }

    let mut pods: BTreeMap<&str, String> = BTreeMap::new();
    for (n, _) in NODES {
        pods.insert(n, lab.pod_add(n, "p")[0].clone());
    }
    let blocks = lab.blocks();
    let all = ["n1", "n2", "n3", "n4"];
    time_until("every block reflected to every client", PROPAGATE, || {
        reflected_everywhere(&lab, &blocks, &all)
    });
    // The reflector itself holds every block.
    let (ok, rib) = lab.exec(
        "rr",
        &["birdc", "-s", "/run/bird/bird.ctl", "show", "route"],
    );
    assert!(ok, "{rib}");
    for b in blocks.values().flatten() {
        assert!(rib.contains(b.as_str()), "the reflector lacks {b}:\n{rib}");
    }

    for (a, _) in NODES {
        for (b, _) in NODES {
            if a != b {
                lab.ping(a, "p", &pods[b]);
            }
        }
    }
    // Node to node, not through the reflector, and plain: capture on n2's link.
    let cap = capture(&lab, "n2", "eth1", "not arp and not tcp port 179");
    lab.ping("n2", "p", &pods["n4"]);
    assert_plain_echo(cap, &pods["n2"], &pods["n4"]);

    // n4's agent is killed: the reflector drops its routes after the 5 s restart time it
    // advertised, and every client withdraws them (a deadline generous for slow machines).
    lab.stop("n4", true);
    let took = time_until("n4's blocks withdrawn", HOLD + PROPAGATE, || {
        for n in ["n1", "n2", "n3"] {
            for b in &blocks["n4"] {
                let r = lab.route(n, b);
                if !r.is_empty() {
                    return Err(format!("{n} still has {r}"));
                }
            }
        }
        Ok(())
    });
    eprintln!("n4's blocks withdrawn everywhere {took:.1?} after its agent was killed");

    lab.start("n4");
    let took = time_until("n4's blocks restored", PROPAGATE, || {
        reflected_everywhere(&lab, &blocks, &all)
    });
    eprintln!("n4's blocks back everywhere {took:.1?} after its agent started");
    // The restarted agent keeps its pod wired.
    lab.pod_routed("n4", &pods["n4"]);
    lab.ping("n1", "p", &pods["n4"]);
    lab.ping("n4", "p", &pods["n3"]);
}
