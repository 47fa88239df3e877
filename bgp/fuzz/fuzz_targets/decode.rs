//! Feeds arbitrary bytes to the wire decoder the way a session does: frame, then decode
//! each framed message, with both AS-number widths. Nothing may panic, and whatever
//! decodes and can be re-encoded must decode again to the same message.
#![no_main]

use ferrovia_bgp::message::{Message, SessionContext};
use ferrovia_bgp::wire::{self, Decoded};
use libfuzzer_sys::fuzz_target;

/// Capabilities we do not interpret are not re-sent, and a treat-as-withdraw UPDATE
/// re-encodes as plain withdrawals: compare those without what cannot survive.
fn comparable(m: &Message) -> Message {
    match m.clone() {
        Message::Open(mut o) => {
            o.capabilities.unknown.clear();
            Message::Open(o)
        }
        Message::Update(mut u) => {
            u.treat_as_withdraw = false;
            Message::Update(u)
        }
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    for four_octet_as in [true, false] {
        let ctx = SessionContext { four_octet_as };
        let mut rest = data;
        while let Ok(Some(len)) = wire::frame_len(rest) {
            let (msg, tail) = rest.split_at(len);
            if let Ok(Decoded::Message(m)) = wire::decode_message(msg, &ctx) {
                if let Ok(bytes) = wire::encode(&m, &ctx) {
                    assert!(bytes.len() <= 4096);
                    let again = wire::decode(&bytes, &ctx);
                    assert_eq!(again.as_ref().map(comparable), Ok(comparable(&m)));
                }
            }
            rest = tail;
        }
        // The whole input as one message, whatever its length field says.
        let _ = wire::decode(data, &ctx);
    }
});
