//! The datastore: where the agents of a cluster keep what they share (nodes, the cluster
//! BGP configuration, peers, and later IPAM pools, blocks and handles).
//!
//! It is shaped like the Kubernetes API so that a CRD backend fits the same trait:
//! every object is identified by `(kind, name)`, holds a JSON value, and carries a
//! [`Version`] (Kubernetes: `metadata.resourceVersion`). Writes are compare-and-swap:
//! [`Datastore::update`] and [`Datastore::delete`] take the version the caller read and
//! fail with [`DatastoreError::Conflict`] when someone wrote in between.
//!
//! Change detection: [`Datastore::revision`] is a store-wide counter that every write
//! raises (Kubernetes: the resourceVersion of a list). Polling it is cheap (one indexed
//! read); [`watch`] turns the polling into a `tokio::sync::watch` channel.
//!
//! * [`sqlite`]: the embedded backend, one SQLite file shared by the processes of one
//!   machine.
//! * [`typed`]: serde-typed access ([`Resource`], [`DatastoreExt`]) and the CAS retry loop.
//! * [`model`]: the records the agent stores and the helpers it calls.

mod error;
pub mod model;
pub mod sqlite;
pub mod typed;
mod watch;

pub use error::DatastoreError;
// Unused until the agent is wired to the datastore.
#[allow(unused_imports)]
pub use sqlite::SqliteStore;
#[allow(unused_imports)]
pub use typed::{DatastoreExt, Resource};
#[allow(unused_imports)]
pub use watch::watch;

/// The version of one stored object (Kubernetes: `resourceVersion`). Versions increase
/// with every write anywhere in the store, so a deleted and re-created object never gets
/// a version it had before.
pub type Version = u64;

/// A value with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub version: Version,
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

/// A key-value store of JSON objects with compare-and-swap writes.
///
/// Methods block (the SQLite backend does file I/O, a Kubernetes backend would block on
/// the API server); call them from `tokio::task::spawn_blocking` in async code.
pub trait Datastore: Send + Sync {
    /// The object `kind`/`name`, or `None` when it does not exist.
    fn get(&self, kind: &str, name: &str) -> Result<Option<Versioned<serde_json::Value>>>;

    /// Every object of `kind`, sorted by name.
    fn list(&self, kind: &str) -> Result<Vec<(String, Versioned<serde_json::Value>)>>;

    /// Creates the object; fails with [`DatastoreError::AlreadyExists`] when it exists.
    /// Returns the new version.
    fn create(&self, kind: &str, name: &str, value: &serde_json::Value) -> Result<Version>;

    /// Replaces the object if its stored version is still `expected`; fails with
    /// [`DatastoreError::Conflict`] otherwise and with [`DatastoreError::NotFound`] when
    /// it does not exist. Returns the new version.
    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        expected: Version,
    ) -> Result<Version>;

    /// Deletes the object; with `Some(expected)` only if its version is still `expected`
    /// ([`DatastoreError::Conflict`] otherwise). Returns false when it did not exist.
    fn delete(&self, kind: &str, name: &str, expected: Option<Version>) -> Result<bool>;

    /// The store-wide revision: it increases with every successful write (create,
    /// update, delete) by any process, and never decreases. Cheap enough to poll.
    fn revision(&self) -> Result<u64>;
}

/// Longest kind or name a backend must accept (a Kubernetes object name's limit).
pub const MAX_KEY_LEN: usize = 253;

/// The key rules every backend applies on create: non-empty, at most [`MAX_KEY_LEN`]
/// bytes, no control characters.
pub fn check_key(kind: &str, name: &str) -> Result<()> {
    let reason = |what: &str, s: &str| {
        if s.is_empty() {
            Some(format!("the {what} is empty"))
        } else if s.len() > MAX_KEY_LEN {
            Some(format!("the {what} is longer than {MAX_KEY_LEN} bytes"))
        } else if s.chars().any(char::is_control) {
            Some(format!("the {what} contains control characters"))
        } else {
            None
        }
    };
    match reason("kind", kind).or_else(|| reason("name", name)) {
        Some(reason) => Err(DatastoreError::InvalidValue {
            kind: kind.to_string(),
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

impl<D: Datastore + ?Sized> Datastore for std::sync::Arc<D> {
    fn get(&self, kind: &str, name: &str) -> Result<Option<Versioned<serde_json::Value>>> {
        (**self).get(kind, name)
    }
    fn list(&self, kind: &str) -> Result<Vec<(String, Versioned<serde_json::Value>)>> {
        (**self).list(kind)
    }
    fn create(&self, kind: &str, name: &str, value: &serde_json::Value) -> Result<Version> {
        (**self).create(kind, name, value)
    }
    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        expected: Version,
    ) -> Result<Version> {
        (**self).update(kind, name, value, expected)
    }
    fn delete(&self, kind: &str, name: &str, expected: Option<Version>) -> Result<bool> {
        (**self).delete(kind, name, expected)
    }
    fn revision(&self) -> Result<u64> {
        (**self).revision()
    }
}
