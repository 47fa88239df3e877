//! The agent accepts BGP connections only from configured peers: a connection from any
//! other address is closed at once, before an OPEN is sent, and the agent says so.

use ferrovia_testsupport::common;

use common::{net_lock, wait_until, Ferrovia, FerroviaConfig, Pair};
use std::time::Duration;

#[test]
fn a_connection_from_an_address_that_is_not_a_peer_is_closed_without_an_open() {
    let lock = net_lock();
    let pair = Pair::new(&lock, "strange");
    // The only configured peer is 198.18.0.200; the other namespace is 198.18.0.254.
    let mut cfg = FerroviaConfig::node1(64512, 65000, &[]);
    cfg.peers[0].address = "198.18.0.200".into();
    cfg.peers[0].passive = true;
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
        "the refusal is logged",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let log = agent.log_text();
            if log.contains("refused a BGP connection")
                && log.contains("198.18.0.254 is not a configured peer")
            {
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
fn a_connection_from_outside_every_peer_and_range_is_still_refused() {
    let lock = net_lock();
    let pair = Pair::new(&lock, "strange2");
    // A peer range that does not hold 198.18.0.254, and one configured peer elsewhere.
    let mut cfg = FerroviaConfig::node1(64512, 65000, &[]);
    cfg.peers[0].address = "198.18.0.200".into();
    cfg.peers[0].passive = true;
    cfg.extra_bgp = "  peerRanges:\n    - { cidr: 198.18.0.0/25, asNumber: 64512 }\n".into();
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
        "the refusal is logged, naming the ranges",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let log = agent.log_text();
            if log.contains("198.18.0.254 is not a configured peer and in no peer range") {
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
