//! Objects in the datastore that the agent cannot use (written by hand or by another
//! version: a pool overlapping an older one, a record that does not decode): each is
//! logged once per process — with its kind, its name and what is wrong — and left out,
//! however often the tasks that read it wake up. A new problem with the same object is
//! logged again.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

static REPORTED: OnceLock<Mutex<HashSet<(String, String, String)>>> = OnceLock::new();

/// True the first time this process reports `kind` `name` for `reason`.
pub fn first_report(kind: &str, name: &str, reason: &str) -> bool {
    REPORTED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert((kind.to_string(), name.to_string(), reason.to_string()))
}

/// Logs (warn), the first time only, that `kind` `name` is ignored because of `reason`.
pub fn warn_ignored(kind: &str, name: &str, reason: &str) {
    if first_report(kind, name, reason) {
        tracing::warn!(
            kind,
            object = name,
            reason,
            "ignoring an invalid object in the datastore; fix or delete it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_object_and_reason_is_reported_once() {
        assert!(first_report("IPPool", "invalid-test-a", "overlaps"));
        assert!(!first_report("IPPool", "invalid-test-a", "overlaps"));
        assert!(first_report("IPPool", "invalid-test-a", "another reason"));
        assert!(first_report("IPPool", "invalid-test-b", "overlaps"));
        assert!(first_report("IPAMBlock", "invalid-test-a", "overlaps"));
    }
}
