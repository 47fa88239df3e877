//! Wires a pod's network namespace to the node, the way Calico does: a veth pair, the pod's
//! addresses on the pod end, a host route to each of them through the host end, and
//! proxy ARP / a fixed link-local address on the host end as the pod's gateway. No bridge,
//! no address on the node side: pure L3.
//!
//! ```text
//!  pod netns                                   node (the agent's netns)
//!  eth0  10.244.1.5/32, fd00:10:244:1::5/128   fvXXXXXXXXXXXXX  ee:ee:ee:ee:ee:ee, no IPv4,
//!    169.254.1.1 dev eth0 scope link             fe80::ecee:eeff:feee:eeee/64 (nodad),
//!    default via 169.254.1.1 dev eth0            proxy_arp=1, proxy_delay=0, forwarding=1,
//!    default via fe80::ecee:eeff:feee:eeee        proxy_ndp=1, accept_ra=0 (v6 forwarding=1)
//!      dev eth0                                  10.244.1.5 dev fvX… scope link proto 0xf1
//!                                                fd00:10:244:1::5 dev fvX… proto 0xf1
//! ```
//!
//! The pod resolves 169.254.1.1 through proxy ARP on the host end (the node answers because
//! it routes 169.254.1.1 out of another interface — any default route will do) and
//! fe80::ecee:eeff:feee:eeee directly. The host end's IPv6 link-local is added explicitly
//! with `nodad` after its automatic generation was switched off (`addr_gen_mode none`), so
//! it is the gateway the pod expects whatever the node's `addr_gen_mode` is, and it is usable
//! at once instead of after a second of duplicate address detection. The host-end IPv6
//! settings are only made for pods with an IPv6 address (a node may have IPv6 disabled).
//!
//! # Names
//!
//! The host end is `fv` + 13 hex digits of FNV-1a-64 over (container id, NUL, ifname): stable
//! (DEL finds it from the ids alone), 15 characters, and recognisable ([`is_host_ifname`]).
//!
//! # Namespaces and threads
//!
//! A netlink socket and `/proc/sys/net` belong to the network namespace of the thread that
//! opens them. Each operation runs on a dedicated OS thread, started from the caller's thread
//! (so in its namespace, the node's): it opens the node's rtnetlink socket, does the node
//! side, then `setns(CLONE_NEWNET)`s into the pod's namespace, opens a second socket there
//! and does the pod side. The thread ends with the operation; the agent's runtime threads
//! never change namespace. The async functions wait for the thread's answer.
//!
//! # Round trips
//!
//! The sockets are blocking: rtnetlink handles a request within `sendmsg`, so an answer is
//! always ready when `recv` is called. Messages that do not depend on one another's answers
//! go in one datagram (the kernel handles them in order). An ADD is: create the pair (the
//! pod end created directly in the pod's namespace under its final name, with its MTU;
//! `NLM_F_ECHO` returns both interface indexes), one datagram for the host end (settings,
//! up, link-local, host routes), four sysctl writes, one datagram for the pod end (up,
//! forwarding off, addresses, routes, and a read of its MAC), one sysctl write, lo up.
//!
//! # Failure
//!
//! ADD changes nothing when it fails: a failure after the pair exists deletes the host end,
//! which takes the pod end, their addresses and the host routes with it. So does an ADD
//! whose caller stopped waiting (its future dropped) before the thread finished. DEL is
//! idempotent and succeeds when the namespace, its path or the interfaces are gone. GC
//! ([`delete_stale_host_ends`]) deletes the host ends of attachments that are no longer
//! valid.
//!
//! Every rtnetlink message is built and sent by [`crate::kernel::netlink`] (its blocking
//! socket: the worker threads change namespace).
//!
//! # Host routes and the kernel module
//!
//! Host routes carry [`crate::kernel::RTPROT_FERROVIA`] in the main table at the kernel's
//! default metric (0 for IPv4, 1024 for IPv6), with an output device and no gateway (IPv4:
//! scope link). The route table ([`crate::kernel::Kernel`]) shares the protocol, and may
//! share the table, but leaves these routes alone: its dumps skip every unicast route of
//! the protocol that has an output device and no gateway, a kind it never installs itself,
//! so neither [`crate::kernel::Kernel::reconcile`] nor `apply` deletes or replaces them
//! (`kernel::tests::reconcile_touches_only_our_routes` checks it). A host route goes away
//! only with its host end: DEL, a failed ADD, or GC.
//!
//! The pod's own routes carry protocol `boot`, as `ip route add` and the reference plugins
//! give them.

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use futures::channel::oneshot;
use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use rtnetlink::packet_route::address::{AddressAttribute, AddressScope};
use rtnetlink::packet_route::link::{
    AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, InfoKind, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{debug, error, info, warn};

use crate::kernel::netlink::blocking::{Nack, Refused, Req, Rtnl};
use crate::kernel::netlink::{
    self, inet_conf_forwarding_off, link_name, new_addr, new_device_route, route_ip, set_up,
    EEXIST, ENODEV, MAIN_TABLE, RTPROT_BOOT,
};
use crate::kernel::RTPROT_FERROVIA;

/// The pod interface's MTU when the configuration gives none (0).
pub const DEFAULT_MTU: u32 = 1500;
/// The host end's MAC address (Calico's): the pod's gateway MAC, the same for every pod.
pub const HOST_MAC: [u8; 6] = [0xee; 6];
/// The host end's IPv6 link-local address (the EUI-64 of [`HOST_MAC`]): the pod's IPv6
/// gateway.
pub const HOST_LINK_LOCAL: Ipv6Addr =
    Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);
/// The pod's IPv4 gateway: nobody has it; the host end answers ARP for it (proxy ARP).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The prefix of host-end interface names.
pub const HOST_IFNAME_PREFIX: &str = "fv";

/// The longest interface name Linux accepts (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;
const HASH_DIGITS: usize = IFNAME_MAX - HOST_IFNAME_PREFIX.len();
/// statfs f_type of nsfs (namespace files: /proc/PID/ns/*, their bind mounts).
const NSFS_MAGIC: u64 = libc::NSFS_MAGIC as u64;
/// `lo` has index 1 in every network namespace.
const LO_INDEX: u32 = 1;

/// What to wire: one attachment (container id, interface name) in one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// CNI_CONTAINERID.
    pub container_id: String,
    /// CNI_IFNAME: the pod end's name, e.g. `eth0`.
    pub ifname: String,
    /// CNI_NETNS: a path to the pod's network namespace (`/var/run/netns/x`,
    /// `/proc/PID/ns/net`).
    pub netns: PathBuf,
    /// The pod end's (and the host end's) MTU; 0 means [`DEFAULT_MTU`].
    pub mtu: u32,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// What ADD made (for the CNI result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wired {
    pub host_ifname: String,
    /// `ee:ee:ee:ee:ee:ee`.
    pub host_mac: String,
    pub pod_ifname: String,
    /// Chosen by the kernel, lower-case `aa:bb:…`.
    pub pod_mac: String,
    /// The namespace path, as given.
    pub sandbox: String,
}

/// Why a wiring operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("invalid interface name {ifname:?}: {reason}")]
    InvalidIfname { ifname: String, reason: String },
    #[error("invalid container id {container_id:?}: {reason}")]
    InvalidContainerId {
        container_id: String,
        reason: &'static str,
    },
    #[error("invalid MTU {mtu}: {reason}")]
    InvalidMtu { mtu: u32, reason: &'static str },
    #[error("the network namespace {} does not exist", netns.display())]
    NetnsMissing { netns: PathBuf },
    #[error(
        "{} is not a network namespace ({reason}): give a namespace file such as \
         /var/run/netns/NAME or /proc/PID/ns/net",
        netns.display()
    )]
    NotANetns { netns: PathBuf, reason: String },
    #[error("cannot use the network namespace {}: {source}", netns.display())]
    Netns {
        netns: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("interface {ifname} already exists in the network namespace {}", netns.display())]
    IfnameExists { ifname: String, netns: PathBuf },
    #[error(
        "the node already has interface {host_ifname}, the host end for this container and \
         interface name, but its pod end is not {ifname} in {}: left over from an earlier \
         ADD; run DEL for this container first",
        netns.display()
    )]
    HostIfnameExists {
        host_ifname: String,
        ifname: String,
        netns: PathBuf,
    },
    #[error(
        "the node already has a route to {prefix} (another pod with the same address?); \
         nothing was changed"
    )]
    RouteExists { prefix: String },
    #[error("{action}: the kernel answered: {detail}")]
    Netlink {
        action: String,
        /// Positive errno.
        errno: i32,
        detail: String,
    },
    #[error("rtnetlink socket in {namespace}: {source}")]
    Socket {
        namespace: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set {path} to {value}: {source}")]
    Sysctl {
        path: String,
        value: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Worker(String),
    // ----- CHECK -----
    #[error("the node has no interface {host_ifname} (the host end of this pod)")]
    HostInterfaceMissing { host_ifname: String },
    #[error("the network namespace {} has no interface {ifname}", netns.display())]
    InterfaceMissing { ifname: String, netns: PathBuf },
    #[error("{}", problems.join("; "))]
    Mismatch {
        /// One sentence per difference, e.g. "pod route default via 169.254.1.1 dev eth0 is
        /// missing".
        problems: Vec<String>,
    },
}

/// The host end's name for an attachment: `fv` + 13 hex digits of FNV-1a-64 over
/// (container id, NUL, ifname).
pub fn host_ifname(container_id: &str, ifname: &str) -> String {
    let h = fnv1a64(&[container_id.as_bytes(), &[0], ifname.as_bytes()]);
    format!(
        "{HOST_IFNAME_PREFIX}{:0width$x}",
        h >> (64 - 4 * HASH_DIGITS),
        width = HASH_DIGITS
    )
}

/// Whether `name` is shaped like a host end made by [`host_ifname`].
pub fn is_host_ifname(name: &str) -> bool {
    name.len() == IFNAME_MAX
        && name.starts_with(HOST_IFNAME_PREFIX)
        && name[HOST_IFNAME_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Checks an interface name the way the kernel does (`dev_valid_name`), and refuses `%`
/// (the kernel would take the name as a pattern and pick another one).
pub fn validate_ifname(ifname: &str) -> Result<(), WiringError> {
    let bad = |reason: &str| {
        Err(WiringError::InvalidIfname {
            ifname: ifname.to_string(),
            reason: reason.to_string(),
        })
    };
    if ifname.is_empty() {
        return bad("it is empty");
    }
    if ifname.len() > IFNAME_MAX {
        return bad(&format!(
            "it is {} bytes long, Linux allows at most {IFNAME_MAX}",
            ifname.len()
        ));
    }
    if ifname == "." || ifname == ".." {
        return bad("\".\" and \"..\" are not interface names");
    }
    if let Some(c) = ifname
        .chars()
        .find(|c| matches!(c, '/' | ':' | '%' | '\0') || c.is_ascii_whitespace() || *c == '\x0b')
    {
        return bad(&format!(
            "it contains {c:?} (not allowed: '/', ':', '%', whitespace, NUL)"
        ));
    }
    Ok(())
}

fn validate(spec: &PodSpec) -> Result<u32, WiringError> {
    if spec.container_id.is_empty() {
        return Err(WiringError::InvalidContainerId {
            container_id: spec.container_id.clone(),
            reason: "it is empty",
        });
    }
    validate_ifname(&spec.ifname)?;
    let mtu = if spec.mtu == 0 { DEFAULT_MTU } else { spec.mtu };
    if !(68..=65535).contains(&mtu) {
        return Err(WiringError::InvalidMtu {
            mtu,
            reason: "Linux accepts 68 to 65535 on a veth",
        });
    }
    if spec.ipv6.is_some() && mtu < 1280 {
        return Err(WiringError::InvalidMtu {
            mtu,
            reason: "IPv6 needs at least 1280",
        });
    }
    Ok(mtu)
}

// =====================================================================================
// The operations.

/// Wires the pod: see the module documentation. Fails, changing nothing, if `spec.ifname`
/// exists in the namespace, the namespace does not exist, or any step fails.
pub async fn add(spec: &PodSpec) -> Result<Wired, WiringError> {
    let mtu = validate(spec)?;
    let ns = open_netns(&spec.netns)?;
    let spec = spec.clone();
    let host_name = host_ifname(&spec.container_id, &spec.ifname);
    on_worker("add", move |tx| add_worker(spec, mtu, ns, host_name, tx)).await
}

/// Removes the pod's wiring: the host end (which takes the pod end and the host routes
/// with it) and, if the host end is already gone but the namespace still has `ifname`, that
/// interface. Succeeds when any of them, the namespace or its path are gone.
pub async fn del(
    container_id: &str,
    ifname: &str,
    netns: Option<&Path>,
) -> Result<(), WiringError> {
    validate_ifname(ifname)?;
    let host_name = host_ifname(container_id, ifname);
    let ifname = ifname.to_string();
    let netns = netns.map(Path::to_path_buf);
    on_worker("del", move |tx| {
        let _ = tx.send(del_worker(&host_name, &ifname, netns.as_deref()));
    })
    .await
}

/// Verifies that the wiring is as [`add`] left it. `Err(Mismatch)` lists every difference;
/// a missing namespace or interface is reported as such (`NetnsMissing`,
/// `HostInterfaceMissing`, `InterfaceMissing`).
pub async fn check(spec: &PodSpec) -> Result<(), WiringError> {
    let mtu = validate(spec)?;
    let ns = open_netns(&spec.netns)?;
    let spec = spec.clone();
    on_worker("check", move |tx| {
        let _ = tx.send(check_worker(&spec, mtu, &ns));
    })
    .await
}

/// Runs `f` on a new OS thread (started from, so in the namespace of, the calling thread)
/// and waits for what it sends.
async fn on_worker<T, F>(what: &'static str, f: F) -> Result<T, WiringError>
where
    T: Send + 'static,
    F: FnOnce(oneshot::Sender<Result<T, WiringError>>) + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name(format!("fv-wiring-{what}"))
        .spawn(move || f(tx))
        .map_err(|e| WiringError::Worker(format!("cannot start a thread for {what}: {e}")))?;
    match rx.await {
        Ok(r) => r,
        Err(_) => Err(WiringError::Worker(format!(
            "the {what} thread ended without an answer (it panicked; see the log)"
        ))),
    }
}

// ----- ADD -----

fn add_worker(
    spec: PodSpec,
    mtu: u32,
    ns: File,
    host_name: String,
    tx: oneshot::Sender<Result<Wired, WiringError>>,
) {
    let mut host = match Rtnl::open() {
        Ok(h) => h,
        Err(e) => {
            let _ = tx.send(Err(socket_error("the node's network namespace", e)));
            return;
        }
    };
    let (host_index, pod_index) = match create_pair(&mut host, &spec, mtu, &ns, &host_name) {
        Ok(x) => x,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let result = configure(&mut host, &spec, &ns, &host_name, host_index, pod_index);
    match result {
        Ok(wired) => {
            #[cfg(test)]
            hold::wait(&spec.container_id, &tx);
            if tx.send(Ok(wired)).is_err() {
                warn!(
                    host_ifname = %host_name,
                    "the ADD was abandoned by its caller before it finished: undoing it"
                );
                undo(&mut host, host_index, &host_name);
            }
        }
        Err(e) => {
            undo(&mut host, host_index, &host_name);
            let _ = tx.send(Err(e));
        }
    }
}

/// Creates the pair: host end down (its settings come first), pod end in the pod's
/// namespace under its final name. Returns (host index, pod index if the kernel said).
fn create_pair(
    host: &mut Rtnl,
    spec: &PodSpec,
    mtu: u32,
    ns: &File,
    host_name: &str,
) -> Result<(u32, Option<u32>), WiringError> {
    let action = format!(
        "create the veth pair {host_name} / {} in {}",
        spec.ifname,
        spec.netns.display()
    );
    let req = Req::new(
        netlink::new_veth_pair(host_name, &HOST_MAC, &spec.ifname, ns.as_raw_fd(), mtu),
        NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO,
        action.clone(),
    );
    let mut answers = host
        .batch(vec![req])
        .map_err(|e| socket_error("the node's network namespace", e))?;
    match answers.pop() {
        Some(Ok(msgs)) => {
            let echoed = msgs.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) if link_name(&l) == Some(host_name) => Some(l),
                _ => None,
            });
            let link = match echoed {
                Some(l) => l,
                // A kernel older than 6.2 does not echo: ask.
                None => get_link_by_name(host, host_name, "the node")?.ok_or_else(|| {
                    WiringError::Worker(format!("{host_name} vanished right after it was created"))
                })?,
            };
            Ok((link.header.index, link_peer(&link)))
        }
        Some(Err(nack)) if nack.errno == EEXIST => Err(diagnose_exists(host, spec, ns, host_name)),
        Some(Err(nack)) => Err(refusal(nack, action)),
        None => Err(WiringError::Worker(format!("{action}: no answer"))),
    }
}

/// The pair could not be created because a name is taken: which one?
fn diagnose_exists(host: &mut Rtnl, spec: &PodSpec, ns: &File, host_name: &str) -> WiringError {
    let exists = || WiringError::IfnameExists {
        ifname: spec.ifname.clone(),
        netns: spec.netns.clone(),
    };
    match get_link_by_name(host, host_name, "the node") {
        Ok(None) => return exists(),
        Ok(Some(_)) => {}
        Err(e) => return e,
    }
    // The host end exists; the pod end may too (a repeated ADD).
    let pod_has_it = enter_netns(ns, &spec.netns)
        .and_then(|()| Rtnl::open().map_err(|e| socket_error("the pod's network namespace", e)))
        .and_then(|mut pod| get_link_by_name(&mut pod, &spec.ifname, "the pod"));
    match pod_has_it {
        Ok(Some(_)) => exists(),
        Ok(None) => WiringError::HostIfnameExists {
            host_ifname: host_name.to_string(),
            ifname: spec.ifname.clone(),
            netns: spec.netns.clone(),
        },
        Err(e) => e,
    }
}

/// Everything after the pair exists. On error the caller deletes the pair.
fn configure(
    host: &mut Rtnl,
    spec: &PodSpec,
    ns: &File,
    host_name: &str,
    host_index: u32,
    pod_index: Option<u32>,
) -> Result<Wired, WiringError> {
    configure_host(host, spec, host_name, host_index)?;
    enter_netns(ns, &spec.netns)?;
    let mut pod = Rtnl::open().map_err(|e| socket_error("the pod's network namespace", e))?;
    let pod_index = match pod_index {
        Some(i) => i,
        None => {
            get_link_by_name(&mut pod, &spec.ifname, "the pod")?
                .ok_or_else(|| WiringError::InterfaceMissing {
                    ifname: spec.ifname.clone(),
                    netns: spec.netns.clone(),
                })?
                .header
                .index
        }
    };
    let pod_mac = configure_pod(&mut pod, spec, pod_index)?;
    Ok(Wired {
        host_ifname: host_name.to_string(),
        host_mac: format_mac(&HOST_MAC),
        pod_ifname: spec.ifname.clone(),
        pod_mac,
        sandbox: spec.netns.display().to_string(),
    })
}

/// The host end: settings, up, link-local, host routes (one datagram), then the sysctls
/// netlink cannot set.
fn configure_host(
    host: &mut Rtnl,
    spec: &PodSpec,
    host_name: &str,
    index: u32,
) -> Result<(), WiringError> {
    let v6 = spec.ipv6.is_some();
    let mut reqs = Vec::with_capacity(5);
    let mut conf = InetDevConf::default();
    conf.forwarding = 1;
    conf.proxy_arp = 1;
    let mut af = vec![AfSpecUnspec::Inet(vec![AfSpecInet::DevConfRequest(conf)])];
    if v6 {
        // Before the interface goes up, or the kernel makes its own link-local.
        af.push(AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )]));
    }
    reqs.push(Req::new(
        netlink::set_af_spec(index, af),
        0,
        format!("set forwarding, proxy_arp and addr_gen_mode on {host_name}"),
    ));
    reqs.push(Req::new(set_up(index), 0, format!("set {host_name} up")));
    if v6 {
        reqs.push(Req::new(
            new_addr(index, IpAddr::V6(HOST_LINK_LOCAL), 64, AddressScope::Link),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add {HOST_LINK_LOCAL}/64 to {host_name}"),
        ));
    }
    let mut route_prefixes = Vec::new();
    if let Some(a) = spec.ipv4 {
        let r = new_device_route(
            IpAddr::V4(a),
            32,
            None,
            index,
            RouteScope::Link,
            RTPROT_FERROVIA,
        );
        route_prefixes.push((reqs.len(), format!("{a}/32")));
        reqs.push(Req::new(
            r,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the host route {a}/32 dev {host_name}"),
        ));
    }
    if let Some(a) = spec.ipv6 {
        let r = new_device_route(
            IpAddr::V6(a),
            128,
            None,
            index,
            RouteScope::Universe,
            RTPROT_FERROVIA,
        );
        route_prefixes.push((reqs.len(), format!("{a}/128")));
        reqs.push(Req::new(
            r,
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the host route {a}/128 dev {host_name}"),
        ));
    }
    batch_checked(host, reqs, "the node's network namespace").map_err(|(i, e)| match e {
        WiringError::Netlink { errno, .. } if errno == EEXIST => {
            match route_prefixes.iter().find(|(j, _)| *j == i) {
                Some((_, prefix)) => WiringError::RouteExists {
                    prefix: prefix.clone(),
                },
                None => e,
            }
        }
        e => e,
    })?;

    write_sysctl(&neigh_path("ipv4", host_name, "proxy_delay"), "0", true)?;
    // Without IPv6 for the pod these are a courtesy (the node may have IPv6 disabled).
    write_sysctl(&conf_path("ipv6", host_name, "accept_ra"), "0", v6)?;
    write_sysctl(&conf_path("ipv6", host_name, "proxy_ndp"), "1", v6)?;
    write_sysctl(&conf_path("ipv6", host_name, "forwarding"), "1", v6)?;
    Ok(())
}

/// The pod end (one datagram: up, forwarding off, addresses, routes, read the MAC), then
/// IPv6 forwarding off, then lo up. Runs in the pod's namespace. Returns the pod end's MAC.
fn configure_pod(pod: &mut Rtnl, spec: &PodSpec, index: u32) -> Result<String, WiringError> {
    let ifname = &spec.ifname;
    let mut reqs = Vec::with_capacity(8);
    reqs.push(Req::new(set_up(index), 0, format!("set {ifname} up")));
    reqs.push(Req::new(
        netlink::set_af_spec(
            index,
            vec![AfSpecUnspec::Inet(vec![inet_conf_forwarding_off()])],
        ),
        0,
        format!("set forwarding=0 on {ifname}"),
    ));
    if let Some(a) = spec.ipv4 {
        reqs.push(Req::new(
            new_addr(index, IpAddr::V4(a), 32, AddressScope::Universe),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add {a}/32 to {ifname}"),
        ));
    }
    if let Some(a) = spec.ipv6 {
        reqs.push(Req::new(
            new_addr(index, IpAddr::V6(a), 128, AddressScope::Universe),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add {a}/128 to {ifname}"),
        ));
    }
    if spec.ipv4.is_some() {
        reqs.push(Req::new(
            new_device_route(
                IpAddr::V4(GATEWAY_V4),
                32,
                None,
                index,
                RouteScope::Link,
                RTPROT_BOOT,
            ),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the pod route {GATEWAY_V4} dev {ifname} scope link"),
        ));
        reqs.push(Req::new(
            new_device_route(
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                0,
                Some(IpAddr::V4(GATEWAY_V4)),
                index,
                RouteScope::Universe,
                RTPROT_BOOT,
            ),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the pod route default via {GATEWAY_V4} dev {ifname}"),
        ));
    }
    if spec.ipv6.is_some() {
        reqs.push(Req::new(
            new_device_route(
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                0,
                Some(IpAddr::V6(HOST_LINK_LOCAL)),
                index,
                RouteScope::Universe,
                RTPROT_BOOT,
            ),
            NLM_F_CREATE | NLM_F_EXCL,
            format!("add the pod route default via {HOST_LINK_LOCAL} dev {ifname}"),
        ));
    }
    reqs.push(Req::new(
        netlink::get_link(index),
        0,
        format!("read {ifname}"),
    ));
    let mut answers =
        batch_checked(pod, reqs, "the pod's network namespace").map_err(|(_, e)| e)?;
    let mac = answers
        .pop()
        .unwrap_or_default()
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => link_mac(&l).map(format_mac),
            _ => None,
        })
        .ok_or_else(|| {
            WiringError::Worker(format!(
                "the kernel's description of {ifname} has no MAC address"
            ))
        })?;
    if spec.ipv6.is_some() {
        write_sysctl(&conf_path("ipv6", ifname, "forwarding"), "0", true)?;
    }
    // Last, on its own: the kernel carries on with a datagram's messages after one fails,
    // and lo is the one change here that deleting the pair would not undo.
    batch_checked(
        pod,
        vec![Req::new(set_up(LO_INDEX), 0, "set lo up".to_string())],
        "the pod's network namespace",
    )
    .map_err(|(_, e)| e)?;
    Ok(mac)
}

/// Deletes the host end after a failed (or abandoned) ADD; logs what it cannot do.
fn undo(host: &mut Rtnl, index: u32, host_name: &str) {
    match host.request(netlink::del_link(index), 0) {
        Ok(Ok(_)) => debug!(host_ifname = %host_name, "failed ADD undone"),
        Ok(Err(n)) if n.errno == ENODEV => {}
        Ok(Err(n)) => error!(
            host_ifname = %host_name,
            error = %n.describe(),
            "cannot delete the veth pair of a failed ADD: delete it by hand (ip link del)"
        ),
        Err(e) => error!(
            host_ifname = %host_name,
            error = %e,
            "cannot delete the veth pair of a failed ADD: delete it by hand (ip link del)"
        ),
    }
}

// ----- DEL -----

fn del_worker(host_name: &str, ifname: &str, netns: Option<&Path>) -> Result<(), WiringError> {
    let mut host = Rtnl::open().map_err(|e| socket_error("the node's network namespace", e))?;
    if delete_link_by_name(&mut host, host_name, "the node")? {
        return Ok(());
    }
    // The host end is gone. A pod end left behind (it cannot be the peer of anything of
    // ours any more) goes too, if its namespace is still there.
    let Some(path) = netns else {
        return Ok(());
    };
    let ns = match open_netns(path) {
        Ok(ns) => ns,
        Err(WiringError::NetnsMissing { .. } | WiringError::NotANetns { .. }) => return Ok(()),
        Err(e) => return Err(e),
    };
    match enter_netns(&ns, path) {
        Ok(()) => {}
        // EINVAL: not (any more) a network namespace.
        Err(WiringError::Netns { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            return Ok(())
        }
        Err(e) => return Err(e),
    }
    let mut pod = Rtnl::open().map_err(|e| socket_error("the pod's network namespace", e))?;
    delete_link_by_name(&mut pod, ifname, "the pod")?;
    Ok(())
}

/// Deletes interface `name`; `Ok(false)` if there was none.
fn delete_link_by_name(rtnl: &mut Rtnl, name: &str, place: &str) -> Result<bool, WiringError> {
    match rtnl
        .request(netlink::del_link_named(name), 0)
        .map_err(|e| socket_error(place, e))?
    {
        Ok(_) => Ok(true),
        Err(n) if n.errno == ENODEV => Ok(false),
        Err(n) => Err(refusal(n, format!("delete {name} in {place}"))),
    }
}

// ----- GC -----

/// Deletes the node's host ends (interfaces named by [`host_ifname`]) that are not in
/// `valid`, and with each its pod end and host routes. Carries on past a failure and
/// returns the first one; an interface gone meanwhile (a DEL, its namespace deleted) is
/// fine. Returns the names deleted.
pub async fn delete_stale_host_ends(valid: BTreeSet<String>) -> Result<Vec<String>, WiringError> {
    on_worker("gc", move |tx| {
        let _ = tx.send(gc_worker(&valid));
    })
    .await
}

fn gc_worker(valid: &BTreeSet<String>) -> Result<Vec<String>, WiringError> {
    const PLACE: &str = "the node's network namespace";
    let mut host = Rtnl::open().map_err(|e| socket_error(PLACE, e))?;
    let links = host
        .dump(netlink::get_links())
        .map_err(|e| socket_error(PLACE, e))?
        .map_err(|n| refusal(n, "list the node's interfaces".to_string()))?;
    let stale: Vec<String> = links
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => link_name(l),
            _ => None,
        })
        .filter(|name| is_host_ifname(name) && !valid.contains(*name))
        .map(str::to_string)
        .collect();
    let mut deleted = Vec::with_capacity(stale.len());
    let mut first_error = None;
    for name in stale {
        match delete_link_by_name(&mut host, &name, "the node") {
            Ok(true) => {
                info!(interface = %name, "GC deleted a stale pod interface");
                deleted.push(name);
            }
            Ok(false) => {}
            Err(e) => {
                warn!(interface = %name, error = %e, "GC could not delete a stale pod interface");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(deleted),
    }
}

// ----- CHECK -----

fn check_worker(spec: &PodSpec, mtu: u32, ns: &File) -> Result<(), WiringError> {
    let host_name = host_ifname(&spec.container_id, &spec.ifname);
    let ifname = &spec.ifname;
    let mut problems = Vec::new();

    // The node's side.
    let mut host = Rtnl::open().map_err(|e| socket_error("the node's network namespace", e))?;
    let hl = get_link_by_name(&mut host, &host_name, "the node")?.ok_or_else(|| {
        WiringError::HostInterfaceMissing {
            host_ifname: host_name.clone(),
        }
    })?;
    let host_index = hl.header.index;
    if !is_veth(&hl) {
        problems.push(format!("{host_name} is not a veth interface"));
    }
    if !hl.header.flags.contains(LinkFlags::Up) {
        problems.push(format!("{host_name} is down"));
    }
    if link_mac(&hl) != Some(&HOST_MAC[..]) {
        problems.push(format!(
            "{host_name} has MAC {}, expected {}",
            link_mac(&hl)
                .map(format_mac)
                .unwrap_or_else(|| "none".into()),
            format_mac(&HOST_MAC)
        ));
    }
    if spec.ipv6.is_some() {
        let addrs = dump_addresses(&mut host, AddressFamily::Inet6, host_index, "the node")?;
        if !addrs.contains(&(IpAddr::V6(HOST_LINK_LOCAL), 64)) {
            problems.push(format!(
                "{host_name} does not have the link-local address {HOST_LINK_LOCAL}/64"
            ));
        }
    }
    for (addr, len) in spec_addresses(spec) {
        check_host_route(&mut host, addr, len, host_index, &host_name, &mut problems)?;
    }
    let mut sysctls = vec![
        (conf_path("ipv4", &host_name, "forwarding"), "1"),
        (conf_path("ipv4", &host_name, "proxy_arp"), "1"),
        (neigh_path("ipv4", &host_name, "proxy_delay"), "0"),
    ];
    if spec.ipv6.is_some() {
        sysctls.push((conf_path("ipv6", &host_name, "forwarding"), "1"));
        sysctls.push((conf_path("ipv6", &host_name, "proxy_ndp"), "1"));
        sysctls.push((conf_path("ipv6", &host_name, "accept_ra"), "0"));
    }
    check_sysctls(&sysctls, "on the node", &mut problems);

    // The pod's side.
    enter_netns(ns, &spec.netns)?;
    let mut pod = Rtnl::open().map_err(|e| socket_error("the pod's network namespace", e))?;
    let pl = get_link_by_name(&mut pod, ifname, "the pod")?.ok_or_else(|| {
        WiringError::InterfaceMissing {
            ifname: ifname.clone(),
            netns: spec.netns.clone(),
        }
    })?;
    let pod_index = pl.header.index;
    if link_peer(&hl) != Some(pod_index) {
        problems.push(format!(
            "{ifname} in {} is not the peer of {host_name}",
            spec.netns.display()
        ));
    }
    if !pl.header.flags.contains(LinkFlags::Up) {
        problems.push(format!("pod interface {ifname} is down"));
    }
    match link_mtu(&pl) {
        Some(m) if m == mtu => {}
        m => problems.push(format!(
            "pod interface {ifname} has MTU {}, expected {mtu}",
            m.map(|m| m.to_string()).unwrap_or_else(|| "unknown".into())
        )),
    }
    let mut addrs = Vec::new();
    if spec.ipv4.is_some() {
        addrs.extend(dump_addresses(
            &mut pod,
            AddressFamily::Inet,
            pod_index,
            "the pod",
        )?);
    }
    if spec.ipv6.is_some() {
        addrs.extend(dump_addresses(
            &mut pod,
            AddressFamily::Inet6,
            pod_index,
            "the pod",
        )?);
    }
    for (addr, len) in spec_addresses(spec) {
        if !addrs.contains(&(addr, len)) {
            let on = addrs
                .iter()
                .filter(|(a, _)| a.is_ipv4() == addr.is_ipv4() && !is_link_local(a))
                .map(|(a, l)| format!("{a}/{l}"))
                .collect::<Vec<_>>();
            problems.push(format!(
                "pod address {addr}/{len} on {ifname} is missing{}",
                if on.is_empty() {
                    String::new()
                } else {
                    format!(" ({ifname} has {})", on.join(", "))
                }
            ));
        }
    }
    if spec.ipv4.is_some() {
        let routes = dump_routes(&mut pod, AddressFamily::Inet, "the pod")?;
        let gw = IpAddr::V4(GATEWAY_V4);
        if !routes.iter().any(|r| {
            r.prefix == (gw, 32)
                && r.gateway.is_none()
                && r.oif == Some(pod_index)
                && r.scope == RouteScope::Link
        }) {
            problems.push(format!(
                "pod route {GATEWAY_V4} dev {ifname} scope link is missing"
            ));
        }
        check_default(&routes, gw, pod_index, ifname, &mut problems);
    }
    if spec.ipv6.is_some() {
        let routes = dump_routes(&mut pod, AddressFamily::Inet6, "the pod")?;
        check_default(
            &routes,
            IpAddr::V6(HOST_LINK_LOCAL),
            pod_index,
            ifname,
            &mut problems,
        );
    }
    let mut sysctls = vec![(conf_path("ipv4", ifname, "forwarding"), "0")];
    if spec.ipv6.is_some() {
        sysctls.push((conf_path("ipv6", ifname, "forwarding"), "0"));
    }
    check_sysctls(&sysctls, "in the pod", &mut problems);

    if problems.is_empty() {
        Ok(())
    } else {
        Err(WiringError::Mismatch { problems })
    }
}

fn spec_addresses(spec: &PodSpec) -> Vec<(IpAddr, u8)> {
    let mut v = Vec::new();
    if let Some(a) = spec.ipv4 {
        v.push((IpAddr::V4(a), 32));
    }
    if let Some(a) = spec.ipv6 {
        v.push((IpAddr::V6(a), 128));
    }
    v
}

fn is_link_local(a: &IpAddr) -> bool {
    match a {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// The host route to a pod address: the route a packet to it takes must be ours, to
/// exactly that address, out of the host end.
fn check_host_route(
    host: &mut Rtnl,
    addr: IpAddr,
    len: u8,
    host_index: u32,
    host_name: &str,
    problems: &mut Vec<String>,
) -> Result<(), WiringError> {
    let found = match host
        .request(netlink::get_fib_match(addr, None), 0)
        .map_err(|e| socket_error("the node's network namespace", e))?
    {
        Ok(msgs) => msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => Some(Route::of(&r)),
            _ => None,
        }),
        // No route at all (ENETUNREACH...).
        Err(_) => None,
    };
    let want = format!("host route {addr}/{len} dev {host_name}");
    match found {
        None => problems.push(format!("{want} is missing (no route to {addr})")),
        Some(r) if r.prefix != (addr, len) || r.oif != Some(host_index) || r.gateway.is_some() => {
            problems.push(format!("{want} is missing (the node routes {addr} by {r})"))
        }
        Some(r) => {
            if r.protocol != RTPROT_FERROVIA {
                problems.push(format!(
                    "{want} has protocol {}, expected {RTPROT_FERROVIA}",
                    r.protocol
                ));
            }
            if r.table != MAIN_TABLE {
                problems.push(format!("{want} is in table {}, expected main", r.table));
            }
        }
    }
    Ok(())
}

fn check_default(
    routes: &[Route],
    gw: IpAddr,
    index: u32,
    ifname: &str,
    problems: &mut Vec<String>,
) {
    let defaults: Vec<&Route> = routes.iter().filter(|r| r.prefix.1 == 0).collect();
    if defaults
        .iter()
        .any(|r| r.gateway == Some(gw) && r.oif == Some(index))
    {
        return;
    }
    let found = defaults.iter().map(|r| r.to_string()).collect::<Vec<_>>();
    problems.push(format!(
        "pod route default via {gw} dev {ifname} is missing{}",
        if found.is_empty() {
            String::new()
        } else {
            format!(" (found {})", found.join(", "))
        }
    ));
}

fn check_sysctls(items: &[(String, &str)], place: &str, problems: &mut Vec<String>) {
    for (path, want) in items {
        match std::fs::read_to_string(path) {
            Ok(v) if v.trim() == *want => {}
            Ok(v) => problems.push(format!(
                "{} is {} {place}, expected {want}",
                sysctl_name(path),
                v.trim()
            )),
            Err(e) => problems.push(format!("cannot read {} {place}: {e}", sysctl_name(path))),
        }
    }
}

// =====================================================================================
// Namespaces and sysctls.

/// Opens a network namespace file; checks that it is one and that it is not the caller's
/// own namespace (wiring the node to itself would replace its routes).
fn open_netns(path: &Path) -> Result<File, WiringError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            WiringError::NetnsMissing {
                netns: path.to_path_buf(),
            }
        } else {
            WiringError::Netns {
                netns: path.to_path_buf(),
                source: e,
            }
        }
    })?;
    // SAFETY: fstatfs on a descriptor we own, into a zeroed struct of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(WiringError::Netns {
            netns: path.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    #[allow(clippy::unnecessary_cast)]
    let fs_type = st.f_type as u64;
    if fs_type != NSFS_MAGIC {
        return Err(WiringError::NotANetns {
            netns: path.to_path_buf(),
            reason: "not a namespace file (an unmounted or deleted namespace?)".into(),
        });
    }
    let theirs = file.metadata().map_err(|e| WiringError::Netns {
        netns: path.to_path_buf(),
        source: e,
    })?;
    if let Ok(ours) = std::fs::metadata("/proc/thread-self/ns/net") {
        if ours.dev() == theirs.dev() && ours.ino() == theirs.ino() {
            return Err(WiringError::NotANetns {
                netns: path.to_path_buf(),
                reason: "it is the node's own network namespace".into(),
            });
        }
    }
    Ok(file)
}

/// Moves the calling thread (a wiring worker, never a runtime thread) into `ns`.
fn enter_netns(ns: &File, path: &Path) -> Result<(), WiringError> {
    // SAFETY: setns on a descriptor we own; it changes only the calling thread.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let e = io::Error::last_os_error();
        return Err(WiringError::Netns {
            netns: path.to_path_buf(),
            source: e,
        });
    }
    Ok(())
}

fn conf_path(family: &str, ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/conf/{ifname}/{key}")
}

fn neigh_path(family: &str, ifname: &str, key: &str) -> String {
    format!("/proc/sys/net/{family}/neigh/{ifname}/{key}")
}

/// `net.ipv4.conf.eth0.forwarding` for `/proc/sys/net/ipv4/conf/eth0/forwarding`.
fn sysctl_name(path: &str) -> String {
    let rest = path.strip_prefix("/proc/sys/").unwrap_or(path);
    rest.replace('/', ".")
}

/// Writes a sysctl of the calling thread's namespace. A missing file is an error only if
/// `required` (IPv6 disabled on the node is fine for an IPv4-only pod).
fn write_sysctl(path: &str, value: &'static str, required: bool) -> Result<(), WiringError> {
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()));
    match r {
        Ok(()) => Ok(()),
        Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WiringError::Sysctl {
            path: path.to_string(),
            value,
            source: e,
        }),
    }
}

fn socket_error(namespace: &str, e: io::Error) -> WiringError {
    WiringError::Socket {
        namespace: namespace.to_string(),
        source: e,
    }
}

/// The error for the kernel's refusal of `action`.
fn refusal(nack: Nack, action: String) -> WiringError {
    let mut detail = nack.describe();
    if matches!(nack.errno, netlink::EPERM | netlink::EACCES) {
        detail.push_str(": the agent needs CAP_NET_ADMIN (run it as root)");
    }
    WiringError::Netlink {
        action,
        errno: nack.errno,
        detail,
    }
}

/// Sends `reqs` in one datagram; the first refusal becomes the error, with its request's
/// index.
fn batch_checked(
    rtnl: &mut Rtnl,
    reqs: Vec<Req>,
    place: &str,
) -> Result<Vec<Vec<RouteNetlinkMessage>>, (usize, WiringError)> {
    match rtnl.batch_checked(reqs) {
        Ok(Ok(answers)) => Ok(answers),
        Ok(Err(Refused {
            index,
            action,
            nack,
        })) => Err((index, refusal(nack, action))),
        Err(e) => Err((usize::MAX, socket_error(place, e))),
    }
}

// =====================================================================================
// Messages and answers.

fn link_mac(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

fn link_mtu(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// IFLA_LINK: a veth's peer index (in the peer's namespace).
fn link_peer(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(i) if *i != 0 => Some(*i),
        _ => None,
    })
}

fn is_veth(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos
            .iter()
            .any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))),
        _ => false,
    })
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A route as CHECK needs it.
struct Route {
    prefix: (IpAddr, u8),
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    scope: RouteScope,
    protocol: u8,
    table: u32,
}

impl Route {
    fn of(r: &RouteMessage) -> Route {
        let unspecified = match r.header.address_family {
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let mut route = Route {
            prefix: (unspecified, r.header.destination_prefix_length),
            gateway: None,
            oif: None,
            scope: r.header.scope,
            protocol: u8::from(r.header.protocol),
            table: u32::from(r.header.table),
        };
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => {
                    if let Some(ip) = route_ip(d) {
                        route.prefix.0 = ip;
                    }
                }
                RouteAttribute::Gateway(g) => route.gateway = route_ip(g),
                RouteAttribute::Oif(i) => route.oif = Some(*i),
                RouteAttribute::Table(t) => route.table = *t,
                _ => {}
            }
        }
        route
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.prefix.1 == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}/{}", self.prefix.0, self.prefix.1)?;
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " dev #{i}")?;
        }
        Ok(())
    }
}

fn get_link_by_name(
    rtnl: &mut Rtnl,
    name: &str,
    place: &str,
) -> Result<Option<LinkMessage>, WiringError> {
    match rtnl
        .request(netlink::get_link_named(name), 0)
        .map_err(|e| socket_error(place, e))?
    {
        Ok(msgs) => Ok(msgs.into_iter().find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(l),
            _ => None,
        })),
        Err(n) if n.errno == ENODEV => Ok(None),
        Err(n) => Err(refusal(n, format!("read {name} in {place}"))),
    }
}

/// The addresses (address, prefix length) on interface `index`.
fn dump_addresses(
    rtnl: &mut Rtnl,
    family: AddressFamily,
    index: u32,
    place: &str,
) -> Result<Vec<(IpAddr, u8)>, WiringError> {
    let action = format!("list the addresses in {place}");
    let msgs = rtnl
        .dump(netlink::get_addresses(family, index))
        .map_err(|e| socket_error(place, e))?
        .map_err(|n| refusal(n, action))?;
    let mut out = Vec::new();
    for m in msgs {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if a.header.index != index || a.header.family != family {
                continue;
            }
            let local = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                out.push((ip, a.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// The unicast routes of the main table.
fn dump_routes(
    rtnl: &mut Rtnl,
    family: AddressFamily,
    place: &str,
) -> Result<Vec<Route>, WiringError> {
    let action = format!("list the routes in {place}");
    let msgs = rtnl
        .dump(netlink::get_main_routes(family))
        .map_err(|e| socket_error(place, e))?
        .map_err(|n| refusal(n, action))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) if r.header.kind == RouteType::Unicast => {
                Some(Route::of(r))
            }
            _ => None,
        })
        .filter(|r| r.table == MAIN_TABLE)
        .collect())
}

/// Test-only: the ADDs of the container ids listed here hold, wired, until their caller
/// stops waiting, so a test can abandon an ADD that is surely still running.
#[cfg(test)]
pub(crate) mod hold {
    use futures::channel::oneshot;
    use std::collections::BTreeMap;
    use std::sync::{Mutex, MutexGuard};
    use std::time::{Duration, Instant};

    /// Container id → whether its ADD is holding.
    static HELD: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());

    fn held() -> MutexGuard<'static, BTreeMap<String, bool>> {
        HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the next ADD of `container_id` hold once wired.
    pub(crate) fn hold(container_id: &str) {
        held().insert(container_id.to_string(), false);
    }

    /// Whether the ADD of `container_id` is holding, wired.
    pub(crate) fn holding(container_id: &str) -> bool {
        held().get(container_id) == Some(&true)
    }

    /// In the ADD worker: if `container_id` is held, waits until the caller stopped waiting
    /// (at most a minute, so a broken test cannot hang the suite).
    pub(super) fn wait<T>(container_id: &str, tx: &oneshot::Sender<T>) {
        match held().get_mut(container_id) {
            Some(h) => *h = true,
            None => return,
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !tx.is_canceled() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        held().remove(container_id);
    }
}
