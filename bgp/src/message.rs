//! ferrovia's own model of BGP messages (RFC 4271 §4), independent of the codec crate.
//!
//! Everything above `wire` speaks these types; `wire` converts them to and from bytes.
//! Only what ferrovia uses is modelled explicitly; unknown optional transitive path
//! attributes are carried as raw bytes so they can be passed on (RFC 4271 §5).

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// BGP version we speak (RFC 4271 §4.2).
pub const BGP_VERSION: u8 = 4;
/// AS_TRANS (RFC 6793 §9): the 2-octet stand-in for a 4-octet AS number.
pub const AS_TRANS: u16 = 23456;
/// Largest BGP message (RFC 4271 §4.1).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Size of the fixed header (marker + length + type).
pub const HEADER_LEN: usize = 19;

/// The address families ferrovia negotiates (AFI/SAFI pairs, RFC 4760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4Unicast,
    /// AFI 2, SAFI 1.
    Ipv6Unicast,
}

impl Family {
    /// The family a prefix belongs to.
    pub fn of(prefix: &IpNet) -> Family {
        match prefix {
            IpNet::V4(_) => Family::Ipv4Unicast,
            IpNet::V6(_) => Family::Ipv6Unicast,
        }
    }
    /// AFI and SAFI numbers.
    pub fn afi_safi(self) -> (u16, u8) {
        match self {
            Family::Ipv4Unicast => (1, 1),
            Family::Ipv6Unicast => (2, 1),
        }
    }
}

/// A decoded BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(Family),
}

/// OPEN message (RFC 4271 §4.2) with the capabilities ferrovia understands (RFC 5492).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The "My Autonomous System" field as sent (AS_TRANS when the real AS needs 4 octets).
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Capabilities,
}

impl Open {
    /// The speaker's real AS: the 4-octet AS capability when present (RFC 6793), else `my_as`.
    pub fn asn(&self) -> u32 {
        self.capabilities
            .four_octet_as
            .unwrap_or(u32::from(self.my_as))
    }
}

/// Capabilities advertised in an OPEN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Multiprotocol extensions (RFC 4760), code 1. Families we do not know are dropped.
    pub multiprotocol: Vec<Family>,
    /// Route refresh (RFC 2918), code 2.
    pub route_refresh: bool,
    /// Enhanced route refresh (RFC 7313), code 70 — recorded, not used.
    pub enhanced_route_refresh: bool,
    /// 4-octet AS number (RFC 6793), code 65.
    pub four_octet_as: Option<u32>,
    /// Graceful restart (RFC 4724), code 64.
    pub graceful_restart: Option<GracefulRestart>,
    /// Codes of capabilities we received but do not interpret.
    pub unknown: Vec<u8>,
}

/// Graceful restart capability contents (RFC 4724 §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GracefulRestart {
    /// Restart State bit (R).
    pub restarting: bool,
    /// Graceful Notification bit (N, RFC 8538): a NOTIFICATION other than Cease/Hard Reset
    /// keeps the routes as stale too.
    pub notification: bool,
    /// Restart Time in seconds (12 bits).
    pub restart_time: u16,
    /// Families with their Forwarding State bit.
    pub families: Vec<(Family, bool)>,
}

/// NOTIFICATION message (RFC 4271 §4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

/// NOTIFICATION error codes and subcodes (RFC 4271 §4.5, §6; RFC 4486; RFC 6608).
pub mod notif {
    pub const MESSAGE_HEADER_ERROR: u8 = 1;
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;

    pub const OPEN_MESSAGE_ERROR: u8 = 2;
    pub const UNSUPPORTED_VERSION_NUMBER: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;

    pub const UPDATE_MESSAGE_ERROR: u8 = 3;
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;

    pub const HOLD_TIMER_EXPIRED: u8 = 4;

    pub const FSM_ERROR: u8 = 5;
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;

    pub const CEASE: u8 = 6;
    pub const MAXIMUM_PREFIXES_REACHED: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    /// Cease/Hard Reset (RFC 8538 §3): the peer flushes our routes even with graceful
    /// restart; the data carries the code and subcode of the reason.
    pub const HARD_RESET: u8 = 9;

    pub const ROUTE_REFRESH_MESSAGE_ERROR: u8 = 7;
}

impl Notification {
    pub fn new(code: u8, subcode: u8) -> Self {
        Notification {
            code,
            subcode,
            data: Vec::new(),
        }
    }
    pub fn with_data(code: u8, subcode: u8, data: Vec<u8>) -> Self {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Cease/Hard Reset wrapping the NOTIFICATION that says why (RFC 8538 §3).
    pub fn hard_reset(why: &Notification) -> Self {
        let mut data = vec![why.code, why.subcode];
        data.extend_from_slice(&why.data);
        Notification::with_data(notif::CEASE, notif::HARD_RESET, data)
    }

    /// Whether this is Cease/Hard Reset.
    pub fn is_hard_reset(&self) -> bool {
        self.code == notif::CEASE && self.subcode == notif::HARD_RESET
    }
}

impl std::fmt::Display for Notification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use notif::*;
        let name = match (self.code, self.subcode) {
            (MESSAGE_HEADER_ERROR, _) => "Message Header Error",
            (OPEN_MESSAGE_ERROR, UNSUPPORTED_VERSION_NUMBER) => "OPEN: Unsupported Version Number",
            (OPEN_MESSAGE_ERROR, BAD_PEER_AS) => "OPEN: Bad Peer AS",
            (OPEN_MESSAGE_ERROR, BAD_BGP_IDENTIFIER) => "OPEN: Bad BGP Identifier",
            (OPEN_MESSAGE_ERROR, UNACCEPTABLE_HOLD_TIME) => "OPEN: Unacceptable Hold Time",
            (OPEN_MESSAGE_ERROR, _) => "OPEN Message Error",
            (UPDATE_MESSAGE_ERROR, _) => "UPDATE Message Error",
            (HOLD_TIMER_EXPIRED, _) => "Hold Timer Expired",
            (FSM_ERROR, _) => "Finite State Machine Error",
            (CEASE, MAXIMUM_PREFIXES_REACHED) => "Cease: Maximum Number of Prefixes Reached",
            (CEASE, ADMINISTRATIVE_SHUTDOWN) => "Cease: Administrative Shutdown",
            (CEASE, PEER_DECONFIGURED) => "Cease: Peer De-configured",
            (CEASE, ADMINISTRATIVE_RESET) => "Cease: Administrative Reset",
            (CEASE, CONNECTION_REJECTED) => "Cease: Connection Rejected",
            (CEASE, CONNECTION_COLLISION_RESOLUTION) => "Cease: Connection Collision Resolution",
            (CEASE, HARD_RESET) => "Cease: Hard Reset",
            (CEASE, _) => "Cease",
            (ROUTE_REFRESH_MESSAGE_ERROR, _) => "ROUTE-REFRESH Message Error",
            _ => "Unknown",
        };
        write!(f, "{name} ({}/{})", self.code, self.subcode)
    }
}

/// ORIGIN attribute values (RFC 4271 §5.1.1), ordered by preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize)]
pub enum Origin {
    #[default]
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// One AS_PATH segment (RFC 4271 §4.3), always with 4-octet AS numbers in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Sequence(Vec<u32>),
    Set(Vec<u32>),
}

/// A next hop as carried by NEXT_HOP or MP_REACH_NLRI (RFC 4760; RFC 2545 for the link-local).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NextHop {
    pub address: IpAddr,
    pub link_local: Option<Ipv6Addr>,
}

impl NextHop {
    pub fn new(address: IpAddr) -> Self {
        NextHop {
            address,
            link_local: None,
        }
    }
}

/// A path attribute we do not interpret, kept to be passed on when optional transitive.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// Path attributes of a set of routes (RFC 4271 §5), next hop excluded: next hops are
/// per family on the wire (NEXT_HOP for IPv4 NLRI, MP_REACH_NLRI for the rest) and are
/// carried next to the prefixes in [`Update`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PathAttributes {
    pub origin: Origin,
    pub as_path: Vec<AsSegment>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    /// RFC 1997 communities, as 32-bit values.
    pub communities: Vec<u32>,
    /// RFC 4456.
    pub originator_id: Option<Ipv4Addr>,
    /// RFC 4456.
    pub cluster_list: Vec<Ipv4Addr>,
    /// Optional transitive attributes we do not interpret.
    pub other: Vec<RawAttribute>,
}

impl PathAttributes {
    /// AS_PATH length for best-path selection: a SET counts as one (RFC 4271 §9.1.2.2).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(_) => 1,
            })
            .sum()
    }
    /// Every AS number anywhere in the path.
    pub fn as_path_contains(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&asn),
        })
    }
    /// The neighbouring AS: first AS of the first SEQUENCE (RFC 4271 §9.1.2.2 c).
    pub fn first_as(&self) -> Option<u32> {
        match self.as_path.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }
}

/// Announced routes of one UPDATE that share attributes and next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    pub next_hop: NextHop,
    pub prefixes: Vec<IpNet>,
}

/// UPDATE message (RFC 4271 §4.3 with RFC 4760 MP_REACH/MP_UNREACH folded in).
///
/// `reach` holds at most one entry per family: IPv4 from the classic NLRI field with the
/// NEXT_HOP attribute, IPv6 from MP_REACH_NLRI. `withdrawn` mixes the classic field and
/// MP_UNREACH_NLRI. An UPDATE with nothing in either and no attributes is IPv4 End-of-RIB;
/// an MP_UNREACH_NLRI with no prefixes is End-of-RIB for its family (RFC 4724 §2), which
/// decode reports in `end_of_rib`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    pub withdrawn: Vec<IpNet>,
    pub attributes: Option<PathAttributes>,
    pub reach: Vec<Reach>,
    pub end_of_rib: Option<Family>,
    /// Set by decode when RFC 7606 "treat-as-withdraw" applied: every prefix the message
    /// announced has been moved to `withdrawn`, and `reach` is empty.
    pub treat_as_withdraw: bool,
}

impl Update {
    /// The End-of-RIB marker for a family (RFC 4724 §2).
    pub fn end_of_rib(family: Family) -> Update {
        Update {
            end_of_rib: Some(family),
            ..Default::default()
        }
    }
    /// All prefixes announced, any family.
    pub fn announced(&self) -> impl Iterator<Item = &IpNet> {
        self.reach.iter().flat_map(|r| r.prefixes.iter())
    }
}

/// What the decoder needs to know about the session (negotiated capabilities).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionContext {
    /// Both sides advertised the 4-octet AS capability: AS_PATH carries 4-octet numbers.
    pub four_octet_as: bool,
}
