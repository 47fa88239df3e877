//! `ferrovia bench netlink`: the physical limit of the receive path. N IPv4 routes, all
//! prepared before the clock starts, go into a kernel table through the agent's own batched
//! netlink writer ([`Kernel::apply`]: 512 routes per datagram, several datagrams in flight)
//! in one call, so no BGP, no Loc-RIB and no hand-over between tasks is on the way. An
//! end-to-end time (BGP Established → last route in the kernel) is quoted as a multiple
//! of this.
//!
//! The routes are the same as `scripts/bench_bgp_feed.py` generates (the i-th /24 from
//! 20.0.0.0), via `--gateway`, which must resolve in the namespace the command runs in.
//! Unless `--keep`, they are deleted again afterwards (also timed and reported).

use crate::kernel::{Kernel, RouteKind};
use anyhow::{bail, Context, Result};
use ipnet::{IpNet, Ipv4Net};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

#[derive(clap::Args, Clone)]
pub struct NetlinkArgs {
    /// How many routes (IPv4 /24s from 20.0.0.0).
    #[arg(long, default_value_t = 1_000_000)]
    pub routes: u32,
    /// Their next hop; it must resolve here (an address on a connected subnet).
    #[arg(long)]
    pub gateway: IpAddr,
    /// Kernel routing table (254 is main).
    #[arg(long, default_value_t = 254)]
    pub table: u32,
    /// Leave the routes in the table (by default they are deleted after the measurement).
    #[arg(long)]
    pub keep: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetlinkReport {
    pub routes: u32,
    /// From the call to the last acknowledgement of the install.
    pub install_seconds: f64,
    /// This process's user + system CPU time during the install.
    pub install_cpu_seconds: f64,
    pub routes_per_second: f64,
    pub added: usize,
    pub datagrams: usize,
    /// Deleting them again (0 with --keep).
    pub delete_seconds: f64,
}

/// The i-th /24 from 20.0.0.0, as the feeder of scripts/bench_bgp_feed.py numbers them.
pub fn nth_slash24(i: u32) -> Option<IpNet> {
    let base = u32::from(Ipv4Addr::new(20, 0, 0, 0));
    let addr = base.checked_add(i.checked_mul(256)?)?;
    Ipv4Net::new(Ipv4Addr::from(addr), 24).ok().map(IpNet::V4)
}

/// This process's user + system CPU time.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0.0;
    }
    // SAFETY: zero-initialised and, with rc == 0, filled in by the kernel.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

pub fn run(args: NetlinkArgs) -> Result<()> {
    if args.routes == 0 {
        bail!("--routes must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = rt.block_on(measure(&args))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

async fn measure(args: &NetlinkArgs) -> Result<NetlinkReport> {
    let mut kernel = Kernel::new(args.table)
        .await
        .context("opening netlink (run as root, in the namespace to measure)")?;
    let mut changes = Vec::with_capacity(args.routes as usize);
    for i in 0..args.routes {
        let Some(p) = nth_slash24(i) else {
            bail!("--routes {} runs past 255.255.255.0/24", args.routes);
        };
        changes.push((p, Some(RouteKind::ecmp([args.gateway]))));
    }
    let prefixes: Vec<IpNet> = changes.iter().map(|(p, _)| *p).collect();
    let (t, cpu) = (Instant::now(), cpu_seconds());
    let stats = kernel
        .apply(changes)
        .await
        .context("installing the routes")?;
    let (install, install_cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    if stats.added != prefixes.len() {
        bail!(
            "{} of {} routes were added ({} unresolved, {} conflicts): does --gateway {} \
             resolve here, and is the table free of these prefixes?",
            stats.added,
            prefixes.len(),
            stats.unresolved,
            stats.conflicts,
            args.gateway
        );
    }
    let mut delete = 0.0;
    if !args.keep {
        let t = Instant::now();
        kernel
            .apply(prefixes.into_iter().map(|p| (p, None)).collect())
            .await
            .context("deleting the routes again")?;
        delete = t.elapsed().as_secs_f64();
    }
    Ok(NetlinkReport {
        routes: args.routes,
        install_seconds: install,
        install_cpu_seconds: install_cpu,
        routes_per_second: f64::from(args.routes) / install.max(1e-9),
        added: stats.added,
        datagrams: stats.requests,
        delete_seconds: delete,
    })
}
