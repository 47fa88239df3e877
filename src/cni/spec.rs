//! The CNI specification as the plugin speaks it: versions, the environment, the plugin
//! configuration on stdin, results per version and the error JSON. Pure functions of their
//! inputs (but for [`check_netns`], which looks at the file system), so every rule is
//! unit-tested here; `plugin.rs` only does the I/O.
//!
//! A request is validated in one place: [`parse_invocation`] turns the environment and stdin
//! into an [`Invocation`] — the VERSION reply, or the [`AgentRequest`] to send with the
//! configuration to answer in — and nothing after it checks the request again. The agent
//! receives the same rules: the identifiers in [`crate::cni::protocol`] are checked with
//! [`valid_container_id`] and [`valid_ifname`] as they are decoded, and it looks at the
//! namespace from its own side with [`check_netns`].
//!
//! Versions spoken: 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0. CHECK needs 0.4.0 or later, GC and
//! STATUS 1.1.0 (older versions get error 1, as the reference `skel` does).

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::protocol::{AgentRequest, Attach, AttachmentId, Check, Detach, Gc};

/// Well-known error codes (spec "Error").
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADD requests.
    pub const UNAVAILABLE: u32 = 50;
    // 51 (STATUS: cannot serve ADD requests and existing containers may have limited
    // connectivity) is never sent: the agent being down leaves running pods routed.

    // Ours (100 and up).
    /// The agent failed for a reason of its own (see the message).
    pub const AGENT: u32 = 100;
    /// Creating, addressing or removing the interfaces failed (netlink).
    pub const WIRING: u32 = 101;
    /// `CNI_IFNAME` already exists in the container.
    pub const IFNAME_EXISTS: u32 = 102;
    /// No address is left in the pools for this node.
    pub const NO_ADDRESS: u32 = 103;
    /// The agent has no IPAM (no datastore or pools configured), or its pools do not allow
    /// an address (all disabled, invalid).
    pub const IPAM: u32 = 104;
    /// CHECK found the container's networking different from what ADD set up.
    pub const CHECK_FAILED: u32 = 105;
    /// The agent does not understand the plugin (different ferrovia versions).
    pub const PROTOCOL: u32 = 106;
}

/// A CNI error: printed on stdout as `{"cniVersion","code","msg","details"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON, with `cniVersion` set to `version` (the configuration's, or ours when
    /// the configuration did not say).
    pub fn to_json(&self, version: &str) -> Value {
        let mut m = Map::new();
        m.insert("cniVersion".into(), json!(version));
        m.insert("code".into(), json!(self.code));
        m.insert("msg".into(), json!(self.msg));
        if !self.details.is_empty() {
            m.insert("details".into(), json!(self.details));
        }
        Value::Object(m)
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CNI error {}: {}", self.code, self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

// -------------------------------------------------------------------------------------
// Versions.

/// A spec version this plugin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

/// Every version spoken, oldest first (the VERSION answer).
pub const SUPPORTED: [Version; 5] = [
    Version::V0_3_0,
    Version::V0_3_1,
    Version::V0_4_0,
    Version::V1_0_0,
    Version::V1_1_0,
];

/// The newest version spoken: used when a request names none we can echo.
pub const LATEST: Version = Version::V1_1_0;

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }

    pub fn parse(s: &str) -> Option<Version> {
        SUPPORTED.into_iter().find(|v| v.as_str() == s)
    }

    /// CHECK exists from 0.4.0.
    pub fn has_check(self) -> bool {
        self >= Version::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0.
    pub fn has_gc_and_status(self) -> bool {
        self >= Version::V1_1_0
    }

    /// Results before 1.0.0 carry `"version": "4"|"6"` in each `ips` entry.
    pub fn ips_have_version(self) -> bool {
        self < Version::V1_0_0
    }

    /// Interfaces carry `mtu` from 1.1.0.
    pub fn interfaces_have_mtu(self) -> bool {
        self >= Version::V1_1_0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// True for a string shaped like a spec version (`MAJOR.MINOR.PATCH`, digits), which may be
/// echoed back in an error even when it is not one we speak.
pub fn looks_like_version(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()))
}

fn supported_list() -> String {
    SUPPORTED
        .iter()
        .map(|v| v.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The VERSION answer. `cniVersion` echoes the request's version when we speak it, else
/// it is our newest.
pub fn version_reply(requested: Option<&str>) -> Value {
    let v = requested.and_then(Version::parse).unwrap_or(LATEST);
    json!({
        "cniVersion": v.as_str(),
        "supportedVersions": SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}

// -------------------------------------------------------------------------------------
// Commands and the environment.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Gc => "GC",
            Command::Status => "STATUS",
            Command::Version => "VERSION",
        }
    }

    /// Commands that act on one attachment (container id + interface).
    fn per_attachment(self) -> bool {
        matches!(self, Command::Add | Command::Del | Command::Check)
    }

    /// Commands that need the network namespace.
    fn needs_netns(self) -> bool {
        matches!(self, Command::Add | Command::Check)
    }
}

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// What the runtime passed in `CNI_*` variables, validated for the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub command: Command,
    /// Set for ADD, DEL and CHECK.
    pub container_id: String,
    /// Set for ADD, DEL and CHECK.
    pub ifname: String,
    /// Always set for ADD and CHECK; for DEL when the runtime still has it.
    pub netns: Option<PathBuf>,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
}

impl Env {
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str)
    }

    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub fn pod_name(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAME").map(String::as_str)
    }

    /// `K8S_POD_UID` from `CNI_ARGS` (container runtimes pass it; some older ones do not).
    pub fn pod_uid(&self) -> Option<&str> {
        self.args.get("K8S_POD_UID").map(String::as_str)
    }
}

/// Reads `CNI_COMMAND` alone (so that VERSION needs nothing else).
pub fn command_from(get: &dyn Fn(&str) -> Option<OsString>) -> Result<Command, CniError> {
    match get("CNI_COMMAND") {
        None => Err(CniError::new(
            code::INVALID_ENV,
            "missing environment variable CNI_COMMAND",
            "this is a CNI plugin: the container runtime runs it with CNI_COMMAND set to ADD, \
             DEL, CHECK, GC, STATUS or VERSION and the network configuration on stdin",
        )),
        Some(c) => {
            let s = c.to_string_lossy();
            Command::parse(&s).ok_or_else(|| {
                CniError::new(
                    code::INVALID_ENV,
                    format!("invalid environment variable CNI_COMMAND {s:?}"),
                    "CNI_COMMAND must be ADD, DEL, CHECK, GC, STATUS or VERSION",
                )
            })
        }
    }
}

/// Checks a container id against the spec's rule: `[A-Za-z0-9][A-Za-z0-9_.-]*`.
pub fn valid_container_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    match chars.next() {
        None => Err("is empty".into()),
        Some(c) if !c.is_ascii_alphanumeric() => Err("must start with a letter or a digit".into()),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) => {
            Err("may contain only letters, digits, '_', '.' and '-'".into())
        }
        // IPAM keys are CONTAINERID:IFNAME and stay under 253 bytes.
        _ if id.len() > 236 => Err("is longer than 236 bytes".into()),
        _ => Ok(()),
    }
}

/// Checks an interface name against the spec's (Linux's) rules.
pub fn valid_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".into());
    }
    if name.len() > MAX_IFNAME {
        return Err(format!(
            "is {} bytes long; Linux interface names have at most {MAX_IFNAME}",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err("cannot be '.' or '..'".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("cannot contain '/', ':', whitespace or control characters".into());
    }
    Ok(())
}

/// Parses `CNI_ARGS` (`K=V;K=V`). Unknown keys are kept and ignored.
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                out.insert(k.to_string(), v.to_string());
            }
            _ => return Err(format!("{pair:?} is not KEY=VALUE")),
        }
    }
    Ok(out)
}

/// Reads and validates the variables `command` needs. Every problem is reported at once,
/// each naming its variable (error 4). `CNI_PATH` is never required: ferrovia delegates
/// to no other plugin.
pub fn env_from(command: Command, get: &dyn Fn(&str) -> Option<OsString>) -> Result<Env, CniError> {
    let mut problems: Vec<(&str, String)> = Vec::new();
    let text = |name: &'static str, problems: &mut Vec<(&str, String)>| -> Option<String> {
        match get(name) {
            None => None,
            Some(v) => match v.into_string() {
                Ok(s) => Some(s),
                Err(_) => {
                    problems.push((name, "is not valid UTF-8".into()));
                    None
                }
            },
        }
    };
    let mut env = Env {
        command,
        container_id: String::new(),
        ifname: String::new(),
        netns: None,
        args: BTreeMap::new(),
    };
    if command.per_attachment() {
        match text("CNI_CONTAINERID", &mut problems) {
            None if !problems.iter().any(|p| p.0 == "CNI_CONTAINERID") => {
                problems.push(("CNI_CONTAINERID", "is not set".into()))
            }
            None => {}
            Some(id) => match valid_container_id(&id) {
                Ok(()) => env.container_id = id,
                Err(e) => problems.push(("CNI_CONTAINERID", format!("{id:?} {e}"))),
            },
        }
        match text("CNI_IFNAME", &mut problems) {
            None if !problems.iter().any(|p| p.0 == "CNI_IFNAME") => {
                problems.push(("CNI_IFNAME", "is not set".into()))
            }
            None => {}
            Some(n) => match valid_ifname(&n) {
                Ok(()) => env.ifname = n,
                Err(e) => problems.push(("CNI_IFNAME", format!("{n:?} {e}"))),
            },
        }
        match get("CNI_NETNS") {
            None if command.needs_netns() => problems.push(("CNI_NETNS", "is not set".into())),
            None => {}
            Some(p) if p.is_empty() && command.needs_netns() => {
                problems.push(("CNI_NETNS", "is empty".into()))
            }
            // DEL: an empty CNI_NETNS means the runtime no longer has the namespace.
            Some(p) if p.is_empty() => {}
            Some(p) => {
                let path = PathBuf::from(p);
                if path.is_absolute() {
                    env.netns = Some(path);
                } else if command.needs_netns() {
                    problems.push((
                        "CNI_NETNS",
                        format!("{:?} is not an absolute path", path.display()),
                    ));
                }
            }
        }
        if let Some(a) = text("CNI_ARGS", &mut problems) {
            match parse_args(&a) {
                Ok(m) => env.args = m,
                Err(e) => problems.push(("CNI_ARGS", e)),
            }
        }
    }
    if problems.is_empty() {
        return Ok(env);
    }
    let mut names: Vec<&str> = problems.iter().map(|p| p.0).collect();
    names.dedup();
    Err(CniError::new(
        code::INVALID_ENV,
        format!(
            "invalid or missing environment variables for {}: {}",
            command.as_str(),
            names.join(", ")
        ),
        problems
            .iter()
            .map(|(n, e)| format!("{n} {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    ))
}

// -------------------------------------------------------------------------------------
// The plugin configuration (stdin).

/// One still-valid attachment of a GC request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GcAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// The MTU asked of the agent: the configuration's, or 0 (none given: the agent uses
    /// the MTU of the node's interface toward its peers).
    pub fn requested_mtu(&self) -> u32 {
        if self.mtu_configured {
            self.mtu
        } else {
            0
        }
    }
}

/// The plugin configuration object the runtime writes on stdin, as far as ferrovia reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    /// `agentSocket`: the agent's control socket.
    pub agent_socket: PathBuf,
    /// `mtu` of both ends of the pod's veth pair ([`DEFAULT_MTU`] when absent).
    pub mtu: u32,
    /// Whether the configuration gives `mtu`; without it the agent picks the MTU of the
    /// node's interface toward its peers.
    pub mtu_configured: bool,
    /// `dns` of the configuration, copied into ADD results.
    pub dns: Option<Value>,
    /// `prevResult` (CHECK, chained ADD), parsed.
    pub prev_result: Option<CniResult>,
    /// GC: the union of `cni.dev/valid-attachments` and `cni.dev/attachments`.
    pub valid_attachments: Vec<GcAttachment>,
}

pub const DEFAULT_MTU: u32 = 1500;
/// IPv6 needs links of at least 1280 bytes.
pub const MIN_MTU: u32 = 1280;
pub const MAX_MTU: u32 = 65535;

/// The stdin document, decoded as far as telling its version: the JSON object and the
/// raw `cniVersion` string (for echoing in errors).
#[derive(Debug, Clone)]
pub struct Stdin {
    pub doc: Map<String, Value>,
    pub raw_version: Option<String>,
}

/// Decodes stdin as a JSON object (error 6 otherwise).
pub fn decode_stdin(bytes: &[u8]) -> Result<Stdin, CniError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            "cannot decode the network configuration on stdin",
            format!("it must be one JSON object: {e}"),
        )
    })?;
    let Value::Object(doc) = v else {
        return Err(CniError::new(
            code::DECODE,
            "cannot decode the network configuration on stdin",
            format!("it must be a JSON object, not {}", kind(&v)),
        ));
    };
    let raw_version = doc
        .get("cniVersion")
        .and_then(Value::as_str)
        .map(str::to_string);
    Ok(Stdin { doc, raw_version })
}

/// The version the configuration asks for, checked against `command` (error 1 when we do
/// not speak it or the command does not exist in it, 6 when it is not a string).
pub fn negotiate(stdin: &Stdin, command: Command) -> Result<Version, CniError> {
    let raw = match stdin.doc.get("cniVersion") {
        // Like the reference libraries: no cniVersion is 0.1.0.
        None => "0.1.0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(CniError::new(
                code::DECODE,
                "cannot decode cniVersion",
                format!("cniVersion must be a string like \"1.1.0\", not {other}"),
            ))
        }
    };
    let Some(v) = Version::parse(&raw) else {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            format!(
                "the configuration is version {raw:?}; ferrovia-cni speaks {}",
                supported_list()
            ),
        ));
    };
    let allowed = match command {
        Command::Check => v.has_check(),
        Command::Gc | Command::Status => v.has_gc_and_status(),
        _ => true,
    };
    if !allowed {
        let since = if command == Command::Check {
            "0.4.0"
        } else {
            "1.1.0"
        };
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version does not allow {}", command.as_str()),
            format!(
                "{} exists from CNI {since}; the configuration is version {v}",
                command.as_str()
            ),
        ));
    }
    Ok(v)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid(msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg, details)
}

/// Validates the configuration for `command` (error 7, or 2 for a field ferrovia does not
/// support). Unknown keys are accepted: runtimes add their own.
pub fn parse_netconf(
    stdin: &Stdin,
    command: Command,
    version: Version,
) -> Result<NetConf, CniError> {
    let doc = &stdin.doc;
    let name =
        match doc.get("name") {
            Some(Value::String(s)) if valid_container_id(s).is_ok() => s.clone(),
            Some(Value::String(s)) => return Err(invalid(
                format!("invalid network name {s:?}"),
                "name must start with a letter or digit, followed by letters, digits, '_', '.' \
                 or '-'",
            )),
            Some(other) => {
                return Err(invalid(
                    "invalid network name",
                    format!("name must be a string, not {}", kind(other)),
                ))
            }
            None => {
                return Err(invalid(
                    "the network configuration has no name",
                    "add \"name\" (the network's name) to the configuration list",
                ))
            }
        };
    match doc.get("type") {
        Some(Value::String(_)) => {}
        _ => {
            return Err(invalid(
                "the plugin configuration has no type",
                "\"type\" must be the plugin's file name, \"ferrovia-cni\"",
            ))
        }
    }
    if let Some(ipam) = doc.get("ipam") {
        return Err(CniError::new(
            code::UNSUPPORTED_FIELD,
            format!("unsupported field ipam: {ipam}"),
            "ferrovia assigns pod addresses in its agent, from the pools of the agent \
             configuration (ipam.pools); remove \"ipam\" from the network configuration",
        ));
    }
    let agent_socket = match doc.get("agentSocket") {
        None => PathBuf::from(crate::config::DEFAULT_SOCKET),
        Some(Value::String(s)) if s.starts_with('/') => PathBuf::from(s),
        Some(other) => {
            return Err(invalid(
                format!("invalid agentSocket {other}"),
                "agentSocket must be the absolute path of the agent's control socket (its \
                 status.socket setting), e.g. \"/run/ferrovia/ferrovia.sock\"",
            ))
        }
    };
    let mtu = match doc.get("mtu") {
        None => DEFAULT_MTU,
        Some(v) => match v.as_u64() {
            Some(m) if (MIN_MTU as u64..=MAX_MTU as u64).contains(&m) => m as u32,
            _ => {
                return Err(invalid(
                    format!("invalid mtu {v}"),
                    format!(
                        "mtu must be a whole number from {MIN_MTU} to {MAX_MTU} (the MTU of the \
                         pods' interfaces; usually the nodes' own MTU, as nothing is \
                         encapsulated)"
                    ),
                ))
            }
        },
    };
    let dns = match doc.get("dns") {
        None | Some(Value::Null) => None,
        Some(v @ Value::Object(_)) => Some(v.clone()),
        Some(other) => {
            return Err(invalid(
                "invalid dns",
                format!("dns must be an object, not {}", kind(other)),
            ))
        }
    };
    let prev_result = match doc.get("prevResult") {
        None | Some(Value::Null) => None,
        Some(v) => Some(CniResult::parse(v, version).map_err(|e| {
            CniError::new(
                code::DECODE,
                "cannot decode prevResult",
                format!("prevResult must be a CNI {version} result: {e}"),
            )
        })?),
    };
    if command == Command::Check && prev_result.is_none() {
        return Err(invalid(
            "CHECK needs prevResult",
            "the runtime must pass the result of the ADD as prevResult in the configuration",
        ));
    }
    let mut valid_attachments = Vec::new();
    if command == Command::Gc {
        // Spec 1.1.0 named the key cni.dev/attachments; the corrected spec names it
        // cni.dev/valid-attachments. Runtimes send both: take the union.
        let mut seen = false;
        for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
            match doc.get(key) {
                None | Some(Value::Null) => {}
                Some(v) => {
                    seen = true;
                    let list: Vec<GcAttachment> =
                        serde_json::from_value(v.clone()).map_err(|e| {
                            CniError::new(
                                code::DECODE,
                                format!("cannot decode {key}"),
                                format!(
                                "{key} must be a list of {{\"containerID\": …, \"ifname\": …}}: {e}"
                            ),
                            )
                        })?;
                    valid_attachments.extend(list);
                }
            }
        }
        if !seen {
            // Without the list every attachment would look stale: refuse rather than
            // free every address of the node.
            return Err(invalid(
                "GC without cni.dev/valid-attachments",
                "GC must list the attachments still in use (cni.dev/valid-attachments); an \
                 empty list frees everything, an absent one is refused",
            ));
        }
        valid_attachments.sort();
        valid_attachments.dedup();
    }
    Ok(NetConf {
        version,
        name,
        agent_socket,
        mtu,
        mtu_configured: doc.get("mtu").is_some(),
        dns,
        prev_result,
        valid_attachments,
    })
}

// -------------------------------------------------------------------------------------
// Results.

/// One entry of `interfaces`. Fields we do not model are kept (prevResult pass-through).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: Option<String>,
    pub sandbox: Option<String>,
    pub mtu: Option<u32>,
    pub extra: Map<String, Value>,
}

/// One entry of `ips`.
#[derive(Debug, Clone, PartialEq)]
pub struct IpConfig {
    pub address: ipnet::IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    pub interface: Option<usize>,
    pub extra: Map<String, Value>,
}

/// One entry of `routes`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub dst: ipnet::IpNet,
    pub gw: Option<IpAddr>,
    pub extra: Map<String, Value>,
}

/// A CNI result, independent of version; [`CniResult::to_json`] writes it in one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    /// An object (`{}` when empty).
    pub dns: Map<String, Value>,
}

fn take_str(m: &mut Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match m.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} must be a string, not {other}")),
    }
}

fn take_object(v: &Value, what: &str) -> Result<Map<String, Value>, String> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        other => Err(format!("{what} must be an object, not {}", kind(other))),
    }
}

fn take_list<'a>(m: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("{key} must be a list, not {}", kind(other))),
    }
}

impl CniResult {
    /// Parses a result of `version` (a `prevResult`).
    pub fn parse(v: &Value, version: Version) -> Result<CniResult, String> {
        let top = take_object(v, "the result")?;
        let mut r = CniResult::default();
        for (i, item) in take_list(&top, "interfaces")?.iter().enumerate() {
            let mut m = take_object(item, &format!("interfaces[{i}]"))?;
            let name =
                take_str(&mut m, "name")?.ok_or_else(|| format!("interfaces[{i}] has no name"))?;
            let mac = take_str(&mut m, "mac")?;
            let sandbox = take_str(&mut m, "sandbox")?;
            let mtu = match m.remove("mtu") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(|| format!("interfaces[{i}].mtu must be a number"))?,
                ),
            };
            r.interfaces.push(Interface {
                name,
                mac,
                sandbox,
                mtu,
                extra: m,
            });
        }
        for (i, item) in take_list(&top, "ips")?.iter().enumerate() {
            let mut m = take_object(item, &format!("ips[{i}]"))?;
            let address =
                take_str(&mut m, "address")?.ok_or_else(|| format!("ips[{i}] has no address"))?;
            let address: ipnet::IpNet = address
                .parse()
                .map_err(|_| format!("ips[{i}].address {address:?} is not ADDRESS/PREFIX"))?;
            let gateway = match take_str(&mut m, "gateway")? {
                None => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| format!("ips[{i}].gateway {g:?} is not an address"))?,
                ),
            };
            let interface = match m.remove("interface") {
                None | Some(Value::Null) => None,
                Some(x) => Some(
                    x.as_u64()
                        .map(|n| n as usize)
                        .ok_or_else(|| format!("ips[{i}].interface must be an index"))?,
                ),
            };
            // Regenerated from the address for versions that have it.
            let ip_version = take_str(&mut m, "version")?;
            if version.ips_have_version() {
                let want = if address.addr().is_ipv4() { "4" } else { "6" };
                if ip_version.as_deref() != Some(want) {
                    return Err(format!(
                        "ips[{i}].version must be \"{want}\" for {address} in a {version} result"
                    ));
                }
            }
            r.ips.push(IpConfig {
                address,
                gateway,
                interface,
                extra: m,
            });
        }
        for (i, item) in take_list(&top, "routes")?.iter().enumerate() {
            let mut m = take_object(item, &format!("routes[{i}]"))?;
            let dst = take_str(&mut m, "dst")?.ok_or_else(|| format!("routes[{i}] has no dst"))?;
            let dst: ipnet::IpNet = dst
                .parse()
                .map_err(|_| format!("routes[{i}].dst {dst:?} is not ADDRESS/PREFIX"))?;
            let gw = match take_str(&mut m, "gw")? {
                None => None,
                Some(g) => Some(
                    g.parse()
                        .map_err(|_| format!("routes[{i}].gw {g:?} is not an address"))?,
                ),
            };
            r.routes.push(Route { dst, gw, extra: m });
        }
        r.dns = match top.get("dns") {
            None | Some(Value::Null) => Map::new(),
            Some(d) => take_object(d, "dns")?,
        };
        Ok(r)
    }

    /// The result JSON of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut m = i.extra.clone();
                m.insert("name".into(), json!(i.name));
                if let Some(mac) = &i.mac {
                    m.insert("mac".into(), json!(mac));
                }
                if let Some(s) = &i.sandbox {
                    m.insert("sandbox".into(), json!(s));
                }
                match i.mtu {
                    Some(mtu) if version.interfaces_have_mtu() => {
                        m.insert("mtu".into(), json!(mtu));
                    }
                    _ => {}
                }
                Value::Object(m)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut m = ip.extra.clone();
                if version.ips_have_version() {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    m.insert("version".into(), json!(v));
                }
                m.insert("address".into(), json!(ip.address.to_string()));
                if let Some(g) = ip.gateway {
                    m.insert("gateway".into(), json!(g.to_string()));
                }
                if let Some(i) = ip.interface {
                    m.insert("interface".into(), json!(i));
                }
                Value::Object(m)
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut m = r.extra.clone();
                m.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(g) = r.gw {
                    m.insert("gw".into(), json!(g.to_string()));
                }
                Value::Object(m)
            })
            .collect();
        json!({
            "cniVersion": version.as_str(),
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": Value::Object(self.dns.clone()),
        })
    }

    /// Appends `other` (this plugin's own result) after `self` (a prevResult), shifting its
    /// interface indexes. DNS: `other`'s when it has any, else `self`'s.
    pub fn chain(mut self, other: CniResult) -> CniResult {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if !other.dns.is_empty() {
            self.dns = other.dns;
        }
        self
    }
}

/// The gateway pods use for IPv4: a link-local address the host answers for (proxy ARP).
pub const GATEWAY_V4: &str = "169.254.1.1";
/// The gateway pods use for IPv6: the link-local address of the host side of every pod
/// veth (MAC ee:ee:ee:ee:ee:ee).
pub const GATEWAY_V6: &str = "fe80::ecee:eeff:feee:eeee";

/// What ADD set up, as the agent reports it: the input of [`add_result`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Added {
    pub host_ifname: String,
    pub host_mac: String,
    pub pod_ifname: String,
    pub pod_mac: String,
    /// The network namespace path.
    pub sandbox: String,
    pub mtu: u32,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
}

/// The ADD result for what the agent set up: the host interface (index 0), the pod
/// interface (index 1, with its sandbox), a /32 and/or /128 on the pod interface with the
/// link-local gateways, and a default route per family.
pub fn add_result(a: &Added, dns: Option<&Value>) -> CniResult {
    let gw4: IpAddr = IpAddr::V4(GATEWAY_V4.parse().expect("constant"));
    let gw6: IpAddr = IpAddr::V6(GATEWAY_V6.parse().expect("constant"));
    let mut r = CniResult {
        interfaces: vec![
            Interface {
                name: a.host_ifname.clone(),
                mac: Some(a.host_mac.clone()),
                sandbox: None,
                mtu: Some(a.mtu),
                extra: Map::new(),
            },
            Interface {
                name: a.pod_ifname.clone(),
                mac: Some(a.pod_mac.clone()),
                sandbox: Some(a.sandbox.clone()),
                mtu: Some(a.mtu),
                extra: Map::new(),
            },
        ],
        ..CniResult::default()
    };
    if let Some(v4) = a.ipv4 {
        r.ips.push(IpConfig {
            address: ipnet::IpNet::new(IpAddr::V4(v4), 32).expect("/32"),
            gateway: Some(gw4),
            interface: Some(1),
            extra: Map::new(),
        });
        r.routes.push(Route {
            dst: "0.0.0.0/0".parse().expect("constant"),
            gw: Some(gw4),
            extra: Map::new(),
        });
    }
    if let Some(v6) = a.ipv6 {
        r.ips.push(IpConfig {
            address: ipnet::IpNet::new(IpAddr::V6(v6), 128).expect("/128"),
            gateway: Some(gw6),
            interface: Some(1),
            extra: Map::new(),
        });
        r.routes.push(Route {
            dst: "::/0".parse().expect("constant"),
            gw: Some(gw6),
            extra: Map::new(),
        });
    }
    if let Some(Value::Object(d)) = dns {
        r.dns = d.clone();
    }
    r
}

/// What CHECK expects, read from prevResult: the addresses on the pod interface
/// `ifname` in `netns`, and the names of the host-side interfaces listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub ips: Vec<IpAddr>,
    pub host_interfaces: Vec<String>,
}

/// Reads what CHECK must verify from prevResult (error 105 when prevResult does not list
/// the pod interface or any address on it).
pub fn expected_from(prev: &CniResult, ifname: &str, netns: &str) -> Result<Expected, CniError> {
    let failed = |msg: String| {
        CniError::new(
            code::CHECK_FAILED,
            msg,
            "prevResult must be the result ferrovia returned for the ADD of this container",
        )
    };
    let Some(idx) = prev
        .interfaces
        .iter()
        .position(|i| i.name == ifname && i.sandbox.as_deref() == Some(netns))
    else {
        return Err(failed(format!(
            "prevResult lists no interface {ifname} in sandbox {netns}"
        )));
    };
    let mut ips: Vec<IpAddr> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(idx))
        .map(|ip| ip.address.addr())
        .collect();
    ips.sort();
    if ips.is_empty() {
        return Err(failed(format!(
            "prevResult lists no address on interface {ifname}"
        )));
    }
    let host_interfaces = prev
        .interfaces
        .iter()
        .filter(|i| i.sandbox.as_deref().is_none_or(str::is_empty))
        .map(|i| i.name.clone())
        .collect();
    Ok(Expected {
        ips,
        host_interfaces,
    })
}

// -------------------------------------------------------------------------------------
// The network namespace.

/// Checks that `path` is a network namespace other than the caller's own: 3 when it does
/// not exist (the container is gone), 4 when it is something else.
pub fn check_netns(path: &Path) -> Result<(), CniError> {
    let meta =
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CniError::new(
                code::UNKNOWN_CONTAINER,
                format!("the network namespace {} does not exist", path.display()),
                "CNI_NETNS must name the container's network namespace (e.g. /var/run/netns/ID \
                 or /proc/PID/ns/net); the container may have gone already",
            )),
            Err(e) => {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("cannot look at CNI_NETNS {}", path.display()),
                    e.to_string(),
                ))
            }
        };
    // Every namespace file lives on the nsfs pseudo file system: the same device as our
    // own namespace's file.
    if let Ok(own) = std::fs::metadata("/proc/self/ns/net") {
        if meta.dev() != own.dev() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!("CNI_NETNS {} is not a network namespace", path.display()),
                "CNI_NETNS must name the container's network namespace (e.g. /var/run/netns/ID \
                 or /proc/PID/ns/net)",
            ));
        }
        if meta.ino() == own.ino() {
            return Err(CniError::new(
                code::INVALID_ENV,
                format!(
                    "CNI_NETNS {} is the node's own network namespace",
                    path.display()
                ),
                "a pod needs a network namespace of its own; ferrovia never moves interfaces \
                 of the node",
            ));
        }
    }
    Ok(())
}

// -------------------------------------------------------------------------------------
// One invocation, validated once.

/// A validated run of `ferrovia-cni`.
#[derive(Debug, Clone, PartialEq)]
pub enum Invocation {
    /// VERSION: the reply to print. Needs nothing but `CNI_COMMAND`.
    Version(Value),
    /// Every other command: what to ask the agent (boxed: far larger than a reply).
    Call(Box<Call>),
}

/// A command for the agent, with the configuration its answer is formatted in.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    pub request: AgentRequest,
    pub conf: NetConf,
}

impl Call {
    pub fn command(&self) -> Command {
        match self.request {
            AgentRequest::Add(_) => Command::Add,
            AgentRequest::Del(_) => Command::Del,
            AgentRequest::Check(_) => Command::Check,
            AgentRequest::Gc(_) => Command::Gc,
            AgentRequest::Status => Command::Status,
        }
    }
}

/// Why an invocation was refused: the error, and the `cniVersion` to print it with.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub error: CniError,
    pub version: String,
}

/// The version string an error carries: the configuration's when it looks like one, else
/// our newest.
pub fn error_version(raw: Option<&str>) -> String {
    match raw {
        Some(v) if looks_like_version(v) => v.to_string(),
        _ => LATEST.as_str().to_string(),
    }
}

/// CNI_NETNS absent where the command needs it ([`env_from`] refuses that already; an error,
/// not a panic, so the runtime always gets error JSON).
fn missing_netns() -> CniError {
    CniError::new(
        code::INVALID_ENV,
        "CNI_NETNS is not set",
        "ADD and CHECK need CNI_NETNS",
    )
}

/// Validates one invocation: `get` reads the environment, `stdin` is what was read from
/// stdin and `read_error` why reading it stopped early, if it did. Errors come in the order
/// a runtime expects: the command, VERSION (which needs nothing else), the environment,
/// reading stdin, decoding it, the version, the configuration, the network namespace, and
/// for CHECK prevResult against the attachment.
pub fn parse_invocation(
    get: &dyn Fn(&str) -> Option<OsString>,
    stdin: &[u8],
    read_error: Option<&std::io::Error>,
) -> Result<Invocation, Refusal> {
    // Decoded first, so that every error can carry the configuration's version.
    let decoded = decode_stdin(stdin);
    let raw = decoded.as_ref().ok().and_then(|s| s.raw_version.clone());
    let refuse = |error: CniError| Refusal {
        error,
        version: error_version(raw.as_deref()),
    };
    let command = command_from(get).map_err(refuse)?;
    if command == Command::Version {
        return Ok(Invocation::Version(version_reply(raw.as_deref())));
    }
    let env = env_from(command, get).map_err(refuse)?;
    if let Some(e) = read_error {
        return Err(refuse(CniError::new(
            code::IO,
            "cannot read the network configuration from stdin",
            e.to_string(),
        )));
    }
    let stdin = decoded.map_err(refuse)?;
    let version = negotiate(&stdin, command).map_err(refuse)?;
    let conf = parse_netconf(&stdin, command, version).map_err(refuse)?;
    let refuse = |error: CniError| Refusal {
        error,
        version: version.as_str().to_string(),
    };
    let request = match command {
        // Answered above already; the same answer here rather than a panic.
        Command::Version => return Ok(Invocation::Version(version_reply(raw.as_deref()))),
        Command::Add => {
            let netns = env
                .netns
                .clone()
                .ok_or_else(missing_netns)
                .map_err(refuse)?;
            check_netns(&netns).map_err(refuse)?;
            AgentRequest::Add(Attach {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                netns,
                mtu: conf.requested_mtu(),
                namespace: env.pod_namespace().map(str::to_string),
                pod: env.pod_name().map(str::to_string),
                pod_uid: env.pod_uid().map(str::to_string),
            })
        }
        Command::Del => AgentRequest::Del(Detach {
            container_id: env.container_id.clone(),
            ifname: env.ifname.clone(),
            netns: env.netns.clone(),
        }),
        Command::Check => {
            let netns = env
                .netns
                .clone()
                .ok_or_else(missing_netns)
                .map_err(refuse)?;
            check_netns(&netns).map_err(refuse)?;
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| {
                    invalid(
                        "CHECK needs prevResult in the network configuration",
                        "the runtime passes the result of the ADD as prevResult",
                    )
                })
                .map_err(refuse)?;
            let expected =
                expected_from(prev, &env.ifname, &netns.to_string_lossy()).map_err(refuse)?;
            AgentRequest::Check(Check {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                netns,
                mtu: conf.requested_mtu(),
                expected_ips: expected.ips,
                host_interfaces: expected.host_interfaces,
            })
        }
        // An attachment whose identifiers break the rules cannot hold anything of ours:
        // nothing to keep for it.
        Command::Gc => AgentRequest::Gc(Gc {
            valid: conf
                .valid_attachments
                .iter()
                .filter(|a| {
                    valid_container_id(&a.container_id).is_ok() && valid_ifname(&a.ifname).is_ok()
                })
                .map(|a| AttachmentId {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect(),
        }),
        Command::Status => AgentRequest::Status,
    };
    Ok(Invocation::Call(Box::new(Call { request, conf })))
}

#[cfg(test)]
mod tests;
