//! The embedded backend: one SQLite file that every ferrovia process of a machine opens.
//!
//! Safe across processes: the file is in write-ahead-log mode (readers never wait for the
//! writer), every write is one `BEGIN IMMEDIATE` transaction (it takes the write lock up
//! front, so a read-then-write never fails halfway with a stale snapshot), and a busy
//! timeout makes a writer wait for the lock instead of failing at once.
//!
//! Layout: `objects(kind, name, version, value)` holds the JSON objects and
//! `meta('revision')` the store-wide revision. Every write raises the revision by one and
//! gives the written object that revision as its version (like etcd's mod_revision), so
//! versions are unique across the store and never reused after a delete.

use super::{check_key, Datastore, DatastoreError, Result, Version, Versioned};
use rusqlite::{ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a writer waits for another process's write lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA application_id` of a ferrovia datastore ("frrv").
const APPLICATION_ID: i32 = 0x6672_7276;
/// `PRAGMA user_version`: the schema version this code reads and writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
";

/// A [`Datastore`] in one SQLite file. One `SqliteStore` holds one connection; open one
/// per process (or per thread that must write in parallel — writes are serialised by
/// SQLite anyway).
pub struct SqliteStore {
    path: PathBuf,
    busy_timeout: Duration,
    conn: Mutex<rusqlite::Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("busy_timeout", &self.busy_timeout)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when absent) the datastore at `path`, waiting up to
    /// [`DEFAULT_BUSY_TIMEOUT`] for other processes' locks.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_timeout(path, DEFAULT_BUSY_TIMEOUT)
    }

    /// Opens (creating when absent) the datastore at `path`; writes wait up to
    /// `busy_timeout` for another process's write lock.
    pub fn open_with_timeout(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(DatastoreError::Open {
                path,
                reason: "it is a directory".to_string(),
            });
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = rusqlite::Connection::open_with_flags(&path, flags)
            .map_err(|e| map_error(&path, busy_timeout, e))?;
        conn.busy_timeout(busy_timeout)
            .map_err(|e| map_error(&path, busy_timeout, e))?;
        // SQLite silently falls back to read-only when the file is not writable.
        if conn
            .is_readonly(rusqlite::MAIN_DB)
            .map_err(|e| map_error(&path, busy_timeout, e))?
        {
            return Err(DatastoreError::ReadOnly {
                reason: diagnose_open(&path)
                    .unwrap_or_else(|| "SQLite opened it read-only".to_string()),
                path,
            });
        }
        let store = SqliteStore {
            path,
            busy_timeout,
            conn: Mutex::new(conn),
        };
        store.init()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock leaves no transaction open (it rolls back on
        // drop), so the connection is still good.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> DatastoreError {
        map_error(&self.path, self.busy_timeout, e)
    }

    /// Sets WAL mode and creates the schema. Several processes may do this at once on a
    /// new file; a busy lock is retried until the busy timeout.
    fn init(&self) -> Result<()> {
        let deadline = Instant::now() + self.busy_timeout;
        loop {
            match self.try_init() {
                Err(DatastoreError::Busy { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => return other,
            }
        }
    }

    fn try_init(&self) -> Result<()> {
        let mut conn = self.lock();
        // Reads page 1: a file that is not a database fails here.
        let _: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(DatastoreError::Open {
                path: self.path.clone(),
                reason: format!(
                    "SQLite cannot use write-ahead logging there (journal mode stays {mode:?}); \
                     put the datastore on a local filesystem"
                ),
            });
        }
        // NORMAL in WAL mode: a commit is never torn or corrupted; at worst the last commits
        // before a power loss are gone — when the node lost power, its pods (the holders of
        // those allocations) are gone too. FULL costs an fsync per commit on the pod-start
        // path (two per CNI ADD).
        conn.execute_batch("PRAGMA synchronous = NORMAL")
            .map_err(|e| self.err(e))?;

        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let app_id: i32 = tx
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let user_version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let tables: i64 = tx
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if app_id == 0 && tables == 0 {
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(|e| self.err(e))?;
        } else if app_id != APPLICATION_ID {
            return Err(DatastoreError::ForeignDatabase {
                path: self.path.clone(),
            });
        } else if user_version > SCHEMA_VERSION {
            return Err(DatastoreError::NewerSchema {
                path: self.path.clone(),
                found: user_version,
                supported: SCHEMA_VERSION,
            });
        }
        tx.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction, committed when `f` succeeds.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        let out = f(&tx)?; // an error drops `tx`, which rolls back
        tx.commit().map_err(|e| self.err(e))?;
        Ok(out)
    }

    fn stored_version(
        &self,
        tx: &Transaction<'_>,
        kind: &str,
        name: &str,
    ) -> Result<Option<Version>> {
        tx.query_row(
            "SELECT version FROM objects WHERE kind = ?1 AND name = ?2",
            (kind, name),
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map_err(|e| self.err(e))?
        .map(|v| self.to_u64(v))
        .transpose()
    }

    /// Raises the store-wide revision and returns it: the version of the object written.
    fn bump(&self, tx: &Transaction<'_>) -> Result<Version> {
        let rev: i64 = tx
            .query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        self.to_u64(rev)
    }

    fn to_u64(&self, v: i64) -> Result<u64> {
        u64::try_from(v).map_err(|_| DatastoreError::Corrupt {
            path: self.path.clone(),
        })
    }

    fn encode(kind: &str, name: &str, value: &serde_json::Value) -> Result<String> {
        serde_json::to_string(value).map_err(|e| DatastoreError::InvalidValue {
            kind: kind.to_string(),
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn decode(
        &self,
        kind: &str,
        name: &str,
        version: i64,
        text: &str,
    ) -> Result<Versioned<serde_json::Value>> {
        let value = serde_json::from_str(text).map_err(|e| DatastoreError::InvalidObject {
            kind: kind.to_string(),
            name: name.to_string(),
            reason: format!("not JSON: {e}"),
        })?;
        Ok(Versioned {
            value,
            version: self.to_u64(version)?,
        })
    }
}

impl Datastore for SqliteStore {
    fn get(&self, kind: &str, name: &str) -> Result<Option<Versioned<serde_json::Value>>> {
        let conn = self.lock();
        let row: Option<(i64, String)> = conn
            .query_row(
                "SELECT version, value FROM objects WHERE kind = ?1 AND name = ?2",
                (kind, name),
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(version, text)| self.decode(kind, name, version, &text))
            .transpose()
    }

    fn list(&self, kind: &str) -> Result<Vec<(String, Versioned<serde_json::Value>)>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT name, version, value FROM objects WHERE kind = ?1 ORDER BY name",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([kind], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, version, text) = row.map_err(|e| self.err(e))?;
            let v = self.decode(kind, &name, version, &text)?;
            out.push((name, v));
        }
        Ok(out)
    }

    fn create(&self, kind: &str, name: &str, value: &serde_json::Value) -> Result<Version> {
        check_key(kind, name)?;
        let text = Self::encode(kind, name, value)?;
        self.write(|tx| {
            if self.stored_version(tx, kind, name)?.is_some() {
                return Err(DatastoreError::AlreadyExists {
                    kind: kind.to_string(),
                    name: name.to_string(),
                });
            }
            let version = self.bump(tx)?;
            tx.execute(
                "INSERT INTO objects (kind, name, version, value) VALUES (?1, ?2, ?3, ?4)",
                (kind, name, version as i64, &text),
            )
            .map_err(|e| self.err(e))?;
            Ok(version)
        })
    }

    fn update(
        &self,
        kind: &str,
        name: &str,
        value: &serde_json::Value,
        expected: Version,
    ) -> Result<Version> {
        let text = Self::encode(kind, name, value)?;
        self.write(|tx| {
            match self.stored_version(tx, kind, name)? {
                None => {
                    return Err(DatastoreError::NotFound {
                        kind: kind.to_string(),
                        name: name.to_string(),
                    })
                }
                Some(actual) if actual != expected => {
                    return Err(DatastoreError::Conflict {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        expected,
                        actual: Some(actual),
                    })
                }
                Some(_) => {}
            }
            let version = self.bump(tx)?;
            tx.execute(
                "UPDATE objects SET version = ?3, value = ?4 WHERE kind = ?1 AND name = ?2",
                (kind, name, version as i64, &text),
            )
            .map_err(|e| self.err(e))?;
            Ok(version)
        })
    }

    fn delete(&self, kind: &str, name: &str, expected: Option<Version>) -> Result<bool> {
        self.write(|tx| {
            let Some(actual) = self.stored_version(tx, kind, name)? else {
                return Ok(false);
            };
            if let Some(expected) = expected {
                if actual != expected {
                    return Err(DatastoreError::Conflict {
                        kind: kind.to_string(),
                        name: name.to_string(),
                        expected,
                        actual: Some(actual),
                    });
                }
            }
            self.bump(tx)?;
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                (kind, name),
            )
            .map_err(|e| self.err(e))?;
            Ok(true)
        })
    }

    fn revision(&self) -> Result<u64> {
        let conn = self.lock();
        let rev: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        self.to_u64(rev)
    }
}

/// Turns a SQLite error into one that tells the operator what to do.
fn map_error(path: &Path, busy_timeout: Duration, e: rusqlite::Error) -> DatastoreError {
    let path_buf = path.to_path_buf();
    let (code, message) = match &e {
        rusqlite::Error::SqliteFailure(f, msg) => (f.code, msg.clone()),
        _ => {
            return DatastoreError::Sqlite {
                path: path_buf,
                source: e,
            }
        }
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DatastoreError::Busy {
            path: path_buf,
            timeout: busy_timeout,
        },
        ErrorCode::NotADatabase => DatastoreError::NotADatabase { path: path_buf },
        ErrorCode::DatabaseCorrupt => DatastoreError::Corrupt { path: path_buf },
        ErrorCode::DiskFull => DatastoreError::DiskFull { path: path_buf },
        ErrorCode::ReadOnly => DatastoreError::ReadOnly {
            reason: diagnose_open(path)
                .or(message)
                .unwrap_or_else(|| "SQLite refuses to write".to_string()),
            path: path_buf,
        },
        ErrorCode::CannotOpen | ErrorCode::PermissionDenied => DatastoreError::Open {
            reason: diagnose_open(path)
                .or(message)
                .unwrap_or_else(|| "SQLite cannot open it".to_string()),
            path: path_buf,
        },
        _ => DatastoreError::Sqlite {
            path: path_buf,
            source: e,
        },
    }
}

/// SQLite says only "unable to open database file" or "attempt to write a readonly
/// database"; find out why with plain file calls. `None`: nothing wrong found.
fn diagnose_open(path: &Path) -> Option<String> {
    fn io_reason(e: &std::io::Error) -> String {
        match e.kind() {
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        }
    }
    if path.is_dir() {
        return Some("it is a directory".to_string());
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Some(format!("directory {} does not exist", parent.display()));
    }
    if path.exists() {
        if let Err(e) = OpenOptions::new().read(true).write(true).open(path) {
            return Some(io_reason(&e));
        }
    }
    // SQLite creates the file (when absent) and its -wal and -shm files next to it.
    let mut probe = path.as_os_str().to_owned();
    probe.push(format!(".probe-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Err(e) => Some(format!(
            "cannot create files in {} ({}), and SQLite needs to create the -wal and -shm \
             files there",
            parent.display(),
            io_reason(&e)
        )),
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
    }
}

#[cfg(test)]
mod tests;
