//! Service addresses over BGP, against a real kube-apiserver 1.20.2 (core Endpoints only: it
//! has no discovery.k8s.io/v1) and an FRR ToR peering with three agents on the Kubernetes
//! datastore. The test sets the Service ranges with `ferrovia cluster set`, creates Services
//! and Endpoints with kubectl (no controller manager runs: the test is the endpoints
//! controller) and reads FRR's RIB:
//!
//! - every node announces every configured range;
//! - a Cluster-policy Service's addresses are announced as /32 by every node;
//! - an `externalTrafficPolicy: Local` Service's external and load balancer IPs only by the
//!   node with a ready endpoint (not by the one whose endpoint is not ready), while its
//!   cluster IP (internal policy Cluster) comes from every node;
//! - when the endpoint moves, the /32 leaves the old node (the time is printed) and comes
//!   from the new one; with no endpoint left, no node announces it;
//! - a load balancer IP outside the configured ranges is never announced.
//!
//! The nodes keep the full mesh (the default) beside the ToR: Service host routes do not
//! travel over the mesh (a node would otherwise pass another node's Local /32 on to the ToR
//! with itself as next hop), so what the ToR holds is what each node announced itself.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, CONVERGE, POLL};
use common::{assert_for, wait_until, Frr, FrrConfig, FrrNeighbor, Netns};
use std::time::{Duration, Instant};

const NODES: [&str; 3] = ["198.18.0.1", "198.18.0.2", "198.18.0.3"];

/// The peers (node addresses) FRR holds `prefix` from.
fn via(frr: &Frr, prefix: &str) -> Result<Vec<String>, String> {
    let rib = frr.rib(prefix.contains(':'))?;
    let mut peers: Vec<String> = rib
        .get(prefix)
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| p["peerId"].as_str().map(str::to_string))
        .collect();
    peers.sort();
    Ok(peers)
}

/// Waits until FRR holds `prefix` from exactly `want` (sorted node addresses).
fn wait_via(frr: &Frr, prefix: &str, want: &[&str]) {
    wait_until(
        &format!("{prefix} via {want:?}"),
        CONVERGE,
        POLL,
        || match via(frr, prefix) {
            Ok(v) if v == want => Ok(()),
            Ok(v) => Err(format!("via {v:?}")),
            Err(e) => Err(e),
        },
    );
}

fn apply(c: &Cluster, name: &str, yaml: &str) {
    let path = c.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write manifest");
    c.control_plane()
        .kubectl(&["apply", "-f", &path.display().to_string()]);
}

fn lb_status(c: &Cluster, svc: &str, ip: &str) {
    let patch = format!(r#"{{"status":{{"loadBalancer":{{"ingress":[{{"ip":"{ip}"}}]}}}}}}"#);
    c.control_plane().kubectl(&[
        "patch",
        "service",
        svc,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ]);
}

/// The Endpoints of Service `local`: ready on `ready`, not ready on `not_ready`.
fn local_endpoints(c: &Cluster, ready: Option<u8>, not_ready: Option<u8>) {
    let addr = |i: u8| format!("{{ ip: 10.244.{i}.5, nodeName: node{i} }}");
    let mut subset = String::new();
    if let Some(i) = ready {
        subset.push_str(&format!("    addresses: [{}]\n", addr(i)));
    }
    if let Some(i) = not_ready {
        subset.push_str(&format!("    notReadyAddresses: [{}]\n", addr(i)));
    }
    apply(
        c,
        "local-endpoints",
        &format!(
            "apiVersion: v1\nkind: Endpoints\nmetadata: {{ name: local, namespace: default }}\n\
             subsets:\n  - ports: [{{ port: 80, protocol: TCP }}]\n{subset}"
        ),
    );
}

#[test]
fn service_addresses_are_announced_to_the_tor_by_policy_and_endpoints() {
    let c = Cluster::kubernetes("ksv", 3, "");
    for i in 1..=3 {
        wait_until("full mesh from the Node objects", CONVERGE, POLL, || {
            c.established(i, 2)
        });
    }
    // The ToR on the nodes' segment, eBGP with every node (a stored global peer).
    let tor = Netns::new(&c._lock, "ksv-tor");
    Netns::veth(&tor, "eth0", &c.br, "ptor");
    c.br.ip(&["link", "set", "ptor", "master", "br0"]);
    tor.addr("eth0", "198.18.0.254/24");
    let frr = Frr::start(
        &tor,
        FrrConfig {
            asn: 65000,
            router_id: "198.18.0.254".into(),
            neighbors: NODES
                .iter()
                .map(|a| FrrNeighbor {
                    addr: a.to_string(),
                    ..FrrNeighbor::ferrovia(64512)
                })
                .collect(),
            networks: Vec::new(),
        },
    );
    c.cli(&[
        "peer",
        "add",
        "tor",
        "--address",
        "198.18.0.254",
        "--as-number",
        "65000",
    ]);
    for a in NODES {
        wait_until("ToR session", CONVERGE, POLL, || {
            match frr.neighbor_state(a).as_str() {
                "Established" => Ok(()),
                s => Err(s.to_string()),
            }
        });
    }

    // The Service ranges, through the CLI; `cluster show` reports them. The mesh stays on.
    c.cli(&[
        "cluster",
        "set",
        "--service-cluster-ips",
        "10.96.0.0/12",
        "--service-external-ips",
        "198.51.100.0/24",
        "--service-load-balancer-ips",
        "203.0.113.0/24",
    ]);
    let shown = c.cli(&["cluster", "show", "--json"]);
    let shown: serde_json::Value = serde_json::from_str(&shown).expect("cluster show --json");
    assert_eq!(shown["mesh"], true, "{shown}");
    assert_eq!(
        shown["serviceLoadBalancerIPs"],
        serde_json::json!(["203.0.113.0/24"]),
        "{shown}"
    );
    for i in 1..=3 {
        wait_until(
            "the mesh and the ToR session (re-established with the Service ranges' rules)",
            CONVERGE,
            POLL,
            || c.established(i, 3),
        );
    }
    for range in ["10.96.0.0/12", "198.51.100.0/24", "203.0.113.0/24"] {
        wait_via(&frr, range, &NODES);
    }

    // Services: `web` (Cluster policy), `local` (externalTrafficPolicy Local, endpoint ready
    // on node1 and not ready on node2), `outside` (a load balancer IP outside the ranges).
    apply(
        &c,
        "services",
        "apiVersion: v1\nkind: Service\nmetadata: { name: web, namespace: default }\n\
         spec: { type: ClusterIP, clusterIP: 10.96.100.10, externalIPs: [198.51.100.10], ports: [{ port: 80 }] }\n\
         ---\n\
         apiVersion: v1\nkind: Service\nmetadata: { name: local, namespace: default }\n\
         spec: { type: LoadBalancer, clusterIP: 10.96.100.20, externalIPs: [198.51.100.20], externalTrafficPolicy: Local, ports: [{ port: 80 }] }\n\
         ---\n\
         apiVersion: v1\nkind: Service\nmetadata: { name: outside, namespace: default }\n\
         spec: { type: LoadBalancer, clusterIP: 10.96.100.30, ports: [{ port: 80 }] }\n",
    );
    lb_status(&c, "local", "203.0.113.20");
    lb_status(&c, "outside", "192.0.2.30");
    local_endpoints(&c, Some(1), Some(2));

    // Cluster policy: from every node.
    for p in [
        "10.96.100.10/32",
        "198.51.100.10/32",
        "10.96.100.20/32",
        "10.96.100.30/32",
    ] {
        wait_via(&frr, p, &NODES);
    }
    // Local: only from node1 (node2's endpoint is not ready, node3 has none).
    for p in ["198.51.100.20/32", "203.0.113.20/32"] {
        wait_via(&frr, p, &["198.18.0.1"]);
    }
    // Not passed on over the mesh: node2 and node3 never take node1's Local /32s (they would
    // hand them to the ToR with themselves as next hop), and the ToR keeps them from node1
    // alone.
    assert_for(
        "a Local Service's /32s stay on node1",
        Duration::from_secs(5),
        POLL,
        || -> Result<(), String> {
            for p in ["198.51.100.20/32", "203.0.113.20/32"] {
                let v = via(&frr, p)?;
                if v != ["198.18.0.1"] {
                    return Err(format!("the ToR has {p} via {v:?}"));
                }
                let host = format!("{} ", p.trim_end_matches("/32"));
                for i in 2..=3 {
                    if c.node(i).has_route(&host) {
                        return Err(format!("node{i} installed {p}"));
                    }
                }
            }
            Ok(())
        },
    );
    // Every node has seen the Services and `local`'s Endpoints by now (node1 announces from
    // them; the others announce `outside`'s cluster IP): the outside address is absent.
    let rib = frr.rib(false).expect("FRR RIB");
    assert!(
        !rib.contains_key("192.0.2.30/32"),
        "a load balancer IP outside the ranges was announced: {:?}",
        rib.keys().collect::<Vec<_>>()
    );
    // Each agent logged it (once).
    for i in 1..=3 {
        wait_until("the outside address is logged", CONVERGE, POLL, || {
            let log =
                std::fs::read_to_string(c.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
            let n = log
                .lines()
                .filter(|l| l.contains("outside the configured ranges") && l.contains("192.0.2.30"))
                .count();
            if n == 1 {
                Ok(())
            } else {
                Err(format!("node{i} logged it {n} times"))
            }
        });
    }

    // The endpoint moves from node1 to node3: the /32s leave node1 and come from node3.
    let moved = Instant::now();
    local_endpoints(&c, Some(3), Some(2));
    for p in ["198.51.100.20/32", "203.0.113.20/32"] {
        wait_via(&frr, p, &["198.18.0.3"]);
    }
    println!(
        "measured (loaded machine): a Local Service's /32s left node1 and came from node3 {:?} after the Endpoints change",
        moved.elapsed()
    );
    // The last ready endpoint goes: no node announces them; the cluster IP stays everywhere.
    local_endpoints(&c, None, Some(3));
    for p in ["198.51.100.20/32", "203.0.113.20/32"] {
        wait_via(&frr, p, &[]);
    }
    wait_via(&frr, "10.96.100.20/32", &NODES);

    // A Service deleted: its /32s are withdrawn everywhere; the ranges stay.
    c.control_plane()
        .kubectl(&["delete", "service", "web", "--wait=false"]);
    for p in ["10.96.100.10/32", "198.51.100.10/32"] {
        wait_via(&frr, p, &[]);
    }
    wait_via(&frr, "10.96.0.0/12", &NODES);
    let rib = frr.rib(false).expect("FRR RIB");
    assert!(!rib.contains_key("192.0.2.30/32"));

    // Bad ranges: the CRD schema refuses what is not a CIDR; a CIDR with host bits passes
    // the schema, and the agents refuse it, keeping what they announce.
    let cp = c.control_plane();
    let path = "/apis/ferrovia.io/v1alpha1/bgpconfigurations/default";
    let bare = serde_json::json!({"spec": {"serviceExternalIPs": ["198.51.100.1"]}});
    cp.call("PATCH", path, Some(&bare))
        .status_is(422)
        .expect("the schema refuses a bare address");
    let host_bits = serde_json::json!({"spec": {"serviceExternalIPs": ["198.51.100.1/24"]}});
    cp.call("PATCH", path, Some(&host_bits))
        .expect_status(200, "a CIDR with host bits passes the schema");
    for i in 1..=3 {
        wait_until("the agent refuses the host bits", CONVERGE, POLL, || {
            let log =
                std::fs::read_to_string(c.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
            if log.contains("keeping the previous ones") {
                Ok(())
            } else {
                Err(format!("node{i}: not yet"))
            }
        });
    }
    wait_via(&frr, "198.51.100.0/24", &NODES);
    wait_via(&frr, "198.51.100.20/32", &[]);
    let rib = frr.rib(false).expect("FRR RIB");
    assert!(
        !rib.contains_key("198.51.100.1/24"),
        "{:?}",
        rib.keys().collect::<Vec<_>>()
    );
}
