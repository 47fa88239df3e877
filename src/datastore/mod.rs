//! The datastore backends and the typed records the agent keeps in them.
//!
//! The abstraction itself (the async [`Datastore`] trait, opaque [`Version`]s, labels
//! and [`Selector`]s, watches, [`DatastoreError`], the [`Reflector`]) lives in
//! [`ferrovia_ipam::datastore`] — IPAM runs on it and cannot depend on this crate — and
//! is re-exported here. This module adds:
//!
//! * [`open`]: the one constructor the agent, the CNI handler and the CLI call; it
//!   returns an `Arc<dyn Datastore>`, so nothing outside this module names a backend;
//! * [`sqlite`]: the embedded backend, one SQLite file shared by the processes of one
//!   machine;
//! * [`kubernetes`]: the cluster backend, custom resources, Node annotations and Leases on
//!   the Kubernetes API server;
//! * [`model`]: the records the agent stores (nodes, node leases, cluster BGP settings,
//!   peers) and the helpers it calls.
//!
//! See `docs/design-datastore.md`.

pub mod kubernetes;
pub mod model;
mod sqlite;

pub use ferrovia_ipam::datastore::*;

use crate::config;
use std::sync::Arc;

/// Opens the datastore the configuration names: SQLite (creating an empty file and its
/// directory when absent) or the Kubernetes API server.
pub async fn open(cfg: &config::Datastore) -> Result<SharedDatastore> {
    if let Some(k) = &cfg.kubernetes {
        return Ok(Arc::new(kubernetes::open(k).await?));
    }
    let Some(sqlite) = &cfg.sqlite else {
        return Err(DatastoreError::Backend {
            detail: "no datastore configured: set datastore.sqlite or datastore.kubernetes".into(),
        });
    };
    let path = sqlite.path.clone();
    let opened = tokio::task::spawn_blocking(move || -> Result<SharedDatastore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| DatastoreError::Backend {
                detail: format!(
                    "cannot create {}, the directory of datastore.sqlite.path: {e}",
                    dir.display()
                ),
            })?;
        }
        Ok(Arc::new(sqlite::SqliteStore::open(&path)?))
    })
    .await;
    match opened {
        Ok(r) => r,
        Err(e) => Err(DatastoreError::Unavailable {
            detail: format!("opening the datastore failed: {e}"),
        }),
    }
}
