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
mod mesh;
mod metrics;
mod speaker;
mod store;
mod supervisor;

use crate::config::Loaded;
use crate::control::NodeInfo;
use crate::metrics::{Health, HttpState, Metrics};
use anyhow::{Context, Result};
use ferrovia_ipam::Ipam;
use kernel::{KernelStatus, SharedKernelStatus};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use supervisor::Supervisor;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::info;

/// IPAM over the agent's datastore.
pub type NodeIpam = Ipam;

/// Runs the agent until a termination signal (`Ok`, every session closed with CEASE) or
/// until one of its tasks ends (`Err` naming the task: the caller exits non-zero so that the
/// node's supervisor restarts the agent; sessions just drop, so peers with graceful restart
/// keep our routes as stale, and kernel routes and pods stay).
///
/// Start-up order: the datastore is opened, the speaker listens with the configuration
/// file's peers, the stored peers and the mesh are applied once, and only then is the node
/// registered, so that nodes that find it there are expected when they connect.
pub async fn run(loaded: Loaded) -> Result<()> {
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
    let kernel =
        if cfg.kernel.enabled {
            let table = cfg.kernel.table.id().unwrap_or(254);
            Some(crate::kernel::Kernel::new(table).await.with_context(|| {
                format!("opening the kernel routing table {table} (kernel.table)")
            })?)
        } else {
            None
        };

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
    )
    .await?;
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
                ),
            );
        }
        None => health.set_kernel_in_sync(true),
    }
    if let Some(store) = &store {
        let ctx = mesh::MeshContext {
            me: cfg.node.name.clone(),
            my_address,
            file_peers,
            hold_time: cfg.bgp.hold_time,
            connect_retry: Duration::from_secs(cfg.bgp.connect_retry),
        };
        let mut mesh = mesh::Mesh::new(store.clone(), ctx, handle.clone());
        mesh.apply_once().await?;
        store::register_node(store, &loaded).await?;
        sup.spawn("mesh", mesh.run());
        let ipam = match &cfg.ipam {
            Some(i) => Some(store::open_ipam(store.clone(), i).await?),
            None => None,
        };
        sup.spawn(
            "announce",
            announce::announce_task(
                store.clone(),
                ipam.clone(),
                cfg.node.name.clone(),
                loaded.originate.iter().map(|(p, _)| *p).collect(),
                handle.clone(),
                announce.clone(),
            ),
        );
        cni_ipam = ipam;
        sup.spawn(
            "heartbeat",
            heartbeat::heartbeat_task(store.clone(), cfg.node.name.clone()),
        );
    }
    if let Some(m) = &cfg.metrics {
        let st = HttpState {
            metrics: metrics.clone(),
            health: health.clone(),
            bgp: handle.clone(),
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
    };
    let cni_ctx = Arc::new(crate::cni::agent::CniContext::new(
        cfg.node.name.clone(),
        cni_ipam.clone(),
        announce.clone(),
    ));
    sup.spawn(
        "control",
        control::serve_control(listener, handle.clone(), node, kstatus, cni_ctx),
    );

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let exit = tokio::select! {
        _ = term.recv() => { info!("SIGTERM: closing every BGP session with CEASE"); None }
        _ = int.recv() => { info!("SIGINT: closing every BGP session with CEASE"); None }
        exit = sup.first_exit() => Some(exit),
    };
    match exit {
        None => {
            handle.shutdown().await;
            sup.shutdown().await;
            info!("ferrovia agent stopped");
            Ok(())
        }
        Some(exit) => {
            // No CEASE: the sessions just drop, so that peers with graceful restart keep
            // our routes while the agent restarts.
            handle.abandon().await;
            sup.shutdown().await;
            Err(exit.into())
        }
    }
}
