//! The BGP session state machine for one configured peer (RFC 4271 §8), sans-IO.
//!
//! A [`Session`] never touches a socket or a clock. The driver feeds it events with the
//! current time — a TCP connection came up or failed, bytes arrived, a deadline passed —
//! and drains [`Output`]s: connect, send bytes on a connection, close a connection, session
//! established or down, an UPDATE to process. Deadlines live inside the session and the
//! driver asks for the next one with [`Session::poll_timeout`].
//!
//! Up to two TCP connections can exist at once for one peer (one we opened, one the peer
//! opened). Each runs its own OpenSent → OpenConfirm → Established progression; connection
//! collisions are resolved by BGP Identifier as RFC 4271 §6.8 says.

use crate::message::{
    notif, Capabilities, Family, GracefulRestart, Message, Notification, Open, SessionContext,
    Update, AS_TRANS, BGP_VERSION,
};
use crate::wire;
use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// RFC 4271 §8.2.2 session states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Identifies one TCP connection; chosen by the driver, unique for the session's lifetime.
pub type ConnId = u64;

/// Who opened a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// We connected to the peer.
    Outgoing,
    /// The peer connected to us.
    Incoming,
}

/// Settings of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub local_as: u32,
    pub peer_as: u32,
    pub local_id: Ipv4Addr,
    /// Hold time we propose: 0, or 3 and more seconds.
    pub hold_time: u16,
    /// First reconnect delay; doubles after each consecutive failure up to `max_retry`.
    pub connect_retry: Duration,
    pub max_retry: Duration,
    /// Never connect; only accept the peer's connections.
    pub passive: bool,
    pub families: Vec<Family>,
    /// Graceful restart capability to advertise (restart time in seconds).
    pub graceful_restart: Option<u16>,
}

impl SessionConfig {
    pub fn is_ebgp(&self) -> bool {
        self.local_as != self.peer_as
    }
}

/// What was agreed when a session came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_open: Open,
    pub hold_time: u16,
    pub families: Vec<Family>,
    pub context: SessionContext,
    pub route_refresh: bool,
}

/// Why a session left Established or could not get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownReason {
    /// We sent this NOTIFICATION.
    Sent(Notification),
    /// The peer sent this NOTIFICATION.
    Received(Notification),
    /// The TCP connection closed or failed without a NOTIFICATION.
    ConnectionLost,
    /// The TCP connection could not be opened.
    ConnectFailed,
    /// BFD (RFC 5880) declared the forwarding path to the peer failed; we sent CEASE /
    /// Hard Reset (RFC 8538: the peer must not keep our routes as stale) and closed the
    /// connection.
    BfdDown(String),
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DownReason::Sent(n) => write!(f, "sent NOTIFICATION {n}"),
            DownReason::Received(n) => write!(f, "received NOTIFICATION {n}"),
            DownReason::ConnectionLost => f.write_str("connection closed by peer or lost"),
            DownReason::ConnectFailed => f.write_str("TCP connection attempt failed"),
            DownReason::BfdDown(why) => write!(f, "BFD session down: {why}"),
        }
    }
}

/// What the session asks the driver (and the speaker) to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the peer; answer with `connected` or `connect_failed`.
    Connect,
    /// Write these bytes on the connection.
    Send(ConnId, Vec<u8>),
    /// Close the connection (after writing what was queued for it).
    Close(ConnId),
    /// The reported state changed.
    StateChanged { from: State, to: State },
    /// The session reached Established on this connection.
    Established(ConnId, Box<Negotiated>),
    /// The Established session ended; every route learned from the peer must go.
    Down(DownReason),
    /// An UPDATE received in Established.
    Update(Update),
    /// The peer asked us to resend our routes for a family (RFC 2918).
    RouteRefresh(Family),
    /// Something went wrong that an operator should see, without the session being up.
    Error(DownReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ConnState {
    OpenSent,
    OpenConfirm,
    Established,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    dir: Direction,
    state: ConnState,
    buf: Vec<u8>,
    negotiated: Option<Negotiated>,
    hold_deadline: Option<Instant>,
    keepalive_deadline: Option<Instant>,
}

/// Hold time used while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// The session with one peer.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    started: bool,
    connecting: bool,
    conns: Vec<Conn>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    reported: State,
    outputs: VecDeque<Output>,
    last_error: Option<DownReason>,
    /// A connection was attempted or accepted at least once since start.
    tried: bool,
    /// Our OPEN says we restarted with forwarding preserved (RFC 4724 R and F bits).
    restarting: bool,
    /// Reconnect every `connect_retry` without backing off (the peer is restarting).
    steady_retry: bool,
}

impl Session {
    pub fn new(config: SessionConfig) -> Self {
        let retry_delay = config.connect_retry;
        Session {
            config,
            started: false,
            connecting: false,
            conns: Vec::new(),
            retry_at: None,
            retry_delay,
            reported: State::Idle,
            outputs: VecDeque::new(),
            last_error: None,
            tried: false,
            restarting: false,
            steady_retry: false,
        }
    }

    /// Whether reconnect attempts keep to `connect_retry` instead of doubling after each
    /// failure. On while a graceful restart peer is away and we keep its routes as stale:
    /// it is coming back within its restart time, and a passive peer (the higher address
    /// in the mesh) only returns when we connect, so a backed-off attempt would keep both
    /// sides on stale routes, and its readiness waiting, for longer than its restart took.
    pub fn set_steady_retry(&mut self, on: bool) {
        if on && !self.steady_retry {
            self.retry_delay = self.config.connect_retry;
        }
        self.steady_retry = on;
    }

    /// Whether our OPENs from now on carry the Restart State bit and the Forwarding State
    /// bit of every family (RFC 4724 §3): set only when this speaker restarted and kept
    /// the routes it forwards with.
    pub fn set_restarting(&mut self, restarting: bool) {
        self.restarting = restarting;
    }

    /// Whether our OPENs carry the Restart State bit.
    pub fn restarting(&self) -> bool {
        self.restarting
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The state as RFC 4271 names it, for the most advanced connection.
    pub fn state(&self) -> State {
        self.reported
    }

    /// Whether the session has been tried: a passive one is waiting for the peer, an
    /// active one attempted (or got) a connection at least once.
    pub fn tried(&self) -> bool {
        self.started && (self.config.passive || self.tried)
    }

    /// The last error seen (sent or received NOTIFICATION, lost connection).
    pub fn last_error(&self) -> Option<&DownReason> {
        self.last_error.as_ref()
    }

    /// What was negotiated on the Established connection.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.established().and_then(|c| c.negotiated.as_ref())
    }

    /// The connection the session is Established on.
    pub fn established_conn(&self) -> Option<ConnId> {
        self.established().map(|c| c.id)
    }

    fn established(&self) -> Option<&Conn> {
        self.conns
            .iter()
            .find(|c| c.state == ConnState::Established)
    }

    /// Next output to act on.
    pub fn poll_output(&mut self) -> Option<Output> {
        let out = self.outputs.pop_front();
        // An idle session holds no queue (a reflector has a thousand of them; a queue of
        // a few outputs is most of a kilobyte).
        if out.is_none() && self.outputs.capacity() > 0 {
            self.outputs = VecDeque::new();
        }
        out
    }

    /// The earliest deadline the driver must wake us at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conns
            .iter()
            .flat_map(|c| [c.hold_deadline, c.keepalive_deadline])
            .chain([self.retry_at])
            .flatten()
            .min()
    }

    /// ManualStart (event 1): begin connecting (or waiting, when passive).
    pub fn start(&mut self, now: Instant) {
        if self.started {
            return;
        }
        self.started = true;
        self.retry_delay = self.config.connect_retry;
        self.try_connect(now);
        self.update_state();
    }

    /// ManualStop (event 2): CEASE on every connection, back to Idle, no reconnect.
    pub fn stop(&mut self, subcode: u8) {
        self.stop_with(Notification::new(notif::CEASE, subcode));
    }

    /// ManualStop with this NOTIFICATION on every connection.
    pub fn stop_with(&mut self, n: Notification) {
        self.stop_inner(n, false);
    }

    /// Like [`Session::stop_with`], for a stop the operator must see (e.g. CEASE 6/1 with
    /// its RFC 4486 data): the NOTIFICATION stays as the session's last error.
    pub fn stop_for_error(&mut self, n: Notification) {
        self.stop_inner(n, true);
    }

    fn stop_inner(&mut self, n: Notification, record: bool) {
        self.started = false;
        self.retry_at = None;
        self.connecting = false;
        let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            self.fail_conn(id, Some(n.clone()), None, record);
        }
        self.update_state();
    }

    /// BFD reports the path to the peer failed (RFC 5882 §4.3): every connection ends now
    /// with CEASE / Hard Reset and the session stays Idle (no reconnect) until
    /// [`Session::start`] — the caller starts it again once BFD is Up.
    pub fn bfd_down(&mut self, why: String) {
        self.started = false;
        self.retry_at = None;
        self.connecting = false;
        let ids: Vec<ConnId> = self.conns.iter().map(|c| c.id).collect();
        for id in ids {
            self.send_notification(id, Notification::new(notif::CEASE, notif::HARD_RESET));
            self.fail_conn(id, None, Some(DownReason::BfdDown(why.clone())), true);
        }
        self.last_error = Some(DownReason::BfdDown(why));
        self.update_state();
    }

    /// A TCP connection is up: one we asked for (`Outgoing`) or one the peer opened.
    pub fn connected(&mut self, now: Instant, id: ConnId, dir: Direction) {
        self.tried = true;
        if dir == Direction::Outgoing {
            self.connecting = false;
        }
        if !self.started || self.conns.len() >= 2 {
            // Not accepting now (stopped, or both slots busy): refuse politely.
            self.send_notification(
                id,
                Notification::new(notif::CEASE, notif::CONNECTION_REJECTED),
            );
            self.outputs.push_back(Output::Close(id));
            self.update_state();
            return;
        }
        self.retry_at = None;
        let open = self.our_open();
        match wire::encode(&Message::Open(open), &SessionContext::default()) {
            Ok(bytes) => self.outputs.push_back(Output::Send(id, bytes)),
            Err(_) => {
                self.outputs.push_back(Output::Close(id));
                return;
            }
        }
        // Mostly the only one: room for exactly one (a Vec's first growth makes four).
        if self.conns.capacity() == 0 {
            self.conns.reserve_exact(1);
        }
        self.conns.push(Conn {
            id,
            dir,
            state: ConnState::OpenSent,
            buf: Vec::new(),
            negotiated: None,
            hold_deadline: Some(now + LARGE_HOLD_TIME),
            keepalive_deadline: None,
        });
        self.update_state();
    }

    /// The outgoing TCP connection attempt failed (event 18).
    pub fn connect_failed(&mut self, now: Instant) {
        self.tried = true;
        self.connecting = false;
        self.last_error = Some(DownReason::ConnectFailed);
        if self.started && self.conns.is_empty() {
            self.schedule_retry(now);
        }
        self.update_state();
    }

    /// The connection closed under us (event 18 after establishment).
    pub fn closed(&mut self, now: Instant, id: ConnId) {
        if self.conns.iter().any(|c| c.id == id) {
            self.fail_conn(id, None, Some(DownReason::ConnectionLost), true);
            if self.started && self.conns.is_empty() && !self.connecting {
                self.schedule_retry(now);
            }
            self.update_state();
        }
    }

    /// Bytes read from a connection.
    pub fn received(&mut self, now: Instant, id: ConnId, bytes: &[u8]) {
        let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) else {
            return;
        };
        conn.buf.extend_from_slice(bytes);
        let mut buf = std::mem::take(&mut conn.buf);
        let mut at = 0;
        while let Some(conn) = self.conns.iter().find(|c| c.id == id) {
            let rest = buf.get(at..).unwrap_or_default();
            let len = match wire::frame_len(rest) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(n) => {
                    self.fail_conn(id, Some(n), None, true);
                    break;
                }
            };
            let ctx = conn
                .negotiated
                .as_ref()
                .map(|n| n.context)
                .unwrap_or_default();
            let frame = rest.get(..len).unwrap_or_default();
            at += len;
            match wire::decode_message(frame, &ctx) {
                Ok(wire::Decoded::Message(msg)) => self.on_message(now, id, msg),
                // Well-formed but to be ignored (RFC 2918 §4, RFC 7313 §5).
                Ok(wire::Decoded::Ignored(_)) => {}
                Err(n) => self.fail_conn(id, Some(n), None, true),
            }
        }
        // Keep the unfinished tail for the next read, if the connection is still there.
        if let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) {
            buf.drain(..at.min(buf.len()));
            // Nothing left over (the usual case between a quiet peer's messages): no
            // buffer is kept.
            conn.buf = if buf.is_empty() { Vec::new() } else { buf };
        }
        if self.started && self.conns.is_empty() && !self.connecting && self.retry_at.is_none() {
            self.schedule_retry(now);
        }
        self.update_state();
    }

    /// Deadlines that have passed fire here.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut expired_hold = Vec::new();
        let mut keepalives = Vec::new();
        for c in &mut self.conns {
            if c.hold_deadline.is_some_and(|d| d <= now) {
                expired_hold.push(c.id);
            } else if c.keepalive_deadline.is_some_and(|d| d <= now) {
                keepalives.push(c.id);
                let ka = c
                    .negotiated
                    .as_ref()
                    .map(|n| keepalive_interval(n.hold_time))
                    .unwrap_or(Duration::ZERO);
                c.keepalive_deadline = (!ka.is_zero()).then_some(now + ka);
            }
        }
        for id in keepalives {
            self.send_message(id, &Message::Keepalive);
        }
        for id in expired_hold {
            self.fail_conn(
                id,
                Some(Notification::new(notif::HOLD_TIMER_EXPIRED, 0)),
                None,
                true,
            );
        }
        if self.retry_at.is_some_and(|d| d <= now) {
            self.retry_at = None;
            if self.started && self.conns.is_empty() {
                self.try_connect(now);
            }
        }
        if self.started && self.conns.is_empty() && !self.connecting && self.retry_at.is_none() {
            self.schedule_retry(now);
        }
        self.update_state();
    }

    /// Ask the peer to resend its routes for a family (RFC 2918), when it supports it.
    pub fn request_refresh(&mut self, family: Family) -> bool {
        let ok = self
            .negotiated()
            .is_some_and(|n| n.route_refresh && n.families.contains(&family));
        if let (true, Some(id)) = (ok, self.established_conn()) {
            self.send_message(id, &Message::RouteRefresh(family));
        }
        ok
    }

    // ----- internals -----

    fn our_open(&self) -> Open {
        let my_as = u16::try_from(self.config.local_as).unwrap_or(AS_TRANS);
        Open {
            version: BGP_VERSION,
            my_as,
            hold_time: self.config.hold_time,
            bgp_id: self.config.local_id,
            capabilities: Capabilities {
                multiprotocol: self.config.families.clone(),
                route_refresh: true,
                enhanced_route_refresh: false,
                four_octet_as: Some(self.config.local_as),
                graceful_restart: self.config.graceful_restart.map(|t| GracefulRestart {
                    restarting: self.restarting,
                    notification: true,
                    restart_time: t.min(4095),
                    families: self
                        .config
                        .families
                        .iter()
                        .map(|f| (*f, self.restarting))
                        .collect(),
                }),
                unknown: Vec::new(),
            },
        }
    }

    fn try_connect(&mut self, now: Instant) {
        if self.config.passive {
            return;
        }
        if !self.connecting && !self.conns.iter().any(|c| c.dir == Direction::Outgoing) {
            self.connecting = true;
            self.outputs.push_back(Output::Connect);
            // ConnectRetryTimer: if the attempt hangs, the driver reports failure; we
            // also re-arm so a lost answer cannot wedge us.
            self.retry_at = Some(now + self.retry_delay.max(Duration::from_secs(1)) * 4);
        }
    }

    fn schedule_retry(&mut self, now: Instant) {
        if self.config.passive {
            return;
        }
        self.retry_at = Some(now + self.retry_delay);
        if !self.steady_retry {
            self.retry_delay = (self.retry_delay * 2).min(self.config.max_retry);
        }
    }

    fn on_message(&mut self, now: Instant, id: ConnId, msg: Message) {
        let Some(idx) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let state = self.conns[idx].state;
        match (state, msg) {
            (_, Message::Notification(n)) => {
                self.fail_conn(id, None, Some(DownReason::Received(n)), true);
            }
            (ConnState::OpenSent, Message::Open(open)) => self.on_open(now, id, open),
            (ConnState::OpenConfirm, Message::Keepalive) => {
                let conn = &mut self.conns[idx];
                conn.state = ConnState::Established;
                let hold = conn.negotiated.as_ref().map(|n| n.hold_time).unwrap_or(0);
                conn.hold_deadline = hold_deadline(now, hold);
                let negotiated = conn.negotiated.clone();
                self.retry_delay = self.config.connect_retry;
                self.last_error = None;
                // The other connection, if any, lost the collision already or is still in
                // OpenSent: an Established session wins (RFC 4271 §6.8).
                let others: Vec<ConnId> = self
                    .conns
                    .iter()
                    .filter(|c| c.id != id)
                    .map(|c| c.id)
                    .collect();
                for other in others {
                    self.fail_conn(
                        other,
                        Some(Notification::new(
                            notif::CEASE,
                            notif::CONNECTION_COLLISION_RESOLUTION,
                        )),
                        None,
                        false,
                    );
                }
                if let Some(n) = negotiated {
                    self.outputs.push_back(Output::Established(id, Box::new(n)));
                }
            }
            (ConnState::Established, Message::Keepalive) => {
                let conn = &mut self.conns[idx];
                let hold = conn.negotiated.as_ref().map(|n| n.hold_time).unwrap_or(0);
                conn.hold_deadline = hold_deadline(now, hold);
            }
            (ConnState::Established, Message::Update(u)) => {
                let conn = &mut self.conns[idx];
                let hold = conn.negotiated.as_ref().map(|n| n.hold_time).unwrap_or(0);
                conn.hold_deadline = hold_deadline(now, hold);
                self.outputs.push_back(Output::Update(u));
            }
            (ConnState::Established, Message::RouteRefresh(f)) => {
                self.outputs.push_back(Output::RouteRefresh(f));
            }
            (ConnState::OpenConfirm | ConnState::OpenSent, Message::RouteRefresh(_)) => {}
            (s, _) => {
                let sub = match s {
                    ConnState::OpenSent => notif::FSM_UNEXPECTED_IN_OPENSENT,
                    ConnState::OpenConfirm => notif::FSM_UNEXPECTED_IN_OPENCONFIRM,
                    ConnState::Established => notif::FSM_UNEXPECTED_IN_ESTABLISHED,
                };
                self.fail_conn(
                    id,
                    Some(Notification::new(notif::FSM_ERROR, sub)),
                    None,
                    true,
                );
            }
        }
    }

    fn on_open(&mut self, now: Instant, id: ConnId, open: Open) {
        if let Err(n) = self.validate_open(&open) {
            self.fail_conn(id, Some(n), None, true);
            return;
        }
        // Collision detection (RFC 4271 §6.8) against the other connection.
        if let Some(other) = self.conns.iter().find(|c| c.id != id) {
            let other_id = other.id;
            let other_state = other.state;
            let this_dir = self.conns.iter().find(|c| c.id == id).map(|c| c.dir);
            if other_state == ConnState::Established {
                // RFC 4724 §4: a peer that restarted and advertises graceful restart gets
                // its new session; the old one is presumed dead. Otherwise the newcomer loses.
                if open.capabilities.graceful_restart.is_some() {
                    self.fail_conn(
                        other_id,
                        Some(Notification::new(
                            notif::CEASE,
                            notif::CONNECTION_COLLISION_RESOLUTION,
                        )),
                        None,
                        true,
                    );
                } else {
                    self.fail_conn(
                        id,
                        Some(Notification::new(
                            notif::CEASE,
                            notif::CONNECTION_COLLISION_RESOLUTION,
                        )),
                        None,
                        false,
                    );
                    return;
                }
            } else {
                // The connection opened by the side with the higher BGP Identifier survives.
                let keep_dir = if u32::from(self.config.local_id) > u32::from(open.bgp_id) {
                    Direction::Outgoing
                } else {
                    Direction::Incoming
                };
                let loser = if this_dir == Some(keep_dir) {
                    other_id
                } else {
                    id
                };
                self.fail_conn(
                    loser,
                    Some(Notification::new(
                        notif::CEASE,
                        notif::CONNECTION_COLLISION_RESOLUTION,
                    )),
                    None,
                    false,
                );
                if loser == id {
                    return;
                }
            }
        }
        let hold_time = self.config.hold_time.min(open.hold_time);
        let ours = &self.config.families;
        let families: Vec<Family> = if open.capabilities.multiprotocol.is_empty() {
            // No multiprotocol capability: IPv4 unicast only (RFC 4760 §8).
            ours.iter()
                .copied()
                .filter(|f| *f == Family::Ipv4Unicast)
                .collect()
        } else {
            ours.iter()
                .copied()
                .filter(|f| open.capabilities.multiprotocol.contains(f))
                .collect()
        };
        let negotiated = Negotiated {
            hold_time,
            families,
            context: SessionContext {
                four_octet_as: open.capabilities.four_octet_as.is_some(),
            },
            route_refresh: open.capabilities.route_refresh
                || open.capabilities.enhanced_route_refresh,
            peer_open: open,
        };
        let ka = keepalive_interval(hold_time);
        if let Some(conn) = self.conns.iter_mut().find(|c| c.id == id) {
            conn.state = ConnState::OpenConfirm;
            conn.hold_deadline = hold_deadline(now, hold_time);
            conn.keepalive_deadline = (!ka.is_zero()).then_some(now + ka);
            conn.negotiated = Some(negotiated);
        }
        self.send_message(id, &Message::Keepalive);
    }

    /// OPEN checks of RFC 4271 §6.2 that need configuration.
    fn validate_open(&self, open: &Open) -> Result<(), Notification> {
        if open.version != BGP_VERSION {
            return Err(Notification::with_data(
                notif::OPEN_MESSAGE_ERROR,
                notif::UNSUPPORTED_VERSION_NUMBER,
                u16::from(BGP_VERSION).to_be_bytes().to_vec(),
            ));
        }
        if open.asn() != self.config.peer_as {
            return Err(Notification::with_data(
                notif::OPEN_MESSAGE_ERROR,
                notif::BAD_PEER_AS,
                open.my_as.to_be_bytes().to_vec(),
            ));
        }
        if open.hold_time == 1 || open.hold_time == 2 {
            return Err(Notification::new(
                notif::OPEN_MESSAGE_ERROR,
                notif::UNACCEPTABLE_HOLD_TIME,
            ));
        }
        let id = open.bgp_id;
        let bad_id = id.is_unspecified()
            || id.is_multicast()
            || id.is_broadcast()
            || (!self.config.is_ebgp() && id == self.config.local_id);
        if bad_id {
            return Err(Notification::new(
                notif::OPEN_MESSAGE_ERROR,
                notif::BAD_BGP_IDENTIFIER,
            ));
        }
        Ok(())
    }

    fn send_message(&mut self, id: ConnId, msg: &Message) {
        let ctx = self
            .conns
            .iter()
            .find(|c| c.id == id)
            .and_then(|c| c.negotiated.as_ref())
            .map(|n| n.context)
            .unwrap_or_default();
        if let Ok(bytes) = wire::encode(msg, &ctx) {
            self.outputs.push_back(Output::Send(id, bytes));
        }
    }

    fn send_notification(&mut self, id: ConnId, n: Notification) {
        if let Ok(bytes) = wire::encode(&Message::Notification(n), &SessionContext::default()) {
            self.outputs.push_back(Output::Send(id, bytes));
        }
    }

    /// Ends one connection: optionally sends a NOTIFICATION, closes it, and reports.
    /// `record` says whether the reason is worth remembering as the session's last error.
    fn fail_conn(
        &mut self,
        id: ConnId,
        send: Option<Notification>,
        reason: Option<DownReason>,
        record: bool,
    ) {
        let Some(idx) = self.conns.iter().position(|c| c.id == id) else {
            return;
        };
        let conn = self.conns.remove(idx);
        let reason = match send {
            Some(n) => {
                self.send_notification(id, n.clone());
                DownReason::Sent(n)
            }
            None => reason.unwrap_or(DownReason::ConnectionLost),
        };
        self.outputs.push_back(Output::Close(id));
        if record {
            self.last_error = Some(reason.clone());
        }
        if conn.state == ConnState::Established {
            self.outputs.push_back(Output::Down(reason));
        } else if record {
            self.outputs.push_back(Output::Error(reason));
        }
    }

    fn update_state(&mut self) {
        let new = match self.conns.iter().map(|c| c.state).max() {
            Some(ConnState::Established) => State::Established,
            Some(ConnState::OpenConfirm) => State::OpenConfirm,
            Some(ConnState::OpenSent) => State::OpenSent,
            None if !self.started => State::Idle,
            None if self.connecting => State::Connect,
            None => State::Active,
        };
        if new != self.reported {
            let from = self.reported;
            self.reported = new;
            self.outputs
                .push_back(Output::StateChanged { from, to: new });
        }
    }
}

/// KeepaliveTime is a third of the hold time (RFC 4271 §10); none when the hold time is 0.
pub fn keepalive_interval(hold_time: u16) -> Duration {
    Duration::from_secs(u64::from(hold_time / 3))
}

fn hold_deadline(now: Instant, hold_time: u16) -> Option<Instant> {
    (hold_time > 0).then(|| now + Duration::from_secs(u64::from(hold_time)))
}
