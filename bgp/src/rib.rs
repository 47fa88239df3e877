//! Routing information bases (RFC 4271 §3.2): Adj-RIB-In per peer, the Loc-RIB with the
//! decision process of §9.1.2 and equal-cost multipath, Adj-RIB-Out per peer.

use crate::message::{Family, NextHop, PathAttributes};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use paths::{PathId, Paths};
use smallvec::{smallvec, SmallVec};
use std::collections::BTreeMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Bound::{Excluded, Unbounded};
use std::sync::Arc;
use table::{PrefixMap, Slot};

mod paths;
mod slots;
mod table;

/// Attributes plus next hop of a route; shared by every prefix of one UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub attrs: PathAttributes,
    pub next_hop: NextHop,
}

/// Where a Loc-RIB candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    /// Originated by this speaker.
    Local,
    /// Learned from the peer with this address.
    Peer(IpAddr),
}

/// One path for a prefix, with what the decision process needs about its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub source: Source,
    pub route: Arc<Route>,
    /// Learned over eBGP.
    pub ebgp: bool,
    /// The peer's BGP Identifier (0 for local routes).
    pub peer_id: Ipv4Addr,
}

impl Candidate {
    fn local_pref(&self) -> u32 {
        self.route.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }
    /// BGP Identifier for tie breaking: ORIGINATOR_ID when reflected (RFC 4456 §9).
    fn tie_id(&self) -> u32 {
        u32::from(self.route.attrs.originator_id.unwrap_or(self.peer_id))
    }
    fn peer_addr(&self) -> Option<IpAddr> {
        match self.source {
            Source::Local => None,
            Source::Peer(a) => Some(a),
        }
    }
}

/// LOCAL_PREF assumed when a route has none (the common default of BIRD, FRR, GoBGP).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// The selected route(s) for a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    /// The single best path (§9.1.2.2 through the final tie breaks).
    pub best: Candidate,
    /// Next hops of every path equal to the best up to the multipath step; contains the
    /// best's own next hop first. One entry means no multipath. Held inline for that
    /// common case: a change taken for the kernel costs no allocation.
    pub next_hops: NextHops,
}

/// The next hops of a selection: one inline, more on the heap.
pub type NextHops = SmallVec<[IpAddr; 1]>;

/// A change of the Loc-RIB for one prefix, for the kernel and the Adj-RIBs-Out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNet,
    /// None: the prefix is gone from the Loc-RIB.
    pub best: Option<Best>,
}

/// What one [`LocRib::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    /// The source had a path for the prefix before.
    pub had: bool,
    /// The source has a path for the prefix now.
    pub has: bool,
    /// The selection (best path or multipath next hops) moved.
    pub best_changed: bool,
    /// When `best_changed`: where the best path now comes from (None: the prefix is gone
    /// from the Loc-RIB). None when nothing changed.
    pub best_source: Option<Source>,
}

/// Prefixes waiting to be taken (changes for the kernel), kept per family so an IPv4 entry
/// takes its 5 bytes and not the 18 of an `IpNet` (a full table waiting for the kernel is
/// a million of them). Adding is a push onto a list; the list is sorted and its repeats
/// dropped only when taking reaches it, so a full table costs one sort instead of a tree
/// insert per prefix. Taken in `IpNet` order (IPv4 first) and never twice in one
/// [`PrefixSet::take`]; a prefix added again while older entries are still being taken
/// may come out once more in a later call.
#[derive(Debug, Default, Clone)]
pub struct PrefixSet {
    v4: Queue<Ipv4Net>,
    v6: Queue<Ipv6Net>,
}

impl PrefixSet {
    /// Adds a prefix.
    pub fn insert(&mut self, prefix: IpNet) {
        match prefix {
            IpNet::V4(p) => self.v4.insert(p),
            IpNet::V6(p) => self.v6.insert(p),
        }
    }

    /// Takes out up to `max` prefixes, smallest first, each once.
    pub fn take(&mut self, max: usize) -> Vec<IpNet> {
        let mut out: Vec<IpNet> = self.v4.take(max).into_iter().map(IpNet::V4).collect();
        if out.len() < max {
            let rest = self.v6.take(max - out.len());
            out.extend(rest.into_iter().map(IpNet::V6));
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Entries below which [`Queue::fresh`] is not compacted.
const QUEUE_COMPACT_MIN: usize = 4096;

/// One family of a [`PrefixSet`].
#[derive(Debug, Clone)]
struct Queue<K> {
    /// Sorted, without repeats, largest first: taken from the end.
    ready: Vec<K>,
    /// Added since `ready` was made: unsorted, perhaps with repeats.
    fresh: Vec<K>,
    /// Length of `fresh` after its last compaction: it is compacted again at twice
    /// that, so the same prefixes changing over and over keep it bounded.
    compacted: usize,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            ready: Vec::new(),
            fresh: Vec::new(),
            compacted: 0,
        }
    }
}

impl<K: Ord + Copy> Queue<K> {
    fn insert(&mut self, k: K) {
        self.fresh.push(k);
        if self.fresh.len() >= 2 * self.compacted.max(QUEUE_COMPACT_MIN) {
            self.fresh.sort_unstable();
            self.fresh.dedup();
            self.compacted = self.fresh.len();
        }
    }

    fn take(&mut self, max: usize) -> Vec<K> {
        let mut out = Vec::with_capacity(max.min(self.ready.len() + self.fresh.len()));
        let mut refilled = false;
        while out.len() < max {
            if self.ready.is_empty() {
                if self.fresh.is_empty() {
                    break;
                }
                let mut next = std::mem::take(&mut self.fresh);
                next.sort_unstable_by(|a, b| b.cmp(a));
                next.dedup();
                self.ready = next;
                self.compacted = 0;
                refilled = !out.is_empty();
            }
            let n = (max - out.len()).min(self.ready.len());
            let at = self.ready.len() - n;
            out.extend(self.ready.drain(at..).rev());
        }
        // A full table waits here while the kernel takes it a chunk at a time: give the
        // memory back as it drains (each halving copies what is left once), so it is free
        // for the kernel's own bookkeeping growing meanwhile.
        if self.ready.capacity() > QUEUE_COMPACT_MIN && self.ready.len() < self.ready.capacity() / 2
        {
            self.ready.shrink_to_fit();
        }
        if refilled {
            // Entries from before and after the refill may repeat each other.
            out.sort_unstable();
            out.dedup();
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.fresh.is_empty()
    }
}

const NO_BEST: u8 = u8::MAX;

/// One prefix as read from the table: every source's path (the Adj-RIBs-In after import
/// policy, RFC 4271 §3.2, kept in one table) and the selection over them. A full table has
/// a million prefixes, nearly all with a single path: that case is one shared candidate
/// (the prefixes of one UPDATE point to the same `Arc<Candidate>`), held in the table as
/// an 8-byte pointer; the few prefixes with several paths are kept beside it (see
/// [`Table`]).
#[derive(Debug, Clone, Copy)]
enum Destination<'a> {
    One(&'a Arc<Candidate>),
    Many(&'a ManyPaths),
}

#[derive(Debug)]
struct ManyPaths {
    candidates: Vec<Arc<Candidate>>,
    /// Index of the best path, or [`NO_BEST`].
    best: u8,
    /// Bit i set: candidate i is in the multipath set.
    multipath: u32,
}

impl ManyPaths {
    /// Runs the decision process over two or more paths.
    fn from_paths(candidates: Vec<Arc<Candidate>>) -> ManyPaths {
        let (best, multipath) = select_indices(&candidates)
            .map(|(b, m)| (u8::try_from(b).unwrap_or(NO_BEST), m))
            .unwrap_or((NO_BEST, 0));
        ManyPaths {
            candidates,
            best,
            multipath,
        }
    }
}

impl<'a> Destination<'a> {
    fn candidates(self) -> &'a [Arc<Candidate>] {
        match self {
            Destination::One(c) => std::slice::from_ref(c),
            Destination::Many(m) => &m.candidates,
        }
    }

    fn best_index(self) -> usize {
        match self {
            Destination::One(_) => 0,
            Destination::Many(m) => usize::from(m.best),
        }
    }

    fn best(self) -> Option<&'a Candidate> {
        self.candidates().get(self.best_index()).map(|c| &**c)
    }

    fn selection(self) -> Option<Best> {
        let best = self.best()?.clone();
        let mut next_hops: NextHops = smallvec![best.route.next_hop.address];
        if let Destination::Many(m) = self {
            for (i, c) in m.candidates.iter().enumerate().take(32) {
                let nh = c.route.next_hop.address;
                if m.multipath & (1 << i) != 0 && !next_hops.contains(&nh) {
                    next_hops.push(nh);
                }
            }
        }
        Some(Best { best, next_hops })
    }
}

/// One family's prefixes. `one` holds every prefix of the table with its path when it has
/// a single one (a 4-byte id into `paths`, where the prefixes of one UPDATE share one entry;
/// a [`PrefixMap`]: a hash table, so a full table arriving in hash order costs a probe per
/// prefix rather than a cold tree walk);
/// a prefix with several paths is in `many` too, and its `one` entry then only marks it
/// present (it holds one of its paths). Reads check `many` first, and only when it is not
/// empty: a full table from one peer never looks at it.
#[derive(Debug)]
struct Table<K> {
    one: PrefixMap<K, PathId>,
    many: BTreeMap<K, ManyPaths>,
    paths: Paths,
}

impl<K> Default for Table<K> {
    fn default() -> Self {
        Table {
            one: PrefixMap::default(),
            many: BTreeMap::new(),
            paths: Paths::default(),
        }
    }
}

impl<K: Ord + Copy + Hash + Default> Table<K> {
    fn get(&self, key: &K) -> Option<Destination<'_>> {
        let one = self.paths.get(*self.one.get(key)?)?;
        Some(self.view(key, one))
    }

    /// The destination of a prefix found in `one` with path `one`.
    fn view<'a>(&'a self, key: &K, one: &'a Arc<Candidate>) -> Destination<'a> {
        if !self.many.is_empty() {
            if let Some(m) = self.many.get(key) {
                return Destination::Many(m);
            }
        }
        Destination::One(one)
    }

    /// Sets the single path of `key` (in `one`), releasing the one it replaces.
    fn set_one(&mut self, key: K, path: &Arc<Candidate>) {
        if let Some(&held) = self.one.get(&key) {
            if self.paths.get(held).is_some_and(|p| Arc::ptr_eq(p, path)) {
                return;
            }
        }
        let id = self.paths.intern(path);
        if let Some(old) = self.one.insert(key, id) {
            self.paths.release(old);
        }
    }

    /// Removes `key` from `one`.
    fn remove_one(&mut self, key: &K) {
        if let Some(old) = self.one.remove(key) {
            self.paths.release(old);
        }
    }

    fn len(&self) -> usize {
        self.one.len()
    }

    /// Every prefix after `after` (from the start when `None`) with its destination, in
    /// order.
    fn after<'a>(&'a self, after: Option<K>) -> impl Iterator<Item = (K, Destination<'a>)> + 'a {
        let lo = match after {
            Some(k) => Excluded(k),
            None => Unbounded,
        };
        self.one
            .range_from(lo)
            .filter_map(move |(k, id)| Some((k, self.view(&k, self.paths.get(*id)?))))
    }
}

/// The Loc-RIB: every usable path per prefix, and the selected one. IPv4 and IPv6 live
/// in separate tables so IPv4 keys stay five bytes.
#[derive(Debug, Default)]
pub struct LocRib {
    v4: Table<Ipv4Net>,
    v6: Table<Ipv6Net>,
}

impl LocRib {
    /// Sets (Some) or removes (None) the path of `source` for `prefix` and runs the
    /// decision process for it.
    pub fn update(
        &mut self,
        prefix: IpNet,
        source: Source,
        candidate: Option<Candidate>,
    ) -> Updated {
        let candidate = candidate.map(Arc::new);
        self.update_shared(prefix, source, candidate.as_ref())
    }

    /// [`LocRib::update`] with a candidate shared between prefixes (every prefix of one
    /// UPDATE has the same path): the table keeps the `Arc` once for all of them, not a
    /// copy or a reference count per prefix.
    pub fn update_shared(
        &mut self,
        prefix: IpNet,
        source: Source,
        candidate: Option<&Arc<Candidate>>,
    ) -> Updated {
        match prefix {
            IpNet::V4(p) => update_in(&mut self.v4, p, source, candidate),
            IpNet::V6(p) => update_in(&mut self.v6, p, source, candidate),
        }
    }

    /// Prepares the updates of many prefixes about to come one by one (the prefixes of one
    /// UPDATE): the table memory each will touch is fetched for all of them at once, so
    /// the cache misses overlap instead of coming one per prefix. Changes nothing visible.
    pub fn warm(&self, prefixes: &[IpNet]) {
        let v4 = prefixes.iter().filter_map(|p| match p {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        });
        self.v4.one.warm(v4);
        let v6 = prefixes.iter().filter_map(|p| match p {
            IpNet::V4(_) => None,
            IpNet::V6(p) => Some(*p),
        });
        self.v6.one.warm(v6);
    }

    fn dest(&self, prefix: &IpNet) -> Option<Destination<'_>> {
        match prefix {
            IpNet::V4(p) => self.v4.get(p),
            IpNet::V6(p) => self.v6.get(p),
        }
    }

    /// The selected route for a prefix.
    pub fn best(&self, prefix: &IpNet) -> Option<Best> {
        self.dest(prefix).and_then(Destination::selection)
    }

    /// The single best path for a prefix, without building the multipath set.
    pub fn best_candidate(&self, prefix: &IpNet) -> Option<&Candidate> {
        self.dest(prefix).and_then(Destination::best)
    }

    /// [`LocRib::best`] for many prefixes at once, in ascending order (as `IpNet` sorts:
    /// IPv4 first); the results come in the same order.
    pub fn selections_sorted(&self, prefixes: &[IpNet]) -> Vec<Option<Best>> {
        let mut out = Vec::with_capacity(prefixes.len());
        self.walk_sorted(prefixes, |d| out.push(d.and_then(Destination::selection)));
        out
    }

    /// Calls `f` with the destination of each prefix, in order; `prefixes` ascend.
    fn walk_sorted<'a>(&'a self, prefixes: &[IpNet], mut f: impl FnMut(Option<Destination<'a>>)) {
        debug_assert!(prefixes.windows(2).all(|w| w[0] <= w[1]), "prefixes ascend");
        let v4 = prefixes.iter().filter_map(|p| match p {
            IpNet::V4(p) => Some(*p),
            IpNet::V6(_) => None,
        });
        walk_table_sorted(&self.v4, v4, &mut f);
        let v6 = prefixes.iter().filter_map(|p| match p {
            IpNet::V4(_) => None,
            IpNet::V6(p) => Some(*p),
        });
        walk_table_sorted(&self.v6, v6, &mut f);
    }

    /// The path `source` gave for `prefix` (a look into that source's Adj-RIB-In).
    pub fn candidate(&self, prefix: &IpNet, source: Source) -> Option<&Candidate> {
        self.dest(prefix)
            .and_then(|d| d.candidates().iter().find(|c| c.source == source))
            .map(|c| &**c)
    }

    /// Every prefix with its selection.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, Best)> + '_ {
        self.prefixes()
            .filter_map(|p| self.best(&p).map(|b| (p, b)))
    }

    /// Every prefix in the table.
    pub fn prefixes(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .one
            .range_from(Unbounded)
            .map(|(p, _)| IpNet::V4(p))
            .chain(self.v6.one.range_from(Unbounded).map(|(p, _)| IpNet::V6(p)))
    }

    /// Up to `max` prefixes of `family` that sort after `after` (all when `None`), in
    /// order: a cursor for work done in pieces, such as resending a table to a peer.
    pub fn prefixes_after(&self, family: Family, after: Option<&IpNet>, max: usize) -> Vec<IpNet> {
        match family {
            Family::Ipv4Unicast => {
                let lo = match after {
                    Some(IpNet::V4(p)) => Excluded(*p),
                    _ => Unbounded,
                };
                let keys = self.v4.one.range_from(lo).map(|(p, _)| IpNet::V4(p));
                keys.take(max).collect()
            }
            Family::Ipv6Unicast => {
                let lo = match after {
                    Some(IpNet::V6(p)) => Excluded(*p),
                    _ => Unbounded,
                };
                let keys = self.v6.one.range_from(lo).map(|(p, _)| IpNet::V6(p));
                keys.take(max).collect()
            }
        }
    }

    /// Up to `max` selections after `after` (from the start when `None`), IPv4 before
    /// IPv6: pass the last prefix returned to get the next page. For readers that must
    /// not copy the whole table in one go (the speaker task serves other work between
    /// pages).
    pub fn page(&self, after: Option<&IpNet>, max: usize) -> Vec<(IpNet, Best)> {
        let mut out = Vec::with_capacity(max.min(self.len()));
        if !matches!(after, Some(IpNet::V6(_))) {
            let lo = match after {
                Some(IpNet::V4(p)) => Some(*p),
                _ => None,
            };
            out.extend(
                self.v4
                    .after(lo)
                    .filter_map(|(p, d)| d.selection().map(|b| (IpNet::V4(p), b)))
                    .take(max),
            );
        }
        if out.len() < max {
            let lo = match after {
                Some(IpNet::V6(p)) => Some(*p),
                _ => None,
            };
            let rest = max - out.len();
            out.extend(
                self.v6
                    .after(lo)
                    .filter_map(|(p, d)| d.selection().map(|b| (IpNet::V6(p), b)))
                    .take(rest),
            );
        }
        out
    }

    /// Every prefix for which `source` has a path: that source's Adj-RIB-In.
    pub fn prefixes_from(&self, source: Source) -> Vec<IpNet> {
        let has = |d: Destination<'_>| d.candidates().iter().any(|c| c.source == source);
        self.v4
            .after(None)
            .filter(|(_, d)| has(*d))
            .map(|(p, _)| IpNet::V4(p))
            .chain(
                self.v6
                    .after(None)
                    .filter(|(_, d)| has(*d))
                    .map(|(p, _)| IpNet::V6(p)),
            )
            .collect()
    }

    /// Number of prefixes with a selected route.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keys looked up per [`walk_table_sorted`] step: their slots are fetched together first.
const WALK_STEP: usize = 256;

/// Looks up keys (a hash probe each), in the order given, a step of them at a time with
/// their slots fetched together (the cache misses overlap).
fn walk_table_sorted<'a, K: Ord + Copy + Hash + Default>(
    table: &'a Table<K>,
    keys: impl Iterator<Item = K>,
    f: &mut impl FnMut(Option<Destination<'a>>),
) {
    let mut step: Vec<K> = Vec::with_capacity(WALK_STEP);
    let mut keys = keys.peekable();
    while keys.peek().is_some() {
        step.clear();
        step.extend(keys.by_ref().take(WALK_STEP));
        table.one.warm(step.iter().copied());
        for k in &step {
            f(table.get(k));
        }
    }
}

fn update_in<K: Ord + Copy + Hash + Default>(
    table: &mut Table<K>,
    key: K,
    source: Source,
    candidate: Option<&Arc<Candidate>>,
) -> Updated {
    let unchanged = |had: bool, has: bool| Updated {
        had,
        has,
        best_changed: false,
        best_source: None,
    };
    let has = candidate.is_some();
    // A prefix with several paths (never looked for while there is none).
    if !table.many.is_empty() {
        if let Some(m) = table.many.get_mut(&key) {
            let pos = m.candidates.iter().position(|c| c.source == source);
            let had = pos.is_some();
            match (pos, candidate) {
                (None, None) => return unchanged(had, has),
                (Some(i), Some(c)) if m.candidates.get(i) == Some(c) => return unchanged(had, has),
                _ => {}
            }
            let before = Destination::Many(m).selection();
            let mut paths = std::mem::take(&mut m.candidates);
            match (pos, candidate) {
                (Some(i), Some(c)) => paths[i] = c.clone(),
                (None, Some(c)) => paths.push(c.clone()),
                (Some(i), None) => {
                    paths.swap_remove(i);
                }
                (None, None) => {}
            }
            let after = if paths.len() >= 2 {
                *m = ManyPaths::from_paths(paths);
                let after = Destination::Many(m).selection();
                // The `one` entry keeps one of the current paths (not a replaced one).
                if let Some(first) = m.candidates.first().cloned() {
                    table.set_one(key, &first);
                }
                after
            } else {
                table.many.remove(&key);
                match paths.pop() {
                    Some(c) => {
                        let after = Destination::One(&c).selection();
                        table.set_one(key, &c);
                        after
                    }
                    None => {
                        table.remove_one(&key);
                        None
                    }
                }
            };
            let best_changed = before != after;
            return Updated {
                had,
                has,
                best_changed,
                best_source: after.filter(|_| best_changed).map(|b| b.best.source),
            };
        }
    }
    // No path or one: the common cases (a new prefix, a path replaced).
    let slot = match table.one.slot(key) {
        Slot::Vacant(v) => {
            let Some(c) = candidate else {
                return unchanged(false, false);
            };
            v.insert(table.paths.intern(c));
            return Updated {
                had: false,
                has,
                best_changed: true,
                best_source: Some(c.source),
            };
        }
        Slot::Occupied(slot) => slot,
    };
    let only_id = *slot;
    let Some(only) = table.paths.get(only_id) else {
        // Not reachable: an id in the table always has its path.
        return unchanged(false, false);
    };
    if only.source == source {
        return match candidate {
            Some(c) if only == c => unchanged(true, true),
            Some(c) => {
                *slot = table.paths.intern(c);
                table.paths.release(only_id);
                Updated {
                    had: true,
                    has: true,
                    best_changed: true,
                    best_source: Some(source),
                }
            }
            None => {
                table.remove_one(&key);
                Updated {
                    had: true,
                    has: false,
                    best_changed: true,
                    best_source: None,
                }
            }
        };
    }
    // A second source for the prefix: it joins `many`.
    let Some(c) = candidate else {
        return unchanged(false, false);
    };
    let before = Destination::One(only).selection();
    let m = ManyPaths::from_paths(vec![only.clone(), c.clone()]);
    let after = Destination::Many(&m).selection();
    table.many.insert(key, m);
    let best_changed = before != after;
    Updated {
        had: false,
        has: true,
        best_changed,
        best_source: after.filter(|_| best_changed).map(|b| b.best.source),
    }
}

/// The decision process of RFC 4271 §9.1.2.2 over one prefix's candidates, as a sequence
/// of eliminations. Local routes win outright. What survives steps a–e (local preference,
/// AS_PATH length, ORIGIN, MED within one neighbour AS, eBGP over iBGP) is the multipath
/// set; the final tie breaks (BGP Identifier, CLUSTER_LIST length, peer address) choose
/// the single best.
pub fn select(candidates: &[Candidate]) -> Option<Best> {
    let mut paths: Vec<Arc<Candidate>> = candidates.iter().cloned().map(Arc::new).collect();
    match paths.len() {
        0 => None,
        1 => paths.pop().and_then(|c| Destination::One(&c).selection()),
        _ => Destination::Many(&ManyPaths::from_paths(paths)).selection(),
    }
}

/// [`select`] as indices: the best path and a bit mask of the multipath set (the first
/// 32 candidates can take part in multipath).
fn select_indices(candidates: &[Arc<Candidate>]) -> Option<(usize, u32)> {
    if candidates.is_empty() {
        return None;
    }
    if let Some(i) = candidates.iter().position(|c| c.source == Source::Local) {
        return Some((i, 1u32.checked_shl(i as u32).unwrap_or(0)));
    }
    let mut set: Vec<(usize, &Candidate)> = candidates
        .iter()
        .map(|c| &**c)
        .enumerate()
        .take(255)
        .collect();
    keep_min(&mut set, |c| std::cmp::Reverse(c.local_pref()));
    keep_min(&mut set, |c| c.route.attrs.as_path_len());
    keep_min(&mut set, |c| c.route.attrs.origin);
    // MED is compared only between routes from the same neighbouring AS; a missing MED
    // is the lowest value (§9.1.2.2 c).
    let snapshot = set.clone();
    set.retain(|(_, c)| {
        let med = c.route.attrs.med.unwrap_or(0);
        let nas = c.route.attrs.first_as();
        !snapshot
            .iter()
            .any(|(_, o)| o.route.attrs.first_as() == nas && o.route.attrs.med.unwrap_or(0) < med)
    });
    if set.iter().any(|(_, c)| c.ebgp) {
        set.retain(|(_, c)| c.ebgp);
    }
    let multipath = set
        .iter()
        .filter(|(i, _)| *i < 32)
        .fold(0u32, |m, (i, _)| m | (1 << i));
    let mut tie = set;
    keep_min(&mut tie, |c| c.tie_id());
    keep_min(&mut tie, |c| c.route.attrs.cluster_list.len());
    keep_min(&mut tie, |c| c.peer_addr());
    let (best, _) = *tie.first()?;
    Some((best, multipath))
}

fn keep_min<K: Ord, F: Fn(&Candidate) -> K>(set: &mut Vec<(usize, &Candidate)>, key: F) {
    if let Some(min) = set.iter().map(|(_, c)| key(c)).min() {
        set.retain(|(_, c)| key(c) == min);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{AsSegment, Origin};

    fn cand(peer: [u8; 4], ebgp: bool, f: impl FnOnce(&mut PathAttributes)) -> Candidate {
        let mut attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![65000])],
            ..Default::default()
        };
        f(&mut attrs);
        let addr = IpAddr::from(peer);
        Candidate {
            source: Source::Peer(addr),
            route: Arc::new(Route {
                attrs,
                next_hop: NextHop::new(addr),
            }),
            ebgp,
            peer_id: Ipv4Addr::from(peer),
        }
    }

    fn best_of(c: &[Candidate]) -> IpAddr {
        select(c).expect("best").best.route.next_hop.address
    }

    #[test]
    fn local_pref_beats_shorter_path() {
        let a = cand([10, 0, 0, 1], false, |a| {
            a.local_pref = Some(200);
            a.as_path = vec![AsSegment::Sequence(vec![1, 2, 3])];
        });
        let b = cand([10, 0, 0, 2], false, |a| a.local_pref = Some(100));
        assert_eq!(best_of(&[b, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn shorter_as_path_then_origin() {
        let a = cand([10, 0, 0, 1], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2])]
        });
        let b = cand([10, 0, 0, 2], true, |_| {});
        assert_eq!(best_of(&[a.clone(), b]), IpAddr::from([10, 0, 0, 2]));
        let c = cand([10, 0, 0, 3], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2])];
            a.origin = Origin::Incomplete;
        });
        assert_eq!(best_of(&[c, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn as_set_counts_as_one() {
        let a = cand([10, 0, 0, 1], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1]), AsSegment::Set(vec![7, 8, 9])]
        });
        let b = cand([10, 0, 0, 2], true, |a| {
            a.as_path = vec![AsSegment::Sequence(vec![1, 2, 3])]
        });
        assert_eq!(best_of(&[b, a]), IpAddr::from([10, 0, 0, 1]));
    }

    #[test]
    fn med_only_within_same_neighbour_as() {
        // Same neighbour AS: lower MED wins.
        let a = cand([10, 0, 0, 1], true, |a| a.med = Some(50));
        let b = cand([10, 0, 0, 2], true, |a| a.med = Some(10));
        assert_eq!(best_of(&[a.clone(), b]), IpAddr::from([10, 0, 0, 2]));
        // Different neighbour AS: MED is not compared; falls to router id.
        let c = cand([10, 0, 0, 3], true, |a| {
            a.med = Some(5);
            a.as_path = vec![AsSegment::Sequence(vec![65001])];
        });
        let sel = select(&[a, c]).expect("best");
        assert_eq!(sel.best.route.next_hop.address, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(sel.next_hops.len(), 2, "both survive to the multipath set");
    }

    #[test]
    fn ebgp_over_ibgp_then_router_id_then_address() {
        let i = cand([10, 0, 0, 1], false, |_| {});
        let e = cand([10, 0, 0, 9], true, |_| {});
        assert_eq!(best_of(&[i, e]), IpAddr::from([10, 0, 0, 9]));
        let mut x = cand([10, 0, 0, 5], false, |_| {});
        x.peer_id = Ipv4Addr::new(1, 1, 1, 1);
        let y = cand([10, 0, 0, 4], false, |_| {});
        assert_eq!(best_of(&[y, x]), IpAddr::from([10, 0, 0, 5]));
    }

    #[test]
    fn equal_paths_are_multipath_with_best_first() {
        let a = cand([10, 0, 0, 2], false, |_| {});
        let b = cand([10, 0, 0, 1], false, |_| {});
        let sel = select(&[a, b]).expect("best");
        assert_eq!(
            sel.next_hops.to_vec(),
            vec![IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2])]
        );
    }

    #[test]
    fn loc_rib_reports_only_real_changes() {
        let mut rib = LocRib::default();
        let p: IpNet = "10.244.1.0/26".parse().expect("prefix");
        let a = cand([10, 0, 0, 1], false, |_| {});
        let b = cand([10, 0, 0, 2], false, |a| a.local_pref = Some(50));
        assert!(rib.update(p, a.source, Some(a.clone())).best_changed);
        assert!(
            !rib.update(p, a.source, Some(a.clone())).best_changed,
            "same path"
        );
        let u = rib.update(p, b.source, Some(b.clone()));
        assert!(!u.best_changed && !u.had && u.has, "worse path");
        assert!(rib.update(p, a.source, None).best_changed, "best moved");
        assert_eq!(
            rib.best(&p).expect("b remains").best.source,
            Source::Peer(IpAddr::from([10, 0, 0, 2]))
        );
        assert_eq!(rib.prefixes_from(b.source), vec![p]);
        let u = rib.update(p, b.source, None);
        assert!(u.best_changed && u.had && !u.has);
        assert!(rib.best(&p).is_none());
        assert!(rib.is_empty());
    }

    #[test]
    fn a_prefix_moves_between_one_and_many_paths_and_stays_consistent() {
        let mut rib = LocRib::default();
        let p: IpNet = "10.244.1.0/26".parse().expect("prefix");
        let q: IpNet = "10.244.2.0/26".parse().expect("prefix");
        let v6: IpNet = "fd00:10:244:1::/122".parse().expect("prefix");
        let a = cand([10, 0, 0, 1], true, |_| {});
        let b = cand([10, 0, 0, 2], true, |_| {});
        let c = cand([10, 0, 0, 3], true, |x| x.local_pref = Some(50));
        let nh = |r: &LocRib, x: &IpNet| r.best(x).map(|b| b.next_hops.to_vec());
        // Neighbours with one path each, before and after, so paging crosses the prefix.
        for x in [q, v6] {
            rib.update(x, a.source, Some(a.clone()));
        }
        let u = rib.update(p, a.source, Some(a.clone()));
        assert_eq!((u.had, u.has, u.best_changed), (false, true, true));
        assert_eq!(u.best_source, Some(a.source));
        // A second source: multipath, a first (lower identifier).
        let u = rib.update(p, b.source, Some(b.clone()));
        assert_eq!((u.had, u.has, u.best_changed), (false, true, true));
        assert_eq!(u.best_source, Some(a.source));
        assert_eq!(
            nh(&rib, &p),
            Some(vec![a.route.next_hop.address, b.route.next_hop.address])
        );
        // A third, worse one: nothing visible moves.
        let u = rib.update(p, c.source, Some(c.clone()));
        assert_eq!(
            (u.had, u.has, u.best_changed, u.best_source),
            (false, true, false, None)
        );
        assert_eq!(rib.len(), 3);
        assert_eq!(
            rib.candidate(&p, c.source).map(|x| x.source),
            Some(c.source)
        );
        // The best path replaced by a worse one from the same source: b is best alone.
        let worse_a = cand([10, 0, 0, 1], true, |x| x.local_pref = Some(10));
        let u = rib.update(p, a.source, Some(worse_a.clone()));
        assert_eq!((u.had, u.has, u.best_changed), (true, true, true));
        assert_eq!(u.best_source, Some(b.source));
        assert_eq!(nh(&rib, &p), Some(vec![b.route.next_hop.address]));
        // Sorted lookups, paging and the Adj-RIB-In view agree with single lookups.
        let mut keys = vec![p, q, v6];
        keys.sort();
        let sorted: Vec<Option<Source>> = rib
            .selections_sorted(&keys)
            .into_iter()
            .map(|x| x.map(|x| x.best.source))
            .collect();
        let single: Vec<Option<Source>> = keys
            .iter()
            .map(|k| rib.best_candidate(k).map(|x| x.source))
            .collect();
        assert_eq!(sorted, single);
        let page: Vec<(IpNet, Source)> = rib
            .page(None, 10)
            .into_iter()
            .map(|(k, b)| (k, b.best.source))
            .collect();
        assert_eq!(page, vec![(p, b.source), (q, a.source), (v6, a.source)]);
        assert_eq!(rib.page(Some(&p), 1)[0].0, q);
        assert_eq!(rib.prefixes_from(c.source), vec![p]);
        assert_eq!(rib.prefixes_from(a.source), vec![p, q, v6]);
        // Down to two paths, then one, then none.
        let u = rib.update(p, b.source, None);
        assert_eq!((u.had, u.has, u.best_changed), (true, false, true));
        assert_eq!(u.best_source, Some(c.source));
        let u = rib.update(p, c.source, None);
        assert_eq!((u.had, u.has, u.best_changed), (true, false, true));
        assert_eq!(u.best_source, Some(a.source));
        assert_eq!(nh(&rib, &p), Some(vec![a.route.next_hop.address]));
        assert!(rib.candidate(&p, c.source).is_none());
        let u = rib.update(p, a.source, None);
        assert_eq!(
            (u.had, u.has, u.best_changed, u.best_source),
            (true, false, true, None)
        );
        assert!(rib.best(&p).is_none());
        assert_eq!(rib.prefixes().collect::<Vec<_>>(), vec![q, v6]);
        assert_eq!(rib.len(), 2);
    }

    /// The prefixes of one UPDATE share one held path; replacing, moving through several
    /// paths and withdrawing keep its count of users right, and the last one drops it.
    #[test]
    fn prefixes_of_one_update_share_one_path_until_the_last_goes() {
        let mut rib = LocRib::default();
        let a = Arc::new(cand([10, 0, 0, 1], true, |_| {}));
        let b = Arc::new(cand([10, 0, 0, 2], true, |_| {}));
        let a2 = Arc::new(cand([10, 0, 0, 1], true, |x| x.local_pref = Some(10)));
        let p =
            |i: u32| IpNet::V4(Ipv4Net::new(Ipv4Addr::from((20 << 24) + (i << 8)), 24).expect("p"));
        for i in 0..1000 {
            rib.update_shared(p(i), a.source, Some(&a));
        }
        assert_eq!(rib.v4.paths.live(), 1);
        assert_eq!(
            Arc::strong_count(&a),
            2,
            "held once for a thousand prefixes"
        );
        // The same again changes nothing.
        for i in 0..1000 {
            let u = rib.update_shared(p(i), a.source, Some(&a));
            assert!(!u.best_changed);
        }
        assert_eq!(rib.v4.paths.live(), 1);
        // Half replaced by a new path from the same peer.
        for i in 0..500 {
            let u = rib.update_shared(p(i), a.source, Some(&a2));
            assert!(u.best_changed);
        }
        assert_eq!(rib.v4.paths.live(), 2);
        // A second peer for a few: they go through `many` and back.
        for i in 490..510 {
            rib.update_shared(p(i), b.source, Some(&b));
        }
        for i in 490..510 {
            let u = rib.update_shared(p(i), b.source, None);
            assert!(u.had && !u.has);
        }
        assert_eq!(rib.v4.paths.live(), 2);
        for i in 0..1000 {
            let want = if i < 500 { &a2 } else { &a };
            assert_eq!(rib.best_candidate(&p(i)), Some(&**want), "{i}");
        }
        // Withdrawn: the first path goes with its last prefix.
        for i in 500..1000 {
            rib.update_shared(p(i), a.source, None);
        }
        assert_eq!(rib.v4.paths.live(), 1);
        assert_eq!(Arc::strong_count(&a), 1, "no longer held");
        for i in 0..500 {
            rib.update_shared(p(i), a.source, None);
        }
        assert_eq!(rib.v4.paths.live(), 0);
        assert!(rib.is_empty());
        assert_eq!(Arc::strong_count(&a2), 1);
        assert_eq!(Arc::strong_count(&b), 1);
    }

    #[test]
    fn prefix_set_takes_each_prefix_once_in_order() {
        let v4 =
            |i: u32| IpNet::V4(Ipv4Net::new(Ipv4Addr::from((20 << 24) + (i << 8)), 24).expect("p"));
        let v6: IpNet = "2001:db8::/48".parse().expect("p");
        let mut set = PrefixSet::default();
        assert!(set.is_empty());
        // Out of order, with repeats, more than one compaction's worth.
        for i in (0..10_000u32).rev().chain(0..10_000).chain([5, 5, 5]) {
            set.insert(v4(i));
        }
        set.insert(v6);
        let first = set.take(3);
        assert_eq!(first, vec![v4(0), v4(1), v4(2)]);
        // Added while older entries wait: a take never holds a prefix twice.
        set.insert(v4(1));
        set.insert(v4(9_999));
        let mut all = first;
        loop {
            let t = set.take(4_000);
            if t.is_empty() {
                break;
            }
            let mut sorted = t.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(t, sorted, "ascending, each once");
            all.extend(t);
        }
        assert!(set.is_empty());
        let mut want: Vec<IpNet> = (0..10_000).map(v4).chain([v6, v4(1)]).collect();
        want.sort();
        all.sort();
        assert_eq!(
            all, want,
            "every prefix taken; the one added again taken again"
        );
    }

    #[test]
    fn sorted_lookups_match_single_lookups() {
        let mut rib = LocRib::default();
        let a = cand([10, 0, 0, 1], true, |_| {});
        // Every third /24 of a run, a distant one, and IPv6: runs, gaps and jumps.
        let held: Vec<IpNet> = (0..300u32)
            .filter(|i| i % 3 != 0)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from((20 << 24) + (i << 8)), 24).expect("p")))
            .chain(
                ["198.51.100.0/24", "2001:db8::/48"]
                    .iter()
                    .map(|p| p.parse().expect("p")),
            )
            .collect();
        for p in &held {
            rib.update(*p, a.source, Some(a.clone()));
        }
        let mut asked: Vec<IpNet> = (0..400u32)
            .map(|i| IpNet::V4(Ipv4Net::new(Ipv4Addr::from((20 << 24) + (i << 8)), 24).expect("p")))
            .chain(
                [
                    "10.0.0.0/8",
                    "198.51.100.0/24",
                    "198.51.100.0/24",
                    "2001:db8::/48",
                    "2001:db8:1::/48",
                ]
                .iter()
                .map(|p| p.parse().expect("p")),
            )
            .collect();
        asked.sort();
        let sel = rib.selections_sorted(&asked);
        assert_eq!(sel.len(), asked.len());
        let mut found = 0;
        for (i, p) in asked.iter().enumerate() {
            assert_eq!(sel[i], rib.best(p), "{p}");
            assert_eq!(
                sel[i].as_ref().map(|s| &s.best),
                rib.best_candidate(p),
                "{p}"
            );
            found += usize::from(sel[i].is_some());
        }
        assert_eq!(
            found,
            held.len() + 1,
            "every held prefix found, the repeated one twice"
        );
    }

    #[test]
    fn paging_and_cursors_visit_every_prefix_once_in_order() {
        let mut rib = LocRib::default();
        let all: Vec<IpNet> = [
            "10.0.0.0/24",
            "10.0.1.0/24",
            "10.0.2.0/24",
            "192.0.2.0/24",
            "2001:db8::/48",
            "2001:db8:1::/48",
        ]
        .iter()
        .map(|p| p.parse().expect("prefix"))
        .collect();
        for p in &all {
            rib.update(
                *p,
                Source::Local,
                Some(cand([198, 18, 0, 1], false, |_| {})),
            );
        }
        // Pages of two, IPv4 first, each page starting after the last prefix returned.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = rib.page(after.as_ref(), 2);
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(*last);
            seen.extend(page.into_iter().map(|(p, _)| p));
        }
        assert_eq!(seen, all);
        // The resend cursor stays within its family.
        let v4 = rib.prefixes_after(Family::Ipv4Unicast, Some(&all[1]), 10);
        assert_eq!(v4, all[2..4].to_vec());
        let v6 = rib.prefixes_after(Family::Ipv6Unicast, None, 1);
        assert_eq!(v6, all[4..5].to_vec());
        assert!(rib
            .prefixes_after(Family::Ipv6Unicast, Some(&all[5]), 10)
            .is_empty());
    }
}
