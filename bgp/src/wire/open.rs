//! OPEN and its capabilities (RFC 4271 §4.2, RFC 5492, RFC 9072, RFC 4760, RFC 6793,
//! RFC 4724, RFC 2918, RFC 7313).

use netgauze_bgp_pkt::capabilities::{
    BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
    MultiProtocolExtensionsCapability,
};
use netgauze_bgp_pkt::open::{BgpOpenMessage, BgpOpenMessageParameter};
use netgauze_bgp_pkt::wire::deserializer::capabilities::{
    BgpCapabilityParsingError, MultiProtocolExtensionsCapabilityParsingError,
};
use netgauze_bgp_pkt::BgpMessage;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFrom;
use netgauze_parse_utils::WritablePdu;

use crate::message::{notif, Capabilities, GracefulRestart, Notification, Open, BGP_VERSION};

use super::nlri::{address_type, family_of_address_type, family_of_afi_safi};
use super::reader::Reader;
use super::{cap_code, WireError};

pub(super) fn open_error(subcode: u8) -> Notification {
    Notification::new(notif::OPEN_MESSAGE_ERROR, subcode)
}

/// `body` is the message after the header; the caller checked it holds at least 10 bytes.
/// No semantic checks on AS, hold time or identifier: the FSM does them with its config.
pub(super) fn decode_open(body: &[u8]) -> Result<Open, Notification> {
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
pub(super) fn decode_capabilities(buf: &[u8], caps: &mut Capabilities) -> Result<(), Notification> {
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
                    notification: head & 0x4000 != 0,
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

pub(super) fn encode_open(o: &Open) -> Result<BgpMessage, WireError> {
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
                gr.notification,
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use crate::wire::testutil::*;

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
                    notification: true,
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
                    notification: false,
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
}
