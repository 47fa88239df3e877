use super::*;
use crate::datastore::contract::{Backend, DEADLINE};
use crate::datastore::{Change as Cas, DatastoreExt, Resource, SharedDatastore};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferrovia.db");
    (dir, path)
}

fn obj(name: &str, value: serde_json::Value) -> Object {
    Object::new(name, value)
}

/// The contract suite on SQLite: every handle is its own connection to one file.
struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
    opts: Options,
}

const TEST_HISTORY: u64 = 16;

impl Sqlite {
    fn new() -> Self {
        let (dir, path) = temp_db();
        Sqlite {
            _dir: dir,
            path,
            opts: Options {
                history: TEST_HISTORY,
                poll_interval: Duration::from_millis(20),
                ..Options::default()
            },
        }
    }
}

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn handle(&self) -> SharedDatastore {
        let (path, opts) = (self.path.clone(), self.opts);
        let store = tokio::task::spawn_blocking(move || SqliteStore::open_with(path, opts))
            .await
            .expect("open task")
            .expect("open");
        Arc::new(store)
    }
    fn history_bound(&self) -> usize {
        TEST_HISTORY as usize + 1
    }
}

mod contract {
    use super::Sqlite;
    ferrovia_ipam::datastore_contract_tests!(Sqlite::new());
}

fn conn(path: &Path) -> Conn {
    Conn::open(path, Options::default()).unwrap()
}

// CRUD, CAS, versions, names, selectors and watches are checked by the contract suite
// above; what follows is SQLite's own: the file, locks, processes and the change log.

#[test]
fn revision_increases_on_every_write_and_is_seen_by_other_connections() {
    let (_dir, path) = temp_db();
    let a = conn(&path);
    let b = conn(&path);
    assert_eq!(a.revision().unwrap(), 0);

    let v = a.create("Node", &obj("a", json!(1))).unwrap();
    assert_eq!(b.revision().unwrap(), 1);
    assert_eq!(v, 1);
    let v = b.update("Node", &obj("a", json!(2)), v).unwrap();
    assert_eq!(a.revision().unwrap(), 2);
    assert_eq!(
        a.get("Node", "a").unwrap().unwrap().version,
        Version::new(v.to_string())
    );
    assert!(a.delete("Node", "a", None).unwrap());
    assert_eq!(b.revision().unwrap(), 3);

    // Failed and empty writes change nothing.
    let before = b.revision().unwrap();
    assert!(!a.delete("Node", "a", None).unwrap());
    b.create("Node", &obj("c", json!(1))).unwrap();
    assert!(b.create("Node", &obj("c", json!(1))).is_err());
    assert!(a.update("Node", &obj("c", json!(1)), 999).is_err());
    assert_eq!(a.revision().unwrap(), before + 1);
}

#[test]
fn reopening_keeps_objects_and_revision() {
    let (_dir, path) = temp_db();
    {
        let s = conn(&path);
        s.create("Node", &obj("a", json!({"k": "v"}))).unwrap();
        s.create("Node", &obj("b", json!(null))).unwrap();
    }
    let s = conn(&path);
    assert_eq!(s.revision().unwrap(), 2);
    assert_eq!(
        s.get("Node", "a").unwrap().unwrap().object.value,
        json!({"k": "v"})
    );
    assert_eq!(s.create("Node", &obj("c", json!(1))).unwrap(), 3);
}

#[test]
fn the_change_log_is_trimmed_and_reads_one_kind() {
    let (_dir, path) = temp_db();
    let s = Conn::open(
        &path,
        Options {
            history: 4,
            ..Options::default()
        },
    )
    .unwrap();
    for i in 0..3 {
        s.create("Node", &obj(&format!("n{i}"), json!(i))).unwrap();
        s.create("BgpPeer", &obj(&format!("p{i}"), json!(i)))
            .unwrap();
    }
    let raw = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = raw
        .query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 4, "the log keeps the last 4 changes");
    // Revisions 3..=6 are left: from 2 on everything is known, before it expired.
    let (changes, upto) = s.changes("Node", 2).unwrap();
    let names: Vec<_> = changes.iter().map(|c| c.item.object.name.clone()).collect();
    assert_eq!(names, ["n1", "n2"], "only the kind asked for");
    assert_eq!(upto, 6);
    assert!(s.changes("BgpPeer", 6).unwrap().0.is_empty());
    assert!(matches!(
        s.changes("Node", 1),
        Err(DatastoreError::Expired { .. })
    ));
}

#[test]
fn a_schema_1_file_is_refused_with_what_to_do() {
    let (_dir, path) = temp_db();
    drop(conn(&path));
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA user_version = 1").unwrap();
    drop(raw);
    let err = SqliteStore::open(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DatastoreError::Backend { .. }), "{msg}");
    assert!(msg.contains("too old"), "{msg}");
    assert!(msg.contains("remove the file"), "{msg}");
}

#[test]
fn file_is_in_wal_mode_and_marked_as_ours() {
    let (_dir, path) = temp_db();
    let _s = conn(&path);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let mode: String = raw
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let app: i32 = raw
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
}

#[test]
fn a_held_write_lock_times_out_with_a_clear_error_and_reads_go_on() {
    let (_dir, path) = temp_db();
    let s = Conn::open(
        &path,
        Options {
            busy_timeout: Duration::from_millis(200),
            ..Options::default()
        },
    )
    .unwrap();
    s.create("Node", &obj("a", json!(1))).unwrap();

    // Another "process" holds the write lock.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let err = s.create("Node", &obj("b", json!(1))).unwrap_err();
    assert!(matches!(err, DatastoreError::Unavailable { .. }), "{err}");
    assert!(err.is_transient());
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("locked by another process for more than 200ms"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    // WAL: readers are not blocked by the writer.
    assert_eq!(s.get("Node", "a").unwrap().unwrap().object.value, json!(1));
    assert_eq!(s.revision().unwrap(), 1);

    holder.execute_batch("ROLLBACK").unwrap();
    s.create("Node", &obj("b", json!(1))).unwrap();
}

/// Set by [`note_busy`] when SQLite found the database locked.
static WRITER_WAITED: AtomicBool = AtomicBool::new(false);

fn note_busy(_attempt: i32) -> bool {
    WRITER_WAITED.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1));
    true // keep waiting (the test bounds the wait)
}

#[test]
fn a_writer_waits_for_a_short_lock() {
    let (_dir, path) = temp_db();
    let s = conn(&path);
    s.lock().busy_handler(Some(note_busy)).unwrap();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let events = Arc::new(std::sync::Mutex::new(Vec::<&str>::new()));
    let log = Arc::clone(&events);
    let release = std::thread::spawn(move || {
        // Hold the lock until the writer has found it taken.
        let deadline = Instant::now() + DEADLINE;
        while !WRITER_WAITED.load(Ordering::SeqCst) {
            assert!(Instant::now() < deadline, "the writer never hit the lock");
            std::thread::sleep(Duration::from_millis(1));
        }
        log.lock().unwrap().push("lock released");
        holder.execute_batch("COMMIT").unwrap();
    });
    s.create("Node", &obj("a", json!(1))).unwrap();
    events.lock().unwrap().push("write done");
    release.join().unwrap();
    assert!(WRITER_WAITED.load(Ordering::SeqCst), "the writer waited");
    assert_eq!(
        *events.lock().unwrap(),
        ["lock released", "write done"],
        "the write succeeded after the lock was released, not before"
    );
    assert!(s.get("Node", "a").unwrap().is_some());
}

#[test]
fn a_file_that_is_not_sqlite_gives_a_clear_error() {
    let (dir, _) = temp_db();
    for (file, content) in [
        ("big.db", "this is not a database\n".repeat(500)),
        ("small.db", "hello".to_string()),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, &content).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(
            matches!(err, DatastoreError::Backend { .. }),
            "{file}: {err}"
        );
        let msg = err.to_string();
        eprintln!("{msg}");
        assert!(msg.contains("is not a SQLite database"), "{msg}");
        assert!(msg.contains(file), "{msg}");
        // The file is left alone.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), content);
    }
}

#[test]
fn another_programs_database_is_refused() {
    let (_dir, path) = temp_db();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("CREATE TABLE cookies (id INTEGER PRIMARY KEY)")
        .unwrap();
    drop(raw);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        err.to_string().contains("database of another program"),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = temp_db();
    drop(conn(&path));
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(raw);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, DatastoreError::Backend { .. }), "{err}");
    assert!(err.to_string().contains("schema version 99"), "{err}");
    assert!(err.to_string().contains("upgrade this agent"), "{err}");
}

#[test]
fn unopenable_paths_say_why() {
    let (dir, _) = temp_db();
    let err = SqliteStore::open(dir.path().join("no/such/dir/f.db")).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("cannot open"), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");

    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("it is a directory"), "{err}");
}

// Permission checks. The suite runs as root, for whom file permissions are not enforced,
// so as root each check runs in a child process (this test binary, filtered to one
// ignored test) that has dropped to user `nobody`.

const NOBODY: u32 = 65534;
const CHILD_DB_ENV: &str = "FERROVIA_TEST_DATASTORE_CHILD_DB";

/// Runs the ignored test `name` of this module with `path` in its environment: in a
/// child process as `nobody` when we are root, else in this process.
fn run_unprivileged(name: &str, path: &Path, check: fn(&Path)) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        check(path);
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(exe)
        .args([
            &format!("{module}::{name}"),
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(CHILD_DB_ENV, path)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the unprivileged check failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn child_db() -> Option<PathBuf> {
    std::env::var_os(CHILD_DB_ENV).map(PathBuf::from)
}

fn chown_nobody(path: &Path) {
    std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
}

fn unwritable_file_check(path: &Path) {
    assert!(
        OpenOptions::new().write(true).open(path).is_err(),
        "permissions are enforced here"
    );
    let err = SqliteStore::open(path).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("permission denied"), "{msg}");
    assert!(
        matches!(
            err,
            DatastoreError::Forbidden { .. } | DatastoreError::Backend { .. }
        ),
        "{err:?}"
    );
}

#[test]
#[ignore = "child process of an_unwritable_file_is_refused"]
fn unwritable_file_child() {
    if let Some(path) = child_db() {
        unwritable_file_check(&path);
    }
}

#[test]
fn an_unwritable_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = temp_db();
    drop(conn(&path));
    for f in [dir.path(), &path] {
        chown_nobody(f);
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    run_unprivileged("unwritable_file_child", &path, unwritable_file_check);
}

fn unwritable_dir_check(path: &Path) {
    let probe = path.with_file_name("probe");
    assert!(
        std::fs::write(&probe, "x").is_err(),
        "permissions are enforced here"
    );
    let err = SqliteStore::open(path).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("cannot create files in"), "{msg}");
}

#[test]
#[ignore = "child process of an_unwritable_directory_is_refused"]
fn unwritable_dir_child() {
    if let Some(path) = child_db() {
        unwritable_dir_check(&path);
    }
}

#[test]
fn an_unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = temp_db();
    drop(conn(&path));
    assert!(!dir.path().join("ferrovia.db-wal").exists());
    for f in [dir.path(), &path] {
        chown_nobody(f);
    }
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    run_unprivileged("unwritable_dir_child", &path, unwritable_dir_check);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A counter object for the concurrency tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    name: String,
    count: u64,
}

impl Resource for Counter {
    const KIND: &'static str = "TestCounter";
    fn name(&self) -> String {
        self.name.clone()
    }
}

fn count(c: &Conn) -> (u64, u64) {
    let item = c.get("TestCounter", "c").unwrap().expect("counter");
    (
        item.object.value["count"].as_u64().expect("count"),
        item.version.as_str().parse().expect("numeric version"),
    )
}

/// Increments the counter `n` times with a bare get + compare-and-swap loop; returns how
/// many conflicts it ran into.
fn cas_increments(store: &Conn, n: u64) -> u64 {
    let mut conflicts = 0;
    for _ in 0..n {
        loop {
            let (count, version) = count(store);
            let new = obj("c", json!({"name": "c", "count": count + 1}));
            match store.update("TestCounter", &new, version) {
                Ok(_) => break,
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    conflicts
}

fn seed_counter(path: &Path) -> Conn {
    let s = conn(path);
    s.create("TestCounter", &obj("c", json!({"name": "c", "count": 0})))
        .unwrap();
    s
}

#[test]
fn concurrent_cas_from_threads_loses_no_update() {
    const THREADS: u64 = 8;
    const EACH: u64 = 40;
    let (_dir, path) = temp_db();
    let s = seed_counter(&path);
    let start = Arc::new(std::sync::Barrier::new(THREADS as usize));
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let path = path.clone();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                let own = conn(&path);
                start.wait();
                cas_increments(&own, EACH)
            })
        })
        .collect();
    let conflicts: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    // One write for the seed, one per increment; conflicting attempts wrote nothing.
    assert_eq!(count(&s), (THREADS * EACH, 1 + THREADS * EACH));
    assert_eq!(s.revision().unwrap(), 1 + THREADS * EACH);
    eprintln!("{conflicts} conflicts retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_modify_from_connections_loses_no_update() {
    const TASKS: u64 = 6;
    const EACH: u64 = 30;
    let (_dir, path) = temp_db();
    let workers: Vec<_> = (0..TASKS)
        .map(|_| {
            let own = SqliteStore::open(&path).unwrap();
            tokio::spawn(async move {
                for _ in 0..EACH {
                    // The first writer creates it; the others find it.
                    own.modify::<Counter, _>("c", |cur| {
                        Ok(Cas::Put(Counter {
                            name: "c".into(),
                            count: cur.map_or(0, |c| c.count) + 1,
                        }))
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    let c = s.get_object::<Counter>("c").await.unwrap().unwrap();
    assert_eq!(c.value.count, TASKS * EACH);
    assert_eq!(s.sync().revision().unwrap(), TASKS * EACH);
}

const WORKER_DB_ENV: &str = "FERROVIA_TEST_DATASTORE_WORKER_DB";
const WORKER_COUNT_ENV: &str = "FERROVIA_TEST_DATASTORE_WORKER_COUNT";

/// Not a test by itself: the body of each child process of
/// `concurrent_cas_from_processes_loses_no_update`.
#[test]
#[ignore = "child process of concurrent_cas_from_processes_loses_no_update"]
fn cas_worker_process() {
    let (Ok(path), Ok(count)) = (
        std::env::var(WORKER_DB_ENV),
        std::env::var(WORKER_COUNT_ENV),
    ) else {
        return;
    };
    let store = conn(Path::new(&path));
    let conflicts = cas_increments(&store, count.parse().unwrap());
    println!("worker done, {conflicts} conflicts");
}

#[test]
fn concurrent_cas_from_processes_loses_no_update() {
    const PROCESSES: u64 = 4;
    const EACH: u64 = 50;
    let (_dir, path) = temp_db();
    let s = seed_counter(&path);
    let exe = std::env::current_exe().unwrap();
    // The test's path within the crate, without the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let worker = format!("{module}::cas_worker_process");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([worker.as_str(), "--exact", "--ignored", "--nocapture"])
                .args(["--test-threads", "1"])
                .env(WORKER_DB_ENV, &path)
                .env(WORKER_COUNT_ENV, EACH.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("worker done"),
            "worker failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(count(&s).0, PROCESSES * EACH);
    assert_eq!(s.revision().unwrap(), 1 + PROCESSES * EACH);
}

#[test]
fn processes_opening_a_new_file_at_once_all_succeed() {
    // Several stores racing to create the schema of the same new file.
    for _ in 0..5 {
        let (_dir, path) = temp_db();
        let start = Arc::new(std::sync::Barrier::new(6));
        let workers: Vec<_> = (0..6)
            .map(|i| {
                let path = path.clone();
                let start = Arc::clone(&start);
                std::thread::spawn(move || {
                    start.wait();
                    let s = conn(&path);
                    s.create("Node", &obj(&format!("n{i}"), json!(i))).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let s = conn(&path);
        assert_eq!(
            s.list("Node", &Selector::everything()).unwrap().items.len(),
            6
        );
        assert_eq!(s.revision().unwrap(), 6);
    }
}
