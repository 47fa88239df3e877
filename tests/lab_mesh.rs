//! The mesh lab (tests/topologies/mesh.clab.yml) end to end: three ferrovia nodes on one
//! segment in a full iBGP mesh, pods made through the CNI plugin, native routing.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::net_lock;
use lab_common::{assert_plain_echo, capture, time_until, Lab, HOLD, PROPAGATE};
use std::collections::BTreeMap;

const NODES: [(&str, &str); 3] = [
    ("n1", "198.18.0.1"),
    ("n2", "198.18.0.2"),
    ("n3", "198.18.0.3"),
];

fn addr(node: &str) -> &'static str {
    NODES.iter().find(|(n, _)| *n == node).expect("node").1
}

/// Every node routes every other node's blocks to that node, and blackholes its own.
fn blocks_everywhere(
    lab: &Lab,
    blocks: &BTreeMap<String, Vec<String>>,
    nodes: &[&str],
) -> Result<(), String> {
    for &n in nodes {
        for &owner in nodes {
            for b in blocks.get(owner).into_iter().flatten() {
                if n == owner {
                    let r = lab.route(n, b);
                    if !r.starts_with("blackhole") {
                        return Err(format!("{n}: own block {b} is {r:?}"));
                    }
                } else {
                    lab.routed_via(n, b, addr(owner))?;
                }
            }
        }
    }
    Ok(())
}

#[test]
fn mesh_lab_routes_pods_natively_and_follows_a_node_down_and_back() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "mesh.clab.yml", "fvt-mesh");

    // Full mesh: each node has a session with each other node, Established.
    for (n, _) in NODES {
        let s = lab.sessions(n);
        let want: Vec<&str> = NODES
            .iter()
            .filter(|(m, _)| *m != n)
            .map(|(_, a)| *a)
            .collect();
        let got: Vec<&str> = s.keys().map(String::as_str).collect();
        assert_eq!(got, want, "{n}'s sessions: {s:?}");
        assert!(s.values().all(|v| v == "Established"), "{n}: {s:?}");
    }

    // A pod on each node, through the CNI plugin.
    let mut pods: BTreeMap<&str, String> = BTreeMap::new();
    for (n, _) in NODES {
        let a = lab.pod_add(n, "p");
        assert!(a[0].starts_with("10.244."), "{n}'s pod: {a:?}");
        pods.insert(n, a[0].clone());
    }
    let blocks = lab.blocks();
    for (n, _) in NODES {
        assert!(
            !blocks.get(n).is_none_or(Vec::is_empty),
            "{n} has no block: {blocks:?}"
        );
    }
    let all: Vec<&str> = NODES.iter().map(|(n, _)| *n).collect();
    time_until("every block in every kernel", PROPAGATE, || {
        blocks_everywhere(&lab, &blocks, &all)
    });

    // Pods reach each other by their own addresses, every pair.
    for (a, _) in NODES {
        for (b, _) in NODES {
            if a != b {
                lab.ping(a, "p", &pods[b]);
            }
        }
    }
    // On the wire between nodes: the pods' addresses, no encapsulation.
    let cap = capture(&lab, "n1", "eth1", "not arp and not tcp port 179");
    lab.ping("n1", "p", &pods["n2"]);
    assert_plain_echo(cap, &pods["n1"], &pods["n2"]);

    // n3's agent stops (SIGTERM, a graceful restart that does not come back): its blocks
    // leave every other kernel once its 5 s restart time is over (the deadline is generous
    // for slow machines).
    lab.stop("n3", false);
    let took = time_until("n3's blocks withdrawn", HOLD + PROPAGATE, || {
        for n in ["n1", "n2"] {
            for b in &blocks["n3"] {
                let r = lab.route(n, b);
                if !r.is_empty() {
                    return Err(format!("{n} still has {r}"));
                }
            }
        }
        Ok(())
    });
    eprintln!("n3's blocks withdrawn everywhere {took:.1?} after its agent stopped");
    assert!(
        !lab.try_ping("n1", "p", &pods["n3"]).0,
        "n3's pod still reachable"
    );

    // Back: the blocks return (the node keeps its blocks) and the pods talk again.
    lab.start("n3");
    let took = time_until("n3's blocks restored", PROPAGATE, || {
        blocks_everywhere(&lab, &blocks, &all)
    });
    eprintln!("n3's blocks back everywhere {took:.1?} after its agent started");
    // The restarted agent keeps its pod wired.
    lab.pod_routed("n3", &pods["n3"]);
    lab.ping("n1", "p", &pods["n3"]);
    lab.ping("n3", "p", &pods["n2"]);
}
