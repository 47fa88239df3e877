//! Outgoing NAT on real kernels: two nodes on one segment behind a ToR namespace, and an
//! "outside" namespace (198.19.255.0/24) that only the ToR reaches and that has no route to
//! the pools. A TCP server there reports the source address it sees.
//!
//! - a pod of a natOutgoing pool reaches the outside as its node (198.18.0.1, and over IPv6
//!   fd00:198:18::1 to fd00:198:19:255::1);
//! - the same pod reaches a pod on the other node, and the other node, with its own address;
//! - a connection to the outside survives an agent restart (conntrack keeps the translation;
//!   the new agent replaces the table under it);
//! - with natOutgoing turned off (`ferrovia ipam pool set`, followed through the watch) and
//!   the fabric routing the pool, the outside sees the pod's address; with no natOutgoing
//!   pool left the table is removed, and it comes back when one is on again;
//! - `ferrovia node drain` (and, on the other node, `ferrovia nat remove`) leaves nothing of
//!   ours in `nft list ruleset`, and a table of someone else's in the node is intact
//!   throughout.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, CONVERGE, POLL};
use common::tcp::{source_seen, Client, SourceServer};
use common::{wait_until, Netns};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";
const OUTSIDE: &str = "198.19.255.1";
const OUTSIDE_V6: &str = "fd00:198:19:255::1";

/// nft in a namespace; panics with its stderr unless it succeeds.
fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut argv = vec!["nft"];
    argv.extend_from_slice(args);
    ns.run(&argv)
}

fn our_table(ns: &Netns) -> Result<String, String> {
    let out = ns.exec(&["nft", "list", "table", "inet", "ferrovia"]);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The nat4 set of our table ("" when the table is absent).
fn nat4(ns: &Netns) -> String {
    let out = ns.exec(&["nft", "list", "set", "inet", "ferrovia", "nat4"]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn agent_log(c: &Cluster, i: u8) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("n{i}.log"))).unwrap_or_default()
}

#[test]
fn pods_reach_the_outside_as_their_node_and_each_other_as_themselves() {
    // A short drainWait: the drain at the end waits that long after GRACEFUL_SHUTDOWN.
    let mut c = Cluster::with_bgp("nat", 2, IPAM, ", drainWait: 1");
    for i in 1..=2 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 1));
    }
    // The ToR: 198.18.0.254 on the nodes' segment (their default route), and the outside.
    let tor = Netns::new(&c._lock, "nat-tor");
    Netns::veth(&tor, "eth0", &c.br, "ptor");
    c.br.ip(&["link", "set", "ptor", "master", "br0"]);
    tor.addr("eth0", "198.18.0.254/24");
    tor.addr("eth0", "fd00:198:18::254/64");
    tor.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    tor.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let outside = Netns::new(&c._lock, "nat-out");
    Netns::veth(&tor, "out0", &outside, "eth0");
    tor.addr("out0", "198.19.255.254/24");
    outside.addr("eth0", &format!("{OUTSIDE}/24"));
    tor.addr("out0", "fd00:198:19:255::254/64");
    outside.addr("eth0", &format!("{OUTSIDE_V6}/64"));
    // The outside knows the nodes' segment, not the pools.
    outside.ip(&["route", "add", "198.18.0.0/24", "via", "198.19.255.254"]);
    outside.ip(&[
        "-6",
        "route",
        "add",
        "fd00:198:18::/64",
        "via",
        "fd00:198:19:255::254",
    ]);
    for i in 1..=2 {
        c.node(i).ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:198:18::254",
            "dev",
            "eth0",
        ]);
    }

    // Someone else's table on node 1: never touched.
    let n1 = &c.node(1).ns;
    nft(n1, &["add", "table", "inet", "operator"]);
    nft(
        n1,
        &[
            "add", "chain", "inet", "operator", "keep", "{", "type", "filter", "hook", "forward",
            "priority", "0", ";", "}",
        ],
    );
    nft(
        n1,
        &[
            "add",
            "rule",
            "inet",
            "operator",
            "keep",
            "ip",
            "saddr",
            "192.0.2.1",
            "counter",
            "drop",
        ],
    );
    let theirs = nft(n1, &["list", "table", "inet", "operator"]);

    let a = c.add_pod(1, "nat-a");
    let b = c.add_pod(2, "nat-b");
    let a_ip = a.ip(false).expect("pod a v4");
    let b_ip = b.ip(false).expect("pod b v4");
    wait_until("node 1's NAT table holds the pool", CONVERGE, POLL, || {
        let t = our_table(n1)?;
        if t.contains("10.244.0.0/16") && t.contains("masquerade fully-random") {
            Ok(t)
        } else {
            Err(t)
        }
    });

    let out_srv = SourceServer::start(outside.name(), sa(OUTSIDE, 7000));
    let out_srv6 = SourceServer::start(outside.name(), sa(OUTSIDE_V6, 7000));
    let pod_srv = SourceServer::start(b.ns.name(), sa(&b_ip, 7001));
    let node_srv = SourceServer::start(c.node(2).ns.name(), sa("198.18.0.2", 7002));

    // Pod → outside: the node's address.
    let seen = wait_until("pod a reaches the outside", CONVERGE, POLL, || {
        source_seen(a.ns.name(), out_srv.addr)
    });
    assert_eq!(seen, "198.18.0.1", "the outside sees the node");
    let seen = wait_until(
        "pod a reaches the outside over IPv6",
        CONVERGE,
        POLL,
        || source_seen(a.ns.name(), out_srv6.addr),
    );
    assert_eq!(
        seen, "fd00:198:18::1",
        "the outside sees the node's IPv6 address"
    );
    // Pod → pod on another node, pod → another node: the pod's own address.
    let seen = wait_until("pod a reaches pod b", CONVERGE, POLL, || {
        source_seen(a.ns.name(), pod_srv.addr)
    });
    assert_eq!(seen, a_ip, "pod to pod keeps the pod's address");
    let seen = wait_until("pod a reaches node 2", CONVERGE, POLL, || {
        source_seen(a.ns.name(), node_srv.addr)
    });
    assert_eq!(seen, a_ip, "pod to node keeps the pod's address");

    // A connection to the outside survives an agent restart, and the new agent replaced
    // the table while it was open.
    let mut conn = Client::connect(a.ns.name(), out_srv.addr, Duration::from_secs(10))
        .expect("connect to the outside");
    assert_eq!(conn.seen_source().expect("answer"), "198.18.0.1");
    let db = c.db.clone();
    let log_before = agent_log(&c, 1)
        .matches("outgoing NAT table inet ferrovia replaced")
        .count();
    c.node_mut(1).kill(common::cluster::libc_sigterm());
    assert!(
        our_table(n_ns(&c, 1)).is_ok(),
        "the table stays while the agent is down"
    );
    // The log is appended to: the restarted agent's replacement is one more line.
    c.node_mut(1).start(&db);
    wait_until(
        "the restarted agent replaced the table",
        CONVERGE,
        POLL,
        || {
            let n = agent_log(&c, 1)
                .matches("outgoing NAT table inet ferrovia replaced")
                .count();
            if n > log_before {
                Ok(())
            } else {
                Err(n)
            }
        },
    );
    assert_eq!(
        conn.seen_source()
            .expect("the connection survived the restart"),
        "198.18.0.1"
    );

    // natOutgoing off for the IPv4 pool: it leaves the nat4 set (the watch follows); with
    // the fabric routing the pool, the outside sees the pod's own address.
    c.cli(&[
        "ipam",
        "pool",
        "set",
        "10.244.0.0/16",
        "--nat-outgoing",
        "false",
    ]);
    let shown = c.cli(&["ipam", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&shown).expect("ipam show --json");
    assert_eq!(v["pools"][0]["natOutgoing"], false, "{shown}");
    assert_eq!(v["pools"][1]["natOutgoing"], true, "{shown}");
    wait_until(
        "10.244.0.0/16 leaves nat4 on node 1",
        CONVERGE,
        POLL,
        || match nat4(n_ns(&c, 1)) {
            s if s.contains("10.244.0.0/16") => Err(s),
            s => Ok(s),
        },
    );
    outside.ip(&["route", "add", "10.244.0.0/16", "via", "198.19.255.254"]);
    tor.ip(&["route", "add", &format!("{a_ip}/32"), "via", "198.18.0.1"]);
    let seen = wait_until(
        "pod a reaches the outside unmasqueraded",
        CONVERGE,
        POLL,
        || source_seen(a.ns.name(), out_srv.addr),
    );
    assert_eq!(seen, a_ip, "natOutgoing off: the outside sees the pod");

    // No natOutgoing pool left: the table goes.
    c.cli(&[
        "ipam",
        "pool",
        "set",
        "fd00:10:244::/48",
        "--nat-outgoing",
        "false",
    ]);
    wait_until(
        "node 1's table removed",
        CONVERGE,
        POLL,
        || match our_table(n_ns(&c, 1)) {
            Ok(t) => Err(t),
            Err(_) => Ok(()),
        },
    );

    // On again (the watch follows), then drain-style removal once the agent is stopped.
    c.cli(&[
        "ipam",
        "pool",
        "set",
        "10.244.0.0/16",
        "--nat-outgoing",
        "true",
    ]);
    c.cli(&[
        "ipam",
        "pool",
        "set",
        "fd00:10:244::/48",
        "--nat-outgoing",
        "true",
    ]);
    wait_until(
        "10.244.0.0/16 back in nat4",
        CONVERGE,
        POLL,
        || match nat4(n_ns(&c, 1)) {
            s if s.contains("10.244.0.0/16") => Ok(s),
            s => Err(s),
        },
    );
    let seen = wait_until("masqueraded again", CONVERGE, POLL, || {
        match source_seen(a.ns.name(), out_srv.addr)? {
            s if s == "198.18.0.1" => Ok(s),
            s => Err(s),
        }
    });
    assert_eq!(seen, "198.18.0.1");
    // `ferrovia node drain` removes the table with the node's other kernel state.
    let out = Command::new(common::bin())
        .args(["node", "drain", "node1", "--socket"])
        .arg(c.node(1).sock())
        .output()
        .expect("run ferrovia node drain");
    assert!(
        out.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = nft(n_ns(&c, 1), &["list", "ruleset"]);
    assert!(
        !all.contains("ferrovia"),
        "nothing of ours left after the drain: {all}"
    );
    assert_eq!(
        nft(n_ns(&c, 1), &["list", "table", "inet", "operator"]),
        theirs
    );
    // `ferrovia nat remove` (uninstall) on node 2, after its agent stopped; twice is fine.
    assert!(our_table(n_ns(&c, 2)).is_ok(), "node 2 has its table");
    c.node_mut(2).kill(common::cluster::libc_sigterm());
    for _ in 0..2 {
        let out = n_ns(&c, 2).exec(&[common::bin(), "nat", "remove"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let all = nft(n_ns(&c, 2), &["list", "ruleset"]);
    assert!(
        !all.contains("ferrovia"),
        "nothing of ours left on node 2: {all}"
    );
    let all = nft(n_ns(&c, 1), &["list", "ruleset"]);
    assert!(!all.contains("ferrovia"), "nothing of ours left: {all}");
    assert_eq!(
        nft(n_ns(&c, 1), &["list", "table", "inet", "operator"]),
        theirs
    );
    drop(conn);
}

fn n_ns(c: &Cluster, i: u8) -> &Netns {
    &c.node(i).ns
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("address"), port)
}
