//! BFD (RFC 5880/5881) between ferrovia and real peers, both directions (issue 11): BIRD 2.0.12
//! (`protocol bfd`, `bfd on`) and FRR 8.4 (bfdd, `neighbor X bfd`), 300 ms × 3 on both sides.
//!
//! - Sessions come Up on both sides and BGP carries routes.
//! - The peer's BFD goes away (BIRD: `disable bfd1`; FRR: bfdd SIGKILLed) while its BGP stays:
//!   ferrovia takes the BGP session down for BFD (lastError says so), its routes leave the
//!   Loc-RIB and the kernel, and BGP stays down until BFD is Up again, then comes back.
//! - Ours goes away (ferrovia SIGKILLed): the peer's BFD goes Down and it takes BGP down for
//!   BFD (BIRD: "BFD session down"; FRR: lastResetDueTo "BFD down received") and drops our
//!   routes, with a 90 s hold time that cannot have expired. FRR runs with
//!   `graceful-restart-disable` toward ferrovia here: as a GR helper it keeps our routes as
//!   stale after a BFD Down (the trade-off in config/README.md).
//! - SIGTERM: ferrovia's sessions go AdminDown first (RFC 5880 §6.8.16) and the peers see it
//!   (FRR shows the remote diagnostic "administratively down"; BIRD's session goes Down).

use ferrovia_testsupport::common;

use common::bfd::*;
use common::*;
use std::time::{Duration, Instant};

#[test]
fn bird_bfd_up_and_failures_both_ways() {
    let lock = net_lock();
    let t = Pair::new(&lock, "bfd-bird");
    let mut bird = bird_with_bfd(&t.p, false);
    let mut f = Ferrovia::start(&t.f, ferrovia_cfg(true));

    wait_until(
        "BFD Up on both sides, BGP routes both ways",
        ESTABLISH,
        POLL,
        || {
            fer_bfd_up(&f)?;
            fer_peer_routes(&f, &t.f, true)?;
            bird_has_fer(&bird)?;
            match bird_bfd_state(&bird).as_str() {
                "Up" => Ok(()),
                s => Err(format!("BIRD BFD {s}")),
            }
        },
    );
    let b = fer_bfd(&f).expect("bfd status");
    assert_eq!(b["detectionTimeMs"], 900, "300 ms × 3 once Up: {b}");

    // The peer's BFD goes away; its BGP stays.
    let t0 = Instant::now();
    assert!(bird.birdc("disable bfd1").contains("disabled"));
    let p = timed(t0, "ferrovia takes BGP down for BFD", || {
        fer_down_by_bfd(&f)
    });
    eprintln!("ferrovia peer after BIRD's BFD went away: {p}");
    timed(
        t0,
        "the peer's routes leave the Loc-RIB and the kernel",
        || fer_peer_routes(&f, &t.f, false),
    );
    // Held down while BFD is Down, although BIRD keeps trying to connect.
    assert_for(
        "BGP stays down while BFD is Down",
        Duration::from_secs(3),
        POLL,
        || fer_down_by_bfd(&f).map(|_| ()),
    );

    // BFD back: BGP comes back by itself.
    assert!(bird.birdc("enable bfd1").contains("enabled"));
    wait_until(
        "BFD Up again and BGP back with routes",
        ESTABLISH,
        POLL,
        || {
            let p = fer_bfd_up(&f)?;
            if p["bfd"]["holdingBgp"] != false {
                return Err(format!("still holding: {p}"));
            }
            fer_peer_routes(&f, &t.f, true)?;
            bird_has_fer(&bird)
        },
    );

    // Ours goes away: BIRD sees BFD Down and takes BGP down for it.
    let t0 = Instant::now();
    f.sigkill();
    let p = timed(
        t0,
        "BIRD takes BGP down for BFD and drops our routes",
        || {
            let p = bird.protocol("ferrovia");
            let e = p.last_error.clone().unwrap_or_default().to_lowercase();
            if !p.established() && e.contains("bfd") && bird.routes_from("ferrovia").is_empty() {
                Ok(p)
            } else {
                Err(format!("{} / BFD {}", p.raw, bird_bfd_state(&bird)))
            }
        },
    );
    eprintln!("BIRD after ferrovia's SIGKILL: {:?}", p.last_error);

    // ferrovia back: everything Up again.
    f.start_again();
    wait_until("Up again after ferrovia's restart", ESTABLISH, POLL, || {
        fer_bfd_up(&f)?;
        fer_peer_routes(&f, &t.f, true)?;
        bird_has_fer(&bird)
    });

    // SIGTERM: AdminDown first. BIRD 2.0.12 takes BGP down on a remote AdminDown (fixed in
    // 2.14): documented in config/README.md, `bfd graceful` is the setting for it.
    let st = f.sigterm();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "exit status after SIGTERM"
    );
    assert!(
        f.log_text().contains("BFD sessions AdminDown"),
        "the agent set its BFD sessions AdminDown before closing"
    );
    wait_until(
        "BIRD's BFD session Down",
        PROPAGATE,
        POLL,
        || match bird_bfd_state(&bird).as_str() {
            "Down" => Ok(()),
            s => Err(s.to_string()),
        },
    );
    bird.kill();
}

#[test]
fn frr_bfd_up_and_failures_both_ways() {
    let lock = net_lock();
    let t = Pair::new(&lock, "bfd-frr");
    let mut frr = frr_with_bfd(&t.p, false);
    let mut f = Ferrovia::start(&t.f, ferrovia_cfg(true));

    wait_until(
        "BFD Up on both sides, BGP routes both ways",
        ESTABLISH,
        POLL,
        || {
            fer_bfd_up(&f)?;
            fer_peer_routes(&f, &t.f, true)?;
            frr_has_fer(&frr)?;
            match frr_bfd_status(&frr).as_str() {
                "up" => Ok(()),
                s => Err(format!("FRR BFD {s}")),
            }
        },
    );
    let b = fer_bfd(&f).expect("bfd status");
    assert_eq!(b["detectionTimeMs"], 900, "300 ms × 3 once Up: {b}");

    // The peer's BFD goes away (bfdd dies); bgpd stays.
    let t0 = Instant::now();
    frr.kill_bfdd();
    timed(t0, "ferrovia takes BGP down for BFD", || {
        fer_down_by_bfd(&f)
    });
    timed(
        t0,
        "the peer's routes leave the Loc-RIB and the kernel",
        || fer_peer_routes(&f, &t.f, false),
    );
    assert_for(
        "BGP stays down while BFD is Down",
        Duration::from_secs(3),
        POLL,
        || fer_down_by_bfd(&f).map(|_| ()),
    );

    frr.start_bfdd();
    wait_until(
        "BFD Up again and BGP back with routes",
        ESTABLISH,
        POLL,
        || {
            fer_bfd_up(&f)?;
            fer_peer_routes(&f, &t.f, true)?;
            frr_has_fer(&frr)
        },
    );

    // Ours goes away.
    let t0 = Instant::now();
    f.sigkill();
    timed(
        t0,
        "FRR takes BGP down for BFD and drops our routes",
        || {
            let n = frr.neighbor(FERROVIA_V4)?;
            let why = n["lastResetDueTo"].as_str().unwrap_or("").to_lowercase();
            let gone = frr.paths_from(F_V4, FERROVIA_V4)?.is_empty();
            if n["bgpState"] != "Established" && why.contains("bfd") && gone {
                Ok(why)
            } else {
                Err(format!("{n}"))
            }
        },
    );

    f.start_again();
    wait_until("Up again after ferrovia's restart", ESTABLISH, POLL, || {
        fer_bfd_up(&f)?;
        fer_peer_routes(&f, &t.f, true)?;
        frr_has_fer(&frr)
    });
    let resets_before = frr.neighbor(FERROVIA_V4).expect("neighbor")["lastResetDueTo"].clone();
    eprintln!("FRR last reset before SIGTERM: {resets_before}");

    // SIGTERM: AdminDown first; FRR's BFD peer goes down with the remote diagnostic
    // "administratively down". (What FRR 8.4 then does with BGP is in config/README.md: in
    // tests/bfd_restart.rs's topology it answered with Cease/Hard Reset for BFD Down.)
    let st = f.sigterm();
    assert_eq!(
        st.and_then(|s| s.code()),
        Some(0),
        "exit status after SIGTERM"
    );
    assert!(
        f.log_text().contains("BFD sessions AdminDown"),
        "the agent set its BFD sessions AdminDown before closing"
    );
    wait_until("FRR saw our AdminDown", PROPAGATE, POLL, || {
        let p = frr.bfd_peer(FERROVIA_V4)?;
        let remote = p["remote-diagnostic"].as_str().unwrap_or("");
        if p["status"] != "up" && remote.contains("administratively") {
            Ok(())
        } else {
            Err(format!("bfd {p}"))
        }
    });
    eprintln!(
        "FRR after our AdminDown: lastResetDueTo {}",
        frr.neighbor(FERROVIA_V4).expect("neighbor")["lastResetDueTo"]
    );
    wait_until(
        "FRR saw AdminDown and reset BGP for the CEASE, not BFD",
        PROPAGATE,
        POLL,
        || {
            let p = frr.bfd_peer(FERROVIA_V4)?;
            let n = frr.neighbor(FERROVIA_V4)?;
            let why = n["lastResetDueTo"].as_str().unwrap_or("").to_lowercase();
            let remote = p["remote-diagnostic"].as_str().unwrap_or("");
            if p["status"] != "up"
                && remote.contains("administratively")
                && n["bgpState"] != "Established"
                && !why.contains("bfd")
            {
                Ok(())
            } else {
                Err(format!("bfd {p}\nneighbor reset: {why}"))
            }
        },
    );
}

/// A peer stored in the datastore (`ferrovia peer add … --bfd on`), not in the configuration
/// file: its BFD session comes Up on both sides with FRR, BGP carries routes both ways, and
/// `ferrovia peer set --bfd off` turns it off again (the session comes back without BFD).
#[test]
fn a_stored_peer_with_bfd_comes_up_with_frr() {
    let lock = net_lock();
    let t = Pair::new(&lock, "bfd-store");
    let frr = frr_with_bfd(&t.p, true);
    let db_dir = tempfile::tempdir().expect("tempdir");
    let db = db_dir.path().join("ferrovia.db");
    let mut cfg = ferrovia_cfg(false);
    cfg.peers.clear();
    cfg.extra = format!("datastore: {{ sqlite: {{ path: {} }} }}\n", db.display());
    let f = Ferrovia::start(&t.f, cfg);
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(&f.bin)
            .args(args)
            .arg("--datastore")
            .arg(&db)
            .output()
            .expect("ferrovia");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "ferrovia {args:?}: {text}");
        text
    };
    let peer_as = PEER_AS.to_string();
    cli(&[
        "peer",
        "add",
        "tor",
        "--address",
        PEER_V4,
        "--as-number",
        &peer_as,
        "--bfd",
        "on",
        "--bfd-interval-ms",
        "300",
        "--bfd-multiplier",
        "3",
    ]);
    wait_until(
        "BFD Up on both sides for the stored peer, BGP routes both ways",
        ESTABLISH,
        POLL,
        || {
            fer_bfd_up(&f)?;
            fer_peer_routes(&f, &t.f, true)?;
            frr_has_fer(&frr)?;
            match frr_bfd_status(&frr).as_str() {
                "up" => Ok(()),
                s => Err(format!("FRR BFD {s}")),
            }
        },
    );
    let b = fer_bfd(&f).expect("bfd status");
    assert_eq!(b["detectionTimeMs"], 900, "300 ms × 3 once Up: {b}");

    // Out of range: refused with the key named, the stored peer unchanged.
    let out = std::process::Command::new(&f.bin)
        .args(["peer", "set", "tor", "--bfd-multiplier", "0", "--datastore"])
        .arg(&db)
        .output()
        .expect("ferrovia");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("bfd.multiplier"),
        "{err}"
    );
    fer_bfd_up(&f).expect("BFD still Up after a refused change");

    cli(&["peer", "set", "tor", "--bfd", "off"]);
    wait_until(
        "the stored peer back without BFD, routes both ways",
        ESTABLISH,
        POLL,
        || {
            let p = f.peer(PEER_V4)?;
            if p["state"] != "Established" || !p["bfd"].is_null() {
                return Err(format!("{p}"));
            }
            fer_peer_routes(&f, &t.f, true)?;
            frr_has_fer(&frr)
        },
    );
}
