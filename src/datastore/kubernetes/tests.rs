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

mod mapping {
    use super::Kube;
    use crate::datastore::model::{self, NodeRecord};
    use crate::datastore::{Datastore, DatastoreError, Event, Object, Selector};
    use futures::StreamExt;
    use serde_json::json;
    use std::time::Duration;

    const DEADLINE: Duration = Duration::from_secs(30);

    fn record(name: &str) -> NodeRecord {
        NodeRecord {
            name: name.to_string(),
            addresses: vec!["198.18.0.1".parse().expect("ip")],
            as_number: Some(64512),
            router_id: "198.18.0.1".parse().expect("router id"),
            blocks: vec![],
            route_reflector_cluster_id: None,
            pod_cidrs: Vec::new(),
            labels: Default::default(),
        }
    }

    /// Node records live in annotations of existing Nodes: registering needs the Node,
    /// keeps its labels and other annotations, and a Node update that leaves the record
    /// alone wakes no watcher; removing the record leaves the Node in place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_records_are_annotations_on_existing_nodes() {
        let k = Kube::new();
        let s = k.store().await;
        match model::register_node(&s, &record("node1")).await {
            Err(DatastoreError::Invalid { reason, .. }) => {
                assert!(reason.contains("no Kubernetes Node"), "{reason}")
            }
            other => panic!("register without a Node: {other:?}"),
        }
        k.cp.call(
            "POST",
            "/api/v1/nodes",
            Some(&json!({"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": "node1", "labels": {"zone": "a"}, "annotations": {"other.io/x": "y"}}})),
        )
        .expect_status(201, "create Node node1");
        let start = s
            .list("Node", &Selector::everything())
            .await
            .expect("list")
            .version;
        let mut w = s
            .watch("Node", &Selector::everything(), &start)
            .await
            .expect("watch");
        model::register_node(&s, &record("node1"))
            .await
            .expect("register");
        // The record carries the Node's labels (what peers' node selectors match).
        let mut labelled = record("node1");
        labelled.labels.insert("zone".into(), "a".into());
        assert_eq!(model::list_nodes(&s).await.expect("list nodes"), [labelled]);
        let node =
            k.cp.call("GET", "/api/v1/nodes/node1", None)
                .expect_status(200, "read the Node")
                .json();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(ann["ferrovia.io/routerId"], "198.18.0.1", "{node}");
        assert_eq!(ann["ferrovia.io/asNumber"], "64512", "{node}");
        assert_eq!(ann["other.io/x"], "y", "others' annotations kept: {node}");
        assert_eq!(node["metadata"]["labels"]["zone"], "a", "{node}");
        let ev = tokio::time::timeout(DEADLINE, w.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("event");
        assert!(
            matches!(&ev, Event::Added(i) if i.object.name == "node1"),
            "{ev:?}"
        );

        // A kubelet-like update (status, another annotation) is no record event; the next
        // event is the record's change.
        k.cp.call(
            "PATCH",
            "/api/v1/nodes/node1",
            Some(&json!({"metadata": {"annotations": {"other.io/x": "z"}}})),
        )
        .expect_status(200, "patch another annotation");
        let mut moved = record("node1");
        moved.addresses = vec!["198.18.0.9".parse().expect("ip")];
        model::register_node(&s, &moved).await.expect("re-register");
        let ev = tokio::time::timeout(DEADLINE, w.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("event");
        match &ev {
            Event::Modified(i) => assert_eq!(i.object.value["addresses"], json!(["198.18.0.9"])),
            other => panic!("wanted the record's change, got {other:?}"),
        }

        // Removing the record: a Deleted event, the Node and its labels stay.
        assert!(model::remove_node(&s, "node1").await.expect("remove"));
        let ev = tokio::time::timeout(DEADLINE, w.next())
            .await
            .expect("an event in time")
            .expect("open")
            .expect("event");
        assert!(
            matches!(&ev, Event::Deleted(i) if i.object.name == "node1"),
            "{ev:?}"
        );
        assert!(model::list_nodes(&s).await.expect("list").is_empty());
        let node =
            k.cp.call("GET", "/api/v1/nodes/node1", None)
                .expect_status(200, "the Node is still there")
                .json();
        assert_eq!(node["metadata"]["labels"]["zone"], "a", "{node}");
        assert!(
            node["metadata"]["annotations"]["ferrovia.io/routerId"].is_null(),
            "{node}"
        );
    }

    /// Leases: `ferrovia-NODE` in the lease namespace, renewTime as a MicroTime.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn node_leases_are_coordination_leases() {
        let k = Kube::new();
        let s = k.store().await;
        model::renew_lease(&s, "node1", 1_764_633_600)
            .await
            .expect("renew");
        let lease =
            k.cp.call(
                "GET",
                "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/ferrovia-node1",
                None,
            )
            .expect_status(200, "the Lease")
            .json();
        assert_eq!(lease["spec"]["holderIdentity"], "node1", "{lease}");
        assert_eq!(
            lease["spec"]["renewTime"], "2025-12-02T00:00:00.000000Z",
            "{lease}"
        );
        assert_eq!(
            model::get_lease(&s, "node1")
                .await
                .expect("get")
                .map(|l| l.renew_time),
            Some(1_764_633_600)
        );
        // Other Leases in the namespace are not ours.
        k.cp.call(
            "POST",
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases",
            Some(
                &json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                         "metadata": {"name": "kube-scheduler"}, "spec": {"holderIdentity": "x"}}),
            ),
        )
        .expect_status(201, "a foreign Lease");
        let names: Vec<String> = s
            .list("NodeLease", &Selector::everything())
            .await
            .expect("list")
            .items
            .into_iter()
            .map(|i| i.object.name)
            .collect();
        assert_eq!(names, ["node1"]);
        // A custom resource the schema refuses is Invalid, naming the field.
        match s
            .create(
                "IPPool",
                &Object::new("bad", json!({"cidr": "10.1.0.0/16", "blockSize": 64})),
            )
            .await
        {
            Err(DatastoreError::Invalid { reason, .. }) => {
                assert!(reason.contains("blockSize"), "{reason}")
            }
            other => panic!("a pool the schema refuses: {other:?}"),
        }
    }
}
