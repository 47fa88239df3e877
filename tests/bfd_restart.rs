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

fn sigterm_restart(tag: &str, kind: TorKind) {
    let r = restart_rounds(tag, kind, true, 2, true);
    assert!(
        r.log.matches("BFD sessions AdminDown").count() >= 2,
        "each SIGTERM set BFD AdminDown first"
    );
    eprintln!(
        "measured (loaded machine): {kind:?} ToRs with BFD, 2 SIGTERM restarts and 1 SIGKILL restart: {} of {} lost over {:?}",
        r.sent - r.received,
        r.sent,
        r.ran
    );
    assert_eq!(
        r.sent, r.received,
        "no ping lost across SIGTERM and SIGKILL restarts with BFD"
    );
}

#[test]
fn bird_tors_bfd_graceful_sigterm_restart_loses_nothing() {
    sigterm_restart("bfdr-b", TorKind::Bird);
}

#[test]
fn frr_tors_bfd_check_control_plane_failure_sigterm_restart_loses_nothing() {
    sigterm_restart("bfdr-f", TorKind::Frr);
}
