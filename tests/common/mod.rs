//! Integration-test harness: network namespaces, real BGP daemons (BIRD, FRR, GoBGP) and the
//! ferrovia agent, each owned by a guard that cleans up on drop, also when the test panics.
//!
//! Every test that builds a topology starts with `let lock = net_lock();` and passes `&lock` to
//! whatever creates namespaces. Declare the lock first so it is dropped last.
//!
//! Address plan (GUIDE §4), only inside namespaces:
//! - link 198.18.0.0/24: ferrovia 198.18.0.1, peer 198.18.0.254; fd00:198:18::/64 (::1, ::254)
//! - ferrovia's originated prefixes from 10.244.0.0/16 and fd00:10:244::/48
//! - peer-originated prefixes 10.244.200.0/24 and fd00:10:244:200::/64

pub mod bfd;
pub mod bird;
pub mod capture;
pub mod chart;
pub mod cluster;
pub mod ferrovia;
pub mod frr;
pub mod gobgp;
pub mod kube;
pub mod kube_checks;
pub mod netns;
pub mod proc;
pub mod scenarios;
pub mod sim;
pub mod sqlite_lock;
pub mod tcp;
pub mod wait;

pub use bird::{Bird, BirdConfig, BirdPeer};
pub use capture::Capture;
pub use ferrovia::{Ferrovia, FerroviaConfig};
pub use frr::{Frr, FrrConfig, FrrNeighbor};
pub use gobgp::{Gobgp, GobgpConfig, GobgpNeighbor};
pub use netns::{net_lock, NetLock, Netns, Pair, Routed};
pub use wait::{assert_for, wait_until};

use std::time::Duration;

pub const FERROVIA_V4: &str = "198.18.0.1";
pub const PEER_V4: &str = "198.18.0.254";
pub const FERROVIA_V6: &str = "fd00:198:18::1";
pub const PEER_V6: &str = "fd00:198:18::254";

pub const FERROVIA_AS: u32 = 64512;
pub const PEER_AS: u32 = 65000;

/// Prefixes ferrovia originates in the tests.
pub const F_V4: &str = "10.244.1.0/26";
pub const F_V6: &str = "fd00:10:244:1::/122";

/// Prefixes the peer originates in the tests.
pub const P_V4: &str = "10.244.200.0/24";
pub const P_V6: &str = "fd00:10:244:200::/64";

/// Deadlines are generous: machines differ in speed by 2x or more both ways, and a deadline
/// only bounds a wait on observed state (it never measures speed).
/// Time allowed for a session to come up between two freshly started speakers.
pub const ESTABLISH: Duration = Duration::from_secs(30);
/// Time allowed for an UPDATE / withdrawal to be reflected in a CLI.
pub const PROPAGATE: Duration = Duration::from_secs(30);
/// Time allowed for a daemon (BIRD, FRR, GoBGP, the agent) to answer on its socket after
/// being started, and for a process to exit after SIGTERM.
pub const START: Duration = Duration::from_secs(30);
pub const POLL: Duration = Duration::from_millis(200);

/// The `ferrovia` binary cargo built for this test run. The harness is a library, so
/// `env!("CARGO_BIN_EXE_ferrovia")` is not set when it compiles: the path is taken from the
/// environment when the runner sets it (cargo-nextest does), else found beside the running test
/// executable (`target/<profile>/deps/<test>-<hash>` → `target/<profile>/ferrovia`).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CARGO_BIN_EXE_ferrovia") {
            return p
                .into_string()
                .unwrap_or_else(|p| panic!("CARGO_BIN_EXE_ferrovia is not UTF-8: {p:?}"));
        }
        let exe = std::env::current_exe().expect("path of the running test executable");
        let path = exe
            .parent()
            .and_then(std::path::Path::parent)
            .map(|dir| dir.join("ferrovia"))
            .unwrap_or_else(|| panic!("{} has no grandparent directory", exe.display()));
        assert!(
            path.is_file(),
            "the ferrovia binary is not at {} (beside the test executable {}): run the tests \
             with `cargo test` from the workspace, which builds it first",
            path.display(),
            exe.display()
        );
        path.into_os_string()
            .into_string()
            .unwrap_or_else(|p| panic!("path of the ferrovia binary is not UTF-8: {p:?}"))
    })
}

/// The repository's root directory (for files such as tests/topologies or config/).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A unique, short token for names (namespaces, FRR pathspaces, ports).
pub fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    format!("{tag}-{}-{n}", std::process::id())
}

/// A TCP port for a GoBGP API that is unique among tests of this run.
pub fn unique_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    50100 + ((std::process::id() as u16 % 500) * 20 + n % 20) % 10000
}

/// Last `n` lines of a file, for failure reports.
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            let start = lines.len().saturating_sub(n);
            let mut out = String::new();
            if start > 0 {
                out.push_str(&format!("[… {start} earlier lines …]\n"));
            }
            for l in &lines[start..] {
                out.push_str(l);
                out.push('\n');
            }
            out
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs a command with a time limit (a CLI talking to a stopped daemon would block forever).
/// On expiry the command is killed and an error naming it is returned.
pub fn output_bounded(
    cmd: &mut std::process::Command,
    limit: Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {desc}: {e}"))?;
    let mut so = child.stdout.take().expect("stdout pipe");
    let mut se = child.stderr.take().expect("stderr pipe");
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
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{desc} did not finish within {limit:?}"));
            }
        }
    };
    Ok(std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

/// Time limit for one CLI call (birdc, vtysh, gobgp, ferrovia status).
pub const CLI_LIMIT: Duration = Duration::from_secs(30);

/// Originate entries in the daemon configs are `PREFIX` or `PREFIX|ASN:VAL,ASN:VAL` (with
/// communities). Returns the prefix and the communities.
pub fn split_originate(entry: &str) -> (&str, Vec<&str>) {
    match entry.split_once('|') {
        Some((p, c)) => (p, c.split(',').filter(|x| !x.is_empty()).collect()),
        None => (entry, vec![]),
    }
}
