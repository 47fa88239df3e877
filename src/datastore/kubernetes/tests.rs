//! The Kubernetes backend on a real kube-apiserver 1.20.2 (tests/common/kube.rs): the
//! datastore contract suite unchanged, and the Node, Lease and custom-resource mappings.
//!
//! Each test starts its own control plane (a few seconds) and reaches it through a loopback
//! forwarder, since the test process runs in the root namespace. The API server runs with
//! `--watch-cache=false`, so watches are served by etcd; when the suite asks for the history
//! bound, one unrelated write is made and etcd is compacted to its current revision, after
//! which a watch from any earlier version gets 410 Gone, as on a real cluster after compaction.

use super::crds::all_crds_json;
use super::KubeStore;
use crate::datastore::contract::Backend;
use crate::datastore::SharedDatastore;
use ferrovia_testsupport::common::kube::{segment, ControlPlane, LocalProxy};
use ferrovia_testsupport::common::{net_lock, NetLock, Netns};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;

/// A CRD of `ferrovia.io` for the suite's made-up kinds: any JSON as `spec`.
fn test_crd(kind: &str) -> Value {
    let plural = format!("{}s", kind.to_ascii_lowercase());
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.ferrovia.io")},
        "spec": {
            "group": "ferrovia.io",
            "scope": "Cluster",
            "names": {"plural": plural, "singular": kind.to_ascii_lowercase(), "kind": kind},
            "versions": [{
                "name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {"x-kubernetes-preserve-unknown-fields": true}}
                }}
            }]
        }
    })
}

/// A fresh API server with ferrovia's CRDs and the suite's test kinds.
pub struct Kube {
    // Drop order: the forwarder, then the control plane, its segment, the lock.
    proxy: LocalProxy,
    pub cp: ControlPlane,
    _seg: Netns,
    _lock: NetLock,
    kubeconfig: PathBuf,
}

impl Kube {
    pub fn new() -> Kube {
        let lock = net_lock();
        let seg = segment(&lock, "kds");
        let cp = ControlPlane::start_with(&lock, &seg, &["--watch-cache=false"]);
        let mut crds = all_crds_json().expect("CRDs encode");
        for kind in ["Thing", "Other", "Counter"] {
            crds.push(test_crd(kind));
        }
        cp.install_crds(&crds);
        let proxy = cp.local_proxy();
        let kubeconfig = cp.dir().join("local.kubeconfig");
        cp.write_local_kubeconfig(&kubeconfig, cp.admin_token(), &proxy);
        Kube {
            proxy,
            cp,
            _seg: seg,
            _lock: lock,
            kubeconfig,
        }
    }

    pub async fn store(&self) -> KubeStore {
        let _ = self.proxy.port();
        KubeStore::connect(Some(&self.kubeconfig), "kube-system")
            .await
            .expect("connect to the test API server")
    }
}

#[async_trait::async_trait]
impl Backend for Kube {
    async fn handle(&self) -> SharedDatastore {
        Arc::new(self.store().await)
    }

    fn history_bound(&self) -> usize {
        // etcd keeps the compaction revision itself: a watch from the revision just before it
        // still works. One more write (a ConfigMap, no kind of ours) puts the objects' last
        // changes before the compaction point.
        self.cp
            .call(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                Some(&json!({"apiVersion": "v1", "kind": "ConfigMap",
                             "metadata": {"generateName": "compaction-"}})),
            )
            .expect_status(201, "a write before compaction");
        let etcd = self.cp.etcd();
        let rev = etcd.revision().expect("etcd revision");
        etcd.compact(rev).expect("etcd compaction");
        1
    }
}

mod contract {
    use super::Kube;
    ferrovia_ipam::datastore_contract_tests!(Kube::new());
}
