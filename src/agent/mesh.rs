//! The mesh task: keeps the speaker's peers in line with the datastore (full mesh, global
//! and per-node peers) and the configuration file's peers.

use crate::datastore::model::{self, ClusterBgp, NodeRecord};
use crate::datastore::{self as ds, SqliteStore};
use crate::mesh::{self, MeshNode, StoredPeer};
use ferrovia_bgp::driver::{Handle, PeerSpec};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, warn};

pub struct MeshContext {
    pub me: String,
    pub my_address: IpAddr,
    pub file_peers: Vec<PeerSpec>,
    pub hold_time: u16,
    pub connect_retry: Duration,
}

/// What the datastore says, read in one go.
struct Snapshot {
    cluster: Option<ClusterBgp>,
    nodes: Vec<NodeRecord>,
    peers: Vec<model::PeerRecord>,
}

/// Keeps the speaker's peers and this node's originated blocks in line with the datastore.
pub async fn mesh_task(
    store: Arc<SqliteStore>,
    ctx: MeshContext,
    handle: Handle,
    mut rev: tokio::sync::watch::Receiver<u64>,
) {
    let mut current: BTreeMap<IpAddr, PeerSpec> = ctx
        .file_peers
        .iter()
        .map(|p| (p.config.address, p.clone()))
        .collect();
    loop {
        let s = store.clone();
        let snap = tokio::task::spawn_blocking(move || -> ds::Result<Snapshot> {
            Ok(Snapshot {
                cluster: model::get_cluster_bgp(&*s)?,
                nodes: model::list_nodes(&*s)?,
                peers: model::list_peers(&*s)?,
            })
        })
        .await;
        match snap {
            Ok(Ok(snap)) => {
                apply_mesh(&ctx, &handle, &snap, &mut current).await;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "reading the datastore failed; keeping the current peers")
            }
            Err(e) => error!(error = %e, "datastore reader task failed"),
        }
        if rev.changed().await.is_err() {
            break;
        }
    }
}

async fn apply_mesh(
    ctx: &MeshContext,
    handle: &Handle,
    snap: &Snapshot,
    current: &mut BTreeMap<IpAddr, PeerSpec>,
) {
    let Some(cluster) = &snap.cluster else {
        return;
    };
    let nodes: Vec<MeshNode> = snap
        .nodes
        .iter()
        .map(|n| MeshNode {
            name: n.name.clone(),
            addresses: n.addresses.clone(),
            as_number: n.effective_as(cluster),
        })
        .collect();
    let stored: Vec<StoredPeer> = snap
        .peers
        .iter()
        .filter(|p| p.applies_to(&ctx.me))
        .filter_map(|p| {
            let password = match &p.password_file {
                None => None,
                Some(f) => match std::fs::read_to_string(f) {
                    Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
                    Err(e) => {
                        warn!(peer = %p.name, file = %f.display(), error = %e, "cannot read the peer's password file; peer skipped");
                        return None;
                    }
                },
            };
            Some(StoredPeer {
                address: p.address,
                as_number: p.as_number,
                node: p.node.clone(),
                password,
            })
        })
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
    });
    for spec in desired.values_mut() {
        if spec.config.kind == "mesh" {
            spec.port = cluster.listen_port;
        }
    }
    let (remove, add) = mesh::diff(current, &desired);
    for a in remove {
        match handle.remove_peer(a).await {
            Ok(()) => {
                current.remove(&a);
            }
            Err(e) => warn!(peer = %a, error = %e, "removing peer failed"),
        }
    }
    for spec in add {
        let a = spec.config.address;
        match handle.add_peer(spec.clone()).await {
            Ok(()) => {
                current.insert(a, spec);
            }
            Err(e) => warn!(peer = %a, error = %e, "adding peer failed"),
        }
    }
}
