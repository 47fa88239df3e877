//! Agent restarts in a lab with counted pod traffic (issue 11), shared by
//! tests/lab_graceful_restart.rs, tests/lab_rolling_restart.rs and the rolling-restart
//! benchmark: pings of 100 packets a second between pods, loss counted from the echo
//! replies' sequence numbers (a number missing below the highest one answered is a lost
//! packet); a node's agent stopped and started again, waiting for its /readyz as a
//! DaemonSet rollout with maxUnavailable 1 does.
use super::{bounded, time_until, Lab, POLL, PROPAGATE};
use crate::common::{self, wait_until};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// A restarted agent is up, meshed and ready (End-of-RIB both ways) within this.
pub const READY: Duration = Duration::from_secs(60);
/// What the restarted agent logs when it claims a graceful restart.
pub const CLAIM: &str = "graceful restart: our routes are still in the kernel";

/// Node → its ToR (or another router that peers with it) and that router's name for the
/// session (FRR and ferrovia: the node's address; BIRD: the protocol's name).
pub type TorOf = fn(&str) -> (&'static str, &'static str);

/// The leaf-spine lab (and its graceful-restart variants) with FRR ToRs.
pub fn frr_tor_of(node: &str) -> (&'static str, &'static str) {
    match node {
        "n1" => ("tor1", "198.18.11.1"),
        "n2" => ("tor1", "198.18.12.1"),
        "n3" => ("tor2", "198.18.21.1"),
        "n4" => ("tor2", "198.18.22.1"),
        other => panic!("no ToR known for {other}"),
    }
}

/// The BIRD labs: one ToR, protocols named after the nodes.
pub fn bird_tor_of(node: &str) -> (&'static str, &'static str) {
    match node {
        "n1" => ("tor", "n1"),
        "n3" => ("tor", "n3"),
        other => panic!("no ToR known for {other}"),
    }
}

/// The mesh lab (no ToR): the next node's session with `node` (by its address).
pub fn mesh_peer_of(node: &str) -> (&'static str, &'static str) {
    match node {
        "n1" => ("n2", "198.18.0.1"),
        "n2" => ("n3", "198.18.0.2"),
        "n3" => ("n1", "198.18.0.3"),
        other => panic!("no mesh peer known for {other}"),
    }
}

/// A ping of 100 packets a second from a pod, running until [`PingRun::finish`].
pub struct PingRun {
    pidfile: PathBuf,
    _dir: tempfile::TempDir,
    thread: Option<std::thread::JoinHandle<Output>>,
}

/// What a ping saw.
#[derive(Debug)]
pub struct PingCount {
    /// Highest sequence number answered.
    pub last: u64,
    pub answered: usize,
    /// Sequence numbers below `last` never answered.
    pub lost: Vec<u64>,
}

impl PingRun {
    pub fn start(lab: &Lab, node: &str, pod: &str, dst: &str) -> PingRun {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("ping.pid");
        let script = format!(
            "echo $$ > {}; exec ping -n -i 0.01 {dst}",
            pidfile.display()
        );
        let mut c = Command::new(common::bin());
        c.args(["lab", "--name", &lab.name, "pod", "exec"])
            .arg(&lab.file)
            .args([node, pod, "--", "sh", "-c", &script]);
        // Bounded: the run is stopped long before; this only ends a forgotten one.
        let thread = std::thread::spawn(move || bounded(&mut c, Duration::from_secs(900)));
        wait_until("the ping runs", Duration::from_secs(30), POLL, || {
            std::fs::read_to_string(&pidfile)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|_| ())
                .ok_or_else(|| "no pid yet".to_string())
        });
        PingRun {
            pidfile,
            _dir: dir,
            thread: Some(thread),
        }
    }

    /// Stops the ping (SIGINT: it prints what it saw) and counts.
    pub fn finish(mut self) -> PingCount {
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        // SAFETY: a plain kill(2) on the ping this run started.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
        let out = self
            .thread
            .take()
            .expect("running")
            .join()
            .expect("ping thread");
        let text = String::from_utf8_lossy(&out.stdout);
        let seqs: BTreeSet<u64> = text
            .lines()
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|s| s.split_whitespace().next())
            .filter_map(|s| s.parse().ok())
            .collect();
        let last = seqs.last().copied().unwrap_or(0);
        let lost = (1..last).filter(|s| !seqs.contains(s)).collect();
        let summary: Vec<&str> = text.lines().filter(|l| l.contains("transmitted")).collect();
        eprintln!("ping: {summary:?}");
        PingCount {
            last,
            answered: seqs.len(),
            lost,
        }
    }
}

/// How often the agent of `node` claimed a graceful restart in its log.
pub fn claims(lab: &Lab, node: &str) -> usize {
    let log = lab.state_dir().join("nodes").join(node).join("agent.log");
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(CLAIM)
        .count()
}

/// The agent of `node` answers /readyz 200: its session is up and End-of-RIB went both ways.
pub fn ready(lab: &Lab, node: &str) -> Result<(), String> {
    let (_, out) = lab.exec(
        node,
        &[
            "curl",
            "-s",
            "--max-time",
            "3",
            "-w",
            " %{http_code}",
            "http://127.0.0.1:9091/readyz",
        ],
    );
    if out.trim_end().ends_with(" 200") {
        Ok(())
    } else {
        Err(out)
    }
}

/// The ToR's view of its session with `node`.
pub fn tor_session(lab: &Lab, tor_of: TorOf, node: &str) -> String {
    let (tor, key) = tor_of(node);
    lab.sessions(tor).get(key).cloned().unwrap_or_default()
}

/// Stops the agent of `node` (SIGTERM, or SIGKILL with `kill`), waits until its ToR (the
/// router `tor_of` names) saw the session go, starts it again and waits until it claimed the restart and is ready.
pub fn restart(lab: &Lab, tor_of: TorOf, node: &str, kill: bool) {
    let before = claims(lab, node);
    lab.stop(node, kill);
    wait_until(
        &format!("{} notices {node}'s agent is gone", tor_of(node).0),
        PROPAGATE,
        POLL,
        || match tor_session(lab, tor_of, node) {
            s if s == "Established" => Err(s),
            _ => Ok(()),
        },
    );
    lab.start(node);
    let took = time_until(&format!("{node} ready after its restart"), READY, || {
        if claims(lab, node) <= before {
            return Err(format!("{node} has not claimed a graceful restart"));
        }
        ready(lab, node)
    });
    eprintln!(
        "{node} restarted ({}) and ready in {took:.1?}",
        if kill { "SIGKILL" } else { "SIGTERM" }
    );
}

/// Every BFD session of the agent of `node` is Up (`ferrovia status --json`).
pub fn bfd_up(lab: &Lab, node: &str) -> Result<(), String> {
    let (ok, out) = lab.exec(node, &["ferrovia", "status", "--json"]);
    if !ok {
        return Err(out);
    }
    let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    if peers.is_empty() {
        return Err(format!("no peers: {out}"));
    }
    match peers.iter().find(|p| p["bfd"]["state"] != "Up") {
        Some(p) => Err(format!("{node}: {p}")),
        None => Ok(()),
    }
}

/// One direction of pod traffic in a rolling restart.
#[derive(Debug)]
pub struct Flow {
    pub from: String,
    pub to: String,
    pub count: PingCount,
}

/// What [`rolling_restart`] saw.
#[derive(Debug)]
pub struct Rolling {
    /// Node restarts done (nodes × rounds).
    pub restarts: usize,
    pub flows: Vec<Flow>,
}

impl PingCount {
    /// The lost sequence numbers as ranges, e.g. "120–171, 300".
    pub fn lost_ranges(&self) -> String {
        let mut out: Vec<String> = Vec::new();
        let mut run: Option<(u64, u64)> = None;
        for &s in &self.lost {
            run = match run {
                Some((a, b)) if s == b + 1 => Some((a, s)),
                Some((a, b)) => {
                    out.push(if a == b {
                        format!("{a}")
                    } else {
                        format!("{a}–{b}")
                    });
                    Some((s, s))
                }
                None => Some((s, s)),
            };
        }
        if let Some((a, b)) = run {
            out.push(if a == b {
                format!("{a}")
            } else {
                format!("{a}–{b}")
            });
        }
        out.join(", ")
    }
}

impl Rolling {
    /// Echo requests sent (answered or lost) over all flows.
    pub fn sent(&self) -> u64 {
        self.flows.iter().map(|f| f.count.last).sum()
    }

    /// Echo requests lost over all flows.
    pub fn lost(&self) -> usize {
        self.flows.iter().map(|f| f.count.lost.len()).sum()
    }
}

/// A rolling restart of every agent of the lab, as a DaemonSet rollout does: a pod on each
/// of `nodes` pings the pod on every other node at 100/s (every pair, both directions) while
/// the nodes' agents are stopped with SIGTERM and started again one after the other, each
/// one ready (/readyz) before the next goes, `rounds` times over. With `bfd`, every agent's
/// BFD sessions must be Up before the first restart and again after each one.
pub fn rolling_restart(
    lab: &Lab,
    tor_of: TorOf,
    nodes: &[&str],
    rounds: usize,
    bfd: bool,
) -> Rolling {
    lab.wait_established(PROPAGATE);
    let pods: Vec<(&str, String)> = nodes
        .iter()
        .map(|n| (*n, lab.pod_add(n, "p")[0].clone()))
        .collect();
    let pairs: Vec<(&str, &str, &str)> = pods
        .iter()
        .flat_map(|(from, _)| {
            pods.iter()
                .filter(move |(to, _)| to != from)
                .map(move |(to, addr)| (*from, *to, addr.as_str()))
        })
        .collect();
    for (from, to, addr) in &pairs {
        time_until(
            &format!("{from}'s pod reaches {to}'s pod"),
            PROPAGATE,
            || match lab.try_ping(from, "p", addr) {
                (true, _) => Ok(()),
                (false, out) => Err(out),
            },
        );
    }
    let all_bfd_up = |what: &str| {
        if bfd {
            wait_until(what, PROPAGATE, POLL, || {
                nodes.iter().try_for_each(|n| bfd_up(lab, n))
            });
        }
    };
    all_bfd_up("every agent's BFD sessions Up");
    let pings: Vec<(&str, &str, PingRun)> = pairs
        .iter()
        .map(|(from, to, addr)| (*from, *to, PingRun::start(lab, from, "p", addr)))
        .collect();
    let mut restarts = 0;
    let t0 = std::time::Instant::now();
    for round in 1..=rounds {
        for node in nodes {
            eprintln!(
                "round {round}: {node} restarts {:.1?} after the last ping started",
                t0.elapsed()
            );
            restart(lab, tor_of, node, false);
            all_bfd_up(&format!(
                "round {round}: every agent's BFD sessions Up after {node}'s restart"
            ));
            restarts += 1;
        }
    }
    // Traffic after the last restart is counted too: one more echo goes all the way.
    for (from, _, addr) in &pairs {
        lab.ping(from, "p", addr);
    }
    let flows = pings
        .into_iter()
        .map(|(from, to, p)| Flow {
            from: from.to_string(),
            to: to.to_string(),
            count: p.finish(),
        })
        .collect();
    Rolling { restarts, flows }
}
