//! Processes and commands: spawning detached daemons inside a node, running bounded
//! commands, and telling whether a recorded process is still the one we started.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A process we started: its pid and its start time (clock ticks after boot, field 22 of
/// /proc/PID/stat), so a recycled pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

impl ProcId {
    /// Identifies a live process by pid.
    pub fn of(pid: i32) -> Option<ProcId> {
        let (start, state) = stat(pid)?;
        (state != 'Z').then_some(ProcId { pid, start })
    }

    /// True while the same process is alive (not a zombie, same start time).
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, st)) if s == self.start && st != 'Z')
    }

    /// Sends `sig` if the process is still ours.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill(2) with a pid we verified just above; no memory is shared.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once it is gone (bounded by `grace`
    /// plus two seconds). Returns false if it outlived that.
    pub fn stop(&self, grace: Duration) -> bool {
        if !self.alive() {
            return true;
        }
        self.signal(libc::SIGCONT);
        self.signal(libc::SIGTERM);
        if wait_gone(self, grace) {
            return true;
        }
        self.signal(libc::SIGKILL);
        wait_gone(self, Duration::from_secs(2))
    }

    /// SIGKILL and wait (bounded) until gone.
    pub fn kill(&self) -> bool {
        self.signal(libc::SIGKILL);
        wait_gone(self, Duration::from_secs(3))
    }
}

fn wait_gone(p: &ProcId, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if !p.alive() {
            return true;
        }
        // A child of ours would stay a zombie until reaped; reap it if it is one.
        // SAFETY: waitpid on a pid with WNOHANG only reaps our own children.
        unsafe {
            libc::waitpid(p.pid, std::ptr::null_mut(), libc::WNOHANG);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    !p.alive()
}

/// (start time, state letter) of a process.
fn stat(pid: i32) -> Option<(u64, char)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything; fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); start time is field 22.
    let state = f.first()?.chars().next()?;
    let start = f.get(19)?.parse().ok()?;
    Some((start, state))
}

/// Our own mount namespace (`mnt:[…]`).
pub fn mount_ns(pid: &str) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// Runs a command to completion within `limit` (killed after), capturing output.
pub fn output(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let desc = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {desc}"))?;
    let mut so = child.stdout.take().context("stdout pipe")?;
    let mut se = child.stderr.take().context("stderr pipe")?;
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{desc} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Runs a command (bounded); fails with its stderr unless it exits 0. Returns stdout.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<String> {
    let desc = describe(cmd);
    let out = output(cmd, limit)?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A command line for messages: program and arguments, without environment.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        s.push(' ');
        if a.is_empty() || a.contains(char::is_whitespace) {
            s.push_str(&format!("{a:?}"));
        } else {
            s.push_str(&a);
        }
    }
    s
}

/// `ip ARGS…`, bounded, failing with ip's message.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args), Duration::from_secs(10))
}

/// A command that runs `argv` inside the node whose holder is `holder`: its network and
/// mount namespaces, working directory `/`.
pub fn in_node(holder: i32, argv: &[String]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg("-t")
        .arg(holder.to_string())
        .args(["-m", "-n", "--"])
        .args(argv)
        .current_dir("/");
    c
}

/// Starts `cmd` detached from us (own session, stdin from /dev/null, output
/// appended to `log`) and returns its identity. `nsenter`, `ip netns exec` and `unshare`
/// exec in place, so the pid is the daemon's.
pub fn spawn_detached(cmd: &mut Command, log: &Path) -> Result<ProcId> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening the log {}", log.display()))?;
    let f2 = f.try_clone()?;
    let desc = describe(cmd);
    cmd.stdin(Stdio::null()).stdout(f).stderr(f2);
    // A session of its own: no controlling terminal, so neither Ctrl-C in the shell that ran
    // `lab up` nor closing that terminal reaches the lab's daemons.
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().with_context(|| format!("starting {desc}"))?;
    let pid = child.id() as i32;
    // Not waited for: once we exit it is reparented and reaped by init. Until then a child
    // that dies early stays a zombie, which `alive()` counts as gone.
    std::mem::forget(child);
    let start = Instant::now();
    loop {
        if let Some(id) = ProcId::of(pid) {
            return Ok(id);
        }
        if start.elapsed() > Duration::from_secs(2) {
            bail!("{desc} exited at once; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

/// Pids of the processes in a network namespace.
pub fn netns_pids(name: &str) -> Vec<i32> {
    match output(
        Command::new("ip").args(["netns", "pids", name]),
        Duration::from_secs(10),
    ) {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// uid and gid of a system user, from /etc/passwd.
pub fn user_ids(user: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// True when a program is on PATH (or is an existing absolute path).
pub fn have(program: &str) -> bool {
    if program.starts_with('/') {
        return Path::new(program).exists();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_itself_and_sees_a_dead_child() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let recycled = ProcId {
            start: me.start + 1,
            ..me
        };
        assert!(!recycled.alive(), "another start time is another process");
        let mut c = Command::new("true").spawn().unwrap();
        let pid = c.id() as i32;
        c.wait().unwrap();
        assert!(ProcId::of(pid).is_none());
    }

    #[test]
    fn bounded_output() {
        let out = output(
            Command::new("sh").args(["-c", "echo hi"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
        assert!(output(Command::new("sleep").arg("5"), Duration::from_millis(100)).is_err());
        assert!(run(&mut Command::new("false"), Duration::from_secs(5)).is_err());
    }
}
