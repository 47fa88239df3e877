//! The IPAM concurrency tests, on any backend: ipam/tests/concurrent.rs runs them on the
//! in-memory store, the root crate on SQLite and on a real API server.

use crate::{raw_of, BIpam, YieldStore};
use ferrovia_ipam::datastore::SharedDatastore;
use ferrovia_ipam::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, UNIX_EPOCH};

const HANDLES_PER_THREAD: usize = 4;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The thread layout: (node, which Ipam instance). Two threads share one instance of
/// node a (one agent, concurrent CNI calls), a third runs a second instance for node a
/// (two processes on one node), nodes b and c have one thread each.
const THREADS: [(&str, usize); 5] = [("a", 0), ("a", 0), ("a", 1), ("b", 2), ("c", 3)];

/// Threads sharing one store (as agents share the datastore) assign, re-assign, release,
/// sweep blocks with no grace and collect garbage at the same time; checked after every
/// operation and at the end. `inner` must hold no IPAM object.
pub fn concurrent_agents(
    inner: SharedDatastore,
    seed: u64,
    strict: bool,
    max_blocks: Option<u32>,
    ops: usize,
) -> Result<(), String> {
    let config = IpamConfig {
        strict_affinity: strict,
        max_blocks_per_node: max_blocks,
        empty_block_grace: Duration::ZERO,
    };
    let instances: Vec<Arc<BIpam<YieldStore>>> = (0..4)
        .map(|_| {
            Arc::new(BIpam::new(
                Arc::new(YieldStore(inner.clone())),
                config.clone(),
            ))
        })
        .collect();
    instances[0]
        .ensure_pools(&[
            PoolSpec::new("10.1.0.0/27").block_size(29), // 4 blocks of 8
            PoolSpec::new("fd01::/124").block_size(126), // 4 blocks of 4
        ])
        .map_err(|e| e.to_string())?;

    // ip → handle key, for every address some thread was given and has not released.
    let owners: Arc<Mutex<HashMap<IpAddr, String>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(THREADS.len()));
    let mut threads = Vec::new();
    for (t, (node, instance)) in THREADS.iter().enumerate() {
        let ipam = instances[*instance].clone();
        let owners = owners.clone();
        let inner = inner.clone();
        let barrier = barrier.clone();
        let node = node.to_string();
        // GC only where one thread is the node's only client (GC must not race the
        // node's own ADDs of handles outside the valid set).
        let may_gc = node != "a";
        threads.push(std::thread::spawn(
            move || -> Result<HashMap<String, BTreeSet<IpAddr>>, String> {
                let mut rng = Rng(seed
                    .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                    .wrapping_add(t as u64 + 1)
                    | 1);
                let handles: Vec<HandleId> = (0..HANDLES_PER_THREAD)
                    .map(|i| HandleId::new(format!("t{t}h{i}"), "eth0"))
                    .collect();
                let mut held: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
                let mut clock = 0u64;
                barrier.wait();
                for step in 0..ops {
                    let ctx = |what: &str| format!("thread {t} ({node}) step {step}: {what}");
                    let h = &handles[rng.below(HANDLES_PER_THREAD as u64) as usize];
                    let key = h.key();
                    match rng.below(10) {
                        0..=4 => {
                            let fams =
                                [Families::V4, Families::V6, Families::DUAL][rng.below(3) as usize];
                            match ipam.assign(&node, h, &Attributes::pod("ns", &key), fams) {
                                Ok(a) => {
                                    let mut owners = owners.lock().unwrap();
                                    let mine = held.entry(key.clone()).or_default();
                                    for x in a.addresses() {
                                        if let Some(other) = owners.insert(x.ip, key.clone()) {
                                            if other != key {
                                                return Err(ctx(&format!(
                                                    "{} given to {key} while {other} holds it",
                                                    x.ip
                                                )));
                                            }
                                            if !mine.contains(&x.ip) {
                                                return Err(ctx(
                                                    "re-assign returned another address",
                                                ));
                                            }
                                        }
                                        mine.insert(x.ip);
                                    }
                                    // Idempotent: same family, same address.
                                    for ip in mine.iter() {
                                        let asked = match ip {
                                            IpAddr::V4(_) => fams.ipv4,
                                            IpAddr::V6(_) => fams.ipv6,
                                        };
                                        if asked && !a.addresses().any(|x| x.ip == *ip) {
                                            return Err(ctx(&format!("{ip} not returned again")));
                                        }
                                    }
                                }
                                Err(e) if e.is_exhausted() => {}
                                Err(e) => return Err(ctx(&e.to_string())),
                            }
                        }
                        5..=7 => {
                            let mine = held.remove(&key).unwrap_or_default();
                            {
                                let mut owners = owners.lock().unwrap();
                                for ip in &mine {
                                    owners.remove(ip);
                                }
                            }
                            let freed: BTreeSet<IpAddr> = ipam
                                .release(h)
                                .map_err(|e| ctx(&e.to_string()))?
                                .into_iter()
                                .collect();
                            if freed != mine {
                                return Err(ctx(&format!("released {freed:?}, held {mine:?}")));
                            }
                        }
                        8 => {
                            clock += 1;
                            ipam.release_empty_blocks(
                                &node,
                                UNIX_EPOCH + Duration::from_secs(clock),
                            )
                            .map_err(|e| ctx(&e.to_string()))?;
                        }
                        _ => {
                            if may_gc {
                                // Drop one handle from the valid set now and then.
                                let mut valid: HashSet<HandleId> = handles
                                    .iter()
                                    .filter(|h| held.contains_key(&h.key()))
                                    .cloned()
                                    .collect();
                                let dropped = if rng.below(2) == 0 {
                                    valid.iter().next().cloned()
                                } else {
                                    None
                                };
                                if let Some(d) = &dropped {
                                    valid.remove(d);
                                    let mine = held.remove(&d.key()).unwrap_or_default();
                                    let mut owners = owners.lock().unwrap();
                                    for ip in &mine {
                                        owners.remove(ip);
                                    }
                                }
                                let freed =
                                    ipam.gc(&node, &valid).map_err(|e| ctx(&e.to_string()))?;
                                let expected: Vec<HandleId> = dropped.into_iter().collect();
                                if freed != expected {
                                    return Err(ctx(&format!(
                                        "GC freed {freed:?}, expected {expected:?}"
                                    )));
                                }
                            }
                        }
                    }
                    // After each operation: the store's structure, and what this thread holds.
                    raw_of(&*inner).check_structure().map_err(|e| ctx(&e))?;
                    for (k, ips) in &held {
                        let id = HandleId::from_key(k).ok_or_else(|| ctx("bad key"))?;
                        let now: BTreeSet<IpAddr> = ipam
                            .addresses(&id)
                            .map_err(|e| ctx(&e.to_string()))?
                            .into_iter()
                            .collect();
                        if now != *ips {
                            return Err(ctx(&format!("{k} holds {now:?}, expected {ips:?}")));
                        }
                    }
                }
                Ok(held)
            },
        ));
    }
    let mut all: HashMap<String, BTreeSet<IpAddr>> = HashMap::new();
    for t in threads {
        let held = t.join().map_err(|_| "a thread panicked".to_string())??;
        all.extend(held);
    }

    // At rest: every invariant, the index included, and exactly the model.
    let r = raw_of(&*inner);
    r.check()?;
    let mut expected = 0;
    for (key, ips) in &all {
        if r.held_by(key) != *ips {
            return Err(format!(
                "{key} holds {:?}, expected {ips:?}",
                r.held_by(key)
            ));
        }
        expected += ips.len();
    }
    if r.allocs.len() != expected {
        return Err(format!(
            "{} allocations, {expected} expected",
            r.allocs.len()
        ));
    }
    if let Some(limit) = max_blocks {
        // Exact per node with one process per node (b, c); a's two processes may
        // overshoot by one.
        for (node, slack) in [("a", 1), ("b", 0), ("c", 0)] {
            for family_v4 in [true, false] {
                let n = r
                    .blocks_of(node)
                    .iter()
                    .filter(|b| b.network().is_ipv4() == family_v4)
                    .count();
                if n > (limit + slack) as usize {
                    return Err(format!("node {node} holds {n} blocks, limit {limit}"));
                }
            }
        }
    }

    // Clean-up leaves nothing.
    for (key, _) in all {
        let id = HandleId::from_key(&key).ok_or("bad key")?;
        instances[0].release(&id).map_err(|e| e.to_string())?;
    }
    for node in ["a", "b", "c"] {
        instances[0]
            .release_empty_blocks(node, UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
        instances[0]
            .release_empty_blocks(node, UNIX_EPOCH)
            .map_err(|e| e.to_string())?;
    }
    let r = raw_of(&*inner);
    if !r.allocs.is_empty() || !r.handles.is_empty() || !r.blocks.is_empty() {
        return Err(format!("left over: {r:?}"));
    }
    Ok(())
}

/// Eight threads of one agent race for the 8 addresses of a single block. `inner` must
/// hold no IPAM object.
pub fn many_threads_one_block(inner: SharedDatastore) {
    let ipam = Arc::new(BIpam::new(
        Arc::new(YieldStore(inner.clone())),
        IpamConfig::default(),
    ));
    ipam.ensure_pools(&[PoolSpec::new("10.2.0.0/29").block_size(29)])
        .unwrap();
    let barrier = Arc::new(Barrier::new(8));
    let got: Vec<Option<IpAddr>> = (0..8)
        .map(|t| {
            let ipam = ipam.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                ipam.assign(
                    "a",
                    &HandleId::new(format!("x{t}"), "eth0"),
                    &Attributes::default(),
                    Families::V4,
                )
                .ok()
                .and_then(|a| a.ipv4.map(|x| x.ip))
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|j| j.join().unwrap())
        .collect();
    let ips: BTreeSet<IpAddr> = got.iter().flatten().copied().collect();
    assert_eq!(ips.len(), 8, "{got:?}");
    raw_of(&*inner).check().unwrap();
    assert!(ipam
        .assign(
            "a",
            &HandleId::new("x9", "eth0"),
            &Attributes::default(),
            Families::V4
        )
        .unwrap_err()
        .is_exhausted());
}

/// 16 addresses (4 blocks of 4), 16 threads on 4 nodes, borrowing allowed: every thread
/// must get one, whoever wins the block claims; `rounds` times, each on a store from
/// `fresh` (holding no IPAM object).
pub fn racing_nodes(rounds: usize, fresh: impl Fn() -> SharedDatastore) {
    for round in 0..rounds {
        let inner = fresh();
        let instances: Vec<Arc<BIpam<YieldStore>>> = (0..4)
            .map(|_| {
                Arc::new(BIpam::new(
                    Arc::new(YieldStore(inner.clone())),
                    IpamConfig::default(),
                ))
            })
            .collect();
        instances[0]
            .ensure_pools(&[PoolSpec::new("10.3.0.0/28").block_size(30)])
            .unwrap();
        let barrier = Arc::new(Barrier::new(16));
        let results: Vec<Result<IpAddr, String>> = (0..16)
            .map(|t| {
                let ipam = instances[t % 4].clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    let node = format!("n{}", t % 4);
                    let handle = HandleId::new(format!("r{round}t{t}"), "eth0");
                    ipam.assign(&node, &handle, &Attributes::default(), Families::V4)
                        .map_err(|e| e.to_string())
                        .and_then(|a| a.ipv4.map(|x| x.ip).ok_or_else(|| "no address".into()))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|j| j.join().unwrap())
            .collect();
        let ips: BTreeSet<IpAddr> = results
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .collect();
        assert_eq!(ips.len(), 16, "round {round}: {results:?}");
        raw_of(&*inner).check().unwrap();
    }
}
