//! An in-memory [`Datastore`] for fast tests (IPAM's property tests). It passes the
//! contract suite like every backend: versions are a store-wide counter rendered as
//! text, and watches read a bounded in-memory change log.

use super::name::validate_object;
use super::{
    event_for, Datastore, DatastoreError, Event, EventStream, Item, Labels, List, Object, Result,
    Selector, Version,
};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::watch;

/// Changes kept for watches by default.
pub const DEFAULT_HISTORY: usize = 10_000;

/// An in-memory store. `Clone` gives another handle on the same store.
#[derive(Debug, Clone)]
pub struct MemStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    /// The revision, published after every write (wakes the watches).
    revision: watch::Sender<u64>,
    history: usize,
}

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<(String, String), (Object, u64)>,
    revision: u64,
    log: VecDeque<Logged>,
    /// The highest revision dropped from the log (watches from before it expired).
    compacted: u64,
}

#[derive(Debug, Clone)]
struct Logged {
    kind: String,
    revision: u64,
    before: Option<Labels>,
    item: Item,
    deleted: bool,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::with_history(DEFAULT_HISTORY)
    }
}

fn parse_version(kind: &str, name: &str, v: &Version) -> Result<u64> {
    v.as_str().parse().map_err(|_| {
        DatastoreError::invalid(
            kind,
            name,
            format!("{v:?} is not a version this datastore gave out"),
        )
    })
}

fn version(rev: u64) -> Version {
    Version::new(rev.to_string())
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the last `history` changes for watches.
    pub fn with_history(history: usize) -> Self {
        MemStore {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                revision: watch::channel(0).0,
                history: history.max(1),
            }),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        lock(&self.shared)
    }

    /// Number of objects of `kind` (for tests).
    pub fn count(&self, kind: &str) -> usize {
        self.inner()
            .objects
            .keys()
            .filter(|(k, _)| k == kind)
            .count()
    }

    fn commit(&self, mut inner: MutexGuard<'_, Inner>, entry: Logged) {
        let rev = entry.revision;
        inner.log.push_back(entry);
        while inner.log.len() > self.shared.history {
            if let Some(old) = inner.log.pop_front() {
                inner.compacted = old.revision;
            }
        }
        drop(inner);
        self.shared.revision.send_replace(rev);
    }
}

fn lock(shared: &Shared) -> MutexGuard<'_, Inner> {
    shared.inner.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait::async_trait]
impl Datastore for MemStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>> {
        Ok(self
            .inner()
            .objects
            .get(&(kind.to_string(), name.to_string()))
            .map(|(o, v)| Item {
                object: o.clone(),
                version: version(*v),
            }))
    }

    async fn list(&self, kind: &str, selector: &Selector) -> Result<List> {
        let inner = self.inner();
        let items = inner
            .objects
            .iter()
            .filter(|((k, _), (o, _))| k == kind && selector.matches(&o.labels))
            .map(|(_, (o, v))| Item {
                object: o.clone(),
                version: version(*v),
            })
            .collect();
        Ok(List {
            items,
            version: version(inner.revision),
        })
    }

    async fn create(&self, kind: &str, object: &Object) -> Result<Version> {
        validate_object(kind, object)?;
        let mut inner = self.inner();
        let key = (kind.to_string(), object.name.clone());
        if inner.objects.contains_key(&key) {
            return Err(DatastoreError::already_exists(kind, &object.name));
        }
        inner.revision += 1;
        let rev = inner.revision;
        inner.objects.insert(key, (object.clone(), rev));
        let entry = Logged {
            kind: kind.to_string(),
            revision: rev,
            before: None,
            item: Item {
                object: object.clone(),
                version: version(rev),
            },
            deleted: false,
        };
        self.commit(inner, entry);
        Ok(version(rev))
    }

    async fn update(&self, kind: &str, object: &Object, expected: &Version) -> Result<Version> {
        validate_object(kind, object)?;
        let expected_rev = parse_version(kind, &object.name, expected)?;
        let mut inner = self.inner();
        let key = (kind.to_string(), object.name.clone());
        let Some((old, old_rev)) = inner.objects.get(&key).cloned() else {
            return Err(DatastoreError::not_found(kind, &object.name));
        };
        if old_rev != expected_rev {
            return Err(DatastoreError::conflict(
                kind,
                &object.name,
                format!("expected version {expected}, found {old_rev}"),
            ));
        }
        inner.revision += 1;
        let rev = inner.revision;
        inner.objects.insert(key, (object.clone(), rev));
        let entry = Logged {
            kind: kind.to_string(),
            revision: rev,
            before: Some(old.labels),
            item: Item {
                object: object.clone(),
                version: version(rev),
            },
            deleted: false,
        };
        self.commit(inner, entry);
        Ok(version(rev))
    }

    async fn delete(&self, kind: &str, name: &str, expected: Option<&Version>) -> Result<bool> {
        let expected = expected.map(|v| parse_version(kind, name, v)).transpose()?;
        let mut inner = self.inner();
        let key = (kind.to_string(), name.to_string());
        let Some((old, old_rev)) = inner.objects.get(&key).cloned() else {
            return Ok(false);
        };
        if let Some(e) = expected {
            if e != old_rev {
                return Err(DatastoreError::conflict(
                    kind,
                    name,
                    format!("expected version {e}, found {old_rev}"),
                ));
            }
        }
        inner.objects.remove(&key);
        inner.revision += 1;
        let rev = inner.revision;
        let entry = Logged {
            kind: kind.to_string(),
            revision: rev,
            before: Some(old.labels.clone()),
            item: Item {
                object: old,
                version: version(rev),
            },
            deleted: true,
        };
        self.commit(inner, entry);
        Ok(true)
    }

    async fn watch(&self, kind: &str, selector: &Selector, from: &Version) -> Result<EventStream> {
        let from = parse_version(kind, "", from)?;
        let state = WatchState {
            shared: Arc::clone(&self.shared),
            rx: self.shared.revision.subscribe(),
            kind: kind.to_string(),
            selector: selector.clone(),
            pos: from,
            ready: VecDeque::new(),
            done: false,
        };
        // Too old already: fail now rather than on the first poll.
        if from < lock(&self.shared).compacted {
            return Err(expired(kind, from));
        }
        Ok(Box::pin(futures::stream::unfold(state, next_event)))
    }
}

fn expired(kind: &str, from: u64) -> DatastoreError {
    DatastoreError::Expired {
        kind: kind.to_string(),
        version: from.to_string(),
        detail: "the in-memory change log was trimmed past it".to_string(),
    }
}

struct WatchState {
    shared: Arc<Shared>,
    rx: watch::Receiver<u64>,
    kind: String,
    selector: Selector,
    pos: u64,
    ready: VecDeque<Event>,
    done: bool,
}

async fn next_event(mut st: WatchState) -> Option<(Result<Event>, WatchState)> {
    if st.done {
        return None;
    }
    loop {
        if let Some(e) = st.ready.pop_front() {
            return Some((Ok(e), st));
        }
        st.rx.borrow_and_update();
        {
            let inner = lock(&st.shared);
            if st.pos < inner.compacted {
                st.done = true;
                let e = expired(&st.kind, st.pos);
                drop(inner);
                return Some((Err(e), st));
            }
            for l in inner.log.iter().filter(|l| l.revision > st.pos) {
                if l.kind == st.kind {
                    if let Some(e) =
                        event_for(&st.selector, l.before.as_ref(), l.item.clone(), l.deleted)
                    {
                        st.ready.push_back(e);
                    }
                }
            }
            st.pos = st.pos.max(inner.revision);
        }
        if st.ready.is_empty() && st.rx.changed().await.is_err() {
            return None;
        }
    }
}
