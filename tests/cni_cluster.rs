//! IPAM and the CNI plugin across nodes: pods started through `ferrovia-cni` on three nodes
//! reach each other by their own addresses, routed natively; addresses are never given twice,
//! even with ADDs racing on every node; a newly claimed block reaches every other node's
//! kernel, announced by the ADD itself.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, Pod, CONVERGE, POLL};
use common::wait_until;
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";

fn cluster(tag: &str) -> Cluster {
    let c = Cluster::with(tag, 3, IPAM);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    c
}

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

fn ipam_allocations(c: &Cluster) -> Vec<Value> {
    let out = c.cli(&["ipam", "show", "--json"]);
    let v: Value = serde_json::from_str(&out).expect("ipam show --json");
    v["allocations"].as_array().cloned().unwrap_or_default()
}

#[test]
fn pods_on_three_nodes_reach_each_other_by_their_own_addresses_without_nat() {
    let c = cluster("cni3");
    let pods: Vec<Pod> = (1..=3)
        .flat_map(|n| (0..2).map(move |k| (n, k)))
        .map(|(n, k)| c.add_pod(n, &format!("p{n}{k}")))
        .collect();
    for p in &pods {
        assert!(
            p.ip(false).is_some() && p.ip(true).is_some(),
            "dual-stack result: {}",
            p.result
        );
        // What the CNI result says is what the pod has on eth0.
        let addrs = p.ns.ip(&["-o", "addr", "show", "dev", "eth0"]);
        for v6 in [false, true] {
            let a = p.ip(v6).expect("address");
            assert!(addrs.contains(&a), "{} has {a} on eth0: {addrs}", p.id);
        }
    }
    // Every pod pings every other pod, both families (blocks reach the kernels via BGP).
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
    // A TCP server in a pod on node 3 reports the client's source address: it is the address
    // the client pod on node 1 sees on its own eth0 (no NAT anywhere).
    let server = pods.iter().find(|p| p.node == 3).expect("pod on node 3");
    let client = pods.iter().find(|p| p.node == 1).expect("pod on node 1");
    let server_ip = server.ip(false).expect("v4");
    let srv = std::process::Command::new("ip")
        .args(["netns", "exec", server.ns.name(), "python3", "-c"])
        .arg(
            "import socket,sys\n\
             s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('0.0.0.0', 8080)); s.listen(1); s.settimeout(60)\n\
             c,a=s.accept(); c.sendall(a[0].encode()); c.close()\n",
        )
        .spawn()
        .expect("server");
    let seen = wait_until("TCP answer", CONVERGE, POLL, || {
        let out = client.ns.exec(&[
            "python3",
            "-c",
            &format!(
                "import socket\ns=socket.create_connection(('{server_ip}', 8080), timeout=2)\nprint(s.recv(100).decode())"
            ),
        ]);
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    });
    let _ = srv.wait_with_output();
    let own = client.ns.ip(&["-4", "-o", "addr", "show", "dev", "eth0"]);
    assert_eq!(Some(seen.clone()), client.ip(false), "server saw {seen}");
    assert!(
        own.contains(&format!("{seen}/32")),
        "client's own eth0 has {seen}: {own}"
    );
    for p in &pods {
        let (ok, v) = c.cni(p.node, "DEL", &p.id, Some(p.ns.name()), None);
        assert!(ok, "DEL {}: {v}", p.id);
    }
    assert!(ipam_allocations(&c).is_empty(), "every address released");
}

#[test]
fn a_new_block_reaches_every_other_kernel_after_the_add() {
    let c = cluster("cniblk");
    let t = Instant::now();
    let pod = c.add_pod(2, "first");
    let ip = pod.ip(false).expect("v4");
    // The node's block that holds the address.
    let block = {
        let v: Value = serde_json::from_str(&c.cli(&["ipam", "show", "--json"])).expect("json");
        v["blocks"]
            .as_array()
            .and_then(|a| {
                a.iter().find_map(|b| {
                    let cidr = b["cidr"].as_str()?;
                    let net: ipnet::IpNet = cidr.parse().ok()?;
                    net.contains(&ip.parse::<std::net::IpAddr>().ok()?)
                        .then(|| cidr.to_string())
                })
            })
            .expect("the pod's block in ipam show")
    };
    wait_until(
        "the new block on nodes 1 and 3",
        CONVERGE,
        Duration::from_millis(20),
        || {
            for i in [1u8, 3] {
                let w = format!("{block} via 198.18.0.2 dev eth0");
                if !c.node(i).has_route(&w) {
                    return Err(format!("node{i} lacks `{w}`"));
                }
            }
            Ok(())
        },
    );
    eprintln!(
        "block {block} in the other kernels {:?} after the ADD started",
        t.elapsed()
    );
    assert!(
        c.node(2).has_route(&format!("blackhole {block}")),
        "owner blackholes its block"
    );
}

#[test]
fn racing_adds_on_every_node_never_give_an_address_twice() {
    let c = cluster("cnirace");
    let per_node = 15;
    let results: Vec<(u8, String, bool, Value, common::Netns)> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=3u8)
            .flat_map(|n| (0..per_node).map(move |k| (n, k)))
            .map(|(n, k)| {
                let c = &c;
                s.spawn(move || {
                    let id = format!("race-{n}-{k}");
                    let ns = common::Netns::new(&c._lock, &format!("r{n}{k}"));
                    let (ok, v) = c.cni(n, "ADD", &id, Some(ns.name()), None);
                    (n, id, ok, v, ns)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let mut seen = HashSet::new();
    for (n, id, ok, v, _) in &results {
        assert!(ok, "ADD {id} on node{n}: {v}");
        for ip in v["ips"].as_array().expect("ips") {
            let a = ip["address"].as_str().expect("address").to_string();
            assert!(seen.insert(a.clone()), "{a} given twice");
        }
    }
    assert_eq!(seen.len(), 3 * per_node * 2, "one v4 and one v6 per pod");
    assert_eq!(
        ipam_allocations(&c).len(),
        3 * per_node * 2,
        "the datastore agrees"
    );
    for (n, id, _, _, _) in &results {
        let (ok, v) = c.cni(*n, "DEL", id, None, None);
        assert!(ok, "DEL {id}: {v}");
    }
    assert!(ipam_allocations(&c).is_empty());
}

#[test]
fn one_hundred_parallel_adds_on_one_node_are_distinct_and_reachable_from_another_node() {
    let c = cluster("cni100");
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|k| {
                let c = &c;
                s.spawn(move || c.add_pod(1, &format!("h{k}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let v4: HashSet<String> = pods.iter().filter_map(|p| p.ip(false)).collect();
    assert_eq!(v4.len(), 100, "100 distinct IPv4 addresses");
    let n2 = &c.node(2).ns;
    for ip in &v4 {
        wait_until("reachable from node2", CONVERGE, POLL, || {
            let out = n2.exec(&["ping", "-c", "1", "-W", "1", ip]);
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{ip} unreachable from node2"))
            }
        });
    }
}

#[test]
fn running_pods_keep_their_routes_and_traffic_across_an_agent_restart() {
    let mut c = cluster("cnirst");
    let pod = c.add_pod(1, "keep");
    let v4 = pod.ip(false).expect("v4");
    let v6 = pod.ip(true).expect("v6");
    let host_routes = |c: &Cluster| {
        c.node(1)
            .kernel_routes()
            .into_iter()
            .filter(|l| l.starts_with(&format!("{v4} dev")) || l.starts_with(&format!("{v6} dev")))
            .count()
    };
    assert_eq!(
        host_routes(&c),
        2,
        "host routes to the pod: {:?}",
        c.node(1).kernel_routes()
    );
    let n2 = &c.node(2).ns;
    wait_until("pod reachable from node2", CONVERGE, POLL, || {
        let out = n2.exec(&["ping", "-c", "1", "-W", "1", &v4]);
        if out.status.success() {
            Ok(())
        } else {
            Err("unreachable")
        }
    });
    // The agent dies hard and comes back: it reconciles the kernel table at start.
    c.node_mut(1).kill(9);
    let db = c.db.clone();
    c.node_mut(1).start(&db);
    wait_until("agent back", CONVERGE, POLL, || c.established(1, 2));
    // Anchor for the kernel checks: the restarted agent has reconciled its kernel table and
    // installed the other nodes' blocks again, and node2 routes the pod via node1 again.
    wait_until("node1's kernel table reconciled", CONVERGE, POLL, || {
        c.routed(&[1, 2, 3])
    });
    wait_until("node2 routes the pod via node1", CONVERGE, POLL, || {
        let r = c.node(2).ns.ip(&["-4", "route", "get", &v4]);
        if r.contains("via 198.18.0.1 ") {
            Ok(())
        } else {
            Err(r)
        }
    });
    assert_eq!(
        host_routes(&c),
        2,
        "reconciliation kept the pod's host routes: {:?}",
        c.node(1).kernel_routes()
    );
    let out = c.node(2).ns.exec(&["ping", "-c", "1", "-W", "10", &v4]);
    assert!(
        out.status.success(),
        "the pod stayed reachable: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (ok, v) = c.cni(1, "CHECK", &pod.id, Some(pod.ns.name()), Some(format!(
        r#"{{"cniVersion":"1.0.0","name":"ferrovia","type":"ferrovia-cni","agentSocket":"{}","mtu":1500,"prevResult":{}}}"#,
        c.node(1).sock().display(),
        pod.result
    )));
    assert!(ok, "CHECK after the restart: {v}");
}

#[test]
fn a_node_without_a_block_borrows_an_address_and_announces_it_as_a_host_route() {
    // Room for two /28 blocks only: the third node cannot claim one and borrows.
    let c = Cluster::with(
        "cniborrow",
        3,
        "ipam:\n  pools:\n    - { cidr: 10.244.0.0/27, blockSize: 28 }\n",
    );
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    let p1 = c.add_pod(1, "b1");
    let p2 = c.add_pod(2, "b2");
    let p3 = c.add_pod(3, "b3");
    assert!(p3.ip(true).is_none(), "IPv4-only pool: {}", p3.result);
    let ip3 = p3.ip(false).expect("borrowed v4");
    let allocs = ipam_allocations(&c);
    let row = allocs
        .iter()
        .find(|a| a.to_string().contains(&format!("\"{ip3}")))
        .unwrap_or_else(|| panic!("{ip3} in ipam show: {allocs:?}"));
    assert_eq!(row["borrowed"], true, "node3's address is borrowed: {row}");
    // Every other node routes the borrowed /32 to node3, more specific than the owner's
    // block (and its blackhole), and the pods reach each other.
    for i in [1u8, 2] {
        wait_until("borrowed /32 via node3", CONVERGE, POLL, || {
            let w = format!("{ip3} via 198.18.0.3 dev eth0");
            if c.node(i).has_route(&w) {
                Ok(())
            } else {
                Err(format!("node{i}: {:?}", c.node(i).kernel_routes()))
            }
        });
    }
    for other in [&p1, &p2] {
        let to = other.ip(false).expect("v4");
        wait_until("borrowing pod reaches the others", CONVERGE, POLL, || {
            ping(&p3, &to)
        });
        wait_until("the others reach the borrowing pod", CONVERGE, POLL, || {
            ping(other, &ip3)
        });
    }
    // Released: the /32 is withdrawn everywhere.
    let (ok, v) = c.cni(3, "DEL", &p3.id, Some(p3.ns.name()), None);
    assert!(ok, "DEL: {v}");
    wait_until("borrowed /32 withdrawn", CONVERGE, POLL, || {
        for i in [1u8, 2] {
            if c.node(i).has_route(&format!("{ip3} via")) {
                return Err(format!("node{i} still routes {ip3}"));
            }
        }
        Ok(())
    });
}
