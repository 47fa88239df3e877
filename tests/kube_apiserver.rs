//! The Kubernetes test fixture (tests/common/kube.rs) against a real kube-apiserver 1.20.2, and
//! the API facts the Kubernetes datastore (issue 9) builds on: CRDs in `ferrovia.io`,
//! compare-and-swap on `resourceVersion`, watches resumed from a version, ServiceAccount tokens
//! under RBAC, and the API server reachable from a node's namespace on the segment.
//!
//! Needs the binary from `scripts/kube-apiserver.sh`; without it every test here fails and says so.

use ferrovia_testsupport::common;

use common::kube::{join_segment, segment, ControlPlane, Response, CONTROL_PLANE_V4, SETTLE};
use common::{net_lock, wait_until};
use serde_json::{json, Value};
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_else(|| panic!("no metadata.resourceVersion in {v}"))
        .to_string()
}

#[test]
fn api_server_is_ready_and_authenticates_bearer_tokens() {
    let lock = net_lock();
    let seg = segment(&lock, "kready");
    let cp = ControlPlane::start(&lock, &seg);

    cp.call("GET", "/readyz", None)
        .expect_status(200, "GET /readyz as admin");
    let version = cp
        .call("GET", "/version", None)
        .expect_status(200, "GET /version")
        .json();
    assert_eq!(version["gitVersion"], "v1.20.2", "{version}");

    // The admin token is in system:masters: it may list what nobody else may.
    let nodes = cp
        .call("GET", "/api/v1/nodes", None)
        .expect_status(200, "admin lists nodes")
        .json();
    assert_eq!(nodes["kind"], "NodeList", "{nodes}");

    // An unknown token is refused as unauthenticated, not merely unauthorised.
    let r = cp
        .request_as("not-a-token", "GET", "/api/v1/nodes", None)
        .expect("an HTTP answer");
    assert_eq!(r.status, 401, "unknown token: {}", r.body);
}

fn probe_crd() -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "probes.ferrovia.io"},
        "spec": {
            "group": "ferrovia.io",
            "scope": "Cluster",
            "names": {"plural": "probes", "singular": "probe", "kind": "Probe", "listKind": "ProbeList"},
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["cidr"],
                            "properties": {
                                "cidr": {"type": "string"},
                                "blockSize": {"type": "integer", "minimum": 20, "maximum": 32}
                            }
                        }
                    }
                }}
            }]
        }
    })
}

fn probe(name: &str, cidr: &str, block_size: u32, resource_version: Option<&str>) -> Value {
    let mut v = json!({
        "apiVersion": "ferrovia.io/v1alpha1",
        "kind": "Probe",
        "metadata": {"name": name},
        "spec": {"cidr": cidr, "blockSize": block_size}
    });
    if let Some(rv) = resource_version {
        v["metadata"]["resourceVersion"] = json!(rv);
    }
    v
}

/// Creates the `probes.ferrovia.io` CRD and waits until it is Established and its endpoint serves.
fn install_probe_crd(cp: &ControlPlane) {
    cp.call(
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        Some(&probe_crd()),
    )
    .expect_status(201, "create CRD probes.ferrovia.io");
    wait_until("CRD probes.ferrovia.io Established", SETTLE, POLL, || {
        let crd = cp
            .call(
                "GET",
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/probes.ferrovia.io",
                None,
            )
            .status_is(200)?
            .json();
        let established = crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Established" && c["status"] == "True");
        if established {
            Ok(())
        } else {
            Err(format!("conditions: {}", crd["status"]["conditions"]))
        }
    });
    // Established is set before every API server handler serves the new resource: wait for it.
    wait_until("probes.ferrovia.io served", SETTLE, POLL, || {
        cp.call("GET", "/apis/ferrovia.io/v1alpha1/probes", None)
            .status_is(200)
    });
}

#[test]
fn crd_objects_are_created_read_and_stale_updates_conflict() {
    let lock = net_lock();
    let seg = segment(&lock, "kcrd");
    let cp = ControlPlane::start(&lock, &seg);
    install_probe_crd(&cp);

    let path = "/apis/ferrovia.io/v1alpha1/probes";
    let created = cp
        .call("POST", path, Some(&probe("p1", "10.244.0.0/16", 26, None)))
        .expect_status(201, "create probe p1")
        .json();
    let rv1 = rv(&created);

    let read = cp
        .call("GET", &format!("{path}/p1"), None)
        .expect_status(200, "read probe p1 back")
        .json();
    assert_eq!(
        read["spec"],
        json!({"cidr": "10.244.0.0/16", "blockSize": 26})
    );
    assert_eq!(rv(&read), rv1);

    // Compare-and-swap: an update carrying the current version wins and moves the version on…
    let updated = cp
        .call(
            "PUT",
            &format!("{path}/p1"),
            Some(&probe("p1", "10.244.0.0/16", 27, Some(&rv1))),
        )
        .expect_status(200, "update with the current resourceVersion")
        .json();
    let rv2 = rv(&updated);
    assert_ne!(rv1, rv2, "an update must change the resourceVersion");

    // …and a second update with the version it replaced is refused with 409 Conflict.
    let stale = cp
        .call(
            "PUT",
            &format!("{path}/p1"),
            Some(&probe("p1", "10.244.0.0/16", 28, Some(&rv1))),
        )
        .expect_status(409, "update with a stale resourceVersion");
    assert_eq!(stale.json()["reason"], "Conflict", "{}", stale.body);

    let after = cp
        .call("GET", &format!("{path}/p1"), None)
        .expect_status(200, "read p1 after the conflict")
        .json();
    assert_eq!(
        after["spec"]["blockSize"], 27,
        "the stale write must not land"
    );
    assert_eq!(rv(&after), rv2);

    // The schema is enforced by the API server: a block size out of range is refused.
    let bad = cp
        .call("POST", path, Some(&probe("p2", "10.245.0.0/16", 40, None)))
        .expect_status(422, "create a probe the schema refuses");
    assert!(bad.body.contains("blockSize"), "{}", bad.body);
    cp.call("GET", &format!("{path}/p2"), None)
        .expect_status(404, "the refused probe must not exist");
}

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
}

fn annotate(cp: &ControlPlane, node: &str, key: &str, value: &str) -> Response {
    cp.call(
        "PATCH",
        &format!("/api/v1/nodes/{node}"),
        Some(&json!({"metadata": {"annotations": {key: value}}})),
    )
    .expect_status(200, &format!("annotate node {node}"))
}

#[test]
fn watch_from_a_resource_version_sees_later_changes() {
    let lock = net_lock();
    let seg = segment(&lock, "kwatch");
    let cp = ControlPlane::start(&lock, &seg);

    let created = cp
        .call("POST", "/api/v1/nodes", Some(&node("node1")))
        .expect_status(201, "create node node1")
        .json();
    let from = rv(&created);

    // A change made before the watch connects, and one made after: a watch resumed from `from`
    // must deliver both, in order, and not the creation it starts after.
    annotate(&cp, "node1", "ferrovia.io/step", "before-watch");
    let mut watch = cp.watch(&format!(
        "/api/v1/nodes?watch=1&resourceVersion={from}&timeoutSeconds=120"
    ));
    wait_until(
        "the watch delivers the earlier change",
        SETTLE,
        POLL,
        || {
            let ev = watch.events();
            if !ev.is_empty() {
                Ok(())
            } else {
                Err(format!("{ev:?}"))
            }
        },
    );
    annotate(&cp, "node1", "ferrovia.io/step", "after-watch");

    let events = wait_until("the watch delivers the later change", SETTLE, POLL, || {
        let ev = watch.events();
        if ev.len() >= 2 {
            Ok(ev)
        } else {
            Err(format!("{ev:?}"))
        }
    });
    assert!(watch.is_running(), "the watch must still be open");
    let steps: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or(""),
                e["object"]["metadata"]["annotations"]["ferrovia.io/step"]
                    .as_str()
                    .unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [("MODIFIED", "before-watch"), ("MODIFIED", "after-watch")],
        "events: {events:?}"
    );
    let last = &events[1]["object"];
    assert_eq!(last["metadata"]["name"], "node1");
    assert_ne!(rv(last), from);
}

#[test]
fn service_account_token_authenticates_and_rbac_decides() {
    let lock = net_lock();
    let seg = segment(&lock, "ksa");
    let cp = ControlPlane::start(&lock, &seg);

    let token = cp.service_account_token("ferrovia-system", "ferrovia");
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    // Authenticated as the ServiceAccount (403 names it), but RBAC grants it nothing yet.
    let r = cp
        .request_as(&token, "GET", "/api/v1/nodes", None)
        .expect("an HTTP answer");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body
            .contains("system:serviceaccount:ferrovia-system:ferrovia"),
        "{}",
        r.body
    );

    // Grant read access to Nodes: the same token may now list them…
    cp.call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        Some(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "ferrovia-test-nodes"},
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]
        })),
    )
    .expect_status(201, "create ClusterRole");
    cp.call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        Some(&json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "ferrovia-test-nodes"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ferrovia-test-nodes"},
            "subjects": [{"kind": "ServiceAccount", "name": "ferrovia", "namespace": "ferrovia-system"}]
        })),
    )
    .expect_status(201, "create ClusterRoleBinding");
    wait_until(
        "the ServiceAccount may list nodes once bound",
        SETTLE,
        POLL,
        || {
            cp.request_as(&token, "GET", "/api/v1/nodes", None)?
                .status_is(200)
        },
    );

    // …and is still refused what the role does not grant.
    for (method, path) in [
        ("GET", "/api/v1/secrets"),
        (
            "GET",
            "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
        ),
    ] {
        let r = cp
            .request_as(&token, method, path, None)
            .expect("an HTTP answer");
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
    }
    let r = cp
        .request_as(&token, "POST", "/api/v1/nodes", Some(&node("not-allowed")))
        .expect("an HTTP answer");
    assert_eq!(r.status, 403, "create a node: {}", r.body);
    cp.call("GET", "/api/v1/nodes/not-allowed", None)
        .expect_status(404, "the refused node must not exist");
}

#[test]
fn api_server_is_reachable_from_a_node_namespace_with_a_kubeconfig() {
    let lock = net_lock();
    let seg = segment(&lock, "kreach");
    let cp = ControlPlane::start(&lock, &seg);
    let node = join_segment(&lock, &seg, "n1", "p1", "198.18.0.1/24");

    // The address is on-link from the node; nothing else routes it.
    node.run(&["ping", "-c", "1", "-W", "10", CONTROL_PLANE_V4]);

    // What an agent would be given: a kubeconfig with a ServiceAccount token. Use only what the
    // file says (server, CA, token) to talk to the API server from the node's namespace.
    let token = cp.service_account_token("ferrovia-system", "ferrovia");
    let kubeconfig = cp.dir().join("node1.kubeconfig");
    cp.write_kubeconfig(&kubeconfig, &token);
    let text = std::fs::read_to_string(&kubeconfig).expect("read the kubeconfig back");
    let cfg: Value = serde_yaml_ng::from_str(&text).expect("the kubeconfig is YAML");
    let server = cfg["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("server in kubeconfig");
    let ca = cfg["clusters"][0]["cluster"]["certificate-authority"]
        .as_str()
        .expect("certificate-authority in kubeconfig");
    let file_token = cfg["users"][0]["user"]["token"]
        .as_str()
        .expect("token in kubeconfig");
    assert_eq!(server, format!("https://{CONTROL_PLANE_V4}:6443"));
    assert_eq!(cfg["current-context"], "ferrovia-test");

    // The ServiceAccount may ask who it is allowed to be (every authenticated user may).
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "list", "resource": "nodes"}}
    });
    let out = node.run(&[
        "curl",
        "-sS",
        "--max-time",
        "20",
        "--cacert",
        ca,
        "-H",
        &format!("Authorization: Bearer {file_token}"),
        "-H",
        "Content-Type: application/json",
        "--data-raw",
        &review.to_string(),
        &format!("{server}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
    ]);
    let answer: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(answer["kind"], "SelfSubjectAccessReview", "{answer}");
    assert_eq!(answer["status"]["allowed"], false, "{answer}");

    // And the fixture's own helper works from the node too, as admin.
    cp.request_from(&node, cp.admin_token(), "GET", "/readyz", None)
        .expect("an HTTP answer from the node namespace")
        .expect_status(200, "GET /readyz from the node namespace");
    let ns = cp
        .request_from(
            &node,
            cp.admin_token(),
            "GET",
            "/api/v1/namespaces/default",
            None,
        )
        .expect("an HTTP answer")
        .expect_status(200, "GET namespace default from the node namespace")
        .json();
    assert_eq!(ns["metadata"]["name"], "default");
}

#[test]
fn control_plane_is_removed_when_a_test_panics() {
    let lock = net_lock();
    let seg = segment(&lock, "kpanic");
    let mut seen: Option<(String, Vec<i32>, std::path::PathBuf)> = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cp = ControlPlane::start(&lock, &seg);
        seen = Some((
            cp.ns.name().to_string(),
            cp.ns.pids(),
            cp.dir().to_path_buf(),
        ));
        panic!("a failing test");
    }));
    assert!(result.is_err(), "the closure panics");
    let (ns, pids, dir) = seen.expect("the control plane started");
    assert!(
        pids.len() >= 2,
        "etcd and kube-apiserver ran in {ns}: {pids:?}"
    );
    assert!(
        !common::netns::list_netns().contains(&ns),
        "namespace {ns} left behind"
    );
    for pid in pids {
        // Reaped children: signal 0 finds no such process.
        assert_eq!(
            unsafe { libc::kill(pid, 0) },
            -1,
            "process {pid} of the control plane still exists"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
}
