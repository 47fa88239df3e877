//! BIRD 2 driver: config generation, `bird -f` in a namespace, `birdc` parsing.

use super::proc::Proc;
use super::{tail_file, Netns};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

/// One `protocol bgp` with an ipv4 and an ipv6 channel over a single session.
#[derive(Clone, Debug)]
pub struct BirdPeer {
    /// Protocol name (what `show protocols all NAME` takes).
    pub name: String,
    pub local_addr: Option<String>,
    pub local_as: u32,
    pub neighbor_addr: String,
    pub neighbor_as: u32,
    pub password: Option<String>,
    pub hold_time: Option<u32>,
    /// IPv6 next hop to send over an IPv4 session (`next hop address` of the ipv6 channel).
    pub v6_next_hop: Option<String>,
    pub passive: bool,
    /// Extra statements inside the protocol block. When they define the channels
    /// (`ipv4 {`), the default channels (import all, export the static routes) are left out.
    pub extra: String,
}

impl BirdPeer {
    /// The usual peer of ferrovia: BIRD at 198.18.0.254 AS `local_as`, neighbor ferrovia at
    /// 198.18.0.1 AS `neighbor_as`, IPv6 next hop fd00:198:18::254, hold time 9.
    pub fn to_ferrovia(local_as: u32, neighbor_as: u32) -> BirdPeer {
        BirdPeer {
            name: "ferrovia".into(),
            local_addr: Some(super::PEER_V4.into()),
            local_as,
            neighbor_addr: super::FERROVIA_V4.into(),
            neighbor_as,
            password: None,
            hold_time: Some(9),
            v6_next_hop: Some(super::PEER_V6.into()),
            passive: false,
            extra: String::new(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct BirdConfig {
    pub router_id: String,
    /// Prefixes originated as static blackhole routes and exported to every BGP peer.
    pub originate: Vec<String>,
    pub peers: Vec<BirdPeer>,
    /// More top-level statements (e.g. a `protocol bfd` block).
    pub extra: String,
}

impl BirdConfig {
    pub fn render(&self) -> String {
        let mut c = String::new();
        writeln!(c, "router id {};", self.router_id).unwrap();
        c.push_str("log stderr all;\n");
        c.push_str("protocol device { scan time 2; }\n");
        c.push_str("protocol direct { ipv4; ipv6; }\n");
        let (v6, v4): (Vec<&String>, Vec<&String>) = self
            .originate
            .iter()
            .partition(|p| super::split_originate(p).0.contains(':'));
        let route = |c: &mut String, entry: &str| {
            let (p, comms) = super::split_originate(entry);
            if comms.is_empty() {
                writeln!(c, "  route {p} blackhole;").unwrap();
            } else {
                let adds: String = comms
                    .iter()
                    .map(|x| format!(" bgp_community.add(({}));", x.replace(':', ",")))
                    .collect();
                writeln!(c, "  route {p} blackhole {{{adds} }};").unwrap();
            }
        };
        c.push_str("protocol static orig4 {\n  ipv4;\n");
        for p in v4 {
            route(&mut c, p);
        }
        c.push_str("}\nprotocol static orig6 {\n  ipv6;\n");
        for p in v6 {
            route(&mut c, p);
        }
        c.push_str("}\n");
        c.push_str(&self.extra);
        for p in &self.peers {
            writeln!(c, "protocol bgp {} {{", p.name).unwrap();
            match &p.local_addr {
                Some(a) => writeln!(c, "  local {a} as {};", p.local_as).unwrap(),
                None => writeln!(c, "  local as {};", p.local_as).unwrap(),
            }
            writeln!(c, "  neighbor {} as {};", p.neighbor_addr, p.neighbor_as).unwrap();
            if let Some(pw) = &p.password {
                writeln!(c, "  password \"{pw}\";").unwrap();
            }
            if let Some(h) = p.hold_time {
                writeln!(c, "  hold time {h};").unwrap();
                writeln!(c, "  startup hold time {h};").unwrap();
            }
            if p.passive {
                c.push_str("  passive on;\n");
            }
            // Fast (re)connection so tests do not wait for BIRD's defaults (5 s delay,
            // 120 s retry, 60–300 s wait after an error).
            c.push_str(
                "  connect delay time 1;\n  connect retry time 2;\n  error wait time 1, 4;\n",
            );
            c.push_str(&p.extra);
            if p.extra.contains("ipv4 {") {
                c.push_str("}\n");
                continue;
            }
            c.push_str("  ipv4 { import all; export where source = RTS_STATIC; };\n");
            c.push_str("  ipv6 { import all; export where source = RTS_STATIC;");
            if let Some(nh) = &p.v6_next_hop {
                write!(c, " next hop address {nh};").unwrap();
            }
            c.push_str(" };\n}\n");
        }
        c
    }
}

/// `show protocols all NAME`, parsed.
#[derive(Clone, Debug, Default)]
pub struct BirdProto {
    /// Protocol state column: up, start, down…
    pub proto_state: String,
    /// Info column (for BGP: Established, Active, Connect, Idle, OpenSent…).
    pub info: String,
    /// `BGP state:` line.
    pub bgp_state: String,
    /// `Last error:` line, if any (e.g. "Received: Bad peer AS").
    pub last_error: Option<String>,
    /// Every `Key: value` line (first occurrence wins; channel lines are prefixed by
    /// "ipv4."/"ipv6.").
    pub fields: BTreeMap<String, String>,
    pub raw: String,
}

impl BirdProto {
    pub fn established(&self) -> bool {
        self.bgp_state == "Established"
    }
    /// Number of routes imported on a channel ("ipv4" / "ipv6"), from the `Routes:` line.
    pub fn imported(&self, channel: &str) -> Option<u32> {
        let r = self.fields.get(&format!("{channel}.Routes"))?;
        r.split_whitespace().next()?.parse().ok()
    }
}

/// One route from `show route all`.
#[derive(Clone, Debug, Default)]
pub struct BirdRoute {
    pub prefix: String,
    /// Whole first line (`unicast [proto time] * (100) [AS65000i]`).
    pub head: String,
    /// `via X on dev` gateway, if any.
    pub via: Option<String>,
    /// Attributes: "BGP.as_path", "BGP.next_hop", "BGP.community", "BGP.local_pref", …
    pub attrs: BTreeMap<String, String>,
}

impl BirdRoute {
    pub fn as_path(&self) -> &str {
        self.attrs
            .get("BGP.as_path")
            .map(String::as_str)
            .unwrap_or("")
    }
    pub fn next_hop(&self) -> &str {
        self.attrs
            .get("BGP.next_hop")
            .map(String::as_str)
            .unwrap_or("")
    }
}

pub struct Bird {
    ns: String,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    pub conf_path: PathBuf,
    pub log: PathBuf,
    pub cfg: BirdConfig,
    proc: Option<Proc>,
}

impl Bird {
    /// Writes the config, checks it with `bird -p`, starts `bird -f` in `ns`, waits for the
    /// control socket.
    pub fn start(ns: &Netns, cfg: BirdConfig) -> Bird {
        let dir = tempfile::Builder::new()
            .prefix("fvt-bird")
            .tempdir()
            .expect("tempdir");
        let sock = dir.path().join("bird.ctl");
        let conf_path = dir.path().join("bird.conf");
        let log = dir.path().join("bird.log");
        let mut b = Bird {
            ns: ns.name().to_string(),
            dir,
            sock,
            conf_path,
            log,
            cfg,
            proc: None,
        };
        b.write_config();
        b.spawn();
        b
    }

    fn write_config(&self) {
        let text = self.cfg.render();
        std::fs::write(&self.conf_path, &text).expect("write bird.conf");
        let out = Command::new("bird")
            .args(["-p", "-c"])
            .arg(&self.conf_path)
            .output()
            .expect("bird -p");
        assert!(
            out.status.success(),
            "bird -p rejects the generated config:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let conf = self.conf_path.to_string_lossy().into_owned();
        let sock = self.sock.to_string_lossy().into_owned();
        let pid = self
            .dir
            .path()
            .join("bird.pid")
            .to_string_lossy()
            .into_owned();
        self.proc = Some(Proc::spawn(
            &self.ns,
            &["bird", "-f", "-c", &conf, "-s", &sock, "-P", &pid],
            &self.log,
            &[],
        ));
        super::wait_until(
            "BIRD control socket answers",
            super::START,
            super::POLL,
            || {
                if let Some(p) = self.proc.as_mut() {
                    if let Some(st) = p.try_wait() {
                        panic!("bird exited at start ({st}):\n{}", tail_file(&self.log, 50));
                    }
                }
                let out = self.birdc_raw("show status");
                if out.contains("Daemon is up and running") {
                    Ok(())
                } else {
                    Err(out)
                }
            },
        );
    }

    /// BIRD's process id (None once it exited or was stopped).
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    fn birdc_raw(&self, cmd: &str) -> String {
        let mut args = vec!["-s".to_string(), self.sock.to_string_lossy().into_owned()];
        args.extend(cmd.split_whitespace().map(str::to_string));
        match super::output_bounded(Command::new("birdc").args(&args), super::CLI_LIMIT) {
            Ok(o) => {
                String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr)
            }
            Err(e) => format!("<birdc: {e}>"),
        }
    }

    /// Runs a `birdc` command, returns its output without the "BIRD x.y ready." banner.
    pub fn birdc(&self, cmd: &str) -> String {
        self.birdc_raw(cmd)
            .lines()
            .filter(|l| !l.starts_with("BIRD ") || !l.ends_with("ready."))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `show protocols all NAME`, parsed.
    pub fn protocol(&self, name: &str) -> BirdProto {
        let raw = self.birdc(&format!("show protocols all {name}"));
        parse_protocol(name, &raw)
    }

    /// `show route all [ARGS]`, parsed. `args` e.g. "protocol ferrovia", "for 10.244.1.0/26",
    /// "table master6".
    pub fn routes(&self, args: &str) -> Vec<BirdRoute> {
        parse_routes(&self.birdc(&format!("show route all {args}")))
    }

    /// Routes learned from protocol `name` (both tables), by prefix.
    pub fn routes_from(&self, name: &str) -> BTreeMap<String, BirdRoute> {
        self.routes(&format!("protocol {name}"))
            .into_iter()
            .map(|r| (r.prefix.clone(), r))
            .collect()
    }

    /// Rewrites the config with a new list of originated prefixes and runs `birdc configure`.
    pub fn set_originate(&mut self, prefixes: &[&str]) {
        self.cfg.originate = prefixes.iter().map(|s| s.to_string()).collect();
        self.reconfigure();
    }

    pub fn reconfigure(&mut self) {
        self.write_config();
        let out = self.birdc("configure");
        assert!(
            out.contains("Reconfigured") || out.contains("Reconfiguration in progress"),
            "birdc configure: {out}"
        );
    }

    /// SIGKILL, as if the daemon crashed.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it again (same config) after `kill`.
    pub fn restart(&mut self) {
        self.kill();
        self.write_config();
        self.spawn();
    }

    pub fn signal(&self, sig: i32) {
        if let Some(p) = &self.proc {
            p.signal(sig);
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== BIRD ({}) config ====\n{}\n==== protocols ====\n{}\n==== log ====\n{}",
                self.ns,
                self.cfg.render(),
                self.birdc("show protocols all"),
                self.log_tail(80)
            );
        }
        self.kill();
    }
}

pub fn parse_protocol(name: &str, raw: &str) -> BirdProto {
    let mut p = BirdProto {
        raw: raw.to_string(),
        ..Default::default()
    };
    let mut channel: Option<String> = None;
    for line in raw.lines() {
        let trimmed = line.trim();
        if line.starts_with(name) && line.split_whitespace().next() == Some(name) {
            // name proto table state since info…
            let cols: Vec<&str> = line.split_whitespace().collect();
            p.proto_state = cols.get(3).map(|s| s.to_string()).unwrap_or_default();
            // "Since" may be "03:04:03.699" or a date + time; info is what follows the time.
            let mut i = 4;
            while i < cols.len() && (cols[i].contains(':') || cols[i].contains('-')) {
                i += 1;
            }
            p.info = cols[i.min(cols.len())..].join(" ");
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("Channel ") {
            channel = Some(rest.trim().to_string());
            continue;
        }
        if let Some((k, v)) = trimmed.split_once(':') {
            let k = k.trim();
            let v = v.trim().to_string();
            if k == "BGP state" {
                p.bgp_state = v.clone();
            }
            if k == "Last error" {
                p.last_error = Some(v.clone());
            }
            let key = match &channel {
                Some(c) => format!("{c}.{k}"),
                None => k.to_string(),
            };
            p.fields.entry(key).or_insert(v);
        }
    }
    p
}

pub fn parse_routes(raw: &str) -> Vec<BirdRoute> {
    let mut out: Vec<BirdRoute> = Vec::new();
    let mut last_prefix = String::new();
    for line in raw.lines() {
        if line.trim().is_empty() || line.starts_with("Table ") || line.starts_with("BIRD ") {
            continue;
        }
        if line.starts_with('\t') {
            let t = line.trim();
            let Some(r) = out.last_mut() else { continue };
            if let Some(rest) = t.strip_prefix("via ") {
                r.via = rest.split_whitespace().next().map(str::to_string);
            } else if let Some((k, v)) = t.split_once(':') {
                r.attrs.insert(k.trim().to_string(), v.trim().to_string());
            }
        } else if line.starts_with(' ') {
            // Another route for the same prefix.
            out.push(BirdRoute {
                prefix: last_prefix.clone(),
                head: line.trim().to_string(),
                ..Default::default()
            });
        } else {
            let mut it = line.splitn(2, char::is_whitespace);
            let prefix = it.next().unwrap_or("").to_string();
            last_prefix = prefix.clone();
            out.push(BirdRoute {
                prefix,
                head: it.next().unwrap_or("").trim().to_string(),
                ..Default::default()
            });
        }
    }
    out
}
