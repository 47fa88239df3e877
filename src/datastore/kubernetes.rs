//! The Kubernetes datastore backend: cluster state in custom resources of group
//! `ferrovia.io` ([`crds`]), node facts in annotations on the core v1 Nodes and node
//! liveness in `coordination.k8s.io/v1` Leases. See `docs/design-datastore.md`.

pub mod crds;
