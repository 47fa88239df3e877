//! Errors of every datastore backend. Each message says what happened *and* what the
//! operator (or the calling code) should do about it.

use super::Version;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum DatastoreError {
    /// `update` of an object that does not exist (Kubernetes: 404 on PUT).
    #[error("{kind} {name:?} does not exist in the datastore; create it first")]
    NotFound { kind: String, name: String },

    /// `create` of an object that exists already (Kubernetes: 409 AlreadyExists).
    #[error("{kind} {name:?} already exists in the datastore; read it and update it instead")]
    AlreadyExists { kind: String, name: String },

    /// Compare-and-swap failed: someone else wrote the object since it was read
    /// (Kubernetes: 409 Conflict on resourceVersion). Re-read and retry.
    #[error(
        "{kind} {name:?} was changed by someone else (expected version {expected}, found {}); \
         re-read it and retry",
        match .actual { Some(v) => v.to_string(), None => "it deleted".to_string() }
    )]
    Conflict {
        kind: String,
        name: String,
        expected: Version,
        actual: Option<Version>,
    },

    /// A read-modify-write loop gave up after too many conflicts in a row.
    #[error(
        "{kind} {name:?} kept changing under us ({attempts} conflicting writes in a row); \
         something is rewriting it in a loop — look for a misbehaving agent or script"
    )]
    TooManyConflicts {
        kind: String,
        name: String,
        attempts: u32,
    },

    /// A stored object cannot be decoded (or an object to store cannot be encoded).
    #[error(
        "{kind} {name:?} in the datastore is not valid: {reason}; fix or delete it \
         (it may have been written by a newer ferrovia or by hand)"
    )]
    InvalidObject {
        kind: String,
        name: String,
        reason: String,
    },

    /// A value given by the caller is refused before anything is written.
    #[error("refusing to store {kind} {name:?}: {reason}")]
    InvalidValue {
        kind: String,
        name: String,
        reason: String,
    },

    /// Another process held the write lock for longer than the busy timeout.
    #[error(
        "database {} is locked by another process for more than {}; look for a stuck \
         process holding it open (`fuser -v {}`) and retry",
        .path.display(), humantime::format_duration(*.timeout), .path.display()
    )]
    Busy { path: PathBuf, timeout: Duration },

    /// The database file (or its directory) cannot be opened for reading and writing.
    #[error(
        "cannot open {}: {reason}; the agent needs read and write access to the file and \
         to its directory (for the -wal and -shm files)",
        .path.display()
    )]
    Open { path: PathBuf, reason: String },

    /// The file exists but is not a SQLite database.
    #[error(
        "{} is not a SQLite database (or is encrypted); move it away or point the \
         datastore at another path",
        .path.display()
    )]
    NotADatabase { path: PathBuf },

    /// A SQLite database that some other program owns.
    #[error(
        "{} is a SQLite database of another program, not a ferrovia datastore; point the \
         datastore at another path",
        .path.display()
    )]
    ForeignDatabase { path: PathBuf },

    /// The schema was written by a newer ferrovia.
    #[error(
        "{} has datastore schema version {found}, this ferrovia understands up to \
         {supported}; upgrade this agent",
        .path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },

    /// SQLite reports corruption.
    #[error(
        "database {} is corrupt; stop every agent, restore it from a backup or move it away \
         (the agents recreate an empty datastore)",
        .path.display()
    )]
    Corrupt { path: PathBuf },

    #[error("database {} is full or its disk is full; free some space", .path.display())]
    DiskFull { path: PathBuf },

    #[error(
        "database {} is read-only: {reason}; the agent needs write access to the file and \
         its directory",
        .path.display()
    )]
    ReadOnly { path: PathBuf, reason: String },

    /// Any other SQLite failure.
    #[error("database {}: {source}", .path.display())]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },

    /// A failure of another backend (for example the Kubernetes API server), already
    /// worded for the operator.
    #[error("{0}")]
    Backend(String),
}

impl DatastoreError {
    /// True for a compare-and-swap failure (the caller should re-read and retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self, DatastoreError::Conflict { .. })
    }
}
