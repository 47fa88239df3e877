//! Typed access to the datastore: a [`Resource`] is a serde type with a kind and a name,
//! and [`DatastoreExt`] (implemented for every [`Datastore`]) reads and writes it, with
//! [`DatastoreExt::modify`] as the one read-modify-write loop that retries on conflicts.

use super::{Datastore, DatastoreError, Result, Version, Versioned};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many conflicting writes in a row [`DatastoreExt::modify`] tolerates.
pub const MAX_ATTEMPTS: u32 = 64;

/// A typed object of the store (Kubernetes: a resource with its kind).
pub trait Resource: Serialize + DeserializeOwned {
    /// The kind it is stored under (Kubernetes: the CRD's kind).
    const KIND: &'static str;
    /// Its name, unique within the kind (Kubernetes: `metadata.name`).
    fn name(&self) -> &str;
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

fn encode<R: Resource>(obj: &R) -> Result<serde_json::Value> {
    serde_json::to_value(obj).map_err(|e| DatastoreError::InvalidValue {
        kind: R::KIND.to_string(),
        name: obj.name().to_string(),
        reason: e.to_string(),
    })
}

fn decode<R: Resource>(name: &str, v: Versioned<serde_json::Value>) -> Result<Versioned<R>> {
    let invalid = |reason: String| DatastoreError::InvalidObject {
        kind: R::KIND.to_string(),
        name: name.to_string(),
        reason,
    };
    let value: R = serde_json::from_value(v.value).map_err(|e| invalid(e.to_string()))?;
    if value.name() != name {
        return Err(invalid(format!(
            "it is stored under {name:?} but names itself {:?}",
            value.name()
        )));
    }
    Ok(Versioned {
        value,
        version: v.version,
    })
}

/// A short, jittered pause after a conflict so that competing writers spread out.
fn backoff(attempt: u32) {
    if attempt < 3 {
        return;
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let ceiling_us = 200 * attempt.min(25);
    std::thread::sleep(Duration::from_micros(u64::from(nanos % ceiling_us)));
}

/// Typed operations, available on every [`Datastore`] (including `dyn Datastore`).
pub trait DatastoreExt: Datastore {
    fn get_object<R: Resource>(&self, name: &str) -> Result<Option<Versioned<R>>> {
        self.get(R::KIND, name)?
            .map(|v| decode(name, v))
            .transpose()
    }

    /// Every object of the kind, sorted by name.
    fn list_objects<R: Resource>(&self) -> Result<Vec<Versioned<R>>> {
        self.list(R::KIND)?
            .into_iter()
            .map(|(name, v)| decode(&name, v))
            .collect()
    }

    fn create_object<R: Resource>(&self, obj: &R) -> Result<Version> {
        self.create(R::KIND, obj.name(), &encode(obj)?)
    }

    fn update_object<R: Resource>(&self, obj: &R, expected: Version) -> Result<Version> {
        self.update(R::KIND, obj.name(), &encode(obj)?, expected)
    }

    fn delete_object<R: Resource>(&self, name: &str, expected: Option<Version>) -> Result<bool> {
        self.delete(R::KIND, name, expected)
    }

    /// Read-modify-write with compare-and-swap: reads `name`, asks `f` what to do with
    /// it (`None`: absent), writes the answer, and starts over when another writer got
    /// there first. `f` may run several times and must not have side effects. Errors
    /// from `f` end the loop. Returns the object as stored afterwards (`None`: absent).
    fn modify<R, F>(&self, name: &str, mut f: F) -> Result<Option<Versioned<R>>>
    where
        R: Resource,
        F: FnMut(Option<&R>) -> Result<Change<R>>,
    {
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                backoff(attempt);
            }
            let current = self.get_object::<R>(name)?;
            match f(current.as_ref().map(|c| &c.value))? {
                Change::Keep => return Ok(current),
                Change::Put(new) => {
                    if new.name() != name {
                        return Err(DatastoreError::InvalidValue {
                            kind: R::KIND.to_string(),
                            name: name.to_string(),
                            reason: format!("the new object is named {:?}", new.name()),
                        });
                    }
                    let written = match &current {
                        None => self.create_object(&new),
                        Some(cur) => self.update_object(&new, cur.version),
                    };
                    match written {
                        Ok(version) => {
                            return Ok(Some(Versioned {
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
                    match self.delete(R::KIND, name, Some(cur.version)) {
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
