//! The BFD sessions of one speaker: one session per peer address, sans-IO.
//!
//! Single hop (RFC 5881): received packets are demultiplexed by their source address (one
//! session per peer address; the session itself checks Your Discriminator), and a packet
//! that arrived with a TTL / hop limit below 255 is discarded before it is looked at
//! (§5: it cannot have come from a directly connected neighbour). The driver owns the
//! sockets and the clock and drains [`PeerOutput`]s.

use super::{Change, Discard, Jitter, Output, Session, State, Timing};
use crate::speaker::BfdStatus;
use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Why a received datagram was not given to any session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("TTL {0} below 255: single-hop BFD packets must come from a directly connected peer (RFC 5881 §5)")]
    Ttl(u8),
    #[error("the TTL of the packet is unknown (no IP_TTL / IPV6_HOPLIMIT control message)")]
    TtlUnknown,
    #[error("no BFD session for {0}: BFD is not enabled for such a peer")]
    UnknownPeer(IpAddr),
    #[error(transparent)]
    Discarded(#[from] Discard),
}

/// What the sessions ask the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput {
    /// Send this UDP payload to the peer's port 3784.
    Send(IpAddr, Vec<u8>),
    /// The peer's session changed state; `status` is the session after the change.
    Changed {
        peer: IpAddr,
        change: Change,
        status: BfdStatus,
    },
}

struct Entry {
    session: Session,
    ups: u64,
    failures: u64,
}

impl Entry {
    fn status(&self) -> BfdStatus {
        let s = &self.session;
        BfdStatus {
            state: s.state(),
            diag: s.diag(),
            remote_state: s.remote_state(),
            remote_diag: s.remote_diag(),
            local_discriminator: s.local_discriminator(),
            remote_discriminator: s.remote_discriminator(),
            detection_time: s.detection_time(),
            ups: self.ups,
            failures: self.failures,
            holding_bgp: false,
        }
    }
}

/// Every BFD session, keyed by peer address.
#[derive(Default)]
pub struct Peers {
    sessions: BTreeMap<IpAddr, Entry>,
    outputs: VecDeque<PeerOutput>,
}

impl Peers {
    pub fn new() -> Peers {
        Peers::default()
    }

    /// Starts a session with `peer` (Down; it sends at once). `discriminator` must differ
    /// from every other session's; [`Peers::discriminator_in_use`] tells.
    pub fn add(
        &mut self,
        now: Instant,
        peer: IpAddr,
        timing: Timing,
        discriminator: NonZeroU32,
        jitter: Jitter,
    ) {
        let session = Session::new(now, timing, discriminator, jitter);
        self.sessions.insert(
            peer,
            Entry {
                session,
                ups: 0,
                failures: 0,
            },
        );
        self.drain(peer);
    }

    /// New timing for a running session (a Poll Sequence when Up).
    pub fn set_timing(&mut self, now: Instant, peer: IpAddr, timing: Timing) {
        if let Some(e) = self.sessions.get_mut(&peer) {
            e.session.set_timing(now, timing);
        }
        self.drain(peer);
    }

    /// Stops and forgets the session with `peer` (nothing more is sent).
    pub fn remove(&mut self, peer: IpAddr) -> bool {
        self.outputs.retain(|o| match o {
            PeerOutput::Send(p, _) | PeerOutput::Changed { peer: p, .. } => *p != peer,
        });
        self.sessions.remove(&peer).is_some()
    }

    pub fn contains(&self, peer: &IpAddr) -> bool {
        self.sessions.contains_key(peer)
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    pub fn discriminator_in_use(&self, d: u32) -> bool {
        self.sessions
            .values()
            .any(|e| e.session.local_discriminator() == d)
    }

    pub fn status(&self, peer: &IpAddr) -> Option<BfdStatus> {
        self.sessions.get(peer).map(Entry::status)
    }

    /// A UDP payload arrived from `from` with this TTL (IPv4) or hop limit (IPv6).
    pub fn received(
        &mut self,
        now: Instant,
        from: IpAddr,
        ttl: Option<u8>,
        bytes: &[u8],
    ) -> Result<(), Refused> {
        match ttl {
            Some(255) => {}
            Some(t) => return Err(Refused::Ttl(t)),
            None => return Err(Refused::TtlUnknown),
        }
        let e = self
            .sessions
            .get_mut(&from)
            .ok_or(Refused::UnknownPeer(from))?;
        let r = e.session.received(now, bytes);
        self.drain(from);
        Ok(r?)
    }

    /// Fires whatever is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<IpAddr> = self
            .sessions
            .iter()
            .filter(|(_, e)| e.session.poll_timeout().is_some_and(|t| t <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            if let Some(e) = self.sessions.get_mut(&a) {
                e.session.handle_timeout(now);
            }
            self.drain(a);
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter_map(|e| e.session.poll_timeout())
            .min()
    }

    /// Moves every session to AdminDown (RFC 5880 §6.8.16) and returns how long to keep
    /// sending so that every peer hears it: the longest detection time in force on either
    /// side (the peer's for us is our Detect Mult times our transmit interval).
    pub fn admin_down_all(&mut self, now: Instant) -> Duration {
        let mut wait = Duration::ZERO;
        let addrs: Vec<IpAddr> = self.sessions.keys().copied().collect();
        for a in addrs {
            if let Some(e) = self.sessions.get_mut(&a) {
                let detect = e.session.detection_time().unwrap_or(Duration::ZERO);
                let tx = e.session.tx_interval().unwrap_or(Duration::ZERO)
                    * u32::from(e.session.timing().multiplier);
                wait = wait.max(detect).max(tx);
                e.session.admin_down(now);
            }
            self.drain(a);
        }
        wait
    }

    pub fn poll_output(&mut self) -> Option<PeerOutput> {
        self.outputs.pop_front()
    }

    fn drain(&mut self, peer: IpAddr) {
        let Some(e) = self.sessions.get_mut(&peer) else {
            return;
        };
        while let Some(o) = e.session.poll_output() {
            match o {
                Output::Send(p) => self
                    .outputs
                    .push_back(PeerOutput::Send(peer, p.encode().to_vec())),
                Output::StateChanged(change) => {
                    if change.to == State::Up {
                        e.ups += 1;
                    }
                    if change.is_failure() {
                        e.failures += 1;
                    }
                    self.outputs.push_back(PeerOutput::Changed {
                        peer,
                        change,
                        status: e.status(),
                    });
                }
            }
        }
    }
}
