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
