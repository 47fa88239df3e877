//! The harness shared by ferrovia's integration tests, one module per former `mod …;` of the
//! test files: `common` (namespaces, BIRD/FRR/GoBGP, the agent, clusters), `lab_common`
//! (`ferrovia lab` topologies) and `cni_support` (a node for the CNI plugin tests).
//! A test file imports the modules it needs: `use ferrovia_testsupport::common;`.

#[path = "../common/mod.rs"]
pub mod common;

#[path = "../lab_common/mod.rs"]
pub mod lab_common;

#[path = "../cni_support/mod.rs"]
pub mod cni_support;
