//! The BGP speaker task: the sans-IO speaker under its tokio driver, with the configuration
//! file's peers and originated prefixes.

use crate::config::Loaded;
use anyhow::{Context, Result};
use ferrovia_bgp::driver::{self, DriverConfig, Handle, PeerRange, PeerSpec};
use ferrovia_bgp::message::Family;
use ferrovia_bgp::speaker::{Event, PeerConfig, Speaker, SpeakerConfig};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The longest End-of-RIB waits for the announce task's first pass (a datastore that does
/// not answer must not keep it from our peers for ever).
const END_OF_RIB_HOLD: Duration = Duration::from_secs(10);

/// Lets End-of-RIB go to the peers: everything we originate is announced.
pub async fn release_end_of_rib(handle: &Handle) -> Result<()> {
    handle
        .query(|s: &mut Speaker| s.hold_end_of_rib(false))
        .await
        .context("releasing End-of-RIB in the BGP speaker")
}

/// The peers of the configuration file (`bgp.peers`).
pub fn file_peers(loaded: &Loaded) -> Vec<PeerSpec> {
    let cfg = &loaded.config;
    let pools = cfg.pool_prefixes();
    cfg.bgp
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
                route_reflector_client: p.route_reflector_client,
                // Configuration-file peers are outside the cluster.
                policy: p.safety().policy(true, &pools),
            },
            port: p.port,
            password: pw.clone(),
            ttl_security: p.ttl_security,
            // Checked when the configuration was loaded.
            bfd: p.bfd.enabled.then(|| p.bfd.timing().ok()).flatten(),
        })
        .collect()
}

/// The configuration file's peer ranges (`bgp.peerRanges`).
pub fn peer_ranges(loaded: &Loaded) -> Vec<PeerRange> {
    let cfg = &loaded.config;
    cfg.bgp
        .peer_ranges
        .iter()
        .zip(&loaded.range_passwords)
        .map(|(r, pw)| PeerRange {
            cidr: r.cidr,
            template: PeerSpec {
                config: PeerConfig {
                    address: r.cidr.network(),
                    remote_as: r.as_number,
                    hold_time: r.hold_time.unwrap_or(cfg.bgp.hold_time),
                    connect_retry: Duration::from_secs(cfg.bgp.connect_retry),
                    passive: true,
                    kind: format!("range {}", r.cidr),
                    route_reflector_client: r.route_reflector_client,
                    // Ranges are for the cluster's own nodes (reflector clients): no
                    // outside-peer protections.
                    policy: Default::default(),
                },
                port: 179,
                password: pw.clone(),
                bfd: None,
                ttl_security: None,
            },
        })
        .collect()
}

/// Starts the speaker: it listens (when `bgp.listen` is on) and knows `peers` when this
/// returns. `events` receives Loc-RIB change signals (for the kernel task). `restarting`:
/// this start is a graceful restart (see `restart::verdict`), so the OPENs carry the Restart
/// State and Forwarding State bits.
pub async fn start(
    loaded: &Loaded,
    peers: Vec<PeerSpec>,
    events: Option<mpsc::UnboundedSender<Event>>,
    restarting: bool,
) -> Result<(Handle, JoinHandle<()>)> {
    let cfg = &loaded.config;
    let v4 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V4(v) => Some(*v),
        _ => None,
    });
    let v6 = cfg.node.addresses.iter().find_map(|a| match a {
        IpAddr::V6(v) => Some(*v),
        _ => None,
    });
    let mut speaker = Speaker::new(SpeakerConfig {
        local_as: cfg.node.as_number,
        router_id: cfg.node.router_id,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        graceful_restart: Some(cfg.bgp.graceful_restart_time),
        next_hop_v4: v4.or(Some(cfg.node.router_id)),
        next_hop_v6: v6,
        cluster_id: cfg.bgp.route_reflector.as_ref().map(|r| r.cluster_id),
    });
    speaker.set_restarting(restarting);
    // End-of-RIB only once we originate everything (see `hold_end_of_rib`): released below
    // without a datastore, by the announce task's first pass with one, or at the latest
    // after END_OF_RIB_HOLD.
    speaker.hold_end_of_rib(true);
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
            peer_ranges: peer_ranges(loaded),
        },
        peers,
        events,
    )
    .await
    .context("starting the BGP speaker")?;
    for (prefix, communities) in &loaded.originate {
        handle.originate(*prefix, communities.clone()).await?;
    }
    if cfg.datastore.is_none() {
        release_end_of_rib(&handle).await?;
    } else {
        let h = handle.clone();
        tokio::spawn(async move {
            tokio::time::sleep(END_OF_RIB_HOLD).await;
            if h.query(|s: &mut Speaker| s.hold_end_of_rib(false))
                .await
                .is_ok()
            {
                tracing::debug!("End-of-RIB released after {END_OF_RIB_HOLD:?} at the latest");
            }
        });
    }
    Ok((handle, task))
}
