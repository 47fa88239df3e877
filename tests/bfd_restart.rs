//! SIGTERM and restart of the agent with BFD on its ToR sessions (issue 11): 0 packets lost.
//!
//! On SIGTERM the agent first moves its BFD sessions to AdminDown for one detection time (RFC
//! 5880 §6.8.16), then restarts gracefully (sessions close without a NOTIFICATION, kernel
//! routes stay). BIRD 2.0.12 takes BGP down on a remote AdminDown, so its ToRs run
//! `bfd graceful` + `graceful restart on` (config/README.md): the BFD Down becomes a graceful
//! restart. Not here: FRR 8.4 ToRs — in this topology FRR answered our AdminDown with
//! Cease/Hard Reset (BFD Down) and flushed our routes (see config/README.md).
//! Topology `TwoTors` (ECMP from the node), the ToRs reach the pod only through BGP; a pod
//! pings a host behind the ToRs at 100/s through two restarts in a row.

use ferrovia_testsupport::common;

use common::bfd::*;
use common::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Bird,
}

fn sigterm_restart(tag: &str, kind: Kind) {
    let lock = net_lock();
    let t = TwoTors::new(&lock, tag);
    let tor = |i: usize| match kind {
        Kind::Bird => Tor::bird_graceful(&t, i, &node_addr(i), FERROVIA_AS, 90),
    };
    let _tors = [tor(0), tor(1)];
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
        "measured (loaded machine): {kind:?} ToRs with BFD, 2 SIGTERM restarts: {} of {sent} lost over {ran:?}",
        sent - received
    );
    assert_eq!(
        sent, received,
        "no ping lost across SIGTERM restarts with BFD"
    );
}

#[test]
fn bird_tors_bfd_graceful_sigterm_restart_loses_nothing() {
    sigterm_restart("bfdr-b", Kind::Bird);
}
