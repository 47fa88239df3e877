//! Property tests: random sequences of assign / release / GC / block sweeps / pool
//! toggles on several nodes, some of them cut short by a simulated crash, checked after
//! every operation against the raw store and a model of who holds what.
//!
//! The body lives in the test support crate (`properties`), so that the root crate runs the
//! same test on SQLite and on a real API server.

use ferrovia_ipam_testsupport as common;

use common::properties::{run, setup};
use ferrovia_ipam::datastore::MemStore;
use proptest::prelude::*;
use std::sync::Arc;

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_operation_sequences_keep_the_invariants(s in setup()) {
        run(Arc::new(MemStore::new()), s)?;
    }
}
