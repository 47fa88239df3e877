//! Graceful restart end to end (issue 11): pods on n1 (rack 1) and n3 (rack 2) of the
//! leaf-spine lab ping each other 100 times a second through tor1, the spine and tor2 (FRR
//! 8.4, graceful-restart helpers by default) while an agent restarts. SIGTERM drops the
//! sessions without a NOTIFICATION and keeps the kernel state; the restarted agent claims
//! the restart (R and F bits), sends its routes and End-of-RIB at once, and the ToR never
//! withdraws the pods' blocks. Loss is counted from the echo replies' sequence numbers: a
//! number missing below the highest one answered is a lost packet.
//!
//! The lab is `graceful-restart.clab.yml` (the leaf-spine lab with a 60 s restart time, so
//! the ToR's helper covers the agent however slow the machine is).

use ferrovia_testsupport::common;
use ferrovia_testsupport::lab_common;

use common::{net_lock, wait_until};
use lab_common::restart::{bird_tor_of, frr_tor_of, restart, PingRun, TorOf};
use lab_common::{time_until, Lab, POLL, PROPAGATE};
use std::time::Duration;

const FILE: &str = "graceful-restart.clab.yml";

#[test]
fn pods_lose_no_packet_across_frr_tors_while_either_agent_restarts_with_sigterm_or_sigkill() {
    let lock = net_lock();
    let lab = Lab::up(&lock, FILE, "fvt-gr");
    restarts_lose_nothing(&lab, frr_tor_of);
}

#[test]
fn pods_lose_no_packet_across_a_bird_tor_while_either_agent_restarts_with_sigterm_or_sigkill() {
    let lock = net_lock();
    let lab = Lab::up(&lock, "graceful-restart-bird.clab.yml", "fvt-grb");
    restarts_lose_nothing(&lab, bird_tor_of);
}

/// n1's pod pings n3's pod at 100/s while each agent restarts: SIGTERM three times in a
/// row, then SIGKILL once; nothing may be lost.
fn restarts_lose_nothing(lab: &Lab, tor_of: TorOf) {
    lab.wait_established(PROPAGATE);
    let p1 = lab.pod_add("n1", "p")[0].clone();
    let p3 = lab.pod_add("n3", "p")[0].clone();
    time_until("n1's pod reaches n3's pod", PROPAGATE, || {
        match lab.try_ping("n1", "p", &p3) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        }
    });
    time_until("n3's pod reaches n1's pod", PROPAGATE, || {
        match lab.try_ping("n3", "p", &p1) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        }
    });

    let mut report = Vec::new();
    for (node, kill, rounds) in [
        ("n3", false, 3),
        ("n1", false, 3),
        ("n3", true, 1),
        ("n1", true, 1),
    ] {
        let ping = PingRun::start(lab, "n1", "p", &p3);
        for _ in 0..rounds {
            restart(lab, tor_of, node, kill);
        }
        // Traffic after the last restart is counted too: one more echo goes all the way.
        lab.ping("n1", "p", &p3);
        let c = ping.finish();
        let how = if kill { "SIGKILL" } else { "SIGTERM" };
        eprintln!(
            "{how} + restart of {node}'s agent x{rounds}: {} of {} echo requests lost (answered {})",
            c.lost.len(),
            c.last,
            c.answered
        );
        report.push((node, how, rounds, c));
    }
    for (node, how, rounds, c) in &report {
        assert!(c.last >= 20, "{node} {how}: the ping hardly ran: {c:?}");
        assert!(
            c.lost.is_empty(),
            "{how} + restart of {node}'s agent x{rounds}: lost echo requests {:?} of {}",
            c.lost,
            c.last
        );
    }
}

/// The anycast address n3 and n4 both announce (on their lo).
const ANYCAST: &str = "198.18.200.1";

/// Packets received on a node's link to its ToR (netlink statistics of its namespace).
fn rx(lab: &Lab, node: &str) -> u64 {
    let (ok, out) = lab.exec(node, &["ip", "-j", "-s", "link", "show", "dev", "eth1"]);
    assert!(ok, "ip -s link in {node}: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx packets in {out}"))
}

/// tor2's BGP paths for the anycast address, as JSON text.
fn tor2_paths(lab: &Lab) -> String {
    let (_, out) = lab.exec(
        "tor2",
        &[
            "vtysh",
            "-c",
            &format!("show bgp ipv4 unicast {ANYCAST}/32 json"),
        ],
    );
    out
}

#[test]
fn a_drained_node_moves_traffic_away_before_it_withdraws_then_leaves_without_a_lost_packet() {
    let lock = net_lock();
    let lab = Lab::up(&lock, FILE, "fvt-grd");
    lab.wait_established(PROPAGATE);
    lab.pod_add("n1", "p");
    time_until(
        "n1's pod reaches the anycast address",
        PROPAGATE,
        || match lab.try_ping("n1", "p", ANYCAST) {
            (true, _) => Ok(()),
            (false, out) => Err(out),
        },
    );
    let ping = PingRun::start(&lab, "n1", "p", ANYCAST);

    // Which of n3 and n4 the flow reaches (one flow, one path).
    let before = [rx(&lab, "n3"), rx(&lab, "n4")];
    let (drained, other) = wait_until("the flow shows on n3 or n4", PROPAGATE, POLL, || {
        let d3 = rx(&lab, "n3") - before[0];
        let d4 = rx(&lab, "n4") - before[1];
        match (d3, d4) {
            (d3, d4) if d3 >= 200 && d3 > 2 * d4 => Ok(("n3", "n4")),
            (d3, d4) if d4 >= 200 && d4 > 2 * d3 => Ok(("n4", "n3")),
            _ => Err(format!("n3 +{d3}, n4 +{d4}")),
        }
    });
    let drained_addr = if drained == "n3" {
        "198.18.21.1"
    } else {
        "198.18.22.1"
    };
    eprintln!("the flow reaches {drained}; draining it (bgp.drainWait 30 s)");

    let reply = std::thread::scope(|sc| {
        let drain = sc.spawn(|| {
            lab.cli(
                &["exec"],
                &[drained, "--", "ferrovia", "node", "drain", "--json"],
                Duration::from_secs(180),
            )
        });
        // Traffic moves to the other node while tor2 still has the drained node's path,
        // marked GRACEFUL_SHUTDOWN: it moved before the withdrawal.
        let base = rx(&lab, other);
        let took = time_until(&format!("the flow moves to {other}"), PROPAGATE, || {
            let d = rx(&lab, other) - base;
            if d >= 200 {
                Ok(())
            } else {
                Err(format!("{other} +{d}"))
            }
        });
        let paths = tor2_paths(&lab);
        assert!(
            paths.contains(drained_addr)
                && (paths.contains("graceful-shutdown") || paths.contains("65535:0")),
            "when the flow moved ({took:.1?} after the drain began) tor2 still has {drained}'s path with GRACEFUL_SHUTDOWN: {paths}"
        );
        eprintln!(
            "the flow moved to {other} {took:.1?} after the drain began, before the withdrawal"
        );
        drain.join().expect("drain thread")
    });
    let text = String::from_utf8_lossy(&reply.stdout);
    assert!(
        reply.status.success(),
        "ferrovia node drain on {drained}: {text}{}",
        String::from_utf8_lossy(&reply.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(r["waitedSeconds"], 30, "{r}");
    assert_eq!(r["withdrawn"], 1, "{r}");
    assert_eq!(r["sessionsClosed"], 1, "{r}");
    assert!(r["kernelRoutesRemoved"].as_u64().unwrap_or(0) >= 1, "{r}");

    // Withdrawn at tor2, nothing of ours left in the drained node's kernel.
    time_until(&format!("tor2 forgets {drained}'s path"), PROPAGATE, || {
        let paths = tor2_paths(&lab);
        if paths.contains(drained_addr) {
            Err(paths)
        } else {
            Ok(())
        }
    });
    let (_, ours) = lab.exec(drained, &["ip", "route", "show", "proto", "0xf1"]);
    assert!(
        ours.trim().is_empty(),
        "{drained} keeps routes of ours: {ours}"
    );

    lab.ping("n1", "p", ANYCAST);
    let c = ping.finish();
    eprintln!(
        "drain of {drained}: {} of {} echo requests to the anycast address lost (answered {})",
        c.lost.len(),
        c.last,
        c.answered
    );
    assert!(c.last >= 20, "the ping hardly ran: {c:?}");
    assert!(
        c.lost.is_empty(),
        "lost echo requests {:?} of {}",
        c.lost,
        c.last
    );
}
