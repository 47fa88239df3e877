//! Per-key mutual exclusion inside one process: operations on the same handle (assign,
//! release, GC's repair of it) run one at a time, so the handle index never loses an
//! entry to a race between two of them.

use std::collections::HashSet;
use std::sync::{Condvar, Mutex, PoisonError};

#[derive(Debug, Default)]
pub(crate) struct KeyedLock {
    held: Mutex<HashSet<String>>,
    released: Condvar,
}

pub(crate) struct KeyGuard<'a> {
    lock: &'a KeyedLock,
    key: String,
}

impl KeyedLock {
    pub fn lock(&self, key: String) -> KeyGuard<'_> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        while held.contains(&key) {
            held = self
                .released
                .wait(held)
                .unwrap_or_else(PoisonError::into_inner);
        }
        held.insert(key.clone());
        KeyGuard { lock: self, key }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut held = self
            .lock
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.key);
        drop(held);
        self.lock.released.notify_all();
    }
}
