//! The paths a table's prefixes point to, each held once with a plain count of the
//! prefixes that use it.
//!
//! Every prefix of one UPDATE has the same path. Holding it as an `Arc` per prefix made
//! each insert an atomic increment, and an atomic read-modify-write waits for the stores
//! before it (the previous insert's writes to cold table memory): a full table paid every
//! cache miss in turn. Here a prefix holds a 4-byte [`PathId`]; the count is an ordinary
//! integer, and the `Arc` is cloned once per path, not once per prefix.

use super::Candidate;
use std::sync::Arc;

/// A path in [`Paths`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct PathId(u32);

#[derive(Debug, Default)]
pub(super) struct Paths {
    slots: Vec<Slot>,
    /// Indices of empty slots.
    free: Vec<u32>,
    /// The slot interned last: the prefixes of one UPDATE come one after another with the
    /// same path.
    last: Option<u32>,
}

#[derive(Debug)]
struct Slot {
    path: Option<Arc<Candidate>>,
    /// Prefixes that hold this slot's id.
    users: u32,
}

impl Paths {
    /// An id for `path`, counted as one more user: the last one's when it is the same
    /// `Arc`, a new one otherwise (equal paths from different UPDATEs are not merged).
    pub(super) fn intern(&mut self, path: &Arc<Candidate>) -> PathId {
        if let Some(i) = self.last {
            if let Some(slot) = self.slots.get_mut(i as usize) {
                if slot.path.as_ref().is_some_and(|p| Arc::ptr_eq(p, path)) {
                    slot.users += 1;
                    return PathId(i);
                }
            }
        }
        let slot = Slot {
            path: Some(path.clone()),
            users: 1,
        };
        let i = match self.free.pop() {
            Some(i) => {
                if let Some(s) = self.slots.get_mut(i as usize) {
                    *s = slot;
                }
                i
            }
            None => {
                // More than 4 billion distinct paths cannot fit in memory first.
                let i = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(slot);
                i
            }
        };
        self.last = Some(i);
        PathId(i)
    }

    /// The path of `id` (None only for an id already released by all its users).
    pub(super) fn get(&self, id: PathId) -> Option<&Arc<Candidate>> {
        self.slots.get(id.0 as usize).and_then(|s| s.path.as_ref())
    }

    /// One user of `id` is gone; the path is dropped with the last.
    pub(super) fn release(&mut self, id: PathId) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        slot.users = slot.users.saturating_sub(1);
        if slot.users == 0 && slot.path.take().is_some() {
            self.free.push(id.0);
            if self.free.len() == self.slots.len() {
                // Empty: give the memory back.
                *self = Paths::default();
            }
        }
    }

    /// Paths held (distinct `Arc`s).
    #[cfg(test)]
    pub(super) fn live(&self) -> usize {
        self.slots.len() - self.free.len()
    }
}
