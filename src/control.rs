//! The agent's control socket: a unix socket speaking one JSON request line per
//! connection, answered with one JSON document. `ferrovia status` and `ferrovia routes`
//! are its clients, and so is the CNI plugin (`ferrovia-cni`, see `crate::cni::protocol`).

use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A request on the control socket.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "request", rename_all = "camelCase")]
pub enum Request {
    Status,
    Routes,
    /// `ferrovia node drain`: leave on purpose (GRACEFUL_SHUTDOWN, wait, withdraw, Cease,
    /// remove our kernel state), then the agent exits. `node`: the node the operator
    /// meant, checked against the agent's own name.
    Drain {
        #[serde(default)]
        node: Option<String>,
    },
    /// A CNI command from `ferrovia-cni`, answered with a
    /// [`crate::cni::protocol::AgentReply`].
    Cni(crate::cni::protocol::AgentRequest),
}

/// Answer to [`Request::Status`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub node: NodeInfo,
    pub peers: Vec<PeerInfo>,
    pub routes: RouteCounts,
    /// What this agent's IPAM wrote since it started (absent without IPAM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<ferrovia_ipam::IpamCounters>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub as_number: u32,
    pub router_id: String,
    /// The node's addresses: configured or autodetected, with the interface, its MTU and
    /// why each was chosen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<crate::autodetect::Detected>,
    /// The MTU pods get when the CNI configuration names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_mtu: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    pub address: String,
    pub as_number: u32,
    /// Where the peer comes from: "global" (the configuration file, or a datastore peer for
    /// every node), "node" (a datastore peer for this node only, by name or node selector), "mesh" (another node of
    /// the full mesh), "range CIDR" (accepted from a `bgp.peerRanges` entry), or with the
    /// mesh off and reflectors in the datastore "rr" (a reflector of this node),
    /// "rr-client" (a client of this reflector) or "rr-mesh" (another reflector).
    #[serde(rename = "type")]
    pub kind: String,
    /// "eBGP" or "iBGP".
    pub session: String,
    /// RFC 4271 state name.
    pub state: String,
    /// When the session reached Established (RFC 3339), if it is.
    pub since: Option<String>,
    pub prefixes_received: usize,
    pub prefixes_sent: usize,
    pub updates_received: u64,
    pub updates_sent: u64,
    pub peer_router_id: Option<String>,
    pub families: Vec<String>,
    pub last_error: Option<String>,
    /// The peer's routes kept as stale by graceful restart (its session dropped, or it came
    /// back and has not refreshed them yet).
    #[serde(default)]
    pub stale_prefixes: usize,
    /// End-of-RIB went both ways on the current session (sent by us, received for every
    /// family).
    #[serde(default)]
    pub end_of_rib_sent: bool,
    #[serde(default)]
    pub end_of_rib_received: bool,
    /// Announced prefixes refused by import policy since the agent started, per reason:
    /// `as_loop`, `originator_loop`, `bad_next_hop`, `default_route`, `own_pool` (inside the
    /// cluster's pod pools, from a peer outside the cluster), `import_list`.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// Times the peer went over its `maxPrefixes` limit.
    #[serde(default)]
    pub max_prefixes_exceeded: u64,
    /// The session was closed for too many prefixes and starts again in this many seconds.
    #[serde(default)]
    pub restart_in_seconds: Option<u64>,
    /// The peer's BFD session; absent when BFD is off for the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bfd: Option<BfdInfo>,
}

/// One peer's BFD session (RFC 5880 names).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BfdInfo {
    /// AdminDown, Down, Init or Up.
    pub state: String,
    /// Why our session last left Up (RFC 5880 §4.1 diagnostic).
    pub diag: String,
    pub remote_state: String,
    pub remote_diag: String,
    pub local_discriminator: u32,
    pub remote_discriminator: u32,
    /// The detection time in force, once the peer has been heard.
    pub detection_time_ms: Option<u64>,
    /// Times the session went Up.
    pub ups: u64,
    /// Times it left Up because the path failed (each took the BGP session down).
    pub failures: u64,
    /// The BGP session is held Idle until BFD is Up again.
    pub holding_bgp: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteCounts {
    pub loc_rib: usize,
    pub originated: usize,
    /// Our routes in the kernel table; null when the kernel is not managed.
    #[serde(default)]
    pub installed: Option<usize>,
    /// Selected routes not installed because no next hop resolves.
    #[serde(default)]
    pub unresolved: Vec<Unresolved>,
}

/// A route whose next hops cannot be reached (BGP next hop not on a connected network and
/// not resolvable through the table).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Unresolved {
    pub prefix: String,
    pub next_hops: Vec<String>,
}

/// One Loc-RIB entry, for [`Request::Routes`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteInfo {
    pub prefix: String,
    pub next_hops: Vec<String>,
    pub as_path: Vec<u32>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub origin: String,
    pub communities: Vec<String>,
    /// The peer the best path came from; null when originated here.
    pub peer: Option<String>,
    /// Kept by graceful restart while the peer restarts; not refreshed yet.
    #[serde(default)]
    pub stale: bool,
}

/// Answer to [`Request::Drain`], once the node has left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DrainReply {
    pub node: String,
    /// Seconds waited between GRACEFUL_SHUTDOWN and the withdrawal (`bgp.drainWait`).
    pub waited_seconds: u64,
    /// Prefixes of ours withdrawn.
    pub withdrawn: usize,
    /// Sessions closed (Cease, or Cease/Hard Reset to peers with the N bit).
    pub sessions_closed: usize,
    /// Our routes removed from the kernel.
    pub kernel_routes_removed: usize,
}

/// Errors of the client side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the ferrovia agent at {path}: {source}; is the agent running (and is this the socket of its status.socket setting)?")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to the agent at {path} failed: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the agent at {path} answered something unexpected: {message}")]
    Decode { path: String, message: String },
}

/// Sends one request and decodes the answer.
pub fn call<T: for<'de> Deserialize<'de>>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    call_within(socket, req, Duration::from_secs(10))
}

/// [`call`], waiting up to `timeout` for the answer.
pub fn call_within<T: for<'de> Deserialize<'de>>(
    socket: &Path,
    req: &Request,
    timeout: Duration,
) -> Result<T, ClientError> {
    let path = socket.display().to_string();
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ClientError::Decode {
        path: path.clone(),
        message: e.to_string(),
    })?;
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(io)?;
    #[derive(Deserialize)]
    struct ErrorReply {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ErrorReply>(&buf) {
        return Err(ClientError::Decode {
            path,
            message: e.error,
        });
    }
    serde_json::from_slice(&buf).map_err(|e| ClientError::Decode {
        path,
        message: e.to_string(),
    })
}
