//! ferrovia as graceful restart helper (RFC 4724 §4.2) with real restarting speakers: a
//! neighbour that restarts keeps its routes in our kernel (stale, shown in `ferrovia
//! status` and `ferrovia routes`) while it is away, and when it comes back with fewer routes
//! the rest is swept. The neighbour is FRR 8.4 (`neighbor X graceful-restart`; no Forwarding
//! State bit, so its stale routes go when it reconnects and the ones it still has come
//! back) and another ferrovia agent restarted with SIGTERM (it claims the restart with the
//! Forwarding State bit, so its stale routes wait for its End-of-RIB).

use ferrovia_testsupport::common;

use common::ferrovia::{Ferrovia, FerroviaConfig, FerroviaPeer};
use common::frr::{Frr, FrrConfig, FrrNeighbor};
use common::{net_lock, wait_until, Netns, Pair};
use common::{FERROVIA_AS, FERROVIA_V4, F_V4, PEER_AS, PEER_V4, PEER_V6, POLL};
use common::{PROPAGATE, P_V4, P_V6};
use serde_json::Value;

/// A third prefix of the neighbour's, the one it no longer has after its restart.
const GONE_V4: &str = "10.244.201.0/24";

/// Our routes (protocol 0xf1) in a namespace's kernel, both families.
fn kernel(ns: &Netns) -> String {
    let mut s = ns.ip(&["-4", "route", "show", "proto", "0xf1"]);
    s.push_str(&ns.ip(&["-6", "route", "show", "proto", "0xf1"]));
    s
}

fn kernel_has(ns: &Netns, prefix: &str) -> bool {
    kernel(ns)
        .lines()
        .any(|l| l.starts_with(&format!("{prefix} ")))
}

/// The kernel has exactly these of the neighbour's prefixes (of `all`).
fn kernel_exactly(ns: &Netns, want: &[&str], all: &[&str]) -> Result<(), String> {
    for p in all {
        if kernel_has(ns, p) != want.contains(p) {
            return Err(format!(
                "want {want:?} of {all:?} in the kernel; have:\n{}",
                kernel(ns)
            ));
        }
    }
    Ok(())
}

/// The neighbour's session is down and its routes are kept as stale: counted in status,
/// flagged in `ferrovia routes`, still in the kernel.
fn kept_stale(f: &Ferrovia, ns: &Netns, prefixes: &[&str]) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    if p["state"] == "Established" {
        return Err(format!("still Established: {p}"));
    }
    if p["stalePrefixes"] != prefixes.len() {
        return Err(format!("want {} stale prefixes: {p}", prefixes.len()));
    }
    for prefix in prefixes {
        let r = f.routes_for(prefix)?;
        if r.first().is_none_or(|r| r["stale"] != true) {
            return Err(format!("{prefix} not listed as stale: {r:?}"));
        }
    }
    kernel_exactly(ns, prefixes, prefixes)?;
    Ok(p)
}

#[test]
fn an_frr_neighbour_restarting_gracefully_keeps_its_routes_in_our_kernel_until_it_is_back() {
    let lock = net_lock();
    let t = Pair::new(&lock, "grh-frr");
    let mut n = FrrNeighbor::ferrovia(FERROVIA_AS);
    n.extra.push("graceful-restart".into());
    let mut frr = Frr::start(
        &t.p,
        FrrConfig {
            asn: PEER_AS,
            router_id: PEER_V4.into(),
            neighbors: vec![n],
            networks: vec![P_V4.into(), P_V6.into(), GONE_V4.into()],
        },
    );
    let f = Ferrovia::start(&t.f, FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4]));
    let all = [P_V4, P_V6, GONE_V4];
    wait_until("ferrovia installs FRR's routes", PROPAGATE, POLL, || {
        kernel_exactly(&t.f, &all, &all)
    });

    frr.kill_bgpd();
    let p = wait_until(
        "FRR's routes kept as stale while its bgpd is away",
        PROPAGATE,
        POLL,
        || kept_stale(&f, &t.f, &all),
    );
    eprintln!("while FRR is away: {p}");

    // Back with one IPv4 prefix fewer and no IPv6 one.
    frr.cfg.networks = vec![P_V4.into()];
    frr.start_bgpd();
    wait_until(
        "FRR is back: what it still has is installed, the rest swept",
        PROPAGATE,
        POLL,
        || {
            kernel_exactly(&t.f, &[P_V4], &all)?;
            let p = f.peer(PEER_V4)?;
            if p["state"] == "Established" && p["stalePrefixes"] == 0 {
                Ok(())
            } else {
                Err(format!("{p}"))
            }
        },
    );
}

#[test]
fn a_ferrovia_neighbour_restarting_with_sigterm_keeps_its_routes_until_its_end_of_rib() {
    let lock = net_lock();
    let t = Pair::new(&lock, "grh-fer");
    let neighbour = |originate: &[&str]| FerroviaConfig {
        name: "node2".into(),
        as_number: PEER_AS,
        router_id: PEER_V4.into(),
        addresses: vec![PEER_V4.into(), PEER_V6.into()],
        hold_time: Some(9),
        connect_retry: Some(1),
        peers: vec![FerroviaPeer {
            address: FERROVIA_V4.into(),
            ..FerroviaPeer::peer(FERROVIA_AS)
        }],
        originate: originate.iter().map(|s| s.to_string()).collect(),
        extra_bgp: String::new(),
        extra: String::new(),
    };
    let all = [P_V4, P_V6, GONE_V4];
    let mut g = Ferrovia::start(&t.p, neighbour(&all));
    let f = Ferrovia::start(&t.f, FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4]));
    wait_until(
        "ferrovia installs its neighbour's routes",
        PROPAGATE,
        POLL,
        || kernel_exactly(&t.f, &all, &all),
    );

    // SIGTERM: a restart. The neighbour keeps its own kernel state too (blackholes of the
    // prefixes it originates, our route via us).
    let st = g.sigterm();
    assert_eq!(st.and_then(|s| s.code()), Some(0), "exit 0 on SIGTERM");
    let p = wait_until(
        "the neighbour's routes kept as stale while it is away",
        PROPAGATE,
        POLL,
        || kept_stale(&f, &t.f, &all),
    );
    eprintln!("while the neighbour is away: {p}");
    for prefix in all {
        assert!(
            kernel(&t.p).contains(&format!("blackhole {prefix}")),
            "the restarting neighbour keeps its blackhole for {prefix}:\n{}",
            kernel(&t.p)
        );
    }
    let ours = F_V4.to_string();
    assert!(
        kernel_has(&t.p, &ours),
        "the restarting neighbour keeps its route to our {F_V4}:\n{}",
        kernel(&t.p)
    );

    // Back with one prefix: it claims the restart, the others are swept at its End-of-RIB.
    g.restart_with(neighbour(&[P_V4]));
    wait_until(
        "the neighbour is back: its remaining prefix stays, the rest is swept",
        PROPAGATE,
        POLL,
        || {
            kernel_exactly(&t.f, &[P_V4], &all)?;
            let p = f.peer(PEER_V4)?;
            if p["state"] == "Established"
                && p["stalePrefixes"] == 0
                && p["endOfRibReceived"] == true
                && p["endOfRibSent"] == true
            {
                Ok(())
            } else {
                Err(format!("{p}"))
            }
        },
    );
    assert!(
        g.log_text()
            .contains("graceful restart: our routes are still in the kernel"),
        "the neighbour claimed a graceful restart:\n{}",
        g.log_text()
    );
    // The restarted neighbour swept its own kept state once End-of-RIB went both ways.
    wait_until(
        "the neighbour sweeps its old blackholes",
        PROPAGATE,
        POLL,
        || {
            let k = kernel(&t.p);
            if k.contains(&format!("blackhole {P_V4}"))
                && !k.contains(&format!("blackhole {GONE_V4}"))
                && !k.contains(&format!("blackhole {P_V6}"))
                && kernel_has(&t.p, F_V4)
            {
                Ok(())
            } else {
                Err(k)
            }
        },
    );
}
