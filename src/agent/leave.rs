//! Leaving on purpose (`ferrovia node drain`): the node tells its peers to move traffic
//! away (GRACEFUL_SHUTDOWN, RFC 8326), waits `bgp.drainWait`, withdraws its prefixes,
//! closes every session with Cease (Cease/Hard Reset to peers that negotiated the RFC 8538
//! N bit, so they do not keep our routes as stale), and then removes its kernel state.
//!
//! Kernel state other features add (an nftables table, …) is removed in
//! [`remove_kernel_state`]: add the removal there, after the routes.

use crate::config::Config;
use crate::control::DrainReply;
use anyhow::{Context, Result};
use ferrovia_bgp::driver::Handle;
use ferrovia_bgp::fsm::State;
use ferrovia_bgp::speaker::Speaker;
use std::collections::HashMap;
use std::time::Duration;
use tracing::info;

/// The BGP half of a drain: GRACEFUL_SHUTDOWN, the wait, the withdrawal and the Cease.
/// The speaker is stopped when this returns.
pub async fn leave_bgp(handle: &Handle, cfg: &Config) -> Result<DrainReply> {
    let wait = Duration::from_secs(cfg.bgp.drain_wait);
    let originated = handle
        .query(|s: &mut Speaker| {
            s.set_graceful_shutdown(true);
            s.originated().count()
        })
        .await
        .context("re-advertising our routes with GRACEFUL_SHUTDOWN")?;
    info!(
        prefixes = originated,
        wait_seconds = wait.as_secs(),
        "drain: our routes carry GRACEFUL_SHUTDOWN (65535:0); waiting for traffic to move"
    );
    tokio::time::sleep(wait).await;
    let (withdrawn, sessions) = handle
        .query(|s: &mut Speaker| {
            let prefixes: Vec<_> = s.originated().copied().collect();
            for p in &prefixes {
                s.withdraw(*p);
            }
            let up = s
                .peer_status()
                .iter()
                .filter(|p| p.state == State::Established)
                .count();
            (prefixes.len(), up)
        })
        .await
        .context("withdrawing our routes")?;
    info!(
        withdrawn,
        "drain: our routes withdrawn; closing every session"
    );
    // Commands run in order: the withdrawals are written before the NOTIFICATIONs.
    handle.shutdown().await;
    Ok(DrainReply {
        node: cfg.node.name.clone(),
        waited_seconds: wait.as_secs(),
        withdrawn,
        sessions_closed: sessions,
        kernel_routes_removed: 0,
    })
}

/// Removes what the agent put in the kernel: every route of ours in its table (learned
/// routes and the blackholes of our blocks). Pods keep their wiring (the CNI DEL of each
/// pod removes it). Returns how many routes went.
pub async fn remove_kernel_state(cfg: &Config) -> Result<usize> {
    let mut removed = 0;
    if cfg.kernel.enabled {
        let table = cfg.kernel.table.id().unwrap_or(254);
        let mut k = crate::kernel::Kernel::new(table)
            .await
            .with_context(|| format!("opening the kernel routing table {table} (kernel.table)"))?;
        let stats = k
            .reconcile(&HashMap::new())
            .await
            .with_context(|| format!("removing our routes from table {table}"))?;
        removed = stats.changes.deleted;
    }
    // Other features' kernel state goes here.
    // Outgoing NAT: our nftables table (the NAT task is stopped, so it is not written again);
    // other tables are never touched.
    match tokio::task::spawn_blocking(crate::nat::remove).await {
        Ok(Ok(())) => info!("drain: nftables table inet {} removed", crate::nat::TABLE),
        // No nft on this node: the agent never wrote the table.
        Ok(Err(crate::nat::NatError::NoNft(_))) => {}
        Ok(Err(e)) => {
            return Err(anyhow::Error::new(e)
                .context("removing the outgoing NAT table; run `ferrovia nat remove` on the node"))
        }
        Err(e) => anyhow::bail!(
            "removing the outgoing NAT table failed ({e}); run `ferrovia nat remove` on the node"
        ),
    }
    info!(routes = removed, "drain: our kernel state is removed");
    Ok(removed)
}
