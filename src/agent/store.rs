//! Opening the datastore at start: seeding the cluster settings, registering this node and
//! opening IPAM over it.

use super::NodeIpam;
use crate::config::Loaded;
use crate::datastore::model::{self, ClusterBgp, NodeRecord};
use crate::datastore::{self, SharedDatastore};
use anyhow::{Context, Result};
use ferrovia_ipam::{Ipam, IpamConfig};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Opens the datastore and seeds the cluster settings (the first agent's configuration
/// wins). The node registers later, with [`register_node`].
pub async fn open_store(
    cfg: &crate::config::Datastore,
    loaded: &Loaded,
) -> Result<SharedDatastore> {
    let node = &loaded.config.node;
    let store = datastore::open(cfg)
        .await
        .with_context(|| format!("opening the {}", cfg.describe()))?;
    let cluster = model::seed_cluster_bgp(
        &*store,
        &ClusterBgp {
            as_number: node.as_number,
            mesh: loaded.config.bgp.mesh,
            listen_port: loaded.config.bgp.listen.port,
            services: Default::default(),
        },
    )
    .await
    .context("seeding the cluster BGP settings")?;
    info!(
        datastore = %cfg.describe(),
        cluster_as = cluster.as_number,
        mesh = cluster.mesh,
        "datastore opened"
    );
    Ok(store)
}

/// Registers (or re-registers) this node and renews its lease: other nodes peer with it
/// from now on, so the speaker must already listen and know its peers.
pub async fn register_node(store: &SharedDatastore, loaded: &Loaded) -> Result<()> {
    let node = &loaded.config.node;
    let addresses = if node.addresses.is_empty() {
        vec![IpAddr::V4(node.router_id)]
    } else {
        node.addresses.clone()
    };
    model::register_node(
        &**store,
        &NodeRecord {
            name: node.name.clone(),
            addresses,
            as_number: Some(node.as_number),
            router_id: node.router_id,
            blocks: loaded.originate.iter().map(|(p, _)| *p).collect(),
            route_reflector_cluster_id: loaded
                .config
                .bgp
                .route_reflector
                .as_ref()
                .map(|r| r.cluster_id),
            // Set by the cluster (or `ferrovia node set`), kept by the registration.
            pod_cidrs: Vec::new(),
            labels: Default::default(),
        },
    )
    .await
    .with_context(|| format!("registering node {} in the datastore", node.name))?;
    model::renew_lease(&**store, &node.name, model::unix_now())
        .await
        .with_context(|| format!("renewing the lease of node {}", node.name))?;
    info!(node = %node.name, "node registered in the datastore");
    Ok(())
}

/// The most one IPAM datastore call may take before it counts as "the datastore does not
/// answer" (`Unavailable`: CNI ADD answers code 11, try again later). Below the 2 s within
/// which an ADD must answer when the datastore is down; calls queued behind a timed-out
/// one get a much shorter bound ([`ferrovia_ipam::datastore::Bounded`]).
pub const IPAM_CALL_BOUND: Duration = Duration::from_millis(1500);

/// The bound of a list of every IPAM handle: background work (leak collection, the release
/// of removed nodes), never on a pod's path, as long as the cluster is big (10,000 handles
/// from a busy API server take seconds). The backend's own request timeout still applies.
pub const HANDLE_LIST_BOUND: Duration = Duration::from_secs(60);

/// IPAM over the datastore, every call bounded by [`IPAM_CALL_BOUND`] (lists of every
/// handle by [`HANDLE_LIST_BOUND`]); the pools of the
/// configuration are created or updated.
pub async fn open_ipam(store: SharedDatastore, cfg: &crate::config::Ipam) -> Result<Arc<NodeIpam>> {
    let store: SharedDatastore = Arc::new(
        ferrovia_ipam::datastore::Bounded::new(store, IPAM_CALL_BOUND)
            .with_bulk_lists(&[ferrovia_ipam::KIND_HANDLE], HANDLE_LIST_BOUND),
    );
    let config = IpamConfig {
        strict_affinity: cfg.strict_affinity,
        max_blocks_per_node: cfg.max_blocks_per_node,
        empty_block_grace: Duration::from_secs(cfg.empty_block_grace_seconds),
    };
    let ipam = Ipam::new(store, config);
    let ipam = match cfg.mode {
        crate::config::IpamMode::Pools => {
            ipam.ensure_pools(&cfg.pools).await.context("ipam.pools")?;
            ipam
        }
        // The node's pod CIDRs come with its record (the announce task follows it).
        crate::config::IpamMode::PodCidr => ipam.pod_cidr_mode(),
    };
    let ipam = Arc::new(ipam);
    if !ipam.is_pod_cidr_mode() {
        // A CNI ADD reads the pools from this watched copy, not with a request each.
        ipam.follow_pools();
    }
    Ok(ipam)
}
