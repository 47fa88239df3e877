//! The IPAM property test, on any backend: random sequences of assign / release / GC / block
//! sweeps / pool toggles on several nodes, some of them cut short by a simulated crash,
//! checked after every operation against the raw store and a model of who holds what.
//! ipam/tests/prop.rs runs it on the in-memory store, the root crate on SQLite and on a
//! real API server.

use crate::{raw_of, BIpam, FaultStore, RawState};
use ferrovia_ipam::datastore::{Datastore, SharedDatastore};
use ferrovia_ipam::*;
use ipnet::IpNet;
use proptest::prelude::*;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NODES: usize = 3;
const HANDLES: usize = 10;

/// Small pools, so that blocks fill, pools run out and borrowing happens.
fn pool_specs(disabled: [bool; 3]) -> Vec<PoolSpec> {
    vec![
        PoolSpec::new("10.0.0.0/28")
            .block_size(30)
            .disabled(disabled[0]), // 4 blocks of 4
        PoolSpec::new("10.0.1.0/30")
            .block_size(31)
            .disabled(disabled[1]), // 2 blocks of 2
        PoolSpec::new("fd00::/125")
            .block_size(126)
            .disabled(disabled[2]), // 2 blocks of 4
    ]
}

#[derive(Debug, Clone)]
pub enum Op {
    Assign {
        node: usize,
        handle: usize,
        families: u8,
    },
    Release {
        handle: usize,
    },
    Gc {
        node: usize,
        valid: u16,
    },
    Sweep {
        node: usize,
        advance: u64,
    },
    Toggle {
        pool: usize,
        disabled: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..NODES, 0..HANDLES, 0u8..3).prop_map(|(node, handle, families)| Op::Assign { node, handle, families }),
        3 => (0..HANDLES).prop_map(|handle| Op::Release { handle }),
        1 => (0..NODES, any::<u16>()).prop_map(|(node, valid)| Op::Gc { node, valid }),
        2 => (0..NODES, 0u64..12).prop_map(|(node, advance)| Op::Sweep { node, advance }),
        1 => (0usize..3, any::<bool>()).prop_map(|(pool, disabled)| Op::Toggle { pool, disabled }),
    ]
}

#[derive(Debug, Clone)]
pub struct Setup {
    strict: bool,
    max_blocks: Option<u32>,
    /// (operation, crash after this many writes)
    ops: Vec<(Op, Option<u64>)>,
}

/// Random setups: strict affinity or not, a block limit or not, 1 to 60 operations.
pub fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<bool>(),
        prop_oneof![Just(None), (1u32..3).prop_map(Some)],
        prop::collection::vec((op(), prop::option::weighted(0.12, 0u64..4)), 1..60),
    )
        .prop_map(|(strict, max_blocks, ops)| Setup {
            strict,
            max_blocks,
            ops,
        })
}

fn node(n: usize) -> String {
    format!("n{n}")
}

fn handle(n: usize) -> HandleId {
    HandleId::new(format!("c{n}"), "eth0")
}

fn families(f: u8) -> Families {
    match f {
        0 => Families::V4,
        1 => Families::V6,
        _ => Families::DUAL,
    }
}

/// Who holds what, when known for sure.
#[derive(Default)]
struct Model {
    /// handle → (node, addresses) for handles whose last operation completed.
    held: HashMap<usize, (String, BTreeSet<IpAddr>)>,
    /// handle → node, for handles an operation on which was cut short by a crash.
    uncertain: HashMap<usize, String>,
    disabled: [bool; 3],
}

fn grace() -> Duration {
    Duration::from_secs(10)
}

/// One random sequence of operations on `inner` (holding no IPAM object), checked after
/// every operation against the raw store and the model.
pub fn run(inner: SharedDatastore, s: Setup) -> Result<(), TestCaseError> {
    let ipam = BIpam::new(
        Arc::new(FaultStore::new(inner.clone())),
        IpamConfig {
            strict_affinity: s.strict,
            max_blocks_per_node: s.max_blocks,
            empty_block_grace: grace(),
        },
    );
    let mut m = Model::default();
    ipam.ensure_pools(&pool_specs(m.disabled))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);

    for (step, (op, crash)) in s.ops.iter().enumerate() {
        let before = raw_of(&*inner);
        if let Some(n) = crash {
            ipam.store().crash_after(*n);
        }
        let ctx = format!("step {step}: {op:?} (crash after {crash:?})");
        apply(&ipam, &*inner, &mut m, op, &before, &mut now, &ctx)?;
        ipam.store().heal();
        let after = raw_of(&*inner);
        after
            .check()
            .map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
        check_model(&m, &after).map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
    }

    // Everything can be cleaned up: release all, then every block goes after the grace.
    for h in 0..HANDLES {
        ipam.release(&handle(h))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    for n in 0..NODES {
        ipam.gc(&node(n), &HashSet::new())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
    }
    let r = raw_of(&*inner);
    prop_assert!(r.allocs.is_empty(), "left allocated: {:?}", r.allocs);
    prop_assert!(r.handles.is_empty(), "left handles: {:?}", r.handles);
    for n in 0..NODES {
        ipam.release_empty_blocks(&node(n), now).unwrap();
        ipam.release_empty_blocks(&node(n), now + grace()).unwrap();
    }
    prop_assert!(raw_of(&*inner).blocks.is_empty());
    Ok(())
}

fn check_model(m: &Model, r: &RawState) -> Result<(), String> {
    for h in 0..HANDLES {
        let key = handle(h).key();
        let held = r.held_by(&key);
        if let Some((_, expected)) = m.held.get(&h) {
            if held != *expected {
                return Err(format!("{key} holds {held:?}, expected {expected:?}"));
            }
        } else if !m.uncertain.contains_key(&h) {
            if !held.is_empty() {
                return Err(format!("{key} should hold nothing, holds {held:?}"));
            }
            if r.handles.contains_key(&key) {
                return Err(format!("{key} should have no handle object"));
            }
        }
    }
    Ok(())
}

fn family_of(ip: &IpAddr) -> Family {
    match ip {
        IpAddr::V4(_) => Family::Ipv4,
        IpAddr::V6(_) => Family::Ipv6,
    }
}

fn capacity(net: &IpNet) -> usize {
    1usize << (net.max_prefix_len() - net.prefix_len())
}

#[allow(clippy::too_many_arguments)]
fn apply(
    ipam: &BIpam<FaultStore>,
    inner: &dyn Datastore,
    m: &mut Model,
    op: &Op,
    before: &RawState,
    now: &mut SystemTime,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let crashed = || ipam.store().crashed();
    match op {
        Op::Assign {
            node: n,
            handle: h,
            families: f,
        } => {
            let nd = node(*n);
            let fams = families(*f);
            let result = ipam.assign(
                &nd,
                &handle(*h),
                &Attributes::pod("ns", format!("p{h}")),
                fams,
            );
            let crash = crashed();
            let r = raw_of(inner);
            match result {
                Ok(a) => {
                    let got: Vec<IpAddr> = a.addresses().map(|x| x.ip).collect();
                    prop_assert_eq!(got.len(), fams.iter().count(), "{}", ctx);
                    if let Some((owner, ips)) = m.held.get(h) {
                        prop_assert_eq!(owner, &nd, "{}: assigned on another node's handle", ctx);
                        for ip in ips {
                            // Idempotent: an address of a requested family is returned again.
                            if fams.iter().any(|fam| fam == family_of(ip)) {
                                prop_assert!(
                                    got.contains(ip),
                                    "{}: {} not returned again",
                                    ctx,
                                    ip
                                );
                            }
                        }
                    }
                    for x in a.addresses() {
                        prop_assert!(x.block.contains(&x.ip), "{}", ctx);
                        let (affinity, _) = &r.blocks[&x.block];
                        prop_assert_eq!(x.borrowed, *affinity != nd, "{}", ctx);
                        if x.borrowed {
                            prop_assert!(
                                !ipam.config().strict_affinity,
                                "{}: borrowed under strict affinity",
                                ctx
                            );
                        }
                        if x.new_block {
                            prop_assert!(!before.blocks.contains_key(&x.block), "{}", ctx);
                        }
                    }
                    let held = r.held_by(&handle(*h).key());
                    for ip in &got {
                        prop_assert!(held.contains(ip), "{}: {} not held after assign", ctx, ip);
                    }
                    if crash {
                        m.held.remove(h);
                        m.uncertain.insert(*h, nd);
                    } else {
                        m.uncertain.remove(h);
                        m.held.insert(*h, (nd, held));
                    }
                }
                Err(e) => {
                    if crash {
                        if let Some((owner, _)) = m.held.remove(h) {
                            m.uncertain.insert(*h, owner);
                        } else {
                            m.uncertain.insert(*h, nd);
                        }
                        return Ok(());
                    }
                    match &e {
                        IpamError::HandleOnOtherNode { owner, .. } => {
                            let known = m.held.get(h).map(|(o, _)| o).or(m.uncertain.get(h));
                            prop_assert_eq!(Some(owner), known, "{}", ctx);
                        }
                        IpamError::PoolsDisabled { .. } => {}
                        IpamError::Exhausted { family, .. }
                        | IpamError::BlockLimit { family, .. } => {
                            check_exhausted(ipam, m, &r, &nd, *family, &e, ctx)?;
                        }
                        other => prop_assert!(false, "{}: unexpected error {}", ctx, other),
                    }
                    if let Some((owner, old)) = m.held.get(h) {
                        if *owner == nd {
                            // What it held stays (the model check below compares).
                            let held = r.held_by(&handle(*h).key());
                            prop_assert_eq!(
                                &held,
                                old,
                                "{}: a failed assign changed the handle",
                                ctx
                            );
                        }
                    }
                }
            }
        }
        Op::Release { handle: h } => {
            let result = ipam.release(&handle(*h));
            if crashed() {
                if let Some((owner, _)) = m.held.remove(h) {
                    m.uncertain.insert(*h, owner);
                }
                return Ok(());
            }
            let freed = result.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
            let freed: BTreeSet<IpAddr> = freed.into_iter().collect();
            if let Some((_, ips)) = m.held.get(h) {
                prop_assert_eq!(&freed, ips, "{}", ctx);
            } else if !m.uncertain.contains_key(h) {
                prop_assert!(freed.is_empty(), "{}: released {:?} of nothing", ctx, freed);
            }
            m.held.remove(h);
            m.uncertain.remove(h);
        }
        Op::Gc { node: n, valid } => {
            let nd = node(*n);
            let valid_ids: HashSet<HandleId> = (0..HANDLES)
                .filter(|i| valid & (1 << i) != 0)
                .map(handle)
                .collect();
            let result = ipam.gc(&nd, &valid_ids);
            let is_valid = |h: &usize| valid & (1 << h) != 0;
            if crashed() {
                let touched: Vec<usize> = m
                    .held
                    .iter()
                    .filter(|(h, (o, _))| *o == nd && !is_valid(h))
                    .map(|(h, _)| *h)
                    .collect();
                for h in touched {
                    m.held.remove(&h);
                    m.uncertain.insert(h, nd.clone());
                }
                return Ok(());
            }
            let freed = result.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
            let freed: BTreeSet<usize> = (0..HANDLES)
                .filter(|i| freed.contains(&handle(*i)))
                .collect();
            let expected: BTreeSet<usize> = m
                .held
                .iter()
                .filter(|(h, (o, _))| *o == nd && !is_valid(h))
                .map(|(h, _)| *h)
                .collect();
            prop_assert!(
                expected.is_subset(&freed),
                "{}: GC freed {:?}, expected {:?}",
                ctx,
                freed,
                expected
            );
            for h in &freed {
                let certain_other = m.held.get(h).is_some_and(|(o, _)| *o != nd);
                prop_assert!(!is_valid(h) && !certain_other, "{}: GC freed {}", ctx, h);
                m.held.remove(h);
                m.uncertain.remove(h);
            }
            let uncertain_gone: Vec<usize> = m
                .uncertain
                .iter()
                .filter(|(h, o)| **o == nd && !is_valid(h))
                .map(|(h, _)| *h)
                .collect();
            for h in uncertain_gone {
                m.uncertain.remove(&h);
            }
            // Nothing held for this node under an invalid handle remains.
            let r = raw_of(inner);
            for a in r.allocs.iter().filter(|a| a.holder == nd) {
                let i = (0..HANDLES).find(|i| handle(*i).key() == a.handle);
                prop_assert!(
                    i.is_some_and(|i| is_valid(&i)),
                    "{}: {:?} survived GC",
                    ctx,
                    a
                );
            }
        }
        Op::Sweep { node: n, advance } => {
            *now += Duration::from_secs(*advance);
            let nd = node(*n);
            let result = ipam.release_empty_blocks(&nd, *now);
            if crashed() {
                return Ok(());
            }
            let released = result.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
            for b in &released {
                let was = before.blocks.get(b);
                prop_assert!(
                    was.is_some_and(|(a, _)| *a == nd),
                    "{}: released {} not ours",
                    ctx,
                    b
                );
                prop_assert!(
                    before.allocs.iter().all(|a| a.block != *b),
                    "{}: released busy {}",
                    ctx,
                    b
                );
                let since = was.and_then(|(_, s)| *s);
                prop_assert!(since.is_some(), "{}: {} released without a stamp", ctx, b);
            }
        }
        Op::Toggle { pool, disabled } => {
            let mut want = m.disabled;
            want[*pool] = *disabled;
            let result = ipam.ensure_pools(&pool_specs(want));
            if crashed() {
                let r = raw_of(inner);
                for (i, spec) in pool_specs(want).iter().enumerate() {
                    let cidr: IpNet = spec.cidr.parse().unwrap();
                    m.disabled[i] = r.pools.iter().find(|p| p.0 == cidr).is_some_and(|p| p.2);
                }
                return Ok(());
            }
            result.map_err(|e| TestCaseError::fail(format!("{ctx}: {e}")))?;
            m.disabled = want;
        }
    }
    Ok(())
}

/// An exhaustion error must be true: the node's usable blocks are full, and (per the
/// policy) no block could be claimed and nothing could be borrowed.
fn check_exhausted(
    ipam: &BIpam<FaultStore>,
    m: &Model,
    r: &RawState,
    nd: &str,
    family: Family,
    e: &IpamError,
    ctx: &str,
) -> Result<(), TestCaseError> {
    let enabled: Vec<(IpNet, u8)> = pool_specs(m.disabled)
        .iter()
        .filter(|s| !s.disabled)
        .map(|s| (s.cidr.parse::<IpNet>().unwrap(), s.block_size.unwrap()))
        .filter(|(c, _)| family_of(&c.network()) == family)
        .collect();
    let used = |b: &IpNet| r.allocs.iter().filter(|a| a.block == *b).count();
    let usable: Vec<(&IpNet, &String)> = r
        .blocks
        .iter()
        .filter(|(b, _)| enabled.iter().any(|(p, _)| p.contains(*b)))
        .map(|(b, (a, _))| (b, a))
        .collect();
    for (b, affinity) in &usable {
        if *affinity == nd {
            prop_assert_eq!(
                used(b),
                capacity(b),
                "{}: {} but own block {} has room",
                ctx,
                e,
                b
            );
        } else if !ipam.config().strict_affinity {
            prop_assert_eq!(
                used(b),
                capacity(b),
                "{}: {} but {} could be borrowed from",
                ctx,
                e,
                b
            );
        }
    }
    let own = r
        .blocks
        .iter()
        .filter(|(b, (a, _))| a == nd && family_of(&b.network()) == family)
        .count();
    match e {
        IpamError::BlockLimit { limit, .. } => {
            prop_assert!(
                own >= *limit as usize,
                "{}: limit {} but {} blocks",
                ctx,
                limit,
                own
            );
        }
        _ => {
            let limit_hit = ipam
                .config()
                .max_blocks_per_node
                .is_some_and(|l| own >= l as usize);
            prop_assert!(!limit_hit, "{}: Exhausted where BlockLimit was due", ctx);
            // Every block of every enabled pool is claimed.
            let total: usize = enabled
                .iter()
                .map(|(p, size)| 1usize << (size - p.prefix_len()))
                .sum();
            prop_assert_eq!(usable.len(), total, "{}: {} but a block is free", ctx, e);
        }
    }
    Ok(())
}
