//! Message framing: the 19-octet header (RFC 4271 §4.1), whole-message decoding by type,
//! and ROUTE-REFRESH (RFC 2918, RFC 7313 §5).

use crate::message::{
    notif, Message, Notification, SessionContext, Update, HEADER_LEN, MAX_MESSAGE_LEN,
};

use super::nlri::family_of_afi_safi;
use super::open::decode_open;
use super::reader::{be_u16, Reader};
use super::update::decode_update;
use super::{msg_type, Decoded, Ignored, MARKER};

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

pub(super) fn not_synchronized() -> Notification {
    Notification::new(
        notif::MESSAGE_HEADER_ERROR,
        notif::CONNECTION_NOT_SYNCHRONIZED,
    )
}

pub(super) fn bad_length(len: u16) -> Notification {
    Notification::with_data(
        notif::MESSAGE_HEADER_ERROR,
        notif::BAD_MESSAGE_LENGTH,
        len.to_be_bytes().to_vec(),
    )
}

pub(super) fn decode_route_refresh(msg: &[u8], body: &[u8]) -> Result<Decoded, Notification> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::*;

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
}
