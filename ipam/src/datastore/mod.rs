//! The datastore: where the agents of a cluster keep what they share (nodes and their
//! leases, the cluster BGP configuration, peers, IPAM pools, blocks and handles).
//!
//! One abstraction for IPAM and the agent, shaped like the Kubernetes API so that a
//! CRD backend implements it by adding a constructor (see `docs/design-datastore.md`):
//!
//! * objects are identified by `(kind, name)`; a name is a DNS-1123 subdomain
//!   ([`validate_name`]); an object carries [`Labels`] and a JSON value;
//! * every stored state has an opaque [`Version`] (Kubernetes: `resourceVersion`); only
//!   equality means anything;
//! * writes are compare-and-swap on the version the caller read;
//! * [`Datastore::list`] filters by label [`Selector`] and returns the version to start a
//!   [`Datastore::watch`] from; a watch yields [`Event`]s of one kind in order, resumes
//!   from any version the backend still remembers and fails with
//!   [`DatastoreError::Expired`] (re-list) otherwise. [`Reflector`] does list-then-watch.
//!
//! The trait lives in `ferrovia-ipam` because IPAM runs on it and cannot depend on the
//! agent crate; the backends (SQLite, Kubernetes) live in the agent crate.

mod bounded;
mod error;
mod mem;
mod name;
mod reflector;
mod selector;
mod typed;

#[cfg(any(test, feature = "contract"))]
pub mod contract;

pub use bounded::Bounded;
pub use error::{DatastoreError, Result};
pub use mem::MemStore;
pub use name::{
    dns1123_subdomain_problem, validate_kind, validate_labels, validate_name, validate_object,
    MAX_NAME_LEN,
};
pub use reflector::Reflector;
pub use selector::{Requirement, Selector, SelectorError};
pub use typed::{decode, Change, DatastoreExt, Resource, Typed, MAX_ATTEMPTS};

use futures::stream::BoxStream;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Labels of an object: a string map, as in Kubernetes `metadata.labels`.
pub type Labels = BTreeMap<String, String>;

/// The version of one stored state of an object, or of a list (Kubernetes:
/// `resourceVersion`). Opaque: callers compare versions for equality only, never order
/// them or do arithmetic on them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    pub fn new(v: impl Into<String>) -> Self {
        Version(v.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a caller writes: a name, labels and a JSON value.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub name: String,
    pub labels: Labels,
    pub value: Value,
}

impl Object {
    pub fn new(name: impl Into<String>, value: Value) -> Self {
        Object {
            name: name.into(),
            labels: Labels::new(),
            value,
        }
    }

    pub fn with_labels(mut self, labels: Labels) -> Self {
        self.labels = labels;
        self
    }
}

/// An object as stored, with the version of this state.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub object: Object,
    pub version: Version,
}

/// The objects of one kind that match a selector, and the version of the list: a
/// [`Datastore::watch`] from it sees every later change.
#[derive(Debug, Clone, PartialEq)]
pub struct List {
    /// Sorted by name.
    pub items: Vec<Item>,
    pub version: Version,
}

/// One change seen by a watch. Relative to the watch's selector: an object whose labels
/// stop matching is `Deleted`, one whose labels start matching is `Added`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Added(Item),
    Modified(Item),
    /// The object's last state, with the version of the deletion.
    Deleted(Item),
}

impl Event {
    pub fn item(&self) -> &Item {
        match self {
            Event::Added(i) | Event::Modified(i) | Event::Deleted(i) => i,
        }
    }
}

/// A stream of watch events; an error ends it ([`DatastoreError::Expired`]: re-list).
pub type EventStream = BoxStream<'static, Result<Event>>;

/// A store of JSON objects with labels, compare-and-swap writes, selectors and watches.
///
/// Every backend validates names ([`validate_name`]), kinds and labels on write, and
/// returns only [`DatastoreError`]s. Methods are async; a backend that blocks (SQLite)
/// does so on tokio's blocking pool.
#[async_trait::async_trait]
pub trait Datastore: Send + Sync + fmt::Debug {
    /// The object `kind`/`name`, or `None` when it does not exist.
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>>;

    /// Every object of `kind` whose labels match `selector`, sorted by name, and the
    /// version to watch from.
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List>;

    /// Creates the object ([`DatastoreError::AlreadyExists`] when it exists) and returns
    /// its version.
    async fn create(&self, kind: &str, object: &Object) -> Result<Version>;

    /// Replaces the object if its stored version is still `expected`
    /// ([`DatastoreError::Conflict`] otherwise, [`DatastoreError::NotFound`] when it does
    /// not exist) and returns the new version.
    async fn update(&self, kind: &str, object: &Object, expected: &Version) -> Result<Version>;

    /// Deletes the object; with `Some(expected)` only if its version is still `expected`
    /// ([`DatastoreError::Conflict`] otherwise). Returns false when it did not exist.
    async fn delete(&self, kind: &str, name: &str, expected: Option<&Version>) -> Result<bool>;

    /// The changes to objects of `kind` matching `selector` after `from` (a version from
    /// a [`List`] or an [`Event`]), in the order they happened. A `from` the backend no
    /// longer remembers gives [`DatastoreError::Expired`], at once or later in the stream.
    async fn watch(&self, kind: &str, selector: &Selector, from: &Version) -> Result<EventStream>;
}

/// A shared handle on some backend: what the agent, the CNI handler, IPAM and the CLI
/// hold.
pub type SharedDatastore = Arc<dyn Datastore>;

/// The event a watch with `selector` reports for one logged change (`None`: nothing to
/// report): `before` is the object's labels before the change (`None`: it did not
/// exist), `item` its state after (for a deletion: its last state, with the version of
/// the deletion). Backends that keep a change log use it to apply Kubernetes' selector
/// semantics.
pub fn event_for(
    selector: &Selector,
    before: Option<&Labels>,
    item: Item,
    deleted: bool,
) -> Option<Event> {
    let was = before.is_some_and(|l| selector.matches(l));
    if deleted {
        return was.then_some(Event::Deleted(item));
    }
    match (was, selector.matches(&item.object.labels)) {
        (false, true) => Some(Event::Added(item)),
        (true, true) => Some(Event::Modified(item)),
        (true, false) => Some(Event::Deleted(item)),
        (false, false) => None,
    }
}
