//! Change notification by polling [`Datastore::revision`].

use super::{Datastore, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Polls the store's revision every `interval` and publishes it on a watch channel: a
/// receiver's `changed()` fires when any process wrote to the store. Several writes
/// between two polls give one notification; readers re-read what they care about.
///
/// The first read happens before returning, so a store that cannot be read fails here.
/// Later read errors are logged and polling goes on (the last good revision stays). The
/// polling task ends when every receiver is dropped. Must be called inside a tokio
/// runtime.
pub async fn watch<S>(store: Arc<S>, interval: Duration) -> Result<watch::Receiver<u64>>
where
    S: Datastore + ?Sized + 'static,
{
    let first = read(&store).await?;
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ticker.tick() => {}
            }
            match read(&store).await {
                Ok(rev) => {
                    if failing {
                        tracing::info!("datastore readable again");
                        failing = false;
                    }
                    tx.send_if_modified(|cur| {
                        let changed = *cur != rev;
                        *cur = rev;
                        changed
                    });
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot read the datastore revision; changes are not noticed until this clears");
                        failing = true;
                    }
                }
            }
        }
    });
    Ok(rx)
}

async fn read<S: Datastore + ?Sized + 'static>(store: &Arc<S>) -> Result<u64> {
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || store.revision()).await {
        Ok(r) => r,
        Err(e) => Err(super::DatastoreError::Backend(format!(
            "reading the datastore revision failed: {e}"
        ))),
    }
}
