//! The agent under its supervisor: when one of its tasks dies it exits non-zero naming the
//! task, keeps its kernel routes and drops its sessions without a CEASE; and it registers in
//! the datastore only once its BGP port accepts connections and it knows its peers.
//!
//! Killing one task of a real agent uses the debug-build-only hook
//! `FERROVIA_TEST_FAIL_TASK=NAME[:panic]` (the task fails, or panics, on SIGUSR1): no task
//! of a healthy agent can be made to end from outside (they retry whatever can be retried).

use ferrovia_testsupport::common;

use common::cluster::{libc_sigterm, Cluster, CONVERGE, POLL};
use common::proc::Proc;
use common::wait_until;
use serde_json::Value;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ferrovia");

/// Generous: only a broken agent takes this long to exit.
const EXIT: Duration = Duration::from_secs(30);

/// Length of a log file now, to read what is written after.
fn log_len(c: &Cluster, i: u8) -> usize {
    std::fs::read_to_string(c.dir.path().join(format!("n{i}.log")))
        .map(|s| s.len())
        .unwrap_or(0)
}

/// What node `i`'s log gained after `from`.
fn log_since(c: &Cluster, i: u8, from: usize) -> String {
    let s = std::fs::read_to_string(c.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
    s.get(from..).unwrap_or_default().to_string()
}

/// Starts node `i`'s agent again with its config and `envs` added (its previous agent must
/// be stopped).
fn start_with(c: &mut Cluster, i: u8, envs: &[(&str, &str)]) {
    let n = c.node_mut(i);
    assert!(n.agent.is_none(), "node{i}'s agent is stopped first");
    let conf = n.dir.join(format!("n{i}.yaml")).display().to_string();
    let log = n.dir.join(format!("n{i}.log"));
    let mut all = vec![("FERROVIA_LOG", "info")];
    all.extend_from_slice(envs);
    n.agent = Some(Proc::spawn(
        n.ns.name(),
        &[BIN, "agent", "--config", &conf],
        &log,
        &all,
    ));
}

/// Waits for node `i`'s agent to exit and returns its exit code (None: killed by a signal).
fn wait_exit(c: &mut Cluster, i: u8) -> Option<i32> {
    let n = c.node_mut(i);
    let status = wait_until(&format!("node{i}'s agent exits"), EXIT, POLL, || {
        match n.agent.as_mut().and_then(|p| p.try_wait()) {
            Some(st) => Ok(st),
            None => Err("still running"),
        }
    });
    n.agent = None;
    status.code()
}

fn readyz(c: &Cluster, i: u8) -> Result<(), String> {
    let out = c.node(i).ns.exec(&[
        "curl",
        "-s",
        "-w",
        " %{http_code}",
        "--max-time",
        "3",
        "http://127.0.0.1:9091/readyz",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if text.trim_end().ends_with(" 200") {
        Ok(())
    } else {
        Err(text)
    }
}

/// Node 1's own blocks as blackholes and node 2's via node 2, both families.
fn node1_routes(c: &Cluster) -> Result<(), String> {
    let n = c.node(1);
    for w in [
        "blackhole 10.244.1.0/26",
        "blackhole fd00:10:244:1::/122",
        "10.244.2.0/26 via 198.18.0.2 dev eth0",
        "fd00:10:244:2::/122 via fd00:198:18::2 dev eth0",
    ] {
        if !n.has_route(w) {
            return Err(format!("node1 lacks `{w}`; has {:?}", n.kernel_routes()));
        }
    }
    Ok(())
}

/// Restarts node 1 with the fault hook on `fault`, waits until it is meshed and ready,
/// fires the hook and checks the exit. Returns node 1's log of that run.
fn kill_one_task(c: &mut Cluster, fault: &str, expect: &str) -> String {
    let from = log_len(c, 1);
    start_with(c, 1, &[("FERROVIA_TEST_FAIL_TASK", fault)]);
    let task = fault.split(':').next().unwrap_or(fault);
    wait_until("the fault hook is armed", CONVERGE, POLL, || {
        let log = log_since(c, 1, from);
        if log.contains("this task fails on SIGUSR1") && log.contains(&format!("task=\"{task}\"")) {
            Ok(())
        } else {
            Err(log)
        }
    });
    wait_until("node1 meshed again", CONVERGE, POLL, || c.established(1, 1));
    wait_until("node1 ready", CONVERGE, POLL, || readyz(c, 1));
    wait_until("node1's routes", CONVERGE, POLL, || node1_routes(c));
    let from2 = log_len(c, 2);

    c.node(1)
        .agent
        .as_ref()
        .expect("running")
        .signal(libc::SIGUSR1);
    let code = wait_exit(c, 1);
    let log = log_since(c, 1, from);
    assert_eq!(
        code,
        Some(1),
        "exit code after the {task} task died:\n{log}"
    );
    assert!(
        log.contains(expect),
        "the log names the task: {expect:?}\n{log}"
    );
    assert!(
        log.contains("exiting so that the node's supervisor restarts the agent"),
        "{log}"
    );

    // Nothing deleted on the way out.
    node1_routes(c).unwrap_or_else(|e| panic!("after the exit: {e}\n{log}"));

    // The session just dropped: node2 saw the connection close, not a NOTIFICATION.
    let down = wait_until("node2 sees node1's session drop", CONVERGE, POLL, || {
        let l = log_since(c, 2, from2);
        let errors: Vec<String> = l
            .lines()
            .filter(|x| x.contains("BGP session error") && x.contains("198.18.0.1"))
            .map(str::to_string)
            .collect();
        if errors.is_empty() {
            Err(l)
        } else {
            Ok(errors)
        }
    });
    assert!(
        down[0].contains("connection closed by peer or lost"),
        "node2's first error for node1: {down:?}"
    );
    assert!(
        !down.iter().any(|l| l.contains("NOTIFICATION")),
        "no CEASE or other NOTIFICATION on this path: {down:?}"
    );
    log
}

#[test]
fn an_agent_whose_task_fails_or_panics_exits_non_zero_naming_it_and_keeps_its_routes() {
    let mut c = Cluster::new("sup", 2);
    for i in 1..=2 {
        wait_until("full mesh", CONVERGE, POLL, || c.established(i, 1));
    }
    wait_until("blocks in every kernel", CONVERGE, POLL, || {
        c.routed(&[1, 2])
    });
    c.node_mut(1).kill(libc_sigterm());

    kill_one_task(
        &mut c,
        "kernel",
        "the kernel task failed: FERROVIA_TEST_FAIL_TASK asked the kernel task to fail",
    );
    kill_one_task(
        &mut c,
        "mesh:panic",
        "the mesh task panicked: FERROVIA_TEST_FAIL_TASK asked the mesh task to panic",
    );
    kill_one_task(
        &mut c,
        "speaker",
        "the speaker task failed: FERROVIA_TEST_FAIL_TASK asked the speaker task to fail",
    );

    // Restarted as systemd or the kubelet would: meshed and routing again.
    start_with(&mut c, 1, &[]);
    wait_until("node1 meshed after the restart", CONVERGE, POLL, || {
        c.established(1, 1)
    });
    wait_until("blocks in every kernel again", CONVERGE, POLL, || {
        c.routed(&[1, 2])
    });
}

fn node_names(c: &Cluster) -> Vec<String> {
    let out = c.cli(&["node", "list", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_node_registers_only_once_its_bgp_port_accepts_connections_and_it_knows_its_peers() {
    let mut c = Cluster::new("reg", 2);
    wait_until("both nodes registered", CONVERGE, POLL, || {
        let names = node_names(&c);
        if names.contains(&"node1".to_string()) && names.contains(&"node2".to_string()) {
            Ok(())
        } else {
            Err(names)
        }
    });
    c.node_mut(2).kill(libc_sigterm());
    c.cli(&["node", "remove", "node2"]);

    // Something else listens on node2's BGP port (SO_REUSEADDR like the agent's speaker, so
    // that connections of the stopped agent still in TIME_WAIT do not matter): the speaker
    // cannot listen, so the agent must stop before it registers.
    let blocker_log = c.dir.path().join("blocker.log");
    let mut blocker = Proc::spawn(
        c.node(2).ns.name(),
        &[
            "python3",
            "-c",
            "import socket, time\n\
             s = socket.socket(socket.AF_INET6)\n\
             s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n\
             s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('::', 179))\n\
             s.listen()\n\
             print('listening', flush=True)\n\
             time.sleep(600)\n",
        ],
        &blocker_log,
        &[],
    );
    wait_until("the blocker listens on :179", CONVERGE, POLL, || {
        let l = std::fs::read_to_string(&blocker_log).unwrap_or_default();
        if l.contains("listening") {
            Ok(())
        } else {
            Err(l)
        }
    });
    let from = log_len(&c, 2);
    start_with(&mut c, 2, &[]);
    let code = wait_exit(&mut c, 2);
    let log = log_since(&c, 2, from);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("cannot listen on"), "{log}");
    assert_eq!(
        node_names(&c),
        ["node1"],
        "node2 is not registered by an agent whose speaker could not listen"
    );
    blocker.kill();

    // Now it can listen: at the first moment its record is seen, the port accepts a
    // connection and the agent already has node1 as a peer.
    start_with(&mut c, 2, &[]);
    wait_until(
        "node2 registered",
        CONVERGE,
        Duration::from_millis(20),
        || {
            if node_names(&c).contains(&"node2".to_string()) {
                Ok(())
            } else {
                Err("not yet")
            }
        },
    );
    let probe = c.node(1).ns.exec(&[
        "python3",
        "-c",
        "import socket; socket.create_connection(('198.18.0.2', 179), timeout=5); print('connected')",
    ]);
    assert!(
        String::from_utf8_lossy(&probe.stdout).contains("connected"),
        "node2's BGP port accepts once node2 is registered: {}",
        String::from_utf8_lossy(&probe.stderr)
    );
    let status = c.node(2).status().expect("node2 status");
    let peers: Vec<&str> = status["peers"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["address"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        peers.contains(&"198.18.0.1"),
        "node2 knew node1 as a peer when it registered: {status}"
    );
    for i in 1..=2 {
        wait_until("full mesh again", CONVERGE, POLL, || c.established(i, 1));
    }
}
