//! CLI commands on the datastore: nodes, cluster-wide BGP settings and stored peers.
//! Agents notice every change within a fraction of a second, without a restart.

use crate::datastore::model::{self, ClusterBgp, NodeRecord, PeerRecord};
use crate::datastore::SqliteStore;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

/// The embedded datastore's default location.
pub const DEFAULT_DB: &str = "/var/lib/ferrovia/ferrovia.db";

#[derive(Args)]
pub struct Store {
    /// The SQLite datastore (datastore.sqlite.path of the agents).
    #[arg(long, global = true, default_value = DEFAULT_DB)]
    pub datastore: PathBuf,
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
        /// Blocks this node announces (until IPAM assigns them).
        #[arg(long = "block")]
        blocks: Vec<IpNet>,
    },
    /// Remove a node: every other agent drops its session with it.
    Remove { name: String },
    /// List nodes.
    List,
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
    },
}

#[derive(Subcommand)]
pub enum PeerCmd {
    /// Add or replace a stored peer: global, or for one node with --node.
    Add {
        name: String,
        #[arg(long)]
        address: IpAddr,
        #[arg(long)]
        as_number: u32,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a stored peer.
    Remove { name: String },
    /// List stored peers.
    List,
}

#[derive(Subcommand)]
pub enum IpamCmd {
    /// Pools, blocks with the node they belong to, and every allocation.
    Show,
}

pub fn ipam(s: &Store, cmd: IpamCmd) -> Result<()> {
    let db = std::sync::Arc::new(open(s)?);
    match cmd {
        IpamCmd::Show => {
            let ipam = ferrovia_ipam::Ipam::new(
                crate::ipam_store::DatastoreStore(db),
                ferrovia_ipam::IpamConfig::default(),
            );
            let snap = ipam.show()?;
            print(s.json, &snap, || print!("{snap}"))
        }
    }
}

fn open(s: &Store) -> Result<SqliteStore> {
    SqliteStore::open(&s.datastore)
        .with_context(|| format!("opening the datastore {}", s.datastore.display()))
}

fn print<T: serde::Serialize>(json: bool, v: &T, text: impl FnOnce()) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        text();
    }
    Ok(())
}

pub fn node(s: &Store, cmd: NodeCmd) -> Result<()> {
    let db = open(s)?;
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
                heartbeat: model::unix_now(),
                blocks,
            };
            let v = model::register_node(&db, &rec)?;
            println!("node {} registered (version {})", rec.name, v.version);
        }
        NodeCmd::Remove { name } => {
            if model::remove_node(&db, &name)? {
                println!("node {name} removed");
            } else {
                bail!("no node named {name} in {}", s.datastore.display());
            }
        }
        NodeCmd::List => {
            let nodes = model::list_nodes(&db)?;
            print(s.json, &nodes, || {
                println!(
                    "{:<20} {:<16} {:>10} {:<40} BLOCKS",
                    "NAME", "ROUTER ID", "AS", "ADDRESSES"
                );
                for n in &nodes {
                    let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
                    let blocks: Vec<String> = n.blocks.iter().map(|b| b.to_string()).collect();
                    let asn = n
                        .as_number
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "cluster".into());
                    println!(
                        "{:<20} {:<16} {:>10} {:<40} {}",
                        n.name,
                        n.router_id,
                        asn,
                        addrs.join(","),
                        blocks.join(",")
                    );
                }
            })?;
        }
    }
    Ok(())
}

pub fn cluster(s: &Store, cmd: ClusterCmd) -> Result<()> {
    let db = open(s)?;
    let c: ClusterBgp = match cmd {
        ClusterCmd::Show => model::get_cluster_bgp(&db)?.with_context(|| {
            "no cluster BGP settings yet: the first agent seeds them from its configuration"
        })?,
        ClusterCmd::Set { mesh, as_number } => {
            if mesh.is_none() && as_number.is_none() {
                bail!("nothing to change: give --mesh on|off and/or --as-number N");
            }
            model::set_cluster_bgp(&db, mesh.map(|m| matches!(m, OnOff::On)), as_number)?
        }
    };
    print(s.json, &c, || {
        println!(
            "AS {}  mesh {}  listen port {}",
            c.as_number,
            if c.mesh { "on" } else { "off" },
            c.listen_port
        )
    })
}

pub fn peer(s: &Store, cmd: PeerCmd) -> Result<()> {
    let db = open(s)?;
    match cmd {
        PeerCmd::Add {
            name,
            address,
            as_number,
            node,
            password_file,
        } => {
            let rec = PeerRecord {
                name,
                address,
                as_number,
                node,
                password_file,
            };
            model::put_peer(&db, &rec)?;
            println!("peer {} stored", rec.name);
        }
        PeerCmd::Remove { name } => {
            if model::remove_peer(&db, &name)? {
                println!("peer {name} removed");
            } else {
                bail!("no peer named {name} in {}", s.datastore.display());
            }
        }
        PeerCmd::List => {
            let peers = model::list_peers(&db)?;
            print(s.json, &peers, || {
                println!("{:<20} {:<40} {:>10} NODE", "NAME", "ADDRESS", "AS");
                for p in &peers {
                    println!(
                        "{:<20} {:<40} {:>10} {}",
                        p.name,
                        p.address,
                        p.as_number,
                        p.node.as_deref().unwrap_or("(all)")
                    );
                }
            })?;
        }
    }
    Ok(())
}
