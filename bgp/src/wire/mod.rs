//! Bytes ⇄ [`crate::message`] (RFC 4271 §4 with RFC 4760, 6793, 4724, 2918, 5492, 7606).
//!
//! Nothing outside this module sees the codec crate (`netgauze-bgp-pkt`), so it can be
//! swapped. The split of work:
//!
//! - **Ours**: message framing, the OPEN fixed part and optional-parameter framing
//!   (including RFC 9072 extended parameters), the UPDATE framing and attribute scan, the
//!   RFC 7606 classification of every error (session reset / treat-as-withdraw / attribute
//!   discard), MP_REACH_NLRI / MP_UNREACH_NLRI, AS4_PATH (it may carry confederation
//!   segments that must be dropped), the graceful-restart capability, NOTIFICATION (any
//!   code and subcode, verbatim data) and the End-of-RIB markers.
//! - **netgauze**: prefix parsing (`Ipv4Net`/`Ipv6Net` from `netgauze-parse-utils`), the
//!   values of ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, ATOMIC_AGGREGATE, AGGREGATOR,
//!   COMMUNITIES, ORIGINATOR_ID and CLUSTER_LIST (each attribute is handed over alone,
//!   after our flag and length checks), the multiprotocol, route-refresh, enhanced
//!   route-refresh and 4-octet-AS capabilities, and the encoding of OPEN, UPDATE,
//!   KEEPALIVE and ROUTE-REFRESH.
//!
//! Why not netgauze's own lenient mode (`BgpParsingContext` with `fail_on_* = false`):
//! after an ORIGIN/AS_PATH error it does not skip the attribute (`take_slice(0)`), so the
//! rest of the list is parsed misaligned; it cannot tell RFC 7606's three actions apart;
//! it rejects multicast NLRI (RFC 4271 says ignore, not reset); it fails on an MP_REACH
//! for an AFI/SAFI it does not know (we ignore those NLRI); and it does not check the IPv6
//! next-hop length (anything but 32 is read as 16, misaligning the NLRI). The module tests
//! give the exact outcome of each error class.

use ipnet::IpNet;

use crate::message::{Family, Message, NextHop};

/// The 16-octet all-ones marker that starts every message (RFC 4271 §4.1).
pub const MARKER: [u8; 16] = [0xff; 16];

/// Message type codes (RFC 4271 §4.1, RFC 2918 §3).
pub mod msg_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// Path attribute type codes we handle by name.
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
    pub const IPV6_EXTENDED_COMMUNITIES: u8 = 25;
    pub const LARGE_COMMUNITIES: u8 = 32;
    pub const ONLY_TO_CUSTOMER: u8 = 35;
}

/// Path attribute flag bits (RFC 4271 §4.3).
pub mod attr_flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Capability codes (IANA "Capability Codes").
pub mod cap_code {
    pub const MULTIPROTOCOL: u8 = 1;
    pub const ROUTE_REFRESH: u8 = 2;
    pub const GRACEFUL_RESTART: u8 = 64;
    pub const FOUR_OCTET_AS: u8 = 65;
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
}

/// Why [`encode`] (or [`try_pack_updates`]) could not produce a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message would be {0} bytes; BGP allows at most 4096 (RFC 4271 §4.1)")]
    TooLong(usize),
    #[error(
        "OPEN optional parameters would take {0} bytes; at most 255 fit \
         (extended parameters, RFC 9072, are not sent)"
    )]
    OpenParametersTooLong(usize),
    #[error("the UPDATE announces routes but has no path attributes: set Update::attributes")]
    MissingAttributes,
    #[error(
        "next hop {next_hop:?} cannot carry {prefix}: IPv4 routes need an IPv4 next hop \
         without link-local, IPv6 routes an IPv6 next hop"
    )]
    NextHopFamily { prefix: IpNet, next_hop: NextHop },
    #[error("more than one Reach for {0:?} in one UPDATE: split them into separate UPDATEs")]
    DuplicateReach(Family),
    #[error("an End-of-RIB UPDATE must not carry prefixes or attributes")]
    EndOfRibNotEmpty,
    #[error(
        "an UPDATE with nothing in it is the IPv4 End-of-RIB marker: \
         use Update::end_of_rib(Family::Ipv4Unicast) if that is meant"
    )]
    EmptyUpdate,
    #[error("an AS_SET of {0} members does not fit one segment (at most 255)")]
    AsSetTooLarge(usize),
    #[error("{0} is not a unicast prefix; the codec only encodes unicast NLRI")]
    NonUnicastPrefix(IpNet),
    #[error("codec error: {0}")]
    Codec(String),
}

/// What [`decode_message`] returns: a message, or a message RFC says to ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    Message(Message),
    Ignored(Ignored),
}

/// Messages that are well formed but must be ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// ROUTE-REFRESH for an AFI/SAFI other than IPv4/IPv6 unicast (RFC 2918 §4: ignore),
    /// or with a subtype other than 0 (RFC 7313 BoRR/EoRR and reserved values: we do not
    /// run enhanced route refresh, RFC 7313 §5 says ignore unknown subtypes).
    RouteRefresh { afi: u16, safi: u8, subtype: u8 },
}

mod as4;
mod attributes;
mod encode;
mod framing;
mod mp;
mod nlri;
mod open;
mod pack;
mod reader;
#[cfg(test)]
mod testutil;
mod update;

pub use as4::merge_as4_path;
pub use encode::{encode, end_of_rib};
pub use framing::{decode, decode_message, frame_len};
pub use nlri::{is_encodable_prefix, prefix_wire_len};
pub use pack::{pack_updates, try_pack_updates};
