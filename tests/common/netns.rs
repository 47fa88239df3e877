//! The cross-binary topology lock and network-namespace guards.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Every namespace (and FRR pathspace) the harness creates starts with this.
pub const PREFIX: &str = "fvt-";
const LOCK_PATH: &str = "/tmp/ferrovia-nettest.lock";

/// Holds an exclusive `flock` on /tmp/ferrovia-nettest.lock: topology tests of every test binary
/// and every thread run one at a time. Released when dropped.
pub struct NetLock {
    _file: File,
}

/// Takes the topology lock (blocking). While holding it, removes what killed earlier runs left
/// behind: `fvt-*` namespaces (and their processes) and FRR pathspace directories.
pub fn net_lock() -> NetLock {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(LOCK_PATH)
        .unwrap_or_else(|e| panic!("open {LOCK_PATH}: {e}"));
    loop {
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if r == 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            panic!("flock {LOCK_PATH}: {err}");
        }
    }
    cleanup_stale();
    NetLock { _file: file }
}

fn cleanup_stale() {
    for ns in list_netns() {
        if ns.starts_with(PREFIX) {
            eprintln!("harness: removing stale namespace {ns}");
            kill_all_in(&ns);
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
    // Tempdirs of daemons and agents of killed runs (created only under the lock).
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if [
                "fvt-bird",
                "fvt-frr",
                "fvt-gobgp",
                "fvt-ferrovia",
                "fvt-kube",
            ]
            .iter()
            .any(|p| name.starts_with(p))
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for dir in ["/var/run/frr", "/etc/frr"] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(PREFIX) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

pub fn list_netns() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn pids_in(ns: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .expect("ip netns pids");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// SIGCONT+SIGKILL every process in `ns`, then wait (bounded) until none is left.
/// Processes that are our own children are reaped by their `Proc` guard; zombies of other
/// parents no longer count as "in" the namespace once their parent reaps them, so we only wait
/// for live ones (a zombie's /proc/PID/ns/net is unreadable, `ip netns pids` skips it).
fn kill_all_in(ns: &str) {
    let start = Instant::now();
    loop {
        let pids = pids_in(ns);
        if pids.is_empty() || start.elapsed() > Duration::from_secs(30) {
            if !pids.is_empty() {
                eprintln!("harness: processes {pids:?} still in namespace {ns} after 30 s");
            }
            return;
        }
        for p in pids {
            unsafe {
                libc::kill(p, libc::SIGCONT);
                libc::kill(p, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A network namespace, deleted (after killing everything in it) on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `fvt-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(_lock: &super::NetLock, tag: &str) -> Netns {
        let name = format!("{PREFIX}{}", super::unique(tag));
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a program in the namespace, returns its output (never panics on exit code).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap_or_else(|e| panic!("run {argv:?} in {}: {e}", self.name))
    }

    /// Runs a program in the namespace; panics with its stderr unless it exits 0; returns stdout.
    pub fn run(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}):\nstdout: {}\nstderr: {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n NS args…`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("ip");
        assert!(
            out.status.success(),
            "ip -n {} {args:?}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Adds an address (`nodad` for IPv6) to `dev`.
    pub fn addr(&self, dev: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", dev, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", dev]);
        }
    }

    pub fn link_up(&self, dev: &str) {
        self.ip(&["link", "set", dev, "up"]);
    }

    /// A veth pair: `a_if` in `a`, `b_if` in `b`, both up.
    pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
        let out = Command::new("ip")
            .args([
                "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
            ])
            .args(["netns", &b.name])
            .output()
            .expect("ip link add veth");
        assert!(
            out.status.success(),
            "veth {}:{a_if} <-> {}:{b_if}: {}",
            a.name,
            b.name,
            String::from_utf8_lossy(&out.stderr)
        );
        a.link_up(a_if);
        b.link_up(b_if);
    }

    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        if let Ok(o) = out {
            if !o.status.success() {
                eprintln!(
                    "harness: ip netns del {}: {}",
                    self.name,
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
}

/// Two namespaces joined by one veth `eth0`–`eth0` link: `f` (ferrovia, or the first speaker)
/// with 198.18.0.1/24 + fd00:198:18::1/64, `p` (the peer) with .254 / ::254.
pub struct Pair {
    pub f: Netns,
    pub p: Netns,
}

impl Pair {
    pub fn new(lock: &super::NetLock, tag: &str) -> Pair {
        let f = Netns::new(lock, &format!("{tag}-f"));
        let p = Netns::new(lock, &format!("{tag}-p"));
        Netns::veth(&f, "eth0", &p, "eth0");
        f.addr("eth0", &format!("{}/24", super::FERROVIA_V4));
        f.addr("eth0", &format!("{}/64", super::FERROVIA_V6));
        p.addr("eth0", &format!("{}/24", super::PEER_V4));
        p.addr("eth0", &format!("{}/64", super::PEER_V6));
        Pair { f, p }
    }
}

/// ferrovia and its peer two hops apart: `f` (198.18.0.1/25) — router `r` (198.18.0.126/25 and
/// 198.18.0.129/25, forwarding) — `p` (198.18.0.254/25), each end routed to the other's half
/// through `r`. A packet sent with TTL 255 arrives with 254. The same in IPv6: `f`
/// fd00:198:18::1/120 — `r` fd00:198:18::fe/120 and fd00:198:18::2fe/120 — `p`
/// fd00:198:18::254/120 (hop limit 255 arrives as 254).
pub struct Routed {
    pub f: Netns,
    pub r: Netns,
    pub p: Netns,
}

impl Routed {
    pub fn new(lock: &super::NetLock, tag: &str) -> Routed {
        let f = Netns::new(lock, &format!("{tag}-f"));
        let r = Netns::new(lock, &format!("{tag}-r"));
        let p = Netns::new(lock, &format!("{tag}-p"));
        Netns::veth(&f, "eth0", &r, "eth0");
        Netns::veth(&r, "eth1", &p, "eth0");
        f.addr("eth0", &format!("{}/25", super::FERROVIA_V4));
        r.addr("eth0", "198.18.0.126/25");
        r.addr("eth1", "198.18.0.129/25");
        p.addr("eth0", &format!("{}/25", super::PEER_V4));
        f.ip(&["route", "add", "198.18.0.128/25", "via", "198.18.0.126"]);
        p.ip(&["route", "add", "198.18.0.0/25", "via", "198.18.0.129"]);
        r.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        f.addr("eth0", &format!("{}/120", super::FERROVIA_V6));
        r.addr("eth0", "fd00:198:18::fe/120");
        r.addr("eth1", "fd00:198:18::2fe/120");
        p.addr("eth0", &format!("{}/120", super::PEER_V6));
        f.ip(&[
            "-6",
            "route",
            "add",
            "fd00:198:18::200/120",
            "via",
            "fd00:198:18::fe",
        ]);
        p.ip(&[
            "-6",
            "route",
            "add",
            "fd00:198:18::/120",
            "via",
            "fd00:198:18::2fe",
        ]);
        r.run(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Routed { f, r, p }
    }
}
