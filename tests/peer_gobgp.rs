//! ferrovia against a real GoBGP peer (GUIDE §4): eBGP and iBGP, v4+v6 over one session,
//! withdrawals both ways, reconnection, OPEN errors, hold timer.

use ferrovia_testsupport::common;

use common::scenarios::*;

#[test]
fn ebgp_exchange_and_withdraw() {
    exchange_and_withdraw("gob-e", start_gobgp, true);
}

#[test]
fn ibgp_exchange_and_withdraw() {
    exchange_and_withdraw("gob-i", start_gobgp, false);
}

#[test]
fn reconnects_after_peer_restart() {
    reconnect_after_peer_restart("gob-rc", start_gobgp);
}

#[test]
fn hold_timer_expires_when_peer_freezes() {
    hold_timer_expiry("gob-ht", start_gobgp);
}

#[test]
fn ferrovia_refuses_wrong_peer_as() {
    // The counter, as GoBGP logs no NOTIFICATION received outside Established.
    ferrovia_expects_wrong_as("gob-as", start_gobgp, &["has received a notification"]);
}

#[test]
fn peer_refuses_ferrovia_as() {
    peer_expects_wrong_as("gob-asr", start_gobgp, &["sent notification"]);
}

#[test]
fn ibgp_duplicate_router_id_is_bad_bgp_identifier() {
    ibgp_same_router_id("gob-id", start_gobgp, &["bad bgp identifier"]);
}

#[test]
fn hold_time_2_is_unacceptable() {
    peer_offers_hold_time_2("gob-h2", start_gobgp, &["has received a notification"]);
}

#[test]
fn communities_both_ways_ebgp() {
    communities_both_ways("gob-c", start_gobgp);
}

#[test]
fn gtsm_one_hop_establishes_with_ttl_min() {
    gtsm_one_hop_establishes("gob-g1", start_gobgp);
}

#[test]
fn gtsm_two_hops_away_is_refused_with_ttl_min() {
    gtsm_two_hops_refused("gob-g2", start_gobgp);
}

#[test]
fn gtsm_off_two_hops_away_establishes() {
    gtsm_off_two_hops_establishes("gob-g0", start_gobgp);
}
