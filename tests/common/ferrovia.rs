//! The ferrovia agent under test: config YAML, `ferrovia agent` in a namespace, `ferrovia status`
//! and `ferrovia routes` over the status socket.

use super::proc::Proc;
use super::{tail_file, Netns};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct FerroviaPeer {
    pub address: String,
    pub as_number: u32,
    pub password: Option<String>,
    pub port: Option<u16>,
    pub passive: bool,
    pub hold_time: Option<u32>,
    /// `ttlSecurity` (GTSM hops).
    pub ttl_security: Option<u8>,
    /// More keys of the peer, as YAML lines without indentation (e.g.
    /// `maxPrefixes: { limit: 2 }`).
    pub extra: Vec<String>,
    /// `bfd: { enabled: true, intervalMs, multiplier }`.
    pub bfd: Option<(u32, u32)>,
}

impl FerroviaPeer {
    /// The peer at 198.18.0.254.
    pub fn peer(as_number: u32) -> FerroviaPeer {
        FerroviaPeer {
            address: super::PEER_V4.into(),
            as_number,
            password: None,
            port: None,
            passive: false,
            hold_time: None,
            ttl_security: None,
            extra: Vec::new(),
            bfd: None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct FerroviaConfig {
    pub name: String,
    pub as_number: u32,
    pub router_id: String,
    pub addresses: Vec<String>,
    pub hold_time: Option<u32>,
    pub connect_retry: Option<u32>,
    pub peers: Vec<FerroviaPeer>,
    /// Plain prefixes, or `prefix|community,community` for entries with communities.
    pub originate: Vec<String>,
    /// YAML lines put into the `bgp:` section as they are (indented by two spaces), e.g.
    /// `  routeReflector: { clusterId: 198.18.0.1 }\n`.
    pub extra_bgp: String,
    /// YAML put at the top level as it is, e.g. `kernel: { enabled: false }\n`.
    pub extra: String,
}

impl FerroviaConfig {
    /// node1 / 198.18.0.1 / fd00:198:18::1, hold 9, connect retry 1, one peer at .254.
    pub fn node1(as_number: u32, peer_as: u32, originate: &[&str]) -> FerroviaConfig {
        FerroviaConfig {
            name: "node1".into(),
            as_number,
            router_id: super::FERROVIA_V4.into(),
            addresses: vec![super::FERROVIA_V4.into(), super::FERROVIA_V6.into()],
            hold_time: Some(9),
            connect_retry: Some(1),
            peers: vec![FerroviaPeer::peer(peer_as)],
            originate: originate.iter().map(|s| s.to_string()).collect(),
            extra_bgp: String::new(),
            extra: String::new(),
        }
    }

    /// The YAML file, with password files written into `dir`.
    pub fn render(&self, dir: &Path, socket: &Path) -> String {
        let mut c = String::new();
        writeln!(
            c,
            "node:\n  name: {}\n  asNumber: {}\n  routerId: {}\n  addresses: [{}]",
            self.name,
            self.as_number,
            self.router_id,
            self.addresses
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
        .unwrap();
        c.push_str("bgp:\n  listen: { address: \"::\", port: 179 }\n");
        c.push_str(&self.extra_bgp);
        if let Some(h) = self.hold_time {
            writeln!(c, "  holdTime: {h}").unwrap();
        }
        if let Some(r) = self.connect_retry {
            writeln!(c, "  connectRetry: {r}").unwrap();
        }
        c.push_str(if self.peers.is_empty() {
            "  peers: []\n"
        } else {
            "  peers:\n"
        });
        for (i, p) in self.peers.iter().enumerate() {
            writeln!(
                c,
                "    - address: \"{}\"\n      asNumber: {}",
                p.address, p.as_number
            )
            .unwrap();
            if let Some(pw) = &p.password {
                let f = dir.join(format!("peer{i}.password"));
                std::fs::write(&f, pw).expect("write password file");
                writeln!(c, "      passwordFile: {}", f.display()).unwrap();
            }
            if let Some(port) = p.port {
                writeln!(c, "      port: {port}").unwrap();
            }
            if p.passive {
                c.push_str("      passive: true\n");
            }
            if let Some(h) = p.hold_time {
                writeln!(c, "      holdTime: {h}").unwrap();
            }
            if let Some(h) = p.ttl_security {
                writeln!(c, "      ttlSecurity: {h}").unwrap();
            }
            for line in &p.extra {
                writeln!(c, "      {line}").unwrap();
            }
            if let Some((interval, mult)) = p.bfd {
                writeln!(
                    c,
                    "      bfd: {{ enabled: true, intervalMs: {interval}, multiplier: {mult} }}"
                )
                .unwrap();
            }
        }
        if self.originate.is_empty() {
            c.push_str("  originate: []\n");
        } else {
            c.push_str("  originate:\n");
            for o in &self.originate {
                match o.split_once('|') {
                    None => writeln!(c, "    - \"{o}\"").unwrap(),
                    Some((p, comms)) => {
                        let list = comms
                            .split(',')
                            .map(|x| format!("\"{x}\""))
                            .collect::<Vec<_>>()
                            .join(", ");
                        writeln!(c, "    - {{ prefix: \"{p}\", communities: [{list}] }}").unwrap()
                    }
                }
            }
        }
        writeln!(c, "status: {{ socket: {} }}", socket.display()).unwrap();
        c.push_str(&self.extra);
        c
    }
}

pub struct Ferrovia {
    ns: String,
    /// This test's own link (or copy) of the binary: a `cargo build` running meanwhile replaces
    /// target/debug/ferrovia, and the agent and the CLI must stay the same build.
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub conf_path: PathBuf,
    pub log: PathBuf,
    pub cfg: FerroviaConfig,
    proc: Option<Proc>,
    /// Printed on failure along with the log.
    starts: u32,
}

impl Ferrovia {
    /// Writes the config, starts `ferrovia agent` (FERROVIA_LOG=debug) and waits until the
    /// status socket answers.
    pub fn start(ns: &Netns, cfg: FerroviaConfig) -> Ferrovia {
        let dir = tempfile::Builder::new()
            .prefix("fvt-ferrovia")
            .tempdir()
            .expect("tempdir");
        let socket = dir.path().join("ferrovia.sock");
        let conf_path = dir.path().join("ferrovia.yaml");
        let log = dir.path().join("ferrovia.log");
        let bin = dir.path().join("ferrovia");
        let exe = super::bin();
        if std::fs::hard_link(exe, &bin).is_err() {
            std::fs::copy(exe, &bin).unwrap_or_else(|e| panic!("copy {exe}: {e}"));
        }
        let mut f = Ferrovia {
            ns: ns.name().to_string(),
            bin,
            dir,
            socket,
            conf_path,
            log,
            cfg,
            proc: None,
            starts: 0,
        };
        f.spawn();
        f
    }

    fn spawn(&mut self) {
        let text = self.cfg.render(self.dir.path(), &self.socket);
        std::fs::write(&self.conf_path, text).expect("write ferrovia.yaml");
        let _ = std::fs::remove_file(&self.socket);
        self.starts += 1;
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .and_then(|mut f| {
                use std::io::Write;
                writeln!(f, "==== harness: start #{} ====", self.starts)
            });
        let conf = self.conf_path.to_string_lossy().into_owned();
        let bin = self.bin.to_string_lossy().into_owned();
        // FERROVIA_TEST_AGENT_PREFIX: words run before the agent (which they must exec, so the
        // pid stays the agent's), `{name}` being the agent's name — for profiling, e.g.
        // `env LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so
        // DUMP_HEAPTRACK_OUTPUT=/tmp/heaptrack-{name}.raw`.
        let prefix: Vec<String> = std::env::var("FERROVIA_TEST_AGENT_PREFIX")
            .unwrap_or_default()
            .split_whitespace()
            .map(|w| w.replace("{name}", &self.cfg.name))
            .collect();
        let mut argv: Vec<&str> = prefix.iter().map(String::as_str).collect();
        argv.extend([bin.as_str(), "agent", "--config", &conf]);
        self.proc = Some(Proc::spawn(
            &self.ns,
            &argv,
            &self.log,
            &[
                ("FERROVIA_LOG", "debug"),
                ("RUST_BACKTRACE", "1"),
                ("NO_COLOR", "1"),
            ],
        ));
        super::wait_until(
            "ferrovia status socket answers",
            super::START,
            super::POLL,
            || {
                if let Some(st) = self.proc.as_mut().and_then(|p| p.try_wait()) {
                    panic!(
                        "ferrovia agent exited at start ({st}):\n{}",
                        tail_file(&self.log, 60)
                    );
                }
                self.status()
            },
        );
    }

    /// The agent's process id (None once it exited or was stopped).
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().and_then(|p| p.pid())
    }

    /// Restarts the agent with a new config (SIGTERM first, asserting a clean exit).
    pub fn restart_with(&mut self, cfg: FerroviaConfig) {
        if self.proc.is_some() {
            let st = self.sigterm();
            assert_eq!(
                st.and_then(|s| s.code()),
                Some(0),
                "ferrovia exit status after SIGTERM"
            );
        }
        self.cfg = cfg;
        self.spawn();
    }

    /// SIGKILL, as if the node died: nothing is said to the peers.
    pub fn sigkill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts the agent again with the same config after `sigkill` / `sigterm`.
    pub fn start_again(&mut self) {
        assert!(self.proc.is_none(), "the agent is still running");
        self.spawn();
    }

    /// SIGTERM (a restart: sessions drop without a NOTIFICATION); waits (bounded,
    /// generously) for the exit. None if it had to be SIGKILLed.
    pub fn sigterm(&mut self) -> Option<ExitStatus> {
        self.proc.take().and_then(|mut p| p.terminate(super::START))
    }

    /// SIGINT (stop: CEASE to every peer); waits (bounded, generously) for the exit. None if
    /// it had to be SIGKILLed.
    pub fn sigint(&mut self) -> Option<ExitStatus> {
        self.proc
            .take()
            .and_then(|mut p| p.stop_with(libc::SIGINT, super::START))
    }

    fn cli(&self, sub: &str) -> Result<Value, String> {
        let out = super::output_bounded(
            Command::new(&self.bin)
                .args([sub, "--socket"])
                .arg(&self.socket)
                .arg("--json"),
            super::CLI_LIMIT,
        )?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "ferrovia {sub} exited {}: {}{}",
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_str(&stdout).map_err(|e| format!("ferrovia {sub} --json: {e}: {stdout}"))
    }

    /// `ferrovia status --socket S --json`.
    pub fn status(&self) -> Result<Value, String> {
        self.cli("status")
    }

    /// `ferrovia routes --socket S --json` (the Loc-RIB, an array).
    pub fn routes(&self) -> Result<Vec<Value>, String> {
        match self.cli("routes")? {
            Value::Array(a) => Ok(a),
            other => Err(format!("routes is not an array: {other}")),
        }
    }

    /// The status entry for a peer.
    pub fn peer(&self, addr: &str) -> Result<Value, String> {
        let s = self.status()?;
        s["peers"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["address"] == addr).cloned())
            .ok_or_else(|| format!("no peer {addr} in status {s}"))
    }

    /// Loc-RIB entries for `prefix`.
    pub fn routes_for(&self, prefix: &str) -> Result<Vec<Value>, String> {
        Ok(self
            .routes()?
            .into_iter()
            .filter(|r| r["prefix"] == prefix)
            .collect())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ferrovia {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "==== ferrovia ({}) config ====\n{}\n==== status ====\n{:?}\n==== routes ====\n{:?}\n==== ferrovia log ====\n{}",
                self.ns,
                std::fs::read_to_string(&self.conf_path).unwrap_or_default(),
                self.status(),
                self.routes(),
                tail_file(&self.log, 300)
            );
        }
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(3));
        }
    }
}
