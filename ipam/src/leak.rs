//! Leak collection: an address whose pod is gone (deleted while its node's agent was down,
//! or a DEL that never came) is released after a grace period.
//!
//! The handle's attributes name the pod (`K8S_POD_NAMESPACE`, `K8S_POD_NAME` and, when
//! the runtime passes it, `K8S_POD_UID`). A sweep asks a [`PodDirectory`] whether each pod
//! of this node still exists (with the same UID); one that does not becomes a *suspect*,
//! stamped with the time it was first seen so. A suspect still gone at a sweep at least
//! the grace period later is asked about once more, right before its release, and only
//! then released. A pod that reappears, or a directory that cannot answer, clears or
//! keeps the suspicion but never releases anything. Handles without pod attributes (not
//! made by a Kubernetes runtime) are never touched.

use crate::error::IpamError;
use crate::ipam::Ipam;
use crate::model::{Attributes, HandleId};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Default grace period (15 minutes).
pub const DEFAULT_LEAK_GRACE: Duration = Duration::from_secs(15 * 60);

/// Where pods are looked up (Kubernetes: core v1 Pods through the API server).
#[async_trait::async_trait]
pub trait PodDirectory: Send + Sync {
    /// The UID of pod `namespace`/`name`, `None` when it does not exist; `Err` (what went
    /// wrong) when the directory cannot tell now.
    async fn pod_uid(&self, namespace: &str, name: &str) -> Result<Option<String>, String>;
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LeakSweep {
    /// Handles whose pod was found gone for the first time (the grace period starts).
    pub suspected: Vec<HandleId>,
    /// Handles released, with the addresses they held.
    pub released: Vec<(HandleId, Vec<IpAddr>)>,
    /// Handles whose pod came back (or was found with its UID) after being suspected.
    pub cleared: Vec<HandleId>,
}

/// The suspects of one node, kept between sweeps (in memory: an agent restart starts the
/// grace period again, which only delays a release).
#[derive(Debug)]
pub struct LeakCollector {
    grace: Duration,
    suspects: HashMap<String, (HandleId, SystemTime)>,
}

/// Whether the handle's pod is gone: `None` when the directory cannot tell.
async fn gone(pods: &dyn PodDirectory, attrs: &Attributes, ns: &str, pod: &str) -> Option<bool> {
    match pods.pod_uid(ns, pod).await {
        Ok(None) => Some(true),
        Ok(Some(uid)) => Some(attrs.uid.as_ref().is_some_and(|mine| *mine != uid)),
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{pod}"), error = %e, "leak collection cannot tell whether a pod exists; its address stays");
            None
        }
    }
}

impl LeakCollector {
    pub fn new(grace: Duration) -> Self {
        LeakCollector {
            grace,
            suspects: HashMap::new(),
        }
    }

    /// The handles suspected now, with when their pod was first found gone.
    pub fn suspects(&self) -> Vec<(HandleId, SystemTime)> {
        let mut v: Vec<_> = self.suspects.values().cloned().collect();
        v.sort();
        v
    }

    /// One pass over `node`'s handles at time `now`.
    pub async fn sweep(
        &mut self,
        ipam: &Ipam,
        node: &str,
        pods: &dyn PodDirectory,
        now: SystemTime,
    ) -> Result<LeakSweep, IpamError> {
        let mut out = LeakSweep::default();
        let mut kept: HashMap<String, (HandleId, SystemTime)> = HashMap::new();
        for (id, attrs) in ipam.node_handles(node).await? {
            let (Some(ns), Some(pod)) = (attrs.namespace.as_deref(), attrs.pod.as_deref()) else {
                continue;
            };
            let key = id.key();
            let before = self.suspects.get(&key).map(|(_, t)| *t);
            match gone(pods, &attrs, ns, pod).await {
                None => {
                    if let Some(t) = before {
                        kept.insert(key, (id, t));
                    }
                    continue;
                }
                Some(false) => {
                    if before.is_some() {
                        tracing::info!(handle = %id, pod = %format!("{ns}/{pod}"), "the pod of a leak suspect exists again; its address stays");
                        out.cleared.push(id);
                    }
                    continue;
                }
                Some(true) => {}
            }
            let since = before.unwrap_or(now);
            if before.is_none() {
                tracing::info!(handle = %id, pod = %format!("{ns}/{pod}"), grace = ?self.grace, "a pod holding an address is gone: its address is released after the grace period unless the pod comes back");
                out.suspected.push(id.clone());
            }
            let waited = now.duration_since(since).unwrap_or(Duration::ZERO);
            if waited < self.grace {
                kept.insert(key, (id, since));
                continue;
            }
            // Ask once more, right before releasing.
            match gone(pods, &attrs, ns, pod).await {
                Some(true) => {
                    let freed = match ipam.release(&id).await {
                        Ok(freed) => freed,
                        Err(e) => {
                            tracing::warn!(handle = %id, pod = %format!("{ns}/{pod}"), error = %e, "leak collection could not release the address of a pod that is gone; the next sweep tries again");
                            kept.insert(key, (id, since));
                            continue;
                        }
                    };
                    tracing::info!(handle = %id, pod = %format!("{ns}/{pod}"), addresses = ?freed, "leak collection released the addresses of a pod that is gone");
                    out.released.push((id, freed));
                }
                Some(false) => out.cleared.push(id),
                None => {
                    kept.insert(key, (id, since));
                }
            }
        }
        self.suspects = kept;
        ipam.count_leaks(out.suspected.len(), out.released.len(), self.suspects.len());
        Ok(out)
    }
}
