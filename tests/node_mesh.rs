//! The node agent: several agents in their own network namespaces on one L2 segment (a
//! bridge in another namespace), sharing one SQLite datastore, form a full iBGP mesh and
//! route each other's blocks natively through the kernel.
//!
//! Each node has a veth pair `pod0`/`pod0p` holding a /32 and /128 from its block, standing
//! in for a pod until the CNI exists.

use ferrovia_testsupport::common;

use common::proc::Proc;
use common::{wait_until, Capture, Netns};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::{libc_sigterm, Cluster, CONVERGE, POLL};

#[test]
fn three_nodes_mesh_and_route_pod_traffic_natively_v4_and_v6() {
    let c = Cluster::new("mesh3", 3);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    wait_until("blocks in every kernel", CONVERGE, POLL, || {
        c.routed(&[1, 2, 3])
    });

    // Every route carries our protocol number; nothing else was encapsulated or tunnelled.
    for i in 1..=3 {
        let links = c.node(i).ns.ip(&["-d", "link", "show"]);
        for kind in ["vxlan", "ipip", "gre", "sit", "geneve", "wireguard"] {
            assert!(
                !links.contains(kind),
                "node{i} has a {kind} device:\n{links}"
            );
        }
    }

    // Capture on the segment while node1's "pod" pings node3's, both families. The capture
    // listens before the first ping and stops once it holds what is asserted below.
    let cap = Capture::start(
        c.br.name(),
        "br0",
        "icmp or icmp6 or udp port 4789 or udp port 8472 or ip proto 4 or ip proto 41 or ip proto 47",
    );
    let n1 = &c.node(1).ns;
    let ping4 = n1.exec(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "10",
        "-I",
        "10.244.1.1",
        "10.244.3.1",
    ]);
    assert!(
        ping4.status.success(),
        "IPv4 ping failed: {}",
        String::from_utf8_lossy(&ping4.stdout)
    );
    let ping6 = n1.exec(&[
        "ping",
        "-6",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "10",
        "-I",
        "fd00:10:244:1::1",
        "fd00:10:244:3::1",
    ]);
    assert!(
        ping6.status.success(),
        "IPv6 ping failed: {}",
        String::from_utf8_lossy(&ping6.stdout)
    );
    let text = cap
        .finish_when_seen(&[
            "10.244.1.1 > 10.244.3.1: ICMP echo request",
            "10.244.3.1 > 10.244.1.1: ICMP echo reply",
            "fd00:10:244:1::1 > fd00:10:244:3::1: ICMP6, echo request",
        ])
        .join("\n");
    assert!(
        text.contains("10.244.1.1 > 10.244.3.1: ICMP echo request"),
        "plain IPv4 packets between the pod addresses on the wire:\n{text}"
    );
    assert!(
        text.contains("10.244.3.1 > 10.244.1.1: ICMP echo reply"),
        "reply routed back natively:\n{text}"
    );
    assert!(
        text.contains("fd00:10:244:1::1 > fd00:10:244:3::1: ICMP6, echo request"),
        "plain IPv6 packets:\n{text}"
    );
    for bad in ["4789", "8472", "ipip-proto-4", "GREv0", "ip-proto-41"] {
        assert!(
            !text.contains(bad),
            "encapsulation ({bad}) seen on the wire:\n{text}"
        );
    }

    // Status and metrics agree with the kernel.
    for i in 1..=3 {
        let n = c.node(i);
        let kernel = n.kernel_routes().len();
        assert_eq!(
            kernel,
            6,
            "node{i}: 2 blackholes + 4 learned: {:?}",
            n.kernel_routes()
        );
        let s = n.status().expect("status");
        assert_eq!(s["routes"]["installed"], kernel, "node{i} status: {s}");
        for p in s["peers"].as_array().expect("peers") {
            assert_eq!(p["type"], "mesh");
            assert_eq!(p["session"], "iBGP");
            assert_eq!(p["prefixesReceived"], 2, "{p}");
        }
        let m = n.metrics();
        assert!(
            m.contains(&format!("ferrovia_kernel_routes_installed {kernel}")),
            "node{i} metrics:\n{m}"
        );
        assert_eq!(m.matches("ferrovia_bgp_peer_state{").count(), 2, "{m}");
        let mut p = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool (Debian package prometheus) is installed by scripts/test.sh");
        {
            use std::io::Write;
            p.stdin
                .take()
                .expect("stdin")
                .write_all(m.as_bytes())
                .expect("write");
        }
        let o = p.wait_with_output().expect("promtool");
        assert!(
            o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
            "promtool check metrics is not clean: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        let ready = n.ns.exec(&[
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "http://127.0.0.1:9091/readyz",
        ]);
        assert_eq!(String::from_utf8_lossy(&ready.stdout), "200");
    }
}

#[test]
fn a_node_added_to_the_datastore_joins_and_leaves_on_removal_without_restarts() {
    let mut c = Cluster::new("mesh4", 3);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    wait_until("three nodes routed", CONVERGE, POLL, || {
        c.routed(&[1, 2, 3])
    });

    c.add_node(4);
    // Node 4's agent registers itself at start; nobody else restarts.
    wait_until("node4 registered", CONVERGE, POLL, || {
        let out = c.cli(&["node", "list", "--json"]);
        if out.contains("\"node4\"") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let t = Instant::now();
    wait_until("four nodes meshed and routed", CONVERGE, POLL, || {
        for i in 1..=4 {
            c.established(i, 3)?;
        }
        c.routed(&[1, 2, 3, 4])
    });
    eprintln!(
        "node4 meshed and routed {:?} after registration",
        t.elapsed()
    );

    // Removed from the datastore: every other node drops it and its block.
    c.cli(&["node", "remove", "node4"]);
    wait_until("node4's block withdrawn everywhere", CONVERGE, POLL, || {
        for i in 1..=3 {
            let n = c.node(i);
            if n.has_route("10.244.4.0/26") || n.has_route("fd00:10:244:4::/122") {
                return Err(format!(
                    "node{i} still has node4's block: {:?}",
                    n.kernel_routes()
                ));
            }
            let s = n.status()?;
            if s["peers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["address"] == "198.18.0.4"))
            {
                return Err(format!("node{i} still peers with node4"));
            }
        }
        Ok(())
    });
    // Its own agent saw its record go and drained: GRACEFUL_SHUTDOWN, bgp.drainWait (10 s),
    // withdraw, Cease, its kernel state removed, and it stopped (exit status 0).
    let status = wait_until(
        "node4's agent drained and stopped",
        Duration::from_secs(120),
        POLL,
        || match c.node_mut(4).agent.as_mut().and_then(|a| a.try_wait()) {
            Some(s) => Ok(s),
            None => Err("still running"),
        },
    );
    assert!(
        status.success(),
        "node4's agent failed its drain ({status}): {}",
        c.node(4).log_text()
    );
    let left = c.node(4).kernel_routes();
    assert!(left.is_empty(), "node4 keeps routes of ours: {left:?}");
    let log = c.node(4).log_text();
    assert!(
        log.contains("this node's record was removed") && log.contains("drained and stopped"),
        "node4's log tells why it left: {log}"
    );
    c.node_mut(4).kill(libc_sigterm());
    c.routed(&[1, 2, 3]).expect("the others stay routed");
}

#[test]
fn an_external_bird_tor_learns_every_block_and_its_route_reaches_every_kernel() {
    let c = Cluster::new("tor", 3);
    // The ToR: BIRD on the segment, accepting any node of AS 64512 (dynamic neighbours).
    let lock_free_ns = Netns::new(&c._lock, "tor");
    Netns::veth(&lock_free_ns, "eth0", &c.br, "ptor");
    c.br.ip(&["link", "set", "ptor", "master", "br0"]);
    lock_free_ns.addr("eth0", "198.18.0.254/24");
    lock_free_ns.addr("eth0", "fd00:198:18::254/64");
    let bird_conf = c.dir.path().join("tor.conf");
    std::fs::write(
        &bird_conf,
        "router id 198.18.0.254;\n\
         protocol device {}\n\
         protocol direct { ipv4; ipv6; }\n\
         protocol static s4 { ipv4; route 10.244.200.0/24 blackhole; }\n\
         protocol static s6 { ipv6; route fd00:10:244:200::/64 blackhole; }\n\
         protocol bgp nodes {\n  local 198.18.0.254 as 65000;\n  neighbor range 198.18.0.0/24 as 64512;\n  dynamic name \"node\";\n\
           ipv4 { import all; export where source = RTS_STATIC; };\n\
           ipv6 { import all; export where source = RTS_STATIC; next hop address fd00:198:18::254; };\n}\n",
    )
    .expect("bird config");
    let ctl = c.dir.path().join("tor.ctl");
    let bird_log = c.dir.path().join("tor.log");
    let mut bird = Proc::spawn(
        lock_free_ns.name(),
        &[
            "bird",
            "-f",
            "-c",
            &bird_conf.display().to_string(),
            "-s",
            &ctl.display().to_string(),
        ],
        &bird_log,
        &[],
    );
    // A global peer in the datastore: every node peers with the ToR, no restart.
    c.cli(&[
        "peer",
        "add",
        "tor",
        "--address",
        "198.18.0.254",
        "--as-number",
        "65000",
    ]);
    for i in 1..=3 {
        wait_until("mesh + ToR", CONVERGE, POLL, || c.established(i, 3));
    }
    wait_until("ToR learned all blocks", CONVERGE, POLL, || {
        let out = Command::new("birdc")
            .args(["-s", &ctl.display().to_string(), "show", "route"])
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for i in 1..=3 {
            for p in [format!("10.244.{i}.0/26"), format!("fd00:10:244:{i}::/122")] {
                if !text.contains(&p) {
                    return Err(format!("BIRD lacks {p}:\n{text}"));
                }
            }
        }
        Ok(())
    });
    wait_until("ToR route in every kernel", CONVERGE, POLL, || {
        for i in 1..=3 {
            let n = c.node(i);
            for w in [
                "10.244.200.0/24 via 198.18.0.254 dev eth0",
                "fd00:10:244:200::/64 via fd00:198:18::254 dev eth0",
            ] {
                if !n.has_route(w) {
                    return Err(format!("node{i} lacks `{w}`: {:?}", n.kernel_routes()));
                }
            }
            let s = n.status()?;
            let tor = s["peers"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["address"] == "198.18.0.254").cloned())
                .ok_or("no ToR peer")?;
            if tor["type"] != "global" || tor["session"] != "eBGP" {
                return Err(format!("ToR peer: {tor}"));
            }
        }
        Ok(())
    });

    // Cluster-wide settings change while agents run: mesh off leaves only the ToR session.
    c.cli(&["cluster", "set", "--mesh", "off"]);
    wait_until("mesh sessions gone, ToR kept", CONVERGE, POLL, || {
        for i in 1..=3 {
            let s = c.node(i).status()?;
            let peers: Vec<String> = s["peers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| format!("{}/{}", p["address"], p["type"]))
                        .collect()
                })
                .unwrap_or_default();
            if peers != ["\"198.18.0.254\"/\"global\""] {
                return Err(format!("node{i} peers: {peers:?}"));
            }
            if c.node(i).has_route(&format!("10.244.{}.0/26", i % 3 + 1)) {
                return Err(format!(
                    "node{i} still routes a neighbour's block without the mesh"
                ));
            }
        }
        Ok(())
    });
    c.cli(&["cluster", "set", "--mesh", "on"]);
    for i in 1..=3 {
        wait_until("mesh back", CONVERGE, POLL, || c.established(i, 3));
    }
    wait_until("routed again", CONVERGE, POLL, || c.routed(&[1, 2, 3]));
    bird.kill();
}

#[test]
fn restart_after_sigkill_removes_stale_routes_of_ours_and_keeps_other_protocols() {
    let mut c = Cluster::new("recon", 3);
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    wait_until("routed", CONVERGE, POLL, || c.routed(&[1, 2, 3]));
    c.node_mut(1).kill(9);
    let ns = &c.node(1).ns;
    ns.ip(&[
        "route",
        "add",
        "10.244.99.0/24",
        "via",
        "198.18.0.2",
        "proto",
        "0xf1",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.244.98.0/24",
        "via",
        "198.18.0.3",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "route",
        "add",
        "10.244.97.0/24",
        "via",
        "198.18.0.3",
        "proto",
        "bird",
    ]);
    let db = c.db.clone();
    c.node_mut(1).start(&db);
    wait_until("stale route of ours removed", CONVERGE, POLL, || {
        let n = c.node(1);
        if n.has_route("10.244.99.0/24") {
            return Err(format!("stale route still there: {:?}", n.kernel_routes()));
        }
        Ok(())
    });
    wait_until("routed again", CONVERGE, POLL, || c.routed(&[1, 2, 3]));
    let all = c.node(1).ns.ip(&["route", "show"]);
    assert!(
        all.contains("10.244.98.0/24 via 198.18.0.3 dev eth0 proto static"),
        "static route kept:\n{all}"
    );
    assert!(
        all.contains("10.244.97.0/24 via 198.18.0.3 dev eth0 proto bird"),
        "BIRD's route kept:\n{all}"
    );
}

#[test]
fn the_first_agent_can_seed_the_cluster_with_the_mesh_off() {
    let c = Cluster::with_bgp("nomesh", 2, "", ", mesh: false");
    wait_until("both nodes registered", CONVERGE, POLL, || {
        let out = c.cli(&["node", "list", "--json"]);
        if out.contains("\"node1\"") && out.contains("\"node2\"") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let cluster: serde_json::Value =
        serde_json::from_str(&c.cli(&["cluster", "show", "--json"])).expect("json");
    assert_eq!(
        cluster["mesh"], false,
        "seeded from the agents' config: {cluster}"
    );
    // No mesh sessions while it is off. Anchor: a peer added to the datastore after both
    // nodes registered. Once an agent shows it, the agent has read the datastore with both
    // nodes in it (the peers, nodes and cluster settings are read together), so a mesh
    // session would show by then.
    c.cli(&[
        "peer",
        "add",
        "anchor",
        "--address",
        "198.18.0.200",
        "--as-number",
        "65000",
    ]);
    for i in 1..=2 {
        let s = wait_until("the anchor peer in the status", CONVERGE, POLL, || {
            let s = c.node(i).status()?;
            let has = s["peers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["address"] == "198.18.0.200"));
            if has {
                Ok(s)
            } else {
                Err(format!("node{i}: {s}"))
            }
        });
        assert_eq!(
            s["peers"].as_array().map(Vec::len),
            Some(1),
            "node{i} has no mesh peer (only the anchor): {s}"
        );
    }
    c.cli(&["peer", "remove", "anchor"]);
    for i in 1..=2 {
        wait_until("the anchor peer gone", CONVERGE, POLL, || {
            let s = c.node(i).status()?;
            if s["peers"].as_array().map(Vec::len) == Some(0) {
                Ok(())
            } else {
                Err(format!("node{i}: {s}"))
            }
        });
    }
    // ...and the datastore's value rules from then on.
    c.cli(&["cluster", "set", "--mesh", "on"]);
    for i in 1..=2 {
        wait_until("meshed after cluster set", CONVERGE, POLL, || {
            c.established(i, 1)
        });
    }
}
