//! Tests of the kernel module: pure ones first, then ones in network namespaces (root;
//! serialised through /tmp/ferrovia-nettest.lock with every other topology test), then the
//! ignored install-rate benchmark (`cargo test --release -- --ignored --nocapture
//! kernel::tests::bench_install_100k`).

use super::*;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Instant;

use rtnetlink::packet_route::route::{RouteNextHop, RouteNextHopFlags, RouteProtocol};

use super::testns::{net_lock, NetLock, Netns};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test prefix")
}

// ---------- pure ----------

fn covering(prefix: &str, kind: RouteType, attrs: Vec<RouteAttribute>) -> RouteMessage {
    let p = net(prefix);
    let mut rm = RouteMessage::default();
    rm.header = netlink::route_header(&p, 254, 4);
    rm.header.kind = kind;
    rm.attributes
        .push(RouteAttribute::Destination(p.addr().into()));
    rm.attributes.extend(attrs);
    rm
}

#[test]
fn connected_covering_route_keeps_the_next_hop() {
    let r = covering(
        "198.18.0.0/24",
        RouteType::Unicast,
        vec![RouteAttribute::Oif(3)],
    );
    let res = resolve_through(&r, ip("198.18.0.7")).expect("resolves");
    assert_eq!(
        res.hops,
        vec![Hop {
            gateway: ip("198.18.0.7"),
            ifindex: 3,
            onlink: false
        }]
    );
    assert_eq!(res.via_ours, None);
}

#[test]
fn gateway_covering_route_gives_its_gateways() {
    let mut a = RouteNextHop::default();
    a.interface_index = 3;
    a.attributes
        .push(RouteAttribute::Gateway(ip("198.18.0.253").into()));
    let mut b = RouteNextHop::default();
    b.interface_index = 4;
    b.flags = RouteNextHopFlags::Onlink;
    b.attributes
        .push(RouteAttribute::Gateway(ip("198.18.0.252").into()));
    let mut r = covering(
        "198.18.2.0/24",
        RouteType::Unicast,
        vec![RouteAttribute::MultiPath(vec![a, b])],
    );
    r.header.protocol = RouteProtocol::from(RTPROT_FERROVIA);
    let res = resolve_through(&r, ip("198.18.2.9")).expect("resolves");
    assert_eq!(
        res.hops,
        vec![
            Hop {
                gateway: ip("198.18.0.252"),
                ifindex: 4,
                onlink: true
            },
            Hop {
                gateway: ip("198.18.0.253"),
                ifindex: 3,
                onlink: false
            },
        ]
    );
    assert_eq!(res.via_ours, Some(net("198.18.2.0/24")));
}

#[test]
fn local_and_blackhole_covering_routes_do_not_resolve() {
    let r = covering(
        "198.18.0.1/32",
        RouteType::Local,
        vec![RouteAttribute::Oif(1)],
    );
    assert!(resolve_through(&r, ip("198.18.0.1")).is_err());
    let r = covering("198.18.50.0/24", RouteType::BlackHole, vec![]);
    assert!(resolve_through(&r, ip("198.18.50.1")).is_err());
}

#[test]
fn target_keeps_resolvable_next_hops_and_reports_the_rest() {
    let hop = |g: &str| Hop {
        gateway: ip(g),
        ifindex: 2,
        onlink: false,
    };
    let mut resolved = HashMap::new();
    resolved.insert(
        NextHop::from(ip("198.18.0.2")),
        Ok(Resolution {
            hops: vec![hop("198.18.0.2")],
            via_ours: None,
        }),
    );
    resolved.insert(NextHop::from(ip("198.19.9.9")), Err("no route".into()));
    // Resolving through our own route for the same prefix is not resolving.
    resolved.insert(
        NextHop::from(ip("10.244.33.1")),
        Ok(Resolution {
            hops: vec![hop("198.18.0.2")],
            via_ours: Some(net("10.244.33.0/24")),
        }),
    );
    let nhs: Vec<NextHop> = ["198.18.0.2", "198.19.9.9", "198.18.0.2"]
        .iter()
        .map(|s| NextHop::from(ip(s)))
        .collect();
    let (fib, unresolved) = target_via(&net("10.244.1.0/24"), &nhs, &resolved);
    assert_eq!(fib, Some(Fib::Via(vec![hop("198.18.0.2")])));
    assert_eq!(unresolved, vec![ip("198.19.9.9")]);

    let nhs = vec![NextHop::from(ip("10.244.33.1"))];
    let (fib, unresolved) = target_via(&net("10.244.33.0/24"), &nhs, &resolved);
    assert_eq!(fib, None);
    assert_eq!(unresolved, vec![ip("10.244.33.1")]);
    let (fib, _) = target_via(&net("10.244.34.0/24"), &nhs, &resolved);
    assert_eq!(fib, Some(Fib::Via(vec![hop("198.18.0.2")])));

    // No IPv6 route via an IPv4 gateway.
    let nhs = vec![NextHop::from(ip("198.18.0.2"))];
    let (fib, unresolved) = target_via(&net("fd00:10:244:1::/64"), &nhs, &resolved);
    assert_eq!((fib, unresolved), (None, vec![ip("198.18.0.2")]));
}

#[test]
fn kernel_and_its_futures_are_send() {
    // The agent moves the Kernel into a task: checked at compile time, nothing runs.
    fn is_send<T: Send>(_: &T) {}
    fn check(k: &mut Kernel, desired: &HashMap<IpNet, RouteKind>) {
        is_send(k);
        is_send(&k.apply(Vec::new()));
        is_send(&k.reconcile(desired));
        is_send(&k.retry_pending());
    }
    let _ = check;
}

// ---------- namespaces ----------

/// The main table.
const MAIN: u32 = 254;

fn via(gateway: IpAddr) -> RouteKind {
    RouteKind::Unicast(vec![gateway.into()])
}

/// A node: `eth0` with 198.18.0.1/24 and fd00:10:244:ff::1/64, up (one end of a veth pair
/// whose other end, `eth0p`, stays in the namespace), `lo` up.
fn node(lock: &NetLock, tag: &str) -> Netns {
    let ns = Netns::new(lock, &format!("kern-{tag}"));
    ns.ip("link set lo up");
    ns.link("eth0");
    ns.ip("addr add 198.18.0.1/24 dev eth0");
    ns.ip("-6 addr add fd00:10:244:ff::1/64 dev eth0 nodad");
    ns
}

/// Our routes in `table` as `ip -j` shows them, one line each, sorted:
/// `PREFIX via GW@DEV[,GW@DEV...] [onlink]` or `PREFIX blackhole`.
fn ours(ns: &Netns, table: u32) -> Vec<String> {
    routes(ns, table, "0xf1")
}

fn routes(ns: &Netns, table: u32, proto: &str) -> Vec<String> {
    let mut out = Vec::new();
    for fam in ["-4", "-6"] {
        let shown = Command::new("ip")
            .args(["-n", &ns.name, "-j", fam, "route", "show", "table"])
            .arg(table.to_string())
            .args(["proto", proto])
            .output()
            .expect("run ip");
        let err = String::from_utf8_lossy(&shown.stderr);
        if err.contains("FIB table does not exist") {
            continue;
        }
        assert!(shown.status.success(), "ip route show: {err}");
        let v: serde_json::Value = serde_json::from_slice(&shown.stdout).expect("ip -j output");
        for r in v.as_array().cloned().unwrap_or_default() {
            out.push(summarize(&r));
        }
    }
    out.sort();
    out
}

fn summarize(r: &serde_json::Value) -> String {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let dst = s(&r["dst"]);
    let dst = if dst == "default" {
        "default".into()
    } else if dst.contains('/') {
        dst
    } else if dst.contains(':') {
        format!("{dst}/128")
    } else {
        format!("{dst}/32")
    };
    if r["type"].as_str() == Some("blackhole") {
        return format!("{dst} blackhole");
    }
    let hop = |h: &serde_json::Value| {
        let gw = if h["gateway"].is_string() {
            s(&h["gateway"])
        } else {
            s(&h["via"]["host"])
        };
        let onlink = h["flags"]
            .as_array()
            .map(|f| f.iter().any(|x| x.as_str() == Some("onlink")))
            .unwrap_or(false);
        format!(
            "{gw}@{}{}",
            s(&h["dev"]),
            if onlink { "!onlink" } else { "" }
        )
    };
    let mut hops: Vec<String> = match r["nexthops"].as_array() {
        Some(nhs) => nhs.iter().map(hop).collect(),
        None => vec![hop(r)],
    };
    hops.sort();
    format!("{dst} via {}", hops.join(","))
}

fn lines(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn nh_dev(gw: &str, dev: &str) -> NextHop {
    NextHop {
        gateway: ip(gw),
        interface: Some(dev.into()),
    }
}

#[test]
fn route_kinds_appear_with_their_next_hops() {
    let lock = net_lock();
    let ns = node(&lock, "kinds");
    let routes = [
        (net("10.244.1.0/26"), via(ip("198.18.0.2"))),
        (
            net("10.244.2.0/26"),
            RouteKind::ecmp([ip("198.18.0.2"), ip("198.18.0.3")]),
        ),
        (net("10.244.0.0/26"), RouteKind::Blackhole),
        (net("fd00:10:244:1::/64"), via(ip("fd00:10:244:ff::2"))),
        (
            net("fd00:10:244:2::/64"),
            RouteKind::Unicast(vec![nh_dev("fe80::2", "eth0")]),
        ),
        (
            net("fd00:10:244:3::/64"),
            RouteKind::Unicast(vec![nh_dev("fe80::2", "eth0"), nh_dev("fe80::3", "eth0")]),
        ),
        (net("fd00:10:244::/64"), RouteKind::Blackhole),
        // RFC 8950: an IPv4 prefix via an IPv6 next hop.
        (
            net("10.244.3.0/26"),
            RouteKind::Unicast(vec![nh_dev("fe80::2", "eth0")]),
        ),
    ];
    let expected = lines(&[
        "10.244.1.0/26 via 198.18.0.2@eth0",
        "10.244.2.0/26 via 198.18.0.2@eth0,198.18.0.3@eth0",
        "10.244.0.0/26 blackhole",
        "fd00:10:244:1::/64 via fd00:10:244:ff::2@eth0",
        "fd00:10:244:2::/64 via fe80::2@eth0",
        "fd00:10:244:3::/64 via fe80::2@eth0,fe80::3@eth0",
        "fd00:10:244::/64 blackhole",
        "10.244.3.0/26 via fe80::2@eth0",
    ]);
    let changes: Vec<_> = routes.iter().map(|(p, k)| (*p, Some(k.clone()))).collect();
    let c = changes.clone();
    let stats = ns.run(move || async move {
        let mut k = Kernel::new(100).await.expect("kernel");
        k.apply(c).await.expect("apply")
    });
    // As the kernel holds them: next hops resolved, with their interfaces.
    assert_eq!(ours(&ns, 100), expected);
    let c = changes.clone();
    let (again, changed) = ns.run(move || async move {
        // A new instance reads them back and finds nothing to change.
        let mut k = Kernel::new(100).await.expect("kernel");
        let again = k.apply(c).await.expect("apply again");
        // Every kind into every other: new next hop, ECMP to one, one to ECMP, blackhole to
        // unicast and back.
        let changed = k
            .apply(vec![
                (net("10.244.1.0/26"), Some(via(ip("198.18.0.3")))),
                (net("10.244.2.0/26"), Some(RouteKind::Blackhole)),
                (
                    net("10.244.0.0/26"),
                    Some(RouteKind::ecmp([ip("198.18.0.4"), ip("198.18.0.5")])),
                ),
                (
                    net("fd00:10:244:3::/64"),
                    Some(RouteKind::Unicast(vec![nh_dev("fe80::4", "eth0")])),
                ),
                (
                    net("fd00:10:244:2::/64"),
                    Some(RouteKind::Unicast(vec![
                        nh_dev("fe80::2", "eth0"),
                        nh_dev("fe80::5", "eth0"),
                    ])),
                ),
                (net("fd00:10:244::/64"), Some(via(ip("fd00:10:244:ff::2")))),
                (net("fd00:10:244:1::/64"), Some(RouteKind::Blackhole)),
            ])
            .await
            .expect("change");
        (again, changed)
    });
    assert_eq!(
        ours(&ns, 100),
        lines(&[
            "10.244.1.0/26 via 198.18.0.3@eth0",
            "10.244.2.0/26 blackhole",
            "10.244.0.0/26 via 198.18.0.4@eth0,198.18.0.5@eth0",
            "fd00:10:244:1::/64 blackhole",
            "fd00:10:244:2::/64 via fe80::2@eth0,fe80::5@eth0",
            "fd00:10:244:3::/64 via fe80::4@eth0",
            "fd00:10:244::/64 via fd00:10:244:ff::2@eth0",
            "10.244.3.0/26 via fe80::2@eth0",
        ])
    );
    // A new instance finds our routes in the kernel and can take them away.
    let (found, withdrawn) = ns.run(move || async move {
        let mut k = Kernel::new(100).await.expect("kernel");
        let found = k.installed();
        let withdraw: Vec<_> = changes.iter().map(|(p, _)| (*p, None)).collect();
        (found, k.apply(withdraw).await.expect("withdraw"))
    });
    assert_eq!(found, 8);
    assert_eq!(stats.added, 8, "{stats:?}");
    assert_eq!(stats.requests, 1, "{stats:?}");
    assert_eq!((again.unchanged, again.requests), (8, 0), "{again:?}");
    assert_eq!((changed.replaced, changed.requests), (7, 1), "{changed:?}");
    assert_eq!(withdrawn.deleted, 8, "{withdrawn:?}");
    assert!(ours(&ns, 100).is_empty());
}

#[test]
fn routes_carry_protocol_table_and_metric() {
    let lock = net_lock();
    let ns = node(&lock, "attrs");
    ns.run(|| async {
        let mut k = Kernel::new(100).await.expect("kernel");
        k.apply(vec![
            (net("10.244.1.0/26"), Some(via(ip("198.18.0.2")))),
            (net("fd00:10:244:1::/64"), Some(RouteKind::Blackhole)),
        ])
        .await
        .expect("apply");
    });
    let v4 = ns.ip("-d -4 route show table 100");
    assert!(
        v4.contains("10.244.1.0/26 via 198.18.0.2 dev eth0 proto 241 scope global metric 25"),
        "{v4}"
    );
    let v6 = ns.ip("-d -6 route show table 100");
    assert!(
        v6.contains("blackhole fd00:10:244:1::/64 dev lo proto 241 scope global metric 25"),
        "{v6}"
    );
    assert!(ns.ip("route show table main proto 0xf1").is_empty());
}

#[test]
fn ten_thousand_changes_are_few_round_trips() {
    let lock = net_lock();
    let ns = node(&lock, "10k");
    let prefixes: Vec<IpNet> = (0..10_000u32)
        .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i)), 32).expect("prefix"))
        .collect();
    let p = prefixes.clone();
    let (add, rep, del) = ns.run(move || async move {
        let mut k = Kernel::new(MAIN).await.expect("kernel");
        let add = k
            .apply(
                p.iter()
                    .map(|p| (*p, Some(via(ip("198.18.0.2")))))
                    .collect(),
            )
            .await
            .expect("add");
        let rep = k
            .apply(
                p.iter()
                    .map(|p| (*p, Some(via(ip("198.18.0.3")))))
                    .collect(),
            )
            .await
            .expect("replace");
        assert_eq!(k.installed(), 10_000);
        let del = k
            .apply(p.iter().map(|p| (*p, None)).collect())
            .await
            .expect("delete");
        (add, rep, del)
    });
    let max_requests = 10_000usize.div_ceil(BATCH_MESSAGES);
    assert_eq!(add.added, 10_000, "{add:?}");
    assert!(add.requests <= max_requests, "{add:?}");
    assert_eq!(rep.replaced, 10_000, "{rep:?}");
    assert!(rep.requests <= max_requests, "{rep:?}");
    assert_eq!(del.deleted, 10_000, "{del:?}");
    assert!(ns.ip("route show table main proto 0xf1").is_empty());
}

#[test]
fn reconcile_touches_only_our_routes() {
    let lock = net_lock();
    let ns = node(&lock, "recon");
    // Ours, left behind: at another metric (an earlier configuration), at our metric, and a
    // desired one with the wrong next hop.
    ns.ip("route add 10.244.9.0/24 via 198.18.0.2 proto 0xf1 table 100");
    ns.ip("route add 10.244.8.0/24 via 198.18.0.2 proto 0xf1 metric 25 table 100");
    ns.ip("route add 10.244.7.0/24 via 198.18.0.9 proto 0xf1 metric 25 table 100");
    ns.ip("-6 route add fd00:10:244:99::/64 via fd00:10:244:ff::2 proto 0xf1 table 100");
    // Pod host routes, as the CNI wiring makes them (ours too, but without gateway).
    ns.ip("route add 10.244.15.5/32 dev eth0 proto 0xf1 scope link table 100");
    ns.ip("-6 route add fd00:10:244:15::5/128 dev eth0 proto 0xf1 table 100");
    // Not ours.
    ns.ip("route add 10.244.10.0/24 via 198.18.0.2 proto static table 100");
    ns.ip("route add 10.244.11.0/24 via 198.18.0.2 proto bird table 100");
    ns.ip("route add 10.244.12.0/24 via 198.18.0.2 proto bird metric 25 table 100");
    ns.ip("route add 10.244.13.0/24 via 198.18.0.2 proto static table 100");
    ns.ip("-6 route add fd00:10:244:98::/64 via fd00:10:244:ff::2 proto bird table 100");
    let others_before = [routes(&ns, 100, "static"), routes(&ns, 100, "bird")];
    let static_detail = ns.ip("-d route show table 100 proto static");
    let bird_detail = ns.ip("-d route show table 100 proto bird");

    let mut desired = HashMap::new();
    desired.insert(net("10.244.7.0/24"), via(ip("198.18.0.2")));
    // Same prefix and metric as BIRD's route: a conflict, left alone.
    desired.insert(net("10.244.12.0/24"), via(ip("198.18.0.2")));
    // Same prefix as a static route at metric 0: ours goes alongside at metric 25.
    desired.insert(net("10.244.13.0/24"), via(ip("198.18.0.3")));
    desired.insert(net("10.244.14.0/24"), RouteKind::Blackhole);
    let (initial, first, conflicts, second) = ns.run(move || async move {
        let mut k = Kernel::new(100).await.expect("kernel");
        let initial = k.installed();
        let first = k.reconcile(&desired).await.expect("reconcile");
        let conflicts = k.conflicts();
        let second = k.reconcile(&desired).await.expect("reconcile again");
        (initial, first, conflicts, second)
    });
    assert_eq!(initial, 2, "ours at our metric, read at start");
    assert_eq!(first.found, 4, "{first:?}");
    let c = &first.changes;
    assert_eq!(
        (c.deleted, c.replaced, c.added, c.conflicts, c.unchanged),
        (3, 1, 2, 1, 0),
        "{first:?}"
    );
    assert_eq!(conflicts, vec![net("10.244.12.0/24")]);
    assert_eq!(
        ours(&ns, 100),
        lines(&[
            "10.244.7.0/24 via 198.18.0.2@eth0",
            "10.244.13.0/24 via 198.18.0.3@eth0",
            "10.244.14.0/24 blackhole",
            "10.244.15.5/32 via @eth0",
            "fd00:10:244:15::5/128 via @eth0",
        ])
    );
    assert_eq!(
        others_before,
        [routes(&ns, 100, "static"), routes(&ns, 100, "bird")]
    );
    assert_eq!(static_detail, ns.ip("-d route show table 100 proto static"));
    assert_eq!(bird_detail, ns.ip("-d route show table 100 proto bird"));
    // Idempotent.
    assert_eq!(second.found, 3, "{second:?}");
    let c = &second.changes;
    assert_eq!(
        (
            c.deleted,
            c.replaced,
            c.added,
            c.conflicts,
            c.unchanged,
            c.requests
        ),
        (0, 0, 0, 1, 3, 1),
        "{second:?}"
    );
}

#[test]
fn unresolvable_next_hops_are_reported_not_installed() {
    let lock = net_lock();
    let ns = node(&lock, "unres");
    ns.ip("route add blackhole 198.18.50.0/24");
    let name = ns.name.clone();
    let (stats, unresolved, retried, unresolved_after) = ns.run(move || async move {
        let mut k = Kernel::new(100).await.expect("kernel");
        let stats = k
            .apply(vec![
                // No route at all (the namespace has no default route).
                (net("10.244.20.0/24"), Some(via(ip("198.19.9.9")))),
                // This node's own address.
                (net("10.244.21.0/24"), Some(via(ip("198.18.0.1")))),
                // One of two next hops resolves: installed with that one.
                (
                    net("10.244.22.0/24"),
                    Some(RouteKind::ecmp([ip("198.18.0.2"), ip("198.19.9.9")])),
                ),
                // Covered by a blackhole.
                (net("10.244.23.0/24"), Some(via(ip("198.18.50.1")))),
                // A link-local next hop without an interface, an unknown interface.
                (net("fd00:10:244:20::/64"), Some(via(ip("fe80::2")))),
                (
                    net("fd00:10:244:21::/64"),
                    Some(RouteKind::Unicast(vec![nh_dev("fe80::2", "nosuch0")])),
                ),
            ])
            .await
            .expect("apply");
        let unresolved = k.unresolved();
        // The underlay learns a way to 198.19.9.9.
        let out = Command::new("ip")
            .args([
                "-n",
                &name,
                "route",
                "add",
                "198.19.9.0/24",
                "via",
                "198.18.0.254",
            ])
            .output()
            .expect("ip");
        assert!(out.status.success());
        let retried = k.retry_pending().await.expect("retry");
        (stats, unresolved, retried, k.unresolved())
    });
    assert_eq!((stats.added, stats.unresolved), (1, 6), "{stats:?}");
    assert_eq!(
        unresolved,
        vec![
            (net("10.244.20.0/24"), vec![ip("198.19.9.9")]),
            (net("10.244.21.0/24"), vec![ip("198.18.0.1")]),
            (net("10.244.22.0/24"), vec![ip("198.19.9.9")]),
            (net("10.244.23.0/24"), vec![ip("198.18.50.1")]),
            (net("fd00:10:244:20::/64"), vec![ip("fe80::2")]),
            (net("fd00:10:244:21::/64"), vec![ip("fe80::2")]),
        ]
    );
    assert_eq!((retried.added, retried.replaced), (1, 1), "{retried:?}");
    assert_eq!(unresolved_after.len(), 4, "{unresolved_after:?}");
    assert_eq!(
        ours(&ns, 100),
        lines(&[
            "10.244.20.0/24 via 198.18.0.254@eth0",
            "10.244.22.0/24 via 198.18.0.254@eth0,198.18.0.2@eth0",
        ])
    );
}

#[test]
fn recursive_next_hops_resolve_through_the_table() {
    let lock = net_lock();
    let ns = node(&lock, "recur");
    ns.link("eth1");
    // Loopbacks of other nodes behind a router; behind two (ECMP); anything else via an
    // onlink default route on an interface without addresses.
    ns.ip("route add 198.18.1.0/24 via 198.18.0.254");
    ns.ip("route add 198.18.2.0/24 nexthop via 198.18.0.253 nexthop via 198.18.0.252");
    ns.ip("route add default via 198.18.3.1 dev eth1 onlink");
    ns.ip("-6 route add fd00:10:244:fe::/64 via fe80::1 dev eth0");
    let (stats, unresolved) = ns.run(|| async {
        let mut k = Kernel::new(MAIN).await.expect("kernel");
        let mut stats = k
            .apply(vec![
                (net("10.244.30.0/26"), Some(via(ip("198.18.1.7")))),
                (net("10.244.31.0/26"), Some(via(ip("198.18.2.9")))),
                (net("10.244.32.0/26"), Some(via(ip("198.18.4.4")))),
                (
                    net("fd00:10:244:30::/64"),
                    Some(via(ip("fd00:10:244:fe::5"))),
                ),
                (net("10.244.33.0/24"), Some(via(ip("198.18.0.2")))),
            ])
            .await
            .expect("apply");
        // Through one of our own routes (uses its gateway) ...
        let s = k
            .apply(vec![(net("10.244.34.0/24"), Some(via(ip("10.244.30.5"))))])
            .await
            .expect("apply via ours");
        stats.added += s.added;
        // ... but never through itself: the route is withdrawn.
        let s = k
            .apply(vec![(net("10.244.33.0/24"), Some(via(ip("10.244.33.1"))))])
            .await
            .expect("apply via itself");
        stats.deleted += s.deleted;
        (stats, k.unresolved())
    });
    assert_eq!((stats.added, stats.deleted), (6, 1), "{stats:?}");
    assert_eq!(
        ours(&ns, MAIN),
        lines(&[
            "10.244.30.0/26 via 198.18.0.254@eth0",
            "10.244.31.0/26 via 198.18.0.252@eth0,198.18.0.253@eth0",
            "10.244.32.0/26 via 198.18.3.1@eth1!onlink",
            "10.244.34.0/24 via 198.18.0.254@eth0",
            "fd00:10:244:30::/64 via fe80::1@eth0",
        ])
    );
    assert_eq!(
        unresolved,
        vec![(net("10.244.33.0/24"), vec![ip("10.244.33.1")])]
    );
}

#[test]
fn mass_rejections_fit_a_small_receive_buffer() {
    // 2,000 prefixes held by another protocol at our metric: every create is rejected, and
    // every rejection echoes its request. Batches are sized so that a whole datagram's
    // rejections fit the receive buffer even when it is small (here 32 KiB as accounted).
    let lock = net_lock();
    let ns = node(&lock, "mass");
    let prefixes: Vec<IpNet> = (0..2_000u32)
        .map(|i| IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i)), 32).expect("prefix"))
        .collect();
    let batch = std::env::temp_dir().join(format!("ferrovia-mass-{}.batch", std::process::id()));
    let text: String = prefixes
        .iter()
        .map(|p| {
            format!("route add {p} via 198.18.0.2 proto static metric {DEFAULT_METRIC} table 100\n")
        })
        .collect();
    std::fs::write(&batch, text).expect("write batch file");
    ns.ip(&format!("-batch {}", batch.display()));
    let _ = std::fs::remove_file(&batch);
    let p = prefixes.clone();
    let (rcvbuf, stats, conflicts, overrun, repaired) = ns.run(move || async move {
        let mut k = Kernel::open(100, DEFAULT_METRIC, 16 * 1024)
            .await
            .expect("kernel");
        let rcvbuf = k.nl.rcvbuf();
        let changes: Vec<_> = p
            .iter()
            .map(|p| (*p, Some(via(ip("198.18.0.3")))))
            .collect();
        let stats = k.apply(changes.clone()).await.expect("apply");
        let conflicts = k.conflicts().len();
        // Batches sized as if rejections were free overflow the buffer: that is reported at
        // once, and a reconcile (on a reopened connection) repairs everything.
        k.rejection_cost = 0;
        let overrun = k
            .retry_pending()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        k.rejection_cost = REJECTION_COST;
        let desired = changes
            .into_iter()
            .map(|(p, k)| (p, k.expect("set")))
            .collect();
        let repaired = k.reconcile(&desired).await.expect("reconcile");
        (rcvbuf, stats, conflicts, overrun, repaired)
    });
    assert!(rcvbuf <= 64 * 1024, "receive buffer {rcvbuf}");
    assert_eq!(
        (stats.conflicts, stats.added, conflicts),
        (2_000, 0, 2_000),
        "{stats:?}"
    );
    assert!(stats.requests > 2_000 / BATCH_MESSAGES, "{stats:?}");
    let err = overrun.expect_err("overrun");
    assert!(
        err.contains("overflowed") && err.contains("reconcile"),
        "{err}"
    );
    assert_eq!(repaired.changes.conflicts, 2_000, "{repaired:?}");
    assert!(ours(&ns, 100).is_empty());
    assert_eq!(routes(&ns, 100, "static").len(), 2_000);
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Drops CAP_NET_ADMIN from the calling thread's effective capabilities.
fn drop_net_admin() {
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data structs, as capget(2) says;
    // affects only the calling thread.
    unsafe {
        assert_eq!(
            libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()),
            0
        );
        data[0].effective &= !(1 << CAP_NET_ADMIN);
        assert_eq!(libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()), 0);
    }
}

#[test]
fn without_cap_net_admin_the_error_says_what_to_do() {
    let lock = net_lock();
    let ns = node(&lock, "perm");
    let err = ns.run(|| async {
        drop_net_admin();
        let mut k = Kernel::new(100)
            .await
            .expect("reading routes needs no privilege");
        let e = k
            .apply(vec![(net("10.244.1.0/26"), Some(via(ip("198.18.0.2"))))])
            .await
            .expect_err("no CAP_NET_ADMIN");
        e.to_string()
    });
    assert!(
        err.contains("no permission to change routes") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(ours(&ns, 100).is_empty());
}

// ---------- benchmark ----------

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// 100,000 IPv4 routes (all /32s of 10.244.0.0/16, then /31s) via one gateway into table 100:
/// ferrovia's `apply` against `ip -batch` of the same routes, alternating, in one namespace.
#[test]
#[ignore = "benchmark: cargo test --release -- --ignored --nocapture bench_install_100k"]
fn bench_install_100k() {
    let n: u32 = std::env::var("FERROVIA_BENCH_ROUTES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let rounds: usize = std::env::var("FERROVIA_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let lock = net_lock();
    let ns = node(&lock, "bench");
    let prefixes: Vec<IpNet> = (0..n)
        .map(|i| {
            if i < 65_536 {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + i)), 32)
            } else {
                IpNet::new(
                    IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + 2 * (i - 65_536))),
                    31,
                )
            }
            .expect("prefix")
        })
        .collect();
    let batch = std::env::temp_dir().join(format!("ferrovia-bench-{}.batch", std::process::id()));
    let text: String = prefixes
        .iter()
        .map(|p| format!("route add {p} via 198.18.0.2 dev eth0 proto 0xf1 metric 25 table 100\n"))
        .collect();
    std::fs::write(&batch, text).expect("write batch file");
    let count = |ns: &Netns| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "cat", "/proc/net/fib_triestat"])
            .output()
            .expect("fib_triestat");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // "Prefixes:" of every table; main and local hold a handful.
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Prefixes:"))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>()
    };
    let base = count(&ns);
    let (mut rates, mut theirs, mut noops, mut deletes) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        for turn in 0..2 {
            let ferrovia_turn = (round + turn) % 2 == 0;
            if ferrovia_turn {
                let p = prefixes.clone();
                let (t, d, del) = ns.run(move || async move {
                    let mut k = Kernel::new(100).await.expect("kernel");
                    let changes: Vec<_> = p
                        .iter()
                        .map(|p| (*p, Some(via(ip("198.18.0.2")))))
                        .collect();
                    let t = Instant::now();
                    let s = k.apply(changes).await.expect("apply");
                    let t = t.elapsed();
                    assert_eq!(s.added, p.len());
                    let desired: HashMap<IpNet, RouteKind> =
                        p.iter().map(|p| (*p, via(ip("198.18.0.2")))).collect();
                    let d = Instant::now();
                    let r = k.reconcile(&desired).await.expect("reconcile");
                    let d = d.elapsed();
                    assert_eq!(r.changes.unchanged, p.len());
                    let del = Instant::now();
                    let s = k
                        .apply(p.iter().map(|p| (*p, None)).collect())
                        .await
                        .expect("delete");
                    assert_eq!(s.deleted, p.len());
                    (t, d, del.elapsed())
                });
                rates.push(n as f64 / t.as_secs_f64());
                noops.push(d.as_secs_f64());
                deletes.push(n as f64 / del.as_secs_f64());
                eprintln!(
                    "round {round}: ferrovia {:.0} routes/s ({t:?}); reconcile, all unchanged, {d:?}; delete {:.0} routes/s",
                    n as f64 / t.as_secs_f64(),
                    n as f64 / del.as_secs_f64()
                );
            } else {
                let t = Instant::now();
                let out = Command::new("ip")
                    .args(["-n", &ns.name, "-batch"])
                    .arg(&batch)
                    .output()
                    .expect("ip -batch");
                let t = t.elapsed();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert_eq!(count(&ns), base + u64::from(n));
                theirs.push(n as f64 / t.as_secs_f64());
                eprintln!(
                    "round {round}: ip -batch {:.0} routes/s ({t:?})",
                    n as f64 / t.as_secs_f64()
                );
                ns.ip("route flush table 100");
            }
            assert_eq!(count(&ns), base);
        }
    }
    let _ = std::fs::remove_file(&batch);
    let (a, b) = (median(rates), median(theirs));
    eprintln!(
        "{n} IPv4 routes, medians of {rounds}: ferrovia {a:.0} routes/s, ip -batch {b:.0} routes/s, ratio {:.2}x; \
         ferrovia delete {:.0} routes/s; reconcile with nothing to do {:.3} s",
        a / b,
        median(deletes),
        median(noops)
    );
}
