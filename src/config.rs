//! The agent's configuration file (YAML, camelCase keys like Kubernetes objects).
//!
//! Unknown keys and invalid values are refused at start, and the error names the key
//! with its full path (for example `bgp.peers[1].asNumber`). See `config/` for documented
//! examples; every one of them is loaded by a test.

use ferrovia_bgp::policy::{MaxPrefixAction, MaxPrefixes, PeerPolicy, PrefixRule};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default control socket, shared by the agent, the CLI and (later) the CNI plugin.
pub const DEFAULT_SOCKET: &str = "/run/ferrovia/ferrovia.sock";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub node: Node,
    #[serde(default)]
    pub bgp: Bgp,
    #[serde(default)]
    pub status: Status,
    /// Where cluster state lives; without it the agent runs alone (no mesh).
    #[serde(default)]
    pub datastore: Option<Datastore>,
    #[serde(default)]
    pub kernel: Kernel,
    /// Prometheus metrics and health endpoints; off when absent.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// IP address management for pods; needs `datastore`.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// Where the agent keeps its small state files (the restart marker); the control
    /// socket's directory when absent.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

impl Config {
    /// The state directory: `stateDir`, or the control socket's directory.
    pub fn state_dir(&self) -> PathBuf {
        match (&self.state_dir, self.status.socket.parent()) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ipam {
    /// Where pod addresses come from: `pools` (blocks claimed from `pools`) or `podCIDR`
    /// (the node's own pod CIDRs only, as the cluster assigned them).
    #[serde(default)]
    pub mode: IpamMode,
    /// Pools pods get addresses from, e.g. `{ cidr: 10.244.0.0/16, blockSize: 26 }`.
    /// Stored in the datastore; pools named by no config are kept (another node's config may
    /// name them). Required in `pools` mode, refused in `podCIDR` mode.
    #[serde(default)]
    pub pools: Vec<ferrovia_ipam::PoolSpec>,
    /// How long an address whose pod no longer exists (or exists with another UID) is
    /// kept before leak collection releases it, in seconds (Kubernetes datastore only).
    #[serde(default = "default_leak_grace")]
    pub leak_grace_period_seconds: u64,
    /// How often leak collection sweeps this node's addresses, in seconds (1–86400; each
    /// wait jittered by up to a tenth). Kubernetes datastore only.
    #[serde(default = "default_leak_interval")]
    pub leak_collection_interval_seconds: u64,
    /// Never borrow single addresses from another node's block.
    #[serde(default)]
    pub strict_affinity: bool,
    /// Most blocks per family one node may claim.
    #[serde(default)]
    pub max_blocks_per_node: Option<u32>,
    /// How long a block must stay empty before the node gives it back, in seconds.
    #[serde(default = "default_grace")]
    pub empty_block_grace_seconds: u64,
}

fn unset_router_id() -> Ipv4Addr {
    Ipv4Addr::UNSPECIFIED
}

/// Where the router id comes from when the configuration has none.
pub const ROUTER_ID_ENV: &str = "FERROVIA_ROUTER_ID";

fn default_grace() -> u64 {
    600
}

fn default_leak_grace() -> u64 {
    900
}

fn default_leak_interval() -> u64 {
    60
}

/// `ipam.mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum IpamMode {
    /// Blocks claimed on demand from `ipam.pools`.
    #[default]
    #[serde(rename = "pools")]
    Pools,
    /// The node's pod CIDRs (Kubernetes: the Node's `spec.podCIDRs`; SQLite: `ferrovia node
    /// set NAME --pod-cidr CIDR`) are its only address space; nothing is claimed.
    #[serde(rename = "podCIDR")]
    PodCidr,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Datastore {
    /// The embedded store: one SQLite file shared by the agents of one machine.
    #[serde(default)]
    pub sqlite: Option<Sqlite>,
    /// The cluster store: custom resources, Node annotations and Leases on the Kubernetes
    /// API server.
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
}

impl Datastore {
    /// Where it is, for logs and errors.
    pub fn describe(&self) -> String {
        match (&self.sqlite, &self.kubernetes) {
            (Some(s), _) => format!("SQLite datastore {}", s.path.display()),
            (None, Some(k)) => match &k.kubeconfig {
                Some(p) => format!("Kubernetes datastore (kubeconfig {})", p.display()),
                None => "Kubernetes datastore (in-cluster configuration)".to_string(),
            },
            (None, None) => "no datastore".to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kubernetes {
    /// A kubeconfig file (its current context); absent: the in-cluster configuration (the
    /// pod's service account token and CA, KUBERNETES_SERVICE_HOST and _PORT).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace of the node Leases (`ferrovia-NODE`); kube-system when absent.
    #[serde(default)]
    pub lease_namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Sqlite {
    /// The database file, shared by every agent on this machine.
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kernel {
    /// Install learned routes (and blackholes for own blocks) in the kernel.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Routing table: `main`, `local`, `default` or a number 1..=4294967295.
    #[serde(default = "default_table")]
    pub table: TableRef,
}

impl Default for Kernel {
    fn default() -> Self {
        Kernel {
            enabled: true,
            table: default_table(),
        }
    }
}

fn default_table() -> TableRef {
    TableRef::Name("main".into())
}

/// A routing table by name or number.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum TableRef {
    Number(u32),
    Name(String),
}

impl TableRef {
    /// The table's number, or None for an unknown name.
    pub fn id(&self) -> Option<u32> {
        match self {
            TableRef::Number(0) => None,
            TableRef::Number(n) => Some(*n),
            TableRef::Name(n) => match n.as_str() {
                "main" => Some(254),
                "local" => Some(255),
                "default" => Some(253),
                _ => n.parse().ok().filter(|v| *v != 0),
            },
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// Address and port for /metrics, /healthz and /readyz, e.g. "127.0.0.1:9091".
    pub listen: std::net::SocketAddr,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    /// The node's name (with the Kubernetes datastore: its Node object's name). Absent or
    /// empty: the `NODENAME` environment variable, else the host name.
    #[serde(default)]
    pub name: String,
    pub as_number: u32,
    /// The BGP Identifier. Absent: the `FERROVIA_ROUTER_ID` environment variable (the Helm
    /// chart sets it to the node's address, `status.hostIP`).
    #[serde(default = "unset_router_id")]
    pub router_id: Ipv4Addr,
    /// The node's own addresses; the first IPv4 and the first IPv6 one serve as next hop
    /// for the other family when a session runs over one family only.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// How the agent finds the node's address of a family that `addresses` does not give
    /// (`first-found`, `interface=REGEX`, `skip-interface=REGEX`, `can-reach=ADDRESS`,
    /// `cidr=CIDR[,CIDR]`, `kubernetes-internal-ip`); see `crate::autodetect`.
    #[serde(default)]
    pub address_autodetection: Option<AddressAutodetection>,
}

/// Autodetection methods per family; a family left out is not autodetected.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddressAutodetection {
    #[serde(default)]
    pub ipv4: Option<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bgp {
    #[serde(default)]
    pub listen: Listen,
    /// Hold time proposed to every peer, seconds (0, or 3 and more).
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// First reconnect delay in seconds; doubles after each failure up to 60 s.
    #[serde(default = "default_connect_retry")]
    pub connect_retry: u64,
    /// Restart time advertised in the graceful restart capability, seconds (≤ 4095).
    #[serde(default = "default_gr_time")]
    pub graceful_restart_time: u16,
    /// `ferrovia node drain`: seconds between re-advertising our routes with
    /// GRACEFUL_SHUTDOWN (RFC 8326) and withdrawing them, for traffic to move (≤ 3600).
    #[serde(default = "default_drain_wait")]
    pub drain_wait: u64,
    #[serde(default)]
    pub peers: Vec<Peer>,
    #[serde(default)]
    pub originate: Vec<Originate>,
    /// Full iBGP mesh between the datastore's nodes. Seeds the cluster-wide setting when
    /// the datastore has none yet; afterwards the datastore's value rules
    /// (`ferrovia cluster set --mesh on|off`).
    #[serde(default = "default_true")]
    pub mesh: bool,
    /// This node is a route reflector (RFC 4456) with this cluster id.
    #[serde(default)]
    pub route_reflector: Option<RouteReflector>,
    /// Address ranges whose every address may open a session (each becomes a peer of its
    /// own); connections from outside every peer and range are refused.
    #[serde(default)]
    pub peer_ranges: Vec<PeerRange>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteReflector {
    /// The cluster id carried in CLUSTER_LIST (an IPv4 address; reflectors that back each
    /// other up share one).
    pub cluster_id: Ipv4Addr,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerRange {
    /// Peers may connect from any address in this prefix.
    pub cidr: IpNet,
    /// The AS every peer of the range must have.
    pub as_number: u32,
    /// The range's peers are route reflector clients (needs `bgp.routeReflector`).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// A file holding the TCP MD5 password of every peer in the range.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Overrides `bgp.holdTime` for the range's peers.
    #[serde(default)]
    pub hold_time: Option<u16>,
}

impl Default for Bgp {
    fn default() -> Self {
        Bgp {
            listen: Listen::default(),
            hold_time: default_hold_time(),
            connect_retry: default_connect_retry(),
            graceful_restart_time: default_gr_time(),
            drain_wait: default_drain_wait(),
            peers: Vec::new(),
            originate: Vec::new(),
            mesh: true,
            route_reflector: None,
            peer_ranges: Vec::new(),
        }
    }
}

fn default_hold_time() -> u16 {
    90
}
fn default_connect_retry() -> u64 {
    5
}
fn default_gr_time() -> u16 {
    120
}
fn default_drain_wait() -> u64 {
    10
}
fn default_port() -> u16 {
    179
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listen {
    #[serde(default = "default_listen_address")]
    pub address: IpAddr,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Set false to never accept connections (every peer must then be active).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_listen_address() -> IpAddr {
    IpAddr::from([0u16; 8])
}
fn default_true() -> bool {
    true
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            address: default_listen_address(),
            port: default_port(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Peer {
    pub address: IpAddr,
    pub as_number: u32,
    /// A file holding the TCP MD5 password (RFC 2385); trailing newlines are ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Only wait for the peer to connect.
    #[serde(default)]
    pub passive: bool,
    /// Overrides `bgp.holdTime` for this peer.
    #[serde(default)]
    pub hold_time: Option<u16>,
    /// GTSM (RFC 5082): the peer is at most this many hops away (1–254; 1 = directly
    /// connected). Packets are sent with TTL 255 and refused below 256 − HOPS. Absent: off.
    #[serde(default)]
    pub ttl_security: Option<u8>,
    /// The peer is a route reflector client of this node (needs `bgp.routeReflector`).
    #[serde(default)]
    pub route_reflector_client: bool,
    /// The most prefixes the peer may send, and what happens past it.
    #[serde(default)]
    pub max_prefixes: Option<MaxPrefixesSetting>,
    /// Accept prefixes inside the cluster's own pools (`ipam.pools`) from this peer: it
    /// carries other nodes' pod routes back to us (a ToR of a leaf-spine fabric, a route
    /// reflector). Off: such prefixes are refused as hijacks.
    #[serde(default)]
    pub allow_pool_prefixes: bool,
    /// Accept the default route (0.0.0.0/0, ::/0) from this peer.
    #[serde(default)]
    pub allow_default_route: bool,
    /// Import prefix list: only prefixes it permits are accepted (absent or empty: all).
    #[serde(default)]
    pub import_prefixes: Vec<PrefixRule>,
    /// Export prefix list: only prefixes it permits are advertised (absent or empty: all).
    #[serde(default)]
    pub export_prefixes: Vec<PrefixRule>,
    /// BFD (RFC 5880/5881, single hop): `{ enabled: true, intervalMs: 300, multiplier: 3 }`.
    /// Off unless `enabled` is true.
    #[serde(default)]
    pub bfd: ferrovia_bgp::bfd::BfdConfig,
}

impl Peer {
    /// The peer's route safety settings.
    pub fn safety(&self) -> RouteSafety {
        RouteSafety {
            max_prefixes: self.max_prefixes.clone(),
            allow_pool_prefixes: self.allow_pool_prefixes,
            allow_default_route: self.allow_default_route,
            import_prefixes: self.import_prefixes.clone(),
            export_prefixes: self.export_prefixes.clone(),
        }
    }
}

/// What happens when a peer sends more prefixes than `limit`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum MaxPrefixesAction {
    /// Log once and count in metrics; keep the session and the routes.
    Warn,
    /// Close the session with CEASE / Maximum Number of Prefixes Reached (RFC 4486) and
    /// connect again after `restartAfterSeconds`.
    #[default]
    Restart,
}

/// `maxPrefixes: { limit: N, action: warn|restart, restartAfterSeconds: S }`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaxPrefixesSetting {
    /// Prefixes accepted from the peer (after import policy, IPv4 and IPv6 together).
    pub limit: u32,
    #[serde(default)]
    pub action: MaxPrefixesAction,
    /// With `action: restart`: seconds before connecting again (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_after_seconds: Option<u64>,
}

/// Default of `maxPrefixes.restartAfterSeconds`.
pub const DEFAULT_RESTART_AFTER: u64 = 60;

/// Longest `maxPrefixes.restartAfterSeconds` (one day).
pub const MAX_RESTART_AFTER: u64 = 86_400;

/// A peer's route safety settings, as the configuration file and the datastore's peer
/// records hold them.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSafety {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<MaxPrefixesSetting>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_pool_prefixes: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_default_route: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_prefixes: Vec<PrefixRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_prefixes: Vec<PrefixRule>,
}

impl RouteSafety {
    /// Checks the settings; an error is (key below the peer, message).
    pub fn check(&self) -> Result<(), (String, String)> {
        if let Some(m) = &self.max_prefixes {
            if m.limit == 0 {
                return Err((
                    "maxPrefixes.limit".into(),
                    "must be at least 1 (leave maxPrefixes out for no limit)".into(),
                ));
            }
            match (m.action, m.restart_after_seconds) {
                (MaxPrefixesAction::Warn, Some(_)) => {
                    return Err((
                        "maxPrefixes.restartAfterSeconds".into(),
                        "only applies to action: restart; remove it or set action: restart".into(),
                    ))
                }
                (MaxPrefixesAction::Restart, Some(s)) if s == 0 || s > MAX_RESTART_AFTER => {
                    return Err((
                        "maxPrefixes.restartAfterSeconds".into(),
                        format!("{s} is not between 1 and {MAX_RESTART_AFTER} seconds"),
                    ))
                }
                _ => {}
            }
        }
        for (list, rules) in [
            ("importPrefixes", &self.import_prefixes),
            ("exportPrefixes", &self.export_prefixes),
        ] {
            for (i, r) in rules.iter().enumerate() {
                r.check().map_err(|m| (format!("{list}[{i}]"), m))?;
            }
        }
        Ok(())
    }

    /// The speaker's policy for a peer with these settings. `outside`: the peer is not a
    /// node of the cluster, so the cluster's own `pools` and the default route are refused
    /// from it unless allowed.
    pub fn policy(&self, outside: bool, pools: &[IpNet]) -> PeerPolicy {
        PeerPolicy {
            refuse_default_route: outside && !self.allow_default_route,
            protected: if outside && !self.allow_pool_prefixes {
                pools.to_vec()
            } else {
                Vec::new()
            },
            import_prefixes: self.import_prefixes.clone(),
            export_prefixes: self.export_prefixes.clone(),
            max_prefixes: self.max_prefixes.as_ref().map(|m| MaxPrefixes {
                limit: m.limit,
                action: match m.action {
                    MaxPrefixesAction::Warn => MaxPrefixAction::Warn,
                    MaxPrefixesAction::Restart => MaxPrefixAction::Restart(Duration::from_secs(
                        m.restart_after_seconds.unwrap_or(DEFAULT_RESTART_AFTER),
                    )),
                },
            }),
        }
    }
}

/// A prefix to originate, bare or with communities.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Originate {
    Prefix(IpNet),
    Detailed(OriginateDetailed),
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OriginateDetailed {
    pub prefix: IpNet,
    /// RFC 1997 communities as "ASN:VALUE" (each part 0..65535).
    #[serde(default)]
    pub communities: Vec<String>,
}

impl Originate {
    pub fn prefix(&self) -> IpNet {
        match self {
            Originate::Prefix(p) => *p,
            Originate::Detailed(d) => d.prefix,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Status {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

impl Default for Status {
    fn default() -> Self {
        Status {
            socket: default_socket(),
        }
    }
}

/// A configuration error, naming the key it is about.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub message: String,
}

/// A fully checked configuration plus what was read from files it points to.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded {
    pub config: Config,
    /// Passwords in the order of `bgp.peers`.
    pub passwords: Vec<Option<String>>,
    /// Passwords in the order of `bgp.peerRanges`.
    pub range_passwords: Vec<Option<String>>,
    /// Originated prefixes with their communities as 32-bit values.
    pub originate: Vec<(IpNet, Vec<u32>)>,
}

/// The node name when the configuration has none: `NODENAME`, else the host name.
fn default_node_name() -> Option<String> {
    if let Some(n) = std::env::var("NODENAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        return Some(n.trim().to_string());
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: file.clone(),
        key: "(file)".into(),
        message: format!("cannot read the configuration: {e}"),
    })?;
    parse(&file, &text)
}

/// Parses and validates configuration text; `file` names it in errors.
pub fn parse(file: &str, text: &str) -> Result<Loaded, ConfigError> {
    let err = |key: &str, message: String| ConfigError {
        file: file.to_string(),
        key: key.to_string(),
        message,
    };
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." {
            "(top level)".to_string()
        } else {
            key
        };
        err(&key, e.into_inner().to_string())
    })?;

    let mut config = config;
    if config.node.router_id.is_unspecified() {
        let from_env = std::env::var(ROUTER_ID_ENV).unwrap_or_default();
        let from_env = from_env.trim();
        if from_env.is_empty() {
            return Err(err(
                "node.routerId",
                format!(
                    "is not set: set node.routerId to a unicast IPv4 address of the node, or \
                     the {ROUTER_ID_ENV} environment variable (the Helm chart sets it to the \
                     node's address)"
                ),
            ));
        }
        config.node.router_id = from_env.parse().map_err(|_| {
            err(
                "node.routerId",
                format!(
                    "is not set and {ROUTER_ID_ENV}={from_env:?} is not an IPv4 address (on a \
                     node whose address is IPv6, set node.routerId to a unique IPv4 address)"
                ),
            )
        })?;
    }
    if config.node.name.is_empty() {
        config.node.name = default_node_name().ok_or_else(|| {
            err(
                "node.name",
                "is not set, NODENAME is not set and the host name is empty: set node.name".into(),
            )
        })?;
    }
    if let Some(ds) = &config.datastore {
        match (&ds.sqlite, &ds.kubernetes) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "datastore",
                    "set one of datastore.sqlite and datastore.kubernetes, not both".into(),
                ))
            }
            (None, None) => {
                return Err(err(
                    "datastore",
                    "set datastore.sqlite (path: FILE) or datastore.kubernetes ({} or \
                     kubeconfig: FILE)"
                        .into(),
                ))
            }
            _ => {}
        }
        if let Some(ns) = ds
            .kubernetes
            .as_ref()
            .and_then(|k| k.lease_namespace.as_ref())
        {
            if ferrovia_ipam::datastore::dns1123_subdomain_problem(ns).is_some()
                || ns.contains('.')
                || ns.len() > 63
            {
                return Err(err(
                    "datastore.kubernetes.leaseNamespace",
                    format!("{ns:?} is not a namespace name (lowercase letters, digits and '-')"),
                ));
            }
        }
    }
    let n = &config.node;
    if n.as_number == 0 || n.as_number == u32::from(ferrovia_bgp::message::AS_TRANS) {
        return Err(err(
            "node.asNumber",
            format!("{} is reserved and cannot be a speaker's AS", n.as_number),
        ));
    }
    if n.router_id.is_unspecified() || n.router_id.is_multicast() || n.router_id.is_broadcast() {
        return Err(err(
            "node.routerId",
            format!(
                "{} is not a valid BGP Identifier; use a unicast IPv4 address of the node",
                n.router_id
            ),
        ));
    }
    if let Some(auto) = &n.address_autodetection {
        for (fam, text, v4) in [("ipv4", &auto.ipv4, true), ("ipv6", &auto.ipv6, false)] {
            let Some(text) = text else { continue };
            let key = format!("node.addressAutodetection.{fam}");
            let method = crate::autodetect::Method::parse(text, v4).map_err(|m| err(&key, m))?;
            if matches!(method, crate::autodetect::Method::None) {
                continue;
            }
            if let Some(a) = n.addresses.iter().find(|a| a.is_ipv4() == v4) {
                return Err(err(
                    &key,
                    format!(
                        "node.addresses already gives the node's {} address {a}: keep one of the two",
                        if v4 { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
            let kubernetes = config
                .datastore
                .as_ref()
                .is_some_and(|d| d.kubernetes.is_some());
            if matches!(method, crate::autodetect::Method::KubernetesInternalIp) && !kubernetes {
                return Err(err(
                    &key,
                    "kubernetes-internal-ip (the Node's InternalIP from status.addresses) needs \
                     the Kubernetes datastore (datastore.kubernetes): without it there is no \
                     Node to read; use first-found, interface=REGEX, skip-interface=REGEX, \
                     can-reach=ADDRESS or cidr=CIDR"
                        .into(),
                ));
            }
        }
    }
    if config.kernel.table.id().is_none() {
        return Err(err(
            "kernel.table",
            format!(
                "{:?} is not a routing table: use main, local, default or a number from 1",
                config.kernel.table
            ),
        ));
    }
    if let Some(ipam) = &config.ipam {
        if config.datastore.is_none() {
            return Err(err(
                "ipam",
                "IPAM keeps its blocks in the datastore: configure datastore.sqlite.path or datastore.kubernetes too"
                    .into(),
            ));
        }
        match ipam.mode {
            IpamMode::Pools if ipam.pools.is_empty() => {
                return Err(err(
                    "ipam.pools",
                    "no pool: add at least one, e.g. { cidr: 10.244.0.0/16 }, or set \
                     ipam.mode: podCIDR to use the node's pod CIDRs"
                        .into(),
                ));
            }
            IpamMode::PodCidr if !ipam.pools.is_empty() => {
                return Err(err(
                    "ipam.pools",
                    "ipam.mode podCIDR takes addresses from the node's pod CIDRs only: remove \
                     ipam.pools, or use ipam.mode: pools"
                        .into(),
                ));
            }
            _ => {}
        }
        if !(1..=86400).contains(&ipam.leak_collection_interval_seconds) {
            return Err(err(
                "ipam.leakCollectionIntervalSeconds",
                format!(
                    "{} is out of range: sweep every 1 to 86400 seconds (default 60)",
                    ipam.leak_collection_interval_seconds
                ),
            ));
        }
        for (i, p) in ipam.pools.iter().enumerate() {
            if p.cidr.parse::<IpNet>().is_err() {
                return Err(err(
                    &format!("ipam.pools[{i}].cidr"),
                    format!("{:?} is not a CIDR like 10.244.0.0/16", p.cidr),
                ));
            }
        }
    }
    let b = &config.bgp;
    check_hold("bgp.holdTime", b.hold_time).map_err(|m| err("bgp.holdTime", m))?;
    if b.connect_retry == 0 || b.connect_retry > 3600 {
        return Err(err(
            "bgp.connectRetry",
            "must be between 1 and 3600 seconds".into(),
        ));
    }
    if b.graceful_restart_time > 4095 {
        return Err(err(
            "bgp.gracefulRestartTime",
            "must be at most 4095 seconds (12 bits, RFC 4724)".into(),
        ));
    }
    if b.drain_wait > 3600 {
        return Err(err(
            "bgp.drainWait",
            format!(
                "{} seconds is more than an hour; use 0 to 3600 seconds",
                b.drain_wait
            ),
        ));
    }
    let mut passwords = Vec::new();
    for (i, p) in b.peers.iter().enumerate() {
        let key = |k: &str| format!("bgp.peers[{i}].{k}");
        if p.as_number == 0 {
            return Err(err(&key("asNumber"), "must not be 0".into()));
        }
        if let Some(h) = p.hold_time {
            check_hold("", h).map_err(|m| err(&key("holdTime"), m))?;
        }
        if let Some(hops) = p.ttl_security {
            if ferrovia_bgp::gtsm::min_ttl(hops).is_err() {
                return Err(err(
                    &key("ttlSecurity"),
                    format!(
                        "{hops} is not a hop count for GTSM: use 1 (a directly connected peer) to {}, or leave the key out to turn GTSM off",
                        ferrovia_bgp::gtsm::MAX_HOPS
                    ),
                ));
            }
        }
        p.safety().check().map_err(|(k, m)| err(&key(&k), m))?;
        if p.bfd.enabled {
            if let Err(e) = p.bfd.timing() {
                let k = match e {
                    ferrovia_bgp::bfd::ConfigError::IntervalMs(_) => "bfd.intervalMs",
                    ferrovia_bgp::bfd::ConfigError::Multiplier(_) => "bfd.multiplier",
                };
                return Err(err(&key(k), e.to_string()));
            }
        }
        if p.address.is_unspecified() || p.address.is_multicast() {
            return Err(err(
                &key("address"),
                format!("{} is not a unicast address", p.address),
            ));
        }
        if b.peers[..i].iter().any(|q| q.address == p.address) {
            return Err(err(
                &key("address"),
                format!("peer {} is listed twice", p.address),
            ));
        }
        let pw = match &p.password_file {
            None => None,
            Some(f) => Some(read_password_file(f).map_err(|m| err(&key("passwordFile"), m))?),
        };
        if p.route_reflector_client && b.route_reflector.is_none() {
            return Err(err(
                &key("routeReflectorClient"),
                "only a route reflector has clients: set bgp.routeReflector.clusterId too, or remove this key".into(),
            ));
        }
        passwords.push(pw);
    }
    if let Some(rr) = &b.route_reflector {
        let c = rr.cluster_id;
        if c.is_unspecified() || c.is_multicast() || c.is_broadcast() {
            return Err(err(
                "bgp.routeReflector.clusterId",
                format!("{c} cannot be a cluster id; use a unicast IPv4 address, typically the router id of one of the cluster's reflectors"),
            ));
        }
    }
    let mut range_passwords = Vec::new();
    for (i, r) in b.peer_ranges.iter().enumerate() {
        let key = |k: &str| format!("bgp.peerRanges[{i}].{k}");
        if r.cidr.trunc() != r.cidr {
            return Err(err(
                &key("cidr"),
                format!(
                    "{} has host bits set; did you mean {}?",
                    r.cidr,
                    r.cidr.trunc()
                ),
            ));
        }
        if r.as_number == 0 {
            return Err(err(&key("asNumber"), "must not be 0".into()));
        }
        if let Some(h) = r.hold_time {
            check_hold("", h).map_err(|m| err(&key("holdTime"), m))?;
        }
        if r.route_reflector_client && b.route_reflector.is_none() {
            return Err(err(
                &key("routeReflectorClient"),
                "only a route reflector has clients: set bgp.routeReflector.clusterId too, or remove this key".into(),
            ));
        }
        if let Some(j) = b.peer_ranges[..i]
            .iter()
            .position(|q| q.cidr.contains(&r.cidr) || r.cidr.contains(&q.cidr))
        {
            return Err(err(
                &key("cidr"),
                format!(
                    "{} overlaps bgp.peerRanges[{j}].cidr {}; an address must belong to one range only",
                    r.cidr, b.peer_ranges[j].cidr
                ),
            ));
        }
        let pw = match &r.password_file {
            None => None,
            Some(f) => Some(read_password_file(f).map_err(|m| err(&key("passwordFile"), m))?),
        };
        range_passwords.push(pw);
    }
    let mut originate = Vec::new();
    for (i, o) in b.originate.iter().enumerate() {
        let key = format!("bgp.originate[{i}]");
        let p = o.prefix();
        if p.trunc() != p {
            return Err(err(
                &key,
                format!("{p} has host bits set; did you mean {}?", p.trunc()),
            ));
        }
        let communities = match o {
            Originate::Prefix(_) => Vec::new(),
            Originate::Detailed(d) => d
                .communities
                .iter()
                .map(|c| parse_community(c).map_err(|m| err(&format!("{key}.communities"), m)))
                .collect::<Result<Vec<u32>, _>>()?,
        };
        if originate.iter().any(|(q, _)| *q == p) {
            return Err(err(&key, format!("{p} is listed twice")));
        }
        originate.push((p, communities));
    }
    Ok(Loaded {
        config,
        passwords,
        range_passwords,
        originate,
    })
}

impl Config {
    /// The cluster's pod pools (`ipam.pools`), refused from peers outside the cluster.
    pub fn pool_prefixes(&self) -> Vec<IpNet> {
        self.ipam
            .iter()
            .flat_map(|i| &i.pools)
            .filter_map(|p| p.cidr.parse::<IpNet>().ok())
            .collect()
    }
}

/// Reads a TCP MD5 password file (RFC 2385): trailing newlines are ignored and what is left
/// must be 1 to 80 bytes (an empty file would otherwise turn MD5 off without a word). The
/// error names the file and the rule.
pub fn read_password_file(f: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
    let s = s.trim_end_matches(['\n', '\r']).to_string();
    if s.is_empty() || s.len() > ferrovia_bgp::md5::MAX_KEY_LEN {
        return Err(format!(
            "{} must hold a password of 1 to 80 bytes",
            f.display()
        ));
    }
    Ok(s)
}

fn check_hold(_key: &str, h: u16) -> Result<(), String> {
    if h == 1 || h == 2 {
        Err(format!(
            "{h} is not allowed: use 0 (no keepalives) or at least 3 seconds (RFC 4271 §4.2)"
        ))
    } else {
        Ok(())
    }
}

/// Parses "ASN:VALUE" into an RFC 1997 community.
pub fn parse_community(s: &str) -> Result<u32, String> {
    let bad =
        || format!("{s:?} is not a community; write it as ASN:VALUE with both parts 0..65535");
    let (a, v) = s.split_once(':').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let v: u16 = v.trim().parse().map_err(|_| bad())?;
    Ok((u32::from(a) << 16) | u32::from(v))
}

/// Formats an RFC 1997 community as "ASN:VALUE".
pub fn format_community(c: u32) -> String {
    format!("{}:{}", c >> 16, c & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
node: { name: node1, asNumber: 64512, routerId: 198.18.0.1 }
bgp:
  listen: { address: "::", port: 179 }
  peers:
    - { address: 198.18.0.254, asNumber: 65000 }
  originate: [10.244.1.0/26, "fd00:10:244:1::/122", { prefix: 10.244.2.0/26, communities: ["64512:100"] }]
status: { socket: /run/ferrovia/ferrovia.sock }
"#;

    #[test]
    fn good_config_loads_with_defaults() {
        let l = parse("t", GOOD).expect("loads");
        assert_eq!(l.config.bgp.hold_time, 90);
        assert_eq!(l.config.bgp.peers[0].port, 179);
        assert_eq!(l.originate.len(), 3);
        assert_eq!(l.originate[2].1, vec![(64512 << 16) | 100]);
    }

    fn key_of(text: &str) -> String {
        parse("t", text).expect_err("must fail").key
    }

    #[test]
    fn unknown_keys_are_named_with_their_path() {
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1, colour: red }"),
            "node.colour"
        );
        let e = parse(
            "t",
            "node: { name: a, asNumber: 1, routerId: 1.1.1.1, colour: red }",
        )
        .expect_err("fails");
        assert!(e.message.contains("colour"), "{e}");
        let t = "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { peers: [ { address: 1.2.3.4, asNumbr: 5 } ] }";
        let e = parse("t", t).expect_err("fails");
        assert_eq!(e.key, "bgp.peers[0].asNumbr");
        assert!(e.message.contains("asNumbr"), "{e}");
        assert_eq!(key_of("nodes: {}"), "nodes");
        assert_eq!(key_of("[1, 2]"), "(top level)");
    }

    #[test]
    fn invalid_values_are_named() {
        assert_eq!(
            key_of("node: { name: a, asNumber: x, routerId: 1.1.1.1 }"),
            "node.asNumber"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 300.1.1.1 }"),
            "node.routerId"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 0.0.0.0 }"),
            "node.routerId"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { holdTime: 2 }"),
            "bgp.holdTime"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { originate: [10.244.1.1/26] }"),
            "bgp.originate[0]"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { originate: [{ prefix: 10.0.0.0/8, communities: [\"1:99999\"] }] }"),
            "bgp.originate[0].communities"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { peers: [ { address: 1.2.3.4, asNumber: 5, passwordFile: /nonexistent/pw } ] }"),
            "bgp.peers[0].passwordFile"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { peers: [ { address: 1.2.3.4, asNumber: 5 }, { address: 1.2.3.4, asNumber: 6 } ] }"),
            "bgp.peers[1].address"
        );
    }

    #[test]
    fn ttl_security_takes_1_to_254_hops_and_names_the_key_otherwise() {
        let peer = |v: &str| {
            format!("node: {{ name: a, asNumber: 1, routerId: 1.1.1.1 }}\nbgp: {{ peers: [ {{ address: 1.2.3.4, asNumber: 5{v} }} ] }}")
        };
        let off = parse("t", &peer("")).expect("loads");
        assert_eq!(off.config.bgp.peers[0].ttl_security, None);
        for ok in [1u8, 2, 254] {
            let l = parse("t", &peer(&format!(", ttlSecurity: {ok}"))).expect("loads");
            assert_eq!(l.config.bgp.peers[0].ttl_security, Some(ok));
        }
        for bad in ["0", "255", "256", "-1", "x"] {
            let e = parse("t", &peer(&format!(", ttlSecurity: {bad}"))).expect_err(bad);
            assert_eq!(e.key, "bgp.peers[0].ttlSecurity", "{bad}: {e}");
        }
        let e = parse("t", &peer(", ttlSecurity: 0")).expect_err("0");
        assert!(e.message.contains("1") && e.message.contains("254"), "{e}");
        // The documented example turns it on for its directly connected ToR.
        let tor = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tor-dual-stack.yaml");
        let l = load(&tor).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.bgp.peers[0].ttl_security, Some(1));
    }

    #[test]
    fn drain_wait_and_state_dir_have_defaults_limits_and_named_errors() {
        let node = "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\n";
        let l = parse("t", node).expect("loads");
        assert_eq!(l.config.bgp.drain_wait, 10);
        assert_eq!(l.config.state_dir(), PathBuf::from("/run/ferrovia"));
        let l = parse(
            "t",
            &format!("{node}status: {{ socket: /tmp/x/f.sock }}\nbgp: {{ drainWait: 0 }}"),
        )
        .expect("loads");
        assert_eq!(
            l.config.state_dir(),
            PathBuf::from("/tmp/x"),
            "the socket's directory"
        );
        assert_eq!(l.config.bgp.drain_wait, 0);
        let e = parse("t", &format!("{node}bgp: {{ drainWait: 3601 }}")).expect_err("too long");
        assert_eq!(e.key, "bgp.drainWait", "{e}");
        let e = parse("t", &format!("{node}bgp: {{ drainWait: -1 }}")).expect_err("negative");
        assert_eq!(e.key, "bgp.drainWait", "{e}");
        let tor = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tor-dual-stack.yaml");
        let l = load(&tor).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.bgp.drain_wait, 10);
        assert_eq!(l.config.state_dir(), PathBuf::from("/run/ferrovia"));
    }

    #[test]
    fn route_safety_keys_load_check_and_name_the_key() {
        let peer = |v: &str| {
            format!("node: {{ name: a, asNumber: 1, routerId: 1.1.1.1 }}\nbgp: {{ peers: [ {{ address: 1.2.3.4, asNumber: 5{v} }} ] }}")
        };
        let l = parse(
            "t",
            &peer(
                ", maxPrefixes: { limit: 100, action: restart, restartAfterSeconds: 30 }, \
                 allowDefaultRoute: true, importPrefixes: [ { prefix: 10.0.0.0/8, le: 24 }, \
                 { prefix: 0.0.0.0/0, action: deny } ], exportPrefixes: [ { prefix: 10.244.0.0/16, ge: 26, le: 26 } ]",
            ),
        )
        .expect("loads");
        let p = &l.config.bgp.peers[0];
        let pol = p
            .safety()
            .policy(true, &["10.244.0.0/16".parse().expect("net")]);
        assert_eq!(
            pol.max_prefixes,
            Some(MaxPrefixes {
                limit: 100,
                action: MaxPrefixAction::Restart(Duration::from_secs(30))
            })
        );
        assert!(!pol.refuse_default_route, "allowed");
        assert_eq!(pol.protected.len(), 1, "pool prefixes refused by default");
        assert_eq!(pol.import_prefixes.len(), 2);
        assert_eq!(
            pol.export_prefixes[0].to_string(),
            "10.244.0.0/16 ge 26 le 26"
        );
        // A mesh node is inside the cluster: no default protections.
        let inside = p
            .safety()
            .policy(false, &["10.244.0.0/16".parse().expect("net")]);
        assert!(inside.protected.is_empty() && !inside.refuse_default_route);
        // Defaults: action restart after 60 s; warn has no restart time.
        let l = parse("t", &peer(", maxPrefixes: { limit: 5 }")).expect("loads");
        assert_eq!(
            l.config.bgp.peers[0]
                .safety()
                .policy(true, &[])
                .max_prefixes,
            Some(MaxPrefixes {
                limit: 5,
                action: MaxPrefixAction::Restart(Duration::from_secs(60))
            })
        );
        for (bad, key) in [
            (
                ", maxPrefixes: { limit: 0 }",
                "bgp.peers[0].maxPrefixes.limit",
            ),
            (
                ", maxPrefixes: { limit: 5, action: warn, restartAfterSeconds: 5 }",
                "bgp.peers[0].maxPrefixes.restartAfterSeconds",
            ),
            (
                ", maxPrefixes: { limit: 5, restartAfterSeconds: 0 }",
                "bgp.peers[0].maxPrefixes.restartAfterSeconds",
            ),
            (
                ", maxPrefixes: { limit: 5, action: drop }",
                "bgp.peers[0].maxPrefixes.action",
            ),
            (
                ", maxPrefixes: { limit: 5, colour: red }",
                "bgp.peers[0].maxPrefixes.colour",
            ),
            (
                ", importPrefixes: [ { prefix: 10.0.0.1/8 } ]",
                "bgp.peers[0].importPrefixes[0]",
            ),
            (
                ", exportPrefixes: [ { prefix: 10.0.0.0/8 }, { prefix: 10.0.0.0/8, le: 4 } ]",
                "bgp.peers[0].exportPrefixes[1]",
            ),
            (
                ", importPrefixes: [ { prefix: 10.0.0.0/8, lt: 4 } ]",
                "bgp.peers[0].importPrefixes[0].lt",
            ),
        ] {
            let e = parse("t", &peer(bad)).expect_err(bad);
            assert_eq!(e.key, key, "{bad}: {e}");
        }
    }

    #[test]
    fn bfd_takes_enabled_interval_and_multiplier_and_names_the_key_otherwise() {
        let peer = |v: &str| {
            format!("node: {{ name: a, asNumber: 1, routerId: 1.1.1.1 }}\nbgp: {{ peers: [ {{ address: 1.2.3.4, asNumber: 5{v} }} ] }}")
        };
        let off = parse("t", &peer("")).expect("loads");
        assert!(!off.config.bgp.peers[0].bfd.enabled);
        let on = parse("t", &peer(", bfd: { enabled: true }")).expect("loads");
        let b = on.config.bgp.peers[0].bfd;
        assert!(b.enabled);
        assert_eq!(
            (b.interval_ms, b.multiplier),
            (300, 3),
            "defaults when enabled"
        );
        let set = parse(
            "t",
            &peer(", bfd: { enabled: true, intervalMs: 100, multiplier: 5 }"),
        )
        .expect("loads");
        let b = set.config.bgp.peers[0].bfd;
        assert_eq!((b.interval_ms, b.multiplier), (100, 5));
        for (bad, k) in [
            ("intervalMs: 5", "bgp.peers[0].bfd.intervalMs"),
            ("intervalMs: 70000", "bgp.peers[0].bfd.intervalMs"),
            ("multiplier: 0", "bgp.peers[0].bfd.multiplier"),
            ("multiplier: 256", "bgp.peers[0].bfd.multiplier"),
            ("interval: 300", "bgp.peers[0].bfd"),
        ] {
            let e =
                parse("t", &peer(&format!(", bfd: {{ enabled: true, {bad} }}"))).expect_err(bad);
            assert!(e.key.starts_with(k), "{bad}: {} ({e})", e.key);
        }
        // Disabled, nothing is checked beyond the names.
        parse("t", &peer(", bfd: { enabled: false, intervalMs: 5 }")).expect("loads");
        // The documented example turns it on for its ToR.
        let tor = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tor-dual-stack.yaml");
        let l = load(&tor).unwrap_or_else(|e| panic!("{e}"));
        let b = l.config.bgp.peers[0].bfd;
        assert!(
            b.enabled && b.interval_ms == 300 && b.multiplier == 3,
            "{b:?}"
        );
    }

    #[test]
    fn issue3_keys_load_and_tables_resolve() {
        let t = "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\n\
                 datastore: { sqlite: { path: /var/lib/ferrovia/ferrovia.db } }\n\
                 kernel: { table: 100 }\nmetrics: { listen: \"127.0.0.1:9091\" }";
        let l = parse("t", t).expect("loads");
        assert_eq!(l.config.kernel.table.id(), Some(100));
        assert!(l.config.bgp.mesh, "mesh on unless said otherwise");
        let off = parse(
            "t",
            "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nbgp: { mesh: false }",
        )
        .expect("loads");
        assert!(!off.config.bgp.mesh);
        assert!(l.config.kernel.enabled);
        assert_eq!(
            parse("t", "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }")
                .expect("ok")
                .config
                .kernel
                .table
                .id(),
            Some(254)
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nkernel: { table: mian }"),
            "kernel.table"
        );
        assert_eq!(
            key_of(
                "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\nmetrics: { listen: nowhere }"
            ),
            "metrics.listen"
        );
        assert_eq!(
            key_of("node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\ndatastore: { etcd: {} }"),
            "datastore.etcd"
        );
    }

    #[test]
    fn route_reflector_and_peer_ranges_load_and_bad_values_name_their_key() {
        let head = "node: { name: a, asNumber: 64512, routerId: 198.18.0.1 }\n";
        let t = format!(
            "{head}bgp:\n  routeReflector: {{ clusterId: 198.18.0.100 }}\n  peers: [ {{ address: 198.18.0.2, asNumber: 64512, routeReflectorClient: true }} ]\n  peerRanges:\n    - {{ cidr: 198.18.1.0/24, asNumber: 64512, routeReflectorClient: true }}\n    - {{ cidr: \"fd00:198:18:1::/64\", asNumber: 65000, holdTime: 30 }}"
        );
        let l = parse("t", &t).expect("loads");
        let b = &l.config.bgp;
        assert_eq!(
            b.route_reflector.as_ref().map(|r| r.cluster_id),
            Some(Ipv4Addr::new(198, 18, 0, 100))
        );
        assert!(b.peers[0].route_reflector_client);
        assert_eq!(b.peer_ranges.len(), 2);
        assert!(b.peer_ranges[0].route_reflector_client);
        assert!(!b.peer_ranges[1].route_reflector_client);
        assert_eq!(l.range_passwords, vec![None, None]);

        let bgp = |v: &str| format!("{head}bgp: {v}");
        assert_eq!(
            key_of(&bgp("{ routeReflector: { clusterId: 0.0.0.0 } }")),
            "bgp.routeReflector.clusterId"
        );
        assert_eq!(
            key_of(&bgp(
                "{ routeReflector: { clusterId: 198.18.0.1, clusterID: 1.1.1.1 } }"
            )),
            "bgp.routeReflector.clusterID"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.1.1/24, asNumber: 1 } ] }"
            )),
            "bgp.peerRanges[0].cidr"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.1.0/24, asNumber: 0 } ] }"
            )),
            "bgp.peerRanges[0].asNumber"
        );
        assert_eq!(
            key_of(&bgp("{ peerRanges: [ { cidr: 198.18.1.0/24 } ] }")),
            "bgp.peerRanges[0]"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.0.0/16, asNumber: 1 }, { cidr: 198.18.1.0/24, asNumber: 1 } ] }"
            )),
            "bgp.peerRanges[1].cidr"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.1.0/24, asNumber: 1, routeReflectorClient: true } ] }"
            )),
            "bgp.peerRanges[0].routeReflectorClient",
            "clients need a cluster id"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peers: [ { address: 198.18.0.2, asNumber: 1, routeReflectorClient: true } ] }"
            )),
            "bgp.peers[0].routeReflectorClient"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.1.0/24, asNumber: 1, passwordFile: /nonexistent/pw } ] }"
            )),
            "bgp.peerRanges[0].passwordFile"
        );
        assert_eq!(
            key_of(&bgp(
                "{ peerRanges: [ { cidr: 198.18.1.0/24, asNumber: 1, holdTime: 1 } ] }"
            )),
            "bgp.peerRanges[0].holdTime"
        );
    }

    #[test]
    fn communities_round_trip() {
        assert_eq!(parse_community("65000:1"), Ok(65000 << 16 | 1));
        assert_eq!(format_community(65000 << 16 | 1), "65000:1");
        assert!(parse_community("65000").is_err());
    }

    #[test]
    fn every_example_in_config_dir_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("config/ exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(
            n >= 1,
            "no example configurations found in {}",
            dir.display()
        );
    }

    #[test]
    fn a_password_file_holds_1_to_80_bytes_after_trailing_newlines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pw");
        for (text, want) in [
            ("s3cret\r\n", Ok("s3cret".to_string())),
            (&"x".repeat(80), Ok("x".repeat(80))),
            ("", Err(())),
            ("\n\n", Err(())),
            (&"x".repeat(81), Err(())),
        ] {
            std::fs::write(&f, text).expect("write");
            let got = read_password_file(&f);
            match (&got, want) {
                (Ok(g), Ok(w)) => assert_eq!(*g, w),
                (Err(m), Err(())) => {
                    assert!(m.contains(&f.display().to_string()), "{m}");
                    assert!(m.contains("1 to 80 bytes"), "{m}");
                }
                _ => panic!("{text:?}: {got:?}"),
            }
        }
        let gone = read_password_file(&dir.path().join("absent")).expect_err("missing");
        assert!(gone.contains("cannot read"), "{gone}");
    }

    #[test]
    fn address_autodetection_is_checked_per_family_and_names_the_key() {
        let node = |auto: &str, addrs: &str| {
            format!("node: {{ name: a, asNumber: 1, routerId: 1.1.1.1, addresses: [{addrs}], addressAutodetection: {auto} }}")
        };
        let l = parse(
            "t",
            &node("{ ipv4: first-found, ipv6: \"interface=^eth0$\" }", ""),
        )
        .expect("loads");
        let auto = l.config.node.address_autodetection.expect("set");
        assert_eq!(auto.ipv4.as_deref(), Some("first-found"));
        // A family given in node.addresses is not autodetected too; the other one may be.
        parse("t", &node("{ ipv6: first-found }", "198.18.0.1")).expect("v4 given, v6 detected");
        parse("t", &node("{ ipv4: none }", "198.18.0.1")).expect("none: not autodetected");
        for (auto, addrs, key) in [
            (
                "{ ipv4: first-found }",
                "198.18.0.1",
                "node.addressAutodetection.ipv4",
            ),
            ("{ ipv6: nope }", "", "node.addressAutodetection.ipv6"),
            (
                "{ ipv4: \"cidr=fd00::/8\" }",
                "",
                "node.addressAutodetection.ipv4",
            ),
            (
                "{ ipv4: kubernetes-internal-ip }",
                "",
                "node.addressAutodetection.ipv4",
            ),
            (
                "{ ipv5: first-found }",
                "",
                "node.addressAutodetection.ipv5",
            ),
        ] {
            assert_eq!(key_of(&node(auto, addrs)), key, "{auto}");
        }
        let ex = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/autodetect-node.yaml");
        let l = load(&ex).unwrap_or_else(|e| panic!("{e}"));
        assert!(l.config.node.address_autodetection.is_some());
        let pools = l.config.ipam.expect("ipam").pools;
        assert!(pools.iter().all(|p| p.nat_outgoing));
    }

    #[test]
    fn leak_collection_keys_default_and_are_checked() {
        let base = "node: { name: a, asNumber: 1, routerId: 1.1.1.1 }\n\
                    datastore: { kubernetes: {} }\n\
                    ipam: { pools: [ { cidr: 10.244.0.0/16 } ]";
        let l = parse("t", &format!("{base} }}")).expect("loads");
        let ipam = l.config.ipam.expect("ipam");
        assert_eq!(
            (
                ipam.leak_grace_period_seconds,
                ipam.leak_collection_interval_seconds
            ),
            (900, 60)
        );
        let l = parse(
            "t",
            &format!("{base}, leakGracePeriodSeconds: 5, leakCollectionIntervalSeconds: 2 }}"),
        )
        .expect("loads");
        let ipam = l.config.ipam.expect("ipam");
        assert_eq!(
            (
                ipam.leak_grace_period_seconds,
                ipam.leak_collection_interval_seconds
            ),
            (5, 2)
        );
        for bad in ["0", "86401"] {
            let e = parse(
                "t",
                &format!("{base}, leakCollectionIntervalSeconds: {bad} }}"),
            )
            .expect_err("out of range");
            assert_eq!(e.key, "ipam.leakCollectionIntervalSeconds", "{e}");
            assert!(e.message.contains("1 to 86400"), "{e}");
        }
    }
}
