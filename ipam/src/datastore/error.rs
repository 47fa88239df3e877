//! The one error type of every datastore backend. Each variant says what the caller (or
//! the operator) does next; the backend's own message is kept in `detail`.

/// What a datastore operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatastoreError {
    /// The object does not exist (Kubernetes: 404).
    #[error("{kind} {name:?} does not exist in the datastore; create it first")]
    NotFound { kind: String, name: String },

    /// `create` of an object that exists already (Kubernetes: 409 AlreadyExists).
    #[error("{kind} {name:?} already exists in the datastore; read it and update it instead")]
    AlreadyExists { kind: String, name: String },

    /// Compare-and-swap failed: someone wrote or deleted the object since it was read
    /// (Kubernetes: 409 Conflict). Re-read it and retry.
    #[error("{kind} {name:?} was changed by someone else since it was read ({detail}); re-read it and retry")]
    Conflict {
        kind: String,
        name: String,
        detail: String,
    },

    /// A read-modify-write loop gave up after too many conflicts in a row.
    #[error(
        "{kind} {name:?} kept changing under us ({attempts} conflicting writes in a row); \
         something is rewriting it in a loop: retry later, and look for a misbehaving agent \
         or script"
    )]
    TooManyConflicts {
        kind: String,
        name: String,
        attempts: u32,
    },

    /// A name, kind, label, selector, version or value the backend refuses, or a stored
    /// object that cannot be decoded (Kubernetes: 422 Invalid, 400).
    #[error("{kind} {name:?} is not valid: {reason}")]
    Invalid {
        kind: String,
        name: String,
        reason: String,
    },

    /// The backend refuses access (Kubernetes: 401/403; SQLite: file permissions).
    #[error(
        "access to {kind} {name:?} was refused: {detail}; give the agent the permissions it \
         needs"
    )]
    Forbidden {
        kind: String,
        name: String,
        detail: String,
    },

    /// The backend cannot serve now (a database locked by another process, an
    /// unreachable API server, a full disk): retry later.
    #[error("the datastore is unavailable: {detail}")]
    Unavailable { detail: String },

    /// A watch was asked to resume from a version the backend no longer remembers
    /// (Kubernetes: 410 Gone): list again and watch from the list's version.
    #[error(
        "the datastore no longer remembers {kind} changes from version {version} ({detail}); \
         list them again"
    )]
    Expired {
        kind: String,
        version: String,
        detail: String,
    },

    /// The backend is broken or misconfigured in a way retrying does not fix (a file that
    /// is not a datastore, a newer schema, corruption); the detail says what to do.
    #[error("{detail}")]
    Backend { detail: String },
}

pub type Result<T, E = DatastoreError> = std::result::Result<T, E>;

impl DatastoreError {
    /// True for a compare-and-swap failure (the caller should re-read and retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self, DatastoreError::Conflict { .. })
    }

    /// True for errors a caller may retry as they are.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            DatastoreError::Unavailable { .. }
                | DatastoreError::Conflict { .. }
                | DatastoreError::TooManyConflicts { .. }
        )
    }

    pub fn invalid(kind: &str, name: &str, reason: impl Into<String>) -> Self {
        DatastoreError::Invalid {
            kind: kind.to_string(),
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        DatastoreError::NotFound {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    pub fn already_exists(kind: &str, name: &str) -> Self {
        DatastoreError::AlreadyExists {
            kind: kind.to_string(),
            name: name.to_string(),
        }
    }

    pub fn conflict(kind: &str, name: &str, detail: impl Into<String>) -> Self {
        DatastoreError::Conflict {
            kind: kind.to_string(),
            name: name.to_string(),
            detail: detail.into(),
        }
    }
}
