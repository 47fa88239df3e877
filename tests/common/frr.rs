//! FRR driver: zebra + bgpd of one pathspace (`-N NAME`) in a namespace, `vtysh -N NAME`.

use super::proc::Proc;
use super::{tail_file, Netns};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

#[derive(Clone, Debug)]
pub struct FrrNeighbor {
    pub addr: String,
    pub remote_as: u32,
    pub password: Option<String>,
    /// Hold time (keepalive = hold / 3).
    pub hold_time: Option<u32>,
    pub passive: bool,
    /// More `neighbor ADDR …` statements, each given without `neighbor ADDR`.
    pub extra: Vec<String>,
}

impl FrrNeighbor {
    pub fn ferrovia(remote_as: u32) -> FrrNeighbor {
        FrrNeighbor {
            addr: super::FERROVIA_V4.into(),
            remote_as,
            password: None,
            hold_time: Some(9),
            passive: false,
            extra: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct FrrConfig {
    pub asn: u32,
    pub router_id: String,
    pub neighbors: Vec<FrrNeighbor>,
    /// `network` statements (import-check off, so no route in the RIB is needed).
    pub networks: Vec<String>,
}

impl FrrConfig {
    pub fn render(&self, hostname: &str) -> String {
        let mut c = String::new();
        c.push_str("frr defaults traditional\n");
        writeln!(c, "hostname {hostname}").unwrap();
        c.push_str("log stdout debugging\nlog timestamp precision 3\n");
        c.push_str("debug bgp neighbor-events\ndebug bgp updates\n!\n");
        writeln!(c, "router bgp {}", self.asn).unwrap();
        writeln!(c, " bgp router-id {}", self.router_id).unwrap();
        c.push_str(" no bgp ebgp-requires-policy\n no bgp default ipv4-unicast\n");
        c.push_str(" no bgp network import-check\n");
        for n in &self.neighbors {
            writeln!(c, " neighbor {} remote-as {}", n.addr, n.remote_as).unwrap();
            writeln!(c, " neighbor {} timers connect 1", n.addr).unwrap();
            if let Some(h) = n.hold_time {
                writeln!(c, " neighbor {} timers {} {}", n.addr, (h / 3).max(1), h).unwrap();
            }
            if let Some(pw) = &n.password {
                writeln!(c, " neighbor {} password {pw}", n.addr).unwrap();
            }
            if n.passive {
                writeln!(c, " neighbor {} passive", n.addr).unwrap();
            }
            for e in &n.extra {
                writeln!(c, " neighbor {} {e}", n.addr).unwrap();
            }
        }
        for (afi, v6) in [("ipv4", false), ("ipv6", true)] {
            writeln!(c, " address-family {afi} unicast").unwrap();
            for p in self.networks.iter().filter(|p| p.contains(':') == v6) {
                writeln!(c, "  network {p}").unwrap();
            }
            for n in &self.neighbors {
                writeln!(c, "  neighbor {} activate", n.addr).unwrap();
            }
            c.push_str(" exit-address-family\n");
        }
        c.push_str("!\n");
        c
    }
}

pub struct Frr {
    ns: String,
    /// The pathspace (`-N`), also the hostname.
    pub name: String,
    pub dir: tempfile::TempDir,
    pub conf_path: PathBuf,
    pub cfg: FrrConfig,
    run_dir: PathBuf,
    etc_dir: PathBuf,
    zebra: Option<Proc>,
    bgpd: Option<Proc>,
    bfdd: Option<Proc>,
}

impl Frr {
    pub fn start(ns: &Netns, cfg: FrrConfig) -> Frr {
        let name = format!("{}{}", super::netns::PREFIX, super::unique("frr"));
        let dir = tempfile::Builder::new()
            .prefix("fvt-frr")
            .tempdir()
            .expect("tempdir");
        let run_dir = PathBuf::from("/var/run/frr").join(&name);
        let etc_dir = PathBuf::from("/etc/frr").join(&name);
        // The daemons drop privileges to user frr: their directories must be frr's and the
        // config (in our tempdir) readable by it.
        for d in [&run_dir, &etc_dir] {
            std::fs::create_dir_all(d).expect("mkdir frr pathspace");
            chown_frr(d);
        }
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        // vtysh reads /etc/frr/NAME/vtysh.conf and complains on stderr when it is missing.
        std::fs::write(etc_dir.join("vtysh.conf"), "").expect("vtysh.conf");
        let conf_path = dir.path().join("frr.conf");
        let mut f = Frr {
            ns: ns.name().to_string(),
            name,
            dir,
            conf_path,
            cfg,
            run_dir,
            etc_dir,
            zebra: None,
            bgpd: None,
            bfdd: None,
        };
        f.write_config();
        let conf = f.conf_path.to_string_lossy().into_owned();
        let zpid = f.run_dir.join("zebra.pid").to_string_lossy().into_owned();
        let zlog = f.dir.path().join("zebra.log");
        f.zebra = Some(Proc::spawn(
            &f.ns,
            &[
                "/usr/lib/frr/zebra",
                "-N",
                &f.name,
                "-f",
                &conf,
                "-i",
                &zpid,
                "-P",
                "0",
            ],
            &zlog,
            &[],
        ));
        super::wait_until("FRR zebra up", super::START, super::POLL, || {
            if let Some(st) = f.zebra.as_mut().and_then(|p| p.try_wait()) {
                panic!("zebra exited at start ({st}):\n{}", tail_file(&zlog, 40));
            }
            if f.run_dir.join("zserv.api").exists() && f.run_dir.join("zebra.vty").exists() {
                Ok(())
            } else {
                Err("no zserv.api / zebra.vty yet")
            }
        });
        f.start_bgpd();
        f
    }

    fn write_config(&self) {
        let text = self.cfg.render(&self.name);
        std::fs::write(&self.conf_path, &text).expect("write frr.conf");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&self.conf_path, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let out = Command::new("vtysh")
            .arg("-C")
            .arg("-f")
            .arg(&self.conf_path)
            .output()
            .expect("vtysh -C");
        assert!(
            out.status.success(),
            "vtysh -C rejects the generated config:\n{text}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn bgpd_log(&self) -> PathBuf {
        self.dir.path().join("bgpd.log")
    }

    /// Starts bgpd (again) with the current config.
    pub fn start_bgpd(&mut self) {
        self.write_config();
        let _ = std::fs::remove_file(self.run_dir.join("bgpd.vty"));
        let conf = self.conf_path.to_string_lossy().into_owned();
        let bpid = self.run_dir.join("bgpd.pid").to_string_lossy().into_owned();
        let log = self.bgpd_log();
        self.bgpd = Some(Proc::spawn(
            &self.ns,
            &[
                "/usr/lib/frr/bgpd",
                "-N",
                &self.name,
                "-f",
                &conf,
                "-i",
                &bpid,
                "-P",
                "0",
            ],
            &log,
            &[],
        ));
        super::wait_until("FRR bgpd answers vtysh", super::START, super::POLL, || {
            if let Some(st) = self.bgpd.as_mut().and_then(|p| p.try_wait()) {
                panic!("bgpd exited at start ({st}):\n{}", tail_file(&log, 40));
            }
            let out = self.vtysh(&["show bgp summary json"]);
            match serde_json::from_str::<Value>(&out) {
                Ok(v) if v.get("ipv4Unicast").is_some() => Ok(()),
                _ => Err(out),
            }
        });
    }

    /// Starts bfdd (again) for this instance; `neighbor X bfd` in bgpd registers with it
    /// through zebra. Waits until it answers vtysh.
    pub fn start_bfdd(&mut self) {
        let _ = std::fs::remove_file(self.run_dir.join("bfdd.vty"));
        let conf = self.conf_path.to_string_lossy().into_owned();
        let pid = self.run_dir.join("bfdd.pid").to_string_lossy().into_owned();
        let log = self.dir.path().join("bfdd.log");
        self.bfdd = Some(Proc::spawn(
            &self.ns,
            &[
                "/usr/lib/frr/bfdd",
                "-N",
                &self.name,
                "-f",
                &conf,
                "-i",
                &pid,
                "-P",
                "0",
            ],
            &log,
            &[],
        ));
        super::wait_until("FRR bfdd answers vtysh", super::START, super::POLL, || {
            if let Some(st) = self.bfdd.as_mut().and_then(|p| p.try_wait()) {
                panic!("bfdd exited at start ({st}):\n{}", tail_file(&log, 40));
            }
            let out = self.vtysh(&["show bfd peers json"]);
            match serde_json::from_str::<Value>(&out) {
                Ok(Value::Array(_)) => Ok(()),
                _ => Err(out),
            }
        });
    }

    /// SIGKILL bfdd: BFD Control packets stop, bgpd stays.
    pub fn kill_bfdd(&mut self) {
        if let Some(mut p) = self.bfdd.take() {
            p.kill();
        }
    }

    /// `show bfd peers json` → the peer with this address, if bfdd has it.
    pub fn bfd_peer(&self, addr: &str) -> Result<Value, String> {
        let v = self.json("show bfd peers json")?;
        v.as_array()
            .and_then(|a| a.iter().find(|p| p["peer"] == addr).cloned())
            .ok_or_else(|| format!("no BFD peer {addr} in {v}"))
    }

    /// SIGKILL bgpd, as if it crashed (zebra stays).
    pub fn kill_bgpd(&mut self) {
        if let Some(mut p) = self.bgpd.take() {
            p.kill();
        }
    }

    pub fn signal_bgpd(&self, sig: i32) {
        if let Some(p) = &self.bgpd {
            p.signal(sig);
        }
    }

    /// `vtysh -N NAME -c CMD1 -c CMD2 …`, stdout (+ stderr when not empty).
    pub fn vtysh(&self, cmds: &[&str]) -> String {
        let mut c = Command::new("vtysh");
        c.args(["-N", &self.name]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        match super::output_bounded(&mut c, super::CLI_LIMIT) {
            Ok(o) => {
                let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
                let e = String::from_utf8_lossy(&o.stderr);
                if !e.trim().is_empty() {
                    s.push_str(&e);
                }
                s
            }
            Err(e) => format!("<vtysh: {e}>"),
        }
    }

    /// A `show … json` command parsed; `Value::Null` (and the text in an error) if it is not JSON.
    pub fn json(&self, cmd: &str) -> Result<Value, String> {
        let out = self.vtysh(&[cmd]);
        serde_json::from_str(&out).map_err(|e| format!("{cmd}: {e}: {out}"))
    }

    /// `show bgp neighbors ADDR json` → the object for ADDR.
    pub fn neighbor(&self, addr: &str) -> Result<Value, String> {
        let v = self.json(&format!("show bgp neighbors {addr} json"))?;
        v.get(addr)
            .cloned()
            .ok_or_else(|| format!("no {addr} in {v}"))
    }

    /// `bgpState` of a neighbor ("Established", "Active", "Connect", "Idle", "OpenSent"…).
    pub fn neighbor_state(&self, addr: &str) -> String {
        match self.neighbor(addr) {
            Ok(n) => n["bgpState"].as_str().unwrap_or("?").to_string(),
            Err(e) => format!("<{e}>"),
        }
    }

    /// `show bgp ipv4|ipv6 unicast json` → the "routes" object (prefix → array of paths).
    pub fn rib(&self, v6: bool) -> Result<serde_json::Map<String, Value>, String> {
        let afi = if v6 { "ipv6" } else { "ipv4" };
        let v = self.json(&format!("show bgp {afi} unicast json"))?;
        match v.get("routes") {
            Some(Value::Object(m)) => Ok(m.clone()),
            _ => Err(format!("no routes in {v}")),
        }
    }

    /// Paths for `prefix` learned from `peer` (peerId), if any.
    pub fn paths_from(&self, prefix: &str, peer: &str) -> Result<Vec<Value>, String> {
        let rib = self.rib(prefix.contains(':'))?;
        Ok(rib
            .get(prefix)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter(|p| p["peerId"] == peer).cloned().collect())
            .unwrap_or_default())
    }

    fn afi(prefix: &str) -> &'static str {
        if prefix.contains(':') {
            "ipv6"
        } else {
            "ipv4"
        }
    }

    pub fn remove_network(&mut self, prefix: &str) {
        let r = format!("router bgp {}", self.cfg.asn);
        let a = format!("address-family {} unicast", Self::afi(prefix));
        let n = format!("no network {prefix}");
        let out = self.vtysh(&["configure terminal", &r, &a, &n]);
        assert!(out.trim().is_empty(), "vtysh no network {prefix}: {out}");
        self.cfg.networks.retain(|p| p != prefix);
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== FRR {} ({}) config ====\n{}\n==== show bgp summary ====\n{}\n==== bgpd log ====\n{}",
                self.name,
                self.ns,
                self.cfg.render(&self.name),
                self.vtysh(&["show bgp summary"]),
                tail_file(&self.bgpd_log(), 80)
            );
        }
        if let Some(mut p) = self.bgpd.take() {
            p.kill();
        }
        if let Some(mut p) = self.bfdd.take() {
            p.kill();
        }
        if let Some(mut p) = self.zebra.take() {
            p.kill();
        }
        let _ = std::fs::remove_dir_all(&self.run_dir);
        let _ = std::fs::remove_dir_all(&self.etc_dir);
    }
}

fn chown_frr(path: &std::path::Path) {
    let out = Command::new("chown")
        .args(["frr:frr"])
        .arg(path)
        .output()
        .expect("chown");
    assert!(
        out.status.success(),
        "chown frr {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}
