//! Typed access: a [`Resource`] is a serde type with a kind, a name and labels;
//! [`DatastoreExt`] (on every [`Datastore`]) reads and writes it, with
//! [`DatastoreExt::modify`] as the one read-modify-write loop that retries on conflicts.

use super::{Datastore, DatastoreError, Item, Labels, Object, Result, Selector, Version};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// How many conflicting writes in a row [`DatastoreExt::modify`] tolerates.
pub const MAX_ATTEMPTS: u32 = 64;

/// A typed object of the store (Kubernetes: a resource with its kind).
pub trait Resource: Serialize + DeserializeOwned + Send + Sync {
    /// The kind it is stored under (Kubernetes: the CRD's kind).
    const KIND: &'static str;
    /// Its name, unique within the kind (Kubernetes: `metadata.name`).
    fn name(&self) -> String;
    /// Its labels (for selectors); none by default.
    fn labels(&self) -> Labels {
        Labels::new()
    }
}

/// A typed object with the version it was read at.
#[derive(Debug, Clone, PartialEq)]
pub struct Typed<R> {
    pub value: R,
    pub version: Version,
}

/// What a [`DatastoreExt::modify`] closure decides.
#[derive(Debug, Clone, PartialEq)]
pub enum Change<R> {
    /// Leave the stored object as it is (or absent).
    Keep,
    /// Store this object (create it or replace the current one).
    Put(R),
    /// Delete the object.
    Delete,
}

/// Encodes a resource as the object to write.
pub fn encode<R: Resource>(obj: &R) -> Result<Object> {
    let name = obj.name();
    let value = serde_json::to_value(obj)
        .map_err(|e| DatastoreError::invalid(R::KIND, &name, e.to_string()))?;
    Ok(Object {
        name,
        labels: obj.labels(),
        value,
    })
}

/// Decodes a stored item, checking that it names itself as stored.
pub fn decode<R: Resource>(item: Item) -> Result<Typed<R>> {
    let name = item.object.name;
    let invalid = |reason: String| {
        DatastoreError::invalid(
            R::KIND,
            &name,
            format!("the stored object does not decode: {reason}; fix or delete it (it may have been written by a newer ferrovia or by hand)"),
        )
    };
    let value: R = serde_json::from_value(item.object.value).map_err(|e| invalid(e.to_string()))?;
    if value.name() != name {
        return Err(invalid(format!(
            "it is stored under {name:?} but names itself {:?}",
            value.name()
        )));
    }
    Ok(Typed {
        value,
        version: item.version,
    })
}

/// Typed operations, available on every [`Datastore`] (including `dyn Datastore`).
#[async_trait::async_trait]
pub trait DatastoreExt: Datastore {
    async fn get_object<R: Resource>(&self, name: &str) -> Result<Option<Typed<R>>> {
        self.get(R::KIND, name).await?.map(decode).transpose()
    }

    /// Every object of the kind matching `selector`, sorted by name.
    async fn list_objects<R: Resource>(&self, selector: &Selector) -> Result<Vec<Typed<R>>> {
        self.list(R::KIND, selector)
            .await?
            .items
            .into_iter()
            .map(decode)
            .collect()
    }

    async fn create_object<R: Resource>(&self, obj: &R) -> Result<Version> {
        self.create(R::KIND, &encode(obj)?).await
    }

    async fn update_object<R: Resource>(&self, obj: &R, expected: &Version) -> Result<Version> {
        self.update(R::KIND, &encode(obj)?, expected).await
    }

    async fn delete_object<R: Resource>(
        &self,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool> {
        self.delete(R::KIND, name, expected).await
    }

    /// Read-modify-write with compare-and-swap: reads `name`, asks `f` what to do with
    /// it (`None`: absent), writes the answer, and starts over when another writer got
    /// there first. `f` may run several times and must not have side effects. Errors
    /// from `f` end the loop. Returns the object as stored afterwards (`None`: absent).
    async fn modify<R, F>(&self, name: &str, mut f: F) -> Result<Option<Typed<R>>>
    where
        R: Resource,
        F: FnMut(Option<&R>) -> Result<Change<R>> + Send,
    {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt >= 3 {
                // Spread competing writers out a little.
                let jitter = u64::from(attempt.min(25)) * 200 + u64::from(attempt * 37 % 200);
                tokio::time::sleep(Duration::from_micros(jitter)).await;
            }
            let current = self.get_object::<R>(name).await?;
            match f(current.as_ref().map(|c| &c.value))? {
                Change::Keep => return Ok(current),
                Change::Put(new) => {
                    if new.name() != name {
                        return Err(DatastoreError::invalid(
                            R::KIND,
                            name,
                            format!("the new object is named {:?}", new.name()),
                        ));
                    }
                    let written = match &current {
                        None => self.create_object(&new).await,
                        Some(cur) => self.update_object(&new, &cur.version).await,
                    };
                    match written {
                        Ok(version) => {
                            return Ok(Some(Typed {
                                value: new,
                                version,
                            }))
                        }
                        Err(
                            DatastoreError::Conflict { .. }
                            | DatastoreError::AlreadyExists { .. }
                            | DatastoreError::NotFound { .. },
                        ) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Change::Delete => {
                    let Some(cur) = current else { return Ok(None) };
                    match self.delete(R::KIND, name, Some(&cur.version)).await {
                        Ok(_) => return Ok(None),
                        Err(DatastoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Err(DatastoreError::TooManyConflicts {
            kind: R::KIND.to_string(),
            name: name.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }
}

impl<D: Datastore + ?Sized> DatastoreExt for D {}
