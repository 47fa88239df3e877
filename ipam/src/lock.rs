//! Per-key mutual exclusion inside one process: operations on the same handle (assign,
//! release, GC's repair of it) run one at a time, so the handle index never loses an
//! entry to a race between two of them. Async: a waiting operation parks its task, not
//! a thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::OwnedMutexGuard;

type Slots = Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>;

#[derive(Debug, Default)]
pub(crate) struct KeyedLock {
    slots: Arc<Slots>,
}

pub(crate) struct KeyGuard {
    slots: Arc<Slots>,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLock {
    pub async fn lock(&self, key: String) -> KeyGuard {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(slots.entry(key.clone()).or_default())
        };
        let guard = slot.lock_owned().await;
        KeyGuard {
            slots: Arc::clone(&self.slots),
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget the key when nobody else holds or waits for it (the map's own
        // reference is the only one left).
        if slots
            .get(&self.key)
            .is_some_and(|slot| Arc::strong_count(slot) == 1)
        {
            slots.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_holder_per_key_and_keys_are_forgotten() {
        let locks = KeyedLock::default();
        let a = locks.lock("a".into()).await;
        let _b = locks.lock("b".into()).await; // another key does not wait
        let mut waiting = Box::pin(locks.lock("a".into()));
        assert!(
            futures::poll!(waiting.as_mut()).is_pending(),
            "a second holder of the key waits"
        );
        drop(a);
        let again = waiting.await;
        drop(again);
        drop(_b);
        assert!(locks.slots.lock().unwrap().is_empty());
    }
}
