//! What the agents keep in the datastore, as serde records (camelCase JSON, like
//! Kubernetes objects), and the idempotent helpers the agent and the CLI call.
//!
//! | kind         | name        | record          |
//! |--------------|-------------|-----------------|
//! | `Node`       | node name   | [`NodeRecord`]  |
//! | `ClusterBgp` | `default`   | [`ClusterBgp`]  |
//! | `BgpPeer`    | peer name   | [`PeerRecord`]  |
//!
//! Unknown JSON fields are ignored when reading, so an older agent can read what a newer
//! one wrote.

use super::typed::{Change, DatastoreExt, Resource};
use super::{Datastore, DatastoreError, Result, Versioned};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// Last sign of life, unix seconds.
    #[serde(default)]
    pub heartbeat: u64,
    /// The pod address blocks routed to this node (until IPAM manages blocks).
    #[serde(default)]
    pub blocks: Vec<IpNet>,
}

impl Resource for NodeRecord {
    const KIND: &'static str = "Node";
    fn name(&self) -> &str {
        &self.name
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
}

impl Resource for ClusterBgp {
    const KIND: &'static str = "ClusterBgp";
    fn name(&self) -> &str {
        CLUSTER_BGP_NAME
    }
}

/// A BGP peer outside the node mesh (route reflector, ToR): for every node, or for one
/// node when `node` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerRecord {
    pub name: String,
    pub address: IpAddr,
    pub as_number: u32,
    /// Only this node peers with it; `None`: every node does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// A file (on each node) holding the TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

impl Resource for PeerRecord {
    const KIND: &'static str = "BgpPeer";
    fn name(&self) -> &str {
        &self.name
    }
}

impl PeerRecord {
    /// Whether the node named `node` peers with it.
    pub fn applies_to(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// Now, in unix seconds (for [`heartbeat`]).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn invalid(kind: &str, name: &str, reason: impl Into<String>) -> DatastoreError {
    DatastoreError::InvalidValue {
        kind: kind.to_string(),
        name: name.to_string(),
        reason: reason.into(),
    }
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
fn present<R: Resource>(name: &str, v: Option<Versioned<R>>) -> Result<Versioned<R>> {
    v.ok_or_else(|| DatastoreError::NotFound {
        kind: R::KIND.to_string(),
        name: name.to_string(),
    })
}

/// Creates the node or replaces it with `record`; writes nothing when the stored record
/// is already equal (so re-registering does not wake every watcher). The record replaces
/// the stored one as a whole, blocks and heartbeat included.
pub fn register_node<S: Datastore + ?Sized>(
    store: &S,
    record: &NodeRecord,
) -> Result<Versioned<NodeRecord>> {
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
    let stored = store.modify::<NodeRecord, _>(&record.name, |cur| {
        Ok(match cur {
            Some(cur) if cur == record => Change::Keep,
            _ => Change::Put(record.clone()),
        })
    })?;
    present(&record.name, stored)
}

/// Removes the node; false when it was not registered.
pub fn remove_node<S: Datastore + ?Sized>(store: &S, name: &str) -> Result<bool> {
    store.delete_object::<NodeRecord>(name, None)
}

/// Sets the node's heartbeat to `now` (unix seconds, see [`unix_now`]); fails with
/// [`DatastoreError::NotFound`] when the node is not registered.
pub fn heartbeat<S: Datastore + ?Sized>(
    store: &S,
    name: &str,
    now: u64,
) -> Result<Versioned<NodeRecord>> {
    let stored = store.modify::<NodeRecord, _>(name, |cur| match cur {
        None => Err(DatastoreError::NotFound {
            kind: NodeRecord::KIND.to_string(),
            name: name.to_string(),
        }),
        Some(cur) if cur.heartbeat == now => Ok(Change::Keep),
        Some(cur) => Ok(Change::Put(NodeRecord {
            heartbeat: now,
            ..cur.clone()
        })),
    })?;
    present(name, stored)
}

pub fn get_node<S: Datastore + ?Sized>(
    store: &S,
    name: &str,
) -> Result<Option<Versioned<NodeRecord>>> {
    store.get_object(name)
}

/// Every registered node, sorted by name.
pub fn list_nodes<S: Datastore + ?Sized>(store: &S) -> Result<Vec<NodeRecord>> {
    Ok(store
        .list_objects::<NodeRecord>()?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// Stores `default` as the cluster BGP configuration when there is none yet, and returns
/// the stored configuration (which wins over `default` when it exists).
pub fn seed_cluster_bgp<S: Datastore + ?Sized>(
    store: &S,
    default: &ClusterBgp,
) -> Result<ClusterBgp> {
    check_as(ClusterBgp::KIND, CLUSTER_BGP_NAME, default.as_number)?;
    let stored = store.modify::<ClusterBgp, _>(CLUSTER_BGP_NAME, |cur| {
        Ok(match cur {
            Some(_) => Change::Keep,
            None => Change::Put(default.clone()),
        })
    })?;
    Ok(present(CLUSTER_BGP_NAME, stored)?.value)
}

pub fn get_cluster_bgp<S: Datastore + ?Sized>(store: &S) -> Result<Option<ClusterBgp>> {
    Ok(store
        .get_object::<ClusterBgp>(CLUSTER_BGP_NAME)?
        .map(|v| v.value))
}

/// Changes the given fields of the cluster BGP configuration (compare-and-swap, retried
/// on conflicts) and returns the result. Fails with [`DatastoreError::NotFound`] before an
/// agent has seeded it.
pub fn set_cluster_bgp<S: Datastore + ?Sized>(
    store: &S,
    mesh: Option<bool>,
    as_number: Option<u32>,
) -> Result<ClusterBgp> {
    if let Some(asn) = as_number {
        check_as(ClusterBgp::KIND, CLUSTER_BGP_NAME, asn)?;
    }
    let stored = store.modify::<ClusterBgp, _>(CLUSTER_BGP_NAME, |cur| {
        let Some(cur) = cur else {
            return Err(DatastoreError::NotFound {
                kind: ClusterBgp::KIND.to_string(),
                name: CLUSTER_BGP_NAME.to_string(),
            });
        };
        let new = ClusterBgp {
            mesh: mesh.unwrap_or(cur.mesh),
            as_number: as_number.unwrap_or(cur.as_number),
            ..cur.clone()
        };
        Ok(if &new == cur {
            Change::Keep
        } else {
            Change::Put(new)
        })
    })?;
    Ok(present(CLUSTER_BGP_NAME, stored)?.value)
}

/// Creates or replaces the peer (no write when it is already stored as given).
pub fn put_peer<S: Datastore + ?Sized>(
    store: &S,
    peer: &PeerRecord,
) -> Result<Versioned<PeerRecord>> {
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
    let stored = store.modify::<PeerRecord, _>(&peer.name, |cur| {
        Ok(match cur {
            Some(cur) if cur == peer => Change::Keep,
            _ => Change::Put(peer.clone()),
        })
    })?;
    present(&peer.name, stored)
}

/// Removes the peer; false when it did not exist.
pub fn remove_peer<S: Datastore + ?Sized>(store: &S, name: &str) -> Result<bool> {
    store.delete_object::<PeerRecord>(name, None)
}

/// Every peer, global and per-node, sorted by name.
pub fn list_peers<S: Datastore + ?Sized>(store: &S) -> Result<Vec<PeerRecord>> {
    Ok(store
        .list_objects::<PeerRecord>()?
        .into_iter()
        .map(|v| v.value)
        .collect())
}

/// The peers the node named `node` must have: the global ones and its own.
pub fn list_peers_for<S: Datastore + ?Sized>(store: &S, node: &str) -> Result<Vec<PeerRecord>> {
    let mut peers = list_peers(store)?;
    peers.retain(|p| p.applies_to(node));
    Ok(peers)
}

#[cfg(test)]
mod tests;
