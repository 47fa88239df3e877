//! The NAT task: keeps the `inet ferrovia` nftables table in line with the datastore's
//! pools and nodes (see [`crate::nat`]). Wakes on a pool or node change (watches), never on
//! a timer; each change replaces the whole table in one batch. With no `natOutgoing` pool
//! the table is removed. The table is left in place when the agent stops (a restart keeps
//! translated connections and the rule); `ferrovia nat remove` takes it away on drain.

use crate::datastore::model::NodeRecord;
use crate::datastore::{Reflector, Resource, Selector, SharedDatastore};
use crate::nat::{self, NatError, NatPlan};
use anyhow::Result;
use ferrovia_ipam::{Ipam, Pool, KIND_POOL};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// Pause after a failed datastore read or nft run before the next attempt.
const RETRY: Duration = Duration::from_secs(2);

/// The pools in effect; a broken one, or one overlapping an older pool, is logged once and
/// left out (its `natOutgoing` is never applied).
fn pools(r: &Reflector) -> Vec<Pool> {
    Ipam::pools_in(r.items())
}

/// The valid node records; an invalid one is logged once and left out.
fn nodes(r: &Reflector) -> Vec<NodeRecord> {
    let (valid, invalid) = r.typed::<NodeRecord>();
    for e in invalid {
        super::mesh::warn_invalid(NodeRecord::KIND, &e);
    }
    valid.into_iter().map(|t| t.value).collect()
}

pub async fn nat_task(store: SharedDatastore) -> Result<()> {
    let mut pool_watch = Reflector::new(store.clone(), KIND_POOL, Selector::everything());
    let mut node_watch = Reflector::of::<NodeRecord>(store, Selector::everything());
    let mut applied: Option<NatPlan> = None;
    loop {
        let woke = if !pool_watch.is_synced() {
            pool_watch.next().await
        } else if !node_watch.is_synced() {
            node_watch.next().await
        } else if applied.is_none() {
            Ok(())
        } else {
            tokio::select! {
                r = pool_watch.next() => r,
                r = node_watch.next() => r,
            }
        };
        if let Err(e) = woke {
            warn!(error = %e, "reading pools and nodes for outgoing NAT failed; retrying");
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if !pool_watch.is_synced() || !node_watch.is_synced() {
            continue;
        }
        let plan = NatPlan::new(
            &pools(&pool_watch),
            nodes(&node_watch)
                .iter()
                .flat_map(|n| n.addresses.iter().copied()),
        );
        if applied.as_ref() == Some(&plan) {
            continue;
        }
        let started = Instant::now();
        let result = if plan.nat.is_empty() {
            match tokio::task::spawn_blocking(nat::remove).await {
                Ok(Err(NatError::NoNft(_))) => Ok(()),
                Ok(r) => r,
                Err(e) => Err(NatError::Worker(e.to_string())),
            }
        } else {
            nat::apply(&plan).await
        };
        match result {
            Ok(()) => {
                info!(
                    nat_pools = ?plan.nat,
                    pools = plan.pools.len(),
                    nodes = plan.nodes.len(),
                    took_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "outgoing NAT table inet {} {}",
                    nat::TABLE,
                    if plan.nat.is_empty() { "removed (no natOutgoing pool)" } else { "replaced" }
                );
                applied = Some(plan);
            }
            Err(e) => {
                warn!(error = %e, "outgoing NAT not applied; retrying");
                applied = None;
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}
