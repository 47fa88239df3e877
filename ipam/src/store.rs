//! The object store IPAM keeps its state in, and an in-memory implementation for tests.
//!
//! The trait has the shape of the agent's datastore (SQLite now, Kubernetes CRDs later):
//! objects are identified by `(kind, name)`, hold a JSON value and carry a [`Version`];
//! writes are compare-and-swap. The root crate implements [`Store`] by delegating to its
//! `Datastore` and mapping its errors onto [`StoreError`].
//!
//! What IPAM relies on:
//! * `create` fails with [`StoreError::AlreadyExists`] when the object exists: claiming a
//!   block is a `create`, so two nodes can never both claim it.
//! * `update` and `delete(Some(v))` fail with [`StoreError::Conflict`] when the stored
//!   version is no longer `v`, and `update` fails with [`StoreError::NotFound`] (or
//!   `Conflict`: both are handled the same way) when the object is gone.
//! * `list` returns each object with the version it was read at. A list need not be a
//!   consistent snapshot across objects; every decision taken on a listed object is
//!   committed with a compare-and-swap on that object's version.
//! * Versions increase store-wide (a later write gets a larger version than any earlier
//!   one). Only the tie-break between two pools created concurrently with overlapping
//!   CIDRs uses this, and it stays deterministic (it falls back to the CIDR) if it does
//!   not hold.

use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The version of one stored object (Kubernetes: `resourceVersion`).
pub type Version = u64;

/// What a [`Store`] operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// `create` of an object that exists already.
    #[error("the object exists already")]
    AlreadyExists,
    /// Compare-and-swap failed: the object was written (or deleted) since it was read.
    #[error("the object was changed by someone else since it was read")]
    Conflict,
    /// `update` of an object that does not exist.
    #[error("the object does not exist")]
    NotFound,
    /// Anything else (I/O, a locked database, an unreachable API server…), with the
    /// backend's own message.
    #[error("{0}")]
    Other(String),
}

/// A key-value store of JSON objects with compare-and-swap writes.
///
/// Methods block; call IPAM from `tokio::task::spawn_blocking` in async code.
pub trait Store: Send + Sync {
    /// The object `kind`/`name` and its version, or `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, StoreError>;
    /// Every object of `kind` as `(name, value, version)`.
    fn list(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, StoreError>;
    /// Creates the object ([`StoreError::AlreadyExists`] when it exists); returns its version.
    fn create(&self, kind: &str, name: &str, value: &Value) -> Result<Version, StoreError>;
    /// Replaces the object if its version is still `expected` ([`StoreError::Conflict`]
    /// otherwise, [`StoreError::NotFound`] when it is gone); returns the new version.
    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: Version,
    ) -> Result<Version, StoreError>;
    /// Deletes the object; with `Some(expected)` only if its version is still `expected`
    /// ([`StoreError::Conflict`] otherwise). Returns false when it did not exist.
    fn delete(&self, kind: &str, name: &str, expected: Option<Version>)
        -> Result<bool, StoreError>;
}

impl<T: Store + ?Sized> Store for Arc<T> {
    fn get(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, StoreError> {
        (**self).get(kind, name)
    }
    fn list(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, StoreError> {
        (**self).list(kind)
    }
    fn create(&self, kind: &str, name: &str, value: &Value) -> Result<Version, StoreError> {
        (**self).create(kind, name, value)
    }
    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: Version,
    ) -> Result<Version, StoreError> {
        (**self).update(kind, name, value, expected)
    }
    fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<Version>,
    ) -> Result<bool, StoreError> {
        (**self).delete(kind, name, expected)
    }
}

impl<T: Store + ?Sized> Store for Box<T> {
    fn get(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, StoreError> {
        (**self).get(kind, name)
    }
    fn list(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, StoreError> {
        (**self).list(kind)
    }
    fn create(&self, kind: &str, name: &str, value: &Value) -> Result<Version, StoreError> {
        (**self).create(kind, name, value)
    }
    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: Version,
    ) -> Result<Version, StoreError> {
        (**self).update(kind, name, value, expected)
    }
    fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<Version>,
    ) -> Result<bool, StoreError> {
        (**self).delete(kind, name, expected)
    }
}

/// An in-memory [`Store`] for tests: one mutex over a map. Versions come from one
/// store-wide counter, like the SQLite backend's revision.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    objects: BTreeMap<String, BTreeMap<String, (Value, Version)>>,
    revision: Version,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, MemInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of objects of `kind` (for tests).
    pub fn count(&self, kind: &str) -> usize {
        self.inner().objects.get(kind).map_or(0, BTreeMap::len)
    }
}

impl Store for MemStore {
    fn get(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, StoreError> {
        Ok(self
            .inner()
            .objects
            .get(kind)
            .and_then(|objects| objects.get(name))
            .cloned())
    }

    fn list(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, StoreError> {
        Ok(self
            .inner()
            .objects
            .get(kind)
            .map_or_else(Vec::new, |objects| {
                objects
                    .iter()
                    .map(|(name, (value, version))| (name.clone(), value.clone(), *version))
                    .collect()
            }))
    }

    fn create(&self, kind: &str, name: &str, value: &Value) -> Result<Version, StoreError> {
        let mut inner = self.inner();
        if inner
            .objects
            .get(kind)
            .is_some_and(|objects| objects.contains_key(name))
        {
            return Err(StoreError::AlreadyExists);
        }
        inner.revision += 1;
        let version = inner.revision;
        inner
            .objects
            .entry(kind.to_string())
            .or_default()
            .insert(name.to_string(), (value.clone(), version));
        Ok(version)
    }

    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: Version,
    ) -> Result<Version, StoreError> {
        let mut inner = self.inner();
        inner.revision += 1;
        let version = inner.revision;
        let slot = inner
            .objects
            .get_mut(kind)
            .and_then(|objects| objects.get_mut(name))
            .ok_or(StoreError::NotFound)?;
        if slot.1 != expected {
            return Err(StoreError::Conflict);
        }
        *slot = (value.clone(), version);
        Ok(version)
    }

    fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<Version>,
    ) -> Result<bool, StoreError> {
        let mut inner = self.inner();
        let Some(objects) = inner.objects.get_mut(kind) else {
            return Ok(false);
        };
        match objects.get(name) {
            None => return Ok(false),
            Some((_, version)) if expected.is_some_and(|e| e != *version) => {
                return Err(StoreError::Conflict)
            }
            Some(_) => {}
        }
        objects.remove(name);
        inner.revision += 1;
        Ok(true)
    }
}
