//! The allocator: pools, block claims, assignment, release, GC and block release.

use crate::datastore::{
    DatastoreError, Item, Object, Reflector, Selector, SharedDatastore, Version,
};
use crate::error::IpamError;
use crate::lock::KeyedLock;
use crate::model::{
    first_free_block, net_name, overlaps, validate_node, Allocation, Attributes, Block, Families,
    Family, Handle, HandleAddr, HandleId, Pool, PoolSpec, KIND_BLOCK, KIND_HANDLE, KIND_POOL,
};
use crate::snapshot::{AllocationStatus, BlockStatus, PoolStatus, Snapshot};
use futures::StreamExt;
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What [`Ipam::release_reporting`] freed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Released {
    /// The addresses freed, sorted.
    pub addresses: Vec<IpAddr>,
    /// One of them was borrowed from another node's block.
    pub borrowed: bool,
}

/// How many compare-and-swap conflicts in a row one read-modify-write loop accepts.
pub const MAX_ATTEMPTS: u32 = 100;

/// Handle writes of one batch in flight at once: a burst of pods on a remote datastore
/// (each write a round trip to the API server) waits for the slowest few instead of the
/// sum, without opening a connection per pod.
const HANDLE_WRITES_AT_ONCE: usize = 32;

/// Default [`IpamConfig::empty_block_grace`].
pub const DEFAULT_EMPTY_BLOCK_GRACE: Duration = Duration::from_secs(600);

/// Allocation policy (the agent config's `ipam` section, less the pools).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// Never borrow an address from another node's block: when this node's blocks are
    /// full and no block can be claimed, assignment fails.
    pub strict_affinity: bool,
    /// Most blocks of each family a node may claim (`None`: no limit). Exact with one
    /// agent per node; two processes claiming for the same node at the same instant may
    /// overshoot it by one.
    pub max_blocks_per_node: Option<u32>,
    /// How long a block stays empty (counted from the first sweep that saw it empty)
    /// before [`Ipam::release_empty_blocks`] gives it back.
    pub empty_block_grace: Duration,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            strict_affinity: false,
            max_blocks_per_node: None,
            empty_block_grace: DEFAULT_EMPTY_BLOCK_GRACE,
        }
    }
}

/// One address given to a handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AssignedIp {
    pub ip: IpAddr,
    /// The block the address comes from.
    pub block: IpNet,
    /// True when the block is affine to another node: the agent announces the address
    /// itself (/32 or /128) and routes it to the pod.
    pub borrowed: bool,
    /// True when this call claimed `block`.
    pub new_block: bool,
}

/// What [`Ipam::assign`] gave.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    pub ipv4: Option<AssignedIp>,
    pub ipv6: Option<AssignedIp>,
    /// Every block this call claimed for the node: announce them at once (and install
    /// their blackhole routes).
    pub claimed_blocks: Vec<IpNet>,
    /// True when the handle held one of these addresses before this call (a repeated
    /// ADD): undoing the call must not free them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_held: bool,
}

impl Assignment {
    /// The addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = &AssignedIp> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }
}

/// One assignment of a batch ([`Ipam::assign_many`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignRequest {
    pub handle: HandleId,
    pub attributes: Attributes,
    pub families: Families,
}

/// What [`Ipam::release_node`] released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRelease {
    /// Addresses freed (held by the node's pods).
    pub addresses: usize,
    /// Handle objects of the node deleted.
    pub handles: usize,
    /// The node's blocks deleted.
    pub blocks_deleted: Vec<IpNet>,
    /// The node's blocks that still held other nodes' pods, and the node each went to.
    pub blocks_moved: Vec<(IpNet, String)>,
}

/// What this process's IPAM wrote (for metrics and `ferrovia status`), counted since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamCounters {
    /// Successful block writes (claims, assignments, releases, sweeps).
    pub block_writes: u64,
    /// Writes that lost a compare-and-swap race (or found the object created or gone
    /// meanwhile) and were retried after reading again.
    pub conflicts_retried: u64,
    /// Assignments made by [`Ipam::assign_many`], and how many batches they came in.
    pub batched_assignments: u64,
    pub batches: u64,
    /// Leak collection: pods found gone while holding an address (each counted once, when
    /// its grace period starts).
    #[serde(default)]
    pub leaks_found: u64,
    /// Leak collection: handles released because their pod stayed gone for the grace period.
    #[serde(default)]
    pub leaks_released: u64,
    /// Leak collection: handles whose pod is gone, waiting for the grace period (as of the
    /// last sweep).
    #[serde(default)]
    pub leak_suspects: u64,
}

#[derive(Debug, Default)]
struct Stats {
    block_writes: AtomicU64,
    conflicts: AtomicU64,
    batched: AtomicU64,
    batches: AtomicU64,
    leaks_found: AtomicU64,
    leaks_released: AtomicU64,
    leak_suspects: AtomicU64,
}

/// A short random pause before retry `attempt` (1, 2, …) after a lost compare-and-swap,
/// so that writers that collided do not collide again in lockstep: up to 2^attempt ms,
/// at most 32 ms.
async fn jitter(attempt: u32) {
    if attempt == 0 {
        return;
    }
    let ceiling = 1u64 << attempt.min(5);
    let pause = Duration::from_millis(fastrand::u64(0..=ceiling));
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::time::sleep(pause).await;
    } else {
        // Driven by another executor (a blocking caller): a short blocking pause.
        std::thread::sleep(pause);
    }
}

/// One handle of a batch in [`Ipam::assign_many`].
struct BatchItem {
    /// Its index in the requests.
    i: usize,
    key: String,
    existed: bool,
    /// True while the handle object was neither read nor written by this batch: it is
    /// assumed absent (a new pod) and created; if it exists after all, it is read then.
    unchecked: bool,
    /// The handle object as last read or written.
    current: Option<(Handle, Version)>,
    assignment: Assignment,
    failed: Option<IpamError>,
}

fn has_family(assignment: &Assignment, family: Family) -> bool {
    match family {
        Family::Ipv4 => assignment.ipv4.is_some(),
        Family::Ipv6 => assignment.ipv6.is_some(),
    }
}

fn set_family(assignment: &mut Assignment, family: Family, ip: AssignedIp) {
    match family {
        Family::Ipv4 => assignment.ipv4 = Some(ip),
        Family::Ipv6 => assignment.ipv6 = Some(ip),
    }
}

/// The IP address manager of one agent. Shared across threads (`&self` everywhere).
pub struct Ipam {
    store: SharedDatastore,
    config: IpamConfig,
    stats: Stats,
    /// `podCIDR` mode: each node's pod CIDRs are its only pools ([`Ipam::pod_cidr_mode`]).
    pod_cidr_mode: bool,
    node_pools: Mutex<HashMap<String, Vec<Pool>>>,
    handle_locks: KeyedLock,
    /// Blocks known to be affine to each node: a hint that saves listing every block on
    /// each assignment; always confirmed by reading the block.
    affine: Mutex<HashMap<String, BTreeSet<IpNet>>>,
    /// The last state of a block this process read or wrote, with its version: the
    /// compare-and-swap of the next assignment starts from it instead of a read. A stale
    /// copy only costs a lost compare-and-swap (then the block is read again); an address
    /// it shows free is never trusted without the write succeeding; a block it shows full
    /// is passed over only until the blocks are listed afresh (before any claim or
    /// borrow), and one it shows not holding an address is read again before release
    /// concludes there is nothing to free.
    blocks: Mutex<HashMap<IpNet, (Block, Version)>>,
    /// The stored pools as a watch keeps them ([`Ipam::follow_pools`]); `None`: list them.
    pool_cache: Mutex<Option<Vec<Pool>>>,
}

/// A place to put an address.
struct Candidate {
    block: Block,
    version: Version,
    ordinal: u32,
    borrowed: bool,
}

trait Stored: Serialize + DeserializeOwned {
    const KIND: &'static str;
    fn check(&self, name: &str) -> Result<(), String>;
}

impl Stored for Pool {
    const KIND: &'static str = KIND_POOL;
    fn check(&self, name: &str) -> Result<(), String> {
        if net_name(&self.cidr) != name {
            return Err(format!("its cidr {} does not match its name", self.cidr));
        }
        if self.cidr.trunc() != self.cidr {
            return Err(format!("its cidr {} has host bits set", self.cidr));
        }
        self.check_block_size().map_err(|e| e.to_string())
    }
}

/// A pool as stored: the pool and when it was created. Two agents that create
/// overlapping pools at the same instant keep the one created first (then the lower
/// CIDR): a value both read from the store, never the store's versions (opaque).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredPool {
    #[serde(flatten)]
    pool: Pool,
    /// Unix milliseconds, written by the creator.
    #[serde(default)]
    created_ms: u64,
}

impl Stored for StoredPool {
    const KIND: &'static str = KIND_POOL;
    fn check(&self, name: &str) -> Result<(), String> {
        self.pool.check(name)
    }
}

impl Stored for Block {
    const KIND: &'static str = KIND_BLOCK;
    fn check(&self, name: &str) -> Result<(), String> {
        Block::check(self, name)
    }
}

impl Stored for Handle {
    const KIND: &'static str = KIND_HANDLE;
    fn check(&self, name: &str) -> Result<(), String> {
        Handle::check(self, name)
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Logs once that stored object `kind` `name` is left out because of `e`.
fn warn_unusable(kind: &str, name: &str, e: IpamError) {
    let reason = match e {
        IpamError::Corrupt { reason, .. } => reason,
        other => other.to_string(),
    };
    crate::invalid::warn_ignored(kind, name, &reason);
}

/// The range a block object that cannot be used may stand for: its `cidr` field if it is
/// one, and the CIDR its name spells (`10-244-1-0-26`, `fd00-10-244---122`).
fn claimed_range(item: &Item) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    if let Some(cidr) = item
        .object
        .value
        .get("cidr")
        .and_then(serde_json::Value::as_str)
        .and_then(|c| c.parse::<IpNet>().ok())
    {
        out.push(cidr.trunc());
    }
    let name = item.object.name.as_str();
    if let Some((addr, len)) = name.rsplit_once('-') {
        let addr = addr
            .strip_prefix('0')
            .filter(|a| a.starts_with('-'))
            .unwrap_or(addr);
        for text in [addr.replace('-', "."), addr.replace('-', ":")] {
            if let Ok(net) = format!("{text}/{len}").parse::<IpNet>() {
                if net_name(&net) == name {
                    out.push(net.trunc());
                }
            }
        }
    }
    out
}

/// Of stored pools that overlap, the one created first (then the lower CIDR) is in
/// effect; each other one is logged once and left out. Sorted by CIDR.
fn pools_in_effect(mut stored: Vec<StoredPool>) -> Vec<Pool> {
    stored.sort_by_key(|p| (p.created_ms, p.pool.cidr));
    let mut kept: Vec<Pool> = Vec::new();
    for p in stored {
        if let Some(older) = kept.iter().find(|k| overlaps(&k.cidr, &p.pool.cidr)) {
            crate::invalid::warn_ignored(
                KIND_POOL,
                &p.pool.name(),
                &format!(
                    "its cidr {} overlaps pool {}, created before it; pools must be disjoint: \
                     delete one of them",
                    p.pool.cidr, older.cidr
                ),
            );
            continue;
        }
        kept.push(p.pool);
    }
    kept.sort_by_key(|p| p.cidr);
    kept
}

fn in_pools(cidr: &IpNet, pools: &[Pool]) -> bool {
    pools.iter().any(|p| p.cidr.contains(cidr))
}

/// The enabled pools of `family`, sorted; errors when there are none.
fn usable_pools(pools: &[Pool], family: Family) -> Result<Vec<Pool>, IpamError> {
    let of_family: Vec<&Pool> = pools.iter().filter(|p| p.family() == family).collect();
    if of_family.is_empty() {
        return Err(IpamError::NoPool { family });
    }
    let mut enabled: Vec<Pool> = of_family
        .iter()
        .filter(|p| !p.disabled)
        .map(|p| (*p).clone())
        .collect();
    if enabled.is_empty() {
        return Err(IpamError::PoolsDisabled {
            family,
            pools: of_family
                .iter()
                .map(|p| p.cidr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    enabled.sort_by_key(|p| p.cidr);
    Ok(enabled)
}

impl Ipam {
    pub fn new(store: SharedDatastore, config: IpamConfig) -> Self {
        Ipam {
            store,
            config,
            handle_locks: KeyedLock::default(),
            affine: Mutex::new(HashMap::new()),
            blocks: Mutex::new(HashMap::new()),
            pool_cache: Mutex::new(None),
            stats: Stats::default(),
            pod_cidr_mode: false,
            node_pools: Mutex::new(HashMap::new()),
        }
    }

    /// `podCIDR` mode: a node's addresses come only from its own pod CIDRs (set with
    /// [`Ipam::set_pod_cidrs`], as the cluster assigned them), carved into blocks of at
    /// most 4096 addresses that only this node claims; the stored pools are not used and
    /// nothing is borrowed.
    pub fn pod_cidr_mode(mut self) -> Self {
        self.pod_cidr_mode = true;
        self.config.strict_affinity = true;
        self.config.max_blocks_per_node = None;
        self
    }

    pub fn is_pod_cidr_mode(&self) -> bool {
        self.pod_cidr_mode
    }

    /// The pod CIDRs of `node` (`podCIDR` mode): each becomes a pool of the node's own,
    /// cut into blocks as large as allowed (the whole CIDR when it has at most 4096
    /// addresses). Replaces what was set before.
    pub fn set_pod_cidrs(&self, node: &str, cidrs: &[IpNet]) -> Result<(), IpamError> {
        validate_node(node)?;
        let mut pools = Vec::new();
        for c in cidrs {
            let min = match c {
                IpNet::V4(_) => 20,
                IpNet::V6(_) => 116,
            };
            let spec = PoolSpec::new(c.to_string()).block_size(c.prefix_len().max(min));
            pools.push(Pool::from_spec(&spec)?);
        }
        pools.sort_by_key(|p| p.cidr);
        let mut map = self
            .node_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if map.get(node) != Some(&pools) {
            tracing::info!(%node, pod_cidrs = ?cidrs, "the node's pod CIDRs (ipam.mode podCIDR)");
            map.insert(node.to_string(), pools);
        }
        Ok(())
    }

    /// The pools `node` assigns from: its pod CIDRs in `podCIDR` mode, else the stored
    /// pools.
    pub async fn pools_of(&self, node: &str) -> Result<Vec<Pool>, IpamError> {
        if !self.pod_cidr_mode {
            let cached = self
                .pool_cache
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            return match cached {
                Some(pools) => Ok(pools),
                None => self.pools().await,
            };
        }
        let pools = self
            .node_pools
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node)
            .cloned()
            .unwrap_or_default();
        if pools.is_empty() {
            return Err(IpamError::NoPodCidr {
                node: node.to_string(),
            });
        }
        Ok(pools)
    }

    /// Keeps the pools assignments use ([`Ipam::pools_of`]) from a watch of the stored
    /// pools, so that an assignment does not list them each time (one API request less
    /// per CNI ADD on the Kubernetes datastore). Until the first list, and whenever the
    /// watch fails (then it starts over after a second), assignments list the pools
    /// themselves. The task ends at the first change after the `Ipam` is dropped.
    pub fn follow_pools(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let mut pools = Reflector::new(self.store.clone(), KIND_POOL, Selector::everything());
        tokio::spawn(async move {
            loop {
                let r = pools.next().await;
                let Some(ipam) = weak.upgrade() else {
                    return;
                };
                let fresh = match r {
                    Ok(()) => Ok(Self::pools_in(pools.items())),
                    Err(e) => Err(e.to_string()),
                };
                let failed = fresh.is_err();
                *ipam
                    .pool_cache
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = match fresh {
                    Ok(p) => Some(p),
                    Err(e) => {
                        // Assignments list the pools again (and report what is wrong).
                        tracing::debug!(error = %e, "watching the IPAM pools; assignments list them meanwhile");
                        None
                    }
                };
                drop(ipam);
                if failed {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        })
    }

    /// What this process's IPAM wrote since it started.
    pub fn counters(&self) -> IpamCounters {
        IpamCounters {
            block_writes: self.stats.block_writes.load(Ordering::Relaxed),
            conflicts_retried: self.stats.conflicts.load(Ordering::Relaxed),
            batched_assignments: self.stats.batched.load(Ordering::Relaxed),
            batches: self.stats.batches.load(Ordering::Relaxed),
            leaks_found: self.stats.leaks_found.load(Ordering::Relaxed),
            leaks_released: self.stats.leaks_released.load(Ordering::Relaxed),
            leak_suspects: self.stats.leak_suspects.load(Ordering::Relaxed),
        }
    }

    /// What a leak collection sweep found: `found` new suspects, `released` handles freed,
    /// `suspects` waiting now.
    pub(crate) fn count_leaks(&self, found: usize, released: usize, suspects: usize) {
        self.stats
            .leaks_found
            .fetch_add(found as u64, Ordering::Relaxed);
        self.stats
            .leaks_released
            .fetch_add(released as u64, Ordering::Relaxed);
        self.stats
            .leak_suspects
            .store(suspects as u64, Ordering::Relaxed);
    }

    fn count_write<T: Stored>(&self) {
        if T::KIND == KIND_BLOCK {
            self.stats.block_writes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn count_conflict(&self) {
        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    pub fn store(&self) -> &SharedDatastore {
        &self.store
    }

    // ---------------------------------------------------------------------------------
    // Pools.

    /// Makes the stored pools match `specs`: creates missing pools, updates the
    /// `disabled` flag and (while the pool has no block) the block size. Idempotent.
    /// Pools in the store that `specs` does not name are left alone (another node's
    /// config may name them; see [`Ipam::remove_pool`]). Nothing is written when a spec
    /// is invalid or two specs overlap.
    pub async fn ensure_pools(&self, specs: &[PoolSpec]) -> Result<(), IpamError> {
        let mut wanted: Vec<Pool> = Vec::new();
        for spec in specs {
            let pool = Pool::from_spec(spec)?;
            match wanted.iter().find(|w| overlaps(&w.cidr, &pool.cidr)) {
                Some(w) if w.cidr == pool.cidr && *w == pool => continue,
                Some(w) if w.cidr == pool.cidr => {
                    return Err(IpamError::DuplicatePool { cidr: pool.cidr })
                }
                Some(w) => {
                    return Err(IpamError::PoolOverlap {
                        cidr: pool.cidr,
                        other: w.cidr,
                    })
                }
                None => wanted.push(pool),
            }
        }
        for pool in &wanted {
            self.ensure_pool(pool).await?;
        }
        Ok(())
    }

    async fn ensure_pool(&self, pool: &Pool) -> Result<(), IpamError> {
        let name = pool.name();
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.list::<StoredPool>().await?;
            // Ours, when stored already, stays in effect against a pool that overlaps it
            // but was created after it (that one is ignored, see `pools_in`).
            let ours = stored
                .iter()
                .find(|(p, _)| p.pool.cidr == pool.cidr)
                .map(|(p, _)| (p.created_ms, p.pool.cidr));
            if let Some((other, _)) = stored.iter().find(|(p, _)| {
                p.pool.cidr != pool.cidr
                    && overlaps(&p.pool.cidr, &pool.cidr)
                    && ours.is_none_or(|o| (p.created_ms, p.pool.cidr) < o)
            }) {
                return Err(IpamError::PoolOverlap {
                    cidr: pool.cidr,
                    other: other.pool.cidr,
                });
            }
            match stored.iter().find(|(p, _)| p.pool.cidr == pool.cidr) {
                Some((current, _)) if current.pool == *pool => return Ok(()),
                Some((current, version)) => {
                    if current.pool.block_size != pool.block_size {
                        let blocks = self.blocks_in(&pool.cidr).await?;
                        if blocks > 0 {
                            return Err(IpamError::BlockSizeChange {
                                cidr: pool.cidr,
                                stored: current.pool.block_size,
                                requested: pool.block_size,
                                blocks,
                            });
                        }
                    }
                    let new = StoredPool {
                        pool: pool.clone(),
                        created_ms: current.created_ms,
                    };
                    if self.update(&name, &new, version).await?.is_some() {
                        tracing::info!(pool = %pool.cidr, block_size = pool.block_size, disabled = pool.disabled, nat_outgoing = pool.nat_outgoing, "IP pool updated");
                        return Ok(());
                    }
                }
                None => {
                    let new = StoredPool {
                        pool: pool.clone(),
                        created_ms: unix_ms(SystemTime::now()),
                    };
                    let Some(version) = self.create(&name, &new).await? else {
                        continue;
                    };
                    // Two agents may have created overlapping pools at the same time:
                    // the pool created first (then the lower CIDR) stays.
                    let after = self.list::<StoredPool>().await?;
                    if let Some((winner, _)) = after.iter().find(|(p, _)| {
                        p.pool.cidr != pool.cidr
                            && overlaps(&p.pool.cidr, &pool.cidr)
                            && (p.created_ms, p.pool.cidr) < (new.created_ms, pool.cidr)
                    }) {
                        self.delete::<Pool>(&name, Some(&version)).await?;
                        return Err(IpamError::PoolOverlap {
                            cidr: pool.cidr,
                            other: winner.pool.cidr,
                        });
                    }
                    tracing::info!(pool = %pool.cidr, block_size = pool.block_size, disabled = pool.disabled, nat_outgoing = pool.nat_outgoing, "IP pool created");
                    return Ok(());
                }
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_POOL,
            name,
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Turns outgoing NAT of a stored pool on or off (the agents' NAT tables follow through
    /// their watch). Returns false when there is no such pool. An agent that starts with a
    /// configuration naming the pool writes the configuration's value again.
    pub async fn set_nat_outgoing(&self, cidr: &str, on: bool) -> Result<bool, IpamError> {
        let cidr: IpNet = cidr.trim().parse().map_err(|_| IpamError::BadCidr {
            cidr: cidr.to_string(),
            reason: "it is not an address followed by a prefix length".to_string(),
        })?;
        for _ in 0..MAX_ATTEMPTS {
            let stored = self.list::<StoredPool>().await?;
            let Some((current, version)) = stored.iter().find(|(p, _)| p.pool.cidr == cidr) else {
                return Ok(false);
            };
            if current.pool.nat_outgoing == on {
                return Ok(true);
            }
            let mut new = current.clone();
            new.pool.nat_outgoing = on;
            if self
                .update(&new.pool.name(), &new, version)
                .await?
                .is_some()
            {
                tracing::info!(pool = %cidr, nat_outgoing = on, "IP pool updated");
                return Ok(true);
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_POOL,
            name: net_name(&cidr),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Removes a pool from the store; refused while blocks of it are claimed. Returns
    /// false when there was no such pool.
    pub async fn remove_pool(&self, cidr: &str) -> Result<bool, IpamError> {
        let pool = Pool::from_spec(&PoolSpec::new(cidr)).or_else(|e| match e {
            // The block size does not matter for removal.
            IpamError::BadBlockSize { cidr, .. } => Ok(Pool {
                cidr,
                block_size: 0,
                disabled: false,
                nat_outgoing: true,
            }),
            e => Err(e),
        })?;
        let blocks = self.blocks_in(&pool.cidr).await?;
        if blocks > 0 {
            return Err(IpamError::PoolInUse {
                cidr: pool.cidr,
                blocks,
            });
        }
        Ok(self
            .delete::<Pool>(&pool.name(), None)
            .await?
            .unwrap_or(false))
    }

    /// The stored pools in effect, sorted by CIDR: of two that overlap, the one created
    /// first (see [`Ipam::pools_in`]).
    pub async fn pools(&self) -> Result<Vec<Pool>, IpamError> {
        Ok(pools_in_effect(
            self.list::<StoredPool>()
                .await?
                .into_iter()
                .map(|(p, _)| p)
                .collect(),
        ))
    }

    /// The pools in effect among stored pool objects (a watched copy), sorted by CIDR. A
    /// pool object that does not decode or breaks the rules, and a pool that overlaps one
    /// created before it (made by hand, or by two agents at the same instant), are left
    /// out and logged once ([`crate::invalid`]): they are never used.
    pub fn pools_in<'a>(items: impl IntoIterator<Item = &'a Item>) -> Vec<Pool> {
        let mut stored = Vec::new();
        for item in items {
            match Self::decode::<StoredPool>(&item.object.name, item.object.value.clone()) {
                Ok(p) => stored.push(p),
                Err(e) => warn_unusable(KIND_POOL, &item.object.name, e),
            }
        }
        pools_in_effect(stored)
    }

    async fn blocks_in(&self, pool: &IpNet) -> Result<usize, IpamError> {
        Ok(self
            .list::<Block>()
            .await?
            .iter()
            .filter(|(b, _)| overlaps(&b.cidr, pool))
            .count())
    }

    // ---------------------------------------------------------------------------------
    // Assignment.

    /// Gives `handle` one address of each family in `families`, from a block affine to
    /// `node` (claiming a new block when they are full, within the per-node limit), or
    /// borrowed from another node's block when no block can be claimed and strict
    /// affinity is off.
    ///
    /// Idempotent: when the handle already holds an address of a family, that address is
    /// returned. When the handle did not exist and one family fails, the other family's
    /// new address is released before the error is returned.
    pub async fn assign(
        &self,
        node: &str,
        handle: &HandleId,
        attributes: &Attributes,
        families: Families,
    ) -> Result<Assignment, IpamError> {
        validate_node(node)?;
        handle.validate()?;
        if families.iter().next().is_none() {
            return Err(IpamError::NoFamily);
        }
        let key = handle.key();
        let _guard = self.handle_locks.lock(key.clone()).await;
        let existed = self.get::<Handle>(&handle_name(&key)).await?.is_some();
        let pools = self.pools_of(node).await?;
        let mut assignment = Assignment::default();
        for family in families.iter() {
            match self
                .assign_family(
                    node,
                    handle,
                    &key,
                    attributes,
                    family,
                    &pools,
                    &mut assignment.claimed_blocks,
                )
                .await
            {
                Ok((ip, held)) => {
                    assignment.already_held |= held;
                    set_family(&mut assignment, family, ip);
                }
                Err(e) => {
                    if !existed {
                        if let Err(rollback) = self.release_locked(&key).await {
                            tracing::warn!(handle = %key, error = %rollback, "could not undo a partial assignment; CNI DEL or GC will free it");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(assignment)
    }

    /// [`Ipam::assign`] for many handles of `node` at once (group commit): the addresses
    /// a block gives in this call are written to it in one compare-and-swap, so a burst of
    /// pods costs one block write per block touched, not one per pod. Each handle's intent
    /// is still written to its own handle object first (the index rule of
    /// [`Ipam::assign`] holds). On a conflict the batch reads the block again and retries
    /// (bounded, with jitter); when the batch cannot go on (a family exhausted, no usable
    /// pool, a store error) the handles left are assigned one by one, so each gets its own
    /// answer. A handle named twice is assigned once per request, one after the other.
    /// Results are in the order of `requests`.
    pub async fn assign_many(
        &self,
        node: &str,
        requests: &[AssignRequest],
    ) -> Vec<Result<Assignment, IpamError>> {
        let mut results: Vec<Option<Result<Assignment, IpamError>>> =
            requests.iter().map(|_| None).collect();
        // The batch: valid requests, each handle once; the rest go one by one afterwards.
        let mut seen: HashSet<String> = HashSet::new();
        let mut batch: Vec<usize> = Vec::new();
        let mut later: Vec<usize> = Vec::new();
        let node_ok = validate_node(node).is_ok();
        for (i, r) in requests.iter().enumerate() {
            if !node_ok || r.handle.validate().is_err() || r.families.iter().next().is_none() {
                later.push(i);
            } else if seen.insert(r.handle.key()) {
                batch.push(i);
            } else {
                later.push(i);
            }
        }
        if !batch.is_empty() {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
            self.stats
                .batched
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Lock every handle of the batch, in key order (a single assign locks one).
            let mut keys: Vec<String> = batch.iter().map(|&i| requests[i].handle.key()).collect();
            keys.sort();
            let mut guards = Vec::with_capacity(keys.len());
            for k in keys {
                guards.push(self.handle_locks.lock(k).await);
            }
            match self.assign_batch_locked(node, requests, &batch).await {
                Ok(done) => {
                    for (i, r) in done {
                        results[i] = Some(r);
                    }
                }
                Err(()) => later.extend(batch.iter().copied()),
            }
            drop(guards);
        }
        later.sort_unstable();
        for i in later {
            if results[i].is_none() {
                let r = &requests[i];
                results[i] = Some(
                    self.assign(node, &r.handle, &r.attributes, r.families)
                        .await,
                );
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(IpamError::NoFamily)))
            .collect()
    }

    /// The batch of [`Ipam::assign_many`], its handles locked. `Err(())` before anything
    /// was written: assign them one by one. Otherwise one result per index; handles whose
    /// batch could not finish are assigned one by one here.
    async fn assign_batch_locked(
        &self,
        node: &str,
        requests: &[AssignRequest],
        batch: &[usize],
    ) -> Result<Vec<(usize, Result<Assignment, IpamError>)>, ()> {
        let pools: Vec<Pool> = match self.pools_of(node).await {
            Ok(p) => p,
            Err(e) => {
                if e.transient_copy().is_none() {
                    return Err(());
                }
                // The store is unavailable: every request gets that answer now.
                return Ok(batch
                    .iter()
                    .map(|&i| (i, Err(e.transient_copy().unwrap_or(IpamError::NoFamily))))
                    .collect());
            }
        };
        // Set when the store became unavailable: nothing more is tried.
        let mut down: Option<IpamError> = None;
        let mut items = Vec::with_capacity(batch.len());
        // The handles are not read first: a CNI ADD is almost always a new pod, so each
        // is created with its first address, and read only when it exists after all.
        for &i in batch {
            items.push(BatchItem {
                i,
                key: requests[i].handle.key(),
                existed: false,
                unchecked: true,
                current: None,
                assignment: Assignment::default(),
                failed: None,
            });
        }

        for family in [Family::Ipv4, Family::Ipv6] {
            // Handles that want this family and do not hold an address of it yet.
            let mut pending: Vec<usize> = Vec::new();
            for (n, item) in items.iter_mut().enumerate() {
                let r = &requests[item.i];
                if item.failed.is_some() || !r.families.iter().any(|f| f == family) {
                    continue;
                }
                match self.held_of_family(node, item, family).await {
                    Ok(Some(ip)) => {
                        item.assignment.already_held = true;
                        set_family(&mut item.assignment, family, ip);
                    }
                    Ok(None) => pending.push(n),
                    Err(e) => item.failed = Some(e),
                }
            }
            if pending.is_empty() {
                continue;
            }
            if let Some(e) = &down {
                for n in pending {
                    items[n].failed = e.transient_copy();
                }
                continue;
            }
            let usable = match usable_pools(&pools, family) {
                Ok(u) => u,
                Err(_) => {
                    // Each gets its own error from the one-by-one path below.
                    for n in pending {
                        self.finish_alone(node, requests, &mut items[n], family, &pools)
                            .await;
                    }
                    continue;
                }
            };
            let mut claimed: Vec<IpNet> = Vec::new();
            let mut attempt = 0u32;
            while !pending.is_empty() && attempt < MAX_ATTEMPTS {
                let candidate = match self
                    .find_candidate(node, family, &usable, &mut claimed)
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        if e.transient_copy().is_some() {
                            for n in pending.drain(..) {
                                items[n].failed = e.transient_copy();
                            }
                            down = Some(e);
                        }
                        break;
                    }
                };
                let mut block = candidate.block;
                let block_name = block.name();
                // Free ordinals of the block, from the candidate's up.
                let free: Vec<u32> = (candidate.ordinal..block.capacity())
                    .filter(|o| block.allocation(*o).is_none())
                    .take(pending.len())
                    .collect();
                // 1. The intents, in the handle objects. They are independent objects:
                // written concurrently (a few at a time), every one durable before the
                // block write below gives any of them its address.
                let mut intents: Vec<(usize, u32, IpAddr, Handle)> = Vec::new();
                for (&n, &ordinal) in pending.iter().zip(free.iter()) {
                    let Some(ip) = block.ip_at(ordinal) else {
                        continue;
                    };
                    let item = &items[n];
                    let r = &requests[item.i];
                    let mut h = item.current.as_ref().map_or_else(
                        || Handle::new(&r.handle, node, &r.attributes),
                        |(h, _)| h.clone(),
                    );
                    h.attributes = r.attributes.clone();
                    h.addresses.retain(|a| Family::of_addr(&a.ip) != family);
                    h.addresses.push(HandleAddr {
                        ip,
                        block: block.cidr,
                    });
                    h.addresses.sort();
                    intents.push((n, ordinal, ip, h));
                }
                let writes: Vec<Result<Option<Version>, IpamError>> = {
                    let mut futs = Vec::with_capacity(intents.len());
                    for (n, _, _, h) in &intents {
                        let item = &items[*n];
                        let version = item.current.as_ref().map(|(_, v)| v);
                        futs.push(self.write_handle(&item.key, h, version));
                    }
                    futures::stream::iter(futs)
                        .buffered(HANDLE_WRITES_AT_ONCE)
                        .collect()
                        .await
                };
                let mut placed: Vec<(usize, u32, IpAddr)> = Vec::new();
                for ((n, ordinal, ip, h), written) in intents.into_iter().zip(writes) {
                    let item = &mut items[n];
                    match written {
                        Ok(Some(version)) => {
                            item.current = Some((h, version));
                            item.unchecked = false;
                            placed.push((n, ordinal, ip));
                        }
                        // The handle exists after all, or someone wrote it meanwhile:
                        // read it again (it may hold an address of this family already),
                        // next round.
                        Ok(None) => self.reread_item(node, item, family).await,
                        Err(e) => item.failed = Some(e),
                    }
                }
                // 2. The allocations, in the block: one write for all of them.
                for (n, ordinal, _) in &placed {
                    block.insert(Allocation {
                        ordinal: *ordinal,
                        handle: items[*n].key.clone(),
                        node: candidate.borrowed.then(|| node.to_string()),
                    });
                }
                let written = if placed.is_empty() {
                    Ok(None)
                } else {
                    self.update(&block_name, &block, &candidate.version).await
                };
                match written {
                    Ok(Some(version)) => {
                        self.note_block(block.cidr, Some((block.clone(), version)));
                        if candidate.borrowed {
                            tracing::info!(block = %block.cidr, owner = %block.affinity, %node, count = placed.len(), "borrowed addresses from another node's block");
                        }
                        let new_block = claimed.contains(&block.cidr);
                        for (n, _, ip) in &placed {
                            let item = &mut items[*n];
                            set_family(
                                &mut item.assignment,
                                family,
                                AssignedIp {
                                    ip: *ip,
                                    block: block.cidr,
                                    borrowed: candidate.borrowed,
                                    new_block,
                                },
                            );
                            if new_block && !item.assignment.claimed_blocks.contains(&block.cidr) {
                                item.assignment.claimed_blocks.push(block.cidr);
                            }
                        }
                        let done: HashSet<usize> = placed.iter().map(|(n, _, _)| *n).collect();
                        pending.retain(|n| {
                            !done.contains(n)
                                && items[*n].failed.is_none()
                                && !has_family(&items[*n].assignment, family)
                        });
                        attempt = 0;
                    }
                    Ok(None) => {
                        if !placed.is_empty() {
                            // Lost the compare-and-swap: read the block next time.
                            self.note_block(block.cidr, None);
                        }
                        pending.retain(|n| {
                            items[*n].failed.is_none() && !has_family(&items[*n].assignment, family)
                        });
                        attempt += 1;
                        jitter(attempt).await;
                    }
                    Err(e) => {
                        if e.transient_copy().is_some() {
                            for n in pending.drain(..) {
                                items[n].failed = e.transient_copy();
                            }
                            down = Some(e);
                        }
                        // Otherwise the one-by-one path below gives each handle its
                        // own error.
                        break;
                    }
                }
            }
            // What the batch could not place: one by one, for an exact answer each
            // (exhausted, block limit, borrowing, or conflicts past the limit).
            for n in pending {
                self.finish_alone(node, requests, &mut items[n], family, &pools)
                    .await;
            }
        }

        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item.failed {
                Some(e) => {
                    if down.is_some() {
                        tracing::warn!(handle = %item.key, "the datastore is unavailable: what this assignment wrote stays until CNI DEL or GC frees it");
                    } else if !item.existed {
                        if let Err(rollback) = self.release_locked(&item.key).await {
                            tracing::warn!(handle = %item.key, error = %rollback, "could not undo a partial assignment; CNI DEL or GC will free it");
                        }
                    }
                    out.push((item.i, Err(e)));
                }
                None => out.push((item.i, Ok(item.assignment))),
            }
        }
        Ok(out)
    }

    /// Creates the handle object of `key` (no `version`: it is new) or updates it.
    async fn write_handle(
        &self,
        key: &str,
        h: &Handle,
        version: Option<&Version>,
    ) -> Result<Option<Version>, IpamError> {
        let name = handle_name(key);
        match version {
            None => self.create(&name, h).await,
            Some(v) => self.update(&name, h, v).await,
        }
    }

    /// The address of `family` the handle already holds (confirmed by its block).
    async fn held_of_family(
        &self,
        node: &str,
        item: &BatchItem,
        family: Family,
    ) -> Result<Option<AssignedIp>, IpamError> {
        let Some((h, _)) = &item.current else {
            return Ok(None);
        };
        for a in h
            .addresses
            .iter()
            .filter(|a| Family::of_addr(&a.ip) == family)
        {
            if let Some((b, _)) = self.get::<Block>(&net_name(&a.block)).await? {
                let held = b
                    .ordinal_of(&a.ip)
                    .and_then(|o| b.allocation(o))
                    .is_some_and(|al| al.handle == item.key);
                if held {
                    return Ok(Some(AssignedIp {
                        ip: a.ip,
                        block: b.cidr,
                        borrowed: b.affinity != node,
                        new_block: false,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// Reads the handle of a batch item again (this batch assumed it absent and it exists,
    /// or it changed meanwhile): its node is checked, and an address of `family` it holds
    /// already is the answer for that family.
    async fn reread_item(&self, node: &str, item: &mut BatchItem, family: Family) {
        match self.get::<Handle>(&handle_name(&item.key)).await {
            Ok(c) => {
                if item.unchecked {
                    item.unchecked = false;
                    item.existed = c.is_some();
                }
                if let Some((h, _)) = &c {
                    if h.node != node {
                        item.failed = Some(IpamError::HandleOnOtherNode {
                            handle: item.key.clone(),
                            node: node.to_string(),
                            owner: h.node.clone(),
                        });
                    }
                }
                item.current = c;
            }
            Err(e) => item.failed = Some(e),
        }
        if item.failed.is_none() {
            match self.held_of_family(node, item, family).await {
                Ok(Some(ip)) => {
                    item.assignment.already_held = true;
                    set_family(&mut item.assignment, family, ip);
                }
                Ok(None) => {}
                Err(e) => item.failed = Some(e),
            }
        }
    }

    /// One handle of a batch that the batch could not place: assigned alone (its lock is
    /// held), with the exact answer [`Ipam::assign`] would give.
    async fn finish_alone(
        &self,
        node: &str,
        requests: &[AssignRequest],
        item: &mut BatchItem,
        family: Family,
        pools: &[Pool],
    ) {
        if item.unchecked {
            // Whether it existed decides what a failure undoes.
            self.reread_item(node, item, family).await;
            if item.failed.is_some() || has_family(&item.assignment, family) {
                return;
            }
        }
        let r = &requests[item.i];
        let mut claimed = std::mem::take(&mut item.assignment.claimed_blocks);
        match self
            .assign_family(
                node,
                &r.handle,
                &item.key,
                &r.attributes,
                family,
                pools,
                &mut claimed,
            )
            .await
        {
            Ok((ip, held)) => {
                item.assignment.already_held |= held;
                set_family(&mut item.assignment, family, ip);
            }
            Err(e) => item.failed = Some(e),
        }
        item.assignment.claimed_blocks = claimed;
        match self.get::<Handle>(&handle_name(&item.key)).await {
            Ok(c) => item.current = c,
            Err(e) => {
                item.failed.get_or_insert(e);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn assign_family(
        &self,
        node: &str,
        handle: &HandleId,
        key: &str,
        attributes: &Attributes,
        family: Family,
        pools: &[Pool],
        claimed: &mut Vec<IpNet>,
    ) -> Result<(AssignedIp, bool), IpamError> {
        for attempt in 0..MAX_ATTEMPTS {
            jitter(attempt).await;
            let current = self.get::<Handle>(&handle_name(key)).await?;
            if let Some((h, _)) = &current {
                if h.node != node {
                    return Err(IpamError::HandleOnOtherNode {
                        handle: key.to_string(),
                        node: node.to_string(),
                        owner: h.node.clone(),
                    });
                }
                for a in h
                    .addresses
                    .iter()
                    .filter(|a| Family::of_addr(&a.ip) == family)
                {
                    if let Some((b, _)) = self.get::<Block>(&net_name(&a.block)).await? {
                        let held = b
                            .ordinal_of(&a.ip)
                            .and_then(|o| b.allocation(o))
                            .is_some_and(|al| al.handle == key);
                        if held {
                            return Ok((
                                AssignedIp {
                                    ip: a.ip,
                                    block: b.cidr,
                                    borrowed: b.affinity != node,
                                    new_block: claimed.contains(&b.cidr),
                                },
                                true,
                            ));
                        }
                    }
                }
            }

            let usable = usable_pools(pools, family)?;
            let candidate = self.find_candidate(node, family, &usable, claimed).await?;
            let block_name = candidate.block.name();
            let ip =
                candidate
                    .block
                    .ip_at(candidate.ordinal)
                    .ok_or_else(|| IpamError::Corrupt {
                        kind: KIND_BLOCK,
                        name: block_name.clone(),
                        reason: format!("ordinal {} is outside the block", candidate.ordinal),
                    })?;

            // 1. The intent, in the handle (the index may list more than the blocks hold).
            let mut h = current
                .as_ref()
                .map_or_else(|| Handle::new(handle, node, attributes), |(h, _)| h.clone());
            h.attributes = attributes.clone();
            h.addresses.retain(|a| Family::of_addr(&a.ip) != family);
            h.addresses.push(HandleAddr {
                ip,
                block: candidate.block.cidr,
            });
            h.addresses.sort();
            let written = match &current {
                None => self.create(&handle_name(key), &h).await?,
                Some((_, version)) => self.update(&handle_name(key), &h, version).await?,
            };
            if written.is_none() {
                continue;
            }

            // 2. The allocation, in the block (the source of truth).
            let mut block = candidate.block;
            let inserted = block.insert(Allocation {
                ordinal: candidate.ordinal,
                handle: key.to_string(),
                node: candidate.borrowed.then(|| node.to_string()),
            });
            let written = if inserted {
                self.update(&block_name, &block, &candidate.version).await?
            } else {
                None
            };
            let done = written.is_some();
            self.note_block(block.cidr, written.map(|v| (block.clone(), v)));
            if done {
                if candidate.borrowed {
                    tracing::info!(%ip, block = %block.cidr, owner = %block.affinity, %node, "borrowed an address from another node's block");
                }
                return Ok((
                    AssignedIp {
                        ip,
                        block: block.cidr,
                        borrowed: candidate.borrowed,
                        new_block: claimed.contains(&block.cidr),
                    },
                    false,
                ));
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_HANDLE,
            name: key.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// A free address for `node`: in its blocks, else in a newly claimed block, else
    /// borrowed.
    async fn find_candidate(
        &self,
        node: &str,
        family: Family,
        usable: &[Pool],
        claimed: &mut Vec<IpNet>,
    ) -> Result<Candidate, IpamError> {
        // Fast path: the blocks this process knows to be the node's.
        if let Some(cached) = self.cached_affine(node, family) {
            for cidr in cached {
                // The block as this process last saw it, else read. One it saw full is
                // passed over unread: if no block here has room, the slow path below
                // lists every block afresh before claiming or borrowing.
                let current = match self.known_block(&cidr) {
                    Some((b, _)) if b.affinity == node && b.first_free().is_none() => continue,
                    Some(k) if k.0.affinity == node => Some(k),
                    _ => self.get_block(&cidr).await?,
                };
                match current {
                    Some((b, version)) if b.affinity == node => {
                        if in_pools(&b.cidr, usable) {
                            if let Some(ordinal) = b.first_free() {
                                return Ok(Candidate {
                                    block: b,
                                    version,
                                    ordinal,
                                    borrowed: false,
                                });
                            }
                        }
                    }
                    _ => self.forget_affine(node, &cidr),
                }
            }
        }

        // Slow path: every block; again whenever a claim loses a race.
        'relist: for attempt in 0..MAX_ATTEMPTS {
            jitter(attempt).await;
            let (mut blocks, unusable) = self.list_usable::<Block>().await?;
            blocks.sort_by_key(|(b, _)| b.cidr);
            self.refresh_affine(node, &blocks);
            for (b, version) in blocks.iter().filter(|(b, _)| b.affinity == node) {
                self.note_block(b.cidr, Some((b.clone(), version.clone())));
            }
            let mut affine = 0usize;
            for (b, version) in &blocks {
                if b.affinity != node || b.family() != family {
                    continue;
                }
                affine += 1;
                if in_pools(&b.cidr, usable) {
                    if let Some(ordinal) = b.first_free() {
                        return Ok(Candidate {
                            block: b.clone(),
                            version: version.clone(),
                            ordinal,
                            borrowed: false,
                        });
                    }
                }
            }

            let limit = self.config.max_blocks_per_node;
            let limit_hit = limit.is_some_and(|l| affine >= l as usize);
            if !limit_hit {
                // A block object that cannot be used still holds its range (by its cidr and
                // by its name): a claim keeps clear of it.
                let mut taken: Vec<IpNet> = blocks.iter().map(|(b, _)| b.cidr).collect();
                taken.extend(unusable.iter().flat_map(claimed_range));
                for pool in usable {
                    if let Some(cidr) = first_free_block(pool, &taken) {
                        let block = Block::new(cidr, node);
                        match self.create(&block.name(), &block).await? {
                            Some(version) => {
                                tracing::info!(block = %cidr, %node, "claimed a block");
                                claimed.push(cidr);
                                self.remember_affine(node, cidr);
                                self.note_block(cidr, Some((block.clone(), version.clone())));
                                return Ok(Candidate {
                                    block,
                                    version,
                                    ordinal: 0,
                                    borrowed: false,
                                });
                            }
                            // Someone claimed it first (maybe for this node): look again.
                            None => continue 'relist,
                        }
                    }
                }
            }

            if !self.config.strict_affinity {
                for (b, version) in &blocks {
                    if b.affinity == node || !in_pools(&b.cidr, usable) {
                        continue;
                    }
                    if let Some(ordinal) = b.first_free() {
                        return Ok(Candidate {
                            block: b.clone(),
                            version: version.clone(),
                            ordinal,
                            borrowed: true,
                        });
                    }
                }
            }

            return Err(match limit {
                Some(limit) if limit_hit => IpamError::BlockLimit {
                    family,
                    node: node.to_string(),
                    limit,
                    strict_affinity: self.config.strict_affinity,
                },
                _ => IpamError::Exhausted {
                    family,
                    node: node.to_string(),
                    strict_affinity: self.config.strict_affinity,
                },
            });
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_BLOCK,
            name: format!("(a block for node {node})"),
            attempts: MAX_ATTEMPTS,
        })
    }

    // ---------------------------------------------------------------------------------
    // Release.

    /// Frees every address `handle` holds and forgets the handle. Idempotent: releasing
    /// an unknown handle returns an empty list. Only addresses the blocks record as held
    /// by this handle are freed.
    pub async fn release(&self, handle: &HandleId) -> Result<Vec<IpAddr>, IpamError> {
        Ok(self.release_reporting(handle).await?.addresses)
    }

    /// [`Ipam::release`], also telling whether a freed address was borrowed from another
    /// node's block (what the node announces changes then; an address freed in one of
    /// its own blocks changes nothing it announces).
    pub async fn release_reporting(&self, handle: &HandleId) -> Result<Released, IpamError> {
        handle.validate()?;
        let key = handle.key();
        let _guard = self.handle_locks.lock(key.clone()).await;
        self.release_locked(&key).await
    }

    /// The addresses `handle` holds (per the blocks), sorted; empty when none.
    pub async fn addresses(&self, handle: &HandleId) -> Result<Vec<IpAddr>, IpamError> {
        handle.validate()?;
        let key = handle.key();
        let Some((h, _)) = self.get::<Handle>(&handle_name(&key)).await? else {
            return Ok(Vec::new());
        };
        let mut held = Vec::new();
        for a in &h.addresses {
            if let Some((b, _)) = self.get::<Block>(&net_name(&a.block)).await? {
                if b.ordinal_of(&a.ip)
                    .and_then(|o| b.allocation(o))
                    .is_some_and(|al| al.handle == key)
                {
                    held.push(a.ip);
                }
            }
        }
        held.sort();
        Ok(held)
    }

    /// Release with the handle's lock held: blocks first, then the handle object, so the
    /// index never lists less than the blocks hold.
    async fn release_locked(&self, key: &str) -> Result<Released, IpamError> {
        let mut freed = Vec::new();
        let mut borrowed = false;
        for _ in 0..MAX_ATTEMPTS {
            let done = match self.get::<Handle>(&handle_name(key)).await? {
                None => true,
                Some((h, version)) => {
                    for a in &h.addresses {
                        if let Some(b) = self.free_address(&a.block, &a.ip, key).await? {
                            freed.push(a.ip);
                            borrowed |= b;
                        }
                    }
                    self.delete::<Handle>(&handle_name(key), Some(&version))
                        .await?
                        .is_some()
                }
            };
            if done {
                freed.sort();
                freed.dedup();
                return Ok(Released {
                    addresses: freed,
                    borrowed,
                });
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_HANDLE,
            name: key.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Removes the allocation of `ip` from its block if `key` holds it: `Some(borrowed)`
    /// when it did (borrowed: the allocation was another node's pod's, in this block).
    async fn free_address(
        &self,
        block: &IpNet,
        ip: &IpAddr,
        key: &str,
    ) -> Result<Option<bool>, IpamError> {
        let name = net_name(block);
        // The block as last seen, if it shows the address held by `key` (anything else
        // is read again before concluding there is nothing to free).
        let mut known = self.known_block(block).filter(|(b, _)| {
            b.ordinal_of(ip)
                .and_then(|o| b.allocation(o))
                .is_some_and(|al| al.handle == key)
        });
        for attempt in 0..MAX_ATTEMPTS {
            jitter(attempt).await;
            let current = match known.take() {
                Some(k) => Some(k),
                None => self.get_block(block).await?,
            };
            let Some((mut b, version)) = current else {
                return Ok(None);
            };
            let Some(ordinal) = b.ordinal_of(ip) else {
                return Ok(None);
            };
            let borrowed = b.allocation(ordinal).is_some_and(|a| a.node.is_some());
            if !b.remove_if_held(ordinal, key) {
                return Ok(None);
            }
            match self.update(&name, &b, &version).await? {
                Some(v) => {
                    self.note_block(*block, Some((b, v)));
                    return Ok(Some(borrowed));
                }
                None => self.note_block(*block, None),
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_BLOCK,
            name,
            attempts: MAX_ATTEMPTS,
        })
    }

    // ---------------------------------------------------------------------------------
    // Garbage collection.

    /// CNI GC for `node`: frees every address held by a pod of `node` (in its own blocks
    /// or borrowed) whose handle is not in `valid`, and deletes the node's handle objects
    /// that are not valid. Repairs the index of valid handles from the blocks (adds what
    /// the blocks hold, drops what they do not, recreates a missing handle object).
    /// Returns the handles it freed, sorted.
    ///
    /// The caller must not run it concurrently with an assignment of a handle outside
    /// `valid` (the runtime lists attachments before calling GC; an ADD finished after
    /// that would be freed).
    pub async fn gc(
        &self,
        node: &str,
        valid: &HashSet<HandleId>,
    ) -> Result<Vec<HandleId>, IpamError> {
        validate_node(node)?;
        let valid: HashSet<String> = valid.iter().map(HandleId::key).collect();
        let mut freed: BTreeSet<String> = BTreeSet::new();

        // What the blocks say the node's pods hold.
        let blocks = self.list::<Block>().await?;
        let mut held: BTreeMap<String, BTreeSet<HandleAddr>> = BTreeMap::new();
        let mut stale: BTreeMap<String, Vec<HandleAddr>> = BTreeMap::new();
        for (b, _) in &blocks {
            for a in &b.allocations {
                if b.holder(a) != node {
                    continue;
                }
                let Some(ip) = b.ip_at(a.ordinal) else {
                    continue;
                };
                let addr = HandleAddr { ip, block: b.cidr };
                if valid.contains(&a.handle) {
                    held.entry(a.handle.clone()).or_default().insert(addr);
                } else {
                    stale.entry(a.handle.clone()).or_default().push(addr);
                }
            }
        }

        // Free what invalid handles hold in blocks (found even without a handle object).
        for (key, addrs) in &stale {
            let _guard = self.handle_locks.lock(key.clone()).await;
            for a in addrs {
                if self.free_address(&a.block, &a.ip, key).await?.is_some() {
                    tracing::info!(handle = %key, ip = %a.ip, "GC freed an address");
                }
            }
            freed.insert(key.clone());
        }

        // The node's handle objects.
        let handles = self.list::<Handle>().await?;
        let mut indexed: HashSet<String> = HashSet::new();
        for (h, _) in handles.iter().filter(|(h, _)| h.node == node) {
            let key = h.id().key();
            indexed.insert(key.clone());
            if !valid.contains(&key) {
                let _guard = self.handle_locks.lock(key.clone()).await;
                self.release_locked(&key).await?;
                freed.insert(key);
            } else {
                let listed: BTreeSet<HandleAddr> = h.addresses.iter().cloned().collect();
                let empty = BTreeSet::new();
                let actual = held.get(&key).unwrap_or(&empty);
                if listed != *actual {
                    self.repair_index(&key, node, listed.union(actual).cloned().collect())
                        .await?;
                }
            }
        }
        // Valid handles the blocks know but no handle object lists.
        for (key, addrs) in &held {
            if !indexed.contains(key) {
                self.repair_index(key, node, addrs.iter().cloned().collect())
                    .await?;
            }
        }

        Ok(freed.iter().filter_map(|k| HandleId::from_key(k)).collect())
    }

    /// Rewrites the index of a valid handle as exactly what the blocks hold of
    /// `candidates` (read again under the handle's lock).
    async fn repair_index(
        &self,
        key: &str,
        node: &str,
        candidates: Vec<HandleAddr>,
    ) -> Result<(), IpamError> {
        let _guard = self.handle_locks.lock(key.to_string()).await;
        let mut actual = Vec::new();
        for a in candidates {
            if let Some((b, _)) = self.get::<Block>(&net_name(&a.block)).await? {
                if b.ordinal_of(&a.ip)
                    .and_then(|o| b.allocation(o))
                    .is_some_and(|al| al.handle == key)
                {
                    actual.push(a);
                }
            }
        }
        actual.sort();
        actual.dedup();
        let Some(id) = HandleId::from_key(key) else {
            return Ok(());
        };
        match self.get::<Handle>(&handle_name(key)).await? {
            Some((mut h, version)) => {
                // Keep any address it lists that the blocks hold, even outside `candidates`.
                for a in &h.addresses {
                    if !actual.contains(a) && self.holds(key, a).await? {
                        actual.push(a.clone());
                    }
                }
                actual.sort();
                actual.dedup();
                if h.addresses != actual {
                    h.addresses = actual;
                    tracing::info!(handle = %key, "GC repaired the handle index");
                    self.update(&handle_name(key), &h, &version).await?;
                }
            }
            None if !actual.is_empty() => {
                let mut h = Handle::new(&id, node, &Attributes::default());
                h.addresses = actual;
                tracing::info!(handle = %key, "GC recreated a missing handle object");
                self.create(&handle_name(key), &h).await?;
            }
            None => {}
        }
        Ok(())
    }

    async fn holds(&self, key: &str, a: &HandleAddr) -> Result<bool, IpamError> {
        Ok(self
            .get::<Block>(&net_name(&a.block))
            .await?
            .is_some_and(|(b, _)| {
                b.ordinal_of(&a.ip)
                    .and_then(|o| b.allocation(o))
                    .is_some_and(|al| al.handle == key)
            }))
    }

    // ---------------------------------------------------------------------------------
    // Blocks.

    /// Gives back the blocks of `node` that have been empty for the grace period. An
    /// empty block is stamped with `now` the first time a sweep sees it; a later sweep
    /// at or after stamp + grace deletes it (compare-and-swap on the version read, so a
    /// block that got an address in between stays). Returns the released blocks: the
    /// agent withdraws their routes.
    pub async fn release_empty_blocks(
        &self,
        node: &str,
        now: SystemTime,
    ) -> Result<Vec<IpNet>, IpamError> {
        validate_node(node)?;
        let now_ms = unix_ms(now);
        let grace_ms = u64::try_from(self.config.empty_block_grace.as_millis()).unwrap_or(u64::MAX);
        let mut released = Vec::new();
        let mut blocks = self.list_usable::<Block>().await?.0;
        blocks.sort_by_key(|(b, _)| b.cidr);
        for (mut b, version) in blocks {
            if b.affinity != node || !b.allocations.is_empty() {
                continue;
            }
            let name = b.name();
            match b.empty_since_ms {
                None => {
                    b.empty_since_ms = Some(now_ms);
                    let written = self.update(&name, &b, &version).await?;
                    self.note_block(b.cidr, written.map(|v| (b.clone(), v)));
                }
                Some(since) if now_ms.saturating_sub(since) >= grace_ms => {
                    if self.delete::<Block>(&name, Some(&version)).await? == Some(true) {
                        tracing::info!(block = %b.cidr, %node, "released an empty block");
                        self.forget_affine(node, &b.cidr);
                        self.note_block(b.cidr, None);
                        released.push(b.cidr);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(released)
    }

    /// The handles of `node`'s pods, with their attributes, sorted.
    pub async fn node_handles(&self, node: &str) -> Result<Vec<(HandleId, Attributes)>, IpamError> {
        let mut out: Vec<(HandleId, Attributes)> = self
            .list_usable::<Handle>()
            .await?
            .0
            .into_iter()
            .filter(|(h, _)| h.node == node)
            .map(|(h, _)| (h.id(), h.attributes))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every node IPAM knows of: block affinities, holders of addresses and the nodes
    /// of handle objects. A node in this set that is no longer a cluster member is one
    /// to [`Ipam::release_node`].
    pub async fn nodes_in_use(&self) -> Result<BTreeSet<String>, IpamError> {
        let mut nodes = BTreeSet::new();
        for (b, _) in self.list_usable::<Block>().await?.0 {
            for a in &b.allocations {
                nodes.insert(b.holder(a).to_string());
            }
            nodes.insert(b.affinity);
        }
        for (h, _) in self.list_usable::<Handle>().await?.0 {
            nodes.insert(h.node);
        }
        Ok(nodes)
    }

    /// Releases everything of a node that left the cluster: the addresses its pods held
    /// (in its blocks and borrowed from others), its handle objects, and its blocks. A
    /// block of the node that still gives addresses to other nodes' pods is not deleted:
    /// it goes to the node holding its lowest address, which announces it from then on.
    /// Idempotent, and safe when several agents run it at once (every write is a
    /// compare-and-swap on what was read; a lost race reads again).
    pub async fn release_node(&self, node: &str) -> Result<NodeRelease, IpamError> {
        validate_node(node)?;
        let mut out = NodeRelease::default();
        let mut blocks = self.list_usable::<Block>().await?.0;
        blocks.sort_by_key(|(b, _)| b.cidr);
        for (b, _) in blocks {
            if b.affinity != node && !b.allocations.iter().any(|a| b.holder(a) == node) {
                continue;
            }
            let name = b.name();
            for attempt in 0..MAX_ATTEMPTS {
                jitter(attempt).await;
                let Some((mut b, version)) = self.get::<Block>(&name).await? else {
                    break;
                };
                let before = b.allocations.len();
                let affinity = b.affinity.clone();
                b.allocations
                    .retain(|a| a.node.as_deref().unwrap_or(&affinity) != node);
                let freed = before - b.allocations.len();
                let done = if b.affinity == node {
                    match b.allocations.first().map(|a| b.holder(a).to_string()) {
                        None => self.delete::<Block>(&name, Some(&version)).await?.map(|_| {
                            out.blocks_deleted.push(b.cidr);
                        }),
                        Some(heir) => {
                            b.affinity = heir.clone();
                            for a in &mut b.allocations {
                                if a.node.as_deref() == Some(heir.as_str()) {
                                    a.node = None;
                                }
                            }
                            self.update(&name, &b, &version).await?.map(|_| {
                                tracing::info!(block = %b.cidr, from = %node, to = %heir, "a removed node's block still holds other nodes' pods: it moves to one of them");
                                out.blocks_moved.push((b.cidr, heir));
                            })
                        }
                    }
                } else if freed > 0 {
                    self.update(&name, &b, &version).await?.map(|_| ())
                } else {
                    Some(())
                };
                if done.is_some() {
                    out.addresses += freed;
                    break;
                }
            }
        }
        self.forget_node_affine(node);
        for (h, version) in self.list_usable::<Handle>().await?.0 {
            if h.node != node {
                continue;
            }
            let key = h.id().key();
            let _guard = self.handle_locks.lock(key.clone()).await;
            if self
                .delete::<Handle>(&handle_name(&key), Some(&version))
                .await?
                == Some(true)
            {
                out.handles += 1;
            }
        }
        if out != NodeRelease::default() {
            tracing::info!(%node, addresses = out.addresses, handles = out.handles, blocks_deleted = ?out.blocks_deleted, blocks_moved = ?out.blocks_moved, "released the IPAM objects of a removed node");
        }
        Ok(out)
    }

    /// The blocks affine to `node`, sorted: announce them over BGP, with a blackhole
    /// route each.
    pub async fn node_blocks(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let mut blocks = self.list_usable::<Block>().await?.0;
        blocks.sort_by_key(|(b, _)| b.cidr);
        self.refresh_affine(node, &blocks);
        Ok(blocks
            .into_iter()
            .filter(|(b, _)| b.affinity == node)
            .map(|(b, _)| b.cidr)
            .collect())
    }

    /// [`Ipam::node_blocks`] and [`Ipam::borrowed`] (the borrowed addresses as /32 and
    /// /128 prefixes) from one list of the blocks.
    pub async fn node_prefixes(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let mut blocks = self.list::<Block>().await?;
        blocks.sort_by_key(|(b, _)| b.cidr);
        self.refresh_affine(node, &blocks);
        Ok(prefixes_of(node, blocks.iter().map(|(b, _)| b)))
    }

    /// What [`Ipam::node_blocks`] and [`Ipam::borrowed`] give (the borrowed addresses as
    /// /32 and /128 prefixes), from blocks at hand (a watched copy of every block) instead
    /// of listing them: the announce task follows each block write this way without a
    /// request of its own. Errors like a list would on a block that does not decode.
    pub fn node_prefixes_in<'a>(
        &self,
        node: &str,
        blocks: impl IntoIterator<Item = &'a Item>,
    ) -> Result<Vec<IpNet>, IpamError> {
        let mut usable: Vec<Block> = Vec::new();
        for item in blocks {
            match Self::decode(&item.object.name, item.object.value.clone()) {
                Ok(b) => usable.push(b),
                Err(e) => warn_unusable(KIND_BLOCK, &item.object.name, e),
            }
        }
        Ok(prefixes_of(node, &usable))
    }

    /// The addresses `node`'s pods hold in other nodes' blocks, sorted: announce each as
    /// a /32 or /128.
    pub async fn borrowed(&self, node: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for (b, _) in self.list_usable::<Block>().await?.0 {
            for a in &b.allocations {
                if a.node.as_deref() == Some(node) && b.affinity != node {
                    if let Some(ip) = b.ip_at(a.ordinal) {
                        ips.push(ip);
                    }
                }
            }
        }
        ips.sort();
        Ok(ips)
    }

    /// The pools and how full they are, from the pools and the usable blocks alone — no
    /// handle is read, however many pods the cluster has (CNI STATUS asks this often).
    pub async fn pool_usage(&self) -> Result<Vec<PoolStatus>, IpamError> {
        let pools = self.pools().await?;
        let blocks: Vec<Block> = self
            .list_usable::<Block>()
            .await?
            .0
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        Ok(pool_statuses(&pools, &blocks))
    }

    /// Every pool, block and allocation (for `ferrovia ipam show`).
    pub async fn show(&self) -> Result<Snapshot, IpamError> {
        let pools = self.pools().await?;
        let mut blocks: Vec<Block> = self
            .list::<Block>()
            .await?
            .into_iter()
            .map(|(b, _)| b)
            .collect();
        blocks.sort_by_key(|b| b.cidr);
        let handles: HashMap<String, Handle> = self
            .list::<Handle>()
            .await?
            .into_iter()
            .map(|(h, _)| (h.id().key(), h))
            .collect();

        let mut snapshot = Snapshot {
            pools: pool_statuses(&pools, &blocks),
            ..Snapshot::default()
        };
        for b in &blocks {
            snapshot.blocks.push(BlockStatus {
                cidr: b.cidr,
                pool: pools
                    .iter()
                    .find(|p| p.cidr.contains(&b.cidr))
                    .map(|p| p.cidr),
                node: b.affinity.clone(),
                allocated: b.allocations.len(),
                capacity: b.capacity(),
                borrowed: b
                    .allocations
                    .iter()
                    .filter(|a| b.holder(a) != b.affinity)
                    .count(),
                empty_since_ms: b.empty_since_ms,
            });
            for a in &b.allocations {
                let (Some(ip), Some(id)) = (b.ip_at(a.ordinal), HandleId::from_key(&a.handle))
                else {
                    continue;
                };
                let handle = handles.get(&a.handle);
                snapshot.allocations.push(AllocationStatus {
                    ip,
                    block: b.cidr,
                    node: b.holder(a).to_string(),
                    borrowed: b.holder(a) != b.affinity,
                    handle: id,
                    attributes: handle.map(|h| h.attributes.clone()).unwrap_or_default(),
                    indexed: handle.is_some_and(|h| {
                        h.addresses.iter().any(|x| x.ip == ip && x.block == b.cidr)
                    }),
                });
            }
        }
        snapshot.allocations.sort_by_key(|a| a.ip);
        Ok(snapshot)
    }

    // ---------------------------------------------------------------------------------
    // The affinity hint.

    fn affine_cache(&self) -> MutexGuard<'_, HashMap<String, BTreeSet<IpNet>>> {
        self.affine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached_affine(&self, node: &str, family: Family) -> Option<Vec<IpNet>> {
        self.affine_cache().get(node).map(|set| {
            set.iter()
                .filter(|c| Family::of_net(c) == family)
                .copied()
                .collect()
        })
    }

    fn remember_affine(&self, node: &str, cidr: IpNet) {
        self.affine_cache()
            .entry(node.to_string())
            .or_default()
            .insert(cidr);
    }

    fn forget_node_affine(&self, node: &str) {
        self.affine_cache().remove(node);
    }

    fn forget_affine(&self, node: &str, cidr: &IpNet) {
        if let Some(set) = self.affine_cache().get_mut(node) {
            set.remove(cidr);
        }
    }

    fn block_cache(&self) -> MutexGuard<'_, HashMap<IpNet, (Block, Version)>> {
        self.blocks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The block as this process last read or wrote it.
    fn known_block(&self, cidr: &IpNet) -> Option<(Block, Version)> {
        self.block_cache().get(cidr).cloned()
    }

    /// Records the state of a block just read or written (`None`: unknown again, e.g.
    /// after a lost compare-and-swap or when it is gone).
    fn note_block(&self, cidr: IpNet, state: Option<(Block, Version)>) {
        let mut cache = self.block_cache();
        match state {
            Some(s) => {
                cache.insert(cidr, s);
            }
            None => {
                cache.remove(&cidr);
            }
        }
    }

    /// Reads a block and records what was read.
    async fn get_block(&self, cidr: &IpNet) -> Result<Option<(Block, Version)>, IpamError> {
        let got = self.get::<Block>(&net_name(cidr)).await?;
        self.note_block(*cidr, got.clone());
        Ok(got)
    }

    fn refresh_affine(&self, node: &str, blocks: &[(Block, Version)]) {
        let set = blocks
            .iter()
            .filter(|(b, _)| b.affinity == node)
            .map(|(b, _)| b.cidr)
            .collect();
        self.affine_cache().insert(node.to_string(), set);
    }

    // ---------------------------------------------------------------------------------
    // Typed store access. Writes return `None` when they lost a race (AlreadyExists,
    // Conflict, NotFound): the caller re-reads and retries.

    fn decode<T: Stored>(name: &str, value: serde_json::Value) -> Result<T, IpamError> {
        let corrupt = |reason: String| IpamError::Corrupt {
            kind: T::KIND,
            name: name.to_string(),
            reason,
        };
        let object: T = serde_json::from_value(value).map_err(|e| corrupt(e.to_string()))?;
        object.check(name).map_err(corrupt)?;
        Ok(object)
    }

    fn encode<T: Stored>(name: &str, object: &T) -> Result<serde_json::Value, IpamError> {
        serde_json::to_value(object).map_err(|e| IpamError::Corrupt {
            kind: T::KIND,
            name: name.to_string(),
            reason: e.to_string(),
        })
    }

    fn store_error<T: Stored>(op: &'static str, name: &str, source: DatastoreError) -> IpamError {
        IpamError::Store {
            op,
            kind: T::KIND,
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    async fn get<T: Stored>(&self, name: &str) -> Result<Option<(T, Version)>, IpamError> {
        match self.store.get(T::KIND, name).await {
            Ok(Some(item)) => Ok(Some((Self::decode(name, item.object.value)?, item.version))),
            Ok(None) | Err(DatastoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_error::<T>("read", name, e)),
        }
    }

    async fn list<T: Stored>(&self) -> Result<Vec<(T, Version)>, IpamError> {
        self.store
            .list(T::KIND, &Selector::everything())
            .await
            .map_err(|e| Self::store_error::<T>("list", "*", e))?
            .items
            .into_iter()
            .map(|item| {
                Ok((
                    Self::decode(&item.object.name, item.object.value)?,
                    item.version,
                ))
            })
            .collect()
    }

    /// [`Ipam::list`] for what acts on the objects (assignment, announcement, release of
    /// a removed node's objects, leak collection): an object that does not decode or
    /// breaks the layout's rules is logged once and left out — never applied, never a
    /// reason to stop. Those objects come back apart (a claim keeps clear of their range).
    /// `ferrovia ipam show`, GC and the pools' own checks use the strict [`Ipam::list`].
    async fn list_usable<T: Stored>(&self) -> Result<(Vec<(T, Version)>, Vec<Item>), IpamError> {
        let items = self
            .store
            .list(T::KIND, &Selector::everything())
            .await
            .map_err(|e| Self::store_error::<T>("list", "*", e))?
            .items;
        let mut usable = Vec::with_capacity(items.len());
        let mut unusable = Vec::new();
        for item in items {
            match Self::decode::<T>(&item.object.name, item.object.value.clone()) {
                Ok(object) => usable.push((object, item.version)),
                Err(e) => {
                    warn_unusable(T::KIND, &item.object.name, e);
                    unusable.push(item);
                }
            }
        }
        Ok((usable, unusable))
    }

    async fn create<T: Stored>(
        &self,
        name: &str,
        object: &T,
    ) -> Result<Option<Version>, IpamError> {
        let object = Object::new(name, Self::encode(name, object)?);
        match self.store.create(T::KIND, &object).await {
            Ok(version) => {
                self.count_write::<T>();
                Ok(Some(version))
            }
            Err(DatastoreError::AlreadyExists { .. }) => {
                self.count_conflict();
                Ok(None)
            }
            Err(e) => Err(Self::store_error::<T>("create", name, e)),
        }
    }

    async fn update<T: Stored>(
        &self,
        name: &str,
        object: &T,
        expected: &Version,
    ) -> Result<Option<Version>, IpamError> {
        let object = Object::new(name, Self::encode(name, object)?);
        match self.store.update(T::KIND, &object, expected).await {
            Ok(version) => {
                self.count_write::<T>();
                Ok(Some(version))
            }
            Err(DatastoreError::Conflict { .. } | DatastoreError::NotFound { .. }) => {
                self.count_conflict();
                Ok(None)
            }
            Err(e) => Err(Self::store_error::<T>("update", name, e)),
        }
    }

    async fn delete<T: Stored>(
        &self,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<Option<bool>, IpamError> {
        match self.store.delete(T::KIND, name, expected).await {
            Ok(existed) => {
                if existed {
                    self.count_write::<T>();
                }
                Ok(Some(existed))
            }
            Err(DatastoreError::Conflict { .. }) => {
                self.count_conflict();
                Ok(None)
            }
            Err(DatastoreError::NotFound { .. }) => Ok(Some(false)),
            Err(e) => Err(Self::store_error::<T>("delete", name, e)),
        }
    }
}

/// The object name of the handle whose block key is `key` ([`HandleId::name`]).
fn handle_name(key: &str) -> String {
    HandleId::from_key(key).map_or_else(|| key.to_string(), |h| h.name())
}

/// `node`'s own blocks, sorted, then the addresses its pods hold in other nodes' blocks as
/// /32 and /128 prefixes, sorted: what the node announces.
fn prefixes_of<'a>(node: &str, blocks: impl IntoIterator<Item = &'a Block>) -> Vec<IpNet> {
    let mut own = Vec::new();
    let mut borrowed = Vec::new();
    for b in blocks {
        if b.affinity == node {
            own.push(b.cidr);
            continue;
        }
        for a in &b.allocations {
            if a.node.as_deref() == Some(node) {
                if let Some(ip) = b.ip_at(a.ordinal) {
                    borrowed.push(IpNet::from(ip));
                }
            }
        }
    }
    own.sort();
    borrowed.sort();
    own.extend(borrowed);
    own
}
/// Each pool with the number of blocks inside it and the addresses they give out.
fn pool_statuses(pools: &[Pool], blocks: &[Block]) -> Vec<PoolStatus> {
    pools
        .iter()
        .map(|p| {
            let inside: Vec<&Block> = blocks.iter().filter(|b| p.cidr.contains(&b.cidr)).collect();
            PoolStatus {
                cidr: p.cidr,
                family: p.family(),
                block_size: p.block_size,
                disabled: p.disabled,
                nat_outgoing: p.nat_outgoing,
                blocks: inside.len(),
                allocated: inside.iter().map(|b| b.allocations.len()).sum(),
            }
        })
        .collect()
}
