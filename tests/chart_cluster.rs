//! The Helm chart on a real kube-apiserver (tests/common/kube.rs): the rendered manifests
//! apply cleanly (CRDs Established, RBAC objects, the DaemonSet and ConfigMap accepted), and
//! the chart's ServiceAccount, with a token from the TokenRequest API, may do what the agent
//! does and nothing else (403 for Secrets, deleting Nodes, writing objects it does not own).
//!
//! Needs the API server from scripts/kube-apiserver.sh and the chart-check environment from
//! scripts/test.sh; without them the tests fail and say so.

use ferrovia_testsupport::common;

use common::chart::{crd_files, render_ok, render_values, Rendered, RELEASE, RELEASE_NAMESPACE};
use common::kube::{segment, ControlPlane, SETTLE};
use common::{net_lock, wait_until};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(200);

/// `kubectl --kubeconfig admin apply -f PATHS…` from the control plane's namespace.
fn kubectl_apply(cp: &ControlPlane, paths: &[&Path]) -> String {
    let kubeconfig = cp.dir().join("admin.kubeconfig");
    if !kubeconfig.exists() {
        cp.write_kubeconfig(&kubeconfig, cp.admin_token());
    }
    let kc = kubeconfig.display().to_string();
    let mut argv = vec!["kubectl", "--kubeconfig", &kc, "apply"];
    let owned: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    for p in &owned {
        argv.extend(["-f", p.as_str()]);
    }
    let out = cp.ns.exec(&argv);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubectl apply {owned:?}: {text}");
    text
}

/// Applies the CRDs shipped in the chart and waits until each is Established.
fn apply_crds(cp: &ControlPlane) -> Vec<String> {
    let files = crd_files();
    if files.is_empty() {
        return Vec::new();
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    kubectl_apply(cp, &refs);
    let mut names = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines() {
            // `metadata:` then `  name: X.ferrovia.io` — the CRD's name.
            if let Some(n) = line.strip_prefix("  name: ") {
                if n.ends_with(".ferrovia.io") {
                    names.push(n.trim().to_string());
                }
            }
        }
    }
    assert!(!names.is_empty(), "no CRD names found in {files:?}");
    for name in &names {
        let path = format!("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}");
        wait_until(&format!("CRD {name} Established"), SETTLE, POLL, || {
            let r = cp.call("GET", &path, None);
            let established = r.status == 200
                && r.json()["status"]["conditions"]
                    .as_array()
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Established" && c["status"] == "True")
                    });
            if established {
                Ok(())
            } else {
                Err(format!("HTTP {}: {}", r.status, r.body))
            }
        });
    }
    names
}

/// The API path of a rendered object (the kinds the chart renders).
fn object_path(doc: &Value) -> String {
    let name = doc["metadata"]["name"].as_str().unwrap();
    let ns = doc["metadata"]["namespace"].as_str().unwrap_or_default();
    match doc["kind"].as_str().unwrap() {
        "Namespace" => format!("/api/v1/namespaces/{name}"),
        "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}"),
        "ConfigMap" => format!("/api/v1/namespaces/{ns}/configmaps/{name}"),
        "DaemonSet" => format!("/apis/apps/v1/namespaces/{ns}/daemonsets/{name}"),
        "ClusterRole" => format!("/apis/rbac.authorization.k8s.io/v1/clusterroles/{name}"),
        "ClusterRoleBinding" => {
            format!("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{name}")
        }
        "Role" => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles/{name}"),
        "RoleBinding" => {
            format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings/{name}")
        }
        "BGPPeer" => format!("/apis/ferrovia.io/v1alpha1/bgppeers/{name}"),
        other => panic!("the chart renders a {other}: teach object_path about it"),
    }
}

/// Applies the CRDs and `r`'s manifests, and checks every object is in the API server as
/// rendered (the DaemonSet's pod template and the ConfigMap's data unchanged).
fn apply_chart(cp: &ControlPlane, r: &Rendered) {
    apply_crds(cp);
    kubectl_apply(cp, &[r.dir.path()]);
    for doc in &r.docs {
        let path = object_path(doc);
        let live = cp
            .call("GET", &path, None)
            .expect_status(200, &format!("GET {path} after apply"))
            .json();
        match doc["kind"].as_str().unwrap() {
            "ConfigMap" => assert_eq!(live["data"], doc["data"], "{path}"),
            "ClusterRole" | "Role" => assert_eq!(live["rules"], doc["rules"], "{path}"),
            "DaemonSet" => {
                let spec = &live["spec"]["template"]["spec"];
                let want = &doc["spec"]["template"]["spec"];
                assert_eq!(spec["hostNetwork"], true, "{path}");
                assert_eq!(spec["serviceAccountName"], want["serviceAccountName"]);
                assert_eq!(
                    spec["initContainers"][0]["args"],
                    want["initContainers"][0]["args"]
                );
                assert_eq!(spec["containers"][0]["args"], want["containers"][0]["args"]);
                assert_eq!(
                    spec["containers"][0]["securityContext"],
                    want["containers"][0]["securityContext"]
                );
            }
            "Namespace" => {
                for (k, v) in doc["metadata"]["labels"].as_object().unwrap() {
                    assert_eq!(&live["metadata"]["labels"][k], v, "{path} label {k}");
                }
            }
            _ => {}
        }
    }
}

/// What the agent does with the API server (the chart's RBAC must allow each): (verb, API
/// group, resource, namespace).
const AGENT_CALLS: &[(&str, &str, &str, &str)] = &[
    ("get", "", "nodes", ""),
    ("list", "", "nodes", ""),
    ("watch", "", "nodes", ""),
    ("patch", "", "nodes", ""),
    ("list", "", "pods", ""),
    ("watch", "", "pods", ""),
    ("get", "", "pods", ""),
    ("get", "coordination.k8s.io", "leases", "kube-system"),
    ("create", "coordination.k8s.io", "leases", "kube-system"),
    ("update", "coordination.k8s.io", "leases", "kube-system"),
    ("list", "coordination.k8s.io", "leases", "kube-system"),
    ("watch", "coordination.k8s.io", "leases", "kube-system"),
    ("delete", "coordination.k8s.io", "leases", "kube-system"),
    ("list", "ferrovia.io", "ippools", ""),
    ("watch", "ferrovia.io", "ippools", ""),
    ("create", "ferrovia.io", "ippools", ""),
    ("update", "ferrovia.io", "ippools", ""),
    ("list", "ferrovia.io", "ipamblocks", ""),
    ("watch", "ferrovia.io", "ipamblocks", ""),
    ("create", "ferrovia.io", "ipamblocks", ""),
    ("update", "ferrovia.io", "ipamblocks", ""),
    ("delete", "ferrovia.io", "ipamblocks", ""),
    ("list", "ferrovia.io", "blockaffinities", ""),
    ("create", "ferrovia.io", "blockaffinities", ""),
    ("delete", "ferrovia.io", "blockaffinities", ""),
    ("get", "ferrovia.io", "ipamhandles", ""),
    ("create", "ferrovia.io", "ipamhandles", ""),
    ("update", "ferrovia.io", "ipamhandles", ""),
    ("delete", "ferrovia.io", "ipamhandles", ""),
    ("list", "ferrovia.io", "bgppeers", ""),
    ("watch", "ferrovia.io", "bgppeers", ""),
    ("get", "ferrovia.io", "bgpconfigurations", ""),
    ("list", "ferrovia.io", "bgpconfigurations", ""),
    ("watch", "ferrovia.io", "bgpconfigurations", ""),
    ("create", "ferrovia.io", "bgpconfigurations", ""),
    ("list", "", "services", ""),
    ("watch", "", "services", ""),
    ("list", "", "endpoints", ""),
    ("watch", "", "endpoints", ""),
    ("list", "discovery.k8s.io", "endpointslices", ""),
    ("watch", "discovery.k8s.io", "endpointslices", ""),
];

/// What the agent never does; each must be refused.
const NOT_AGENT_CALLS: &[(&str, &str, &str, &str)] = &[
    ("list", "apps", "daemonsets", ""),
    ("update", "apps", "daemonsets", "kube-system"),
    ("get", "", "secrets", "kube-system"),
    ("list", "", "secrets", ""),
    ("create", "", "services", "default"),
    ("update", "", "endpoints", "default"),
    ("delete", "", "nodes", ""),
    ("create", "", "nodes", ""),
    ("update", "", "nodes", ""),
    ("create", "", "pods", "default"),
    ("delete", "", "pods", "default"),
    ("create", "apps", "deployments", "default"),
    ("update", "apps", "daemonsets", "kube-system"),
    ("create", "coordination.k8s.io", "leases", "default"),
    ("create", "ferrovia.io", "bgppeers", ""),
    ("delete", "ferrovia.io", "bgppeers", ""),
    ("update", "ferrovia.io", "bgpconfigurations", ""),
    ("delete", "ferrovia.io", "ippools", ""),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        "",
    ),
    (
        "create",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        "",
    ),
    ("get", "", "configmaps", "kube-system"),
];

/// Asks the API server (SubjectAccessReview, as admin) whether the chart's ServiceAccount
/// may do `call`.
fn allowed(cp: &ControlPlane, sa_ns: &str, sa: &str, call: (&str, &str, &str, &str)) -> bool {
    let (verb, group, resource, namespace) = call;
    let mut attrs = json!({"verb": verb, "group": group, "resource": resource});
    if !namespace.is_empty() {
        attrs["namespace"] = json!(namespace);
    }
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{sa_ns}:{sa}"),
            "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{sa_ns}"),
                       "system:authenticated"],
            "resourceAttributes": attrs,
        }
    });
    let r = cp
        .call(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(&review),
        )
        .expect_status(201, "SubjectAccessReview");
    r.json()["status"]["allowed"] == true
}

#[test]
fn the_rendered_chart_applies_and_its_service_account_has_least_privilege() {
    let lock = net_lock();
    let seg = segment(&lock, "chart");
    let cp = ControlPlane::start(&lock, &seg);
    let r = render_ok("-");
    apply_chart(&cp, &r);
    let ds_name = r.daemonset()["metadata"]["name"]
        .as_str()
        .expect("the DaemonSet's name")
        .to_string();

    // The ServiceAccount the DaemonSet's pods run as, and a token as a pod gets it.
    let sa = r.one("ServiceAccount");
    assert_eq!(sa["metadata"]["name"], RELEASE);
    assert_eq!(sa["metadata"]["namespace"], RELEASE_NAMESPACE);
    let token = cp.service_account_token(RELEASE_NAMESPACE, RELEASE);

    let mut missing = Vec::new();
    for call in AGENT_CALLS {
        if !allowed(&cp, RELEASE_NAMESPACE, RELEASE, *call) {
            missing.push(*call);
        }
    }
    assert!(missing.is_empty(), "the agent may not do {missing:?}");
    let mut extra = Vec::new();
    for call in NOT_AGENT_CALLS {
        if allowed(&cp, RELEASE_NAMESPACE, RELEASE, *call) {
            extra.push(*call);
        }
    }
    assert!(extra.is_empty(), "the agent may do {extra:?}");

    // The same with real calls and the ServiceAccount's token.
    cp.call(
        "POST",
        "/api/v1/nodes",
        Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}})),
    )
    .expect_status(201, "admin creates node1");
    let as_agent = |method: &str, path: &str, body: Option<&Value>| {
        cp.request_as(&token, method, path, body)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let r = as_agent("GET", "/api/v1/nodes", None);
    assert_eq!(r.status, 200, "list nodes: {}", r.body);
    // Its own DaemonSet (read at SIGTERM: an uninstall drains), and no other.
    let r = as_agent(
        "GET",
        &format!("/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/daemonsets/{ds_name}"),
        None,
    );
    assert_eq!(r.status, 200, "get its own DaemonSet: {}", r.body);
    let r = as_agent(
        "GET",
        &format!("/apis/apps/v1/namespaces/{RELEASE_NAMESPACE}/daemonsets/other"),
        None,
    );
    assert_eq!(r.status, 403, "get another DaemonSet: {}", r.body);
    let r = as_agent(
        "PATCH",
        "/api/v1/nodes/node1",
        Some(&json!({"metadata": {"annotations": {"ferrovia.io/as-number": "64512"}}})),
    );
    assert_eq!(r.status, 200, "annotate its Node: {}", r.body);
    let r = as_agent(
        "POST",
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
        Some(&json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "ferrovia-node1"},
            "spec": {"holderIdentity": "node1", "leaseDurationSeconds": 30}
        })),
    );
    assert_eq!(r.status, 201, "create its Lease: {}", r.body);
    let r = as_agent("GET", "/api/v1/pods", None);
    assert_eq!(r.status, 200, "list pods: {}", r.body);

    for (method, path, body) in [
        ("GET", "/api/v1/namespaces/kube-system/secrets", None),
        ("GET", "/api/v1/secrets", None),
        ("DELETE", "/api/v1/nodes/node1", None),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}})),
        ),
        (
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases",
            Some(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": "x"}}),
            ),
        ),
        (
            "POST",
            "/apis/ferrovia.io/v1alpha1/bgppeers",
            Some(
                json!({"apiVersion": "ferrovia.io/v1alpha1", "kind": "BGPPeer",
                        "metadata": {"name": "x"}, "spec": {}}),
            ),
        ),
        (
            "DELETE",
            "/apis/apps/v1/namespaces/kube-system/daemonsets/ferrovia",
            None,
        ),
    ] {
        let r = as_agent(method, path, body.as_ref());
        assert_eq!(r.status, 403, "{method} {path} as the agent: {}", r.body);
    }
    // Refused means unchanged.
    cp.call("GET", "/api/v1/nodes/node1", None)
        .expect_status(200, "node1 is still there");
    cp.call(
        "GET",
        "/apis/apps/v1/namespaces/kube-system/daemonsets/ferrovia",
        None,
    )
    .expect_status(200, "the DaemonSet is still there");
}

#[test]
fn a_chart_created_namespace_is_labelled_for_privileged_pods() {
    let lock = net_lock();
    let seg = segment(&lock, "chartns");
    let cp = ControlPlane::start(&lock, &seg);
    let r = render_values(
        "namespace: { create: true, name: ferrovia-system }\n\
         bgp: { peers: [{ address: 198.18.0.254, asNumber: 65000,\n\
                          password: { secretName: tor, secretKey: pw } }],\n\
                nodePeers: [{ node: node1, address: \"fd00:198:18::fe\", asNumber: 65001 }] }\n",
    )
    .unwrap();
    apply_chart(&cp, &r);
    let ds = cp
        .call(
            "GET",
            "/apis/apps/v1/namespaces/ferrovia-system/daemonsets/ferrovia",
            None,
        )
        .expect_status(200, "the DaemonSet in ferrovia-system")
        .json();
    let vols = ds["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        vols.iter().any(|v| v["secret"]["secretName"] == "tor"),
        "the peer's password Secret is a volume: {vols:?}"
    );
    // The per-node peer is a BGPPeer the CRD's schema accepted.
    let peer = cp
        .call(
            "GET",
            "/apis/ferrovia.io/v1alpha1/bgppeers/ferrovia-node1-fd00-198-18--fe",
            None,
        )
        .expect_status(200, "the node peer's BGPPeer")
        .json();
    assert_eq!(peer["spec"]["node"], "node1");
    assert_eq!(peer["spec"]["asNumber"], 65001);
    let ns = cp
        .call("GET", "/api/v1/namespaces/ferrovia-system", None)
        .expect_status(200, "the namespace")
        .json();
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    // The ServiceAccount lives there, and its token works for what the agent does.
    let token = cp.service_account_token("ferrovia-system", RELEASE);
    let r = cp.request_as(&token, "GET", "/api/v1/nodes", None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = cp
        .request_as(
            &token,
            "GET",
            "/api/v1/namespaces/ferrovia-system/secrets/tor",
            None,
        )
        .unwrap();
    assert_eq!(r.status, 403, "{}", r.body);
}
