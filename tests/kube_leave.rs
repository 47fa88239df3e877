//! Leaving on the Kubernetes datastore (issue 11), against a real kube-apiserver: an agent
//! whose Node object is deleted drains (its routes withdrawn, its kernel state removed, exit
//! 0); SIGTERM while the agent's DaemonSet exists is a graceful restart (kernel routes stay);
//! SIGTERM after the DaemonSet is deleted (an uninstall) is a drain.

use ferrovia_testsupport::common;

use common::cluster::{libc_sigterm, Cluster, CONVERGE, POLL};
use common::wait_until;
use std::process::ExitStatus;
use std::time::Duration;

/// The DaemonSet the agents belong to (what the chart tells them through the environment).
const DS: &str = "/apis/apps/v1/namespaces/kube-system/daemonsets";

/// Waits (generously: bgp.drainWait is 10 s) until node `i`'s agent exited by itself.
fn exited(c: &mut Cluster, i: u8, what: &str) -> ExitStatus {
    wait_until(what, Duration::from_secs(120), POLL, || {
        match c.node_mut(i).agent.as_mut().and_then(|a| a.try_wait()) {
            Some(s) => Ok(s),
            None => Err("still running"),
        }
    })
}

#[test]
fn a_deleted_node_drains_and_sigterm_drains_only_once_the_daemonset_is_gone() {
    // Every agent this test starts inherits the chart's variables.
    std::env::set_var("FERROVIA_DAEMONSET_NAME", "ferrovia");
    std::env::set_var("FERROVIA_DAEMONSET_NAMESPACE", "kube-system");
    let cp_ds = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "ferrovia", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"app": "ferrovia"}},
            "template": {
                "metadata": {"labels": {"app": "ferrovia"}},
                "spec": {"containers": [{"name": "agent", "image": "ferrovia"}]}
            }
        }
    });
    let mut c = Cluster::kubernetes("kleave", 3, "");
    c.control_plane().ensure(DS, &cp_ds);
    for i in 1..=3 {
        wait_until("full mesh from the Node objects", CONVERGE, POLL, || {
            c.established(i, 2)
        });
    }
    wait_until("three nodes routed", CONVERGE, POLL, || {
        c.routed(&[1, 2, 3])
    });

    // The DaemonSet exists: SIGTERM is a restart; the kernel routes stay.
    c.node_mut(3)
        .agent
        .as_ref()
        .expect("running")
        .signal(libc_sigterm());
    let st = exited(&mut c, 3, "node3's agent stops for a restart");
    assert!(st.success(), "{st}: {}", c.node(3).log_text());
    let log = c.node(3).log_text();
    assert!(
        log.contains("SIGTERM: restarting") && !log.contains("drained"),
        "a restart, not a drain: {log}"
    );
    assert!(
        !c.node(3).kernel_routes().is_empty(),
        "a restart keeps node3's kernel routes"
    );
    c.node_mut(3).agent = None;
    let db = c.db.clone();
    c.node_mut(3).start(&db);
    wait_until("node3 back in the mesh", CONVERGE, POLL, || {
        c.established(3, 2)
    });

    // node2's Node object is deleted: its agent drains and stops.
    c.control_plane()
        .call("DELETE", "/api/v1/nodes/node2", None)
        .expect_status(200, "delete node2");
    let st = exited(&mut c, 2, "node2's agent drains and stops");
    let log = c.node(2).log_text();
    assert!(st.success(), "{st}: {log}");
    assert!(
        log.contains("this node's record was removed") && log.contains("drained and stopped"),
        "{log}"
    );
    let left = c.node(2).kernel_routes();
    assert!(left.is_empty(), "node2 keeps routes of ours: {left:?}");
    for i in [1u8, 3] {
        wait_until("node2's block withdrawn", CONVERGE, POLL, || {
            match c.node(i).has_route("10.244.2.0/26") {
                false => Ok(()),
                true => Err(c.node(i).kernel_routes()),
            }
        });
    }

    // The DaemonSet is deleted (an uninstall), then SIGTERM: node3 drains.
    c.control_plane()
        .call("DELETE", &format!("{DS}/ferrovia"), None)
        .expect_status(200, "delete the DaemonSet");
    c.node_mut(3)
        .agent
        .as_ref()
        .expect("running")
        .signal(libc_sigterm());
    let st = exited(&mut c, 3, "node3's agent drains at SIGTERM and stops");
    let log = c.node(3).log_text();
    assert!(st.success(), "{st}: {log}");
    assert!(
        log.contains("an uninstall") && log.contains("drained and stopped (uninstall)"),
        "{log}"
    );
    let left = c.node(3).kernel_routes();
    assert!(left.is_empty(), "node3 keeps routes of ours: {left:?}");
    wait_until(
        "node3's block withdrawn at node1",
        CONVERGE,
        POLL,
        || match c.node(1).has_route("10.244.3.0/26") {
            false => Ok(()),
            true => Err(c.node(1).kernel_routes()),
        },
    );
}
