//! The public value types (pools, handles, families) and the objects IPAM stores.
//!
//! Stored layouts (JSON, camelCase); see the crate documentation for the rules.

use crate::error::IpamError;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Store kind of a pool.
pub const KIND_POOL: &str = "IPPool";
/// Store kind of a block.
pub const KIND_BLOCK: &str = "IPAMBlock";
/// Store kind of a handle.
pub const KIND_HANDLE: &str = "IPAMHandle";

/// Default block size of IPv4 pools (64 addresses).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default block size of IPv6 pools (64 addresses).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;
/// Allowed IPv4 block sizes (at most 4096 addresses per block object).
pub const BLOCK_SIZES_V4: std::ops::RangeInclusive<u8> = 20..=32;
/// Allowed IPv6 block sizes (at most 4096 addresses per block object).
pub const BLOCK_SIZES_V6: std::ops::RangeInclusive<u8> = 116..=128;
/// Longest store name IPAM writes (a Kubernetes object name's limit).
pub const MAX_NAME_LEN: usize = 253;
/// Longest Linux interface name.
pub const MAX_IFNAME_LEN: usize = 15;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn of_addr(ip: &IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    pub fn of_net(net: &IpNet) -> Family {
        match net {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    pub(crate) fn example_pool(self) -> &'static str {
        match self {
            Family::Ipv4 => "10.244.0.0/16",
            Family::Ipv6 => "fd00:10:244::/48",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// Which families an assignment asks for: one address of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Families {
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Families {
    pub const V4: Families = Families {
        ipv4: true,
        ipv6: false,
    };
    pub const V6: Families = Families {
        ipv4: false,
        ipv6: true,
    };
    pub const DUAL: Families = Families {
        ipv4: true,
        ipv6: true,
    };

    /// The requested families, IPv4 first.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        [
            self.ipv4.then_some(Family::Ipv4),
            self.ipv6.then_some(Family::Ipv6),
        ]
        .into_iter()
        .flatten()
    }
}

/// A pool as written in the agent config: `{ cidr: 10.244.0.0/16, blockSize: 26 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    pub cidr: String,
    /// Prefix length of the pool's blocks; /26 for IPv4 and /122 for IPv6 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u8>,
    /// A disabled pool gives no new addresses; those in use stay until released.
    #[serde(default)]
    pub disabled: bool,
    /// Traffic from the pool's addresses to destinations outside every pool (and outside
    /// the cluster's nodes) leaves with the node's address (masquerade). On by default.
    #[serde(
        default = "default_nat_outgoing",
        skip_serializing_if = "is_default_nat_outgoing"
    )]
    pub nat_outgoing: bool,
}

fn default_nat_outgoing() -> bool {
    true
}

/// The stored layout carries `natOutgoing` only when it is off (the default stays implicit,
/// as in objects written before the setting existed).
fn is_default_nat_outgoing(v: &bool) -> bool {
    *v
}

impl PoolSpec {
    pub fn new(cidr: impl Into<String>) -> Self {
        PoolSpec {
            cidr: cidr.into(),
            block_size: None,
            disabled: false,
            nat_outgoing: true,
        }
    }

    pub fn nat_outgoing(mut self, nat_outgoing: bool) -> Self {
        self.nat_outgoing = nat_outgoing;
        self
    }

    pub fn block_size(mut self, block_size: u8) -> Self {
        self.block_size = Some(block_size);
        self
    }

    pub fn disabled(mut self, disabled: bool) -> Self {
        self.disabled = disabled;
        self
    }
}

/// A validated pool; also its stored layout (kind `IPPool`, name [`net_name`] of the CIDR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    pub cidr: IpNet,
    pub block_size: u8,
    #[serde(default)]
    pub disabled: bool,
    /// Masquerade traffic from the pool to outside every pool; pools stored before the
    /// setting existed have it on.
    #[serde(
        default = "default_nat_outgoing",
        skip_serializing_if = "is_default_nat_outgoing"
    )]
    pub nat_outgoing: bool,
}

impl Pool {
    /// Validates a spec: the CIDR parses and has no host bits, and the block size is
    /// within [`BLOCK_SIZES_V4`] / [`BLOCK_SIZES_V6`] and not shorter than the pool prefix.
    pub fn from_spec(spec: &PoolSpec) -> Result<Pool, IpamError> {
        let text = spec.cidr.trim();
        let cidr: IpNet = text.parse().map_err(|_| IpamError::BadCidr {
            cidr: spec.cidr.clone(),
            reason: if text.contains('/') {
                "it is not an address followed by a prefix length".to_string()
            } else {
                "the prefix length is missing".to_string()
            },
        })?;
        if cidr.trunc() != cidr {
            return Err(IpamError::BadCidr {
                cidr: spec.cidr.clone(),
                reason: format!("host bits are set (did you mean {}?)", cidr.trunc()),
            });
        }
        let block_size = spec.block_size.unwrap_or(match cidr {
            IpNet::V4(_) => DEFAULT_BLOCK_SIZE_V4,
            IpNet::V6(_) => DEFAULT_BLOCK_SIZE_V6,
        });
        let pool = Pool {
            cidr,
            block_size,
            disabled: spec.disabled,
            nat_outgoing: spec.nat_outgoing,
        };
        pool.check_block_size()?;
        Ok(pool)
    }

    pub(crate) fn check_block_size(&self) -> Result<(), IpamError> {
        let range = match self.cidr {
            IpNet::V4(_) => BLOCK_SIZES_V4,
            IpNet::V6(_) => BLOCK_SIZES_V6,
        };
        let min = (*range.start()).max(self.cidr.prefix_len());
        let max = *range.end();
        if self.block_size < min || self.block_size > max {
            return Err(IpamError::BadBlockSize {
                cidr: self.cidr,
                block_size: self.block_size,
                min,
                max,
            });
        }
        Ok(())
    }

    pub fn family(&self) -> Family {
        Family::of_net(&self.cidr)
    }

    /// The store name of this pool.
    pub fn name(&self) -> String {
        net_name(&self.cidr)
    }
}

/// A handle: what an allocation is held under. For CNI, the container id and the
/// interface name inside the container (`CNI_CONTAINERID`, `CNI_IFNAME`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HandleId {
    pub container_id: String,
    pub interface: String,
}

impl HandleId {
    pub fn new(container_id: impl Into<String>, interface: impl Into<String>) -> Self {
        HandleId {
            container_id: container_id.into(),
            interface: interface.into(),
        }
    }

    /// The handle's store name and its key inside blocks: `CONTAINERID:IFNAME`. Neither
    /// part may contain `:` (CNI container ids are `[A-Za-z0-9][A-Za-z0-9_.-]*`, Linux
    /// interface names have no `:`), so the key is unambiguous.
    pub fn key(&self) -> String {
        format!("{}:{}", self.container_id, self.interface)
    }

    /// The handle's object name in the datastore (a DNS-1123 subdomain):
    /// `CONTAINERID.IFNAME` when that is one and the container id has no `.` (so the
    /// first `.` separates the two: `0123abcd.eth0`), else `h-` and the first 32 hex digits
    /// of the SHA-256 of [`HandleId::key`] (`h-3f…`; it has no `.`, so it never equals a
    /// name of the first form). The real ids are kept inside the object.
    pub fn name(&self) -> String {
        let direct = format!("{}.{}", self.container_id, self.interface);
        if !self.container_id.contains('.')
            && crate::datastore::dns1123_subdomain_problem(&direct).is_none()
        {
            return direct;
        }
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.key().as_bytes());
        let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!("h-{hex}")
    }

    /// The inverse of [`HandleId::key`].
    pub fn from_key(key: &str) -> Option<HandleId> {
        let (container_id, interface) = key.split_once(':')?;
        let handle = HandleId::new(container_id, interface);
        handle.validate().ok()?;
        Some(handle)
    }

    /// Checks the CNI rules for container ids and the Linux rules for interface names.
    pub fn validate(&self) -> Result<(), IpamError> {
        let bad = |reason: &str| IpamError::InvalidHandle {
            handle: self.key(),
            reason: reason.to_string(),
        };
        let id = &self.container_id;
        if id.is_empty() {
            return Err(bad("the container id is empty"));
        }
        let mut chars = id.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(bad(
                "a container id is letters, digits, '_', '.' and '-', starting with a letter or digit",
            ));
        }
        let ifname = &self.interface;
        if ifname.is_empty() || ifname.len() > MAX_IFNAME_LEN {
            return Err(bad("an interface name is 1 to 15 bytes long"));
        }
        if ifname == "." || ifname == ".." {
            return Err(bad("an interface name cannot be '.' or '..'"));
        }
        if ifname
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "an interface name has no '/', ':', whitespace or control characters",
            ));
        }
        if self.key().len() > MAX_NAME_LEN {
            return Err(bad(
                "the container id and interface name together are longer than 252 bytes",
            ));
        }
        Ok(())
    }
}

impl fmt::Display for HandleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.container_id, self.interface)
    }
}

/// What IPAM records about the holder of a handle (shown by `ferrovia ipam show`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attributes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's UID (`K8S_POD_UID`), when the runtime passes it: leak collection tells
    /// a re-created pod of the same name from the one that held the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Attributes {
    pub fn pod(namespace: impl Into<String>, pod: impl Into<String>) -> Self {
        Attributes {
            namespace: Some(namespace.into()),
            pod: Some(pod.into()),
            uid: None,
        }
    }

    /// The same, with the pod's UID.
    pub fn with_uid(mut self, uid: impl Into<String>) -> Self {
        self.uid = Some(uid.into());
        self
    }
}

/// Checks a node name: non-empty, at most 253 bytes, no control characters.
pub(crate) fn validate_node(node: &str) -> Result<(), IpamError> {
    let reason = if node.is_empty() {
        "it is empty"
    } else if node.len() > MAX_NAME_LEN {
        "it is longer than 253 bytes"
    } else if node.chars().any(char::is_control) {
        "it contains control characters"
    } else {
        return Ok(());
    };
    Err(IpamError::InvalidNode {
        node: node.to_string(),
        reason: reason.to_string(),
    })
}

/// The store name of a pool or block: its CIDR with `.`, `:` and `/` turned into `-`
/// (`10.244.1.0/26` → `10-244-1-0-26`, `fd00:10:244::/122` → `fd00-10-244---122`), and
/// a `0` in front when that would start with `-` (`::/0` → `0---0`), so that it is a
/// DNS-1123 name. Unambiguous for canonical CIDRs: an IPv4 name has 5 parts and never
/// `--`; an IPv6 name has 9 parts or contains `--`; canonical IPv6 text never starts
/// with `0::`.
pub fn net_name(net: &IpNet) -> String {
    let name = net.to_string().replace(['.', ':', '/'], "-");
    if name.starts_with('-') {
        format!("0{name}")
    } else {
        name
    }
}

// ---------------------------------------------------------------------------------------
// Stored objects.

/// One address in use inside a block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Allocation {
    /// Offset of the address from the block's network address.
    pub ordinal: u32,
    /// [`HandleId::key`] of the holder.
    pub handle: String,
    /// The node whose pod holds the address, only when it is not the block's node
    /// (a borrowed address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A block (kind `IPAMBlock`, name [`net_name`] of the CIDR). The source of truth for
/// which address is held by which handle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Block {
    pub cidr: IpNet,
    /// The node the block is affine to.
    pub affinity: String,
    /// Sorted by ordinal, no ordinal twice.
    #[serde(default)]
    pub allocations: Vec<Allocation>,
    /// When a sweep first saw the block empty (Unix time in milliseconds); cleared by
    /// the next allocation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<u64>,
}

impl Block {
    pub fn new(cidr: IpNet, affinity: &str) -> Block {
        Block {
            cidr,
            affinity: affinity.to_string(),
            allocations: Vec::new(),
            empty_since_ms: None,
        }
    }

    pub fn name(&self) -> String {
        net_name(&self.cidr)
    }

    pub fn family(&self) -> Family {
        Family::of_net(&self.cidr)
    }

    /// Number of addresses (at most 4096 for a validated block).
    pub fn capacity(&self) -> u32 {
        1u32 << host_bits(&self.cidr).min(31)
    }

    /// Checks the layout rules; the reason when they are broken.
    pub fn check(&self, name: &str) -> Result<(), String> {
        if net_name(&self.cidr) != name {
            return Err(format!("its cidr {} does not match its name", self.cidr));
        }
        if self.cidr.trunc() != self.cidr {
            return Err(format!("its cidr {} has host bits set", self.cidr));
        }
        if host_bits(&self.cidr) > 12 {
            return Err(format!(
                "its cidr {} is larger than 4096 addresses",
                self.cidr
            ));
        }
        if self.affinity.is_empty() {
            return Err("its affinity is empty".to_string());
        }
        let capacity = self.capacity();
        let mut previous: Option<u32> = None;
        for a in &self.allocations {
            if a.ordinal >= capacity {
                return Err(format!("ordinal {} is outside the block", a.ordinal));
            }
            if previous.is_some_and(|p| p >= a.ordinal) {
                return Err("its allocations are not sorted by ordinal, or repeat one".to_string());
            }
            previous = Some(a.ordinal);
            if HandleId::from_key(&a.handle).is_none() {
                return Err(format!(
                    "allocation {} has an invalid handle {:?}",
                    a.ordinal, a.handle
                ));
            }
        }
        Ok(())
    }

    /// The lowest free ordinal.
    pub fn first_free(&self) -> Option<u32> {
        let mut candidate = 0u32;
        for a in &self.allocations {
            if a.ordinal != candidate {
                break;
            }
            candidate += 1;
        }
        (candidate < self.capacity()).then_some(candidate)
    }

    pub fn ordinal_of(&self, ip: &IpAddr) -> Option<u32> {
        if !self.cidr.contains(ip) {
            return None;
        }
        let offset = addr_to_u128(ip).checked_sub(addr_to_u128(&self.cidr.network()))?;
        u32::try_from(offset).ok()
    }

    pub fn ip_at(&self, ordinal: u32) -> Option<IpAddr> {
        if ordinal >= self.capacity() {
            return None;
        }
        offset_addr(&self.cidr, u128::from(ordinal))
    }

    pub fn allocation(&self, ordinal: u32) -> Option<&Allocation> {
        self.allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
            .ok()
            .and_then(|i| self.allocations.get(i))
    }

    /// The node whose pod holds an allocation.
    pub fn holder<'a>(&'a self, a: &'a Allocation) -> &'a str {
        a.node.as_deref().unwrap_or(&self.affinity)
    }

    /// Records an allocation; false when the ordinal is taken.
    pub fn insert(&mut self, allocation: Allocation) -> bool {
        match self
            .allocations
            .binary_search_by_key(&allocation.ordinal, |a| a.ordinal)
        {
            Ok(_) => false,
            Err(i) => {
                self.allocations.insert(i, allocation);
                self.empty_since_ms = None;
                true
            }
        }
    }

    /// Removes the allocation at `ordinal` if `handle` holds it.
    pub fn remove_if_held(&mut self, ordinal: u32, handle: &str) -> bool {
        match self
            .allocations
            .binary_search_by_key(&ordinal, |a| a.ordinal)
        {
            Ok(i) if self.allocations.get(i).is_some_and(|a| a.handle == handle) => {
                self.allocations.remove(i);
                true
            }
            _ => false,
        }
    }
}

/// One address a handle holds, with its block.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HandleAddr {
    pub ip: IpAddr,
    pub block: IpNet,
}

/// A handle (kind `IPAMHandle`, name [`HandleId::name`]): an index of the addresses a
/// handle holds, so that release does not scan blocks. It may list more than the blocks
/// hold (an assignment that stopped halfway), never less.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Handle {
    pub container_id: String,
    pub interface: String,
    /// The node that assigned the addresses.
    pub node: String,
    #[serde(default)]
    pub attributes: Attributes,
    #[serde(default)]
    pub addresses: Vec<HandleAddr>,
}

impl Handle {
    pub fn new(id: &HandleId, node: &str, attributes: &Attributes) -> Handle {
        Handle {
            container_id: id.container_id.clone(),
            interface: id.interface.clone(),
            node: node.to_string(),
            attributes: attributes.clone(),
            addresses: Vec::new(),
        }
    }

    pub fn id(&self) -> HandleId {
        HandleId::new(&self.container_id, &self.interface)
    }

    pub fn check(&self, name: &str) -> Result<(), String> {
        let id = self.id();
        id.validate().map_err(|e| e.to_string())?;
        if id.name() != name {
            return Err("its containerId and interface do not match its name".to_string());
        }
        if self.node.is_empty() {
            return Err("its node is empty".to_string());
        }
        for a in &self.addresses {
            if !a.block.contains(&a.ip) {
                return Err(format!("address {} is not inside block {}", a.ip, a.block));
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Address arithmetic.

pub(crate) fn host_bits(net: &IpNet) -> u8 {
    net.max_prefix_len() - net.prefix_len()
}

pub(crate) fn addr_to_u128(ip: &IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(*v4)),
        IpAddr::V6(v6) => u128::from(*v6),
    }
}

/// The address `offset` after the network address of `net`, if it stays in the family.
pub(crate) fn offset_addr(net: &IpNet, offset: u128) -> Option<IpAddr> {
    let base = addr_to_u128(&net.network());
    let value = base.checked_add(offset)?;
    match net {
        IpNet::V4(_) => u32::try_from(value)
            .ok()
            .map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        IpNet::V6(_) => Some(IpAddr::V6(Ipv6Addr::from(value))),
    }
}

/// A network of `prefix` bits starting at `ip`.
pub(crate) fn make_net(ip: IpAddr, prefix: u8) -> Option<IpNet> {
    match ip {
        IpAddr::V4(v4) => Ipv4Net::new(v4, prefix).ok().map(IpNet::V4),
        IpAddr::V6(v6) => Ipv6Net::new(v6, prefix).ok().map(IpNet::V6),
    }
}

pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The first block of `pool` that overlaps none of `taken`, or `None` when the pool is
/// full. Works for any size of taken networks; costs O(taken · log taken).
pub(crate) fn first_free_block(pool: &Pool, taken: &[IpNet]) -> Option<IpNet> {
    let index_bits = pool.block_size.checked_sub(pool.cidr.prefix_len())?;
    let block_bits = pool.cidr.max_prefix_len().checked_sub(pool.block_size)?;
    let base = addr_to_u128(&pool.cidr.network());
    let top = addr_to_u128(&pool.cidr.broadcast());
    let mut ranges: Vec<(u128, u128)> = taken
        .iter()
        .filter(|t| Family::of_net(t) == pool.family() && overlaps(t, &pool.cidr))
        .map(|t| {
            let start = addr_to_u128(&t.network()).max(base) - base;
            let end = addr_to_u128(&t.broadcast()).min(top) - base;
            (start >> block_bits, end >> block_bits)
        })
        .collect();
    ranges.sort_unstable();
    let mut candidate: u128 = 0;
    for (start, end) in ranges {
        if start > candidate {
            break;
        }
        candidate = candidate.max(end.checked_add(1)?);
    }
    if index_bits < 128 && candidate >= (1u128 << index_bits) {
        return None;
    }
    let offset = candidate.checked_shl(u32::from(block_bits))?;
    if block_bits > 0 && offset >> block_bits != candidate {
        return None;
    }
    make_net(offset_addr(&pool.cidr, offset)?, pool.block_size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::dns1123_subdomain_problem;

    #[test]
    fn store_names_are_kubernetes_names() {
        for (cidr, name) in [
            ("10.244.1.0/26", "10-244-1-0-26"),
            ("fd00:10:244::/122", "fd00-10-244---122"),
            ("::/0", "0---0"),
            ("::ffff:0:0/96", "0--ffff-0-0-0-0-96"),
        ] {
            let net: IpNet = cidr.parse().expect("cidr");
            assert_eq!(net_name(&net), name);
            assert_eq!(dns1123_subdomain_problem(name), None, "{name}");
        }
        let h = HandleId::new("0123abcd", "eth0");
        assert_eq!(h.name(), "0123abcd.eth0");
        for (id, ifname) in [
            ("ABC", "eth0"),
            ("a.b", "eth0"),
            ("a_b", "eth0"),
            ("a", "Eth0"),
            ("a", "eth_0"),
        ] {
            let h = HandleId::new(id, ifname);
            let name = h.name();
            assert!(name.starts_with("h-") && name.len() == 34, "{name}");
            assert_eq!(dns1123_subdomain_problem(&name), None, "{name}");
        }
        // Different ids, different names (the hash covers the exact key).
        assert_ne!(
            HandleId::new("ABC", "eth0").name(),
            HandleId::new("abc", "eth0").name()
        );
        assert_ne!(
            HandleId::new("a.b", "c").name(),
            HandleId::new("a", "b.c").name()
        );
        // Longest ids still give a valid name.
        let long = HandleId::new("a".repeat(236), "eth0.1234567890");
        assert_eq!(dns1123_subdomain_problem(&long.name()), None);
    }
}
