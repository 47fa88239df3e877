//! `ferrovia agent`: the node agent. It runs the BGP speaker; registers the node in the
//! datastore and keeps its peers in line with it (full mesh, global and per-node peers);
//! installs the Loc-RIB in the kernel (learned routes, blackholes for its own blocks);
//! serves the control socket, metrics and health; and stops cleanly on SIGTERM/SIGINT.

use crate::config::{format_community, Loaded};
use crate::control::{
    NodeInfo, PeerInfo, Request, RouteCounts, RouteInfo, StatusReply, Unresolved,
};
use crate::datastore::model::{self, ClusterBgp, NodeRecord};
use crate::datastore::{self as ds, SqliteStore};
use crate::ipam_store::DatastoreStore;
use crate::kernel::{Kernel, RouteKind};
use crate::mesh::{self, MeshNode, StoredPeer};
use crate::metrics::{self, Health, HttpState, Metrics};
use anyhow::{bail, Context, Result};
use ferrovia_bgp::driver::{self, DriverConfig, Handle, PeerSpec};
use ferrovia_bgp::message::{AsSegment, Family, Origin};
use ferrovia_bgp::rib::{Change, Source};
use ferrovia_bgp::speaker::{Event, PeerConfig, Speaker, SpeakerConfig};
use ferrovia_ipam::{Ipam, IpamConfig};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

/// How often the node record's heartbeat is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often the datastore is polled for changes (mesh membership, peers, settings).
const WATCH_INTERVAL: Duration = Duration::from_millis(200);
/// Most route changes handed to the kernel in one go (bounds memory while the kernel,
/// the slowest stage, catches up with a full table).
const KERNEL_CHUNK: usize = 16_384;
/// How often routes with unresolved next hops are tried again.
const RETRY_UNRESOLVED: Duration = Duration::from_secs(2);

/// What the kernel task reports to status and metrics.
#[derive(Default)]
struct KernelStatus {
    enabled: bool,
    installed: usize,
    unresolved: Vec<(IpNet, Vec<IpAddr>)>,
}

type SharedKernelStatus = Arc<Mutex<KernelStatus>>;

/// Runs the agent until a termination signal.
pub async fn run(loaded: Loaded) -> Result<()> {
    let cfg = &loaded.config;
    let socket = cfg.status.socket.clone();
    let listener = bind_control(&socket)?;
    let _socket_guard = RemoveOnDrop(socket.clone());

    let my_address = cfg
        .node
        .addresses
        .first()
        .copied()
        .unwrap_or(IpAddr::V4(cfg.node.router_id));
    let v4 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    });
    let v6 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        _ => None,
    });

    // The datastore: register this node and read the cluster-wide BGP settings.
    let store = match &cfg.datastore {
        Some(d) => Some(open_store(&d.sqlite.path, &loaded).await?),
        None => None,
    };

    // The kernel: our routes only, reconciled at start.
    let kernel =
        if cfg.kernel.enabled {
            let table = cfg.kernel.table.id().unwrap_or(254);
            Some(Kernel::new(table).await.with_context(|| {
                format!("opening the kernel routing table {table} (kernel.table)")
            })?)
        } else {
            None
        };

    let speaker = Speaker::new(SpeakerConfig {
        local_as: cfg.node.as_number,
        router_id: cfg.node.router_id,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(cfg.bgp.graceful_restart_time),
        next_hop_v4: v4.or(Some(cfg.node.router_id)),
        next_hop_v6: v6,
    });
    let file_peers: Vec<PeerSpec> = cfg
        .bgp
        .peers
        .iter()
        .zip(&loaded.passwords)
        .map(|(p, pw)| PeerSpec {
            config: PeerConfig {
                address: p.address,
                remote_as: p.as_number,
                hold_time: p.hold_time.unwrap_or(cfg.bgp.hold_time),
                connect_retry: Duration::from_secs(cfg.bgp.connect_retry),
                passive: p.passive,
                kind: "global".into(),
            },
            port: p.port,
            password: pw.clone(),
        })
        .collect();
    let listen = cfg
        .bgp
        .listen
        .enabled
        .then(|| SocketAddr::new(cfg.bgp.listen.address, cfg.bgp.listen.port));
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (handle, task) = driver::spawn(
        speaker,
        DriverConfig {
            listen,
            connect_timeout: Duration::from_secs(10),
        },
        file_peers.clone(),
        kernel.is_some().then_some(events_tx),
    )
    .await
    .context("starting the BGP speaker")?;
    for (prefix, communities) in &loaded.originate {
        handle.originate(*prefix, communities.clone()).await?;
    }

    let announce = Arc::new(tokio::sync::Notify::new());
    let mut cni_ipam: Option<Arc<NodeIpam>> = None;
    let metrics = Arc::new(Metrics::new().context("creating the metrics registry")?);
    let health = Arc::new(Health::default());
    let kstatus: SharedKernelStatus = Arc::new(Mutex::new(KernelStatus::default()));
    let mut tasks = Vec::new();
    match kernel {
        Some(k) => {
            tasks.push(tokio::spawn(kernel_task(
                k,
                events_rx,
                handle.clone(),
                metrics.clone(),
                health.clone(),
                kstatus.clone(),
            )));
        }
        None => health.set_kernel_in_sync(true),
    }
    if let Some(store) = &store {
        let ctx = MeshContext {
            me: cfg.node.name.clone(),
            my_address,
            file_peers,
            hold_time: cfg.bgp.hold_time,
            connect_retry: Duration::from_secs(cfg.bgp.connect_retry),
        };
        let rev = ds::watch(store.clone(), WATCH_INTERVAL)
            .await
            .context("watching the datastore")?;
        tasks.push(tokio::spawn(mesh_task(
            store.clone(),
            ctx,
            handle.clone(),
            rev.clone(),
        )));
        let ipam = match &cfg.ipam {
            Some(i) => Some(open_ipam(store.clone(), i).await?),
            None => None,
        };
        tasks.push(tokio::spawn(announce_task(
            store.clone(),
            ipam.clone(),
            cfg.node.name.clone(),
            loaded.originate.iter().map(|(p, _)| *p).collect(),
            handle.clone(),
            announce.clone(),
            rev,
        )));
        cni_ipam = ipam;
        tasks.push(tokio::spawn(heartbeat_task(
            store.clone(),
            cfg.node.name.clone(),
        )));
    }
    if let Some(m) = &cfg.metrics {
        let st = HttpState {
            metrics: metrics.clone(),
            health: health.clone(),
            bgp: handle.clone(),
        };
        tasks.push(
            metrics::serve(m.listen, st)
                .await
                .with_context(|| format!("listening on metrics.listen {}", m.listen))?,
        );
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
    tasks.push(tokio::spawn(serve_control(
        listener,
        handle.clone(),
        node,
        kstatus,
        cni_ctx,
    )));

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let result = tokio::select! {
        _ = term.recv() => { info!("SIGTERM: closing every BGP session with CEASE"); Ok(()) }
        _ = int.recv() => { info!("SIGINT: closing every BGP session with CEASE"); Ok(()) }
        r = task => Err(anyhow::anyhow!("the BGP speaker stopped unexpectedly: {r:?}")),
    };
    handle.shutdown().await;
    for t in tasks {
        t.abort();
    }
    if result.is_ok() {
        info!("ferrovia agent stopped");
    }
    result
}

/// Opens the datastore, seeds the cluster settings and registers this node.
async fn open_store(path: &Path, loaded: &Loaded) -> Result<Arc<SqliteStore>> {
    let cfg = loaded.config.clone();
    let path = path.to_path_buf();
    let originate: Vec<IpNet> = loaded.originate.iter().map(|(p, _)| *p).collect();
    tokio::task::spawn_blocking(move || -> Result<Arc<SqliteStore>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| {
                format!(
                    "creating the directory of datastore.sqlite.path {}",
                    dir.display()
                )
            })?;
        }
        let store = SqliteStore::open(&path)
            .with_context(|| format!("opening datastore.sqlite.path {}", path.display()))?;
        let cluster = model::seed_cluster_bgp(
            &store,
            &ClusterBgp {
                as_number: cfg.node.as_number,
                mesh: cfg.bgp.mesh,
                listen_port: cfg.bgp.listen.port,
            },
        )
        .context("seeding the cluster BGP settings")?;
        let addresses = if cfg.node.addresses.is_empty() {
            vec![IpAddr::V4(cfg.node.router_id)]
        } else {
            cfg.node.addresses.clone()
        };
        model::register_node(
            &store,
            &NodeRecord {
                name: cfg.node.name.clone(),
                addresses,
                as_number: Some(cfg.node.as_number),
                router_id: cfg.node.router_id,
                heartbeat: model::unix_now(),
                blocks: originate,
            },
        )
        .with_context(|| format!("registering node {} in the datastore", cfg.node.name))?;
        info!(
            path = %path.display(),
            cluster_as = cluster.as_number,
            mesh = cluster.mesh,
            "datastore opened, node registered"
        );
        Ok(Arc::new(store))
    })
    .await?
}

/// IPAM over the agent's datastore.
pub type NodeIpam = Ipam<DatastoreStore>;

/// How often empty blocks are looked for and the announcements re-checked.
const IPAM_SWEEP: Duration = Duration::from_secs(30);

async fn open_ipam(store: Arc<SqliteStore>, cfg: &crate::config::Ipam) -> Result<Arc<NodeIpam>> {
    let pools = cfg.pools.clone();
    let config = IpamConfig {
        strict_affinity: cfg.strict_affinity,
        max_blocks_per_node: cfg.max_blocks_per_node,
        empty_block_grace: Duration::from_secs(cfg.empty_block_grace_seconds),
    };
    tokio::task::spawn_blocking(move || -> Result<Arc<NodeIpam>> {
        let ipam = Ipam::new(DatastoreStore(store), config);
        ipam.ensure_pools(&pools).context("ipam.pools")?;
        Ok(Arc::new(ipam))
    })
    .await?
}

/// What this node announces: the configuration's prefixes, the blocks its datastore record
/// lists, its IPAM blocks, and single addresses its pods borrowed from other nodes' blocks
/// (as /32 and /128). Woken by CNI (a block claimed or released), by datastore changes, and
/// every [`IPAM_SWEEP`], when blocks empty for longer than the grace period are given back.
async fn announce_task(
    store: Arc<SqliteStore>,
    ipam: Option<Arc<NodeIpam>>,
    node: String,
    config: BTreeSet<IpNet>,
    handle: Handle,
    wake: Arc<tokio::sync::Notify>,
    mut rev: tokio::sync::watch::Receiver<u64>,
) {
    let mut announced: BTreeSet<IpNet> = config.clone();
    let mut sweep = tokio::time::interval(IPAM_SWEEP);
    loop {
        let swept = tokio::select! {
            _ = wake.notified() => false,
            r = rev.changed() => { if r.is_err() { break; } false }
            _ = sweep.tick() => true,
        };
        let (s, i, n) = (store.clone(), ipam.clone(), node.clone());
        let wanted = tokio::task::spawn_blocking(move || -> Result<BTreeSet<IpNet>> {
            let mut out = BTreeSet::new();
            if let Some(rec) = model::get_node(&*s, &n)? {
                out.extend(rec.value.blocks);
            }
            if let Some(ipam) = i {
                if swept {
                    for b in ipam.release_empty_blocks(&n, std::time::SystemTime::now())? {
                        info!(block = %b, "released an IPAM block that stayed empty past the grace period");
                    }
                }
                out.extend(ipam.node_blocks(&n)?);
                out.extend(ipam.borrowed(&n)?.into_iter().map(IpNet::from));
            }
            Ok(out)
        })
        .await;
        let wanted: BTreeSet<IpNet> = match wanted {
            Ok(Ok(w)) => w.into_iter().chain(config.iter().copied()).collect(),
            Ok(Err(e)) => {
                warn!(error = %e, "reading this node's blocks failed; announcements unchanged");
                continue;
            }
            Err(e) => {
                error!(error = %e, "block reader task failed");
                continue;
            }
        };
        for p in wanted.difference(&announced) {
            info!(prefix = %p, "announcing");
            let _ = handle.originate(*p, Vec::new()).await;
        }
        for p in announced.difference(&wanted) {
            info!(prefix = %p, "withdrawing");
            let _ = handle.withdraw(*p).await;
        }
        announced = wanted;
    }
}

async fn heartbeat_task(store: Arc<SqliteStore>, name: String) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.tick().await;
    let mut warned = false;
    loop {
        tick.tick().await;
        let (s, n) = (store.clone(), name.clone());
        let r =
            tokio::task::spawn_blocking(move || model::heartbeat(&*s, &n, model::unix_now())).await;
        match r {
            Ok(Ok(_)) => warned = false,
            Ok(Err(e)) if !warned => {
                warn!(error = %e, node = %name, "heartbeat failed; if the node was removed from the datastore on purpose, stop this agent (it re-registers at start)");
                warned = true;
            }
            _ => {}
        }
    }
}

struct MeshContext {
    me: String,
    my_address: IpAddr,
    file_peers: Vec<PeerSpec>,
    hold_time: u16,
    connect_retry: Duration,
}

/// What the datastore says, read in one go.
struct Snapshot {
    cluster: Option<ClusterBgp>,
    nodes: Vec<NodeRecord>,
    peers: Vec<model::PeerRecord>,
}

/// Keeps the speaker's peers and this node's originated blocks in line with the datastore.
async fn mesh_task(
    store: Arc<SqliteStore>,
    ctx: MeshContext,
    handle: Handle,
    mut rev: tokio::sync::watch::Receiver<u64>,
) {
    let mut current: BTreeMap<IpAddr, PeerSpec> = ctx
        .file_peers
        .iter()
        .map(|p| (p.config.address, p.clone()))
        .collect();
    loop {
        let s = store.clone();
        let snap = tokio::task::spawn_blocking(move || -> ds::Result<Snapshot> {
            Ok(Snapshot {
                cluster: model::get_cluster_bgp(&*s)?,
                nodes: model::list_nodes(&*s)?,
                peers: model::list_peers(&*s)?,
            })
        })
        .await;
        match snap {
            Ok(Ok(snap)) => {
                apply_mesh(&ctx, &handle, &snap, &mut current).await;
            }
            Ok(Err(e)) => {
                warn!(error = %e, "reading the datastore failed; keeping the current peers")
            }
            Err(e) => error!(error = %e, "datastore reader task failed"),
        }
        if rev.changed().await.is_err() {
            break;
        }
    }
}

async fn apply_mesh(
    ctx: &MeshContext,
    handle: &Handle,
    snap: &Snapshot,
    current: &mut BTreeMap<IpAddr, PeerSpec>,
) {
    let Some(cluster) = &snap.cluster else {
        return;
    };
    let nodes: Vec<MeshNode> = snap
        .nodes
        .iter()
        .map(|n| MeshNode {
            name: n.name.clone(),
            addresses: n.addresses.clone(),
            as_number: n.effective_as(cluster),
        })
        .collect();
    let stored: Vec<StoredPeer> = snap
        .peers
        .iter()
        .filter(|p| p.applies_to(&ctx.me))
        .filter_map(|p| {
            let password = match &p.password_file {
                None => None,
                Some(f) => match std::fs::read_to_string(f) {
                    Ok(s) => Some(s.trim_end_matches(['\n', '\r']).to_string()),
                    Err(e) => {
                        warn!(peer = %p.name, file = %f.display(), error = %e, "cannot read the peer's password file; peer skipped");
                        return None;
                    }
                },
            };
            Some(StoredPeer {
                address: p.address,
                as_number: p.as_number,
                node: p.node.clone(),
                password,
            })
        })
        .collect();
    let mut desired = mesh::desired_peers(&mesh::Inputs {
        me: &ctx.me,
        my_address: ctx.my_address,
        mesh: cluster.mesh,
        nodes: &nodes,
        stored_peers: &stored,
        file_peers: &ctx.file_peers,
        hold_time: ctx.hold_time,
        connect_retry: ctx.connect_retry,
    });
    for spec in desired.values_mut() {
        if spec.config.kind == "mesh" {
            spec.port = cluster.listen_port;
        }
    }
    let (remove, add) = mesh::diff(current, &desired);
    for a in remove {
        match handle.remove_peer(a).await {
            Ok(()) => {
                current.remove(&a);
            }
            Err(e) => warn!(peer = %a, error = %e, "removing peer failed"),
        }
    }
    for spec in add {
        let a = spec.config.address;
        match handle.add_peer(spec.clone()).await {
            Ok(()) => {
                current.insert(a, spec);
            }
            Err(e) => warn!(peer = %a, error = %e, "adding peer failed"),
        }
    }
}

/// The kernel route a Loc-RIB selection asks for: learned routes via their next hops,
/// our own blocks as blackholes.
fn kernel_route(best: Option<&ferrovia_bgp::rib::Best>) -> Option<RouteKind> {
    let b = best?;
    Some(match b.best.source {
        Source::Local => RouteKind::Blackhole,
        Source::Peer(_) => RouteKind::ecmp(b.next_hops.iter().copied()),
    })
}

async fn desired_routes(handle: &Handle) -> Option<HashMap<IpNet, RouteKind>> {
    handle
        .query(|s: &mut Speaker| {
            s.loc_rib()
                .iter()
                .filter_map(|(p, b)| kernel_route(Some(&b)).map(|k| (p, k)))
                .collect::<HashMap<_, _>>()
        })
        .await
        .ok()
}

/// Installs Loc-RIB changes in the kernel; reconciles at start and after any error.
async fn kernel_task(
    mut kernel: Kernel,
    mut events: mpsc::UnboundedReceiver<Event>,
    handle: Handle,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    status: SharedKernelStatus,
) {
    let mut in_sync = false;
    let mut retry = tokio::time::interval(RETRY_UNRESOLVED);
    loop {
        if !in_sync {
            if let Some(desired) = desired_routes(&handle).await {
                let t = Instant::now();
                match kernel.reconcile(&desired).await {
                    Ok(stats) => {
                        info!(
                            found = stats.found,
                            added = stats.changes.added,
                            replaced = stats.changes.replaced,
                            deleted = stats.changes.deleted,
                            unresolved = stats.changes.unresolved,
                            "kernel routes reconciled"
                        );
                        in_sync = true;
                    }
                    Err(e) => error!(error = %e, "kernel reconciliation failed; retrying"),
                }
                publish(&kernel, t.elapsed(), &metrics, &status);
            }
            health.set_kernel_in_sync(in_sync);
            if !in_sync {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        tokio::select! {
            ev = events.recv() => {
                if ev.is_none() {
                    break;
                }
                // Signals only: drain them, then pull the coalesced changes in chunks.
                while events.try_recv().is_ok() {}
                loop {
                    let chunk = handle
                        .query(|s: &mut Speaker| s.take_changes(KERNEL_CHUNK))
                        .await
                        .unwrap_or_default();
                    if chunk.is_empty() {
                        break;
                    }
                    let changes: Vec<(IpNet, Option<RouteKind>)> = chunk
                        .into_iter()
                        .map(|Change { prefix, best }| (prefix, kernel_route(best.as_ref())))
                        .collect();
                    let t = Instant::now();
                    if let Err(e) = kernel.apply(changes).await {
                        warn!(error = %e, "installing routes failed; reconciling the table");
                        in_sync = false;
                        health.set_kernel_in_sync(false);
                    }
                    publish(&kernel, t.elapsed(), &metrics, &status);
                    if !in_sync {
                        break;
                    }
                }
            }
            _ = retry.tick() => {
                if !kernel.unresolved().is_empty() || !kernel.conflicts().is_empty() {
                    let t = Instant::now();
                    if let Err(e) = kernel.retry_pending().await {
                        warn!(error = %e, "retrying unresolved routes failed; reconciling the table");
                        in_sync = false;
                    }
                    publish(&kernel, t.elapsed(), &metrics, &status);
                }
            }
        }
    }
}

fn publish(kernel: &Kernel, took: Duration, metrics: &Metrics, status: &SharedKernelStatus) {
    let unresolved = kernel.unresolved();
    metrics.kernel_synced(took, kernel.installed(), unresolved.len());
    let mut s = status.lock().unwrap_or_else(|e| e.into_inner());
    s.enabled = true;
    s.installed = kernel.installed();
    s.unresolved = unresolved;
}

/// Removes the control socket file when the agent exits.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_control(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| {
            format!("creating the directory of status.socket {}", dir.display())
        })?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another ferrovia agent answers on {}; stop it or give this one another status.socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path)
        .with_context(|| format!("listening on status.socket {}", path.display()))
}

async fn serve_control(
    listener: UnixListener,
    handle: Handle,
    node: NodeInfo,
    kstatus: SharedKernelStatus,
    cni_ctx: Arc<crate::cni::agent::CniContext>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handle.clone();
                let n = node.clone();
                let k = kstatus.clone();
                let c = cni_ctx.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, h, n, k, c).await {
                        warn!(error = %e, "control socket request failed");
                    }
                });
            }
            Err(e) => {
                error!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(
    stream: UnixStream,
    handle: Handle,
    node: NodeInfo,
    kstatus: SharedKernelStatus,
    cni_ctx: Arc<crate::cni::agent::CniContext>,
) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(1024 * 1024);
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => serde_json::to_vec(&status(&handle, node, &kstatus).await?)?,
        Ok(Request::Routes) => serde_json::to_vec(&routes(&handle).await?)?,
        Ok(Request::Cni(r)) => serde_json::to_vec(&crate::cni::agent::handle(r, &cni_ctx).await)?,
        Err(e) => serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?,
    };
    wr.write_all(&reply).await?;
    wr.shutdown().await?;
    Ok(())
}

async fn status(
    handle: &Handle,
    node: NodeInfo,
    kstatus: &SharedKernelStatus,
) -> Result<StatusReply> {
    let (installed, unresolved) = {
        let k = kstatus.lock().unwrap_or_else(|e| e.into_inner());
        let unresolved: Vec<Unresolved> = k
            .unresolved
            .iter()
            .map(|(p, hops)| Unresolved {
                prefix: p.to_string(),
                next_hops: hops.iter().map(|h| h.to_string()).collect(),
            })
            .collect();
        (k.enabled.then_some(k.installed), unresolved)
    };
    let reply = handle
        .query(move |s: &mut Speaker| {
            let peers = s
                .peer_status()
                .into_iter()
                .map(|p| PeerInfo {
                    address: p.config.address.to_string(),
                    as_number: p.config.remote_as,
                    kind: p.config.kind.clone(),
                    session: if p.ebgp { "eBGP" } else { "iBGP" }.into(),
                    state: p.state.name().into(),
                    since: p
                        .stats
                        .since
                        .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                    prefixes_received: p.stats.prefixes_received,
                    prefixes_sent: p.stats.prefixes_sent,
                    updates_received: p.stats.updates_received,
                    updates_sent: p.stats.updates_sent,
                    peer_router_id: p.peer_id.map(|i| i.to_string()),
                    families: p.families.iter().map(|f| family_name(*f).into()).collect(),
                    last_error: p.last_error,
                })
                .collect();
            StatusReply {
                node,
                peers,
                routes: RouteCounts {
                    loc_rib: s.loc_rib().len(),
                    originated: s.originated().count(),
                    installed,
                    unresolved,
                },
            }
        })
        .await?;
    Ok(reply)
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4Unicast => "ipv4-unicast",
        Family::Ipv6Unicast => "ipv6-unicast",
    }
}

async fn routes(handle: &Handle) -> Result<Vec<RouteInfo>> {
    let mut routes = handle
        .query(|s: &mut Speaker| {
            s.loc_rib()
                .iter()
                .map(|(prefix, best)| {
                    let a = &best.best.route.attrs;
                    RouteInfo {
                        prefix: prefix.to_string(),
                        next_hops: match best.best.source {
                            Source::Local => Vec::new(),
                            Source::Peer(_) => {
                                best.next_hops.iter().map(|h| h.to_string()).collect()
                            }
                        },
                        as_path: a
                            .as_path
                            .iter()
                            .flat_map(|s| match s {
                                AsSegment::Sequence(v) | AsSegment::Set(v) => v.clone(),
                            })
                            .collect(),
                        local_pref: a.local_pref,
                        med: a.med,
                        origin: match a.origin {
                            Origin::Igp => "IGP",
                            Origin::Egp => "EGP",
                            Origin::Incomplete => "Incomplete",
                        }
                        .into(),
                        communities: a.communities.iter().map(|c| format_community(*c)).collect(),
                        peer: match best.best.source {
                            Source::Local => None,
                            Source::Peer(p) => Some(p.to_string()),
                        },
                    }
                })
                .collect::<Vec<_>>()
        })
        .await?;
    routes.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(routes)
}
