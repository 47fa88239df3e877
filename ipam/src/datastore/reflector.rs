//! List-then-watch with re-list on expiry (the Kubernetes reflector pattern): a local
//! copy of the objects of one kind matching a selector, kept current from a watch.

use super::typed::{decode, Resource, Typed};
use super::{DatastoreError, Event, EventStream, Item, Result, Selector, SharedDatastore, Version};
use futures::{FutureExt, StreamExt};
use std::collections::BTreeMap;

/// A local copy of the objects of one kind that match a selector.
pub struct Reflector {
    store: SharedDatastore,
    kind: String,
    selector: Selector,
    items: BTreeMap<String, Item>,
    /// Where the copy is current to; `None`: list first.
    version: Option<Version>,
    stream: Option<EventStream>,
}

impl std::fmt::Debug for Reflector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reflector")
            .field("kind", &self.kind)
            .field("selector", &self.selector.to_string())
            .field("items", &self.items.len())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Reflector {
    /// Nothing is read until [`Reflector::next`].
    pub fn new(store: SharedDatastore, kind: impl Into<String>, selector: Selector) -> Self {
        Reflector {
            store,
            kind: kind.into(),
            selector,
            items: BTreeMap::new(),
            version: None,
            stream: None,
        }
    }

    /// For a typed kind.
    pub fn of<R: Resource>(store: SharedDatastore, selector: Selector) -> Self {
        Reflector::new(store, R::KIND, selector)
    }

    /// Brings the copy up to date and returns once it changed (or was listed): the first
    /// call lists; later calls wait for at least one event and apply every event already
    /// there. A watch that expired is followed by a new list (returned as a change). On
    /// an error the copy stays as it was and the next call starts over with a list.
    pub async fn next(&mut self) -> Result<()> {
        loop {
            let Some(version) = self.version.clone() else {
                let list = self.store.list(&self.kind, &self.selector).await?;
                self.items = list
                    .items
                    .into_iter()
                    .map(|i| (i.object.name.clone(), i))
                    .collect();
                self.version = Some(list.version);
                self.stream = None;
                return Ok(());
            };
            if self.stream.is_none() {
                match self.store.watch(&self.kind, &self.selector, &version).await {
                    Ok(s) => self.stream = Some(s),
                    Err(DatastoreError::Expired { .. }) => {
                        self.version = None;
                        continue;
                    }
                    Err(e) => {
                        self.version = None;
                        return Err(e);
                    }
                }
            }
            let next = match self.stream.as_mut() {
                Some(s) => s.next().await,
                None => continue,
            };
            match next {
                Some(Ok(event)) => {
                    self.apply(event);
                    // Apply what is already there, so a burst gives one wake-up.
                    while let Some(Some(next)) =
                        self.stream.as_mut().and_then(|s| s.next().now_or_never())
                    {
                        match next {
                            Ok(event) => self.apply(event),
                            Err(_) => {
                                // The next call watches again from where the
                                // copy is (and re-lists if that expired).
                                self.stream = None;
                                break;
                            }
                        }
                    }
                    return Ok(());
                }
                Some(Err(DatastoreError::Expired { .. })) => {
                    self.version = None;
                }
                Some(Err(e)) => {
                    self.stream = None;
                    self.version = None;
                    return Err(e);
                }
                None => self.stream = None,
            }
        }
    }

    /// Whether the copy has been listed (and not lost to an error since): a
    /// [`Reflector::next`] then waits for a change rather than listing.
    pub fn is_synced(&self) -> bool {
        self.version.is_some()
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Added(item) | Event::Modified(item) => {
                self.version = Some(item.version.clone());
                self.items.insert(item.object.name.clone(), item);
            }
            Event::Deleted(item) => {
                self.version = Some(item.version.clone());
                self.items.remove(&item.object.name);
            }
        }
    }

    /// The objects, sorted by name.
    pub fn items(&self) -> impl Iterator<Item = &Item> {
        self.items.values()
    }

    /// The objects decoded as `R`, sorted by name, and beside them the errors of those
    /// that do not decode (a broken object, written by hand or by a newer version, must
    /// not hide the valid ones: callers log the errors and go on without those objects).
    pub fn typed<R: Resource>(&self) -> (Vec<Typed<R>>, Vec<DatastoreError>) {
        let mut valid = Vec::new();
        let mut invalid = Vec::new();
        for item in self.items.values().cloned() {
            match decode(item) {
                Ok(t) => valid.push(t),
                Err(e) => invalid.push(e),
            }
        }
        (valid, invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::{Datastore, MemStore, Object};
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use std::sync::Arc;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Thing {
        name: String,
        n: u64,
    }

    impl Resource for Thing {
        const KIND: &'static str = "Thing";
        fn name(&self) -> String {
            self.name.clone()
        }
    }

    #[tokio::test]
    async fn a_broken_object_is_reported_beside_the_valid_ones_never_hiding_them() {
        let store = Arc::new(MemStore::new());
        for (name, value) in [
            ("a", json!({"name": "a", "n": 1})),
            ("b", json!({"name": "b", "n": "not a number"})),
            ("c", json!({"name": "c", "n": 3})),
        ] {
            store
                .create("Thing", &Object::new(name, value))
                .await
                .expect("create");
        }
        let shared: SharedDatastore = store;
        let mut r = Reflector::of::<Thing>(shared, Selector::everything());
        r.next().await.expect("list");
        let (valid, invalid) = r.typed::<Thing>();
        let names: Vec<_> = valid.iter().map(|t| t.value.name.as_str()).collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(invalid.len(), 1);
        let msg = invalid[0].to_string();
        assert!(
            msg.starts_with("Thing \"b\" is not valid"),
            "names the object: {msg}"
        );
    }
}
