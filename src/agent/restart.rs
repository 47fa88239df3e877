//! The restart marker: a small file in the state directory that says "this agent ran on
//! this boot until this time". At start it tells a real restart (same boot, within the
//! graceful restart time, our routes still in the kernel) from a first start, so that the
//! agent advertises the graceful restart Restart State and Forwarding State bits only when
//! it really kept forwarding (RFC 4724 §3).
//!
//! The agent rewrites it every [`REFRESH`] while it runs and once more on SIGTERM, so a
//! SIGKILL or a crash counts as a restart as well when the agent comes back in time.
//! `ferrovia node drain` removes it: the next start is a first start.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::warn;

/// How often the running agent refreshes the marker.
pub const REFRESH: Duration = Duration::from_secs(5);

const FILE: &str = "restart-marker.json";
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Marker {
    boot_id: String,
    /// Seconds since the Unix epoch when the agent last ran.
    time: u64,
    node: String,
}

/// The marker file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

fn boot_id() -> Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID)
        .with_context(|| format!("reading {BOOT_ID}"))?
        .trim()
        .to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Writes the marker (atomically: a temporary file renamed over it).
pub fn write(dir: &Path, node: &str) -> Result<()> {
    let m = Marker {
        boot_id: boot_id()?,
        time: unix_now(),
        node: node.to_string(),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the state directory {} (stateDir)", dir.display()))?;
    let tmp = dir.join(format!("{FILE}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec(&m)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path(dir))
        .with_context(|| format!("renaming {} into place", tmp.display()))?;
    Ok(())
}

/// Removes the marker (after leaving on purpose).
pub fn remove(dir: &Path) {
    let p = path(dir);
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(file = %p.display(), error = %e, "removing the restart marker failed");
        }
    }
}

/// Why a start is (or is not) a graceful restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Same boot, within the restart time, routes kept: a graceful restart.
    Restart { away: Duration },
    /// Not a restart, and why.
    FirstStart(String),
}

/// Reads the marker and decides. `routes_in_kernel`: how many of our routes the kernel
/// still has; `restart_time`: the graceful restart time we advertise.
pub fn verdict(dir: &Path, node: &str, restart_time: Duration, routes_in_kernel: usize) -> Verdict {
    let p = path(dir);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Verdict::FirstStart(format!("no restart marker at {}", p.display()))
        }
        Err(e) => {
            return Verdict::FirstStart(format!("cannot read {}: {e}", p.display()));
        }
    };
    let m: Marker = match serde_json::from_slice(&text) {
        Ok(m) => m,
        Err(e) => {
            return Verdict::FirstStart(format!("{} is not a restart marker: {e}", p.display()))
        }
    };
    decide(
        &m,
        boot_id().ok().as_deref(),
        node,
        unix_now(),
        restart_time,
        routes_in_kernel,
    )
}

fn decide(
    m: &Marker,
    boot: Option<&str>,
    node: &str,
    now: u64,
    restart_time: Duration,
    routes_in_kernel: usize,
) -> Verdict {
    if boot != Some(m.boot_id.as_str()) {
        return Verdict::FirstStart("the machine booted since the agent last ran".into());
    }
    if m.node != node {
        return Verdict::FirstStart(format!("the marker is node {}'s, this is {node}", m.node));
    }
    let away = Duration::from_secs(now.saturating_sub(m.time));
    if away > restart_time {
        return Verdict::FirstStart(format!(
            "away {}s, longer than the graceful restart time {}s",
            away.as_secs(),
            restart_time.as_secs()
        ));
    }
    if routes_in_kernel == 0 {
        return Verdict::FirstStart("none of our routes is left in the kernel".into());
    }
    Verdict::Restart { away }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(time: u64) -> Marker {
        Marker {
            boot_id: "b1".into(),
            time,
            node: "n1".into(),
        }
    }

    const T: Duration = Duration::from_secs(120);

    #[test]
    fn a_restart_is_the_same_boot_the_same_node_in_time_with_routes_kept() {
        assert_eq!(
            decide(&marker(1000), Some("b1"), "n1", 1003, T, 5),
            Verdict::Restart {
                away: Duration::from_secs(3)
            }
        );
        let no = |v: Verdict| matches!(v, Verdict::FirstStart(_));
        assert!(no(decide(&marker(1000), Some("b2"), "n1", 1003, T, 5)));
        assert!(no(decide(&marker(1000), None, "n1", 1003, T, 5)));
        assert!(no(decide(&marker(1000), Some("b1"), "n2", 1003, T, 5)));
        assert!(no(decide(&marker(1000), Some("b1"), "n1", 1121, T, 5)));
        assert!(no(decide(&marker(1000), Some("b1"), "n1", 1003, T, 0)));
    }

    #[test]
    fn the_marker_round_trips_through_its_file_and_goes_on_remove() {
        let dir = std::env::temp_dir().join(format!("ferrovia-marker-{}", std::process::id()));
        write(&dir, "n1").expect("write");
        assert!(matches!(verdict(&dir, "n1", T, 1), Verdict::Restart { .. }));
        assert!(matches!(verdict(&dir, "n2", T, 1), Verdict::FirstStart(_)));
        std::fs::write(path(&dir), b"{not json").expect("write");
        assert!(matches!(verdict(&dir, "n1", T, 1), Verdict::FirstStart(_)));
        remove(&dir);
        assert!(matches!(verdict(&dir, "n1", T, 1), Verdict::FirstStart(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
