//! ferrovia against a real FRR peer (zebra + bgpd) (GUIDE §4): eBGP and iBGP, v4+v6 over one session,
//! withdrawals both ways, reconnection, TCP MD5, OPEN errors, hold timer.

use ferrovia_testsupport::common;

use common::scenarios::*;

#[test]
fn ebgp_exchange_and_withdraw() {
    exchange_and_withdraw("frr-e", start_frr, true);
}

#[test]
fn ibgp_exchange_and_withdraw() {
    exchange_and_withdraw("frr-i", start_frr, false);
}

#[test]
fn reconnects_after_peer_restart() {
    reconnect_after_peer_restart("frr-rc", start_frr);
}

#[test]
fn hold_timer_expires_when_peer_freezes() {
    hold_timer_expiry("frr-ht", start_frr);
}

#[test]
fn md5_right_password_establishes() {
    md5_right_password("frr-md5", start_frr);
}

#[test]
fn md5_wrong_password_never_establishes() {
    md5_wrong_password("frr-md5x", start_frr, Some("not-the-right-one"));
}

#[test]
fn md5_missing_password_never_establishes() {
    md5_wrong_password("frr-md5n", start_frr, None);
}

#[test]
fn ferrovia_refuses_wrong_peer_as() {
    // FRR: lastNotificationReason / lastResetDueTo
    ferrovia_expects_wrong_as("frr-as", start_frr, &["bad peer as", "received"]);
}

#[test]
fn peer_refuses_ferrovia_as() {
    peer_expects_wrong_as("frr-asr", start_frr, &["bad peer as", "send"]);
}

#[test]
fn ibgp_duplicate_router_id_is_bad_bgp_identifier() {
    ibgp_same_router_id("frr-id", start_frr, &["bad bgp identifier"]);
}

#[test]
fn gtsm_one_hop_establishes_with_ttl_security_hops_1() {
    gtsm_one_hop_establishes("frr-gt1", start_frr);
}

#[test]
fn gtsm_peer_two_hops_away_is_refused() {
    gtsm_two_hops_refused("frr-gt2", start_frr);
}

#[test]
fn gtsm_off_peer_two_hops_away_establishes_with_ebgp_multihop() {
    gtsm_off_two_hops_establishes("frr-gt0", start_frr);
}
