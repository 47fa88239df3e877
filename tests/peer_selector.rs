//! Per-node BGP peers chosen by a node selector (issue 10): a BGPPeer (Kubernetes) or a
//! stored peer (SQLite, the CLI) with `nodeSelector` is taken by exactly the nodes whose
//! labels match, and a label change moves it at once. The peer is a real BIRD on the nodes'
//! segment: it sees sessions from the matching nodes only and their routes; its own route
//! is in exactly the matching nodes' kernels, and leaves a node that stops matching.
//! Also on the API server: `kubernetes-internal-ip` address autodetection reads the Node's
//! status.addresses, and `node set --pod-cidr` / `--label` are refused on Kubernetes.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, CONVERGE, POLL};
use common::kube::join_segment;
use common::{wait_until, Bird, BirdConfig, BirdPeer, Netns};
use serde_json::{json, Value};

const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n";
/// BIRD, the rack router, on the nodes' segment.
const ROUTER: &str = "198.18.0.200";
const ROUTER_AS: u32 = 65000;
/// The route BIRD originates.
const ROUTER_NET: &str = "203.0.113.0/24";

/// BIRD with one passive session per node (it never connects: only the nodes that take the
/// peer open a session).
fn router(c: &Cluster, n: u8) -> (Netns, Bird) {
    let ns = join_segment(&c._lock, &c.br, "rtr", "rtr0", &format!("{ROUTER}/24"));
    let peers = (1..=n)
        .map(|i| BirdPeer {
            name: format!("node{i}"),
            local_addr: Some(ROUTER.into()),
            local_as: ROUTER_AS,
            neighbor_addr: format!("198.18.0.{i}"),
            neighbor_as: 64512,
            password: None,
            hold_time: Some(9),
            v6_next_hop: None,
            passive: true,
            extra: String::new(),
        })
        .collect();
    let bird = Bird::start(
        &ns,
        BirdConfig {
            router_id: ROUTER.into(),
            originate: vec![ROUTER_NET.into()],
            peers,
            extra: String::new(),
        },
    );
    (ns, bird)
}

/// Exactly the nodes in `want` (of 1..=n) peer with the router: BIRD has their sessions
/// Established and their originated prefixes, the others' sessions down and no route of
/// theirs; each wanted node's kernel has the router's route (and, when none is wanted, no
/// node's kernel has it); each node's status lists the router (type "node") iff it is
/// wanted.
fn selected(c: &Cluster, bird: &Bird, n: u8, want: &[u8]) -> Result<(), String> {
    for i in 1..=n {
        let w = want.contains(&i);
        let p = bird.protocol(&format!("node{i}"));
        if p.established() != w {
            return Err(format!(
                "BIRD's session with node{i}: {} (want {})",
                p.bgp_state,
                if w { "Established" } else { "down" }
            ));
        }
        let routes = bird.routes_from(&format!("node{i}"));
        let block = format!("10.244.{i}.0/26");
        if routes.contains_key(&block) != w {
            return Err(format!("BIRD's routes from node{i}: {:?}", routes.keys()));
        }
        // The route: in every selected node's kernel; the others learn it from those over
        // the mesh (iBGP keeps the router as next hop), so it leaves them only when no
        // node is selected.
        let node = c.node(i);
        let route = format!("{ROUTER_NET} via {ROUTER}");
        let routed = w || !want.is_empty();
        if (w || want.is_empty()) && node.has_route(&route) != routed {
            return Err(format!(
                "node{i}'s kernel {} `{route}`: {:?}",
                if w { "lacks" } else { "still has" },
                node.kernel_routes()
            ));
        }
        let s = node.status()?;
        let listed = s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["address"] == ROUTER);
        match (listed, w) {
            (Some(p), true) if p["type"] == "node" => {}
            (None, false) => {}
            (p, _) => return Err(format!("node{i}'s status lists the router as {p:?}")),
        }
    }
    Ok(())
}

fn label(c: &Cluster, node: &str, change: &str) {
    c.control_plane()
        .kubectl(&["label", "--overwrite", "node", node, change]);
}

#[test]
fn a_bgppeer_with_a_node_selector_follows_the_node_labels() {
    let c = Cluster::kubernetes("psk", 3, IPAM);
    let (_rns, bird) = router(&c, 3);
    for i in 1..=3 {
        wait_until("full mesh from the Node objects", CONVERGE, POLL, || {
            c.established(i, 2)
        });
    }
    label(&c, "node2", "rack=r1");
    let cp = c.control_plane();
    cp.call(
        "POST",
        "/apis/ferrovia.io/v1alpha1/bgppeers",
        Some(&json!({
            "apiVersion": "ferrovia.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "rack-r1"},
            "spec": {"name": "rack-r1", "address": ROUTER, "asNumber": ROUTER_AS,
                     "nodeSelector": "rack=r1"}
        })),
    )
    .expect_status(201, "create the BGPPeer");
    wait_until(
        "only node2 peers with the rack router",
        CONVERGE,
        POLL,
        || selected(&c, &bird, 3, &[2]),
    );

    // node3 gains the label: it peers; node2 loses it: session and routes go.
    label(&c, "node3", "rack=r1");
    wait_until("node2 and node3 peer", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[2, 3])
    });
    label(&c, "node2", "rack-");
    wait_until("only node3 peers", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[3])
    });
    // No node matches: the router's route leaves every kernel.
    label(&c, "node3", "rack=r2");
    wait_until("no node peers", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[])
    });
    // The mesh never moved.
    for i in 1..=3 {
        wait_until("the mesh stays", CONVERGE, POLL, || {
            let s = c.node(i).status()?;
            let mesh = s["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["type"] == "mesh" && p["state"] == "Established")
                .count();
            if mesh == 2 {
                Ok(())
            } else {
                Err(format!("node{i}: {}", s["peers"]))
            }
        });
    }

    // The CLI shows the selector; the API server refuses node and nodeSelector together and
    // a selector that does not parse.
    let peers: Value =
        serde_json::from_str(&c.cli(&["peer", "list", "--json"])).expect("peer list --json");
    assert_eq!(peers[0]["nodeSelector"], "rack=r1", "{peers}");
    for (spec, what) in [
        (
            json!({"name": "both", "address": "198.18.0.201", "asNumber": 65001,
                   "node": "node1", "nodeSelector": "rack=r1"}),
            "node and nodeSelector",
        ),
        (
            json!({"name": "both", "address": "198.18.0.201", "asNumber": 65001,
                   "nodeSelector": "rack in (r1)"}),
            "a set-based selector",
        ),
    ] {
        let r = cp.call(
            "POST",
            "/apis/ferrovia.io/v1alpha1/bgppeers",
            Some(
                &json!({"apiVersion": "ferrovia.io/v1alpha1", "kind": "BGPPeer",
                         "metadata": {"name": "both"}, "spec": spec}),
            ),
        );
        assert_eq!(r.status, 422, "{what}: {}", r.body);
    }
}

#[test]
fn kubernetes_internal_ip_and_what_the_cli_refuses_on_kubernetes() {
    let mut c = Cluster::kubernetes("pski", 1, IPAM);
    wait_until("node1 registered", CONVERGE, POLL, || c.node(1).status());
    let cp = c.control_plane();

    // --pod-cidr and --label are the Node's own on Kubernetes: refused, nothing changed.
    for (args, needle) in [
        (
            vec!["node", "set", "node1", "--pod-cidr", "10.244.9.0/24"],
            "controller-manager",
        ),
        (
            vec!["node", "set", "node1", "--label", "rack=r1"],
            "kubectl label node node1",
        ),
    ] {
        let out = c.try_cli(&args);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let node = cp
        .call("GET", "/api/v1/nodes/node1", None)
        .expect_status(200, "read the Node")
        .json();
    assert!(node["spec"].get("podCIDRs").is_none(), "{node}");
    assert!(node["metadata"]["labels"].get("rack").is_none(), "{node}");

    // The kubelet's InternalIP (set here through the status subresource, as the kubelet
    // does) is the agent's address with kubernetes-internal-ip.
    cp.call(
        "PATCH",
        "/api/v1/nodes/node1/status",
        Some(&json!({"status": {"addresses": [
            {"type": "Hostname", "address": "node1"},
            {"type": "InternalIP", "address": "198.18.0.1"}
        ]}})),
    )
    .expect_status(200, "set the Node's status.addresses");
    let n = c.node_mut(1);
    n.kill(common::cluster::libc_sigterm());
    let kubeconfig = c.kubeconfig.clone().expect("a kubeconfig");
    let n = c.node_mut(1);
    let conf = n.dir.join("internal-ip.yaml");
    std::fs::write(
        &conf,
        format!(
            "node: {{ name: node1, asNumber: 64512, routerId: 198.18.0.1, \
             addressAutodetection: {{ ipv4: kubernetes-internal-ip }} }}\n\
             datastore: {{ kubernetes: {{ kubeconfig: {} }} }}\n\
             bgp: {{ holdTime: 9, connectRetry: 1 }}\n\
             status: {{ socket: {} }}\n{IPAM}",
            kubeconfig.display(),
            n.sock().display()
        ),
    )
    .expect("write config");
    let log = n.dir.join("internal-ip.log");
    n.agent = Some(common::proc::Proc::spawn(
        n.ns.name(),
        &[
            common::bin(),
            "agent",
            "--config",
            &conf.display().to_string(),
        ],
        &log,
        &[("FERROVIA_LOG", "info")],
    ));
    let s = wait_until("the agent up with its InternalIP", CONVERGE, POLL, || {
        c.node(1).status()
    });
    let a = &s["node"]["addresses"][0];
    assert_eq!(a["address"], "198.18.0.1", "{s}");
    assert_eq!(a["method"], "kubernetes-internal-ip", "{s}");
    assert_eq!(a["interface"], "eth0", "{s}");
    assert!(
        a["reason"]
            .as_str()
            .is_some_and(|r| r.contains("InternalIP")),
        "{s}"
    );
    // Without an IPv6 InternalIP, ipv6: kubernetes-internal-ip stops the agent, saying so.
    let bad = n_dir_config(&c, &kubeconfig);
    let out = c
        .node(1)
        .ns
        .exec(&["timeout", "120", common::bin(), "agent", "--config", &bad]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no IPv6 InternalIP") && err.contains("198.18.0.1"),
        "{err}"
    );
}

/// A configuration asking for the IPv6 InternalIP too (node1 has none).
fn n_dir_config(c: &Cluster, kubeconfig: &std::path::Path) -> String {
    let n = c.node(1);
    let conf = n.dir.join("internal-ip6.yaml");
    std::fs::write(
        &conf,
        format!(
            "node: {{ name: node1, asNumber: 64512, routerId: 198.18.0.1, \
             addressAutodetection: {{ ipv4: kubernetes-internal-ip, ipv6: kubernetes-internal-ip }} }}\n\
             datastore: {{ kubernetes: {{ kubeconfig: {} }} }}\n\
             status: {{ socket: {} }}\n",
            kubeconfig.display(),
            n.dir.join("internal-ip6.sock").display()
        ),
    )
    .expect("write config");
    conf.display().to_string()
}

#[test]
fn a_stored_peer_with_a_node_selector_follows_labels_set_with_the_cli() {
    let c = Cluster::with("pss", 3, IPAM);
    let (_rns, bird) = router(&c, 3);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    // node and node selector together, and a selector that does not parse: refused.
    for args in [
        vec![
            "peer",
            "add",
            "bad",
            "--address",
            ROUTER,
            "--as-number",
            "65000",
            "--node",
            "node1",
            "--node-selector",
            "rack=r1",
        ],
        vec![
            "peer",
            "add",
            "bad",
            "--address",
            ROUTER,
            "--as-number",
            "65000",
            "--node-selector",
            "rack in (r1)",
        ],
    ] {
        let out = c.try_cli(&args);
        assert!(!out.status.success(), "{args:?} accepted");
    }
    c.cli(&["node", "set", "node1", "--label", "rack=r1"]);
    c.cli(&[
        "peer",
        "add",
        "rack-r1",
        "--address",
        ROUTER,
        "--as-number",
        "65000",
        "--node-selector",
        "rack=r1",
    ]);
    wait_until("only node1 peers", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[1])
    });
    let list = c.cli(&["peer", "list"]);
    assert!(list.contains("selector rack=r1"), "{list}");
    c.cli(&["node", "set", "node3", "--label", "rack=r1"]);
    c.cli(&["node", "set", "node1", "--label", "rack-"]);
    wait_until("only node3 peers", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[3])
    });
    // The labels are in the node list, and survive the agent's registration.
    let nodes: Value =
        serde_json::from_str(&c.cli(&["node", "list", "--json"])).expect("node list --json");
    assert_eq!(nodes[2]["labels"]["rack"], "r1", "{nodes}");
    assert!(nodes[0].get("labels").is_none(), "{nodes}");
    // Back to one node by name.
    c.cli(&["peer", "set", "rack-r1", "--node", "node2"]);
    wait_until("only node2 peers", CONVERGE, POLL, || {
        selected(&c, &bird, 3, &[2])
    });
}
