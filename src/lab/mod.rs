//! `ferrovia lab`: containerlab topology files run without Docker. Each node becomes a
//! network namespace with its own mount namespace, each link a veth pair, and each node
//! runs what its image stands for (the ferrovia agent, FRR, BIRD, or just its `exec`
//! commands). Pods are made on ferrovia nodes through the real CNI plugin.
//!
//! * [`topology`]: the `.clab.yml` subset, parsed and resolved.
//! * [`runner`]: `up`, `down`, stopping and starting a node.
//! * [`pods`]: pods through `ferrovia-cni`.
//! * [`status`]: nodes, daemons and BGP sessions.
//! * [`state`]: the state directory under /run/ferrovia-lab/LAB.
//! * [`sys`]: processes and commands.

pub mod pods;
pub mod runner;
pub mod state;
pub mod status;
pub mod sys;
pub mod topology;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use state::{Lock, State};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct LabArgs {
    /// Use this lab name instead of the file's `name` (like `containerlab deploy --name`).
    #[arg(long, global = true)]
    pub name: Option<String>,
    #[command(subcommand)]
    pub cmd: LabCmd,
}

#[derive(Subcommand)]
pub enum LabCmd {
    /// Create the topology's nodes and links and start its daemons.
    Up {
        /// The topology file (*.clab.yml).
        file: PathBuf,
        /// Wait up to this many seconds for every BGP session to be Established (0: no wait).
        #[arg(long, default_value_t = 90)]
        wait: u64,
        /// Leave what was made in place when something fails (remove it with `down`).
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// Remove everything `up` made (also after a failed `up`).
    Down { file: PathBuf },
    /// Check a topology file and the configurations it binds, without starting anything.
    Check { file: PathBuf },
    /// Show nodes, daemons, BGP sessions and pods.
    Status {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a node (its network and mount namespaces), without a shell.
    Exec {
        file: PathBuf,
        node: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Stop a node's daemons (SIGTERM, or SIGKILL with --kill); its namespaces stay.
    Stop {
        file: PathBuf,
        node: String,
        #[arg(long)]
        kill: bool,
    },
    /// Start a stopped node's daemons again.
    Start { file: PathBuf, node: String },
    /// Pods on ferrovia nodes, through the CNI plugin.
    Pod {
        #[command(subcommand)]
        cmd: PodCmd,
    },
}

#[derive(Subcommand)]
pub enum PodCmd {
    /// Create a pod: a network namespace wired by `ferrovia-cni` ADD. Prints its addresses.
    Add {
        file: PathBuf,
        node: String,
        pod: String,
    },
    /// Run a command in a pod's network namespace.
    Exec {
        file: PathBuf,
        node: String,
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Delete a pod: `ferrovia-cni` DEL, then its namespace.
    Del {
        file: PathBuf,
        node: String,
        pod: String,
    },
    /// List pods and their addresses.
    List {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn main(args: LabArgs) -> ExitCode {
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferrovia lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(file: &Path, name: Option<&str>) -> Result<topology::Topology> {
    topology::load(file, name, state::lab_dir)
}

/// The lab name for commands that only need it: from the file, or --name.
fn lab_name(file: &Path, name: Option<&str>) -> Result<String> {
    match name {
        Some(n) => {
            topology::check_lab_name(n)?;
            Ok(n.to_string())
        }
        None => Ok(load(file, None)?.name),
    }
}

fn running(file: &Path, name: Option<&str>) -> Result<State> {
    let lab = lab_name(file, name)?;
    match State::read(&lab)? {
        Some(s) => Ok(s),
        None => bail!(
            "lab {lab} is not up (no {}); start it with `ferrovia lab up {}`",
            State::path(&lab).display(),
            file.display()
        ),
    }
}

/// Runs a command with inherited stdio; returns its exit code.
fn passthrough(mut c: std::process::Command) -> Result<ExitCode> {
    let desc = sys::describe(&c);
    let st = c.status().with_context(|| format!("running {desc}"))?;
    Ok(match st.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(c.clamp(1, 255) as u8),
        None => ExitCode::from(128 + 9),
    })
}

fn run(args: LabArgs) -> Result<ExitCode> {
    let name = args.name.as_deref();
    match args.cmd {
        LabCmd::Up {
            file,
            wait,
            keep_on_failure,
        } => {
            let topo = load(&file, name)?;
            for n in &topo.nodes {
                if !n.ignored.is_empty() {
                    eprintln!(
                        "ferrovia lab: node {}: ignoring {} (containerlab only)",
                        n.name,
                        n.ignored.iter().cloned().collect::<Vec<_>>().join(", ")
                    );
                }
            }
            runner::up(
                &topo,
                &runner::UpOptions {
                    wait: Duration::from_secs(wait),
                    keep_on_failure,
                },
            )?;
            let f = file.display();
            let n = name.map(|n| format!(" --name {n}")).unwrap_or_default();
            eprintln!(
                "  status:  ferrovia lab{n} status {f}\n  a node:  ferrovia lab{n} exec {f} NODE -- CMD…\n  a pod:   ferrovia lab{n} pod add {f} NODE POD\n  remove:  ferrovia lab{n} down {f}"
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down { file } => {
            // The file may be gone or broken; --name is enough then.
            let (lab, nodes) = match load(&file, name) {
                Ok(t) => (
                    t.name.clone(),
                    t.nodes.iter().map(|n| n.name.clone()).collect(),
                ),
                Err(e) => match name {
                    Some(n) => (n.to_string(), Vec::new()),
                    None => return Err(e),
                },
            };
            if runner::down(&lab, &nodes)? {
                eprintln!("ferrovia lab: {lab} removed");
            } else {
                eprintln!("ferrovia lab: {lab} is not up; nothing to remove");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Check { file } => {
            let topo = load(&file, name)?;
            for line in runner::check(&topo)? {
                println!("{line}");
            }
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Status { file, json } => {
            let st = running(&file, name)?;
            let s = status::collect(&st);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                status::print(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec {
            file,
            node,
            command,
        } => {
            let st = running(&file, name)?;
            let holder = st.holder(&node)?;
            let topo = load(&file, name).ok();
            let mut c = sys::in_node(holder, &command);
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut parts = vec![st.bin_dir()];
            parts.extend(std::env::split_paths(&path));
            if let Ok(p) = std::env::join_paths(parts) {
                c.env("PATH", p);
            }
            if let Some(n) = topo.as_ref().and_then(|t| t.node(&node)) {
                c.envs(&n.env);
            }
            passthrough(c)
        }
        LabCmd::Stop { file, node, kill } => {
            let _lock = Lock::take()?;
            let mut st = running(&file, name)?;
            st.node(&node)?;
            let stopped = runner::stop_node(&mut st, &node, kill)?;
            if stopped.is_empty() {
                eprintln!("ferrovia lab: nothing was running on {node}");
            } else {
                eprintln!(
                    "ferrovia lab: {node}: stopped {} ({})",
                    stopped.join(", "),
                    if kill { "SIGKILL" } else { "SIGTERM" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Start { file, node } => {
            let _lock = Lock::take()?;
            let mut st = running(&file, name)?;
            let topo = load(&file, name)?;
            let n = topo
                .node(&node)
                .with_context(|| format!("no node {node} in {}", file.display()))?;
            if st
                .node(&node)?
                .daemons
                .iter()
                .any(|d| d.proc.is_some_and(|p| p.alive()))
            {
                bail!("{node} is running; stop it first (`ferrovia lab stop`)");
            }
            runner::start_node(&mut st, n)?;
            eprintln!("ferrovia lab: {node} started");
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Pod { cmd } => pod(cmd, name),
    }
}

fn pod(cmd: PodCmd, name: Option<&str>) -> Result<ExitCode> {
    match cmd {
        PodCmd::Add { file, node, pod } => {
            let _lock = Lock::take()?;
            let mut st = running(&file, name)?;
            let addrs = pods::add(&mut st, &node, &pod)?;
            println!("{node}/{pod}: {}", addrs.join(" "));
            Ok(ExitCode::SUCCESS)
        }
        PodCmd::Exec {
            file,
            node,
            pod,
            command,
        } => {
            let st = running(&file, name)?;
            let ns = pods::netns_of(&st, &node, &pod)?;
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", &ns]).args(&command);
            passthrough(c)
        }
        PodCmd::Del { file, node, pod } => {
            let _lock = Lock::take()?;
            let mut st = running(&file, name)?;
            pods::del(&mut st, &node, &pod)?;
            eprintln!("ferrovia lab: pod {node}/{pod} deleted");
            Ok(ExitCode::SUCCESS)
        }
        PodCmd::List { file, json } => {
            let st = running(&file, name)?;
            if json {
                let v: Vec<_> = status::collect_pods(&st);
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for p in &st.pods {
                    println!("{}/{}: {}", p.node, p.name, p.addresses.join(" "));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
