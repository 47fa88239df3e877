//! Which BGP peers this node should have: its configuration file's peers, the datastore's
//! global peers and peers for this node, and — when the cluster's mesh is on — every other
//! node. A pure function of its inputs, so the agent just diffs the result against the
//! running speaker.
//!
//! With the mesh off and route reflectors among the nodes (a cluster id in their record),
//! every other node peers with the reflectors only, and each reflector with every node:
//! the nodes that are not reflectors as its clients, the other reflectors as non-clients.

use crate::config::RouteSafety;
use ferrovia_bgp::driver::PeerSpec;
use ferrovia_bgp::policy::{PeerPolicy, PrefixAction, PrefixRule};
use ferrovia_bgp::speaker::PeerConfig;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Another node as the mesh needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshNode {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub as_number: u32,
    /// The node is a route reflector with this cluster id.
    pub route_reflector: Option<std::net::Ipv4Addr>,
}

/// A peer stored in the datastore: global (`node` None) or for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPeer {
    pub address: IpAddr,
    pub as_number: u32,
    pub node: Option<String>,
    pub password: Option<String>,
    /// GTSM hops (RFC 5082); None: off.
    pub ttl_security: Option<u8>,
    /// BFD timing; None: off.
    pub bfd: Option<ferrovia_bgp::bfd::Timing>,
    pub safety: RouteSafety,
}

/// This node's view of its surroundings.
#[derive(Debug, Clone)]
pub struct Inputs<'a> {
    pub me: &'a str,
    /// This node's session address (the mesh uses the same family on every node).
    pub my_address: IpAddr,
    pub mesh: bool,
    pub nodes: &'a [MeshNode],
    pub stored_peers: &'a [StoredPeer],
    /// Peers from the configuration file (kind "global").
    pub file_peers: &'a [PeerSpec],
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// The cluster's pod pools, refused from peers outside the cluster unless allowed.
    pub pools: &'a [IpNet],
    /// The cluster's Service address ranges (BGPConfiguration `service*IPs`): their host
    /// routes do not travel between nodes (see [`between_nodes`]).
    pub service_ranges: &'a [IpNet],
}

/// Route safety of a session between two nodes of the cluster (mesh, reflector and
/// reflector-client sessions): nothing is refused but the host routes (/32, /128) of
/// Service addresses inside the cluster's Service ranges, in both directions. Each node
/// announces the Service addresses its traffic policy allows; a node that took another
/// node's /32 would pass it on to its eBGP peers (a ToR) with itself as next hop, and a
/// `Local` Service would be announced by nodes without an endpoint. The ranges themselves
/// pass (every node announces them).
pub fn between_nodes(service_ranges: &[IpNet]) -> PeerPolicy {
    if service_ranges.is_empty() {
        return PeerPolicy::default();
    }
    let mut rules: Vec<PrefixRule> = service_ranges
        .iter()
        .map(|r| PrefixRule {
            prefix: *r,
            ge: Some(r.max_prefix_len()),
            le: None,
            action: PrefixAction::Deny,
        })
        .collect();
    for any in [
        IpNet::from(Ipv4Net::default()),
        IpNet::from(Ipv6Net::default()),
    ] {
        rules.push(PrefixRule {
            prefix: any,
            ge: None,
            le: Some(any.max_prefix_len()),
            action: PrefixAction::Permit,
        });
    }
    PeerPolicy {
        import_prefixes: rules.clone(),
        export_prefixes: rules,
        ..PeerPolicy::default()
    }
}

/// The peers this node should have, by address. Earlier sources win when two name the
/// same address: the configuration file, then per-node peers, then global peers, then the
/// mesh. The node's own addresses are never peers.
pub fn desired_peers(i: &Inputs<'_>) -> BTreeMap<IpAddr, PeerSpec> {
    let mut out: BTreeMap<IpAddr, PeerSpec> = BTreeMap::new();
    let my_addrs: Vec<IpAddr> = i
        .nodes
        .iter()
        .filter(|n| n.name == i.me)
        .flat_map(|n| n.addresses.iter().copied())
        .chain([i.my_address])
        .collect();
    let mut put = |spec: PeerSpec| {
        let a = spec.config.address;
        if !my_addrs.contains(&a) {
            out.entry(a).or_insert(spec);
        }
    };
    for p in i.file_peers {
        put(p.clone());
    }
    let spec_rr = |address: IpAddr,
                   asn: u32,
                   kind: &str,
                   passive: bool,
                   password: Option<String>,
                   client: bool| PeerSpec {
        config: PeerConfig {
            address,
            remote_as: asn,
            hold_time: i.hold_time,
            connect_retry: i.connect_retry,
            passive,
            kind: kind.to_string(),
            route_reflector_client: client,
            // Nodes of the cluster: no default protections; Service host routes stay on
            // the node that announces them.
            policy: between_nodes(i.service_ranges),
        },
        port: 179,
        password,
        ttl_security: None,
        bfd: None,
    };
    let spec = |address: IpAddr, asn: u32, kind: &str, passive: bool, password: Option<String>| {
        spec_rr(address, asn, kind, passive, password, false)
    };
    // Stored peers are outside the cluster: their settings plus the default protections.
    let stored = |p: &StoredPeer, kind: &str| {
        let mut s = spec(p.address, p.as_number, kind, false, p.password.clone());
        s.config.policy = p.safety.policy(true, i.pools);
        s.ttl_security = p.ttl_security;
        s.bfd = p.bfd;
        s
    };
    for p in i
        .stored_peers
        .iter()
        .filter(|p| p.node.as_deref() == Some(i.me))
    {
        put(stored(p, "node"));
    }
    for p in i.stored_peers.iter().filter(|p| p.node.is_none()) {
        put(stored(p, "global"));
    }
    let i_reflect = i
        .nodes
        .iter()
        .any(|n| n.name == i.me && n.route_reflector.is_some());
    let reflectors = i.nodes.iter().any(|n| n.route_reflector.is_some());
    for n in i.nodes.iter().filter(|n| n.name != i.me) {
        let Some(addr) = n
            .addresses
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == i.my_address.is_ipv4())
        else {
            continue;
        };
        // One side opens the session: the lower address connects, the higher listens.
        let passive = i.my_address > addr;
        if i.mesh {
            put(spec(addr, n.as_number, "mesh", passive, None));
        } else if i_reflect {
            // A reflector peers with every node; those that are not reflectors are its
            // clients.
            let client = n.route_reflector.is_none();
            let kind = if client { "rr-client" } else { "rr-mesh" };
            put(spec_rr(addr, n.as_number, kind, passive, None, client));
        } else if reflectors && n.route_reflector.is_some() {
            put(spec(addr, n.as_number, "rr", passive, None));
        }
    }
    out
}

/// This node's cluster id when the datastore makes it a route reflector.
pub fn my_cluster_id(me: &str, nodes: &[MeshNode]) -> Option<std::net::Ipv4Addr> {
    nodes
        .iter()
        .find(|n| n.name == me)
        .and_then(|n| n.route_reflector)
}

/// What to change on the running speaker to get from `current` to `desired`: peers to
/// remove (gone or changed) and peers to add (new or changed).
pub fn diff(
    current: &BTreeMap<IpAddr, PeerSpec>,
    desired: &BTreeMap<IpAddr, PeerSpec>,
) -> (Vec<IpAddr>, Vec<PeerSpec>) {
    let remove = current
        .iter()
        .filter(|(a, s)| desired.get(a) != Some(s))
        .map(|(a, _)| *a)
        .collect();
    let add = desired
        .iter()
        .filter(|(a, s)| current.get(a) != Some(s))
        .map(|(_, s)| s.clone())
        .collect();
    (remove, add)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, addr: &str) -> MeshNode {
        MeshNode {
            name: name.into(),
            addresses: vec![
                addr.parse().expect("ip"),
                "fd00:198:18::9".parse().expect("ip"),
            ],
            as_number: 64512,
            route_reflector: None,
        }
    }

    fn inputs<'a>(
        nodes: &'a [MeshNode],
        stored: &'a [StoredPeer],
        file: &'a [PeerSpec],
    ) -> Inputs<'a> {
        Inputs {
            me: "node2",
            my_address: "198.18.0.2".parse().expect("ip"),
            mesh: true,
            nodes,
            stored_peers: stored,
            file_peers: file,
            hold_time: 9,
            connect_retry: Duration::from_secs(1),
            pools: &[],
            service_ranges: &[],
        }
    }

    #[test]
    fn mesh_peers_every_other_node_lower_address_connects() {
        let nodes = [
            node("node1", "198.18.0.1"),
            node("node2", "198.18.0.2"),
            node("node3", "198.18.0.3"),
        ];
        let d = desired_peers(&inputs(&nodes, &[], &[]));
        let addrs: Vec<String> = d.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["198.18.0.1", "198.18.0.3"]);
        let p1 = &d[&"198.18.0.1".parse::<IpAddr>().expect("ip")];
        let p3 = &d[&"198.18.0.3".parse::<IpAddr>().expect("ip")];
        assert!(
            p1.config.passive,
            "node1 has the lower address: it connects, we listen"
        );
        assert!(!p3.config.passive, "we have the lower address: we connect");
        assert_eq!(p1.config.kind, "mesh");
        assert_eq!(p1.config.hold_time, 9);
    }

    #[test]
    fn mesh_off_leaves_only_explicit_peers_with_precedence() {
        let nodes = [node("node1", "198.18.0.1"), node("node2", "198.18.0.2")];
        let stored = [
            StoredPeer {
                address: "198.18.0.254".parse().expect("ip"),
                as_number: 65000,
                node: None,
                password: None,
                ttl_security: None,
                bfd: None,
                safety: Default::default(),
            },
            StoredPeer {
                address: "198.18.0.253".parse().expect("ip"),
                as_number: 65001,
                node: Some("node2".into()),
                password: Some("pw".into()),
                ttl_security: None,
                bfd: None,
                safety: Default::default(),
            },
            StoredPeer {
                address: "198.18.0.252".parse().expect("ip"),
                as_number: 65002,
                node: Some("node9".into()),
                password: None,
                ttl_security: None,
                bfd: None,
                safety: Default::default(),
            },
            // Same address as a per-node peer: the per-node one wins.
            StoredPeer {
                address: "198.18.0.253".parse().expect("ip"),
                as_number: 1,
                node: None,
                password: None,
                ttl_security: None,
                bfd: None,
                safety: Default::default(),
            },
        ];
        let mut i = inputs(&nodes, &stored, &[]);
        i.mesh = false;
        let d = desired_peers(&i);
        let got: Vec<(String, u32, String)> = d
            .values()
            .map(|s| {
                (
                    s.config.address.to_string(),
                    s.config.remote_as,
                    s.config.kind.clone(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.0.253".to_string(), 65001, "node".to_string()),
                ("198.18.0.254".to_string(), 65000, "global".to_string())
            ]
        );
        assert_eq!(
            d[&"198.18.0.253".parse::<IpAddr>().expect("ip")]
                .password
                .as_deref(),
            Some("pw")
        );
    }

    #[test]
    fn mesh_off_with_reflectors_nodes_peer_with_reflectors_and_reflectors_with_all() {
        let mut nodes = vec![
            node("node1", "198.18.0.1"),
            node("node2", "198.18.0.2"),
            node("node3", "198.18.0.3"),
            node("rr1", "198.18.0.100"),
            node("rr2", "198.18.0.101"),
        ];
        let cid = "198.18.0.100".parse().ok();
        nodes[3].route_reflector = cid;
        nodes[4].route_reflector = cid;
        // An ordinary node: the two reflectors only.
        let mut i = inputs(&nodes, &[], &[]);
        i.mesh = false;
        let d = desired_peers(&i);
        let addrs: Vec<String> = d.keys().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["198.18.0.100", "198.18.0.101"]);
        assert!(d
            .values()
            .all(|s| s.config.kind == "rr" && !s.config.passive));
        assert!(d.values().all(|s| !s.config.route_reflector_client));
        assert_eq!(my_cluster_id("node2", &nodes), None);
        // A reflector: every other node, non-reflectors as clients.
        i.me = "rr1";
        i.my_address = "198.18.0.100".parse().expect("ip");
        let d = desired_peers(&i);
        let got: Vec<(String, bool, &str)> = d
            .values()
            .map(|s| {
                (
                    s.config.address.to_string(),
                    s.config.route_reflector_client,
                    s.config.kind.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.0.1".to_string(), true, "rr-client"),
                ("198.18.0.2".to_string(), true, "rr-client"),
                ("198.18.0.3".to_string(), true, "rr-client"),
                ("198.18.0.101".to_string(), false, "rr-mesh"),
            ]
        );
        assert!(
            d[&"198.18.0.1".parse::<IpAddr>().expect("ip")]
                .config
                .passive
        );
        assert_eq!(my_cluster_id("rr1", &nodes), cid);
        // Mesh on: the full mesh as before, reflectors or not, no clients.
        i.mesh = true;
        let d = desired_peers(&i);
        assert_eq!(d.len(), 4);
        assert!(d
            .values()
            .all(|s| s.config.kind == "mesh" && !s.config.route_reflector_client));
        // Mesh off and no reflector anywhere: no node peers.
        nodes[3].route_reflector = None;
        nodes[4].route_reflector = None;
        let mut i = inputs(&nodes, &[], &[]);
        i.mesh = false;
        assert!(desired_peers(&i).is_empty());
    }

    #[test]
    fn service_host_routes_stay_on_their_node_and_only_they() {
        let ranges: Vec<IpNet> = vec![
            "10.96.0.0/12".parse().expect("net"),
            "fd00:96::/108".parse().expect("net"),
        ];
        let stored = [StoredPeer {
            address: "198.18.0.254".parse().expect("ip"),
            as_number: 65000,
            node: None,
            password: None,
            ttl_security: None,
            bfd: None,
            safety: Default::default(),
        }];
        let nodes = [node("node1", "198.18.0.1"), node("node2", "198.18.0.2")];
        let mut i = inputs(&nodes, &stored, &[]);
        i.service_ranges = &ranges;
        let d = desired_peers(&i);
        let mesh = &d[&"198.18.0.1".parse::<IpAddr>().expect("ip")]
            .config
            .policy;
        let net = |s: &str| s.parse::<IpNet>().expect("net");
        for host in ["10.96.0.10/32", "10.111.255.1/32", "fd00:96::a/128"] {
            assert!(
                mesh.refuse(&net(host)).is_some(),
                "{host} taken from a node"
            );
            assert!(!mesh.exports(&net(host)), "{host} sent to a node");
        }
        for other in [
            "10.96.0.0/12",
            "fd00:96::/108",
            "10.96.0.0/24",
            "10.244.1.0/26",
            "10.112.0.1/32",
            "192.0.2.30/32",
            "fd00:244::/122",
        ] {
            assert!(mesh.refuse(&net(other)).is_none(), "{other} refused");
            assert!(mesh.exports(&net(other)), "{other} not sent");
        }
        // Peers outside the cluster (a ToR) get the Service host routes.
        let tor = &d[&"198.18.0.254".parse::<IpAddr>().expect("ip")]
            .config
            .policy;
        assert!(tor.exports(&net("10.96.0.10/32")));
        // No ranges: no list at all.
        assert_eq!(between_nodes(&[]), PeerPolicy::default());
    }

    #[test]
    fn stored_peers_get_the_cluster_protections_and_gtsm_mesh_peers_do_not() {
        let nodes = [node("node1", "198.18.0.1"), node("node2", "198.18.0.2")];
        let pools: Vec<IpNet> = vec!["10.244.0.0/16".parse().expect("net")];
        let stored = [
            StoredPeer {
                address: "198.18.0.254".parse().expect("ip"),
                as_number: 65000,
                node: None,
                password: None,
                ttl_security: Some(1),
                bfd: None,
                safety: Default::default(),
            },
            StoredPeer {
                address: "198.18.0.253".parse().expect("ip"),
                as_number: 65001,
                node: Some("node2".into()),
                password: None,
                ttl_security: None,
                bfd: None,
                safety: RouteSafety {
                    allow_pool_prefixes: true,
                    allow_default_route: true,
                    ..Default::default()
                },
            },
        ];
        let mut i = inputs(&nodes, &stored, &[]);
        i.pools = &pools;
        let d = desired_peers(&i);
        let get = |a: &str| &d[&a.parse::<IpAddr>().expect("ip")];
        let tor = get("198.18.0.254");
        assert_eq!(tor.ttl_security, Some(1));
        assert_eq!(tor.config.policy.protected, pools);
        assert!(tor.config.policy.refuse_default_route);
        let allowed = get("198.18.0.253");
        assert!(allowed.config.policy.protected.is_empty());
        assert!(!allowed.config.policy.refuse_default_route);
        let mesh = get("198.18.0.1");
        assert_eq!(mesh.config.kind, "mesh");
        assert_eq!(
            mesh.config.policy,
            Default::default(),
            "mesh nodes are the cluster"
        );
        assert_eq!(mesh.ttl_security, None);
    }

    #[test]
    fn diff_removes_changed_and_gone_and_adds_new() {
        let nodes = [
            node("node1", "198.18.0.1"),
            node("node2", "198.18.0.2"),
            node("node3", "198.18.0.3"),
        ];
        let before = desired_peers(&inputs(&nodes, &[], &[]));
        let mut nodes2 = nodes.to_vec();
        nodes2.retain(|n| n.name != "node3");
        nodes2[0].as_number = 64999;
        nodes2.push(node("node4", "198.18.0.4"));
        let after = desired_peers(&inputs(&nodes2, &[], &[]));
        let (remove, add) = diff(&before, &after);
        let remove: Vec<String> = remove.iter().map(|a| a.to_string()).collect();
        let add: Vec<String> = add.iter().map(|s| s.config.address.to_string()).collect();
        assert_eq!(remove, ["198.18.0.1", "198.18.0.3"]);
        assert_eq!(add, ["198.18.0.1", "198.18.0.4"]);
        let (r, a) = diff(&after, &after);
        assert!(r.is_empty() && a.is_empty(), "idempotent");
    }
}
