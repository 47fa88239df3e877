//! The Kubernetes datastore backend: cluster state in custom resources of group
//! `ferrovia.io` ([`crds`]), node facts in `ferrovia.io/…` annotations on the core v1 Nodes
//! and node liveness in `coordination.k8s.io/v1` Leases. See `docs/design-datastore.md`.
//!
//! | datastore kind | Kubernetes object | record |
//! |---|---|---|
//! | `IPPool`, `IPAMBlock`, `IPAMHandle`, `BlockAffinity` | the CRD of that kind | `spec` |
//! | `BgpPeer` | `BGPPeer` | `spec` |
//! | `ClusterBgp` | `BGPConfiguration` | `spec` |
//! | `Node` | core v1 `Node` (never created or deleted here) | `ferrovia.io/…` annotations |
//! | `NodeLease` | `coordination.k8s.io/v1` `Lease` `ferrovia-NODE` | annotation `ferrovia.io/lease` |
//! | any other kind `K` | the custom resource `K` (plural `k` + `s`) of `ferrovia.io` | `spec` |
//!
//! The version is the object's `resourceVersion`; update and delete carry it as a
//! precondition (409 → [`DatastoreError::Conflict`]); a watch resumes from a
//! `resourceVersion` and 410 Gone becomes [`DatastoreError::Expired`].

pub mod crds;
mod errors;
#[cfg(test)]
mod ipam_suite;
pub mod pods;
mod shape;
#[cfg(test)]
mod tests;

use super::{
    validate_kind, validate_name, validate_object, Datastore, DatastoreError, Event, EventStream,
    Item, Labels, List, Object, Result, Selector, Version,
};
use errors::map_err;
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    Preconditions, VersionMatch, WatchEvent, WatchParams,
};
use kube::Client;
use serde_json::Value;
use shape::Shape;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Where Leases live when the configuration does not say.
pub const DEFAULT_LEASE_NAMESPACE: &str = "kube-system";
/// How long a connection attempt to the API server may take: a CNI ADD must fail fast
/// (code 11) when the API server is down, not hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one non-watch request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts at a Node annotation write when only other parts of the Node changed.
const NODE_ATTEMPTS: u32 = 16;

/// A datastore on a Kubernetes API server.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    lease_namespace: String,
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("lease_namespace", &self.lease_namespace)
            .finish_non_exhaustive()
    }
}

fn backend(detail: String) -> DatastoreError {
    DatastoreError::Backend { detail }
}

impl KubeStore {
    /// Connects with the kubeconfig at `kubeconfig` (its current context), or with the
    /// in-cluster configuration (service account token and CA, KUBERNETES_SERVICE_HOST and
    /// _PORT) when it is `None`. Nothing is requested yet: a down API server shows on the
    /// first call.
    pub async fn connect(kubeconfig: Option<&Path>, lease_namespace: &str) -> Result<KubeStore> {
        let mut config = match kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| {
                    backend(format!(
                        "cannot read the kubeconfig {} (datastore.kubernetes.kubeconfig): {e}",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| {
                        backend(format!(
                            "the kubeconfig {} (datastore.kubernetes.kubeconfig) is not usable: {e}",
                            path.display()
                        ))
                    })?
            }
            None => kube::Config::incluster().map_err(|e| {
                backend(format!(
                    "no in-cluster Kubernetes configuration ({e}): run the agent in a pod with \
                     a service account, or set datastore.kubernetes.kubeconfig"
                ))
            })?,
        };
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        config.read_timeout = None;
        config.write_timeout = Some(REQUEST_TIMEOUT);
        let client = Client::try_from(config).map_err(|e| {
            backend(format!(
                "cannot set up the Kubernetes client (TLS or proxy settings of the kubeconfig): {e}"
            ))
        })?;
        Ok(KubeStore {
            client,
            lease_namespace: lease_namespace.to_string(),
        })
    }

    /// The `InternalIP` addresses in the Node's `status.addresses` (set by the kubelet or
    /// the cloud provider), in their order; an error when there is no such Node.
    pub async fn node_internal_ips(&self, node: &str) -> Result<Vec<std::net::IpAddr>> {
        let shape = self.shape("Node")?;
        let Some(obj) = self.get_raw(&shape, "Node", node).await? else {
            return Err(DatastoreError::invalid(
                "Node",
                node,
                format!(
                    "there is no Kubernetes Node named {node:?} to read its InternalIP from: set \
                     node.name (or NODENAME) to this machine's Node name"
                ),
            ));
        };
        let addresses = obj
            .data
            .get("status")
            .and_then(|s| s.get("addresses"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok(addresses
            .iter()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("InternalIP"))
            .filter_map(|a| a.get("address").and_then(Value::as_str)?.parse().ok())
            .collect())
    }

    /// Whether the DaemonSet `namespace/name` (the agent's own) is gone or being deleted:
    /// an uninstall, not a rolling update.
    pub async fn daemonset_leaving(&self, namespace: &str, name: &str) -> Result<bool> {
        let api: Api<k8s_openapi::api::apps::v1::DaemonSet> =
            Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(None) => Ok(true),
            Ok(Some(ds)) => Ok(ds.metadata.deletion_timestamp.is_some()),
            Err(e) => Err(map_err("DaemonSet", name, e)),
        }
    }

    fn shape(&self, kind: &str) -> Result<Shape> {
        validate_kind(kind)?;
        Ok(Shape::of(kind, &self.lease_namespace))
    }

    fn api(&self, shape: &Shape) -> Api<DynamicObject> {
        let ar: &ApiResource = shape.resource();
        match shape.namespace() {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// A request bounded in time (watches excepted).
    async fn bounded<T>(
        kind: &str,
        name: &str,
        f: impl std::future::Future<Output = kube::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
            Ok(r) => r.map_err(|e| map_err(kind, name, e)),
            Err(_) => Err(DatastoreError::Unavailable {
                detail: format!(
                    "the Kubernetes API server did not answer within {}s ({kind} {name:?})",
                    REQUEST_TIMEOUT.as_secs()
                ),
            }),
        }
    }

    async fn get_raw(
        &self,
        shape: &Shape,
        kind: &str,
        name: &str,
    ) -> Result<Option<DynamicObject>> {
        let api = self.api(shape);
        let object_name = shape.object_name(kind, name)?;
        Self::bounded(kind, name, api.get_opt(&object_name)).await
    }

    /// The names and labels of the records of `kind` as they were at version `from`: an
    /// exact list (served by etcd, 410 Gone → [`DatastoreError::Expired`] once compacted).
    /// A version of "" or "0" (no particular point) lists the current state.
    async fn list_exact(
        &self,
        shape: &Shape,
        kind: &str,
        from: &Version,
    ) -> Result<Vec<(String, Labels)>> {
        let api = self.api(shape);
        let lp = match from.as_str() {
            "" | "0" => ListParams::default(),
            v => ListParams::default().at(v).matching(VersionMatch::Exact),
        };
        let list = match Self::bounded(kind, "", api.list(&lp)).await {
            Err(DatastoreError::Expired { detail, .. }) => {
                return Err(DatastoreError::Expired {
                    kind: kind.to_string(),
                    version: from.as_str().to_string(),
                    detail,
                })
            }
            other => other?,
        };
        let mut out = Vec::new();
        for obj in &list.items {
            if let Some(item) = shape.item(kind, obj) {
                let item = item?;
                out.push((item.object.name, item.object.labels));
            }
        }
        Ok(out)
    }

    /// Writes the record part of a Node (its `ferrovia.io/` annotations) with a merge patch
    /// carrying `resource_version` as precondition. `value` `None` removes the record.
    async fn patch_node(
        &self,
        shape: &Shape,
        current: &DynamicObject,
        name: &str,
        value: Option<&Value>,
    ) -> Result<DynamicObject> {
        let patch = shape::node_patch(current, value)?;
        let api = self.api(shape);
        Self::bounded(
            "Node",
            name,
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
    }
}

fn version_of(kind: &str, name: &str, obj: &DynamicObject) -> Result<Version> {
    obj.metadata
        .resource_version
        .clone()
        .map(Version::new)
        .ok_or_else(|| {
            backend(format!(
                "the API server returned {kind} {name:?} without a resourceVersion"
            ))
        })
}

#[async_trait::async_trait]
impl Datastore for KubeStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>> {
        let shape = self.shape(kind)?;
        validate_name(kind, name)?;
        match self.get_raw(&shape, kind, name).await? {
            Some(obj) => shape.item(kind, &obj).transpose(),
            None => Ok(None),
        }
    }

    async fn list(&self, kind: &str, selector: &Selector) -> Result<List> {
        let shape = self.shape(kind)?;
        let api = self.api(&shape);
        let mut lp = ListParams::default();
        if !selector.is_everything() {
            lp = lp.labels(&selector.to_string());
        }
        let list = Self::bounded(kind, "", api.list(&lp)).await?;
        let version = list
            .metadata
            .resource_version
            .clone()
            .map(Version::new)
            .ok_or_else(|| {
                backend(format!(
                    "the API server listed {kind} without a resourceVersion"
                ))
            })?;
        let mut items = Vec::new();
        for obj in &list.items {
            if let Some(item) = shape.item(kind, obj) {
                items.push(item?);
            }
        }
        items.sort_by(|a, b| a.object.name.cmp(&b.object.name));
        Ok(List { items, version })
    }

    async fn create(&self, kind: &str, object: &Object) -> Result<Version> {
        validate_object(kind, object)?;
        let shape = self.shape(kind)?;
        let name = object.name.as_str();
        if shape.is_node() {
            for _ in 0..NODE_ATTEMPTS {
                let Some(current) = self.get_raw(&shape, kind, name).await? else {
                    return Err(DatastoreError::invalid(
                        kind,
                        name,
                        format!(
                            "there is no Kubernetes Node named {name:?}: ferrovia never creates \
                             Nodes; set node.name (or NODENAME) to this machine's Node name"
                        ),
                    ));
                };
                if shape.item(kind, &current).is_some() {
                    return Err(DatastoreError::already_exists(kind, name));
                }
                match self
                    .patch_node(&shape, &current, name, Some(&object.value))
                    .await
                {
                    Ok(obj) => return version_of(kind, name, &obj),
                    // The Node changed (kubelet status, labels): read it again.
                    Err(DatastoreError::Conflict { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            return Err(DatastoreError::TooManyConflicts {
                kind: kind.to_string(),
                name: name.to_string(),
                attempts: NODE_ATTEMPTS,
            });
        }
        let obj = shape.to_object(kind, object, None)?;
        let api = self.api(&shape);
        let created = Self::bounded(kind, name, api.create(&PostParams::default(), &obj)).await?;
        version_of(kind, name, &created)
    }

    async fn update(&self, kind: &str, object: &Object, expected: &Version) -> Result<Version> {
        validate_object(kind, object)?;
        let shape = self.shape(kind)?;
        let name = object.name.as_str();
        if shape.is_node() {
            let current = self.get_raw(&shape, kind, name).await?;
            let Some(current) = current.filter(|c| shape.item(kind, c).is_some()) else {
                return Err(DatastoreError::not_found(kind, name));
            };
            if current.metadata.resource_version.as_deref() != Some(expected.as_str()) {
                return Err(DatastoreError::conflict(
                    kind,
                    name,
                    format!("resourceVersion {expected} is no longer current"),
                ));
            }
            let obj = self
                .patch_node(&shape, &current, name, Some(&object.value))
                .await?;
            return version_of(kind, name, &obj);
        }
        let obj = shape.to_object(kind, object, Some(expected))?;
        let api = self.api(&shape);
        let object_name = shape.object_name(kind, name)?;
        let replaced = Self::bounded(
            kind,
            name,
            api.replace(&object_name, &PostParams::default(), &obj),
        )
        .await?;
        version_of(kind, name, &replaced)
    }

    async fn delete(&self, kind: &str, name: &str, expected: Option<&Version>) -> Result<bool> {
        let shape = self.shape(kind)?;
        validate_name(kind, name)?;
        if shape.is_node() {
            for _ in 0..NODE_ATTEMPTS {
                let current = self.get_raw(&shape, kind, name).await?;
                let Some(current) = current.filter(|c| shape.item(kind, c).is_some()) else {
                    return Ok(false);
                };
                if let Some(v) = expected {
                    if current.metadata.resource_version.as_deref() != Some(v.as_str()) {
                        return Err(DatastoreError::conflict(
                            kind,
                            name,
                            format!("resourceVersion {v} is no longer current"),
                        ));
                    }
                }
                match self.patch_node(&shape, &current, name, None).await {
                    Ok(_) => return Ok(true),
                    Err(DatastoreError::Conflict { .. }) if expected.is_none() => continue,
                    Err(e) => return Err(e),
                }
            }
            return Err(DatastoreError::TooManyConflicts {
                kind: kind.to_string(),
                name: name.to_string(),
                attempts: NODE_ATTEMPTS,
            });
        }
        let api = self.api(&shape);
        let object_name = shape.object_name(kind, name)?;
        let dp = DeleteParams {
            preconditions: expected.map(|v| Preconditions {
                resource_version: Some(v.as_str().to_string()),
                uid: None,
            }),
            ..DeleteParams::default()
        };
        match Self::bounded(kind, name, api.delete(&object_name, &dp)).await {
            Ok(_) => Ok(true),
            Err(DatastoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn watch(&self, kind: &str, selector: &Selector, from: &Version) -> Result<EventStream> {
        let shape = self.shape(kind)?;
        let shape_for_list = shape.clone();
        let api = self.api(&shape);
        let mut wp = WatchParams::default();
        // Kubernetes reports an object whose labels stop matching as deleted with its last
        // matching state; the datastore contract wants its new state. So custom resources and
        // Leases are watched whole and the selector applied here, from the labels each object
        // had before the change (seeded from a list at exactly `from`, see below). Node
        // watches pass the selector on (their records live in annotations, not labels).
        let client_side = !selector.is_everything() && !shape.is_node();
        if !selector.is_everything() && !client_side {
            wp = wp.labels(&selector.to_string());
        }
        let state = WatchState {
            api,
            wp,
            shape,
            kind: kind.to_string(),
            last: from.as_str().to_string(),
            inner: None,
            seen: HashMap::new(),
            selector: client_side.then(|| selector.clone()),
            before: HashMap::new(),
            idle_restarts: 0,
            done: false,
        };
        // Open the first watch now, so that an Expired or unreachable server shows at once.
        // Node watches start knowing no record (`seen` empty), so each Node's first event is
        // reported even when its record looks unchanged: the watcher's copy is as of `from`,
        // and a record written between `from` and now must reach it. (Seeding `seen` from a
        // list taken now dropped exactly those: a node registered between the watcher's
        // list and its watch was never seen by the mesh.) Later Node updates that leave the
        // record alone (kubelet status) are dropped as before.
        // Selector watches seed the labels "before" from the objects as they were at `from`
        // (an exact list), not as they are now: a change between the watcher's list and this
        // moment would otherwise look like no change — an object that stopped matching or was
        // deleted in that window was never reported gone.
        let mut state = state;
        if client_side {
            let objects = self.list_exact(&shape_for_list, kind, from).await?;
            for (name, labels) in objects {
                state.before.insert(name, labels);
            }
        }
        state.open().await?;
        Ok(futures::stream::unfold(state, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
        .boxed())
    }
}

type Inner = futures::stream::BoxStream<'static, kube::Result<WatchEvent<DynamicObject>>>;

/// One logical watch: Kubernetes watches from the last version seen, re-opened when the API
/// server ends one normally (its timeout), ended by any error.
struct WatchState {
    api: Api<DynamicObject>,
    wp: WatchParams,
    shape: Shape,
    kind: String,
    last: String,
    inner: Option<Inner>,
    /// Node watches: the last record seen per Node (`None`: no record), to turn Node
    /// updates into record events and drop those that do not touch the record.
    seen: HashMap<String, Option<(Labels, Value)>>,
    /// A selector applied here rather than by the API server, and the labels of every
    /// object of the kind before its latest change.
    selector: Option<Selector>,
    before: HashMap<String, Labels>,
    /// Watches the server ended without a single event in between.
    idle_restarts: u32,
    done: bool,
}

/// Watches re-opened in a row with no event before the stream gives up (an API server
/// that closes every watch at once).
const MAX_IDLE_RESTARTS: u32 = 5;

impl WatchState {
    fn expired(&self, detail: String) -> DatastoreError {
        DatastoreError::Expired {
            kind: self.kind.clone(),
            version: self.last.clone(),
            detail,
        }
    }

    fn error(&self, e: kube::Error) -> DatastoreError {
        match map_err(&self.kind, "", e) {
            DatastoreError::Expired { detail, .. } => self.expired(detail),
            other => other,
        }
    }

    async fn open(&mut self) -> Result<()> {
        let opened = self.api.watch(&self.wp, &self.last).await;
        match opened {
            Ok(s) => {
                self.inner = Some(s.boxed());
                Ok(())
            }
            Err(e) => {
                self.done = true;
                Err(self.error(e))
            }
        }
    }

    /// The next event to report, an error (which ends the stream) or the end.
    async fn next(&mut self) -> Option<Result<Event>> {
        loop {
            if self.done {
                return None;
            }
            if self.inner.is_none() {
                if self.idle_restarts >= MAX_IDLE_RESTARTS {
                    self.done = true;
                    return Some(Err(DatastoreError::Unavailable {
                        detail: format!(
                            "the Kubernetes API server keeps closing watches of {} at once",
                            self.kind
                        ),
                    }));
                }
                if let Err(e) = self.open().await {
                    return Some(Err(e));
                }
            }
            let inner = self.inner.as_mut()?;
            let ev = match inner.try_next().await {
                Ok(Some(ev)) => ev,
                Ok(None) => {
                    // The server ended the watch (its timeout): resume from the last version.
                    self.inner = None;
                    self.idle_restarts += 1;
                    continue;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(self.error(e)));
                }
            };
            self.idle_restarts = 0;
            let (obj, deleted, added) = match ev {
                WatchEvent::Added(o) => (o, false, true),
                WatchEvent::Modified(o) => (o, false, false),
                WatchEvent::Deleted(o) => (o, true, false),
                WatchEvent::Bookmark(b) => {
                    self.last = b.metadata.resource_version;
                    continue;
                }
                WatchEvent::Error(status) => {
                    self.done = true;
                    let e = map_err(&self.kind, "", kube::Error::Api(status));
                    return Some(Err(match e {
                        DatastoreError::Expired { detail, .. } => self.expired(detail),
                        other => other,
                    }));
                }
            };
            if let Some(rv) = obj.metadata.resource_version.clone() {
                self.last = rv;
            }
            if let Some(ev) = self.translate(obj, deleted, added) {
                return Some(ev);
            }
        }
    }

    /// The datastore event for one Kubernetes event, if it concerns a record.
    fn translate(
        &mut self,
        obj: DynamicObject,
        deleted: bool,
        added: bool,
    ) -> Option<Result<Event>> {
        if self.shape.is_node() {
            return self.translate_node(obj, deleted);
        }
        let item = match self.shape.item(&self.kind, &obj)? {
            Ok(item) => item,
            Err(e) => return Some(Err(e)),
        };
        if let Some(selector) = &self.selector {
            let name = item.object.name.clone();
            let before = if deleted {
                self.before.remove(&name)
            } else {
                self.before.insert(name, item.object.labels.clone())
            };
            return super::event_for(selector, before.as_ref(), item, deleted).map(Ok);
        }
        Some(Ok(if deleted {
            Event::Deleted(item)
        } else if added {
            Event::Added(item)
        } else {
            Event::Modified(item)
        }))
    }

    /// Node events: the record appears (annotations added) → `Added`, changes →
    /// `Modified`, disappears (annotations removed, Node deleted) → `Deleted`; Node updates
    /// that leave the record and labels as they were (kubelet status) → nothing.
    fn translate_node(&mut self, obj: DynamicObject, deleted: bool) -> Option<Result<Event>> {
        let name = obj.metadata.name.clone()?;
        let now = match self.shape.item(&self.kind, &obj) {
            None => None,
            Some(Ok(item)) => Some(item),
            Some(Err(e)) => return Some(Err(e)),
        };
        let before = self.seen.get(&name).cloned();
        if deleted {
            self.seen.remove(&name);
            return match (now, before) {
                (Some(item), _) => Some(Ok(Event::Deleted(item))),
                (None, Some(Some(_)) | None) => {
                    Some(Ok(Event::Deleted(shape::bare_node_item(&obj))))
                }
                (None, Some(None)) => None,
            };
        }
        match now {
            Some(item) => {
                let state = (item.object.labels.clone(), item.object.value.clone());
                self.seen.insert(name, Some(state.clone()));
                match before {
                    Some(Some(b)) if b == state => None,
                    Some(Some(_)) => Some(Ok(Event::Modified(item))),
                    _ => Some(Ok(Event::Added(item))),
                }
            }
            None => {
                self.seen.insert(name, None);
                match before {
                    Some(None) => None,
                    // Had a record, or unknown (the record may have existed at the version the
                    // watch started from): report it gone once.
                    _ => Some(Ok(Event::Deleted(shape::bare_node_item(&obj)))),
                }
            }
        }
    }
}

/// `open(&config)` for `datastore.kubernetes`.
pub async fn open(cfg: &crate::config::Kubernetes) -> Result<KubeStore> {
    KubeStore::connect(
        cfg.kubeconfig.as_deref(),
        cfg.lease_namespace
            .as_deref()
            .unwrap_or(DEFAULT_LEASE_NAMESPACE),
    )
    .await
}

/// A client of the same API server, with the same credentials, for what the agent reads
/// besides its datastore (Services and their endpoints).
pub async fn client(cfg: &crate::config::Kubernetes) -> Result<Client> {
    Ok(open(cfg).await?.client)
}
