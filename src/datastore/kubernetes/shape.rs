//! How a datastore kind maps onto a Kubernetes object: which API resource, which name,
//! and where the record sits (a custom resource's `spec`, a Node's annotations, a Lease's
//! annotation).

use super::crds::{GROUP, VERSION};
use super::{DatastoreError, Item, Labels, Object, Result, Version};
use kube::api::{ApiResource, DynamicObject};
use serde_json::{json, Map, Value};

/// Prefix of the Node annotations that hold the node's record, one per field.
pub const NODE_ANNOTATION_PREFIX: &str = "ferrovia.io/";
/// The Lease annotation holding the whole `NodeLease` record.
pub const LEASE_ANNOTATION: &str = "ferrovia.io/lease";
/// Leases are named `ferrovia-NODE`.
pub const LEASE_PREFIX: &str = "ferrovia-";
/// `spec.leaseDurationSeconds` of the Leases (agents renew every 10 s).
const LEASE_DURATION_SECONDS: u32 = 40;

/// The Kubernetes side of one datastore kind.
#[derive(Debug, Clone)]
pub enum Shape {
    /// A custom resource; the record is its `spec`.
    Crd(ApiResource),
    /// The core v1 Node; the record is in `ferrovia.io/…` annotations.
    Node(ApiResource),
    /// A `coordination.k8s.io/v1` Lease in `namespace`.
    Lease {
        resource: ApiResource,
        namespace: String,
    },
}

fn crd(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.to_string(),
        version: VERSION.to_string(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.to_string(),
        plural: plural.to_string(),
    }
}

/// The custom resource kind and plural of a datastore kind.
pub fn crd_names(kind: &str) -> (String, String) {
    let (k, p) = match kind {
        "IPPool" => ("IPPool", "ippools"),
        "IPAMBlock" => ("IPAMBlock", "ipamblocks"),
        "IPAMHandle" => ("IPAMHandle", "ipamhandles"),
        "BlockAffinity" => ("BlockAffinity", "blockaffinities"),
        "BgpPeer" => ("BGPPeer", "bgppeers"),
        "ClusterBgp" => ("BGPConfiguration", "bgpconfigurations"),
        other => {
            return (
                other.to_string(),
                format!("{}s", other.to_ascii_lowercase()),
            )
        }
    };
    (k.to_string(), p.to_string())
}

impl Shape {
    pub fn of(kind: &str, lease_namespace: &str) -> Shape {
        match kind {
            "Node" => Shape::Node(ApiResource {
                group: String::new(),
                version: "v1".into(),
                api_version: "v1".into(),
                kind: "Node".into(),
                plural: "nodes".into(),
            }),
            "NodeLease" => Shape::Lease {
                resource: ApiResource {
                    group: "coordination.k8s.io".into(),
                    version: "v1".into(),
                    api_version: "coordination.k8s.io/v1".into(),
                    kind: "Lease".into(),
                    plural: "leases".into(),
                },
                namespace: lease_namespace.to_string(),
            },
            other => {
                let (k, p) = crd_names(other);
                Shape::Crd(crd(&k, &p))
            }
        }
    }

    pub fn resource(&self) -> &ApiResource {
        match self {
            Shape::Crd(r) | Shape::Node(r) => r,
            Shape::Lease { resource, .. } => resource,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            Shape::Lease { namespace, .. } => Some(namespace),
            _ => None,
        }
    }

    pub fn is_node(&self) -> bool {
        matches!(self, Shape::Node(_))
    }

    /// The Kubernetes object name of datastore object `name`.
    pub fn object_name(&self, kind: &str, name: &str) -> Result<String> {
        match self {
            Shape::Lease { .. } => {
                let n = format!("{LEASE_PREFIX}{name}");
                if n.len() > 253 {
                    return Err(DatastoreError::invalid(
                        kind,
                        name,
                        "the node name is too long for its Lease name (ferrovia-NODE, at most 253 \
                         characters)",
                    ));
                }
                Ok(n)
            }
            _ => Ok(name.to_string()),
        }
    }

    /// The datastore item a Kubernetes object holds: `None` when it holds no record (a Node
    /// without ferrovia annotations, a Lease not ours), an error when the record is there
    /// but cannot be read.
    pub fn item(&self, kind: &str, obj: &DynamicObject) -> Option<Result<Item>> {
        let k8s_name = obj.metadata.name.clone()?;
        let labels: Labels = obj.metadata.labels.clone().unwrap_or_default();
        let version = Version::new(obj.metadata.resource_version.clone().unwrap_or_default());
        let annotations = obj.metadata.annotations.as_ref();
        let (name, value) = match self {
            Shape::Crd(_) => (
                k8s_name,
                obj.data.get("spec").cloned().unwrap_or(Value::Null),
            ),
            Shape::Node(_) => {
                let mut fields = Map::new();
                for (k, text) in annotations.into_iter().flatten() {
                    if let Some(field) = k.strip_prefix(NODE_ANNOTATION_PREFIX) {
                        fields.insert(field.to_string(), decode_annotation(text));
                    }
                }
                if fields.is_empty() {
                    return None;
                }
                fields.insert("name".into(), Value::String(k8s_name.clone()));
                // The pod CIDRs are the Node's own (the controller-manager assigns them),
                // never an annotation of ours.
                fields.remove(NODE_POD_CIDRS);
                if let Some(cidrs) = node_pod_cidrs(obj) {
                    fields.insert(NODE_POD_CIDRS.into(), cidrs);
                }
                // So are the labels (what peers' node selectors match): the Node's
                // metadata.labels, set by the kubelet, kubectl or the operator's tooling.
                fields.remove(NODE_LABELS);
                if !labels.is_empty() {
                    fields.insert(NODE_LABELS.into(), json!(labels));
                }
                (k8s_name, Value::Object(fields))
            }
            Shape::Lease { .. } => {
                let name = k8s_name.strip_prefix(LEASE_PREFIX)?.to_string();
                let text = annotations?.get(LEASE_ANNOTATION)?;
                match serde_json::from_str(text) {
                    Ok(v) => (name, v),
                    Err(e) => {
                        return Some(Err(DatastoreError::invalid(
                            kind,
                            &name,
                            format!(
                                "annotation {LEASE_ANNOTATION} of Lease {k8s_name} is not JSON: {e}"
                            ),
                        )))
                    }
                }
            }
        };
        Some(Ok(Item {
            object: Object {
                name,
                labels,
                value,
            },
            version,
        }))
    }

    /// The object to create or replace (custom resources and Leases; Nodes are patched).
    pub fn to_object(
        &self,
        kind: &str,
        object: &Object,
        expected: Option<&Version>,
    ) -> Result<DynamicObject> {
        let ar = self.resource();
        let k8s_name = self.object_name(kind, &object.name)?;
        let mut obj = DynamicObject::new(&k8s_name, ar);
        obj.metadata.labels = Some(object.labels.clone());
        obj.metadata.resource_version = expected.map(|v| v.as_str().to_string());
        match self {
            Shape::Crd(_) => obj.data = json!({ "spec": object.value }),
            Shape::Lease { namespace, .. } => {
                obj.metadata.namespace = Some(namespace.clone());
                obj.metadata.annotations = Some(
                    [(LEASE_ANNOTATION.to_string(), object.value.to_string())]
                        .into_iter()
                        .collect(),
                );
                let mut spec = json!({
                    "holderIdentity": object.name,
                    "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                });
                if let Some(t) = object.value.get("renewTime").and_then(micro_time) {
                    spec["renewTime"] = Value::String(t);
                }
                obj.data = json!({ "spec": spec });
            }
            Shape::Node(_) => {
                return Err(DatastoreError::Backend {
                    detail: "internal: Node records are written as annotation patches".into(),
                })
            }
        }
        Ok(obj)
    }
}

/// Unix seconds as a Kubernetes MicroTime (`2026-12-02T00:10:00.000000Z`).
fn micro_time(v: &Value) -> Option<String> {
    let secs = i64::try_from(v.as_u64()?).ok()?;
    let t = k8s_openapi::jiff::Timestamp::from_second(secs).ok()?;
    Some(t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
}

/// An annotation's text as a record field: JSON when it is JSON other than a string
/// (numbers, booleans, lists, objects), else the text itself.
fn decode_annotation(text: &str) -> Value {
    match serde_json::from_str::<Value>(text) {
        Ok(v) if !v.is_string() => v,
        _ => Value::String(text.to_string()),
    }
}

/// A field as annotation text: strings as they are, anything else as JSON.
fn encode_annotation(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether `field` can be the name part of an annotation key.
fn annotation_name_ok(field: &str) -> bool {
    let b = field.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// The node record's field that comes from the Node's `spec.podCIDRs` (or the older
/// single `spec.podCIDR`), read only: the controller-manager owns it.
const NODE_POD_CIDRS: &str = "podCidrs";

/// The node record's field that comes from the Node's `metadata.labels`, read only.
const NODE_LABELS: &str = "labels";

/// A Node's pod CIDRs as the record's `podCidrs` value, `None` when it has none.
fn node_pod_cidrs(obj: &DynamicObject) -> Option<Value> {
    let spec = obj.data.get("spec")?;
    let list = match spec.get("podCIDRs").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => list.clone(),
        _ => vec![spec.get("podCIDR").filter(|v| v.is_string())?.clone()],
    };
    Some(Value::Array(list))
}

/// The merge patch that makes `current`'s ferrovia annotations hold `value` (`None`:
/// removes them), with `current`'s resourceVersion as precondition.
pub fn node_patch(current: &DynamicObject, value: Option<&Value>) -> Result<Value> {
    let name = current.metadata.name.clone().unwrap_or_default();
    let mut annotations = Map::new();
    for k in current
        .metadata
        .annotations
        .iter()
        .flatten()
        .map(|(k, _)| k)
    {
        if k.starts_with(NODE_ANNOTATION_PREFIX) {
            annotations.insert(k.clone(), Value::Null);
        }
    }
    if let Some(value) = value {
        let Some(fields) = value.as_object() else {
            return Err(DatastoreError::invalid(
                "Node",
                &name,
                "a node record must be a JSON object (it is kept as Node annotations)",
            ));
        };
        for (field, v) in fields {
            if field == "name" || field == NODE_POD_CIDRS || field == NODE_LABELS || v.is_null() {
                continue;
            }
            if !annotation_name_ok(field) {
                return Err(DatastoreError::invalid(
                    "Node",
                    &name,
                    format!("field {field:?} cannot be an annotation name"),
                ));
            }
            annotations.insert(
                format!("{NODE_ANNOTATION_PREFIX}{field}"),
                Value::String(encode_annotation(v)),
            );
        }
    }
    Ok(json!({
        "metadata": {
            "resourceVersion": current.metadata.resource_version,
            "annotations": annotations,
        }
    }))
}

/// A Node's item without a record (for `Deleted` events): its name and labels.
pub fn bare_node_item(obj: &DynamicObject) -> Item {
    let name = obj.metadata.name.clone().unwrap_or_default();
    Item {
        object: Object {
            name: name.clone(),
            labels: obj.metadata.labels.clone().unwrap_or_default(),
            value: json!({ "name": name }),
        },
        version: Version::new(obj.metadata.resource_version.clone().unwrap_or_default()),
    }
}
