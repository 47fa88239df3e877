//! The scale simulator (`ferrovia bench sim`) in the test suite at a small N, so it never
//! rots: simulated nodes, each a session per reflector from its own address in one
//! namespace, announce a /26 and a /122 each and must receive every other node's through
//! two ferrovia reflectors (peer ranges, route reflection) or, as the anchor, two BIRD
//! reflectors; and the mesh mode against one agent. The big runs (N = 200, 500, 1000) are
//! benchmarks: `FERROVIA_SIM_NODES=1000 cargo test --release --test sim_reflector --
//! --ignored --nocapture` prints both kinds' reports from one run.

use ferrovia_testsupport::common;

use common::net_lock;
use common::sim::{Reflector, ReflectorKind, SimWorld, MESH_V4, MESH_V6, SIM_FIRST};
use serde_json::Value;

/// Simulated nodes in the test suite.
const N: u32 = 20;

/// Generous: the work is a few hundred routes; slow machines and a loaded CI still finish.
fn timeout_for(n: u32) -> u64 {
    120 + u64::from(n) / 2
}

fn check_report(r: &Value, n: u32, sessions: u32, expect: u32) {
    assert_eq!(r["nodes"], n, "{r}");
    assert_eq!(r["sessions"], sessions, "{r}");
    assert_eq!(r["convergedNodes"], n, "{r}");
    assert_eq!(r["expectedPerNode"], expect, "{r}");
    assert_eq!(r["dualStack"], true, "{r}");
    let procs = r["processes"].as_array().expect("processes");
    assert!(!procs.is_empty(), "{r}");
    for p in procs {
        assert!(p["peakRssKib"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(p["cpuSeconds"].as_f64().is_some_and(|c| c >= 0.0), "{r}");
    }
    assert!(
        r["convergenceSeconds"].as_f64().is_some_and(|c| c >= 0.0),
        "{r}"
    );
    assert!(
        r["completeSeconds"].as_f64().is_some_and(|c| c >= 0.0),
        "{r}"
    );
}

/// Every simulated node shows in the ferrovia reflector's status as a peer of its own,
/// by address, Established, from the range, with its two blocks received.
fn range_peers_in_status(r: &Reflector, n: u32) -> Result<(), String> {
    let Reflector::Ferrovia(f) = r else {
        return Ok(());
    };
    let st = f.status()?;
    let peers = st["peers"].as_array().ok_or("no peers")?;
    let first: std::net::Ipv4Addr = SIM_FIRST.parse().map_err(|e| format!("{e}"))?;
    for i in 0..n {
        let a = std::net::Ipv4Addr::from(u32::from(first) + i).to_string();
        let p = peers
            .iter()
            .find(|p| p["address"] == a.as_str())
            .ok_or_else(|| format!("no peer {a} in {st}"))?;
        if p["state"] != "Established"
            || p["type"] != "range 198.19.0.0/16"
            || p["prefixesReceived"] != 2
        {
            return Err(format!("peer {a}: {p}"));
        }
    }
    Ok(())
}

/// Range peers are forgotten with their connection: once the simulator is gone, a ferrovia
/// reflector has only its configured peer (the other reflector) left.
fn only_configured_peers_left(r: &Reflector) -> Result<(), String> {
    let Reflector::Ferrovia(f) = r else {
        return Ok(());
    };
    let st = f.status()?;
    let peers = st["peers"].as_array().ok_or("no peers")?;
    if peers.iter().all(|p| p["type"] == "global") {
        Ok(())
    } else {
        Err(format!("range peers left: {st}"))
    }
}

/// Runs the simulator (which keeps its sessions for `hold` seconds after convergence)
/// while `during` checks the reflectors; returns the report.
fn run_checking(w: &SimWorld, extra: &[&str], during: impl FnOnce()) -> Value {
    let n = w.nodes;
    std::thread::scope(|s| {
        let sim = s.spawn(|| w.run(timeout_for(n), extra));
        during();
        match sim.join() {
            Ok(r) => r.unwrap_or_else(|e| panic!("simulator: {e}")),
            Err(_) => panic!("the simulator thread panicked"),
        }
    })
}

fn reflectors(kind: ReflectorKind, tag: &str, n: u32, steady: &str) -> Value {
    let lock = net_lock();
    let w = SimWorld::new(&lock, tag, kind, n, true);
    let r = run_checking(&w, &["--steady-seconds", steady], || {
        for rr in &w.reflectors {
            common::wait_until(
                "every simulated node is a range peer of the reflector",
                std::time::Duration::from_secs(timeout_for(n)),
                common::POLL,
                || range_peers_in_status(rr, n),
            );
        }
    });
    eprintln!("{kind:?} reflectors, N = {n}: {r}");
    check_report(&r, n, 2 * n, 2 * (n - 1));
    for rr in &w.reflectors {
        common::wait_until(
            "the range peers are forgotten once their sessions close",
            common::PROPAGATE,
            common::POLL,
            || only_configured_peers_left(rr),
        );
    }
    r
}

#[test]
fn simulated_nodes_converge_through_two_ferrovia_reflectors() {
    reflectors(ReflectorKind::Ferrovia, "simf", N, "15");
}

#[test]
fn simulated_nodes_converge_through_two_bird_reflectors() {
    reflectors(ReflectorKind::Bird, "simb", N, "1");
}

#[test]
fn simulated_mesh_peers_all_receive_the_agents_blocks() {
    let lock = net_lock();
    let n = N - 1;
    let w = SimWorld::mesh(&lock, "simm", n);
    let Reflector::Ferrovia(agent) = &w.reflectors[0] else {
        panic!("the mesh mode runs against a ferrovia agent");
    };
    let r = run_checking(&w, &["--expect", "2", "--steady-seconds", "15"], || {
        common::wait_until(
            "every simulated peer is Established with its two blocks in the agent, and got the agent's two",
            std::time::Duration::from_secs(timeout_for(n)),
            common::POLL,
            || {
                range_peers_in_status(&w.reflectors[0], n)?;
                // The agent does not reflect: a peer gets the agent's blocks only.
                let st = agent.status()?;
                match st["peers"]
                    .as_array()
                    .and_then(|ps| ps.iter().find(|p| p["prefixesSent"] != 2))
                {
                    Some(p) => Err(format!("{p}")),
                    None => Ok(()),
                }
            },
        );
    });
    eprintln!("mesh mode, {n} peers: {r}");
    check_report(&r, n, n, 2);
    assert!(
        r["processes"][0]["steadyCpuPercent"].as_f64().is_some(),
        "{r}"
    );
    let routes = agent.routes().expect("routes");
    assert!(routes.iter().any(|r| r["prefix"] == MESH_V4));
    assert!(routes.iter().any(|r| r["prefix"] == MESH_V6));
}

/// The benchmark: both reflector kinds at FERROVIA_SIM_NODES (default 200), one after the
/// other in the same run, then the mesh mode with N − 1 peers. Prints the reports.
#[test]
#[ignore = "benchmark: run on a quiet machine with --release --ignored --nocapture"]
fn benchmark_reflectors_and_mesh() {
    let n: u32 = std::env::var("FERROVIA_SIM_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let f = reflectors(ReflectorKind::Ferrovia, "benf", n, "30");
    let b = reflectors(ReflectorKind::Bird, "benb", n, "30");
    let lock = net_lock();
    let w = SimWorld::mesh(&lock, "benm", n - 1);
    let m = w
        .run(timeout_for(n), &["--expect", "2", "--steady-seconds", "30"])
        .unwrap_or_else(|e| panic!("mesh mode: {e}"));
    println!("BENCH ferrovia-reflectors {f}");
    println!("BENCH bird-reflectors {b}");
    println!("BENCH mesh {m}");
}
