//! The control socket server: `ferrovia status`, `ferrovia routes` and the CNI plugin's
//! requests (see `crate::control` for the protocol).

use super::kernel::SharedKernelStatus;
use super::DrainAsk;
use crate::config::format_community;
use crate::control::{
    NodeInfo, PeerInfo, Request, RouteCounts, RouteInfo, StatusReply, Unresolved,
};
use anyhow::{bail, Context, Result};
use ferrovia_bgp::driver::Handle;
use ferrovia_bgp::message::{AsSegment, Family, Origin};
use ferrovia_bgp::rib::{Best, Source};
use ferrovia_bgp::speaker::Speaker;
use ipnet::IpNet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, warn};

/// Removes the control socket file when the agent exits.
pub struct RemoveOnDrop(pub PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn bind_control(path: &Path) -> Result<UnixListener> {
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

pub async fn serve_control(
    listener: UnixListener,
    handle: Handle,
    node: NodeInfo,
    kstatus: SharedKernelStatus,
    cni_ctx: Arc<crate::cni::agent::CniContext>,
    drain: mpsc::Sender<DrainAsk>,
) -> Result<()> {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handle.clone();
                let n = node.clone();
                let k = kstatus.clone();
                let c = cni_ctx.clone();
                let d = drain.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, h, n, k, c, d).await {
                        warn!(error = %e, "control socket request failed");
                    }
                });
            }
            Err(e) if transient(&e) => {
                error!(error = %e, "control socket accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).context("accepting on the control socket"),
        }
    }
}

/// Accept errors that pass: out of descriptors or memory, or a client that gave up.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
        )
    )
}

async fn answer(
    stream: UnixStream,
    handle: Handle,
    node: NodeInfo,
    kstatus: SharedKernelStatus,
    cni_ctx: Arc<crate::cni::agent::CniContext>,
    drain: mpsc::Sender<DrainAsk>,
) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(1024 * 1024);
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => {
            let mut reply = status(&handle, node, &kstatus).await?;
            reply.ipam = cni_ctx.ipam.as_ref().map(|i| i.counters());
            serde_json::to_vec(&reply)?
        }
        Ok(Request::Routes) => serde_json::to_vec(&routes(&handle).await?)?,
        Ok(Request::Cni(r)) => serde_json::to_vec(&crate::cni::agent::handle(r, &cni_ctx).await)?,
        Ok(Request::Drain { node }) => {
            let (tx, rx) = oneshot::channel();
            let ask = DrainAsk { node, reply: tx };
            let answer = match drain.try_send(ask) {
                Ok(()) => rx.await.ok(),
                Err(_) => None,
            };
            let (reply, written) = match answer {
                Some((Ok(r), w)) => (serde_json::to_vec(&r)?, Some(w)),
                Some((Err(e), w)) => (
                    serde_json::to_vec(&serde_json::json!({ "error": e }))?,
                    Some(w),
                ),
                None => (
                    serde_json::to_vec(&serde_json::json!({
                        "error": "the agent is already stopping or draining; check its log"
                    }))?,
                    None,
                ),
            };
            wr.write_all(&reply).await?;
            wr.shutdown().await?;
            if let Some(w) = written {
                let _ = w.send(());
            }
            return Ok(());
        }
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
                    stale_prefixes: p.stats.stale_prefixes,
                    end_of_rib_sent: p.stats.eor_sent,
                    end_of_rib_received: p.stats.eor_received,
                    refused: p
                        .stats
                        .refused
                        .iter()
                        .map(|(r, n)| (r.name().to_string(), *n))
                        .collect(),
                    max_prefixes_exceeded: p.stats.max_prefixes_exceeded,
                    restart_in_seconds: p.restart_at.map(|t| {
                        t.saturating_duration_since(std::time::Instant::now())
                            .as_secs_f64()
                            .ceil() as u64
                    }),
                    bfd: p.bfd.map(|b| crate::control::BfdInfo {
                        state: b.state.name().into(),
                        diag: b.diag.name().into(),
                        remote_state: b.remote_state.name().into(),
                        remote_diag: b.remote_diag.name().into(),
                        local_discriminator: b.local_discriminator,
                        remote_discriminator: b.remote_discriminator,
                        detection_time_ms: b
                            .detection_time
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        ups: b.ups,
                        failures: b.failures,
                        holding_bgp: b.holding_bgp,
                    }),
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
                ipam: None,
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

/// Routes per query when listing the Loc-RIB: the speaker task serves its sessions
/// between pages instead of copying the whole table in one go.
const ROUTES_PAGE: usize = 4096;

fn route_info(prefix: IpNet, best: Best, stale: bool) -> RouteInfo {
    let a = &best.best.route.attrs;
    RouteInfo {
        prefix: prefix.to_string(),
        next_hops: match best.best.source {
            Source::Local => Vec::new(),
            Source::Peer(_) => best.next_hops.iter().map(|h| h.to_string()).collect(),
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
        stale,
    }
}

async fn routes(handle: &Handle) -> Result<Vec<RouteInfo>> {
    let mut routes = Vec::new();
    let mut after: Option<IpNet> = None;
    loop {
        let page = handle
            .query(move |s: &mut Speaker| {
                let page = s.loc_rib().page(after.as_ref(), ROUTES_PAGE);
                let last = page.last().map(|(p, _)| *p);
                let infos: Vec<RouteInfo> = page
                    .into_iter()
                    .map(|(p, b)| {
                        let stale = match b.best.source {
                            Source::Peer(a) => s.is_stale(a, &p),
                            Source::Local => false,
                        };
                        route_info(p, b, stale)
                    })
                    .collect();
                (last, infos)
            })
            .await?;
        let (Some(last), infos) = page else {
            break;
        };
        after = Some(last);
        routes.extend(infos);
    }
    routes.sort_by(|a, b| a.prefix.cmp(&b.prefix));
    Ok(routes)
}
