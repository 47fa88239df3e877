//! End-to-end lab tests: a topology of tests/topologies brought up with `ferrovia lab up`
//! under a test name (`fvt-…`, so the harness's stale-namespace sweep covers it), driven
//! only through the `ferrovia lab` CLI and the tools inside the nodes, and removed with
//! `ferrovia lab down` when the guard drops — also when the test panics.
use crate::common::{wait_until, Capture, NetLock};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod restart;

pub const POLL: Duration = Duration::from_millis(200);
/// The hold time of every session in the lab topologies.
pub const HOLD: Duration = Duration::from_secs(9);
/// Time for something to propagate once it is decided (announcements, kernel routes).
pub const PROPAGATE: Duration = Duration::from_secs(30);

pub fn topology(file: &str) -> PathBuf {
    crate::common::repo_root()
        .join("tests/topologies")
        .join(file)
}

/// Runs a command with a time limit.
pub fn bounded(cmd: &mut Command, limit: Duration) -> Output {
    crate::common::output_bounded(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// A running lab; `ferrovia lab down` on drop. It borrows the topology lock, so the lock
/// outlives it.
pub struct Lab<'l> {
    pub file: PathBuf,
    pub name: String,
    _lock: std::marker::PhantomData<&'l NetLock>,
}

impl<'l> Lab<'l> {
    /// Removes a leftover of an earlier (killed) run, then `lab up --wait`.
    pub fn up(_lock: &'l NetLock, file: &str, name: &str) -> Lab<'l> {
        let lab = Lab {
            file: topology(file),
            name: name.to_string(),
            _lock: std::marker::PhantomData,
        };
        let _ = lab.cli(&["down"], &[], Duration::from_secs(60));
        let t = Instant::now();
        let out = lab.cli(&["up"], &["--wait", "60"], Duration::from_secs(120));
        assert!(
            out.status.success(),
            "ferrovia lab up {}: {}\n{}",
            lab.file.display(),
            String::from_utf8_lossy(&out.stderr),
            lab.logs()
        );
        eprintln!("lab {name} up in {:.1?}", t.elapsed());
        lab
    }

    /// `ferrovia lab --name NAME SUB FILE ARGS…`.
    pub fn cli(&self, sub: &[&str], args: &[&str], limit: Duration) -> Output {
        let mut c = Command::new(crate::common::bin());
        c.args(["lab", "--name", &self.name])
            .args(sub)
            .arg(&self.file)
            .args(args);
        bounded(&mut c, limit)
    }

    fn ok(&self, sub: &[&str], args: &[&str]) -> String {
        let out = self.cli(sub, args, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "ferrovia lab {sub:?} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `lab exec FILE NODE -- argv`: (success, stdout + stderr).
    pub fn exec(&self, node: &str, argv: &[&str]) -> (bool, String) {
        let mut args = vec![node, "--"];
        args.extend_from_slice(argv);
        let out = self.cli(&["exec"], &args, Duration::from_secs(30));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.ok(&["status"], &["--json"])).expect("status JSON")
    }

    /// The BGP sessions of a node: peer → state.
    pub fn sessions(&self, node: &str) -> BTreeMap<String, String> {
        let s = self.status();
        let n = s["nodes"]
            .as_array()
            .and_then(|a| a.iter().find(|n| n["name"] == node))
            .unwrap_or_else(|| panic!("no node {node} in {s}"));
        n["sessions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| {
                        (
                            x["peer"].as_str().unwrap_or("").to_string(),
                            x["state"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `lab pod add`: the pod's addresses without prefix length (IPv4 first).
    pub fn pod_add(&self, node: &str, pod: &str) -> Vec<String> {
        let out = self.ok(&["pod", "add"], &[node, pod]);
        // "n1/a: 10.244.0.0/32 fd00:10:244::/128"
        let addrs = out
            .split_once(": ")
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("pod add printed {out:?}"));
        let mut v: Vec<String> = addrs
            .split_whitespace()
            .map(|a| a.split('/').next().unwrap_or(a).to_string())
            .collect();
        v.sort_by_key(|a| a.contains(':'));
        v
    }

    /// `lab pod exec`: (success, output).
    pub fn pod_exec(&self, node: &str, pod: &str, argv: &[&str]) -> (bool, String) {
        let mut args = vec![node, pod, "--"];
        args.extend_from_slice(argv);
        let out = self.cli(&["pod", "exec"], &args, Duration::from_secs(30));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// One ping from a pod, asserting it is answered.
    pub fn ping(&self, node: &str, pod: &str, dst: &str) {
        let (ok, out) = self.try_ping(node, pod, dst);
        assert!(ok, "ping {dst} from {node}/{pod}: {out}");
    }

    /// One echo request; the reply may take up to 10 s (a busy machine resolving neighbours
    /// on every hop), which bounds the wait and measures nothing.
    pub fn try_ping(&self, node: &str, pod: &str, dst: &str) -> (bool, String) {
        self.pod_exec(node, pod, &["ping", "-n", "-c", "1", "-W", "10", dst])
    }

    pub fn stop(&self, node: &str, kill: bool) {
        if kill {
            self.ok(&["stop"], &[node, "--kill"]);
        } else {
            self.ok(&["stop"], &[node]);
        }
    }

    pub fn start(&self, node: &str) {
        self.ok(&["start"], &[node]);
    }

    /// The lab's state directory and shared datastore (on the host).
    pub fn state_dir(&self) -> PathBuf {
        Path::new("/run/ferrovia-lab").join(&self.name)
    }

    /// IPAM blocks per node, from the lab's datastore.
    pub fn blocks(&self) -> BTreeMap<String, Vec<String>> {
        let db = self.state_dir().join("datastore/ferrovia.db");
        let out = bounded(
            Command::new(crate::common::bin())
                .args(["ipam", "show", "--json", "--datastore"])
                .arg(&db),
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "ipam show: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("ipam JSON");
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for b in v["blocks"].as_array().into_iter().flatten() {
            m.entry(b["node"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(b["cidr"].as_str().unwrap_or("").to_string());
        }
        m
    }

    /// The kernel's route for exactly `prefix` in a node (`ip route show PREFIX`), one line.
    pub fn route(&self, node: &str, prefix: &str) -> String {
        let fam = if prefix.contains(':') { "-6" } else { "-4" };
        let (ok, out) = self.exec(node, &["ip", fam, "route", "show", prefix]);
        assert!(ok, "ip route show {prefix} in {node}: {out}");
        out.trim().to_string()
    }

    /// `prefix` is routed in `node`'s kernel via `via` (Err describes what is there).
    pub fn routed_via(&self, node: &str, prefix: &str, via: &str) -> Result<(), String> {
        let r = self.route(node, prefix);
        if r.contains(&format!("via {via} ")) {
            Ok(())
        } else {
            Err(format!("{node}: `{prefix}` is {r:?}, want via {via}"))
        }
    }

    /// A node routes to its own pod (the host route the CNI plugin made) — after an agent
    /// restart too.
    pub fn pod_routed(&self, node: &str, pod_addr: &str) {
        time_until(
            &format!("{node} routes to its own pod {pod_addr} (the CNI host route)"),
            PROPAGATE,
            || {
                let r = self.route(node, pod_addr);
                if r.contains(" dev fv") {
                    Ok(())
                } else {
                    Err(format!(
                        "{node}: `ip route show {pod_addr}` is {r:?}: the pod's host route is gone"
                    ))
                }
            },
        );
    }

    /// Everything to look at when a test fails: status and the daemons' logs.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        let st = self.cli(&["status"], &[], Duration::from_secs(30));
        s.push_str(&String::from_utf8_lossy(&st.stdout));
        s.push_str(&String::from_utf8_lossy(&st.stderr));
        let nodes = self.state_dir().join("nodes");
        if let Ok(rd) = std::fs::read_dir(&nodes) {
            for e in rd.flatten() {
                if let Ok(logs) = std::fs::read_dir(e.path()) {
                    for l in logs.flatten() {
                        s.push_str(&format!(
                            "==== {} ====\n{}\n",
                            l.path().display(),
                            crate::common::tail_file(&l.path(), 40)
                        ));
                    }
                }
            }
        }
        s
    }

    /// Waits (bounded) until every ferrovia and FRR session is Established.
    pub fn wait_established(&self, limit: Duration) {
        wait_until("every BGP session Established", limit, POLL, || {
            let s = self.status();
            for n in s["nodes"].as_array().into_iter().flatten() {
                if n["role"] != "ferrovia" && n["role"] != "frr" {
                    continue;
                }
                if n["state"] != "running" {
                    return Err(format!("{} is {}", n["name"], n["state"]));
                }
                let sessions = n["sessions"].as_array().cloned().unwrap_or_default();
                if sessions.is_empty() || sessions.iter().any(|x| x["state"] != "Established") {
                    return Err(format!("{}: {:?}", n["name"], sessions));
                }
            }
            Ok(())
        });
    }
}

impl Drop for Lab<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== lab {} at the failure ====\n{}",
                self.name,
                self.logs()
            );
        }
        let out = self.cli(&["down"], &[], Duration::from_secs(120));
        if !out.status.success() {
            eprintln!(
                "lab down {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // Nothing of the lab may be left.
        let leftovers: Vec<String> = crate::common::netns::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .collect();
        let dir = self.state_dir();
        if !std::thread::panicking() {
            assert!(
                leftovers.is_empty(),
                "namespaces left after down: {leftovers:?}"
            );
            assert!(!dir.exists(), "{} left after down", dir.display());
        }
    }
}

/// tcpdump on one interface of a node, started (and listening) before the traffic it is to
/// see.
pub fn capture(lab: &Lab, node: &str, iface: &str, filter: &str) -> Capture {
    Capture::start(&format!("{}-{node}", lab.name), iface, filter)
}

/// Asserts that the capture saw `src` ping `dst` as a plain IP packet — pod addresses in
/// the outermost header — and no encapsulated packet at all. Stops the capture once the
/// echo request is in it (or its deadline passed).
pub fn assert_plain_echo(cap: Capture, src: &str, dst: &str) {
    let v6 = src.contains(':');
    let want = if v6 {
        format!("IP6 {src} > {dst}: ICMP6, echo request")
    } else {
        format!("IP {src} > {dst}: ICMP echo request")
    };
    let lines = cap.finish_when_seen(&[&want]);
    assert!(
        lines.iter().any(|l| l.contains(&want)),
        "no `{want}` in the capture:\n{}",
        lines.join("\n")
    );
    for l in &lines {
        let lower = l.to_ascii_lowercase();
        for enc in [
            "ipip",
            "vxlan",
            "grev",
            "geneve",
            "ip-proto-4",
            ": ip ",
            ": ip6 ",
        ] {
            assert!(
                !lower.contains(enc),
                "an encapsulated packet ({enc}) in the capture: {l}"
            );
        }
    }
}

/// Waits for `cond`, bounded, and returns how long it took.
pub fn time_until(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<(), String>,
) -> Duration {
    let t = Instant::now();
    wait_until(what, limit, Duration::from_millis(100), &mut cond);
    t.elapsed()
}
