//! Benchmark, not a test (ignored by default; run by scripts/bench_rolling_restart.sh):
//! packets lost per rolling restart of the agent (issue 11, docs/BENCHMARKS.md; goal 0).
//!
//! Topology `TwoTors` (one node, ECMP over two ToRs that reach its pod only through BGP), a
//! pod pinging a host behind the ToRs at 100/s while the agent is SIGTERMed and started again
//! FERROVIA_BENCH_ROUNDS times in a row (default 3), as a DaemonSet rolling update does on each
//! node. Four configurations in the same run: FRR 8.4 and BIRD 2.0.12 ToRs, BFD off (the
//! anchor: graceful restart alone) and on (300 ms × 3 with the peer settings of
//! config/README.md). Prints a Markdown table.
//!
//! The second benchmark restarts every node of a lab in turn, as a DaemonSet rollout does
//! (SIGTERM, start, /readyz before the next node), FERROVIA_BENCH_ROUNDS times over, while a
//! pod on every node pings the pod on every other node at 100/s (both directions): the
//! leaf-spine lab with FRR ToRs (four nodes, twelve flows) and the BIRD lab (two nodes, two
//! flows), BFD off (graceful-restart*.clab.yml, the anchor) and on
//! (graceful-restart*-bfd.clab.yml); and, for comparison, the mesh lab (three nodes in a full
//! iBGP mesh on one segment, no ToR: each node's routes are kept by the other nodes, whose
//! sessions to a higher address only listen; tests/topologies/mesh). Prints a Markdown table.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::bfd::*;
use common::net_lock;
use lab_common::restart::{bird_tor_of, frr_tor_of, mesh_peer_of, rolling_restart, TorOf};
use lab_common::Lab;

/// FERROVIA_BENCH_ROUNDS (default 3, at least 1).
fn rounds() -> usize {
    std::env::var("FERROVIA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1)
}

#[test]
#[ignore = "benchmark: scripts/bench_rolling_restart.sh"]
fn bench_packets_lost_per_rolling_restart() {
    let rounds = rounds();
    let mut rows = Vec::new();
    for (n, (kind, bfd)) in [
        (TorKind::Frr, false),
        (TorKind::Frr, true),
        (TorKind::Bird, false),
        (TorKind::Bird, true),
    ]
    .into_iter()
    .enumerate()
    {
        let r = restart_rounds(&format!("rrb{n}"), kind, bfd, rounds, false);
        rows.push((kind, bfd, r));
    }
    println!();
    println!(
        "| ToRs | BFD | SIGTERM restarts | echo requests | lost | lost per restart | ping ran |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (kind, bfd, r) in &rows {
        let lost = r.sent.saturating_sub(r.received);
        println!(
            "| {} | {} | {rounds} | {} | {lost} | {:.1} | {:.1} s |",
            match kind {
                TorKind::Frr => "FRR 8.4",
                TorKind::Bird => "BIRD 2.0.12",
            },
            if *bfd { "300 ms × 3" } else { "off (anchor)" },
            r.sent,
            lost as f64 / rounds as f64,
            r.ran.as_secs_f64()
        );
    }
    assert!(!rows.is_empty());
}

/// One lab of the every-node benchmark.
struct EveryNode {
    /// What routes between the nodes (the table's first column).
    tors: &'static str,
    file: &'static str,
    /// The lab's name (its namespaces' prefix).
    name: &'static str,
    tor_of: TorOf,
    nodes: &'static [&'static str],
    bfd: bool,
}

#[test]
#[ignore = "benchmark: scripts/bench_rolling_restart.sh"]
fn bench_packets_lost_per_rolling_restart_of_every_node() {
    let rounds = rounds();
    let labs = [
        EveryNode {
            tors: "FRR 8.4 (leaf-spine)",
            file: "graceful-restart.clab.yml",
            name: "fvt-rlb0",
            tor_of: frr_tor_of,
            nodes: &["n1", "n2", "n3", "n4"],
            bfd: false,
        },
        EveryNode {
            tors: "FRR 8.4 (leaf-spine)",
            file: "graceful-restart-bfd.clab.yml",
            name: "fvt-rlb1",
            tor_of: frr_tor_of,
            nodes: &["n1", "n2", "n3", "n4"],
            bfd: true,
        },
        EveryNode {
            tors: "BIRD 2.0.12",
            file: "graceful-restart-bird.clab.yml",
            name: "fvt-rlb2",
            tor_of: bird_tor_of,
            nodes: &["n1", "n3"],
            bfd: false,
        },
        EveryNode {
            tors: "BIRD 2.0.12",
            file: "graceful-restart-bird-bfd.clab.yml",
            name: "fvt-rlb3",
            tor_of: bird_tor_of,
            nodes: &["n1", "n3"],
            bfd: true,
        },
        EveryNode {
            tors: "none: full iBGP mesh",
            file: "mesh.clab.yml",
            name: "fvt-rlb4",
            tor_of: mesh_peer_of,
            nodes: &["n1", "n2", "n3"],
            bfd: false,
        },
    ];
    let mut rows = Vec::new();
    for EveryNode {
        tors,
        file,
        name,
        tor_of,
        nodes,
        bfd,
    } in labs
    {
        let lock = net_lock();
        let started = std::time::Instant::now();
        let lab = Lab::up(&lock, file, name);
        let r = rolling_restart(&lab, tor_of, nodes, rounds, bfd);
        drop(lab);
        for f in r.flows.iter().filter(|f| !f.count.lost.is_empty()) {
            eprintln!(
                "{file}: {} → {}: lost {} of {} (sequence numbers {}; 100 a second)",
                f.from,
                f.to,
                f.count.lost.len(),
                f.count.last,
                f.count.lost_ranges()
            );
        }
        rows.push((tors, nodes.len(), bfd, r, started.elapsed()));
    }
    println!();
    println!(
        "| ToRs | nodes | BFD | node restarts | pod flows | echo requests | lost | lost per node restart | run |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (tors, nodes, bfd, r, took) in &rows {
        println!(
            "| {tors} | {nodes} | {} | {} ({rounds} × {nodes}) | {} | {} | {} | {:.1} | {:.0} s |",
            match (*bfd, tors.starts_with("none")) {
                (true, _) => "300 ms × 3",
                (false, false) => "off (anchor)",
                (false, true) => "off",
            },
            r.restarts,
            r.flows.len(),
            r.sent(),
            r.lost(),
            r.lost() as f64 / r.restarts as f64,
            took.as_secs_f64()
        );
    }
    assert!(!rows.is_empty());
}
