//! The heartbeat task: refreshes this node's record in the datastore.

use crate::datastore::model;
use crate::datastore::SqliteStore;
use std::sync::Arc;
use std::time::Duration;
use tracing::warn;

/// How often the node record's heartbeat is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);

pub async fn heartbeat_task(store: Arc<SqliteStore>, name: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    let mut warned = false;
    loop {
        tick.tick().await;
        let (s, n) = (store.clone(), name.clone());
        let r =
            tokio::task::spawn_blocking(move || model::heartbeat(&*s, &n, model::unix_now())).await;
        match r {
            Ok(Ok(_)) => warned = false,
            Ok(Err(e)) if !warned => {
                warn!(error = %e, node = %name, "heartbeat failed; if the node was removed from the datastore on purpose, stop this agent (it re-registers at start)");
                warned = true;
            }
            _ => {}
        }
    }
}
