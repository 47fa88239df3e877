//! The real-peer scenarios, written once against `PeerDaemon` and run against BIRD, FRR and
//! GoBGP by tests/peer_*.rs. Topology: `Pair` — ferrovia in `f` (198.18.0.1, fd00:198:18::1),
//! the peer daemon in `p` (198.18.0.254, fd00:198:18::254), one IPv4 session carrying IPv4 and
//! IPv6 unicast.

use super::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A route as the peer daemon shows it, normalised.
#[derive(Clone, Debug, Default)]
pub struct PeerRoute {
    pub prefix: String,
    pub next_hops: Vec<String>,
    pub as_path: Vec<u32>,
    /// "asn:value"; None when the daemon's route listing does not show communities.
    pub communities: Option<Vec<String>>,
}

/// What a scenario needs from a peer daemon.
pub trait PeerDaemon {
    fn label(&self) -> String;
    /// Ok when the session with ferrovia is Established; Err(state/last error) otherwise.
    fn established(&self) -> Result<(), String>;
    /// Routes the daemon learned from ferrovia (198.18.0.1), by prefix.
    fn routes_from_ferrovia(&self) -> Result<BTreeMap<String, PeerRoute>, String>;
    /// Stops originating `prefix`.
    fn withdraw(&mut self, prefix: &str);
    /// SIGKILL the BGP process.
    fn kill(&mut self);
    /// Start it again after `kill` (same config, same routes, minus withdrawn ones).
    fn restart(&mut self);
    /// SIGSTOP / SIGCONT of the BGP process.
    fn freeze(&self);
    fn thaw(&self);
    /// The daemon's account of the last error / NOTIFICATION with ferrovia, lower-cased.
    fn last_error(&self) -> String;
}

/// How to build a peer daemon in namespace `ns` for a scenario.
pub struct PeerSpec {
    /// The peer's own AS.
    pub asn: u32,
    /// The AS the peer expects ferrovia to have.
    pub ferrovia_as: u32,
    pub router_id: String,
    pub password: Option<String>,
    pub hold_time: u32,
    pub originate: Vec<String>,
    /// GTSM on the peer's side: the hops it accepts (BIRD: `ttl security on`, with `multihop`
    /// above 1; FRR: `ttl-security hops`). None: off.
    pub gtsm: Option<u8>,
    /// eBGP multihop without GTSM (BIRD `multihop`, FRR `ebgp-multihop`).
    pub multihop: Option<u8>,
}

impl PeerSpec {
    pub fn new(asn: u32, ferrovia_as: u32) -> PeerSpec {
        PeerSpec {
            asn,
            ferrovia_as,
            router_id: PEER_V4.into(),
            password: None,
            hold_time: 9,
            originate: vec![P_V4.into(), P_V6.into()],
            gtsm: None,
            multihop: None,
        }
    }
}

pub type StartPeer = fn(&Netns, &PeerSpec) -> Box<dyn PeerDaemon>;

// ---------------------------------------------------------------- ferrovia-side observations

pub fn fer_established(f: &Ferrovia) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    if p["state"] == "Established" {
        Ok(p)
    } else {
        Err(format!("ferrovia peer state: {p}"))
    }
}

pub fn both_established(f: &Ferrovia, peer: &dyn PeerDaemon) -> Result<(), String> {
    let fs = fer_established(f);
    let ps = peer.established();
    match (fs, ps) {
        (Ok(_), Ok(())) => Ok(()),
        (fs, ps) => Err(format!("ferrovia: {fs:?}\n{}: {ps:?}", peer.label())),
    }
}

pub fn wait_established(f: &Ferrovia, peer: &dyn PeerDaemon) {
    wait_until(
        &format!("ferrovia and {} Established", peer.label()),
        ESTABLISH,
        POLL,
        || both_established(f, peer),
    );
}

/// ferrovia's Loc-RIB has exactly the peer-learned prefixes `want` (from 198.18.0.254), each
/// with the peer's next hop of the right family and `as_path`.
pub fn fer_has_peer_routes(f: &Ferrovia, want: &[&str], as_path: &[u32]) -> Result<(), String> {
    let routes = f.routes()?;
    let learned: Vec<&Value> = routes.iter().filter(|r| r["peer"] == PEER_V4).collect();
    let mut got: Vec<String> = learned
        .iter()
        .filter_map(|r| r["prefix"].as_str().map(str::to_string))
        .collect();
    got.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    if got != want_sorted {
        return Err(format!(
            "peer-learned prefixes {got:?}, want {want_sorted:?}; routes: {routes:#?}"
        ));
    }
    for r in learned {
        let prefix = r["prefix"].as_str().unwrap_or("");
        let nh_want = if prefix.contains(':') {
            PEER_V6
        } else {
            PEER_V4
        };
        let nhs: Vec<&str> = r["nextHops"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if !nhs.contains(&nh_want) {
            return Err(format!("{prefix}: nextHops {nhs:?} lack {nh_want}: {r}"));
        }
        let path: Vec<u64> = r["asPath"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        let want_path: Vec<u64> = as_path.iter().map(|&a| a as u64).collect();
        if path != want_path {
            return Err(format!(
                "{prefix}: asPath {path:?}, want {want_path:?}: {r}"
            ));
        }
        if r["origin"] != "IGP" {
            return Err(format!(
                "{prefix}: origin {} (peers originate IGP): {r}",
                r["origin"]
            ));
        }
    }
    Ok(())
}

/// ferrovia's status counters for the peer.
pub fn fer_counters(f: &Ferrovia, received: u64, sent: u64) -> Result<(), String> {
    let p = f.peer(PEER_V4)?;
    if p["prefixesReceived"] == received && p["prefixesSent"] == sent {
        Ok(())
    } else {
        Err(format!(
            "want prefixesReceived {received}, prefixesSent {sent}: {p}"
        ))
    }
}

/// The peer has exactly `want` from ferrovia, with ferrovia's next hop per family and AS path.
pub fn peer_has_fer_routes(
    peer: &dyn PeerDaemon,
    want: &[&str],
    as_path: &[u32],
) -> Result<(), String> {
    let r = peer.routes_from_ferrovia()?;
    let got: Vec<&String> = r.keys().collect();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    if got.iter().map(|s| s.as_str()).collect::<Vec<_>>()
        != want_sorted.iter().map(|s| s.as_str()).collect::<Vec<_>>()
    {
        return Err(format!(
            "{} has {got:?} from ferrovia, want {want_sorted:?}: {r:#?}",
            peer.label()
        ));
    }
    for (p, route) in &r {
        let nh = if p.contains(':') {
            FERROVIA_V6
        } else {
            FERROVIA_V4
        };
        if !route.next_hops.iter().any(|h| h == nh) {
            return Err(format!(
                "{p}: next hops {:?} lack {nh}: {route:?}",
                route.next_hops
            ));
        }
        if route.as_path != as_path {
            return Err(format!(
                "{p}: AS path {:?}, want {as_path:?}",
                route.as_path
            ));
        }
    }
    Ok(())
}

fn ebgp_paths(ebgp: bool) -> (Vec<u32>, Vec<u32>) {
    // (path of the peer's routes seen by ferrovia, path of ferrovia's routes seen by the peer)
    if ebgp {
        (vec![PEER_AS], vec![FERROVIA_AS])
    } else {
        (vec![], vec![])
    }
}

fn ferrovia_cfg(ebgp: bool, originate: &[&str]) -> FerroviaConfig {
    let peer_as = if ebgp { PEER_AS } else { FERROVIA_AS };
    FerroviaConfig::node1(FERROVIA_AS, peer_as, originate)
}

fn peer_spec(ebgp: bool) -> PeerSpec {
    let asn = if ebgp { PEER_AS } else { FERROVIA_AS };
    PeerSpec::new(asn, FERROVIA_AS)
}

// ---------------------------------------------------------------- scenarios

/// Session up both ways, v4+v6 routes both ways with next hops / AS paths / counters, a
/// withdrawal by the peer, SIGINT of ferrovia (CEASE, exit 0, the peer drops its routes; SIGTERM
/// is a graceful restart since issue 11), and a restart of ferrovia with fewer prefixes.
pub fn exchange_and_withdraw(tag: &str, start: StartPeer, ebgp: bool) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut peer = start(&t.p, &peer_spec(ebgp));
    let mut f = Ferrovia::start(&t.f, ferrovia_cfg(ebgp, &[F_V4, F_V6]));
    let (path_in, path_out) = ebgp_paths(ebgp);

    wait_established(&f, peer.as_ref());
    let st = f.peer(PEER_V4).expect("peer status");
    assert_eq!(
        st["session"],
        if ebgp { "eBGP" } else { "iBGP" },
        "session type in {st}"
    );
    assert_eq!(
        st["asNumber"],
        if ebgp { PEER_AS } else { FERROVIA_AS },
        "{st}"
    );
    assert!(
        st["since"].is_string(),
        "since should be set when Established: {st}"
    );
    let status = f.status().expect("status");
    assert_eq!(status["node"]["name"], "node1", "{status}");
    assert_eq!(status["node"]["asNumber"], FERROVIA_AS, "{status}");
    assert_eq!(status["node"]["routerId"], FERROVIA_V4, "{status}");

    wait_until(
        &format!("{} learns ferrovia's v4+v6 prefixes", peer.label()),
        PROPAGATE,
        POLL,
        || peer_has_fer_routes(peer.as_ref(), &[F_V4, F_V6], &path_out),
    );
    wait_until(
        "ferrovia learns the peer's v4+v6 prefixes",
        PROPAGATE,
        POLL,
        || {
            fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)?;
            fer_counters(&f, 2, 2)
        },
    );
    wait_until("ferrovia route counts", PROPAGATE, POLL, || {
        let s = f.status()?;
        if s["routes"]["locRib"] == 4 && s["routes"]["originated"] == 2 {
            Ok(())
        } else {
            Err(format!("{}", s["routes"]))
        }
    });
    eprintln!("status after exchange: {}", f.status().expect("status"));
    eprintln!("routes after exchange: {:?}", f.routes().expect("routes"));
    eprintln!(
        "{} has from ferrovia: {:?}",
        peer.label(),
        peer.routes_from_ferrovia()
    );
    let local = f.routes_for(F_V4).expect("routes");
    assert!(
        local.iter().any(|r| r["peer"].is_null()),
        "ferrovia's own {F_V4} should be in the Loc-RIB with peer null: {local:?}"
    );

    // Withdrawal by the peer.
    peer.withdraw(P_V6);
    wait_until(
        "ferrovia drops the prefix the peer withdrew",
        PROPAGATE,
        POLL,
        || {
            fer_has_peer_routes(&f, &[P_V4], &path_in)?;
            fer_counters(&f, 1, 2)
        },
    );
    both_established(&f, peer.as_ref()).expect("a withdrawal must not reset the session");

    // SIGINT: CEASE to the peer, exit 0, the peer drops ferrovia's routes.
    let t0 = Instant::now();
    let st = f.sigint();
    let took = t0.elapsed();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "ferrovia should exit 0 on SIGINT (None = still running after {START:?}, killed)"
    );
    wait_until(
        &format!("{} drops ferrovia's routes after SIGINT", peer.label()),
        PROPAGATE,
        POLL,
        || peer_has_fer_routes(peer.as_ref(), &[], &path_out),
    );
    let e = wait_until(
        &format!("{} saw a CEASE", peer.label()),
        PROPAGATE,
        POLL,
        || {
            let e = peer.last_error();
            if e.contains("cease") || e.contains("shutdown") || e.contains("6/2") {
                Ok(e)
            } else {
                Err(e)
            }
        },
    );
    eprintln!("{} after SIGINT ({took:?}): {e}", peer.label());

    // Restart with one prefix fewer: the peer ends up with only F_V4.
    f.restart_with(ferrovia_cfg(ebgp, &[F_V4]));
    wait_established(&f, peer.as_ref());
    wait_until(
        "peer has only ferrovia's remaining prefix",
        PROPAGATE,
        POLL,
        || peer_has_fer_routes(peer.as_ref(), &[F_V4], &path_out),
    );
    wait_until(
        "ferrovia re-learns the peer's prefix",
        PROPAGATE,
        POLL,
        || {
            fer_has_peer_routes(&f, &[P_V4], &path_in)?;
            fer_counters(&f, 1, 1)
        },
    );
}

/// The peer's BGP process is SIGKILLed: ferrovia drops its routes; the peer is started again:
/// ferrovia reconnects by itself and routes flow again both ways.
pub fn reconnect_after_peer_restart(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut peer = start(&t.p, &peer_spec(true));
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[F_V4, F_V6]));
    let (path_in, path_out) = ebgp_paths(true);
    wait_established(&f, peer.as_ref());
    wait_until("routes both ways", PROPAGATE, POLL, || {
        peer_has_fer_routes(peer.as_ref(), &[F_V4, F_V6], &path_out)?;
        fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)
    });

    peer.kill();
    wait_until(
        "ferrovia notices the dead peer and drops its routes",
        PROPAGATE,
        POLL,
        || {
            let p = f.peer(PEER_V4)?;
            if p["state"] == "Established" {
                return Err(format!("still Established: {p}"));
            }
            fer_has_peer_routes(&f, &[], &path_in)?;
            fer_counters(&f, 0, 0)
        },
    );

    peer.restart();
    wait_established(&f, peer.as_ref());
    wait_until(
        "routes both ways after the peer restarted",
        PROPAGATE,
        POLL,
        || {
            peer_has_fer_routes(peer.as_ref(), &[F_V4, F_V6], &path_out)?;
            fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)?;
            fer_counters(&f, 2, 2)
        },
    );
}

/// The peer is frozen (SIGSTOP): with holdTime 9 ferrovia sends Hold Timer Expired and drops the
/// peer's routes no earlier than ~6 s after the freeze (last KEEPALIVE up to 3 s before it);
/// the deadline is 9 s plus a margin generous for slow machines. After SIGCONT the session
/// comes back.
pub fn hold_timer_expiry(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let peer = start(&t.p, &peer_spec(true));
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[F_V4, F_V6]));
    let (path_in, _) = ebgp_paths(true);
    wait_established(&f, peer.as_ref());
    wait_until("ferrovia learns the peer's routes", PROPAGATE, POLL, || {
        fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)
    });

    struct Thaw<'a>(&'a dyn PeerDaemon);
    impl Drop for Thaw<'_> {
        fn drop(&mut self) {
            self.0.thaw();
        }
    }
    let t0 = Instant::now();
    peer.freeze();
    let thaw = Thaw(peer.as_ref());
    let dropped_after = wait_until(
        "ferrovia's hold timer expires and the frozen peer's routes vanish",
        Duration::from_secs(9) + PROPAGATE,
        Duration::from_millis(100),
        || {
            let p = f.peer(PEER_V4)?;
            if p["state"] == "Established" {
                return Err(format!("still Established: {p}"));
            }
            fer_has_peer_routes(&f, &[], &path_in)?;
            Ok(t0.elapsed())
        },
    );
    assert!(
        dropped_after >= Duration::from_secs(5),
        "session dropped {dropped_after:?} after the freeze: earlier than a 9 s hold timer allows"
    );
    let p = f.peer(PEER_V4).expect("peer status");
    eprintln!("dropped {dropped_after:?} after the freeze: {p}");
    let e = p["lastError"].as_str().unwrap_or("").to_lowercase();
    assert!(
        e.contains("hold") && (e.contains("4/0") || e.contains("expired")),
        "lastError should name the hold timer expiry (NOTIFICATION 4/0): {p}"
    );
    drop(thaw);
    wait_established(&f, peer.as_ref());
    wait_until(
        "ferrovia re-learns the routes after SIGCONT",
        PROPAGATE,
        POLL,
        || fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in),
    );
}

/// TCP MD5 with the same password on both sides: Established, routes flow.
pub fn md5_right_password(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.password = Some("s3cret-ferrovia".into());
    let peer = start(&t.p, &spec);
    let mut cfg = ferrovia_cfg(true, &[F_V4, F_V6]);
    cfg.peers[0].password = Some("s3cret-ferrovia".into());
    let f = Ferrovia::start(&t.f, cfg);
    let (path_in, path_out) = ebgp_paths(true);
    wait_established(&f, peer.as_ref());
    wait_until(
        "routes both ways over an MD5 session",
        PROPAGATE,
        POLL,
        || {
            peer_has_fer_routes(peer.as_ref(), &[F_V4, F_V6], &path_out)?;
            fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)
        },
    );
}

/// Different passwords: never Established, while the kernels drop segments for their MD5
/// signature again and again, and still not after a later, rejected attempt.
/// `fer_password`: None = ferrovia has no password at all, the peer has one.
pub fn md5_wrong_password(tag: &str, start: StartPeer, fer_password: Option<&str>) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.password = Some("the-right-one".into());
    let peer = start(&t.p, &spec);
    let mut cfg = ferrovia_cfg(true, &[F_V4, F_V6]);
    cfg.peers[0].password = fer_password.map(str::to_string);
    let f = Ferrovia::start(&t.f, cfg);
    let never_up = || -> Result<(), String> {
        let p = f.peer(PEER_V4)?;
        if p["state"] == "Established" || p["state"] == "OpenConfirm" {
            return Err(format!("ferrovia got to {}: {p}", p["state"]));
        }
        if peer.established().is_ok() {
            return Err(format!("{} is Established", peer.label()));
        }
        Ok(())
    };
    // Positive anchors instead of the passing of time: the two kernels' counters of TCP
    // segments dropped for their MD5 signature (wrong, missing or unexpected). Absence is
    // asserted at every poll, once segments were rejected, and again after more were.
    let rejected = || md5_rejections(&t.f) + md5_rejections(&t.p);
    let first = wait_until(
        "the kernels reject segments for their MD5 signature",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("a session with a wrong MD5 password: {e}");
            }
            match rejected() {
                0 => Err("no MD5 rejection counted yet".to_string()),
                n => Ok(n),
            }
        },
    );
    wait_until(
        "a later attempt rejected for its MD5 signature too",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("a session with a wrong MD5 password: {e}");
            }
            let n = rejected();
            if n > first {
                Ok(())
            } else {
                Err(format!("{n} MD5 rejections, {first} before"))
            }
        },
    );
    never_up().expect("no session with a wrong MD5 password");
    let routes = f.routes().expect("routes");
    assert!(
        routes.iter().all(|r| r["peer"].is_null()),
        "no learned routes expected: {routes:?}"
    );
}

/// TCP segments a namespace's kernel dropped for their MD5 signature: TcpExt's
/// TCPMD5NotFound, TCPMD5Unexpected and TCPMD5Failure.
fn md5_rejections(ns: &Netns) -> u64 {
    let text = String::from_utf8_lossy(&ns.exec(&["cat", "/proc/net/netstat"]).stdout).into_owned();
    let mut lines = text.lines();
    let mut total = 0;
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if matches!(n, "TCPMD5NotFound" | "TCPMD5Unexpected" | "TCPMD5Failure") {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// GTSM (RFC 5082) on both sides of a directly connected session: Established and routes
/// both ways. The peer drops whatever arrives below TTL 255, so this also shows that ferrovia
/// sends with 255 (on its own connections and on the listener's SYN-ACKs alike).
pub fn gtsm_one_hop_establishes(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.gtsm = Some(1);
    let peer = start(&t.p, &spec);
    let mut cfg = ferrovia_cfg(true, &[F_V4, F_V6]);
    cfg.peers[0].ttl_security = Some(1);
    let f = Ferrovia::start(&t.f, cfg);
    let (path_in, path_out) = ebgp_paths(true);
    wait_established(&f, peer.as_ref());
    wait_until(
        "routes both ways over a GTSM session",
        PROPAGATE,
        POLL,
        || {
            peer_has_fer_routes(peer.as_ref(), &[F_V4, F_V6], &path_out)?;
            fer_has_peer_routes(&f, &[P_V4, P_V6], &path_in)
        },
    );
    // No assertion on TCPMinTTLDrop here: a kernel's RST for a socket already gone (e.g. the
    // loser of a connection collision) leaves with the default TTL and is rightly dropped.
    eprintln!(
        "TTL drops one hop away: ferrovia {}, {} {}",
        min_ttl_drops(&t.f),
        peer.label(),
        min_ttl_drops(&t.p)
    );
}

/// The peer is two hops away (its packets arrive with TTL 254) and accepts two hops itself,
/// while ferrovia has `ttlSecurity: 1`: ferrovia's kernel drops the peer's segments, again
/// and again (its connections to ferrovia are closed for their SYN's TTL), and the session
/// never reaches OpenConfirm on ferrovia's side nor Established on either; no route goes
/// either way. Anchored on ferrovia's kernel counting the drops (TcpExt TCPMinTTLDrop), not
/// on time passing.
pub fn gtsm_two_hops_refused(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Routed::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.gtsm = Some(2);
    spec.originate = vec![P_V4.into()];
    let peer = start(&t.p, &spec);
    let mut cfg = ferrovia_cfg(true, &[F_V4]);
    cfg.peers[0].ttl_security = Some(1);
    let f = Ferrovia::start(&t.f, cfg);
    let never_up = || -> Result<(), String> {
        let p = f.peer(PEER_V4)?;
        if p["state"] == "Established" || p["state"] == "OpenConfirm" {
            return Err(format!("ferrovia got to {}: {p}", p["state"]));
        }
        if peer.established().is_ok() {
            return Err(format!("{} is Established", peer.label()));
        }
        let routes = f.routes()?;
        if routes.iter().any(|r| !r["peer"].is_null()) {
            return Err(format!("ferrovia learned routes: {routes:?}"));
        }
        let theirs = peer.routes_from_ferrovia()?;
        if !theirs.is_empty() {
            return Err(format!("{} learned {theirs:?}", peer.label()));
        }
        Ok(())
    };
    let first = wait_until(
        "ferrovia's kernel drops the peer's segments below TTL 255",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("a GTSM session with a peer two hops away: {e}");
            }
            match min_ttl_drops(&t.f) {
                0 => Err("no segment dropped for its TTL yet".to_string()),
                n => Ok(n),
            }
        },
    );
    // Several more drops (the peer kept trying: retransmissions and new attempts), and the
    // connections the peer opened were refused for their SYN's TTL (254 after one router).
    wait_until(
        "more of the peer's segments dropped for their TTL, and its own connections refused",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("a GTSM session with a peer two hops away: {e}");
            }
            let n = min_ttl_drops(&t.f);
            if n < first + 3 {
                return Err(format!(
                    "{n} segments dropped for their TTL, {first} before"
                ));
            }
            let refused = f.log_text().matches("its SYN arrived with TTL 254").count();
            if refused < 2 {
                return Err(format!(
                    "{refused} of the peer's connections refused for their SYN's TTL"
                ));
            }
            Ok(())
        },
    );
    never_up().expect("no session with a GTSM peer two hops away");
    let p = f.peer(PEER_V4).expect("peer status");
    eprintln!(
        "after {} TTL drops: ferrovia {p}; {}: {:?}",
        min_ttl_drops(&t.f),
        peer.label(),
        peer.established()
    );
}

/// The control of [`gtsm_two_hops_refused`]: the same topology with GTSM off on ferrovia's
/// side and plain eBGP multihop on the peer's: Established, and routes both ways.
pub fn gtsm_off_two_hops_establishes(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Routed::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.multihop = Some(2);
    spec.originate = vec![P_V4.into()];
    let peer = start(&t.p, &spec);
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[F_V4]));
    wait_established(&f, peer.as_ref());
    wait_until(
        "routes both ways between peers two hops apart",
        PROPAGATE,
        POLL,
        || {
            let theirs = peer.routes_from_ferrovia()?;
            if !theirs.contains_key(F_V4) {
                return Err(format!("{} has {theirs:?} from ferrovia", peer.label()));
            }
            let ours = f.routes_for(P_V4)?;
            if ours.iter().any(|r| r["peer"] == PEER_V4) {
                Ok(())
            } else {
                Err(format!("ferrovia has {ours:?} for {P_V4}"))
            }
        },
    );
}

/// TCP segments a namespace's kernel dropped for arriving below a socket's minimum TTL / hop
/// limit (TcpExt TCPMinTTLDrop, counted for IPv4 and IPv6).
pub fn min_ttl_drops(ns: &Netns) -> u64 {
    let text = String::from_utf8_lossy(&ns.exec(&["cat", "/proc/net/netstat"]).stdout).into_owned();
    let mut lines = text.lines();
    let mut total = 0;
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == "TCPMinTTLDrop" {
                total += v.parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Waits until the peer's own last error contains every word of `peer_sees` (lower case);
/// `what` describes it for the failure message. Prints and returns the error.
fn wait_peer_error(peer: &dyn PeerDaemon, what: &str, peer_sees: &[&str]) -> String {
    let e = wait_until(
        &format!("{} {what} ({peer_sees:?})", peer.label()),
        PROPAGATE,
        POLL,
        || {
            let e = peer.last_error();
            if peer_sees.iter().all(|w| e.contains(w)) {
                Ok(e)
            } else {
                Err(e)
            }
        },
    );
    eprintln!("{}: {e}", peer.label());
    e
}

/// Waits until ferrovia's `lastError` for the IPv4 peer contains every word of `words`.
fn wait_ferrovia_error(f: &Ferrovia, what: &str, words: &[&str]) {
    wait_until(what, PROPAGATE, POLL, || {
        let p = f.peer(PEER_V4)?;
        let e = p["lastError"].as_str().unwrap_or("").to_lowercase();
        if words.iter().all(|w| e.contains(w)) {
            eprintln!("ferrovia: {p}");
            Ok(())
        } else {
            Err(p.to_string())
        }
    });
}

/// For 3 s neither side reaches Established (`peer_too`: the peer's own view counts as well).
fn assert_never_established(f: &Ferrovia, peer: &dyn PeerDaemon, what: &str, peer_too: bool) {
    assert_for(what, Duration::from_secs(3), POLL, || {
        let p = f.peer(PEER_V4)?;
        if p["state"] == "Established" || (peer_too && peer.established().is_ok()) {
            Err(p.to_string())
        } else {
            Ok(())
        }
    });
}

/// ferrovia is configured with the wrong AS for the peer (65001 instead of 65000): ferrovia
/// must refuse the peer's OPEN with NOTIFICATION 2/2 Bad Peer AS, which the peer reports.
pub fn ferrovia_expects_wrong_as(tag: &str, start: StartPeer, peer_sees: &[&str]) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let peer = start(&t.p, &peer_spec(true));
    let f = Ferrovia::start(
        &t.f,
        FerroviaConfig::node1(FERROVIA_AS, 65001, &[F_V4, F_V6]),
    );
    wait_peer_error(
        peer.as_ref(),
        "reports Bad Peer AS from ferrovia",
        peer_sees,
    );
    wait_ferrovia_error(
        &f,
        "ferrovia's lastError names the Bad Peer AS it sent",
        &["2/2", "sent"],
    );
    assert_never_established(
        &f,
        peer.as_ref(),
        "never Established with the wrong AS",
        false,
    );
}

/// The peer is configured with the wrong AS for ferrovia: it refuses ferrovia's OPEN with 2/2,
/// which ferrovia's status shows as the received NOTIFICATION.
/// `peer_sees`: lower-case words the peer's own last error must contain.
pub fn peer_expects_wrong_as(tag: &str, start: StartPeer, peer_sees: &[&str]) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.ferrovia_as = 64999;
    let peer = start(&t.p, &spec);
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[F_V4, F_V6]));
    wait_peer_error(peer.as_ref(), "reports the Bad Peer AS it found", peer_sees);
    wait_ferrovia_error(
        &f,
        "ferrovia's lastError shows the received Bad Peer AS",
        &["2/2", "received"],
    );
    assert_never_established(&f, peer.as_ref(), "never Established", false);
}

/// iBGP with the peer using ferrovia's router id: OPEN Message Error / Bad BGP Identifier (2/3),
/// sent by ferrovia and shown by the peer (which may also detect it itself). `peer_sees` are the
/// lower-case words the peer's last error must contain.
pub fn ibgp_same_router_id(tag: &str, start: StartPeer, peer_sees: &[&str]) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(false);
    spec.router_id = FERROVIA_V4.into();
    let peer = start(&t.p, &spec);
    let f = Ferrovia::start(&t.f, ferrovia_cfg(false, &[F_V4, F_V6]));
    wait_peer_error(peer.as_ref(), "reports Bad BGP Identifier", peer_sees);
    wait_ferrovia_error(
        &f,
        "ferrovia's lastError names Bad BGP Identifier (2/3)",
        &["2/3"],
    );
    assert_never_established(
        &f,
        peer.as_ref(),
        "never Established with a duplicate router id",
        true,
    );
}

/// The peer offers a hold time of 2 s, which RFC 4271 §6.2 says to refuse: ferrovia must send
/// OPEN Message Error / Unacceptable Hold Time (2/6). Only GoBGP lets one configure it (BIRD and
/// FRR refuse hold times 1–2 themselves). `peer_sees` as in `ferrovia_expects_wrong_as`.
pub fn peer_offers_hold_time_2(tag: &str, start: StartPeer, peer_sees: &[&str]) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.hold_time = 2;
    let peer = start(&t.p, &spec);
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[F_V4, F_V6]));
    wait_ferrovia_error(
        &f,
        "ferrovia's lastError names the Unacceptable Hold Time (2/6) it sent",
        &["2/6", "sent"],
    );
    wait_peer_error(peer.as_ref(), "got the NOTIFICATION", peer_sees);
    assert_never_established(
        &f,
        peer.as_ref(),
        "never Established with hold time 2",
        true,
    );
}

/// Communities both ways: ferrovia's `{ prefix, communities }` originate entries reach the peer,
/// the peer's communities show in `ferrovia routes`.
pub fn communities_both_ways(tag: &str, start: StartPeer) {
    let lock = net_lock();
    let t = Pair::new(&lock, tag);
    let mut spec = peer_spec(true);
    spec.originate = vec![format!("{P_V4}|65000:1,65000:20"), P_V6.into()];
    let peer = start(&t.p, &spec);
    let v4 = format!("{F_V4}|64512:100,64512:200");
    let v6 = format!("{F_V6}|64512:300");
    let f = Ferrovia::start(&t.f, ferrovia_cfg(true, &[&v4, &v6]));
    wait_established(&f, peer.as_ref());
    wait_until(
        &format!("{} has ferrovia's communities", peer.label()),
        PROPAGATE,
        POLL,
        || {
            let r = peer.routes_from_ferrovia()?;
            let got = |p: &str| r.get(p).and_then(|x| x.communities.clone());
            let (a, b) = (got(F_V4), got(F_V6));
            if a == Some(vec!["64512:100".into(), "64512:200".into()])
                && b == Some(vec!["64512:300".into()])
            {
                Ok(())
            } else {
                Err(format!("{r:#?}"))
            }
        },
    );
    wait_until(
        "ferrovia shows the peer's communities",
        PROPAGATE,
        POLL,
        || {
            let r4 = f.routes_for(P_V4)?;
            let r6 = f.routes_for(P_V6)?;
            let c4 = r4.first().map(|x| x["communities"].clone());
            let c6 = r6.first().map(|x| x["communities"].clone());
            if c4 == Some(serde_json::json!(["65000:1", "65000:20"]))
                && c6 == Some(serde_json::json!([]))
            {
                Ok(())
            } else {
                Err(format!("{r4:?}\n{r6:?}"))
            }
        },
    );
}

// ---------------------------------------------------------------- the daemons as PeerDaemon

pub fn start_bird(ns: &Netns, s: &PeerSpec) -> Box<dyn PeerDaemon> {
    let mut p = BirdPeer::to_ferrovia(s.asn, s.ferrovia_as);
    p.password = s.password.clone();
    p.hold_time = Some(s.hold_time);
    if let Some(h) = s.gtsm {
        p.extra.push_str("  ttl security on;\n");
        if h > 1 {
            p.extra.push_str(&format!("  multihop {h};\n"));
        }
    }
    if let Some(h) = s.multihop {
        p.extra.push_str(&format!("  multihop {h};\n"));
    }
    Box::new(Bird::start(
        ns,
        BirdConfig {
            router_id: s.router_id.clone(),
            originate: s.originate.clone(),
            peers: vec![p],
            extra: String::new(),
        },
    ))
}

fn parse_as_path(s: &str) -> Vec<u32> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|x| x.parse().ok())
        .collect()
}

impl PeerDaemon for Bird {
    fn label(&self) -> String {
        "BIRD".into()
    }
    fn established(&self) -> Result<(), String> {
        let p = self.protocol("ferrovia");
        if p.established() {
            Ok(())
        } else {
            Err(format!("{} / {:?}", p.bgp_state, p.last_error))
        }
    }
    fn routes_from_ferrovia(&self) -> Result<BTreeMap<String, PeerRoute>, String> {
        Ok(self
            .routes_from("ferrovia")
            .into_iter()
            .map(|(k, r)| {
                let comms = r.attrs.get("BGP.community").map(|c| {
                    c.split(['(', ')', ' '])
                        .filter(|x| !x.is_empty())
                        .map(|x| x.replace(',', ":"))
                        .collect()
                });
                let pr = PeerRoute {
                    prefix: k.clone(),
                    next_hops: r
                        .next_hop()
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                    as_path: parse_as_path(r.as_path()),
                    communities: Some(comms.unwrap_or_default()),
                };
                (k, pr)
            })
            .collect())
    }
    fn withdraw(&mut self, prefix: &str) {
        let keep: Vec<String> = self
            .cfg
            .originate
            .iter()
            .filter(|p| split_originate(p).0 != prefix)
            .cloned()
            .collect();
        let keep: Vec<&str> = keep.iter().map(String::as_str).collect();
        self.set_originate(&keep);
    }
    fn kill(&mut self) {
        Bird::kill(self);
    }
    fn restart(&mut self) {
        Bird::restart(self);
    }
    fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }
    fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
    fn last_error(&self) -> String {
        let p = self.protocol("ferrovia");
        format!("{} | {}", p.last_error.unwrap_or_default(), p.info).to_lowercase()
    }
}

pub fn start_frr(ns: &Netns, s: &PeerSpec) -> Box<dyn PeerDaemon> {
    let mut n = FrrNeighbor::ferrovia(s.ferrovia_as);
    n.password = s.password.clone();
    n.hold_time = Some(s.hold_time);
    if let Some(h) = s.gtsm {
        n.extra.push(format!("ttl-security hops {h}"));
    }
    if let Some(h) = s.multihop {
        n.extra.push(format!("ebgp-multihop {h}"));
    }
    Box::new(Frr::start(
        ns,
        FrrConfig {
            asn: s.asn,
            router_id: s.router_id.clone(),
            neighbors: vec![n],
            networks: s.originate.clone(),
        },
    ))
}

impl PeerDaemon for Frr {
    fn label(&self) -> String {
        "FRR".into()
    }
    fn established(&self) -> Result<(), String> {
        let s = self.neighbor_state(FERROVIA_V4);
        if s == "Established" {
            Ok(())
        } else {
            Err(format!("{s} / {}", self.last_error()))
        }
    }
    fn routes_from_ferrovia(&self) -> Result<BTreeMap<String, PeerRoute>, String> {
        let mut out = BTreeMap::new();
        for v6 in [false, true] {
            for (prefix, paths) in self.rib(v6)? {
                for p in paths.as_array().cloned().unwrap_or_default() {
                    if p["peerId"] != FERROVIA_V4 {
                        continue;
                    }
                    out.insert(
                        prefix.clone(),
                        PeerRoute {
                            prefix: prefix.clone(),
                            next_hops: p["nexthops"]
                                .as_array()
                                .map(|a| {
                                    a.iter()
                                        .filter_map(|n| n["ip"].as_str().map(str::to_string))
                                        .collect()
                                })
                                .unwrap_or_default(),
                            as_path: parse_as_path(p["path"].as_str().unwrap_or("")),
                            communities: None,
                        },
                    );
                }
            }
        }
        Ok(out)
    }
    fn withdraw(&mut self, prefix: &str) {
        self.remove_network(prefix);
    }
    fn kill(&mut self) {
        self.kill_bgpd();
    }
    fn restart(&mut self) {
        self.kill_bgpd();
        self.start_bgpd();
    }
    fn freeze(&self) {
        self.signal_bgpd(libc::SIGSTOP);
    }
    fn thaw(&self) {
        self.signal_bgpd(libc::SIGCONT);
    }
    fn last_error(&self) -> String {
        match self.neighbor(FERROVIA_V4) {
            Ok(n) => {
                let keys = [
                    "lastNotificationReason",
                    "lastResetDueTo",
                    "lastErrorCodeSubcode",
                    "lastNotificationHardReset",
                    "downLastResetReason",
                ];
                let mut s = String::new();
                for k in keys {
                    if let Some(v) = n.get(k) {
                        s.push_str(&format!("{k}={v} "));
                    }
                }
                s.to_lowercase()
            }
            Err(e) => e,
        }
    }
}

pub fn start_gobgp(ns: &Netns, s: &PeerSpec) -> Box<dyn PeerDaemon> {
    let mut n = GobgpNeighbor::ferrovia(s.ferrovia_as);
    // GTSM: GoBGP sends with TTL 255 and accepts down to `ttl-min` (256 − hops).
    n.ttl_min = s.gtsm.map(|hops| 255 - (hops - 1));
    n.multihop_ttl = s.multihop;
    n.password = s.password.clone();
    n.hold_time = Some(s.hold_time);
    Box::new(Gobgp::start(
        ns,
        GobgpConfig {
            asn: s.asn,
            router_id: s.router_id.clone(),
            neighbors: vec![n],
            v6_next_hop: Some(PEER_V6.into()),
            originate: s.originate.clone(),
        },
    ))
}

impl PeerDaemon for Gobgp {
    fn label(&self) -> String {
        "GoBGP".into()
    }
    fn established(&self) -> Result<(), String> {
        let s = self.session_state(FERROVIA_V4);
        if s == "ESTABLISHED" {
            Ok(())
        } else {
            Err(s)
        }
    }
    fn routes_from_ferrovia(&self) -> Result<BTreeMap<String, PeerRoute>, String> {
        let mut out = BTreeMap::new();
        for v6 in [false, true] {
            for (prefix, paths) in self.rib(v6)? {
                for p in paths.as_array().cloned().unwrap_or_default() {
                    if p["neighbor-ip"] != FERROVIA_V4 {
                        continue;
                    }
                    let attrs = p["attrs"].as_array().cloned().unwrap_or_default();
                    let mut r = PeerRoute {
                        prefix: prefix.clone(),
                        communities: Some(vec![]),
                        ..Default::default()
                    };
                    for a in attrs {
                        match a["type"].as_u64() {
                            Some(2) => {
                                for seg in a["as_paths"].as_array().cloned().unwrap_or_default() {
                                    for asn in seg["asns"].as_array().cloned().unwrap_or_default() {
                                        r.as_path.extend(asn.as_u64().map(|x| x as u32));
                                    }
                                }
                            }
                            Some(3) | Some(14) => {
                                if let Some(nh) = a["nexthop"].as_str() {
                                    r.next_hops.push(nh.to_string());
                                }
                            }
                            Some(8) => {
                                r.communities = Some(
                                    a["communities"]
                                        .as_array()
                                        .cloned()
                                        .unwrap_or_default()
                                        .iter()
                                        .filter_map(Value::as_u64)
                                        .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                                        .collect(),
                                )
                            }
                            _ => {}
                        }
                    }
                    out.insert(prefix.clone(), r);
                }
            }
        }
        Ok(out)
    }
    fn withdraw(&mut self, prefix: &str) {
        self.del_route(prefix);
        self.cfg
            .originate
            .retain(|p| split_originate(p).0 != prefix);
    }
    fn kill(&mut self) {
        Gobgp::kill(self);
    }
    fn restart(&mut self) {
        Gobgp::restart(self);
    }
    fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }
    fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }
    /// GoBGP's CLI keeps no last error: its log has the NOTIFICATIONs it sent and those received
    /// in Established; the neighbor's message counters count every NOTIFICATION received.
    fn last_error(&self) -> String {
        let mut s = String::new();
        if let Ok(n) = self.neighbor(FERROVIA_V4) {
            let rcvd = n["state"]["messages"]["received"]["notification"]
                .as_u64()
                .unwrap_or(0);
            let sent = n["state"]["messages"]["sent"]["notification"]
                .as_u64()
                .unwrap_or(0);
            s.push_str(&format!(
                "api: notifications received {rcvd}, sent {sent}\n"
            ));
            if rcvd > 0 {
                s.push_str("api: has received a notification\n");
            }
        }
        s + &self
            .log_tail(400)
            .lines()
            .filter(|l| {
                let l = l.to_lowercase();
                l.contains("notification") || l.contains("peer down") || l.contains("hold")
            })
            .collect::<Vec<_>>()
            .join("\n")
            .to_lowercase()
    }
}
