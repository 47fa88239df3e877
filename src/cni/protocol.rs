//! What the CNI plugin and the agent say to each other on the agent's control socket.
//!
//! One connection per CNI command: the plugin writes one JSON line, a
//! [`crate::control::Request::Cni`] — `{"request":"cni","command":"add",…}` — and the agent
//! answers with one [`AgentReply`] and closes the connection. The messages are
//! version-neutral: the plugin turns them into the result or error of the CNI version the
//! runtime asked for.
//!
//! Container ids and interface names are checked against the CNI rules as they are decoded
//! (the same rules `ferrovia-cni` applies, in [`super::spec`]): a request that breaks them
//! never reaches the agent's handlers.

use super::spec::{valid_container_id, valid_ifname, Added, CniError};
use serde::{Deserialize, Deserializer, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// A CNI command for the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum AgentRequest {
    /// Assign addresses and wire the pod. Answered with [`AgentReply::Added`].
    Add(Attach),
    /// Unwire the pod and release its addresses. Answered with [`AgentReply::Done`].
    Del(Detach),
    /// Verify the wiring and the addresses. Answered with [`AgentReply::Done`].
    Check(Check),
    /// Free what belongs to attachments not listed. Answered with [`AgentReply::Done`].
    Gc(Gc),
    /// Is the agent ready for ADDs? Answered with [`AgentReply::Done`] or an error.
    Status,
}

/// ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attach {
    #[serde(deserialize_with = "container_id")]
    pub container_id: String,
    #[serde(deserialize_with = "ifname")]
    pub ifname: String,
    pub netns: PathBuf,
    /// 0: the CNI configuration names none (the agent uses the node's interface MTU).
    pub mtu: u32,
    /// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS`, recorded with the addresses.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub pod: Option<String>,
    /// `K8S_POD_UID` from `CNI_ARGS`, when the runtime passes it (leak collection).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
}

/// DEL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Detach {
    #[serde(deserialize_with = "container_id")]
    pub container_id: String,
    #[serde(deserialize_with = "ifname")]
    pub ifname: String,
    /// Absent when the runtime no longer has the namespace.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

/// CHECK: the attachment and what prevResult says it should look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Check {
    #[serde(deserialize_with = "container_id")]
    pub container_id: String,
    #[serde(deserialize_with = "ifname")]
    pub ifname: String,
    pub netns: PathBuf,
    pub mtu: u32,
    /// The pod interface's addresses in prevResult, sorted.
    pub expected_ips: Vec<IpAddr>,
    /// The host-side interfaces prevResult lists (no sandbox).
    #[serde(default)]
    pub host_interfaces: Vec<String>,
}

/// GC: the attachments still in use on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Gc {
    pub valid: Vec<AttachmentId>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentId {
    #[serde(deserialize_with = "container_id")]
    pub container_id: String,
    #[serde(deserialize_with = "ifname")]
    pub ifname: String,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AgentReply {
    /// ADD succeeded.
    Added(Added),
    /// DEL, CHECK, GC or STATUS succeeded.
    Done,
    /// The command failed, with its CNI error code.
    Error(CniError),
}

/// A `CNI_CONTAINERID`, refused unless valid.
fn container_id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    valid_container_id(&s)
        .map_err(|e| serde::de::Error::custom(format!("CNI_CONTAINERID {s:?} {e}")))?;
    Ok(s)
}

/// A `CNI_IFNAME`, refused unless valid.
fn ifname<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    valid_ifname(&s).map_err(|e| serde::de::Error::custom(format!("CNI_IFNAME {s:?} {e}")))?;
    Ok(s)
}

impl From<CniError> for AgentReply {
    fn from(e: CniError) -> Self {
        AgentReply::Error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Request;

    #[test]
    fn requests_nest_in_the_control_request_and_round_trip() {
        let reqs = vec![
            AgentRequest::Add(Attach {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/x".into(),
                mtu: 1500,
                namespace: Some("default".into()),
                pod: Some("p".into()),
                pod_uid: Some("0b8c6f2e-5d1a-4c8e-9e61-3f4b2a1c9d70".into()),
            }),
            AgentRequest::Del(Detach {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: None,
            }),
            AgentRequest::Check(Check {
                container_id: "c1".into(),
                ifname: "eth0".into(),
                netns: "/run/netns/x".into(),
                mtu: 1500,
                expected_ips: vec!["10.244.0.1".parse().unwrap()],
                host_interfaces: vec!["fv0123".into()],
            }),
            AgentRequest::Gc(Gc {
                valid: vec![AttachmentId {
                    container_id: "c1".into(),
                    ifname: "eth0".into(),
                }],
            }),
            AgentRequest::Status,
        ];
        for r in reqs {
            let wire = serde_json::to_string(&Request::Cni(r.clone())).unwrap();
            assert!(!wire.contains('\n'), "one line: {wire}");
            let v: serde_json::Value = serde_json::from_str(&wire).unwrap();
            assert_eq!(v["request"], "cni", "{wire}");
            assert!(v["command"].is_string(), "{wire}");
            let back: Request = serde_json::from_str(&wire).unwrap();
            assert_eq!(back, Request::Cni(r));
        }
        let add: serde_json::Value =
            serde_json::to_value(Request::Cni(AgentRequest::Status)).unwrap();
        assert_eq!(
            add,
            serde_json::json!({"request": "cni", "command": "status"})
        );
    }

    #[test]
    fn replies_round_trip_and_errors_are_objects() {
        let e = AgentReply::Error(CniError::new(11, "busy", "retry"));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": {"code": 11, "msg": "busy", "details": "retry"}})
        );
        // Unlike the control socket's `{"error": "bad request: …"}` (a string).
        assert!(v["error"].is_object());
        assert_eq!(serde_json::to_value(AgentReply::Done).unwrap(), "done");
        let back: AgentReply = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn identifiers_breaking_the_cni_rules_are_refused_as_they_are_decoded() {
        let ok = r#"{"request":"cni","command":"del","containerId":"c1","ifname":"eth0"}"#;
        assert!(serde_json::from_str::<Request>(ok).is_ok());
        for (bad, what) in [
            (
                r#"{"request":"cni","command":"del","containerId":"-c","ifname":"eth0"}"#,
                "CNI_CONTAINERID",
            ),
            (
                r#"{"request":"cni","command":"add","containerId":"c","ifname":"a/b","netns":"/x","mtu":1500}"#,
                "CNI_IFNAME",
            ),
            (
                r#"{"request":"cni","command":"gc","valid":[{"containerId":"c","ifname":"waytoolonginterfacename"}]}"#,
                "CNI_IFNAME",
            ),
        ] {
            let e = serde_json::from_str::<Request>(bad).unwrap_err();
            assert!(e.to_string().contains(what), "{bad}: {e}");
        }
    }
}
