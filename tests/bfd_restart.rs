//! SIGTERM and restart of the agent with BFD on its ToR sessions (issue 11): 0 packets lost;
//! then SIGKILL, the ToRs' BFD declaring the agent down, and a restart: 0 lost as well.
//!
//! On SIGTERM the agent first moves its BFD sessions to AdminDown for one detection time (RFC
//! 5880 §6.8.16), then restarts gracefully (sessions close without a NOTIFICATION, kernel
//! routes stay). The ToRs run the settings config/README.md gives: BIRD 2.0.12 (which takes
//! BGP down on a remote AdminDown) `bfd graceful` + `graceful restart on`, so the BFD Down
//! becomes a graceful restart; FRR 8.4 `neighbor X bfd check-control-plane-failure`, so bgpd
//! ignores the BFD Down of a graceful-restart peer whose C bit is clear (ours always is)
//! instead of answering Cease/Hard Reset (BFD Down) and flushing our routes.
//! Topology `TwoTors` (ECMP from the node), the ToRs reach the pod only through BGP; a pod
//! pings a host behind the ToRs at 100/s through the three restarts in a row.

use ferrovia_testsupport::common;

use common::bfd::*;
use common::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bird,
    Frr,
}

fn sigterm_restart(tag: &str, kind: Kind) {
    let lock = net_lock();
    let t = TwoTors::new(&lock, tag);
    let tor = |i: usize| match kind {
        Kind::Bird => Tor::bird_graceful(&t, i, &node_addr(i), FERROVIA_AS, 90),
        Kind::Frr => Tor::frr_graceful(&t, i, &node_addr(i), FERROVIA_AS, 90),
    };
    let tors = [tor(0), tor(1)];
    let mut f = Ferrovia::start(&t.n, t.ferrovia_cfg(true, 90));
    let both = vec![tor_addr(0), tor_addr(1)];
    let all_up = |f: &Ferrovia| -> Result<(), String> {
        for a in &both {
            let p = f.peer(a)?;
            if p["state"] != "Established" || p["bfd"]["state"] != "Up" {
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
        "both ToRs up with BFD, routes both ways",
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
    for round in 1..=2 {
        let st = f.sigterm();
        assert_eq!(
            st.and_then(|s| s.code()),
            Some(0),
            "round {round}: exit status"
        );
        f.start_again();
        wait_until(
            &format!("round {round}: both ToRs up again with BFD"),
            ESTABLISH,
            POLL,
            || all_up(&f),
        );
    }
    // SIGKILL: no AdminDown; the ToRs' BFD declares us down after the detection time (a
    // restart is only started once both did), as it would for a dead node. With the peer
    // settings of config/README.md that is a graceful restart too.
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
        "after the SIGKILL: both ToRs up again with BFD",
        ESTABLISH,
        POLL,
        || all_up(&f),
    );
    let log = f.log_text();
    assert!(
        log.matches("BFD sessions AdminDown").count() >= 2,
        "each SIGTERM set BFD AdminDown first"
    );
    let at = ping.replies();
    wait_until("pings go on after the restarts", PROPAGATE, POLL, || {
        if ping.replies() >= at + 100 {
            Ok(())
        } else {
            Err(ping.replies())
        }
    });
    let (sent, received, ran) = ping.stop();
    eprintln!(
        "measured (loaded machine): {kind:?} ToRs with BFD, 2 SIGTERM restarts and 1 SIGKILL restart: {} of {sent} lost over {ran:?}",
        sent - received
    );
    assert_eq!(
        sent, received,
        "no ping lost across SIGTERM and SIGKILL restarts with BFD"
    );
}

#[test]
fn bird_tors_bfd_graceful_sigterm_restart_loses_nothing() {
    sigterm_restart("bfdr-b", Kind::Bird);
}

#[test]
fn frr_tors_bfd_check_control_plane_failure_sigterm_restart_loses_nothing() {
    sigterm_restart("bfdr-f", Kind::Frr);
}
