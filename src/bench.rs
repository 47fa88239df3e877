//! `ferrovia bench sim`: plays many BGP speakers at once from one process, each a session
//! from its own address, to measure route reflectors (and agents) at scale on one machine.
//!
//! Simulated node `i` connects from `--first-address` + i to every `--target`, announces
//! one block (the i-th /26 of `--pool-v4`, and with `--first-address-v6` also the i-th /122
//! of `--pool-v6`, next hop `--first-address-v6` + i) and counts the blocks it receives.
//! The run ends when every node holds `--expect` blocks of the others (by default all
//! N − 1 other nodes' blocks, both families), and reports:
//!
//! - `convergenceSeconds`: from the last session Established until the last node held all
//!   it expects (the reflectors' work; 0 when every node was complete before the last
//!   session came up, which happens when sessions come up slowly: then read the next two);
//! - `establishSeconds`: from the start until the last session was Established;
//! - `completeSeconds`: from the start until the last node held all it expects;
//! - per `--watch NAME=PID`: CPU seconds used (user + system) from the start until
//!   convergence, RSS at the start and at convergence, peak RSS (VmHWM), and with
//!   `--steady-seconds S` the CPU share of one core over S seconds after convergence.
//!
//! While it runs it prints a progress line to stderr every 10 s; when `--timeout` passes
//! before every node is complete it fails with what is missing: per target how many sessions
//! are still connecting, waiting for the target's OPEN or KEEPALIVE, or Established, how
//! many reconnections there were, and for the first incomplete nodes which blocks (of which
//! nodes) they lack.
//!
//! The addresses must exist in the namespace the command runs in (the harness adds them),
//! and the targets must accept sessions from them (a peer range). The mesh mode is the same
//! command against one agent, with `--expect` set to the agent's own blocks.

use anyhow::{bail, Context, Result};
use ferrovia_bgp::message::{
    Capabilities, Family, Message, NextHop, Open, Origin, PathAttributes, Reach, SessionContext,
    AS_TRANS,
};
use ferrovia_bgp::wire;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

#[derive(clap::Subcommand)]
pub enum BenchCmd {
    /// Simulate N nodes, each a BGP session per target from its own address.
    Sim(SimArgs),
    /// The physical limit: N routes prepared in advance into the kernel through the
    /// agent's batched netlink writer alone (prints JSON).
    Netlink(crate::bench_netlink::NetlinkArgs),
}

#[derive(clap::Args, Clone)]
pub struct SimArgs {
    /// A speaker every simulated node opens a session to (a route reflector, or the agent
    /// of the mesh mode); repeat for several.
    #[arg(long = "target", required = true)]
    pub targets: Vec<IpAddr>,
    /// The targets' BGP port.
    #[arg(long, default_value_t = 179)]
    pub port: u16,
    /// How many nodes to simulate.
    #[arg(long)]
    pub nodes: u32,
    /// Address of simulated node 0 (node i has this + i); every one must be configured
    /// in this network namespace.
    #[arg(long)]
    pub first_address: Ipv4Addr,
    /// Dual stack: node i also announces the i-th /122 of --pool-v6 with this + i as next
    /// hop.
    #[arg(long)]
    pub first_address_v6: Option<Ipv6Addr>,
    /// The simulated nodes' AS (the targets' AS for iBGP).
    #[arg(long, default_value_t = 64512)]
    pub as_number: u32,
    /// Node i announces the i-th /26 of this pool.
    #[arg(long, default_value = "10.244.0.0/16")]
    pub pool_v4: Ipv4Net,
    /// Node i announces the i-th /122 of this pool (dual stack).
    #[arg(long, default_value = "fd00:10:244::/48")]
    pub pool_v6: Ipv6Net,
    /// Blocks each node must receive (other than its own); default: every other node's.
    #[arg(long)]
    pub expect: Option<usize>,
    /// A process to measure, as NAME=PID (repeat).
    #[arg(long = "watch")]
    pub watch: Vec<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// After convergence, measure the watched processes' CPU over this many seconds.
    #[arg(long, default_value_t = 0)]
    pub steady_seconds: u64,
    /// Hold time offered to the targets.
    #[arg(long, default_value_t = 90)]
    pub hold_time: u16,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// One watched process.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcReport {
    pub name: String,
    pub pid: u32,
    pub cpu_seconds: f64,
    pub rss_start_kib: u64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// CPU share of one core after convergence (with --steady-seconds).
    pub steady_cpu_percent: Option<f64>,
    /// RSS growth per session from the start to convergence.
    pub rss_per_session_kib: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub nodes: u32,
    pub targets: usize,
    pub sessions: usize,
    pub dual_stack: bool,
    pub expected_per_node: usize,
    pub establish_seconds: f64,
    pub convergence_seconds: f64,
    pub complete_seconds: f64,
    pub converged_nodes: usize,
    pub processes: Vec<ProcReport>,
}

/// Runs `ferrovia bench …`.
pub fn run(cmd: BenchCmd) -> Result<()> {
    match cmd {
        BenchCmd::Sim(args) => {
            raise_fd_limit();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let json = args.json;
            let report = rt.block_on(sim(args))?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print_report(&report);
            }
            Ok(())
        }
        BenchCmd::Netlink(args) => crate::bench_netlink::run(args),
    }
}

fn print_report(r: &Report) {
    println!(
        "{} nodes, {} sessions ({}), every node received {} blocks",
        r.nodes,
        r.sessions,
        if r.dual_stack { "dual stack" } else { "IPv4" },
        r.expected_per_node
    );
    println!(
        "established: {:.3} s after start; converged: {:.3} s after the last session Established ({:.3} s after start)",
        r.establish_seconds, r.convergence_seconds, r.complete_seconds
    );
    for p in &r.processes {
        let steady = p
            .steady_cpu_percent
            .map(|c| format!(", steady state {c:.2} % of a core"))
            .unwrap_or_default();
        println!(
            "{} (pid {}): CPU {:.2} s, RSS {} → {} KiB (peak {} KiB, {:.1} KiB per session){steady}",
            p.name,
            p.pid,
            p.cpu_seconds,
            p.rss_start_kib,
            p.rss_kib,
            p.peak_rss_kib,
            p.rss_per_session_kib
        );
    }
}

/// Each simulated node may hold two sessions per target during a reconnect; the default
/// soft limit of open files (1024) is too low for a thousand nodes.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

struct NodeState {
    got: Mutex<HashSet<IpNet>>,
    own: Vec<IpNet>,
    done: std::sync::atomic::AtomicBool,
}

/// Where a simulated session is, for progress and timeout reports.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Connecting = 0,
    /// Connected, our OPEN sent, waiting for the target's.
    OpenSent = 1,
    /// The target's OPEN arrived, waiting for its KEEPALIVE.
    OpenConfirm = 2,
    Established = 3,
}

const PHASES: [(Phase, &str); 4] = [
    (Phase::Connecting, "connecting"),
    (Phase::OpenSent, "waiting for OPEN"),
    (Phase::OpenConfirm, "waiting for KEEPALIVE"),
    (Phase::Established, "Established"),
];

struct Shared {
    nodes: Vec<NodeState>,
    targets: Vec<IpAddr>,
    /// By node × target (node i, target k at i × targets + k).
    phases: Vec<std::sync::atomic::AtomicU8>,
    /// Sessions that ended and were opened again.
    reconnects: AtomicUsize,
    expect: usize,
    established: AtomicUsize,
    converged: AtomicUsize,
    last_established: Mutex<Option<Instant>>,
    last_converged: Mutex<Option<Instant>>,
    errors: Mutex<Vec<String>>,
}

impl Shared {
    fn set_phase(&self, i: u32, target: IpAddr, phase: Phase) {
        if let Some(k) = self.targets.iter().position(|t| *t == target) {
            if let Some(p) = self.phases.get(i as usize * self.targets.len() + k) {
                p.store(phase as u8, Ordering::Relaxed);
            }
        }
    }

    /// Per target: how many sessions are in each phase.
    fn phase_summary(&self) -> String {
        let nt = self.targets.len().max(1);
        self.targets
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let counts: Vec<String> = PHASES
                    .iter()
                    .filter_map(|(ph, name)| {
                        let c = self
                            .phases
                            .iter()
                            .skip(k)
                            .step_by(nt)
                            .filter(|p| p.load(Ordering::Relaxed) == *ph as u8)
                            .count();
                        (c > 0).then(|| format!("{c} {name}"))
                    })
                    .collect();
                format!("{t}: {}", counts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// What the first few incomplete nodes lack: how many blocks, and which (whose).
    fn missing_summary(&self, max_nodes: usize) -> String {
        let mut out = Vec::new();
        for (i, s) in self.nodes.iter().enumerate() {
            if out.len() >= max_nodes {
                break;
            }
            if s.done.load(Ordering::Relaxed) {
                continue;
            }
            let Ok(got) = s.got.lock() else { continue };
            let missing: Vec<String> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .flat_map(|(j, o)| o.own.iter().map(move |b| (j, b)))
                .filter(|(_, b)| !got.contains(b))
                .map(|(j, b)| format!("{b} (node {j})"))
                .collect();
            out.push(format!(
                "node {i} has {} of {}, lacks {}{}",
                got.len(),
                self.expect,
                missing
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if missing.len() > 4 {
                    format!(" and {} more", missing.len() - 4)
                } else {
                    String::new()
                }
            ));
        }
        out.join("\n  ")
    }

    fn note_error(&self, e: String) {
        if let Ok(mut v) = self.errors.lock() {
            if v.len() < 20 {
                v.push(e);
            }
        }
    }
}

fn nth_v4(base: Ipv4Addr, i: u32) -> Option<Ipv4Addr> {
    u32::from(base).checked_add(i).map(Ipv4Addr::from)
}

fn nth_v6(base: Ipv6Addr, i: u32) -> Option<Ipv6Addr> {
    u128::from(base)
        .checked_add(u128::from(i))
        .map(Ipv6Addr::from)
}

/// Node i's blocks: the i-th /26 of the v4 pool, and the i-th /122 of the v6 pool.
fn blocks(args: &SimArgs, i: u32) -> Result<Vec<IpNet>> {
    let mut out = Vec::new();
    let v4 = args
        .pool_v4
        .subnets(26)
        .ok()
        .and_then(|mut s| s.nth(i as usize))
        .with_context(|| format!("{} has no {}th /26", args.pool_v4, i))?;
    out.push(IpNet::V4(v4));
    if args.first_address_v6.is_some() {
        let v6 = args
            .pool_v6
            .subnets(122)
            .ok()
            .and_then(|mut s| s.nth(i as usize))
            .with_context(|| format!("{} has no {}th /122", args.pool_v6, i))?;
        out.push(IpNet::V6(v6));
    }
    Ok(out)
}

async fn sim(args: SimArgs) -> Result<Report> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let dual = args.first_address_v6.is_some();
    let per_node = if dual { 2 } else { 1 };
    let expect = args.expect.unwrap_or((args.nodes as usize - 1) * per_node);
    let mut nodes = Vec::new();
    for i in 0..args.nodes {
        nodes.push(NodeState {
            got: Mutex::new(HashSet::new()),
            own: blocks(&args, i)?,
            done: std::sync::atomic::AtomicBool::new(false),
        });
    }
    let watched = parse_watch(&args.watch)?;
    let start_samples: Vec<Sample> = watched.iter().map(|(_, p)| sample(*p)).collect();
    let shared = Arc::new(Shared {
        phases: (0..nodes.len() * args.targets.len())
            .map(|_| std::sync::atomic::AtomicU8::new(Phase::Connecting as u8))
            .collect(),
        targets: args.targets.clone(),
        reconnects: AtomicUsize::new(0),
        nodes,
        expect,
        established: AtomicUsize::new(0),
        converged: AtomicUsize::new(0),
        last_established: Mutex::new(None),
        last_converged: Mutex::new(None),
        errors: Mutex::new(Vec::new()),
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.timeout);
    let args = Arc::new(args);
    let mut tasks = Vec::new();
    for i in 0..args.nodes {
        for t in &args.targets {
            let (shared, args, t) = (shared.clone(), args.clone(), *t);
            tasks.push(tokio::spawn(async move {
                if let Err(e) = session(&shared, &args, i, t, deadline).await {
                    shared.note_error(format!("node {i} → {t}: {e:#}"));
                }
            }));
        }
    }
    let sessions = tasks.len();
    let n = args.nodes as usize;
    let mut next_progress = start + PROGRESS_EVERY;
    loop {
        let est = shared.established.load(Ordering::Relaxed);
        let conv = shared.converged.load(Ordering::Relaxed);
        if est == sessions && conv == n {
            break;
        }
        let now = Instant::now();
        if now >= next_progress {
            next_progress = now + PROGRESS_EVERY;
            eprintln!(
                "ferrovia bench sim: {:.0} s: {est} of {sessions} sessions Established once, {conv} of {n} nodes complete, {} reconnections; sessions now: {}",
                now.duration_since(start).as_secs_f64(),
                shared.reconnects.load(Ordering::Relaxed),
                shared.phase_summary()
            );
        }
        if now >= deadline {
            let errors = shared
                .errors
                .lock()
                .map(|e| e.join("\n  "))
                .unwrap_or_default();
            for t in &tasks {
                t.abort();
            }
            bail!(
                "not converged after {} s: {est} of {sessions} sessions were Established at least once, {conv} of {n} nodes complete, {} reconnections.\nSessions now, per target: {}\nIncomplete nodes (first 5):\n  {}{}",
                args.timeout,
                shared.reconnects.load(Ordering::Relaxed),
                shared.phase_summary(),
                shared.missing_summary(5),
                if errors.is_empty() { String::new() } else { format!("\nLast session errors (first 20):\n  {errors}") }
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_est = lock_instant(&shared.last_established).unwrap_or(start);
    let last_conv = lock_instant(&shared.last_converged).unwrap_or(last_est);
    let conv_samples: Vec<Sample> = watched.iter().map(|(_, p)| sample(*p)).collect();
    let mut steady = vec![None; watched.len()];
    if args.steady_seconds > 0 {
        tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
        for (k, (_, pid)) in watched.iter().enumerate() {
            let s = sample(*pid);
            steady[k] = Some(
                (s.cpu_seconds - conv_samples[k].cpu_seconds) / args.steady_seconds as f64 * 100.0,
            );
        }
    }
    let processes = watched
        .iter()
        .enumerate()
        .map(|(k, (name, pid))| {
            let (a, b) = (&start_samples[k], &conv_samples[k]);
            ProcReport {
                name: name.clone(),
                pid: *pid,
                cpu_seconds: b.cpu_seconds - a.cpu_seconds,
                rss_start_kib: a.rss_kib,
                rss_kib: b.rss_kib,
                peak_rss_kib: b.hwm_kib,
                steady_cpu_percent: steady[k],
                rss_per_session_kib: (b.rss_kib as f64 - a.rss_kib as f64) / n as f64,
            }
        })
        .collect();
    for t in tasks {
        t.abort();
    }
    Ok(Report {
        nodes: args.nodes,
        targets: args.targets.len(),
        sessions,
        dual_stack: dual,
        expected_per_node: expect,
        establish_seconds: last_est.duration_since(start).as_secs_f64(),
        convergence_seconds: last_conv.saturating_duration_since(last_est).as_secs_f64(),
        complete_seconds: last_conv.saturating_duration_since(start).as_secs_f64(),
        converged_nodes: shared.converged.load(Ordering::Relaxed),
        processes,
    })
}

fn lock_instant(m: &Mutex<Option<Instant>>) -> Option<Instant> {
    m.lock().ok().and_then(|g| *g)
}

fn parse_watch(watch: &[String]) -> Result<Vec<(String, u32)>> {
    watch
        .iter()
        .map(|w| {
            let (name, pid) = w
                .split_once('=')
                .with_context(|| format!("--watch {w:?}: write NAME=PID"))?;
            let pid: u32 = pid
                .parse()
                .with_context(|| format!("--watch {w:?}: {pid:?} is not a process id"))?;
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                bail!("--watch {w:?}: no process {pid}");
            }
            Ok((name.to_string(), pid))
        })
        .collect()
}

#[derive(Debug, Default, Clone)]
struct Sample {
    cpu_seconds: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

/// CPU time (user + system) and memory of a process, from /proc; zeros when it is gone.
fn sample(pid: u32) -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces) start after ") ".
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of the line, 12 and 13 after ")".
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|k| f.get(*k).and_then(|v| v.parse::<f64>().ok()))
                .sum();
            // SAFETY: sysconf has no preconditions.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            s.cpu_seconds = ticks / if hz > 0 { hz as f64 } else { 100.0 };
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kib = || {
                line.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            if line.starts_with("VmRSS:") {
                s.rss_kib = kib();
            } else if line.starts_with("VmHWM:") {
                s.hwm_kib = kib();
            }
        }
    }
    s
}

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

const CTX: SessionContext = SessionContext {
    four_octet_as: true,
};

/// One simulated node's session with one target, reconnecting until the deadline.
async fn session(
    shared: &Shared,
    args: &SimArgs,
    i: u32,
    target: IpAddr,
    deadline: Instant,
) -> Result<()> {
    let local = nth_v4(args.first_address, i).context("address range overflows")?;
    let local_v6 = args.first_address_v6.and_then(|a| nth_v6(a, i));
    let mut counted = false;
    loop {
        shared.set_phase(i, target, Phase::Connecting);
        let r = one_session(shared, args, i, local, local_v6, target, &mut counted).await;
        shared.set_phase(i, target, Phase::Connecting);
        if Instant::now() >= deadline {
            return r;
        }
        if let Err(e) = r {
            tracing::debug!(node = i, %target, error = %format!("{e:#}"), "simulated session ended; reconnecting");
            shared.note_error(format!("node {i} → {target}: {e:#}"));
        }
        shared.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn one_session(
    shared: &Shared,
    args: &SimArgs,
    i: u32,
    local: Ipv4Addr,
    local_v6: Option<Ipv6Addr>,
    target: IpAddr,
    counted: &mut bool,
) -> Result<()> {
    let sock = match target {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    let bind = match target {
        IpAddr::V4(_) => IpAddr::V4(local),
        IpAddr::V6(_) => IpAddr::V6(local_v6.context("an IPv6 target needs --first-address-v6")?),
    };
    sock.bind(SocketAddr::new(bind, 0))
        .with_context(|| format!("binding {bind} (is it configured in this namespace?)"))?;
    let mut stream = sock
        .connect(SocketAddr::new(target, args.port))
        .await
        .with_context(|| format!("connecting from {bind}"))?;
    let _ = stream.set_nodelay(true);
    let mut families = vec![Family::Ipv4Unicast];
    if local_v6.is_some() {
        families.push(Family::Ipv6Unicast);
    }
    let open = Message::Open(Open {
        version: 4,
        my_as: u16::try_from(args.as_number).unwrap_or(AS_TRANS),
        hold_time: args.hold_time,
        bgp_id: local,
        capabilities: Capabilities {
            multiprotocol: families,
            four_octet_as: Some(args.as_number),
            ..Default::default()
        },
    });
    stream.write_all(&wire::encode(&open, &CTX)?).await?;
    shared.set_phase(i, target, Phase::OpenSent);
    let keepalive = wire::encode(&Message::Keepalive, &CTX)?;
    let node = &shared.nodes[i as usize];
    let mut established = false;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
    let mut chunk = vec![0u8; 1 << 16];
    let mut hold = Duration::from_secs(u64::from(args.hold_time.max(3)));
    let mut ka = tokio::time::interval(hold / 3);
    ka.tick().await;
    loop {
        tokio::select! {
            n = stream.read(&mut chunk) => {
                let n = n?;
                if n == 0 {
                    bail!("the target closed the session");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            _ = ka.tick() => {
                if established {
                    stream.write_all(&keepalive).await?;
                }
                continue;
            }
        }
        let mut off = 0;
        while let Some(len) =
            wire::frame_len(&buf[off..]).map_err(|e| anyhow::anyhow!("bad message: {e}"))?
        {
            let msg = wire::decode(&buf[off..off + len], &CTX)
                .map_err(|e| anyhow::anyhow!("bad message: {e}"))?;
            off += len;
            match msg {
                Message::Open(o) => {
                    shared.set_phase(i, target, Phase::OpenConfirm);
                    if o.hold_time > 0 {
                        hold = hold.min(Duration::from_secs(u64::from(o.hold_time)));
                        ka = tokio::time::interval(hold / 3);
                        ka.tick().await;
                    }
                    stream.write_all(&keepalive).await?;
                }
                Message::Keepalive if !established => {
                    established = true;
                    shared.set_phase(i, target, Phase::Established);
                    if !*counted {
                        *counted = true;
                        shared.established.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = shared.last_established.lock() {
                            *l = Some(Instant::now());
                        }
                    }
                    announce(&mut stream, node, local, local_v6).await?;
                }
                Message::Keepalive | Message::RouteRefresh(_) => {}
                Message::Update(u) => {
                    let complete = {
                        let mut got = node
                            .got
                            .lock()
                            .map_err(|_| anyhow::anyhow!("poisoned lock"))?;
                        for w in &u.withdrawn {
                            got.remove(w);
                        }
                        for p in u.announced() {
                            if !node.own.contains(p) {
                                got.insert(*p);
                            }
                        }
                        got.len() >= shared.expect
                    };
                    if complete && !node.done.swap(true, Ordering::Relaxed) {
                        shared.converged.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut l) = shared.last_converged.lock() {
                            *l = Some(Instant::now());
                        }
                    }
                }
                Message::Notification(n) => bail!("the target sent {n}"),
            }
        }
        buf.drain(..off);
    }
}

async fn announce(
    stream: &mut tokio::net::TcpStream,
    node: &NodeState,
    local: Ipv4Addr,
    local_v6: Option<Ipv6Addr>,
) -> Result<()> {
    let attrs = PathAttributes {
        origin: Origin::Igp,
        local_pref: Some(100),
        ..Default::default()
    };
    for b in &node.own {
        let next_hop = match b {
            IpNet::V4(_) => IpAddr::V4(local),
            IpNet::V6(_) => match local_v6 {
                Some(v6) => IpAddr::V6(v6),
                None => continue,
            },
        };
        let reach = Reach {
            next_hop: NextHop::new(next_hop),
            prefixes: vec![*b],
        };
        for m in wire::pack_updates(&[], Some((&attrs, &reach)), &CTX) {
            stream.write_all(&m).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_blocks_and_addresses_follow_the_index() {
        let args = SimArgs {
            targets: vec![],
            port: 179,
            nodes: 3,
            first_address: Ipv4Addr::new(198, 19, 0, 1),
            first_address_v6: Some("fd00:198:18::1:0".parse().expect("v6")),
            as_number: 64512,
            pool_v4: "10.244.0.0/16".parse().expect("pool"),
            pool_v6: "fd00:10:244::/48".parse().expect("pool"),
            expect: None,
            watch: vec![],
            timeout: 1,
            steady_seconds: 0,
            hold_time: 90,
            json: false,
        };
        let b = blocks(&args, 5).expect("blocks");
        assert_eq!(
            b,
            vec![
                "10.244.1.64/26".parse::<IpNet>().expect("p"),
                "fd00:10:244::140/122".parse::<IpNet>().expect("p")
            ]
        );
        assert_eq!(
            nth_v4(args.first_address, 300),
            Some(Ipv4Addr::new(198, 19, 1, 45))
        );
        assert!(blocks(&args, 1024).is_err(), "a /16 has 1024 /26s");
        let me = sample(std::process::id());
        assert!(me.rss_kib > 0 && me.hwm_kib >= me.rss_kib);
        assert!(parse_watch(&["x".into()]).is_err());
    }
}
