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
    reflectors_run(kind, tag, n, steady, true)
}

/// Both reflectors of `kind` with `n` simulated nodes. `check`: also poll the reflectors'
/// status during the run (the tests do; the benchmark does not, the polls cost the
/// reflectors CPU).
fn reflectors_run(kind: ReflectorKind, tag: &str, n: u32, steady: &str, check: bool) -> Value {
    let lock = net_lock();
    let w = SimWorld::new(&lock, tag, kind, n, true);
    let r = run_checking(&w, &["--steady-seconds", steady], || {
        if !check {
            return;
        }
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
    if check {
        for rr in &w.reflectors {
            common::wait_until(
                "the range peers are forgotten once their sessions close",
                common::PROPAGATE,
                common::POLL,
                || only_configured_peers_left(rr),
            );
        }
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

/// Every peer of the agent is a mesh peer (from a node record), Established, with the
/// simulated node's two blocks received and the agent's two sent; `n` of them.
fn mesh_peers_in_status(agent: &common::Ferrovia, n: u32) -> Result<(), String> {
    let st = agent.status()?;
    let peers = st["peers"].as_array().ok_or("no peers")?;
    if peers.len() != n as usize {
        return Err(format!("{} peers, want {n}", peers.len()));
    }
    match peers.iter().find(|p| {
        p["type"] != "mesh"
            || p["state"] != "Established"
            || p["prefixesReceived"] != 2
            || p["prefixesSent"] != 2
    }) {
        Some(p) => Err(format!("{p}")),
        None => Ok(()),
    }
}

#[test]
fn simulated_nodes_from_the_datastore_mesh_with_the_agent() {
    let lock = net_lock();
    let n = N - 1;
    let w = SimWorld::mesh_from_store(&lock, "simd", n);
    let Reflector::Ferrovia(agent) = &w.reflectors[0] else {
        panic!("the mesh mode runs against a ferrovia agent");
    };
    let r = run_checking(&w, &["--expect", "2", "--steady-seconds", "5"], || {
        common::wait_until(
            "every node record is a mesh peer of the agent, Established, two blocks each way",
            std::time::Duration::from_secs(timeout_for(n)),
            common::POLL,
            || mesh_peers_in_status(agent, n),
        );
        // While the sessions are still up (the simulator holds them for the steady
        // seconds): the agent holds every simulated node's /26.
        let routes = agent.routes().expect("routes");
        for i in 0..n {
            let v4 = format!("10.244.{}.{}/26", i / 4, (i % 4) * 64);
            assert!(
                routes.iter().any(|r| r["prefix"] == v4.as_str()),
                "no {v4} in the agent's routes"
            );
        }
    });
    eprintln!("mesh mode from the datastore, {n} peers: {r}");
    check_report(&r, n, n, 2);
    assert!(
        r["processes"][0]["steadyCpuPercent"].as_f64().is_some(),
        "{r}"
    );
}

/// Where the mesh mode's agent gets its peers from.
#[derive(Clone, Copy)]
enum MeshPeers {
    /// Node records in a SQLite datastore (the mesh task), as in a cluster.
    Datastore,
    /// A `bgp.peerRanges` entry.
    Range,
}

impl MeshPeers {
    fn name(self) -> &'static str {
        match self {
            MeshPeers::Datastore => "datastore",
            MeshPeers::Range => "range",
        }
    }
}

/// FERROVIA_SIM_MESH_PEERS: `datastore`, `range` or both (the default), comma-separated.
fn mesh_kinds() -> Vec<MeshPeers> {
    let v = std::env::var("FERROVIA_SIM_MESH_PEERS").unwrap_or_else(|_| "datastore,range".into());
    v.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| match x.trim() {
            "datastore" => MeshPeers::Datastore,
            "range" => MeshPeers::Range,
            other => {
                panic!("FERROVIA_SIM_MESH_PEERS={v}: {other:?} is neither datastore nor range")
            }
        })
        .collect()
}

/// A list of numbers from the environment (`200,500,1000`), or `default`.
fn env_list(name: &str, default: &[u32]) -> Vec<u32> {
    match std::env::var(name) {
        Ok(v) => v
            .split(',')
            .filter(|x| !x.trim().is_empty())
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{name}={v}: {x:?} is not a number: {e}"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn mib(kib: &Value) -> f64 {
    f64_of(kib) / 1024.0
}

/// The reflectors' total of a per-process field.
fn sum_procs(r: &Value, key: &str) -> f64 {
    r["processes"]
        .as_array()
        .map(|ps| ps.iter().map(|p| f64_of(&p[key])).sum())
        .unwrap_or(f64::NAN)
}

/// The larger of the reflectors' values of a per-process field.
fn max_procs(r: &Value, key: &str) -> f64 {
    r["processes"]
        .as_array()
        .map(|ps| ps.iter().map(|p| f64_of(&p[key])).fold(0.0, f64::max))
        .unwrap_or(f64::NAN)
}

fn reflector_row(name: &str, r: &Value) -> String {
    format!(
        "| {} | {name} | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.1} MiB | {:.1} MiB | {:.2} % |",
        r["nodes"],
        f64_of(&r["establishSeconds"]),
        f64_of(&r["convergenceSeconds"]),
        f64_of(&r["completeSeconds"]),
        max_procs(r, "cpuSeconds"),
        max_procs(r, "peakRssKib") / 1024.0,
        max_procs(r, "rssKib") / 1024.0,
        max_procs(r, "steadyCpuPercent"),
    )
}

/// The benchmark, one command: for each N of FERROVIA_SIM_NODES (default 200,500,1000)
/// two ferrovia reflectors, then two BIRD reflectors (the anchor, same run), then the mesh
/// mode for each peer count of FERROVIA_SIM_MESH (default 50,100,199). FERROVIA_SIM_STEADY
/// sets the seconds of steady state measured after convergence (default 30 for the
/// largest mesh, 5 elsewhere); FERROVIA_SIM_ANCHOR=0 leaves BIRD out. Prints the JSON reports (`BENCH` lines) and Markdown tables.
#[test]
#[ignore = "benchmark: run on a quiet machine with --release --ignored --nocapture"]
fn benchmark_reflectors_and_mesh() {
    let ns = env_list("FERROVIA_SIM_NODES", &[200, 500, 1000]);
    let meshes = env_list("FERROVIA_SIM_MESH", &[50, 100, 199]);
    let steady: u32 = std::env::var("FERROVIA_SIM_STEADY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let short = steady.min(5).to_string();
    // FERROVIA_SIM_ANCHOR=0: ferrovia's reflectors only, no BIRD run (for development; a
    // result for docs/BENCHMARKS.md needs the anchor of the same run).
    let anchor = std::env::var("FERROVIA_SIM_ANCHOR").map_or(true, |v| v != "0");
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for &n in &ns {
        let t = std::time::Instant::now();
        let f = reflectors_run(ReflectorKind::Ferrovia, "benf", n, &short, false);
        println!("BENCH ferrovia-reflectors {f}");
        rows.push(reflector_row("ferrovia", &f));
        if !anchor {
            eprintln!("N = {n}: {:.0} s (no anchor)", t.elapsed().as_secs_f64());
            continue;
        }
        let b = reflectors_run(ReflectorKind::Bird, "benb", n, &short, false);
        println!("BENCH bird-reflectors {b}");
        eprintln!("N = {n}: {:.0} s", t.elapsed().as_secs_f64());
        rows.push(reflector_row("BIRD 2", &b));
        ratios.push(format!(
            "| {n} | {:.2}× | {:.2}× | {:.2}× |",
            sum_procs(&f, "cpuSeconds") / sum_procs(&b, "cpuSeconds"),
            max_procs(&f, "peakRssKib") / max_procs(&b, "peakRssKib"),
            f64_of(&f["completeSeconds"]) / f64_of(&b["completeSeconds"]),
        ));
    }
    let mut mesh_rows = Vec::new();
    let mut growth = Vec::new();
    let largest = meshes.iter().copied().max().unwrap_or(0);
    for kind in mesh_kinds() {
        let mut points: Vec<(u32, f64)> = Vec::new();
        for &m in &meshes {
            let t = std::time::Instant::now();
            let lock = net_lock();
            let w = match kind {
                MeshPeers::Datastore => SimWorld::mesh_from_store(&lock, "bend", m),
                MeshPeers::Range => SimWorld::mesh(&lock, "benm", m),
            };
            let s = if m == largest {
                steady.to_string()
            } else {
                short.clone()
            };
            let r = w
                .run(
                    timeout_for(m + 1),
                    &["--expect", "2", "--steady-seconds", &s],
                )
                .unwrap_or_else(|e| panic!("mesh mode ({}): {e}", kind.name()));
            drop(w);
            drop(lock);
            println!("BENCH mesh-{} {r}", kind.name());
            eprintln!(
                "mesh {m} ({}): {:.0} s",
                kind.name(),
                t.elapsed().as_secs_f64()
            );
            let p = &r["processes"][0];
            points.push((m, f64_of(&p["rssKib"]) - f64_of(&p["rssStartKib"])));
            mesh_rows.push(format!(
                "| {m} | {} | {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} KiB | {:.2} s | {:.2} % over {s} s |",
                kind.name(),
                f64_of(&r["completeSeconds"]),
                mib(&p["rssKib"]),
                mib(&p["peakRssKib"]),
                f64_of(&p["rssPerSessionKib"]),
                f64_of(&p["cpuSeconds"]),
                f64_of(&p["steadyCpuPercent"]),
            ));
        }
        if let (Some(a), Some(b)) = (points.first(), points.last()) {
            if b.0 > a.0 {
                growth.push(format!(
                    "Agent RSS growth (start → converged), peers from the {}, from {} to {} mesh peers: {:.1} KiB per peer.",
                    kind.name(),
                    a.0,
                    b.0,
                    (b.1 - a.1) / f64::from(b.0 - a.0)
                ));
            }
        }
    }
    println!();
    println!("| N | reflectors | start → last Established | last Established → converged | start → converged | CPU (busier reflector) | peak RSS (larger) | RSS at convergence | steady CPU ({short} s) |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!("{r}");
    }
    println!();
    println!("| N | ferrovia / BIRD: CPU (both reflectors) | peak RSS | start → converged |");
    println!("|---|---|---|---|");
    for r in &ratios {
        println!("{r}");
    }
    if !mesh_rows.is_empty() {
        println!();
        println!("| mesh peers | peers from | start → all got the agent's blocks | agent RSS | peak RSS | RSS growth per peer (start → converged) | agent CPU | steady CPU |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &mesh_rows {
            println!("{r}");
        }
    }
    if !growth.is_empty() {
        println!();
    }
    for g in &growth {
        println!("{g}");
    }
    println!();
    println!("Whole run: {:.0} s.", started.elapsed().as_secs_f64());
}
