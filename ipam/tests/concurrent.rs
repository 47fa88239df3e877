//! Concurrency: threads sharing one store (as agents share the datastore) assign,
//! re-assign, release, sweep blocks with no grace and collect garbage at the same time.
//! Checked after every operation (no address given twice, no overlapping blocks, nothing
//! of a thread's freed by someone else) and at the end (the handle index, clean-up).
//!
//! The bodies live in the test support crate (`concurrency`), so that the root crate runs the
//! same tests on SQLite and on a real API server.

use ferrovia_ipam_testsupport as common;

use common::concurrency::{concurrent_agents, many_threads_one_block, racing_nodes};
use ferrovia_ipam::datastore::MemStore;
use proptest::prelude::*;
use std::sync::Arc;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, max_shrink_iters: 20, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_agents_keep_the_invariants(
        seed in any::<u64>(),
        strict in any::<bool>(),
        max_blocks in prop_oneof![Just(None), (1u32..3).prop_map(Some)],
    ) {
        if let Err(e) = concurrent_agents(Arc::new(MemStore::new()), seed, strict, max_blocks, 250) {
            prop_assert!(false, "{}", e);
        }
    }
}

#[test]
fn many_threads_one_block_no_address_twice() {
    many_threads_one_block(Arc::new(MemStore::new()));
}

#[test]
fn racing_nodes_get_every_address_of_a_pool_without_spurious_exhaustion() {
    racing_nodes(5, || Arc::new(MemStore::new()));
}
