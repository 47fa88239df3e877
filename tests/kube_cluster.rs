//! Agents on the Kubernetes datastore, end to end, against a real kube-apiserver 1.20.2 on the
//! nodes' segment: three agents in node namespaces, one Node object each (made by the test, as
//! the kubelet would), form the full mesh from the Nodes; pods wired through the CNI plugin on
//! each ping each other across nodes; blocks, handles, node annotations and leases are visible
//! to kubectl and the API; the CLI works with --kubeconfig.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, Pod, CONVERGE, POLL};
use common::wait_until;
use serde_json::Value;

const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";

fn ping(from: &Pod, to: &str) -> Result<(), String> {
    let fam = if to.contains(':') { "-6" } else { "-4" };
    let out = from.ns.exec(&["ping", fam, "-c", "1", "-W", "1", to]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} -> {to}: {}",
            from.id,
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

fn allocations(c: &Cluster) -> Vec<Value> {
    let out = c.cli(&["ipam", "show", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("ipam show --json");
    v["allocations"].as_array().cloned().unwrap_or_default()
}

#[test]
fn three_agents_mesh_from_node_objects_and_pods_ping_across_nodes() {
    let c = Cluster::kubernetes("kc3", 3, IPAM);
    let cp = c.control_plane();
    for i in 1..=3 {
        wait_until("full mesh from the Node objects", CONVERGE, POLL, || {
            c.established(i, 2)
        });
    }

    // Each agent put its facts on its own Node and keeps a Lease.
    for i in 1..=3 {
        let node = cp
            .call("GET", &format!("/api/v1/nodes/node{i}"), None)
            .expect_status(200, "read the Node")
            .json();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(
            ann["ferrovia.io/routerId"],
            format!("198.18.0.{i}"),
            "{node}"
        );
        assert!(
            ann["ferrovia.io/addresses"]
                .as_str()
                .is_some_and(|a| a.contains(&format!("198.18.0.{i}"))),
            "{node}"
        );
        assert_eq!(
            node["metadata"]["labels"]["kubernetes.io/hostname"],
            format!("node{i}"),
            "the Node's own labels are kept: {node}"
        );
        let lease = cp
            .call(
                "GET",
                &format!(
                    "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/ferrovia-node{i}"
                ),
                None,
            )
            .expect_status(200, "read the node's Lease")
            .json();
        assert_eq!(
            lease["spec"]["holderIdentity"],
            format!("node{i}"),
            "{lease}"
        );
        assert!(lease["spec"]["renewTime"].is_string(), "{lease}");
    }

    // Pods through the CNI plugin, two per node, reach each other across nodes.
    let pods: Vec<Pod> = (1..=3)
        .flat_map(|n| (0..2).map(move |k| (n, k)))
        .map(|(n, k)| c.add_pod(n, &format!("k{n}{k}")))
        .collect();
    for a in &pods {
        for b in &pods {
            if a.id == b.id {
                continue;
            }
            for v6 in [false, true] {
                let to = b.ip(v6).expect("address");
                wait_until("pod to pod", CONVERGE, POLL, || ping(a, &to));
            }
        }
    }

    // kubectl shows the blocks with their nodes; every pod's address is in a block of its node.
    let blocks = cp.kubectl(&["get", "ipamblocks.ferrovia.io"]);
    assert!(
        blocks.contains("CIDR") && blocks.contains("NODE"),
        "printer columns: {blocks}"
    );
    for i in 1..=3 {
        assert!(
            blocks.contains(&format!("node{i}")),
            "node{i}'s blocks: {blocks}"
        );
    }
    let listed: Value =
        serde_json::from_str(&cp.kubectl(&["get", "ipamblocks.ferrovia.io", "-o", "json"]))
            .expect("kubectl JSON");
    for p in &pods {
        for v6 in [false, true] {
            let ip: std::net::IpAddr = p.ip(v6).expect("address").parse().expect("ip");
            let owner = listed["items"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|b| {
                    b["spec"]["cidr"]
                        .as_str()
                        .and_then(|c| c.parse::<ipnet::IpNet>().ok())
                        .is_some_and(|n| n.contains(&ip))
                })
                .unwrap_or_else(|| panic!("no block holds {ip}: {listed}"));
            assert_eq!(
                owner["spec"]["affinity"],
                format!("node{}", p.node),
                "{ip} of {}",
                p.id
            );
        }
    }
    let handles = cp.kubectl(&["get", "ipamhandles.ferrovia.io"]);
    for p in &pods {
        assert!(handles.contains(&p.id), "handle of {}: {handles}", p.id);
    }

    // The CLI on the same datastore with --kubeconfig.
    let nodes: Value =
        serde_json::from_str(&c.cli(&["node", "list", "--json"])).expect("node list --json");
    let names: Vec<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(names, ["node1", "node2", "node3"], "{nodes}");
    assert_eq!(allocations(&c).len(), 12, "6 pods, dual-stack");

    for p in &pods {
        let (ok, v) = c.cni(p.node, "DEL", &p.id, Some(p.ns.name()), None);
        assert!(ok, "DEL {}: {v}", p.id);
    }
    assert!(allocations(&c).is_empty(), "every address released");
    let handles = cp.kubectl(&["get", "ipamhandles.ferrovia.io", "-o", "name"]);
    assert!(handles.trim().is_empty(), "no handle left: {handles}");
}
