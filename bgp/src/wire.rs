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
///   changes no route); outside Established it is an unexpected UPDATE. Use
///   [`decode_message`] to tell it apart and simply drop it.
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
    if params_len > 255 {
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
    /// As received; the four low-order bits are unused and ignored (RFC 4271 §4.3), so
    /// they are cleared when the attribute is kept in [`PathAttributes::other`].
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
    // IPv4 first, then IPv6, each in message order (the order `encode` writes them).
    withdrawn.sort_by_key(|p| matches!(p, IpNet::V6(_)));

    if withdraw {
        withdrawn.extend(nlri);
        if let Some((_, _, p)) = c.mp_reach {
            withdrawn.extend(p);
        }
        withdrawn.sort_by_key(|p| matches!(p, IpNet::V6(_)));
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
            if !(optional_transitive && len > 0 && len.is_multiple_of(4)) {
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
            if !(optional_non_transitive && len > 0 && len.is_multiple_of(4)) {
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
                    EXTENDED_COMMUNITIES => len > 0 && len.is_multiple_of(8),
                    IPV6_EXTENDED_COMMUNITIES => len > 0 && len.is_multiple_of(20),
                    LARGE_COMMUNITIES => len > 0 && len.is_multiple_of(12),
                    _ => len == 4,
                };
            if ok {
                c.other.push(RawAttribute {
                    flags: a.flags & 0xf0,
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
                    flags: a.flags & 0xf0,
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
    if value.len() < 6 || !value.len().is_multiple_of(2) {
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
    // Join the two halves into one sequence where they meet (cosmetic: same path).
    let mut as4 = as4_path.into_iter();
    match (out.last_mut(), as4.next()) {
        (Some(AsSegment::Sequence(last)), Some(AsSegment::Sequence(v))) => last.extend(v),
        (_, Some(seg)) => out.push(seg),
        (_, None) => {}
    }
    out.extend(as4);
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
    if u.withdrawn.is_empty() && u.reach.is_empty() && u.attributes.is_none() {
        return Err(WireError::EmptyUpdate);
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
            // RFC 6793 §4.2.3: a receiver ignores AS4_PATH unless AGGREGATOR is AS_TRANS,
            // so AS4_AGGREGATOR also goes out whenever AS4_PATH does.
            if asn > 0xffff || as4_path.is_some() {
                let mut v = asn.to_be_bytes().to_vec();
                v.extend_from_slice(&ip.octets());
                as4_aggregator = Some(v);
            }
            let wire_asn = if as4_aggregator.is_some() {
                AS_TRANS
            } else {
                as2(asn)
            };
            ng::Aggregator::As2Aggregator(ng::As2Aggregator::new(wire_asn, ip))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const AS4: SessionContext = SessionContext {
        four_octet_as: true,
    };
    const AS2: SessionContext = SessionContext {
        four_octet_as: false,
    };

    fn net(s: &str) -> IpNet {
        s.parse().expect("test prefix")
    }

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().expect("test address"))
    }

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().expect("test address")
    }

    fn roundtrip(msg: &Message, ctx: &SessionContext) -> Message {
        let bytes = encode(msg, ctx).expect("encode");
        assert_eq!(frame_len(&bytes), Ok(Some(bytes.len())));
        decode(&bytes, ctx).expect("decode")
    }

    fn full_attrs() -> PathAttributes {
        PathAttributes {
            origin: Origin::Incomplete,
            as_path: vec![
                AsSegment::Sequence(vec![65001, 4_200_000_001, 65002]),
                AsSegment::Set(vec![65010, 4_200_000_010]),
            ],
            med: Some(50),
            local_pref: Some(200),
            atomic_aggregate: true,
            aggregator: Some((4_200_000_099, "192.0.2.99".parse().expect("ip"))),
            communities: vec![0xfde8_0001, 0xffff_ff01],
            originator_id: Some("192.0.2.7".parse().expect("ip")),
            cluster_list: vec![
                "192.0.2.8".parse().expect("ip"),
                "192.0.2.9".parse().expect("ip"),
            ],
            other: vec![
                RawAttribute {
                    flags: 0xc0,
                    type_code: attr_type::EXTENDED_COMMUNITIES,
                    value: vec![0, 2, 0xfd, 0xe8, 0, 0, 0, 1],
                },
                RawAttribute {
                    flags: 0xe0,
                    type_code: 99,
                    value: vec![1, 2, 3],
                },
            ],
        }
    }

    fn simple_attrs(asn: u32) -> PathAttributes {
        PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![asn])],
            ..Default::default()
        }
    }

    // ----- helpers to hand-craft bytes -----

    fn message(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = MARKER.to_vec();
        m.extend_from_slice(&u16::try_from(19 + body.len()).expect("len").to_be_bytes());
        m.push(kind);
        m.extend_from_slice(body);
        m
    }

    fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
        let mut b = u16::try_from(withdrawn.len())
            .expect("len")
            .to_be_bytes()
            .to_vec();
        b.extend_from_slice(withdrawn);
        b.extend_from_slice(&u16::try_from(attrs.len()).expect("len").to_be_bytes());
        b.extend_from_slice(attrs);
        b.extend_from_slice(nlri);
        message(msg_type::UPDATE, &b)
    }

    fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
        let mut a = vec![flags, code];
        if flags & attr_flags::EXTENDED_LENGTH != 0 {
            a.extend_from_slice(&u16::try_from(value.len()).expect("len").to_be_bytes());
        } else {
            a.push(u8::try_from(value.len()).expect("len"));
        }
        a.extend_from_slice(value);
        a
    }

    fn origin_igp() -> Vec<u8> {
        attr(0x40, 1, &[0])
    }
    fn as_path4(asns: &[u32]) -> Vec<u8> {
        let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
        for a in asns {
            v.extend_from_slice(&a.to_be_bytes());
        }
        attr(0x40, 2, &v)
    }
    fn as_path2(asns: &[u16]) -> Vec<u8> {
        let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
        for a in asns {
            v.extend_from_slice(&a.to_be_bytes());
        }
        attr(0x40, 2, &v)
    }
    fn next_hop() -> Vec<u8> {
        attr(0x40, 3, &[192, 0, 2, 1])
    }
    /// 10.0.0.0/24 and 10.1.0.0/16
    const NLRI: [u8; 7] = [24, 10, 0, 0, 16, 10, 1];

    fn valid_attrs() -> Vec<u8> {
        [origin_igp(), as_path4(&[65001]), next_hop()].concat()
    }

    fn decode_update_bytes(b: &[u8], ctx: &SessionContext) -> Result<Update, Notification> {
        match decode(b, ctx)? {
            Message::Update(u) => Ok(u),
            other => panic!("not an UPDATE: {other:?}"),
        }
    }

    /// Treat-as-withdraw of the two NLRI prefixes.
    fn assert_withdrawn(res: Result<Update, Notification>) {
        let u = res.expect("treat-as-withdraw is not a session reset");
        assert_eq!(
            u,
            Update {
                withdrawn: vec![net("10.0.0.0/24"), net("10.1.0.0/16")],
                attributes: None,
                reach: vec![],
                end_of_rib: None,
                treat_as_withdraw: true,
            }
        );
    }

    fn assert_reset(res: Result<Update, Notification>, code: u8, subcode: u8, data: &[u8]) {
        let n = res.expect_err("session reset expected");
        assert_eq!(
            (n.code, n.subcode, n.data.as_slice()),
            (code, subcode, data)
        );
    }

    // ----- round trips -----

    #[test]
    fn keepalive_roundtrip() {
        let b = encode(&Message::Keepalive, &AS4).expect("encode");
        assert_eq!(b, message(msg_type::KEEPALIVE, &[]));
        assert_eq!(decode(&b, &AS4), Ok(Message::Keepalive));
    }

    #[test]
    fn notification_roundtrip_any_code() {
        for n in [
            Notification::with_data(6, 2, b"maintenance".to_vec()),
            Notification::new(4, 0),
            Notification::with_data(0xaa, 0xbb, vec![1, 2, 3]),
            Notification::new(6, 9),
        ] {
            let m = Message::Notification(n);
            assert_eq!(roundtrip(&m, &AS4), m);
        }
        let too_big = Notification::with_data(6, 2, vec![0; 4096]);
        assert_eq!(
            encode(&Message::Notification(too_big), &AS4),
            Err(WireError::TooLong(4096 + 21))
        );
    }

    #[test]
    fn route_refresh_roundtrip() {
        for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let m = Message::RouteRefresh(f);
            let b = encode(&m, &AS4).expect("encode");
            let (afi, safi) = f.afi_safi();
            let [hi, lo] = afi.to_be_bytes();
            assert_eq!(b, message(msg_type::ROUTE_REFRESH, &[hi, lo, 0, safi]));
            assert_eq!(decode(&b, &AS4), Ok(m));
        }
    }

    #[test]
    fn open_roundtrip_all_capabilities() {
        let open = Open {
            version: 4,
            my_as: AS_TRANS,
            hold_time: 90,
            bgp_id: "198.18.0.1".parse().expect("ip"),
            capabilities: Capabilities {
                multiprotocol: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
                route_refresh: true,
                enhanced_route_refresh: true,
                four_octet_as: Some(4_200_000_001),
                graceful_restart: Some(GracefulRestart {
                    restarting: true,
                    restart_time: 120,
                    families: vec![(Family::Ipv4Unicast, true), (Family::Ipv6Unicast, false)],
                }),
                unknown: vec![],
            },
        };
        let m = Message::Open(open.clone());
        for ctx in [AS2, AS4] {
            assert_eq!(roundtrip(&m, &ctx), m);
        }
        assert_eq!(open.asn(), 4_200_000_001);
        let bare = Message::Open(Open {
            capabilities: Capabilities::default(),
            my_as: 65001,
            ..open
        });
        assert_eq!(roundtrip(&bare, &AS4), bare);
    }

    #[test]
    fn open_unknown_capabilities_and_families() {
        let caps = [
            // multiprotocol IPv4 flowspec (1/133): known to nobody here, dropped
            vec![1, 4, 0, 1, 0, 133],
            // multiprotocol AFI 99 SAFI 1: unknown to netgauze too, dropped
            vec![1, 4, 0, 99, 0, 1],
            vec![1, 4, 0, 2, 0, 1],
            vec![128, 0],            // Cisco route refresh
            vec![73, 3, 1, b'a', 0], // FQDN
            vec![73, 3, 1, b'b', 0], // repeated: listed once
            // graceful restart with an unknown family (AFI 25 SAFI 70) and IPv4 unicast
            vec![64, 10, 0x80, 90, 0, 25, 70, 0x80, 0, 1, 1, 0x80],
        ]
        .concat();
        let mut body = vec![4, 0xfd, 0xe9, 0, 3, 0, 0, 0, 0];
        body.push(u8::try_from(caps.len() + 2).expect("len"));
        body.extend_from_slice(&[2, u8::try_from(caps.len()).expect("len")]);
        body.extend_from_slice(&caps);
        let open = match decode(&message(msg_type::OPEN, &body), &AS2) {
            Ok(Message::Open(o)) => o,
            other => panic!("{other:?}"),
        };
        // No semantic checks: hold time 3 and BGP identifier 0.0.0.0 pass through.
        assert_eq!(open.hold_time, 3);
        assert_eq!(open.bgp_id, Ipv4Addr::UNSPECIFIED);
        assert_eq!(open.my_as, 65001);
        assert_eq!(
            open.capabilities,
            Capabilities {
                multiprotocol: vec![Family::Ipv6Unicast],
                unknown: vec![128, 73],
                graceful_restart: Some(GracefulRestart {
                    restarting: true,
                    restart_time: 90,
                    families: vec![(Family::Ipv4Unicast, true)],
                }),
                ..Default::default()
            }
        );
    }

    #[test]
    fn open_extended_optional_parameters_rfc9072() {
        // Non-Ext OP Len 255, Non-Ext OP Type 255, Ext length, then type + 2-octet length.
        let caps = [vec![2, 0], vec![65, 4, 0, 0, 0xfd, 0xe9]].concat();
        let mut body = vec![4, 0xfd, 0xe9, 0, 90, 1, 2, 3, 4, 255, 255];
        body.extend_from_slice(&u16::try_from(caps.len() + 3).expect("len").to_be_bytes());
        body.push(2);
        body.extend_from_slice(&u16::try_from(caps.len()).expect("len").to_be_bytes());
        body.extend_from_slice(&caps);
        match decode(&message(msg_type::OPEN, &body), &AS2) {
            Ok(Message::Open(o)) => {
                assert!(o.capabilities.route_refresh);
                assert_eq!(o.capabilities.four_octet_as, Some(65001));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn update_roundtrip_ipv4_both_as_widths() {
        let u = Update {
            withdrawn: vec![net("10.9.0.0/16"), net("10.8.8.0/24")],
            attributes: Some(full_attrs()),
            reach: vec![Reach {
                next_hop: NextHop::new(v4("198.18.0.1")),
                prefixes: vec![net("10.0.0.0/24"), net("10.244.1.0/26"), net("0.0.0.0/0")],
            }],
            end_of_rib: None,
            treat_as_withdraw: false,
        };
        let m = Message::Update(u);
        for ctx in [AS4, AS2] {
            assert_eq!(roundtrip(&m, &ctx), m, "ctx {ctx:?}");
        }
        // The 2-octet encoding carries AS_TRANS plus AS4_PATH and AS4_AGGREGATOR.
        let b = encode(&m, &AS2).expect("encode");
        let wlen = usize::from(u16::from_be_bytes([b[19], b[20]]));
        let alen = usize::from(u16::from_be_bytes([b[21 + wlen], b[22 + wlen]]));
        let (scanned, overrun) = scan_attributes(&b[23 + wlen..23 + wlen + alen]);
        assert!(!overrun);
        let codes: Vec<u8> = scanned.iter().map(|a| a.code).collect();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 17, 18, 16, 99]);
        let as_path = &scanned[1];
        assert_eq!(
            as_path.value,
            &[2, 3, 0xfd, 0xe9, 0x5b, 0xa0, 0xfd, 0xea, 1, 2, 0xfd, 0xf2, 0x5b, 0xa0][..]
        );
    }

    #[test]
    fn update_roundtrip_2_octet_session_with_2_octet_aggregator() {
        // AS4_PATH is only honoured next to AGGREGATOR = AS_TRANS (RFC 6793 §4.2.3), so
        // the encoder sends AS4_AGGREGATOR even for a mappable aggregator AS.
        let attrs = PathAttributes {
            as_path: vec![AsSegment::Sequence(vec![65001, 4_200_000_001])],
            aggregator: Some((65010, "192.0.2.10".parse().expect("ip"))),
            ..Default::default()
        };
        let m = Message::Update(Update {
            attributes: Some(attrs),
            reach: vec![Reach {
                next_hop: NextHop::new(v4("198.18.0.1")),
                prefixes: vec![net("10.0.0.0/24")],
            }],
            ..Default::default()
        });
        assert_eq!(roundtrip(&m, &AS2), m);
    }

    #[test]
    fn update_roundtrip_ipv6_link_local_and_withdrawals() {
        for link_local in [None, Some(v6("fe80::1"))] {
            let u = Update {
                withdrawn: vec![net("10.7.0.0/16"), net("fd00:10:244:9::/64")],
                attributes: Some(simple_attrs(65001)),
                reach: vec![Reach {
                    next_hop: NextHop {
                        address: IpAddr::V6(v6("fd00::1")),
                        link_local,
                    },
                    prefixes: vec![
                        net("fd00:10:244:1::/64"),
                        net("fd00:10:244:2::/80"),
                        net("::/0"),
                    ],
                }],
                end_of_rib: None,
                treat_as_withdraw: false,
            };
            let m = Message::Update(u);
            assert_eq!(roundtrip(&m, &AS4), m);
        }
    }

    #[test]
    fn end_of_rib_both_families() {
        for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
            let b = end_of_rib(f, &AS4);
            assert_eq!(frame_len(&b), Ok(Some(b.len())));
            assert_eq!(decode(&b, &AS4), Ok(Message::Update(Update::end_of_rib(f))));
            assert_eq!(encode(&Message::Update(Update::end_of_rib(f)), &AS4), Ok(b));
        }
        assert_eq!(end_of_rib(Family::Ipv4Unicast, &AS4).len(), 23);
        // An empty MP_UNREACH for IPv4 unicast is also an IPv4 End-of-RIB.
        let b = update(&[], &attr(0x80, 15, &[0, 1, 1]), &[]);
        assert_eq!(
            decode(&b, &AS4),
            Ok(Message::Update(Update::end_of_rib(Family::Ipv4Unicast)))
        );
        assert_eq!(
            encode(&Message::Update(Update::default()), &AS4),
            Err(WireError::EmptyUpdate)
        );
        let mut bad = Update::end_of_rib(Family::Ipv6Unicast);
        bad.withdrawn.push(net("fd00::/64"));
        assert_eq!(
            encode(&Message::Update(bad), &AS4),
            Err(WireError::EndOfRibNotEmpty)
        );
    }

    #[test]
    fn as4_path_merge_rfc6793() {
        // AS_PATH 65001 23456 23456 65002 + AS4_PATH 4200000001 4200000002 65002
        let as4 = |asns: &[u32]| {
            let mut v = vec![2, u8::try_from(asns.len()).expect("len")];
            for a in asns {
                v.extend_from_slice(&a.to_be_bytes());
            }
            attr(0xc0, 17, &v)
        };
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS, AS_TRANS, 65002]),
            next_hop(),
            as4(&[4_200_000_001, 4_200_000_002, 65002]),
        ]
        .concat();
        let u = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2).expect("ok");
        assert_eq!(
            u.attributes.expect("attrs").as_path,
            vec![AsSegment::Sequence(vec![
                65001,
                4_200_000_001,
                4_200_000_002,
                65002
            ])]
        );
        // AS4_PATH longer than AS_PATH: ignored.
        let attrs = [
            origin_igp(),
            as_path2(&[AS_TRANS]),
            next_hop(),
            as4(&[4_200_000_001, 4_200_000_002]),
        ]
        .concat();
        let u = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2).expect("ok");
        assert_eq!(
            u.attributes.expect("attrs").as_path,
            vec![AsSegment::Sequence(vec![u32::from(AS_TRANS)])]
        );
        // AGGREGATOR with a real AS: AS4_PATH and AS4_AGGREGATOR are ignored.
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 7, &[0xfd, 0xe9, 192, 0, 2, 5]),
            as4(&[4_200_000_001]),
            attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 6]),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001, 23456])]);
        assert_eq!(
            a.aggregator,
            Some((65001, "192.0.2.5".parse().expect("ip")))
        );
        // AGGREGATOR with AS_TRANS: AS4_AGGREGATOR replaces it and AS4_PATH merges.
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 7, &[0x5b, 0xa0, 192, 0, 2, 5]),
            as4(&[4_200_000_001]),
            attr(0xc0, 18, &[0xfa, 0x56, 0xea, 0x01, 192, 0, 2, 6]),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(
            a.as_path,
            vec![AsSegment::Sequence(vec![65001, 4_200_000_001])]
        );
        assert_eq!(
            a.aggregator,
            Some((4_200_000_001, "192.0.2.6".parse().expect("ip")))
        );
        // Confederation segments in AS4_PATH are dropped, the rest is used.
        let mut v = vec![3, 1];
        v.extend_from_slice(&64512u32.to_be_bytes());
        v.extend_from_slice(&[2, 1]);
        v.extend_from_slice(&4_200_000_001u32.to_be_bytes());
        let attrs = [
            origin_igp(),
            as_path2(&[65001, AS_TRANS]),
            next_hop(),
            attr(0xc0, 17, &v),
        ]
        .concat();
        let a = decode_update_bytes(&update(&[], &attrs, &NLRI), &AS2)
            .expect("ok")
            .attributes
            .expect("attrs");
        assert_eq!(
            a.as_path,
            vec![AsSegment::Sequence(vec![65001, 4_200_000_001])]
        );
        // Splitting inside a sequence and keeping a leading SET.
        let merged = merge_as4_path(
            vec![
                AsSegment::Set(vec![1, 2]),
                AsSegment::Sequence(vec![3, 23456, 23456]),
            ],
            vec![AsSegment::Sequence(vec![70000, 80000])],
        );
        assert_eq!(
            merged,
            vec![
                AsSegment::Set(vec![1, 2]),
                AsSegment::Sequence(vec![3, 70000, 80000]),
            ]
        );
    }

    #[test]
    fn pack_updates_splits_and_decodes_back() {
        let mut v4s = BTreeSet::new();
        let mut v6s = BTreeSet::new();
        for i in 0u32..3000 {
            let len = [24u8, 32, 20, 28][usize::try_from(i % 4).expect("idx")];
            let a = Ipv4Addr::from(0x0a00_0000 | (i << 8));
            v4s.insert(IpNet::V4(Ipv4Net::new(a, len).expect("net").trunc()));
            let b = Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                u16::try_from(i).expect("i"),
                0,
                0,
                0,
                0,
            );
            let len6 = [64u8, 128, 48, 96][usize::try_from(i % 4).expect("idx")];
            v6s.insert(IpNet::V6(Ipv6Net::new(b, len6).expect("net").trunc()));
        }
        let v4s: Vec<IpNet> = v4s.into_iter().collect();
        let v6s: Vec<IpNet> = v6s.into_iter().collect();
        let attrs = full_attrs();
        let cases = [
            (NextHop::new(v4("198.18.0.1")), &v4s),
            (
                NextHop {
                    address: IpAddr::V6(v6("fd00::1")),
                    link_local: Some(v6("fe80::1")),
                },
                &v6s,
            ),
        ];
        for ctx in [AS4, AS2] {
            for (nh, prefixes) in &cases {
                let reach = Reach {
                    next_hop: *nh,
                    prefixes: (*prefixes).clone(),
                };
                let msgs = pack_updates(&[], Some((&attrs, &reach)), &ctx);
                assert!(msgs.len() > 1, "3000 prefixes need several messages");
                let mut got = Vec::new();
                for m in &msgs {
                    assert!(m.len() <= MAX_MESSAGE_LEN);
                    let Ok(Message::Update(u)) = decode(m, &ctx) else {
                        panic!("decode")
                    };
                    assert_eq!(u.attributes.as_ref(), Some(&attrs));
                    assert_eq!(u.reach.len(), 1);
                    assert_eq!(u.reach[0].next_hop, *nh);
                    got.extend(u.reach[0].prefixes.iter().copied());
                }
                assert_eq!(&got, *prefixes);
                // Greedy packing fills messages: all but the last are nearly full.
                for m in &msgs[..msgs.len() - 1] {
                    assert!(m.len() > MAX_MESSAGE_LEN - 20, "{}", m.len());
                }
            }
            let both: Vec<IpNet> = v4s.iter().chain(v6s.iter()).copied().collect();
            let msgs = pack_updates(&both, None, &ctx);
            let mut got = Vec::new();
            for m in &msgs {
                assert!(m.len() <= MAX_MESSAGE_LEN);
                let Ok(Message::Update(u)) = decode(m, &ctx) else {
                    panic!("decode")
                };
                assert!(u.reach.is_empty() && u.attributes.is_none());
                got.extend(u.withdrawn);
            }
            assert_eq!(got, both);
        }
    }

    #[test]
    fn pack_updates_edge_cases() {
        let attrs = simple_attrs(65001);
        let reach = Reach {
            next_hop: NextHop::new(v4("198.18.0.1")),
            prefixes: vec![net("10.0.0.0/24"), net("224.0.0.0/4"), net("fd00::/64")],
        };
        // A multicast prefix is skipped; an IPv6 prefix with an IPv4 next hop makes the
        // whole announcement fail while withdrawals still go out.
        let msgs = pack_updates(
            &[net("10.1.0.0/16"), net("239.1.0.0/16")],
            Some((&attrs, &reach)),
            &AS4,
        );
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            try_pack_updates(&[], Some((&attrs, &reach)), &AS4),
            Err(WireError::NonUnicastPrefix(net("224.0.0.0/4")))
        );
        let ok_reach = Reach {
            next_hop: NextHop::new(v4("198.18.0.1")),
            prefixes: vec![net("10.0.0.0/24"), net("224.0.0.0/4")],
        };
        let msgs = pack_updates(&[], Some((&attrs, &ok_reach)), &AS4);
        assert_eq!(msgs.len(), 1);
        assert!(pack_updates(&[], None, &AS4).is_empty());
        // Attributes that leave no room for a single prefix.
        let huge = PathAttributes {
            communities: (0..1100).collect(),
            ..simple_attrs(65001)
        };
        assert!(matches!(
            try_pack_updates(&[], Some((&huge, &ok_reach)), &AS4),
            Err(WireError::TooLong(_))
        ));
    }

    #[test]
    fn encode_errors() {
        let reach = |nh: NextHop, p: &str| Reach {
            next_hop: nh,
            prefixes: vec![net(p)],
        };
        let u = |attributes: Option<PathAttributes>, reach: Vec<Reach>| {
            Message::Update(Update {
                attributes,
                reach,
                ..Default::default()
            })
        };
        let nh4 = NextHop::new(v4("192.0.2.1"));
        assert_eq!(
            encode(&u(None, vec![reach(nh4, "10.0.0.0/8")]), &AS4),
            Err(WireError::MissingAttributes)
        );
        assert!(matches!(
            encode(
                &u(Some(simple_attrs(1)), vec![reach(nh4, "fd00::/8")]),
                &AS4
            ),
            Err(WireError::NextHopFamily { .. })
        ));
        assert_eq!(
            encode(
                &u(
                    Some(simple_attrs(1)),
                    vec![reach(nh4, "10.0.0.0/8"), reach(nh4, "11.0.0.0/8")]
                ),
                &AS4
            ),
            Err(WireError::DuplicateReach(Family::Ipv4Unicast))
        );
        let big_set = PathAttributes {
            as_path: vec![AsSegment::Set((0..300).collect())],
            ..Default::default()
        };
        assert_eq!(
            encode(&u(Some(big_set), vec![]), &AS4),
            Err(WireError::AsSetTooLarge(300))
        );
        // A 600-AS sequence is split into 255-AS segments and comes back the same.
        let long = PathAttributes {
            as_path: vec![AsSegment::Sequence((1..=600).collect())],
            ..Default::default()
        };
        let m = u(Some(long), vec![reach(nh4, "10.0.0.0/8")]);
        let Message::Update(back) = roundtrip(&m, &AS4) else {
            panic!()
        };
        assert_eq!(back.attributes.expect("attrs").as_path_len(), 600);
    }

    // ----- frame and header errors -----

    #[test]
    fn header_errors() {
        let ka = message(msg_type::KEEPALIVE, &[]);
        assert_eq!(frame_len(&ka[..10]), Ok(None));
        assert_eq!(frame_len(&ka[..18]), Ok(None));
        let mut two = ka.clone();
        two.extend_from_slice(&ka);
        assert_eq!(frame_len(&two), Ok(Some(19)));
        let mut bad = ka.clone();
        bad[3] = 0;
        assert_eq!(frame_len(&bad[..5]), Err(Notification::new(1, 1)));
        assert_eq!(decode(&bad, &AS4), Err(Notification::new(1, 1)));
        let mut short = ka.clone();
        short[17] = 18;
        assert_eq!(
            frame_len(&short),
            Err(Notification::with_data(1, 2, vec![0, 18]))
        );
        let mut long = ka.clone();
        long[16] = 0x10;
        long[17] = 0x01;
        assert_eq!(
            frame_len(&long),
            Err(Notification::with_data(1, 2, vec![0x10, 0x01]))
        );
        assert_eq!(
            decode(&message(7, &[]), &AS4),
            Err(Notification::with_data(1, 3, vec![7]))
        );
        assert_eq!(
            decode(&message(msg_type::KEEPALIVE, &[0]), &AS4),
            Err(Notification::with_data(1, 2, vec![0, 20]))
        );
        assert_eq!(
            decode(&message(msg_type::OPEN, &[4; 9]), &AS4),
            Err(Notification::with_data(1, 2, vec![0, 28]))
        );
        assert_eq!(
            decode(&message(msg_type::UPDATE, &[0, 0, 0]), &AS4),
            Err(Notification::with_data(1, 2, vec![0, 22]))
        );
        // decode wants exactly one message.
        assert_eq!(
            decode(&two, &AS4),
            Err(Notification::with_data(1, 2, vec![0, 19]))
        );
        // A NOTIFICATION is never answered with one.
        assert_eq!(
            decode(&message(msg_type::NOTIFICATION, &[6]), &AS4),
            Ok(Message::Notification(Notification::new(6, 0)))
        );
    }

    #[test]
    fn open_errors() {
        let body = |version: u8, params: &[u8]| {
            let mut b = vec![version, 0xfd, 0xe9, 0, 90, 1, 2, 3, 4];
            b.push(u8::try_from(params.len()).expect("len"));
            b.extend_from_slice(params);
            message(msg_type::OPEN, &b)
        };
        assert_eq!(
            decode(&body(3, &[]), &AS4),
            Err(Notification::with_data(2, 1, vec![0, 4]))
        );
        assert_eq!(
            decode(&body(4, &[1, 1, 0]), &AS4),
            Err(Notification::new(2, 4))
        );
        // parameter overruns the parameters field
        assert_eq!(
            decode(&body(4, &[2, 5, 2, 0]), &AS4),
            Err(Notification::new(2, 0))
        );
        // capability overruns its parameter
        assert_eq!(
            decode(&body(4, &[2, 2, 65, 4]), &AS4),
            Err(Notification::new(2, 0))
        );
        // multiprotocol capability with a wrong length
        assert_eq!(
            decode(&body(4, &[2, 5, 1, 3, 0, 1, 0]), &AS4),
            Err(Notification::new(2, 0))
        );
        // route refresh with a value
        assert_eq!(
            decode(&body(4, &[2, 3, 2, 1, 0]), &AS4),
            Err(Notification::new(2, 0))
        );
        // bytes after the optional parameters
        let mut trailing = body(4, &[]);
        trailing.push(0);
        trailing[17] += 1;
        assert_eq!(decode(&trailing, &AS4), Err(Notification::new(2, 0)));
        // hold time 1 is the FSM's business
        let mut hold1 = body(4, &[]);
        hold1[22] = 0;
        hold1[23] = 1;
        assert!(matches!(decode(&hold1, &AS4), Ok(Message::Open(o)) if o.hold_time == 1));
    }

    #[test]
    fn route_refresh_errors_and_ignored() {
        for body in [&[0u8, 1, 0][..], &[0, 1, 0, 1, 0]] {
            let m = message(msg_type::ROUTE_REFRESH, body);
            assert_eq!(
                decode(&m, &AS4),
                Err(Notification::with_data(7, 1, m.clone()))
            );
        }
        let flowspec = message(msg_type::ROUTE_REFRESH, &[0, 1, 0, 133]);
        assert_eq!(
            decode_message(&flowspec, &AS4),
            Ok(Decoded::Ignored(Ignored::RouteRefresh {
                afi: 1,
                safi: 133,
                subtype: 0
            }))
        );
        assert_eq!(
            decode(&flowspec, &AS4),
            Ok(Message::Update(Update::default()))
        );
        let borr = message(msg_type::ROUTE_REFRESH, &[0, 2, 1, 1]);
        assert!(matches!(
            decode_message(&borr, &AS4),
            Ok(Decoded::Ignored(_))
        ));
    }

    // ----- RFC 7606 classes -----

    #[test]
    fn valid_handcrafted_update() {
        let u = decode_update_bytes(&update(&[], &valid_attrs(), &NLRI), &AS4).expect("ok");
        assert!(!u.treat_as_withdraw);
        assert_eq!(
            u.reach,
            vec![Reach {
                next_hop: NextHop::new(v4("192.0.2.1")),
                prefixes: vec![net("10.0.0.0/24"), net("10.1.0.0/16")],
            }]
        );
        // Host bits past the prefix length are cleared: 10.1.3.0/23 -> 10.1.2.0/23.
        let u =
            decode_update_bytes(&update(&[], &valid_attrs(), &[23, 10, 1, 3]), &AS4).expect("ok");
        assert_eq!(u.reach[0].prefixes, vec![net("10.1.2.0/23")]);
        // Multicast NLRI are syntactically fine: kept for policy to judge.
        let u = decode_update_bytes(&update(&[], &valid_attrs(), &[4, 224]), &AS4).expect("ok");
        assert_eq!(u.reach[0].prefixes, vec![net("224.0.0.0/4")]);
    }

    #[test]
    fn treat_as_withdraw_classes() {
        let with = |extra: Vec<u8>| update(&[], &[valid_attrs(), extra].concat(), &NLRI);
        let replace = |attrs: Vec<Vec<u8>>| update(&[], &attrs.concat(), &NLRI);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "ORIGIN undefined value",
                replace(vec![attr(0x40, 1, &[3]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN length 2",
                replace(vec![attr(0x40, 1, &[0, 0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN flagged optional",
                replace(vec![attr(0xc0, 1, &[0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "ORIGIN partial bit",
                replace(vec![attr(0x60, 1, &[0]), as_path4(&[1]), next_hop()]),
            ),
            (
                "AS_PATH zero segment length",
                replace(vec![origin_igp(), attr(0x40, 2, &[2, 0]), next_hop()]),
            ),
            (
                "AS_PATH undefined segment type",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[5, 1, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH confederation segment",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[3, 1, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH segment overrun",
                replace(vec![
                    origin_igp(),
                    attr(0x40, 2, &[2, 2, 0, 0, 0, 1]),
                    next_hop(),
                ]),
            ),
            (
                "AS_PATH 2-octet in a 4-octet session",
                replace(vec![origin_igp(), attr(0x40, 2, &[2, 1, 0, 1]), next_hop()]),
            ),
            (
                "NEXT_HOP length 5",
                replace(vec![
                    origin_igp(),
                    as_path4(&[1]),
                    attr(0x40, 3, &[1, 2, 3, 4, 5]),
                ]),
            ),
            ("MED length 3", with(attr(0x80, 4, &[0, 0, 1]))),
            ("MED flagged well-known", with(attr(0x40, 4, &[0, 0, 0, 1]))),
            ("LOCAL_PREF length 2", with(attr(0x40, 5, &[0, 1]))),
            (
                "COMMUNITIES length 5",
                with(attr(0xc0, 8, &[0, 0, 0, 1, 0])),
            ),
            ("COMMUNITIES length 0", with(attr(0xc0, 8, &[]))),
            ("ORIGINATOR_ID length 3", with(attr(0x80, 9, &[1, 2, 3]))),
            (
                "CLUSTER_LIST length 6",
                with(attr(0x80, 10, &[1, 2, 3, 4, 5, 6])),
            ),
            ("CLUSTER_LIST length 0", with(attr(0x80, 10, &[]))),
            (
                "EXTENDED_COMMUNITIES length 7",
                with(attr(0xc0, 16, &[0; 7])),
            ),
            ("LARGE_COMMUNITIES length 8", with(attr(0xc0, 32, &[0; 8]))),
            ("missing ORIGIN", replace(vec![as_path4(&[1]), next_hop()])),
            ("missing AS_PATH", replace(vec![origin_igp(), next_hop()])),
            (
                "missing NEXT_HOP",
                replace(vec![origin_igp(), as_path4(&[1])]),
            ),
            ("no attributes at all", replace(vec![])),
            // RFC 7606 §4: the last attribute overruns the field, or a partial header.
            (
                "attribute overruns the field",
                with(vec![0xc0, 99, 10, 1, 2]),
            ),
            ("one stray octet", with(vec![0xc0])),
            ("extended length header cut", with(vec![0xd0, 99, 0])),
        ];
        for (name, bytes) in cases {
            let res = decode_update_bytes(&bytes, &AS4);
            assert!(
                matches!(&res, Ok(u) if u.treat_as_withdraw),
                "{name}: {res:?}"
            );
            assert_withdrawn(res);
        }
        // Explicit withdrawals and MP_REACH prefixes are withdrawn too.
        let mp = attr(
            0x80,
            14,
            &[
                [0, 2, 1, 16].as_slice(),
                &[0xfd; 16],
                &[0, 32, 0xfd, 0, 0, 0x10],
            ]
            .concat(),
        );
        let b = update(&[8, 11], &[mp, attr(0x40, 1, &[7])].concat(), &[]);
        let u = decode_update_bytes(&b, &AS4).expect("ok");
        assert!(u.treat_as_withdraw);
        assert_eq!(u.withdrawn, vec![net("11.0.0.0/8"), net("fd00:10::/32")]);
    }

    #[test]
    fn attribute_discard_classes() {
        let with = |extra: Vec<u8>| update(&[], &[valid_attrs(), extra].concat(), &NLRI);
        let expect_kept = |bytes: Vec<u8>, ctx: &SessionContext| {
            let u = decode_update_bytes(&bytes, ctx).expect("kept");
            assert!(!u.treat_as_withdraw);
            assert_eq!(u.reach.len(), 1);
            assert_eq!(u.reach[0].prefixes.len(), 2);
            u.attributes.expect("attributes")
        };
        // ATOMIC_AGGREGATE with a value: dropped.
        let a = expect_kept(with(attr(0x40, 6, &[1])), &AS4);
        assert!(!a.atomic_aggregate);
        // ATOMIC_AGGREGATE flagged optional: dropped.
        let a = expect_kept(with(attr(0xc0, 6, &[])), &AS4);
        assert!(!a.atomic_aggregate);
        // AGGREGATOR 7 octets, or 6 in a 4-octet session: dropped.
        let a = expect_kept(with(attr(0xc0, 7, &[0, 0, 0, 1, 1, 2, 3])), &AS4);
        assert_eq!(a.aggregator, None);
        let a = expect_kept(with(attr(0xc0, 7, &[0, 1, 1, 2, 3, 4])), &AS4);
        assert_eq!(a.aggregator, None);
        // Good AGGREGATOR for comparison.
        let a = expect_kept(with(attr(0xc0, 7, &[0, 0, 0, 1, 1, 2, 3, 4])), &AS4);
        assert_eq!(a.aggregator, Some((1, "1.2.3.4".parse().expect("ip"))));
        // AS4_PATH / AS4_AGGREGATOR between 4-octet speakers: ignored.
        let mut as4 = vec![2, 1];
        as4.extend_from_slice(&4_200_000_001u32.to_be_bytes());
        let a = expect_kept(with(attr(0xc0, 17, &as4)), &AS4);
        assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001])]);
        // Malformed AS4_PATH / AS4_AGGREGATOR in a 2-octet session: dropped.
        let two = |extra: Vec<u8>| {
            update(
                &[],
                &[
                    origin_igp(),
                    as_path2(&[65001, AS_TRANS]),
                    next_hop(),
                    extra,
                ]
                .concat(),
                &NLRI,
            )
        };
        for bad in [
            attr(0xc0, 17, &[2, 0]),
            attr(0xc0, 17, &[2, 2, 0, 0, 0, 1]),
            attr(0xc0, 17, &[9, 1, 0, 0, 0, 1]),
            attr(0x40, 17, &as4),
        ] {
            let a = expect_kept(two(bad), &AS2);
            assert_eq!(a.as_path, vec![AsSegment::Sequence(vec![65001, 23456])]);
        }
        let a = expect_kept(
            two([
                attr(0xc0, 7, &[0x5b, 0xa0, 1, 2, 3, 4]),
                attr(0xc0, 18, &[0, 0, 1]),
            ]
            .concat()),
            &AS2,
        );
        assert_eq!(a.aggregator, Some((23456, "1.2.3.4".parse().expect("ip"))));
        // A repeated attribute: the first is kept.
        let a = expect_kept(
            with([attr(0x80, 4, &[0, 0, 0, 1]), attr(0x80, 4, &[0, 0, 0, 2])].concat()),
            &AS4,
        );
        assert_eq!(a.med, Some(1));
        // Unknown optional transitive kept raw with its flags (unused low bits cleared);
        // non-transitive dropped.
        let a = expect_kept(
            with(
                [
                    attr(0xe7, 200, &[9, 9]),
                    attr(0x80, 201, &[1]),
                    attr(0xd0, 202, &[5]),
                ]
                .concat(),
            ),
            &AS4,
        );
        assert_eq!(
            a.other,
            vec![
                RawAttribute {
                    flags: 0xe0,
                    type_code: 200,
                    value: vec![9, 9]
                },
                RawAttribute {
                    flags: 0xd0,
                    type_code: 202,
                    value: vec![5]
                },
            ]
        );
        // Strongest action wins: discard + treat-as-withdraw = treat-as-withdraw.
        assert_withdrawn(decode_update_bytes(
            &with([attr(0x40, 6, &[1]), attr(0x80, 4, &[1])].concat()),
            &AS4,
        ));
    }

    #[test]
    fn session_reset_classes() {
        let attrs = valid_attrs();
        let mp_reach = |v: &[u8]| attr(0x80, 14, v);
        let nh16 = [0xfdu8; 16];
        let whole_bad_nh = mp_reach(&[[0u8, 2, 1, 19].as_slice(), &[0; 20]].concat());
        type Case = (&'static str, Vec<u8>, (u8, u8), Vec<u8>);
        let cases: Vec<Case> = vec![
            (
                "withdrawn length overruns the message",
                {
                    let mut b = update(&[], &attrs, &NLRI);
                    b[20] = 200;
                    b
                },
                (3, 1),
                vec![],
            ),
            (
                "total attribute length overruns the message",
                {
                    let mut b = update(&[], &attrs, &NLRI);
                    b[22] = 200;
                    b
                },
                (3, 1),
                vec![],
            ),
            (
                "NLRI prefix length 33",
                update(&[], &attrs, &[33, 1, 2, 3, 4, 5]),
                (3, 10),
                vec![],
            ),
            (
                "NLRI truncated",
                update(&[], &attrs, &[24, 10, 0]),
                (3, 10),
                vec![],
            ),
            (
                "withdrawn prefix length 40",
                update(&[40, 1, 2, 3, 4, 5], &[], &[]),
                (3, 10),
                vec![],
            ),
            (
                "MP_REACH IPv6 next hop of 19 octets",
                update(&[], &[attrs.clone(), whole_bad_nh.clone()].concat(), &[]),
                (3, 9),
                whole_bad_nh.clone(),
            ),
            (
                "MP_REACH too short for AFI/SAFI",
                update(&[], &[attrs.clone(), mp_reach(&[0, 2])].concat(), &[]),
                (3, 9),
                mp_reach(&[0, 2]),
            ),
            (
                "MP_REACH IPv6 prefix length 129",
                update(
                    &[],
                    &[
                        attrs.clone(),
                        mp_reach(&[[0, 2, 1, 16].as_slice(), &nh16, &[0, 129]].concat()),
                    ]
                    .concat(),
                    &[],
                ),
                (3, 9),
                mp_reach(&[[0, 2, 1, 16].as_slice(), &nh16, &[0, 129]].concat()),
            ),
            (
                "MP_UNREACH IPv6 prefix overrun",
                update(&[], &attr(0x80, 15, &[0, 2, 1, 64, 0xfd]), &[]),
                (3, 9),
                attr(0x80, 15, &[0, 2, 1, 64, 0xfd]),
            ),
            (
                "MP_REACH repeated",
                update(
                    &[],
                    &[
                        attrs.clone(),
                        mp_reach(&[0, 1, 128, 0, 0]),
                        mp_reach(&[0, 1, 128, 0, 0]),
                    ]
                    .concat(),
                    &[],
                ),
                (3, 1),
                vec![],
            ),
            (
                "MP_UNREACH flagged transitive",
                update(&[], &attr(0xc0, 15, &[0, 2, 1]), &[]),
                (3, 4),
                attr(0xc0, 15, &[0, 2, 1]),
            ),
            (
                "unrecognized well-known attribute",
                update(&[], &[attrs.clone(), attr(0x40, 99, &[1])].concat(), &NLRI),
                (3, 2),
                attr(0x40, 99, &[1]),
            ),
            (
                "reset beats treat-as-withdraw",
                update(
                    &[],
                    &[attr(0x40, 1, &[9]), attr(0x40, 99, &[])].concat(),
                    &NLRI,
                ),
                (3, 2),
                attr(0x40, 99, &[]),
            ),
        ];
        for (name, bytes, (code, sub), data) in cases {
            let res = decode_update_bytes(&bytes, &AS4);
            assert!(res.is_err(), "{name}: {res:?}");
            assert_reset(res, code, sub, &data);
        }
    }

    #[test]
    fn unknown_families_are_ignored() {
        // MP_REACH for IPv4 flowspec next to classic NLRI: the flowspec part is ignored.
        let fs = attr(0x80, 14, &[0, 1, 133, 0, 0, 5, 1, 2, 3, 4, 5]);
        let u = decode_update_bytes(&update(&[], &[valid_attrs(), fs].concat(), &NLRI), &AS4)
            .expect("ok");
        assert!(!u.treat_as_withdraw);
        assert_eq!(u.reach[0].prefixes.len(), 2);
        // Only an MP_UNREACH for an unknown family: nothing, and not an End-of-RIB.
        let u = decode_update_bytes(&update(&[], &attr(0x80, 15, &[0, 25, 70]), &[]), &AS4)
            .expect("ok");
        assert_eq!(u, Update::default());
        // MP_REACH for IPv4 unicast is understood (4-octet next hop).
        let mp4 = attr(0x80, 14, &[0, 1, 1, 4, 192, 0, 2, 9, 0, 8, 12]);
        let u = decode_update_bytes(
            &update(&[], &[origin_igp(), as_path4(&[1]), mp4].concat(), &[]),
            &AS4,
        )
        .expect("ok");
        assert_eq!(
            u.reach,
            vec![Reach {
                next_hop: NextHop::new(v4("192.0.2.9")),
                prefixes: vec![net("12.0.0.0/8")],
            }]
        );
    }
}
