use super::*;
use crate::datastore::SqliteStore;
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
        heartbeat: 1_700_000_000,
        blocks: vec!["10.244.1.0/26".parse().unwrap()],
    }
}

fn cluster() -> ClusterBgp {
    ClusterBgp {
        as_number: 64512,
        mesh: true,
        listen_port: 179,
    }
}

fn peer(name: &str, node: Option<&str>) -> PeerRecord {
    PeerRecord {
        name: name.to_string(),
        address: "198.18.1.1".parse().unwrap(),
        as_number: 65000,
        node: node.map(str::to_string),
        password_file: None,
    }
}

#[test]
fn records_are_camel_case_json() {
    let mut n = node("a");
    n.as_number = Some(64600);
    assert_eq!(
        serde_json::to_value(&n).unwrap(),
        json!({
            "name": "a",
            "addresses": ["198.18.0.1", "fd00::1"],
            "asNumber": 64600,
            "routerId": "198.18.0.1",
            "heartbeat": 1_700_000_000u64,
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

#[test]
fn register_node_is_idempotent() {
    let (_dir, s) = store();
    let first = register_node(&s, &node("a")).unwrap();
    let rev = s.revision().unwrap();
    let again = register_node(&s, &node("a")).unwrap();
    assert_eq!(again, first);
    assert_eq!(
        s.revision().unwrap(),
        rev,
        "an unchanged record is not rewritten"
    );

    let mut changed = node("a");
    changed.blocks.push("10.244.1.64/26".parse().unwrap());
    let second = register_node(&s, &changed).unwrap();
    assert!(second.version > first.version);
    assert_eq!(get_node(&s, "a").unwrap().unwrap(), second);
    assert_eq!(list_nodes(&s).unwrap(), vec![changed]);
}

#[test]
fn register_node_refuses_bad_values() {
    let (_dir, s) = store();
    let mut n = node("a");
    n.as_number = Some(0);
    assert!(register_node(&s, &n).is_err());
    n.as_number = Some(23456);
    assert!(register_node(&s, &n).is_err());
    n.as_number = None;
    n.router_id = "0.0.0.0".parse().unwrap();
    let err = register_node(&s, &n).unwrap_err();
    assert!(err.to_string().contains("router id 0.0.0.0"), "{err}");
    n = node("");
    assert!(register_node(&s, &n).is_err());
    assert_eq!(s.revision().unwrap(), 0);
}

#[test]
fn heartbeat_and_remove() {
    let (_dir, s) = store();
    let err = heartbeat(&s, "a", 5).unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound { .. }), "{err}");

    register_node(&s, &node("a")).unwrap();
    let hb = heartbeat(&s, "a", 1_800_000_000).unwrap();
    assert_eq!(hb.value.heartbeat, 1_800_000_000);
    assert_eq!(hb.value.blocks, node("a").blocks, "other fields are kept");
    let rev = s.revision().unwrap();
    assert_eq!(heartbeat(&s, "a", 1_800_000_000).unwrap(), hb);
    assert_eq!(s.revision().unwrap(), rev);
    assert!(unix_now() > 1_700_000_000);

    assert!(remove_node(&s, "a").unwrap());
    assert!(!remove_node(&s, "a").unwrap());
    assert!(list_nodes(&s).unwrap().is_empty());
}

#[test]
fn cluster_bgp_seed_and_set() {
    let (_dir, s) = store();
    assert_eq!(get_cluster_bgp(&s).unwrap(), None);
    let err = set_cluster_bgp(&s, Some(false), None).unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound { .. }), "{err}");

    assert_eq!(seed_cluster_bgp(&s, &cluster()).unwrap(), cluster());
    // The stored configuration wins over another agent's default.
    let other = ClusterBgp {
        as_number: 65123,
        mesh: false,
        listen_port: 1179,
    };
    assert_eq!(seed_cluster_bgp(&s, &other).unwrap(), cluster());

    let set = set_cluster_bgp(&s, Some(false), None).unwrap();
    assert_eq!(
        set,
        ClusterBgp {
            mesh: false,
            ..cluster()
        }
    );
    let set = set_cluster_bgp(&s, None, Some(4_200_000_000)).unwrap();
    assert_eq!(set.as_number, 4_200_000_000);
    assert!(!set.mesh);
    assert_eq!(get_cluster_bgp(&s).unwrap(), Some(set.clone()));
    let rev = s.revision().unwrap();
    assert_eq!(set_cluster_bgp(&s, Some(false), None).unwrap(), set);
    assert_eq!(s.revision().unwrap(), rev, "no change, no write");

    assert!(set_cluster_bgp(&s, None, Some(0)).is_err());
    assert!(seed_cluster_bgp(
        &s,
        &ClusterBgp {
            as_number: 0,
            ..cluster()
        }
    )
    .is_err());

    let mut n = node("a");
    assert_eq!(n.effective_as(&set), 4_200_000_000);
    n.as_number = Some(64700);
    assert_eq!(n.effective_as(&set), 64700);
}

#[test]
fn peers_global_and_per_node() {
    let (_dir, s) = store();
    put_peer(&s, &peer("rr-1", None)).unwrap();
    put_peer(&s, &peer("tor-a", Some("a"))).unwrap();
    put_peer(&s, &peer("tor-b", Some("b"))).unwrap();

    let names = |v: Vec<PeerRecord>| v.into_iter().map(|p| p.name).collect::<Vec<_>>();
    assert_eq!(names(list_peers_for(&s, "a").unwrap()), ["rr-1", "tor-a"]);
    assert_eq!(names(list_peers_for(&s, "b").unwrap()), ["rr-1", "tor-b"]);
    assert_eq!(names(list_peers_for(&s, "c").unwrap()), ["rr-1"]);
    assert_eq!(list_peers(&s).unwrap().len(), 3);

    let rev = s.revision().unwrap();
    put_peer(&s, &peer("rr-1", None)).unwrap();
    assert_eq!(s.revision().unwrap(), rev);
    let mut moved = peer("rr-1", None);
    moved.password_file = Some("/etc/ferrovia/rr.pw".into());
    put_peer(&s, &moved).unwrap();
    assert_eq!(list_peers(&s).unwrap()[0], moved);

    assert!(remove_peer(&s, "tor-b").unwrap());
    assert_eq!(names(list_peers_for(&s, "b").unwrap()), ["rr-1"]);

    assert!(put_peer(&s, &peer("x", Some(""))).is_err());
    let mut bad = peer("x", None);
    bad.address = "0.0.0.0".parse().unwrap();
    assert!(put_peer(&s, &bad).is_err());
    bad = peer("x", None);
    bad.as_number = 0;
    assert!(put_peer(&s, &bad).is_err());
}

#[test]
fn an_invalid_stored_object_names_itself() {
    let (_dir, s) = store();
    s.create(
        "Node",
        "a",
        &json!({"name": "a", "routerId": "not an address"}),
    )
    .unwrap();
    let err = list_nodes(&s).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatastoreError::InvalidObject { .. }), "{msg}");
    assert!(msg.contains("Node \"a\""), "{msg}");

    s.create("Node", "b", &json!({"name": "c", "routerId": "198.18.0.3"}))
        .unwrap();
    let err = get_node(&s, "b").unwrap_err();
    assert!(err.to_string().contains("names itself \"c\""), "{err}");
}

#[test]
fn helpers_work_through_a_trait_object() {
    let (_dir, s) = store();
    let dynamic: std::sync::Arc<dyn Datastore> = std::sync::Arc::new(s);
    register_node(dynamic.as_ref(), &node("a")).unwrap();
    seed_cluster_bgp(&dynamic, &cluster()).unwrap();
    assert_eq!(list_nodes(&dynamic).unwrap().len(), 1);
}
