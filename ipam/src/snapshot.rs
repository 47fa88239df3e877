//! What `ferrovia ipam show` prints: every pool, block and allocation. Serializes to
//! camelCase JSON for `--json`; `Display` renders the plain-text tables.

use crate::model::{Attributes, Family, HandleId};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Sorted by CIDR.
    pub pools: Vec<PoolStatus>,
    /// Sorted by CIDR.
    pub blocks: Vec<BlockStatus>,
    /// Sorted by address.
    pub allocations: Vec<AllocationStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolStatus {
    pub cidr: IpNet,
    pub family: Family,
    pub block_size: u8,
    pub disabled: bool,
    /// Masquerade to the node's address toward destinations outside every pool.
    #[serde(default = "yes")]
    pub nat_outgoing: bool,
    /// Blocks claimed from the pool.
    pub blocks: usize,
    /// Addresses in use in those blocks.
    pub allocated: usize,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockStatus {
    pub cidr: IpNet,
    /// The pool the block was claimed from; `None` when that pool is gone.
    pub pool: Option<IpNet>,
    /// The node the block is affine to (routed to over BGP).
    pub node: String,
    pub allocated: usize,
    pub capacity: u32,
    /// Of those allocated, how many are borrowed by pods on other nodes.
    pub borrowed: usize,
    /// When a sweep first saw the block empty (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocationStatus {
    pub ip: IpAddr,
    pub block: IpNet,
    /// The node whose pod holds the address.
    pub node: String,
    /// True when `node` is not the block's node.
    pub borrowed: bool,
    pub handle: HandleId,
    /// From the handle object; empty when the handle object is missing (see
    /// `indexed`).
    #[serde(default)]
    pub attributes: Attributes,
    /// False when the handle object does not list this address (an inconsistency that
    /// GC repairs).
    pub indexed: bool,
}

impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "POOLS")?;
        writeln!(
            f,
            "  {:<28} {:<5} {:>6} {:>8} {:>4} {:>7} {:>9}",
            "CIDR", "FAM", "BLOCK", "STATE", "NAT", "BLOCKS", "ALLOCATED"
        )?;
        for p in &self.pools {
            writeln!(
                f,
                "  {:<28} {:<5} {:>6} {:>8} {:>4} {:>7} {:>9}",
                p.cidr.to_string(),
                p.family.to_string(),
                format!("/{}", p.block_size),
                if p.disabled { "disabled" } else { "enabled" },
                if p.nat_outgoing { "on" } else { "off" },
                p.blocks,
                p.allocated
            )?;
        }
        writeln!(f, "BLOCKS")?;
        writeln!(
            f,
            "  {:<32} {:<24} {:>9} {:>8}",
            "CIDR", "NODE", "USED", "BORROWED"
        )?;
        for b in &self.blocks {
            writeln!(
                f,
                "  {:<32} {:<24} {:>9} {:>8}",
                b.cidr.to_string(),
                b.node,
                format!("{}/{}", b.allocated, b.capacity),
                b.borrowed
            )?;
        }
        writeln!(f, "ALLOCATIONS")?;
        writeln!(f, "  {:<28} {:<24} {:<32} HANDLE", "ADDRESS", "NODE", "POD")?;
        for a in &self.allocations {
            let pod = match (&a.attributes.namespace, &a.attributes.pod) {
                (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                (None, Some(pod)) => pod.clone(),
                _ => "-".to_string(),
            };
            writeln!(
                f,
                "  {:<28} {:<24} {:<32} {}{}{}",
                a.ip.to_string(),
                a.node,
                pod,
                a.handle,
                if a.borrowed { " (borrowed)" } else { "" },
                if a.indexed { "" } else { " (not indexed)" }
            )?;
        }
        Ok(())
    }
}
