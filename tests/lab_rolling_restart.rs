//! A rolling restart of every node of a lab (issue 11), as a DaemonSet rollout with
//! maxUnavailable 1 does: node after node, the agent gets SIGTERM and starts again, and the
//! next one goes only once /readyz answers. Meanwhile a pod on every node pings the pod on
//! every other node at 100/s (every pair, both directions, across the ToRs and the spine),
//! and no echo request may be lost: the mechanism is graceful restart (the ToRs keep a
//! restarting node's routes as stale, the node keeps its kernel state), not speed.
//!
//! Both labs run BFD at 300 ms × 3 on the node–ToR sessions with the peer settings
//! config/README.md gives for lossless restarts: on SIGTERM the agent's BFD goes AdminDown
//! first, which FRR with `bfd check-control-plane-failure` and BIRD with `bfd graceful`
//! turn into a graceful restart. BFD off, the same restarts are covered one node at a time
//! by tests/lab_graceful_restart.rs; scripts/bench_rolling_restart.sh runs all four
//! combinations (FRR/BIRD × BFD off/on) of this rolling restart.

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::net_lock;
use lab_common::restart::{bird_tor_of, frr_tor_of, rolling_restart, Rolling};
use lab_common::Lab;

fn assert_nothing_lost(what: &str, r: &Rolling) {
    for f in &r.flows {
        eprintln!(
            "{what}: {} → {}: {} of {} echo requests lost (answered {})",
            f.from,
            f.to,
            f.count.lost.len(),
            f.count.last,
            f.count.answered
        );
    }
    for f in &r.flows {
        assert!(
            f.count.last >= 20,
            "{what}: {} → {}: the ping hardly ran: {:?}",
            f.from,
            f.to,
            f.count
        );
        assert!(
            f.count.lost.is_empty(),
            "{what}: {} → {}: lost echo requests {} of {} over {} node restarts",
            f.from,
            f.to,
            f.count.lost_ranges(),
            f.count.last,
            r.restarts
        );
    }
}

#[test]
fn a_rolling_restart_of_every_node_behind_frr_tors_with_bfd_loses_no_packet_between_any_pods() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "graceful-restart-bfd.clab.yml", "fvt-rlf");
    let nodes = ["n1", "n2", "n3", "n4"];
    let r = rolling_restart(&lab, frr_tor_of, &nodes, 1, true);
    assert_eq!(r.restarts, nodes.len());
    assert_eq!(r.flows.len(), nodes.len() * (nodes.len() - 1));
    assert_nothing_lost("leaf-spine, FRR ToRs, BFD 300 ms × 3", &r);
}

#[test]
fn a_rolling_restart_of_every_node_behind_a_bird_tor_with_bfd_loses_no_packet_between_the_pods() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "graceful-restart-bird-bfd.clab.yml", "fvt-rlb");
    let nodes = ["n1", "n3"];
    let r = rolling_restart(&lab, bird_tor_of, &nodes, 1, true);
    assert_eq!(r.restarts, nodes.len());
    assert_eq!(r.flows.len(), 2);
    assert_nothing_lost("BIRD ToR, BFD 300 ms × 3", &r);
}
