//! Leak collection on a real kube-apiserver 1.20.2: pods are Pod objects made by the test
//! (no kubelet), wired through the CNI plugin with their namespace, name and UID in
//! CNI_ARGS as a runtime passes them. While the node's agent is down, one pod is deleted and
//! another is deleted and re-created under the same name (a new UID); a third stays. The
//! agent comes back with a short grace period: the first two are found gone and kept (the
//! grace period has not passed), then released — their IPAMHandles gone, their addresses
//! free; the third keeps its address.

use ferrovia_testsupport::common;

use common::cluster::{libc_sigterm, Cluster, CONVERGE, POLL};
use common::wait_until;
use common::Netns;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Command, Stdio};

/// Grace period and sweep interval of the agent in the test: a grace period long enough
/// that the sweep which finds the pods gone is surely observed before it ends.
const LEAK: &str = "  leakGracePeriodSeconds: 12\n  leakCollectionIntervalSeconds: 1\n";
const IPAM: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n";

/// Creates Pod `default/name` (never scheduled: there is no scheduler) and returns its UID.
fn create_pod(c: &Cluster, name: &str) -> String {
    let cp = c.control_plane();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        // No token volume: there is no token controller to make one.
        "spec": {"automountServiceAccountToken": false,
                 "containers": [{"name": "c", "image": "registry.invalid/none"}]}
    });
    let created = cp
        .call("POST", "/api/v1/namespaces/default/pods", Some(&pod))
        .expect_status(201, "create the Pod")
        .json();
    created["metadata"]["uid"]
        .as_str()
        .unwrap_or_else(|| panic!("a Pod without a UID: {created}"))
        .to_string()
}

/// Deletes Pod `default/name` at once and waits until it is gone.
fn delete_pod(c: &Cluster, name: &str) {
    let cp = c.control_plane();
    let path = format!("/api/v1/namespaces/default/pods/{name}");
    cp.call("DELETE", &path, Some(&json!({"gracePeriodSeconds": 0})))
        .expect_status(200, "delete the Pod");
    wait_until("the Pod is gone", CONVERGE, POLL, || {
        match cp.call("GET", &path, None).status {
            404 => Ok(()),
            s => Err(format!("GET {path}: HTTP {s}")),
        }
    });
}

/// CNI ADD on node 1 of pod `default/name` with `uid`, container id `ctr`, in `ns`; returns
/// the pod's IPv4 address.
fn cni_add(c: &Cluster, ctr: &str, ns: &Netns, name: &str, uid: &str) -> String {
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"ferrovia","type":"ferrovia-cni","agentSocket":"{}","mtu":1500}}"#,
        c.node(1).sock().display()
    );
    let mut child = Command::new(c.plugin())
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", ctr)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin")
        .env("CNI_NETNS", format!("/var/run/netns/{}", ns.name()))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_UID={uid}"
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferrovia-cni");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(conf.as_bytes())
        .expect("write config");
    let out = child.wait_with_output().expect("ferrovia-cni output");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "CNI ADD of {name}: {v} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    v["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str())
        .find(|a| !a.contains(':'))
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no IPv4 address in {v}"))
        .to_string()
}

/// The addresses allocated in the datastore (`ferrovia ipam show --json`).
fn allocated(c: &Cluster) -> Vec<String> {
    let v: Value =
        serde_json::from_str(&c.cli(&["ipam", "show", "--json"])).expect("ipam show --json");
    v["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["ip"].as_str().map(str::to_string))
        .collect()
}

/// The names of the IPAMHandle objects.
fn handles(c: &Cluster) -> String {
    c.control_plane()
        .kubectl(&["get", "ipamhandles.ferrovia.io", "-o", "name"])
}

/// Node 1's IPAM counters from `ferrovia status`.
fn counters(c: &Cluster) -> Result<Value, String> {
    let s = c.node(1).status()?;
    match &s["ipam"] {
        Value::Object(_) => Ok(s["ipam"].clone()),
        _ => Err(format!("no ipam in the status: {s}")),
    }
}

fn counter(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// The value of an unlabelled series in node 1's metrics.
fn metric(c: &Cluster, name: &str) -> Option<u64> {
    c.node(1).metrics().lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse::<f64>().ok().map(|f| f as u64)
    })
}

#[test]
fn a_pod_deleted_while_its_agent_is_down_is_reclaimed_after_the_grace_period_and_not_before() {
    let mut c = Cluster::kubernetes("klk", 1, &format!("{IPAM}{LEAK}"));
    let cp = c.control_plane();
    // Pods need their namespace's ServiceAccount (no controller manager makes it).
    cp.ensure(
        "/api/v1/namespaces/default/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    );
    wait_until("agent up", CONVERGE, POLL, || counters(&c));

    let pods = [
        ("lk-gone", "ctrgone"),
        ("lk-again", "ctragain"),
        ("lk-alive", "ctralive"),
    ];
    let mut nss = Vec::new();
    let mut ips = Vec::new();
    for (name, ctr) in pods {
        let uid = create_pod(&c, name);
        let ns = Netns::new(&c._lock, name);
        ips.push(cni_add(&c, ctr, &ns, name, &uid));
        nss.push(ns);
    }
    let (gone_ip, again_ip, alive_ip) = (ips[0].clone(), ips[1].clone(), ips[2].clone());
    let before = handles(&c);
    for (_, ctr) in pods {
        assert!(before.contains(ctr), "the handle of {ctr}: {before}");
    }
    // The agent sweeps every second with all three pods present: none is suspected.
    let running = counters(&c).expect("status");
    assert_eq!(counter(&running, "leaksFound"), 0, "{running}");

    // The agent goes down; meanwhile one pod is deleted and one re-created (new UID). The
    // runtime tears their sandboxes down (their network namespaces go, and with them the
    // veths and the node's routes to them); their DELs never reach the agent.
    c.node_mut(1).kill(libc_sigterm());
    drop(nss.drain(..2));
    delete_pod(&c, "lk-gone");
    delete_pod(&c, "lk-again");
    create_pod(&c, "lk-again");
    let db = c.db.clone();
    c.node_mut(1).start(&db);

    // The first sweep finds both gone and releases nothing: the grace period runs.
    let found = wait_until("both pods found gone", CONVERGE, POLL, || {
        let v = counters(&c)?;
        if counter(&v, "leaksFound") >= 2 {
            Ok(v)
        } else {
            Err(format!("{v}"))
        }
    });
    let held = handles(&c);
    let held_ips = allocated(&c);
    assert_eq!(counter(&found, "leaksFound"), 2, "{found}");
    assert_eq!(counter(&found, "leaksReleased"), 0, "{found}");
    assert_eq!(counter(&found, "leakSuspects"), 2, "{found}");
    for (_, ctr) in pods {
        assert!(
            held.contains(ctr),
            "{ctr} kept during the grace period: {held}"
        );
    }
    for ip in [&gone_ip, &again_ip, &alive_ip] {
        assert!(
            held_ips.contains(ip),
            "{ip} held during the grace period: {held_ips:?}"
        );
    }

    // After the grace period both are released; the pod that exists keeps its address.
    let done = wait_until("both released", CONVERGE, POLL, || {
        let v = counters(&c)?;
        if counter(&v, "leaksReleased") >= 2 {
            Ok(v)
        } else {
            Err(format!("{v}"))
        }
    });
    assert_eq!(counter(&done, "leaksReleased"), 2, "{done}");
    assert_eq!(counter(&done, "leaksFound"), 2, "{done}");
    assert_eq!(counter(&done, "leakSuspects"), 0, "{done}");
    let left = handles(&c);
    assert!(!left.contains("ctrgone"), "released: {left}");
    assert!(
        !left.contains("ctragain"),
        "released (the pod has a new UID): {left}"
    );
    assert!(
        left.contains("ctralive"),
        "the live pod's handle stays: {left}"
    );
    let left_ips = allocated(&c);
    assert!(!left_ips.contains(&gone_ip), "{gone_ip} free: {left_ips:?}");
    assert!(
        !left_ips.contains(&again_ip),
        "{again_ip} free: {left_ips:?}"
    );
    assert_eq!(
        left_ips,
        vec![alive_ip.clone()],
        "only the live pod's address"
    );
    // The same counts in the metrics.
    wait_until("metrics", CONVERGE, POLL, || {
        match (
            metric(&c, "ferrovia_ipam_leaks_found_total"),
            metric(&c, "ferrovia_ipam_leaks_released_total"),
            metric(&c, "ferrovia_ipam_leak_suspects"),
        ) {
            (Some(2), Some(2), Some(0)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // More sweeps go by (the agent's Pod lookups, counted by the API server, go on): the
    // live pod is never suspected.
    let lookups = pod_gets(&c);
    wait_until("five more sweeps", CONVERGE, POLL, || {
        let n = pod_gets(&c);
        if n >= lookups + 5 {
            Ok(())
        } else {
            Err(format!("{} Pod lookups since the release", n - lookups))
        }
    });
    let after = counters(&c).expect("status");
    assert_eq!(counter(&after, "leaksFound"), 2, "{after}");
    assert_eq!(counter(&after, "leakSuspects"), 0, "{after}");
    assert!(handles(&c).contains("ctralive"), "{}", handles(&c));

    // A freed address is given again: IPAM hands out the lowest free one of the block
    // (once the kernel has removed the torn-down sandboxes' veths and routes).
    wait_until("the sandboxes' routes gone", CONVERGE, POLL, || {
        let routes = c.node(1).ns.ip(&["-4", "route", "show"]);
        match [&gone_ip, &again_ip].iter().find(|ip| {
            routes
                .lines()
                .any(|l| l.split(' ').next() == Some(ip.as_str()))
        }) {
            Some(ip) => Err(format!("a route to {ip} remains: {routes}")),
            None => Ok(()),
        }
    });
    let uid = create_pod(&c, "lk-new");
    let ns = Netns::new(&c._lock, "lk-new");
    let ip = cni_add(&c, "ctrnew", &ns, "lk-new", &uid);
    assert!(
        ip == gone_ip || ip == again_ip,
        "the new pod got {ip}, not a freed address ({gone_ip}, {again_ip})"
    );
    drop(ns);
    drop(nss);
}

/// Single-Pod GETs the API server answered (its `apiserver_request_total`): after the test's
/// own deletions, only the agent's leak collection reads single Pods.
fn pod_gets(c: &Cluster) -> u64 {
    let text = c
        .control_plane()
        .call("GET", "/metrics", None)
        .expect_status(200, "API server metrics")
        .body;
    text.lines()
        .filter(|l| {
            l.starts_with("apiserver_request_total{")
                && l.contains("resource=\"pods\"")
                && l.contains("verb=\"GET\"")
                && (l.contains("subresource=\"\"") || !l.contains("subresource="))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|f| f as u64)
        .sum()
}

/// An agent that may not read Pods (RBAC answers 403) cannot tell whether a pod exists: it
/// releases nothing, however long the pod is gone, and says why.
#[test]
fn an_agent_that_cannot_read_pods_releases_nothing() {
    let mut c = Cluster::kubernetes("klk403", 1, &format!("{IPAM}{LEAK}"));
    let cp = c.control_plane();
    cp.ensure(
        "/api/v1/namespaces/default/serviceaccounts",
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}}),
    );
    // Everything the agent needs but Pods.
    cp.ensure(
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "agent-without-pods"},
        "rules": [
            {"apiGroups": [""], "resources": ["nodes"],
             "verbs": ["get", "list", "watch", "patch"]},
            {"apiGroups": ["ferrovia.io"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]}
        ]}),
    );
    cp.ensure(
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        &json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "agent-without-pods"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                            "name": "agent-without-pods"},
                "subjects": [{"kind": "ServiceAccount", "name": "nopods",
                              "namespace": "kube-system"}]}),
    );
    let token = cp.service_account_token("kube-system", "nopods");
    let kubeconfig = c.dir.path().join("nopods.kubeconfig");
    cp.write_kubeconfig(&kubeconfig, &token);

    let uid = create_pod(&c, "lk-hidden");
    let ns = Netns::new(&c._lock, "lk-hidden");
    let ip = cni_add(&c, "ctrhidden", &ns, "lk-hidden", &uid);
    c.node_mut(1).kill(libc_sigterm());
    drop(ns);
    delete_pod(&c, "lk-hidden");
    c.node_mut(1).datastore = format!(
        "{{ kubernetes: {{ kubeconfig: {} }} }}",
        kubeconfig.display()
    );
    let db = c.db.clone();
    c.node_mut(1).start(&db);

    // Sweeps go on well past the grace period, each refused by the API server.
    let log = c.dir.path().join("n1.log");
    wait_until(
        "refused lookups past the grace period",
        CONVERGE,
        POLL,
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let refused = text
                .lines()
                .filter(|l| {
                    l.contains("cannot tell whether a pod exists")
                        && l.contains("may not read Pods")
                })
                .count();
            if refused >= 16 {
                Ok(())
            } else {
                Err(format!("{refused} refused lookups logged"))
            }
        },
    );
    let v = counters(&c).expect("status");
    assert_eq!(counter(&v, "leaksFound"), 0, "{v}");
    assert_eq!(counter(&v, "leaksReleased"), 0, "{v}");
    assert!(handles(&c).contains("ctrhidden"), "{}", handles(&c));
    assert_eq!(allocated(&c), vec![ip], "the address stays");
}
