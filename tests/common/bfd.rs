//! BFD with real peers (issue 11), on the `Pair` topology: ferrovia in `f` (198.18.0.1), BIRD
//! or FRR in `p` (198.18.0.254), one eBGP session with BFD at 300 ms × 3 on both sides.
//!
//! The BGP hold time is 90 s on both sides here, so that a session that drops and routes that
//! leave within the 30 s deadlines can only have been taken down by BFD; each check also reads
//! the reason the daemons give.

use super::*;
use serde_json::Value;
use std::time::Instant;

/// BGP hold time in these scenarios: far beyond every deadline below.
pub const BFD_HOLD: u32 = 90;

/// BIRD's BFD at 300 ms × 3 on every interface.
pub const BIRD_BFD: &str = "protocol bfd bfd1 {\n  interface \"*\" { min rx interval 300 ms; min tx interval 300 ms; multiplier 3; };\n}\n";

/// BIRD as the peer, `bfd on` (or `bfd graceful`) in its BGP protocol "ferrovia".
pub fn bird_with_bfd(ns: &Netns, graceful: bool) -> Bird {
    let mut p = BirdPeer::to_ferrovia(PEER_AS, FERROVIA_AS);
    p.hold_time = Some(BFD_HOLD);
    p.extra = if graceful {
        "  bfd graceful;\n  graceful restart on;\n".into()
    } else {
        "  bfd on;\n".into()
    };
    Bird::start(
        ns,
        BirdConfig {
            router_id: PEER_V4.into(),
            originate: vec![P_V4.into(), P_V6.into()],
            peers: vec![p],
            extra: BIRD_BFD.into(),
        },
    )
}

/// FRR as the peer with bfdd running and `neighbor 198.18.0.1 bfd` (FRR's defaults are
/// 300 ms × 3). `gr_helper` false: `graceful-restart-disable` for ferrovia — FRR otherwise
/// keeps a GR-capable peer's routes as stale after a BFD Down (its BGP_Stop goes through
/// the helper path), which is the trade-off config/README.md describes.
pub fn frr_with_bfd(ns: &Netns, gr_helper: bool) -> Frr {
    let mut n = FrrNeighbor::ferrovia(FERROVIA_AS);
    n.hold_time = Some(BFD_HOLD);
    n.extra.push("bfd".into());
    if !gr_helper {
        n.extra.push("graceful-restart-disable".into());
    }
    let mut f = Frr::start(
        ns,
        FrrConfig {
            asn: PEER_AS,
            router_id: PEER_V4.into(),
            neighbors: vec![n],
            networks: vec![P_V4.into(), P_V6.into()],
        },
    );
    f.start_bfdd();
    f
}

/// ferrovia with BFD 300 ms × 3 (or none) toward the peer, hold time [`BFD_HOLD`].
pub fn ferrovia_cfg(bfd: bool) -> FerroviaConfig {
    let mut cfg = FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4, F_V6]);
    cfg.hold_time = Some(BFD_HOLD);
    if bfd {
        cfg.peers[0].bfd = Some((300, 3));
    }
    cfg
}

/// ferrovia's `bfd` object for the peer.
pub fn fer_bfd(f: &Ferrovia) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    match p.get("bfd") {
        Some(b) if b.is_object() => Ok(b.clone()),
        _ => Err(format!("no bfd in the peer's status: {p}")),
    }
}

/// ferrovia's BFD session is Up and the BGP session Established.
pub fn fer_bfd_up(f: &Ferrovia) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    if p["state"] != "Established" || p["bfd"]["state"] != "Up" {
        return Err(format!("want Established with BFD Up: {p}"));
    }
    Ok(p)
}

/// ferrovia's BGP session with the peer is down because BFD said so, and held down.
pub fn fer_down_by_bfd(f: &Ferrovia) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    let err = p["lastError"].as_str().unwrap_or("");
    if p["state"] == "Established" || !err.contains("BFD session down") {
        return Err(format!("want the session down by BFD: {p}"));
    }
    if p["bfd"]["holdingBgp"] != true || p["bfd"]["failures"].as_u64().unwrap_or(0) == 0 {
        return Err(format!("want BFD holding BGP with a failure counted: {p}"));
    }
    Ok(p)
}

/// The peer's routes are in ferrovia's Loc-RIB and kernel (`present`), or in neither.
pub fn fer_peer_routes(f: &Ferrovia, ns: &Netns, present: bool) -> Result<(), String> {
    let learned: Vec<String> = f
        .routes()?
        .iter()
        .filter(|r| r["peer"] == PEER_V4)
        .filter_map(|r| r["prefix"].as_str().map(str::to_string))
        .collect();
    let kernel: Vec<String> = [P_V4, P_V6]
        .iter()
        .filter(|p| {
            let fam = if p.contains(':') { "-6" } else { "-4" };
            !ns.ip(&[fam, "route", "show", p]).trim().is_empty()
        })
        .map(|p| p.to_string())
        .collect();
    let want: Vec<String> = if present {
        vec![P_V4.into(), P_V6.into()]
    } else {
        vec![]
    };
    let mut got = learned.clone();
    got.sort();
    if got == want && kernel == want {
        Ok(())
    } else {
        Err(format!(
            "peer routes: Loc-RIB {learned:?}, kernel {kernel:?}, want {want:?}"
        ))
    }
}

/// BIRD's `show bfd sessions` state for ferrovia's address ("Up", "Down", …).
pub fn bird_bfd_state(b: &Bird) -> String {
    let out = b.birdc("show bfd sessions");
    out.lines()
        .find(|l| l.trim_start().starts_with(FERROVIA_V4))
        .and_then(|l| l.split_whitespace().nth(2))
        .map(str::to_string)
        .unwrap_or_else(|| format!("<none: {out}>"))
}

/// BIRD's BGP protocol "ferrovia" is Established and has ferrovia's two prefixes.
pub fn bird_has_fer(b: &Bird) -> Result<(), String> {
    let p = b.protocol("ferrovia");
    let r = b.routes_from("ferrovia");
    if p.established() && r.contains_key(F_V4) && r.contains_key(F_V6) {
        Ok(())
    } else {
        Err(format!("BIRD: {} / {:?}", p.raw, r.keys()))
    }
}

/// FRR's BFD peer status for ferrovia ("up", "down", …).
pub fn frr_bfd_status(frr: &Frr) -> String {
    match frr.bfd_peer(FERROVIA_V4) {
        Ok(p) => p["status"].as_str().unwrap_or("?").to_string(),
        Err(e) => format!("<{e}>"),
    }
}

/// FRR's neighbor ferrovia is Established and FRR has ferrovia's two prefixes.
pub fn frr_has_fer(frr: &Frr) -> Result<(), String> {
    let st = frr.neighbor_state(FERROVIA_V4);
    let v4 = frr.paths_from(F_V4, FERROVIA_V4)?;
    let v6 = frr.paths_from(F_V6, FERROVIA_V4)?;
    if st == "Established" && !v4.is_empty() && !v6.is_empty() {
        Ok(())
    } else {
        Err(format!("FRR: {st}, {F_V4} {v4:?}, {F_V6} {v6:?}"))
    }
}

/// Waits for `what`, returns how long it took from `since` (a measurement, printed; never
/// asserted on).
pub fn timed<T, E: std::fmt::Debug>(
    since: Instant,
    what: &str,
    f: impl FnMut() -> Result<T, E>,
) -> T {
    let v = wait_until(what, PROPAGATE, Duration::from_millis(50), f);
    eprintln!(
        "measured (loaded machine): {what}: {:?} after the trigger",
        since.elapsed()
    );
    v
}

// ------------------------------------------------------------------ two ToRs, ECMP from the node

/// A node with two ToRs, ECMP from the node (issue 11):
///
/// ```text
///   pod 10.244.1.2 ─ n ─ eth1 198.18.1.1 ═ wire ═ 198.18.1.254 tor1 ─ 198.18.3.0/24 ─┐
///                      └ eth2 198.18.2.1 ═ wire ═ 198.18.2.254 tor2 ─ 198.18.4.0/24 ─ dst 10.244.200.1
/// ```
///
/// Each node–ToR link passes through a bridge in the `wire` namespace, so a link can fail
/// where the node cannot see it (its own interface keeps its carrier): `fail(i)` sets the
/// ToR's end of link `i` down inside `wire`. Both ToRs are AS 65000 and originate
/// 10.244.200.0/24; the node (AS 64512) originates 10.244.1.0/26. The ToRs route back to
/// the pod statically; `dst` returns through one chosen ToR (`return_via`).
pub struct TwoTors {
    pub n: Netns,
    pub pod: Netns,
    pub wire: Netns,
    pub tors: [Netns; 2],
    pub dst: Netns,
}

pub const POD: &str = "10.244.1.2";
pub const NODE_BLOCK: &str = "10.244.1.0/26";
pub const DST: &str = "10.244.200.1";
pub const DST_PREFIX: &str = "10.244.200.0/24";
pub const TOR_AS: u32 = 65000;

/// The node's address on link `i` (0 or 1) and the ToR's.
pub fn node_addr(i: usize) -> String {
    format!("198.18.{}.1", i + 1)
}
pub fn tor_addr(i: usize) -> String {
    format!("198.18.{}.254", i + 1)
}

impl TwoTors {
    pub fn new(lock: &NetLock, tag: &str) -> TwoTors {
        let n = Netns::new(lock, &format!("{tag}-n"));
        let pod = Netns::new(lock, &format!("{tag}-pod"));
        let wire = Netns::new(lock, &format!("{tag}-w"));
        let tors = [
            Netns::new(lock, &format!("{tag}-t1")),
            Netns::new(lock, &format!("{tag}-t2")),
        ];
        let dst = Netns::new(lock, &format!("{tag}-d"));
        Netns::veth(&pod, "eth0", &n, "pod0");
        pod.addr("eth0", &format!("{POD}/30"));
        n.addr("pod0", "10.244.1.1/30");
        pod.ip(&["route", "add", "default", "via", "10.244.1.1"]);
        for (i, tor) in tors.iter().enumerate() {
            let nif = format!("eth{}", i + 1);
            let (wn, wt, br) = (format!("n{i}"), format!("t{i}"), format!("br{i}"));
            Netns::veth(&n, &nif, &wire, &wn);
            Netns::veth(&wire, &wt, tor, "eth0");
            wire.ip(&["link", "add", &br, "type", "bridge"]);
            wire.ip(&["link", "set", &wn, "master", &br]);
            wire.ip(&["link", "set", &wt, "master", &br]);
            wire.link_up(&br);
            n.addr(&nif, &format!("{}/24", node_addr(i)));
            tor.addr("eth0", &format!("{}/24", tor_addr(i)));
            let link = format!("198.18.{}", i + 3);
            Netns::veth(tor, "eth1", &dst, &format!("eth{}", i + 1));
            tor.addr("eth1", &format!("{link}.254/24"));
            dst.addr(&format!("eth{}", i + 1), &format!("{link}.1/24"));
            tor.ip(&["route", "add", DST_PREFIX, "via", &format!("{link}.1")]);
            tor.ip(&["route", "add", NODE_BLOCK, "via", &node_addr(i)]);
            tor.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        }
        dst.addr("lo", &format!("{DST}/32"));
        n.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let t = TwoTors {
            n,
            pod,
            wire,
            tors,
            dst,
        };
        t.return_via(1);
        t
    }

    /// The ToRs reach the pod only through the routes they learn from the node over BGP
    /// (their static routes to the node's block go).
    pub fn tors_route_by_bgp(&self) {
        for tor in &self.tors {
            tor.ip(&["route", "del", NODE_BLOCK, "proto", "boot"]);
        }
    }

    /// ToR `i` has a route to the node's block in its kernel (learned over BGP).
    pub fn tor_has_node_block(&self, i: usize) -> Result<(), String> {
        let out = self.tors[i].ip(&["route", "show", NODE_BLOCK]);
        if out.contains(&node_addr(i)) {
            Ok(())
        } else {
            Err(format!("ToR {i}: {out:?}"))
        }
    }

    /// `dst` sends its replies to the pod through ToR `i`.
    pub fn return_via(&self, i: usize) {
        let via = format!("198.18.{}.254", i + 3);
        self.dst
            .ip(&["route", "replace", "10.244.1.0/24", "via", &via]);
    }

    /// Link `i` fails between the node and its ToR, out of the node's sight.
    pub fn fail(&self, i: usize) {
        self.wire.ip(&["link", "set", &format!("t{i}"), "down"]);
    }

    /// Packets ToR `i` received from the node.
    pub fn tor_rx(&self, i: usize) -> u64 {
        let out = self.tors[i].ip(&["-s", "-j", "link", "show", "eth0"]);
        serde_json::from_str::<Value>(&out)
            .ok()
            .and_then(|v| v[0]["stats64"]["rx"]["packets"].as_u64())
            .unwrap_or(0)
    }

    /// Which ToR the pod's flow to `dst` leaves through (the node hashes it to one of the
    /// two next hops): a burst of pings, then the ToRs' counters.
    pub fn forward_tor(&self) -> usize {
        let before = [self.tor_rx(0), self.tor_rx(1)];
        self.pod
            .exec(&["ping", "-q", "-c", "50", "-i", "0.01", "-W", "1", DST]);
        let d = [
            self.tor_rx(0) - before[0].min(self.tor_rx(0)),
            self.tor_rx(1) - before[1].min(self.tor_rx(1)),
        ];
        assert!(
            d[0].max(d[1]) >= 50,
            "the pod's 50 pings should have crossed one ToR: {d:?}"
        );
        usize::from(d[1] > d[0])
    }

    /// The node's kernel next hops for `dst`'s prefix.
    pub fn node_next_hops(&self) -> Vec<String> {
        let out = self.n.ip(&["-j", "route", "show", DST_PREFIX]);
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let mut hops = Vec::new();
        for r in v.as_array().into_iter().flatten() {
            if let Some(g) = r["gateway"].as_str() {
                hops.push(g.to_string());
            }
            for nh in r["nexthops"].as_array().into_iter().flatten() {
                if let Some(g) = nh["gateway"].as_str() {
                    hops.push(g.to_string());
                }
            }
        }
        hops.sort();
        hops
    }

    /// ferrovia on the node, peering with both ToRs; `bfd`: 300 ms × 3 on both sessions.
    pub fn ferrovia_cfg(&self, bfd: bool, hold: u32) -> FerroviaConfig {
        let mut cfg = FerroviaConfig::node1(FERROVIA_AS, TOR_AS, &[NODE_BLOCK]);
        cfg.name = "n".into();
        cfg.router_id = node_addr(0);
        cfg.addresses = vec![node_addr(0)];
        cfg.hold_time = Some(hold);
        cfg.peers = (0..2)
            .map(|i| {
                let mut p = ferrovia::FerroviaPeer::peer(TOR_AS);
                p.address = tor_addr(i);
                p.bfd = bfd.then_some((300, 3));
                p
            })
            .collect();
        cfg
    }
}

/// A ToR daemon: which one, for the scenarios.
pub enum Tor {
    Bird(Bird),
    Frr(Frr),
}

impl Tor {
    /// BIRD as ToR `i` toward the node at `peer`, originating `dst`'s prefix and installing
    /// what it learns in its kernel. With `bfd`: `bfd on`.
    pub fn bird(t: &TwoTors, i: usize, peer: &str, peer_as: u32, bfd: bool, hold: u32) -> Tor {
        Tor::bird_with(t, i, peer, peer_as, bfd.then_some("  bfd on;\n"), hold)
    }

    /// BIRD as ToR `i` with `bfd graceful` and `graceful restart on` (what config/README.md
    /// recommends with BIRD 2.0.12 for agent restarts).
    pub fn bird_graceful(t: &TwoTors, i: usize, peer: &str, peer_as: u32, hold: u32) -> Tor {
        Tor::bird_with(
            t,
            i,
            peer,
            peer_as,
            Some("  bfd graceful;\n  graceful restart on;\n"),
            hold,
        )
    }

    fn bird_with(
        t: &TwoTors,
        i: usize,
        peer: &str,
        peer_as: u32,
        bfd: Option<&str>,
        hold: u32,
    ) -> Tor {
        let mut p = BirdPeer::to_ferrovia(TOR_AS, peer_as);
        p.local_addr = Some(tor_addr(i));
        p.neighbor_addr = peer.into();
        p.hold_time = Some(hold);
        p.v6_next_hop = None;
        let kernel = "protocol kernel { ipv4 { export where source = RTS_BGP; }; }\n";
        let mut extra = kernel.to_string();
        if let Some(b) = bfd {
            p.extra = b.into();
            extra.push_str(BIRD_BFD);
        }
        Tor::Bird(Bird::start(
            &t.tors[i],
            BirdConfig {
                router_id: tor_addr(i),
                originate: vec![DST_PREFIX.into()],
                peers: vec![p],
                extra,
            },
        ))
    }

    /// FRR as ToR `i` toward the node at `peer` (bfdd started when `bfd`).
    pub fn frr(t: &TwoTors, i: usize, peer: &str, peer_as: u32, bfd: bool, hold: u32) -> Tor {
        let extra: &[&str] = if bfd { &["bfd"] } else { &[] };
        Tor::frr_with(t, i, peer, peer_as, extra, hold)
    }

    /// FRR as ToR `i` with `neighbor X bfd check-control-plane-failure` (what
    /// config/README.md recommends with FRR 8.4 for agent restarts): a BFD Down from a
    /// graceful-restart peer whose C bit is clear is ignored.
    pub fn frr_graceful(t: &TwoTors, i: usize, peer: &str, peer_as: u32, hold: u32) -> Tor {
        Tor::frr_with(
            t,
            i,
            peer,
            peer_as,
            &["bfd", "bfd check-control-plane-failure"],
            hold,
        )
    }

    /// FRR as ToR `i`; `extra`: `neighbor X …` statements (bfdd runs when one is BFD's).
    fn frr_with(t: &TwoTors, i: usize, peer: &str, peer_as: u32, extra: &[&str], hold: u32) -> Tor {
        let mut n = FrrNeighbor::ferrovia(peer_as);
        n.addr = peer.into();
        n.hold_time = Some(hold);
        n.extra = extra.iter().map(|e| e.to_string()).collect();
        let bfd = extra.iter().any(|e| e.starts_with("bfd"));
        let mut f = Frr::start(
            &t.tors[i],
            FrrConfig {
                asn: TOR_AS,
                router_id: tor_addr(i),
                neighbors: vec![n],
                networks: vec![DST_PREFIX.into()],
            },
        );
        if bfd {
            f.start_bfdd();
        }
        Tor::Frr(f)
    }
}

impl Tor {
    /// Whether this ToR's BFD session toward `peer` is Up (BIRD: `show bfd sessions`; FRR:
    /// `show bfd peers json`).
    pub fn bfd_up(&self, peer: &str) -> Result<(), String> {
        let state = match self {
            Tor::Bird(b) => {
                let out = b.birdc("show bfd sessions");
                out.lines()
                    .find(|l| l.trim_start().starts_with(peer))
                    .and_then(|l| l.split_whitespace().nth(2))
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("<none: {out}>"))
            }
            Tor::Frr(f) => match f.bfd_peer(peer) {
                Ok(p) => p["status"].as_str().unwrap_or("?").to_string(),
                Err(e) => format!("<{e}>"),
            },
        };
        if state.eq_ignore_ascii_case("up") {
            Ok(())
        } else {
            Err(state)
        }
    }
}

/// `ping` at 100 packets a second, in the background; `stop` counts what was answered from
/// the replies' sequence numbers.
pub struct Pinger {
    proc: proc::Proc,
    started: Instant,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Pinger {
    /// From the pod to the host behind the ToRs.
    pub fn start(t: &TwoTors) -> Pinger {
        Pinger::spawn(t.pod.name(), DST)
    }

    /// From namespace `ns` to `dst`, once its first pings are answered.
    pub fn spawn(ns: &str, dst: &str) -> Pinger {
        let dir = tempfile::Builder::new()
            .prefix("fvt-ping")
            .tempdir()
            .expect("tempdir");
        let log = dir.path().join("ping.log");
        let proc = proc::Proc::spawn(ns, &["ping", "-n", "-i", "0.01", "-W", "1", dst], &log, &[]);
        let p = Pinger {
            proc,
            started: Instant::now(),
            log,
            _dir: dir,
        };
        wait_until("the pod's pings are answered", PROPAGATE, POLL, || {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            if text.matches("bytes from").count() >= 10 {
                Ok(())
            } else {
                Err(text)
            }
        });
        p
    }

    /// Replies seen so far.
    pub fn replies(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("bytes from")
            .count()
    }

    /// SIGINT, then (sent, received) counted from the replies' sequence numbers — sent is
    /// the highest number answered, received how many numbers up to it were answered — and
    /// how long it ran (ping's own rate drops below 100/s on a loaded machine: loss in time
    /// is lost × ran / sent). The request still in flight when ping is stopped is not a loss,
    /// so ping's own "transmitted" summary is not used.
    pub fn stop(mut self) -> (u64, u64, Duration) {
        let ran = self.started.elapsed();
        self.proc.signal(libc::SIGINT);
        wait_until("ping exits after SIGINT", START, POLL, || {
            self.proc.try_wait().ok_or("running")
        });
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let seqs: std::collections::BTreeSet<u64> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.split("icmp_seq=").nth(1))
            .filter_map(|r| r.split_whitespace().next())
            .filter_map(|n| n.parse().ok())
            .collect();
        let last = seqs
            .last()
            .copied()
            .unwrap_or_else(|| panic!("no reply in {text}"));
        (last, seqs.len() as u64, ran)
    }
}

/// Which ToR daemon the restart scenarios run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorKind {
    Bird,
    Frr,
}

/// What [`restart_rounds`] saw: pings sent and answered, how long the ping ran, the agent's log.
pub struct RestartRun {
    pub sent: u64,
    pub received: u64,
    pub ran: Duration,
    pub log: String,
}

/// Topology `TwoTors` (ECMP from the node, the ToRs reaching the pod only through BGP), a pod
/// pinging a host behind the ToRs at 100/s while the agent is stopped with SIGTERM and started
/// again `sigterms` times in a row, then (with `sigkill`) SIGKILLed and started again once
/// both ToRs' BFD declared it down (SIGKILL needs `bfd`). With `bfd` the ToRs run BFD with
/// the settings config/README.md gives for lossless restarts (BIRD `bfd graceful` +
/// `graceful restart on`; FRR `neighbor X bfd check-control-plane-failure`) and the agent
/// 300 ms × 3; without, plain sessions (graceful-restart helpers by default). Hold time 90 s.
pub fn restart_rounds(
    tag: &str,
    kind: TorKind,
    bfd: bool,
    sigterms: usize,
    sigkill: bool,
) -> RestartRun {
    assert!(bfd || !sigkill, "SIGKILL rounds wait for the ToRs' BFD");
    let lock = net_lock();
    let t = TwoTors::new(&lock, tag);
    let tor = |i: usize| match (kind, bfd) {
        (TorKind::Bird, true) => Tor::bird_graceful(&t, i, &node_addr(i), FERROVIA_AS, 90),
        (TorKind::Frr, true) => Tor::frr_graceful(&t, i, &node_addr(i), FERROVIA_AS, 90),
        (TorKind::Bird, false) => Tor::bird(&t, i, &node_addr(i), FERROVIA_AS, false, 90),
        (TorKind::Frr, false) => Tor::frr(&t, i, &node_addr(i), FERROVIA_AS, false, 90),
    };
    let tors = [tor(0), tor(1)];
    let mut f = Ferrovia::start(&t.n, t.ferrovia_cfg(bfd, 90));
    let both = vec![tor_addr(0), tor_addr(1)];
    let all_up = |f: &Ferrovia| -> Result<(), String> {
        for a in &both {
            let p = f.peer(a)?;
            if p["state"] != "Established" || (bfd && p["bfd"]["state"] != "Up") {
                return Err(format!("{p}"));
            }
        }
        let hops = t.node_next_hops();
        if hops != both {
            return Err(format!("next hops {hops:?}"));
        }
        t.tor_has_node_block(0)?;
        t.tor_has_node_block(1)
    };
    wait_until(
        "both ToRs up (with BFD when on), routes both ways",
        ESTABLISH,
        POLL,
        || all_up(&f),
    );
    t.tors_route_by_bgp();
    wait_until(
        "the ToRs route to the pod by BGP alone",
        PROPAGATE,
        POLL,
        || {
            t.tor_has_node_block(0)?;
            t.tor_has_node_block(1)
        },
    );
    t.return_via(t.forward_tor());
    let ping = Pinger::start(&t);
    for round in 1..=sigterms {
        let st = f.sigterm();
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "round {round}: exit status"
        );
        f.start_again();
        wait_until(
            &format!("round {round}: both ToRs up again"),
            ESTABLISH,
            POLL,
            || all_up(&f),
        );
    }
    if sigkill {
        // No AdminDown: the ToRs' BFD declares us down after the detection time, as it
        // would for a dead node; the restart starts only once both did.
        f.sigkill();
        wait_until(
            "both ToRs' BFD declared the killed agent down",
            PROPAGATE,
            POLL,
            || match (tors[0].bfd_up(&node_addr(0)), tors[1].bfd_up(&node_addr(1))) {
                (Err(_), Err(_)) => Ok(()),
                states => Err(format!("{states:?}")),
            },
        );
        f.start_again();
        wait_until(
            "after the SIGKILL: both ToRs up again",
            ESTABLISH,
            POLL,
            || all_up(&f),
        );
    }
    let at = ping.replies();
    wait_until("pings go on after the restarts", PROPAGATE, POLL, || {
        if ping.replies() >= at + 100 {
            Ok(())
        } else {
            Err(ping.replies())
        }
    });
    let (sent, received, ran) = ping.stop();
    RestartRun {
        sent,
        received,
        ran,
        log: f.log_text(),
    }
}
