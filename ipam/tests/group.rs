//! Group commit and fail-fast assignment: a burst of concurrent assignments on one node
//! becomes a few block writes, never gives an address twice, and a store that stops
//! answering turns into "try again later" for every queued request instead of a hang.

use ferrovia_ipam_testsupport as common;

use common::{raw, StallStore, YieldStore};
use ferrovia_ipam::datastore::{Bounded, MemStore, SharedDatastore};
use ferrovia_ipam::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BURST: usize = 200;

fn request(i: usize) -> AssignRequest {
    AssignRequest {
        handle: HandleId::new(format!("c{i:04}"), "eth0"),
        attributes: Attributes::pod("default", format!("p{i}")),
        families: Families::DUAL,
    }
}

async fn pools(ipam: &Ipam) {
    ipam.ensure_pools(&[
        PoolSpec::new("10.244.0.0/16").block_size(26),
        PoolSpec::new("fd00:10:244::/48").block_size(122),
    ])
    .await
    .expect("pools");
}

/// Waits (bounded) until `n` requests are queued.
async fn queued(g: &GroupCommit, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.queued() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} queued",
            g.queued()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`BURST`] assignments queued while the writer is busy (as with a batch in flight), then
/// written; every one answered, no address twice, one of each family per pod.
async fn burst_while_busy(group: &Arc<GroupCommit>) {
    let busy = group.exclusive().await;
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            let g = group.clone();
            tokio::spawn(async move { g.assign(request(i)).await })
        })
        .collect();
    queued(group, BURST).await;
    drop(busy);

    let mut seen = HashSet::new();
    for t in tasks {
        let a = t.await.expect("task").expect("assignment");
        for ip in a.addresses() {
            assert!(seen.insert(ip.ip), "{} given twice", ip.ip);
        }
    }
    assert_eq!(seen.len(), 2 * BURST, "one address of each family per pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_assignments_is_one_batch_with_a_few_block_writes_and_no_address_twice() {
    let store = Arc::new(MemStore::new());
    let shared: SharedDatastore = store.clone();
    let ipam = Arc::new(Ipam::new(shared, IpamConfig::default()));
    pools(&ipam).await;
    let group = Arc::new(GroupCommit::new(ipam.clone(), "node1"));
    let before = ipam.counters();

    // The writer is busy (as with a batch in flight) while the burst arrives.
    burst_while_busy(&group).await;
    let c = ipam.counters();
    let writes = c.block_writes - before.block_writes;
    eprintln!("{BURST} dual-stack assignments: {writes} block writes, counters {c:?}");
    // 200 of each family fill four /26 and four /122 blocks: a claim and a write each.
    assert!(
        writes <= 16,
        "{writes} block writes for {BURST} assignments (one batch)"
    );
    assert_eq!(
        c.batched_assignments - before.batched_assignments,
        BURST as u64
    );
    raw(&store).check().expect("store invariants");
    // Every handle is indexed with its two addresses.
    for i in 0..BURST {
        let held = ipam.addresses(&request(i).handle).await.expect("addresses");
        assert_eq!(held.len(), 2, "{:?}", request(i).handle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_with_a_batch_limit_is_written_oldest_first_in_batches_of_that_size() {
    let store = Arc::new(MemStore::new());
    let shared: SharedDatastore = store.clone();
    let ipam = Arc::new(Ipam::new(shared, IpamConfig::default()));
    pools(&ipam).await;
    let group = Arc::new(GroupCommit::new(ipam.clone(), "node1").with_max_batch(MAX_BATCH));
    let before = ipam.counters();

    // The writer is busy while the burst queues; then it is written MAX_BATCH at a time,
    // and every request is answered, its owner's included.
    burst_while_busy(&group).await;
    assert_eq!(group.queued(), 0, "nothing left in the queue");
    let c = ipam.counters();
    let batches = c.batches - before.batches;
    assert_eq!(
        batches,
        BURST.div_ceil(MAX_BATCH) as u64,
        "{BURST} requests in batches of at most {MAX_BATCH}: {c:?}"
    );
    assert_eq!(
        c.batched_assignments - before.batched_assignments,
        BURST as u64
    );
    raw(&store).check().expect("store invariants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_two_nodes_and_single_assignments_racing_on_one_store_never_collide() {
    let store = Arc::new(MemStore::new());
    let mk = || {
        let shared: SharedDatastore = Arc::new(YieldStore(store.clone()));
        Arc::new(Ipam::new(shared, IpamConfig::default()))
    };
    let (a, b, single) = (mk(), mk(), mk());
    // Small blocks, so batches of both nodes claim and fill blocks side by side.
    a.ensure_pools(&[
        PoolSpec::new("10.244.0.0/24").block_size(29),
        PoolSpec::new("fd00:10:244::/120").block_size(125),
    ])
    .await
    .expect("pools");
    let ga = Arc::new(GroupCommit::new(a.clone(), "node-a"));
    let gb = Arc::new(GroupCommit::new(b.clone(), "node-b"));
    let mut tasks = Vec::new();
    for i in 0..60 {
        let (ga, gb, single) = (ga.clone(), gb.clone(), single.clone());
        tasks.push(tokio::spawn(async move {
            match i % 3 {
                0 => ga.assign(request(i)).await,
                1 => gb.assign(request(i)).await,
                _ => {
                    let r = request(i);
                    single
                        .assign("node-c", &r.handle, &r.attributes, r.families)
                        .await
                }
            }
        }));
    }
    let mut seen = HashSet::new();
    for t in tasks {
        let a = t.await.expect("task").expect("assignment");
        for ip in a.addresses() {
            assert!(seen.insert(ip.ip), "{} given twice", ip.ip);
        }
    }
    assert_eq!(seen.len(), 120);
    raw(&store).check().expect("store invariants");
    let conflicts: u64 = [&a, &b, &single]
        .iter()
        .map(|i| i.counters().conflicts_retried)
        .sum();
    eprintln!("conflicts retried: {conflicts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stops_answering_gives_every_queued_assignment_a_transient_error() {
    let inner = Arc::new(MemStore::new());
    let stall = Arc::new(StallStore::new(inner.clone()));
    let bounded: SharedDatastore =
        Arc::new(Bounded::new(stall.clone(), Duration::from_millis(500)));
    let ipam = Arc::new(Ipam::new(bounded, IpamConfig::default()));
    pools(&ipam).await;
    let group = Arc::new(GroupCommit::new(ipam.clone(), "node1"));
    // One pod before: it keeps its address through the outage.
    let kept = group.assign(request(0)).await.expect("first assignment");

    stall.stall();
    let t = Instant::now();
    let tasks: Vec<_> = (1..=20)
        .map(|i| {
            let g = group.clone();
            tokio::spawn(async move { g.assign(request(i)).await })
        })
        .collect();
    for task in tasks {
        let e = task
            .await
            .expect("task")
            .expect_err("no answer from the store");
        assert!(e.is_transient(), "transient (CNI 11): {e}");
        assert!(e.to_string().contains("no answer"), "{e}");
    }
    let took = t.elapsed();
    eprintln!("20 queued assignments answered 'try again' {took:?} after the store stalled (bound 500 ms)");
    // Generous: the point is that they answer at all (without the bound they wait forever).
    assert!(took < Duration::from_secs(20), "{took:?}");

    stall.resume();
    let again = group
        .assign(request(1))
        .await
        .expect("after the store is back");
    assert!(again.ipv4.is_some() && again.ipv6.is_some());
    let held = ipam.addresses(&request(0).handle).await.expect("addresses");
    assert_eq!(
        held,
        kept.addresses().map(|a| a.ip).collect::<Vec<_>>(),
        "the running pod kept its addresses"
    );
}

/// Listing every handle (leak collection, the release of removed nodes) is background work
/// with a bound of its own: it waits out a store slower than the pod path's bound, while a
/// call of the pod path still answers "try again" within its bound, and CNI STATUS's pool
/// usage reads no handle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_every_handle_waits_longer_than_the_pod_path_and_status_reads_no_handle() {
    let inner = Arc::new(MemStore::new());
    let stall = Arc::new(StallStore::new(inner.clone()));
    let bounded = Arc::new(
        Bounded::new(stall.clone(), Duration::from_millis(200))
            .with_bulk_lists(&[KIND_HANDLE], Duration::from_secs(600)),
    );
    let ipam = Arc::new(Ipam::new(bounded.clone(), IpamConfig::default()));
    pools(&ipam).await;
    let group = Arc::new(GroupCommit::new(ipam.clone(), "node1"));
    let kept = group.assign(request(0)).await.expect("first assignment");

    stall.stall();
    let store: SharedDatastore = bounded.clone();
    let bulk = tokio::spawn(async move {
        store
            .list(
                KIND_HANDLE,
                &ferrovia_ipam::datastore::Selector::everything(),
            )
            .await
    });
    // The pod path answers "try again" meanwhile (and marks the store as down).
    let e = group
        .assign(request(1))
        .await
        .expect_err("no answer from the store");
    assert!(e.is_transient(), "transient (CNI 11): {e}");
    assert!(bounded.is_down());
    // The list of every handle is still waiting (its bound is 600 s).
    assert!(
        !bulk.is_finished(),
        "the bulk list gave up with the pod path's bound"
    );
    stall.resume();
    let list = bulk
        .await
        .expect("task")
        .expect("the list of every handle waits for a slow store");
    let names: Vec<_> = list.items.iter().map(|i| i.object.name.clone()).collect();
    assert_eq!(names.len(), 1, "the one handle: {names:?}");
    assert!(!bounded.is_down(), "an answer marks the store as up again");

    // CNI STATUS's pool usage: stalled handle reads would not answer; it never reads one.
    let usage = ipam.pool_usage().await.expect("pool usage");
    let allocated: usize = usage.iter().map(|p| p.allocated).sum();
    assert_eq!(allocated, kept.addresses().count(), "{usage:?}");
}
