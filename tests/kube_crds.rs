//! The CRDs of the Kubernetes datastore (`ferrovia crds`) on a real kube-apiserver 1.20.2:
//! they are accepted and Established, the records the agent writes fit their schemas, and the
//! API server refuses what the agent would refuse (a bad CIDR, a block size outside its
//! family's range, an AS of 0, a bad peer address).

use ferrovia_testsupport::common;

use common::kube::{segment, ControlPlane};
use common::{bin, net_lock, output_bounded, CLI_LIMIT};
use serde::Deserialize;
use serde_json::{json, Value};
use std::process::Command;

/// `ferrovia crds`, parsed: one JSON value per YAML document.
fn crds() -> (String, Vec<Value>) {
    let out = output_bounded(Command::new(bin()).arg("crds"), CLI_LIMIT)
        .unwrap_or_else(|e| panic!("ferrovia crds: {e}"));
    assert!(
        out.status.success(),
        "ferrovia crds: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8 YAML");
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("a YAML document"))
        .collect();
    (text, docs)
}

#[test]
fn crds_are_a_deterministic_stream_of_six_cluster_scoped_kinds() {
    let (first, docs) = crds();
    let (second, _) = crds();
    assert_eq!(first, second, "two runs print the same bytes");
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["spec"]["names"]["kind"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        kinds,
        [
            "IPPool",
            "IPAMBlock",
            "BlockAffinity",
            "IPAMHandle",
            "BGPPeer",
            "BGPConfiguration"
        ]
    );
    for d in &docs {
        assert_eq!(d["kind"], "CustomResourceDefinition", "{d}");
        assert_eq!(d["spec"]["group"], "ferrovia.io", "{d}");
        assert_eq!(d["spec"]["scope"], "Cluster", "{d}");
        assert_eq!(d["spec"]["versions"][0]["name"], "v1alpha1", "{d}");
    }
}

fn post(cp: &ControlPlane, plural: &str, kind: &str, name: &str, spec: Value) -> (u16, String) {
    let r = cp.call(
        "POST",
        &format!("/apis/ferrovia.io/v1alpha1/{plural}"),
        Some(&json!({
            "apiVersion": "ferrovia.io/v1alpha1",
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        })),
    );
    (r.status, r.body)
}

#[test]
fn the_api_server_establishes_the_crds_and_refuses_bad_pools_and_peers() {
    let lock = net_lock();
    let seg = segment(&lock, "kcrds");
    let cp = ControlPlane::start(&lock, &seg);
    let (_, docs) = crds();
    cp.install_crds(&docs);

    // What the agent writes is accepted, and read back unchanged.
    let good: [(&str, &str, &str, Value); 6] = [
        (
            "ippools",
            "IPPool",
            "10-244-0-0-16",
            json!({"cidr": "10.244.0.0/16", "blockSize": 26, "disabled": false, "natOutgoing": true, "createdMs": 1764633600000u64}),
        ),
        (
            "ippools",
            "IPPool",
            "fd00-10-244---48",
            json!({"cidr": "fd00:10:244::/48", "blockSize": 122, "disabled": true, "natOutgoing": false, "createdMs": 1}),
        ),
        (
            "ipamblocks",
            "IPAMBlock",
            "10-244-1-0-26",
            json!({"cidr": "10.244.1.0/26", "affinity": "node1",
                   "allocations": [{"ordinal": 0, "handle": "3f2ac1:eth0"},
                                   {"ordinal": 5, "handle": "abc:eth1", "node": "node2"}],
                   "emptySinceMs": 12}),
        ),
        (
            "ipamhandles",
            "IPAMHandle",
            "3f2ac1.eth0",
            json!({"containerId": "3f2ac1", "interface": "eth0", "node": "node1",
                   "attributes": {"namespace": "default", "pod": "web-0"},
                   "addresses": [{"ip": "10.244.1.0", "block": "10.244.1.0/26"},
                                 {"ip": "fd00:10:244::5", "block": "fd00:10:244::/122"}]}),
        ),
        (
            "bgppeers",
            "BGPPeer",
            "tor1",
            json!({"name": "tor1", "address": "198.18.0.254", "asNumber": 4200000000u64,
                   "node": "node1", "passwordFile": "/etc/ferrovia/tor1.password"}),
        ),
        (
            "bgpconfigurations",
            "BGPConfiguration",
            "default",
            json!({"asNumber": 64512, "mesh": true, "listenPort": 179}),
        ),
    ];
    for (plural, kind, name, spec) in &good {
        let (status, body) = post(&cp, plural, kind, name, spec.clone());
        assert_eq!(status, 201, "create {kind} {name}: {body}");
        let back = cp
            .call(
                "GET",
                &format!("/apis/ferrovia.io/v1alpha1/{plural}/{name}"),
                None,
            )
            .expect_status(200, "read it back")
            .json();
        assert_eq!(&back["spec"], spec, "{kind} {name} kept as written");
    }

    // What the agent refuses, the API server refuses (422), naming the field.
    let bad: [(&str, &str, Value, &str); 9] = [
        (
            "ippools",
            "IPPool",
            json!({"cidr": "10.244.0.0", "blockSize": 26}),
            "cidr",
        ),
        (
            "ippools",
            "IPPool",
            json!({"cidr": "not-a-cidr/8", "blockSize": 26}),
            "cidr",
        ),
        (
            "ippools",
            "IPPool",
            json!({"cidr": "10.245.0.0/16", "blockSize": 40}),
            "blockSize",
        ),
        (
            "ippools",
            "IPPool",
            json!({"cidr": "10.245.0.0/16", "blockSize": 120}),
            "blockSize",
        ),
        (
            "ippools",
            "IPPool",
            json!({"cidr": "fd00:1::/48", "blockSize": 26}),
            "anyOf",
        ),
        (
            "bgppeers",
            "BGPPeer",
            json!({"name": "p", "address": "198.18.0.9", "asNumber": 0}),
            "asNumber",
        ),
        (
            "bgppeers",
            "BGPPeer",
            json!({"name": "p", "address": "198.18.0.9", "asNumber": 4294967296u64}),
            "asNumber",
        ),
        (
            "bgppeers",
            "BGPPeer",
            json!({"name": "p", "address": "198.18.0.300", "asNumber": 65000}),
            "address",
        ),
        (
            "bgpconfigurations",
            "BGPConfiguration",
            json!({"asNumber": 23456, "mesh": true, "listenPort": 179}),
            "asNumber",
        ),
    ];
    for (i, (plural, kind, spec, field)) in bad.iter().enumerate() {
        let name = format!("bad-{i}");
        let (status, body) = post(&cp, plural, kind, &name, spec.clone());
        assert_eq!(status, 422, "{kind} {spec} must be refused: {body}");
        assert!(body.contains(field), "the refusal names {field}: {body}");
        cp.call(
            "GET",
            &format!("/apis/ferrovia.io/v1alpha1/{plural}/{name}"),
            None,
        )
        .expect_status(404, "the refused object must not exist");
    }
}
