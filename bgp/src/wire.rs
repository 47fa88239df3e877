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
//! it rejects multicast NLRI (RFC 4271 says ignore, not reset), unknown MP_REACH families
//! and IPv6 next-hop lengths other than 16/32 are not checked. See the module tests for the
//! exact outcome of each error class.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::community::Community;
use netgauze_bgp_pkt::iana::RouteRefreshSubcode;
use netgauze_bgp_pkt::nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::path_attribute as ng;
use netgauze_bgp_pkt::path_attribute::{PathAttribute, PathAttributeValue};
use netgauze_bgp_pkt::route_refresh::BgpRouteRefreshMessage;
use netgauze_bgp_pkt::update::BgpUpdateMessage;
use netgauze_bgp_pkt::wire::deserializer::capabilities::{
    BgpCapabilityParsingError, MultiProtocolExtensionsCapabilityParsingError,
};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::{ParseFrom, ParseFromWithOneInput};
use netgauze_parse_utils::WritablePdu;

use crate::message::{
    notif, AsSegment, Capabilities, Family, GracefulRestart, Message, NextHop, Notification, Open,
    Origin, PathAttributes, RawAttribute, Reach, SessionContext, Update, AS_TRANS, BGP_VERSION,
    HEADER_LEN, MAX_MESSAGE_LEN,
};

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

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

/// Looks at the start of `buf`: `Ok(None)` if fewer bytes than a full message are present;
/// `Ok(Some(len))` total length of the first message; `Err(Notification)` for a bad marker
/// (1/1 Connection Not Synchronized, checked on as many marker bytes as are present) or a
/// bad length (<19 or >4096: 1/2 Bad Message Length with the length as data).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Notification> {
    if buf.iter().take(MARKER.len()).any(|b| *b != 0xff) {
        return Err(not_synchronized());
    }
    let Some(len) = buf.get(16..18).and_then(be_u16) else {
        return Ok(None);
    };
    let len_usize = usize::from(len);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len_usize) {
        return Err(bad_length(len));
    }
    Ok((buf.len() >= len_usize).then_some(len_usize))
}

/// Decodes one whole message (header included).
///
/// `Err(Notification)` is the NOTIFICATION the session must send before closing (RFC 4271
/// §6, RFC 7606 where it says session reset). Unknown message type → 1/3 with the type as
/// data. UPDATE errors that RFC 7606 handles without a reset come back as `Ok` (see
/// [`Update::treat_as_withdraw`]).
///
/// Two cases do not map onto [`Message`] directly:
/// - a ROUTE-REFRESH to ignore (unknown AFI/SAFI or non-zero subtype, see [`Ignored`])
///   decodes to an empty `Message::Update(Update::default())`: a no-op in Established (it
///   changes no route) and an FSM error elsewhere, as a ROUTE-REFRESH would be. Use
///   [`decode_message`] to tell it apart.
/// - a NOTIFICATION never yields `Err` (RFC 4271 §6.4: an error in a NOTIFICATION cannot be
///   reported); one too short to hold code and subcode reads the missing octets as 0.
pub fn decode(msg: &[u8], ctx: &SessionContext) -> Result<Message, Notification> {
    match decode_message(msg, ctx)? {
        Decoded::Message(m) => Ok(m),
        Decoded::Ignored(_) => Ok(Message::Update(Update::default())),
    }
}

/// Like [`decode`], but reports messages to ignore as [`Decoded::Ignored`].
pub fn decode_message(msg: &[u8], ctx: &SessionContext) -> Result<Decoded, Notification> {
    let len = match frame_len(msg)? {
        Some(len) => len,
        None => {
            // Fewer bytes than the header or than its own length field says.
            let claimed = msg.get(16..18).and_then(be_u16);
            return Err(bad_length(
                claimed.unwrap_or(u16::try_from(msg.len()).unwrap_or(u16::MAX)),
            ));
        }
    };
    if len != msg.len() {
        return Err(bad_length(u16::try_from(len).unwrap_or(u16::MAX)));
    }
    let len16 = u16::try_from(len).unwrap_or(u16::MAX);
    let (Some(&kind), Some(body)) = (msg.get(18), msg.get(HEADER_LEN..)) else {
        return Err(bad_length(len16));
    };
    let msg = match kind {
        msg_type::OPEN => {
            if len < 29 {
                return Err(bad_length(len16));
            }
            Message::Open(decode_open(body)?)
        }
        msg_type::UPDATE => {
            if len < 23 {
                return Err(bad_length(len16));
            }
            Message::Update(decode_update(body, ctx)?)
        }
        msg_type::NOTIFICATION => {
            let mut r = Reader::new(body);
            let code = r.u8().unwrap_or(0);
            let subcode = r.u8().unwrap_or(0);
            Message::Notification(Notification::with_data(code, subcode, r.rest().to_vec()))
        }
        msg_type::KEEPALIVE => {
            if len != HEADER_LEN {
                return Err(bad_length(len16));
            }
            Message::Keepalive
        }
        msg_type::ROUTE_REFRESH => return decode_route_refresh(msg, body),
        other => {
            return Err(Notification::with_data(
                notif::MESSAGE_HEADER_ERROR,
                notif::BAD_MESSAGE_TYPE,
                vec![other],
            ))
        }
    };
    Ok(Decoded::Message(msg))
}

fn not_synchronized() -> Notification {
    Notification::new(
        notif::MESSAGE_HEADER_ERROR,
        notif::CONNECTION_NOT_SYNCHRONIZED,
    )
}

fn bad_length(len: u16) -> Notification {
    Notification::with_data(
        notif::MESSAGE_HEADER_ERROR,
        notif::BAD_MESSAGE_LENGTH,
        len.to_be_bytes().to_vec(),
    )
}

fn be_u16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.try_into().ok()?))
}

/// A cursor over peer bytes: every read is checked, none can panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader(buf)
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn peek_u8(&self) -> Option<u8> {
        self.0.first().copied()
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.0.split_at_checked(n)?;
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        let (&b, tail) = self.0.split_first()?;
        self.0 = tail;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        be_u16(self.take(2)?)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }
    fn ipv6(&mut self) -> Option<Ipv6Addr> {
        let b: [u8; 16] = self.take(16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

// ---------------------------------------------------------------------------------------
// Families and prefixes
// ---------------------------------------------------------------------------------------

fn family_of_afi_safi(afi: u16, safi: u8) -> Option<Family> {
    match (afi, safi) {
        (1, 1) => Some(Family::Ipv4Unicast),
        (2, 1) => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

fn address_type(f: Family) -> AddressType {
    match f {
        Family::Ipv4Unicast => AddressType::Ipv4Unicast,
        Family::Ipv6Unicast => AddressType::Ipv6Unicast,
    }
}

fn family_of_address_type(t: AddressType) -> Option<Family> {
    match t {
        AddressType::Ipv4Unicast => Some(Family::Ipv4Unicast),
        AddressType::Ipv6Unicast => Some(Family::Ipv6Unicast),
        _ => None,
    }
}

/// Parses a field of IPv4 prefixes (RFC 4271 §4.3). `None` when it is not syntactically
/// correct (RFC 7606 §5.3: a length above 32, or prefixes that do not exactly fill the
/// field). Bits past the prefix length are cleared.
fn parse_prefixes_v4(buf: &[u8]) -> Option<Vec<IpNet>> {
    let mut r = SliceReader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let net = <Ipv4Net as ParseFrom>::parse(&mut r).ok()?;
        out.push(IpNet::V4(net.trunc()));
    }
    Some(out)
}

/// As [`parse_prefixes_v4`] for IPv6 (lengths up to 128).
fn parse_prefixes_v6(buf: &[u8]) -> Option<Vec<IpNet>> {
    let mut r = SliceReader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let net = <Ipv6Net as ParseFrom>::parse(&mut r).ok()?;
        out.push(IpNet::V6(net.trunc()));
    }
    Some(out)
}

/// Bytes a prefix takes in an NLRI field.
pub fn prefix_wire_len(p: &IpNet) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// Whether the codec can encode this prefix (netgauze refuses multicast and broadcast
/// networks; see [`WireError::NonUnicastPrefix`]).
pub fn is_encodable_prefix(p: &IpNet) -> bool {
    match p {
        IpNet::V4(n) => Ipv4Unicast::from_net(n.trunc()).is_ok(),
        IpNet::V6(n) => Ipv6Unicast::from_net(n.trunc()).is_ok(),
    }
}

fn ng_v4(p: &Ipv4Net) -> Result<Ipv4UnicastAddress, WireError> {
    Ipv4Unicast::from_net(p.trunc())
        .map(Ipv4UnicastAddress::new_no_path_id)
        .map_err(|_| WireError::NonUnicastPrefix(IpNet::V4(*p)))
}

fn ng_v6(p: &Ipv6Net) -> Result<Ipv6UnicastAddress, WireError> {
    Ipv6Unicast::from_net(p.trunc())
        .map(|n| Ipv6UnicastAddress::new(None, n))
        .map_err(|_| WireError::NonUnicastPrefix(IpNet::V6(*p)))
}

// ---------------------------------------------------------------------------------------
// OPEN
// ---------------------------------------------------------------------------------------

fn open_error(subcode: u8) -> Notification {
    Notification::new(notif::OPEN_MESSAGE_ERROR, subcode)
}

/// `body` is the message after the header; the caller checked it holds at least 10 bytes.
/// No semantic checks on AS, hold time or identifier: the FSM does them with its config.
fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    let malformed = || open_error(0);
    let mut r = Reader::new(body);
    let version = r.u8().ok_or_else(malformed)?;
    if version != BGP_VERSION {
        // RFC 4271 §6.2: data is the largest supported version, as 2 octets.
        return Err(Notification::with_data(
            notif::OPEN_MESSAGE_ERROR,
            notif::UNSUPPORTED_VERSION_NUMBER,
            u16::from(BGP_VERSION).to_be_bytes().to_vec(),
        ));
    }
    let my_as = r.u16().ok_or_else(malformed)?;
    let hold_time = r.u16().ok_or_else(malformed)?;
    let bgp_id = r.ipv4().ok_or_else(malformed)?;
    let opt_len = r.u8().ok_or_else(malformed)?;
    // RFC 9072: Non-Ext OP Len 255 followed by Non-Ext OP Type 255 announces extended
    // optional parameters with 2-octet lengths.
    let extended = opt_len == 255 && r.peek_u8() == Some(255);
    let params = if extended {
        r.u8().ok_or_else(malformed)?;
        let ext_len = r.u16().ok_or_else(malformed)?;
        r.take(usize::from(ext_len)).ok_or_else(malformed)?
    } else {
        r.take(usize::from(opt_len)).ok_or_else(malformed)?
    };
    if !r.is_empty() {
        // The parameters do not fill the message.
        return Err(malformed());
    }
    let mut caps = Capabilities::default();
    let mut p = Reader::new(params);
    while !p.is_empty() {
        let ptype = p.u8().ok_or_else(malformed)?;
        let plen = if extended {
            p.u16().ok_or_else(malformed)?
        } else {
            u16::from(p.u8().ok_or_else(malformed)?)
        };
        let value = p.take(usize::from(plen)).ok_or_else(malformed)?;
        if ptype != 2 {
            // Only Capabilities (RFC 5492) is supported; type 1 is deprecated.
            return Err(open_error(notif::UNSUPPORTED_OPTIONAL_PARAMETER));
        }
        decode_capabilities(value, &mut caps)?;
    }
    Ok(Open {
        version,
        my_as,
        hold_time,
        bgp_id,
        capabilities: caps,
    })
}

/// One Capabilities optional parameter (RFC 5492 §4). A capability we interpret but whose
/// length is wrong is 2/0 (Unspecific, RFC 4271 §6.2 "recognized but malformed");
/// capabilities we do not interpret are only listed, their contents are not looked at.
fn decode_capabilities(buf: &[u8], caps: &mut Capabilities) -> Result<(), Notification> {
    let malformed = || open_error(0);
    let mut r = Reader::new(buf);
    while !r.is_empty() {
        let whole_start = buf.len() - r.len();
        let code = r.u8().ok_or_else(malformed)?;
        let len = r.u8().ok_or_else(malformed)?;
        let value = r.take(usize::from(len)).ok_or_else(malformed)?;
        let whole = buf
            .get(whole_start..whole_start + 2 + usize::from(len))
            .ok_or_else(malformed)?;
        match code {
            cap_code::MULTIPROTOCOL
            | cap_code::ROUTE_REFRESH
            | cap_code::FOUR_OCTET_AS
            | cap_code::ENHANCED_ROUTE_REFRESH => {
                let mut cur = SliceReader::new(whole);
                match BgpCapability::parse(&mut cur) {
                    Ok(_) if !cur.is_empty() => return Err(malformed()),
                    Ok(BgpCapability::MultiProtocolExtensions(mp)) => {
                        if let Some(f) = family_of_address_type(mp.address_type()) {
                            if !caps.multiprotocol.contains(&f) {
                                caps.multiprotocol.push(f);
                            }
                        }
                    }
                    Ok(BgpCapability::RouteRefresh) => caps.route_refresh = true,
                    Ok(BgpCapability::EnhancedRouteRefresh) => caps.enhanced_route_refresh = true,
                    Ok(BgpCapability::FourOctetAs(c)) => {
                        caps.four_octet_as.get_or_insert(c.asn4());
                    }
                    Ok(_) => {}
                    // Well-formed multiprotocol capability for a family netgauze or we do
                    // not know: the family is dropped.
                    Err(BgpCapabilityParsingError::MultiProtocolExtensionsCapabilityError(
                        MultiProtocolExtensionsCapabilityParsingError::UndefinedAddressFamily {
                            ..
                        }
                        | MultiProtocolExtensionsCapabilityParsingError::UndefinedSubsequentAddressFamily {
                            ..
                        }
                        | MultiProtocolExtensionsCapabilityParsingError::AddressTypeError { .. },
                    )) => {}
                    Err(_) => return Err(malformed()),
                }
            }
            cap_code::GRACEFUL_RESTART => {
                // Parsed here: netgauze rejects the whole capability when one AFI/SAFI
                // pair is unknown to it, and we only want to drop that pair.
                let mut g = Reader::new(value);
                let head = g.u16().ok_or_else(malformed)?;
                let mut gr = GracefulRestart {
                    restarting: head & 0x8000 != 0,
                    restart_time: head & 0x0fff,
                    families: Vec::new(),
                };
                while g.len() >= 4 {
                    let (Some(afi), Some(safi), Some(flags)) = (g.u16(), g.u8(), g.u8()) else {
                        break;
                    };
                    if let Some(f) = family_of_afi_safi(afi, safi) {
                        if !gr.families.iter().any(|(g, _)| *g == f) {
                            gr.families.push((f, flags & 0x80 != 0));
                        }
                    }
                }
                if caps.graceful_restart.is_none() {
                    caps.graceful_restart = Some(gr);
                }
            }
            other => {
                if !caps.unknown.contains(&other) {
                    caps.unknown.push(other);
                }
            }
        }
    }
    Ok(())
}

fn encode_open(o: &Open) -> Result<BgpMessage, WireError> {
    let c = &o.capabilities;
    let mut caps = Vec::new();
    for f in &c.multiprotocol {
        caps.push(BgpCapability::MultiProtocolExtensions(
            MultiProtocolExtensionsCapability::new(address_type(*f)),
        ));
    }
    if c.route_refresh {
        caps.push(BgpCapability::RouteRefresh);
    }
    if c.enhanced_route_refresh {
        caps.push(BgpCapability::EnhancedRouteRefresh);
    }
    if let Some(asn) = c.four_octet_as {
        caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(asn)));
    }
    if let Some(gr) = &c.graceful_restart {
        let families: Vec<_> = gr
            .families
            .iter()
            .map(|(f, fwd)| GracefulRestartAddressFamily::new(*fwd, address_type(*f)))
            .collect();
        caps.push(BgpCapability::GracefulRestartCapability(
            GracefulRestartCapability::new(
                gr.restarting,
                false,
                gr.restart_time & 0x0fff,
                families,
            ),
        ));
    }
    let params = if caps.is_empty() {
        vec![]
    } else {
        vec![BgpOpenMessageParameter::Capabilities(caps.into())]
    };
    let params_len: usize = params.iter().map(|p| p.len()).sum();
    if params_len > 255 || params.iter().any(|p| p.len() > 257) {
        return Err(WireError::OpenParametersTooLong(params_len));
    }
    Ok(BgpMessage::Open(BgpOpenMessage::new(
        o.my_as,
        o.hold_time,
        o.bgp_id,
        params,
    )))
}

// ---------------------------------------------------------------------------------------
// ROUTE-REFRESH and NOTIFICATION
// ---------------------------------------------------------------------------------------

fn decode_route_refresh(msg: &[u8], body: &[u8]) -> Result<Decoded, Notification> {
    let mut r = Reader::new(body);
    let (Some(afi), Some(subtype), Some(safi), true) = (r.u16(), r.u8(), r.u8(), r.is_empty())
    else {
        // RFC 7313 §5: Invalid Message Length, data is the whole message.
        return Err(Notification::with_data(
            notif::ROUTE_REFRESH_MESSAGE_ERROR,
            1,
            msg.to_vec(),
        ));
    };
    match (family_of_afi_safi(afi, safi), subtype) {
        (Some(f), 0) => Ok(Decoded::Message(Message::RouteRefresh(f))),
        _ => Ok(Decoded::Ignored(Ignored::RouteRefresh {
            afi,
            safi,
            subtype,
        })),
    }
}

fn encode_notification(n: &Notification) -> Result<Vec<u8>, WireError> {
    let len = HEADER_LEN + 2 + n.data.len();
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(len));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes());
    out.push(msg_type::NOTIFICATION);
    out.push(n.code);
    out.push(n.subcode);
    out.extend_from_slice(&n.data);
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// UPDATE decoding with RFC 7606 error handling
// ---------------------------------------------------------------------------------------

/// One path attribute as framed on the wire.
struct RawAttr<'a> {
    flags: u8,
    code: u8,
    value: &'a [u8],
    /// Flags, type, length and value: what netgauze parses and NOTIFICATION data carries.
    whole: &'a [u8],
}

/// What RFC 7606 says to do about one attribute (session reset is an `Err`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    Discard,
    Withdraw,
}

/// Splits the path attribute field. The flag is true when the last attribute header or
/// value overruns the field (RFC 7606 §4: treat-as-withdraw, the NLRI is still found from
/// the Total Path Attribute Length).
fn scan_attributes(buf: &[u8]) -> (Vec<RawAttr<'_>>, bool) {
    let mut out = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        let mut r = Reader::new(rest);
        let (Some(flags), Some(code)) = (r.u8(), r.u8()) else {
            return (out, true);
        };
        let len = if flags & attr_flags::EXTENDED_LENGTH != 0 {
            r.u16()
        } else {
            r.u8().map(u16::from)
        };
        let Some(len) = len else {
            return (out, true);
        };
        let header = rest.len() - r.len();
        let Some(value) = r.take(usize::from(len)) else {
            return (out, true);
        };
        let Some((whole, tail)) = rest.split_at_checked(header + usize::from(len)) else {
            return (out, true);
        };
        out.push(RawAttr {
            flags,
            code,
            value,
            whole,
        });
        rest = tail;
    }
    (out, false)
}

/// Everything gathered from the attributes of one UPDATE.
#[derive(Default)]
struct Collected {
    origin: Option<Origin>,
    as_path: Option<Vec<AsSegment>>,
    next_hop: Option<Ipv4Addr>,
    med: Option<u32>,
    local_pref: Option<u32>,
    atomic_aggregate: bool,
    aggregator: Option<(u32, Ipv4Addr)>,
    communities: Vec<u32>,
    originator_id: Option<Ipv4Addr>,
    cluster_list: Vec<Ipv4Addr>,
    as4_path: Option<Vec<AsSegment>>,
    as4_aggregator: Option<(u32, Ipv4Addr)>,
    other: Vec<RawAttribute>,
    mp_reach: Option<(Family, NextHop, Vec<IpNet>)>,
    mp_unreach: Option<(Family, Vec<IpNet>)>,
}

fn decode_update(body: &[u8], ctx: &SessionContext) -> Result<Update, Notification> {
    let malformed_list =
        || Notification::new(notif::UPDATE_MESSAGE_ERROR, notif::MALFORMED_ATTRIBUTE_LIST);
    let invalid_network =
        || Notification::new(notif::UPDATE_MESSAGE_ERROR, notif::INVALID_NETWORK_FIELD);
    let mut r = Reader::new(body);
    // RFC 4271 §6.3: Withdrawn Routes Length + Total Attribute Length + 23 > message
    // length is a Malformed Attribute List; nothing after that can be located.
    let wlen = r.u16().ok_or_else(malformed_list)?;
    let wbuf = r.take(usize::from(wlen)).ok_or_else(malformed_list)?;
    let alen = r.u16().ok_or_else(malformed_list)?;
    let abuf = r.take(usize::from(alen)).ok_or_else(malformed_list)?;
    let nlri_buf = r.rest();

    // RFC 7606 §3 e, §5.3: withdrawn and NLRI fields that cannot be parsed reset the
    // session (treat-as-withdraw needs every prefix).
    let mut withdrawn = parse_prefixes_v4(wbuf).ok_or_else(invalid_network)?;
    let nlri = parse_prefixes_v4(nlri_buf).ok_or_else(invalid_network)?;

    let (attrs, overrun) = scan_attributes(abuf);
    let mut withdraw = overrun;
    if overrun {
        tracing::debug!("UPDATE: path attribute overruns the attribute field (treat-as-withdraw)");
    }
    let mut seen = [false; 256];
    let mut ng_ctx = BgpParsingContext::new(
        ctx.four_octet_as,
        HashMap::new(),
        HashMap::new(),
        true,
        true,
        true,
        true,
    );
    let mut c = Collected::default();
    for a in &attrs {
        let slot = &mut seen[usize::from(a.code)];
        if *slot {
            // RFC 7606 §3 g: a repeated MP_REACH/MP_UNREACH is a Malformed Attribute List;
            // any other repeated attribute: keep the first, discard the others.
            if a.code == attr_type::MP_REACH_NLRI || a.code == attr_type::MP_UNREACH_NLRI {
                return Err(malformed_list());
            }
            tracing::debug!(code = a.code, "UPDATE: repeated path attribute discarded");
            continue;
        }
        *slot = true;
        match attribute(a, ctx, &mut ng_ctx, &mut c)? {
            Verdict::Ok => {}
            Verdict::Discard => {
                tracing::debug!(code = a.code, "UPDATE: malformed attribute discarded");
            }
            Verdict::Withdraw => {
                tracing::debug!(
                    code = a.code,
                    "UPDATE: malformed attribute (treat-as-withdraw)"
                );
                withdraw = true;
            }
        }
    }

    let mp_reach_prefixes = c.mp_reach.as_ref().map_or(0, |(_, _, p)| p.len());
    // RFC 7606 §3 d: a missing well-known mandatory attribute is treat-as-withdraw.
    // NEXT_HOP is only mandatory with classic NLRI (RFC 4760 §3); LOCAL_PREF depends on
    // the session type and is the caller's business.
    if !nlri.is_empty() || mp_reach_prefixes > 0 {
        let missing =
            c.origin.is_none() || c.as_path.is_none() || (!nlri.is_empty() && c.next_hop.is_none());
        if missing && !withdraw {
            tracing::debug!("UPDATE: missing well-known mandatory attribute (treat-as-withdraw)");
            withdraw = true;
        }
    }

    let mp_unreach_family = c.mp_unreach.as_ref().map(|(f, _)| *f);
    let mp_unreach_empty = c.mp_unreach.as_ref().is_some_and(|(_, p)| p.is_empty());
    if let Some((_, p)) = c.mp_unreach.take() {
        withdrawn.extend(p);
    }

    if withdraw {
        withdrawn.extend(nlri);
        if let Some((_, _, p)) = c.mp_reach {
            withdrawn.extend(p);
        }
        return Ok(Update {
            withdrawn,
            attributes: None,
            reach: Vec::new(),
            end_of_rib: None,
            treat_as_withdraw: true,
        });
    }

    // End-of-RIB (RFC 4724 §2).
    if wbuf.is_empty() && nlri_buf.is_empty() {
        if abuf.is_empty() {
            return Ok(Update::end_of_rib(Family::Ipv4Unicast));
        }
        if attrs.len() == 1 && mp_unreach_empty {
            if let Some(f) = mp_unreach_family {
                return Ok(Update::end_of_rib(f));
            }
        }
    }

    // RFC 6793 §4.2.3: rebuild the real path from AS_PATH and AS4_PATH.
    let mut as_path = c.as_path.take().unwrap_or_default();
    let mut aggregator = c.aggregator;
    if !ctx.four_octet_as {
        let use_as4 = aggregator.is_none_or(|(asn, _)| asn == u32::from(AS_TRANS));
        if use_as4 {
            if aggregator.is_some() {
                if let Some(a4) = c.as4_aggregator {
                    aggregator = Some(a4);
                }
            }
            if let Some(as4) = c.as4_path.take() {
                as_path = merge_as4_path(as_path, as4);
            }
        }
    }

    let mut reach = Vec::new();
    if let Some(nh) = c.next_hop.filter(|_| !nlri.is_empty()) {
        reach.push(Reach {
            next_hop: NextHop::new(IpAddr::V4(nh)),
            prefixes: nlri,
        });
    }
    if let Some((_, next_hop, prefixes)) = c.mp_reach.take() {
        if !prefixes.is_empty() {
            match reach.iter_mut().find(|r| r.next_hop == next_hop) {
                Some(r) => r.prefixes.extend(prefixes),
                None => reach.push(Reach { next_hop, prefixes }),
            }
        }
    }

    let any_attribute = attrs
        .iter()
        .any(|a| a.code != attr_type::MP_REACH_NLRI && a.code != attr_type::MP_UNREACH_NLRI);
    let attributes = (any_attribute || !reach.is_empty()).then(|| PathAttributes {
        origin: c.origin.unwrap_or_default(),
        as_path,
        med: c.med,
        local_pref: c.local_pref,
        atomic_aggregate: c.atomic_aggregate,
        aggregator,
        communities: c.communities,
        originator_id: c.originator_id,
        cluster_list: c.cluster_list,
        other: c.other,
    });
    Ok(Update {
        withdrawn,
        attributes,
        reach,
        end_of_rib: None,
        treat_as_withdraw: false,
    })
}

/// Parses one attribute alone with netgauze (strict), after our own checks.
fn ng_parse(a: &RawAttr<'_>, ng_ctx: &mut BgpParsingContext) -> Option<PathAttributeValue> {
    let mut cur = SliceReader::new(a.whole);
    let parsed = <PathAttribute as ParseFromWithOneInput<'_, &mut BgpParsingContext>>::parse(
        &mut cur, ng_ctx,
    )
    .ok()?;
    cur.is_empty().then(|| parsed.value().clone())
}

fn segment(t: ng::AsPathSegmentType, asns: Vec<u32>) -> AsSegment {
    match t {
        ng::AsPathSegmentType::AsSet => AsSegment::Set(asns),
        ng::AsPathSegmentType::AsSequence => AsSegment::Sequence(asns),
    }
}

/// Applies RFC 7606 to one attribute and stores its value. `Err` is a session reset.
fn attribute(
    a: &RawAttr<'_>,
    ctx: &SessionContext,
    ng_ctx: &mut BgpParsingContext,
    c: &mut Collected,
) -> Result<Verdict, Notification> {
    use attr_flags::{OPTIONAL, PARTIAL, TRANSITIVE};
    use attr_type::*;
    let f = a.flags;
    let optional = f & OPTIONAL != 0;
    let transitive = f & TRANSITIVE != 0;
    let partial = f & PARTIAL != 0;
    // RFC 4271 §4.3: well-known and optional non-transitive attributes have Partial 0.
    let well_known = !optional && transitive && !partial;
    let optional_non_transitive = optional && !transitive && !partial;
    let optional_transitive = optional && transitive;
    let len = a.value.len();
    // Verdict when the checks fail, for attributes whose RFC says treat-as-withdraw.
    let withdraw_unless = |ok: bool| if ok { Verdict::Ok } else { Verdict::Withdraw };

    let v = match a.code {
        // RFC 7606 §7.1.
        ORIGIN => {
            if !(well_known && len == 1) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::Origin(o)) => {
                    c.origin = Some(match o {
                        ng::Origin::IGP => Origin::Igp,
                        ng::Origin::EGP => Origin::Egp,
                        ng::Origin::Incomplete => Origin::Incomplete,
                    });
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.2. Confederation segments are refused too: we are never a
        // confederation member, so they are malformed from any peer (RFC 5065 §5).
        AS_PATH => {
            if !well_known {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::AsPath(p)) => {
                    c.as_path = Some(match p {
                        ng::AsPath::As2PathSegments(segs) => segs
                            .iter()
                            .map(|s| {
                                segment(
                                    s.segment_type(),
                                    s.as_numbers().iter().map(|n| u32::from(*n)).collect(),
                                )
                            })
                            .collect(),
                        ng::AsPath::As4PathSegments(segs) => segs
                            .iter()
                            .map(|s| segment(s.segment_type(), s.as_numbers().to_vec()))
                            .collect(),
                    });
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.3. Semantic checks (own address, martians) belong to the caller.
        NEXT_HOP => {
            if !(well_known && len == 4) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::NextHop(nh)) => {
                    c.next_hop = Some(nh.next_hop());
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.4.
        MULTI_EXIT_DISC => {
            if !(optional_non_transitive && len == 4) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::MultiExitDiscriminator(m)) => {
                    c.med = Some(m.metric());
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.5 (from an external peer it must be discarded: the caller knows).
        LOCAL_PREF => {
            if !(well_known && len == 4) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::LocalPreference(l)) => {
                    c.local_pref = Some(l.metric());
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.6: attribute discard.
        ATOMIC_AGGREGATE => {
            if !(well_known && len == 0) {
                return Ok(Verdict::Discard);
            }
            c.atomic_aggregate = true;
            Verdict::Ok
        }
        // RFC 7606 §7.7: attribute discard; 8 octets with 4-octet AS, else 6.
        AGGREGATOR => {
            let want = if ctx.four_octet_as { 8 } else { 6 };
            if !(optional_transitive && len == want) {
                return Ok(Verdict::Discard);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::Aggregator(ng::Aggregator::As4Aggregator(g))) => {
                    c.aggregator = Some((*g.asn(), g.origin()));
                    Verdict::Ok
                }
                Some(PathAttributeValue::Aggregator(ng::Aggregator::As2Aggregator(g))) => {
                    c.aggregator = Some((u32::from(*g.asn()), g.origin()));
                    Verdict::Ok
                }
                _ => Verdict::Discard,
            }
        }
        // RFC 7606 §7.8: a non-zero multiple of 4.
        COMMUNITIES => {
            if !(optional_transitive && len > 0 && len % 4 == 0) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::Communities(cs)) => {
                    c.communities = cs.communities().iter().map(|x| x.value()).collect();
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.9.
        ORIGINATOR_ID => {
            if !(optional_non_transitive && len == 4) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::Originator(o)) => {
                    c.originator_id = Some(o.id());
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.10: a non-zero multiple of 4.
        CLUSTER_LIST => {
            if !(optional_non_transitive && len > 0 && len % 4 == 0) {
                return Ok(Verdict::Withdraw);
            }
            match ng_parse(a, ng_ctx) {
                Some(PathAttributeValue::ClusterList(l)) => {
                    c.cluster_list = l.cluster_list().iter().map(|x| x.id()).collect();
                    Verdict::Ok
                }
                _ => Verdict::Withdraw,
            }
        }
        // RFC 7606 §7.11, §5.3, RFC 4760 §7: any error in MP_REACH/MP_UNREACH resets.
        MP_REACH_NLRI | MP_UNREACH_NLRI => {
            if !optional_non_transitive {
                return Err(Notification::with_data(
                    notif::UPDATE_MESSAGE_ERROR,
                    notif::ATTRIBUTE_FLAGS_ERROR,
                    a.whole.to_vec(),
                ));
            }
            if a.code == MP_REACH_NLRI {
                c.mp_reach = decode_mp_reach(a)?;
            } else {
                c.mp_unreach = decode_mp_unreach(a)?;
            }
            Verdict::Ok
        }
        // RFC 6793 §6: ignored between 4-octet speakers; attribute discard when malformed.
        AS4_PATH => {
            if ctx.four_octet_as || !optional_transitive {
                return Ok(Verdict::Discard);
            }
            match parse_as4_path(a.value) {
                Some(p) => {
                    c.as4_path = Some(p);
                    Verdict::Ok
                }
                None => Verdict::Discard,
            }
        }
        AS4_AGGREGATOR => {
            if ctx.four_octet_as || !(optional_transitive && len == 8) {
                return Ok(Verdict::Discard);
            }
            let mut r = Reader::new(a.value);
            match (r.u32(), r.ipv4()) {
                (Some(asn), Some(ip)) => {
                    c.as4_aggregator = Some((asn, ip));
                    Verdict::Ok
                }
                _ => Verdict::Discard,
            }
        }
        // Known optional transitive attributes we carry raw; their RFCs (7606 §7.14,
        // RFC 5701 as updated by 7606 §7.15, RFC 8092 §6, RFC 9234 §5) say treat-as-withdraw
        // when the length is wrong.
        EXTENDED_COMMUNITIES | IPV6_EXTENDED_COMMUNITIES | LARGE_COMMUNITIES | ONLY_TO_CUSTOMER => {
            let ok = optional_transitive
                && match a.code {
                    EXTENDED_COMMUNITIES => len > 0 && len % 8 == 0,
                    IPV6_EXTENDED_COMMUNITIES => len > 0 && len % 20 == 0,
                    LARGE_COMMUNITIES => len > 0 && len % 12 == 0,
                    _ => len == 4,
                };
            if ok {
                c.other.push(RawAttribute {
                    flags: a.flags,
                    type_code: a.code,
                    value: a.value.to_vec(),
                });
            }
            withdraw_unless(ok)
        }
        code => {
            if !optional {
                // RFC 4271 §6.3, unchanged by RFC 7606.
                return Err(Notification::with_data(
                    notif::UPDATE_MESSAGE_ERROR,
                    notif::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                    a.whole.to_vec(),
                ));
            }
            if transitive {
                c.other.push(RawAttribute {
                    flags: a.flags,
                    type_code: code,
                    value: a.value.to_vec(),
                });
            }
            // Unrecognized optional non-transitive: quietly ignored (RFC 4271 §5).
            Verdict::Ok
        }
    };
    Ok(v)
}

fn optional_attribute_error(a: &RawAttr<'_>) -> Notification {
    Notification::with_data(
        notif::UPDATE_MESSAGE_ERROR,
        notif::OPTIONAL_ATTRIBUTE_ERROR,
        a.whole.to_vec(),
    )
}

/// MP_REACH_NLRI (RFC 4760 §3). `Ok(None)` for families we do not handle (ignored);
/// `Err` (3/9, data the attribute) when it cannot be parsed: a next-hop length that does
/// not match the family makes the NLRI impossible to locate (RFC 7606 §7.11).
fn decode_mp_reach(a: &RawAttr<'_>) -> Result<Option<(Family, NextHop, Vec<IpNet>)>, Notification> {
    let err = || optional_attribute_error(a);
    let mut r = Reader::new(a.value);
    let afi = r.u16().ok_or_else(err)?;
    let safi = r.u8().ok_or_else(err)?;
    let Some(family) = family_of_afi_safi(afi, safi) else {
        return Ok(None);
    };
    let nh_len = r.u8().ok_or_else(err)?;
    let mut nh = Reader::new(r.take(usize::from(nh_len)).ok_or_else(err)?);
    let next_hop = match (family, nh_len) {
        (Family::Ipv4Unicast, 4) => NextHop::new(IpAddr::V4(nh.ipv4().ok_or_else(err)?)),
        (Family::Ipv6Unicast, 16) => NextHop::new(IpAddr::V6(nh.ipv6().ok_or_else(err)?)),
        (Family::Ipv6Unicast, 32) => {
            let global = nh.ipv6().ok_or_else(err)?;
            let local = nh.ipv6().ok_or_else(err)?;
            NextHop {
                address: IpAddr::V6(global),
                // Some speakers fill an unknown link-local with zeros.
                link_local: (!local.is_unspecified()).then_some(local),
            }
        }
        _ => return Err(err()),
    };
    // Reserved octet (RFC 4760 §3: ignored on receipt).
    r.u8().ok_or_else(err)?;
    let prefixes = match family {
        Family::Ipv4Unicast => parse_prefixes_v4(r.rest()),
        Family::Ipv6Unicast => parse_prefixes_v6(r.rest()),
    }
    .ok_or_else(err)?;
    Ok(Some((family, next_hop, prefixes)))
}

/// MP_UNREACH_NLRI (RFC 4760 §4), same conventions as [`decode_mp_reach`].
fn decode_mp_unreach(a: &RawAttr<'_>) -> Result<Option<(Family, Vec<IpNet>)>, Notification> {
    let err = || optional_attribute_error(a);
    let mut r = Reader::new(a.value);
    let afi = r.u16().ok_or_else(err)?;
    let safi = r.u8().ok_or_else(err)?;
    let Some(family) = family_of_afi_safi(afi, safi) else {
        return Ok(None);
    };
    let prefixes = match family {
        Family::Ipv4Unicast => parse_prefixes_v4(r.rest()),
        Family::Ipv6Unicast => parse_prefixes_v6(r.rest()),
    }
    .ok_or_else(err)?;
    Ok(Some((family, prefixes)))
}

/// AS4_PATH (RFC 6793 §6). `None` when malformed (the caller discards the attribute);
/// confederation segments are dropped as the RFC says.
fn parse_as4_path(value: &[u8]) -> Option<Vec<AsSegment>> {
    if value.len() < 6 || value.len() % 2 != 0 {
        return None;
    }
    let mut r = Reader::new(value);
    let mut out = Vec::new();
    while !r.is_empty() {
        let kind = r.u8()?;
        let count = r.u8()?;
        if count == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            asns.push(r.u32()?);
        }
        match kind {
            1 => out.push(AsSegment::Set(asns)),
            2 => out.push(AsSegment::Sequence(asns)),
            3 | 4 => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Number of ASes a path counts for in RFC 6793 §4.2.3 (a SET counts as one).
fn path_count(path: &[AsSegment]) -> usize {
    path.iter()
        .map(|s| match s {
            AsSegment::Sequence(v) => v.len(),
            AsSegment::Set(_) => 1,
        })
        .sum()
}

/// RFC 6793 §4.2.3: when AS_PATH counts fewer ASes than AS4_PATH, AS4_PATH is ignored;
/// otherwise the leading ASes of AS_PATH that AS4_PATH lacks are kept in front of it.
pub fn merge_as4_path(as_path: Vec<AsSegment>, as4_path: Vec<AsSegment>) -> Vec<AsSegment> {
    let n = path_count(&as_path);
    let n4 = path_count(&as4_path);
    if n < n4 {
        return as_path;
    }
    let mut keep = n - n4;
    let mut out: Vec<AsSegment> = Vec::new();
    for seg in as_path {
        if keep == 0 {
            break;
        }
        match seg {
            AsSegment::Sequence(mut v) => {
                if v.len() > keep {
                    v.truncate(keep);
                }
                keep -= v.len();
                out.push(AsSegment::Sequence(v));
            }
            AsSegment::Set(v) => {
                keep -= 1;
                out.push(AsSegment::Set(v));
            }
        }
    }
    for seg in as4_path {
        match (out.last_mut(), seg) {
            (Some(AsSegment::Sequence(last)), AsSegment::Sequence(v)) => last.extend(v),
            (_, seg) => out.push(seg),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// UPDATE encoding
// ---------------------------------------------------------------------------------------

/// Builds a netgauze attribute; the extended-length bit is set when asked or when the
/// value needs it (netgauze writes a 2-octet length without setting the flag otherwise).
fn ng_attr(
    optional: bool,
    transitive: bool,
    partial: bool,
    extended: bool,
    value: PathAttributeValue,
) -> Result<PathAttribute, WireError> {
    let codec = |e: ng::InvalidPathAttribute| WireError::Codec(e.to_string());
    let pa = PathAttribute::from(optional, transitive, partial, extended, value)
        .map_err(|(_, e)| codec(e))?;
    // flags + type + 1-octet length
    if !pa.extended_length() && pa.len() > 3 + 255 {
        return PathAttribute::from(optional, transitive, partial, true, pa.value().clone())
            .map_err(|(_, e)| codec(e));
    }
    Ok(pa)
}

fn well_known(value: PathAttributeValue) -> Result<PathAttribute, WireError> {
    ng_attr(false, true, false, false, value)
}

/// Segments ready for the wire: empty segments dropped, sequences longer than 255 split.
fn wire_segments(path: &[AsSegment]) -> Result<Vec<(ng::AsPathSegmentType, Vec<u32>)>, WireError> {
    let mut out = Vec::new();
    for seg in path {
        match seg {
            AsSegment::Sequence(v) => {
                for chunk in v.chunks(255) {
                    out.push((ng::AsPathSegmentType::AsSequence, chunk.to_vec()));
                }
            }
            AsSegment::Set(v) => {
                if v.len() > 255 {
                    return Err(WireError::AsSetTooLarge(v.len()));
                }
                if !v.is_empty() {
                    out.push((ng::AsPathSegmentType::AsSet, v.clone()));
                }
            }
        }
    }
    Ok(out)
}

fn as2(asn: u32) -> u16 {
    u16::try_from(asn).unwrap_or(AS_TRANS)
}

fn encode_update(u: &Update, ctx: &SessionContext) -> Result<Vec<u8>, WireError> {
    if let Some(f) = u.end_of_rib {
        if !u.withdrawn.is_empty() || !u.reach.is_empty() || u.attributes.is_some() {
            return Err(WireError::EndOfRibNotEmpty);
        }
        return Ok(end_of_rib(f, ctx));
    }
    let mut w4 = Vec::new();
    let mut w6 = Vec::new();
    for p in &u.withdrawn {
        match p {
            IpNet::V4(n) => w4.push(ng_v4(n)?),
            IpNet::V6(n) => w6.push(ng_v6(n)?),
        }
    }
    let mut nlri4: Option<(Ipv4Addr, Vec<Ipv4UnicastAddress>)> = None;
    let mut reach6: Option<(Ipv6Addr, Option<Ipv6Addr>, Vec<Ipv6UnicastAddress>)> = None;
    for r in &u.reach {
        let mismatch = |prefix: &IpNet| WireError::NextHopFamily {
            prefix: *prefix,
            next_hop: r.next_hop,
        };
        match r.next_hop.address {
            IpAddr::V4(nh) => {
                if nlri4.is_some() {
                    return Err(WireError::DuplicateReach(Family::Ipv4Unicast));
                }
                let mut v = Vec::with_capacity(r.prefixes.len());
                for p in &r.prefixes {
                    match p {
                        IpNet::V4(n) if r.next_hop.link_local.is_none() => v.push(ng_v4(n)?),
                        _ => return Err(mismatch(p)),
                    }
                }
                nlri4 = Some((nh, v));
            }
            IpAddr::V6(nh) => {
                if reach6.is_some() {
                    return Err(WireError::DuplicateReach(Family::Ipv6Unicast));
                }
                let mut v = Vec::with_capacity(r.prefixes.len());
                for p in &r.prefixes {
                    match p {
                        IpNet::V6(n) => v.push(ng_v6(n)?),
                        IpNet::V4(_) => return Err(mismatch(p)),
                    }
                }
                reach6 = Some((nh, r.next_hop.link_local, v));
            }
        }
    }
    if (nlri4.is_some() || reach6.is_some()) && u.attributes.is_none() {
        return Err(WireError::MissingAttributes);
    }

    // RFC 7606 §5.1: MP_REACH_NLRI / MP_UNREACH_NLRI first.
    let mut attrs = Vec::new();
    if let Some((global, local, nlri)) = reach6 {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MpReach(ng::MpReach::Ipv6Unicast {
                next_hop_global: global,
                next_hop_local: local,
                nlri: nlri.into(),
            }),
        )?);
    }
    if !w6.is_empty() {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MpUnreach(ng::MpUnreach::Ipv6Unicast { nlri: w6.into() }),
        )?);
    }
    let mut nlri = Vec::new();
    if let Some(pa) = &u.attributes {
        encode_attributes(pa, nlri4.as_ref().map(|(nh, _)| *nh), ctx, &mut attrs)?;
    }
    if let Some((_, v)) = nlri4 {
        nlri = v;
    }
    encode_ng(&BgpMessage::Update(BgpUpdateMessage::new(w4, attrs, nlri)))
}

fn encode_attributes(
    pa: &PathAttributes,
    next_hop: Option<Ipv4Addr>,
    ctx: &SessionContext,
    attrs: &mut Vec<PathAttribute>,
) -> Result<(), WireError> {
    attrs.push(well_known(PathAttributeValue::Origin(match pa.origin {
        Origin::Igp => ng::Origin::IGP,
        Origin::Egp => ng::Origin::EGP,
        Origin::Incomplete => ng::Origin::Incomplete,
    }))?);
    let segs = wire_segments(&pa.as_path)?;
    let as4_segments = || -> Vec<ng::As4PathSegment> {
        segs.iter()
            .map(|(t, v)| ng::As4PathSegment::new(*t, v.clone()))
            .collect()
    };
    let mut as4_path = None;
    let as_path = if ctx.four_octet_as {
        ng::AsPath::As4PathSegments(as4_segments().into())
    } else {
        // RFC 6793 §4.2.2: non-mappable ASes become AS_TRANS, the real path goes in AS4_PATH.
        if segs.iter().any(|(_, v)| v.iter().any(|a| *a > 0xffff)) {
            as4_path = Some(ng::As4Path::new(as4_segments()));
        }
        ng::AsPath::As2PathSegments(
            segs.iter()
                .map(|(t, v)| {
                    ng::As2PathSegment::new(*t, v.iter().map(|a| as2(*a)).collect::<Vec<_>>())
                })
                .collect::<Vec<_>>()
                .into(),
        )
    };
    attrs.push(well_known(PathAttributeValue::AsPath(as_path))?);
    if let Some(nh) = next_hop {
        attrs.push(well_known(PathAttributeValue::NextHop(ng::NextHop::new(
            nh,
        )))?);
    }
    if let Some(med) = pa.med {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::MultiExitDiscriminator(ng::MultiExitDiscriminator::new(med)),
        )?);
    }
    if let Some(lp) = pa.local_pref {
        attrs.push(well_known(PathAttributeValue::LocalPreference(
            ng::LocalPreference::new(lp),
        ))?);
    }
    if pa.atomic_aggregate {
        attrs.push(well_known(PathAttributeValue::AtomicAggregate(
            ng::AtomicAggregate,
        ))?);
    }
    let mut as4_aggregator = None;
    if let Some((asn, ip)) = pa.aggregator {
        let agg = if ctx.four_octet_as {
            ng::Aggregator::As4Aggregator(ng::As4Aggregator::new(asn, ip))
        } else {
            if asn > 0xffff {
                let mut v = asn.to_be_bytes().to_vec();
                v.extend_from_slice(&ip.octets());
                as4_aggregator = Some(v);
            }
            ng::Aggregator::As2Aggregator(ng::As2Aggregator::new(as2(asn), ip))
        };
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::Aggregator(agg),
        )?);
    }
    if !pa.communities.is_empty() {
        let cs: Vec<Community> = pa.communities.iter().map(|c| Community::new(*c)).collect();
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::Communities(ng::Communities::new(cs)),
        )?);
    }
    if let Some(id) = pa.originator_id {
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::Originator(ng::Originator::new(id)),
        )?);
    }
    if !pa.cluster_list.is_empty() {
        let ids: Vec<ng::ClusterId> = pa
            .cluster_list
            .iter()
            .map(|i| ng::ClusterId::new(*i))
            .collect();
        attrs.push(ng_attr(
            true,
            false,
            false,
            false,
            PathAttributeValue::ClusterList(ng::ClusterList::new(ids)),
        )?);
    }
    if let Some(p) = as4_path {
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::As4Path(p),
        )?);
    }
    if let Some(v) = as4_aggregator {
        attrs.push(ng_attr(
            true,
            true,
            false,
            false,
            PathAttributeValue::UnknownAttribute(ng::UnknownAttribute::new(
                attr_type::AS4_AGGREGATOR,
                v,
            )),
        )?);
    }
    for raw in &pa.other {
        let f = raw.flags;
        attrs.push(ng_attr(
            f & attr_flags::OPTIONAL != 0,
            f & attr_flags::TRANSITIVE != 0,
            f & attr_flags::PARTIAL != 0,
            f & attr_flags::EXTENDED_LENGTH != 0,
            PathAttributeValue::UnknownAttribute(ng::UnknownAttribute::new(
                raw.type_code,
                raw.value.clone(),
            )),
        )?);
    }
    Ok(())
}

fn encode_ng(m: &BgpMessage) -> Result<Vec<u8>, WireError> {
    let len = m.len();
    if len > MAX_MESSAGE_LEN {
        return Err(WireError::TooLong(len));
    }
    let mut out = Vec::with_capacity(len);
    m.write(&mut out)
        .map_err(|e| WireError::Codec(e.to_string()))?;
    if out.len() != len {
        return Err(WireError::Codec(format!(
            "encoder wrote {} bytes for a {len}-byte message",
            out.len()
        )));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Public encoding API
// ---------------------------------------------------------------------------------------

/// Encodes one message. Errors only for things that cannot fit or be expressed.
///
/// OPEN: the version octet is always [`BGP_VERSION`]; capabilities go in one optional
/// parameter of type 2, in the order multiprotocol, route refresh, enhanced route refresh,
/// 4-octet AS, graceful restart; `Capabilities::unknown` is not sent (it has no values).
/// `my_as` is written as given (the caller puts AS_TRANS there for a 4-octet AS).
///
/// UPDATE: IPv4 routes go in the classic NLRI field with NEXT_HOP, IPv6 routes in
/// MP_REACH_NLRI, IPv6 withdrawals in MP_UNREACH_NLRI. With a 2-octet session
/// (`ctx.four_octet_as == false`) AS numbers above 65535 are sent as AS_TRANS with
/// AS4_PATH / AS4_AGGREGATOR (RFC 6793 §4.2.2). `treat_as_withdraw` is ignored.
pub fn encode(msg: &Message, ctx: &SessionContext) -> Result<Vec<u8>, WireError> {
    match msg {
        Message::Open(o) => encode_ng(&encode_open(o)?),
        Message::Update(u) => encode_update(u, ctx),
        Message::Notification(n) => encode_notification(n),
        Message::Keepalive => encode_ng(&BgpMessage::KeepAlive),
        Message::RouteRefresh(f) => encode_ng(&BgpMessage::RouteRefresh(
            BgpRouteRefreshMessage::new(address_type(*f), RouteRefreshSubcode::NormalRequest),
        )),
    }
}

/// End-of-RIB marker bytes for a family (RFC 4724 §2): an empty UPDATE for IPv4 unicast,
/// an UPDATE with only an empty MP_UNREACH_NLRI for the others.
pub fn end_of_rib(family: Family, _ctx: &SessionContext) -> Vec<u8> {
    let mut out = Vec::with_capacity(29);
    out.extend_from_slice(&MARKER);
    match family {
        Family::Ipv4Unicast => out.extend_from_slice(&[0, 23, msg_type::UPDATE, 0, 0, 0, 0]),
        Family::Ipv6Unicast => {
            let (afi, safi) = family.afi_safi();
            let [afi_hi, afi_lo] = afi.to_be_bytes();
            out.extend_from_slice(&[0, 29, msg_type::UPDATE, 0, 0, 0, 6]);
            out.extend_from_slice(&[
                attr_flags::OPTIONAL,
                attr_type::MP_UNREACH_NLRI,
                3,
                afi_hi,
                afi_lo,
                safi,
            ]);
        }
    }
    out
}

/// Packs withdrawals and/or announcements (one Reach for one family, sharing `attrs`) into
/// as many UPDATE messages as needed, each at most 4096 bytes, each returned encoded.
///
/// Withdrawals and announcements go in separate messages: IPv4 withdrawals in the classic
/// field, IPv6 withdrawals in MP_UNREACH_NLRI, IPv4 announcements in the classic NLRI field
/// with NEXT_HOP, IPv6 announcements in MP_REACH_NLRI (16-byte next hop, 32 with
/// link-local). Nothing here fails: prefixes the codec cannot encode (multicast) are
/// skipped and logged, and an announcement that cannot be encoded at all (attributes too
/// large, next hop of the wrong family) is logged and left out while the withdrawals are
/// still returned. Use [`try_pack_updates`] to get the error instead.
pub fn pack_updates(
    withdrawn: &[IpNet],
    reach: Option<(&PathAttributes, &Reach)>,
    ctx: &SessionContext,
) -> Vec<Vec<u8>> {
    let keep = |p: &&IpNet| {
        let ok = is_encodable_prefix(p);
        if !ok {
            tracing::warn!(prefix = %p, "not a unicast prefix: left out of UPDATE");
        }
        ok
    };
    let withdrawn: Vec<IpNet> = withdrawn.iter().filter(keep).copied().collect();
    let mut out = Vec::new();
    if let Err(e) = pack_withdrawals(&withdrawn, ctx, &mut out) {
        tracing::error!(error = %e, "could not encode withdrawals");
    }
    if let Some((attrs, r)) = reach {
        let filtered = Reach {
            next_hop: r.next_hop,
            prefixes: r.prefixes.iter().filter(keep).copied().collect(),
        };
        let mut msgs = Vec::new();
        match pack_reach(attrs, &filtered, ctx, &mut msgs) {
            Ok(()) => out.extend(msgs),
            Err(e) => tracing::error!(
                error = %e,
                prefixes = filtered.prefixes.len(),
                "could not encode announcements; they are not sent"
            ),
        }
    }
    out
}

/// [`pack_updates`] that fails instead of leaving anything out.
pub fn try_pack_updates(
    withdrawn: &[IpNet],
    reach: Option<(&PathAttributes, &Reach)>,
    ctx: &SessionContext,
) -> Result<Vec<Vec<u8>>, WireError> {
    let mut out = Vec::new();
    pack_withdrawals(withdrawn, ctx, &mut out)?;
    if let Some((attrs, r)) = reach {
        pack_reach(attrs, r, ctx, &mut out)?;
    }
    Ok(out)
}

fn pack_withdrawals(
    withdrawn: &[IpNet],
    ctx: &SessionContext,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), WireError> {
    let (v4, v6): (Vec<IpNet>, Vec<IpNet>) =
        withdrawn.iter().partition(|p| matches!(p, IpNet::V4(_)));
    for list in [v4, v6] {
        pack_with(&list, out, |chunk| {
            encode_update(
                &Update {
                    withdrawn: chunk.to_vec(),
                    ..Default::default()
                },
                ctx,
            )
        })?;
    }
    Ok(())
}

fn pack_reach(
    attrs: &PathAttributes,
    r: &Reach,
    ctx: &SessionContext,
    out: &mut Vec<Vec<u8>>,
) -> Result<(), WireError> {
    pack_with(&r.prefixes, out, |chunk| {
        encode_update(
            &Update {
                attributes: Some(attrs.clone()),
                reach: vec![Reach {
                    next_hop: r.next_hop,
                    prefixes: chunk.to_vec(),
                }],
                ..Default::default()
            },
            ctx,
        )
    })
}

/// Greedy packing: the size of a message is its size with one prefix, plus the size of
/// each further prefix, plus one octet in case an attribute grows past 255 bytes and
/// needs the extended length.
fn pack_with(
    prefixes: &[IpNet],
    out: &mut Vec<Vec<u8>>,
    build: impl Fn(&[IpNet]) -> Result<Vec<u8>, WireError>,
) -> Result<(), WireError> {
    let Some(first) = prefixes.first() else {
        return Ok(());
    };
    let base = build(std::slice::from_ref(first))?
        .len()
        .saturating_sub(prefix_wire_len(first))
        + 1;
    let mut start = 0;
    while start < prefixes.len() {
        let mut size = base;
        let mut end = start;
        for p in &prefixes[start..] {
            let s = prefix_wire_len(p);
            if size + s > MAX_MESSAGE_LEN {
                break;
            }
            size += s;
            end += 1;
        }
        if end == start {
            return Err(WireError::TooLong(size + prefix_wire_len(&prefixes[start])));
        }
        out.push(build(&prefixes[start..end])?);
        start = end;
    }
    Ok(())
}
