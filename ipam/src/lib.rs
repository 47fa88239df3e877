//! IP address management for ferrovia: pools, blocks affine to nodes, and addresses held
//! under handles, kept in the agent's datastore ([`datastore::Datastore`], defined here
//! because IPAM runs on it; the agent crate holds the backends).
//!
//! # Model
//!
//! * A **pool** ([`Pool`], from the agent config's `ipam.pools`, see [`PoolSpec`]) is a
//!   CIDR cut into **blocks** of `blockSize` (default /26 for IPv4, /122 for IPv6: 64
//!   addresses). Allowed block sizes: IPv4 /20 to /32, IPv6 /116 to /128 (at most 4096
//!   addresses, so a block object stays small), and never larger than the pool. Pools
//!   never overlap. A disabled pool gives no new address; the ones in use stay.
//! * A **block** is claimed by a node (its *affinity*) with a `create` in the store, so
//!   two nodes can never both claim it. The node announces its blocks over BGP
//!   ([`Ipam::node_blocks`]). A node claims a new block only when its blocks are full,
//!   up to [`IpamConfig::max_blocks_per_node`] blocks per family.
//! * An **allocation** is one address of a block held by a **handle** ([`HandleId`]:
//!   container id + interface name), with [`Attributes`] (pod namespace and name).
//! * When a node can claim no block (pools full, or its block limit reached), it
//!   **borrows** a single address from another node's block, unless
//!   [`IpamConfig::strict_affinity`] is on. It announces a borrowed address as a /32 or
//!   /128 ([`Ipam::borrowed`]); the more specific route wins over the block's.
//! * A block that has stayed empty for [`IpamConfig::empty_block_grace`] is given back
//!   ([`Ipam::release_empty_blocks`], called periodically with the current time).
//!
//! # Stored objects (JSON, camelCase)
//!
//! | kind | name | value |
//! | --- | --- | --- |
//! | `IPPool` | CIDR with `.:/` → `-` (`10-244-0-0-16`, see [`net_name`]) | `{"cidr":"10.244.0.0/16","blockSize":26,"disabled":false,"createdMs":…}` |
//! | `IPAMBlock` | CIDR likewise (`10-244-1-0-26`) | `{"cidr":"10.244.1.0/26","affinity":"node1","allocations":[{"ordinal":0,"handle":"c1:eth0"},{"ordinal":1,"handle":"c2:eth0","node":"node2"}],"emptySinceMs":…}` |
//! | `IPAMHandle` | `CONTAINERID.IFNAME`, or `h-` + hash ([`HandleId::name`]) | `{"containerId":"c1","interface":"eth0","node":"node1","attributes":{"namespace":"ns","pod":"p"},"addresses":[{"ip":"10.244.1.0","block":"10.244.1.0/26"}]}` |
//!
//! Names are DNS-1123 subdomains (valid Kubernetes object names); a block records its
//! holders by [`HandleId::key`] (`CONTAINERID:IFNAME`, inside the value, where any text
//! is allowed). In a block, `allocations` is sorted by `ordinal` (offset from the block's network
//! address); `node` is present only on a borrowed address (the holder's node, when it is
//! not the block's). `emptySinceMs` is when a sweep first saw the block empty. Every
//! address of a block can be given, the network and last addresses included (pods get
//! /32 and /128 host routes; nothing is broadcast).
//!
//! # Consistency
//!
//! The **block is the source of truth**; the **handle object is an index** of the
//! addresses a handle holds, so release does not scan blocks. Every write is a
//! compare-and-swap on the version read, retried on conflict ([`MAX_ATTEMPTS`]). The
//! write order keeps one rule true even if the process dies between two writes: *the
//! index lists every address the blocks give the handle, and possibly more*.
//!
//! * assign: 1) write the handle with the chosen address (the intent), 2) write the
//!   block. A crash after 1) leaves an index entry the block does not confirm: harmless
//!   (a repeated assign of the handle replaces it; release skips it).
//! * release: 1) remove the handle's allocations from their blocks (only allocations the
//!   block records as the handle's: never another handle's address), 2) delete the
//!   handle object. A crash after 1) leaves a handle object for the next release.
//! * Operations on one handle are serialised inside the process (a per-handle lock), so
//!   two of them never interleave their writes. One agent per node serves its pods.
//! * [`Ipam::gc`] repairs anything else from the blocks: it frees every allocation held
//!   by the node's pods (found by scanning blocks, handle object or not) whose handle is
//!   not valid, deletes the node's invalid handle objects, and rewrites the index of
//!   valid handles to exactly what the blocks hold (recreating a missing handle object).
//!
//! What an assignment reads, it may take from this process's own copies instead of the
//! store, since a compare-and-swap catches whatever a copy missed: the pools from a watch
//! ([`Ipam::follow_pools`], the agent starts it), and each block as this process last read
//! or wrote it (an address a copy shows free is only given if the block write succeeds; a
//! block a copy shows full is passed over, and every block is listed afresh before a new
//! one is claimed or an address borrowed; a copy showing an address not held is read again).
//! A batch creates the handle objects of its pods without reading them first (a new pod has
//! none); one that exists already is read then, and treated as above. So a CNI ADD on a
//! warm node costs two writes: its handle and its block.
//!
//! Releasing a block is a delete with the version read while it was empty, so a block
//! that received an address in between is kept. Two nodes creating overlapping pools at
//! the same instant: the one created later (`createdMs`, then the higher CIDR) deletes
//! its pool and fails. Versions are opaque: IPAM compares them for equality only.
//!
//! # Wiring
//!
//! * Datastore: [`Ipam::new`] takes the agent's `Arc<dyn Datastore>`. Every method is
//!   async; a blocking backend does its blocking work on tokio's blocking pool.
//! * CNI ADD → [`Ipam::assign`] (idempotent per handle); announce
//!   [`Assignment::claimed_blocks`] at once, and a borrowed address as a host route.
//!   CNI DEL → [`Ipam::release`] (idempotent). CNI GC → [`Ipam::gc`] with the valid
//!   attachments. Periodically → [`Ipam::release_empty_blocks`] and withdraw what it
//!   returns. At start → [`Ipam::ensure_pools`] with the configured pools.
//! * `ferrovia ipam show` → [`Ipam::show`] ([`Snapshot`] is serde-serializable;
//!   `Display` prints tables).
//! * Errors: [`IpamError::is_transient`] (retry: CNI code 11),
//!   [`IpamError::is_exhausted`].

pub mod datastore;
mod error;
mod group;
pub mod invalid;
mod ipam;
mod leak;
mod lock;
mod model;
mod snapshot;

pub use error::IpamError;
pub use group::{Arrival, GroupCommit, GATHER, MAX_BATCH};
pub use ipam::{
    AssignRequest, AssignedIp, Assignment, Ipam, IpamConfig, IpamCounters, NodeRelease, Released,
    DEFAULT_EMPTY_BLOCK_GRACE, MAX_ATTEMPTS,
};
pub use leak::{LeakCollector, LeakSweep, PodDirectory, DEFAULT_LEAK_GRACE};
pub use model::{
    net_name, Attributes, Families, Family, HandleId, Pool, PoolSpec, BLOCK_SIZES_V4,
    BLOCK_SIZES_V6, DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6, KIND_BLOCK, KIND_HANDLE,
    KIND_POOL,
};
pub use snapshot::{AllocationStatus, BlockStatus, PoolStatus, Snapshot};
