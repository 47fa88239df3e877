//! ferrovia against a real BIRD 2 peer (GUIDE §4): eBGP and iBGP, v4+v6 over one session,
//! withdrawals both ways, reconnection, TCP MD5, OPEN errors, hold timer.

use ferrovia_testsupport::common;

use common::scenarios::*;

#[test]
fn ebgp_exchange_and_withdraw() {
    exchange_and_withdraw("bird-e", start_bird, true);
}

#[test]
fn ibgp_exchange_and_withdraw() {
    exchange_and_withdraw("bird-i", start_bird, false);
}

#[test]
fn reconnects_after_peer_restart() {
    reconnect_after_peer_restart("bird-rc", start_bird);
}

#[test]
fn hold_timer_expires_when_peer_freezes() {
    hold_timer_expiry("bird-ht", start_bird);
}

#[test]
fn md5_right_password_establishes() {
    md5_right_password("bird-md5", start_bird);
}

#[test]
fn md5_wrong_password_never_establishes() {
    md5_wrong_password("bird-md5x", start_bird, Some("not-the-right-one"));
}

#[test]
fn md5_missing_password_never_establishes() {
    md5_wrong_password("bird-md5n", start_bird, None);
}

#[test]
fn ferrovia_refuses_wrong_peer_as() {
    // BIRD: "Last error: Received: Bad peer AS"
    ferrovia_expects_wrong_as("bird-as", start_bird, &["received", "bad peer as"]);
}

#[test]
fn peer_refuses_ferrovia_as() {
    peer_expects_wrong_as("bird-asr", start_bird, &["bad peer as"]);
}

#[test]
fn ibgp_duplicate_router_id_is_bad_bgp_identifier() {
    ibgp_same_router_id("bird-id", start_bird, &["bad bgp identifier"]);
}

#[test]
fn communities_both_ways_ebgp() {
    communities_both_ways("bird-c", start_bird);
}

#[test]
fn gtsm_one_hop_establishes_with_ttl_security_on() {
    gtsm_one_hop_establishes("bird-gt1", start_bird);
}

#[test]
fn gtsm_peer_two_hops_away_is_refused() {
    gtsm_two_hops_refused("bird-gt2", start_bird);
}

#[test]
fn gtsm_off_peer_two_hops_away_establishes_with_multihop() {
    gtsm_off_two_hops_establishes("bird-gt0", start_bird);
}
