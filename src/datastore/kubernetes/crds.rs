//! The custom resources of the Kubernetes datastore (group `ferrovia.io`, version
//! `v1alpha1`, cluster-scoped) and their CRDs, generated from these Rust types.
//!
//! Each kind's `spec` is exactly the JSON the datastore record of the same kind holds on
//! every backend (`ipam/src/model.rs`, `src/datastore/model.rs`): the backend writes the
//! record as the spec and reads the spec back as the record. The types here exist for the
//! schema; the OpenAPI validation refuses what the agent would refuse where a schema can
//! say it (a CIDR that is not one, an AS of 0, a block size outside its family's range);
//! what only the agent can check (host bits set, overlapping pools) is logged once with the
//! object's name and the object ignored.
//!
//! `ferrovia crds` prints [`all_crds_yaml`].

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The API group of every ferrovia custom resource.
pub const GROUP: &str = "ferrovia.io";
/// Its one version.
pub const VERSION: &str = "v1alpha1";

/// A string holding a CIDR (`10.244.0.0/16`, `fd00:10:244::/48`).
fn cidr_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "format": "cidr",
        "maxLength": 43,
        "description": "A network in CIDR notation, e.g. 10.244.0.0/16 or fd00:10:244::/48."
    })
}

/// A list of CIDRs (the Service ranges of `BGPConfiguration`).
fn cidr_list_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let item = cidr_schema(g);
    schemars::json_schema!({
        "type": "array",
        "maxItems": 64,
        "items": item,
        "description": "Networks in CIDR notation, network addresses (no host bits set)."
    })
}

/// A string holding an IPv4 or IPv6 address.
fn ip_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
        "description": "An IPv4 or IPv6 address."
    })
}

/// A usable AS number: 1..=4294967295 except AS_TRANS (23456), which only 2-byte speakers
/// use as a placeholder.
fn as_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer",
        "format": "int64",
        "minimum": 1,
        "maximum": 4294967295u64,
        "not": {"enum": [23456]},
        "description": "An AS number, 1 to 4294967295 (23456, AS_TRANS, is reserved)."
    })
}

/// A label selector in the equality/existence syntax the agents parse (`k=v`, `k==v`,
/// `k!=v`, `k`, `!k`, joined by commas).
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": crate::datastore::model::NODE_SELECTOR_PATTERN,
        "maxLength": 4096,
        "nullable": true,
        "description": "A label selector: key=value, key!=value, key, !key, joined by commas."
    })
}

/// Who holds an address: `CONTAINERID:IFNAME`.
fn handle_key_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]*:[^:/\\s]{1,15}$",
        "maxLength": 253,
        "description": "The holder, CONTAINERID:IFNAME."
    })
}

/// A pool of pod addresses, cut into blocks that nodes claim. Agents create pools from
/// their configuration (`ipam.pools`); an operator may add or disable one by hand. The
/// name is the CIDR with `.`, `:` and `/` turned into `-` (`10-244-0-0-16`).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "IPPool",
    plural = "ippools",
    shortname = "ferrovia-pool",
    category = "ferrovia",
    doc = "A pool of pod addresses, cut into blocks that nodes claim.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Block size","type":"integer","jsonPath":".spec.blockSize"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"NAT","type":"boolean","jsonPath":".spec.natOutgoing"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPPoolSpec {
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
    /// Prefix length of the pool's blocks: 20..=32 for IPv4, 116..=128 for IPv6, and not
    /// shorter than the pool's prefix.
    pub block_size: u8,
    /// A disabled pool gives no new addresses; those in use stay until released.
    #[serde(default)]
    pub disabled: bool,
    /// Traffic from the pool to destinations outside every pool and every node leaves with
    /// the node's address (masquerade); absent means true.
    #[serde(default = "nat_outgoing_default")]
    pub nat_outgoing: bool,
    /// When the pool was created (Unix milliseconds): of two overlapping pools created at
    /// once, the older stays.
    #[serde(default)]
    pub created_ms: u64,
}

fn nat_outgoing_default() -> bool {
    true
}

/// One address in use inside a block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllocationSpec {
    /// Offset of the address from the block's network address.
    #[schemars(range(max = 4095))]
    pub ordinal: u32,
    #[schemars(schema_with = "handle_key_schema")]
    pub handle: String,
    /// The node whose pod holds the address, only when it is not the block's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
}

/// A block of a pool, affine to one node: the source of truth for which address is held by
/// which pod. The node's agent announces it over BGP. Written by agents only.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "IPAMBlock",
    plural = "ipamblocks",
    category = "ferrovia",
    doc = "A block of pod addresses affine to one node; the source of truth for allocations.",
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.affinity"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMBlockSpec {
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
    /// The node the block is affine to.
    #[schemars(length(min = 1, max = 253))]
    pub affinity: String,
    /// Sorted by ordinal, no ordinal twice.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    pub allocations: Vec<AllocationSpec>,
    /// When a sweep first saw the block empty (Unix milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_since_ms: Option<u64>,
}

/// Which node a block is affine to, as its own object. Not written by IPAM in this
/// version: the affinity lives in the block (`IPAMBlock.spec.affinity`), so claiming a block
/// is one compare-and-swap write and two nodes can never both believe they own it. The kind
/// is defined so that a later version can add an affinity index without a CRD change.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "BlockAffinity",
    plural = "blockaffinities",
    category = "ferrovia",
    doc = "A node's claim on a block (reserved: the affinity lives in IPAMBlock.spec.affinity).",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"CIDR","type":"string","jsonPath":".spec.cidr"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BlockAffinitySpec {
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    #[schemars(schema_with = "cidr_schema")]
    pub cidr: String,
}

/// What IPAM records about the holder of a handle.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandleAttributesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod's UID (K8S_POD_UID): leak collection tells a pod re-created under the same
    /// name from the one that holds the addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One address a handle holds, with its block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandleAddrSpec {
    #[schemars(schema_with = "ip_schema")]
    pub ip: String,
    #[schemars(schema_with = "cidr_schema")]
    pub block: String,
}

/// The addresses one pod interface holds (an index of the blocks' allocations, so that a
/// release does not scan blocks). The name is `CONTAINERID.IFNAME`, or `h-` and a hash
/// when that is not a valid object name. Written by agents only.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "IPAMHandle",
    plural = "ipamhandles",
    category = "ferrovia",
    doc = "The addresses one pod interface holds.",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Namespace","type":"string","jsonPath":".spec.attributes.namespace"}"#,
    printcolumn = r#"{"name":"Pod","type":"string","jsonPath":".spec.attributes.pod"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct IPAMHandleSpec {
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"),
        length(min = 1, max = 237)
    )]
    pub container_id: String,
    #[schemars(regex(pattern = r"^[^:/\s]+$"), length(min = 1, max = 15))]
    pub interface: String,
    /// The node that assigned the addresses.
    #[schemars(length(min = 1, max = 253))]
    pub node: String,
    #[serde(default)]
    pub attributes: HandleAttributesSpec,
    #[serde(default)]
    pub addresses: Vec<HandleAddrSpec>,
}

/// A BGP peer outside the node mesh (a route reflector, a ToR): for every node, only for
/// `node`, or for the nodes matching `nodeSelector`. `name` repeats `metadata.name` (the record is the same on every backend).
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "BGPPeer",
    plural = "bgppeers",
    category = "ferrovia",
    doc = "A BGP peer outside the node mesh, for every node, one node, or the nodes a label selector matches.",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".spec.address"}"#,
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Selector","type":"string","jsonPath":".spec.nodeSelector"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("not" = {"required": ["node", "nodeSelector"]}))]
pub struct BGPPeerSpec {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(schema_with = "ip_schema")]
    pub address: String,
    #[schemars(schema_with = "as_schema")]
    pub as_number: u32,
    /// Only this node peers with it; absent: every node does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub node: Option<String>,
    /// Only the Nodes whose labels match this label selector peer with it (`key=value`,
    /// `key!=value`, `key`, `!key`, joined by commas); not together with `node`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: Option<String>,
    /// A file (on each node) holding the TCP MD5 password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub password_file: Option<String>,
    /// GTSM (RFC 5082): the peer is at most this many hops away; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 254))]
    pub ttl_security: Option<u8>,
    /// BFD (RFC 5880/5881, single hop) with this peer; absent: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdSpec>,
    /// The most prefixes the peer may send, and what happens past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<MaxPrefixesSpec>,
    /// Accept prefixes inside the cluster's pools from this peer (a ToR or route reflector
    /// carrying other nodes' pod routes); otherwise they are refused as hijacks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_pool_prefixes: bool,
    /// Accept the default route from this peer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_default_route: bool,
    /// Import prefix list: the first matching entry decides, no match is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub import_prefixes: Vec<PrefixRuleSpec>,
    /// Export prefix list: only what it permits is advertised.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_prefixes: Vec<PrefixRuleSpec>,
}

/// `bfd` of a BGP peer: the configuration file's `bfd` object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BfdSpec {
    /// BFD runs beside the BGP session; a BFD Down takes the session down at once.
    #[serde(default)]
    pub enabled: bool,
    /// The interval we send at and can receive at, in milliseconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 60000))]
    pub interval_ms: Option<u32>,
    /// Packets the peer may miss before it declares the session down (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 255))]
    pub multiplier: Option<u32>,
}

/// What happens when a peer sends more prefixes than its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MaxPrefixesActionSpec {
    /// Log and count; keep the session and the routes.
    Warn,
    /// Close with CEASE 6/1 and connect again after restartAfterSeconds.
    #[default]
    Restart,
}

/// `maxPrefixes` of a BGP peer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaxPrefixesSpec {
    /// Prefixes accepted from the peer (after import policy, both families).
    #[schemars(range(min = 1))]
    pub limit: u32,
    #[serde(default)]
    pub action: MaxPrefixesActionSpec,
    /// With action restart: seconds before connecting again (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub restart_after_seconds: Option<u64>,
}

/// What a matching prefix-list entry does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PrefixActionSpec {
    #[default]
    Permit,
    Deny,
}

/// A prefix-list entry: matches prefixes inside `prefix` of its exact length, or of a
/// length within ge..le.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixRuleSpec {
    #[schemars(schema_with = "cidr_schema")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub ge: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 128))]
    pub le: Option<u8>,
    /// permit (default) or deny.
    #[serde(default)]
    pub action: PrefixActionSpec,
}

/// The cluster-wide BGP settings; one object, named `default`.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ferrovia.io",
    version = "v1alpha1",
    kind = "BGPConfiguration",
    plural = "bgpconfigurations",
    category = "ferrovia",
    doc = "The cluster-wide BGP settings (one object, named default).",
    printcolumn = r#"{"name":"AS","type":"integer","jsonPath":".spec.asNumber"}"#,
    printcolumn = r#"{"name":"Mesh","type":"boolean","jsonPath":".spec.mesh"}"#,
    printcolumn = r#"{"name":"Port","type":"integer","jsonPath":".spec.listenPort"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BGPConfigurationSpec {
    /// Default AS of every node that does not set its own.
    #[schemars(schema_with = "as_schema")]
    pub as_number: u32,
    /// Full iBGP mesh between all nodes (off when route reflectors or ToRs do the job).
    pub mesh: bool,
    #[schemars(range(min = 1, max = 65535))]
    pub listen_port: u16,
    /// Service cluster IP ranges: every node announces them, and the /32 (/128) of each
    /// cluster IP inside them (internalTrafficPolicy Local: only from nodes with a ready
    /// endpoint of the Service).
    #[serde(
        rename = "serviceClusterIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "cidr_list_schema")]
    pub service_cluster_ips: Vec<String>,
    /// Service external IP ranges (spec.externalIPs), announced like serviceClusterIPs
    /// (externalTrafficPolicy Local: only from nodes with a ready endpoint).
    #[serde(
        rename = "serviceExternalIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "cidr_list_schema")]
    pub service_external_ips: Vec<String>,
    /// Service load balancer IP ranges (status.loadBalancer.ingress[].ip), announced like
    /// serviceExternalIPs.
    #[serde(
        rename = "serviceLoadBalancerIPs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(schema_with = "cidr_list_schema")]
    pub service_load_balancer_ips: Vec<String>,
}

/// Adds to `crd` (as JSON) what the derive cannot say.
fn refine(kind: &str, crd: &mut Value) {
    let spec = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    match kind {
        "IPPool" => {
            // The block size depends on the family.
            spec["anyOf"] = json!([
                {"properties": {"cidr": {"pattern": "^[0-9.]+/[0-9]{1,2}$"},
                                "blockSize": {"minimum": 20, "maximum": 32}}},
                {"properties": {"cidr": {"pattern": ":"},
                                "blockSize": {"minimum": 116, "maximum": 128}}}
            ]);
            spec["properties"]["blockSize"]["minimum"] = json!(20);
            spec["properties"]["blockSize"]["maximum"] = json!(128);
        }
        "IPAMBlock" => {
            // At most 4096 addresses per block: /20../32 or /116../128.
            spec["anyOf"] = json!([
                {"properties": {"cidr": {"pattern": "^[0-9.]+/(2[0-9]|3[0-2])$"}}},
                {"properties": {"cidr": {"pattern": ":.*/(11[6-9]|12[0-8])$"}}}
            ]);
        }
        _ => {}
    }
}

/// Every CRD, in a fixed order.
pub fn all_crds() -> Vec<CustomResourceDefinition> {
    vec![
        IPPool::crd(),
        IPAMBlock::crd(),
        BlockAffinity::crd(),
        IPAMHandle::crd(),
        BGPPeer::crd(),
        BGPConfiguration::crd(),
    ]
}

/// Every CRD as JSON, refined.
pub fn all_crds_json() -> Result<Vec<Value>, serde_json::Error> {
    all_crds()
        .into_iter()
        .map(|crd| {
            let kind = crd.spec.names.kind.clone();
            let mut v = serde_json::to_value(&crd)?;
            refine(&kind, &mut v);
            Ok(v)
        })
        .collect()
}

/// Every CRD as one YAML stream (documents separated by `---`), the same bytes on every
/// run: what `ferrovia crds` prints and the chart ships.
pub fn all_crds_yaml() -> Result<String, String> {
    let crds = all_crds_json().map_err(|e| format!("cannot encode the CRDs: {e}"))?;
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        let text = serde_yaml_ng::to_string(&crd)
            .map_err(|e| format!("cannot write the CRDs as YAML: {e}"))?;
        out.push_str(&text);
    }
    Ok(out)
}
