//! CLI commands on the datastore: nodes, cluster-wide BGP settings and stored peers.
//! Agents notice every change within a fraction of a second (they watch the kinds they
//! use), without a restart.

use crate::config::{self, MaxPrefixesAction, MaxPrefixesSetting};
use crate::datastore::model::{self, ClusterBgp, NodeRecord, PeerRecord};
use crate::datastore::SharedDatastore;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ferrovia_bgp::policy::PrefixRule;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// The embedded datastore's default location.
pub const DEFAULT_DB: &str = "/var/lib/ferrovia/ferrovia.db";

#[derive(Args)]
pub struct Store {
    /// The SQLite datastore (datastore.sqlite.path of the agents).
    #[arg(long, global = true, default_value = DEFAULT_DB, conflicts_with_all = ["kubeconfig", "in_cluster"])]
    pub datastore: PathBuf,
    /// Use the Kubernetes datastore through this kubeconfig (its current context) instead
    /// of SQLite.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// Use the Kubernetes datastore with the in-cluster configuration (inside a pod).
    #[arg(long, global = true, conflicts_with = "kubeconfig")]
    pub in_cluster: bool,
    /// The namespace of the node Leases on the Kubernetes datastore.
    #[arg(long, global = true, default_value = crate::datastore::kubernetes::DEFAULT_LEASE_NAMESPACE)]
    pub lease_namespace: String,
    /// Print JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Add or replace a node record (agents register themselves at start too).
    Register {
        #[arg(long)]
        name: String,
        #[arg(long)]
        router_id: Ipv4Addr,
        /// The node's addresses; the first one is its mesh session address.
        #[arg(long = "address", required = true)]
        addresses: Vec<IpAddr>,
        /// The node's AS; the cluster's when absent.
        #[arg(long)]
        as_number: Option<u32>,
        /// Prefixes this node announces besides its IPAM blocks.
        #[arg(long = "block")]
        blocks: Vec<IpNet>,
    },
    /// Change a registered node's settings; running agents follow.
    Set {
        name: String,
        /// Make the node a route reflector (RFC 4456) with this cluster id, or `none` to
        /// make it an ordinary node again. With the mesh off, every other node peers with
        /// the reflectors only, and the reflectors with each other.
        #[arg(long, value_parser = parse_cluster_id)]
        route_reflector_cluster_id: Option<ClusterId>,
        /// The node's pod CIDR, once per family (e.g. --pod-cidr 10.244.3.0/24
        /// --pod-cidr fd00:10:244:3::/64); replaces the stored ones. What `ipam.mode:
        /// podCIDR` assigns from (on Kubernetes the controller-manager sets the Node's
        /// spec.podCIDRs).
        /// Not on the Kubernetes datastore (the Node's spec.podCIDRs is set by the
        /// controller-manager or kubectl, not by ferrovia).
        #[arg(long = "pod-cidr")]
        pod_cidrs: Vec<IpNet>,
        /// Set a node label (KEY=VALUE) or remove one (KEY-), as `kubectl label`; repeat
        /// for several. Peers with a --node-selector follow at once: a node gaining a
        /// matching label peers, one losing it drops the session and its routes. SQLite
        /// only: on Kubernetes the Node's own labels count (`kubectl label node`).
        #[arg(long = "label", value_name = "KEY=VALUE|KEY-", value_parser = parse_label_change)]
        labels: Vec<LabelChange>,
    },
    /// Remove a node: every other agent drops its session with it, and they release its
    /// IPAM blocks, addresses and handles.
    Remove { name: String },
    /// List nodes.
    List,
    /// Make this node's agent leave on purpose: re-advertise its routes with
    /// GRACEFUL_SHUTDOWN (65535:0), wait bgp.drainWait seconds, withdraw them, close every
    /// session with Cease, remove its kernel routes and stop. NAME, when given, must be the
    /// agent's own node.
    Drain {
        name: Option<String>,
        /// The agent's control socket (status.socket).
        #[arg(long, default_value = config::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// A cluster id, or `none` (no route reflector).
#[derive(Clone, Copy, Debug)]
pub struct ClusterId(pub Option<Ipv4Addr>);

fn parse_cluster_id(s: &str) -> Result<ClusterId, String> {
    if s == "none" {
        return Ok(ClusterId(None));
    }
    s.parse::<Ipv4Addr>()
        .map(|a| ClusterId(Some(a)))
        .map_err(|_| format!("{s:?} is not a cluster id: give an IPv4 address, or none"))
}

/// A label to set (`KEY=VALUE`) or remove (`KEY-`).
#[derive(Clone, Debug)]
pub struct LabelChange(pub String, pub Option<String>);

fn parse_label_change(s: &str) -> Result<LabelChange, String> {
    if let Some((k, v)) = s.split_once('=') {
        return Ok(LabelChange(k.to_string(), Some(v.to_string())));
    }
    if let Some(k) = s.strip_suffix('-') {
        return Ok(LabelChange(k.to_string(), None));
    }
    Err(format!(
        "{s:?} is not a label change: write KEY=VALUE to set a label, KEY- to remove it"
    ))
}

/// A node selector as given on the command line, checked and in canonical form.
fn parse_node_selector(s: &str) -> Result<String, String> {
    let sel = crate::datastore::Selector::parse(s).map_err(|e| e.to_string())?;
    if sel.is_everything() {
        return Err(
            "an empty node selector would match every node: leave --node-selector out for a peer of every node".into(),
        );
    }
    Ok(sel.to_string())
}

#[derive(Clone, Copy, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Show the cluster-wide BGP settings.
    Show,
    /// Change the cluster-wide BGP settings; running agents follow.
    Set {
        #[arg(long)]
        mesh: Option<OnOff>,
        #[arg(long)]
        as_number: Option<u32>,
        /// Service cluster IP ranges every node announces, comma-separated CIDRs
        /// (`none` clears the list). Kubernetes datastore only.
        #[arg(long = "service-cluster-ips", value_name = "CIDRS", value_parser = parse_cidrs)]
        service_cluster_ips: Option<Cidrs>,
        /// Service external IP ranges (spec.externalIPs), like --service-cluster-ips.
        #[arg(long = "service-external-ips", value_name = "CIDRS", value_parser = parse_cidrs)]
        service_external_ips: Option<Cidrs>,
        /// Service load balancer IP ranges (status.loadBalancer.ingress), like
        /// --service-cluster-ips.
        #[arg(long = "service-load-balancer-ips", value_name = "CIDRS", value_parser = parse_cidrs)]
        service_load_balancer_ips: Option<Cidrs>,
    },
}

/// A comma-separated CIDR list; `none` or an empty string is the empty list.
#[derive(Clone, Debug)]
pub struct Cidrs(pub Vec<ipnet::IpNet>);

fn parse_cidrs(s: &str) -> Result<Cidrs, String> {
    let s = s.trim();
    if s.is_empty() || s == "none" {
        return Ok(Cidrs(Vec::new()));
    }
    s.split(',')
        .map(|c| {
            let c = c.trim();
            c.parse::<ipnet::IpNet>().map_err(|_| {
                format!("{c:?} is not a CIDR: give e.g. 10.96.0.0/12 or fd00:96::/108, or none")
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Cidrs)
}

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add or replace a stored peer: global, for one node with --node, or for the nodes
    /// whose labels match --node-selector.
    Add {
        name: String,
        #[arg(long)]
        address: IpAddr,
        #[arg(long)]
        as_number: u32,
        /// Only this node peers with it.
        #[arg(long)]
        node: Option<String>,
        /// Only the nodes whose labels match this selector peer with it ("rack=r1",
        /// "rack=r1,!spare", "tier!=edge", "bgp"): the Kubernetes equality and existence
        /// syntax. Nodes' labels: `ferrovia node set NAME --label` (SQLite), the Node's
        /// labels (Kubernetes).
        #[arg(long, conflicts_with = "node", value_parser = parse_node_selector)]
        node_selector: Option<String>,
        /// A file, present on every node, holding the TCP MD5 password (1 to 80 bytes).
        /// An agent that cannot read it, or finds it empty or too long, skips the peer
        /// and says so in its log.
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[command(flatten)]
        options: PeerOptions,
    },
    /// Change the GTSM, BFD and route safety settings of a stored peer; what is not given
    /// stays as it is. Agents follow at once (the session restarts).
    Set {
        name: String,
        #[command(flatten)]
        options: PeerOptions,
        /// Make it a peer of this node only (replaces a node selector).
        #[arg(long, conflicts_with_all = ["node_selector", "all_nodes"])]
        node: Option<String>,
        /// Make it a peer of the nodes whose labels match this selector (replaces a node
        /// name).
        #[arg(long, conflicts_with = "all_nodes", value_parser = parse_node_selector)]
        node_selector: Option<String>,
        /// Make it a peer of every node (removes the node name or selector).
        #[arg(long)]
        all_nodes: bool,
        /// Turn GTSM off.
        #[arg(long, conflicts_with = "ttl_security")]
        no_ttl_security: bool,
        /// Remove the prefix limit.
        #[arg(long, conflicts_with_all = ["max_prefixes", "max_prefixes_action", "max_prefixes_restart_after"])]
        no_max_prefixes: bool,
        /// Remove the import prefix list (accept every prefix the other rules allow).
        #[arg(long, conflicts_with = "import_prefix")]
        clear_import_prefixes: bool,
        /// Remove the export prefix list (advertise everything).
        #[arg(long, conflicts_with = "export_prefix")]
        clear_export_prefixes: bool,
    },
    /// Remove a stored peer.
    Remove { name: String },
    /// List stored peers.
    List,
}

/// GTSM, BFD and route safety settings of a stored peer (the configuration file's keys
/// `ttlSecurity`, `bfd`, `maxPrefixes`, `allowPoolPrefixes`, `allowDefaultRoute`, `importPrefixes`,
/// `exportPrefixes`; see config/README.md).
#[derive(Args, Default)]
pub struct PeerOptions {
    /// GTSM (RFC 5082): the peer is at most HOPS hops away (1–254; 1: directly connected).
    #[arg(long, value_name = "HOPS")]
    ttl_security: Option<u8>,
    /// The most prefixes the peer may send (after import policy, both families).
    #[arg(long, value_name = "N")]
    max_prefixes: Option<u32>,
    /// What happens past --max-prefixes: warn (log and count) or restart (CEASE 6/1, then
    /// connect again after --max-prefixes-restart-after seconds). Default restart.
    #[arg(long, value_enum)]
    max_prefixes_action: Option<MaxPrefixesAction>,
    /// Seconds before connecting again after a restart for too many prefixes (default 60).
    #[arg(long, value_name = "SECONDS")]
    max_prefixes_restart_after: Option<u64>,
    /// Accept prefixes inside the cluster's pod pools from this peer (a ToR or route
    /// reflector carrying other nodes' pod routes). Default off: refused as hijacks.
    #[arg(long, value_enum)]
    allow_pool_prefixes: Option<OnOff>,
    /// Accept the default route from this peer. Default off.
    #[arg(long, value_enum)]
    allow_default_route: Option<OnOff>,
    /// An import prefix-list entry, "[permit|deny] PREFIX [ge N] [le N]"; repeat in order
    /// (first match decides, no match is denied). Replaces the stored list.
    #[arg(long, value_name = "RULE")]
    import_prefix: Vec<PrefixRule>,
    /// An export prefix-list entry, like --import-prefix.
    #[arg(long, value_name = "RULE")]
    export_prefix: Vec<PrefixRule>,
    /// BFD (RFC 5880/5881, single hop) with this peer: a BFD Down takes the BGP session
    /// down at once. The peer must run BFD too (config/README.md, BFD).
    #[arg(long, value_enum)]
    bfd: Option<OnOff>,
    /// BFD: the interval we send at and can receive at, milliseconds (10–60000; default 300).
    #[arg(long, value_name = "MS")]
    bfd_interval_ms: Option<u32>,
    /// BFD: packets the peer may miss before it declares the session down (1–255; default 3).
    #[arg(long, value_name = "N")]
    bfd_multiplier: Option<u32>,
}

impl PeerOptions {
    /// Applies the options given to `rec`.
    fn apply(&self, rec: &mut PeerRecord) -> Result<(), String> {
        if self.ttl_security.is_some() {
            rec.ttl_security = self.ttl_security;
        }
        if self.bfd.is_some() || self.bfd_interval_ms.is_some() || self.bfd_multiplier.is_some() {
            if rec.bfd.is_none() && self.bfd.is_none() {
                return Err("the peer has no BFD: give --bfd on too".into());
            }
            let b = rec.bfd.get_or_insert_with(Default::default);
            if let Some(v) = self.bfd {
                b.enabled = matches!(v, OnOff::On);
            }
            if let Some(ms) = self.bfd_interval_ms {
                b.interval_ms = ms;
            }
            if let Some(m) = self.bfd_multiplier {
                b.multiplier = m;
            }
        }
        let s = &mut rec.safety;
        match (&mut s.max_prefixes, self.max_prefixes) {
            (m, Some(limit)) => {
                let m = m.get_or_insert(MaxPrefixesSetting {
                    limit,
                    action: MaxPrefixesAction::default(),
                    restart_after_seconds: None,
                });
                m.limit = limit;
            }
            (None, None)
                if self.max_prefixes_action.is_some()
                    || self.max_prefixes_restart_after.is_some() =>
            {
                return Err("the peer has no prefix limit: give --max-prefixes N too".into());
            }
            _ => {}
        }
        if let Some(m) = &mut s.max_prefixes {
            if let Some(a) = self.max_prefixes_action {
                m.action = a;
                if a == MaxPrefixesAction::Warn && self.max_prefixes_restart_after.is_none() {
                    m.restart_after_seconds = None;
                }
            }
            if self.max_prefixes_restart_after.is_some() {
                m.restart_after_seconds = self.max_prefixes_restart_after;
            }
        }
        if let Some(v) = self.allow_pool_prefixes {
            s.allow_pool_prefixes = matches!(v, OnOff::On);
        }
        if let Some(v) = self.allow_default_route {
            s.allow_default_route = matches!(v, OnOff::On);
        }
        if !self.import_prefix.is_empty() {
            s.import_prefixes = self.import_prefix.clone();
        }
        if !self.export_prefix.is_empty() {
            s.export_prefixes = self.export_prefix.clone();
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum IpamCmd {
    /// Pools, blocks with the node they belong to, and every allocation.
    Show,
    /// Change a stored pool.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
    },
}

#[derive(Subcommand)]
pub enum PoolCmd {
    /// Turn outgoing NAT (masquerade to the node's address toward destinations outside
    /// every pool) on or off for a pool; every agent's NAT table follows at once. An agent
    /// that restarts writes its configuration's `natOutgoing` again.
    Set {
        /// The pool's CIDR, e.g. 10.244.0.0/16.
        cidr: String,
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        nat_outgoing: bool,
    },
}

pub fn ipam(s: &Store, cmd: IpamCmd) -> Result<()> {
    run(async {
        let db = open(s).await?;
        match cmd {
            IpamCmd::Show => {
                let ipam = ferrovia_ipam::Ipam::new(db, ferrovia_ipam::IpamConfig::default());
                let snap = ipam.show().await?;
                print(s.json, &snap, || print!("{snap}"))
            }
            IpamCmd::Pool {
                cmd: PoolCmd::Set { cidr, nat_outgoing },
            } => {
                let ipam = ferrovia_ipam::Ipam::new(db, ferrovia_ipam::IpamConfig::default());
                if !ipam.set_nat_outgoing(&cidr, nat_outgoing).await? {
                    anyhow::bail!(
                        "no pool {cidr} in the datastore (ferrovia ipam show lists them)"
                    );
                }
                println!("pool {cidr}: natOutgoing {nat_outgoing}");
                Ok(())
            }
        }
    })
}

/// Runs one command on a small runtime (the datastore is async).
fn run<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

async fn open(s: &Store) -> Result<SharedDatastore> {
    let cfg = if s.kubeconfig.is_some() || s.in_cluster {
        config::Datastore {
            sqlite: None,
            kubernetes: Some(config::Kubernetes {
                kubeconfig: s.kubeconfig.clone(),
                lease_namespace: Some(s.lease_namespace.clone()),
            }),
        }
    } else {
        config::Datastore {
            sqlite: Some(config::Sqlite {
                path: s.datastore.clone(),
            }),
            kubernetes: None,
        }
    };
    crate::datastore::open(&cfg)
        .await
        .with_context(|| format!("opening the {}", cfg.describe()))
}

fn print<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text();
    }
    Ok(())
}

/// A node as `node list` shows it: its record and when its agent last renewed its lease.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    #[serde(flatten)]
    record: NodeRecord,
    /// Unix seconds; `None`: no lease (the agent never ran, or the node was registered by
    /// hand).
    lease_renew_time: Option<u64>,
}

pub fn node(s: &Store, cmd: NodeCmd) -> Result<()> {
    run(async {
        let db = open(s).await?;
        match cmd {
            NodeCmd::Register {
                name,
                router_id,
                addresses,
                as_number,
                blocks,
            } => {
                let rec = NodeRecord {
                    name,
                    addresses,
                    as_number,
                    router_id,
                    blocks,
                    route_reflector_cluster_id: None,
                    pod_cidrs: Vec::new(),
                    labels: Default::default(),
                };
                let v = model::register_node(&*db, &rec).await?;
                println!("node {} registered (version {})", rec.name, v.version);
            }
            NodeCmd::Drain { .. } => {
                bail!("node drain talks to the agent, not the datastore (a bug: it is handled before the datastore is opened)")
            }
            NodeCmd::Set {
                name,
                route_reflector_cluster_id,
                pod_cidrs,
                labels,
            } => {
                if route_reflector_cluster_id.is_none() && pod_cidrs.is_empty() && labels.is_empty()
                {
                    bail!("nothing to change: give --route-reflector-cluster-id ADDRESS (or none), --pod-cidr CIDR or --label KEY=VALUE");
                }
                let kubernetes = s.kubeconfig.is_some() || s.in_cluster;
                if kubernetes && !pod_cidrs.is_empty() {
                    bail!("--pod-cidr is for the SQLite datastore: on Kubernetes the Node's spec.podCIDRs is the pod CIDR, set by the controller-manager (--allocate-node-cidrs) or when the Node is created (kubectl), and ferrovia only reads it; nothing was changed");
                }
                if kubernetes && !labels.is_empty() {
                    bail!("--label is for the SQLite datastore: on Kubernetes peers' node selectors match the Node's own labels; change them with `kubectl label node {name} KEY=VALUE` (or KEY-); nothing was changed");
                }
                if !labels.is_empty() {
                    let changes: Vec<(String, Option<String>)> =
                        labels.iter().map(|l| (l.0.clone(), l.1.clone())).collect();
                    match model::set_node_labels(&*db, &name, &changes).await {
                        Ok(v) => {
                            let now: Vec<String> = v
                                .value
                                .labels
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect();
                            println!(
                                "node {name}: labels {} (version {})",
                                if now.is_empty() {
                                    "none".to_string()
                                } else {
                                    now.join(",")
                                },
                                v.version
                            );
                        }
                        Err(crate::datastore::DatastoreError::NotFound { .. }) => {
                            bail!("no node named {name} in {}: register it first (its agent does at start)", s.datastore.display())
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                if !pod_cidrs.is_empty() {
                    match model::set_pod_cidrs(&*db, &name, &pod_cidrs).await {
                        Ok(v) => println!(
                            "node {name}: pod CIDRs {} (version {})",
                            pod_cidrs
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", "),
                            v.version
                        ),
                        Err(crate::datastore::DatastoreError::NotFound { .. }) => {
                            bail!("no node named {name} in {}: register it first (its agent does at start)", s.datastore.display())
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                if let Some(ClusterId(c)) = route_reflector_cluster_id {
                    let v = model::set_node_cluster_id(&*db, &name, c).await?;
                    match c {
                        Some(c) => println!(
                            "node {name} is a route reflector with cluster id {c} (version {})",
                            v.version
                        ),
                        None => println!(
                            "node {name} is not a route reflector (version {})",
                            v.version
                        ),
                    }
                }
            }
            NodeCmd::Remove { name } => {
                if model::remove_node(&*db, &name).await? {
                    println!("node {name} removed");
                } else {
                    bail!("no node named {name} in {}", s.datastore.display());
                }
            }
            NodeCmd::List => {
                let now = model::unix_now();
                let mut nodes = Vec::new();
                for record in model::list_nodes(&*db).await? {
                    let lease = model::get_lease(&*db, &record.name).await?;
                    nodes.push(NodeView {
                        lease_renew_time: lease.map(|l| l.renew_time),
                        record,
                    });
                }
                print(s.json, &nodes, || {
                    println!(
                        "{:<20} {:<16} {:>10} {:<40} {:>9} BLOCKS",
                        "NAME", "ROUTER ID", "AS", "ADDRESSES", "LEASE"
                    );
                    for NodeView {
                        record: n,
                        lease_renew_time,
                    } in &nodes
                    {
                        let addrs: Vec<String> =
                            n.addresses.iter().map(|a| a.to_string()).collect();
                        let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
                        let asn = n
                            .as_number
                            .map(|a| a.to_string())
                            .unwrap_or_else(|| "cluster".into());
                        let lease = lease_renew_time.map_or_else(
                            || "none".to_string(),
                            |t| format!("{}s ago", now.saturating_sub(t)),
                        );
                        println!(
                            "{:<20} {:<16} {:>10} {:<40} {:>9} {}",
                            n.name,
                            n.router_id,
                            asn,
                            addrs.join(","),
                            lease,
                            blocks.join(",")
                        );
                    }
                })?;
            }
        }
        Ok(())
    })
}

pub fn cluster(s: &Store, cmd: ClusterCmd) -> Result<()> {
    run(async {
        let db = open(s).await?;
        let c: ClusterBgp = match cmd {
            ClusterCmd::Show => model::get_cluster_bgp(&*db).await?.with_context(|| {
                "no cluster BGP settings yet: the first agent seeds them from its configuration"
            })?,
            ClusterCmd::Set {
                mesh,
                as_number,
                service_cluster_ips,
                service_external_ips,
                service_load_balancer_ips,
            } => {
                let services = model::ServiceCidrsChange {
                    cluster_ips: service_cluster_ips.map(|c| c.0),
                    external_ips: service_external_ips.map(|c| c.0),
                    load_balancer_ips: service_load_balancer_ips.map(|c| c.0),
                };
                if mesh.is_none() && as_number.is_none() && services.is_empty() {
                    bail!("nothing to change: give --mesh on|off, --as-number N and/or --service-cluster-ips, --service-external-ips, --service-load-balancer-ips CIDRS");
                }
                model::set_cluster_bgp(
                    &*db,
                    mesh.map(|m| matches!(m, OnOff::On)),
                    as_number,
                    &services,
                )
                .await?
            }
        };
        print(s.json, &c, || {
            println!(
                "AS {}  mesh {}  listen port {}",
                c.as_number,
                if c.mesh { "on" } else { "off" },
                c.listen_port
            );
            for (key, list) in c.services.lists() {
                if !list.is_empty() {
                    let l: Vec<String> = list.iter().map(|p| p.to_string()).collect();
                    println!("{key}: {}", l.join(","));
                }
            }
        })
    })
}

pub fn peer(s: &Store, cmd: PeerCmd) -> Result<()> {
    run(async {
        let db = open(s).await?;
        match cmd {
            PeerCmd::Add {
                name,
                address,
                as_number,
                node,
                node_selector,
                password_file,
                options,
            } => {
                let mut rec = PeerRecord {
                    name,
                    address,
                    as_number,
                    node,
                    node_selector,
                    password_file,
                    ttl_security: None,
                    bfd: None,
                    safety: Default::default(),
                };
                options.apply(&mut rec).map_err(anyhow::Error::msg)?;
                model::put_peer(&*db, &rec).await?;
                println!("peer {} stored", rec.name);
            }
            PeerCmd::Set {
                name,
                options,
                node,
                node_selector,
                all_nodes,
                no_ttl_security,
                no_max_prefixes,
                clear_import_prefixes,
                clear_export_prefixes,
            } => {
                let stored = model::update_peer(&*db, &name, |rec| {
                    if node.is_some() || node_selector.is_some() || all_nodes {
                        rec.node = node.clone();
                        rec.node_selector = node_selector.clone();
                    }
                    if no_ttl_security {
                        rec.ttl_security = None;
                    }
                    if no_max_prefixes {
                        rec.safety.max_prefixes = None;
                    }
                    if clear_import_prefixes {
                        rec.safety.import_prefixes.clear();
                    }
                    if clear_export_prefixes {
                        rec.safety.export_prefixes.clear();
                    }
                    options.apply(rec)
                })
                .await?;
                print(s.json, &stored.value, || println!("peer {name} changed"))?;
            }
            PeerCmd::Remove { name } => {
                if model::remove_peer(&*db, &name).await? {
                    println!("peer {name} removed");
                } else {
                    bail!("no peer named {name} in {}", s.datastore.display());
                }
            }
            PeerCmd::List => {
                let peers = model::list_peers(&*db).await?;
                print(s.json, &peers, || {
                    println!("{:<20} {:<40} {:>10} NODES", "NAME", "ADDRESS", "AS");
                    for p in &peers {
                        let nodes = match (&p.node, &p.node_selector) {
                            (Some(n), _) => n.clone(),
                            (None, Some(sel)) => format!("selector {sel}"),
                            (None, None) => "(all)".to_string(),
                        };
                        println!(
                            "{:<20} {:<40} {:>10} {}",
                            p.name, p.address, p.as_number, nodes
                        );
                    }
                })?;
            }
        }
        Ok(())
    })
}
