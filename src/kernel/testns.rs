//! Network namespaces for the unit tests that touch the kernel (route table, pod wiring):
//! the cross-process topology lock and a namespace guard. Root only.

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The lock every topology test of the workspace takes (tests/common uses the same file).
const LOCK_PATH: &str = "/tmp/ferrovia-nettest.lock";

/// The cross-process topology lock: held until dropped.
pub(crate) struct NetLock {
    _file: File,
}

/// Waits for the topology lock (other test processes may hold it for minutes).
pub(crate) fn net_lock() -> NetLock {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("open {LOCK_PATH}: {e}"));
    loop {
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let err = io::Error::last_os_error();
        assert_eq!(
            err.kind(),
            io::ErrorKind::Interrupted,
            "flock {LOCK_PATH}: {err}"
        );
    }
    NetLock { _file: file }
}

/// Runs a command; panics if it cannot be started.
pub(crate) fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

/// A network namespace `fvt-<tag>-<pid>-<n>`, deleted on drop (also on panic). `fvt-` is
/// the prefix the shared harness cleans up after killed runs. Made while holding the lock.
pub(crate) struct Netns {
    pub(crate) name: String,
}

impl Netns {
    pub(crate) fn new(_lock: &NetLock, tag: &str) -> Netns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "fvt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = run("ip", &["netns", "add", &name]);
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns { name }
    }

    /// The namespace file.
    pub(crate) fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n NS ARGS...` (split on whitespace); panics unless it succeeds; stdout.
    pub(crate) fn ip(&self, args: &str) -> String {
        let argv: Vec<&str> = args.split_whitespace().collect();
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(&argv)
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip -n {} {args}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n NS ARGS...` parsed.
    pub(crate) fn ip_json(&self, args: &str) -> serde_json::Value {
        let out = self.ip(&format!("-j {args}"));
        if out.trim().is_empty() {
            return serde_json::Value::Array(Vec::new());
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j {args}: {e}: {out}"))
    }

    /// A command inside the namespace: (success, stdout + stderr).
    pub(crate) fn exec(&self, argv: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .expect("run ip netns exec");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// A sysctl file's value, read inside the namespace.
    pub(crate) fn sysctl(&self, path: &str) -> String {
        let (ok, text) = self.exec(&["cat", path]);
        assert!(ok, "cat {path} in {}: {text}", self.name);
        text.trim().to_string()
    }

    /// Interface names, sorted.
    pub(crate) fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .ip_json("link show")
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    /// `ip -o [-6] route show table all` lines, sorted (for "nothing changed").
    pub(crate) fn all_routes(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for fam in ["-4", "-6"] {
            v.extend(
                self.ip(&format!("{fam} -o route show table all"))
                    .lines()
                    .map(str::to_string),
            );
        }
        v.sort();
        v
    }

    /// Interface `name` (and its veth peer `<name>p`), both up, no addresses (the test
    /// kernel may have no `dummy`).
    pub(crate) fn link(&self, name: &str) {
        self.ip(&format!("link add {name} type veth peer name {name}p"));
        self.ip(&format!("link set {name}p up"));
        self.ip(&format!("link set {name} up"));
    }

    /// Runs `f` on a thread that has entered this namespace, on its own current-thread
    /// runtime (a netlink socket belongs to the namespace of the thread that opens it).
    pub(crate) fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = self.path();
        let thread = std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path:?}: {e}"));
            // SAFETY: setns on a namespace fd we own; affects only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path:?}: {}", io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(f())
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}
