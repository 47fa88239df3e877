//! Releasing a removed node's IPAM objects: its addresses, handles and blocks go; a block
//! of it that other nodes' pods borrowed from moves to one of them; several agents doing
//! it at once, or twice, change nothing more.

use ferrovia_ipam_testsupport as common;

use common::raw;
use ferrovia_ipam::datastore::{MemStore, SharedDatastore};
use ferrovia_ipam::*;
use std::sync::Arc;

fn ipam(store: &Arc<MemStore>, strict: bool) -> Ipam {
    let shared: SharedDatastore = store.clone();
    Ipam::new(
        shared,
        IpamConfig {
            strict_affinity: strict,
            ..IpamConfig::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_nodes_objects_are_released_and_a_borrowed_block_moves_to_a_borrower() {
    let store = Arc::new(MemStore::new());
    let a = ipam(&store, false);
    // One /29 pool: node a claims the only block, node b borrows from it.
    a.ensure_pools(&[PoolSpec::new("10.1.0.0/29").block_size(29)])
        .await
        .expect("pools");
    let h = |n: u32| HandleId::new(format!("c{n}"), "eth0");
    let attrs = Attributes::pod("default", "p");
    a.assign("a", &h(1), &attrs, Families::V4)
        .await
        .expect("a1");
    a.assign("a", &h(2), &attrs, Families::V4)
        .await
        .expect("a2");
    let b = ipam(&store, false);
    let borrowed = b
        .assign("b", &h(3), &attrs, Families::V4)
        .await
        .expect("b3");
    assert!(
        borrowed.ipv4.as_ref().is_some_and(|x| x.borrowed),
        "{borrowed:?}"
    );

    assert_eq!(
        b.nodes_in_use().await.expect("nodes"),
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    );
    // Two agents release node a at once.
    let c = ipam(&store, false);
    let (r1, r2) = tokio::join!(b.release_node("a"), c.release_node("a"));
    let (r1, r2) = (r1.expect("release"), r2.expect("release"));
    assert_eq!(r1.addresses + r2.addresses, 2, "{r1:?} {r2:?}");
    assert_eq!(r1.handles + r2.handles, 2, "{r1:?} {r2:?}");
    assert_eq!(
        r1.blocks_moved.len() + r2.blocks_moved.len(),
        1,
        "{r1:?} {r2:?}"
    );
    // Node b's pod keeps its address, in a block that is node b's own now.
    let held = b.addresses(&h(3)).await.expect("addresses");
    assert_eq!(held, vec![borrowed.ipv4.as_ref().expect("v4").ip]);
    assert_eq!(b.node_blocks("b").await.expect("blocks").len(), 1);
    assert!(b.borrowed("b").await.expect("borrowed").is_empty());
    assert!(a.addresses(&h(1)).await.expect("addresses").is_empty());
    raw(&store).check().expect("store invariants");
    assert_eq!(
        b.nodes_in_use().await.expect("nodes"),
        ["b"].iter().map(|s| s.to_string()).collect()
    );
    // Again: nothing more.
    assert_eq!(
        b.release_node("a").await.expect("again"),
        NodeRelease::default()
    );
    // The freed addresses are given again.
    b.assign("b", &h(4), &attrs, Families::V4)
        .await
        .expect("b4");
    raw(&store).check().expect("store invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_block_of_a_removed_node_is_deleted() {
    let store = Arc::new(MemStore::new());
    let a = ipam(&store, true);
    a.ensure_pools(&[
        PoolSpec::new("10.1.0.0/24").block_size(28),
        PoolSpec::new("fd01::/120").block_size(124),
    ])
    .await
    .expect("pools");
    let attrs = Attributes::pod("default", "p");
    for n in 0..20 {
        a.assign(
            "a",
            &HandleId::new(format!("c{n}"), "eth0"),
            &attrs,
            Families::DUAL,
        )
        .await
        .expect("assign");
    }
    let blocks = a.node_blocks("a").await.expect("blocks");
    let r = a.release_node("a").await.expect("release");
    assert_eq!(r.addresses, 40);
    assert_eq!(r.handles, 20);
    assert_eq!(r.blocks_deleted, blocks);
    let snap = a.show().await.expect("show");
    assert!(
        snap.blocks.is_empty() && snap.allocations.is_empty(),
        "{snap:?}"
    );
}
