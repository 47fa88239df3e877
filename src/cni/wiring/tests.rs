//! Tests of the wiring: pure ones first, then ones in network namespaces (root; serialised
//! through /tmp/ferrovia-nettest.lock with every other topology test). Each namespace test
//! makes a "node" namespace that plays the agent's, runs the wiring from a thread inside it,
//! and looks at the result with `ip`, `/proc/sys` and `ping`. The ignored benchmark
//! (`cargo test --release -- --ignored --nocapture cni::wiring::tests::bench_add_del`)
//! times ADD and DEL against the reference `ptp` + `host-local` plugins in the same run.

use super::*;
use crate::kernel::testns::{net_lock, run, NetLock, Netns};
use std::process::Command;
use std::time::{Duration, Instant};

// ---------- pure ----------

#[test]
fn host_ifname_is_stable_short_and_distinct() {
    let a = host_ifname("0123456789abcdef", "eth0");
    assert_eq!(a, host_ifname("0123456789abcdef", "eth0"));
    assert_eq!(a.len(), 15);
    assert!(a.starts_with("fv"), "{a}");
    assert!(is_host_ifname(&a), "{a}");
    assert_ne!(a, host_ifname("0123456789abcdef", "eth1"));
    assert_ne!(a, host_ifname("0123456789abcdeg", "eth0"));
    // The separator keeps ("ab", "c") and ("a", "bc") apart.
    assert_ne!(host_ifname("ab", "c"), host_ifname("a", "bc"));
    // FNV-1a-64 reference vectors.
    assert_eq!(fnv1a64(&[b""]), 0xcbf2_9ce4_8422_2325);
    assert_eq!(fnv1a64(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
    assert_eq!(fnv1a64(&[b"foo", b"bar"]), fnv1a64(&[b"foobar"]));
    // Pinned: a changed scheme would orphan every existing host end.
    assert_eq!(
        host_ifname("c", "eth0"),
        format!("fv{:013x}", fnv1a64(&[b"c\0eth0"]) >> 12)
    );
}

#[test]
fn host_ifname_shape_is_recognised() {
    assert!(is_host_ifname("fv0123456789abc"));
    assert!(!is_host_ifname("fv0123456789ab"));
    assert!(!is_host_ifname("fv0123456789abcd"));
    assert!(!is_host_ifname("fv0123456789ABC"));
    assert!(!is_host_ifname("cali012345678"));
    assert!(!is_host_ifname("fv0123456789abg"));
}

#[test]
fn interface_names_are_checked_like_the_kernel() {
    for ok in [
        "eth0",
        "net1",
        "a",
        "123456789012345",
        "eth0.100",
        "veth-x_y",
    ] {
        assert!(validate_ifname(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "1234567890123456",
        ".",
        "..",
        "a/b",
        "a:b",
        "a b",
        "a\tb",
        "eth%d",
        "a\0b",
    ] {
        match validate_ifname(bad) {
            Err(WiringError::InvalidIfname { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let e = validate_ifname("averyveryverylongname").expect_err("too long");
    assert!(e.to_string().contains("at most 15"), "{e}");
}

#[test]
fn specs_are_validated_before_anything_happens() {
    let mut s = spec(
        "c1",
        "eth0",
        Path::new("/nonexistent"),
        Some("10.244.0.1"),
        None,
    );
    s.mtu = 0;
    assert_eq!(validate(&s).expect("default MTU"), DEFAULT_MTU);
    s.mtu = 67;
    assert!(matches!(validate(&s), Err(WiringError::InvalidMtu { .. })));
    s.mtu = 1200;
    assert_eq!(validate(&s).expect("IPv4 only"), 1200);
    s.ipv6 = Some("fd00:10:244::1".parse().expect("v6"));
    assert!(matches!(validate(&s), Err(WiringError::InvalidMtu { .. })));
    s.mtu = 1500;
    s.container_id.clear();
    assert!(matches!(
        validate(&s),
        Err(WiringError::InvalidContainerId { .. })
    ));
}

#[test]
fn the_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn check_all(s: &PodSpec) {
        is_send(&add(s));
        is_send(&del("c", "eth0", None));
        is_send(&check(s));
        is_send(&delete_stale_host_ends(BTreeSet::new()));
    }
    let _ = check_all;
}

// ---------- namespaces ----------

/// A namespace `fvt-wire-<tag>-…`.
fn netns(lock: &NetLock, tag: &str) -> Netns {
    Netns::new(lock, &format!("wire-{tag}"))
}

/// A node: `eth0` (a veth whose peer stays inside: the test kernel has no dummy) with
/// 198.18.0.1/24 and fd00:10:244:ff::1/64, and default routes out of it, so proxy ARP
/// answers for 169.254.1.1 on the pods' host ends. IPv6 forwarding on, as on any IPv6 node.
fn node(lock: &NetLock, tag: &str) -> Netns {
    let ns = netns(lock, tag);
    ns.ip("link set lo up");
    ns.ip("link add eth0 type veth peer name eth0p");
    ns.ip("link set eth0p up");
    ns.ip("link set eth0 up");
    ns.ip("addr add 198.18.0.1/24 dev eth0");
    ns.ip("-6 addr add fd00:10:244:ff::1/64 dev eth0 nodad");
    ns.ip("route add default via 198.18.0.254 dev eth0 onlink");
    ns.ip("-6 route add default via fd00:10:244:ff::fe dev eth0 onlink");
    let (ok, text) = ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    assert!(ok, "{text}");
    ns
}

fn spec(
    container_id: &str,
    ifname: &str,
    netns: &Path,
    v4: Option<&str>,
    v6: Option<&str>,
) -> PodSpec {
    PodSpec {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        netns: netns.to_path_buf(),
        mtu: 1500,
        ipv4: v4.map(|a| a.parse().expect("v4")),
        ipv6: v6.map(|a| a.parse().expect("v6")),
    }
}

fn add_in(node: &Netns, s: &PodSpec) -> Result<Wired, WiringError> {
    let s = s.clone();
    node.run(move || async move { add(&s).await })
}

fn del_in(
    node: &Netns,
    cid: &str,
    ifname: &str,
    netns: Option<PathBuf>,
) -> Result<(), WiringError> {
    let (cid, ifname) = (cid.to_string(), ifname.to_string());
    node.run(move || async move { del(&cid, &ifname, netns.as_deref()).await })
}

fn check_in(node: &Netns, s: &PodSpec) -> Result<(), WiringError> {
    let s = s.clone();
    node.run(move || async move { check(&s).await })
}

fn ping(ns: &Netns, dst: &str) -> (bool, String) {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    ns.exec(&["ping", fam, "-n", "-c", "1", "-W", "10", dst])
}

/// Our routes in the node (proto 241), as `ip -o` lines.
fn our_routes(node: &Netns) -> Vec<String> {
    let mut v = Vec::new();
    for fam in ["-4", "-6"] {
        v.extend(
            node.ip(&format!("{fam} -o route show table all proto 241"))
                .lines()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")),
        );
    }
    v
}

fn has_flag(link: &serde_json::Value, flag: &str) -> bool {
    link["flags"]
        .as_array()
        .map(|f| f.iter().any(|x| x.as_str() == Some(flag)))
        .unwrap_or(false)
}

/// (address/len, tentative) of interface `dev` in `ns`.
fn addrs(ns: &Netns, dev: &str) -> Vec<(String, bool)> {
    let v = ns.ip_json(&format!("addr show dev {dev}"));
    let mut out = Vec::new();
    for l in v.as_array().cloned().unwrap_or_default() {
        for a in l["addr_info"].as_array().cloned().unwrap_or_default() {
            out.push((
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or_default(),
                    a["prefixlen"]
                ),
                a["tentative"].as_bool().unwrap_or(false),
            ));
        }
    }
    out.sort();
    out
}

/// Routes of `ns` as normalised `ip -o` lines (without trailing spaces).
fn routes(ns: &Netns, fam: &str) -> Vec<String> {
    ns.ip(&format!("{fam} -o route show"))
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn add_wires_pod_and_node_and_pods_reach_the_node_and_each_other() {
    let lock = net_lock();
    let node = node(&lock, "add");
    let pod = netns(&lock, "pod1");
    let mut s = spec(
        "c-add-1",
        "eth0",
        &pod.path(),
        Some("10.244.0.5"),
        Some("fd00:10:244::5"),
    );
    s.mtu = 1450;
    let host = host_ifname("c-add-1", "eth0");
    let w = add_in(&node, &s).expect("ADD");
    assert_eq!(w.host_ifname, host);
    assert_eq!(w.host_mac, "ee:ee:ee:ee:ee:ee");
    assert_eq!(w.pod_ifname, "eth0");
    assert_eq!(w.sandbox, pod.path().display().to_string());

    // The pod's side.
    let l = pod.ip_json("link show dev eth0");
    let l = &l[0];
    assert!(has_flag(l, "UP"), "{l}");
    assert_eq!(l["mtu"], 1450, "{l}");
    assert_eq!(l["address"].as_str(), Some(w.pod_mac.as_str()), "{l}");
    assert_ne!(w.pod_mac, w.host_mac);
    let lo = pod.ip_json("link show dev lo");
    assert!(has_flag(&lo[0], "UP"), "lo: {lo}");
    let a = addrs(&pod, "eth0");
    assert!(a.contains(&("10.244.0.5/32".into(), false)), "{a:?}");
    assert!(a.contains(&("fd00:10:244::5/128".into(), false)), "{a:?}");
    let r4 = routes(&pod, "-4");
    // `ip route` leaves out "proto boot".
    assert_eq!(
        r4,
        vec![
            "default via 169.254.1.1 dev eth0".to_string(),
            "169.254.1.1 dev eth0 scope link".to_string()
        ]
    );
    let r6 = routes(&pod, "-6");
    assert!(
        r6.iter()
            .any(|r| r.starts_with("default via fe80::ecee:eeff:feee:eeee dev eth0")),
        "{r6:?}"
    );
    assert_eq!(pod.sysctl("/proc/sys/net/ipv4/conf/eth0/forwarding"), "0");
    assert_eq!(pod.sysctl("/proc/sys/net/ipv6/conf/eth0/forwarding"), "0");

    // The node's side.
    let l = node.ip_json(&format!("-d link show dev {host}"));
    let l = &l[0];
    assert!(has_flag(l, "UP"), "{l}");
    assert!(has_flag(l, "LOWER_UP"), "{l}");
    assert_eq!(l["address"], "ee:ee:ee:ee:ee:ee", "{l}");
    assert_eq!(l["mtu"], 1450, "{l}");
    assert_eq!(l["linkinfo"]["info_kind"], "veth", "{l}");
    // Only the fixed link-local, usable at once; no IPv4 address.
    assert_eq!(
        addrs(&node, &host),
        vec![("fe80::ecee:eeff:feee:eeee/64".to_string(), false)]
    );
    // Listed with `proto 241`, which `ip` then leaves out of each line.
    let ours = our_routes(&node);
    assert_eq!(
        ours,
        vec![
            format!("10.244.0.5 dev {host} scope link"),
            format!("fd00:10:244::5 dev {host} metric 1024 pref medium"),
        ]
    );
    for (path, want) in [
        ("ipv4/conf/HOST/proxy_arp", "1"),
        ("ipv4/conf/HOST/forwarding", "1"),
        ("ipv4/neigh/HOST/proxy_delay", "0"),
        ("ipv6/conf/HOST/proxy_ndp", "1"),
        ("ipv6/conf/HOST/accept_ra", "0"),
        ("ipv6/conf/HOST/forwarding", "1"),
        ("ipv6/conf/HOST/addr_gen_mode", "1"),
    ] {
        let p = format!("/proc/sys/net/{}", path.replace("HOST", &host));
        assert_eq!(node.sysctl(&p), want, "{p}");
    }
    check_in(&node, &s).expect("CHECK after ADD");

    // Traffic: pod → node, then a second pod → the first.
    for dst in ["198.18.0.1", "fd00:10:244:ff::1"] {
        let (ok, out) = ping(&pod, dst);
        assert!(ok, "pod1 → {dst}: {out}");
    }
    let pod2 = netns(&lock, "pod2");
    let s2 = spec(
        "c-add-2",
        "eth0",
        &pod2.path(),
        Some("10.244.0.6"),
        Some("fd00:10:244::6"),
    );
    add_in(&node, &s2).expect("ADD pod2");
    for dst in ["10.244.0.5", "fd00:10:244::5"] {
        let (ok, out) = ping(&pod2, dst);
        assert!(ok, "pod2 → {dst}: {out}");
    }
    // pod1 learned its gateway by proxy ARP: the host end's MAC.
    let neigh = pod.ip("neigh show 169.254.1.1 dev eth0");
    assert!(neigh.contains("ee:ee:ee:ee:ee:ee"), "{neigh}");

    del_in(&node, "c-add-1", "eth0", Some(pod.path())).expect("DEL pod1");
    del_in(&node, "c-add-2", "eth0", Some(pod2.path())).expect("DEL pod2");
    assert!(our_routes(&node).is_empty());
}

#[test]
fn single_stack_pods_get_only_their_family() {
    let lock = net_lock();
    let node = node(&lock, "single");
    let p4 = netns(&lock, "v4");
    let p6 = netns(&lock, "v6");
    let s4 = spec("c-v4", "eth0", &p4.path(), Some("10.244.0.7"), None);
    let s6 = spec("c-v6", "net1", &p6.path(), None, Some("fd00:10:244::7"));
    add_in(&node, &s4).expect("ADD v4");
    add_in(&node, &s6).expect("ADD v6");
    check_in(&node, &s4).expect("CHECK v4");
    check_in(&node, &s6).expect("CHECK v6");
    assert!(routes(&p4, "-6").iter().all(|r| !r.starts_with("default")));
    assert!(routes(&p6, "-4").is_empty(), "{:?}", routes(&p6, "-4"));
    let (ok, out) = ping(&p4, "198.18.0.1");
    assert!(ok, "{out}");
    let (ok, out) = ping(&p6, "fd00:10:244:ff::1");
    assert!(ok, "{out}");
    assert_eq!(our_routes(&node).len(), 2);
}

#[test]
fn add_of_an_existing_interface_fails_and_changes_nothing() {
    let lock = net_lock();
    let node = node(&lock, "exists");
    let pod = netns(&lock, "pod");
    pod.ip("link add eth0 type veth peer name other");
    let (node_links, node_routes) = (node.links(), node.all_routes());
    let (pod_links, pod_routes) = (pod.links(), pod.all_routes());
    let s = spec(
        "c-exists",
        "eth0",
        &pod.path(),
        Some("10.244.0.8"),
        Some("fd00:10:244::8"),
    );
    match add_in(&node, &s) {
        Err(WiringError::IfnameExists { ifname, .. }) => assert_eq!(ifname, "eth0"),
        other => panic!("{other:?}"),
    }
    assert_eq!(node.links(), node_links);
    assert_eq!(node.all_routes(), node_routes);
    assert_eq!(pod.links(), pod_links);
    assert_eq!(pod.all_routes(), pod_routes);

    // A repeated ADD of a wired pod fails too, leaving the wiring intact.
    let pod2 = netns(&lock, "pod2");
    let s2 = spec("c-exists-2", "eth0", &pod2.path(), Some("10.244.0.9"), None);
    add_in(&node, &s2).expect("first ADD");
    let before = (
        node.links(),
        node.all_routes(),
        pod2.links(),
        pod2.all_routes(),
    );
    match add_in(&node, &s2) {
        Err(e @ WiringError::IfnameExists { .. }) => {
            assert!(e.to_string().contains("eth0 already exists"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        before,
        (
            node.links(),
            node.all_routes(),
            pod2.links(),
            pod2.all_routes()
        )
    );
    check_in(&node, &s2).expect("still wired");
}

#[test]
fn bad_namespaces_and_names_fail_and_change_nothing() {
    let lock = net_lock();
    let node = node(&lock, "badns");
    let before = (node.links(), node.all_routes());
    let missing = spec(
        "c-bad",
        "eth0",
        Path::new("/var/run/netns/fvt-wire-does-not-exist"),
        Some("10.244.0.10"),
        None,
    );
    let e = add_in(&node, &missing).expect_err("missing netns");
    assert!(matches!(e, WiringError::NetnsMissing { .. }), "{e:?}");
    let e = check_in(&node, &missing).expect_err("CHECK of a missing netns");
    assert!(matches!(e, WiringError::NetnsMissing { .. }), "{e:?}");

    let file = tempfile::NamedTempFile::new().expect("temp file");
    let not_ns = spec("c-bad", "eth0", file.path(), Some("10.244.0.10"), None);
    let e = add_in(&node, &not_ns).expect_err("not a netns");
    assert!(matches!(e, WiringError::NotANetns { .. }), "{e:?}");

    // The node's own namespace (the caller's) is refused.
    let own = spec("c-bad", "eth0", &node.path(), Some("10.244.0.10"), None);
    let e = add_in(&node, &own).expect_err("own netns");
    assert!(e.to_string().contains("node's own"), "{e}");

    let pod = netns(&lock, "pod");
    for name in ["averyverylongifname", "a/b", "eth%d", ""] {
        let s = spec("c-bad", name, &pod.path(), Some("10.244.0.10"), None);
        let e = add_in(&node, &s).expect_err(name);
        assert!(
            matches!(e, WiringError::InvalidIfname { .. }),
            "{name}: {e:?}"
        );
    }
    assert_eq!((node.links(), node.all_routes()), before);
    assert_eq!(pod.links(), vec!["lo".to_string()]);
}

#[test]
fn failed_add_leaves_nothing_behind() {
    let lock = net_lock();
    let node = node(&lock, "undo");
    // A host route conflict: the node already routes the pod's address.
    node.ip("route add 10.244.0.11/32 via 198.18.0.2");
    let pod = netns(&lock, "pod");
    let before = (
        node.links(),
        node.all_routes(),
        pod.links(),
        pod.all_routes(),
    );
    let s = spec("c-undo", "eth0", &pod.path(), Some("10.244.0.11"), None);
    match add_in(&node, &s) {
        Err(WiringError::RouteExists { prefix }) => assert_eq!(prefix, "10.244.0.11/32"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        before,
        (
            node.links(),
            node.all_routes(),
            pod.links(),
            pod.all_routes()
        )
    );

    // A pod-side failure (the pod already has a default route) after the host side is done.
    let pod2 = netns(&lock, "pod2");
    pod2.ip("route add blackhole default");
    let before = (
        node.links(),
        node.all_routes(),
        pod2.links(),
        pod2.all_routes(),
    );
    let s2 = spec("c-undo-2", "eth0", &pod2.path(), Some("10.244.0.12"), None);
    let e = add_in(&node, &s2).expect_err("pod default route exists");
    assert!(
        e.to_string().contains("default via 169.254.1.1"),
        "the error names the step: {e}"
    );
    assert_eq!(
        before,
        (
            node.links(),
            node.all_routes(),
            pod2.links(),
            pod2.all_routes()
        )
    );
}

#[test]
fn del_is_idempotent_and_survives_a_missing_namespace() {
    let lock = net_lock();
    let node = node(&lock, "del");
    let pod = netns(&lock, "pod");
    let s = spec(
        "c-del",
        "eth0",
        &pod.path(),
        Some("10.244.0.13"),
        Some("fd00:10:244::13"),
    );
    let host = host_ifname("c-del", "eth0");
    add_in(&node, &s).expect("ADD");
    del_in(&node, "c-del", "eth0", Some(pod.path())).expect("DEL");
    assert!(!node.links().contains(&host));
    assert!(our_routes(&node).is_empty());
    assert_eq!(pod.links(), vec!["lo".to_string()]);
    del_in(&node, "c-del", "eth0", Some(pod.path())).expect("DEL again");
    del_in(&node, "c-del", "eth0", None).expect("DEL without netns");

    // The namespace deleted before DEL (its veth went with it).
    let pod2 = netns(&lock, "pod2");
    let s2 = spec("c-del-2", "eth0", &pod2.path(), Some("10.244.0.14"), None);
    add_in(&node, &s2).expect("ADD 2");
    let path2 = pod2.path();
    drop(pod2);
    del_in(&node, "c-del-2", "eth0", Some(path2.clone())).expect("DEL, netns gone");
    del_in(&node, "c-del-2", "eth0", None).expect("DEL, no netns");
    // With the namespace alive but the path given as absent.
    let pod3 = netns(&lock, "pod3");
    let s3 = spec("c-del-3", "eth0", &pod3.path(), Some("10.244.0.15"), None);
    add_in(&node, &s3).expect("ADD 3");
    del_in(&node, "c-del-3", "eth0", None).expect("DEL, no netns path");
    assert_eq!(pod3.links(), vec!["lo".to_string()]);
    assert!(
        !node.links().iter().any(|l| is_host_ifname(l)),
        "{:?}",
        node.links()
    );
    assert!(our_routes(&node).is_empty(), "{:?}", our_routes(&node));

    // The host end gone but a pod interface of that name left: DEL removes it.
    pod3.ip("link add eth0 type veth peer name eth0x");
    del_in(&node, "c-del-3", "eth0", Some(pod3.path())).expect("DEL of a stray pod end");
    assert_eq!(pod3.links(), vec!["lo".to_string()]);

    // A namespace path that is an empty file (unmounted namespace) is a gone namespace.
    let file = tempfile::NamedTempFile::new().expect("temp file");
    del_in(&node, "c-del-4", "eth0", Some(file.path().to_path_buf())).expect("DEL, stale path");
}

#[test]
fn gc_deletes_only_host_ends_of_attachments_not_valid() {
    let lock = net_lock();
    let node = node(&lock, "gc");
    let keep_pod = netns(&lock, "keep");
    let stale_pod = netns(&lock, "stale");
    let keep = spec(
        "c-gc-keep",
        "eth0",
        &keep_pod.path(),
        Some("10.244.0.20"),
        None,
    );
    let stale = spec(
        "c-gc-stale",
        "eth0",
        &stale_pod.path(),
        Some("10.244.0.21"),
        Some("fd00:10:244::21"),
    );
    add_in(&node, &keep).expect("ADD keep");
    add_in(&node, &stale).expect("ADD stale");
    // Not ours: a name of another shape.
    node.link("cali012345678");
    let (keep_host, stale_host) = (
        host_ifname("c-gc-keep", "eth0"),
        host_ifname("c-gc-stale", "eth0"),
    );
    let valid = BTreeSet::from([keep_host.clone()]);
    let deleted = node
        .run(move || async move { delete_stale_host_ends(valid).await })
        .expect("GC");
    assert_eq!(deleted, vec![stale_host.clone()]);
    let links = node.links();
    assert!(links.contains(&keep_host), "{links:?}");
    assert!(!links.contains(&stale_host), "{links:?}");
    assert!(links.contains(&"cali012345678".to_string()), "{links:?}");
    assert_eq!(stale_pod.links(), vec!["lo".to_string()]);
    check_in(&node, &keep).expect("the valid pod is still wired");
    assert_eq!(
        our_routes(&node),
        vec![format!("10.244.0.20 dev {keep_host} scope link")]
    );
    // Nothing left to collect: nothing deleted.
    let valid = BTreeSet::from([keep_host]);
    let again = node
        .run(move || async move { delete_stale_host_ends(valid).await })
        .expect("GC again");
    assert!(again.is_empty(), "{again:?}");
}

#[test]
fn check_reports_precisely_what_is_missing() {
    let lock = net_lock();
    let node = node(&lock, "check");
    let pod = netns(&lock, "pod");
    let s = spec(
        "c-check",
        "eth0",
        &pod.path(),
        Some("10.244.0.16"),
        Some("fd00:10:244::16"),
    );
    let host = host_ifname("c-check", "eth0");
    add_in(&node, &s).expect("ADD");
    check_in(&node, &s).expect("CHECK");

    let problems = |e: WiringError| match e {
        WiringError::Mismatch { problems } => problems,
        other => panic!("expected a mismatch, got {other:?}"),
    };
    pod.ip("route del default via 169.254.1.1 dev eth0");
    let p = problems(check_in(&node, &s).expect_err("route removed"));
    assert_eq!(
        p,
        vec!["pod route default via 169.254.1.1 dev eth0 is missing".to_string()]
    );

    pod.ip("-6 addr del fd00:10:244::16/128 dev eth0");
    let p = problems(check_in(&node, &s).expect_err("address removed"));
    assert!(
        p.contains(&"pod address fd00:10:244::16/128 on eth0 is missing".to_string()),
        "{p:?}"
    );

    node.ip("route del 10.244.0.16/32");
    let p = problems(check_in(&node, &s).expect_err("host route removed"));
    assert!(
        p.iter()
            .any(|x| x.starts_with(&format!("host route 10.244.0.16/32 dev {host} is missing"))),
        "{p:?}"
    );

    // Different expectations: another MTU, another address.
    let mut other = s.clone();
    other.mtu = 1400;
    other.ipv4 = Some("10.244.0.99".parse().expect("v4"));
    let p = problems(check_in(&node, &other).expect_err("other spec"));
    assert!(
        p.contains(&"pod interface eth0 has MTU 1500, expected 1400".to_string()),
        "{p:?}"
    );
    assert!(
        p.contains(
            &"pod address 10.244.0.99/32 on eth0 is missing (eth0 has 10.244.0.16/32)".to_string()
        ),
        "{p:?}"
    );

    // Missing interfaces are "not found".
    let mut renamed = s.clone();
    renamed.ifname = "eth1".into();
    let e = check_in(&node, &renamed).expect_err("no host end for eth1");
    assert!(
        matches!(e, WiringError::HostInterfaceMissing { .. }),
        "{e:?}"
    );
    pod.ip("link del eth0");
    let e = check_in(&node, &s).expect_err("pair gone");
    assert!(
        matches!(e, WiringError::HostInterfaceMissing { .. }),
        "{e:?}"
    );
}

#[test]
fn concurrent_adds_and_an_abandoned_add() {
    const N: usize = 12;
    let lock = net_lock();
    let node = node(&lock, "conc");
    let pods: Vec<Netns> = (0..N).map(|_| netns(&lock, "p")).collect();
    let specs: Vec<PodSpec> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| {
            spec(
                &format!("c-conc-{i}"),
                "eth0",
                &p.path(),
                Some(&format!("10.244.2.{}", i + 1)),
                Some(&format!("fd00:10:244:2::{:x}", i + 1)),
            )
        })
        .collect();
    let all = specs.clone();
    let results =
        node.run(move || async move { futures::future::join_all(all.iter().map(add)).await });
    for (r, s) in results.into_iter().zip(&specs) {
        r.unwrap_or_else(|e| panic!("ADD {}: {e}", s.container_id));
        check_in(&node, s).unwrap_or_else(|e| panic!("CHECK {}: {e}", s.container_id));
    }
    assert_eq!(our_routes(&node).len(), 2 * N);
    let (ok, out) = ping(&pods[0], "10.244.2.2");
    assert!(ok, "{out}");

    // An ADD whose caller stops waiting is undone by its thread. This one holds, wired,
    // until its future is dropped (`hold`), so it is surely still running when abandoned.
    let pod = netns(&lock, "abandoned");
    let cid = "c-abandoned";
    let host = host_ifname(cid, "eth0");
    let s = spec(cid, "eth0", &pod.path(), Some("10.244.2.100"), None);
    hold::hold(cid);
    let h = host.clone();
    let wired_when_abandoned = node.run(move || async move {
        let add = add(&s);
        futures::pin_mut!(add);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !hold::holding(cid) {
            assert!(Instant::now() < deadline, "the held ADD never got wired");
            // Polls the ADD (the first poll starts its thread), then lets the thread work.
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(10), &mut add).await {
                panic!("the held ADD finished: {r:?}");
            }
        }
        // This thread is in the node's namespace.
        let wired = run("ip", &["link", "show", "dev", &h]).status.success();
        // Returning drops the ADD's future: abandoned.
        wired
    });
    assert!(
        wired_when_abandoned,
        "{host} did not exist while the ADD held"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.links().contains(&host) || pod.links().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "the abandoned ADD was not undone: node {:?}, pod {:?}",
            node.links(),
            pod.links()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!hold::holding(cid));
    assert_eq!(our_routes(&node).len(), 2 * N);
}

// ---------- benchmark ----------

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs a reference plugin from a thread in `node` (so in its namespace); its duration.
fn ptp(node: &Netns, command: &str, cid: &str, netns: &Path, conf: &str) -> Duration {
    let (command, cid, netns, conf) = (
        command.to_string(),
        cid.to_string(),
        netns.to_path_buf(),
        conf.to_string(),
    );
    node.run(move || async move {
        use std::io::Write as _;
        let t = Instant::now();
        let mut child = Command::new("/usr/lib/cni/ptp")
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &cid)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ptp");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("ptp");
        let d = t.elapsed();
        assert!(
            out.status.success(),
            "ptp {command}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        d
    })
}

#[test]
#[ignore = "benchmark: cargo test --release -- --ignored --nocapture bench_add_del"]
fn bench_add_del() {
    const N: usize = 50;
    let lock = net_lock();
    let node = node(&lock, "bench");
    let have_ptp = Path::new("/usr/lib/cni/ptp").exists();
    let data = tempfile::tempdir().expect("temp dir");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"fvbench","type":"ptp","ipMasq":false,
            "ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.244.128.0/17"}}]],
                     "dataDir":"{}"}}}}"#,
        data.path().display()
    );
    let ours_ns: Vec<Netns> = (0..N).map(|_| netns(&lock, "b")).collect();
    let ref_ns: Vec<Netns> = if have_ptp {
        (0..N).map(|_| netns(&lock, "r")).collect()
    } else {
        Vec::new()
    };
    let specs: Vec<PodSpec> = ours_ns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let mut s = spec(&format!("bench-{i}"), "eth0", &ns.path(), None, None);
            s.ipv4 = Some(Ipv4Addr::new(10, 244, 1, i as u8 + 1));
            s.ipv6 = Some(format!("fd00:10:244:1::{:x}", i + 1).parse().expect("v6"));
            s
        })
        .collect();

    // Interleaved, so both see the same machine.
    let (mut add_ours, mut add_ref, mut del_ours, mut del_ref) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..N {
        let s = specs[i].clone();
        add_ours.push(node.run(move || async move {
            let t = Instant::now();
            add(&s).await.expect("ADD");
            t.elapsed()
        }));
        if have_ptp {
            add_ref.push(ptp(
                &node,
                "ADD",
                &format!("ref-{i}"),
                &ref_ns[i].path(),
                &conf,
            ));
        }
    }
    for i in 0..N {
        let p = ours_ns[i].path();
        del_ours.push(node.run(move || async move {
            let t = Instant::now();
            del(&format!("bench-{i}"), "eth0", Some(&p))
                .await
                .expect("DEL");
            t.elapsed()
        }));
        if have_ptp {
            del_ref.push(ptp(
                &node,
                "DEL",
                &format!("ref-{i}"),
                &ref_ns[i].path(),
                &conf,
            ));
        }
    }
    let (ao, doo) = (median(&mut add_ours), median(&mut del_ours));
    println!("ferrovia wiring: ADD median {ao:?}, DEL median {doo:?} (n = {N}, IPv4 + IPv6)");
    if have_ptp {
        let (ar, dr) = (median(&mut add_ref), median(&mut del_ref));
        println!("reference ptp + host-local: ADD median {ar:?}, DEL median {dr:?} (IPv4)");
        println!(
            "ratio ours / reference: ADD {:.2}, DEL {:.2}",
            ao.as_secs_f64() / ar.as_secs_f64(),
            doo.as_secs_f64() / dr.as_secs_f64()
        );
    }
    assert!(our_routes(&node).is_empty());
}
