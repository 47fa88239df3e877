//! Benchmark, not a test (ignored by default; run by scripts/bench_rolling_restart.sh):
//! packets lost per rolling restart of the agent (issue 11, docs/BENCHMARKS.md; goal 0).
//!
//! Topology `TwoTors` (one node, ECMP over two ToRs that reach its pod only through BGP), a
//! pod pinging a host behind the ToRs at 100/s while the agent is SIGTERMed and started again
//! FERROVIA_BENCH_ROUNDS times in a row (default 3), as a DaemonSet rolling update does on each
//! node. Four configurations in the same run: FRR 8.4 and BIRD 2.0.12 ToRs, BFD off (the
//! anchor: graceful restart alone) and on (300 ms × 3 with the peer settings of
//! config/README.md). Prints a Markdown table.

use ferrovia_testsupport::common;

use common::bfd::*;

#[test]
#[ignore = "benchmark: scripts/bench_rolling_restart.sh"]
fn bench_packets_lost_per_rolling_restart() {
    let rounds: usize = std::env::var("FERROVIA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
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
