//! The scale simulator's world (`ferrovia bench sim`) and a small LAN for reflector tests.
//!
//! [`Lan`]: one namespace holds a bridge `br0`; member namespaces each get an `eth0` on it.
//! Everything is on-link in 198.18.0.0/15 and fd00:198:18::/64, so reflected next hops
//! (the originators) resolve without routing.
//!
//! [`SimWorld`]: a [`Lan`] whose hub is the simulator's namespace and one member namespace
//! per reflector (198.18.0.1 + k). The N simulated nodes' addresses (198.19.0.1 + i,
//! fd00:198:18::1:0 + i) are on the hub's `lo`, and the reflectors route 198.19.0.0/16 via
//! the hub's one address on the bridge ([`SIM_HUB`]). They used to be on the bridge itself,
//! on-link for the reflectors: each reflector then needed a neighbour (ARP) entry per
//! simulated node, and the kernel's neighbour table is shared by every namespace of the
//! machine, with a hard limit (net.ipv4.neigh.default.gc_thresh3) of 1024 entries by default.
//! At N = 1,000 the table overflowed ("neighbour: arp_cache: neighbor table overflow!" in the
//! kernel log): SYN-ACKs to the nodes without an entry were dropped and half the sessions
//! crawled up through SYN retransmissions over minutes (the N = 1,000 "stall").

use super::netns::{NetLock, Netns};
use super::{Bird, BirdConfig, BirdPeer, Ferrovia, FerroviaConfig};
use serde_json::Value;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// Address of simulated node 0; node i has this + i.
pub const SIM_FIRST: &str = "198.19.0.1";
/// IPv6 next hop of simulated node 0; node i has this + i.
pub const SIM_FIRST_V6: &str = "fd00:198:18::1:0";
/// The range the simulated nodes connect from.
pub const SIM_RANGE: &str = "198.19.0.0/16";
/// The simulator's (hub's) address on the bridge: the reflectors' gateway to [`SIM_RANGE`].
pub const SIM_HUB: &str = "198.18.0.250";
pub const SIM_AS: u32 = 64512;
/// The blocks the agent of the mesh mode originates.
pub const MESH_V4: &str = "10.245.0.0/26";
pub const MESH_V6: &str = "fd00:10:245::/122";

/// A bridge in `hub` and member namespaces on it.
pub struct Lan {
    pub members: Vec<Netns>,
    /// Declared last: dropped after the members (their veths go with them).
    pub hub: Netns,
}

impl Lan {
    /// The hub with `br0` up and `hub_addrs` on it; `members` namespaces, member k with
    /// `eth0` on the bridge and 198.18.0.(k+1)/15, fd00:198:18::(k+1)/64.
    pub fn new(lock: &NetLock, tag: &str, members: usize, hub_addrs: &[String]) -> Lan {
        let hub = Netns::new(lock, &format!("{tag}h"));
        hub.ip(&["link", "add", "br0", "type", "bridge"]);
        hub.link_up("br0");
        batch_addrs(&hub, "br0", hub_addrs);
        let mut ms = Vec::new();
        for k in 0..members {
            let ns = Netns::new(lock, &format!("{tag}{k}"));
            let port = format!("m{k}");
            Netns::veth(&ns, "eth0", &hub, &port);
            hub.ip(&["link", "set", &port, "master", "br0"]);
            ns.addr("eth0", &format!("{}/15", Lan::v4(k)));
            ns.addr("eth0", &format!("{}/64", Lan::v6(k)));
            ms.push(ns);
        }
        Lan { members: ms, hub }
    }

    /// Member k's IPv4 address.
    pub fn v4(k: usize) -> String {
        format!("198.18.0.{}", k + 1)
    }

    /// Member k's IPv6 address.
    pub fn v6(k: usize) -> String {
        format!("fd00:198:18::{}", k + 1)
    }
}

/// A [`Lan`] of `members` reflector namespaces whose hub holds the simulated nodes'
/// addresses on `lo` and [`SIM_HUB`] on the bridge; every member routes [`SIM_RANGE`] via
/// the hub, so it needs one neighbour entry for all simulated nodes (see the module doc).
fn routed_lan(lock: &NetLock, tag: &str, members: usize, nodes: u32, dual_stack: bool) -> Lan {
    let lan = Lan::new(lock, tag, members, &[format!("{SIM_HUB}/15")]);
    lan.hub.link_up("lo");
    batch_addrs(&lan.hub, "lo", &sim_addresses(nodes, dual_stack));
    for m in &lan.members {
        m.ip(&["route", "add", SIM_RANGE, "via", SIM_HUB]);
    }
    lan
}

/// Adds many addresses to `dev` with one `ip -batch` (a thousand `ip addr add` would take
/// seconds).
fn batch_addrs(ns: &Netns, dev: &str, addrs: &[String]) {
    if addrs.is_empty() {
        return;
    }
    let mut script = String::new();
    for a in addrs {
        if a.contains(':') {
            script.push_str(&format!("addr add {a} dev {dev} nodad\n"));
        } else {
            script.push_str(&format!("addr add {a} dev {dev}\n"));
        }
    }
    let mut child = Command::new("ip")
        .args(["-n", ns.name(), "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write ip -batch script");
    let out = child.wait_with_output().expect("ip -batch");
    assert!(
        out.status.success(),
        "ip -n {} -batch: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The simulated nodes' addresses, as host addresses (for the hub's `lo`).
pub fn sim_addresses(nodes: u32, dual_stack: bool) -> Vec<String> {
    let v4: u32 = u32::from(SIM_FIRST.parse::<std::net::Ipv4Addr>().expect("v4"));
    let v6: u128 = u128::from(SIM_FIRST_V6.parse::<std::net::Ipv6Addr>().expect("v6"));
    let mut out = Vec::new();
    for i in 0..nodes {
        out.push(format!("{}/32", std::net::Ipv4Addr::from(v4 + i)));
        if dual_stack {
            out.push(format!(
                "{}/128",
                std::net::Ipv6Addr::from(v6 + u128::from(i))
            ));
        }
    }
    out
}

/// Which speakers play the reflectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReflectorKind {
    Ferrovia,
    Bird,
}

/// A running reflector.
pub enum Reflector {
    Ferrovia(Box<Ferrovia>),
    Bird(Box<Bird>),
}

impl Reflector {
    pub fn pid(&self) -> Option<i32> {
        match self {
            Reflector::Ferrovia(f) => f.pid(),
            Reflector::Bird(b) => b.pid(),
        }
    }
}

/// The simulator's namespace with N node addresses and two reflectors of one kind, which
/// share cluster id 198.18.0.1, take every address of [`SIM_RANGE`] as a client and peer
/// with each other. Routes are not installed in the reflectors' kernels (neither BIRD's
/// nor ferrovia's): the benchmark measures reflection.
pub struct SimWorld {
    pub reflectors: Vec<Reflector>,
    pub lan: Lan,
    pub nodes: u32,
    pub dual_stack: bool,
    /// The mesh mode's SQLite datastore ([`SimWorld::mesh_from_store`]), removed with the
    /// world.
    pub store: Option<tempfile::TempDir>,
}

impl SimWorld {
    pub fn new(
        lock: &NetLock,
        tag: &str,
        kind: ReflectorKind,
        nodes: u32,
        dual_stack: bool,
    ) -> SimWorld {
        let lan = routed_lan(lock, tag, 2, nodes, dual_stack);
        let mut reflectors = Vec::new();
        for k in 0..2 {
            let other = Lan::v4(1 - k);
            let r = match kind {
                ReflectorKind::Ferrovia => {
                    let mut cfg = FerroviaConfig::node1(SIM_AS, SIM_AS, &[]);
                    cfg.name = format!("rr{}", k + 1);
                    cfg.router_id = Lan::v4(k);
                    cfg.addresses = vec![Lan::v4(k), Lan::v6(k)];
                    cfg.hold_time = Some(90);
                    cfg.peers[0].address = other;
                    cfg.extra_bgp = format!(
                        "  routeReflector: {{ clusterId: {} }}\n  peerRanges:\n    - {{ cidr: {SIM_RANGE}, asNumber: {SIM_AS}, routeReflectorClient: true }}\n",
                        Lan::v4(0)
                    );
                    cfg.extra = "kernel: { enabled: false }\n".into();
                    Reflector::Ferrovia(Box::new(Ferrovia::start(&lan.members[k], cfg)))
                }
                ReflectorKind::Bird => {
                    let rr = |name: &str, neighbor: String, extra: String| BirdPeer {
                        name: name.into(),
                        local_addr: Some(Lan::v4(k)),
                        local_as: SIM_AS,
                        neighbor_addr: neighbor,
                        neighbor_as: SIM_AS,
                        password: None,
                        hold_time: Some(90),
                        v6_next_hop: None,
                        passive: false,
                        extra,
                    };
                    let channels = "  ipv4 { import all; export all; };\n  ipv6 { import all; export all; };\n";
                    let cluster = format!("  rr cluster id {};\n", Lan::v4(0));
                    let cfg = BirdConfig {
                        router_id: Lan::v4(k),
                        originate: vec![],
                        peers: vec![
                            rr("rrmate", other, format!("{cluster}{channels}")),
                            rr(
                                "sim",
                                format!("range {SIM_RANGE}"),
                                format!("  rr client;\n{cluster}  dynamic name \"sim\";\n  dynamic name digits 4;\n{channels}"),
                            ),
                        ],
                        extra: String::new(),
                    };
                    Reflector::Bird(Box::new(Bird::start(&lan.members[k], cfg)))
                }
            };
            reflectors.push(r);
        }
        SimWorld {
            reflectors,
            lan,
            nodes,
            dual_stack,
            store: None,
        }
    }

    /// The mesh mode: one ordinary agent (no reflection) at 198.18.0.1 that takes every
    /// address of [`SIM_RANGE`] as a peer and originates 10.245.0.0/26 and
    /// fd00:10:245::/122; `nodes` simulated nodes peer with it.
    pub fn mesh(lock: &NetLock, tag: &str, nodes: u32) -> SimWorld {
        let lan = routed_lan(lock, tag, 1, nodes, true);
        let mut cfg = FerroviaConfig::node1(SIM_AS, SIM_AS, &[MESH_V4, MESH_V6]);
        cfg.name = "agent".into();
        cfg.router_id = Lan::v4(0);
        cfg.addresses = vec![Lan::v4(0), Lan::v6(0)];
        cfg.hold_time = Some(90);
        cfg.peers.clear();
        cfg.extra_bgp =
            format!("  peerRanges:\n    - {{ cidr: {SIM_RANGE}, asNumber: {SIM_AS} }}\n");
        cfg.extra = "kernel: { enabled: false }\n".into();
        let agent = Ferrovia::start(&lan.members[0], cfg);
        SimWorld {
            reflectors: vec![Reflector::Ferrovia(Box::new(agent))],
            lan,
            nodes,
            dual_stack: true,
            store: None,
        }
    }

    /// The mesh mode as a cluster has it: the agent's peers are the node records of a
    /// SQLite datastore (the mesh task, `bgp.mesh` on), not a peer range. The agent
    /// starts first (it registers itself and seeds the cluster settings); then one
    /// record per simulated node (name `simI`, its IPv4 address first, then its IPv6
    /// one) is registered with the CLI, and the agent follows the datastore to `nodes`
    /// mesh peers.
    pub fn mesh_from_store(lock: &NetLock, tag: &str, nodes: u32) -> SimWorld {
        let lan = routed_lan(lock, tag, 1, nodes, true);
        let store = tempfile::Builder::new()
            .prefix("fvt-simstore")
            .tempdir()
            .expect("tempdir");
        let db = store.path().join("ferrovia.db");
        let mut cfg = FerroviaConfig::node1(SIM_AS, SIM_AS, &[MESH_V4, MESH_V6]);
        cfg.name = "agent".into();
        cfg.router_id = Lan::v4(0);
        cfg.addresses = vec![Lan::v4(0), Lan::v6(0)];
        cfg.hold_time = Some(90);
        cfg.peers.clear();
        cfg.extra = format!(
            "kernel: {{ enabled: false }}\ndatastore: {{ sqlite: {{ path: {} }} }}\n",
            db.display()
        );
        let agent = Ferrovia::start(&lan.members[0], cfg);
        let v4: u32 = u32::from(SIM_FIRST.parse::<std::net::Ipv4Addr>().expect("v4"));
        let v6: u128 = u128::from(SIM_FIRST_V6.parse::<std::net::Ipv6Addr>().expect("v6"));
        for i in 0..nodes {
            let a4 = std::net::Ipv4Addr::from(v4 + i).to_string();
            let a6 = std::net::Ipv6Addr::from(v6 + u128::from(i)).to_string();
            let name = format!("sim{i}");
            let out = super::output_bounded(
                Command::new(&agent.bin)
                    .args(["node", "register", "--name", &name, "--router-id", &a4])
                    .args(["--address", &a4, "--address", &a6, "--datastore"])
                    .arg(&db),
                super::START,
            )
            .unwrap_or_else(|e| panic!("registering {name}: {e}"));
            assert!(
                out.status.success(),
                "ferrovia node register {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        SimWorld {
            reflectors: vec![Reflector::Ferrovia(Box::new(agent))],
            lan,
            nodes,
            dual_stack: true,
            store: Some(store),
        }
    }

    /// Runs `ferrovia bench sim --json` in the simulator's namespace against both
    /// reflectors (watching them) and returns its report. `extra`: more arguments.
    pub fn run(&self, timeout_secs: u64, extra: &[&str]) -> Result<Value, String> {
        let mut args: Vec<String> = vec![
            "bench".into(),
            "sim".into(),
            "--json".into(),
            "--nodes".into(),
            self.nodes.to_string(),
            "--first-address".into(),
            SIM_FIRST.into(),
            "--as-number".into(),
            SIM_AS.to_string(),
            "--timeout".into(),
            timeout_secs.to_string(),
        ];
        if self.dual_stack {
            args.push("--first-address-v6".into());
            args.push(SIM_FIRST_V6.into());
        }
        for k in 0..self.reflectors.len() {
            args.push("--target".into());
            args.push(Lan::v4(k));
        }
        for (k, r) in self.reflectors.iter().enumerate() {
            if let Some(pid) = r.pid() {
                args.push("--watch".into());
                args.push(format!("rr{}={pid}", k + 1));
            }
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        run_sim(&self.lan.hub, &args)
    }
}

/// Runs `ferrovia ARGS` (a `bench sim --json`) in `ns`; its own `--timeout` bounds it.
pub fn run_sim(ns: &Netns, args: &[String]) -> Result<Value, String> {
    let mut argv: Vec<&str> = vec![super::bin()];
    argv.extend(args.iter().map(String::as_str));
    let out = ns.exec(&argv);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ferrovia {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_str(stdout.trim()).map_err(|e| format!("{e}: {stdout}"))
}
