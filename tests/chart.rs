//! Offline checks of the Helm chart (charts/ferrovia, GUIDE §7): it renders for the default
//! values and the value sets in charts/ferrovia/ci/, `helm lint --strict` is clean, every
//! manifest passes `kubernetes-validate --strict` for 1.30 and the newest schemas it ships,
//! the agent accepts the configuration the chart renders, the init container's command
//! installs the plugin, and bad values are refused naming the key.
//!
//! Helm runs through helm-python-sdk (the Helm v4 library, no cluster, no network) in the
//! virtual environment scripts/test.sh creates at /var/cache/ferrovia/chart-venv
//! (FERROVIA_CHART_VENV overrides it); scripts/chart_check.py is the bridge.

use ferrovia_testsupport::common;

use common::chart::{
    chart_check, chart_dir, crd_files, render_ok, render_values, venv_bin, VALUE_SETS,
};
use serde_json::Value;
use std::process::Command;

const FERROVIA: &str = env!("CARGO_BIN_EXE_ferrovia");

#[test]
fn every_value_set_renders_and_lints_strict_clean() {
    for set in VALUE_SETS {
        let r = render_ok(set);
        for kind in [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "DaemonSet",
        ] {
            assert!(!r.find(kind).is_empty(), "{set}: no {kind} rendered");
        }
        assert!(
            r.notes.contains("kubectl get ipamblocks.ferrovia.io"),
            "{set}: NOTES.txt: {}",
            r.notes
        );
        let path = if *set == "-" {
            "-".to_string()
        } else {
            chart_dir().join(set).display().to_string()
        };
        let report = chart_check(&["lint", &chart_dir().display().to_string(), &path]);
        let errors = report["errors"].as_array().cloned().unwrap_or_default();
        assert!(errors.is_empty(), "{set}: lint errors: {report}");
        // Strict: warnings count too (severity 2 warning, 3 error; 1 is information).
        let bad: Vec<&Value> = report["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter(|m| m["severity"].as_u64() >= Some(2))
                    .collect()
            })
            .unwrap_or_default();
        assert!(bad.is_empty(), "{set}: lint --strict findings: {bad:?}");
    }
}

#[test]
fn rendered_manifests_pass_kubernetes_validate_strict() {
    let newest = chart_check(&["newest-schema"]);
    let newest = newest.as_str().expect("a version").to_string();
    // Objects in the CRD files (one file holds them all).
    let crd_count: usize = crd_files()
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .matches("kind: CustomResourceDefinition\n")
                .count()
        })
        .sum();
    assert_eq!(crd_count, 6, "the CRDs of issue 9");
    for set in VALUE_SETS {
        let r = render_ok(set);
        // kubernetes-validate knows the built-in kinds; our custom resources are checked
        // against the schemas of the CRDs the chart ships.
        let (custom, builtin): (Vec<_>, Vec<_>) =
            r.files.iter().zip(&r.docs).partition(|(_, d)| {
                d["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.contains("ferrovia.io/"))
            });
        // The shipped CRDs are built-in objects (apiextensions.k8s.io/v1) too.
        let builtin: Vec<_> = builtin
            .into_iter()
            .map(|(f, _)| f.clone())
            .chain(crd_files())
            .collect();
        for version in ["1.30.0", newest.as_str()] {
            let out = Command::new(venv_bin("kubernetes-validate"))
                .args(["-k", version, "--strict"])
                .args(&builtin)
                .output()
                .expect("run kubernetes-validate");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success(),
                "{set}: kubernetes-validate -k {version} --strict: {text}"
            );
            // Every file was checked against a schema (not skipped as unknown).
            assert_eq!(
                text.matches(" passed for resource ").count(),
                builtin.len() - crd_files().len() + crd_count,
                "{set} {version}: {text}"
            );
        }
        if !custom.is_empty() {
            let mut args = vec![
                "validate-custom".to_string(),
                chart_dir().join("crds").display().to_string(),
            ];
            args.extend(custom.iter().map(|(f, _)| f.display().to_string()));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let report = chart_check(&args);
            for (file, verdict) in report.as_object().unwrap() {
                assert!(verdict.is_null(), "{set}: {file}: {verdict}");
            }
        }
    }
}

#[test]
fn daemonset_runs_on_every_node_with_what_the_agent_needs() {
    let r = render_ok("-");
    let ds = r.daemonset();
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert!(
        spec["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["operator"] == "Exists" && t.get("key").is_none()),
        "a toleration of every taint (not-ready, control-plane): {}",
        spec["tolerations"]
    );
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    assert!(spec["terminationGracePeriodSeconds"].as_u64() >= Some(30));
    let agent = &spec["containers"][0];
    assert_eq!(agent["name"], "agent");
    let nodename = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "NODENAME")
        .expect("NODENAME in the agent's environment");
    assert_eq!(
        nodename["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    let caps: Vec<&str> = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for c in ["NET_ADMIN", "SYS_ADMIN", "NET_RAW", "NET_BIND_SERVICE"] {
        assert!(caps.contains(&c), "{c} missing from {caps:?}");
    }
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    for p in [
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/run/ferrovia",
        "/run/netns",
    ] {
        assert!(host_paths.contains(&p), "no hostPath {p}: {host_paths:?}");
    }
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], "install-cni");
    assert_eq!(init["args"][0], "install-cni");
    // Without privileged: false the capability list is the whole story.
    let r = render_values("privileged: false\n").unwrap();
    let sc = &r.daemonset()["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
}

#[test]
fn service_ranges_render_the_cluster_bgp_configuration() {
    // Default values: no Service ranges, no BGPConfiguration (the first agent seeds it).
    assert!(render_ok("-").find("BGPConfiguration").is_empty());
    let r = render_ok("ci/dual-stack-tor-values.yaml");
    let c = r.one("BGPConfiguration");
    assert_eq!(c["metadata"]["name"], "default");
    let spec = &c["spec"];
    assert_eq!(spec["asNumber"], 64512);
    assert_eq!(spec["mesh"], true);
    assert_eq!(spec["listenPort"], 179);
    assert_eq!(
        spec["serviceClusterIPs"],
        serde_json::json!(["10.96.0.0/12", "fd00:96::/108"])
    );
    assert_eq!(
        spec["serviceLoadBalancerIPs"],
        serde_json::json!(["203.0.113.0/24"])
    );
    assert!(spec.get("serviceExternalIPs").is_none(), "{spec}");
    // The agent reads it as its cluster settings record.
    let out = Command::new(FERROVIA).arg("crds").output().unwrap();
    let crds = String::from_utf8_lossy(&out.stdout);
    assert!(
        crds.contains("serviceLoadBalancerIPs"),
        "the CRD has the key"
    );
    // A value that is not a CIDR is refused, naming the key.
    let Err(err) = render_values("bgp: { asNumber: 64512, serviceClusterIPs: [10.96.0.1] }\n")
    else {
        panic!("a bare address is not a CIDR: rendered");
    };
    assert!(err.contains("serviceClusterIPs"), "{err}");
}

/// Runs the init container's command, with the host paths it mounts mapped to temp dirs.
#[test]
fn the_init_containers_command_installs_the_plugin() {
    let r = render_ok("ci/dual-stack-tor-values.yaml");
    let init = &r.daemonset()["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["command"][0], "/usr/local/bin/ferrovia");
    let bin = tempfile::tempdir().unwrap();
    let conf = tempfile::tempdir().unwrap();
    let args: Vec<String> = init["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            a.as_str()
                .unwrap()
                .replace("/host/opt/cni/bin", &bin.path().display().to_string())
                .replace("/host/etc/cni/net.d", &conf.path().display().to_string())
        })
        .collect();
    let out = Command::new(FERROVIA).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(bin.path().join("ferrovia-cni").is_file());
    let conflist: Value =
        serde_json::from_slice(&std::fs::read(conf.path().join("10-ferrovia.conflist")).unwrap())
            .unwrap();
    assert_eq!(conflist["plugins"][0]["mtu"], 9000);
    assert_eq!(
        conflist["plugins"][0]["agentSocket"],
        "/run/ferrovia/ferrovia.sock"
    );
}

#[test]
fn peer_passwords_are_secret_files_and_the_agent_reads_no_secrets() {
    let r = render_ok("ci/dual-stack-tor-values.yaml");
    let config: Value = serde_yaml_ng::from_str(&r.agent_config()).unwrap();
    let spec = &r.daemonset()["spec"]["template"]["spec"];
    let mounts = spec["containers"][0]["volumeMounts"].as_array().unwrap();
    let volumes = spec["volumes"].as_array().unwrap();
    for (i, key) in [(0, "tor1"), (1, "tor2")] {
        let file = config["bgp"]["peers"][i]["passwordFile"].as_str().unwrap();
        // The innermost mount holding the file.
        let mount = mounts
            .iter()
            .filter(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("nothing mounted where {file} is"));
        // Not inside another volume (a read-only ConfigMap cannot hold mount points).
        assert!(
            mounts
                .iter()
                .filter(|m| file.starts_with(&format!("{}/", m["mountPath"].as_str().unwrap())))
                .count()
                == 1,
            "{file} is under two mounts"
        );
        let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
        assert_eq!(volume["secret"]["secretName"], "tor-bgp");
        assert_eq!(volume["secret"]["items"][0]["key"], key);
        assert!(file.ends_with(&format!("/{key}")), "{file}");
    }
    for role in r.find("ClusterRole").into_iter().chain(r.find("Role")) {
        for rule in role["rules"].as_array().unwrap() {
            for field in ["apiGroups", "resources", "verbs"] {
                for v in rule[field].as_array().unwrap() {
                    assert_ne!(v, "*", "a wildcard in {}: {rule}", role["metadata"]["name"]);
                    assert_ne!(v, "secrets", "{}: {rule}", role["metadata"]["name"]);
                }
            }
        }
    }
}

#[test]
fn a_created_namespace_carries_the_privileged_pod_security_label() {
    let r = render_ok("ci/reflectors-values.yaml");
    let ns = r.one("Namespace");
    assert_eq!(ns["metadata"]["name"], "ferrovia-system");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert_eq!(r.daemonset()["metadata"]["namespace"], "ferrovia-system");
    // Without namespace.create, nothing else is labelled; NOTES says how.
    let r = render_values("namespace: { name: net }\n").unwrap();
    assert!(r.find("Namespace").is_empty());
    assert!(
        r.notes
            .contains("kubectl label namespace net pod-security.kubernetes.io/enforce=privileged"),
        "{}",
        r.notes
    );
    let e = render_values("namespace: { create: true }\n")
        .err()
        .unwrap();
    assert!(e.contains("namespace.name"), "{e}");
}

/// The chart refuses `values`, naming `key` (a JSON pointer into the values).
fn refused(values: &str, key: &str) {
    match render_values(values) {
        Ok(_) => panic!("the chart accepted {values}"),
        Err(e) => assert!(
            e.contains(&format!("'{key}'")),
            "refusing {values} the message does not name {key}: {e}"
        ),
    }
}

#[test]
fn refuses_as_zero() {
    refused("bgp: { asNumber: 0 }", "/bgp/asNumber");
}

#[test]
fn refuses_as_above_32_bits() {
    refused("bgp: { asNumber: 4294967296 }", "/bgp/asNumber");
}

#[test]
fn refuses_as_trans() {
    refused("bgp: { asNumber: 23456 }", "/bgp/asNumber");
}

#[test]
fn refuses_a_peer_as_of_zero() {
    refused(
        "bgp: { peers: [{ address: 198.18.0.254, asNumber: 0 }] }",
        "/bgp/peers/0/asNumber",
    );
}

#[test]
fn refuses_a_peer_address_that_does_not_parse() {
    refused(
        "bgp: { peers: [{ address: 198.18.0.256, asNumber: 65000 }] }",
        "/bgp/peers/0/address",
    );
}

#[test]
fn refuses_a_pool_cidr_that_does_not_parse() {
    refused(
        "ipam: { pools: [{ cidr: 10.244.0/16 }] }",
        "/ipam/pools/0/cidr",
    );
    refused(
        "ipam: { pools: [{ cidr: 10.244.0.0/16 }, { cidr: \"fd00:10:244::/129\" }] }",
        "/ipam/pools/1/cidr",
    );
}

#[test]
fn refuses_an_unknown_key() {
    refused("bgp: { asNumbr: 64512 }", "/bgp");
    refused(
        "ipam: { pools: [{ cidr: 10.244.0.0/16, blocksize: 26 }] }",
        "/ipam/pools/0",
    );
    refused("imageTag: v1", "");
}

#[test]
fn refuses_an_ipv4_block_size_outside_20_to_32() {
    refused(
        "ipam: { pools: [{ cidr: 10.244.0.0/16, blockSize: 33 }] }",
        "/ipam/pools/0/blockSize",
    );
    refused(
        "ipam: { pools: [{ cidr: 10.0.0.0/8, blockSize: 19 }] }",
        "/ipam/pools/0/blockSize",
    );
}

#[test]
fn refuses_an_ipv6_block_size_outside_116_to_128() {
    refused(
        "ipam: { pools: [{ cidr: \"fd00:10:244::/48\", blockSize: 26 }] }",
        "/ipam/pools/0/blockSize",
    );
}

#[test]
fn refuses_a_pod_mtu_out_of_range() {
    refused("cni: { mtu: 1000 }", "/cni/mtu");
}

#[test]
fn refuses_an_unknown_ipam_mode() {
    refused("ipam: { mode: hostLocal }", "/ipam/mode");
}

#[test]
fn refuses_a_leak_collection_interval_out_of_range() {
    refused(
        "ipam: { leakCollectionIntervalSeconds: 0 }",
        "/ipam/leakCollectionIntervalSeconds",
    );
    refused(
        "ipam: { leakGracePeriodSeconds: -1 }",
        "/ipam/leakGracePeriodSeconds",
    );
}

#[test]
fn the_committed_crds_are_what_the_code_generates() {
    let out = Command::new(FERROVIA).arg("crds").output().unwrap();
    assert!(
        out.status.success(),
        "ferrovia crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    let path = chart_dir().join("crds/ferrovia.io.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} differs from what `ferrovia crds` generates: run \
         `cargo run --bin ferrovia -- crds > charts/ferrovia/crds/ferrovia.io.yaml` and commit it",
        path.display()
    );
    // Every CRD is there, and nothing else is in crds/.
    for kind in [
        "IPPool",
        "IPAMBlock",
        "BlockAffinity",
        "IPAMHandle",
        "BGPPeer",
        "BGPConfiguration",
    ] {
        assert!(
            committed.contains(&format!("kind: {kind}\n")),
            "no CRD for {kind}"
        );
    }
    assert_eq!(crd_files(), vec![path]);
}

#[test]
fn the_router_id_comes_from_the_environment_when_the_configuration_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.yaml");
    std::fs::write(&file, "node: { name: node1, asNumber: 64512 }\n").unwrap();
    let check = |env: Option<&str>| {
        let mut cmd = Command::new(FERROVIA);
        cmd.arg("check-config")
            .arg(&file)
            .env_remove("FERROVIA_ROUTER_ID");
        if let Some(v) = env {
            cmd.env("FERROVIA_ROUTER_ID", v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(None);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("node.routerId") && err.contains("FERROVIA_ROUTER_ID"),
        "{err}"
    );
    let (code, err) = check(Some("198.18.0.7"));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(Some("fd00:198:18::7"));
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("node.routerId"), "{err}");
}

#[test]
fn the_agent_accepts_the_configuration_the_chart_renders() {
    check_rendered_configurations(VALUE_SETS.iter());
}

/// `ferrovia check-config` on the ConfigMap's file of each value set, with what the
/// DaemonSet gives the agent (NODENAME, FERROVIA_ROUTER_ID, the peers' Secret files).
fn check_rendered_configurations<'a>(sets: impl Iterator<Item = &'a &'a str>) {
    for set in sets {
        let r = render_ok(set);
        // The peers' Secret volumes, as the kubelet mounts them: one file per key.
        let secrets = r.dir.path().join("peer-passwords");
        let config = r.agent_config().replace(
            "/etc/ferrovia-peer-passwords",
            &secrets.display().to_string(),
        );
        let parsed: Value = serde_yaml_ng::from_str(&config).unwrap();
        for p in parsed["bgp"]["peers"].as_array().into_iter().flatten() {
            if let Some(f) = p["passwordFile"].as_str() {
                let f = std::path::Path::new(f);
                std::fs::create_dir_all(f.parent().unwrap()).unwrap();
                std::fs::write(f, "s3cret\n").unwrap();
            }
        }
        let file = r.dir.path().join("agent.yaml");
        std::fs::write(&file, &config).unwrap();
        // What the DaemonSet's environment gives it (spec.nodeName, status.hostIP).
        let out = Command::new(FERROVIA)
            .arg("check-config")
            .arg(&file)
            .env("NODENAME", "node1")
            .env("FERROVIA_ROUTER_ID", "198.18.0.1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{set}: ferrovia check-config refuses the rendered configuration: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            r.agent_config()
        );
    }
}

#[test]
fn node_peers_by_selector_render_as_bgppeer_objects() {
    let r = render_ok("ci/dual-stack-tor-values.yaml");
    let peers = r.find("BGPPeer");
    assert_eq!(peers.len(), 2, "{peers:?}");
    let by_node = peers
        .iter()
        .find(|p| p["spec"]["node"] == "node1")
        .expect("the node1 peer");
    assert!(by_node["spec"].get("nodeSelector").is_none(), "{by_node}");
    let by_selector = peers
        .iter()
        .find(|p| p["spec"]["address"] == "198.18.2.254")
        .expect("the selector's peer");
    let spec = &by_selector["spec"];
    assert_eq!(
        spec["nodeSelector"],
        "ferrovia.io/rack=r2,!ferrovia.io/spare"
    );
    assert!(spec.get("node").is_none(), "{spec}");
    assert_eq!(spec["asNumber"], 65002);
    assert_eq!(spec["name"], by_selector["metadata"]["name"]);
    let name = spec["name"].as_str().expect("a name");
    assert!(name.contains("-sel-"), "{name}");
}

#[test]
fn refuses_a_node_peer_with_node_and_node_selector() {
    refused(
        "bgp: { nodePeers: [{ node: n1, nodeSelector: rack=r1, address: 198.18.1.254, asNumber: 65001 }] }",
        "/bgp/nodePeers/0",
    );
}

#[test]
fn refuses_a_node_peer_without_node_or_node_selector() {
    refused(
        "bgp: { nodePeers: [{ address: 198.18.1.254, asNumber: 65001 }] }",
        "/bgp/nodePeers/0",
    );
}

#[test]
fn refuses_a_node_selector_that_does_not_parse() {
    for bad in ["rack in (r1)", "rack=r1,,x", "!rack=r1", "-rack"] {
        refused(
            &format!(
                "bgp: {{ nodePeers: [{{ nodeSelector: \"{bad}\", address: 198.18.1.254, asNumber: 65001 }}] }}"
            ),
            "/bgp/nodePeers/0/nodeSelector",
        );
    }
}

#[test]
fn the_agent_may_read_its_own_daemonset_and_nothing_else_of_apps() {
    let r = render_ok("-");
    let ds = r.daemonset();
    let name = ds["metadata"]["name"].clone();
    let env = &ds["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = |n: &str| {
        env.as_array()
            .and_then(|a| a.iter().find(|e| e["name"] == n).cloned())
            .unwrap_or_else(|| panic!("no {n} in {env}"))
    };
    assert_eq!(var("FERROVIA_DAEMONSET_NAME")["value"], name);
    assert_eq!(
        var("FERROVIA_DAEMONSET_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let apps: Vec<Value> = r
        .find("ClusterRole")
        .into_iter()
        .chain(r.find("Role"))
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .filter(|rule| {
            rule["apiGroups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|g| g == "apps"))
        })
        .collect();
    assert_eq!(apps.len(), 1, "{apps:?}");
    assert_eq!(apps[0]["resources"], serde_json::json!(["daemonsets"]));
    assert_eq!(apps[0]["resourceNames"], serde_json::json!([name]));
    assert_eq!(apps[0]["verbs"], serde_json::json!(["get"]));
    let role = r
        .find("Role")
        .into_iter()
        .find(|role| role["rules"][0]["apiGroups"][0] == "apps")
        .expect("the DaemonSet Role");
    assert_eq!(role["metadata"]["namespace"], ds["metadata"]["namespace"]);
}
