//! GTSM (RFC 5082) over an IPv6 session with BIRD: ferrovia sets the hop limit to 255 and
//! IPV6_MINHOPCOUNT. One hop away with `ttl security on` on BIRD's side: Established, routes
//! both ways (BIRD drops anything below hop limit 255, so ferrovia sends with 255). Two hops
//! away: ferrovia's kernel drops BIRD's segments (TcpExt TCPMinTTLDrop counts IPv6 too), its
//! connections are closed for their SYN's hop limit, and no session comes up.

use ferrovia_testsupport::common;

use common::scenarios::min_ttl_drops;
use common::*;

/// BIRD at fd00:198:18::254 peering with ferrovia at fd00:198:18::1 over IPv6, GTSM on,
/// originating `P_V6`; `hops` > 1 adds `multihop`.
fn bird_v6(ns: &Netns, hops: u8) -> Bird {
    bird_v6_with(ns, hops, true)
}

fn bird_v6_with(ns: &Netns, hops: u8, gtsm: bool) -> Bird {
    let mut p = BirdPeer::to_ferrovia(PEER_AS, FERROVIA_AS);
    p.local_addr = Some(PEER_V6.into());
    p.neighbor_addr = FERROVIA_V6.into();
    p.v6_next_hop = None;
    if gtsm {
        p.extra.push_str("  ttl security on;\n");
    }
    if hops > 1 {
        p.extra.push_str(&format!("  multihop {hops};\n"));
    }
    Bird::start(
        ns,
        BirdConfig {
            router_id: PEER_V4.into(),
            originate: vec![P_V6.into()],
            peers: vec![p],
            extra: String::new(),
        },
    )
}

fn ferrovia_v6(ns: &Netns) -> Ferrovia {
    ferrovia_v6_with(ns, Some(1))
}

fn ferrovia_v6_with(ns: &Netns, ttl_security: Option<u8>) -> Ferrovia {
    let mut cfg = FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V6]);
    cfg.peers[0].address = PEER_V6.into();
    cfg.peers[0].ttl_security = ttl_security;
    Ferrovia::start(ns, cfg)
}

/// The control of the refusal: the same two-hop IPv6 topology with GTSM off on both sides
/// (BIRD `multihop 2`) establishes and exchanges routes.
#[test]
fn bird_two_hops_away_over_ipv6_without_gtsm_establishes() {
    let lock = net_lock();
    let t = Routed::new(&lock, "g6-0");
    let bird = bird_v6_with(&t.p, 2, false);
    let f = ferrovia_v6_with(&t.f, None);
    wait_until(
        "an IPv6 session two hops away without GTSM",
        ESTABLISH + PROPAGATE,
        POLL,
        || {
            if !bird.routes_from("ferrovia").contains_key(F_V6) {
                return Err(format!("BIRD: {:?}", bird.protocol("ferrovia")));
            }
            let ours = f.routes_for(P_V6)?;
            if ours.iter().any(|r| r["peer"] == PEER_V6) {
                Ok(())
            } else {
                Err(format!("ferrovia has {ours:?} for {P_V6}"))
            }
        },
    );
}

#[test]
fn bird_one_hop_away_over_ipv6_with_gtsm_establishes() {
    let lock = net_lock();
    let t = Pair::new(&lock, "g6-1");
    let bird = bird_v6(&t.p, 1);
    let f = ferrovia_v6(&t.f);
    wait_until(
        "an IPv6 GTSM session with BIRD and routes both ways",
        ESTABLISH + PROPAGATE,
        POLL,
        || {
            let p = f.peer(PEER_V6)?;
            if p["state"] != "Established" {
                return Err(format!("ferrovia: {p}"));
            }
            let proto = bird.protocol("ferrovia");
            if !proto.established() {
                return Err(format!("BIRD: {proto:?}"));
            }
            if !bird.routes_from("ferrovia").contains_key(F_V6) {
                return Err(format!("BIRD has {:?}", bird.routes_from("ferrovia")));
            }
            let ours = f.routes_for(P_V6)?;
            if ours.iter().any(|r| r["peer"] == PEER_V6) {
                Ok(())
            } else {
                Err(format!("ferrovia has {ours:?} for {P_V6}"))
            }
        },
    );
    // That ferrovia also enforces the minimum is shown by the two-hop test below.
    eprintln!(
        "hop-limit drops one hop away: ferrovia {}, BIRD {}",
        min_ttl_drops(&t.f),
        min_ttl_drops(&t.p)
    );
}

#[test]
fn bird_two_hops_away_over_ipv6_is_refused() {
    let lock = net_lock();
    let t = Routed::new(&lock, "g6-2");
    let bird = bird_v6(&t.p, 2);
    let f = ferrovia_v6(&t.f);
    let never_up = || -> Result<(), String> {
        let p = f.peer(PEER_V6)?;
        if p["state"] == "Established" || p["state"] == "OpenConfirm" {
            return Err(format!("ferrovia got to {}: {p}", p["state"]));
        }
        if bird.protocol("ferrovia").established() {
            return Err("BIRD is Established".into());
        }
        let routes = f.routes()?;
        if routes.iter().any(|r| !r["peer"].is_null()) {
            return Err(format!("ferrovia learned routes: {routes:?}"));
        }
        Ok(())
    };
    let first = wait_until(
        "ferrovia's kernel drops BIRD's IPv6 segments below hop limit 255",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("an IPv6 GTSM session with a peer two hops away: {e}");
            }
            match min_ttl_drops(&t.f) {
                0 => Err("no segment dropped for its hop limit yet".to_string()),
                n => Ok(n),
            }
        },
    );
    wait_until(
        "more of BIRD's segments dropped, and its own connections refused for their SYN",
        ESTABLISH,
        POLL,
        || {
            if let Err(e) = never_up() {
                panic!("an IPv6 GTSM session with a peer two hops away: {e}");
            }
            let n = min_ttl_drops(&t.f);
            if n < first + 3 {
                return Err(format!("{n} segments dropped, {first} before"));
            }
            let refused = f.log_text().matches("its SYN arrived with TTL 254").count();
            if refused < 1 {
                return Err(format!(
                    "{refused} of BIRD's connections refused for their SYN"
                ));
            }
            Ok(())
        },
    );
    never_up().expect("no session with a GTSM peer two hops away over IPv6");
}
