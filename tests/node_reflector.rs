//! Route reflectors from the datastore: four agents share one SQLite datastore with the
//! mesh off; `ferrovia node set NAME --route-reflector-cluster-id` makes two of them
//! reflectors. Every other node then peers with the reflectors only, the reflectors with
//! every node and each other, and every node routes every block natively (next hop the
//! originator). Taking one reflector's role away leaves the nodes with the other.

use ferrovia_testsupport::common;

use common::cluster::{Cluster, CONVERGE};
use common::{wait_until, POLL};

/// Node i's sessions as (address, type), Established ones only.
fn sessions(c: &Cluster, i: u8) -> Result<Vec<(String, String)>, String> {
    let s = c.node(i).status()?;
    let mut v: Vec<(String, String)> = s["peers"]
        .as_array()
        .ok_or("no peers")?
        .iter()
        .filter(|p| p["state"] == "Established")
        .map(|p| {
            (
                p["address"].as_str().unwrap_or("").to_string(),
                p["type"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    v.sort();
    Ok(v)
}

fn expect_sessions(c: &Cluster, i: u8, want: &[(&str, &str)]) -> Result<(), String> {
    let got = sessions(c, i)?;
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, t)| (a.to_string(), t.to_string()))
        .collect();
    if got == want {
        Ok(())
    } else {
        Err(format!("node{i}: {got:?}, want {want:?}"))
    }
}

#[test]
fn with_the_mesh_off_nodes_peer_only_with_the_datastores_reflectors_and_route_through_them() {
    let c = Cluster::with_bgp("rrds", 4, "", ", mesh: false");
    wait_until("four nodes registered", CONVERGE, POLL, || {
        let out = c.cli(&["node", "list", "--json"]);
        if (1..=4).all(|i| out.contains(&format!("\"node{i}\""))) {
            Ok(())
        } else {
            Err(out)
        }
    });
    for n in ["node3", "node4"] {
        c.cli(&[
            "node",
            "set",
            n,
            "--route-reflector-cluster-id",
            "198.18.0.3",
        ]);
    }
    let list: serde_json::Value =
        serde_json::from_str(&c.cli(&["node", "list", "--json"])).expect("json");
    let reflectors: Vec<&str> = list
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["routeReflectorClusterId"] == "198.18.0.3")
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(reflectors, ["node3", "node4"], "{list}");

    let rrs = [("198.18.0.3", "rr"), ("198.18.0.4", "rr")];
    for i in 1..=2 {
        wait_until(
            "a node peers with the two reflectors only",
            CONVERGE,
            POLL,
            || expect_sessions(&c, i, &rrs),
        );
    }
    wait_until(
        "reflector node3: two clients and the other reflector",
        CONVERGE,
        POLL,
        || {
            expect_sessions(
                &c,
                3,
                &[
                    ("198.18.0.1", "rr-client"),
                    ("198.18.0.2", "rr-client"),
                    ("198.18.0.4", "rr-mesh"),
                ],
            )
        },
    );
    wait_until(
        "every block routed via its originator everywhere",
        CONVERGE,
        POLL,
        || c.routed(&[1, 2, 3, 4]),
    );
    // node1 learned node2's block from a reflector, next hop node2.
    let routes = c.node(1).routes().expect("routes");
    let r = routes
        .iter()
        .find(|r| r["prefix"] == "10.244.2.0/26")
        .unwrap_or_else(|| panic!("no 10.244.2.0/26 in {routes:?}"));
    assert!(
        r["peer"] == "198.18.0.3" || r["peer"] == "198.18.0.4",
        "{r}"
    );
    assert_eq!(r["nextHops"], serde_json::json!(["198.18.0.2"]), "{r}");
    // Pod to pod across the reflected routes.
    wait_until("pod ping node1 → node2", CONVERGE, POLL, || {
        let out = c.node(1).ns.exec(&[
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "-I",
            "10.244.1.1",
            "10.244.2.1",
        ]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stdout).into_owned())
        }
    });

    // node4 stops being a reflector: the others keep node3 only; routes stay.
    c.cli(&[
        "node",
        "set",
        "node4",
        "--route-reflector-cluster-id",
        "none",
    ]);
    for i in [1, 2, 4] {
        wait_until("only node3 is a reflector now", CONVERGE, POLL, || {
            expect_sessions(&c, i, &[("198.18.0.3", "rr")])
        });
    }
    wait_until(
        "still routed everywhere through node3",
        CONVERGE,
        POLL,
        || c.routed(&[1, 2, 3, 4]),
    );
}
