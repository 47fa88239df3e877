//! The announce task: keeps what this node originates in line with its datastore record and
//! its IPAM blocks.

use super::NodeIpam;
use crate::datastore::model;
use crate::datastore::SqliteStore;
use anyhow::Result;
use ferrovia_bgp::driver::Handle;
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{error, info, warn};

/// How often empty blocks are looked for and the announcements re-checked.
const IPAM_SWEEP: Duration = Duration::from_secs(30);

/// What this node announces: the configuration's prefixes, the blocks its datastore record
/// lists, its IPAM blocks, and single addresses its pods borrowed from other nodes' blocks
/// (as /32 and /128). Woken by CNI (a block claimed or released), by datastore changes, and
/// every [`IPAM_SWEEP`], when blocks empty for longer than the grace period are given back.
pub async fn announce_task(
    store: Arc<SqliteStore>,
    ipam: Option<Arc<NodeIpam>>,
    node: String,
    config: BTreeSet<IpNet>,
    handle: Handle,
    wake: Arc<tokio::sync::Notify>,
    mut rev: tokio::sync::watch::Receiver<u64>,
) {
    let mut announced: BTreeSet<IpNet> = config.clone();
    let mut sweep = tokio::time::interval(IPAM_SWEEP);
    loop {
        let swept = tokio::select! {
            _ = wake.notified() => false,
            r = rev.changed() => { if r.is_err() { break; } false }
            _ = sweep.tick() => true,
        };
        let (s, i, n) = (store.clone(), ipam.clone(), node.clone());
        let wanted = tokio::task::spawn_blocking(move || -> Result<BTreeSet<IpNet>> {
            let mut out = BTreeSet::new();
            if let Some(rec) = model::get_node(&*s, &n)? {
                out.extend(rec.value.blocks);
            }
            if let Some(ipam) = i {
                if swept {
                    for b in ipam.release_empty_blocks(&n, std::time::SystemTime::now())? {
                        info!(block = %b, "released an IPAM block that stayed empty past the grace period");
                    }
                }
                out.extend(ipam.node_blocks(&n)?);
                out.extend(ipam.borrowed(&n)?.into_iter().map(IpNet::from));
            }
            Ok(out)
        })
        .await;
        let wanted: BTreeSet<IpNet> = match wanted {
            Ok(Ok(w)) => w.into_iter().chain(config.iter().copied()).collect(),
            Ok(Err(e)) => {
                warn!(error = %e, "reading this node's blocks failed; announcements unchanged");
                continue;
            }
            Err(e) => {
                error!(error = %e, "block reader task failed");
                continue;
            }
        };
        for p in wanted.difference(&announced) {
            info!(prefix = %p, "announcing");
            let _ = handle.originate(*p, Vec::new()).await;
        }
        for p in announced.difference(&wanted) {
            info!(prefix = %p, "withdrawing");
            let _ = handle.withdraw(*p).await;
        }
        announced = wanted;
    }
}
