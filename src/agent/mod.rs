//! `ferrovia agent`: the node agent. It runs the BGP speaker; registers the node in the
//! datastore and keeps its peers in line with it (full mesh, global and per-node peers);
//! installs the Loc-RIB in the kernel (learned routes, blackholes for its own blocks);
//! serves the control socket, metrics and health; and stops cleanly on SIGTERM/SIGINT.
//!
//! One file per task: [`speaker`], [`kernel`], [`mesh`], [`announce`], [`heartbeat`],
//! [`control`] (control socket and CNI) and [`metrics`]; [`store`] opens the datastore;
//! every task runs under the [`supervisor`], and the agent exits when any of them ends.

mod announce;
mod control;
mod heartbeat;
mod kernel;
mod leak;
mod leave;
mod mesh;
mod metrics;
mod nat;
mod node_watch;
mod restart;
mod services;
mod speaker;
mod store;
mod supervisor;
mod uninstall;

use crate::config::Loaded;
use crate::control::NodeInfo;
use crate::metrics::{Health, HttpState, Metrics};
use anyhow::{Context, Result};
use ferrovia_ipam::Ipam;
use kernel::{KernelStatus, SharedKernelStatus};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use supervisor::Supervisor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

/// A `ferrovia node drain` asked on the control socket, handed to the agent's main loop.
pub struct DrainAsk {
    /// The node the operator named, if any.
    pub node: Option<String>,
    /// The outcome, and a sender the control connection fires once it wrote the answer
    /// (the agent exits after that).
    pub reply: oneshot::Sender<(
        Result<crate::control::DrainReply, String>,
        oneshot::Sender<()>,
    )>,
}

/// How the agent's main loop ended.
enum Exit {
    /// SIGTERM: a restart. Sessions drop without a NOTIFICATION, everything stays.
    Restart,
    /// SIGINT: CEASE to every peer (Hard Reset to N-bit peers); kernel state stays.
    Stop,
    /// `ferrovia node drain`, or this node's record removed from the datastore.
    Drain(DrainAsk),
    /// SIGTERM while the agent's DaemonSet is gone or being deleted.
    Uninstall,
    /// A task ended.
    Failed(supervisor::TaskExit),
}

/// IPAM over the agent's datastore.
pub type NodeIpam = Ipam;

/// Runs the agent until SIGTERM (`Ok`: a restart — sessions drop without a NOTIFICATION so
/// that graceful-restart peers keep our routes, kernel routes and pods stay, the restart
/// marker is written), SIGINT (`Ok`, every session closed with CEASE), `ferrovia node
/// drain` (`Ok`, the node left: see [`leave`]) or until one of its tasks ends (`Err` naming the task: the caller exits non-zero so that the
/// node's supervisor restarts the agent; sessions just drop, so peers with graceful restart
/// keep our routes as stale, and kernel routes and pods stay).
///
/// Start-up order: the datastore is opened, the speaker listens with the configuration
/// file's peers, the stored peers and the mesh are applied once, and only then is the node
/// registered, so that nodes that find it there are expected when they connect.
pub async fn run(mut loaded: Loaded) -> Result<()> {
    let internal_ips = node_internal_ips(&loaded).await?;
    let node_addresses = resolve_addresses(&mut loaded, &internal_ips)?;
    // The first interface MTU a pod can use (IPv6 needs 1280, a veth takes up to 65535).
    let pod_mtu = node_addresses
        .iter()
        .find_map(|a| a.mtu)
        .filter(|m| (1280..=65535).contains(m));
    match pod_mtu {
        Some(m) => info!(mtu = m, "pods get this MTU when the CNI configuration names none"),
        None => info!(
            mtu = crate::cni::spec::DEFAULT_MTU,
            "no interface holds the node's address: pods get MTU {} when the CNI configuration names none",
            crate::cni::spec::DEFAULT_MTU
        ),
    }
    let cfg = &loaded.config;
    let socket = cfg.status.socket.clone();
    let listener = control::bind_control(&socket)?;
    let _socket_guard = control::RemoveOnDrop(socket.clone());

    let my_address = cfg
        .node
        .addresses
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(cfg.node.router_id));

    // The datastore: opened and seeded now, the node registered once the speaker is ready.
    let store = match &cfg.datastore {
        Some(d) => Some(store::open_store(d, &loaded).await?),
        None => None,
    };

    // The kernel: our routes only, reconciled at start.
    let mut kernel =
        if cfg.kernel.enabled {
            let table = cfg.kernel.table.id().unwrap_or(254);
            Some(crate::kernel::Kernel::new(table).await.with_context(|| {
                format!("opening the kernel routing table {table} (kernel.table)")
            })?)
        } else {
            None
        };

    // A graceful restart, or a first start? (RFC 4724: claim the restart and the kept
    // forwarding state only when both are true.)
    let state_dir: PathBuf = cfg.state_dir();
    let restart_time = Duration::from_secs(u64::from(cfg.bgp.graceful_restart_time));
    let kept_routes = match kernel.as_mut() {
        Some(k) => k.count_ours().await.unwrap_or(0),
        None => 0,
    };
    let restarting = match restart::verdict(&state_dir, &cfg.node.name, restart_time, kept_routes) {
        restart::Verdict::Restart { away } => {
            info!(
                away_ms = away.as_millis() as u64,
                kernel_routes = kept_routes,
                "graceful restart: our routes are still in the kernel; advertising Restart State and Forwarding State"
            );
            true
        }
        restart::Verdict::FirstStart(why) => {
            info!(reason = %why, "first start (not a graceful restart)");
            false
        }
    };
    let started = Instant::now();

    let metrics = Arc::new(Metrics::new().context("creating the metrics registry")?);
    let health = Arc::new(Health::default());
    let mut sup = Supervisor::new(health.clone());

    // The speaker: listening, with the configuration file's peers, when this returns.
    let file_peers = speaker::file_peers(&loaded);
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (handle, driver) = speaker::start(
        &loaded,
        file_peers.clone(),
        kernel.is_some().then_some(events_tx),
        restarting,
    )
    .await?;
    // Readiness waits for End-of-RIB both ways with every peer, at most this long; with a
    // datastore, the mesh's peers are added below, and "every peer" means them too.
    health.wait_for_bgp_sync(started + restart_time);
    if store.is_some() {
        health.wait_for_peers();
    }
    sup.adopt("speaker", driver);

    let announce = Arc::new(tokio::sync::Notify::new());
    let mut cni_ipam: Option<Arc<NodeIpam>> = None;
    let kstatus: SharedKernelStatus = Arc::new(Mutex::new(KernelStatus::default()));
    match kernel {
        Some(k) => {
            sup.spawn(
                "kernel",
                kernel::kernel_task(
                    k,
                    events_rx,
                    handle.clone(),
                    metrics.clone(),
                    health.clone(),
                    kstatus.clone(),
                    restarting.then_some(started + restart_time),
                ),
            );
        }
        None => health.set_kernel_in_sync(true),
    }
    sup.spawn(
        "restart-marker",
        refresh_marker(state_dir.clone(), cfg.node.name.clone()),
    );
    let (drain_tx, mut drain_rx) = mpsc::channel::<DrainAsk>(1);
    let uninstall_watch = uninstall::Watch::at_start(cfg).await;
    if let Some(store) = &store {
        let ctx = mesh::MeshContext {
            me: cfg.node.name.clone(),
            my_address,
            file_peers,
            hold_time: cfg.bgp.hold_time,
            connect_retry: Duration::from_secs(cfg.bgp.connect_retry),
            cluster_id: cfg.bgp.route_reflector.as_ref().map(|r| r.cluster_id),
            pools: cfg.pool_prefixes(),
        };
        let mut mesh = mesh::Mesh::new(store.clone(), ctx, handle.clone());
        mesh.apply_once().await?;
        health.peers_configured();
        store::register_node(store, &loaded).await?;
        sup.spawn("mesh", mesh.run());
        let ipam = match &cfg.ipam {
            Some(i) => Some(store::open_ipam(store.clone(), i).await?),
            None => None,
        };
        let (services_tx, services_rx) = tokio::sync::watch::channel(Default::default());
        let kube_client = match cfg.datastore.as_ref().and_then(|d| d.kubernetes.as_ref()) {
            Some(k) => Some(
                crate::datastore::kubernetes::client(k)
                    .await
                    .context("connecting to the Kubernetes API server for Services")?,
            ),
            None => None,
        };
        sup.spawn(
            "services",
            services::services_task(
                store.clone(),
                kube_client,
                cfg.node.name.clone(),
                services_tx,
            ),
        );
        sup.spawn(
            "announce",
            announce::announce_task(
                store.clone(),
                ipam.clone(),
                cfg.node.name.clone(),
                loaded.originate.iter().map(|(p, _)| *p).collect(),
                handle.clone(),
                announce.clone(),
                services_rx,
            ),
        );
        if ipam.is_some() {
            sup.spawn("nat", nat::nat_task(store.clone()));
        }
        if let (Some(ipam), Some(icfg)) = (&ipam, &cfg.ipam) {
            match cfg.datastore.as_ref().and_then(|d| d.kubernetes.as_ref()) {
                Some(k) => {
                    let kube = crate::datastore::kubernetes::open(k)
                        .await
                        .context("connecting to the Kubernetes API server for leak collection")?;
                    sup.spawn(
                        "leak",
                        leak::leak_task(
                            ipam.clone(),
                            cfg.node.name.clone(),
                            Arc::new(kube.pod_directory()),
                            Duration::from_secs(icfg.leak_grace_period_seconds),
                            Duration::from_secs(icfg.leak_collection_interval_seconds),
                        ),
                    );
                }
                None => info!(
                    "leak collection is off: it needs the Kubernetes datastore to know which pods exist \
                     (on SQLite, addresses of pods whose DEL never came stay until the runtime's CNI GC)"
                ),
            }
        }
        cni_ipam = ipam;
        sup.spawn(
            "heartbeat",
            heartbeat::heartbeat_task(store.clone(), cfg.node.name.clone()),
        );
        sup.spawn(
            "node-watch",
            node_watch::node_watch_task(store.clone(), cfg.node.name.clone(), drain_tx.clone()),
        );
    }
    if let Some(m) = &cfg.metrics {
        let st = HttpState {
            metrics: metrics.clone(),
            health: health.clone(),
            bgp: handle.clone(),
            ipam: cni_ipam.clone(),
        };
        sup.spawn("metrics", metrics::start(m.listen, st).await?);
    }
    info!(
        node = %cfg.node.name,
        asn = cfg.node.as_number,
        router_id = %cfg.node.router_id,
        peers = cfg.bgp.peers.len(),
        originated = loaded.originate.len(),
        datastore = store.is_some(),
        kernel = cfg.kernel.enabled,
        socket = %socket.display(),
        "ferrovia agent started"
    );

    let node = NodeInfo {
        name: cfg.node.name.clone(),
        as_number: cfg.node.as_number,
        router_id: cfg.node.router_id.to_string(),
        addresses: node_addresses,
        pod_mtu,
    };
    let cni_ctx = Arc::new(
        crate::cni::agent::CniContext::new(
            cfg.node.name.clone(),
            cni_ipam.clone(),
            announce.clone(),
        )
        .with_pod_mtu(pod_mtu),
    );
    sup.spawn(
        "control",
        control::serve_control(listener, handle.clone(), node, kstatus, cni_ctx, drain_tx),
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let exit = loop {
        tokio::select! {
            _ = term.recv() => break Exit::Restart,
            _ = int.recv() => break Exit::Stop,
            exit = sup.first_exit() => break Exit::Failed(exit),
            Some(ask) = drain_rx.recv() => match &ask.node {
                Some(n) if *n != cfg.node.name => {
                    let why = format!(
                        "this agent is node {}'s, not {n}'s: run the drain on {n} (or against its status.socket)",
                        cfg.node.name
                    );
                    let (tx, _) = oneshot::channel();
                    let _ = ask.reply.send((Err(why), tx));
                }
                _ => break Exit::Drain(ask),
            },
        }
    };
    let exit = match exit {
        Exit::Restart if uninstall_watch.uninstalling().await => Exit::Uninstall,
        other => other,
    };
    match exit {
        Exit::Uninstall => {
            info!("uninstall: leaving on purpose");
            let result = drain(&handle, &loaded, &mut sup, &state_dir).await;
            match result {
                Ok(r) => {
                    info!(
                        withdrawn = r.withdrawn,
                        sessions_closed = r.sessions_closed,
                        kernel_routes_removed = r.kernel_routes_removed,
                        "ferrovia agent drained and stopped (uninstall)"
                    );
                    Ok(())
                }
                Err(e) => Err(e.context("the drain at uninstall failed")),
            }
        }
        Exit::Restart => {
            info!("SIGTERM: restarting; sessions close without a NOTIFICATION so that graceful-restart peers keep our routes; kernel routes and pods stay");
            // No CEASE: the sessions just drop, so that peers with graceful restart keep
            // our routes while the agent restarts. BFD goes AdminDown first; a session a
            // peer closes meanwhile stays closed.
            handle.stop_connecting().await;
            bfd_admin_down(&handle).await;
            handle.abandon().await;
            sup.shutdown().await;
            if let Err(e) = restart::write(&state_dir, &cfg.node.name) {
                warn!(error = %format!("{e:#}"), "writing the restart marker failed: the next start will not claim a graceful restart");
            }
            info!("ferrovia agent stopped for a restart");
            Ok(())
        }
        Exit::Stop => {
            info!("SIGINT: closing every BGP session with CEASE");
            bfd_admin_down(&handle).await;
            handle.shutdown().await;
            sup.shutdown().await;
            info!("ferrovia agent stopped");
            Ok(())
        }
        Exit::Drain(ask) => {
            info!("drain: leaving on purpose");
            let result = drain(&handle, &loaded, &mut sup, &state_dir).await;
            let failed = result.as_ref().err().map(|e| format!("{e:#}"));
            let (written_tx, written_rx) = oneshot::channel();
            let _ = ask
                .reply
                .send((result.map_err(|e| format!("{e:#}")), written_tx));
            let _ = tokio::time::timeout(Duration::from_secs(5), written_rx).await;
            match failed {
                None => {
                    info!("ferrovia agent drained and stopped");
                    Ok(())
                }
                Some(e) => Err(anyhow::anyhow!("the drain failed: {e}")),
            }
        }
        Exit::Failed(exit) => {
            // No CEASE: the sessions just drop, so that peers with graceful restart keep
            // our routes while the agent restarts.
            handle.abandon().await;
            sup.shutdown().await;
            if let Err(e) = restart::write(&state_dir, &cfg.node.name) {
                warn!(error = %format!("{e:#}"), "writing the restart marker failed");
            }
            Err(exit.into())
        }
    }
}

/// `ferrovia node drain`: the BGP half (see [`leave::leave_bgp`]), every task stopped, then
/// the kernel state and the restart marker removed.
async fn drain(
    handle: &ferrovia_bgp::driver::Handle,
    loaded: &Loaded,
    sup: &mut Supervisor,
    state_dir: &std::path::Path,
) -> Result<crate::control::DrainReply> {
    let mut reply = leave::leave_bgp(handle, &loaded.config).await?;
    sup.shutdown().await;
    restart::remove(state_dir);
    reply.kernel_routes_removed = leave::remove_kernel_state(&loaded.config).await?;
    Ok(reply)
}

/// Keeps the restart marker fresh while the agent runs, so that a crash or SIGKILL followed
/// by a quick restart counts as a graceful restart too.
async fn refresh_marker(dir: PathBuf, node: String) -> Result<()> {
    let mut tick = tokio::time::interval(restart::REFRESH);
    let mut warned = false;
    loop {
        tick.tick().await;
        match restart::write(&dir, &node) {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                warned = true;
                warn!(error = %format!("{e:#}"), "writing the restart marker failed: a restart will not be graceful; make stateDir writable");
            }
            Err(_) => {}
        }
    }
}

/// The node's addresses: those of `node.addresses`, then one per family that
/// `node.addressAutodetection` names, found now and appended to `node.addresses` (so the
/// speaker, the mesh and the datastore use them like configured ones). Each is logged with
/// why it was chosen. Without any, the router id stands for the IPv4 address, as before.
fn resolve_addresses(
    loaded: &mut Loaded,
    internal_ips: &[IpAddr],
) -> Result<Vec<crate::autodetect::Detected>> {
    use crate::autodetect::{self, Detected, Method};
    let node = &loaded.config.node;
    let candidates = autodetect::addresses().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot list this node's interfaces");
        Vec::new()
    });
    let mut out: Vec<Detected> = node
        .addresses
        .iter()
        .map(|a| autodetect::configured(*a, &candidates))
        .collect();
    let pools: Vec<ipnet::IpNet> = loaded
        .config
        .ipam
        .iter()
        .flat_map(|i| i.pools.iter().filter_map(|p| p.cidr.parse().ok()))
        .collect();
    if let Some(auto) = &node.address_autodetection {
        for (text, v4) in [(&auto.ipv4, true), (&auto.ipv6, false)] {
            let Some(text) = text else { continue };
            let method = Method::parse(text, v4).map_err(|e| {
                anyhow::anyhow!(
                    "node.addressAutodetection.{}: {e}",
                    if v4 { "ipv4" } else { "ipv6" }
                )
            })?;
            if matches!(method, Method::None) {
                continue;
            }
            let d = match method {
                Method::KubernetesInternalIp => {
                    autodetect::internal_ip(&node.name, internal_ips, v4, &candidates)
                }
                _ => autodetect::choose(&method, text, v4, &candidates, &pools),
            }
            .map_err(|e| anyhow::anyhow!("node.addressAutodetection: {e}"))?;
            out.push(d);
        }
    }
    if out.is_empty() {
        let rid = IpAddr::V4(node.router_id);
        let mut d = autodetect::configured(rid, &candidates);
        d.method = "routerId".into();
        d.reason = "node.addresses is empty: the router id stands for the IPv4 address".into();
        out.push(d);
    } else {
        let detected: Vec<IpAddr> = out
            .iter()
            .filter(|d| d.method != "configured")
            .map(|d| d.address)
            .collect();
        loaded.config.node.addresses.extend(detected);
    }
    for d in &out {
        info!(
            address = %d.address,
            interface = d.interface.as_deref().unwrap_or("-"),
            mtu = d.mtu,
            method = %d.method,
            reason = %d.reason,
            "node address"
        );
    }
    Ok(out)
}

/// The Node's InternalIP addresses when `node.addressAutodetection` asks for
/// `kubernetes-internal-ip` (empty otherwise); the configuration check made sure the
/// datastore is Kubernetes then.
async fn node_internal_ips(loaded: &Loaded) -> Result<Vec<IpAddr>> {
    let cfg = &loaded.config;
    let wanted = cfg.node.address_autodetection.as_ref().is_some_and(|a| {
        [&a.ipv4, &a.ipv6].into_iter().flatten().any(|t| {
            matches!(
                crate::autodetect::Method::parse(t, true),
                Ok(crate::autodetect::Method::KubernetesInternalIp)
            )
        })
    });
    if !wanted {
        return Ok(Vec::new());
    }
    let Some(k) = cfg.datastore.as_ref().and_then(|d| d.kubernetes.as_ref()) else {
        anyhow::bail!("node.addressAutodetection: kubernetes-internal-ip needs the Kubernetes datastore (datastore.kubernetes)");
    };
    let store = crate::datastore::kubernetes::open(k)
        .await
        .context("opening the Kubernetes datastore to read the Node's InternalIP")?;
    store
        .node_internal_ips(&cfg.node.name)
        .await
        .with_context(|| {
            format!(
                "node.addressAutodetection kubernetes-internal-ip: reading the Node {:?}",
                cfg.node.name
            )
        })
}

/// The first step of leaving on purpose: BFD sessions go AdminDown and keep sending it for
/// one detection time (RFC 5880 §6.8.16), so peers that follow RFC 5882 §3.2 do not take
/// BGP down for our BFD going silent. Bounded; a no-op without BFD peers.
async fn bfd_admin_down(handle: &ferrovia_bgp::driver::Handle) {
    match tokio::time::timeout(Duration::from_secs(70), handle.bfd_admin_down()).await {
        Ok(Ok(waited)) if !waited.is_zero() => {
            info!(
                ?waited,
                "BFD sessions AdminDown; peers have had one detection time to hear it"
            )
        }
        Ok(_) => {}
        Err(_) => tracing::warn!("BFD AdminDown took longer than 70 s; going on"),
    }
}
