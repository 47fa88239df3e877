//! Leaving when the cluster says so: the node's own record removed from the datastore
//! (`ferrovia node remove` on SQLite, the Node object deleted on Kubernetes) drains the
//! node like `ferrovia node drain` (GRACEFUL_SHUTDOWN, `bgp.drainWait`, withdraw, Cease,
//! kernel state removed) instead of leaving its routes and sessions behind.

use super::DrainAsk;
use crate::datastore::model::NodeRecord;
use crate::datastore::{Reflector, Selector, SharedDatastore};
use anyhow::Result;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// Pause after a failed datastore watch before the next attempt.
const RETRY: Duration = Duration::from_secs(1);

/// Watches the node records; once this node's record, seen before, is gone, asks the agent
/// to drain (through the same channel as `ferrovia node drain`) and waits to be stopped.
pub async fn node_watch_task(
    store: SharedDatastore,
    me: String,
    drain: mpsc::Sender<DrainAsk>,
) -> Result<()> {
    let mut nodes = Reflector::of::<NodeRecord>(store, Selector::everything());
    let mut seen = false;
    let mut warned = false;
    loop {
        if let Err(e) = nodes.next().await {
            if !warned {
                warn!(error = %e, "watching the node records failed; retrying every second");
                warned = true;
            }
            tokio::time::sleep(RETRY).await;
            continue;
        }
        warned = false;
        if !nodes.is_synced() {
            continue;
        }
        let present = nodes.items().any(|i| i.object.name == me);
        if present {
            seen = true;
            continue;
        }
        if !seen {
            continue;
        }
        info!(node = %me, "this node's record was removed from the datastore (its Node object deleted, or `ferrovia node remove`): draining");
        let (reply, answer) = oneshot::channel();
        if drain.send(DrainAsk { node: None, reply }).await.is_err() {
            // The agent is already leaving.
            return std::future::pending().await;
        }
        // Nobody waits for the answer: confirm "written" at once so the agent goes on.
        if let Ok((result, written)) = answer.await {
            if let Err(e) = result {
                warn!(error = %e, "the drain after this node's record was removed failed");
            }
            let _ = written.send(());
        }
        return std::future::pending().await;
    }
}
