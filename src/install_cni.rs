//! `ferrovia install-cni`: puts the CNI plugin and its network configuration on a node.
//!
//! Run by the chart's init container with the host's CNI directories mounted. The binary
//! is copied (not linked: the host cannot see the container's file system) to
//! `BIN_DIR/ferrovia-cni`, and the network configuration list is written to
//! `CONF_DIR/10-ferrovia.conflist`. Both go through a temporary file in the same
//! directory, fsync and rename, so a kubelet never executes a half-written binary nor reads
//! a half-written configuration. A file whose content is already right is not rewritten.
//! Configuration files of other network plugins are never touched; they are reported,
//! with a warning when the runtime would pick one of them before ours.

use crate::cni::plugin::PLUGIN_NAME;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The smallest and largest pod MTU the plugin accepts (cni::spec).
const MTU_RANGE: std::ops::RangeInclusive<u32> = 1280..=65535;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The host's CNI binary directory, as mounted in the container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The host's CNI network configuration directory, as mounted in the container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// File name of the network configuration list; runtimes use the first file by name.
    #[arg(long, default_value = "10-ferrovia.conflist")]
    pub conflist_name: String,
    /// The network's name in the configuration list.
    #[arg(long, default_value = "ferrovia")]
    pub network_name: String,
    /// The agent's control socket as seen on the host (its status.socket).
    #[arg(long, default_value = crate::config::DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,
    /// MTU of the pods' interfaces (1280–65535); left out of the configuration when absent.
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The binary to install (default: this one).
    #[arg(long)]
    pub source: Option<PathBuf>,
}

/// What happened to one file.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Unchanged,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Created => "created",
            Outcome::Updated => "updated",
            Outcome::Unchanged => "unchanged",
        })
    }
}

/// Installs the plugin and the configuration, printing one line per file (and per other
/// plugin's configuration found) on stdout.
pub fn run(args: &Args) -> anyhow::Result<()> {
    if let Some(mtu) = args.mtu {
        if !MTU_RANGE.contains(&mtu) {
            bail!(
                "--mtu {mtu} is out of range: the pods' MTU must be from {} to {} (usually the \
                 nodes' own MTU; leave it out to use the plugin's default)",
                MTU_RANGE.start(),
                MTU_RANGE.end()
            );
        }
    }
    if !args.agent_socket.is_absolute() {
        bail!(
            "--agent-socket {} must be an absolute path (the agent's status.socket as seen on \
             the host)",
            args.agent_socket.display()
        );
    }
    if args.conflist_name.contains('/') || !args.conflist_name.ends_with(".conflist") {
        bail!(
            "--conflist-name {:?} must be a plain file name ending in .conflist",
            args.conflist_name
        );
    }
    for (flag, dir) in [("--bin-dir", &args.bin_dir), ("--conf-dir", &args.conf_dir)] {
        if !dir.is_dir() {
            bail!(
                "{flag} {} is not a directory: mount the host's CNI directory there (the \
                 chart's cni.binDir / cni.confDir values name the host paths)",
                dir.display()
            );
        }
    }

    let conflist = render_conflist(args);
    let conflist_path = args.conf_dir.join(&args.conflist_name);
    // Never replace a configuration of the same name that belongs to another plugin.
    if let Ok(existing) = fs::read(&conflist_path) {
        if let Some(types) = foreign_plugin(&existing) {
            bail!(
                "{} belongs to another network plugin ({}); left alone. Remove it or choose \
                 another file name (the chart's cni.conflistName value)",
                conflist_path.display(),
                types
            );
        }
    }

    let source = match &args.source {
        Some(s) => s.clone(),
        None => std::env::current_exe().context("cannot find this binary to install it")?,
    };
    let binary = fs::read(&source)
        .with_context(|| format!("cannot read the binary to install, {}", source.display()))?;
    let bin_path = args.bin_dir.join(PLUGIN_NAME);
    let outcome = write_atomic(&bin_path, &binary, 0o755)?;
    println!("{}: {outcome}", bin_path.display());

    let outcome = write_atomic(&conflist_path, conflist.as_bytes(), 0o644)?;
    println!("{}: {outcome}", conflist_path.display());

    for line in other_configurations(&args.conf_dir, &args.conflist_name) {
        println!("{line}");
    }
    Ok(())
}

/// The network configuration list, as the plugin reads it (config/ferrovia.conflist).
pub fn render_conflist(args: &Args) -> String {
    let mut plugin = json!({
        "type": PLUGIN_NAME,
        "agentSocket": args.agent_socket.to_string_lossy(),
    });
    if let Some(mtu) = args.mtu {
        plugin["mtu"] = json!(mtu);
    }
    let doc = json!({
        "cniVersion": "1.1.0",
        "cniVersions": ["1.0.0", "1.1.0"],
        "name": args.network_name,
        "plugins": [plugin],
    });
    // serde_json keeps keys sorted: the same arguments give the same bytes.
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

/// When `content` is a CNI configuration with no ferrovia plugin in it: its plugin types.
fn foreign_plugin(content: &[u8]) -> Option<String> {
    let types = plugin_types(content)?;
    if types.iter().any(|t| t == PLUGIN_NAME) {
        None
    } else if types.is_empty() {
        Some("no plugin type found".into())
    } else {
        Some(format!("plugins: {}", types.join(", ")))
    }
}

/// The plugin types of a `.conflist` or `.conf` file; None when it is not JSON.
fn plugin_types(content: &[u8]) -> Option<Vec<String>> {
    let doc: Value = serde_json::from_slice(content).ok()?;
    let plugins: Vec<&Value> = match doc.get("plugins").and_then(Value::as_array) {
        Some(list) => list.iter().collect(),
        None => vec![&doc],
    };
    Some(
        plugins
            .iter()
            .filter_map(|p| p.get("type").and_then(Value::as_str))
            .map(str::to_string)
            .collect(),
    )
}

/// One line per other network configuration in `dir`, which runtimes read in file-name
/// order: the first valid one wins.
fn other_configurations(dir: &Path, ours: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n != ours && !n.starts_with('.'))
        .filter(|n| n.ends_with(".conflist") || n.ends_with(".conf") || n.ends_with(".json"))
        .collect();
    names.sort();
    names
        .into_iter()
        .filter_map(|name| {
            let content = fs::read(dir.join(&name)).ok()?;
            let what = match foreign_plugin(&content) {
                Some(types) => format!("another network plugin's configuration ({types})"),
                None if plugin_types(&content).is_some() => {
                    "another ferrovia configuration".to_string()
                }
                None => "not a CNI configuration (not JSON)".to_string(),
            };
            let order = if name.as_str() < ours {
                format!("WARNING: runtimes read it before {ours}, so pods get that network, not ferrovia's; remove it to use ferrovia")
            } else {
                format!("runtimes read {ours} first")
            };
            Some(format!(
                "{}: left alone: {what}; {order}",
                dir.join(&name).display()
            ))
        })
        .collect()
}

/// Writes `content` to `path` through a temporary file in the same directory (fsync, then
/// rename over the old file, then fsync of the directory); nothing is written when the
/// file already holds exactly `content` with `mode`.
pub fn write_atomic(path: &Path, content: &[u8], mode: u32) -> anyhow::Result<Outcome> {
    let existing = fs::symlink_metadata(path).ok();
    if let Some(meta) = &existing {
        if meta.is_file() && meta.permissions().mode() & 0o7777 == mode {
            if let Ok(old) = fs::read(path) {
                if old == content {
                    return Ok(Outcome::Unchanged);
                }
            }
        }
    }
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| {
            format!(
                "cannot write {} (through {}): check that the host directory is mounted \
                 writable",
                path.display(),
                tmp.display()
            )
        });
    }
    Ok(if existing.is_some() {
        Outcome::Updated
    } else {
        Outcome::Created
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(bin: &Path, conf: &Path) -> Args {
        Args {
            bin_dir: bin.into(),
            conf_dir: conf.into(),
            conflist_name: "10-ferrovia.conflist".into(),
            network_name: "ferrovia".into(),
            agent_socket: "/run/ferrovia/ferrovia.sock".into(),
            mtu: Some(1500),
            source: None,
        }
    }

    #[test]
    fn conflist_matches_the_example_and_the_plugin_accepts_it() {
        // The example sets no `mtu`: pods get the MTU of the node's interface.
        let mut a = args(Path::new("/b"), Path::new("/c"));
        a.mtu = None;
        let rendered: Value = serde_json::from_str(&render_conflist(&a)).unwrap();
        let example: Value =
            serde_json::from_str(include_str!("../config/ferrovia.conflist")).unwrap();
        assert_eq!(rendered, example);
    }

    #[test]
    fn conflist_without_mtu_leaves_it_out() {
        let mut a = args(Path::new("/b"), Path::new("/c"));
        a.mtu = None;
        let rendered: Value = serde_json::from_str(&render_conflist(&a)).unwrap();
        assert_eq!(rendered["plugins"][0].get("mtu"), None);
        assert_eq!(rendered["plugins"][0]["type"], "ferrovia-cni");
        // An explicit --mtu lands in the plugin's configuration.
        a.mtu = Some(9000);
        let rendered: Value = serde_json::from_str(&render_conflist(&a)).unwrap();
        assert_eq!(rendered["plugins"][0]["mtu"], 9000);
    }

    #[test]
    fn foreign_configurations_are_recognised() {
        assert_eq!(
            foreign_plugin(br#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"bridge"},{"type":"portmap"}]}"#),
            Some("plugins: bridge, portmap".into())
        );
        assert_eq!(
            foreign_plugin(br#"{"cniVersion":"0.3.1","name":"x","type":"flannel"}"#),
            Some("plugins: flannel".into())
        );
        assert_eq!(
            foreign_plugin(br#"{"name":"x","plugins":[{"type":"ferrovia-cni"}]}"#),
            None
        );
        assert_eq!(foreign_plugin(b"not json"), None);
    }

    #[test]
    fn write_atomic_creates_updates_and_skips_identical_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert_eq!(write_atomic(&p, b"one", 0o644).unwrap(), Outcome::Created);
        assert_eq!(write_atomic(&p, b"one", 0o644).unwrap(), Outcome::Unchanged);
        assert_eq!(write_atomic(&p, b"two", 0o644).unwrap(), Outcome::Updated);
        assert_eq!(fs::read(&p).unwrap(), b"two");
        // The same bytes with another mode are rewritten with the right mode.
        assert_eq!(write_atomic(&p, b"two", 0o755).unwrap(), Outcome::Updated);
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
