//! Uninstall: on Kubernetes, a SIGTERM while the agent's own DaemonSet is gone or being
//! deleted (`helm uninstall`, `kubectl delete daemonset`) is a goodbye, not a rolling update:
//! the agent drains (as `ferrovia node drain`) instead of restarting gracefully.
//!
//! The chart names the DaemonSet through [`NAME_ENV`] and [`NAMESPACE_ENV`] and grants `get`
//! on it alone. `helm uninstall` deletes the RBAC objects and the service account right after
//! the DaemonSet, before the kubelet stops the pods, so the read at SIGTERM may be refused:
//! a refusal (HTTP 401/403) counts as an uninstall only when the same read was allowed at
//! start (the agent's permissions were withdrawn since). Without the variables, when the API
//! server does not answer in time, or on any other error, SIGTERM stays a restart.

use crate::config::Config;
use crate::datastore::DatastoreError;
use std::time::Duration;
use tracing::{info, warn};

/// The agent's DaemonSet's name (the chart sets it).
pub const NAME_ENV: &str = "FERROVIA_DAEMONSET_NAME";
/// The agent's DaemonSet's namespace (the chart sets it from the downward API).
pub const NAMESPACE_ENV: &str = "FERROVIA_DAEMONSET_NAMESPACE";

/// How long one check may take.
const BOUND: Duration = Duration::from_secs(5);

/// What the agent knows about its DaemonSet.
pub struct Watch {
    target: Option<(crate::config::Kubernetes, String, String)>,
    /// The read was allowed at start.
    allowed_at_start: bool,
}

async fn read(
    k: &crate::config::Kubernetes,
    namespace: &str,
    name: &str,
) -> Option<Result<bool, DatastoreError>> {
    let check = async {
        let store = crate::datastore::kubernetes::open(k).await?;
        store.daemonset_leaving(namespace, name).await
    };
    tokio::time::timeout(BOUND, check).await.ok()
}

impl Watch {
    /// Reads the DaemonSet once at start (bounded) to learn whether the agent may.
    pub async fn at_start(cfg: &Config) -> Watch {
        let k = cfg.datastore.as_ref().and_then(|d| d.kubernetes.clone());
        let target = match (k, std::env::var(NAME_ENV), std::env::var(NAMESPACE_ENV)) {
            (Some(k), Ok(name), Ok(namespace)) if !name.is_empty() && !namespace.is_empty() => {
                Some((k, namespace, name))
            }
            _ => None,
        };
        let mut allowed_at_start = false;
        if let Some((k, namespace, name)) = &target {
            match read(k, namespace, name).await {
                Some(Ok(_)) => allowed_at_start = true,
                Some(Err(e)) => {
                    warn!(error = %e, daemonset = %format!("{namespace}/{name}"), "cannot read the agent's DaemonSet: an uninstall will look like a rolling update (the agent restarts gracefully instead of draining); grant get on it (the chart's Role)")
                }
                None => {
                    warn!(daemonset = %format!("{namespace}/{name}"), "reading the agent's DaemonSet took more than 5 s; it is read again at SIGTERM")
                }
            }
        }
        Watch {
            target,
            allowed_at_start,
        }
    }

    /// Whether this SIGTERM is an uninstall (see the module).
    pub async fn uninstalling(&self) -> bool {
        let Some((k, namespace, name)) = &self.target else {
            return false;
        };
        let ds = format!("{namespace}/{name}");
        match read(k, namespace, name).await {
            Some(Ok(true)) => {
                info!(daemonset = %ds, "SIGTERM: the agent's DaemonSet is gone or being deleted (an uninstall): draining instead of restarting");
                true
            }
            Some(Ok(false)) => false,
            Some(Err(e @ DatastoreError::Forbidden { .. })) if self.allowed_at_start => {
                info!(daemonset = %ds, error = %e, "SIGTERM: reading the agent's DaemonSet is refused although it was allowed at start (its RBAC or service account deleted: an uninstall): draining instead of restarting");
                true
            }
            Some(Err(e)) => {
                warn!(daemonset = %ds, error = %e, "SIGTERM: cannot tell an uninstall from a rolling update; restarting gracefully");
                false
            }
            None => {
                warn!(daemonset = %ds, "SIGTERM: the API server did not answer within 5 s; restarting gracefully");
                false
            }
        }
    }
}
