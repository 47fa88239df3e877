//! The state of running labs: one directory per lab under [`ROOT`], holding `state.json`
//! (what was made, written before and after each step so `down` can undo a half-done
//! `up`), the lab's copy of the `ferrovia` binary, logs, and the lab directory that
//! `__clabDir__` names (the shared datastore lives there).

use super::sys::ProcId;
use super::topology::Role;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Where every lab keeps its state (tmpfs: gone at reboot, like the namespaces).
pub const ROOT: &str = "/run/ferrovia-lab";
const LOCK: &str = "lock";
/// Host paths created for mount points, shared by every lab (see [`HostPaths`]).
const HOST_PATHS: &str = "host-paths.json";

pub fn lab_dir(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

/// One daemon of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Daemon {
    /// zebra, bgpd, bird, agent, cmd…
    pub name: String,
    pub proc: Option<ProcId>,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub role: Role,
    #[serde(default)]
    pub image: String,
    pub netns: String,
    pub holder: Option<ProcId>,
    #[serde(default)]
    pub daemons: Vec<Daemon>,
    /// The agent's control socket as seen inside the node (ferrovia nodes).
    #[serde(default)]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub node: String,
    pub name: String,
    pub netns: String,
    pub container_id: String,
    pub ifname: String,
    /// The CNI ADD result (passed back as prevResult on DEL).
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub addresses: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub lab: String,
    pub file: PathBuf,
    /// Unix seconds.
    pub created: u64,
    /// False until `up` finished.
    pub complete: bool,
    /// By node name, in creation order of the file.
    pub nodes: BTreeMap<String, NodeState>,
    /// Node names in file order.
    pub order: Vec<String>,
    #[serde(default)]
    pub pods: Vec<PodState>,
}

impl State {
    pub fn dir(&self) -> PathBuf {
        lab_dir(&self.lab)
    }

    pub fn path(lab: &str) -> PathBuf {
        lab_dir(lab).join("state.json")
    }

    pub fn bin_dir(&self) -> PathBuf {
        self.dir().join("bin")
    }

    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir().join("nodes").join(node)
    }

    /// Reads a lab's state; `None` when the lab is not up.
    pub fn read(lab: &str) -> Result<Option<State>> {
        let p = Self::path(lab);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(
                serde_json::from_slice(&b).with_context(|| format!("reading {}", p.display()))?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Writes state.json atomically (temp file + rename).
    pub fn save(&self) -> Result<()> {
        let p = Self::path(&self.lab);
        let tmp = p.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
        Ok(())
    }

    pub fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes.get(name).ok_or_else(|| {
            anyhow::anyhow!(
                "lab {} has no node {name:?} (nodes: {})",
                self.lab,
                self.order.join(", ")
            )
        })
    }

    /// The holder pid of a node, if its namespaces are alive.
    pub fn holder(&self, node: &str) -> Result<i32> {
        let n = self.node(node)?;
        match n.holder {
            Some(h) if h.alive() => Ok(h.pid),
            _ => bail!(
                "node {node} of lab {} is not running (its namespace holder is gone); run `ferrovia lab down` and `up` again",
                self.lab
            ),
        }
    }
}

/// An exclusive lock over every lab's state (`flock` on ROOT/lock), held while a command
/// changes something. Released on drop.
pub struct Lock {
    _file: File,
}

impl Lock {
    pub fn take() -> Result<Lock> {
        std::fs::create_dir_all(ROOT).with_context(|| format!("creating {ROOT}"))?;
        let path = Path::new(ROOT).join(LOCK);
        for _ in 0..10 {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            loop {
                // SAFETY: flock on a file descriptor we own.
                let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
                if r == 0 {
                    break;
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e).with_context(|| format!("locking {}", path.display()));
                }
            }
            // The last `down` removes the lock file; if that happened while we waited, our
            // lock is on a deleted file: start over with the new one.
            let same = match (std::fs::metadata(&path), file.metadata()) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if same {
                return Ok(Lock { _file: file });
            }
            std::fs::create_dir_all(ROOT).with_context(|| format!("creating {ROOT}"))?;
        }
        bail!("could not lock {}", path.display())
    }

    /// Removes ROOT when no lab is left (called by `down`, holding the lock).
    pub fn cleanup_root_if_unused(&self) {
        let others = std::fs::read_dir(ROOT)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            })
            .unwrap_or(true);
        if others {
            return;
        }
        HostPaths::remove_all();
        let _ = std::fs::remove_file(Path::new(ROOT).join(LOCK));
        let _ = std::fs::remove_dir(ROOT);
    }
}

/// Host paths the runner created as mount points (e.g. /run/ferrovia when the host has
/// none). Several labs may mount on the same one, and removing a mount point detaches the
/// mounts on it in every namespace, so they are removed only when the last lab goes down.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HostPaths {
    /// In creation order; removed in reverse.
    pub paths: Vec<PathBuf>,
}

impl HostPaths {
    fn file() -> PathBuf {
        Path::new(ROOT).join(HOST_PATHS)
    }

    fn load() -> HostPaths {
        std::fs::read(Self::file())
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records `p` (call before creating it, holding the lock).
    pub fn record(p: &Path) -> Result<()> {
        let mut h = Self::load();
        if !h.paths.iter().any(|x| x == p) {
            h.paths.push(p.to_path_buf());
        }
        std::fs::write(Self::file(), serde_json::to_vec_pretty(&h)?)
            .with_context(|| format!("writing {}", Self::file().display()))
    }

    /// Removes the recorded paths that are still empty directories or empty files.
    fn remove_all() {
        let h = Self::load();
        for p in h.paths.iter().rev() {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => {
                    if let Err(e) = std::fs::remove_dir(p) {
                        eprintln!(
                            "ferrovia lab: leaving {} (created as a mount point, now not empty: {e})",
                            p.display()
                        );
                    }
                }
                Ok(m) if m.is_file() && m.len() == 0 => {
                    let _ = std::fs::remove_file(p);
                }
                Ok(_) => eprintln!(
                    "ferrovia lab: leaving {} (created as a mount point, since changed)",
                    p.display()
                ),
                Err(_) => {}
            }
        }
        let _ = std::fs::remove_file(Self::file());
    }
}
