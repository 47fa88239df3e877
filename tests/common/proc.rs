//! A child process started inside a network namespace, with stdout+stderr in a log file.
//! Killed (SIGCONT, then SIGKILL) and reaped on drop.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    /// Runs `argv` in namespace `ns` (`ip netns exec` execs in place, so the child's pid is the
    /// program's pid). Output is appended to `log`.
    pub fn spawn(ns: &str, argv: &[&str], log: &Path, envs: &[(&str, &str)]) -> Proc {
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let f2 = f.try_clone().expect("clone log fd");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).args(argv);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {argv:?} in {ns}: {e}"));
        Proc { child: Some(child) }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            unsafe {
                libc::kill(pid, sig);
            }
        }
    }

    /// `Some(status)` if it has exited (or was never started / already reaped).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten(),
            None => None,
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Sends SIGTERM and waits up to `timeout` for the exit; SIGKILL after that.
    /// Returns the exit status, or None if it had to be killed.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stop_with(libc::SIGTERM, timeout)
    }

    /// Sends `sig` and waits up to `timeout` for the exit; SIGKILL after that.
    /// Returns the exit status, or None if it had to be killed.
    pub fn stop_with(&mut self, sig: i32, timeout: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        unsafe {
            libc::kill(c.id() as i32, libc::SIGCONT);
            libc::kill(c.id() as i32, sig);
        }
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
