//! Host-subnet (podCIDR) mode on the Kubernetes datastore: the test sets each Node's
//! `spec.podCIDR`/`spec.podCIDRs` as the controller-manager would, agents with
//! `ipam.mode: podCIDR` give pods addresses from them and route them across nodes.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, Pod, CONVERGE, POLL};
use common::wait_until;

fn v4(i: u8) -> String {
    format!("10.244.{}.0/24", 100 + i)
}

fn v6(i: u8) -> String {
    format!("fd00:10:244:{}::/64", 100 + i)
}

#[test]
fn pod_cidrs_of_the_node_objects_give_pods_addresses_routed_across_nodes() {
    // kube-apiserver 1.20 keeps only the first of a Node's podCIDRs unless dual-stack is on.
    let c = Cluster::kubernetes_with(
        "kpcidr",
        3,
        "ipam:\n  mode: podCIDR\n",
        &["--feature-gates=IPv6DualStack=true"],
    );
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    // No pod CIDR on the Node yet: ADD says "try again later".
    let early = common::Netns::new(&c._lock, "kpearly");
    let (ok, v) = c.cni(1, "ADD", "kpearly", Some(early.name()), None);
    assert!(!ok && v["code"] == 11, "no pod CIDR yet: code 11: {v}");

    for i in 1..=3u8 {
        c.patch_node_spec(
            &format!("node{i}"),
            serde_json::json!({ "podCIDR": v4(i), "podCIDRs": [v4(i), v6(i)] }),
        );
    }
    for i in 1..=3u8 {
        let node = c
            .control_plane()
            .call("GET", &format!("/api/v1/nodes/node{i}"), None)
            .expect_status(200, "read the Node")
            .json();
        assert_eq!(
            node["spec"]["podCIDRs"],
            serde_json::json!([v4(i), v6(i)]),
            "the API server kept both pod CIDRs: {node}"
        );
    }
    let pods: Vec<Pod> = (1..=3u8)
        .flat_map(|i| (0..2).map(move |k| (i, k)))
        .map(|(i, k)| c.add_pod_when_ready(i, &format!("kp{i}{k}")))
        .collect();
    for p in &pods {
        for (v6_, cidr) in [(false, v4(p.node)), (true, v6(p.node))] {
            let a: std::net::IpAddr = p.ip(v6_).expect("address").parse().expect("ip");
            let n: ipnet::IpNet = cidr.parse().expect("cidr");
            assert!(
                n.contains(&a),
                "{} on node{}: {a} outside {n}",
                p.id,
                p.node
            );
        }
    }
    // No pool: only the nodes' blocks, each inside its node's pod CIDRs (kubectl's view).
    let pools = c.kube_items("ippools.ferrovia.io");
    assert!(pools.is_empty(), "no IPPool in podCIDR mode: {pools:?}");
    let blocks = c.kube_items("ipamblocks.ferrovia.io");
    assert!(!blocks.is_empty(), "the nodes' blocks are listed");
    for b in &blocks {
        let node = b["spec"]["affinity"].as_str().expect("affinity");
        let i: u8 = node
            .trim_start_matches("node")
            .parse()
            .expect("node number");
        let cidr: ipnet::IpNet = b["spec"]["cidr"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("cidr");
        let own: [ipnet::IpNet; 2] = [v4(i).parse().expect("v4"), v6(i).parse().expect("v6")];
        assert!(
            own.iter().any(|o| o.contains(&cidr)),
            "{cidr} of {node} inside its pod CIDRs"
        );
    }
    // Routed across nodes, and pods on different nodes reach each other.
    for i in 1..=3u8 {
        for j in (1..=3u8).filter(|j| *j != i) {
            wait_until("pod CIDR routed", CONVERGE, POLL, || {
                let want = format!("{} via 198.18.0.{j} dev eth0", v4(j));
                if c.node(i).has_route(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "node{i} lacks `{want}`: {:?}",
                        c.node(i).kernel_routes()
                    ))
                }
            });
        }
    }
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            for fam in [false, true] {
                let to = b.ip(fam).expect("address");
                wait_until("pod to pod across nodes", CONVERGE, POLL, || a.ping(&to));
            }
        }
    }
}
