//! The heartbeat task: renews this node's lease in the datastore. The lease is a kind of
//! its own (`NodeLease`), so renewing it wakes none of the watchers of nodes, peers or
//! blocks.

use crate::datastore::model;
use crate::datastore::SharedDatastore;
use anyhow::Result;
use std::time::Duration;
use tracing::warn;

/// How often the node's lease is renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Renews the lease for ever; datastore errors are logged once and retried.
pub async fn heartbeat_task(store: SharedDatastore, name: String) -> Result<()> {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    let mut warned = false;
    loop {
        tick.tick().await;
        match model::renew_lease(&*store, &name, model::unix_now()).await {
            Ok(_) => warned = false,
            Err(e) if !warned => {
                warn!(error = %e, node = %name, "renewing the node lease failed; retrying every 10 s");
                warned = true;
            }
            Err(_) => {}
        }
    }
}
