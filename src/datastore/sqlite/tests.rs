use super::*;
use crate::datastore::typed::{Change, DatastoreExt, Resource};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferrovia.db");
    (dir, path)
}

#[test]
fn create_get_list_update_delete() {
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get("Node", "a").unwrap(), None);
    let v1 = s.create("Node", "b", &json!({"x": 1})).unwrap();
    let v2 = s.create("Node", "a", &json!({"x": 2})).unwrap();
    s.create("BgpPeer", "a", &json!({"y": 3})).unwrap();
    assert!(v2 > v1);
    assert_eq!(
        s.get("Node", "b").unwrap(),
        Some(Versioned {
            value: json!({"x": 1}),
            version: v1
        })
    );
    let names: Vec<_> = s
        .list("Node")
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert!(s.list("Nothing").unwrap().is_empty());

    let v3 = s.update("Node", "b", &json!({"x": 10}), v1).unwrap();
    assert!(v3 > v2);
    assert_eq!(s.get("Node", "b").unwrap().unwrap().value, json!({"x": 10}));
    assert!(s.delete("Node", "b", Some(v3)).unwrap());
    assert!(!s.delete("Node", "b", None).unwrap());
    assert_eq!(s.get("Node", "b").unwrap(), None);
    assert_eq!(
        s.get("BgpPeer", "a").unwrap().unwrap().value,
        json!({"y": 3})
    );
}

#[test]
fn cas_detects_conflicts() {
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    let v1 = s.create("Node", "a", &json!(1)).unwrap();
    let err = s.create("Node", "a", &json!(2)).unwrap_err();
    assert!(matches!(err, DatastoreError::AlreadyExists { .. }), "{err}");

    let v2 = s.update("Node", "a", &json!(2), v1).unwrap();
    // A writer still holding v1 loses.
    let err = s.update("Node", "a", &json!(3), v1).unwrap_err();
    match &err {
        DatastoreError::Conflict {
            expected, actual, ..
        } => {
            assert_eq!(*expected, v1);
            assert_eq!(*actual, Some(v2));
        }
        other => panic!("expected a conflict, got {other}"),
    }
    assert!(err.is_conflict());
    assert!(err.to_string().contains("re-read it and retry"), "{err}");
    assert_eq!(s.get("Node", "a").unwrap().unwrap().value, json!(2));

    let err = s.delete("Node", "a", Some(v1)).unwrap_err();
    assert!(err.is_conflict(), "{err}");
    assert!(s.get("Node", "a").unwrap().is_some());

    let err = s.update("Node", "missing", &json!(1), 1).unwrap_err();
    assert!(matches!(err, DatastoreError::NotFound { .. }), "{err}");
}

#[test]
fn versions_are_never_reused() {
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    let v1 = s.create("Node", "a", &json!(1)).unwrap();
    assert!(s.delete("Node", "a", Some(v1)).unwrap());
    let v2 = s.create("Node", "a", &json!(1)).unwrap();
    assert!(v2 > v1);
    // A CAS based on the old incarnation must fail (no ABA).
    assert!(s
        .update("Node", "a", &json!(2), v1)
        .unwrap_err()
        .is_conflict());
}

#[test]
fn bad_keys_are_refused() {
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    for (kind, name) in [("", "a"), ("Node", ""), ("Node", "a\nb")] {
        let err = s.create(kind, name, &json!(1)).unwrap_err();
        assert!(matches!(err, DatastoreError::InvalidValue { .. }), "{err}");
    }
    let long = "x".repeat(254);
    assert!(s.create("Node", &long, &json!(1)).is_err());
    assert!(s.create("Node", &long[..253], &json!(1)).is_ok());
}

#[test]
fn revision_increases_on_every_write_and_is_seen_by_other_connections() {
    let (_dir, path) = temp_db();
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    assert_eq!(a.revision().unwrap(), 0);

    let v = a.create("Node", "a", &json!(1)).unwrap();
    assert_eq!(b.revision().unwrap(), 1);
    assert_eq!(v, 1);
    let v = b.update("Node", "a", &json!(2), v).unwrap();
    assert_eq!(a.revision().unwrap(), 2);
    assert_eq!(a.get("Node", "a").unwrap().unwrap().version, v);
    assert!(a.delete("Node", "a", None).unwrap());
    assert_eq!(b.revision().unwrap(), 3);

    // Failed and empty writes change nothing.
    let before = b.revision().unwrap();
    assert!(!a.delete("Node", "a", None).unwrap());
    b.create("Node", "c", &json!(1)).unwrap();
    assert!(b.create("Node", "c", &json!(1)).is_err());
    assert!(a.update("Node", "c", &json!(1), 999).is_err());
    assert_eq!(a.revision().unwrap(), before + 1);
}

#[test]
fn reopening_keeps_objects_and_revision() {
    let (_dir, path) = temp_db();
    {
        let s = SqliteStore::open(&path).unwrap();
        s.create("Node", "a", &json!({"k": "v"})).unwrap();
        s.create("Node", "b", &json!(null)).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.revision().unwrap(), 2);
    assert_eq!(
        s.get("Node", "a").unwrap().unwrap().value,
        json!({"k": "v"})
    );
    assert_eq!(s.create("Node", "c", &json!(1)).unwrap(), 3);
}

#[test]
fn file_is_in_wal_mode_and_marked_as_ours() {
    let (_dir, path) = temp_db();
    let _s = SqliteStore::open(&path).unwrap();
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
    let s = SqliteStore::open_with_timeout(&path, Duration::from_millis(200)).unwrap();
    s.create("Node", "a", &json!(1)).unwrap();

    // Another "process" holds the write lock.
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let started = Instant::now();
    let err = s.create("Node", "b", &json!(1)).unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, DatastoreError::Busy { .. }), "{err}");
    assert!(
        waited >= Duration::from_millis(150),
        "gave up after {waited:?}"
    );
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("locked by another process for more than 200ms"),
        "{msg}"
    );
    assert!(msg.contains(&path.display().to_string()), "{msg}");

    // WAL: readers are not blocked by the writer.
    assert_eq!(s.get("Node", "a").unwrap().unwrap().value, json!(1));
    assert_eq!(s.revision().unwrap(), 1);

    holder.execute_batch("ROLLBACK").unwrap();
    s.create("Node", "b", &json!(1)).unwrap();
}

#[test]
fn a_writer_waits_for_a_short_lock() {
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    let holder = rusqlite::Connection::open(&path).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        holder.execute_batch("COMMIT").unwrap();
    });
    s.create("Node", "a", &json!(1)).unwrap();
    release.join().unwrap();
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
            matches!(err, DatastoreError::NotADatabase { .. }),
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
        matches!(err, DatastoreError::ForeignDatabase { .. }),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let (_dir, path) = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(raw);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(
        matches!(err, DatastoreError::NewerSchema { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upgrade this agent"), "{err}");
}

#[test]
fn unopenable_paths_say_why() {
    let (dir, _) = temp_db();
    let err = SqliteStore::open(dir.path().join("no/such/dir/f.db")).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(matches!(err, DatastoreError::Open { .. }), "{msg}");
    assert!(msg.contains("does not exist"), "{msg}");

    let err = SqliteStore::open(dir.path()).unwrap_err();
    assert!(err.to_string().contains("it is a directory"), "{err}");
}

#[test]
fn an_unwritable_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (_dir, path) = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    if OpenOptions::new().write(true).open(&path).is_ok() {
        eprintln!("skipped: running as root, permissions are not enforced");
        return;
    }
    let err = SqliteStore::open(&path).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("permission denied"), "{msg}");
}

/// A counter object for the concurrency tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Counter {
    name: String,
    count: u64,
}

impl Resource for Counter {
    const KIND: &'static str = "TestCounter";
    fn name(&self) -> &str {
        &self.name
    }
}

/// Increments the counter `n` times with a bare get + compare-and-swap loop; returns how
/// many conflicts it ran into.
fn cas_increments(store: &SqliteStore, n: u64) -> u64 {
    let mut conflicts = 0;
    for _ in 0..n {
        loop {
            let cur = store.get("TestCounter", "c").unwrap().expect("counter");
            let count = cur.value["count"].as_u64().expect("count");
            let new = json!({"name": "c", "count": count + 1});
            match store.update("TestCounter", "c", &new, cur.version) {
                Ok(_) => break,
                Err(e) if e.is_conflict() => conflicts += 1,
                Err(e) => panic!("{e}"),
            }
        }
    }
    conflicts
}

fn seed_counter(path: &Path) -> SqliteStore {
    let s = SqliteStore::open(path).unwrap();
    s.create_object(&Counter {
        name: "c".into(),
        count: 0,
    })
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
                let own = SqliteStore::open(&path).unwrap();
                start.wait();
                cas_increments(&own, EACH)
            })
        })
        .collect();
    let conflicts: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let c = s.get_object::<Counter>("c").unwrap().unwrap();
    assert_eq!(c.value.count, THREADS * EACH);
    // One write for the seed, one per increment; conflicting attempts wrote nothing.
    assert_eq!(s.revision().unwrap(), 1 + THREADS * EACH);
    assert_eq!(c.version, 1 + THREADS * EACH);
    eprintln!("{conflicts} conflicts retried");
}

#[test]
fn concurrent_modify_from_threads_loses_no_update() {
    const THREADS: u64 = 6;
    const EACH: u64 = 30;
    let (_dir, path) = temp_db();
    let s = SqliteStore::open(&path).unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let own = SqliteStore::open(&path).unwrap();
                for _ in 0..EACH {
                    // The first writer creates it; the others find it.
                    own.modify::<Counter, _>("c", |cur| {
                        Ok(Change::Put(Counter {
                            name: "c".into(),
                            count: cur.map_or(0, |c| c.count) + 1,
                        }))
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let c = s.get_object::<Counter>("c").unwrap().unwrap();
    assert_eq!(c.value.count, THREADS * EACH);
    assert_eq!(s.revision().unwrap(), THREADS * EACH);
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
    let store = SqliteStore::open(path).unwrap();
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
    let c = s.get_object::<Counter>("c").unwrap().unwrap();
    assert_eq!(c.value.count, PROCESSES * EACH);
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
                    let s = SqliteStore::open(&path).unwrap();
                    s.create("Node", &format!("n{i}"), &json!(i)).unwrap();
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.list("Node").unwrap().len(), 6);
        assert_eq!(s.revision().unwrap(), 6);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_notices_a_write_by_another_connection_quickly() {
    let (_dir, path) = temp_db();
    let watched = Arc::new(SqliteStore::open(&path).unwrap());
    let mut rx = crate::datastore::watch(Arc::clone(&watched), Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), 0);

    let writer = SqliteStore::open(&path).unwrap();
    let started = Instant::now();
    tokio::task::spawn_blocking(move || writer.create("Node", "a", &json!(1)).unwrap())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), rx.changed())
        .await
        .expect("no change noticed within 1 s")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), 1);
    assert!(started.elapsed() < Duration::from_millis(500));

    // A trait object works as well.
    let dynamic: Arc<dyn Datastore> = watched;
    let rx2 = crate::datastore::watch(dynamic, Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(*rx2.borrow(), 1);
}

#[test]
fn an_unwritable_directory_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = temp_db();
    drop(SqliteStore::open(&path).unwrap());
    assert!(!dir.path().join("ferrovia.db-wal").exists());
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
    let probe = dir.path().join("probe");
    if std::fs::write(&probe, "x").is_ok() {
        eprintln!("skipped: running as root, permissions are not enforced");
        let _ = std::fs::remove_file(&probe);
        return;
    }
    let err = SqliteStore::open(&path).unwrap_err();
    let msg = err.to_string();
    eprintln!("{msg}");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(msg.contains("cannot create files in"), "{msg}");
}
