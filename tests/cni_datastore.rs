//! The agents and IPAM on a shared datastore under stress: a burst of parallel ADDs on
//! every node is written in batches (group commit) and never gives an address twice; a
//! datastore that does not answer makes ADD fail fast with "try again later" while
//! running pods keep forwarding; a node removed from the datastore leaves every kernel
//! and its IPAM objects are released by the nodes that remain.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, Pod, CONVERGE, POLL};
use common::sqlite_lock::SqliteWriteLock;
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

fn ipam_show(c: &Cluster) -> Value {
    serde_json::from_str(&c.cli(&["ipam", "show", "--json"])).expect("ipam show --json")
}

fn ipam_counter(c: &Cluster, i: u8, key: &str) -> u64 {
    let s = c.node(i).status().expect("status");
    s["ipam"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("node{i} status has ipam.{key}: {s}"))
}

fn ping_from(ns: &common::Netns, to: &str) -> Result<(), String> {
    let fam = if to.contains(':') { "-6" } else { "-4" };
    let out = ns.exec(&["ping", fam, "-c", "1", "-W", "1", to]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{to} unreachable from {}", ns.name()))
    }
}

#[test]
fn fifty_parallel_adds_on_each_of_three_nodes_are_batched_distinct_and_reachable() {
    let c = cluster("cnigc");
    let per_node = 50;
    let before: Vec<u64> = (1..=3u8)
        .map(|i| ipam_counter(&c, i, "blockWrites"))
        .collect();
    // The pods' namespaces first (the runtime made the sandboxes), then every ADD at once.
    let slots: Vec<(u8, String, common::Netns)> = (1..=3u8)
        .flat_map(|n| (0..per_node).map(move |k| (n, k)))
        .map(|(n, k)| {
            let id = format!("g{n}-{k}");
            let ns = common::Netns::new(&c._lock, &id);
            (n, id, ns)
        })
        .collect();
    let start = std::sync::Barrier::new(slots.len());
    let t = Instant::now();
    let pods: Vec<Pod> = std::thread::scope(|s| {
        let hs: Vec<_> = slots
            .into_iter()
            .map(|(n, id, ns)| {
                let (c, start) = (&c, &start);
                s.spawn(move || {
                    start.wait();
                    let (ok, result) = c.cni(n, "ADD", &id, Some(ns.name()), None);
                    assert!(ok, "CNI ADD of {id} on node{n}: {result}");
                    Pod {
                        node: n,
                        id,
                        ns,
                        result,
                    }
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    eprintln!(
        "{} parallel ADDs on 3 nodes took {:?} (loaded machine)",
        pods.len(),
        t.elapsed()
    );
    let mut seen = HashSet::new();
    for p in &pods {
        for v6 in [false, true] {
            let a = p.ip(v6).unwrap_or_else(|| panic!("{}: {}", p.id, p.result));
            assert!(seen.insert(a.clone()), "{a} given twice");
        }
    }
    assert_eq!(seen.len(), 3 * per_node * 2);
    // The datastore agrees: every allocation once, every block owned by one node.
    let show = ipam_show(&c);
    let allocs = show["allocations"].as_array().cloned().unwrap_or_default();
    assert_eq!(allocs.len(), 3 * per_node * 2, "allocations in ipam show");
    let blocks = show["blocks"].as_array().cloned().unwrap_or_default();
    let cidrs: HashSet<&str> = blocks.iter().filter_map(|b| b["cidr"].as_str()).collect();
    assert_eq!(cidrs.len(), blocks.len(), "no block listed twice");
    // The handles carry the pod's namespace, name and UID (leak collection reads them).
    let stored = stored_mentioning(&c, "IPAMHandle", "uid-g1-0");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        stored[0].contains("\"namespace\":\"default\"") && stored[0].contains("\"pod\":\"g1-0\""),
        "{stored:?}"
    );
    // Group commit: fewer block writes than ADDs on every node (one ADD alone costs a
    // write per family, plus claims).
    let mut report = Vec::new();
    for i in 1..=3u8 {
        let writes = ipam_counter(&c, i, "blockWrites") - before[(i - 1) as usize];
        let batches = ipam_counter(&c, i, "batches");
        let conflicts = ipam_counter(&c, i, "conflictsRetried");
        report.push((
            i,
            writes,
            format!(
                "node{i}: {writes} block writes, {batches} batches, {conflicts} conflicts retried"
            ),
        ));
    }
    let text: Vec<&str> = report.iter().map(|(_, _, t)| t.as_str()).collect();
    eprintln!("{per_node} dual-stack ADDs per node: {}", text.join("; "));
    // One by one, every dual-stack ADD costs at least two block writes (one per family);
    // fewer means ADDs shared writes. How many share depends on how the burst arrives,
    // so the bound is the mechanism's, not a speed.
    for (i, writes, _) in &report {
        assert!(
            *writes < 2 * per_node as u64,
            "node{i}: {writes} block writes for {per_node} dual-stack ADDs: no batching"
        );
    }
    // Every pod is reachable from another node.
    for p in &pods {
        let from = &c.node(p.node % 3 + 1).ns;
        for v6 in [false, true] {
            let to = p.ip(v6).expect("address");
            wait_until("pod reachable", CONVERGE, POLL, || ping_from(from, &to));
        }
    }
    // The counters are exported as metrics too.
    let m = c.node(1).metrics();
    for name in [
        "ferrovia_ipam_block_writes_total",
        "ferrovia_ipam_conflicts_retried_total",
        "ferrovia_ipam_assign_batches_total",
    ] {
        assert!(m.contains(name), "{name} in node1's metrics");
    }
}

#[test]
fn add_answers_try_again_fast_while_the_datastore_is_locked_and_running_pods_keep_forwarding() {
    let c = cluster("cnifast");
    let p1 = c.add_pod(1, "keep1");
    let p2 = c.add_pod(2, "keep2");
    let to = p2.ip(false).expect("v4");
    wait_until("pods reach each other", CONVERGE, POLL, || {
        ping_from(&p1.ns, &to)
    });
    let routes_before: Vec<Vec<String>> = (1..=3u8).map(|i| c.node(i).kernel_routes()).collect();

    let lock = SqliteWriteLock::hold(&c.db);
    // Traffic between the running pods while ADDs fail.
    let pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            p1.ns.name(),
            "ping",
            "-4",
            "-c",
            "30",
            "-i",
            "0.2",
            "-W",
            "1",
            &to,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ping");
    let mut took = Vec::new();
    for k in 0..3 {
        let ns = common::Netns::new(&c._lock, &format!("late{k}"));
        let t = Instant::now();
        let (ok, v) = c.cni(1, "ADD", &format!("late{k}"), Some(ns.name()), None);
        took.push(t.elapsed());
        assert!(!ok, "ADD while the datastore is locked fails: {v}");
        assert_eq!(v["code"], 11, "CNI error 11 (try again later): {v}");
        let (ok, v) = c.cni(1, "DEL", &format!("late{k}"), Some(ns.name()), None);
        assert!(ok || v["code"] == 11, "DEL after the failed ADD: {v}");
    }
    eprintln!("ADD answered 11 after {took:?} with the datastore locked (loaded machine)");
    // Asked: within 2 s. Asserted with room for a machine twice as slow.
    for t in &took {
        assert!(*t < Duration::from_secs(6), "ADD answered after {t:?}");
    }
    let pinger = pinger.wait_with_output().expect("ping");
    let text = String::from_utf8_lossy(&pinger.stdout);
    assert!(
        text.contains("30 packets transmitted, 30 received"),
        "no packet lost between running pods: {text}"
    );
    for i in 1..=3u8 {
        let now = c.node(i).kernel_routes();
        for r in &routes_before[(i - 1) as usize] {
            assert!(now.contains(r), "node{i} kept `{r}`: {now:?}");
        }
    }
    drop(lock);
    // Back: new pods work, and the failed ones left nothing behind after their DEL.
    let p3 = c.add_pod(1, "after");
    assert!(p3.ip(false).is_some(), "{}", p3.result);
    let held: Vec<String> = ipam_show(&c)["allocations"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|a| a["handle"].to_string())
        .collect();
    assert!(
        !held.iter().any(|h| h.contains("late")),
        "nothing of the failed ADDs stays: {held:?}"
    );
}

/// The values of the stored objects of `kind` that mention `needle` (read with the
/// sqlite3 shell, independently of ferrovia's own decoding).
fn stored_mentioning(c: &Cluster, kind: &str, needle: &str) -> Vec<String> {
    let out = std::process::Command::new("sqlite3")
        .arg(&c.db)
        .arg(format!(
            "SELECT name || ' ' || value FROM objects WHERE kind = '{kind}' AND value LIKE '%\"{needle}\"%';"
        ))
        .output()
        .expect("sqlite3");
    assert!(
        out.status.success(),
        "sqlite3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_removed_node_leaves_every_kernel_and_the_others_release_its_ipam_objects() {
    let c = cluster("cnirm");
    let keep = c.add_pod(1, "stay1");
    let gone: Vec<Pod> = (0..2).map(|k| c.add_pod(3, &format!("leave{k}"))).collect();
    let block_of = |ip: &str| -> String {
        let show = ipam_show(&c);
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        show["blocks"]
            .as_array()
            .and_then(|a| {
                a.iter().find_map(|b| {
                    let cidr = b["cidr"].as_str()?;
                    let net: ipnet::IpNet = cidr.parse().ok()?;
                    net.contains(&ip).then(|| cidr.to_string())
                })
            })
            .expect("the pod's block in ipam show")
    };
    let v4 = gone[0].ip(false).expect("v4");
    let v6 = gone[0].ip(true).expect("v6");
    let blocks = [block_of(&v4), block_of(&v6)];
    for i in [1u8, 2] {
        wait_until("node3's blocks routed via node3", CONVERGE, POLL, || {
            for b in &blocks {
                if !c
                    .node(i)
                    .kernel_routes()
                    .iter()
                    .any(|r| r.starts_with(&format!("{b} via")))
                {
                    return Err(format!(
                        "node{i} lacks {b}: {:?}",
                        c.node(i).kernel_routes()
                    ));
                }
            }
            Ok(())
        });
    }
    assert!(!stored_mentioning(&c, "IPAMHandle", "node3").is_empty());

    // The node record goes (its agent still runs, as a Node object deleted under a live
    // kubelet would).
    let out = c.cli(&["node", "remove", "node3"]);
    assert!(out.contains("removed"), "{out}");
    for i in [1u8, 2] {
        wait_until("node3's routes leave the kernel", CONVERGE, POLL, || {
            let left: Vec<String> = c
                .node(i)
                .kernel_routes()
                .into_iter()
                .filter(|r| r.contains("198.18.0.3 ") || r.contains("fd00:198:18::3 "))
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("node{i} still routes via node3: {left:?}"))
            }
        });
        wait_until("node3 no longer a peer", CONVERGE, POLL, || {
            c.established(i, 1)
        });
    }
    // Its IPAM objects are released by the nodes that remain: blocks, addresses, handles.
    wait_until("node3's IPAM objects released", CONVERGE, POLL, || {
        let show = ipam_show(&c);
        let blocks3: Vec<&Value> = show["blocks"]
            .as_array()
            .map(|a| a.iter().filter(|b| b["node"] == "node3").collect())
            .unwrap_or_default();
        let allocs3: Vec<&Value> = show["allocations"]
            .as_array()
            .map(|a| a.iter().filter(|x| x["node"] == "node3").collect())
            .unwrap_or_default();
        let handles3 = stored_mentioning(&c, "IPAMHandle", "node3");
        if blocks3.is_empty() && allocs3.is_empty() && handles3.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "left: blocks {blocks3:?}, allocations {allocs3:?}, handles {handles3:?}"
            ))
        }
    });
    // The others' pods are untouched.
    let show = ipam_show(&c);
    let ip1 = keep.ip(false).expect("v4");
    assert!(
        show["allocations"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x["ip"] == ip1.as_str())),
        "node1's pod keeps {ip1}: {show}"
    );
    wait_until("node1's pod reachable from node2", CONVERGE, POLL, || {
        ping_from(&c.node(2).ns, &ip1)
    });
    // Idempotent: the next sweep or a second removal changes nothing.
    let before = ipam_show(&c);
    let out = std::process::Command::new(common::bin())
        .args(["node", "remove", "node3", "--datastore"])
        .arg(&c.db)
        .output()
        .expect("ferrovia");
    assert!(out.status.success() || !out.stderr.is_empty());
    assert_eq!(ipam_show(&c)["allocations"], before["allocations"]);
}

/// ADD through the CNI, retried while the agent answers 11 (try again later), as a runtime
/// does: in podCIDR mode a node has no address space until its pod CIDR is known.
fn add_pod_retrying(c: &Cluster, i: u8, name: &str) -> Pod {
    let ns = common::Netns::new(&c._lock, name);
    let result = wait_until("ADD succeeds", CONVERGE, POLL, || {
        let (ok, v) = c.cni(i, "ADD", name, Some(ns.name()), None);
        if ok {
            Ok(v)
        } else if v["code"] == 11 {
            Err(format!("try again: {v}"))
        } else {
            panic!("ADD of {name} on node{i}: {v}")
        }
    });
    Pod {
        node: i,
        id: name.to_string(),
        ns,
        result,
    }
}

#[test]
fn pod_cidr_mode_gives_addresses_from_each_nodes_pod_cidrs_and_routes_them_across_nodes() {
    let c = Cluster::with("podcidr", 3, "ipam:\n  mode: podCIDR\n");
    for i in 1..=3 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 2));
    }
    let v4 = |i: u8| format!("10.244.{}.0/24", 100 + i);
    let v6 = |i: u8| format!("fd00:10:244:{}::/64", 100 + i);
    // Before the pod CIDR is set, ADD says "try again later".
    let early = common::Netns::new(&c._lock, "early");
    let (ok, v) = c.cni(1, "ADD", "early", Some(early.name()), None);
    assert!(!ok && v["code"] == 11, "no pod CIDR yet: 11: {v}");
    assert!(
        v.to_string().contains("pod CIDR"),
        "the error names the pod CIDR: {v}"
    );
    for i in 1..=3u8 {
        let out = c.cli(&[
            "node",
            "set",
            &format!("node{i}"),
            "--pod-cidr",
            &v4(i),
            "--pod-cidr",
            &v6(i),
        ]);
        assert!(out.contains("pod CIDRs"), "{out}");
    }
    // A bad pod CIDR is refused and changes nothing.
    let bad = std::process::Command::new(common::bin())
        .args([
            "node",
            "set",
            "node1",
            "--pod-cidr",
            "10.244.101.0/24",
            "--pod-cidr",
            "10.244.200.0/24",
            "--datastore",
        ])
        .arg(&c.db)
        .output()
        .expect("ferrovia");
    assert!(!bad.status.success(), "two IPv4 pod CIDRs refused");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("one pod CIDR per family"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let pods: Vec<Pod> = (1..=3u8)
        .flat_map(|i| (0..2).map(move |k| (i, k)))
        .map(|(i, k)| add_pod_retrying(&c, i, &format!("pc{i}{k}")))
        .collect();
    for p in &pods {
        let a4: std::net::IpAddr = p.ip(false).expect("v4").parse().expect("ip");
        let a6: std::net::IpAddr = p.ip(true).expect("v6").parse().expect("ip");
        let n4: ipnet::IpNet = v4(p.node).parse().expect("cidr");
        let n6: ipnet::IpNet = v6(p.node).parse().expect("cidr");
        assert!(
            n4.contains(&a4) && n6.contains(&a6),
            "{} on node{}: {a4} {a6}",
            p.id,
            p.node
        );
    }
    // No pool in the datastore: only the nodes' blocks, inside their pod CIDRs.
    let show = ipam_show(&c);
    assert!(
        show["pools"].as_array().is_none_or(|a| a.is_empty()),
        "no pool: {show}"
    );
    for b in show["blocks"].as_array().cloned().unwrap_or_default() {
        let node = b["node"].as_str().expect("node");
        let i: u8 = node
            .trim_start_matches("node")
            .parse()
            .expect("node number");
        let cidr: ipnet::IpNet = b["cidr"].as_str().expect("cidr").parse().expect("cidr");
        let own: [ipnet::IpNet; 2] = [v4(i).parse().expect("v4"), v6(i).parse().expect("v6")];
        assert!(
            own.iter().any(|o| o.contains(&cidr)),
            "{cidr} of {node} inside its pod CIDRs"
        );
    }
    // Routed across nodes like blocks: the IPv4 pod CIDR whole, IPv6 in /116 blocks.
    for i in 1..=3u8 {
        for j in (1..=3u8).filter(|j| *j != i) {
            wait_until("pod CIDR routed", CONVERGE, POLL, || {
                let want = format!("{} via 198.18.0.{j} dev eth0", v4(j));
                if c.node(i).has_route(&want) {
                    Ok(())
                } else {
                    Err(format!(
                        "node{i} lacks `{want}`: {:?}",
                        c.node(i).kernel_routes()
                    ))
                }
            });
        }
    }
    for a in &pods {
        for b in pods.iter().filter(|b| b.node != a.node) {
            for fam in [false, true] {
                let to = b.ip(fam).expect("address");
                wait_until("pod to pod across nodes", CONVERGE, POLL, || {
                    ping_from(&a.ns, &to)
                });
            }
        }
    }
}
