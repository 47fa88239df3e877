//! A cluster of ferrovia nodes for tests: each node a network namespace on one L2 segment
//! (a bridge in another namespace), every agent sharing one SQLite datastore in a tempdir.
//! Each node has a veth pair `pod0`/`pod0p` holding 10.244.N.1/32 and fd00:10:244:N::1/128,
//! a stand-in pod for tests that do not need the CNI. [`Cluster::kubernetes`] puts the
//! cluster state on a real API server instead (tests/common/kube.rs).

use super::kube::ControlPlane;
use super::proc::Proc;
use super::{net_lock, NetLock, Netns};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub const POLL: Duration = Duration::from_millis(100);
/// Generous: a deadline bounds a wait on observed state, it never measures speed.
pub const CONVERGE: Duration = Duration::from_secs(30);

pub struct Node {
    pub i: u8,
    pub ns: Netns,
    pub agent: Option<Proc>,
    pub dir: PathBuf,
    /// Extra YAML appended to the agent config (e.g. an `ipam:` section).
    pub extra: String,
    /// Extra entries inside the config's `bgp` mapping (e.g. `, mesh: false`).
    pub bgp_extra: String,
    /// The config's `datastore` value (YAML flow style); empty: the cluster's SQLite file.
    pub datastore: String,
}

impl Node {
    pub fn sock(&self) -> PathBuf {
        self.dir.join(format!("n{}.sock", self.i))
    }

    pub fn start(&mut self, db: &Path) {
        let i = self.i;
        let datastore = if self.datastore.is_empty() {
            format!("{{ sqlite: {{ path: {} }} }}", db.display())
        } else {
            self.datastore.clone()
        };
        let conf = self.dir.join(format!("n{i}.yaml"));
        std::fs::write(
            &conf,
            format!(
                "node: {{ name: node{i}, asNumber: 64512, routerId: 198.18.0.{i}, addresses: [198.18.0.{i}, \"fd00:198:18::{i}\"] }}\n\
                 datastore: {datastore}\n\
                 bgp: {{ holdTime: 9, connectRetry: 1, originate: [10.244.{i}.0/26, \"fd00:10:244:{i}::/122\"]{bgp_extra} }}\n\
                 metrics: {{ listen: \"127.0.0.1:9091\" }}\n\
                 status: {{ socket: {sock} }}\n{extra}",
                sock = self.sock().display(),
                extra = self.extra,
                bgp_extra = self.bgp_extra
            ),
        )
        .expect("write config");
        let log = self.dir.join(format!("n{i}.log"));
        let conf = conf.display().to_string();
        self.agent = Some(Proc::spawn(
            self.ns.name(),
            &[super::bin(), "agent", "--config", &conf],
            &log,
            &[("FERROVIA_LOG", "info")],
        ));
    }

    pub fn status(&self) -> Result<Value, String> {
        let out = Command::new(super::bin())
            .args(["status", "--json", "--socket"])
            .arg(self.sock())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// The agent's Loc-RIB (`ferrovia routes --json`).
    pub fn routes(&self) -> Result<Vec<Value>, String> {
        let out = Command::new(super::bin())
            .args(["routes", "--json", "--socket"])
            .arg(self.sock())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Our routes in the kernel, one line each (`ip route show proto 0xf1`, both families).
    pub fn kernel_routes(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for fam in ["-4", "-6"] {
            let out = self.ns.ip(&[fam, "route", "show", "proto", "0xf1"]);
            v.extend(
                out.lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty()),
            );
        }
        v
    }

    pub fn has_route(&self, needle: &str) -> bool {
        self.kernel_routes().iter().any(|l| l.starts_with(needle))
    }

    pub fn metrics(&self) -> String {
        String::from_utf8_lossy(
            &self
                .ns
                .exec(&[
                    "curl",
                    "-s",
                    "--max-time",
                    "3",
                    "http://127.0.0.1:9091/metrics",
                ])
                .stdout,
        )
        .into_owned()
    }

    /// The agent's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("n{}.log", self.i))).unwrap_or_default()
    }

    pub fn kill(&mut self, sig: i32) {
        if let Some(a) = self.agent.as_mut() {
            a.signal(sig);
            let _ = a.terminate(super::START);
        }
        self.agent = None;
    }
}

pub struct Cluster {
    /// With the Kubernetes datastore: the API server (dropped before the segment).
    pub cp: Option<ControlPlane>,
    /// With the Kubernetes datastore: the agents' and the CLI's kubeconfig.
    pub kubeconfig: Option<PathBuf>,
    pub br: Netns,
    pub nodes: Vec<Node>,
    pub db: PathBuf,
    pub dir: tempfile::TempDir,
    /// Extra YAML for every node's config.
    pub extra: String,
    /// Extra entries inside every node's `bgp` mapping.
    pub bgp_extra: String,
    /// MTU of the nodes' segment (each node's eth0 and its bridge port), set before the
    /// agent of a node added later starts; the kernel's 1500 when None.
    pub link_mtu: Option<u32>,
    pub _lock: NetLock,
}

impl Cluster {
    pub fn new(tag: &str, n: u8) -> Cluster {
        Cluster::with(tag, n, "")
    }

    /// A cluster whose nodes' configs all end with `extra` (YAML).
    pub fn with(tag: &str, n: u8, extra: &str) -> Cluster {
        Cluster::with_bgp(tag, n, extra, "")
    }

    /// Like [`Cluster::with`], with `bgp_extra` inside every node's `bgp` mapping.
    pub fn with_bgp(tag: &str, n: u8, extra: &str, bgp_extra: &str) -> Cluster {
        let lock = net_lock();
        let br = Netns::new(&lock, &format!("{tag}-br"));
        br.ip(&["link", "add", "br0", "type", "bridge"]);
        br.link_up("br0");
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("ferrovia.db");
        let mut c = Cluster {
            cp: None,
            kubeconfig: None,
            br,
            nodes: Vec::new(),
            db,
            dir,
            extra: extra.to_string(),
            bgp_extra: bgp_extra.to_string(),
            link_mtu: None,
            _lock: lock,
        };
        for i in 1..=n {
            c.add_node(i);
        }
        c
    }

    /// A cluster on the Kubernetes datastore: a control plane at 198.18.0.250 on the nodes'
    /// segment with ferrovia's CRDs (`ferrovia crds`), one Node object per node (as the
    /// kubelet would register it), and agents configured with `datastore.kubernetes`.
    pub fn kubernetes(tag: &str, n: u8, extra: &str) -> Cluster {
        Cluster::kubernetes_with(tag, n, extra, &[])
    }

    /// [`Cluster::kubernetes`] with more kube-apiserver flags (e.g.
    /// `--feature-gates=IPv6DualStack=true`, without which 1.20 keeps only a Node's first pod
    /// CIDR).
    pub fn kubernetes_with(tag: &str, n: u8, extra: &str, apiserver_args: &[&str]) -> Cluster {
        let lock = net_lock();
        let br = Netns::new(&lock, &format!("{tag}-br"));
        br.ip(&["link", "add", "br0", "type", "bridge"]);
        br.link_up("br0");
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = ControlPlane::start_with(&lock, &br, apiserver_args);
        cp.install_crds(&super::kube::ferrovia_crds());
        let kubeconfig = dir.path().join("kubeconfig");
        cp.write_kubeconfig(&kubeconfig, cp.admin_token());
        let db = dir.path().join("unused.db");
        let mut c = Cluster {
            cp: Some(cp),
            kubeconfig: Some(kubeconfig),
            br,
            nodes: Vec::new(),
            db,
            dir,
            extra: extra.to_string(),
            bgp_extra: String::new(),
            link_mtu: None,
            _lock: lock,
        };
        for i in 1..=n {
            c.add_node(i);
        }
        c
    }

    /// The control plane of a Kubernetes cluster (panics on a SQLite one).
    pub fn control_plane(&self) -> &ControlPlane {
        self.cp
            .as_ref()
            .expect("a cluster made with Cluster::kubernetes")
    }

    pub fn add_node(&mut self, i: u8) -> &mut Node {
        let datastore = match (&self.cp, &self.kubeconfig) {
            (Some(cp), Some(kc)) => {
                cp.ensure(
                    "/api/v1/nodes",
                    &serde_json::json!({"apiVersion": "v1", "kind": "Node",
                                        "metadata": {"name": format!("node{i}"),
                                                     "labels": {"kubernetes.io/hostname": format!("node{i}")}}}),
                );
                format!("{{ kubernetes: {{ kubeconfig: {} }} }}", kc.display())
            }
            _ => String::new(),
        };
        let ns = Netns::new(&self._lock, &format!("n{i}"));
        let port = format!("p{i}");
        Netns::veth(&ns, "eth0", &self.br, &port);
        self.br.ip(&["link", "set", &port, "master", "br0"]);
        if let Some(mtu) = self.link_mtu {
            let mtu = mtu.to_string();
            self.br.ip(&["link", "set", &port, "mtu", &mtu]);
            ns.ip(&["link", "set", "eth0", "mtu", &mtu]);
        }
        ns.addr("eth0", &format!("198.18.0.{i}/24"));
        ns.addr("eth0", &format!("fd00:198:18::{i}/64"));
        ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        // The stand-in pod: addresses from the node's block on a local veth.
        ns.ip(&[
            "link", "add", "pod0", "type", "veth", "peer", "name", "pod0p",
        ]);
        ns.link_up("pod0");
        ns.link_up("pod0p");
        ns.addr("pod0", &format!("10.244.{i}.1/32"));
        ns.addr("pod0", &format!("fd00:10:244:{i}::1/128"));
        // Real nodes have a default route; proxy ARP for pods' 169.254.1.1 needs one out
        // of another interface (GUIDE §4).
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.18.0.254",
            "dev",
            "eth0",
            "onlink",
        ]);
        self.nodes.push(Node {
            i,
            ns,
            agent: None,
            dir: self.dir.path().to_path_buf(),
            extra: self.extra.clone(),
            bgp_extra: self.bgp_extra.clone(),
            datastore,
        });
        let db = self.db.clone();
        let node = self.nodes.last_mut().expect("just pushed");
        node.start(&db);
        node
    }

    pub fn node(&self, i: u8) -> &Node {
        self.nodes.iter().find(|n| n.i == i).expect("node")
    }

    pub fn node_mut(&mut self, i: u8) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.i == i).expect("node")
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.try_cli(args);
        assert!(
            out.status.success(),
            "ferrovia {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI on the cluster's datastore like [`Cluster::cli`], success or not.
    pub fn try_cli(&self, args: &[&str]) -> std::process::Output {
        match (&self.cp, &self.kubeconfig) {
            // The API server is on the segment: run the CLI from the control-plane namespace.
            (Some(cp), Some(kc)) => Command::new("ip")
                .args(["netns", "exec", cp.ns.name(), super::bin()])
                .args(args)
                .arg("--kubeconfig")
                .arg(kc)
                .output(),
            _ => Command::new(super::bin())
                .args(args)
                .arg("--datastore")
                .arg(&self.db)
                .output(),
        }
        .expect("run ferrovia")
    }

    /// Every listed node has every other listed node's blocks via that node, and a
    /// blackhole for its own, in the kernel.
    pub fn routed(&self, ids: &[u8]) -> Result<(), String> {
        for &i in ids {
            let n = self.node(i);
            for &j in ids {
                let want = if i == j {
                    vec![
                        format!("blackhole 10.244.{j}.0/26"),
                        format!("blackhole fd00:10:244:{j}::/122"),
                    ]
                } else {
                    vec![
                        format!("10.244.{j}.0/26 via 198.18.0.{j} dev eth0"),
                        format!("fd00:10:244:{j}::/122 via fd00:198:18::{j} dev eth0"),
                    ]
                };
                for w in want {
                    if !n.has_route(&w) {
                        return Err(format!("node{i} lacks `{w}`; has {:?}", n.kernel_routes()));
                    }
                }
            }
        }
        Ok(())
    }

    pub fn established(&self, i: u8, peers: usize) -> Result<(), String> {
        let s = self.node(i).status()?;
        let up = s["peers"]
            .as_array()
            .map(|a| a.iter().filter(|p| p["state"] == "Established").count())
            .unwrap_or(0);
        if up == peers {
            Ok(())
        } else {
            Err(format!(
                "node{i}: {up} of {peers} Established: {}",
                s["peers"]
            ))
        }
    }

    pub fn dump_logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log =
                std::fs::read_to_string(n.dir.join(format!("n{}.log", n.i))).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("--- node{} ---\n", n.i));
            for l in tail.iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.dump_logs());
        }
        for n in &mut self.nodes {
            n.kill(libc_sigterm());
        }
    }
}

pub fn libc_sigterm() -> i32 {
    15
}

/// A pod: a network namespace wired through the real CNI path.
pub struct Pod {
    pub node: u8,
    pub id: String,
    pub ns: Netns,
    pub result: Value,
}

impl Pod {
    /// The pod's address of a family, without prefix length, from the CNI result.
    pub fn ip(&self, v6: bool) -> Option<String> {
        self.result["ips"].as_array()?.iter().find_map(|ip| {
            let a = ip["address"].as_str()?;
            let addr = a.split('/').next()?;
            (addr.contains(':') == v6).then(|| addr.to_string())
        })
    }
}

impl Cluster {
    /// The plugin as a runtime sees it: a file named `ferrovia-cni` (a symlink to the
    /// ferrovia binary).
    pub fn plugin(&self) -> PathBuf {
        let path = self.dir.path().join("ferrovia-cni");
        // Many threads may ask at once (parallel ADDs): whoever comes second finds it made.
        match std::os::unix::fs::symlink(super::bin(), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("symlink {}: {e}", path.display()),
        }
        path
    }

    /// Runs one CNI command against node `i`'s agent, as a runtime would.
    pub fn cni(
        &self,
        i: u8,
        command: &str,
        id: &str,
        netns: Option<&str>,
        stdin: Option<String>,
    ) -> (bool, Value) {
        use std::io::Write;
        let conf = stdin.unwrap_or_else(|| {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"ferrovia","type":"ferrovia-cni","agentSocket":"{}","mtu":1500}}"#,
                self.node(i).sock().display()
            )
        });
        let mut cmd = Command::new(self.plugin());
        cmd.env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={id};K8S_POD_UID=uid-{id}"),
            )
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(ns) = netns {
            cmd.env("CNI_NETNS", format!("/var/run/netns/{ns}"));
        }
        let mut child = cmd.spawn().expect("run ferrovia-cni");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(conf.as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("ferrovia-cni output");
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }

    /// Starts a pod on node `i` through the CNI (panics with the plugin's answer on error).
    pub fn add_pod(&self, i: u8, name: &str) -> Pod {
        let ns = Netns::new(&self._lock, name);
        let (ok, result) = self.cni(i, "ADD", name, Some(ns.name()), None);
        assert!(ok, "CNI ADD of {name} on node{i} failed: {result}");
        Pod {
            node: i,
            id: name.to_string(),
            ns,
            result,
        }
    }
}
