//! The embedded backend: one SQLite file that every ferrovia process of a machine opens.
//!
//! Safe across processes: the file is in write-ahead-log mode (readers never wait for the
//! writer), every write is one `BEGIN IMMEDIATE` transaction (it takes the write lock up
//! front, so a read-then-write never fails halfway with a stale snapshot), and a busy
//! timeout makes a writer wait for the lock instead of failing at once. The blocking
//! work runs on tokio's blocking pool ([`tokio::task::spawn_blocking`]).
//!
//! Layout (schema 2):
//! * `objects(kind, name, version, labels, value)`: the objects, labels and value as JSON;
//! * `changes(revision, kind, name, op, before_labels, labels, value)`: the change log the
//!   watches read, indexed by `(kind, revision)` and trimmed to the last
//!   [`DEFAULT_HISTORY`] changes;
//! * `meta('revision')`: the store-wide revision; every write raises it by one and gives
//!   the written object that revision as its version (like etcd's mod_revision), so a
//!   version is never reused. `meta('compacted')`: the highest revision trimmed from the
//!   log; a watch from before it has expired.
//!
//! Callers see versions as opaque strings (the revision in decimal).
//!
//! Watches do not read the file on timers of their own: one poller per connection reads,
//! every poll interval, the store revision and the newest change of each kind since its
//! last look (one indexed read), and a watch reads its kind's changes only when that
//! found one newer than its position. An agent's seven watches so cost one small
//! read per interval, not seven, and a write of an unwatched kind (the node leases every
//! node renews) wakes no watch into reading the file.
//!
//! A file of schema 1 (ferrovia before the datastore was shaped for Kubernetes: handle
//! names with ':') is refused with an error that says to remove it; the agents recreate
//! the file and re-register, and IPAM state is rebuilt by the next CNI ADDs and GC.

use super::{
    event_for, validate_kind, validate_object, Datastore, DatastoreError, Event, EventStream, Item,
    Labels, List, Object, Result, Selector, Version,
};
use rusqlite::{ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};
use std::collections::{HashMap, VecDeque};
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long a writer waits for another process's write lock before giving up.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Changes kept in the log for watches.
pub const DEFAULT_HISTORY: u64 = 10_000;
/// How often the connection's poller looks for new changes (one indexed read for every
/// watch of the connection).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Most changes one poll of a watch reads.
const POLL_BATCH: i64 = 1_000;

/// How often a quiet watch checks that the connection's poller still runs.
const POLLER_CHECK: Duration = Duration::from_secs(1);

/// `PRAGMA application_id` of a ferrovia datastore ("frrv").
const APPLICATION_ID: i32 = 0x6672_7276;
/// `PRAGMA user_version`: the schema version this code reads and writes.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    labels  TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (kind, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS changes (
    revision      INTEGER PRIMARY KEY NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    op            INTEGER NOT NULL,
    before_labels TEXT,
    labels        TEXT NOT NULL,
    value         TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_by_kind ON changes (kind, revision);
INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);
INSERT OR IGNORE INTO meta (key, value) VALUES ('compacted', 0);
";

/// `changes.op`.
const OP_CREATE: i64 = 0;
const OP_UPDATE: i64 = 1;
const OP_DELETE: i64 = 2;

/// Tunables of a [`SqliteStore`].
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How long a writer waits for another process's write lock.
    pub busy_timeout: Duration,
    /// Changes kept in the log (watches from before them expire).
    pub history: u64,
    /// How often the connection's poller reads the file for its watches.
    pub poll_interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            history: DEFAULT_HISTORY,
            poll_interval: DEFAULT_POLL_INTERVAL,
        }
    }
}

/// A [`Datastore`] in one SQLite file. Cloning gives another handle on the same
/// connection; open the file again for another connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    conn: Arc<Conn>,
}

/// One connection and its synchronous operations.
pub(crate) struct Conn {
    path: PathBuf,
    opts: Options,
    conn: Mutex<rusqlite::Connection>,
    /// What the poller last saw, for the watches.
    seen: watch::Sender<Seen>,
    /// The poller, started by the first watch (again when its runtime ended it).
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// What the connection's poller last read from the file.
#[derive(Debug, Clone, Default, PartialEq)]
struct Seen {
    /// The poller knows the kinds of the changes after this revision only; a watch
    /// behind it reads its changes itself. `u64::MAX` after a failed read: every watch
    /// reads the file (and meets the error).
    base: u64,
    /// The store revision at the last read.
    revision: u64,
    /// Per kind, the newest change after `base`.
    latest: HashMap<String, u64>,
}

impl Seen {
    /// Whether a watch of `kind` that has read every change up to `pos` must read the
    /// file; if not, it has read every change of its kind up to [`Seen::revision`].
    fn must_read(&self, kind: &str, pos: u64) -> bool {
        pos < self.base || self.latest.get(kind).is_some_and(|&r| r > pos)
    }
}

/// One read of the connection's poller.
struct Newest {
    /// The store revision.
    revision: u64,
    /// The poller knows nothing before `revision`: a first read, or the log was trimmed
    /// past its last one.
    fresh: bool,
    /// Per kind, the newest change after the poller's last read.
    kinds: Vec<(String, u64)>,
}

/// The connection's poller: reads the revision and the newest change per kind since its
/// last read every poll interval while a watch listens, until the connection is dropped.
async fn poll_revisions(conn: Weak<Conn>, interval: Duration) {
    let mut after: Option<u64> = None;
    loop {
        tokio::time::sleep(interval).await;
        let Some(c) = conn.upgrade() else {
            return;
        };
        if c.seen.receiver_count() == 0 {
            after = None;
            continue;
        }
        let reader = Arc::clone(&c);
        let read = tokio::task::spawn_blocking(move || reader.newest_changes(after)).await;
        match read {
            Ok(Ok(Newest {
                revision,
                fresh,
                kinds,
            })) => {
                let start = after.is_none() || fresh;
                after = Some(revision);
                c.seen.send_if_modified(|s| {
                    let before = s.clone();
                    if start {
                        *s = Seen {
                            base: revision,
                            revision,
                            latest: HashMap::new(),
                        };
                    }
                    s.revision = revision;
                    for (k, r) in kinds {
                        let e = s.latest.entry(k).or_insert(r);
                        *e = (*e).max(r);
                    }
                    *s != before
                });
            }
            _ => {
                // The watches read the file themselves and report what is wrong.
                after = None;
                c.seen.send_modify(|s| s.base = u64::MAX);
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating when absent) the datastore at `path`. Blocks: call it from
    /// `spawn_blocking` in async code.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Options::default())
    }

    pub fn open_with(path: impl AsRef<Path>, opts: Options) -> Result<Self> {
        Ok(SqliteStore {
            conn: Arc::new(Conn::open(path.as_ref(), opts)?),
        })
    }

    #[cfg(test)]
    pub(crate) fn sync(&self) -> &Conn {
        &self.conn
    }

    /// Whether the poller ended (its runtime was shut down).
    fn poller_ended(&self) -> bool {
        let poller = self.conn.poller.lock().unwrap_or_else(|e| e.into_inner());
        poller.as_ref().is_none_or(|h| h.is_finished())
    }

    /// The poller's findings, starting the poller if none runs.
    fn subscribe(&self) -> Option<watch::Receiver<Seen>> {
        let mut poller = self.conn.poller.lock().unwrap_or_else(|e| e.into_inner());
        if poller.as_ref().is_none_or(|h| h.is_finished()) {
            let rt = tokio::runtime::Handle::try_current().ok()?;
            self.conn.seen.send_replace(Seen::default());
            let conn = Arc::downgrade(&self.conn);
            *poller = Some(rt.spawn(poll_revisions(conn, self.conn.opts.poll_interval)));
        }
        Some(self.conn.seen.subscribe())
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Conn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = Arc::clone(&self.conn);
        match tokio::task::spawn_blocking(move || f(&conn)).await {
            Ok(r) => r,
            Err(e) => Err(DatastoreError::Unavailable {
                detail: format!(
                    "a datastore operation on {} failed: {e}",
                    self.conn.path.display()
                ),
            }),
        }
    }
}

fn version_of(rev: u64) -> Version {
    Version::new(rev.to_string())
}

fn parse_version(kind: &str, name: &str, v: &Version) -> Result<u64> {
    v.as_str().parse().map_err(|_| {
        DatastoreError::invalid(
            kind,
            name,
            format!("{v:?} is not a version of this SQLite datastore"),
        )
    })
}

#[async_trait::async_trait]
impl Datastore for SqliteStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>> {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.run(move |c| c.get(&kind, &name)).await
    }

    async fn list(&self, kind: &str, selector: &Selector) -> Result<List> {
        let (kind, selector) = (kind.to_string(), selector.clone());
        self.run(move |c| c.list(&kind, &selector)).await
    }

    async fn create(&self, kind: &str, object: &Object) -> Result<Version> {
        let (kind, object) = (kind.to_string(), object.clone());
        self.run(move |c| c.create(&kind, &object).map(version_of))
            .await
    }

    async fn update(&self, kind: &str, object: &Object, expected: &Version) -> Result<Version> {
        let expected = parse_version(kind, &object.name, expected)?;
        let (kind, object) = (kind.to_string(), object.clone());
        self.run(move |c| c.update(&kind, &object, expected).map(version_of))
            .await
    }

    async fn delete(&self, kind: &str, name: &str, expected: Option<&Version>) -> Result<bool> {
        let expected = expected.map(|v| parse_version(kind, name, v)).transpose()?;
        let (kind, name) = (kind.to_string(), name.to_string());
        self.run(move |c| c.delete(&kind, &name, expected)).await
    }

    async fn watch(&self, kind: &str, selector: &Selector, from: &Version) -> Result<EventStream> {
        validate_kind(kind)?;
        let pos = parse_version(kind, "", from)?;
        // Listening before the first read: whatever the poller finds after it wakes us.
        let seen = self.subscribe();
        let mut state = WatchState {
            store: self.clone(),
            kind: kind.to_string(),
            selector: selector.clone(),
            pos,
            ready: VecDeque::new(),
            first: true,
            done: false,
            seen,
        };
        // A version that is too old fails here already.
        state.poll().await?;
        Ok(Box::pin(futures::stream::unfold(state, WatchState::next)))
    }
}

struct WatchState {
    store: SqliteStore,
    kind: String,
    selector: Selector,
    /// Every change up to this revision has been read.
    pos: u64,
    ready: VecDeque<Event>,
    /// No sleep before the first poll of the stream.
    first: bool,
    /// An error ended the stream.
    done: bool,
    /// The connection's poller; `None` once it ended (its runtime went): the watch then
    /// polls on its own timer.
    seen: Option<watch::Receiver<Seen>>,
}

impl WatchState {
    /// Reads the changes of the kind after `pos` into `ready`.
    async fn poll(&mut self) -> Result<()> {
        let (kind, pos) = (self.kind.clone(), self.pos);
        let (changes, upto) = self.store.run(move |c| c.changes(&kind, pos)).await?;
        for ch in changes {
            if let Some(e) = event_for(&self.selector, ch.before.as_ref(), ch.item, ch.deleted) {
                self.ready.push_back(e);
            }
        }
        self.pos = upto;
        Ok(())
    }

    /// Waits until the poller saw a change of this kind after `pos` (or cannot tell).
    async fn wait(&mut self) {
        loop {
            let Some(rx) = self.seen.as_mut() else {
                tokio::time::sleep(self.store.conn.opts.poll_interval).await;
                self.seen = self.store.subscribe();
                return;
            };
            match tokio::time::timeout(POLLER_CHECK, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    self.seen = None;
                    continue;
                }
                // Quiet: normal. A poller whose runtime ended would leave the watch
                // waiting for ever: start another and read once.
                Err(_) if self.store.poller_ended() => {
                    self.seen = self.store.subscribe();
                    return;
                }
                Err(_) => continue,
            }
            let read_up_to = {
                let seen = rx.borrow_and_update();
                if seen.must_read(&self.kind, self.pos) {
                    return;
                }
                seen.revision
            };
            self.pos = self.pos.max(read_up_to);
        }
    }

    async fn next(mut self) -> Option<(Result<Event>, Self)> {
        if self.done {
            return None;
        }
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some((Ok(e), self));
            }
            if !self.first {
                self.wait().await;
            }
            self.first = false;
            if let Err(e) = self.poll().await {
                // An expired position stays expired; other errors end the stream too,
                // and the caller watches again from the last version it saw.
                self.done = true;
                return Some((Err(e), self));
            }
        }
    }
}

/// One change to write to the log.
struct Entry<'a> {
    kind: &'a str,
    name: &'a str,
    op: i64,
    before_labels: Option<&'a str>,
    labels: &'a str,
    value: &'a str,
}

/// One row of the change log.
pub(crate) struct Change {
    pub before: Option<Labels>,
    pub item: Item,
    pub deleted: bool,
}

impl Conn {
    fn open(path: &Path, opts: Options) -> Result<Self> {
        let path = path.to_path_buf();
        let busy_timeout = opts.busy_timeout;
        if path.is_dir() {
            return Err(open_error(&path, "it is a directory".to_string()));
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
            return Err(read_only(
                &path,
                diagnose_open(&path).unwrap_or_else(|| "SQLite opened it read-only".to_string()),
            ));
        }
        let store = Conn {
            path,
            opts,
            conn: Mutex::new(conn),
            seen: watch::Sender::new(Seen::default()),
            poller: Mutex::new(None),
        };
        store.init()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock leaves no transaction open (it rolls back on
        // drop), so the connection is still good.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> DatastoreError {
        map_error(&self.path, self.opts.busy_timeout, e)
    }

    fn corrupt(&self, what: &str) -> DatastoreError {
        DatastoreError::Backend {
            detail: format!(
                "database {} holds {what}; stop every agent, restore it from a backup or move it \
                 away (the agents recreate an empty datastore)",
                self.path.display()
            ),
        }
    }

    /// Sets WAL mode and creates the schema. Several processes may do this at once on a
    /// new file; a busy lock is retried until the busy timeout.
    fn init(&self) -> Result<()> {
        let deadline = Instant::now() + self.opts.busy_timeout;
        loop {
            match self.try_init() {
                Err(DatastoreError::Unavailable { .. }) if Instant::now() < deadline => {
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
            return Err(open_error(
                &self.path,
                format!(
                    "SQLite cannot use write-ahead logging there (journal mode stays {mode:?}); \
                     put the datastore on a local filesystem"
                ),
            ));
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
        let path = self.path.display();
        if app_id == 0 && tables == 0 {
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(|e| self.err(e))?;
        } else if app_id != APPLICATION_ID {
            return Err(DatastoreError::Backend {
                detail: format!(
                    "{path} is a SQLite database of another program, not a ferrovia datastore; \
                     point the datastore at another path"
                ),
            });
        } else if user_version > SCHEMA_VERSION {
            return Err(DatastoreError::Backend {
                detail: format!(
                    "{path} has datastore schema version {user_version}, this ferrovia \
                     understands up to {SCHEMA_VERSION}; upgrade this agent"
                ),
            });
        } else if user_version < SCHEMA_VERSION {
            return Err(DatastoreError::Backend {
                detail: format!(
                    "{path} has datastore schema version {user_version}, too old for this \
                     ferrovia (schema {SCHEMA_VERSION}: Kubernetes-valid names, labels, change \
                     log); stop the agents of this machine, remove the file (and its -wal and \
                     -shm files) and start them again: they recreate it and register again"
                ),
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

    /// The stored version and labels of an object.
    fn stored(
        &self,
        tx: &Transaction<'_>,
        kind: &str,
        name: &str,
    ) -> Result<Option<(u64, String, String)>> {
        let row: Option<(i64, String, String)> = tx
            .query_row(
                "SELECT version, labels, value FROM objects WHERE kind = ?1 AND name = ?2",
                (kind, name),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(v, l, val)| Ok((self.to_u64(v)?, l, val)))
            .transpose()
    }

    /// Raises the store-wide revision, logs the change, trims the log and returns the
    /// revision: the version of the object written.
    fn log(&self, tx: &Transaction<'_>, e: &Entry<'_>) -> Result<u64> {
        let rev: i64 = tx
            .query_row(
                "UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO changes (revision, kind, name, op, before_labels, labels, value) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            (
                rev,
                e.kind,
                e.name,
                e.op,
                e.before_labels,
                e.labels,
                e.value,
            ),
        )
        .map_err(|e| self.err(e))?;
        let history = i64::try_from(self.opts.history.max(1)).unwrap_or(i64::MAX);
        let trim_to = rev - history;
        if trim_to > 0 {
            tx.execute("DELETE FROM changes WHERE revision <= ?1", [trim_to])
                .map_err(|e| self.err(e))?;
            tx.execute(
                "UPDATE meta SET value = max(value, ?1) WHERE key = 'compacted'",
                [trim_to],
            )
            .map_err(|e| self.err(e))?;
        }
        self.to_u64(rev)
    }

    fn to_u64(&self, v: i64) -> Result<u64> {
        u64::try_from(v).map_err(|_| self.corrupt("a negative revision"))
    }

    fn encode(kind: &str, object: &Object) -> Result<(String, String)> {
        let bad = |e: serde_json::Error| DatastoreError::invalid(kind, &object.name, e.to_string());
        Ok((
            serde_json::to_string(&object.labels).map_err(bad)?,
            serde_json::to_string(&object.value).map_err(bad)?,
        ))
    }

    fn decode(
        &self,
        kind: &str,
        name: &str,
        version: i64,
        labels: &str,
        value: &str,
    ) -> Result<Item> {
        let bad = |what: &str, e: serde_json::Error| {
            DatastoreError::invalid(
                kind,
                name,
                format!("its stored {what} are not valid JSON ({e}); fix or delete it"),
            )
        };
        Ok(Item {
            object: Object {
                name: name.to_string(),
                labels: serde_json::from_str(labels).map_err(|e| bad("labels", e))?,
                value: serde_json::from_str(value).map_err(|e| bad("value", e))?,
            },
            version: version_of(self.to_u64(version)?),
        })
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Result<Option<Item>> {
        let conn = self.lock();
        let row: Option<(i64, String, String)> = conn
            .query_row(
                "SELECT version, labels, value FROM objects WHERE kind = ?1 AND name = ?2",
                (kind, name),
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        row.map(|(version, labels, value)| self.decode(kind, name, version, &labels, &value))
            .transpose()
    }

    pub(crate) fn list(&self, kind: &str, selector: &Selector) -> Result<List> {
        let mut conn = self.lock();
        // One read transaction: the list and its version are one snapshot.
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let rev: i64 = tx
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        let mut items = Vec::new();
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT name, version, labels, value FROM objects WHERE kind = ?1 ORDER BY name",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([kind], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (name, version, labels, value) = row.map_err(|e| self.err(e))?;
                let item = self.decode(kind, &name, version, &labels, &value)?;
                if selector.matches(&item.object.labels) {
                    items.push(item);
                }
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(List {
            items,
            version: version_of(self.to_u64(rev)?),
        })
    }

    /// The store revision and the oldest revision the change log still reaches, read in `tx`.
    fn revision_and_compacted(&self, tx: &rusqlite::Transaction<'_>) -> Result<(u64, u64)> {
        let (rev, compacted): (i64, i64) = tx
            .query_row(
                "SELECT (SELECT value FROM meta WHERE key = 'revision'), \
                        (SELECT value FROM meta WHERE key = 'compacted')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok((self.to_u64(rev)?, self.to_u64(compacted)?))
    }

    /// The store revision and per kind the newest change after `after`.
    fn newest_changes(&self, after: Option<u64>) -> Result<Newest> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let (rev, compacted) = self.revision_and_compacted(&tx)?;
        let Some(after) = after.filter(|a| *a >= compacted && *a <= rev) else {
            return Ok(Newest {
                revision: rev,
                fresh: true,
                kinds: Vec::new(),
            });
        };
        let mut kinds = Vec::new();
        if after < rev {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT kind, MAX(revision) FROM changes WHERE revision > ?1 GROUP BY kind",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([i64::try_from(after).unwrap_or(i64::MAX)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (kind, r) = row.map_err(|e| self.err(e))?;
                kinds.push((kind, self.to_u64(r)?));
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(Newest {
            revision: rev,
            fresh: false,
            kinds,
        })
    }

    /// The logged changes of `kind` after revision `pos`, and the revision they bring the
    /// reader to. [`DatastoreError::Expired`] when the log no longer reaches back to `pos`.
    pub(crate) fn changes(&self, kind: &str, pos: u64) -> Result<(Vec<Change>, u64)> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let (rev, compacted) = self.revision_and_compacted(&tx)?;
        if pos < compacted {
            return Err(DatastoreError::Expired {
                kind: kind.to_string(),
                version: pos.to_string(),
                detail: format!(
                    "{} keeps the last {} changes, up from revision {}",
                    self.path.display(),
                    self.opts.history,
                    compacted + 1
                ),
            });
        }
        let pos_i = i64::try_from(pos).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        let mut last = None;
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT revision, name, op, before_labels, labels, value FROM changes \
                     WHERE kind = ?1 AND revision > ?2 ORDER BY revision LIMIT ?3",
                )
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map((kind, pos_i, POLL_BATCH), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                    ))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (revision, name, op, before, labels, value) = row.map_err(|e| self.err(e))?;
                let item = self.decode(kind, &name, revision, &labels, &value)?;
                let before: Option<Labels> =
                    before
                        .map(|b| serde_json::from_str(&b))
                        .transpose()
                        .map_err(|_| self.corrupt("a change log entry that is not JSON"))?;
                last = Some(self.to_u64(revision)?);
                out.push(Change {
                    before,
                    item,
                    deleted: op == OP_DELETE,
                });
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        // A full batch: continue from its last change; else everything up to `rev` is read.
        let upto = match last {
            Some(l) if out.len() as i64 == POLL_BATCH => l,
            _ => rev.max(pos),
        };
        Ok((out, upto))
    }

    pub(crate) fn create(&self, kind: &str, object: &Object) -> Result<u64> {
        validate_object(kind, object)?;
        let (labels, value) = Self::encode(kind, object)?;
        let name = object.name.as_str();
        self.write(|tx| {
            if self.stored(tx, kind, name)?.is_some() {
                return Err(DatastoreError::already_exists(kind, name));
            }
            let version = self.log(
                tx,
                &Entry {
                    kind,
                    name,
                    op: OP_CREATE,
                    before_labels: None,
                    labels: &labels,
                    value: &value,
                },
            )?;
            tx.execute(
                "INSERT INTO objects (kind, name, version, labels, value) VALUES (?1, ?2, ?3, ?4, ?5)",
                (kind, name, version as i64, &labels, &value),
            )
            .map_err(|e| self.err(e))?;
            Ok(version)
        })
    }

    pub(crate) fn update(&self, kind: &str, object: &Object, expected: u64) -> Result<u64> {
        validate_object(kind, object)?;
        let (labels, value) = Self::encode(kind, object)?;
        let name = object.name.as_str();
        self.write(|tx| {
            let before = match self.stored(tx, kind, name)? {
                None => return Err(DatastoreError::not_found(kind, name)),
                Some((actual, _, _)) if actual != expected => {
                    return Err(DatastoreError::conflict(
                        kind,
                        name,
                        format!("expected version {expected}, found {actual}"),
                    ))
                }
                Some((_, before, _)) => before,
            };
            let version = self.log(
                tx,
                &Entry {
                    kind,
                    name,
                    op: OP_UPDATE,
                    before_labels: Some(&before),
                    labels: &labels,
                    value: &value,
                },
            )?;
            tx.execute(
                "UPDATE objects SET version = ?3, labels = ?4, value = ?5 WHERE kind = ?1 AND name = ?2",
                (kind, name, version as i64, &labels, &value),
            )
            .map_err(|e| self.err(e))?;
            Ok(version)
        })
    }

    pub(crate) fn delete(&self, kind: &str, name: &str, expected: Option<u64>) -> Result<bool> {
        self.write(|tx| {
            let Some((actual, labels, value)) = self.stored(tx, kind, name)? else {
                return Ok(false);
            };
            if let Some(expected) = expected {
                if actual != expected {
                    return Err(DatastoreError::conflict(
                        kind,
                        name,
                        format!("expected version {expected}, found {actual}"),
                    ));
                }
            }
            self.log(
                tx,
                &Entry {
                    kind,
                    name,
                    op: OP_DELETE,
                    before_labels: Some(&labels),
                    labels: &labels,
                    value: &value,
                },
            )?;
            tx.execute(
                "DELETE FROM objects WHERE kind = ?1 AND name = ?2",
                (kind, name),
            )
            .map_err(|e| self.err(e))?;
            Ok(true)
        })
    }

    /// The store-wide revision (for tests).
    #[cfg(test)]
    pub(crate) fn revision(&self) -> Result<u64> {
        let conn = self.lock();
        let rev: i64 = conn
            .query_row("SELECT value FROM meta WHERE key = 'revision'", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        self.to_u64(rev)
    }
}

fn open_error(path: &Path, reason: String) -> DatastoreError {
    DatastoreError::Backend {
        detail: format!(
            "cannot open {}: {reason}; the agent needs read and write access to the file and \
             to its directory (for the -wal and -shm files)",
            path.display()
        ),
    }
}

fn read_only(path: &Path, reason: String) -> DatastoreError {
    DatastoreError::Forbidden {
        kind: "datastore file".to_string(),
        name: path.display().to_string(),
        detail: format!(
            "it is read-only: {reason}; the agent needs write access to the file and its directory"
        ),
    }
}

/// Turns a SQLite error into one that tells the operator what to do.
fn map_error(path: &Path, busy_timeout: Duration, e: rusqlite::Error) -> DatastoreError {
    let shown = path.display();
    let (code, message) = match &e {
        rusqlite::Error::SqliteFailure(f, msg) => (f.code, msg.clone()),
        _ => {
            return DatastoreError::Backend {
                detail: format!("database {shown}: {e}"),
            }
        }
    };
    match code {
        ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => DatastoreError::Unavailable {
            detail: format!(
                "database {shown} is locked by another process for more than {}; look for a \
                 stuck process holding it open (`fuser -v {shown}`) and retry",
                humantime::format_duration(busy_timeout)
            ),
        },
        ErrorCode::NotADatabase => DatastoreError::Backend {
            detail: format!(
                "{shown} is not a SQLite database (or is encrypted); move it away or point the \
                 datastore at another path"
            ),
        },
        ErrorCode::DatabaseCorrupt => DatastoreError::Backend {
            detail: format!(
                "database {shown} is corrupt; stop every agent, restore it from a backup or move \
                 it away (the agents recreate an empty datastore)"
            ),
        },
        ErrorCode::DiskFull => DatastoreError::Unavailable {
            detail: format!("database {shown} is full or its disk is full; free some space"),
        },
        ErrorCode::ReadOnly => read_only(
            path,
            diagnose_open(path)
                .or(message)
                .unwrap_or_else(|| "SQLite refuses to write".to_string()),
        ),
        ErrorCode::PermissionDenied => DatastoreError::Forbidden {
            kind: "datastore file".to_string(),
            name: shown.to_string(),
            detail: diagnose_open(path)
                .or(message)
                .unwrap_or_else(|| "permission denied".to_string()),
        },
        ErrorCode::CannotOpen => open_error(
            path,
            diagnose_open(path)
                .or(message)
                .unwrap_or_else(|| "SQLite cannot open it".to_string()),
        ),
        _ => DatastoreError::Backend {
            detail: format!("database {shown}: {e}"),
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
