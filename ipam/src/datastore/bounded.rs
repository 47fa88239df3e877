//! A datastore whose calls answer within a bound: a backend that does not answer (an API
//! server that is down, a database file locked for long) gives `Unavailable` instead of
//! hanging its caller. The CNI ADD path runs on it so that the runtime gets "try again
//! later" (CNI code 11) long before its own timeout.
//!
//! Once a call has timed out, the store counts as down and later calls get a much shorter
//! bound until one of them answers again, so that requests queued behind a stuck one do
//! not each wait the full bound. Watches are passed through unbounded (a watch waits by
//! design; the reflector re-lists after its errors).
//!
//! Lists of a few kinds can be marked as background work ([`Bounded::with_bulk_lists`]):
//! listing every handle of a cluster is never on a pod's path (the leak collector and the
//! release of removed nodes do it) and takes as long as the cluster is big — 10,000
//! handles from an API server on a busy machine take more than the pod path's bound. Such
//! a list gets a bound of its own, and its slowness does not mark the store as down.

use super::{
    Datastore, DatastoreError, EventStream, Item, List, Object, Result, Selector, Version,
};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The bound while the store is known to be down.
const WHILE_DOWN: Duration = Duration::from_millis(200);

/// `inner` with every call bounded by `limit`.
pub struct Bounded {
    inner: Arc<dyn Datastore>,
    limit: Duration,
    down: AtomicBool,
    /// Kinds whose lists are background work, and their bound.
    bulk_kinds: Vec<String>,
    bulk_limit: Duration,
}

impl fmt::Debug for Bounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bounded")
            .field("inner", &self.inner)
            .field("limit", &self.limit)
            .field("bulk_kinds", &self.bulk_kinds)
            .field("bulk_limit", &self.bulk_limit)
            .finish()
    }
}

impl Bounded {
    pub fn new(inner: Arc<dyn Datastore>, limit: Duration) -> Self {
        Bounded {
            inner,
            limit,
            down: AtomicBool::new(false),
            bulk_kinds: Vec::new(),
            bulk_limit: limit,
        }
    }

    /// Lists of `kinds` are background work: each is bounded by `limit` instead, whether or
    /// not the store counts as down, and one that times out does not make it count as down.
    pub fn with_bulk_lists(mut self, kinds: &[&str], limit: Duration) -> Self {
        self.bulk_kinds = kinds.iter().map(|k| k.to_string()).collect();
        self.bulk_limit = limit;
        self
    }

    /// True after a call timed out, until a call answers again.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    async fn bound<T>(&self, what: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let limit = if self.is_down() {
            WHILE_DOWN.min(self.limit)
        } else {
            self.limit
        };
        match tokio::time::timeout(limit, f).await {
            Ok(r) => {
                self.down.store(false, Ordering::Relaxed);
                r
            }
            Err(_) => {
                self.down.store(true, Ordering::Relaxed);
                Err(DatastoreError::Unavailable {
                    detail: format!(
                        "{what} got no answer within {} ms; check that the datastore (the \
                         API server, or the database file) is up and reachable",
                        limit.as_millis()
                    ),
                })
            }
        }
    }
}

#[async_trait::async_trait]
impl Datastore for Bounded {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>> {
        self.bound(
            &format!("reading {kind} {name:?}"),
            self.inner.get(kind, name),
        )
        .await
    }

    async fn list(&self, kind: &str, selector: &Selector) -> Result<List> {
        if self.bulk_kinds.iter().any(|k| k == kind) {
            return match tokio::time::timeout(self.bulk_limit, self.inner.list(kind, selector))
                .await
            {
                Ok(r) => {
                    self.down.store(false, Ordering::Relaxed);
                    r
                }
                Err(_) => Err(DatastoreError::Unavailable {
                    detail: format!(
                        "listing every {kind} got no answer within {} s; check that the \
                         datastore (the API server, or the database file) is up and reachable",
                        self.bulk_limit.as_secs()
                    ),
                }),
            };
        }
        self.bound(&format!("listing {kind}"), self.inner.list(kind, selector))
            .await
    }

    async fn create(&self, kind: &str, object: &Object) -> Result<Version> {
        self.bound(
            &format!("creating {kind} {:?}", object.name),
            self.inner.create(kind, object),
        )
        .await
    }

    async fn update(&self, kind: &str, object: &Object, expected: &Version) -> Result<Version> {
        self.bound(
            &format!("updating {kind} {:?}", object.name),
            self.inner.update(kind, object, expected),
        )
        .await
    }

    async fn delete(&self, kind: &str, name: &str, expected: Option<&Version>) -> Result<bool> {
        self.bound(
            &format!("deleting {kind} {name:?}"),
            self.inner.delete(kind, name, expected),
        )
        .await
    }

    async fn watch(&self, kind: &str, selector: &Selector, from: &Version) -> Result<EventStream> {
        self.inner.watch(kind, selector, from).await
    }
}
