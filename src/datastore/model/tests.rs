use super::*;
use crate::datastore::sqlite::SqliteStore;
use crate::datastore::{DatastoreExt, Object};

/// The peers the node named `node` must have: the global ones and its own.
async fn peers_for(s: &SqliteStore, node: &str) -> Vec<PeerRecord> {
    let mut peers = list_peers(s).await.unwrap();
    peers.retain(|p| p.applies_to(node, &Default::default()));
    peers
}
use serde_json::json;

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = SqliteStore::open(dir.path().join("ferrovia.db")).unwrap();
    (dir, s)
}

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        name: name.to_string(),
        addresses: vec!["198.18.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
        as_number: None,
        router_id: "198.18.0.1".parse().unwrap(),
        blocks: vec!["10.244.1.0/26".parse().unwrap()],
        route_reflector_cluster_id: None,
        pod_cidrs: Vec::new(),
        labels: Default::default(),
    }
}

fn cluster() -> ClusterBgp {
    ClusterBgp {
        as_number: 64512,
        mesh: true,
        listen_port: 179,
        services: Default::default(),
    }
}

fn peer(name: &str, node: Option<&str>) -> PeerRecord {
    PeerRecord {
        name: name.to_string(),
        address: "198.18.1.1".parse().unwrap(),
        as_number: 65000,
        node: node.map(str::to_string),
        node_selector: None,
        password_file: None,
        ttl_security: None,
        bfd: None,
        safety: Default::default(),
    }
}

#[tokio::test]
async fn records_are_camel_case_json() {
    let mut n = node("a");
    n.as_number = Some(64600);
    assert_eq!(
        serde_json::to_value(&n).unwrap(),
        json!({
            "name": "a",
            "addresses": ["198.18.0.1", "fd00::1"],
            "asNumber": 64600,
            "routerId": "198.18.0.1",
            "blocks": ["10.244.1.0/26"],
        })
    );
    assert_eq!(
        serde_json::to_value(cluster()).unwrap(),
        json!({"asNumber": 64512, "mesh": true, "listenPort": 179})
    );
    let mut p = peer("tor", Some("a"));
    p.password_file = Some("/etc/ferrovia/tor.pw".into());
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({
            "name": "tor",
            "address": "198.18.1.1",
            "asNumber": 65000,
            "node": "a",
            "passwordFile": "/etc/ferrovia/tor.pw",
        })
    );
    // Absent options are omitted, and missing optional fields and unknown ones are fine.
    assert_eq!(
        serde_json::to_value(peer("rr", None)).unwrap(),
        json!({"name": "rr", "address": "198.18.1.1", "asNumber": 65000})
    );
    let old: NodeRecord = serde_json::from_value(
        json!({"name": "b", "routerId": "198.18.0.2", "futureField": {"x": 1}}),
    )
    .unwrap();
    assert_eq!(old.as_number, None);
    assert!(old.blocks.is_empty() && old.addresses.is_empty());
}

#[tokio::test]
async fn register_node_is_idempotent() {
    let (_dir, s) = store();
    let first = register_node(&s, &node("a")).await.unwrap();
    let rev = s.sync().revision().unwrap();
    let again = register_node(&s, &node("a")).await.unwrap();
    assert_eq!(again, first);
    assert_eq!(
        s.sync().revision().unwrap(),
        rev,
        "an unchanged record is not rewritten"
    );

    let mut changed = node("a");
    changed.blocks.push("10.244.1.64/26".parse().unwrap());
    let second = register_node(&s, &changed).await.unwrap();
    assert_ne!(second.version, first.version);
    assert_eq!(
        s.get_object::<NodeRecord>("a").await.unwrap().unwrap(),
        second
    );
    assert_eq!(list_nodes(&s).await.unwrap(), vec![changed]);
}

#[tokio::test]
async fn register_node_refuses_bad_values() {
    let (_dir, s) = store();
    let mut n = node("a");
    n.as_number = Some(0);
    assert!(register_node(&s, &n).await.is_err());
    n.as_number = Some(23456);
    assert!(register_node(&s, &n).await.is_err());
    n.as_number = None;
    n.router_id = "0.0.0.0".parse().unwrap();
    let err = register_node(&s, &n).await.unwrap_err();
    assert!(err.to_string().contains("router id 0.0.0.0"), "{err}");
    n = node("");
    assert!(register_node(&s, &n).await.is_err());
    assert_eq!(s.sync().revision().unwrap(), 0);
}

#[tokio::test]
async fn the_lease_is_its_own_kind_and_goes_with_the_node() {
    let (_dir, s) = store();
    register_node(&s, &node("a")).await.unwrap();
    let nodes_version = s.get("Node", "a").await.unwrap().unwrap().version;
    let lease = renew_lease(&s, "a", 1_800_000_000).await.unwrap();
    assert_eq!(lease.value.renew_time, 1_800_000_000);
    let rev = s.sync().revision().unwrap();
    assert_eq!(renew_lease(&s, "a", 1_800_000_000).await.unwrap(), lease);
    assert_eq!(s.sync().revision().unwrap(), rev, "same time, no write");
    renew_lease(&s, "a", 1_800_000_010).await.unwrap();
    assert_eq!(
        s.get("Node", "a").await.unwrap().unwrap().version,
        nodes_version,
        "renewing the lease leaves the node record alone"
    );
    assert_eq!(
        get_lease(&s, "a").await.unwrap().map(|l| l.renew_time),
        Some(1_800_000_010)
    );
    assert!(unix_now() > 1_700_000_000);

    assert!(remove_node(&s, "a").await.unwrap());
    assert!(!remove_node(&s, "a").await.unwrap());
    assert!(list_nodes(&s).await.unwrap().is_empty());
    assert_eq!(
        get_lease(&s, "a").await.unwrap(),
        None,
        "the lease went too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_a_lease_wakes_no_watcher_of_nodes() {
    use futures::StreamExt;
    let (_dir, s) = store();
    register_node(&s, &node("a")).await.unwrap();
    let from = s
        .list(NodeRecord::KIND, &Selector::everything())
        .await
        .unwrap()
        .version;
    let mut nodes = s
        .watch(NodeRecord::KIND, &Selector::everything(), &from)
        .await
        .unwrap();
    for t in 0..5 {
        renew_lease(&s, "a", 1_800_000_000 + t).await.unwrap();
    }
    register_node(&s, &node("b")).await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(30), nodes.next())
        .await
        .expect("an event in time")
        .expect("an event")
        .expect("no error");
    assert_eq!(
        first.item().object.name,
        "b",
        "the first change a node watcher sees is the node's, not the 5 lease renewals"
    );
}

#[tokio::test]
async fn cluster_bgp_seed_and_set() {
    let (_dir, s) = store();
    assert_eq!(get_cluster_bgp(&s).await.unwrap(), None);
    let err = set_cluster_bgp(&s, Some(false), None, &ServiceCidrsChange::default())
        .await
        .unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound { .. }), "{err}");

    assert_eq!(seed_cluster_bgp(&s, &cluster()).await.unwrap(), cluster());
    // The stored configuration wins over another agent's default.
    let other = ClusterBgp {
        as_number: 65123,
        mesh: false,
        listen_port: 1179,
        services: Default::default(),
    };
    assert_eq!(seed_cluster_bgp(&s, &other).await.unwrap(), cluster());

    let set = set_cluster_bgp(&s, Some(false), None, &ServiceCidrsChange::default())
        .await
        .unwrap();
    assert_eq!(
        set,
        ClusterBgp {
            mesh: false,
            ..cluster()
        }
    );
    let set = set_cluster_bgp(
        &s,
        None,
        Some(4_200_000_000),
        &ServiceCidrsChange::default(),
    )
    .await
    .unwrap();
    assert_eq!(set.as_number, 4_200_000_000);
    assert!(!set.mesh);
    assert_eq!(get_cluster_bgp(&s).await.unwrap(), Some(set.clone()));
    let rev = s.sync().revision().unwrap();
    assert_eq!(
        set_cluster_bgp(&s, Some(false), None, &ServiceCidrsChange::default())
            .await
            .unwrap(),
        set
    );
    assert_eq!(s.sync().revision().unwrap(), rev, "no change, no write");

    assert!(
        set_cluster_bgp(&s, None, Some(0), &ServiceCidrsChange::default())
            .await
            .is_err()
    );
    assert!(seed_cluster_bgp(
        &s,
        &ClusterBgp {
            as_number: 0,
            ..cluster()
        }
    )
    .await
    .is_err());

    let mut n = node("a");
    assert_eq!(n.effective_as(&set), 4_200_000_000);
    n.as_number = Some(64700);
    assert_eq!(n.effective_as(&set), 64700);
}

#[tokio::test]
async fn peers_global_and_per_node() {
    let (_dir, s) = store();
    put_peer(&s, &peer("rr-1", None)).await.unwrap();
    put_peer(&s, &peer("tor-a", Some("a"))).await.unwrap();
    put_peer(&s, &peer("tor-b", Some("b"))).await.unwrap();

    let names = |v: Vec<PeerRecord>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(peers_for(&s, "a").await), ["rr-1", "tor-a"]);
    assert_eq!(names(peers_for(&s, "b").await), ["rr-1", "tor-b"]);
    assert_eq!(names(peers_for(&s, "c").await), ["rr-1"]);
    assert_eq!(list_peers(&s).await.unwrap().len(), 3);

    let rev = s.sync().revision().unwrap();
    put_peer(&s, &peer("rr-1", None)).await.unwrap();
    assert_eq!(s.sync().revision().unwrap(), rev);
    let mut moved = peer("rr-1", None);
    moved.password_file = Some("/etc/ferrovia/rr.pw".into());
    put_peer(&s, &moved).await.unwrap();
    assert_eq!(list_peers(&s).await.unwrap()[0], moved);

    assert!(remove_peer(&s, "tor-b").await.unwrap());
    assert_eq!(names(peers_for(&s, "b").await), ["rr-1"]);

    assert!(put_peer(&s, &peer("x", Some(""))).await.is_err());
    let mut bad = peer("x", None);
    bad.address = "0.0.0.0".parse().unwrap();
    assert!(put_peer(&s, &bad).await.is_err());
    bad = peer("x", None);
    bad.as_number = 0;
    assert!(put_peer(&s, &bad).await.is_err());
}

#[tokio::test]
async fn an_invalid_stored_object_names_itself() {
    let (_dir, s) = store();
    s.create(
        "Node",
        &Object::new("a", json!({"name": "a", "routerId": "not an address"})),
    )
    .await
    .unwrap();
    let err = list_nodes(&s).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatastoreError::Invalid { .. }), "{msg}");
    assert!(msg.contains("Node \"a\""), "{msg}");

    s.create(
        "Node",
        &Object::new("b", json!({"name": "c", "routerId": "198.18.0.3"})),
    )
    .await
    .unwrap();
    let err = s.get_object::<NodeRecord>("b").await.unwrap_err();
    assert!(err.to_string().contains("names itself \"c\""), "{err}");
}

#[tokio::test]
async fn helpers_work_through_a_trait_object() {
    let (_dir, s) = store();
    let dynamic: std::sync::Arc<dyn Datastore> = std::sync::Arc::new(s);
    register_node(dynamic.as_ref(), &node("a")).await.unwrap();
    seed_cluster_bgp(&*dynamic, &cluster()).await.unwrap();
    assert_eq!(list_nodes(&*dynamic).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_peer_keeps_its_gtsm_and_route_safety_and_refuses_bad_ones() {
    let (_dir, s) = store();
    let mut p = peer("tor", None);
    p.ttl_security = Some(1);
    p.safety.allow_pool_prefixes = true;
    p.safety.import_prefixes = vec!["deny 0.0.0.0/0".parse().unwrap()];
    p.safety.max_prefixes = Some(crate::config::MaxPrefixesSetting {
        limit: 100,
        action: crate::config::MaxPrefixesAction::Warn,
        restart_after_seconds: None,
    });
    assert_eq!(
        serde_json::to_value(&p).unwrap(),
        json!({
            "name": "tor",
            "address": "198.18.1.1",
            "asNumber": 65000,
            "ttlSecurity": 1,
            "maxPrefixes": {"limit": 100, "action": "warn"},
            "allowPoolPrefixes": true,
            "importPrefixes": [{"prefix": "0.0.0.0/0", "action": "deny"}],
        })
    );
    put_peer(&s, &p).await.unwrap();
    assert_eq!(list_peers(&s).await.unwrap(), vec![p.clone()]);

    // update_peer changes what it is asked to, checked like put_peer.
    let changed = update_peer(&s, "tor", |r| {
        r.safety.allow_pool_prefixes = false;
        r.safety.export_prefixes = vec!["10.244.0.0/16 ge 26".parse().map_err(|e: String| e)?];
        Ok(())
    })
    .await
    .unwrap();
    assert!(!changed.value.safety.allow_pool_prefixes);
    assert_eq!(changed.value.safety.export_prefixes.len(), 1);
    assert_eq!(changed.value.ttl_security, Some(1));

    for (bad, words) in [
        (
            Box::new(|r: &mut PeerRecord| r.ttl_security = Some(0))
                as Box<dyn Fn(&mut PeerRecord) + Send + Sync>,
            "ttlSecurity",
        ),
        (
            Box::new(|r: &mut PeerRecord| {
                r.safety.max_prefixes = Some(crate::config::MaxPrefixesSetting {
                    limit: 0,
                    action: crate::config::MaxPrefixesAction::Restart,
                    restart_after_seconds: None,
                })
            }),
            "maxPrefixes.limit",
        ),
        (
            Box::new(|r: &mut PeerRecord| {
                r.safety.import_prefixes = vec![ferrovia_bgp::policy::PrefixRule {
                    prefix: "10.0.0.0/8".parse().unwrap(),
                    ge: Some(4),
                    le: None,
                    action: Default::default(),
                }]
            }),
            "importPrefixes[0]",
        ),
    ] {
        let mut q = p.clone();
        bad(&mut q);
        let e = put_peer(&s, &q).await.expect_err(words).to_string();
        assert!(e.contains(words) && e.contains("tor"), "{e}");
        let e = update_peer(&s, "tor", |r| {
            bad(r);
            Ok(())
        })
        .await
        .expect_err(words)
        .to_string();
        assert!(e.contains(words), "{e}");
    }
    // Nothing bad was stored.
    assert_eq!(list_peers(&s).await.unwrap(), vec![changed.value]);
    let e = update_peer(&s, "nope", |_| Ok(()))
        .await
        .expect_err("absent");
    assert!(e.to_string().contains("nope"), "{e}");
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_node_selector_picks_the_nodes_by_their_labels() {
    let mut p = peer("rack", None);
    p.node_selector = Some("rack=r1,!spare".into());
    assert!(p.is_per_node());
    assert!(p.applies_to("a", &labels(&[("rack", "r1")])));
    assert!(p.applies_to("b", &labels(&[("rack", "r1"), ("zone", "z")])));
    assert!(!p.applies_to("a", &labels(&[("rack", "r2")])));
    assert!(!p.applies_to("a", &labels(&[("rack", "r1"), ("spare", "")])));
    assert!(!p.applies_to("a", &BTreeMap::new()));
    // By name, and for every node.
    let by_name = peer("one", Some("a"));
    assert!(by_name.applies_to("a", &BTreeMap::new()));
    assert!(!by_name.applies_to("b", &labels(&[("rack", "r1")])));
    let all = peer("all", None);
    assert!(!all.is_per_node());
    assert!(all.applies_to("b", &BTreeMap::new()));
    // A hand-made object with a selector that does not parse selects no node (never every
    // node).
    let mut broken = peer("broken", None);
    broken.node_selector = Some("rack in (r1)".into());
    assert!(!broken.applies_to("a", &labels(&[("rack", "r1")])));
}

#[test]
fn the_node_selector_pattern_agrees_with_the_parser() {
    let re = regex::Regex::new(NODE_SELECTOR_PATTERN).expect("the pattern compiles");
    for good in [
        "rack=r1",
        "rack==r1",
        "rack!=r1",
        "bgp",
        "!spare",
        "ferrovia.io/rack=r1, tier!=edge,!spare",
        "a=",
    ] {
        assert!(re.is_match(good), "{good}");
        assert!(Selector::parse(good).is_ok(), "{good}");
    }
    for bad in [
        "",
        "rack in (r1)",
        "rack=r1,,x",
        "!rack=r1",
        "-rack",
        "rack=r 1",
    ] {
        assert!(!re.is_match(bad), "{bad}");
    }
}

#[tokio::test]
async fn a_peer_with_node_and_node_selector_or_a_bad_selector_is_refused() {
    let (_d, s) = store();
    for (sel, node, says) in [
        ("rack=r1", Some("a"), "node and nodeSelector are both set"),
        ("rack in (r1)", None, "set-based"),
        ("", None, "match every node"),
        ("-x", None, "label key"),
    ] {
        let mut p = peer("p", node);
        p.node_selector = Some(sel.into());
        let e = put_peer(&s, &p).await.expect_err(sel);
        assert!(e.to_string().contains(says), "{sel}: {e}");
        assert!(e.to_string().contains("nodeSelector"), "{sel}: {e}");
    }
    assert!(list_peers(&s).await.unwrap().is_empty(), "nothing stored");
    let mut ok = peer("p", None);
    ok.node_selector = Some("rack=r1".into());
    put_peer(&s, &ok).await.unwrap();
    // Changing it to both is refused too, and leaves the stored peer as it was.
    let e = update_peer(&s, "p", |p| {
        p.node = Some("a".into());
        Ok(())
    })
    .await
    .expect_err("both");
    assert!(e.to_string().contains("both set"), "{e}");
    assert_eq!(list_peers(&s).await.unwrap(), [ok]);
}

#[tokio::test]
async fn node_labels_are_set_removed_and_kept_by_registration() {
    let (_d, s) = store();
    let e = set_node_labels(&s, "a", &[("rack".into(), Some("r1".into()))])
        .await
        .expect_err("not registered");
    assert!(matches!(e, DatastoreError::NotFound { .. }), "{e}");
    register_node(&s, &node("a")).await.unwrap();
    let v = set_node_labels(
        &s,
        "a",
        &[
            ("rack".into(), Some("r1".into())),
            ("spare".into(), Some(String::new())),
        ],
    )
    .await
    .unwrap();
    assert_eq!(v.value.labels, labels(&[("rack", "r1"), ("spare", "")]));
    // The agent registers again (without labels): they stay.
    register_node(&s, &node("a")).await.unwrap();
    assert_eq!(
        list_nodes(&s).await.unwrap()[0].labels,
        labels(&[("rack", "r1"), ("spare", "")])
    );
    let v = set_node_labels(&s, "a", &[("spare".into(), None)])
        .await
        .unwrap();
    assert_eq!(v.value.labels, labels(&[("rack", "r1")]));
    // A bad key or value is refused, naming it; nothing changes.
    for (k, v) in [("-bad", "x"), ("ok", "bad value")] {
        let e = set_node_labels(&s, "a", &[(k.into(), Some(v.into()))])
            .await
            .expect_err(k);
        assert!(e.to_string().contains("label"), "{e}");
    }
    assert_eq!(
        list_nodes(&s).await.unwrap()[0].labels,
        labels(&[("rack", "r1")])
    );
}

#[tokio::test]
async fn cluster_bgp_service_cidrs_are_set_kept_and_checked() {
    let (_dir, s) = store();
    seed_cluster_bgp(&s, &cluster()).await.unwrap();
    let change = ServiceCidrsChange {
        cluster_ips: Some(vec!["10.96.0.0/12".parse().unwrap()]),
        load_balancer_ips: Some(vec!["198.51.100.0/24".parse().unwrap()]),
        ..Default::default()
    };
    let set = set_cluster_bgp(&s, None, None, &change).await.unwrap();
    assert_eq!(set.services.cluster_ips.len(), 1);
    assert_eq!(set.services.load_balancer_ips.len(), 1);
    // The JSON keys are the CRD's.
    let v = serde_json::to_value(&set).unwrap();
    assert_eq!(v["serviceClusterIPs"], json!(["10.96.0.0/12"]), "{v}");
    assert_eq!(
        v["serviceLoadBalancerIPs"],
        json!(["198.51.100.0/24"]),
        "{v}"
    );
    assert!(v.get("serviceExternalIPs").is_none(), "{v}");
    // A record without them (an older agent's) reads as empty lists.
    let old: ClusterBgp =
        serde_json::from_value(json!({"asNumber": 1, "mesh": true, "listenPort": 179})).unwrap();
    assert!(old.services.is_empty());

    // Another field's change keeps them; an empty list clears one.
    let set = set_cluster_bgp(&s, Some(false), None, &ServiceCidrsChange::default())
        .await
        .unwrap();
    assert_eq!(set.services.cluster_ips.len(), 1);
    let clear = ServiceCidrsChange {
        load_balancer_ips: Some(Vec::new()),
        ..Default::default()
    };
    let set = set_cluster_bgp(&s, None, None, &clear).await.unwrap();
    assert!(set.services.load_balancer_ips.is_empty());
    assert_eq!(set.services.cluster_ips.len(), 1);

    // Host bits: refused, naming the key, and nothing changes.
    let bad = ServiceCidrsChange {
        external_ips: Some(vec!["192.0.2.1/24".parse().unwrap()]),
        ..Default::default()
    };
    let err = set_cluster_bgp(&s, None, None, &bad).await.unwrap_err();
    assert!(err.to_string().contains("serviceExternalIPs"), "{err}");
    assert_eq!(get_cluster_bgp(&s).await.unwrap(), Some(set));
}
