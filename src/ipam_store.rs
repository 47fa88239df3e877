//! The agent's datastore as IPAM's compare-and-swap store: IPAM pools, blocks and handles
//! are objects of their own kinds next to nodes and peers, under the same versions.

use crate::datastore::{Datastore, DatastoreError, SqliteStore};
use ferrovia_ipam::{Store, StoreError, Version};
use std::sync::Arc;

/// [`SqliteStore`] seen through `ferrovia_ipam::Store`.
#[derive(Clone)]
pub struct DatastoreStore(pub Arc<SqliteStore>);

fn map(e: DatastoreError) -> StoreError {
    match e {
        DatastoreError::AlreadyExists { .. } => StoreError::AlreadyExists,
        DatastoreError::Conflict { .. } => StoreError::Conflict,
        DatastoreError::NotFound { .. } => StoreError::NotFound,
        other => StoreError::Other(other.to_string()),
    }
}

impl Store for DatastoreStore {
    fn get(
        &self,
        kind: &str,
        name: &str,
    ) -> Result<Option<(serde_json::Value, Version)>, StoreError> {
        Ok(self
            .0
            .get(kind, name)
            .map_err(map)?
            .map(|v| (v.value, v.version)))
    }

    fn list(&self, kind: &str) -> Result<Vec<(String, serde_json::Value, Version)>, StoreError> {
        Ok(self
            .0
            .list(kind)
            .map_err(map)?
            .into_iter()
            .map(|(n, v)| (n, v.value, v.version))
            .collect())
    }

    fn create(
        &self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
    ) -> Result<Version, StoreError> {
        self.0.create(kind, name, value).map_err(map)
    }

    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        expected: Version,
    ) -> Result<Version, StoreError> {
        self.0.update(kind, name, value, expected).map_err(map)
    }

    fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<Version>,
    ) -> Result<bool, StoreError> {
        self.0.delete(kind, name, expected).map_err(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrovia_ipam::{Attributes, Families, HandleId, Ipam, IpamConfig, PoolSpec};

    #[test]
    fn ipam_runs_on_the_sqlite_datastore_and_conflicts_map_through() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(SqliteStore::open(dir.path().join("fv.db")).expect("open"));
        let s = DatastoreStore(store.clone());
        s.create("K", "a", &serde_json::json!({"x": 1}))
            .expect("create");
        assert_eq!(
            s.create("K", "a", &serde_json::json!({})),
            Err(StoreError::AlreadyExists)
        );
        let (_, v) = s.get("K", "a").expect("get").expect("present");
        assert_eq!(
            s.update("K", "a", &serde_json::json!({}), v + 100),
            Err(StoreError::Conflict)
        );

        let ipam = Ipam::new(s, IpamConfig::default());
        ipam.ensure_pools(&[
            PoolSpec::new("10.244.0.0/16"),
            PoolSpec::new("fd00:10:244::/48"),
        ])
        .expect("pools");
        let h = HandleId {
            container_id: "c1".into(),
            interface: "eth0".into(),
        };
        let a = ipam
            .assign("node1", &h, &Attributes::default(), Families::DUAL)
            .expect("assign");
        assert!(a.ipv4.is_some() && a.ipv6.is_some());
        assert_eq!(a.claimed_blocks.len(), 2, "a v4 and a v6 block claimed");
        // Visible to another connection on the same file (another agent on this machine).
        let other = Ipam::new(
            DatastoreStore(Arc::new(
                SqliteStore::open(dir.path().join("fv.db")).expect("open"),
            )),
            IpamConfig::default(),
        );
        assert_eq!(other.node_blocks("node1").expect("blocks").len(), 2);
        assert_eq!(ipam.release(&h).expect("release").len(), 2);
        assert!(ipam.release(&h).expect("idempotent").is_empty());
    }
}
