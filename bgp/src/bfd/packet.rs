//! The BFD Control packet (RFC 5880 §4.1): bytes ⇄ [`ControlPacket`].
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
//! |                       My Discriminator                        |
//! |                      Your Discriminator                       |
//! |                    Desired Min TX Interval                    |
//! |                   Required Min RX Interval                    |
//! |                 Required Min Echo RX Interval                 |
//! ```
//!
//! Intervals are in microseconds on the wire. Decoding applies the reception checks of
//! §6.8.6 that need only the packet; the checks that need a session (discriminators,
//! authentication) are in [`super::Session::received`]. Every read is bounds-checked:
//! no input makes decoding panic.

use std::time::Duration;

/// The only version this implementation speaks (RFC 5880).
pub const VERSION: u8 = 1;
/// Length of a Control packet without an authentication section.
pub const MIN_LEN: usize = 24;
/// Shortest Control packet with the A bit set: the mandatory part plus Auth Type and Auth Len.
pub const MIN_LEN_AUTH: usize = 26;

/// Session states as carried in the Sta field (§4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum State {
    AdminDown,
    Down,
    Init,
    Up,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "AdminDown",
            State::Down => "Down",
            State::Init => "Init",
            State::Up => "Up",
        }
    }

    fn from_bits(bits: u8) -> State {
        match bits & 0b11 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// The Sta field value (§4.1): 0 AdminDown, 1 Down, 2 Init, 3 Up.
    pub fn bits(self) -> u8 {
        match self {
            State::AdminDown => 0,
            State::Down => 1,
            State::Init => 2,
            State::Up => 3,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Diagnostic codes (§4.1): why the sender's session last left Up, or is not Up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Diag {
    None,
    ControlDetectionTimeExpired,
    EchoFunctionFailed,
    NeighborSignaledSessionDown,
    ForwardingPlaneReset,
    PathDown,
    ConcatenatedPathDown,
    AdministrativelyDown,
    ReverseConcatenatedPathDown,
    /// A value RFC 5880 reserves (9–31); kept so a peer's packet still decodes.
    Reserved(u8),
}

impl Diag {
    /// A short operator-facing name (RFC 5880 §4.1 wording).
    pub fn name(self) -> &'static str {
        match self {
            Diag::None => "no diagnostic",
            Diag::ControlDetectionTimeExpired => "control detection time expired",
            Diag::EchoFunctionFailed => "echo function failed",
            Diag::NeighborSignaledSessionDown => "neighbor signaled session down",
            Diag::ForwardingPlaneReset => "forwarding plane reset",
            Diag::PathDown => "path down",
            Diag::ConcatenatedPathDown => "concatenated path down",
            Diag::AdministrativelyDown => "administratively down",
            Diag::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diag::Reserved(_) => "reserved diagnostic",
        }
    }

    pub fn code(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::ControlDetectionTimeExpired => 1,
            Diag::EchoFunctionFailed => 2,
            Diag::NeighborSignaledSessionDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(c) => c & 0x1f,
        }
    }

    pub fn from_code(code: u8) -> Diag {
        match code & 0x1f {
            0 => Diag::None,
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            c => Diag::Reserved(c),
        }
    }
}

impl std::fmt::Display for Diag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = match self {
            Diag::None => "no diagnostic",
            Diag::ControlDetectionTimeExpired => "control detection time expired",
            Diag::EchoFunctionFailed => "echo function failed",
            Diag::NeighborSignaledSessionDown => "neighbor signaled session down",
            Diag::ForwardingPlaneReset => "forwarding plane reset",
            Diag::PathDown => "path down",
            Diag::ConcatenatedPathDown => "concatenated path down",
            Diag::AdministrativelyDown => "administratively down",
            Diag::ReverseConcatenatedPathDown => "reverse concatenated path down",
            Diag::Reserved(c) => return write!(f, "reserved diagnostic {c}"),
        };
        f.write_str(text)
    }
}

/// One Control packet. The authentication section, when present, is not kept: we do not
/// implement authentication, and a session discards packets that carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: State,
    pub poll: bool,
    pub final_: bool,
    /// Control Plane Independent (C bit).
    pub control_plane_independent: bool,
    /// Authentication Present (A bit).
    pub auth_present: bool,
    /// Demand mode (D bit).
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discriminator: u32,
    pub your_discriminator: u32,
    pub desired_min_tx: Duration,
    pub required_min_rx: Duration,
    pub required_min_echo_rx: Duration,
}

/// Why a received packet was discarded (RFC 5880 §6.8.6), named after the rule it broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Discard {
    #[error("{0} bytes received, a BFD Control packet has at least 24")]
    TooShort(usize),
    #[error("version {0}, only version 1 is spoken")]
    Version(u8),
    #[error("Length field {length} is below the minimum {min}")]
    LengthTooSmall { length: u8, min: usize },
    #[error("Length field {length} exceeds the {received} bytes received")]
    LengthExceedsPayload { length: u8, received: usize },
    #[error("Detect Mult is zero")]
    DetectMultZero,
    #[error("the Multipoint bit is set")]
    Multipoint,
    #[error("My Discriminator is zero")]
    MyDiscriminatorZero,
    #[error("Your Discriminator is zero in state {0}")]
    YourDiscriminatorZero(State),
    #[error("Your Discriminator {0} matches no session")]
    UnknownYourDiscriminator(u32),
    #[error("the A bit is set but no authentication is configured (ferrovia does not implement BFD authentication)")]
    AuthenticationNotConfigured,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

impl ControlPacket {
    /// The 24 bytes of this packet. The A bit is never sent (no authentication section is
    /// written); the M bit is always zero.
    pub fn encode(&self) -> [u8; MIN_LEN] {
        let mut out = [0u8; MIN_LEN];
        out[0] = (VERSION << 5) | self.diag.code();
        out[1] = (self.state.bits() << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.final_) << 4)
            | (u8::from(self.control_plane_independent) << 3)
            | (u8::from(self.demand) << 1);
        out[2] = self.detect_mult;
        out[3] = MIN_LEN as u8;
        out[4..8].copy_from_slice(&self.my_discriminator.to_be_bytes());
        out[8..12].copy_from_slice(&self.your_discriminator.to_be_bytes());
        out[12..16].copy_from_slice(&micros(self.desired_min_tx).to_be_bytes());
        out[16..20].copy_from_slice(&micros(self.required_min_rx).to_be_bytes());
        out[20..24].copy_from_slice(&micros(self.required_min_echo_rx).to_be_bytes());
        out
    }

    /// Parse a received UDP payload, applying the §6.8.6 checks that need only the packet:
    /// version, Length against its minimum and against the bytes received, Detect Mult,
    /// Multipoint, My Discriminator.
    pub fn decode(bytes: &[u8]) -> Result<ControlPacket, Discard> {
        let (Some(&b0), Some(&b1), Some(&detect_mult), Some(&length)) =
            (bytes.first(), bytes.get(1), bytes.get(2), bytes.get(3))
        else {
            return Err(Discard::TooShort(bytes.len()));
        };
        let version = b0 >> 5;
        if version != VERSION {
            return Err(Discard::Version(version));
        }
        let auth_present = b1 & 0b0000_0100 != 0;
        let min = if auth_present { MIN_LEN_AUTH } else { MIN_LEN };
        if usize::from(length) < min {
            return Err(Discard::LengthTooSmall { length, min });
        }
        if usize::from(length) > bytes.len() {
            return Err(Discard::LengthExceedsPayload {
                length,
                received: bytes.len(),
            });
        }
        let field = |at| be32(bytes, at).ok_or(Discard::TooShort(bytes.len()));
        let my_discriminator = field(4)?;
        let your_discriminator = field(8)?;
        let desired_min_tx = field(12)?;
        let required_min_rx = field(16)?;
        let required_min_echo_rx = field(20)?;
        if detect_mult == 0 {
            return Err(Discard::DetectMultZero);
        }
        if b1 & 0b0000_0001 != 0 {
            return Err(Discard::Multipoint);
        }
        if my_discriminator == 0 {
            return Err(Discard::MyDiscriminatorZero);
        }
        Ok(ControlPacket {
            diag: Diag::from_code(b0),
            state: State::from_bits(b1 >> 6),
            poll: b1 & 0b0010_0000 != 0,
            final_: b1 & 0b0001_0000 != 0,
            control_plane_independent: b1 & 0b0000_1000 != 0,
            auth_present,
            demand: b1 & 0b0000_0010 != 0,
            detect_mult,
            my_discriminator,
            your_discriminator,
            desired_min_tx: Duration::from_micros(desired_min_tx.into()),
            required_min_rx: Duration::from_micros(required_min_rx.into()),
            required_min_echo_rx: Duration::from_micros(required_min_echo_rx.into()),
        })
    }
}
