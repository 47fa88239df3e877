//! The dual-stack lab (tests/topologies/dual-stack.clab.yml) end to end: the mesh with an
//! IPv4 and an IPv6 pool; pods get one address of each and reach each other over both.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::net_lock;
use lab_common::{assert_plain_echo, capture, time_until, Lab, HOLD, PROPAGATE};
use std::collections::BTreeMap;

/// Node, IPv4 and IPv6 address.
const NODES: [(&str, &str, &str); 3] = [
    ("n1", "198.18.0.1", "fd00:198:18::1"),
    ("n2", "198.18.0.2", "fd00:198:18::2"),
    ("n3", "198.18.0.3", "fd00:198:18::3"),
];

/// The next hop other nodes use for a block of `owner` (same family as the block).
fn via(owner: &str, block: &str) -> &'static str {
    let n = NODES.iter().find(|x| x.0 == owner).expect("node");
    if block.contains(':') {
        n.2
    } else {
        n.1
    }
}

fn blocks_everywhere(
    lab: &Lab,
    blocks: &BTreeMap<String, Vec<String>>,
    nodes: &[&str],
) -> Result<(), String> {
    for &n in nodes {
        for &owner in nodes {
            if n == owner {
                continue;
            }
            for b in blocks.get(owner).into_iter().flatten() {
                lab.routed_via(n, b, via(owner, b))?;
            }
        }
    }
    Ok(())
}

#[test]
fn dual_stack_lab_routes_ipv4_and_ipv6_pods_and_follows_a_node_down_and_back() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "dual-stack.clab.yml", "fvt-ds");
    lab.wait_established(PROPAGATE);

    // Each pod has an IPv4 and an IPv6 address.
    let mut pods: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (n, ..) in NODES {
        let a = lab.pod_add(n, "p");
        assert_eq!(a.len(), 2, "{n}'s pod: {a:?}");
        assert!(a[0].starts_with("10.244."), "{a:?}");
        assert!(a[1].starts_with("fd00:10:244:"), "{a:?}");
        pods.insert(n, a);
    }
    let blocks = lab.blocks();
    for (n, ..) in NODES {
        let b = &blocks[n];
        assert!(
            b.iter().any(|x| x.contains(':')) && b.iter().any(|x| !x.contains(':')),
            "{n} should have a block of each family: {b:?}"
        );
    }
    let all = ["n1", "n2", "n3"];
    time_until("IPv4 and IPv6 blocks in every kernel", PROPAGATE, || {
        blocks_everywhere(&lab, &blocks, &all)
    });

    for (a, ..) in NODES {
        for (b, ..) in NODES {
            if a != b {
                for dst in &pods[b] {
                    lab.ping(a, "p", dst);
                }
            }
        }
    }
    // IPv6 on the wire: plain, pod to pod.
    let cap = capture(&lab, "n3", "eth1", "not arp and not tcp port 179");
    lab.ping("n1", "p", &pods["n3"][1]);
    assert_plain_echo(cap, &pods["n1"][1], &pods["n3"][1]);
    let cap = capture(&lab, "n3", "eth1", "not arp and not tcp port 179");
    lab.ping("n2", "p", &pods["n3"][0]);
    assert_plain_echo(cap, &pods["n2"][0], &pods["n3"][0]);

    // n2 stops (SIGTERM, a graceful restart that does not come back): both families'
    // blocks leave n1 and n3 once its 5 s restart time is over (the deadline is generous
    // for slow machines).
    lab.stop("n2", false);
    let took = time_until("n2's blocks withdrawn", HOLD + PROPAGATE, || {
        for n in ["n1", "n3"] {
            for b in &blocks["n2"] {
                let r = lab.route(n, b);
                if !r.is_empty() {
                    return Err(format!("{n} still has {r}"));
                }
            }
        }
        Ok(())
    });
    eprintln!("n2's blocks withdrawn everywhere {took:.1?} after its agent stopped");

    lab.start("n2");
    time_until("n2's blocks restored", PROPAGATE, || {
        blocks_everywhere(&lab, &blocks, &all)
    });
    // The restarted agent keeps its pod wired.
    for dst in &pods["n2"] {
        lab.pod_routed("n2", dst);
    }
    for dst in &pods["n2"] {
        lab.ping("n1", "p", dst);
    }
}
