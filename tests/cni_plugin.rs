//! The CNI plugin against a real agent: one node namespace running `ferrovia agent` with a
//! SQLite datastore and IPAM pools (10.244.0.0/16 /26 blocks, fd00:10:244::/48 /122), pod
//! namespaces made with `ip netns add`, and `ferrovia-cni` run as a runtime runs it.
//! IPAM is read back with `ferrovia ipam show --json`.

use ferrovia_testsupport::cni_support;
use ferrovia_testsupport::common;

use cni_support::{addrs, link, links_of, netns_path, Call, Node, VERSIONS};
use common::{net_lock, wait_until, Netns};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

fn is_old(v: &str) -> bool {
    matches!(v, "0.3.0" | "0.3.1" | "0.4.0")
}

fn host_ifname(result: &Value) -> String {
    result["interfaces"][0]["name"]
        .as_str()
        .expect("interfaces[0].name")
        .to_string()
}

/// The ADD result, field by field, against the kernel and IPAM.
fn check_add_result(node: &Node, pod: &Netns, id: &str, v: &str, r: &Value) {
    let keys: BTreeSet<&str> = r
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["cniVersion", "interfaces", "ips", "routes", "dns"]),
        "{v}: {r:#}"
    );
    assert_eq!(r["cniVersion"], v);
    assert_eq!(r["dns"], json!({}), "{v}");

    // interfaces: the host end (no sandbox), then the pod end in the sandbox.
    let ifs = r["interfaces"].as_array().expect("interfaces");
    assert_eq!(ifs.len(), 2, "{v}: {r:#}");
    let host = host_ifname(r);
    let host_link = link(&node.ns, &host).unwrap_or_else(|| panic!("{v}: host end {host} missing"));
    assert_eq!(ifs[0]["mac"], host_link["address"], "{v}: host mac");
    assert!(
        ifs[0].get("sandbox").is_none(),
        "{v}: host end has no sandbox"
    );
    assert_eq!(host_link["linkinfo"]["info_kind"], "veth", "{v}");
    let pod_link = link(pod, "eth0").unwrap_or_else(|| panic!("{v}: pod eth0 missing"));
    assert_eq!(ifs[1]["name"], "eth0");
    assert_eq!(ifs[1]["mac"], pod_link["address"], "{v}: pod mac");
    assert_eq!(ifs[1]["sandbox"], netns_path(pod), "{v}");
    for (i, l) in [(0, &host_link), (1, &pod_link)] {
        assert_eq!(l["mtu"], 1500, "{v}: interface {i} MTU");
        if v == "1.1.0" {
            assert_eq!(ifs[i]["mtu"], 1500, "{v}: interfaces[{i}].mtu");
        } else {
            assert!(ifs[i].get("mtu").is_none(), "{v}: no mtu before 1.1.0");
        }
        let keys: BTreeSet<&str> = ifs[i]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.is_subset(&BTreeSet::from(["name", "mac", "sandbox", "mtu"])),
            "{v}: {keys:?}"
        );
    }

    // ips: a /32 and a /128 on interface 1, with the link-local gateways.
    let ips = r["ips"].as_array().expect("ips");
    assert_eq!(ips.len(), 2, "{v}: {r:#}");
    let v4 = ips[0]["address"].as_str().expect("v4");
    let v6 = ips[1]["address"].as_str().expect("v6");
    let (a4, p4) = v4.split_once('/').expect("CIDR");
    let (a6, p6) = v6.split_once('/').expect("CIDR");
    assert_eq!((p4, p6), ("32", "128"), "{v}");
    let a4: IpAddr = a4.parse().expect("v4 address");
    let a6: IpAddr = a6.parse().expect("v6 address");
    assert!(
        "10.244.0.0/16"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&a4),
        "{a4}"
    );
    assert!(
        "fd00:10:244::/48"
            .parse::<ipnet::IpNet>()
            .unwrap()
            .contains(&a6),
        "{a6}"
    );
    assert_eq!(ips[0]["gateway"], "169.254.1.1");
    assert_eq!(ips[1]["gateway"], "fe80::ecee:eeff:feee:eeee");
    for (ip, fam) in [(&ips[0], "4"), (&ips[1], "6")] {
        assert_eq!(ip["interface"], 1, "{v}");
        if is_old(v) {
            assert_eq!(ip["version"], fam, "{v}: ips[].version");
        } else {
            assert!(ip.get("version").is_none(), "{v}: no version from 1.0.0");
        }
    }
    assert_eq!(
        r["routes"],
        json!([
            {"dst": "0.0.0.0/0", "gw": "169.254.1.1"},
            {"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"}
        ]),
        "{v}"
    );

    // The kernel has what the result says.
    assert_eq!(
        addrs(pod, "eth0"),
        vec![v4.to_string(), v6.to_string()],
        "{v}: pod addresses"
    );
    let routes4 = pod.ip(&["-4", "route", "show", "default"]);
    let routes6 = pod.ip(&["-6", "route", "show", "default"]);
    assert!(
        routes4.contains("via 169.254.1.1 dev eth0"),
        "{v}: {routes4}"
    );
    assert!(
        routes6.contains("via fe80::ecee:eeff:feee:eeee dev eth0"),
        "{v}: {routes6}"
    );
    let host4 = node.ns.ip(&["-4", "route", "show", &a4.to_string()]);
    assert!(
        host4.contains(&format!("dev {host}")),
        "{v}: node route to {a4}: {host4}"
    );
    let host6 = node.ns.ip(&["-6", "route", "show", &a6.to_string()]);
    assert!(
        host6.contains(&format!("dev {host}")),
        "{v}: node route to {a6}: {host6}"
    );

    // IPAM holds exactly these, under the pod's identity.
    let mut want = vec![a4.to_string(), a6.to_string()];
    want.sort();
    assert_eq!(node.addresses_of(id), want, "{v}: IPAM");
    let show = node.ipam();
    for a in show["allocations"].as_array().unwrap() {
        if a["handle"]["containerId"] == id {
            assert_eq!(a["handle"]["interface"], "eth0");
            assert_eq!(a["node"], "node1");
            assert_eq!(a["attributes"]["namespace"], format!("ns-{id}"));
            assert_eq!(a["attributes"]["pod"], format!("pod-{id}"));
        }
    }
}

fn status_call(node: &Node, version: &str) -> cni_support::Run {
    node.exec_plugin(
        &[
            ("CNI_COMMAND", "STATUS".into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
        ],
        &node.conf(version).to_string(),
    )
}

fn gc_call(node: &Node, conf: &Value) -> cni_support::Run {
    node.exec_plugin(
        &[
            ("CNI_COMMAND", "GC".into()),
            ("CNI_PATH", "/opt/cni/bin".into()),
        ],
        &conf.to_string(),
    )
}

fn attachments(ids: &[&str]) -> Value {
    Value::Array(
        ids.iter()
            .map(|i| json!({"containerID": i, "ifname": "eth0"}))
            .collect(),
    )
}

#[test]
fn every_command_in_every_version() {
    let lock = net_lock();
    let node = Node::start(&lock, "cniver");
    let supported = json!(VERSIONS);
    for (n, v) in VERSIONS.iter().copied().enumerate() {
        let id = format!("ver{n}");

        // VERSION: only CNI_COMMAND; echoes the version asked.
        let r = node.exec_plugin(
            &[("CNI_COMMAND", "VERSION".into())],
            &json!({"cniVersion": v}).to_string(),
        );
        assert!(r.ok, "{r:#?}");
        assert_eq!(
            r.json,
            json!({"cniVersion": v, "supportedVersions": supported})
        );

        // ADD
        let (pod, result) = node.add(&lock, &id, v);
        check_add_result(&node, &pod, &id, v, &result);

        // CHECK, with the ADD's result as prevResult (from 0.4.0).
        let mut with_prev = node.conf(v);
        with_prev["prevResult"] = result.clone();
        let r = node.cni(&Call::new("CHECK", &id, Some(&pod)), &with_prev);
        if is_old(v) && v != "0.4.0" {
            let e = r.assert_error(1, v, "CHECK before 0.4.0");
            assert_eq!(e["msg"], "config version does not allow CHECK");
        } else {
            r.assert_silent_ok(&format!("CHECK {v}"));
        }

        // STATUS and GC exist in 1.1.0 only.
        let r = status_call(&node, v);
        let gc_conf = {
            let mut c = node.conf(v);
            c["cni.dev/valid-attachments"] = attachments(&[&id]);
            c
        };
        let g = gc_call(&node, &gc_conf);
        if v == "1.1.0" {
            r.assert_silent_ok("STATUS 1.1.0");
            g.assert_silent_ok("GC 1.1.0");
            assert_eq!(
                node.addresses_of(&id).len(),
                2,
                "GC kept the valid attachment"
            );
        } else {
            let e = r.assert_error(1, v, "STATUS before 1.1.0");
            assert_eq!(e["msg"], "config version does not allow STATUS");
            let e = g.assert_error(1, v, "GC before 1.1.0");
            assert_eq!(e["msg"], "config version does not allow GC");
        }

        // DEL (runtimes pass prevResult from 0.4.0).
        let conf = if is_old(v) && v != "0.4.0" {
            node.conf(v)
        } else {
            with_prev
        };
        let host = host_ifname(&result);
        node.cni(&Call::new("DEL", &id, Some(&pod)), &conf)
            .assert_silent_ok(&format!("DEL {v}"));
        assert!(
            node.addresses_of(&id).is_empty(),
            "{v}: DEL released the addresses"
        );
        assert!(!node.links().contains(&host), "{v}: DEL removed {host}");
        assert!(
            link(&pod, "eth0").is_none(),
            "{v}: DEL removed the pod's eth0"
        );
    }
}

#[test]
fn pod_reaches_the_node_over_both_families() {
    let lock = net_lock();
    let node = Node::start(&lock, "cniping");
    let (pod, r) = node.add(&lock, "ping1", "1.0.0");
    for target in ["198.18.0.1", "fd00:198:18::1"] {
        wait_until(
            &format!("the pod pings {target}"),
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let out = pod.exec(&["ping", "-c", "1", "-W", "1", target]);
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{}{}\nresult: {r}",
                        String::from_utf8_lossy(&out.stdout),
                        String::from_utf8_lossy(&out.stderr)
                    ))
                }
            },
        );
    }
}

#[test]
fn del_succeeds_repeated_without_netns_and_after_the_netns_is_gone() {
    let lock = net_lock();
    let node = Node::start(&lock, "cnidel");
    let conf = node.conf("1.0.0");

    // Twice.
    let (pod, r) = node.add(&lock, "twice", "1.0.0");
    let host = host_ifname(&r);
    assert_eq!(node.addresses_of("twice").len(), 2);
    for round in 1..=2 {
        node.cni(&Call::new("DEL", "twice", Some(&pod)), &conf)
            .assert_silent_ok(&format!("DEL #{round}"));
        assert!(
            node.addresses_of("twice").is_empty(),
            "DEL #{round} released"
        );
        assert!(!node.links().contains(&host), "DEL #{round} removed {host}");
    }

    // The namespace is gone (the runtime still names it).
    let (pod, r) = node.add(&lock, "gone", "1.0.0");
    let path = netns_path(&pod);
    let host = host_ifname(&r);
    drop(pod);
    assert!(!std::path::Path::new(&path).exists());
    let mut call = Call::new("DEL", "gone", None);
    call.netns = Some(path);
    node.cni(&call, &conf)
        .assert_silent_ok("DEL after the netns is gone");
    assert!(
        node.addresses_of("gone").is_empty(),
        "released after the netns went"
    );
    assert!(!node.links().contains(&host));

    // No CNI_NETNS at all (the namespace still exists: the host end must go, and the
    // pod end with it).
    let (pod, r) = node.add(&lock, "nonetns", "1.0.0");
    let host = host_ifname(&r);
    node.cni(&Call::new("DEL", "nonetns", None), &conf)
        .assert_silent_ok("DEL without CNI_NETNS");
    assert!(
        node.addresses_of("nonetns").is_empty(),
        "released without CNI_NETNS"
    );
    assert!(
        !node.links().contains(&host),
        "host end removed without CNI_NETNS"
    );
    assert!(
        link(&pod, "eth0").is_none(),
        "pod end went with the host end"
    );
    // And again, for good measure; and an empty CNI_NETNS.
    let mut call = Call::new("DEL", "nonetns", None);
    call.netns = Some(String::new());
    node.cni(&call, &conf)
        .assert_silent_ok("DEL with an empty CNI_NETNS");

    // Something the agent never saw.
    node.cni(&Call::new("DEL", "neverseen", None), &conf)
        .assert_silent_ok("DEL of an unknown container");
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
}

#[test]
fn add_of_an_existing_interface_name_fails_and_changes_nothing() {
    let lock = net_lock();
    let node = Node::start(&lock, "cniexist");
    // A pod first, so that the blocks are claimed.
    let (pod1, _) = node.add(&lock, "first", "1.0.0");

    // A namespace that already has an eth0.
    let pod2 = Netns::new(&lock, "pod");
    pod2.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let before = node.snapshot(&[&pod1, &pod2]);
    let r = node.cni(
        &Call::new("ADD", "second", Some(&pod2)),
        &node.conf("1.0.0"),
    );
    let e = r.assert_error(102, "1.0.0", "ADD into an existing eth0");
    assert!(
        e["msg"].as_str().unwrap().contains("eth0")
            || e["details"].as_str().unwrap_or("").contains("eth0"),
        "{e}"
    );
    assert_eq!(
        node.snapshot(&[&pod1, &pod2]),
        before,
        "a refused ADD changes nothing"
    );

    // Another container into the first pod's namespace: its eth0 exists.
    let before = node.snapshot(&[&pod1]);
    let r = node.cni(&Call::new("ADD", "third", Some(&pod1)), &node.conf("1.1.0"));
    r.assert_error(102, "1.1.0", "ADD into a pod's eth0");
    assert_eq!(
        node.snapshot(&[&pod1]),
        before,
        "the first pod is untouched"
    );
    assert_eq!(node.addresses_of("first").len(), 2);
}

#[test]
fn check_reports_what_was_changed_by_hand() {
    let lock = net_lock();
    let node = Node::start(&lock, "cnicheck");
    let check = |id: &str, pod: &Netns, prev: &Value| {
        let mut c = node.conf("1.0.0");
        c["prevResult"] = prev.clone();
        node.cni(&Call::new("CHECK", id, Some(pod)), &c)
    };

    // An address removed.
    let (pod, r) = node.add(&lock, "noaddr", "1.0.0");
    check("noaddr", &pod, &r).assert_silent_ok("CHECK right after ADD");
    let v4 = r["ips"][0]["address"].as_str().unwrap();
    pod.ip(&["addr", "del", v4, "dev", "eth0"]);
    let e = check("noaddr", &pod, &r)
        .assert_error(105, "1.0.0", "CHECK without the address")
        .clone();
    assert!(
        e.to_string().contains(v4.split('/').next().unwrap()),
        "names the address: {e}"
    );

    // A route removed.
    let (pod, r) = node.add(&lock, "noroute", "1.0.0");
    pod.ip(&["-6", "route", "del", "default"]);
    check("noroute", &pod, &r).assert_error(105, "1.0.0", "CHECK without the IPv6 default route");

    // The node's route to the pod removed.
    let (pod, r) = node.add(&lock, "nohost", "1.0.0");
    let v4 = r["ips"][0]["address"].as_str().unwrap();
    node.ns.ip(&["route", "del", v4, "dev", &host_ifname(&r)]);
    check("nohost", &pod, &r).assert_error(
        105,
        "1.0.0",
        "CHECK without the node's route to the pod",
    );

    // prevResult disagrees with IPAM.
    let (pod, r) = node.add(&lock, "otherip", "1.0.0");
    let mut wrong = r.clone();
    wrong["ips"][0]["address"] = json!("10.244.255.255/32");
    let e = check("otherip", &pod, &wrong)
        .assert_error(105, "1.0.0", "CHECK with another address")
        .clone();
    assert!(e.to_string().contains("10.244.255.255"), "{e}");
    check("otherip", &pod, &r).assert_silent_ok("CHECK with the right prevResult");

    // IPAM released behind the runtime's back (a GC that did not list it).
    let mut gc = node.conf("1.1.0");
    gc["cni.dev/valid-attachments"] = attachments(&["noaddr", "noroute", "nohost"]);
    cni_gc_ok(&node, &gc);
    check("otherip", &pod, &r).assert_error(105, "1.0.0", "CHECK after its addresses were freed");
}

fn cni_gc_ok(node: &Node, conf: &Value) {
    gc_call(node, conf).assert_silent_ok("GC");
}

#[test]
fn gc_frees_exactly_the_stale_attachments_with_either_key() {
    let lock = net_lock();
    let node = Node::start(&lock, "cnigc");
    let mut pods = Vec::new();
    for id in ["a", "b", "c", "d"] {
        let (ns, r) = node.add(&lock, id, "1.1.0");
        pods.push((id, ns, host_ifname(&r)));
    }
    let held = |id: &str| node.addresses_of(id).len() == 2;

    // cni.dev/valid-attachments (the corrected spec), with one attachment we never saw.
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = attachments(&["a", "b", "zz-unknown"]);
    cni_gc_ok(&node, &conf);
    assert!(held("a") && held("b"), "{:?}", node.allocations());
    assert!(
        !held("c") && node.addresses_of("d").is_empty(),
        "{:?}",
        node.allocations()
    );
    let links = node.links();
    for (id, ns, host) in &pods {
        let keep = *id == "a" || *id == "b";
        assert_eq!(
            links.contains(host),
            keep,
            "{id}: host end {host} in {links:?}"
        );
        assert_eq!(link(ns, "eth0").is_some(), keep, "{id}: pod end");
    }

    // cni.dev/attachments (spec 1.1.0's name) alone.
    let (e_ns, e) = node.add(&lock, "e", "1.1.0");
    let (_f_ns, f) = node.add(&lock, "f", "1.1.0");
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/attachments"] = attachments(&["a", "e"]);
    cni_gc_ok(&node, &conf);
    assert!(held("a") && held("e"));
    assert!(node.addresses_of("b").is_empty() && node.addresses_of("f").is_empty());
    assert!(node.links().contains(&host_ifname(&e)));
    assert!(!node.links().contains(&host_ifname(&f)));
    assert!(link(&e_ns, "eth0").is_some());

    // Both keys, as runtimes send them: the union is kept.
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = attachments(&["a"]);
    conf["cni.dev/attachments"] = attachments(&["e"]);
    let before = node.snapshot(&[&pods[0].1, &e_ns]);
    cni_gc_ok(&node, &conf);
    assert_eq!(
        node.snapshot(&[&pods[0].1, &e_ns]),
        before,
        "nothing stale: nothing changed"
    );

    // Everything stale.
    let mut conf = node.conf("1.1.0");
    conf["cni.dev/valid-attachments"] = json!([]);
    cni_gc_ok(&node, &conf);
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    assert!(!node.links().iter().any(|l| *l == host_ifname(&e)));
}

/// Each bad input: its error code, named variables, and nothing changed on the node, in
/// the pod namespace, or in IPAM.
#[test]
fn bad_input_is_refused_with_its_code_and_changes_nothing() {
    let lock = net_lock();
    let node = Node::start(&lock, "cnibad");
    // A pod so that the node has blocks and veths to keep.
    let (pod1, _) = node.add(&lock, "keep", "1.0.0");
    let pod = Netns::new(&lock, "pod");
    let good = node.conf("1.0.0");
    let before = node.snapshot(&[&pod1, &pod]);
    let path = netns_path(&pod);
    let base: Vec<(&str, String)> = vec![
        ("CNI_COMMAND", "ADD".into()),
        ("CNI_CONTAINERID", "bad1".into()),
        ("CNI_NETNS", path.clone()),
        ("CNI_IFNAME", "eth0".into()),
        ("CNI_PATH", "/opt/cni/bin".into()),
        ("CNI_ARGS", "K8S_POD_NAMESPACE=x;K8S_POD_NAME=y".into()),
    ];
    let without = |k: &str| -> Vec<(&str, String)> {
        base.iter().filter(|(n, _)| *n != k).cloned().collect()
    };
    let with = |k: &'static str, v: &str| -> Vec<(&str, String)> {
        let mut e = without(k);
        e.push((k, v.to_string()));
        e
    };
    let conf_with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c.to_string()
    };
    let good_s = good.to_string();
    // (what, environment, stdin, error code, error cniVersion, what the error names)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, String)>,
        String,
        u64,
        &'a str,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "no CNI_COMMAND",
            without("CNI_COMMAND"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_COMMAND",
        ),
        (
            "unknown CNI_COMMAND",
            with("CNI_COMMAND", "ATTACH"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_COMMAND",
        ),
        (
            "no CNI_CONTAINERID",
            without("CNI_CONTAINERID"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_CONTAINERID",
        ),
        (
            "no CNI_NETNS",
            without("CNI_NETNS"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_NETNS",
        ),
        (
            "no CNI_IFNAME",
            without("CNI_IFNAME"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_IFNAME",
        ),
        (
            "CNI_IFNAME too long",
            with("CNI_IFNAME", "eth0123456789012"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_IFNAME",
        ),
        (
            "CNI_IFNAME with a slash",
            with("CNI_IFNAME", "et/h0"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_IFNAME",
        ),
        (
            "bad CNI_CONTAINERID",
            with("CNI_CONTAINERID", "_bad"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_CONTAINERID",
        ),
        (
            "bad CNI_ARGS",
            with("CNI_ARGS", "K8S_POD_NAME"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_ARGS",
        ),
        (
            "relative CNI_NETNS",
            with("CNI_NETNS", "run/netns/x"),
            good_s.clone(),
            4,
            "1.0.0",
            "CNI_NETNS",
        ),
        (
            "netns that does not exist",
            with("CNI_NETNS", "/run/netns/fvt-no-such-ns"),
            good_s.clone(),
            3,
            "1.0.0",
            "fvt-no-such-ns",
        ),
        (
            "CNI_NETNS not a namespace",
            with("CNI_NETNS", "/etc/hostname"),
            good_s.clone(),
            4,
            "1.0.0",
            "/etc/hostname",
        ),
        (
            "unparsable stdin",
            base.clone(),
            "{\"cniVersion\": \"1.0.0\",".into(),
            6,
            "1.1.0",
            "stdin",
        ),
        (
            "stdin not an object",
            base.clone(),
            "[]".into(),
            6,
            "1.1.0",
            "stdin",
        ),
        (
            "unsupported version",
            base.clone(),
            conf_with("cniVersion", json!("0.2.0")),
            1,
            "0.2.0",
            "0.2.0",
        ),
        (
            "future version",
            base.clone(),
            conf_with("cniVersion", json!("2.0.0")),
            1,
            "2.0.0",
            "2.0.0",
        ),
        (
            "mtu out of range",
            base.clone(),
            conf_with("mtu", json!(100)),
            7,
            "1.0.0",
            "mtu",
        ),
        (
            "mtu not a number",
            base.clone(),
            conf_with("mtu", json!("1500")),
            7,
            "1.0.0",
            "mtu",
        ),
        (
            "relative agentSocket",
            base.clone(),
            conf_with("agentSocket", json!("x.sock")),
            7,
            "1.0.0",
            "agentSocket",
        ),
        (
            "an ipam section",
            base.clone(),
            conf_with("ipam", json!({"type": "host-local"})),
            2,
            "1.0.0",
            "ipam",
        ),
        (
            "no name",
            base.clone(),
            {
                let mut c = good.clone();
                c.as_object_mut().unwrap().remove("name");
                c.to_string()
            },
            7,
            "1.0.0",
            "name",
        ),
    ];
    for (what, env, stdin, code, version, names) in cases {
        let r = node.exec_plugin(&env, &stdin);
        let e = r.assert_error(code, version, what).clone();
        let text = format!("{} {}", e["msg"], e["details"]);
        assert!(text.contains(names), "{what}: the error names {names}: {e}");
        assert!(!r.stderr.is_empty(), "{what}: a log line on stderr");
        assert_eq!(
            node.snapshot(&[&pod1, &pod]),
            before,
            "{what}: nothing changed"
        );
    }
    // CHECK without prevResult; GC without an attachment list.
    let mut check = base.clone();
    check[0].1 = "CHECK".into();
    node.exec_plugin(&check, &good_s)
        .assert_error(7, "1.0.0", "CHECK without prevResult");
    let r = gc_call(&node, &node.conf("1.1.0"));
    r.assert_error(7, "1.1.0", "GC without valid attachments");
    assert_eq!(node.snapshot(&[&pod1, &pod]), before, "nothing changed");
    assert_eq!(node.addresses_of("keep").len(), 2);
}

#[test]
fn agent_not_running_is_try_again_and_status_50() {
    let lock = net_lock();
    let mut node = Node::without_agent(&lock, "cnidown");
    let pod = Netns::new(&lock, "pod");
    let before_links = (node.links(), links_of(&pod));
    let down = |node: &Node, pod: &Netns| {
        for v in ["0.3.1", "1.0.0", "1.1.0"] {
            let r = node.cni(&Call::new("ADD", "down1", Some(pod)), &node.conf(v));
            let e = r.assert_error(11, v, "ADD with the agent down").clone();
            assert!(
                e["details"]
                    .as_str()
                    .unwrap()
                    .contains(&node.socket.display().to_string()),
                "{e}"
            );
            node.cni(&Call::new("DEL", "down1", Some(pod)), &node.conf(v))
                .assert_error(11, v, "DEL with the agent down");
        }
        let mut prev = node.conf("1.0.0");
        prev["prevResult"] = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": netns_path(pod)}], "ips": [{"address": "10.244.0.1/32", "interface": 0}]});
        node.cni(&Call::new("CHECK", "down1", Some(pod)), &prev)
            .assert_error(11, "1.0.0", "CHECK with the agent down");
        let mut gc = node.conf("1.1.0");
        gc["cni.dev/valid-attachments"] = json!([]);
        gc_call(node, &gc).assert_error(11, "1.1.0", "GC with the agent down");
        status_call(node, "1.1.0").assert_error(50, "1.1.0", "STATUS with the agent down");
    };
    down(&node, &pod);
    assert_eq!(
        (node.links(), links_of(&pod)),
        before_links,
        "nothing changed"
    );

    // Up: works. Stopped again: 11 and 50 again; back: the pod is DELeted fine.
    node.start_agent();
    status_call(&node, "1.1.0").assert_silent_ok("STATUS with the agent up");
    let (pod2, _) = node.add(&lock, "up1", "1.1.0");
    node.stop_agent();
    down(&node, &pod);
    node.start_agent();
    node.cni(&Call::new("DEL", "up1", Some(&pod2)), &node.conf("1.1.0"))
        .assert_silent_ok("DEL once the agent is back");
    assert!(node.allocations().is_empty());
}

#[test]
fn a_hundred_parallel_adds_get_distinct_addresses() {
    const N: usize = 100;
    let lock = net_lock();
    let node = Node::start(&lock, "cnipar");
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new(&lock, "pp")).collect();
    let ids: Vec<String> = (0..N).map(|i| format!("par{i:03}")).collect();
    let conf = node.conf("1.1.0");
    let start = std::time::Instant::now();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .zip(&ids)
            .map(|(pod, id)| {
                let (node, conf) = (&node, &conf);
                s.spawn(move || {
                    let r = node.cni(&Call::new("ADD", id, Some(pod)), conf);
                    assert!(r.ok, "parallel ADD {id}: {r:#?}");
                    r.json
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    });
    eprintln!("{N} parallel ADDs took {:?}", start.elapsed());
    let mut v4 = BTreeSet::new();
    let mut v6 = BTreeSet::new();
    for r in &results {
        v4.insert(r["ips"][0]["address"].as_str().unwrap().to_string());
        v6.insert(r["ips"][1]["address"].as_str().unwrap().to_string());
    }
    assert_eq!((v4.len(), v6.len()), (N, N), "distinct addresses");
    let alloc = node.allocations();
    assert_eq!(alloc.len(), 2 * N, "IPAM holds 2 x {N}");
    let hosts: BTreeSet<String> = results.iter().map(host_ifname).collect();
    assert_eq!(hosts.len(), N);
    let links: BTreeSet<String> = node.links().into_iter().collect();
    assert!(hosts.is_subset(&links));

    std::thread::scope(|s| {
        for (pod, id) in pods.iter().zip(&ids) {
            let (node, conf) = (&node, &conf);
            s.spawn(move || {
                node.cni(&Call::new("DEL", id, Some(pod)), conf)
                    .assert_silent_ok(&format!("parallel DEL {id}"));
            });
        }
    });
    assert!(node.allocations().is_empty(), "{:?}", node.allocations());
    let links: BTreeSet<String> = node.links().into_iter().collect();
    assert!(
        hosts.is_disjoint(&links),
        "host ends left: {:?}",
        hosts.intersection(&links).collect::<Vec<_>>()
    );
}

/// STATUS is 50 while IPAM cannot give an address, and ADD fails with our codes (104: no
/// IPAM on this agent, 103: no address left), changing nothing.
#[test]
fn status_50_and_add_errors_without_usable_addresses() {
    let lock = net_lock();
    // No ipam section: the agent serves BGP only.
    let mut node = Node::without_agent(&lock, "cninoipam");
    node.ipam_yaml = None;
    node.start_agent();
    let e = status_call(&node, "1.1.0")
        .assert_error(50, "1.1.0", "STATUS without IPAM")
        .clone();
    assert!(e.to_string().contains("ipam.pools"), "{e}");
    let pod = Netns::new(&lock, "pod");
    let before = node.snapshot(&[&pod]);
    let r = node.cni(&Call::new("ADD", "noipam", Some(&pod)), &node.conf("1.0.0"));
    r.assert_error(104, "1.0.0", "ADD without IPAM");
    assert_eq!(node.snapshot(&[&pod]), before, "nothing changed");
    // DEL still succeeds (nothing to release).
    node.cni(&Call::new("DEL", "noipam", Some(&pod)), &node.conf("1.0.0"))
        .assert_silent_ok("DEL without IPAM");
    drop(node);

    // A two-address IPv4 pool: two pods, then the pool is full.
    let mut node = Node::without_agent(&lock, "cnifull");
    node.ipam_yaml = Some("ipam:\n  pools:\n    - { cidr: 10.244.7.0/31, blockSize: 31 }\n".into());
    node.start_agent();
    status_call(&node, "1.1.0").assert_silent_ok("STATUS with free addresses");
    let (_p1, r1) = node.add(&lock, "full1", "1.1.0");
    let (_p2, r2) = node.add(&lock, "full2", "1.1.0");
    for r in [&r1, &r2] {
        assert_eq!(r["ips"].as_array().unwrap().len(), 1, "IPv4 only: {r}");
        assert!(
            r["routes"] == json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]),
            "{r}"
        );
    }
    let e = status_call(&node, "1.1.0")
        .assert_error(50, "1.1.0", "STATUS with the pool full")
        .clone();
    assert!(
        e["msg"]
            .as_str()
            .unwrap()
            .contains("no IP address available"),
        "{e}"
    );
    let pod = Netns::new(&lock, "pod");
    let before = node.snapshot(&[&pod]);
    let r = node.cni(&Call::new("ADD", "full3", Some(&pod)), &node.conf("1.1.0"));
    r.assert_error(103, "1.1.0", "ADD with the pool full");
    assert_eq!(node.snapshot(&[&pod]), before, "nothing changed");
    // A DEL frees one: STATUS is fine again and the next ADD gets it.
    node.cni(&Call::new("DEL", "full1", None), &node.conf("1.1.0"))
        .assert_silent_ok("DEL");
    status_call(&node, "1.1.0").assert_silent_ok("STATUS after a DEL");
    let r = node.cni(&Call::new("ADD", "full3", Some(&pod)), &node.conf("1.1.0"));
    assert!(r.ok, "{r:#?}");
    assert_eq!(r.json["ips"][0]["address"], r1["ips"][0]["address"]);
}
