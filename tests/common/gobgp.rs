//! GoBGP driver: gobgpd with a TOML config in a namespace, API on 127.0.0.1:PORT of that
//! namespace; `gobgp -p PORT …` runs inside the namespace too.

use super::proc::Proc;
use super::{tail_file, Netns};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

#[derive(Clone, Debug)]
pub struct GobgpNeighbor {
    pub addr: String,
    pub peer_as: u32,
    pub hold_time: Option<u32>,
    pub password: Option<String>,
    pub passive: bool,
    /// GTSM (`[neighbors.ttl-security]`): the lowest TTL accepted (255: one hop).
    pub ttl_min: Option<u8>,
    /// eBGP multihop TTL (`[neighbors.ebgp-multihop]`).
    pub multihop_ttl: Option<u8>,
}

impl GobgpNeighbor {
    pub fn ferrovia(peer_as: u32) -> GobgpNeighbor {
        GobgpNeighbor {
            addr: super::FERROVIA_V4.into(),
            peer_as,
            hold_time: Some(9),
            password: None,
            passive: false,
            ttl_min: None,
            multihop_ttl: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct GobgpConfig {
    pub asn: u32,
    pub router_id: String,
    pub neighbors: Vec<GobgpNeighbor>,
    /// IPv6 next hop set on every exported ipv6-unicast route. GoBGP otherwise sends its IPv4
    /// session address as the next hop of IPv6 routes over an IPv4 session (unusable).
    pub v6_next_hop: Option<String>,
    /// Routes injected with `gobgp global rib add` right after start.
    pub originate: Vec<String>,
}

impl GobgpConfig {
    pub fn render(&self) -> String {
        let mut c = String::new();
        c.push_str("[global.config]\n");
        writeln!(
            c,
            "  as = {}\n  router-id = \"{}\"\n  port = 179",
            self.asn, self.router_id
        )
        .unwrap();
        c.push_str("  local-address-list = [\"0.0.0.0\", \"::\"]\n");
        if self.v6_next_hop.is_some() {
            c.push_str("[global.apply-policy.config]\n  export-policy-list = [\"v6nh\"]\n");
            c.push_str("  default-export-policy = \"accept-route\"\n");
        }
        for n in &self.neighbors {
            c.push_str("[[neighbors]]\n  [neighbors.config]\n");
            writeln!(
                c,
                "    neighbor-address = \"{}\"\n    peer-as = {}",
                n.addr, n.peer_as
            )
            .unwrap();
            if let Some(pw) = &n.password {
                writeln!(c, "    auth-password = \"{pw}\"").unwrap();
            }
            c.push_str("  [neighbors.timers.config]\n    connect-retry = 1\n");
            c.push_str("    idle-hold-time-after-reset = 1\n");
            if let Some(h) = n.hold_time {
                writeln!(
                    c,
                    "    hold-time = {h}\n    keepalive-interval = {}",
                    (h / 3).max(1)
                )
                .unwrap();
            }
            if n.passive {
                c.push_str("  [neighbors.transport.config]\n    passive-mode = true\n");
            }
            if let Some(t) = n.ttl_min {
                writeln!(
                    c,
                    "  [neighbors.ttl-security.config]\n    enabled = true\n    ttl-min = {t}"
                )
                .unwrap();
            }
            if let Some(t) = n.multihop_ttl {
                writeln!(
                    c,
                    "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {t}"
                )
                .unwrap();
            }
            for afi in ["ipv4-unicast", "ipv6-unicast"] {
                c.push_str("  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n");
                writeln!(c, "      afi-safi-name = \"{afi}\"").unwrap();
            }
        }
        if let Some(nh) = &self.v6_next_hop {
            c.push_str("[[policy-definitions]]\n  name = \"v6nh\"\n");
            c.push_str("  [[policy-definitions.statements]]\n    name = \"v6nh-1\"\n");
            c.push_str("    [policy-definitions.statements.conditions.bgp-conditions]\n");
            c.push_str("      afi-safi-in-list = [\"ipv6-unicast\"]\n");
            c.push_str("    [policy-definitions.statements.actions]\n");
            c.push_str("      route-disposition = \"accept-route\"\n");
            c.push_str("      [policy-definitions.statements.actions.bgp-actions]\n");
            writeln!(c, "        set-next-hop = \"{nh}\"").unwrap();
        }
        c
    }
}

pub struct Gobgp {
    ns: String,
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub conf_path: PathBuf,
    pub log: PathBuf,
    pub cfg: GobgpConfig,
    proc: Option<Proc>,
}

impl Gobgp {
    pub fn start(ns: &Netns, cfg: GobgpConfig) -> Gobgp {
        let dir = tempfile::Builder::new()
            .prefix("fvt-gobgp")
            .tempdir()
            .expect("tempdir");
        let conf_path = dir.path().join("gobgpd.toml");
        let log = dir.path().join("gobgpd.log");
        let mut g = Gobgp {
            ns: ns.name().to_string(),
            port: super::unique_port(),
            dir,
            conf_path,
            log,
            cfg,
            proc: None,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        std::fs::write(&self.conf_path, self.cfg.render()).expect("write gobgpd.toml");
        let conf = self.conf_path.to_string_lossy().into_owned();
        let api = format!("127.0.0.1:{}", self.port);
        self.proc = Some(Proc::spawn(
            &self.ns,
            &["gobgpd", "-f", &conf, "--api-hosts", &api],
            &self.log,
            &[],
        ));
        super::wait_until("gobgpd API answers", super::START, super::POLL, || {
            if let Some(st) = self.proc.as_mut().and_then(|p| p.try_wait()) {
                panic!(
                    "gobgpd exited at start ({st}):\n{}",
                    tail_file(&self.log, 40)
                );
            }
            let (ok, out) = self.gobgp_status(&["-j", "global"]);
            if ok && out.contains("router_id") {
                Ok(())
            } else {
                Err(out)
            }
        });
        for p in self.cfg.originate.clone() {
            self.add_route(&p);
        }
    }

    fn gobgp_status(&self, args: &[&str]) -> (bool, String) {
        let port = self.port.to_string();
        let out = super::output_bounded(
            Command::new("ip")
                .args(["netns", "exec", &self.ns, "gobgp", "-p", &port])
                .args(args),
            super::CLI_LIMIT,
        );
        match out {
            Ok(o) => (
                o.status.success(),
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr),
            ),
            Err(e) => (false, format!("<gobgp: {e}>")),
        }
    }

    /// `gobgp -p PORT ARGS…`; panics unless it exits 0.
    pub fn gobgp(&self, args: &[&str]) -> String {
        let (ok, out) = self.gobgp_status(args);
        assert!(ok, "gobgp {args:?}: {out}");
        out
    }

    pub fn json(&self, args: &[&str]) -> Result<Value, String> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let (ok, out) = self.gobgp_status(&a);
        if !ok {
            return Err(out);
        }
        serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))
    }

    /// The neighbor object from `gobgp -j neighbor`.
    pub fn neighbor(&self, addr: &str) -> Result<Value, String> {
        let v = self.json(&["neighbor"])?;
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .find(|n| n["conf"]["neighbor_address"] == addr)
                    .cloned()
            })
            .ok_or_else(|| format!("no neighbor {addr} in {v}"))
    }

    /// Session state name: "ESTABLISHED", "ACTIVE", "IDLE", … (GoBGP's API enum).
    pub fn session_state(&self, addr: &str) -> String {
        match self.neighbor(addr) {
            Ok(n) => match n["state"]["session_state"].as_u64() {
                Some(0) | None => "UNKNOWN".into(),
                Some(1) => "IDLE".into(),
                Some(2) => "CONNECT".into(),
                Some(3) => "ACTIVE".into(),
                Some(4) => "OPENSENT".into(),
                Some(5) => "OPENCONFIRM".into(),
                Some(6) => "ESTABLISHED".into(),
                Some(x) => format!("?{x}"),
            },
            Err(e) => format!("<{e}>"),
        }
    }

    /// `gobgp -j global rib [-a ipv6]` → prefix → array of paths.
    pub fn rib(&self, v6: bool) -> Result<serde_json::Map<String, Value>, String> {
        let v = if v6 {
            self.json(&["global", "rib", "-a", "ipv6"])?
        } else {
            self.json(&["global", "rib"])?
        };
        match v {
            Value::Object(m) => Ok(m),
            Value::Null => Ok(Default::default()),
            other => Err(format!("unexpected rib JSON: {other}")),
        }
    }

    /// Paths for `prefix` whose source is `peer` (the `source-id`/neighbor-ip of the path).
    pub fn paths_from(&self, prefix: &str, peer: &str) -> Result<Vec<Value>, String> {
        let rib = self.rib(prefix.contains(':'))?;
        Ok(rib
            .get(prefix)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|p| p["neighbor-ip"] == peer)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    }

    /// `gobgp global rib add` of an originate entry (`PREFIX` or `PREFIX|ASN:VAL,…`).
    pub fn add_route(&self, entry: &str) {
        let (prefix, comms) = super::split_originate(entry);
        let mut args = vec!["global", "rib", "add"];
        if prefix.contains(':') {
            args.extend(["-a", "ipv6"]);
        }
        args.extend([prefix, "origin", "igp"]);
        let joined = comms.join(",");
        if !comms.is_empty() {
            args.extend(["community", joined.as_str()]);
        }
        self.gobgp(&args);
    }

    pub fn del_route(&self, entry: &str) {
        let (prefix, _) = super::split_originate(entry);
        if prefix.contains(':') {
            self.gobgp(&["global", "rib", "del", "-a", "ipv6", prefix]);
        } else {
            self.gobgp(&["global", "rib", "del", prefix]);
        }
    }

    pub fn signal(&self, sig: i32) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts gobgpd again (same config, same injected routes) after `kill`.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== gobgpd ({}) config ====\n{}\n==== neighbor ====\n{}\n==== log ====\n{}",
                self.ns,
                self.cfg.render(),
                self.gobgp_status(&["neighbor"]).1,
                self.log_tail(60)
            );
        }
        self.kill();
    }
}
