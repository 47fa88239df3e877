//! Test helpers: a blocking face of IPAM for tests written as plain functions, store
//! wrappers (fault injection, hooks, yields) and an invariant checker that reads the raw
//! stored objects, independently of the library's own decoding.

use ferrovia_ipam::datastore::{
    Datastore, DatastoreError, EventStream, Item, List, MemStore, Object, Selector,
    SharedDatastore, Version,
};
use ferrovia_ipam::{
    Assignment, Attributes, Families, HandleId, Ipam, IpamConfig, IpamError, Pool, PoolSpec,
    Released, Snapshot,
};
use futures::executor::block_on;
use futures::future::BoxFuture;
use ipnet::IpNet;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub mod concurrency;
pub mod properties;

/// IPAM driven to completion on the calling thread (each test thread drives its own
/// operations; threads run them in parallel), with the store it was built on.
pub struct BIpam<S> {
    pub ipam: Ipam,
    store: Arc<S>,
}

impl<S: Datastore + 'static> BIpam<S> {
    pub fn new(store: Arc<S>, config: IpamConfig) -> Self {
        let shared: SharedDatastore = store.clone();
        BIpam {
            ipam: Ipam::new(shared, config),
            store,
        }
    }
}

impl<S> BIpam<S> {
    pub fn store(&self) -> &S {
        &self.store
    }
    pub fn config(&self) -> &IpamConfig {
        self.ipam.config()
    }
    pub fn ensure_pools(&self, specs: &[PoolSpec]) -> Result<(), IpamError> {
        block_on(self.ipam.ensure_pools(specs))
    }
    pub fn remove_pool(&self, cidr: &str) -> Result<bool, IpamError> {
        block_on(self.ipam.remove_pool(cidr))
    }
    pub fn pools(&self) -> Result<Vec<Pool>, IpamError> {
        block_on(self.ipam.pools())
    }
    pub fn set_nat_outgoing(&self, cidr: &str, on: bool) -> Result<bool, IpamError> {
        block_on(self.ipam.set_nat_outgoing(cidr, on))
    }
    pub fn assign(
        &self,
        node: &str,
        handle: &HandleId,
        attributes: &Attributes,
        families: Families,
    ) -> Result<Assignment, IpamError> {
        block_on(self.ipam.assign(node, handle, attributes, families))
    }
    pub fn release(&self, handle: &HandleId) -> Result<Vec<IpAddr>, IpamError> {
        block_on(self.ipam.release(handle))
    }
    pub fn release_reporting(&self, handle: &HandleId) -> Result<Released, IpamError> {
        block_on(self.ipam.release_reporting(handle))
    }
    pub fn node_prefixes(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        block_on(self.ipam.node_prefixes(node))
    }
    pub fn addresses(&self, handle: &HandleId) -> Result<Vec<IpAddr>, IpamError> {
        block_on(self.ipam.addresses(handle))
    }
    pub fn gc(&self, node: &str, valid: &HashSet<HandleId>) -> Result<Vec<HandleId>, IpamError> {
        block_on(self.ipam.gc(node, valid))
    }
    pub fn release_empty_blocks(
        &self,
        node: &str,
        now: SystemTime,
    ) -> Result<Vec<IpNet>, IpamError> {
        block_on(self.ipam.release_empty_blocks(node, now))
    }
    pub fn node_blocks(&self, node: &str) -> Result<Vec<IpNet>, IpamError> {
        block_on(self.ipam.node_blocks(node))
    }
    pub fn borrowed(&self, node: &str) -> Result<Vec<IpAddr>, IpamError> {
        block_on(self.ipam.borrowed(node))
    }
    pub fn show(&self) -> Result<Snapshot, IpamError> {
        block_on(self.ipam.show())
    }
}

/// Blocking raw access to a store, for tests: values and versions as stored.
pub trait Raw {
    fn get_b(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, DatastoreError>;
    fn list_b(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, DatastoreError>;
    fn create_b(&self, kind: &str, name: &str, value: &Value) -> Result<Version, DatastoreError>;
    fn update_b(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: &Version,
    ) -> Result<Version, DatastoreError>;
    fn delete_b(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError>;
}

impl<D: Datastore + ?Sized> Raw for D {
    fn get_b(&self, kind: &str, name: &str) -> Result<Option<(Value, Version)>, DatastoreError> {
        Ok(block_on(self.get(kind, name))?.map(|i| (i.object.value, i.version)))
    }
    fn list_b(&self, kind: &str) -> Result<Vec<(String, Value, Version)>, DatastoreError> {
        Ok(block_on(self.list(kind, &Selector::everything()))?
            .items
            .into_iter()
            .map(|i| (i.object.name, i.object.value, i.version))
            .collect())
    }
    fn create_b(&self, kind: &str, name: &str, value: &Value) -> Result<Version, DatastoreError> {
        block_on(self.create(kind, &Object::new(name, value.clone())))
    }
    fn update_b(
        &self,
        kind: &str,
        name: &str,
        value: &Value,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        block_on(self.update(kind, &Object::new(name, value.clone()), expected))
    }
    fn delete_b(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        block_on(self.delete(kind, name, expected))
    }
}

fn injected(what: &str) -> DatastoreError {
    DatastoreError::Unavailable {
        detail: what.to_string(),
    }
}

/// A store whose writes can be made to fail, to simulate a crash between two writes.
#[derive(Debug)]
pub struct FaultStore {
    pub inner: Arc<dyn Datastore>,
    /// Writes left before the "crash"; u64::MAX = no crash armed.
    countdown: AtomicU64,
    /// Every write fails while set (after the crash).
    crashed: AtomicBool,
    /// After the countdown, fail one write only (not a crash).
    once: AtomicBool,
    /// Fail every call while set.
    pub down: AtomicBool,
}

impl FaultStore {
    pub fn new(inner: Arc<dyn Datastore>) -> Self {
        FaultStore {
            inner,
            countdown: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
            once: AtomicBool::new(false),
            down: AtomicBool::new(false),
        }
    }

    /// The next `n` writes succeed, every later one fails until [`FaultStore::heal`]:
    /// the process "dies" after `n` writes.
    pub fn crash_after(&self, n: u64) {
        self.once.store(false, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
        self.countdown.store(n, Ordering::SeqCst);
    }

    /// The next `n` writes succeed, the one after fails, later ones succeed.
    pub fn fail_one_after(&self, n: u64) {
        self.once.store(true, Ordering::SeqCst);
        self.crashed.store(false, Ordering::SeqCst);
        self.countdown.store(n, Ordering::SeqCst);
    }

    /// Whether the armed crash happened (a write was refused).
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    pub fn heal(&self) {
        self.crashed.store(false, Ordering::SeqCst);
        self.countdown.store(u64::MAX, Ordering::SeqCst);
    }

    fn write(&self) -> Result<(), DatastoreError> {
        self.read()?;
        if self.crashed.load(Ordering::SeqCst) {
            return Err(injected("injected crash"));
        }
        let left = self.countdown.load(Ordering::SeqCst);
        if left != u64::MAX {
            if left == 0 {
                if self.once.load(Ordering::SeqCst) {
                    self.once.store(false, Ordering::SeqCst);
                    self.countdown.store(u64::MAX, Ordering::SeqCst);
                    return Err(injected("injected write failure"));
                }
                self.crashed.store(true, Ordering::SeqCst);
                return Err(injected("injected crash"));
            }
            self.countdown.store(left - 1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn read(&self) -> Result<(), DatastoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(injected("store is down (injected)"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Datastore for FaultStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>, DatastoreError> {
        self.read()?;
        self.inner.get(kind, name).await
    }
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List, DatastoreError> {
        self.read()?;
        self.inner.list(kind, selector).await
    }
    async fn create(&self, kind: &str, object: &Object) -> Result<Version, DatastoreError> {
        self.write()?;
        self.inner.create(kind, object).await
    }
    async fn update(
        &self,
        kind: &str,
        object: &Object,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        self.write()?;
        self.inner.update(kind, object, expected).await
    }
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        self.write()?;
        self.inner.delete(kind, name, expected).await
    }
    async fn watch(
        &self,
        kind: &str,
        selector: &Selector,
        from: &Version,
    ) -> Result<EventStream, DatastoreError> {
        self.read()?;
        self.inner.watch(kind, selector, from).await
    }
}

/// A store that yields the thread around every call, to shake out interleavings.
#[derive(Debug)]
pub struct YieldStore(pub Arc<dyn Datastore>);

#[async_trait::async_trait]
impl Datastore for YieldStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>, DatastoreError> {
        std::thread::yield_now();
        self.0.get(kind, name).await
    }
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List, DatastoreError> {
        std::thread::yield_now();
        self.0.list(kind, selector).await
    }
    async fn create(&self, kind: &str, object: &Object) -> Result<Version, DatastoreError> {
        std::thread::yield_now();
        self.0.create(kind, object).await
    }
    async fn update(
        &self,
        kind: &str,
        object: &Object,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        std::thread::yield_now();
        self.0.update(kind, object, expected).await
    }
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        std::thread::yield_now();
        self.0.delete(kind, name, expected).await
    }
    async fn watch(
        &self,
        kind: &str,
        selector: &Selector,
        from: &Version,
    ) -> Result<EventStream, DatastoreError> {
        self.0.watch(kind, selector, from).await
    }
}

pub type CreateHook = Box<dyn FnOnce(Arc<MemStore>) -> BoxFuture<'static, ()> + Send>;

/// A store that runs a hook before each create (to play "another agent got there first").
pub struct HookStore {
    pub inner: Arc<MemStore>,
    pub before_create: Mutex<Option<CreateHook>>,
}

impl std::fmt::Debug for HookStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HookStore").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Datastore for HookStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>, DatastoreError> {
        self.inner.get(kind, name).await
    }
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List, DatastoreError> {
        self.inner.list(kind, selector).await
    }
    async fn create(&self, kind: &str, object: &Object) -> Result<Version, DatastoreError> {
        let hook = self.before_create.lock().unwrap().take();
        if let Some(hook) = hook {
            hook(self.inner.clone()).await;
        }
        self.inner.create(kind, object).await
    }
    async fn update(
        &self,
        kind: &str,
        object: &Object,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        self.inner.update(kind, object, expected).await
    }
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        self.inner.delete(kind, name, expected).await
    }
    async fn watch(
        &self,
        kind: &str,
        selector: &Selector,
        from: &Version,
    ) -> Result<EventStream, DatastoreError> {
        self.inner.watch(kind, selector, from).await
    }
}

/// One allocation as stored.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RawAlloc {
    pub ip: IpAddr,
    pub block: IpNet,
    pub handle: String,
    /// The node whose pod holds it.
    pub holder: String,
    pub borrowed: bool,
}

/// What the store holds, decoded by hand from the documented layout.
#[derive(Debug, Default)]
pub struct RawState {
    pub pools: Vec<(IpNet, u8, bool)>,
    /// cidr → (affinity, emptySinceMs)
    pub blocks: BTreeMap<IpNet, (String, Option<u64>)>,
    pub allocs: Vec<RawAlloc>,
    /// handle key → (node, addresses as (ip, block))
    pub handles: BTreeMap<String, (String, BTreeSet<(IpAddr, IpNet)>)>,
}

fn net(v: &Value) -> IpNet {
    v.as_str()
        .expect("cidr is a string")
        .parse()
        .expect("cidr parses")
}

pub fn raw(store: &MemStore) -> RawState {
    raw_of(store)
}

/// [`raw`] of any backend.
pub fn raw_of(store: &dyn Datastore) -> RawState {
    let mut r = RawState::default();
    for (_, v, _) in store.list_b("IPPool").unwrap() {
        r.pools.push((
            net(&v["cidr"]),
            v["blockSize"].as_u64().unwrap() as u8,
            v["disabled"].as_bool().unwrap_or(false),
        ));
    }
    for (_, v, _) in store.list_b("IPAMBlock").unwrap() {
        let cidr = net(&v["cidr"]);
        let affinity = v["affinity"].as_str().unwrap().to_string();
        r.blocks
            .insert(cidr, (affinity.clone(), v["emptySinceMs"].as_u64()));
        for a in v["allocations"].as_array().unwrap() {
            let ordinal = a["ordinal"].as_u64().unwrap() as u128;
            let base: u128 = match cidr.network() {
                IpAddr::V4(x) => u32::from(x) as u128,
                IpAddr::V6(x) => u128::from(x),
            };
            let ip = match cidr {
                IpNet::V4(_) => IpAddr::V4(((base + ordinal) as u32).into()),
                IpNet::V6(_) => IpAddr::V6((base + ordinal).into()),
            };
            let node = a.get("node").and_then(Value::as_str).map(str::to_string);
            r.allocs.push(RawAlloc {
                ip,
                block: cidr,
                handle: a["handle"].as_str().unwrap().to_string(),
                holder: node.clone().unwrap_or_else(|| affinity.clone()),
                borrowed: node.is_some(),
            });
        }
    }
    for (_, v, _) in store.list_b("IPAMHandle").unwrap() {
        let key = format!(
            "{}:{}",
            v["containerId"].as_str().unwrap(),
            v["interface"].as_str().unwrap()
        );
        let addrs = v["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| (a["ip"].as_str().unwrap().parse().unwrap(), net(&a["block"])))
            .collect();
        r.handles
            .insert(key, (v["node"].as_str().unwrap().to_string(), addrs));
    }
    r
}

impl RawState {
    /// The store's invariants: blocks inside pools and disjoint, no address twice,
    /// addresses inside their blocks, borrowed marks right, and the handle index lists
    /// every allocation.
    pub fn check(&self) -> Result<(), String> {
        self.check_structure()?;
        self.check_index()
    }

    /// The handle index lists every allocation. Needs blocks and handles read at one
    /// instant: not meaningful while other threads write.
    pub fn check_index(&self) -> Result<(), String> {
        for a in &self.allocs {
            match self.handles.get(&a.handle) {
                None => {
                    return Err(format!(
                        "{} is held by {} which has no handle object",
                        a.ip, a.handle
                    ))
                }
                Some((_, addrs)) if !addrs.contains(&(a.ip, a.block)) => {
                    return Err(format!("handle {} does not list {}", a.handle, a.ip))
                }
                Some((node, _)) if *node != a.holder => {
                    return Err(format!(
                        "{} is held for node {} but handle {} is node {}'s",
                        a.ip, a.holder, a.handle, node
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Pools and blocks disjoint, blocks inside pools, no address twice, borrowed marks
    /// right: all read from one list of blocks, so valid while other threads write.
    pub fn check_structure(&self) -> Result<(), String> {
        for (i, (a, _, _)) in self.pools.iter().enumerate() {
            for (b, _, _) in &self.pools[i + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    return Err(format!("pools {a} and {b} overlap"));
                }
            }
        }
        let cidrs: Vec<&IpNet> = self.blocks.keys().collect();
        for (i, a) in cidrs.iter().enumerate() {
            let pool = self.pools.iter().find(|(p, _, _)| p.contains(*a));
            match pool {
                None => return Err(format!("block {a} is in no pool")),
                Some((p, size, _)) if a.prefix_len() != *size => {
                    return Err(format!("block {a} does not have pool {p}'s size /{size}"))
                }
                _ => {}
            }
            for b in &cidrs[i + 1..] {
                if a.contains(&b.network()) || b.contains(&a.network()) {
                    return Err(format!("blocks {a} and {b} overlap"));
                }
            }
        }
        let mut seen: HashMap<IpAddr, &str> = HashMap::new();
        for a in &self.allocs {
            if !a.block.contains(&a.ip) {
                return Err(format!("{} is outside its block {}", a.ip, a.block));
            }
            if let Some(other) = seen.insert(a.ip, &a.handle) {
                return Err(format!(
                    "{} is given twice: to {} and {}",
                    a.ip, other, a.handle
                ));
            }
            let (affinity, _) = &self.blocks[&a.block];
            if a.borrowed && a.holder == *affinity {
                return Err(format!(
                    "{} is marked borrowed by the block's own node",
                    a.ip
                ));
            }
        }
        Ok(())
    }

    /// The addresses the blocks give `handle`.
    pub fn held_by(&self, handle: &str) -> BTreeSet<IpAddr> {
        self.allocs
            .iter()
            .filter(|a| a.handle == handle)
            .map(|a| a.ip)
            .collect()
    }

    pub fn blocks_of(&self, node: &str) -> Vec<IpNet> {
        self.blocks
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(c, _)| *c)
            .collect()
    }
}

/// A store that stops answering while stalled (an API server that accepts connections
/// and never replies): every call started then waits until [`StallStore::resume`].
#[derive(Debug)]
pub struct StallStore {
    pub inner: Arc<MemStore>,
    stalled: AtomicBool,
    resumed: tokio::sync::Notify,
}

impl StallStore {
    pub fn new(inner: Arc<MemStore>) -> Self {
        StallStore {
            inner,
            stalled: AtomicBool::new(false),
            resumed: tokio::sync::Notify::new(),
        }
    }

    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }

    async fn gate(&self) {
        while self.stalled.load(Ordering::SeqCst) {
            let wait = self.resumed.notified();
            if !self.stalled.load(Ordering::SeqCst) {
                break;
            }
            wait.await;
        }
    }
}

#[async_trait::async_trait]
impl Datastore for StallStore {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>, DatastoreError> {
        self.gate().await;
        self.inner.get(kind, name).await
    }
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List, DatastoreError> {
        self.gate().await;
        self.inner.list(kind, selector).await
    }
    async fn create(&self, kind: &str, object: &Object) -> Result<Version, DatastoreError> {
        self.gate().await;
        self.inner.create(kind, object).await
    }
    async fn update(
        &self,
        kind: &str,
        object: &Object,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        self.gate().await;
        self.inner.update(kind, object, expected).await
    }
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        self.gate().await;
        self.inner.delete(kind, name, expected).await
    }
    async fn watch(
        &self,
        kind: &str,
        selector: &Selector,
        from: &Version,
    ) -> Result<EventStream, DatastoreError> {
        self.inner.watch(kind, selector, from).await
    }
}

/// A store whose calls run as tasks of a tokio runtime, for backends that need one (the
/// SQLite backend's blocking pool, the Kubernetes client) under the helpers here, which
/// drive IPAM on plain threads.
#[derive(Debug)]
pub struct OnRuntime {
    pub inner: SharedDatastore,
    pub runtime: tokio::runtime::Handle,
}

impl OnRuntime {
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(SharedDatastore) -> BoxFuture<'static, Result<T, DatastoreError>>,
    ) -> Result<T, DatastoreError> {
        self.runtime
            .spawn(f(self.inner.clone()))
            .await
            .map_err(|e| DatastoreError::Unavailable {
                detail: format!("the datastore call's task failed: {e}"),
            })?
    }
}

#[async_trait::async_trait]
impl Datastore for OnRuntime {
    async fn get(&self, kind: &str, name: &str) -> Result<Option<Item>, DatastoreError> {
        let (kind, name) = (kind.to_string(), name.to_string());
        self.run(move |s| Box::pin(async move { s.get(&kind, &name).await }))
            .await
    }
    async fn list(&self, kind: &str, selector: &Selector) -> Result<List, DatastoreError> {
        let (kind, selector) = (kind.to_string(), selector.clone());
        self.run(move |s| Box::pin(async move { s.list(&kind, &selector).await }))
            .await
    }
    async fn create(&self, kind: &str, object: &Object) -> Result<Version, DatastoreError> {
        let (kind, object) = (kind.to_string(), object.clone());
        self.run(move |s| Box::pin(async move { s.create(&kind, &object).await }))
            .await
    }
    async fn update(
        &self,
        kind: &str,
        object: &Object,
        expected: &Version,
    ) -> Result<Version, DatastoreError> {
        let (kind, object, expected) = (kind.to_string(), object.clone(), expected.clone());
        self.run(move |s| Box::pin(async move { s.update(&kind, &object, &expected).await }))
            .await
    }
    async fn delete(
        &self,
        kind: &str,
        name: &str,
        expected: Option<&Version>,
    ) -> Result<bool, DatastoreError> {
        let (kind, name, expected) = (kind.to_string(), name.to_string(), expected.cloned());
        self.run(move |s| Box::pin(async move { s.delete(&kind, &name, expected.as_ref()).await }))
            .await
    }
    async fn watch(
        &self,
        kind: &str,
        selector: &Selector,
        from: &Version,
    ) -> Result<EventStream, DatastoreError> {
        let (kind, selector, from) = (kind.to_string(), selector.clone(), from.clone());
        self.run(move |s| Box::pin(async move { s.watch(&kind, &selector, &from).await }))
            .await
    }
}

/// The kinds IPAM stores.
pub const IPAM_KINDS: [&str; 4] = ["IPPool", "IPAMBlock", "IPAMHandle", "BlockAffinity"];

/// Deletes every IPAM object in `store`, so that the next test starts on an empty one
/// (a backend too costly to make afresh per case, such as an API server).
pub fn clear_ipam(store: &dyn Datastore) -> Result<(), DatastoreError> {
    for kind in IPAM_KINDS {
        for (name, _, _) in store.list_b(kind)? {
            store.delete_b(kind, &name, None)?;
        }
    }
    Ok(())
}
