//! Opening the datastore at start: seeding the cluster settings, registering this node and
//! opening IPAM over it.

use super::NodeIpam;
use crate::config::Loaded;
use crate::datastore::model::{self, ClusterBgp, NodeRecord};
use crate::datastore::SqliteStore;
use crate::ipam_store::DatastoreStore;
use anyhow::{Context, Result};
use ferrovia_ipam::{Ipam, IpamConfig};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// Opens the datastore, seeds the cluster settings and registers this node.
pub async fn open_store(path: &Path, loaded: &Loaded) -> Result<Arc<SqliteStore>> {
    let cfg = loaded.config.clone();
    let path = path.to_path_buf();
    let originate: Vec<IpNet> = loaded.originate.iter().map(|(p, _)| *p).collect();
    tokio::task::spawn_blocking(move || -> Result<Arc<SqliteStore>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating the directory of datastore.sqlite.path {}",
                    dir.display()
                )
            })?;
        }
        let store = SqliteStore::open(&path)
            .with_context(|| format!("opening datastore.sqlite.path {}", path.display()))?;
        let cluster = model::seed_cluster_bgp(
            &store,
            &ClusterBgp {
                as_number: cfg.node.as_number,
                mesh: cfg.bgp.mesh,
                listen_port: cfg.bgp.listen.port,
            },
        )
        .context("seeding the cluster BGP settings")?;
        let addresses = if cfg.node.addresses.is_empty() {
            vec![IpAddr::V4(cfg.node.router_id)]
        } else {
            cfg.node.addresses.clone()
        };
        model::register_node(
            &store,
            &NodeRecord {
                name: cfg.node.name.clone(),
                addresses,
                as_number: Some(cfg.node.as_number),
                router_id: cfg.node.router_id,
                heartbeat: model::unix_now(),
                blocks: originate,
            },
        )
        .with_context(|| format!("registering node {} in the datastore", cfg.node.name))?;
        info!(
            path = %path.display(),
            cluster_as = cluster.as_number,
            mesh = cluster.mesh,
            "datastore opened, node registered"
        );
        Ok(Arc::new(store))
    })
    .await?
}

pub async fn open_ipam(
    store: Arc<SqliteStore>,
    cfg: &crate::config::Ipam,
) -> Result<Arc<NodeIpam>> {
    let pools = cfg.pools.clone();
    let config = IpamConfig {
        strict_affinity: cfg.strict_affinity,
        max_blocks_per_node: cfg.max_blocks_per_node,
        empty_block_grace: Duration::from_secs(cfg.empty_block_grace_seconds),
    };
    tokio::task::spawn_blocking(move || -> Result<Arc<NodeIpam>> {
        let ipam = Ipam::new(DatastoreStore(store), config);
        ipam.ensure_pools(&pools).context("ipam.pools")?;
        Ok(Arc::new(ipam))
    })
    .await?
}
