//! `ferrovia agent` with a bad configuration: exit code 2 and a message naming the key. Run in
//! an empty namespace, so that an agent which wrongly starts cannot reach anything.

use ferrovia_testsupport::common;

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ferrovia");

fn run_agent(yaml: &str) -> (Option<i32>, String) {
    let lock = common::net_lock();
    let ns = common::Netns::new(&lock, "cfg");
    let dir = tempfile::tempdir().expect("tempdir");
    let conf = dir.path().join("ferrovia.yaml");
    std::fs::write(&conf, yaml).expect("write config");
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns.name(), BIN, "agent", "--config"])
        .arg(&conf)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn ferrovia");
    // Bounded: a bad config must make it exit at once.
    let start = std::time::Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if start.elapsed() > std::time::Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ferrovia agent still running 30 s after being given a bad config:\n{yaml}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD_HEAD: &str =
    "node: { name: node1, asNumber: 64512, routerId: 198.18.0.1, addresses: [198.18.0.1] }\n";

#[test]
fn unknown_key_is_refused_with_its_name() {
    let yaml = format!(
        "{GOOD_HEAD}bgp:\n  holdTme: 9\n  peers: [{{ address: 198.18.0.254, asNumber: 65000 }}]\n  originate: [10.244.1.0/26]\nstatus: {{ socket: /nonexistent/ferrovia.sock }}\n"
    );
    let (code, err) = run_agent(&yaml);
    assert_eq!(
        code,
        Some(2),
        "exit code for an unknown key; stderr:\n{err}"
    );
    assert!(
        err.contains("holdTme"),
        "stderr should name the unknown key holdTme:\n{err}"
    );
}

#[test]
fn unknown_peer_key_is_refused_with_its_name() {
    let yaml = format!(
        "{GOOD_HEAD}bgp:\n  peers: [{{ address: 198.18.0.254, asNumber: 65000, pasword: x }}]\n  originate: [10.244.1.0/26]\nstatus: {{ socket: /nonexistent/ferrovia.sock }}\n"
    );
    let (code, err) = run_agent(&yaml);
    assert_eq!(
        code,
        Some(2),
        "exit code for an unknown peer key; stderr:\n{err}"
    );
    assert!(
        err.contains("pasword"),
        "stderr should name the unknown key pasword:\n{err}"
    );
}

#[test]
fn bad_value_is_refused_with_its_key() {
    let yaml = format!(
        "{GOOD_HEAD}bgp:\n  peers: [{{ address: 198.18.0.254, asNumber: not-a-number }}]\n  originate: [10.244.1.0/26]\nstatus: {{ socket: /nonexistent/ferrovia.sock }}\n"
    );
    let (code, err) = run_agent(&yaml);
    assert_eq!(
        code,
        Some(2),
        "exit code for a bad asNumber; stderr:\n{err}"
    );
    assert!(
        err.contains("asNumber"),
        "stderr should name asNumber:\n{err}"
    );
}

#[test]
fn bad_prefix_is_refused_with_its_key() {
    let yaml = format!(
        "{GOOD_HEAD}bgp:\n  peers: [{{ address: 198.18.0.254, asNumber: 65000 }}]\n  originate: [10.244.1.0/33]\nstatus: {{ socket: /nonexistent/ferrovia.sock }}\n"
    );
    let (code, err) = run_agent(&yaml);
    assert_eq!(code, Some(2), "exit code for a bad prefix; stderr:\n{err}");
    assert!(
        err.contains("originate"),
        "stderr should name originate:\n{err}"
    );
}

#[test]
fn ttl_security_out_of_range_is_refused_with_its_key() {
    for hops in ["0", "255"] {
        let yaml = format!(
            "{GOOD_HEAD}bgp:\n  peers: [{{ address: 198.18.0.254, asNumber: 65000, ttlSecurity: {hops} }}]\n  originate: [10.244.1.0/26]\nstatus: {{ socket: /nonexistent/ferrovia.sock }}\n"
        );
        let (code, err) = run_agent(&yaml);
        assert_eq!(
            code,
            Some(2),
            "exit code for ttlSecurity {hops}; stderr:\n{err}"
        );
        assert!(
            err.contains("bgp.peers[0].ttlSecurity") && err.contains("254"),
            "stderr should name bgp.peers[0].ttlSecurity and the range:\n{err}"
        );
    }
}
