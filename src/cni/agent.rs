//! The agent's side of CNI: what `ferrovia-cni` asks over the control socket, done with the
//! agent's warm IPAM (datastore) and netlink.
//!
//! * ADD: validate, assign addresses (one per family that has a pool), announce a newly
//!   claimed block at once, wire the pod; when wiring fails, release what this ADD assigned
//!   so nothing stays behind.
//! * DEL: unwire first (the host route goes with the host veth), then release the
//!   addresses, so an address is never given to a new pod while the old route exists.
//!   Idempotent; works without the namespace.
//! * CHECK: IPAM holds exactly prevResult's addresses, and the wiring is intact.
//! * GC: free every allocation of this node's pods not listed as valid, and delete host
//!   veths named by our scheme that belong to no valid attachment. Excludes ADDs while it
//!   runs.
//! * STATUS: ready when IPAM has an enabled pool with a free address.

use super::protocol::{AgentReply, AgentRequest, Attach, Check, Detach, Gc};
use super::spec::{code, Added, CniError};
use super::wiring::{self, PodSpec};
use ferrovia_ipam::datastore::DatastoreError;
use ferrovia_ipam::{
    AssignRequest, Attributes, Families, GroupCommit, HandleId, Ipam, IpamError, MAX_BATCH,
};
use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{Mutex, Notify, RwLock};
use tracing::{debug, info, warn};

/// What the CNI handler needs from the agent.
pub struct CniContext {
    /// This node's name (IPAM affinity).
    pub node: String,
    /// None when the agent has no datastore or no `ipam` section: ADD fails with a
    /// configuration error, DEL and GC still unwire.
    pub ipam: Option<Arc<Ipam>>,
    /// Woken after anything that may have claimed or freed a block or a borrowed address;
    /// the agent then re-announces this node's blocks and borrowed addresses.
    pub announce: Arc<Notify>,
    /// ADDs hold it shared, GC exclusively, so GC never frees an ADD in flight.
    pub gc_lock: RwLock<()>,
    /// See [`CniContext::with_pod_mtu`].
    pub pod_mtu: Option<u32>,
    /// Group commit of this node's assignments: concurrent ADDs are written to their
    /// block together. Its writer lock also serialises this agent's other IPAM writes
    /// (release, GC): they all touch this node's few blocks, and queueing here is cheaper
    /// than compare-and-swap retries between them.
    group: Option<GroupCommit>,
    /// Used when there is no IPAM (DEL and GC still unwire).
    unused_writes: Mutex<()>,
}

impl CniContext {
    pub fn new(node: String, ipam: Option<Arc<Ipam>>, announce: Arc<Notify>) -> CniContext {
        CniContext {
            group: ipam
                .clone()
                .map(|i| GroupCommit::new(i, node.clone()).with_max_batch(MAX_BATCH)),
            node,
            ipam,
            announce,
            gc_lock: RwLock::new(()),
            unused_writes: Mutex::new(()),
            pod_mtu: None,
        }
    }

    /// The MTU of pods whose CNI configuration names none (the node's interface toward its
    /// peers); without it, [`DEFAULT_MTU`](crate::cni::spec::DEFAULT_MTU).
    pub fn with_pod_mtu(mut self, mtu: Option<u32>) -> CniContext {
        self.pod_mtu = mtu;
        self
    }

    /// The MTU for a request: the CNI configuration's, or (0: none given) the node's.
    fn mtu(&self, requested: u32) -> u32 {
        match requested {
            0 => self.pod_mtu.unwrap_or(crate::cni::spec::DEFAULT_MTU),
            m => m,
        }
    }

    /// Holds off this node's assignments while the guard lives.
    async fn ipam_writes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        match &self.group {
            Some(g) => g.exclusive().await,
            None => self.unused_writes.lock().await,
        }
    }
}

/// Answers one CNI request.
pub async fn handle(req: AgentRequest, ctx: &CniContext) -> AgentReply {
    let what = match &req {
        AgentRequest::Add(a) => format!("ADD {}:{}", a.container_id, a.ifname),
        AgentRequest::Del(d) => format!("DEL {}:{}", d.container_id, d.ifname),
        AgentRequest::Check(c) => format!("CHECK {}:{}", c.container_id, c.ifname),
        AgentRequest::Gc(g) => format!("GC ({} valid attachments)", g.valid.len()),
        AgentRequest::Status => "STATUS".to_string(),
    };
    let start = std::time::Instant::now();
    let reply = match req {
        AgentRequest::Add(a) => add(a, ctx).await.map(AgentReply::Added),
        AgentRequest::Del(d) => del(d, ctx).await.map(|_| AgentReply::Done),
        AgentRequest::Check(c) => check(c, ctx).await.map(|_| AgentReply::Done),
        AgentRequest::Gc(g) => gc(g, ctx).await.map(|_| AgentReply::Done),
        AgentRequest::Status => status(ctx).await.map(|_| AgentReply::Done),
    };
    match reply {
        Ok(r) => {
            debug!(took = ?start.elapsed(), "CNI {what} done");
            r
        }
        Err(e) => {
            warn!(code = e.code, error = %e.msg, details = %e.details, "CNI {what} failed");
            AgentReply::Error(e)
        }
    }
}

// -------------------------------------------------------------------------------------
// Errors.

fn agent_error(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::AGENT, msg, details)
}

/// The CNI error for an IPAM error. A datastore that refuses the agent or is broken (not
/// something retrying fixes) is the agent's own failure, not IPAM's.
fn ipam_error(what: &str, e: &IpamError) -> CniError {
    if e.is_transient() {
        return CniError::new(code::TRY_AGAIN, format!("{what} failed"), e.to_string());
    }
    if e.is_exhausted() {
        return CniError::new(code::NO_ADDRESS, format!("{what} failed"), e.to_string());
    }
    if let IpamError::Store { source, .. } = e {
        if matches!(
            **source,
            DatastoreError::Forbidden { .. } | DatastoreError::Backend { .. }
        ) {
            return agent_error(format!("{what} failed"), e.to_string());
        }
    }
    CniError::new(code::IPAM, format!("{what} failed"), e.to_string())
}

fn no_ipam() -> CniError {
    CniError::new(
        code::IPAM,
        "the ferrovia agent on this node does not assign pod addresses",
        "configure a datastore (datastore.sqlite or datastore.kubernetes) and ipam.pools in the agent configuration and \
         restart the agent",
    )
}

/// Runs an IPAM call, its error turned into a CNI error about `what`.
async fn ipam_call<T>(
    f: impl std::future::Future<Output = Result<T, IpamError>>,
    what: &str,
) -> Result<T, CniError> {
    f.await.map_err(|e| ipam_error(what, &e))
}

fn wiring_error(what: &str, e: &wiring::WiringError) -> CniError {
    use wiring::WiringError as W;
    let c = match e {
        W::IfnameExists { .. } | W::HostIfnameExists { .. } => code::IFNAME_EXISTS,
        W::NetnsMissing { .. } => code::UNKNOWN_CONTAINER,
        W::NotANetns { .. } | W::InvalidIfname { .. } | W::InvalidContainerId { .. } => {
            code::INVALID_ENV
        }
        W::InvalidMtu { .. } => code::INVALID_CONFIG,
        _ => code::WIRING,
    };
    CniError::new(c, format!("{what} failed"), e.to_string())
}

// -------------------------------------------------------------------------------------
// Validation (before anything changes). The request's rules live in `spec`.

/// The IPAM handle of an attachment. Its identifiers were checked against the CNI rules
/// (`spec::valid_container_id`, `spec::valid_ifname`) as the request was decoded.
fn handle_of(container_id: &str, ifname: &str) -> HandleId {
    HandleId::new(container_id, ifname)
}

/// The namespace must exist here too (the agent may see a different mount namespace than
/// the runtime) and must not be the agent's own.
fn validate_netns(path: &Path) -> Result<(), CniError> {
    super::spec::check_netns(path).map_err(|mut e| {
        if e.code == code::UNKNOWN_CONTAINER {
            e.details = format!(
                "the agent cannot see {}: {}; when the agent runs in a container, mount the \
                 runtime's netns directory (e.g. /var/run/netns) into it with HostToContainer \
                 propagation",
                path.display(),
                e.details
            );
        }
        e
    })
}

// -------------------------------------------------------------------------------------
// ADD.

async fn families(ipam: &Arc<Ipam>, node: &str) -> Result<Families, CniError> {
    let i = ipam.clone();
    let pools = ipam_call(i.pools_of(node), "reading the IPAM pools").await?;
    // Every family that has a pool, enabled or not: a dual-stack cluster whose IPv6 pools
    // are all disabled gets an error saying so, not IPv4-only pods.
    let f = Families {
        ipv4: pools.iter().any(|p| p.cidr.addr().is_ipv4()),
        ipv6: pools.iter().any(|p| p.cidr.addr().is_ipv6()),
    };
    if !f.ipv4 && !f.ipv6 {
        return Err(CniError::new(
            code::IPAM,
            "no IPAM pool exists",
            "add pools under ipam.pools in the agent configuration (e.g. { cidr: \
             10.244.0.0/16 }) and restart the agent",
        ));
    }
    Ok(f)
}

async fn add(a: Attach, ctx: &CniContext) -> Result<Added, CniError> {
    let handle = handle_of(&a.container_id, &a.ifname);
    let start = std::time::Instant::now();
    validate_netns(&a.netns)?;
    let ipam = ctx.ipam.clone().ok_or_else(no_ipam)?;
    let group = ctx.group.as_ref().ok_or_else(no_ipam)?;
    // Announced before its reads, so that a batch starting meanwhile waits for it.
    let arrival = group.arriving();
    let _gc = ctx.gc_lock.read().await;
    let families = families(&ipam, &ctx.node).await?;
    let attributes = Attributes {
        namespace: a.namespace.clone(),
        pod: a.pod.clone(),
        uid: a.pod_uid.clone(),
    };

    let assignment = ipam_call(
        group.assign_arriving(
            arrival,
            AssignRequest {
                handle: handle.clone(),
                attributes,
                families,
            },
        ),
        "assigning addresses",
    )
    .await?;
    // A repeated ADD of a wired pod keeps what it held; nothing to undo then.
    let held_before = assignment.already_held;
    if !assignment.claimed_blocks.is_empty() || assignment.addresses().any(|x| x.borrowed) {
        ctx.announce.notify_one();
    }
    let ipv4 = assignment.ipv4.as_ref().and_then(|x| match x.ip {
        IpAddr::V4(v) => Some(v),
        IpAddr::V6(_) => None,
    });
    let ipv6 = assignment.ipv6.as_ref().and_then(|x| match x.ip {
        IpAddr::V6(v) => Some(v),
        IpAddr::V4(_) => None,
    });
    let spec = PodSpec {
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        netns: a.netns.clone(),
        mtu: ctx.mtu(a.mtu),
        ipv4,
        ipv6,
    };
    let spec_mtu = spec.mtu;
    let assigned = start.elapsed();
    let wired = wiring::add(&spec).await;
    // Where an ADD's time goes (a burst of pods: queueing for IPAM or for the kernel).
    debug!(container = %a.container_id, ipam = ?assigned, wiring = ?start.elapsed().saturating_sub(assigned), "CNI ADD phases");
    match wired {
        Ok(w) => {
            info!(
                container = %a.container_id,
                ifname = %a.ifname,
                pod = %format!("{}/{}", a.namespace.as_deref().unwrap_or("-"), a.pod.as_deref().unwrap_or("-")),
                ipv4 = ?ipv4,
                ipv6 = ?ipv6,
                host_ifname = %w.host_ifname,
                "pod wired"
            );
            Ok(Added {
                host_ifname: w.host_ifname,
                host_mac: w.host_mac,
                pod_ifname: w.pod_ifname,
                pod_mac: w.pod_mac,
                sandbox: w.sandbox,
                mtu: spec_mtu,
                ipv4,
                ipv6,
            })
        }
        Err(e) => {
            let err = wiring_error("wiring the pod", &e);
            // Give back what this ADD assigned; addresses the handle held before (an ADD
            // repeated for a pod that is wired) stay.
            if !held_before {
                let _w = ctx.ipam_writes().await;
                let (i, h) = (ipam.clone(), handle.clone());
                match ipam_call(i.release(&h), "releasing the addresses").await {
                    Ok(freed) => {
                        if !freed.is_empty() {
                            ctx.announce.notify_one();
                        }
                    }
                    Err(r) => {
                        warn!(error = %r.details, handle = %handle, "releasing the addresses of a failed ADD failed; CNI DEL or GC will free them")
                    }
                }
            }
            Err(err)
        }
    }
}

// -------------------------------------------------------------------------------------
// DEL.

async fn del(d: Detach, ctx: &CniContext) -> Result<(), CniError> {
    let handle = handle_of(&d.container_id, &d.ifname);
    // A namespace that is gone is no namespace: the veth went with it.
    let netns = d.netns.as_deref().filter(|p| p.exists());
    wiring::del(&d.container_id, &d.ifname, netns)
        .await
        .map_err(|e| wiring_error("removing the pod's interfaces", &e))?;
    let Some(ipam) = ctx.ipam.clone() else {
        return Ok(());
    };
    let _w = ctx.ipam_writes().await;
    let h = handle.clone();
    let freed = ipam_call(ipam.release_reporting(&h), "releasing the addresses").await?;
    if !freed.addresses.is_empty() {
        info!(container = %d.container_id, ifname = %d.ifname, addresses = ?freed.addresses, "pod removed, addresses released");
    }
    // An address freed in one of this node's blocks changes nothing it announces (an
    // empty block is given back by the announce task's sweep, after a grace period);
    // the announce task follows that block write from its watched copy. A borrowed
    // address's /32 or /128 is withdrawn at once.
    if freed.borrowed {
        ctx.announce.notify_one();
    }
    Ok(())
}

// -------------------------------------------------------------------------------------
// CHECK.

async fn check(c: Check, ctx: &CniContext) -> Result<(), CniError> {
    let handle = handle_of(&c.container_id, &c.ifname);
    validate_netns(&c.netns)?;
    let ipam = ctx.ipam.clone().ok_or_else(no_ipam)?;
    let failed = |msg: String, details: String| CniError::new(code::CHECK_FAILED, msg, details);
    let h = handle.clone();
    let held = ipam_call(ipam.addresses(&h), "reading the addresses").await?;
    if held.is_empty() {
        return Err(failed(
            format!("IPAM holds no address for {handle}"),
            format!(
                "prevResult lists {:?}; the addresses were released (CNI DEL or GC) or never \
                 assigned: recreate the pod",
                c.expected_ips
            ),
        ));
    }
    let mut expected = c.expected_ips.clone();
    expected.sort();
    if held != expected {
        return Err(failed(
            format!("IPAM holds {held:?} for {handle}, prevResult lists {expected:?}"),
            "the pod's addresses changed after ADD: recreate the pod".into(),
        ));
    }
    let host = wiring::host_ifname(&c.container_id, &c.ifname);
    if !c.host_interfaces.is_empty() && !c.host_interfaces.contains(&host) {
        return Err(failed(
            format!(
                "prevResult lists host interfaces {:?}, not ferrovia's {host}",
                c.host_interfaces
            ),
            "prevResult must be the result ferrovia returned for the ADD of this container".into(),
        ));
    }
    let spec = PodSpec {
        container_id: c.container_id.clone(),
        ifname: c.ifname.clone(),
        netns: c.netns.clone(),
        mtu: ctx.mtu(c.mtu),
        ipv4: held.iter().find_map(|a| match a {
            IpAddr::V4(v) => Some(*v),
            _ => None,
        }),
        ipv6: held.iter().find_map(|a| match a {
            IpAddr::V6(v) => Some(*v),
            _ => None,
        }),
    };
    wiring::check(&spec).await.map_err(|e| {
        failed(
            format!("the wiring of {handle} is not as ADD left it"),
            e.to_string(),
        )
    })
}

// -------------------------------------------------------------------------------------
// GC.

async fn gc(g: Gc, ctx: &CniContext) -> Result<(), CniError> {
    let _gc = ctx.gc_lock.write().await;
    let mut valid = HashSet::new();
    let mut valid_hosts = BTreeSet::new();
    for a in &g.valid {
        valid_hosts.insert(wiring::host_ifname(&a.container_id, &a.ifname));
        valid.insert(handle_of(&a.container_id, &a.ifname));
    }
    // Spec: remove as much as possible, then report the first error.
    let mut first_error = None;
    if let Some(ipam) = ctx.ipam.clone() {
        let _w = ctx.ipam_writes().await;
        let node = ctx.node.clone();
        match ipam_call(ipam.gc(&node, &valid), "IPAM garbage collection").await {
            Ok(freed) => {
                if !freed.is_empty() {
                    info!(handles = ?freed.iter().map(|h| h.to_string()).collect::<Vec<_>>(), "GC freed the addresses of stale attachments");
                    ctx.announce.notify_one();
                }
            }
            Err(e) => first_error = Some(e),
        }
    }
    if let Err(e) = wiring::delete_stale_host_ends(valid_hosts).await {
        first_error.get_or_insert(wiring_error("GC of the stale pod interfaces", &e));
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

// -------------------------------------------------------------------------------------
// STATUS.

async fn status(ctx: &CniContext) -> Result<(), CniError> {
    // 50 (CNI 1.1.0): cannot service ADD. Not 51: pods already running keep their
    // addresses and routes, only new pods cannot start.
    let unavailable = |msg: &str, details: String| CniError::new(code::UNAVAILABLE, msg, details);
    let Some(ipam) = ctx.ipam.clone() else {
        return Err(unavailable(
            "the ferrovia agent on this node does not assign pod addresses",
            "configure a datastore (datastore.sqlite or datastore.kubernetes) and ipam.pools in the agent configuration and \
             restart the agent"
                .into(),
        ));
    };
    if ipam.is_pod_cidr_mode() {
        return match ipam.pools_of(&ctx.node).await {
            Ok(_) => Ok(()),
            Err(e) => Err(unavailable("this node has no pod CIDR yet", e.to_string())),
        };
    }
    let pools = match ipam_call(ipam.pool_usage(), "reading IPAM").await {
        Ok(s) => s,
        Err(e) if e.code == code::TRY_AGAIN => {
            return Err(CniError::new(code::UNAVAILABLE, e.msg, e.details))
        }
        Err(e) => return Err(unavailable(&e.msg, e.details)),
    };
    let enabled: Vec<_> = pools.iter().filter(|p| !p.disabled).collect();
    if enabled.is_empty() {
        return Err(unavailable(
            "no usable IPAM pool",
            if pools.is_empty() {
                "no pool exists: add one under ipam.pools in the agent configuration".into()
            } else {
                "every pool is disabled: enable one or add a new one under ipam.pools".into()
            },
        ));
    }
    let free = enabled.iter().any(|p| {
        let host_bits = u32::from(p.cidr.max_prefix_len() - p.cidr.prefix_len());
        let size: u128 = if host_bits >= 127 {
            u128::MAX
        } else {
            1u128 << host_bits
        };
        size > p.allocated as u128
    });
    if !free {
        return Err(unavailable(
            "no IP address available",
            "every enabled pool is full: add a pool under ipam.pools, or free addresses".into(),
        ));
    }
    Ok(())
}
