//! `ferrovia`: the node agent, its CLI and, run under the name `ferrovia-cni`, the CNI plugin.

mod agent;
mod autodetect;
mod bench;
mod bench_netlink;
mod cni;
mod config;
mod control;
mod datastore;
mod install_cni;
mod kernel;
mod lab;
mod mesh;
mod metrics;
mod nat;
mod store_cli;

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "ferrovia",
    version,
    about = "BGP-routed, pure-L3 network agent for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent.
    Agent {
        /// The configuration file (YAML); see config/ for examples.
        #[arg(long, short)]
        config: PathBuf,
        /// Log level or filter (overrides FERROVIA_LOG), e.g. info, debug, ferrovia_bgp=trace.
        #[arg(long)]
        log_level: Option<String>,
        /// Log as human-readable text or as JSON lines.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Install the CNI plugin (this binary, as ferrovia-cni) and its network configuration
    /// list on the node: what the chart's init container runs.
    InstallCni(install_cni::Args),
    /// Check a configuration file and exit (0: valid, 2: invalid).
    CheckConfig { config: PathBuf },
    /// Show the BGP peers and route counts of the running agent.
    Status {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Nodes in the datastore.
    Node {
        #[command(flatten)]
        store: store_cli::Store,
        #[command(subcommand)]
        cmd: store_cli::NodeCmd,
    },
    /// Cluster-wide BGP settings in the datastore (AS, full mesh on/off).
    Cluster {
        #[command(flatten)]
        store: store_cli::Store,
        #[command(subcommand)]
        cmd: store_cli::ClusterCmd,
    },
    /// BGP peers stored in the datastore (global or per node).
    Peer {
        #[command(flatten)]
        store: store_cli::Store,
        #[command(subcommand)]
        cmd: store_cli::PeerCmd,
    },
    /// IP address management: pools, blocks and allocations in the datastore.
    Ipam {
        #[command(flatten)]
        store: store_cli::Store,
        #[command(subcommand)]
        cmd: store_cli::IpamCmd,
    },
    /// Print the CustomResourceDefinitions of the Kubernetes datastore (one YAML stream).
    Crds,
    /// Labs: containerlab topology files run in network namespaces, without Docker.
    Lab(lab::LabArgs),
    /// Benchmarks that need no cluster: `bench sim` plays many BGP nodes from one process.
    Bench {
        #[command(subcommand)]
        cmd: bench::BenchCmd,
    },
    /// Outgoing NAT (the `inet ferrovia` nftables table) of this node.
    Nat {
        #[command(subcommand)]
        cmd: NatCmd,
    },
    /// Show the Loc-RIB (selected routes) of the running agent.
    Routes {
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum NatCmd {
    /// Remove the `inet ferrovia` table from this network namespace (drain, uninstall);
    /// other tables are not touched. Stop the agent first, or it writes the table again.
    Remove,
}

fn init_logging(level: Option<String>, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = level
        .or_else(|| std::env::var("FERROVIA_LOG").ok())
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("ferrovia: ignoring log filter {filter:?} ({e}); using info");
        EnvFilter::new("info")
    });
    // Colours only for a terminal, and never when NO_COLOR is set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

/// Makes glibc's allocator keep one arena for every thread of the agent, unless the
/// operator set `MALLOC_ARENA_MAX` (glibc reads it itself). By default glibc gives threads
/// arenas of their own (up to 8 per core), and what one thread frees stays resident in its
/// arena, unusable by the others: the BGP speaker and the kernel task run on whichever
/// runtime thread is free, so a full table's Loc-RIB, the changes waiting for the kernel and
/// the kernel bookkeeping were spread over three arenas with their own holes. Measured with
/// 1M routes into the kernel (docs/BENCHMARKS.md): peak RSS 5–8 MiB lower, CPU unchanged; a
/// route reflector with 1,000 clients: 67 instead of 99 MiB at the time (same heap).
/// Small allocations still come from each thread's own cache without taking the lock.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes plain integers; called before the runtime starts its
        // threads, as glibc asks for arena settings.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> ExitCode {
    // Runtimes exec /opt/cni/bin/ferrovia-cni (a link to or copy of this binary): be the
    // CNI plugin, before anything else is set up.
    if cni::plugin::invoked_as_plugin() {
        return cni::plugin::main();
    }
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            config,
            log_level,
            log_format,
        } => {
            init_logging(log_level, log_format);
            one_malloc_arena();
            // A session is a socket: a reflector with a thousand clients needs more than the
            // usual soft limit of 1024 open files.
            bench::raise_fd_limit();
            let loaded = match config::load(&config) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("ferrovia: invalid configuration: {e}");
                    return ExitCode::from(2);
                }
            };
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("ferrovia: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(agent::run(loaded));
            // Work left in blocking threads (a datastore call) must not hold the exit up.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferrovia: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: valid", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrovia: invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Node {
            store,
            cmd: store_cli::NodeCmd::Drain { name, socket },
        } => {
            // GRACEFUL_SHUTDOWN, bgp.drainWait, the withdrawal and the kernel cleanup: allow
            // for an hour of waiting plus a minute.
            let r: Result<control::DrainReply, _> = control::call_within(
                &socket,
                &control::Request::Drain { node: name },
                std::time::Duration::from_secs(3660),
            );
            match r {
                Ok(d) if store.json => print_json(&d),
                Ok(d) => {
                    println!(
                        "node {} drained: waited {} s after GRACEFUL_SHUTDOWN, withdrew {} prefixes, closed {} sessions, removed {} kernel routes; the agent stopped",
                        d.node, d.waited_seconds, d.withdrawn, d.sessions_closed, d.kernel_routes_removed
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Bench { cmd } => {
            init_logging(None, LogFormat::Text);
            match bench::run(cmd) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ferrovia bench: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Node { store, cmd } => store_result(store_cli::node(&store, cmd)),
        Command::Cluster { store, cmd } => store_result(store_cli::cluster(&store, cmd)),
        Command::Peer { store, cmd } => store_result(store_cli::peer(&store, cmd)),
        Command::Ipam { store, cmd } => store_result(store_cli::ipam(&store, cmd)),
        Command::Nat {
            cmd: NatCmd::Remove,
        } => match nat::remove() {
            Ok(()) => {
                println!("nftables table inet {} removed", nat::TABLE);
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrovia: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Status { socket, json } => {
            let r: Result<control::StatusReply, _> =
                control::call(&socket, &control::Request::Status);
            match r {
                Ok(s) if json => print_json(&s),
                Ok(s) => {
                    print_status(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Command::Lab(args) => lab::main(args),
        Command::Crds => match datastore::kubernetes::crds::all_crds_yaml() {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ferrovia: {e}");
                ExitCode::FAILURE
            }
        },
        Command::InstallCni(args) => match install_cni::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ferrovia install-cni: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Routes { socket, json } => {
            let r: Result<Vec<control::RouteInfo>, _> =
                control::call(&socket, &control::Request::Routes);
            match r {
                Ok(s) if json => print_json(&s),
                Ok(s) => {
                    print_routes(&s);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
    }
}

fn store_result(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrovia: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn fail(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("ferrovia: {e}");
    ExitCode::FAILURE
}

fn print_json<T: serde::Serialize>(v: &T) -> ExitCode {
    match serde_json::to_string_pretty(v) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn print_status(s: &control::StatusReply) {
    println!(
        "node {}  AS {}  router id {}",
        s.node.name, s.node.as_number, s.node.router_id
    );
    for a in &s.node.addresses {
        println!(
            "address {} on {} (MTU {}): {} — {}",
            a.address,
            a.interface.as_deref().unwrap_or("-"),
            a.mtu.map_or("-".to_string(), |m| m.to_string()),
            a.method,
            a.reason
        );
    }
    if let Some(m) = s.node.pod_mtu {
        println!("pod MTU when the CNI configuration names none: {m}");
    }
    println!(
        "{:<40} {:>10}  {:<12} {:<12} {:<21} {:>9} {:>9}",
        "PEER", "AS", "TYPE", "STATE", "SINCE", "RECEIVED", "SENT"
    );
    for p in &s.peers {
        println!(
            "{:<40} {:>10}  {:<12} {:<12} {:<21} {:>9} {:>9}",
            p.address,
            p.as_number,
            format!("{}/{}", p.kind, p.session),
            p.state,
            p.since.as_deref().unwrap_or("-"),
            p.prefixes_received,
            p.prefixes_sent
        );
        if let Some(e) = &p.last_error {
            println!("    last error: {e}");
        }
        if let Some(b) = &p.bfd {
            let detect = b
                .detection_time_ms
                .map(|d| format!("{d} ms"))
                .unwrap_or_else(|| "-".into());
            println!(
                "    bfd: {} (peer says {}), detection {detect}, up {} times, {} failures{}",
                b.state,
                b.remote_state,
                b.ups,
                b.failures,
                if b.holding_bgp {
                    "; BGP held down until BFD is Up"
                } else {
                    ""
                }
            );
        }
        if p.stale_prefixes > 0 {
            println!(
                "    graceful restart: {} stale prefixes kept until the peer refreshes them",
                p.stale_prefixes
            );
        }
        if !p.refused.is_empty() {
            let r: Vec<String> = p.refused.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!("    refused prefixes: {}", r.join(", "));
        }
        if p.max_prefixes_exceeded > 0 {
            println!(
                "    over maxPrefixes {} time(s){}",
                p.max_prefixes_exceeded,
                p.restart_in_seconds
                    .map(|s| format!("; session starts again in {s} s"))
                    .unwrap_or_default()
            );
        }
    }
    let installed = match s.routes.installed {
        Some(n) => format!("{n} installed in the kernel"),
        None => "kernel not managed".to_string(),
    };
    println!(
        "routes: {} in the Loc-RIB, {} originated here, {installed}",
        s.routes.loc_rib, s.routes.originated
    );
    for u in &s.routes.unresolved {
        println!(
            "    unresolved: {} via {} (next hop not reachable)",
            u.prefix,
            u.next_hops.join(", ")
        );
    }
}

fn print_routes(routes: &[control::RouteInfo]) {
    println!(
        "{:<44} {:<40} {:<20} {:>6}",
        "PREFIX", "NEXT HOPS", "AS PATH", "LPREF"
    );
    for r in routes {
        let nh = if r.next_hops.is_empty() {
            "local".to_string()
        } else {
            r.next_hops.join(",")
        };
        let path: Vec<String> = r.as_path.iter().map(|a| a.to_string()).collect();
        let prefix = if r.stale {
            format!("{} (stale)", r.prefix)
        } else {
            r.prefix.clone()
        };
        println!(
            "{:<44} {:<40} {:<20} {:>6}",
            prefix,
            nh,
            path.join(" "),
            r.local_pref
                .map(|l| l.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
}
