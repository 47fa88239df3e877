//! The node's address and the pods' MTU, on real kernels.
//!
//! - `node.addressAutodetection`: a node namespace with several interfaces (a docker-like
//!   bridge, a veth and a pod-like veth before the uplink, a second uplink); each method picks
//!   the address it documents, `ferrovia status` says which and why, and a method that finds
//!   nothing stops the agent with a message naming the key.
//! - MTU: on a 9000-byte underlay, pods whose CNI configuration names no `mtu` get 9000 on
//!   their eth0 (the MTU of the node's interface toward its peers), and an 8972-byte ping
//!   with DF crosses nodes; an explicit `mtu` still wins.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, CONVERGE, POLL};
use common::proc::Proc;
use common::{net_lock, wait_until, Netns};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// A node namespace: interfaces created in index order docker0 (bridge, 172.17.0.1),
/// vethx (10.99.0.1), fv0123456789abc (a pod veth's host side, 10.98.0.1), eth0 (MTU 9000,
/// 198.18.0.1/24, fd00:198:18::1/64, to a peer namespace) and eth1 (198.19.0.1/24).
fn node_ns(lock: &common::NetLock) -> (Netns, Netns) {
    let ns = Netns::new(lock, "addr");
    let peer = Netns::new(lock, "addr-peer");
    ns.ip(&["link", "add", "docker0", "type", "bridge"]);
    ns.link_up("docker0");
    ns.addr("docker0", "172.17.0.1/16");
    ns.ip(&[
        "link", "add", "vethx", "type", "veth", "peer", "name", "vethxp",
    ]);
    ns.link_up("vethx");
    ns.link_up("vethxp");
    ns.addr("vethx", "10.99.0.1/24");
    ns.ip(&[
        "link",
        "add",
        "fv0123456789abc",
        "type",
        "veth",
        "peer",
        "name",
        "fvpodside",
    ]);
    ns.link_up("fv0123456789abc");
    ns.link_up("fvpodside");
    ns.addr("fv0123456789abc", "10.98.0.1/24");
    Netns::veth(&ns, "eth0", &peer, "eth0");
    ns.ip(&["link", "set", "eth0", "mtu", "9000"]);
    peer.ip(&["link", "set", "eth0", "mtu", "9000"]);
    ns.addr("eth0", "198.18.0.1/24");
    ns.addr("eth0", "fd00:198:18::1/64");
    Netns::veth(&ns, "eth1", &peer, "eth1");
    ns.addr("eth1", "198.19.0.1/24");
    peer.addr("eth1", "198.19.0.254/24");
    (ns, peer)
}

fn write_config(dir: &Path, name: &str, auto: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    let sock = dir.join(format!("{name}.sock"));
    std::fs::write(
        &path,
        format!(
            "node: {{ name: {name}, asNumber: 64512, routerId: 198.18.0.1, addressAutodetection: {auto} }}\n\
             status: {{ socket: {} }}\n",
            sock.display()
        ),
    )
    .expect("write config");
    path.display().to_string()
}

fn status(sock: &Path) -> Result<Value, String> {
    let out = Command::new(common::bin())
        .args(["status", "--json", "--socket"])
        .arg(sock)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// Starts an agent with `auto` as its `addressAutodetection` and returns what its status
/// says about the node's addresses (the agent is stopped before returning).
fn detected(ns: &Netns, dir: &Path, name: &str, auto: &str) -> Vec<Value> {
    let conf = write_config(dir, name, auto);
    let log = dir.join(format!("{name}.log"));
    let mut agent = Proc::spawn(
        ns.name(),
        &[common::bin(), "agent", "--config", &conf],
        &log,
        &[],
    );
    let sock = dir.join(format!("{name}.sock"));
    let s = wait_until("agent status", CONVERGE, POLL, || status(&sock));
    let _ = agent.terminate(common::START);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("node address"),
        "the choice is logged: {text}"
    );
    s["node"]["addresses"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn pick(addrs: &[Value], v6: bool) -> &Value {
    addrs
        .iter()
        .find(|a| a["address"].as_str().is_some_and(|s| s.contains(':') == v6))
        .unwrap_or_else(|| {
            panic!(
                "no {} address in {addrs:?}",
                if v6 { "IPv6" } else { "IPv4" }
            )
        })
}

#[test]
fn each_autodetection_method_picks_its_address_and_status_says_why() {
    let lock = net_lock();
    let (ns, _peer) = node_ns(&lock);
    let dir = tempfile::tempdir().expect("tempdir");

    let a = detected(
        &ns,
        dir.path(),
        "ff",
        "{ ipv4: first-found, ipv6: first-found }",
    );
    let v4 = pick(&a, false);
    assert_eq!(
        v4["address"], "198.18.0.1",
        "bridges and veths skipped: {a:?}"
    );
    assert_eq!(v4["interface"], "eth0");
    assert_eq!(v4["mtu"], 9000);
    assert_eq!(v4["method"], "first-found");
    assert!(
        v4["reason"]
            .as_str()
            .is_some_and(|r| r.contains("skipping")),
        "{v4}"
    );
    assert_eq!(
        pick(&a, true)["address"],
        "fd00:198:18::1",
        "link-local skipped"
    );

    for (name, method, want, ifname) in [
        ("if", "interface=eth1", "198.19.0.1", "eth1"),
        ("ifre", "interface=^eth[0-9]$", "198.18.0.1", "eth0"),
        ("skip", "skip-interface=eth0", "198.19.0.1", "eth1"),
        ("reach", "can-reach=198.19.0.254", "198.19.0.1", "eth1"),
        (
            "cidr",
            "cidr=192.0.2.0/24,198.19.0.0/16",
            "198.19.0.1",
            "eth1",
        ),
    ] {
        let a = detected(&ns, dir.path(), name, &format!("{{ ipv4: \"{method}\" }}"));
        let v4 = pick(&a, false);
        assert_eq!(v4["address"], want, "{method}: {a:?}");
        assert_eq!(v4["interface"], ifname, "{method}: {a:?}");
        assert_eq!(v4["method"], method, "{a:?}");
    }

    // Nothing found: the agent does not start, and says which key to fix.
    let conf = write_config(dir.path(), "none", "{ ipv4: interface=wlan.* }");
    let out = ns.exec(&[common::bin(), "agent", "--config", &conf]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.addressAutodetection") && err.contains("wlan"),
        "{err}"
    );

    // Refused before anything starts: kubernetes-internal-ip without the Kubernetes datastore and a
    // method that does not exist.
    for (auto, needle) in [
        (
            "{ ipv4: kubernetes-internal-ip }",
            "needs the Kubernetes datastore",
        ),
        ("{ ipv4: bogus }", "first-found"),
    ] {
        let conf = write_config(dir.path(), "bad", auto);
        let out = Command::new(common::bin())
            .args(["check-config", &conf])
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{auto}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("node.addressAutodetection.ipv4") && err.contains(needle),
            "{err}"
        );
    }
}

const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";

fn link_mtu(ns: &Netns, dev: &str) -> u64 {
    let v: Value =
        serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", dev])).expect("ip -j");
    v[0]["mtu"].as_u64().expect("mtu")
}

#[test]
fn pods_get_the_underlay_mtu_and_jumbo_frames_cross_nodes() {
    let mut c = Cluster::with("mtu", 0, IPAM);
    c.link_mtu = Some(9000);
    c.add_node(1);
    c.add_node(2);
    for i in 1..=2 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 1));
        let s = c.node(i).status().expect("status");
        assert_eq!(s["node"]["podMtu"], 9000, "{s}");
    }
    let conf = |i: u8, mtu: &str| {
        format!(
            r#"{{"cniVersion":"1.1.0","name":"ferrovia","type":"ferrovia-cni","agentSocket":"{}"{mtu}}}"#,
            c.node(i).sock().display()
        )
    };
    let mut pods = Vec::new();
    for (i, name) in [(1u8, "mtu-a"), (2, "mtu-b")] {
        let ns = Netns::new(&c._lock, name);
        let (ok, result) = c.cni(i, "ADD", name, Some(ns.name()), Some(conf(i, "")));
        assert!(ok, "ADD {name}: {result}");
        assert_eq!(link_mtu(&ns, "eth0"), 9000, "{name}'s eth0");
        assert_eq!(result["interfaces"][1]["mtu"], 9000, "{result}");
        let ip = |v6: bool| {
            result["ips"]
                .as_array()
                .and_then(|a| {
                    a.iter().find_map(|x| {
                        let s = x["address"].as_str()?.split('/').next()?.to_string();
                        (s.contains(':') == v6).then_some(s)
                    })
                })
                .expect("address")
        };
        pods.push((i, name, ns, ip(false), ip(true)));
    }
    // 8972 + 28 = 9000 bytes (IPv4), 8952 + 48 = 9000 (IPv6), Don't Fragment, across nodes.
    let (_, _, a_ns, _, _) = &pods[0];
    let (_, _, _, b4, b6) = &pods[1];
    for (fam, size, to) in [("-4", "8972", b4), ("-6", "8952", b6)] {
        wait_until("a jumbo ping with DF across nodes", CONVERGE, POLL, || {
            let out = a_ns.exec(&[
                "ping", fam, "-M", "do", "-s", size, "-c", "1", "-W", "2", to,
            ]);
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        });
    }
    // One byte more does not fit: the path really is 9000 bytes.
    let out = a_ns.exec(&[
        "ping", "-4", "-M", "do", "-s", "8973", "-c", "1", "-W", "2", b4,
    ]);
    assert!(!out.status.success(), "9001 bytes with DF must not pass");

    // An explicit mtu in the CNI configuration still wins.
    let ns = Netns::new(&c._lock, "mtu-c");
    let (ok, result) = c.cni(
        1,
        "ADD",
        "mtu-c",
        Some(ns.name()),
        Some(conf(1, r#","mtu":1500"#)),
    );
    assert!(ok, "ADD mtu-c: {result}");
    assert_eq!(link_mtu(&ns, "eth0"), 1500);
    for (i, name, ns) in pods
        .iter()
        .map(|(i, n, ns, _, _)| (*i, *n, ns))
        .chain([(1, "mtu-c", &ns)])
    {
        let (ok, v) = c.cni(i, "DEL", name, Some(ns.name()), Some(conf(i, "")));
        assert!(ok, "DEL {name}: {v}");
    }
}
