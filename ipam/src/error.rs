//! Every error of IPAM. Each message says what happened and what to do about it.

use crate::datastore::DatastoreError;
use crate::model::Family;
use ipnet::IpNet;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IpamError {
    /// A pool CIDR that does not parse, or has host bits set.
    #[error(
        "invalid pool CIDR {cidr:?}: {reason}; write it as NETWORK/PREFIX with the host bits \
         zero, e.g. 10.244.0.0/16 or fd00:10:244::/48"
    )]
    BadCidr { cidr: String, reason: String },

    /// A block size outside the allowed range for the pool.
    #[error(
        "pool {cidr}: block size /{block_size} is not allowed; use a blockSize from {min} to \
         {max} (IPv4 blocks /20 to /32, IPv6 /116 to /128, and never larger than the pool)"
    )]
    BadBlockSize {
        cidr: IpNet,
        block_size: u8,
        min: u8,
        max: u8,
    },

    /// Two pools whose ranges overlap.
    #[error(
        "pool {cidr} overlaps pool {other}; pools must be disjoint: change or remove one of them \
         in ipam.pools"
    )]
    PoolOverlap { cidr: IpNet, other: IpNet },

    /// The same pool declared twice with different settings.
    #[error("pool {cidr} is declared twice with different settings in ipam.pools; keep one entry")]
    DuplicatePool { cidr: IpNet },

    /// The block size of a pool that has blocks in use cannot change.
    #[error(
        "pool {cidr} has block size /{stored} in the datastore and {blocks} block(s) claimed, so \
         it cannot change to /{requested}; keep blockSize {stored}, or add a new pool with the \
         new size, disable this one and let its blocks empty"
    )]
    BlockSizeChange {
        cidr: IpNet,
        stored: u8,
        requested: u8,
        blocks: usize,
    },

    /// A pool that cannot be removed because blocks are still claimed from it.
    #[error(
        "pool {cidr} still has {blocks} block(s) claimed; disable it (disabled: true), wait for \
         its pods to go and its blocks to be released, then remove it"
    )]
    PoolInUse { cidr: IpNet, blocks: usize },

    /// No pool of the requested family exists.
    #[error(
        "no {family} pool is configured; add one under ipam.pools in the agent config \
         (e.g. {{ cidr: {example} }})",
        example = family.example_pool()
    )]
    NoPool { family: Family },

    /// Every pool of the requested family is disabled.
    #[error(
        "every {family} pool is disabled ({pools}); enable one (disabled: false) or add a new pool \
         under ipam.pools"
    )]
    PoolsDisabled { family: Family, pools: String },

    /// No address is left for this node.
    #[error(
        "no free {family} address for node {node:?}: every enabled {family} pool is full{hint}; \
         add a pool under ipam.pools, or free addresses (delete pods, or let CNI GC run)",
        hint = if *strict_affinity {
            " (strict affinity is on, so addresses are not borrowed from other nodes' blocks)"
        } else {
            ""
        }
    )]
    Exhausted {
        family: Family,
        node: String,
        strict_affinity: bool,
    },

    /// The node holds its limit of blocks, they are full and nothing can be borrowed.
    #[error(
        "node {node:?} holds its limit of {limit} {family} block(s) and they are full{hint}; raise \
         ipam.maxBlocksPerNode{what}, or free addresses on this node",
        hint = if *strict_affinity {
            " (strict affinity is on, so addresses are not borrowed from other nodes' blocks)"
        } else {
            ", and no other node's block has a free address"
        },
        what = if *strict_affinity { ", turn off ipam.strictAffinity" } else { ", add a pool" }
    )]
    BlockLimit {
        family: Family,
        node: String,
        limit: u32,
        strict_affinity: bool,
    },

    /// A handle (container id + interface name) that cannot be stored.
    #[error("invalid IPAM handle {handle:?}: {reason}")]
    InvalidHandle { handle: String, reason: String },

    /// A node name that cannot be stored.
    #[error("invalid node name {node:?}: {reason}")]
    InvalidNode { node: String, reason: String },

    /// An assignment that asked for no address family.
    #[error("no address family requested; ask for IPv4, IPv6 or both")]
    NoFamily,

    /// The handle holds addresses assigned by another node.
    #[error(
        "IPAM handle {handle} holds addresses assigned by node {owner:?}, not {node:?}; release it \
         on {owner:?} first (CNI DEL), or let CNI GC there free it"
    )]
    HandleOnOtherNode {
        handle: String,
        node: String,
        owner: String,
    },

    /// `podCIDR` mode, and the node has no pod CIDR (yet).
    #[error(
        "node {node} has no pod CIDR yet, and with ipam.mode podCIDR its pods get addresses only \
         from it: on Kubernetes the controller-manager assigns the Node's spec.podCIDRs \
         (--allocate-node-cidrs); on SQLite set them with `ferrovia node set {node} --pod-cidr \
         CIDR`"
    )]
    NoPodCidr { node: String },

    /// A read-modify-write loop gave up after too many compare-and-swap conflicts.
    #[error(
        "{kind} {name:?} kept changing under us ({attempts} conflicting writes in a row); another \
         agent is rewriting it in a loop: retry later, and look for a misbehaving agent or script"
    )]
    TooManyConflicts {
        kind: &'static str,
        name: String,
        attempts: u32,
    },

    /// A stored object that does not decode or breaks the layout's rules.
    #[error(
        "{kind} {name:?} in the datastore is not valid: {reason}; fix or delete it (it may have \
         been written by a newer ferrovia or by hand)"
    )]
    Corrupt {
        kind: &'static str,
        name: String,
        reason: String,
    },

    /// The store itself failed.
    #[error(
        "datastore {op} of {kind} {name:?} failed: {source}; check that the datastore is \
         reachable and writable, then retry"
    )]
    Store {
        op: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: Box<DatastoreError>,
    },
}

impl IpamError {
    /// A copy of a transient error (a store that is unavailable, or too many conflicts),
    /// to give every request of a batch the same answer; `None` for other errors.
    pub fn transient_copy(&self) -> Option<IpamError> {
        if !self.is_transient() {
            return None;
        }
        match self {
            IpamError::TooManyConflicts {
                kind,
                name,
                attempts,
            } => Some(IpamError::TooManyConflicts {
                kind,
                name: name.clone(),
                attempts: *attempts,
            }),
            IpamError::Store {
                op,
                kind,
                name,
                source,
            } => Some(IpamError::Store {
                op,
                kind,
                name: name.clone(),
                source: source.clone(),
            }),
            _ => None,
        }
    }

    /// True for errors a caller may retry as they are (a busy or unreachable store, a
    /// conflict storm). CNI maps these to error 11 (try again later).
    pub fn is_transient(&self) -> bool {
        match self {
            IpamError::TooManyConflicts { .. } | IpamError::NoPodCidr { .. } => true,
            IpamError::Store { source, .. } => !matches!(
                **source,
                DatastoreError::Invalid { .. }
                    | DatastoreError::Forbidden { .. }
                    | DatastoreError::Backend { .. }
            ),
            _ => false,
        }
    }

    /// True when the addresses of a family ran out (the pool is full, or the node's
    /// block limit is reached and nothing can be borrowed).
    pub fn is_exhausted(&self) -> bool {
        matches!(
            self,
            IpamError::Exhausted { .. } | IpamError::BlockLimit { .. }
        )
    }
}
