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

/// The API server's count of 409 answers (Conflict and AlreadyExists) per resource, from its
/// own `/metrics` (`apiserver_request_total{code="409",resource=…}`).
fn conflicts(c: &Cluster) -> std::collections::BTreeMap<String, u64> {
    let text = c
        .control_plane()
        .call("GET", "/metrics", None)
        .expect_status(200, "API server metrics")
        .body;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("apiserver_request_total{") || !line.contains("code=\"409\"") {
            continue;
        }
        let resource = line
            .split("resource=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("?")
            .to_string();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(resource).or_insert(0) += n as u64;
    }
    out
}

#[test]
fn fifty_parallel_adds_on_each_of_three_agents_give_distinct_addresses_and_blocks() {
    let c = Cluster::kubernetes("kc150", 3, IPAM);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    let before = conflicts(&c);
    let per_node = 50;
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let hs: Vec<_> = (1..=3u8)
            .flat_map(|n| (0..per_node).map(move |k| (n, k)))
            .map(|(n, k)| {
                let c = &c;
                s.spawn(move || c.add_pod(n, &format!("b{n}-{k}")))
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let after = conflicts(&c);

    // No address twice.
    let mut seen = std::collections::HashSet::new();
    for p in &pods {
        for v6 in [false, true] {
            let a = p.ip(v6).expect("dual-stack result");
            assert!(seen.insert(a.clone()), "{a} given twice");
        }
    }
    assert_eq!(seen.len(), 3 * per_node * 2);

    // No block twice: the blocks do not overlap, and each address is in exactly one block.
    let listed: Value = serde_json::from_str(&c.control_plane().kubectl(&[
        "get",
        "ipamblocks.ferrovia.io",
        "-o",
        "json",
    ]))
    .expect("kubectl JSON");
    let blocks: Vec<(ipnet::IpNet, String)> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["spec"]["cidr"]
                    .as_str()
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("block cidr: {b}")),
                b["spec"]["affinity"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for (i, (a, _)) in blocks.iter().enumerate() {
        for (b, _) in blocks.iter().skip(i + 1) {
            assert!(
                !a.contains(&b.network()) && !b.contains(&a.network()),
                "blocks {a} and {b} overlap"
            );
        }
    }
    for a in &seen {
        let ip: std::net::IpAddr = a.parse().expect("ip");
        let holders = blocks.iter().filter(|(n, _)| n.contains(&ip)).count();
        assert_eq!(holders, 1, "{ip} is in {holders} blocks: {blocks:?}");
    }

    // Every pod is reachable from another node.
    for p in &pods {
        let from = &c.node(p.node % 3 + 1).ns;
        let ip = p.ip(false).expect("v4");
        wait_until("pod reachable from another node", CONVERGE, POLL, || {
            let out = from.exec(&["ping", "-c", "1", "-W", "1", &ip]);
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{ip} of {} unreachable", p.id))
            }
        });
    }
    let diff: Vec<String> = after
        .iter()
        .map(|(r, n)| format!("{r}={}", n - before.get(r).copied().unwrap_or(0)))
        .collect();
    eprintln!(
        "150 parallel ADDs on 3 agents: {} blocks; 409 answers retried by resource: {}",
        blocks.len(),
        diff.join(", ")
    );
    for p in &pods {
        let (ok, v) = c.cni(p.node, "DEL", &p.id, Some(p.ns.name()), None);
        assert!(ok, "DEL {}: {v}", p.id);
    }
    assert!(allocations(&c).is_empty(), "every address released");
}

/// Packets sent and received, from ping's summary line.
fn ping_counts(out: &str) -> (u32, u32) {
    let line = out
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary in {out}"));
    let nums: Vec<u32> = line
        .split(',')
        .filter_map(|part| part.split_whitespace().next()?.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn the_api_server_stopped_for_30_s_loses_no_packet_and_no_watch_event() {
    let mut c = Cluster::kubernetes("kdown", 3, IPAM);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    let a = c.add_pod(1, "down-a");
    let b = c.add_pod(2, "down-b");
    let to = b.ip(false).expect("v4");
    wait_until("pod to pod", CONVERGE, POLL, || ping(&a, &to));

    // A ToR on the segment, accepting any node; not a peer of the cluster yet.
    let tor = common::Netns::new(&c._lock, "dtor");
    common::Netns::veth(&tor, "eth0", &c.br, "pdtor");
    c.br.ip(&["link", "set", "pdtor", "master", "br0"]);
    tor.addr("eth0", "198.18.0.254/24");
    let bird_conf = c.dir.path().join("tor.conf");
    std::fs::write(
        &bird_conf,
        "router id 198.18.0.254;\nprotocol device {}\nprotocol direct { ipv4; }\n\
         protocol bgp nodes {\n  local 198.18.0.254 as 65000;\n  neighbor range 198.18.0.0/24 as 64512;\n  dynamic name \"node\";\n  ipv4 { import all; export none; };\n}\n",
    )
    .expect("bird config");
    let _bird = common::proc::Proc::spawn(
        tor.name(),
        &[
            "bird",
            "-f",
            "-c",
            &bird_conf.display().to_string(),
            "-s",
            &c.dir.path().join("tor.ctl").display().to_string(),
        ],
        &c.dir.path().join("tor.log"),
        &[],
    );

    // Traffic between the two pods across the whole outage (5 per second for 45 s).
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            a.ns.name(),
            "ping",
            "-4",
            "-i",
            "0.2",
            "-c",
            "225",
            "-W",
            "1",
        ])
        .arg(&to)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ping");

    c.cp.as_mut().expect("control plane").stop_apiserver();
    // For 30 s without the API server, every session stays up.
    common::assert_for(
        "the mesh stays up while the API server is down",
        std::time::Duration::from_secs(30),
        std::time::Duration::from_secs(1),
        || {
            for i in 1..=3 {
                c.established(i, 2)?;
            }
            Ok::<(), String>(())
        },
    );
    // An ADD meanwhile fails instead of hanging (its code and time are reported).
    let late = common::Netns::new(&c._lock, "dlate");
    let t = std::time::Instant::now();
    let (ok, answer) = c.cni(3, "ADD", "down-late", Some(late.name()), None);
    let add_took = t.elapsed();
    eprintln!("ADD while the API server is down: ok={ok} after {add_took:?}: {answer}");
    assert!(!ok, "an ADD cannot succeed without the datastore: {answer}");
    assert_eq!(
        answer["code"], 11,
        "ADD without the API server answers 11 (try again later): {answer}"
    );
    // The issue asks for 2 s (the datastore's bound is 1.5 s); 10 s leaves room for a slow
    // machine and still proves the ADD does not wait for the API server's return.
    assert!(
        add_took <= std::time::Duration::from_secs(10),
        "ADD answered after {add_took:?}: it waits for the API server"
    );

    // A peer is added while the API server is down (straight into etcd, where it would have
    // gone had another API server replica taken the write): the agents' watches must not
    // miss it when the API server returns.
    c.etcd_put(
        "/registry/ferrovia.io/bgppeers/tor",
        &serde_json::json!({
            "apiVersion": "ferrovia.io/v1alpha1", "kind": "BGPPeer",
            "metadata": {"name": "tor", "uid": "0f0e0d0c-0000-4000-8000-000000000254",
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"name": "tor", "address": "198.18.0.254", "asNumber": 65000}
        }),
    );

    c.cp.as_mut().expect("control plane").start_apiserver();
    for i in 1..=3 {
        wait_until("mesh + ToR after the outage", CONVERGE, POLL, || {
            c.established(i, 3)
        });
    }
    // Nothing duplicated: one BGPPeer, each agent has each peer once, and the failed ADD
    // left no handle behind.
    let peers = c.kube_items("bgppeers.ferrovia.io");
    assert_eq!(peers.len(), 1, "{peers:?}");
    for i in 1..=3 {
        let mut addrs = c.peer_addresses(i).expect("status");
        addrs.sort();
        let n = addrs.len();
        addrs.dedup();
        assert_eq!(n, addrs.len(), "node{i} has a peer twice: {addrs:?}");
        assert_eq!(n, 3, "node{i}: the two other nodes and the ToR: {addrs:?}");
    }
    let handles = c.kube_items("ipamhandles.ferrovia.io");
    assert!(
        !handles
            .iter()
            .any(|h| h["spec"]["containerId"] == "down-late"),
        "the ADD that failed holds no address: {handles:?}"
    );
    // New pods work again.
    let d = c.add_pod(3, "down-d");
    let to_d = d.ip(false).expect("v4");
    wait_until("new pod reachable", CONVERGE, POLL, || ping(&a, &to_d));

    let out = pinger.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_counts(&text);
    eprintln!("pod-to-pod traffic across the outage: {received} of {sent} packets");
    assert_eq!(
        received, sent,
        "no packet lost between running pods:\n{text}"
    );
}

/// A `BGPPeer` for a [`common::kube_checks::Tor`] at `address`, created through the API.
fn create_tor_peer(c: &Cluster, name: &str, address: &str) {
    c.control_plane()
        .call(
            "POST",
            "/apis/ferrovia.io/v1alpha1/bgppeers",
            Some(&serde_json::json!({
                "apiVersion": "ferrovia.io/v1alpha1", "kind": "BGPPeer",
                "metadata": {"name": name},
                "spec": {"name": name, "address": address, "asNumber": 65000}
            })),
        )
        .expect_status(201, "create a BGPPeer");
}

/// Pings from `from` to `to`, 5 per second, `count` of them, in the background.
fn pinger(from: &Pod, to: &str, count: u32) -> std::process::Child {
    std::process::Command::new("ip")
        .args(["netns", "exec", from.ns.name(), "ping", "-4", "-i", "0.2"])
        .args(["-W", "1", "-c", &count.to_string(), to])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ping")
}

/// Waits for a pinger and asserts that every packet came back.
fn no_packet_lost(pinger: std::process::Child, what: &str) {
    let out = pinger.wait_with_output().expect("ping output");
    let text = String::from_utf8_lossy(&out.stdout);
    let (sent, received) = ping_counts(&text);
    eprintln!("pod-to-pod traffic {what}: {received} of {sent} packets");
    assert!(sent > 0, "{text}");
    assert_eq!(received, sent, "no packet lost {what}:\n{text}");
}

/// A CNI ADD on node `i` while the datastore hangs: it answers error 11 (try again later)
/// instead of waiting. The time is printed; the bound asserted leaves room for a machine
/// twice as slow (the issue asks for 2 s; IPAM datastore calls are bounded at 1.5 s).
fn add_answers_11_fast(c: &Cluster, i: u8, id: &str, what: &str) {
    let ns = common::Netns::new(&c._lock, id);
    let t = std::time::Instant::now();
    let (ok, answer) = c.cni(i, "ADD", id, Some(ns.name()), None);
    let took = t.elapsed();
    eprintln!("ADD while {what}: ok={ok} after {took:?}: {answer}");
    assert!(!ok, "an ADD cannot succeed while {what}: {answer}");
    assert_eq!(answer["code"], 11, "ADD while {what} answers 11: {answer}");
    assert!(
        took <= std::time::Duration::from_secs(10),
        "ADD while {what} answered after {took:?}: it waits for the datastore"
    );
}

/// The API server frozen (SIGSTOP: connections hang instead of being refused) for 25 s,
/// longer than the agents' request timeout, then etcd frozen for 10 s: running pods keep
/// forwarding (no packet lost), the mesh stays, an ADD answers 11 at once; when they run
/// again, a peer created just before the freeze and one created just after it are both
/// peered, the failed ADDs hold nothing, and new pods work.
#[test]
fn a_hung_api_server_or_etcd_loses_no_packet_and_add_answers_11_at_once() {
    let c = Cluster::kubernetes("khung", 3, IPAM);
    let mesh = |i: u8| -> Vec<String> {
        let mut m: Vec<String> = (1..=3u8)
            .filter(|&j| j != i)
            .map(|j| format!("198.18.0.{j}"))
            .collect();
        m.sort();
        m
    };
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    let a = c.add_pod(1, "hang-a");
    let b = c.add_pod(2, "hang-b");
    let to = b.ip(false).expect("v4");
    wait_until("pod to pod", CONVERGE, POLL, || ping(&a, &to));
    let _tor1 = c.bird_tor("htor1", "198.18.0.254");
    let _tor2 = c.bird_tor("htor2", "198.18.0.253");

    // Traffic across the whole freeze (5 per second for 40 s).
    let traffic = pinger(&a, &to, 200);
    // A peer created just before the freeze: the agents may or may not have its watch
    // event yet.
    create_tor_peer(&c, "tor1", "198.18.0.254");
    let frozen = c.control_plane().pause_apiserver();
    common::assert_for(
        "the mesh stays up while the API server hangs",
        std::time::Duration::from_secs(25),
        std::time::Duration::from_secs(1),
        || {
            for i in 1..=3 {
                let up = c.established_peers(i)?;
                for m in mesh(i) {
                    if !up.contains(&m) {
                        return Err(format!("node{i}: {m} not Established: {up:?}"));
                    }
                }
            }
            Ok::<(), String>(())
        },
    );
    add_answers_11_fast(&c, 3, "hang-late", "the API server hangs");
    frozen.resume();
    // A peer created right after the API server runs again.
    create_tor_peer(&c, "tor2", "198.18.0.253");
    for i in 1..=3 {
        wait_until("mesh + both ToRs after the freeze", CONVERGE, POLL, || {
            let up = c.established_peers(i)?;
            let mut want = mesh(i);
            want.extend(["198.18.0.253".to_string(), "198.18.0.254".to_string()]);
            want.sort();
            if up == want {
                Ok(())
            } else {
                Err(format!("node{i}: Established {up:?}, want {want:?}"))
            }
        });
    }
    no_packet_lost(traffic, "across the API server's freeze");
    let d = c.add_pod(3, "hang-d");
    let to_d = d.ip(false).expect("v4");
    wait_until("new pod reachable", CONVERGE, POLL, || ping(&a, &to_d));

    // etcd frozen: the API server's requests hang behind it.
    let traffic = pinger(&a, &to, 75);
    let frozen = c.control_plane().pause_etcd();
    add_answers_11_fast(&c, 2, "hang-etcd", "etcd hangs");
    common::assert_for(
        "the sessions stay up while etcd hangs",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_secs(1),
        || {
            for i in 1..=3 {
                c.established(i, 4)?;
            }
            Ok::<(), String>(())
        },
    );
    frozen.resume();
    no_packet_lost(traffic, "across etcd's freeze");
    let e = c.add_pod_when_ready(2, "hang-e");
    let to_e = e.ip(false).expect("v4");
    wait_until(
        "new pod reachable after etcd's freeze",
        CONVERGE,
        POLL,
        || ping(&a, &to_e),
    );

    // The ADD during the API server's freeze wrote nothing (its first request hung, and it
    // gave up there). The one during etcd's freeze may have left the handle it was writing
    // (the API server passes the write on when etcd runs again): the runtime's DEL after a
    // failed ADD frees it, as CNI requires.
    let held = |id: &str| {
        c.kube_items("ipamhandles.ferrovia.io")
            .iter()
            .any(|h| h["spec"]["containerId"] == id)
    };
    assert!(!held("hang-late"), "the ADD that failed holds no address");
    eprintln!(
        "after etcd's freeze, the failed ADD's handle {}",
        if held("hang-etcd") {
            "was left (until DEL)"
        } else {
            "was not written"
        }
    );
    let (ok, answer) = c.cni(2, "DEL", "hang-etcd", None, None);
    assert!(ok, "DEL after the failed ADD: {answer}");
    assert!(!held("hang-etcd"), "DEL freed what the failed ADD wrote");
    // Each peer exists once.
    assert_eq!(c.kube_items("bgppeers.ferrovia.io").len(), 2);
}

/// Lines of node `i`'s log that report ignoring an invalid object named `name`.
fn ignored_lines(c: &Cluster, i: u8, name: &str) -> usize {
    c.node(i)
        .log_text()
        .lines()
        .filter(|l| l.contains("ignoring an invalid") && l.contains(name))
        .count()
}

/// Objects made by hand that the agents cannot use. The schema refuses what it can (422
/// naming the field). What passes it — an IPAMBlock whose allocations repeat an ordinal, an
/// IPPool overlapping the agents' pool, a Node whose `ferrovia.io/addresses` annotation is
/// not an address — each agent logs once with the object's name, however often it wakes
/// up, and ignores: pods still get addresses (never of the overlapping pool's block size)
/// and ping, the mesh stays, and no kernel routes the broken block.
#[test]
fn bad_objects_are_refused_by_the_schema_or_logged_once_and_ignored() {
    use serde_json::json;
    let c = Cluster::kubernetes("kbad", 2, IPAM);
    for i in 1..=2 {
        wait_until("mesh", CONVERGE, POLL, || c.established(i, 1));
    }
    let a = c.add_pod(1, "bad-a");
    let cp = c.control_plane();
    let post = |plural: &str, kind: &str, name: &str, spec: Value| {
        cp.call(
            "POST",
            &format!("/apis/ferrovia.io/v1alpha1/{plural}"),
            Some(&json!({"apiVersion": "ferrovia.io/v1alpha1", "kind": kind,
                         "metadata": {"name": name}, "spec": spec})),
        )
    };

    // What the schema can see, it refuses, naming the field.
    for (spec, field) in [
        (
            json!({"cidr": "10.244.201.0/26", "affinity": "node1",
                   "allocations": [{"ordinal": 5000, "handle": "x:eth0"}]}),
            "ordinal",
        ),
        (
            json!({"cidr": "10.244.201.0/26", "affinity": ""}),
            "affinity",
        ),
        (
            json!({"cidr": "10.244.201.0/26", "affinity": "node1",
                   "allocations": [{"ordinal": 1, "handle": "no-interface"}]}),
            "handle",
        ),
    ] {
        let r = post("ipamblocks", "IPAMBlock", "10-244-201-0-26", spec.clone());
        assert_eq!(r.status, 422, "{spec} must be refused: {}", r.body);
        assert!(
            r.body.contains(field),
            "the refusal names {field}: {}",
            r.body
        );
    }

    // What passes the schema.
    let block = "10-244-200-0-26";
    post(
        "ipamblocks",
        "IPAMBlock",
        block,
        json!({"cidr": "10.244.200.0/26", "affinity": "node1",
               "allocations": [{"ordinal": 3, "handle": "bad1:eth0"},
                               {"ordinal": 3, "handle": "bad2:eth0"}]}),
    )
    .expect_status(201, "a block whose allocations repeat an ordinal");
    let pool = "10-244-0-0-24";
    post(
        "ippools",
        "IPPool",
        pool,
        json!({"cidr": "10.244.0.0/24", "blockSize": 28, "createdMs": 4_000_000_000_000u64}),
    )
    .expect_status(201, "a pool overlapping the agents' pool, created after it");
    let node1 = cp
        .call("GET", "/api/v1/nodes/node1", None)
        .expect_status(200, "read node1")
        .json();
    let mut annotations = node1["metadata"]["annotations"].clone();
    annotations["ferrovia.io/addresses"] = json!("[\"198.18.0.300\"]");
    annotations["ferrovia.io/routerId"] = json!("198.18.0.9");
    cp.call(
        "POST",
        "/api/v1/nodes",
        Some(&json!({"apiVersion": "v1", "kind": "Node",
                     "metadata": {"name": "node9", "annotations": annotations}})),
    )
    .expect_status(201, "a Node with a bad address annotation");

    for i in 1..=2 {
        for name in [block, pool, "node9"] {
            wait_until(
                &format!("node{i} reports ignoring {name}"),
                CONVERGE,
                POLL,
                || match ignored_lines(&c, i, name) {
                    0 => Err(format!("not yet:\n{}", c.node(i).log_text())),
                    _ => Ok(()),
                },
            );
        }
    }
    // Wake-ups: the bad objects change (labels) again and again, pods come and go.
    for round in 0..3 {
        for (path, what) in [
            (
                format!("/apis/ferrovia.io/v1alpha1/ipamblocks/{block}"),
                "block",
            ),
            (format!("/apis/ferrovia.io/v1alpha1/ippools/{pool}"), "pool"),
            ("/api/v1/nodes/node9".to_string(), "node"),
        ] {
            cp.call(
                "PATCH",
                &path,
                Some(&json!({"metadata": {"labels": {"round": round.to_string()}}})),
            )
            .expect_status(200, &format!("label the bad {what}"));
        }
        for i in 1..=2 {
            let p = c.add_pod(i, &format!("bad-r{round}-n{i}"));
            let to = p.ip(false).expect("v4");
            wait_until("new pod reachable", CONVERGE, POLL, || ping(&a, &to));
        }
    }

    // Logged once, with the name.
    for i in 1..=2 {
        for name in [block, pool, "node9"] {
            assert_eq!(
                ignored_lines(&c, i, name),
                1,
                "node{i} logs {name} exactly once:\n{}",
                c.node(i).log_text()
            );
        }
    }
    // Never applied: every block claimed has the agents' pool's size; no kernel routes the
    // broken block; node9 is no peer.
    for b in c.kube_items("ipamblocks.ferrovia.io") {
        let cidr = b["spec"]["cidr"].as_str().unwrap_or_default().to_string();
        if b["metadata"]["name"] == block {
            continue;
        }
        assert!(
            cidr.ends_with("/26") || cidr.ends_with("/122"),
            "a block of the overlapping pool was claimed: {b}"
        );
    }
    for i in 1..=2 {
        assert!(
            !c.node(i).has_route("10.244.200.0/26"),
            "node{i} routes the broken block: {:?}",
            c.node(i).kernel_routes()
        );
        c.established(i, 1).expect("the mesh stays up");
        let peers = c.peer_addresses(i).expect("status");
        assert_eq!(peers.len(), 1, "node{i}: only the other node: {peers:?}");
    }
}
