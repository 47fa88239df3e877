//! A Node deleted from a cluster on the Kubernetes datastore (`kubectl delete node`), with
//! three agents meshed on a real kube-apiserver: the other agents drop their session to it,
//! its block routes leave their kernels, and its IPAM objects (addresses, handles, blocks
//! and their affinities) are released — while the other nodes' pods keep working.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, Pod, CONVERGE, POLL};
use common::kube_checks::KUBE_IPAM;
use common::wait_until;
use std::time::{Duration, Instant};

/// A generous bound for "within seconds": a 2× slower machine passes it easily.
const NODE_GONE: Duration = Duration::from_secs(60);

/// Kernel routes of node `i` that go through node3 (either family).
fn routes_via_node3(c: &Cluster, i: u8, blocks: &[String]) -> Vec<String> {
    c.node(i)
        .kernel_routes()
        .into_iter()
        .filter(|r| {
            r.contains(" via 198.18.0.3 ")
                || r.contains(" via fd00:198:18::3 ")
                || blocks.iter().any(|b| r.starts_with(&format!("{b} ")))
        })
        .collect()
}

#[test]
fn a_deleted_node_leaves_every_kernel_and_its_ipam_objects_are_released() {
    let c = Cluster::kubernetes("kdel", 3, KUBE_IPAM);
    for i in 1..=3 {
        wait_until("full mesh from the Node objects", CONVERGE, POLL, || {
            c.established(i, 2)
        });
    }
    let pods: Vec<Pod> = (1..=3u8)
        .map(|n| c.add_pod(n, &format!("del{n}")))
        .collect();
    let blocks3 = c.kube_blocks_of("node3");
    assert_eq!(
        blocks3.len(),
        2,
        "node3 claimed one block per family: {blocks3:?}"
    );
    // node3's blocks are routed on the other nodes, and its pod is reachable.
    for i in 1..=2u8 {
        for b in &blocks3 {
            wait_until("node3's block routed", CONVERGE, POLL, || {
                let want = format!("{b} via ");
                if c.node(i).has_route(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "node{i} lacks {b}: {:?}",
                        c.node(i).kernel_routes()
                    ))
                }
            });
        }
    }
    for v6 in [false, true] {
        let to = pods[2].ip(v6).expect("node3's pod address");
        wait_until(
            "pod on node1 reaches the pod on node3",
            CONVERGE,
            POLL,
            || pods[0].ping(&to),
        );
    }
    let handles = c.kube_items("ipamhandles.ferrovia.io");
    assert!(
        handles.iter().any(|h| h["spec"]["node"] == "node3"),
        "node3's pod has a handle: {handles:?}"
    );

    // The Node goes, as `kubectl delete node` does it; node3's agent is left running (the
    // other agents follow the Node objects, not the agent's liveness).
    let t = Instant::now();
    let out = c.control_plane().kubectl(&["delete", "node", "node3"]);
    assert!(out.contains("deleted"), "kubectl delete node: {out}");

    wait_until(
        "node3's routes leave node1 and node2",
        NODE_GONE,
        POLL,
        || {
            for i in 1..=2u8 {
                let left = routes_via_node3(&c, i, &blocks3);
                if !left.is_empty() {
                    return Err(format!("node{i} still has {left:?}"));
                }
            }
            Ok(())
        },
    );
    let routes_gone = t.elapsed();
    wait_until(
        "node1 and node2 drop their session to node3",
        NODE_GONE,
        POLL,
        || {
            for i in 1..=2u8 {
                let peers = c.peer_addresses(i)?;
                if peers
                    .iter()
                    .any(|p| p == "198.18.0.3" || p == "fd00:198:18::3")
                {
                    return Err(format!("node{i} still has node3 as a peer: {peers:?}"));
                }
                c.established(i, 1)?;
            }
            Ok::<(), String>(())
        },
    );
    let sessions_gone = t.elapsed();
    wait_until("node3's IPAM objects released", NODE_GONE, POLL, || {
        let blocks = c.kube_blocks_of("node3");
        let handles: Vec<String> = c
            .kube_items("ipamhandles.ferrovia.io")
            .iter()
            .filter(|h| h["spec"]["node"] == "node3")
            .map(|h| h["metadata"]["name"].to_string())
            .collect();
        let affinities: Vec<String> = c
            .kube_items("blockaffinities.ferrovia.io")
            .iter()
            .filter(|a| a["spec"]["node"] == "node3")
            .map(|a| a["metadata"]["name"].to_string())
            .collect();
        if blocks.is_empty() && handles.is_empty() && affinities.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "left: blocks {blocks:?}, handles {handles:?}, affinities {affinities:?}"
            ))
        }
    });
    let ipam_gone = t.elapsed();
    eprintln!(
        "Node deleted: its routes left the other kernels after {routes_gone:?}, the sessions after \
         {sessions_gone:?}, its IPAM objects after {ipam_gone:?}"
    );
    // Its addresses are free again: no block holds them.
    for v6 in [false, true] {
        let ip: std::net::IpAddr = pods[2].ip(v6).expect("address").parse().expect("ip");
        let holders: Vec<String> = c
            .kube_items("ipamblocks.ferrovia.io")
            .iter()
            .filter_map(|b| b["spec"]["cidr"].as_str().map(str::to_string))
            .filter(|b| b.parse::<ipnet::IpNet>().is_ok_and(|n| n.contains(&ip)))
            .collect();
        assert!(holders.is_empty(), "{ip} is still in block {holders:?}");
    }

    // The other nodes are untouched: their blocks, handles and pods keep working.
    for n in ["node1", "node2"] {
        assert_eq!(c.kube_blocks_of(n).len(), 2, "{n} keeps its blocks");
    }
    let handles = c.kube_items("ipamhandles.ferrovia.io");
    for p in &pods[..2] {
        assert!(
            handles
                .iter()
                .any(|h| h["spec"]["containerId"] == p.id.as_str()),
            "{}'s handle is kept: {handles:?}",
            p.id
        );
    }
    for v6 in [false, true] {
        let to = pods[1].ip(v6).expect("address");
        wait_until("node1's pod still reaches node2's", CONVERGE, POLL, || {
            pods[0].ping(&to)
        });
    }
    // Nothing brought the Node back.
    let r = c.control_plane().call("GET", "/api/v1/nodes/node3", None);
    assert_eq!(r.status, 404, "node3 stays deleted: {}", r.body);
}
