//! `lab up` and `lab down`, and stopping / starting one node's daemons.
//!
//! A node is a network namespace `<lab>-<node>` plus a mount namespace held open by a
//! `sleep` process (the *holder*) started in it with `unshare --mount --propagation slave`:
//! mounts made inside stay inside, and network namespaces created later under /run/netns
//! (pods) are visible in it. Daemons and `exec` commands run with `nsenter -t HOLDER -m -n`.
//!
//! `up` steps, each recorded in state.json before it is taken:
//! 1. namespaces (+ `sysctls`), 2. veth links, 3. holders, 4. private tmpfs for the role
//!    (/run/ferrovia, /etc/frr, /run/bird, …) and the `binds`, 5. daemons, each waited for,
//! 6. `exec` commands, node by node in file order (as containerlab runs them: after the
//!    node's own process started), 7. optionally, wait for every BGP session.

use super::state::{lab_dir, Daemon, HostPaths, Lock, NodeState, State};
use super::status;
use super::sys::{self, ProcId};
use super::topology::{self, Node, Role, Topology};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How long a daemon may take to answer after it was started.
const READY: Duration = Duration::from_secs(20);
/// How long one `exec` command may run.
const EXEC_LIMIT: Duration = Duration::from_secs(60);
const FRR_DIR: &str = "/usr/lib/frr";
/// FRR daemons a `daemons` file may turn on (zebra always runs).
const FRR_DAEMONS: &[&str] = &[
    "bgpd", "ospfd", "ospf6d", "ripd", "ripngd", "isisd", "pimd", "ldpd", "nhrpd", "eigrpd",
    "babeld", "sharpd", "pbrd", "bfdd", "fabricd", "vrrpd", "pathd", "staticd",
];

pub struct UpOptions {
    /// Wait this long for every BGP session to be Established; zero: do not wait.
    pub wait: Duration,
    /// Leave what was made in place when `up` fails (for inspection).
    pub keep_on_failure: bool,
}

pub fn netns_name(lab: &str, node: &str) -> String {
    format!("{lab}-{node}")
}

/// `ferrovia lab up`.
pub fn up(topo: &Topology, opts: &UpOptions) -> Result<()> {
    let started = Instant::now();
    preflight(topo)?;
    let lock = Lock::take()?;
    let dir = lab_dir(&topo.name);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let since = State::read(&topo.name)
                .ok()
                .flatten()
                .map(|s| format!(" (up since {})", status::ago(s.created)))
                .unwrap_or_default();
            bail!(
                "lab {} is already up{since}; its state is in {}. Run `ferrovia lab down {}` first",
                topo.name,
                dir.display(),
                topo.file.display()
            );
        }
        Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
    }
    let mut st = State {
        lab: topo.name.clone(),
        file: topo.file.clone(),
        created: super::now(),
        complete: false,
        nodes: BTreeMap::new(),
        order: topo.nodes.iter().map(|n| n.name.clone()).collect(),
        pods: Vec::new(),
    };
    st.save()?;
    let r = build(topo, &mut st);
    if let Err(e) = r {
        if opts.keep_on_failure {
            eprintln!(
                "ferrovia lab: up failed; everything made so far is left in place (--keep-on-failure). Remove it with `ferrovia lab down {}`",
                topo.file.display()
            );
        } else {
            eprintln!("ferrovia lab: up failed; removing what was made");
            teardown(&st, &lock);
        }
        return Err(e);
    }
    st.complete = true;
    st.save()?;
    drop(lock);
    eprintln!(
        "ferrovia lab: {} is up ({} nodes, {} links) in {:.1} s",
        topo.name,
        topo.nodes.len(),
        topo.links.len(),
        started.elapsed().as_secs_f64()
    );
    if !opts.wait.is_zero() {
        let t = Instant::now();
        status::wait_established(&st, opts.wait)?;
        eprintln!(
            "ferrovia lab: every BGP session is Established ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `ferrovia lab check`: bind sources exist and the bound configurations are valid
/// (agent configurations always; FRR and BIRD ones when those are installed). Returns a
/// line per node.
pub fn check(topo: &Topology) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for n in &topo.nodes {
        for b in &n.binds {
            if !b.in_lab_dir && !b.source.exists() {
                bail!(
                    "node {}: bind source {} does not exist",
                    n.name,
                    b.source.display()
                );
            }
        }
        let tool = |argv: &[&str], src: &Path, what: &str| -> Result<String> {
            if !sys::have(argv[0]) {
                return Ok(format!("{what} not checked ({} is not installed)", argv[0]));
            }
            let out = sys::output(
                Command::new(argv[0]).args(&argv[1..]).arg(src),
                Duration::from_secs(20),
            )?;
            if !out.status.success() {
                bail!(
                    "node {}: {} is not a valid {what}:\n{}{}",
                    n.name,
                    src.display(),
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(format!("{what} {} valid", src.display()))
        };
        let note = match n.role {
            Role::Ferrovia => {
                let b = n
                    .bind_to(topology::AGENT_CONFIG)
                    .context("agent configuration")?;
                crate::config::load(&b.source)
                    .map_err(|e| anyhow::anyhow!("node {}: {e}", n.name))?;
                format!("agent configuration {} valid", b.source.display())
            }
            Role::Frr => {
                let b = n
                    .bind_to(topology::FRR_CONFIG)
                    .context("FRR configuration")?;
                tool(&["vtysh", "-C", "-f"], &b.source, "FRR configuration")?
            }
            Role::Bird => {
                let b = n
                    .bind_to(topology::BIRD_CONFIG)
                    .context("BIRD configuration")?;
                tool(&["bird", "-p", "-c"], &b.source, "BIRD configuration")?
            }
            Role::Linux => format!("{} exec commands", n.exec.len()),
        };
        out.push(format!("{:<10} {:<9} {note}", n.name, n.role.name()));
    }
    Ok(out)
}

/// Checks everything that can be checked before anything is made.
fn preflight(topo: &Topology) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab needs root (it creates network namespaces and mounts)");
    }
    for p in ["ip", "nsenter", "unshare", "mount", "sleep"] {
        if !sys::have(p) {
            bail!("{p} is not installed (Debian: iproute2, util-linux, mount, coreutils)");
        }
    }
    for n in &topo.nodes {
        for b in &n.binds {
            if !b.in_lab_dir && !b.source.exists() {
                bail!(
                    "node {}: bind source {} does not exist",
                    n.name,
                    b.source.display()
                );
            }
        }
        match n.role {
            Role::Frr => {
                for p in [format!("{FRR_DIR}/zebra"), "/usr/bin/vtysh".into()] {
                    if !Path::new(&p).exists() {
                        bail!(
                            "node {} runs FRR but {p} is missing: apt-get install frr",
                            n.name
                        );
                    }
                }
                if sys::user_ids("frr").is_none() {
                    bail!(
                        "node {} runs FRR but there is no user frr: apt-get install frr",
                        n.name
                    );
                }
            }
            Role::Bird => {
                if !sys::have("bird") || !sys::have("birdc") {
                    bail!(
                        "node {} runs BIRD but bird/birdc are missing: apt-get install bird2",
                        n.name
                    );
                }
            }
            Role::Ferrovia | Role::Linux => {}
        }
        let ns = netns_name(&topo.name, &n.name);
        if sys::netns_exists(&ns) && !lab_dir(&topo.name).exists() {
            bail!(
                "network namespace {ns} already exists and belongs to no running lab; remove it (`ip netns del {ns}`) if it is a leftover"
            );
        }
    }
    Ok(())
}

/// Steps 1–6 of `up`; state is saved as it goes.
fn build(topo: &Topology, st: &mut State) -> Result<()> {
    std::fs::create_dir_all(st.bin_dir())?;
    install_binary(&st.bin_dir())?;
    for n in &topo.nodes {
        std::fs::create_dir_all(st.node_dir(&n.name))?;
    }

    // 1. namespaces
    for n in &topo.nodes {
        let ns = netns_name(&topo.name, &n.name);
        st.nodes.insert(
            n.name.clone(),
            NodeState {
                role: n.role,
                image: n.image.clone(),
                netns: ns.clone(),
                holder: None,
                daemons: Vec::new(),
                socket: None,
            },
        );
        st.save()?;
        sys::ip(&["netns", "add", &ns])?;
        sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        for (k, v) in &n.sysctls {
            sys::run(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns,
                    "sysctl",
                    "-qw",
                    &format!("{k}={v}"),
                ]),
                Duration::from_secs(10),
            )
            .with_context(|| format!("node {}: sysctls", n.name))?;
        }
    }

    // 2. links
    for l in &topo.links {
        let (na, nb) = (
            netns_name(&topo.name, &l.a.node),
            netns_name(&topo.name, &l.b.node),
        );
        let what = format!(
            "link {}:{} – {}:{}",
            l.a.node, l.a.iface, l.b.node, l.b.iface
        );
        sys::ip(&[
            "link", "add", &l.a.iface, "netns", &na, "type", "veth", "peer", "name", &l.b.iface,
            "netns", &nb,
        ])
        .with_context(|| what.clone())?;
        for (ns, e) in [(&na, &l.a), (&nb, &l.b)] {
            if let Some(mtu) = l.mtu {
                sys::ip(&["-n", ns, "link", "set", &e.iface, "mtu", &mtu.to_string()])
                    .with_context(|| what.clone())?;
            }
            for a in &e.addresses {
                let mut args = vec!["-n", ns, "addr", "add", a, "dev", &e.iface];
                if a.contains(':') {
                    args.push("nodad");
                }
                sys::ip(&args).with_context(|| what.clone())?;
            }
            sys::ip(&["-n", ns, "link", "set", &e.iface, "up"]).with_context(|| what.clone())?;
        }
    }

    // 3. holders
    let own_mnt = sys::mount_ns("self");
    for n in &topo.nodes {
        let ns = netns_name(&topo.name, &n.name);
        let log = st.node_dir(&n.name).join("holder.log");
        let holder = sys::spawn_detached(
            Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "--mount",
                "--propagation",
                "slave",
                "--",
                "sleep",
                "infinity",
            ]),
            &log,
        )?;
        st.nodes.get_mut(&n.name).expect("inserted").holder = Some(holder);
        st.save()?;
        // Wait until it is `sleep` in a mount namespace of its own.
        let t = Instant::now();
        loop {
            let comm =
                std::fs::read_to_string(format!("/proc/{}/comm", holder.pid)).unwrap_or_default();
            let mnt = sys::mount_ns(&holder.pid.to_string());
            if comm.trim() == "sleep" && mnt.is_some() && mnt != own_mnt {
                break;
            }
            if !holder.alive() || t.elapsed() > Duration::from_secs(5) {
                bail!(
                    "node {}: the namespace holder did not start: {}",
                    n.name,
                    sys::tail(&log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // 4. mounts
    for n in &topo.nodes {
        let holder = st.holder(&n.name)?;
        mounts(n, holder).with_context(|| format!("node {}: mounts", n.name))?;
        if n.role == Role::Ferrovia {
            st.nodes.get_mut(&n.name).expect("inserted").socket = Some(agent_socket(n)?);
            st.save()?;
        }
    }

    // 5. daemons
    for n in &topo.nodes {
        start_node(st, n)?;
    }

    // 6. exec
    for n in &topo.nodes {
        let holder = st.holder(&n.name)?;
        for argv in &n.exec {
            let mut c = sys::in_node(holder, argv);
            node_env(&mut c, n, &st.bin_dir());
            let out = sys::output(&mut c, EXEC_LIMIT)
                .with_context(|| format!("node {}: exec {}", n.name, argv.join(" ")))?;
            if !out.status.success() {
                bail!(
                    "node {}: exec `{}` failed ({}): {}{}",
                    n.name,
                    argv.join(" "),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    String::from_utf8_lossy(&out.stdout).trim()
                );
            }
        }
    }
    Ok(())
}

/// Copies the running binary into the lab (`ferrovia`, and `ferrovia-cni` linked to it),
/// so agents, CLI and CNI plugin stay one build even if the checkout is rebuilt.
fn install_binary(bin: &Path) -> Result<()> {
    let me = std::env::current_exe().context("finding the ferrovia binary")?;
    let dst = bin.join("ferrovia");
    std::fs::copy(&me, &dst)
        .with_context(|| format!("copying {} to {}", me.display(), dst.display()))?;
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::symlink("ferrovia", bin.join(crate::cni::plugin::PLUGIN_NAME))
        .context("linking ferrovia-cni")?;
    Ok(())
}

/// The environment of a node's daemons and commands: ours, the node's `env`, and the lab's
/// binaries first on PATH.
fn node_env(c: &mut Command, n: &Node, bin: &Path) {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let mut parts = vec![bin.to_path_buf()];
    parts.extend(std::env::split_paths(&path));
    if let Ok(p) = std::env::join_paths(parts) {
        c.env("PATH", p);
    }
    for (k, v) in &n.env {
        c.env(k, v);
    }
}

/// Private tmpfs directories of each role: sockets, pid files and configs of one node's
/// daemons never meet another node's.
fn private_dirs(role: Role) -> Result<Vec<(&'static str, u32, u32)>> {
    Ok(match role {
        Role::Ferrovia => vec![("/run/ferrovia", 0, 0), ("/etc/ferrovia", 0, 0)],
        Role::Frr => {
            let (u, g) = sys::user_ids("frr").context("no user frr: apt-get install frr")?;
            vec![("/etc/frr", u, g), ("/run/frr", u, g)]
        }
        Role::Bird => vec![("/etc/bird", 0, 0), ("/run/bird", 0, 0)],
        Role::Linux => vec![],
    })
}

/// Makes sure `path` exists as seen inside the node (`/proc/HOLDER/root/...`); missing
/// parts outside the node's private tmpfs are host paths and are recorded first.
fn ensure_path(holder: i32, path: &Path, dir: bool, private: &[&str]) -> Result<()> {
    let view = |p: &Path| {
        PathBuf::from(format!("/proc/{holder}/root")).join(p.strip_prefix("/").unwrap_or(p))
    };
    if view(path).exists() {
        return Ok(());
    }
    if !private.iter().any(|d| path.starts_with(d)) {
        // Every missing component, outermost first: `down` removes them innermost first
        // (when the last lab goes).
        let mut missing = vec![path.to_path_buf()];
        while let Some(parent) = missing.last().and_then(|p| p.parent()) {
            if view(parent).exists() {
                break;
            }
            missing.push(parent.to_path_buf());
        }
        for p in missing.iter().rev() {
            HostPaths::record(p)?;
        }
    }
    if dir {
        std::fs::create_dir_all(view(path))
    } else {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(view(p))?;
        }
        std::fs::File::create(view(path)).map(|_| ())
    }
    .with_context(|| format!("creating the mount point {}", path.display()))
}

fn mount_in(holder: i32, args: &[&str]) -> Result<()> {
    let argv: Vec<String> = std::iter::once("mount".to_string())
        .chain(args.iter().map(|s| s.to_string()))
        .collect();
    let mut c = Command::new("nsenter");
    c.arg("-t")
        .arg(holder.to_string())
        .args(["-m", "--"])
        .args(&argv);
    sys::run(&mut c, Duration::from_secs(10))?;
    Ok(())
}

fn mounts(n: &Node, holder: i32) -> Result<()> {
    let private = private_dirs(n.role)?;
    let names: Vec<&str> = private.iter().map(|(d, _, _)| *d).collect();
    for (d, uid, gid) in &private {
        ensure_path(holder, Path::new(d), true, &[])?;
        mount_in(
            holder,
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("mode=0755,uid={uid},gid={gid},size=64m"),
                "tmpfs",
                d,
            ],
        )?;
    }
    let root = PathBuf::from(format!("/proc/{holder}/root"));
    if n.role == Role::Frr && n.bind_to("/etc/frr/vtysh.conf").is_none() {
        // vtysh complains on every call without one.
        let p = root.join("etc/frr/vtysh.conf");
        std::fs::write(&p, "service integrated-vtysh-config\n")?;
        if let Some((u, g)) = sys::user_ids("frr") {
            std::os::unix::fs::chown(&p, Some(u), Some(g))?;
        }
    }
    let mut binds = n.binds.clone();
    binds.sort_by_key(|b| b.target.components().count());
    for b in &binds {
        if b.in_lab_dir && !b.source.exists() {
            std::fs::create_dir_all(&b.source)
                .with_context(|| format!("creating {}", b.source.display()))?;
        }
        let is_dir = b.source.is_dir();
        ensure_path(holder, &b.target, is_dir, &names)?;
        let (src, dst) = (b.source.to_string_lossy(), b.target.to_string_lossy());
        mount_in(holder, &["--bind", &src, &dst]).with_context(|| format!("bind {src}:{dst}"))?;
        if b.read_only {
            mount_in(holder, &["-o", "remount,bind,ro", &dst])?;
        }
    }
    Ok(())
}

/// The control socket of a ferrovia node's agent (its config's `status.socket`).
fn agent_socket(n: &Node) -> Result<PathBuf> {
    let b = n
        .bind_to(topology::AGENT_CONFIG)
        .context("no agent configuration bound")?;
    let text = std::fs::read_to_string(&b.source)
        .with_context(|| format!("reading {}", b.source.display()))?;
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("parsing {}", b.source.display()))?;
    Ok(v.get("status")
        .and_then(|s| s.get("socket"))
        .and_then(|s| s.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(crate::config::DEFAULT_SOCKET)))
}

/// A path inside a node, as the host reaches it.
pub fn node_path(holder: i32, p: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{holder}/root")).join(p.strip_prefix("/").unwrap_or(p))
}

/// Starts a node's daemons (step 5) and waits for each to answer.
pub fn start_node(st: &mut State, n: &Node) -> Result<()> {
    let holder = st.holder(&n.name)?;
    let bin = st.bin_dir();
    let dir = st.node_dir(&n.name);
    let check = |argv: &[&str], what: &str| -> Result<()> {
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let mut c = sys::in_node(holder, &argv);
        node_env(&mut c, n, &bin);
        let out = sys::output(&mut c, Duration::from_secs(20))?;
        if !out.status.success() {
            bail!(
                "node {}: {what} is not valid:\n{}{}",
                n.name,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    };
    match n.role {
        Role::Ferrovia => {
            let exe = bin.join("ferrovia").to_string_lossy().into_owned();
            check(
                &[&exe, "check-config", topology::AGENT_CONFIG],
                "the agent configuration",
            )?;
            let socket = st
                .node(&n.name)?
                .socket
                .clone()
                .unwrap_or_else(|| crate::config::DEFAULT_SOCKET.into());
            let log = dir.join("agent.log");
            let mut c = sys::in_node(
                holder,
                &[
                    exe,
                    "agent".into(),
                    "--config".into(),
                    topology::AGENT_CONFIG.into(),
                ],
            );
            node_env(&mut c, n, &bin);
            if !n.env.contains_key("FERROVIA_LOG") {
                c.env("FERROVIA_LOG", "info");
            }
            c.env("NO_COLOR", "1");
            let p = launch(st, &n.name, "agent", &mut c, &log)?;
            let sock = node_path(holder, &socket);
            wait_ready(&n.name, "agent", p, &log, || {
                crate::control::call::<crate::control::StatusReply>(
                    &sock,
                    &crate::control::Request::Status,
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            })?;
        }
        Role::Frr => {
            check(
                &["vtysh", "-C", "-f", topology::FRR_CONFIG],
                "the FRR configuration",
            )?;
            let daemons = frr_daemons(n)?;
            for d in std::iter::once("zebra".to_string()).chain(daemons) {
                let log = dir.join(format!("{d}.log"));
                let mut c = sys::in_node(
                    holder,
                    &[
                        format!("{FRR_DIR}/{d}"),
                        "-f".into(),
                        topology::FRR_CONFIG.into(),
                        "-P".into(),
                        "0".into(),
                        "-i".into(),
                        format!("/run/frr/{d}.pid"),
                    ],
                );
                node_env(&mut c, n, &bin);
                let p = launch(st, &n.name, &d, &mut c, &log)?;
                let ready = if d == "zebra" {
                    node_path(holder, Path::new("/run/frr/zserv.api"))
                } else {
                    node_path(holder, Path::new(&format!("/run/frr/{d}.vty")))
                };
                wait_ready(&n.name, &d, p, &log, || {
                    if ready.exists() {
                        Ok(())
                    } else {
                        Err(format!("no {} yet", ready.display()))
                    }
                })?;
            }
        }
        Role::Bird => {
            check(
                &["bird", "-p", "-c", topology::BIRD_CONFIG],
                "the BIRD configuration",
            )?;
            let log = dir.join("bird.log");
            let mut c = sys::in_node(
                holder,
                &[
                    "bird".into(),
                    "-f".into(),
                    "-c".into(),
                    topology::BIRD_CONFIG.into(),
                    "-s".into(),
                    "/run/bird/bird.ctl".into(),
                    "-P".into(),
                    "/run/bird/bird.pid".into(),
                ],
            );
            node_env(&mut c, n, &bin);
            let p = launch(st, &n.name, "bird", &mut c, &log)?;
            wait_ready(&n.name, "bird", p, &log, || {
                let out = sys::output(
                    &mut sys::in_node(
                        holder,
                        &[
                            "birdc".into(),
                            "-s".into(),
                            "/run/bird/bird.ctl".into(),
                            "show".into(),
                            "status".into(),
                        ],
                    ),
                    Duration::from_secs(5),
                )
                .map_err(|e| e.to_string())?;
                let s = String::from_utf8_lossy(&out.stdout);
                if s.contains("Daemon is up") {
                    Ok(())
                } else {
                    Err(s.into_owned())
                }
            })?;
        }
        Role::Linux => {
            if let Some(cmd) = &n.cmd {
                let log = dir.join("cmd.log");
                let mut c = sys::in_node(holder, cmd);
                node_env(&mut c, n, &bin);
                let p = launch(st, &n.name, "cmd", &mut c, &log)?;
                std::thread::sleep(Duration::from_millis(200));
                if !p.alive() {
                    bail!(
                        "node {}: cmd `{}` exited at once:\n{}",
                        n.name,
                        cmd.join(" "),
                        sys::tail(&log, 20)
                    );
                }
            }
        }
    }
    Ok(())
}

/// Starts a daemon and records it (the record is replaced when it is started again).
fn launch(st: &mut State, node: &str, name: &str, c: &mut Command, log: &Path) -> Result<ProcId> {
    let p = sys::spawn_detached(c, log).with_context(|| format!("node {node}: starting {name}"))?;
    let ns = st.nodes.get_mut(node).context("node state")?;
    ns.daemons.retain(|d| d.name != name);
    ns.daemons.push(Daemon {
        name: name.to_string(),
        proc: Some(p),
        log: log.to_path_buf(),
    });
    st.save()?;
    Ok(p)
}

fn wait_ready(
    node: &str,
    what: &str,
    p: ProcId,
    log: &Path,
    mut ready: impl FnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let t = Instant::now();
    loop {
        if !p.alive() {
            bail!(
                "node {node}: {what} exited at start; last lines of {}:\n{}",
                log.display(),
                sys::tail(log, 30)
            );
        }
        match ready() {
            Ok(()) => return Ok(()),
            Err(e) if t.elapsed() > READY => bail!(
                "node {node}: {what} did not answer within {READY:?} ({e}); last lines of {}:\n{}",
                log.display(),
                sys::tail(log, 30)
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The FRR daemons to run besides zebra: those set to `yes` in a bound /etc/frr/daemons
/// file (else bgpd), and staticd, which FRR's init script always starts too.
fn frr_daemons(n: &Node) -> Result<Vec<String>> {
    let mut out: Vec<String> = match n.bind_to(topology::FRR_DAEMONS) {
        None => vec!["bgpd".into()],
        Some(b) => {
            let text = std::fs::read_to_string(&b.source)
                .with_context(|| format!("reading {}", b.source.display()))?;
            text.lines()
                .filter_map(|l| {
                    let (k, v) = l.trim().split_once('=')?;
                    (FRR_DAEMONS.contains(&k) && v.trim().trim_matches('"') == "yes")
                        .then(|| k.to_string())
                })
                .collect()
        }
    };
    if !out.iter().any(|d| d == "staticd") {
        out.push("staticd".into());
    }
    Ok(out)
}

/// `ferrovia lab stop NODE`: stops a node's daemons (SIGTERM; SIGKILL with `kill`).
pub fn stop_node(st: &mut State, node: &str, kill: bool) -> Result<Vec<String>> {
    let ns = st.nodes.get_mut(node).context("no such node")?;
    let mut stopped = Vec::new();
    for d in ns.daemons.iter_mut().rev() {
        if let Some(p) = d.proc.take() {
            if p.alive() {
                if kill {
                    p.kill();
                } else {
                    p.stop(Duration::from_secs(10));
                }
                stopped.push(d.name.clone());
            }
        }
    }
    st.save()?;
    Ok(stopped)
}

/// `ferrovia lab down`: removes everything recorded in the state (also of a failed `up`).
pub fn down(lab: &str, file_nodes: &[String]) -> Result<bool> {
    let lock = Lock::take()?;
    let dir = lab_dir(lab);
    if !dir.exists() {
        lock.cleanup_root_if_unused();
        return Ok(false);
    }
    let st = match State::read(lab) {
        Ok(Some(s)) => s,
        // state.json is written right after the directory: without it, nothing was made but
        // maybe namespaces named after the file's nodes.
        _ => State {
            lab: lab.to_string(),
            file: PathBuf::new(),
            created: 0,
            complete: false,
            nodes: file_nodes
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        NodeState {
                            role: Role::Linux,
                            image: String::new(),
                            netns: netns_name(lab, n),
                            holder: None,
                            daemons: Vec::new(),
                            socket: None,
                        },
                    )
                })
                .collect(),
            order: file_nodes.to_vec(),
            pods: Vec::new(),
        },
    };
    teardown(&st, &lock);
    Ok(true)
}

/// Removes pods, daemons, holders, namespaces, and the lab's directory.
fn teardown(st: &State, lock: &Lock) {
    // Pods first, through CNI DEL while the agents still run (so addresses are released
    // the way a runtime releases them), then their namespaces.
    for p in &st.pods {
        if let Err(e) = super::pods::cni_del(st, p) {
            eprintln!("ferrovia lab: pod {}/{}: CNI DEL: {e:#}", p.node, p.name);
        }
        kill_netns(&p.netns);
    }
    for name in st.order.iter().rev() {
        let Some(n) = st.nodes.get(name) else {
            continue;
        };
        for d in n.daemons.iter().rev() {
            if let Some(p) = d.proc {
                p.stop(Duration::from_secs(5));
            }
        }
    }
    for name in st.order.iter().rev() {
        let Some(n) = st.nodes.get(name) else {
            continue;
        };
        if let Some(h) = n.holder {
            h.kill();
        }
        kill_netns(&n.netns);
    }
    let dir = st.dir();
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("ferrovia lab: removing {}: {e}", dir.display());
        }
    }
    lock.cleanup_root_if_unused();
}

/// Kills what still runs in one of our namespaces (everything there was started by the
/// lab), then deletes it.
fn kill_netns(ns: &str) {
    if !sys::netns_exists(ns) {
        return;
    }
    let t = Instant::now();
    loop {
        let pids = sys::netns_pids(ns);
        if pids.is_empty() {
            break;
        }
        if t.elapsed() > Duration::from_secs(5) {
            eprintln!("ferrovia lab: processes {pids:?} are still in {ns}");
            break;
        }
        for pid in pids {
            if let Some(p) = ProcId::of(pid) {
                p.signal(libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Err(e) = sys::ip(&["netns", "del", ns]) {
        eprintln!("ferrovia lab: {e:#}");
    }
}
