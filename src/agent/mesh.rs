//! The mesh task: keeps the speaker's peers in line with the datastore (full mesh, global
//! and per-node peers) and the configuration file's peers.

use crate::config::read_password_file;
use crate::datastore::model::{self, ClusterBgp, NodeRecord};
use crate::datastore::{Reflector, Resource, Selector, SharedDatastore};
use crate::mesh::{self, MeshNode, StoredPeer};
use anyhow::{bail, Context, Result};
use ferrovia_bgp::driver::{DriverError, Handle, PeerSpec};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;
use tracing::warn;

/// Pause after a failed datastore read before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

pub struct MeshContext {
    pub me: String,
    pub my_address: IpAddr,
    pub file_peers: Vec<PeerSpec>,
    pub hold_time: u16,
    pub connect_retry: Duration,
    /// `bgp.routeReflector.clusterId` of the configuration file.
    pub cluster_id: Option<std::net::Ipv4Addr>,
    /// The cluster's pod pools (refused from stored peers unless they allow them).
    pub pools: Vec<ipnet::IpNet>,
}

/// What the datastore says.
struct Snapshot {
    cluster: Option<ClusterBgp>,
    nodes: Vec<NodeRecord>,
    peers: Vec<model::PeerRecord>,
}

/// Local copies of the kinds the mesh depends on, each kept current by its own watch (node
/// leases and IPAM objects change without waking this task).
struct Watched {
    cluster: Reflector,
    nodes: Reflector,
    peers: Reflector,
    /// Invalid objects already logged (kind, name, version and error), so a broken object
    /// is reported once, not at every wake-up.
    logged: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Watched {
    fn new(store: SharedDatastore) -> Self {
        let all = Selector::everything;
        Watched {
            cluster: Reflector::of::<ClusterBgp>(store.clone(), all()),
            nodes: Reflector::of::<NodeRecord>(store.clone(), all()),
            peers: Reflector::of::<model::PeerRecord>(store, all()),
            logged: Default::default(),
        }
    }

    /// Waits until one of the kinds changed; a kind not listed yet (at start, or after an
    /// error) is listed first, and that counts as a change.
    async fn changed(&mut self) -> crate::datastore::Result<()> {
        let mut listed = false;
        for r in [&mut self.cluster, &mut self.nodes, &mut self.peers] {
            if !r.is_synced() {
                r.next().await?;
                listed = true;
            }
        }
        if listed {
            return Ok(());
        }
        tokio::select! {
            r = self.cluster.next() => r,
            r = self.nodes.next() => r,
            r = self.peers.next() => r,
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            cluster: values::<ClusterBgp>(&self.cluster, &self.logged)
                .into_iter()
                .next(),
            nodes: values(&self.nodes, &self.logged),
            peers: values(&self.peers, &self.logged),
        }
    }
}

/// The valid objects of a kind; each invalid one is logged once (with its name and what is
/// wrong) and left out, so one broken object never stops the mesh from following the rest.
fn values<R: Resource>(
    r: &Reflector,
    logged: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> Vec<R> {
    let (valid, invalid) = r.typed::<R>();
    let mut logged = logged
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for e in invalid {
        if logged.insert(format!("{}/{e}", R::KIND)) {
            warn_invalid(R::KIND, &e);
        }
    }
    valid.into_iter().map(|t| t.value).collect()
}

/// Logs an object of `kind` that does not decode, once per process whichever task finds
/// it (the mesh and the NAT task read the same node records).
pub(super) fn warn_invalid(kind: &str, e: &crate::datastore::DatastoreError) {
    let name = match e {
        crate::datastore::DatastoreError::Invalid { name, .. } => name.as_str(),
        _ => "",
    };
    if ferrovia_ipam::invalid::first_report(kind, name, &e.to_string()) {
        warn!(kind, object = name, error = %e, "ignoring an invalid datastore object");
    }
}

/// The speaker's peers kept in line with the datastore: wakes when a node, a peer or the
/// cluster settings change (per-kind watches), never on a timer.
pub struct Mesh {
    ctx: MeshContext,
    handle: Handle,
    watched: Watched,
    /// The peers the speaker has, by address.
    current: BTreeMap<IpAddr, PeerSpec>,
}

impl Mesh {
    /// The speaker already has the configuration file's peers.
    pub fn new(store: SharedDatastore, ctx: MeshContext, handle: Handle) -> Mesh {
        let current = ctx
            .file_peers
            .iter()
            .map(|p| (p.config.address, p.clone()))
            .collect();
        Mesh {
            ctx,
            handle,
            watched: Watched::new(store),
            current,
        }
    }

    /// Lists the datastore and applies the stored peers and the mesh once, before this node
    /// registers: a datastore that cannot be read now is an error.
    pub async fn apply_once(&mut self) -> Result<()> {
        self.watched
            .changed()
            .await
            .context("listing the cluster settings, nodes and peers in the datastore")?;
        let snap = self.watched.snapshot();
        apply_mesh(&self.ctx, &self.handle, &snap, &mut self.current).await
    }

    /// Follows the datastore until the speaker is gone (an error: it never goes while the
    /// agent runs). Datastore errors keep the current peers and are retried.
    pub async fn run(mut self) -> Result<()> {
        loop {
            match self.watched.changed().await {
                Ok(()) => {}
                Err(e) => {
                    warn!(error = %e, "reading the datastore failed; keeping the current peers and retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
            let snap = self.watched.snapshot();
            apply_mesh(&self.ctx, &self.handle, &snap, &mut self.current).await?;
        }
    }
}

/// Brings the speaker's peers to what the datastore and the configuration file ask for.
/// Fails only when the speaker is gone; a peer the speaker refuses is logged and tried
/// again at the next change.
async fn apply_mesh(
    ctx: &MeshContext,
    handle: &Handle,
    snap: &Snapshot,
    current: &mut BTreeMap<IpAddr, PeerSpec>,
) -> Result<()> {
    let Some(cluster) = &snap.cluster else {
        return Ok(());
    };
    let nodes: Vec<MeshNode> = snap
        .nodes
        .iter()
        .map(|n| MeshNode {
            name: n.name.clone(),
            addresses: n.addresses.clone(),
            as_number: n.effective_as(cluster),
            route_reflector: n.route_reflector_cluster_id,
        })
        .collect();
    // This node's labels (what peers' node selectors match): re-read at every change of a
    // node, so a label added or removed moves the selected peers at once.
    let no_labels = Default::default();
    let my_labels = snap
        .nodes
        .iter()
        .find(|n| n.name == ctx.me)
        .map_or(&no_labels, |n| &n.labels);
    let stored = stored_peers(&snap.peers, &ctx.me, my_labels);
    // The Service ranges whose host routes stay on their node (a range with host bits is
    // refused by the services task and left out here too).
    let service_ranges: Vec<ipnet::IpNet> = cluster
        .services
        .lists()
        .into_iter()
        .flat_map(|(_, l)| l.iter().copied())
        .filter(|r| r.trunc() == *r)
        .collect();
    let mut desired = mesh::desired_peers(&mesh::Inputs {
        me: &ctx.me,
        my_address: ctx.my_address,
        mesh: cluster.mesh,
        nodes: &nodes,
        stored_peers: &stored,
        file_peers: &ctx.file_peers,
        hold_time: ctx.hold_time,
        connect_retry: ctx.connect_retry,
        pools: &ctx.pools,
        service_ranges: &service_ranges,
    });
    // The datastore can make this node a reflector (or stop it being one) at any time; the
    // configuration file's cluster id rules when it has one.
    let cluster_id = ctx
        .cluster_id
        .or_else(|| mesh::my_cluster_id(&ctx.me, &nodes));
    match handle.query(move |s| s.set_cluster_id(cluster_id)).await {
        Ok(()) => {}
        Err(DriverError::Stopped) => bail!("the BGP speaker stopped"),
        Err(e) => warn!(error = %e, "setting the route reflector cluster id failed"),
    }
    for spec in desired.values_mut() {
        if matches!(
            spec.config.kind.as_str(),
            "mesh" | "rr" | "rr-client" | "rr-mesh"
        ) {
            spec.port = cluster.listen_port;
        }
    }
    let (remove, add) = mesh::diff(current, &desired);
    for a in remove {
        match handle.remove_peer(a).await {
            Ok(()) => {
                current.remove(&a);
            }
            Err(DriverError::Stopped) => bail!("the BGP speaker stopped"),
            Err(e) => warn!(peer = %a, error = %e, "removing peer failed"),
        }
    }
    for spec in add {
        let a = spec.config.address;
        match handle.add_peer(spec.clone()).await {
            Ok(()) => {
                current.insert(a, spec);
            }
            Err(DriverError::Stopped) => bail!("the BGP speaker stopped"),
            Err(e) => warn!(peer = %a, error = %e, "adding peer failed"),
        }
    }
    Ok(())
}

/// The datastore's peers that apply to node `me` (by name or by its `labels`), with their
/// passwords read; a peer chosen by a node selector counts as this node's own. A peer whose
/// password file cannot be read or breaks the 1–80 byte rule (an empty file would turn MD5
/// off) is skipped with a warning naming the file and the rule.
fn stored_peers(
    peers: &[model::PeerRecord],
    me: &str,
    labels: &crate::datastore::Labels,
) -> Vec<StoredPeer> {
    peers
        .iter()
        .filter(|p| p.applies_to(me, labels))
        .filter_map(|p| {
            let password = match &p.password_file {
                None => None,
                Some(f) => match read_password_file(f) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(peer = %p.name, file = %f.display(), error = %e, "the peer's password file is unusable; peer skipped until it is fixed");
                        return None;
                    }
                },
            };
            Some(StoredPeer {
                address: p.address,
                as_number: p.as_number,
                node: p.is_per_node().then(|| me.to_string()),
                password,
                ttl_security: p.ttl_security,
                bfd: stored_bfd(p),
                safety: p.safety.clone(),
            })
        })
        .collect()
}

/// The stored peer's BFD timing when BFD is on; a timing out of range (stored by an older
/// or another writer) turns BFD off for it with a warning naming the key.
fn stored_bfd(p: &model::PeerRecord) -> Option<ferrovia_bgp::bfd::Timing> {
    let b = p.bfd.filter(|b| b.enabled)?;
    match b.timing() {
        Ok(t) => Some(t),
        Err(e) => {
            warn!(peer = %p.name, error = %e, "the stored peer's BFD setting is out of range; BFD off for it until it is fixed (ferrovia peer set NAME --bfd-interval-ms/--bfd-multiplier)");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn peer(name: &str, address: &str, password_file: Option<PathBuf>) -> model::PeerRecord {
        model::PeerRecord {
            name: name.into(),
            address: address.parse().expect("ip"),
            as_number: 65000,
            node: None,
            node_selector: None,
            password_file,
            ttl_security: None,
            bfd: None,
            safety: Default::default(),
        }
    }

    #[test]
    fn a_stored_peer_whose_password_file_breaks_the_rule_is_skipped_not_unprotected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let f = dir.path().join(name);
            std::fs::write(&f, text).expect("write password file");
            f
        };
        let good = write("good", "s3cret\n");
        let empty = write("empty", "\n");
        let long = write("long", &"x".repeat(81));
        let peers = [
            peer("tor", "198.18.0.254", Some(good)),
            peer("empty", "198.18.0.253", Some(empty)),
            peer("long", "198.18.0.252", Some(long)),
            peer("missing", "198.18.0.251", Some(dir.path().join("absent"))),
            peer("plain", "198.18.0.250", None),
        ];
        let got: Vec<(String, Option<String>)> = stored_peers(&peers, "node1", &Default::default())
            .into_iter()
            .map(|p| (p.address.to_string(), p.password))
            .collect();
        assert_eq!(
            got,
            [
                ("198.18.0.254".to_string(), Some("s3cret".to_string())),
                ("198.18.0.250".to_string(), None),
            ]
        );
    }

    #[test]
    fn a_peer_chosen_by_node_selector_is_this_nodes_own() {
        let mut by_sel = peer("rack", "198.18.0.200", None);
        by_sel.node_selector = Some("rack=r1".into());
        let mut other = peer("other", "198.18.0.201", None);
        other.node_selector = Some("rack=r2".into());
        let global = peer("all", "198.18.0.202", None);
        let labels: crate::datastore::Labels = [("rack".to_string(), "r1".to_string())]
            .into_iter()
            .collect();
        let got: Vec<(String, Option<String>)> =
            stored_peers(&[by_sel.clone(), other, global.clone()], "node1", &labels)
                .into_iter()
                .map(|p| (p.address.to_string(), p.node))
                .collect();
        assert_eq!(
            got,
            [
                ("198.18.0.200".to_string(), Some("node1".to_string())),
                ("198.18.0.202".to_string(), None),
            ]
        );
        // Without the label, only the global peer.
        let got = stored_peers(&[by_sel, global], "node1", &Default::default());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].address.to_string(), "198.18.0.202");
    }
}
