//! Prometheus metrics and health endpoints on `metrics.listen`:
//! `/metrics` (exposition format), `/healthz` (the agent's loop answers), `/readyz` (every
//! configured peer has been tried, the kernel is in sync, End-of-RIB went both ways with
//! every peer — waited for at most the graceful restart time after start — and none of the
//! agent's tasks has ended).
//!
//! Peer figures are read from the speaker at scrape time, so they always match
//! `ferrovia status`; counters advance by the difference since the previous scrape.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use ferrovia_bgp::driver::Handle;
use ferrovia_bgp::fsm::State as BgpState;
use ferrovia_bgp::policy::Rejected;
use ferrovia_bgp::speaker::{PeerStatus, Speaker};
use ferrovia_ipam::{Ipam, IpamCounters};
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    peer_state: IntGaugeVec,
    peer_up: IntGaugeVec,
    prefixes_received: IntGaugeVec,
    prefixes_sent: IntGaugeVec,
    prefixes_stale: IntGaugeVec,
    updates_received: IntCounterVec,
    updates_sent: IntCounterVec,
    transitions: IntCounterVec,
    refused: IntCounterVec,
    max_prefixes_exceeded: IntCounterVec,
    routes_installed: IntGauge,
    routes_unresolved: IntGauge,
    loc_rib: IntGauge,
    kernel_sync: Histogram,
    ipam_block_writes: IntCounter,
    ipam_conflicts: IntCounter,
    ipam_batches: IntCounter,
    ipam_batched: IntCounter,
    leaks_found: IntCounter,
    leaks_released: IntCounter,
    leak_suspects: IntGauge,
    /// Last counter values seen per peer, to advance counters by differences.
    last: Mutex<HashMap<String, [u64; 4]>>,
    /// Last IPAM counters seen.
    last_ipam: Mutex<IpamCounters>,
    /// Last refused-prefix counts seen per peer and reason.
    last_refused: Mutex<HashMap<(String, Rejected), u64>>,
    bfd_state: IntGaugeVec,
    bfd_up: IntGaugeVec,
    bfd_failures: IntCounterVec,
    /// Last BFD failure count seen per peer with BFD on.
    bfd_last: Mutex<HashMap<String, (String, u64)>>,
}

const PEER_LABELS: &[&str] = &["peer", "type"];
const REFUSED_LABELS: &[&str] = &["peer", "type", "reason"];
const PEER_KINDS: [&str; 3] = ["global", "mesh", "node"];

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let gv = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), PEER_LABELS);
        let cv = |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), PEER_LABELS);
        let m = Metrics {
            peer_state: gv(
                "ferrovia_bgp_peer_state",
                "BGP session state per RFC 4271: 1 Idle, 2 Connect, 3 Active, 4 OpenSent, 5 OpenConfirm, 6 Established.",
            )?,
            peer_up: gv("ferrovia_bgp_peer_up", "1 when the BGP session is Established.")?,
            prefixes_received: gv(
                "ferrovia_bgp_prefixes_received",
                "Prefixes in the peer's Adj-RIB-In after import policy.",
            )?,
            prefixes_sent: gv(
                "ferrovia_bgp_prefixes_sent",
                "Prefixes in the peer's Adj-RIB-Out.",
            )?,
            prefixes_stale: gv(
                "ferrovia_bgp_prefixes_stale",
                "Prefixes of the peer kept as stale by graceful restart (RFC 4724): its session dropped, or it came back and has not refreshed them yet.",
            )?,
            updates_received: cv(
                "ferrovia_bgp_updates_received_total",
                "UPDATE messages received from the peer.",
            )?,
            updates_sent: cv(
                "ferrovia_bgp_updates_sent_total",
                "UPDATE messages sent to the peer.",
            )?,
            transitions: cv(
                "ferrovia_bgp_fsm_transitions_total",
                "BGP session state changes.",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "ferrovia_bgp_prefixes_refused_total",
                    "Announced prefixes refused by import policy, by reason: as_loop, originator_loop, bad_next_hop, default_route, own_pool (inside the cluster's pod pools, from a peer outside the cluster), import_list.",
                ),
                REFUSED_LABELS,
            )?,
            max_prefixes_exceeded: cv(
                "ferrovia_bgp_max_prefixes_exceeded_total",
                "Times the peer went over its maxPrefixes limit (warned, or the session was closed with CEASE 6/1).",
            )?,
            routes_installed: IntGauge::new(
                "ferrovia_kernel_routes_installed",
                "Routes with ferrovia's protocol number in the kernel table.",
            )?,
            routes_unresolved: IntGauge::new(
                "ferrovia_kernel_routes_unresolved",
                "Selected routes not installed because their next hop is unreachable.",
            )?,
            loc_rib: IntGauge::new("ferrovia_bgp_loc_rib_prefixes", "Prefixes in the Loc-RIB.")?,
            kernel_sync: Histogram::with_opts(
                HistogramOpts::new(
                    "ferrovia_kernel_sync_duration_seconds",
                    "Time to apply one batch of route changes to the kernel.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            ipam_block_writes: IntCounter::new(
                "ferrovia_ipam_block_writes_total",
                "IPAM block writes to the datastore (claims, assignments, releases).",
            )?,
            ipam_conflicts: IntCounter::new(
                "ferrovia_ipam_conflicts_retried_total",
                "IPAM datastore writes that lost a compare-and-swap race and were retried.",
            )?,
            ipam_batches: IntCounter::new(
                "ferrovia_ipam_assign_batches_total",
                "Batches of concurrent CNI ADD assignments written together (group commit).",
            )?,
            ipam_batched: IntCounter::new(
                "ferrovia_ipam_batched_assignments_total",
                "CNI ADD assignments made in batches (group commit).",
            )?,
            leaks_found: IntCounter::new(
                "ferrovia_ipam_leaks_found_total",
                "Pods found gone (or re-created with another UID) while holding an address of this node: leak collection's grace period started.",
            )?,
            leaks_released: IntCounter::new(
                "ferrovia_ipam_leaks_released_total",
                "Addresses of pods gone for the grace period released by leak collection (counted per handle).",
            )?,
            leak_suspects: IntGauge::new(
                "ferrovia_ipam_leak_suspects",
                "Handles whose pod is gone, waiting for the leak collection grace period (as of the last sweep).",
            )?,
            last: Mutex::new(HashMap::new()),
            last_ipam: Mutex::new(IpamCounters::default()),
            last_refused: Mutex::new(HashMap::new()),
            bfd_state: gv(
                "ferrovia_bfd_session_state",
                "BFD session state per RFC 5880: 0 AdminDown, 1 Down, 2 Init, 3 Up (peers with BFD on).",
            )?,
            bfd_up: gv("ferrovia_bfd_session_up", "1 when the peer's BFD session is Up.")?,
            bfd_failures: cv(
                "ferrovia_bfd_session_failures_total",
                "Times the BFD session left Up because the path failed; each took the BGP session down.",
            )?,
            bfd_last: Mutex::new(HashMap::new()),
            registry,
        };
        m.registry.register(Box::new(m.peer_state.clone()))?;
        m.registry.register(Box::new(m.peer_up.clone()))?;
        m.registry.register(Box::new(m.prefixes_received.clone()))?;
        m.registry.register(Box::new(m.prefixes_sent.clone()))?;
        m.registry.register(Box::new(m.prefixes_stale.clone()))?;
        m.registry.register(Box::new(m.updates_received.clone()))?;
        m.registry.register(Box::new(m.updates_sent.clone()))?;
        m.registry.register(Box::new(m.transitions.clone()))?;
        m.registry.register(Box::new(m.refused.clone()))?;
        m.registry
            .register(Box::new(m.max_prefixes_exceeded.clone()))?;
        m.registry.register(Box::new(m.routes_installed.clone()))?;
        m.registry.register(Box::new(m.routes_unresolved.clone()))?;
        m.registry.register(Box::new(m.loc_rib.clone()))?;
        m.registry.register(Box::new(m.kernel_sync.clone()))?;
        m.registry.register(Box::new(m.ipam_block_writes.clone()))?;
        m.registry.register(Box::new(m.ipam_conflicts.clone()))?;
        m.registry.register(Box::new(m.ipam_batches.clone()))?;
        m.registry.register(Box::new(m.ipam_batched.clone()))?;
        m.registry.register(Box::new(m.leaks_found.clone()))?;
        m.registry.register(Box::new(m.leaks_released.clone()))?;
        m.registry.register(Box::new(m.leak_suspects.clone()))?;
        m.registry.register(Box::new(m.bfd_state.clone()))?;
        m.registry.register(Box::new(m.bfd_up.clone()))?;
        m.registry.register(Box::new(m.bfd_failures.clone()))?;
        Ok(m)
    }

    /// Records one kernel sync.
    pub fn kernel_synced(&self, took: Duration, installed: usize, unresolved: usize) {
        self.kernel_sync.observe(took.as_secs_f64());
        self.routes_installed.set(installed as i64);
        self.routes_unresolved.set(unresolved as i64);
    }

    /// Brings the peer metrics in line with the speaker's view.
    pub fn observe(&self, peers: &[PeerStatus], loc_rib: usize) {
        self.loc_rib.set(loc_rib as i64);
        self.observe_bfd(peers);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = Vec::new();
        for p in peers {
            let peer = p.config.address.to_string();
            let labels = [peer.as_str(), p.config.kind.as_str()];
            self.peer_state
                .with_label_values(&labels)
                .set(state_number(p.state));
            self.peer_up
                .with_label_values(&labels)
                .set(i64::from(p.state == BgpState::Established));
            self.prefixes_received
                .with_label_values(&labels)
                .set(p.stats.prefixes_received as i64);
            self.prefixes_sent
                .with_label_values(&labels)
                .set(p.stats.prefixes_sent as i64);
            self.prefixes_stale
                .with_label_values(&labels)
                .set(p.stats.stale_prefixes as i64);
            let now = [
                p.stats.updates_received,
                p.stats.updates_sent,
                p.stats.transitions,
                p.stats.max_prefixes_exceeded,
            ];
            let before = last.get(&peer).copied().unwrap_or([0; 4]);
            let counters = [
                &self.updates_received,
                &self.updates_sent,
                &self.transitions,
                &self.max_prefixes_exceeded,
            ];
            for ((c, n), b) in counters.iter().zip(now).zip(before) {
                c.with_label_values(&labels).inc_by(n.saturating_sub(b));
            }
            {
                let mut last_refused = self.last_refused.lock().unwrap_or_else(|e| e.into_inner());
                for why in Rejected::ALL {
                    let n = p.stats.refused.get(&why).copied().unwrap_or(0);
                    let b = last_refused.insert((peer.clone(), why), n).unwrap_or(0);
                    self.refused
                        .with_label_values(&[peer.as_str(), p.config.kind.as_str(), why.name()])
                        .inc_by(n.saturating_sub(b));
                }
            }
            last.insert(peer.clone(), now);
            seen.push((peer, p.config.kind.clone()));
        }
        // Peers that are gone lose their series.
        let gone: Vec<String> = last
            .keys()
            .filter(|k| !seen.iter().any(|(p, _)| p == *k))
            .cloned()
            .collect();
        for g in gone {
            last.remove(&g);
            for vec in [
                &self.peer_state,
                &self.peer_up,
                &self.prefixes_received,
                &self.prefixes_sent,
                &self.prefixes_stale,
            ] {
                remove_peer_series(vec.clone(), &g);
            }
            for vec in [
                &self.updates_received,
                &self.updates_sent,
                &self.transitions,
                &self.max_prefixes_exceeded,
            ] {
                remove_peer_counter_series(vec.clone(), &g);
            }
            let mut last_refused = self.last_refused.lock().unwrap_or_else(|e| e.into_inner());
            for why in Rejected::ALL {
                last_refused.remove(&(g.clone(), why));
                for kind in PEER_KINDS {
                    let _ = self.refused.remove_label_values(&[&g, kind, why.name()]);
                }
            }
        }
    }

    /// Brings the IPAM counters in line with IPAM's own.
    pub fn observe_ipam(&self, now: IpamCounters) {
        let mut last = self.last_ipam.lock().unwrap_or_else(|e| e.into_inner());
        self.ipam_block_writes
            .inc_by(now.block_writes.saturating_sub(last.block_writes));
        self.ipam_conflicts
            .inc_by(now.conflicts_retried.saturating_sub(last.conflicts_retried));
        self.ipam_batches
            .inc_by(now.batches.saturating_sub(last.batches));
        self.ipam_batched.inc_by(
            now.batched_assignments
                .saturating_sub(last.batched_assignments),
        );
        self.leaks_found
            .inc_by(now.leaks_found.saturating_sub(last.leaks_found));
        self.leaks_released
            .inc_by(now.leaks_released.saturating_sub(last.leaks_released));
        self.leak_suspects
            .set(i64::try_from(now.leak_suspects).unwrap_or(i64::MAX));
        *last = now;
    }

    /// BFD series for the peers with BFD on; a peer that loses BFD (or goes) loses them.
    fn observe_bfd(&self, peers: &[PeerStatus]) {
        let mut last = self.bfd_last.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = Vec::new();
        for p in peers {
            let Some(b) = &p.bfd else { continue };
            let peer = p.config.address.to_string();
            let labels = [peer.as_str(), p.config.kind.as_str()];
            self.bfd_state
                .with_label_values(&labels)
                .set(i64::from(b.state.bits()));
            self.bfd_up
                .with_label_values(&labels)
                .set(i64::from(b.state == ferrovia_bgp::bfd::State::Up));
            let before = last.get(&peer).map(|(_, n)| *n).unwrap_or(0);
            self.bfd_failures
                .with_label_values(&labels)
                .inc_by(b.failures.saturating_sub(before));
            last.insert(peer.clone(), (p.config.kind.clone(), b.failures));
            seen.push(peer);
        }
        let gone: Vec<(String, String)> = last
            .iter()
            .filter(|(k, _)| !seen.contains(k))
            .map(|(k, (kind, _))| (k.clone(), kind.clone()))
            .collect();
        for (peer, kind) in gone {
            last.remove(&peer);
            let _ = self.bfd_state.remove_label_values(&[&peer, &kind]);
            let _ = self.bfd_up.remove_label_values(&[&peer, &kind]);
            let _ = self.bfd_failures.remove_label_values(&[&peer, &kind]);
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

fn remove_peer_series(vec: IntGaugeVec, peer: &str) {
    for kind in PEER_KINDS {
        let _ = vec.remove_label_values(&[peer, kind]);
    }
}

fn remove_peer_counter_series(vec: IntCounterVec, peer: &str) {
    for kind in PEER_KINDS {
        let _ = vec.remove_label_values(&[peer, kind]);
    }
}

/// RFC 4271 state as the number documented in the metric's help.
pub fn state_number(s: BgpState) -> i64 {
    match s {
        BgpState::Idle => 1,
        BgpState::Connect => 2,
        BgpState::Active => 3,
        BgpState::OpenSent => 4,
        BgpState::OpenConfirm => 5,
        BgpState::Established => 6,
    }
}

/// Readiness, set by the agent: the kernel is in sync after its first reconciliation and
/// after any error has been repaired; once one of the agent's tasks has ended, never again.
#[derive(Default)]
pub struct Health {
    kernel_in_sync: std::sync::atomic::AtomicBool,
    failed: Mutex<Option<String>>,
    /// Until then, readiness also waits for End-of-RIB both ways with every peer (the
    /// initial exchange after a start); `None` once it happened or the time is over.
    bgp_sync_until: Mutex<Option<std::time::Instant>>,
    /// The speaker does not know all its peers yet (the datastore's mesh is read after the
    /// speaker starts): no peers is not "End-of-RIB with every peer" meanwhile.
    peers_pending: std::sync::atomic::AtomicBool,
}

impl Health {
    /// The speaker's peers are still being read (from the datastore): until
    /// [`Health::peers_configured`], End-of-RIB with every peer cannot have happened.
    pub fn wait_for_peers(&self) {
        self.peers_pending
            .store(true, std::sync::atomic::Ordering::Release);
    }
    /// The speaker has every peer the configuration and the datastore ask for.
    pub fn peers_configured(&self) {
        self.peers_pending
            .store(false, std::sync::atomic::Ordering::Release);
    }
    /// Whether the speaker's peers are still being read.
    pub fn peers_pending(&self) -> bool {
        self.peers_pending
            .load(std::sync::atomic::Ordering::Acquire)
    }
    /// Readiness waits for End-of-RIB both ways with every peer, at most until `until`.
    pub fn wait_for_bgp_sync(&self, until: std::time::Instant) {
        *self
            .bgp_sync_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(until);
    }
    /// Peers that hold readiness up: not Established with End-of-RIB both ways, while the
    /// wait lasts. Once every peer got there the wait is over for good (a later flap does
    /// not make the agent unready).
    fn unsynchronised(&self, peers: &[PeerStatus]) -> Vec<String> {
        let mut until = self
            .bgp_sync_until
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let Some(t) = *until else {
            return Vec::new();
        };
        let mut missing: Vec<String> = peers
            .iter()
            .filter(|p| {
                !(p.state == BgpState::Established && p.stats.eor_sent && p.stats.eor_received)
            })
            .map(|p| p.config.address.to_string())
            .collect();
        if self.peers_pending() {
            missing.push("the peers not read from the datastore yet".to_string());
        }
        if missing.is_empty() || std::time::Instant::now() >= t {
            *until = None;
            return Vec::new();
        }
        missing
    }
    pub fn set_kernel_in_sync(&self, v: bool) {
        self.kernel_in_sync
            .store(v, std::sync::atomic::Ordering::Relaxed);
    }
    pub fn kernel_in_sync(&self) -> bool {
        self.kernel_in_sync
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    /// One of the agent's tasks ended (`why` says which and how): not ready from now on.
    pub fn set_failed(&self, why: String) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(why);
    }
    /// Why the agent is failing, once a task has ended.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What the HTTP handlers need.
#[derive(Clone)]
pub struct HttpState {
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub bgp: Handle,
    /// The agent's IPAM, when it assigns pod addresses.
    pub ipam: Option<Arc<Ipam>>,
}

/// Binds `listen`; the returned future serves `/metrics`, `/healthz` and `/readyz` until it
/// is dropped or the server fails.
pub async fn serve(
    listen: SocketAddr,
    state: HttpState,
) -> std::io::Result<impl std::future::Future<Output = std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    Ok(std::future::IntoFuture::into_future(axum::serve(
        listener, app,
    )))
}

async fn snapshot(bgp: &Handle) -> Option<(Vec<PeerStatus>, usize)> {
    bgp.query(|s: &mut Speaker| (s.peer_status(), s.loc_rib().len()))
        .await
        .ok()
}

async fn metrics(
    State(st): State<HttpState>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    if let Some((peers, loc_rib)) = snapshot(&st.bgp).await {
        st.metrics.observe(&peers, loc_rib);
    }
    if let Some(ipam) = &st.ipam {
        st.metrics.observe_ipam(ipam.counters());
    }
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
}

async fn healthz(State(st): State<HttpState>) -> (StatusCode, String) {
    match tokio::time::timeout(Duration::from_secs(2), snapshot(&st.bgp)).await {
        Ok(Some(_)) => (StatusCode::OK, "ok\n".into()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the BGP speaker does not answer\n".into(),
        ),
    }
}

async fn readyz(State(st): State<HttpState>) -> (StatusCode, String) {
    if let Some(why) = st.health.failed() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}; the agent is exiting\n"),
        );
    }
    let Ok(Some((peers, _))) =
        tokio::time::timeout(Duration::from_secs(2), snapshot(&st.bgp)).await
    else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the BGP speaker does not answer\n".into(),
        );
    };
    let untried: Vec<String> = peers
        .iter()
        .filter(|p| !p.tried)
        .map(|p| p.config.address.to_string())
        .collect();
    let mut why = Vec::new();
    if !untried.is_empty() {
        why.push(format!("peers not tried yet: {}", untried.join(", ")));
    }
    if !st.health.kernel_in_sync() {
        why.push("kernel routes not in sync yet".to_string());
    }
    let unsynchronised = st.health.unsynchronised(&peers);
    if !unsynchronised.is_empty() {
        why.push(format!(
            "End-of-RIB not exchanged yet with: {}",
            unsynchronised.join(", ")
        ));
    }
    if why.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrovia_bgp::speaker::{PeerConfig, PeerStats};

    fn peer(addr: &str, state: BgpState, received: usize, updates: u64) -> PeerStatus {
        PeerStatus {
            config: PeerConfig {
                address: addr.parse().expect("ip"),
                remote_as: 65000,
                hold_time: 90,
                connect_retry: Duration::from_secs(1),
                passive: false,
                kind: "mesh".into(),
                route_reflector_client: false,
                policy: Default::default(),
            },
            state,
            ebgp: true,
            tried: true,
            stats: PeerStats {
                updates_received: updates,
                prefixes_received: received,
                ..Default::default()
            },
            last_error: None,
            peer_id: None,
            families: vec![],
            restart_at: None,
            bfd: None,
        }
    }

    #[test]
    fn readiness_waits_for_the_peers_to_be_read_before_calling_no_peers_synchronised() {
        let health = Health::default();
        health.wait_for_bgp_sync(std::time::Instant::now() + Duration::from_secs(3600));
        health.wait_for_peers();
        assert_eq!(
            health.unsynchronised(&[]),
            vec!["the peers not read from the datastore yet".to_string()],
            "no peers yet is not End-of-RIB with every peer"
        );
        health.peers_configured();
        assert!(health.unsynchronised(&[]).is_empty());
    }

    #[test]
    fn bfd_series_follow_the_session_and_count_failures() {
        use ferrovia_bgp::bfd::{Diag, State};
        use ferrovia_bgp::speaker::BfdStatus;
        let bfd = |state: State, failures: u64| BfdStatus {
            state,
            diag: Diag::None,
            remote_state: state,
            remote_diag: Diag::None,
            local_discriminator: 1,
            remote_discriminator: 2,
            detection_time: Some(Duration::from_millis(900)),
            ups: 1,
            failures,
            holding_bgp: false,
        };
        let m = Metrics::new().expect("metrics");
        let mut p = peer("198.18.0.2", BgpState::Established, 0, 0);
        let plain = peer("198.18.0.3", BgpState::Established, 0, 0);
        p.bfd = Some(bfd(State::Up, 0));
        m.observe(&[p.clone(), plain.clone()], 0);
        let text = m.render();
        assert!(
            text.contains("ferrovia_bfd_session_state{peer=\"198.18.0.2\",type=\"mesh\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("ferrovia_bfd_session_up{peer=\"198.18.0.2\",type=\"mesh\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("ferrovia_bfd_session_state{peer=\"198.18.0.3\""),
            "no BFD series for a peer without BFD: {text}"
        );
        p.bfd = Some(bfd(State::Down, 2));
        m.observe(&[p.clone(), plain.clone()], 0);
        let text = m.render();
        assert!(
            text.contains("ferrovia_bfd_session_up{peer=\"198.18.0.2\",type=\"mesh\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrovia_bfd_session_failures_total{peer=\"198.18.0.2\",type=\"mesh\"} 2"
            ),
            "{text}"
        );
        p.bfd = None;
        m.observe(&[p, plain], 0);
        assert!(
            !m.render().contains("ferrovia_bfd_session_state{"),
            "BFD turned off: its series are gone"
        );
    }

    #[test]
    fn exposition_follows_the_speaker_and_drops_removed_peers() {
        let m = Metrics::new().expect("metrics");
        m.observe(&[peer("198.18.0.2", BgpState::Established, 3, 5)], 4);
        let mut later = peer("198.18.0.2", BgpState::Established, 3, 8);
        later.stats.refused.insert(Rejected::ProtectedPrefix, 2);
        later.stats.max_prefixes_exceeded = 1;
        m.observe(&[later], 4);
        m.kernel_synced(Duration::from_millis(2), 7, 1);
        let text = m.render();
        assert!(
            text.contains("ferrovia_bgp_peer_state{peer=\"198.18.0.2\",type=\"mesh\"} 6"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrovia_bgp_updates_received_total{peer=\"198.18.0.2\",type=\"mesh\"} 8"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferrovia_kernel_routes_installed 7"),
            "{text}"
        );
        assert!(
            text.contains("ferrovia_bgp_prefixes_refused_total{peer=\"198.18.0.2\",reason=\"own_pool\",type=\"mesh\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("ferrovia_bgp_prefixes_refused_total{peer=\"198.18.0.2\",reason=\"import_list\",type=\"mesh\"} 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "ferrovia_bgp_max_prefixes_exceeded_total{peer=\"198.18.0.2\",type=\"mesh\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("ferrovia_kernel_sync_duration_seconds_count 1"),
            "{text}"
        );
        m.observe(&[], 0);
        assert!(
            !m.render().contains("198.18.0.2"),
            "removed peer's series are gone"
        );
    }

    #[tokio::test]
    async fn readiness_turns_false_for_good_once_a_task_has_ended() {
        use ferrovia_bgp::driver::{self, DriverConfig};
        use ferrovia_bgp::message::Family;
        use ferrovia_bgp::speaker::SpeakerConfig;
        let speaker = Speaker::new(SpeakerConfig {
            local_as: 64512,
            router_id: "198.18.0.1".parse().expect("ip"),
            families: vec![Family::Ipv4Unicast],
            graceful_restart: None,
            next_hop_v4: None,
            next_hop_v6: None,
            cluster_id: None,
        });
        let config = DriverConfig {
            listen: None,
            connect_timeout: Duration::from_secs(10),
            peer_ranges: Vec::new(),
        };
        let (bgp, _task) = driver::spawn(speaker, config, Vec::new(), None)
            .await
            .expect("speaker");
        let health = Arc::new(Health::default());
        health.set_kernel_in_sync(true);
        let st = HttpState {
            metrics: Arc::new(Metrics::new().expect("metrics")),
            health: health.clone(),
            bgp: bgp.clone(),
            ipam: None,
        };
        let (code, body) = readyz(State(st.clone())).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        health.set_failed("the kernel task failed: netlink closed".into());
        health.set_failed("the mesh task failed: later".into());
        let (code, body) = readyz(State(st.clone())).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready: the kernel task failed: netlink closed; the agent is exiting\n"
        );
        health.set_kernel_in_sync(true);
        let (code, _) = readyz(State(st)).await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "stays false");
        bgp.shutdown().await;
    }
}
