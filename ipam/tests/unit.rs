//! One test per behaviour and per error of the IPAM API.

use ferrovia_ipam_testsupport as common;

use common::{raw, BIpam, FaultStore, HookStore, Raw};
use ferrovia_ipam::datastore::MemStore;
use ferrovia_ipam::*;
use ipnet::IpNet;
use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn ipam_with(config: IpamConfig, pools: &[PoolSpec]) -> (Arc<MemStore>, BIpam<MemStore>) {
    let store = Arc::new(MemStore::new());
    let ipam = BIpam::new(store.clone(), config);
    ipam.ensure_pools(pools).expect("pools");
    (store, ipam)
}

fn setup(pools: &[PoolSpec]) -> (Arc<MemStore>, BIpam<MemStore>) {
    ipam_with(IpamConfig::default(), pools)
}

fn h(n: u32) -> HandleId {
    HandleId::new(format!("c{n:04}"), "eth0")
}

fn attrs(n: u32) -> Attributes {
    Attributes::pod("default", format!("pod-{n}"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn v4(ipam: &BIpam<MemStore>, node: &str, n: u32) -> Result<AssignedIp, IpamError> {
    ipam.assign(node, &h(n), &attrs(n), Families::V4)
        .map(|a| a.ipv4.expect("an IPv4 address"))
}

fn check(store: &MemStore) {
    raw(store).check().expect("store invariants");
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

// ---------------------------------------------------------------------------------------
// Pools.

#[test]
fn bad_cidrs_are_refused_with_a_hint() {
    let store = Arc::new(MemStore::new());
    let ipam = BIpam::new(store.clone(), IpamConfig::default());
    for (cidr, needle) in [
        ("10.244.0.0", "prefix length is missing"),
        ("banana/16", "not an address followed by a prefix length"),
        ("10.244.0.0/33", "not an address"),
        ("fd00::/129", "not an address"),
        ("10.244.0.1/16", "did you mean 10.244.0.0/16"),
        ("", "prefix length is missing"),
    ] {
        let err = ipam.ensure_pools(&[PoolSpec::new(cidr)]).unwrap_err();
        assert!(matches!(err, IpamError::BadCidr { .. }), "{cidr}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{cidr}: {msg}");
        assert!(msg.contains("e.g. 10.244.0.0/16"), "{msg}");
    }
    assert_eq!(store.count(KIND_POOL), 0, "nothing written");
}

#[test]
fn block_sizes_are_validated() {
    let ok = [
        ("10.244.0.0/16", 20),
        ("10.244.0.0/16", 26),
        ("10.244.0.0/16", 32),
        ("10.0.0.0/8", 24),
        ("192.168.0.0/30", 30),
        ("fd00:10:244::/48", 116),
        ("fd00:10:244::/48", 128),
        ("fd00::/120", 120),
    ];
    for (cidr, size) in ok {
        Pool::from_spec(&PoolSpec::new(cidr).block_size(size))
            .unwrap_or_else(|e| panic!("{cidr} /{size}: {e}"));
    }
    let bad = [
        ("10.244.0.0/16", 19, 20, 32),
        ("10.244.0.0/16", 33, 20, 32),
        ("10.244.0.0/16", 0, 20, 32),
        ("10.244.0.0/28", 26, 28, 32), // block larger than the pool
        ("fd00:10:244::/48", 115, 116, 128),
        ("fd00:10:244::/48", 129, 116, 128),
        ("fd00::/124", 122, 124, 128),
    ];
    for (cidr, size, min, max) in bad {
        let err = Pool::from_spec(&PoolSpec::new(cidr).block_size(size)).unwrap_err();
        match &err {
            IpamError::BadBlockSize {
                min: m,
                max: x,
                block_size,
                ..
            } => {
                assert_eq!((*m, *x, *block_size), (min, max, size), "{cidr} /{size}");
            }
            other => panic!("{cidr} /{size}: {other}"),
        }
        assert!(
            err.to_string().contains(&format!("from {min} to {max}")),
            "{err}"
        );
    }
    // The default block size does not fit a small pool: said so.
    let err = Pool::from_spec(&PoolSpec::new("10.0.0.0/28")).unwrap_err();
    assert!(
        matches!(err, IpamError::BadBlockSize { block_size: 26, .. }),
        "{err}"
    );
    let pool = Pool::from_spec(&PoolSpec::new("10.244.0.0/16")).unwrap();
    assert_eq!(pool.block_size, DEFAULT_BLOCK_SIZE_V4);
    let pool = Pool::from_spec(&PoolSpec::new("fd00:10:244::/48")).unwrap();
    assert_eq!(pool.block_size, DEFAULT_BLOCK_SIZE_V6);
}

#[test]
fn overlapping_pools_are_refused() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    // Against a stored pool, in both directions.
    for cidr in ["10.244.128.0/17", "10.0.0.0/8", "10.244.7.0/24"] {
        let spec = PoolSpec::new(cidr).block_size(24);
        let err = ipam.ensure_pools(&[spec]).unwrap_err();
        match err {
            IpamError::PoolOverlap { cidr: c, other } => {
                assert_eq!(c, net(cidr));
                assert_eq!(other, net("10.244.0.0/16"));
            }
            other => panic!("{cidr}: {other}"),
        }
    }
    // Among the specs themselves: nothing is written.
    let err = ipam
        .ensure_pools(&[PoolSpec::new("10.96.0.0/16"), PoolSpec::new("10.96.4.0/24")])
        .unwrap_err();
    assert!(matches!(err, IpamError::PoolOverlap { .. }), "{err}");
    assert!(err.to_string().contains("must be disjoint"), "{err}");
    assert_eq!(store.count(KIND_POOL), 1);
    // The same pool twice: fine when identical, an error otherwise.
    ipam.ensure_pools(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("10.244.0.0/16"),
    ])
    .unwrap();
    let err = ipam
        .ensure_pools(&[
            PoolSpec::new("10.244.0.0/16"),
            PoolSpec::new("10.244.0.0/16").disabled(true),
        ])
        .unwrap_err();
    assert!(matches!(err, IpamError::DuplicatePool { .. }), "{err}");
    // IPv4 and IPv6 pools live side by side.
    ipam.ensure_pools(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("fd00:10:244::/48"),
    ])
    .unwrap();
    assert_eq!(store.count(KIND_POOL), 2);
}

#[test]
fn same_cidr_with_new_block_size_is_an_update_until_blocks_exist() {
    let (_store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16").block_size(24)])
        .unwrap();
    assert_eq!(ipam.pools().unwrap()[0].block_size, 24);
    v4(&ipam, "n1", 1).unwrap();
    let err = ipam
        .ensure_pools(&[PoolSpec::new("10.244.0.0/16").block_size(26)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::BlockSizeChange {
                stored: 24,
                requested: 26,
                blocks: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_pool_created_concurrently_by_another_agent_wins_if_written_first() {
    let inner = Arc::new(MemStore::new());
    let store = HookStore {
        inner: inner.clone(),
        before_create: Mutex::new(Some(Box::new(|s: Arc<MemStore>| {
            Box::pin(async move {
                // Another agent creates an overlapping pool between our check and our
                // create.
                let other =
                    serde_json::json!({"cidr": "10.0.0.0/8", "blockSize": 26, "disabled": false});
                let other = ferrovia_ipam::datastore::Object::new("10-0-0-0-8", other);
                use ferrovia_ipam::datastore::Datastore;
                s.create(KIND_POOL, &other).await.unwrap();
            })
        }))),
    };
    let ipam = BIpam::new(Arc::new(store), IpamConfig::default());
    let err = ipam
        .ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap_err();
    assert!(
        matches!(err, IpamError::PoolOverlap { other, .. } if other == net("10.0.0.0/8")),
        "{err}"
    );
    let names: Vec<String> = inner
        .list_b(KIND_POOL)
        .unwrap()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, ["10-0-0-0-8"], "ours was backed out");
}

#[test]
fn of_two_overlapping_pools_created_at_once_the_later_created_backs_out() {
    // The other agent's pool is stamped later than ours (and written first): ours stays,
    // whatever the store's versions say; the other agent backs its pool out.
    let inner = Arc::new(MemStore::new());
    let store = HookStore {
        inner: inner.clone(),
        before_create: Mutex::new(Some(Box::new(|s: Arc<MemStore>| {
            Box::pin(async move {
                let other = serde_json::json!({
                    "cidr": "10.0.0.0/8", "blockSize": 26, "disabled": false,
                    "createdMs": u64::MAX / 2,
                });
                let other = ferrovia_ipam::datastore::Object::new("10-0-0-0-8", other);
                use ferrovia_ipam::datastore::Datastore;
                s.create(KIND_POOL, &other).await.unwrap();
            })
        }))),
    };
    let ipam = BIpam::new(Arc::new(store), IpamConfig::default());
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .expect("ours was created first");
    let names: Vec<String> = inner
        .list_b(KIND_POOL)
        .unwrap()
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    assert_eq!(names, ["10-0-0-0-8", "10-244-0-0-16"]);
}

#[test]
fn ensure_pools_is_idempotent_and_toggles_disabled() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let before = store.list_b(KIND_POOL).unwrap();
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap();
    assert_eq!(
        store.list_b(KIND_POOL).unwrap(),
        before,
        "no write when nothing changed"
    );
    assert_eq!(before[0].0, "10-244-0-0-16");
    let mut stored = before[0].1.clone();
    let created = stored
        .as_object_mut()
        .and_then(|o| o.remove("createdMs"))
        .and_then(|c| c.as_u64())
        .expect("the creator stamps createdMs");
    assert!(created > 1_700_000_000_000, "unix milliseconds: {created}");
    assert_eq!(
        stored,
        serde_json::json!({"cidr": "10.244.0.0/16", "blockSize": 26, "disabled": false})
    );
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16").disabled(true)])
        .unwrap();
    assert!(ipam.pools().unwrap()[0].disabled);
    // A pool the config no longer names stays (another node may name it).
    ipam.ensure_pools(&[]).unwrap();
    assert_eq!(store.count(KIND_POOL), 1);
}

#[test]
fn nat_outgoing_is_on_by_default_stored_only_when_off_and_can_be_toggled() {
    let specs: Vec<PoolSpec> = serde_json::from_str(
        r#"[{"cidr": "10.244.0.0/16"}, {"cidr": "10.245.0.0/16", "natOutgoing": false}]"#,
    )
    .unwrap();
    assert!(specs[0].nat_outgoing);
    assert!(!specs[1].nat_outgoing);
    assert_eq!(specs[1], PoolSpec::new("10.245.0.0/16").nat_outgoing(false));
    let (store, ipam) = setup(&specs);
    let stored: Vec<serde_json::Value> = store
        .list_b(KIND_POOL)
        .unwrap()
        .into_iter()
        .map(|(_, v, _)| v)
        .collect();
    // A pool stored before the setting existed (no key) reads as on.
    assert!(stored[0].get("natOutgoing").is_none(), "{}", stored[0]);
    assert_eq!(stored[1]["natOutgoing"], false, "{}", stored[1]);
    let pools = ipam.pools().unwrap();
    assert!(pools[0].nat_outgoing && !pools[1].nat_outgoing);
    // Toggled in place, blocks and all; a pool that does not exist is reported.
    assert!(ipam.set_nat_outgoing("10.244.0.0/16", false).unwrap());
    assert!(ipam.set_nat_outgoing("10.245.0.0/16", true).unwrap());
    let pools = ipam.pools().unwrap();
    assert!(!pools[0].nat_outgoing && pools[1].nat_outgoing);
    assert!(!ipam.set_nat_outgoing("10.99.0.0/16", true).unwrap());
    assert!(ipam.set_nat_outgoing("10.99.0.0", true).is_err());
    // The config's value is written again by ensure_pools.
    ipam.ensure_pools(&specs).unwrap();
    let pools = ipam.pools().unwrap();
    assert!(pools[0].nat_outgoing && !pools[1].nat_outgoing);
}

#[test]
fn pool_spec_reads_the_config_shape() {
    let specs: Vec<PoolSpec> = serde_json::from_str(
        r#"[{"cidr": "10.244.0.0/16", "blockSize": 26}, {"cidr": "fd00:10:244::/48", "disabled": true}]"#,
    )
    .unwrap();
    assert_eq!(specs[0], PoolSpec::new("10.244.0.0/16").block_size(26));
    assert_eq!(specs[1], PoolSpec::new("fd00:10:244::/48").disabled(true));
    let typo = serde_json::from_str::<PoolSpec>(r#"{"cidr": "10.0.0.0/8", "blocksize": 24}"#);
    assert!(typo.is_err(), "unknown fields are refused");
}

#[test]
fn remove_pool_refuses_while_blocks_are_claimed() {
    let (store, ipam) = ipam_with(
        IpamConfig {
            empty_block_grace: Duration::from_secs(60),
            ..Default::default()
        },
        &[PoolSpec::new("10.244.0.0/16")],
    );
    v4(&ipam, "n1", 1).unwrap();
    let err = ipam.remove_pool("10.244.0.0/16").unwrap_err();
    assert!(
        matches!(err, IpamError::PoolInUse { blocks: 1, .. }),
        "{err}"
    );
    ipam.release(&h(1)).unwrap();
    assert!(ipam.release_empty_blocks("n1", at(0)).unwrap().is_empty());
    assert_eq!(ipam.release_empty_blocks("n1", at(60)).unwrap().len(), 1);
    assert!(ipam.remove_pool("10.244.0.0/16").unwrap());
    assert!(!ipam.remove_pool("10.244.0.0/16").unwrap());
    assert_eq!(store.count(KIND_POOL), 0);
}

// ---------------------------------------------------------------------------------------
// Assignment.

#[test]
fn assign_claims_a_block_then_fills_it() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let a = ipam.assign("n1", &h(1), &attrs(1), Families::V4).unwrap();
    let first = a.ipv4.clone().unwrap();
    assert_eq!(first.ip, ip("10.244.0.0"));
    assert_eq!(first.block, net("10.244.0.0/26"));
    assert!(first.new_block && !first.borrowed);
    assert_eq!(a.claimed_blocks, [net("10.244.0.0/26")]);
    assert!(a.ipv6.is_none());

    let second = v4(&ipam, "n1", 2).unwrap();
    assert_eq!(second.ip, ip("10.244.0.1"));
    assert!(!second.new_block);

    // Another node gets another block.
    let other = v4(&ipam, "n2", 3).unwrap();
    assert_eq!(other.block, net("10.244.0.64/26"));
    assert!(other.new_block);
    assert_eq!(ipam.node_blocks("n1").unwrap(), [net("10.244.0.0/26")]);
    assert_eq!(ipam.node_blocks("n2").unwrap(), [net("10.244.0.64/26")]);

    // A block fills up, then the node claims the next free one.
    for n in 4..66 {
        assert_eq!(v4(&ipam, "n1", n).unwrap().block, net("10.244.0.0/26"));
    }
    let next = v4(&ipam, "n1", 66).unwrap();
    assert_eq!(next.block, net("10.244.0.128/26"));
    assert!(next.new_block);
    assert_eq!(
        ipam.node_blocks("n1").unwrap(),
        [net("10.244.0.0/26"), net("10.244.0.128/26")]
    );
    check(&store);

    // Layout: block name and compact allocations.
    let (value, _) = store.get_b(KIND_BLOCK, "10-244-0-64-26").unwrap().unwrap();
    assert_eq!(
        value,
        serde_json::json!({"cidr": "10.244.0.64/26", "affinity": "n2", "allocations": [{"ordinal": 0, "handle": "c0003:eth0"}]})
    );
    let (value, _) = store.get_b(KIND_HANDLE, "c0003.eth0").unwrap().unwrap();
    assert_eq!(
        value,
        serde_json::json!({"containerId": "c0003", "interface": "eth0", "node": "n2",
            "attributes": {"namespace": "default", "pod": "pod-3"},
            "addresses": [{"ip": "10.244.0.64", "block": "10.244.0.64/26"}]})
    );
}

#[test]
fn ipv6_and_dual_stack() {
    let (store, ipam) = setup(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("fd00:10:244::/48"),
    ]);
    let a = ipam.assign("n1", &h(1), &attrs(1), Families::DUAL).unwrap();
    assert_eq!(a.ipv4.as_ref().unwrap().ip, ip("10.244.0.0"));
    let six = a.ipv6.as_ref().unwrap();
    assert_eq!(six.ip, ip("fd00:10:244::"));
    assert_eq!(six.block, net("fd00:10:244::/122"));
    assert_eq!(
        a.claimed_blocks,
        [net("10.244.0.0/26"), net("fd00:10:244::/122")]
    );
    assert!(store
        .get_b(KIND_BLOCK, "fd00-10-244---122")
        .unwrap()
        .is_some());
    let b = ipam.assign("n2", &h(2), &attrs(2), Families::V6).unwrap();
    assert!(b.ipv4.is_none());
    assert_eq!(b.ipv6.unwrap().block, net("fd00:10:244::40/122"));
    assert_eq!(
        ipam.release(&h(1)).unwrap(),
        [ip("10.244.0.0"), ip("fd00:10:244::")]
    );
    check(&store);
}

#[test]
fn assign_is_idempotent_per_handle() {
    let (store, ipam) = setup(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("fd00:10:244::/48"),
    ]);
    let first = ipam.assign("n1", &h(1), &attrs(1), Families::V4).unwrap();
    let again = ipam.assign("n1", &h(1), &attrs(1), Families::V4).unwrap();
    assert_eq!(
        again.ipv4.as_ref().unwrap().ip,
        first.ipv4.as_ref().unwrap().ip
    );
    assert!(!again.ipv4.unwrap().new_block);
    assert!(again.claimed_blocks.is_empty());
    assert_eq!(raw(&store).allocs.len(), 1);
    // Asking for both families adds IPv6 and keeps the IPv4 address.
    let dual = ipam.assign("n1", &h(1), &attrs(1), Families::DUAL).unwrap();
    assert_eq!(dual.ipv4.unwrap().ip, first.ipv4.unwrap().ip);
    assert!(dual.ipv6.is_some());
    assert_eq!(raw(&store).allocs.len(), 2);
    assert_eq!(ipam.addresses(&h(1)).unwrap().len(), 2);
    check(&store);
}

#[test]
fn release_is_idempotent_and_frees_only_its_handle() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let a = v4(&ipam, "n1", 1).unwrap();
    let b = v4(&ipam, "n1", 2).unwrap();
    assert_eq!(ipam.release(&h(1)).unwrap(), [a.ip]);
    assert_eq!(ipam.release(&h(1)).unwrap(), Vec::<IpAddr>::new());
    assert_eq!(
        ipam.release(&h(99)).unwrap(),
        Vec::<IpAddr>::new(),
        "unknown handle"
    );
    assert_eq!(ipam.addresses(&h(2)).unwrap(), [b.ip]);
    assert_eq!(
        raw(&store)
            .held_by("c0002:eth0")
            .into_iter()
            .collect::<Vec<_>>(),
        [b.ip]
    );
    assert!(store.get_b(KIND_HANDLE, "c0001.eth0").unwrap().is_none());
    // The freed address is given again.
    assert_eq!(v4(&ipam, "n1", 3).unwrap().ip, a.ip);
    check(&store);
}

#[test]
fn release_never_frees_an_address_now_held_by_another_handle() {
    // A stale index entry (h1 lists an address the block gives h2) must not free it.
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let a = v4(&ipam, "n1", 1).unwrap();
    let (mut value, version) = store.get_b(KIND_HANDLE, "c0001.eth0").unwrap().unwrap();
    let b = v4(&ipam, "n1", 2).unwrap();
    value["addresses"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"ip": b.ip.to_string(), "block": b.block.to_string()}));
    store
        .update_b(KIND_HANDLE, "c0001.eth0", &value, &version)
        .unwrap();
    assert_eq!(ipam.release(&h(1)).unwrap(), [a.ip]);
    assert_eq!(ipam.addresses(&h(2)).unwrap(), [b.ip]);
    check(&store);
}

#[test]
fn exhaustion_and_borrowing() {
    // 2 blocks of 4 addresses.
    let pools = [PoolSpec::new("10.0.0.0/29").block_size(30)];
    for strict in [false, true] {
        let (store, ipam) = ipam_with(
            IpamConfig {
                strict_affinity: strict,
                ..Default::default()
            },
            &pools,
        );
        for n in 0..4 {
            assert_eq!(v4(&ipam, "a", n).unwrap().block, net("10.0.0.0/30"));
        }
        assert_eq!(v4(&ipam, "b", 10).unwrap().block, net("10.0.0.4/30"));
        let fifth = v4(&ipam, "a", 4);
        if strict {
            let err = fifth.unwrap_err();
            assert!(
                matches!(
                    err,
                    IpamError::Exhausted {
                        strict_affinity: true,
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.is_exhausted() && !err.is_transient());
            let msg = err.to_string();
            assert!(
                msg.contains("strict affinity is on") && msg.contains("add a pool"),
                "{msg}"
            );
            assert!(ipam.borrowed("a").unwrap().is_empty());
        } else {
            let got = fifth.unwrap();
            assert!(got.borrowed && !got.new_block);
            assert_eq!(got.ip, ip("10.0.0.5"));
            assert_eq!(got.block, net("10.0.0.4/30"));
            assert_eq!(ipam.borrowed("a").unwrap(), [ip("10.0.0.5")]);
            assert!(ipam.borrowed("b").unwrap().is_empty());
            let snap = ipam.show().unwrap();
            let row = snap.allocations.iter().find(|r| r.ip == got.ip).unwrap();
            assert!(row.borrowed && row.node == "a");
            // One list gives a's block and its borrowed /32.
            assert_eq!(
                ipam.node_prefixes("a").unwrap(),
                [net("10.0.0.0/30"), net("10.0.0.5/32")]
            );
            assert_eq!(ipam.node_prefixes("b").unwrap(), [net("10.0.0.4/30")]);
            // b's block is not released while a's pod borrows from it. b's pod's address
            // was not borrowed.
            assert_eq!(
                ipam.release_reporting(&h(10)).unwrap(),
                Released {
                    addresses: vec![ip("10.0.0.4")],
                    borrowed: false
                }
            );
            ipam.release_empty_blocks("b", at(0)).unwrap();
            assert!(ipam
                .release_empty_blocks("b", at(100_000))
                .unwrap()
                .is_empty());
            // Fill the rest: then everything is exhausted.
            for n in 5..8 {
                v4(&ipam, "a", n).unwrap();
            }
            let err = v4(&ipam, "c", 20).unwrap_err();
            assert!(
                matches!(
                    err,
                    IpamError::Exhausted {
                        strict_affinity: false,
                        ..
                    }
                ),
                "{err}"
            );
            // Releasing the borrowed address frees it in b's block, and says so.
            assert_eq!(
                ipam.release_reporting(&h(4)).unwrap(),
                Released {
                    addresses: vec![ip("10.0.0.5")],
                    borrowed: true
                }
            );
            assert_eq!(
                ipam.release_reporting(&h(4)).unwrap(),
                Released::default(),
                "a second release frees nothing"
            );
            assert!(ipam
                .borrowed("a")
                .unwrap()
                .iter()
                .all(|x| *x != ip("10.0.0.5")));
        }
        check(&store);
    }
}

#[test]
fn block_limit_per_node() {
    let pools = [PoolSpec::new("10.0.0.0/24").block_size(30)];
    for strict in [true, false] {
        let (store, ipam) = ipam_with(
            IpamConfig {
                strict_affinity: strict,
                max_blocks_per_node: Some(1),
                ..Default::default()
            },
            &pools,
        );
        for n in 0..4 {
            v4(&ipam, "a", n).unwrap();
        }
        if strict {
            let err = v4(&ipam, "a", 4).unwrap_err();
            assert!(
                matches!(err, IpamError::BlockLimit { limit: 1, .. }),
                "{err}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains("maxBlocksPerNode") && msg.contains("strictAffinity"),
                "{msg}"
            );
        } else {
            // Nothing to borrow yet.
            let err = v4(&ipam, "a", 4).unwrap_err();
            assert!(
                matches!(
                    err,
                    IpamError::BlockLimit {
                        strict_affinity: false,
                        ..
                    }
                ),
                "{err}"
            );
            // Another node's block has room: borrow from it.
            v4(&ipam, "b", 10).unwrap();
            let got = v4(&ipam, "a", 4).unwrap();
            assert!(got.borrowed);
            assert_eq!(got.block, ipam.node_blocks("b").unwrap()[0]);
        }
        assert_eq!(ipam.node_blocks("a").unwrap().len(), 1);
        // Limits are per family: a v6 pool is unaffected (none here: NoPool).
        let err = ipam
            .assign("a", &h(50), &attrs(50), Families::V6)
            .unwrap_err();
        assert!(
            matches!(
                err,
                IpamError::NoPool {
                    family: Family::Ipv6
                }
            ),
            "{err}"
        );
        check(&store);
    }
}

#[test]
fn no_pool_and_disabled_pools() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let err = ipam
        .assign("n1", &h(1), &attrs(1), Families::V6)
        .unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::NoPool {
                family: Family::Ipv6
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("fd00:10:244::/48"), "{err}");
    assert_eq!(store.count(KIND_HANDLE), 0, "nothing left behind");

    let a = v4(&ipam, "n1", 1).unwrap();
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16").disabled(true)])
        .unwrap();
    let err = v4(&ipam, "n1", 2).unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::PoolsDisabled {
                family: Family::Ipv4,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("10.244.0.0/16"), "{err}");
    // What was given stays, and a repeated assign of it still answers.
    assert_eq!(ipam.addresses(&h(1)).unwrap(), [a.ip]);
    assert_eq!(v4(&ipam, "n1", 1).unwrap().ip, a.ip);
    // A new enabled pool is used instead of the disabled one's blocks.
    ipam.ensure_pools(&[
        PoolSpec::new("10.244.0.0/16").disabled(true),
        PoolSpec::new("10.245.0.0/16"),
    ])
    .unwrap();
    let b = v4(&ipam, "n1", 3).unwrap();
    assert_eq!(b.block, net("10.245.0.0/26"));
    // Re-enabled: its block is used again.
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap();
    assert_eq!(v4(&ipam, "n1", 4).unwrap().block, net("10.244.0.0/26"));
    check(&store);
}

#[test]
fn a_failed_dual_stack_assign_leaves_nothing() {
    let (store, ipam) = setup(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("fd00:10:244::/48").disabled(true),
    ]);
    let err = ipam
        .assign("n1", &h(1), &attrs(1), Families::DUAL)
        .unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::PoolsDisabled {
                family: Family::Ipv6,
                ..
            }
        ),
        "{err}"
    );
    assert!(raw(&store).allocs.is_empty());
    assert_eq!(store.count(KIND_HANDLE), 0);
    check(&store);
}

#[test]
fn bad_handles_nodes_and_families() {
    let (_store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    for (cid, ifname) in [
        ("", "eth0"),
        ("-abc", "eth0"),
        ("abc:def", "eth0"),
        ("abc def", "eth0"),
        ("abc", ""),
        ("abc", "eth0:1"),
        ("abc", "a/b"),
        ("abc", "0123456789abcdef"),
        ("abc", ".."),
        ("abc", "et h0"),
    ] {
        let handle = HandleId::new(cid, ifname);
        let err = ipam
            .assign("n1", &handle, &Attributes::default(), Families::V4)
            .unwrap_err();
        assert!(
            matches!(err, IpamError::InvalidHandle { .. }),
            "{cid:?} {ifname:?}: {err}"
        );
        assert!(matches!(
            ipam.release(&handle),
            Err(IpamError::InvalidHandle { .. })
        ));
    }
    let long = HandleId::new("a".repeat(249), "eth0");
    assert!(matches!(
        long.validate(),
        Err(IpamError::InvalidHandle { .. })
    ));
    assert!(HandleId::new("a.b_c-D9", "eth0.100").validate().is_ok());
    for node in ["", "a\nb"] {
        let err = ipam
            .assign(node, &h(1), &attrs(1), Families::V4)
            .unwrap_err();
        assert!(matches!(err, IpamError::InvalidNode { .. }), "{err}");
    }
    let err = ipam
        .assign("n1", &h(1), &attrs(1), Families::default())
        .unwrap_err();
    assert!(matches!(err, IpamError::NoFamily), "{err}");
    assert_eq!(
        HandleId::from_key("abc:eth0"),
        Some(HandleId::new("abc", "eth0"))
    );
    assert_eq!(HandleId::from_key("abc"), None);
}

#[test]
fn a_handle_belongs_to_the_node_that_assigned_it() {
    let (_store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    v4(&ipam, "n1", 1).unwrap();
    let err = v4(&ipam, "n2", 1).unwrap_err();
    assert!(
        matches!(&err, IpamError::HandleOnOtherNode { owner, .. } if owner == "n1"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Blocks and GC.

#[test]
fn empty_blocks_are_released_after_the_grace_period_and_not_before() {
    let grace = Duration::from_secs(300);
    let (store, ipam) = ipam_with(
        IpamConfig {
            empty_block_grace: grace,
            ..Default::default()
        },
        &[PoolSpec::new("10.244.0.0/16")],
    );
    let a = v4(&ipam, "n1", 1).unwrap();
    let b = v4(&ipam, "n2", 2).unwrap();
    assert!(
        ipam.release_empty_blocks("n1", at(0)).unwrap().is_empty(),
        "in use"
    );
    ipam.release(&h(1)).unwrap();
    assert!(
        ipam.release_empty_blocks("n1", at(10)).unwrap().is_empty(),
        "first seen empty"
    );
    assert!(
        ipam.release_empty_blocks("n1", at(10 + 299))
            .unwrap()
            .is_empty(),
        "grace not over"
    );
    assert_eq!(ipam.node_blocks("n1").unwrap(), [a.block]);
    // Another node's sweep never touches n1's block.
    assert!(ipam
        .release_empty_blocks("n2", at(100_000))
        .unwrap()
        .is_empty());
    assert_eq!(
        ipam.release_empty_blocks("n1", at(10 + 300)).unwrap(),
        [a.block]
    );
    assert!(ipam.node_blocks("n1").unwrap().is_empty());
    assert_eq!(ipam.node_blocks("n2").unwrap(), [b.block]);

    // A block used again during the grace period is kept, and its clock restarts.
    let c = v4(&ipam, "n1", 3).unwrap();
    ipam.release(&h(3)).unwrap();
    ipam.release_empty_blocks("n1", at(1000)).unwrap();
    v4(&ipam, "n1", 4).unwrap();
    assert!(ipam
        .release_empty_blocks("n1", at(1000 + 400))
        .unwrap()
        .is_empty());
    ipam.release(&h(4)).unwrap();
    assert!(ipam
        .release_empty_blocks("n1", at(1500))
        .unwrap()
        .is_empty());
    assert!(ipam
        .release_empty_blocks("n1", at(1500 + 299))
        .unwrap()
        .is_empty());
    assert_eq!(
        ipam.release_empty_blocks("n1", at(1500 + 300)).unwrap(),
        [c.block]
    );
    check(&store);
}

#[test]
fn gc_frees_what_valid_handles_do_not_cover() {
    let (store, ipam) = ipam_with(
        IpamConfig {
            max_blocks_per_node: Some(1),
            ..Default::default()
        },
        &[PoolSpec::new("10.0.0.0/29").block_size(30)],
    );
    for n in 1..=4 {
        v4(&ipam, "a", n).unwrap();
    }
    v4(&ipam, "b", 10).unwrap();
    let borrowed = v4(&ipam, "a", 5).unwrap();
    assert!(borrowed.borrowed);
    let valid: HashSet<HandleId> = [h(1), h(3), h(10)].into_iter().collect();
    let freed = ipam.gc("a", &valid).unwrap();
    assert_eq!(freed, [h(2), h(4), h(5)]);
    let r = raw(&store);
    assert_eq!(r.held_by("c0001:eth0").len(), 1);
    assert_eq!(r.held_by("c0003:eth0").len(), 1);
    assert_eq!(r.held_by("c0010:eth0").len(), 1, "b's pod untouched");
    assert!(r.held_by("c0005:eth0").is_empty(), "borrowed address freed");
    assert!(ipam.borrowed("a").unwrap().is_empty());
    assert_eq!(store.count(KIND_HANDLE), 3);
    // Idempotent; and another node's GC leaves a's pods alone.
    assert!(ipam.gc("a", &valid).unwrap().is_empty());
    assert!(ipam
        .gc("b", &[h(10)].into_iter().collect())
        .unwrap()
        .is_empty());
    assert_eq!(ipam.gc("b", &HashSet::new()).unwrap(), [h(10)]);
    assert_eq!(raw(&store).allocs.len(), 2);
    check(&store);
}

#[test]
fn gc_repairs_a_crash_between_block_and_handle_writes() {
    let inner = Arc::new(MemStore::new());
    let store = Arc::new(FaultStore::new(inner.clone()));
    let ipam = BIpam::new(store.clone(), IpamConfig::default());
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap();
    v4_any(&ipam, "n1", 1).unwrap();

    // A failed write after the intent: the assign undoes its intent.
    store.fail_one_after(1);
    let err = ipam
        .assign("n1", &h(2), &attrs(2), Families::V4)
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    store.heal();
    raw(&inner).check().unwrap();
    assert!(inner.get_b(KIND_HANDLE, "c0002.eth0").unwrap().is_none());

    // A crash after the intent (nothing written after it, not even the undo): the handle
    // lists an address the block does not hold. Harmless; a retried assign completes.
    store.crash_after(1);
    let _ = ipam
        .assign("n1", &h(3), &attrs(3), Families::V4)
        .unwrap_err();
    store.heal();
    let (value, _) = inner.get_b(KIND_HANDLE, "c0003.eth0").unwrap().unwrap();
    assert_eq!(
        value["addresses"].as_array().unwrap().len(),
        1,
        "dangling intent"
    );
    assert!(raw(&inner).held_by("c0003:eth0").is_empty());
    raw(&inner).check().unwrap();
    let got = ipam.assign("n1", &h(3), &attrs(3), Families::V4).unwrap();
    assert_eq!(ipam.addresses(&h(3)).unwrap(), [got.ipv4.unwrap().ip]);
    raw(&inner).check().unwrap();

    // A crash in the middle of a release (block written, handle not deleted): the next
    // release finishes it.
    let h5 = v4_any(&ipam, "n1", 5).unwrap();
    store.crash_after(1);
    assert!(ipam.release(&h(5)).is_err());
    store.heal();
    assert!(raw(&inner).held_by("c0005:eth0").is_empty());
    assert!(inner.get_b(KIND_HANDLE, "c0005.eth0").unwrap().is_some());
    raw(&inner).check().unwrap();
    assert!(
        ipam.release(&h(5)).unwrap().is_empty(),
        "already freed in the block"
    );
    assert!(inner.get_b(KIND_HANDLE, "c0005.eth0").unwrap().is_none());
    assert_eq!(v4_any(&ipam, "n1", 6).unwrap().ip, h5.ip, "reused");

    // Forge the other inconsistency (block holds, handle object gone), as a buggy or
    // older writer could leave it: release cannot see it, GC finds it in the blocks.
    let held = ipam.addresses(&h(1)).unwrap();
    inner.delete_b(KIND_HANDLE, "c0001.eth0", None).unwrap();
    assert!(ipam.release(&h(1)).unwrap().is_empty());
    assert!(raw(&inner).check().is_err(), "the inconsistency is there");
    // GC with h1 valid recreates the index ...
    let valid: HashSet<HandleId> = [h(1), h(3), h(6)].into_iter().collect();
    assert!(ipam.gc("n1", &valid).unwrap().is_empty());
    raw(&inner).check().unwrap();
    assert_eq!(ipam.release(&h(1)).unwrap(), held);
    // ... and GC without it frees the orphan.
    let got = v4_any(&ipam, "n1", 4).unwrap();
    inner.delete_b(KIND_HANDLE, "c0004.eth0", None).unwrap();
    assert_eq!(
        ipam.gc("n1", &[h(3), h(6)].into_iter().collect()).unwrap(),
        [h(4)]
    );
    assert!(raw(&inner).allocs.iter().all(|a| a.ip != got.ip));
    raw(&inner).check().unwrap();

    // A dangling index entry of a valid handle is trimmed by GC.
    let (mut value, version) = inner.get_b(KIND_HANDLE, "c0003.eth0").unwrap().unwrap();
    value["addresses"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"ip": "10.244.0.9", "block": "10.244.0.0/26"}));
    inner
        .update_b(KIND_HANDLE, "c0003.eth0", &value, &version)
        .unwrap();
    assert!(ipam
        .gc("n1", &[h(3), h(6)].into_iter().collect())
        .unwrap()
        .is_empty());
    let (value, _) = inner.get_b(KIND_HANDLE, "c0003.eth0").unwrap().unwrap();
    assert_eq!(value["addresses"].as_array().unwrap().len(), 1);
}

fn v4_any<S>(ipam: &BIpam<S>, node: &str, n: u32) -> Result<AssignedIp, IpamError> {
    ipam.assign(node, &h(n), &attrs(n), Families::V4)
        .map(|a| a.ipv4.expect("an IPv4 address"))
}

#[test]
fn store_failures_are_transient_errors_naming_the_object() {
    let inner = Arc::new(MemStore::new());
    let store = FaultStore::new(inner.clone());
    let ipam = BIpam::new(Arc::new(store), IpamConfig::default());
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap();
    ipam.store().down.store(true, Ordering::SeqCst);
    let err = v4_any(&ipam, "n1", 1).unwrap_err();
    assert!(err.is_transient(), "{err}");
    assert!(matches!(err, IpamError::Store { .. }));
    assert!(
        err.to_string().contains("IPAMHandle \"c0001.eth0\""),
        "{err}"
    );
    assert!(ipam.release(&h(1)).unwrap_err().is_transient());
    assert!(ipam.show().unwrap_err().is_transient());
}

#[test]
fn corrupt_objects_are_errors_not_panics() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    v4(&ipam, "n1", 1).unwrap();
    let bad_blocks = [
        serde_json::json!("nope"),
        serde_json::json!({"cidr": "10.244.9.0/26"}),
        serde_json::json!({"cidr": "10.244.0.64/26", "affinity": "n1", "allocations": [{"ordinal": 64, "handle": "a:eth0"}]}),
        serde_json::json!({"cidr": "10.244.0.64/26", "affinity": "n1", "allocations": [{"ordinal": 3, "handle": "a:eth0"}, {"ordinal": 3, "handle": "b:eth0"}]}),
        serde_json::json!({"cidr": "10.244.0.64/26", "affinity": "n1", "allocations": [{"ordinal": 3, "handle": "nohandle"}]}),
        serde_json::json!({"cidr": "10.244.0.64/16", "affinity": "n1"}),
        serde_json::json!({"cidr": "10.244.0.64/26", "affinity": ""}),
    ];
    for value in bad_blocks {
        store
            .create_b(KIND_BLOCK, "10-244-0-64-26", &value)
            .unwrap();
        let err = ipam.show().unwrap_err();
        assert!(
            matches!(&err, IpamError::Corrupt { kind: "IPAMBlock", name, .. } if name == "10-244-0-64-26"),
            "{value}: {err}"
        );
        assert!(err.to_string().contains("fix or delete it"));
        // Assignment leaves the broken block out (logged once, never used) and keeps
        // clear of the range it may stand for (its name, its cidr).
        let ip = v4(&ipam, "n2", 2).unwrap().ip;
        for range in ["10.244.0.64/26", "10.244.9.0/26"] {
            assert!(!net(range).contains(&ip), "{value}: {ip} is inside {range}");
        }
        store.delete_b(KIND_BLOCK, "10-244-0-64-26", None).unwrap();
    }
    store
        .create_b(
            KIND_HANDLE,
            "x.eth0",
            &serde_json::json!({"containerId": "y", "interface": "eth0", "node": "n"}),
        )
        .unwrap();
    let err = ipam.release(&HandleId::new("x", "eth0")).unwrap_err();
    assert!(
        matches!(
            err,
            IpamError::Corrupt {
                kind: "IPAMHandle",
                ..
            }
        ),
        "{err}"
    );
}

/// A pool made by hand over one that exists (schemas cannot see overlaps): the older pool
/// stays in effect, the newer is never used, and the agent's configuration naming the older
/// one still applies (a restart does not fail on it).
#[test]
fn a_stored_pool_overlapping_an_older_one_is_ignored() {
    let (store, ipam) = setup(&[PoolSpec::new("10.244.0.0/16")]);
    let newer = serde_json::json!({"cidr": "10.244.0.0/24", "blockSize": 28, "createdMs": 4_000_000_000_000u64});
    store.create_b(KIND_POOL, "10-244-0-0-24", &newer).unwrap();
    let cidrs: Vec<IpNet> = ipam.pools().unwrap().iter().map(|p| p.cidr).collect();
    assert_eq!(cidrs, [net("10.244.0.0/16")]);
    let a = v4(&ipam, "n1", 1).unwrap();
    assert_eq!(
        a.block.prefix_len(),
        26,
        "{a:?}: the newer pool's block size is not used"
    );
    ipam.ensure_pools(&[PoolSpec::new("10.244.0.0/16")])
        .unwrap();
    // A pool named in the configuration that would overlap a stored one is still refused.
    let err = ipam
        .ensure_pools(&[PoolSpec::new("10.244.0.0/16"), PoolSpec::new("10.0.0.0/8")])
        .unwrap_err();
    assert!(matches!(err, IpamError::PoolOverlap { .. }), "{err}");
}

#[test]
fn show_lists_everything_in_camel_case() {
    let (_store, ipam) = setup(&[
        PoolSpec::new("10.244.0.0/16"),
        PoolSpec::new("fd00:10:244::/48"),
    ]);
    ipam.assign("n1", &h(1), &attrs(1), Families::DUAL).unwrap();
    ipam.assign("n2", &h(2), &attrs(2), Families::V4).unwrap();
    let snap = ipam.show().unwrap();
    assert_eq!(snap.pools.len(), 2);
    assert_eq!(snap.pools[0].blocks, 2);
    assert_eq!(snap.pools[0].allocated, 2);
    assert_eq!(snap.blocks.len(), 3);
    assert_eq!(snap.allocations.len(), 3);
    let row = &snap.allocations[0];
    assert_eq!(row.ip, ip("10.244.0.0"));
    assert_eq!(row.node, "n1");
    assert_eq!(row.attributes, attrs(1));
    assert!(row.indexed && !row.borrowed);
    let json = serde_json::to_value(&snap).unwrap();
    assert_eq!(json["pools"][0]["blockSize"], 26);
    assert_eq!(json["pools"][0]["family"], "ipv4");
    assert_eq!(json["blocks"][0]["node"], "n1");
    assert_eq!(json["allocations"][0]["handle"]["containerId"], "c0001");
    assert_eq!(json["allocations"][0]["attributes"]["pod"], "pod-1");
    let back: Snapshot = serde_json::from_value(json).unwrap();
    assert_eq!(back, snap);
    let text = snap.to_string();
    assert!(
        text.contains("10.244.0.0/26") && text.contains("default/pod-1"),
        "{text}"
    );
    let a = ipam.assign("n1", &h(1), &attrs(1), Families::V4).unwrap();
    let json = serde_json::to_value(&a).unwrap();
    assert!(json.get("claimedBlocks").is_some() && json["ipv4"].get("newBlock").is_some());
}

#[test]
fn large_ipv6_pools_and_tiny_blocks() {
    // A /0-ish pool with /128 blocks: block search must not overflow.
    let (store, ipam) = setup(&[PoolSpec::new("::/0").block_size(128)]);
    for n in 0..3 {
        let got = ipam.assign("n1", &h(n), &attrs(n), Families::V6).unwrap();
        assert_eq!(got.ipv6.unwrap().block.prefix_len(), 128);
    }
    assert_eq!(ipam.node_blocks("n1").unwrap().len(), 3);
    check(&store);
    let (store, ipam) = setup(&[PoolSpec::new("10.0.0.0/31").block_size(32)]);
    v4(&ipam, "n1", 1).unwrap();
    v4(&ipam, "n1", 2).unwrap();
    assert!(v4(&ipam, "n1", 3).unwrap_err().is_exhausted());
    check(&store);
}
