//! Holding a SQLite datastore's write lock from another process (what a stuck writer, or
//! a backup tool, does to the agents): `BEGIN IMMEDIATE` in a Python child that keeps the
//! transaction open until the guard is dropped. Readers still read (WAL); writers wait.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

pub struct SqliteWriteLock {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl SqliteWriteLock {
    /// Returns once the lock is held.
    pub fn hold(db: &Path) -> SqliteWriteLock {
        let script = "import sqlite3, sys\n\
                      c = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)\n\
                      c.execute('BEGIN IMMEDIATE')\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n\
                      c.execute('ROLLBACK')\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 holding the SQLite lock");
        let stdin = child.stdin.take();
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "locked", "the SQLite write lock was not taken");
        SqliteWriteLock { child, stdin }
    }
}

impl Drop for SqliteWriteLock {
    fn drop(&mut self) {
        if let Some(mut s) = self.stdin.take() {
            let _ = s.flush();
        }
        // stdin closed: the child rolls back and exits.
        let _ = self.child.wait();
    }
}
