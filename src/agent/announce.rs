//! The announce task: keeps what this node originates in line with its datastore record and
//! its IPAM blocks.

use super::NodeIpam;
use crate::datastore::model::NodeRecord;
use crate::datastore::{decode, Reflector, Selector, SharedDatastore};
use anyhow::Context;
use ferrovia_bgp::driver::Handle;
use ferrovia_ipam::{IpamError, KIND_BLOCK};
use ipnet::IpNet;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// How often empty blocks are looked for and the announcements re-checked.
const IPAM_SWEEP: Duration = Duration::from_secs(30);
/// Pause after a failed datastore read before watching again.
const RETRY: Duration = Duration::from_secs(1);

/// What this node announces: the configuration's prefixes, the blocks its datastore record
/// lists, its IPAM blocks, and single addresses its pods borrowed from other nodes' blocks
/// (as /32 and /128), and the Service prefixes of [`super::services`]. Woken by CNI (a block claimed or released), by changes to node
/// records and IPAM blocks (per-kind watches), and every [`IPAM_SWEEP`], when blocks empty
/// for longer than the grace period are given back. Datastore errors are retried; ends
/// with an error only when the speaker is gone.
pub async fn announce_task(
    store: SharedDatastore,
    ipam: Option<Arc<NodeIpam>>,
    node: String,
    config: BTreeSet<IpNet>,
    handle: Handle,
    wake: Arc<tokio::sync::Notify>,
    mut services: tokio::sync::watch::Receiver<BTreeSet<IpNet>>,
) -> anyhow::Result<()> {
    let mut announced: BTreeSet<IpNet> = config.clone();
    let mut sweep = tokio::time::interval(IPAM_SWEEP);
    let mut nodes = Reflector::of::<NodeRecord>(store.clone(), Selector::everything());
    let mut blocks = Reflector::new(store, KIND_BLOCK, Selector::everything());
    let mut first = true;
    let mut cleanup = RemovedNodes::default();
    loop {
        // Woken by CNI (a block claimed, an address borrowed or freed): read the store,
        // the watched copy may not have the change yet.
        let mut woken = false;
        let swept = if !nodes.is_synced() {
            // At start and after an error: list (that is the first look).
            if let Err(e) = nodes.next().await {
                warn!(error = %e, "reading the node records failed; announcements unchanged");
                tokio::time::sleep(RETRY).await;
                continue;
            }
            false
        } else {
            tokio::select! {
                _ = wake.notified() => { woken = true; false }
                _ = services_changed(&mut services) => false,
                r = nodes.next() => { watch_error(r).await; false }
                r = blocks.next() => { watch_error(r).await; false }
                _ = sweep.tick() => true,
            }
        };
        let mut wanted: BTreeSet<IpNet> = config.clone();
        wanted.extend(services.borrow_and_update().iter().copied());
        if let Some(item) = nodes.items().find(|i| i.object.name == node) {
            match decode::<NodeRecord>(item.clone()) {
                Ok(rec) => {
                    if let Some(ipam) = ipam.as_ref().filter(|i| i.is_pod_cidr_mode()) {
                        if let Err(e) = ipam.set_pod_cidrs(&node, &rec.value.pod_cidrs) {
                            warn!(error = %e, "this node's pod CIDRs are not usable; pods get no address until they are fixed");
                        }
                    }
                    wanted.extend(rec.value.blocks)
                }
                Err(e) => {
                    warn!(error = %e, "this node's record is not valid; announcements unchanged");
                    continue;
                }
            }
        }
        if let Some(ipam) = &ipam {
            let live: BTreeSet<String> = nodes.items().map(|i| i.object.name.clone()).collect();
            cleanup.check(ipam, &node, live, swept).await;
            // On a watch event, from the watched copy of the blocks (no request per block
            // write, i.e. per CNI ADD); at a sweep, on a CNI wake and until that copy is
            // listed, from the store (the first announcement, before End-of-RIB, is
            // complete).
            let prefixes = if blocks.is_synced() && !swept && !woken {
                ipam.node_prefixes_in(&node, blocks.items())
            } else {
                ipam_prefixes(ipam, &node, swept).await
            };
            match prefixes {
                Ok(p) => wanted.extend(p),
                Err(e) => {
                    warn!(error = %e, "reading this node's blocks failed; announcements unchanged");
                    continue;
                }
            }
        }
        for p in wanted.difference(&announced) {
            info!(prefix = %p, "announcing");
            handle
                .originate(*p, Vec::new())
                .await
                .with_context(|| format!("announcing {p}"))?;
        }
        for p in announced.difference(&wanted) {
            info!(prefix = %p, "withdrawing");
            handle
                .withdraw(*p)
                .await
                .with_context(|| format!("withdrawing {p}"))?;
        }
        announced = wanted;
        if first {
            // Everything this node originates is announced: End-of-RIB may follow.
            first = false;
            super::speaker::release_end_of_rib(&handle).await?;
        }
    }
}

/// Releases the IPAM objects of nodes that left the cluster (their node record is gone).
/// One agent does it at once: the one with the lowest node name, whenever the set of
/// nodes changes. Any agent does it for a node it found gone at two sweeps in a row (the
/// lowest agent may be down). Safe when several do it: [`ferrovia_ipam::Ipam::release_node`]
/// is idempotent.
#[derive(Default)]
struct RemovedNodes {
    /// The node names at the last check.
    live: BTreeSet<String>,
    /// Nodes found gone at the last sweep.
    gone_at_sweep: BTreeSet<String>,
}

impl RemovedNodes {
    async fn check(&mut self, ipam: &NodeIpam, me: &str, live: BTreeSet<String>, swept: bool) {
        // This node is registered while it runs: a list without it is not trusted.
        if !live.contains(me) {
            return;
        }
        let lowest = live.iter().next().is_some_and(|n| n == me);
        let changed = live != self.live;
        self.live = live;
        if !(swept || (lowest && changed)) {
            return;
        }
        let used = match ipam.nodes_in_use().await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "reading IPAM to find removed nodes failed; retrying later");
                return;
            }
        };
        let gone: BTreeSet<String> = used.difference(&self.live).cloned().collect();
        for n in &gone {
            if !(lowest || self.gone_at_sweep.contains(n)) {
                continue;
            }
            info!(node = %n, "node removed from the cluster: releasing its IPAM blocks, addresses and handles");
            if let Err(e) = ipam.release_node(n).await {
                warn!(node = %n, error = %e, "releasing a removed node's IPAM objects failed; retrying later");
            }
        }
        if swept {
            self.gone_at_sweep = gone;
        }
    }
}

/// The node's IPAM blocks and borrowed addresses; first gives back blocks empty past the
/// grace period when `sweep`.
async fn ipam_prefixes(ipam: &NodeIpam, node: &str, sweep: bool) -> Result<Vec<IpNet>, IpamError> {
    if sweep {
        for b in ipam
            .release_empty_blocks(node, std::time::SystemTime::now())
            .await?
        {
            info!(block = %b, "released an IPAM block that stayed empty past the grace period");
        }
    }
    ipam.node_prefixes(node).await
}

/// Waits for the Service prefixes to change; forever once their task is gone (the agent
/// is stopping then).
async fn services_changed(rx: &mut tokio::sync::watch::Receiver<BTreeSet<IpNet>>) {
    if rx.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Logs a failed watch and pauses before the next attempt (which lists again).
async fn watch_error(r: crate::datastore::Result<()>) {
    if let Err(e) = r {
        warn!(error = %e, "watching the datastore failed; listing again");
        tokio::time::sleep(RETRY).await;
    }
}
