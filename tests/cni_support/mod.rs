//! One node for the CNI tests: a network namespace with an uplink and a default route, a
//! ferrovia agent in it with a SQLite datastore and IPAM pools in a tempdir, and the
//! plugin run exactly as a runtime runs it (a file named `ferrovia-cni`, `CNI_*` in a
//! clean environment, the configuration on stdin, inside the node's namespace).

use crate::common::proc::Proc;
use crate::common::{tail_file, wait_until, NetLock, Netns};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

pub const VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// How long one plugin run may take.
const PLUGIN_LIMIT: Duration = Duration::from_secs(60);

/// One plugin run.
#[derive(Debug, Clone)]
pub struct Run {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// stdout as JSON (Null when empty or not JSON).
    pub json: Value,
}

impl Run {
    /// Asserts success with empty stdout (DEL, CHECK, GC, STATUS).
    pub fn assert_silent_ok(&self, what: &str) {
        assert!(
            self.ok && self.stdout.trim().is_empty(),
            "{what}: expected success with nothing on stdout, got {self:#?}"
        );
    }

    /// Asserts failure with a well-formed CNI error of `code` for `version`; returns it.
    pub fn assert_error(&self, code: u64, version: &str, what: &str) -> &Value {
        assert!(
            !self.ok,
            "{what}: expected an error, got success: {self:#?}"
        );
        let e = &self.json;
        assert_eq!(e["code"], code, "{what}: error code; {self:#?}");
        assert_eq!(
            e["cniVersion"], version,
            "{what}: error cniVersion; {self:#?}"
        );
        assert!(
            e["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: error msg; {self:#?}"
        );
        let keys: BTreeSet<&str> = e
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert!(
            keys.is_subset(&BTreeSet::from(["cniVersion", "code", "msg", "details"])),
            "{what}: unexpected keys in {e}"
        );
        e
    }
}

/// What a runtime passes for one attachment.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// Full path; None: CNI_NETNS unset.
    pub netns: Option<String>,
    pub args: Option<String>,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: Option<&Netns>) -> Call<'a> {
        Call {
            command,
            container_id,
            ifname: "eth0",
            netns: netns.map(netns_path),
            args: Some(format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns-{container_id};K8S_POD_NAME=pod-{container_id};K8S_POD_INFRA_CONTAINER_ID={container_id}"
            )),
        }
    }
}

pub fn netns_path(ns: &Netns) -> String {
    format!("/run/netns/{}", ns.name())
}

pub struct Node {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub plugin: PathBuf,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub log: PathBuf,
    agent: Option<Proc>,
    /// The agent config's `ipam:` section (YAML, indented block).
    pub ipam_yaml: Option<String>,
}

/// The pools of most tests.
pub const DUAL_STACK_POOLS: &str = "ipam:\n  pools:\n    - { cidr: 10.244.0.0/16, blockSize: 26 }\n    - { cidr: \"fd00:10:244::/48\", blockSize: 122 }\n";

impl Node {
    /// The node namespace with `eth0` (an uplink: one end of a veth pair whose other end,
    /// `uplink`, stays in the namespace; 198.18.0.1/24, fd00:198:18::1/64)
    /// and default routes, and a running agent.
    pub fn start(lock: &NetLock, tag: &str) -> Node {
        let mut n = Node::without_agent(lock, tag);
        n.start_agent();
        n
    }

    /// The node namespace and files, no agent.
    pub fn without_agent(lock: &NetLock, tag: &str) -> Node {
        let ns = Netns::new(lock, &format!("{tag}-node"));
        ns.ip(&[
            "link", "add", "eth0", "type", "veth", "peer", "name", "uplink",
        ]);
        ns.link_up("eth0");
        ns.link_up("uplink");
        ns.addr("eth0", "198.18.0.1/24");
        ns.addr("eth0", "fd00:198:18::1/64");
        // Real nodes have a default route; proxy ARP for the pods' 169.254.1.1 needs one
        // out of another interface (GUIDE §4).
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
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            "fd00:198:18::254",
            "dev",
            "eth0",
            "onlink",
        ]);
        ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        ns.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let dir = tempfile::Builder::new()
            .prefix("fvt-ferrovia-cni")
            .tempdir()
            .expect("tempdir");
        // Our own link of the binary (a concurrent `cargo build` replaces target/debug),
        // and the plugin as runtimes find it: a symlink named ferrovia-cni.
        let bin = dir.path().join("ferrovia");
        let exe = crate::common::bin();
        if std::fs::hard_link(exe, &bin).is_err() {
            std::fs::copy(exe, &bin).unwrap_or_else(|e| panic!("copy {exe}: {e}"));
        }
        let plugin = dir.path().join("ferrovia-cni");
        std::os::unix::fs::symlink(&bin, &plugin).expect("symlink ferrovia-cni");
        Node {
            ns,
            socket: dir.path().join("ferrovia.sock"),
            db: dir.path().join("ferrovia.db"),
            log: dir.path().join("agent.log"),
            bin,
            plugin,
            dir,
            agent: None,
            ipam_yaml: Some(DUAL_STACK_POOLS.to_string()),
        }
    }

    pub fn start_agent(&mut self) {
        let conf = self.dir.path().join("agent.yaml");
        std::fs::write(
            &conf,
            format!(
                "node: {{ name: node1, asNumber: 64512, routerId: 198.18.0.1, addresses: [198.18.0.1, \"fd00:198:18::1\"] }}\n\
                 datastore: {{ sqlite: {{ path: {db} }} }}\n\
                 {ipam}\
                 bgp: {{ peers: [] }}\n\
                 status: {{ socket: {sock} }}\n",
                db = self.db.display(),
                sock = self.socket.display(),
                ipam = self.ipam_yaml.as_deref().unwrap_or(""),
            ),
        )
        .expect("write agent.yaml");
        let conf = conf.display().to_string();
        let bin = self.bin.display().to_string();
        self.agent = Some(Proc::spawn(
            self.ns.name(),
            &[&bin, "agent", "--config", &conf],
            &self.log,
            &[("FERROVIA_LOG", "info,ferrovia=debug"), ("NO_COLOR", "1")],
        ));
        let log = self.log.clone();
        wait_until(
            "the agent answers on its socket",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                if let Some(st) = self.agent.as_mut().and_then(|p| p.try_wait()) {
                    panic!("agent exited at start ({st}):\n{}", tail_file(&log, 60));
                }
                let out = Command::new(&self.bin)
                    .args(["status", "--json", "--socket"])
                    .arg(&self.socket)
                    .output()
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            },
        );
    }

    /// SIGTERM and wait.
    pub fn stop_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            p.terminate(Duration::from_secs(30));
        }
    }

    /// The example network configuration (config/ferrovia.conflist) as the runtime hands
    /// it to the plugin for `version`: the plugin object with `cniVersion` and `name`,
    /// `agentSocket` pointed at this node's agent.
    pub fn conf(&self, version: &str) -> Value {
        let text =
            std::fs::read_to_string(crate::common::repo_root().join("config/ferrovia.conflist"))
                .expect("config/ferrovia.conflist");
        let list: Value = serde_json::from_str(&text).expect("conflist JSON");
        let mut p = list["plugins"][0].clone();
        assert_eq!(p["type"], "ferrovia-cni");
        p["cniVersion"] = json!(version);
        p["name"] = list["name"].clone();
        p["agentSocket"] = json!(self.socket.display().to_string());
        p
    }

    /// Runs the plugin in the node's namespace with exactly the variables of `call`.
    pub fn cni(&self, call: &Call, stdin: &Value) -> Run {
        let stdin = if stdin.is_string() {
            stdin.as_str().unwrap_or_default().to_string()
        } else {
            stdin.to_string()
        };
        let mut env: Vec<(&str, String)> = vec![
            ("CNI_COMMAND", call.command.to_string()),
            ("CNI_CONTAINERID", call.container_id.to_string()),
            ("CNI_IFNAME", call.ifname.to_string()),
            ("CNI_PATH", "/opt/cni/bin".to_string()),
        ];
        if let Some(n) = &call.netns {
            env.push(("CNI_NETNS", n.clone()));
        }
        if let Some(a) = &call.args {
            env.push(("CNI_ARGS", a.clone()));
        }
        self.exec_plugin(&env, &stdin)
    }

    /// Runs the plugin with exactly `env` (nothing else) and `stdin`.
    pub fn exec_plugin(&self, env: &[(&str, String)], stdin: &str) -> Run {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(&self.plugin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("run ferrovia-cni");
        let mut input = child.stdin.take().expect("stdin");
        let data = stdin.as_bytes().to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let start = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() < PLUGIN_LIMIT => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("ferrovia-cni {env:?} did not finish within {PLUGIN_LIMIT:?}");
                }
            }
        }
        let _ = writer.join();
        let out = child.wait_with_output().expect("plugin output");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `ferrovia ipam show --json` on this node's datastore.
    pub fn ipam(&self) -> Value {
        let out = Command::new(&self.bin)
            .args(["ipam", "show", "--json", "--datastore"])
            .arg(&self.db)
            .output()
            .expect("ferrovia ipam show");
        assert!(
            out.status.success(),
            "ferrovia ipam show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ipam show JSON")
    }

    /// Allocations as (ip, containerId, interface), sorted.
    pub fn allocations(&self) -> Vec<(String, String, String)> {
        let v = self.ipam();
        let mut out: Vec<(String, String, String)> = v["allocations"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["ip"].as_str().unwrap_or_default().to_string(),
                            x["handle"]["containerId"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                            x["handle"]["interface"]
                                .as_str()
                                .unwrap_or_default()
                                .to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The addresses IPAM gives `container_id` (eth0).
    pub fn addresses_of(&self, container_id: &str) -> Vec<String> {
        self.allocations()
            .into_iter()
            .filter(|(_, c, i)| c == container_id && i == "eth0")
            .map(|(ip, _, _)| ip)
            .collect()
    }

    /// Everything a failed or refused command must leave as it was: the node's links,
    /// addresses and routes (all tables), and IPAM's pools, blocks and allocations.
    pub fn snapshot(&self, pods: &[&Netns]) -> String {
        let mut s = String::new();
        let ip = |ns: &str, args: &[&str]| {
            let out = Command::new("ip")
                .args(["-n", ns])
                .args(args)
                .output()
                .expect("ip");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let names: Vec<&str> = std::iter::once(self.ns.name())
            .chain(pods.iter().map(|p| p.name()))
            .collect();
        // IPv6 duplicate address detection finishes on its own (tentative link-local
        // addresses, and their local routes): not a change anybody made.
        wait_until(
            "no tentative IPv6 address",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let busy: Vec<&str> = names
                    .iter()
                    .copied()
                    .filter(|ns| !ip(ns, &["-6", "-o", "addr", "show", "tentative"]).is_empty())
                    .collect();
                if busy.is_empty() {
                    Ok(())
                } else {
                    Err(busy.join(", "))
                }
            },
        );
        for ns in names {
            s.push_str(&format!("== {ns}\n"));
            // Names, kinds, flags and MACs; not counters.
            s.push_str(&ip(ns, &["-o", "link", "show"]));
            s.push_str(&ip(ns, &["-o", "addr", "show"]));
            s.push_str(&ip(ns, &["-4", "route", "show", "table", "all"]));
            s.push_str(&ip(ns, &["-6", "route", "show", "table", "all"]));
        }
        let mut v = self.ipam();
        // A periodic sweep may stamp empty blocks; that is not a change by the command.
        if let Some(blocks) = v["blocks"].as_array_mut() {
            for b in blocks {
                if let Some(o) = b.as_object_mut() {
                    o.remove("emptySinceMs");
                }
            }
        }
        s.push_str(&format!("== ipam\n{v:#}\n"));
        s
    }

    /// Interfaces in the node namespace.
    pub fn links(&self) -> Vec<String> {
        links_of(&self.ns)
    }

    pub fn log_text(&self) -> String {
        tail_file(&self.log, 80)
    }

    /// ADD `id` in a new pod namespace with `version`; panics unless it succeeds.
    pub fn add(&self, lock: &NetLock, id: &str, version: &str) -> (Netns, Value) {
        let pod = Netns::new(lock, "pod");
        let r = self.cni(&Call::new("ADD", id, Some(&pod)), &self.conf(version));
        assert!(
            r.ok,
            "ADD {id} ({version}) failed: {r:#?}\nagent log:\n{}",
            self.log_text()
        );
        (pod, r.json)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("==== agent log ====\n{}", tail_file(&self.log, 200));
        }
        self.stop_agent();
    }
}

/// Interface names in `ns`.
pub fn links_of(ns: &Netns) -> Vec<String> {
    let out = ns.ip(&["-j", "link", "show"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `ip -j link show DEV` in `ns`, the one object.
pub fn link(ns: &Netns, dev: &str) -> Option<Value> {
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-j", "-d", "link", "show", "dev", dev])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v.as_array()?.first().cloned()
}

/// Addresses (CIDR) on `dev` in `ns`, global scope only.
pub fn addrs(ns: &Netns, dev: &str) -> Vec<String> {
    let out = ns.ip(&["-j", "addr", "show", "dev", dev, "scope", "global"]);
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    let mut out: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| {
            Some(format!(
                "{}/{}",
                a["local"].as_str()?,
                a["prefixlen"].as_u64()?
            ))
        })
        .collect();
    out.sort();
    out
}
