//! What the agents keep in the datastore, as serde records (camelCase JSON, like
//! Kubernetes objects), and the idempotent helpers the agent and the CLI call.
//!
//! | kind         | name        | record          |
//! |--------------|-------------|-----------------|
//! | `Node`       | node name   | [`NodeRecord`]  |
//! | `NodeLease`  | node name   | [`NodeLease`]   |
//! | `ClusterBgp` | `default`   | [`ClusterBgp`]  |
//! | `BgpPeer`    | peer name   | [`PeerRecord`]  |
//!
//! The heartbeat is a `NodeLease` of its own (like `coordination.k8s.io` Leases), so
//! renewing it every few seconds wakes none of the watchers of nodes, peers or blocks.
//! Names are DNS-1123 subdomains (node names are already, in Kubernetes).
//!
//! Unknown JSON fields are ignored when reading, so an older agent can read what a newer
//! one wrote.

use super::{
    Change, Datastore, DatastoreError, DatastoreExt, Resource, Result, Selector, SelectorError,
    Typed,
};
use crate::config::RouteSafety;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// A regular expression (RE2 and ECMA-262 alike) for the label selectors a peer's
/// `nodeSelector` holds: `k=v`, `k==v`, `k!=v`, `k`, `!k`, joined by commas. The BGPPeer
/// CRD and the chart's values schema use it; [`Selector::parse`] has the last word.
pub const NODE_SELECTOR_PATTERN: &str = concat!(
    r"^\s*(!([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
    r"|([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?((=|=",
    r"=|!=)([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?)?)(\s*,\s*(!([a-z0-9]([-a-z0-9.",
    r"]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?|([a-z0-9]([-a-z0-9.]*[a-",
    r"z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?((=|==|!=)([A-Za-z0-9]([-A-Za-",
    r"z0-9_.]*[A-Za-z0-9])?)?)?))*\s*$",
);

/// The name of the one [`ClusterBgp`] object.
pub const CLUSTER_BGP_NAME: &str = "default";

/// One node of the cluster, as its agent registered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub name: String,
    /// The node's own addresses (BGP session and next-hop addresses).
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// The node's AS; `None`: the cluster's ([`ClusterBgp::as_number`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    pub router_id: Ipv4Addr,
    /// Prefixes the node originates from its configuration (`originate:`); IPAM's blocks
    /// are announced from the IPAM objects.
    #[serde(default)]
    pub blocks: Vec<IpNet>,
    /// The node is a route reflector (RFC 4456) with this cluster id: with the mesh off,
    /// every other node peers with the reflectors only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_reflector_cluster_id: Option<Ipv4Addr>,
    /// The node's pod CIDRs, at most one per family (Kubernetes: the Node's
    /// `spec.podCIDRs`, set by the controller-manager; SQLite: `ferrovia node set NAME
    /// --pod-cidr CIDR`): the only addresses of its pods with `ipam.mode: podCIDR`. An
    /// agent's registration keeps the stored ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<IpNet>,
    /// The node's labels, what a peer's `nodeSelector` matches (Kubernetes: the Node's
    /// `metadata.labels`, read only; SQLite: `ferrovia node set NAME --label k=v`). An
    /// agent's registration keeps the stored ones.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Resource for NodeRecord {
    const KIND: &'static str = "Node";
    fn name(&self) -> String {
        self.name.clone()
    }
}

/// A node's sign of life, renewed by its agent (Kubernetes: a `coordination.k8s.io`
/// Lease named after the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLease {
    /// The node's name.
    pub name: String,
    /// Last renewal, unix seconds.
    pub renew_time: u64,
}

impl Resource for NodeLease {
    const KIND: &'static str = "NodeLease";
    fn name(&self) -> String {
        self.name.clone()
    }
}

impl NodeRecord {
    /// The AS the node speaks with: its own, or else the cluster's.
    pub fn effective_as(&self, cluster: &ClusterBgp) -> u32 {
        self.as_number.unwrap_or(cluster.as_number)
    }
}

/// The cluster-wide BGP configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterBgp {
    /// Default AS of every node that does not set its own.
    pub as_number: u32,
    /// Full iBGP mesh between all nodes (off when route reflectors or ToRs do the job).
    pub mesh: bool,
    pub listen_port: u16,
    /// The Service address ranges every node announces (see [`ServiceCidrs`]).
    #[serde(flatten)]
    pub services: ServiceCidrs,
}

/// The Service address ranges of the cluster (Kubernetes datastore only: the agent watches
/// Services there). Every node announces each configured CIDR; each Service address inside
/// one is announced as a /32 (/128) too, from the nodes the traffic policy allows.
/// Addresses outside every CIDR are never announced.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceCidrs {
    /// Ranges of `spec.clusterIP(s)`.
    #[serde(
        rename = "serviceClusterIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub cluster_ips: Vec<IpNet>,
    /// Ranges of `spec.externalIPs`.
    #[serde(
        rename = "serviceExternalIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub external_ips: Vec<IpNet>,
    /// Ranges of `status.loadBalancer.ingress[].ip`.
    #[serde(
        rename = "serviceLoadBalancerIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub load_balancer_ips: Vec<IpNet>,
}

impl ServiceCidrs {
    pub fn is_empty(&self) -> bool {
        self.cluster_ips.is_empty()
            && self.external_ips.is_empty()
            && self.load_balancer_ips.is_empty()
    }

    /// The lists with their keys, in a fixed order.
    pub fn lists(&self) -> [(&'static str, &Vec<IpNet>); 3] {
        [
            ("serviceClusterIPs", &self.cluster_ips),
            ("serviceExternalIPs", &self.external_ips),
            ("serviceLoadBalancerIPs", &self.load_balancer_ips),
        ]
    }

    /// Every CIDR is a network address (no host bits set, e.g. 10.96.0.0/12, not
    /// 10.96.0.1/12); the error names the key.
    pub fn check(&self) -> std::result::Result<(), String> {
        for (key, list) in self.lists() {
            for c in list {
                if c.trunc() != *c {
                    return Err(format!(
                        "{key}: {c} has host bits set; write the network address, {}",
                        c.trunc()
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Resource for ClusterBgp {
    const KIND: &'static str = "ClusterBgp";
    fn name(&self) -> String {
        CLUSTER_BGP_NAME.to_string()
    }
}

/// A BGP peer outside the node mesh (route reflector, ToR): for every node, for one node
/// when `node` is set, or for the nodes whose labels match `node_selector`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRecord {
    pub name: String,
    pub address: IpAddr,
    pub as_number: u32,
    /// Only this node peers with it; `None`: every node does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only the nodes whose labels match this label selector (Kubernetes syntax: `k=v`,
    /// `k!=v`, `k`, `!k`, joined by `,`) peer with it; not together with `node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// A file (on each node) holding the TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// GTSM (RFC 5082): the peer is at most this many hops away (1–254); None: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_security: Option<u8>,
    /// BFD with this peer (`{ enabled, intervalMs, multiplier }`, as in the configuration
    /// file); None: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<ferrovia_bgp::bfd::BfdConfig>,
    /// Route safety: maxPrefixes, allowPoolPrefixes, allowDefaultRoute, importPrefixes,
    /// exportPrefixes (the keys of a configuration-file peer).
    #[serde(flatten)]
    pub safety: RouteSafety,
}

impl Resource for PeerRecord {
    const KIND: &'static str = "BgpPeer";
    fn name(&self) -> String {
        self.name.clone()
    }
}

impl PeerRecord {
    /// Whether the node named `node`, with these labels, peers with it. A selector that
    /// does not parse matches no node (stored peers are checked on write; a hand-made
    /// object with a bad selector must not fall back to "every node").
    pub fn applies_to(&self, node: &str, labels: &BTreeMap<String, String>) -> bool {
        if let Some(n) = &self.node {
            return n == node;
        }
        match self.selector() {
            None => true,
            Some(Ok(sel)) => sel.matches(labels),
            Some(Err(_)) => false,
        }
    }

    /// The parsed `node_selector`, `None` when there is none.
    pub fn selector(&self) -> Option<std::result::Result<Selector, SelectorError>> {
        self.node_selector.as_deref().map(Selector::parse)
    }

    /// Whether the peer is for some nodes only (`node` or `node_selector`).
    pub fn is_per_node(&self) -> bool {
        self.node.is_some() || self.node_selector.is_some()
    }
}

/// Now, in unix seconds (for [`renew_lease`]).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn invalid(kind: &str, name: &str, reason: impl Into<String>) -> DatastoreError {
    DatastoreError::invalid(kind, name, reason)
}

fn check_as(kind: &str, name: &str, as_number: u32) -> Result<()> {
    if as_number == 0 || as_number == u32::from(ferrovia_bgp::message::AS_TRANS) {
        return Err(invalid(
            kind,
            name,
            format!("AS {as_number} is reserved and cannot be used"),
        ));
    }
    Ok(())
}

/// `modify` returns `None` only after a delete or a `Keep` of an absent object; the
/// helpers below never ask for either, so this is a bug guard, not a panic.
fn present<R: Resource>(name: &str, v: Option<Typed<R>>) -> Result<Typed<R>> {
    v.ok_or_else(|| DatastoreError::not_found(R::KIND, name))
}

/// Creates the node or replaces it with `record`; writes nothing when the stored record
/// is already equal (so re-registering does not wake every watcher). The record replaces
/// the stored one as a whole. The lease is separate ([`renew_lease`]).
pub async fn register_node(
    store: &dyn Datastore,
    record: &NodeRecord,
) -> Result<Typed<NodeRecord>> {
    let kind = NodeRecord::KIND;
    if let Some(asn) = record.as_number {
        check_as(kind, &record.name, asn)?;
    }
    if record.router_id.is_unspecified() || record.router_id.is_broadcast() {
        return Err(invalid(
            kind,
            &record.name,
            format!("router id {} is not usable", record.router_id),
        ));
    }
    if let Some(c) = record.route_reflector_cluster_id {
        check_cluster_id(kind, &record.name, c)?;
    }
    let stored = store
        .modify::<NodeRecord, _>(&record.name, |cur| {
            // A registration without a cluster id keeps the one set with `node set`, one
            // without pod CIDRs the stored ones.
            let mut want = record.clone();
            if want.route_reflector_cluster_id.is_none() {
                want.route_reflector_cluster_id = cur.and_then(|c| c.route_reflector_cluster_id);
            }
            if want.pod_cidrs.is_empty() {
                if let Some(cur) = cur {
                    want.pod_cidrs = cur.pod_cidrs.clone();
                }
            }
            // Labels are the operator's (or, on Kubernetes, the Node's own), never the
            // agent's: a registration keeps them.
            if let Some(cur) = cur {
                want.labels = cur.labels.clone();
            }
            Ok(match cur {
                Some(cur) if *cur == want => Change::Keep,
                _ => Change::Put(want),
            })
        })
        .await?;
    present(&record.name, stored)
}

fn check_cluster_id(kind: &str, name: &str, c: Ipv4Addr) -> Result<()> {
    if c.is_unspecified() || c.is_multicast() || c.is_broadcast() {
        return Err(invalid(
            kind,
            name,
            format!("{c} cannot be a route reflector cluster id; use a unicast IPv4 address"),
        ));
    }
    Ok(())
}

/// Checks pod CIDRs: canonical (no host bits), at most one per family.
pub fn check_pod_cidrs(name: &str, cidrs: &[IpNet]) -> Result<()> {
    let kind = NodeRecord::KIND;
    for c in cidrs {
        if c.trunc() != *c {
            return Err(invalid(
                kind,
                name,
                format!("pod CIDR {c} has host bits set; write it as {}", c.trunc()),
            ));
        }
    }
    let v4 = cidrs.iter().filter(|c| c.addr().is_ipv4()).count();
    if v4 > 1 || cidrs.len() - v4 > 1 {
        return Err(invalid(
            kind,
            name,
            "a node has at most one pod CIDR per family".to_string(),
        ));
    }
    Ok(())
}

/// Makes node `name` a route reflector with this cluster id, or (None) an ordinary node.
pub async fn set_node_cluster_id(
    store: &dyn Datastore,
    name: &str,
    cluster_id: Option<Ipv4Addr>,
) -> Result<Typed<NodeRecord>> {
    let kind = NodeRecord::KIND;
    if let Some(c) = cluster_id {
        check_cluster_id(kind, name, c)?;
    }
    let stored = store
        .modify::<NodeRecord, _>(name, |cur| {
            let Some(cur) = cur else {
                return Err(invalid(
                    kind,
                    name,
                    "no such node: register it first (its agent does at start, or `ferrovia node register`)",
                ));
            };
            if cur.route_reflector_cluster_id == cluster_id {
                return Ok(Change::Keep);
            }
            let mut next = cur.clone();
            next.route_reflector_cluster_id = cluster_id;
            Ok(Change::Put(next))
        })
        .await?;
    present(name, stored)
}

/// Sets the pod CIDRs of a registered node (`NotFound` when it is not registered).
pub async fn set_pod_cidrs(
    store: &dyn Datastore,
    name: &str,
    cidrs: &[IpNet],
) -> Result<Typed<NodeRecord>> {
    check_pod_cidrs(name, cidrs)?;
    let stored = store
        .modify::<NodeRecord, _>(name, |cur| match cur {
            None => Err(DatastoreError::NotFound {
                kind: NodeRecord::KIND.to_string(),
                name: name.to_string(),
            }),
            Some(cur) if cur.pod_cidrs == cidrs => Ok(Change::Keep),
            Some(cur) => {
                let mut rec = cur.clone();
                rec.pod_cidrs = cidrs.to_vec();
                Ok(Change::Put(rec))
            }
        })
        .await?;
    present(name, stored)
}

/// Changes the labels of a registered node (`NotFound` when it is not registered): sets
/// every `(key, Some(value))`, removes every `(key, None)`. Keys and values follow the
/// Kubernetes label rules. Agents re-evaluate their peers' node selectors at once.
pub async fn set_node_labels(
    store: &dyn Datastore,
    name: &str,
    changes: &[(String, Option<String>)],
) -> Result<Typed<NodeRecord>> {
    let kind = NodeRecord::KIND;
    let mut check = super::Labels::new();
    for (k, v) in changes {
        check.insert(k.clone(), v.clone().unwrap_or_default());
    }
    super::validate_labels(kind, name, &check)?;
    let stored = store
        .modify::<NodeRecord, _>(name, |cur| {
            let Some(cur) = cur else {
                return Err(DatastoreError::not_found(kind, name));
            };
            let mut next = cur.clone();
            for (k, v) in changes {
                match v {
                    Some(v) => next.labels.insert(k.clone(), v.clone()),
                    None => next.labels.remove(k),
                };
            }
            Ok(if &next == cur {
                Change::Keep
            } else {
                Change::Put(next)
            })
        })
        .await?;
    present(name, stored)
}

/// Removes the node and its lease; false when it was not registered.
pub async fn remove_node(store: &dyn Datastore, name: &str) -> Result<bool> {
    let removed = store.delete_object::<NodeRecord>(name, None).await?;
    store.delete_object::<NodeLease>(name, None).await?;
    Ok(removed)
}

/// Renews the node's lease to `now` (unix seconds, see [`unix_now`]), creating it when
/// absent. Writes only the lease: watchers of nodes, peers and blocks are not woken.
pub async fn renew_lease(store: &dyn Datastore, name: &str, now: u64) -> Result<Typed<NodeLease>> {
    let stored = store
        .modify::<NodeLease, _>(name, |cur| {
            Ok(match cur {
                Some(cur) if cur.renew_time == now => Change::Keep,
                _ => Change::Put(NodeLease {
                    name: name.to_string(),
                    renew_time: now,
                }),
            })
        })
        .await?;
    present(name, stored)
}

pub async fn get_lease(store: &dyn Datastore, name: &str) -> Result<Option<NodeLease>> {
    Ok(store.get_object::<NodeLease>(name).await?.map(|t| t.value))
}

/// Every registered node, sorted by name.
pub async fn list_nodes(store: &dyn Datastore) -> Result<Vec<NodeRecord>> {
    Ok(store
        .list_objects::<NodeRecord>(&Selector::everything())
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// Stores `default` as the cluster BGP configuration when there is none yet, and returns
/// the stored configuration (which wins over `default` when it exists).
pub async fn seed_cluster_bgp(store: &dyn Datastore, default: &ClusterBgp) -> Result<ClusterBgp> {
    check_as(ClusterBgp::KIND, CLUSTER_BGP_NAME, default.as_number)?;
    let stored = store
        .modify::<ClusterBgp, _>(CLUSTER_BGP_NAME, |cur| {
            Ok(match cur {
                Some(_) => Change::Keep,
                None => Change::Put(default.clone()),
            })
        })
        .await?;
    Ok(present(CLUSTER_BGP_NAME, stored)?.value)
}

pub async fn get_cluster_bgp(store: &dyn Datastore) -> Result<Option<ClusterBgp>> {
    Ok(store
        .get_object::<ClusterBgp>(CLUSTER_BGP_NAME)
        .await?
        .map(|v| v.value))
}

/// Changes the given fields of the cluster BGP configuration (compare-and-swap, retried
/// on conflicts) and returns the result. Fails with [`DatastoreError::NotFound`] before an
/// agent has seeded it.
pub async fn set_cluster_bgp(
    store: &dyn Datastore,
    mesh: Option<bool>,
    as_number: Option<u32>,
    services: &ServiceCidrsChange,
) -> Result<ClusterBgp> {
    if let Some(asn) = as_number {
        check_as(ClusterBgp::KIND, CLUSTER_BGP_NAME, asn)?;
    }
    let given = ServiceCidrs {
        cluster_ips: services.cluster_ips.clone().unwrap_or_default(),
        external_ips: services.external_ips.clone().unwrap_or_default(),
        load_balancer_ips: services.load_balancer_ips.clone().unwrap_or_default(),
    };
    given
        .check()
        .map_err(|e| invalid(ClusterBgp::KIND, CLUSTER_BGP_NAME, e))?;
    let stored = store
        .modify::<ClusterBgp, _>(CLUSTER_BGP_NAME, |cur| {
            let Some(cur) = cur else {
                return Err(DatastoreError::NotFound {
                    kind: ClusterBgp::KIND.to_string(),
                    name: CLUSTER_BGP_NAME.to_string(),
                });
            };
            let new = ClusterBgp {
                mesh: mesh.unwrap_or(cur.mesh),
                as_number: as_number.unwrap_or(cur.as_number),
                services: ServiceCidrs {
                    cluster_ips: services
                        .cluster_ips
                        .clone()
                        .unwrap_or_else(|| cur.services.cluster_ips.clone()),
                    external_ips: services
                        .external_ips
                        .clone()
                        .unwrap_or_else(|| cur.services.external_ips.clone()),
                    load_balancer_ips: services
                        .load_balancer_ips
                        .clone()
                        .unwrap_or_else(|| cur.services.load_balancer_ips.clone()),
                },
                ..cur.clone()
            };
            Ok(if &new == cur {
                Change::Keep
            } else {
                Change::Put(new)
            })
        })
        .await?;
    Ok(present(CLUSTER_BGP_NAME, stored)?.value)
}

/// The Service CIDR lists to replace (`None`: keep the stored list).
#[derive(Debug, Clone, Default)]
pub struct ServiceCidrsChange {
    pub cluster_ips: Option<Vec<IpNet>>,
    pub external_ips: Option<Vec<IpNet>>,
    pub load_balancer_ips: Option<Vec<IpNet>>,
}

impl ServiceCidrsChange {
    pub fn is_empty(&self) -> bool {
        self.cluster_ips.is_none()
            && self.external_ips.is_none()
            && self.load_balancer_ips.is_none()
    }
}

/// Creates or replaces the peer (no write when it is already stored as given).
pub async fn put_peer(store: &dyn Datastore, peer: &PeerRecord) -> Result<Typed<PeerRecord>> {
    check_peer(peer)?;
    let stored = store
        .modify::<PeerRecord, _>(&peer.name, |cur| {
            Ok(match cur {
                Some(cur) if cur == peer => Change::Keep,
                _ => Change::Put(peer.clone()),
            })
        })
        .await?;
    present(&peer.name, stored)
}

fn check_peer(peer: &PeerRecord) -> Result<()> {
    let kind = PeerRecord::KIND;
    check_as(kind, &peer.name, peer.as_number)?;
    if peer.address.is_unspecified() || peer.address.is_multicast() {
        return Err(invalid(
            kind,
            &peer.name,
            format!("{} is not a peer address", peer.address),
        ));
    }
    if peer.node.as_deref() == Some("") {
        return Err(invalid(kind, &peer.name, "the node name is empty"));
    }
    if peer.node.is_some() && peer.node_selector.is_some() {
        return Err(invalid(
            kind,
            &peer.name,
            "node and nodeSelector are both set: give node for one node by name, or \
             nodeSelector for the nodes with matching labels, not both",
        ));
    }
    match peer.selector() {
        Some(Err(e)) => return Err(invalid(kind, &peer.name, format!("nodeSelector: {e}"))),
        Some(Ok(sel)) if sel.is_everything() => {
            return Err(invalid(
                kind,
                &peer.name,
                "nodeSelector is empty, which would match every node: leave it out for a \
                 peer of every node, or give requirements like rack=r1",
            ))
        }
        _ => {}
    }
    if let Some(hops) = peer.ttl_security {
        if ferrovia_bgp::gtsm::min_ttl(hops).is_err() {
            return Err(invalid(
                kind,
                &peer.name,
                format!(
                    "ttlSecurity {hops} is not a hop count for GTSM: use 1 (a directly connected peer) to {}, or leave it out to turn GTSM off",
                    ferrovia_bgp::gtsm::MAX_HOPS
                ),
            ));
        }
    }
    if let Some(b) = peer.bfd.filter(|b| b.enabled) {
        if let Err(e) = b.timing() {
            return Err(invalid(kind, &peer.name, e.to_string()));
        }
    }
    if let Err((key, message)) = peer.safety.check() {
        return Err(invalid(kind, &peer.name, format!("{key}: {message}")));
    }
    Ok(())
}

/// Changes a stored peer with `change` (compare-and-swap, retried on conflicts; the result
/// is checked like [`put_peer`]'s; an error of `change` is the reason the change is
/// invalid). Fails with [`DatastoreError::NotFound`] when there is no peer of that name.
pub async fn update_peer<F>(
    store: &dyn Datastore,
    name: &str,
    change: F,
) -> Result<Typed<PeerRecord>>
where
    F: Fn(&mut PeerRecord) -> std::result::Result<(), String> + Send + Sync,
{
    let kind = PeerRecord::KIND;
    let stored = store
        .modify::<PeerRecord, _>(name, |cur| {
            let Some(cur) = cur else {
                return Err(DatastoreError::not_found(kind, name));
            };
            let mut new = cur.clone();
            change(&mut new).map_err(|m| invalid(kind, name, m))?;
            check_peer(&new)?;
            Ok(if &new == cur {
                Change::Keep
            } else {
                Change::Put(new)
            })
        })
        .await?;
    present(name, stored)
}

/// Removes the peer; false when it did not exist.
pub async fn remove_peer(store: &dyn Datastore, name: &str) -> Result<bool> {
    store.delete_object::<PeerRecord>(name, None).await
}

/// Every peer, global and per-node, sorted by name.
pub async fn list_peers(store: &dyn Datastore) -> Result<Vec<PeerRecord>> {
    Ok(store
        .list_objects::<PeerRecord>(&Selector::everything())
        .await?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

#[cfg(test)]
mod tests;
