//! Installs ferrovia's routes into the kernel over rtnetlink.
//!
//! # What is ours
//!
//! Every route ferrovia installs carries the route protocol [`RTPROT_FERROVIA`] (0xf1 = 241;
//! `ip route show proto 0xf1` lists them) and lives in one configured table (main, 254, by
//! default) at one metric ([`DEFAULT_METRIC`], 25). Dumps ask the kernel for that protocol
//! and table only (and filter again here), deletions carry the protocol so the kernel itself
//! refuses to delete anything else, and a route is only ever *replaced* when our own
//! bookkeeping says the route at that key (table, prefix, metric) is ours. New prefixes are
//! created with `NLM_F_EXCL`: if a route of another protocol (static, BIRD, FRR, DHCP...)
//! already holds the same prefix and metric, the kernel answers `EEXIST`, we leave it alone
//! and report the prefix in [`Kernel::conflicts`]. Routes of other protocols are never
//! modified.
//!
//! One kind of route of our protocol is not this module's: the host route to a pod that the
//! CNI wiring installs (`<pod>/32 dev <host end>`, a unicast route with an output device and
//! no gateway, at the kernel's default metric). This module never installs a route without
//! gateway, so its dumps skip such routes: reconcile and apply neither delete nor replace
//! them, and reconciling at start does not cut running pods off.
//!
//! Why not 0xbe (190), the number first proposed: iproute2 has no name for it, but Debian's
//! `frr` package maps 186–197 in `/etc/iproute2/rt_protos.d/frr.conf` (190 is `ripng`), and
//! FRR's zebra treats routes of those protocols as its own: started in a namespace holding a
//! proto-190 route, zebra 8.4 adopted it as a RIPng route and installed its own copy at metric
//! 20 (checked here), and it removes such routes when it sweeps or exits. 241 is in no list we
//! know of (kernel: 0–18, 42, 99, 186–192; FRR: 11, 42, 186–198; BIRD: 12), and zebra shows a
//! proto-241 route as a foreign kernel route and leaves it alone. The metric is distinct from
//! FRR's (20) and BIRD's (32) for the same reason: the kernel's REPLACE matches on (prefix,
//! metric) regardless of protocol, so a daemon at our metric would replace our routes.
//!
//! # Route kinds
//!
//! - unicast with one next hop: `RTA_GATEWAY` (or `RTA_VIA` for an IPv6 next hop of an IPv4
//!   prefix, RFC 8950) and `RTA_OIF`;
//! - unicast multipath (ECMP): `RTA_MULTIPATH` with one `rtnexthop` per next hop (weight 1).
//!   Not nexthop objects: they need two objects' lifecycles per route group and buy nothing
//!   at our scale, while `RTA_MULTIPATH` is understood by every kernel and tool;
//! - blackhole, for the node's own blocks.
//!
//! # Next-hop resolution (recursive, like BIRD's iBGP default)
//!
//! A BGP next hop need not be on a connected network (an iBGP next hop is often another
//! node's loopback). Before installing, each distinct next hop is looked up in the kernel's
//! FIB the way a packet to it would be (`RTM_GETROUTE` with `RTM_F_FIB_MATCH`, i.e.
//! `ip route get fibmatch NH`), and:
//! - the covering route is connected (no gateway): the next hop is used as is, on that
//!   route's interface;
//! - the covering route has gateways: those gateways (and interfaces, and `onlink` flags) are
//!   used instead — an ECMP covering route gives an ECMP route;
//! - an IPv6 link-local next hop needs an interface and is used as is;
//! - no route, a local address, or a blackhole/unreachable/prohibit route: the next hop is
//!   unresolved. A route none of whose next hops resolve is not installed (and removed if it
//!   was); a multipath route is installed with the next hops that resolve. Both are
//!   reported by [`Kernel::unresolved`] and retried by [`Kernel::retry_pending`] and
//!   [`Kernel::reconcile`]. A route cannot resolve through itself.
//!
//! Resolution happens when a route is applied; nothing watches the underlay. After the
//! underlay changes (a link, a static or IGP route), call [`Kernel::reconcile`] (resolves
//! everything again) or [`Kernel::retry_pending`].
//!
//! # Batching
//!
//! 10,000 changes are not 10,000 round trips. Changes become route messages (`RTM_NEWROUTE`
//! with `NLM_F_REPLACE` for prefixes we already hold, `NLM_F_CREATE|NLM_F_EXCL` for new ones,
//! `RTM_DELROUTE` with our protocol and metric for removals); up to [`BATCH_MESSAGES`] of
//! them go into one datagram (fewer if the socket's receive buffer could not hold all their
//! rejections; `net.core.rmem_max` caps it). The kernel handles a datagram's messages in
//! order, so only the last message of a datagram asks for an acknowledgement: its ack means
//! every earlier message was handled, and the kernel reports the earlier messages' errors
//! without being asked. Up to [`WINDOW`] datagrams are in flight at once. If the receive
//! buffer overflows anyway (answers lost), that is noticed at once and reported. `ENOENT`/`ESRCH` on deletion
//! (already gone) counts as deleted. Any other rejection is returned as an error after the
//! whole batch is handled, naming the prefixes; the caller then runs [`Kernel::reconcile`].
//! After a broken connection or lost answers, the connection is reopened and the next
//! [`Kernel::apply`] first re-reads our routes from the kernel.
//!
//! # Reconciliation
//!
//! [`Kernel::reconcile`] dumps our routes (protocol 0xf1, our table, IPv4 and IPv6), resolves
//! the desired routes' next hops afresh, and applies the difference: deletes ours that are not
//! desired (or are at another metric, e.g. left by an earlier configuration), replaces ours
//! that differ, creates missing ones. Run it at start and after any error.

mod installed;
pub(crate) mod netlink;
mod resolve;
#[cfg(test)]
pub(crate) mod testns;
#[cfg(test)]
mod tests;

use installed::Installed;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use ipnet::IpNet;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteType};
use rtnetlink::packet_route::AddressFamily;
use tracing::{debug, info, warn};

use netlink::{Msg, Netlink, NlError, Rejection};
use resolve::{
    fib_of, is_link_local, resolve_through, route_metric, target_via, Fib, Hop, Resolution,
};

/// The route protocol of every route ferrovia installs (`proto 0xf1`, 241; see the module
/// documentation for why not 0xbe). Add `241 ferrovia` to
/// `/etc/iproute2/rt_protos.d/ferrovia.conf` to see `proto ferrovia` in `ip route`.
pub const RTPROT_FERROVIA: u8 = 0xf1;
/// The metric (priority) of our routes. A route's kernel key is (table, prefix, metric), so a
/// metric no common source uses keeps us and them from replacing each other: `ip route add`
/// 0 (IPv4), FRR 20, BIRD 32, DHCP clients 100 and up, IPv6 kernel and RA routes 256 and 1024.
/// For the same prefix the lower metric wins: static routes and FRR's beat ours.
pub const DEFAULT_METRIC: u32 = 25;
/// Route messages per datagram, at most. Fewer when the socket's receive buffer is small: the
/// kernel queues the answers to a whole datagram before we read any, and if every message of
/// it is rejected (say, 512 conflicts), each rejection echoes its request.
pub const BATCH_MESSAGES: usize = 512;
/// Bytes per datagram, at most (the kernel refuses datagrams larger than its send buffer).
const BATCH_BYTES: usize = 96 * 1024;
/// What one rejection costs in the receive buffer's accounting, over twice the length of the
/// message it echoes (skb and slab overhead; measured with a small buffer, see the tests).
const REJECTION_COST: usize = 1024;
/// Datagrams in flight at once.
pub const WINDOW: usize = 4;
/// IPv6 stores metric 0 as 1024 (IP6_RT_PRIO_USER).
const IP6_RT_PRIO_USER: u32 = 1024;

/// One next hop of a route, as BGP gives it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    pub gateway: IpAddr,
    /// The interface, required for an IPv6 link-local next hop; otherwise optional (the
    /// look-up is then restricted to this interface).
    pub interface: Option<String>,
}

impl From<IpAddr> for NextHop {
    fn from(gateway: IpAddr) -> NextHop {
        NextHop {
            gateway,
            interface: None,
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.interface {
            Some(dev) => write!(f, "{} dev {dev}", self.gateway),
            None => write!(f, "{}", self.gateway),
        }
    }
}

/// What a prefix's route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteKind {
    /// Forward to these next hops: one is a plain route, several an ECMP route.
    Unicast(Vec<NextHop>),
    /// Drop (the node's own blocks: their addresses that have no pod are not forwarded on).
    Blackhole,
}

impl RouteKind {
    /// A unicast route via several next hops (ECMP).
    pub fn ecmp(gateways: impl IntoIterator<Item = IpAddr>) -> RouteKind {
        RouteKind::Unicast(gateways.into_iter().map(NextHop::from).collect())
    }
}

/// What one [`Kernel::apply`] (or the apply step of a reconcile) did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyStats {
    /// Routes created.
    pub added: usize,
    /// Routes of ours replaced (next hops or kind changed).
    pub replaced: usize,
    /// Routes of ours deleted (including ones already gone).
    pub deleted: usize,
    /// Changes that matched what the kernel already has.
    pub unchanged: usize,
    /// Prefixes with at least one next hop that does not resolve.
    pub unresolved: usize,
    /// Prefixes not created because a route of another protocol holds the same key.
    pub conflicts: usize,
    /// Datagrams sent (round trips, give or take the window).
    pub requests: usize,
}

/// What one [`Kernel::reconcile`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    /// Our routes found in the kernel.
    pub found: usize,
    pub changes: ApplyStats,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(
        "cannot open an rtnetlink socket ({0}): ferrovia needs Linux with rtnetlink; check \
         that no seccomp or AppArmor profile denies netlink sockets to the agent"
    )]
    Socket(std::io::Error),
    #[error(
        "no permission to change routes in table {table}: run the agent as root or with \
         CAP_NET_ADMIN (in Kubernetes: hostNetwork and securityContext.capabilities.add \
         [NET_ADMIN])"
    )]
    Permission { table: u32 },
    #[error(
        "the rtnetlink connection failed ({0}); it was reopened: reconcile the routes to \
         repair changes that may have been lost"
    )]
    Connection(String),
    #[error(
        "the kernel's answers overflowed the netlink receive buffer and some were lost: \
         reconcile the routes; if this repeats, raise net.core.rmem_max"
    )]
    Overrun,
    #[error("cannot read the routes of table {table} from the kernel: {detail}")]
    Dump { table: u32, detail: String },
    #[error(
        "the kernel rejected {} route change(s) in table {table}, first {} ({}): check that \
         the next hops' interfaces exist and are up, then reconcile",
        failures.len(),
        failures.first().map(|f| f.0.to_string()).unwrap_or_default(),
        failures.first().map(|f| f.1.as_str()).unwrap_or_default()
    )]
    Rejected {
        table: u32,
        /// Each rejected prefix with the kernel's reason.
        failures: Vec<(IpNet, String)>,
        /// What the rest of the batch did.
        stats: ApplyStats,
    },
}

/// A desired route not (fully) installed because next hops did not resolve.
#[derive(Debug, Clone)]
struct Pending {
    kind: RouteKind,
    unresolved: Vec<IpAddr>,
}

enum OpKind {
    Create,
    Replace,
    Delete,
}

struct Op {
    prefix: IpNet,
    kind: OpKind,
    fib: Option<Fib>,
    /// For conflicts: what was desired.
    desired: Option<RouteKind>,
}

/// ferrovia's routes in one kernel routing table. See the module documentation.
pub struct Kernel {
    nl: Netlink,
    table: u32,
    metric: u32,
    /// Our routes in the kernel, at our metric.
    installed: Installed,
    /// Desired routes with next hops that did not resolve.
    pending: HashMap<IpNet, Pending>,
    /// Desired routes not created because another protocol's route holds the key.
    conflicts: HashMap<IpNet, RouteKind>,
    /// Our bookkeeping may be wrong (a connection broke mid-apply): re-read before applying.
    stale: bool,
    /// The receive buffer asked for (kept for reopening).
    rcvbuf: usize,
    /// [`REJECTION_COST`]; tests lower it to provoke an overrun.
    rejection_cost: usize,
}

impl Kernel {
    /// Opens an rtnetlink connection (in the calling thread's network namespace; the
    /// connection task runs on the current tokio runtime) for `table` at [`DEFAULT_METRIC`],
    /// and reads our routes already in the table. Call [`Kernel::reconcile`] next.
    pub async fn new(table: u32) -> Result<Kernel, KernelError> {
        Kernel::with_metric(table, DEFAULT_METRIC).await
    }

    /// Like [`Kernel::new`] with another metric for our routes.
    pub async fn with_metric(table: u32, metric: u32) -> Result<Kernel, KernelError> {
        Kernel::open(table, metric, netlink::RCVBUF).await
    }

    async fn open(table: u32, metric: u32, rcvbuf: usize) -> Result<Kernel, KernelError> {
        let nl = Netlink::open(rcvbuf).map_err(KernelError::Socket)?;
        let mut k = Kernel {
            nl,
            table,
            metric,
            installed: Installed::default(),
            pending: HashMap::new(),
            conflicts: HashMap::new(),
            stale: true,
            rcvbuf,
            rejection_cost: REJECTION_COST,
        };
        k.refresh().await?;
        Ok(k)
    }

    /// Our routes now in the kernel (by our bookkeeping, exact after a reconcile).
    pub fn installed(&self) -> usize {
        self.installed.len()
    }

    /// Prefixes with next hops that did not resolve, and those next hops (for status).
    /// A prefix listed here is not installed, unless some of its next hops did resolve.
    pub fn unresolved(&self) -> Vec<(IpNet, Vec<IpAddr>)> {
        let mut out: Vec<_> = self
            .pending
            .iter()
            .map(|(p, u)| (*p, u.unresolved.clone()))
            .collect();
        out.sort();
        out
    }

    /// Prefixes not installed because a route of another protocol holds the same prefix and
    /// metric in our table (for status).
    pub fn conflicts(&self) -> Vec<IpNet> {
        let mut out: Vec<_> = self.conflicts.keys().copied().collect();
        out.sort();
        out
    }

    /// Sets (`Some`) or removes (`None`) each prefix's route. Later entries for the same
    /// prefix win. Pipelined; see the module documentation. On `Err`, reconcile.
    pub async fn apply(
        &mut self,
        changes: Vec<(IpNet, Option<RouteKind>)>,
    ) -> Result<ApplyStats, KernelError> {
        self.ready().await?;
        self.apply_changes(changes).await
    }

    /// Tries again the routes whose next hops did not resolve and those that conflicted.
    pub async fn retry_pending(&mut self) -> Result<ApplyStats, KernelError> {
        let mut changes: Vec<(IpNet, Option<RouteKind>)> = self
            .pending
            .iter()
            .map(|(p, u)| (*p, Some(u.kind.clone())))
            .collect();
        changes.extend(self.conflicts.iter().map(|(p, k)| (*p, Some(k.clone()))));
        self.ready().await?;
        self.apply_changes(changes).await
    }

    /// Makes our routes in the table exactly `desired` (never touching other protocols'),
    /// resolving every next hop afresh.
    pub async fn reconcile(
        &mut self,
        desired: &HashMap<IpNet, RouteKind>,
    ) -> Result<ReconcileStats, KernelError> {
        self.reconcile_with(desired, false).await
    }

    /// Like [`Kernel::reconcile`], but our routes that `desired` lacks stay (they are
    /// taken into the bookkeeping): after a graceful restart they are the forwarding state
    /// kept for the routes the peers are about to send again. A later `reconcile` sweeps
    /// those that did not come back.
    pub async fn reconcile_keeping(
        &mut self,
        desired: &HashMap<IpNet, RouteKind>,
    ) -> Result<ReconcileStats, KernelError> {
        self.reconcile_with(desired, true).await
    }

    /// How many of our routes (this table, our protocol) the kernel has now.
    pub async fn count_ours(&mut self) -> Result<usize, KernelError> {
        if self.nl.is_closed() {
            self.reopen(NlError::Closed);
        }
        match self.dump().await {
            Ok((ours, strays)) => Ok(ours.len() + strays.len()),
            Err(e) => Err(self.fail_dump(e)),
        }
    }

    async fn reconcile_with(
        &mut self,
        desired: &HashMap<IpNet, RouteKind>,
        keep_others: bool,
    ) -> Result<ReconcileStats, KernelError> {
        if self.nl.is_closed() {
            self.reopen(NlError::Closed);
        }
        let (ours, strays) = match self.dump().await {
            Ok(d) => d,
            Err(e) => return Err(self.fail_dump(e)),
        };
        let found = ours.len() + strays.len();
        self.installed = Installed::from_map(ours);
        self.pending.clear();
        self.conflicts.clear();
        self.stale = false;

        let mut stats = ApplyStats::default();
        // Ours at another metric (an earlier configuration): delete those first, on their own,
        // so their answers cannot be mistaken for those of the routes at our metric.
        if !strays.is_empty() {
            let (table, strays_ref) = (self.table, &strays);
            // By index: a closure over references would make the future's `Send` depend on
            // every lifetime (rustc cannot prove it, and `tokio::spawn` needs it).
            let msgs = (0..strays.len()).map(move |i| {
                let (p, metric) = &strays_ref[i];
                netlink::del_route(p, table, *metric)
            });
            let (rejections, requests) = self.send(msgs).await?;
            stats.requests += requests;
            stats.deleted += strays.len();
            let failures: Vec<(IpNet, String)> = rejections
                .iter()
                .filter(|r| !matches!(r.errno, netlink::ENOENT | netlink::ESRCH))
                .map(|r| (r.prefix.unwrap_or(strays[0].0), describe(r)))
                .collect();
            if let Some(e) = self.check_failures(failures, &rejections, &stats) {
                return Err(e);
            }
        }

        // Removals first: a desired route for the same prefix comes later and wins.
        let mut changes: Vec<(IpNet, Option<RouteKind>)> = Vec::new();
        if !keep_others {
            changes.extend(self.installed.keys().map(|p| (p, None)));
        }
        changes.extend(desired.iter().map(|(p, k)| (*p, Some(k.clone()))));
        let s = self.apply_changes(changes).await?;
        stats.added += s.added;
        stats.replaced += s.replaced;
        stats.deleted += s.deleted;
        stats.unchanged += s.unchanged;
        stats.unresolved += s.unresolved;
        stats.conflicts += s.conflicts;
        stats.requests += s.requests;
        info!(
            table = self.table,
            found,
            added = stats.added,
            replaced = stats.replaced,
            deleted = stats.deleted,
            unchanged = stats.unchanged,
            unresolved = stats.unresolved,
            conflicts = stats.conflicts,
            "kernel routes reconciled"
        );
        Ok(ReconcileStats {
            found,
            changes: stats,
        })
    }

    // ----- internals -----

    /// Reopens a failed connection and re-reads stale bookkeeping.
    async fn ready(&mut self) -> Result<(), KernelError> {
        if self.nl.is_closed() {
            self.reopen(NlError::Closed);
        }
        if self.stale {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Re-reads our routes into the bookkeeping.
    async fn refresh(&mut self) -> Result<(), KernelError> {
        match self.dump().await {
            Ok((ours, _)) => {
                self.installed = Installed::from_map(ours);
                self.stale = false;
                Ok(())
            }
            Err(e) => Err(self.fail_dump(e)),
        }
    }

    /// Our routes in the table: those at our metric by prefix, and the others (prefix,
    /// metric) — strays of an earlier configuration.
    async fn dump(&self) -> Result<(HashMap<IpNet, Fib>, Vec<(IpNet, u32)>), NlError> {
        let mut ours = HashMap::new();
        let mut strays = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let routes = self
                .nl
                .dump_routes(family, self.table, RTPROT_FERROVIA)
                .await?;
            for r in routes {
                let Some(prefix) = netlink::route_prefix(&r) else {
                    continue;
                };
                if r.header.tos != 0 || r.header.source_prefix_length != 0 {
                    // Not something we make, and a delete by prefix would not match it.
                    warn!(%prefix, "route of our protocol with TOS or source prefix: left alone");
                    continue;
                }
                if is_pod_host_route(&r) {
                    // A device route to a pod (`<pod>/32 dev <veth> scope link`): the CNI
                    // wiring owns those; this table never installs a route without gateway.
                    continue;
                }
                let metric = route_metric(&r);
                if metric == self.metric_for(&prefix) {
                    ours.insert(prefix, fib_of(&r));
                } else {
                    strays.push((prefix, metric));
                }
            }
        }
        Ok((ours, strays))
    }

    fn metric_for(&self, prefix: &IpNet) -> u32 {
        metric_for(self.metric, prefix)
    }

    /// Resolves every distinct next hop of `changes`.
    async fn resolve_all(
        &self,
        changes: &[(IpNet, Option<RouteKind>)],
    ) -> Result<HashMap<NextHop, Result<Resolution, String>>, NlError> {
        let mut wanted: HashSet<&NextHop> = HashSet::new();
        for (_, kind) in changes {
            if let Some(RouteKind::Unicast(nhs)) = kind {
                wanted.extend(nhs.iter());
            }
        }
        let mut links: HashMap<&str, Option<u32>> = HashMap::new();
        for nh in &wanted {
            if let Some(dev) = nh.interface.as_deref() {
                if !links.contains_key(dev) {
                    let idx = self.nl.link_index(dev).await?;
                    links.insert(dev, idx);
                }
            }
        }
        let links = &links;
        // Owned next hops: a stream of borrowed ones makes the future not `Send`-general
        // (rustc cannot prove the closure for every lifetime), which `tokio::spawn` needs.
        let owned: Vec<NextHop> = wanted.into_iter().cloned().collect();
        let results: Vec<_> = futures::stream::iter(owned)
            .map(|nh| async move {
                let r = self.resolve(&nh, links).await;
                (nh, r)
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut out = HashMap::with_capacity(results.len());
        for (nh, r) in results {
            out.insert(nh, r?);
        }
        Ok(out)
    }

    async fn resolve(
        &self,
        nh: &NextHop,
        links: &HashMap<&str, Option<u32>>,
    ) -> Result<Result<Resolution, String>, NlError> {
        let oif = match nh.interface.as_deref() {
            None => None,
            Some(dev) => match links.get(dev).copied().flatten() {
                Some(i) => Some(i),
                None => return Ok(Err(format!("no interface {dev}"))),
            },
        };
        let gw = nh.gateway;
        if gw.is_unspecified() || gw.is_multicast() || gw.is_loopback() {
            return Ok(Err(format!("{gw} is not a usable next hop")));
        }
        if let IpAddr::V6(v6) = gw {
            if is_link_local(&v6) {
                return Ok(match oif {
                    Some(ifindex) => Ok(Resolution {
                        hops: vec![Hop {
                            gateway: gw,
                            ifindex,
                            onlink: false,
                        }],
                        via_ours: None,
                    }),
                    None => Err(format!("link-local next hop {gw} needs an interface")),
                });
            }
        }
        Ok(match self.nl.fib_match(gw, oif).await? {
            None => Err(format!("no route to {gw}")),
            Some(covering) => resolve_through(&covering, gw),
        })
    }

    /// The heart of apply: resolve, diff against our bookkeeping, send, account. Later
    /// entries for the same prefix win.
    async fn apply_changes(
        &mut self,
        mut changes: Vec<(IpNet, Option<RouteKind>)>,
    ) -> Result<ApplyStats, KernelError> {
        // In place, without a second copy of the changes: prefix order (stable, so the
        // last entry of a prefix ends up last), then one entry per prefix, the last.
        for c in changes.iter_mut() {
            c.0 = c.0.trunc();
        }
        changes.sort_by_key(|a| a.0);
        changes.reverse();
        changes.dedup_by(|a, b| a.0 == b.0);
        changes.reverse();
        let resolved = match self.resolve_all(&changes).await {
            Ok(r) => r,
            Err(e) => return Err(self.fail(e)),
        };
        let mut stats = ApplyStats::default();
        let mut ops: Vec<Op> = Vec::new();
        // The changes are sorted: each lookup starts where the last one ended.
        let mut installed = self.installed.lookup();

        for (prefix, kind) in changes {
            self.pending.remove(&prefix);
            self.conflicts.remove(&prefix);
            let target = match &kind {
                None => None,
                Some(RouteKind::Blackhole) => Some(Fib::Blackhole),
                Some(RouteKind::Unicast(nhs)) => {
                    let (fib, unresolved) = target_via(&prefix, nhs, &resolved);
                    if !unresolved.is_empty() || fib.is_none() {
                        debug!(%prefix, ?unresolved, "next hops do not resolve");
                        stats.unresolved += 1;
                        self.pending.insert(
                            prefix,
                            Pending {
                                kind: RouteKind::Unicast(nhs.clone()),
                                unresolved,
                            },
                        );
                    }
                    fib
                }
            };
            let op = match (target, installed.get(&prefix)) {
                (None, None) => None,
                (None, Some(_)) => Some((OpKind::Delete, None)),
                (Some(t), Some(cur)) if *cur == t => {
                    stats.unchanged += 1;
                    None
                }
                (Some(t), Some(_)) => Some((OpKind::Replace, Some(t))),
                (Some(t), None) => Some((OpKind::Create, Some(t))),
            };
            if let Some((op_kind, fib)) = op {
                ops.push(Op {
                    prefix,
                    kind: op_kind,
                    fib,
                    desired: kind,
                });
            }
        }
        if ops.is_empty() {
            return Ok(stats);
        }

        // Built as the window takes them: a chunk's messages are never all in memory.
        let (table, metric, ops_ref) = (self.table, self.metric, &ops);
        let msgs = (0..ops.len()).map(move |i| op_msg(&ops_ref[i], table, metric));
        let (rejections, requests) = self.send(msgs).await?;
        stats.requests = requests;

        let mut rejected: HashMap<(IpNet, bool), &Rejection> = HashMap::new();
        let mut unattributed = Vec::new();
        for r in &rejections {
            match r.prefix {
                Some(p) => {
                    rejected.insert((p, r.is_delete), r);
                }
                None => unattributed.push(r),
            }
        }
        let mut failures: Vec<(IpNet, String)> = Vec::new();
        let mut done: Vec<(IpNet, Option<Fib>)> = Vec::with_capacity(ops.len());
        for op in ops {
            let is_delete = matches!(op.kind, OpKind::Delete);
            let rejection = rejected.get(&(op.prefix, is_delete)).copied();
            match (op.kind, rejection) {
                (OpKind::Delete, None) => {
                    done.push((op.prefix, None));
                    stats.deleted += 1;
                }
                (OpKind::Delete, Some(r))
                    if matches!(r.errno, netlink::ENOENT | netlink::ESRCH) =>
                {
                    done.push((op.prefix, None));
                    stats.deleted += 1;
                }
                (OpKind::Create, Some(r)) if r.errno == netlink::EEXIST => {
                    warn!(
                        prefix = %op.prefix,
                        table = self.table,
                        metric = self.metric,
                        "a route of another protocol holds this prefix and metric: not installed"
                    );
                    stats.conflicts += 1;
                    if let Some(k) = op.desired {
                        self.conflicts.insert(op.prefix, k);
                    }
                }
                (OpKind::Create, None) => {
                    if let Some(f) = op.fib {
                        done.push((op.prefix, Some(f)));
                    }
                    stats.added += 1;
                }
                (OpKind::Replace, None) => {
                    if let Some(f) = op.fib {
                        done.push((op.prefix, Some(f)));
                    }
                    stats.replaced += 1;
                }
                (_, Some(r)) => failures.push((op.prefix, describe(r))),
            }
        }
        self.installed.commit(done);
        for r in &unattributed {
            // An echo we could not read: our bookkeeping may be off.
            self.stale = true;
            failures.push((IpNet::default(), describe(r)));
        }
        match self.check_failures(failures, &rejections, &stats) {
            Some(e) => Err(e),
            None => Ok(stats),
        }
    }

    /// Turns rejections into the error to return, if any.
    fn check_failures(
        &self,
        failures: Vec<(IpNet, String)>,
        rejections: &[Rejection],
        stats: &ApplyStats,
    ) -> Option<KernelError> {
        if rejections
            .iter()
            .any(|r| matches!(r.errno, netlink::EPERM | netlink::EACCES))
        {
            return Some(KernelError::Permission { table: self.table });
        }
        if failures.is_empty() {
            return None;
        }
        for (p, why) in failures.iter().take(10) {
            warn!(prefix = %p, table = self.table, reason = %why, "kernel rejected route change");
        }
        Some(KernelError::Rejected {
            table: self.table,
            failures,
            stats: stats.clone(),
        })
    }

    /// Sends messages in batches with a bounded window; returns every rejection and the
    /// number of datagrams.
    async fn send(
        &mut self,
        msgs: impl Iterator<Item = Msg> + Send,
    ) -> Result<(Vec<Rejection>, usize), KernelError> {
        let made = AtomicUsize::new(0);
        let batches = Batches {
            msgs: msgs.peekable(),
            // Half the receive buffer for the rejections of one datagram, should all of it
            // fail.
            budget: self.nl.rcvbuf() / 2,
            rejection_cost: self.rejection_cost,
            made: &made,
        };
        let sent = self.nl.send_all(batches, WINDOW).await;
        let requests = made.load(Ordering::Relaxed);
        match sent {
            Ok(rejections) => Ok((rejections, requests)),
            Err(NlError::Overrun) => {
                // Answers were lost, and with them the requests still waiting for them.
                self.reopen(NlError::Overrun);
                Err(KernelError::Overrun)
            }
            Err(e) => Err(self.reopen(e)),
        }
    }

    /// After a broken connection: reopen it, mark the bookkeeping stale, describe.
    fn reopen(&mut self, e: NlError) -> KernelError {
        self.stale = true;
        let detail = nl_detail(&e);
        warn!(error = %detail, "rtnetlink connection broken: reopening");
        match Netlink::open(self.rcvbuf) {
            Ok(nl) => self.nl = nl,
            Err(e) => return KernelError::Socket(e),
        }
        KernelError::Connection(detail)
    }

    /// The error to return for a socket-level failure (reopening a broken connection).
    fn fail(&mut self, e: NlError) -> KernelError {
        match e {
            NlError::Kernel(netlink::EPERM | netlink::EACCES, _) => {
                KernelError::Permission { table: self.table }
            }
            NlError::Closed | NlError::Timeout => self.reopen(e),
            e => KernelError::Connection(nl_detail(&e)),
        }
    }

    /// Like [`Kernel::fail`], for a failed dump.
    fn fail_dump(&mut self, e: NlError) -> KernelError {
        match e {
            NlError::Closed | NlError::Timeout => self.reopen(e),
            e => KernelError::Dump {
                table: self.table,
                detail: nl_detail(&e),
            },
        }
    }
}

/// The route message of an op, in `table` at `metric`.
fn op_msg(op: &Op, table: u32, metric: u32) -> Msg {
    match (&op.kind, &op.fib) {
        (OpKind::Delete, _) | (_, None) => {
            netlink::del_route(&op.prefix, table, metric_for(metric, &op.prefix))
        }
        (OpKind::Create, Some(fib)) => {
            netlink::new_route(&op.prefix, table, metric, fib, NLM_F_CREATE | NLM_F_EXCL)
        }
        (OpKind::Replace, Some(fib)) => {
            netlink::new_route(&op.prefix, table, metric, fib, NLM_F_CREATE | NLM_F_REPLACE)
        }
    }
}

/// The metric the kernel stores for our routes to `prefix` at `metric`.
fn metric_for(metric: u32, prefix: &IpNet) -> u32 {
    match prefix {
        IpNet::V6(_) if metric == 0 => IP6_RT_PRIO_USER,
        _ => metric,
    }
}

/// Route messages cut into datagrams as the window asks for them: at most
/// [`BATCH_MESSAGES`] and [`BATCH_BYTES`] each, and no more than half the receive buffer
/// could take back should every message of the datagram be rejected.
struct Batches<'a, I: Iterator<Item = Msg>> {
    msgs: std::iter::Peekable<I>,
    budget: usize,
    rejection_cost: usize,
    /// Datagrams made so far.
    made: &'a AtomicUsize,
}

impl<I: Iterator<Item = Msg>> Iterator for Batches<'_, I> {
    type Item = Vec<Msg>;

    fn next(&mut self) -> Option<Vec<Msg>> {
        let mut cur: Vec<Msg> = Vec::new();
        let (mut bytes, mut cost) = (0, 0);
        while let Some(m) = self.msgs.peek() {
            let len = rtnetlink::packet_core::Emitable::buffer_len(m);
            let c = self.rejection_cost + 2 * len;
            if !cur.is_empty()
                && (cur.len() >= BATCH_MESSAGES
                    || bytes + len > BATCH_BYTES
                    || cost + c > self.budget)
            {
                break;
            }
            bytes += len;
            cost += c;
            cur.extend(self.msgs.next());
        }
        if cur.is_empty() {
            return None;
        }
        self.made.fetch_add(1, Ordering::Relaxed);
        Some(cur)
    }
}

fn describe(r: &Rejection) -> String {
    netlink::describe(r.errno, r.text.as_deref())
}

fn nl_detail(e: &NlError) -> String {
    match e {
        NlError::Closed => "the netlink socket closed".into(),
        NlError::Timeout => "no answer from the kernel within 10 s".into(),
        NlError::Kernel(errno, text) => netlink::describe(*errno, text.as_deref()),
        NlError::DumpInterrupted => {
            "the kernel kept interrupting the dump (routes changing too fast)".into()
        }
        NlError::Overrun => "the netlink receive buffer overflowed".into(),
    }
}

/// A unicast route of our protocol with an output device and no gateway: the host route to
/// a pod that the CNI wiring installs (IPv4 reports it with link scope, IPv6 with universe
/// scope). This module never installs such a route and never touches one, so reconciling at
/// start does not cut running pods off.
fn is_pod_host_route(r: &RouteMessage) -> bool {
    r.header.kind == RouteType::Unicast
        && r.attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(_)))
        && !r.attributes.iter().any(|a| {
            matches!(
                a,
                RouteAttribute::Gateway(_) | RouteAttribute::Via(_) | RouteAttribute::MultiPath(_)
            )
        })
}
