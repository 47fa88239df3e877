//! The IPAM property and concurrency tests of ferrovia-ipam
//! (`ferrovia_ipam_testsupport::{properties, concurrency}`, run there on the in-memory store)
//! on the two real backends: SQLite, and the Kubernetes
//! backend on a real kube-apiserver 1.20.2 ([`super::tests::Kube`], one API server per test,
//! emptied of IPAM objects between cases). The same test bodies, fewer operations and cases
//! on the API server (every operation is several HTTP requests, and the invariant checks
//! after each operation list every IPAM kind).

use super::tests::Kube;
use crate::datastore::sqlite::SqliteStore;
use crate::datastore::SharedDatastore;
use ferrovia_ipam_testsupport::concurrency::{
    concurrent_agents, many_threads_one_block, racing_nodes,
};
use ferrovia_ipam_testsupport::properties::{run, setup};
use ferrovia_ipam_testsupport::{clear_ipam, OnRuntime};
use proptest::test_runner::{Config, TestRunner};
use std::sync::Arc;

/// The concurrent-agents cases: (seed, strict affinity, blocks per node at most), covering
/// each setting the proptest draws from.
const CASES: [(u64, bool, Option<u32>); 3] = [
    (0x5eed_0001, false, None),
    (0x5eed_0002, true, Some(1)),
    (0x5eed_0003, false, Some(2)),
];

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime for the backend")
}

/// How much of the suite runs on a backend.
struct Size {
    /// Random operation sequences of the property test.
    property_cases: u32,
    /// Operations per thread in each concurrent-agents case.
    ops: usize,
    /// Rounds of the racing-nodes test.
    racing_rounds: usize,
}

/// Runs the whole suite on stores from `fresh` (each holding no IPAM object).
fn suite(label: &str, size: Size, fresh: &dyn Fn() -> SharedDatastore) {
    let t = std::time::Instant::now();
    let mut runner = TestRunner::new(Config {
        cases: size.property_cases,
        max_shrink_iters: 50,
        failure_persistence: None,
        ..Config::default()
    });
    if let Err(e) = runner.run(&setup(), |s| run(fresh(), s)) {
        panic!("{label}: the IPAM property test failed: {e}");
    }
    eprintln!(
        "{label}: {} random operation sequences: {:?}",
        size.property_cases,
        t.elapsed()
    );
    let ops = size.ops;
    for (seed, strict, max_blocks) in CASES {
        let t = std::time::Instant::now();
        if let Err(e) = concurrent_agents(fresh(), seed, strict, max_blocks, ops) {
            panic!("{label}: concurrent agents (seed {seed:#x}, strict {strict}, max blocks {max_blocks:?}): {e}");
        }
        eprintln!(
            "{label}: concurrent agents, seed {seed:#x}, {ops} operations per thread: {:?}",
            t.elapsed()
        );
    }
    many_threads_one_block(fresh());
    racing_nodes(size.racing_rounds, fresh);
}

#[test]
fn ipam_concurrency_tests_on_sqlite() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let n = std::sync::atomic::AtomicU32::new(0);
    let fresh = || -> SharedDatastore {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let path = dir.path().join(format!("ipam-{i}.db"));
        let store = SqliteStore::open(&path).expect("open a SQLite datastore");
        Arc::new(OnRuntime {
            inner: Arc::new(store),
            runtime: rt.handle().clone(),
        })
    };
    let size = Size {
        property_cases: 100,
        ops: 250,
        racing_rounds: 5,
    };
    suite("SQLite", size, &fresh);
}

#[test]
fn ipam_concurrency_tests_on_the_api_server() {
    let rt = runtime();
    let k = Kube::new();
    let store: SharedDatastore = Arc::new(OnRuntime {
        inner: Arc::new(rt.block_on(k.store())),
        runtime: rt.handle().clone(),
    });
    let fresh = || -> SharedDatastore {
        clear_ipam(&*store).expect("delete the previous case's IPAM objects");
        store.clone()
    };
    let size = Size {
        property_cases: 16,
        ops: 60,
        racing_rounds: 2,
    };
    suite("API server", size, &fresh);
}
