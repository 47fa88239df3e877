//! The agent accepts BGP connections only from configured peers: a connection from any
//! other address is closed at once, before an OPEN is sent, and the agent says so.

use ferrovia_testsupport::common;

use common::{net_lock, wait_until, Ferrovia, FerroviaConfig, Pair};
use std::time::Duration;

/// Starts an agent whose only configured peer is 198.18.0.200 (`extra_bgp` appended to its
/// `bgp:` section), connects to it from 198.18.0.254 (not a peer), and asserts: the connection
/// is closed with no byte sent (no OPEN to a stranger), the log contains every string of `logged`, and
/// the stranger did not become a peer.
fn stranger_refused(tag: &str, extra_bgp: &str, logged: &[&str]) {
    let lock = net_lock();
    let pair = Pair::new(&lock, tag);
    let mut cfg = FerroviaConfig::node1(64512, 65000, &[]);
    cfg.peers[0].address = "198.18.0.200".into();
    cfg.peers[0].passive = true;
    cfg.extra_bgp = extra_bgp.into();
    let agent = Ferrovia::start(&pair.f, cfg);
    let probe = "import socket\n\
                 s = socket.create_connection(('198.18.0.1', 179), timeout=3)\n\
                 s.settimeout(3)\n\
                 try:\n    data = s.recv(4096)\nexcept ConnectionResetError:\n    data = b''\n\
                 print(len(data))\n";
    let got = wait_until(
        "the stranger's connection closed",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            let out = pair.p.exec(&["python3", "-c", probe]);
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    );
    assert_eq!(got, "0", "closed with no byte sent (no OPEN to a stranger)");
    wait_until(
        &format!("the refusal is logged ({logged:?})"),
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let log = agent.log_text();
            if logged.iter().all(|l| log.contains(l)) {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
    let status = agent.status().expect("status");
    let peers: Vec<String> = status["peers"]
        .as_array()
        .map(|a| a.iter().map(|p| p["address"].to_string()).collect())
        .unwrap_or_default();
    assert_eq!(
        peers,
        ["\"198.18.0.200\""],
        "the stranger did not become a peer"
    );
}

#[test]
fn a_connection_from_an_address_that_is_not_a_peer_is_closed_without_an_open() {
    stranger_refused(
        "strange",
        "",
        &[
            "refused a BGP connection",
            "198.18.0.254 is not a configured peer",
        ],
    );
}

#[test]
fn a_connection_from_outside_every_peer_and_range_is_still_refused() {
    // A peer range that does not hold 198.18.0.254, and one configured peer elsewhere.
    stranger_refused(
        "strange2",
        "  peerRanges:\n    - { cidr: 198.18.0.0/25, asNumber: 64512 }\n",
        &["198.18.0.254 is not a configured peer and in no peer range"],
    );
}
