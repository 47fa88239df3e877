//! Benchmark, not a test (ignored by default; run by scripts/bench_bfd_failover.sh): failover
//! time to the second ToR after a link failure, ferrovia's BFD against FRR-to-FRR BFD in the
//! same topology and the same run (issue 11, docs/BENCHMARKS.md).
//!
//! Topology `TwoTors` with FRR ToRs (bfdd, 300 ms × 3, hold 90 s). The node is either
//! ferrovia or FRR (zebra + bgpd + bfdd, `neighbor X bfd`, ECMP over both ToRs). Each round,
//! for each node: a pod pings a host behind both ToRs at 100/s, the link to the ToR carrying
//! the flow fails out of the node's sight, and we take
//! - detect: link down → the dead ToR's next hop gone from the node's kernel route;
//! - loss: pings lost × run time / pings sent (ping's own rate falls below 100/s on a loaded
//!   machine).
//!
//! Rounds: FERROVIA_BENCH_ROUNDS (default 5). Medians and ratios at the end.

use ferrovia_testsupport::common;

use common::bfd::*;
use common::*;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Node {
    Ferrovia,
    Frr,
}

/// One failover: (detect, loss).
fn round(node: Node, n: usize) -> (Duration, Duration) {
    let lock = net_lock();
    let t = TwoTors::new(&lock, &format!("bfdb{n}"));
    let _tors = [
        Tor::frr(&t, 0, &node_addr(0), FERROVIA_AS, true, 90),
        Tor::frr(&t, 1, &node_addr(1), FERROVIA_AS, true, 90),
    ];
    let both = vec![tor_addr(0), tor_addr(1)];
    let _fer;
    let _frr;
    match node {
        Node::Ferrovia => {
            let f = Ferrovia::start(&t.n, t.ferrovia_cfg(true, 90));
            wait_until(
                "ferrovia: both sessions with BFD Up",
                ESTABLISH,
                POLL,
                || {
                    for a in &both {
                        let p = f.peer(a)?;
                        if p["state"] != "Established" || p["bfd"]["state"] != "Up" {
                            return Err(format!("{p}"));
                        }
                    }
                    Ok(())
                },
            );
            _fer = Some(f);
        }
        Node::Frr => {
            let neighbors = (0..2)
                .map(|i| {
                    let mut nb = FrrNeighbor::ferrovia(TOR_AS);
                    nb.addr = tor_addr(i);
                    nb.hold_time = Some(90);
                    nb.extra.push("bfd".into());
                    nb
                })
                .collect();
            let mut f = Frr::start(
                &t.n,
                FrrConfig {
                    asn: FERROVIA_AS,
                    router_id: node_addr(0),
                    neighbors,
                    networks: vec![NODE_BLOCK.into()],
                },
            );
            f.start_bfdd();
            wait_until("FRR node: both BFD peers up", ESTABLISH, POLL, || {
                for a in &both {
                    let s = f.bfd_peer(a)?;
                    if s["status"] != "up" || f.neighbor_state(a) != "Established" {
                        return Err(format!("{s}"));
                    }
                }
                Ok(())
            });
            _frr = Some(f);
        }
    }
    wait_until(
        "ECMP over both ToRs in the node's kernel",
        ESTABLISH,
        POLL,
        || {
            let hops = t.node_next_hops();
            if hops == both {
                Ok(())
            } else {
                Err(hops)
            }
        },
    );
    let dead = t.forward_tor();
    let alive = 1 - dead;
    t.return_via(alive);
    let ping = Pinger::start(&t);
    let t0 = Instant::now();
    t.fail(dead);
    wait_until(
        "the dead next hop leaves",
        PROPAGATE,
        Duration::from_millis(10),
        || {
            let hops = t.node_next_hops();
            if hops == vec![tor_addr(alive)] {
                Ok(())
            } else {
                Err(hops)
            }
        },
    );
    let detect = t0.elapsed();
    let at = ping.replies();
    wait_until("pings answered again", PROPAGATE, POLL, || {
        if ping.replies() >= at + 100 {
            Ok(())
        } else {
            Err(ping.replies())
        }
    });
    let (sent, received, ran) = ping.stop();
    let lost = sent.saturating_sub(received);
    let loss = ran.mul_f64(lost as f64 / sent.max(1) as f64);
    eprintln!(
        "round {n} {node:?}: detect {detect:?}, {lost} of {sent} lost over {ran:?} → loss {loss:?}"
    );
    (detect, loss)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

#[test]
#[ignore = "benchmark: scripts/bench_bfd_failover.sh"]
fn bench_failover_ferrovia_vs_frr() {
    let rounds: usize = std::env::var("FERROVIA_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut res: Vec<(Node, Duration, Duration)> = Vec::new();
    for n in 0..rounds {
        // Alternate the order so that neither always runs first.
        let order = if n % 2 == 0 {
            [Node::Ferrovia, Node::Frr]
        } else {
            [Node::Frr, Node::Ferrovia]
        };
        for node in order {
            let (d, l) = round(node, n);
            res.push((node, d, l));
        }
    }
    let pick = |node: Node, loss: bool| -> Vec<Duration> {
        res.iter()
            .filter(|r| r.0 == node)
            .map(|r| if loss { r.2 } else { r.1 })
            .collect()
    };
    let (fd, fl) = (
        median(pick(Node::Ferrovia, false)),
        median(pick(Node::Ferrovia, true)),
    );
    let (rd, rl) = (
        median(pick(Node::Frr, false)),
        median(pick(Node::Frr, true)),
    );
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
    println!();
    println!("BFD 300 ms × 3, FRR 8.4 ToRs, {rounds} rounds (medians):");
    println!();
    println!("| node | detect (link down → next hop gone) | traffic lost |");
    println!("|---|---|---|");
    println!("| ferrovia | {fd:.2?} | {fl:.2?} |");
    println!("| FRR 8.4 (anchor) | {rd:.2?} | {rl:.2?} |");
    println!(
        "| ferrovia / FRR | {:.2} | {:.2} |",
        ratio(fd, rd),
        ratio(fl, rl)
    );
    assert!(!res.is_empty());
}
