//! The allocator: pools, block claims, assignment, release, GC and block release.

use crate::datastore::{DatastoreError, Object, Selector, SharedDatastore, Version};
use crate::error::IpamError;
use crate::lock::KeyedLock;
use crate::model::{
    first_free_block, net_name, overlaps, validate_node, Allocation, Attributes, Block, Families,
    Family, Handle, HandleAddr, HandleId, Pool, PoolSpec, KIND_BLOCK, KIND_HANDLE, KIND_POOL,
};
use crate::snapshot::{AllocationStatus, BlockStatus, PoolStatus, Snapshot};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many compare-and-swap conflicts in a row one read-modify-write loop accepts.
pub const MAX_ATTEMPTS: u32 = 100;

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
}

impl Assignment {
    /// The addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = &AssignedIp> {
        self.ipv4.iter().chain(self.ipv6.iter())
    }
}

/// The IP address manager of one agent. Shared across threads (`&self` everywhere).
pub struct Ipam {
    store: SharedDatastore,
    config: IpamConfig,
    handle_locks: KeyedLock,
    /// Blocks known to be affine to each node: a hint that saves listing every block on
    /// each assignment; always confirmed by reading the block.
    affine: Mutex<HashMap<String, BTreeSet<IpNet>>>,
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
        }
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
            if let Some((other, _)) = stored
                .iter()
                .find(|(p, _)| p.pool.cidr != pool.cidr && overlaps(&p.pool.cidr, &pool.cidr))
            {
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

    /// Every stored pool, sorted by CIDR.
    pub async fn pools(&self) -> Result<Vec<Pool>, IpamError> {
        let mut pools: Vec<Pool> = self
            .list::<Pool>()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        pools.sort_by_key(|p| p.cidr);
        Ok(pools)
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
        let pools = self
            .list::<Pool>()
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>();
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
                Ok(ip) => match family {
                    Family::Ipv4 => assignment.ipv4 = Some(ip),
                    Family::Ipv6 => assignment.ipv6 = Some(ip),
                },
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
    ) -> Result<AssignedIp, IpamError> {
        for _ in 0..MAX_ATTEMPTS {
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
                            return Ok(AssignedIp {
                                ip: a.ip,
                                block: b.cidr,
                                borrowed: b.affinity != node,
                                new_block: claimed.contains(&b.cidr),
                            });
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
            if inserted
                && self
                    .update(&block_name, &block, &candidate.version)
                    .await?
                    .is_some()
            {
                if candidate.borrowed {
                    tracing::info!(%ip, block = %block.cidr, owner = %block.affinity, %node, "borrowed an address from another node's block");
                }
                return Ok(AssignedIp {
                    ip,
                    block: block.cidr,
                    borrowed: candidate.borrowed,
                    new_block: claimed.contains(&block.cidr),
                });
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
                match self.get::<Block>(&net_name(&cidr)).await? {
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
        'relist: for _ in 0..MAX_ATTEMPTS {
            let mut blocks = self.list::<Block>().await?;
            blocks.sort_by_key(|(b, _)| b.cidr);
            self.refresh_affine(node, &blocks);
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
                let taken: Vec<IpNet> = blocks.iter().map(|(b, _)| b.cidr).collect();
                for pool in usable {
                    if let Some(cidr) = first_free_block(pool, &taken) {
                        let block = Block::new(cidr, node);
                        match self.create(&block.name(), &block).await? {
                            Some(version) => {
                                tracing::info!(block = %cidr, %node, "claimed a block");
                                claimed.push(cidr);
                                self.remember_affine(node, cidr);
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
    async fn release_locked(&self, key: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let done = match self.get::<Handle>(&handle_name(key)).await? {
                None => true,
                Some((h, version)) => {
                    for a in &h.addresses {
                        if self.free_address(&a.block, &a.ip, key).await? {
                            freed.push(a.ip);
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
                return Ok(freed);
            }
        }
        Err(IpamError::TooManyConflicts {
            kind: KIND_HANDLE,
            name: key.to_string(),
            attempts: MAX_ATTEMPTS,
        })
    }

    /// Removes the allocation of `ip` from its block if `key` holds it.
    async fn free_address(&self, block: &IpNet, ip: &IpAddr, key: &str) -> Result<bool, IpamError> {
        let name = net_name(block);
        for _ in 0..MAX_ATTEMPTS {
            let Some((mut b, version)) = self.get::<Block>(&name).await? else {
                return Ok(false);
            };
            let Some(ordinal) = b.ordinal_of(ip) else {
                return Ok(false);
            };
            if !b.remove_if_held(ordinal, key) {
                return Ok(false);
            }
            if self.update(&name, &b, &version).await?.is_some() {
                return Ok(true);
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
                if self.free_address(&a.block, &a.ip, key).await? {
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
        let mut blocks = self.list::<Block>().await?;
        blocks.sort_by_key(|(b, _)| b.cidr);
        for (mut b, version) in blocks {
            if b.affinity != node || !b.allocations.is_empty() {
                continue;
            }
            let name = b.name();
            match b.empty_since_ms {
                None => {
                    b.empty_since_ms = Some(now_ms);
                    self.update(&name, &b, &version).await?;
                }
                Some(since) if now_ms.saturating_sub(since) >= grace_ms => {
                    if self.delete::<Block>(&name, Some(&version)).await? == Some(true) {
                        tracing::info!(block = %b.cidr, %node, "released an empty block");
                        self.forget_affine(node, &b.cidr);
                        released.push(b.cidr);
                    }
                }
                Some(_) => {}
            }
        }
        Ok(released)
    }

    /// The blocks affine to `node`, sorted: announce them over BGP, with a blackhole
    /// route each.
    pub async fn node_blocks(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        let mut blocks = self.list::<Block>().await?;
        blocks.sort_by_key(|(b, _)| b.cidr);
        self.refresh_affine(node, &blocks);
        Ok(blocks
            .into_iter()
            .filter(|(b, _)| b.affinity == node)
            .map(|(b, _)| b.cidr)
            .collect())
    }

    /// The addresses `node`'s pods hold in other nodes' blocks, sorted: announce each as
    /// a /32 or /128.
    pub async fn borrowed(&self, node: &str) -> Result<Vec<IpAddr>, IpamError> {
        let mut ips: Vec<IpAddr> = Vec::new();
        for (b, _) in self.list::<Block>().await? {
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

        let mut snapshot = Snapshot::default();
        for p in &pools {
            let inside: Vec<&Block> = blocks.iter().filter(|b| p.cidr.contains(&b.cidr)).collect();
            snapshot.pools.push(PoolStatus {
                cidr: p.cidr,
                family: p.family(),
                block_size: p.block_size,
                disabled: p.disabled,
                nat_outgoing: p.nat_outgoing,
                blocks: inside.len(),
                allocated: inside.iter().map(|b| b.allocations.len()).sum(),
            });
        }
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

    fn forget_affine(&self, node: &str, cidr: &IpNet) {
        if let Some(set) = self.affine_cache().get_mut(node) {
            set.remove(cidr);
        }
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

    async fn create<T: Stored>(
        &self,
        name: &str,
        object: &T,
    ) -> Result<Option<Version>, IpamError> {
        let object = Object::new(name, Self::encode(name, object)?);
        match self.store.create(T::KIND, &object).await {
            Ok(version) => Ok(Some(version)),
            Err(DatastoreError::AlreadyExists { .. }) => Ok(None),
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
            Ok(version) => Ok(Some(version)),
            Err(DatastoreError::Conflict { .. } | DatastoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(Self::store_error::<T>("update", name, e)),
        }
    }

    async fn delete<T: Stored>(
        &self,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<Option<bool>, IpamError> {
        match self.store.delete(T::KIND, name, expected).await {
            Ok(existed) => Ok(Some(existed)),
            Err(DatastoreError::Conflict { .. }) => Ok(None),
            Err(DatastoreError::NotFound { .. }) => Ok(Some(false)),
            Err(e) => Err(Self::store_error::<T>("delete", name, e)),
        }
    }
}

/// The object name of the handle whose block key is `key` ([`HandleId::name`]).
fn handle_name(key: &str) -> String {
    HandleId::from_key(key).map_or_else(|| key.to_string(), |h| h.name())
}
