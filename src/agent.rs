//! `ferrovia agent`: runs the BGP speaker with the configured peers and prefixes, and
//! answers on the control socket until SIGTERM or SIGINT.

use crate::config::{format_community, Loaded};
use crate::control::{NodeInfo, PeerInfo, Request, RouteCounts, RouteInfo, StatusReply};
use anyhow::{bail, Context, Result};
use ferrovia_bgp::driver::{self, DriverConfig, Handle, PeerSpec};
use ferrovia_bgp::message::{AsSegment, Family, Origin};
use ferrovia_bgp::rib::Source;
use ferrovia_bgp::speaker::{PeerConfig, Speaker, SpeakerConfig};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

/// Runs the agent until a termination signal.
pub async fn run(loaded: Loaded) -> Result<()> {
    let cfg = &loaded.config;
    let socket = cfg.status.socket.clone();
    let listener = bind_control(&socket)?;
    let _socket_guard = RemoveOnDrop(socket.clone());

    let v4 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    });
    let v6 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        _ => None,
    });
    let speaker = Speaker::new(SpeakerConfig {
        local_as: cfg.node.as_number,
        router_id: cfg.node.router_id,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(cfg.bgp.graceful_restart_time),
        next_hop_v4: v4.or(Some(cfg.node.router_id)),
        next_hop_v6: v6,
    });
    let peers: Vec<PeerSpec> = cfg
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
    let (handle, task) = driver::spawn(
        speaker,
        DriverConfig {
            listen,
            connect_timeout: Duration::from_secs(10),
        },
        peers,
        None,
    )
    .await
    .context("starting the BGP speaker")?;
    for (prefix, communities) in &loaded.originate {
        handle.originate(*prefix, communities.clone()).await?;
    }
    info!(
        node = %cfg.node.name,
        asn = cfg.node.as_number,
        router_id = %cfg.node.router_id,
        peers = cfg.bgp.peers.len(),
        originated = loaded.originate.len(),
        socket = %socket.display(),
        "ferrovia agent started"
    );

    let node = NodeInfo {
        name: cfg.node.name.clone(),
        as_number: cfg.node.as_number,
        router_id: cfg.node.router_id.to_string(),
    };
    let control = tokio::spawn(serve_control(listener, handle.clone(), node));

    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: closing every BGP session with CEASE"),
        _ = int.recv() => info!("SIGINT: closing every BGP session with CEASE"),
        r = task => {
            control.abort();
            bail!("the BGP speaker stopped unexpectedly: {r:?}");
        }
    }
    handle.shutdown().await;
    control.abort();
    info!("ferrovia agent stopped");
    Ok(())
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

async fn serve_control(listener: UnixListener, handle: Handle, node: NodeInfo) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let h = handle.clone();
                let n = node.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, h, n).await {
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

async fn answer(stream: UnixStream, handle: Handle, node: NodeInfo) -> Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd).take(64 * 1024);
    tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await??;
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => serde_json::to_vec(&status(&handle, node).await?)?,
        Ok(Request::Routes) => serde_json::to_vec(&routes(&handle).await?)?,
        Err(e) => serde_json::to_vec(&serde_json::json!({ "error": format!("bad request: {e}") }))?,
    };
    wr.write_all(&reply).await?;
    wr.shutdown().await?;
    Ok(())
}

use tokio::io::AsyncReadExt as _;

async fn status(handle: &Handle, node: NodeInfo) -> Result<StatusReply> {
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
