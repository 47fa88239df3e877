//! Bidirectional Forwarding Detection (RFC 5880, single hop RFC 5881), sans-IO.
//!
//! A [`Session`] is one BFD session in Asynchronous mode with one peer. Like the BGP
//! [`crate::fsm::Session`] it never touches a socket or a clock: the driver hands it
//! received UDP payloads and the current time, calls [`Session::handle_timeout`] when
//! [`Session::poll_timeout`] has passed, and drains [`Output`]s — packets to send and state
//! changes. Transmission jitter (§6.8.7) comes from a random source passed in, so tests are
//! deterministic.
//!
//! Not implemented, and refused or ignored: authentication (a packet with the A bit is
//! discarded), Demand mode (we never ask for it; the peer's D bit is recorded and otherwise
//! ignored) and the Echo function (we advertise a Required Min Echo RX Interval of zero).
//! Demultiplexing by Your Discriminator across sessions and by address for Your
//! Discriminator zero is the caller's job; a session discards a non-zero Your
//! Discriminator that is not its own.

pub mod packet;
pub mod peers;

pub use packet::{ControlPacket, Diag, Discard, State};

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// The Desired Min TX Interval used while the session is not Up (§6.8.3: at least 1 s).
pub const SLOW_TX: Duration = Duration::from_secs(1);
/// Bounds of `intervalMs` (the range FRR accepts).
pub const INTERVAL_MS_MIN: u32 = 10;
pub const INTERVAL_MS_MAX: u32 = 60_000;

/// Per-peer BFD configuration: `bfd: { enabled: true, intervalMs: 300, multiplier: 3 }`.
/// `intervalMs` and `multiplier` take their defaults when left out; `enabled` is false
/// unless set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BfdConfig {
    #[serde(default)]
    pub enabled: bool,
    /// Both the interval we want to send at and the one we can receive at, in milliseconds.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u32,
    /// Packets missed before the peer declares the session down (its detection time is
    /// `multiplier × interval`).
    #[serde(default = "default_multiplier")]
    pub multiplier: u32,
}

fn default_interval_ms() -> u32 {
    300
}

fn default_multiplier() -> u32 {
    3
}

impl Default for BfdConfig {
    fn default() -> Self {
        BfdConfig {
            enabled: false,
            interval_ms: default_interval_ms(),
            multiplier: default_multiplier(),
        }
    }
}

/// A BFD configuration value out of range; the message names the key and what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "bfd.intervalMs is {0}: set it between {INTERVAL_MS_MIN} and {INTERVAL_MS_MAX} \
         milliseconds (default 300)"
    )]
    IntervalMs(u32),
    #[error("bfd.multiplier is {0}: set it between 1 and 255 (default 3)")]
    Multiplier(u32),
}

impl BfdConfig {
    /// The session timing this configuration asks for, or which key is wrong.
    pub fn timing(&self) -> Result<Timing, ConfigError> {
        if !(INTERVAL_MS_MIN..=INTERVAL_MS_MAX).contains(&self.interval_ms) {
            return Err(ConfigError::IntervalMs(self.interval_ms));
        }
        let multiplier = u8::try_from(self.multiplier)
            .ok()
            .filter(|m| *m > 0)
            .ok_or(ConfigError::Multiplier(self.multiplier))?;
        Ok(Timing {
            interval: Duration::from_millis(self.interval_ms.into()),
            multiplier,
        })
    }
}

/// Validated timing of one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Desired Min TX and Required Min RX Interval.
    pub interval: Duration,
    /// Detect Mult, at least 1.
    pub multiplier: u8,
}

/// A state change, reported as it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: State,
    pub to: State,
    /// Our diagnostic after the change.
    pub diag: Diag,
    /// The peer moved us to Down by signalling AdminDown (diag 3). RFC 5882 §3.2: a client
    /// must not take its session (BGP) down for this.
    pub remote_admin_down: bool,
}

impl Change {
    /// The forwarding path to the peer must be taken as failed: the session left Up for
    /// Down because packets stopped or the peer signalled Down — not because of a local or
    /// remote AdminDown.
    pub fn is_failure(&self) -> bool {
        self.from == State::Up && self.to == State::Down && !self.remote_admin_down
    }
}

/// What a session asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this Control packet to the peer (single hop: UDP port 3784, TTL 255).
    Send(ControlPacket),
    /// The session state changed.
    StateChanged(Change),
}

/// Source of randomness for transmission jitter: any 32-bit value, uniformly distributed.
pub type Jitter = Box<dyn FnMut() -> u32 + Send>;

/// `interval` reduced by a random 0–25 % (§6.8.7), or by 10–25 % when `detect_mult` is 1,
/// so that an interval never lands at the peer's detection edge.
pub fn jittered(interval: Duration, detect_mult: u8, random: u32) -> Duration {
    // Percent kept, in hundredths of a percent.
    let (low, high) = if detect_mult == 1 {
        (7_500u32, 9_000u32)
    } else {
        (7_500, 10_000)
    };
    let kept = low + random % (high - low + 1);
    let micros = interval.as_micros() * u128::from(kept) / 10_000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

/// One BFD session in Asynchronous mode (RFC 5880 §6.8).
pub struct Session {
    timing: Timing,
    local_discr: u32,
    state: State,
    diag: Diag,
    remote_discr: u32,
    remote_state: State,
    remote_diag: Diag,
    remote_demand: bool,
    /// bfd.RemoteMinRxInterval; 1 µs until the peer tells us (§6.8.1).
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    /// Detect Mult of the last packet received; 0 before any.
    remote_detect_mult: u8,
    /// bfd.DesiredMinTxInterval and bfd.RequiredMinRxInterval, as advertised.
    desired_tx: Duration,
    required_rx: Duration,
    /// The values in force for our own timers; they lag the advertised ones during a Poll
    /// Sequence where §6.8.3 says so.
    active_tx: Duration,
    active_rx: Duration,
    polling: bool,
    /// Another parameter change happened during a Poll Sequence: poll again after it.
    repoll: bool,
    next_tx: Option<Instant>,
    detect_deadline: Option<Instant>,
    outputs: VecDeque<Output>,
    jitter: Jitter,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("local_discr", &self.local_discr)
            .field("remote_discr", &self.remote_discr)
            .field("state", &self.state)
            .field("diag", &self.diag)
            .field("remote_state", &self.remote_state)
            .field("desired_tx", &self.desired_tx)
            .field("required_rx", &self.required_rx)
            .field("polling", &self.polling)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session in Down that sends its first packet at `now`. `local_discriminator` must be
    /// unique among the caller's sessions.
    pub fn new(
        now: Instant,
        timing: Timing,
        local_discriminator: NonZeroU32,
        jitter: Jitter,
    ) -> Session {
        let slow = timing.interval.max(SLOW_TX);
        Session {
            timing,
            local_discr: local_discriminator.get(),
            state: State::Down,
            diag: Diag::None,
            remote_discr: 0,
            remote_state: State::Down,
            remote_diag: Diag::None,
            remote_demand: false,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            desired_tx: slow,
            required_rx: timing.interval,
            active_tx: slow,
            active_rx: timing.interval,
            polling: false,
            repoll: false,
            next_tx: Some(now),
            detect_deadline: None,
            outputs: VecDeque::new(),
            jitter,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Our diagnostic (bfd.LocalDiag).
    pub fn diag(&self) -> Diag {
        self.diag
    }

    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    /// The peer's discriminator, 0 until known or after a detection time without packets.
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    /// The state the peer last reported.
    pub fn remote_state(&self) -> State {
        self.remote_state
    }

    /// The diagnostic the peer last sent: why it says its session is not Up.
    pub fn remote_diag(&self) -> Diag {
        self.remote_diag
    }

    /// The peer's Demand bit (we do not implement Demand mode; shown for diagnosis).
    pub fn remote_demand(&self) -> bool {
        self.remote_demand
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// A Poll Sequence is in progress.
    pub fn polling(&self) -> bool {
        self.polling
    }

    /// The interval between our periodic packets before jitter (§6.8.7), or `None` when the
    /// peer asked for none (Required Min RX Interval zero).
    pub fn tx_interval(&self) -> Option<Duration> {
        (!self.remote_min_rx.is_zero()).then(|| self.active_tx.max(self.remote_min_rx))
    }

    /// The detection time (§6.8.4, Asynchronous mode): the peer's Detect Mult times the
    /// larger of our Required Min RX and the peer's Desired Min TX; `None` before the first
    /// packet.
    pub fn detection_time(&self) -> Option<Duration> {
        (self.remote_detect_mult > 0).then(|| {
            self.active_rx.max(self.remote_desired_tx) * u32::from(self.remote_detect_mult)
        })
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next instant [`Session::handle_timeout`] must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.next_tx, self.detect_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fire whatever is due at `now`: the detection timer, then the periodic transmission.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.detect_deadline.is_some_and(|d| d <= now) {
            self.detect_deadline = None;
            // The peer is forgotten (§6.8.1): back to the values before its first packet,
            // so periodic packets resume even if it had asked for none.
            self.remote_discr = 0;
            self.remote_state = State::Down;
            self.remote_min_rx = Duration::from_micros(1);
            self.remote_detect_mult = 0;
            self.reschedule_tx(now);
            if matches!(self.state, State::Init | State::Up) {
                self.diag = Diag::ControlDetectionTimeExpired;
                self.go(now, State::Down, false);
            }
        }
        if self.next_tx.is_some_and(|t| t <= now) {
            self.send(false);
            self.schedule_tx(now);
        }
    }

    /// A UDP payload arrived for this session. `Err` says which reception rule of §6.8.6
    /// discarded it; a discarded packet changes nothing.
    pub fn received(&mut self, now: Instant, bytes: &[u8]) -> Result<(), Discard> {
        let p = ControlPacket::decode(bytes)?;
        if p.your_discriminator == 0 {
            if !matches!(p.state, State::Down | State::AdminDown) {
                return Err(Discard::YourDiscriminatorZero(p.state));
            }
        } else if p.your_discriminator != self.local_discr {
            return Err(Discard::UnknownYourDiscriminator(p.your_discriminator));
        }
        if p.auth_present {
            return Err(Discard::AuthenticationNotConfigured);
        }
        self.remote_discr = p.my_discriminator;
        self.remote_state = p.state;
        self.remote_diag = p.diag;
        self.remote_demand = p.demand;
        self.remote_desired_tx = p.desired_min_tx;
        self.remote_detect_mult = p.detect_mult;
        let min_rx_changed = self.remote_min_rx != p.required_min_rx;
        self.remote_min_rx = p.required_min_rx;
        if p.final_ && self.polling {
            self.end_poll(now);
        }
        if min_rx_changed {
            self.reschedule_tx(now);
        }
        if self.state == State::AdminDown {
            return Ok(());
        }
        self.detect_deadline = self.detection_time().map(|d| now + d);
        match (self.state, p.state) {
            (State::Down, _) if p.state == State::AdminDown => {}
            (_, State::AdminDown) => {
                self.diag = Diag::NeighborSignaledSessionDown;
                self.go(now, State::Down, true);
            }
            (State::Down, State::Down) => self.go(now, State::Init, false),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.go(now, State::Up, false)
            }
            (State::Up, State::Down) => {
                self.diag = Diag::NeighborSignaledSessionDown;
                self.go(now, State::Down, false);
            }
            _ => {}
        }
        if p.poll {
            self.send(true);
        }
        Ok(())
    }

    /// Move the session to AdminDown (§6.8.16): keep sending AdminDown with diag 7 so the
    /// peer knows this is on purpose; no detection while in it.
    pub fn admin_down(&mut self, now: Instant) {
        if self.state == State::AdminDown {
            return;
        }
        self.diag = Diag::AdministrativelyDown;
        self.detect_deadline = None;
        self.go(now, State::AdminDown, false);
    }

    /// Leave AdminDown for Down; the handshake starts again.
    pub fn admin_up(&mut self, now: Instant) {
        if self.state != State::AdminDown {
            return;
        }
        self.diag = Diag::None;
        self.go(now, State::Down, false);
    }

    /// New timing from configuration. A change of interval while Up starts a Poll
    /// Sequence (§6.5, §6.8.3); a new multiplier is advertised from the next packet on.
    pub fn set_timing(&mut self, now: Instant, timing: Timing) {
        self.timing = timing;
        let tx = self.desired_tx_for(self.state);
        self.set_intervals(now, tx, timing.interval);
    }

    fn desired_tx_for(&self, state: State) -> Duration {
        if state == State::Up {
            self.timing.interval
        } else {
            self.timing.interval.max(SLOW_TX)
        }
    }

    fn set_intervals(&mut self, now: Instant, tx: Duration, rx: Duration) {
        if tx == self.desired_tx && rx == self.required_rx {
            return;
        }
        self.desired_tx = tx;
        self.required_rx = rx;
        if self.state == State::Up {
            // §6.8.3: a larger TX interval waits for the Final; a smaller RX interval keeps
            // the old detection time until then.
            self.active_tx = self.active_tx.min(tx);
            self.active_rx = self.active_rx.max(rx);
            self.begin_poll(now);
        } else {
            self.active_tx = tx;
            self.active_rx = rx;
        }
        self.reschedule_tx(now);
    }

    fn begin_poll(&mut self, now: Instant) {
        if self.polling {
            self.repoll = true;
            return;
        }
        self.polling = true;
        self.send(false);
        self.schedule_tx(now);
    }

    fn end_poll(&mut self, now: Instant) {
        self.polling = false;
        if self.repoll && self.state == State::Up {
            // The Final may answer a packet sent before the last change: keep the values
            // that are safe either way until the next Poll Sequence ends.
            self.repoll = false;
            self.begin_poll(now);
            return;
        }
        self.repoll = false;
        self.active_tx = self.desired_tx;
        self.active_rx = self.required_rx;
        self.reschedule_tx(now);
    }

    fn go(&mut self, now: Instant, to: State, remote_admin_down: bool) {
        let from = self.state;
        if from == to {
            return;
        }
        self.state = to;
        if to == State::Up {
            self.diag = Diag::None;
        }
        if to != State::Up {
            self.polling = false;
            self.repoll = false;
        }
        self.outputs.push_back(Output::StateChanged(Change {
            from,
            to,
            diag: self.diag,
            remote_admin_down,
        }));
        let tx = self.desired_tx_for(to);
        let rx = self.timing.interval;
        if to == State::Up {
            // Going Up lowers Desired Min TX from the slow rate: a Poll Sequence, which
            // also tells the peer at once.
            self.set_intervals(now, tx, rx);
            if self.polling {
                return;
            }
        } else {
            self.set_intervals(now, tx, rx);
        }
        self.send(false);
    }

    fn send(&mut self, final_: bool) {
        self.outputs.push_back(Output::Send(ControlPacket {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !final_,
            final_,
            control_plane_independent: false,
            auth_present: false,
            demand: false,
            detect_mult: self.timing.multiplier,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx: self.desired_tx,
            required_min_rx: self.required_rx,
            required_min_echo_rx: Duration::ZERO,
        }));
    }

    fn schedule_tx(&mut self, now: Instant) {
        self.next_tx = self
            .tx_interval()
            .map(|i| now + jittered(i, self.timing.multiplier, (self.jitter)()));
    }

    /// The transmission interval changed: start periodic packets if they were off, and
    /// bring the next one forward if it is now too far away.
    fn reschedule_tx(&mut self, now: Instant) {
        match (self.next_tx, self.tx_interval()) {
            (_, None) => self.next_tx = None,
            (None, Some(_)) => self.schedule_tx(now),
            (Some(at), Some(i)) if at > now + i => self.schedule_tx(now),
            _ => {}
        }
    }
}
