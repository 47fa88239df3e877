//! The leak collection task (Kubernetes datastore only): every
//! `ipam.leakCollectionIntervalSeconds` (jittered), [`LeakCollector`] sweeps this node's
//! handles and releases the addresses of pods that have been gone (or re-created with another
//! UID) for `ipam.leakGracePeriodSeconds`, asking the API server once more just before.
//! Counts go to the IPAM counters (`ferrovia status`, metrics).

use super::NodeIpam;
use anyhow::Result;
use ferrovia_ipam::{LeakCollector, PodDirectory};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tracing::{info, warn};

/// The sweep interval with up to a tenth added or taken away, so that agents started
/// together do not all ask the API server at once.
fn jittered(interval: Duration) -> Duration {
    let tenth = interval.as_millis() as u64 / 10;
    let ms = interval.as_millis() as u64 - tenth + fastrand::u64(0..=2 * tenth);
    Duration::from_millis(ms.max(1))
}

/// Sweeps for ever; a sweep that fails (the datastore does not answer) is logged once in a
/// row and tried again at the next interval.
pub async fn leak_task(
    ipam: Arc<NodeIpam>,
    node: String,
    pods: Arc<dyn PodDirectory>,
    grace: Duration,
    interval: Duration,
) -> Result<()> {
    info!(
        grace_seconds = grace.as_secs(),
        interval_seconds = interval.as_secs(),
        "leak collection on: addresses of pods gone for the grace period are released"
    );
    let mut collector = LeakCollector::new(grace);
    let mut failing = false;
    loop {
        tokio::time::sleep(jittered(interval)).await;
        match collector
            .sweep(&ipam, &node, &*pods, SystemTime::now())
            .await
        {
            Ok(sweep) => {
                if failing {
                    info!("leak collection sweeps again");
                }
                failing = false;
                let pending = collector.suspects().len();
                if !sweep.suspected.is_empty() || !sweep.released.is_empty() || pending > 0 {
                    info!(
                        found = sweep.suspected.len(),
                        released = sweep.released.len(),
                        cleared = sweep.cleared.len(),
                        pending,
                        "leak collection sweep"
                    );
                }
            }
            Err(e) if !failing => {
                failing = true;
                warn!(error = %e, "a leak collection sweep failed; nothing was released that was not logged; trying again at the next interval");
            }
            Err(_) => {}
        }
    }
}
