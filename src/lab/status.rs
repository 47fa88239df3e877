//! `ferrovia lab status`: every node, its daemons and its BGP sessions, read from the
//! agents' control sockets, `vtysh` and `birdc` inside the nodes.

use super::runner::node_path;
use super::state::State;
use super::sys;
use super::topology::Role;
use anyhow::{bail, Result};
use serde::Serialize;
use serde_json::Value;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub peer: String,
    pub state: String,
    /// Prefixes received, when the daemon says.
    pub received: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub role: String,
    pub image: String,
    pub netns: String,
    /// running, stopped (daemons down, namespaces there) or gone.
    pub state: String,
    pub daemons: Vec<DaemonStatus>,
    pub sessions: Vec<Session>,
    /// Why `sessions` could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub running: bool,
    pub log: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabStatus {
    pub lab: String,
    pub file: String,
    pub state_dir: String,
    /// The shared datastore of the ferrovia nodes, as the host sees it.
    pub datastore: Option<String>,
    pub up_since: u64,
    pub complete: bool,
    pub nodes: Vec<NodeStatus>,
    pub pods: Vec<PodStatus>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub node: String,
    pub name: String,
    pub netns: String,
    pub addresses: Vec<String>,
}

/// "3 min ago" for a unix time.
pub fn ago(t: u64) -> String {
    let d = super::now().saturating_sub(t);
    match d {
        0..=119 => format!("{d} s ago"),
        120..=7199 => format!("{} min ago", d / 60),
        _ => format!("{} h ago", d / 3600),
    }
}

/// Reads the BGP sessions of one node.
pub fn sessions(st: &State, node: &str) -> Result<Vec<Session>> {
    let holder = st.holder(node)?;
    let n = st.node(node)?;
    let in_node = |argv: &[&str]| -> Result<String> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let out = sys::output(&mut sys::in_node(holder, &argv), Duration::from_secs(8))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match n.role {
        Role::Ferrovia => {
            let sock = n
                .socket
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_SOCKET.into());
            let s: crate::control::StatusReply =
                crate::control::call(&node_path(holder, &sock), &crate::control::Request::Status)?;
            Ok(s.peers
                .iter()
                .map(|p| Session {
                    peer: p.address.clone(),
                    state: p.state.clone(),
                    received: Some(p.prefixes_received as u64),
                })
                .collect())
        }
        Role::Frr => {
            let text = in_node(&["vtysh", "-c", "show bgp summary json"])?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("vtysh show bgp summary json: {e}: {text}"))?;
            Ok(frr_sessions(&v))
        }
        Role::Bird => {
            let text = in_node(&["birdc", "-s", "/run/bird/bird.ctl", "show", "protocols"])?;
            Ok(bird_sessions(&text))
        }
        Role::Linux => Ok(Vec::new()),
    }
}

/// Sessions from FRR's `show bgp summary json` (every address family, each peer once).
pub fn frr_sessions(v: &Value) -> Vec<Session> {
    let mut out: Vec<Session> = Vec::new();
    let Some(afs) = v.as_object() else {
        return out;
    };
    for af in afs.values() {
        let Some(peers) = af.get("peers").and_then(Value::as_object) else {
            continue;
        };
        for (addr, p) in peers {
            let state = p["state"].as_str().unwrap_or("?").to_string();
            let rcvd = p["pfxRcd"].as_u64();
            match out.iter_mut().find(|s| &s.peer == addr) {
                Some(s) => {
                    if let (Some(a), Some(b)) = (s.received, rcvd) {
                        s.received = Some(a + b);
                    }
                }
                None => out.push(Session {
                    peer: addr.clone(),
                    state,
                    received: rcvd,
                }),
            }
        }
    }
    out
}

/// BGP protocols from `birdc show protocols` (name, state/info columns).
pub fn bird_sessions(text: &str) -> Vec<Session> {
    text.lines()
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            if cols.get(1) != Some(&"BGP") {
                return None;
            }
            // Name Proto Table State Since Info…: Info's first word is the BGP state; the
            // Since column may be a date and a time.
            let info: Vec<&str> = cols
                .iter()
                .skip(4)
                .skip_while(|c| c.contains(':') || c.contains('-'))
                .copied()
                .collect();
            let state = match info.first() {
                Some(s) => s.to_string(),
                // A `neighbor range` template shows no info while it waits.
                None => cols.get(3).copied().unwrap_or("?").to_string(),
            };
            Some(Session {
                peer: cols[0].to_string(),
                state,
                received: None,
            })
        })
        .collect()
}

/// True for a session that should count as up in the lab.
fn is_up(role: Role, s: &Session) -> bool {
    match role {
        Role::Bird => s.state == "Established" || s.state == "up" || s.state == "start",
        _ => s.state == "Established",
    }
}

/// Waits until every BGP session of every running ferrovia and FRR node is Established
/// (and, in a lab of several ferrovia nodes, each of them has at least one: mesh peers
/// appear only as the others register).
pub fn wait_established(st: &State, limit: Duration) -> Result<()> {
    let t = Instant::now();
    let agents = st
        .nodes
        .values()
        .filter(|n| n.role == Role::Ferrovia)
        .count();
    loop {
        let mut pending = Vec::new();
        for name in &st.order {
            let Ok(n) = st.node(name) else { continue };
            if !matches!(n.role, Role::Ferrovia | Role::Frr) {
                continue;
            }
            if !n.daemons.iter().any(|d| d.proc.is_some_and(|p| p.alive())) {
                continue;
            }
            match sessions(st, name) {
                Ok(s) if s.is_empty() && n.role == Role::Ferrovia && agents > 1 => {
                    pending.push(format!("{name}: no BGP peers yet"))
                }
                Ok(s) => pending.extend(
                    s.iter()
                        .filter(|x| !is_up(n.role, x))
                        .map(|x| format!("{name} → {} {}", x.peer, x.state)),
                ),
                Err(e) => pending.push(format!("{name}: {e:#}")),
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if t.elapsed() > limit {
            bail!(
                "BGP sessions not Established after {limit:?}: {}. The lab stays up: look with `ferrovia lab status`, remove it with `ferrovia lab down`",
                pending.join("; ")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn collect(st: &State) -> LabStatus {
    let mut nodes = Vec::new();
    for name in &st.order {
        let Some(n) = st.nodes.get(name) else {
            continue;
        };
        let alive = n.holder.is_some_and(|h| h.alive());
        let daemons: Vec<DaemonStatus> = n
            .daemons
            .iter()
            .map(|d| DaemonStatus {
                name: d.name.clone(),
                pid: d.proc.map(|p| p.pid),
                running: d.proc.is_some_and(|p| p.alive()),
                log: d.log.display().to_string(),
            })
            .collect();
        let any_down = daemons.iter().any(|d| !d.running);
        let state = if !alive {
            "gone"
        } else if any_down {
            "stopped"
        } else {
            "running"
        };
        let (sessions, error) = if alive && !daemons.is_empty() && !any_down {
            match sessions(st, name) {
                Ok(s) => (s, None),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            }
        } else {
            (Vec::new(), None)
        };
        nodes.push(NodeStatus {
            name: name.clone(),
            role: n.role.name().to_string(),
            image: n.image.clone(),
            netns: n.netns.clone(),
            state: state.to_string(),
            daemons,
            sessions,
            error,
        });
    }
    let db = st.dir().join("datastore");
    LabStatus {
        lab: st.lab.clone(),
        file: st.file.display().to_string(),
        state_dir: st.dir().display().to_string(),
        datastore: db.exists().then(|| db.display().to_string()),
        up_since: st.created,
        complete: st.complete,
        nodes,
        pods: collect_pods(st),
    }
}

pub fn collect_pods(st: &State) -> Vec<PodStatus> {
    st.pods
        .iter()
        .map(|p| PodStatus {
            node: p.node.clone(),
            name: p.name.clone(),
            netns: p.netns.clone(),
            addresses: p.addresses.clone(),
        })
        .collect()
}

pub fn print(s: &LabStatus) {
    println!(
        "lab {}  ({}, up since {}{})",
        s.lab,
        s.file,
        ago(s.up_since),
        if s.complete {
            ""
        } else {
            ", INCOMPLETE: `up` did not finish"
        }
    );
    println!("state: {}", s.state_dir);
    if let Some(d) = &s.datastore {
        println!("datastore: {}/", d);
    }
    println!();
    println!(
        "{:<10} {:<9} {:<8} {:<24} SESSIONS",
        "NODE", "ROLE", "STATE", "NETNS"
    );
    for n in &s.nodes {
        let sessions = if let Some(e) = &n.error {
            format!("? ({e})")
        } else if n.sessions.is_empty() {
            "-".to_string()
        } else {
            n.sessions
                .iter()
                .map(|x| match x.received {
                    Some(r) => format!("{} {} ({r} in)", x.peer, x.state),
                    None => format!("{} {}", x.peer, x.state),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "{:<10} {:<9} {:<8} {:<24} {}",
            n.name, n.role, n.state, n.netns, sessions
        );
    }
    if !s.pods.is_empty() {
        println!();
        println!("{:<10} {:<12} {:<30} ADDRESSES", "NODE", "POD", "NETNS");
        for p in &s.pods {
            println!(
                "{:<10} {:<12} {:<30} {}",
                p.node,
                p.name,
                p.netns,
                p.addresses.join(" ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bird_protocols() {
        let text = "BIRD 2.0.12 ready.\nName       Proto      Table      State  Since         Info\ndevice1    Device     ---        up     10:00:00.123  \nnode       BGP        ---        start  10:00:00.123  Passive\nnode1      BGP        ---        up     10:00:01.456  Established   \nnode2      BGP        ---        start  2026-11-24 10:00:01  Active        Socket: Connection refused\n";
        let s = bird_sessions(text);
        assert_eq!(
            s.iter()
                .map(|x| (x.peer.as_str(), x.state.as_str()))
                .collect::<Vec<_>>(),
            [
                ("node", "Passive"),
                ("node1", "Established"),
                ("node2", "Active")
            ]
        );
    }

    #[test]
    fn parses_frr_summary() {
        let v: Value = serde_json::from_str(
            r#"{"ipv4Unicast":{"peers":{"198.18.11.1":{"state":"Established","pfxRcd":1},"198.18.101.254":{"state":"Active","pfxRcd":0}}},
                "ipv6Unicast":{"peers":{"198.18.11.1":{"state":"Established","pfxRcd":2}}}}"#,
        )
        .unwrap();
        let s = frr_sessions(&v);
        assert_eq!(s.len(), 2);
        let a = s.iter().find(|x| x.peer == "198.18.11.1").unwrap();
        assert_eq!((a.state.as_str(), a.received), ("Established", Some(3)));
    }
}
