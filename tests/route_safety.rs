//! Route safety against a real GoBGP peer (issue 11): a peer outside the cluster cannot
//! send prefixes inside the cluster's pools or a default route unless allowed, import and
//! export prefix lists, and `maxPrefixes` with both actions. Settings come from the
//! configuration file and from the datastore (`ferrovia peer add/set`); refused prefixes
//! are counted per reason in `ferrovia status` and in metrics (promtool-clean), and
//! nothing refused reaches the kernel.

use ferrovia_testsupport::common;

use common::ferrovia::FerroviaPeer;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The kernel routes of ferrovia's protocol in namespace `ns`, one line each.
fn kernel_routes(ns: &Netns) -> Vec<String> {
    let mut v = Vec::new();
    for fam in ["-4", "-6"] {
        let out = ns.ip(&[fam, "route", "show", "proto", "0xf1"]);
        v.extend(
            out.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    v
}

/// Kernel routes of ferrovia's protocol through the peer (v4 or v6 next hop).
fn kernel_routes_via_peer(ns: &Netns) -> Vec<String> {
    kernel_routes(ns)
        .into_iter()
        .filter(|l| l.contains(&format!("via {PEER_V4}")) || l.contains(&format!("via {PEER_V6}")))
        .collect()
}

/// Waits until the kernel routes through the peer are exactly `want` (by destination).
fn wait_kernel_via_peer(ns: &Netns, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(
        &format!("the kernel routes through the peer are {want:?}"),
        PROPAGATE,
        POLL,
        || {
            let mut got: Vec<String> = kernel_routes_via_peer(ns)
                .iter()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect();
            got.sort();
            if got == want {
                Ok(())
            } else {
                Err(format!("kernel: {:?}", kernel_routes(ns)))
            }
        },
    );
}

fn gobgp(ns: &Netns, originate: &[&str]) -> Gobgp {
    Gobgp::start(
        ns,
        GobgpConfig {
            asn: PEER_AS,
            router_id: PEER_V4.into(),
            neighbors: vec![GobgpNeighbor::ferrovia(FERROVIA_AS)],
            v6_next_hop: Some(PEER_V6.into()),
            originate: originate.iter().map(|s| s.to_string()).collect(),
        },
    )
}

/// The cluster's pools (IPv4 and IPv6) and the datastore they live in; metrics on.
fn cluster_extra(db: &Path) -> String {
    format!(
        "datastore: {{ sqlite: {{ path: {} }} }}\n\
         ipam:\n  pools:\n    - {{ cidr: 10.244.0.0/16, blockSize: 26 }}\n    - {{ cidr: \"fd00:10:244::/48\", blockSize: 122 }}\n\
         metrics: {{ listen: \"127.0.0.1:9091\" }}\n",
        db.display()
    )
}

fn peer_status(f: &Ferrovia) -> Value {
    f.peer(PEER_V4).unwrap_or(Value::Null)
}

fn established(f: &Ferrovia) -> Result<Value, String> {
    let p = f.peer(PEER_V4)?;
    if p["state"] == "Established" {
        Ok(p)
    } else {
        Err(format!("{p}"))
    }
}

fn refused(p: &Value, reason: &str) -> u64 {
    p["refused"][reason].as_u64().unwrap_or(0)
}

fn metrics(ns: &Netns) -> String {
    String::from_utf8_lossy(
        &ns.exec(&[
            "curl",
            "-s",
            "--max-time",
            "3",
            "http://127.0.0.1:9091/metrics",
        ])
        .stdout,
    )
    .into_owned()
}

fn promtool_clean(text: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/test.sh");
    {
        use std::io::Write;
        p.stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let o = p.wait_with_output().expect("promtool");
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "promtool check metrics is not clean: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `ferrovia ARGS… --datastore DB`; panics unless it exits 0.
fn cli(db: &Path, args: &[&str]) -> String {
    let o = Command::new(bin())
        .args(args)
        .arg("--datastore")
        .arg(db)
        .output()
        .expect("run ferrovia");
    assert!(
        o.status.success(),
        "ferrovia {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Routes ferrovia's Loc-RIB holds from the peer, by prefix.
fn learned(f: &Ferrovia) -> Vec<String> {
    let mut v: Vec<String> = f
        .routes()
        .unwrap_or_default()
        .iter()
        .filter(|r| r["peer"] == PEER_V4)
        .filter_map(|r| r["prefix"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

fn gobgp_has_from_ferrovia(g: &Gobgp, want: &[&str]) -> Result<(), String> {
    let mut got = Vec::new();
    for v6 in [false, true] {
        for (prefix, paths) in g.rib(v6)? {
            let from_us = paths
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["neighbor-ip"] == FERROVIA_V4));
            if from_us {
                got.push(prefix);
            }
        }
    }
    got.sort();
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    if got == want {
        Ok(())
    } else {
        Err(format!("GoBGP has {got:?} from ferrovia, want {want:?}"))
    }
}

const OURS: &[&str] = &["10.244.200.0/24", "fd00:10:244:200::/64"];
const DEFAULTS: &[&str] = &["0.0.0.0/0", "::/0"];
const OTHERS: &[&str] = &["192.0.2.0/24", "2001:db8:1::/48"];

/// A configuration-file peer announces two pod prefixes of ours (IPv4 and IPv6), both
/// default routes and two other prefixes: only the other two are accepted and installed;
/// the four refusals are counted per reason in status and metrics. The peer still gets our
/// routes.
#[test]
fn a_config_file_peer_cannot_send_our_pool_prefixes_or_default_routes() {
    let lock = net_lock();
    let t = Pair::new(&lock, "rs-pool");
    let dir = tempfile::tempdir().expect("tempdir");
    let all: Vec<&str> = OURS.iter().chain(DEFAULTS).chain(OTHERS).copied().collect();
    let g = gobgp(&t.p, &all);
    let mut cfg = FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4]);
    cfg.extra = cluster_extra(&dir.path().join("ferrovia.db"));
    let f = Ferrovia::start(&t.f, cfg);
    let p = wait_until(
        "the peer's six prefixes are accepted or refused",
        ESTABLISH + PROPAGATE,
        POLL,
        || {
            let p = established(&f)?;
            if refused(&p, "own_pool") == 2
                && refused(&p, "default_route") == 2
                && p["prefixesReceived"] == 2
            {
                Ok(p)
            } else {
                Err(format!("{p}"))
            }
        },
    );
    assert_eq!(learned(&f), OTHERS, "{p}");
    wait_kernel_via_peer(&t.f, OTHERS);
    for l in kernel_routes(&t.f) {
        assert!(
            !l.starts_with("default")
                && !l.starts_with("10.244.200.")
                && !l.starts_with("fd00:10:244:200:"),
            "a refused route is in the kernel: {l}"
        );
    }
    wait_until("GoBGP gets our prefix", PROPAGATE, POLL, || {
        gobgp_has_from_ferrovia(&g, &[F_V4])
    });
    let m = wait_until("the refusals in metrics", PROPAGATE, POLL, || {
        let m = metrics(&t.f);
        let line = |reason: &str| {
            format!("ferrovia_bgp_prefixes_refused_total{{peer=\"{PEER_V4}\",reason=\"{reason}\",type=\"global\"}} 2")
        };
        if m.contains(&line("own_pool")) && m.contains(&line("default_route")) {
            Ok(m)
        } else {
            Err(m)
        }
    });
    promtool_clean(&m);
    let text = String::from_utf8_lossy(
        &t.f.exec(&[bin(), "status", "--socket", &f.socket.display().to_string()])
            .stdout,
    )
    .into_owned();
    assert!(
        text.contains("refused prefixes: default_route 2, own_pool 2"),
        "{text}"
    );
}

/// A datastore peer (`ferrovia peer add`, with GTSM against GoBGP's `ttl-min = 255`) gets
/// the same protections; `ferrovia peer set`
/// allows pool prefixes and the default route, then puts import and export prefix lists on
/// it: the agent follows each change, the kernel and the peer's RIB show only what the lists
/// let through, and the list refusals are counted.
#[test]
fn a_stored_peer_follows_its_safety_settings_and_prefix_lists() {
    let lock = net_lock();
    let t = Pair::new(&lock, "rs-store");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ferrovia.db");
    let all: Vec<&str> = OURS.iter().chain(DEFAULTS).chain(OTHERS).copied().collect();
    // GoBGP with GTSM (ttl-min 255): it drops ferrovia's packets unless the stored peer's
    // ttlSecurity makes ferrovia send them with TTL 255.
    let mut n = GobgpNeighbor::ferrovia(FERROVIA_AS);
    n.ttl_min = Some(255);
    let g = Gobgp::start(
        &t.p,
        GobgpConfig {
            asn: PEER_AS,
            router_id: PEER_V4.into(),
            neighbors: vec![n],
            v6_next_hop: Some(PEER_V6.into()),
            originate: all.iter().map(|s| s.to_string()).collect(),
        },
    );
    let mut cfg = FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4, "10.244.2.0/26", F_V6]);
    cfg.peers.clear();
    cfg.extra = cluster_extra(&db);
    let f = Ferrovia::start(&t.f, cfg);
    cli(
        &db,
        &[
            "peer",
            "add",
            "tor",
            "--address",
            PEER_V4,
            "--as-number",
            &PEER_AS.to_string(),
            "--ttl-security",
            "1",
        ],
    );
    wait_until(
        "the stored peer refuses ours and the defaults",
        ESTABLISH + PROPAGATE,
        POLL,
        || {
            let p = established(&f)?;
            if refused(&p, "own_pool") == 2
                && refused(&p, "default_route") == 2
                && p["type"] == "global"
            {
                Ok(())
            } else {
                Err(format!("{p}"))
            }
        },
    );
    wait_kernel_via_peer(&t.f, OTHERS);

    cli(
        &db,
        &[
            "peer",
            "set",
            "tor",
            "--allow-pool-prefixes",
            "on",
            "--allow-default-route",
            "on",
        ],
    );
    wait_kernel_via_peer(
        &t.f,
        &[
            "10.244.200.0/24",
            "fd00:10:244:200::/64",
            "default",
            "default",
            "192.0.2.0/24",
            "2001:db8:1::/48",
        ],
    );

    cli(
        &db,
        &[
            "peer",
            "set",
            "tor",
            "--import-prefix",
            "deny 0.0.0.0/0",
            "--import-prefix",
            "0.0.0.0/0 le 24",
            "--import-prefix",
            "fd00:10:244::/48 le 64",
            "--export-prefix",
            "10.244.1.0/26",
            "--export-prefix",
            "deny ::/0 le 128",
        ],
    );
    // Import: the IPv4 default is denied by the first entry; ::/0 and 2001:db8:1::/48 match
    // no entry. Export: only 10.244.1.0/26 of our three prefixes.
    wait_kernel_via_peer(
        &t.f,
        &["10.244.200.0/24", "fd00:10:244:200::/64", "192.0.2.0/24"],
    );
    let p = wait_until("the list refusals are counted", PROPAGATE, POLL, || {
        let p = established(&f)?;
        if refused(&p, "import_list") == 3 && p["prefixesSent"] == 1 {
            Ok(p)
        } else {
            Err(format!("{p}"))
        }
    });
    wait_until(
        "GoBGP has only what the export list allows",
        PROPAGATE,
        POLL,
        || gobgp_has_from_ferrovia(&g, &[F_V4]),
    );
    eprintln!("peer after the lists: {p}");
    let stored = cli(&db, &["peer", "list", "--json"]);
    assert!(stored.contains("\"importPrefixes\""), "{stored}");
}

fn with_max_prefixes(line: &str) -> FerroviaConfig {
    let mut cfg = FerroviaConfig::node1(FERROVIA_AS, PEER_AS, &[F_V4]);
    cfg.peers = vec![FerroviaPeer {
        extra: vec![line.to_string()],
        ..FerroviaPeer::peer(PEER_AS)
    }];
    cfg
}

const THREE: &[&str] = &["192.0.2.0/26", "192.0.2.64/26", "192.0.2.128/26"];

/// `action: restart`: three prefixes against a limit of two. ferrovia closes the session
/// with CEASE 6/1 (GoBGP logs it), takes the peer's routes out of the kernel, refuses to
/// come back before `restartAfterSeconds`, and connects again after it (the peer sends two
/// by then, so the session stays up).
#[test]
fn over_max_prefixes_restart_closes_with_cease_6_1_and_comes_back_after_the_time() {
    let lock = net_lock();
    let t = Pair::new(&lock, "rs-maxr");
    let g = gobgp(&t.p, &[]);
    let f = Ferrovia::start(
        &t.f,
        with_max_prefixes("maxPrefixes: { limit: 2, action: restart, restartAfterSeconds: 6 }"),
    );
    wait_until("Established", ESTABLISH, POLL, || established(&f));
    g.add_route(THREE[0]);
    g.add_route(THREE[1]);
    wait_kernel_via_peer(&t.f, &THREE[..2]);
    g.add_route(THREE[2]);
    let (p, seen) = wait_until(
        "ferrovia closes the session for too many prefixes",
        PROPAGATE,
        POLL,
        || {
            let p = peer_status(&f);
            let err = p["lastError"].as_str().unwrap_or_default();
            if err.contains("Maximum Number of Prefixes Reached (6/1)")
                && p["state"] != "Established"
            {
                Ok((p, Instant::now()))
            } else {
                Err(format!("{p}"))
            }
        },
    );
    assert_eq!(p["maxPrefixesExceeded"], 1, "{p}");
    let left = p["restartInSeconds"]
        .as_u64()
        .unwrap_or_else(|| panic!("restartInSeconds in {p}"));
    assert!((1..=6).contains(&left), "{p}");
    wait_kernel_via_peer(&t.f, &[]);
    // GoBGP logs each NOTIFICATION it receives as JSON: code, subcode, data (base64).
    let line = wait_until(
        "GoBGP logs the CEASE 6/1 it received",
        PROPAGATE,
        POLL,
        || {
            let log = g.log_tail(400);
            let found = log
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["msg"] == "received notification");
            found.ok_or(log)
        },
    );
    assert_eq!(
        (&line["Code"], &line["Subcode"]),
        (&Value::from(6), &Value::from(1)),
        "{line}"
    );
    // RFC 4486: AFI 1, SAFI 1, the limit 2 as four octets (00 01 01 00 00 00 02).
    assert_eq!(line["Data"], "AAEBAAAAAg==", "{line}");
    eprintln!("GoBGP: {line}");
    // Back to two prefixes before the time is up: the next session stays up.
    g.del_route(THREE[2]);
    let back = wait_until(
        "the session comes back after restartAfterSeconds",
        ESTABLISH + Duration::from_secs(6),
        POLL,
        || established(&f).map(|p| (p, Instant::now())),
    );
    // Not before the time the agent gave (its own count of what was left, rounded up).
    assert!(
        back.1.duration_since(seen) + Duration::from_secs(1) >= Duration::from_secs(left),
        "back after {:?}, {left} s were left: {}",
        back.1.duration_since(seen),
        back.0
    );
    wait_kernel_via_peer(&t.f, &THREE[..2]);
    let p = peer_status(&f);
    assert_eq!(p["maxPrefixesExceeded"], 1, "{p}");
    assert!(p["restartInSeconds"].is_null(), "{p}");
    eprintln!(
        "down for {:?} (restartAfterSeconds 6, {left} s left when seen)",
        back.1.duration_since(seen)
    );
}

/// `action: warn`: three prefixes against a limit of two keep the session and all three
/// routes; the crossing is counted once, and the peer received no NOTIFICATION.
#[test]
fn over_max_prefixes_warn_keeps_the_session_and_the_routes() {
    let lock = net_lock();
    let t = Pair::new(&lock, "rs-maxw");
    let g = gobgp(&t.p, &[]);
    let f = Ferrovia::start(
        &t.f,
        with_max_prefixes("maxPrefixes: { limit: 2, action: warn }"),
    );
    let before = wait_until("Established", ESTABLISH, POLL, || established(&f));
    for p in THREE {
        g.add_route(p);
    }
    wait_kernel_via_peer(&t.f, THREE);
    let p = wait_until("the crossing is counted", PROPAGATE, POLL, || {
        let p = established(&f)?;
        if p["maxPrefixesExceeded"] == 1 && p["prefixesReceived"] == 3 {
            Ok(p)
        } else {
            Err(format!("{p}"))
        }
    });
    assert_eq!(p["since"], before["since"], "the same session: {p}");
    assert!(p["lastError"].is_null(), "{p}");
    let n = g.neighbor(FERROVIA_V4).expect("GoBGP neighbor");
    assert_eq!(
        n["state"]["messages"]["received"]["notification"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{n}"
    );
    assert!(
        f.log_text()
            .contains("more prefixes than its maxPrefixes limit"),
        "the warning is logged"
    );
}
