//! The chart's DaemonSet run by hand on three nodes against a real kube-apiserver: on each
//! node namespace, exactly what its containers would run — the `install-cni` init container's
//! command into the node's own CNI directories, then the agent with the rendered command,
//! arguments, environment and configuration file, authenticated as the chart's ServiceAccount
//! (a TokenRequest token and the CA at the in-cluster paths, KUBERNETES_SERVICE_HOST/PORT as
//! the kubelet sets them). The agents become ready and mesh, and pods wired through the
//! installed `ferrovia-cni` (run as a kubelet would, from the installed conflist) ping each
//! other across nodes.
//!
//! A node's host paths (/run/ferrovia, /etc/ferrovia, the service-account directory) are its
//! own directories bind-mounted in a mount namespace of the node's processes (slave
//! propagation, so pod namespaces made later are visible, as with the DaemonSet's
//! HostToContainer /run/netns).

use ferrovia_testsupport::common;

use common::bfd::Pinger;
use common::chart::{crd_files, render_values, Rendered, RELEASE, RELEASE_NAMESPACE};
use common::kube::{join_segment, segment, ControlPlane, CONTROL_PLANE_V4, SECURE_PORT};
use common::proc::Proc;
use common::{net_lock, wait_until, NetLock, Netns};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const POLL: Duration = Duration::from_millis(250);
/// Generous: bounds waits on observed state, never measures speed.
const CONVERGE: Duration = Duration::from_secs(90);

/// Where the DaemonSet's volumes are mounted in the containers (the chart's daemonset.yaml).
const SA_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";
const CONFIG_DIR: &str = "/etc/ferrovia";
const RUN_DIR: &str = "/run/ferrovia";

const VALUES: &str = "\
bgp: { asNumber: 64512, holdTime: 9, connectRetry: 1 }
ipam: { pools: [{ cidr: 10.244.0.0/16, blockSize: 26 }] }
metrics: { address: 127.0.0.1 }
";

/// Mount points the node processes bind their own directories onto; made on the host when
/// missing, and removed again (when empty) at the end.
struct MountPoints(Vec<PathBuf>);

impl MountPoints {
    fn ensure(paths: &[&str]) -> MountPoints {
        let mut made = Vec::new();
        for p in paths {
            let mut missing = Vec::new();
            let mut cur = Path::new(p);
            while !cur.exists() {
                missing.push(cur.to_path_buf());
                match cur.parent() {
                    Some(parent) => cur = parent,
                    None => break,
                }
            }
            std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {p}: {e}"));
            made.extend(missing);
        }
        MountPoints(made)
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        // Deepest first; only empty directories (nothing of ours is left in them).
        for p in &self.0 {
            let _ = std::fs::remove_dir(p);
        }
    }
}

struct ChartNode {
    name: String,
    ns: Netns,
    root: PathBuf,
    agent: Option<Proc>,
}

impl ChartNode {
    fn dir(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// `argv` in the node's network namespace with its own host directories mounted where
    /// the DaemonSet mounts them.
    fn command(&self, argv: &[String]) -> Vec<String> {
        let mut v: Vec<String> = [
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$2\" && mount --bind \"$3\" \"$4\" && \
             mount --bind \"$5\" \"$6\" && shift 6 && exec \"$@\"",
            "sh",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (mine, theirs) in [
            (self.dir("run-ferrovia"), RUN_DIR),
            (self.dir("etc-ferrovia"), CONFIG_DIR),
            (self.dir("serviceaccount"), SA_DIR),
        ] {
            v.push(mine.display().to_string());
            v.push(theirs.to_string());
        }
        v.extend(argv.iter().cloned());
        v
    }

    fn socket(&self) -> PathBuf {
        self.dir("run-ferrovia").join("ferrovia.sock")
    }

    fn status(&self) -> Result<Value, String> {
        let out = Command::new(common::bin())
            .args(["status", "--json", "--socket"])
            .arg(self.socket())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn log(&self) -> String {
        common::tail_file(&self.dir("agent.log"), 40)
    }
}

/// The rendered DaemonSet's container `name` (init or main).
fn container<'a>(r: &'a Rendered, name: &str) -> &'a Value {
    let spec = &r.daemonset()["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .chain(spec["containers"].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name} in the DaemonSet"))
}

/// A container's command and arguments, the image's binary replaced by this build's.
fn argv(c: &Value) -> Vec<String> {
    let mut v: Vec<String> = c["command"]
        .as_array()
        .into_iter()
        .chain(c["args"].as_array())
        .flatten()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(v[0], "/usr/local/bin/ferrovia", "the image's binary");
    v[0] = common::bin().to_string();
    v
}

/// The agent container's environment as the kubelet gives it on node `name` with host
/// address `addr` (its fieldRefs resolved; the in-cluster KUBERNETES_SERVICE_*).
fn agent_env(agent: &Value, name: &str, addr: &str) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("KUBERNETES_SERVICE_HOST".into(), CONTROL_PLANE_V4.into()),
        ("KUBERNETES_SERVICE_PORT".into(), SECURE_PORT.to_string()),
    ];
    for e in agent["env"].as_array().unwrap() {
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("spec.nodeName") => name.to_string(),
            Some("status.hostIP") => addr.to_string(),
            Some("metadata.namespace") => RELEASE_NAMESPACE.to_string(),
            Some(other) => panic!("the test does not know fieldRef {other}"),
            None => e["value"].as_str().unwrap_or_default().to_string(),
        };
        env.push((e["name"].as_str().unwrap().to_string(), value));
    }
    env
}

fn start_node(
    lock: &NetLock,
    seg: &Netns,
    cp: &ControlPlane,
    r: &Rendered,
    token: &str,
    i: u8,
    root: &Path,
) -> ChartNode {
    let name = format!("node{i}");
    let addr = format!("198.18.0.{i}");
    let ns = join_segment(
        lock,
        seg,
        &format!("chn{i}"),
        &format!("chp{i}"),
        &format!("{addr}/24"),
    );
    ns.link_up("lo");
    // Kubernetes nodes forward (the kubelet's prerequisite), and have a default route: pods
    // need one on the node to resolve 169.254.1.1.
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        CONTROL_PLANE_V4,
        "dev",
        "eth0",
        "onlink",
    ]);
    cp.call(
        "POST",
        "/api/v1/nodes",
        Some(&json!({
            "apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": "InternalIP", "address": addr}]}
        })),
    )
    .expect_status(201, &format!("create Node {name}"));

    let node = ChartNode {
        name,
        ns,
        root: root.join(format!("node{i}")),
        agent: None,
    };
    for d in [
        "cni-bin",
        "cni-conf",
        "run-ferrovia",
        "etc-ferrovia",
        "serviceaccount",
    ] {
        std::fs::create_dir_all(node.dir(d)).unwrap();
    }
    // The ConfigMap volume and the projected service-account volume.
    std::fs::write(
        node.dir("etc-ferrovia").join("agent.yaml"),
        r.agent_config(),
    )
    .unwrap();
    std::fs::write(node.dir("serviceaccount").join("token"), token).unwrap();
    std::fs::copy(cp.ca_path(), node.dir("serviceaccount").join("ca.crt")).unwrap();
    std::fs::write(
        node.dir("serviceaccount").join("namespace"),
        RELEASE_NAMESPACE,
    )
    .unwrap();

    // The init container: its hostPath mounts are the node's CNI directories.
    let init: Vec<String> = argv(container(r, "install-cni"))
        .into_iter()
        .map(|a| {
            a.replace(
                "/host/opt/cni/bin",
                &node.dir("cni-bin").display().to_string(),
            )
            .replace(
                "/host/etc/cni/net.d",
                &node.dir("cni-conf").display().to_string(),
            )
        })
        .collect();
    let out = Command::new(&init[0]).args(&init[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "install-cni on {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );

    // The agent container: command, args, env (NODENAME from spec.nodeName; the kubelet's
    // KUBERNETES_SERVICE_*), mounts.
    let agent = container(r, "agent");
    let env = agent_env(agent, &node.name, &addr);
    let cmd = node.command(&argv(agent));
    let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let proc = Proc::spawn(node.ns.name(), &cmd, &node.dir("agent.log"), &env);
    ChartNode {
        agent: Some(proc),
        ..node
    }
}

/// A pod on `node`, added as the kubelet would: the installed plugin, its configuration from
/// the installed conflist, in the node's mount view (the plugin reaches the agent's socket at
/// the host path the conflist names).
fn add_pod(lock: &NetLock, node: &ChartNode, name: &str) -> (Netns, String) {
    use std::io::Write;
    let pod = Netns::new(lock, name);
    let list: Value = serde_json::from_slice(
        &std::fs::read(node.dir("cni-conf").join("10-ferrovia.conflist")).unwrap(),
    )
    .unwrap();
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    let plugin = node.dir("cni-bin").join(conf["type"].as_str().unwrap());
    let argv = node.command(&[plugin.display().to_string()]);
    // The kubelet runs in the host's network namespace; only the mounts are the node's.
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", name)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", format!("/var/run/netns/{}", pod.name()))
        .env("CNI_PATH", node.dir("cni-bin"))
        .env(
            "CNI_ARGS",
            format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run the installed ferrovia-cni");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "ADD {name} on {}: {result} {}\n{}",
        node.name,
        String::from_utf8_lossy(&out.stderr),
        node.log()
    );
    let ip = result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string();
    (pod, ip)
}

#[test]
fn three_nodes_run_the_rendered_daemonset_mesh_and_pods_ping_across_nodes() {
    let lock = net_lock();
    let seg = segment(&lock, "chnodes");
    let cp = ControlPlane::start(&lock, &seg);
    let r = render_values(VALUES).unwrap();
    let _mounts = MountPoints::ensure(&[SA_DIR, CONFIG_DIR, RUN_DIR]);

    // The chart as an operator applies it (CRDs first), as admin.
    let kubeconfig = cp.dir().join("admin.kubeconfig");
    cp.write_kubeconfig(&kubeconfig, cp.admin_token());
    let kc = kubeconfig.display().to_string();
    let mut paths: Vec<String> = crd_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(!paths.is_empty(), "the chart ships no CRDs");
    paths.push(r.dir.path().display().to_string());
    for p in &paths {
        let out = cp
            .ns
            .exec(&["kubectl", "--kubeconfig", &kc, "apply", "-f", p]);
        assert!(
            out.status.success(),
            "kubectl apply -f {p}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = cp.service_account_token(RELEASE_NAMESPACE, RELEASE);

    let root = tempfile::tempdir().unwrap();
    let mut nodes: Vec<ChartNode> = (1..=3)
        .map(|i| start_node(&lock, &seg, &cp, &r, &token, i, root.path()))
        .collect();

    let logs = |nodes: &[ChartNode]| {
        nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Ready as the kubelet's probe sees it, and meshed with the two others.
    let port = r.daemonset()["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        ["httpGet"]["port"]
        .as_u64()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/readyz");
    let ready = |n: &ChartNode, logs: &dyn Fn() -> String| {
        wait_until(&format!("{} ready", n.name), CONVERGE, POLL, || {
            let out = n.ns.exec(&["curl", "-s", "-w", " %{http_code}", &url]);
            let answer = String::from_utf8_lossy(&out.stdout).to_string();
            if answer.ends_with(" 200") {
                Ok(())
            } else {
                Err(format!("{answer}\n{}", logs()))
            }
        });
    };
    for n in &nodes {
        ready(n, &|| logs(&nodes));
        wait_until(&format!("{} meshed", n.name), CONVERGE, POLL, || {
            let s = n.status()?;
            let up = s["peers"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["state"] == "Established").count())
                .unwrap_or(0);
            if up == 2 {
                Ok(())
            } else {
                Err(format!("{s}\n{}", logs(&nodes)))
            }
        });
    }

    // Pods through the installed plugin, one per node; each pings the others.
    let pods: Vec<(Netns, String)> = nodes
        .iter()
        .enumerate()
        .map(|(k, n)| add_pod(&lock, n, &format!("chpod{}", k + 1)))
        .collect();
    for (a, (pa, _)) in pods.iter().enumerate() {
        for (b, (_, ip)) in pods.iter().enumerate() {
            if a == b {
                continue;
            }
            wait_until(
                &format!("pod {} reaches pod {} ({ip})", a + 1, b + 1),
                CONVERGE,
                POLL,
                || {
                    let out = pa.exec(&["ping", "-c", "1", "-W", "2", ip]);
                    if out.status.success() {
                        Ok(())
                    } else {
                        Err(logs(&nodes))
                    }
                },
            );
        }
    }

    // The blocks are in the cluster, one node each.
    let blocks = cp
        .call("GET", "/apis/ferrovia.io/v1alpha1/ipamblocks", None)
        .expect_status(200, "list IPAMBlocks")
        .json();
    assert!(
        blocks["items"].as_array().is_some_and(|b| b.len() >= 3),
        "{blocks}"
    );

    // A rolling upgrade, one node at a time as the DaemonSet's RollingUpdate does: SIGTERM
    // to the old agent, then the new one from the chart rendered with a new image tag, while
    // the pod on the next node pings the restarted node's pod 100 times a second. Graceful
    // restart keeps every route in every kernel meanwhile — the restarted node's own routes
    // to the other nodes until they have sent theirs again, the other nodes' routes to it
    // until its End-of-RIB — so not one ping is lost (counted from the replies' sequence
    // numbers), whatever the speed of the machine.
    let upgraded = render_values(&format!("{VALUES}image: {{ tag: \"0.1.1\" }}\n")).unwrap();
    assert_ne!(
        container(&upgraded, "agent")["image"],
        container(&r, "agent")["image"]
    );
    let mut lost = Vec::new();
    for k in 0..nodes.len() {
        let (from, _) = &pods[(k + 1) % pods.len()];
        let (_, to) = &pods[k];
        // Traffic flows before the restart begins.
        let pinger = Pinger::spawn(from.name(), to);
        let n = &mut nodes[k];
        if let Some(mut old) = n.agent.take() {
            let status = old.terminate(Duration::from_secs(30));
            assert!(
                status.is_some_and(|s| s.success()),
                "{}: the old agent did not exit cleanly on SIGTERM: {status:?}\n{}",
                n.name,
                n.log()
            );
        }
        // The new pod: the same node directories, the upgraded rendering.
        std::fs::write(
            n.dir("etc-ferrovia").join("agent.yaml"),
            upgraded.agent_config(),
        )
        .unwrap();
        let cmd = n.command(&argv(container(&upgraded, "agent")));
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let name = n.name.clone();
        let env = agent_env(
            container(&upgraded, "agent"),
            &name,
            &format!("198.18.0.{}", k + 1),
        );
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        n.agent = Some(Proc::spawn(n.ns.name(), &cmd, &n.dir("agent.log"), &env));
        wait_until(&format!("{name} meshed again"), CONVERGE, POLL, || {
            let s = nodes[k].status()?;
            let up = s["peers"]
                .as_array()
                .map(|p| p.iter().filter(|p| p["state"] == "Established").count())
                .unwrap_or(0);
            if up == 2 {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        });
        // Ready again: End-of-RIB went both ways with both peers, so the restart is over
        // (kept routes swept, stale routes refreshed) before the count ends.
        ready(&nodes[k], &|| logs(&nodes));
        // Let the pinger see the settled state, then stop it and count.
        let settled = pinger.replies();
        wait_until("ping replies after the restart", CONVERGE, POLL, || {
            let replies = pinger.replies();
            if replies >= settled + 100 {
                Ok(())
            } else {
                Err(format!("{replies} replies"))
            }
        });
        let (sent, received, _) = pinger.stop();
        println!(
            "rolling upgrade of {name}: {sent} pings sent to its pod, {received} answered, {} lost",
            sent - received
        );
        lost.push((name, sent - received));
    }
    println!("packets lost per node restart: {lost:?}");
    assert!(
        lost.iter().all(|(_, l)| *l == 0),
        "packets lost per node restart: {lost:?}\n{}",
        logs(&nodes)
    );
    for (a, (pa, _)) in pods.iter().enumerate() {
        for (b, (_, ip)) in pods.iter().enumerate() {
            if a != b {
                let out = pa.exec(&["ping", "-c", "1", "-W", "5", ip]);
                assert!(
                    out.status.success(),
                    "after the upgrade pod {} does not reach pod {}",
                    a + 1,
                    b + 1
                );
            }
        }
    }
    for n in &mut nodes {
        if let Some(mut p) = n.agent.take() {
            p.terminate(Duration::from_secs(30));
        }
    }
}
